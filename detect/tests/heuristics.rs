//! The heuristics end to end through the [`Processor`]: each heuristic at, just below and
//! just above its threshold; false-positive guards (ACK sweeps, whitelisted sources, local
//! destinations); live flow starts; and floods of every bounded table, showing that entry
//! counts plateau while exact trail matching keeps working.

use std::net::IpAddr;
use std::sync::Arc;

use xtrail_detect::event::Event;
use xtrail_detect::heuristics::{
    FlowStart, HeuristicsConfig, MaltrailHeuristics, TableState, UaPatterns,
};
use xtrail_detect::packet::{TcpFlags, LINKTYPE_RAW};
use xtrail_detect::process::{Processor, ProcessorConfig};
use xtrail_detect::throttle::{Throttle, ThrottleConfig};
use xtrail_detect::trails::{LoadOptions, TrailSet};
use xtrail_detect::whitelist::Whitelist;

const TRAILS: &str = "\
evil-test-domain.com,malware (test),(static)
66.66.66.66,malware (test),(static)
198.51.100.90,sinkhole testsink (malware),(static)
198.51.100.91,parking site (suspicious),(static)
203.0.113.77,mass scanner (test),(static)
";

const S: i64 = 1_000_000;
const T0: i64 = 1_700_000_000 * S;

fn trails() -> Arc<TrailSet> {
    let path = std::env::temp_dir().join(format!(
        "xtrail-heur-{}-{:?}.csv",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&path, TRAILS).unwrap();
    let t = TrailSet::load(std::slice::from_ref(&path), &LoadOptions::default()).unwrap();
    let _ = std::fs::remove_file(&path);
    Arc::new(t)
}

fn ua_patterns() -> Arc<UaPatterns> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/maltrail/data/ua.txt");
    Arc::new(if path.is_file() {
        UaPatterns::load(&path).unwrap()
    } else {
        UaPatterns::parse("masscan\n").unwrap()
    })
}

fn processor_with(config: HeuristicsConfig, whitelist: &str) -> Processor {
    let wl = Arc::new(Whitelist::parse(whitelist));
    let mut p = Processor::new(trails(), Arc::clone(&wl), ProcessorConfig::with_sensor("t"));
    let h = MaltrailHeuristics::new(config, wl, ua_patterns()).unwrap();
    p.set_heuristics(Box::new(h));
    p
}

fn processor() -> Processor {
    processor_with(HeuristicsConfig::replay(), "")
}

fn ip(s: &str) -> [u8; 4] {
    match s.parse::<IpAddr>().unwrap() {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(_) => unreachable!(),
    }
}

fn v4(src: &str, dst: &str, proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0];
    let total = (20 + l4.len()) as u16;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&ip(src));
    p.extend_from_slice(&ip(dst));
    p.extend_from_slice(l4);
    p
}

