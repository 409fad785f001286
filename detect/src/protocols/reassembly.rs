//! Reassembly of a TLS connection's first flight: a ClientHello that spans TCP segments.
//!
//! Browsers with post-quantum hybrid key shares (X25519MLKEM768: 1,216 + 32 bytes of key
//! share) send ClientHellos of about 1.8-2 KB: two TCP segments, and with the extension order
//! randomised the `server_name` often lands in the second. [`HelloReassembler`] buffers such a
//! ClientHello per flow (source, source port, destination, destination port) until its first
//! TLS record is complete, then hands the bytes back for parsing. Only the bytes the parse
//! still reads are kept (`tls::client_hello_tail`): an extension whose header is in the
//! first segment and is not `server_name` is skipped, its body unread (a key share that fills
//! the segment), so the kept bytes start at the first extension whose header the segment
//! lacks (or at `server_name`); a rest that arrives in one segment is parsed where it lies
//! ([`Flight::Parsed`]).
//!
//! What it does not do: reorder (a segment that leaves a hole is dropped and counted; a
//! retransmission that fills the hole is taken), follow records after the first, or look at
//! the server's direction. Everything is bounded and counted when a bound is hit:
//! [`ReassemblyConfig::max_bytes`] per flow (the ClientHello is parsed as far as the bytes
//! go), [`ReassemblyConfig::max_flows`] and [`ReassemblyConfig::max_total_bytes`] (the oldest
//! flow is evicted), [`ReassemblyConfig::timeout_us`] (a flow older than this is dropped).
//! Buffers are pooled: a busy sensor does not allocate per reassembled ClientHello.
//!
//! The XDP program's side (inline mode): it remembers flows whose ClientHello record is longer
//! than the segment (`TLS_FLOWS`, buckets of four slots) and copies their next segments to
//! userspace too, until the record is complete, with the same byte and time bounds.
//!
//! [`CryptoReassembler`] does the same for QUIC: a ClientHello split over several client
//! Initial packets (CRYPTO frames at offsets, in any order) is joined per connection ID.
//!
//! Tests: the unit tests below; in `sensor-user/tests/`, `replay_semantics.rs` (pcaps through
//! `xtrail-sensor replay`), `xdp_program.rs` (the kernel's hand-over, BPF_PROG_TEST_RUN) and
//! `veth_e2e.rs` (a live inline sensor; a real TCP socket sending a Chrome-sized ClientHello
//! in two writes, the SNI in the second; two QUIC Initials).

use std::collections::VecDeque;
use std::net::IpAddr;

use hashbrown::HashMap;

use crate::protocols::{quic, tls};

/// Bounds of a [`HelloReassembler`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReassemblyConfig {
    /// Bytes of a record followed per flow; a longer record is parsed as far as this goes.
    pub max_bytes: usize,
    /// Flows buffered at once; the oldest is evicted for a new one.
    pub max_flows: usize,
    /// Bytes buffered over all flows; the oldest flows are evicted to stay under it.
    pub max_total_bytes: usize,
    /// Microseconds (packet time) a flow may wait for its next segment.
    pub timeout_us: i64,
}

/// Bytes a flow may buffer (a TLS record carries at most 16 KiB of plaintext).
pub const MAX_HELLO_BYTES: usize = 16 * 1024;

impl Default for ReassemblyConfig {
    fn default() -> Self {
        ReassemblyConfig {
            max_bytes: MAX_HELLO_BYTES,
            max_flows: 65_536,
            max_total_bytes: 64 << 20,
            timeout_us: 10_000_000,
        }
    }
}

/// Counters of a [`HelloReassembler`] or [`CryptoReassembler`].
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReassemblyStats {
    /// ClientHellos longer than their first segment: flows buffered.
    pub started: u64,
    /// Buffered ClientHellos completed and handed back.
    pub completed: u64,
    /// ClientHellos cut at [`ReassemblyConfig::max_bytes`] (handed back as far as they go).
    pub byte_limit: u64,
    /// Flows evicted, oldest first, for [`ReassemblyConfig::max_flows`] or
    /// [`ReassemblyConfig::max_total_bytes`].
    pub evicted: u64,
    /// Flows dropped after [`ReassemblyConfig::timeout_us`] without completing.
    pub timed_out: u64,
    /// Segments that left a hole (lost or reordered) and were dropped.
    pub out_of_order: u64,
}

/// One direction of a TCP connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: IpAddr,
    pub src_port: u16,
    pub dst: IpAddr,
    pub dst_port: u16,
}

/// Bits of a key's slot in [`Flows::gate`]: 64 KiB of counters, few of them set even when
/// thousands of hellos wait (a flow's next segment never came).
const GATE_BITS: u32 = 16;

/// A cheap hash of a flow table's key: its slot in [`Flows::gate`].
trait Gated {
    fn gate(&self) -> usize;
}

