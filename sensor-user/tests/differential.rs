//! One pipeline, whatever the path: one pcap (IP hits with a SYN burst from one source to many
//! ports of one trail address, UDP hits from many sources, DNS/HTTP/TLS trail hits, an
//! NXDOMAIN flood, a port scan, a web scan, UDP requests from many ports and their replies,
//! hits over ICMP, GRE, SCTP and an unnamed protocol)
//! gives the same events (type, trail, addresses, ports, protocol, info with summary lines;
//! timestamps aside, and for the web scan the request that crossed the threshold, see
//! `event_set`) from `replay`, from `run --mode inline` on a veth with the pcap sent by
//! tcpreplay, and from `run --mode mirror` on a 32-queue veth, by ring-buffer copies (a
//! veth has no zero-copy AF_XDP) and over AF_XDP sockets in copy mode with 1 and with 4
//! worker threads. Also a storm: spoofed
//! SYNs from thousands of sources to trail addresses leave the sensor as a bounded number of
//! events, with aggregates that name the trails and the counts.

mod common;
use common::counter;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use xtrail_bench::frames::{dns_nxdomain, dns_query, tcp_flags, tls_client_hello, v4, Frame, L4};
use xtrail_bench::netns::VethPair;

const SENSOR: &str = env!("CARGO_BIN_EXE_xtrail-sensor");

