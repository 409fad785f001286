//! Parser and pipeline benchmarks: DNS, HTTP and TLS parsing, and the whole per-packet path
//! (`Processor::process`) over the frames of Maltrail's corpus with the full static trail
//! tree loaded (the cost replay and the live workers pay per packet).
//!
//! `cargo bench -p xtrail-detect --bench parse`; the pipeline group needs
//! `shared/data/maltrail` beside the workspace (skipped with a message otherwise).

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use xtrail_detect::heuristics::{HeuristicsConfig, MaltrailHeuristics, UaPatterns};
use xtrail_detect::pcap;
use xtrail_detect::process::{Processor, ProcessorConfig};
use xtrail_detect::protocols::{dns, http, tls};
use xtrail_detect::trails::{LoadOptions, TrailSet};
use xtrail_detect::whitelist::Whitelist;

fn dns_query(name: &str) -> Vec<u8> {
    xtrail_detect::protocols::dns::query_message(0x1234, name, 1)
}

fn parsers(c: &mut Criterion) {
    let q = dns_query("a.b.some-host.example-cdn.net");
    let req = b"GET /static/js/app.min.js?v=12345 HTTP/1.1\r\nHost: www.example-shop.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36\r\nAccept: */*\r\nAccept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\n\r\n";
    let hello = tls::client_hello_record("api.example-service.com");
    let mut g = c.benchmark_group("parse");
    g.bench_function("dns_query", |b| {
        b.iter(|| dns::parse(black_box(&q)).is_ok())
    });
    g.bench_function("http_request", |b| {
        b.iter(|| http::parse_request(black_box(req)).is_ok())
    });
    g.bench_function("tls_client_hello", |b| {
        b.iter(|| tls::parse_client_hello(black_box(&hello)).is_ok())
    });
    g.finish();
}

fn pipeline(c: &mut Criterion) {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/maltrail");
    if !data.join("trails-static").is_dir() {
        eprintln!("skipping pipeline benchmarks: no {}", data.display());
        return;
    }
    let trails = match TrailSet::load(&[data.join("trails-static")], &LoadOptions::default()) {
        Ok(t) => Arc::new(t),
        Err(e) => {
            eprintln!("skipping pipeline benchmarks: {e}");
            return;
        }
    };
    let whitelist = Arc::new(
        Whitelist::load(&data.join("data/whitelist.txt")).unwrap_or_else(|_| Whitelist::empty()),
    );
    // Every frame of the corpus (DNS, HTTP, TLS, scans, plain TCP/UDP/ICMP).
    let mut frames: Vec<(u32, Vec<u8>)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir(data.join("corpus")) {
        for e in dir.flatten() {
            if e.path().extension().is_some_and(|x| x == "pcap") {
                if let Ok(mut r) = pcap::open(&e.path()) {
                    while let Ok(Some(p)) = r.next_packet() {
                        frames.push((p.linktype, p.data.to_vec()));
                    }
                }
            }
        }
    }
    let mut g = c.benchmark_group("pipeline");
    g.measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(frames.len() as u64));
    for (name, heur) in [("trails_only", false), ("with_heuristics", true)] {
        let mut p = Processor::new(
            Arc::clone(&trails),
            Arc::clone(&whitelist),
            ProcessorConfig::default(),
        );
        if heur {
            let ua = Arc::new(UaPatterns::load(&data.join("data/ua.txt")).unwrap_or_default());
            if let Ok(h) =
                MaltrailHeuristics::new(HeuristicsConfig::live(), Arc::clone(&whitelist), ua)
            {
                p.set_heuristics(Box::new(h));
            }
        }
        let mut ts = 1_790_000_000_000_000i64;
        g.bench_function(format!("corpus_frames_{name}"), |b| {
            b.iter(|| {
                let mut n = 0u32;
                for (lt, f) in &frames {
                    ts += 1000;
                    p.process(ts, *lt, f, &mut |_e| n += 1);
                }
                n
            })
        });
    }
    g.finish();
}

criterion_group!(benches, parsers, pipeline);
criterion_main!(benches);
