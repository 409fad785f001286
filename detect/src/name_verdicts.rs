//! The clean verdicts of recently seen names, per worker: a DNS query name, HTTP Host or
//! TLS/QUIC server name that hit no domain trail (whitelisted or not) is answered from here
//! the next time it is seen, without the whitelist and trail tables (which are large and,
//! live, mostly out of cache).
//! Maltrail keeps the same verdicts (`_result_cache`, `CACHE_TYPE.DOMAIN` and
//! `DOMAIN_WHITELISTED`). Trail hits are not kept: they are rare and each builds its text.

use hashbrown::DefaultHashBuilder;

use crate::trails::{DomainMatch, DomainTrails, NameBuf, PendingName, NAME_BUF_LEN};
use crate::whitelist::Whitelist;

/// Sets (a power of two) of two slots: 256 KiB per worker.
const SETS: usize = 2048;
/// Longest name kept (a slot is one cache line); longer names are always looked up.
const MAX_NAME: usize = 54;

/// `Slot::verdict` values.
const EMPTY: u8 = 0;
const CLEAN: u8 = 1;
const WHITELISTED: u8 = 2;

const EMPTY_SLOT: Slot = Slot {
    hash: 0,
    len: 0,
    verdict: EMPTY,
    name: [0; MAX_NAME],
};

// A zeroed table is an empty one, of the size said above.
const _: () = assert!(EMPTY == 0 && std::mem::size_of::<Set>() * SETS == 256 * 1024);

/// One name and its verdict, in one cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Slot {
    hash: u64,
    len: u8,
    verdict: u8,
    name: [u8; MAX_NAME],
}

impl Slot {
    /// Whether the slot holds `bytes` (whose hash is `hash`).
    #[inline]
    fn holds(&self, hash: u64, bytes: &[u8]) -> bool {
        self.verdict != EMPTY
            && self.hash == hash
            && self.name.get(..usize::from(self.len)) == Some(bytes)
    }
}

/// A name between [`NameVerdicts::begin`] and [`NameVerdicts::finish`].
#[allow(clippy::large_enum_variant)] // one per packet, on the stack: a box would allocate
pub(crate) enum NameLookup<'b> {
    /// Seen clean before: whether it is whitelisted.
    Known(bool),
    /// Being looked up; `slot` is its (set, hash) when short enough to be kept.
    Pending {
        lookup: PendingName<'b>,
        slot: Option<(usize, u64)>,
    },
}

impl NameLookup<'_> {
    /// The name's whitelist verdict.
    pub(crate) fn whitelisted(&self) -> bool {
        match self {
            NameLookup::Known(w) => *w,
            NameLookup::Pending { lookup, .. } => lookup.whitelisted(),
        }
    }
}

/// Two slots, the one used last first: a name is replaced only when two other names kept
/// in its set (clean, at most [`MAX_NAME`] bytes) were used after it (a direct-mapped table
/// loses a name to any one other). The two lines are one aligned pair, which some CPUs'
/// adjacent-line prefetchers fetch together.
#[derive(Clone, Copy)]
#[repr(C, align(128))]
struct Set([Slot; 2]);

/// A two-way set-associative table of names (compared byte for byte, as given) and their
/// verdicts.
pub(crate) struct NameVerdicts {
    sets: Box<[Set]>,
    hasher: DefaultHashBuilder,
}

impl Default for NameVerdicts {
    fn default() -> Self {
        // Zeroed by the allocator: pages are touched (and count in RSS) only once used.
        let sets = Box::<[Set]>::new_zeroed_slice(SETS);
        // SAFETY: `Set` is `[Slot; 2]` and every field of `Slot` is an integer or an array
        // of bytes, so all-zero bytes are a valid `Set`; its slots read as empty because
        // `EMPTY` is 0 (asserted below).
        let sets = unsafe { sets.assume_init() };
        NameVerdicts {
            sets,
            hasher: DefaultHashBuilder::default(),
        }
    }
}

