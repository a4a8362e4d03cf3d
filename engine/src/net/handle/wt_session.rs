//! WebTransport handler API: [`WtSession`] (what `Engine::webtransport` handlers
//! get), its streams ([`WtStream`], [`WtRecvStream`], [`WtSendStream`]) and room
//! delivery ([`Delivery`]). Everything runs on the session's shard; stream reads
//! and writes go straight to the QUIC connection, so QUIC flow control is the
//! back-pressure.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::SystemTime;

use bytes::Bytes;
use corecast_shards::OutboundQueue;

use super::client::{sealed, ClientHandle};
use crate::net::quic::QuicConn;
use crate::net::shard::Shard;
use crate::net::tcp_conn::SendError;
use crate::proto::wt::record::{self, ServerRecord};
use crate::proto::wt::session::{app_code_to_h3, h3_to_app_code, OpenError};
use crate::stats::ShardStats;
use crate::vocab::message::Message;
use crate::vocab::registry::{ConnInfo, TransportKind};
use corecast_shards::ConnId;

/// Events a session's inbox holds before new streams are refused and datagrams
/// dropped (bounded, like every queue).
const INBOX_CAP: usize = 256;

/// Session close code: the session's reliable delivery queue overflowed.
pub const CLOSE_SLOW_CONSUMER: u32 = 1008;
/// Session close code: the handler panicked.
pub const CLOSE_HANDLER_PANIC: u32 = 1011;
/// Session close code: the server is shutting down.
pub const CLOSE_GOING_AWAY: u32 = 1001;

/// How a member receives a room's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// In order, nothing lost: records on the session's server-opened uni stream.
    Reliable,
    /// Unreliable and latest-wins: one datagram per message.
    Datagram,
}

/// Why a WebTransport operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WtError {
    /// The session (or its connection) has ended.
    Closed,
    /// The peer reset the stream (our read side) with this WebTransport code
    /// (`None`: an HTTP/3 code outside the WebTransport range).
    Reset(Option<u32>),
    /// The peer asked us to stop sending, with this code.
    Stopped(Option<u32>),
    /// A datagram larger than the connection allows, or datagrams are off.
    DatagramTooLarge,
}

impl std::fmt::Display for WtError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WtError::Closed => f.write_str("session closed"),
            WtError::Reset(c) => write!(f, "stream reset by the peer (code {c:?})"),
            WtError::Stopped(c) => write!(f, "peer stopped reading the stream (code {c:?})"),
            WtError::DatagramTooLarge => f.write_str("datagram too large for this connection"),
        }
    }
}

impl std::error::Error for WtError {}

/// Something the peer started on a session.
pub enum WtIncoming {
    /// A bidirectional stream.
    Bi(WtStream),
    /// A unidirectional stream.
    Uni(WtRecvStream),
    /// A datagram (without the session prefix).
    Datagram(Bytes),
}

pub(crate) enum Incoming {
    Stream { id: u64, bidi: bool },
    Datagram(Bytes),
}

/// The session's reliable delivery stream and what waits to go on it.
pub(crate) struct DeliveryStream {
    pub(crate) id: Option<u64>,
    pub(crate) queue: OutboundQueue,
}

/// One session as its shard holds it: shared by the handler's [`WtSession`] and
/// the room tables.
pub(crate) struct SessionState {
    /// The CONNECT stream id.
    pub(crate) id: u64,
    /// Key in room member lists (distinct from TCP connection slots).
    pub(crate) member_key: u64,
    pub(crate) conn: Rc<QuicConn>,
    pub(crate) path: Box<str>,
    pub(crate) query: Box<str>,
    pub(crate) origin: Option<String>,
    inbox: RefCell<VecDeque<Incoming>>,
    waker: Cell<Option<Waker>>,
    pub(crate) closed: RefCell<Option<(u32, String)>>,
    pub(crate) rooms: RefCell<Vec<(Arc<str>, Delivery)>>,
    pub(crate) delivery: RefCell<DeliveryStream>,
    /// Registry id (its own slot range on the shard).
    pub(crate) reg_id: corecast_shards::ConnId,
    pub(crate) meta: crate::vocab::meta::MetaCell,
    pub(crate) connected_at: std::time::SystemTime,
    pub(crate) remote: SocketAddr,
}

