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
//! [`PackedMap`] holds the keys of the scan heuristics, which take a new key per packet
//! under a flood of new host pairs: keys packed by [`CompactKey`] (IPv4) go into a
//! set-associative table ([`WAYS`] entries per set, least recently used first out within a
//! set), others into a [`BoundedMap`]. [`WindowMap`], the scan heuristics'
//! [`DistinctWindow`]s, stores an IPv4 key in 8 bytes and its window in one 64-byte line;
//! [`FirstSightings`] keeps the one item of IPv4 scan keys seen with one item so far, so that
//! a key's line is written only at its second.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;

use hashbrown::{DefaultHashBuilder, HashTable};

/// The hash of `bytes` alone: `hash_one(bytes)` also hashes their length as a `usize` (a
/// slice's `Hash`), which the byte hash mixes in already.
#[inline]
pub(crate) fn hash_bytes(hasher: &DefaultHashBuilder, bytes: &[u8]) -> u64 {
    let mut h = hasher.build_hasher();
    h.write(bytes);
    h.finish()
}

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

    /// The value of `key`, inserting `make()` under `make_key()` when absent.
    pub fn value_or_insert_with<Q>(
        &mut self,
        key: &Q,
        make_key: impl FnOnce() -> K,
        make: impl FnOnce() -> V,
    ) -> &mut V
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
            Ok(e) => return &mut e.into_mut().1,
            Err(absent) => absent.into_table(),
        };
        let entry = match old.find_entry(hash, eq) {
            Ok(e) => e.remove().0,
            Err(_) => (make_key(), make()),
        };
        Self::rotate_and_insert(young, old, hasher, *half, evicted, hash, entry)
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
    /// The packed key (`Default` fills the table's unused entries).
    type Key: Copy + Eq + Hash + Default;
    /// The value (`Default` is a new key's).
    type Value: Default;
    /// An entry.
    fn new(key: Self::Key, value: Self::Value) -> Self;
    /// Its key.
    fn key(&self) -> Self::Key;
    /// Its value.
    fn value_mut(&mut self) -> &mut Self::Value;
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
}

/// The scan heuristics' windows: IPv4 keys in one 64-byte line per entry.
pub type WindowMap<K> = PackedMap<K, WindowLine>;

/// Entries per set of a [`PackedMap`]'s packed table (the set's order is kept in one byte,
/// two bits per way).
pub const WAYS: usize = 4;
const _: () = assert!(WAYS == 4);

/// Sets a [`PackedMap`]'s packed table starts with (it doubles up to its bound as sets fill).
const FIRST_SETS: usize = 16;

/// A set's bookkeeping, 8 bytes in an array of their own (eight sets a cache line): which
/// ways hold a key, in what order of use, and 8 bits of each key's hash. A lookup reads this
/// and then only the entry whose tag matches (or, for a new key, the one it takes): entries
/// never move within a set.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(8))]
struct SetMeta {
    /// `tags[w]`: the low 8 bits of the hash of way `w`'s key.
    tags: [u8; WAYS],
    /// The ways in use by rank, two bits each, the most recent in the lowest bits.
    order: u8,
    /// Ways in use: ways `0..fill`.
    fill: u8,
}

impl SetMeta {
    /// The way at `rank` (0: the most recent).
    #[inline]
    fn way(self, rank: usize) -> usize {
        usize::from((self.order >> (2 * rank)) & 3)
    }

    /// The rank of the way holding a key tagged `tag` for which `is_key(way)` holds.
    #[inline]
    fn find(self, tag: u8, mut is_key: impl FnMut(usize) -> bool) -> Option<usize> {
        (0..usize::from(self.fill)).find(|&r| {
            let w = self.way(r);
            self.tags.get(w) == Some(&tag) && is_key(w)
        })
    }

    /// Makes the way at `rank` the most recent.
    #[inline]
    fn make_first(&mut self, rank: usize) {
        let order = u32::from(self.order);
        let below = order & ((1 << (2 * rank)) - 1);
        let above = order & !((1 << (2 * rank + 2)) - 1);
        let way = (order >> (2 * rank)) & 3;
        self.order = (above | (below << 2) | way) as u8;
    }

