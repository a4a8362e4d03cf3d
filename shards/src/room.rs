//! Rooms: who is in a room on this shard, and which shards have members at all.
//!
//! Every room has an owner shard, [`owner_of`]. The owner keeps the room's
//! [`InterestTable`] entry (the set of shards with local members, and the room's
//! sequence), so a broadcast is sequenced once and crosses to each interested shard
//! once. Each shard keeps a [`RoomTable`] of its local members.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Instant;

use crate::history::{enforce, HistoryHolder, Ledger, RoomHistory};
pub use crate::history::{HistoryBudget, HistoryCounters, HistoryLimits, Weigh};

/// The most shards a mesh supports (the interest set is a 64-bit mask).
pub const MAX_SHARDS: usize = 64;

/// The shard that sequences `room`: a stable FNV-1a hash of its name modulo `shards`.
pub fn owner_of(room: &str, shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in room.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % shards.max(1) as u64) as usize
}

/// An ordered member list with O(1) insert and remove by key.
#[derive(Debug)]
pub struct MemberList<K, M> {
    members: Vec<(K, M)>,
    index: HashMap<K, usize>,
}

impl<K: Copy + Eq + Hash, M> Default for MemberList<K, M> {
    fn default() -> Self {
        Self {
            members: Vec::new(),
            index: HashMap::new(),
        }
    }
}

impl<K: Copy + Eq + Hash, M> MemberList<K, M> {
    /// Add a member; false if `key` is already present.
    pub fn insert(&mut self, key: K, member: M) -> bool {
        if self.index.contains_key(&key) {
            return false;
        }
        self.index.insert(key, self.members.len());
        self.members.push((key, member));
        true
    }

    /// Remove a member by key; returns it if it was present.
    pub fn remove(&mut self, key: &K) -> Option<M> {
        let pos = self.index.remove(key)?;
        let (_, member) = self.members.swap_remove(pos);
        if let Some((moved, _)) = self.members.get(pos) {
            self.index.insert(*moved, pos);
        }
        Some(member)
    }

    /// Whether `key` is a member.
    pub fn contains(&self, key: &K) -> bool {
        self.index.contains_key(key)
    }

    /// Members, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &(K, M)> {
        self.members.iter()
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True when nobody is in the list.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

/// What a membership change did to the shard's view of a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing changed (already a member / not a member).
    None,
    /// The member was added or removed; the room still has other local members.
    Member,
    /// The first local member joined: the owner must learn this shard is interested.
    FirstJoined,
    /// The last local member left: the owner may drop this shard from the interest set.
    LastLeft,
}

/// Per-shard table of rooms to their local members.
#[derive(Debug)]
pub struct RoomTable<K, M> {
    rooms: HashMap<Arc<str>, MemberList<K, M>>,
}

impl<K: Copy + Eq + Hash, M> Default for RoomTable<K, M> {
    fn default() -> Self {
        Self {
            rooms: HashMap::new(),
        }
    }
}

impl<K: Copy + Eq + Hash, M> RoomTable<K, M> {
    /// Add `key` to `room`. Also returns the table's shared copy of the room name,
    /// so callers can keep it without allocating their own.
    pub fn join(&mut self, room: &str, key: K, member: M) -> (Change, Arc<str>) {
        let name: Arc<str> = match self.rooms.get_key_value(room) {
            Some((k, _)) => k.clone(),
            None => Arc::from(room),
        };
        let list = self.rooms.entry(name.clone()).or_default();
        let change = if !list.insert(key, member) {
            Change::None
        } else if list.len() == 1 {
            Change::FirstJoined
        } else {
            Change::Member
        };
        (change, name)
    }

    /// Remove `key` from `room`.
    pub fn leave(&mut self, room: &str, key: &K) -> Change {
        let Some(list) = self.rooms.get_mut(room) else {
            return Change::None;
        };
        if list.remove(key).is_none() {
            return Change::None;
        }
        if list.is_empty() {
            self.rooms.remove(room);
            Change::LastLeft
        } else {
            Change::Member
        }
    }

    /// Local members of `room`, if it has any.
    pub fn members(&self, room: &str) -> Option<&MemberList<K, M>> {
        self.rooms.get(room)
    }

    /// Number of rooms with local members.
    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    /// True when no room has a local member.
    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }
}

