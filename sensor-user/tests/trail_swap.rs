//! The kernel side of a hot reload, through BPF_PROG_TEST_RUN (root, no interface): a set
//! filled beside the active one is not seen until the one-write switch; after it every
//! lookup uses the new set and says so in the hit record; emptying the old set leaves the
//! new one whole; a set too large for the maps is refused before anything is written.

mod common;

use std::net::IpAddr;

use aya::maps::{MapData, RingBuf};
use xtrail_bench::frames::{v4, v6, Frame};
use xtrail_common::{stat, trail_kind, v4_mapped};
use xtrail_detect::trails::IpTrails;
use xtrail_sensor::hits::parse_record;
use xtrail_sensor::loader::{Sensor, SensorOptions};
use xtrail_sensor::trail_maps::TrailMapError;

/// Set A: 198.19.1.1 (label 1), 198.19.6.6:8443 (2), 203.0.113.0/24 (3), 2001:db8::a (4).
fn set_a() -> IpTrails {
    let mut t = IpTrails::default();
    t.v4.insert([198, 19, 1, 1], 1);
    t.ipport.insert((v4_mapped([198, 19, 6, 6]), 8443), 2);
    t.cidr4.push(([203, 0, 113, 0], 24, 3));
    if let IpAddr::V6(a) = v6("2001:db8::a") {
        t.v6.insert(a.octets(), 4);
    }
    t
}

/// Set B: 198.19.1.1 again (label 7), 198.19.2.2 (8), 198.51.100.0/24 (9); no IP:port, no
/// IPv6.
fn set_b() -> IpTrails {
    let mut t = IpTrails::default();
    t.v4.insert([198, 19, 1, 1], 7);
    t.v4.insert([198, 19, 2, 2], 8);
    t.cidr4.push(([198, 51, 100, 0], 24, 9));
    t
}

/// A sensor loaded with set A (no suppression) and its ring of hit records.
struct Probe {
    sensor: Sensor,
    ring: RingBuf<MapData>,
}

/// What a probe raises: (trail id, kind, set) of the hit, or None.
type Hit = Option<(u32, u8, u8)>;

impl Probe {
    fn load() -> Probe {
        let opts = SensorOptions {
            suppress: std::time::Duration::ZERO,
            ..SensorOptions::default()
        };
        let mut sensor = Sensor::load(&set_a(), &opts).expect("load");
        let ring = sensor.take_hits().expect("ring");
        Probe { sensor, ring }
    }

    /// The hit a SYN from 198.18.0.2 (2001:db8::2) to `dst:port` raises, if any.
    fn hit(&mut self, dst: &str, port: u16) -> Hit {
        let frame = if dst.contains(':') {
            Frame::syn(v6("2001:db8::2"), 40000, v6(dst), port)
        } else {
            Frame::syn(v4("198.18.0.2"), 40000, v4(dst), port)
        };
        self.sensor.test_run(&frame.build()).expect("test run");
        let item = self.ring.next()?;
        let r = parse_record(&item).expect("record");
        Some((r.trail_id, r.kind, r.trail_set))
    }

    /// Probes each `(dst, port)` in turn and asserts the hit it raises.
    fn expect(&mut self, want: &[(&str, u16, Hit)]) {
        for &(dst, port, hit) in want {
            assert_eq!(self.hit(dst, port), hit, "{dst}:{port}");
        }
    }
}

