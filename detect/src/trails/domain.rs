//! Domain trails: exact names, parent-domain (suffix) matches, regex trails, the
//! `.ip-adress.com` and `.onion.<gateway>` special cases, with Maltrail's printed trail text.

use std::ops::Range;

use regex::{Regex, RegexSet};

use super::classify::name_byte_lower;
use super::key_filter::{self, may_hold, prefetch_bit, KeyFilter};
use super::regex_prefilter::{RegexPrefilter, Trigrams};
use super::table::{KeyHasher, LayoutError, SharedBytes, StrTable};
use super::LabelId;
use crate::whitelist::Whitelist;

/// Longest query name considered (DNS names are at most 253 characters).
const MAX_NAME: usize = 253;
/// Suffixes of a name hashed by its parse, whose probe filter words are prefetched before
/// the suffix walk.
const PREFETCH_SUFFIXES: usize = 8;

/// The buffer a name is lowercased into for [`DomainTrails::begin_lookup`].
pub(crate) type NameBuf = [u8; MAX_NAME];
/// [`NameBuf`]'s length.
pub(crate) const NAME_BUF_LEN: usize = MAX_NAME;

/// A name between [`DomainTrails::begin_lookup`] and [`DomainTrails::finish_lookup`].
pub(crate) struct PendingName<'b> {
    /// The parsed name, its suffixes prefetched; `None` when whitelisted or not a name the
    /// trails can hold.
    name: Option<Name<'b>>,
    whitelisted: bool,
}

impl PendingName<'_> {
    /// The name's whitelist verdict.
    pub(crate) fn whitelisted(&self) -> bool {
        self.whitelisted
    }
}

/// Label flag: info contains `suspicious` or `sinkhole` (skipped for `ns1.`-like queries).
pub(crate) const FLAG_SUSPICIOUS_OR_SINKHOLE: u8 = 1;
/// Label flag: info contains `dynamic` or `free web` (skipped for the bare/`www.` name).
pub(crate) const FLAG_DYNAMIC_OR_FREE_WEB: u8 = 2;

/// The flags [`DomainTrails::lookup`] needs from a label's info.
pub(crate) fn label_flags(info: &str) -> u8 {
    let mut f = 0;
    if info.contains("suspicious") || info.contains("sinkhole") {
        f |= FLAG_SUSPICIOUS_OR_SINKHOLE;
    }
    if info.contains("dynamic") || info.contains("free web") {
        f |= FLAG_DYNAMIC_OR_FREE_WEB;
    }
    f
}

/// A domain trail hit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainMatch {
    /// The trail as Maltrail prints it, e.g. `(www).evil-parent.com`, `badsite.onion(.to)`.
    pub trail: String,
    /// The matched trail's label.
    pub label: LabelId,
}

/// Appends `(part)`, a `.` that would end inside the parentheses moved after them.
fn push_group(trail: &mut String, part: &str) {
    trail.push('(');
    match part.strip_suffix('.') {
        Some(p) => {
            trail.push_str(p);
            trail.push_str(").");
        }
        None => {
            trail.push_str(part);
            trail.push(')');
        }
    }
}

/// Regular-expression domain trails (static trails with regex metacharacters).
#[derive(Debug, Default)]
pub struct RegexTrails {
    set: Option<RegexSet>,
    /// The regexes' required literals: most names run no regex at all.
    prefilter: Option<RegexPrefilter>,
    regexes: Vec<Regex>,
    labels: Vec<LabelId>,
}

impl RegexTrails {
    /// Builds the set from compiled regexes and their labels (in trail order).
    pub(crate) fn new(regexes: Vec<(Regex, LabelId)>) -> Self {
        let (regexes, labels): (Vec<Regex>, Vec<LabelId>) = regexes.into_iter().unzip();
        // Each pattern already compiled alone, so the set compiles too unless it hits the
        // size limit; then matching falls back to trying each regex.
        let set = RegexSet::new(regexes.iter().map(Regex::as_str)).ok();
        let prefilter = if regexes.is_empty() {
            None
        } else {
            RegexPrefilter::new(regexes.iter().map(Regex::as_str))
        };
        Self {
            set,
            prefilter,
            regexes,
            labels,
        }
    }

    /// Number of regex trails.
    pub fn len(&self) -> usize {
        self.regexes.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.regexes.is_empty()
    }

    /// The regex sources, in load order.
    pub fn patterns(&self) -> impl Iterator<Item = &str> {
        self.regexes.iter().map(Regex::as_str)
    }

