//! A compact string → label hash table: one byte arena plus an open-addressing index.
//!
//! Why not `HashMap<String, LabelId>`: 1.4M heap strings cost a 24-byte `String` header, an
//! allocation (with allocator rounding) and a 32-byte bucket each, about 3x the text. Here a
//! trail is one record in a single arena (`[label: u32 LE][len: u16 LE][bytes]`), and the
//! index is a power-of-two array of `u64` slots (linear probing, load factor at most 0.7),
//! each the record's arena offset + 1 (low 32 bits) and the top 32 bits of its key's hash: a
//! probe reads one cache line, and a mismatch almost never touches the arena.
//!
//! Keys are hashed right to left (see [`KeyHasher`]) so a caller can hash every suffix of a
//! name in one backwards pass, and can hash `host + path` without concatenating them.

use std::fmt;

use super::LabelId;

/// Bytes in front of each key in the arena: label (u32 LE) and key length (u16 LE).
const HEADER: usize = 6;
/// Longest key a record can hold.
pub(crate) const MAX_KEY_LEN: usize = u16::MAX as usize;

/// Right-to-left FNV-1a with a murmur3 finaliser.
///
/// Feed bytes from the end of the key towards its start; [`KeyHasher::finish`] can be taken
/// at any point, which gives the hash of every suffix seen so far in one pass.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeyHasher(u64);

impl KeyHasher {
    /// A hasher that has seen nothing.
    #[inline]
    pub(crate) const fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    /// Feeds one byte (the next one towards the start of the key).
    #[inline]
    pub(crate) fn push(&mut self, b: u8) {
        self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }

    /// Feeds `bytes` back to front, i.e. as if `bytes` were prepended to what was fed so far.
    #[inline]
    pub(crate) fn prepend(&mut self, bytes: &[u8]) {
        for &b in bytes.iter().rev() {
            self.push(b);
        }
    }

    /// The hash of the bytes fed so far.
    #[inline]
    pub(crate) fn finish(self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }

    /// Hash of a whole key.
    #[inline]
    pub(crate) fn hash(key: &[u8]) -> u64 {
        let mut h = Self::new();
        h.prepend(key);
        h.finish()
    }
}

/// Result of [`StrTable::insert`].
pub(crate) enum Inserted {
    /// The key was new.
    New,
    /// The key was already there, at this record offset, with this label.
    Existing { record: u32, label: LabelId },
    /// The arena is full (more than 4 GiB) or the key is longer than [`MAX_KEY_LEN`].
    Full,
}

/// Read-only bytes a table can live in (a memory-mapped compiled trail set).
pub(crate) type SharedBytes = std::sync::Arc<dyn AsRef<[u8]> + Send + Sync>;

/// Where a table's arena and index live.
enum Store {
    /// Built in memory (loading from text).
    Owned {
        arena: Vec<u8>,
        /// 0 for an empty slot, else [`slot_value`] of the record's offset and key hash.
        slots: Vec<u64>,
    },
    /// Searched in place inside shared bytes (a compiled set); copied out on first change.
    Mapped {
        bytes: SharedBytes,
        arena: std::ops::Range<usize>,
        /// Byte range of the `u64` slots (8-aligned in memory, checked on construction).
        slots: std::ops::Range<usize>,
    },
}

impl Default for Store {
    fn default() -> Self {
        Store::Owned {
            arena: Vec::new(),
            slots: Vec::new(),
        }
    }
}

/// String → label table with an arena of records and an open-addressing index.
#[derive(Default)]
pub(crate) struct StrTable {
    store: Store,
    len: usize,
}

/// Why shared bytes do not hold a table.
#[derive(Debug, thiserror::Error)]
#[error("trail table: {0}")]
pub(crate) struct LayoutError(pub(crate) &'static str);

/// Mapped bytes as `u64`s (a table's slots, a probe filter's words): empty if misaligned
/// (checked at construction).
pub(crate) fn words_of(b: &[u8]) -> &[u64] {
    // SAFETY: every bit pattern is a valid u64; align_to only returns the aligned middle.
    let (pre, mid, post) = unsafe { b.align_to::<u64>() };
    if pre.is_empty() && post.is_empty() {
        mid
    } else {
        &[]
    }
}

impl fmt::Debug for StrTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StrTable")
            .field("len", &self.len)
            .field("arena_bytes", &self.arena().len())
            .field("slots", &self.slots().len())
            .field("mapped", &matches!(self.store, Store::Mapped { .. }))
            .finish()
    }
}

