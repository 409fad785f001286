//! State the network can grow, kept bounded.
//!
//! [`BoundedMap`] is a two-generation cache: new keys go into the young generation; when it
//! holds half the capacity, the old generation is dropped (its keys counted as evicted) and
//! the young one becomes old. A key found in the old generation moves back to the young one.
//! The result behaves like an approximate LRU with O(1) work per operation and never more than
//! `capacity` entries, whatever the traffic. Flooding it with new keys only pushes out keys that
//! were not touched for half a capacity's worth of insertions.
//!
//! [`DistinctWindow`] counts distinct items (ports, addresses, path segments) seen for one key
//! within a sliding time window, remembering at most `threshold + 1` of them.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};

use hashbrown::{DefaultHashBuilder, HashTable};

/// A map holding at most `capacity` entries (see the module documentation). Each operation
/// hashes its key once (both generations share the hasher).
#[derive(Debug)]
pub struct BoundedMap<K, V> {
    young: HashTable<(K, V)>,
    old: HashTable<(K, V)>,
    hasher: DefaultHashBuilder,
    half: usize,
    evicted: u64,
}

impl<K: Hash + Eq, V> BoundedMap<K, V> {
    /// A map that never holds more than `capacity` entries (at least 2).
    pub fn new(capacity: usize) -> Self {
        BoundedMap {
            young: HashTable::new(),
            old: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            half: (capacity / 2).max(1),
            evicted: 0,
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most entries ever held.
    pub fn capacity(&self) -> usize {
        self.half * 2
    }

    /// Entries dropped to make room so far.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    fn hash<Q: Hash + ?Sized>(&self, key: &Q) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Makes room for one more young entry and inserts it; `young` is `self.young`, borrowed
    /// apart from the other fields so a lookup's borrow can carry on into the insertion.
    fn rotate_and_insert<'a>(
        young: &'a mut HashTable<(K, V)>,
        old: &mut HashTable<(K, V)>,
        hasher: &DefaultHashBuilder,
        half: usize,
        evicted: &mut u64,
        hash: u64,
        entry: (K, V),
    ) -> &'a mut V {
        if young.len() >= half {
            std::mem::swap(young, old);
            *evicted += young.len() as u64;
            // `clear` keeps the allocation: a steady flood reuses the same tables.
            young.clear();
        }
        &mut young
            .insert_unique(hash, entry, |(k, _)| hasher.hash_one(k))
            .into_mut()
            .1
    }

    /// The value of `key`, refreshing it (moving it to the young generation).
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        let eq = |(k, _): &(K, V)| k.borrow() == key;
        let BoundedMap {
            young,
            old,
            hasher,
            half,
            evicted,
        } = self;
        // One probe of the young generation: its miss hands the table back for the insertion.
        let young = match young.find_entry(hash, eq) {
            Ok(e) => return Some(&mut e.into_mut().1),
            Err(absent) => absent.into_table(),
        };
        let (entry, _) = old.find_entry(hash, eq).ok()?.remove();
        Some(Self::rotate_and_insert(
            young, old, hasher, *half, evicted, hash, entry,
        ))
    }

    /// The value of `key`, inserting `make()` under `make_key()` when absent. Always `Some`;
    /// an `Option` only so that no code path can panic.
    pub fn get_or_insert_with<Q>(
        &mut self,
        key: &Q,
        make_key: impl FnOnce() -> K,
        make: impl FnOnce() -> V,
    ) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        let eq = |(k, _): &(K, V)| k.borrow() == key;
        let BoundedMap {
            young,
            old,
            hasher,
            half,
            evicted,
        } = self;
        let young = match young.find_entry(hash, eq) {
            Ok(e) => return Some(&mut e.into_mut().1),
            Err(absent) => absent.into_table(),
        };
        let entry = match old.find_entry(hash, eq) {
            Ok(e) => e.remove().0,
            Err(_) => (make_key(), make()),
        };
        Some(Self::rotate_and_insert(
            young, old, hasher, *half, evicted, hash, entry,
        ))
    }

    /// The values held, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.young.iter().chain(self.old.iter()).map(|(_, v)| v)
    }

    /// Removes `key`.
    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        let eq = |(k, _): &(K, V)| k.borrow() == key;
        match self.young.find_entry(hash, eq) {
            Ok(e) => Some(e.remove().0 .1),
            Err(_) => self.old.find_entry(hash, eq).ok().map(|e| e.remove().0 .1),
        }
    }

    /// Keeps only the entries for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        self.young.retain(|(k, v)| keep(k, v));
        self.old.retain(|(k, v)| keep(k, v));
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        self.young.clear();
        self.old.clear();
    }
}

/// Items a window keeps inline before it spills to the heap: most keys (a host pair, a
/// source and port) see one or two items, so a new key allocates nothing. Three keeps a
/// window at 88 bytes: with a host-pair key, a scan table's entry is two cache lines' worth,
/// and a table of new keys (each packet a new pair) writes less per insertion.
const INLINE_ITEMS: usize = 3;

