//! Trail benchmarks: loading Maltrail's full static tree, and the per-packet lookups
//! (domain with suffix walk, URL, IP). Lookups that miss must not allocate; these numbers are
//! the per-query cost the sensor pays.
//!
//! `cargo bench -p xtrail-detect --bench trails`; needs `shared/data/maltrail/trails-static`
//! beside the workspace (skipped with a message otherwise). For load time vs text size and
//! the RSS the tables add, see `examples/trail_stats.rs`.

use std::hint::black_box;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use xtrail_detect::trails::{LoadOptions, TrailSet};

fn tree() -> Option<PathBuf> {
    let p =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/maltrail/trails-static");
    if p.is_dir() {
        Some(p)
    } else {
        eprintln!(
            "skipping trail benchmarks: no static trails at {}",
            p.display()
        );
        None
    }
}

fn benches(c: &mut Criterion) {
    let Some(path) = tree() else { return };
    let paths = vec![path];
    let opts = LoadOptions::default();

    let mut g = c.benchmark_group("load");
    g.sample_size(10).measurement_time(Duration::from_secs(15));
    g.bench_function("static_tree", |b| {
        b.iter(|| TrailSet::load(black_box(&paths), &opts).map(|t| t.report.lines))
    });
    g.finish();

    let Ok(t) = TrailSet::load(&paths, &opts) else {
        eprintln!("skipping lookups: load failed");
        return;
    };
    eprintln!("{}", t.report);

    let mut g = c.benchmark_group("domain");
    g.bench_function("hit_exact", |b| {
        b.iter(|| t.domains.lookup(black_box("mikus192091.ddns.net")))
    });
    g.bench_function("hit_parent_3_deep", |b| {
        b.iter(|| t.domains.lookup(black_box("a.b.c.mikus192091.ddns.net")))
    });
    g.bench_function("miss_4_labels", |b| {
        b.iter(|| t.domains.lookup(black_box("mail.google-clean.example.org")))
    });
    g.bench_function("miss_long_cdn_name", |b| {
        b.iter(|| {
            t.domains.lookup(black_box(
                "e1234.dscb.akamaiedge.net.edgekey.net.globalredir.akadns.net",
            ))
        })
    });
    g.bench_function("miss_uppercase_trailing_dot", |b| {
        b.iter(|| t.domains.lookup(black_box("WWW.Wikipedia.ORG.")))
    });
    g.finish();

    let mut g = c.benchmark_group("url");
    g.bench_function("hit_host_path", |b| {
        b.iter(|| {
            t.urls
                .lookup(black_box(Some("regionsnews.net")), black_box("/OEqhU8Lg5"))
        })
    });
    g.bench_function("miss_plain", |b| {
        b.iter(|| {
            t.urls.lookup(
                black_box(Some("www.example.org")),
                black_box("/static/js/app.min.js"),
            )
        })
    });
    g.bench_function("miss_with_query", |b| {
        b.iter(|| {
            t.urls.lookup(
                black_box(Some("www.example.org")),
                black_box("/search/results.php?q=rust&page=2"),
            )
        })
    });
    g.finish();

    let mut g = c.benchmark_group("ip");
    let hit: IpAddr = "213.152.161.99"
        .parse()
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let miss: IpAddr = "192.0.2.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let miss6: IpAddr = "2001:db8::1".parse().unwrap_or(IpAddr::from([0u16; 8]));
    g.bench_function("hit_ipport", |b| {
        b.iter(|| t.ip.lookup(black_box(hit), black_box(Some(47390))))
    });
    g.bench_function("miss_v4_with_port", |b| {
        b.iter(|| t.ip.lookup(black_box(miss), black_box(Some(443))))
    });
    g.bench_function("miss_v6_with_port", |b| {
        b.iter(|| t.ip.lookup(black_box(miss6), black_box(Some(443))))
    });
    g.finish();
}

criterion_group!(trails, benches);
criterion_main!(trails);
