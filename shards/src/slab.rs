//! Connection handles: `(shard, slot, generation)` into a per-shard slab.
//!
//! The generation makes a stale handle (to a connection that closed and whose slot was
//! reused) miss instead of reaching the wrong client.

use slab::Slab;

/// Addresses one connection on one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    /// The shard that owns the connection.
    pub shard: u16,
    /// Slot in that shard's slab.
    pub slot: u32,
    /// Generation of the slot when the connection was inserted.
    pub generation: u32,
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.shard, self.slot, self.generation)
    }
}

/// Why a connection id string did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseConnIdError;

impl std::fmt::Display for ParseConnIdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection ids look like SHARD.SLOT.GENERATION, e.g. 0.12.3")
    }
}

impl std::error::Error for ParseConnIdError {}

impl std::str::FromStr for ConnId {
    type Err = ParseConnIdError;

    /// Parse the `shard.slot.generation` form [`Display`](std::fmt::Display) writes.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split('.');
        let mut next = || parts.next().ok_or(ParseConnIdError);
        let shard = next()?.parse().map_err(|_| ParseConnIdError)?;
        let slot = next()?.parse().map_err(|_| ParseConnIdError)?;
        let generation = next()?.parse().map_err(|_| ParseConnIdError)?;
        if parts.next().is_some() {
            return Err(ParseConnIdError);
        }
        Ok(ConnId {
            shard,
            slot,
            generation,
        })
    }
}

/// A shard's live connections.
#[derive(Debug)]
pub struct ConnSlab<T> {
    shard: u16,
    base: u32,
    slots: Slab<(u32, T)>,
    next_generation: u32,
}

impl<T> ConnSlab<T> {
    /// An empty slab for shard `shard`.
    pub fn new(shard: u16) -> Self {
        Self::with_slot_base(shard, 0)
    }

    /// An empty slab whose ids have `base` added to their slot, so two slabs of one
    /// shard (e.g. TCP connections and WebTransport sessions) never hand out the
    /// same id.
    pub fn with_slot_base(shard: u16, base: u32) -> Self {
        Self {
            shard,
            base,
            slots: Slab::new(),
            next_generation: 0,
        }
    }

    /// Insert a connection built from its own id.
    pub fn insert_with(&mut self, make: impl FnOnce(ConnId) -> T) -> ConnId {
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        let entry = self.slots.vacant_entry();
        let id = ConnId {
            shard: self.shard,
            slot: self.base + entry.key() as u32,
            generation,
        };
        entry.insert((generation, make(id)));
        id
    }

    /// The connection at `id`, unless it has gone.
    pub fn get(&self, id: ConnId) -> Option<&T> {
        let index = id.slot.checked_sub(self.base)?;
        match self.slots.get(index as usize) {
            Some((g, t)) if *g == id.generation && id.shard == self.shard => Some(t),
            _ => None,
        }
    }

    /// Remove the connection at `id`.
    pub fn remove(&mut self, id: ConnId) -> Option<T> {
        self.get(id)?;
        Some(self.slots.remove((id.slot - self.base) as usize).1)
    }

    /// Live connections.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when no connection is live.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// All live connections.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().map(|(_, (_, t))| t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_handle_misses_after_slot_reuse() {
        let mut s = ConnSlab::new(1);
        let a = s.insert_with(|id| id);
        assert_eq!(s.get(a), Some(&a));
        assert_eq!(s.remove(a), Some(a));
        let b = s.insert_with(|id| id);
        assert_eq!(a.slot, b.slot);
        assert_ne!(a.generation, b.generation);
        assert!(s.get(a).is_none());
        assert!(s.remove(a).is_none());
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn ids_round_trip_through_text() {
        let id = ConnId {
            shard: 1,
            slot: 42,
            generation: 7,
        };
        assert_eq!(id.to_string().parse::<ConnId>(), Ok(id));
        for bad in ["", "1.2", "1.2.3.4", "a.b.c", "1..3", "70000.1.1"] {
            assert!(bad.parse::<ConnId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn slot_base_keeps_two_slabs_apart() {
        let mut tcp = ConnSlab::new(0);
        let mut wt = ConnSlab::with_slot_base(0, 1 << 31);
        let a = tcp.insert_with(|id| id);
        let b = wt.insert_with(|id| id);
        assert_ne!(a, b);
        assert!(tcp.get(b).is_none());
        assert!(wt.get(a).is_none());
        assert_eq!(wt.get(b), Some(&b));
        assert_eq!(wt.remove(b), Some(b));
    }
}