/// A slot's tag: the top 32 bits of the key's hash (the index position uses the low bits).
const TAG: u64 = 0xffff_ffff_0000_0000;

/// The slot of the record at arena offset `off` whose key hashes to `h`.
#[inline]
fn slot_value(off: u32, h: u64) -> u64 {
    (h & TAG) | (u64::from(off) + 1)
}

/// The arena offset a full slot points at; `usize::MAX` (which [`StrTable::record`]
/// refuses) for a damaged slot whose offset half is 0.
#[inline]
fn slot_offset(s: u64) -> usize {
    (s as u32 as usize).wrapping_sub(1)
}

impl StrTable {
    /// A table searched in place in `bytes`: the arena and slot byte ranges of a table
    /// written from [`StrTable::parts`], holding `len` keys. Records are bounds-checked on
    /// access, so damaged bytes give misses, never a panic.
    pub(crate) fn mapped(
        bytes: SharedBytes,
        arena: std::ops::Range<usize>,
        slots: std::ops::Range<usize>,
        len: usize,
    ) -> Result<Self, LayoutError> {
        let all = (*bytes).as_ref();
        for r in [&arena, &slots] {
            if r.start > r.end || r.end > all.len() {
                return Err(LayoutError("section out of bounds"));
            }
        }
        let n = (slots.end - slots.start) / 8;
        if !slots.len().is_multiple_of(8) || (n != 0 && words_of(&all[slots.clone()]).len() != n) {
            return Err(LayoutError("slots misaligned"));
        }
        if (n != 0 && !n.is_power_of_two()) || len > n {
            return Err(LayoutError("index size"));
        }
        if cfg!(target_endian = "big") {
            return Err(LayoutError("compiled tables need a little-endian host"));
        }
        Ok(Self {
            store: Store::Mapped {
                bytes,
                arena,
                slots,
            },
            len,
        })
    }

    /// The arena and slots, for writing a compiled set.
    pub(crate) fn parts(&self) -> (&[u8], &[u64]) {
        (self.arena(), self.slots())
    }

    #[inline]
    fn arena(&self) -> &[u8] {
        match &self.store {
            Store::Owned { arena, .. } => arena,
            Store::Mapped { bytes, arena, .. } => &(**bytes).as_ref()[arena.clone()],
        }
    }

    #[inline]
    fn slots(&self) -> &[u64] {
        match &self.store {
            Store::Owned { slots, .. } => slots,
            Store::Mapped { bytes, slots, .. } => words_of(&(**bytes).as_ref()[slots.clone()]),
        }
    }

    /// The owned arena and slots; a mapped table is copied out first (its key count taken
    /// from its slots: a damaged count must not let an insert skip a resize into a full
    /// index).
    fn owned_mut(&mut self) -> (&mut Vec<u8>, &mut Vec<u64>) {
        if let Store::Mapped { .. } = self.store {
            let (a, s) = self.parts();
            let len = s.iter().filter(|&&s| s != 0).count();
            self.store = Store::Owned {
                arena: a.to_vec(),
                slots: s.to_vec(),
            };
            self.len = len;
        }
        match &mut self.store {
            Store::Owned { arena, slots } => (arena, slots),
            Store::Mapped { .. } => unreachable!("converted above"),
        }
    }

    /// Number of keys.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Heap bytes held (arena plus index), for reports; 0 for a mapped table.
    pub(crate) fn heap_bytes(&self) -> usize {
        match &self.store {
            Store::Owned { arena, slots } => arena.capacity() + slots.capacity() * 8,
            Store::Mapped { .. } => 0,
        }
    }

    /// Total bytes of key text.
    pub(crate) fn key_bytes(&self) -> usize {
        self.arena().len().saturating_sub(self.len * HEADER)
    }

    /// Releases spare arena capacity once loading is done.
    pub(crate) fn shrink_to_fit(&mut self) {
        if let Store::Owned { arena, .. } = &mut self.store {
            arena.shrink_to_fit();
        }
    }

    /// (label, key) of the record at `off`; `None` if the record is out of bounds.
    #[inline]
    fn record(&self, off: usize) -> Option<(LabelId, &[u8])> {
        let arena = self.arena();
        let h = arena.get(off..off.checked_add(HEADER)?)?;
        let label = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let len = usize::from(u16::from_le_bytes([h[4], h[5]]));
        Some((label, arena.get(off + HEADER..off + HEADER + len)?))
    }

