//! The per-packet pipeline allocates nothing when a packet hits no trail: frames of every kind
//! the pipeline inspects (TCP handshakes, DNS queries over UDP and TCP, HTTP requests, TLS
//! ClientHellos, ICMP, IPv6) are processed under a counting allocator; and the whole
//! [`Detector`] with Maltrail's full static tree (regex trails included), its whitelist and
//! the heuristics on allocates nothing per clean packet after warm-up; a run of DNS queries
//! that hit domain trails allocates only their trails' texts once written events are given
//! back.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use xtrail_detect::heuristics::{HeuristicsConfig, UaPatterns};
use xtrail_detect::packet::LINKTYPE_ETHERNET;
use xtrail_detect::pipeline::{Detector, DetectorConfig, FloodConfig};
use xtrail_detect::process::{Processor, ProcessorConfig};
use xtrail_detect::throttle::ThrottleConfig;
use xtrail_detect::trails::{LoadOptions, TrailSet};
use xtrail_detect::whitelist::Whitelist;

#[path = "common/clean_traffic.rs"]
mod clean_traffic;

use clean_traffic::{CleanTraffic, Kind, KINDS};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    /// While set, the first allocation's backtrace is kept in `FIRST_TRACE`.
    static TRACE: Cell<bool> = const { Cell::new(false) };
    /// Set while a backtrace is taken: its own allocations are not counted.
    static BUSY: Cell<bool> = const { Cell::new(false) };
    static FIRST_TRACE: RefCell<Option<String>> = const { RefCell::new(None) };
    /// With `XTRAIL_ALLOC_SITES` set: every traced allocation's site, counted.
    static SITES: RefCell<std::collections::BTreeMap<String, u64>> =
        const { RefCell::new(std::collections::BTreeMap::new()) };
}

/// Counts an allocation; keeps the first traced one's backtrace (capturing it allocates, so
/// tracing is switched off meanwhile).
fn count() {
    if BUSY.try_with(Cell::get).unwrap_or(true) {
        return;
    }
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
    if TRACE.try_with(Cell::get).unwrap_or(false) {
        let _ = BUSY.try_with(|t| t.set(true));
        let _ = TRACE.try_with(|t| t.set(false));
        let bt = std::backtrace::Backtrace::force_capture().to_string();
        let _ = FIRST_TRACE.try_with(|f| {
            if let Ok(mut f) = f.try_borrow_mut() {
                f.get_or_insert(bt.clone());
            }
        });
        if std::env::var_os("XTRAIL_ALLOC_SITES").is_some() {
            // Where it came from: the innermost frames of the library.
            let site: Vec<&str> = bt
                .lines()
                .filter(|l| l.contains("xtrail_detect::") || l.contains("./src/"))
                .take(4)
                .collect();
            let _ = SITES.try_with(|s| {
                if let Ok(mut s) = s.try_borrow_mut() {
                    *s.entry(site.join(" | ")).or_insert(0) += 1;
                }
            });
            let _ = TRACE.try_with(|t| t.set(true));
        }
        let _ = BUSY.try_with(|t| t.set(false));
    }
}

// SAFETY: forwards to the system allocator; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

fn ipv4(proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = vec![
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0, 10, 0, 0, 5, 93, 184, 216, 34,
    ];
    let total = (20 + l4.len()) as u16;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p.extend_from_slice(l4);
    p
}

fn tcp(dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    tcp_at(dport, flags, 1, payload)
}

/// A TCP segment whose payload starts at sequence number `seq`.
fn tcp_at(dport: u16, flags: u8, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut t = vec![0xc3, 0x50];
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 1, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(payload);
    t
}

fn udp(dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = vec![0xc3, 0x51];
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

fn dns_query(name: &str) -> Vec<u8> {
    xtrail_detect::protocols::dns::query_message(0x1234, name, 1)
}

/// Whether Maltrail's corpus trails are here: under `CI=true` they must be.
fn corpus_present(csv: &Path) -> bool {
    if csv.is_file() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{} is missing (required in CI)",
        csv.display()
    );
    eprintln!("skipping: no corpus at {}", csv.display());
    false
}

/// Maltrail's corpus trails (regex trails included), `None` when absent outside CI.
fn corpus_trails() -> Option<TrailSet> {
    let csv =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/maltrail/corpus/trails.csv");
    corpus_present(&csv)
        .then(|| TrailSet::load(&[csv], &LoadOptions::default()).expect("corpus trails"))
}

fn client_hello(sni: &str) -> Vec<u8> {
    xtrail_detect::protocols::tls::client_hello_record(sni)
}

