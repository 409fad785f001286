//! NXDOMAIN heuristics, on responses with rcode 3:
//!
//! - excessive: more than the threshold (Maltrail: 20) NXDOMAIN answers within one clock hour
//!   for the same name, or for any name under the same base domain (`*.base`) — DGA malware
//!   walking its candidate list. The `*.base` trail lists the subdomains seen,
//!   `(nx1,nx2,...).base`;
//! - for a two-label name whose first label has no `-`: Shannon entropy of the first label
//!   above the threshold (3.5 bits) — `entropy threshold`; else more than the threshold (9)
//!   consonants — `consonant threshold`.
//!
//! Bounded: at most `max_counters` counters (a two-generation map); a `*.base` counter lists
//! at most [`MAX_LISTED`] subdomains.

use super::bounded::BoundedMap;
use super::names::split_base;

/// Info of the excessive-NXDOMAIN event.
pub const INFO_EXCESSIVE: &str = "excessive no such domain (suspicious)";
/// Info of the entropy event.
pub const INFO_ENTROPY: &str = "entropy threshold no such domain (suspicious)";
/// Info of the consonant event.
pub const INFO_CONSONANT: &str = "consonant threshold no such domain (suspicious)";

/// Subdomains listed in a `*.base` trail.
pub const MAX_LISTED: usize = 32;
/// One hour in microseconds.
const HOUR_US: i64 = 3_600_000_000;

#[derive(Debug)]
struct Counter {
    hour: i64,
    count: u32,
    listed: Vec<String>,
}

/// The hourly NXDOMAIN counters.
#[derive(Debug)]
pub struct NxDomain {
    counters: BoundedMap<String, Counter>,
}

impl NxDomain {
    /// At most `max_counters` counters.
    pub fn new(max_counters: usize) -> Self {
        NxDomain {
            counters: BoundedMap::new(max_counters),
        }
    }

    /// Counters held.
    pub fn len(&self) -> usize {
        self.counters.len()
    }

    /// Counters dropped to make room so far.
    pub fn evicted(&self) -> u64 {
        self.counters.evicted()
    }

    /// Whether no counter is held.
    pub fn is_empty(&self) -> bool {
        self.counters.is_empty()
    }

    /// Counts an NXDOMAIN for `name`; returns the trail when a counter passes `threshold`
    /// (the counter then starts again).
    pub fn observe(&mut self, name: &str, ts_us: i64, threshold: u32) -> Option<String> {
        let hour = ts_us.div_euclid(HOUR_US);
        let (_, base) = split_base(name);
        let mut wild_buf = [0u8; 260];
        let wild = wildcard(base, &mut wild_buf)?;
        for key in [name, wild] {
            let is_wild = key.starts_with("*.");
            let c = self.counters.value_or_insert_with(
                key,
                || key.to_owned(),
                || Counter {
                    hour,
                    count: 0,
                    listed: Vec::new(),
                },
            );
            if c.hour != hour {
                c.hour = hour;
                c.count = 0;
                c.listed.clear();
            }
            c.count = c.count.saturating_add(1);
            if is_wild && c.listed.len() < MAX_LISTED && !c.listed.iter().any(|l| l == name) {
                c.listed.push(name.to_owned());
            }
            if c.count > threshold {
                let trail = if is_wild {
                    let subs: Vec<&str> = c
                        .listed
                        .iter()
                        .map(|n| {
                            n.strip_suffix(base)
                                .and_then(|s| s.strip_suffix('.'))
                                .filter(|s| !s.is_empty())
                                .unwrap_or(n)
                        })
                        .collect();
                    format!("({}).{base}", subs.join(","))
                } else {
                    key.to_owned()
                };
                if let Some(c) = self.counters.remove(key) {
                    if is_wild {
                        for n in &c.listed {
                            self.counters.remove(n.as_str());
                        }
                    }
                }
                return Some(trail);
            }
        }
        None
    }
}

/// `*.base` in `buf`.
fn wildcard<'b>(base: &str, buf: &'b mut [u8; 260]) -> Option<&'b str> {
    let out = buf.get_mut(..base.len() + 2)?;
    let (star, rest) = out.split_at_mut(2);
    star.copy_from_slice(b"*.");
    rest.copy_from_slice(base.as_bytes());
    std::str::from_utf8(out).ok()
}

