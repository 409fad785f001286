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
//!
//! [`PackedMap`] is a [`BoundedMap`] whose keys are packed by [`CompactKey`] when they can
//! be (IPv4), others in a second table that shares the generations and the count, so it
//! keeps and evicts exactly what a `BoundedMap` would. [`WindowMap`], the scan heuristics'
//! [`DistinctWindow`]s, stores an IPv4 key in 8 bytes and its window in one 64-byte line.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;

use hashbrown::hash_table::Entry;
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

/// A key a [`PackedMap`] stores packed as `P` when it can (IPv4: nearly every key).
pub trait CompactKey<P>: Hash + Eq + Clone {
    /// The key packed, or `None` when it does not fit (IPv6). A key is always stored the
    /// same way, and two keys pack to one value only when they are equal.
    fn compact(&self) -> Option<P>;
}

/// A (source, destination) host pair: two IPv4 addresses fit in 8 bytes.
impl CompactKey<u64> for (IpAddr, IpAddr) {
    #[inline]
    fn compact(&self) -> Option<u64> {
        match *self {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                Some(u64::from(u32::from(a)) << 32 | u64::from(u32::from(b)))
            }
            _ => None,
        }
    }
}

/// An (address, port): an IPv4 address fits in 8 bytes.
impl CompactKey<u64> for (IpAddr, u16) {
    #[inline]
    fn compact(&self) -> Option<u64> {
        match *self {
            (IpAddr::V4(a), port) => Some(u64::from(u32::from(a)) << 16 | u64::from(port)),
            _ => None,
        }
    }
}

/// An entry of a [`PackedMap`]'s packed table: a packed key and its value, laid out as the
/// table wants it (a scan window's entry is one aligned cache line, [`WindowLine`]).
pub trait PackedEntry {
    /// The packed key.
    type Key: Copy + Eq + Hash;
    /// The value (`Default` is a new key's).
    type Value: Default;
    /// An entry.
    fn new(key: Self::Key, value: Self::Value) -> Self;
    /// Its key.
    fn key(&self) -> Self::Key;
    /// Its value.
    fn value_mut(&mut self) -> &mut Self::Value;
    /// Its value, the entry dropped.
    fn into_value(self) -> Self::Value;
}

/// An IPv4 scan key and its window: one cache line.
#[derive(Debug)]
#[repr(C, align(64))]
pub struct WindowLine {
    key: u64,
    window: DistinctWindow,
}

impl PackedEntry for WindowLine {
    type Key = u64;
    type Value = DistinctWindow;
    #[inline]
    fn new(key: u64, window: DistinctWindow) -> Self {
        WindowLine { key, window }
    }
    #[inline]
    fn key(&self) -> u64 {
        self.key
    }
    #[inline]
    fn value_mut(&mut self) -> &mut DistinctWindow {
        &mut self.window
    }
    #[inline]
    fn into_value(self) -> DistinctWindow {
        self.window
    }
}

/// The scan heuristics' windows: IPv4 keys in one 64-byte line per entry.
pub type WindowMap<K> = PackedMap<K, WindowLine>;

/// A [`BoundedMap`] (the same two generations, bound and evictions: the generations count
/// both kinds of key together) whose compact keys ([`CompactKey`]) are stored packed, in
/// entries of type `E`; keys that do not pack go into a second table. Scan tables take a new
/// key per packet under a flood of new host pairs, and their hashing and cache misses are
/// most of a replay's cost.
#[derive(Debug)]
pub struct PackedMap<K, E: PackedEntry> {
    young: HashTable<E>,
    old: HashTable<E>,
    young_wide: HashTable<(K, E::Value)>,
    old_wide: HashTable<(K, E::Value)>,
    hasher: DefaultHashBuilder,
    half: usize,
    evicted: u64,
}

