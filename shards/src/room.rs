//! Rooms: who is in a room on this shard, and which shards have members at all.
//!
//! Every room has an owner shard, [`owner_of`]. The owner keeps the room's
//! [`InterestTable`] entry (the set of shards with local members, and the room's
//! sequence), so a broadcast is sequenced once and crosses to each interested shard
//! once. Each shard keeps a [`RoomTable`] of its local members.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

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

/// The owner shard's record of one room.
#[derive(Debug, Default, Clone, Copy)]
pub struct RoomInterest {
    /// Bit `s` is set when shard `s` has local members.
    pub shards: u64,
    /// The last sequence number assigned to a message of this room.
    pub seq: u64,
}

/// Owner-side table: interest sets and sequences of the rooms this shard owns.
#[derive(Debug, Default)]
pub struct InterestTable {
    rooms: HashMap<Arc<str>, RoomInterest>,
}

impl InterestTable {
    /// Record that `shard` has (or no longer has) members of `room`.
    pub fn set(&mut self, room: &Arc<str>, shard: usize, interested: bool) {
        debug_assert!(shard < MAX_SHARDS);
        let bit = 1u64 << shard;
        if interested {
            self.rooms.entry(room.clone()).or_default().shards |= bit;
        } else if let Some(entry) = self.rooms.get_mut(room) {
            entry.shards &= !bit;
        }
    }

    /// Assign the room's next sequence number; returns it with the interest set and
    /// the table's shared copy of the room name.
    pub fn sequence(&mut self, room: &str) -> (Arc<str>, RoomInterest) {
        if let Some((name, _)) = self.rooms.get_key_value(room) {
            let name = name.clone();
            let entry = self.rooms.get_mut(room).unwrap_or_else(|| unreachable!());
            entry.seq += 1;
            return (name, *entry);
        }
        let name: Arc<str> = Arc::from(room);
        let entry = RoomInterest { shards: 0, seq: 1 };
        self.rooms.insert(name.clone(), entry);
        (name, entry)
    }

    /// The current record of `room`, if it was ever used.
    pub fn get(&self, room: &str) -> Option<RoomInterest> {
        self.rooms.get(room).copied()
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

    #[test]
    fn interest_sequences_per_room() {
        let mut t = InterestTable::default();
        let a: Arc<str> = Arc::from("a");
        t.set(&a, 0, true);
        t.set(&a, 3, true);
        assert_eq!(t.sequence("a").1.seq, 1);
        let (_, i) = t.sequence("a");
        assert_eq!((i.seq, i.shards), (2, 0b1001));
        t.set(&a, 0, false);
        assert_eq!(t.get("a").unwrap().shards, 0b1000);
    }
}
