//! Runs clean frames of one kind through a live-configured [`Detector`] (full static tree,
//! whitelist, ua.txt, heuristics as live), for instruction counts and profiles of the
//! hand-off path: `perf stat -e instructions:u`, or valgrind's callgrind with
//! `--toggle-collect='*run_frames*'`.
//!
//! `cargo run --release -p xtrail-detect --example handoff_profile -- KIND [FRAMES] [DATA] [NAMES]`,
//! KIND one of tcp, udp, dns, http, httpquery, tls; FRAMES (default 100,000) are run after one
//! warm-up pass over the 4,096 distinct frames (as `benches/parse.rs` cycles them); DATA is the
//! Maltrail data tree (default `../shared/data/maltrail` beside the workspace); NAMES the
//! host name population (default 4,000, as the bench; above 4,096 there are as many frames
//! as names, so that a name seldom comes back before the name verdicts forget it). Prints the
//! events raised (0 for clean traffic), the wall time per measured frame and how many names
//! were answered from the verdicts of names seen clean before.

use std::hint::black_box;
use std::path::PathBuf;

use xtrail_detect::heuristics::HeuristicsConfig;
use xtrail_detect::packet::LINKTYPE_ETHERNET;
use xtrail_detect::pipeline::Detector;
use xtrail_detect::process::Addresses;

/// As the live loop runs a hand-off whose addresses the XDP program looked up clean in the
/// detector's set (every frame here): not looked up again.
const CLEAN: Addresses = Addresses::Clean;

#[path = "../tests/common/clean_traffic.rs"]
mod clean_traffic;
#[path = "../tests/common/live_detector.rs"]
mod live_detector;

use clean_traffic::{CleanTraffic, KINDS};

/// The warm-up pass (lazy regex compiles, table pages): not measured.
#[inline(never)]
fn warm_up(d: &mut Detector, frames: &[Vec<u8>], ts: &mut i64) -> u64 {
    let mut n = 0u64;
    for f in frames {
        *ts += 10;
        let _ = d.frame_with(*ts, LINKTYPE_ETHERNET, Some("eth0"), f, CLEAN, &mut |_e| {
            n += 1
        });
    }
    n
}

/// The measured loop, kept out of line so that callgrind can toggle on it.
#[inline(never)]
fn run_frames(d: &mut Detector, frames: &[Vec<u8>], count: usize, ts: &mut i64) -> u64 {
    let mut n = 0u64;
    for i in 0..count {
        *ts += 10;
        let f = black_box(&frames[i % frames.len()]);
        let _ = d.frame_with(*ts, LINKTYPE_ETHERNET, Some("eth0"), f, CLEAN, &mut |_e| {
            n += 1
        });
    }
    n
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let kind_arg = args.next().unwrap_or_else(|| "dns".into());
    let count: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(100_000);
    let data = args.next().map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/maltrail")
    });
    let kind = KINDS
        .into_iter()
        .find(|k| format!("{k:?}").eq_ignore_ascii_case(&kind_arg))
        .ok_or_else(|| format!("unknown kind {kind_arg}"))?;
    let Some((trails, whitelist, ua)) = live_detector::shared(&data) else {
        return Err("no Maltrail data".into());
    };
    let mut d = live_detector::detector(&trails, &whitelist, &ua, HeuristicsConfig::live())
        .ok_or("no detector")?;
    let names: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(4_000);
    let mut traffic = CleanTraffic::new(11, &trails, 2_000, 20_000, names);
    let frames: Vec<Vec<u8>> = (0..names.max(4096)).map(|_| traffic.frame(kind)).collect();
    let mut ts = 1_790_000_000_000_000i64;
    let warm = warm_up(&mut d, &frames, &mut ts);
    let hits_before = d.stats().processor.name_verdict_hits;
    let t0 = std::time::Instant::now();
    let events = run_frames(&mut d, &frames, count, &mut ts);
    let ns = t0.elapsed().as_nanos() as f64 / count.max(1) as f64;
    let hits = d.stats().processor.name_verdict_hits - hits_before;
    println!(
        "{kind:?}: {count} frames, {} events, {ns:.0} ns/frame, {hits} names answered from \
         the verdicts of names seen before",
        warm + events
    );
    Ok(())
}
