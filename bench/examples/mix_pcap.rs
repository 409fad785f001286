//! Writes the bench's realistic mix (`scenario::mix`, the same picks and seed as
//! `cargo xtask bench`) to a pcap, for profiling and timing the replay path without the
//! veth runs.
//!
//! ```text
//! cargo run --release -p xtrail-bench --example mix_pcap -- TRAILS WHITELIST FRAMES OUT.pcap [SEED [flows]]
//! ```
//! `SEED` is the bench's `--seed` (default 1); the mix uses `SEED + 1` as the bench does.
//! Every frame is its own flow (the bench's `offline replay`); with `flows`, the frames are
//! sent as the NIC-like generator sends them (`offline replay, flows`: background templates
//! `BENCH_FLOW_PACKETS` (8) packets per flow, `BENCH_WINDOW` (256) flows interleaved).

use std::io::BufWriter;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::ExitCode;

use xtrail_bench::flows::{self, BENCH_FLOW_PACKETS, BENCH_WINDOW};
use xtrail_bench::{pcapw, scenario};
use xtrail_detect::trails::{LoadOptions, TrailSet};
use xtrail_detect::whitelist::Whitelist;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mix_pcap: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [trails, whitelist, frames, out, rest @ ..] = args.as_slice() else {
        return Err("usage: mix_pcap TRAILS WHITELIST FRAMES OUT.pcap [SEED [flows]]".into());
    };
    let n: usize = frames.parse().map_err(|e| format!("FRAMES: {e}"))?;
    let seed: u64 = match rest.first() {
        Some(s) => s.parse().map_err(|e| format!("SEED: {e}"))?,
        None => 1,
    };
    let set = TrailSet::load(&[PathBuf::from(trails)], &LoadOptions::default())
        .map_err(|e| e.to_string())?;
    let wl = Whitelist::load(std::path::Path::new(whitelist)).map_err(|e| e.to_string())?;
    let picks = scenario::picks(&set, &wl, 200);
    let is_trail = |a: Ipv4Addr| set.ip.lookup(IpAddr::V4(a), None).is_some();
    let mix = scenario::mix(seed + 1, n, &picks, 0.01, &is_trail);
    let frames = match rest.get(1).map(String::as_str) {
        None => mix.frames.clone(),
        Some("flows") => flows::sequence(&mix.frames, BENCH_FLOW_PACKETS, BENCH_WINDOW, n)
            .map_err(|e| e.to_string())?,
        Some(other) => return Err(format!("unknown option {other:?} (flows)")),
    };
    let file = std::fs::File::create(out).map_err(|e| format!("{out}: {e}"))?;
    let mut w = BufWriter::new(file);
    pcapw::write_header(&mut w).map_err(|e| e.to_string())?;
    let t0: i64 = 1_790_000_000_000_000;
    for (i, f) in frames.iter().enumerate() {
        pcapw::write_packet(&mut w, t0 + i as i64 * 10, f).map_err(|e| e.to_string())?;
    }
    // Frames per class (the list itself has one entry per frame).
    let mut classes = std::collections::BTreeMap::<String, usize>::new();
    for c in &mix.classes {
        *classes.entry(format!("{c:?}")).or_default() += 1;
    }
    eprintln!(
        "mix_pcap: {} frames ({classes:?}), {} malicious items -> {out}",
        mix.frames.len(),
        mix.items.len()
    );
    Ok(())
}
