//! The full real Maltrail static tree in the kernel maps: counts per kind, and a sample of
//! trails found in the maps with the right info, and hit by crafted packets.

mod common;

use std::net::IpAddr;
use std::path::PathBuf;

use aya::maps::{Array, HashMap, MapData};
use xtrail_bench::frames::{v4, Frame};
use xtrail_common::{maps as names, IpPortKey, TrailKey6};
use xtrail_detect::trails::{iptable, LoadOptions, TrailSet};
use xtrail_sensor::hits::parse_record;
use xtrail_sensor::loader::{Sensor, SensorOptions};

fn static_tree() -> Option<PathBuf> {
    let p =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/maltrail/trails-static");
    if p.is_dir() {
        return Some(p);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and {} is missing", p.display());
    }
    eprintln!("SKIPPED: {} not found", p.display());
    None
}

#[test]
fn full_static_tree_goes_into_the_maps() {
    if !common::privileged("full_static_tree_goes_into_the_maps") {
        return;
    }
    let Some(tree) = static_tree() else { return };
    let trails = TrailSet::load(&[tree], &LoadOptions::default()).expect("load static tree");
    let ip = &trails.ip;
    eprintln!("{}", trails.report);
    assert!(ip.v4.len() > 15_000, "IPv4 trails: {}", ip.v4.len());
    assert!(
        ip.ipport.len() > 200_000,
        "IP:port trails: {}",
        ip.ipport.len()
    );
    assert!(ip.cidr4.len() > 500, "CIDR trails: {}", ip.cidr4.len());
    assert!(ip.v6.len() > 1_000, "IPv6 trails: {}", ip.v6.len());

    let mut sensor = Sensor::load(ip, &SensorOptions::default()).expect("load XDP program");
    let f = &sensor.fill;
    assert_eq!(f.ipv4, ip.v4.len());
    assert_eq!(f.ipv6, ip.v6.len());
    assert_eq!(f.ipport, ip.ipport.len());
    assert_eq!(f.cidr4, ip.cidr4.len());
    assert!(f.prefilter);

    // Every 500th entry of each table is in its map with the same label.
    let ebpf = sensor.ebpf();
    // The start set is trail set 0: IPv4 tables' buckets at even elements, the set index
    // leading every hash key.
    let in_table = |name: &'static str, bits: u32, key: u64| -> Option<u32> {
        let map: Array<&MapData, iptable::Bucket> =
            Array::try_from(ebpf.map(name).unwrap()).unwrap();
        (0..2).find_map(|which| {
            let b = map
                .get(&((iptable::bucket(key, bits, which) as u32) << 1), 0)
                .unwrap();
            iptable::bucket_label(&b, key)
        })
    };
    let mut sample_v4 = Vec::new();
    for (i, (addr, label)) in ip.v4.iter().enumerate() {
        if i % 500 == 0 {
            let key = iptable::v4_key(addr);
            let found = in_table(names::IPV4_TABLE, f.v4_bits, key);
            assert_eq!(found.expect("IPv4 trail in map"), label);
            sample_v4.push((addr, label));
        }
    }
    let portmap: HashMap<&MapData, IpPortKey, u32> =
        HashMap::try_from(ebpf.map(names::IPPORT_TRAILS).unwrap()).unwrap();
    for (i, ((addr, port), label)) in ip.ipport.iter().enumerate() {
        if i % 500 == 0 {
            let found = match std::net::Ipv6Addr::from(addr).to_ipv4_mapped() {
                Some(a) => in_table(
                    names::IPPORT4_TABLE,
                    f.ipport4_bits,
                    iptable::ipport_key(a.octets(), port),
                ),
                None => portmap
                    .get(
                        &IpPortKey {
                            addr,
                            port,
                            set: 0,
                            _pad: 0,
                        },
                        0,
                    )
                    .ok(),
            };
            assert_eq!(found.expect("IP:port trail in map"), label);
        }
    }
    let v6map: HashMap<&MapData, TrailKey6, u32> =
        HashMap::try_from(ebpf.map(names::IPV6_TRAILS).unwrap()).unwrap();
    for (addr, label) in ip.v6.iter().step_by(100) {
        let key = TrailKey6 {
            set: 0,
            addr: *addr,
        };
        assert_eq!(v6map.get(&key, 0).expect("IPv6 trail in map"), *label);
    }

    // A SYN to each sampled IPv4 trail hits it, with the label the loader gave it.
    let mut ring = sensor.take_hits().expect("ring");
    let me = v4("198.18.0.2");
    for (addr, label) in &sample_v4 {
        let frame = Frame::syn(me, 40000, IpAddr::from(*addr), 80).build();
        sensor.test_run(&frame).expect("test run");
        let rec = parse_record(&ring.next().expect("a hit")).expect("record");
        // An IP:port trail on port 80 of the same address may win; both carry a label.
        assert!(rec.trail_id == *label || rec.kind == xtrail_common::trail_kind::IPPORT);
        let info = &trails.labels[rec.trail_id as usize].info;
        assert!(!info.is_empty());
    }
    // A known labelled trail, checked by name.
    let asyncrat = trails
        .labels
        .iter()
        .position(|l| l.info == "asyncrat (malware)")
        .expect("asyncrat label") as u32;
    assert!(ip.ipport.values().any(|l| l == asyncrat) || ip.v4.values().any(|l| l == asyncrat));
}
