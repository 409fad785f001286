//! Issue 12: the live hand-off path allocates nothing per record after warm-up. Payload
//! records laid out as the `PAYLOADS` ring presents them (header, then the frame; the ring's
//! size-class padding past `cap_len` is never read, so the records here stop at the frame)
//! are decoded and run through the detector by `live::hand_over`, the function the live
//! loop calls per record, under a counting allocator. So are the kernel's trail hits, through
//! `live::Hit::report` (each record's event filled into a written one, then the throttle
//! and the flood guard), and the detector's own events, built into written ones given back.
//! Needs no privilege.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use xtrail_bench::frames::{chrome_client_hello, dns_query, tcp_flags, v4, Frame};
use xtrail_common::{
    action, addr_check, handoff, side, trail_kind, trail_set, HitRecord, PayloadHeader,
    PAYLOAD_CAP, PAYLOAD_HEADER_LEN,
};
use xtrail_detect::event::{self, Event};
use xtrail_detect::heuristics::{HeuristicsConfig, UaPatterns};
use xtrail_detect::pipeline::{Detector, DetectorConfig, FloodConfig};
use xtrail_detect::process::{Addresses, ProcessorConfig};
use xtrail_detect::shared_trails::{SharedTrails, VersionedTrails};
use xtrail_detect::throttle::ThrottleConfig;
use xtrail_detect::trails::{LoadOptions, TrailSet};
use xtrail_detect::whitelist::Whitelist;
use xtrail_sensor::hits::{parse_payload, Clock};
use xtrail_sensor::live::{hand_over, hand_over_frame, Hit, MapSets};
use xtrail_sensor::reload::HitSets;
use xtrail_sensor::xsk::Stamp;

/// The `TRAIL_SET` value a sensor's start writes: set 0 at epoch 1.
const START: u32 = trail_set::value(0, 1, 0);

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// A `PAYLOADS` record as the XDP program writes it: header (`addrs` its address verdict),
/// then the frame's first bytes.
fn record_with(kind: u8, frame: &[u8], addrs: u8) -> Vec<u8> {
    let cap = frame.len().min(PAYLOAD_CAP);
    let h = PayloadHeader {
        ts_ns: 1_000_000_000,
        ifindex: 3,
        rx_queue: 0,
        pkt_len: frame.len() as u32,
        cap_len: cap as u32,
        kind,
        addrs,
        _pad: [0; 6],
    };
    // SAFETY: PayloadHeader is plain old data without padding.
    let head: [u8; PAYLOAD_HEADER_LEN] = unsafe { std::mem::transmute(h) };
    let mut rec = head.to_vec();
    rec.extend_from_slice(&frame[..cap]);
    rec
}

