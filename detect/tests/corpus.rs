//! Replays Maltrail's replay corpus (`shared/data/maltrail/corpus`) through the library's
//! replay pipeline and scores each case the way `shared/tools/corpus-check` does: every
//! `expect` substring must appear among the event lines; an empty `expect` means no event;
//! `mixed_soup` is differential (the IP, IP:port and DNS trail events of the cases it mixes).
//!
//! Every case is asserted, heuristic ones included (replay installs the heuristics and runs
//! them on the pcap's timestamps; user agents come from Maltrail's `ua.txt`).
//!
//! Without the corpus the test is skipped, unless `CI=true`, where it fails.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use xtrail_detect::event::Format;
use xtrail_detect::heuristics::UaPatterns;
use xtrail_detect::packet;
use xtrail_detect::pcap;
use xtrail_detect::process::{Addresses, Processor, ProcessorConfig};
use xtrail_detect::replay::{replay, ReplayOptions};
use xtrail_detect::trails::{LoadOptions, TrailSet};
use xtrail_detect::whitelist::Whitelist;

const DIFFERENTIAL: &[(&str, &[&str])] = &[(
    "mixed_soup",
    &[
        "66.66.66.66",
        "6.6.6.6:8443",
        "198.51.100.66",
        "evil-test-domain.com",
        "(www).evil-parent.com",
        "badsite.onion(.to)",
        "evilname(.ip-adress.com)",
    ],
)];

fn shared_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/maltrail")
}

fn corpus_dir() -> Option<PathBuf> {
    let dir = shared_data().join("corpus");
    if dir.join("manifest.json").is_file() {
        return Some(dir);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("corpus not found at {}", dir.display());
    }
    eprintln!("corpus not found at {}: skipping", dir.display());
    None
}

/// The corpus's trail file, loaded.
fn corpus_trails(dir: &Path) -> Arc<TrailSet> {
    Arc::new(
        TrailSet::load(&[dir.join("trails.csv")], &LoadOptions::default()).expect("trails load"),
    )
}

struct Outcome {
    lines: Vec<String>,
}

fn run_case(dir: &Path, trails: &Arc<TrailSet>, wl: &Arc<Whitelist>, pcap: &str) -> Outcome {
    let ua_path = shared_data().join("data/ua.txt");
    let ua = if ua_path.is_file() {
        UaPatterns::load(&ua_path).expect("ua.txt loads")
    } else {
        UaPatterns::empty()
    };
    let opts = ReplayOptions {
        format: Format::Maltrail,
        ua_patterns: Some(Arc::new(ua)),
        ..ReplayOptions::default()
    };
    let mut out = Vec::new();
    let stats = replay(
        &[dir.join(pcap)],
        Arc::clone(trails),
        Arc::clone(wl),
        &opts,
        &mut out,
    )
    .unwrap_or_else(|e| panic!("{pcap}: {e}"));
    assert!(
        stats.file_errors.is_empty(),
        "{pcap}: {:?}",
        stats.file_errors
    );
    let text = String::from_utf8(out).expect("event lines are UTF-8");
    Outcome {
        lines: text
            .lines()
            .filter(|l| l.starts_with('"'))
            .map(str::to_owned)
            .collect(),
    }
}

/// The Maltrail event line without its microseconds and source port: what the throttle keys
/// on, per second.
fn throttle_key(line: &str) -> String {
    let (ts, rest) = line.split_at(line.find("\" ").map_or(0, |i| i + 2));
    let second = ts.get(..20).unwrap_or(ts);
    let mut f: Vec<&str> = rest.splitn(4, ' ').collect();
    if f.len() == 4 {
        f.remove(2); // src port
    }
    format!("{second} {}", f.join(" "))
}