impl Gated for FlowKey {
    /// The ports and the addresses' low 32 bits, one multiply.
    #[inline]
    fn gate(&self) -> usize {
        let low = |a: IpAddr| match a {
            IpAddr::V4(a) => u32::from(a),
            IpAddr::V6(a) => (a.to_bits() & 0xffff_ffff) as u32,
        };
        let ports = u32::from(self.src_port) << 16 | u32::from(self.dst_port);
        let x = low(self.src) ^ low(self.dst).rotate_left(16) ^ ports;
        (x.wrapping_mul(0x9e37_79b1) >> (32 - GATE_BITS)) as usize
    }
}

/// What to do with a TCP segment.
#[derive(Debug, PartialEq, Eq)]
pub enum Flight<'a> {
    /// Not part of a buffered ClientHello: parse the segment as usual.
    Untracked,
    /// Buffered: nothing to parse yet.
    Buffered,
    /// A ClientHello to parse now: the segment itself, or a flow's reassembled bytes.
    Ready(&'a [u8]),
    /// A TCP ClientHello parsed here, from its `tls::HelloTail` on: its first segment
    /// already named the server, or its rest came (parsed where it lies when it came in one
    /// segment).
    Parsed(Result<tls::ClientHello<'a>, tls::TlsError>),
}

struct Partial {
    /// TCP: sequence number of the first byte.
    start_seq: u32,
    /// TCP: bytes of the record received in order so far.
    received: usize,
    /// TCP: where the parse goes on, when the first segment said (`buf` then holds the
    /// record from its `next` on; else from its start).
    tail: Option<tls::HelloTail>,
    /// TCP: the record is longer than `need` (cut at `max_bytes`).
    cut: bool,
    /// Bytes wanted: the first record (TCP, header included) or handshake message (QUIC), at
    /// most `max_bytes`.
    need: usize,
    /// Bytes accounted against [`ReassemblyConfig::max_total_bytes`] (`need` at the start).
    reserved: usize,
    /// Packet time of the first segment.
    started_us: i64,
    /// Identifies this flow's entry in the age queue.
    id: u64,
    buf: Vec<u8>,
    /// QUIC: the byte ranges of `buf` received so far (CRYPTO frames come at offsets, in
    /// any order), at most [`MAX_RANGES`].
    ranges: Vec<(usize, usize)>,
}

/// Disjoint ranges a QUIC flow may hold before it is given up.
const MAX_RANGES: usize = 32;

/// Buffers kept for reuse.
const POOL: usize = 64;

/// The bounded flow table both reassemblers share: entries, their age order, the byte total
/// and a buffer pool.
struct Flows<K> {
    config: ReassemblyConfig,
    map: HashMap<K, Partial>,
    /// How many of the flows held have each [`Gated::gate`] slot (at least; a count that
    /// reached 255 stays there): a key whose slot counts none is not held, known without
    /// hashing it for the map (nearly every data segment while other flows' hellos wait).
    gate: Box<[u8]>,
    /// Flows oldest first, as (key, id); entries of flows already gone are skipped.
    ages: VecDeque<(K, u64)>,
    next_id: u64,
    total_bytes: usize,
    pool: Vec<Vec<u8>>,
    /// The last completed flow's bytes (what a `Ready` or a `Rest` borrows).
    done: Vec<u8>,
    stats: ReassemblyStats,
}

impl<K: Copy + Eq + std::hash::Hash + Gated> Flows<K> {
    fn new(config: ReassemblyConfig) -> Self {
        Flows {
            config,
            map: HashMap::new(),
            gate: vec![0; 1 << GATE_BITS].into_boxed_slice(),
            ages: VecDeque::new(),
            next_id: 0,
            total_bytes: 0,
            pool: Vec::new(),
            done: Vec::new(),
            stats: ReassemblyStats::default(),
        }
    }

    /// A new flow wanting `need` bytes, after making room (expired, then oldest flows go).
    fn start(&mut self, key: K, ts_us: i64, need: usize) -> Option<&mut Partial> {
        if self.config.max_flows == 0 || need > self.config.max_total_bytes {
            return None;
        }
        self.expire(ts_us);
        while self.map.len() >= self.config.max_flows
            || self.total_bytes + need > self.config.max_total_bytes
        {
            if !self.evict_oldest() {
                break;
            }
        }
        let mut buf = self.pool.pop().unwrap_or_default();
        buf.clear();
        // A flow's whole `need` is accounted from the start: the total stays a hard bound.
        self.total_bytes += need;
        let id = self.next_id;
        self.next_id += 1;
        self.ages.push_back((key, id));
        // Entries of completed flows stay in the queue until they reach its front; keep the
        // queue proportional to the live flows.
        if self.ages.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.ages
                .retain(|(k, id)| map.get(k).is_some_and(|p| p.id == *id));
        }
        self.stats.started += 1;
        let partial = Partial {
            start_seq: 0,
            received: 0,
            tail: None,
            cut: false,
            need,
            reserved: need,
            started_us: ts_us,
            id,
            buf,
            ranges: Vec::new(),
        };
        // The callers start only a flow they do not hold (were it held, its gate count would
        // only be too high: the map is still looked up).
        debug_assert!(!self.map.contains_key(&key));
        if let Some(n) = self.gate.get_mut(key.gate()) {
            *n = n.saturating_add(1);
        }
        Some(self.map.entry(key).insert(partial).into_mut())
    }

    /// Whether `key`'s flow may be held (false: it is not).
    #[inline]
    fn may_hold(&self, key: &K) -> bool {
        self.gate.get(key.gate()).is_some_and(|&n| n > 0)
    }

    /// Drops flows older than the timeout, oldest first.
    fn expire(&mut self, now_us: i64) {
        while let Some(&(key, id)) = self.ages.front() {
            match self.map.get(&key) {
                Some(p) if p.id == id => {
                    if now_us.saturating_sub(p.started_us) <= self.config.timeout_us {
                        return;
                    }
                    self.stats.timed_out += 1;
                    self.remove(&key);
                }
                _ => {}
            }
            self.ages.pop_front();
        }
    }

    /// Whether `key`'s flow is past the timeout (then it is dropped and counted).
    fn timed_out(&mut self, key: &K, ts_us: i64) -> bool {
        let late = self
            .map
            .get(key)
            .is_some_and(|p| ts_us.saturating_sub(p.started_us) > self.config.timeout_us);
        if late {
            self.stats.timed_out += 1;
            self.remove(key);
        }
        late
    }

    /// Evicts the oldest live flow; false when there is none.
    fn evict_oldest(&mut self) -> bool {
        while let Some((key, id)) = self.ages.pop_front() {
            if self.map.get(&key).is_some_and(|p| p.id == id) {
                self.remove(&key);
                self.stats.evicted += 1;
                return true;
            }
        }
        false
    }

    fn remove(&mut self, key: &K) {
        if let Some(p) = self.map.remove(key) {
            // A full count no longer says how many: it stays (the slot is then always
            // looked up in the map).
            if let Some(n) = self.gate.get_mut(key.gate()).filter(|n| **n != u8::MAX) {
                *n = n.saturating_sub(1);
            }
            self.total_bytes -= p.reserved;
            self.recycle(p.buf);
        }
    }

    /// Completes `key`'s flow: its bytes move to `done` (a QUIC flow's cut to `need`), the
    /// flow goes.
    fn complete(&mut self, key: &K) -> &[u8] {
        let mut buf = match self.map.get_mut(key) {
            Some(p) => {
                let mut b = std::mem::take(&mut p.buf);
                b.truncate(p.need);
                b
            }
            None => Vec::new(),
        };
        self.remove(key);
        std::mem::swap(&mut self.done, &mut buf);
        self.recycle(buf);
        self.stats.completed += 1;
        &self.done
    }

    fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.pool.len() < POOL && buf.capacity() > 0 {
            buf.clear();
            self.pool.push(buf);
        }
    }
}

