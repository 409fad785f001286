//! Scan heuristics over flow starts: port scan (TCP SYN and NULL/FIN/XMAS probes), UDP scan
//! and infection scan (one source sweeping many hosts on a worm-prone port).
//!
//! A flow start comes from the kernel in live capture (the XDP program de-duplicates them)
//! or from the packets in replay ([`flow_start_of`], their repeats skipped as the kernel
//! skips them: [`FlowRepeats`]). Each key has a sliding window of
//! [`super::HeuristicsConfig::scan_window_us`] and alerts at most once per window; time is the
//! flow start's own timestamp, so replay follows the pcap's clock.
//!
//! Not flagged: ACK, RST or SYN-ACK packets (an ACK sweep is not a port scan), destinations on
//! loopback, multicast or broadcast addresses, whitelisted sources, and UDP that looks like a
//! reply (from a port below 1024 to an ephemeral one, or the reverse of a flow seen).

use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv4Addr};

use hashbrown::DefaultHashBuilder;

use super::bounded::{CompactKey, FirstSightings, PackedEntry, PackedMap, WindowMap};
use super::{HeuristicsConfig, TableState};
use crate::packet::{ipproto, Packet, TcpFlags, Transport};

/// `nmap -sX`: FIN, PSH and URG.
pub const XMAS: u8 = TcpFlags::FIN | TcpFlags::PSH | TcpFlags::URG;

/// The start of a flow, as the XDP program reports it in live capture: a TCP SYN without ACK
/// or RST, a NULL / FIN / XMAS stealth probe, or the first UDP datagram of a flow (see
/// [`FlowRepeats`]) in a while, unless it is a reply by its ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowStart {
    /// Time, microseconds since the epoch.
    pub ts_us: i64,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// IP protocol (6 TCP, 17 UDP).
    pub proto: u8,
    /// TCP flags (0 for UDP).
    pub tcp_flags: u8,
}

/// Whether TCP flags open a flow or probe a port, as the XDP program asks
/// ([`xtrail_common::flow::tcp_starts_flow`]): SYN without ACK or RST, or the NULL, FIN and
/// XMAS stealth sets.
pub fn is_probe_flags(flags: u8) -> bool {
    xtrail_common::flow::tcp_starts_flow(flags)
}

/// The flow start a replayed packet stands for, if any, as the XDP program's: a TCP probe, or
/// a UDP datagram that is not a reply by its ports (the repeats of one are [`FlowRepeats`]'s
/// to skip).
pub fn flow_start_of(ts_us: i64, pkt: &Packet<'_>) -> Option<FlowStart> {
    let (src_port, dst_port) = pkt.ports();
    let tcp_flags = match pkt.transport {
        Transport::Tcp(seg) if is_probe_flags(seg.flags.0) => seg.flags.0,
        Transport::Udp(_) if !xtrail_common::flow::udp_reply_by_ports(src_port, dst_port) => 0,
        _ => return None,
    };
    Some(FlowStart {
        ts_us,
        src: pkt.src,
        dst: pkt.dst,
        src_port,
        dst_port,
        proto: pkt.proto,
        tcp_flags,
    })
}

/// Replay's flow-start cache, like the XDP program's `FLOW_SEEN` (its slots, its window and
/// its flows; not its hash, time units or per-CPU tables). A flow is the addresses,
/// destination port and protocol, and for UDP the source port unless the datagram is a
/// request by ports ([`xtrail_common::flow::udp_source_port_counts`]). Each of the
/// direct-mapped slots holds a flow's tag and the time its start was taken, in units of
/// 1,024 µs; a flow start whose slot holds its tag from less than 30 s ago
/// ([`xtrail_common::flow::REPEAT_WINDOW_NS`]) is a repeat, any other takes the slot. So
/// replay counts the flow starts live capture does, and a repeated datagram costs one slot
/// instead of the scan tables' lookups. A collision only counts a start once more. The hash
/// is fixed: a pcap replays the same way every time.
///
/// Counting from a flow's start, not its last packet, is what live capture does: a port
/// whose flow started more than 30 s ago is out of the scan window, however recent its
/// latest datagram.
pub struct FlowRepeats {
    slots: Box<[u64]>,
}