/// A position in a room's stream: the room's epoch and a message's sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    /// Changes whenever the room's history is lost (restart, record dropped).
    pub epoch: u64,
    /// The message's sequence number within the epoch (first message: 1).
    pub seq: u64,
}

/// Why a resume could not be served exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapReason {
    /// The cursor is from another epoch (history was lost since).
    EpochChanged,
    /// The cursor is older than the oldest message kept.
    Expired,
    /// The cursor is ahead of the room (not a position this room has had).
    Unknown,
}

/// The owner's answer to a resume: what to send before live messages.
#[derive(Debug, Clone)]
pub struct Replay<M> {
    /// Set when messages after the cursor are missing; sent before `messages`.
    pub gap: Option<GapReason>,
    /// The room's current epoch.
    pub epoch: u64,
    /// The first sequence number still in history (`seq + 1` when history is empty).
    pub first_available: u64,
    /// Messages to replay, in order: every kept message after the cursor.
    pub messages: Vec<(u64, M)>,
    /// The room's sequence when the replay was cut: live messages after it follow.
    pub upto: u64,
}

/// The owner shard's record of one room.
#[derive(Debug)]
pub struct RoomRecord<M> {
    /// Bit `s` is set when shard `s` has local members.
    pub shards: u64,
    /// The room's epoch.
    pub epoch: u64,
    /// The last sequence number assigned.
    pub seq: u64,
    history: RoomHistory<M>,
    limits: HistoryLimits,
}

impl<M: Clone> RoomRecord<M> {
    fn first_available(&self) -> u64 {
        self.history.first_seq().unwrap_or(self.seq + 1)
    }
}

impl<M: Clone> HistoryHolder<M> for RoomRecord<M> {
    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn history(&mut self) -> &mut RoomHistory<M> {
        &mut self.history
    }
}

/// Owner-side table: interest sets, sequences, epochs and histories of the rooms a
/// shard owns. History memory is bounded per room ([`HistoryLimits`]) and for the
/// whole table ([`HistoryBudget`]); see [`crate::history`].
#[derive(Debug)]
pub struct InterestTable<M> {
    rooms: HashMap<Arc<str>, RoomRecord<M>>,
    ledger: Ledger,
    epoch_base: u64,
    records_made: u64,
}

impl<M: Clone + Weigh> Default for InterestTable<M> {
    fn default() -> Self {
        Self::new(0)
    }
}

impl<M: Clone + Weigh> InterestTable<M> {
    /// An empty table whose rooms get epochs derived from `epoch_base` (e.g. the
    /// process start time), so epochs differ across restarts; no table-wide
    /// history bound.
    pub fn new(epoch_base: u64) -> Self {
        Self::with_budget(epoch_base, HistoryBudget::UNBOUNDED)
    }

    /// An empty table whose history as a whole stays within `budget`.
    pub fn with_budget(epoch_base: u64, budget: HistoryBudget) -> Self {
        Self {
            rooms: HashMap::new(),
            ledger: Ledger::new(budget),
            epoch_base,
            records_made: 0,
        }
    }

    #[cfg(test)]
    pub(crate) fn ledger_order_len(&self) -> usize {
        self.ledger.order_len()
    }

    /// What the table's history holds and what its bounds have evicted.
    pub fn history_counters(&self) -> HistoryCounters {
        self.ledger.counters
    }

    fn record(&mut self, room: &str, limits: HistoryLimits) -> (Arc<str>, &mut RoomRecord<M>) {
        let name = match self.rooms.get_key_value(room) {
            Some((k, _)) => k.clone(),
            None => {
                // A new record is a new epoch: any cursor from an earlier record of
                // this room (dropped with its history) must be reported as a gap.
                self.records_made += 1;
                let epoch = (self.epoch_base << 20) ^ self.records_made;
                let name: Arc<str> = Arc::from(room);
                self.rooms.insert(
                    name.clone(),
                    RoomRecord {
                        shards: 0,
                        epoch,
                        seq: 0,
                        history: RoomHistory::default(),
                        limits,
                    },
                );
                name
            }
        };
        let rec = self.rooms.get_mut(room).unwrap_or_else(|| unreachable!());
        (name, rec)
    }

    /// Record that `shard` has (or no longer has) members of `room`.
    pub fn set(&mut self, room: &str, shard: usize, interested: bool, limits: HistoryLimits) {
        debug_assert!(shard < MAX_SHARDS);
        let bit = 1u64 << shard;
        if interested {
            self.record(room, limits).1.shards |= bit;
        } else if let Some(entry) = self.rooms.get_mut(room) {
            entry.shards &= !bit;
        }
    }

