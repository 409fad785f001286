//! The XDP program's logic over crafted frames, through BPF_PROG_TEST_RUN: no interface.

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use xtrail_bench::frames::{
    chrome_client_hello, chrome_sni_offset, dns_query, tcp_flags, v4, v6, Frame, L4,
};
use xtrail_common::{
    handoff, payload_class, side, stat, trail_kind, v4_mapped, HitRecord, PAYLOAD_HEADER_LEN,
};
use xtrail_detect::event::Event;
use xtrail_detect::packet::LINKTYPE_ETHERNET;
use xtrail_detect::process::{Processor, ProcessorConfig};
use xtrail_detect::trails::{IpTrails, LoadOptions, TrailSet};
use xtrail_detect::whitelist::Whitelist;
use xtrail_sensor::hits::parse_record;
use xtrail_sensor::loader::{Mode, Sensor, SensorOptions};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

const TRAIL_V4: &str = "66.66.66.66";
const TRAIL_V6: &str = "dead::beef";
const CLEAN: &str = "198.18.0.2";
const CLEAN_V6: &str = "2001:db8::2";

fn octets(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(a) => v4_mapped(a.octets()),
        IpAddr::V6(a) => a.octets(),
    }
}

/// Label ids: 1 = IPv4, 2 = IPv6, 3 = IP:port, 4 = CIDR, 5 = IPv6 IP:port, 6 = IPv6 CIDR.
fn trails() -> IpTrails {
    let mut t = IpTrails::default();
    t.v4.insert([66, 66, 66, 66], 1);
    if let IpAddr::V6(a) = v6(TRAIL_V6) {
        t.v6.insert(a.octets(), 2);
        t.ipport.insert((a.octets(), 443), 5);
    }
    t.ipport.insert((v4_mapped([6, 6, 6, 6]), 8443), 3);
    t.cidr4.push(([203, 0, 113, 0], 24, 4));
    t.cidr6.push((
        [
            0x20, 0x01, 0x0d, 0xb8, 0xbb, 0xbb, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
        32,
        6,
    ));
    t
}

struct Harness {
    sensor: Sensor,
    ring: RingBuf<MapData>,
    flows: RingBuf<MapData>,
}

impl Harness {
    /// Loads the program and pins the test's thread to the CPU it runs on: the program
    /// batches flow starts per CPU, and a thread that migrated between runs would get two
    /// CPUs' batches back in either order.
    fn new(opts: SensorOptions) -> Harness {
        pin_to_current_cpu();
        let mut sensor = Sensor::load(&trails(), &opts).expect("load XDP program");
        let ring = sensor.take_hits().expect("ring buffer");
        let flows = sensor.take_flows().expect("flow ring buffer");
        Harness {
            sensor,
            ring,
            flows,
        }
    }

    fn inline() -> Harness {
        Harness::new(SensorOptions::default())
    }

    fn mirror() -> Harness {
        Harness::new(SensorOptions {
            mode: Mode::Mirror,
            ..SensorOptions::default()
        })
    }

    fn run(&mut self, frame: &Frame) -> u32 {
        self.sensor.test_run(&frame.build()).expect("test run")
    }

    fn hits(&mut self) -> Vec<HitRecord> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            out.push(parse_record(&item).expect("record"));
        }
        out
    }

    fn flow_starts(&mut self) -> Vec<xtrail_common::FlowRecord> {
        let mut out = Vec::new();
        while let Some(item) = self.flows.next() {
            out.extend(xtrail_sensor::hits::parse_flows(&item).expect("flow records"));
        }
        // What the batch of the CPU the test runs ran on still holds (none run meanwhile).
        out.extend(
            self.sensor
                .take_pending_flows()
                .expect("pending flow starts"),
        );
        out
    }

    fn counter(&self, index: u32) -> u64 {
        self.sensor.counters().expect("counters").get(index)
    }
}

macro_rules! privileged {
    () => {
        if !common::privileged(module_path!()) {
            return;
        }
    };
}

/// The kernel's verification of the program was the start's largest step (~0.1 s of CPU for
/// 84,567 instructions while `hand_off` was a static BPF function, verified again for each
/// state of its caller; ~0.03 s for 29,074 once it was a global one, verified once; 35,217
/// on 12-06 afternoon). Verifying it again per caller state would bring the count back above
/// the bound, and so did a variable offset into map memory computed from a hit's values
/// (`hits_seen`'s slot by the trail id, 115k: the verifier then tracks those values
/// precisely).
#[test]
fn program_verifies_in_bounded_work() {
    privileged!();
    let h = Harness::inline();
    let n = h
        .sensor
        .verified_instructions()
        .expect("the kernel reports verified_insns");
    assert!(
        n < 45_000,
        "{n} instructions verified: is hand_off still a global BPF function?"
    );
}

#[test]
fn ipv4_syn_to_trail_is_reported_and_passed() {
    privileged!();
    let mut h = Harness::inline();
    let f = Frame::syn(v4(CLEAN), 40000, v4(TRAIL_V4), 80);
    assert_eq!(h.run(&f), XDP_PASS);
    let hits = h.hits();
    assert_eq!(hits.len(), 1);
    let r = hits[0];
    assert_eq!(r.trail_id, 1);
    assert_eq!(r.kind, trail_kind::IP);
    assert_eq!(r.side, side::DST);
    assert_eq!(r.family, 4);
    assert_eq!(r.proto, 6);
    assert_eq!(r.src_port, 40000);
    assert_eq!(r.dst_port, 80);
    assert_eq!(r.dst, octets(v4(TRAIL_V4)));
    assert_eq!(r.src, octets(v4(CLEAN)));
    assert_eq!(r.tcp_flags & tcp_flags::SYN, tcp_flags::SYN);
    assert_eq!(h.counter(stat::REPORTED), 1);
}

#[test]
fn source_side_hit_is_reported() {
    privileged!();
    let mut h = Harness::inline();
    h.run(&Frame::syn(v4(TRAIL_V4), 5555, v4(CLEAN), 22));
    let hits = h.hits();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].side, side::SRC);
}

#[test]
fn only_maltrail_reportable_packets_are_reported() {
    privileged!();
    let mut h = Harness::inline();
    // TCP without SYN, SYN+ACK, ICMP echo reply: hits, counted, not reported.
    h.run(&Frame::tcp(
        v4(CLEAN),
        40000,
        v4(TRAIL_V4),
        80,
        tcp_flags::ACK,
    ));
    h.run(&Frame::tcp(
        v4(CLEAN),
        40001,
        v4(TRAIL_V4),
        80,
        tcp_flags::SYN | tcp_flags::ACK,
    ));
    h.run(&Frame::icmp(v4(CLEAN), v4(TRAIL_V4), 0));
    assert!(h.hits().is_empty());
    assert_eq!(h.counter(stat::HITS), 3);
    assert_eq!(h.counter(stat::UNREPORTED), 3);
    // UDP (any packet) and ICMP echo request: reported.
    h.run(&Frame::udp(v4(CLEAN), 5353, v4(TRAIL_V4), 9999, b"x"));
    h.run(&Frame::ping(v4(CLEAN), v4(TRAIL_V4)));
    let hits = h.hits();
    assert_eq!(hits.len(), 2);
    assert_eq!(hits[0].proto, 17);
    assert_eq!(hits[1].proto, 1);
    assert_eq!(hits[1].icmp_type, 8);
}

#[test]
fn vlan_and_qinq_are_followed() {
    privileged!();
    let mut h = Harness::inline();
    h.run(&Frame::syn(v4(CLEAN), 40000, v4(TRAIL_V4), 80).vlan(100));
    // Another destination port: not a repeat of the first hit.
    h.run(&Frame::syn(v4(CLEAN), 40001, v4(TRAIL_V4), 81).qinq(10, 20));
    let hits = h.hits();
    assert_eq!(hits.len(), 2);
    assert_eq!(hits[1].src_port, 40001);
}

#[test]
fn ipv4_options_shift_the_ports_for_ipport_trails() {
    privileged!();
    let mut h = Harness::inline();
    h.run(
        &Frame::syn(v4(CLEAN), 40000, v4("6.6.6.6"), 8443).ipv4_options(&[1, 1, 1, 1, 1, 1, 1, 1]),
    );
    // The same address on another port is not a trail.
    h.run(&Frame::syn(v4(CLEAN), 40000, v4("6.6.6.6"), 8444));
    let hits = h.hits();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].kind, trail_kind::IPPORT);
    assert_eq!(hits[0].trail_id, 3);
    assert_eq!(hits[0].dst_port, 8443);
}