impl std::fmt::Debug for FlowRepeats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowRepeats")
            .field("slots", &self.slots.len())
            .finish()
    }
}

/// Slots of [`FlowRepeats`]: as many as the kernel's per CPU.
const FLOW_REPEAT_SLOTS: usize = xtrail_common::FLOW_CACHE_SLOTS as usize;

impl FlowRepeats {
    /// An empty cache.
    pub fn new() -> Self {
        FlowRepeats {
            slots: vec![0; FLOW_REPEAT_SLOTS].into_boxed_slice(),
        }
    }

    /// Whether `f` repeats a flow start taken within the window; if it does not, it is taken
    /// (as is one earlier than the slot's, a pcap going back; the times wrap after ~50
    /// days).
    pub fn repeats(&mut self, f: &FlowStart) -> bool {
        const WINDOW_UNITS: u32 = ((xtrail_common::flow::REPEAT_WINDOW_NS / 1_000) >> 10) as u32;
        let h = flow_hash(f);
        // Odd: an empty slot (0) holds no flow's tag.
        let tag = h >> 32 | 1;
        let now = (f.ts_us >> 10) as u32;
        let Some(slot) = self.slots.get_mut(h as usize & (FLOW_REPEAT_SLOTS - 1)) else {
            return false;
        };
        if *slot >> 32 == tag && now.wrapping_sub(*slot as u32) < WINDOW_UNITS {
            return true;
        }
        *slot = tag << 32 | u64::from(now);
        false
    }
}

impl Default for FlowRepeats {
    fn default() -> Self {
        Self::new()
    }
}

/// A hash of a flow start's flow (see [`FlowRepeats`]): one multiply round for two IPv4
/// addresses, four for others.
#[inline]
fn flow_hash(f: &FlowStart) -> u64 {
    let mix = |h: u64, w: u64| (h ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(31);
    let seed = 0x243f_6a88_85a3_08d3;
    let h = match (f.src, f.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => mix(
            seed,
            u64::from(u32::from(s)) | u64::from(u32::from(d)) << 32,
        ),
        (s, d) => {
            let bits = |a: IpAddr| match a {
                IpAddr::V4(a) => u128::from(u32::from(a)),
                IpAddr::V6(a) => u128::from(a),
            };
            let (s, d) = (bits(s), bits(d));
            [s as u64, (s >> 64) as u64, d as u64, (d >> 64) as u64]
                .into_iter()
                .fold(seed, mix)
        }
    };
    let source = if f.proto == ipproto::UDP
        && xtrail_common::flow::udp_source_port_counts(f.src_port, f.dst_port)
    {
        u64::from(f.src_port) << 24
    } else {
        0
    };
    let h = (h ^ (u64::from(f.dst_port) << 8 | u64::from(f.proto) | source))
        .wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
    h ^ h >> 29
}

/// What a flow start raised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanAlert {
    /// More than the threshold of TCP ports on one destination.
    PortScan,
    /// More than the threshold of UDP ports on one destination.
    UdpScan,
    /// More than the threshold of destinations on one infection-prone port.
    Infection,
}

/// The scan windows.
#[derive(Debug)]
pub struct ScanState {
    tcp: ScanTable<(IpAddr, IpAddr)>,
    udp: ScanTable<(IpAddr, IpAddr)>,
    infection: ScanTable<(IpAddr, u16)>,
    /// UDP flows seen (but requests to a service port, see [`ScanState::is_udp_reply`]): a
    /// datagram in the opposite direction is a reply, not a probe. Keyed
    /// by the endpoint pair in canonical order ([`flow_pair`]) with the direction seen as
    /// the value, so one lookup answers both "seen this way" and "seen the other way".
    /// A pair holds one direction only (a reverse datagram is a reply and inserts nothing),
    /// so the entries, and what a full table evicts, are those of a table keyed by
    /// direction. IPv4 pairs are packed in 16-byte entries ([`FlowEntry`]).
    udp_flows: PackedMap<FlowPair, FlowEntry>,
    hasher: DefaultHashBuilder,
}

