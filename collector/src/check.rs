//! `GET /api/check?q=...`: is an IP address, domain or URL in the current trail set, and why.
//!
//! The lookups are the sensor's own (`xtrail-detect`): [`IpTrails::lookup`] (IP:port, the
//! address, the longest CIDR; an IPv4-mapped IPv6 address as IPv4), [`DomainTrails::lookup`]
//! (the name or its nearest listed parent, regex trails, Maltrail's exceptions) and
//! [`UrlTrails::lookup`] (Maltrail's candidate paths, bare and with the host). A URL is
//! checked as the sensor checks an HTTP request: its host against the domain trails (or the
//! address trails for an IP host), then host + path against the URL trails.
//! `whitelisted` says whether the sensor's whitelist (or an ignored suffix such as `.local`)
//! would keep it from raising an event.
//!
//! [`IpTrails::lookup`]: xtrail_detect::trails::IpTrails::lookup
//! [`DomainTrails::lookup`]: xtrail_detect::trails::DomainTrails::lookup
//! [`UrlTrails::lookup`]: xtrail_detect::trails::UrlTrails::lookup

use std::net::{IpAddr, SocketAddr};

use serde::Serialize;
use xtrail_detect::event::EventType;
use xtrail_detect::trails::{IpMatch, IpMatchKind, LabelId, TrailSet};
use xtrail_detect::whitelist::{is_ignored_suffix, Whitelist};

/// Longest query accepted.
pub const MAX_QUERY: usize = 4096;

/// A query that is not an IP address, domain or URL.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct BadQuery(String);

fn bad(msg: impl Into<String>) -> BadQuery {
    BadQuery(msg.into())
}

/// What a query was read as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Indicator {
    /// An address, with a port for `IP:port` / `[IPv6]:port`.
    Ip {
        /// The address.
        addr: IpAddr,
        /// The port, if given.
        port: Option<u16>,
    },
    /// A domain name (lowercase, no trailing dot, a `:port` dropped).
    Domain(String),
    /// A URL: `scheme://host[:port]/path?query`, `host/path` or a bare `/path`.
    Url {
        /// The host (lowercase; `None` for a bare path).
        host: Option<String>,
        /// The explicit port, else the scheme's (80/443), else none.
        port: Option<u16>,
        /// The path and query, lowercased as the sensor lowercases request paths.
        path: String,
    },
}

impl Indicator {
    /// `ip`, `domain` or `url`.
    pub fn kind(&self) -> &'static str {
        match self {
            Indicator::Ip { .. } => "ip",
            Indicator::Domain(_) => "domain",
            Indicator::Url { .. } => "url",
        }
    }
}

fn parse_host(h: &str) -> Result<String, BadQuery> {
    let h = h.strip_suffix('.').unwrap_or(h);
    if h.is_empty() {
        return Err(bad("empty host"));
    }
    if h.len() > 253 || !h.bytes().all(xtrail_detect::trails::is_name_byte) {
        return Err(bad(format!(
            "{h:?} is not a host name (letters, digits, '-', '_', '.'; IDNs in punycode)"
        )));
    }
    Ok(h.to_ascii_lowercase())
}

/// `host[:port]`, `[v6][:port]`, IPv4 literal, a user-info part dropped.
fn parse_authority(a: &str) -> Result<(String, Option<u16>), BadQuery> {
    let a = a.rsplit_once('@').map_or(a, |(_, h)| h);
    let port_of = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| bad(format!("{p:?} is not a port")))
    };
    if let Some(rest) = a.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or_else(|| bad("unclosed '[' in host"))?;
        let addr: std::net::Ipv6Addr = v6
            .parse()
            .map_err(|_| bad(format!("{v6:?} is not an IPv6 address")))?;
        let port = match after {
            "" => None,
            p => Some(port_of(
                p.strip_prefix(':')
                    .ok_or_else(|| bad("junk after ']' in host"))?,
            )?),
        };
        return Ok((addr.to_string(), port));
    }
    match a.split_once(':') {
        Some((h, p)) => Ok((parse_host(h)?, Some(port_of(p)?))),
        None => Ok((parse_host(a)?, None)),
    }
}

