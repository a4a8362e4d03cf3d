//! One WebSocket connection as its shard holds it: socket, decoder, outbound queue,
//! close state, rooms and handler. There is no task per connection: the shard's
//! [`driver`](super::driver) reads and writes it when its socket or queue is ready,
//! so an idle connection costs only this struct and the socket's armed poll.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::sync::Arc;
use std::task::Waker;

use bytes::{Bytes, BytesMut};
use corecast_shards::{ConnId, FrameClass, OutboundQueue};

use super::socket::Socket;
use crate::net::handle::callbacks::WsCallbacks;
use crate::proto::ws::session::{Framing, Session};
use crate::proto::ws::{close, Decoder};
use crate::stats::ShardStats;
use crate::vocab::message::Message;
use crate::vocab::meta::MetaCell;

/// Messages an async handler may have waiting before the driver stops reading its
/// socket (back-pressure instead of an unbounded inbox).
pub(crate) const TASK_INBOX_CAP: usize = 32;

/// Where a connection is in its life (its [`Session`]'s phase).
pub(crate) use crate::proto::ws::session::Phase as ConnState;

/// How room messages are framed for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// WebSocket, the message as sent.
    WebSocket,
    /// WebSocket, each room message wrapped in a JSON envelope with room and id.
    WebSocketEnvelope,
    /// Server-Sent Events, one room: event ids are the room's `epoch:seq`.
    Sse,
    /// Server-Sent Events, several rooms: event ids list every room's position.
    SseMultiRoom,
}

/// Resume bookkeeping, allocated only for connections that resume or need
/// per-connection event ids (multi-room SSE streams).
#[derive(Debug, Default)]
pub(crate) struct ResumeState {
    /// Rooms whose replay is on its way: live messages for them are skipped meanwhile
    /// (the replay is cut after the last of them).
    pub(crate) replaying: Vec<Arc<str>>,
    /// Last position delivered per room (multi-room SSE ids).
    pub(crate) cursors: Vec<(Arc<str>, corecast_shards::Position)>,
    /// The cursor the client asked to resume from (Last-Event-ID, ?lastEventId=,
    /// ?since=), parsed at accept.
    pub(crate) requested: Option<crate::proto::sse::StreamCursor>,
}

/// Who handles a connection's messages.
pub(crate) enum Handler {
    /// Synchronous callbacks, run by the driver (no task per connection).
    Callbacks(Arc<dyn WsCallbacks>),
    /// An async handler task reading through [`TaskInbox`].
    Task(Box<TaskInbox>),
}

/// The hand-over between the driver and an async handler's `recv()`.
#[derive(Default)]
pub(crate) struct TaskInbox {
    pub(crate) messages: RefCell<VecDeque<Message>>,
    pub(crate) waker: Cell<Option<Waker>>,
    /// No more messages will come.
    pub(crate) ended: Cell<bool>,
    /// The driver stopped reading because the inbox is full.
    pub(crate) paused: Cell<bool>,
}

