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
use corecast_shards::{owner_of, ConnSlab, Inbox, MeshSender};

use super::conn::{Conn, ConnState};
use super::driver::{self, Ready, WRITE};
use super::notify::LocalNotify;
use super::read::ReadArena;
use crate::app::engine::Shared;
use crate::app::message::Message;
use crate::proto::ws::deflate::Deflater;
use crate::proto::ws::{close, frame};
use crate::stats::ShardStats;

/// Messages between shards (and from other threads to a shard).
#[derive(Debug)]
pub(crate) enum ShardMsg {
    /// To the room's owner: sequence this message and fan it out.
    Publish { room: Arc<str>, msg: Message },
    /// From the owner: deliver message `seq` of `room` to local members.
    Deliver {
        room: Arc<str>,
        seq: u64,
        msg: Message,
    },
    /// To the owner: shard `shard` now has (or no longer has) members of `room`.
    Interest {
        room: Arc<str>,
        shard: usize,
        interested: bool,
    },
    /// Look at the shutdown flag.
    Shutdown,
}

/// Why a broadcast was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BroadcastError {
    /// The owner shard's inbox is full; the message was not published.
    Overloaded,
}

impl std::fmt::Display for BroadcastError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the room's owner shard is overloaded; message not published")
    }
}

impl std::error::Error for BroadcastError {}

/// A shard's state; lives on the shard's thread only.
pub(crate) struct Shard {
    pub(crate) id: usize,
    pub(crate) shared: Arc<Shared>,
    pub(crate) stats: Arc<ShardStats>,
    rooms: RefCell<RoomTable<u32, Rc<Conn>>>,
    interest: RefCell<InterestTable>,
    pub(crate) conns: RefCell<ConnSlab<Rc<Conn>>>,
    deflater: RefCell<Option<Deflater>>,
    pub(crate) arena: RefCell<ReadArena>,
    pub(crate) scratch: RefCell<Vec<u8>>,
    pub(crate) draining: LocalNotify,
    /// All connections gone while draining.
    pub(crate) idle: LocalNotify,
    drain_started: Cell<bool>,
}

impl Shard {
    pub(crate) fn new(id: usize, shared: Arc<Shared>) -> Self {
        let stats = shared.stats[id].clone();
        Self {
            id,
            stats,
            rooms: RefCell::new(RoomTable::default()),
            interest: RefCell::new(InterestTable::default()),
            conns: RefCell::new(ConnSlab::new(id as u16)),
            deflater: RefCell::new(None),
            arena: RefCell::new(ReadArena::new()),
            scratch: RefCell::new(Vec::new()),
            draining: LocalNotify::default(),
            idle: LocalNotify::default(),
            drain_started: Cell::new(false),
            shared,
        }
    }

