//! A sensor given several collector URLs (the config file's `collectors`, or repeated
//! `--collector`) publishes to the first that serves: with the first unreachable, a replay's
//! events all reach the second, once.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

mod common;
use common::{collector_bin, tempdir};

const SENSOR: &str = env!("CARGO_BIN_EXE_xtrail-sensor");
const SENSOR_TOKEN: &str = "sensor-secret";
const SUB_TOKEN: &str = "siem-secret";

struct Collector(Child, String, String);

impl Collector {
    fn start(data: &Path) -> Collector {
        let mut child = Command::new(collector_bin())
            .arg("--data-dir")
            .arg(data)
            .args(["--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .args([
                "--sensor-token",
                SENSOR_TOKEN,
                "--subscriber-token",
                SUB_TOKEN,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start collector");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("collector output");
        let grpc = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("grpc="))
            .expect("listening line");
        let http = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http="))
            .expect("listening line")
            .to_string();
        let url = format!("http://{grpc}");
        Collector(child, url, http)
    }

    /// The first `n` stored events (JSON lines) from cursor 0 (waits for them).
    fn stored(&self, n: usize) -> Vec<String> {
        let out = Command::new(collector_bin())
            .args(["subscribe", "--collector", &self.1, "--token", SUB_TOKEN])
            .args(["--from", "0", "--max-events", &n.to_string()])
            .stderr(Stdio::null())
            .output()
            .expect("subscribe");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Collector {
    /// How many events the collector stores in all (`GET /api/events`, one page).
    fn count(&self) -> usize {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&self.2).expect("http");
        write!(
            s,
            "GET /api/events?limit=10000 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SUB_TOKEN}\r\nConnection: close\r\n\r\n"
        )
        .expect("request");
        let mut raw = String::new();
        s.read_to_string(&mut raw).expect("response");
        let body = raw.split_once("\r\n\r\n").expect("head").1;
        let v: serde_json::Value = serde_json::from_str(body).expect("JSON body");
        v["events"].as_array().expect("events").len()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn corpus() -> Option<PathBuf> {
    let p = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/maltrail/corpus"
    ));
    if p.is_dir() {
        return Some(p);
    }
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "CI=true and {} is missing",
        p.display()
    );
    eprintln!("SKIPPED: {} not found", p.display());
    None
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
    let live = Collector::start(&dir.join("data"));

    // The config file's list.
    let conf = dir.join("sensor.toml");
    std::fs::write(
        &conf,
        format!("collectors = [{:?}, {:?}]\n", dead_url(), live.1),
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
    assert_eq!(live.stored(n).len(), n);
    assert_eq!(live.count(), n, "stored once");

    // Repeated flags (they replace the file's list).
    let two = dir.join("two");
    std::fs::create_dir_all(&two).expect("dir");
    let flags = [
        "--collector".into(),
        dead_url(),
        "--collector".into(),
        live.1.clone(),
    ];
    let m = replay(&two, &corpus, &flags);
    assert_eq!(m, n);
    let stored = live.stored(2 * n);
    let keys: std::collections::HashSet<(String, u64)> = stored
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("JSON line");
            (v["sensor_id"].to_string(), v["seq"].as_u64().expect("seq"))
        })
        .collect();
    assert_eq!(keys.len(), 2 * n, "each replay's events stored once");
    assert_eq!(live.count(), 2 * n, "nothing stored twice");
    let _ = std::fs::remove_dir_all(&dir);
}
