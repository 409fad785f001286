//! The sensor's events reach a real collector process and a real subscriber: replay imports
//! a pcap's detections under the sensor's persistent identity (shown by `stats`), a replay
//! whose token the collector refuses fails at once with the reason and keeps its events
//! spooled, a live sensor with a refused token keeps running and says so on stderr, and a
//! live sensor killed with a non-empty spool resends it after a restart, with every event
//! stored once.

mod common;
use common::{collector_bin, corpus, spawn_attached, tempdir, Collector, SENSOR_TOKEN, SUB_TOKEN};

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use xtrail_bench::frames::{v4, Frame};
use xtrail_bench::netns::VethPair;

const SENSOR: &str = env!("CARGO_BIN_EXE_xtrail-sensor");
/// Everything stored, from cursor 0, through the reference subscriber.
fn subscribe_all(url: &str, n: usize, ns: Option<&str>) -> Vec<serde_json::Value> {
    common::subscribe(url, SUB_TOKEN, n, ns)
        .iter()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

#[test]
fn replay_imports_detections_into_the_collector() {
    let Some(corpus) = corpus() else { return };
    let dir = tempdir("replay-collector");
    let collector = Collector::with_tokens(None, &dir.join("data"), "127.0.0.1:0");
    let log = dir.join("events.jsonl");
    let out = Command::new(SENSOR)
        .args(["replay", "--pcap"])
        .arg(corpus.join("mixed_soup.pcap"))
        .arg("--pcap")
        .arg(corpus.join("http_heuristics.pcap"))
        .arg("--trails")
        .arg(corpus.join("trails.csv"))
        .arg("--events-log")
        .arg(&log)
        .args(["--format", "json", "--sensor-name", "replay-e2e"])
        .args([
            "--collector",
            &collector.url(),
            "--token",
            SENSOR_TOKEN,
            "--state-dir",
        ])
        .arg(dir.join("state"))
        .output()
        .expect("replay");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let local: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(local.len() >= 10, "{local:#?}");
    let stored = subscribe_all(&collector.url(), local.len(), None);
    assert_eq!(stored.len(), local.len());
    // The stream id: the identity kept in the state directory, the command, the spool's
    // suffix; `stats` shows the identity.
    let identity = std::fs::read_to_string(dir.join("state/identity")).unwrap();
    let identity = identity.trim();
    assert_eq!(identity.len(), 32, "{identity}");
    let stats = Command::new(SENSOR)
        .args(["stats", "--state-dir"])
        .arg(dir.join("state"))
        .output()
        .expect("stats");
    assert!(
        String::from_utf8_lossy(&stats.stdout).contains(&format!("identity {identity}")),
        "{}",
        String::from_utf8_lossy(&stats.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("identity {identity}")), "{stderr}");
    let stream = format!("{identity}-replay-");
    for (a, b) in local.iter().zip(&stored) {
        for key in xtrail_detect::event::JSON_FIELDS {
            assert_eq!(a[key], b[key], "field {key}: {a} vs {b}");
        }
        assert_eq!(b["sensor"], "replay-e2e");
        assert!(
            b["sensor_id"].as_str().unwrap().starts_with(&stream),
            "{}",
            b["sensor_id"]
        );
    }
    // In order: sequence numbers increase.
    let seqs: Vec<u64> = stored.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn replay_with_a_refused_token_fails_with_the_reason_and_keeps_its_events() {
    let Some(corpus) = corpus() else { return };
    let dir = tempdir("replay-refused");
    let collector = Collector::with_tokens(None, &dir.join("data"), "127.0.0.1:0");
    let started = Instant::now();
    let out = Command::new(SENSOR)
        .args(["replay", "--pcap"])
        .arg(corpus.join("mixed_soup.pcap"))
        .arg("--trails")
        .arg(corpus.join("trails.csv"))
        .args([
            "--events-log",
            "/dev/null",
            "--sensor-name",
            "replay-refused",
        ])
        .args([
            "--collector",
            &collector.url(),
            "--token",
            "wrong",
            "--state-dir",
        ])
        .arg(dir.join("state"))
        .output()
        .expect("replay");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    // At once, not after the 120 s flush timeout.
    assert!(started.elapsed() < Duration::from_secs(60), "{stderr}");
    assert!(
        stderr.contains("xtrail-sensor: error: the collector refused the credential")
            && stderr.contains("Unauthenticated"),
        "{stderr}"
    );
    // The exit message itself (the link's periodic line says "stay in the spool" too).
    assert!(
        stderr.contains("are sent by the next replay with a token the collector accepts"),
        "{stderr}"
    );
    // The events are in the spool, waiting for a token the collector accepts.
    let spooled: u64 = std::fs::read_dir(dir.join("state/spool-replay-replay-refused"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(spooled > 8, "{spooled} bytes spooled");
    // Nothing stored: a subscriber from the start sees nothing within 2 s.
    let mut sub = Command::new(collector_bin())
        .args([
            "subscribe",
            "--collector",
            &collector.url(),
            "--token",
            SUB_TOKEN,
        ])
        .args(["--from", "0", "--max-events", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("subscribe");
    std::thread::sleep(Duration::from_secs(2));
    // Still connected and waiting: an empty output below means nothing stored, not a
    // subscriber that failed.
    assert!(
        sub.try_wait().expect("subscriber status").is_none(),
        "the subscriber exited"
    );
    let _ = sub.kill();
    let got = sub.wait_with_output().unwrap();
    assert!(
        got.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&got.stdout)
    );
}

#[test]
fn live_sensor_with_a_refused_token_keeps_running_and_says_why() {
    if !common::privileged("live_sensor_with_a_refused_token_keeps_running_and_says_why") {
        return;
    }
    let dir = tempdir("run-refused");
    let trails = dir.join("trails.csv");
    std::fs::write(&trails, "198.19.71.1,refused test (malware),(test)\n").unwrap();
    let pair = VethPair::create("xr").expect("veth pair");
    let collector = Collector::with_tokens(Some(&pair.sensor_ns), &dir.join("data"), "127.0.0.1:0");
    let mut cmd = pair.in_sensor_ns(SENSOR);
    cmd.args(["run", "--iface", &pair.sensor_if, "--trails"])
        .arg(&trails)
        .args(["--events-log", "/dev/null", "--sensor-name", "run-refused"])
        .args(["--stats-interval", "0", "--no-heuristics"])
        .args([
            "--collector",
            &collector.url(),
            "--token",
            "wrong",
            "--state-dir",
        ])
        .arg(dir.join("state"))
        .stdout(Stdio::null());
    let (w, mut lines) = spawn_attached(&mut cmd, "xtrail-sensor: error:", Duration::from_secs(60));
    let inj = pair.injector().unwrap();
    inj.send(&Frame::syn(v4(&pair.peer_ip), 40000, v4("198.19.71.1"), 443).build())
        .unwrap();
    const REFUSED: &str = "xtrail-sensor: the collector refused the token (";
    let refused = if lines.iter().any(|l| l.contains(REFUSED)) {
        Ok(lines)
    } else {
        w.wait_for(REFUSED, "xtrail-sensor: error:", Duration::from_secs(30))
            .map(|more| {
                lines.extend(more);
                lines
            })
    };
    // Still running: a refused token is retried, not fatal.
    std::thread::sleep(Duration::from_millis(500));
    let mut child = w.child;
    assert!(child.try_wait().unwrap().is_none(), "the sensor exited");
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let _ = child.wait();
    let lines = refused.unwrap_or_else(|e| panic!("no refusal on stderr: {e}"));
    let line = lines.iter().find(|l| l.contains(REFUSED)).unwrap();
    assert!(line.contains("Unauthenticated"), "{line}");
    assert!(line.contains("refusal(s) since start"), "{line}");
}

#[test]
fn killed_sensor_resends_its_spool_after_restart() {
    if !common::privileged("killed_sensor_resends_its_spool_after_restart") {
        return;
    }
    let dir = tempdir("spool-restart");
    let trails = dir.join("trails.csv");
    let mut lines = String::new();
    for i in 1..=40 {
        lines.push_str(&format!("198.19.70.{i},spool test (malware),(test)\n"));
    }
    std::fs::write(&trails, lines).unwrap();
    // A port nothing listens on yet (the sensor's namespace is fresh): the collector comes
    // up later, on that port.
    let port = 40000 + (std::process::id() % 20000) as u16;
    let grpc = format!("127.0.0.1:{port}");
    let url = format!("http://{grpc}");
    let pair = VethPair::create("xs").expect("veth pair");
    let start_sensor = |log: &Path| -> (Child, std::sync::mpsc::Receiver<String>) {
        let mut cmd = pair.in_sensor_ns(SENSOR);
        cmd.args(["run", "--iface", &pair.sensor_if, "--trails"])
            .arg(&trails)
            .arg("--events-log")
            .arg(log)
            .args([
                "--sensor-name",
                "spool-e2e",
                "--stats-interval",
                "0",
                "--no-heuristics",
                "--heartbeat-seconds",
                "1",
            ])
            .args(["--collector", &url, "--token", SENSOR_TOKEN, "--state-dir"])
            .arg(dir.join("state"))
            .stdout(Stdio::null());
        let (w, _) = spawn_attached(&mut cmd, "xtrail-sensor: error:", Duration::from_secs(60));
        (w.child, w.lines)
    };
    let log1 = dir.join("events1.jsonl");
    let (mut sensor, _rx) = start_sensor(&log1);
    let inj = pair.injector().unwrap();
    let me = v4(&pair.peer_ip);
    for i in 1..=40u8 {
        inj.send(&Frame::syn(me, 40000, v4(&format!("198.19.70.{i}")), 443).build())
            .unwrap();
    }
    // Wait until all 40 are in the local log (and so in the spool), then SIGKILL.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&log1)
        .unwrap_or_default()
        .lines()
        .count()
        < 40
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(std::fs::read_to_string(&log1).unwrap().lines().count(), 40);
    sensor.kill().unwrap();
    sensor.wait().unwrap();

    // The sensor runs in its namespace, so the collector listens on that namespace's loopback.
    let collector = Collector::with_tokens(Some(&pair.sensor_ns), &dir.join("data"), &grpc);
    let log2 = dir.join("events2.jsonl");
    let (mut sensor, rx) = start_sensor(&log2);
    // 5 more after the restart.
    for i in 1..=5u8 {
        inj.send(&Frame::syn(me, 40001, v4(&format!("198.19.70.{i}")), 8443).build())
            .unwrap();
    }
    let stored_deadline = Instant::now() + Duration::from_secs(30);
    let mut stored = Vec::new();
    while Instant::now() < stored_deadline {
        stored = subscribe_all(&collector.url(), 45, Some(&pair.sensor_ns));
        if stored.len() >= 45 {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // The running sensor heartbeats with its kernel and userspace counters (the console's
    // sensors page reads them from console.db).
    let heartbeat_deadline = Instant::now() + Duration::from_secs(20);
    let mut heartbeat: Option<(String, String, serde_json::Value)> = None;
    while Instant::now() < heartbeat_deadline {
        heartbeat = rusqlite::Connection::open(dir.join("data").join("console.db"))
            .ok()
            .and_then(|db| {
                db.query_row(
                    "SELECT identity, trail_set_version, counters FROM sensor_heartbeats
                     WHERE name = 'spool-e2e'",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, String>(2)?)),
                )
                .ok()
            })
            .map(|(id, tsv, c)| (id, tsv, serde_json::from_str(&c).unwrap_or_default()));
        if heartbeat.as_ref().is_some_and(|(_, _, c)| {
            c["processed"].as_u64() >= Some(5) && c["events"].as_u64() >= Some(5)
        }) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(sensor.id() as i32, libc::SIGINT) };
    let _ = sensor.wait();
    while rx.recv_timeout(Duration::from_millis(200)).is_ok() {}
    assert_eq!(stored.len(), 45, "every event once: {stored:#?}");
    let (identity, _tsv, counters) = heartbeat.expect("a heartbeat from the running sensor");
    assert_eq!(
        identity.len(),
        32,
        "the state directory's identity: {identity:?}"
    );
    assert!(counters["processed"].as_u64() >= Some(5), "{counters}");
    assert!(counters["events"].as_u64() >= Some(5), "{counters}");
    let mut keys: Vec<(String, u64)> = stored
        .iter()
        .map(|e| {
            (
                e["trail"].as_str().unwrap().to_string(),
                e["dst_port"].as_u64().unwrap(),
            )
        })
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 45, "no duplicates");
}
