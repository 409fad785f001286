//! TLS ClientHello: the server name (SNI).
//!
//! Record type 22 (handshake), handshake type 1 (ClientHello); session id, cipher suites and
//! compression methods skipped; extensions walked to `server_name` (type 0). Every length is
//! checked against the bytes present: a ClientHello cut by the segment end is read as far as
//! it goes. For a record whose first TCP segment holds only its start, `client_hello_tail`
//! says where the parse goes on (extension bodies not yet there skipped by their lengths) and
//! `resume_client_hello` goes on from there once the rest has come.

use crate::packet::be16;

/// Longest server name accepted.
pub const MAX_SNI: usize = 255;

/// Why a payload is not a ClientHello this parser accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// Not a TLS handshake record (type 22, version 3.x).
    #[error("not a TLS handshake record")]
    NotHandshake,
    /// The handshake message is not a ClientHello.
    #[error("not a ClientHello")]
    NotClientHello,
    /// A length points past the data.
    #[error("truncated ClientHello ({0})")]
    Truncated(&'static str),
    /// The server name is empty, too long or not a printable ASCII host name.
    #[error("malformed server name")]
    BadServerName,
}

/// What the sensor takes from a ClientHello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientHello<'a> {
    /// `client_version` (0x0303 for TLS 1.2 and 1.3).
    pub version: u16,
    /// The `host_name` entry of `server_name`, if present.
    pub sni: Option<&'a str>,
}

/// Whether a payload starts like a TLS handshake record carrying a ClientHello.
pub fn looks_like_client_hello(p: &[u8]) -> bool {
    matches!(p, [0x16, 0x03, _, _, _, 0x01, ..])
}

/// Parses the ClientHello at the start of a TCP payload.
pub fn parse_client_hello(p: &[u8]) -> Result<ClientHello<'_>, TlsError> {
    match p {
        [0x16, 0x03, ..] => {}
        _ => return Err(TlsError::NotHandshake),
    }
    let record_len = usize::from(be16(p, 3).ok_or(TlsError::Truncated("record header"))?);
    let record = p.get(5..).ok_or(TlsError::Truncated("record header"))?;
    let record = record.get(..record_len).unwrap_or(record);
    parse_handshake(record)
}

/// Parses a ClientHello handshake message (type 1, 3-byte length, body) without a record
/// header: what a QUIC Initial's CRYPTO frames carry.
pub fn parse_handshake(record: &[u8]) -> Result<ClientHello<'_>, TlsError> {
    if record.first() != Some(&0x01) {
        return Err(TlsError::NotClientHello);
    }
    let hs_len = record
        .get(1..4)
        .map(|b| usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
        .ok_or(TlsError::Truncated("handshake header"))?;
    let body = record
        .get(4..)
        .ok_or(TlsError::Truncated("handshake header"))?;
    let body = body.get(..hs_len).unwrap_or(body);

    let version = be16(body, 0).ok_or(TlsError::Truncated("client_version"))?;
    let mut pos = 2 + 32; // client_version, random
    let sid_len = usize::from(*body.get(pos).ok_or(TlsError::Truncated("session_id"))?);
    pos += 1 + sid_len;
    let cs_len = usize::from(be16(body, pos).ok_or(TlsError::Truncated("cipher_suites"))?);
    pos += 2 + cs_len;
    let comp_len = usize::from(*body.get(pos).ok_or(TlsError::Truncated("compression"))?);
    pos += 1 + comp_len;
    let Some(ext_len) = be16(body, pos) else {
        // No extensions at all (or cut right here): valid, but no SNI.
        return if pos <= body.len() {
            Ok(ClientHello { version, sni: None })
        } else {
            Err(TlsError::Truncated("compression"))
        };
    };
    pos += 2;
    let exts = body.get(pos..).ok_or(TlsError::Truncated("extensions"))?;
    let exts = exts.get(..usize::from(ext_len)).unwrap_or(exts);
    walk_extensions(exts, version)
}

/// The extensions walked to the first `server_name`.
fn walk_extensions(exts: &[u8], version: u16) -> Result<ClientHello<'_>, TlsError> {
    let mut at = 0usize;
    while let (Some(kind), Some(len)) = (be16(exts, at), be16(exts, at + 2)) {
        let len = usize::from(len);
        let data = exts
            .get(at + 4..at + 4 + len)
            .ok_or(TlsError::Truncated("extension"))?;
        if kind == 0 {
            return Ok(ClientHello {
                version,
                sni: server_name(data)?,
            });
        }
        at += 4 + len;
    }
    Ok(ClientHello { version, sni: None })
}