#[test]
fn ipv6_with_extension_headers_and_ipport() {
    privileged!();
    let mut h = Harness::inline();
    h.run(&Frame::syn(v6(CLEAN_V6), 40000, v6(TRAIL_V6), 80).ipv6_ext_headers());
    h.run(&Frame::syn(v6(CLEAN_V6), 40001, v6(TRAIL_V6), 443));
    h.run(&Frame::ping(v6(CLEAN_V6), v6("2001:db8:bbbb::7")));
    let hits = h.hits();
    assert_eq!(hits.len(), 3);
    assert_eq!(
        (hits[0].family, hits[0].kind, hits[0].trail_id),
        (6, trail_kind::IP, 2)
    );
    assert_eq!((hits[1].kind, hits[1].trail_id), (trail_kind::IPPORT, 5));
    assert_eq!(
        (hits[2].kind, hits[2].trail_id, hits[2].proto),
        (trail_kind::CIDR, 6, 58)
    );
}

/// Every kind of IPv6 extension header the program walks (hop-by-hop, routing, AH,
/// destination options, HIP, Shim6; the transport header is then read at an offset the
/// verifier knows nothing of), and a fragment header of a later fragment.
#[test]
fn ipv6_extension_header_chains_and_fragments() {
    privileged!();
    let mut h = Harness::inline();
    let mut udp = Frame::udp(v6(CLEAN_V6), 40002, v6(TRAIL_V6), 443, b"abc");
    udp.ipv6_ext = vec![0, 43, 51, 60];
    h.run(&udp);
    let hits = h.hits();
    assert_eq!(hits.len(), 1);
    assert_eq!(
        (
            hits[0].kind,
            hits[0].trail_id,
            hits[0].dst_port,
            hits[0].src_port
        ),
        (trail_kind::IPPORT, 5, 443, 40002)
    );
    // HIP and Shim6 (on a program of its own: the same trail hit again would be suppressed).
    let mut hip = Harness::inline();
    let mut udp = Frame::udp(v6(CLEAN_V6), 40004, v6(TRAIL_V6), 443, b"abc");
    udp.ipv6_ext = vec![139, 140];
    hip.run(&udp);
    let hits = hip.hits();
    assert_eq!(hits.len(), 1);
    assert_eq!(
        (hits[0].kind, hits[0].dst_port, hits[0].src_port),
        (trail_kind::IPPORT, 443, 40004)
    );
    // A fragment header with a non-zero offset: counted, hit, not reported.
    let mut later = Frame::udp(v6(CLEAN_V6), 40003, v6(TRAIL_V6), 53, b"abc");
    later.ipv6_ext = vec![60, 44];
    h.run(&later);
    assert!(h.hits().is_empty());
    assert_eq!(h.counter(stat::FRAGMENTS), 1);
    assert_eq!(h.counter(stat::HITS), 2);
    assert_eq!(h.counter(stat::PARSE_ERRORS), 0);
}

/// A packet of another IP protocol to an IP trail (GRE here) is reported live as replay's
/// pipeline reports it; protocol 0 (IPv6 hop-by-hop options in an IPv4 header) by neither.
#[test]
fn other_protocols_are_reported_as_replay_reports_them() {
    privileged!();
    let raw = |proto: u8| Frame {
        l4: L4::Raw {
            proto,
            payload: vec![0, 0, 0x08, 0x00],
        },
        ..Frame::udp(v4(CLEAN), 1, v4(TRAIL_V4), 2, b"")
    };
    let mut h = Harness::inline();
    h.run(&raw(47));
    h.run(&raw(0));
    let hits = h.hits();
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(
        (hits[0].kind, hits[0].proto, hits[0].dst_port),
        (trail_kind::IP, 47, 0)
    );
    assert_eq!(h.counter(stat::HITS), 2);
    assert_eq!(h.counter(stat::UNREPORTED), 1);
    let ev = events(&mut processor(), &[raw(47).build(), raw(0).build()]);
    let got: Vec<(&str, &str)> = ev
        .iter()
        .map(|e| (e.proto.as_str(), e.trail.as_str()))
        .collect();
    assert_eq!(got, vec![("GRE", "66.66.66.66")], "{ev:#?}");
}

/// The program and userspace's parser walk as many IPv6 extension headers: with as many as
/// the limit, both read the transport header (the IP:port trail); with one more, both check
/// the addresses alone (the address trail), and neither drops the packet.
#[test]
fn ipv6_extension_header_limit_is_the_parser_s() {
    privileged!();
    let limit = xtrail_detect::packet::MAX_IPV6_EXTENSION_HEADERS;
    for (count, kind, port) in [
        (limit, trail_kind::IPPORT, 443),
        (limit + 1, trail_kind::IP, 0),
    ] {
        // A program each: the same trail hit again would be suppressed.
        let mut h = Harness::inline();
        let mut udp = Frame::udp(v6(CLEAN_V6), 40005, v6(TRAIL_V6), 443, b"abc");
        udp.ipv6_ext = vec![60; count];
        h.run(&udp);
        let hits = h.hits();
        assert_eq!(hits.len(), 1, "{count} headers: {hits:?}");
        assert_eq!((hits[0].kind, hits[0].dst_port), (kind, port), "{count}");
        assert_eq!(h.counter(stat::PARSE_ERRORS), 0);
        let frame = udp.build();
        let pkt =
            xtrail_detect::packet::parse(LINKTYPE_ETHERNET, &frame).expect("userspace parses it");
        assert_eq!(pkt.ports().1, port, "{count} headers: {pkt:?}");
    }
    // A chain cut short inside its last walked header: malformed for both, no hit.
    let mut h = Harness::inline();
    let mut udp = Frame::udp(v6(CLEAN_V6), 40006, v6(TRAIL_V6), 443, b"abc");
    udp.ipv6_ext = vec![60; limit + 1];
    let mut frame = udp.build();
    // Ethernet, IPv6, then the walked headers (8 bytes each) less 4 bytes.
    frame.truncate(14 + 40 + 8 * limit - 4);
    h.sensor.test_run(&frame).expect("test run");
    assert!(h.hits().is_empty());
    assert_eq!(h.counter(stat::PARSE_ERRORS), 1);
    assert!(xtrail_detect::packet::parse(LINKTYPE_ETHERNET, &frame).is_err());
}

/// An IPv4 total length shorter than the header is malformed for the program and for
/// userspace's parser alike (no hit); a total length of 0 (a capture of a segmentation-offloaded
/// packet) is read by both.
#[test]
fn ipv4_total_length_below_the_header_is_malformed_for_both() {
    privileged!();
    for (total, malformed) in [(19u16, true), (0, false)] {
        let mut h = Harness::inline();
        let mut frame = Frame::udp(v4(CLEAN), 40007, v4(TRAIL_V4), 443, b"abc").build();
        // Ethernet (14 bytes), then the IPv4 header's total length at offset 2.
        frame[16..18].copy_from_slice(&total.to_be_bytes());
        h.sensor.test_run(&frame).expect("test run");
        let parsed = xtrail_detect::packet::parse(LINKTYPE_ETHERNET, &frame);
        assert_eq!(parsed.is_err(), malformed, "total {total}: {parsed:?}");
        assert_eq!(
            h.counter(stat::PARSE_ERRORS),
            u64::from(malformed),
            "{total}"
        );
        assert_eq!(h.hits().len(), usize::from(!malformed), "total {total}");
    }
}

#[test]
fn cidr_trails_hit_and_prefilter_skips_clean_traffic() {
    privileged!();
    let mut h = Harness::inline();
    h.run(&Frame::syn(v4(CLEAN), 40000, v4("203.0.113.77"), 80));
    let hits = h.hits();
    assert_eq!(hits.len(), 1);
    assert_eq!((hits[0].kind, hits[0].trail_id), (trail_kind::CIDR, 4));
    let skips = h.counter(stat::PREFILTER_SKIPS);
    h.run(&Frame::syn(v4(CLEAN), 40000, v4("198.18.1.1"), 80));
    assert!(h.hits().is_empty());
    assert_eq!(h.counter(stat::PREFILTER_SKIPS), skips + 2);
}

#[test]
fn later_fragments_are_counted_not_reported() {
    privileged!();
    let mut h = Harness::inline();
    h.run(&Frame::udp(v4(CLEAN), 1, v4(TRAIL_V4), 2, b"abc").fragment(100));
    assert!(h.hits().is_empty());
    assert_eq!(h.counter(stat::FRAGMENTS), 1);
    assert_eq!(h.counter(stat::HITS), 1);
}

#[test]
fn repeats_are_suppressed_within_the_window() {
    privileged!();
    let mut h = Harness::new(SensorOptions {
        suppress: Duration::from_secs(30),
        ..SensorOptions::default()
    });
    let f = Frame::syn(v4(CLEAN), 40000, v4(TRAIL_V4), 80);
    for _ in 0..5 {
        h.run(&f);
    }
    assert_eq!(h.hits().len(), 1);
    assert_eq!(h.counter(stat::SUPPRESSED), 4);
    // Another destination port is another hit.
    h.run(&Frame::syn(v4(CLEAN), 40000, v4(TRAIL_V4), 81));
    assert_eq!(h.hits().len(), 1);
}

