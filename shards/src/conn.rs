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

/// A shard's live connections.
#[derive(Debug)]
pub struct ConnSlab<T> {
    shard: u16,
    slots: Slab<(u32, T)>,
    next_generation: u32,
}

impl<T> ConnSlab<T> {
    /// An empty slab for shard `shard`.
    pub fn new(shard: u16) -> Self {
        Self {
            shard,
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
            slot: entry.key() as u32,
            generation,
        };
        entry.insert((generation, make(id)));
        id
    }

    /// The connection at `id`, unless it has gone.
    pub fn get(&self, id: ConnId) -> Option<&T> {
        match self.slots.get(id.slot as usize) {
            Some((g, t)) if *g == id.generation && id.shard == self.shard => Some(t),
            _ => None,
        }
    }

    /// Remove the connection at `id`.
    pub fn remove(&mut self, id: ConnId) -> Option<T> {
        self.get(id)?;
        Some(self.slots.remove(id.slot as usize).1)
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
}
