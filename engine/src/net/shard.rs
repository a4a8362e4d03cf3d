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
use super::fanout::Encodings;
use super::notify::LocalNotify;
use super::pending::{Pending, RoomCounts};
use super::read::ReadArena;
use super::tcp_conn::{Conn, ConnState};
use crate::net::endpoint::Shared;
#[cfg(feature = "webtransport")]
use crate::net::handle::wt_session::SessionState;
use crate::proto::ws::deflate::Deflater;
use crate::proto::ws::{close, frame};
use crate::stats::ShardStats;
use crate::vocab::message::Message;

/// Registry ids of WebTransport sessions have slots from here up, so they never
/// equal a TCP connection's.
#[cfg(feature = "webtransport")]
pub(crate) const WT_SLOT_BASE: u32 = 1 << 31;

pub(crate) use crate::vocab::message::AckTo;

/// Messages between shards (and from other threads to a shard).
#[derive(Debug)]
pub(crate) enum ShardMsg {
    /// To the room's owner: sequence this message, keep it in history, fan it out.
    Publish {
        room: Arc<str>,
        msg: Message,
        ack: Option<AckTo>,
        /// A member not to deliver to (the sender, for "everyone but me").
        except: Option<ConnId>,
    },
    /// From the owner: deliver message `pos` of `room` to local members.
    /// `published`: when the owner sequenced it ([`crate::stats::clock_ns`]).
    Deliver {
        room: Arc<str>,
        pos: Position,
        msg: Message,
        except: Option<ConnId>,
        published: u64,
    },
    /// To the owner: shard `shard` now has (or no longer has) members of `room`.
    Interest {
        room: Arc<str>,
        shard: usize,
        interested: bool,
    },
    /// To the owner: connection `conn` resumes `room` after `since`, or (`None`)
    /// only wants the room's current position (implies interest).
    Replay {
        room: Arc<str>,
        since: Option<Position>,
        conn: ConnId,
    },
    /// From the owner: what `conn` missed, to be sent before live messages.
    ReplayData {
        conn: ConnId,
        room: Arc<str>,
        since: Option<Position>,
        replay: Replay<Message>,
    },
    /// From the owner: the position a publish with `AckTo` was given.
    PublishAck { token: u64, pos: Position },
    /// To every shard: count local members of `room`; the owner adds the sequence.
    RoomInfo {
        room: Arc<str>,
        token: u64,
        reply_to: usize,
    },
    /// One shard's answer to `RoomInfo`.
    RoomInfoReply { token: u64, counts: RoomCounts },
    /// A QUIC packet for a connection this shard owns (it reached another shard's
    /// socket).
    #[cfg(feature = "webtransport")]
    QuicPacket {
        data: Vec<u8>,
        from: std::net::SocketAddr,
    },
    /// Registry question for this shard's connections.
    Lookup {
        query: super::registry::Lookup,
        token: u64,
        reply_to: usize,
    },
    /// One shard's answer to `Lookup`.
    LookupReply {
        token: u64,
        infos: Vec<crate::vocab::registry::ConnInfo>,
        truncated: bool,
    },
    /// A message for one connection (or session) of this shard.
    SendTo {
        to: ConnId,
        msg: Message,
        ack: Option<AckTo>,
    },
    /// Whether a `SendTo` with `ack` found its connection.
    SendToAck { token: u64, delivered: bool },
    /// To every shard: send `msg` to every local connection and session.
    BroadcastAll { msg: Message },
    /// To a presence room's owner: `member` joined `room`.
    PresenceJoin {
        room: Arc<str>,
        member: crate::vocab::registry::PresenceMember,
    },
    /// To a presence room's owner: `member` left `room`.
    PresenceLeave { room: Arc<str>, member: ConnId },
    /// To a presence room's owner: list its members.
    PresenceList {
        room: Arc<str>,
        token: u64,
        reply_to: usize,
    },
    /// The owner's answer to `PresenceList`.
    PresenceListReply {
        token: u64,
        members: Vec<crate::vocab::registry::PresenceMember>,
    },
    /// From the cluster bridge (its own message type; see [`crate::cluster::FromBridge`]).
    #[cfg(feature = "cluster")]
    Cluster(crate::cluster::FromBridge),
    /// The publish with this ack token was refused (cluster mode: Redis unavailable).
    #[cfg(feature = "cluster")]
    PublishRefused { token: u64 },
    /// Look at the shutdown flag.
    Shutdown,
    /// Shutdown barrier marker (see [`Shard::run_inbox`]): the sender has stopped
    /// taking client input and, for round 1, has handled every marker of round 0.
    Quiesced { round: u8 },
}

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
}

