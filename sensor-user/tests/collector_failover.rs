//! A sensor given several collector URLs (the config file's `collectors`, or repeated
//! `--collector`) publishes to the first that serves: with the first unreachable, a replay's
//! events all reach the second, once.

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

mod common;
use common::{corpus, tempdir, Collector, SENSOR_TOKEN, SUB_TOKEN};

const SENSOR: &str = env!("CARGO_BIN_EXE_xtrail-sensor");

/// How many events `c` stores in all (`GET /api/events`, one page).
fn count(c: &Collector) -> usize {
    let auth = format!("Bearer {SUB_TOKEN}");
    let r = common::http(
        None,
        &c.http,
        "GET",
        "/api/events?limit=10000",
        &[("Authorization", &auth)],
        "",
    );
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("JSON body");
    v["events"].as_array().expect("events").len()
}

/// The first `n` events `c` stores (JSON lines), from cursor 0 (waits for them).
fn stored(c: &Collector, n: usize) -> Vec<String> {
    common::subscribe(&c.url(), SUB_TOKEN, n, None)
}

/// A loopback URL nothing listens on.
fn dead_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    format!("http://{}", l.local_addr().expect("addr"))
}

/// Replays the corpus with `how` naming the collectors; the events written locally.
fn replay(dir: &Path, corpus: &Path, how: &[String]) -> usize {
    let log = dir.join("events.jsonl");
    let out = Command::new(SENSOR)
        .args(["replay", "--pcap"])
        .arg(corpus.join("mixed_soup.pcap"))
        .arg("--trails")
        .arg(corpus.join("trails.csv"))
        .arg("--events-log")
        .arg(&log)
        .args(["--format", "json", "--sensor-name", "failover"])
        .args(how)
        .args(["--token", SENSOR_TOKEN, "--state-dir"])
        .arg(dir.join("state"))
        .output()
        .expect("replay");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    std::fs::read_to_string(&log)
        .expect("events log")
        .lines()
        .count()
}

#[test]
fn replay_goes_on_to_the_next_collector_when_the_first_is_unreachable() {
    let Some(corpus) = corpus() else { return };
    let dir = tempdir("collector-failover");
    let live = Collector::with_tokens(None, &dir.join("data"), "127.0.0.1:0");

    // The config file's list.
    let conf = dir.join("sensor.toml");
    std::fs::write(
        &conf,
        format!("collectors = [{:?}, {:?}]\n", dead_url(), live.url()),
    )
    .expect("config");
    let one = dir.join("one");
    std::fs::create_dir_all(&one).expect("dir");
    let n = replay(
        &one,
        &corpus,
        &["--config".into(), conf.display().to_string()],
    );
    assert!(n >= 5, "{n} events");
    assert_eq!(stored(&live, n).len(), n);
    assert_eq!(count(&live), n, "stored once");

    // Repeated flags (they replace the file's list).
    let two = dir.join("two");
    std::fs::create_dir_all(&two).expect("dir");
    let flags = [
        "--collector".into(),
        dead_url(),
        "--collector".into(),
        live.url(),
    ];
    let m = replay(&two, &corpus, &flags);
    assert_eq!(m, n);
    let stored = stored(&live, 2 * n);
    let keys: std::collections::HashSet<(String, u64)> = stored
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("JSON line");
            (v["sensor_id"].to_string(), v["seq"].as_u64().expect("seq"))
        })
        .collect();
    assert_eq!(keys.len(), 2 * n, "each replay's events stored once");
    assert_eq!(count(&live), 2 * n, "nothing stored twice");
    let _ = std::fs::remove_dir_all(&dir);
}