/// Buffers TCP ClientHellos that span segments; see the module documentation.
pub struct HelloReassembler {
    flows: Flows<FlowKey>,
}

impl std::fmt::Debug for HelloReassembler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HelloReassembler")
            .field("config", &self.flows.config)
            .field("flows", &self.flows.map.len())
            .field("stats", &self.flows.stats)
            .finish_non_exhaustive()
    }
}

impl Default for HelloReassembler {
    fn default() -> Self {
        HelloReassembler::new(ReassemblyConfig::default())
    }
}

impl HelloReassembler {
    /// An empty reassembler with the given bounds.
    pub fn new(config: ReassemblyConfig) -> Self {
        HelloReassembler {
            flows: Flows::new(config),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> &ReassemblyStats {
        &self.flows.stats
    }

    /// Flows buffered now.
    pub fn flows(&self) -> usize {
        self.flows.map.len()
    }

    /// Bytes reserved by the buffered flows now (each flow counts its whole record).
    pub fn buffered_bytes(&self) -> usize {
        self.flows.total_bytes
    }

    /// Takes one TCP segment with payload (not a SYN) at packet time `ts_us`.
    pub fn on_segment<'a>(
        &'a mut self,
        key: FlowKey,
        ts_us: i64,
        seq: u32,
        payload: &'a [u8],
    ) -> Flight<'a> {
        let tracked = !self.flows.map.is_empty()
            && self.flows.may_hold(&key)
            && self.flows.map.contains_key(&key);
        if tracked && !self.flows.timed_out(&key, ts_us) {
            return self.continuation(key, seq, payload);
        }
        if !tls::looks_like_client_hello(payload) {
            return Flight::Untracked;
        }
        let record_len = usize::from(u16::from_be_bytes([payload[3], payload[4]]));
        let need = (5 + record_len).min(self.flows.config.max_bytes);
        // Whole in this segment: nothing to wait for.
        if payload.len() >= need {
            return Flight::Ready(payload);
        }
        // Where the parse goes on: only the bytes from there are kept (none of a key share
        // that fills the segment).
        let tail = tls::client_hello_tail(payload, need);
        // The server name already in this segment: nothing to wait for either. One walk of
        // the extensions: the parse goes on from the tail. (Without a tail the segment does
        // not reach the extensions, so it names no server.)
        if let Some((t, rest)) = tail.and_then(|t| Some((t, payload.get(t.next()..)?))) {
            let hello = tls::resume_client_hello(rest, t);
            if matches!(hello, Ok(h) if h.sni.is_some()) {
                return Flight::Parsed(hello);
            }
        }
        // The whole `need` stays reserved against `max_total_bytes`: the bound is on what a
        // flow may come to hold, whatever it keeps.
        match self.flows.start(key, ts_us, need) {
            Some(p) => {
                p.start_seq = seq;
                p.received = payload.len();
                p.tail = tail;
                p.cut = 5 + record_len > need;
                let keep = tail.map_or(0, |t| t.next());
                p.buf
                    .extend_from_slice(payload.get(keep..).unwrap_or_default());
                Flight::Buffered
            }
            None => Flight::Ready(payload),
        }
    }

