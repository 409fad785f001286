//! Maltrail's updater rules for static trail lines (what `core/update.py` does to a static
//! tree before the trails reach `trails.csv`): line normalisation, key clean-up, merge
//! priorities, and the whitelist / bogon / CDN filters. Written from the documented behaviour
//! and checked against `reference/trails.csv` by `detect/tests/static_tree_reference.rs`.

use std::fs;
use std::path::Path;

use hashbrown::HashSet;

use super::{MalformedReason, TrailError};

/// Trails starting with these are never kept (Maltrail's `BAD_TRAIL_PREFIXES`).
const BAD_TRAIL_PREFIXES: [&str; 3] = ["127.", "192.168.", "localhost"];

/// Bogon ranges (RFC 1122, 1918, 6598, 3927, 5737, 2544, 6890, multicast and reserved), used
/// when no Maltrail `bogon_ranges.txt` is given.
const BUILTIN_BOGONS: [([u8; 4], u8); 13] = [
    ([0, 0, 0, 0], 8),
    ([10, 0, 0, 0], 8),
    ([100, 64, 0, 0], 10),
    ([127, 0, 0, 0], 8),
    ([169, 254, 0, 0], 16),
    ([172, 16, 0, 0], 12),
    ([192, 0, 0, 0], 24),
    ([192, 0, 2, 0], 24),
    ([192, 168, 0, 0], 16),
    ([198, 18, 0, 0], 15),
    ([198, 51, 100, 0], 24),
    ([203, 0, 113, 0], 24),
    ([224, 0, 0, 0], 3),
];

/// An IPv4 range list with Maltrail's lookup rule: ranges are filed under the first octet of
/// their prefix, so `224.0.0.0/3` only covers `224.x` (kept for fidelity with Maltrail's
/// output; the static tree has trails in 225-255 that Maltrail keeps).
#[derive(Clone, Debug, Default)]
pub struct Ipv4Ranges(Vec<(u32, u32)>);

impl Ipv4Ranges {
    fn push(&mut self, net: [u8; 4], prefix: u8) {
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix.min(32)))
        };
        self.0.push((u32::from_be_bytes(net) & mask, mask));
    }

    /// Maltrail's built-in bogon list.
    pub fn bogons() -> Self {
        let mut r = Self::default();
        for (net, p) in BUILTIN_BOGONS {
            r.push(net, p);
        }
        r
    }

    /// Parses `a.b.c.d/n` lines (`#` comments); other lines are ignored.
    pub fn parse(text: &str) -> Self {
        let mut r = Self::default();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some((a, p)) = line.split_once('/') {
                if let (Ok(a), Ok(p)) = (a.parse::<std::net::Ipv4Addr>(), p.parse::<u8>()) {
                    if p <= 32 {
                        r.push(a.octets(), p);
                    }
                }
            }
        }
        r
    }

    /// Whether `a` is in a range filed under its own first octet.
    pub fn contains(&self, a: u32) -> bool {
        self.0
            .iter()
            .any(|&(net, mask)| a & mask == net && a >> 24 == net >> 24)
    }

    /// Number of ranges.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The filters Maltrail's updater applies to static trails after normalising them.
#[derive(Clone, Debug)]
pub struct StaticFilters {
    /// Exact whitelisted trails (Maltrail's `check_whitelisted`: exact match, no parents).
    pub whitelist: HashSet<String>,
    /// Whitelisted IPv4 ranges (apply to bare IPv4 trails).
    pub whitelist_ranges: Ipv4Ranges,
    /// Address trails (and `IP:port`, `IP/path`) in these are dropped unless the info says
    /// parking or sinkhole.
    pub bogons: Ipv4Ranges,
    /// As `bogons`, for CDN ranges.
    pub cdn: Ipv4Ranges,
}

impl Default for StaticFilters {
    fn default() -> Self {
        Self {
            whitelist: HashSet::new(),
            whitelist_ranges: Ipv4Ranges::default(),
            bogons: Ipv4Ranges::bogons(),
            cdn: Ipv4Ranges::default(),
        }
    }
}

