//! The IPv4 trail tables: bucketized two-choice (cuckoo) hash tables of 64-byte buckets.
//!
//! IPv4 address trails and IPv4 `IP:port` trails (Maltrail's static tree: ~23,000 and
//! ~280,000) live in two such tables. The layout is also the kernel's: the sensor copies
//! the buckets as they are into the XDP program's array maps (one bucket per element), and
//! a compiled set stores them ready-made (`compiled`), so neither opening a set nor filling
//! the kernel builds anything per entry, and userspace looks up in place in the mapping.
//!
//! A bucket is 64 bytes: [`BUCKET_SLOTS`] slots of three `u32` words (the key's low and
//! high halves, the label) and 4 zero bytes. Five slots of 12 bytes rather than four of 16:
//! Maltrail's ~280,000 IPv4 `IP:port` trails fit 2^16 buckets (85% full) instead of 2^17,
//! which halves what a fill writes. A key is [`v4_key`] or [`ipport_key`]: the address's
//! network-order bytes read as a little-endian `u32` (what the XDP program loads from the
//! packet, no byte swap) in the low half, the port and a kind tag (bit 48) in the high
//! half, so a used slot's high word is never 0 and an empty slot (all zero) matches no
//! key. A key lives in one of two
//! buckets, [`bucket`] with [`HASH`]`[0]` or `[1]` (multiply-shift: the top `bits` bits of
//! `key * constant`); a table has `2^bits` buckets, `bits` ≥ 1. A lookup reads at most two
//! buckets; an insertion that finds both full moves a resident to its other bucket (up to
//! [`MAX_KICKS`] times) and grows the table when that fails. Tables are kept at most
//! [`MAX_LOAD_PERCENT`] full, where insertions rarely need more than a few moves.

use std::sync::Arc;

use hashbrown::HashMap;
use xtrail_common::trail_table;

/// Slots per bucket. The layout, hash constants and key kinds are the XDP program's
/// (`xtrail_common::trail_table`, the one definition).
pub const BUCKET_SLOTS: usize = trail_table::SLOTS;
/// A bucket: per slot, the key's low and high words and the label; one zero word.
pub use trail_table::Bucket;
/// Bytes per bucket.
pub const BUCKET_BYTES: usize = std::mem::size_of::<Bucket>();
/// The two multiply-shift constants (odd), kind tags of IPv4 address and `IP:port` keys.
pub use trail_table::{HASH, KIND_IP, KIND_PORT};
/// Largest table: 2^30 buckets.
pub const MAX_BITS: u32 = 30;
/// Most moves one insertion makes before the table grows.
pub const MAX_KICKS: usize = 500;
/// Fill limit: a table grows before more than this share of its slots is used.
pub const MAX_LOAD_PERCENT: usize = 90;

/// Key of an IPv4 address trail (`addr` in network order).
#[inline]
pub fn v4_key(addr: [u8; 4]) -> u64 {
    trail_table::v4_key(u32::from_le_bytes(addr))
}

/// Key of an IPv4 `IP:port` trail (`addr` in network order, `port` in host order).
#[inline]
pub fn ipport_key(addr: [u8; 4], port: u16) -> u64 {
    trail_table::ipport_key(u32::from_le_bytes(addr), port)
}

/// The address of a key (network order).
#[inline]
pub fn key_addr(key: u64) -> [u8; 4] {
    (key as u32).to_le_bytes()
}

/// The port of an `IP:port` key.
#[inline]
pub fn key_port(key: u64) -> u16 {
    (key >> 32) as u16
}

/// Trails in a bucket.
pub fn bucket_used(b: &Bucket) -> usize {
    (0..BUCKET_SLOTS).filter(|s| b[3 * s + 1] != 0).count()
}

/// The label of `key` if `b` holds it.
#[inline]
pub fn bucket_label(b: &Bucket, key: u64) -> Option<u32> {
    let (lo, hi) = (key as u32, (key >> 32) as u32);
    (0..BUCKET_SLOTS)
        .find(|s| b[3 * s] == lo && b[3 * s + 1] == hi)
        .map(|s| b[3 * s + 2])
}

fn slot_key(b: &Bucket, s: usize) -> u64 {
    u64::from(b[3 * s]) | (u64::from(b[3 * s + 1]) << 32)
}

fn set_slot(b: &mut Bucket, s: usize, key: u64, label: u32) {
    b[3 * s] = key as u32;
    b[3 * s + 1] = (key >> 32) as u32;
    b[3 * s + 2] = label;
}

