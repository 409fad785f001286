//! The on-disk spool: events wait here, in sequence order, until the collector acknowledges
//! them.
//!
//! Layout of the spool directory:
//! - `<first_seq>.seg`: segment files, 20-digit zero-padded first sequence number. Each starts
//!   with the 8-byte magic `XTSPOOL1`, then records `[u32 len][u32 crc32][payload]` (little
//!   endian), the payload being a protobuf `xtrail.v1.Event` whose `seq` is set. Sequence
//!   numbers in a segment are contiguous; the last segment is the one being appended to.
//! - `acked`: the highest sequence number the collector acknowledged, as decimal text,
//!   replaced atomically (write + rename). Written at most every [`ACK_PERSIST_EVERY`],
//!   before a segment is deleted, and on [`Spool::sync`] (the fsync timer, shutdown), not
//!   per acknowledgement: after a crash it may be behind, and the events after it are resent
//!   (the collector recognises them as duplicates: at worst a resend, never a loss).
//! - `next_seq`: the sequence high mark, decimal: every sequence number this spool ever
//!   assigned is below it. Reserved ahead in blocks of [`SEQ_RESERVE`] (write, fsync,
//!   rename) before any number of the block is used, so a number is never assigned twice,
//!   even after every segment was acknowledged and deleted or a tail was cut off; a restart
//!   continues above the mark (sequence numbers have gaps, never repeats).
//! - `stream-id`: the stream id this spool publishes under (`PublishRequest.sensor_id`):
//!   the configured id plus, with [`SpoolConfig::stream_suffix`], a random suffix made when
//!   the file is created. Kept with the counter, so a lost spool directory (whose counter
//!   starts again at 1) also loses its stream id and never reuses a (stream, seq).
//! - `LOCK`: held (advisory lock) while a publisher owns the spool.
//!
//! Appends go straight to the file (one `write` per event, no userspace buffer), so a killed
//! sensor loses nothing it published; `fsync` runs on the sender's timer (power-loss window
//! = the fsync interval). A record that fails its length or CRC check on open (a torn write
//! at the tail, a damaged disk block) ends its segment: the file is truncated there, the
//! loss reported, and every good record before it kept.
//!
//! Bounded: when an append would push the spool over its byte limit, the oldest segments are
//! deleted and a synthetic `SPOOL_DROP` event reporting the loss is appended. Real events are
//! counted once: a deleted `SPOOL_DROP` report is not a lost event, its count is carried into
//! the next report, so the counts of the reports that reach the collector add up to exactly
//! the real events lost. A report's `trail` is that count in decimal (machine-readable);
//! its `info` says `spool full: N events dropped (T since start)`.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message as _;
use xtrail_proto::v1;

use crate::error::PublishError;

const MAGIC: &[u8; 8] = b"XTSPOOL1";
/// Longest time an acknowledgement waits to be written to the `acked` file (unless a
/// segment is deleted or the spool synced first).
pub const ACK_PERSIST_EVERY: Duration = Duration::from_millis(100);
/// Sequence numbers reserved (persisted in `next_seq`) at a time.
pub const SEQ_RESERVE: u64 = 4096;
const RECORD_HEADER: u64 = 8;
/// A record bigger than this is treated as corruption (an event is a few hundred bytes).
pub(crate) const MAX_RECORD: u32 = 1 << 20;

/// What opening the spool found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Unacknowledged events found (to be resent).
    pub pending: u64,
    /// Corrupt regions found and cut off (one per damaged segment).
    pub corrupt_regions: u64,
    /// Bytes cut off with them.
    pub corrupt_bytes: u64,
}

/// Who the spool publishes as.
#[derive(Clone, Debug, Default)]
pub struct SpoolConfig {
    /// Byte bound; the oldest events are dropped past it.
    pub max_bytes: u64,
    /// The `sensor` field of the spool's own `SPOOL_DROP` reports.
    pub sensor_name: String,
    /// The stream id, or its prefix with `stream_suffix`.
    pub stream_id: String,
    /// Append `-<8 random hex digits>`, made when the spool's `stream-id` file is created.
    pub stream_suffix: bool,
}

#[derive(Debug)]
struct Segment {
    first_seq: u64,
    /// Records in the segment; their seqs are `first_seq .. first_seq + count`.
    count: u64,
    /// Valid length of the file, header included.
    len: u64,
    path: PathBuf,
    /// The `SPOOL_DROP` reports in the segment: (seq, real events it reports lost).
    reports: Vec<(u64, u64)>,
}

impl Segment {
    fn last_seq(&self) -> Option<u64> {
        (self.count > 0).then(|| self.first_seq + self.count - 1)
    }
}

