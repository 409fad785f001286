//! IPv4 address and IP:port trails through the kernel's cuckoo tables (BPF_PROG_TEST_RUN,
//! root, no interface): thousands of each (full buckets, moved residents) found with their
//! labels in set 0 filled from a compiled set's mapping, in set 1 built in memory with
//! another table size, across switches both ways; addresses and ports not listed miss; a
//! small set refilled over a larger set's never-emptied buckets sees only its own trails; a
//! set filled again before its emptying ran loses the former entries; a reloaded compiled
//! set failing its checksum is refused for it.

mod common;

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::maps::{MapData, RingBuf};
use xtrail_bench::frames::{v4, v6, Frame};
use xtrail_common::{trail_kind, v4_mapped};
use xtrail_detect::trails::compiled::{self, CompileOptions};
use xtrail_detect::trails::{CompiledSet, IpTrails, TrailSet};
use xtrail_sensor::hits::parse_record;
use xtrail_sensor::loader::{Sensor, SensorOptions};
use xtrail_sensor::trail_maps::KernelTrailSets;

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
    /// A sensor loaded with `ip` in set 0 (hits not suppressed), and its trail sets.
    fn load(ip: &IpTrails) -> (Probe, KernelTrailSets) {
        let opts = SensorOptions {
            suppress: std::time::Duration::ZERO,
            ..SensorOptions::default()
        };
        let mut sensor = Sensor::load(ip, &opts).expect("load");
        let ring = sensor.take_hits().expect("ring");
        let sets = sensor.trail_sets().expect("trail sets");
        (Probe { sensor, ring }, sets)
    }

    /// (label, kind, set) of the hit a SYN to `dst:port` raises.
    fn hit(&mut self, dst: [u8; 4], port: u16) -> Option<(u32, u8, u8)> {
        let frame = Frame::syn(v4("198.18.0.2"), 40000, Ipv4Addr::from(dst).into(), port);
        self.sensor.test_run(&frame.build()).expect("test run");
        let item = self.ring.next()?;
        let r = parse_record(&item).expect("record");
        Some((r.trail_id, r.kind, r.trail_set))
    }

    /// (label, kind, set) of the hit a SYN to `[dst]:port` raises.
    fn hit_v6(&mut self, dst: [u8; 16], port: u16) -> Option<(u32, u8, u8)> {
        let frame = Frame::syn(v6("2001:db8::2"), 40000, Ipv6Addr::from(dst).into(), port);
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

    let (mut p, mut sets) = Probe::load(&a.ip);
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

/// A small set refilled into the half of a larger one whose table buckets were never
/// emptied (as a reload does: only the hash and LPM entries of a switched-out set are
/// deleted): set A (20,000 IPv4 and IP:port trails, an IPv6 trail, a CIDR) in set 0, B in
/// set 1, then C (A's first 50 trails relabelled) into set 0 over A's stale buckets. Every
/// trail of C hits with C's label; none of A's others, nor its IPv6 trail or CIDR, hits.
#[test]
fn a_small_set_over_a_larger_stale_table_sees_only_its_own_trails() {
    if !common::privileged(module_path!()) {
        return;
    }
    let (na, nb, nc) = (20_000, 3_000, 50);
    let mut a = trails(na, 0, 100);
    let v6_trail = [
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a,
    ];
    a.v6.insert(v6_trail, 7);
    a.cidr4.push(([203, 0, 113, 0], 24, 8));
    let b = trails(nb, 1, 50_000);
    let c = trails(nc, 0, 900_000);
    assert!(a.v4.table().bits() > c.v4.table().bits());
    assert!(a.ipport.v4_table().bits() > c.ipport.v4_table().bits());

    let (mut p, mut sets) = Probe::load(&a);
    p.expect_set(na, 0, 100, 0);
    assert_eq!(
        p.hit([203, 0, 113, 9], 9),
        Some((8, trail_kind::CIDR, 0)),
        "A's CIDR"
    );

    // B into set 1, switch, empty A as a reload does (its tables stay as they are).
    let (_, flags) = sets.fill(1, &b).expect("fill set 1");
    sets.select(1, flags).expect("switch to B");
    assert_eq!(sets.clear_filled(0, &a).expect("empty set 0"), 2);
    p.expect_set(nb, 1, 50_000, 1);

    // C into set 0, over A's buckets.
    let (_, flags) = sets.fill(0, &c).expect("fill set 0 with C");
    sets.select(0, flags).expect("switch to C");
    assert_eq!(sets.clear_filled(1, &b).expect("empty set 1"), 0);
    for i in 0..nc {
        assert_eq!(
            p.hit(v4_addr(i, 0), 9),
            Some((900_000 + i, trail_kind::IP, 0)),
            "C's trail {i}"
        );
        let (addr, port) = port_trail(i, 0);
        assert_eq!(
            p.hit(addr, port),
            Some((900_000 + nc + i, trail_kind::IPPORT, 0)),
            "C's IP:port trail {i}"
        );
    }
    for i in nc..na {
        let addr = v4_addr(i, 0);
        assert_eq!(p.hit(addr, 9), None, "A's trail {addr:?}");
        let (addr, port) = port_trail(i, 0);
        assert_eq!(p.hit(addr, port), None, "A's {addr:?}:{port}");
    }
    assert_eq!(p.hit([203, 0, 113, 9], 9), None, "A's CIDR");
    assert_eq!(p.hit_v6(v6_trail, 443), None, "A's IPv6 trail");
    assert_eq!(p.hit(v4_addr(0, 1), 9), None, "B is gone");
}

/// A half filled again before its emptying ran (a reload whose emptying failed, or a fill
/// that failed halfway) is emptied by that fill first: the IPv6 trail and CIDR of the set
/// before are not reported once the new set is selected.
#[test]
fn a_refill_without_emptying_drops_the_former_entries() {
    if !common::privileged(module_path!()) {
        return;
    }
    let a = trails(300, 0, 100);
    let mut x = trails(200, 1, 5_000);
    let v6_trail = [
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0b,
    ];
    x.v6.insert(v6_trail, 7);
    x.cidr4.push(([203, 0, 113, 0], 24, 8));
    // Y has IPv6 and CIDR trails too, in the same block, so neither the set's flags nor
    // its prefilter hide what X left.
    let mut y = trails(200, 1, 9_000);
    let mut y_v6 = v6_trail;
    y_v6[15] = 0x0c;
    y.v6.insert(y_v6, 17);
    y.cidr4.push(([203, 0, 113, 128], 25, 18));
    let (mut p, mut sets) = Probe::load(&a);
    sets.fill(1, &x).expect("fill set 1 with X");
    let (_, flags) = sets
        .fill(1, &y)
        .expect("fill set 1 with Y, X never emptied");
    sets.select(1, flags).expect("switch to Y");
    p.expect_set(200, 1, 9_000, 1);
    assert_eq!(
        p.hit([203, 0, 113, 200], 9),
        Some((18, trail_kind::CIDR, 1)),
        "Y's CIDR"
    );
    assert_eq!(p.hit_v6(y_v6, 443).map(|h| h.0), Some(17), "Y's IPv6 trail");
    assert_eq!(p.hit([203, 0, 113, 9], 9), None, "X's CIDR");
    assert_eq!(p.hit_v6(v6_trail, 443), None, "X's IPv6 trail");
}

/// A reload from a compiled set whose body fails its checksum (computed while the inactive
/// kernel set is filled from it) is refused for its checksum: the current set keeps
/// matching in its map set, nothing of the bad set is reported, and the next good set
/// fills and switches in as usual.
#[test]
fn a_reloaded_set_failing_its_checksum_is_refused() {
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    use xtrail_detect::shared_trails::{SharedTrails, VersionedTrails};
    use xtrail_sensor::reload::{HitSets, Inbox, ReloadOptions, Reloader, Request};

    if !common::privileged(module_path!()) {
        return;
    }
    let (na, nc) = (3_000, 4_000);
    let dir = common::tempdir("trail-tables-check");
    let path = dir.join("set.xtrails");
    let a = TrailSet {
        ip: trails(na, 0, 100),
        ..TrailSet::default()
    };
    let (mut p, sets) = Probe::load(&a.ip);
    let first = Arc::new(VersionedTrails::new("a", Arc::new(a)));
    let hits = Arc::new(HitSets::new(Arc::clone(&first), sets.selected()));
    let inbox = Arc::new(Inbox::default());
    let reloader = Reloader::start(
        ReloadOptions {
            sources: vec![path.clone()],
            inbox: Arc::clone(&inbox),
            ..ReloadOptions::default()
        },
        sets,
        SharedTrails::new(first),
        Arc::clone(&hits),
    )
    .expect("reloader");
    // Waits (the live loop's part: drains) until the reloader counted one more outcome.
    let settle = |hits: &HitSets, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < deadline, "no reload outcome within 30 s");
            hits.drained();
            std::thread::sleep(Duration::from_millis(5));
        }
    };

    // C with a byte of its body (in its IPv4 tables) flipped.
    let c = TrailSet {
        ip: trails(nc, 1, 70_000),
        ..TrailSet::default()
    };
    let mut bytes = compiled::write(&c, &CompileOptions::default());
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    compiled::write_atomic(&path, &bytes).expect("write the bad set");
    inbox.push(Request::Sources("test"));
    let stats = Arc::clone(&reloader.stats);
    settle(&hits, &|| {
        stats.refused.load(std::sync::atomic::Ordering::Relaxed) == 1
    });
    assert_eq!(stats.reloads.load(std::sync::atomic::Ordering::Relaxed), 0);
    let why = stats.last_refusal.lock().expect("stats").clone();
    assert!(why.contains("checksum"), "refused for its checksum: {why}");
    p.expect_set(na, 0, 100, 0);
    assert_eq!(p.hit(v4_addr(0, 1), 9), None, "nothing of the bad set");

    // The good C: filled into the same map set and switched in.
    compiled::write_file(&c, &CompileOptions::default(), &path).expect("write C");
    inbox.push(Request::Sources("test"));
    settle(&hits, &|| {
        stats.reloads.load(std::sync::atomic::Ordering::Relaxed) == 1
    });
    p.expect_set(nc, 1, 70_000, 1);
    assert_eq!(p.hit(v4_addr(0, 0), 9), None, "A is gone");
    drop(reloader);
    let _ = std::fs::remove_dir_all(&dir);
}