impl<K: CompactKey<E::Key>, E: PackedEntry> PackedMap<K, E> {
    /// A map that never holds more than `capacity` entries (at least 2).
    pub fn new(capacity: usize) -> Self {
        PackedMap {
            young: HashTable::new(),
            old: HashTable::new(),
            young_wide: HashTable::new(),
            old_wide: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            half: (capacity / 2).max(1),
            evicted: 0,
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.young.len() + self.old.len() + self.young_wide.len() + self.old_wide.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries dropped to make room so far.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// The value of `key`, refreshed (moved to the young generation), or a new default one.
    #[inline]
    pub fn get_or_insert(&mut self, key: &K) -> &mut E::Value {
        match key.compact() {
            Some(c) => self.packed_entry(c),
            None => self.wide_entry(key),
        }
    }

    /// [`PackedMap::get_or_insert`] of the key whose [`CompactKey::compact`] is `Some(c)`,
    /// for a caller that packs the key itself without building it (`c` must be what
    /// `compact()` gives for that key, or the key would be held twice).
    pub(crate) fn get_or_insert_packed(&mut self, c: E::Key) -> &mut E::Value {
        self.packed_entry(c)
    }

    /// Reads where `key` would be found, caching the lines [`PackedMap::get_or_insert`] will
    /// probe: a batch's keys are touched first so that their cache misses overlap. Whether
    /// the key is held (a result to keep the reads from being optimised away).
    #[inline]
    pub fn touch(&self, key: &K) -> bool {
        match key.compact() {
            Some(c) => self.touch_packed(c),
            None => false,
        }
    }

    /// [`PackedMap::touch`] of a key packed by the caller (see
    /// [`PackedMap::get_or_insert_packed`]).
    #[inline]
    pub(crate) fn touch_packed(&self, c: E::Key) -> bool {
        let hash = self.hasher.hash_one(c);
        let young = self.young.find(hash, |e| e.key() == c).is_some();
        young | self.old.find(hash, |e| e.key() == c).is_some()
    }

    fn packed_entry(&mut self, c: E::Key) -> &mut E::Value {
        let hash = self.hasher.hash_one(c);
        let PackedMap {
            young,
            old,
            young_wide,
            old_wide,
            hasher,
            half,
            evicted,
        } = self;
        if young.len() + young_wide.len() < *half {
            // No turn-over due: one probe of the young generation finds the key or the
            // slot a new one goes in.
            return match young.entry(hash, |e| e.key() == c, |e| hasher.hash_one(e.key())) {
                Entry::Occupied(e) => e.into_mut().value_mut(),
                Entry::Vacant(slot) => {
                    let value = match old.find_entry(hash, |e| e.key() == c) {
                        Ok(e) => e.remove().0.into_value(),
                        Err(_) => E::Value::default(),
                    };
                    slot.insert(E::new(c, value)).into_mut().value_mut()
                }
            };
        }
        let young = match young.find_entry(hash, |e| e.key() == c) {
            Ok(e) => return e.into_mut().value_mut(),
            Err(absent) => absent.into_table(),
        };
        let value = match old.find_entry(hash, |e| e.key() == c) {
            Ok(e) => e.remove().0.into_value(),
            Err(_) => E::Value::default(),
        };
        if young.len() + young_wide.len() >= *half {
            turn_over(young, old, evicted);
            turn_over(young_wide, old_wide, evicted);
        }
        young
            .insert_unique(hash, E::new(c, value), |e| hasher.hash_one(e.key()))
            .into_mut()
            .value_mut()
    }

    fn wide_entry(&mut self, key: &K) -> &mut E::Value {
        let hash = self.hasher.hash_one(key);
        let PackedMap {
            young,
            old,
            young_wide,
            old_wide,
            hasher,
            half,
            evicted,
        } = self;
        let young_wide = match young_wide.find_entry(hash, |(k, _)| k == key) {
            Ok(e) => return &mut e.into_mut().1,
            Err(absent) => absent.into_table(),
        };
        let entry = match old_wide.find_entry(hash, |(k, _)| k == key) {
            Ok(e) => e.remove().0,
            Err(_) => (key.clone(), E::Value::default()),
        };
        if young.len() + young_wide.len() >= *half {
            turn_over(young, old, evicted);
            turn_over(young_wide, old_wide, evicted);
        }
        &mut young_wide
            .insert_unique(hash, entry, |(k, _)| hasher.hash_one(k))
            .into_mut()
            .1
    }
}

/// The young generation becomes the old one; the old one is dropped (counted in `evicted`)
/// and, emptied, is the new young one (its allocation kept).
fn turn_over<T>(young: &mut HashTable<T>, old: &mut HashTable<T>, evicted: &mut u64) {
    std::mem::swap(young, old);
    *evicted += young.len() as u64;
    young.clear();
}

/// Items a window keeps inline before it spills to the heap: most keys (a host pair, a
/// source and port) see one or two items, so such a key allocates nothing. Two keep a window
/// at 56 bytes: with an IPv4 host pair's 8-byte key, a scan table's entry is one cache line
/// ([`WindowMap`]), and a table of new keys (each packet a new pair) writes one line per
/// insertion.
const INLINE_ITEMS: usize = 2;

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
    /// The items past the inline ones (boxed: one pointer in the entry, allocated only by a
    /// key holding more than [`INLINE_ITEMS`] items at once, and kept once allocated).
    #[allow(clippy::box_collection)] // 8 bytes in every entry instead of a `Vec`'s 24
    spill: Option<Box<Vec<(u64, i64)>>>,
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
                self.spill
                    .get_or_insert_with(Box::default)
                    .push((item, ts_us));
            }
        }
        let quiet = !self.alerted || ts_us.saturating_sub(self.last_alert) >= window_us;
        if self.len() > threshold && quiet {
            self.alerted = true;
            self.last_alert = ts_us;
            self.inline_len = 0;
            if let Some(spill) = self.spill.as_mut() {
                spill.clear();
            }
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
        if let Some(spill) = self.spill.as_mut() {
            while kept < INLINE_ITEMS {
                match spill.pop() {
                    Some(e) if recent(e.1) => {
                        self.inline[kept] = e;
                        kept += 1;
                    }
                    Some(_) => {}
                    None => break,
                }
            }
            if !spill.is_empty() {
                spill.retain(|&(_, seen)| recent(seen));
            }
        }
        self.inline_len = kept as u8;
    }

    fn find_mut(&mut self, item: u64) -> Option<&mut (u64, i64)> {
        let n = usize::from(self.inline_len);
        self.inline[..n]
            .iter_mut()
            .chain(self.spill.iter_mut().flat_map(|s| s.iter_mut()))
            .find(|(i, _)| *i == item)
    }

    /// Distinct items currently remembered.
    pub fn len(&self) -> usize {
        usize::from(self.inline_len) + self.spill.as_ref().map_or(0, |s| s.len())
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
        // Scan tables insert one per new host pair: an IPv4 entry is one cache line.
        assert!(std::mem::size_of::<DistinctWindow>() <= 56);
        assert_eq!(std::mem::size_of::<WindowLine>(), 64);
    }

    #[test]
    fn touch_reads_without_changing_the_map() {
        let v4 = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(i));
        let v6 = |i: u32| IpAddr::from(std::net::Ipv6Addr::from(u128::from(i) << 64));
        let mut w: WindowMap<(IpAddr, IpAddr)> = WindowMap::new(8);
        for i in 0..6 {
            w.get_or_insert(&(v4(i), v4(1))).observe(1, 0, 10, 4);
        }
        let (len, evicted) = (w.len(), w.evicted());
        // Held in the young or the old generation, or not at all; wide keys are not read.
        assert!(w.touch(&(v4(5), v4(1))));
        assert!(w.touch(&(v4(0), v4(1))));
        assert!(!w.touch(&(v4(9), v4(1))));
        assert!(!w.touch(&(v6(1), v4(1))));
        assert_eq!((w.len(), w.evicted()), (len, evicted));
    }

    #[test]
    fn window_map_is_a_bounded_map() {
        // The same keys through a WindowMap and a BoundedMap, IPv4 and IPv6 mixed: the same
        // keys held after every step, the same evictions.
        let v4 = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(i));
        let v6 = |i: u32| IpAddr::from(std::net::Ipv6Addr::from(u128::from(i) << 64));
        let mut w: WindowMap<(IpAddr, IpAddr)> = WindowMap::new(64);
        let mut b: BoundedMap<(IpAddr, IpAddr), DistinctWindow> = BoundedMap::new(64);
        let mut rng = 7u64;
        for step in 0..20_000i64 {
            rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let r = (rng >> 33) as u32;
            let a = if r.is_multiple_of(5) {
                v6(r % 97)
            } else {
                v4(r % 97)
            };
            let key = (a, v4(r % 3));
            let item = u64::from(r % 13);
            let x = w.get_or_insert(&key).observe(item, step, 1_000, 4);
            let y = b
                .get_or_insert_with(&key, || key, DistinctWindow::default)
                .is_some_and(|win| win.observe(item, step, 1_000, 4));
            assert_eq!(x, y, "step {step}");
            assert_eq!(w.len(), b.len(), "step {step}");
            assert_eq!(w.evicted(), b.evicted(), "step {step}");
        }
        // Compact keys: IPv4 pairs only, distinct for distinct pairs.
        assert_eq!((v4(1), v4(2)).compact(), Some(1 << 32 | 2));
        assert_eq!((v4(1), v6(2)).compact(), None);
        assert_eq!((v6(1), 80u16).compact(), None);
        assert_ne!((v4(1), 2u16).compact(), (v4(2), 1u16).compact());
    }
}