impl TaskInbox {
    pub(crate) fn wake(&self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

/// What the connection open/close events report, kept only while connection events
/// are enabled (`corecast::conn` at debug): otherwise a connection pays 8 bytes.
#[derive(Debug)]
pub(crate) struct ConnLog {
    pub(crate) opened: std::time::Instant,
    /// The client's address (`-` if the socket could not tell).
    pub(crate) remote: String,
    /// The first close code sent or received (0: none).
    pub(crate) close_code: Cell<u16>,
    /// Who sent that close code first: `server` or `client`.
    pub(crate) closed_by: Cell<&'static str>,
}

impl ConnLog {
    pub(crate) fn new(remote: Option<std::net::SocketAddr>) -> Self {
        Self {
            opened: std::time::Instant::now(),
            remote: remote.map_or_else(|| "-".to_string(), |a| a.to_string()),
            close_code: Cell::new(0),
            closed_by: Cell::new(""),
        }
    }

    /// Remember the first close code and who sent it.
    pub(crate) fn record_close(&self, code: u16, by: &'static str) {
        if self.close_code.get() == 0 {
            self.close_code.set(code);
            self.closed_by.set(by);
        }
    }
}

/// The close code of a slow consumer (queue full under policy `disconnect`, or a
/// stalled write): 1008 Policy Violation, as documented in docs/PROTOCOL.md.
pub(crate) const SLOW_CONSUMER_CODE: close::CloseCode = close::POLICY_VIOLATION;
/// Close reason when the outbound queue is full (policy `disconnect`).
pub(crate) const SLOW_QUEUE_FULL: &str = "slow consumer: outbound queue full";
/// Close reason when the socket accepted nothing for `write_stall_timeout`.
pub(crate) const SLOW_WRITE_STALLED: &str = "slow consumer: write stalled";

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The connection is closing or closed.
    Closed,
    /// The outbound queue was full: the connection is closed as a slow consumer.
    SlowConsumer,
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SendError::Closed => "connection is closed",
            SendError::SlowConsumer => "outbound queue full: closed as a slow consumer",
        })
    }
}

impl std::error::Error for SendError {}

/// A live WebSocket connection.
pub(crate) struct Conn {
    pub(crate) id: ConnId,
    pub(crate) stream: RefCell<Socket>,
    pub(crate) queue: RefCell<OutboundQueue>,
    pub(crate) decoder: RefCell<Decoder>,
    pub(crate) pending: RefCell<BytesMut>,
    /// The connection's life: what frames mean, the close handshake, failing
    /// fast (sans-IO, `proto::ws::session`; a few bytes).
    session: Cell<Session>,
    /// A close-reply timer is running.
    pub(crate) close_timer: Cell<bool>,
    /// Shard clock (seconds) of the last bytes read; idle sweeps compare it.
    pub(crate) last_read: Cell<u32>,
    /// Ready-list bits already queued for this connection (see `driver`).
    pub(crate) scheduled: Cell<u8>,
    /// Room broadcasts go to this connection compressed.
    pub(crate) compressed: bool,
    pub(crate) rooms: RefCell<Vec<Arc<str>>>,
    /// Index of the endpoint in `Shared::endpoints`.
    pub(crate) endpoint: u16,
    /// Raw query string; parsed on demand (idle connections keep one small string).
    pub(crate) query: Box<str>,
    pub(crate) handler: Handler,
    pub(crate) meta: MetaCell,
    /// When the handshake completed, Unix seconds (registry; 4 bytes, not 16:
    /// idle memory per connection is a headline figure).
    pub(crate) connected_at: u32,
    pub(crate) transport: Transport,
    pub(crate) resume: RefCell<Option<Box<ResumeState>>>,
    /// When the oldest room message queued since the queue was last empty was
    /// sequenced ([`crate::stats::clock_ns`]); 0: none. Feeds the publish-to-write
    /// histogram when a write empties the queue.
    pub(crate) oldest_publish: Cell<u64>,
    /// Open/close event details, when those events are enabled.
    pub(crate) log: Option<Box<ConnLog>>,
    /// Limit state (per-address slot, rate-limit buckets, pending pongs), allocated
    /// only when one of those is in use: at accept when a per-address cap or a rate
    /// limit is configured, else at the first ping.
    pub(crate) limits: std::cell::OnceCell<Box<super::limits::ConnLimits>>,
    /// Stall-sweeper ticks (seconds) with bytes queued and no write progress; reset
    /// by every write that takes bytes (see `net::stall`).
    pub(crate) stalled_ticks: Cell<u16>,
}

/// What the accept path hands over to build a [`Conn`].
pub(crate) struct ConnParts {
    pub(crate) stream: Socket,
    pub(crate) decoder: Decoder,
    pub(crate) pending: BytesMut,
    pub(crate) queue_cap: usize,
    pub(crate) compressed: bool,
    pub(crate) endpoint: u16,
    pub(crate) query: Box<str>,
    pub(crate) handler: Handler,
    pub(crate) transport: Transport,
    /// The shard clock at accept.
    pub(crate) now: u32,
    pub(crate) log: Option<Box<ConnLog>>,
    pub(crate) limits: Option<Box<super::limits::ConnLimits>>,
}

