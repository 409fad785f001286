//! Deltas between two compiled trail set files, for the collector's `Trails.FetchDelta`.
//!
//! Both files are cut into content-defined chunks (a gear rolling hash, 64 B to 4 KiB,
//! about 256 B on average), so an inserted or removed row shifts only the chunks around it.
//! The delta lists, for the new file, runs copied from the old one and the bytes that are
//! new. Applying checks the old file's SHA-256 first and the result's SHA-256 last: a delta
//! that is damaged, or meant for another base, is refused rather than producing a wrong file.
//! The caller still verifies the result as a whole set ([`super::compiled::verify_bytes`]).
//!
//! Format (integers little-endian):
//!
//! ```text
//! magic "XTDELTA2", SHA-256 of the base (32), SHA-256 of the target (32), target length (u64)
//! then, deflate-compressed to the end, ops: 0, offset (u64), length (u32)   copy from the base
//!                                           1, length (u32), bytes          literal bytes
//! ```

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::{Read as _, Write as _};

use sha2::{Digest, Sha256};

/// First bytes of a delta.
pub const MAGIC: &[u8; 8] = b"XTDELTA2";
const HEAD: usize = 8 + 32 + 32 + 8;
const MIN_CHUNK: usize = 64;
const MAX_CHUNK: usize = 4096;
/// Boundary when the low 8 bits of the rolling hash are zero: 256 B on average.
const MASK: u64 = (1 << 8) - 1;

/// Why a delta was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeltaError {
    /// Not a delta, or cut short.
    #[error("not a trail set delta, or truncated")]
    Malformed,
    /// Made against another base than the one given.
    #[error("the delta is for another base set")]
    WrongBase,
    /// An op reaches outside the base or beyond the announced length.
    #[error("the delta reaches outside its bounds")]
    OutOfBounds,
    /// The announced target is larger than allowed.
    #[error("the delta's target ({0} bytes) is larger than allowed")]
    TooLarge(u64),
    /// The result does not have the announced checksum.
    #[error("the rebuilt set does not match the delta's SHA-256")]
    Checksum,
}

fn gear() -> [u64; 256] {
    // splitmix64 from a fixed seed: the table must be the same on both ends.
    let mut s: u64 = 0x7874_7261_696c_7331;
    let mut t = [0u64; 256];
    for v in &mut t {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        *v = z ^ (z >> 31);
    }
    t
}

/// Content-defined chunk boundaries of `data` (end offsets).
fn chunks(data: &[u8], gear: &[u64; 256]) -> Vec<usize> {
    let mut ends = Vec::with_capacity(data.len() / 200 + 1);
    let mut start = 0;
    while start < data.len() {
        let limit = (start + MAX_CHUNK).min(data.len());
        let mut end = limit;
        let mut h: u64 = 0;
        let mut i = start;
        while i < limit {
            h = (h << 1).wrapping_add(gear[data[i] as usize]);
            i += 1;
            if i - start >= MIN_CHUNK && h & MASK == 0 {
                end = i;
                break;
            }
        }
        ends.push(end);
        start = end;
    }
    ends
}

fn chunk_hash(b: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

enum Op {
    Copy(u64, u32),
    Insert(usize, usize),
}

/// The delta that turns `base` into `target`.
pub fn diff(base: &[u8], target: &[u8]) -> Vec<u8> {
    let g = gear();
    let mut index: HashMap<u64, (usize, usize)> = HashMap::new();
    let mut s = 0;
    for e in chunks(base, &g) {
        index.entry(chunk_hash(&base[s..e])).or_insert((s, e));
        s = e;
    }
    let mut ops: Vec<Op> = Vec::new();
    let mut s = 0;
    for e in chunks(target, &g) {
        let piece = &target[s..e];
        let found = index
            .get(&chunk_hash(piece))
            .filter(|(bs, be)| &base[*bs..*be] == piece);
        match (found, ops.last_mut()) {
            (Some(&(bs, be)), Some(Op::Copy(off, len)))
                if *off + u64::from(*len) == bs as u64
                    && (*len as usize) + (be - bs) <= u32::MAX as usize =>
            {
                *len += (be - bs) as u32;
            }
            (Some(&(bs, be)), _) => ops.push(Op::Copy(bs as u64, (be - bs) as u32)),
            (None, Some(Op::Insert(_, ie))) if *ie == s => *ie = e,
            (None, _) => ops.push(Op::Insert(s, e)),
        }
        s = e;
    }
    let mut head = Vec::with_capacity(HEAD);
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&Sha256::digest(base));
    head.extend_from_slice(&Sha256::digest(target));
    head.extend_from_slice(&(target.len() as u64).to_le_bytes());
    let mut out = Vec::with_capacity(target.len() / 8);
    for op in ops {
        match op {
            Op::Copy(off, len) => {
                out.push(0);
                out.extend_from_slice(&off.to_le_bytes());
                out.extend_from_slice(&len.to_le_bytes());
            }
            Op::Insert(s, e) => {
                // Literal runs are split at u32::MAX (never reached by real sets).
                for part in target[s..e].chunks(u32::MAX as usize) {
                    out.push(1);
                    out.extend_from_slice(&(part.len() as u32).to_le_bytes());
                    out.extend_from_slice(part);
                }
            }
        }
    }
    let mut z = flate2::write::DeflateEncoder::new(head, flate2::Compression::new(6));
    // Writing to a Vec cannot fail.
    let _ = z.write_all(&out);
    z.finish().unwrap_or_default()
}

