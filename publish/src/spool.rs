//! The on-disk spool: events wait here, in sequence order, until the collector acknowledges
//! them.
//!
//! Layout of the spool directory:
//! - `<first_seq>.seg`: segment files, 20-digit zero-padded first sequence number. Each starts
//!   with the 8-byte magic `XTSPOOL1`, then records `[u32 len][u32 crc32][payload]` (little
//!   endian), the payload being a protobuf `xtrail.v1.Event` whose `seq` is set. Sequence
//!   numbers in a segment are contiguous; the last segment is the one being appended to.
//! - `acked`: the highest sequence number the collector acknowledged, as decimal text,
//!   replaced atomically (write + rename).
//! - `LOCK`: held (advisory lock) while a publisher owns the spool.
//!
//! Appends go straight to the file (one `write` per event, no userspace buffer), so a killed
//! sensor loses nothing it published; `fsync` runs on the sender's timer (power-loss window
//! = the fsync interval). A record that fails its length or CRC check on open (a torn write
//! at the tail, a damaged disk block) ends its segment: the file is truncated there, the
//! loss reported, and every good record before it kept.
//!
//! Bounded: when an append would push the spool over its byte limit, the oldest segments are
//! deleted, their unacknowledged events counted as dropped, and a synthetic `SPOOL_DROP`
//! event reporting the drop is appended.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message as _;
use xtrail_proto::v1;

use crate::error::PublishError;

const MAGIC: &[u8; 8] = b"XTSPOOL1";
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

#[derive(Debug)]
struct Segment {
    first_seq: u64,
    /// Records in the segment; their seqs are `first_seq .. first_seq + count`.
    count: u64,
    /// Valid length of the file, header included.
    len: u64,
    path: PathBuf,
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
    acked_seq: u64,
    total_bytes: u64,
    dirty: bool,
    dropped: u64,
    spooled: u64,
    _lock: File,
    buf: Vec<u8>,
}

/// The spool, shared by the publishing threads (appends) and the sender (reads and acks).
#[derive(Clone, Debug)]
pub struct Spool {
    inner: Arc<Mutex<Inner>>,
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
    loop {
        match read_record(&mut r, offset, file_len) {
            ReadOutcome::End => break,
            ReadOutcome::Record(ev, n) => {
                if ev.seq != first_seq + count {
                    problem = Some("out-of-sequence record");
                    break;
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
    });
    Ok((seg, cut, report))
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, bounded to `max_bytes`. Fails if another
    /// publisher holds it.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        sensor_name: &str,
    ) -> Result<(Spool, OpenReport), PublishError> {
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

        let acked_path = dir.join("acked");
        let acked_seq = match fs::read_to_string(&acked_path) {
            Ok(text) => text.trim().parse::<u64>().unwrap_or_else(|_| {
                log::warn!(
                    "{}: unreadable, resending the whole spool",
                    acked_path.display()
                );
                0
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_err(&acked_path, "reading")(e)),
        };

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
        // Sequence numbers must never repeat, even if the spool was lost or its tail was cut
        // off: never start below the clock in microseconds.
        let next_seq = (max_seen + 1).max(now_us());
        let total_bytes = segments.iter().map(|s| s.len).sum();
        let segment_bytes = (max_bytes / 16).clamp(4096, 64 << 20);
        let inner = Inner {
            dir: dir.to_path_buf(),
            max_bytes,
            segment_bytes,
            sensor_name: sensor_name.to_string(),
            segments,
            active: None,
            next_seq,
            acked_seq,
            total_bytes,
            dirty: false,
            dropped: 0,
            spooled: 0,
            _lock: lock,
            buf: Vec::with_capacity(512),
        };
        Ok((
            Spool {
                inner: Arc::new(Mutex::new(inner)),
            },
            report,
        ))
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

    /// (events appended since open, events dropped since open).
    pub fn counters(&self) -> (u64, u64) {
        let inner = self.lock();
        (inner.spooled, inner.dropped)
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

    /// Records an acknowledgement: persists it, then deletes fully acknowledged segments.
    pub fn ack(&self, seq: u64) -> Result<(), PublishError> {
        let (dir, acked) = {
            let mut inner = self.lock();
            if seq <= inner.acked_seq {
                return Ok(());
            }
            inner.acked_seq = seq.min(inner.next_seq - 1);
            (inner.dir.clone(), inner.acked_seq)
        };
        let tmp = dir.join("acked.tmp");
        let path = dir.join("acked");
        fs::write(&tmp, format!("{acked}\n")).map_err(io_err(&tmp, "writing"))?;
        fs::rename(&tmp, &path).map_err(io_err(&path, "replacing"))?;
        let mut inner = self.lock();
        inner.remove_acked()
    }

    /// Flushes appended records to stable storage if anything was appended since last time.
    pub fn sync(&self) -> Result<(), PublishError> {
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
        let rec_len = self.buf.len() as u64;
        if self.total_bytes + rec_len > self.max_bytes {
            let dropped = self.drop_oldest(rec_len + 512)?;
            if dropped > 0 {
                self.append_drop_report(dropped)?;
                // Re-encode: the drop report reused the buffer and took this sequence number.
                return self.append(event);
            }
        }
        let len32 = u32::try_from(len).map_err(|_| PublishError::EventTooLarge(len))?;
        let crc = crc32fast::hash(&self.buf[8..]);
        self.buf[0..4].copy_from_slice(&len32.to_le_bytes());
        self.buf[4..8].copy_from_slice(&crc.to_le_bytes());
        self.write_record(rec_len)?;
        self.spooled += 1;
        Ok(event.seq)
    }

    fn write_record(&mut self, rec_len: u64) -> Result<(), PublishError> {
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
        });
        self.total_bytes += MAGIC.len() as u64;
        self.active = Some(file);
        Ok(())
    }

    /// Deletes oldest segments until `need` more bytes fit; returns how many unacknowledged
    /// events went with them.
    fn drop_oldest(&mut self, need: u64) -> Result<u64, PublishError> {
        let mut dropped = 0;
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
                dropped += last.saturating_sub(self.acked_seq.max(seg.first_seq - 1));
            }
            self.total_bytes -= seg.len;
            fs::remove_file(&seg.path).map_err(io_err(&seg.path, "dropping segment"))?;
        }
        if dropped > 0 {
            self.dropped += dropped;
            log::warn!(
                "spool full ({} bytes): dropped the {dropped} oldest unacknowledged events",
                self.max_bytes
            );
        }
        Ok(dropped)
    }

