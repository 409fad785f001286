//! The console's "false positive" suppressions reach a live sensor: a real collector and a
//! real `xtrail-sensor run` on a veth pair (both in the sensor's namespace); an analyst
//! signs in to the console's HTTP API, marks a threat false positive with "suppress trail",
//! and within a bounded time the sensor stops reporting that trail (other trails still
//! come); likewise for a source; taking the trail off the list (DELETE) lets its events
//! flow again. The sensor counts what it suppressed (`--metrics`, final stats).
//! Needs root (skips without it, fails under CI=true).

mod common;
use common::{collector_bin, spawn_attached, tempdir, Collector, SENSOR_TOKEN};

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use xtrail_bench::child::Watched;
use xtrail_bench::frames::{v4, Frame};
use xtrail_bench::netns::{Injector, VethPair};

const SENSOR: &str = env!("CARGO_BIN_EXE_xtrail-sensor");
const PASSWORD: &str = "correct horse battery";
/// How long a change may take to reach the sensor: heartbeats every second here.
const DELIVERY: Duration = Duration::from_secs(15);

const SUPPRESSED_TRAIL: &str = "198.19.72.1";
const KEPT_TRAIL: &str = "198.19.72.2";
const SOURCE_TRAIL: &str = "198.19.72.3";

fn add_user(data: &Path, name: &str, role: &str) {
    let mut child = Command::new(collector_bin())
        .args(["user", "add", name, "--role", role, "--data-dir"])
        .arg(data)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("user add");
    writeln!(child.stdin.take().unwrap(), "{PASSWORD}").unwrap();
    assert!(child.wait().unwrap().success(), "user add {name}");
}

/// A signed-in console user.
struct Analyst {
    ns: String,
    addr: SocketAddr,
    cookie: String,
    csrf: String,
}

impl Analyst {
    fn login(ns: &str, addr: SocketAddr, user: &str) -> Analyst {
        let r = common::http(
            Some(ns),
            &addr.to_string(),
            "POST",
            "/login",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            &format!("username={user}&password={}", PASSWORD.replace(' ', "+")),
        );
        assert_eq!(r.status, 303, "login {user}");
        let cookie = r.cookie().expect("session cookie").to_string();
        let mut a = Analyst {
            ns: ns.into(),
            addr,
            cookie,
            csrf: String::new(),
        };
        let (st, s) = a.call("GET", "/api/session", "");
        assert_eq!(st, 200, "{s}");
        a.csrf = s["csrf"].as_str().expect("csrf").to_string();
        a
    }

    fn call(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        let h = [
            ("Cookie", self.cookie.as_str()),
            ("x-csrf-token", self.csrf.as_str()),
            ("Content-Type", "application/json"),
        ];
        let r = common::http(
            Some(&self.ns),
            &self.addr.to_string(),
            method,
            path,
            &h,
            body,
        );
        (
            r.status,
            serde_json::from_str(&r.body).unwrap_or(Value::String(r.body)),
        )
    }

