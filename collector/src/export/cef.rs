//! ArcSight Common Event Format (CEF) bodies, as Maltrail's `SYSLOG_SERVER` sends them, with
//! a real severity and a few more standard keys:
//!
//! ```text
//! CEF:0|xtrail|xtrail-sensor|0.1.0|DNS|asyncrat (malware)|9|src=198.18.0.7 spt=41234 dst=198.19.0.1 dpt=53 trail=evil.example ref=(static) proto=UDP rt=1786094062117 dvchost=gw1 act=pass cat=DNS externalId=42 dhost=evil.example
//! ```
//!
//! Header: vendor `xtrail`, product `xtrail-sensor`, the collector's version, signature id =
//! event type, name = the trail's info label (the trail when there is none), severity
//! 0-10: low 3, medium 6, high 9 (unspecified 5). Extension: Maltrail's keys first
//! (`src spt dst dpt trail ref`, ports omitted when 0), then `proto`, `rt` (event time, ms
//! since the epoch), `dvchost` (sensor), `act` (pass/drop), `cat` (type), `externalId`
//! (collector cursor), and when known `dhost` (DNS name, HTTP host or TLS SNI),
//! `requestMethod`, `request` (URL), `requestClientApplication` (user agent),
//! `deviceInboundInterface`. Escaping per the CEF spec: in the header `\` and `|` are
//! backslash-escaped; in extension values `\` and `=` are, and CR/LF become `\r` / `\n`.
//! Header fields cannot carry line breaks, so they become spaces.

use std::fmt::Write as _;

use xtrail_proto::v1;

/// CEF severity (0-10) of a wire severity: low 3, medium 6, high 9, unspecified 5.
pub fn severity(wire: i32) -> u8 {
    match v1::Severity::try_from(wire) {
        Ok(v1::Severity::Low) => 3,
        Ok(v1::Severity::Medium) => 6,
        Ok(v1::Severity::High) => 9,
        _ => 5,
    }
}

/// Escapes a header field: `\` → `\\`, `|` → `\|`, line breaks → space.
pub fn escape_header(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            '\r' | '\n' => out.push(' '),
            c => out.push(c),
        }
    }
}

/// Escapes an extension value: `\` → `\\`, `=` → `\=`, CR → `\r`, LF → `\n`.
pub fn escape_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '=' => out.push_str("\\="),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// The URL of an HTTP event (`http://host/path`), if it has a host or path.
pub fn http_url(e: &v1::Event) -> Option<String> {
    let h = e.http.as_ref()?;
    match (&h.host, &h.path) {
        (None, None) => None,
        (host, path) => Some(format!(
            "http://{}{}",
            host.as_deref().unwrap_or(&e.dst_ip),
            path.as_deref().unwrap_or("/")
        )),
    }
}

/// The domain an event is about: DNS query, HTTP host or TLS SNI.
pub fn domain(e: &v1::Event) -> Option<&str> {
    e.dns
        .as_ref()
        .and_then(|d| d.query.as_deref())
        .or_else(|| e.http.as_ref().and_then(|h| h.host.as_deref()))
        .or_else(|| e.tls.as_ref().and_then(|t| t.sni.as_deref()))
}

/// The event as one CEF line (no line break).
pub fn to_cef(e: &v1::Event) -> String {
    let mut out = String::with_capacity(256);
    out.push_str("CEF:0|xtrail|xtrail-sensor|");
    escape_header(&mut out, env!("CARGO_PKG_VERSION"));
    out.push('|');
    escape_header(&mut out, &e.r#type);
    out.push('|');
    escape_header(&mut out, if e.info.is_empty() { &e.trail } else { &e.info });
    let _ = write!(out, "|{}|", severity(e.severity));
    let mut first = true;
    let mut kv = |k: &str, v: &str| {
        if v.is_empty() {
            return;
        }
        if !first {
            out.push(' ');
        }
        first = false;
        out.push_str(k);
        out.push('=');
        escape_value(&mut out, v);
    };
    let port = |p: u32| if p == 0 { String::new() } else { p.to_string() };
    kv("src", &e.src_ip);
    kv("spt", &port(e.src_port));
    kv("dst", &e.dst_ip);
    kv("dpt", &port(e.dst_port));
    kv("trail", &e.trail);
    kv("ref", &e.reference);
    kv("proto", &e.proto);
    kv("rt", &(e.ts_us.div_euclid(1000)).to_string());
    kv("dvchost", &e.sensor);
    kv("act", xtrail_proto::json::action_name(e.action));
    kv("cat", &e.r#type);
    kv("externalId", &e.cursor.to_string());
    kv("dhost", domain(e).unwrap_or(""));
    if let Some(h) = &e.http {
        kv("requestMethod", h.method.as_deref().unwrap_or(""));
        kv("request", &http_url(e).unwrap_or_default());
        kv(
            "requestClientApplication",
            h.user_agent.as_deref().unwrap_or(""),
        );
    }
    kv("deviceInboundInterface", e.iface.as_deref().unwrap_or(""));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cef_escapes_header_and_extension() {
        let e = v1::Event {
            ts_us: 1_786_094_062_117_034,
            sensor: "gw1".into(),
            src_ip: "198.18.0.7".into(),
            src_port: 41234,
            dst_ip: "198.19.0.1".into(),
            dst_port: 80,
            proto: "TCP".into(),
            r#type: "HTTP".into(),
            trail: "evil|x=y\\z".into(),
            info: "bad|info\\ (malware)\nx".into(),
            reference: "a=b".into(),
            severity: v1::Severity::High as i32,
            action: v1::Action::Drop as i32,
            http: Some(v1::HttpDetails {
                method: Some("GET".into()),
                host: Some("evil.example".into()),
                path: Some("/a?b=c".into()),
                user_agent: Some("curl\n8".into()),
            }),
            cursor: 42,
            ..Default::default()
        };
        let line = to_cef(&e);
        assert_eq!(
            line,
            "CEF:0|xtrail|xtrail-sensor|0.1.0|HTTP|bad\\|info\\\\ (malware) x|9|src=198.18.0.7 spt=41234 dst=198.19.0.1 dpt=80 trail=evil|x\\=y\\\\z ref=a\\=b proto=TCP rt=1786094062117 dvchost=gw1 act=drop cat=HTTP externalId=42 dhost=evil.example requestMethod=GET request=http://evil.example/a?b\\=c requestClientApplication=curl\\n8"
        );
        assert_eq!(severity(v1::Severity::Low as i32), 3);
        assert_eq!(severity(v1::Severity::Medium as i32), 6);
        assert_eq!(severity(0), 5);
    }
}