/// A repeat is suppressed from the running CPU's cache of its recent hits (`hits_seen`)
/// while the report is well inside the window, even when `SUPPRESS` no longer holds it
/// (another hit took its slot), and reported again once the window has passed; another hit in the same
/// slot (another port, another source) is not taken for it. (A 2 s window: the cache
/// answers up to ~67 ms short of it, so a loaded machine has ample time between the first
/// runs.)
#[test]
fn a_repeat_is_suppressed_from_the_cpus_cache_and_reported_after_the_window() {
    privileged!();
    let mut h = Harness::new(SensorOptions {
        suppress: Duration::from_secs(2),
        ..SensorOptions::default()
    });
    let f = Frame::syn(v4(CLEAN), 40000, v4(TRAIL_V4), 80);
    h.run(&f);
    assert_eq!(h.hits().len(), 1);
    let emptied = clear_suppress(&mut h);
    assert_eq!(emptied, 1, "the report's SUPPRESS entry");
    h.run(&f);
    assert!(h.hits().is_empty(), "suppressed by this CPU's cache");
    assert_eq!(h.counter(stat::SUPPRESSED), 1);
    // From another source port: the same key, a repeat.
    h.run(&Frame::syn(v4(CLEAN), 40001, v4(TRAIL_V4), 80));
    assert!(h.hits().is_empty());
    assert_eq!(h.counter(stat::SUPPRESSED), 2);
    // The slot expires with the window (`SUPPRESS` holds nothing for it either).
    std::thread::sleep(Duration::from_millis(2300));
    h.run(&f);
    assert_eq!(h.hits().len(), 1, "reported again after the window");
    h.run(&f);
    assert!(h.hits().is_empty());
    assert_eq!(h.counter(stat::SUPPRESSED), 3);
    // More destination ports, and more sources, than slots, so some keys share a slot: each
    // a hit of its own, then each repeat suppressed.
    let keys: Vec<(IpAddr, u16)> = (0..129u16)
        .map(|k| (v4(CLEAN), 1000 + k))
        .chain((0..129u16).map(|k| (v4(&format!("198.18.1.{k}")), 80)))
        .collect();
    for &(src, port) in &keys {
        h.run(&Frame::syn(src, 40000, v4(TRAIL_V4), port));
    }
    assert_eq!(h.hits().len(), keys.len(), "one report a key");
    for &(src, port) in &keys {
        h.run(&Frame::syn(src, 40000, v4(TRAIL_V4), port));
    }
    assert!(h.hits().is_empty());
    assert_eq!(h.counter(stat::SUPPRESSED), 3 + keys.len() as u64);
}

/// With a window shorter than `hits_seen`'s margin, `SUPPRESS` alone decides: a repeat is
/// suppressed from its slot and reported again after the window; a new hit whose bucket is
/// full takes the oldest slot, the others untouched.
#[test]
fn suppress_buckets_hold_each_hit_and_give_up_the_oldest() {
    privileged!();
    // The margin itself (2^26 ns): `hits_seen` never answers.
    let mut h = Harness::new(SensorOptions {
        suppress: Duration::from_nanos(1 << 26),
        ..SensorOptions::default()
    });
    let f = Frame::syn(v4(CLEAN), 40000, v4(TRAIL_V4), 80);
    let started = std::time::Instant::now();
    h.run(&f);
    h.run(&f);
    // Two runs a few microseconds apart, unless the machine stalled this thread.
    if started.elapsed() < Duration::from_millis(50) {
        assert_eq!(h.hits().len(), 1);
        assert_eq!(h.counter(stat::SUPPRESSED), 1);
    } else {
        let _ = h.hits();
    }
    std::thread::sleep(Duration::from_millis(150));
    h.run(&f);
    assert_eq!(h.hits().len(), 1, "reported again after the window");
    // Its slot: an odd tag and the report's time.
    let taken = suppress_slots(&mut h);
    assert_eq!(
        taken.len(),
        1,
        "one hit, one slot, reported twice: {taken:?}"
    );
    let (_, _, tag, now) = taken[0];
    assert_eq!(tag & 1, 1, "{tag:x}");
    // Every slot of every bucket taken by another (even tags: no real hit's) recent hit,
    // slot 2 of each the oldest: a new hit takes slot 2 of its bucket.
    {
        let mut map = suppress_map(&mut h);
        for i in 0..map.len() {
            let mut b = [0u64; 8];
            for w in 0..4 {
                b[w] = (u64::from(i) << 3 | (w as u64) << 1) + 2;
                b[4 + w] = if w == 2 { now - 1_000_000_000 } else { now };
            }
            map.set(i, b, 0).expect("update");
        }
    }
    h.run(&Frame::syn(v4(CLEAN), 40000, v4(TRAIL_V4), 81));
    assert_eq!(h.hits().len(), 1);
    let all = suppress_slots(&mut h);
    let ours: Vec<_> = all.iter().filter(|s| s.2 & 1 == 1).collect();
    assert_eq!(ours.len(), 1, "{ours:?}");
    assert_eq!(ours[0].1, 2, "the oldest slot: {ours:?}");
    assert_eq!(all.len(), 16_384 * 4, "no other slot freed");
}

/// `SUPPRESS`: buckets of four slots, their tags (0 when free) then their report times.
fn suppress_map(h: &mut Harness) -> aya::maps::Array<&mut aya::maps::MapData, [u64; 8]> {
    aya::maps::Array::try_from(h.sensor.ebpf_mut().map_mut("SUPPRESS").expect("map"))
        .expect("SUPPRESS as an array")
}

/// The taken slots of `SUPPRESS`: (bucket, slot, tag, time).
fn suppress_slots(h: &mut Harness) -> Vec<(u32, usize, u64, u64)> {
    let map = suppress_map(h);
    let mut out = Vec::new();
    for i in 0..map.len() {
        let b = map.get(&i, 0).expect("read");
        out.extend(
            (0..4)
                .filter(|&w| b[w] != 0)
                .map(|w| (i, w, b[w], b[4 + w])),
        );
    }
    out
}

/// Frees every slot of `SUPPRESS`; returns how many were taken.
fn clear_suppress(h: &mut Harness) -> usize {
    let taken = suppress_slots(h);
    let mut map = suppress_map(h);
    for &(i, _, _, _) in &taken {
        map.set(i, [0u64; 8], 0).expect("update");
    }
    taken.len()
}

#[test]
fn truncated_and_odd_frames_pass_and_are_counted() {
    privileged!();
    let mut h = Harness::inline();
    let frames = [
        Frame::syn(v4(CLEAN), 40000, v4(TRAIL_V4), 80)
            .ipv4_options(&[1; 8])
            .build(),
        Frame::syn(v6(CLEAN_V6), 40000, v6(TRAIL_V6), 80)
            .ipv6_ext_headers()
            .build(),
        Frame::udp(v4(CLEAN), 1, v4(TRAIL_V4), 2, b"x")
            .qinq(1, 2)
            .build(),
    ];
    let mut runs = 0;
    for full in &frames {
        // Strip the Ethernet padding so every cut really truncates a header.
        for len in 14..full.len().min(90) {
            let verdict = h.sensor.test_run(&full[..len]).expect("test run");
            assert_eq!(verdict, XDP_PASS, "len {len}");
            runs += 1;
        }
    }
    assert!(h.counter(stat::PARSE_ERRORS) > 0);
    assert_eq!(h.counter(stat::PACKETS), runs);
    // Garbage: a bad IP version, an IHL below 5.
    let mut bad = Frame::syn(v4(CLEAN), 1, v4(TRAIL_V4), 2).build();
    bad[14] = 0x35;
    assert_eq!(h.sensor.test_run(&bad).expect("run"), XDP_PASS);
    bad[14] = 0x43;
    assert_eq!(h.sensor.test_run(&bad).expect("run"), XDP_PASS);
    // Not IP at all (ARP).
    let mut arp = bad.clone();
    arp[12] = 0x08;
    arp[13] = 0x06;
    assert_eq!(h.sensor.test_run(&arp).expect("run"), XDP_PASS);
    assert_eq!(h.counter(stat::NON_IP), 1);
}

#[test]
fn mirror_mode_drops_everything_early() {
    privileged!();
    let mut h = Harness::mirror();
    assert_eq!(
        h.run(&Frame::syn(v4(CLEAN), 1, v4("198.18.1.1"), 80)),
        XDP_DROP
    );
    assert_eq!(h.run(&Frame::syn(v4(CLEAN), 1, v4(TRAIL_V4), 80)), XDP_DROP);
    assert_eq!(h.hits().len(), 1, "hits are still reported in mirror mode");
}

