//! Hot reload on a veth pair: the real `xtrail-sensor run` keeps detecting while its trail
//! set is swapped (SIGHUP after the trails file is rewritten), with no packet missed or
//! reported twice, new trails live within 2 s and removed ones gone.

mod common;
use common::{counter, events, sighup, tempdir};

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use xtrail_bench::child::Watched;
use xtrail_bench::frames::{v4, Frame};
use xtrail_bench::netns::VethPair;

macro_rules! privileged {
    () => {
        if !common::privileged(module_path!()) {
            return;
        }
    };
}

/// In every set.
const STABLE: [&str; 2] = ["198.19.10.1", "198.19.10.2"];
/// Only in the sets of even swaps (and the start set).
const OLD: &str = "198.19.20.1";
/// Only in the sets of odd swaps.
const NEW: &str = "198.19.30.1";
const SWAPS: usize = 10;

/// Writes set A (stable + OLD) or B (stable + NEW), with filler so the sets are alike in
/// size; written beside and renamed, as an updater does.
fn write_set(path: &Path, with_new: bool, filler: usize) {
    let mut text = String::new();
    for s in STABLE {
        text.push_str(&format!("{s},reload stable (malware),(test)\n"));
    }
    let (addr, info) = if with_new {
        (NEW, "reload new (malware)")
    } else {
        (OLD, "reload old (malware)")
    };
    text.push_str(&format!("{addr},{info},(test)\n"));
    for i in 0..filler {
        text.push_str(&format!(
            "198.19.{}.{},reload filler (malware),(test)\n",
            200 + i / 250,
            1 + i % 250
        ));
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write trails");
    std::fs::rename(&tmp, path).expect("rename trails");
}

/// One SYN to OLD and one to NEW, the events the sensor wrote for them (waited for,
/// bounded), then the sensor stopped: (events, its final stats line).
fn probe_old_and_new(
    pair: &VethPair,
    log: &Path,
    watched: Watched,
) -> (Vec<serde_json::Value>, String) {
    let inj = pair.injector().expect("injector");
    let me = v4(&pair.peer_ip);
    inj.send(&Frame::syn(me, 20001, v4(OLD), 443).build())
        .unwrap();
    inj.send(&Frame::syn(me, 20002, v4(NEW), 443).build())
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while events(log).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let stats = common::stop_sensor(watched);
    (events(log), stats)
}

/// The sensor's next reload (`trails reloaded`): its stderr lines up to it; `what` names it
/// in the panic when a refusal comes first or nothing within 30 s.
fn next_reload(watched: &Watched, what: &str) -> Vec<String> {
    watched
        .wait_for("trails reloaded", "refused", Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// SIGHUP, then the sensor's refusal of the set (`refused`): its stderr lines up to it;
/// `what` names it in the panic when a reload comes first or nothing within 30 s.
fn refused_after_sighup(watched: &Watched, what: &str) -> Vec<String> {
    sighup(watched.child.id());
    watched
        .wait_for("refused", "trails reloaded", Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Packets the generator sent: source port -> (destination, send time).
type Sent = Arc<Mutex<HashMap<u16, (&'static str, Instant)>>>;

#[test]
fn trails_swapped_ten_times_under_traffic_lose_and_repeat_nothing() {
    privileged!();
    let dir = tempdir("reload");
    let trails = dir.join("trails.csv");
    write_set(&trails, false, 1000);
    let config = dir.join("sensor.toml");
    std::fs::write(&config, "no_throttle = true\nno_heuristics = true\n").unwrap();
    let log = dir.join("events.jsonl");
    let pair = VethPair::create("xr").expect("veth pair");
    let watched = common::start_sensor(
        &pair,
        &trails,
        &log,
        "reload",
        &[
            "--suppress-ms",
            "0",
            "--no-flood-guard",
            "--no-payloads",
            "--no-flow-starts",
            "--config",
            config.to_str().unwrap(),
        ],
    );
    let pid = watched.child.id();
    // The generator: round robin over the stable, old and new addresses, one packet every
    // 2 ms, a distinct source port per packet; bounded in count and time.
    let sent: Sent = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let inj = pair.injector().expect("injector");
    let me = v4(&pair.peer_ip);
    let generator = {
        let (sent, stop) = (Arc::clone(&sent), Arc::clone(&stop));
        std::thread::spawn(move || {
            let targets: [&'static str; 4] = [STABLE[0], STABLE[1], OLD, NEW];
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut port: u16 = 10_000;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && port < 60_000 {
                let dst = targets[usize::from(port) % targets.len()];
                let frame = Frame::syn(me, port, v4(dst), 443).build();
                let at = Instant::now();
                inj.send(&frame).expect("send");
                sent.lock().unwrap().insert(port, (dst, at));
                port += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    // Swaps: odd ones install set B (NEW in, OLD out), even ones set A. The times: SIGHUP
    // sent, and the reload line seen (the kernel switched before it is printed).
    let mut swaps: Vec<(bool, Instant, Instant)> = Vec::new();
    let mut reload_lines = Vec::new();
    std::thread::sleep(Duration::from_millis(300));
    for i in 1..=SWAPS {
        let with_new = i % 2 == 1;
        // The file's modification time must move for the version to (1 µs is enough, but
        // some file systems keep coarser times).
        std::thread::sleep(Duration::from_millis(20));
        write_set(&trails, with_new, 1000 + i);
        let hup = Instant::now();
        sighup(pid);
        let line = next_reload(&watched, &format!("swap {i}"));
        let done = Instant::now();
        reload_lines.push(line.last().cloned().unwrap_or_default());
        swaps.push((with_new, hup, done));
        // Let each set see traffic for a while.
        std::thread::sleep(Duration::from_millis(400));
    }
    stop.store(true, Ordering::Relaxed);
    generator.join().expect("generator");
    // Everything sent is in the log once the sensor drained (bounded wait).
    std::thread::sleep(Duration::from_millis(500));
    let stats = common::stop_sensor(watched);
    let ev = events(&log);
    let sent = sent.lock().unwrap().clone();

    // Per packet (source port), the events it raised.
    let mut by_port: HashMap<u16, Vec<&serde_json::Value>> = HashMap::new();
    for e in &ev {
        let port = e["src_port"].as_u64().expect("src_port") as u16;
        by_port.entry(port).or_default().push(e);
    }
    // Which set was surely active when a packet was sent: after a reload line and before
    // the next SIGHUP (packets between a SIGHUP and its reload line may see either).
    let surely = |at: Instant| -> Option<bool> {
        let mut state = Some(false); // the start set (A)
        for (with_new, hup, done) in &swaps {
            if at >= *done {
                state = Some(*with_new);
            } else if at >= *hup {
                return None;
            }
        }
        state
    };
    let mut stable = 0;
    let mut versions = BTreeSet::new();
    for (port, (dst, at)) in &sent {
        let got = by_port.get(port).map(Vec::as_slice).unwrap_or(&[]);
        assert!(
            got.len() <= 1,
            "packet {port} to {dst} reported twice: {got:#?}"
        );
        if let Some(e) = got.first() {
            assert_eq!(e["trail"], *dst, "{e}");
            assert!(
                e["trail_set_version"]
                    .as_str()
                    .is_some_and(|v| v.starts_with("files-")),
                "no version: {e}"
            );
            versions.insert(
                e["trail_set_version"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
        }
        match *dst {
            d if STABLE.contains(&d) => {
                stable += 1;
                assert_eq!(got.len(), 1, "packet {port} to stable {d} not reported");
            }
            NEW => match surely(*at) {
                Some(true) => assert_eq!(got.len(), 1, "packet {port} to added {NEW} missed"),
                Some(false) => assert!(got.is_empty(), "{NEW} reported while not a trail"),
                None => {}
            },
            _ => match surely(*at) {
                Some(false) => assert_eq!(got.len(), 1, "packet {port} to {OLD} missed"),
                Some(true) => assert!(got.is_empty(), "removed {OLD} still reported"),
                None => {}
            },
        }
    }
    // An added address is detected within 2 s of the swap's SIGHUP.
    for (with_new, hup, _) in swaps.iter().filter(|s| s.0) {
        let first = sent
            .iter()
            .filter(|(p, (d, at))| *d == NEW && at >= hup && by_port.contains_key(p))
            .map(|(_, (_, at))| *at)
            .min()
            .unwrap_or_else(|| panic!("{NEW} never detected after a swap (new={with_new})"));
        let delay = first.duration_since(*hup);
        assert!(
            delay <= Duration::from_secs(2),
            "{NEW} detected {delay:?} after the swap"
        );
    }
    assert!(stable > 1000, "too few stable packets: {stable}");
    // Every set that was active saw hits; versions go up with each swap.
    assert!(
        versions.len() > SWAPS,
        "versions seen: {versions:?} (want {})",
        SWAPS + 1
    );
    assert!(stats.contains(&format!("trail_reloads={SWAPS}")), "{stats}");
    for l in &reload_lines {
        eprintln!("reload: {l}");
    }
    eprintln!(
        "reload: {} packets sent ({stable} to trails of every set), {} events, {} versions",
        sent.len(),
        ev.len(),
        versions.len()
    );
    assert!(
        !pair.sensor_has_xdp().unwrap(),
        "XDP program left on the interface"
    );
}

#[test]
fn a_shrunk_empty_or_unreadable_set_is_refused_and_the_current_kept() {
    privileged!();
    let dir = tempdir("reload-refuse");
    let trails = dir.join("trails.csv");
    write_set(&trails, false, 100);
    let log = dir.join("events.jsonl");
    let pair = VethPair::create("xf").expect("veth pair");
    let watched = common::start_sensor(
        &pair,
        &trails,
        &log,
        "refuse",
        &["--suppress-ms", "0", "--no-flood-guard", "--no-heuristics"],
    );
    // Shrinks to 4 of 103 trails: refused. Empty: refused. Gone: refused.
    write_set(&trails, true, 1);
    let e = refused_after_sighup(&watched, "shrunk set refused");
    assert!(e.last().unwrap().contains("fewer than 0.5"), "{e:?}");
    std::fs::write(&trails, "").unwrap();
    let e = refused_after_sighup(&watched, "empty set refused");
    assert!(e.last().unwrap().contains("empty"), "{e:?}");
    std::fs::remove_file(&trails).unwrap();
    refused_after_sighup(&watched, "missing file refused");
    // The start set still detects: OLD is in, NEW is not.
    let (ev, stats) = probe_old_and_new(&pair, &log, watched);
    assert_eq!(ev.len(), 1, "{ev:#?}");
    assert_eq!(ev[0]["trail"], OLD);
    assert!(stats.contains("trail_reloads=0"), "{stats}");
}

#[test]
fn a_watched_trails_file_is_reloaded_when_it_changes() {
    privileged!();
    let dir = tempdir("reload-watch");
    let trails = dir.join("trails.csv");
    write_set(&trails, false, 10);
    let log = dir.join("events.jsonl");
    let pair = VethPair::create("xw").expect("veth pair");
    let watched = common::start_sensor(
        &pair,
        &trails,
        &log,
        "watch",
        &["--watch-trails", "--suppress-ms", "0", "--no-heuristics"],
    );
    // Rewritten (by rename, as an updater does): picked up without a signal.
    write_set(&trails, true, 11);
    let line = next_reload(&watched, "reload on change");
    assert!(
        line.last().unwrap().contains("(trail file changed)"),
        "{line:?}"
    );
    let (ev, stats) = probe_old_and_new(&pair, &log, watched);
    assert_eq!(ev.len(), 1, "{ev:#?}");
    assert_eq!(ev[0]["trail"], NEW);
    assert!(stats.contains("trail_reloads=1"), "{stats}");
}

/// Mirror mode: each AF_XDP frame carries the XDP program's address verdict, dated by the
/// trail-set switch it was made under. After a reload, frames are vouched for again (the
/// live loop learns the switch's epoch): a query to the address no longer a trail is taken
/// as clean without a second lookup, and one to the address that became a trail is
/// reported (`ip (query)`). (A verdict made before a switch and read after it is refused in
/// `handoff_no_alloc.rs`: a frame cannot be held in a socket across a reload here.)
#[test]
fn mirror_frames_are_vouched_for_again_after_a_reload() {
    use xtrail_bench::frames::dns_query;
    privileged!();
    let dir = tempdir("reload-mirror");
    let trails = dir.join("trails.csv");
    write_set(&trails, false, 10);
    let log = dir.join("events.jsonl");
    let pair = VethPair::create("xv").expect("veth pair");
    let watched = common::start_sensor(
        &pair,
        &trails,
        &log,
        "mirror-reload",
        &[
            "--mode",
            "mirror",
            "--afxdp-copy",
            "--suppress-ms",
            "0",
            "--no-heuristics",
        ],
    );
    let inj = pair.injector().expect("injector");
    let me = v4(&pair.peer_ip);
    let query = |port: u16, to: &str| {
        let q = dns_query(port, "www.example.net", 1);
        inj.send(&Frame::udp(me, port, v4(to), 53, &q).build())
            .unwrap();
    };
    // NEW is no trail yet: clean, vouched for.
    query(30001, NEW);
    std::thread::sleep(Duration::from_millis(300));
    write_set(&trails, true, 11);
    sighup(watched.child.id());
    next_reload(&watched, "reload to set B");
    // Now NEW is a trail (reported by userspace), OLD no longer is (vouched for).
    query(30002, NEW);
    query(30003, OLD);
    let deadline = Instant::now() + Duration::from_secs(10);
    while events(&log).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let stats = common::stop_sensor(watched);
    let ev = events(&log);
    assert_eq!(ev.len(), 1, "{ev:#?}\n{stats}");
    assert_eq!(ev[0]["trail"], format!("{NEW} (www.example.net)"));
    assert_eq!(ev[0]["src_port"], 30002);
    assert_eq!(counter(&stats, "redirected"), 3, "{stats}");
    assert_eq!(counter(&stats, "addresses_vouched"), 2, "{stats}");
    assert_eq!(counter(&stats, "trail_reloads"), 1, "{stats}");
}
