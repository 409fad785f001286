//! Required literals of the regex domain trails, searched all at once before any regex runs.
//!
//! Every regex trail of the static tree names some literal text a match must contain
//! (`nutqauytva[0-9a-z]+\.com` needs `nutqauytva`, `seek[0-9]+\.(mootseek|zootseek)\.com`
//! needs `mootseek` or `zootseek`). One Aho-Corasick pass over a name finds which regexes
//! can match at all; a name that contains none of their literals (nearly every name) runs
//! no regex. Before that pass, a bitmap of the literals' first three bytes ([`Trigrams`]),
//! tested in the name's parse pass, answers most names without it. A regex without such a literal (or with only very short ones) is always run.
//! The filter only skips regexes that cannot match, so the result is the same as trying
//! every regex. Tests are below.

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use regex_syntax::hir::{Hir, HirKind};

/// Most regexes the candidate bitset holds; a larger set is not filtered.
pub(crate) const MAX_REGEXES: usize = 256;
/// Shortest literal worth filtering on (shorter ones are in most names).
const MIN_LITERAL: usize = 3;
/// Most literals one regex may require one of (a larger alternation is not filtered).
const MAX_LITERALS: usize = 256;
/// Bits in the trigram bitmap: 2^16 (8 KiB); a few hundred literals set well under 1% of
/// them, so a name of 20 bytes passes the bitmap by chance a few times in a hundred.
const TRIGRAM_BITS: u32 = 16;

/// The first three bytes of every required literal, hashed into a bitmap: a name none of
/// whose three-byte windows is set contains no literal (the converse is not true).
pub(crate) struct Trigrams([u64; TRIGRAM_WORDS]);

/// Words of the trigram bitmap.
const TRIGRAM_WORDS: usize = (1 << TRIGRAM_BITS) / 64;

impl std::fmt::Debug for Trigrams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set: u32 = self.0.iter().map(|w| w.count_ones()).sum();
        f.debug_struct("Trigrams").field("bits_set", &set).finish()
    }
}

impl Trigrams {
    /// The window state before any byte: `0xff` bytes, never in a literal (not UTF-8).
    pub(crate) const START: u32 = 0x00ff_ffff;

    /// The window after `b`, fed right to left: `b` becomes the window's first byte.
    #[inline]
    pub(crate) fn push(window: u32, b: u8) -> u32 {
        ((window << 8) | u32::from(b)) & 0x00ff_ffff
    }

    #[inline]
    fn bit(window: u32) -> usize {
        (window.wrapping_mul(0x9e37_79b1) >> (32 - TRIGRAM_BITS)) as usize
    }

    /// Whether a literal may start with the three bytes of `window` (per byte of every
    /// name: a fixed-size array, so no bounds check).
    #[inline]
    pub(crate) fn test(&self, window: u32) -> bool {
        let b = Self::bit(window);
        (self.0[(b / 64) % TRIGRAM_WORDS] >> (b % 64)) & 1 != 0
    }

    fn add(&mut self, lit: &[u8]) {
        let w = lit
            .iter()
            .take(3)
            .rev()
            .fold(Self::START, |w, &b| Self::push(w, b));
        let b = Self::bit(w);
        self.0[(b / 64) % TRIGRAM_WORDS] |= 1 << (b % 64);
    }
}

/// Candidate regexes, one bit per regex index.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Candidates([u64; MAX_REGEXES / 64]);

impl Candidates {
    fn set(&mut self, i: usize) {
        if let Some(w) = self.0.get_mut(i / 64) {
            *w |= 1 << (i % 64);
        }
    }

    /// Whether no regex can match.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.iter().all(|&w| w == 0)
    }

    /// The candidate indices, ascending.
    pub(crate) fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(wi, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let b = w.trailing_zeros() as usize;
                w &= w - 1;
                Some(wi * 64 + b)
            })
        })
    }
}

