//! The whitelist: domains, IPs, CIDRs (and a few URL prefixes) that never raise an event,
//! in Maltrail's `whitelist.txt` format, plus Maltrail's list of ignored DNS suffixes.
//!
//! A listed domain whitelists itself and its subdomains, never its parents. Tests are below.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use hashbrown::{HashSet, HashTable};

use crate::trails::classify::is_name_byte;
use crate::trails::ip::{mask4, mask6, v4_blocks};
use crate::trails::KeyHasher;

/// Last labels of DNS queries that are never checked: names that cannot resolve on the
/// public internet (reserved, private-use, or never-delegated labels), plus `arpa`.
///
/// Maltrail's `IGNORE_DNS_QUERY_SUFFIXES` (settings.py, 3.x) minus the delegated TLDs `dev`
/// and `int`, plus `invalid` and `localhost`. Maltrail's list ignores `.dev` and `.int`,
/// which silences every trail under them (7,921 `.dev` domain trails built from the static
/// tree: `pages.dev`, `workers.dev`, ...); xtrail checks them. Every other entry is absent from
/// the public suffix list's TLDs, so no registrable name ends in it.
pub const IGNORED_DNS_SUFFIXES: &[&str] = &[
    // The infrastructure TLD: reverse lookups (`in-addr.arpa`, `ip6.arpa`) and ENUM,
    // not host names a trail names.
    "arpa",
    // mDNS (RFC 6762).
    "local",
    // Never delegated; common home/office router and guest-network suffixes.
    "guest",
    "intranet",
    "corp",
    "home",
    "lan",
    "intra",
    "intran",
    "workgroup",
    "localdomain",
    "localnet",
    // Never delegated; Maltrail ignores them (search-list artefacts, vendor appliances).
    "url",
    "alienvault",
    // Reserved for private use (ICANN, 2024).
    "internal",
    // Reserved names (RFC 2606, RFC 6761).
    "example",
    "test",
    "invalid",
    "localhost",
];

/// Whether a DNS query name should be ignored: its last label is in
/// [`IGNORED_DNS_SUFFIXES`], or it contains `.intranet.` (as Maltrail does, except that
/// the real TLDs `.dev` and `.int` are checked).
pub fn is_ignored_suffix(name: &str) -> bool {
    let name = name.as_bytes();
    let name = name.strip_suffix(b".").unwrap_or(name);
    // Plain loops: names are short, shorter than a vectorised search's set-up.
    let Some(last_dot) = name.iter().rposition(|&b| b == b'.') else {
        return is_ignored_label(name);
    };
    if is_ignored_label(name.get(last_dot + 1..).unwrap_or_default()) {
        return true;
    }
    // `intranet` with a dot on each side: a label after some dot, before the last one.
    name.iter()
        .enumerate()
        .any(|(d, &b)| b == b'.' && is_intranet_at(name, d))
}

/// Whether `.intranet.` (ASCII case-insensitive) starts at the dot `name[dot]`: most labels
/// are ruled out by the byte after the dot.
#[inline]
pub(crate) fn is_intranet_at(name: &[u8], dot: usize) -> bool {
    name.get(dot + 1..dot + 10)
        .is_some_and(|l| l[8] == b'.' && l[..8].eq_ignore_ascii_case(b"intranet"))
}

/// Bytes of a label packed into a `u128` by [`pack_label`]: one byte is left for the length.
const PACKED_LABEL: usize = 15;

/// `label`'s bytes (lowercase), zero-padded, with its length in the top byte: two labels
/// pack equal exactly when they are equal (a label holding a zero byte keeps its length).
const fn pack_label(label: &[u8]) -> u128 {
    let mut b = [0u8; 16];
    let mut i = 0;
    while i < label.len() && i < PACKED_LABEL {
        b[i] = label[i].to_ascii_lowercase();
        i += 1;
    }
    b[PACKED_LABEL] = label.len() as u8;
    u128::from_le_bytes(b)
}

/// Entries of one length in [`IGNORED_BY_LEN`] at most.
const IGNORED_PER_LEN: usize = 4;

