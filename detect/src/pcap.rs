//! Reading capture files: classic pcap (both byte orders, microsecond and nanosecond magic,
//! and the "modified" Kuznetzov variant) and pcapng (SHB, IDB, EPB, SPB and the obsolete PB;
//! per-interface link type, `if_tsresol` and `if_tsoffset`).
//!
//! [`PcapReader::next_packet`] lends each packet from one reused buffer that the file is read
//! into in large chunks (by [`open`], from a thread that reads a regular file ahead:
//! [`ReadAhead`]):
//! no allocation and no copy per packet. Record and block lengths are
//! checked against [`MAX_RECORD`]; a file that ends in
//! the middle of a record yields every complete packet before it and then
//! [`PcapError::Truncated`]. After an error the reader yields nothing more.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

/// Largest record (classic) or block (pcapng) accepted.
pub const MAX_RECORD: usize = 16 * 1024 * 1024;
/// Interfaces one pcapng section may describe.
pub const MAX_INTERFACES: usize = 4096;

const MAGIC_US: u32 = 0xa1b2_c3d4;
const MAGIC_NS: u32 = 0xa1b2_3c4d;
const MAGIC_MODIFIED: u32 = 0xa1b2_cd34;
const PCAPNG_SHB: u32 = 0x0a0d_0d0a;
const PCAPNG_BOM: u32 = 0x1a2b_3c4d;
const BLOCK_IDB: u32 = 1;
const BLOCK_PB: u32 = 2;
const BLOCK_SPB: u32 = 3;
const BLOCK_EPB: u32 = 6;

/// Why a capture file could not be read (further).
#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    /// Reading failed.
    #[error("read error: {0}")]
    Io(#[from] std::io::Error),
    /// The file starts with neither a pcap nor a pcapng magic number.
    #[error("not a pcap or pcapng file (magic {0:#010x})")]
    BadMagic(u32),
    /// The file ends inside a header, record or block.
    #[error("file truncated at byte {offset}, inside {what}")]
    Truncated {
        /// Offset of the incomplete header, record or block.
        offset: u64,
        /// What was being read.
        what: &'static str,
    },
    /// A length or field is impossible.
    #[error("corrupt {what} at byte {offset}: {why}")]
    Corrupt {
        /// Offset of the bad header, record or block.
        offset: u64,
        /// What was being read.
        what: &'static str,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// Which container the file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileFormat {
    /// Classic libpcap.
    Pcap,
    /// pcapng.
    PcapNg,
}

/// One packet, borrowed from the reader's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PcapPacket<'a> {
    /// Capture time, microseconds since the epoch.
    pub ts_us: i64,
    /// Link type of the interface it was captured on.
    pub linktype: u32,
    /// Captured bytes.
    pub data: &'a [u8],
    /// Length on the wire.
    pub orig_len: u32,
}

#[derive(Clone, Copy, Debug)]
struct Interface {
    linktype: u32,
    /// Timestamp units per second.
    units: u128,
    offset_s: i64,
}

#[derive(Debug)]
enum State {
    Classic {
        swapped: bool,
        nanos: bool,
        modified: bool,
        linktype: u32,
    },
    Ng {
        swapped: bool,
        interfaces: Vec<Interface>,
    },
}

/// Where the current packet sits in the buffer.
struct Meta {
    ts_us: i64,
    linktype: u32,
    start: usize,
    len: usize,
    orig_len: u32,
}

/// Bytes read from the input at a time (the buffer grows for a longer record).
const CHUNK: usize = 256 * 1024;

/// A streaming reader over a pcap or pcapng file.
#[derive(Debug)]
pub struct PcapReader<R> {
    inner: R,
    state: State,
    /// Bytes read from `inner`; `buf[pos..end]` not consumed yet.
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    /// Where the current record (the last [`PcapReader::fill`]) starts in `buf`, and its
    /// length.
    rec: usize,
    rec_len: usize,
    /// `inner` returned end of file.
    eof: bool,
    offset: u64,
    last_ts_us: i64,
    done: bool,
}

/// Opens a capture file, read by a thread of its own ([`ReadAhead`]).
pub fn open(path: &Path) -> Result<PcapReader<ReadAhead>, PcapError> {
    PcapReader::new(ReadAhead::new(File::open(path)?))
}

/// Bytes a read-ahead chunk holds.
const AHEAD_CHUNK: usize = 512 * 1024;
/// Chunks read ahead and not yet taken, at most.
const AHEAD_CHUNKS: usize = 2;

/// A file read ahead by a thread of its own, in chunks of `AHEAD_CHUNK` bytes, at most
/// `AHEAD_CHUNKS` of them waiting: the copy out of the page cache (or the wait for the disk)
/// runs beside the packets' processing, whose reads copy from the thread's chunks (cheaper
/// than the page cache's: the chunks were just written, and the reader's own buffer stays
/// in its cache; PERF-LOG.md 2026-12-07 from 15:59). Only a regular file: a pipe, FIFO or
/// device is read in place (its writer may pause, and a chunk would wait for bytes that come
/// later), and so is a file where no thread can be started. The thread ends at the end of
/// the file, at an error, or when this is dropped, and is waited for then.
#[derive(Debug)]
pub struct ReadAhead {
    source: Source,
    /// The chunk being read and how much of it was read.
    chunk: Vec<u8>,
    at: usize,
}

