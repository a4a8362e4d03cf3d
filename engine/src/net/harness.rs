//! The in-memory shard harness (tests only): real shards on their own executors
//! with the real mesh, outboxes, sequencer and room tables, but no sockets. Room
//! members are [`Probe`]s that record what reaches them; a test runs code on a
//! shard by sending it a closure through that shard's inbox ([`ShardMsg::Test`]),
//! which keeps the inbox's FIFO order with everything else the test sent.
//!
//! Covered here: owner sequencing across shards, a resume meeting live messages,
//! slow-consumer policies, the shutdown barrier and outbox order behind a full
//! inbox.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use corecast_shards::queue::{FrameClass, OutboundQueue};
use corecast_shards::{ConnId, Mesh, MeshSender, PoolConfig, Position, Replay, ShardPool};
use crossbeam_channel::{Receiver, Sender};

use super::endpoint::Shared;
use super::shard::{Shard, ShardMsg};
use crate::config::Config;
use crate::stats::ShardStats;
use crate::vocab::message::Message;

/// Code a test runs on a shard.
type ShardCall = Box<dyn FnOnce(&Rc<Shard>) + Send>;

/// A closure for a shard to run on its executor.
pub(crate) struct OnShard(pub(crate) ShardCall);

impl std::fmt::Debug for OnShard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnShard(..)")
    }
}

/// What a probe saw, in the order it saw it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Event {
    /// A room message (live or replayed) reached probe `tag`.
    Message {
        tag: usize,
        room: String,
        pos: Position,
        data: Vec<u8>,
    },
    /// The owner could not serve probe `tag`'s cursor in full.
    Gap { tag: usize, room: String },
    /// Probe `tag`'s queue overflowed under the disconnect policy.
    Disconnected { tag: usize },
}

/// A room member without a socket: deliveries go through an [`OutboundQueue`]
/// bounded by `websocket.outbound_queue_bytes` under the room's slow-consumer
/// policy, exactly as a connection's do, and reach the test as [`Event`]s once the
/// probe reads (immediately, unless paused).
pub(crate) struct Probe {
    pub(crate) id: ConnId,
    tag: usize,
    events: Sender<Event>,
    queue: RefCell<OutboundQueue>,
    paused: Cell<bool>,
    closed: Cell<bool>,
    replaying: RefCell<Vec<Arc<str>>>,
}

/// A queued frame: `[epoch u64][seq u64][room length u8][room][payload]`.
fn encode(room: &str, pos: Position, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(17 + room.len() + payload.len());
    b.put_u64(pos.epoch);
    b.put_u64(pos.seq);
    b.put_u8(room.len() as u8);
    b.put_slice(room.as_bytes());
    b.put_slice(payload);
    b.freeze()
}

impl Probe {
    fn new(id: ConnId, tag: usize, events: Sender<Event>, cap: usize) -> Self {
        Self {
            id,
            tag,
            events,
            queue: RefCell::new(OutboundQueue::new(cap)),
            paused: Cell::new(false),
            closed: Cell::new(false),
            replaying: RefCell::new(Vec::new()),
        }
    }

    /// A live delivery: held back while this room's replay is on its way (it is
    /// cut after this message), else queued under the room's policy.
    pub(crate) fn deliver(
        &self,
        room: &str,
        pos: Position,
        msg: &Message,
        class: FrameClass,
        stats: &ShardStats,
    ) {
        if self.closed.get() || self.replaying.borrow().iter().any(|r| &**r == room) {
            return;
        }
        let pushed = self
            .queue
            .borrow_mut()
            .push_room(encode(room, pos, msg.as_bytes()), class);
        match pushed {
            Ok(p) => ShardStats::add_local(&stats.slow_dropped, u64::from(p.dropped)),
            Err(_) => {
                self.closed.set(true);
                self.queue.borrow_mut().clear();
                let _ = self.events.send(Event::Disconnected { tag: self.tag });
                return;
            }
        }
        self.read();
    }

    pub(crate) fn begin_replay(&self, room: Arc<str>) {
        self.replaying.borrow_mut().push(room);
    }

    /// What the owner sent for this probe's resume: a gap if history fell short,
    /// the missed messages, then live ones flow again.
    pub(crate) fn apply_replay(
        &self,
        room: &str,
        since: Option<Position>,
        replay: Replay<Message>,
    ) {
        self.replaying.borrow_mut().retain(|r| &**r != room);
        if replay.gap.is_some() && since.is_some() {
            let _ = self.events.send(Event::Gap {
                tag: self.tag,
                room: room.to_string(),
            });
        }
        for (seq, msg) in &replay.messages {
            let pos = Position {
                epoch: replay.epoch,
                seq: *seq,
            };
            let _ = self
                .queue
                .borrow_mut()
                .push(encode(room, pos, msg.as_bytes()));
        }
        self.read();
    }