/// Which regex trails a name can match, from their required literals.
#[derive(Debug)]
pub(crate) struct RegexPrefilter {
    /// All required literals of all filtered regexes.
    literals: AhoCorasick,
    /// Their first three bytes.
    trigrams: Box<Trigrams>,
    /// The regex index of each literal (by Aho-Corasick pattern id).
    owner: Vec<u16>,
    /// Regexes without a usable literal: always candidates.
    always: Candidates,
}

impl RegexPrefilter {
    /// A filter over `patterns` (regex sources, in trail order); `None` when there are too
    /// many regexes for the bitset, or the literal automaton cannot be built (then every
    /// regex is tried, as without a filter).
    pub(crate) fn new<'a>(patterns: impl ExactSizeIterator<Item = &'a str>) -> Option<Self> {
        if patterns.len() > MAX_REGEXES {
            return None;
        }
        let mut literals: Vec<Vec<u8>> = Vec::new();
        let mut owner = Vec::new();
        let mut always = Candidates::default();
        let mut trigrams = Box::new(Trigrams([0; TRIGRAM_WORDS]));
        for (i, p) in patterns.enumerate() {
            match regex_syntax::parse(p).ok().and_then(|h| required(&h)) {
                Some(set) if min_len(&set) >= MIN_LITERAL && set.len() <= MAX_LITERALS => {
                    for lit in set {
                        trigrams.add(&lit);
                        literals.push(lit);
                        owner.push(i as u16);
                    }
                }
                _ => always.set(i),
            }
        }
        let literals = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .kind(Some(AhoCorasickKind::DFA))
            .build(&literals)
            .ok()?;
        Some(Self {
            literals,
            trigrams,
            owner,
            always,
        })
    }

    /// The literals' trigram bitmap, for a pass over the name that has other work to do.
    pub(crate) fn trigrams(&self) -> &Trigrams {
        &self.trigrams
    }

    /// Whether every regex has a required literal: then a name whose windows all miss
    /// [`RegexPrefilter::trigrams`] has no candidate.
    pub(crate) fn all_filtered(&self) -> bool {
        self.always.is_empty()
    }

    /// The regexes that may match `text`: those whose required literal occurs in it, and
    /// those without one. No allocation.
    pub(crate) fn candidates(&self, text: &[u8]) -> Candidates {
        let mut c = self.always;
        for m in self.literals.find_overlapping_iter(text) {
            if let Some(&r) = self.owner.get(m.pattern().as_usize()) {
                c.set(usize::from(r));
            }
        }
        c
    }

    /// Number of regexes always tried (no usable literal), for tests and reports.
    #[cfg(test)]
    fn always_tried(&self) -> usize {
        self.always.iter().count()
    }
}

fn min_len(set: &[Vec<u8>]) -> usize {
    set.iter().map(Vec::len).min().unwrap_or(0)
}

