//! Real TLDs are never ignored: trails under `.dev` and `.int` (delegated TLDs that Maltrail's
//! ignored-suffix list silences) are detected in pcap replay as a DNS query, an HTTP `Host`
//! and a TLS SNI; `.local` and `.arpa` queries are still not checked.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use xtrail_detect::event::Format;
use xtrail_detect::protocols::{dns, tls};
use xtrail_detect::replay::{replay, ReplayOptions};
use xtrail_detect::trails::{LoadOptions, TrailSet};
use xtrail_detect::whitelist::Whitelist;

const TRAILS: &str = "\
status.evil-workers.workers.dev,sliver (malicious),(static)
bad-agency.int,test (malicious),(static)
printer.local,test (malicious),(static)
evil.local,test (malicious),(static)
9.0.0.10.in-addr.arpa,test (malicious),(static)
";

/// IPv4 (link type RAW) around an L4 header and payload.
fn v4(dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0];
    p[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[10, 0, 0, 66]);
    p.extend_from_slice(&dst);
    p.extend_from_slice(l4);
    p
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = sport.to_be_bytes().to_vec();
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

fn tcp_push(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut t = sport.to_be_bytes().to_vec();
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(payload);
    t
}

/// A classic pcap (link type RAW, 101) of the frames, one second apart.
fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&65535u32.to_le_bytes());
    out.extend_from_slice(&101u32.to_le_bytes());
    for (i, f) in frames.iter().enumerate() {
        out.extend_from_slice(&(1_700_000_000 + i as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(f);
    }
    std::fs::write(path, out).unwrap();
}

fn replay_lines(name: &str, frames: &[Vec<u8>]) -> Vec<String> {
    let dir = std::env::temp_dir();
    let tag = format!("xtrail-real-tlds-{name}-{}", std::process::id());
    let csv = dir.join(format!("{tag}.csv"));
    let pcap: PathBuf = dir.join(format!("{tag}.pcap"));
    std::fs::write(&csv, TRAILS).unwrap();
    write_pcap(&pcap, frames);
    let trails = TrailSet::load(std::slice::from_ref(&csv), &LoadOptions::default()).unwrap();
    let opts = ReplayOptions {
        format: Format::Maltrail,
        heuristics: None,
        ..ReplayOptions::default()
    };
    let mut out = Vec::new();
    replay(
        std::slice::from_ref(&pcap),
        Arc::new(trails),
        Arc::new(Whitelist::default()),
        &opts,
        &mut out,
    )
    .unwrap();
    let _ = std::fs::remove_file(&csv);
    let _ = std::fs::remove_file(&pcap);
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn dns_query(sport: u16, name: &str) -> Vec<u8> {
    v4(
        [8, 8, 8, 8],
        17,
        &udp(sport, 53, &dns::query_message(7, name, 1)),
    )
}

fn http_get(sport: u16, host: &str) -> Vec<u8> {
    let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: Mozilla/5.0\r\n\r\n");
    v4([1, 2, 3, 4], 6, &tcp_push(sport, 80, req.as_bytes()))
}

fn tls_hello(sport: u16, sni: &str) -> Vec<u8> {
    v4(
        [1, 2, 3, 4],
        6,
        &tcp_push(sport, 443, &tls::client_hello_record(sni)),
    )
}

/// The event line of the packet sent from `sport`, if any.
fn line_from(lines: &[String], sport: u16) -> Option<&String> {
    lines
        .iter()
        .find(|l| l.contains(&format!(" 10.0.0.66 {sport} ")))
}

#[test]
fn dev_and_int_trails_are_detected_in_dns_http_and_tls() {
    let lines = replay_lines(
        "dev-int",
        &[
            dns_query(1001, "status.evil-workers.workers.dev"),
            dns_query(1002, "www.bad-agency.int"),
            http_get(1003, "status.evil-workers.workers.dev"),
            http_get(1004, "bad-agency.int:8080"),
            tls_hello(1005, "status.evil-workers.workers.dev"),
            tls_hello(1006, "mail.bad-agency.int"),
        ],
    );
    let text = lines.join("\n");
    for (sport, proto, trail) in [
        (1001, "UDP", "status.evil-workers.workers.dev"),
        (1002, "UDP", "(www).bad-agency.int"),
        (1003, "TCP", "status.evil-workers.workers.dev"),
        (1004, "TCP", "bad-agency.int"),
        (1005, "TCP", "status.evil-workers.workers.dev"),
        (1006, "TCP", "(mail).bad-agency.int"),
    ] {
        let line = line_from(&lines, sport).unwrap_or_else(|| panic!("{sport}: no event\n{text}"));
        assert!(
            line.contains(&format!(" {proto} DNS {trail} ")),
            "{sport}: {line}"
        );
    }
}

#[test]
fn local_and_arpa_queries_are_still_ignored() {
    let lines = replay_lines(
        "local-arpa",
        &[
            dns_query(2001, "printer.local"),
            dns_query(2002, "x.evil.local"),
            dns_query(2003, "9.0.0.10.in-addr.arpa"),
            // Control: the same capture does raise events for a checked name.
            dns_query(2004, "bad-agency.int"),
        ],
    );
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(line_from(&lines, 2004).is_some(), "{lines:#?}");
}
