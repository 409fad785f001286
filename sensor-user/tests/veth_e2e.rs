//! End to end on a veth pair: the real `xtrail-sensor run` binary attached to one end inside
//! a fresh namespace, frames sent from the other end, events read from its log.

mod common;
use common::{counter, events, tempdir};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use xtrail_bench::child::Watched;
use xtrail_bench::frames::{tcp_flags, v4, v6, Frame};
use xtrail_bench::netns::VethPair;

const SENSOR: &str = env!("CARGO_BIN_EXE_xtrail-sensor");

macro_rules! privileged {
    () => {
        if !common::privileged(module_path!()) {
            return;
        }
    };
}

/// A running sensor named "e2e".
struct Running(Watched);

impl Running {
    /// Starts the sensor and waits until it has attached.
    fn start(pair: &VethPair, trails: &Path, log: &Path, extra: &[&str]) -> Running {
        Running(common::start_sensor(pair, trails, log, "e2e", extra))
    }

    /// SIGINT, wait for a clean exit, return the final stats line.
    fn stop(self) -> String {
        common::stop_sensor(self.0)
    }
}

fn wait_for_events(log: &Path, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ev = events(log);
        if ev.len() >= n || Instant::now() > deadline {
            return ev;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn write_trails(dir: &Path, extra: &str) -> std::path::PathBuf {
    let p = dir.join("trails.csv");
    std::fs::write(
        &p,
        format!(
            "198.19.66.66,e2e botnet (malware),(test)\n\
             198.19.77.77,e2e scanner (suspicious),(test)\n\
             198.19.6.6:8443,e2e rat (malware),(test)\n\
             198.19.128.0/24,e2e scanners (suspicious),(test)\n\
             2001:db8:bad::1,e2e v6 c2 (malware),(test)\n\
             evil-e2e-xtrail.com,e2e domain (malware),(test)\n\
             tls-evil-e2e-xtrail.com,e2e tls (malware),(test)\n\
             /malicious-e2e.php,e2e url (malware),(test)\n\
             quic-evil-e2e-xtrail.com,e2e quic (malware),(test)\n\
             {extra}"
        ),
    )
    .expect("write trails");
    p
}

/// A fresh veth pair named `veth` with MTU `mtu` on both ends, the test trails and an events
/// log path in a directory named after `tag`: (the trails, the log, the pair).
fn with_mtu(tag: &str, veth: &str, mtu: u32) -> (PathBuf, PathBuf, VethPair) {
    let dir = tempdir(tag);
    let trails = write_trails(&dir, "");
    let pair = VethPair::create(veth).expect("veth pair");
    pair.set_mtu(mtu).expect("mtu on both ends");
    (trails, dir.join("events.jsonl"), pair)
}

/// The sensor started on a fresh veth pair named `veth` with the test trails (and rows
/// `extra_trails`) and `args`, writing its events to a log in a directory named after
/// `tag`: (the log, the pair, the sensor).
fn live(tag: &str, extra_trails: &str, veth: &str, args: &[&str]) -> (PathBuf, VethPair, Running) {
    let dir = tempdir(tag);
    let trails = write_trails(&dir, extra_trails);
    let log = dir.join("events.jsonl");
    let pair = VethPair::create(veth).expect("veth pair");
    let sensor = Running::start(&pair, &trails, &log, args);
    (log, pair, sensor)
}

#[test]
fn trail_traffic_is_reported_and_clean_traffic_is_not() {
    privileged!();
    let (log, pair, sensor) = live("e2e", "", "xe", &[]);
    let inj = pair.injector().expect("injector");
    let me = v4(&pair.peer_ip);
    let there = v4(&pair.sensor_ip);
    // Clean traffic first: nothing may be reported for it.
    for i in 0..50u16 {
        inj.send(&Frame::syn(me, 30000 + i, there, 80).build())
            .unwrap();
        inj.send(&Frame::udp(me, 30000 + i, there, 53, b"x").build())
            .unwrap();
    }
    let frames = [
        Frame::syn(me, 40000, v4("198.19.66.66"), 443), // destination IP
        Frame::syn(v4("198.19.77.77"), 40001, there, 22), // source IP
        Frame::syn(v4("198.19.66.66"), 40009, there, 22), // from a malware host: reported live
        Frame::syn(me, 40002, v4("198.19.6.6"), 8443),  // IP:port
        Frame::syn(me, 40003, v4("198.19.128.9"), 80),  // CIDR
        Frame::syn(v6("2001:db8::2"), 40004, v6("2001:db8:bad::1"), 443), // IPv6
        Frame::tcp(me, 40005, v4("198.19.66.66"), 443, tcp_flags::ACK), // not reportable
        Frame::syn(me, 40006, v4("198.19.6.6"), 8444),  // wrong port: clean
    ];
    for f in &frames {
        inj.send(&f.build()).unwrap();
    }
    let ev = wait_for_events(&log, 6);
    let stats = sensor.stop();
    assert_eq!(ev.len(), 6, "events: {ev:#?}");
    let find = |trail: &str| {
        ev.iter()
            .find(|e| e["trail"] == trail)
            .unwrap_or_else(|| panic!("no event for {trail}: {ev:#?}"))
    };
    let dst = ev
        .iter()
        .find(|e| e["trail"] == "198.19.66.66" && e["dst_ip"] == "198.19.66.66")
        .expect("destination hit");
    assert_eq!(dst["type"], "IP");
    assert_eq!(dst["info"], "e2e botnet (malware)");
    assert_eq!(dst["reference"], "(test)");
    assert_eq!(dst["proto"], "TCP");
    assert_eq!(dst["dst_port"], 443);
    assert_eq!(dst["severity"], "high");
    assert_eq!(dst["action"], "pass");
    assert_eq!(dst["sensor"], "e2e");
    assert!(dst["ts"].as_str().unwrap().ends_with('Z'));
    assert!(ev
        .iter()
        .any(|e| e["trail"] == "198.19.77.77" && e["src_ip"] == "198.19.77.77"));
    assert_eq!(find("198.19.6.6:8443")["type"], "IPORT");
    assert_eq!(find("198.19.128.9")["info"], "e2e scanners (suspicious)");
    assert_eq!(find("2001:db8:bad::1")["src_ip"], "2001:db8::2");
    assert!(counter(&stats, "packets") >= 107, "{stats}");
    assert_eq!(counter(&stats, "reported"), 6, "{stats}");
    assert_eq!(counter(&stats, "filtered"), 0, "{stats}");
    assert!(
        !pair.sensor_has_xdp().unwrap(),
        "XDP program left on the interface"
    );
}

#[test]
fn enforce_drops_trail_packets_and_passes_the_rest() {
    privileged!();
    let dir = tempdir("enforce");
    let pair = VethPair::create("xf").expect("veth pair");
    // Give the sensor's end a second address that is a trail, so a ping to it shows whether
    // packets to trail addresses still get through.
    let trail_ip = format!(
        "{}.66",
        pair.sensor_ip.rsplit_once('.').map(|(net, _)| net).unwrap()
    );
    let out = Command::new("ip")
        .args([
            "-n",
            &pair.sensor_ns,
            "addr",
            "add",
            &format!("{trail_ip}/32"),
            "dev",
            &pair.sensor_if,
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let trails = write_trails(
        &dir,
        &format!("{trail_ip},e2e blocked host (malware),(test)\n"),
    );
    let log = dir.join("events.jsonl");
    let ping = |dst: &str| {
        pair.in_peer_ns("ping")
            .args(["-c", "1", "-W", "1", dst])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    // Without the sensor, both answer.
    assert!(ping(&pair.sensor_ip));
    assert!(ping(&trail_ip));
    let sensor = Running::start(&pair, &trails, &log, &["--enforce"]);
    assert!(ping(&pair.sensor_ip), "clean traffic must pass");
    assert!(
        !ping(&trail_ip),
        "traffic to a trail address must be dropped"
    );
    let ev = wait_for_events(&log, 1);
    let stats = sensor.stop();
    assert!(
        ev.iter()
            .any(|e| e["trail"] == trail_ip.as_str() && e["action"] == "drop"),
        "{ev:#?}"
    );
    assert!(counter(&stats, "enforced") >= 1, "{stats}");
    assert!(!pair.sensor_has_xdp().unwrap());
    // Detached: the trail address answers again.
    assert!(ping(&trail_ip));
}

#[test]
fn clear_errors_for_bad_arguments() {
    privileged!();
    let dir = tempdir("errors");
    let trails = write_trails(&dir, "");
    let run = |args: &[&str]| {
        let out = Command::new(SENSOR).args(args).output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let t = trails.to_string_lossy().into_owned();
    assert!(run(&["run", "--iface", "nosuchif0", "--trails", &t])
        .contains("unknown interface nosuchif0"));
    assert!(
        run(&["run", "--iface", "lo", "--trails", "/nonexistent/trails"])
            .contains("/nonexistent/trails")
    );
    let only_domains = dir.join("domains.csv");
    std::fs::write(&only_domains, "evil.example,x (malware),(test)\n").unwrap();
    let msg = run(&[
        "run",
        "--iface",
        "lo",
        "--trails",
        &only_domains.to_string_lossy(),
    ]);
    assert!(msg.contains("no IP, CIDR or IP:port trails"), "{msg}");
    // Mirror mode with flags it cannot take together.
    for (extra, says) in [
        (&["--enforce"][..], "--enforce needs --mode inline"),
        (&["--no-afxdp", "--afxdp-copy"][..], "cannot be used with"),
    ] {
        let mut args = vec!["run", "--iface", "lo", "--trails", &t, "--mode", "mirror"];
        args.extend_from_slice(extra);
        let msg = run(&args);
        assert!(msg.contains(says), "{msg}");
    }
}

#[test]
fn dns_http_and_tls_names_are_matched_and_traffic_still_arrives() {
    privileged!();
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream, UdpSocket};
    use xtrail_bench::frames::{dns_query, tls_client_hello};
    use xtrail_bench::netns::in_ns;

    let dir = tempdir("names");
    let trails = write_trails(&dir, "");
    let log = dir.join("events.jsonl");
    let pair = VethPair::create("xn").expect("veth pair");
    let server_ip = pair.sensor_ip.clone();
    // Responders in the sensor's namespace: DNS on UDP 53, HTTP on 80, "TLS" on 443. Each
    // answers a bounded number of requests, then stops.
    let udp_ip = server_ip.clone();
    let dns_server = in_ns(&pair.sensor_ns, move || -> usize {
        let sock = UdpSocket::bind((udp_ip.as_str(), 53)).expect("bind 53");
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut answered = 0;
        let mut buf = [0u8; 512];
        while answered < 3 {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                break;
            };
            let mut reply = buf[..n].to_vec();
            reply[2] |= 0x80; // QR: response (no answers: enough for the client)
            let _ = sock.send_to(&reply, from);
            answered += 1;
        }
        answered
    });
    let tcp_ip = server_ip.clone();
    let tcp_server = in_ns(&pair.sensor_ns, move || -> usize {
        let http = TcpListener::bind((tcp_ip.as_str(), 80)).expect("bind 80");
        let tls = TcpListener::bind((tcp_ip.as_str(), 443)).expect("bind 443");
        let mut served = 0;
        for listener in [&http, &tls] {
            let (mut conn, _) = listener.accept().expect("accept");
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut buf = [0u8; 2048];
            if conn.read(&mut buf).unwrap_or(0) > 0 {
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                served += 1;
            }
        }
        served
    });
    let sensor = Running::start(&pair, &trails, &log, &[]);
    let client_ip = server_ip.clone();
    let client = in_ns(&pair.peer_ns, move || -> (usize, bool, bool) {
        let sock = UdpSocket::bind("0.0.0.0:0").expect("udp client");
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut answers = 0;
        for (i, name) in [
            "evil-e2e-xtrail.com",
            "www.evil-e2e-xtrail.com",
            "clean-e2e-xtrail.com",
        ]
        .iter()
        .enumerate()
        {
            sock.send_to(
                &dns_query(0x100 + i as u16, name, 1),
                (client_ip.as_str(), 53),
            )
            .unwrap();
            let mut buf = [0u8; 512];
            if sock.recv_from(&mut buf).is_ok() {
                answers += 1;
            }
        }
        let quic = xtrail_bench::frames::quic_client_initial("quic-evil-e2e-xtrail.com");
        sock.send_to(&quic, (client_ip.as_str(), 443)).unwrap();
        let mut http = TcpStream::connect((client_ip.as_str(), 80)).expect("connect 80");
        http.write_all(b"GET /malicious-e2e.php?id=1 HTTP/1.1\r\nHost: shop-e2e.example\r\nUser-Agent: e2e\r\n\r\n").unwrap();
        let mut reply = String::new();
        http.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let _ = http.read_to_string(&mut reply);
        let mut tls = TcpStream::connect((client_ip.as_str(), 443)).expect("connect 443");
        tls.write_all(&tls_client_hello("tls-evil-e2e-xtrail.com"))
            .unwrap();
        let mut tls_reply = Vec::new();
        tls.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let _ = tls.read_to_end(&mut tls_reply);
        (
            answers,
            reply.starts_with("HTTP/1.1 200"),
            !tls_reply.is_empty(),
        )
    });
    let (answers, http_ok, tls_ok) = client.join().unwrap().unwrap();
    let ev = wait_for_events(&log, 5);
    let stats = sensor.stop();
    assert_eq!(dns_server.join().unwrap().unwrap(), 3);
    assert_eq!(tcp_server.join().unwrap().unwrap(), 2);
    assert_eq!(answers, 3, "DNS answers must still arrive in inline mode");
    assert!(
        http_ok && tls_ok,
        "HTTP and TLS must still reach the server in inline mode"
    );
    let trails_seen: Vec<&str> = ev.iter().filter_map(|e| e["trail"].as_str()).collect();
    assert!(trails_seen.contains(&"evil-e2e-xtrail.com"), "{ev:#?}");
    assert!(
        trails_seen.contains(&"(www).evil-e2e-xtrail.com"),
        "{ev:#?}"
    );
    assert!(
        trails_seen.iter().any(|t| t.contains("malicious-e2e.php")),
        "{ev:#?}"
    );
    assert!(trails_seen.contains(&"tls-evil-e2e-xtrail.com"), "{ev:#?}");
    assert!(
        !trails_seen.iter().any(|t| t.contains("clean-e2e")),
        "{ev:#?}"
    );
    let dns = ev
        .iter()
        .find(|e| e["trail"] == "evil-e2e-xtrail.com")
        .unwrap();
    assert_eq!(dns["type"], "DNS");
    assert_eq!(dns["dst_port"], 53);
    assert!(counter(&stats, "copied") >= 5, "{stats}");
    assert!(counter(&stats, "handoff_dns") >= 3, "{stats}");
}

#[test]
fn mirror_mode_copies_frames_longer_than_a_socket_frame() {
    privileged!();
    // Room for frames longer than an AF_XDP frame takes, within XDP's page on a veth.
    let (trails, log, pair) = with_mtu("mirror-long", "xj", 3000);
    let sensor = Running::start(&pair, &trails, &log, &["--mode", "mirror", "--afxdp-copy"]);
    let inj = pair.injector().expect("injector");
    let (me, there) = (v4(&pair.peer_ip), v4(&pair.sensor_ip));
    // A request for a trail URL in a frame of exactly `len` bytes, to `port` (a port of its
    // own per frame: each is its own event).
    let frame_of = |len: usize, port: u16| {
        let head = |pad: usize| {
            format!(
                "GET /malicious-e2e.php HTTP/1.1\r\nHost: shop-e2e-xtrail.com\r\nX-Pad: {}\r\n\r\n",
                "a".repeat(pad)
            )
        };
        let bare = Frame::tcp(me, port, there, port, tcp_flags::PSH | tcp_flags::ACK)
            .with_payload(head(0).as_bytes())
            .build()
            .len();
        let frame = Frame::tcp(me, port, there, port, tcp_flags::PSH | tcp_flags::ACK)
            .with_payload(head(len - bare).as_bytes())
            .build();
        assert_eq!(frame.len(), len);
        frame
    };
    // The longest frame a socket takes with the XDP program's 16 bytes before it, one byte
    // more, and one longer than a socket's whole frame.
    let fits = xtrail_common::XSK_FRAME_ROOM as usize - xtrail_common::XSK_META_LEN;
    for (len, port) in [(fits, 80), (fits + 1, 8080), (2400, 8000)] {
        inj.send(&frame_of(len, port)).unwrap();
    }
    let ev = wait_for_events(&log, 3);
    let stats = sensor.stop();
    let ports: std::collections::BTreeSet<u64> = ev
        .iter()
        .filter(|e| {
            e["trail"]
                .as_str()
                .is_some_and(|t| t.contains("malicious-e2e.php"))
        })
        .filter_map(|e| e["dst_port"].as_u64())
        .collect();
    assert_eq!(ports, [80, 8000, 8080].into(), "{ev:#?}\n{stats}");
    // The longer two copied to the ring, not redirected to a socket that would drop them.
    assert_eq!(counter(&stats, "copied"), 2, "{stats}");
    assert_eq!(counter(&stats, "redirected"), 1, "{stats}");
    assert_eq!(counter(&stats, "xsk_dropped"), 0, "{stats}");
}

#[test]
fn mirror_mode_hands_names_to_afxdp_workers() {
    privileged!();
    // A veth has no zero-copy AF_XDP: its sockets only with --afxdp-copy.
    let stats = mirror_names("xm", &["--mode", "mirror", "--afxdp-copy"]);
    assert_eq!(counter(&stats, "redirected"), 5, "{stats}");
    assert_eq!(counter(&stats, "xsk_frames"), 5, "{stats}");
    assert_eq!(counter(&stats, "copied"), 0, "{stats}");
}

#[test]
fn mirror_mode_without_zero_copy_hands_names_over_by_ring_copy() {
    privileged!();
    let stats = mirror_names("xr", &["--mode", "mirror"]);
    assert_eq!(counter(&stats, "redirected"), 0, "{stats}");
    assert_eq!(counter(&stats, "xsk_frames"), 0, "{stats}");
    assert_eq!(counter(&stats, "copied"), 5, "{stats}");
    assert_eq!(counter(&stats, "payloads"), 5, "{stats}");
}

/// `--xdp-mode auto` falls back to generic (skb) XDP where the driver refuses the program (a
/// veth whose peer's MTU is too large for a single-buffer XDP program): mirror then opens no
/// socket (generic XDP has no zero-copy AF_XDP), says so, and hands over by ring copy.
#[test]
fn mirror_after_auto_fell_back_to_generic_xdp_hands_over_by_ring_copy() {
    privileged!();
    use xtrail_bench::frames::dns_query;

    let (trails, log, pair) = with_mtu("mirror-generic", "xg", 9000);
    let args = ["--mode", "mirror", "--xdp-mode", "auto"];
    let (sensor, lines) = common::start_sensor_said(&pair, &trails, &log, "e2e", &args);
    let said = lines.join("\n");
    assert!(said.contains("(skb mode, mirror mode)"), "{said}");
    assert!(
        said.contains(&format!(
            "{}: generic (skb) XDP has no zero-copy AF_XDP",
            pair.sensor_if
        )),
        "{said}"
    );
    // No socket was tried (a veth would have refused a zero-copy bind).
    assert!(!said.contains("AF_XDP socket(s)"), "{said}");
    assert!(!said.contains("no zero-copy AF_XDP ("), "{said}");
    assert!(!said.contains("AF_XDP sockets unavailable"), "{said}");
    let inj = pair.injector().expect("injector");
    let query = dns_query(9, "www.evil-e2e-xtrail.com", 1);
    let frame = Frame::udp(v4(&pair.peer_ip), 40000, v4(&pair.sensor_ip), 53, &query);
    inj.send(&frame.build()).unwrap();
    let ev = wait_for_events(&log, 1);
    let stats = common::stop_sensor(sensor);
    assert_eq!(ev.len(), 1, "{ev:#?}");
    assert_eq!(ev[0]["trail"], "(www).evil-e2e-xtrail.com", "{ev:#?}");
    assert_eq!(counter(&stats, "redirected"), 0, "{stats}");
    assert_eq!(counter(&stats, "copied"), 1, "{stats}");
}

/// A mirror-mode sensor started with `args` on veth pair `veth` gets a DNS query, an HTTP
/// request, a TLS ClientHello and a QUIC Initial naming trails, a SYN to a trail address
/// and a clean DNS query; the five events are checked, the final stats line returned.
fn mirror_names(veth: &str, args: &[&str]) -> String {
    use xtrail_bench::frames::{dns_query, quic_client_initial, tls_client_hello};

    let (log, pair, sensor) = live(veth, "", veth, args);
    let inj = pair.injector().expect("injector");
    let me = v4(&pair.peer_ip);
    let there = v4(&pair.sensor_ip);
    let http = b"GET /malicious-e2e.php HTTP/1.1\r\nHost: shop-e2e-xtrail.com\r\n\r\n";
    let frames = [
        Frame::udp(
            me,
            40000,
            there,
            53,
            &dns_query(7, "www.evil-e2e-xtrail.com", 1),
        ),
        Frame::tcp(me, 40001, there, 80, tcp_flags::PSH | tcp_flags::ACK).with_payload(http),
        Frame::tcp(me, 40002, there, 443, tcp_flags::PSH | tcp_flags::ACK)
            .with_payload(&tls_client_hello("tls-evil-e2e-xtrail.com")),
        Frame::syn(me, 40003, v4("198.19.66.66"), 443),
        Frame::udp(
            me,
            40004,
            there,
            53,
            &dns_query(8, "clean-e2e-xtrail.com", 1),
        ),
        Frame::udp(
            me,
            40005,
            there,
            443,
            &quic_client_initial("quic-evil-e2e-xtrail.com"),
        ),
    ];
    for f in &frames {
        inj.send(&f.build()).unwrap();
    }
    let ev = wait_for_events(&log, 5);
    let stats = sensor.stop();
    let trails_seen: Vec<&str> = ev.iter().filter_map(|e| e["trail"].as_str()).collect();
    assert!(
        trails_seen.contains(&"(www).evil-e2e-xtrail.com"),
        "{ev:#?}"
    );
    assert!(
        trails_seen.iter().any(|t| t.contains("malicious-e2e.php")),
        "{ev:#?}"
    );
    assert!(trails_seen.contains(&"tls-evil-e2e-xtrail.com"), "{ev:#?}");
    assert!(trails_seen.contains(&"quic-evil-e2e-xtrail.com"), "{ev:#?}");
    assert!(trails_seen.contains(&"198.19.66.66"), "{ev:#?}");
    assert_eq!(ev.len(), 5, "{ev:#?}");
    assert!(
        ev.iter().all(|e| e["iface"] == pair.sensor_if.as_str()),
        "{ev:#?}"
    );
    // The XDP program's address verdict came with each frame (no address is a trail): none
    // was looked up again.
    assert_eq!(counter(&stats, "addresses_vouched"), 5, "{stats}");
    // Mirror mode: everything is consumed at the sensor (dropped or redirected).
    assert_eq!(counter(&stats, "pass"), 0, "{stats}");
    stats
}

#[test]
fn port_scan_and_nxdomain_burst_are_flagged_live() {
    privileged!();
    use xtrail_bench::frames::dns_nxdomain;

    let (log, pair, sensor) = live("heur", "", "xh", &[]);
    let inj = pair.injector().expect("injector");
    let scanner = v4("198.18.222.9");
    let there = v4(&pair.sensor_ip);
    // An ACK sweep first: not a scan.
    for port in 2000..2030u16 {
        inj.send(&Frame::tcp(scanner, 40000, there, port, tcp_flags::ACK).build())
            .unwrap();
    }
    // A SYN scan over 20 ports.
    for port in 1000..1020u16 {
        inj.send(&Frame::syn(scanner, 40000 + port, there, port).build())
            .unwrap();
    }
    // 25 NXDOMAIN answers for names under one base domain.
    let resolver = v4("198.18.222.53");
    for i in 0..25u16 {
        let name = format!("q{i}.nx-e2e-xtrail.com");
        let f = Frame::udp(resolver, 53, there, 33000 + i, &dns_nxdomain(i, &name, 1));
        inj.send(&f.build()).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut ev = Vec::new();
    while Instant::now() < deadline {
        ev = events(&log);
        let infos: Vec<&str> = ev.iter().filter_map(|e| e["info"].as_str()).collect();
        if infos.iter().any(|i| i.contains("port scanning"))
            && infos.iter().any(|i| i.contains("no such domain"))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let stats = sensor.stop();
    let scans: Vec<_> = ev
        .iter()
        .filter(|e| {
            e["info"]
                .as_str()
                .is_some_and(|i| i.contains("port scanning"))
        })
        .collect();
    assert_eq!(scans.len(), 1, "{ev:#?}");
    assert_eq!(scans[0]["src_ip"], "198.18.222.9");
    assert_eq!(scans[0]["reference"], "(heuristic)");
    assert!(
        ev.iter().any(|e| e["info"]
            .as_str()
            .is_some_and(|i| i.contains("excessive no such domain"))),
        "{ev:#?}"
    );
    assert!(counter(&stats, "flow_starts") >= 20, "{stats}");
}

#[test]
fn maltrail_syn_rules_are_opt_in_live() {
    privileged!();
    let (log, pair, sensor) = live("synrules", "", "xr", &["--maltrail-syn-rules"]);
    let inj = pair.injector().expect("injector");
    let there = v4(&pair.sensor_ip);
    // From a malware host: silent under Maltrail's rules; from a scanner: reported.
    inj.send(&Frame::syn(v4("198.19.66.66"), 40000, there, 22).build())
        .unwrap();
    inj.send(&Frame::syn(v4("198.19.77.77"), 40001, there, 22).build())
        .unwrap();
    let ev = wait_for_events(&log, 1);
    std::thread::sleep(Duration::from_millis(300));
    let stats = sensor.stop();
    let ev2 = events(&log);
    assert_eq!(ev2.len(), 1, "{ev:#?}");
    assert_eq!(ev2[0]["trail"], "198.19.77.77");
    assert_eq!(counter(&stats, "filtered"), 1, "{stats}");
}

/// Issue 10 item 5, live: port 53 is no free pass. A datagram to a listed address on port
/// 53 without a DNS header is reported by the kernel as IP; a DNS query is `ip (query)` from
/// userspace; a plausible header whose question does not parse is handed over and reported
/// as IP by userspace. Replay reports the same (`replay_semantics.rs`).
#[test]
fn port_53_without_a_dns_message_is_reported_live() {
    privileged!();
    use xtrail_bench::frames::dns_query;
    let (log, pair, sensor) = live("p53", "", "x5", &[]);
    let inj = pair.injector().expect("injector");
    let trail = v4("198.19.66.66");
    let mut broken = dns_query(3, "broken-e2e.net", 1);
    broken.truncate(14);
    // One source address per case: nothing is collapsed as a repeat.
    let frames = [
        Frame::udp(
            v4("198.18.201.2"),
            40000,
            trail,
            53,
            b"\x17\x03\x03\x00\x10tunnel",
        ),
        Frame::udp(
            v4("198.18.201.3"),
            40001,
            trail,
            53,
            &dns_query(2, "www.clean-e2e.net", 1),
        ),
        Frame::udp(v4("198.18.201.4"), 40002, trail, 53, &broken),
        Frame::udp(
            trail,
            53,
            v4("198.18.201.5"),
            40003,
            b"\xde\xad\xbe\xef\0\0",
        ),
    ];
    for f in &frames {
        inj.send(&f.build()).unwrap();
    }
    wait_for_events(&log, 4);
    std::thread::sleep(Duration::from_millis(300));
    let stats = sensor.stop();
    let ev = events(&log);
    let mut got: Vec<(String, String)> = ev
        .iter()
        .map(|e| {
            (
                e["src_ip"].as_str().unwrap().to_owned(),
                e["trail"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("198.18.201.2".into(), "198.19.66.66".into()),
            (
                "198.18.201.3".into(),
                "198.19.66.66 (www.clean-e2e.net)".into()
            ),
            ("198.18.201.4".into(), "198.19.66.66".into()),
            ("198.19.66.66".into(), "198.19.66.66".into()),
        ],
        "{ev:#?}"
    );
    assert_eq!(counter(&stats, "port53_not_dns"), 2, "{stats}");
    assert_eq!(counter(&stats, "reported"), 2, "{stats}");
}

/// Issue 10 item 3, live (inline mode): a Chrome-sized ClientHello (X25519MLKEM768 key
/// share) sent by a real TCP socket in two writes (TCP_NODELAY), its server name in the
/// second segment. The XDP program follows the flow and copies the second segment too;
/// userspace reassembles the record and reports the name.
#[test]
fn split_client_hello_is_reassembled_live() {
    privileged!();
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use xtrail_bench::frames::{chrome_client_hello, chrome_sni_offset};
    use xtrail_bench::netns::in_ns;

    let sni = "tls-split-e2e-xtrail.com";
    let dir = tempdir("split");
    let trails = write_trails(&dir, &format!("{sni},e2e split tls (malware),(test)\n"));
    let log = dir.join("events.jsonl");
    let pair = VethPair::create("x3").expect("veth pair");
    let server_ip = pair.sensor_ip.clone();
    let hello = chrome_client_hello(sni);
    const FIRST: usize = 1000;
    assert!(chrome_sni_offset(&hello, sni) > FIRST);
    let want = hello.len();
    let srv_ip = server_ip.clone();
    let server = in_ns(&pair.sensor_ns, move || -> usize {
        let l = TcpListener::bind((srv_ip.as_str(), 443)).expect("bind 443");
        let (mut conn, _) = l.accept().expect("accept");
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut got = 0;
        let mut buf = [0u8; 4096];
        while got < want {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        got
    });
    let sensor = Running::start(&pair, &trails, &log, &[]);
    let client = in_ns(&pair.peer_ns, move || {
        let mut s = TcpStream::connect((server_ip.as_str(), 443)).expect("connect 443");
        s.set_nodelay(true).unwrap();
        s.write_all(&hello[..FIRST]).unwrap();
        // Let the first segment leave before the second write (no autocorking).
        std::thread::sleep(Duration::from_millis(100));
        s.write_all(&hello[FIRST..]).unwrap();
        std::thread::sleep(Duration::from_millis(200));
    });
    client.join().unwrap().unwrap();
    let received = server.join().unwrap().unwrap();
    let ev = wait_for_events(&log, 1);
    let stats = sensor.stop();
    assert_eq!(
        received, want,
        "the ClientHello must still reach the server"
    );
    let tls: Vec<_> = ev.iter().filter(|e| e["trail"] == sni).collect();
    assert_eq!(tls.len(), 1, "{ev:#?}");
    assert_eq!(tls[0]["tls_sni"], sni);
    assert_eq!(tls[0]["type"], "DNS");
    assert_eq!(tls[0]["dst_port"], 443);
    assert_eq!(counter(&stats, "tls_flows_tracked"), 1, "{stats}");
    assert!(counter(&stats, "tls_continuations") >= 1, "{stats}");
}

/// Issue 10 item 3 (QUIC), live: the Chrome-sized ClientHello split over two QUIC Initial
/// datagrams (CRYPTO frames at offsets) is joined per connection ID by userspace; the XDP
/// program hands every client Initial over.
#[test]
fn split_quic_client_hello_is_joined_live() {
    privileged!();
    use std::net::UdpSocket;
    use xtrail_bench::frames::chrome_quic_initials;
    use xtrail_bench::netns::in_ns;

    let sni = "quic-split-e2e-xtrail.com";
    let (log, pair, sensor) = live(
        "qsplit",
        &format!("{sni},e2e split quic (malware),(test)\n"),
        "xq",
        &[],
    );
    let server_ip = pair.sensor_ip.clone();
    let client = in_ns(&pair.peer_ns, move || {
        let sock = UdpSocket::bind("0.0.0.0:0").expect("udp client");
        for d in chrome_quic_initials(sni) {
            sock.send_to(&d, (server_ip.as_str(), 443)).unwrap();
        }
    });
    client.join().unwrap().unwrap();
    let ev = wait_for_events(&log, 1);
    let stats = sensor.stop();
    let quic: Vec<_> = ev.iter().filter(|e| e["trail"] == sni).collect();
    assert_eq!(quic.len(), 1, "{ev:#?}");
    assert_eq!(quic[0]["proto"], "UDP");
    assert_eq!(quic[0]["tls_sni"], sni);
    assert!(counter(&stats, "handoff_tls") >= 2, "{stats}");
}

/// Issue 10 item 6, live: an IPv6 packet to an IPv4-mapped address (`::ffff:a.b.c.d`) is
/// looked up as IPv4 in the kernel and reported with the IPv4 trail's label.
#[test]
fn v4_mapped_ipv6_addresses_hit_ipv4_trails_live() {
    privileged!();
    let (log, pair, sensor) = live("v4m", "", "vm", &[]);
    let inj = pair.injector().expect("injector");
    inj.send(&Frame::syn(v6("2001:db8::2"), 41000, v6("::ffff:198.19.66.66"), 443).build())
        .unwrap();
    inj.send(&Frame::syn(v6("2001:db8::2"), 41001, v6("::ffff:198.19.99.99"), 443).build())
        .unwrap();
    let ev = wait_for_events(&log, 1);
    let stats = sensor.stop();
    assert_eq!(ev.len(), 1, "{ev:#?}\n{stats}");
    assert_eq!(ev[0]["info"], "e2e botnet (malware)");
    assert!(
        ev[0]["dst_ip"].as_str().unwrap().ends_with("198.19.66.66"),
        "{ev:#?}"
    );
}

/// Issue 10 item 8, live: hits lost to a full ring buffer do not suppress their repeats.
/// A burst of 400 distinct hits overflows a one-page ring; the same packets sent again,
/// slowly, within the (60 s) suppression window are reported, so every hit ends up
/// reported exactly once.
#[test]
fn hits_lost_to_a_full_ring_are_reported_when_repeated_live() {
    privileged!();
    let (log, pair, sensor) = live(
        "ringfull",
        "",
        "rf",
        &[
            "--hit-ring-kib",
            "4",
            "--suppress-ms",
            "60000",
            "--no-flood-guard",
            "--no-heuristics",
        ],
    );
    let inj = pair.injector().expect("injector");
    let frames: Vec<Vec<u8>> = (0..400u32)
        .map(|i| {
            let src = v4(&format!("198.18.{}.{}", 150 + i / 200, i % 200 + 1));
            Frame::syn(src, 42000, v4("198.19.66.66"), 443).build()
        })
        .collect();
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    // The reader is stalled while the first burst arrives, so the 4 KiB ring fills however
    // fast this machine drains it (the XDP program keeps running in the kernel).
    let pid = sensor.0.child.id();
    common::signal(pid, libc::SIGSTOP);
    inj.send_batch(&refs).unwrap();
    common::signal(pid, libc::SIGCONT);
    std::thread::sleep(Duration::from_millis(300));
    for round in 0..5 {
        for chunk in refs.chunks(10) {
            inj.send_batch(chunk).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        if events(&log).len() >= 400 || round == 4 {
            break;
        }
    }
    let ev = wait_for_events(&log, 400);
    let stats = sensor.stop();
    assert!(
        counter(&stats, "ringbuf_full") > 0,
        "the ring never filled: {stats}"
    );
    let mut sources: Vec<&str> = ev.iter().filter_map(|e| e["src_ip"].as_str()).collect();
    sources.sort_unstable();
    let n = sources.len();
    sources.dedup();
    assert_eq!(sources.len(), 400, "every hit reported\n{stats}");
    assert_eq!(n, 400, "each exactly once\n{stats}");
    assert!(counter(&stats, "suppressed") > 0, "{stats}");
}