    /// (regex source, label), in load order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, LabelId)> {
        self.regexes
            .iter()
            .map(Regex::as_str)
            .zip(self.labels.iter().copied())
    }

    /// The trigram bitmap [`Name::parse`] tests: the literals' when every regex has a
    /// required literal, else `None` (every name may match one).
    fn trigrams(&self) -> Option<&Trigrams> {
        self.prefilter
            .as_ref()
            .filter(|f| f.all_filtered())
            .map(RegexPrefilter::trigrams)
    }

    /// Leftmost match over all regexes (first regex on ties, like one Python alternation):
    /// (start, end, label). `maybe` false: the parse found no window of a required literal
    /// (see [`RegexTrails::trigrams`]), so nothing can match.
    fn search(&self, q: &str, maybe: bool) -> Option<(usize, usize, LabelId)> {
        if !maybe {
            return None;
        }
        let mut best: Option<(usize, usize, LabelId)> = None;
        let mut consider = |i: usize| {
            if let Some(m) = self.regexes[i].find(q) {
                if best.is_none_or(|(s, _, _)| m.start() < s) {
                    best = Some((m.start(), m.end(), self.labels[i]));
                }
            }
        };
        if let Some(f) = &self.prefilter {
            // Regexes without a required literal are candidates for every name: the set's
            // `is_match` rules out the common miss before they run one by one.
            if !f.all_filtered() && self.set.as_ref().is_some_and(|set| !set.is_match(q)) {
                return None;
            }
            // Only the regexes whose required literal the name contains (and those without
            // one), in trail order: the same leftmost-first result as trying them all.
            f.candidates(q.as_bytes()).iter().for_each(&mut consider);
            return best;
        }
        match &self.set {
            // `is_match` first: a miss (nearly every name) allocates nothing and stops at the
            // first state that cannot match; `matches` builds its result set on the heap.
            Some(set) if !set.is_match(q) => {}
            Some(set) => set.matches(q).iter().for_each(&mut consider),
            None => (0..self.regexes.len()).for_each(&mut consider),
        }
        best
    }
}

/// Domain trails: an arena hash table of names plus the regex trails.
#[derive(Debug, Default)]
pub struct DomainTrails {
    pub(crate) table: StrTable,
    /// Rules out most probes of suffixes no trail names ([`filter_words`]); built with the
    /// table, or stored beside it. A name's suffixes are nearly all absent: their probes
    /// would each read a slot of a table of millions, mostly out of cache.
    filter: KeyFilter,
    /// Regex domain trails, tried when no name matches.
    pub regexes: RegexTrails,
    /// [`label_flags`] of every label, indexed by label id.
    pub(crate) flags: Vec<u8>,
}

/// Filter bits per name (before the filter is rounded up to a power of two): 78% or more of
/// absent suffixes meet a clear bit (87% for the 1.16M names of Maltrail's static tree, whose
/// filter is 1 MiB). Smaller filters stay in cache: replay of the bench's mix was 4-5% faster
/// than with 8 bits a name (2 MiB) and 3% faster than with 2 (interleaved pairs).
const FILTER_BITS_PER_NAME: usize = 4;

/// The filter words of `table` (a power of two of them, at least one), as
/// [`DomainTrails::mapped`] expects them stored: a bit for each name.
pub(crate) fn filter_words(table: &StrTable) -> Vec<u64> {
    let hashes = table.iter().map(|(key, _)| KeyHasher::hash(key));
    key_filter::build(table.len(), FILTER_BITS_PER_NAME, hashes)
}

/// `(?i)^([rd]?ns|nf|mx|nic)\d*\.`: a name-server or mail-exchanger looking name.
fn is_ns_like(q: &[u8]) -> bool {
    let rest = ["rns", "dns", "ns", "nf", "mx", "nic"]
        .iter()
        .find_map(|p| q.strip_prefix(p.as_bytes()));
    let Some(rest) = rest else {
        return false;
    };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    rest.get(digits) == Some(&b'.')
}

/// A query name after [`Name::parse`]: lowercased, `:port` and a trailing dot dropped, with
/// the hashes of its shortest suffixes that start a label, from one backwards pass.
struct Name<'b> {
    text: &'b str,
    /// (start, hash) of the shortest [`PREFETCH_SUFFIXES`] label suffixes, shortest first.
    suffixes: [(usize, u64); PREFETCH_SUFFIXES],
    n: usize,
    /// Where the pass stopped recording (the start of the last recorded suffix) and the
    /// hasher state there: a name with more labels carries on from it.
    rest: (usize, KeyHasher),
    /// Start of the leftmost `onion` label with a dot on each side.
    onion: Option<usize>,
    /// Whether a three-byte window of the name may start a regex trail's required literal
    /// (always true without a trigram bitmap).
    regex_hint: bool,
}

impl<'b> Name<'b> {
    /// Lowercases `query` into `buf`, drops a `:port` suffix and a trailing dot, and checks it
    /// is a DNS name (letters, digits, `-`, `_`, `.`, with at least one dot and a non-empty
    /// last label) that is not an IP; hashes its suffixes in the same (backwards) pass.
    #[inline]
    fn parse(
        query: &str,
        buf: &'b mut [u8; MAX_NAME],
        trigrams: Option<&Trigrams>,
    ) -> Option<Self> {
        // One loop per case, the bitmap test compiled in or out: no per-byte branch on it.
        match trigrams {
            Some(t) => Self::parse_with(query, buf, false, |w| t.test(w)),
            None => Self::parse_with(query, buf, true, |_| false),
        }
    }