#[test]
fn maltrail_corpus() {
    let Some(dir) = corpus_dir() else { return };
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("manifest.json")).expect("manifest readable"),
    )
    .expect("manifest is JSON");
    let trails = corpus_trails(&dir);
    let wl_path = shared_data().join("data/whitelist.txt");
    let wl = Arc::new(if wl_path.is_file() {
        Whitelist::load(&wl_path).expect("whitelist loads")
    } else {
        Whitelist::empty()
    });

    let mut failures = Vec::new();
    let mut passed = 0usize;
    let cases = manifest.as_array().expect("manifest is a list");
    for case in cases {
        let name = case["name"].as_str().expect("case name");
        let pcap = case["pcap"].as_str().expect("case pcap");
        let expect: Vec<&str> = match DIFFERENTIAL.iter().find(|(n, _)| *n == name) {
            Some((_, list)) => list.to_vec(),
            None => case["expect"]
                .as_array()
                .expect("expect list")
                .iter()
                .filter_map(|v| v.as_str())
                .collect(),
        };
        let out = run_case(&dir, &trails, &wl, pcap);
        let text = out.lines.join("\n");
        let missing: Vec<&str> = expect
            .iter()
            .copied()
            .filter(|e| !text.contains(e))
            .collect();
        let ok = if expect.is_empty() {
            out.lines.is_empty()
        } else {
            missing.is_empty()
        };

        // Throttle invariant on every case: no two identical events within one second.
        let mut seen = HashSet::new();
        for line in &out.lines {
            assert!(
                seen.insert(throttle_key(line)),
                "{name}: repeated event within one second: {line}"
            );
        }

        let why = if expect.is_empty() {
            format!("{} unexpected event(s): {:?}", out.lines.len(), out.lines)
        } else {
            format!("missing {missing:?}")
        };
        if ok {
            passed += 1;
            println!("PASS {name}");
            for line in &out.lines {
                println!("    {line}");
            }
        } else {
            println!("FAIL {name}: {why}");
            failures.push(format!("{name}: {why}"));
        }
    }
    println!("{passed}/{} corpus cases pass", cases.len());
    assert!(
        failures.is_empty(),
        "corpus failures:\n{}",
        failures.join("\n")
    );
}

#[test]
fn duplicate_syns_collapse_to_one_event_per_second() {
    let Some(dir) = corpus_dir() else { return };
    let trails = corpus_trails(&dir);
    let wl = Arc::new(Whitelist::empty());
    let out = run_case(&dir, &trails, &wl, "duplicate_syn.pcap");
    // Five identical SYNs in one second, then three in three separate seconds.
    assert_eq!(out.lines.len(), 4, "{:?}", out.lines);
    let out = run_case(&dir, &trails, &wl, "dns_same_socket_burst.pcap");
    assert_eq!(out.lines.len(), 1, "{:?}", out.lines);
    assert!(out.lines[0].contains(" UDP DNS evil-test-domain.com "));
}

/// Issue 12: a live hand-off whose addresses the XDP program found clean is not looked up
/// again (`Addresses::Clean`). Every frame of the corpus whose two addresses are clean (as
/// the XDP program looks them up: each with its own port as an IP:port, an address and a
/// CIDR trail) raises the same events with `Addresses::Clean` as without it.
#[test]
fn frames_with_clean_addresses_raise_the_same_events_unchecked() {
    let Some(dir) = corpus_dir() else { return };
    let trails = corpus_trails(&dir);
    let wl = Arc::new(Whitelist::empty());
    let processor = || {
        Processor::new(
            Arc::clone(&trails),
            Arc::clone(&wl),
            ProcessorConfig::with_sensor("t"),
        )
    };
    let (mut checked, mut unchecked) = (processor(), processor());
    let (mut clean, mut frames) = (0usize, 0usize);
    let (mut with, mut without) = (Vec::new(), Vec::new());
    let mut pcaps: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("corpus readable")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pcap"))
        .collect();
    pcaps.sort();
    assert!(pcaps.len() >= 20, "{pcaps:?}");
    for path in &pcaps {
        let mut reader = pcap::open(path).expect("pcap opens");
        while let Some(p) = reader.next_packet().expect("pcap reads") {
            let linktype = p.linktype;
            let Ok(pkt) = packet::parse(linktype, p.data) else {
                continue;
            };
            let (sport, dport) = pkt.ports();
            let ip = &trails.ip;
            let addresses = if ip.lookup(pkt.dst, Some(dport)).is_none()
                && ip.lookup(pkt.src, Some(sport)).is_none()
            {
                clean += 1;
                Addresses::Clean
            } else {
                Addresses::Unchecked
            };
            frames += 1;
            let _ =
                checked.process_frame_with(p.ts_us, linktype, None, p.data, addresses, &mut |e| {
                    with.push(e)
                });
            let _ = unchecked.process_frame(p.ts_us, linktype, p.data, &mut |e| without.push(e));
        }
    }
    assert!(
        clean > 0 && clean < frames,
        "{clean} of {frames} frames clean"
    );
    assert!(!with.is_empty());
    assert_eq!(with, without);
}