/// Where the parse of a ClientHello record whose start alone has come goes on: every
/// extension before [`HelloTail::next`] is known and none is `server_name`, so the record's
/// bytes from there on are all the rest of the parse needs (a post-quantum key share that
/// fills the first segment is skipped, not kept).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HelloTail {
    /// `client_version`.
    version: u16,
    /// Offset in the record (its 5-byte header included) of the next extension to read.
    next: usize,
    /// Offset in the record where the extensions end (the least of what the record,
    /// handshake and extensions lengths and the record's `total` bytes allow).
    end: usize,
}

impl HelloTail {
    /// Offset in the record of the first byte the rest of the parse reads.
    pub(crate) fn next(&self) -> usize {
        self.next
    }
}

/// The [`HelloTail`] of a ClientHello record that will have `total` bytes (at least
/// `start.len()`: its first TCP segment's payload, then the rest) from its first `start`
/// bytes; `None` when the record's fixed part (up to the extensions' length) is not all in
/// `start`, or is not as [`parse_client_hello`] reads it (the whole record is then needed).
/// [`resume_client_hello`] on the record's bytes `next..total` answers exactly as
/// [`parse_client_hello`] on its bytes `..total`.
pub(crate) fn client_hello_tail(start: &[u8], total: usize) -> Option<HelloTail> {
    if !looks_like_client_hello(start) {
        return None;
    }
    let record_end = 5 + usize::from(be16(start, 3)?);
    let hs_len = start
        .get(6..9)
        .map(|b| usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))?;
    // The body as `parse_handshake` cuts it: what the record, the handshake and the bytes
    // allow.
    let body_end = record_end.min(9 + hs_len).min(total);
    let body = start.get(9..body_end.min(start.len()))?;
    let version = be16(body, 0)?;
    let mut pos = 2 + 32;
    pos += 1 + usize::from(*body.get(pos)?);
    pos += 2 + usize::from(be16(body, pos)?);
    pos += 1 + usize::from(*body.get(pos)?);
    let ext_len = usize::from(be16(body, pos)?);
    let exts = 9 + pos + 2;
    let end = (exts + ext_len).min(body_end);
    // Never so (the length's two bytes were read inside the body), but `next <= end` is what
    // `resume_client_hello` relies on.
    if exts > end {
        return None;
    }
    // Extensions wholly inside `end` and not `server_name` are skipped, their bodies unread.
    let mut at = exts;
    while at + 4 <= end {
        let (Some(kind), Some(len)) = (be16(start, at), be16(start, at + 2)) else {
            break;
        };
        let after = at + 4 + usize::from(len);
        if kind == 0 || after > end {
            break;
        }
        at = after;
    }
    Some(HelloTail {
        version,
        next: at,
        end,
    })
}

/// Goes on with a ClientHello from its [`HelloTail`]: `rest` holds the record's bytes from
/// [`HelloTail::next`] to its `total` (see [`client_hello_tail`]).
pub(crate) fn resume_client_hello(
    rest: &[u8],
    tail: HelloTail,
) -> Result<ClientHello<'_>, TlsError> {
    let exts = rest.get(..tail.end - tail.next).unwrap_or(rest);
    walk_extensions(exts, tail.version)
}

/// Builds a minimal TLS 1.2/1.3-style ClientHello record naming `sni`: for tests, benchmarks
/// and traffic generators (a QUIC Initial carries the same message without the 5-byte
/// record header).
pub fn client_hello_record(sni: &str) -> Vec<u8> {
    let name = sni.as_bytes();
    let mut ext = vec![0, 0];
    ext.extend_from_slice(&((name.len() + 5) as u16).to_be_bytes());
    ext.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    ext.push(0);
    ext.extend_from_slice(&(name.len() as u16).to_be_bytes());
    ext.extend_from_slice(name);
    let mut body = vec![3, 3];
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0, 4, 0x13, 0x01, 0xc0, 0x2f]); // cipher suites
    body.extend_from_slice(&[1, 0]); // compression: null
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![1];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