impl Conn {
    /// When the connection was opened.
    pub(crate) fn connected_at(&self) -> std::time::SystemTime {
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::from(self.connected_at))
    }

    /// The client's address, asked of the socket (not stored: idle connections
    /// stay small); `None` once the socket is gone.
    pub(crate) fn remote(&self) -> Option<std::net::SocketAddr> {
        self.stream.borrow().peer_addr().ok()
    }

    pub(crate) fn new(id: ConnId, p: ConnParts) -> Self {
        Self {
            id,
            stream: RefCell::new(p.stream),
            queue: RefCell::new(OutboundQueue::new(p.queue_cap)),
            decoder: RefCell::new(p.decoder),
            pending: RefCell::new(p.pending),
            session: Cell::new(Session::new(
                if matches!(p.transport, Transport::Sse | Transport::SseMultiRoom) {
                    Framing::EventStream
                } else {
                    Framing::WebSocket
                },
            )),
            close_timer: Cell::new(false),
            last_read: Cell::new(p.now),
            scheduled: Cell::new(0),
            compressed: p.compressed,
            rooms: RefCell::new(Vec::new()),
            endpoint: p.endpoint,
            query: p.query,
            handler: p.handler,
            meta: MetaCell::default(),
            connected_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as u32),
            transport: p.transport,
            resume: RefCell::new(None),
            oldest_publish: Cell::new(0),
            log: p.log,
            limits: p.limits.map(std::cell::OnceCell::from).unwrap_or_default(),
            stalled_ticks: Cell::new(0),
        }
    }

    pub(crate) fn state(&self) -> ConnState {
        self.session.get().phase()
    }

    /// True while there is anything left to read from the client.
    pub(crate) fn reads(&self) -> bool {
        self.session.get().reads()
    }

    /// Run `f` on the connection's [`Session`] (it is `Copy`: read, step, store).
    pub(crate) fn session<R>(&self, f: impl FnOnce(&mut Session) -> R) -> R {
        let mut s = self.session.get();
        let r = f(&mut s);
        self.session.set(s);
        r
    }

    /// Queue an encoded frame that must not be dropped (a reply, a control frame;
    /// the caller schedules the write). A full queue closes the connection as a slow
    /// consumer rather than letting it grow.
    pub(crate) fn enqueue(&self, frame: Bytes, stats: &ShardStats) -> Result<(), SendError> {
        if self.state() != ConnState::Open {
            return Err(SendError::Closed);
        }
        let len = frame.len() as u64;
        let pushed = self.queue.borrow_mut().push(frame);
        if pushed.is_ok() {
            ShardStats::add_local(&stats.outbound_queued_bytes, len);
            return Ok(());
        }
        ShardStats::add(&stats.slow_consumers, 1);
        self.close_slow(SLOW_QUEUE_FULL, stats);
        Err(SendError::SlowConsumer)
    }

    /// Queue a room message sequenced at `published` ([`crate::stats::clock_ns`])
    /// under its room's slow-consumer policy (`class`, resolved once per room per
    /// delivery by the caller): a full queue drops or conflates droppable frames, or
    /// (policy `disconnect`) closes the connection as [`Conn::enqueue`] does. The
    /// message is remembered for the publish-to-write histogram if it is the oldest
    /// one queued.
    #[inline]
    pub(crate) fn enqueue_room(
        &self,
        frame: Bytes,
        class: FrameClass,
        published: u64,
        stats: &ShardStats,
    ) -> Result<(), SendError> {
        if self.state() != ConnState::Open {
            return Err(SendError::Closed);
        }
        let len = frame.len() as u64;
        let pushed = self.queue.borrow_mut().push_room(frame, class);
        let Ok(p) = pushed else {
            ShardStats::add(&stats.slow_consumers, 1);
            self.close_slow(SLOW_QUEUE_FULL, stats);
            return Err(SendError::SlowConsumer);
        };
        if p.queued {
            ShardStats::add_local(&stats.outbound_queued_bytes, len);
            if self.oldest_publish.get() == 0 {
                self.oldest_publish.set(published);
            }
        }
        if p.removed_bytes != 0 {
            ShardStats::sub_local(&stats.outbound_queued_bytes, p.removed_bytes as u64);
        }
        if p.dropped != 0 {
            ShardStats::add_local(&stats.slow_dropped, u64::from(p.dropped));
        }
        if p.conflated != 0 {
            ShardStats::add_local(&stats.slow_conflated, u64::from(p.conflated));
        }
        Ok(())
    }

    /// Close a slow consumer: drop what has not started (keeping a partly written
    /// frame whole) and queue the close frame ([`SLOW_CONSUMER_CODE`], `reason`).
    pub(crate) fn close_slow(&self, reason: &str, stats: &ShardStats) {
        {
            let mut q = self.queue.borrow_mut();
            let before = q.len_bytes();
            q.drop_unsent();
            ShardStats::sub_local(
                &stats.outbound_queued_bytes,
                (before - q.len_bytes()) as u64,
            );
        }
        // What it was waiting for is gone: the close frame is not a room message.
        self.oldest_publish.set(0);
        if let Some(l) = self.log.as_deref() {
            l.record_close(SLOW_CONSUMER_CODE, "server");
        }
        let close = self.session(|s| s.abandon(SLOW_CONSUMER_CODE, reason));
        self.push_close(close, stats);
    }

    /// Remove `n` written bytes from the queue (see [`OutboundQueue::consume`]);
    /// returns the frames completed.
    pub(crate) fn consume_written(&self, n: usize, stats: &ShardStats) -> usize {
        let mut q = self.queue.borrow_mut();
        let before = q.len_bytes();
        let frames = q.consume(n);
        if let Some(l) = self.limits.get() {
            l.pongs_written(n);
        }
        if n != 0 {
            self.stalled_ticks.set(0);
        }
        ShardStats::sub_local(
            &stats.outbound_queued_bytes,
            (before - q.len_bytes()) as u64,
        );
        frames
    }

    /// Drop everything queued (the connection is finished).
    pub(crate) fn clear_queue(&self, stats: &ShardStats) {
        let mut q = self.queue.borrow_mut();
        ShardStats::sub_local(&stats.outbound_queued_bytes, q.len_bytes() as u64);
        q.clear();
        self.oldest_publish.set(0);
        if let Some(l) = self.limits.get() {
            l.pongs_written(usize::MAX);
        }
    }

    /// Append to the queue past its cap (close frames).
    fn push_unbounded(&self, frame: Bytes, stats: &ShardStats) {
        ShardStats::add_local(&stats.outbound_queued_bytes, frame.len() as u64);
        self.queue.borrow_mut().push_unbounded(frame);
    }

    /// Queue our close frame after everything queued. Returns false if a close was
    /// already under way.
    pub(crate) fn enqueue_close(
        &self,
        code: close::CloseCode,
        reason: &str,
        stats: &ShardStats,
    ) -> bool {
        let close = self.session(|s| s.close(code, reason));
        self.push_close(close, stats)
    }

    /// Queue a close frame the [`Session`] produced, past the queue's cap (an
    /// event stream's is empty: it just ends). False for none.
    pub(crate) fn push_close(&self, close: Option<Bytes>, stats: &ShardStats) -> bool {
        match close {
            Some(frame) => {
                if !frame.is_empty() {
                    self.push_unbounded(frame, stats);
                }
                true
            }
            None => false,
        }
    }

    /// The transport's name in logs and metrics labels.
    pub(crate) fn transport_name(&self) -> &'static str {
        if self.is_sse() {
            "sse"
        } else {
            "websocket"
        }
    }

    /// True for Server-Sent Events streams.
    pub(crate) fn is_sse(&self) -> bool {
        matches!(self.transport, Transport::Sse | Transport::SseMultiRoom)
    }

    /// The shared name of a room this connection is in (the room table's copy, so
    /// no allocation); a fresh one if it is not in the room.
    pub(crate) fn room_name(&self, room: &str) -> Arc<str> {
        self.rooms
            .borrow()
            .iter()
            .find(|r| &***r == room)
            .cloned()
            .unwrap_or_else(|| Arc::from(room))
    }

    /// Whether a replay of `room` is still on its way.
    pub(crate) fn is_replaying(&self, room: &str) -> bool {
        self.resume
            .borrow()
            .as_ref()
            .is_some_and(|r| r.replaying.iter().any(|x| &**x == room))
    }

    /// Skip live messages of `room` until its replay arrives.
    pub(crate) fn begin_replay(&self, room: Arc<str>) {
        self.resume
            .borrow_mut()
            .get_or_insert_with(Box::default)
            .replaying
            .push(room);
    }

    /// The replay of `room` arrived: live messages flow again.
    pub(crate) fn end_replay(&self, room: &str) {
        if let Some(r) = self.resume.borrow_mut().as_mut() {
            r.replaying.retain(|x| &**x != room);
        }
    }

    /// Where to resume `room` from, per the client's cursor: a single cursor applies
    /// to a stream of one room, a per-room cursor to the rooms it names.
    pub(crate) fn requested_position(&self, room: &str) -> Option<corecast_shards::Position> {
        use crate::proto::sse::StreamCursor;
        let guard = self.resume.borrow();
        let requested = guard.as_ref()?.requested.as_ref()?;
        let c = match requested {
            StreamCursor::Single(c) => *c,
            StreamCursor::PerRoom(list) => list.iter().find(|(r, _)| r == room)?.1,
        };
        Some(corecast_shards::Position {
            epoch: c.epoch,
            seq: c.seq,
        })
    }

    /// Set the position a multi-room stream's id reports for `room`.
    pub(crate) fn set_cursor(&self, room: &str, pos: corecast_shards::Position) {
        let mut guard = self.resume.borrow_mut();
        let state = guard.get_or_insert_with(Box::default);
        match state.cursors.iter_mut().find(|(r, _)| &**r == room) {
            Some((_, p)) => *p = pos,
            None => state.cursors.push((self.room_name(room), pos)),
        }
    }

    /// Record `pos` as the last position delivered in `room` and return the
    /// stream's event id: every room's last position.
    pub(crate) fn advance_cursor(&self, room: &str, pos: corecast_shards::Position) -> String {
        self.set_cursor(room, pos);
        let guard = self.resume.borrow();
        let cursors = guard
            .as_ref()
            .map(|s| s.cursors.as_slice())
            .unwrap_or_default();
        crate::proto::sse::format_per_room_iter(
            cursors
                .iter()
                .map(|(r, p)| (&**r, super::fanout::cursor(*p))),
        )
    }

    /// The async handler's inbox, if this connection has one.
    pub(crate) fn task_inbox(&self) -> Option<&TaskInbox> {
        match &self.handler {
            Handler::Task(t) => Some(t),
            Handler::Callbacks(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    /// Idle memory per connection is a headline figure (docs/BENCHMARKS.md): keep the
    /// per-connection struct from growing unnoticed.
    #[test]
    fn conn_struct_stays_small() {
        let size = std::mem::size_of::<super::Conn>();
        // 400 + the publish-to-write timestamp (8) + the boxed log details (8) +
        // the connect time and idle clock (8) + the limit state (8: a OnceCell of a
        // box, allocated only for per-address caps, rate limits or at the first
        // ping) + the decoder's fragment limit (4, padded to 8).
        assert!(size <= 440, "Conn grew to {size} bytes");
    }
}
