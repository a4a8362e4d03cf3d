//! [`WsConn`]: what a WebSocket handler gets.

use std::any::Any;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use bytes::BytesMut;
use corecast_shards::ConnId;

use super::message::Message;
use crate::net::peer::{Peer, PeerState, SendError};
use crate::net::read::{read_into, settle};
use crate::net::shard::{BroadcastError, Shard};
use crate::proto::http::Request;
use crate::proto::ws::{close, frame, Decoder, Incoming};
use crate::stats::ShardStats;

/// Payloads at least this big are compressed when the client negotiated
/// permessage-deflate; smaller ones are not worth the CPU.
const COMPRESS_MIN: usize = 64;

/// One WebSocket connection, owned by its handler on the connection's shard.
///
/// Reading happens in [`WsConn::recv`], which also answers pings and completes the
/// close handshake; sending queues frames for the connection's writer task, which
/// coalesces them into as few syscalls as it can. When the handler returns, the
/// connection is closed (1000) after what is queued has been written.
pub struct WsConn {
    shard: Rc<Shard>,
    peer: Rc<Peer>,
    decoder: Decoder,
    pending: BytesMut,
    request: Request,
    query: Vec<(String, String)>,
    remote: Option<SocketAddr>,
    protocol: Option<String>,
    metadata: HashMap<String, Box<dyn Any>>,
    finished: bool,
}

impl WsConn {
    pub(crate) fn new(
        shard: Rc<Shard>,
        peer: Rc<Peer>,
        decoder: Decoder,
        pending: BytesMut,
        request: Request,
        remote: Option<SocketAddr>,
        protocol: Option<String>,
    ) -> Self {
        let query = request.query_pairs();
        Self {
            shard,
            peer,
            decoder,
            pending,
            request,
            query,
            remote,
            protocol,
            metadata: HashMap::new(),
            finished: false,
        }
    }

    /// This connection's id: `(shard, slot, generation)`.
    pub fn id(&self) -> ConnId {
        self.peer.id
    }

    /// The request path, e.g. `/ws/chat`.
    pub fn path(&self) -> &str {
        &self.request.path
    }

    /// Query parameters in order (percent-decoded); repeated keys appear repeatedly.
    pub fn query(&self) -> &[(String, String)] {
        &self.query
    }

    /// Every value of query parameter `key`.
    pub fn query_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.query
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A request header's first value (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.request.header(name)
    }

    /// The client's address.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.remote
    }

    /// The negotiated subprotocol.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// The shard this connection lives on.
    pub fn shard(&self) -> usize {
        self.shard.id
    }

    /// Attach a typed value to this connection under `key`.
    pub fn set_meta<T: Any>(&mut self, key: &str, value: T) {
        self.metadata.insert(key.to_string(), Box::new(value));
    }

    /// The value under `key`, if present and of type `T`.
    pub fn meta<T: Any>(&self, key: &str) -> Option<&T> {
        self.metadata.get(key).and_then(|v| v.downcast_ref())
    }

    /// Remove the value under `key`.
    pub fn remove_meta(&mut self, key: &str) -> Option<Box<dyn Any>> {
        self.metadata.remove(key)
    }

    /// Receive the next data message. Pings are answered, pongs ignored, and the
    /// close handshake completed here; `None` means the connection is over (closed
    /// by either side, a protocol error — answered with its close code — or a
    /// network error).
    pub async fn recv(&mut self) -> Option<Message> {
        loop {
            if self.finished {
                return None;
            }
            match self.decoder.decode(&mut self.pending) {
                Ok(Some(incoming)) => {
                    if let Some(msg) = self.on_incoming(incoming) {
                        return Some(msg);
                    }
                }
                Ok(None) => {
                    settle(&mut self.pending);
                    let read_size = self.shard.shared.config.websocket.read_buffer_size;
                    let read = read_into(
                        &self.peer.stream,
                        &self.shard.arena,
                        read_size,
                        &mut self.pending,
                    )
                    .await;
                    if !matches!(read, Ok(n) if n > 0) {
                        // EOF or reset: nobody is left to read a close frame.
                        self.finished = true;
                        self.peer.abort();
                    }
                }
                Err(e) => {
                    self.peer.close(e.code, e.reason);
                    self.finished = true;
                }
            }
        }
    }

    fn on_incoming(&mut self, incoming: Incoming) -> Option<Message> {
        let open = self.peer.state() == PeerState::Open;
        match incoming {
            Incoming::Text(b) | Incoming::Binary(b) if !open => {
                // After our close frame, data is ignored (RFC 6455 5.5.1).
                let _ = b;
                None
            }
            Incoming::Text(b) => {
                ShardStats::add(&self.shard.stats.messages_in, 1);
                Some(Message::Text(b))
            }
            Incoming::Binary(b) => {
                ShardStats::add(&self.shard.stats.messages_in, 1);
                Some(Message::Binary(b))
            }
            Incoming::Ping(p) => {
                if open {
                    let _ = self
                        .peer
                        .push(frame::encode(frame::OpCode::Pong, false, &p));
                }
                None
            }
            Incoming::Pong(_) => None,
            Incoming::Close(c) => {
                match c {
                    Some((code, _)) => self.peer.close(code, ""),
                    None => self.peer.close_empty(),
                }
                self.finished = true;
                None
            }
        }
    }

    /// Queue a message to this client.
    pub fn send(&self, msg: Message) -> Result<(), SendError> {
        let f = if self.peer.compressed && msg.as_bytes().len() >= COMPRESS_MIN {
            self.shard.compress_frame(msg.opcode(), msg.as_bytes())
        } else {
            frame::encode(msg.opcode(), false, msg.as_bytes())
        };
        self.peer.push(f)
    }

    /// Join `room`; messages broadcast to it reach this connection.
    pub fn join_room(&mut self, room: &str) {
        let room: Arc<str> = Arc::from(room);
        self.shard.join(&room, &self.peer);
    }

    /// Leave `room`.
    pub fn leave_room(&mut self, room: &str) {
        self.shard.leave(room, &self.peer);
    }

    /// Rooms this connection is in.
    pub fn rooms(&self) -> Vec<Arc<str>> {
        self.peer.rooms.borrow().clone()
    }

    /// Broadcast `msg` to every member of `room` on every shard (this connection
    /// included if it is a member), in the room's single order.
    pub fn broadcast_to_room(&self, room: &str, msg: Message) -> Result<(), BroadcastError> {
        let room: Arc<str> = Arc::from(room);
        self.shard.publish(&room, msg)
    }

    /// Broadcast `msg` to every room this connection is in.
    pub fn broadcast_to_my_rooms(&self, msg: &Message) -> Result<(), BroadcastError> {
        let rooms = self.peer.rooms.borrow().clone();
        let mut result = Ok(());
        for room in rooms {
            if let Err(e) = self.shard.publish(&room, msg.clone()) {
                result = Err(e);
            }
        }
        result
    }

    /// Start the close handshake with `code` and `reason`; `recv` then returns `None`
    /// once the client answers.
    pub fn close(&self, code: u16, reason: &str) {
        self.peer.close(code, reason);
    }

    /// True once the connection is closing or closed.
    pub fn is_closed(&self) -> bool {
        self.finished || self.peer.state() != PeerState::Open
    }
}

impl std::fmt::Debug for WsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsConn")
            .field("id", &self.peer.id)
            .field("path", &self.request.path)
            .finish()
    }
}

/// Close code sent when a handler returns normally.
pub const CLOSE_NORMAL: u16 = close::NORMAL;
