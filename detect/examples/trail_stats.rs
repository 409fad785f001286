//! Loads trail sources and prints what the lead reports: load time, source text size, and
//! the resident memory the loaded tables add.
//!
//! `cargo run --release -p xtrail-detect --example trail_stats -- [PATH...]`
//! (default: the Maltrail static tree under `shared/data/maltrail/trails-static`).

use std::path::PathBuf;
use std::time::Instant;

use xtrail_detect::trails::{LoadOptions, TrailSet};

/// VmRSS of this process in KiB, from /proc/self/status (0 where unavailable).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut paths: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    if paths.is_empty() {
        paths.push(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../shared/data/maltrail/trails-static"),
        );
    }
    let before = rss_kib();
    let start = Instant::now();
    let set = TrailSet::load(&paths, &LoadOptions::default())?;
    let elapsed = start.elapsed();
    let after = rss_kib();
    let r = &set.report;
    println!("{r}");
    println!("load time: {:.3} s", elapsed.as_secs_f64());
    println!(
        "source text: {:.1} MB in {} files",
        r.bytes as f64 / 1e6,
        r.files
    );
    println!(
        "RSS: {:.1} MB before, {:.1} MB after, delta {:.1} MB ({:.2}x the source text)",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        (after.saturating_sub(before)) as f64 / 1024.0,
        (after.saturating_sub(before) * 1024) as f64 / r.bytes.max(1) as f64
    );
    let (d, u) = (&set.domains, &set.urls);
    let text = d.text_bytes() + u.text_bytes();
    println!(
        "domain+URL tables: {:.1} MB heap for {:.1} MB of trail text ({:.2}x); domains {:.1} MB / {:.1} MB text, URLs {:.1} MB / {:.1} MB text",
        set.name_table_bytes() as f64 / 1e6,
        text as f64 / 1e6,
        set.name_table_bytes() as f64 / text.max(1) as f64,
        d.heap_bytes() as f64 / 1e6,
        d.text_bytes() as f64 / 1e6,
        u.heap_bytes() as f64 / 1e6,
        u.text_bytes() as f64 / 1e6,
    );
    for m in &r.malformed_examples {
        println!(
            "malformed: {}:{}: {:?}: {}",
            m.path.display(),
            m.line,
            m.text,
            m.reason
        );
    }
    Ok(())
}
