//! The ECS file exporter's output against the ECS field types: the real collector, fed by
//! the stock publisher with events of every kind, writes ECS lines; every field of every
//! line must be an ECS field of the table below (or in the `xtrail.*` custom namespace)
//! with a value of that field's type: `date` an RFC 3339 string, `ip` an IPv4/IPv6 address,
//! `long` a JSON integer, `keyword`/`wildcard` a string; categorization fields hold one of
//! ECS's allowed values.
//!
//! The table is ECS 8.11's (`generated/csv/fields.csv` of elastic/ecs: field, type); only
//! the fields xtrail writes are listed. A new field in `export/file.rs` fails this test until
//! it is added here with its ECS type.

mod common;

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{sample, tempdir, Collector, SENSOR_TOKEN};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use xtrail_detect::event::{Action, Details, Event, EventType, Severity};
use xtrail_publish::{Publisher, PublisherConfig};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ty {
    Date,
    Ip,
    Long,
    Keyword,
    Wildcard,
}

/// (field, ECS type, may be an array). From the ECS 8.11 field reference.
const ECS: &[(&str, Ty, bool)] = &[
    ("@timestamp", Ty::Date, false),
    ("ecs.version", Ty::Keyword, false),
    ("event.kind", Ty::Keyword, false),
    ("event.category", Ty::Keyword, true),
    ("event.type", Ty::Keyword, true),
    ("event.action", Ty::Keyword, false),
    ("event.severity", Ty::Long, false),
    ("event.id", Ty::Keyword, false),
    ("event.dataset", Ty::Keyword, false),
    ("event.module", Ty::Keyword, false),
    ("source.ip", Ty::Ip, false),
    ("source.port", Ty::Long, false),
    ("destination.ip", Ty::Ip, false),
    ("destination.port", Ty::Long, false),
    ("network.transport", Ty::Keyword, false),
    ("network.type", Ty::Keyword, false),
    ("observer.name", Ty::Keyword, false),
    ("observer.type", Ty::Keyword, false),
    ("observer.vendor", Ty::Keyword, false),
    ("observer.product", Ty::Keyword, false),
    ("observer.ingress.interface.name", Ty::Keyword, false),
    ("rule.name", Ty::Keyword, false),
    ("rule.category", Ty::Keyword, false),
    ("threat.indicator.type", Ty::Keyword, false),
    ("threat.indicator.name", Ty::Keyword, false),
    ("threat.indicator.description", Ty::Keyword, false),
    ("threat.indicator.reference", Ty::Keyword, false),
    ("dns.question.name", Ty::Keyword, false),
    ("dns.question.type", Ty::Keyword, false),
    ("url.original", Ty::Wildcard, false),
    ("url.domain", Ty::Keyword, false),
    ("url.path", Ty::Wildcard, false),
    ("http.request.method", Ty::Keyword, false),
    ("user_agent.original", Ty::Keyword, false),
    ("tls.client.server_name", Ty::Keyword, false),
];

/// xtrail's own fields, in their own namespace as ECS asks of custom fields.
const CUSTOM: &[(&str, Ty)] = &[
    ("xtrail.sensor_id", Ty::Keyword),
    ("xtrail.seq", Ty::Long),
    ("xtrail.cursor", Ty::Long),
    ("xtrail.type", Ty::Keyword),
    ("xtrail.severity", Ty::Keyword),
];

/// ECS allowed values of the categorization fields (and `threat.indicator.type`).
const ALLOWED: &[(&str, &[&str])] = &[
    (
        "event.kind",
        &[
            "alert",
            "asset",
            "enrichment",
            "event",
            "metric",
            "state",
            "pipeline_error",
            "signal",
        ],
    ),
    (
        "event.category",
        &[
            "api",
            "authentication",
            "configuration",
            "database",
            "driver",
            "email",
            "file",
            "host",
            "iam",
            "intrusion_detection",
            "library",
            "malware",
            "network",
            "package",
            "process",
            "registry",
            "session",
            "threat",
            "vulnerability",
            "web",
        ],
    ),
    (
        "event.type",
        &[
            "access",
            "admin",
            "allowed",
            "change",
            "connection",
            "creation",
            "deletion",
            "denied",
            "end",
            "error",
            "group",
            "indicator",
            "info",
            "installation",
            "protocol",
            "start",
            "user",
        ],
    ),
    (
        "threat.indicator.type",
        &[
            "autonomous-system",
            "artifact",
            "directory",
            "domain-name",
            "email-addr",
            "file",
            "ipv4-addr",
            "ipv6-addr",
            "mac-addr",
            "mutex",
            "port",
            "process",
            "software",
            "url",
            "user-account",
            "windows-registry-key",
            "x509-certificate",
        ],
    ),
    ("network.type", &["ipv4", "ipv6"]),
];

