//! The XDP program's logic over crafted frames, through BPF_PROG_TEST_RUN: no interface.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use xtrail_bench::frames::{tcp_flags, v4, v6, Frame};
use xtrail_common::{side, stat, trail_kind, v4_mapped, HitRecord};
use xtrail_detect::trails::IpTrails;
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
    fn new(opts: SensorOptions) -> Harness {
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
            out.push(xtrail_sensor::hits::parse_flow(&item).expect("flow record"));
        }
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
    let mut h = Harness::new(SensorOptions {
        mode: Mode::Mirror,
        ..SensorOptions::default()
    });
    assert_eq!(
        h.run(&Frame::syn(v4(CLEAN), 1, v4("198.18.1.1"), 80)),
        XDP_DROP
    );
    assert_eq!(h.run(&Frame::syn(v4(CLEAN), 1, v4(TRAIL_V4), 80)), XDP_DROP);
    assert_eq!(h.hits().len(), 1, "hits are still reported in mirror mode");
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
    h.run(&Frame::syn(me, 1001, there, 22)); // same (src, dst, dport): a repeat
    h.run(&Frame::tcp(me, 1002, there, 23, 0)); // NULL scan
    h.run(&Frame::tcp(me, 1003, there, 24, tcp_flags::FIN)); // FIN scan
    h.run(&Frame::tcp(
        me,
        1004,
        there,
        25,
        tcp_flags::FIN | tcp_flags::PSH | 0x20,
    )); // XMAS
    h.run(&Frame::udp(me, 1005, there, 161, b"x"));
    h.run(&Frame::udp(me, 1006, there, 161, b"y")); // a repeat
    for port in 30..40 {
        h.run(&Frame::tcp(me, 1007, there, port, tcp_flags::ACK)); // ACK sweep: not flow starts
    }
    h.run(&Frame::tcp(
        me,
        1008,
        there,
        41,
        tcp_flags::SYN | tcp_flags::ACK,
    ));
    let flows = h.flow_starts();
    let ports: Vec<u16> = flows.iter().map(|f| f.dst_port).collect();
    assert_eq!(ports, vec![22, 23, 24, 25, 161], "{flows:?}");
    assert_eq!(flows[0].proto, 6);
    assert_eq!(flows[0].src_port, 1000);
    assert_eq!(flows[4].proto, 17);
    assert_eq!(h.counter(stat::FLOW_STARTS), 5);
    assert_eq!(h.counter(stat::FLOW_REPEATS), 2);
}