/// Where a reader finds a segment: a snapshot taken under the lock, read without it.
#[derive(Clone, Debug)]
pub(crate) struct SegmentView {
    pub first_seq: u64,
    pub len: u64,
    pub path: PathBuf,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    sensor_name: String,
    segments: VecDeque<Segment>,
    /// Write handle of the last segment.
    active: Option<File>,
    next_seq: u64,
    /// Persisted in `next_seq`: every seq assigned is below it.
    seq_mark: u64,
    acked_seq: u64,
    total_bytes: u64,
    dirty: bool,
    /// Real events lost since open (reports not counted).
    lost: u64,
    /// Lost events no report in the spool carries yet (including counts of deleted reports).
    unreported: u64,
    spooled: u64,
    _lock: File,
    buf: Vec<u8>,
}

/// The spool, shared by the publishing threads (appends) and the sender (reads and acks).
#[derive(Clone, Debug)]
pub struct Spool {
    inner: Arc<Mutex<Inner>>,
    stream_id: Arc<str>,
    /// Serialises writes of the `acked` file; taken before `inner`, never while holding it.
    acked_file: Arc<Mutex<AckedFile>>,
}

/// What the `acked` file holds, and when it was written.
#[derive(Debug)]
struct AckedFile {
    dir: PathBuf,
    written: u64,
    at: Instant,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2))
        .unwrap_or(1)
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.seg"))
}

fn io_err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> PublishError + 'a {
    move |source| PublishError::Spool {
        path: path.to_path_buf(),
        what,
        source,
    }
}

/// One record read back from a segment.
pub(crate) enum ReadOutcome {
    Record(Box<v1::Event>, u64),
    End,
    Corrupt(&'static str),
}

/// Reads the record at the reader's position; `limit` is the valid length of the file.
pub(crate) fn read_record<R: Read>(r: &mut R, offset: u64, limit: u64) -> ReadOutcome {
    if offset >= limit {
        return ReadOutcome::End;
    }
    if limit - offset < RECORD_HEADER {
        return ReadOutcome::Corrupt("truncated record header");
    }
    let mut header = [0u8; 8];
    if r.read_exact(&mut header).is_err() {
        return ReadOutcome::Corrupt("truncated record header");
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len == 0 || len > MAX_RECORD {
        return ReadOutcome::Corrupt("bad record length");
    }
    if limit - offset - RECORD_HEADER < u64::from(len) {
        return ReadOutcome::Corrupt("truncated record");
    }
    let mut payload = vec![0u8; len as usize];
    if r.read_exact(&mut payload).is_err() {
        return ReadOutcome::Corrupt("truncated record");
    }
    if crc32fast::hash(&payload) != crc {
        return ReadOutcome::Corrupt("checksum mismatch");
    }
    match v1::Event::decode(payload.as_slice()) {
        Ok(ev) => ReadOutcome::Record(Box::new(ev), RECORD_HEADER + u64::from(len)),
        Err(_) => ReadOutcome::Corrupt("undecodable event"),
    }
}

/// Scans a segment on open: counts its good records, cuts off anything after the first bad
/// one. Returns the segment (None if it holds nothing) and the bytes cut off.
fn scan_segment(
    path: &Path,
    first_seq: u64,
) -> Result<(Option<Segment>, u64, Option<String>), PublishError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err(path, "opening segment"))?;
    let file_len = file
        .metadata()
        .map_err(io_err(path, "reading segment size"))?
        .len();
    let mut r = io::BufReader::new(&file);
    let mut magic = [0u8; 8];
    if file_len < 8 || r.read_exact(&mut magic).is_err() || &magic != MAGIC {
        let problem = format!(
            "{}: bad segment header, {file_len} bytes skipped",
            path.display()
        );
        return Ok((None, file_len, Some(problem)));
    }
    let mut offset = MAGIC.len() as u64;
    let mut count = 0u64;
    let mut problem = None;
    let mut reports = Vec::new();
    loop {
        match read_record(&mut r, offset, file_len) {
            ReadOutcome::End => break,
            ReadOutcome::Record(ev, n) => {
                if ev.seq != first_seq + count {
                    problem = Some("out-of-sequence record");
                    break;
                }
                if ev.r#type == xtrail_proto::SPOOL_DROP_TYPE {
                    reports.push((ev.seq, drop_report_count(&ev)));
                }
                count += 1;
                offset += n;
            }
            ReadOutcome::Corrupt(why) => {
                problem = Some(why);
                break;
            }
        }
    }
    let cut = file_len - offset;
    let report = problem.map(|why| {
        format!(
            "{}: {why} at offset {offset}; {count} good records kept, {cut} bytes skipped",
            path.display()
        )
    });
    if cut > 0 {
        file.set_len(offset)
            .map_err(io_err(path, "truncating corrupt segment"))?;
    }
    let seg = (count > 0).then(|| Segment {
        first_seq,
        count,
        len: offset,
        path: path.to_path_buf(),
        reports,
    });
    Ok((seg, cut, report))
}

