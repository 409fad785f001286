//! Compiled trail sets: one file holding a whole [`TrailSet`], versioned, checksummed and
//! optionally signed, that the sensor memory-maps instead of parsing text.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! header, 256 bytes
//!   0  magic "XTRAILS\0"          8  format (u32, 6)        12 flags (u32, bit 0: signed)
//!   16 body length (u64)          24 SHA-256 of the body (32 bytes)
//!   56 signer's ed25519 public key (32, zero if unsigned)
//!   88 ed25519 signature over the header with these 64 bytes zeroed (zero if unsigned)
//!   152 KeyHasher check value (u64): the hash the name tables were built with
//!   160 version length (u16)      162 version text (at most 64 bytes)
//! body (starts at 256; sections 8-aligned, offsets relative to the body)
//!   section count (u32), 0 (u32), then per section: id (u32), 0 (u32), offset (u64), length (u64)
//! ```
//!
//! IPv4 address and IPv4 `IP:port` trails (the bulk) are stored as ready-made cuckoo tables
//! ([`super::iptable`]), the very buckets the XDP program's array maps hold: opening a set
//! neither copies nor reads them (the 128 KiB IPv4 block prefilter userspace lookups start
//! with is stored ready-made too, the `V4Blocks` section), userspace looks up in place in the
//! mapping, and the sensor fills the kernel maps straight from the mapped bytes. The
//! `Tables` section holds their sizes: `log2` bucket count (u32) and key count (u32), IPv4 then `IP:port`.
//! The other IP trails (IPv6, IPv6 `IP:port`, CIDRs: a few thousand) are stored as sorted
//! arrays of addresses (and ports, prefixes) and of label ids ([`CompiledSet::ip_tables`]),
//! copied into hash maps at open. They are not the kernel maps' keys: those carry the index
//! of the trail set (0 or 1) they belong to, added when the sensor fills the maps
//! (`sensor-user/src/trail_maps.rs`).
//!
//! Formats 1 (sorted IPv4 arrays, hash maps built at every open), 2 (no stored prefilter:
//! every open read both IPv4 tables to build it), 3 (no stored URL filter), 4 (the name
//! tables' tag bytes apart from their slots: two cache lines a probe) and 5 (no stored
//! domain filter) are refused with a message that says to rebuild the set (`xtrail-trails
//! build`); sets are build artefacts, so no reader for an old layout is kept.
//! Domain and URL tables are [`super::table::StrTable`]s (arena and slots), searched in
//! place: opening a set touches only the header, the labels, the regexes, the prefilter and
//! the other IP arrays. The URL table's probe filter (the `UrlFilter` section: a bit per
//! hash of each URL trail and of its `host/` prefix, u64 LE words) and the domain table's
//! (`DomainFilter`: a bit per hash of each name) are stored ready-made too and read in
//! place: building them at open would read every trail.
//! The body checksum is computed with `read(2)`, not through the mapping, so verifying does
//! not make the whole file resident. [`CompiledSet::open_checking`] computes it on another
//! thread while the caller goes on with the (not yet trusted) set: the sensor fills its
//! kernel maps meanwhile and waits for the verdict before it attaches.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use super::domain::{filter_words as domain_filter_words, label_flags, DomainTrails, RegexTrails};
use super::iptable::{CuckooTable, IpPortTrails, V4Trails};
use super::table::{KeyHasher, SharedBytes, StrTable};
use super::url::{filter_words as url_filter_words, UrlTrails};
use super::{IpTrails, Label, LabelId, LoadReport, TrailSet};

/// First bytes of a compiled set.
pub const MAGIC: &[u8; 8] = b"XTRAILS\0";
/// Format version this code reads and writes.
pub const FORMAT: u32 = 6;
/// Header size; the body starts here.
pub const HEADER_LEN: usize = 256;
const MAX_VERSION: usize = 64;
const FLAG_SIGNED: u32 = 1;
const SIG_RANGE: std::ops::Range<usize> = 88..152;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u32)]
enum Section {
    Labels = 1,
    /// Format 1's sorted IPv4 arrays (ids 2 and 3) are gone: the tables replace them.
    V6Keys = 4,
    V6Labels,
    IpPortKeys,
    IpPortLabels,
    Cidr4Keys,
    Cidr4Labels,
    Cidr6Keys,
    Cidr6Labels,
    DomainArena,
    /// The domain table's slots (u64 LE: record offset + 1 and the key hash's top half).
    DomainSlots,
    /// Format 4's tag bytes (ids 14 and 17) are in the slots now.
    UrlArena = 15,
    UrlSlots,
    Regexes = 18,
    Counts,
    Meta,
    /// Buckets of the IPv4 address table.
    V4Table,
    /// Buckets of the IPv4 `IP:port` table.
    IpPortTable,
    /// Sizes of the two tables.
    Tables,
    /// The userspace IPv4 prefilter's bitmap ([`IpTrails::v4_block_bits`], u64 LE words).
    V4Blocks,
    /// The URL table's probe filter (`url::filter_words`, u64 LE words).
    UrlFilter,
    /// The domain table's probe filter (`domain::filter_words`, u64 LE words).
    DomainFilter,
}

/// Why a compiled set was refused.
#[derive(Debug, thiserror::Error)]
pub enum CompiledError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Not a compiled set, or a format this build does not read.
    #[error("not an xtrail compiled trail set ({0})")]
    Format(String),
    /// The body does not match the checksum in the header (truncated or altered).
    #[error("checksum mismatch: the set is truncated or was altered")]
    Checksum,
    /// A public key was given and the set is not signed.
    #[error("the set is not signed and a public key is configured")]
    Unsigned,
    /// Signed by another key, or the header was altered.
    #[error("bad signature: signed by another key, or altered")]
    Signature,
    /// A structural problem inside a checksummed body.
    #[error("damaged set: {0}")]
    Layout(&'static str),
}

/// What [`write`] needs besides the set.
#[derive(Clone, Debug, Default)]
pub struct CompileOptions {
    /// Build time (Unix seconds), the first half of the version.
    pub built_at: u64,
    /// ed25519 private key (seed) to sign with.
    pub signing_key: Option<[u8; 32]>,
    /// Free-form build description stored in the set (JSON object), e.g. sources and feed
    /// counts; shown by `xtrail-trails verify`.
    pub meta: serde_json::Value,
}