#[test]
fn no_hit_path_allocates_nothing() {
    // The corpus trails without its regex trail: `RegexSet::matches` allocates its result on
    // every call, which is the trail table's business, not the pipeline's (see the
    // `domain_regex_miss_allocations` test below).
    let csv =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/maltrail/corpus/trails.csv");
    if !corpus_present(&csv) {
        return;
    }
    let text = std::fs::read_to_string(&csv).expect("corpus trails");
    let plain: String = text
        .lines()
        .filter(|l| !l.contains('[') || l.starts_with('['))
        .map(|l| format!("{l}\n"))
        .collect();
    let tmp = std::env::temp_dir().join(format!("xtrail-no-alloc-{}.csv", std::process::id()));
    std::fs::write(&tmp, plain).expect("temp file");
    let trails =
        TrailSet::load(std::slice::from_ref(&tmp), &LoadOptions::default()).expect("trails");
    let _ = std::fs::remove_file(&tmp);
    assert!(trails.domains.regexes.is_empty());
    assert!(!trails.domains.is_empty(), "the corpus trails loaded");
    let whitelist = Whitelist::parse("google.com\n8.8.4.4\n");
    let mut p = Processor::new(
        Arc::new(trails),
        Arc::new(whitelist),
        ProcessorConfig::default(),
    );
    let mut dns_tcp = (dns_query("clean.example.org").len() as u16)
        .to_be_bytes()
        .to_vec();
    dns_tcp.extend_from_slice(&dns_query("clean.example.org"));
    let mut eth_v6 = vec![0u8; 12];
    eth_v6.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 8, 58, 64]);
    eth_v6.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8].repeat(8));
    eth_v6.extend_from_slice(&[128, 0, 0, 0, 0, 0, 0, 1]);
    let mut frames: Vec<(u32, Vec<u8>)> = vec![
        (101, ipv4(6, &tcp(443, 0x02, b""))),
        (101, ipv4(6, &tcp(443, 0x12, b""))),
        (101, ipv4(17, &udp(53, &dns_query("www.clean-site.org")))),
        (101, ipv4(17, &udp(53, &dns_query("mail.google.com")))),
        // A query type events name by its number.
        (
            101,
            ipv4(
                17,
                &udp(
                    53,
                    &xtrail_detect::protocols::dns::query_message(0x1234, "www.clean-site.org", 99),
                ),
            ),
        ),
        (101, ipv4(6, &tcp(53, 0x18, &dns_tcp))),
        (101, ipv4(17, &udp(443, b"quic bytes"))),
        (
            101,
            ipv4(
                6,
                &tcp(
                    80,
                    0x18,
                    b"GET /index.html HTTP/1.1\r\nHost: www.clean-site.org\r\nUser-Agent: x\r\n\r\n",
                ),
            ),
        ),
        // A query, then a query and a `//`: the URL candidates' rewritten paths (parameter
        // values dropped, slashes collapsed) are built on the stack.
        (
            101,
            ipv4(
                6,
                &tcp(
                    80,
                    0x18,
                    b"GET /static/js/app.min.js?v=12345&lang=en HTTP/1.1\r\nHost: www.clean-site.org\r\nUser-Agent: x\r\n\r\n",
                ),
            ),
        ),
        (
            101,
            ipv4(
                6,
                &tcp(
                    80,
                    0x18,
                    b"GET /a//b/search.php?q=shoes HTTP/1.1\r\nHost: www.clean-site.org\r\nUser-Agent: x\r\n\r\n",
                ),
            ),
        ),
        (101, ipv4(6, &tcp(443, 0x18, &client_hello("www.clean-site.org")))),
        (101, ipv4(1, &[8, 0, 0, 0, 0, 1, 0, 1])),
    ];
    // A browser's post-quantum ClientHello over two segments (its rest parsed where it
    // lies), and over three (the rest kept in the flow's pooled buffer).
    let split = xtrail_detect::protocols::tls::browser_client_hello("www.clean-site.org", true);
    let last = split.len() - 10;
    for (port, cuts) in [(443, &[0, 1448][..]), (8443, &[0, 1448, last])] {
        for (i, &at) in cuts.iter().enumerate() {
            let end = cuts.get(i + 1).copied().unwrap_or(split.len());
            let seq = 1 + at as u32;
            frames.push((101, ipv4(6, &tcp_at(port, 0x18, seq, &split[at..end]))));
        }
    }
    frames.push((1, eth_v6));
    // More query types without a name: one digit, two, the largest.
    for qtype in [0, 10, 65535] {
        let q = xtrail_detect::protocols::dns::query_message(0x1234, "www.clean-site.org", qtype);
        frames.push((101, ipv4(17, &udp(53, &q))));
    }
    let mut events = 0u32;
    let mut sink = |_e: xtrail_detect::event::Event| events += 1;
    // Warm up: lazily grown buffers reach their size. A round is not enough for the
    // ClientHello reassembler: its flow table and its pooled buffers (which rotate with the
    // one a completed flow is handed back in) still grew in later rounds (3 allocations in
    // 100 rounds after a one-round warm-up, on the three-segment hello's first and middle
    // segments); after a hundred rounds, none.
    for round in 0..100i64 {
        for (i, (lt, f)) in frames.iter().enumerate() {
            p.process(round * 1_000_000 + i as i64, *lt, f, &mut sink);
        }
    }
    let mut per_frame = vec![0u64; frames.len()];
    for round in 100..200i64 {
        for (i, (lt, f)) in frames.iter().enumerate() {
            let before = allocations();
            p.process(round * 1_000_000 + i as i64, *lt, f, &mut sink);
            per_frame[i] += allocations() - before;
        }
    }
    let during: u64 = per_frame.iter().sum();
    assert_eq!(events, 0, "the frames were meant to be clean");
    assert_eq!(p.stats().parse_errors, 0);
    // Both split ClientHellos were joined in every round, the warm-up's included.
    assert_eq!(p.stats().tls_reassembly.completed, 2 * 200);
    assert_eq!(
        during, 0,
        "{during} allocations on the no-hit path (per frame: {per_frame:?})"
    );
}