    fn continuation<'a>(&'a mut self, key: FlowKey, seq: u32, payload: &'a [u8]) -> Flight<'a> {
        let Some(p) = self.flows.map.get_mut(&key) else {
            return Flight::Untracked;
        };
        let offset = seq.wrapping_sub(p.start_seq) as usize;
        if offset > p.received {
            // A hole: the segment before this one is missing (lost or reordered).
            self.flows.stats.out_of_order += 1;
            return Flight::Buffered;
        }
        // Retransmitted bytes are skipped; only what extends the record is taken, and of
        // that only what the parse reads (from the tail's `next`).
        let keep = p.tail.map_or(0, |t| t.next());
        let end = offset.saturating_add(payload.len()).min(p.need);
        let from = p.received.max(keep);
        if end <= p.received {
            return Flight::Buffered;
        }
        p.received = end;
        let fresh = payload
            .get(from.saturating_sub(offset)..end - offset)
            .unwrap_or_default();
        if p.received < p.need {
            p.buf.extend_from_slice(fresh);
            return Flight::Buffered;
        }
        if p.cut {
            self.flows.stats.byte_limit += 1;
        }
        match p.tail {
            // The rest all in this segment: parsed where it lies.
            Some(tail) if p.buf.is_empty() => {
                self.flows.stats.completed += 1;
                self.flows.remove(&key);
                Flight::Parsed(tls::resume_client_hello(fresh, tail))
            }
            Some(tail) => {
                p.buf.extend_from_slice(fresh);
                Flight::Parsed(tls::resume_client_hello(self.flows.complete(&key), tail))
            }
            None => {
                p.buf.extend_from_slice(fresh);
                Flight::Ready(self.flows.complete(&key))
            }
        }
    }
}

/// One QUIC connection attempt: the datagrams' addresses and the client's Destination
/// Connection ID (the same in every Initial until the server answers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct QuicKey {
    flow: FlowKey,
    dcid: [u8; 20],
    dcid_len: u8,
}

impl Gated for QuicKey {
    #[inline]
    fn gate(&self) -> usize {
        self.flow.gate()
    }
}

/// Joins the CRYPTO frames of a QUIC connection's client Initial packets (at their offsets,
/// in any order) until the ClientHello is complete: with a post-quantum key share it no
/// longer fits one Initial. Same bounds as [`HelloReassembler`]; a flow is given up after
/// 32 disjoint pieces (counted as `out_of_order`).
pub struct CryptoReassembler {
    flows: Flows<QuicKey>,
}

impl std::fmt::Debug for CryptoReassembler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CryptoReassembler")
            .field("flows", &self.flows.map.len())
            .field("stats", &self.flows.stats)
            .finish_non_exhaustive()
    }
}

impl Default for CryptoReassembler {
    fn default() -> Self {
        CryptoReassembler::new(ReassemblyConfig::default())
    }
}

