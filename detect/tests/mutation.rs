//! Robustness: corpus frames and many thousands of mutated variants (bit flips, truncations,
//! length-field corruption, inserted and removed bytes, random bytes, splices) go through
//! `Processor::process` under every supported link type, and mutated capture files through
//! the pcap reader. Nothing may panic. Deterministic: a fixed-seed xorshift generator.
//!
//! Synthetic frames (PPPoE, QinQ, SLL2, loopback, IPv6 extension headers, DNS over TCP, TLS,
//! HTTP) are added so the mutations reach every parser even without the corpus.

use std::path::Path;
use std::sync::Arc;

use xtrail_detect::heuristics::{HeuristicsConfig, MaltrailHeuristics, UaPatterns};
use xtrail_detect::packet;
use xtrail_detect::pcap::PcapReader;
use xtrail_detect::process::{Processor, ProcessorConfig};
use xtrail_detect::protocols::{dns, http, tls};
use xtrail_detect::trails::{LoadOptions, TrailSet};
use xtrail_detect::whitelist::Whitelist;

/// xorshift64*: small, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const LINKTYPES: &[u32] = &[0, 1, 12, 14, 101, 108, 113, 228, 229, 276, 147];

fn corpus_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/maltrail/corpus")
}

/// Every frame of every corpus pcap, with its link type.
fn corpus_frames() -> Vec<(u32, Vec<u8>)> {
    let mut frames = Vec::new();
    let Ok(entries) = std::fs::read_dir(corpus_dir()) else {
        eprintln!("corpus not found: synthetic frames only");
        return frames;
    };
    let mut paths: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "pcap"))
        .collect();
    paths.sort();
    for p in paths {
        let Ok(mut r) = xtrail_detect::pcap::open(&p) else {
            continue;
        };
        while let Ok(Some(pkt)) = r.next_packet() {
            frames.push((pkt.linktype, pkt.data.to_vec()));
        }
    }
    frames
}

fn ipv4(proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = vec![
        0x45, 0, 0, 0, 0x12, 0x34, 0, 0, 64, proto, 0, 0, 10, 0, 0, 66, 66, 66, 66, 66,
    ];
    let total = (20 + l4.len()) as u16;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p.extend_from_slice(l4);
    p
}

fn tcp(dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = vec![0xc3, 0x50];
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(payload);
    t
}

fn dns_query(name: &str) -> Vec<u8> {
    xtrail_detect::protocols::dns::query_message(0x1234, name, 1)
}

fn client_hello(sni: &str) -> Vec<u8> {
    xtrail_detect::protocols::tls::client_hello_record(sni)
}

