//! [`Slab`]: the core's table of connections and its table of sessions. A vector of slots with
//! a free list; a key is a slot's index plus its generation, so a stale key never reaches an
//! entry that reused the slot. Unlike a hash map it touches memory only for the slots in use.
//!
//! Each table has its own key type ([`SlabKey`]): [`ConnId`] for connections (the slot packed
//! into one integer, the id the drivers see) and [`SessionId`](crate::session::SessionId) for
//! sessions, so one cannot be looked up in the other's table.

use crate::ConnId;

/// A slot of a [`Slab`]: its index and the generation it had when the entry was inserted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Slot {
    idx: u32,
    gen: u32,
}

/// The key type of one [`Slab`]: made from, and turned back into, a [`Slot`].
pub(crate) trait SlabKey: Copy {
    fn from_slot(slot: Slot) -> Self;
    fn slot(self) -> Slot;
}

/// A connection id is its slot as one integer, generation in the high half.
impl SlabKey for ConnId {
    fn from_slot(slot: Slot) -> ConnId {
        (slot.gen as u64) << 32 | slot.idx as u64
    }

    fn slot(self) -> Slot {
        Slot { idx: self as u32, gen: (self >> 32) as u32 }
    }
}

/// Entries keyed by `K`. They are boxed: the slot table stays small (the boxes fill the small
/// holes that the runtime's 128-byte-aligned per-connection allocations leave in the heap).
#[derive(Debug)]
pub(crate) struct Slab<K, T> {
    slots: Vec<(u32, Option<Box<T>>)>,
    free: Vec<u32>,
    len: usize,
    key: std::marker::PhantomData<fn() -> K>,
}

impl<K: SlabKey, T> Slab<K, T> {
    /// Reserve room for `n` entries up front: the memory is only touched as slots are used,
    /// and the slab never copies itself while growing to `n` (copies would leave freed,
    /// still-resident heap behind).
    pub fn with_capacity(n: usize) -> Slab<K, T> {
        Slab { slots: Vec::with_capacity(n), free: Vec::new(), len: 0, key: std::marker::PhantomData }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn insert(&mut self, v: T) -> K {
        self.len += 1;
        if let Some(idx) = self.free.pop() {
            let slot = &mut self.slots[idx as usize];
            slot.0 = slot.0.wrapping_add(1);
            slot.1 = Some(Box::new(v));
            return K::from_slot(Slot { idx, gen: slot.0 });
        }
        let idx = self.slots.len() as u32;
        self.slots.push((0, Some(Box::new(v))));
        K::from_slot(Slot { idx, gen: 0 })
    }

    pub fn get(&self, key: K) -> Option<&T> {
        let Slot { idx, gen: want } = key.slot();
        match self.slots.get(idx as usize) {
            Some((gen, Some(v))) if *gen == want => Some(&**v),
            _ => None,
        }
    }

    pub fn get_mut(&mut self, key: K) -> Option<&mut T> {
        let Slot { idx, gen: want } = key.slot();
        match self.slots.get_mut(idx as usize) {
            Some((gen, Some(v))) if *gen == want => Some(&mut **v),
            _ => None,
        }
    }

    pub fn remove(&mut self, key: K) -> Option<T> {
        let Slot { idx, gen: want } = key.slot();
        match self.slots.get_mut(idx as usize) {
            Some((gen, v @ Some(_))) if *gen == want => {
                self.len -= 1;
                self.free.push(idx);
                v.take().map(|b| *b)
            }
            _ => None,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().filter_map(|(_, v)| v.as_deref())
    }

    pub fn iter_keys(&self) -> impl Iterator<Item = (K, &T)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, (gen, v))| v.as_deref().map(|v| (K::from_slot(Slot { idx: i as u32, gen: *gen }), v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::SessionId;

    #[test]
    fn a_stale_key_misses_the_entry_that_reused_its_slot() {
        let mut s: Slab<SessionId, &str> = Slab::with_capacity(2);
        let a = s.insert("a");
        assert_eq!(s.remove(a), Some("a"));
        let b = s.insert("b");
        assert_ne!(a, b);
        assert_eq!(s.get(a), None);
        assert_eq!(s.get(b), Some(&"b"));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn a_connection_id_round_trips_through_its_slot() {
        let mut s: Slab<ConnId, u8> = Slab::with_capacity(1);
        let a = s.insert(1);
        s.remove(a);
        let b = s.insert(2);
        assert_eq!(b, 1 << 32, "slot 0, generation 1");
        assert_eq!(ConnId::from_slot(b.slot()), b);
        assert_eq!(s.iter_keys().map(|(k, v)| (k, *v)).collect::<Vec<_>>(), vec![(b, 2)]);
    }
}
