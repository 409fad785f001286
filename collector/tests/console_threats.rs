//! The console's threat API against the real collector binary: events published through
//! the real publisher are grouped into threats (Maltrail's keys), searched with the query
//! language, triaged by one analyst and seen by another, refused to a viewer, limited to a
//! scoped user's networks in every list, exported (CSV, JSON, IOCs), streamed live (SSE),
//! and counted once across a SIGKILL and restart.

mod common;

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use xtrail_bench::http::Response;
use xtrail_detect::event::{Action, Details, Event, EventType, Severity};
use xtrail_publish::PublisherConfig;

const HOUR: i64 = 3_600_000_000;

/// One HTTP/1.1 exchange.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Response {
    xtrail_bench::http::request(addr, method, path, headers, body).expect("http")
}

/// A signed-in console user (or the subscriber token).
struct Client {
    addr: SocketAddr,
    cookie: Option<String>,
    csrf: String,
    token: Option<&'static str>,
}

impl Client {
    fn login(addr: SocketAddr, user: &str, password: &str) -> Client {
        let body = format!("username={user}&password={password}");
        let r = http(
            addr,
            "POST",
            "/login",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            &body,
        );
        assert_eq!(r.status, 303, "login {user}");
        let cookie = r.cookie().expect("session cookie").to_string();
        let mut c = Client {
            addr,
            cookie: Some(cookie),
            csrf: String::new(),
            token: None,
        };
        let (st, s) = c.get("/api/session");
        assert_eq!(st, 200, "{s}");
        c.csrf = s["csrf"].as_str().expect("csrf").to_string();
        c
    }

    fn token(addr: SocketAddr) -> Client {
        Client {
            addr,
            cookie: None,
            csrf: String::new(),
            token: Some(SUB_TOKEN),
        }
    }

    fn headers(&self) -> Vec<(&str, String)> {
        let mut h = Vec::new();
        if let Some(c) = &self.cookie {
            h.push(("Cookie", c.clone()));
            h.push(("x-csrf-token", self.csrf.clone()));
        }
        if let Some(t) = self.token {
            h.push(("Authorization", format!("Bearer {t}")));
        }
        h
    }

    fn raw(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let owned = self.headers();
        let mut h: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
        h.push(("Content-Type", "application/json"));
        let r = http(self.addr, method, path, &h, body);
        (r.status, r.body)
    }

    fn get(&self, path: &str) -> (u16, Value) {
        let (st, b) = self.raw("GET", path, "");
        (st, serde_json::from_str(&b).unwrap_or(Value::String(b)))
    }

    fn get_text(&self, path: &str) -> (u16, String) {
        self.raw("GET", path, "")
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (st, b) = self.raw("POST", path, &body.to_string());
        (st, serde_json::from_str(&b).unwrap_or(Value::String(b)))
    }

    fn threats(&self, query: &str) -> Vec<Value> {
        let (st, v) = self.get(&format!("/api/threats?limit=1000&{query}"));
        assert_eq!(st, 200, "{query}: {v}");
        v["threats"].as_array().unwrap().clone()
    }
}

fn enc(q: &str) -> String {
    let mut out = String::new();
    for b in q.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn user_add(data: &std::path::Path, name: &str, role: &str, scope: Option<&str>) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_xtrail-collector"));
    cmd.args(["user", "add", name, "--role", role, "--data-dir"])
        .arg(data);
    if let Some(s) = scope {
        cmd.args(["--scope", s]);
    }
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("user add");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("pw-{name}-secret\n").as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "user add {name}");
}