macro_rules! privileged {
    () => {
        if !common::privileged(module_path!()) {
            return;
        }
    };
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("xtrail-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_trails(dir: &Path) -> PathBuf {
    let p = dir.join("trails.csv");
    std::fs::write(
        &p,
        "198.19.66.66,diff botnet (malware),(test)\n\
         198.19.67.67,diff c2 (malware),(test)\n\
         198.19.68.68,diff other (malware),(test)\n\
         evil-diff-xtrail.com,diff domain (malware),(test)\n\
         tls-evil-diff-xtrail.com,diff tls (malware),(test)\n\
         /malicious-diff.php,diff url (malware),(test)\n",
    )
    .unwrap();
    p
}

/// Writes a classic pcap (Ethernet, microsecond timestamps).
fn write_pcap(path: &Path, frames: &[(i64, Vec<u8>)]) {
    let mut f = std::fs::File::create(path).unwrap();
    let mut h = Vec::new();
    h.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    h.extend_from_slice(&2u16.to_le_bytes());
    h.extend_from_slice(&4u16.to_le_bytes());
    h.extend_from_slice(&0i32.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&65_535u32.to_le_bytes());
    h.extend_from_slice(&1u32.to_le_bytes());
    f.write_all(&h).unwrap();
    for (ts_us, data) in frames {
        let mut r = Vec::new();
        r.extend_from_slice(&((ts_us / 1_000_000) as u32).to_le_bytes());
        r.extend_from_slice(&((ts_us % 1_000_000) as u32).to_le_bytes());
        r.extend_from_slice(&(data.len() as u32).to_le_bytes());
        r.extend_from_slice(&(data.len() as u32).to_le_bytes());
        r.extend_from_slice(data);
        f.write_all(&r).unwrap();
    }
}

fn http(path: &str, host: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: Mozilla/5.0\r\nAccept: */*\r\n\r\n")
        .into_bytes()
}

/// The mixed pcap, about 0.7 s of traffic.
fn build_pcap(path: &Path, macs: ([u8; 6], [u8; 6])) {
    let mut frames: Vec<Vec<u8>> = Vec::new();
    let push = |frames: &mut Vec<Vec<u8>>, f: Frame| frames.push(f.macs(macs.0, macs.1).build());
    // A SYN burst from one source to 101 ports of one trail address.
    for port in 1000..=1100u16 {
        push(
            &mut frames,
            Frame::syn(v4("198.18.200.10"), 40_000, v4("198.19.66.66"), port),
        );
    }
    // UDP to a trail address from 20 sources.
    for i in 1..=20u8 {
        let src = v4(&format!("198.18.210.{i}"));
        push(
            &mut frames,
            Frame::udp(src, 5000 + u16::from(i), v4("198.19.67.67"), 9999, b"x"),
        );
    }
    // A trail address reached over other protocols: ICMP, GRE, SCTP and a number with no
    // name (reported by its number, as Maltrail would not name it either).
    push(
        &mut frames,
        Frame::ping(v4("198.18.211.1"), v4("198.19.68.68")),
    );
    for (i, proto) in [47u8, 132, 253].into_iter().enumerate() {
        let ping = Frame::ping(v4(&format!("198.18.211.{}", i + 2)), v4("198.19.68.68"));
        push(
            &mut frames,
            Frame {
                l4: L4::Raw {
                    proto,
                    payload: vec![0x45; 24],
                },
                ..ping
            },
        );
    }
    // Names: DNS, HTTP URL, TLS SNI.
    push(
        &mut frames,
        Frame::udp(
            v4("198.18.201.1"),
            33_333,
            v4("198.18.202.53"),
            53,
            &dns_query(7, "evil-diff-xtrail.com", 1),
        ),
    );
    push(
        &mut frames,
        Frame::tcp(
            v4("198.18.201.2"),
            44_444,
            v4("198.18.202.80"),
            80,
            tcp_flags::PSH | tcp_flags::ACK,
        )
        .with_payload(&http("/malicious-diff.php?x=1", "shop.example.org")),
    );
    push(
        &mut frames,
        Frame::tcp(
            v4("198.18.201.3"),
            45_555,
            v4("198.18.202.44"),
            443,
            tcp_flags::PSH | tcp_flags::ACK,
        )
        .with_payload(&tls_client_hello("tls-evil-diff-xtrail.com")),
    );
    // An NXDOMAIN flood towards one client (one flow: the same client port).
    for i in 0..30u16 {
        let name = format!("q{i}zz.nx-diff-xtrail.com");
        push(
            &mut frames,
            Frame::udp(
                v4("198.18.202.53"),
                53,
                v4("198.18.201.4"),
                40_000,
                &dns_nxdomain(100 + i, &name, 1),
            ),
        );
    }
    // A port scan of a clean host.
    for port in [
        21, 22, 23, 25, 53, 80, 110, 111, 135, 139, 143, 443, 445, 993, 995, 3306, 3389, 5900,
        8080, 8443,
    ] {
        push(
            &mut frames,
            Frame::syn(v4("198.18.203.5"), 41_000, v4("198.18.202.9"), port),
        );
    }
    // A client's requests from 30 ports to one high-port service (STUN), each answered: the
    // replies are not a UDP scan of the client, live (the kernel sends each request's flow
    // start) as in replay.
    for i in 0..30u16 {
        let (client, server) = (v4("198.18.201.7"), v4("198.18.202.34"));
        push(
            &mut frames,
            Frame::udp(client, 50_000 + i, server, 3478, b"stun?"),
        );
        push(
            &mut frames,
            Frame::udp(server, 3478, client, 50_000 + i, b"stun!"),
        );
    }
    // A web scan: many first path segments from one client.
    for (i, seg) in WEB_SCAN_PATHS.iter().enumerate() {
        push(
            &mut frames,
            Frame::tcp(
                v4("198.18.203.6"),
                50_000 + i as u16,
                v4("198.18.202.80"),
                80,
                tcp_flags::PSH | tcp_flags::ACK,
            )
            .with_payload(&http(&format!("/{seg}"), "victim.example.org")),
        );
    }
    let t0 = 1_786_094_062_000_000i64;
    let stamped: Vec<(i64, Vec<u8>)> = frames
        .into_iter()
        .enumerate()
        .map(|(i, f)| (t0 + i as i64 * 3_000, f))
        .collect();
    write_pcap(path, &stamped);
}

/// The first path segments the web scan asks for, one connection each.
const WEB_SCAN_PATHS: [&str; 15] = [
    "admin",
    "wp-login.php",
    "phpmyadmin",
    ".env",
    "backup",
    "config",
    "cgi-bin",
    "login",
    "manager",
    "console",
    "shell",
    "test",
    "old",
    "api",
    "debug",
];

type Key = (String, String, String, u64, String, u64, String, String);

/// The comparable part of each event, counted.
///
/// A web scan event names the request that crossed the threshold (its path and source port).
/// The scan's requests come on separate connections, so over several queues and workers
/// which one crosses depends on arrival order across queues: for that event only the path
/// is checked to be one the scan asked for, and path and port are left out of the key.
fn event_set(log: &Path) -> BTreeMap<Key, usize> {
    let mut out = BTreeMap::new();
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON event line");
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        let web_scan = s("info").contains(xtrail_detect::heuristics::web_scan::INFO);
        let (trail, src_port) = if web_scan {
            let path = s("trail");
            assert!(
                WEB_SCAN_PATHS
                    .iter()
                    .any(|seg| path.ends_with(&format!("/{seg}"))),
                "web scan event on a path the scan did not ask for: {line}"
            );
            (String::from("(a scanned path)"), 0)
        } else {
            (s("trail"), n("src_port"))
        };
        let key = (
            s("type"),
            trail,
            s("src_ip"),
            src_port,
            s("dst_ip"),
            n("dst_port"),
            s("proto"),
            s("info"),
        );
        *out.entry(key).or_insert(0) += 1;
    }
    out
}

fn replay(pcap: &Path, trails: &Path, log: &Path) {
    let st = Command::new(SENSOR)
        .args(["replay", "--pcap"])
        .arg(pcap)
        .arg("--trails")
        .arg(trails)
        .args(["--no-whitelist", "--sensor-name", "diff", "--events-log"])
        .arg(log)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
}

/// Runs the sensor on `pair`, sends `pcap` with tcpreplay from the peer, stops the sensor.
fn live(pair: &VethPair, pcap: &Path, trails: &Path, log: &Path, extra: &[&str]) -> String {
    let mut args = vec!["--no-whitelist", "--maltrail-syn-rules"];
    args.extend_from_slice(extra);
    let watched = common::start_sensor(pair, trails, log, "diff", &args);
    let xdebug = format!("--intf1={}", pair.peer_if);
    // One CPU sends the whole pcap, and so receives it (veth runs the receive path on the
    // sending CPU): the kernel batches flow starts per CPU, so packets spread over CPUs reach
    // the scan heuristics in batch order, not packet order (README, scan heuristics), and a
    // scan event could name another port than the replay's.
    // SAFETY: sched_getcpu(3) takes no arguments and only returns a number.
    let cpu = unsafe { libc::sched_getcpu() }.max(0).to_string();
    let out = pair
        .in_peer_ns("taskset")
        .args(["-c", &cpu, "tcpreplay", "-q", &xdebug])
        .arg(pcap)
        .output()
        .expect("tcpreplay (Debian package tcpreplay; `cargo xtask deps` installs it)");
    assert!(
        out.status.success(),
        "tcpreplay: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Let the last packets through the pipeline, then stop (summaries are written at exit).
    std::thread::sleep(Duration::from_millis(1500));
    common::stop_sensor(watched)
}

fn diff(a: &BTreeMap<Key, usize>, b: &BTreeMap<Key, usize>) -> String {
    let mut s = String::new();
    for (k, n) in a {
        if b.get(k) != Some(n) {
            s.push_str(&format!(
                "  only/more in first ({n} vs {:?}): {k:?}\n",
                b.get(k)
            ));
        }
    }
    for (k, n) in b {
        if !a.contains_key(k) {
            s.push_str(&format!("  only in second ({n}): {k:?}\n"));
        }
    }
    s
}

#[test]
fn replay_inline_and_mirror_on_32_queues_give_the_same_events() {
    privileged!();
    let dir = tempdir("diff");
    let trails = write_trails(&dir);
    let pair = VethPair::create_with_queues("df", 32).expect("veth with 32 queues");
    let pcap = dir.join("mix.pcap");
    build_pcap(&pcap, (pair.peer_mac, pair.sensor_mac));

    let replayed = dir.join("replay.json");
    replay(&pcap, &trails, &replayed);
    let want = event_set(&replayed);
    // The pcap raises every kind it is built for.
    let infos: Vec<&str> = want.keys().map(|k| k.7.as_str()).collect();
    for needle in [
        "diff botnet (malware) (summary: 98 more in 60s)",
        "diff c2 (malware)",
        "diff domain (malware)",
        "diff url (malware)",
        "diff tls (malware)",
        "excessive no such domain",
        "potential port scanning",
        "potential web scanning",
    ] {
        assert!(
            infos.iter().any(|i| i.contains(needle)),
            "replay lacks {needle:?}: {want:#?}"
        );
    }
    assert!(
        !infos.iter().any(|i| i.contains("udp scanning")),
        "{want:#?}"
    );
    // Each of the other protocols' hits, named as Maltrail names them.
    for proto in ["ICMP", "GRE", "SCTP", "253"] {
        assert!(
            want.keys()
                .any(|k| k.4 == "198.19.68.68" && k.6 == proto && k.7 == "diff other (malware)"),
            "replay lacks the {proto} hit: {want:#?}"
        );
    }

    let inline_log = dir.join("inline.json");
    let stats = live(&pair, &pcap, &trails, &inline_log, &["--mode", "inline"]);
    let got = event_set(&inline_log);
    assert!(
        got == want,
        "inline differs from replay:\n{}\n{stats}",
        diff(&want, &got)
    );

    // Mirror on a veth (no zero-copy AF_XDP): by ring-buffer copies, as inline.
    let log = dir.join("mirror-ring.json");
    let stats = live(&pair, &pcap, &trails, &log, &["--mode", "mirror"]);
    assert_eq!(counter(&stats, "handoff_failed"), 0, "{stats}");
    assert!(counter(&stats, "copied") > 0, "{stats}");
    assert_eq!(counter(&stats, "redirected"), 0, "{stats}");
    assert_eq!(counter(&stats, "xsk_frames"), 0, "{stats}");
    let got = event_set(&log);
    assert!(
        got == want,
        "mirror by ring-buffer copies differs from replay:\n{}\n{stats}",
        diff(&want, &got)
    );

    // And over AF_XDP sockets in copy mode.
    for workers in ["1", "4"] {
        let log = dir.join(format!("mirror-{workers}.json"));
        let stats = live(
            &pair,
            &pcap,
            &trails,
            &log,
            &["--mode", "mirror", "--afxdp-copy", "--workers", workers],
        );
        assert_eq!(counter(&stats, "queue_full"), 0, "{stats}");
        assert_eq!(counter(&stats, "xsk_dropped"), 0, "{stats}");
        assert_eq!(counter(&stats, "handoff_failed"), 0, "{stats}");
        // The frames really came over AF_XDP, not by the ring-buffer fallback.
        assert!(counter(&stats, "xsk_frames") > 0, "{stats}");
        assert_eq!(counter(&stats, "copied"), 0, "{stats}");
        assert_eq!(
            counter(&stats, "redirected"),
            counter(&stats, "xsk_frames"),
            "{stats}"
        );
        let got = event_set(&log);
        assert!(
            got == want,
            "mirror with {workers} worker(s) differs from replay:\n{}\n{stats}",
            diff(&want, &got)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_spoofed_syn_storm_leaves_the_sensor_as_a_bounded_stream() {
    privileged!();
    let dir = tempdir("storm");
    let trails = write_trails(&dir);
    let pair = VethPair::create("st").expect("veth");
    let log = dir.join("storm.json");
    let watched = common::start_sensor(
        &pair,
        &trails,
        &log,
        "storm",
        &["--no-whitelist", "--event-budget", "500"],
    );
    // 60,000 SYNs from 60,000 spoofed sources to two trail addresses, about 2 s.
    let inj = pair.injector().expect("injector");
    let mut sent = 0u64;
    let started = std::time::Instant::now();
    for chunk in 0..600u32 {
        let frames: Vec<Vec<u8>> = (0..100u32)
            .map(|i| {
                let n = chunk * 100 + i;
                let src = v4(&format!("198.18.{}.{}", 100 + (n >> 8) % 100, n & 0xff));
                let dst = if n % 2 == 0 {
                    "198.19.66.66"
                } else {
                    "198.19.67.67"
                };
                Frame::syn(src, 1024 + (n % 50_000) as u16, v4(dst), 443)
                    .macs(pair.peer_mac, pair.sensor_mac)
                    .build()
            })
            .collect();
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        sent += inj.send_batch(&refs).unwrap_or(0) as u64;
        if started.elapsed() > Duration::from_secs(20) {
            break;
        }
        std::thread::sleep(Duration::from_millis(3));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let last = common::stop_sensor(watched);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(sent >= 50_000, "sent {sent}");
    // Bounded: about the first 50 sources of each trail, then one aggregate per trail.
    assert!(
        lines.len() <= 150,
        "{} events for {sent} SYNs\n{last}",
        lines.len()
    );
    for trail in ["198.19.66.66", "198.19.67.67"] {
        let agg: Vec<&str> = lines
            .iter()
            .filter(|e| e["trail"] == trail)
            .filter_map(|e| e["info"].as_str())
            .filter(|i| i.contains("flood:"))
            .collect();
        assert_eq!(agg.len(), 1, "{trail}: {agg:?}");
        let n: u64 = agg[0]
            .split("flood: ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|s| s.parse().ok())
            .unwrap();
        let passed = lines.iter().filter(|e| e["trail"] == trail).count() as u64 - 1;
        let reported = counter(&last, "reported");
        assert!(
            n + passed > 0 && n + passed <= reported,
            "{n} + {passed} vs {reported}\n{last}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
