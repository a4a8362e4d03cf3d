//! One shard's state and the cross-shard protocol.
//!
//! A room message goes to the room's owner shard ([`owner_of`]), which assigns the
//! next sequence number and hands it to every shard in the room's interest set — one
//! hop per shard. Each shard encodes the frame once (and compresses it once) and
//! pushes the same `Bytes` to each local member's queue.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use corecast_shards::room::{Change, InterestTable, RoomTable};
use corecast_shards::{owner_of, ConnId, ConnSlab, Inbox, MeshSender, Position, Replay};

use super::driver::{self, Ready, READ, WRITE};
use super::notify::LocalNotify;
use super::pending::{Pending, RoomCounts};
use super::read::ReadArena;
use crate::net::endpoint::Shared;
use crate::net::fanout::Encodings;
#[cfg(feature = "webtransport")]
use crate::net::handle::wt_session::SessionState;
use crate::net::tcp_conn::{Conn, ConnState};
use crate::proto::ws::deflate::Deflater;
use crate::proto::ws::{close, frame};
use crate::stats::ShardStats;
use crate::vocab::message::Message;

pub(crate) mod flush;
mod inbox;
mod lifecycle;
mod membership;
mod msg;
mod publish;
mod replay;

pub(crate) use msg::{PresenceMsg, RegistryMsg, RoomMsg, ShardMsg};

/// Registry ids of WebTransport sessions have slots from here up, so they never
/// equal a TCP connection's.
#[cfg(feature = "webtransport")]
pub(crate) const WT_SLOT_BASE: u32 = 1 << 31;

pub(crate) use crate::vocab::message::AckTo;

/// `{"type":"error","error":CODE,"message":..,"room":..}`, the frame a publisher
/// gets when its message could not be published.
pub(crate) fn publish_error_frame(room: &str, e: BroadcastError) -> Message {
    let value = serde_json::json!({
        "type": "error",
        "error": e.code(),
        "message": e.to_string(),
        "room": room,
    });
    Message::text(value.to_string())
}

/// A member found too slow during a delivery (evicted after it).
#[cfg(feature = "webtransport")]
type Slow = Rc<SessionState>;
/// Only WebTransport sessions are evicted that way.
#[cfg(not(feature = "webtransport"))]
type Slow = std::convert::Infallible;

/// A room member on this shard: a TCP connection (WebSocket, SSE) or a
/// WebTransport session.
#[derive(Clone)]
pub(crate) enum Member {
    /// WebSocket or SSE.
    Conn(Rc<Conn>),
    /// WebTransport session.
    #[cfg(feature = "webtransport")]
    Wt(Rc<SessionState>),
    /// A test probe of the in-memory harness (`net::harness`): no socket.
    #[cfg(test)]
    Probe(Rc<crate::net::harness::Probe>),
}

impl Member {
    /// Its registry id.
    pub(crate) fn id(&self) -> ConnId {
        match self {
            Member::Conn(c) => c.id,
            #[cfg(feature = "webtransport")]
            Member::Wt(s) => s.reg_id,
            #[cfg(test)]
            Member::Probe(p) => p.id,
        }
    }
}

/// Why a broadcast was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BroadcastError {
    /// The owner shard's inbox (or, in cluster mode, the bridge's queue) is full;
    /// the message was not published.
    Overloaded,
    /// Cluster mode: the broker (Redis) is unreachable; the message was not
    /// published (or, when the connection broke while publishing, may not have been).
    Unavailable,
}

impl BroadcastError {
    /// The `error` code of error frames and API answers: `overloaded` or
    /// `broker_unavailable`.
    pub fn code(&self) -> &'static str {
        match self {
            BroadcastError::Overloaded => "overloaded",
            BroadcastError::Unavailable => "broker_unavailable",
        }
    }
}

impl std::fmt::Display for BroadcastError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BroadcastError::Overloaded => {
                "the room's owner shard is overloaded; message not published"
            }
            BroadcastError::Unavailable => {
                "cluster broker (redis) unreachable; message not published"
            }
        })
    }
}

impl std::error::Error for BroadcastError {}

/// Publish (and log) how each shard's ring delivers completions, after any
/// fallback: `got[i]` is what shard `i`'s executor got. Called once the pool
/// is up, before the engine reports that it is listening.
pub(crate) fn publish_task_runs(
    stats: &[Arc<ShardStats>],
    wanted: glommio::TaskRun,
    got: &[glommio::TaskRun],
) {
    for (i, (s, &mode)) in stats.iter().zip(got).enumerate() {
        let code = match mode {
            glommio::TaskRun::Interrupt => 0,
            glommio::TaskRun::Cooperative => 1,
            glommio::TaskRun::Deferred => 2,
        };
        s.io_uring_task_run
            .store(code, std::sync::atomic::Ordering::Relaxed);
        if mode != wanted {
            tracing::warn!(
                shard = i,
                wanted = ?wanted,
                got = ?mode,
                "io_uring refused runtime.io_uring_task_run (needs Linux >= 6.0 for cooperative, 6.1 for deferred); completions interrupt this shard's core"
            );
        }
    }
}

