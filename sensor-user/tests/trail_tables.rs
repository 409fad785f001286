//! IPv4 address and IP:port trails through the kernel's cuckoo tables (BPF_PROG_TEST_RUN,
//! root, no interface): thousands of each (full buckets, moved residents) found with their
//! labels in set 0 filled from a compiled set's mapping, in set 1 built in memory with
//! another table size, across switches both ways; addresses and ports not listed miss.

mod common;

use std::net::Ipv4Addr;

use aya::maps::{MapData, RingBuf};
use xtrail_bench::frames::{v4, Frame};
use xtrail_common::{trail_kind, v4_mapped};
use xtrail_detect::trails::compiled::{self, CompileOptions};
use xtrail_detect::trails::{CompiledSet, IpTrails, TrailSet};
use xtrail_sensor::hits::parse_record;
use xtrail_sensor::loader::{Sensor, SensorOptions};

/// `n` IPv4 trails (10.0.0.0/9 for `base` 0, 10.128.0.0/9 for 1) labelled from `label`, and
/// as many IP:port trails on 172.16.0.0/12 addresses.
fn trails(n: u32, base: u32, label: u32) -> IpTrails {
    let mut t = IpTrails::default();
    for i in 0..n {
        t.v4.insert(v4_addr(i, base), label + i);
        let (a, port) = port_trail(i, base);
        t.ipport.insert((v4_mapped(a), port), label + n + i);
    }
    t
}

fn v4_addr(i: u32, base: u32) -> [u8; 4] {
    (0x0a00_0000 | (base << 23) | (i * 3)).to_be_bytes()
}

fn port_trail(i: u32, base: u32) -> ([u8; 4], u16) {
    (
        (0xac10_0000 | (base << 19) | (i / 7)).to_be_bytes(),
        1000 + (i % 7) as u16 * 11,
    )
}

struct Probe {
    sensor: Sensor,
    ring: RingBuf<MapData>,
}

impl Probe {
    /// (label, kind, set) of the hit a SYN to `dst:port` raises.
    fn hit(&mut self, dst: [u8; 4], port: u16) -> Option<(u32, u8, u8)> {
        let frame = Frame::syn(v4("198.18.0.2"), 40000, Ipv4Addr::from(dst).into(), port);
        self.sensor.test_run(&frame.build()).expect("test run");
        let item = self.ring.next()?;
        let r = parse_record(&item).expect("record");
        Some((r.trail_id, r.kind, r.trail_set))
    }

    /// Every 13th trail of `trails(n, base, label)` hits with its label in `set`; its
    /// neighbours that are not trails miss.
    fn expect_set(&mut self, n: u32, base: u32, label: u32, set: u8) {
        for i in (0..n).step_by(13) {
            let a = v4_addr(i, base);
            assert_eq!(
                self.hit(a, 9),
                Some((label + i, trail_kind::IP, set)),
                "{a:?}"
            );
            let (a, port) = port_trail(i, base);
            assert_eq!(
                self.hit(a, port),
                Some((label + n + i, trail_kind::IPPORT, set)),
                "{a:?}:{port}"
            );
            assert_eq!(self.hit(a, port + 1), None, "{a:?}:{}", port + 1);
            let mut other = v4_addr(i, base);
            other[0] = 11;
            assert_eq!(self.hit(other, 9), None, "{other:?}");
        }
    }
}

#[test]
fn ipv4_tables_hit_in_both_sets_across_switches() {
    if !common::privileged(module_path!()) {
        return;
    }
    // Set A from a compiled set: its tables are looked up in the file's mapping.
    let (na, nb) = (6_000, 12_000);
    let dir = common::tempdir("trail-tables");
    let path = dir.join("a.xtrails");
    let a = TrailSet {
        ip: trails(na, 0, 100),
        ..TrailSet::default()
    };
    compiled::write_file(&a, &CompileOptions::default(), &path).expect("compile A");
    let a = CompiledSet::open(&path, None)
        .expect("open A")
        .into_trails();
    assert_eq!(a.ip.v4.len(), na as usize);
    assert_eq!(a.ip.v4.table().heap_bytes(), 0, "A's tables are mapped");
    let b = trails(nb, 1, 50_000);
    assert_ne!(a.ip.v4.table().bits(), b.v4.table().bits());

    let opts = SensorOptions {
        suppress: std::time::Duration::ZERO,
        ..SensorOptions::default()
    };
    let mut sensor = Sensor::load(&a.ip, &opts).expect("load");
    let ring = sensor.take_hits().expect("ring");
    let mut sets = sensor.trail_sets().expect("trail sets");
    let mut p = Probe { sensor, ring };
    p.expect_set(na, 0, 100, 0);
    assert_eq!(p.hit(v4_addr(1, 1), 9), None, "B not loaded yet");

    // B into set 1: not seen until the switch, then only B.
    let (_, flags) = sets.fill(1, &b).expect("fill set 1");
    p.expect_set(na, 0, 100, 0);
    sets.select(1, flags).expect("switch to B");
    p.expect_set(nb, 1, 50_000, 1);
    assert_eq!(p.hit(v4_addr(0, 0), 9), None, "A is gone");

    // A again into set 0 (over B's predecessor's buckets), and back.
    sets.clear_filled(0, &a.ip).expect("empty set 0");
    let (_, flags) = sets.fill(0, &a.ip).expect("fill set 0");
    sets.select(0, flags).expect("switch to A");
    p.expect_set(na, 0, 100, 0);
    assert_eq!(p.hit(v4_addr(0, 1), 9), None, "B is gone");
    let _ = std::fs::remove_dir_all(&dir);
}