    /// [`Name::parse`] with `may_start_literal` the trigram test of a window, and
    /// `regex_hint` its start value. Always inlined: the `Name` is then built in the
    /// caller's frame instead of copied out of this one.
    #[inline(always)]
    fn parse_with(
        query: &str,
        buf: &'b mut [u8; MAX_NAME],
        mut regex_hint: bool,
        may_start_literal: impl Fn(u32) -> bool,
    ) -> Option<Self> {
        let q = query.as_bytes();
        let q = q.get(..memchr::memchr(b':', q).unwrap_or(q.len()))?;
        let q = q.strip_suffix(b".").unwrap_or(q);
        // Maltrail's VALID_DNS_NAME_REGEX wants a non-empty last label.
        if q.is_empty() || q.len() > MAX_NAME || q.last() == Some(&b'.') {
            return None;
        }
        let out = buf.get_mut(..q.len())?;
        let mut suffixes = [(0usize, 0u64); PREFETCH_SUFFIXES];
        let mut n = 0;
        let mut rest = (0, KeyHasher::new());
        let mut h = KeyHasher::new();
        let mut onion = None;
        let mut window = Trigrams::START;
        // End (exclusive) of the label to the right of the bytes read so far: the dot found
        // last, or the end of the name.
        let mut label_end = q.len();
        // Only the work each byte needs (the digits-only test and the dot flag come after
        // the pass), and a plain countdown (a reversed range compiled to more loop
        // bookkeeping): the loop's state stays in registers.
        let mut i = q.len();
        while i > 0 {
            i -= 1;
            let l = name_byte_lower(q[i]);
            if l == 0 {
                return None;
            }
            out[i] = l;
            window = Trigrams::push(window, l);
            regex_hint |= may_start_literal(window);
            if l == b'.' {
                // The label right of this dot starts at i + 1: its suffix is hashed whole.
                let start = i + 1;
                if n < PREFETCH_SUFFIXES {
                    suffixes[n] = (start, h.finish());
                    n += 1;
                    rest = (start, h);
                }
                // `.onion.` at i (the leftmost one wins: the pass goes leftwards).
                if label_end < q.len()
                    && label_end - start == 5
                    && out.get(start..label_end) == Some(b"onion")
                {
                    onion = Some(start);
                }
                label_end = i;
            }
            h.push(l);
        }
        // A dot seen: the first one always records its suffix.
        let dotted = n > 0;
        // The whole name: the longest suffix.
        if n < PREFETCH_SUFFIXES {
            suffixes[n] = (0, h.finish());
            n += 1;
            rest = (0, h);
        }
        // Name bytes from `.` to `9` are `.` and the digits (`/` is not a name byte); most
        // names stop at their first byte.
        let not_digit_or_dot = out.iter().any(|&l| l.wrapping_sub(b'.') > b'9' - b'.');
        if !not_digit_or_dot || !dotted {
            return None;
        }
        debug_assert!(out.is_ascii());
        // SAFETY: every byte of `out` is a non-zero `name_byte_lower` (ASCII letters, digits,
        // `.`, `-`, `_`, lowercased): ASCII, hence UTF-8. Skips a validation pass per
        // name.
        let text = unsafe { std::str::from_utf8_unchecked(out) };
        Some(Name {
            text,
            suffixes,
            n,
            rest,
            onion,
            regex_hint,
        })
    }
}

impl DomainTrails {
    /// Domain trails of a table built in memory (its probe filter built here).
    pub(crate) fn new(table: StrTable, regexes: RegexTrails, flags: Vec<u8>) -> Self {
        let filter = KeyFilter::owned(filter_words(&table), table.len());
        DomainTrails {
            table,
            filter,
            regexes,
            flags,
        }
    }

    /// Domain trails of a table in a compiled set, with its probe filter stored there:
    /// `range` of `bytes` holds [`filter_words`] of the table (u64 LE, 8-aligned).
    pub(crate) fn mapped(
        table: StrTable,
        bytes: SharedBytes,
        range: Range<usize>,
        regexes: RegexTrails,
        flags: Vec<u8>,
    ) -> Result<Self, LayoutError> {
        let filter = KeyFilter::mapped(bytes, range, table.len(), "domain filter size")?;
        Ok(DomainTrails {
            table,
            filter,
            regexes,
            flags,
        })
    }

    /// Whether the probe filter answers for the table (built or stored for it).
    #[cfg(test)]
    pub(crate) fn filter_active(&self) -> bool {
        self.filter.for_table(self.table.len()).is_some()
    }

    /// Number of name trails (regex trails not included).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether there are no name trails.
    pub fn is_empty(&self) -> bool {
        self.table.len() == 0
    }

    /// Heap bytes of the name table (arena and index) and of its probe filter; 0 if mapped.
    pub fn heap_bytes(&self) -> usize {
        self.table.heap_bytes() + self.filter.heap_bytes()
    }

    /// Total length of the stored names.
    pub fn text_bytes(&self) -> usize {
        self.table.key_bytes()
    }

