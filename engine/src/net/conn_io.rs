//! What the driver does for one ready connection: read, decode and dispatch; gather
//! the outbound queue into one send; run the close handshake; finish.

use std::io;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use super::driver::{self, READ, WRITE};
use super::read::{poll_read_into, settle};
use super::shard::Shard;
use super::tcp_conn::{Conn, ConnState, Handler, TASK_INBOX_CAP};
use crate::net::handle::connection::Connection;
use crate::proto::ws::session::{AfterClose, Step};
use crate::proto::ws::{close, Incoming};
use crate::stats::ShardStats;
use crate::vocab::message::Message;

/// Frames decoded per turn before the driver moves on to other connections; large
/// enough that a burst already in the buffer is handled (and its fan-out coalesced)
/// in one turn.
const READ_BUDGET: usize = 256;
/// How long a closing connection may take to flush our close frame and get the
/// client's reply; then the TCP connection is dropped (a client that stopped reading
/// must not hold its slot forever).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

impl Shard {
    /// Read, decode and dispatch until the socket would block or the budget is spent.
    pub(crate) fn drive_read(self: &Rc<Self>, conn: &Rc<Conn>) {
        let read_size = self.shared.config.websocket.read_buffer_size;
        let mut budget = READ_BUDGET;
        while budget > 0 {
            if !conn.reads() {
                return;
            }
            if self.quiescing.get() {
                // Shutdown barrier: no new input; the drain schedules a read again.
                return;
            }
            if let Some(inbox) = conn.task_inbox() {
                if inbox.messages.borrow().len() >= TASK_INBOX_CAP {
                    // Resumed by the handler's recv() (back-pressure, no unbounded inbox).
                    inbox.paused.set(true);
                    return;
                }
            }
            if conn.is_sse() {
                // An event stream is one-way: whatever the client sends is dropped,
                // but reading still tells us when it goes away.
                conn.pending.borrow_mut().clear();
            }
            let decoded = if conn.is_sse() {
                Ok(None)
            } else {
                conn.decoder
                    .borrow_mut()
                    .decode(&mut conn.pending.borrow_mut())
            };
            match decoded {
                Ok(Some(incoming)) => {
                    budget -= 1;
                    self.on_incoming(conn, incoming);
                }
                Ok(None) => {
                    settle(&mut conn.pending.borrow_mut());
                    let waker = driver::waker(conn.id.slot, conn.id.generation, READ);
                    let mut cx = Context::from_waker(&waker);
                    let polled = poll_read_into(
                        &conn.stream,
                        &self.arena,
                        read_size,
                        &mut conn.pending.borrow_mut(),
                        &mut cx,
                    );
                    if conn.stream.borrow().wants_write() {
                        // rustls answered something while reading (e.g. a key update).
                        self.schedule(conn, WRITE);
                    }
                    match polled {
                        Poll::Ready(Ok(n)) if n > 0 => {
                            conn.last_read.set(self.clock.get());
                            ShardStats::add(&self.stats.bytes_in, n as u64);
                        }
                        Poll::Ready(_) => {
                            // EOF or reset: nobody is left to read a close frame.
                            conn.session(|s| s.on_peer_gone());
                            self.finish(conn, "connection lost");
                            return;
                        }
                        Poll::Pending => return,
                    }
                }
                Err(e) => {
                    if e.code == close::MESSAGE_TOO_BIG {
                        ShardStats::add(&self.stats.too_big_closes, 1);
                    }
                    self.fail(conn, e.code, e.reason);
                    return;
                }
            }
        }
        self.schedule(conn, READ);
    }