/// A DNS query's domain trail hit builds its event over an event given back after it was
/// written (`event::recycle`, as the live loop and replay do): once such events are at hand,
/// a run of hits allocates only the lookup's trail text (the details are copied into the
/// reused event's strings). An event of another protocol than the reused one's
/// also allocates the details fields the reused event lacked.
#[test]
fn dns_hit_events_allocate_only_their_trail_once_warm() {
    let Some(trails) = corpus_trails() else {
        return;
    };
    let mut p = Processor::new(
        Arc::new(trails),
        Arc::new(Whitelist::default()),
        ProcessorConfig::default(),
    );
    let frames: Vec<Vec<u8>> = [
        "evil-test-domain.com",
        "www.evil-parent.com",
        "a.b.evil-parent.com",
    ]
    .iter()
    .map(|n| ipv4(17, &udp(53, &dns_query(n))))
    .collect();
    let mut events = Vec::new();
    let mut sink = |e: xtrail_detect::event::Event| {
        events.push((e.trail.clone(), e.details.clone()));
        xtrail_detect::event::recycle(e);
    };
    // Warm up: an event built new, then given back.
    for (i, f) in frames.iter().enumerate() {
        p.process(i as i64, 101, f, &mut sink);
    }
    let trails_seen: Vec<_> = events.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        trails_seen,
        [
            "evil-test-domain.com",
            "(www).evil-parent.com",
            "(a.b).evil-parent.com"
        ]
    );
    assert_eq!(
        events[1].1.dns_query.as_deref(),
        Some("www.evil-parent.com")
    );
    assert_eq!(events[1].1.dns_qtype.as_deref(), Some("A"));
    let mut raised = 0;
    let mut count = |e: xtrail_detect::event::Event| {
        raised += 1;
        xtrail_detect::event::recycle(e);
    };
    let before = allocations();
    TRACE.with(|t| t.set(true));
    for round in 1..101i64 {
        for (i, f) in frames.iter().enumerate() {
            p.process(round * 1_000_000 + i as i64, 101, f, &mut count);
        }
    }
    TRACE.with(|t| t.set(false));
    let during = allocations() - before;
    assert_eq!(raised, 100 * frames.len(), "every hit raised its event");
    let first = FIRST_TRACE
        .with(|f| f.borrow_mut().take())
        .unwrap_or_default();
    // The trail's text only (500 allocations for these 300 hits); the details none (two
    // more a hit before they were copied into the reused event).
    assert!(
        during <= 2 * raised as u64,
        "{during} allocations for {raised} DNS hits' events; the first:\n{first}"
    );
}

/// A domain miss with regex trails loaded allocates nothing (the regex set is asked
/// `is_match` before it builds a match set).
#[test]
fn domain_regex_miss_allocations() {
    let Some(trails) = corpus_trails() else {
        return;
    };
    assert!(
        !trails.domains.regexes.is_empty(),
        "the corpus has regex trails"
    );
    let _ = trails.domains.lookup("www.clean-site.org");
    let before = allocations();
    for _ in 0..100 {
        let _ = trails.domains.lookup("www.clean-site.org");
    }
    let n = allocations() - before;
    println!("{n} allocations for 100 domain misses");
    assert_eq!(n, 0);
}

/// Maltrail's shared data (static tree, whitelist, ua.txt); `None` skips the test, except
/// with `CI=true`, where the data must be there.
fn shared_data() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/maltrail");
    if dir.join("trails-static").is_dir() && dir.join("data/whitelist.txt").is_file() {
        return Some(dir);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "Maltrail shared data not found at {} (required in CI)",
        dir.display()
    );
    eprintln!("skipping: no Maltrail static tree at {}", dir.display());
    None
}