/// Bucket `which` (0 or 1) of `key` in a table of `2^bits` buckets (`1 ≤ bits ≤ 63`).
#[inline]
pub fn bucket(key: u64, bits: u32, which: usize) -> usize {
    trail_table::bucket(key, bits.clamp(1, 63), which) as usize
}

/// The smallest `bits` whose table holds `n` keys within [`MAX_LOAD_PERCENT`].
pub fn bits_for(n: usize) -> u32 {
    let slots_needed = n.saturating_mul(100).div_ceil(MAX_LOAD_PERCENT);
    let buckets = slots_needed.div_ceil(BUCKET_SLOTS).max(2);
    buckets.next_power_of_two().trailing_zeros().min(MAX_BITS)
}

/// Drops this process's resident pages of the whole pages inside `range` of a read-only
/// file mapping (the file stays in the page cache; later reads fault back in only the pages
/// they touch). Advisory: errors are ignored.
pub(crate) fn release_mapped(map: &memmap2::Mmap, range: std::ops::Range<usize>) {
    let page = 4096;
    let start = range.start.div_ceil(page) * page;
    let end = range.end.min(map.len()) / page * page;
    if end > start {
        // SAFETY: a private, read-only file mapping: MADV_DONTNEED only drops this
        // process's page table entries; later reads fault the same file bytes back in.
        let _ = unsafe {
            map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
        };
    }
}

/// A table that failed to hold its keys (more than 2^[`MAX_BITS`] buckets' worth).
#[derive(Debug, thiserror::Error)]
#[error("IPv4 trail table full ({0} keys)")]
pub struct TableFull(pub usize);

/// Where a table's buckets are.
#[derive(Clone)]
enum Store {
    Owned(Vec<Bucket>),
    /// Buckets inside a compiled set's mapping (`range` is 8-aligned, whole buckets).
    Mapped {
        map: Arc<memmap2::Mmap>,
        range: std::ops::Range<usize>,
    },
}

/// A cuckoo table from keys ([`v4_key`], [`ipport_key`]) to labels.
#[derive(Clone)]
pub struct CuckooTable {
    store: Store,
    bits: u32,
    len: usize,
    /// State of the pseudo-random choice of the slot to move (deterministic, so equal
    /// insertions give equal tables).
    rng: u64,
}

impl std::fmt::Debug for CuckooTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CuckooTable")
            .field("bits", &self.bits)
            .field("len", &self.len)
            .field("mapped", &matches!(self.store, Store::Mapped { .. }))
            .finish()
    }
}

impl Default for CuckooTable {
    fn default() -> Self {
        CuckooTable::with_bits(1)
    }
}

impl CuckooTable {
    /// An empty table of `2^bits` buckets.
    pub fn with_bits(bits: u32) -> CuckooTable {
        let bits = bits.clamp(1, MAX_BITS);
        CuckooTable {
            store: Store::Owned(vec![[0; 16]; 1 << bits]),
            bits,
            len: 0,
            rng: 0x2545_F491_4F6C_DD1D,
        }
    }

    /// A table of `entries` (later duplicates replace earlier ones), sized by [`bits_for`].
    pub fn build(entries: impl ExactSizeIterator<Item = (u64, u32)>) -> CuckooTable {
        let mut t = CuckooTable::with_bits(bits_for(entries.len()));
        for (k, l) in entries {
            t.insert(k, l);
        }
        t
    }

    /// A table over buckets in a mapping: `range` (8-aligned) holds `2^bits` buckets with
    /// `len` keys. Refused when the sizes disagree.
    pub fn mapped(
        map: Arc<memmap2::Mmap>,
        range: std::ops::Range<usize>,
        bits: u32,
        len: usize,
    ) -> Option<CuckooTable> {
        let ok = (1..=MAX_BITS).contains(&bits)
            && range.end <= map.len()
            && range.len() == BUCKET_BYTES << bits
            && range.start.is_multiple_of(4)
            && map.as_ptr().align_offset(4) == 0
            && len <= BUCKET_SLOTS << bits;
        ok.then_some(CuckooTable {
            store: Store::Mapped { map, range },
            bits,
            len,
            rng: 0x2545_F491_4F6C_DD1D,
        })
    }

    /// `log2` of the bucket count.
    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table holds no key.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The buckets (`2^bits` of them), as the kernel maps hold them.
    pub fn buckets(&self) -> &[Bucket] {
        match &self.store {
            Store::Owned(v) => v,
            Store::Mapped { map, range } => {
                let b = &map[range.clone()];
                // SAFETY: any bit pattern is a valid u32; `mapped` checked that the mapping
                // and the range start are 4-aligned and that the range is whole buckets, so
                // align_to yields everything as the middle part.
                let (_, mid, _) = unsafe { b.align_to::<Bucket>() };
                mid
            }
        }
    }

