//! Room history with memory bounded by configuration: per room (messages, age,
//! bytes) and per table (a byte budget and a cap on rooms holding history), with
//! the oldest history evicted first when a table is over its budget.
//!
//! Bytes are *accounted* bytes: each kept message costs its
//! [`Weigh::weight`] plus [`ENTRY_OVERHEAD`], and a room holding any history
//! costs [`ROOM_OVERHEAD`] plus its name's length, so the budget bounds the
//! memory history really holds, not only the payloads.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a kept message weighs: its payload bytes.
pub trait Weigh {
    /// Payload bytes held by this value.
    fn weight(&self) -> usize;
}

/// Accounted bytes per kept message beyond its payload: the history slot (sequence,
/// time, cost, the message handle and its allocation header) and its entry in the
/// table's eviction order.
pub const ENTRY_OVERHEAD: usize = 96;

/// Accounted bytes for a room while it holds history, beyond its name: the room's
/// record and map slot.
pub const ROOM_OVERHEAD: usize = 160;

/// How much history a room keeps for resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Most messages kept (0 = no history).
    pub max_messages: usize,
    /// Oldest message kept.
    pub max_age: Duration,
    /// Most accounted bytes kept (a message heavier than this is not kept).
    pub max_bytes: usize,
}

/// What one table (one owner shard's rooms) may hold in history in total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryBudget {
    /// Most accounted bytes over all rooms; the oldest history is evicted first.
    pub max_bytes: usize,
    /// Most rooms holding history; the room holding the oldest message loses its
    /// history first.
    pub max_rooms: usize,
}

impl HistoryBudget {
    /// No table-wide bound.
    pub const UNBOUNDED: Self = Self {
        max_bytes: usize::MAX,
        max_rooms: usize::MAX,
    };
}

/// What a table's history holds and what its bounds have cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryCounters {
    /// Accounted bytes held.
    pub bytes: usize,
    /// Rooms holding history.
    pub rooms: usize,
    /// Messages kept.
    pub messages: usize,
    /// Messages evicted to stay within the table's budget (bytes or rooms).
    pub evicted_messages: u64,
    /// Accounted bytes of those messages.
    pub evicted_bytes: u64,
    /// Rooms whose whole history was dropped for the rooms cap.
    pub evicted_rooms: u64,
    /// Messages not kept at all: heavier than their room's or the table's limit
    /// (the room's earlier history is dropped with them: history stays a
    /// contiguous tail, so a resume from before them reports a gap).
    pub not_kept: u64,
}

struct Entry<M> {
    seq: u64,
    at: Instant,
    cost: usize,
    msg: M,
}

/// One room's kept messages, in sequence order.
pub(crate) struct RoomHistory<M> {
    entries: VecDeque<Entry<M>>,
    bytes: usize,
}

impl<M> std::fmt::Debug for RoomHistory<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomHistory")
            .field("messages", &self.entries.len())
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl<M> Default for RoomHistory<M> {
    fn default() -> Self {
        Self {
            entries: VecDeque::new(),
            bytes: 0,
        }
    }
}

fn room_cost(name: &str) -> usize {
    ROOM_OVERHEAD + name.len()
}

impl<M: Clone> RoomHistory<M> {
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The first sequence number kept.
    pub(crate) fn first_seq(&self) -> Option<u64> {
        self.entries.front().map(|e| e.seq)
    }

    /// Kept messages after `after`, in order.
    pub(crate) fn after(&self, after: u64) -> Vec<(u64, M)> {
        self.entries
            .iter()
            .filter(|e| e.seq > after)
            .map(|e| (e.seq, e.msg.clone()))
            .collect()
    }

    fn pop_front(&mut self, name: &str, c: &mut HistoryCounters) -> Option<usize> {
        let e = self.entries.pop_front()?;
        self.bytes -= e.cost;
        c.bytes -= e.cost;
        c.messages -= 1;
        if self.entries.is_empty() {
            c.bytes -= room_cost(name);
            c.rooms -= 1;
        }
        Some(e.cost)
    }

    /// Drop everything kept.
    pub(crate) fn clear(&mut self, name: &str, c: &mut HistoryCounters) {
        while self.pop_front(name, c).is_some() {}
    }