/// Reads a query as an IP address (`IP`, `IP:port`, `[IPv6]:port`), a URL (with a scheme,
/// or containing `/`) or a domain name (a `:port` ignored).
pub fn parse_query(q: &str) -> Result<Indicator, BadQuery> {
    let q = q.trim();
    if q.is_empty() {
        return Err(bad("q is empty: give an IP address, domain or URL"));
    }
    if q.len() > MAX_QUERY {
        return Err(bad(format!("q is longer than {MAX_QUERY} bytes")));
    }
    if q.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("q contains spaces or control characters"));
    }
    if let Ok(addr) = q.parse::<IpAddr>() {
        return Ok(Indicator::Ip { addr, port: None });
    }
    if let Ok(sa) = q.parse::<SocketAddr>() {
        return Ok(Indicator::Ip {
            addr: sa.ip(),
            port: Some(sa.port()),
        });
    }
    let (scheme, rest) = match q.split_once("://") {
        Some((s, r)) if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphabetic()) => {
            (Some(s.to_ascii_lowercase()), r)
        }
        Some(_) => return Err(bad("bad URL scheme")),
        None => (None, q),
    };
    if scheme.is_none() && !rest.contains('/') {
        let (name, port) = match rest.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (rest, None),
        };
        if let Some(p) = port {
            p.parse::<u16>()
                .map_err(|_| bad(format!("{q:?} is not an IP address, domain or URL")))?;
        }
        let name = parse_host(name)?;
        if name.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(bad(format!("{q:?} is not an IP address")));
        }
        if !name.contains('.') {
            return Err(bad(format!(
                "{q:?} is not an IP address, domain (with a dot) or URL"
            )));
        }
        return Ok(Indicator::Domain(name));
    }
    // A URL: the authority runs to the first '/', '?' or '#'; the fragment is never sent.
    let rest = rest.split('#').next().unwrap_or(rest);
    let cut = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(cut);
    let (host, port) = if authority.is_empty() {
        if scheme.is_some() {
            return Err(bad("URL without a host"));
        }
        (None, None)
    } else {
        let (h, p) = parse_authority(authority)?;
        (Some(h), p)
    };
    let port = port.or(match scheme.as_deref() {
        Some("http") => Some(80),
        Some("https") => Some(443),
        _ => None,
    });
    let path = match path {
        "" => "/".to_string(),
        p if p.starts_with('?') => format!("/{p}"),
        p => p.to_string(),
    };
    Ok(Indicator::Url {
        host,
        port,
        path: path.to_ascii_lowercase(),
    })
}

/// One reason the indicator is listed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TrailMatch {
    /// The event type the sensor raises for it: `IP`, `IPORT`, `DNS` or `URL`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Which table matched: `ip`, `ip_port`, `cidr`, `domain` or `url`.
    #[serde(rename = "match")]
    pub matched: &'static str,
    /// The trail as the sensor prints it in events (`(sub.)parent.example`,
    /// `(host.example)/gate.php`, `6.6.6.6:8443`).
    pub trail: String,
    /// The CIDR row that contains the address (for `cidr` matches).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    /// The label's info, e.g. `asyncrat (malware)`.
    pub info: String,
    /// The label's reference, e.g. `(static)` or a feed.
    pub reference: String,
    /// The file that defined the label (a trails CSV, a list file, a static tree file).
    pub source: Option<String>,
}

/// The answer to one query.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CheckAnswer {
    /// The query as given (trimmed).
    pub query: String,
    /// `ip`, `domain` or `url`.
    pub kind: &'static str,
    /// Whether any trail matches.
    pub listed: bool,
    /// Whether the whitelist (or an ignored suffix) keeps the sensor from reporting it.
    pub whitelisted: bool,
    /// The matching trails, most specific first.
    pub matches: Vec<TrailMatch>,
}

fn with_label(
    trails: &TrailSet,
    label: LabelId,
    kind: EventType,
    matched: &'static str,
    trail: String,
) -> TrailMatch {
    let l = trails.label(label);
    TrailMatch {
        kind: kind.as_str(),
        matched,
        trail,
        cidr: None,
        info: l.info.clone(),
        reference: l.reference.clone(),
        source: trails.label_source(label).map(|p| p.display().to_string()),
    }
}

/// The longest CIDR row of `label` containing `addr` (display only: the match itself is
/// [`xtrail_detect::trails::IpTrails::lookup`]'s).
fn cidr_row(trails: &TrailSet, addr: IpAddr, label: LabelId) -> Option<String> {
    let addr = match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    match addr {
        IpAddr::V4(a) => trails
            .ip
            .cidr4
            .iter()
            .filter(|(net, p, l)| {
                *l == label && ipnet::Ipv4Net::new((*net).into(), *p).is_ok_and(|n| n.contains(&a))
            })
            .max_by_key(|(_, p, _)| *p)
            .map(|(net, p, _)| format!("{}/{p}", std::net::Ipv4Addr::from(*net))),
        IpAddr::V6(a) => trails
            .ip
            .cidr6
            .iter()
            .filter(|(net, p, l)| {
                *l == label && ipnet::Ipv6Net::new((*net).into(), *p).is_ok_and(|n| n.contains(&a))
            })
            .max_by_key(|(_, p, _)| *p)
            .map(|(net, p, _)| format!("{}/{p}", std::net::Ipv6Addr::from(*net))),
    }
}

