//! Event filters: a wire [`v1::Filter`] checked and compiled once, then applied to live
//! events ([`EventFilter::matches`]) and pushed down to storage (the same fields, see
//! `storage::sqlite`). Also the `key=value` form used by the CLI and the HTTP API.

use std::net::IpAddr;

use ipnet::IpNet;
use thiserror::Error;
use xtrail_proto::v1;

/// Limits that keep one request from asking for unbounded work.
const MAX_LIST: usize = 256;
const MAX_TEXT: usize = 1024;

/// The one case fold of the collector: live filtering, stored-event queries (SQLite's
/// `xfold`) and filter terms all go through it, so a filter gives the same answer whenever
/// it runs. Unicode lowercase (`İSTANBUL` and `istanbul`, `ÄRGER` and `ärger` meet).
pub fn fold(s: &str) -> String {
    s.to_lowercase()
}

/// A malformed filter; the message says which field and why.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("filter: {0}")]
pub struct FilterError(pub String);

/// An inclusive range of addresses in their 16-byte key form (IPv4 as IPv4-mapped IPv6),
/// so that a CIDR is a range comparison both here and in storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpRange {
    /// First address of the network.
    pub lo: [u8; 16],
    /// Last address of the network.
    pub hi: [u8; 16],
}

impl IpRange {
    fn contains(&self, key: &[u8; 16]) -> bool {
        &self.lo <= key && key <= &self.hi
    }
}

/// The storage key of an address: IPv4 as `::ffff:a.b.c.d`, IPv6 as is.
pub fn ip_key(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Parses `192.0.2.0/24`, `2001:db8::/32` or a bare address into a key range.
pub fn parse_cidr(text: &str) -> Result<IpRange, String> {
    let text = text.trim();
    let net: IpNet = if text.contains('/') {
        text.parse()
            .map_err(|_| format!("{text:?} is not a CIDR (expected e.g. 192.0.2.0/24)"))?
    } else {
        let ip: IpAddr = text
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR"))?;
        IpNet::from(ip)
    };
    Ok(IpRange {
        lo: ip_key(net.network()),
        hi: ip_key(net.broadcast()),
    })
}

/// A checked filter, ready to apply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Wire severity value; 0 admits all.
    pub min_severity: i32,
    /// Uppercase event types; empty admits all.
    pub types: Vec<String>,
    /// Sensor names; empty admits all.
    pub sensors: Vec<String>,
    /// Source ranges; empty admits all.
    pub src: Vec<IpRange>,
    /// Destination ranges; empty admits all.
    pub dst: Vec<IpRange>,
    /// Lowercase trail substring.
    pub trail: Option<String>,
    /// Lowercase info substring.
    pub info: Option<String>,
}

fn list<T>(
    field: &str,
    values: &[String],
    f: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, FilterError> {
    if values.len() > MAX_LIST {
        return Err(FilterError(format!(
            "{field}: {} values, at most {MAX_LIST}",
            values.len()
        )));
    }
    values
        .iter()
        .map(|v| f(v).map_err(|e| FilterError(format!("{field}: {e}"))))
        .collect()
}

fn text(field: &str, value: &str) -> Result<Option<String>, FilterError> {
    if value.len() > MAX_TEXT {
        return Err(FilterError(format!(
            "{field}: longer than {MAX_TEXT} bytes"
        )));
    }
    Ok((!value.is_empty()).then(|| fold(value)))
}

fn short(v: &str) -> Result<String, String> {
    if v.trim().is_empty() {
        Err("empty value".into())
    } else if v.len() > 256 {
        Err("value longer than 256 bytes".into())
    } else {
        Ok(v.trim().to_string())
    }
}

impl EventFilter {
    /// Checks and compiles a wire filter (`None` = match everything).
    pub fn compile(f: Option<&v1::Filter>) -> Result<Self, FilterError> {
        let Some(f) = f else {
            return Ok(EventFilter::default());
        };
        if v1::Severity::try_from(f.min_severity).is_err() {
            return Err(FilterError(format!(
                "min_severity: unknown value {}",
                f.min_severity
            )));
        }
        Ok(EventFilter {
            min_severity: f.min_severity,
            types: list("types", &f.types, |v| {
                short(v).map(|s| s.to_ascii_uppercase())
            })?,
            sensors: list("sensors", &f.sensors, short)?,
            src: list("src_cidrs", &f.src_cidrs, parse_cidr)?,
            dst: list("dst_cidrs", &f.dst_cidrs, parse_cidr)?,
            trail: text("trail_contains", &f.trail_contains)?,
            info: text("info_contains", &f.info_contains)?,
        })
    }

    /// Whether a (stored, well-formed) event passes.
    pub fn matches(&self, e: &v1::Event) -> bool {
        if e.severity < self.min_severity {
            return false;
        }
        if !self.types.is_empty() && !self.types.iter().any(|t| t.eq_ignore_ascii_case(&e.r#type)) {
            return false;
        }
        if !self.sensors.is_empty() && !self.sensors.contains(&e.sensor) {
            return false;
        }
        let in_ranges = |ranges: &[IpRange], ip: &str| {
            ranges.is_empty()
                || ip
                    .parse::<IpAddr>()
                    .is_ok_and(|ip| ranges.iter().any(|r| r.contains(&ip_key(ip))))
        };
        if !in_ranges(&self.src, &e.src_ip) || !in_ranges(&self.dst, &e.dst_ip) {
            return false;
        }
        let has = |needle: &Option<String>, hay: &str| {
            needle
                .as_ref()
                .is_none_or(|n| fold(hay).contains(n.as_str()))
        };
        has(&self.trail, &e.trail) && has(&self.info, &e.info)
    }
}

/// Parses a severity name or number (`high`, `medium`, `low`, `3`).
pub fn parse_severity(v: &str) -> Result<v1::Severity, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "low" | "1" => Ok(v1::Severity::Low),
        "medium" | "2" => Ok(v1::Severity::Medium),
        "high" | "3" => Ok(v1::Severity::High),
        "" | "any" | "0" => Ok(v1::Severity::Unspecified),
        other => Err(format!("unknown severity {other:?} (low, medium, high)")),
    }
}