    /// Keep `msg` as message `seq` of the record `name` (within its limits and
    /// the table's budget), then drop what is too old.
    fn keep(&mut self, name: &Arc<str>, seq: u64, msg: M, now: Instant, limits: HistoryLimits) {
        let rec = self.rooms.get_mut(name).unwrap_or_else(|| unreachable!());
        rec.limits = limits;
        let c = &mut self.ledger;
        c.keep(name, rec.epoch, &mut rec.history, seq, now, msg, limits);
        rec.history
            .expire(name, now, limits.max_age, &mut c.counters);
        enforce(&mut self.ledger, &mut self.rooms, name);
    }

    /// Assign the room's next sequence number and keep `msg` in its history.
    /// Returns the shared room name, the message's position and the interest set.
    pub fn append(
        &mut self,
        room: &str,
        msg: M,
        now: Instant,
        limits: HistoryLimits,
    ) -> (Arc<str>, Position, u64) {
        let (name, rec) = self.record(room, limits);
        rec.seq += 1;
        let pos = Position {
            epoch: rec.epoch,
            seq: rec.seq,
        };
        let shards = rec.shards;
        self.keep(&name, pos.seq, msg, now, limits);
        (name, pos, shards)
    }

    /// Cluster mode: record a message sequenced elsewhere (by the broker) at `pos`.
    /// A new epoch restarts the room's record (history from the old epoch is
    /// dropped); a position at or before the record's is a duplicate: `None`.
    /// Returns the shared room name and the interest set.
    pub fn append_at(
        &mut self,
        room: &str,
        pos: Position,
        msg: M,
        now: Instant,
        limits: HistoryLimits,
    ) -> Option<(Arc<str>, u64)> {
        let (name, _) = self.record(room, limits);
        let rec = self.rooms.get_mut(&name).unwrap_or_else(|| unreachable!());
        if rec.epoch != pos.epoch {
            rec.epoch = pos.epoch;
            rec.history.clear(&name, &mut self.ledger.counters);
        } else if pos.seq <= rec.seq {
            return None;
        }
        rec.seq = pos.seq;
        let shards = rec.shards;
        self.keep(&name, pos.seq, msg, now, limits);
        Some((name, shards))
    }

    /// Cluster mode: the broker says the room is at `epoch`/`seq` (this node just
    /// subscribed, or resubscribed). History the record holds stays only when it
    /// is from the same epoch and not ahead of the broker.
    pub fn set_position(&mut self, room: &str, epoch: u64, seq: u64, limits: HistoryLimits) {
        let (name, _) = self.record(room, limits);
        let rec = self.rooms.get_mut(&name).unwrap_or_else(|| unreachable!());
        if rec.epoch != epoch || rec.seq > seq {
            rec.history.clear(&name, &mut self.ledger.counters);
        }
        rec.epoch = epoch;
        rec.seq = seq;
    }

    /// Cluster mode: drop the room's history (the node stopped following the
    /// room, so what it holds may miss messages from now on).
    pub fn clear_history(&mut self, room: &str) {
        if let Some((name, _)) = self.rooms.get_key_value(room) {
            let name = name.clone();
            let rec = self.rooms.get_mut(room).unwrap_or_else(|| unreachable!());
            rec.history.clear(&name, &mut self.ledger.counters);
        }
    }

    /// Messages of `room` kept after `after`, and whether the history covers
    /// everything from `after + 1` (nothing was trimmed in between).
    pub fn tail(&self, room: &str, after: u64) -> (Vec<(u64, M)>, bool) {
        let Some(rec) = self.rooms.get(room) else {
            return (Vec::new(), true);
        };
        let covers = after >= rec.seq || rec.first_available() <= after + 1;
        (rec.history.after(after), covers)
    }

    /// The first sequence number `room`'s history still holds (`seq + 1` when none).
    pub fn first_available(&mut self, room: &str, now: Instant) -> Option<u64> {
        let (name, rec) = self.rooms.get_key_value(room)?;
        let (name, max_age) = (name.clone(), rec.limits.max_age);
        let rec = self.rooms.get_mut(room)?;
        rec.history
            .expire(&name, now, max_age, &mut self.ledger.counters);
        Some(rec.first_available())
    }