fn tcp(sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = sport.to_be_bytes().to_vec();
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(payload);
    t
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = sport.to_be_bytes().to_vec();
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

fn dns_name(m: &mut Vec<u8>, name: &str) {
    for l in name.split('.') {
        m.push(l.len() as u8);
        m.extend_from_slice(l.as_bytes());
    }
    m.push(0);
}

fn query(name: &str) -> Vec<u8> {
    xtrail_detect::protocols::dns::query_message(0x1234, name, 1)
}

/// A response with the given rcode and A answers.
fn response(name: &str, rcode: u8, answers: &[[u8; 4]]) -> Vec<u8> {
    let mut m = vec![
        0x12,
        0x34,
        0x81,
        0x80 | rcode,
        0,
        1,
        0,
        answers.len() as u8,
        0,
        0,
        0,
        0,
    ];
    dns_name(&mut m, name);
    m.extend_from_slice(&[0, 1, 0, 1]);
    for a in answers {
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        m.extend_from_slice(a);
    }
    m
}

fn http_get(target: &str, host: &str, ua: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {ua}\r\n\r\n").into_bytes()
}

/// Runs timed frames, returns the event lines without their timestamp.
fn run(p: &mut Processor, frames: &[(i64, Vec<u8>)]) -> Vec<String> {
    let mut lines = Vec::new();
    for (ts, f) in frames {
        p.process(*ts, LINKTYPE_RAW, f, &mut |e: Event| {
            let line = e.to_maltrail();
            lines.push(
                line.split_once("\" ")
                    .map_or(line.clone(), |(_, r)| r.to_owned()),
            );
        });
    }
    lines
}

fn count(lines: &[String], what: &str) -> usize {
    lines.iter().filter(|l| l.contains(what)).count()
}

/// `n` probes from one source to one destination, one port each, one a second.
fn port_probes(n: u16, flags: u8, src: &str, dst: &str) -> Vec<(i64, Vec<u8>)> {
    (0..n)
        .map(|i| {
            (
                T0 + i64::from(i) * S,
                v4(src, dst, 6, &tcp(40000 + i, 1000 + i, flags, b"")),
            )
        })
        .collect()
}

#[test]
fn port_scan_threshold() {
    for (n, want) in [(10, 0), (11, 1), (12, 1)] {
        let lines = run(
            &mut processor(),
            &port_probes(n, TcpFlags::SYN, "203.0.113.9", "198.51.100.7"),
        );
        assert_eq!(
            count(&lines, "potential port scanning"),
            want,
            "{n}: {lines:#?}"
        );
    }
    let lines = run(
        &mut processor(),
        &port_probes(11, TcpFlags::SYN, "203.0.113.9", "198.51.100.7"),
    );
    assert_eq!(
        lines,
        ["t 203.0.113.9 40010 198.51.100.7 1010 TCP IP 203.0.113.9 \"potential port scanning\" (heuristic)"]
    );
}

/// A listed scanner's port scan: the packet that crosses the threshold raises both the scan
/// alert and the scanner's trail hit, under one collapse key (the throttle keeps the first)
/// and one summarize key (its summary tells the last held event's info). The alert comes
/// first, as it did before the flow start's table reads moved after the packet's checks, so
/// the scan is what the summary reports.
#[test]
fn listed_scanner_keeps_its_scan_alert_through_the_throttle() {
    let mut t = Throttle::new(ThrottleConfig::default());
    let mut p = processor();
    let mut passed = Vec::new();
    for (ts, f) in port_probes(11, TcpFlags::SYN, "203.0.113.77", "198.51.100.7") {
        p.process(ts, LINKTYPE_RAW, &f, &mut |e| {
            let _ = t.filter(e, &mut |e| passed.push(e.info.clone()));
        });
    }
    t.finish(&mut |e| passed.push(e.info.clone()));
    let scans = passed
        .iter()
        .filter(|i| i.starts_with("potential port scanning"));
    assert_eq!(scans.count(), 1, "{passed:#?}");
}

#[test]
fn stealth_scans_count_like_syns() {
    for flags in [
        0,
        TcpFlags::FIN,
        TcpFlags::FIN | TcpFlags::PSH | TcpFlags::URG,
    ] {
        let lines = run(
            &mut processor(),
            &port_probes(11, flags, "203.0.113.9", "198.51.100.7"),
        );
        assert_eq!(
            count(&lines, "potential port scanning"),
            1,
            "flags {flags:#x}"
        );
    }
}

#[test]
fn sliding_window_and_one_alert_per_window() {
    // 11 ports spread over 31 s: never 11 within 30 s.
    let frames: Vec<_> = (0..11)
        .map(|i| {
            (
                T0 + i * 3_100_000,
                v4(
                    "203.0.113.9",
                    "198.51.100.7",
                    6,
                    &tcp(40000, 1000 + i as u16, 2, b""),
                ),
            )
        })
        .collect();
    assert!(run(&mut processor(), &frames).is_empty());
    // 40 ports in 20 s: one alert.
    let lines = run(
        &mut processor(),
        &port_probes(40, TcpFlags::SYN, "203.0.113.9", "198.51.100.7"),
    );
    assert_eq!(count(&lines, "potential port scanning"), 1, "{lines:#?}");
}

#[test]
fn no_port_scan_false_positives() {
    // ACK sweep, RST and SYN-ACK floods.
    for flags in [
        TcpFlags::ACK,
        TcpFlags::RST,
        TcpFlags::SYN | TcpFlags::ACK,
        TcpFlags::FIN | TcpFlags::ACK,
    ] {
        let lines = run(
            &mut processor(),
            &port_probes(50, flags, "203.0.113.9", "198.51.100.7"),
        );
        assert!(lines.is_empty(), "flags {flags:#x}: {lines:#?}");
    }
    // Whitelisted source, loopback destination.
    let mut p = processor_with(HeuristicsConfig::replay(), "203.0.113.9\n");
    assert!(run(
        &mut p,
        &port_probes(50, TcpFlags::SYN, "203.0.113.9", "198.51.100.7")
    )
    .is_empty());
    assert!(run(
        &mut processor(),
        &port_probes(50, TcpFlags::SYN, "127.0.0.1", "127.0.0.1")
    )
    .is_empty());
    // Many clients each opening one connection: not a scan.
    let frames: Vec<_> = (0..50u8)
        .map(|i| {
            (
                T0,
                v4(
                    &format!("203.0.113.{i}"),
                    "198.51.100.7",
                    6,
                    &tcp(40000, 443, 2, b""),
                ),
            )
        })
        .collect();
    assert!(run(&mut processor(), &frames).is_empty());
}

#[test]
fn udp_scan_threshold_and_replies() {
    for (n, want) in [(10u16, 0), (11, 1)] {
        let frames: Vec<_> = (0..n)
            .map(|i| {
                (
                    T0 + i64::from(i) * S,
                    v4(
                        "203.0.113.9",
                        "198.51.100.7",
                        17,
                        &udp(40000 + i, 1000 + i, b"x"),
                    ),
                )
            })
            .collect();
        let lines = run(&mut processor(), &frames);
        assert_eq!(count(&lines, "potential udp scanning"), want, "{n}");
    }
    // A resolver answering 30 queries from 30 client ports is not scanning the client.
    let mut frames = Vec::new();
    for i in 0..30u16 {
        frames.push((
            T0 + i64::from(i) * S,
            v4(
                "10.0.0.66",
                "8.8.8.8",
                17,
                &udp(50000 + i, 53, &query("a.example.org")),
            ),
        ));
        frames.push((
            T0 + i64::from(i) * S,
            v4(
                "8.8.8.8",
                "10.0.0.66",
                17,
                &udp(53, 50000 + i, &response("a.example.org", 0, &[])),
            ),
        ));
    }
    // And a high-port service replying to many client ports.
    for i in 0..30u16 {
        frames.push((
            T0 + i64::from(i) * S,
            v4(
                "10.0.0.66",
                "203.0.113.50",
                17,
                &udp(50000 + i, 3478, b"stun"),
            ),
        ));
        frames.push((
            T0 + i64::from(i) * S,
            v4(
                "203.0.113.50",
                "10.0.0.66",
                17,
                &udp(3478, 50000 + i, b"stun"),
            ),
        ));
    }
    assert!(run(&mut processor(), &frames).is_empty());
}

#[test]
fn infection_scan_threshold() {
    for (n, want) in [(32u8, 0), (33, 1)] {
        let frames: Vec<_> = (0..n)
            .map(|i| {
                (
                    T0,
                    v4(
                        "10.0.0.5",
                        &format!("10.9.9.{i}"),
                        6,
                        &tcp(53000 + u16::from(i), 445, 2, b""),
                    ),
                )
            })
            .collect();
        let lines = run(&mut processor(), &frames);
        assert_eq!(
            count(&lines, "potential infection"),
            want,
            "{n}: {lines:#?}"
        );
        if want == 1 {
            assert!(lines
                .iter()
                .any(|l| l.contains(" TCP PORT 445 \"potential infection\" (heuristic)")));
        }
    }
    // Not an infection port.
    let frames: Vec<_> = (0..40u8)
        .map(|i| {
            (
                T0,
                v4(
                    "10.0.0.5",
                    &format!("10.9.9.{i}"),
                    6,
                    &tcp(53000, 443, 2, b""),
                ),
            )
        })
        .collect();
    assert!(run(&mut processor(), &frames).is_empty());
}

#[test]
fn live_scans_come_from_flow_starts() {
    let wl = Arc::new(Whitelist::empty());
    let mut h =
        MaltrailHeuristics::new(HeuristicsConfig::live(), Arc::clone(&wl), ua_patterns()).unwrap();
    h.set_sensor("gw", Some("eth0"));
    let mut events = Vec::new();
    for i in 0..11u16 {
        let f = FlowStart {
            ts_us: T0 + i64::from(i) * S,
            src: "203.0.113.9".parse().unwrap(),
            dst: "198.51.100.7".parse().unwrap(),
            src_port: 40000,
            dst_port: 1000 + i,
            proto: 6,
            tcp_flags: TcpFlags::SYN,
        };
        h.on_flow_start(&f, &mut |e| events.push(e));
    }
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].info, "potential port scanning");
    assert_eq!(events[0].sensor, "gw");
    assert_eq!(events[0].iface.as_deref(), Some("eth0"));
    // In live mode, packets do not feed the scans (the kernel's flow starts do)...
    let mut p = processor_with(HeuristicsConfig::live(), "");
    assert!(run(
        &mut p,
        &port_probes(30, TcpFlags::SYN, "203.0.113.9", "198.51.100.7")
    )
    .is_empty());
    // ... and the Processor forwards flow starts to its heuristics.
    let mut n = 0;
    for i in 0..11u16 {
        let f = FlowStart {
            ts_us: T0 + i64::from(i) * S,
            src: "203.0.113.9".parse().unwrap(),
            dst: "198.51.100.8".parse().unwrap(),
            src_port: 40000,
            dst_port: 1000 + i,
            proto: 17,
            tcp_flags: 0,
        };
        p.on_flow_start(&f, &mut |e| {
            assert_eq!(e.info, "potential udp scanning");
            n += 1;
        });
    }
    assert_eq!(n, 1);
}