    /// Do what the connection's session makes of one decoded frame.
    fn on_incoming(self: &Rc<Self>, conn: &Rc<Conn>, incoming: Incoming) {
        if let (Incoming::Close(c), Some(l)) = (&incoming, conn.log.as_deref()) {
            l.record_close(c.as_ref().map_or(1005, |(code, _)| *code), "client");
        }
        match conn.session(|s| s.on_frame(incoming)) {
            Step::Deliver { binary, payload } => {
                if self.rate_admit(conn, payload.len()) {
                    let msg = if binary {
                        Message::Binary(payload)
                    } else {
                        Message::Text(payload)
                    };
                    self.dispatch(conn, msg);
                }
            }
            Step::Pong(pong) => self.answer_ping(conn, pong),
            Step::ReplyClose(frame) => {
                conn.push_close(Some(frame), &self.stats);
                self.schedule(conn, WRITE);
            }
            Step::Flush => self.schedule(conn, WRITE),
            Step::Finish(why) => self.finish(conn, why),
            Step::Nothing => {}
        }
    }

    fn dispatch(self: &Rc<Self>, conn: &Rc<Conn>, msg: Message) {
        ShardStats::add(&self.stats.messages_in, 1);
        match &conn.handler {
            Handler::Callbacks(cb) => {
                let cb = cb.clone();
                let handle = Connection::new(self.clone(), conn.clone());
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    cb.on_message(&handle, msg)
                }));
                if ran.is_err() {
                    ShardStats::add(&self.stats.handler_panics, 1);
                    self.fail(conn, close::INTERNAL_ERROR, "handler failed");
                }
            }
            Handler::Task(inbox) => {
                inbox.messages.borrow_mut().push_back(msg);
                inbox.wake();
            }
        }
    }

    /// Write queued frames until the queue is empty or the socket would block.
    pub(crate) fn drive_write(self: &Rc<Self>, conn: &Rc<Conn>) {
        if conn.state() == ConnState::Closing {
            self.arm_close_timer(conn);
        }
        loop {
            if conn.state() == ConnState::Done {
                return;
            }
            if conn.queue.borrow().is_empty() {
                // TLS: records of the last batch the socket had no room for.
                let waker = driver::waker(conn.id.slot, conn.id.generation, WRITE);
                let flushed = conn
                    .stream
                    .borrow_mut()
                    .poll_flush_buffered(&mut Context::from_waker(&waker));
                match flushed {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(_)) => {
                        conn.session(|s| s.on_peer_gone());
                        self.finish(conn, "write failed");
                        return;
                    }
                    Poll::Pending => return,
                }
                if conn.state() == ConnState::Closing {
                    self.close_written(conn);
                }
                return;
            }
            match self.poll_write(conn) {
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(_)) => {
                    conn.session(|s| s.on_peer_gone());
                    self.finish(conn, "write failed");
                    return;
                }
                Poll::Pending => {
                    conn.scheduled
                        .set(conn.scheduled.get() | driver::WRITE_BLOCKED);
                    return;
                }
            }
        }
    }

    /// One send() of as much of the queue as fits `write_buffer_size` (TLS: one
    /// batch of records, see [`super::socket::Socket::poll_send`]).
    fn poll_write(&self, conn: &Conn) -> Poll<io::Result<usize>> {
        let max = self.shared.config.websocket.write_buffer_size;
        let waker = driver::waker(conn.id.slot, conn.id.generation, WRITE);
        let mut cx = Context::from_waker(&waker);
        let polled = {
            let queue = conn.queue.borrow();
            let Some(front) = queue.front() else {
                return Poll::Ready(Ok(0));
            };
            let mut stream = conn.stream.borrow_mut();
            if queue.len_frames() == 1 || front.len() >= max {
                // Nothing to coalesce: write straight from the shared frame.
                stream.poll_send(&mut cx, front)
            } else {
                let mut buf = self.scratch.borrow_mut();
                buf.clear();
                for f in queue.frames() {
                    let room = max - buf.len();
                    if room == 0 {
                        break;
                    }
                    buf.extend_from_slice(&f[..f.len().min(room)]);
                }
                stream.poll_send(&mut cx, &buf)
            }
        };
        match polled {
            Poll::Ready(Ok(0)) => Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => {
                let frames = conn.consume_written(n, &self.stats);
                let oldest = conn.oldest_publish.get();
                if oldest != 0 && conn.queue.borrow().is_empty() {
                    // One clock read per write that drains the queue, not per frame.
                    let now = crate::stats::clock_ns();
                    self.stats
                        .publish_to_write
                        .observe_ns(now.saturating_sub(oldest));
                    conn.oldest_publish.set(0);
                }
                ShardStats::add(&self.stats.writes, 1);
                ShardStats::add(&self.stats.frames_written, frames as u64);
                ShardStats::add(&self.stats.bytes_written, n as u64);
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    /// Our close frame is on the wire: finish now if the client already closed or
    /// this was an error; otherwise the client has until the close timer to reply.
    fn close_written(self: &Rc<Self>, conn: &Rc<Conn>) {
        match conn.session(|s| s.on_close_written()) {
            AfterClose::Finish(why) => self.finish(conn, why),
            // The client's reply may already be waiting to be read.
            AfterClose::AwaitPeer => self.schedule(conn, READ),
        }
    }

    /// Bound a close: whatever happens, the connection is finished `CLOSE_TIMEOUT`
    /// after its close began (the only per-connection task, and only while closing).
    fn arm_close_timer(self: &Rc<Self>, conn: &Conn) {
        if conn.close_timer.replace(true) {
            return;
        }
        let shard = self.clone();
        let id = conn.id;
        glommio::spawn_local(async move {
            glommio::timer::sleep(CLOSE_TIMEOUT).await;
            let conn = shard.conns.borrow().get(id).cloned();
            if let Some(conn) = conn {
                shard.finish(&conn, "close timeout");
            }
        })
        .detach();
    }

    /// Start a graceful close (the client is expected to answer).
    pub(crate) fn close(&self, conn: &Conn, code: close::CloseCode, reason: &str) {
        if let Some(l) = conn.log.as_deref() {
            l.record_close(code, "server");
        }
        if conn.enqueue_close(code, reason, &self.stats) {
            self.schedule(conn, WRITE);
        }
    }

    /// Fail the connection: send `code` and drop it once that is written.
    pub(crate) fn fail(&self, conn: &Conn, code: close::CloseCode, reason: &str) {
        if let Some(l) = conn.log.as_deref() {
            l.record_close(code, "server");
        }
        let close = conn.session(|s| s.fail(code, reason));
        conn.push_close(close, &self.stats);
        self.schedule(conn, WRITE);
    }

    /// The connection is over (`why`, for the close event): leave rooms, tell the
    /// handler, free the slot. The socket closes when the last reference (slab,
    /// async handler) is dropped.
    pub(crate) fn finish(self: &Rc<Self>, conn: &Rc<Conn>, why: &'static str) {
        if !conn.session(|s| s.finish()) {
            return;
        }
        if let Some(l) = conn.log.as_deref() {
            tracing::debug!(
                target: crate::logging::CONN_TARGET,
                conn_id = %conn.id,
                shard = self.id,
                transport = conn.transport_name(),
                path = self.shared.endpoints[usize::from(conn.endpoint)].0.as_str(),
                remote = %l.remote,
                duration_ms = l.opened.elapsed().as_millis() as u64,
                reason = why,
                close_code = l.close_code.get(),
                closed_by = l.closed_by.get(),
                "connection closed"
            );
        }
        // TLS: end the session properly if the socket takes it (never waits).
        conn.stream.borrow_mut().close_notify();
        conn.clear_queue(&self.stats);
        self.leave_all(conn);
        match &conn.handler {
            Handler::Callbacks(cb) => {
                let cb = cb.clone();
                let handle = Connection::new(self.clone(), conn.clone());
                let ran =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cb.on_close(&handle)));
                if ran.is_err() {
                    ShardStats::add(&self.stats.handler_panics, 1);
                }
            }
            Handler::Task(inbox) => {
                inbox.ended.set(true);
                inbox.wake();
                // The handler may hold the socket a little longer: end it now.
                // SAFETY: shutdown(2) on the connection's own, still open descriptor.
                unsafe { libc::shutdown(conn.stream.borrow().as_raw_fd(), libc::SHUT_RDWR) };
            }
        }
        self.forget(conn);
    }
}