#[test]
fn the_live_hand_off_path_allocates_nothing_per_record() {
    let (trails, mut detector) = live_detector(
        "handoff",
        "66.66.66.66,malware (test),(test)\nbad-domain.example,malware (test),(test)\n",
    );
    // Clean DNS queries, HTTP requests and ClientHellos of 64 clients and names.
    let server = v4("198.18.200.1");
    let mut records = Vec::new();
    // Half the clients' records say the XDP program found their addresses clean in map set
    // 0, which holds the detector's set: those are not looked up again.
    let hit_sets = HitSets::new(Arc::new(VersionedTrails::new("t", trails)), START);
    let sets = MapSets::read(&hit_sets, &detector);
    for i in 0..64u16 {
        let me = v4(&format!("198.18.0.{}", 10 + i));
        let record = |kind, frame: &[u8]| {
            let addrs = if i % 2 == 0 {
                addr_check::CLEAN
            } else {
                addr_check::UNKNOWN
            };
            record_with(kind, frame, addrs)
        };
        let name = format!("www.clean-{i}.example.net");
        let dns = Frame::udp(me, 40000 + i, server, 53, &dns_query(i, &name, 1)).build();
        records.push(record(handoff::DNS, &dns));
        let get = format!("GET /page/{i}.html HTTP/1.1\r\nHost: {name}\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0\r\nAccept: */*\r\n\r\n");
        let http = Frame::tcp(me, 41000 + i, server, 80, tcp_flags::ACK | tcp_flags::PSH)
            .with_payload(get.as_bytes())
            .build();
        records.push(record(handoff::HTTP_REQUEST, &http));
        let tls = Frame::tcp(me, 42000 + i, server, 443, tcp_flags::ACK | tcp_flags::PSH)
            .with_payload(&chrome_client_hello(&name))
            .build();
        records.push(record(handoff::TLS_CLIENT_HELLO, &tls));
    }
    for r in &records {
        let h = parse_payload(r).expect("record decodes");
        assert!(h.frame.len() <= PAYLOAD_CAP && r.len() == PAYLOAD_HEADER_LEN + h.frame.len());
    }
    let clock = Clock::now();
    let ifname = |i: u32| (i == 3).then_some("eth0");
    let mut pending: Vec<Event> = Vec::with_capacity(1024);
    // Warm-up: every flow and name seen a few times.
    for _ in 0..4 {
        for r in &records {
            assert!(hand_over(
                r,
                &clock,
                &ifname,
                &sets,
                &mut detector,
                &mut |e| { pending.push(e) }
            ));
        }
    }
    assert!(pending.is_empty(), "clean traffic: {:?}", pending.first());
    let seen = detector.stats().processor;
    let before = allocations();
    let mut handed = 0u64;
    for _ in 0..50 {
        for r in &records {
            handed += u64::from(hand_over(
                r,
                &clock,
                &ifname,
                &sets,
                &mut detector,
                &mut |e| pending.push(e),
            ));
        }
    }
    let allocated = allocations() - before;
    assert_eq!(handed, 50 * records.len() as u64);
    // Every record went through the detector's parsers, not only the record decoder.
    let now = detector.stats().processor;
    assert_eq!(now.packets - seen.packets, handed);
    assert_eq!(now.parse_errors, seen.parse_errors);
    assert_eq!(now.dns_messages - seen.dns_messages, 50 * 64);
    assert_eq!(now.http_requests - seen.http_requests, 50 * 64);
    assert_eq!(now.tls_client_hellos - seen.tls_client_hellos, 50 * 64);
    // Half of them on the path that skips the address lookups.
    assert_eq!(now.addresses_vouched - seen.addresses_vouched, handed / 2);
    assert_eq!(
        allocated, 0,
        "{allocated} allocations over {handed} hand-offs"
    );
    assert!(pending.is_empty(), "clean traffic: {:?}", pending.first());
    // The same frames as AF_XDP hands them over (the meta taken off, its stamp kept): half
    // stamped clean under the start's write.
    let frames: Vec<(Vec<u8>, Stamp)> = records
        .iter()
        .map(|r| {
            let h = parse_payload(r).expect("record decodes");
            let addrs = h
                .clean_in
                .map_or(addr_check::UNKNOWN, |i| addr_check::CLEAN | i);
            (h.frame.to_vec(), Stamp { addrs, epoch: 1 })
        })
        .collect();
    let frame_pass = |detector: &mut Detector, pending: &mut Vec<Event>| {
        for (frame, stamp) in &frames {
            hand_over_frame(
                frame,
                *stamp,
                1_790_000_000_000_000,
                Some("eth0"),
                &sets,
                detector,
                &mut |e| pending.push(e),
            );
        }
    };
    frame_pass(&mut detector, &mut pending);
    let seen = detector.stats().processor;
    let before = allocations();
    for _ in 0..50 {
        frame_pass(&mut detector, &mut pending);
    }
    let allocated = allocations() - before;
    let now = detector.stats().processor;
    assert_eq!(now.packets - seen.packets, 50 * frames.len() as u64);
    assert_eq!(now.parse_errors, seen.parse_errors);
    assert_eq!(
        now.addresses_vouched - seen.addresses_vouched,
        25 * frames.len() as u64
    );
    assert_eq!(allocated, 0, "{allocated} allocations over AF_XDP frames");
    assert!(pending.is_empty(), "clean traffic: {:?}", pending.first());
    // A malformed record (shorter than its header says) is refused, without allocating.
    let mut short = records[0].clone();
    short.truncate(short.len() - 1);
    let before = allocations();
    assert!(!hand_over(
        &short,
        &clock,
        &ifname,
        &sets,
        &mut detector,
        &mut |e| pending.push(e)
    ));
    assert_eq!(allocations() - before, 0);
}