impl ScanState {
    /// Empty tables, each bounded by `config.max_scan_keys` (see [`ScanTable::new`]).
    pub fn new(config: &HeuristicsConfig) -> Self {
        ScanState {
            tcp: ScanTable::new(config.max_scan_keys),
            udp: ScanTable::new(config.max_scan_keys),
            infection: ScanTable::new(config.max_scan_keys),
            udp_flows: PackedMap::new(config.max_scan_keys),
            hasher: DefaultHashBuilder::default(),
        }
    }

    /// Entries held by the tables (for the bounds tests and stats).
    pub fn entries(&self) -> usize {
        self.tables().iter().map(|t| t.entries).sum()
    }

    /// Each table's entries and evictions: TCP and UDP port scans, infection-port sweeps,
    /// UDP flows seen.
    pub fn tables(&self) -> [TableState; 4] {
        [
            self.tcp.state("scan_tcp"),
            self.udp.state("scan_udp"),
            self.infection.state("scan_infection"),
            TableState {
                table: "udp_flows",
                entries: self.udp_flows.len(),
                evicted: self.udp_flows.evicted(),
            },
        ]
    }

    /// Counts one flow start; returns the alerts it raises (at most one per kind). Callers
    /// prefetch its entries first ([`ScanState::prefetch`]), so that the misses of its
    /// tables overlap (and a batch's, when it has one).
    pub fn observe(
        &mut self,
        config: &HeuristicsConfig,
        f: &FlowStart,
        mut alert: impl FnMut(ScanAlert),
    ) {
        if !is_scan_target(f.dst) {
            return;
        }
        let window = config.scan_window_us;
        match f.proto {
            ipproto::TCP => {
                if !is_probe_flags(f.tcp_flags) {
                    return;
                }
                let item = u64::from(f.dst_port);
                if self.tcp.count_distinct(
                    (f.src, f.dst),
                    item,
                    f.ts_us,
                    window,
                    config.port_scan_threshold,
                ) {
                    alert(ScanAlert::PortScan);
                }
                if config.infection_ports.contains(&f.dst_port) {
                    let item = self.hasher.hash_one(f.dst);
                    let key = (f.src, f.dst_port);
                    let threshold = config.infection_scan_threshold;
                    if self
                        .infection
                        .count_distinct(key, item, f.ts_us, window, threshold)
                    {
                        alert(ScanAlert::Infection);
                    }
                }
            }
            ipproto::UDP => {
                if self.is_udp_reply(f) {
                    return;
                }
                let item = u64::from(f.dst_port);
                if self.udp.count_distinct(
                    (f.src, f.dst),
                    item,
                    f.ts_us,
                    window,
                    config.udp_scan_threshold,
                ) {
                    alert(ScanAlert::UdpScan);
                }
            }
            _ => {}
        }
    }

    /// Prefetches the table entries [`ScanState::observe`] of `f` will read or take (see
    /// [`PackedMap::prefetch`]).
    pub fn prefetch(&self, config: &HeuristicsConfig, f: &FlowStart) {
        if !is_scan_target(f.dst) {
            return;
        }
        match f.proto {
            ipproto::TCP if is_probe_flags(f.tcp_flags) => {
                self.tcp.prefetch(&(f.src, f.dst));
                if config.infection_ports.contains(&f.dst_port) {
                    self.infection.prefetch(&(f.src, f.dst_port));
                }
            }
            ipproto::UDP if !is_reply_by_ports(f) => {
                if !is_request_by_ports(f) {
                    if let Some((bits, _, _)) = packed_v4_pair(f) {
                        self.udp_flows.prefetch_packed(bits);
                    }
                }
                self.udp.prefetch(&(f.src, f.dst));
            }
            _ => {}
        }
    }