#[allow(clippy::too_many_arguments)]
fn event(
    ts_us: i64,
    src: &str,
    dst: &str,
    dst_port: u16,
    proto: &str,
    kind: EventType,
    trail: &str,
    info: &str,
    reference: &str,
    severity: Severity,
) -> Event {
    let mut details = Details::default();
    if kind == EventType::Dns {
        details.dns_query = Some(trail.to_string());
        details.dns_qtype = Some("A".into());
    }
    Event {
        ts_us,
        sensor: "edge-1".into(),
        src_ip: src.parse::<IpAddr>().unwrap(),
        src_port: 40_000,
        dst_ip: dst.parse::<IpAddr>().unwrap(),
        dst_port,
        proto: proto.into(),
        kind,
        trail: trail.into(),
        info: info.into(),
        reference: reference.into(),
        severity,
        action: Action::Pass,
        iface: None,
        trail_set_version: String::new(),
        details,
    }
}

/// Every event the test publishes: (label, events).
fn fixture(now: i64) -> Vec<Event> {
    let mut v = Vec::new();
    let t = now - 2 * HOUR;
    // A: one source, one trail, five events: one threat of count 5.
    for i in 0..5 {
        v.push(event(
            t + i,
            "198.18.0.10",
            "198.19.0.53",
            53,
            "UDP",
            EventType::Dns,
            "evil.example",
            "malware <script>alert(1)</script>",
            "(static)",
            Severity::High,
        ));
    }
    // B: the same trail from a host outside the scoped user's network.
    for i in 0..3 {
        v.push(event(
            t + 10 + i,
            "198.18.1.20",
            "198.19.0.53",
            53,
            "UDP",
            EventType::Dns,
            "evil.example",
            "malware <script>alert(1)</script>",
            "(static)",
            Severity::High,
        ));
    }
    // C: an IP trail.
    for i in 0..2 {
        v.push(event(
            t + 20 + i,
            "198.18.0.11",
            "198.19.5.5",
            443,
            "TCP",
            EventType::Ip,
            "198.19.5.5",
            "known attacker",
            "blocklist.example",
            Severity::Medium,
        ));
    }
    // D: a heuristic, keyed by source and info whatever the trail.
    for (i, path) in ["/a", "/b", "/c", "/d"].iter().enumerate() {
        v.push(event(
            t + 30 + i as i64,
            "198.18.0.12",
            "198.19.7.7",
            80,
            "TCP",
            EventType::Path,
            path,
            "potential web scanning",
            "(heuristic)",
            Severity::Low,
        ));
    }
    // X: DNS exhaustion, keyed by info and base domain, from an in-scope and an
    // out-of-scope resolver.
    for (i, src) in ["198.18.0.13", "198.18.1.22", "198.18.1.22"]
        .iter()
        .enumerate()
    {
        v.push(event(
            t + 40 + i as i64,
            src,
            "198.19.0.53",
            53,
            "UDP",
            EventType::Dns,
            &format!("(r{i}x).victim.example"),
            "potential dns exhaustion (suspicious)",
            "(heuristic)",
            Severity::Medium,
        ));
    }
    // F: three days ago (outside the default 24 h).
    v.push(event(
        now - 72 * HOUR,
        "198.18.0.14",
        "198.19.0.53",
        53,
        "UDP",
        EventType::Dns,
        "old.example",
        "malware",
        "(static)",
        Severity::Low,
    ));
    v
}

fn publish(grpc: SocketAddr, spool: &std::path::Path, events: &[Event]) {
    let cfg = PublisherConfig::new(format!("http://{grpc}"), SENSOR_TOKEN, "edge-1", spool);
    publish_all(cfg, events, Duration::from_secs(60));
}

/// Waits until every stored event is aggregated.
fn wait_aggregated(c: &Client) {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, h) = c.get("/api/health");
        let (_, t) = c.get("/api/threats?limit=1");
        let last = h["last_cursor"].as_u64().unwrap_or(u64::MAX);
        if t["aggregated_cursor"].as_u64() == Some(last) {
            return;
        }
        assert!(
            Instant::now() < end,
            "aggregation did not catch up: {h} {t}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn by_trail<'a>(list: &'a [Value], trail: &str, src: Option<&str>) -> &'a Value {
    list.iter()
        .find(|t| {
            t["trail"] == trail
                && src.is_none_or(|s| t["sources"].as_array().unwrap().iter().any(|x| x == s))
        })
        .unwrap_or_else(|| panic!("no threat {trail} {src:?} in {list:#?}"))
}

