//! [`Ctx`]: what a route handler gets, over a WebSocket connection or a
//! WebTransport session.

use super::*;

#[derive(Clone)]
pub(super) enum Peer {
    Ws(Connection),
    #[cfg(feature = "webtransport")]
    Wt(WtSession),
}

/// What a route handler gets: the connection (WebSocket or WebTransport session)
/// and everything it can do — reply, send to any connection, rooms, metadata.
///
/// Cloning is cheap (handles to the same connection): move a clone into a task
/// spawned on the shard (`glommio::spawn_local`) to await [`Ctx::lookup`],
/// [`Ctx::room_members`] or [`Ctx::presence`] and reply afterwards.
#[derive(Clone)]
pub struct Ctx {
    peer: Peer,
    router: Arc<Router>,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx").field("id", &self.id()).finish()
    }
}

pub(super) fn to_message<T: Serialize + ?Sized>(value: &T) -> Result<Message, RouteError> {
    serde_json::to_string(value)
        .map(Message::text)
        .map_err(|e| RouteError::internal(format!("reply is not JSON: {e}")))
}

pub(super) fn overloaded(e: BroadcastError) -> RouteError {
    RouteError::client(e.code(), e.to_string())
}

impl Ctx {
    pub(crate) fn ws(conn: Connection, router: Arc<Router>) -> Self {
        Self {
            peer: Peer::Ws(conn),
            router,
        }
    }

    #[cfg(feature = "webtransport")]
    pub(crate) fn wt(session: WtSession, router: Arc<Router>) -> Self {
        Self {
            peer: Peer::Wt(session),
            router,
        }
    }

    pub(super) fn shard_state(&self) -> &std::rc::Rc<Shard> {
        match &self.peer {
            Peer::Ws(c) => &c.shard,
            #[cfg(feature = "webtransport")]
            Peer::Wt(s) => &s.shard,
        }
    }

    /// The connection's registry id.
    pub fn id(&self) -> ConnId {
        match &self.peer {
            Peer::Ws(c) => c.id(),
            #[cfg(feature = "webtransport")]
            Peer::Wt(s) => s.state.reg_id,
        }
    }

    /// The shard the connection lives on.
    pub fn shard(&self) -> usize {
        self.shard_state().id
    }

    /// WebSocket or WebTransport.
    pub fn transport(&self) -> TransportKind {
        match &self.peer {
            Peer::Ws(c) => c.transport(),
            #[cfg(feature = "webtransport")]
            Peer::Wt(_) => TransportKind::WebTransport,
        }
    }

    /// The WebSocket connection, for transport-specific calls.
    pub fn connection(&self) -> Option<&Connection> {
        match &self.peer {
            Peer::Ws(c) => Some(c),
            #[cfg(feature = "webtransport")]
            Peer::Wt(_) => None,
        }
    }

    /// The WebTransport session, for transport-specific calls.
    #[cfg(feature = "webtransport")]
    pub fn session(&self) -> Option<&WtSession> {
        match &self.peer {
            Peer::Ws(_) => None,
            #[cfg(feature = "webtransport")]
            Peer::Wt(s) => Some(s),
        }
    }

    pub(super) fn meta_cell(&self) -> &crate::vocab::meta::MetaCell {
        match &self.peer {
            Peer::Ws(c) => &c.conn.meta,
            #[cfg(feature = "webtransport")]
            Peer::Wt(s) => &s.state.meta,
        }
    }