/// Distinct items seen for one key in a sliding window, and when the key last alerted.
#[derive(Clone, Debug, Default)]
pub struct DistinctWindow {
    /// (item, last time seen in µs), the first [`INLINE_ITEMS`] of them; at most
    /// `threshold + 1` entries over `inline` and `spill`.
    inline: [(u64, i64); INLINE_ITEMS],
    inline_len: u8,
    /// Whether `last_alert` holds a time (kept apart from it: an `Option<i64>` would take
    /// 16 bytes).
    alerted: bool,
    spill: Vec<(u64, i64)>,
    last_alert: i64,
}

impl DistinctWindow {
    /// Records `item` at `ts_us`; true when more than `threshold` distinct items were seen
    /// within `window_us` and the key has not alerted within the last `window_us` (one alert
    /// per key per window). After an alert the count starts again. Allocates only when a key
    /// holds more than [`INLINE_ITEMS`] items at once.
    pub fn observe(&mut self, item: u64, ts_us: i64, window_us: i64, threshold: usize) -> bool {
        self.retain_recent(ts_us, window_us);
        if let Some(slot) = self.find_mut(item) {
            slot.1 = slot.1.max(ts_us);
        } else if self.len() <= threshold {
            if usize::from(self.inline_len) < INLINE_ITEMS {
                if let Some(slot) = self.inline.get_mut(usize::from(self.inline_len)) {
                    *slot = (item, ts_us);
                    self.inline_len += 1;
                }
            } else {
                self.spill.push((item, ts_us));
            }
        }
        let quiet = !self.alerted || ts_us.saturating_sub(self.last_alert) >= window_us;
        if self.len() > threshold && quiet {
            self.alerted = true;
            self.last_alert = ts_us;
            self.inline_len = 0;
            self.spill.clear();
            return true;
        }
        false
    }

    /// Forgets items not seen within the window.
    fn retain_recent(&mut self, ts_us: i64, window_us: i64) {
        let recent = |seen: i64| ts_us.saturating_sub(seen) < window_us;
        let n = usize::from(self.inline_len);
        let mut kept = 0;
        let old = self.inline;
        for e in old.iter().take(n) {
            if recent(e.1) {
                self.inline[kept] = *e;
                kept += 1;
            }
        }
        // Refill the inline slots from the spill, so the spill empties first.
        while kept < INLINE_ITEMS {
            match self.spill.pop() {
                Some(e) if recent(e.1) => {
                    self.inline[kept] = e;
                    kept += 1;
                }
                Some(_) => {}
                None => break,
            }
        }
        self.inline_len = kept as u8;
        if !self.spill.is_empty() {
            self.spill.retain(|&(_, seen)| recent(seen));
        }
    }

    fn find_mut(&mut self, item: u64) -> Option<&mut (u64, i64)> {
        let n = usize::from(self.inline_len);
        self.inline[..n]
            .iter_mut()
            .chain(self.spill.iter_mut())
            .find(|(i, _)| *i == item)
    }

    /// Distinct items currently remembered.
    pub fn len(&self) -> usize {
        usize::from(self.inline_len) + self.spill.len()
    }

    /// Whether no item is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_is_bounded_and_keeps_recent_keys() {
        let mut m: BoundedMap<u32, u32> = BoundedMap::new(100);
        for i in 0..10_000 {
            *m.get_or_insert_with(&i, || i, || 0).unwrap() += 1;
            assert!(m.len() <= 100);
        }
        assert!(m.evicted() >= 9_900);
        assert!(m.get_mut(&9_999).is_some());
        assert!(m.get_mut(&0).is_none());
    }

    #[test]
    fn touched_keys_survive_a_flood() {
        let mut m: BoundedMap<u32, u32> = BoundedMap::new(64);
        m.get_or_insert_with(&7, || 7, || 1);
        for i in 1000..11_000 {
            m.get_or_insert_with(&i, || i, || 0);
            if i % 16 == 0 {
                assert!(m.get_mut(&7).is_some(), "lost at {i}");
            }
        }
    }

    #[test]
    fn window_counts_distinct_items_in_time() {
        let mut w = DistinctWindow::default();
        let s = 1_000_000;
        for p in 0..10 {
            assert!(!w.observe(p, p as i64 * s, 30 * s, 10));
        }
        // Repeats do not count.
        assert!(!w.observe(3, 10 * s, 30 * s, 10));
        // The 11th distinct item alerts.
        assert!(w.observe(10, 11 * s, 30 * s, 10));
        // One alert per window: 11 more soon after stay silent.
        for p in 100..111 {
            assert!(!w.observe(p, 12 * s, 30 * s, 10));
        }
        assert!(w.len() <= 11);
        // Items older than the window are forgotten.
        let mut w = DistinctWindow::default();
        for p in 0..20 {
            assert!(!w.observe(p, p as i64 * 31 * s, 30 * s, 10));
        }
    }

    #[test]
    fn window_entries_stay_small() {
        // Scan tables insert one per new host pair: keep the entry within two cache lines.
        assert!(std::mem::size_of::<DistinctWindow>() <= 88);
        assert!(
            std::mem::size_of::<((std::net::IpAddr, std::net::IpAddr), DistinctWindow)>() <= 128
        );
    }
}