/// The live sensor's pipeline as the transports feed it (Ethernet frames with the interface
/// name), over the full static tree with its regex trails, the shared whitelist and every
/// heuristic on (scans from packets too, as in replay): after a warm-up that fills the
/// bounded state tables to their steady size, clean background TCP/UDP, DNS queries, HTTP
/// requests and TLS ClientHellos allocate nothing. A hit may allocate: its event owns its
/// strings.
#[test]
fn full_tree_with_heuristics_allocates_nothing_per_clean_packet() {
    let Some(data) = shared_data() else { return };
    let trails = TrailSet::load(&[data.join("trails-static")], &LoadOptions::default())
        .expect("static tree loads");
    assert!(
        !trails.domains.regexes.is_empty(),
        "the static tree has regex trails"
    );
    let whitelist = Whitelist::load(&data.join("data/whitelist.txt")).expect("whitelist");
    let ua = UaPatterns::load(&data.join("data/ua.txt")).expect("ua.txt");
    let mut traffic = CleanTraffic::new(7, &trails, 2_000, 20_000, 4_000);
    let mut detector = Detector::new(DetectorConfig {
        trails: Arc::new(trails),
        whitelist: Arc::new(whitelist),
        processor: ProcessorConfig::with_sensor("no-alloc"),
        heuristics: Some((HeuristicsConfig::replay(), Arc::new(ua))),
        throttle: Some(ThrottleConfig::default()),
        flood: Some(FloodConfig::default()),
        maltrail_syn_rules: false,
    })
    .expect("detector");
    let mut events = Vec::new();
    let t0: i64 = 1_790_000_000_000_000;
    let mut ts = t0;
    // Warm-up: more keys than each bounded table holds (65,536), also for the tables only
    // SYNs (port scans) and HTTP requests (web scans) fill, and for the scan tables' window
    // lines, which a host pair gets at its second port, so every table has grown to its
    // bound (the scan tables) or rotated twice (the two-generation ones) and reached its
    // steady allocation.
    for i in 0..80_000 {
        for f in clean_traffic::second_items(i) {
            ts += 10;
            let _ = detector.frame(ts, LINKTYPE_ETHERNET, Some("eth0"), &f, &mut |e| {
                events.push(e)
            });
        }
        assert!(events.is_empty(), "second items raised events at pair {i}");
    }
    for i in 0..500_000 {
        let f = match i {
            0..100_000 => traffic.syn(),
            100_000..200_000 => traffic.frame(Kind::Http),
            _ => traffic.mixed().1,
        };
        ts += 10;
        let _ = detector.frame(ts, LINKTYPE_ETHERNET, Some("eth0"), &f, &mut |e| {
            events.push(e)
        });
    }
    let mut per_kind = [(0u64, 0u64); KINDS.len()];
    let measured = if std::env::var_os("XTRAIL_ALLOC_SITES").is_some() {
        300
    } else {
        100_000
    };
    for _ in 0..measured {
        let (kind, f) = traffic.mixed();
        ts += 10;
        let k = KINDS.iter().position(|x| *x == kind).unwrap_or(0);
        TRACE.with(|t| t.set(true));
        let before = allocations();
        let r = detector.frame(ts, LINKTYPE_ETHERNET, Some("eth0"), &f, &mut |e| {
            events.push(e)
        });
        let n = allocations() - before;
        TRACE.with(|t| t.set(false));
        assert!(r.is_ok(), "{kind:?} frame parses");
        per_kind[k].0 += 1;
        per_kind[k].1 += n;
    }
    let first: Vec<String> = events
        .iter()
        .take(3)
        .map(|e| format!("{} {} {}", e.trail, e.info, e.dst_ip))
        .collect();
    assert!(events.is_empty(), "clean traffic raised events: {first:?}");
    let report: Vec<String> = KINDS
        .iter()
        .zip(per_kind)
        .map(|(k, (p, a))| format!("{k:?}: {a} allocations in {p} packets"))
        .collect();
    eprintln!("{}", report.join("; "));
    SITES.with(|s| {
        let mut v: Vec<_> = s.borrow().iter().map(|(k, n)| (*n, k.clone())).collect();
        v.sort_unstable_by(|a, b| b.cmp(a));
        for (n, k) in v.iter().take(25) {
            eprintln!("{n:>8} {k}");
        }
    });
    let total: u64 = per_kind.iter().map(|x| x.1).sum();
    let trace = FIRST_TRACE
        .with(|f| f.borrow_mut().take())
        .unwrap_or_default();
    assert_eq!(
        total,
        0,
        "allocations on the clean path: {}\nfirst at:\n{trace}",
        report.join("; ")
    );
    assert!(per_kind.iter().all(|x| x.0 > measured / 100));
}