    /// Stop (or resume) reading: a paused probe is a slow consumer.
    fn set_paused(&self, paused: bool) {
        self.paused.set(paused);
        self.read();
    }

    /// Hand everything queued to the test, unless paused.
    fn read(&self) {
        if self.paused.get() {
            return;
        }
        let mut q = self.queue.borrow_mut();
        while let Some(frame) = q.front().cloned() {
            q.consume(frame.len());
            let epoch = u64::from_be_bytes(frame[0..8].try_into().unwrap_or_default());
            let seq = u64::from_be_bytes(frame[8..16].try_into().unwrap_or_default());
            let n = usize::from(frame[16]);
            let room = String::from_utf8_lossy(&frame[17..17 + n]).into_owned();
            let _ = self.events.send(Event::Message {
                tag: self.tag,
                room,
                pos: Position { epoch, seq },
                data: frame[17 + n..].to_vec(),
            });
        }
    }
}

/// Shards running in this process with probes for members.
pub(crate) struct Harness {
    pool: Option<ShardPool>,
    shared: Arc<Shared>,
    senders: Vec<MeshSender<ShardMsg>>,
    events: Receiver<Event>,
    events_tx: Sender<Event>,
    next_slot: AtomicU32,
}

/// How long a test waits for anything before it fails.
const WAIT: Duration = Duration::from_secs(10);

impl Harness {
    /// `shards` shards on the embedded defaults with `yaml` merged over them.
    pub(crate) fn start(shards: usize, yaml: &str) -> Self {
        let mut config = Config::from_yaml(yaml, "harness").expect("harness config");
        config.shards = crate::config::Shards::Count(shards);
        let mut mesh = Mesh::new(shards, config.runtime.mesh_capacity).expect("mesh");
        let senders = mesh.senders();
        let shared = Arc::new(Shared::for_harness(config, senders.clone()));
        let inboxes: Arc<Vec<std::sync::Mutex<Option<_>>>> = Arc::new(
            (0..shards)
                .map(|i| std::sync::Mutex::new(mesh.take_inbox(i)))
                .collect(),
        );
        let pool_config = PoolConfig {
            shards,
            io_memory: 64 * 1024,
            ring_depth: 32,
            pin: false,
            name: "harness-shard".into(),
            task_run: shared.config.runtime.io_uring_task_run.into(),
            multishot_read_poll: shared.config.runtime.io_uring_read_poll
                == crate::config::ReadPollMode::Multishot,
        };
        let shared2 = shared.clone();
        let pool = ShardPool::start(&pool_config, move |i| {
            let shared = shared2.clone();
            let inbox = inboxes[i].lock().ok().and_then(|mut g| g.take());
            async move {
                let Some(inbox) = inbox else { return };
                let shard = Rc::new(Shard::new(i, shared.clone()));
                shard.run_inbox(inbox).await;
                shared.stopped.shard_done();
            }
        })
        .expect("shard pool");
        let (events_tx, events) = crossbeam_channel::unbounded();
        Self {
            pool: Some(pool),
            shared,
            senders,
            events,
            events_tx,
            next_slot: AtomicU32::new(1 << 30),
        }
    }

    /// Run `f` on `shard` without waiting for it.
    pub(crate) fn post(&self, shard: usize, f: impl FnOnce(&Rc<Shard>) + Send + 'static) {
        let msg = ShardMsg::Test(OnShard(Box::new(f)));
        self.senders[shard].send(msg).expect("harness inbox full");
    }