#[derive(Debug)]
enum Source {
    Thread {
        chunks: Receiver<std::io::Result<Vec<u8>>>,
        spent: SyncSender<Vec<u8>>,
        thread: std::thread::JoinHandle<()>,
    },
    Inline(File),
    Done,
}

impl ReadAhead {
    /// Starts reading `file` ahead (a regular file; anything else is read in place).
    pub fn new(file: File) -> ReadAhead {
        let regular = file.metadata().is_ok_and(|m| m.is_file());
        // On a handle of the thread's own: if the thread cannot start, `file` is read here.
        let ahead = regular
            .then(|| file.try_clone().ok())
            .flatten()
            .and_then(|f| ReadAhead::spawn(f, AHEAD_CHUNK, AHEAD_CHUNKS).ok());
        ahead.unwrap_or_else(|| ReadAhead {
            source: Source::Inline(file),
            chunk: Vec::new(),
            at: 0,
        })
    }

    /// Reads `inner` ahead on a new thread in chunks of `size` bytes, `n` of them waiting at
    /// most.
    fn spawn<R: Read + Send + 'static>(
        mut inner: R,
        size: usize,
        n: usize,
    ) -> std::io::Result<ReadAhead> {
        let (send, chunks) = sync_channel(n);
        let (spent, reuse) = sync_channel::<Vec<u8>>(n + 2);
        let thread = std::thread::Builder::new()
            .name("pcap-read".into())
            .spawn(move || loop {
                let mut chunk = reuse.try_recv().unwrap_or_default();
                chunk.resize(size, 0);
                let (got, error) = read_most(&mut inner, &mut chunk);
                chunk.truncate(got);
                // The bytes before an error, then the error; an empty chunk is the end.
                if (got > 0 || error.is_none()) && send.send(Ok(chunk)).is_err() {
                    return;
                }
                if let Some(e) = error {
                    let _ = send.send(Err(e));
                    return;
                }
                if got == 0 {
                    return;
                }
            })?;
        Ok(ReadAhead {
            source: Source::Thread {
                chunks,
                spent,
                thread,
            },
            chunk: Vec::new(),
            at: 0,
        })
    }

    /// Nothing more to read: stops the thread, if any, and waits for it (one waiting to hand
    /// over a chunk sees the channel closed; one in a read returns after it).
    fn finish(&mut self) {
        if let Source::Thread {
            chunks,
            spent,
            thread,
        } = std::mem::replace(&mut self.source, Source::Done)
        {
            drop((chunks, spent));
            let _ = thread.join();
        }
    }
}

/// Reads until `buf` is full, the input ends or a read fails: how many bytes it read, and
/// the error.
fn read_most(inner: &mut impl Read, buf: &mut [u8]) -> (usize, Option<std::io::Error>) {
    let mut got = 0;
    while got < buf.len() {
        match inner.read(buf.get_mut(got..).unwrap_or_default()) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return (got, Some(e)),
        }
    }
    (got, None)
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Read for ReadAhead {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.chunk.len() {
            match &mut self.source {
                Source::Thread { chunks, spent, .. } => {
                    let next = match chunks.recv() {
                        Ok(Ok(c)) if !c.is_empty() => c,
                        Ok(Ok(_)) => {
                            self.finish();
                            return Ok(0);
                        }
                        Ok(Err(e)) => {
                            self.finish();
                            return Err(e);
                        }
                        // Gone without an empty chunk or an error: it panicked.
                        Err(_) => {
                            self.finish();
                            return Err(std::io::Error::other(
                                "the thread reading the file ahead stopped",
                            ));
                        }
                    };
                    // Full only if the thread no longer takes buffers back.
                    let _ = spent.try_send(std::mem::replace(&mut self.chunk, next));
                    self.at = 0;
                }
                Source::Inline(file) => return file.read(out),
                Source::Done => return Ok(0),
            }
        }
        let rest = self.chunk.get(self.at..).unwrap_or_default();
        let n = out.len().min(rest.len());
        out.get_mut(..n)
            .unwrap_or_default()
            .copy_from_slice(rest.get(..n).unwrap_or_default());
        self.at += n;
        Ok(n)
    }
}

fn u16_at(b: &[u8], at: usize, swapped: bool) -> u16 {
    let v: [u8; 2] = b
        .get(at..at + 2)
        .and_then(|s| s.try_into().ok())
        .unwrap_or_default();
    if swapped {
        u16::from_le_bytes(v)
    } else {
        u16::from_be_bytes(v)
    }
}

fn u32_at(b: &[u8], at: usize, swapped: bool) -> u32 {
    let v: [u8; 4] = b
        .get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .unwrap_or_default();
    if swapped {
        u32::from_le_bytes(v)
    } else {
        u32::from_be_bytes(v)
    }
}

fn u64_at(b: &[u8], at: usize, swapped: bool) -> u64 {
    let v: [u8; 8] = b
        .get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .unwrap_or_default();
    if swapped {
        u64::from_le_bytes(v)
    } else {
        u64::from_be_bytes(v)
    }
}