/// The header of a compiled set, as read and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// `YYYYmmddTHHMMSSZ-<first 12 hex digits of the body SHA-256>`.
    pub version: String,
    /// SHA-256 of the body.
    pub body_sha256: [u8; 32],
    /// Body length.
    pub body_len: u64,
    /// The signer's public key, if signed.
    pub signer: Option<[u8; 32]>,
}

/// IP tables of a compiled set, read in place: the IPv4 cuckoo tables' buckets, and the
/// other kinds sorted by key. The kernel maps' keys add the trail set index to the sorted
/// ones (see `sensor-user/src/trail_maps.rs`).
#[derive(Clone, Copy, Debug)]
pub struct IpTables<'a> {
    /// IPv4 address trails ([`super::iptable`] buckets).
    pub v4_table: &'a [super::iptable::Bucket],
    /// IPv4 `IP:port` trails ([`super::iptable`] buckets).
    pub ipport4_table: &'a [super::iptable::Bucket],
    /// IPv6 addresses.
    pub v6_keys: &'a [[u8; 16]],
    /// Labels of `v6_keys`.
    pub v6_labels: &'a [u32],
    /// IPv6 `IP:port` trails: address, port (LE), 2 zero bytes ([`ipport_key`]).
    pub ipport_keys: &'a [[u8; 20]],
    /// Labels of `ipport_keys`.
    pub ipport_labels: &'a [u32],
    /// Prefix length (u32 LE, of the address alone), address.
    pub cidr4_keys: &'a [[u8; 8]],
    /// Labels of `cidr4_keys`.
    pub cidr4_labels: &'a [u32],
    /// Prefix length (u32 LE, of the address alone), address.
    pub cidr6_keys: &'a [[u8; 20]],
    /// Labels of `cidr6_keys`.
    pub cidr6_labels: &'a [u32],
}

/// An opened, verified compiled set.
pub struct CompiledSet {
    header: Header,
    map: Arc<memmap2::Mmap>,
    sections: Vec<(u32, std::ops::Range<usize>)>,
    trails: TrailSet,
    meta: serde_json::Value,
}

impl std::fmt::Debug for CompiledSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledSet")
            .field("header", &self.header)
            .field("bytes", &self.map.len())
            .finish()
    }
}

/// Whether `path` starts with the compiled-set magic (false if it cannot be read).
pub fn is_compiled(path: &Path) -> bool {
    let mut m = [0u8; 8];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut m))
        .is_ok_and(|()| &m == MAGIC)
}

/// A fresh ed25519 key pair: (private seed, public key). The seed comes from the OS.
pub fn generate_key() -> std::io::Result<([u8; 32], [u8; 32])> {
    let mut seed = [0u8; 32];
    File::open("/dev/urandom")?.read_exact(&mut seed)?;
    let key = SigningKey::from_bytes(&seed);
    Ok((seed, key.verifying_key().to_bytes()))
}

/// The public key of a private seed.
pub fn public_key(seed: &[u8; 32]) -> [u8; 32] {
    SigningKey::from_bytes(seed).verifying_key().to_bytes()
}

fn align8(v: &mut Vec<u8>) {
    while !v.len().is_multiple_of(8) {
        v.push(0);
    }
}