/// [`IGNORED_DNS_SUFFIXES`] packed ([`pack_label`]) and grouped by length, built from the
/// list at compile time (which fails if an entry is too long to pack, not lowercase, or one
/// of more than [`IGNORED_PER_LEN`] of its length): (count, entries) per length.
const IGNORED_BY_LEN: [(usize, [u128; IGNORED_PER_LEN]); PACKED_LABEL + 1] = {
    let mut t = [(0usize, [0u128; IGNORED_PER_LEN]); PACKED_LABEL + 1];
    let mut i = 0;
    while i < IGNORED_DNS_SUFFIXES.len() {
        let s = IGNORED_DNS_SUFFIXES[i].as_bytes();
        assert!(s.len() <= PACKED_LABEL, "ignored suffix too long to pack");
        let mut j = 0;
        while j < s.len() {
            assert!(!s[j].is_ascii_uppercase(), "ignored suffixes are lowercase");
            j += 1;
        }
        let (n, entries) = &mut t[s.len()];
        assert!(
            *n < IGNORED_PER_LEN,
            "too many ignored suffixes of one length"
        );
        entries[*n] = pack_label(s);
        *n += 1;
        i += 1;
    }
    t
};

/// Whether `label` is one of [`IGNORED_DNS_SUFFIXES`] (ASCII case-insensitive): its
/// lowercased 16-byte word compared with the few entries of its length, no string
/// comparisons.
pub(crate) fn is_ignored_label(label: &[u8]) -> bool {
    let Some((n, entries)) = IGNORED_BY_LEN.get(label.len()) else {
        return false;
    };
    let packed = pack_label(label);
    entries.iter().take(*n).any(|&e| e == packed)
}

/// Bits in [`Whitelist::domain_bloom`]: 2^16 (8 KiB), about 6% of them set by Maltrail's
/// ~3,800 entries.
const BLOOM_BITS: u32 = 16;

/// The bit of [`Whitelist::domain_bloom`] a name hash sets: bits the table's bucket index
/// and control byte do not use first.
#[inline]
fn bloom_bit(hash: u64) -> usize {
    ((hash >> 24) & ((1 << BLOOM_BITS) - 1)) as usize
}

/// The table key of a (lowercase) name: the trail tables' right-to-left hash, so that the
/// suffix hashes a domain trail lookup computes serve the whitelist as well
/// ([`Whitelist::is_listed_suffixes`]).
fn suffix_hash(name: &[u8]) -> u64 {
    KeyHasher::hash(name)
}

