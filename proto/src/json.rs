//! A wire event as a JSON object: the sensor's JSON line fields (`ts` in RFC 3339 UTC with
//! microseconds, `type`, lowercase `severity` and `action`, flattened protocol details)
//! plus its storage identity (`sensor_id`, `seq`, `cursor`). Used by the collector's HTTP
//! API and its `subscribe` command, so a SIEM reading either sees the sensor's own format.

use serde_json::{Map, Value};
use xtrail_detect::event::format_rfc3339;

use crate::v1;

/// Lowercase name of a wire severity (`low`, `medium`, `high`, `unspecified`).
pub fn severity_name(value: i32) -> &'static str {
    match v1::Severity::try_from(value) {
        Ok(v1::Severity::Low) => "low",
        Ok(v1::Severity::Medium) => "medium",
        Ok(v1::Severity::High) => "high",
        _ => "unspecified",
    }
}

/// Lowercase name of a wire action (`pass`, `drop`, `unspecified`).
pub fn action_name(value: i32) -> &'static str {
    match v1::Action::try_from(value) {
        Ok(v1::Action::Pass) => "pass",
        Ok(v1::Action::Drop) => "drop",
        _ => "unspecified",
    }
}

/// The event as a JSON object with the sensor's field names.
pub fn event_to_json(e: &v1::Event) -> Value {
    let mut m = Map::new();
    m.insert("ts".into(), format_rfc3339(e.ts_us).into());
    m.insert("sensor".into(), e.sensor.clone().into());
    m.insert("src_ip".into(), e.src_ip.clone().into());
    m.insert("src_port".into(), e.src_port.into());
    m.insert("dst_ip".into(), e.dst_ip.clone().into());
    m.insert("dst_port".into(), e.dst_port.into());
    m.insert("proto".into(), e.proto.clone().into());
    m.insert("type".into(), e.r#type.clone().into());
    m.insert("trail".into(), e.trail.clone().into());
    m.insert("info".into(), e.info.clone().into());
    m.insert("reference".into(), e.reference.clone().into());
    m.insert("severity".into(), severity_name(e.severity).into());
    m.insert("action".into(), action_name(e.action).into());
    let mut opt = |key: &str, v: &Option<String>| {
        if let Some(v) = v {
            m.insert(key.into(), v.clone().into());
        }
    };
    opt("iface", &e.iface);
    if let Some(d) = &e.dns {
        opt("dns_query", &d.query);
        opt("dns_qtype", &d.qtype);
    }
    if let Some(h) = &e.http {
        opt("http_method", &h.method);
        opt("http_host", &h.host);
        opt("http_path", &h.path);
        opt("http_user_agent", &h.user_agent);
    }
    if let Some(t) = &e.tls {
        opt("tls_sni", &t.sni);
    }
    m.insert("sensor_id".into(), e.sensor_id.clone().into());
    m.insert("seq".into(), e.seq.into());
    m.insert("cursor".into(), e.cursor.into());
    if !e.trail_set_version.is_empty() {
        m.insert(
            "trail_set_version".into(),
            e.trail_set_version.clone().into(),
        );
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_matches_the_sensor_names() {
        let e = v1::Event {
            ts_us: 1_786_094_062_117_034,
            r#type: "DNS".into(),
            severity: v1::Severity::High as i32,
            action: v1::Action::Pass as i32,
            dns: Some(v1::DnsDetails {
                query: Some("evil.example".into()),
                qtype: None,
            }),
            seq: 7,
            cursor: 9,
            ..Default::default()
        };
        let v = event_to_json(&e);
        assert_eq!(v["ts"], "2026-08-07T09:14:22.117034Z");
        assert_eq!(v["type"], "DNS");
        assert_eq!(v["severity"], "high");
        assert_eq!(v["dns_query"], "evil.example");
        assert!(v.get("dns_qtype").is_none());
        assert_eq!(v["cursor"], 9);
    }
}
