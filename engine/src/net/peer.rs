//! A connection's outbound side: its bounded queue of encoded frames and the writer
//! task that drains it, coalescing everything queued into one send().

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};

use bytes::Bytes;
use corecast_shards::{ConnId, OutboundQueue};
use futures_lite::AsyncWrite;
use glommio::net::TcpStream;

use crate::proto::ws::{close, frame};
use crate::stats::ShardStats;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerState {
    /// Frames may be queued.
    Open,
    /// A close frame is queued; nothing more will be.
    Closing,
    /// The socket failed or the writer finished; nothing is written any more.
    Closed,
}

/// One connection as the shard sees it: socket, outbound queue, writer wake-up.
pub(crate) struct Peer {
    pub(crate) id: ConnId,
    pub(crate) stream: RefCell<TcpStream>,
    queue: RefCell<OutboundQueue>,
    writer: Cell<Option<Waker>>,
    state: Cell<PeerState>,
    /// Whether room broadcasts go to this peer compressed.
    pub(crate) compressed: bool,
    /// Rooms this connection is in (for cleanup).
    pub(crate) rooms: RefCell<Vec<Arc<str>>>,
    stats: Arc<ShardStats>,
}

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

impl Peer {
    pub(crate) fn new(
        id: ConnId,
        stream: TcpStream,
        queue_cap: usize,
        compressed: bool,
        stats: Arc<ShardStats>,
    ) -> Self {
        Self {
            id,
            stream: RefCell::new(stream),
            queue: RefCell::new(OutboundQueue::new(queue_cap)),
            writer: Cell::new(None),
            state: Cell::new(PeerState::Open),
            compressed,
            rooms: RefCell::new(Vec::new()),
            stats,
        }
    }

    pub(crate) fn state(&self) -> PeerState {
        self.state.get()
    }

    /// Queue an encoded frame. A full queue closes the connection (policy:
    /// disconnect slow consumers) rather than growing without bound.
    pub(crate) fn push(&self, frame: Bytes) -> Result<(), SendError> {
        if self.state.get() != PeerState::Open {
            return Err(SendError::Closed);
        }
        let pushed = self.queue.borrow_mut().push(frame);
        match pushed {
            Ok(()) => {
                self.wake_writer();
                Ok(())
            }
            Err(_) => {
                ShardStats::add(&self.stats.slow_consumers, 1);
                self.queue.borrow_mut().clear();
                self.close(
                    close::POLICY_VIOLATION,
                    "slow consumer: outbound queue full",
                );
                Err(SendError::SlowConsumer)
            }
        }
    }

    /// Queue a close frame after everything already queued; no more frames after it.
    pub(crate) fn close(&self, code: close::CloseCode, reason: &str) {
        if self.state.get() != PeerState::Open {
            return;
        }
        self.queue
            .borrow_mut()
            .push_unbounded(frame::encode_close(code, reason));
        self.state.set(PeerState::Closing);
        self.wake_writer();
    }

    /// Queue an empty close frame (reply to a close without a status code).
    pub(crate) fn close_empty(&self) {
        if self.state.get() != PeerState::Open {
            return;
        }
        self.queue
            .borrow_mut()
            .push_unbounded(frame::encode(frame::OpCode::Close, false, &[]));
        self.state.set(PeerState::Closing);
        self.wake_writer();
    }

    /// Stop writing at once (socket error, teardown).
    pub(crate) fn abort(&self) {
        self.state.set(PeerState::Closed);
        self.queue.borrow_mut().clear();
        self.wake_writer();
    }

    fn wake_writer(&self) {
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }

    /// The writer task: wait for frames, gather them into one send, repeat. Ends when
    /// a close frame has been written, the peer was aborted, or the socket failed.
    pub(crate) async fn run_writer(
        self: Rc<Self>,
        scratch: Rc<RefCell<Vec<u8>>>,
        max_gather: usize,
    ) {
        loop {
            let more = poll_fn(|cx| {
                if !self.queue.borrow().is_empty() {
                    Poll::Ready(true)
                } else if self.state.get() != PeerState::Open {
                    Poll::Ready(false)
                } else {
                    self.writer.set(Some(cx.waker().clone()));
                    Poll::Pending
                }
            })
            .await;
            if !more || self.state.get() == PeerState::Closed {
                break;
            }
            if self.write_once(&scratch, max_gather).await.is_err() {
                break;
            }
        }
        self.state.set(PeerState::Closed);
        self.queue.borrow_mut().clear();
    }

    /// One send() of as much of the queue as fits `max_gather` bytes.
    async fn write_once(&self, scratch: &RefCell<Vec<u8>>, max_gather: usize) -> io::Result<()> {
        let written = poll_fn(|cx| {
            let queue = self.queue.borrow();
            let Some(front) = queue.front() else {
                return Poll::Ready(Ok(0));
            };
            let mut stream = self.stream.borrow_mut();
            if queue.len_frames() == 1 || front.len() >= max_gather {
                // Nothing to coalesce: write straight from the shared frame.
                return Pin::new(&mut *stream).poll_write(cx, front);
            }
            let mut buf = scratch.borrow_mut();
            buf.clear();
            for f in queue.frames() {
                let room = max_gather - buf.len();
                if room == 0 {
                    break;
                }
                buf.extend_from_slice(&f[..f.len().min(room)]);
            }
            Pin::new(&mut *stream).poll_write(cx, &buf)
        })
        .await?;
        if written == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "socket wrote 0 bytes",
            ));
        }
        let frames = self.queue.borrow_mut().consume(written);
        ShardStats::add(&self.stats.writes, 1);
        ShardStats::add(&self.stats.frames_written, frames as u64);
        ShardStats::add(&self.stats.bytes_written, written as u64);
        Ok(())
    }
}