/// Where a new session comes from, for [`SessionState::new`].
pub(crate) struct SessionOrigin<'a> {
    pub(crate) reg_id: corecast_shards::ConnId,
    pub(crate) path: &'a str,
    pub(crate) query: &'a str,
    pub(crate) origin: Option<String>,
}

/// A reliable member's delivery queue overflowed: the caller closes the session
/// (1008) once it no longer holds the room table.
pub(crate) struct SlowConsumer;

impl SessionState {
    pub(crate) fn new(
        id: u64,
        member_key: u64,
        conn: Rc<QuicConn>,
        from: SessionOrigin<'_>,
        queue_cap: usize,
    ) -> Self {
        let remote = conn.peer;
        Self {
            id,
            member_key,
            conn,
            path: from.path.into(),
            query: from.query.into(),
            origin: from.origin,
            reg_id: from.reg_id,
            meta: Default::default(),
            connected_at: std::time::SystemTime::now(),
            remote,
            inbox: RefCell::new(VecDeque::new()),
            waker: Cell::new(None),
            closed: RefCell::new(None),
            rooms: RefCell::new(Vec::new()),
            delivery: RefCell::new(DeliveryStream {
                id: None,
                queue: OutboundQueue::new(queue_cap),
            }),
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.borrow().is_some()
    }

    /// Queue an event for the handler; false when the inbox is full.
    pub(crate) fn push(&self, ev: Incoming) -> bool {
        let mut inbox = self.inbox.borrow_mut();
        if inbox.len() >= INBOX_CAP {
            return false;
        }
        inbox.push_back(ev);
        drop(inbox);
        self.wake();
        true
    }

    pub(crate) fn wake(&self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Mark the session ended and wake its handler.
    pub(crate) fn mark_closed(&self, code: u32, reason: String) {
        if self.closed.borrow().is_none() {
            *self.closed.borrow_mut() = Some((code, reason));
        }
        self.inbox.borrow_mut().clear();
        self.delivery.borrow_mut().queue.clear();
        self.wake();
    }

    fn delivery_of(&self, room: &str) -> Option<Delivery> {
        self.rooms
            .borrow()
            .iter()
            .find(|(r, _)| &**r == room)
            .map(|(_, d)| *d)
    }

    /// Deliver a room message (its record made once per shard) to this member.
    pub(crate) fn deliver(
        &self,
        room: &str,
        rec: &ServerRecord,
        class: corecast_shards::FrameClass,
        stats: &ShardStats,
    ) -> Result<(), SlowConsumer> {
        if self.is_closed() {
            return Ok(());
        }
        match self.delivery_of(room) {
            Some(Delivery::Datagram) => {
                let sent = self.conn.with(|inner| {
                    let (conn, wt) = (&mut inner.conn, &mut inner.wt);
                    wt.send_datagram(conn, self.id, rec.body(), Some(rec.room_prefix_len))
                });
                match sent {
                    Some(Ok(replaced)) => {
                        ShardStats::add(&stats.wt_datagrams_replaced, replaced as u64)
                    }
                    _ => ShardStats::add(&stats.wt_datagrams_dropped, 1),
                }
                self.conn.mark_dirty();
            }
            Some(Delivery::Reliable) => {
                // The room's slow-consumer policy applies to the reliable stream as to
                // a TCP queue: whole records not yet started may be dropped.
                let pushed = self
                    .delivery
                    .borrow_mut()
                    .queue
                    .push_room(rec.bytes.clone(), class);
                let Ok(p) = pushed else {
                    ShardStats::add(&stats.slow_consumers, 1);
                    self.delivery.borrow_mut().queue.clear();
                    return Err(SlowConsumer);
                };
                if p.dropped != 0 {
                    ShardStats::add_local(&stats.slow_dropped, u64::from(p.dropped));
                }
                if p.conflated != 0 {
                    ShardStats::add_local(&stats.slow_conflated, u64::from(p.conflated));
                }
                self.conn.mark_dirty();
            }
            None => {}
        }
        Ok(())
    }

    /// Queue a message for this session alone (a reply, a `send_to`): a record
    /// with an empty room name on the delivery stream.
    pub(crate) fn send_direct(
        &self,
        msg: &Message,
        stats: &ShardStats,
    ) -> Result<(), SlowConsumer> {
        if self.is_closed() {
            return Ok(());
        }
        let kind = match msg {
            Message::Text(_) => record::TEXT,
            Message::Binary(_) => record::BINARY,
        };
        let rec = ServerRecord::new("", kind, msg.as_bytes());
        let full = self.delivery.borrow_mut().queue.push(rec.bytes).is_err();
        if full {
            ShardStats::add(&stats.slow_consumers, 1);
            self.delivery.borrow_mut().queue.clear();
            return Err(SlowConsumer);
        }
        self.conn.mark_dirty();
        Ok(())
    }

    /// Close a session whose delivery queue overflowed.
    pub(crate) fn evict(self: &Rc<Self>) {
        self.conn.close_session(
            self,
            CLOSE_SLOW_CONSUMER,
            "slow consumer: delivery queue full",
        );
    }
}

/// A WebTransport session, as its handler sees it. Cheap to clone; all clones
/// refer to the same session. What every client can do is [`ClientHandle`]'s
/// vocabulary (shared with WebSocket and SSE connections); the session adds
/// streams, datagrams, per-room [`Delivery`] and 32-bit close codes.
#[derive(Clone)]
pub struct WtSession {
    pub(crate) shard: Rc<Shard>,
    pub(crate) state: Rc<SessionState>,
}

impl WtSession {
    /// The session id (its CONNECT stream id; unique per connection).
    pub fn session_id(&self) -> u64 {
        self.state.id
    }

    /// The request's `Origin`, if it sent one.
    pub fn origin(&self) -> Option<&str> {
        self.state.origin.as_deref()
    }

    /// The next stream or datagram the peer started; `None` once the session ended.
    pub async fn next(&self) -> Option<WtIncoming> {
        let ev = poll_fn(|cx| {
            if let Some(ev) = self.state.inbox.borrow_mut().pop_front() {
                return Poll::Ready(Some(ev));
            }
            if self.state.is_closed() {
                return Poll::Ready(None);
            }
            self.state.waker.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await?;
        Some(match ev {
            Incoming::Stream { id, bidi: true } => {
                WtIncoming::Bi(WtStream::new(&self.state.conn, id))
            }
            Incoming::Stream { id, bidi: false } => WtIncoming::Uni(WtRecvStream::new(
                StreamGuard::new(&self.state.conn, id, false),
            )),
            Incoming::Datagram(d) => WtIncoming::Datagram(d),
        })
    }

    /// Send a datagram on this session.
    pub fn send_datagram(&self, data: &[u8]) -> Result<(), WtError> {
        if self.state.is_closed() {
            return Err(WtError::Closed);
        }
        let sent = self.state.conn.with(|inner| {
            let (conn, wt) = (&mut inner.conn, &mut inner.wt);
            wt.send_datagram(conn, self.state.id, data, None)
        });
        self.state.conn.mark_dirty();
        match sent {
            Some(Ok(_)) => Ok(()),
            Some(Err(quiche::Error::BufferTooShort | quiche::Error::InvalidState)) => {
                Err(WtError::DatagramTooLarge)
            }
            // A full send queue drops the datagram: datagrams are unreliable.
            Some(Err(_)) => Ok(()),
            None => Err(WtError::Closed),
        }
    }

    async fn open(&self, bidi: bool) -> Result<u64, WtError> {
        poll_fn(|cx| {
            if self.state.is_closed() {
                return Poll::Ready(Err(WtError::Closed));
            }
            let opened = self.state.conn.with(|inner| {
                let (conn, wt) = (&mut inner.conn, &mut inner.wt);
                wt.open_stream(conn, self.state.id, bidi)
            });
            match opened {
                Some(Ok(id)) => {
                    self.state.conn.mark_dirty();
                    Poll::Ready(Ok(id))
                }
                Some(Err(OpenError::StreamLimit)) => {
                    // The peer grants more streams (MAX_STREAMS) as old ones close;
                    // every batch of packets from it wakes us to try again.
                    self.state.conn.wait_for_credit(cx.waker().clone());
                    Poll::Pending
                }
                Some(Err(OpenError::NoSession)) | None => Poll::Ready(Err(WtError::Closed)),
            }
        })
        .await
    }

    /// Open a unidirectional stream to the peer (waits for stream credit).
    pub async fn open_uni(&self) -> Result<WtSendStream, WtError> {
        let id = self.open(false).await?;
        Ok(WtSendStream::new(StreamGuard::new(
            &self.state.conn,
            id,
            true,
        )))
    }

    /// Open a bidirectional stream to the peer (waits for stream credit).
    pub async fn open_bi(&self) -> Result<WtStream, WtError> {
        let id = self.open(true).await?;
        Ok(WtStream::new(&self.state.conn, id))
    }

    /// Join `room` with the given delivery; false if already a member or closed.
    /// ([`ClientHandle::join`] joins with [`Delivery::Reliable`].)
    pub fn join_with(&self, room: &str, delivery: Delivery) -> bool {
        if self.state.is_closed() || self.state.delivery_of(room).is_some() {
            return false;
        }
        let name = self.shard.join_wt(room, &self.state);
        self.state.rooms.borrow_mut().push((name, delivery));
        true
    }

    /// The rooms this session is in, with their delivery.
    pub fn rooms_with_delivery(&self) -> Vec<(String, Delivery)> {
        self.state
            .rooms
            .borrow()
            .iter()
            .map(|(r, d)| (r.to_string(), *d))
            .collect()
    }

    /// Publish `msg` to each of this session's rooms; a room that refuses it gets
    /// the session an error record (`{"type":"error","error":..,"room":..}`).
    pub(crate) fn publish_to_my_rooms(&self, msg: &Message) {
        for room in self.rooms() {
            if let Err(e) = self.broadcast(&room, msg.clone()) {
                let frame = crate::net::shard::publish_error_frame(&room, e);
                let _ = self.state.send_direct(&frame, &self.shard.stats);
            }
        }
    }

    /// Close the session with any WebTransport application error `code` (the
    /// full 32-bit range; [`ClientHandle::close`] takes the 16-bit codes every
    /// transport shares) and `reason` (CLOSE_WEBTRANSPORT_SESSION).
    pub fn close_with(&self, code: u32, reason: &str) {
        self.state.conn.close_session(&self.state, code, reason);
    }

    /// `(code, reason)` once the session has ended.
    pub fn close_info(&self) -> Option<(u32, String)> {
        self.state.closed.borrow().clone()
    }
}

impl sealed::Engine for WtSession {
    fn parts(&self) -> sealed::Parts<'_> {
        sealed::Parts {
            shard: &self.shard,
            meta: &self.state.meta,
            query: &self.state.query,
            any: self,
        }
    }
}

impl ClientHandle for WtSession {
    fn id(&self) -> ConnId {
        self.state.reg_id
    }

    fn path(&self) -> &str {
        &self.state.path
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.state.conn.peer)
    }

    fn connected_at(&self) -> SystemTime {
        self.state.connected_at
    }

    fn transport(&self) -> TransportKind {
        TransportKind::WebTransport
    }

    fn info(&self) -> ConnInfo {
        self.shard.session_info(&self.state)
    }

    /// A record on the session's reliable delivery stream; a full delivery queue
    /// closes the session as a slow consumer.
    fn send(&self, msg: Message) -> Result<(), SendError> {
        if self.state.is_closed() {
            return Err(SendError::Closed);
        }
        if self.state.send_direct(&msg, &self.shard.stats).is_err() {
            self.state.evict();
            return Err(SendError::SlowConsumer);
        }
        Ok(())
    }

    fn join(&self, room: &str) -> bool {
        self.join_with(room, Delivery::Reliable)
    }

    fn leave(&self, room: &str) {
        self.shard.leave_wt(room, &self.state);
    }

    fn rooms(&self) -> Vec<Arc<str>> {
        self.state
            .rooms
            .borrow()
            .iter()
            .map(|(r, _)| r.clone())
            .collect()
    }

    fn close(&self, code: u16, reason: &str) {
        self.close_with(u32::from(code), reason);
    }

    fn is_closed(&self) -> bool {
        self.state.is_closed()
    }
}

/// Forgets a stream in the session layer once every handle to it is dropped; a
/// sending side dropped without `finish()` or `reset()` is reset (code 0).
pub(crate) struct StreamGuard {
    pub(crate) conn: Rc<QuicConn>,
    pub(crate) id: u64,
    /// A sending half exists and has not ended.
    send_open: Cell<bool>,
}

impl StreamGuard {
    fn new(conn: &Rc<QuicConn>, id: u64, sends: bool) -> Rc<Self> {
        Rc::new(Self {
            conn: conn.clone(),
            id,
            send_open: Cell::new(sends),
        })
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.conn.forget_stream(self.id, self.send_open.get());
    }
}

/// The receiving half of a WebTransport stream.
pub struct WtRecvStream {
    guard: Rc<StreamGuard>,
    fin: bool,
}

impl WtRecvStream {
    fn new(guard: Rc<StreamGuard>) -> Self {
        Self { guard, fin: false }
    }

    /// The QUIC stream id.
    pub fn id(&self) -> u64 {
        self.guard.id
    }

    /// The next chunk of data; `Ok(None)` at the end of the stream.
    pub async fn read(&mut self) -> Result<Option<Bytes>, WtError> {
        if self.fin {
            return Ok(None);
        }
        let (conn, id) = (&self.guard.conn, self.guard.id);
        let got = poll_fn(|cx| {
            let mut buf = [0u8; 16 * 1024];
            let r = conn.with(|inner| inner.conn.stream_recv(id, &mut buf));
            match r {
                None => Poll::Ready(Err(WtError::Closed)),
                Some(Ok((n, fin))) => {
                    conn.mark_dirty(); // flow-control credit may need to go out
                    Poll::Ready(Ok((Bytes::copy_from_slice(&buf[..n]), fin)))
                }
                Some(Err(quiche::Error::StreamReset(code))) => {
                    Poll::Ready(Err(WtError::Reset(h3_to_app_code(code))))
                }
                // The FIN may already have been taken with the stream's preamble
                // (the session layer reads those bytes): then this is the end.
                Some(Err(_)) if conn.with(|i| i.conn.stream_finished(id)) == Some(true) => {
                    Poll::Ready(Ok((Bytes::new(), true)))
                }
                Some(Err(quiche::Error::Done)) => {
                    if conn.is_gone() {
                        return Poll::Ready(Err(WtError::Closed));
                    }
                    conn.set_read_waker(id, cx.waker().clone());
                    Poll::Pending
                }
                Some(Err(_)) => Poll::Ready(Err(WtError::Closed)),
            }
        })
        .await?;
        let (data, fin) = got;
        self.fin = fin;
        if data.is_empty() && fin {
            return Ok(None);
        }
        Ok(Some(data))
    }

    /// Read everything until the end of the stream, refusing more than `max` bytes.
    pub async fn read_to_end(&mut self, max: usize) -> Result<Vec<u8>, WtError> {
        let mut out = Vec::new();
        while let Some(chunk) = self.read().await? {
            if out.len() + chunk.len() > max {
                self.stop(record::RESET_TOO_LARGE);
                return Err(WtError::Closed);
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Ask the peer to stop sending (STOP_SENDING with WebTransport code `code`).
    pub fn stop(&mut self, code: u32) {
        let id = self.guard.id;
        self.guard.conn.with(|inner| {
            let _ = inner
                .conn
                .stream_shutdown(id, quiche::Shutdown::Read, app_code_to_h3(code));
        });
        self.guard.conn.mark_dirty();
    }
}

/// The sending half of a WebTransport stream.
pub struct WtSendStream {
    guard: Rc<StreamGuard>,
}

impl WtSendStream {
    fn new(guard: Rc<StreamGuard>) -> Self {
        Self { guard }
    }

    /// The QUIC stream id.
    pub fn id(&self) -> u64 {
        self.guard.id
    }

    /// Write all of `data`, waiting for flow-control credit as needed.
    pub async fn write_all(&mut self, data: &[u8]) -> Result<(), WtError> {
        self.send(data, false).await
    }

    /// End the stream (FIN) after what was written.
    pub async fn finish(&mut self) -> Result<(), WtError> {
        let r = self.send(&[], true).await;
        self.guard.send_open.set(false);
        r
    }

    async fn send(&mut self, mut data: &[u8], fin: bool) -> Result<(), WtError> {
        let (conn, id) = (self.guard.conn.clone(), self.guard.id);
        poll_fn(|cx| loop {
            let ready = conn.with(|inner| inner.wt.stream_ready(id));
            let r = match ready {
                None => return Poll::Ready(Err(WtError::Closed)),
                // The stream's preamble is still queued: data must wait behind it.
                Some(false) => Err(quiche::Error::Done),
                Some(true) => conn
                    .with(|inner| inner.conn.stream_send(id, data, fin))
                    .unwrap_or(Err(quiche::Error::InvalidStreamState(id))),
            };
            match r {
                Ok(n) => {
                    conn.mark_dirty();
                    data = &data[n..];
                    if data.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                }
                Err(quiche::Error::Done) => {
                    if conn.is_gone() {
                        return Poll::Ready(Err(WtError::Closed));
                    }
                    conn.set_write_waker(id, cx.waker().clone());
                    conn.mark_dirty();
                    return Poll::Pending;
                }
                Err(quiche::Error::StreamStopped(code)) => {
                    return Poll::Ready(Err(WtError::Stopped(h3_to_app_code(code))))
                }
                Err(_) => return Poll::Ready(Err(WtError::Closed)),
            }
        })
        .await
    }

    /// Reset the stream with WebTransport code `code`.
    pub fn reset(&mut self, code: u32) {
        self.guard.send_open.set(false);
        let id = self.guard.id;
        self.guard.conn.with(|inner| {
            let _ = inner
                .conn
                .stream_shutdown(id, quiche::Shutdown::Write, app_code_to_h3(code));
        });
        self.guard.conn.mark_dirty();
    }
}

/// A bidirectional WebTransport stream: read from `recv`, write to `send`.
pub struct WtStream {
    /// The receiving half.
    pub recv: WtRecvStream,
    /// The sending half.
    pub send: WtSendStream,
}

impl WtStream {
    fn new(conn: &Rc<QuicConn>, id: u64) -> Self {
        let guard = StreamGuard::new(conn, id, true);
        Self {
            recv: WtRecvStream::new(guard.clone()),
            send: WtSendStream::new(guard),
        }
    }

    /// The QUIC stream id.
    pub fn id(&self) -> u64 {
        self.recv.id()
    }
}