impl CryptoReassembler {
    /// An empty reassembler with the given bounds.
    pub fn new(config: ReassemblyConfig) -> Self {
        CryptoReassembler {
            flows: Flows::new(config),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> &ReassemblyStats {
        &self.flows.stats
    }

    /// Flows buffered now.
    pub fn flows(&self) -> usize {
        self.flows.map.len()
    }

    /// Takes a client Initial datagram whose ClientHello did not name a server on its own:
    /// [`Flight::Ready`] with the whole ClientHello handshake message once every piece
    /// arrived.
    pub fn on_initial(&mut self, flow: FlowKey, ts_us: i64, datagram: &[u8]) -> Flight<'_> {
        let Ok((dcid, frames)) = quic::decrypt_initial(datagram) else {
            return Flight::Untracked;
        };
        let pieces = quic::crypto_pieces(&frames);
        if pieces.is_empty() || dcid.len() > 20 {
            return Flight::Untracked;
        }
        let mut key = QuicKey {
            flow,
            dcid: [0; 20],
            dcid_len: dcid.len() as u8,
        };
        key.dcid[..dcid.len()].copy_from_slice(dcid);
        let max_bytes = self.flows.config.max_bytes;
        let held = self.flows.may_hold(&key) && self.flows.map.contains_key(&key);
        let fresh = !held || self.flows.timed_out(&key, ts_us);
        if fresh && self.flows.start(key, ts_us, max_bytes).is_none() {
            return Flight::Untracked;
        }
        let Some(p) = self.flows.map.get_mut(&key) else {
            return Flight::Untracked;
        };
        for (offset, data) in pieces {
            let end = offset.saturating_add(data.len()).min(max_bytes);
            if offset >= end {
                continue;
            }
            if p.buf.len() < end {
                p.buf.resize(end, 0);
            }
            p.buf[offset..end].copy_from_slice(&data[..end - offset]);
            p.ranges.push((offset, end));
        }
        // Merge the ranges; the prefix from 0 is what can be parsed.
        p.ranges.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(p.ranges.len());
        for &(a, b) in &p.ranges {
            match merged.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        p.ranges = merged;
        let prefix = match p.ranges.first() {
            Some(&(0, end)) => end,
            _ => 0,
        };
        if prefix >= 4 {
            let hs_len =
                usize::from(p.buf[1]) << 16 | usize::from(p.buf[2]) << 8 | usize::from(p.buf[3]);
            p.need = (4 + hs_len).min(max_bytes);
            if p.buf.first() != Some(&1) {
                // Not a ClientHello: nothing to wait for.
                self.flows.remove(&key);
                return Flight::Untracked;
            }
            if prefix >= p.need {
                if 4 + hs_len > max_bytes {
                    self.flows.stats.byte_limit += 1;
                }
                return Flight::Ready(self.flows.complete(&key));
            }
        }
        if p.ranges.len() > MAX_RANGES {
            self.flows.stats.out_of_order += 1;
            self.flows.remove(&key);
            return Flight::Untracked;
        }
        Flight::Buffered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> FlowKey {
        FlowKey {
            src: "198.18.0.2".parse().unwrap(),
            src_port: port,
            dst: "198.18.0.1".parse().unwrap(),
            dst_port: 443,
        }
    }

    /// A ClientHello record of about `size` bytes whose SNI is the last extension.
    fn big_hello(sni: &str, size: usize) -> Vec<u8> {
        let mut rec = tls::client_hello_record(sni);
        // Insert a padding extension (21) before server_name, keeping the lengths right.
        let pad = size.saturating_sub(rec.len() + 4);
        let ext_at = 5 + 4 + 2 + 32 + 1 + 6 + 2; // record, hs header, version, random, sid, suites, comp
        let mut ext = vec![0, 21];
        ext.extend_from_slice(&(pad as u16).to_be_bytes());
        ext.extend(std::iter::repeat_n(0u8, pad));
        let grow = ext.len();
        rec.splice(ext_at + 2..ext_at + 2, ext);
        let ext_len = u16::from_be_bytes([rec[ext_at], rec[ext_at + 1]]) as usize + grow;
        rec[ext_at..ext_at + 2].copy_from_slice(&(ext_len as u16).to_be_bytes());
        let hs_len = rec.len() - 9;
        rec[6..9].copy_from_slice(&(hs_len as u32).to_be_bytes()[1..]);
        let rec_len = rec.len() - 5;
        rec[3..5].copy_from_slice(&(rec_len as u16).to_be_bytes());
        rec
    }

    fn sni(bytes: &[u8]) -> Option<String> {
        tls::parse_client_hello(bytes)
            .ok()
            .and_then(|h| h.sni.map(str::to_owned))
    }

    /// What a TCP flight hands back, parsed (`None`: nothing yet).
    fn parsed(f: Flight<'_>) -> Option<Result<tls::ClientHello<'_>, tls::TlsError>> {
        match f {
            Flight::Ready(b) => Some(tls::parse_client_hello(b)),
            Flight::Parsed(h) => Some(h),
            Flight::Buffered | Flight::Untracked => None,
        }
    }

    /// The record's server name as the flight hands it back.
    fn named(f: Flight<'_>) -> Option<String> {
        parsed(f).and_then(|h| h.ok()?.sni.map(str::to_owned))
    }

    /// The gate counts exactly the flows held, each in its key's slot.
    fn assert_gate_counts_the_flows<K: Copy + Eq + std::hash::Hash + Gated>(f: &Flows<K>) {
        let counted: u64 = f.gate.iter().map(|&n| u64::from(n)).sum();
        assert_eq!(counted, f.map.len() as u64);
        assert!(f.map.keys().all(|k| f.may_hold(k)));
    }

    /// A key whose every value has gate slot 0.
    #[derive(Clone, Copy, PartialEq, Eq, Hash)]
    struct SlotZero(u32);

    impl Gated for SlotZero {
        fn gate(&self) -> usize {
            0
        }
    }

    #[test]
    fn a_full_gate_count_stays_full() {
        let mut f = Flows::new(ReassemblyConfig::default());
        for i in 0..300 {
            assert!(f.start(SlotZero(i), 0, 100).is_some());
        }
        assert_eq!(f.gate[0], u8::MAX);
        for i in 0..300 {
            assert!(f.may_hold(&SlotZero(i)));
            f.remove(&SlotZero(i));
        }
        // How many were left when the count saturated is not known: the slot stays looked up.
        assert!(f.map.is_empty());
        assert_eq!(f.gate[0], u8::MAX);
        assert!(f.may_hold(&SlotZero(0)));
        assert_eq!(f.total_bytes, 0);
    }

    #[test]
    fn flows_sharing_a_gate_slot_are_told_apart() {
        let h = big_hello("split.example", 1900);
        let first = key(1);
        let twin = (1..u32::MAX)
            .map(|i| FlowKey {
                src: IpAddr::from(0xc612_0000u32.wrapping_add(i).to_be_bytes()),
                ..first
            })
            .find(|k| *k != first && k.gate() == first.gate())
            .expect("another key in the same slot");
        let mut r = HelloReassembler::default();
        assert_eq!(r.on_segment(first, 0, 0, &h[..1000]), Flight::Buffered);
        assert_eq!(r.on_segment(twin, 0, 0, &h[..1000]), Flight::Buffered);
        assert_gate_counts_the_flows(&r.flows);
        let whole = Some(tls::parse_client_hello(&h));
        assert_eq!(parsed(r.on_segment(first, 1, 1000, &h[1000..])), whole);
        // The slot still counts the twin: its continuation is found.
        assert_eq!(parsed(r.on_segment(twin, 1, 1000, &h[1000..])), whole);
        assert_eq!(r.flows(), 0);
        assert!(r.flows.gate.iter().all(|&n| n == 0));
        // A data segment of a flow never held: untracked.
        assert_eq!(r.on_segment(first, 2, 1000, &h[1000..]), Flight::Untracked);
    }

    #[test]
    fn the_test_hello_is_split_where_expected() {
        let h = big_hello("split.example", 1900);
        assert_eq!(h.len(), 1900);
        assert_eq!(sni(&h).as_deref(), Some("split.example"));
        assert_eq!(sni(&h[..1400]), None);
    }

    #[test]
    fn two_segments_are_joined() {
        let h = big_hello("split.example", 1900);
        let mut r = HelloReassembler::default();
        assert_eq!(r.on_segment(key(1), 0, 1000, &h[..1400]), Flight::Buffered);
        assert_eq!(
            named(r.on_segment(key(1), 10, 2400, &h[1400..])).as_deref(),
            Some("split.example")
        );
        assert_eq!(r.flows(), 0);
        assert_eq!(r.buffered_bytes(), 0);
        assert_eq!((r.stats().started, r.stats().completed), (1, 1));
        // Later segments of the connection are not ours.
        assert_eq!(
            r.on_segment(key(1), 20, 2900, b"\x17\x03\x03"),
            Flight::Untracked
        );
    }

    #[test]
    fn a_whole_hello_or_an_early_sni_is_not_buffered() {
        let small = tls::client_hello_record("small.example");
        let mut r = HelloReassembler::default();
        assert_eq!(
            r.on_segment(key(1), 0, 1, &small),
            Flight::Ready(&small[..])
        );
        // SNI first, key shares after: the first segment already names the server.
        let mut early = tls::client_hello_record("early.example");
        let len = early.len() + 1000;
        early[3..5].copy_from_slice(&((len - 5) as u16).to_be_bytes());
        assert_eq!(
            named(r.on_segment(key(2), 0, 1, &early)).as_deref(),
            Some("early.example")
        );
        assert_eq!(
            r.on_segment(key(3), 0, 1, b"GET / HTTP/1.1\r\n"),
            Flight::Untracked
        );
        assert_eq!(r.stats().started, 0);
    }

    #[test]
    fn retransmissions_overlap_and_holes_wait() {
        let h = big_hello("split.example", 1900);
        let mut r = HelloReassembler::default();
        let s = 7u32.wrapping_sub(100); // across the sequence wrap
        assert_eq!(r.on_segment(key(1), 0, s, &h[..600]), Flight::Buffered);
        // A hole: dropped and counted, the flow stays.
        assert_eq!(
            r.on_segment(key(1), 1, s.wrapping_add(1200), &h[1200..]),
            Flight::Buffered
        );
        assert_eq!(r.stats().out_of_order, 1);
        // A retransmission of the first segment with more data.
        assert_eq!(r.on_segment(key(1), 2, s, &h[..1200]), Flight::Buffered);
        assert_eq!(
            named(r.on_segment(key(1), 3, s.wrapping_add(1200), &h[1200..])).as_deref(),
            Some("split.example")
        );
    }

    #[test]
    fn bounds_are_enforced_and_counted() {
        let h = big_hello("split.example", 1900);
        let cfg = ReassemblyConfig {
            max_bytes: 1500,
            max_flows: 4,
            max_total_bytes: 1 << 20,
            timeout_us: 1_000,
        };
        let mut r = HelloReassembler::new(cfg);
        // Byte bound: handed back at 1500 bytes, counted.
        r.on_segment(key(1), 0, 0, &h[..1000]);
        assert_eq!(
            parsed(r.on_segment(key(1), 1, 1000, &h[1000..])),
            Some(tls::parse_client_hello(&h[..1500]))
        );
        assert_eq!(r.stats().byte_limit, 1);
        // Flow bound: the oldest goes.
        for port in 10..20 {
            assert_eq!(r.on_segment(key(port), 2, 0, &h[..1000]), Flight::Buffered);
        }
        assert_eq!(r.flows(), 4);
        assert_eq!(r.stats().evicted, 6);
        assert_eq!(
            r.on_segment(key(10), 3, 1000, &h[1000..]),
            Flight::Untracked
        );
        // Time bound: a late continuation is dropped; a new flow expires the old ones.
        assert_eq!(
            r.on_segment(key(19), 5_000, 1000, &h[1000..]),
            Flight::Untracked
        );
        assert_eq!(r.stats().timed_out, 1);
        r.on_segment(key(30), 5_000, 0, &h[..1000]);
        assert_eq!(r.flows(), 1);
        assert_eq!(r.stats().timed_out, 4);
        assert_gate_counts_the_flows(&r.flows);
    }

    /// Every record split in two at every point, and in three at a few, answers as the whole
    /// record; the key share that fills a browser's first segment is not kept.
    #[test]
    fn split_hellos_answer_as_whole_ones() {
        let browser = tls::browser_client_hello("pq.example", true);
        let mut no_name = tls::browser_client_hello("pq.example", true);
        let at = no_name
            .windows(10)
            .position(|w| w == b"pq.example")
            .unwrap();
        no_name[at..at + 10].copy_from_slice(b"pq example");
        let records = [
            browser.clone(),
            no_name,
            tls::browser_client_hello("classic.example", false),
            big_hello("split.example", 1900),
            big_hello("split.example", 20_000),
        ];
        for rec in &records {
            let cfg = ReassemblyConfig::default();
            let total = rec.len().min(cfg.max_bytes);
            let whole = tls::parse_client_hello(&rec[..total]);
            for cut in 6..total {
                let mut r = HelloReassembler::new(cfg);
                let mut got = match r.on_segment(key(1), 0, 5, &rec[..cut]) {
                    Flight::Buffered => None,
                    first => Some(parsed(first).expect("ready")),
                };
                if got.is_none() {
                    // A third segment in the middle of the rest, for some cuts.
                    let mid = if cut % 7 == 0 { (cut + total) / 2 } else { cut };
                    if mid > cut {
                        let f = r.on_segment(key(1), 1, 5 + cut as u32, &rec[cut..mid]);
                        assert!(matches!(f, Flight::Buffered), "cut {cut}");
                    }
                    got = parsed(r.on_segment(key(1), 2, 5 + mid as u32, &rec[mid..]));
                }
                assert_eq!(got.as_ref(), Some(&whole), "cut {cut} of {}", rec.len());
                assert_eq!(r.flows(), 0);
                assert_eq!(r.buffered_bytes(), 0);
                assert_gate_counts_the_flows(&r.flows);
                let buffered = r.stats().started == 1;
                assert_eq!(r.stats().completed, u64::from(buffered), "cut {cut}");
                let cut_off = buffered && rec.len() > cfg.max_bytes;
                assert_eq!(r.stats().byte_limit, u64::from(cut_off), "cut {cut}");
            }
        }
        // Lengths that end the body before the record's bytes do: the record's, then the
        // handshake's, cut short (the parse reads only as far as they say).
        for (at, by) in [(3usize, 600u16), (7, 700)] {
            let mut rec = browser.clone();
            let len = u16::from_be_bytes([rec[at], rec[at + 1]]) - by;
            rec[at..at + 2].copy_from_slice(&len.to_be_bytes());
            let whole = tls::parse_client_hello(&rec);
            for cut in 6..rec.len() {
                let mut r = HelloReassembler::default();
                let got = match r.on_segment(key(1), 0, 0, &rec[..cut]) {
                    Flight::Buffered => parsed(r.on_segment(key(1), 1, cut as u32, &rec[cut..])),
                    first => parsed(first),
                };
                assert_eq!(got.as_ref(), Some(&whole), "cut {cut} at {at}");
            }
        }
        // A retransmission from the start that reaches past where the parse goes on, after a
        // first segment that ended before it.
        let h = big_hello("split.example", 1900);
        let next = tls::client_hello_tail(&h[..600], h.len())
            .map(|t| t.next())
            .expect("a tail");
        assert!((600..1880).contains(&next), "{next}");
        let mut r = HelloReassembler::default();
        assert_eq!(r.on_segment(key(1), 0, 0, &h[..600]), Flight::Buffered);
        assert_eq!(r.flows(), 1);
        assert!(r.flows.map.values().all(|p| p.buf.is_empty()));
        assert_eq!(r.on_segment(key(1), 1, 0, &h[..1880]), Flight::Buffered);
        assert_eq!(r.flows(), 1);
        assert!(r.flows.map.values().all(|p| p.buf == h[next..1880]));
        assert_eq!(
            named(r.on_segment(key(1), 2, 1880, &h[1880..])).as_deref(),
            Some("split.example")
        );
        // Chrome's first segment (1,448 bytes) ends in its key share: nothing of it is kept,
        // and the rest is parsed where it lies.
        let mut r = HelloReassembler::default();
        assert_eq!(
            r.on_segment(key(1), 0, 0, &browser[..1448]),
            Flight::Buffered
        );
        assert_eq!(r.flows(), 1);
        assert!(r.flows.map.values().all(|p| p.buf.is_empty()));
        let segment = &browser[1448..];
        let rest = r.on_segment(key(1), 1, 1448, segment);
        // The name is borrowed from the segment itself.
        assert!(
            matches!(rest, Flight::Parsed(Ok(tls::ClientHello { sni: Some(s), .. }))
                if segment.as_ptr_range().contains(&s.as_ptr())),
            "{rest:?}"
        );
        assert_eq!(named(rest).as_deref(), Some("pq.example"));
    }

    /// Two Initials of one connection; the first with its CRYPTO frames out of order.
    fn initials(dcid: &[u8], hs: &[u8]) -> [Vec<u8>; 2] {
        [
            quic::client_initial_pieces(dcid, 0, &[(600, &hs[600..1000]), (0, &hs[..600])])
                .unwrap(),
            quic::client_initial_pieces(dcid, 1, &[(1000, &hs[1000..])]).unwrap(),
        ]
    }

    #[test]
    fn quic_initials_are_joined_per_connection() {
        let rec = big_hello("quic-split.example", 1700);
        let hs = &rec[5..];
        let [a1, a2] = initials(&[1, 2, 3, 4, 5, 6, 7, 8], hs);
        let [b1, _] = initials(&[9, 9, 9, 9], hs);
        for d in [&a1, &a2] {
            assert!(!matches!(quic::initial_sni(d), Ok(Some(_))));
        }
        let mut r = CryptoReassembler::default();
        assert_eq!(r.on_initial(key(1), 0, &a1), Flight::Buffered);
        // Another connection id on the same addresses is another flow.
        assert_eq!(r.on_initial(key(1), 1, &b1), Flight::Buffered);
        assert_eq!(r.flows(), 2);
        match r.on_initial(key(1), 2, &a2) {
            Flight::Ready(b) => {
                assert_eq!(b, hs);
                let hello = tls::parse_handshake(b).unwrap();
                assert_eq!(hello.sni, Some("quic-split.example"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r.flows(), 1);
        assert_eq!((r.stats().started, r.stats().completed), (2, 1));
        // The second Initial first (reordered) works as well.
        let mut r = CryptoReassembler::default();
        assert_eq!(r.on_initial(key(2), 0, &a2), Flight::Buffered);
        assert!(matches!(r.on_initial(key(2), 1, &a1), Flight::Ready(b) if b == hs));
        // Not an Initial: untouched.
        assert_eq!(r.on_initial(key(3), 0, b"\x40hello"), Flight::Untracked);
    }

    #[test]
    fn quic_flows_are_bounded() {
        let rec = big_hello("quic-split.example", 1700);
        let cfg = ReassemblyConfig {
            max_flows: 8,
            timeout_us: 1_000,
            ..ReassemblyConfig::default()
        };
        let mut r = CryptoReassembler::new(cfg);
        for i in 0..100u8 {
            let [first, _] = initials(&[i, 1, 2, 3], &rec[5..]);
            assert_eq!(r.on_initial(key(1), 0, &first), Flight::Buffered);
            assert!(r.flows() <= 8);
        }
        assert_eq!(r.stats().evicted, 92);
        let [first, _] = initials(&[200, 1, 2, 3], &rec[5..]);
        r.on_initial(key(1), 10_000, &first);
        assert_eq!(r.flows(), 1);
        assert_eq!(r.stats().timed_out, 8);
        assert_gate_counts_the_flows(&r.flows);
    }

    #[test]
    fn a_flood_of_partial_hellos_stays_bounded() {
        let h = big_hello("split.example", 1900);
        let cfg = ReassemblyConfig {
            max_flows: 1000,
            max_total_bytes: 256 * 1024,
            ..ReassemblyConfig::default()
        };
        let mut r = HelloReassembler::new(cfg);
        for i in 0..100_000u32 {
            let k = FlowKey {
                src: IpAddr::from(i.to_be_bytes()),
                ..key(1)
            };
            r.on_segment(k, i64::from(i), 0, &h[..1000]);
            assert!(r.buffered_bytes() <= 256 * 1024);
            assert!(r.flows() <= 1000);
        }
        assert!(r.flows.ages.len() <= 2 * r.flows() + 65);
        assert_eq!(r.stats().started, 100_000);
        assert_gate_counts_the_flows(&r.flows);
    }
}
