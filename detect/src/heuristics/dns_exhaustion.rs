//! DNS exhaustion (random-subdomain / water-torture attacks, DNS tunnels): at least the
//! threshold (Maltrail: 1000) distinct subdomains of one base domain within the window
//! (60 s). One event per base domain per window.
//!
//! Bounded: at most `max_domains` base domains are tracked (a two-generation map), and each
//! remembers at most `threshold` subdomain hashes (8 bytes each).

use hashbrown::{DefaultHashBuilder, HashSet};

use super::bounded::{hash_bytes, BoundedMap};
use super::names::split_base;

/// Info of the event.
pub const INFO: &str = "potential dns exhaustion (suspicious)";

/// Base domains of reputation lists queried with many distinct names by design.
const LOOKUP_SERVICES: &[&str] = &[
    "spamhaus.org",
    "spamcop.net",
    "sorbs.net",
    "barracudacentral.org",
    "surbl.org",
    "uribl.com",
    "mailspike.net",
    "senderscore.com",
    "dnswl.org",
    "abuseat.org",
    "team-cymru.org",
    "cymru.com",
];

/// Distinct subdomains a window keeps in its entry before it spills to a set: most base
/// domains are asked for one or a few names within a window, so their windows allocate
/// nothing and a query reads no memory but the entry.
const INLINE_SUBS: usize = 3;

#[derive(Debug)]
struct Window {
    start_us: i64,
    /// The first distinct subdomain hashes (`inline_len` of them); the others in `spill`.
    inline: [u64; INLINE_SUBS],
    inline_len: u8,
    alerted: bool,
    spill: HashSet<u64>,
}

impl Window {
    fn new(start_us: i64) -> Self {
        Window {
            start_us,
            inline: [0; INLINE_SUBS],
            inline_len: 0,
            alerted: false,
            spill: HashSet::new(),
        }
    }

    /// Distinct subdomains remembered.
    fn len(&self) -> usize {
        usize::from(self.inline_len) + self.spill.len()
    }

    /// Remembers `item` (a subdomain's hash) unless it is already.
    fn insert(&mut self, item: u64) {
        let n = usize::from(self.inline_len);
        if self
            .inline
            .get(..n)
            .is_some_and(|held| held.contains(&item))
        {
            return;
        }
        match self.inline.get_mut(n) {
            Some(slot) => {
                *slot = item;
                self.inline_len += 1;
            }
            None => {
                self.spill.insert(item);
            }
        }
    }
}

/// The per-base-domain subdomain sets, keyed by the base domain's 64-bit hash (the event's
/// trail is written from the query's own name): a lookup compares 8 bytes in the entry
/// instead of a string elsewhere in memory.
#[derive(Debug)]
pub struct DnsExhaustion {
    domains: BoundedMap<u64, Window>,
    hasher: DefaultHashBuilder,
}

impl DnsExhaustion {
    /// Tracks at most `max_domains` base domains.
    pub fn new(max_domains: usize) -> Self {
        DnsExhaustion {
            domains: BoundedMap::new(max_domains),
            hasher: DefaultHashBuilder::default(),
        }
    }

    /// Subdomain hashes remembered over all base domains.
    pub fn subdomains(&self) -> usize {
        self.domains.values().map(Window::len).sum()
    }

    /// Base domains tracked.
    pub fn domains(&self) -> usize {
        self.domains.len()
    }

    /// Base domains' windows dropped to make room so far.
    pub fn evicted(&self) -> u64 {
        self.domains.evicted()
    }

    /// Counts a query for `name`; returns the trail when its base domain just reached the
    /// threshold of distinct subdomains within the window.
    pub fn observe(
        &mut self,
        name: &str,
        ts_us: i64,
        threshold: usize,
        window_us: i64,
    ) -> Option<String> {
        let (sub, base) = split_base(name);
        if sub.is_empty() || is_excluded(name, sub, base) {
            return None;
        }
        let item = hash_bytes(&self.hasher, sub.as_bytes());
        let key = hash_bytes(&self.hasher, base.as_bytes());
        let w = self
            .domains
            .value_or_insert_with(&key, || key, || Window::new(ts_us));
        if ts_us.saturating_sub(w.start_us) > window_us {
            w.start_us = ts_us;
            w.inline_len = 0;
            w.spill.clear();
            w.alerted = false;
        }
        if w.alerted {
            return None;
        }
        if w.len() < threshold {
            w.insert(item);
        }
        if w.len() >= threshold.max(1) {
            w.alerted = true;
            // The set is no longer needed this window: give the memory back.
            w.inline_len = 0;
            w.spill = HashSet::new();
            return Some(format!("({sub}).{base}"));
        }
        None
    }
}