/// Leaves of a document as (dotted name, value); arrays are leaves.
fn leaves(prefix: &str, v: &Value, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(&name, v, out);
            }
        }
        other => out.push((prefix.to_string(), other.clone())),
    }
}

/// Why `v` is not a value of type `ty`, if it is not.
fn type_error(ty: Ty, v: &Value) -> Option<String> {
    let ok = match ty {
        Ty::Date => v
            .as_str()
            .is_some_and(|s| OffsetDateTime::parse(s, &Rfc3339).is_ok()),
        Ty::Ip => v.as_str().is_some_and(|s| s.parse::<IpAddr>().is_ok()),
        Ty::Long => v.as_i64().is_some() && !v.is_f64(),
        Ty::Keyword | Ty::Wildcard => v.as_str().is_some_and(|s| !s.is_empty()),
    };
    (!ok).then(|| format!("{v} is not a {ty:?}"))
}

/// Every problem with one ECS line.
fn check_line(line: &str) -> Vec<String> {
    let doc: Value = match serde_json::from_str(line) {
        Ok(d) => d,
        Err(e) => return vec![format!("not JSON: {e}")],
    };
    let mut fields = Vec::new();
    leaves("", &doc, &mut fields);
    let mut problems = Vec::new();
    for (name, v) in &fields {
        let (ty, array) = match ECS.iter().find(|(f, _, _)| f == name) {
            Some((_, ty, array)) => (*ty, *array),
            None => match CUSTOM.iter().find(|(f, _)| f == name) {
                Some((_, ty)) => (*ty, false),
                None => {
                    problems.push(format!("{name}: not an ECS field of the table"));
                    continue;
                }
            },
        };
        let values: Vec<&Value> = match v {
            Value::Array(items) if array => items.iter().collect(),
            Value::Array(_) => {
                problems.push(format!("{name}: an array where ECS expects one value"));
                continue;
            }
            v => vec![v],
        };
        for v in values {
            if let Some(e) = type_error(ty, v) {
                problems.push(format!("{name}: {e}"));
            }
            if let Some((_, allowed)) = ALLOWED.iter().find(|(f, _)| f == name) {
                if !v.as_str().is_some_and(|s| allowed.contains(&s)) {
                    problems.push(format!("{name}: {v} is not an ECS allowed value"));
                }
            }
        }
    }
    for required in ["@timestamp", "ecs.version", "event.kind", "source.ip"] {
        if !fields.iter().any(|(n, _)| n == required) {
            problems.push(format!("{required} missing"));
        }
    }
    problems
}