/// Replay counts a port from its flow's start, not its latest packet, as live capture does
/// (the kernel sends a flow's start once per 30 s): a port probed at 0 s and again at 20 s
/// is out of the 30 s window at 40 s. So ten new ports at 40 s are ten, not eleven, in
/// replay as from the kernel's flow starts; an eleventh raises the scan in both.
#[test]
fn replay_counts_a_port_from_its_flow_start_as_live_does() {
    let (src, dst) = ("203.0.113.9", "198.51.100.7");
    let syn = |ts: i64, sport: u16, dport: u16| {
        (ts, v4(src, dst, 6, &tcp(sport, dport, TcpFlags::SYN, b"")))
    };
    let mut frames = vec![syn(T0, 40000, 1000), syn(T0 + 20 * S, 40001, 1000)];
    for (i, port) in (2000..2011u16).enumerate() {
        frames.push(syn(T0 + 40 * S + i as i64 * 1000, 40002 + i as u16, port));
    }
    let wl = Arc::new(Whitelist::empty());
    let mut live =
        MaltrailHeuristics::new(HeuristicsConfig::live(), Arc::clone(&wl), ua_patterns()).unwrap();
    // What the kernel sends: each flow's start, not the SYN of 20 s.
    let mut live_events = Vec::new();
    for (n, (ts, f)) in frames.iter().enumerate() {
        let port = u16::from_be_bytes([f[22], f[23]]);
        if n == 1 {
            continue;
        }
        let start = FlowStart {
            ts_us: *ts,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            src_port: u16::from_be_bytes([f[20], f[21]]),
            dst_port: port,
            proto: 6,
            tcp_flags: TcpFlags::SYN,
        };
        live.on_flow_start(&start, &mut |e| live_events.push((n, e.info)));
    }
    for (upto, want) in [(12, 0), (13, 1)] {
        let lines = run(&mut processor(), &frames[..upto]);
        assert_eq!(
            count(&lines, "potential port scanning"),
            want,
            "{upto}: {lines:#?}"
        );
    }
    // From the kernel's flow starts: the one alert, on the same (the thirteenth) packet.
    assert_eq!(live_events, [(12, "potential port scanning".to_owned())]);
}