/// With AF_XDP on but the packet's interface without sockets (none in `IFSLOTS`: mirror
/// mode's interfaces without zero-copy AF_XDP), a hand-off is copied to the ring, not
/// redirected, and dropped.
#[test]
fn mirror_hand_offs_from_an_interface_without_sockets_are_copied() {
    privileged!();
    let mut h = Harness::mirror();
    let mut config = h.sensor.config;
    config.flags |= xtrail_common::config_flags::XSK;
    h.sensor.write_config(config).expect("config");
    let mut ring = h.sensor.take_payloads().expect("payload ring");
    let query = dns_query(12, "www.clean-name.net", 1);
    let frame = Frame::udp(v4(CLEAN), 40500, v4("198.18.1.1"), 53, &query);
    assert_eq!(h.run(&frame), XDP_DROP);
    assert_eq!(copied(&mut ring), vec![(handoff::DNS, frame.build())]);
    assert_eq!(h.counter(stat::COPIED), 1);
    assert_eq!(h.counter(stat::REDIRECTED), 0);
    assert_eq!(h.counter(stat::HANDOFF_FAILED), 0);
}

#[test]
fn enforce_drops_trail_packets_and_passes_the_rest() {
    privileged!();
    let mut h = Harness::new(SensorOptions {
        enforce: true,
        ..SensorOptions::default()
    });
    assert_eq!(
        h.run(&Frame::syn(v4(CLEAN), 1, v4("198.18.1.1"), 80)),
        XDP_PASS
    );
    assert_eq!(h.run(&Frame::syn(v4(CLEAN), 1, v4(TRAIL_V4), 80)), XDP_DROP);
    // Non-reportable packets to a trail are dropped too.
    assert_eq!(
        h.run(&Frame::tcp(v4(CLEAN), 1, v4(TRAIL_V4), 80, tcp_flags::ACK)),
        XDP_DROP
    );
    let hits = h.hits();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].action, xtrail_common::action::DROP);
    assert_eq!(h.counter(stat::ENFORCED), 2);
}

#[test]
fn enforce_is_refused_in_mirror_mode() {
    let err = Sensor::load(
        &trails(),
        &SensorOptions {
            mode: Mode::Mirror,
            enforce: true,
            ..SensorOptions::default()
        },
    );
    assert!(err.is_err());
}

#[test]
fn flow_starts_are_sent_once_per_window_and_ack_sweeps_are_not() {
    privileged!();
    let mut h = Harness::inline();
    let me = v4(CLEAN);
    let there = v4("198.18.1.1");
    h.run(&Frame::syn(me, 1000, there, 22));
    // Same (src, dst, dport): a repeat.
    h.run(&Frame::syn(me, 1001, there, 22));
    // NULL, FIN and XMAS scans.
    h.run(&Frame::tcp(me, 1002, there, 23, 0));
    h.run(&Frame::tcp(me, 1003, there, 24, tcp_flags::FIN));
    let xmas = tcp_flags::FIN | tcp_flags::PSH | 0x20;
    h.run(&Frame::tcp(me, 1004, there, 25, xmas));
    // From ephemeral ports to a service port: one flow.
    h.run(&Frame::udp(me, 41005, there, 161, b"x"));
    // ... and a repeat.
    h.run(&Frame::udp(me, 41006, there, 161, b"y"));
    // Between ephemeral ports, or from a service port to one, each source port is a flow of
    // its own (the scan heuristics take a datagram for a reply when they saw its reverse).
    h.run(&Frame::udp(me, 40000, there, 3478, b"s"));
    h.run(&Frame::udp(me, 40001, there, 3478, b"s"));
    h.run(&Frame::udp(me, 40001, there, 3478, b"t")); // a repeat
    h.run(&Frame::udp(me, 500, there, 500, b"i"));
    h.run(&Frame::udp(me, 501, there, 500, b"i"));
    // From a service port to an ephemeral one: a reply by its ports, no flow start.
    h.run(&Frame::udp(me, 53, there, 40002, b"r"));
    // SYN with RST: not counted by the scan heuristics, so no flow start, and the SYN after
    // it is one.
    let syn_rst = tcp_flags::SYN | tcp_flags::RST;
    h.run(&Frame::tcp(me, 1009, there, 26, syn_rst));
    h.run(&Frame::syn(me, 1010, there, 26));
    for port in 30..40 {
        h.run(&Frame::tcp(me, 1007, there, port, tcp_flags::ACK)); // ACK sweep: not flow starts
    }
    let syn_ack = tcp_flags::SYN | tcp_flags::ACK;
    h.run(&Frame::tcp(me, 1008, there, 41, syn_ack));
    let flows = h.flow_starts();
    let ports: Vec<u16> = flows.iter().map(|f| f.dst_port).collect();
    let want = vec![22, 23, 24, 25, 161, 3478, 3478, 500, 500, 26];
    assert_eq!(ports, want, "{flows:?}");
    assert_eq!(flows[0].proto, 6);
    assert_eq!(flows[0].src_port, 1000);
    assert_eq!(flows[4].proto, 17);
    assert_eq!((flows[5].src_port, flows[6].src_port), (40000, 40001));
    assert_eq!((flows[7].src_port, flows[8].src_port), (500, 501));
    assert_eq!(
        (flows[9].src_port, flows[9].tcp_flags),
        (1010, tcp_flags::SYN)
    );
    assert_eq!(h.counter(stat::FLOW_STARTS), 10);
    assert_eq!(h.counter(stat::FLOW_REPEATS), 3);
}

/// Pins the calling thread to the CPU it runs on now (`sched_getcpu`, so a cpuset without
/// CPU 0 works): the program batches flow starts per CPU.
fn pin_to_current_cpu() {
    // SAFETY: sched_getcpu takes no arguments; a zeroed cpu_set_t is a valid empty set,
    // CPU_SET writes one bit of it (the index is checked non-negative and below
    // CPU_SETSIZE), and sched_setaffinity only reads it.
    unsafe {
        let cpu = libc::sched_getcpu();
        assert!((0..libc::CPU_SETSIZE).contains(&cpu), "sched_getcpu: {cpu}");
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "pinning the test thread to CPU {cpu}"
        );
    }
}

/// The destination ports of the ring's flow-start records, batch by batch.
fn ring_ports(h: &mut Harness) -> Vec<Vec<u16>> {
    let mut out = Vec::new();
    while let Some(item) = h.flows.next() {
        out.push(
            xtrail_sensor::hits::parse_flows(&item)
                .expect("batch")
                .map(|r| r.dst_port)
                .collect(),
        );
    }
    out
}

/// Flow starts travel in per-CPU batches of `FLOW_BATCH`: a full batch is one ring record,
/// a partial one is sent at the CPU's next packet once the kernel tick moved on, and what a
/// batch holds is taken from the map after the runs. Every flow start arrives once, in
/// order; a batch a full ring refuses moves its records from `flow_starts` to `flows_full`.
/// A tick may land anywhere during the runs (sending a partial batch early), so nothing
/// here depends on where the batches split.
#[test]
fn flow_starts_are_batched_per_cpu_and_each_arrives_once() {
    privileged!();
    let batch = xtrail_common::FLOW_BATCH;
    let me = v4(CLEAN);
    let there = v4("198.18.1.2");
    let mut h = Harness::inline();
    let n = batch + 3;
    for port in 0..n as u16 {
        h.run(&Frame::syn(me, 1000, there, 2000 + port));
    }
    let records = ring_ports(&mut h);
    assert!(
        records.iter().all(|b| (1..=batch).contains(&b.len())),
        "{records:?}"
    );
    let pending = h.sensor.take_pending_flows().expect("pending");
    let mut got: Vec<u16> = records.concat();
    got.extend(pending.iter().map(|r| r.dst_port));
    got.sort_unstable();
    let expected: Vec<u16> = (0..n as u16).map(|p| 2000 + p).collect();
    assert_eq!(got, expected, "ring {records:?}, pending {pending:?}");
    assert_eq!(h.counter(stat::FLOW_STARTS), n as u64);
    assert!(h.sensor.take_pending_flows().expect("pending").is_empty());

    // A lone flow start is sent by a later packet that starts no flow once the coarse
    // clock (ticks of 1-10 ms) has moved on.
    h.run(&Frame::syn(me, 1001, there, 3000));
    std::thread::sleep(Duration::from_millis(30));
    h.run(&Frame::tcp(me, 1001, there, 3000, tcp_flags::ACK));
    assert_eq!(ring_ports(&mut h).concat(), [3000]);
    assert!(h.sensor.take_pending_flows().expect("pending").is_empty());

    // A one-page ring takes a few batches, and the reader is away: what it took arrives in
    // order, the rest is counted lost, none arrives twice.
    let total = 8 * batch;
    let mut h = Harness::new(SensorOptions {
        flow_ring_bytes: 4096,
        ..SensorOptions::default()
    });
    for port in 0..total as u16 {
        h.run(&Frame::syn(me, 1002, there, 4000 + port));
    }
    let ring: Vec<u16> = ring_ports(&mut h).concat();
    let pending: Vec<u16> = h
        .sensor
        .take_pending_flows()
        .expect("pending")
        .iter()
        .map(|r| r.dst_port)
        .collect();
    let range = 4000..4000 + total as u16;
    assert!(!ring.is_empty(), "the ring took no batch");
    assert!(
        ring.windows(2).all(|w| w[0] < w[1]),
        "ring out of order: {ring:?}"
    );
    assert!(
        ring.iter().chain(&pending).all(|p| range.contains(p)),
        "ring {ring:?}, pending {pending:?}"
    );
    // The first batch always fits the empty ring. (Not a prefix beyond it: after a full
    // batch was refused, a partial one sent early by a tick may still fit.)
    assert_eq!(ring[0], 4000, "{ring:?}");
    // What the map still holds is the last flow starts, after everything the ring took.
    assert!(
        pending.windows(2).all(|w| w[1] == w[0] + 1),
        "pending {pending:?}"
    );
    if let (Some(&last), Some(&first)) = (ring.last(), pending.first()) {
        assert!(last < first, "ring {ring:?}, pending {pending:?}");
    }
    assert!(pending.len() <= batch);
    let delivered = ring.len() + pending.len();
    assert_eq!(h.counter(stat::FLOW_STARTS), delivered as u64);
    assert_eq!(h.counter(stat::FLOWS_FULL), (total - delivered) as u64);
}