/// The SHA-256 of the base a delta was made against.
pub fn base_sha256(delta: &[u8]) -> Result<[u8; 32], DeltaError> {
    if delta.len() < HEAD || &delta[..8] != MAGIC {
        return Err(DeltaError::Malformed);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(&delta[8..40]);
    Ok(out)
}

/// Rebuilds the target from `base` and `delta`; refuses a target above `max_len` bytes.
pub fn apply(base: &[u8], delta: &[u8], max_len: u64) -> Result<Vec<u8>, DeltaError> {
    if base_sha256(delta)?.as_slice() != Sha256::digest(base).as_slice() {
        return Err(DeltaError::WrongBase);
    }
    let target_sha = &delta[40..72];
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&delta[72..80]);
    let target_len = u64::from_le_bytes(len8);
    if target_len > max_len {
        return Err(DeltaError::TooLarge(target_len));
    }
    // The ops are at most the target's bytes plus 13 per op (one per 64 target bytes at
    // least, else merged): bound the inflated size accordingly.
    let limit = target_len.saturating_mul(2).saturating_add(1 << 20);
    let mut ops = Vec::new();
    flate2::read::DeflateDecoder::new(&delta[HEAD..])
        .take(limit)
        .read_to_end(&mut ops)
        .map_err(|_| DeltaError::Malformed)?;
    let delta = ops.as_slice();
    let mut out = Vec::with_capacity(target_len as usize);
    let mut at = 0;
    let take = |at: &mut usize, n: usize| -> Result<&[u8], DeltaError> {
        let b = delta.get(*at..*at + n).ok_or(DeltaError::Malformed)?;
        *at += n;
        Ok(b)
    };
    while at < delta.len() {
        let tag = take(&mut at, 1)?[0];
        let piece = match tag {
            0 => {
                let mut o = [0u8; 8];
                o.copy_from_slice(take(&mut at, 8)?);
                let mut l = [0u8; 4];
                l.copy_from_slice(take(&mut at, 4)?);
                let off =
                    usize::try_from(u64::from_le_bytes(o)).map_err(|_| DeltaError::OutOfBounds)?;
                let len = u32::from_le_bytes(l) as usize;
                let end = off.checked_add(len).ok_or(DeltaError::OutOfBounds)?;
                base.get(off..end).ok_or(DeltaError::OutOfBounds)?
            }
            1 => {
                let mut l = [0u8; 4];
                l.copy_from_slice(take(&mut at, 4)?);
                take(&mut at, u32::from_le_bytes(l) as usize)?
            }
            _ => return Err(DeltaError::Malformed),
        };
        if out.len() as u64 + piece.len() as u64 > target_len {
            return Err(DeltaError::OutOfBounds);
        }
        out.extend_from_slice(piece);
    }
    if out.len() as u64 != target_len {
        return Err(DeltaError::Malformed);
    }
    if Sha256::digest(&out).as_slice() != target_sha {
        return Err(DeltaError::Checksum);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 33) as u8
            })
            .collect()
    }

    #[test]
    fn rebuilds_the_target_and_is_small_for_a_small_change() {
        let base = pseudo(200_000, 1);
        let mut target = base.clone();
        target.splice(50_000..50_010, b"inserted bytes, longer".iter().copied());
        target[150_000] ^= 0xff;
        let d = diff(&base, &target);
        assert!(d.len() < 10_000, "delta {} bytes", d.len());
        assert_eq!(apply(&base, &d, 1 << 20).unwrap(), target);
        // Identical and disjoint inputs work too.
        assert_eq!(apply(&base, &diff(&base, &base), 1 << 20).unwrap(), base);
        let other = pseudo(5_000, 2);
        assert_eq!(apply(&base, &diff(&base, &other), 1 << 20).unwrap(), other);
        assert_eq!(apply(&[], &diff(&[], &other), 1 << 20).unwrap(), other);
    }

    #[test]
    fn refuses_damaged_or_foreign_deltas() {
        let base = pseudo(100_000, 3);
        let mut target = base.clone();
        target[10] ^= 1;
        let d = diff(&base, &target);
        let mut bad = d.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x55;
        assert!(apply(&base, &bad, 1 << 20).is_err());
        assert_eq!(
            apply(&target, &d, 1 << 20).unwrap_err(),
            DeltaError::WrongBase
        );
        assert_eq!(
            apply(&base, &d[..d.len() - 3], 1 << 20).unwrap_err(),
            DeltaError::Malformed
        );
        assert!(matches!(
            apply(&base, &d, 10).unwrap_err(),
            DeltaError::TooLarge(_)
        ));
        assert_eq!(
            apply(&base, b"garbage", 1 << 20).unwrap_err(),
            DeltaError::Malformed
        );
        // A copy op pointing past the base.
        let mut op = vec![0u8];
        op.extend_from_slice(&(u64::MAX - 2).to_le_bytes());
        op.extend_from_slice(&8u32.to_le_bytes());
        let mut z =
            flate2::write::DeflateEncoder::new(d[..HEAD].to_vec(), flate2::Compression::fast());
        z.write_all(&op).unwrap();
        let oob = z.finish().unwrap();
        assert_eq!(
            apply(&base, &oob, 1 << 20).unwrap_err(),
            DeltaError::OutOfBounds
        );
    }
}
