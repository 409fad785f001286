//! Classifying one trail text (a line of a static file, or the first CSV column).

use std::net::{Ipv4Addr, Ipv6Addr};

use super::MalformedReason;

/// What a trail text is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Parsed<'a> {
    V4([u8; 4]),
    V6([u8; 16]),
    /// Address (IPv4 as v4-mapped IPv6) and port.
    IpPort([u8; 16], u16),
    /// Network address (not yet masked) and prefix length.
    Cidr4([u8; 4], u8),
    Cidr6([u8; 16], u8),
    /// A domain, not yet lowercased, trailing dot removed.
    Domain(&'a str),
    /// `host/path` (host not yet lowercased, `:port` removed; empty for a bare path) and the
    /// path (starting with `/`).
    Url {
        host: &'a str,
        path: &'a str,
    },
    /// A regular expression over domain names (not yet compiled).
    Regex(&'a str),
}

/// Removes an inline `#` comment and surrounding whitespace.
pub(crate) fn strip_comment(line: &str) -> &str {
    match line.find('#') {
        Some(i) => line[..i].trim(),
        None => line.trim(),
    }
}

/// Characters that make a non-IP, non-URL trail a regular expression.
fn is_regex_meta(b: u8) -> bool {
    matches!(
        b,
        b'[' | b']' | b'(' | b')' | b'{' | b'}' | b'*' | b'+' | b'?' | b'|' | b'\\' | b'^' | b'$'
    )
}

/// Each byte lowercased when it is a name byte ([`is_name_byte`]), else 0: the one table
/// of the name-byte predicate, so that the per-name loops check and lowercase a byte with
/// one load.
static NAME_LOWER: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_') {
            t[i] = b.to_ascii_lowercase();
        }
        i += 1;
    }
    t
};

/// A DNS-name character as trails and queries use them (`_` appears in real names).
#[inline]
pub fn is_name_byte(b: u8) -> bool {
    NAME_LOWER[usize::from(b)] != 0
}

/// `b` lowercased when it is a name byte ([`is_name_byte`]), else 0.
#[inline]
pub(crate) fn name_byte_lower(b: u8) -> u8 {
    NAME_LOWER[usize::from(b)]
}

fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>().ok().filter(|&p| p != 0)
}

fn parse_prefix(s: &str, max: u8) -> Result<u8, MalformedReason> {
    if s.is_empty() || s.len() > 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(MalformedReason::BadCidr);
    }
    match s.parse::<u8>() {
        Ok(p) if p <= max => Ok(p),
        _ => Err(MalformedReason::BadCidr),
    }
}

/// Removes a URL scheme (`http://`, `https://`, `ftp://`...): feeds list URLs with and without
/// one, requests never carry one in the path we match.
fn strip_scheme(t: &str) -> &str {
    if let Some(i) = t.find("://") {
        let scheme = &t[..i];
        if !scheme.is_empty()
            && scheme.len() <= 10
            && scheme.bytes().all(|b| b.is_ascii_alphabetic())
        {
            return &t[i + 3..];
        }
    }
    t
}