/// A hand-off's addresses are taken as clean only when its record says the XDP program found
/// them clean in the map set that holds the detector's very set: a DNS query to a resolver
/// listed as a trail is reported unless the record vouches for it in that set.
#[test]
fn hand_off_addresses_are_vouched_for_only_in_the_detectors_set() {
    let csv = "66.66.66.66,malware (test),(test)\n";
    let (trails, mut detector) = live_detector("vouch", csv);
    let (other, _) = live_detector("vouch-other", csv);
    let clock = Clock::now();
    let ifname = |_: u32| Some("eth0");
    let resolver = v4("66.66.66.66");
    let in_set_0 = |t: &Arc<TrailSet>, d: &Detector| {
        let hit_sets = HitSets::new(Arc::new(VersionedTrails::new("t", Arc::clone(t))), START);
        MapSets::read(&hit_sets, d)
    };
    let cases = [
        // (the record's verdict, the map set holding the detector's set, reported)
        (addr_check::UNKNOWN, in_set_0(&trails, &detector), true),
        (addr_check::CLEAN, in_set_0(&trails, &detector), false),
        (addr_check::CLEAN | 1, in_set_0(&trails, &detector), true),
        (
            addr_check::CLEAN | 1,
            MapSets::holding(Some(1), &detector),
            false,
        ),
        // Map set 0 holds another set (a reload's), or none does.
        (addr_check::CLEAN, in_set_0(&other, &detector), true),
        (addr_check::CLEAN, MapSets::holding(None, &detector), true),
    ];
    for (i, (addrs, sets, reported)) in cases.into_iter().enumerate() {
        let before = detector.stats().processor.addresses_vouched;
        // A client of its own per case: the throttle keeps each case's event.
        let me = v4(&format!("198.18.7.{}", 10 + i));
        let query = dns_query(i as u16, "www.example.net", 1);
        let frame = Frame::udp(me, 40000, resolver, 53, &query).build();
        let mut events = Vec::new();
        assert!(hand_over(
            &record_with(handoff::DNS, &frame, addrs),
            &clock,
            &ifname,
            &sets,
            &mut detector,
            &mut |e| events.push(e)
        ));
        let vouched = detector.stats().processor.addresses_vouched - before;
        assert_eq!(events.len(), usize::from(reported), "case {i}: {events:?}");
        // Counted where the lookups were skipped.
        assert_eq!(vouched, u64::from(!reported), "case {i}");
        if let Some(e) = events.first() {
            assert_eq!(e.trail, "66.66.66.66 (www.example.net)", "case {i}");
        }
    }
}

/// An AF_XDP frame's addresses are taken as clean only when the XDP program stamped it clean
/// under the newest `TRAIL_SET` write (its epoch) in the map set holding the detector's set:
/// a frame may wait in a socket across a reload, after which its set's index can hold
/// another set.
#[test]
fn frame_addresses_are_vouched_for_only_under_the_newest_selector_write() {
    let csv = "66.66.66.66,malware (test),(test)\n";
    let (trails, mut detector) = live_detector("vouch-frame", csv);
    // The start's write: set 0 at epoch 1.
    let hit_sets = HitSets::new(
        Arc::new(VersionedTrails::new("t", Arc::clone(&trails))),
        START,
    );
    let newest = MapSets::read(&hit_sets, &detector);
    let resolver = v4("66.66.66.66");
    let stamp = |addrs, epoch| Stamp { addrs, epoch };
    let cases = [
        // (the frame's stamp, the wake-up's read, reported)
        (stamp(addr_check::CLEAN, 1), newest, false),
        (stamp(addr_check::UNKNOWN, 1), newest, true),
        // Stamped under an earlier write, or in the other set.
        (stamp(addr_check::CLEAN, 0), newest, true),
        (stamp(addr_check::CLEAN | 1, 1), newest, true),
        // A read that knows no write (a ring record's view) vouches for no frame.
        (
            stamp(addr_check::CLEAN, 1),
            MapSets::holding(Some(0), &detector),
            true,
        ),
    ];
    for (i, (stamp, sets, reported)) in cases.into_iter().enumerate() {
        let before = detector.stats().processor.addresses_vouched;
        let me = v4(&format!("198.18.8.{}", 10 + i));
        let frame = Frame::udp(
            me,
            40000,
            resolver,
            53,
            &dns_query(i as u16, "www.example.net", 1),
        )
        .build();
        let mut events = Vec::new();
        hand_over_frame(
            &frame,
            stamp,
            1_790_000_000_000_000,
            Some("eth0"),
            &sets,
            &mut detector,
            &mut |e| events.push(e),
        );
        let vouched = detector.stats().processor.addresses_vouched - before;
        assert_eq!(events.len(), usize::from(reported), "case {i}: {events:?}");
        assert_eq!(vouched, u64::from(!reported), "case {i}");
    }
    // The next write (a reload's switch to set 1) makes frames of the last epoch stale.
    hit_sets.selected(trail_set::value(1, 2, 0));
    let after = MapSets::read(&hit_sets, &detector);
    let mut events = Vec::new();
    let frame = Frame::udp(
        v4("198.18.8.99"),
        40000,
        resolver,
        53,
        &dns_query(9, "www.example.net", 1),
    )
    .build();
    hand_over_frame(
        &frame,
        stamp(addr_check::CLEAN, 1),
        1_790_000_000_000_000,
        Some("eth0"),
        &after,
        &mut detector,
        &mut |e| events.push(e),
    );
    assert_eq!(events.len(), 1, "{events:?}");
}