/// Reads a decimal file; `None` if it does not exist or does not parse (logged).
fn read_number(path: &Path) -> Result<Option<u64>, PublishError> {
    match fs::read_to_string(path) {
        Ok(text) => match text.trim().parse::<u64>() {
            Ok(n) => Ok(Some(n)),
            Err(_) => {
                log::warn!("{}: unreadable, ignored", path.display());
                Ok(None)
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path, "reading")(e)),
    }
}

/// Replaces `dir/name` with `text` atomically (write, optionally fsync, rename).
fn replace_file(dir: &Path, name: &str, text: &str, durable: bool) -> Result<(), PublishError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let mut f = File::create(&tmp).map_err(io_err(&tmp, "creating"))?;
    f.write_all(text.as_bytes())
        .map_err(io_err(&tmp, "writing"))?;
    if durable {
        f.sync_all().map_err(io_err(&tmp, "syncing"))?;
    }
    drop(f);
    fs::rename(&tmp, &path).map_err(io_err(&path, "replacing"))?;
    if durable {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// The real events a `SPOOL_DROP` report says were lost (its `trail`, decimal; 0 for a
/// report in an older format).
pub fn drop_report_count(ev: &v1::Event) -> u64 {
    ev.trail.parse().unwrap_or(0)
}

/// The spool's stream id: the one in `stream-id` if it belongs to `cfg.stream_id`, else a
/// new one (persisted).
fn stream_id(dir: &Path, cfg: &SpoolConfig) -> Result<String, PublishError> {
    if !cfg.stream_suffix {
        return Ok(cfg.stream_id.clone());
    }
    let path = dir.join("stream-id");
    match fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            if id
                .strip_prefix(cfg.stream_id.as_str())
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|suffix| !suffix.is_empty() && !suffix.contains('-'))
            {
                return Ok(id.to_string());
            }
            log::warn!(
                "{}: stream id {id:?} is not one of {:?}; starting a new stream",
                path.display(),
                cfg.stream_id
            );
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&path, "reading")(e)),
    }
    let id = format!("{}-{}", cfg.stream_id, crate::identity::random_hex(4));
    replace_file(dir, "stream-id", &format!("{id}\n"), true)?;
    Ok(id)
}