    /// The way a new key tagged `tag` takes, made the most recent: the next unused one, or
    /// the least recent (returned as pushed out).
    #[inline]
    fn take(&mut self, tag: u8) -> (usize, bool) {
        let full = usize::from(self.fill) == WAYS;
        let way = if full {
            self.way(WAYS - 1)
        } else {
            self.fill += 1;
            usize::from(self.fill) - 1
        };
        self.order = (u32::from(self.order) << 2 | way as u32) as u8;
        if let Some(t) = self.tags.get_mut(way) {
            *t = tag;
        }
        (way, full)
    }
}

/// A map of at most `capacity` packed keys ([`CompactKey`], IPv4) and at most `capacity`
/// others (a [`BoundedMap`]). A packed key's set is chosen by its hash; a set holds
/// [`WAYS`] entries, and a new key in a full set pushes out the set's least recently used
/// one (counted in [`PackedMap::evicted`]): a key used again before [`WAYS`] other keys
/// came into its set is never pushed out. A lookup compares one entry's key, the one its
/// set's 8-byte [`SetMeta`] points to (it prefetches the set's four entries first, so that
/// the meta and the entry arrive together). Sets fill unevenly, so keys are pushed out before the table holds
/// `capacity` (filling half of it pushed out 3.8% of the keys, README), and which ones
/// depends on the hash's per-run seed: two replays of traffic that overflows a set can
/// differ. The table starts at [`FIRST_SETS`] sets and doubles while a full set meets a new
/// key, up to `capacity / WAYS` sets rounded down to a power of two; each doubling
/// allocates the new table (on the packet path, at most log2(bound / [`FIRST_SETS`])
/// times).
#[derive(Debug)]
pub struct PackedMap<K, E: PackedEntry> {
    /// `sets * WAYS` entries; set `i`'s are `ways[i * WAYS..][..WAYS]`, in use as `meta[i]`
    /// says.
    ways: Vec<E>,
    meta: Vec<SetMeta>,
    sets: usize,
    max_sets: usize,
    packed_len: usize,
    wide: BoundedMap<K, E::Value>,
    hasher: DefaultHashBuilder,
    evicted: u64,
}

