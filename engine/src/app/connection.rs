//! [`Connection`]: a handle to one WebSocket connection on its shard.

use std::any::Any;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use corecast_shards::ConnId;

use super::message::Message;
use crate::net::conn::{Conn, ConnState, SendError};
use crate::net::driver::WRITE;
use crate::net::shard::{BroadcastError, Shard};
use crate::proto::http;
use crate::proto::ws::frame;

/// Payloads at least this big are compressed for clients that negotiated
/// permessage-deflate; smaller ones are not worth the CPU.
const COMPRESS_MIN: usize = 64;

/// A handle to one WebSocket connection, usable on the connection's shard.
/// Callback handlers receive `&Connection`; async handlers get a
/// [`WsConn`](super::conn::WsConn), which dereferences to one.
pub struct Connection {
    pub(crate) shard: Rc<Shard>,
    pub(crate) conn: Rc<Conn>,
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

    /// The client's address (asked of the socket: idle connections don't store it).
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.conn.stream.borrow().peer_addr().ok()
    }

    /// Queue a message to this client (written by the shard's driver, coalesced with
    /// whatever else is queued).
    pub fn send(&self, msg: Message) -> Result<(), SendError> {
        let f = if self.conn.compressed && msg.as_bytes().len() >= COMPRESS_MIN {
            self.shard.compress_frame(msg.opcode(), msg.as_bytes())
        } else {
            frame::encode(msg.opcode(), false, msg.as_bytes())
        };
        let queued = self.conn.enqueue(f, &self.shard.stats);
        self.shard.schedule(&self.conn, WRITE);
        queued
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
        self.shard.publish(room, msg)
    }

    /// Broadcast `msg` to every room this connection is in.
    pub fn broadcast_to_my_rooms(&self, msg: &Message) -> Result<(), BroadcastError> {
        let rooms = self.conn.rooms.borrow().clone();
        self.shard.publish_to_all(rooms, msg)
    }

    /// Start the close handshake with `code` and `reason`.
    pub fn close(&self, code: u16, reason: &str) {
        self.shard.close(&self.conn, code, reason);
    }

    /// True once the connection is closing or closed.
    pub fn is_closed(&self) -> bool {
        self.conn.state() != ConnState::Open
    }

    /// Attach a value to this connection under `key`.
    pub fn set_meta<T: Any>(&self, key: &str, value: T) {
        self.conn
            .meta
            .borrow_mut()
            .get_or_insert_with(|| Box::new(HashMap::new()))
            .insert(key.to_string(), Box::new(value));
    }

    /// A copy of the value under `key`, if present and of type `T`.
    pub fn meta<T: Any + Clone>(&self, key: &str) -> Option<T> {
        self.conn
            .meta
            .borrow()
            .as_ref()
            .and_then(|m| m.get(key))
            .and_then(|v| v.downcast_ref::<T>())
            .cloned()
    }

    /// Remove the value under `key`.
    pub fn remove_meta(&self, key: &str) -> bool {
        self.conn
            .meta
            .borrow_mut()
            .as_mut()
            .is_some_and(|m| m.remove(key).is_some())
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.conn.id)
            .finish()
    }
}
