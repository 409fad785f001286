//! `run` with a compiled set (root, a veth pair in a network namespace): a good set attaches
//! and detects; an altered body (checked on its own thread while the XDP program loads) is
//! refused before anything is attached, with the checksum error, as is an altered body that
//! no longer builds, and an unsigned set when a public key is configured.

mod common;

use std::net::IpAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use xtrail_bench::frames::Frame;
use xtrail_bench::netns::VethPair;
use xtrail_detect::trails::compiled::{self, CompileOptions, HEADER_LEN};
use xtrail_detect::trails::{LoadOptions, TrailSet};

/// Runs the sensor on `pair` with `trails` (and `extra`) until it exits (it must: the set is
/// refused); returns (success, stderr). Bounded at 60 s.
fn run_refused(pair: &VethPair, trails: &Path, log: &Path, extra: &[&str]) -> (bool, String) {
    let mut cmd = pair.in_sensor_ns(env!("CARGO_BIN_EXE_xtrail-sensor"));
    cmd.args(["run", "--iface", &pair.sensor_if, "--trails"])
        .arg(trails)
        .arg("--events-log")
        .arg(log)
        .args(["--stats-interval", "0"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start xtrail-sensor");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the sensor did not exit on a refused set");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("sensor output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn altered_compiled_sets_are_refused_before_attaching() {
    if !common::privileged("altered_compiled_sets_are_refused_before_attaching") {
        return;
    }
    let dir = common::tempdir("compiled-start");
    let csv = dir.join("trails.csv");
    std::fs::write(
        &csv,
        "198.18.9.9,start test (malware),(test)\n198.18.9.10:8443,start test (malware),(test)\nevil-start.example,start test (malware),(test)\n",
    )
    .unwrap();
    let set = TrailSet::load(&[csv], &LoadOptions::default()).expect("trails");
    let (seed, public) = compiled::generate_key().unwrap();
    let good = compiled::write(
        &set,
        &CompileOptions {
            built_at: 1_700_000_000,
            signing_key: Some(seed),
            meta: serde_json::json!({}),
        },
    );
    let good_path = dir.join("good.xtrails");
    compiled::write_atomic(&good_path, &good).unwrap();
    let key = compiled::hex(&public);
    let log = dir.join("events.jsonl");
    let pair = VethPair::create("xcs").expect("veth pair");

    // The good set attaches and detects.
    let watched = common::start_sensor(
        &pair,
        &good_path,
        &log,
        "start",
        &["--trails-public-key", &key],
    );
    let inj = pair.injector().expect("injector");
    let me: IpAddr = pair.peer_ip.parse().unwrap();
    let frame = Frame::syn(me, 40_000, "198.18.9.9".parse().unwrap(), 443).build();
    let deadline = Instant::now() + Duration::from_secs(10);
    while common::events(&log).is_empty() && Instant::now() < deadline {
        let _ = inj.send(&frame);
        std::thread::sleep(Duration::from_millis(50));
    }
    common::stop_sensor(watched);
    let events = common::events(&log);
    assert!(
        events.iter().any(|e| e["trail"] == "198.18.9.9"),
        "{events:?}"
    );
    assert!(!pair.sensor_has_xdp().unwrap(), "detached at exit");

    // A flipped byte in the body's metadata: the set builds, the checksum refuses it.
    let mut meta = good.clone();
    let last = meta.len() - 2;
    meta[last] ^= 1;
    // The section directory: the set no longer builds; still the checksum's refusal.
    let mut dir_byte = good.clone();
    dir_byte[HEADER_LEN + 8 + 16] ^= 0x40;
    for (name, bytes, extra) in [
        ("meta", meta.clone(), vec![]),
        (
            "meta-signed",
            meta,
            vec!["--trails-public-key", key.as_str()],
        ),
        ("directory", dir_byte, vec![]),
    ] {
        let p = dir.join(format!("{name}.xtrails"));
        std::fs::write(&p, &bytes).unwrap();
        let (ok, err) = run_refused(&pair, &p, &log, &extra);
        assert!(!ok, "{name}: {err}");
        assert!(
            err.contains("refused") && err.contains("checksum mismatch"),
            "{name}: {err}"
        );
        assert!(!err.contains("attached to"), "{name}: {err}");
        assert!(!pair.sensor_has_xdp().unwrap(), "{name}");
    }

    // Unsigned with a key configured: refused from the header, before anything loads.
    let unsigned = dir.join("unsigned.xtrails");
    compiled::write_atomic(
        &unsigned,
        &compiled::write(&set, &CompileOptions::default()),
    )
    .unwrap();
    let (ok, err) = run_refused(&pair, &unsigned, &log, &["--trails-public-key", &key]);
    assert!(!ok && err.contains("not signed"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