fn read_optional(path: &Path) -> Result<Option<String>, TrailError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TrailError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

impl StaticFilters {
    /// Reads Maltrail's `whitelist.txt`, `bogon_ranges.txt` and `cdn_ranges.txt` from `dir`
    /// (each optional: a missing bogon file keeps the built-in list).
    pub fn from_maltrail_data(dir: &Path) -> Result<Self, TrailError> {
        let mut f = Self::default();
        if let Some(t) = read_optional(&dir.join("whitelist.txt"))? {
            for line in t.lines() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let r = Ipv4Ranges::parse(line);
                if r.is_empty() {
                    f.whitelist.insert(line.to_owned());
                } else {
                    f.whitelist_ranges.0.extend(r.0);
                }
            }
        }
        if let Some(t) = read_optional(&dir.join("bogon_ranges.txt"))? {
            f.bogons = Ipv4Ranges::parse(&t);
        }
        if let Some(t) = read_optional(&dir.join("cdn_ranges.txt"))? {
            f.cdn = Ipv4Ranges::parse(&t);
        }
        Ok(f)
    }
}

/// Why the updater rules dropped a trail (not malformed: Maltrail drops these on purpose).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dropped {
    Whitelisted,
    BogonOrCdn,
}

/// `\d+\.\d+\.\d+\.\d+` over the whole text.
pub(crate) fn is_dotted_quad(s: &str) -> bool {
    let mut parts = 0;
    for p in s.split('.') {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
        parts += 1;
    }
    parts == 4
}

/// The IPv4 address a trail starts with, followed by `:`, `/`, space or the end (Maltrail's
/// `leading_ipv4`).
pub(crate) fn leading_ipv4(s: &str) -> Option<u32> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut octets = [0u32; 4];
    for (n, o) in octets.iter_mut().enumerate() {
        if n > 0 {
            if b.get(i) != Some(&b'.') {
                return None;
            }
            i += 1;
        }
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() && i - start < 3 {
            *o = *o * 10 + u32::from(b[i] - b'0');
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    match b.get(i) {
        None | Some(b':' | b'/' | b' ') => {}
        _ => return None,
    }
    if octets.iter().any(|&o| o > 255) {
        return None;
    }
    Some(octets[0] << 24 | octets[1] << 16 | octets[2] << 8 | octets[3])
}

/// One static line (trimmed, comment removed, not empty) as Maltrail's static parser keys it:
/// scheme removed (a bare host after a scheme gets a `/`: `http://1.2.3.4` is the URL trail
/// `1.2.3.4/`), trailing slashes removed when there is more than one `/`, dots stripped from
/// both ends of names.
pub(crate) fn static_key(line: &str) -> std::borrow::Cow<'_, str> {
    let mut t = line;
    if let Some(i) = t.find("://") {
        t = &t[i + 3..];
        if !t.contains('/') {
            return format!("{t}/").into();
        }
    }
    if t.contains('/') {
        if t.bytes().filter(|&b| b == b'/').count() > 1 {
            t = t.trim_end_matches('/');
        }
        t.into()
    } else if is_dotted_quad(t) {
        t.into()
    } else {
        t.trim_matches('.').into()
    }
}

/// Label text rules of Maltrail's merge: a "history" label never replaces an existing key,
/// unless it is a high-priority one.
pub(crate) fn may_replace(info: &str) -> bool {
    !info.contains("history") || info.contains("mass scanner") || info.contains("ipinfo")
}

/// Nameprep-lite: characters nameprep maps to nothing.
fn maps_to_nothing(c: char) -> bool {
    matches!(
        c,
        '\u{ad}'
            | '\u{34f}'
            | '\u{1806}'
            | '\u{180b}'..='\u{180d}'
            | '\u{200b}'..='\u{200d}'
            | '\u{2060}'
            | '\u{fe00}'..='\u{fe0f}'
            | '\u{feff}'
    )
}