impl<K: CompactKey<E::Key>, E: PackedEntry> PackedMap<K, E> {
    /// A map that never holds more than `capacity` packed keys (rounded down to a power of
    /// two sets, at least one) and `capacity` others.
    pub fn new(capacity: usize) -> Self {
        // Powers of two: every growth step splits each set in two.
        let max_sets = 1 << (capacity / WAYS).max(1).ilog2();
        let mut m = PackedMap {
            ways: Vec::new(),
            meta: Vec::new(),
            sets: 0,
            max_sets,
            packed_len: 0,
            wide: BoundedMap::new(capacity),
            hasher: DefaultHashBuilder::default(),
            evicted: 0,
        };
        m.resize(FIRST_SETS.min(max_sets));
        m
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.packed_len + self.wide.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries dropped to make room so far.
    pub fn evicted(&self) -> u64 {
        self.evicted + self.wide.evicted()
    }

    /// The value of `key`, refreshed (made its set's most recent), or a new default one.
    #[inline]
    pub fn get_or_insert(&mut self, key: &K) -> &mut E::Value {
        match key.compact() {
            Some(c) => self.packed_entry(c),
            None => self.wide_entry(key),
        }
    }

    /// The value of the packed key `c` (as [`PackedMap::get_or_insert_packed`] takes it),
    /// refreshed, if held; inserts nothing.
    pub(crate) fn get_packed(&mut self, c: E::Key) -> Option<&mut E::Value> {
        let (set, tag) = self.set_of(c);
        let rank = self.find(set, tag, c)?;
        let way = self.refresh(set, rank);
        self.ways.get_mut(set * WAYS + way).map(E::value_mut)
    }

    /// Makes the key at `rank` of `set` its set's most recent; its way.
    #[inline]
    fn refresh(&mut self, set: usize, rank: usize) -> usize {
        let Some(m) = self.meta.get_mut(set) else {
            return 0;
        };
        let way = m.way(rank);
        m.make_first(rank);
        way
    }

    /// Prefetches the [`SetMeta`] of packed key `c`'s set only: what
    /// [`PackedMap::get_packed`] reads first, and all it reads for a key not held.
    #[inline]
    pub(crate) fn prefetch_packed_meta(&self, c: E::Key) {
        let (set, _) = self.set_of(c);
        if let Some(m) = self.meta.get(set..=set) {
            crate::prefetch::lines(m);
        }
    }

    /// [`PackedMap::get_or_insert`] of the key whose [`CompactKey::compact`] is `Some(c)`,
    /// for a caller that packs the key itself without building it (`c` must be what
    /// `compact()` gives for that key, or the key would be held twice).
    pub(crate) fn get_or_insert_packed(&mut self, c: E::Key) -> &mut E::Value {
        self.packed_entry(c)
    }

    /// Prefetches what [`PackedMap::get_or_insert`] of `key` will read: the set's
    /// [`SetMeta`] and entries (hints that do not wait for memory; which entry the key has
    /// is not known without reading the meta, and a dependent read would wait). A batch's
    /// keys are prefetched first, so that their cache misses overlap. Changes nothing; a
    /// wide (IPv6) key's map is not prefetched.
    #[inline]
    pub fn prefetch(&self, key: &K) {
        if let Some(c) = key.compact() {
            self.prefetch_packed(c);
        }
    }

    /// [`PackedMap::prefetch`] of a key packed by the caller (see
    /// [`PackedMap::get_or_insert_packed`]).
    #[inline]
    pub(crate) fn prefetch_packed(&self, c: E::Key) {
        let (set, _) = self.set_of(c);
        if let (Some(m), Some(entries)) = (
            self.meta.get(set..=set),
            self.ways.get(set * WAYS..set * WAYS + WAYS),
        ) {
            crate::prefetch::lines(m);
            crate::prefetch::lines(entries);
        }
    }

    /// `c`'s set and tag.
    #[inline]
    fn set_of(&self, c: E::Key) -> (usize, u8) {
        let hash = self.hasher.hash_one(c);
        // The high 32 bits scaled to `sets`: doubling `sets` splits each set in two.
        let set = (((hash >> 32) * self.sets as u64) >> 32) as usize;
        (set, hash as u8)
    }

    fn packed_entry(&mut self, c: E::Key) -> &mut E::Value {
        let (mut set, mut tag) = self.set_of(c);
        // The entries' lines requested before the meta is read, so that a miss on both
        // (a key not prefetched in a batch) costs one memory latency, not two in a row.
        if let Some(entries) = self.ways.get(set * WAYS..set * WAYS + WAYS) {
            crate::prefetch::lines(entries);
        }
        let found = self.find(set, tag, c);
        if found.is_none() {
            while self
                .meta
                .get(set)
                .is_some_and(|m| usize::from(m.fill) == WAYS)
                && self.sets < self.max_sets
            {
                self.resize(self.sets * 2);
                (set, tag) = self.set_of(c);
            }
        }
        let way = match found {
            Some(rank) => self.refresh(set, rank),
            None => self.insert(set, tag, E::new(c, E::Value::default())),
        };
        // `set` is below `sets` (see `set_of`), `way` below `WAYS`.
        self.ways[set * WAYS + way].value_mut()
    }

    /// The rank of `c` in `set`.
    #[inline]
    fn find(&self, set: usize, tag: u8, c: E::Key) -> Option<usize> {
        let m = self.meta.get(set)?;
        let entries = self.ways.get(set * WAYS..set * WAYS + WAYS)?;
        m.find(tag, |w| entries.get(w).is_some_and(|e| e.key() == c))
    }

    fn wide_entry(&mut self, key: &K) -> &mut E::Value {
        self.wide
            .value_or_insert_with(key, || key.clone(), E::Value::default)
    }

    /// Rebuilds the packed table with `sets` sets (twice as many: each set splits in two),
    /// each set's entries in the same order.
    fn resize(&mut self, sets: usize) {
        let fresh = (0..sets * WAYS)
            .map(|_| E::new(E::Key::default(), E::Value::default()))
            .collect();
        let old = std::mem::replace(&mut self.ways, fresh);
        let old_meta = std::mem::replace(&mut self.meta, vec![SetMeta::default(); sets]);
        self.sets = sets;
        self.packed_len = 0;
        let mut entries = old.into_iter();
        let mut set: Vec<E> = Vec::with_capacity(WAYS);
        for m in old_meta {
            set.clear();
            set.extend(entries.by_ref().take(WAYS));
            // Least recent first in, so that each ends up behind the more recent ones.
            for rank in (0..usize::from(m.fill)).rev() {
                if let Some(slot) = set.get_mut(m.way(rank)) {
                    let e = std::mem::replace(slot, E::new(E::Key::default(), E::Value::default()));
                    let (s, tag) = self.set_of(e.key());
                    self.insert(s, tag, e);
                }
            }
        }
    }

    /// Puts `e`, whose key `set` does not hold, in the set as its most recent; a full set's
    /// least recent entry is pushed out. The way it took.
    fn insert(&mut self, set: usize, tag: u8, e: E) -> usize {
        let Some(m) = self.meta.get_mut(set) else {
            debug_assert!(false, "set {set} of {}", self.sets);
            return 0;
        };
        let (way, pushed_out) = m.take(tag);
        if pushed_out {
            self.evicted += 1;
        } else {
            self.packed_len += 1;
        }
        if let Some(slot) = self.ways.get_mut(set * WAYS + way) {
            *slot = e;
        }
        way
    }

    /// The keys `c`'s set holds, most recent first (tests).
    #[cfg(test)]
    fn set_keys(&self, c: E::Key) -> (usize, Vec<E::Key>) {
        let (set, _) = self.set_of(c);
        let m = self.meta[set];
        let keys = (0..usize::from(m.fill))
            .map(|r| self.ways[set * WAYS + m.way(r)].key())
            .collect();
        (set, keys)
    }

    /// Whether `key` is held (tests; changes nothing).
    #[cfg(test)]
    fn contains(&self, key: &K) -> bool {
        match key.compact() {
            Some(c) => {
                let (set, tag) = self.set_of(c);
                self.find(set, tag, c).is_some()
            }
            None => false,
        }
    }
}

/// The one item of packed keys seen with one item so far: a scan table writes a key's
/// 64-byte [`WindowLine`] only once the key has a second distinct item within the window
/// (under a flood of new host pairs, nearly every key has one item and never gets a line),
/// and keeps the first in a 24-byte slot here. What a one-item key holds, and how a second
/// item finds it, is as in its [`DistinctWindow`] (see [`FirstSightings::observe`]).
/// Two-way set-associative: a new key takes an empty slot of its set, else the one seen
/// longer ago, whose key forgets its first item (counted in [`FirstSightings::replaced`]);
/// so two keys of one set can alternate without losing theirs, a third pushes one out.
/// Key 0 marks an empty slot and is never held.
#[derive(Debug)]
pub struct FirstSightings {
    /// Six words a set, three a slot: key, item, time (µs, as `i64` bits). Zeroed memory
    /// (pages touched, and counted in RSS, only once used), reserved whole at the start.
    words: Vec<u64>,
    hasher: DefaultHashBuilder,
    held: usize,
    replaced: u64,
}

/// Words of a [`FirstSightings`] set.
const FIRST_SET_WORDS: usize = 6;

impl FirstSightings {
    /// Room for `capacity` keys, rounded down to a power of two (at least two).
    pub fn new(capacity: usize) -> Self {
        let sets = 1usize << (capacity / 2).max(1).ilog2();
        FirstSightings {
            words: vec![0; FIRST_SET_WORDS * sets],
            hasher: DefaultHashBuilder::default(),
            held: 0,
            replaced: 0,
        }
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.held
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.held == 0
    }