/// `ticks / units` seconds (+ offset) in microseconds, saturating.
fn to_us(ticks: u128, units: u128, offset_s: i64) -> i64 {
    // Microsecond ticks without offset (classic pcap, pcapng's default): no 128-bit division.
    if units == 1_000_000 && offset_s == 0 {
        return i64::try_from(ticks).unwrap_or(i64::MAX);
    }
    let us = ticks.saturating_mul(1_000_000) / units.max(1);
    i64::try_from(us)
        .unwrap_or(i64::MAX)
        .saturating_add(offset_s.saturating_mul(1_000_000))
}

impl<R: Read> PcapReader<R> {
    /// Reads the file header (or the first pcapng section header).
    pub fn new(mut inner: R) -> Result<Self, PcapError> {
        let mut magic = [0u8; 4];
        let truncated = PcapError::Truncated {
            offset: 0,
            what: "file header",
        };
        match read_full(&mut inner, &mut magic) {
            Ok(true) => {}
            Ok(false) => return Err(truncated),
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Err(truncated),
            Err(e) => return Err(PcapError::Io(e)),
        }
        let be = u32::from_be_bytes(magic);
        let le = u32::from_le_bytes(magic);
        let mut reader = PcapReader {
            inner,
            state: State::Ng {
                swapped: false,
                interfaces: Vec::new(),
            },
            buf: Vec::new(),
            pos: 0,
            end: 0,
            rec: 0,
            rec_len: 0,
            eof: false,
            offset: 4,
            last_ts_us: 0,
            done: false,
        };
        let classic = |m: u32| matches!(m, MAGIC_US | MAGIC_NS | MAGIC_MODIFIED);
        if be == PCAPNG_SHB {
            reader.section_header()?;
        } else if classic(be) || classic(le) {
            let swapped = !classic(be);
            let magic = if swapped { le } else { be };
            let mut rest = [0u8; 20];
            if !reader.read_exact_at(&mut rest, "file header")? {
                return Err(PcapError::Truncated {
                    offset: 4,
                    what: "file header",
                });
            }
            // version (2+2), thiszone, sigfigs, snaplen, network
            let network = u32_at(&rest, 16, swapped);
            reader.state = State::Classic {
                swapped,
                nanos: magic == MAGIC_NS,
                modified: magic == MAGIC_MODIFIED,
                // The upper bits may carry FCS information.
                linktype: network & 0x0fff_ffff,
            };
        } else {
            return Err(PcapError::BadMagic(be));
        }
        Ok(reader)
    }

    /// Which container this file is.
    pub fn format(&self) -> FileFormat {
        match self.state {
            State::Classic { .. } => FileFormat::Pcap,
            State::Ng { .. } => FileFormat::PcapNg,
        }
    }

    /// The link type of a classic file, or of the first interface of a pcapng section.
    pub fn linktype(&self) -> Option<u32> {
        match &self.state {
            State::Classic { linktype, .. } => Some(*linktype),
            State::Ng { interfaces, .. } => interfaces.first().map(|i| i.linktype),
        }
    }