    /// Put `conn` on the driver's ready list for `kind` (once until it is handled).
    pub(crate) fn schedule(&self, conn: &Conn, kind: u8) {
        let s = conn.scheduled.get();
        if s & kind == 0 {
            conn.scheduled.set(s | kind);
            driver::push_ready(conn.id.slot, conn.id.generation, kind);
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
                conn.scheduled.set(conn.scheduled.get() & !r.kind);
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
    pub(crate) async fn run_inbox(self: Rc<Self>, inbox: Inbox<ShardMsg>) {
        let mut inbox = inbox.attach();
        let mut batch = Vec::with_capacity(256);
        loop {
            if self.shared.is_shutting_down() {
                break;
            }
            if inbox.recv_batch(&mut batch, 256).await.is_err() {
                break;
            }
            for msg in batch.drain(..) {
                self.handle(msg);
            }
            glommio::yield_if_needed().await;
        }
        self.drain().await;
    }

    fn handle(&self, msg: ShardMsg) {
        match msg {
            ShardMsg::Publish { room, msg } => self.sequence(&room, msg),
            ShardMsg::Deliver { room, seq, msg } => self.deliver(&room, seq, &msg),
            ShardMsg::Interest {
                room,
                shard,
                interested,
            } => self.interest.borrow_mut().set(&room, shard, interested),
            ShardMsg::Shutdown => {}
        }
    }

    /// Publish `msg` to `room` from this shard.
    pub(crate) fn publish(&self, room: &str, msg: Message) -> Result<(), BroadcastError> {
        let owner = owner_of(room, self.senders().len());
        if owner == self.id {
            self.sequence(room, msg);
            return Ok(());
        }
        self.senders()[owner]
            .send(ShardMsg::Publish {
                room: Arc::from(room),
                msg,
            })
            .map_err(|_| {
                ShardStats::add(&self.stats.mesh_overflows, 1);
                BroadcastError::Overloaded
            })
    }

    /// As the room's owner: assign the sequence and hand the message to every
    /// interested shard, in sequence order.
    fn sequence(&self, room: &str, msg: Message) {
        let (room, interest) = self.interest.borrow_mut().sequence(room);
        ShardStats::add(&self.stats.broadcasts, 1);
        let mut shards = interest.shards;
        while shards != 0 {
            let s = shards.trailing_zeros() as usize;
            shards &= shards - 1;
            if s == self.id {
                self.deliver(&room, interest.seq, &msg);
            } else {
                let sent = self.senders()[s].send(ShardMsg::Deliver {
                    room: room.clone(),
                    seq: interest.seq,
                    msg: msg.clone(),
                });
                if sent.is_err() {
                    ShardStats::add(&self.stats.mesh_overflows, 1);
                }
            }
        }
    }

    /// Fan a sequenced message out to local members: encode once, share the bytes.
    fn deliver(&self, room: &str, _seq: u64, msg: &Message) {
        let rooms = self.rooms.borrow();
        let Some(members) = rooms.members(room) else {
            return;
        };
        let opcode = msg.opcode();
        let plain = frame::encode(opcode, false, msg.as_bytes());
        let mut compressed: Option<Bytes> = None;
        let mut delivered = 0u64;
        for (_, conn) in members.iter() {
            let f = if conn.compressed {
                compressed
                    .get_or_insert_with(|| self.compress_frame(opcode, msg.as_bytes()))
                    .clone()
            } else {
                plain.clone()
            };
            // Queue now, write later: the driver flushes each member once per batch.
            let _ = conn.enqueue(f, &self.stats);
            self.schedule(conn, WRITE);
            delivered += 1;
        }
        ShardStats::add(&self.stats.deliveries, delivered);
    }

    /// Compress once per shard per message; every compressed member shares it.
    pub(crate) fn compress_frame(&self, opcode: frame::OpCode, payload: &[u8]) -> Bytes {
        let mut d = self.deflater.borrow_mut();
        let deflater = d.get_or_insert_with(|| Deflater::new(15));
        let body = deflater.compress(payload);
        frame::encode(opcode, true, &body)
    }

    /// Add `conn` to `room`.
    pub(crate) fn join(&self, room: &str, conn: &Rc<Conn>) {
        if conn.state() == ConnState::Done {
            return;
        }
        let (change, room) = self
            .rooms
            .borrow_mut()
            .join(room, conn.id.slot, conn.clone());
        if change == Change::None {
            return;
        }
        // The table's own key is shared, so members don't each allocate the name.
        conn.rooms.borrow_mut().push(room.clone());
        if change == Change::FirstJoined {
            self.set_interest(&room, true);
        }
    }

    /// Remove `conn` from `room`.
    pub(crate) fn leave(&self, room: &str, conn: &Conn) {
        let change = self.rooms.borrow_mut().leave(room, &conn.id.slot);
        if change == Change::None {
            return;
        }
        let mut rooms = conn.rooms.borrow_mut();
        let Some(pos) = rooms.iter().position(|r| &**r == room) else {
            return;
        };
        let room = rooms.swap_remove(pos);
        drop(rooms);
        if change == Change::LastLeft {
            self.set_interest(&room, false);
        }
    }

    fn set_interest(&self, room: &Arc<str>, interested: bool) {
        let owner = owner_of(room, self.senders().len());
        if owner == self.id {
            self.interest.borrow_mut().set(room, self.id, interested);
            return;
        }
        let msg = ShardMsg::Interest {
            room: room.clone(),
            shard: self.id,
            interested,
        };
        if let Err(msg) = self.senders()[owner].send(msg) {
            // Interest must not be lost: retry from a task until the owner has room.
            let sender = self.senders()[owner].clone();
            glommio::spawn_local(async move {
                let mut msg = msg;
                loop {
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                    match sender.send(msg) {
                        Ok(()) => break,
                        Err(m) => msg = m,
                    }
                }
            })
            .detach();
        }
    }

    /// Take a connection out of all its rooms.
    pub(crate) fn leave_all(&self, conn: &Conn) {
        let rooms: Vec<Arc<str>> = std::mem::take(&mut *conn.rooms.borrow_mut());
        for room in rooms {
            conn.rooms.borrow_mut().push(room.clone());
            self.leave(&room, conn);
        }
    }

    /// Free a finished connection's slot.
    pub(crate) fn forget(&self, conn: &Conn) {
        if self.conns.borrow_mut().remove(conn.id).is_some() {
            ShardStats::sub(&self.stats.connections, 1);
        }
        if self.drain_started.get() && self.conns.borrow().is_empty() {
            self.idle.fire();
        }
    }

    /// Shutdown: stop accepting, close every connection with 1001 after what is
    /// already queued, and wait (bounded) for them to finish.
    async fn drain(self: &Rc<Self>) {
        self.drain_started.set(true);
        self.draining.fire();
        let conns: Vec<Rc<Conn>> = self.conns.borrow().iter().cloned().collect();
        for c in &conns {
            self.close(c, close::GOING_AWAY, "server shutting down");
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
                self.finish(c);
            }
        }
    }
}