    /// What a client resuming `room` after `since` must get before live messages;
    /// `since: None` asks only for the room's current position.
    pub fn replay(
        &mut self,
        room: &str,
        since: Option<Position>,
        now: Instant,
        limits: HistoryLimits,
    ) -> Replay<M> {
        let (name, _) = self.record(room, limits);
        let rec = self.rooms.get_mut(&name).unwrap_or_else(|| unreachable!());
        let max_age = rec.limits.max_age;
        rec.history
            .expire(&name, now, max_age, &mut self.ledger.counters);
        let first = rec.first_available();
        // No cursor: only the room's current position (no messages, no gap).
        let Some(since) = since else {
            return Replay {
                gap: None,
                epoch: rec.epoch,
                first_available: first,
                messages: Vec::new(),
                upto: rec.seq,
            };
        };
        let (gap, from) = if since.epoch != rec.epoch {
            (Some(GapReason::EpochChanged), 0)
        } else if since.seq > rec.seq {
            (Some(GapReason::Unknown), 0)
        } else if since.seq + 1 < first {
            (Some(GapReason::Expired), 0)
        } else {
            (None, since.seq)
        };
        Replay {
            gap,
            epoch: rec.epoch,
            first_available: first,
            messages: rec.history.after(from),
            upto: rec.seq,
        }
    }

    /// The current record of `room`, if any: `(epoch, seq, interest set)`.
    pub fn get(&self, room: &str) -> Option<(u64, u64, u64)> {
        self.rooms.get(room).map(|r| (r.epoch, r.seq, r.shards))
    }

    /// Drop expired history, and forget rooms with no members and no history left.
    pub fn sweep(&mut self, now: Instant) {
        let counters = &mut self.ledger.counters;
        self.rooms.retain(|name, rec| {
            rec.history.expire(name, now, rec.limits.max_age, counters);
            rec.shards != 0 || !rec.history.is_empty()
        });
    }

    /// Number of room records held.
    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    /// True when no room record is held.
    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_stable_and_in_range() {
        for shards in 1..8 {
            let a = owner_of("general", shards);
            assert!(a < shards);
            assert_eq!(a, owner_of("general", shards));
        }
    }

    #[test]
    fn member_list_removes_by_key_after_swaps() {
        let mut l = MemberList::default();
        for k in 0..5u32 {
            assert!(l.insert(k, k * 10));
        }
        assert!(!l.insert(3, 0));
        assert_eq!(l.remove(&0), Some(0));
        assert_eq!(l.remove(&4), Some(40));
        assert_eq!(l.remove(&4), None);
        let mut keys: Vec<u32> = l.iter().map(|(k, _)| *k).collect();
        keys.sort();
        assert_eq!(keys, vec![1, 2, 3]);
    }

    #[test]
    fn room_table_reports_first_join_and_last_leave() {
        let mut t = RoomTable::default();
        let (c, first) = t.join("r", 1u32, ());
        assert_eq!(c, Change::FirstJoined);
        let (c, second) = t.join("r", 2u32, ());
        assert_eq!(c, Change::Member);
        assert!(Arc::ptr_eq(&first, &second), "members share the room name");
        assert_eq!(t.join("r", 2u32, ()).0, Change::None);
        assert_eq!(t.leave("r", &1), Change::Member);
        assert_eq!(t.leave("r", &2), Change::LastLeft);
        assert!(t.is_empty());
    }

    use std::time::Duration;

    impl Weigh for u32 {
        fn weight(&self) -> usize {
            4
        }
    }

    const LIMITS: HistoryLimits = HistoryLimits {
        max_messages: 3,
        max_age: Duration::from_secs(60),
        max_bytes: usize::MAX,
    };

    #[test]
    fn interest_sequences_per_room() {
        let mut t: InterestTable<u32> = InterestTable::new(7);
        let now = Instant::now();
        t.set("a", 0, true, LIMITS);
        t.set("a", 3, true, LIMITS);
        assert_eq!(t.append("a", 10, now, LIMITS).1.seq, 1);
        let (_, pos, shards) = t.append("a", 11, now, LIMITS);
        assert_eq!((pos.seq, shards), (2, 0b1001));
        t.set("a", 0, false, LIMITS);
        assert_eq!(t.get("a").unwrap().2, 0b1000);
    }