impl Member {
    /// Its registry id.
    pub(crate) fn id(&self) -> ConnId {
        match self {
            Member::Conn(c) => c.id,
            #[cfg(feature = "webtransport")]
            Member::Wt(s) => s.reg_id,
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
    /// Write-ready connections held back by `runtime.flush_delay`.
    deferred: RefCell<Vec<(u32, u32)>>,
    flusher: Cell<Option<std::task::Waker>>,
    flush_delay: Duration,
    /// All connections gone while draining.
    pub(crate) idle: LocalNotify,
    drain_started: Cell<bool>,
    /// This shard's QUIC endpoint, when WebTransport is on.
    #[cfg(feature = "webtransport")]
    pub(crate) quic: RefCell<Option<Rc<super::quic::Endpoint>>>,
    /// Live WebTransport sessions by registry id (slots above TCP connections').
    #[cfg(feature = "webtransport")]
    pub(crate) wt_sessions: RefCell<ConnSlab<Rc<SessionState>>>,
    /// Coarse clock in seconds since the shard started, ticked by the idle sweeper
    /// (reads stamp connections with it without a clock call).
    pub(crate) clock: Cell<u32>,
    /// As owner of presence-enabled rooms: their members.
    pub(crate) presence: RefCell<super::presence::PresenceTable>,
    /// Messages for shards whose inbox is full, in order (bounded).
    outbox: Rc<super::outbox::Outbox>,
    /// Shutdown has begun: client input is no longer read (until the drain).
    pub(crate) quiescing: Cell<bool>,
    /// `Quiesced` markers received per round.
    quiesced: [Cell<usize>; 2],
    /// Cluster mode state (unused on a standalone node).
    #[cfg(feature = "cluster")]
    #[cfg(feature = "cluster")]
    pub(crate) cluster: super::cluster::ClusterState,
}

impl Shard {
    pub(crate) fn new(id: usize, shared: Arc<Shared>) -> Self {
        let stats = shared.stats[id].clone();
        Self {
            id,
            stats: stats.clone(),
            rooms: RefCell::new(RoomTable::default()),
            interest: RefCell::new(InterestTable::new(shared.epoch_base)),
            pending: Pending::default(),
            conns: RefCell::new(ConnSlab::new(id as u16)),
            deflater: RefCell::new(None),
            arena: RefCell::new(ReadArena::new()),
            scratch: RefCell::new(Vec::new()),
            draining: LocalNotify::default(),
            deferred: RefCell::new(Vec::new()),
            flusher: Cell::new(None),
            flush_delay: shared.config.runtime.flush_delay.0,
            idle: LocalNotify::default(),
            drain_started: Cell::new(false),
            #[cfg(feature = "webtransport")]
            quic: RefCell::new(None),
            #[cfg(feature = "webtransport")]
            wt_sessions: RefCell::new(ConnSlab::with_slot_base(id as u16, WT_SLOT_BASE)),
            presence: RefCell::new(Default::default()),
            clock: Cell::new(0),
            outbox: Rc::new(super::outbox::Outbox::new(
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
        if kind == WRITE && !self.flush_delay.is_zero() && conn.state() == ConnState::Open {
            self.deferred
                .borrow_mut()
                .push((conn.id.slot, conn.id.generation));
            if let Some(w) = self.flusher.take() {
                w.wake();
            }
            return;
        }
        driver::push_ready(conn.id.slot, conn.id.generation, kind);
    }

    /// With `runtime.flush_delay`: once something is deferred, wait the delay, then
    /// hand everything deferred meanwhile to the driver in one batch.
    pub(crate) async fn run_flusher(self: Rc<Self>) {
        if self.flush_delay.is_zero() {
            return;
        }
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
            glommio::timer::sleep(self.flush_delay).await;
            let batch = std::mem::take(&mut *self.deferred.borrow_mut());
            for (slot, generation) in batch {
                driver::push_ready(slot, generation, WRITE);
            }
        }
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
            glommio::yield_if_needed().await;
        }
    }

    fn senders(&self) -> &[MeshSender<ShardMsg>] {
        &self.shared.senders
    }

    /// Serve the inbox until shutdown, then drain connections.
    ///
    /// Shutdown is a two-round barrier over the mesh so that a message sequenced before
    /// it reaches every member, not only the owner's: each shard stops reading client
    /// input and sends a round-0 marker to every other shard; a shard that has handled
    /// all round-0 markers sends round 1. Inboxes and outboxes are FIFO per sender, so
    /// once a shard has every round-1 marker, every publish made before the shutdown
    /// (one hop to the owner) and its deliveries (one more hop) have been handled here.
    /// Only then are connections flushed and closed with 1001. A shard that cannot
    /// finish the barrier (a marker lost to a full outbox) gives up after half the
    /// drain timeout.
    pub(crate) async fn run_inbox(self: Rc<Self>, inbox: Inbox<ShardMsg>) {
        let mut inbox = inbox.attach();
        let mut batch = Vec::with_capacity(256);
        let mut give_up: Option<std::time::Instant> = None;
        loop {
            if self.shared.is_shutting_down() && !self.quiescing.get() {
                self.begin_quiesce();
                let half = self.shared.config.shutdown.drain_timeout_ms / 2;
                give_up = Some(std::time::Instant::now() + Duration::from_millis(half));
            }
            if self.quiescing.get() && self.quiesced[1].get() + 1 >= self.senders().len() {
                break;
            }
            let received = match give_up {
                None => inbox.recv_batch(&mut batch, 256).await.map(Some),
                Some(at) => {
                    futures_lite::future::or(
                        async { inbox.recv_batch(&mut batch, 256).await.map(Some) },
                        async {
                            glommio::timer::sleep(
                                at.saturating_duration_since(std::time::Instant::now()),
                            )
                            .await;
                            Ok(None)
                        },
                    )
                    .await
                }
            };
            match received {
                Ok(Some(_)) => {}
                Ok(None) => {
                    tracing::warn!(shard = self.id, "shutdown barrier timed out; draining");
                    break;
                }
                Err(_) => break,
            }
            for msg in batch.drain(..) {
                self.handle(msg);
            }
            glommio::yield_if_needed().await;
        }
        self.drain().await;
    }

    /// Stop taking client input and tell every other shard (round 0 of the barrier).
    fn begin_quiesce(self: &Rc<Self>) {
        self.quiescing.set(true);
        // Stops the accept loops and refuses new requests and sessions.
        self.draining.fire();
        for s in 0..self.senders().len() {
            if s != self.id {
                self.send_reliable(s, ShardMsg::Quiesced { round: 0 });
            }
        }
        self.maybe_quiesce_round_1();
    }

    /// Once every round-0 marker is in (and this shard quiesced): round 1.
    fn maybe_quiesce_round_1(self: &Rc<Self>) {
        if self.quiescing.get() && self.quiesced[0].get() + 1 == self.senders().len() {
            // Count past the total so this runs once.
            self.quiesced[0].set(usize::MAX - 1);
            for s in 0..self.senders().len() {
                if s != self.id {
                    self.send_reliable(s, ShardMsg::Quiesced { round: 1 });
                }
            }
        }
    }

    fn handle(self: &Rc<Self>, msg: ShardMsg) {
        match msg {
            ShardMsg::Publish {
                room,
                msg,
                ack,
                except,
            } => self
                .shared
                .sequencer
                .publish_at_owner(self, room, msg, ack, except),
            ShardMsg::Deliver {
                room,
                pos,
                msg,
                except,
                published,
            } => self.deliver(&room, pos, &msg, except, published),
            ShardMsg::Interest {
                room,
                shard,
                interested,
            } => self.set_interest_bit(&room, shard, interested),
            ShardMsg::Replay { room, since, conn } => self.serve_replay(room, since, conn),
            ShardMsg::ReplayData {
                conn,
                room,
                since,
                replay,
            } => self.apply_replay(conn, &room, since, replay),
            ShardMsg::PublishAck { token, pos } => self.pending.ack(token, pos),
            ShardMsg::RoomInfo {
                room,
                token,
                reply_to,
            } => {
                let counts = self.local_counts(&room);
                self.send_reliable(reply_to, ShardMsg::RoomInfoReply { token, counts });
            }
            ShardMsg::RoomInfoReply { token, counts } => self.pending.info_reply(token, counts),
            #[cfg(feature = "webtransport")]
            ShardMsg::QuicPacket { mut data, from } => {
                let ep = self.quic.borrow().clone();
                if let Some(ep) = ep {
                    ep.on_forwarded(&mut data, from);
                }
            }
            ShardMsg::Lookup {
                query,
                token,
                reply_to,
            } => {
                let (infos, truncated) = self.local_lookup(&query);
                self.send_reliable(
                    reply_to,
                    ShardMsg::LookupReply {
                        token,
                        infos,
                        truncated,
                    },
                );
            }
            ShardMsg::LookupReply {
                token,
                infos,
                truncated,
            } => self.pending.list_reply(token, infos, truncated),
            ShardMsg::SendTo { to, msg, ack } => {
                let delivered = self.deliver_direct(to, &msg);
                if let Some(ack) = ack {
                    self.send_reliable(
                        ack.shard,
                        ShardMsg::SendToAck {
                            token: ack.token,
                            delivered,
                        },
                    );
                }
            }
            ShardMsg::SendToAck { token, delivered } => self.pending.flag_reply(token, delivered),
            ShardMsg::BroadcastAll { msg } => self.deliver_to_everyone(&msg),
            ShardMsg::PresenceJoin { room, member } => self.presence_join(room, member),
            ShardMsg::PresenceLeave { room, member } => self.presence_leave(room, member),
            ShardMsg::PresenceList {
                room,
                token,
                reply_to,
            } => {
                let members = self.presence_members(&room);
                self.send_reliable(reply_to, ShardMsg::PresenceListReply { token, members });
            }
            ShardMsg::PresenceListReply { token, members } => {
                self.pending.presence_reply(token, members)
            }
            #[cfg(feature = "cluster")]
            ShardMsg::PublishRefused { token } => self.pending.refuse(token),
            #[cfg(feature = "cluster")]
            ShardMsg::Cluster(msg) => self.handle_cluster(msg),
            ShardMsg::Shutdown => {}
            ShardMsg::Quiesced { round } => {
                let seen = &self.quiesced[usize::from(round.min(1))];
                seen.set(seen.get().saturating_add(1));
                self.maybe_quiesce_round_1();
            }
        }
    }

    /// The owner-side table of rooms this shard owns.
    #[cfg(feature = "cluster")]
    pub(crate) fn interest_table(&self) -> &RefCell<InterestTable<Message>> {
        &self.interest
    }

    /// As owner: shard `shard` has (or no longer has) members of `room`. In cluster
    /// mode the node follows the room's channel while any shard has members.
    pub(crate) fn set_interest_bit(&self, room: &Arc<str>, shard: usize, interested: bool) {
        let limits = self.shared.config.history.limits_for(room);
        let mut t = self.interest.borrow_mut();
        let before = t.get(room).map_or(0, |(_, _, s)| s);
        t.set(room, shard, interested, limits);
        let after = t.get(room).map_or(0, |(_, _, s)| s);
        drop(t);
        if (before == 0) != (after == 0) {
            self.shared.sequencer.interest_edge(self, room, after != 0);
        }
    }

    /// Send to `shard` (itself included, handled inline) in order with everything
    /// else this shard sent it: a full inbox queues the message in the outbox (see
    /// [`super::outbox`]). For control messages (interest, replay, acks, presence)
    /// whose loss would break a guarantee; only a shard so far behind that its outbox
    /// is full too loses one, counted in `mesh_overflows` and logged.
    pub(crate) fn send_reliable(self: &Rc<Self>, shard: usize, msg: ShardMsg) {
        if shard == self.id {
            self.handle(msg);
            return;
        }
        if self.outbox.send(shard, msg).is_err() {
            ShardStats::add(&self.stats.mesh_overflows, 1);
            tracing::error!(
                shard = self.id,
                to = shard,
                "cross-shard control message lost: the target shard's inbox and outbox are full"
            );
        }
    }

    /// Publish `msg` to `room`, skipping member `except` (if it is one).
    pub(crate) fn publish_except(
        &self,
        room: &str,
        msg: Message,
        except: Option<ConnId>,
    ) -> Result<(), BroadcastError> {
        self.publish_from(room, msg, except, except)
    }

    /// Publish `msg` to `room` for connection `origin` (told if a cluster publish
    /// fails after it was accepted), skipping member `except`.
    pub(crate) fn publish_from(
        &self,
        room: &str,
        msg: Message,
        except: Option<ConnId>,
        origin: Option<ConnId>,
    ) -> Result<(), BroadcastError> {
        self.shared
            .sequencer
            .publish(self, room, msg, except, origin)
    }

    /// Alone: sequence `msg` here if this shard owns `room`, else send it to the
    /// owner.
    pub(crate) fn publish_to_owner(
        &self,
        room: &str,
        msg: Message,
        except: Option<ConnId>,
    ) -> Result<(), BroadcastError> {
        let owner = owner_of(room, self.senders().len());
        if owner == self.id {
            self.sequence(room, msg, except);
            return Ok(());
        }
        self.outbox
            .send(
                owner,
                ShardMsg::Publish {
                    room: Arc::from(room),
                    msg,
                    ack: None,
                    except,
                },
            )
            .map_err(|_| {
                ShardStats::add(&self.stats.mesh_overflows, 1);
                BroadcastError::Overloaded
            })
    }

    /// Publish `msg` to each of `rooms`; the last refusal, if any (the other rooms
    /// still get it).
    pub(crate) fn publish_to_all(
        &self,
        rooms: impl IntoIterator<Item = Arc<str>>,
        msg: &Message,
        origin: Option<ConnId>,
    ) -> Result<(), BroadcastError> {
        let mut result = Ok(());
        for room in rooms {
            if let Err(e) = self.publish_from(&room, msg.clone(), None, origin) {
                result = Err(e);
            }
        }
        result
    }

    /// Publish and learn the position the message was given.
    pub(crate) async fn publish_acked(
        self: &Rc<Self>,
        room: &str,
        msg: Message,
        timeout: Duration,
    ) -> Result<Position, BroadcastError> {
        let shared = self.shared.clone();
        shared
            .sequencer
            .publish_acked(self, room, msg, timeout)
            .await
    }

    /// Alone: publish through the owner shard and wait for its position.
    pub(crate) async fn publish_acked_local(
        self: &Rc<Self>,
        room: &str,
        msg: Message,
        timeout: Duration,
    ) -> Result<Position, BroadcastError> {
        let owner = owner_of(room, self.senders().len());
        if owner == self.id {
            return Ok(self.sequence(room, msg, None));
        }
        let (token, slot) = self.pending.new_ack();
        let sent = self.outbox.send(
            owner,
            ShardMsg::Publish {
                room: Arc::from(room),
                msg,
                ack: Some(AckTo {
                    shard: self.id,
                    token,
                }),
                except: None,
            },
        );
        if sent.is_err() {
            self.pending.forget(token);
            ShardStats::add(&self.stats.mesh_overflows, 1);
            return Err(BroadcastError::Overloaded);
        }
        let got = futures_lite::future::or(async { Some(slot.wait().await) }, async {
            glommio::timer::sleep(timeout).await;
            None
        })
        .await;
        self.pending.forget(token);
        got.flatten().ok_or(BroadcastError::Overloaded)
    }

    /// As the room's owner: assign the position, keep the message in history and
    /// hand it to every interested shard, in sequence order.
    pub(crate) fn sequence(&self, room: &str, msg: Message, except: Option<ConnId>) -> Position {
        let limits = self.shared.config.history.limits_for(room);
        let now = std::time::Instant::now();
        // The history's clock read doubles as the publish time of the latency metric.
        let published = crate::stats::instant_ns(now);
        let (room, pos, shards) = self
            .interest
            .borrow_mut()
            .append(room, msg.clone(), now, limits);
        self.fan_out(&room, pos, &msg, except, published, shards);
        pos
    }

    /// As the room's owner: hand message `pos` to every shard in `shards`.
    pub(crate) fn fan_out(
        &self,
        room: &Arc<str>,
        pos: Position,
        msg: &Message,
        except: Option<ConnId>,
        published: u64,
        mut shards: u64,
    ) {
        ShardStats::add(&self.stats.broadcasts, 1);
        while shards != 0 {
            let s = shards.trailing_zeros() as usize;
            shards &= shards - 1;
            if s == self.id {
                self.deliver(room, pos, msg, except, published);
            } else {
                let sent = self.outbox.send(
                    s,
                    ShardMsg::Deliver {
                        room: room.clone(),
                        pos,
                        msg: msg.clone(),
                        except,
                        published,
                    },
                );
                if sent.is_err() {
                    ShardStats::add(&self.stats.mesh_overflows, 1);
                }
            }
        }
    }

    /// Fan a sequenced message out to local members: each transport's encoding is
    /// made once and the same bytes are queued for every member that uses it.
    fn deliver(
        &self,
        room: &str,
        pos: Position,
        msg: &Message,
        except: Option<ConnId>,
        published: u64,
    ) {
        let mut slow: Vec<Slow> = Vec::new();
        self.deliver_to_members(room, pos, msg, except, published, &mut slow);
        // Closing leaves rooms: only now that the room table is no longer borrowed.
        #[cfg(feature = "webtransport")]
        for session in slow {
            session.evict();
        }
    }

    // Without WebTransport every member is a `Conn` and nothing is evicted here.
    #[cfg_attr(
        not(feature = "webtransport"),
        allow(
            unused_variables,
            clippy::ptr_arg,
            clippy::infallible_destructuring_match
        )
    )]
    fn deliver_to_members(
        &self,
        room: &str,
        pos: Position,
        msg: &Message,
        except: Option<ConnId>,
        published: u64,
        slow: &mut Vec<Slow>,
    ) {
        let rooms = self.rooms.borrow();
        let Some(members) = rooms.members(room) else {
            return;
        };
        let mut enc = Encodings::new(self, room, pos, msg);
        let mut delivered = 0u64;
        for (_, member) in members.iter() {
            if except.is_some_and(|id| member.id() == id) {
                continue;
            }
            let conn = match member {
                Member::Conn(c) => c,
                #[cfg(feature = "webtransport")]
                Member::Wt(session) => {
                    let class = enc.class;
                    if session
                        .deliver(room, enc.for_wt(), class, &self.stats)
                        .is_err()
                    {
                        slow.push(session.clone());
                    }
                    delivered += 1;
                    continue;
                }
            };
            if conn.is_replaying(room) {
                // Its replay (cut after this message) is on its way from the owner.
                continue;
            }
            let f = enc.for_conn(conn);
            let _ = conn.enqueue_room(f, enc.class, published, &self.stats);
            // Queue now, write later: the driver flushes each member once per batch.
            self.schedule(conn, WRITE);
            delivered += 1;
        }
        ShardStats::add(&self.stats.deliveries, delivered);
    }

    /// As the owner: answer a resume request for `conn` (local or on another shard).
    fn serve_replay(self: &Rc<Self>, room: Arc<str>, since: Option<Position>, conn: ConnId) {
        let shared = self.shared.clone();
        shared.sequencer.serve_replay(self, room, since, conn);
    }

    /// Alone: answer a resume from this owner's history.
    pub(crate) fn replay_local(
        self: &Rc<Self>,
        room: Arc<str>,
        since: Option<Position>,
        conn: ConnId,
    ) {
        let limits = self.shared.config.history.limits_for(&room);
        let shard = usize::from(conn.shard);
        let replay = {
            let mut t = self.interest.borrow_mut();
            // A resume implies interest: set it here so no message falls between the
            // replay's cut and the first live delivery, whatever order things arrived in.
            t.set(&room, shard, true, limits);
            t.replay(&room, since, std::time::Instant::now(), limits)
        };

        self.send_reliable(
            shard,
            ShardMsg::ReplayData {
                conn,
                room,
                since,
                replay,
            },
        );
    }

    /// Send `conn` what it missed (after a gap signal if anything is lost), then let
    /// live messages through.
    fn apply_replay(
        &self,
        id: ConnId,
        room: &str,
        since: Option<Position>,
        replay: Replay<Message>,
    ) {
        let Some(conn) = self.conns.borrow().get(id).cloned() else {
            return;
        };
        conn.end_replay(room);
        if conn.state() != ConnState::Open {
            return;
        }
        let multi_room = conn.transport == super::tcp_conn::Transport::SseMultiRoom;
        if let (Some(reason), Some(since)) = (replay.gap, since) {
            let signal = super::fanout::gap_signal(&conn, room, since, reason, &replay);
            let _ = conn.enqueue(signal, &self.stats);
        }
        if multi_room {
            // The stream's id must name this room from now on: start it just
            // before the first replayed message (or at the room's position).
            let start = replay
                .messages
                .first()
                .map_or(replay.upto, |(seq, _)| seq.saturating_sub(1));
            conn.set_cursor(
                room,
                Position {
                    epoch: replay.epoch,
                    seq: start,
                },
            );
        }
        for (seq, msg) in &replay.messages {
            let pos = Position {
                epoch: replay.epoch,
                seq: *seq,
            };
            let f = Encodings::new(self, room, pos, msg).for_conn(&conn);
            if conn.enqueue(f, &self.stats).is_err() {
                break;
            }
        }
        self.schedule(&conn, WRITE);
    }

    /// Members of `room` on this shard, by transport.
    pub(crate) fn local_member_counts(&self, room: &str) -> crate::vocab::registry::MemberCounts {
        let mut counts = crate::vocab::registry::MemberCounts::default();
        if let Some(members) = self.rooms.borrow().members(room) {
            for (_, m) in members.iter() {
                match m {
                    Member::Conn(c) if c.is_sse() => counts.sse += 1,
                    Member::Conn(_) => counts.websocket += 1,
                    #[cfg(feature = "webtransport")]
                    Member::Wt(_) => counts.webtransport += 1,
                }
            }
        }
        counts
    }

    /// Members of `room` on this shard by transport, plus the owner's record.
    fn local_counts(&self, room: &str) -> RoomCounts {
        let members = self.local_member_counts(room);
        let mut counts = RoomCounts {
            websocket: members.websocket,
            sse: members.sse,
            webtransport: members.webtransport,
            position: None,
        };
        if owner_of(room, self.senders().len()) == self.id
            && self.shared.sequencer.position_known(self, room)
        {
            counts.position = self
                .interest
                .borrow()
                .get(room)
                .map(|(epoch, seq, _)| Position { epoch, seq });
        }
        counts
    }

    /// Ask every shard about `room` and add up the answers.
    pub(crate) async fn room_info(
        self: &Rc<Self>,
        room: &str,
        timeout: Duration,
    ) -> Option<RoomCounts> {
        let shards = self.senders().len();
        let (token, slot) = self.pending.new_info(shards);
        let room: Arc<str> = Arc::from(room);
        for s in 0..shards {
            self.send_reliable(
                s,
                ShardMsg::RoomInfo {
                    room: room.clone(),
                    token,
                    reply_to: self.id,
                },
            );
        }
        let got = futures_lite::future::or(async { Some(slot.wait().await) }, async {
            glommio::timer::sleep(timeout).await;
            None
        })
        .await;
        self.pending.forget(token);
        got
    }

    /// Send a comment to every open SSE stream each `sse.keep_alive_interval`, so
    /// proxies and clients keep idle streams open.
    pub(crate) async fn run_keepalive(self: Rc<Self>) {
        let every = self.shared.config.sse.keep_alive_interval.0;
        let ping = crate::proto::sse::comment("keep-alive");
        loop {
            glommio::timer::sleep(every).await;
            let conns: Vec<Rc<Conn>> = self
                .conns
                .borrow()
                .iter()
                .filter(|c| c.is_sse() && c.state() == ConnState::Open)
                .cloned()
                .collect();
            for c in conns {
                let _ = c.enqueue(ping.clone(), &self.stats);
                self.schedule(&c, WRITE);
            }
        }
    }

    /// Tick the shard clock each second; ping WebSocket connections silent for
    /// `websocket.idle_timeout` and drop those silent for twice that.
    pub(crate) async fn run_idle_sweeper(self: Rc<Self>) {
        let idle = self.shared.config.websocket.idle_timeout.0.as_secs() as u32;
        let start = std::time::Instant::now();
        let ping = frame::encode(frame::OpCode::Ping, false, b"idle");
        loop {
            glommio::timer::sleep(Duration::from_secs(1)).await;
            let now = start.elapsed().as_secs() as u32;
            self.clock.set(now);
            if idle == 0 || !now.is_multiple_of(idle.div_ceil(4).max(1)) {
                continue;
            }
            let (mut to_ping, mut to_drop) = (Vec::new(), Vec::new());
            for c in self.conns.borrow().iter() {
                if c.is_sse() || c.state() == ConnState::Done {
                    continue;
                }
                let silent = now.saturating_sub(c.last_read.get());
                if silent >= 2 * idle {
                    to_drop.push(c.clone());
                } else if silent >= idle && c.state() == ConnState::Open {
                    to_ping.push(c.clone());
                }
            }
            for c in to_ping {
                let _ = c.enqueue(ping.clone(), &self.stats);
                self.schedule(&c, WRITE);
            }
            for c in to_drop {
                ShardStats::add(&self.stats.idle_timeouts, 1);
                self.finish(&c, "idle timeout");
            }
        }
    }

    /// Forget expired history and idle room records; runs every few seconds.
    pub(crate) async fn run_sweeper(self: Rc<Self>) {
        loop {
            glommio::timer::sleep(Duration::from_secs(5)).await;
            self.interest.borrow_mut().sweep(std::time::Instant::now());
        }
    }

    /// Compress once per shard per message; every compressed member shares it.
    pub(crate) fn compress_frame(&self, opcode: frame::OpCode, payload: &[u8]) -> Bytes {
        let mut d = self.deflater.borrow_mut();
        let deflater = d.get_or_insert_with(|| Deflater::new(15));
        let body = deflater.compress(payload);
        frame::encode(opcode, true, &body)
    }

    /// Add `conn` to `room`.
    /// Add `conn` to `room`; false if it was already a member (or is finished).
    pub(crate) fn join(self: &Rc<Self>, room: &str, conn: &Rc<Conn>) -> bool {
        if conn.state() == ConnState::Done {
            return false;
        }
        let (change, room) =
            self.rooms
                .borrow_mut()
                .join(room, u64::from(conn.id.slot), Member::Conn(conn.clone()));
        if change == Change::None {
            return false;
        }
        // The table's own key is shared, so members don't each allocate the name.
        conn.rooms.borrow_mut().push(room.clone());
        if change == Change::FirstJoined {
            self.set_interest(&room, true);
        }
        self.shared.sequencer.members_changed(self, &room);
        self.announce_presence(&room, conn.id, &conn.meta, true);
        true
    }

    /// Join `room`; with `since`, first replay what `conn` missed after that
    /// position (from the owner's history), then continue live with no gap and no
    /// duplicate.
    pub(crate) fn join_since(
        self: &Rc<Self>,
        room: &str,
        conn: &Rc<Conn>,
        since: Option<Position>,
    ) {
        if !self.join(room, conn) || conn.state() != ConnState::Open {
            return;
        }
        // A multi-room stream needs every room's position in its event ids from the
        // start, so a room it joins without a cursor asks the owner for its position.
        let multi_room = conn.transport == super::tcp_conn::Transport::SseMultiRoom;
        if since.is_none() && !multi_room {
            return;
        }
        let owner = owner_of(room, self.senders().len());
        let room = conn.room_name(room);
        conn.begin_replay(room.clone());
        self.send_reliable(
            owner,
            ShardMsg::Replay {
                room,
                since,
                conn: conn.id,
            },
        );
    }

    /// Remove `conn` from `room`.
    pub(crate) fn leave(self: &Rc<Self>, room: &str, conn: &Conn) {
        let change = self
            .rooms
            .borrow_mut()
            .leave(room, &u64::from(conn.id.slot));
        if change == Change::None {
            return;
        }
        let mut rooms = conn.rooms.borrow_mut();
        let Some(pos) = rooms.iter().position(|r| &**r == room) else {
            return;
        };
        let room = rooms.swap_remove(pos);
        drop(rooms);
        self.shared.sequencer.members_changed(self, &room);
        self.announce_presence(&room, conn.id, &conn.meta, false);
        if change == Change::LastLeft {
            self.set_interest(&room, false);
        }
    }

    fn set_interest(self: &Rc<Self>, room: &Arc<str>, interested: bool) {
        let owner = owner_of(room, self.senders().len());
        let msg = ShardMsg::Interest {
            room: room.clone(),
            shard: self.id,
            interested,
        };
        // Interest must not be lost (handled inline when this shard is the owner).
        self.send_reliable(owner, msg);
    }

    /// Take a connection out of all its rooms.
    pub(crate) fn leave_all(self: &Rc<Self>, conn: &Conn) {
        // `leave` removes each room from `conn.rooms`, so walk a copy.
        let rooms: Vec<Arc<str>> = conn.rooms.borrow().clone();
        for room in rooms {
            self.leave(&room, conn);
        }
    }

    /// Add a WebTransport session to `room`; returns the table's shared room name.
    #[cfg(feature = "webtransport")]
    pub(crate) fn join_wt(self: &Rc<Self>, room: &str, session: &Rc<SessionState>) -> Arc<str> {
        let (change, name) =
            self.rooms
                .borrow_mut()
                .join(room, session.member_key, Member::Wt(session.clone()));
        if change == Change::FirstJoined {
            self.set_interest(&name, true);
        }
        if change != Change::None {
            self.shared.sequencer.members_changed(self, &name);
            self.announce_presence(&name, session.reg_id, &session.meta, true);
        }
        name
    }

    /// Take a WebTransport session out of `room`.
    #[cfg(feature = "webtransport")]
    pub(crate) fn leave_wt(self: &Rc<Self>, room: &str, session: &SessionState) {
        let change = self.rooms.borrow_mut().leave(room, &session.member_key);
        session.rooms.borrow_mut().retain(|(r, _)| &**r != room);
        if change == Change::None {
            return;
        }
        let room: Arc<str> = Arc::from(room);
        self.shared.sequencer.members_changed(self, &room);
        self.announce_presence(&room, session.reg_id, &session.meta, false);
        if change == Change::LastLeft {
            self.set_interest(&room, false);
        }
    }

    /// Take a WebTransport session out of all its rooms.
    #[cfg(feature = "webtransport")]
    pub(crate) fn leave_all_wt(self: &Rc<Self>, session: &SessionState) {
        let rooms: Vec<Arc<str>> = session
            .rooms
            .borrow()
            .iter()
            .map(|(r, _)| r.clone())
            .collect();
        for room in rooms {
            self.leave_wt(&room, session);
        }
    }

    /// Free a finished connection's slot.
    pub(crate) fn forget(&self, conn: &Conn) {
        if self.conns.borrow_mut().remove(conn.id).is_some() {
            ShardStats::sub(&self.stats.connections, 1);
            ShardStats::sub(
                if conn.is_sse() {
                    &self.stats.sse_connections
                } else {
                    &self.stats.ws_connections
                },
                1,
            );
        }
        if self.drain_started.get() && self.conns.borrow().is_empty() {
            self.idle.fire();
        }
    }

    /// Shutdown: stop accepting, close every connection with 1001 after what is
    /// already queued, and wait (bounded) for them to finish.
    async fn drain(self: &Rc<Self>) {
        let deadline = std::time::Instant::now()
            + Duration::from_millis(self.shared.config.shutdown.drain_timeout_ms);
        #[cfg(feature = "webtransport")]
        {
            let quic = self.quic.borrow().clone();
            let quic_drain = async move {
                if let Some(ep) = quic {
                    ep.drain(deadline).await;
                }
            };
            futures_lite::future::zip(self.drain_tcp(), quic_drain).await;
        }
        #[cfg(not(feature = "webtransport"))]
        {
            let _ = deadline;
            self.drain_tcp().await;
        }
    }

    async fn drain_tcp(self: &Rc<Self>) {
        self.drain_started.set(true);
        self.draining.fire();
        // Reading resumes (it stopped while quiescing) for the clients' close replies;
        // data they send after our close frame is ignored.
        self.quiescing.set(false);
        let conns: Vec<Rc<Conn>> = self.conns.borrow().iter().cloned().collect();
        for c in &conns {
            self.close(c, close::GOING_AWAY, "server shutting down");
            self.schedule(c, READ);
        }
        if self.conns.borrow().is_empty() {
            return;
        }
        let deadline = Duration::from_millis(self.shared.config.shutdown.drain_timeout_ms);
        let timed_out = futures_lite::future::or(
            async {
                self.idle.wait().await;
                false
            },
            async {
                glommio::timer::sleep(deadline).await;
                true
            },
        )
        .await;
        if timed_out {
            let conns: Vec<Rc<Conn>> = self.conns.borrow().iter().cloned().collect();
            for c in &conns {
                self.finish(c, "shutdown timeout");
            }
        }
    }
}