impl Spool {
    /// Opens (or creates) the spool in `dir`. Fails if another publisher holds it.
    pub fn open(dir: &Path, cfg: &SpoolConfig) -> Result<(Spool, OpenReport), PublishError> {
        fs::create_dir_all(dir).map_err(io_err(dir, "creating spool directory"))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path, "opening lock file"))?;
        lock.try_lock()
            .map_err(|_| PublishError::SpoolBusy(dir.to_path_buf()))?;

        let stream_id = stream_id(dir, cfg)?;
        let acked_path = dir.join("acked");
        let acked_seq = read_number(&acked_path)?.unwrap_or_else(|| {
            if acked_path.exists() {
                log::warn!("{}: resending the whole spool", acked_path.display());
            }
            0
        });
        let seq_mark = read_number(&dir.join("next_seq"))?.unwrap_or(0);

        let mut firsts = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err(dir, "listing spool"))? {
            let entry = entry.map_err(io_err(dir, "listing spool"))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(stem) = name.strip_suffix(".seg") {
                if let Ok(first) = stem.parse::<u64>() {
                    firsts.push(first);
                }
            }
        }
        firsts.sort_unstable();

        let mut report = OpenReport::default();
        let mut segments = VecDeque::new();
        let mut max_seen = acked_seq;
        for first in firsts {
            // Even an empty segment's name says its first seq was about to be used.
            max_seen = max_seen.max(first.saturating_sub(1));
            let path = segment_path(dir, first);
            let (seg, cut, problem) = scan_segment(&path, first)?;
            if let Some(problem) = problem {
                log::warn!("spool: {problem}");
                report.corrupt_regions += 1;
                report.corrupt_bytes += cut;
            }
            match seg {
                Some(seg) if seg.last_seq().is_some_and(|last| last > acked_seq) => {
                    max_seen = max_seen.max(seg.last_seq().unwrap_or(0));
                    report.pending += seg
                        .last_seq()
                        .map_or(0, |last| last - acked_seq.max(seg.first_seq - 1));
                    segments.push_back(seg);
                }
                other => {
                    if let Some(seg) = other {
                        max_seen = max_seen.max(seg.last_seq().unwrap_or(0));
                    }
                    fs::remove_file(&path).map_err(io_err(&path, "removing acked segment"))?;
                }
            }
        }
        // Never below anything assigned before: what the segments and acknowledgements show,
        // and the persisted high mark (which also covers records cut off or dropped).
        let next_seq = (max_seen + 1).max(seq_mark).max(1);
        let total_bytes = segments.iter().map(|s| s.len).sum();
        let segment_bytes = (cfg.max_bytes / 16).clamp(4096, 64 << 20);
        let inner = Inner {
            dir: dir.to_path_buf(),
            max_bytes: cfg.max_bytes,
            segment_bytes,
            sensor_name: cfg.sensor_name.clone(),
            segments,
            active: None,
            next_seq,
            seq_mark,
            acked_seq,
            total_bytes,
            dirty: false,
            lost: 0,
            unreported: 0,
            spooled: 0,
            _lock: lock,
            buf: Vec::with_capacity(512),
        };
        Ok((
            Spool {
                inner: Arc::new(Mutex::new(inner)),
                stream_id: stream_id.into(),
                acked_file: Arc::new(Mutex::new(AckedFile {
                    dir: dir.to_path_buf(),
                    written: acked_seq,
                    // The first acknowledgement after opening is written at once.
                    at: Instant::now()
                        .checked_sub(ACK_PERSIST_EVERY)
                        .unwrap_or_else(Instant::now),
                })),
            },
            report,
        ))
    }

    /// The stream id to publish under (`PublishRequest.sensor_id`).
    pub fn stream_id(&self) -> &str {
        &self.stream_id
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the spool state consistent enough (at worst
        // a record is counted but not written); keep going rather than poison every caller.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends an event, assigning its sequence number, which it returns.
    pub fn append(&self, event: &mut v1::Event) -> Result<u64, PublishError> {
        let mut inner = self.lock();
        inner.append(event)
    }

    /// The highest sequence number acknowledged by the collector.
    pub fn acked_seq(&self) -> u64 {
        self.lock().acked_seq
    }

    /// The highest sequence number assigned so far (0 if none since the spool was created).
    pub fn last_assigned(&self) -> u64 {
        self.lock().next_seq - 1
    }

    /// Events in the spool not yet acknowledged.
    pub fn pending(&self) -> u64 {
        let inner = self.lock();
        inner
            .segments
            .iter()
            .filter_map(|s| s.last_seq().map(|last| (s.first_seq, last)))
            .map(|(first, last)| last.saturating_sub(inner.acked_seq.max(first - 1)))
            .sum()
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.lock().total_bytes
    }

    /// (events appended since open, including drop reports; real events lost since open).
    pub fn counters(&self) -> (u64, u64) {
        let inner = self.lock();
        (inner.spooled, inner.lost)
    }

    /// Segments to read, oldest first.
    pub(crate) fn views(&self) -> Vec<SegmentView> {
        self.lock()
            .segments
            .iter()
            .map(|s| SegmentView {
                first_seq: s.first_seq,
                len: s.len,
                path: s.path.clone(),
            })
            .collect()
    }

    /// Records an acknowledgement, then deletes fully acknowledged segments. The `acked`
    /// file is written at most every [`ACK_PERSIST_EVERY`], and always before a segment
    /// is deleted (so no segment goes while the file still says it is unacknowledged).
    pub fn ack(&self, seq: u64) -> Result<(), PublishError> {
        let segment_done = {
            let mut inner = self.lock();
            if seq <= inner.acked_seq {
                return Ok(());
            }
            inner.acked_seq = seq.min(inner.next_seq - 1);
            inner.has_acked_segment()
        };
        self.persist_acked(!segment_done)?;
        let mut inner = self.lock();
        inner.remove_acked()
    }

    /// Writes the acknowledged seq to the `acked` file if it is behind; with `lazy`, only
    /// if the last write is older than [`ACK_PERSIST_EVERY`].
    pub(crate) fn persist_acked(&self, lazy: bool) -> Result<(), PublishError> {
        let mut file = self.acked_file.lock().unwrap_or_else(|p| p.into_inner());
        if lazy && file.at.elapsed() < ACK_PERSIST_EVERY {
            return Ok(());
        }
        let acked = self.acked_seq();
        if acked <= file.written {
            return Ok(());
        }
        replace_file(&file.dir, "acked", &format!("{acked}\n"), false)?;
        file.written = acked;
        file.at = Instant::now();
        Ok(())
    }

    /// Writes the `acked` file if it is behind, then flushes appended records to stable
    /// storage if anything was appended since last time.
    pub fn sync(&self) -> Result<(), PublishError> {
        self.persist_acked(false)?;
        let (file, path) = {
            let mut inner = self.lock();
            if !inner.dirty {
                return Ok(());
            }
            inner.dirty = false;
            let Some(active) = inner.active.as_ref() else {
                return Ok(());
            };
            let path = inner
                .segments
                .back()
                .map(|s| s.path.clone())
                .unwrap_or_default();
            (
                active
                    .try_clone()
                    .map_err(io_err(&path, "cloning handle"))?,
                path,
            )
        };
        file.sync_data().map_err(io_err(&path, "syncing"))
    }
}

impl Inner {
    fn append(&mut self, event: &mut v1::Event) -> Result<u64, PublishError> {
        let rec_len = self.encode(event)?;
        if self.total_bytes + rec_len > self.max_bytes {
            self.drop_oldest(rec_len + 512)?;
            if self.unreported > 0 {
                self.append_drop_report()?;
                // Re-encode: the drop report reused the buffer and took this sequence number.
                return self.append(event);
            }
        }
        self.write_record(rec_len)?;
        self.spooled += 1;
        Ok(event.seq)
    }

    /// Encodes `event` with the next sequence number into `buf` as a record; its length.
    fn encode(&mut self, event: &mut v1::Event) -> Result<u64, PublishError> {
        event.seq = self.next_seq;
        self.buf.clear();
        self.buf.extend_from_slice(&[0u8; 8]);
        event
            .encode(&mut self.buf)
            .map_err(|_| PublishError::EventTooLarge(usize::MAX))?;
        let len = self.buf.len() - 8;
        if len > MAX_RECORD as usize {
            return Err(PublishError::EventTooLarge(len));
        }
        let len32 = u32::try_from(len).map_err(|_| PublishError::EventTooLarge(len))?;
        let crc = crc32fast::hash(&self.buf[8..]);
        self.buf[0..4].copy_from_slice(&len32.to_le_bytes());
        self.buf[4..8].copy_from_slice(&crc.to_le_bytes());
        Ok(self.buf.len() as u64)
    }

    /// Persists a new sequence high mark before any number at or above the old one is used.
    fn reserve_seqs(&mut self) -> Result<(), PublishError> {
        let mark = self.next_seq + SEQ_RESERVE;
        replace_file(&self.dir, "next_seq", &format!("{mark}\n"), true)?;
        self.seq_mark = mark;
        Ok(())
    }

    fn write_record(&mut self, rec_len: u64) -> Result<(), PublishError> {
        if self.next_seq >= self.seq_mark {
            self.reserve_seqs()?;
        }
        let needs_new = match self.segments.back() {
            None => true,
            Some(s) => self.active.is_none() || s.len + rec_len > self.segment_bytes,
        };
        if needs_new {
            self.rotate()?;
        }
        let Some(file) = self.active.as_mut() else {
            return Err(PublishError::Spool {
                path: self.dir.clone(),
                what: "no active segment",
                source: io::Error::other("rotation failed"),
            });
        };
        let Some(seg) = self.segments.back_mut() else {
            return Err(PublishError::Spool {
                path: self.dir.clone(),
                what: "no active segment",
                source: io::Error::other("rotation failed"),
            });
        };
        if let Err(e) = file.write_all(&self.buf) {
            // Leave the file at its last good length so a partial write is not read back.
            let _ = file.set_len(seg.len);
            let _ = file.seek(SeekFrom::Start(seg.len));
            return Err(io_err(&seg.path, "appending")(e));
        }
        seg.len += rec_len;
        seg.count += 1;
        self.total_bytes += rec_len;
        self.next_seq += 1;
        self.dirty = true;
        Ok(())
    }

    /// Starts a new segment at `next_seq`; the previous one is synced and closed.
    fn rotate(&mut self) -> Result<(), PublishError> {
        if let (Some(old), Some(seg)) = (self.active.take(), self.segments.back()) {
            old.sync_data().map_err(io_err(&seg.path, "syncing"))?;
        }
        if let Some(seg) = self.segments.back() {
            if seg.count == 0 {
                let seg = self.segments.pop_back();
                if let Some(seg) = seg {
                    let _ = fs::remove_file(&seg.path);
                    self.total_bytes -= seg.len;
                }
            }
        }
        let path = segment_path(&self.dir, self.next_seq);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path, "creating segment"))?;
        file.write_all(MAGIC)
            .map_err(io_err(&path, "writing segment header"))?;
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        self.segments.push_back(Segment {
            first_seq: self.next_seq,
            count: 0,
            len: MAGIC.len() as u64,
            path,
            reports: Vec::new(),
        });
        self.total_bytes += MAGIC.len() as u64;
        self.active = Some(file);
        Ok(())
    }

    /// Deletes oldest segments until `need` more bytes fit, counting the real events lost
    /// with them once and carrying the counts of deleted reports into `unreported`.
    fn drop_oldest(&mut self, need: u64) -> Result<(), PublishError> {
        let mut lost = 0;
        while self.total_bytes + need > self.max_bytes {
            if self.segments.len() <= 1 {
                // Only the active segment is left: close it so it can go too.
                if self.segments.back().is_some_and(|s| s.count == 0) {
                    break;
                }
                self.rotate()?;
                if self.segments.len() <= 1 {
                    break;
                }
            }
            let Some(seg) = self.segments.pop_front() else {
                break;
            };
            if let Some(last) = seg.last_seq() {
                let floor = self.acked_seq.max(seg.first_seq - 1);
                let unacked = last.saturating_sub(floor);
                let (reports, carried) = seg
                    .reports
                    .iter()
                    .filter(|(seq, _)| *seq > floor)
                    .fold((0, 0), |(n, sum), (_, count)| (n + 1, sum + count));
                let real = unacked.saturating_sub(reports);
                lost += real;
                self.unreported += real + carried;
            }
            self.total_bytes -= seg.len;
            fs::remove_file(&seg.path).map_err(io_err(&seg.path, "dropping segment"))?;
        }
        if lost > 0 {
            self.lost += lost;
            log::debug!(
                "spool full ({} bytes): dropped the {lost} oldest unacknowledged events",
                self.max_bytes
            );
        }
        Ok(())
    }

    /// Appends a `SPOOL_DROP` report carrying every lost event not yet reported.
    fn append_drop_report(&mut self) -> Result<(), PublishError> {
        let count = self.unreported;
        let ts_us = i64::try_from(now_us()).unwrap_or(i64::MAX);
        let mut report = v1::Event {
            ts_us,
            sensor: self.sensor_name.clone(),
            src_ip: "0.0.0.0".into(),
            dst_ip: "0.0.0.0".into(),
            proto: String::new(),
            r#type: xtrail_proto::SPOOL_DROP_TYPE.into(),
            trail: count.to_string(),
            info: format!(
                "spool full: {count} events dropped ({} since start)",
                self.lost
            ),
            reference: "(xtrail)".into(),
            severity: v1::Severity::High as i32,
            action: v1::Action::Pass as i32,
            ..Default::default()
        };
        let rec_len = self.encode(&mut report)?;
        self.write_record(rec_len)?;
        if let Some(seg) = self.segments.back_mut() {
            seg.reports.push((report.seq, count));
        }
        self.unreported = 0;
        self.spooled += 1;
        Ok(())
    }

    /// Whether [`Inner::remove_acked`] would close or delete a segment.
    fn has_acked_segment(&self) -> bool {
        let acked = |s: &Segment| s.last_seq().is_none_or(|l| l <= self.acked_seq);
        let active_done = self.segments.back().is_some_and(|s| {
            s.last_seq().is_some_and(|l| l <= self.acked_seq) && s.len > self.segment_bytes / 4
        });
        active_done || (self.segments.len() > 1 && self.segments.front().is_some_and(acked))
    }

    fn remove_acked(&mut self) -> Result<(), PublishError> {
        // Close a fully acknowledged active segment once it is worth a new file.
        let active_done = self.segments.back().is_some_and(|s| {
            s.last_seq().is_some_and(|l| l <= self.acked_seq) && s.len > self.segment_bytes / 4
        });
        if active_done {
            self.rotate()?;
        }
        while self.segments.len() > 1 {
            let done = self
                .segments
                .front()
                .is_some_and(|s| s.last_seq().is_none_or(|l| l <= self.acked_seq));
            if !done {
                break;
            }
            if let Some(seg) = self.segments.pop_front() {
                self.total_bytes -= seg.len;
                fs::remove_file(&seg.path).map_err(io_err(&seg.path, "removing acked segment"))?;
            }
        }
        Ok(())
    }
}