/// Shannon entropy of `s` in bits per character.
pub fn entropy(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        if let Some(c) = counts.get_mut(usize::from(b)) {
            *c += 1;
        }
    }
    let n = s.len() as f64;
    if n == 0.0 {
        return 0.0;
    }
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

/// Consonants (`bcdfghjklmnpqrstvwxyz`) in `s`.
pub fn consonants(s: &str) -> usize {
    s.bytes()
        .filter(|b| b"bcdfghjklmnpqrstvwxyz".contains(&b.to_ascii_lowercase()))
        .count()
}

/// The DGA-shape check of an NXDOMAIN name: `(trail, info)` when a two-label name's first
/// label passes the entropy threshold, else the consonant threshold.
pub fn dga_shape(
    name: &str,
    entropy_threshold: f64,
    consonant_threshold: usize,
) -> Option<(String, &'static str)> {
    let (first, tld) = name.split_once('.')?;
    if first.is_empty() || tld.is_empty() || tld.contains('.') || first.contains('-') {
        return None;
    }
    let info = if entropy(first) > entropy_threshold {
        INFO_ENTROPY
    } else if consonants(first) > consonant_threshold {
        INFO_CONSONANT
    } else {
        return None;
    };
    Some((format!("({first}).{tld}"), info))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    #[test]
    fn excessive_per_base_domain() {
        let mut nx = NxDomain::new(1024);
        for i in 0..20 {
            assert_eq!(
                nx.observe(&format!("nx{i}.dgaparent.com"), i * S, 20),
                None,
                "{i}"
            );
        }
        let trail = nx.observe("nx20.dgaparent.com", 20 * S, 20).unwrap();
        assert!(trail.starts_with("(nx0,nx1,nx2,"), "{trail}");
        assert!(trail.ends_with(",nx20).dgaparent.com"), "{trail}");
        // The counter starts again.
        assert_eq!(nx.observe("nx21.dgaparent.com", 21 * S, 20), None);
    }

    #[test]
    fn excessive_per_name() {
        let mut nx = NxDomain::new(1024);
        for i in 0..20 {
            assert_eq!(nx.observe("same.example.org", i * S, 20), None);
        }
        // The name's counter and the `*.` counter pass together; the name is checked first.
        assert_eq!(
            nx.observe("same.example.org", 20 * S, 20).as_deref(),
            Some("same.example.org")
        );
    }

    #[test]
    fn counters_reset_every_hour() {
        let mut nx = NxDomain::new(1024);
        let hour = 3600 * S;
        for i in 0..40 {
            // 20 in the last minutes of one hour, 20 in the next: never more than 20 an hour.
            let ts = if i < 20 { hour - 60 * S + i } else { hour + i };
            assert_eq!(nx.observe(&format!("n{i}.flip.com"), ts, 20), None);
        }
    }

    #[test]
    fn dga_shapes() {
        // 16 distinct characters: entropy 4.
        assert_eq!(
            dga_shape("abcdefghijklmnop.com", 3.5, 9),
            Some(("(abcdefghijklmnop).com".into(), INFO_ENTROPY))
        );
        // 11 distinct characters: at most log2(11) = 3.46 bits, not above 3.5.
        assert!(entropy("abcdefghijk") < 3.5);
        // 10 consonants (above 9), low entropy.
        assert_eq!(
            dga_shape("bbbbbccccc.net", 3.5, 9),
            Some(("(bbbbbccccc).net".into(), INFO_CONSONANT))
        );
        // 9 consonants: not above.
        assert_eq!(dga_shape("bbbbbcccc.net", 3.5, 9), None);
        assert_eq!(dga_shape("google.com", 3.5, 9), None);
        // Three labels, hyphens: not checked.
        assert_eq!(dga_shape("abcdefghijklmnop.x.com", 3.5, 9), None);
        assert_eq!(dga_shape("abcdefgh-ijklmnop.com", 3.5, 9), None);
    }
}