    /// The buckets as bytes (what a compiled set stores).
    pub fn bucket_bytes(&self) -> &[u8] {
        let b = self.buckets();
        // SAFETY: a slice of u32 arrays viewed as bytes: same memory, alignment 1.
        unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<u8>(), std::mem::size_of_val(b)) }
    }

    /// Drops this process's resident pages of a mapped table (the kernel copy was filled
    /// from them); later lookups fault back in only the pages they touch. No-op when owned.
    pub fn release_pages(&self) {
        if let Store::Mapped { map, range } = &self.store {
            release_mapped(map, range.clone());
        }
    }

    /// The label of `key`.
    #[inline]
    pub fn get(&self, key: u64) -> Option<u32> {
        if key >> 32 == 0 {
            return None;
        }
        let b = self.buckets();
        (0..2).find_map(|which| bucket_label(b.get(bucket(key, self.bits, which))?, key))
    }

    /// Whether `key` is in the table.
    pub fn contains(&self, key: u64) -> bool {
        self.get(key).is_some()
    }

    /// Every (key, label), in bucket order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.buckets().iter().flat_map(|b| {
            (0..BUCKET_SLOTS)
                .filter(move |s| b[3 * s + 1] != 0)
                .map(move |s| (slot_key(b, s), b[3 * s + 2]))
        })
    }

    fn owned(&mut self) -> &mut Vec<Bucket> {
        if let Store::Mapped { .. } = self.store {
            self.store = Store::Owned(self.buckets().to_vec());
        }
        match &mut self.store {
            Store::Owned(v) => v,
            Store::Mapped { .. } => unreachable!("converted above"),
        }
    }

    /// Sets the label of `key` (a key's high half is never 0: such a key is ignored);
    /// returns the one it replaced. A mapped table is copied first.
    pub fn insert(&mut self, key: u64, label: u32) -> Option<u32> {
        if key >> 32 == 0 {
            return None;
        }
        let bits = self.bits;
        let buckets = self.owned();
        for which in 0..2 {
            let b = &mut buckets[bucket(key, bits, which)];
            for s in 0..BUCKET_SLOTS {
                if slot_key(b, s) == key {
                    let old = b[3 * s + 2];
                    b[3 * s + 2] = label;
                    return Some(old);
                }
            }
        }
        if (self.len + 1) * 100 > (BUCKET_SLOTS << self.bits) * MAX_LOAD_PERCENT {
            self.grow();
        }
        let mut homeless = (key, label);
        loop {
            match self.place(homeless) {
                None => break,
                Some(h) => {
                    homeless = h;
                    self.grow();
                }
            }
        }
        self.len += 1;
        None
    }

    /// Puts a new key in one of its buckets, moving residents; returns the key left without
    /// a slot after [`MAX_KICKS`] moves.
    fn place(&mut self, (mut key, mut label): (u64, u32)) -> Option<(u64, u32)> {
        let bits = self.bits;
        let mut rng = self.rng;
        let buckets = self.owned();
        let free = |b: &Bucket| (0..BUCKET_SLOTS).find(|s| b[3 * s + 1] == 0);
        let (b0, b1) = (bucket(key, bits, 0), bucket(key, bits, 1));
        // The emptier of the two buckets: keeps them balanced.
        let mut at = if bucket_used(&buckets[b1]) < bucket_used(&buckets[b0]) {
            b1
        } else {
            b0
        };
        for _ in 0..MAX_KICKS {
            if let Some(s) = free(&buckets[at]) {
                set_slot(&mut buckets[at], s, key, label);
                self.rng = rng;
                return None;
            }
            // xorshift64: which resident moves.
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let s = (rng % BUCKET_SLOTS as u64) as usize;
            let b = &mut buckets[at];
            let (k, l) = (slot_key(b, s), b[3 * s + 2]);
            set_slot(b, s, key, label);
            (key, label) = (k, l);
            let (c0, c1) = (bucket(key, bits, 0), bucket(key, bits, 1));
            at = if at == c0 { c1 } else { c0 };
        }
        self.rng = rng;
        Some((key, label))
    }

    /// Doubles the bucket count and re-places every key.
    fn grow(&mut self) {
        let old: Vec<(u64, u32)> = self.iter().collect();
        let mut bits = self.bits;
        loop {
            bits = (bits + 1).min(MAX_BITS);
            self.store = Store::Owned(vec![[0; 16]; 1 << bits]);
            self.bits = bits;
            if old.iter().all(|e| self.place(*e).is_none()) || bits == MAX_BITS {
                return;
            }
        }
    }

    /// Bytes of anonymous memory the table holds (0 when mapped).
    pub fn heap_bytes(&self) -> usize {
        match &self.store {
            Store::Owned(v) => v.len() * BUCKET_BYTES,
            Store::Mapped { .. } => 0,
        }
    }
}