fn synthetic_frames() -> Vec<(u32, Vec<u8>)> {
    let eth = |ethertype: &[u8], rest: &[u8]| {
        let mut f = vec![0xaa; 12];
        f.extend_from_slice(ethertype);
        f.extend_from_slice(rest);
        f
    };
    let mut dns_tcp = (dns_query("evil-test-domain.com").len() as u16)
        .to_be_bytes()
        .to_vec();
    dns_tcp.extend_from_slice(&dns_query("evil-test-domain.com"));
    let syn = ipv4(6, &tcp(443, 0x02, b""));
    let http_req = ipv4(
        6,
        &tcp(
            80,
            0x18,
            b"GET http://evil-url.example/bad/path HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
    );
    let tls_hello = ipv4(6, &tcp(443, 0x18, &client_hello("tls-evil.example")));
    // A QUIC client Initial (its ClientHello is decrypted without checking the tag, so
    // mutations reach the frame and ClientHello parsers).
    let quic_initial = {
        let hello = client_hello("quic-evil.example");
        let dgram = xtrail_detect::protocols::quic::client_initial(&[7; 8], &hello[5..])
            .expect("QUIC Initial");
        let mut u = vec![0xc3, 0x51, 0x01, 0xbb];
        u.extend_from_slice(&((8 + dgram.len()) as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(&dgram);
        ipv4(17, &u)
    };
    let dns_over_tcp = ipv4(6, &tcp(53, 0x18, &dns_tcp));
    let mut pppoe = vec![0x11, 0, 0, 1];
    pppoe.extend_from_slice(&((syn.len() + 2) as u16).to_be_bytes());
    pppoe.extend_from_slice(&[0x00, 0x21]);
    pppoe.extend_from_slice(&syn);
    let mut ipv6 = vec![0x60, 0, 0, 0, 0, 0, 0, 64];
    ipv6.extend_from_slice(&[0xde, 0xad].repeat(8));
    ipv6.extend_from_slice(&[0xde, 0xad].repeat(8));
    let ext_and_udp = {
        let mut e = vec![60, 0, 0, 0, 0, 0, 0, 0, 17, 0, 0, 0, 0, 0, 0, 0];
        let q = dns_query("badsite.onion.to");
        e.extend_from_slice(&[0xc3, 0x50, 0, 53]);
        e.extend_from_slice(&((q.len() + 8) as u16).to_be_bytes());
        e.extend_from_slice(&[0, 0]);
        e.extend_from_slice(&q);
        e
    };
    ipv6[4..6].copy_from_slice(&(ext_and_udp.len() as u16).to_be_bytes());
    ipv6[6] = 0;
    ipv6.extend_from_slice(&ext_and_udp);
    let mut sll2 = vec![0x86, 0xdd];
    sll2.extend_from_slice(&[0; 18]);
    sll2.extend_from_slice(&ipv6);
    let mut null = 2u32.to_le_bytes().to_vec();
    null.extend_from_slice(&tls_hello);
    vec![
        (1, eth(&[0x88, 0x64], &pppoe)),
        (
            1,
            eth(&[0x88, 0xa8, 0, 1, 0x81, 0, 0, 2, 0x08, 0], &http_req),
        ),
        (1, eth(&[0x08, 0x00], &dns_over_tcp)),
        (1, eth(&[0x86, 0xdd], &ipv6)),
        (276, sll2),
        (0, null),
        (101, tls_hello),
        (101, quic_initial),
    ]
}

fn mutate(rng: &mut Rng, frames: &[(u32, Vec<u8>)], base: &[u8]) -> Vec<u8> {
    let mut f = base.to_vec();
    for _ in 0..=rng.below(3) {
        match rng.below(8) {
            0 => {
                for _ in 0..=rng.below(8) {
                    if !f.is_empty() {
                        let i = rng.below(f.len());
                        f[i] ^= 1 << rng.below(8);
                    }
                }
            }
            1 => f.truncate(rng.below(f.len() + 1)),
            2 => {
                // Length-field corruption: a 16-bit field set to an extreme or random value.
                if f.len() >= 2 {
                    let i = rng.below(f.len() - 1);
                    let v: u16 = match rng.below(4) {
                        0 => 0,
                        1 => 0xffff,
                        2 => (f.len() as u16).wrapping_add(rng.below(8) as u16),
                        _ => rng.next() as u16,
                    };
                    f[i..i + 2].copy_from_slice(&v.to_be_bytes());
                }
            }
            3 => {
                let i = rng.below(f.len() + 1);
                let n = rng.below(16) + 1;
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                f.splice(i..i, bytes);
            }
            4 => {
                if !f.is_empty() {
                    let i = rng.below(f.len());
                    let n = rng.below(f.len() - i) + 1;
                    f.drain(i..i + n);
                }
            }
            5 => {
                let n = rng.below(128);
                f = (0..n).map(|_| rng.next() as u8).collect();
            }
            6 => {
                if !frames.is_empty() {
                    let other = &frames[rng.below(frames.len())].1;
                    let cut = rng.below(f.len() + 1);
                    let from = rng.below(other.len() + 1);
                    f.truncate(cut);
                    f.extend_from_slice(&other[from..]);
                }
            }
            _ => {
                if !f.is_empty() {
                    let i = rng.below(f.len());
                    f[i] = [0x00, 0xff, 0x3f, 0xc0, 0x16, 0x45, 0x60][rng.below(7)];
                }
            }
        }
    }
    f
}

/// The pipeline with the heuristics installed (scans from packets, Maltrail's user agents),
/// so mutated frames reach every heuristic too.
fn processor() -> Processor {
    let dir = corpus_dir();
    let trails =
        TrailSet::load(&[dir.join("trails.csv")], &LoadOptions::default()).unwrap_or_default();
    let wl = Arc::new(Whitelist::empty());
    let mut p = Processor::new(
        Arc::new(trails),
        Arc::clone(&wl),
        ProcessorConfig::default(),
    );
    let ua_path = dir.join("../data/ua.txt");
    let ua = UaPatterns::load(&ua_path).unwrap_or_else(|_| UaPatterns::empty());
    // Low thresholds: mutated traffic trips the alert paths as well.
    let config = HeuristicsConfig::hair_trigger();
    let h = MaltrailHeuristics::new(config, wl, Arc::new(ua)).expect("heuristics build");
    p.set_heuristics(Box::new(h));
    p
}

#[test]
fn mutated_frames_never_panic() {
    let mut frames = corpus_frames();
    frames.extend(synthetic_frames());
    let mut p = processor();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut events = 0u64;
    let mut sink = |_e: xtrail_detect::event::Event| events += 1;
    let per_frame = (200_000 / frames.len().max(1)).max(500);
    let mut ts = 1_700_000_000_000_000i64;
    let mut total = 0u64;
    for (lt, frame) in &frames {
        p.process(ts, *lt, frame, &mut sink);
        for _ in 0..per_frame {
            let m = mutate(&mut rng, &frames, frame);
            let lt = if rng.below(8) == 0 {
                LINKTYPES[rng.below(LINKTYPES.len())]
            } else {
                *lt
            };
            ts += rng.below(2_000_000) as i64;
            p.process(ts, lt, &m, &mut sink);
            // The parsers on their own, on the same bytes.
            let _ = packet::parse(lt, &m);
            let _ = dns::parse(&m);
            let _ = dns::parse_tcp(&m);
            let _ = http::parse_request(&m);
            let _ = http::parse_response(&m);
            let _ = tls::parse_client_hello(&m);
            total += 1;
        }
    }
    assert!(total >= 150_000, "only {total} mutations");
    assert_eq!(p.stats().packets, total + frames.len() as u64);
    println!("{total} mutated frames, {events} events, {:?}", p.stats());
}

#[test]
fn unmutated_synthetic_frames_hit_their_trails() {
    let mut p = processor();
    if p.stats().packets == 0 && !corpus_dir().join("trails.csv").is_file() {
        return;
    }
    let mut lines = Vec::new();
    for (i, (lt, f)) in synthetic_frames().iter().enumerate() {
        p.process(
            1_700_000_000_000_000 + i as i64 * 1_000_000,
            *lt,
            f,
            &mut |e| lines.push(e.to_maltrail()),
        );
    }
    let text = lines.join("\n");
    for want in [
        "TCP IP 66.66.66.66",
        "URL evil-url.example/bad/path",
        "TCP DNS evil-test-domain.com",
        "UDP DNS badsite.onion(.to)",
        "TCP DNS tls-evil.example",
        "UDP DNS quic-evil.example",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
}

#[test]
fn mutated_capture_files_never_panic() {
    let dir = corpus_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    let mut rng = Rng(42);
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "pcap") {
            continue;
        }
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        for _ in 0..300 {
            let m = mutate(&mut rng, &[], &bytes);
            let Ok(mut r) = PcapReader::new(m.as_slice()) else {
                continue;
            };
            let mut n = 0;
            while let Ok(Some(_)) = r.next_packet() {
                n += 1;
                assert!(n < 100_000);
            }
        }
    }
}