    /// Drop messages older than `max_age`.
    pub(crate) fn expire(
        &mut self,
        name: &str,
        now: Instant,
        max_age: Duration,
        c: &mut HistoryCounters,
    ) {
        while let Some(e) = self.entries.front() {
            if now.saturating_duration_since(e.at) <= max_age {
                break;
            }
            self.pop_front(name, c);
        }
    }
}

/// The table's side of history: its bound, counters, and every kept message in
/// the order it was kept (oldest first), for oldest-first eviction.
#[derive(Debug)]
pub(crate) struct Ledger {
    pub(crate) budget: HistoryBudget,
    pub(crate) counters: HistoryCounters,
    /// `(room, epoch, seq)` of kept messages, oldest first. Messages a room has
    /// dropped on its own (its limits, age, a new epoch) stay here until they
    /// reach the front or a compaction; liveness is checked against the room.
    order: VecDeque<(Arc<str>, u64, u64)>,
}

impl Ledger {
    pub(crate) fn new(budget: HistoryBudget) -> Self {
        Self {
            budget,
            counters: HistoryCounters::default(),
            order: VecDeque::new(),
        }
    }

    /// Keep `msg` (sequence `seq` of epoch `epoch`) in `room`'s history within
    /// `limits`, dropping the room's oldest messages beyond them. The table-wide
    /// budget is enforced afterwards by [`enforce`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn keep<M: Clone + Weigh>(
        &mut self,
        name: &Arc<str>,
        epoch: u64,
        hist: &mut RoomHistory<M>,
        seq: u64,
        now: Instant,
        msg: M,
        limits: HistoryLimits,
    ) {
        if limits.max_messages == 0 {
            return;
        }
        let cost = msg.weight() + ENTRY_OVERHEAD;
        if cost > limits.max_bytes || cost + room_cost(name) > self.budget.max_bytes {
            // History is a contiguous tail: what came before this message cannot
            // be replayed without it, so a resume from there must see a gap.
            hist.clear(name, &mut self.counters);
            self.counters.not_kept += 1;
            return;
        }
        let c = &mut self.counters;
        if hist.entries.is_empty() {
            c.bytes += room_cost(name);
            c.rooms += 1;
        }
        hist.entries.push_back(Entry {
            seq,
            at: now,
            cost,
            msg,
        });
        hist.bytes += cost;
        c.bytes += cost;
        c.messages += 1;
        while hist.entries.len() > limits.max_messages || hist.bytes > limits.max_bytes {
            hist.pop_front(name, c);
        }
        self.order.push_back((name.clone(), epoch, seq));
    }

    #[cfg(test)]
    pub(crate) fn order_len(&self) -> usize {
        self.order.len()
    }

    /// Whether the eviction order has grown past twice the kept messages (stale
    /// entries) and should be compacted against the rooms.
    pub(crate) fn needs_compaction(&self) -> bool {
        self.order.len() > 2 * self.counters.messages + 1024
    }
}

/// A room's record as the eviction needs it: its epoch and its history.
pub(crate) trait HistoryHolder<M> {
    fn epoch(&self) -> u64;
    fn history(&mut self) -> &mut RoomHistory<M>;
}

/// Bring the table within its budget: while it holds more rooms with history than
/// allowed, drop the whole history of the room holding the oldest message (never
/// `current`, the room just appended to); while it holds more bytes than allowed,
/// evict the oldest message. Every eviction is counted.
pub(crate) fn enforce<M: Clone, R: HistoryHolder<M>>(
    ledger: &mut Ledger,
    rooms: &mut HashMap<Arc<str>, R>,
    current: &str,
) {
    if ledger.needs_compaction() {
        compact(ledger, rooms);
    }
    let mut skipped: Vec<(Arc<str>, u64, u64)> = Vec::new();
    while ledger.counters.rooms > ledger.budget.max_rooms {
        let Some((name, epoch, seq)) = ledger.order.pop_front() else {
            break;
        };
        if &*name == current {
            if is_held(rooms, &name, epoch, seq) {
                skipped.push((name, epoch, seq));
            }
            continue;
        }
        if !is_live(rooms, &name, epoch, seq) {
            continue;
        }
        let rec = rooms.get_mut(&name).unwrap_or_else(|| unreachable!());
        let hist = rec.history();
        let c = &mut ledger.counters;
        while let Some(cost) = hist.pop_front(&name, c) {
            c.evicted_messages += 1;
            c.evicted_bytes += cost as u64;
        }
        c.evicted_rooms += 1;
    }
    // The current room's oldest entries go back to the front, in order.
    for e in skipped.into_iter().rev() {
        ledger.order.push_front(e);
    }
    while ledger.counters.bytes > ledger.budget.max_bytes {
        let Some((name, epoch, seq)) = ledger.order.pop_front() else {
            break;
        };
        if !is_live(rooms, &name, epoch, seq) {
            continue;
        }
        let rec = rooms.get_mut(&name).unwrap_or_else(|| unreachable!());
        let c = &mut ledger.counters;
        if let Some(cost) = rec.history().pop_front(&name, c) {
            c.evicted_messages += 1;
            c.evicted_bytes += cost as u64;
        }
    }
}

