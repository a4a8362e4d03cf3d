//! [`Connection`]: a handle to one WebSocket connection on its shard.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::SystemTime;

use corecast_shards::ConnId;

use super::client::{sealed, ClientHandle};
use crate::net::driver::WRITE;
use crate::net::shard::Shard;
use crate::net::tcp_conn::{Conn, ConnState, SendError};
use crate::vocab::message::Message;
use crate::vocab::registry::{ConnInfo, TransportKind};

/// A handle to one WebSocket connection or SSE stream, usable on the
/// connection's shard. Callback handlers receive `&Connection`; async handlers
/// get a [`WsConn`](super::ws_task::WsConn) or an
/// [`SseStream`](super::sse_stream::SseStream), which dereference to one. What
/// it can do is [`ClientHandle`]'s vocabulary (shared with WebTransport
/// sessions), plus [`Connection::join_room_resuming`].
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

    /// Join `room`, first replaying what the client missed if its request carried a
    /// resume cursor for this room (SSE `Last-Event-ID` / `?lastEventId=`, WebSocket
    /// `?since=`). A cursor that history cannot serve gets an explicit gap signal.
    pub fn join_room_resuming(&self, room: &str) {
        let since = self.conn.requested_position(room);
        self.shard.join_since(room, &self.conn, since);
    }
}

impl sealed::Engine for Connection {
    fn parts(&self) -> sealed::Parts<'_> {
        sealed::Parts {
            shard: &self.shard,
            meta: &self.conn.meta,
            query: &self.conn.query,
            any: self,
        }
    }
}

impl ClientHandle for Connection {
    fn id(&self) -> ConnId {
        self.conn.id
    }

    fn path(&self) -> &str {
        &self.shard.shared.endpoints[usize::from(self.conn.endpoint)].0
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        self.conn.remote()
    }

    fn connected_at(&self) -> SystemTime {
        self.conn.connected_at()
    }

    fn transport(&self) -> TransportKind {
        if self.conn.is_sse() {
            TransportKind::Sse
        } else {
            TransportKind::WebSocket
        }
    }

    fn info(&self) -> ConnInfo {
        self.shard.conn_info(&self.conn)
    }

    fn send(&self, msg: Message) -> Result<(), SendError> {
        let f = crate::net::fanout::direct_frame(&self.shard, &self.conn, &msg);
        let queued = self.conn.enqueue(f, &self.shard.stats);
        self.shard.schedule(&self.conn, WRITE);
        queued
    }

    fn join(&self, room: &str) -> bool {
        self.shard.join(room, &self.conn)
    }

    fn leave(&self, room: &str) {
        self.shard.leave(room, &self.conn);
    }

    fn rooms(&self) -> Vec<Arc<str>> {
        self.conn.rooms.borrow().clone()
    }

    fn close(&self, code: u16, reason: &str) {
        self.shard.close(&self.conn, code, reason);
    }

    fn is_closed(&self) -> bool {
        self.conn.state() != ConnState::Open
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.conn.id)
            .finish()
    }
}