fn put_u32s(out: &mut Vec<u8>, it: impl Iterator<Item = u32>) {
    for v in it {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn put_u64s(out: &mut Vec<u8>, it: impl Iterator<Item = u64>) {
    for v in it {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// A name table rebuilt from sorted keys, so equal content gives equal bytes.
fn canonical_table(t: &StrTable) -> StrTable {
    let mut keys: Vec<(&[u8], LabelId)> = t.iter().collect();
    keys.sort_unstable();
    let mut out = StrTable::default();
    for (k, l) in keys {
        out.insert(k, l);
    }
    out
}

/// Serialises a set: the complete file (header and body).
pub fn write(set: &TrailSet, opts: &CompileOptions) -> Vec<u8> {
    let mut sections: Vec<(Section, Vec<u8>)> = Vec::new();
    let mut labels = Vec::new();
    put_u32s(&mut labels, std::iter::once(set.labels.len() as u32));
    for l in &set.labels {
        for s in [&l.info, &l.reference] {
            labels.extend_from_slice(&(s.len() as u32).to_le_bytes());
            labels.extend_from_slice(s.as_bytes());
        }
    }
    sections.push((Section::Labels, labels));

    // The IPv4 tables are rebuilt from sorted keys, so equal content gives equal bytes.
    let canonical = |t: &CuckooTable| {
        let mut keys: Vec<(u64, u32)> = t.iter().collect();
        keys.sort_unstable();
        CuckooTable::build(keys.into_iter())
    };
    let v4 = canonical(set.ip.v4.table());
    let port4 = canonical(set.ip.ipport.v4_table());
    let mut sizes = Vec::new();
    for t in [&v4, &port4] {
        put_u32s(&mut sizes, [t.bits(), t.len() as u32].into_iter());
    }
    sections.push((Section::Tables, sizes));
    sections.push((Section::V4Table, v4.bucket_bytes().to_vec()));
    sections.push((Section::IpPortTable, port4.bucket_bytes().to_vec()));
    let mut blocks = Vec::new();
    put_u64s(&mut blocks, set.ip.v4_block_bits().into_iter());
    sections.push((Section::V4Blocks, blocks));

    let mut v6: Vec<([u8; 16], u32)> = set.ip.v6.iter().map(|(k, v)| (*k, *v)).collect();
    v6.sort_unstable();
    sections.push((Section::V6Keys, v6.iter().flat_map(|e| e.0).collect()));
    let mut b = Vec::new();
    put_u32s(&mut b, v6.iter().map(|e| e.1));
    sections.push((Section::V6Labels, b));

    let mut ipport: Vec<(([u8; 16], u16), u32)> =
        set.ip.ipport.v6().iter().map(|(k, v)| (*k, *v)).collect();
    ipport.sort_unstable();
    let mut keys = Vec::with_capacity(ipport.len() * 20);
    for ((a, p), _) in &ipport {
        keys.extend_from_slice(a);
        keys.extend_from_slice(&p.to_le_bytes());
        keys.extend_from_slice(&[0, 0]);
    }
    sections.push((Section::IpPortKeys, keys));
    let mut b = Vec::new();
    put_u32s(&mut b, ipport.iter().map(|e| e.1));
    sections.push((Section::IpPortLabels, b));

    let mut c4 = set.ip.cidr4.clone();
    c4.sort_unstable();
    let mut keys = Vec::new();
    for (a, p, _) in &c4 {
        keys.extend_from_slice(&u32::from(*p).to_le_bytes());
        keys.extend_from_slice(a);
    }
    sections.push((Section::Cidr4Keys, keys));
    let mut b = Vec::new();
    put_u32s(&mut b, c4.iter().map(|e| e.2));
    sections.push((Section::Cidr4Labels, b));

    let mut c6 = set.ip.cidr6.clone();
    c6.sort_unstable();
    let mut keys = Vec::new();
    for (a, p, _) in &c6 {
        keys.extend_from_slice(&u32::from(*p).to_le_bytes());
        keys.extend_from_slice(a);
    }
    sections.push((Section::Cidr6Keys, keys));
    let mut b = Vec::new();
    put_u32s(&mut b, c6.iter().map(|e| e.2));
    sections.push((Section::Cidr6Labels, b));

    let domains = canonical_table(&set.domains.table);
    let urls = canonical_table(&set.urls.table);
    for (t, ids) in [
        (&domains, [Section::DomainArena, Section::DomainSlots]),
        (&urls, [Section::UrlArena, Section::UrlSlots]),
    ] {
        let (arena, slots) = t.parts();
        sections.push((ids[0], arena.to_vec()));
        let mut b = Vec::with_capacity(slots.len() * 8);
        put_u64s(&mut b, slots.iter().copied());
        sections.push((ids[1], b));
    }
    let mut filter = Vec::new();
    put_u64s(&mut filter, url_filter_words(&urls).into_iter());
    sections.push((Section::UrlFilter, filter));
    let mut filter = Vec::new();
    put_u64s(&mut filter, domain_filter_words(&domains).into_iter());
    sections.push((Section::DomainFilter, filter));

    let mut rx = Vec::new();
    put_u32s(&mut rx, std::iter::once(set.domains.regexes.len() as u32));
    for (r, l) in set.domains.regexes.iter() {
        put_u32s(&mut rx, [l, r.len() as u32].into_iter());
        rx.extend_from_slice(r.as_bytes());
    }
    sections.push((Section::Regexes, rx));
    let mut counts = Vec::new();
    put_u64s(
        &mut counts,
        [domains.len() as u64, urls.len() as u64].into_iter(),
    );
    sections.push((Section::Counts, counts));
    sections.push((
        Section::Meta,
        serde_json::to_vec(&opts.meta).unwrap_or_default(),
    ));

    // Body: directory, then sections 8-aligned.
    let dir_len = 8 + sections.len() * 24;
    let mut body = vec![0u8; dir_len];
    let mut dir = Vec::with_capacity(dir_len);
    dir.extend_from_slice(&(sections.len() as u32).to_le_bytes());
    dir.extend_from_slice(&0u32.to_le_bytes());
    align8(&mut body);
    for (id, data) in &sections {
        align8(&mut body);
        dir.extend_from_slice(&(*id as u32).to_le_bytes());
        dir.extend_from_slice(&0u32.to_le_bytes());
        dir.extend_from_slice(&(body.len() as u64).to_le_bytes());
        dir.extend_from_slice(&(data.len() as u64).to_le_bytes());
        body.extend_from_slice(data);
    }
    body[..dir_len].copy_from_slice(&dir);
    let hash: [u8; 32] = Sha256::digest(&body).into();

    let version = format!("{}-{}", version_time(opts.built_at), &hex(&hash)[..12]);
    let mut h = vec![0u8; HEADER_LEN];
    h[0..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&FORMAT.to_le_bytes());
    h[16..24].copy_from_slice(&(body.len() as u64).to_le_bytes());
    h[24..56].copy_from_slice(&hash);
    h[152..160].copy_from_slice(&KeyHasher::hash(b"xtrail").to_le_bytes());
    let v = &version.as_bytes()[..version.len().min(MAX_VERSION)];
    h[160..162].copy_from_slice(&(v.len() as u16).to_le_bytes());
    h[162..162 + v.len()].copy_from_slice(v);
    if let Some(seed) = &opts.signing_key {
        let key = SigningKey::from_bytes(seed);
        h[12..16].copy_from_slice(&FLAG_SIGNED.to_le_bytes());
        h[56..88].copy_from_slice(&key.verifying_key().to_bytes());
        let sig = key.sign(&h);
        h[SIG_RANGE].copy_from_slice(&sig.to_bytes());
    }
    h.extend_from_slice(&body);
    h
}

/// Writes a set to `path` atomically (a temporary file in the same folder, fsync, rename):
/// readers see the old file or the new one, never half of one. Returns the version.
pub fn write_file(
    set: &TrailSet,
    opts: &CompileOptions,
    path: &Path,
) -> Result<String, CompiledError> {
    let bytes = write(set, opts);
    let header = read_header(&bytes)?;
    write_atomic(path, &bytes)?;
    Ok(header.version)
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CompiledError> {
    let io = |source| CompiledError::Io {
        path: path.to_owned(),
        source,
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "set".into());
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// Lower-case hex (versions, key files).
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// 32 bytes (an ed25519 key) from 64 hex digits, surrounding white space ignored.
pub fn parse_key_hex(text: &str) -> Option<[u8; 32]> {
    let t = text.trim();
    if t.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(t.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn version_time(secs: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8).map_or(0, |s| {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_le_bytes(a)
    })
}

/// Parses a header (without checking the body).
pub fn read_header(bytes: &[u8]) -> Result<Header, CompiledError> {
    if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
        return Err(CompiledError::Format("no XTRAILS magic".into()));
    }
    let format = u32_at(bytes, 8);
    if format != FORMAT {
        return Err(CompiledError::Format(format!(
            "format {format}, this build reads {FORMAT}: rebuild the set with `xtrail-trails build`"
        )));
    }
    if u64_at(bytes, 152) != KeyHasher::hash(b"xtrail") {
        return Err(CompiledError::Format(
            "name tables built with another hash function".into(),
        ));
    }
    let vlen = usize::from(u16::from_le_bytes([bytes[160], bytes[161]])).min(MAX_VERSION);
    let mut body_sha256 = [0u8; 32];
    body_sha256.copy_from_slice(&bytes[24..56]);
    let signer = (u32_at(bytes, 12) & FLAG_SIGNED != 0).then(|| {
        let mut k = [0u8; 32];
        k.copy_from_slice(&bytes[56..88]);
        k
    });
    Ok(Header {
        version: String::from_utf8_lossy(&bytes[162..162 + vlen]).into_owned(),
        body_sha256,
        body_len: u64_at(bytes, 16),
        signer,
    })
}

/// Checks the header's signature: required (and by `public_key`) when a key is given.
fn check_signature(
    h: &[u8],
    header: &Header,
    public_key: Option<&[u8; 32]>,
) -> Result<(), CompiledError> {
    let Some(want) = public_key else {
        return Ok(());
    };
    let Some(signer) = &header.signer else {
        return Err(CompiledError::Unsigned);
    };
    if signer != want {
        return Err(CompiledError::Signature);
    }
    let key = VerifyingKey::from_bytes(want).map_err(|_| CompiledError::Signature)?;
    let mut sig = [0u8; 64];
    sig.copy_from_slice(&h[SIG_RANGE]);
    let mut signed = h[..HEADER_LEN].to_vec();
    signed[SIG_RANGE].fill(0);
    key.verify(&signed, &Signature::from_bytes(&sig))
        .map_err(|_| CompiledError::Signature)
}

/// Verifies a complete set held in memory (e.g. received over the network): magic, format,
/// length, checksum and, when `public_key` is given, the signature.
pub fn verify_bytes(bytes: &[u8], public_key: Option<&[u8; 32]>) -> Result<Header, CompiledError> {
    let header = read_header(bytes)?;
    if (bytes.len() - HEADER_LEN) as u64 != header.body_len {
        return Err(CompiledError::Checksum);
    }
    let hash: [u8; 32] = Sha256::digest(&bytes[HEADER_LEN..]).into();
    if hash != header.body_sha256 {
        return Err(CompiledError::Checksum);
    }
    check_signature(bytes, &header, public_key)?;
    Ok(header)
}

/// Checks a set file without building its tables (`xtrail-trails verify`).
pub fn verify_file(path: &Path, public_key: Option<&[u8; 32]>) -> Result<Header, CompiledError> {
    let mut f = File::open(path).map_err(|source| CompiledError::Io {
        path: path.to_owned(),
        source,
    })?;
    verify_open_file(path, &mut f, public_key).map(|(h, _)| h)
}

/// Header checks and a streamed body checksum; returns the header and the header bytes.
fn verify_open_file(
    path: &Path,
    f: &mut File,
    public_key: Option<&[u8; 32]>,
) -> Result<(Header, Vec<u8>), CompiledError> {
    let (header, h) = check_open_header(path, f, public_key)?;
    check_body(path, f, &header)?;
    Ok((header, h))
}

/// Magic, format, signature (with a key) and length of an open set file; returns the
/// header and the header bytes. The body is not read.
fn check_open_header(
    path: &Path,
    f: &mut File,
    public_key: Option<&[u8; 32]>,
) -> Result<(Header, Vec<u8>), CompiledError> {
    let io = |source| CompiledError::Io {
        path: path.to_owned(),
        source,
    };
    let mut h = vec![0u8; HEADER_LEN];
    f.seek(SeekFrom::Start(0)).map_err(io)?;
    match f.read_exact(&mut h) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(CompiledError::Format("shorter than a header".into()))
        }
        Err(e) => return Err(io(e)),
    }
    let header = read_header(&h)?;
    check_signature(&h, &header, public_key)?;
    let len = f.metadata().map_err(io)?.len();
    if len != HEADER_LEN as u64 + header.body_len {
        return Err(CompiledError::Checksum);
    }
    Ok((header, h))
}

/// The body's SHA-256 against the header's, read with `pread(2)` from the body's start (the
/// file offset is neither used nor moved).
fn check_body(path: &Path, f: &File, header: &Header) -> Result<(), CompiledError> {
    use std::os::unix::fs::FileExt as _;
    let io = |source| CompiledError::Io {
        path: path.to_owned(),
        source,
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = HEADER_LEN as u64;
    loop {
        let n = f.read_at(&mut buf, at).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    let hash: [u8; 32] = hasher.finalize().into();
    if hash != header.body_sha256 || at != HEADER_LEN as u64 + header.body_len {
        return Err(CompiledError::Checksum);
    }
    Ok(())
}

/// The body checksum of a set [`CompiledSet::open_checking`] opened, computed on its own
/// thread. Nothing of the set may be trusted (attached, used for detection) before
/// [`PendingCheck::wait`] returned `Ok`.
#[derive(Debug)]
pub struct PendingCheck {
    handle: std::thread::JoinHandle<Result<(), CompiledError>>,
}

impl PendingCheck {
    /// The verdict: `Err(Checksum)` for a truncated or altered body.
    pub fn wait(self) -> Result<(), CompiledError> {
        self.handle
            .join()
            .unwrap_or(Err(CompiledError::Layout("the checksum thread panicked")))
    }
}

impl CompiledSet {
    /// Opens a compiled set: checks magic, format, length and checksum, and the signature
    /// when `public_key` is given (an unsigned set is then refused), maps the file and builds
    /// the [`TrailSet`] around the mapping (IPv4 and IPv4 `IP:port` bucket tables and name
    /// tables are searched in place; the few IPv6 and CIDR trails are copied into maps).
    pub fn open(path: &Path, public_key: Option<&[u8; 32]>) -> Result<CompiledSet, CompiledError> {
        let started = std::time::Instant::now();
        let (set, check) = Self::open_checking(path, public_key)?;
        check.wait()?;
        log::debug!(
            "{}: opened and checksum verified in {:.3}s",
            path.display(),
            started.elapsed().as_secs_f64()
        );
        Ok(set)
    }

    /// [`CompiledSet::open`] with the body checksum computed on another thread meanwhile:
    /// the header, its signature (with `public_key`) and the length are checked here, the
    /// set is built from the mapping (every read bounds-checked, so a damaged body gives an
    /// error, not a fault), and the [`PendingCheck`] says whether the body is the one the
    /// header (and signature) vouch for. The caller must wait for it before the set is used
    /// for anything that counts. A body that fails to build is reported as the checksum's
    /// verdict when that fails too (a tampered set is refused as `Checksum` either way).
    pub fn open_checking(
        path: &Path,
        public_key: Option<&[u8; 32]>,
    ) -> Result<(CompiledSet, PendingCheck), CompiledError> {
        let started = std::time::Instant::now();
        let io = |source| CompiledError::Io {
            path: path.to_owned(),
            source,
        };
        let mut f = File::open(path).map_err(io)?;
        let (header, _) = check_open_header(path, &mut f, public_key)?;
        let hashed = f.try_clone().map_err(io)?;
        let (p, h) = (path.to_owned(), header.clone());
        let handle = std::thread::Builder::new()
            .name("xtrail-sha256".into())
            .spawn(move || check_body(&p, &hashed, &h))
            .map_err(io)?;
        let check = PendingCheck { handle };
        // SAFETY: the mapping is read-only and private to this process. Sets are replaced by
        // rename (a new inode), never rewritten in place, so the mapped bytes do not change
        // under us; every read through the mapping is bounds-checked.
        let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|source| CompiledError::Io {
            path: path.to_owned(),
            source,
        })?;
        if map.len() as u64 != HEADER_LEN as u64 + header.body_len {
            return Err(CompiledError::Checksum);
        }
        // Lookups touch a few scattered pages each: no readahead or fault-around, so the
        // resident set holds the pages traffic uses, not their neighbourhoods. Advisory only.
        let _ = map.advise(memmap2::Advice::Random);
        match Self::from_map(header, Arc::new(map)) {
            Ok(set) => {
                log::debug!(
                    "{}: built in {:.3}s (checksum pending)",
                    path.display(),
                    started.elapsed().as_secs_f64()
                );
                Ok((set, check))
            }
            Err(e) => Err(check.wait().err().unwrap_or(e)),
        }
    }

    fn from_map(header: Header, map: Arc<memmap2::Mmap>) -> Result<CompiledSet, CompiledError> {
        let bytes: &[u8] = &map[..];
        let body = HEADER_LEN;
        let count = u32_at(bytes, body) as usize;
        if count > 1024 {
            return Err(CompiledError::Layout("section directory"));
        }
        let mut sections = Vec::with_capacity(count);
        for i in 0..count {
            let at = body + 8 + i * 24;
            let id = u32_at(bytes, at);
            let off = u64_at(bytes, at + 8) as usize;
            let len = u64_at(bytes, at + 16) as usize;
            let start = body
                .checked_add(off)
                .ok_or(CompiledError::Layout("section offset"))?;
            let end = start
                .checked_add(len)
                .filter(|&e| e <= bytes.len())
                .ok_or(CompiledError::Layout("section out of bounds"))?;
            if !start.is_multiple_of(8) {
                return Err(CompiledError::Layout("section misaligned"));
            }
            sections.push((id, start..end));
        }
        let mut set = CompiledSet {
            header,
            map,
            sections,
            trails: TrailSet::default(),
            meta: serde_json::Value::Null,
        };
        set.trails = set.build()?;
        set.release_ip_pages();
        set.meta = serde_json::from_slice(set.section(Section::Meta)).unwrap_or_default();
        Ok(set)
    }

    /// The small IP arrays were copied into hash maps: drop their pages from this process's
    /// resident set (the file stays in the page cache; [`CompiledSet::ip_tables`] faults
    /// them back in when a map is filled). The IPv4 tables are used in place; the sensor
    /// drops their pages after filling the kernel maps ([`CuckooTable::release_pages`]).
    fn release_ip_pages(&self) {
        let first = self.range(Section::V6Keys).start;
        let last = self.range(Section::Cidr6Labels).end;
        super::iptable::release_mapped(&self.map, first..last.max(first));
    }

    fn range(&self, s: Section) -> std::ops::Range<usize> {
        self.sections
            .iter()
            .find(|(id, _)| *id == s as u32)
            .map_or(0..0, |(_, r)| r.clone())
    }

    fn section(&self, s: Section) -> &[u8] {
        &self.map[self.range(s)]
    }

    fn records<const N: usize>(&self, s: Section) -> &[[u8; N]] {
        let b = self.section(s);
        // SAFETY: [u8; N] has alignment 1 and any bit pattern is valid; the length is
        // rounded down to whole records.
        unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<[u8; N]>(), b.len() / N) }
    }

    fn u32s(&self, s: Section) -> &[u32] {
        let b = self.section(s);
        // SAFETY: any bit pattern is a valid u32; align_to only yields the aligned middle,
        // and sections start 8-aligned in a page-aligned mapping (checked when opening).
        let (pre, mid, _) = unsafe { b.align_to::<u32>() };
        if pre.is_empty() && cfg!(target_endian = "little") {
            mid
        } else {
            &[]
        }
    }

    /// The IP tables as sorted arrays, straight from the mapping.
    pub fn ip_tables(&self) -> IpTables<'_> {
        IpTables {
            v4_table: self.trails.ip.v4.table().buckets(),
            ipport4_table: self.trails.ip.ipport.v4_table().buckets(),
            v6_keys: self.records::<16>(Section::V6Keys),
            v6_labels: self.u32s(Section::V6Labels),
            ipport_keys: self.records::<20>(Section::IpPortKeys),
            ipport_labels: self.u32s(Section::IpPortLabels),
            cidr4_keys: self.records::<8>(Section::Cidr4Keys),
            cidr4_labels: self.u32s(Section::Cidr4Labels),
            cidr6_keys: self.records::<20>(Section::Cidr6Keys),
            cidr6_labels: self.u32s(Section::Cidr6Labels),
        }
    }

    fn build(&self) -> Result<TrailSet, CompiledError> {
        let labels = self.labels()?;
        let t = self.ip_tables();
        let same = |a: usize, b: usize| {
            if a == b {
                Ok(())
            } else {
                Err(CompiledError::Layout("IP keys and labels differ in length"))
            }
        };
        same(t.v6_keys.len(), t.v6_labels.len())?;
        same(t.ipport_keys.len(), t.ipport_labels.len())?;
        same(t.cidr4_keys.len(), t.cidr4_labels.len())?;
        same(t.cidr6_keys.len(), t.cidr6_labels.len())?;
        let mut ip = IpTrails::default();
        let sizes = self.section(Section::Tables);
        let table = |s: Section, at: usize| {
            CuckooTable::mapped(
                self.map.clone(),
                self.range(s),
                u32_at(sizes, at),
                u32_at(sizes, at + 4) as usize,
            )
            .ok_or(CompiledError::Layout("IPv4 table size"))
        };
        ip.v4 = V4Trails::from_table(table(Section::V4Table, 0)?);
        ip.v6.reserve(t.v6_keys.len());
        ip.v6
            .extend(t.v6_keys.iter().copied().zip(t.v6_labels.iter().copied()));
        let mut port6 = hashbrown::HashMap::with_capacity(t.ipport_keys.len());
        for (k, l) in t.ipport_keys.iter().zip(t.ipport_labels) {
            let mut a = [0u8; 16];
            a.copy_from_slice(&k[..16]);
            port6.insert((a, u16::from_le_bytes([k[16], k[17]])), *l);
        }
        ip.ipport = IpPortTrails::from_parts(table(Section::IpPortTable, 8)?, port6);
        for (k, l) in t.cidr4_keys.iter().zip(t.cidr4_labels) {
            let p = u32_at(k, 0).min(32) as u8;
            ip.cidr4.push(([k[4], k[5], k[6], k[7]], p, *l));
        }
        for (k, l) in t.cidr6_keys.iter().zip(t.cidr6_labels) {
            let p = u32_at(k, 0).min(128) as u8;
            let mut a = [0u8; 16];
            a.copy_from_slice(&k[4..20]);
            ip.cidr6.push((a, p, *l));
        }
        let blocks = self.section(Section::V4Blocks);
        if blocks.len() != super::ip::V4_BLOCK_WORDS * 8 {
            return Err(CompiledError::Layout("IPv4 prefilter size"));
        }
        let words = blocks
            .chunks_exact(8)
            .map(|w| u64_at(w, 0))
            .collect::<Vec<u64>>();
        ip.rebuild_cidr_index_with(words);

        let counts = self.section(Section::Counts);
        let shared: SharedBytes = self.map.clone();
        let table = |a: Section, s: Section, n: u64| {
            StrTable::mapped(shared.clone(), self.range(a), self.range(s), n as usize)
                .map_err(|e| CompiledError::Layout(e.0))
        };
        let domains = table(
            Section::DomainArena,
            Section::DomainSlots,
            u64_at(counts, 0),
        )?;
        let urls = table(Section::UrlArena, Section::UrlSlots, u64_at(counts, 8))?;
        let regexes = self.regexes()?;

        let report = LoadReport {
            files: 1,
            bytes: self.map.len() as u64,
            lines: ip.len() + domains.len() + urls.len() + regexes.len(),
            ipv4: ip.v4.len(),
            ipv6: ip.v6.len(),
            ipport: ip.ipport.len(),
            cidr4: ip.cidr4.len(),
            cidr6: ip.cidr6.len(),
            domains: domains.len(),
            urls: urls.len(),
            regexes: regexes.len(),
            labels: labels.len(),
            ..LoadReport::default()
        };
        let flags = labels.iter().map(|l| label_flags(&l.info)).collect();
        Ok(TrailSet {
            labels,
            ip,
            domains: DomainTrails::mapped(
                domains,
                shared.clone(),
                self.range(Section::DomainFilter),
                RegexTrails::new(regexes),
                flags,
            )
            .map_err(|e| CompiledError::Layout(e.0))?,
            urls: UrlTrails::mapped(urls, shared, self.range(Section::UrlFilter))
                .map_err(|e| CompiledError::Layout(e.0))?,
            report,
        })
    }

    fn labels(&self) -> Result<Vec<Label>, CompiledError> {
        let b = self.section(Section::Labels);
        let n = u32_at(b, 0) as usize;
        let mut at = 4;
        let mut out = Vec::with_capacity(n.min(1 << 20));
        let text = |at: &mut usize| -> Result<String, CompiledError> {
            let len = u32_at(b, *at) as usize;
            let s = b
                .get(*at + 4..*at + 4 + len)
                .ok_or(CompiledError::Layout("label"))?;
            *at += 4 + len;
            Ok(String::from_utf8_lossy(s).into_owned())
        };
        for _ in 0..n {
            let info = text(&mut at)?;
            let reference = text(&mut at)?;
            out.push(Label { info, reference });
        }
        Ok(out)
    }

    fn regexes(&self) -> Result<Vec<(regex::Regex, LabelId)>, CompiledError> {
        let b = self.section(Section::Regexes);
        let n = u32_at(b, 0) as usize;
        let mut at = 4;
        let mut out = Vec::new();
        for _ in 0..n {
            let label = u32_at(b, at);
            let len = u32_at(b, at + 4) as usize;
            let s = b
                .get(at + 8..at + 8 + len)
                .and_then(|s| std::str::from_utf8(s).ok())
                .ok_or(CompiledError::Layout("regex"))?;
            at += 8 + len;
            let re = regex::RegexBuilder::new(s)
                .size_limit(1 << 20)
                .dfa_size_limit(1 << 20)
                .nest_limit(16)
                .build()
                .map_err(|_| CompiledError::Layout("regex does not compile"))?;
            out.push((re, label));
        }
        Ok(out)
    }

    /// The verified header (version, checksum, signer).
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// `YYYYmmddTHHMMSSZ-<hash prefix>`: what events and the collector call this set.
    pub fn version(&self) -> &str {
        &self.header.version
    }

    /// The build description stored in the set.
    pub fn meta(&self) -> &serde_json::Value {
        &self.meta
    }

    /// The trail set (name tables point into the mapping).
    pub fn trails(&self) -> &TrailSet {
        &self.trails
    }

    /// The trail set, keeping the mapping alive as long as it lives.
    pub fn into_trails(self) -> TrailSet {
        self.trails
    }

    /// Number of trails of all kinds.
    pub fn len(&self) -> usize {
        self.trails.report.lines
    }

    /// Whether the set holds no trail.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Parses an address as the first 16 bytes of an IpPort key (for tests and tools).
pub fn ipport_key(addr: std::net::IpAddr, port: u16) -> [u8; 20] {
    let a = match addr {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        std::net::IpAddr::V6(v6) => v6,
    };
    let mut k = [0u8; 20];
    k[..16].copy_from_slice(&Ipv6Addr::octets(&a));
    k[16..18].copy_from_slice(&port.to_le_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trails::LoadOptions;
    use std::net::Ipv4Addr;

    fn sample() -> TrailSet {
        TrailSet::from_rows(
            [
                ("evil.example", "asyncrat (malware)", "(static)"),
                ("6.6.6.6", "known attacker", "(static)"),
                ("6.6.6.7:8443", "c2 (malware)", "(static)"),
                ("[2001:db8::1]:53", "c2 (malware)", "(static)"),
                ("2001:db8::2", "c2 (malware)", "(static)"),
                ("5.63.151.0/24", "mass scanner cidr", "(static)"),
                ("evil.example/gate.php", "asyncrat (malware)", "(static)"),
                (
                    "dga[0-9]+\\.wildcard-test\\.com",
                    "dga (malware)",
                    "(static)",
                ),
            ],
            &LoadOptions::default(),
        )
    }

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("xtrail-compiled-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn round_trip_and_refusals() {
        let set = sample();
        let (seed, public) = generate_key().unwrap();
        let opts = CompileOptions {
            built_at: 1_700_000_000,
            signing_key: Some(seed),
            meta: serde_json::json!({"sources": ["test"]}),
        };
        let d = temp("rt");
        let p = d.join("set.xtrails");
        let version = write_file(&set, &opts, &p).unwrap();
        assert!(version.starts_with("20231114T221320Z-"), "{version}");
        assert!(is_compiled(&p));
        let c = CompiledSet::open(&p, Some(&public)).unwrap();
        assert_eq!(c.version(), version);
        assert_eq!(c.meta()["sources"][0], "test");
        let t = c.trails();
        let ip = |s: &str| s.parse().unwrap();
        assert_eq!(
            t.label(t.domains.lookup("a.evil.example").unwrap().label)
                .info,
            "asyncrat (malware)"
        );
        assert!(t.domains.lookup("dga12.wildcard-test.com").is_some());
        assert!(t.urls.lookup(Some("evil.example"), "/gate.php").is_some());
        assert!(t.ip.lookup(ip("6.6.6.6"), None).is_some());
        assert!(t.ip.lookup(ip("6.6.6.7"), Some(8443)).is_some());
        assert!(t.ip.lookup(ip("2001:db8::1"), Some(53)).is_some());
        assert!(t.ip.lookup(ip("2001:db8::2"), None).is_some());
        assert!(t.ip.lookup(ip("5.63.151.9"), None).is_some());
        assert_eq!(c.ip_tables().ipport_keys.len(), 1);
        assert!(c
            .ip_tables()
            .ipport_keys
            .contains(&ipport_key(ip("2001:db8::1"), 53)));
        let table = c.ip_tables().ipport4_table;
        let key = super::super::iptable::ipport_key([6, 6, 6, 7], 8443);
        assert!(
            table
                .iter()
                .any(|b| super::super::iptable::bucket_label(b, key).is_some()),
            "the IPv4 IP:port trail is in the stored table"
        );
        assert_eq!(t.ip.ipport.v4_table().len(), 1);
        assert_eq!(t.ip.v4.table().heap_bytes(), 0, "looked up in place");
        assert_eq!(t.urls.heap_bytes(), 0, "URL table and filter read in place");
        assert_eq!(
            t.domains.heap_bytes(),
            0,
            "domain table and filter read in place"
        );
        assert!(
            t.domains.filter_active(),
            "the stored domain filter answers for the opened table"
        );
        // Same content, same bytes.
        assert_eq!(write(&set, &opts), write(&c.into_trails(), &opts));

        // Wrong key, unsigned with a key, tampered body, truncated.
        let (_, other) = generate_key().unwrap();
        assert!(matches!(
            CompiledSet::open(&p, Some(&other)),
            Err(CompiledError::Signature)
        ));
        let unsigned = d.join("unsigned.xtrails");
        write_file(&set, &CompileOptions::default(), &unsigned).unwrap();
        assert!(CompiledSet::open(&unsigned, None).is_ok());
        assert!(matches!(
            CompiledSet::open(&unsigned, Some(&public)),
            Err(CompiledError::Unsigned)
        ));
        let mut bytes = std::fs::read(&p).unwrap();
        let last = bytes.len() - 10;
        bytes[last] ^= 1;
        std::fs::write(d.join("tampered"), &bytes).unwrap();
        assert!(matches!(
            CompiledSet::open(&d.join("tampered"), Some(&public)),
            Err(CompiledError::Checksum)
        ));
        // A re-hashed body still fails the signature (the header carries the hash).
        let hash: [u8; 32] = Sha256::digest(&bytes[HEADER_LEN..]).into();
        bytes[24..56].copy_from_slice(&hash);
        std::fs::write(d.join("rehashed"), &bytes).unwrap();
        assert!(matches!(
            CompiledSet::open(&d.join("rehashed"), Some(&public)),
            Err(CompiledError::Signature)
        ));
        assert!(CompiledSet::open(&d.join("rehashed"), None).is_ok());
        bytes.truncate(bytes.len() / 2);
        std::fs::write(d.join("short"), &bytes).unwrap();
        assert!(matches!(
            CompiledSet::open(&d.join("short"), None),
            Err(CompiledError::Checksum)
        ));
        std::fs::write(d.join("text"), b"evil.example,x,(static)\n").unwrap();
        assert!(!is_compiled(&d.join("text")));
        assert!(matches!(
            CompiledSet::open(&d.join("text"), None),
            Err(CompiledError::Format(_))
        ));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_missing_or_damaged_domain_filter_is_refused() {
        let good = write(&sample(), &CompileOptions::default());
        let body = HEADER_LEN;
        let entry = (0..u32_at(&good, body) as usize)
            .map(|i| body + 8 + i * 24)
            .find(|&at| u32_at(&good, at) == Section::DomainFilter as u32)
            .expect("a DomainFilter section");
        let len = u64_at(&good, entry + 16);
        // The section renamed to an id no reader knows (missing), cut by a word (not a power
        // of two of words), cut by a byte (not whole words).
        let damages: [(u64, u64); 3] = [
            (999, len),
            (Section::DomainFilter as u64, len - 8),
            (Section::DomainFilter as u64, len - 1),
        ];
        for (id, new_len) in damages {
            let mut bytes = good.clone();
            bytes[entry..entry + 4].copy_from_slice(&(id as u32).to_le_bytes());
            bytes[entry + 16..entry + 24].copy_from_slice(&new_len.to_le_bytes());
            let hash: [u8; 32] = Sha256::digest(&bytes[HEADER_LEN..]).into();
            bytes[24..56].copy_from_slice(&hash);
            let d = temp("domain-filter");
            let p = d.join("set.xtrails");
            std::fs::write(&p, &bytes).unwrap();
            match CompiledSet::open(&p, None) {
                Err(CompiledError::Layout(m)) => assert_eq!(m, "domain filter size"),
                other => panic!("want a layout refusal for ({id}, {new_len}), got {other:?}"),
            }
            let _ = std::fs::remove_dir_all(&d);
        }
    }

    #[test]
    fn formats_1_to_5_are_refused_with_a_rebuild_hint() {
        for old in [1u32, 2, 3, 4, 5] {
            let mut bytes = write(&sample(), &CompileOptions::default());
            bytes[8..12].copy_from_slice(&old.to_le_bytes());
            match verify_bytes(&bytes, None) {
                Err(CompiledError::Format(m)) => {
                    assert!(m.contains("xtrail-trails build"), "{m}")
                }
                other => panic!("want a format refusal, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_deferred_checksum_refuses_altered_bodies() {
        let d = temp("deferred");
        let p = d.join("set.xtrails");
        write_file(&sample(), &CompileOptions::default(), &p).unwrap();
        let (set, check) = CompiledSet::open_checking(&p, None).unwrap();
        check.wait().unwrap();
        assert!(set
            .trails()
            .ip
            .lookup("6.6.6.6".parse().unwrap(), None)
            .is_some());
        let good = std::fs::read(&p).unwrap();
        // A byte of the metadata: the set builds, the pending check refuses it.
        let mut bytes = good.clone();
        let last = bytes.len() - 3;
        bytes[last] ^= 1;
        std::fs::write(&p, &bytes).unwrap();
        let (_, check) = CompiledSet::open_checking(&p, None).unwrap();
        assert!(matches!(check.wait(), Err(CompiledError::Checksum)));
        // The section directory: the build fails, and the refusal is still the checksum's.
        let mut bytes = good.clone();
        bytes[HEADER_LEN + 8 + 8] ^= 0x80;
        std::fs::write(&p, &bytes).unwrap();
        assert!(matches!(
            CompiledSet::open_checking(&p, None),
            Err(CompiledError::Checksum)
        ));
        assert!(matches!(
            CompiledSet::open(&p, None),
            Err(CompiledError::Checksum)
        ));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn ipv4_tables_are_read_in_place() {
        let mut set = sample();
        for i in 0..5_000u32 {
            set.ip.v4.insert((0x0b00_0000 + i * 5).to_be_bytes(), 1);
            set.ip.ipport.insert(
                (
                    Ipv4Addr::from(0x0c00_0000 + i).to_ipv6_mapped().octets(),
                    80,
                ),
                2,
            );
        }
        let d = temp("tables");
        let p = d.join("set.xtrails");
        write_file(&set, &CompileOptions::default(), &p).unwrap();
        let c = CompiledSet::open(&p, None).unwrap();
        let ip = &c.trails().ip;
        // The stored prefilter is the one the tables give, with bits clear.
        assert_eq!(ip.v4_prefilter(), &set.ip.v4_block_bits()[..]);
        assert!(ip.v4_prefilter().iter().any(|w| *w != u64::MAX));
        assert_eq!(
            ip.lookup("11.0.0.0".parse().unwrap(), None)
                .map(|m| m.label),
            Some(1)
        );
        assert_eq!(ip.lookup("99.0.0.1".parse().unwrap(), None), None);
        assert_eq!(ip.v4, set.ip.v4);
        assert_eq!(ip.ipport, set.ip.ipport);
        assert_eq!(ip.v4.table().heap_bytes(), 0);
        assert_eq!(ip.ipport.v4_table().heap_bytes(), 0);
        assert_eq!(
            c.ip_tables().ipport4_table.len(),
            1 << ip.ipport.v4_table().bits()
        );
        for i in (0..5_000u32).step_by(7) {
            let a = Ipv4Addr::from(0x0b00_0000 + i * 5);
            assert_eq!(ip.lookup(a.into(), None).map(|m| m.label), Some(1));
            let a = Ipv4Addr::from(0x0c00_0000 + i);
            assert_eq!(ip.lookup(a.into(), Some(80)).map(|m| m.label), Some(2));
            assert_eq!(ip.lookup(a.into(), Some(81)), None);
        }
        // A set built from the opened one (as deltas do) copies the mapped table on write.
        let mut t = c.into_trails();
        t.ip.v4.insert([11, 0, 0, 1], 3);
        assert_eq!(t.ip.v4.get(&[11, 0, 0, 1]), Some(3));
        assert_eq!(t.ip.v4.len(), set.ip.v4.len() + 1);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn empty_set_round_trips() {
        let set = TrailSet::default();
        let bytes = write(&set, &CompileOptions::default());
        let h = verify_bytes(&bytes, None).unwrap();
        assert_eq!(h.body_len as usize, bytes.len() - HEADER_LEN);
    }
}