/// A lone flow start on a CPU that sees no further packet is sent by the flush run
/// (`Sensor::flush_flows`, as the live loop does every 250 ms), not only taken at detach;
/// so is one at the CPU's next frame, IP or not, once the tick moved on.
#[test]
fn a_lone_flow_start_is_sent_by_the_flush_run() {
    privileged!();
    let mut h = Harness::inline();
    assert_eq!(h.sensor.flush_flows().expect("flush"), 0);
    h.run(&Frame::syn(v4(CLEAN), 1003, v4("198.18.1.3"), 5000));
    assert!(ring_ports(&mut h).is_empty());
    assert_eq!(h.sensor.flush_flows().expect("flush"), 1);
    assert_eq!(ring_ports(&mut h), [vec![5000]]);
    assert!(h.sensor.take_pending_flows().expect("pending").is_empty());
    assert_eq!(h.sensor.flush_flows().expect("flush"), 0);
    assert_eq!(h.counter(stat::FLOW_STARTS), 1);
    // The live loop's wait after detach (an RCU grace period) works here.
    xtrail_sensor::maps::wait_for_running_programs().expect("synchronize_rcu");
    // A frame that is not IP sends a stale batch too (once the tick moved on).
    h.run(&Frame::syn(v4(CLEAN), 1003, v4("198.18.1.3"), 5001));
    std::thread::sleep(Duration::from_millis(30));
    let mut arp = [0u8; 60];
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    h.sensor.test_run(&arp).expect("test run");
    assert_eq!(h.counter(stat::NON_IP), 1);
    assert_eq!(ring_ports(&mut h), [vec![5001]]);
    // The flush run restored the thread's affinity (the harness pinned it to one CPU).
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity fills it in.
    let count = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set),
            0
        );
        libc::CPU_COUNT(&set)
    };
    assert_eq!(count, 1);
}

/// A repeat of a flow (no new flow start) sends the CPU's batch once the tick moved on
/// since its first record, and that batch is then gone: neither the next frame nor the
/// flush run sends it again.
#[test]
fn a_repeat_sends_a_stale_batch_once() {
    privileged!();
    let mut h = Harness::inline();
    let syn = Frame::syn(v4(CLEAN), 1003, v4("198.18.1.4"), 5002);
    h.run(&syn);
    assert!(ring_ports(&mut h).is_empty());
    std::thread::sleep(Duration::from_millis(30));
    h.run(&syn);
    assert_eq!(h.counter(stat::FLOW_REPEATS), 1);
    assert_eq!(ring_ports(&mut h), [vec![5002]]);
    std::thread::sleep(Duration::from_millis(30));
    h.run(&Frame::tcp(
        v4(CLEAN),
        1004,
        v4("198.18.1.4"),
        80,
        tcp_flags::ACK,
    ));
    assert!(ring_ports(&mut h).is_empty());
    assert_eq!(h.sensor.flush_flows().expect("flush"), 0);
    assert!(h.sensor.take_pending_flows().expect("pending").is_empty());
    assert_eq!(h.counter(stat::FLOW_STARTS), 1);
}

/// Issue 10 item 6: an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) hits the IPv4 trails
/// (address, CIDR, IP:port) as replay's `IpTrails::lookup` does; the hit keeps family 6,
/// so live and replay print the same `::ffff:a.b.c.d` trail.
#[test]
fn v4_mapped_ipv6_addresses_are_looked_up_as_ipv4() {
    privileged!();
    // Outside every IPv6 trail of `trails()` (2001:db8::/32 is a CIDR trail).
    const ULA: &str = "fd00::2";
    let mut h = Harness::inline();
    h.run(&Frame::syn(v6(ULA), 40000, v6("::ffff:66.66.66.66"), 80));
    h.run(&Frame::syn(v6("::ffff:66.66.66.66"), 40001, v6(ULA), 22));
    h.run(&Frame::udp(
        v6(ULA),
        40002,
        v6("::ffff:203.0.113.9"),
        9999,
        b"x",
    ));
    h.run(&Frame::syn(v6(ULA), 40003, v6("::ffff:6.6.6.6"), 8443));
    // Not mapped: the IPv4-compatible form and an address merely ending in the trail.
    h.run(&Frame::syn(v6(ULA), 40004, v6("::66.66.66.66"), 80));
    h.run(&Frame::syn(v6(ULA), 40005, v6("fd00::ffff:4242:4242"), 80));
    let hits = h.hits();
    let got: Vec<(u8, u8, u32, u8)> = hits
        .iter()
        .map(|r| (r.family, r.kind, r.trail_id, r.side))
        .collect();
    assert_eq!(
        got,
        vec![
            (6, trail_kind::IP, 1, side::DST),
            (6, trail_kind::IP, 1, side::SRC),
            (6, trail_kind::CIDR, 4, side::DST),
            (6, trail_kind::IPPORT, 3, side::DST),
        ],
        "{hits:?}"
    );
    assert_eq!(hits[0].dst, octets(v6("::ffff:66.66.66.66")));
    // Replay's table agrees on every address above.
    let t = trails();
    for (addr, port, hit) in [
        ("::ffff:66.66.66.66", 80, true),
        ("::ffff:203.0.113.9", 9999, true),
        ("::ffff:6.6.6.6", 8443, true),
        ("::66.66.66.66", 80, false),
        ("fd00::ffff:4242:4242", 80, false),
    ] {
        assert_eq!(t.lookup(v6(addr), Some(port)).is_some(), hit, "{addr}");
    }
}

/// Issue 10 item 8: a hit lost to a full `HITS` ring is not recorded in `SUPPRESS`, so the
/// next identical packet after the reader drained the ring is reported.
#[test]
fn a_hit_lost_to_a_full_ring_does_not_suppress_its_repeat() {
    privileged!();
    let mut h = Harness::new(SensorOptions {
        suppress: Duration::from_secs(60),
        hit_ring_bytes: 4096,
        ..SensorOptions::default()
    });
    // Fill the one-page ring with distinct hits (one destination port each) without reading.
    let mut sent = 0u16;
    while h.counter(stat::RINGBUF_FULL) == 0 {
        assert!(sent < 1000, "a 4 KiB ring never filled");
        h.run(&Frame::syn(v4(CLEAN), 40000, v4(TRAIL_V4), 1000 + sent));
        sent += 1;
    }
    let lost_port = 1000 + sent - 1;
    let lost = Frame::syn(v4(CLEAN), 40000, v4(TRAIL_V4), lost_port);
    // Still full: the repeat is lost again, not suppressed.
    h.run(&lost);
    assert_eq!(h.counter(stat::RINGBUF_FULL), 2);
    assert_eq!(h.counter(stat::SUPPRESSED), 0);
    let drained = h.hits();
    assert_eq!(drained.len(), usize::from(sent - 1));
    assert!(drained.iter().all(|r| r.dst_port != lost_port));
    // After the drain the same packet is reported once, and then suppressed as usual.
    h.run(&lost);
    h.run(&lost);
    let hits = h.hits();
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0].dst_port, lost_port);
    assert_eq!(h.counter(stat::SUPPRESSED), 1);
    // A hit that was reported before the ring filled stays suppressed.
    h.run(&Frame::syn(v4(CLEAN), 40000, v4(TRAIL_V4), 1000));
    assert!(h.hits().is_empty());
    assert_eq!(h.counter(stat::SUPPRESSED), 2);
}

/// The frames the program copied to the `PAYLOADS` ring: (kind, frame).
fn copied(ring: &mut RingBuf<MapData>) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        let rec = xtrail_sensor::hits::parse_payload(&item).expect("a whole payload record");
        // A record is the header and the smallest size class that holds the frame.
        assert_eq!(
            item.len(),
            PAYLOAD_HEADER_LEN + payload_class(rec.frame.len())
        );
        out.push((rec.kind, rec.frame.to_vec()));
    }
    out
}