    /// Iterates over (key, label) pairs in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], LabelId)> + '_ {
        self.slots()
            .iter()
            .filter(|&&s| s != 0)
            .filter_map(move |&s| {
                let (label, key) = self.record(slot_offset(s))?;
                Some((key, label))
            })
    }

    /// Looks up the key `a ++ b` whose hash (see [`KeyHasher`]) is `h`.
    #[inline]
    pub(crate) fn get_hashed(&self, h: u64, a: &[u8], b: &[u8]) -> Option<LabelId> {
        self.find(h, a, b)
            .and_then(|(_, off)| self.record(off))
            .map(|r| r.0)
    }

    /// Asks the CPU to start fetching the index slots lookups of these hashes read first.
    /// A caller with several keys to look up prefetches them all, then looks them up: the
    /// cache misses of a large table overlap instead of queueing.
    #[inline]
    pub(crate) fn prefetch(&self, hashes: impl IntoIterator<Item = u64>) {
        let slots = self.slots();
        let mask = slots.len().wrapping_sub(1);
        for h in hashes {
            let i = (h as usize) & mask;
            // The slot and the two after it: a probe that goes on past its first line (8
            // slots a line) finds the next one on its way too.
            if let Some(run) = slots.get(i..(i + 3).min(slots.len())) {
                crate::prefetch::lines(run);
            }
        }
    }

    /// Looks up one key.
    #[inline]
    pub(crate) fn get(&self, key: &[u8]) -> Option<LabelId> {
        self.get_hashed(KeyHasher::hash(key), key, &[])
    }

    /// (slot index, record offset) of the key `a ++ b`.
    #[inline]
    fn find(&self, h: u64, a: &[u8], b: &[u8]) -> Option<(usize, usize)> {
        let slots = self.slots();
        if slots.is_empty() {
            return None;
        }
        let mask = slots.len() - 1;
        let tag = h & TAG;
        let want = a.len() + b.len();
        let mut i = (h as usize) & mask;
        // Bounded: a full index (only possible in damaged bytes) must not loop forever.
        for _ in 0..slots.len() {
            let s = slots[i];
            if s == 0 {
                return None;
            }
            if s & TAG == tag {
                let off = slot_offset(s);
                if let Some((_, key)) = self.record(off) {
                    if key.len() == want && &key[..a.len()] == a && &key[a.len()..] == b {
                        return Some((i, off));
                    }
                }
            }
            i = (i + 1) & mask;
        }
        None
    }

    /// Overwrites the label of the record at `record` (from [`Inserted::Existing`]).
    pub(crate) fn set_label(&mut self, record: u32, label: LabelId) {
        let off = record as usize;
        let (arena, _) = self.owned_mut();
        if let Some(b) = arena.get_mut(off..off + 4) {
            b.copy_from_slice(&label.to_le_bytes());
        }
    }

    /// Inserts `key` unless present.
    pub(crate) fn insert(&mut self, key: &[u8], label: LabelId) -> Inserted {
        let h = KeyHasher::hash(key);
        if let Some((_, off)) = self.find(h, key, &[]) {
            return Inserted::Existing {
                record: off as u32,
                label: self.record(off).map_or(0, |r| r.0),
            };
        }
        if key.len() > MAX_KEY_LEN {
            return Inserted::Full;
        }
        let len = key.len() as u16;
        let off = self.arena().len();
        // A slot holds offset + 1 in its low 32 bits.
        if off + HEADER + key.len() >= u32::MAX as usize {
            return Inserted::Full;
        }
        if (self.len + 1) * 10 > self.slots().len() * 7 {
            self.grow();
        }
        let (arena, _) = self.owned_mut();
        arena.extend_from_slice(&label.to_le_bytes());
        arena.extend_from_slice(&len.to_le_bytes());
        arena.extend_from_slice(key);
        self.place_hashed(h, slot_value(off as u32, h));
        self.len += 1;
        Inserted::New
    }

    /// Puts slot `s` into the first free place from the position of its key's hash `h`.
    fn place_hashed(&mut self, h: u64, s: u64) {
        let (_, slots) = self.owned_mut();
        let mask = slots.len() - 1;
        let mut i = (h as usize) & mask;
        while slots[i] != 0 {
            i = (i + 1) & mask;
        }
        slots[i] = s;
    }

    /// Puts slot `s` back (after a resize): its key is hashed again, as the slot holds only
    /// the hash's top half and the position comes from the low bits.
    fn place(&mut self, s: u64) {
        let h = self
            .record(slot_offset(s))
            .map_or(0, |r| KeyHasher::hash(r.1));
        self.place_hashed(h, s);
    }

    fn grow(&mut self) {
        let new_cap = (self.slots().len() * 2).max(1024);
        let (_, slots) = self.owned_mut();
        let old = std::mem::replace(slots, vec![0; new_cap]);
        for s in old.into_iter().filter(|&s| s != 0) {
            self.place(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_get_and_grow() {
        let mut t = StrTable::default();
        for i in 0..5000u32 {
            let k = format!("host{i}.example");
            assert!(matches!(t.insert(k.as_bytes(), i), Inserted::New));
        }
        assert_eq!(t.len(), 5000);
        for i in 0..5000u32 {
            let k = format!("host{i}.example");
            assert_eq!(t.get(k.as_bytes()), Some(i));
        }
        assert_eq!(t.get(b"host5000.example"), None);
        assert_eq!(t.iter().count(), 5000);
        match t.insert(b"host7.example", 99) {
            Inserted::Existing { record, label } => {
                assert_eq!(label, 7);
                t.set_label(record, 99);
            }
            _ => panic!("expected existing"),
        }
        assert_eq!(t.get(b"host7.example"), Some(99));
    }

    #[test]
    fn split_keys_hash_like_whole_keys() {
        let mut t = StrTable::default();
        t.insert(b"evil.example/bad/path", 3);
        let mut h = KeyHasher::new();
        h.prepend(b"/bad/path");
        h.prepend(b"evil.example");
        assert_eq!(
            t.get_hashed(h.finish(), b"evil.example", b"/bad/path"),
            Some(3)
        );
        assert_eq!(
            t.get_hashed(h.finish(), b"evil.exampl", b"e/bad/path"),
            Some(3)
        );
        assert_eq!(t.get(b""), None);
    }

    /// u64 words seen as their bytes (8-aligned, as a mapped set's sections are).
    struct Words(Vec<u64>);

    impl AsRef<[u8]> for Words {
        fn as_ref(&self) -> &[u8] {
            // SAFETY: any u64 is 8 valid bytes; the slice covers exactly the Vec's elements.
            unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast::<u8>(), self.0.len() * 8) }
        }
    }

    /// Mapped bytes whose slots were damaged give misses, never a panic: a slot with a tag
    /// but no offset, one pointing past the arena, and a key count that says the index is
    /// emptier than it is.
    #[test]
    fn damaged_mapped_slots_are_misses() {
        let mut t = StrTable::default();
        for i in 0..100u32 {
            t.insert(format!("k{i}.example").as_bytes(), i);
        }
        let (arena, slots) = t.parts();
        let mut slots = slots.to_vec();
        let n = slots.len();
        let h = KeyHasher::hash(b"x");
        // The first two free slots on the probe path of `x`.
        let mut free = (0..n)
            .map(|k| ((h as usize) + k) & (n - 1))
            .filter(|&j| slots[j] == 0);
        let (a, b) = (free.next().unwrap(), free.next().unwrap());
        slots[a] = h & TAG;
        slots[b] = (h & TAG) | 0xffff_fff0;
        // 8-aligned: the slots first, as u64s, then the arena.
        let mut words: Vec<u64> = slots.clone();
        let arena_at = words.len() * 8;
        words.extend(arena.chunks(8).map(|c| {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            u64::from_le_bytes(w)
        }));
        let shared: SharedBytes = std::sync::Arc::new(Words(words));
        let mut m = StrTable::mapped(shared, arena_at..arena_at + arena.len(), 0..n * 8, 1)
            .expect("layout");
        assert_eq!(m.get(b"x"), None);
        assert_eq!(m.get(b"k7.example"), Some(7));
        assert_eq!(m.iter().count(), 100);
        // Copied out on insert, counted from its slots (102 full), grown as needed.
        for i in 0..2000u32 {
            m.insert(format!("n{i}.example").as_bytes(), i);
        }
        assert_eq!(m.get(b"n1999.example"), Some(1999));
        assert_eq!(m.get(b"k7.example"), Some(7));
        // The count that sizes the index is of its occupied slots, not the damaged 1.
        let occupied = m.slots().iter().filter(|&&s| s != 0).count();
        assert_eq!((m.len(), occupied), (102 + 2000, 102 + 2000));
    }

    #[test]
    fn too_long_key_is_refused() {
        let mut t = StrTable::default();
        let k = vec![b'a'; MAX_KEY_LEN + 1];
        assert!(matches!(t.insert(&k, 1), Inserted::Full));
    }
}