/// The first sequence number `name` keeps, if it keeps any of `epoch`.
fn first_kept<M: Clone, R: HistoryHolder<M>>(
    rooms: &mut HashMap<Arc<str>, R>,
    name: &str,
    epoch: u64,
) -> Option<u64> {
    let r = rooms.get_mut(name)?;
    if r.epoch() != epoch {
        return None;
    }
    r.history().first_seq()
}

/// True when `(name, epoch, seq)` is the oldest message `name` still keeps (older
/// entries of a room are gone; the order keeps each room's entries in sequence).
fn is_live<M: Clone, R: HistoryHolder<M>>(
    rooms: &mut HashMap<Arc<str>, R>,
    name: &str,
    epoch: u64,
    seq: u64,
) -> bool {
    first_kept(rooms, name, epoch) == Some(seq)
}

/// True when `name` still keeps message `seq` of `epoch` (a room keeps a
/// contiguous tail of what it was given).
fn is_held<M: Clone, R: HistoryHolder<M>>(
    rooms: &mut HashMap<Arc<str>, R>,
    name: &str,
    epoch: u64,
    seq: u64,
) -> bool {
    first_kept(rooms, name, epoch).is_some_and(|first| first <= seq)
}

/// Drop eviction entries of messages their rooms no longer keep.
fn compact<M: Clone, R: HistoryHolder<M>>(ledger: &mut Ledger, rooms: &mut HashMap<Arc<str>, R>) {
    ledger
        .order
        .retain(|(name, epoch, seq)| is_held(rooms, name, *epoch, *seq));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room::{GapReason, InterestTable, Position};

    /// A message of `.0` payload bytes, named by `.1`.
    #[derive(Debug, Clone, PartialEq)]
    struct Msg(usize, u32);

    impl Weigh for Msg {
        fn weight(&self) -> usize {
            self.0
        }
    }

    const KB: usize = 1024;

    fn limits(max_messages: usize, max_bytes: usize) -> HistoryLimits {
        HistoryLimits {
            max_messages,
            max_age: Duration::from_secs(600),
            max_bytes,
        }
    }

    fn held(t: &InterestTable<Msg>, room: &str) -> Vec<u32> {
        t.tail(room, 0).0.into_iter().map(|(_, m)| m.1).collect()
    }

    #[test]
    fn a_room_keeps_at_most_its_bytes_and_skips_heavier_messages() {
        let mut t = InterestTable::new(1);
        let now = Instant::now();
        let l = limits(1000, 3 * (KB + ENTRY_OVERHEAD));
        for n in 0..5 {
            t.append("r", Msg(KB, n), now, l);
        }
        assert_eq!(held(&t, "r"), vec![2, 3, 4], "the oldest went first");
        let c = t.history_counters();
        assert_eq!(c.messages, 3);
        assert_eq!(c.bytes, 3 * (KB + ENTRY_OVERHEAD) + ROOM_OVERHEAD + 1);
        t.append("r", Msg(10 * KB, 5), now, l);
        let c = t.history_counters();
        assert_eq!((c.not_kept, c.messages, c.bytes, c.rooms), (1, 0, 0, 0));
        // A resume from before the heavy message sees the gap it left, not a
        // silent skip; one from after it misses nothing.
        let (epoch, seq, _) = t.get("r").unwrap();
        let r = t.replay(
            "r",
            Some(Position {
                epoch,
                seq: seq - 1,
            }),
            now,
            l,
        );
        assert_eq!(r.gap, Some(GapReason::Expired));
        let r = t.replay("r", Some(Position { epoch, seq }), now, l);
        assert_eq!(r.gap, None);
    }

    #[test]
    fn the_table_budget_evicts_the_oldest_history_first_and_counts_it() {
        let budget = HistoryBudget {
            max_bytes: 64 * KB,
            max_rooms: usize::MAX,
        };
        let mut t = InterestTable::with_budget(1, budget);
        let now = Instant::now();
        let l = limits(1000, usize::MAX);
        for n in 0..1000u32 {
            t.append(&format!("room-{}", n % 100), Msg(KB, n), now, l);
            assert!(t.history_counters().bytes <= budget.max_bytes);
        }
        let c = t.history_counters();
        assert!(c.evicted_messages > 900, "{c:?}");
        assert_eq!(c.messages as u64 + c.evicted_messages, 1000);
        // What is kept is the newest: message 999 (room-99) and its predecessors.
        assert_eq!(held(&t, "room-99").last(), Some(&999));
        assert!(
            held(&t, "room-0").is_empty(),
            "room-0's messages were the oldest"
        );
        assert!(c.bytes > budget.max_bytes - 2 * (KB + ENTRY_OVERHEAD + ROOM_OVERHEAD + 8));
    }

    #[test]
    fn the_rooms_cap_drops_the_history_of_the_room_with_the_oldest_message() {
        let budget = HistoryBudget {
            max_bytes: usize::MAX,
            max_rooms: 2,
        };
        let mut t = InterestTable::with_budget(1, budget);
        let now = Instant::now();
        let l = limits(10, usize::MAX);
        t.append("a", Msg(1, 1), now, l);
        t.append("b", Msg(1, 2), now, l);
        t.append("a", Msg(1, 3), now, l);
        t.append("c", Msg(1, 4), now, l);
        // "a" held the oldest message: it loses its history, not "c".
        assert!(held(&t, "a").is_empty());
        assert_eq!(held(&t, "b"), vec![2]);
        assert_eq!(held(&t, "c"), vec![4]);
        let c = t.history_counters();
        assert_eq!((c.rooms, c.evicted_rooms, c.evicted_messages), (2, 1, 2));
        // The room just appended to is never the one evicted, even when it holds
        // the oldest message.
        t.append("b", Msg(1, 5), now, l);
        t.append("d", Msg(1, 6), now, l);
        assert_eq!(held(&t, "d"), vec![6]);
        assert_eq!(t.history_counters().rooms, 2);
    }

    #[test]
    fn counters_return_to_zero_when_history_expires() {
        let mut t = InterestTable::with_budget(
            1,
            HistoryBudget {
                max_bytes: 16 * KB,
                max_rooms: 4,
            },
        );
        let t0 = Instant::now();
        let l = HistoryLimits {
            max_age: Duration::from_secs(1),
            ..limits(100, usize::MAX)
        };
        for n in 0..50u32 {
            t.append(&format!("r{}", n % 7), Msg(300, n), t0, l);
        }
        t.sweep(t0 + Duration::from_secs(5));
        let c = t.history_counters();
        assert_eq!((c.bytes, c.rooms, c.messages), (0, 0, 0), "{c:?}");
        assert!(t.is_empty());
    }

    #[test]
    fn the_eviction_order_stays_bounded_when_rooms_trim_themselves() {
        let mut t = InterestTable::with_budget(
            1,
            HistoryBudget {
                max_bytes: usize::MAX,
                max_rooms: usize::MAX,
            },
        );
        let now = Instant::now();
        let l = limits(1, usize::MAX);
        for n in 0..100_000u32 {
            t.append("one", Msg(8, n), now, l);
        }
        assert_eq!(held(&t, "one"), vec![99_999]);
        // One message kept: compaction keeps the order under 2 x kept + 1024 (+1
        // appended since the last compaction).
        assert!(t.ledger_order_len() <= 2 + 1024 + 1);
    }
}
