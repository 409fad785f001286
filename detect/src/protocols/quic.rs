//! QUIC Initial packets (RFC 9000/9001, QUIC v1 and v2): the TLS ClientHello's server name.
//!
//! A client's first packet is encrypted with keys derived from its Destination Connection ID
//! alone, so any observer can read it: HKDF over the version's public salt gives the key,
//! IV and header-protection key; header protection is removed with AES-ECB over a sample of
//! the ciphertext; the payload is decrypted with AES-128-GCM's keystream (AES-CTR from
//! counter block `nonce || 2`); its CRYPTO frames hold the ClientHello.
//!
//! The AEAD tag is not checked (nor does Maltrail check it): a passive observer cannot rely
//! on it, since a capture cut at a snap length loses it and a middlebox-modified datagram
//! fails it, while the ClientHello is still there in the clear once the keystream is applied.
//! Whatever ciphertext is present is decrypted and its frames parsed as far as they go; the
//! `server_name` extension must be complete to be reported. [`initial_sni`] reads what one
//! datagram carries, at most [`MAX_DATAGRAM`] bytes; a ClientHello split over several
//! Initial packets is joined per connection by `reassembly::CryptoReassembler`. Every length
//! is checked.

use aes::cipher::{generic_array::GenericArray, BlockEncrypt, KeyInit};
use aes::Aes128;
use aes_gcm::aead::AeadInPlace;
use aes_gcm::Aes128Gcm;
use hkdf::Hkdf;
use sha2::Sha256;

use super::tls;

/// QUIC v1 (RFC 9001, section 5.2).
const SALT_V1: [u8; 20] = [
    0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17, 0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad,
    0xcc, 0xbb, 0x7f, 0x0a,
];
/// QUIC v2 (RFC 9369, section 3.3.1).
const SALT_V2: [u8; 20] = [
    0x0d, 0xed, 0xe3, 0xde, 0xf7, 0x00, 0xa6, 0xdb, 0x81, 0x93, 0x81, 0xbe, 0x6e, 0x26, 0x9d, 0xcb,
    0xf9, 0xbd, 0x2e, 0xd9,
];
const VERSION_V1: u32 = 0x0000_0001;
const VERSION_V2: u32 = 0x6b33_43cf;

/// Largest datagram looked at.
pub const MAX_DATAGRAM: usize = 2048;
/// Length of the AEAD tag that ends a complete packet.
const TAG_LEN: usize = 16;

/// Why a datagram's server name could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuicError {
    /// Not a QUIC long-header Initial packet of a known version.
    #[error("not a QUIC Initial packet")]
    NotInitial,
    /// A length points past the data.
    #[error("truncated QUIC Initial ({0})")]
    Truncated(&'static str),
    /// The CRYPTO data is not a ClientHello this parser reads.
    #[error("no ClientHello in the QUIC Initial")]
    NoClientHello,
}