fn ip_match(trails: &TrailSet, addr: IpAddr, port: Option<u16>, m: IpMatch) -> TrailMatch {
    let (kind, matched, trail) = match (m.kind, port) {
        (IpMatchKind::IpPort, Some(p)) => {
            let t = match addr {
                IpAddr::V4(a) => format!("{a}:{p}"),
                IpAddr::V6(a) => format!("[{a}]:{p}"),
            };
            (EventType::IpPort, "ip_port", t)
        }
        (IpMatchKind::Cidr, _) => (EventType::Ip, "cidr", addr.to_string()),
        _ => (EventType::Ip, "ip", addr.to_string()),
    };
    let mut out = with_label(trails, m.label, kind, matched, trail);
    if m.kind == IpMatchKind::Cidr {
        out.cidr = cidr_row(trails, addr, m.label);
    }
    out
}

/// IP:port first (when a port is given), then the address or its CIDR.
fn check_ip(trails: &TrailSet, addr: IpAddr, port: Option<u16>, out: &mut Vec<TrailMatch>) {
    if let Some(m) = trails.ip.lookup(addr, port) {
        out.push(ip_match(trails, addr, port, m));
        if m.kind == IpMatchKind::IpPort {
            if let Some(m) = trails.ip.lookup(addr, None) {
                out.push(ip_match(trails, addr, None, m));
            }
        }
    }
}

fn check_domain(trails: &TrailSet, name: &str, out: &mut Vec<TrailMatch>) {
    if let Some(m) = trails.domains.lookup(name) {
        out.push(with_label(
            trails,
            m.label,
            EventType::Dns,
            "domain",
            m.trail,
        ));
    }
}

fn domain_whitelisted(wl: &Whitelist, name: &str) -> bool {
    wl.is_domain_whitelisted(name) || is_ignored_suffix(name)
}

/// Answers one parsed query against a trail set and whitelist.
pub fn check(trails: &TrailSet, wl: &Whitelist, query: &str, ind: &Indicator) -> CheckAnswer {
    let mut matches = Vec::new();
    let whitelisted = match ind {
        Indicator::Ip { addr, port } => {
            check_ip(trails, *addr, *port, &mut matches);
            wl.is_ip_whitelisted(*addr)
        }
        Indicator::Domain(name) => {
            check_domain(trails, name, &mut matches);
            domain_whitelisted(wl, name)
        }
        Indicator::Url { host, port, path } => {
            let host_ip = host.as_deref().and_then(|h| h.parse::<IpAddr>().ok());
            match (host, host_ip) {
                (_, Some(ip)) => check_ip(trails, ip, *port, &mut matches),
                (Some(h), None) => check_domain(trails, h, &mut matches),
                (None, None) => {}
            }
            if let Some(m) = trails.urls.lookup(host.as_deref(), path) {
                matches.push(with_label(trails, m.label, EventType::Url, "url", m.trail));
            }
            match (host, host_ip) {
                (_, Some(ip)) => wl.is_ip_whitelisted(ip),
                (Some(h), None) => domain_whitelisted(wl, h) || wl.is_url_whitelisted(h, path),
                (None, None) => false,
            }
        }
    };
    // Most specific first: URL, then IP:port, then names and addresses.
    matches.sort_by_key(|m| match m.matched {
        "url" => 0,
        "ip_port" => 1,
        _ => 2,
    });
    CheckAnswer {
        query: query.trim().to_string(),
        kind: ind.kind(),
        listed: !matches.is_empty(),
        whitelisted,
        matches,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_read_as_the_right_kind() {
        let ip = |s: &str| parse_query(s).unwrap();
        assert_eq!(
            ip("6.6.6.6:8443"),
            Indicator::Ip {
                addr: "6.6.6.6".parse().unwrap(),
                port: Some(8443)
            }
        );
        assert_eq!(
            ip("[2001:db8::1]:53"),
            Indicator::Ip {
                addr: "2001:db8::1".parse().unwrap(),
                port: Some(53)
            }
        );
        assert_eq!(
            ip("Evil.Example."),
            Indicator::Domain("evil.example".into())
        );
        assert_eq!(
            ip("evil.example:443"),
            Indicator::Domain("evil.example".into())
        );
        assert_eq!(
            ip("HTTPS://User@Evil.Example:8080/Gate.php?x=1#frag"),
            Indicator::Url {
                host: Some("evil.example".into()),
                port: Some(8080),
                path: "/gate.php?x=1".into()
            }
        );
        assert_eq!(
            ip("http://[2001:db8::1]/a"),
            Indicator::Url {
                host: Some("2001:db8::1".into()),
                port: Some(80),
                path: "/a".into()
            }
        );
        assert_eq!(
            ip("/c2.php"),
            Indicator::Url {
                host: None,
                port: None,
                path: "/c2.php".into()
            }
        );
        for q in [
            "",
            "  ",
            "nodot",
            "a b.example",
            "evil.example:99999",
            "1.2.3.4:x",
            "bad!name.example",
            "http:///x",
            "1:2:3",
            "1.2.3.4:99999",
            "1.2.3",
            "ex\u{e4}mple.com",
        ] {
            assert!(parse_query(q).is_err(), "{q:?} accepted");
        }
        assert!(parse_query(&"a".repeat(MAX_QUERY + 1)).is_err());
    }
}
