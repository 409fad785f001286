//! A QUIC client Initial whose ClientHello names a trail domain raises an event, as the TLS
//! ClientHello does (the corpus trails list `quic-evil.example`).

use std::path::PathBuf;
use std::sync::Arc;

use xtrail_detect::process::{Processor, ProcessorConfig};
use xtrail_detect::protocols::{quic, tls};
use xtrail_detect::trails::{LoadOptions, TrailSet};
use xtrail_detect::whitelist::Whitelist;

/// A ClientHello handshake message (no record header) naming `sni`.
fn client_hello(sni: &str) -> Vec<u8> {
    tls::client_hello_record(sni)[5..].to_vec()
}

/// Ethernet + IPv4 + UDP around a payload (checksums left zero: the pipeline does not check).
fn udp_frame(src: [u8; 4], dst: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
    let total = 20 + 8 + payload.len();
    f.extend_from_slice(&[
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        0,
        0,
        0,
        64,
        17,
        0,
        0,
    ]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&50000u16.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

#[test]
fn quic_initial_sni_hits_a_domain_trail() {
    let csv = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/maltrail/corpus/trails.csv"
    ));
    let trails = if csv.is_file() {
        TrailSet::load(&[csv], &LoadOptions::default()).unwrap()
    } else {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "CI=true and no corpus"
        );
        let p = std::env::temp_dir().join(format!("quic-trails-{}.csv", std::process::id()));
        std::fs::write(&p, "quic-evil.example,malware (test),(static)\n").unwrap();
        TrailSet::load(&[p], &LoadOptions::default()).unwrap()
    };
    let mut p = Processor::new(
        Arc::new(trails),
        Arc::new(Whitelist::empty()),
        ProcessorConfig::with_sensor("t"),
    );
    let dgram = quic::client_initial(&[7; 8], &client_hello("quic-evil.example")).unwrap();
    let clean = quic::client_initial(&[8; 8], &client_hello("www.example-clean.org")).unwrap();
    let mut lines = Vec::new();
    for (i, d) in [dgram, clean].iter().enumerate() {
        let frame = udp_frame([10, 0, 0, 5], [192, 0, 2, 10 + i as u8], 443, d);
        p.process(1_790_000_000_000_000, 1, &frame, &mut |e| {
            lines.push(e.to_maltrail())
        });
    }
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("UDP DNS quic-evil.example"), "{lines:?}");
}

/// A capture cut at a snap length (the IP and UDP lengths still say the full datagram) and a
/// datagram whose tag no longer verifies still raise the event: the tag is not checked.
#[test]
fn cut_and_modified_initials_still_hit() {
    let p = std::env::temp_dir().join(format!("quic-cut-trails-{}.csv", std::process::id()));
    std::fs::write(&p, "quic-evil.example,malware (test),(static)\n").unwrap();
    let trails = TrailSet::load(std::slice::from_ref(&p), &LoadOptions::default()).unwrap();
    let _ = std::fs::remove_file(&p);
    let mut proc = Processor::new(
        Arc::new(trails),
        Arc::new(Whitelist::empty()),
        ProcessorConfig::with_sensor("t"),
    );
    let hello = client_hello("quic-evil.example");
    let dgram = quic::client_initial(&[7; 8], &hello).unwrap();
    // Ethernet 14 + IPv4 20 + UDP 8, then the Initial's header (26 bytes with an 8-byte DCID),
    // the CRYPTO frame header (4) and the ClientHello, whose last extension is the SNI.
    let snap = 14 + 20 + 8 + 26 + 4 + hello.len();
    let full = udp_frame([10, 0, 0, 5], [192, 0, 2, 10], 443, &dgram);
    let mut tampered = full.clone();
    let at = tampered.len() - 1;
    tampered[at] ^= 0xff;
    let mut lines = Vec::new();
    for (i, frame) in [&full[..snap], &tampered[..]].into_iter().enumerate() {
        proc.process(
            1_790_000_000_000_000 + i as i64 * 2_000_000,
            1,
            frame,
            &mut |e| lines.push(e.to_maltrail()),
        );
    }
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains("UDP DNS quic-evil.example")),
        "{lines:?}"
    );
}