/// Reverse-address style names (`1-2-3-4.isp.example`), reputation-list lookups (a label
/// ending in `bl`, such as `dnsbl`, `rbl`, `sbl-xbl`) and known lookup services, for `name`
/// split by [`split_base`] into `sub` and `base`. No string splitting: names are short, and
/// most are ruled out by their first byte or two and the bytes before their dots.
fn is_excluded(name: &str, sub: &str, base: &str) -> bool {
    debug_assert!(name.len() == sub.len() + 1 + base.len());
    // A label of `sub` or of `base` ends in `bl` exactly when one of `name` does (`sub`'s
    // last label ends at the dot before `base`): one pass over the name.
    is_dashed_address(sub.as_bytes())
        || has_bl_label(name.as_bytes())
        || LOOKUP_SERVICES.contains(&base)
}

/// Whether the first label of `name` is four non-empty runs of digits joined by `-`.
fn is_dashed_address(name: &[u8]) -> bool {
    let (mut runs, mut run_len) = (1, 0);
    for &b in name {
        match b {
            b'.' => break,
            b'-' if run_len == 0 => return false,
            b'-' => (runs, run_len) = (runs + 1, 0),
            b'0'..=b'9' => run_len += 1,
            _ => return false,
        }
    }
    runs == 4 && run_len > 0
}

/// Whether a `.`-separated label of `name` ends in `bl`: `bl` before a dot or at the end.
/// The dots are found eight bytes at a time: a name has a few, and only those are looked
/// behind.
fn has_bl_label(name: &[u8]) -> bool {
    if name.ends_with(b"bl") {
        return true;
    }
    let bl_before = |dot: usize| dot >= 2 && name.get(dot - 2..dot) == Some(b"bl");
    let mut chunks = name.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(<[u8; 8]>::try_from(chunk).unwrap_or_default());
        if dots(word, |j| bl_before(at + j)) {
            return true;
        }
        at += 8;
    }
    // The last bytes, zero-padded (a zero byte is not a dot).
    let mut tail = [0u8; 8];
    let rest = chunks.remainder();
    tail.get_mut(..rest.len())
        .unwrap_or_default()
        .copy_from_slice(rest);
    dots(u64::from_le_bytes(tail), |j| bl_before(at + j))
}