    /// The metadata value under `key` as a `T`.
    pub fn meta<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        self.meta_cell().get(key)
    }

    /// Set metadata `key` (visible to the registry and, for presence keys, in
    /// later joins).
    pub fn set_meta<T: Serialize>(&self, key: &str, value: T) -> Result<(), MetaError> {
        self.meta_cell().set(key, value)
    }

    /// Remove metadata `key`.
    pub fn remove_meta(&self, key: &str) -> bool {
        self.meta_cell().remove(key)
    }

    /// All metadata.
    pub fn meta_all(&self) -> Meta {
        self.meta_cell().snapshot()
    }

    /// This connection as the registry shows it.
    pub fn info(&self) -> ConnInfo {
        match &self.peer {
            Peer::Ws(c) => c.info(),
            #[cfg(feature = "webtransport")]
            Peer::Wt(s) => s.shard.session_info(&s.state),
        }
    }

    pub(super) fn send_message(&self, msg: Message) -> Result<(), RouteError> {
        match &self.peer {
            Peer::Ws(c) => c
                .send(msg)
                .map_err(|e| RouteError::client("send_failed", e.to_string())),
            #[cfg(feature = "webtransport")]
            Peer::Wt(s) => {
                if s.state.send_direct(&msg, &s.shard.stats).is_err() {
                    s.state.evict();
                    return Err(RouteError::client(
                        "send_failed",
                        "slow consumer: delivery queue full",
                    ));
                }
                Ok(())
            }
        }
    }

    /// Send `value` as JSON to this connection.
    pub fn reply<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), RouteError> {
        self.send_message(to_message(value)?)
    }

    /// Send a raw message to this connection.
    pub fn reply_message(&self, msg: Message) -> Result<(), RouteError> {
        self.send_message(msg)
    }

    /// Send an error frame to this connection (the connection stays).
    pub fn reply_error(&self, code: &str, message: &str) {
        self.send_error_frame(code, message, None, None);
    }

    pub(super) fn send_error_frame(
        &self,
        code: &str,
        message: &str,
        action: Option<&str>,
        request_id: Option<&Value>,
    ) {
        let mut frame = Map::new();
        frame.insert("type".into(), json!("error"));
        frame.insert("error".into(), json!(code));
        frame.insert("message".into(), json!(message));
        if let Some(a) = action {
            frame.insert("action".into(), json!(a));
        }
        if let Some(id) = request_id {
            frame.insert("id".into(), id.clone());
        }
        let _ = self.send_message(Message::text(Value::Object(frame).to_string()));
    }

    /// Send `value` as JSON to connection `to` on any shard (fire-and-forget).
    pub fn send_to<T: Serialize + ?Sized>(&self, to: ConnId, value: &T) -> Result<(), RouteError> {
        self.shard_state()
            .send_to(to, to_message(value)?)
            .map_err(overloaded)
    }

    /// Cluster mode: send `value` as JSON to connection `to` of node `node` (this
    /// node's own id works too). Fire-and-forget, like [`Ctx::send_to`]; refused
    /// with `broker_unavailable` without a cluster or while Redis is unreachable.
    pub fn send_to_node<T: Serialize + ?Sized>(
        &self,
        node: &str,
        to: ConnId,
        value: &T,
    ) -> Result<(), RouteError> {
        self.shard_state()
            .send_to_node(node, to, to_message(value)?)
            .map_err(overloaded)
    }

    /// This node's id in cluster mode (`None` alone): with [`Ctx::id`] it names
    /// this connection across the cluster (`NODE:SHARD.SLOT.GEN`).
    pub fn node_id(&self) -> Option<String> {
        self.shard_state().node_id().map(str::to_string)
    }

    /// Join `room` (after the global middleware's `may_join`, e.g. the auth
    /// middleware's room rules: a refusal is a `forbidden` client error).
    /// WebTransport sessions receive the room on their reliable delivery stream.
    pub fn join(&self, room: &str) -> Result<(), RouteError> {
        if room.is_empty() || room.len() > 256 {
            return Err(RouteError::client(
                "invalid_room",
                "room names are 1 to 256 bytes",
            ));
        }
        if let Err(e) = self.router.may_join(self, room) {
            ShardStats::add(&self.shard_state().stats.auth_failures, 1);
            return Err(e);
        }
        match &self.peer {
            Peer::Ws(c) => c.join_room(room),
            #[cfg(feature = "webtransport")]
            Peer::Wt(s) => {
                s.join_room(room, Delivery::Reliable);
            }
        }
        Ok(())
    }

    /// Leave `room`.
    pub fn leave(&self, room: &str) {
        match &self.peer {
            Peer::Ws(c) => c.leave_room(room),
            #[cfg(feature = "webtransport")]
            Peer::Wt(s) => s.leave_room(room),
        }
    }

    /// Rooms this connection is in.
    pub fn rooms(&self) -> Vec<String> {
        match &self.peer {
            Peer::Ws(c) => c.rooms().iter().map(|r| r.to_string()).collect(),
            #[cfg(feature = "webtransport")]
            Peer::Wt(s) => s.rooms().into_iter().map(|(r, _)| r).collect(),
        }
    }

    /// True if this connection is in `room`.
    pub fn in_room(&self, room: &str) -> bool {
        self.rooms().iter().any(|r| r == room)
    }

    /// Broadcast `value` as JSON to every member of `room` on every shard.
    pub fn broadcast<T: Serialize + ?Sized>(
        &self,
        room: &str,
        value: &T,
    ) -> Result<(), RouteError> {
        self.shard_state()
            .publish_from(room, to_message(value)?, None, Some(self.id()))
            .map_err(overloaded)
    }

    /// Broadcast `value` to every member of `room` except this connection.
    pub fn broadcast_except_me<T: Serialize + ?Sized>(
        &self,
        room: &str,
        value: &T,
    ) -> Result<(), RouteError> {
        self.shard_state()
            .publish_except(room, to_message(value)?, Some(self.id()))
            .map_err(overloaded)
    }

    /// Send `value` to every connection and session of the server.
    pub fn broadcast_all<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), RouteError> {
        self.shard_state()
            .broadcast_all(to_message(value)?)
            .map_err(overloaded)
    }

    /// Close the connection (WebSocket close code; WebTransport session error code).
    pub fn close(&self, code: u16, reason: &str) {
        match &self.peer {
            Peer::Ws(c) => c.close(code, reason),
            #[cfg(feature = "webtransport")]
            Peer::Wt(s) => s.close(u32::from(code), reason),
        }
    }

    /// Look up any live connection by id.
    pub async fn lookup(&self, id: ConnId) -> Result<Option<ConnInfo>, LookupError> {
        self.shard_state().lookup_conn(id).await
    }

    /// Live members of `room` on every shard (at most `limit`; the flag: more
    /// exist).
    pub async fn room_members(
        &self,
        room: &str,
        limit: usize,
    ) -> Result<(Vec<ConnInfo>, bool), LookupError> {
        self.shard_state().lookup_room(room, limit).await
    }

    /// The presence list of `room` (empty unless `presence.rooms` covers it).
    pub async fn presence(&self, room: &str) -> Result<Vec<PresenceMember>, LookupError> {
        self.shard_state().presence_list(room).await
    }
}
