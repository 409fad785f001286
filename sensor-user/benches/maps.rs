//! Map filling: loading the XDP program with maps sized for Maltrail's full static tree and
//! filling them (`BPF_MAP_UPDATE_BATCH` for the hashes and the prefilter, element updates for
//! the LPM tries). Needs root (or CAP_BPF + CAP_PERFMON + CAP_NET_ADMIN) and
//! `shared/data/maltrail/trails-static`; skipped with a message otherwise.
//!
//! `cargo bench -p xtrail-sensor --bench maps`

use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use xtrail_detect::trails::{LoadOptions, TrailSet};
use xtrail_sensor::loader::{Sensor, SensorOptions};

fn maps(c: &mut Criterion) {
    if let Err(e) = xtrail_sensor::privilege::check() {
        eprintln!("skipping map benchmarks: {e}");
        return;
    }
    let tree =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/maltrail/trails-static");
    let Ok(trails) = TrailSet::load(std::slice::from_ref(&tree), &LoadOptions::default()) else {
        eprintln!("skipping map benchmarks: no trails at {}", tree.display());
        return;
    };
    let n = trails.ip.len();
    let mut g = c.benchmark_group("maps");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.bench_function(format!("load_and_fill_{n}_ip_trails"), |b| {
        b.iter(|| Sensor::load(&trails.ip, &SensorOptions::default()).map(|s| s.fill.ipport))
    });
    g.finish();
}

criterion_group!(benches, maps);
criterion_main!(benches);