/// RFC 3492 Punycode of one label (already lowercased).
fn punycode(label: &[char]) -> Option<String> {
    const BASE: u32 = 36;
    const TMIN: u32 = 1;
    const TMAX: u32 = 26;
    fn digit(d: u32) -> char {
        if d < 26 {
            (b'a' + d as u8) as char
        } else {
            (b'0' + (d - 26) as u8) as char
        }
    }
    fn adapt(mut delta: u32, points: u32, first: bool) -> u32 {
        delta /= if first { 700 } else { 2 };
        delta += delta / points;
        let mut k = 0;
        while delta > ((BASE - TMIN) * TMAX) / 2 {
            delta /= BASE - TMIN;
            k += BASE;
        }
        k + (BASE - TMIN + 1) * delta / (delta + 38)
    }
    let mut out: String = label.iter().filter(|c| c.is_ascii()).collect();
    let basic = out.len() as u32;
    if basic > 0 {
        out.push('-');
    }
    let (mut n, mut delta, mut bias, mut h) = (128u32, 0u32, 72u32, basic);
    let total = label.len() as u32;
    while h < total {
        let m = label.iter().map(|&c| c as u32).filter(|&c| c >= n).min()?;
        delta = delta.checked_add((m - n).checked_mul(h + 1)?)?;
        n = m;
        for &c in label {
            let c = c as u32;
            if c < n {
                delta = delta.checked_add(1)?;
            }
            if c == n {
                let mut q = delta;
                let mut k = BASE;
                loop {
                    let t = if k <= bias {
                        TMIN
                    } else if k >= bias + TMAX {
                        TMAX
                    } else {
                        k - bias
                    };
                    if q < t {
                        break;
                    }
                    out.push(digit(t + (q - t) % (BASE - t)));
                    q = (q - t) / (BASE - t);
                    k += BASE;
                }
                out.push(digit(q));
                bias = adapt(delta, h + 1, h == basic);
                delta = 0;
                h += 1;
            }
        }
        delta += 1;
        n += 1;
    }
    Some(out)
}

/// IDNA ToASCII of a name (lowercase, nameprep-lite, Punycode per label); `None` when a label
/// cannot be encoded (Maltrail then drops the trail: none of its output is non-ASCII).
fn idna(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len() + 8);
    for (i, label) in name.split('.').enumerate() {
        if i > 0 {
            out.push('.');
        }
        let chars: Vec<char> = label
            .chars()
            .filter(|&c| !maps_to_nothing(c))
            .flat_map(char::to_lowercase)
            .collect();
        if chars.iter().all(char::is_ascii) {
            out.extend(chars.iter());
            continue;
        }
        if chars
            .iter()
            .any(|&c| c.is_ascii() && !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            return None;
        }
        let p = punycode(&chars)?;
        if p.len() + 4 > 63 {
            return None;
        }
        out.push_str("xn--");
        out.push_str(&p);
    }
    Some(out)
}

/// The first post-processing step alone: lowercase (IDNA for non-ASCII). `None` when the
/// key cannot be encoded (Maltrail then keeps it as it is).
pub(crate) fn post_process_case(key: &str) -> Option<String> {
    if key.is_ascii() {
        Some(key.to_ascii_lowercase())
    } else if key.contains('/') {
        None
    } else {
        idna(key)
    }
}

/// Maltrail's post-processing of a merged key: lowercase (IDNA for non-ASCII), drop
/// dotted quads with an octet over 255, strip `www.` (names), cut `?query` (not for bare
/// paths), collapse `//`. An error: the key is dropped (Maltrail drops it too).
pub(crate) fn post_process(key: &str) -> Result<String, MalformedReason> {
    let mut k = if key.is_ascii() {
        key.to_ascii_lowercase()
    } else if key.contains('/') {
        return Err(MalformedReason::NotAscii);
    } else {
        idna(key).ok_or(MalformedReason::NotAscii)?
    };
    if is_dotted_quad(&k)
        && k.split('.')
            .any(|o| o.len() > 3 || o.parse::<u16>().unwrap_or(999) > 255)
    {
        return Err(MalformedReason::NumericDomain);
    }
    if k.starts_with("www.") && !k.contains('/') {
        k.drain(..4);
    }
    if !k.starts_with('/') {
        if let Some(q) = k.find('?') {
            k.truncate(q);
        }
    }
    if k.contains("//") {
        k = k.replace("//", "/");
    }
    if k.is_empty() {
        return Err(MalformedReason::Empty);
    }
    Ok(k)
}