    /// The next packet, `Ok(None)` at the end of the file.
    pub fn next_packet(&mut self) -> Result<Option<PcapPacket<'_>>, PcapError> {
        if self.done {
            return Ok(None);
        }
        let meta = match self.advance() {
            Ok(Some(m)) => m,
            Ok(None) => {
                self.done = true;
                return Ok(None);
            }
            Err(e) => {
                self.done = true;
                return Err(e);
            }
        };
        self.last_ts_us = meta.ts_us;
        let data = self
            .record()
            .get(meta.start..meta.start + meta.len)
            .unwrap_or_default();
        Ok(Some(PcapPacket {
            ts_us: meta.ts_us,
            linktype: meta.linktype,
            data,
            orig_len: meta.orig_len,
        }))
    }

    /// Makes `buf[pos..end]` hold at least `n` bytes, reading more from `inner` (fewer only
    /// at the end of the file); returns how many it holds.
    fn ensure(&mut self, n: usize) -> std::io::Result<usize> {
        if self.end - self.pos >= n || self.eof {
            return Ok(self.end - self.pos);
        }
        // Keep the unconsumed tail, then read as much as the buffer holds.
        self.buf.copy_within(self.pos..self.end, 0);
        self.end -= self.pos;
        self.pos = 0;
        let want = n.max(CHUNK);
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        while self.end < n {
            match self
                .inner
                .read(self.buf.get_mut(self.end..).unwrap_or_default())
            {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(got) => self.end += got,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(self.end - self.pos)
    }

    /// Takes the next `len` bytes: `Ok(false)` on a clean end of file before the first byte,
    /// `Truncated` if the file ends part-way.
    fn take(&mut self, len: usize, what: &'static str) -> Result<bool, PcapError> {
        let start = self.offset;
        let have = self.ensure(len)?;
        if have < len {
            return if have == 0 {
                Ok(false)
            } else {
                self.pos = self.end;
                Err(PcapError::Truncated {
                    offset: start,
                    what,
                })
            };
        }
        self.pos += len;
        self.offset += len as u64;
        Ok(true)
    }

    /// Fills `buf` completely: `Ok(false)` on a clean end of file before the first byte,
    /// `Truncated` if the file ends part-way.
    fn read_exact_at(&mut self, buf: &mut [u8], what: &'static str) -> Result<bool, PcapError> {
        if !self.take(buf.len(), what)? {
            return Ok(false);
        }
        let src = self
            .buf
            .get(self.pos - buf.len()..self.pos)
            .unwrap_or_default();
        buf.copy_from_slice(src);
        Ok(true)
    }

    /// Takes the next `len` bytes as the current record ([`PcapReader::record`]), in place.
    fn fill(&mut self, len: usize, what: &'static str, at: u64) -> Result<(), PcapError> {
        self.rec_len = 0;
        match self.take(len, what) {
            Ok(true) => {
                self.rec = self.pos - len;
                self.rec_len = len;
                Ok(())
            }
            Ok(false) if len == 0 => Ok(()),
            Ok(false) | Err(PcapError::Truncated { .. }) => {
                Err(PcapError::Truncated { offset: at, what })
            }
            Err(e) => Err(e),
        }
    }

    /// The bytes of the last [`PcapReader::fill`].
    fn record(&self) -> &[u8] {
        self.buf
            .get(self.rec..self.rec + self.rec_len)
            .unwrap_or_default()
    }

    /// The next classic record when its header and data are already in the buffer (nearly
    /// every record): read in place, as [`PcapReader::advance`]'s general path would read
    /// it. `None` leaves everything to that path (refills, ends of file, corrupt lengths).
    #[inline]
    fn classic_buffered(
        &mut self,
        hlen: usize,
        swapped: bool,
        nanos: bool,
        linktype: u32,
    ) -> Option<Meta> {
        let avail = self.buf.get(self.pos..self.end)?;
        let hdr: &[u8; 16] = avail.get(..16)?.try_into().ok()?;
        let word = |i: usize| {
            let b = [hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]];
            if swapped {
                u32::from_le_bytes(b)
            } else {
                u32::from_be_bytes(b)
            }
        };
        let incl = usize::try_from(word(8)).ok()?;
        if incl > MAX_RECORD || avail.len() < hlen + incl {
            return None;
        }
        let (sec, frac, orig_len) = (word(0), word(4), word(12));
        let ts_us = if nanos {
            let units = 1_000_000_000;
            to_us(u128::from(sec) * units + u128::from(frac), units, 0)
        } else {
            // What `to_us` gives for microsecond ticks, without 128-bit arithmetic.
            i64::from(sec) * 1_000_000 + i64::from(frac)
        };
        self.rec = self.pos + hlen;
        self.rec_len = incl;
        self.pos += hlen + incl;
        self.offset += (hlen + incl) as u64;
        Some(Meta {
            ts_us,
            linktype,
            start: 0,
            len: incl,
            orig_len,
        })
    }

    fn advance(&mut self) -> Result<Option<Meta>, PcapError> {
        loop {
            match &self.state {
                State::Classic {
                    swapped,
                    nanos,
                    modified,
                    linktype,
                } => {
                    let (swapped, nanos, modified, linktype) =
                        (*swapped, *nanos, *modified, *linktype);
                    let hlen = if modified { 24 } else { 16 };
                    if let Some(meta) = self.classic_buffered(hlen, swapped, nanos, linktype) {
                        return Ok(Some(meta));
                    }
                    let at = self.offset;
                    let mut hdr = [0u8; 24];
                    let hdr = hdr.get_mut(..hlen).unwrap_or_default();
                    if !self.read_exact_at(hdr, "record header")? {
                        return Ok(None);
                    }
                    let sec = u32_at(hdr, 0, swapped);
                    let frac = u32_at(hdr, 4, swapped);
                    let incl = u32_at(hdr, 8, swapped);
                    let orig = u32_at(hdr, 12, swapped);
                    let incl = usize::try_from(incl).unwrap_or(usize::MAX);
                    if incl > MAX_RECORD {
                        return Err(PcapError::Corrupt {
                            offset: at,
                            what: "record header",
                            why: "captured length too large",
                        });
                    }
                    self.fill(incl, "packet record", at)?;
                    let units: u128 = if nanos { 1_000_000_000 } else { 1_000_000 };
                    let ts = u128::from(sec) * units + u128::from(frac);
                    return Ok(Some(Meta {
                        ts_us: to_us(ts, units, 0),
                        linktype,
                        start: 0,
                        len: incl,
                        orig_len: orig,
                    }));
                }
                State::Ng { swapped, .. } => {
                    let swapped = *swapped;
                    let at = self.offset;
                    let mut head = [0u8; 8];
                    if !self.read_exact_at(&mut head, "block header")? {
                        return Ok(None);
                    }
                    if u32::from_be_bytes([head[0], head[1], head[2], head[3]]) == PCAPNG_SHB {
                        self.offset = at;
                        self.section_header_after(&head)?;
                        continue;
                    }
                    let kind = u32_at(&head, 0, swapped);
                    let total = usize::try_from(u32_at(&head, 4, swapped)).unwrap_or(usize::MAX);
                    if total < 12 || total % 4 != 0 || total > MAX_RECORD {
                        return Err(PcapError::Corrupt {
                            offset: at,
                            what: "pcapng block",
                            why: "bad block length",
                        });
                    }
                    // body + trailing length
                    self.fill(total - 8, "pcapng block", at)?;
                    let body_len = total - 12;
                    if u32_at(self.record(), body_len, swapped) as usize != total {
                        return Err(PcapError::Corrupt {
                            offset: at,
                            what: "pcapng block",
                            why: "trailing length differs",
                        });
                    }
                    if let Some(meta) = self.ng_block(kind, body_len, swapped, at)? {
                        return Ok(Some(meta));
                    }
                }
            }
        }
    }

    /// Interprets a pcapng block whose body is in `self.record()[..body_len]`.
    fn ng_block(
        &mut self,
        kind: u32,
        body_len: usize,
        swapped: bool,
        at: u64,
    ) -> Result<Option<Meta>, PcapError> {
        let corrupt = |why| PcapError::Corrupt {
            offset: at,
            what: "pcapng block",
            why,
        };
        let body = self
            .buf
            .get(self.rec..self.rec + self.rec_len)
            .and_then(|r| r.get(..body_len))
            .unwrap_or_default();
        let State::Ng { interfaces, .. } = &mut self.state else {
            return Ok(None);
        };
        match kind {
            BLOCK_IDB => {
                if body.len() < 8 {
                    return Err(corrupt("interface description too short"));
                }
                let mut iface = Interface {
                    linktype: u32::from(u16_at(body, 0, swapped)),
                    units: 1_000_000,
                    offset_s: 0,
                };
                let mut pos = 8usize;
                while pos + 4 <= body.len() {
                    let code = u16_at(body, pos, swapped);
                    let len = usize::from(u16_at(body, pos + 2, swapped));
                    let value = body.get(pos + 4..pos + 4 + len).unwrap_or_default();
                    match code {
                        0 => break,
                        9 => {
                            if let Some(&r) = value.first() {
                                iface.units = if r & 0x80 != 0 {
                                    1u128.checked_shl(u32::from(r & 0x7f)).unwrap_or(0)
                                } else {
                                    10u128.checked_pow(u32::from(r)).unwrap_or(0)
                                };
                                if iface.units == 0 {
                                    return Err(corrupt("unusable if_tsresol"));
                                }
                            }
                        }
                        14 => {
                            iface.offset_s = u64_at(value, 0, swapped) as i64;
                        }
                        _ => {}
                    }
                    pos += 4 + len.div_ceil(4) * 4;
                }
                if interfaces.len() >= MAX_INTERFACES {
                    return Err(corrupt("too many interfaces"));
                }
                interfaces.push(iface);
                Ok(None)
            }
            BLOCK_EPB | BLOCK_PB => {
                let (iface_id, ts_at, caplen_at, data_at) = if kind == BLOCK_EPB {
                    (u32_at(body, 0, swapped), 4, 12, 20)
                } else {
                    (u32::from(u16_at(body, 0, swapped)), 4, 12, 20)
                };
                if body.len() < data_at {
                    return Err(corrupt("packet block too short"));
                }
                let iface = usize::try_from(iface_id)
                    .ok()
                    .and_then(|i| interfaces.get(i))
                    .copied()
                    .ok_or_else(|| corrupt("unknown interface"))?;
                let ts = u64::from(u32_at(body, ts_at, swapped)) << 32
                    | u64::from(u32_at(body, ts_at + 4, swapped));
                let caplen = u32_at(body, caplen_at, swapped) as usize;
                let orig_len = u32_at(body, caplen_at + 4, swapped);
                if caplen > body.len() - data_at {
                    return Err(corrupt("captured length past the block"));
                }
                Ok(Some(Meta {
                    ts_us: to_us(u128::from(ts), iface.units, iface.offset_s),
                    linktype: iface.linktype,
                    start: data_at,
                    len: caplen,
                    orig_len,
                }))
            }
            BLOCK_SPB => {
                let iface = *interfaces.first().ok_or_else(|| corrupt("no interface"))?;
                let orig_len = u32_at(body, 0, swapped);
                let len = body
                    .len()
                    .saturating_sub(4)
                    .min(usize::try_from(orig_len).unwrap_or(usize::MAX));
                Ok(Some(Meta {
                    // A simple packet block has no timestamp: reuse the last one.
                    ts_us: self.last_ts_us,
                    linktype: iface.linktype,
                    start: 4,
                    len,
                    orig_len,
                }))
            }
            _ => Ok(None),
        }
    }

    /// Reads a section header block whose 4-byte type was already consumed.
    fn section_header(&mut self) -> Result<(), PcapError> {
        let mut rest = [0u8; 4];
        if !self.read_exact_at(&mut rest, "section header")? {
            return Err(PcapError::Truncated {
                offset: 0,
                what: "section header",
            });
        }
        let mut head = [0u8; 8];
        head[..4].copy_from_slice(&PCAPNG_SHB.to_be_bytes());
        head[4..].copy_from_slice(&rest);
        let at = self.offset - 8;
        self.section_header_body(&head, at)
    }

    /// Reads a section header block whose type and length were already consumed.
    fn section_header_after(&mut self, head: &[u8; 8]) -> Result<(), PcapError> {
        let at = self.offset;
        self.offset += 8;
        self.section_header_body(head, at)
    }

    fn section_header_body(&mut self, head: &[u8; 8], at: u64) -> Result<(), PcapError> {
        let mut bom = [0u8; 4];
        if !self.read_exact_at(&mut bom, "section header")? {
            return Err(PcapError::Truncated {
                offset: at,
                what: "section header",
            });
        }
        let swapped = match (u32::from_be_bytes(bom), u32::from_le_bytes(bom)) {
            (PCAPNG_BOM, _) => false,
            (_, PCAPNG_BOM) => true,
            _ => {
                return Err(PcapError::Corrupt {
                    offset: at,
                    what: "section header",
                    why: "bad byte-order magic",
                })
            }
        };
        let total = usize::try_from(u32_at(head, 4, swapped)).unwrap_or(usize::MAX);
        if total < 28 || total % 4 != 0 || total > MAX_RECORD {
            return Err(PcapError::Corrupt {
                offset: at,
                what: "section header",
                why: "bad block length",
            });
        }
        // Skip the rest of the block (version, section length, options, trailing length).
        self.fill(total - 12, "section header", at)?;
        self.state = State::Ng {
            swapped,
            interfaces: Vec::new(),
        };
        Ok(())
    }
}