    /// Keys whose slot a new key took so far.
    pub fn replaced(&self) -> u64 {
        self.replaced
    }

    /// The set `key` falls in (tests: keys of distinct sets never push one another out).
    #[cfg(test)]
    pub(crate) fn set_index(&self, key: u64) -> usize {
        self.set(key) / FIRST_SET_WORDS
    }

    /// The first word of `key`'s set.
    #[inline]
    fn set(&self, key: u64) -> usize {
        let sets = self.words.len() / FIRST_SET_WORDS;
        FIRST_SET_WORDS * ((self.hasher.hash_one(key) as usize) & (sets - 1))
    }

    /// Prefetches `key`'s set (see [`crate::prefetch::lines`]).
    #[inline]
    pub fn prefetch(&self, key: u64) {
        let i = self.set(key);
        if let Some(w) = self.words.get(i..i + FIRST_SET_WORDS) {
            crate::prefetch::lines(w);
        }
    }

    /// Records `item` seen for `key` (not 0) at `ts_us`, as a one-item [`DistinctWindow`]
    /// would: the same item again keeps the later time (or the new one when the old is
    /// `window_us` old or more); another item replaces an item that old. Another item while
    /// the first is recent is the key's second: its slot is emptied and the first item
    /// returned with its time, for the caller's window table.
    pub(crate) fn observe(
        &mut self,
        key: u64,
        item: u64,
        ts_us: i64,
        window_us: i64,
    ) -> Option<(u64, i64)> {
        debug_assert!(key != 0, "key 0 marks an empty slot");
        let i = self.set(key);
        let set = self.words.get_mut(i..i + FIRST_SET_WORDS)?;
        let (a, b) = set.split_at_mut(3);
        let w = if a[0] == key {
            a
        } else if b[0] == key {
            b
        } else {
            // New: an empty slot, else the one seen longer ago.
            let w = if a[0] == 0 || (b[0] != 0 && (a[2] as i64) <= (b[2] as i64)) {
                a
            } else {
                b
            };
            if w[0] == 0 {
                self.held += 1;
            } else {
                self.replaced += 1;
            }
            w.copy_from_slice(&[key, item, ts_us as u64]);
            return None;
        };
        let (first, seen) = (w[1], w[2] as i64);
        let recent = ts_us.saturating_sub(seen) < window_us;
        if item == first {
            w[2] = if recent { seen.max(ts_us) } else { ts_us } as u64;
            return None;
        }
        if !recent {
            w[1] = item;
            w[2] = ts_us as u64;
            return None;
        }
        w[0] = 0;
        self.held -= 1;
        Some((first, seen))
    }
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
    use hashbrown::HashMap;