fn trails(list: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = list
        .iter()
        .map(|t| t["trail"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn threats_search_triage_scope_exports_live_and_restart() {
    let data = tempdir("console-threats");
    let spool = tempdir("console-threats-spool");
    for (name, role, scope) in [
        ("admin1", "admin", None),
        ("ann", "analyst", None),
        ("bob", "analyst", None),
        ("vic", "viewer", None),
        ("sam", "analyst", Some("198.18.0.0/24")),
    ] {
        user_add(data.path(), name, role, scope);
    }
    let mut collector = Collector::start(data.path(), None, &[]);
    let now = now_us();
    publish(collector.grpc, spool.path(), &fixture(now));

    // Unauthenticated: 401.
    let r = http(collector.http, "GET", "/api/threats", &[], "");
    assert_eq!(r.status, 401);

    let ann = Client::login(collector.http, "ann", "pw-ann-secret");
    wait_aggregated(&ann);

    // Grouping.
    let all = ann.threats("");
    assert_eq!(all.len(), 5, "{all:#?}");
    let a = by_trail(&all, "evil.example", Some("198.18.0.10"));
    assert_eq!(a["count"], 5);
    assert_eq!(a["kind"], "trail");
    assert_eq!(a["severity"], "high");
    assert_eq!(
        a["sparkline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .sum::<u64>(),
        5
    );
    assert_eq!(
        by_trail(&all, "evil.example", Some("198.18.1.20"))["count"],
        3
    );
    let d = all.iter().find(|t| t["kind"] == "heuristic").unwrap();
    assert_eq!(
        (d["count"].as_u64(), d["info"].as_str()),
        (Some(4), Some("potential web scanning"))
    );
    let x = by_trail(&all, "victim.example", None);
    assert_eq!(
        (x["kind"].as_str(), x["count"].as_u64()),
        (Some("dns_exhaustion"), Some(3))
    );
    assert_eq!(x["sources"].as_array().unwrap().len(), 2);
    let a_id = a["id"].as_str().unwrap().to_string();
    let c_id = by_trail(&all, "198.19.5.5", None)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let b_id = by_trail(&all, "evil.example", Some("198.18.1.20"))["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Time ranges: the old event appears with a wider range; the heatmap counts it.
    let from = now / 1_000_000 - 4 * 86_400;
    let wide = ann.threats(&format!("from={from}"));
    assert_eq!(wide.len(), 6);
    assert_eq!(by_trail(&wide, "old.example", None)["count"], 1);
    let (st, days) = ann.get(&format!("/api/stats/daily?from={from}"));
    assert_eq!(st, 200);
    let total: u64 = days["days"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["count"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 18);
    let (st, tl) = ann.get("/api/stats/timeline");
    assert_eq!(st, 200, "{tl}");
    let sum = |k: &str| {
        tl["series"][k]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!((sum("high"), sum("medium"), sum("low")), (8, 5, 4));
    let (st, _) = ann.get("/api/threats?from=yesterday");
    assert_eq!(st, 400);

    // Query language.
    let q = |s: &str| trails(&ann.threats(&format!("q={}", enc(s))));
    assert_eq!(q("trail:evil.example -src:198.18.1.0/24"), ["evil.example"]);
    assert_eq!(q("port:440-450"), ["198.19.5.5"]);
    assert_eq!(q("sev:>=high"), ["evil.example", "evil.example"]);
    assert_eq!(q("type:heuristic AND NOT info:exhaustion"), ["/a"]);
    assert_eq!(q("(victim OR 198.19.5.*) proto:udp"), ["victim.example"]);
    assert_eq!(
        q("\"web scanning\" OR trail:*.example sensor:edge-1 src:198.18.1.20"),
        ["/a", "evil.example"]
    );
    for bad in ["(evil", "colour:red", "src:nope", "evil AND"] {
        let (st, v) = ann.get(&format!("/api/threats?q={}", enc(bad)));
        assert_eq!(st, 400, "{bad}: {v}");
        assert!(v["error"].as_str().unwrap().contains("position"), "{v}");
        assert!(v["position"].is_u64(), "{v}");
    }
    let (st, help) = ann.get("/api/search-help");
    assert_eq!(st, 200);
    assert!(help["fields"]["src:"].is_string());

    // Detail: raw events, trail source, related, IOCs.
    let (st, det) = ann.get(&format!("/api/threats/{a_id}"));
    assert_eq!(st, 200, "{det}");
    assert_eq!(det["events"].as_array().unwrap().len(), 5);
    assert_eq!(det["events"][0]["dns_query"], "evil.example");
    assert_eq!(det["trail_source"]["origin"], "file");
    assert_eq!(det["related"]["same_trail"][0]["id"], b_id.as_str());
    assert!(det["iocs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i == "evil[.]example"));
    let (st, _) = ann.get("/api/threats/nonexistent");
    assert_eq!(st, 404);

    // Triage by one analyst, visible to another; viewer refused; CSRF needed.
    let (st, v) = ann.post(
        &format!("/api/threats/{a_id}/triage"),
        &serde_json::json!({"status": "investigating", "assignee": "ann", "add_tags": ["apt"], "note": "looking <b>now</b>"}),
    );
    assert_eq!(st, 200, "{v}");
    let bob = Client::login(collector.http, "bob", "pw-bob-secret");
    let (_, det) = bob.get(&format!("/api/threats/{a_id}"));
    assert_eq!(det["status"], "investigating");
    assert_eq!(det["assignee"], "ann");
    assert_eq!(det["tags"][0], "apt");
    assert_eq!(det["notes"][0]["user"], "ann");
    assert_eq!(det["notes"][0]["text"], "looking <b>now</b>");
    assert_eq!(det["history"][0]["user"], "ann");
    assert_eq!(
        trails(&bob.threats(&format!(
            "q={}",
            enc("status:investigating tag:apt assignee:ann")
        ))),
        ["evil.example"]
    );
    let vic = Client::login(collector.http, "vic", "pw-vic-secret");
    let (st, _) = vic.post(
        &format!("/api/threats/{a_id}/triage"),
        &serde_json::json!({"status": "resolved"}),
    );
    assert_eq!(st, 403);
    let (st, _) = vic.post(
        "/api/threats/triage",
        &serde_json::json!({"ids": [a_id], "status": "resolved"}),
    );
    assert_eq!(st, 403);
    let no_csrf = Client {
        csrf: "wrong".into(),
        ..Client::login(collector.http, "bob", "pw-bob-secret")
    };
    let (st, _) = no_csrf.post(
        &format!("/api/threats/{a_id}/triage"),
        &serde_json::json!({"status": "resolved"}),
    );
    assert_eq!(st, 403);
    let (st, v) = bob.post(
        &format!("/api/threats/{a_id}/triage"),
        &serde_json::json!({"status": "finished"}),
    );
    assert_eq!(st, 400, "{v}");
    // Bulk false positive with trail suppression.
    let (st, v) = bob.post(
        "/api/threats/triage",
        &serde_json::json!({"ids": [b_id, c_id], "status": "false_positive", "suppress": "trail"}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["updated"].as_array().unwrap().len(), 2);
    let (_, sup) = bob.get("/api/suppressions");
    let values: Vec<&str> = sup["suppressions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["value"].as_str().unwrap())
        .collect();
    assert_eq!(values, ["evil.example", "198.19.5.5"]);
    let admin = Client::login(collector.http, "admin1", "pw-admin1-secret");
    let (st, audit) = admin.get("/api/audit?limit=50");
    assert_eq!(st, 200, "{audit}");
    let triage_entries = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "triage")
        .count();
    assert_eq!(triage_entries, 3, "{audit}");
    // Taking an entry off the list (what sensors get with their next heartbeat): analysts
    // and admins only, CSRF-checked, audited; a second time it is not found.
    let off = "/api/suppressions?kind=trail&value=198.19.5.5";
    assert_eq!(vic.raw("DELETE", off, "").0, 403, "a viewer may not");
    assert_eq!(no_csrf.raw("DELETE", off, "").0, 403, "CSRF");
    let (st, v) = bob.raw("DELETE", off, "");
    assert_eq!(st, 200, "{v}");
    assert_eq!(bob.raw("DELETE", off, "").0, 404);
    assert_eq!(
        bob.raw(
            "DELETE",
            "/api/suppressions?kind=source&value=evil.example",
            ""
        )
        .0,
        400
    );
    let (_, sup) = bob.get("/api/suppressions");
    assert_eq!(sup["suppressions"].as_array().unwrap().len(), 1, "{sup}");
    let (_, audit) = admin.get("/api/audit?limit=50");
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "unsuppress" && e["user"] == "bob"),
        "{audit}"
    );

    // Exports of the current view.
    let (st, csv) = ann.get_text("/api/threats.csv?q=evil");
    assert_eq!(st, 200);
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("id,kind,severity"), "{csv}");
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(
        csv.contains("\"malware <script>alert(1)</script>\"")
            || csv.contains("malware <script>alert(1)</script>")
    );
    let (st, js) = ann.get("/api/threats.json?q=evil");
    assert_eq!(st, 200);
    assert_eq!(js["threats"].as_array().unwrap().len(), 2);
    let (st, iocs) = ann.get_text("/api/iocs");
    assert_eq!(st, 200);
    assert!(iocs.lines().any(|l| l == "evil[.]example"), "{iocs}");
    assert!(iocs.lines().any(|l| l == "198[.]19[.]5[.]5"), "{iocs}");
    assert!(!iocs.contains("evil.example"));

    // The subscriber token reads too (as an analyst with the whole scope).
    assert_eq!(Client::token(collector.http).threats("").len(), 5);

    // A scoped user never sees an address outside the scope.
    let sam = Client::login(collector.http, "sam", "pw-sam-secret");
    let mine = sam.threats(&format!("from={from}"));
    assert_eq!(
        trails(&mine),
        [
            "/a",
            "198.19.5.5",
            "evil.example",
            "old.example",
            "victim.example"
        ]
    );
    let mut answers: Vec<String> = vec![serde_json::to_string(&mine).unwrap()];
    for t in &mine {
        for l in ["sources", "destinations"] {
            for a in t[l].as_array().unwrap() {
                let ip: IpAddr = a.as_str().unwrap().parse().unwrap();
                assert!(
                    matches!(ip, IpAddr::V4(v) if v.octets()[..3] == [198, 18, 0]),
                    "{l} {a}"
                );
            }
        }
        let (st, det) = sam.get(&format!("/api/threats/{}", t["id"].as_str().unwrap()));
        assert_eq!(st, 200);
        answers.push(det.to_string());
    }
    let (st, _) = sam.get(&format!("/api/threats/{b_id}"));
    assert_eq!(st, 404, "an out-of-scope threat is not found");
    let (st, _) = sam.post(
        &format!("/api/threats/{b_id}/triage"),
        &serde_json::json!({"status": "resolved"}),
    );
    assert_eq!(st, 404);
    for path in [
        format!("/api/threats.csv?from={from}"),
        format!("/api/threats.json?from={from}"),
        format!("/api/iocs?from={from}"),
        "/api/suppressions".to_string(),
        format!("/api/stats/daily?from={from}"),
        "/api/stats/timeline".to_string(),
        format!("/api/threats?q=198.18.1&from={from}"),
    ] {
        let (st, body) = sam.get_text(&path);
        assert_eq!(st, 200, "{path}");
        answers.push(body);
    }
    for a in &answers {
        assert!(!a.contains("198.18.1."), "out-of-scope address in {a}");
    }
    let (_, stats) = sam.get("/api/stats/timeline");
    assert!(
        stats["series"]["high"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .sum::<u64>()
            == 5
    );

    // Live: a new threat arrives on the stream (and nothing out of scope for sam).
    let live = |c: &Client| {
        let mut s = TcpStream::connect(c.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let h: String = c
            .headers()
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        write!(s, "GET /api/live HTTP/1.1\r\nHost: x\r\n{h}\r\n").unwrap();
        let mut r = BufReader::new(s);
        let mut first = String::new();
        r.read_line(&mut first).unwrap();
        assert!(first.contains("200"), "{first}");
        r
    };
    let mut ann_live = live(&ann);
    let mut sam_live = live(&sam);
    std::thread::sleep(Duration::from_millis(300));
    publish(
        collector.grpc,
        spool.path(),
        &[
            event(
                now_us(),
                "198.18.1.30",
                "198.19.9.9",
                443,
                "TCP",
                EventType::Ip,
                "198.19.9.9",
                "new c2",
                "feed.example",
                Severity::High,
            ),
            event(
                now_us(),
                "198.18.0.31",
                "198.19.9.10",
                443,
                "TCP",
                EventType::Ip,
                "198.19.9.10",
                "new c2",
                "feed.example",
                Severity::High,
            ),
        ],
    );
    let read_until = |r: &mut BufReader<TcpStream>, want: &str| -> String {
        let mut seen = String::new();
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            seen.push_str(&line);
            if line.starts_with("data:") && line.contains(want) {
                return seen;
            }
        }
        panic!("no live threat {want} in {seen}");
    };
    let got = read_until(&mut ann_live, "198.19.9.10");
    assert!(got.contains("event: threat"), "{got}");
    let got = read_until(&mut sam_live, "198.19.9.10");
    assert!(!got.contains("198.18.1."), "{got}");

    // Restart after SIGKILL: nothing counted twice; triage kept.
    wait_aggregated(&ann);
    let before = ann.threats(&format!("from={from}"));
    collector.kill9();
    let collector = Collector::start(data.path(), None, &[]);
    let ann = Client::login(collector.http, "ann", "pw-ann-secret");
    wait_aggregated(&ann);
    let after = ann.threats(&format!("from={from}"));
    assert_eq!(after.len(), before.len());
    for t in &before {
        let same = after
            .iter()
            .find(|x| x["id"] == t["id"])
            .expect("same threat");
        assert_eq!(same["count"], t["count"], "{t}");
        assert_eq!(same["status"], t["status"]);
    }
    assert_eq!(
        by_trail(&after, "evil.example", Some("198.18.0.10"))["count"],
        5
    );
}

/// The same grouping with events in PostgreSQL (aggregates stay in `threats.db`): counts
/// right, and a SIGKILL and restart counts nothing twice.
#[test]
fn threats_from_a_postgresql_store() {
    let Some(pg) = common::pg::PgServer::start("console-threats") else {
        return;
    };
    let url = pg.create_db("console_threats");
    let data = tempdir("console-threats-pg");
    let spool = tempdir("console-threats-pg-spool");
    let mut collector = Collector::start(data.path(), None, &["--database", &url]);
    let now = now_us();
    publish(collector.grpc, spool.path(), &fixture(now));
    let c = Client::token(collector.http);
    wait_aggregated(&c);
    let from = now / 1_000_000 - 4 * 86_400;
    let before = c.threats(&format!("from={from}"));
    assert_eq!(before.len(), 6, "{before:#?}");
    assert_eq!(
        by_trail(&before, "evil.example", Some("198.18.0.10"))["count"],
        5
    );
    collector.kill9();
    let collector = Collector::start(data.path(), None, &["--database", &url]);
    let c = Client::token(collector.http);
    wait_aggregated(&c);
    let after = c.threats(&format!("from={from}"));
    assert_eq!(after.len(), 6);
    for t in &before {
        let same = after
            .iter()
            .find(|x| x["id"] == t["id"])
            .expect("same threat");
        assert_eq!(same["count"], t["count"], "{t}");
    }
}