/// `read_exact` that tells a clean end of file (`Ok(false)`) from a partial read (error).
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut got = 0usize;
    while got < buf.len() {
        match r.read(buf.get_mut(got..).unwrap_or_default()) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classic(magic: u32, le: bool, linktype: u32, recs: &[(u32, u32, &[u8])]) -> Vec<u8> {
        let w32 = |v: u32| if le { v.to_le_bytes() } else { v.to_be_bytes() };
        let w16 = |v: u16| if le { v.to_le_bytes() } else { v.to_be_bytes() };
        let mut f = Vec::new();
        f.extend_from_slice(&w32(magic));
        f.extend_from_slice(&w16(2));
        f.extend_from_slice(&w16(4));
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&w32(65535));
        f.extend_from_slice(&w32(linktype));
        for (s, frac, d) in recs {
            f.extend_from_slice(&w32(*s));
            f.extend_from_slice(&w32(*frac));
            f.extend_from_slice(&w32(d.len() as u32));
            f.extend_from_slice(&w32(d.len() as u32));
            f.extend_from_slice(d);
        }
        f
    }

    type Packets = Vec<(i64, u32, Vec<u8>)>;

    /// `n` records, the `i`th `i % max` bytes of `i`'s low byte.
    fn small_records(n: u32, max: u32) -> Vec<Vec<u8>> {
        (0..n).map(|i| vec![i as u8; (i % max) as usize]).collect()
    }

    /// `small` as records, with `big` put at `at`: a file past several chunks with a record
    /// longer than one.
    fn records_with<'a>(
        small: &'a [Vec<u8>],
        big: &'a [u8],
        at: usize,
    ) -> Vec<(u32, u32, &'a [u8])> {
        let mut recs: Vec<(u32, u32, &[u8])> =
            small.iter().map(|d| (7, 999, d.as_slice())).collect();
        recs.insert(at, (8, 1, big));
        recs
    }

    fn all(bytes: &[u8]) -> (Packets, Option<PcapError>) {
        all_from(bytes)
    }

    fn all_from(from: impl Read) -> (Packets, Option<PcapError>) {
        let mut r = match PcapReader::new(from) {
            Ok(r) => r,
            Err(e) => return (Vec::new(), Some(e)),
        };
        let mut out = Vec::new();
        loop {
            match r.next_packet() {
                Ok(Some(p)) => out.push((p.ts_us, p.linktype, p.data.to_vec())),
                Ok(None) => return (out, None),
                Err(e) => return (out, Some(e)),
            }
        }
    }

    #[test]
    fn classic_both_orders_and_resolutions() {
        for le in [false, true] {
            let f = classic(MAGIC_US, le, 1, &[(10, 5, b"abc"), (11, 0, b"")]);
            let (p, e) = all(&f);
            assert!(e.is_none());
            assert_eq!(p[0], (10_000_005, 1, b"abc".to_vec()));
            assert_eq!(p[1].0, 11_000_000);
            let f = classic(MAGIC_NS, le, 113, &[(10, 5_000, b"x")]);
            let (p, _) = all(&f);
            assert_eq!((p[0].0, p[0].1), (10_000_005, 113));
        }
    }

    /// A reader that hands out 1 to 7 bytes per `read`, so records and headers straddle
    /// every possible chunk refill.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.1 = self.1 % 7 + 1;
            let n = self.1.min(buf.len()).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    /// A file of `bytes` of its own, removed when dropped.
    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn new(name: &str, bytes: &[u8]) -> TempFile {
            let path = std::env::temp_dir()
                .join(format!("xtrail-pcap-{}-{name}.pcap", std::process::id()));
            std::fs::write(&path, bytes).expect("temp file written");
            TempFile(path)
        }

        fn read_ahead(&self, size: usize, n: usize) -> ReadAhead {
            let file = File::open(&self.0).expect("temp file opens");
            ReadAhead::spawn(file, size, n).expect("thread starts")
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// The thread's chunks, whatever their size against the reader's buffer and records,
    /// read as the file in one piece: whole, and cut anywhere (the same packets, then the
    /// same error); `open` reads the same.
    #[test]
    fn a_file_read_ahead_reads_as_in_one_piece() {
        let big = vec![0xcdu8; CHUNK + 1_000];
        let small = small_records(2_000, 500);
        let f = classic(MAGIC_US, true, 1, &records_with(&small, &big, 700));
        let (whole, e) = all(&f);
        assert!(e.is_none(), "{e:?}");
        let file = TempFile::new("whole", &f);
        for (size, n) in [(61, 1), (4_096, 2), (100_003, 3), (AHEAD_CHUNK, 2)] {
            let (read, e) = all_from(file.read_ahead(size, n));
            assert!(e.is_none(), "chunks of {size}: {e:?}");
            assert!(read == whole, "chunks of {size}: packets differ");
        }
        let mut opened = open(&file.0).expect("opens");
        let mut n = 0;
        while let Some(p) = opened.next_packet().expect("reads") {
            assert_eq!(p.data, whole[n].2.as_slice());
            n += 1;
        }
        assert_eq!(n, whole.len());
        for cut in [25, 1_000, CHUNK + 3, f.len() - 1] {
            let cut_file = TempFile::new("cut", &f[..cut]);
            let (a, ea) = all(&f[..cut]);
            let (b, eb) = all_from(cut_file.read_ahead(4_096, 2));
            assert!(a == b, "cut at {cut}: packets differ");
            assert_eq!(format!("{ea:?}"), format!("{eb:?}"), "cut at {cut}");
        }
    }

    /// Endless bytes, then (with `fail_at`) an error; sets `dropped` when dropped.
    struct FakeInput {
        at: usize,
        fail_at: Option<usize>,
        dropped: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }

    impl Read for FakeInput {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = match self.fail_at {
                Some(f) if self.at >= f => return Err(std::io::Error::other("disk gone")),
                Some(f) => buf.len().min(f - self.at).min(1_000),
                None => buf.len(),
            };
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b = (self.at + i) as u8;
            }
            self.at += n;
            Ok(n)
        }
    }

    impl Drop for FakeInput {
        fn drop(&mut self) {
            self.dropped
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Every byte read before an error comes before the error, in order; then nothing.
    #[test]
    fn the_bytes_before_an_error_come_first() {
        let dropped = std::sync::Arc::default();
        let source = FakeInput {
            at: 0,
            fail_at: Some(10_500),
            dropped: std::sync::Arc::clone(&dropped),
        };
        let mut r = ReadAhead::spawn(source, 4_096, 2).expect("thread starts");
        let mut got = Vec::new();
        let mut buf = [0u8; 777];
        let error = loop {
            match r.read(&mut buf) {
                Ok(0) => panic!("the end instead of the error"),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => break e,
            }
        };
        assert_eq!(error.to_string(), "disk gone");
        assert_eq!(got.len(), 10_500);
        assert!(got.iter().enumerate().all(|(i, b)| *b == i as u8));
        assert_eq!(r.read(&mut buf).expect("nothing more"), 0);
        // The thread was waited for at the error: its input is gone.
        assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
    }

    /// A reader dropped before the end stops its thread, which waits to hand over a chunk of
    /// an input that never ends, and waits for it: the input is dropped with the thread.
    #[test]
    fn a_reader_dropped_early_stops_its_thread() {
        let dropped = std::sync::Arc::default();
        let source = FakeInput {
            at: 0,
            fail_at: None,
            dropped: std::sync::Arc::clone(&dropped),
        };
        let mut r = ReadAhead::spawn(source, 64, 1).expect("thread starts");
        let mut buf = [0u8; 100];
        assert_eq!(r.read(&mut buf).expect("reads"), 64);
        assert!(!dropped.load(std::sync::atomic::Ordering::SeqCst));
        drop(r);
        assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
        let empty = TempFile::new("empty", b"");
        assert!(matches!(
            open(&empty.0),
            Err(PcapError::Truncated { offset: 0, .. })
        ));
    }

    /// A FIFO is read in place: its first packet comes while the writer, which stays open,
    /// has written far less than a read-ahead chunk.
    #[test]
    fn a_fifo_is_read_as_its_bytes_come() {
        let fifo =
            TempFile(std::env::temp_dir().join(format!("xtrail-pcap-{}-fifo", std::process::id())));
        let path = fifo.0.clone();
        let _ = std::fs::remove_file(&path);
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL");
        // SAFETY: a NUL-terminated path and a mode.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        let (read_one, wait) = std::sync::mpsc::channel::<()>();
        let writer_path = path.clone();
        let writer = std::thread::spawn(move || {
            let mut w = std::fs::OpenOptions::new()
                .write(true)
                .open(&writer_path)
                .expect("FIFO opens for writing");
            let one = classic(MAGIC_US, true, 1, &[(1, 2, b"first packet")]);
            std::io::Write::write_all(&mut w, &one).expect("written");
            // Open until the reader has its packet (or 20 s: then the test fails below).
            wait.recv_timeout(std::time::Duration::from_secs(20))
                .is_ok()
        });
        let mut r = open(&path).expect("opens");
        let p = r.next_packet().expect("reads").expect("a packet");
        assert_eq!(p.data, b"first packet");
        let _ = read_one.send(());
        assert!(
            writer.join().expect("writer"),
            "the packet waited for the writer's close"
        );
        assert!(r.next_packet().expect("the end").is_none());
    }

    #[test]
    fn records_across_chunks_and_short_reads_read_as_in_one_piece() {
        // Past several chunks: small records, one larger than a chunk, small ones again.
        let big = vec![0xabu8; CHUNK + CHUNK / 5];
        let small = small_records(3_000, 300);
        for (magic, le) in [(MAGIC_US, true), (MAGIC_US, false), (MAGIC_NS, true)] {
            let recs = records_with(&small, &big, 1_500);
            let f = classic(magic, le, 1, &recs);
            let (whole, e) = all(&f);
            assert!(e.is_none(), "{e:?}");
            assert_eq!(whole.len(), recs.len());
            assert_eq!(whole[1_500].2.len(), big.len());
            let (trickled, e) = all_from(Trickle(&f, 0));
            assert!(e.is_none(), "{e:?}");
            assert!(trickled == whole, "short reads read differently");
            // Cut at points around chunk edges and inside the large record: the same
            // packets, then the same error, either way.
            for cut in [
                CHUNK - 3,
                CHUNK + 17,
                2 * CHUNK + 1,
                f.len() - 1,
                f.len() - 299,
            ] {
                let (a, ea) = all(&f[..cut]);
                let (b, eb) = all_from(Trickle(&f[..cut], 0));
                assert!(a == b, "cut at {cut}: packets differ");
                assert_eq!(format!("{ea:?}"), format!("{eb:?}"), "cut at {cut}");
                assert!(matches!(ea, Some(PcapError::Truncated { .. })), "{ea:?}");
            }
        }
    }

    #[test]
    fn truncated_file_yields_what_it_can_then_errors() {
        let f = classic(MAGIC_US, true, 1, &[(1, 0, b"abcd"), (2, 0, b"efgh")]);
        let (p, e) = all(&f[..f.len() - 2]);
        assert_eq!(p.len(), 1);
        assert!(matches!(e, Some(PcapError::Truncated { .. })), "{e:?}");
        assert!(matches!(
            all(b"\xd4\xc3"),
            (_, Some(PcapError::Truncated { .. }))
        ));
        assert!(matches!(all(b"nope"), (_, Some(PcapError::BadMagic(_)))));
    }

    #[test]
    fn huge_record_is_corrupt() {
        let mut f = classic(MAGIC_US, true, 1, &[]);
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&u32::MAX.to_le_bytes());
        f.extend_from_slice(&[0; 4]);
        assert!(matches!(all(&f), (_, Some(PcapError::Corrupt { .. }))));
    }

    fn block(kind: u32, body: &[u8]) -> Vec<u8> {
        let total = (12 + body.len().div_ceil(4) * 4) as u32;
        let mut b = kind.to_le_bytes().to_vec();
        b.extend_from_slice(&total.to_le_bytes());
        b.extend_from_slice(body);
        b.resize(total as usize - 4, 0);
        b.extend_from_slice(&total.to_le_bytes());
        b
    }

    pub(crate) fn pcapng(packets: &[(u64, &[u8])], tsresol: Option<u8>) -> Vec<u8> {
        let mut shb = PCAPNG_BOM.to_le_bytes().to_vec();
        shb.extend_from_slice(&[1, 0, 0, 0]);
        shb.extend_from_slice(&u64::MAX.to_le_bytes());
        let mut f = block(PCAPNG_SHB, &shb);
        let mut idb = vec![1, 0, 0, 0, 0, 0, 0, 0];
        if let Some(r) = tsresol {
            idb.extend_from_slice(&[9, 0, 1, 0, r, 0, 0, 0]);
        }
        idb.extend_from_slice(&[0, 0, 0, 0]);
        f.extend(block(BLOCK_IDB, &idb));
        for (ts, data) in packets {
            let mut epb = 0u32.to_le_bytes().to_vec();
            epb.extend_from_slice(&((ts >> 32) as u32).to_le_bytes());
            epb.extend_from_slice(&(*ts as u32).to_le_bytes());
            epb.extend_from_slice(&(data.len() as u32).to_le_bytes());
            epb.extend_from_slice(&(data.len() as u32).to_le_bytes());
            epb.extend_from_slice(data);
            f.extend(block(BLOCK_EPB, &epb));
        }
        f.extend(block(BLOCK_SPB, &[2, 0, 0, 0, b'h', b'i']));
        f.extend(block(0x0bad, &[1, 2, 3]));
        f
    }

    #[test]
    fn pcapng_with_tsresol() {
        let f = pcapng(&[(1_500_000, b"abc")], None);
        let (p, e) = all(&f);
        assert!(e.is_none(), "{e:?}");
        assert_eq!(p[0], (1_500_000, 1, b"abc".to_vec()));
        assert_eq!(p[1], (1_500_000, 1, b"hi".to_vec()));
        let f = pcapng(&[(1_500_000_000, b"abc")], Some(9));
        assert_eq!(all(&f).0[0].0, 1_500_000);
        let f = pcapng(&[(3 << 20, b"abc")], Some(0x80 | 20));
        assert_eq!(all(&f).0[0].0, 3_000_000);
    }

    #[test]
    fn pcapng_every_truncation_is_clean() {
        let f = pcapng(&[(1, b"abcdef"), (2, b"ghijkl")], None);
        let (p, e) = all(&f);
        assert_eq!(p.len(), 3);
        assert!(e.is_none());
        for n in 0..f.len() {
            // Never a panic; a cut inside a block is an error, a cut between blocks is not.
            let (p, _) = all(&f[..n]);
            assert!(p.len() <= 3);
        }
    }
}