#[test]
fn a_set_filled_beside_the_active_one_is_switched_in_whole() {
    if !common::privileged(module_path!()) {
        return;
    }
    let mut p = Probe::load();
    let mut sets = p.sensor.trail_sets().expect("trail sets");
    assert_eq!(sets.active(), 0);
    p.expect(&[
        ("198.19.1.1", 80, Some((1, trail_kind::IP, 0))),
        ("198.19.6.6", 8443, Some((2, trail_kind::IPPORT, 0))),
    ]);

    // Set B filled beside A: nothing changes until the switch.
    let (fill, flags) = sets.fill(1, &set_b()).expect("fill set 1");
    assert_eq!((fill.ipv4, fill.cidr4, fill.ipport), (2, 1, 0));
    p.expect(&[
        ("198.19.2.2", 80, None),
        ("198.51.100.9", 80, None),
        ("203.0.113.9", 80, Some((3, trail_kind::CIDR, 0))),
    ]);

    // One write: every lookup now uses B, and the record says so.
    sets.select(1, flags).expect("switch");
    p.expect(&[
        ("198.19.1.1", 80, Some((7, trail_kind::IP, 1))),
        ("198.19.2.2", 80, Some((8, trail_kind::IP, 1))),
        ("198.51.100.9", 80, Some((9, trail_kind::CIDR, 1))),
        ("203.0.113.9", 80, None),
        ("198.19.6.6", 8443, None),
        ("2001:db8::a", 443, None),
    ]);

    // Emptying A removes exactly its hash and LPM entries (1 IPv6, 1 CIDR; its IPv4 table
    // buckets stay, unread) and leaves B whole.
    assert_eq!(sets.clear(0).expect("clear set 0"), 2);
    p.expect(&[
        ("198.19.2.2", 80, Some((8, trail_kind::IP, 1))),
        ("198.51.100.9", 80, Some((9, trail_kind::CIDR, 1))),
    ]);

    // And back to a fresh set 0.
    let (_, flags) = sets.fill(0, &set_a()).expect("refill set 0");
    sets.select(0, flags).expect("switch back");
    // By its keys, as a reload does.
    assert_eq!(sets.clear_filled(1, &set_b()).expect("clear set 1"), 1);
    assert_eq!(sets.clear(1).expect("set 1 is empty"), 0);
    p.expect(&[
        ("198.19.1.1", 80, Some((1, trail_kind::IP, 0))),
        ("2001:db8::a", 443, Some((4, trail_kind::IP, 0))),
        ("198.19.2.2", 80, None),
    ]);

    // A set larger than the maps hold beside another is refused before any write.
    let mut big = IpTrails::default();
    let room = sets.capacity().ipv4 as usize / 2 + 1;
    for i in 0..room {
        let i = u32::try_from(i).unwrap();
        big.v4
            .insert([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 1);
    }
    match sets.fill(1, &big) {
        Err(TrailMapError::Capacity { what: "IPv4", .. }) => {}
        other => panic!("want a capacity refusal, got {other:?}"),
    }
    assert_eq!(sets.clear(1).expect("nothing to clear"), 0);
}

/// Fills write only the prefilter words that change: after A, B and then C in set 0, the
/// /24s of A that C does not have are skipped by the prefilter again (their bits cleared),
/// and C's are looked up.
#[test]
fn refills_clear_the_prefilter_bits_of_the_set_before() {
    if !common::privileged(module_path!()) {
        return;
    }
    let mut p = Probe::load();
    let mut sets = p.sensor.trail_sets().expect("trail sets");
    let (_, flags) = sets.fill(1, &set_b()).expect("fill set 1");
    sets.select(1, flags).expect("switch to B");
    sets.clear_filled(0, &set_a()).expect("empty set 0");
    let mut c = IpTrails::default();
    c.v4.insert([198, 19, 9, 9], 11);
    let (fill, flags) = sets.fill(0, &c).expect("fill set 0 with C");
    assert!(fill.prefilter);
    sets.select(0, flags).expect("switch to C");
    let skips = |s: &Sensor| s.counters().expect("counters").get(stat::PREFILTER_SKIPS);
    p.expect(&[("198.19.9.9", 80, Some((11, trail_kind::IP, 0)))]);
    // Destination and source both skipped: A's /24s are gone from the bitmap.
    for gone in ["203.0.113.9", "198.19.1.1", "198.19.6.6"] {
        let before = skips(&p.sensor);
        assert_eq!(p.hit(gone, 8443), None, "{gone}");
        assert_eq!(skips(&p.sensor) - before, 2, "{gone} not skipped");
    }
}