/// Flow starts given in ring-record batches (`on_flow_starts`, whose table reads go first)
/// raise the same events, in the same order, as one at a time: TCP and UDP scans, UDP
/// replies, an infection sweep and repeats, from a few sources, in batches of 16 and odd
/// sizes.
#[test]
fn batched_flow_starts_raise_what_single_ones_do() {
    let mut starts = Vec::new();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for i in 0..3_000i64 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let r = rng as u32;
        let sweep = (r >> 22).is_multiple_of(4);
        // One source sweeps port 445 over many hosts (an infection scan).
        let src = format!("203.0.113.{}", if sweep { 9 } else { 1 + r % 4 });
        let udp = !sweep && (r >> 20).is_multiple_of(3);
        let reply = udp && (r >> 24).is_multiple_of(5);
        let dst = if sweep {
            format!("198.51.100.{}", 1 + (r >> 8) % 200)
        } else {
            format!("198.51.101.{}", 1 + (r >> 8) % 3)
        };
        let (sport, dport) = match (udp, reply, sweep) {
            (_, _, true) => (40_000, 445),
            (true, true, _) => (53, 40_000),
            _ => (40_000, 1 + (r >> 16) as u16 % 60),
        };
        starts.push(FlowStart {
            ts_us: T0 + i * 60_000,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            src_port: sport,
            dst_port: dport,
            proto: if udp { 17 } else { 6 },
            tcp_flags: if udp { 0 } else { TcpFlags::SYN },
        });
    }
    let events = |batch: usize| {
        let mut p = processor_with(HeuristicsConfig::live(), "");
        let mut out = Vec::new();
        for chunk in starts.chunks(batch) {
            p.on_flow_starts(chunk, &mut |e| {
                out.push((e.ts_us, e.src_ip, e.dst_ip, e.info))
            });
        }
        out
    };
    let single = events(1);
    for info in [
        "potential port scanning",
        "potential udp scanning",
        "potential infection",
    ] {
        let n = single.iter().filter(|e| e.3 == info).count();
        assert!(n > 0, "the stream raises {info}");
    }
    assert_eq!(events(16), single);
    assert_eq!(events(7), single);
}