/// CPU time (user and system) the calling thread has used: one syscall, so the
/// flush policy reads it once per window, not per batch.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A shard's state; lives on the shard's thread only.
pub(crate) struct Shard {
    pub(crate) id: usize,
    pub(crate) shared: Arc<Shared>,
    pub(crate) stats: Arc<ShardStats>,
    pub(crate) rooms: RefCell<RoomTable<u64, Member>>,
    interest: RefCell<InterestTable<Message>>,
    pub(crate) pending: Pending,
    pub(crate) conns: RefCell<ConnSlab<Rc<Conn>>>,
    deflater: RefCell<Option<Deflater>>,
    pub(crate) arena: RefCell<ReadArena>,
    pub(crate) scratch: RefCell<Vec<u8>>,
    pub(crate) draining: LocalNotify,
    /// Room deliveries' write-ready connections held back by `runtime.flush_delay`.
    deferred: RefCell<Vec<(u32, u32)>>,
    flusher: Cell<Option<std::task::Waker>>,
    /// How long room deliveries are held now (fixed, or adapted to the load).
    pub(crate) flush: flush::FlushPolicy,
    /// All connections gone while draining.
    pub(crate) idle: LocalNotify,
    drain_started: Cell<bool>,
    /// This shard's QUIC endpoint, when WebTransport is on.
    #[cfg(feature = "webtransport")]
    pub(crate) quic: RefCell<Option<Rc<crate::net::quic::Endpoint>>>,
    /// Live WebTransport sessions by registry id (slots above TCP connections').
    #[cfg(feature = "webtransport")]
    pub(crate) wt_sessions: RefCell<ConnSlab<Rc<SessionState>>>,
    /// Coarse clock in seconds since the shard started, ticked by the idle sweeper
    /// (reads stamp connections with it without a clock call).
    pub(crate) clock: Cell<u32>,
    /// As owner of presence-enabled rooms: their members.
    /// The harness's probes on this shard, by id (tests only).
    #[cfg(test)]
    pub(crate) probes: RefCell<std::collections::HashMap<ConnId, Rc<crate::net::harness::Probe>>>,
    pub(crate) presence: RefCell<super::presence::PresenceTable>,
    /// Messages for shards whose inbox is full, in order (bounded).
    outbox: Rc<crate::net::outbox::Outbox>,
    /// Shutdown has begun: client input is no longer read (until the drain).
    pub(crate) quiescing: Cell<bool>,
    /// `Quiesced` markers received per round.
    quiesced: [Cell<usize>; 2],
    /// Cluster mode state (unused on a standalone node).
    #[cfg(feature = "cluster")]
    #[cfg(feature = "cluster")]
    pub(crate) cluster: crate::net::cluster::ClusterState,
}

impl Shard {
    pub(crate) fn new(id: usize, shared: Arc<Shared>) -> Self {
        let stats = shared.stats[id].clone();
        Self {
            id,
            stats: stats.clone(),
            rooms: RefCell::new(RoomTable::default()),
            interest: RefCell::new(InterestTable::with_budget(
                shared.epoch_base,
                shared.config.history.budget_per_shard(shared.stats.len()),
            )),
            pending: Pending::default(),
            conns: RefCell::new(ConnSlab::new(id as u16)),
            deflater: RefCell::new(None),
            arena: RefCell::new(ReadArena::new()),
            scratch: RefCell::new(Vec::new()),
            draining: LocalNotify::default(),
            deferred: RefCell::new(Vec::new()),
            flusher: Cell::new(None),
            flush: flush::FlushPolicy::new(shared.config.runtime.flush_delay()),
            idle: LocalNotify::default(),
            drain_started: Cell::new(false),
            #[cfg(feature = "webtransport")]
            quic: RefCell::new(None),
            #[cfg(feature = "webtransport")]
            wt_sessions: RefCell::new(ConnSlab::with_slot_base(id as u16, WT_SLOT_BASE)),
            #[cfg(test)]
            probes: RefCell::new(Default::default()),
            presence: RefCell::new(Default::default()),
            clock: Cell::new(0),
            outbox: Rc::new(crate::net::outbox::Outbox::new(
                shared.senders.clone(),
                shared.config.runtime.mesh_outbox,
                stats.clone(),
            )),
            quiescing: Cell::new(false),
            quiesced: [Cell::new(0), Cell::new(0)],
            #[cfg(feature = "cluster")]
            cluster: Default::default(),
            shared,
        }
    }