    /// Run `f` on `shard` and wait for its result.
    pub(crate) fn on<R: Send + 'static>(
        &self,
        shard: usize,
        f: impl FnOnce(&Rc<Shard>) -> R + Send + 'static,
    ) -> R {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.post(shard, move |s| {
            let _ = tx.send(f(s));
        });
        rx.recv_timeout(WAIT).expect("the shard did not answer")
    }

    /// A probe on `shard` in `room` (resuming after `since`), seen as `tag`.
    pub(crate) fn probe(
        &self,
        shard: usize,
        room: &str,
        tag: usize,
        since: Option<Position>,
    ) -> ConnId {
        let id = ConnId {
            shard: shard as u16,
            slot: self.next_slot.fetch_add(1, Ordering::Relaxed),
            generation: 0,
        };
        let events = self.events_tx.clone();
        let cap = self.shared.config.websocket.outbound_queue_bytes;
        let room = room.to_string();
        self.on(shard, move |s| {
            let p = Rc::new(Probe::new(id, tag, events, cap));
            s.probes.borrow_mut().insert(id, p.clone());
            s.join_probe(&room, &p, since);
        });
        id
    }

    /// Pause or resume probe `id`'s reading.
    pub(crate) fn pause(&self, id: ConnId, paused: bool) {
        self.on(usize::from(id.shard), move |s| {
            if let Some(p) = s.probes.borrow().get(&id).cloned() {
                p.set_paused(paused);
            }
        });
    }

    /// The next `n` events, in order.
    pub(crate) fn take(&self, n: usize) -> Vec<Event> {
        (0..n)
            .map(|i| {
                self.events
                    .recv_timeout(WAIT)
                    .unwrap_or_else(|_| panic!("waited for event {i} of {n}"))
            })
            .collect()
    }

    /// Whether another event arrives within `d`.
    pub(crate) fn quiet_for(&self, d: Duration) -> bool {
        self.events.recv_timeout(d).is_err()
    }

    /// A shard's counters.
    pub(crate) fn stats(&self, shard: usize) -> Arc<ShardStats> {
        self.shared.stats[shard].clone()
    }

    /// What `EngineHandle::shutdown` does, then wait for every shard to finish.
    pub(crate) fn shutdown(mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        for s in &self.senders {
            if s.send(ShardMsg::Shutdown).is_err() {
                s.ring();
            }
        }
        if let Some(pool) = self.pool.take() {
            pool.join().expect("shards finished");
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            self.shared.shutdown.store(true, Ordering::Release);
            for s in &self.senders {
                if s.send(ShardMsg::Shutdown).is_err() {
                    s.ring();
                }
            }
            let _ = pool.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corecast_shards::owner_of;

    /// The shard that owns `room` and one that does not (with 2 shards).
    fn owner_and_other(room: &str) -> (usize, usize) {
        let owner = owner_of(room, 2);
        (owner, 1 - owner)
    }

    fn text(s: impl Into<String>) -> Message {
        Message::text(s)
    }

    fn messages_of_events(events: &[Event], tag: usize) -> Vec<Event> {
        events
            .iter()
            .filter(|e| matches!(e, Event::Message { tag: t, .. } if *t == tag))
            .cloned()
            .collect()
    }

    fn messages_of(events: &[Event], tag: usize) -> Vec<(u64, String)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Message {
                    tag: t, pos, data, ..
                } if *t == tag => Some((pos.seq, String::from_utf8_lossy(data).into_owned())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_owner_sequences_publishes_from_every_shard_in_one_order() {
        let h = Harness::start(3, "");
        for (shard, tag) in [(0, 0), (1, 1), (2, 2)] {
            h.probe(shard, "r", tag, None);
        }
        // Bursts from every shard at once: the owner interleaves them.
        for shard in 0..3 {
            h.post(shard, move |s| {
                for i in 0..40 {
                    let _ = s.publish_from("r", text(format!("{shard}-{i}")), None, None);
                }
            });
        }
        let events = h.take(3 * 120);
        let seen: Vec<Vec<(u64, String)>> = (0..3).map(|t| messages_of(&events, t)).collect();
        assert_eq!(seen[0].len(), 120);
        // Positions 1..=120 with no gap or repeat, and one order on every shard.
        let seqs: Vec<u64> = seen[0].iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (1..=120).collect::<Vec<u64>>());
        assert_eq!(seen[0], seen[1]);
        assert_eq!(seen[0], seen[2]);
        // Each publisher's own messages keep their order.
        for shard in 0..3 {
            let mine: Vec<&String> = seen[0]
                .iter()
                .map(|(_, d)| d)
                .filter(|d| d.starts_with(&format!("{shard}-")))
                .collect();
            let want: Vec<String> = (0..40).map(|i| format!("{shard}-{i}")).collect();
            assert_eq!(mine, want.iter().collect::<Vec<_>>());
        }
        h.shutdown();
    }

    #[test]
    fn a_resume_meets_live_messages_with_no_gap_and_no_repeat() {
        let h = Harness::start(2, "");
        let (owner, other) = owner_and_other("live");
        // A witness on each shard: `other` follows the room from the start.
        h.probe(owner, "live", 0, None);
        h.probe(other, "live", 1, None);
        h.on(other, |s| {
            for i in 0..50 {
                let _ = s.publish_from("live", text(format!("m{i}")), None, None);
            }
        });
        let first = h.take(100);
        let Event::Message { pos: at20, .. } = messages_of_events(&first, 0)[19].clone() else {
            unreachable!()
        };
        // Hold the owner while its inbox fills in this order: 10 publishes, then
        // the resume. The publishes reach `other` live while the resuming member
        // waits for its replay (which is cut after them, so it carries them too):
        // it must take them from the replay only, once each, then live ones.
        h.post(owner, |_| std::thread::sleep(Duration::from_millis(300)));
        h.post(owner, |s| {
            for i in 50..60 {
                let _ = s.publish_from("live", text(format!("m{i}")), None, None);
            }
        });
        h.probe(other, "live", 2, Some(at20));
        h.on(owner, |s| {
            for i in 60..70 {
                let _ = s.publish_from("live", text(format!("m{i}")), None, None);
            }
        });
        // Witnesses: 20 messages each; the resumed member: 31..=60 replayed + 10 live.
        let events = h.take(20 + 20 + 50);
        let resumed = messages_of(&events, 2);
        let want: Vec<(u64, String)> = (21..=70).map(|s| (s, format!("m{}", s - 1))).collect();
        assert_eq!(resumed, want, "the resumed member's view");
        assert!(!events.iter().any(|e| matches!(e, Event::Gap { .. })));
        assert!(
            h.quiet_for(Duration::from_millis(200)),
            "nothing more arrives"
        );
        h.shutdown();
    }

    #[test]
    fn slow_consumer_policies_apply_by_room() {
        // 1,500-byte queues; drop_oldest and keep_latest rooms by pattern, the
        // rest disconnect (the default policy).
        let yaml = "websocket:\n  outbound_queue_bytes: 1500\nslow_consumers:\n  rooms:\n    - pattern: \"drop-*\"\n      policy: drop_oldest\n    - pattern: \"latest-*\"\n      policy: keep_latest\n";
        let h = Harness::start(1, yaml);
        let drop = h.probe(0, "drop-a", 0, None);
        let latest = h.probe(0, "latest-a", 1, None);
        let strict = h.probe(0, "plain", 2, None);
        for id in [drop, latest, strict] {
            h.pause(id, true);
        }
        let body = |i: usize| format!("{i:03}{}", "x".repeat(97)); // 100 bytes
        h.on(0, move |s| {
            for i in 0..30 {
                for room in ["drop-a", "latest-a", "plain"] {
                    let _ = s.publish_from(room, text(body(i)), None, None);
                }
            }
        });
        // The disconnect room's member is closed at its first overflow.
        assert_eq!(h.take(1), vec![Event::Disconnected { tag: 2 }]);
        h.pause(drop, false);
        h.pause(latest, false);
        let mut events = Vec::new();
        while let Ok(e) = h.events.recv_timeout(Duration::from_millis(300)) {
            events.push(e);
        }
        // drop_oldest: only the newest messages that fit (1,500 bytes of 117-byte
        // frames, each charged 64 more for its queue entry: 8), oldest dropped,
        // order kept.
        let dropped = messages_of(&events, 0);
        let seqs: Vec<u64> = dropped.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (23..=30).collect::<Vec<u64>>(), "{dropped:?}");
        // keep_latest: one pending message per room, the last one.
        let latest_seen = messages_of(&events, 1);
        assert_eq!(latest_seen.len(), 1, "{latest_seen:?}");
        assert_eq!(latest_seen[0].0, 30);
        assert!(h.stats(0).slow_dropped.load(Ordering::Relaxed) > 0);
        h.shutdown();
    }

    #[test]
    fn shutdown_lets_cross_shard_messages_in_flight_land_first() {
        let h = Harness::start(2, "");
        let (owner, other) = owner_and_other("flight");
        h.probe(other, "flight", 0, None);
        // Published from the non-owner: each goes to the owner and comes back.
        h.on(other, |s| {
            for i in 0..300 {
                let _ = s.publish_from("flight", text(format!("f{i}")), None, None);
            }
        });
        let _ = owner;
        // Shut down at once; the barrier must let every message land.
        let events = h.events.clone();
        h.shutdown();
        let got: Vec<Event> = events.try_iter().collect();
        let seqs: Vec<u64> = messages_of(&got, 0).iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (1..=300).collect::<Vec<u64>>());
    }

    #[test]
    fn a_full_inbox_queues_messages_in_order_in_the_outbox() {
        // Inboxes of 4 messages: a burst of 500 overflows into the sender's outbox.
        let h = Harness::start(2, "runtime:\n  mesh_capacity: 4\n");
        let (_, other) = owner_and_other("burst");
        h.probe(other, "burst", 0, None);
        h.on(other, |s| {
            for i in 0..500 {
                s.publish_from("burst", text(format!("b{i}")), None, None)
                    .expect("the outbox takes what the inbox cannot");
            }
        });
        let events = h.take(500);
        let got = messages_of(&events, 0);
        let want: Vec<(u64, String)> = (1..=500).map(|s| (s, format!("b{}", s - 1))).collect();
        assert_eq!(got, want);
        let deferred = (0..2)
            .map(|i| h.stats(i).mesh_deferred.load(Ordering::Relaxed))
            .sum::<u64>();
        assert!(deferred > 0, "the burst never waited in an outbox");
        let lost = (0..2)
            .map(|i| h.stats(i).mesh_overflows.load(Ordering::Relaxed))
            .sum::<u64>();
        assert_eq!(lost, 0);
        h.shutdown();
    }
}