    /// The id of the threat of `trail` from `src`, once aggregated (bounded wait).
    fn threat(&self, trail: &str, src: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (st, v) = self.call(
                "GET",
                &format!("/api/threats?limit=100&q=trail:{trail}%20AND%20src:{src}"),
                "",
            );
            assert_eq!(st, 200, "{v}");
            if let Some(id) = v["threats"]
                .as_array()
                .and_then(|a| a.first())
                .and_then(|t| t["id"].as_str())
            {
                return id.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no threat {trail} from {src}: {v}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Events in the sensor's JSON log as (trail, src_ip, dst_port).
fn logged(log: &Path) -> Vec<(String, String, u64)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|e| {
            (
                e["trail"].as_str().unwrap_or("").to_string(),
                e["src_ip"].as_str().unwrap_or("").to_string(),
                e["dst_port"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// Waits (bounded) until the log holds an event for `(trail, src, port)`.
fn wait_logged(log: &Path, trail: &str, src: &str, port: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if logged(log)
            .iter()
            .any(|(t, s, p)| t == trail && s == src && *p == port)
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "no event {trail} from {src} to port {port}: {:?}",
        logged(log)
    );
}

fn has(log: &Path, trail: &str, src: &str, port: u64) -> bool {
    logged(log)
        .iter()
        .any(|(t, s, p)| t == trail && s == src && *p == port)
}

/// Waits (bounded by [`DELIVERY`]) for the sensor to install a suppression list with
/// `trails` trails and `sources` sources; returns how long it took.
fn wait_installed(sensor: &Watched, trails: usize, sources: usize) -> Duration {
    let t = Instant::now();
    let want = format!("{trails} trail(s), {sources} source(s) not reported");
    sensor
        .wait_for(&want, "xtrail-sensor: error:", DELIVERY)
        .unwrap_or_else(|e| panic!("the sensor did not get the list ({want}): {e}"));
    t.elapsed()
}

fn syn(inj: &Injector, src: &str, dst: &str, port: u16) {
    inj.send(&Frame::syn(v4(src), 40000 + port % 1000, v4(dst), port).build())
        .expect("inject");
}

#[test]
fn false_positive_suppressions_reach_the_sensor_and_can_be_lifted() {
    if !common::privileged("false_positive_suppressions_reach_the_sensor_and_can_be_lifted") {
        return;
    }
    let dir = tempdir("suppress-e2e");
    let trails = dir.join("trails.csv");
    std::fs::write(
        &trails,
        format!(
            "{SUPPRESSED_TRAIL},suppress test (malware),(test)\n{KEPT_TRAIL},kept test (malware),(test)\n{SOURCE_TRAIL},source test (malware),(test)\n"
        ),
    )
    .unwrap();
    let pair = VethPair::create("xq").expect("veth pair");
    let ns = pair.sensor_ns.clone();
    let data = dir.join("data");
    add_user(&data, "ann", "analyst");
    let collector = Collector::with_tokens(Some(&ns), &data, "127.0.0.1:0");
    let http: SocketAddr = collector.http.parse().expect("http address");
    let log = dir.join("events.jsonl");
    let metrics: SocketAddr = "127.0.0.1:19477".parse().unwrap();
    let mut cmd = pair.in_sensor_ns(SENSOR);
    cmd.args(["run", "--iface", &pair.sensor_if, "--trails"])
        .arg(&trails)
        .arg("--events-log")
        .arg(&log)
        .args(["--format", "json", "--sensor-name", "suppress-e2e"])
        .args(["--stats-interval", "0", "--no-heuristics"])
        .args([
            "--heartbeat-seconds",
            "1",
            "--metrics",
            &metrics.to_string(),
        ])
        .args(["--collector", &collector.url()])
        .args(["--token", SENSOR_TOKEN, "--state-dir"])
        .arg(dir.join("state"))
        .stdout(Stdio::null());
    let (sensor, _) = spawn_attached(&mut cmd, "xtrail-sensor: error:", Duration::from_secs(60));
    // The first heartbeat brings the (empty) list.
    wait_installed(&sensor, 0, 0);

    let inj = pair.injector().unwrap();
    let peer = pair.peer_ip.clone();
    // Two more sources on the peer's side of the wire (injected frames).
    let noisy = "198.18.250.50";
    let other = "198.18.250.51";
    syn(&inj, &peer, SUPPRESSED_TRAIL, 1001);
    syn(&inj, &peer, KEPT_TRAIL, 1001);
    syn(&inj, noisy, SOURCE_TRAIL, 1001);
    syn(&inj, other, SOURCE_TRAIL, 1001);
    wait_logged(&log, SUPPRESSED_TRAIL, &peer, 1001);
    wait_logged(&log, KEPT_TRAIL, &peer, 1001);
    wait_logged(&log, SOURCE_TRAIL, noisy, 1001);
    wait_logged(&log, SOURCE_TRAIL, other, 1001);

    // An analyst marks the first threat a false positive and suppresses its trail.
    let ann = Analyst::login(&ns, http, "ann");
    let id = ann.threat(SUPPRESSED_TRAIL, &peer);
    let (st, v) = ann.call(
        "POST",
        &format!("/api/threats/{id}/triage"),
        &json!({"status": "false_positive", "suppress": "trail", "note": "our scanner"})
            .to_string(),
    );
    assert_eq!(st, 200, "{v}");
    let took = wait_installed(&sensor, 1, 0);
    eprintln!("suppress trail reached the sensor in {took:?}");
    syn(&inj, &peer, SUPPRESSED_TRAIL, 1002);
    syn(&inj, &peer, KEPT_TRAIL, 1002);
    // The kept trail's event comes after the suppressed one's packet was processed.
    wait_logged(&log, KEPT_TRAIL, &peer, 1002);
    assert!(
        !has(&log, SUPPRESSED_TRAIL, &peer, 1002),
        "a suppressed trail was reported: {:?}",
        logged(&log)
    );

    // Likewise for a source: everything from it, other sources of the same trail still come.
    let id = ann.threat(SOURCE_TRAIL, noisy);
    let (st, v) = ann.call(
        "POST",
        "/api/threats/triage",
        &json!({"ids": [id], "status": "false_positive", "suppress": "source"}).to_string(),
    );
    assert_eq!(st, 200, "{v}");
    let (st, list) = ann.call("GET", "/api/suppressions", "");
    assert_eq!(st, 200, "{list}");
    let entries: Vec<(String, String)> = list["suppressions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        entries.contains(&("trail".into(), SUPPRESSED_TRAIL.into())),
        "{list}"
    );
    assert!(entries.contains(&("source".into(), noisy.into())), "{list}");
    wait_installed(&sensor, 1, 1);
    syn(&inj, noisy, SOURCE_TRAIL, 1003);
    syn(&inj, noisy, KEPT_TRAIL, 1003);
    syn(&inj, other, SOURCE_TRAIL, 1003);
    wait_logged(&log, SOURCE_TRAIL, other, 1003);
    assert!(
        !has(&log, SOURCE_TRAIL, noisy, 1003) && !has(&log, KEPT_TRAIL, noisy, 1003),
        "a suppressed source was reported: {:?}",
        logged(&log)
    );

    // Lifting the trail's suppression lets its events flow again (the source stays).
    let (st, v) = ann.call(
        "DELETE",
        &format!("/api/suppressions?kind=trail&value={SUPPRESSED_TRAIL}"),
        "",
    );
    assert_eq!(st, 200, "{v}");
    let (st, v) = ann.call(
        "DELETE",
        &format!("/api/suppressions?kind=trail&value={SUPPRESSED_TRAIL}"),
        "",
    );
    assert_eq!(st, 404, "removed twice: {v}");
    wait_installed(&sensor, 0, 1);
    syn(&inj, &peer, SUPPRESSED_TRAIL, 1004);
    wait_logged(&log, SUPPRESSED_TRAIL, &peer, 1004);

    // The sensor's metrics page (refreshed every second) counts what it suppressed.
    let metric = |page: &str, name: &str| -> Option<u64> {
        page.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let counted = loop {
        let page = common::http_get(Some(&ns), &metrics.to_string(), "/metrics");
        let counted = (
            metric(&page, "xtrail_sensor_events_suppressed_trail_total"),
            metric(&page, "xtrail_sensor_events_suppressed_source_total"),
        );
        if counted == (Some(1), Some(2)) || Instant::now() > deadline {
            break counted;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(counted, (Some(1), Some(2)), "metrics page");
    let stats = common::stop_sensor(sensor);
    assert!(stats.contains("suppressed_trail=1 "), "{stats}");
    assert!(stats.contains("suppressed_source=2"), "{stats}");
    // The collector stored none of the suppressed events: the peer's threat of the trail
    // counts ports 1001 and 1004 only.
    let deadline = Instant::now() + Duration::from_secs(20);
    let count = loop {
        let (st, v) = ann.call(
            "GET",
            &format!("/api/threats?limit=100&q=trail:{SUPPRESSED_TRAIL}%20AND%20src:{peer}"),
            "",
        );
        assert_eq!(st, 200, "{v}");
        let count: u64 = v["threats"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["total_count"].as_u64().unwrap())
            .sum();
        if count >= 2 || Instant::now() > deadline {
            break count;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(count, 2, "ports 1001 and 1004 only");
    drop(collector);
    let _ = std::fs::remove_dir_all(&dir);
}