    /// A reply rather than a probe: from a service port to an ephemeral one, or the reverse of
    /// a flow already seen (which is then remembered either way). A request from an
    /// ephemeral port to a service port (a DNS query, most of a resolver's or a client's UDP)
    /// is never a reply and is not remembered: its reverse is a reply by its ports alone, so
    /// nothing would read the entry.
    fn is_udp_reply(&mut self, f: &FlowStart) -> bool {
        if is_reply_by_ports(f) {
            return true;
        }
        if is_request_by_ports(f) {
            return false;
        }
        let (seen, forward, to_itself) = match packed_v4_pair(f) {
            Some((bits, forward, to_itself)) => (
                self.udp_flows.get_or_insert_packed(bits),
                forward,
                to_itself,
            ),
            None => {
                let (key, forward) = flow_pair(f);
                (self.udp_flows.get_or_insert(&key), forward, key.0 == key.1)
            }
        };
        let this_way = if forward { SEEN_FORWARD } else { SEEN_BACKWARD };
        if *seen == 0 {
            // New: remembered in this direction.
            *seen = this_way;
            return false;
        }
        // Seen before: a reply if it was the other way, or a flow between one endpoint and
        // itself (its own reverse). Either way the entry was refreshed by the lookup.
        *seen != this_way || to_itself
    }
}

/// [`ScanState::udp_flows`] value of a pair first seen from its first endpoint.
const SEEN_FORWARD: u8 = 1;
/// ... and from its second endpoint.
const SEEN_BACKWARD: u8 = 2;

/// Two UDP endpoints, the lower (address, port) first.
type FlowPair = ((IpAddr, u16), (IpAddr, u16));

/// Two IPv4 UDP endpoints packed, each (address, port) in 48 bits: `.0` holds the first's
/// and the second's top 16 bits, `.1` the second's low 32 bits.
type FlowBits = (u64, u32);

impl CompactKey<FlowBits> for FlowPair {
    #[inline]
    fn compact(&self) -> Option<FlowBits> {
        match *self {
            ((IpAddr::V4(a), pa), (IpAddr::V4(b), pb)) => {
                Some(pack_flow(endpoint48(a, pa), endpoint48(b, pb)))
            }
            _ => None,
        }
    }
}

/// From a service port (below 1024) to an ephemeral one: a reply whatever was seen.
#[inline]
fn is_reply_by_ports(f: &FlowStart) -> bool {
    xtrail_common::flow::udp_reply_by_ports(f.src_port, f.dst_port)
}

/// From an ephemeral port to a service port (below 1024): the reverse of
/// [`is_reply_by_ports`].
#[inline]
fn is_request_by_ports(f: &FlowStart) -> bool {
    xtrail_common::flow::udp_request_by_ports(f.src_port, f.dst_port)
}

/// An IPv4 flow's endpoint pair, ordered and packed as `flow_pair` and `compact` would, on
/// the packed endpoints (an IPv4 address orders as its `u32`); whether the source is the
/// first endpoint, and whether both are one. `None` for IPv6 (or mixed) addresses.
#[inline]
fn packed_v4_pair(f: &FlowStart) -> Option<(FlowBits, bool, bool)> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (f.src, f.dst) else {
        return None;
    };
    let (x, y) = (endpoint48(s, f.src_port), endpoint48(d, f.dst_port));
    let bits = if x <= y {
        pack_flow(x, y)
    } else {
        pack_flow(y, x)
    };
    Some((bits, x <= y, x == y))
}

/// An IPv4 endpoint in 48 bits, ordered as the (address, port) it stands for.
#[inline]
fn endpoint48(addr: Ipv4Addr, port: u16) -> u64 {
    u64::from(u32::from(addr)) << 16 | u64::from(port)
}

/// Two 48-bit endpoints as [`FlowBits`].
#[inline]
fn pack_flow(a: u64, b: u64) -> FlowBits {
    (a << 16 | b >> 32, b as u32)
}

/// A packed IPv4 pair in [`ScanState::udp_flows`] and the direction it was seen in.
#[derive(Debug)]
struct FlowEntry {
    hi: u64,
    lo: u32,
    seen: u8,
}

