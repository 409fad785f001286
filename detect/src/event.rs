//! The event model and its two line formats: JSON lines and Maltrail's event line.

use std::fmt::Write as _;
use std::net::IpAddr;

use serde::Serialize;
use time::{format_description::FormatItem, macros::format_description, OffsetDateTime};

/// Event types, as Maltrail names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum EventType {
    #[serde(rename = "IP")]
    Ip,
    #[serde(rename = "IPORT")]
    IpPort,
    #[serde(rename = "DNS")]
    Dns,
    #[serde(rename = "URL")]
    Url,
    #[serde(rename = "HTTP")]
    Http,
    #[serde(rename = "UA")]
    Ua,
    #[serde(rename = "PORT")]
    Port,
    #[serde(rename = "PATH")]
    Path,
    #[serde(rename = "CERT")]
    Cert,
}

impl EventType {
    /// Every type, in the order Maltrail lists them.
    pub const ALL: [EventType; 9] = [
        EventType::Ip,
        EventType::IpPort,
        EventType::Dns,
        EventType::Url,
        EventType::Http,
        EventType::Ua,
        EventType::Port,
        EventType::Path,
        EventType::Cert,
    ];

    /// The name used in both output formats.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Ip => "IP",
            EventType::IpPort => "IPORT",
            EventType::Dns => "DNS",
            EventType::Url => "URL",
            EventType::Http => "HTTP",
            EventType::Ua => "UA",
            EventType::Port => "PORT",
            EventType::Path => "PATH",
            EventType::Cert => "CERT",
        }
    }
}

/// How bad an event is, derived from its info label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
}

impl Severity {
    /// Maltrail's labels carry the category in parentheses: `(malware)` is high,
    /// `(suspicious)` medium; scanners and attackers are low; anything else medium.
    pub fn from_info(info: &str) -> Severity {
        let lower = info.to_ascii_lowercase();
        if lower.contains("(malware)") || lower.contains("(malicious)") || lower.contains("malware")
        {
            Severity::High
        } else if lower.contains("mass scanner") || lower.contains("known attacker") {
            Severity::Low
        } else {
            Severity::Medium
        }
    }
}

/// What the sensor did with the packet that raised the event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Observed only.
    Pass,
    /// Dropped (enforce mode).
    Drop,
}

/// Protocol details, present for DNS, HTTP and TLS events.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Details {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_query: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_qtype: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_user_agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_sni: Option<String>,
}

impl Details {
    fn is_empty(&self) -> bool {
        *self == Details::default()
    }
}

/// One detection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Event {
    /// Microseconds since the Unix epoch.
    #[serde(rename = "ts", serialize_with = "ser_ts")]
    pub ts_us: i64,
    pub sensor: String,
    pub src_ip: IpAddr,
    pub src_port: u16,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
    /// `TCP`, `UDP`, `ICMP`, `ICMPv6` or the protocol number.
    pub proto: String,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub trail: String,
    pub info: String,
    pub reference: String,
    pub severity: Severity,
    pub action: Action,
    /// Interface the packet arrived on, when captured live.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iface: Option<String>,
    /// Version of the trail set the event was matched with (empty: not known, not written).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub trail_set_version: String,
    #[serde(skip_serializing_if = "Details::is_empty", flatten)]
    pub details: Details,
}

const RFC3339_US: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");
const MALTRAIL_TS: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:6]");

fn datetime(ts_us: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ts_us) * 1000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Formats microseconds since the epoch as RFC 3339 UTC with microseconds.
pub fn format_rfc3339(ts_us: i64) -> String {
    datetime(ts_us)
        .format(RFC3339_US)
        .unwrap_or_else(|_| String::from("1970-01-01T00:00:00.000000Z"))
}

fn ser_ts<S: serde::Serializer>(ts_us: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_rfc3339(*ts_us))
}