#[test]
fn web_scan_threshold() {
    for (n, want) in [(10u16, 0), (11, 1)] {
        let frames: Vec<_> = (0..n)
            .map(|i| {
                let req = http_get(&format!("/scan{i}/x"), "webscan.example", "curl/8.0");
                (
                    T0,
                    v4(
                        "203.0.113.9",
                        "198.51.100.7",
                        6,
                        &tcp(52000 + i, 80, 0x18, &req),
                    ),
                )
            })
            .collect();
        let lines = run(&mut processor(), &frames);
        assert_eq!(
            count(&lines, "potential web scanning"),
            want,
            "{n}: {lines:#?}"
        );
    }
    // Between two local addresses: not flagged.
    let frames: Vec<_> = (0..20u16)
        .map(|i| {
            let req = http_get(&format!("/s{i}/x"), "intranet-app", "curl/8.0");
            (
                T0,
                v4("10.0.0.9", "10.0.0.7", 6, &tcp(52000 + i, 80, 0x18, &req)),
            )
        })
        .collect();
    assert!(run(&mut processor(), &frames).is_empty());
}

#[test]
fn nxdomain_thresholds() {
    for (n, want) in [(20i64, 0), (21, 1), (22, 1)] {
        let frames: Vec<_> = (0..n)
            .map(|i| {
                (
                    T0 + i * S,
                    v4(
                        "8.8.8.8",
                        "203.0.113.5",
                        17,
                        &udp(
                            53,
                            40000,
                            &response(&format!("nx{i}.dgaparent.com"), 3, &[]),
                        ),
                    ),
                )
            })
            .collect();
        let lines = run(&mut processor(), &frames);
        assert_eq!(
            count(&lines, "excessive no such domain (suspicious)"),
            want,
            "{n}: {lines:#?}"
        );
    }
    let frames = [
        // 16 distinct letters: entropy 4 > 3.5.
        (
            T0,
            v4(
                "8.8.8.8",
                "10.0.0.66",
                17,
                &udp(53, 40000, &response("qwertyuiopasdfgh.com", 3, &[])),
            ),
        ),
        // 10 consonants, low entropy.
        (
            T0,
            v4(
                "8.8.8.8",
                "10.0.0.66",
                17,
                &udp(53, 40001, &response("bbbbbccccc.net", 3, &[])),
            ),
        ),
        // 9 consonants: below.
        (
            T0,
            v4(
                "8.8.8.8",
                "10.0.0.66",
                17,
                &udp(53, 40002, &response("bbbbbcccc.net", 3, &[])),
            ),
        ),
        // The same name resolving fine: nothing.
        (
            T0,
            v4(
                "8.8.8.8",
                "10.0.0.66",
                17,
                &udp(53, 40003, &response("qwertyuiopasdfgh.org", 0, &[])),
            ),
        ),
    ];
    let lines = run(&mut processor(), &frames);
    assert_eq!(
        lines,
        [
            "t 8.8.8.8 53 10.0.0.66 40000 UDP DNS (qwertyuiopasdfgh).com \"entropy threshold no such domain (suspicious)\" (heuristic)",
            "t 8.8.8.8 53 10.0.0.66 40001 UDP DNS (bbbbbccccc).net \"consonant threshold no such domain (suspicious)\" (heuristic)",
        ]
    );
}

#[test]
fn dns_exhaustion_threshold() {
    for (n, want) in [(999u32, 0), (1000, 1), (1001, 1)] {
        let frames: Vec<_> = (0..n)
            .map(|i| {
                (
                    T0 + i64::from(i) * 10_000,
                    v4(
                        "10.0.0.66",
                        "8.8.8.8",
                        17,
                        &udp(50000, 53, &query(&format!("s{i}.tunnel.com"))),
                    ),
                )
            })
            .collect();
        let lines = run(&mut processor(), &frames);
        assert_eq!(
            count(&lines, "potential dns exhaustion (suspicious)"),
            want,
            "{n}"
        );
    }
}

#[test]
fn long_domain_threshold() {
    let at = format!("{}.example.org", "a".repeat(24));
    let above = format!("{}.example.org", "a".repeat(25));
    let frames = [
        (
            T0,
            v4("10.0.0.66", "8.8.8.8", 17, &udp(50000, 53, &query(&at))),
        ),
        (
            T0,
            v4("10.0.0.66", "8.8.8.8", 17, &udp(50001, 53, &query(&above))),
        ),
    ];
    let lines = run(&mut processor(), &frames);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].ends_with(&format!(
        "UDP DNS ({}).example.org \"long domain (suspicious)\" (heuristic)",
        "a".repeat(25)
    )));
}