/// Reads the spool in sequence order for the sender, from a given sequence number on.
///
/// Reads use positioned reads of the valid length published under the lock, so a record
/// being appended concurrently is never seen half written.
#[derive(Debug)]
pub(crate) struct SpoolReader {
    /// Next sequence number wanted.
    want: u64,
    /// The open segment: (first_seq, file, offset of the next record).
    file: Option<(u64, File, u64)>,
    chunk: Vec<u8>,
}

/// Bytes read per positioned read: at least one maximal record.
const CHUNK: u64 = (MAX_RECORD as u64) + RECORD_HEADER;

impl SpoolReader {
    /// A reader that starts at the first event with seq >= `from`.
    pub fn new(from: u64) -> Self {
        SpoolReader {
            want: from,
            file: None,
            chunk: Vec::new(),
        }
    }

    /// Up to `max_events` events and at most `max_bytes` of records (at least one record
    /// though) from where the reader is. A record's size bounds its event's encoded size in a
    /// `PublishRequest`, so the batch encodes to at most `max_bytes` plus the request's own
    /// fields.
    pub fn next_batch(
        &mut self,
        spool: &Spool,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<v1::Event>, PublishError> {
        use std::os::unix::fs::FileExt as _;

        let views = spool.views();
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut full = false;
        while out.len() < max_events && !full {
            // The segment holding `want`: the last one starting at or before it, or the first
            // one after it (what lay between was dropped).
            let idx = views
                .iter()
                .rposition(|v| v.first_seq <= self.want)
                .or_else(|| (!views.is_empty()).then_some(0));
            let Some(idx) = idx else { break };
            let view = &views[idx];
            if self
                .file
                .as_ref()
                .is_none_or(|(first, _, _)| *first != view.first_seq)
            {
                let f = File::open(&view.path).map_err(io_err(&view.path, "reading segment"))?;
                self.file = Some((view.first_seq, f, MAGIC.len() as u64));
            }
            let Some((_, file, offset)) = self.file.as_mut() else {
                break;
            };
            while out.len() < max_events && !full && *offset < view.len {
                let n = (view.len - *offset).min(CHUNK);
                self.chunk.resize(n as usize, 0);
                file.read_exact_at(&mut self.chunk, *offset)
                    .map_err(io_err(&view.path, "reading segment"))?;
                let mut slice: &[u8] = &self.chunk;
                let chunk_end = *offset + n;
                let mut progressed = false;
                while out.len() < max_events {
                    match read_record(&mut slice, *offset, chunk_end) {
                        ReadOutcome::Record(ev, n) => {
                            if ev.seq >= self.want {
                                if !out.is_empty() && bytes + n as usize > max_bytes {
                                    full = true; // left unread for the next batch
                                    break;
                                }
                                self.want = ev.seq + 1;
                                bytes += n as usize;
                                out.push(*ev);
                            }
                            *offset += n;
                            progressed = true;
                        }
                        ReadOutcome::End => break,
                        ReadOutcome::Corrupt(_) if chunk_end < view.len && progressed => {
                            break; // a record split by the chunk end: read on from it
                        }
                        ReadOutcome::Corrupt(why) => {
                            // Written by us after the open-time check: only a failing disk
                            // does this. Skip the rest of the segment rather than loop.
                            log::warn!("spool: {}: {why} while sending", view.path.display());
                            *offset = view.len;
                            break;
                        }
                    }
                }
            }
            if full || *offset < view.len {
                break; // batch full
            }
            match views.get(idx + 1) {
                Some(next) => self.want = self.want.max(next.first_seq),
                None => break,
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(i: u32) -> v1::Event {
        v1::Event {
            ts_us: i64::from(i),
            src_ip: "198.18.0.1".into(),
            dst_ip: "198.18.0.2".into(),
            r#type: "IP".into(),
            trail: format!("trail-{i}"),
            ..Default::default()
        }
    }

    fn open(dir: &Path, max_bytes: u64) -> Result<(Spool, OpenReport), PublishError> {
        Spool::open(
            dir,
            &SpoolConfig {
                max_bytes,
                sensor_name: "s".into(),
                stream_id: "sid".into(),
                stream_suffix: true,
            },
        )
    }

    fn read_all(spool: &Spool, from: u64) -> Vec<v1::Event> {
        let mut r = SpoolReader::new(from);
        let mut all = Vec::new();
        loop {
            let b = r.next_batch(spool, 7, 1 << 20).unwrap();
            if b.is_empty() {
                return all;
            }
            all.extend(b);
        }
    }

    #[test]
    fn append_read_ack_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, rep) = open(dir.path(), 1 << 20).unwrap();
        assert_eq!(rep, OpenReport::default());
        let mut seqs = Vec::new();
        for i in 0..100 {
            seqs.push(spool.append(&mut ev(i)).unwrap());
        }
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
        let all = read_all(&spool, 0);
        assert_eq!(all.len(), 100);
        assert_eq!(all[42].trail, "trail-42");
        spool.ack(seqs[49]).unwrap();
        assert_eq!(spool.pending(), 50);
        drop(spool);
        let (spool, rep) = open(dir.path(), 1 << 20).unwrap();
        assert_eq!(rep.pending, 50);
        let rest = read_all(&spool, spool.acked_seq() + 1);
        assert_eq!(rest.len(), 50);
        assert_eq!(rest[0].seq, seqs[50]);
        assert!(spool.append(&mut ev(1)).unwrap() > seqs[99]);
    }

    #[test]
    fn acked_file_lags_at_most_to_a_resend() {
        let dir = tempfile::tempdir().unwrap();
        let acked_file = || std::fs::read_to_string(dir.path().join("acked")).unwrap();
        let (spool, _) = open(dir.path(), 64 * 1024).unwrap();
        let seqs: Vec<u64> = (0..100)
            .map(|i| spool.append(&mut ev(i)).unwrap())
            .collect();
        spool.ack(seqs[9]).unwrap();
        spool.ack(seqs[19]).unwrap();
        spool.ack(seqs[29]).unwrap();
        // The first is written at once, the next wait for the interval or a sync.
        assert_eq!(acked_file(), format!("{}\n", seqs[9]));
        drop(spool); // a crash: no sync
        let (spool, rep) = open(dir.path(), 64 * 1024).unwrap();
        assert_eq!((spool.acked_seq(), rep.pending), (seqs[9], 90));
        spool.ack(seqs[19]).unwrap();
        spool.ack(seqs[29]).unwrap();
        spool.sync().unwrap();
        assert_eq!(acked_file(), format!("{}\n", seqs[29]));
        // Deleting segments writes the file first, whatever the interval.
        let more: Vec<u64> = (0..2000)
            .map(|i| spool.append(&mut ev(i)).unwrap())
            .collect();
        let last = *more.last().unwrap();
        spool.ack(last - 1).unwrap();
        assert!(acked_file().trim().parse::<u64>().unwrap() >= last - 1);
        std::thread::sleep(ACK_PERSIST_EVERY);
        spool.ack(last).unwrap();
        drop(spool);
        let (spool, rep) = open(dir.path(), 64 * 1024).unwrap();
        assert_eq!((spool.acked_seq(), rep.pending), (last, 0));
    }

    #[test]
    fn second_opener_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_spool, _) = open(dir.path(), 1 << 20).unwrap();
        assert!(matches!(
            open(dir.path(), 1 << 20),
            Err(PublishError::SpoolBusy(_))
        ));
    }

