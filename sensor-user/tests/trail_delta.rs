//! Trail set deltas, with a real collector over loopback: a sensor's puller that stores
//! version 1 gets version 2 as a delta (counted, rebuilt byte for byte); a damaged delta or
//! one checked against another key is refused; a damaged stored base makes the delta fail
//! its checks and the whole set is fetched instead. No privileges needed.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use xtrail_detect::trails::compiled;
use xtrail_sensor::trail_pull::{self, PullOptions};

mod common;
use common::{compile_signed, http_get, tempdir, Collector};

const TOKEN: &str = "delta-secret";

/// A trails CSV of 20 000 addresses and 5 000 domains; rows whose index is a multiple of
/// `every` (when non-zero) get another address/domain, as a feed update would.
fn csv(dir: &Path, name: &str, every: usize, salt: u32) -> PathBuf {
    let mut text = String::new();
    for i in 0..20_000u32 {
        let changed = every != 0 && (i as usize).is_multiple_of(every);
        let ip = Ipv4Addr::from(0xC612_0000 + i * 3 + if changed { 1 + salt } else { 0 });
        text.push_str(&format!("{ip},delta test {} (malware),(test)\n", i % 50));
    }
    for i in 0..5_000u32 {
        let changed = every != 0 && (i as usize).is_multiple_of(every);
        let d = if changed {
            format!("n{salt}x{i}.example-bad.test")
        } else {
            format!("d{i}.example-bad.test")
        };
        text.push_str(&format!("{d},delta domain {} (malware),(test)\n", i % 20));
    }
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Sends SIGHUP and waits until the collector serves `version`.
fn install(c: &Collector, version: &str) {
    common::sighup(c.child.id());
    let want = format!("xtrail_trail_set_served{{version=\"{version}\"}} 1");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !http_get(None, &c.http, "/metrics").contains(&want) {
        assert!(
            Instant::now() < deadline,
            "the collector never served {version}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn deltas_rebuild_the_set_and_bad_ones_fall_back_to_the_whole_set() {
    let dir = tempdir("trail-delta");
    let (seed, public) = compiled::generate_key().unwrap();
    let (_, wrong) = compiled::generate_key().unwrap();
    let served = dir.join("served.xtrails");
    let (v1, _) = compile_signed(&csv(&dir, "v1.csv", 0, 0), &seed, 1_700_000_000, &served);

    let collector = Collector::start(
        None,
        &dir.join("collector"),
        "127.0.0.1:0",
        &[
            "--sensor-token",
            TOKEN,
            "--trail-set",
            served.to_str().unwrap(),
        ],
    );
    let o = PullOptions {
        url: collector.url(),
        token: TOKEN.into(),
        ca_cert: None,
        sensor_name: "delta-1".into(),
        state_dir: dir.join("state"),
        public_key: public,
    };
    let stored = trail_pull::stored_set(&o.state_dir);

    // First pull: nothing stored, the whole set.
    let p = trail_pull::pull(&o).expect("first pull");
    assert!(!p.via_delta);
    assert_eq!(p.version, v1);

    // 1% of the rows change: a delta, rebuilt byte for byte.
    let (v2, b2) = compile_signed(&csv(&dir, "v2.csv", 100, 0), &seed, 1_700_000_100, &served);
    install(&collector, &v2);
    let p = trail_pull::pull(&o).expect("second pull");
    assert!(p.via_delta, "no delta used");
    assert_eq!(p.version, v2);
    assert_eq!(std::fs::read(&stored).unwrap(), b2);
    assert_eq!(trail_pull::DELTAS_APPLIED.load(Ordering::Relaxed), 1);

    // A damaged delta, or a good one checked with another key, is refused.
    let (v3, b3) = compile_signed(&csv(&dir, "v3.csv", 100, 1), &seed, 1_700_000_200, &served);
    install(&collector, &v3);
    let (info, d) = trail_pull::fetch_delta_once(&o, &v2).expect("delta v2 -> v3");
    assert_eq!(info.version, v3);
    eprintln!(
        "delta v2 -> v3: {} bytes for a {}-byte set",
        d.len(),
        info.size
    );
    assert!((d.len() as u64) < info.size);
    assert_eq!(
        trail_pull::rebuild(&b2, &d, &info, &public).expect("good delta"),
        b3
    );
    assert!(trail_pull::rebuild(&b2, &d, &info, &wrong).is_err());
    // A damaged delta never yields another set: it is refused, or (when the flipped bits
    // are the compressed stream's unused padding) it still rebuilds the exact signed file.
    // Damage inside the stream is refused.
    let mut refused = 0;
    for at in [d.len() / 3, d.len() / 2, d.len() - 1] {
        let mut bad = d.clone();
        bad[at] ^= 0x5a;
        match trail_pull::rebuild(&b2, &bad, &info, &public) {
            Ok(rebuilt) => assert_eq!(rebuilt, b3, "damage at {at} gave another set"),
            Err(_) => refused += 1,
        }
    }
    assert!(refused >= 2, "damage inside the delta was accepted");

    // The stored base damaged (same header, other body): the delta fails its checks, the
    // puller discards it and fetches the whole set.
    let mut damaged = std::fs::read(&stored).unwrap();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0xff;
    std::fs::write(&stored, &damaged).unwrap();
    let p = trail_pull::pull(&o).expect("pull after damage");
    assert!(!p.via_delta);
    assert_eq!(p.version, v3);
    assert_eq!(std::fs::read(&stored).unwrap(), b3);
    assert_eq!(trail_pull::DELTAS_DISCARDED.load(Ordering::Relaxed), 1);

    let metrics = http_get(None, &collector.http, "/metrics");
    assert!(
        metrics.contains("xtrail_trail_deltas_served_total 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("xtrail_trail_sets_served_total 2"),
        "{metrics}"
    );
    drop(collector);
    let _ = std::fs::remove_dir_all(&dir);
}