    /// Iterates over (name, label) in no particular order (for exporting to other tables).
    pub fn iter(&self) -> impl Iterator<Item = (&str, LabelId)> + '_ {
        self.table
            .iter()
            .map(|(k, l)| (std::str::from_utf8(k).unwrap_or(""), l))
    }

    /// Exact lookup of a trail name (lowercase it first; no parent or regex matching).
    pub fn contains(&self, name: &str) -> Option<LabelId> {
        self.table.get(name.as_bytes())
    }

    fn flags(&self, label: LabelId) -> u8 {
        self.flags.get(label as usize).copied().unwrap_or(0)
    }

    /// Maltrail's DNS trail check. Allocates only for the trail text of a hit.
    ///
    /// In order: `<name>.ip-adress.com` where `<name>` is a trail; the name or its nearest
    /// listed parent (printed `(sub).parent.tld`), except that an `ns1.`-like name under a
    /// suspicious/sinkhole trail and the bare or `www.` name of a dynamic-DNS/free-web trail
    /// are skipped; the leftmost regex trail match (printed `(pre)match(suf)`); and
    /// `<name>.onion.<gateway>` where `<name>.onion` is a trail (printed `x.onion(.to)`).
    pub fn lookup(&self, query: &str) -> Option<DomainMatch> {
        let mut buf = [0u8; MAX_NAME];
        let name = Name::parse(query, &mut buf, self.regexes.trigrams())?;
        self.prefetch_suffixes(&name);
        self.lookup_parsed(&name)
    }

    /// `query`'s whitelist verdict ([`Whitelist::is_domain_whitelisted`]) and, unless it is
    /// whitelisted, its [`DomainTrails::lookup`] result, from one pass over the name: the
    /// whitelist is probed with the suffix hashes the lookup computes anyway.
    pub fn lookup_whitelisted(
        &self,
        query: &str,
        whitelist: &Whitelist,
    ) -> (bool, Option<DomainMatch>) {
        let mut buf = [0u8; MAX_NAME];
        let pending = self.begin_lookup(query, whitelist, &mut buf);
        (pending.whitelisted(), self.finish_lookup(&pending))
    }

    /// [`DomainTrails::lookup_whitelisted`]'s first step: parses `query` into `buf`, takes
    /// its whitelist verdict and, unless whitelisted, prefetches the probe filter's words of
    /// its suffixes. [`DomainTrails::finish_lookup`] then reads them and probes the table
    /// for the suffixes they pass: work done between the two steps overlaps the filter's
    /// cache misses (1 MiB for a million names, read at random).
    pub(crate) fn begin_lookup<'b>(
        &self,
        query: &str,
        whitelist: &Whitelist,
        buf: &'b mut NameBuf,
    ) -> PendingName<'b> {
        let Some(name) = Name::parse(query, buf, self.regexes.trigrams()) else {
            // Not a name the trails can hold (IP literal, invalid bytes, no dot, ...): the
            // whitelist reads such text its own way.
            return PendingName {
                name: None,
                whitelisted: whitelist.is_domain_whitelisted(query),
            };
        };
        // The parse's text is the whitelist's reading of the query (cut at `:`, lowercased,
        // no trailing dot); its hashes cover every label when the name has at most
        // PREFETCH_SUFFIXES labels.
        let whitelisted = if name.rest.0 == 0 {
            whitelist.is_listed_suffixes(name.text.as_bytes(), &name.suffixes[..name.n])
        } else {
            whitelist.is_domain_whitelisted(query)
        };
        if whitelisted {
            return PendingName {
                name: None,
                whitelisted,
            };
        }
        self.prefetch_suffixes(&name);
        PendingName {
            name: Some(name),
            whitelisted,
        }
    }

    /// [`DomainTrails::lookup_whitelisted`]'s second step: the trail hit of a name
    /// [`DomainTrails::begin_lookup`] did not find whitelisted.
    pub(crate) fn finish_lookup(&self, pending: &PendingName<'_>) -> Option<DomainMatch> {
        pending.name.as_ref().and_then(|n| self.lookup_parsed(n))
    }

    /// Asks for the filter words of the shortest [`PREFETCH_SUFFIXES`] suffixes of `name`
    /// (without a filter, their index entries), so that the suffix walk's reads overlap.
    fn prefetch_suffixes(&self, name: &Name<'_>) {
        let suffixes = name.suffixes.get(..name.n).unwrap_or_default();
        let hashes = suffixes.iter().map(|&(_, hash)| hash);
        match self.filter.for_table(self.table.len()) {
            Some(words) => hashes.for_each(|h| prefetch_bit(words, h)),
            None => self.table.prefetch(hashes),
        }
    }

    /// [`DomainTrails::lookup`] after the parse (and the prefetch of its suffixes).
    fn lookup_parsed(&self, name: &Name<'_>) -> Option<DomainMatch> {
        let q = name.text;

        if let Some(prefix) = q.strip_suffix(".ip-adress.com") {
            if let Some(label) = self.table.get(prefix.as_bytes()) {
                return Some(DomainMatch {
                    trail: format!("{prefix}(.ip-adress.com)"),
                    label,
                });
            }
        }

        if let Some(m) = self.suffix_walk(name) {
            return Some(m);
        }

        if let Some((start, end, label)) = self.regexes.search(q, name.regex_hint) {
            // Maltrail: `(prefix)match(suffix)` with `.replace(".)", ").")` (names hold no
            // parenthesis: only a group's end can follow a dot), written in one pass.
            let mut trail = String::with_capacity(q.len() + 4);
            if start > 0 {
                push_group(&mut trail, &q[..start]);
            }
            trail.push_str(&q[start..end]);
            if end < q.len() {
                push_group(&mut trail, &q[end..]);
            }
            return Some(DomainMatch { trail, label });
        }

        // `<name>.onion.<gateway>`: the leftmost `.onion.`, found by the parse.
        if let Some(i) = name.onion {
            let (onion, gateway) = q.split_at(i + "onion".len());
            if let Some(label) = self.table.get(onion.as_bytes()) {
                return Some(DomainMatch {
                    trail: format!("{onion}({gateway})"),
                    label,
                });
            }
        }
        None
    }

    /// The name itself, then each parent, longest first: the longest listed suffix that
    /// passes the exceptions. The suffix hashes come from the parse's backwards pass
    /// (shortest suffix first, the last acceptable hit kept), so a miss allocates nothing.
    fn suffix_walk(&self, name: &Name<'_>) -> Option<DomainMatch> {
        let q = name.text;
        let qb = q.as_bytes();
        let ns_like = is_ns_like(qb);
        let www = qb.starts_with(b"www.");
        // The shortest PREFETCH_SUFFIXES suffixes first (their filter words prefetched by
        // `lookup` or `begin_lookup` before `lookup_parsed`); a name with more labels carries
        // on with the same backwards pass. A suffix the filter rules out is not probed.
        let suffixes = name.suffixes.get(..name.n).unwrap_or_default();
        // Shortest first, the last acceptable hit kept: the longest one.
        let mut best: Option<(usize, LabelId)> = None;
        let filter = self.filter.for_table(self.table.len());
        let mut consider = |start: usize, hash: u64| {
            if !may_hold(filter, hash) {
                return;
            }
            let Some(label) = self.table.get_hashed(hash, &qb[start..], &[]) else {
                return;
            };
            let flags = self.flags(label);
            // e.g. ns2.nobel.su under a suspicious nobel.su: name servers of listed domains
            // are not themselves worth an event.
            if ns_like && flags & FLAG_SUSPICIOUS_OR_SINKHOLE != 0 {
                return;
            }
            // e.g. noip.com (dynamic DNS): the provider's own site is not an event.
            if (start == 0 || www) && flags & FLAG_DYNAMIC_OR_FREE_WEB != 0 {
                return;
            }
            best = Some((start, label));
        };
        for &(start, hash) in suffixes {
            consider(start, hash);
        }
        let (mut i, mut h) = name.rest;
        while i > 0 {
            i -= 1;
            h.push(qb[i]);
            if i == 0 || qb[i - 1] == b'.' {
                consider(i, h.finish());
            }
        }
        let (start, label) = best?;
        let trail = if start == 0 {
            q.to_owned()
        } else {
            // query[..start-1] is the unmatched prefix, without its dot.
            format!("({}).{}", &q[..start - 1], &q[start..])
        };
        Some(DomainMatch { trail, label })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trails::classify::is_name_byte;

    /// A table with labels: 0 malware, 1 suspicious, 2 sinkhole, 3 dynamic dns, 4 free web.
    fn trails(names: &[(&str, LabelId)], regexes: &[(&str, LabelId)]) -> DomainTrails {
        let mut table = StrTable::default();
        for (n, l) in names {
            table.insert(n.as_bytes(), *l);
        }
        let regexes = RegexTrails::new(
            regexes
                .iter()
                .map(|(r, l)| (Regex::new(r).unwrap(), *l))
                .collect(),
        );
        let mut d = DomainTrails::new(table, regexes, Vec::new());
        d.flags = [
            "malware (test)",
            "parking site (suspicious)",
            "sinkhole testsink (malware)",
            "dynamic dns (suspicious)",
            "free web hosting",
        ]
        .iter()
        .map(|i| label_flags(i))
        .collect();
        d.flags[3] = FLAG_DYNAMIC_OR_FREE_WEB; // dynamic only, to test rule (b) alone
        d
    }

    fn hit(d: &DomainTrails, q: &str) -> Option<(String, LabelId)> {
        d.lookup(q).map(|m| (m.trail, m.label))
    }

    fn s(t: &str, l: LabelId) -> Option<(String, LabelId)> {
        Some((t.to_owned(), l))
    }

    #[test]
    fn the_probe_filter_hides_no_trail() {
        // Names of one, two and three labels under a few parents; queries for each, for
        // subdomains of each and for names no trail covers, answered with the filter and
        // by the same table without one (a filter built for another key count rules
        // nothing out).
        let names: Vec<(String, LabelId)> = (0..3_000u32)
            .map(|i| match i % 3 {
                0 => (format!("n{i}.example"), 0),
                1 => (format!("a{i}.b{}.example", i % 7), 0),
                _ => (format!("host{i}"), 0),
            })
            .collect();
        let refs: Vec<(&str, LabelId)> = names.iter().map(|(n, l)| (n.as_str(), *l)).collect();
        let filtered = trails(&refs, &[]);
        assert!(filtered.filter_active());
        let mut plain = trails(&refs, &[]);
        plain.filter = KeyFilter::default();
        let mut hits = 0;
        for (i, (n, _)) in names.iter().enumerate() {
            for q in [
                n.clone(),
                format!("www.{n}"),
                format!("x{i}.y.{n}"),
                // More labels than the parse hashes ahead: the walk hashes the rest itself.
                format!("a.b.c.d.e.f.g.h.i{i}.{n}"),
                format!("absent{i}.example"),
                format!("{n}.absent"),
            ] {
                let want = plain.lookup(&q).map(|m| (m.trail, m.label));
                hits += usize::from(want.is_some());
                assert_eq!(filtered.lookup(&q).map(|m| (m.trail, m.label)), want, "{q}");
            }
        }
        // Every stored dotted name and its three subdomains hit; a bare label is no name, but
        // its three subdomains hit it.
        assert_eq!(hits, 2_000 * 4 + 1_000 * 3);
    }

    #[test]
    fn exact_and_parent() {
        let d = trails(
            &[
                ("evil-test-domain.com", 0),
                ("evil-parent.com", 0),
                ("sub.evil-parent.com", 0),
                ("evil.com", 0),
            ],
            &[],
        );
        assert_eq!(
            hit(&d, "evil-test-domain.com"),
            s("evil-test-domain.com", 0)
        );
        assert_eq!(
            hit(&d, "EVIL-test-domain.com."),
            s("evil-test-domain.com", 0)
        );
        assert_eq!(
            hit(&d, "evil-test-domain.com:53"),
            s("evil-test-domain.com", 0)
        );
        assert_eq!(
            hit(&d, "www.evil-parent.com"),
            s("(www).evil-parent.com", 0)
        );
        // The longest listed suffix wins.
        assert_eq!(
            hit(&d, "x.sub.evil-parent.com"),
            s("(x).sub.evil-parent.com", 0)
        );
        assert_eq!(hit(&d, "a.b.evil.com"), s("(a.b).evil.com", 0));
        assert_eq!(hit(&d, "notevil.com"), None);
        assert_eq!(hit(&d, "com"), None);
        assert_eq!(hit(&d, "evil.com.org"), None);
        assert_eq!(d.contains("evil.com"), Some(0));
        assert_eq!(d.contains("a.evil.com"), None);
    }

    #[test]
    fn invalid_queries() {
        let d = trails(&[("1.2.3.4", 0), ("evil.com", 0)], &[]);
        assert_eq!(hit(&d, "1.2.3.4"), None);
        assert_eq!(hit(&d, "bad name.evil.com"), None);
        assert_eq!(hit(&d, "évil.evil.com"), None);
        assert_eq!(hit(&d, ""), None);
        assert_eq!(hit(&d, "."), None);
        assert_eq!(hit(&d, &"a.".repeat(200)), None);
        assert_eq!(hit(&d, "_dmarc.evil.com"), s("(_dmarc).evil.com", 0));
    }

    #[test]
    fn ns_exception() {
        let d = trails(
            &[
                ("nobel.su", 1),
                ("sinky.net", 2),
                ("evil.com", 0),
                ("ns1.listed.org", 1),
            ],
            &[],
        );
        assert_eq!(hit(&d, "ns2.nobel.su"), None);
        assert_eq!(hit(&d, "rns.nobel.su"), None);
        assert_eq!(hit(&d, "dns12.nobel.su"), None);
        assert_eq!(hit(&d, "mx.sinky.net"), None);
        assert_eq!(hit(&d, "nic.sinky.net"), None);
        assert_eq!(hit(&d, "nf3.sinky.net"), None);
        assert_eq!(hit(&d, "ns1.listed.org"), None);
        // Not ns-like, or not suspicious/sinkhole: reported.
        assert_eq!(hit(&d, "nsa.nobel.su"), s("(nsa).nobel.su", 1));
        assert_eq!(hit(&d, "www.nobel.su"), s("(www).nobel.su", 1));
        assert_eq!(hit(&d, "ns1.evil.com"), s("(ns1).evil.com", 0));
        assert_eq!(hit(&d, "nobel.su"), s("nobel.su", 1));
    }

    #[test]
    fn dynamic_and_free_web_exception() {
        let d = trails(&[("noip.com", 3), ("freehost.net", 4)], &[]);
        assert_eq!(hit(&d, "noip.com"), None);
        assert_eq!(hit(&d, "www.noip.com"), None);
        assert_eq!(hit(&d, "freehost.net"), None);
        assert_eq!(hit(&d, "badguy.noip.com"), s("(badguy).noip.com", 3));
        assert_eq!(hit(&d, "x.freehost.net"), s("(x).freehost.net", 4));
    }

    #[test]
    fn skipped_hit_keeps_walking() {
        // www.noip.com is itself listed as malware: the exception skips noip.com only.
        let d = trails(&[("noip.com", 3), ("x.y.noip.com", 0)], &[]);
        assert_eq!(hit(&d, "www.x.y.noip.com"), s("(www).x.y.noip.com", 0));
        let d = trails(&[("x.noip.com", 3), ("noip.com", 0)], &[]);
        assert_eq!(hit(&d, "x.noip.com"), s("(x).noip.com", 0));
    }

    #[test]
    fn names_with_more_labels_than_prefetched() {
        // Suffixes past the first PREFETCH_SUFFIXES are walked as well, longest still first.
        let d = trails(&[("a.b.c.d.e.f.g.h.i.evil.com", 0), ("i.evil.com", 1)], &[]);
        let long = "x.y.z.a.b.c.d.e.f.g.h.i.evil.com";
        assert!(long.split('.').count() > PREFETCH_SUFFIXES + 2);
        assert_eq!(hit(&d, long), s("(x.y.z).a.b.c.d.e.f.g.h.i.evil.com", 0));
        assert_eq!(
            hit(&d, "x.y.z.a.b.c.d.e.f.g.h2.i.evil.com"),
            s("(x.y.z.a.b.c.d.e.f.g.h2).i.evil.com", 1)
        );
        let d = trails(&[(long, 2)], &[]);
        assert_eq!(hit(&d, long), s(long, 2));
        assert_eq!(hit(&d, &long[2..]), None);
    }

    #[test]
    fn ip_adress_com() {
        let d = trails(&[("evilname", 0)], &[]);
        assert_eq!(
            hit(&d, "evilname.ip-adress.com"),
            s("evilname(.ip-adress.com)", 0)
        );
        assert_eq!(hit(&d, "other.ip-adress.com"), None);
    }

    #[test]
    fn regex_trails() {
        let d = trails(
            &[],
            &[
                (r"dga[0-9]+\.wildcard-test\.com", 0),
                (r"^[a-z]{1,3}\-leboncoin\.(com|info)$", 1),
                (r"seek[0-9]+\.(mootseek|zootseek)\.com", 2),
            ],
        );
        assert_eq!(
            hit(&d, "dga1234.wildcard-test.com"),
            s("dga1234.wildcard-test.com", 0)
        );
        assert_eq!(
            hit(&d, "www.dga1234.wildcard-test.com"),
            s("(www).dga1234.wildcard-test.com", 0)
        );
        assert_eq!(
            hit(&d, "dga1.wildcard-test.com.evil.org"),
            s("dga1.wildcard-test.com(.evil.org)", 0)
        );
        assert_eq!(hit(&d, "ab-leboncoin.com"), s("ab-leboncoin.com", 1));
        assert_eq!(hit(&d, "x.abcd-leboncoin.com"), None);
        assert_eq!(
            hit(&d, "a.seek12.zootseek.com"),
            s("(a).seek12.zootseek.com", 2)
        );
        assert_eq!(hit(&d, "dga.wildcard-test.com"), None);
    }

    #[test]
    fn regex_leftmost_then_first() {
        let d = trails(&[], &[(r"b\.c", 1), (r"a\.b", 2), (r"a\.b\.c", 3)]);
        // Leftmost start wins; on a tie, the first listed regex (like one alternation).
        assert_eq!(hit(&d, "a.b.c"), s("a.b(.c)", 2));
        // `.)` becomes `).`: the dot belongs to the printed prefix.
        let d = trails(&[], &[(r"evil[0-9]", 1)]);
        assert_eq!(hit(&d, "x.evil1.com"), s("(x).evil1(.com)", 1));
        let d = trails(&[], &[(r"evil\.", 1)]);
        assert_eq!(hit(&d, "x.evil.com"), s("(x).evil.(com)", 1));
        // The longest name, matched in the middle.
        let (a, c) = ("a".repeat(63), "c".repeat(63));
        let name = format!("{a}.{a}.evil7.{c}.{}.com", "d".repeat(51));
        assert_eq!(name.len(), 253);
        let d = trails(&[], &[(r"evil[0-9]", 1)]);
        let start = name.find("evil7").unwrap_or_default();
        let end = start + "evil7".len();
        let maltrail = format!(
            "({}){}({})",
            &name[..start],
            &name[start..end],
            &name[end..]
        )
        .replace(".)", ").");
        assert_eq!(hit(&d, &name), s(&maltrail, 1));
    }

    #[test]
    fn names_win_over_regexes() {
        let d = trails(&[("evil.com", 0)], &[(r"e[a-z]+l\.com", 1)]);
        assert_eq!(hit(&d, "evil.com"), s("evil.com", 0));
        assert_eq!(hit(&d, "eveel.com"), s("eveel.com", 1));
    }

    #[test]
    fn onion_gateway() {
        let d = trails(&[("badsite.onion", 0)], &[]);
        assert_eq!(hit(&d, "badsite.onion.to"), s("badsite.onion(.to)", 0));
        assert_eq!(hit(&d, "badsite.onion.ws.x"), s("badsite.onion(.ws.x)", 0));
        // A plain parent match covers the .onion name itself and its subdomains.
        assert_eq!(hit(&d, "badsite.onion"), s("badsite.onion", 0));
        assert_eq!(hit(&d, "good.onion.to"), None);
    }

    /// The one-pass verdict and hit agree with asking the whitelist and the lookup apart.
    #[test]
    fn lookup_whitelisted_matches_separate_calls() {
        let names = [("evil.com", 0), ("a.b.c.d.e.f.g.h.i.j.bad.org", 0)];
        // Regexes with a required literal only (the trigram hint decides), and then one
        // without a usable literal too (every name is a candidate).
        let literal = [("nutqauytva[0-9a-z]+\\.com", 1)];
        let mixed = [
            ("nutqauytva[0-9a-z]+\\.com", 1),
            ("(?i)^[a-z]{2}\\.[0-9]+\\.net$", 2),
        ];
        for d in [
            trails(&names, &[]),
            trails(&names, &literal),
            trails(&names, &mixed),
        ] {
            check_lookup_whitelisted(&d);
        }
        assert!(trails(&names, &literal)
            .lookup("www.nutqauytvax.com")
            .is_some());
        let d = trails(&names, &mixed);
        assert!(d.lookup("AB.12.NET").is_some() && d.lookup("abc.12.net").is_none());
    }

    fn check_lookup_whitelisted(d: &DomainTrails) {
        let w = Whitelist::parse("good.evil.com\nsafe.org\n1.2.3.4\nx_y.net\n");
        let long = "x.a.b.c.d.e.f.g.h.i.j.bad.org";
        for q in [
            "ab",
            "A.NUTQAUYTVA1.COM.",
            "nutqauytva1.com:443",
            "www.nutqauytvax.com",
            "ab.12.net",
            "AB.12.NET",
            "abc.12.net",
            "evil.com",
            "EVIL.com.",
            "good.evil.com",
            "x.GOOD.evil.com:80",
            "safe.org",
            "a.b.c.d.e.f.g.h.i.j.k.safe.org",
            long,
            "1.2.3.4",
            "x_y.net",
            "bad name.evil.com",
            "",
            "com",
        ] {
            let wl = w.is_domain_whitelisted(q);
            let want = (wl, if wl { None } else { d.lookup(q) });
            assert_eq!(d.lookup_whitelisted(q, &w), want, "{q}");
        }
    }

    #[test]
    fn ns_like() {
        for q in [
            "ns.x", "ns1.x", "rns.x", "dns22.x", "nf.x", "mx0.x", "nic.x",
        ] {
            assert!(is_ns_like(q.as_bytes()), "{q}");
        }
        for q in ["nsa.x", "ns-1.x", "x.ns1.y", "mxx.x", "ns1"] {
            assert!(!is_ns_like(q.as_bytes()), "{q}");
        }
    }

    /// The separate passes `Name::parse` replaced (normalise, then the onion search), as the
    /// reference: (name, start of the `onion` label of the leftmost `.onion.`).
    fn parse_reference(query: &str) -> Option<(String, Option<usize>)> {
        let q = query.split(':').next().unwrap_or(query);
        let q = q.strip_suffix('.').unwrap_or(q).as_bytes();
        if q.is_empty() || q.len() > MAX_NAME || !q.iter().all(|&b| is_name_byte(b)) {
            return None;
        }
        let out = q.to_ascii_lowercase();
        if out.iter().all(|b| b.is_ascii_digit() || *b == b'.') {
            return None;
        }
        let last_dot = out.iter().rposition(|&b| b == b'.')?;
        if last_dot + 1 == out.len() {
            return None;
        }
        let onion = memchr::memchr_iter(b'.', &out)
            .find(|&i| {
                out.get(i..)
                    .is_some_and(|rest| rest.starts_with(b".onion."))
            })
            .map(|i| i + 1);
        Some((String::from_utf8(out).ok()?, onion))
    }

    #[test]
    fn parse_matches_the_reference() {
        let long = format!("{}.com", "a.".repeat(130));
        let names = [
            "",
            ".",
            "..",
            "a",
            "a.",
            "a..",
            ".a",
            "a.b",
            "A.B.",
            "a.b:53",
            "a.b.:8080",
            ":a.b",
            "1.2.3.4",
            "1.2.3.4.",
            "1.2.3.a",
            "a_b.c-d.e",
            "a b.c",
            "ü.com",
            "a.b..",
            "x.onion.to",
            "a.onion.b.onion.c",
            "onion.to",
            "a.onion",
            "a.ONION.to",
            "a..onion.to",
            "a.onion..to",
            "b.xonion.to",
            "a.b.c.d.e.f.g.h.i.j.k.l",
            &long,
        ];
        for q in names {
            let mut buf = [0u8; MAX_NAME];
            let name = Name::parse(q, &mut buf, None);
            if let Some(n) = &name {
                // The shortest label suffixes, shortest first, with their table hashes.
                let t = n.text.as_bytes();
                let starts: Vec<usize> = (0..t.len())
                    .rev()
                    .filter(|&i| i == 0 || t[i - 1] == b'.')
                    .take(PREFETCH_SUFFIXES)
                    .collect();
                let got: Vec<(usize, u64)> = n.suffixes[..n.n].to_vec();
                let want: Vec<(usize, u64)> = starts
                    .iter()
                    .map(|&i| (i, KeyHasher::hash(&t[i..])))
                    .collect();
                assert_eq!(got, want, "{q:?}");
                assert_eq!(n.rest.0, *starts.last().unwrap_or(&0), "{q:?}");
            }
            let got = name.map(|n| (n.text.to_owned(), n.onion));
            assert_eq!(got, parse_reference(q), "{q:?}");
        }
    }
}