/// Name of an IP protocol number as events show it.
pub fn proto_name(proto: u8) -> String {
    match proto {
        1 => "ICMP".into(),
        6 => "TCP".into(),
        17 => "UDP".into(),
        58 => "ICMPv6".into(),
        other => other.to_string(),
    }
}

/// The fields every JSON event line carries (others, like `iface` and the protocol details,
/// appear when they apply).
pub const JSON_FIELDS: [&str; 13] = [
    "ts",
    "sensor",
    "src_ip",
    "src_port",
    "dst_ip",
    "dst_port",
    "proto",
    "type",
    "trail",
    "info",
    "reference",
    "severity",
    "action",
];

/// Output line formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line.
    Json,
    /// Maltrail's space-separated event line.
    Maltrail,
}

impl Event {
    /// The event as one JSON line (without the newline).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The event in Maltrail's line format (without the newline):
    /// `"<ts>" <sensor> <src_ip> <src_port> <dst_ip> <dst_port> <proto> <type> <trail> <info> <reference>`.
    pub fn to_maltrail(&self) -> String {
        let mut out = String::with_capacity(160);
        let ts = datetime(self.ts_us).format(MALTRAIL_TS).unwrap_or_default();
        let _ = write!(out, "\"{ts}\"");
        let port = |p: u16| if p == 0 { String::new() } else { p.to_string() };
        for field in [
            self.sensor.clone(),
            self.src_ip.to_string(),
            port(self.src_port),
            self.dst_ip.to_string(),
            port(self.dst_port),
            self.proto.clone(),
            self.kind.as_str().to_string(),
            self.trail.clone(),
            self.info.clone(),
            self.reference.clone(),
        ] {
            out.push(' ');
            push_maltrail_value(&mut out, &field);
        }
        out
    }

    /// The event in the given format.
    pub fn format(&self, format: Format) -> String {
        match format {
            Format::Json => self.to_json(),
            Format::Maltrail => self.to_maltrail(),
        }
    }
}

/// Appends one value of a Maltrail event line: empty values are `-`; values with a space or
/// `"` are quoted with inner quotes doubled (shared with the collector's Maltrail exporter).
pub fn push_maltrail_value(out: &mut String, value: &str) {
    if value.is_empty() {
        out.push('-');
    } else if value.contains([' ', '"']) {
        out.push('"');
        out.push_str(&value.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Event {
        Event {
            ts_us: 1_786_094_062_117_034,
            sensor: "gw".into(),
            src_ip: "10.13.13.2".parse().unwrap(),
            src_port: 57809,
            dst_ip: "1.1.1.1".parse().unwrap(),
            dst_port: 53,
            proto: "UDP".into(),
            kind: EventType::Dns,
            trail: "malware.example".into(),
            info: "asyncrat (malware)".into(),
            reference: "(static)".into(),
            severity: Severity::High,
            action: Action::Pass,
            iface: None,
            trail_set_version: String::new(),
            details: Details::default(),
        }
    }

    #[test]
    fn maltrail_line_matches_documented_example() {
        assert_eq!(
            sample().to_maltrail(),
            "\"2026-08-07 09:14:22.117034\" gw 10.13.13.2 57809 1.1.1.1 53 UDP DNS malware.example \"asyncrat (malware)\" (static)"
        );
    }

    #[test]
    fn maltrail_line_dashes_empty_values_and_zero_ports() {
        let mut e = sample();
        e.src_port = 0;
        e.dst_port = 0;
        e.reference = String::new();
        e.info = "say \"hi\"".into();
        let line = e.to_maltrail();
        assert!(line.contains(" 10.13.13.2 - 1.1.1.1 - UDP "), "{line}");
        assert!(line.ends_with("\"say \"\"hi\"\"\" -"), "{line}");
    }

    #[test]
    fn json_has_the_documented_fields() {
        let v: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
        for key in JSON_FIELDS {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["ts"], "2026-08-07T09:14:22.117034Z");
        assert_eq!(v["type"], "DNS");
        assert_eq!(v["severity"], "high");
    }
}
