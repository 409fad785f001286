//! Parser and pipeline benchmarks: DNS, HTTP and TLS parsing, and the whole per-packet path
//! (`Processor::process`) over the frames of Maltrail's corpus with the full static trail
//! tree loaded (the cost replay and the live workers pay per packet).
//!
//! - `handoff/*`: one clean frame of each kind (TCP, UDP, DNS query, HTTP request, TLS
//!   ClientHello) as a transport hands it to the live sensor's [`Detector`] (Ethernet frame,
//!   interface name; its addresses looked up clean by the XDP program, so not again), full
//!   static tree, whitelist, heuristics as live (scans from the kernel), throttle and flood
//!   guard; cycling over 4,096 distinct frames per kind, their host names
//!   drawn from 4,000 (about two thirds are answered from the verdicts of names seen clean
//!   before). `handoff/{dns,http,tls}_new_names`: the same over 65,536 frames naming 200,000
//!   hosts (about 2% answered so): the cost of a name not seen lately.
//! - `replay/mix_one_pass`: one pass of an in-memory pcap of the mix (70% background, 15% DNS,
//!   10% HTTP, 5% TLS; or the file `XTRAIL_BENCH_PCAP` names, e.g. the bench's own mix from
//!   `cargo run --release -p xtrail-bench --example mix_pcap`) through a fresh replay
//!   `Detector` (heuristics as in replay); building the detector is excluded.
//!
//! - `scan/flow_start_{new_pairs,50k_pairs}`: flow starts (half UDP, half TCP SYN to port
//!   443) through the scan heuristics' tables with their default bounds: host pairs never
//!   seen again (a flood: every start a new key, the tables full), and pairs drawn from
//!   50,000 (most found again), each start's entries prefetched first as replay does;
//!   `scan/flow_starts_batched_*` the same 16 at a time with their
//!   entries prefetched first, as the live sensor takes a ring record. Needs no data.
//! - `event/{json,maltrail}_line`: one IP-trail event (as the live sensor builds from a kernel
//!   hit) written as a log line into a reused buffer. `throttle/new_sources`: such events
//!   from ever new sources (~1,700 a second of event time) through the throttle, its
//!   summarize table at its bound.
//!
//! `cargo bench -p xtrail-detect --bench parse`; the pipeline groups need
//! `shared/data/maltrail` beside the workspace (skipped with a message otherwise).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use xtrail_detect::heuristics::scan::ScanState;
use xtrail_detect::heuristics::{FlowStart, HeuristicsConfig, MaltrailHeuristics, UaPatterns};
use xtrail_detect::packet::LINKTYPE_ETHERNET;
use xtrail_detect::pcap;
use xtrail_detect::process::{Addresses, Processor, ProcessorConfig};
use xtrail_detect::protocols::{dns, http, tls};
use xtrail_detect::trails::TrailSet;
use xtrail_detect::whitelist::Whitelist;

#[path = "../tests/common/clean_traffic.rs"]
mod clean_traffic;
#[path = "../tests/common/live_detector.rs"]
mod live_detector;

