//! Issue 12: a live hand-off whose addresses the XDP program found clean is not looked up
//! again (`Addresses::Clean`). Over every frame of Maltrail's replay corpus, a frame whose
//! two addresses are clean (as the XDP program looks them up: each with its own port as an
//! IP:port, an address and a CIDR trail) raises the same events with `Addresses::Clean` as
//! without it.
//!
//! Without the corpus the test is skipped, unless `CI=true`, where it fails.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use xtrail_detect::packet;
use xtrail_detect::pcap;
use xtrail_detect::process::{Addresses, Processor, ProcessorConfig};
use xtrail_detect::trails::{LoadOptions, TrailSet};
use xtrail_detect::whitelist::Whitelist;

fn corpus_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/maltrail/corpus");
    if dir.join("manifest.json").is_file() {
        return Some(dir);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("corpus not found at {}", dir.display());
    }
    eprintln!("corpus not found at {}: skipping", dir.display());
    None
}

#[test]
fn frames_with_clean_addresses_raise_the_same_events_unchecked() {
    let Some(dir) = corpus_dir() else { return };
    let trails = Arc::new(
        TrailSet::load(&[dir.join("trails.csv")], &LoadOptions::default()).expect("trails load"),
    );
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
            let _ = checked
                .process_frame_with(p.ts_us, linktype, p.data, addresses, &mut |e| with.push(e));
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