/// Adds one `key=value` filter term (CLI `--filter`, HTTP query parameters). Lists take
/// several terms or comma-separated values. Returns false for a key that is not a filter
/// key, so the caller can handle its own keys (paging, time range).
pub fn apply_filter_term(f: &mut v1::Filter, key: &str, value: &str) -> Result<bool, FilterError> {
    let split = |v: &str| -> Vec<String> {
        v.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    };
    match key {
        "min_severity" | "severity" => {
            f.min_severity =
                parse_severity(value).map_err(|e| FilterError(format!("{key}: {e}")))? as i32;
        }
        "type" | "types" => f.types.extend(split(value)),
        "sensor" | "sensors" => f.sensors.extend(split(value)),
        "src" | "src_cidr" | "src_cidrs" | "src_ip" => f.src_cidrs.extend(split(value)),
        "dst" | "dst_cidr" | "dst_cidrs" | "dst_ip" => f.dst_cidrs.extend(split(value)),
        "trail" | "trail_contains" => f.trail_contains = value.to_string(),
        "info" | "info_contains" => f.info_contains = value.to_string(),
        _ => return Ok(false),
    }
    Ok(true)
}

/// Parses a `key=value` CLI filter.
pub fn parse_filter_args(args: &[String]) -> Result<v1::Filter, FilterError> {
    let mut f = v1::Filter::default();
    for arg in args {
        let (k, v) = arg
            .split_once('=')
            .ok_or_else(|| FilterError(format!("{arg:?}: expected key=value")))?;
        if !apply_filter_term(&mut f, k.trim(), v.trim())? {
            return Err(FilterError(format!(
                "unknown filter key {k:?} (min_severity, type, sensor, src, dst, trail, info)"
            )));
        }
    }
    EventFilter::compile(Some(&f))?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev() -> v1::Event {
        v1::Event {
            sensor: "gw".into(),
            src_ip: "198.18.0.7".into(),
            dst_ip: "2001:db8::5".into(),
            r#type: "DNS".into(),
            trail: "Evil.Example".into(),
            info: "asyncrat (malware)".into(),
            severity: v1::Severity::Medium as i32,
            ..Default::default()
        }
    }

    #[test]
    fn filters_match_as_documented() {
        let f = parse_filter_args(&[
            "type=dns,ip".into(),
            "src=198.18.0.0/15".into(),
            "dst=2001:db8::/32".into(),
            "trail=evil".into(),
            "severity=medium".into(),
            "sensor=gw".into(),
        ])
        .unwrap();
        let c = EventFilter::compile(Some(&f)).unwrap();
        assert!(c.matches(&ev()));
        let mut e = ev();
        e.severity = v1::Severity::Low as i32;
        assert!(!c.matches(&e));
        let mut e = ev();
        e.src_ip = "198.20.0.1".into();
        assert!(!c.matches(&e));
        let mut e = ev();
        e.r#type = "URL".into();
        assert!(!c.matches(&e));
        assert!(EventFilter::default().matches(&ev()));
    }

    #[test]
    fn malformed_filters_say_what_is_wrong() {
        let e = parse_filter_args(&["src=10.0.0.0/33".into()]).unwrap_err();
        assert!(
            e.0.contains("src_cidrs") && e.0.contains("10.0.0.0/33"),
            "{e}"
        );
        assert!(parse_filter_args(&["color=red".into()]).is_err());
        assert!(parse_filter_args(&["severity=extreme".into()]).is_err());
        let f = v1::Filter {
            min_severity: 9,
            ..Default::default()
        };
        assert!(EventFilter::compile(Some(&f)).is_err());
    }
}