use clean_traffic::{CleanTraffic, Kind, KINDS};
use live_detector::detector;

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
    let Some((trails, whitelist, ua)) = live_detector::shared(&data) else {
        return;
    };
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
            if let Ok(h) = MaltrailHeuristics::new(
                HeuristicsConfig::live(),
                Arc::clone(&whitelist),
                Arc::clone(&ua),
            ) {
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

/// The full static tree, its whitelist and ua.txt, or `None` (with a message).
fn shared() -> Option<(Arc<TrailSet>, Arc<Whitelist>, Arc<UaPatterns>)> {
    live_detector::shared(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/maltrail"),
    )
}

fn handoff_and_replay(c: &mut Criterion) {
    let Some((trails, whitelist, ua)) = shared() else {
        return;
    };
    let mut traffic = CleanTraffic::new(11, &trails, 2_000, 20_000, 4_000);

    let mut g = c.benchmark_group("handoff");
    g.throughput(Throughput::Elements(1));
    // One live detector per benchmark, cycling over its frames.
    let mut handoff = |name: String, frames: Vec<Vec<u8>>| {
        let Some(mut d) = detector(&trails, &whitelist, &ua, HeuristicsConfig::live()) else {
            return;
        };
        let mut ts = 1_790_000_000_000_000i64;
        let mut i = 0usize;
        g.bench_function(name, |b| {
            b.iter(|| {
                ts += 10;
                i = (i + 1) % frames.len();
                let f = black_box(&frames[i]);
                let mut n = 0u32;
                // As the live loop runs a frame the XDP program looked up clean.
                let clean = Addresses::Clean;
                let _ = d.frame_with(ts, LINKTYPE_ETHERNET, Some("eth0"), f, clean, &mut |_e| {
                    n += 1
                });
                n
            })
        });
    };
    for kind in KINDS {
        let frames = (0..4096).map(|_| traffic.frame(kind)).collect();
        handoff(format!("{kind:?}").to_lowercase(), frames);
    }
    // Names that seldom come back: 65,536 frames naming 200,000 hosts, so that nearly every
    // name misses the verdicts of names seen before (about 2% are answered from them).
    let mut rare = CleanTraffic::new(13, &trails, 2_000, 20_000, 200_000);
    for kind in [Kind::Dns, Kind::Http, Kind::Tls] {
        let frames = (0..65_536).map(|_| rare.frame(kind)).collect();
        handoff(format!("{kind:?}_new_names").to_lowercase(), frames);
    }
    g.finish();

    // The pcap, in memory: the file named by XTRAIL_BENCH_PCAP, else a generated mix.
    let pcap_bytes = match std::env::var_os("XTRAIL_BENCH_PCAP") {
        Some(p) => match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("skipping replay: {}: {e}", PathBuf::from(p).display());
                return;
            }
        },
        None => {
            let mut b = Vec::new();
            b.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
            b.extend_from_slice(&2u16.to_le_bytes());
            b.extend_from_slice(&4u16.to_le_bytes());
            b.extend_from_slice(&[0; 8]);
            b.extend_from_slice(&65_535u32.to_le_bytes());
            b.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
            let t0: i64 = 1_790_000_000_000_000;
            for i in 0..100_000i64 {
                let (_, f) = traffic.mixed();
                let ts = t0 + i * 10;
                b.extend_from_slice(&((ts / 1_000_000) as u32).to_le_bytes());
                b.extend_from_slice(&((ts % 1_000_000) as u32).to_le_bytes());
                b.extend_from_slice(&(f.len() as u32).to_le_bytes());
                b.extend_from_slice(&(f.len() as u32).to_le_bytes());
                b.extend_from_slice(&f);
            }
            b
        }
    };
    let packets = {
        let mut n = 0u64;
        if let Ok(mut r) = pcap::PcapReader::new(pcap_bytes.as_slice()) {
            while let Ok(Some(_)) = r.next_packet() {
                n += 1;
            }
        }
        n
    };
    let mut g = c.benchmark_group("replay");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(packets));
    g.bench_function("mix_one_pass", |b| {
        b.iter_batched(
            || detector(&trails, &whitelist, &ua, HeuristicsConfig::replay()),
            |d| {
                // The detector is returned, so criterion drops it after the timing.
                let Some(mut d) = d else { return (None, 0) };
                let mut events = 0u64;
                if let Ok(mut r) = pcap::PcapReader::new(pcap_bytes.as_slice()) {
                    while let Ok(Some(p)) = r.next_packet() {
                        let _ = d.frame(p.ts_us, p.linktype, None, p.data, &mut |_e| events += 1);
                    }
                }
                d.finish(&mut |_e| events += 1);
                (Some(d), events)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn event_lines(c: &mut Criterion) {
    use xtrail_detect::event::{Action, Details, Event, EventType, Format, Severity};
    let event = Event {
        ts_us: 1_796_290_816_921_443,
        sensor: "bench".into(),
        src_ip: "198.18.2.56".parse().expect("address"),
        src_port: 1592,
        dst_ip: "3.64.163.50".parse().expect("address"),
        dst_port: 443,
        proto: "TCP".into(),
        kind: EventType::Ip,
        trail: "3.64.163.50".into(),
        info: "parking site (suspicious)".into(),
        reference: "(static)".into(),
        severity: Severity::Medium,
        action: Action::Pass,
        iface: Some("eth1".into()),
        trail_set_version: "files-1796289738663781".into(),
        details: Details::default(),
    };
    let mut g = c.benchmark_group("event");
    let mut line = Vec::with_capacity(512);
    for (name, format) in [
        ("json_line", Format::Json),
        ("maltrail_line", Format::Maltrail),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                line.clear();
                black_box(&event).write_line(format, &mut line);
                black_box(line.len())
            })
        });
    }
    g.finish();

    // The throttle under a steady stream of hits from ever new sources (a scan of listed
    // addresses, the bench mix's IP-trail SYNs): ~1,700 events a second of event time, so
    // that its summarize table fills to its bound and is swept once a second, as live.
    let mut g = c.benchmark_group("throttle");
    g.throughput(Throughput::Elements(1));
    let mut throttle = xtrail_detect::throttle::Throttle::default();
    let mut i = 0u32;
    let mut next = |event: &Event| {
        i = i.wrapping_add(1);
        let mut e = event.clone();
        e.ts_us += i64::from(i) * 588;
        e.src_ip = IpAddr::V4(Ipv4Addr::from(0xc612_0000 | (i & 0x1_ffff)));
        e
    };
    let mut passed = 0u64;
    for _ in 0..120_000 {
        throttle.filter(next(&event), &mut |_| passed += 1);
    }
    g.bench_function("new_sources", |b| {
        b.iter(|| {
            let e = next(&event);
            throttle.filter(e, &mut |e| {
                black_box(&e);
            })
        })
    });
    g.finish();
}