/// Whether `found` holds for the index of some `.` byte of `word` (little-endian bytes). The
/// zero-byte test on `word ^ "........"` may also flag a byte above a flagged one (a borrow):
/// each candidate is checked to be a dot.
#[inline]
fn dots(word: u64, mut found: impl FnMut(usize) -> bool) -> bool {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
    const DOTS: u64 = u64::from_le_bytes([b'.'; 8]);
    let v = word ^ DOTS;
    let mut m = v.wrapping_sub(ONES) & !v & HIGHS;
    while m != 0 {
        let j = (m.trailing_zeros() / 8) as usize;
        if (word >> (j * 8)) as u8 == b'.' && found(j) {
            return true;
        }
        m &= m - 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    fn run(e: &mut DnsExhaustion, n: usize, base: &str, ts: i64) -> Vec<String> {
        (0..n)
            .filter_map(|i| e.observe(&format!("s{i}.{base}"), ts, 1000, 60 * S))
            .collect()
    }

    #[test]
    fn threshold() {
        let mut e = DnsExhaustion::new(64);
        assert!(run(&mut e, 999, "tunnel.com", 0).is_empty());
        // Repeats do not count.
        assert!(run(&mut e, 999, "tunnel.com", S).is_empty());
        assert_eq!(
            e.observe("s999.tunnel.com", 2 * S, 1000, 60 * S).as_deref(),
            Some("(s999).tunnel.com")
        );
        // Once per window.
        assert_eq!(e.observe("s1000.tunnel.com", 3 * S, 1000, 60 * S), None);
        // Above the threshold in a later window: again.
        let mut e = DnsExhaustion::new(64);
        let hits = run(&mut e, 1001, "other.net", 0);
        assert_eq!(hits, ["(s999).other.net"]);
    }

    /// Distinct subdomains count once whether the window holds them in its entry or past it.
    #[test]
    fn repeats_count_once_in_the_entry_and_past_it() {
        let mut e = DnsExhaustion::new(64);
        let seen = ["s0", "s1", "s2", "s0", "s3", "s1", "s3", "s2", "s3"];
        for sub in seen {
            assert_eq!(e.observe(&format!("{sub}.t.com"), 0, 5, 60 * S), None);
        }
        assert_eq!(e.subdomains(), 4);
        assert_eq!(
            e.observe("s4.t.com", S, 5, 60 * S).as_deref(),
            Some("(s4).t.com")
        );
        assert_eq!(e.subdomains(), 0, "given back once alerted");
        assert_eq!(e.domains(), 1);
    }

    #[test]
    fn the_window_slides_on() {
        let mut e = DnsExhaustion::new(64);
        for i in 0..1500 {
            let ts = i as i64 * S / 10; // 1500 names over 150 s: ~600 per window
            assert_eq!(e.observe(&format!("s{i}.slow.com"), ts, 1000, 60 * S), None);
        }
    }

    #[test]
    fn exclusions() {
        let excluded = |sub: &str, base: &str| is_excluded(&format!("{sub}.{base}"), sub, base);
        assert!(excluded("1-2-3-4", "isp.com"));
        assert!(excluded("4.3.2.1.zen", "spamhaus.org"));
        assert!(excluded("x.dnsbl", "example.org"));
        assert!(!excluded("s1", "tunnel.com"));
        assert!(!excluded("1-2-3", "isp.com"));
    }

    /// The split-based form the byte loops replaced, as the reference.
    fn excluded_reference(sub: &str, base: &str) -> bool {
        let sb = sub.as_bytes();
        let first = sb
            .get(..memchr::memchr(b'.', sb).unwrap_or(sb.len()))
            .unwrap_or(sb);
        let dashed_address = first.split(|&b| b == b'-').count() == 4
            && first
                .split(|&b| b == b'-')
                .all(|p| !p.is_empty() && p.iter().all(u8::is_ascii_digit));
        let bl_label = |name: &[u8]| name.split(|&b| b == b'.').any(|l| l.ends_with(b"bl"));
        dashed_address
            || bl_label(sb)
            || bl_label(base.as_bytes())
            || LOOKUP_SERVICES.contains(&base)
    }

    #[test]
    fn bl_labels_match_the_reference() {
        let reference = |name: &[u8]| name.split(|&b| b == b'.').any(|l| l.ends_with(b"bl"));
        let parts = [
            "", ".", "bl", "b", "l", "x", "..", "bl.", ".bl", "blx", "ü", "\x2e",
        ];
        for a in parts {
            for b in parts {
                for c in parts {
                    for pad in ["", "abcdefg", "abcdefgh.", "1234567.x"] {
                        for name in [format!("{pad}{a}{b}{c}"), format!("{a}{b}{pad}{c}")] {
                            let n = name.as_bytes();
                            assert_eq!(has_bl_label(n), reference(n), "{name:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn exclusions_match_the_reference() {
        let subs = [
            "",
            "1-2-3-4",
            "1-2-3-4.x",
            "1-2-3-4-5",
            "1--2-3",
            "-1-2-3",
            "1-2-3-",
            "1-2-3-a",
            "12-34-56-78.rev",
            "a1-2-3-4",
            "1-2-3.4",
            "bl",
            "b",
            "l",
            "xbl",
            "x.bl",
            "bl.x",
            "blx.y",
            "x.blx",
            "dnsbl.a",
            "a.sbl-xbl",
            "s1",
            "h12",
            "4.3.2.1.zen",
            ".",
            "..bl",
            "bl.",
            "ünï-bl",
        ];
        let bases = [
            "tunnel.com",
            "isp.com",
            "spamhaus.org",
            "rbl.example",
            "examplebl.org",
            "x.bl",
            "bl",
            "cymru.com",
            "bench-site34.net",
        ];
        for sub in subs {
            for base in bases {
                assert_eq!(
                    is_excluded(&format!("{sub}.{base}"), sub, base),
                    excluded_reference(sub, base),
                    "{sub:?} {base:?}"
                );
            }
        }
    }
}