impl PartialEq for CuckooTable {
    /// Same keys with the same labels (layouts may differ).
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().all(|(k, l)| other.get(k) == Some(l))
    }
}

/// An IPv4-mapped IPv6 address's IPv4 part.
fn mapped_v4(addr: &[u8; 16]) -> Option<[u8; 4]> {
    (addr[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff])
        .then(|| [addr[12], addr[13], addr[14], addr[15]])
}

/// IPv4 address trails (`IpTrails::v4`): a [`CuckooTable`] of [`v4_key`]s with the map
/// calls callers use (`insert`, `get`, `len`, `iter` of owned `(address, label)`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct V4Trails {
    table: CuckooTable,
}

impl V4Trails {
    /// Trails of a ready-made table.
    pub fn from_table(table: CuckooTable) -> V4Trails {
        V4Trails { table }
    }

    /// The table (what the kernel map and a compiled set hold).
    pub fn table(&self) -> &CuckooTable {
        &self.table
    }

    /// Sets the label of `addr` (network order); returns the one it replaced.
    pub fn insert(&mut self, addr: [u8; 4], label: u32) -> Option<u32> {
        self.table.insert(v4_key(addr), label)
    }

    /// The label of `addr`.
    #[inline]
    pub fn get(&self, addr: &[u8; 4]) -> Option<u32> {
        self.table.get(v4_key(*addr))
    }

    /// Whether `addr` is a trail.
    pub fn contains_key(&self, addr: &[u8; 4]) -> bool {
        self.get(addr).is_some()
    }

    /// Number of trails.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Every (address, label).
    pub fn iter(&self) -> impl Iterator<Item = ([u8; 4], u32)> + '_ {
        self.table.iter().map(|(k, l)| (key_addr(k), l))
    }

    /// Every address.
    pub fn keys(&self) -> impl Iterator<Item = [u8; 4]> + '_ {
        self.iter().map(|e| e.0)
    }

    /// Every label.
    pub fn values(&self) -> impl Iterator<Item = u32> + '_ {
        self.iter().map(|e| e.1)
    }
}

impl<'a> IntoIterator for &'a V4Trails {
    type Item = ([u8; 4], u32);
    type IntoIter = Box<dyn Iterator<Item = ([u8; 4], u32)> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

/// `IP:port` trails (`IpTrails::ipport`), keyed by (address, port) with IPv4 addresses
/// v4-mapped: IPv4 ones in a [`CuckooTable`] of [`ipport_key`]s, IPv6 ones (a few) in a
/// hash map.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IpPortTrails {
    v4: CuckooTable,
    v6: HashMap<([u8; 16], u16), u32>,
}

impl IpPortTrails {
    /// Trails of a ready-made IPv4 table and the IPv6 entries.
    pub fn from_parts(v4: CuckooTable, v6: HashMap<([u8; 16], u16), u32>) -> IpPortTrails {
        IpPortTrails { v4, v6 }
    }

    /// The IPv4 table (what the kernel map and a compiled set hold).
    pub fn v4_table(&self) -> &CuckooTable {
        &self.v4
    }

    /// The IPv6 trails.
    pub fn v6(&self) -> &HashMap<([u8; 16], u16), u32> {
        &self.v6
    }

    /// Sets the label of (address, port); returns the one it replaced.
    pub fn insert(&mut self, key: ([u8; 16], u16), label: u32) -> Option<u32> {
        match mapped_v4(&key.0) {
            Some(a) => self.v4.insert(ipport_key(a, key.1), label),
            None => self.v6.insert(key, label),
        }
    }

    /// The label of (address, port).
    #[inline]
    pub fn get(&self, key: &([u8; 16], u16)) -> Option<u32> {
        match mapped_v4(&key.0) {
            Some(a) => self.v4.get(ipport_key(a, key.1)),
            None => self.v6.get(key).copied(),
        }
    }

    /// Label of an IPv4 (address, port) trail, without the IPv4-mapped key.
    #[inline]
    pub fn get_v4(&self, addr: [u8; 4], port: u16) -> Option<u32> {
        self.v4.get(ipport_key(addr, port))
    }