/// A ClientHello record as a current browser sends it (Chrome's extensions: GREASE values, a
/// GREASE ECH extension, no padding), for tests, benchmarks and traffic generators. With
/// `post_quantum`, TLS 1.3 with the hybrid key share X25519MLKEM768 (1,216 + 32 bytes of key
/// share): 1,757 bytes for a 15-byte name, two TCP segments, as Chrome sends it; without, an
/// X25519 share alone: 535 bytes, one segment, as clients without the hybrid group send it. The
/// browser randomises the extension order; this one puts `server_name` last but one, after
/// the key share and ECH, so a split at a typical MSS (1,448) or earlier leaves a
/// post-quantum hello's name in the second segment.
pub fn browser_client_hello(sni: &str, post_quantum: bool) -> Vec<u8> {
    // Deterministic "random" bytes.
    let mut x = 0x9e37_79b9u32;
    let mut noise = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    };
    fn ext(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(data);
    }
    fn vec16(data: &[u8]) -> Vec<u8> {
        let mut v = (data.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(data);
        v
    }
    let mut exts = Vec::new();
    ext(&mut exts, 0x2a2a, &[]); // GREASE
    ext(&mut exts, 0x0017, &[]); // extended_master_secret
    ext(&mut exts, 0xff01, &[0]); // renegotiation_info

    // supported_groups: GREASE, X25519MLKEM768 (post-quantum only), x25519, secp256r1,
    // secp384r1.
    let groups: &[u8] = if post_quantum {
        &[0x4a, 0x4a, 0x11, 0xec, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x18]
    } else {
        &[0x4a, 0x4a, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x18]
    };
    ext(&mut exts, 0x000a, &vec16(groups));
    ext(&mut exts, 0x000b, &[1, 0]); // ec_point_formats
    ext(&mut exts, 0x0023, &[]); // session_ticket
    ext(&mut exts, 0x0010, &vec16(b"\x02h2\x08http/1.1")); // ALPN
    ext(&mut exts, 0x0005, &[1, 0, 0, 0, 0]); // status_request
    ext(
        &mut exts,
        0x000d, // signature_algorithms
        &vec16(&[
            0x04, 0x03, 0x08, 0x04, 0x04, 0x01, 0x05, 0x03, 0x08, 0x05, 0x05, 0x01, 0x08, 0x06,
            0x06, 0x01,
        ]),
    );
    ext(&mut exts, 0x0012, &[]); // signed_certificate_timestamp
    let mut shares = vec![0x4a, 0x4a, 0, 1, 0]; // GREASE share
    if post_quantum {
        shares.extend_from_slice(&[0x11, 0xec]);
        shares.extend_from_slice(&1216u16.to_be_bytes());
        shares.extend(noise(1216)); // ML-KEM-768 encapsulation key (1184) + X25519 (32)
    }
    shares.extend_from_slice(&[0x00, 0x1d, 0x00, 0x20]);
    shares.extend(noise(32));
    ext(&mut exts, 0x0033, &vec16(&shares)); // key_share
    ext(&mut exts, 0x002d, &[1, 1]); // psk_key_exchange_modes
    ext(&mut exts, 0x002b, &[6, 0x3a, 0x3a, 3, 4, 3, 3]); // supported_versions
    ext(&mut exts, 0x001b, &[2, 0, 2]); // compress_certificate: brotli
    ext(&mut exts, 0x44cd, &vec16(b"\x02h2")); // application_settings
    let mut ech = vec![0, 0, 1, 0, 1, 0x6f, 0, 0x20]; // outer, HKDF-SHA256, AES-128-GCM
    ech.extend(noise(32));
    ech.extend_from_slice(&176u16.to_be_bytes());
    ech.extend(noise(176));
    ext(&mut exts, 0xfe0d, &ech); // encrypted_client_hello (GREASE)
    let name = sni.as_bytes();
    let mut sn = vec![0];
    sn.extend_from_slice(&vec16(name));
    ext(&mut exts, 0x0000, &vec16(&sn)); // server_name
    ext(&mut exts, 0x7a7a, &[0]); // GREASE
    let mut body = vec![3, 3];
    body.extend(noise(32)); // random
    body.push(32);
    body.extend(noise(32)); // session id
    body.extend_from_slice(&vec16(&[
        0x8a, 0x8a, 0x13, 0x01, 0x13, 0x02, 0x13, 0x03, 0xc0, 0x2b, 0xc0, 0x2f, 0xc0, 0x2c, 0xc0,
        0x30, 0xcc, 0xa9, 0xcc, 0xa8, 0xc0, 0x13, 0xc0, 0x14, 0x00, 0x9c, 0x00, 0x9d, 0x00, 0x2f,
        0x00, 0x35,
    ]));
    body.extend_from_slice(&[1, 0]); // compression: null
    body.extend_from_slice(&vec16(&exts));
    let mut hs = vec![1];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&vec16(&hs));
    rec
}