/// A set of literals one of which every match of `hir` contains; `None` when there is no
/// such set (or it was not found: the analysis is conservative).
fn required(hir: &Hir) -> Option<Vec<Vec<u8>>> {
    match hir.kind() {
        HirKind::Literal(lit) => Some(vec![lit.0.to_vec()]),
        HirKind::Capture(c) => required(&c.sub),
        HirKind::Repetition(r) if r.min >= 1 => required(&r.sub),
        // Each branch must supply one; any branch without a literal defeats the set.
        HirKind::Alternation(branches) => {
            let mut all = Vec::new();
            for b in branches {
                all.extend(required(b)?);
                if all.len() > MAX_LITERALS {
                    return None;
                }
            }
            Some(all)
        }
        // Every part of a concatenation is in every match: the part with the best set.
        HirKind::Concat(parts) => parts
            .iter()
            .filter_map(required)
            .max_by_key(|set| (min_len(set), std::cmp::Reverse(set.len()))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex::Regex;

    fn req(p: &str) -> Option<Vec<String>> {
        let h = regex_syntax::parse(p).ok()?;
        required(&h).map(|s| {
            s.into_iter()
                .map(|l| String::from_utf8(l).unwrap_or_default())
                .collect()
        })
    }

    #[test]
    fn required_literals() {
        assert_eq!(
            req(r"nutqauytva[0-9a-z]+\.com"),
            Some(vec!["nutqauytva".into()])
        );
        assert_eq!(
            req(r"seek[0-9]+\.(mootseek|zootseek)\.com"),
            Some(vec!["mootseek".into(), "zootseek".into()])
        );
        assert_eq!(
            req(r"(gomon|v[i,y]plata)[0-9]{2,3}\.ru"),
            Some(vec!["gomon".into(), "plata".into()])
        );
        assert_eq!(
            req(r"^[a-z]{1}\-[a-z]{1,3}\.top$"),
            Some(vec![".top".into()])
        );
        assert_eq!(
            req(r"zoneserveryu[0-9a-z]{0,}\.com"),
            Some(vec!["zoneserveryu".into()])
        );
        // Optional parts and classes give nothing.
        assert_eq!(req(r"(abc)?[a-z]+"), None);
        assert_eq!(req(r"abc|[a-z]+"), None);
        // Case-insensitive letters are classes: no literal, always tried.
        assert_eq!(req(r"(?i)x[0-9]"), None);
    }

    /// Filtered and unfiltered agree on which regexes match, over names that hit and
    /// names that nearly hit.
    #[test]
    fn never_drops_a_match() {
        let patterns = [
            r"nutqauytva[0-9a-z]+\.com",
            r"seek[0-9]+\.(mootseek|zootseek)\.com",
            r"^[a-z]{1,3}\-leboncoin\.(com|info|me|top)$",
            r"(?i)caseless[0-9]\.net",
            r"[a-z]\.[0-9]",
            r"\b(atztds|mtxtds)[0-9a-z]+\.(world|xyz)",
        ];
        let f = RegexPrefilter::new(patterns.iter().copied()).expect("filter");
        assert_eq!(f.always_tried(), 2);
        let regexes: Vec<Regex> = patterns.iter().map(|p| Regex::new(p).unwrap()).collect();
        let names = [
            "nutqauytvax.com",
            "a.nutqauytva1.com.evil.org",
            "nutqauytva.com",
            "seek12.zootseek.com",
            "seek12.mootseek.com",
            "seek.zootseek.com",
            "ab-leboncoin.top",
            "caseless1.net",
            "x.1",
            "atztds1.world",
            "www.example.com",
            "h1.bench-site2.net",
        ];
        for n in names {
            let c = f.candidates(n.as_bytes());
            for (i, r) in regexes.iter().enumerate() {
                if r.is_match(n) {
                    assert!(c.iter().any(|j| j == i), "{n} {}", patterns[i]);
                }
            }
        }
        assert_eq!(
            f.candidates(b"www.example.com").iter().count(),
            f.always_tried()
        );
    }

    /// Every window of a name that contains a literal, fed right to left as the name parse
    /// does, sets a bit the literal set.
    #[test]
    fn trigrams_see_every_literal() {
        let f = RegexPrefilter::new([r"abc[0-9]+\.com", r"(xyzzy|qq1)\.net"].into_iter())
            .expect("filter");
        let hit = |name: &str| {
            let mut w = Trigrams::START;
            name.bytes().rev().any(|b| {
                w = Trigrams::push(w, b);
                f.trigrams().test(w)
            })
        };
        for n in ["abc1.com", "zz.com", "xyzzy.net", "b.net"] {
            assert!(hit(n), "{n}");
        }
        assert!(!hit("www.example.org"));
        assert!(!hit("ab"));
        assert!(f.all_filtered());
    }

    #[test]
    fn candidate_bits() {
        let mut c = Candidates::default();
        assert!(c.is_empty());
        for i in [0, 63, 64, 200, 255] {
            c.set(i);
        }
        c.set(MAX_REGEXES);
        assert_eq!(c.iter().collect::<Vec<_>>(), vec![0, 63, 64, 200, 255]);
    }
}