/// The updater's final filter: whitelisted keys, `127.`/`192.168.`/`localhost` prefixes, and
/// address trails in bogon or CDN ranges (unless the info says parking or sinkhole).
pub(crate) fn filter(key: &str, info: &str, f: &StaticFilters) -> Option<Dropped> {
    if f.whitelist.contains(key) || BAD_TRAIL_PREFIXES.iter().any(|p| key.starts_with(p)) {
        return Some(Dropped::Whitelisted);
    }
    let addr = leading_ipv4(key);
    if let Some(a) = addr {
        if is_dotted_quad(key) && f.whitelist_ranges.contains_any(a) {
            return Some(Dropped::Whitelisted);
        }
        if (f.bogons.contains(a) || f.cdn.contains(a))
            && !info.contains("parking")
            && !info.contains("sinkhole")
        {
            return Some(Dropped::BogonOrCdn);
        }
    }
    None
}

impl Ipv4Ranges {
    /// Plain CIDR membership (no first-octet rule), as the whitelist ranges are checked.
    pub fn contains_any(&self, a: u32) -> bool {
        self.0.iter().any(|&(net, mask)| a & mask == net)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_keys() {
        assert_eq!(static_key("http://1.2.3.4"), "1.2.3.4/");
        assert_eq!(static_key("https://evil.com/a/b/"), "evil.com/a/b");
        assert_eq!(static_key("evil.com/"), "evil.com/");
        assert_eq!(static_key(".evil.com."), "evil.com");
        assert_eq!(static_key("1.2.3.4"), "1.2.3.4");
    }

    #[test]
    fn post_processing() {
        assert_eq!(post_process("WWW.Evil.COM").as_deref(), Ok("evil.com"));
        assert_eq!(post_process("evil.com/a?x=1").as_deref(), Ok("evil.com/a"));
        assert_eq!(post_process("/a.php?x=1").as_deref(), Ok("/a.php?x=1"));
        assert_eq!(post_process("evil.com//a").as_deref(), Ok("evil.com/a"));
        assert_eq!(
            post_process("1.2.3.256"),
            Err(MalformedReason::NumericDomain)
        );
        assert_eq!(post_process("tøff.no").as_deref(), Ok("xn--tff-0na.no"));
        assert_eq!(
            post_process("bettilt-giriş.com").as_deref(),
            Ok("xn--bettilt-giri-gnc.com")
        );
        assert_eq!(
            post_process("support\u{ac}forum.org").as_deref(),
            Ok("xn--supportforum-tqa.org")
        );
        assert_eq!(
            post_process("/CJ대한통운.apk"),
            Err(MalformedReason::NotAscii)
        );
    }

    #[test]
    fn leading_addresses() {
        assert_eq!(leading_ipv4("1.2.3.4"), Some(0x0102_0304));
        assert_eq!(leading_ipv4("1.2.3.4:80"), Some(0x0102_0304));
        assert_eq!(leading_ipv4("1.2.3.4/x"), Some(0x0102_0304));
        assert_eq!(leading_ipv4("10.53.154.104.bc.example.com"), None);
        let f = StaticFilters::default();
        assert_eq!(filter("10.1.2.3:80", "x", &f), Some(Dropped::BogonOrCdn));
        assert_eq!(filter("10.1.2.3", "parking site", &f), None);
        assert_eq!(filter("225.1.2.3", "x", &f), None);
        assert_eq!(filter("224.1.2.3", "x", &f), Some(Dropped::BogonOrCdn));
        assert_eq!(
            filter("localhost.evil", "x", &f),
            Some(Dropped::Whitelisted)
        );
    }
}
