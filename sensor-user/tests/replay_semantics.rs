//! Issue 10 through `xtrail-sensor replay` (no privilege): pcaps written here, replayed by
//! the real binary, events read back. The live counterparts are in `xdp_program.rs`
//! (BPF_PROG_TEST_RUN) and `veth_e2e.rs` (a live sensor on a veth pair).
//!
//! - a ClientHello of Chrome's size and extension set (X25519MLKEM768 key share), split over
//!   two TCP segments with the server name in the second, is reassembled; so is the same
//!   ClientHello split over two QUIC Initial packets;
//! - port 53 is no free pass: a datagram to or from an IP trail on port 53 that is not a DNS
//!   message is reported as an IP event; a DNS query keeps `ip (query)`;
//! - IPv4-mapped IPv6 addresses hit IPv4 trails.

use std::path::Path;
use std::process::Command;

use xtrail_bench::frames::{
    chrome_client_hello, chrome_quic_initials, chrome_sni_offset, dns_query, tcp_flags, v4, v6,
    Frame,
};
use xtrail_bench::pcapw;

mod common;
use common::tempdir;

const SENSOR: &str = env!("CARGO_BIN_EXE_xtrail-sensor");
const TRAILS: &str = "198.19.66.66,replay botnet (malware),(test)\n\
                      tls-split-replay.example,replay tls (malware),(test)\n\
                      quic-split-replay.example,replay quic (malware),(test)\n";

/// Writes `frames` (one per 10 ms) to a pcap and replays it; returns the JSON events.
fn replay(dir: &Path, name: &str, frames: &[Vec<u8>]) -> Vec<serde_json::Value> {
    let pcap = dir.join(format!("{name}.pcap"));
    let mut w = std::io::BufWriter::new(std::fs::File::create(&pcap).unwrap());
    pcapw::write_header(&mut w).unwrap();
    for (i, f) in frames.iter().enumerate() {
        pcapw::write_packet(&mut w, 1_780_000_000_000_000 + i as i64 * 10_000, f).unwrap();
    }
    drop(w);
    let trails = dir.join("trails.csv");
    std::fs::write(&trails, TRAILS).unwrap();
    let out = Command::new(SENSOR)
        .args([
            "replay",
            "--no-whitelist",
            "--no-heuristics",
            "--format",
            "json",
        ])
        .args(["--sensor-name", "replay", "--events-log", "-", "--pcap"])
        .arg(&pcap)
        .arg("--trails")
        .arg(&trails)
        .output()
        .expect("run xtrail-sensor replay");
    assert!(
        out.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON event"))
        .collect()
}

#[test]
fn a_chrome_client_hello_split_over_two_segments_is_reassembled() {
    let dir = tempdir("split-replay");
    let sni = "tls-split-replay.example";
    let hello = chrome_client_hello(sni);
    assert!((1700..2100).contains(&hello.len()));
    assert!(
        chrome_sni_offset(&hello, sni) > 1448,
        "the name must be in segment 2"
    );
    let (c, s) = (v4("198.18.7.2"), v4("198.18.7.1"));
    let isn = 0x1000_0000u32;
    let data = |seq: u32, bytes: &[u8]| {
        Frame::tcp(c, 51000, s, 443, tcp_flags::ACK | tcp_flags::PSH)
            .with_seq(seq)
            .with_payload(bytes)
            .build()
    };
    let syn = Frame::syn(c, 51000, s, 443).with_seq(isn - 1).build();
    let seg1 = data(isn, &hello[..1448]);
    let seg2 = data(isn + 1448, &hello[1448..]);
    let ev = replay(&dir, "split", &[syn.clone(), seg1.clone(), seg2.clone()]);
    assert_eq!(ev.len(), 1, "{ev:#?}");
    assert_eq!(ev[0]["trail"], sni);
    assert_eq!(ev[0]["type"], "DNS");
    assert_eq!(ev[0]["tls_sni"], sni);
    assert_eq!(ev[0]["dst_port"], 443);
    // A retransmitted first segment in between changes nothing.
    let ev = replay(
        &dir,
        "retrans",
        &[syn.clone(), seg1.clone(), seg1.clone(), seg2],
    );
    assert_eq!(ev.len(), 1, "{ev:#?}");
    // Without the second segment the name is never seen (what xtrail did before).
    let ev = replay(&dir, "first-only", &[syn, seg1]);
    assert!(ev.is_empty(), "{ev:#?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn port_53_is_no_free_pass() {
    let dir = tempdir("p53-replay");
    let (me, trail) = (v4("198.18.7.2"), v4("198.19.66.66"));
    let ev = replay(
        &dir,
        "p53",
        &[
            // A tunnel to a listed address on 53: not DNS, reported as IP.
            Frame::udp(me, 40000, trail, 53, b"\x17\x03\x03\x00\x10tunnelled bytes").build(),
            // From a listed address's port 53 ("answers" of a C2): reported as IP.
            Frame::udp(trail, 53, me, 40001, b"\xde\xad\xbe\xef\x00\x00").build(),
            // A real query to the listed address: `ip (query)`, as before.
            Frame::udp(me, 40002, trail, 53, &dns_query(1, "www.clean-name.net", 1)).build(),
            // A PTR query: a DNS message, so no IP event (Maltrail's rule).
            Frame::udp(
                me,
                40003,
                trail,
                53,
                &dns_query(2, "4.3.2.1.in-addr.arpa", 12),
            )
            .build(),
        ],
    );
    let got: Vec<(String, u64)> = ev
        .iter()
        .map(|e| {
            (
                e["trail"].as_str().unwrap().to_owned(),
                e["src_port"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("198.19.66.66".to_owned(), 40000),
            ("198.19.66.66".to_owned(), 53),
            ("198.19.66.66 (www.clean-name.net)".to_owned(), 40002),
        ],
        "{ev:#?}"
    );
    assert!(ev.iter().all(|e| e["type"] == "IP" && e["proto"] == "UDP"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ipv4_mapped_ipv6_addresses_hit_ipv4_trails() {
    let dir = tempdir("mapped-replay");
    let ev = replay(
        &dir,
        "mapped",
        &[
            Frame::syn(v6("2001:db8::2"), 40000, v6("::ffff:198.19.66.66"), 443).build(),
            Frame::syn(v6("2001:db8::2"), 40001, v6("::198.19.66.66"), 443).build(),
        ],
    );
    assert_eq!(ev.len(), 1, "{ev:#?}");
    // The trail is printed as the packet's address, as the live sensor prints it.
    assert_eq!(ev[0]["trail"], "::ffff:198.19.66.66");
    assert_eq!(ev[0]["info"], "replay botnet (malware)");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_chrome_client_hello_split_over_two_quic_initials_is_joined() {
    let dir = tempdir("quic-replay");
    let sni = "quic-split-replay.example";
    let (c, s) = (v4("198.18.7.2"), v4("198.18.7.1"));
    let frames: Vec<Vec<u8>> = chrome_quic_initials(sni)
        .iter()
        .map(|d| Frame::udp(c, 52000, s, 443, d).build())
        .collect();
    let ev = replay(&dir, "quic", &frames);
    assert_eq!(ev.len(), 1, "{ev:#?}");
    assert_eq!(ev[0]["trail"], sni);
    assert_eq!(ev[0]["proto"], "UDP");
    assert_eq!(ev[0]["tls_sni"], sni);
    // Either Initial alone names nothing.
    for (i, f) in frames.iter().enumerate() {
        let ev = replay(&dir, &format!("quic-{i}"), std::slice::from_ref(f));
        assert!(ev.is_empty(), "{ev:#?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