/// A whitelisted query name gets no DNS heuristics, whether the pipeline looks it up (the
/// first query) or answers it from the verdicts of names seen before (the second).
#[test]
fn whitelisted_query_names_skip_the_dns_heuristics_every_time() {
    let mut p = processor_with(HeuristicsConfig::replay(), "example.org\n");
    let name = format!("{}.example.org", "a".repeat(25));
    let frame = |sport| {
        (
            T0,
            v4("10.0.0.66", "8.8.8.8", 17, &udp(sport, 53, &query(&name))),
        )
    };
    assert!(run(&mut p, &[frame(50000), frame(50001)]).is_empty());
    assert_eq!(p.stats().name_verdict_hits, 1);
}

/// A query raising a heuristic event, an address event and a domain trail event: in that
/// order (the name's trail lookup finishes after the heuristics and the address check).
#[test]
fn dns_query_events_leave_heuristic_then_address_then_name() {
    let name = format!("{}.evil-test-domain.com", "a".repeat(25));
    let frame = (
        T0,
        v4(
            "10.0.0.66",
            "66.66.66.66",
            17,
            &udp(50000, 53, &query(&name)),
        ),
    );
    let lines = run(&mut processor(), &[frame]);
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(
        lines[0].contains("\"long domain (suspicious)\""),
        "{lines:#?}"
    );
    assert!(
        lines[1].contains(&format!("UDP IP \"66.66.66.66 ({name})\"")),
        "{lines:#?}"
    );
    assert!(
        lines[2].contains(&format!(
            "UDP DNS ({}).evil-test-domain.com \"malware (test)\"",
            "a".repeat(25)
        )),
        "{lines:#?}"
    );
}

#[test]
fn sinkholed_and_parked_answers() {
    let frames = [
        (
            T0,
            v4(
                "8.8.8.8",
                "10.0.0.66",
                17,
                &udp(
                    53,
                    40000,
                    &response("lost-c2.com", 0, &[[198, 51, 100, 90]]),
                ),
            ),
        ),
        (
            T0,
            v4(
                "8.8.8.8",
                "10.0.0.66",
                17,
                &udp(
                    53,
                    40001,
                    &response("for-sale.net", 0, &[[1, 2, 3, 4], [198, 51, 100, 91]]),
                ),
            ),
        ),
        (
            T0,
            v4(
                "8.8.8.8",
                "10.0.0.66",
                17,
                &udp(53, 40002, &response("clean.org", 0, &[[1, 2, 3, 4]])),
            ),
        ),
    ];
    let lines = run(&mut processor(), &frames);
    assert_eq!(
        lines,
        [
            "t 8.8.8.8 53 10.0.0.66 40000 UDP DNS (lost-c2).com \"sinkholed by testsink (malware)\" (heuristic)",
            "t 8.8.8.8 53 10.0.0.66 40001 UDP DNS (for-sale).net \"parked site (suspicious)\" (heuristic)",
        ]
    );
}

#[test]
fn http_responses() {
    let resp = |s: &str| {
        v4(
            "203.0.113.80",
            "10.0.0.66",
            6,
            &tcp(80, 50000, 0x18, s.as_bytes()),
        )
    };
    let frames = [
        (T0, resp("HTTP/1.1 200 OK\r\nX-Sinkhole: Malware\r\nContent-Length: 0\r\n\r\n")),
        (T0, resp("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<html><head><title>This domain has been seized</title>")),
        (T0, resp("HTTP/1.1 200 OK\r\nContent-Type: application/hta\r\n\r\n<script>")),
        (T0, resp("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<html><title>Welcome</title>")),
    ];
    let lines = run(&mut processor(), &frames);
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert_eq!(count(&lines, "\"sinkhole response (malware)\""), 1);
    assert_eq!(
        count(
            &lines,
            "HTTP \"This domain has been seized\" \"seized domain (suspicious)\""
        ),
        1
    );
    assert_eq!(
        count(&lines, "HTTP application/hta \"content type (suspicious)\""),
        1
    );
}

