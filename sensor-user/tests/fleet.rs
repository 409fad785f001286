//! Fleet distribution, live: a real collector serves a signed compiled trail set
//! (`--trail-set`); three real sensors on veths follow it (`--trails-from-collector`). When
//! the collector is given a new set, the two sensors with the right public key hot-swap to
//! it and detect its new trail; the third, configured with another key, refuses every set
//! from the collector and keeps detecting with its own. The collector shows which sensor
//! runs which version (`xtrail_sensor_trail_set` on `/metrics`).

mod common;
use common::{compile_signed, events, spawn_attached, tempdir, Collector};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use xtrail_bench::child::Watched;
use xtrail_bench::frames::{v4, Frame};
use xtrail_bench::netns::VethPair;
use xtrail_detect::trails::compiled;

const TOKEN: &str = "fleet-secret";
const STABLE: &str = "198.19.10.1";
const OLD: &str = "198.19.20.1";
const NEW: &str = "198.19.30.1";

macro_rules! privileged {
    () => {
        if !common::privileged(module_path!()) {
            return;
        }
    };
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A trails CSV with the stable address and `extra`.
fn csv(dir: &Path, name: &str, extra: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(
        &p,
        format!("{STABLE},fleet stable (malware),(test)\n{extra},fleet {extra} (malware),(test)\n"),
    )
    .unwrap();
    p
}

#[test]
fn signed_sets_reach_the_fleet_and_a_wrong_key_refuses_them() {
    privileged!();
    let dir = tempdir("fleet");
    let (seed, public) = compiled::generate_key().unwrap();
    let (_, wrong) = compiled::generate_key().unwrap();
    let set_path = dir.join("served.xtrails");
    let (v1, _) = compile_signed(&csv(&dir, "a.csv", OLD), &seed, 1_700_000_000, &set_path);

    // Three veth pairs; every sensor end moves into the first pair's sensor namespace, where
    // the collector listens on loopback.
    let pairs: Vec<VethPair> = ["xfa", "xfb", "xfc"]
        .iter()
        .map(|t| VethPair::create(t).expect("veth pair"))
        .collect();
    let ns = pairs[0].sensor_ns.clone();
    for p in &pairs[1..] {
        let ok = |args: &[&str]| {
            let s = Command::new("ip").args(args).status().unwrap();
            assert!(s.success(), "ip {args:?}");
        };
        ok(&[
            "-n",
            &p.sensor_ns,
            "link",
            "set",
            &p.sensor_if,
            "netns",
            &ns,
        ]);
        ok(&["-n", &ns, "link", "set", &p.sensor_if, "up"]);
    }
    let collector = Collector::start(
        Some(&ns),
        &dir.join("collector"),
        "127.0.0.1:0",
        &[
            "--sensor-token",
            TOKEN,
            "--trail-set",
            set_path.to_str().unwrap(),
        ],
    );
    let url = collector.url();

    // Sensors 1 and 2 take their set from the collector; sensor 3 has its own and the
    // wrong key.
    let own = csv(&dir, "own.csv", OLD);
    let mut sensors: Vec<(Watched, PathBuf)> = Vec::new();
    let mut start_lines = Vec::new();
    for (i, pair) in pairs.iter().enumerate() {
        let name = format!("fleet-{}", i + 1);
        let log = dir.join(format!("{name}.jsonl"));
        let key = if i == 2 { hex(&wrong) } else { hex(&public) };
        let mut cmd = pairs[0].in_sensor_ns(env!("CARGO_BIN_EXE_xtrail-sensor"));
        cmd.args(["run", "--iface", &pair.sensor_if, "--events-log"])
            .arg(&log)
            .args(["--sensor-name", &name, "--stats-interval", "0"])
            .args(["--suppress-ms", "0", "--no-flood-guard", "--no-heuristics"])
            .args(["--collector", &url, "--token", TOKEN, "--state-dir"])
            .arg(dir.join(format!("state-{i}")))
            .args(["--trails-from-collector", "--trails-public-key", &key])
            .stdout(Stdio::null());
        if i == 2 {
            cmd.arg("--trails").arg(&own);
        }
        let (w, lines) = spawn_attached(&mut cmd, "error:", Duration::from_secs(90));
        start_lines.push(lines);
        sensors.push((w, log));
    }
    for lines in &start_lines[..2] {
        assert!(
            lines
                .iter()
                .any(|l| l.contains("received from the collector") && l.contains(&v1)),
            "{lines:?}"
        );
    }
    // Sensor 3 refuses the collector's set (v1) and keeps its own (the line may come
    // before or after it attached).
    let refusal = match start_lines[2].iter().find(|l| l.contains("refused")) {
        Some(l) => l.clone(),
        None => sensors[2]
            .0
            .wait_for("refused", "trails reloaded", Duration::from_secs(30))
            .expect("sensor 3 refuses v1")
            .pop()
            .unwrap_or_default(),
    };
    assert!(
        refusal.contains(&v1) && refusal.contains("bad signature"),
        "{refusal}"
    );

    // A new signed set on the collector: SIGHUP makes it reread the file at once.
    let (v2, _) = compile_signed(&csv(&dir, "b.csv", NEW), &seed, 1_700_000_100, &set_path);
    assert_ne!(v1, v2);
    let swapped_at = Instant::now();
    common::sighup(collector.child.id());
    for (w, _) in &sensors[..2] {
        let l = w
            .wait_for(
                "trails reloaded (collector)",
                "refused",
                Duration::from_secs(30),
            )
            .expect("sensor takes v2");
        assert!(l.last().unwrap().contains(&v2), "{l:?}");
    }
    let took = swapped_at.elapsed();
    let refusal = sensors[2]
        .0
        .wait_for("refused", "trails reloaded", Duration::from_secs(30))
        .expect("sensor 3 refuses v2");
    assert!(refusal.last().unwrap().contains(&v2), "{refusal:?}");
    eprintln!("fleet: v2 running on two sensors {took:?} after the collector's SIGHUP");

    // Detection follows: NEW on sensors 1 and 2 (v2), OLD on sensor 3 (its own set).
    let me = v4(&pairs[0].peer_ip);
    for (i, pair) in pairs.iter().enumerate() {
        let inj = pair.injector().expect("injector");
        inj.send(&Frame::syn(me, 21000 + i as u16, v4(NEW), 443).build())
            .unwrap();
        inj.send(&Frame::syn(me, 22000 + i as u16, v4(OLD), 443).build())
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while sensors.iter().any(|(_, l)| events(l).is_empty()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    // The collector knows who runs what (the sensors report after each install).
    let metrics = common::http_get(Some(&ns), &collector.http, "/metrics");
    for (w, _) in sensors {
        common::stop_sensor(w);
    }
    drop(collector);
    for (i, want, not) in [(1, NEW, OLD), (2, NEW, OLD), (3, OLD, NEW)] {
        let ev = events(&dir.join(format!("fleet-{i}.jsonl")));
        assert!(
            ev.iter().any(|e| e["trail"] == want),
            "sensor {i} missed {want}: {ev:#?}"
        );
        assert!(
            !ev.iter().any(|e| e["trail"] == not),
            "sensor {i} reported {not}: {ev:#?}"
        );
        if i < 3 {
            assert!(
                ev.iter().all(|e| e["trail_set_version"] == v2.as_str()),
                "sensor {i} events not from {v2}: {ev:#?}"
            );
        }
    }
    for i in 1..=2 {
        let want = format!("xtrail_sensor_trail_set{{sensor=\"fleet-{i}\",version=\"{v2}\"}} 1");
        assert!(metrics.contains(&want), "no {want} in:\n{metrics}");
    }
    assert!(
        !metrics.contains(&format!("sensor=\"fleet-3\",version=\"{v2}\"")),
        "{metrics}"
    );
}
