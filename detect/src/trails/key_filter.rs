//! Probe filters of the name tables ([`super::table::StrTable`]): one bit per hash of each
//! entry, so that most lookups of absent keys end at a bit that fits in cache instead of
//! the table's slots. A clear bit proves the entry absent; a set bit may be a collision and
//! only costs the probe. A filter answers for the table it was built from only: for another
//! number of keys (none built, or keys added since) it rules nothing out.

use std::ops::Range;

use super::table::{words_of, LayoutError, SharedBytes};

/// A table's probe filter: its words and the number of keys of the table it was built from.
#[derive(Default)]
pub(crate) struct KeyFilter {
    words: FilterWords,
    keys: usize,
}

/// Where a filter's `u64` words live.
enum FilterWords {
    Owned(Vec<u64>),
    /// In place in a compiled set (8-aligned, a power of two of words: checked when made).
    Mapped {
        bytes: SharedBytes,
        range: Range<usize>,
    },
}

impl Default for FilterWords {
    fn default() -> Self {
        FilterWords::Owned(Vec::new())
    }
}

impl std::fmt::Debug for KeyFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyFilter")
            .field("keys", &self.keys)
            .field("words", &self.words().len())
            .field("mapped", &matches!(self.words, FilterWords::Mapped { .. }))
            .finish()
    }
}

/// Word index and mask of hash `h` in `n` words (`n` a power of two): bits the table's slot
/// index does not use (they are the low bits of its slots' tag, the hash's top half: a false
/// filter hit is still unrelated to the slots its probe meets).
#[inline]
fn filter_bit(n: usize, h: u64) -> (usize, u64) {
    let i = ((h >> 32) as usize) & (n * 64).wrapping_sub(1);
    (i / 64, 1 << (i % 64))
}

/// The words of a filter of `entries` entries at `bits_per_entry` bits each (rounded up to a
/// power of two of words, at least one), with the bit of each hash in `hashes` set.
pub(crate) fn build(
    entries: usize,
    bits_per_entry: usize,
    hashes: impl IntoIterator<Item = u64>,
) -> Vec<u64> {
    let n = (entries * bits_per_entry).next_power_of_two().max(64) / 64;
    let mut words = vec![0u64; n];
    for h in hashes {
        let (w, m) = filter_bit(n, h);
        if let Some(word) = words.get_mut(w) {
            *word |= m;
        }
    }
    words
}

impl KeyFilter {
    /// A filter built in memory ([`build`]) for a table of `keys` keys.
    pub(crate) fn owned(words: Vec<u64>, keys: usize) -> Self {
        KeyFilter {
            words: FilterWords::Owned(words),
            keys,
        }
    }

    /// A filter stored in a compiled set: `range` of `bytes` holds [`build`]'s words (u64
    /// LE, 8-aligned) for a table of `keys` keys; `what` names it in an error.
    pub(crate) fn mapped(
        bytes: SharedBytes,
        range: Range<usize>,
        keys: usize,
        what: &'static str,
    ) -> Result<Self, LayoutError> {
        let all = (*bytes).as_ref();
        let stored = all.get(range.clone()).unwrap_or_default();
        let n = words_of(stored).len();
        if range.start > range.end
            || range.end > all.len()
            || n * 8 != stored.len()
            || !n.is_power_of_two()
        {
            return Err(LayoutError(what));
        }
        if cfg!(target_endian = "big") {
            return Err(LayoutError("compiled tables need a little-endian host"));
        }
        Ok(KeyFilter {
            words: FilterWords::Mapped { bytes, range },
            keys,
        })
    }

    fn words(&self) -> &[u64] {
        match &self.words {
            FilterWords::Owned(w) => w,
            FilterWords::Mapped { bytes, range } => {
                words_of((**bytes).as_ref().get(range.clone()).unwrap_or_default())
            }
        }
    }

    /// The words when they answer for a table of `keys` keys.
    #[inline]
    pub(crate) fn for_table(&self, keys: usize) -> Option<&[u64]> {
        let w = self.words();
        (self.keys == keys && !w.is_empty()).then_some(w)
    }

    /// Heap bytes of the words (0 when mapped).
    pub(crate) fn heap_bytes(&self) -> usize {
        match &self.words {
            FilterWords::Owned(w) => w.capacity() * 8,
            FilterWords::Mapped { .. } => 0,
        }
    }
}

/// Whether an entry hashing to `h` may be stored: `words` from [`KeyFilter::for_table`],
/// `None` ruling nothing out.
#[inline]
pub(crate) fn may_hold(words: Option<&[u64]>, h: u64) -> bool {
    words.is_none_or(|w| {
        let (i, m) = filter_bit(w.len(), h);
        w.get(i).is_none_or(|&word| word & m != 0)
    })
}

/// Starts fetching the filter word [`may_hold`] reads for hash `h` (`words` non-empty).
#[inline]
pub(crate) fn prefetch_bit(words: &[u64], h: u64) {
    let (i, _) = filter_bit(words.len(), h);
    if let Some(w) = words.get(i..=i) {
        crate::prefetch::lines(w);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_hash_may_be_held_and_most_others_are_ruled_out() {
        let hashes: Vec<u64> = (0..10_000u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        let words = build(hashes.len(), 8, hashes.iter().copied());
        assert!(words.len().is_power_of_two());
        let f = KeyFilter::owned(words, hashes.len());
        let w = f.for_table(hashes.len());
        assert!(hashes.iter().all(|&h| may_hold(w, h)));
        let others = (0..10_000u64).map(|i| ((i + 1) << 40).wrapping_mul(0xc2b2_ae3d_27d4_eb4f));
        let held = others.filter(|&h| may_hold(w, h)).count();
        // 10,000 bits set of 131,072: about 7.4% of absent hashes meet a set bit.
        assert!(held < 1_000, "{held} of 10,000 absent hashes pass");
        // For another table (keys added since) it rules nothing out.
        assert!(f.for_table(hashes.len() + 1).is_none());
        assert!(may_hold(None, 0));
    }
}