impl PackedEntry for FlowEntry {
    type Key = FlowBits;
    type Value = u8;
    #[inline]
    fn new((hi, lo): FlowBits, seen: u8) -> Self {
        FlowEntry { hi, lo, seen }
    }
    #[inline]
    fn key(&self) -> FlowBits {
        (self.hi, self.lo)
    }
    #[inline]
    fn value_mut(&mut self) -> &mut u8 {
        &mut self.seen
    }
}

/// The flow's endpoint pair in canonical order, and whether the datagram goes from the
/// first endpoint to the second.
fn flow_pair(f: &FlowStart) -> (FlowPair, bool) {
    let (a, b) = ((f.src, f.src_port), (f.dst, f.dst_port));
    if a <= b {
        ((a, b), true)
    } else {
        ((b, a), false)
    }
}

/// Destinations a scan can be aimed at: not loopback, unspecified, multicast or broadcast.
fn is_scan_target(dst: IpAddr) -> bool {
    match dst {
        IpAddr::V4(a) => {
            !(a.is_loopback() || a.is_unspecified() || a.is_multicast() || a.is_broadcast())
        }
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => is_scan_target(IpAddr::V4(v4)),
            None => !(a.is_loopback() || a.is_unspecified() || a.is_multicast()),
        },
    }
}

/// A scan heuristic's keys and their sliding windows (the port, UDP and infection scans
/// here, the web scan's in [`super::web_scan`]): a key's [`DistinctWindow`] line is
/// made at its second distinct item within the window; until then its one item is kept in
/// [`FirstSightings`] (a new host pair writes 24 bytes, not a 64-byte line: under a flood of
/// new pairs the table's cache footprint is what each one costs). IPv6 keys, keys with a
/// threshold of 0 (their first item alerts) and the packed key 0 (an empty first-sighting
/// slot: a host pair of two unspecified addresses, which the port scans never see as a
/// target and the web scan may) go to the windows directly.
///
/// [`DistinctWindow`]: super::bounded::DistinctWindow
#[derive(Debug)]
pub(super) struct ScanTable<K: CompactKey<u64>> {
    windows: WindowMap<K>,
    first: FirstSightings,
}

impl<K: CompactKey<u64>> ScanTable<K> {
    /// At most `capacity` IPv4 keys with windows (and as many others) and `capacity`
    /// (rounded down to a power of two) first sightings.
    pub(super) fn new(capacity: usize) -> Self {
        ScanTable {
            windows: WindowMap::new(capacity),
            first: FirstSightings::new(capacity),
        }
    }

    /// Keys held.
    pub(super) fn len(&self) -> usize {
        self.windows.len() + self.first.len()
    }

    /// Windows and first sightings dropped to make room so far.
    pub(super) fn evicted(&self) -> u64 {
        self.windows.evicted() + self.first.replaced()
    }

    /// Keys held, and windows and first sightings dropped to make room.
    fn state(&self, table: &'static str) -> TableState {
        TableState {
            table,
            entries: self.len(),
            evicted: self.evicted(),
        }
    }

    /// Prefetches what [`ScanTable::count_distinct`] of `key` reads first: its window set's
    /// bookkeeping and its first-sighting slot (a packed key), else its window.
    #[inline]
    pub(super) fn prefetch(&self, key: &K) {
        match key.compact() {
            Some(c) if c != 0 => {
                self.windows.prefetch_packed_meta(c);
                self.first.prefetch(c);
            }
            _ => self.windows.prefetch(key),
        }
    }