#[test]
fn http_request_guards() {
    let req = |dst: &str, target: &str, host: &str| {
        v4(
            "10.0.0.66",
            dst,
            6,
            &tcp(50000, 80, 0x18, &http_get(target, host, "curl/8.0")),
        )
    };
    // Downloads from local destinations are not flagged.
    let lines = run(
        &mut processor(),
        &[
            (T0, req("10.0.0.99", "/mirai.x86", "10.0.0.99")),
            (T0, req("192.168.1.5", "/setup.exe", "nas.example")),
            (
                T0,
                req("10.0.0.99", "/t?imei=356938035643809", "tracker.example"),
            ),
        ],
    );
    assert!(lines.is_empty(), "{lines:#?}");
    // Out there they are.
    let lines = run(
        &mut processor(),
        &[
            (T0, req("198.51.100.99", "/mirai.x86", "198.51.100.99")),
            (T0, req("203.0.113.18", "/update.msi", "dl.example")),
            (
                T0,
                req("203.0.113.19", "/t?imei=356938035643809", "tracker.example"),
            ),
        ],
    );
    assert_eq!(
        count(&lines, "potential iot-malware download (suspicious)"),
        1
    );
    assert_eq!(
        count(
            &lines,
            "dl.example(/update.msi) \"direct .msi download (suspicious)\""
        ),
        1
    );
    assert_eq!(count(&lines, "potential data leakage (suspicious)"), 1);
    // Whitelisted host names are not checked.
    let mut p = processor_with(HeuristicsConfig::replay(), "trusted.example\n");
    assert!(run(
        &mut p,
        &[(
            T0,
            req(
                "203.0.113.20",
                "/x?id=1 UNION SELECT a FROM b",
                "trusted.example"
            )
        )]
    )
    .is_empty());
}

#[test]
fn missing_host_is_optional() {
    let frame = v4(
        "10.0.0.66",
        "203.0.113.7",
        6,
        &tcp(50000, 80, 0x18, b"GET /index.html HTTP/1.0\r\n\r\n"),
    );
    assert!(run(&mut processor(), &[(T0, frame.clone())]).is_empty());
    let config = HeuristicsConfig {
        check_missing_host: true,
        ..HeuristicsConfig::replay()
    };
    let lines = run(&mut processor_with(config, ""), &[(T0, frame)]);
    assert_eq!(lines, ["t 10.0.0.66 50000 203.0.113.7 80 TCP HTTP /index.html \"missing host header (suspicious)\" (heuristic)"]);
}

/// The trail hit that must keep working during every flood.
fn trail_hit(p: &mut Processor, ts: i64) -> bool {
    // A new source port each time: identical SYNs within one second are counted once.
    let port = 1024 + u16::try_from(ts.rem_euclid(60_000)).unwrap_or(0);
    let f = v4(
        "10.0.0.66",
        "66.66.66.66",
        6,
        &tcp(port, 443, TcpFlags::SYN, b""),
    );
    let mut hit = false;
    p.process(ts, LINKTYPE_RAW, &f, &mut |e: Event| {
        hit |= e.trail == "66.66.66.66"
    });
    hit
}

/// The named table's evictions (every table is listed, evicting or not).
fn evicted(tables: &[TableState], name: &str) -> u64 {
    let t = tables.iter().find(|t| t.table == name);
    t.unwrap_or_else(|| panic!("no table {name} in {tables:?}"))
        .evicted
}

/// Floods every bounded table with new keys from a single generator; checks the plateau.
/// Returns the entries at half way, the peak and the tables at the end.
fn flood(
    config: HeuristicsConfig,
    frame: impl Fn(u32) -> Vec<u8>,
    n: u32,
) -> (usize, usize, Vec<TableState>) {
    let mut p = processor_with(config, "");
    let mut peak = 0;
    let mut at_half = 0;
    for i in 0..n {
        p.process(T0 + i64::from(i), LINKTYPE_RAW, &frame(i), &mut |_| {});
        peak = peak.max(p.heuristics_state_entries());
        if i == n / 2 {
            at_half = p.heuristics_state_entries();
        }
        if i % 5000 == 0 {
            assert!(
                trail_hit(&mut p, T0 + i64::from(i) + 1),
                "trail lost at {i}"
            );
        }
    }
    assert!(trail_hit(&mut p, T0 + i64::from(n) + 1));
    let tables = p.heuristics_tables();
    let entries: usize = tables.iter().map(|t| t.entries).sum();
    assert_eq!(entries, p.heuristics_state_entries(), "{tables:?}");
    (at_half, peak, tables)
}

fn small() -> HeuristicsConfig {
    HeuristicsConfig {
        max_scan_keys: 1000,
        max_nxdomain_counters: 1000,
        max_exhaustion_domains: 100,
        max_ua_cache: 1000,
        ..HeuristicsConfig::replay()
    }
}

fn addr(i: u32) -> String {
    let b = (i + 1).to_be_bytes();
    format!("100.{}.{}.{}", b[1], b[2], b[3])
}