/// The set each record of the `PAYLOADS` ring says its addresses are clean in (`None`: not
/// vouched for), in ring order.
fn clean_in(ring: &mut RingBuf<MapData>) -> Vec<Option<u8>> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        let rec = xtrail_sensor::hits::parse_payload(&item).expect("a whole payload record");
        out.push(rec.clean_in);
    }
    out
}

/// A replay-side pipeline over `66.66.66.66` and a TLS domain trail, to run copied frames
/// through exactly as the live payload reader does.
fn processor() -> Processor {
    let path = std::env::temp_dir().join(format!("xtrail-xdp-{}.csv", std::process::id()));
    std::fs::write(
        &path,
        "66.66.66.66,malware (test),(test)\ntls-split-xdp.example,tls (malware),(test)\n",
    )
    .unwrap();
    let trails = TrailSet::load(std::slice::from_ref(&path), &LoadOptions::default()).unwrap();
    let _ = std::fs::remove_file(&path);
    Processor::new(
        Arc::new(trails),
        Arc::new(Whitelist::parse("")),
        ProcessorConfig::with_sensor("t"),
    )
}

fn events(p: &mut Processor, frames: &[Vec<u8>]) -> Vec<Event> {
    let mut out = Vec::new();
    for f in frames {
        p.process(1_700_000_000_000_000, LINKTYPE_ETHERNET, f, &mut |e| {
            out.push(e)
        });
    }
    out
}

/// Issue 10 item 5: port 53 is no free pass. A datagram to or from an IP trail on port 53
/// without a plausible DNS header is reported by the kernel as any datagram; a DNS query is
/// handed over (userspace reports `ip (query)`); a plausible header that does not parse is
/// handed over and userspace reports the IP event, as replay does.
#[test]
fn port_53_without_a_dns_message_is_reported_as_ip() {
    privileged!();
    // No suppression: the datagrams below differ only in their source port.
    let mut h = Harness::new(SensorOptions {
        suppress: Duration::ZERO,
        ..SensorOptions::default()
    });
    let mut ring = h.sensor.take_payloads().expect("payload ring");
    let trail = v4(TRAIL_V4);
    let me = v4(CLEAN);
    // Not DNS: too short, no question, two questions, an unassigned opcode (3).
    let mut two_q = dns_query(7, "a.example", 1);
    two_q[5] = 2;
    let mut opcode3 = dns_query(8, "a.example", 1);
    opcode3[2] = 3 << 3;
    for (i, p) in [
        b"\x00".to_vec(),
        b"\x17\x03\x03\x00\x20tunnelled bytes, not dns".to_vec(),
        two_q,
        opcode3,
    ]
    .iter()
    .enumerate()
    {
        h.run(&Frame::udp(me, 40000 + i as u16, trail, 53, p));
    }
    // From a trail's port 53 (a C2 "answering" from 53).
    h.run(&Frame::udp(trail, 53, me, 40100, b"\xde\xad\xbe\xef"));
    let hits = h.hits();
    assert_eq!(hits.len(), 5, "{hits:?}");
    assert!(hits.iter().all(|r| r.trail_id == 1 && r.proto == 17));
    assert_eq!(hits[4].side, side::SRC);
    assert_eq!(h.counter(stat::PORT53_NOT_DNS), 5);
    assert_eq!(h.counter(stat::HANDOFF_DNS), 0);
    assert!(copied(&mut ring).is_empty());
    // A DNS query to the trail: handed over, not reported by the kernel.
    h.run(&Frame::udp(
        me,
        40200,
        trail,
        53,
        &dns_query(9, "www.clean-name.net", 1),
    ));
    // A plausible header (one question, QUERY) whose question does not parse.
    let mut broken = dns_query(10, "c.example", 1);
    broken.truncate(14);
    h.run(&Frame::udp(me, 40201, trail, 53, &broken));
    assert!(h.hits().is_empty());
    assert_eq!(h.counter(stat::HANDOFF_DNS), 2);
    assert_eq!(h.counter(stat::PORT53_NOT_DNS), 5);
    let frames: Vec<Vec<u8>> = copied(&mut ring).into_iter().map(|(_, f)| f).collect();
    assert_eq!(frames.len(), 2);
    let ev = events(&mut processor(), &frames);
    let got: Vec<(&str, u16)> = ev.iter().map(|e| (e.trail.as_str(), e.src_port)).collect();
    assert_eq!(
        got,
        vec![
            ("66.66.66.66 (www.clean-name.net)", 40200),
            ("66.66.66.66", 40201)
        ],
        "{ev:#?}"
    );
    // Replay reports the kernel-reported datagrams the same way.
    let f = Frame::udp(me, 40000, trail, 53, b"\x00").build();
    let ev = events(&mut processor(), &[f]);
    assert_eq!(ev.len(), 1);
    assert_eq!((ev[0].trail.as_str(), ev[0].dst_port), ("66.66.66.66", 53));
}

/// A hand-off record says whether both its addresses were looked up clean, and in which
/// set (userspace then does not look them up again); a hand-off with a trail on either side,
/// by address, CIDR or IP:port, says nothing.
#[test]
fn hand_offs_say_whether_their_addresses_are_clean() {
    privileged!();
    let mut h = Harness::inline();
    let mut ring = h.sensor.take_payloads().expect("payload ring");
    let me = v4(CLEAN);
    let query = dns_query(11, "www.clean-name.net", 1);
    let dns = |src: IpAddr, dst: IpAddr| Frame::udp(src, 40300, dst, 53, &query);
    let hello = chrome_client_hello("www.clean-name.net");
    let tls = |src: IpAddr, dst: IpAddr, port: u16| {
        Frame::tcp(src, 40400, dst, port, tcp_flags::ACK | tcp_flags::PSH).with_payload(&hello)
    };
    // Each frame, and whether it is clean in set 0 (`trails()`) and in set 1 (198.18.9.9
    // its only trail).
    let cases = [
        (dns(me, v4("198.18.9.9")), true, false),
        (dns(me, v4(TRAIL_V4)), false, true),
        (dns(v4("203.0.113.9"), v4("198.18.9.9")), false, false),
        (tls(v6("fd00::1"), v6("fd00::9"), 443), true, true),
        (tls(v6("fd00::1"), v6(TRAIL_V6), 8443), false, true),
        // In the CIDR trail 2001:db8::/32.
        (tls(v6("fd00::1"), v6(CLEAN_V6), 443), false, true),
        (tls(me, v4("6.6.6.6"), 8443), false, true),
        (tls(me, v4("6.6.6.6"), 443), true, true),
        // The source's IP:port trail (its own port), and an IPv4-mapped IPv6 trail address.
        (
            Frame::tcp(
                v4("6.6.6.6"),
                8443,
                me,
                443,
                tcp_flags::ACK | tcp_flags::PSH,
            )
            .with_payload(&hello),
            false,
            true,
        ),
        (
            tls(v6("fd00::1"), v6("::ffff:66.66.66.66"), 443),
            false,
            true,
        ),
        // Behind VLAN tags, as untagged.
        (dns(me, v4("198.18.9.9")).vlan(100), true, false),
        (dns(me, v4(TRAIL_V4)).qinq(100, 200), false, true),
    ];
    let mut verdicts = |h: &mut Harness| {
        for (frame, _, _) in &cases {
            h.run(frame);
        }
        clean_in(&mut ring)
    };
    let want = |set: u8| -> Vec<Option<u8>> {
        let clean = |c: &(Frame, bool, bool)| if set == 0 { c.1 } else { c.2 };
        cases.iter().map(|c| clean(c).then_some(set)).collect()
    };
    assert_eq!(verdicts(&mut h), want(0));
    // Other trails in set 1, switched in: the records name set 1 and follow its trails.
    let mut other = IpTrails::default();
    other.v4.insert([198, 18, 9, 9], 1);
    let mut sets = h.sensor.trail_sets().expect("trail sets");
    let (_, flags) = sets.fill(1, &other).expect("fill set 1");
    sets.select(1, flags).expect("switch to set 1");
    assert_eq!(verdicts(&mut h), want(1));
}

/// A first fragment (offset 0, "more fragments" set) carries its transport header, as the
/// detector parses it: handed over and vouched for as a whole packet is, IP:port trails
/// included. A later fragment has no transport header: counted, never handed over.
#[test]
fn first_fragments_are_vouched_for_as_whole_packets_and_later_ones_not_handed_over() {
    privileged!();
    let mut h = Harness::inline();
    let mut ring = h.sensor.take_payloads().expect("payload ring");
    let me = v4(CLEAN);
    let query = dns_query(12, "www.clean-name.net", 1);
    let hello = chrome_client_hello("www.clean-name.net");
    let tls = |port: u16| {
        Frame::tcp(
            me,
            40400,
            v4("6.6.6.6"),
            port,
            tcp_flags::ACK | tcp_flags::PSH,
        )
        .with_payload(&hello)
        .first_fragment()
    };
    let dns = Frame::udp(me, 40300, v4("198.18.9.9"), 53, &query);
    let cases = [
        (dns.clone().first_fragment(), Some(Some(0))),
        (tls(443), Some(Some(0))),
        // 6.6.6.6:8443 is an IP:port trail.
        (tls(8443), Some(None)),
        (dns.fragment(100), None),
    ];
    for (frame, want) in &cases {
        let before = h.counter(stat::FRAGMENTS);
        h.run(frame);
        let got = clean_in(&mut ring);
        assert_eq!(got, want.iter().copied().collect::<Vec<_>>(), "{frame:?}");
        let later = u64::from(frame.frag_offset != 0);
        assert_eq!(h.counter(stat::FRAGMENTS) - before, later, "{frame:?}");
    }
}

