//! QUIC Initial packets (RFC 9000/9001, QUIC v1 and v2): the TLS ClientHello's server name.
//!
//! A client's first packet is encrypted with keys derived from its Destination Connection ID
//! alone, so any observer can read it: HKDF over the version's public salt gives the key,
//! IV and header-protection key; header protection is removed with AES-ECB over a sample of
//! the ciphertext; the payload is opened with AES-128-GCM; its CRYPTO frames hold the
//! ClientHello. Only what one datagram carries is read (a ClientHello split over several
//! Initial packets is read as far as the first goes). Every length is checked; a packet
//! that does not decrypt is simply not an Initial this parser can read.

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
const MAX_DATAGRAM: usize = 2048;

/// Why a datagram's server name could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuicError {
    /// Not a QUIC long-header Initial packet of a known version.
    #[error("not a QUIC Initial packet")]
    NotInitial,
    /// A length points past the data.
    #[error("truncated QUIC Initial ({0})")]
    Truncated(&'static str),
    /// The payload did not decrypt (not a client Initial, or corrupted).
    #[error("QUIC Initial did not decrypt")]
    Decrypt,
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
    let packet = p.get(..end).ok_or(QuicError::Truncated("payload"))?;
    let sample: [u8; 16] = packet
        .get(pn_offset + 4..pn_offset + 20)
        .and_then(|s| s.try_into().ok())
        .ok_or(QuicError::Truncated("sample"))?;
    let (key, iv, hp) = client_initial_keys(version, dcid).ok_or(QuicError::NotInitial)?;
    let mask = hp_mask(&hp, &sample);
    let mut header = packet
        .get(..pn_offset + 4)
        .ok_or(QuicError::Truncated("pn"))?
        .to_vec();
    header[0] ^= mask[0] & 0x0f;
    let pn_len = usize::from(header[0] & 0x03) + 1;
    header.truncate(pn_offset + pn_len);
    let mut pn: u64 = 0;
    for i in 0..pn_len {
        header[pn_offset + i] ^= mask[1 + i];
        pn = (pn << 8) | u64::from(header[pn_offset + i]);
    }
    let mut nonce = iv;
    for (i, b) in pn.to_be_bytes().iter().enumerate() {
        nonce[4 + i] ^= b;
    }
    let mut payload = packet
        .get(pn_offset + pn_len..)
        .ok_or(QuicError::Truncated("payload"))?
        .to_vec();
    if payload.len() < 16 {
        return Err(QuicError::Truncated("payload"));
    }
    let tag_at = payload.len() - 16;
    let tag = GenericArray::clone_from_slice(&payload[tag_at..]);
    payload.truncate(tag_at);
    let aead = Aes128Gcm::new(GenericArray::from_slice(&key));
    aead.decrypt_in_place_detached(
        GenericArray::from_slice(&nonce),
        &header,
        &mut payload,
        &tag,
    )
    .map_err(|_| QuicError::Decrypt)?;
    let crypto = crypto_stream(&payload)?;
    match tls::parse_handshake(&crypto) {
        Ok(hello) => Ok(hello.sni.map(str::to_owned)),
        Err(tls::TlsError::NotClientHello) => Err(QuicError::NoClientHello),
        // A ClientHello cut at the datagram's end: read as far as it goes.
        Err(_) => Ok(None),
    }
}

/// Reassembles the contiguous CRYPTO data from offset 0 out of the frames of one packet.
fn crypto_stream(frames: &[u8]) -> Result<Vec<u8>, QuicError> {
    let mut pieces: Vec<(usize, &[u8])> = Vec::new();
    let mut pos = 0usize;
    while pos < frames.len() {
        let kind = varint(frames, &mut pos).ok_or(QuicError::Truncated("frame"))?;
        match kind {
            0x00 | 0x01 => {} // PADDING, PING
            0x02 | 0x03 => {
                // ACK: largest, delay, range count, first range, ranges (+ ECN counts).
                let mut fields = [0u64; 4];
                for f in &mut fields {
                    *f = varint(frames, &mut pos).ok_or(QuicError::Truncated("ack"))?;
                }
                for _ in 0..fields[2].min(256) * 2 {
                    varint(frames, &mut pos).ok_or(QuicError::Truncated("ack"))?;
                }
                if kind == 0x03 {
                    for _ in 0..3 {
                        varint(frames, &mut pos).ok_or(QuicError::Truncated("ack"))?;
                    }
                }
            }
            0x06 => {
                let offset =
                    varint(frames, &mut pos).ok_or(QuicError::Truncated("crypto"))? as usize;
                let len = varint(frames, &mut pos).ok_or(QuicError::Truncated("crypto"))? as usize;
                let data = frames
                    .get(pos..pos + len)
                    .ok_or(QuicError::Truncated("crypto"))?;
                pieces.push((offset, data));
                pos += len;
            }
            0x1c | 0x1d => break, // CONNECTION_CLOSE: nothing more of interest
            _ => break,           // frames not allowed in Initial packets
        }
    }
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

/// Builds a QUIC v1 client Initial carrying `crypto` (a TLS handshake message) in one CRYPTO
/// frame, padded past 1100 bytes and protected as a client would: for tests and traffic
/// generators.
pub fn client_initial(dcid: &[u8], crypto: &[u8]) -> Option<Vec<u8>> {
    let (key, iv, hp) = client_initial_keys(VERSION_V1, dcid)?;
    let mut frames = vec![0x06, 0x00];
    frames.extend_from_slice(&(0x4000u16 | crypto.len() as u16).to_be_bytes());
    frames.extend_from_slice(crypto);
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
    header.extend_from_slice(&[0x00, 0x02]); // packet number 2
    let mut nonce = iv;
    nonce[11] ^= 2;
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

    #[test]
    fn garbage_and_cut_packets_are_errors_not_panics() {
        let record = crate::protocols::tls::tests::client_hello("a.example");
        let p = client_initial(&[1, 2, 3, 4, 5, 6, 7, 8], &record[5..]).unwrap();
        for len in 0..p.len() {
            let _ = initial_sni(&p[..len]);
        }
        let mut bad = p.clone();
        bad[200] ^= 0xff;
        assert_eq!(initial_sni(&bad), Err(QuicError::Decrypt));
        assert_eq!(initial_sni(b"\\x40hello"), Err(QuicError::NotInitial));
    }
}