    fn append_drop_report(&mut self, dropped: u64) -> Result<(), PublishError> {
        let ts_us = i64::try_from(now_us()).unwrap_or(i64::MAX);
        let mut report = v1::Event {
            ts_us,
            sensor: self.sensor_name.clone(),
            src_ip: "0.0.0.0".into(),
            dst_ip: "0.0.0.0".into(),
            proto: String::new(),
            r#type: xtrail_proto::SPOOL_DROP_TYPE.into(),
            trail: "spool".into(),
            info: format!(
                "spool full: {dropped} unacknowledged events dropped ({} in total since start)",
                self.dropped
            ),
            reference: "(xtrail)".into(),
            severity: v1::Severity::High as i32,
            action: v1::Action::Pass as i32,
            ..Default::default()
        };
        report.seq = self.next_seq;
        self.buf.clear();
        self.buf.extend_from_slice(&[0u8; 8]);
        report
            .encode(&mut self.buf)
            .map_err(|_| PublishError::EventTooLarge(usize::MAX))?;
        let len = u32::try_from(self.buf.len() - 8).unwrap_or(u32::MAX);
        let crc = crc32fast::hash(&self.buf[8..]);
        self.buf[0..4].copy_from_slice(&len.to_le_bytes());
        self.buf[4..8].copy_from_slice(&crc.to_le_bytes());
        let rec_len = self.buf.len() as u64;
        self.write_record(rec_len)?;
        self.spooled += 1;
        Ok(())
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

    /// Up to `max_events` events (and about `max_bytes`) from where the reader is.
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
        while out.len() < max_events && bytes < max_bytes {
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
            while out.len() < max_events && bytes < max_bytes && *offset < view.len {
                let n = (view.len - *offset).min(CHUNK);
                self.chunk.resize(n as usize, 0);
                file.read_exact_at(&mut self.chunk, *offset)
                    .map_err(io_err(&view.path, "reading segment"))?;
                let mut slice: &[u8] = &self.chunk;
                let chunk_end = *offset + n;
                let mut progressed = false;
                while out.len() < max_events && bytes < max_bytes {
                    match read_record(&mut slice, *offset, chunk_end) {
                        ReadOutcome::Record(ev, n) => {
                            *offset += n;
                            progressed = true;
                            if ev.seq >= self.want {
                                self.want = ev.seq + 1;
                                bytes += n as usize;
                                out.push(*ev);
                            }
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
            if *offset < view.len {
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
        let (spool, rep) = Spool::open(dir.path(), 1 << 20, "s").unwrap();
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
        let (spool, rep) = Spool::open(dir.path(), 1 << 20, "s").unwrap();
        assert_eq!(rep.pending, 50);
        let rest = read_all(&spool, spool.acked_seq() + 1);
        assert_eq!(rest.len(), 50);
        assert_eq!(rest[0].seq, seqs[50]);
        assert!(spool.append(&mut ev(1)).unwrap() > seqs[99]);
    }

    #[test]
    fn second_opener_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_spool, _) = Spool::open(dir.path(), 1 << 20, "s").unwrap();
        assert!(matches!(
            Spool::open(dir.path(), 1 << 20, "s"),
            Err(PublishError::SpoolBusy(_))
        ));
    }

    #[test]
    fn full_spool_drops_oldest_and_reports() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path(), 64 * 1024, "s").unwrap();
        for i in 0..5000 {
            spool.append(&mut ev(i)).unwrap();
        }
        assert!(spool.bytes() <= 64 * 1024, "{}", spool.bytes());
        let (_, dropped) = spool.counters();
        assert!(dropped > 0);
        let all = read_all(&spool, 0);
        assert!(all
            .iter()
            .any(|e| e.r#type == xtrail_proto::SPOOL_DROP_TYPE));
        assert_eq!(all.last().unwrap().trail, "trail-4999");
        assert!(all.windows(2).all(|w| w[1].seq > w[0].seq));
        assert_eq!(all.len() as u64, spool.pending());
    }

    #[test]
    fn truncated_tail_keeps_good_records() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path(), 1 << 20, "s").unwrap();
        for i in 0..10 {
            spool.append(&mut ev(i)).unwrap();
        }
        let seg = spool.views()[0].path.clone();
        drop(spool);
        let len = fs::metadata(&seg).unwrap().len();
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(len - 5).unwrap();
        drop(f);
        let (spool, rep) = Spool::open(dir.path(), 1 << 20, "s").unwrap();
        assert_eq!(rep.corrupt_regions, 1);
        assert_eq!(rep.pending, 9);
        let all = read_all(&spool, 0);
        assert_eq!(all.len(), 9);
        assert_eq!(all[8].trail, "trail-8");
    }
}