/// A TCP data segment (ACK+PSH) from `me:sport` to `there:443` at sequence number `seq`.
fn tls_segment(me: IpAddr, there: IpAddr, sport: u16, seq: u32, data: &[u8]) -> Vec<u8> {
    Frame::tcp(me, sport, there, 443, tcp_flags::ACK | tcp_flags::PSH)
        .with_seq(seq)
        .with_payload(data)
        .build()
}

/// Issue 10 item 3, kernel side: a ClientHello record longer than its segment makes the
/// program follow the flow and copy its next segments (until the record's end) to
/// userspace, which reassembles the name from the second segment.
#[test]
fn the_segments_of_a_split_client_hello_are_handed_over() {
    privileged!();
    let mut h = Harness::inline();
    let mut ring = h.sensor.take_payloads().expect("payload ring");
    let (me, there) = (v4(CLEAN), v4("198.18.1.1"));
    let sni = "tls-split-xdp.example";
    let hello = chrome_client_hello(sni);
    assert!(chrome_sni_offset(&hello, sni) > 1448);
    let seg = |sport: u16, seq: u32, data: &[u8]| tls_segment(me, there, sport, seq, data);
    let isn = 0xffff_fc00u32; // the record crosses the sequence-number wrap
    let first = seg(50000, isn, &hello[..1448]);
    let second = seg(50000, isn.wrapping_add(1448), &hello[1448..]);
    let after = seg(
        50000,
        isn.wrapping_add(hello.len() as u32),
        b"\x17\x03\x03\x00\x10later",
    );
    let other_flow = seg(50001, isn.wrapping_add(1448), &hello[1448..]);
    for f in [&first, &other_flow, &second, &after] {
        assert_eq!(h.sensor.test_run(f).expect("run"), XDP_PASS);
    }
    let got = copied(&mut ring);
    let kinds: Vec<u8> = got.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        kinds,
        vec![handoff::TLS_CLIENT_HELLO, handoff::TLS_CONTINUATION]
    );
    assert_eq!(h.counter(stat::TLS_FLOWS_TRACKED), 1);
    assert_eq!(h.counter(stat::TLS_CONTINUATIONS), 1);
    // The copies, as the live reader feeds them to the pipeline: the name is found.
    let frames: Vec<Vec<u8>> = got.into_iter().map(|(_, f)| f).collect();
    let mut p = processor();
    let ev = events(&mut p, &frames);
    assert_eq!(ev.len(), 1, "{ev:#?}");
    assert_eq!(ev[0].trail, sni);
    assert_eq!(ev[0].details.tls_sni.as_deref(), Some(sni));
    assert_eq!(p.stats().tls_reassembly.completed, 1);
    // The first segment alone names nothing: without the continuation there is no event.
    assert!(events(&mut processor(), &frames[..1]).is_empty());
    // A ClientHello that fits its segment starts no follow-up.
    let small = seg(50002, 1, &xtrail_bench::frames::tls_client_hello(sni));
    h.sensor.test_run(&small).expect("run");
    assert_eq!(h.counter(stat::TLS_FLOWS_TRACKED), 1);
}

/// `TLS_FLOWS` as the program keeps it: buckets of four slots, as 16 words: the slots' tags
/// (two words each, 0 when free), then their records' ends, then their expiry times (in
/// units of 2^20 ns).
fn tls_flows(h: &mut Harness) -> aya::maps::Array<&mut aya::maps::MapData, [u32; 16]> {
    aya::maps::Array::try_from(h.sensor.ebpf_mut().map_mut("TLS_FLOWS").expect("map"))
        .expect("TLS_FLOWS as an array")
}

/// A slot of a `TLS_FLOWS` bucket: (tag, end of the record, expiry).
fn tls_slot(bucket: &[u32; 16], way: usize) -> (u64, u32, u32) {
    (
        u64::from(bucket[2 * way]) | u64::from(bucket[2 * way + 1]) << 32,
        bucket[8 + way],
        bucket[12 + way],
    )
}

/// The same slot written.
fn set_tls_slot(bucket: &mut [u32; 16], way: usize, (tag, end, expires): (u64, u32, u32)) {
    bucket[2 * way] = tag as u32;
    bucket[2 * way + 1] = (tag >> 32) as u32;
    bucket[8 + way] = end;
    bucket[12 + way] = expires;
}

/// Writes one slot of a `TLS_FLOWS` bucket, the others as they are.
fn put_tls_slot(h: &mut Harness, bucket: u32, way: usize, slot: (u64, u32, u32)) {
    let mut b = tls_flows(h).get(&bucket, 0).expect("read");
    set_tls_slot(&mut b, way, slot);
    tls_flows(h).set(bucket, b, 0).expect("update");
}

/// The taken slots of `TLS_FLOWS`: (bucket, slot, (tag, end, expiry)).
fn taken_tls_slots(h: &mut Harness) -> Vec<(u32, usize, (u64, u32, u32))> {
    let flows = tls_flows(h);
    let mut out = Vec::new();
    for i in 0..flows.len() {
        let b = flows.get(&i, 0).expect("read");
        for way in 0..4 {
            let slot = tls_slot(&b, way);
            if slot.0 != 0 {
                out.push((i, way, slot));
            }
        }
    }
    out
}

/// A followed ClientHello whose window has passed is forgotten and counted at its next
/// segment, which is not handed over; a flow still in its window is followed (the window's
/// end is written by the program, so the test moves it into the past through the map).
#[test]
fn an_expired_client_hello_flow_is_forgotten_and_counted() {
    privileged!();
    let mut h = Harness::inline();
    let mut ring = h.sensor.take_payloads().expect("payload ring");
    let (me, there) = (v4(CLEAN), v4("198.18.1.1"));
    let hello = chrome_client_hello("tls-expired-xdp.example");
    let seg = |sport: u16, seq: u32, data: &[u8]| tls_segment(me, there, sport, seq, data);
    // The first flow tracked, its window moved ~10 s into the past; then the second.
    h.sensor
        .test_run(&seg(50010, 1000, &hello[..1448]))
        .expect("run");
    let taken = taken_tls_slots(&mut h);
    assert_eq!(taken.len(), 1, "{taken:?}");
    let (bucket, way, (tag, end, expires)) = taken[0];
    assert_eq!(end, 1000 + hello.len() as u32);
    let mut b = tls_flows(&mut h).get(&bucket, 0).expect("read");
    // The timeout (10 s) twice, in 2^20 ns units.
    set_tls_slot(&mut b, way, (tag, end, expires.wrapping_sub(2 * 9537)));
    tls_flows(&mut h).set(bucket, b, 0).expect("update");
    h.sensor
        .test_run(&seg(50011, 1000, &hello[..1448]))
        .expect("run");
    assert_eq!(h.counter(stat::TLS_FLOWS_TRACKED), 2);
    for sport in [50010, 50011] {
        assert_eq!(
            h.sensor
                .test_run(&seg(sport, 1000 + 1448, &hello[1448..]))
                .expect("run"),
            XDP_PASS
        );
    }
    let kinds: Vec<u8> = copied(&mut ring).iter().map(|(k, _)| *k).collect();
    assert_eq!(
        kinds,
        vec![
            handoff::TLS_CLIENT_HELLO,
            handoff::TLS_CLIENT_HELLO,
            handoff::TLS_CONTINUATION
        ]
    );
    assert_eq!(h.counter(stat::TLS_FLOWS_EXPIRED), 1);
    assert_eq!(h.counter(stat::TLS_CONTINUATIONS), 1);
    // Both slots are free: one flow expired, one complete.
    assert!(taken_tls_slots(&mut h).is_empty());
    // Forgotten: a later segment of the expired flow is neither followed nor counted again.
    h.sensor
        .test_run(&seg(50010, 1000 + 1448, &hello[1448..]))
        .expect("run");
    assert!(copied(&mut ring).is_empty());
    assert_eq!(h.counter(stat::TLS_FLOWS_EXPIRED), 1);
}