/// Events of every type the sensor raises, with and without ports, v4 and v6, dropped.
fn events() -> Vec<Event> {
    let mut out: Vec<Event> = (0..40).map(sample).collect();
    let base = sample(0);
    let with = |kind: EventType, trail: &str, details: Details, proto: &str, port: u16| Event {
        kind,
        trail: trail.into(),
        details,
        proto: proto.into(),
        dst_port: port,
        src_port: port,
        ..base.clone()
    };
    let http = Details {
        http_method: Some("POST".into()),
        http_host: Some("evil.example".into()),
        http_path: Some("/gate.php?id=1".into()),
        http_user_agent: Some("Mozilla/5.0 (sqlmap)".into()),
        ..Details::default()
    };
    out.push(with(
        EventType::Url,
        "(evil.example)/gate.php",
        http.clone(),
        "TCP",
        80,
    ));
    out.push(with(EventType::Ua, "sqlmap", http.clone(), "TCP", 80));
    out.push(with(
        EventType::Path,
        "/etc/passwd",
        http.clone(),
        "TCP",
        8080,
    ));
    out.push(with(
        EventType::IpPort,
        "6.6.6.6:8443",
        Details::default(),
        "TCP",
        8443,
    ));
    out.push(with(
        EventType::Port,
        "198.18.0.9",
        Details::default(),
        "TCP",
        22,
    ));
    out.push(with(
        EventType::Ip,
        "6.6.6.6",
        Details::default(),
        "ICMP",
        0,
    ));
    out.push(Event {
        src_ip: "2001:db8::5".parse().unwrap(),
        dst_ip: "2001:db8::66".parse().unwrap(),
        ..with(
            EventType::Ip,
            "2001:db8::66",
            Details::default(),
            "ICMPV6",
            0,
        )
    });
    out.push(Event {
        action: Action::Drop,
        severity: Severity::High,
        ..with(
            EventType::Ip,
            "[2001:db8::66]:443",
            Details::default(),
            "TCP",
            443,
        )
    });
    out.push(with(
        EventType::Cert,
        "(www.)evil.example",
        Details {
            tls_sni: Some("www.evil.example".into()),
            ..Details::default()
        },
        "TCP",
        443,
    ));
    out
}

#[test]
fn ecs_lines_match_the_ecs_field_types() {
    // The table itself: names as ECS spells them, each once.
    for (i, (f, _, _)) in ECS.iter().enumerate() {
        assert!(!ECS[i + 1..].iter().any(|(g, _, _)| g == f), "{f} twice");
    }
    let dir = tempdir("ecs-schema");
    let ecs = dir.path().join("ecs.json");
    let config = dir.path().join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "[[exporter]]\nkind = \"file\"\nname = \"ecs\"\npath = \"{}\"\n",
            ecs.display()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let c = Collector::start(&data, None, &["--config", config.to_str().unwrap()]);
    let events = events();
    let spool = dir.path().join("spool");
    let cfg = PublisherConfig::new(c.url(), SENSOR_TOKEN, "gw-test", &spool);
    let p = Publisher::start(cfg).unwrap();
    for e in &events {
        p.publish(e).unwrap();
    }
    p.flush(Duration::from_secs(60)).expect("flush");
    p.shutdown().unwrap();

    let read = |p: &Path| -> Vec<String> {
        std::fs::read_to_string(p)
            .map(|t| t.lines().map(String::from).collect())
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while read(&ecs).len() < events.len() {
        assert!(
            Instant::now() < deadline,
            "{} of {} ECS lines",
            read(&ecs).len(),
            events.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let lines = read(&ecs);
    assert_eq!(lines.len(), events.len());
    let mut seen = std::collections::BTreeSet::new();
    for l in &lines {
        let problems = check_line(l);
        assert!(problems.is_empty(), "{l}\n{}", problems.join("\n"));
        let doc: Value = serde_json::from_str(l).unwrap();
        let mut fields = Vec::new();
        leaves("", &doc, &mut fields);
        seen.extend(fields.into_iter().map(|(n, _)| n));
    }
    // The events above reach every field of the table: the test checks what it lists.
    for (f, _, _) in ECS {
        assert!(seen.contains(*f), "no line carries {f}");
    }
}

#[test]
fn the_checker_refuses_wrong_types() {
    let good = r#"{"@timestamp":"2026-08-07T09:14:22.117034Z","ecs":{"version":"8.11.0"},"event":{"kind":"alert","severity":9},"source":{"ip":"198.18.0.7","port":41234}}"#;
    assert_eq!(check_line(good), Vec::<String>::new());
    for (bad, why) in [
        (good.replace("41234", "\"41234\""), "source.port"),
        (good.replace("198.18.0.7", "evil.example"), "source.ip"),
        (
            good.replace("2026-08-07T09:14:22.117034Z", "yesterday"),
            "@timestamp",
        ),
        (
            good.replace("\"severity\":9", "\"severity\":9.5"),
            "event.severity",
        ),
        (good.replace("alert", "bogus"), "event.kind"),
        (good.replace("\"kind\"", "\"kindx\""), "event.kindx"),
    ] {
        let p = check_line(&bad);
        assert!(p.iter().any(|m| m.contains(why)), "{bad}: {p:?}");
    }
}