    /// Two keys of one set keep their first items while they alternate; a third takes the
    /// slot of the one seen longer ago; a second item within the window hands the first
    /// back and frees the slot; the counts follow.
    #[test]
    fn first_sightings_sets_of_two() {
        let mut f = FirstSightings::new(64);
        let set = f.set_index(1);
        let same: Vec<u64> = (2..100_000u64)
            .filter(|&k| f.set_index(k) == set)
            .take(2)
            .collect();
        let (a, b, c) = (1, same[0], same[1]);
        let w = 1_000;
        assert_eq!(f.observe(a, 7, 0, w), None);
        assert_eq!(f.observe(b, 8, 10, w), None);
        for t in 0..5 {
            assert_eq!(f.observe(a, 7, 20 + t, w), None, "a's item is kept");
            assert_eq!(f.observe(b, 8, 30 + t, w), None, "b's item is kept");
        }
        assert_eq!((f.len(), f.replaced()), (2, 0));
        // a was seen last at 24, b at 34: c takes a's slot.
        assert_eq!(f.observe(c, 9, 40, w), None);
        assert_eq!((f.len(), f.replaced()), (2, 1));
        assert_eq!(f.observe(b, 5, 50, w), Some((8, 34)), "b's second item");
        assert_eq!(f.len(), 1);
        assert_eq!(
            f.observe(a, 6, 60, w),
            None,
            "a starts again: its first was forgotten"
        );
        assert_eq!(f.observe(a, 7, 70, w), Some((6, 60)));
        assert_eq!(
            f.observe(c, 9, 2_000, w),
            None,
            "the same item, the window passed"
        );
        assert_eq!(f.observe(c, 1, 2_500, w), Some((9, 2_000)));
        assert!(f.is_empty());
    }

    #[test]
    fn map_is_bounded_and_keeps_recent_keys() {
        let mut m: BoundedMap<u32, u32> = BoundedMap::new(100);
        for i in 0..10_000 {
            *m.value_or_insert_with(&i, || i, || 0) += 1;
            assert!(m.len() <= 100);
        }
        assert!(m.evicted() >= 9_900);
        assert!(m.get_mut(&9_999).is_some());
        assert!(m.get_mut(&0).is_none());
    }