/// Reads the `host_name` from a `server_name` extension body.
fn server_name(data: &[u8]) -> Result<Option<&str>, TlsError> {
    let list_len = usize::from(be16(data, 0).ok_or(TlsError::Truncated("server_name"))?);
    let list = data.get(2..).ok_or(TlsError::Truncated("server_name"))?;
    let list = list.get(..list_len).unwrap_or(list);
    let mut at = 0usize;
    while let (Some(kind), Some(len)) = (list.get(at), be16(list, at + 1)) {
        let len = usize::from(len);
        let name = list
            .get(at + 3..at + 3 + len)
            .ok_or(TlsError::Truncated("server_name entry"))?;
        if *kind == 0 {
            if name.is_empty() || name.len() > MAX_SNI || !name.iter().all(u8::is_ascii_graphic) {
                return Err(TlsError::BadServerName);
            }
            // SAFETY: every byte is ASCII (checked just above), hence the bytes are UTF-8;
            // saves a second validation pass per ClientHello.
            return Ok(Some(unsafe { std::str::from_utf8_unchecked(name) }));
        }
        at += 3 + len;
    }
    Ok(None)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The tail of a record's start, damaged or not, goes on to the whole parse's answer:
    /// 3,000 random cuts, four lengths the record may end up with at each.
    #[test]
    fn a_tail_answers_as_the_whole_record() {
        let mut x = 0x2545_f491u32;
        let mut rand = move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as usize
        };
        let clean = [
            browser_client_hello("tail.example", true),
            browser_client_hello("tail.example", false),
            client_hello_record("tail.example"),
        ];
        let mut tails = 0;
        for round in 0..3000 {
            let mut rec = clean[round % clean.len()].clone();
            // Damage up to three of the first 400 bytes (fixed fields, the first extension
            // headers), three rounds in four.
            for _ in 0..round % 4 {
                let at = rand() % rec.len().min(400);
                rec[at] = rand() as u8;
            }
            // Still a handshake record with a ClientHello (its lengths may be wrong).
            rec[..3].copy_from_slice(&[0x16, 0x03, 0x01]);
            rec[5] = 0x01;
            let cut = 6 + rand() % (rec.len() - 6);
            for total in [cut, cut + 1, (cut + rec.len()) / 2, rec.len()] {
                let Some(tail) = client_hello_tail(&rec[..cut], total) else {
                    continue;
                };
                tails += 1;
                let rest = rec.get(tail.next()..total).unwrap_or_default();
                assert_eq!(
                    resume_client_hello(rest, tail),
                    parse_client_hello(&rec[..total]),
                    "round {round} cut {cut} total {total} {tail:?}"
                );
            }
        }
        assert!(tails > 3000, "{tails}");
    }

    /// Builds a ClientHello record with the given SNI (and a dummy extension before it).
    pub(crate) fn client_hello(sni: &str) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7u8; 32]);
        body.push(32);
        body.extend_from_slice(&[1u8; 32]);
        body.extend_from_slice(&[0, 4, 0x13, 0x01, 0x13, 0x02]);
        body.extend_from_slice(&[1, 0]);
        let mut exts = vec![0x00, 0x17, 0, 0]; // extended_master_secret, empty
        let name = sni.as_bytes();
        let entry_len = 3 + name.len();
        exts.extend_from_slice(&[0, 0]);
        exts.extend_from_slice(&((entry_len + 2) as u16).to_be_bytes());
        exts.extend_from_slice(&(entry_len as u16).to_be_bytes());
        exts.push(0);
        exts.extend_from_slice(&(name.len() as u16).to_be_bytes());
        exts.extend_from_slice(name);
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut hs = vec![0x01];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 0x03, 0x01];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn sni_is_found() {
        let rec = client_hello("tls-evil.example");
        assert!(looks_like_client_hello(&rec));
        let ch = parse_client_hello(&rec).unwrap();
        assert_eq!(ch.version, 0x0303);
        assert_eq!(ch.sni, Some("tls-evil.example"));
    }

    #[test]
    fn browser_hellos_name_their_server_in_one_or_two_segments() {
        let sni = "www.example.com";
        // The sizes its doc gives for a 15-byte name.
        for (post_quantum, size) in [(false, 535), (true, 1_757)] {
            let rec = browser_client_hello(sni, post_quantum);
            assert_eq!(rec.len(), size, "post-quantum {post_quantum}");
            let hello = parse_client_hello(&rec).expect("parses");
            assert_eq!(hello.sni, Some(sni));
            let at = rec.windows(sni.len()).position(|w| w == sni.as_bytes());
            // The post-quantum hello's name lies past a typical MSS: its second segment.
            assert_eq!(at.is_some_and(|at| at > 1_448), post_quantum);
        }
    }

    #[test]
    fn every_truncation_is_an_error_or_no_sni_never_a_panic() {
        let rec = client_hello("tls-evil.example");
        for n in 0..rec.len() {
            if let Ok(ch) = parse_client_hello(&rec[..n]) {
                assert_eq!(ch.sni, None, "cut at {n}");
            }
        }
    }

    #[test]
    fn bad_names_and_other_records() {
        assert_eq!(
            parse_client_hello(&client_hello("a b")),
            Err(TlsError::BadServerName)
        );
        assert_eq!(
            parse_client_hello(b"\x17\x03\x03\x00\x01x"),
            Err(TlsError::NotHandshake)
        );
        let mut rec = client_hello("x.example");
        rec[5] = 2;
        assert_eq!(parse_client_hello(&rec), Err(TlsError::NotClientHello));
    }
}