/// Whether a UDP payload starts like a QUIC v1/v2 long-header Initial packet.
pub fn looks_like_initial(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else { return false };
    let Some(version) = p
        .get(1..5)
        .map(|v| u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
    else {
        return false;
    };
    // Long header and fixed bit; Initial is type 0 in v1 and type 1 in v2.
    b0 & 0xc0 == 0xc0
        && match version {
            VERSION_V1 => (b0 >> 4) & 0x03 == 0,
            VERSION_V2 => (b0 >> 4) & 0x03 == 1,
            _ => false,
        }
}

/// Reads a QUIC variable-length integer at `*pos`.
fn varint(p: &[u8], pos: &mut usize) -> Option<u64> {
    let first = *p.get(*pos)?;
    let len = 1usize << (first >> 6);
    let bytes = p.get(*pos..*pos + len)?;
    let mut v = u64::from(first & 0x3f);
    for b in &bytes[1..] {
        v = (v << 8) | u64::from(*b);
    }
    *pos += len;
    Some(v)
}

/// TLS 1.3 HKDF-Expand-Label with an empty context.
fn expand_label(secret: &[u8], label: &[u8], out: &mut [u8]) -> Option<()> {
    let hk = Hkdf::<Sha256>::from_prk(secret).ok()?;
    let full_len = 6 + label.len();
    let mut info = Vec::with_capacity(4 + full_len);
    info.extend_from_slice(&(out.len() as u16).to_be_bytes());
    info.push(full_len as u8);
    info.extend_from_slice(b"tls13 ");
    info.extend_from_slice(label);
    info.push(0);
    hk.expand(&info, out).ok()
}

/// The client's Initial key, IV and header-protection key for a Destination Connection ID.
pub fn client_initial_keys(version: u32, dcid: &[u8]) -> Option<([u8; 16], [u8; 12], [u8; 16])> {
    let (salt, key_label, iv_label, hp_label): (&[u8], &[u8], &[u8], &[u8]) = match version {
        VERSION_V1 => (&SALT_V1, b"quic key", b"quic iv", b"quic hp"),
        VERSION_V2 => (&SALT_V2, b"quicv2 key", b"quicv2 iv", b"quicv2 hp"),
        _ => return None,
    };
    let (initial, _) = Hkdf::<Sha256>::extract(Some(salt), dcid);
    let mut client = [0u8; 32];
    expand_label(&initial, b"client in", &mut client)?;
    let mut key = [0u8; 16];
    let mut iv = [0u8; 12];
    let mut hp = [0u8; 16];
    expand_label(&client, key_label, &mut key)?;
    expand_label(&client, iv_label, &mut iv)?;
    expand_label(&client, hp_label, &mut hp)?;
    Some((key, iv, hp))
}

/// The header-protection mask: AES-128-ECB of the 16-byte sample.
pub fn hp_mask(hp: &[u8; 16], sample: &[u8; 16]) -> [u8; 16] {
    let cipher = Aes128::new(GenericArray::from_slice(hp));
    let mut block = GenericArray::clone_from_slice(sample);
    cipher.encrypt_block(&mut block);
    let mut out = [0u8; 16];
    out.copy_from_slice(&block);
    out
}

/// Decrypts a client Initial and returns the server name of the ClientHello it carries.
pub fn initial_sni(datagram: &[u8]) -> Result<Option<String>, QuicError> {
    let (_, payload) = decrypt_initial(datagram)?;
    let crypto = crypto_stream(&payload)?;
    match tls::parse_handshake(&crypto) {
        Ok(hello) => Ok(hello.sni.map(str::to_owned)),
        Err(tls::TlsError::NotClientHello) => Err(QuicError::NoClientHello),
        // A ClientHello cut at the datagram's end: read as far as it goes.
        Err(_) => Ok(None),
    }
}

/// A client Initial's Destination Connection ID and its decrypted frames (the tag is not
/// checked): what [`initial_sni`] reads, and what `reassembly::CryptoReassembler` joins
/// across the Initial packets of one connection.
pub(crate) fn decrypt_initial(datagram: &[u8]) -> Result<(&[u8], Vec<u8>), QuicError> {
    if !looks_like_initial(datagram) {
        return Err(QuicError::NotInitial);
    }
    let p = datagram
        .get(..datagram.len().min(MAX_DATAGRAM))
        .unwrap_or(datagram);
    let version = u32::from_be_bytes([p[1], p[2], p[3], p[4]]);
    let mut pos = 5usize;
    let dcid_len = usize::from(*p.get(pos).ok_or(QuicError::Truncated("dcid"))?);
    if dcid_len > 20 {
        return Err(QuicError::NotInitial);
    }
    let dcid = p
        .get(pos + 1..pos + 1 + dcid_len)
        .ok_or(QuicError::Truncated("dcid"))?;
    pos += 1 + dcid_len;
    let scid_len = usize::from(*p.get(pos).ok_or(QuicError::Truncated("scid"))?);
    pos += 1 + scid_len;
    let token_len = varint(p, &mut pos).ok_or(QuicError::Truncated("token"))? as usize;
    pos = pos
        .checked_add(token_len)
        .ok_or(QuicError::Truncated("token"))?;
    let length = varint(p, &mut pos).ok_or(QuicError::Truncated("length"))? as usize;
    let pn_offset = pos;
    let end = pn_offset
        .checked_add(length)
        .ok_or(QuicError::Truncated("length"))?;
    // A cut datagram (snap length) keeps what it has; the tag, if complete, is not checked.
    let packet = p.get(..end.min(p.len())).unwrap_or(p);
    let sample: [u8; 16] = packet
        .get(pn_offset + 4..pn_offset + 20)
        .and_then(|s| s.try_into().ok())
        .ok_or(QuicError::Truncated("sample"))?;
    let (key, iv, hp) = client_initial_keys(version, dcid).ok_or(QuicError::NotInitial)?;
    let mask = hp_mask(&hp, &sample);
    let first = packet[0] ^ (mask[0] & 0x0f);
    let pn_len = usize::from(first & 0x03) + 1;
    let pn_bytes = packet
        .get(pn_offset..pn_offset + pn_len)
        .ok_or(QuicError::Truncated("pn"))?;
    let mut pn: u64 = 0;
    for (b, m) in pn_bytes.iter().zip(&mask[1..]) {
        pn = (pn << 8) | u64::from(b ^ m);
    }
    let mut nonce = iv;
    for (i, b) in pn.to_be_bytes().iter().enumerate() {
        nonce[4 + i] ^= b;
    }
    // The ciphertext ends before the tag of a complete packet, or where the capture ends.
    let ct_end = packet.len().min(end.saturating_sub(TAG_LEN));
    let mut payload = packet
        .get(pn_offset + pn_len..ct_end)
        .filter(|c| !c.is_empty())
        .ok_or(QuicError::Truncated("payload"))?
        .to_vec();
    gcm_keystream_xor(&key, &nonce, &mut payload);
    Ok((dcid, payload))
}

/// Applies AES-128-GCM's payload keystream (RFC 9001 AEAD_AES_128_GCM without the tag):
/// AES-CTR over the counter block `nonce || ctr`, `ctr` starting at 2 (J0 = `nonce || 1`
/// for a 96-bit nonce, and the payload starts at J0 + 1), incremented modulo 2^32.
fn gcm_keystream_xor(key: &[u8; 16], nonce: &[u8; 12], data: &mut [u8]) {
    let cipher = Aes128::new(GenericArray::from_slice(key));
    let mut counter: u32 = 2;
    for chunk in data.chunks_mut(16) {
        let mut block = GenericArray::from([0u8; 16]);
        block[..12].copy_from_slice(nonce);
        block[12..].copy_from_slice(&counter.to_be_bytes());
        cipher.encrypt_block(&mut block);
        for (d, k) in chunk.iter_mut().zip(block.iter()) {
            *d ^= k;
        }
        counter = counter.wrapping_add(1);
    }
}

/// Reassembles the contiguous CRYPTO data from offset 0 out of the frames of one packet.
///
/// Frames are read as far as they go: the tag is not checked, so a cut or corrupted packet
/// ends in a truncated frame or garbage; what was read before it is kept, and a CRYPTO frame
/// cut at the end of the data contributes the bytes that are there.
fn crypto_stream(frames: &[u8]) -> Result<Vec<u8>, QuicError> {
    let mut pieces = crypto_pieces(frames);
    pieces.sort_by_key(|(o, _)| *o);
    let mut out: Vec<u8> = Vec::new();
    for (offset, data) in pieces {
        if offset > out.len() {
            break; // a gap: the rest is in another datagram
        }
        let skip = out.len() - offset;
        if let Some(rest) = data.get(skip..) {
            out.extend_from_slice(rest);
        }
    }
    if out.is_empty() {
        return Err(QuicError::NoClientHello);
    }
    Ok(out)
}

/// The CRYPTO frames of one packet's decrypted frames, as (offset, data), in packet order.
pub(crate) fn crypto_pieces(frames: &[u8]) -> Vec<(usize, &[u8])> {
    let mut pieces: Vec<(usize, &[u8])> = Vec::new();
    let mut pos = 0usize;
    while pos < frames.len() {
        let Some(kind) = varint(frames, &mut pos) else {
            break;
        };
        match kind {
            0x00 | 0x01 => {} // PADDING, PING
            0x02 | 0x03 => {
                // ACK: largest, delay, range count, first range, ranges (+ ECN counts).
                let mut skip_ack = || -> Option<()> {
                    let mut fields = [0u64; 4];
                    for f in &mut fields {
                        *f = varint(frames, &mut pos)?;
                    }
                    let ecn = if kind == 0x03 { 3 } else { 0 };
                    for _ in 0..fields[2].min(256) * 2 + ecn {
                        varint(frames, &mut pos)?;
                    }
                    Some(())
                };
                if skip_ack().is_none() {
                    break;
                }
            }
            0x06 => {
                let (Some(offset), Some(len)) =
                    (varint(frames, &mut pos), varint(frames, &mut pos))
                else {
                    break;
                };
                let (Ok(offset), Ok(len)) = (usize::try_from(offset), usize::try_from(len)) else {
                    break;
                };
                let rest = frames.get(pos..).unwrap_or_default();
                // Cut at the end of the data (snap length): keep the bytes that are there.
                let data = rest.get(..len).unwrap_or(rest);
                pieces.push((offset, data));
                pos = pos.saturating_add(len);
            }
            0x1c | 0x1d => break, // CONNECTION_CLOSE: nothing more of interest
            _ => break,           // frames not allowed in Initial packets (or garbage)
        }
    }
    pieces
}

/// Builds a QUIC v1 client Initial carrying `crypto` (a TLS handshake message) in one CRYPTO
/// frame, padded past 1100 bytes and protected as a client would: for tests and traffic
/// generators.
pub fn client_initial(dcid: &[u8], crypto: &[u8]) -> Option<Vec<u8>> {
    client_initial_pieces(dcid, 2, &[(0, crypto)])
}

/// Builds a QUIC v1 client Initial with packet number `pn` carrying one CRYPTO frame per
/// `(offset, data)` piece, in the given order (Chrome splits and shuffles its ClientHello
/// over several frames and, with a post-quantum key share, over two Initials), padded past
/// 1100 bytes: for tests and traffic generators.
pub fn client_initial_pieces(dcid: &[u8], pn: u16, pieces: &[(usize, &[u8])]) -> Option<Vec<u8>> {
    let (key, iv, hp) = client_initial_keys(VERSION_V1, dcid)?;
    let mut frames = Vec::new();
    for (offset, crypto) in pieces {
        frames.push(0x06);
        // Offsets as short as they go (0 is one byte), lengths as two bytes.
        if *offset < 64 {
            frames.push(*offset as u8);
        } else {
            frames.extend_from_slice(&(0x4000u16 | u16::try_from(*offset).ok()?).to_be_bytes());
        }
        frames.extend_from_slice(&(0x4000u16 | u16::try_from(crypto.len()).ok()?).to_be_bytes());
        frames.extend_from_slice(crypto);
    }
    let pn_len = 2usize;
    while frames.len() < 1100 {
        frames.push(0);
    }
    let length = pn_len + frames.len() + 16;
    let mut header = vec![0xc0 | (pn_len as u8 - 1), 0, 0, 0, 1, dcid.len() as u8];
    header.extend_from_slice(dcid);
    header.push(0); // scid
    header.push(0); // token length
    header.extend_from_slice(&(0x4000u16 | length as u16).to_be_bytes());
    let pn_offset = header.len();
    header.extend_from_slice(&pn.to_be_bytes());
    let mut nonce = iv;
    nonce[10] ^= (pn >> 8) as u8;
    nonce[11] ^= pn as u8;
    let aead = Aes128Gcm::new(GenericArray::from_slice(&key));
    let mut payload = frames;
    let tag = aead
        .encrypt_in_place_detached(GenericArray::from_slice(&nonce), &header, &mut payload)
        .ok()?;
    let mut packet = header;
    packet.extend_from_slice(&payload);
    packet.extend_from_slice(&tag);
    let sample: [u8; 16] = packet.get(pn_offset + 4..pn_offset + 20)?.try_into().ok()?;
    let mask = hp_mask(&hp, &sample);
    packet[0] ^= mask[0] & 0x0f;
    for i in 0..pn_len {
        packet[pn_offset + i] ^= mask[1 + i];
    }
    Some(packet)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn rfc9001_appendix_a_client_keys() {
        let (key, iv, hp) = client_initial_keys(VERSION_V1, &hex("8394c8f03e515708")).unwrap();
        assert_eq!(key.to_vec(), hex("1f369613dd76d5467730efcbe3b1a22d"));
        assert_eq!(iv.to_vec(), hex("fa044b2f42a3fd3b46fb255c"));
        assert_eq!(hp.to_vec(), hex("9f50449e04a0e810283a1e9933adedd2"));
        let sample: [u8; 16] = hex("d1b1c98dd7689fb8ec11d242b123dc9b").try_into().unwrap();
        assert_eq!(hp_mask(&hp, &sample)[..5].to_vec(), hex("437b9aec36"));
    }

    #[test]
    fn reads_the_sni_of_a_client_initial() {
        let record = crate::protocols::tls::tests::client_hello("quic-evil.example");
        let handshake = &record[5..];
        let p = client_initial(&hex("8394c8f03e515708"), handshake).unwrap();
        assert!(looks_like_initial(&p));
        assert_eq!(
            initial_sni(&p).unwrap().as_deref(),
            Some("quic-evil.example")
        );
    }

    /// A client Initial naming `sni` and the datagram length at which its `server_name`
    /// extension (the ClientHello's last) ends.
    fn initial_and_sni_end(sni: &str) -> (Vec<u8>, usize) {
        let record = crate::protocols::tls::tests::client_hello(sni);
        let handshake = &record[5..];
        let dcid = [1, 2, 3, 4, 5, 6, 7, 8];
        let p = client_initial(&dcid, handshake).unwrap();
        // first byte, version, dcid length + dcid, scid length, token length, 2-byte length,
        // 2-byte packet number, then the CRYPTO frame header (type, offset, 2-byte length).
        let sni_end = 1 + 4 + 1 + dcid.len() + 1 + 1 + 2 + 2 + 4 + handshake.len();
        (p, sni_end)
    }

    #[test]
    fn a_corrupted_tag_still_yields_the_sni() {
        let (mut p, _) = initial_and_sni_end("tag-evil.example");
        let last = p.len() - 1;
        p[last] ^= 0xff;
        p[last - 15] ^= 0x01;
        assert_eq!(
            initial_sni(&p).unwrap().as_deref(),
            Some("tag-evil.example")
        );
        // A middlebox-modified byte in the padding fails the tag too; the name is intact.
        let mut q = initial_and_sni_end("tag-evil.example").0;
        q[600] ^= 0x5a;
        assert_eq!(
            initial_sni(&q).unwrap().as_deref(),
            Some("tag-evil.example")
        );
    }

    #[test]
    fn an_initial_cut_after_the_sni_extension_still_yields_it() {
        let (p, sni_end) = initial_and_sni_end("snaplen-evil.example");
        assert!(sni_end < p.len() - 16);
        // Every cut from right after the extension to the full datagram.
        for len in sni_end..=p.len() {
            assert_eq!(
                initial_sni(&p[..len]).unwrap().as_deref(),
                Some("snaplen-evil.example"),
                "cut at {len}"
            );
        }
        // One byte short: the extension is incomplete, so no name (and no error to panic on).
        for len in sni_end - 4..sni_end {
            assert_eq!(initial_sni(&p[..len]), Ok(None), "cut at {len}");
        }
    }

    #[test]
    fn gcm_keystream_matches_aes_gcm() {
        let (key, iv, _) = client_initial_keys(VERSION_V1, &hex("8394c8f03e515708")).unwrap();
        let plain: Vec<u8> = (0..100u8).collect();
        let mut sealed = plain.clone();
        Aes128Gcm::new(GenericArray::from_slice(&key))
            .encrypt_in_place_detached(GenericArray::from_slice(&iv), b"aad", &mut sealed)
            .unwrap();
        gcm_keystream_xor(&key, &iv, &mut sealed);
        assert_eq!(sealed, plain);
    }

    #[test]
    fn garbage_and_cut_packets_are_errors_not_panics() {
        let record = crate::protocols::tls::tests::client_hello("a.example");
        let p = client_initial(&[1, 2, 3, 4, 5, 6, 7, 8], &record[5..]).unwrap();
        for len in 0..p.len() {
            let _ = initial_sni(&p[..len]);
        }
        assert_eq!(initial_sni(b"\\x40hello"), Err(QuicError::NotInitial));
        // Deterministic mutations: byte flips anywhere (header, lengths, frames, name) and
        // random payloads behind a valid-looking header. The name, when one is reported, is
        // what the ClientHello says or a mutation of it; nothing panics.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..3000 {
            let mut m = p.clone();
            for _ in 0..=next() % 4 {
                let at = (next() % m.len() as u64) as usize;
                m[at] ^= (next() as u8) | 1;
            }
            let cut = m.len() - (next() % 64) as usize;
            let _ = initial_sni(&m[..cut]);
        }
        for _ in 0..300 {
            let len = 26 + (next() % 1500) as usize;
            let mut g: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            g[..6].copy_from_slice(&[0xc0, 0, 0, 0, 1, 8]);
            g[14] = 0; // scid
            g[15] = 0; // token
            let _ = initial_sni(&g);
            g[16] = 0x40 | (next() as u8 & 0x3f);
            let _ = initial_sni(&g);
        }
    }
}