    #[test]
    fn touched_keys_survive_a_flood() {
        let mut m: BoundedMap<u32, u32> = BoundedMap::new(64);
        m.value_or_insert_with(&7, || 7, || 1);
        for i in 1000..11_000 {
            m.value_or_insert_with(&i, || i, || 0);
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
    fn prefetch_changes_nothing() {
        let v4 = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(i));
        let v6 = |i: u32| IpAddr::from(std::net::Ipv6Addr::from(u128::from(i) << 64));
        // Room to grow: nothing is pushed out before the table reaches its bound.
        let mut w: WindowMap<(IpAddr, IpAddr)> = WindowMap::new(1024);
        for i in 0..6 {
            w.get_or_insert(&(v4(i), v4(1))).observe(1, 0, 10, 4);
        }
        let (len, evicted) = (w.len(), w.evicted());
        // Held or not, packed or wide.
        for key in [
            (v4(5), v4(1)),
            (v4(0), v4(1)),
            (v4(9), v4(1)),
            (v6(1), v4(1)),
        ] {
            w.prefetch(&key);
        }
        assert_eq!((w.len(), w.evicted()), (len, evicted));
        assert!(w.contains(&(v4(5), v4(1))) && w.contains(&(v4(0), v4(1))));
        assert!(!w.contains(&(v4(9), v4(1))) && !w.contains(&(v6(1), v4(1))));
    }

    #[test]
    fn window_map_is_lru_per_set() {
        // The same keys through a WindowMap and a model (per set, most recent first, at most
        // WAYS keys; wide keys in a BoundedMap), IPv4 and IPv6 mixed: the same alerts, the
        // same number held and pushed out after every step. 64 entries: 16 sets, the first
        // size, so the table does not grow.
        let v4 = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(i));
        let v6 = |i: u32| IpAddr::from(std::net::Ipv6Addr::from(u128::from(i) << 64));
        let mut w: WindowMap<(IpAddr, IpAddr)> = WindowMap::new(64);
        assert_eq!(w.sets, w.max_sets);
        let mut sets: HashMap<usize, Vec<u64>> = HashMap::new();
        let mut windows: HashMap<u64, DistinctWindow> = HashMap::new();
        let mut wide: BoundedMap<(IpAddr, IpAddr), DistinctWindow> = BoundedMap::new(64);
        let mut evicted = 0;
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
            let want = match key.compact() {
                Some(c) => {
                    let set = sets.entry(w.set_of(c).0 * WAYS).or_default();
                    if let Some(i) = set.iter().position(|&k| k == c) {
                        set.remove(i);
                    }
                    set.insert(0, c);
                    if set.len() > WAYS {
                        let out = set.pop().unwrap();
                        windows.remove(&out);
                        evicted += 1;
                    }
                    windows.entry(c).or_default().observe(item, step, 1_000, 4)
                }
                None => wide
                    .value_or_insert_with(&key, || key, DistinctWindow::default)
                    .observe(item, step, 1_000, 4),
            };
            let got = w.get_or_insert(&key).observe(item, step, 1_000, 4);
            assert_eq!(got, want, "step {step}");
            if let Some(c) = key.compact() {
                // The set holds the model's keys, in its order.
                let (set, held) = w.set_keys(c);
                assert_eq!(Some(&held), sets.get(&(set * WAYS)), "step {step}");
            }
            assert_eq!(w.len(), windows.len() + wide.len(), "step {step}");
            assert_eq!(w.evicted(), evicted + wide.evicted(), "step {step}");
        }
        assert!(evicted > 0);
        // Compact keys: IPv4 pairs only, distinct for distinct pairs.
        assert_eq!((v4(1), v4(2)).compact(), Some(1 << 32 | 2));
        assert_eq!((v4(1), v6(2)).compact(), None);
        assert_eq!((v6(1), 80u16).compact(), None);
        assert_ne!((v4(1), 2u16).compact(), (v4(2), 1u16).compact());
    }