/// Flow start `i` of a stream whose host pairs are drawn from `distinct` (LCG over `i`).
fn flow_start(i: u64, distinct: u64) -> FlowStart {
    let r = (i.wrapping_mul(6_364_136_223_846_793_005) >> 16) % distinct;
    let udp = i.is_multiple_of(2);
    FlowStart {
        ts_us: i as i64 * 2,
        src: IpAddr::V4(Ipv4Addr::from(0xc612_0000 | (r as u32 & 0xffff))),
        dst: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | ((r >> 16) as u32 & 0xff_ffff))),
        src_port: 40_000 + (r % 1000) as u16,
        dst_port: if udp { 5353 + (r % 7) as u16 } else { 443 },
        proto: if udp { 17 } else { 6 },
        tcp_flags: if udp { 0 } else { 2 },
    }
}

/// Scan tables filled with 1M flow starts drawn from `distinct` host pairs (at their bound;
/// with 50,000 pairs some sets of four overflow: most pairs are found again, not all), and
/// the index of the next start.
fn filled_scan_tables(config: &HeuristicsConfig, distinct: u64) -> (ScanState, u64) {
    let mut scans = ScanState::new(config);
    let filled = 1_000_000u64;
    for i in 0..filled {
        scans.observe(config, &flow_start(i, distinct), |_| {});
    }
    (scans, filled)
}

fn scan_tables(c: &mut Criterion) {
    let config = HeuristicsConfig::default();
    let mut g = c.benchmark_group("scan");
    for (name, batched, distinct) in [
        ("flow_start_new_pairs", false, 1u64 << 40),
        ("flow_start_50k_pairs", false, 50_000),
        // As the live sensor feeds them: a ring record of 16 flow starts, the batch's table
        // entries prefetched first.
        ("flow_starts_batched_new_pairs", true, 1u64 << 40),
        ("flow_starts_batched_50k_pairs", true, 50_000),
    ] {
        let (mut scans, mut i) = filled_scan_tables(&config, distinct);
        let n = if batched { BATCH } else { 1 };
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut alerts = 0u32;
                if batched {
                    let batch: [FlowStart; BATCH] =
                        std::array::from_fn(|k| flow_start(i + k as u64, distinct));
                    for f in &batch {
                        scans.prefetch(&config, f);
                    }
                    for f in &batch {
                        scans.observe(&config, f, |_| alerts += 1);
                    }
                } else {
                    let f = flow_start(i, distinct);
                    scans.prefetch(&config, &f);
                    scans.observe(&config, &f, |_| alerts += 1);
                }
                i += n as u64;
                black_box(alerts)
            })
        });
    }
    g.finish();
}

/// Flow starts per ring record (`xtrail_common::FLOW_BATCH`).
const BATCH: usize = 16;

criterion_group!(
    benches,
    parsers,
    pipeline,
    handoff_and_replay,
    scan_tables,
    event_lines
);
criterion_main!(benches);