/// A set the detector takes between the wake-up's read and a record (a reload published
/// mid-batch) vouches for nothing: the record's addresses are looked up in it.
#[test]
fn a_set_taken_mid_batch_is_not_vouched_for() {
    let csv = "66.66.66.66,malware (test),(test)\n";
    let (trails, mut detector) = live_detector("midbatch", csv);
    let (next, _) = live_detector("midbatch-next", csv);
    let first = Arc::new(VersionedTrails::new("v1", trails));
    let shared = SharedTrails::new(Arc::clone(&first));
    detector.follow(shared.clone());
    let sets = MapSets::read(&HitSets::new(first, START), &detector);
    shared.store(Arc::new(VersionedTrails::new("v2", next)));
    let frame = Frame::udp(
        v4("198.18.7.99"),
        40000,
        v4("66.66.66.66"),
        53,
        &dns_query(1, "www.example.net", 1),
    )
    .build();
    let mut events = Vec::new();
    let ifname = |_: u32| Some("eth0");
    assert!(hand_over(
        &record_with(handoff::DNS, &frame, addr_check::CLEAN),
        &Clock::now(),
        &ifname,
        &sets,
        &mut detector,
        &mut |e| events.push(e)
    ));
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].trail_set_version, "v2");
}

/// The trails of `csv` and a detector on them set up as the live sensor's (heuristics,
/// throttle and flood guard on).
fn live_detector(name: &str, csv: &str) -> (Arc<TrailSet>, Detector) {
    let dir = std::env::temp_dir().join(format!("xtrail-{name}-alloc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("trails.csv");
    std::fs::write(&path, csv).expect("trail file");
    let trails =
        TrailSet::load(std::slice::from_ref(&path), &LoadOptions::default()).expect("trails");
    let _ = std::fs::remove_dir_all(&dir);
    let trails = Arc::new(trails);
    let detector = Detector::new(DetectorConfig {
        trails: trails.clone(),
        whitelist: Arc::new(Whitelist::parse("")),
        processor: ProcessorConfig::with_sensor("no-alloc"),
        heuristics: Some((HeuristicsConfig::live(), Arc::new(UaPatterns::default()))),
        throttle: Some(ThrottleConfig::default()),
        flood: Some(FloodConfig::default()),
        maltrail_syn_rules: true,
    })
    .expect("detector");
    (trails, detector)
}

/// The v4-mapped form a hit record carries.
fn mapped(a: [u8; 4]) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[10] = 0xff;
    b[11] = 0xff;
    b[12..].copy_from_slice(&a);
    b
}

/// A domain trail hit's event is built into a written event given back on the thread
/// (`event::recycle`, as the live loop gives back what it wrote): once warm, it allocates
/// only what is new in it.
#[test]
fn a_domain_hits_event_reuses_a_written_events_strings() {
    let (trails, mut detector) =
        live_detector("dnshit", "bad-domain-alloc.net,malware (test),(test)\n");
    // As live: the set carries a version, which every event is stamped with.
    detector.follow(SharedTrails::new(Arc::new(VersionedTrails::new(
        "files-1", trails,
    ))));
    let resolver = v4("198.18.200.1");
    // 40 sources, each its own event (the throttle's keys are per source; past 50 sources
    // within its window the flood guard aggregates a trail's hits).
    let frames: Vec<Vec<u8>> = (0..40u16)
        .map(|i| {
            let me = v4(&format!("198.18.9.{}", 1 + i));
            Frame::udp(
                me,
                40000,
                resolver,
                53,
                &dns_query(i, "bad-domain-alloc.net", 1),
            )
            .build()
        })
        .collect();
    // Rounds two minutes apart: the throttle's windows end, every key is new again.
    let mut round = |r: i64| -> u64 {
        let mut events = 0;
        for f in &frames {
            let ts = 1_790_000_000_000_000 + r * 120_000_000;
            let _ = detector.frame_with(ts, 1, Some("eth0"), f, Addresses::Unchecked, &mut |e| {
                assert_eq!(
                    (e.iface.as_deref(), e.trail_set_version.as_str()),
                    (Some("eth0"), "files-1")
                );
                events += 1;
                event::recycle(e);
            });
        }
        events
    };
    for r in 0..3 {
        assert_eq!(round(r), 40, "round {r}");
    }
    let before = allocations();
    let events: u64 = (3..8).map(&mut round).sum();
    let allocated = allocations() - before;
    assert_eq!(events, 5 * 40);
    // What is new in each: its trail and the query's name and type (its details), where an
    // event built afresh allocates 9 (its sensor, protocol, info, reference, interface and
    // trail-set version strings too).
    assert!(
        allocated <= 3 * events,
        "{allocated} allocations over {events} domain-hit events"
    );
}

#[test]
fn a_kernel_hit_allocates_nothing_once_warm() {
    kernel_hits_allocate_nothing_once_warm(1);
}

/// Each hit sent 8 times within its second (a flow's retransmitted SYNs, the bench's flows):
/// the throttle collapses the repeats, and their events come back for the next hits.
#[test]
fn repeated_kernel_hits_allocate_nothing_once_warm() {
    kernel_hits_allocate_nothing_once_warm(8);
}

/// Rounds of 64 sources hitting 64 trails, each hit's record sent `repeats` times.
fn kernel_hits_allocate_nothing_once_warm(repeats: u64) {
    const TRAILS: u8 = 64;
    let lines: String = (0..TRAILS)
        .map(|i| format!("66.66.66.{i},malware (test),(test)\n"))
        .collect();
    let (trails, mut detector) = live_detector(&format!("hit{repeats}"), &lines);
    let clock = Clock::now();
    let version = String::from("files-1");
    let mut pending: Vec<Event> = Vec::with_capacity(1024);
    let mut written = 0u64;
    // Rounds two minutes apart (past the throttle's and the guard's windows, so every key's
    // entries are made again): each round 64 sources hit 64 trails, each record reported as
    // the live loop reports it, the written events given back as the loop gives them back.
    let set = VersionedTrails::new(version.clone(), trails);
    let hit = Hit {
        sensor: "no-alloc",
        iface: Some("eth0"),
        clock: &clock,
    };
    let mut round = |r: u64, written: &mut u64| {
        for (i, k) in (0..TRAILS).flat_map(|i| (0..repeats).map(move |k| (i, k))) {
            let rec = HitRecord {
                ts_ns: 1_000_000_000 + r * 120_000_000_000 + u64::from(i) * 1_000 + k * 100,
                ifindex: 3,
                trail_id: 0,
                src: mapped([198, 18, 1, i]),
                dst: mapped([66, 66, 66, i]),
                src_port: 40_000 + u16::from(i),
                dst_port: 443,
                family: 4,
                proto: 17,
                kind: trail_kind::IP,
                side: side::DST,
                action: action::PASS,
                ..HitRecord::default()
            };
            hit.report(&rec, &set, &mut detector, &mut |e| pending.push(e));
        }
        for e in pending.drain(..) {
            assert_eq!(e.info, "malware (test)");
            assert_eq!(e.trail_set_version, version);
            *written += 1;
            event::recycle(e);
        }
    };
    for r in 0..3 {
        round(r, &mut written);
    }
    assert_eq!(written, 3 * u64::from(TRAILS), "every hit is reported");
    let before = allocations();
    for r in 3..13 {
        round(r, &mut written);
    }
    let allocated = allocations() - before;
    assert_eq!(written, 13 * u64::from(TRAILS), "every hit is reported");
    assert_eq!(
        allocated,
        0,
        "{allocated} allocations over {} kernel hits",
        640 * repeats
    );
    assert_eq!(
        detector.stats().throttle.suppressed,
        13 * u64::from(TRAILS) * (repeats - 1)
    );
}
