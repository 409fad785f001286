//! Opens a compiled set and prints the resident memory after each step (for the README's
//! figures): `cargo run --release -p xtrail-trails --example open_rss -- SET`.

use std::time::Instant;

use xtrail_detect::trails::CompiledSet;

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Resident kB of the mappings of `name` (from /proc/self/smaps).
fn mapped_kb(name: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let mut inside = false;
    let mut total = 0;
    for l in s.lines() {
        // A mapping's header line starts with its address range (`start-end`).
        if l.split_whitespace().next().is_some_and(|f| f.contains('-')) {
            inside = l.ends_with(name);
        }
        if inside && l.starts_with("Rss:") {
            total += l
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

fn main() {
    let path = std::env::args().nth(1).expect("usage: open_rss SET");
    println!("start: {} kB", rss_kb());
    let t = Instant::now();
    let set = CompiledSet::open(path.as_ref(), None).expect("open");
    println!(
        "opened in {:?}: {} kB ({} trails)",
        t.elapsed(),
        rss_kb(),
        set.len()
    );
    let trails = set.into_trails();
    println!(
        "into_trails: {} kB (set mapping {} kB)",
        rss_kb(),
        mapped_kb(".xtrails")
    );
    let hit = trails.domains.contains("zzzz.cloud");
    println!(
        "contains {hit:?}: {} kB (set mapping {} kB)",
        rss_kb(),
        mapped_kb(".xtrails")
    );
    let hit = trails.domains.lookup("www.zzzz.cloud");
    println!("lookup {:?}: {} kB", hit.map(|m| m.trail), rss_kb());
    let hit = trails.domains.lookup("nothing.example.org");
    println!("miss {:?}: {} kB", hit.map(|m| m.trail), rss_kb());
    for i in 0..1000 {
        let _ = trails.domains.lookup(&format!("host{i}.example{i}.com"));
    }
    println!(
        "1000 misses: {} kB (set mapping {} kB)",
        rss_kb(),
        mapped_kb(".xtrails")
    );
}