#[test]
fn flood_scan_windows() {
    // New (source, destination) pairs for TCP, UDP and the infection table.
    let (_, peak, tables) = flood(
        small(),
        |i| v4(&addr(i), "198.51.100.7", 6, &tcp(40000, 445, 2, b"")),
        40_000,
    );
    assert!(peak <= 2 * 1000 + 4, "{peak}");
    assert!(evicted(&tables, "scan_tcp") > 0, "{tables:?}");
    assert_eq!(evicted(&tables, "scan_udp"), 0, "{tables:?}");
    // Between ephemeral ports: the UDP flows table too (a request to a service port is not
    // remembered there).
    let (_, peak, tables) = flood(
        small(),
        |i| v4(&addr(i), "198.51.100.7", 17, &udp(40000, 4000, b"x")),
        40_000,
    );
    assert!(peak <= 2 * 1000 + 4, "{peak}");
    assert!(evicted(&tables, "scan_udp") > 0, "{tables:?}");
    assert!(evicted(&tables, "udp_flows") > 0, "{tables:?}");
    // Each new pair with two ports (a window line each) on an infection port (the infection
    // table too): every table holds its windows and its first sightings, at most 512 each
    // with 1,000 keys a table.
    let (_, peak, tables) = flood(
        small(),
        |i| {
            let port = if i % 2 == 0 { 445 } else { 139 };
            v4(
                &addr(i / 2),
                &addr(100_000 + i / 4),
                6,
                &tcp(40000, port, 2, b""),
            )
        },
        80_000,
    );
    assert!(peak <= 4 * 512 + 4, "{peak}");
    // Filled well past one side. The peak depends on the hasher's random seed: 1,026 in 199
    // of 200 runs (1,006 in the other); below 2 x 512, the bound before, in 1 run of 300
    // (862) and once in CI (852).
    assert!(peak > 3 * 512 / 2, "the tables filled: {peak}");
    assert!(evicted(&tables, "scan_infection") > 0, "{tables:?}");
}

#[test]
fn flood_web_scan_and_user_agents() {
    let (_, peak, tables) = flood(
        small(),
        |i| {
            // Two first segments per pair: each pair gets a window line, past its first
            // sighting.
            let req = http_get(&format!("/p{i}/x"), "site.example", &format!("agent-{i}"));
            v4(&addr(i / 2), "198.51.100.7", 6, &tcp(40000, 80, 0x18, &req))
        },
        30_000,
    );
    // Web-scan windows and first sightings (512 each) and the UA cache (1000); the scan
    // tables untouched.
    assert!(peak <= 2 * 512 + 1000 + 4, "{peak}");
    assert!(evicted(&tables, "web_scan") > 0, "{tables:?}");
    assert!(evicted(&tables, "ua_cache") > 0, "{tables:?}");
}

#[test]
fn flood_nxdomain_counters() {
    let (_, peak, tables) = flood(
        small(),
        |i| {
            v4(
                "8.8.8.8",
                "10.0.0.66",
                17,
                &udp(53, 40000, &response(&format!("n{i}.b{i}.com"), 3, &[])),
            )
        },
        40_000,
    );
    // NXDOMAIN counters plus the reply-detection entries of the UDP table.
    assert!(peak <= 1000 + 4, "{peak}");
    assert!(evicted(&tables, "nxdomain") > 0, "{tables:?}");
}

#[test]
fn flood_dns_exhaustion() {
    // Many base domains, and one base domain with endless subdomains.
    let (_, peak, tables) = flood(
        small(),
        |i| {
            v4(
                "10.0.0.66",
                "8.8.8.8",
                17,
                &udp(50000, 53, &query(&format!("s{i}.base{}.com", i % 500))),
            )
        },
        40_000,
    );
    assert!(peak <= 100 + 100 * 1000 + 4, "{peak}");
    assert!(evicted(&tables, "dns_exhaustion") > 0, "{tables:?}");
    let (_, peak, tables) = flood(
        small(),
        |i| {
            v4(
                "10.0.0.66",
                "8.8.8.8",
                17,
                &udp(50000, 53, &query(&format!("s{i}.one.com"))),
            )
        },
        40_000,
    );
    assert!(peak <= 1 + 1000 + 4, "{peak}");
    assert_eq!(evicted(&tables, "dns_exhaustion"), 0, "{tables:?}");
}

#[test]
fn flood_throttle_keys() {
    let mut t = Throttle::new(ThrottleConfig::default());
    let mut p = processor();
    let mut passed = 0usize;
    for i in 0..100_000u32 {
        let f = v4(
            &addr(i),
            "66.66.66.66",
            6,
            &tcp(1234, 443, TcpFlags::SYN, b""),
        );
        p.process(T0 + i64::from(i) * 100, LINKTYPE_RAW, &f, &mut |e| {
            let _ = t.filter(e, &mut |_| passed += 1);
        });
        assert!(t.len() <= 65_536 && t.summarize_len() <= 65_536);
    }
    // Every distinct source's trail hit passed: nothing lost to the bounds.
    assert_eq!(passed, 100_000);
}