    /// Whether (address, port) is a trail.
    pub fn contains_key(&self, key: &([u8; 16], u16)) -> bool {
        self.get(key).is_some()
    }

    /// Number of trails.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every ((address, port), label): IPv4 ones first.
    pub fn iter(&self) -> impl Iterator<Item = (([u8; 16], u16), u32)> + '_ {
        self.v4
            .iter()
            .map(|(k, l)| {
                let a = key_addr(k);
                let mut m = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0];
                m[12..].copy_from_slice(&a);
                ((m, key_port(k)), l)
            })
            .chain(self.v6.iter().map(|(k, l)| (*k, *l)))
    }

    /// Every (address, port).
    pub fn keys(&self) -> impl Iterator<Item = ([u8; 16], u16)> + '_ {
        self.iter().map(|e| e.0)
    }

    /// Every label.
    pub fn values(&self) -> impl Iterator<Item = u32> + '_ {
        self.iter().map(|e| e.1)
    }
}

impl<'a> IntoIterator for &'a IpPortTrails {
    type Item = (([u8; 16], u16), u32);
    type IntoIter = Box<dyn Iterator<Item = (([u8; 16], u16), u32)> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: u32) -> impl ExactSizeIterator<Item = (u64, u32)> {
        (0..n).map(|i| (ipport_key((i * 7919).to_be_bytes(), (i % 50_000) as u16), i))
    }

    #[test]
    fn every_key_found_absent_keys_not() {
        let t = CuckooTable::build(keys(100_000));
        assert_eq!(t.len(), 100_000);
        assert_eq!(t.bits(), bits_for(100_000));
        for (k, l) in keys(100_000) {
            assert_eq!(t.get(k), Some(l), "{k:x}");
        }
        for i in 100_000..200_000u32 {
            let k = ipport_key((i * 7919).to_be_bytes(), (i % 50_000) as u16);
            assert_eq!(t.get(k), None);
            assert_eq!(t.get(v4_key((i * 7919).to_be_bytes())), None);
        }
        assert_eq!(t.get(0), None);
        assert_eq!(t.iter().count(), 100_000);
        // Deterministic: equal input, equal bytes.
        assert_eq!(
            t.bucket_bytes(),
            CuckooTable::build(keys(100_000)).bucket_bytes()
        );
    }

    #[test]
    fn full_buckets_displace_and_grow() {
        // Keys that share both their buckets: the two buckets hold 10, so the 11th and 12th
        // can only go in after residents move or the table grows.
        let mut t = CuckooTable::with_bits(4);
        let mut same = Vec::new();
        let mut i = 0u32;
        while same.len() < 12 {
            let k = v4_key(i.to_be_bytes());
            let (a, b) = (bucket(k, 4, 0), bucket(k, 4, 1));
            if (a, b) == (3, 5) || (a, b) == (5, 3) {
                same.push(k);
            }
            i += 1;
        }
        for (n, k) in same.iter().enumerate() {
            assert_eq!(t.insert(*k, n as u32), None);
        }
        for (n, k) in same.iter().enumerate() {
            assert_eq!(t.get(*k), Some(n as u32));
        }
        assert!(
            t.bits() > 4,
            "12 keys on one bucket pair fit only after growing"
        );
        // Replacing a label keeps the count.
        assert_eq!(t.insert(same[0], 99), Some(0));
        assert_eq!(t.len(), 12);
        // Growth: from 2 buckets to what 10,000 keys need.
        let mut t = CuckooTable::default();
        for (k, l) in keys(10_000) {
            t.insert(k, l);
        }
        assert_eq!(t.len(), 10_000);
        assert!(t.bits() >= bits_for(10_000), "{}", t.bits());
        assert!(keys(10_000).all(|(k, l)| t.get(k) == Some(l)));
        assert_eq!(t, CuckooTable::build(keys(10_000)));
    }

    #[test]
    fn keys_round_trip() {
        let k = ipport_key([6, 6, 6, 7], 8443);
        assert_eq!(key_addr(k), [6, 6, 6, 7]);
        assert_eq!(key_port(k), 8443);
        assert_ne!(v4_key([0, 0, 0, 0]), 0);
        assert_ne!(v4_key([1, 2, 3, 4]), ipport_key([1, 2, 3, 4], 0));
        assert_eq!(bits_for(0), 1);
        assert_eq!(bits_for(22_733), 13);
        assert_eq!(bits_for(279_340), 16);
    }
}