    #[test]
    fn replay_returns_exactly_the_messages_after_the_cursor() {
        let mut t: InterestTable<u32> = InterestTable::new(1);
        let now = Instant::now();
        let mut last = Position { epoch: 0, seq: 0 };
        for m in 1..=3 {
            last = t.append("r", m, now, LIMITS).1;
        }
        let r = t.replay("r", Some(Position { seq: 1, ..last }), now, LIMITS);
        assert_eq!(r.gap, None);
        assert_eq!(r.messages, vec![(2, 2), (3, 3)]);
        assert_eq!(r.upto, 3);
        let r = t.replay("r", Some(last), now, LIMITS);
        assert!(r.messages.is_empty() && r.gap.is_none());
    }

    #[test]
    fn replay_reports_gaps_for_old_foreign_or_future_cursors() {
        let mut t: InterestTable<u32> = InterestTable::new(1);
        let now = Instant::now();
        let mut last = Position { epoch: 0, seq: 0 };
        for m in 1..=5 {
            last = t.append("r", m, now, LIMITS).1;
        }
        // Only 3, 4, 5 are kept: a client that has 1 missed 2.
        let r = t.replay("r", Some(Position { seq: 1, ..last }), now, LIMITS);
        assert_eq!(r.gap, Some(GapReason::Expired));
        assert_eq!(r.first_available, 3);
        assert_eq!(r.messages.len(), 3);
        // A client that has 2 misses nothing.
        assert_eq!(
            t.replay("r", Some(Position { seq: 2, ..last }), now, LIMITS)
                .gap,
            None
        );
        let other = Position {
            epoch: last.epoch + 1,
            seq: 2,
        };
        assert_eq!(
            t.replay("r", Some(other), now, LIMITS).gap,
            Some(GapReason::EpochChanged)
        );
        let ahead = Position { seq: 99, ..last };
        assert_eq!(
            t.replay("r", Some(ahead), now, LIMITS).gap,
            Some(GapReason::Unknown)
        );
    }

    #[test]
    fn broker_positions_drop_duplicates_and_restart_on_a_new_epoch() {
        let mut t: InterestTable<u32> = InterestTable::new(1);
        let now = Instant::now();
        t.set("r", 2, true, LIMITS);
        t.set_position("r", 9, 4, LIMITS);
        let at = |seq| Position { epoch: 9, seq };
        assert_eq!(t.append_at("r", at(5), 5, now, LIMITS).unwrap().1, 0b100);
        assert!(
            t.append_at("r", at(5), 5, now, LIMITS).is_none(),
            "duplicate"
        );
        assert!(t.append_at("r", at(3), 3, now, LIMITS).is_none(), "old");
        t.append_at("r", at(6), 6, now, LIMITS).unwrap();
        assert_eq!(t.tail("r", 4), (vec![(5, 5), (6, 6)], true));
        assert_eq!(t.tail("r", 6), (vec![], true));
        // A new epoch (the broker lost its data) restarts the record.
        let new = Position { epoch: 10, seq: 1 };
        t.append_at("r", new, 1, now, LIMITS).unwrap();
        assert_eq!(t.get("r"), Some((10, 1, 0b100)));
        assert_eq!(t.tail("r", 0), (vec![(1, 1)], true));
        // Trimmed history no longer covers an old cursor.
        for seq in 2..=6 {
            t.append_at("r", Position { epoch: 10, seq }, seq as u32, now, LIMITS);
        }
        assert!(!t.tail("r", 1).1);
        assert!(t.tail("r", 3).1);
    }

    #[test]
    fn history_expires_by_age_and_idle_rooms_are_forgotten_with_a_new_epoch() {
        let mut t: InterestTable<u32> = InterestTable::new(1);
        let t0 = Instant::now();
        let short = HistoryLimits {
            max_messages: 10,
            max_age: Duration::from_secs(1),
            max_bytes: usize::MAX,
        };
        let first = t.append("r", 1, t0, short).1;
        let later = t0 + Duration::from_secs(5);
        t.sweep(later);
        assert!(t.is_empty(), "no members and no history: record dropped");
        let again = t.append("r", 2, later, short).1;
        assert_ne!(first.epoch, again.epoch);
        assert_eq!(again.seq, 1);
        assert_eq!(
            t.replay("r", Some(first), later, short).gap,
            Some(GapReason::EpochChanged)
        );
    }
}