/// Whitelist loading failures.
#[derive(Debug, thiserror::Error)]
pub enum WhitelistError {
    /// The file could not be read.
    #[error("cannot read whitelist {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Domains, addresses, networks and URL prefixes that must never raise an event.
#[derive(Clone, Debug, Default)]
pub struct Whitelist {
    /// Lowercase names, keyed by [`suffix_hash`] so that every parent of a name is probed
    /// with a hash from one backwards pass over it.
    domains: HashTable<Box<str>>,
    /// One bit per [`bloom_bit`] of each listed name's hash: a suffix whose bit is clear is
    /// not listed, answered without a table probe (most suffixes of most names).
    domain_bloom: Vec<u64>,
    ips: HashSet<IpAddr>,
    cidr4: Vec<(u32, u8)>,
    cidr6: Vec<(u128, u8)>,
    urls: Vec<String>,
    /// One bit per IPv4 /16 that holds a listed IPv4 address or network (empty: none
    /// listed): most addresses are answered by one bit, without hashing.
    v4_blocks: Vec<u64>,
}

/// Prefix length of [`Whitelist::v4_blocks`]' blocks: 2^16 bits, 8 KiB.
const V4_BLOCK_BITS: u32 = 16;

impl Whitelist {
    /// A whitelist with nothing in it.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Reads a Maltrail `whitelist.txt`.
    pub fn load(path: &Path) -> Result<Self, WhitelistError> {
        let text = std::fs::read(path).map_err(|source| WhitelistError::Io {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self::parse(&String::from_utf8_lossy(&text)))
    }

    /// Parses whitelist text: one entry a line, `#` comments (whole-line or inline).
    pub fn parse(text: &str) -> Self {
        let mut w = Self::empty();
        for line in text.lines() {
            w.add(line);
        }
        w
    }

    /// Adds one entry (a domain, IP, CIDR or `host/path` URL prefix); comments and blanks
    /// are ignored.
    pub fn add(&mut self, entry: &str) {
        let e = entry.split('#').next().unwrap_or("").trim();
        if e.is_empty() {
            return;
        }
        if let Some((net, prefix)) = e.split_once('/') {
            if let (Ok(net), Ok(prefix)) = (net.parse::<IpAddr>(), prefix.parse::<u8>()) {
                match net {
                    IpAddr::V4(a) if prefix <= 32 => {
                        let net = mask4(u32::from(a), prefix);
                        self.cidr4.push((net, prefix));
                        self.mark_v4(net, prefix);
                        return;
                    }
                    IpAddr::V6(a) if prefix <= 128 => {
                        self.cidr6.push((mask6(u128::from(a), prefix), prefix));
                        return;
                    }
                    _ => {}
                }
            }
            let (host, path) = e.split_at(e.find('/').unwrap_or(e.len()));
            self.urls
                .push(format!("{}{path}", host.to_ascii_lowercase()));
            return;
        }
        if let Ok(ip) = e.parse::<IpAddr>() {
            if let IpAddr::V4(a) = ip {
                self.mark_v4(u32::from(a), 32);
            }
            self.ips.insert(ip);
        }
        // IPs go in as names too: a Host header or query can be an address.
        let e = e.strip_suffix('.').unwrap_or(e).to_ascii_lowercase();
        let hash = suffix_hash(e.as_bytes());
        if self.domain_bloom.is_empty() {
            self.domain_bloom = vec![0; (1 << BLOOM_BITS) / 64];
        }
        let bit = bloom_bit(hash);
        if let Some(w) = self.domain_bloom.get_mut(bit / 64) {
            *w |= 1 << (bit % 64);
        }
        if self.domains.find(hash, |d| **d == *e).is_none() {
            self.domains
                .insert_unique(hash, e.into_boxed_str(), |d| suffix_hash(d.as_bytes()));
        }
    }

    fn mark_v4(&mut self, net: u32, prefix: u8) {
        if self.v4_blocks.is_empty() {
            self.v4_blocks = vec![0; v4_blocks::words(V4_BLOCK_BITS)];
        }
        v4_blocks::mark(&mut self.v4_blocks, V4_BLOCK_BITS, net, prefix);
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.domains.len() + self.cidr4.len() + self.cidr6.len() + self.urls.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `name` or one of its parents is listed (Maltrail: the name is cut at the
    /// first character that cannot be in a DNS name, then lowercased). No allocation.
    pub fn is_domain_whitelisted(&self, name: &str) -> bool {
        if self.domains.is_empty() {
            return false;
        }
        let b = name.as_bytes();
        let end = b.iter().position(|&c| !is_name_byte(c)).unwrap_or(b.len());
        let n = b.get(..end).unwrap_or_default();
        let n = n.strip_suffix(b".").unwrap_or(n);
        if n.is_empty() || n.len() > 256 {
            return false;
        }
        // The name, then each parent (the part after each dot): one backwards pass hashes
        // every suffix; a probe compares bytes only on a hash match.
        let mut h = KeyHasher::new();
        for i in (0..n.len()).rev() {
            h.push(n[i].to_ascii_lowercase());
            if (i == 0 || n[i - 1] == b'.') && self.suffix_listed(h.finish(), &n[i..]) {
                return true;
            }
        }
        false
    }

    /// Whether the suffix `suffix` (any case) with table hash `hash` is listed. The bloom
    /// test (most suffixes end there) is inlined into the callers' loops, the table probe is
    /// not.
    #[inline(always)]
    fn suffix_listed(&self, hash: u64, suffix: &[u8]) -> bool {
        let bit = bloom_bit(hash);
        let maybe = self
            .domain_bloom
            .get(bit / 64)
            .is_some_and(|w| w & (1 << (bit % 64)) != 0);
        maybe && self.suffix_in_table(hash, suffix)
    }

    /// The table probe of [`Whitelist::suffix_listed`], past the bloom test.
    #[inline(never)]
    fn suffix_in_table(&self, hash: u64, suffix: &[u8]) -> bool {
        self.domains
            .find(hash, |d| d.as_bytes().eq_ignore_ascii_case(suffix))
            .is_some()
    }

    /// [`Whitelist::is_domain_whitelisted`] for a name already cut, lowercased and
    /// stripped of its trailing dot (`text`), given the table hash of every suffix of it that
    /// starts a label (`suffixes`: start, hash), as a domain trail lookup computes them: no
    /// second pass over the name.
    pub(crate) fn is_listed_suffixes(&self, text: &[u8], suffixes: &[(usize, u64)]) -> bool {
        if self.domains.is_empty() || text.is_empty() || text.len() > 256 {
            return false;
        }
        suffixes
            .iter()
            .any(|&(start, hash)| self.suffix_listed(hash, text.get(start..).unwrap_or_default()))
    }

    /// Whether `ip` is listed or inside a listed CIDR (a v4-mapped IPv6 address counts as
    /// its IPv4 address).
    pub fn is_ip_whitelisted(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        // Empty bitmap: no IPv4 address or network is listed.
        if let IpAddr::V4(a) = ip {
            if v4_blocks::test(&self.v4_blocks, V4_BLOCK_BITS, u32::from(a)) != Some(true) {
                return false;
            }
        }
        if self.ips.contains(&ip) {
            return true;
        }
        match ip {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.cidr4.iter().any(|&(net, p)| mask4(a, p) == net)
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.cidr6.iter().any(|&(net, p)| mask6(a, p) == net)
            }
        }
    }

    /// Whether `host` + `path` starts with a listed URL prefix (e.g. `www.nirsoft.net/utils`).
    pub fn is_url_whitelisted(&self, host: &str, path: &str) -> bool {
        let host = host.split(':').next().unwrap_or(host);
        self.urls
            .iter()
            .any(|u| match (u.get(..host.len()), u.get(host.len()..)) {
                (Some(h), Some(p)) => {
                    h.eq_ignore_ascii_case(host) && p.starts_with('/') && path.starts_with(p)
                }
                _ => false,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "# comment\n\
        localhost\n\
        127.0.0.1\n\
        ::1\n\
        akamaihd.net\n\
        E-X.not.fyi\n\
        92.222.150.60   # nameserver\n\
        www.nirsoft.net/utils\n\
        35.184.0.0/13\n\
        2606:4700::/32\n\
        \n";

    #[test]
    fn domains_and_subdomains_not_parents() {
        let w = Whitelist::parse(SAMPLE);
        assert!(w.is_domain_whitelisted("akamaihd.net"));
        assert!(w.is_domain_whitelisted("a.b.AKAMAIHD.net."));
        assert!(!w.is_domain_whitelisted("net"));
        assert!(!w.is_domain_whitelisted("xakamaihd.net"));
        assert!(w.is_domain_whitelisted("e-x.not.fyi"));
        assert!(!w.is_domain_whitelisted("not.fyi"));
        assert!(w.is_domain_whitelisted("localhost"));
        assert!(w.is_domain_whitelisted("127.0.0.1"));
        // Cut at the first non-name character, like Maltrail.
        assert!(w.is_domain_whitelisted("akamaihd.net:443"));
        assert!(!w.is_domain_whitelisted(""));
        assert!(!Whitelist::empty().is_domain_whitelisted("akamaihd.net"));
    }

    #[test]
    fn ips_and_cidrs() {
        let w = Whitelist::parse(SAMPLE);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(w.is_ip_whitelisted(ip("127.0.0.1")));
        assert!(w.is_ip_whitelisted(ip("::1")));
        assert!(w.is_ip_whitelisted(ip("92.222.150.60")));
        assert!(w.is_ip_whitelisted(ip("35.191.255.255")));
        assert!(w.is_ip_whitelisted(ip("::ffff:35.184.0.1")));
        assert!(!w.is_ip_whitelisted(ip("35.192.0.0")));
        assert!(w.is_ip_whitelisted(ip("2606:4700::1111")));
        assert!(!w.is_ip_whitelisted(ip("2606:4701::1")));
    }

    #[test]
    fn v4_prefilter_covers_wide_networks() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(!Whitelist::empty().is_ip_whitelisted(ip("1.2.3.4")));
        let all = Whitelist::parse("0.0.0.0/0\n");
        assert!(all.is_ip_whitelisted(ip("1.2.3.4")));
        assert!(all.is_ip_whitelisted(ip("255.255.255.255")));
        let w = Whitelist::parse("10.0.0.0/8\n198.18.7.9\n");
        assert!(w.is_ip_whitelisted(ip("10.255.1.1")));
        assert!(!w.is_ip_whitelisted(ip("11.0.0.1")));
        assert!(w.is_ip_whitelisted(ip("198.18.7.9")));
        assert!(!w.is_ip_whitelisted(ip("198.18.7.10")));
        assert!(!w.is_ip_whitelisted(ip("198.19.7.9")));
    }

    #[test]
    fn url_prefixes() {
        let w = Whitelist::parse(SAMPLE);
        assert!(w.is_url_whitelisted("www.nirsoft.net", "/utils/x.zip"));
        assert!(w.is_url_whitelisted("WWW.nirsoft.net:80", "/utils"));
        assert!(!w.is_url_whitelisted("www.nirsoft.net", "/other"));
        assert!(!w.is_url_whitelisted("nirsoft.net", "/utils"));
    }

    #[test]
    fn ignored_suffixes() {
        for n in [
            "1.0.168.192.in-addr.arpa",
            "printer.local",
            "nas.lan.",
            "x.corp",
            "a.intranet.example.org",
            "foo.localhost",
            "HOST.LOCAL",
        ] {
            assert!(is_ignored_suffix(n), "{n}");
        }
        // Delegated TLDs are never ignored (Maltrail ignores `.dev` and `.int`).
        for n in [
            "evil.com",
            "local.com",
            "arpa.net",
            "intranet.org",
            "evil.pages.dev",
            "x.workers.dev.",
            "DEV",
            "bad.who.int",
        ] {
            assert!(!is_ignored_suffix(n), "{n}");
        }
    }

    #[test]
    fn ignored_labels_are_the_list() {
        for s in IGNORED_DNS_SUFFIXES {
            assert!(is_ignored_label(s.as_bytes()), "{s}");
            assert!(is_ignored_label(s.to_ascii_uppercase().as_bytes()), "{s}");
            assert!(!is_ignored_label(format!("{s}x").as_bytes()), "{s}");
            assert!(
                !is_ignored_label(&s.as_bytes()[1..]) || IGNORED_DNS_SUFFIXES.contains(&&s[1..])
            );
        }
        for l in ["", "com", "dev", "int", "localhostx", "xlocaldomain"] {
            assert!(!is_ignored_label(l.as_bytes()), "{l}");
        }
        // The other direction: a label is ignored only when the list holds it. Every prefix,
        // suffix and padded variant of every entry against the list itself.
        let mut labels: Vec<Vec<u8>> = vec![b"local\0".to_vec(), b"\0local".to_vec(), vec![0; 16]];
        for s in IGNORED_DNS_SUFFIXES {
            let b = s.as_bytes();
            for i in 0..=b.len() {
                labels.push(b[..i].to_vec());
                labels.push(b[i..].to_vec());
            }
            let mut long = s.to_ascii_uppercase().into_bytes();
            long.resize(16, b'x');
            labels.push(long);
        }
        for l in labels {
            let want = IGNORED_DNS_SUFFIXES
                .iter()
                .any(|s| s.as_bytes().eq_ignore_ascii_case(&l));
            assert_eq!(
                is_ignored_label(&l),
                want,
                "{:?}",
                String::from_utf8_lossy(&l)
            );
        }
    }

    /// The search-per-dot form `is_ignored_suffix` replaced, as the reference.
    fn ignored_suffix_reference(name: &str) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name);
        let last = memchr::memrchr(b'.', name.as_bytes()).map_or(name, |i| &name[i + 1..]);
        IGNORED_DNS_SUFFIXES
            .iter()
            .any(|s| s.eq_ignore_ascii_case(last))
            || memchr::memchr_iter(b'.', name.as_bytes()).any(|i| {
                name.as_bytes()
                    .get(i..i + b".intranet.".len())
                    .is_some_and(|w| w.eq_ignore_ascii_case(b".intranet."))
            })
    }

    #[test]
    fn ignored_suffixes_match_the_reference() {
        let names = [
            "",
            ".",
            "..",
            "local",
            ".local",
            "local.",
            "local..",
            "a..local",
            "intranet",
            ".intranet",
            "intranet.",
            ".intranet.",
            "..intranet..",
            "a.intranet",
            "a.intranet.",
            "a.intranet..",
            "a..intranet.b",
            "x.INTRANET.y",
            "intranet.x.y",
            "a.intranetx.b",
            "a.xintranet.b",
            "b.Intranet.c.d",
            "evil.com",
            "x.corp.com",
            "x.com.corp",
            "h.bench-site1.net",
            "ünï.local",
            "ünï.intranet.x",
            "LOCALHOST",
            "a.b.localdomain.",
        ];
        for n in names {
            assert_eq!(is_ignored_suffix(n), ignored_suffix_reference(n), "{n:?}");
        }
    }
}