/// Classifies a trimmed, comment-free, non-empty trail text.
///
/// `allow_regex`: whether a text with regex metacharacters is a regex trail (Maltrail only
/// treats static trails that way) or a malformed domain.
pub(crate) fn classify(text: &str, allow_regex: bool) -> Result<Parsed<'_>, MalformedReason> {
    let t = strip_scheme(text);
    let bytes = t.as_bytes();
    if bytes.is_empty() {
        return Err(MalformedReason::Empty);
    }

    // `[IPv6]:port`; a regex may start with `[` too, but never ends in `]:digits`.
    if bytes[0] == b'[' {
        if let Some(close) = t.rfind("]:") {
            let port = &t[close + 2..];
            if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
                let addr = t[1..close]
                    .parse::<Ipv6Addr>()
                    .map_err(|_| MalformedReason::BadIpPort)?;
                let port = parse_port(port).ok_or(MalformedReason::BadIpPort)?;
                // A v4-mapped address is an IPv4 IP:port trail, keyed the same way.
                return Ok(Parsed::IpPort(addr.octets(), port));
            }
        }
    }

    if let Some(slash) = t.find('/') {
        let (left, right) = (&t[..slash], &t[slash + 1..]);
        if !right.is_empty() && right.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(a) = left.parse::<Ipv4Addr>() {
                return Ok(Parsed::Cidr4(a.octets(), parse_prefix(right, 32)?));
            }
            if let Ok(a) = left.parse::<Ipv6Addr>() {
                let prefix = parse_prefix(right, 128)?;
                if let Some(v4) = a.to_ipv4_mapped() {
                    if prefix >= 96 {
                        return Ok(Parsed::Cidr4(v4.octets(), prefix - 96));
                    }
                }
                return Ok(Parsed::Cidr6(a.octets(), prefix));
            }
        }
        let mut host = left;
        if let Some((h, port)) = host.rsplit_once(':') {
            parse_port(port).ok_or(MalformedReason::BadUrlHost)?;
            host = h;
        }
        let host = host.strip_suffix('.').unwrap_or(host);
        if !host.bytes().all(is_name_byte) {
            return Err(MalformedReason::BadUrlHost);
        }
        return Ok(Parsed::Url {
            host,
            path: &t[slash..],
        });
    }

    let first = bytes[0];
    if first.is_ascii_digit() || t.contains(':') {
        if let Ok(a) = t.parse::<Ipv4Addr>() {
            return Ok(Parsed::V4(a.octets()));
        }
        if let Ok(a) = t.parse::<Ipv6Addr>() {
            return Ok(match a.to_ipv4_mapped() {
                Some(v4) => Parsed::V4(v4.octets()),
                None => Parsed::V6(a.octets()),
            });
        }
        if let Some((addr, port)) = t.rsplit_once(':') {
            let addr = addr
                .parse::<Ipv4Addr>()
                .map_err(|_| MalformedReason::BadIpPort)?;
            let port = parse_port(port).ok_or(MalformedReason::BadIpPort)?;
            return Ok(Parsed::IpPort(addr.to_ipv6_mapped().octets(), port));
        }
    }

    if bytes.iter().any(|&b| is_regex_meta(b)) {
        return if allow_regex {
            Ok(Parsed::Regex(t))
        } else {
            Err(MalformedReason::BadDomain)
        };
    }

    let d = t.strip_suffix('.').unwrap_or(t);
    if d.is_empty() || !d.bytes().all(is_name_byte) {
        return Err(MalformedReason::BadDomain);
    }
    if d.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(MalformedReason::NumericDomain);
    }
    if d.len() > 255 {
        return Err(MalformedReason::TooLong);
    }
    Ok(Parsed::Domain(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapped(a: [u8; 4]) -> [u8; 16] {
        Ipv4Addr::from(a).to_ipv6_mapped().octets()
    }

    #[test]
    fn kinds() {
        assert_eq!(classify("1.2.3.4", true), Ok(Parsed::V4([1, 2, 3, 4])));
        assert_eq!(
            classify("dead::beef", true),
            Ok(Parsed::V6(
                "dead::beef".parse::<Ipv6Addr>().unwrap().octets()
            ))
        );
        assert_eq!(
            classify("::ffff:1.2.3.4", true),
            Ok(Parsed::V4([1, 2, 3, 4]))
        );
        assert_eq!(
            classify("6.6.6.6:8443", true),
            Ok(Parsed::IpPort(mapped([6, 6, 6, 6]), 8443))
        );
        assert_eq!(
            classify("[dead::beef]:443", true),
            Ok(Parsed::IpPort(
                "dead::beef".parse::<Ipv6Addr>().unwrap().octets(),
                443
            ))
        );
        assert_eq!(
            classify("[0:0:0:0:0:ffff:2d3e:c649]:53", true),
            Ok(Parsed::IpPort(mapped([45, 62, 198, 73]), 53))
        );
        assert_eq!(
            classify("5.63.151.0/24", true),
            Ok(Parsed::Cidr4([5, 63, 151, 0], 24))
        );
        assert!(matches!(
            classify("2001:db8::/32", true),
            Ok(Parsed::Cidr6(_, 32))
        ));
        assert_eq!(
            classify("/c2.php", true),
            Ok(Parsed::Url {
                host: "",
                path: "/c2.php"
            })
        );
        assert_eq!(
            classify("Evil.example:443/a/b?x=1", true),
            Ok(Parsed::Url {
                host: "Evil.example",
                path: "/a/b?x=1"
            })
        );
        assert_eq!(
            classify("http://1.2.3.4/x.exe", true),
            Ok(Parsed::Url {
                host: "1.2.3.4",
                path: "/x.exe"
            })
        );
        assert_eq!(
            classify("1.2.3.4/admin", true),
            Ok(Parsed::Url {
                host: "1.2.3.4",
                path: "/admin"
            })
        );
        assert_eq!(
            classify(r"dga[0-9]+\.wildcard-test\.com", true),
            Ok(Parsed::Regex(r"dga[0-9]+\.wildcard-test\.com"))
        );
        assert_eq!(
            classify("[a-z]{1}\\.appjiagu\\.com", true),
            Ok(Parsed::Regex("[a-z]{1}\\.appjiagu\\.com"))
        );
        assert_eq!(
            classify(r"dga[0-9]+\.x\.com", false),
            Err(MalformedReason::BadDomain)
        );
        assert_eq!(classify("Evil.COM.", true), Ok(Parsed::Domain("Evil.COM")));
        assert_eq!(
            classify("ns_1.x.com", true),
            Ok(Parsed::Domain("ns_1.x.com"))
        );
    }

    #[test]
    fn malformed() {
        for (line, why) in [
            ("161.35.41.9:53:53", MalformedReason::BadIpPort),
            ("46.8.120.153::8080", MalformedReason::BadIpPort),
            ("182.86.133:8880", MalformedReason::BadIpPort),
            ("1.2.3.4:0", MalformedReason::BadIpPort),
            ("1.2.3.4:65536", MalformedReason::BadIpPort),
            ("1.2.3.4:+80", MalformedReason::BadIpPort),
            ("[zz::1]:80", MalformedReason::BadIpPort),
            ("support¬forum.org", MalformedReason::BadDomain),
            ("1.2.3.0/33", MalformedReason::BadCidr),
            ("182.86.133", MalformedReason::NumericDomain),
            ("bad host/x", MalformedReason::BadUrlHost),
            ("host:99999/x", MalformedReason::BadUrlHost),
        ] {
            assert_eq!(classify(line, true), Err(why), "{line}");
        }
    }

    #[test]
    fn name_bytes() {
        for b in 0..=255u8 {
            let name = b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_');
            assert_eq!(is_name_byte(b), name, "{b}");
            let want = if name { b.to_ascii_lowercase() } else { 0 };
            assert_eq!(name_byte_lower(b), want, "{b}");
        }
    }

    #[test]
    fn comments() {
        assert_eq!(strip_comment("5.63.151.0/24 # scanners"), "5.63.151.0/24");
        assert_eq!(strip_comment("  # Reference: x"), "");
        assert_eq!(strip_comment("\tevil.com \r"), "evil.com");
    }
}