    /// Adds `item` to what is kept for `key` (its first sighting or its window, within the
    /// table's bounds); true when the key's distinct count crosses `threshold`.
    pub(super) fn count_distinct(
        &mut self,
        key: K,
        item: u64,
        ts_us: i64,
        window_us: i64,
        threshold: usize,
    ) -> bool {
        let c = match key.compact() {
            Some(c) if c != 0 && threshold > 0 => c,
            _ => {
                return self
                    .windows
                    .get_or_insert(&key)
                    .observe(item, ts_us, window_us, threshold)
            }
        };
        if let Some(w) = self.windows.get_packed(c) {
            return w.observe(item, ts_us, window_us, threshold);
        }
        let Some((first, seen)) = self.first.observe(c, item, ts_us, window_us) else {
            // One item: below any threshold above 0.
            return false;
        };
        let w = self.windows.get_or_insert_packed(c);
        // A new window: its first item cannot alert (the threshold is above 0).
        w.observe(first, seen, window_us, threshold);
        w.observe(item, ts_us, window_us, threshold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table keeping first sightings apart alerts exactly as one window per key does,
    /// whatever the threshold, with items repeating, windows expiring, time sometimes going
    /// back and keys coming and going (the keys in use at once never share a first-sighting
    /// set, and neither table pushes a key out); the first sightings are in use throughout.
    #[test]
    fn first_sightings_alert_as_windows_do() {
        let mut next = crate::testing::xorshift(0x2545_f491_4f6c_dd1d);
        for threshold in 0..4 {
            // Steps of 10 µs back or forth against a 100 µs window: items often come back
            // at exactly the window's edge, and time often goes back.
            let window = 100;
            let mut table = ScanTable::<(IpAddr, IpAddr)>::new(1 << 20);
            let mut windows = WindowMap::<(IpAddr, IpAddr)>::new(1 << 20);
            // Step `s` uses one of keys `s / 16 ..= s / 16 + 7`: each key lives ~128 steps.
            let mut keys: Vec<(IpAddr, IpAddr)> = Vec::new();
            let mut slots: Vec<usize> = Vec::new();
            let mut i = 0u32;
            while keys.len() < 200_000 / 16 + 8 {
                i += 1;
                let key = (
                    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | i)),
                    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1 + (i % 4) as u8)),
                );
                let Some(slot) = key.compact().map(|c| table.first.set_index(c)) else {
                    continue;
                };
                if !slots.iter().rev().take(16).any(|&s| s == slot) {
                    keys.push(key);
                    slots.push(slot);
                }
            }
            let (mut ts, mut alerts, mut sightings) = (0i64, 0, 0);
            for step in 0..200_000usize {
                let r = next();
                let key = keys[step / 16 + (r % 8) as usize];
                let item = (r >> 16) % 4;
                ts += 10 * ((r >> 24) % 10) as i64 - 30;
                let want = windows
                    .get_or_insert(&key)
                    .observe(item, ts, window, threshold);
                let before = (table.first.len(), table.windows.len());
                let got = table.count_distinct(key, item, ts, window, threshold);
                assert_eq!(got, want, "step {step}, threshold {threshold}");
                alerts += usize::from(got);
                // A first sighting recorded or moved to a window line.
                sightings += usize::from(before != (table.first.len(), table.windows.len()));
            }
            assert!(
                threshold == 0 || sightings > 20_000,
                "threshold {threshold}: {sightings} steps through the first sightings"
            );
            assert!(
                alerts > 100,
                "threshold {threshold}: {alerts} alerts to compare"
            );
        }
    }

    #[test]
    fn probe_flag_sets() {
        assert!(is_probe_flags(TcpFlags::SYN));
        assert!(is_probe_flags(TcpFlags::SYN | 0xc0)); // ECN-setup SYN
        assert!(is_probe_flags(0)); // NULL
        assert!(is_probe_flags(TcpFlags::FIN));
        assert!(is_probe_flags(XMAS));
        assert!(!is_probe_flags(TcpFlags::ACK));
        assert!(!is_probe_flags(TcpFlags::SYN | TcpFlags::ACK));
        assert!(!is_probe_flags(TcpFlags::RST));
        assert!(!is_probe_flags(TcpFlags::FIN | TcpFlags::ACK));
        assert!(!is_probe_flags(TcpFlags::PSH | TcpFlags::ACK));
    }

    #[test]
    fn scan_targets() {
        let t = |s: &str| is_scan_target(s.parse().unwrap());
        assert!(t("198.51.100.7"));
        assert!(t("10.0.0.1"));
        assert!(!t("127.0.0.1"));
        assert!(!t("255.255.255.255"));
        assert!(!t("224.0.0.251"));
        assert!(!t("::1"));
        assert!(!t("::ffff:127.0.0.1"));
        assert!(!t("ff02::fb"));
    }

    #[test]
    fn udp_replies_either_way() {
        let config = HeuristicsConfig::default();
        let mut s = ScanState::new(&config);
        let a: IpAddr = "198.18.0.1".parse().unwrap();
        let b: IpAddr = "198.18.0.2".parse().unwrap();
        let flow = |src, src_port, dst, dst_port| FlowStart {
            ts_us: 0,
            src,
            dst,
            src_port,
            dst_port,
            proto: ipproto::UDP,
            tcp_flags: 0,
        };
        // Either endpoint may speak first; the other direction is then a reply.
        for (x, y) in [(a, b), (b, a)] {
            let mut s = ScanState::new(&config);
            assert!(!s.is_udp_reply(&flow(x, 5000, y, 6000)));
            assert!(!s.is_udp_reply(&flow(x, 5000, y, 6000)));
            assert!(s.is_udp_reply(&flow(y, 6000, x, 5000)));
            assert!(!s.is_udp_reply(&flow(x, 5000, y, 6000)));
            assert_eq!(s.udp_flows.len(), 1);
        }
        // A flow to itself: its second datagram is its own reverse.
        assert!(!s.is_udp_reply(&flow(a, 5000, a, 5000)));
        assert!(s.is_udp_reply(&flow(a, 5000, a, 5000)));
        // Service port to ephemeral port: a reply without a lookup.
        assert!(s.is_udp_reply(&flow(b, 53, a, 40000)));
        assert_eq!(s.udp_flows.len(), 1);
        // Ephemeral port to service port: never a reply, again or after its reply, and not
        // remembered (its reverse is a reply by its ports).
        for _ in 0..2 {
            assert!(!s.is_udp_reply(&flow(a, 40000, b, 53)));
            assert!(s.is_udp_reply(&flow(b, 53, a, 40000)));
        }
        assert_eq!(s.udp_flows.len(), 1);
    }

    /// A flow start within the window of its flow's is a repeat, one after it or before it
    /// (a pcap going back) is not; a flow is the addresses, destination port and protocol,
    /// with a UDP datagram's source port unless it is a request to a service port.
    #[test]
    fn flow_repeats_within_the_window_of_the_same_flow() {
        let window = i64::try_from(xtrail_common::flow::REPEAT_WINDOW_NS / 1_000).unwrap();
        let a: IpAddr = "198.18.0.1".parse().unwrap();
        let b: IpAddr = "198.18.0.2".parse().unwrap();
        let v6: IpAddr = "2001:db8::2".parse().unwrap();
        let start = |ts_us, dst, (src_port, dst_port), proto| FlowStart {
            ts_us,
            src: a,
            dst,
            src_port,
            dst_port,
            proto,
            tcp_flags: if proto == ipproto::TCP {
                TcpFlags::SYN
            } else {
                0
            },
        };
        let t0 = 1_700_000_000_000_000;
        for (dst, proto, ports, other_source, by_source) in [
            // TCP: the source port is not part of the flow.
            (b, ipproto::TCP, (40000, 22), (40001, 22), false),
            (v6, ipproto::TCP, (40000, 22), (40001, 22), false),
            // UDP to a service port from an ephemeral one: neither.
            (b, ipproto::UDP, (40000, 53), (40001, 53), false),
            (v6, ipproto::UDP, (40000, 53), (40001, 53), false),
            // UDP between ephemeral ports, or between service ports: it is.
            (b, ipproto::UDP, (40000, 3478), (40001, 3478), true),
            (v6, ipproto::UDP, (40000, 3478), (40001, 3478), true),
            (b, ipproto::UDP, (123, 123), (124, 123), true),
        ] {
            let what = format!("{dst} {proto} {ports:?}");
            let mut r = FlowRepeats::new();
            assert!(!r.repeats(&start(t0, dst, ports, proto)), "{what}");
            assert!(r.repeats(&start(t0, dst, ports, proto)), "{what}");
            assert!(
                r.repeats(&start(t0 + window - 2_000, dst, ports, proto)),
                "{what}"
            );
            assert_eq!(
                r.repeats(&start(t0 + 1, dst, other_source, proto)),
                !by_source,
                "{what}"
            );
            // Another destination port, protocol or address: another flow.
            let (sp, dp) = ports;
            assert!(!r.repeats(&start(t0, dst, (sp, dp ^ 1), proto)), "{what}");
            assert!(!r.repeats(&start(t0, dst, ports, 132)), "{what}");
            assert!(!r.repeats(&start(t0, a, ports, proto)), "{what}");
            // Past the window the flow starts again, and stands for the next window.
            let later = t0 + window + 2_000;
            assert!(!r.repeats(&start(later, dst, ports, proto)), "{what}");
            assert!(
                r.repeats(&start(later + window / 2, dst, ports, proto)),
                "{what}"
            );
            // A time before the slot's takes the slot again.
            assert!(!r.repeats(&start(t0, dst, ports, proto)), "{what}");
            assert!(r.repeats(&start(t0 + 1, dst, ports, proto)), "{what}");
        }
    }

    #[test]
    fn packed_flow_table_holds_each_pair_once() {
        // The same pairs through the packed table and a map, IPv4 and IPv6 mixed: the same
        // values and count after every step.
        assert_eq!(std::mem::size_of::<FlowEntry>(), 16);
        let v4 = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(i.wrapping_mul(0x9e37_79b9)));
        let v6 = |i: u32| IpAddr::from(std::net::Ipv6Addr::from(u128::from(i) << 64));
        let v4_of = |a: IpAddr| match a {
            IpAddr::V4(a) => a,
            IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
        };
        // Room for every pair (at most 61 * 5 * 3 * 4): the table grows until no set of four
        // overflows (with the bound at 2^22 sets, that fails about once in 10^11 runs).
        let mut p: PackedMap<FlowPair, FlowEntry> = PackedMap::new(1 << 24);
        let mut b: hashbrown::HashMap<FlowPair, u8> = hashbrown::HashMap::new();
        let mut rng = 11u64;
        for step in 0..20_000u32 {
            rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let r = (rng >> 33) as u32;
            let x = if r.is_multiple_of(7) {
                v6(r % 61)
            } else {
                v4(r % 61)
            };
            let key = (
                (x, (r % 5) as u16 * 0x1111),
                (v4(r % 3), u16::MAX - (r % 4) as u16),
            );
            let got = p.get_or_insert(&key);
            let want = b.entry(key).or_insert(0);
            assert_eq!(*got, *want, "step {step}");
            let v = (step % 3) as u8;
            *got = v;
            *want = v;
            assert_eq!(p.len(), b.len(), "step {step}");
        }
        assert_eq!(p.evicted(), 0);
        // IPv4 endpoints order as their packed 48 bits, as `is_udp_reply` relies on.
        for i in 0..2_000u32 {
            let (a, b) = ((v4(i % 37), (i % 7) as u16), (v4(i % 41), (i % 5) as u16));
            let (x, y) = (endpoint48(v4_of(a.0), a.1), endpoint48(v4_of(b.0), b.1));
            assert_eq!(a <= b, x <= y, "{a:?} {b:?}");
            assert_eq!(a == b, x == y);
        }
        // Distinct pairs pack apart; only IPv4 pairs pack.
        let a = |i: u32, port: u16| (v4(i), port);
        assert_ne!((a(1, 2), a(3, 4)).compact(), (a(3, 4), a(1, 2)).compact());
        assert_ne!((a(1, 2), a(3, 4)).compact(), (a(1, 3), a(3, 4)).compact());
        assert_eq!(((v6(1), 2), a(3, 4)).compact(), None);
    }
}
