//! [`Connection`]: a handle to one WebSocket connection on its shard.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use corecast_shards::ConnId;

use crate::net::driver::WRITE;
use crate::net::shard::{BroadcastError, Shard};
use crate::net::tcp_conn::{Conn, ConnState, SendError};
use crate::proto::http;
use crate::vocab::message::Message;
use crate::vocab::meta::{Meta, MetaError};
use crate::vocab::registry::{ConnInfo, LookupError, TransportKind};

/// A handle to one WebSocket connection, usable on the connection's shard.
/// Callback handlers receive `&Connection`; async handlers get a
/// [`WsConn`](super::tcp_conn::WsConn), which dereferences to one.
pub struct Connection {
    pub(crate) shard: Rc<Shard>,
    pub(crate) conn: Rc<Conn>,
}

impl Clone for Connection {
    fn clone(&self) -> Self {
        Self {
            shard: self.shard.clone(),
            conn: self.conn.clone(),
        }
    }
}

impl Connection {
    pub(crate) fn new(shard: Rc<Shard>, conn: Rc<Conn>) -> Self {
        Self { shard, conn }
    }

    /// This connection's id: `(shard, slot, generation)`.
    pub fn id(&self) -> ConnId {
        self.conn.id
    }

    /// The shard this connection lives on.
    pub fn shard(&self) -> usize {
        self.shard.id
    }

    /// The request path, e.g. `/ws/chat`.
    pub fn path(&self) -> &str {
        &self.shard.shared.endpoints[usize::from(self.conn.endpoint)].0
    }

    /// Query parameters in order (percent-decoded); repeated keys appear repeatedly.
    pub fn query(&self) -> Vec<(String, String)> {
        http::parse_query(&self.conn.query)
    }

    /// Every value of query parameter `key`, in order.
    pub fn query_all(&self, key: &str) -> Vec<String> {
        http::query_values(&self.conn.query, key)
    }

    /// The first value of query parameter `key`.
    pub fn query_get(&self, key: &str) -> Option<String> {
        self.query_all(key).into_iter().next()
    }

    /// The client's address.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.conn.remote()
    }

    /// When the connection was opened (second precision).
    pub fn connected_at(&self) -> std::time::SystemTime {
        self.conn.connected_at()
    }

    /// WebSocket or SSE.
    pub fn transport(&self) -> TransportKind {
        if self.conn.is_sse() {
            TransportKind::Sse
        } else {
            TransportKind::WebSocket
        }
    }

    /// Queue a message to this client (written by the shard's driver, coalesced with
    /// whatever else is queued). On an SSE stream it becomes an event without an id.
    pub fn send(&self, msg: Message) -> Result<(), SendError> {
        let f = crate::net::fanout::direct_frame(&self.shard, &self.conn, &msg);
        let queued = self.conn.enqueue(f, &self.shard.stats);
        self.shard.schedule(&self.conn, WRITE);
        queued
    }

    /// Send `msg` to connection `to`, on any shard and of any transport
    /// (fire-and-forget: an id that has gone is counted, not reported).
    pub fn send_to(&self, to: ConnId, msg: Message) -> Result<(), BroadcastError> {
        self.shard.send_to(to, msg)
    }

    /// Cluster mode: send `msg` to connection `to` of node `node` (this node's own
    /// id works too); fire-and-forget. `BroadcastError::Unavailable` without a
    /// cluster or while Redis is unreachable.
    pub fn send_to_node(&self, node: &str, to: ConnId, msg: Message) -> Result<(), BroadcastError> {
        self.shard.send_to_node(node, to, msg)
    }

    /// This node's id in cluster mode (`None` alone).
    pub fn node_id(&self) -> Option<String> {
        self.shard.node_id().map(str::to_string)
    }

    /// Broadcast `msg` to every member of `room` except this connection.
    pub fn broadcast_to_room_except_me(
        &self,
        room: &str,
        msg: Message,
    ) -> Result<(), BroadcastError> {
        self.shard.publish_except(room, msg, Some(self.conn.id))
    }

    /// Send `msg` to every connection and session of the server, on every shard
    /// (not sequenced, not kept in history).
    pub fn broadcast_to_all(&self, msg: Message) -> Result<(), BroadcastError> {
        self.shard.broadcast_all(msg)
    }

    /// This connection as the registry shows it.
    pub fn info(&self) -> ConnInfo {
        self.shard.conn_info(&self.conn)
    }

    /// Look up a live connection by id, on any shard.
    pub async fn lookup(&self, id: ConnId) -> Result<Option<ConnInfo>, LookupError> {
        self.shard.lookup_conn(id).await
    }

    /// Live members of `room` on every shard (at most `limit`); the flag says
    /// whether there were more.
    pub async fn room_members(
        &self,
        room: &str,
        limit: usize,
    ) -> Result<(Vec<ConnInfo>, bool), LookupError> {
        self.shard.lookup_room(room, limit).await
    }

    /// Join `room`: broadcasts to it reach this connection.
    pub fn join_room(&self, room: &str) {
        self.shard.join(room, &self.conn);
    }

    /// Join `room`, first replaying what the client missed if its request carried a
    /// resume cursor for this room (SSE `Last-Event-ID` / `?lastEventId=`, WebSocket
    /// `?since=`). A cursor that history cannot serve gets an explicit gap signal.
    pub fn join_room_resuming(&self, room: &str) {
        let since = self.conn.requested_position(room);
        self.shard.join_since(room, &self.conn, since);
    }

    /// Leave `room`.
    pub fn leave_room(&self, room: &str) {
        self.shard.leave(room, &self.conn);
    }

    /// Rooms this connection is in.
    pub fn rooms(&self) -> Vec<Arc<str>> {
        self.conn.rooms.borrow().clone()
    }

    /// Broadcast `msg` to every member of `room` on every shard (this connection
    /// too, if it is a member), in the room's single order.
    pub fn broadcast_to_room(&self, room: &str, msg: Message) -> Result<(), BroadcastError> {
        self.shard.publish_from(room, msg, None, Some(self.conn.id))
    }

    /// Broadcast `msg` to every room this connection is in.
    pub fn broadcast_to_my_rooms(&self, msg: &Message) -> Result<(), BroadcastError> {
        let rooms = self.conn.rooms.borrow().clone();
        self.shard.publish_to_rooms(rooms, msg, Some(self.conn.id))
    }

    /// Start the close handshake with `code` and `reason`.
    pub fn close(&self, code: u16, reason: &str) {
        self.shard.close(&self.conn, code, reason);
    }

    /// True once the connection is closing or closed.
    pub fn is_closed(&self) -> bool {
        self.conn.state() != ConnState::Open
    }

    /// Attach `value` (anything that serializes to JSON) under `key`; the registry
    /// and presence show it on every shard.
    pub fn set_meta<T: serde::Serialize>(&self, key: &str, value: T) -> Result<(), MetaError> {
        self.conn.meta.set(key, value)
    }

    /// The value under `key` as a `T`, if present and of that shape.
    pub fn meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> Option<T> {
        self.conn.meta.get(key)
    }

    /// Remove the value under `key`.
    pub fn remove_meta(&self, key: &str) -> bool {
        self.conn.meta.remove(key)
    }

    /// A copy of all metadata.
    pub fn meta_all(&self) -> Meta {
        self.conn.meta.snapshot()
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.conn.id)
            .finish()
    }
}
