//! [`Ctx`]: what a route handler gets, over a WebSocket connection or a
//! WebTransport session — the [`ClientHandle`] vocabulary with JSON bodies and
//! route errors.

use super::*;

/// What a route handler gets: the connection (WebSocket or WebTransport session)
/// and everything it can do — reply, send to any connection, rooms, metadata.
///
/// Cloning is cheap (handles to the same connection): move a clone into a task
/// spawned on the shard (`glommio::spawn_local`) to await [`Ctx::lookup`],
/// [`Ctx::room_members`] or [`Ctx::presence`] and reply afterwards.
#[derive(Clone)]
pub struct Ctx {
    client: Rc<dyn ClientHandle>,
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
            client: Rc::new(conn),
            router,
        }
    }

    #[cfg(feature = "webtransport")]
    pub(crate) fn wt(session: WtSession, router: Arc<Router>) -> Self {
        Self {
            client: Rc::new(session),
            router,
        }
    }

    /// The connection or session, in the vocabulary every transport shares.
    pub fn client(&self) -> &dyn ClientHandle {
        &*self.client
    }

    pub(super) fn shard_state(&self) -> &Rc<Shard> {
        self.client.parts().shard
    }

    /// The connection's registry id.
    pub fn id(&self) -> ConnId {
        self.client.id()
    }

    /// The shard the connection lives on.
    pub fn shard(&self) -> usize {
        self.client.shard()
    }

    /// WebSocket or WebTransport.
    pub fn transport(&self) -> TransportKind {
        self.client.transport()
    }

    /// The WebSocket connection, for transport-specific calls.
    pub fn connection(&self) -> Option<&Connection> {
        self.client.parts().any.downcast_ref()
    }

    /// The WebTransport session, for transport-specific calls.
    #[cfg(feature = "webtransport")]
    pub fn session(&self) -> Option<&WtSession> {
        self.client.parts().any.downcast_ref()
    }

    /// The metadata value under `key` as a `T`.
    pub fn meta<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        self.client.parts().meta.get(key)
    }

    /// Set metadata `key` (visible to the registry and, for presence keys, in
    /// later joins).
    pub fn set_meta<T: Serialize>(&self, key: &str, value: T) -> Result<(), MetaError> {
        self.client.parts().meta.set(key, value)
    }

    /// Remove metadata `key`.
    pub fn remove_meta(&self, key: &str) -> bool {
        self.client.remove_meta(key)
    }

    /// All metadata.
    pub fn meta_all(&self) -> Meta {
        self.client.meta_all()
    }

    /// This connection as the registry shows it.
    pub fn info(&self) -> ConnInfo {
        self.client.info()
    }

    pub(super) fn send_message(&self, msg: Message) -> Result<(), RouteError> {
        self.client
            .send(msg)
            .map_err(|e| RouteError::client("send_failed", e.to_string()))
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
        self.client
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
        self.client
            .send_to_node(node, to, to_message(value)?)
            .map_err(overloaded)
    }

    /// This node's id in cluster mode (`None` alone): with [`Ctx::id`] it names
    /// this connection across the cluster (`NODE:SHARD.SLOT.GEN`).
    pub fn node_id(&self) -> Option<String> {
        self.client.node_id()
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
        self.client.join(room);
        Ok(())
    }

    /// Leave `room`.
    pub fn leave(&self, room: &str) {
        self.client.leave(room);
    }

    /// Rooms this connection is in.
    pub fn rooms(&self) -> Vec<String> {
        self.client.rooms().iter().map(|r| r.to_string()).collect()
    }

    /// True if this connection is in `room`.
    pub fn in_room(&self, room: &str) -> bool {
        self.client.in_room(room)
    }

    /// Broadcast `value` as JSON to every member of `room` on every shard.
    pub fn broadcast<T: Serialize + ?Sized>(
        &self,
        room: &str,
        value: &T,
    ) -> Result<(), RouteError> {
        self.client
            .broadcast(room, to_message(value)?)
            .map_err(overloaded)
    }

    /// Broadcast `value` to every member of `room` except this connection.
    pub fn broadcast_except_me<T: Serialize + ?Sized>(
        &self,
        room: &str,
        value: &T,
    ) -> Result<(), RouteError> {
        self.client
            .broadcast_except_me(room, to_message(value)?)
            .map_err(overloaded)
    }

    /// Send `value` to every connection and session of the server.
    pub fn broadcast_all<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), RouteError> {
        self.client
            .broadcast_all(to_message(value)?)
            .map_err(overloaded)
    }

    /// Close the connection (WebSocket close code; WebTransport session error code).
    pub fn close(&self, code: u16, reason: &str) {
        self.client.close(code, reason);
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