    /// Put `conn` on the driver's ready list for `kind` (once until it is handled).
    pub(crate) fn schedule(&self, conn: &Conn, kind: u8) {
        let s = conn.scheduled.get();
        if s & kind != 0 {
            return;
        }
        if kind == WRITE && s & driver::WRITE_BLOCKED != 0 && conn.state() == ConnState::Open {
            // Its pending write's waker will schedule it (a closing connection still
            // goes through, so its close timer is armed).
            return;
        }
        conn.scheduled.set(s | kind);
        driver::push_ready(conn.id.slot, conn.id.generation, kind);
    }

    /// Schedule the write of a room delivery just queued on `conn`: at once, or
    /// held for `runtime.flush_delay` so the next deliveries share the send.
    pub(crate) fn schedule_delivery(&self, conn: &Conn) {
        let hold = self.flush.delay();
        if hold.is_zero() || conn.state() != ConnState::Open {
            return self.schedule(conn, WRITE);
        }
        let s = conn.scheduled.get();
        if s & (WRITE | driver::HELD | driver::WRITE_BLOCKED) != 0 {
            // Already on its way (or its pending write's waker will schedule it).
            return;
        }
        conn.scheduled.set(s | driver::HELD);
        self.deferred
            .borrow_mut()
            .push((conn.id.slot, conn.id.generation));
        if let Some(w) = self.flusher.take() {
            w.wake();
        }
    }

    /// Once a delivery is held, wait the hold, then schedule everything held
    /// meanwhile in one batch. Runs for the shard's life (the hold may be
    /// turned on later by `flush_delay: auto`).
    pub(crate) async fn run_flusher(self: Rc<Self>) {
        loop {
            std::future::poll_fn(|cx| {
                if self.deferred.borrow().is_empty() {
                    self.flusher.set(Some(cx.waker().clone()));
                    std::task::Poll::Pending
                } else {
                    std::task::Poll::Ready(())
                }
            })
            .await;
            let hold = self.flush.delay();
            if !hold.is_zero() && !self.draining.fired() {
                glommio::timer::sleep(hold).await;
            }
            let batch = std::mem::take(&mut *self.deferred.borrow_mut());
            for (slot, generation) in batch {
                let r = Ready {
                    slot,
                    generation,
                    kind: WRITE,
                };
                if let Some(conn) = self.conn_at(&r) {
                    conn.scheduled.set(conn.scheduled.get() & !driver::HELD);
                    self.schedule(&conn, WRITE);
                }
            }
        }
    }

    /// Publish the initial flush hold (a fixed `flush_delay`; 0 for `auto`).
    pub(crate) fn publish_flush_hold(&self) {
        self.stats.flush_hold_us.store(
            self.flush.delay().as_micros() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// `flush_delay: auto`: feed the policy this shard's load (executor busy
    /// time) and write counters; it re-decides the hold once per window.
    fn observe_load(&self) {
        if !self.flush.is_auto() {
            return;
        }
        use std::sync::atomic::Ordering::Relaxed;
        let before = self.flush.delay();
        let Some(hold) = self.flush.observe(std::time::Instant::now(), || {
            (
                thread_cpu_time(),
                self.stats.frames_written.load(Relaxed),
                self.stats.writes.load(Relaxed),
            )
        }) else {
            return;
        };
        if before.is_zero() && !hold.is_zero() {
            self.stats.flush_holds.fetch_add(1, Relaxed);
        }
        self.stats
            .flush_hold_us
            .store(hold.as_micros() as u64, Relaxed);
    }

    /// The live connection at `(slot, generation)`.
    fn conn_at(&self, r: &Ready) -> Option<Rc<Conn>> {
        let id = corecast_shards::ConnId {
            shard: self.id as u16,
            slot: r.slot,
            generation: r.generation,
        };
        self.conns.borrow().get(id).cloned()
    }

    /// The driver task: read and write connections as they become ready.
    pub(crate) async fn run_driver(self: Rc<Self>) {
        let mut batch: Vec<Ready> = Vec::with_capacity(1024);
        loop {
            driver::next_batch(&mut batch).await;
            for r in batch.drain(..) {
                let Some(conn) = self.conn_at(&r) else {
                    continue;
                };
                let mut done = r.kind;
                if r.kind & WRITE != 0 {
                    done |= driver::WRITE_BLOCKED;
                }
                conn.scheduled.set(conn.scheduled.get() & !done);
                if r.kind & driver::READ != 0 {
                    self.drive_read(&conn);
                }
                if r.kind & WRITE != 0 {
                    self.drive_write(&conn);
                }
            }
            self.observe_load();
            glommio::yield_if_needed().await;
        }
    }

    fn senders(&self) -> &[MeshSender<ShardMsg>] {
        &self.shared.senders
    }
}