    #[test]
    fn full_spool_counts_each_lost_event_once() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = open(dir.path(), 64 * 1024).unwrap();
        let n = 20_000;
        for i in 0..n {
            spool.append(&mut ev(i)).unwrap();
        }
        assert!(spool.bytes() <= 64 * 1024, "{}", spool.bytes());
        let (spooled, lost) = spool.counters();
        let all = read_all(&spool, 0);
        let reports: Vec<_> = all
            .iter()
            .filter(|e| e.r#type == xtrail_proto::SPOOL_DROP_TYPE)
            .collect();
        // Enough drops that reports themselves were dropped and their counts carried on.
        assert!(spooled - u64::from(n) > reports.len() as u64, "{spooled}");
        let kept = all.len() - reports.len();
        let reported: u64 = reports.iter().map(|e| drop_report_count(e)).sum();
        assert_eq!(reported, lost);
        assert_eq!(kept as u64 + lost, u64::from(n));
        assert!(reports[0]
            .info
            .starts_with(&format!("spool full: {} events dropped", reports[0].trail)));
        assert_eq!(all.last().unwrap().trail, format!("trail-{}", n - 1));
        assert!(all.windows(2).all(|w| w[1].seq > w[0].seq));
        assert_eq!(all.len() as u64, spool.pending());
    }