impl NameVerdicts {
    /// [`DomainTrails::lookup_whitelisted`] of `name`, answered from the table when `name`
    /// was seen clean before (counted in `hits`); a clean answer is kept (in place of the
    /// set's name used less recently).
    pub(crate) fn lookup_whitelisted(
        &mut self,
        name: &str,
        domains: &DomainTrails,
        whitelist: &Whitelist,
        hits: &mut u64,
    ) -> (bool, Option<DomainMatch>) {
        let mut buf = None;
        let lookup = self.begin(name, domains, whitelist, hits, &mut buf);
        self.finish(name, &lookup, domains)
    }

    /// [`NameVerdicts::lookup_whitelisted`] in two steps, as
    /// [`DomainTrails::begin_lookup`]: the verdict when `name` was seen clean before, else
    /// its whitelist verdict with its trail probes' filter words prefetched.
    /// [`NameVerdicts::finish`] gives the trail hit (and keeps a clean verdict): work done
    /// between the two steps overlaps those cache misses. No other lookup may come between the two, and
    /// `finish` takes the same `name`. `buf` (the name's lowercased copy) is made only when
    /// the verdicts do not answer.
    pub(crate) fn begin<'b>(
        &mut self,
        name: &str,
        domains: &DomainTrails,
        whitelist: &Whitelist,
        hits: &mut u64,
        buf: &'b mut Option<NameBuf>,
    ) -> NameLookup<'b> {
        let bytes = name.as_bytes();
        let kept = (bytes.len() <= MAX_NAME).then(|| {
            let hash = crate::heuristics::bounded::hash_bytes(&self.hasher, bytes);
            ((hash as usize) & (SETS - 1), hash)
        });
        if let Some((i, hash)) = kept {
            if let Some(Set(ways)) = self.sets.get_mut(i) {
                if ways[0].holds(hash, bytes) {
                    *hits += 1;
                    return NameLookup::Known(ways[0].verdict == WHITELISTED);
                }
                if ways[1].holds(hash, bytes) {
                    *hits += 1;
                    ways.swap(0, 1);
                    return NameLookup::Known(ways[0].verdict == WHITELISTED);
                }
            }
        }
        NameLookup::Pending {
            lookup: domains.begin_lookup(name, whitelist, buf.insert([0; NAME_BUF_LEN])),
            slot: kept,
        }
    }

    /// The whitelist verdict and trail hit of the `name` [`NameVerdicts::begin`] gave
    /// `lookup` for; a clean verdict is kept.
    pub(crate) fn finish(
        &mut self,
        name: &str,
        lookup: &NameLookup<'_>,
        domains: &DomainTrails,
    ) -> (bool, Option<DomainMatch>) {
        let (lookup, slot) = match lookup {
            NameLookup::Known(whitelisted) => return (*whitelisted, None),
            NameLookup::Pending { lookup, slot } => (lookup, *slot),
        };
        let whitelisted = lookup.whitelisted();
        let hit = domains.finish_lookup(lookup);
        let bytes = name.as_bytes();
        if let (None, Some((i, hash))) = (&hit, slot) {
            debug_assert_eq!(
                crate::heuristics::bounded::hash_bytes(&self.hasher, bytes),
                hash,
                "finish takes the name begin took"
            );
            if let Some(Set(ways)) = self.sets.get_mut(i) {
                ways[1] = ways[0];
                let slot = &mut ways[0];
                slot.hash = hash;
                // At most MAX_NAME (< 256): checked in `begin`.
                slot.len = bytes.len() as u8;
                slot.name[..bytes.len()].copy_from_slice(bytes);
                slot.verdict = if whitelisted { WHITELISTED } else { CLEAN };
            }
        }
        (whitelisted, hit)
    }

    /// Forgets every verdict (the trails changed).
    pub(crate) fn clear(&mut self) {
        self.sets.fill(Set([EMPTY_SLOT; 2]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One name trail, `evil.example`.
    fn domains() -> DomainTrails {
        let mut d = DomainTrails::default();
        d.table.insert(b"evil.example", 0);
        d.flags = vec![0];
        d
    }

    /// In one step or two (begin, then finish: the name buffer made only when the verdicts
    /// do not answer), as the trails answer; clean verdicts kept.
    #[test]
    fn answers_like_the_lookup_and_keeps_only_clean_verdicts() {
        let d = domains();
        let wl = Whitelist::parse("google.com\n1.2.3.4\n");
        let mut v = NameVerdicts::default();
        let mut hits = 0;
        let long = format!("{}.clean.example", "a".repeat(60));
        for round in 0..3u64 {
            for q in [
                "www.google.com",
                "clean.example",
                "a.evil.example",
                "evil.example",
                "EVIL.example",
                "x.y",
                "1.2.3.4",
                long.as_str(),
            ] {
                let want = d.lookup_whitelisted(q, &wl);
                if round % 2 == 0 {
                    assert_eq!(v.lookup_whitelisted(q, &d, &wl, &mut hits), want, "{q}");
                    continue;
                }
                let mut buf = None;
                let l = v.begin(q, &d, &wl, &mut hits, &mut buf);
                let (whitelisted, known) = (l.whitelisted(), matches!(l, NameLookup::Known(_)));
                assert_eq!(v.finish(q, &l, &d), want, "{q} round {round}");
                assert_eq!(whitelisted, want.0, "{q} round {round}");
                assert_eq!(buf.is_none(), known, "{q}: a buffer only on a verdict miss");
            }
            // Four names answered from the table after the first round: www.google.com,
            // clean.example, x.y and 1.2.3.4 (trail hits and long names are not kept).
            assert_eq!(hits, 4 * round);
        }
    }

    #[test]
    fn long_names_are_not_kept_and_a_full_table_never_confuses_names() {
        let d = domains();
        let wl = Whitelist::empty();
        let mut v = NameVerdicts::default();
        let mut hits = 0;
        let long = format!("{}.clean.example", "a".repeat(60));
        for _ in 0..2 {
            assert_eq!(
                v.lookup_whitelisted(&long, &d, &wl, &mut hits),
                (false, None)
            );
        }
        assert_eq!(
            hits, 0,
            "a name over {MAX_NAME} bytes is looked up each time"
        );
        // Six names a set on average (three a slot): some replace others.
        let names: Vec<String> = (0..6 * SETS).map(|i| format!("n{i}.example")).collect();
        for _ in 0..2 {
            for n in &names {
                assert_eq!(v.lookup_whitelisted(n, &d, &wl, &mut hits), (false, None));
                // A trail name never takes a clean name's verdict.
                assert!(v
                    .lookup_whitelisted("x.evil.example", &d, &wl, &mut hits)
                    .1
                    .is_some());
            }
        }
        assert!(hits > 0 && hits < names.len() as u64, "{hits}");
        // The last name is kept until the table is cleared.
        let last = &names[names.len() - 1];
        let before = hits;
        v.lookup_whitelisted(last, &d, &wl, &mut hits);
        assert_eq!(hits, before + 1);
        v.clear();
        v.lookup_whitelisted(last, &d, &wl, &mut hits);
        assert_eq!(hits, before + 1);
    }

    #[test]
    fn a_set_keeps_its_two_names_used_last() {
        let d = domains();
        let wl = Whitelist::empty();
        let mut v = NameVerdicts::default();
        // Three names of one set.
        let set = |v: &NameVerdicts, n: &str| {
            (crate::heuristics::bounded::hash_bytes(&v.hasher, n.as_bytes()) as usize) & (SETS - 1)
        };
        let a = "n0.example".to_owned();
        let same: Vec<String> = (1..)
            .map(|i| format!("n{i}.example"))
            .filter(|n| set(&v, n) == set(&v, &a))
            .take(2)
            .collect();
        let (b, c) = (&same[0], &same[1]);
        let mut hits = 0;
        let mut ask = |v: &mut NameVerdicts, n: &str| {
            let before = hits;
            assert_eq!(v.lookup_whitelisted(n, &d, &wl, &mut hits), (false, None));
            hits > before
        };
        assert!(!ask(&mut v, &a) && !ask(&mut v, b));
        // Both kept; `a` used last.
        assert!(ask(&mut v, b) && ask(&mut v, &a));
        // `c` replaces `b`, the one used less recently.
        assert!(!ask(&mut v, c));
        assert!(ask(&mut v, &a) && ask(&mut v, c) && !ask(&mut v, b));
    }
}