/// A followed flow keeps one slot of its `TLS_FLOWS` bucket (its first segment again keeps
/// the same one) until its record is complete; a data segment of a flow whose slot was
/// cleared is not followed; in a bucket whose slots are all taken, a new flow takes the one
/// that expires first and counts it in `tls_flows_evicted`, the others untouched.
#[test]
fn followed_client_hellos_take_the_slot_that_expires_first() {
    privileged!();
    let mut h = Harness::inline();
    let mut ring = h.sensor.take_payloads().expect("payload ring");
    let (me, there) = (v4(CLEAN), v4("198.18.1.1"));
    let hello = chrome_client_hello("tls-slots-xdp.example");
    let seg = |sport: u16, seq: u32, data: &[u8]| tls_segment(me, there, sport, seq, data);
    let rest = &hello[1448..];
    let first = seg(50020, 1000, &hello[..1448]);
    h.sensor.test_run(&first).expect("run");
    h.sensor.test_run(&first).expect("run");
    assert_eq!(h.counter(stat::TLS_FLOWS_TRACKED), 2);
    let taken = taken_tls_slots(&mut h);
    assert_eq!(taken.len(), 1, "a retransmission keeps the slot: {taken:?}");
    let (bucket, way, (tag, end, expires)) = taken[0];
    assert_eq!(tag & 1, 1, "tags are odd: {tag:x}");
    // Cleared: the continuation goes by unlooked-at.
    put_tls_slot(&mut h, bucket, way, (0, 0, 0));
    h.sensor
        .test_run(&seg(50020, 1000 + 1448, rest))
        .expect("run");
    assert_eq!(copied(&mut ring).len(), 2, "the two first segments alone");
    assert_eq!(h.counter(stat::TLS_CONTINUATIONS), 0);
    // Every slot of every bucket taken by a live flow (even tags: no real flow's), slot 2
    // of each expiring first; the flow tracked again takes slot 2 of its bucket.
    // (Live: at most a timeout ahead of the clock, as the flow's own expiry.)
    let (soon, later) = (expires.wrapping_sub(10), expires);
    {
        let mut flows = tls_flows(&mut h);
        for i in 0..flows.len() {
            let mut b = [0u32; 16];
            for w in 0..4 {
                let at = if w == 2 { soon } else { later };
                set_tls_slot(
                    &mut b,
                    w,
                    (u64::from(i) << 3 | (w as u64) << 1 | 2 << 40, 7, at),
                );
            }
            flows.set(i, b, 0).expect("update");
        }
    }
    h.sensor.test_run(&first).expect("run");
    assert_eq!(h.counter(stat::TLS_FLOWS_EVICTED), 1);
    let b = tls_flows(&mut h).get(&bucket, 0).expect("read");
    assert_eq!(tls_slot(&b, 2).0, tag, "{b:?}");
    assert_eq!(tls_slot(&b, 2).1, end);
    for w in [0, 1, 3] {
        assert_eq!(tls_slot(&b, w).2, later, "slot {w} untouched: {b:?}");
        assert_eq!(tls_slot(&b, w).0 & 1, 0, "slot {w} untouched: {b:?}");
    }
    // Slot 1 left behind ~30 days ago: its expiry, a 32-bit count of ~1 ms units, now reads
    // ~22 days ahead. Slot 2 another live flow, the first to expire; 0 and 3 live. The flow
    // tracked again takes the dead slot 1 and evicts nothing (read as live, slot 1 would
    // have been passed over and slot 2 evicted).
    let mut b = tls_flows(&mut h).get(&bucket, 0).expect("read");
    let ours = tls_slot(&b, 2);
    let (t1, _, _) = tls_slot(&b, 1);
    set_tls_slot(&mut b, 1, (t1, 7, expires.wrapping_add(1_900_000_000)));
    set_tls_slot(&mut b, 2, (t1 + 8, 7, soon));
    tls_flows(&mut h).set(bucket, b, 0).expect("update");
    h.sensor.test_run(&first).expect("run");
    assert_eq!(
        h.counter(stat::TLS_FLOWS_EVICTED),
        1,
        "nothing live evicted"
    );
    let b = tls_flows(&mut h).get(&bucket, 0).expect("read");
    let at = (0..4).find(|&w| tls_slot(&b, w).0 == tag).expect("tracked");
    assert_eq!(at, 1, "the dead slot: {b:?}");
    for w in [0, 2, 3] {
        assert_eq!(tls_slot(&b, w).0 & 1, 0, "slot {w} untouched: {b:?}");
    }
    // Put back in slot 2 for what follows.
    let mut b = b;
    set_tls_slot(&mut b, 1, (t1, 7, later));
    set_tls_slot(&mut b, 2, ours);
    tls_flows(&mut h).set(bucket, b, 0).expect("update");
    assert_eq!(copied(&mut ring).len(), 2, "the first segment, twice");
    // Followed to the record's end, then the slot is free again.
    h.sensor
        .test_run(&seg(50020, 1000 + 1448, rest))
        .expect("run");
    let kinds: Vec<u8> = copied(&mut ring).iter().map(|(k, _)| *k).collect();
    assert_eq!(kinds, vec![handoff::TLS_CONTINUATION]);
    assert_eq!(h.counter(stat::TLS_CONTINUATIONS), 1);
    let b = tls_flows(&mut h).get(&bucket, 0).expect("read");
    assert_eq!(tls_slot(&b, 2).0, 0, "{b:?}");
    // A segment past the record's end (one before it lost): the flow is forgotten, not
    // handed over, not counted as expired.
    h.sensor.test_run(&first).expect("run");
    let past = seg(50020, 1000 + hello.len() as u32 + 10, &[0x5a; 32]);
    h.sensor.test_run(&past).expect("run");
    assert_eq!(copied(&mut ring).len(), 1, "the first segment alone");
    assert!(taken_tls_slots(&mut h)
        .iter()
        .all(|&(_, _, (t, _, _))| t != tag));
    assert_eq!(h.counter(stat::TLS_FLOWS_EXPIRED), 0);
    // A followed flow whose slot's expiry reads far ahead (left behind weeks ago, as above):
    // its next segment finds it expired, is not handed over, and frees the slot.
    h.sensor.test_run(&first).expect("run");
    let (b_at, w_at, (t, e, _)) = taken_tls_slots(&mut h)
        .into_iter()
        .find(|&(_, _, (t, _, _))| t == tag)
        .expect("tracked");
    put_tls_slot(
        &mut h,
        b_at,
        w_at,
        (t, e, expires.wrapping_add(1_900_000_000)),
    );
    h.sensor
        .test_run(&seg(50020, 1000 + 1448, rest))
        .expect("run");
    assert_eq!(copied(&mut ring).len(), 1, "the first segment alone");
    assert_eq!(h.counter(stat::TLS_FLOWS_EXPIRED), 1);
    assert!(taken_tls_slots(&mut h)
        .iter()
        .all(|&(_, _, (t, _, _))| t != tag));
}

/// Issue 12/13: a payload record takes the smallest size class that holds its frame (not
/// 2 KiB whatever the frame), and a full payload ring loses hand-offs only as counted
/// `handoff_failed`, never silently.
#[test]
fn payload_records_are_frame_sized_and_a_full_ring_counts_every_loss() {
    privileged!();
    let mut h = Harness::new(SensorOptions {
        payload_ring_bytes: 4096,
        ..SensorOptions::default()
    });
    let mut ring = h.sensor.take_payloads().expect("payload ring");
    let query = Frame::udp(
        v4(CLEAN),
        40000,
        v4("198.18.1.1"),
        53,
        &dns_query(7, "www.example.com", 1),
    )
    .build();
    assert!(query.len() < 100, "{}", query.len());
    // Ring header (8) + PayloadHeader (32) + the 128-byte class.
    let record = 8 + PAYLOAD_HEADER_LEN + 128;
    let mut sent = 0u64;
    while h.counter(stat::HANDOFF_FAILED) == 0 {
        assert!(sent < 1000, "a one-page payload ring never filled");
        h.sensor.test_run(&query).expect("test run");
        sent += 1;
    }
    for _ in 0..9 {
        h.sensor.test_run(&query).expect("test run");
    }
    sent += 9;
    let got = copied(&mut ring);
    // A one-page ring holds as many records as fit in it (a 2 KiB record each, before).
    assert_eq!(got.len(), 4096 / record, "record {record} bytes");
    assert!(got.iter().all(|(k, f)| *k == handoff::DNS && *f == query));
    assert_eq!(h.counter(stat::COPIED), got.len() as u64);
    assert_eq!(h.counter(stat::HANDOFF_DNS), sent);
    assert_eq!(
        h.counter(stat::HANDOFF_FAILED) + h.counter(stat::COPIED),
        sent
    );
    // Drained, the ring takes records again, up to the 2 KiB cap for a long frame.
    let mut get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    get.resize(3000, b' ');
    let long_get = Frame::tcp(v4(CLEAN), 40001, v4("198.18.1.1"), 80, tcp_flags::ACK)
        .with_payload(&get)
        .build();
    h.sensor.test_run(&long_get).expect("test run");
    let got = copied(&mut ring);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, handoff::HTTP_REQUEST);
    assert_eq!(got[0].1, long_get[..xtrail_common::PAYLOAD_CAP]);
}