    #[test]
    fn sequence_numbers_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = open(dir.path(), 1 << 20).unwrap();
        let id = spool.stream_id().to_string();
        assert!(id.starts_with("sid-") && id.len() == 12, "{id}");
        let mut last = 0;
        for i in 0..10 {
            last = spool.append(&mut ev(i)).unwrap();
        }
        assert_eq!(last, 10, "a new spool counts from 1");
        spool.ack(last).unwrap();
        drop(spool);
        // Everything acknowledged: the segments go on open; the count goes on.
        let (spool, rep) = open(dir.path(), 1 << 20).unwrap();
        assert_eq!(rep.pending, 0);
        assert_eq!(spool.stream_id(), id);
        let seq = spool.append(&mut ev(10)).unwrap();
        assert!(seq > last);
        last = seq;
        drop(spool);
        // Sent but never acknowledged and then lost (cut off, deleted): still not reused.
        for e in fs::read_dir(dir.path()).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "seg") || p.ends_with("acked") {
                fs::remove_file(p).unwrap();
            }
        }
        let (spool, _) = open(dir.path(), 1 << 20).unwrap();
        assert_eq!(spool.stream_id(), id);
        assert!(spool.append(&mut ev(11)).unwrap() > last);
        drop(spool);
        // The spool directory lost: its stream id goes with it.
        fs::remove_dir_all(dir.path()).unwrap();
        let (spool, _) = open(dir.path(), 1 << 20).unwrap();
        assert_ne!(spool.stream_id(), id);
        assert_eq!(spool.append(&mut ev(12)).unwrap(), 1);
    }

    #[test]
    fn batches_stay_within_the_byte_bound() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = open(dir.path(), 1 << 20).unwrap();
        for i in 0..1000 {
            spool.append(&mut ev(i)).unwrap();
        }
        let mut r = SpoolReader::new(0);
        let mut total = 0;
        loop {
            let b = r.next_batch(&spool, 10_000, 2000).unwrap();
            if b.is_empty() {
                break;
            }
            let req = v1::PublishRequest {
                sensor_id: String::new(),
                events: b,
            };
            assert!(req.encoded_len() <= 2000, "{}", req.encoded_len());
            total += req.events.len();
        }
        assert_eq!(total, 1000);
    }

    #[test]
    fn truncated_tail_keeps_good_records() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = open(dir.path(), 1 << 20).unwrap();
        for i in 0..10 {
            spool.append(&mut ev(i)).unwrap();
        }
        let seg = spool.views()[0].path.clone();
        drop(spool);
        let len = fs::metadata(&seg).unwrap().len();
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(len - 5).unwrap();
        drop(f);
        let (spool, rep) = open(dir.path(), 1 << 20).unwrap();
        assert_eq!(rep.corrupt_regions, 1);
        assert_eq!(rep.pending, 9);
        let all = read_all(&spool, 0);
        assert_eq!(all.len(), 9);
        assert_eq!(all[8].trail, "trail-8");
    }
}