    #[test]
    fn a_key_used_before_its_set_fills_survives_a_flood() {
        // Used again after every WAYS - 1 new keys: never the least recent of a full set.
        let v4 = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(i));
        let mut w: WindowMap<(IpAddr, IpAddr)> = WindowMap::new(64);
        let kept = (v4(7), v4(7));
        w.get_or_insert(&kept).observe(1, 0, i64::MAX, 100);
        for i in 0..30_000u32 {
            w.get_or_insert(&(v4(1000 + i), v4(1)))
                .observe(1, 0, i64::MAX, 100);
            if i % (WAYS as u32 - 1) == 0 {
                assert_eq!(w.get_or_insert(&kept).len(), 1, "after {i} new keys");
            }
        }
        assert!(w.evicted() >= 29_000);
        assert!(w.len() <= 64);
    }

    #[test]
    fn growing_keeps_each_sets_order() {
        // Five keys of one first set, used oldest to newest: the fifth grows the table.
        let v4 = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(i));
        let mut w: WindowMap<(IpAddr, IpAddr)> = WindowMap::new(1 << 16);
        let packed = |i: u32| (v4(i), v4(1)).compact().unwrap_or_default();
        let first = w.set_of(packed(0)).0;
        let keys: Vec<u32> = (0..)
            .filter(|&i| w.set_of(packed(i)).0 == first)
            .take(WAYS + 1)
            .collect();
        // The second key used again before the fifth: order of use is not order of arrival.
        for &i in &keys[..WAYS] {
            w.get_or_insert(&(v4(i), v4(1)));
        }
        w.get_or_insert(&(v4(keys[1]), v4(1)));
        assert_eq!(w.sets, FIRST_SETS);
        w.get_or_insert(&(v4(keys[WAYS]), v4(1)));
        assert!(w.sets > FIRST_SETS);
        assert_eq!((w.len(), w.evicted()), (WAYS + 1, 0));
        let mut used: Vec<u32> = keys.clone();
        let second = used.remove(1);
        used.insert(WAYS - 1, second);
        // Every set holds its keys most recently used first.
        for &i in &keys {
            let (set, held) = w.set_keys(packed(i));
            let want: Vec<u64> = used
                .iter()
                .rev()
                .map(|&k| packed(k))
                .filter(|&c| w.set_of(c).0 == set)
                .collect();
            assert_eq!(held, want);
        }
    }

    #[test]
    fn set_meta_keeps_the_order_of_use() {
        // SetMeta against a list of ways, most recent first: random uses of held ways and new
        // keys, every tag the same (only the key comparison tells ways apart).
        let mut rng = 11u64;
        for _ in 0..200 {
            let mut m = SetMeta::default();
            let mut model: Vec<usize> = Vec::new();
            for _ in 0..50 {
                rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let r = (rng >> 33) as usize;
                if !model.is_empty() && !r.is_multiple_of(3) {
                    let way = model[r % model.len()];
                    let rank = m.find(7, |w| w == way).expect("held");
                    assert_eq!(rank, model.iter().position(|&w| w == way).unwrap());
                    m.make_first(rank);
                    model.retain(|&w| w != way);
                    model.insert(0, way);
                } else {
                    let (way, pushed_out) = m.take(7);
                    assert_eq!(pushed_out, model.len() == WAYS);
                    if pushed_out {
                        assert_eq!(model.pop(), Some(way));
                    } else {
                        assert_eq!(way, model.len());
                    }
                    model.insert(0, way);
                }
                assert_eq!(usize::from(m.fill), model.len());
                let ranks: Vec<usize> = (0..model.len()).map(|r| m.way(r)).collect();
                assert_eq!(ranks, model);
                assert!(m.tags[..model.len()].iter().all(|&t| t == 7));
                assert_eq!(m.find(8, |_| true), None);
            }
        }
    }

    #[test]
    fn a_bound_between_powers_of_two_is_rounded_down() {
        // 1,000 keys: 250 sets, rounded down to 128; every step a doubling, nothing pushed
        // out before the last.
        let v4 = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(i));
        let mut w: WindowMap<(IpAddr, IpAddr)> = WindowMap::new(1000);
        let mut i = 0u32;
        while w.evicted() == 0 {
            w.get_or_insert(&(v4(i), v4(1)));
            i += 1;
        }
        assert_eq!(w.sets, 128);
        assert_eq!(w.len() as u32, i - 1);
        for j in i..i + 10_000 {
            w.get_or_insert(&(v4(j), v4(1)));
            assert!(w.len() <= 512);
        }
    }

    #[test]
    fn the_table_grows_before_it_pushes_out() {
        let v4 = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(i));
        let mut w: WindowMap<(IpAddr, IpAddr)> = WindowMap::new(4096);
        assert_eq!(w.sets, FIRST_SETS);
        let mut i = 0u32;
        while w.evicted() == 0 {
            w.get_or_insert(&(v4(i), v4(1)))
                .observe(u64::from(i), 0, i64::MAX, 100);
            i += 1;
            assert!(w.len() <= 4096);
        }
        // The first key pushed out was pushed out at the bound: every other one is held.
        assert_eq!(w.sets, 1024);
        assert_eq!(w.len() as u32, i - 1);
        let held = (0..i).filter(|&k| w.contains(&(v4(k), v4(1)))).count();
        assert_eq!(held as u32, i - 1);
    }
}
