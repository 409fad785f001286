//! xtrail's XDP program.
//!
//! Per packet: parse Ethernet (up to two VLAN tags), IPv4 (with options) or IPv6 (extension
//! headers skipped up to a bound), then TCP/UDP/ICMP/ICMPv6; look the destination and then
//! the source up in the trail maps (IP:port, IP, CIDR); report hits Maltrail would report
//! (TCP SYN, any UDP, ICMP echo requests) to userspace through the `HITS` ring buffer,
//! suppressing repeats within a window; count everything in per-CPU counters.
//! Malformed or truncated frames are passed and counted; nothing is read out of bounds.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Map keys are built on the stack and passed by reference on purpose: the helpers take a
// pointer, and a by-value argument would be copied again first.
#![allow(clippy::needless_borrows_for_generic_args)]

mod parse;

use aya_ebpf::{
    bindings::{xdp_action, xdp_md},
    helpers::{
        bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, bpf_xdp_adjust_head,
        bpf_xdp_load_bytes,
    },
    macros::{map, xdp},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, PerCpuArray, RingBuf, XskMap},
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use parse::Packet;
use xtrail_common::{
    action, addr_check, config_flags, handoff, mode, side, stat, tls_flow, trail_kind, trail_set,
    trail_table, wake, xsk_meta, Config, FlowBatch, FlowRecord, HitRecord, IpPortKey,
    PayloadHeader, PayloadRecord, PerCpuStats, TrailKey4, TrailKey6, FLOW_BATCH, FLOW_CACHE_SLOTS,
    HTTP_PORT_WORDS, PAYLOAD_CAP, PREFILTER_SET_WORDS, PREFILTER_WORDS, XSK_FRAME_ROOM,
    XSK_MAX_IFACES, XSK_META_LEN, XSK_META_MAGIC,
};

/// Runtime configuration (element 0).
#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Per-CPU counters: one `PerCpuStats` (element 0), indexed by `xtrail_common::stat`.
#[map]
static STATS: PerCpuArray<PerCpuStats> = PerCpuArray::with_max_entries(1, 0);

// Two trail sets, 0 and 1, share these maps: the set index is part of every key (and picks
// the half of the prefilter). A reload fills the inactive set beside the active one and
// switches with one write to `TRAIL_SET`, so no packet is ever checked against a half-filled
// set. Hash maps are not preallocated: memory follows what is filled (the old set and its
// successor coexist only during a reload), and userspace sizes them for both sets with
// headroom for sets that grow.

/// The active set and its flags (`xtrail_common::trail_set`), element 0; read once per
/// packet.
#[map]
static TRAIL_SET: Array<u32> = Array::with_max_entries(1, 0);

/// IPv4 address trails: a cuckoo table per set (`xtrail_common::trail_table`; set `s`'s
/// bucket `i` is element `2i + s`). Sized by userspace.
#[map]
static IPV4_TABLE: Array<trail_table::Bucket> = Array::with_max_entries(2, 0);

/// IPv4 IP:port trails: a cuckoo table per set, laid out as `IPV4_TABLE`.
#[map]
static IPPORT4_TABLE: Array<trail_table::Bucket> = Array::with_max_entries(2, 0);

/// IPv6 address trails to trail id.
#[map]
static IPV6_TRAILS: HashMap<TrailKey6, u32> = HashMap::with_max_entries(1, BPF_F_NO_PREALLOC);

/// IPv4 CIDR trails (prefix lengths count the 32 bits of the set index).
#[map]
static IPV4_CIDRS: LpmTrie<TrailKey4, u32> = LpmTrie::with_max_entries(1, 0);

/// IPv6 CIDR trails.
#[map]
static IPV6_CIDRS: LpmTrie<TrailKey6, u32> = LpmTrie::with_max_entries(1, 0);

/// IPv6 IP:port trails (IPv4 ones are in `IPPORT4_TABLE`).
#[map]
static IPPORT_TRAILS: HashMap<IpPortKey, u32> = HashMap::with_max_entries(1, BPF_F_NO_PREALLOC);

/// Per set, one bit per IPv4 /24 that any IPv4 trail (address, CIDR or IP:port) falls in: a
/// clear bit lets clean traffic skip every hash and trie lookup for that address. Then the
/// set's /16 summary (`PREFILTER_SUMMARY_WORDS`), read first. Set 1's words follow set 0's.
#[map]
static IPV4_PREFILTER: Array<u64> = Array::with_max_entries(2 * PREFILTER_SET_WORDS, 0);

/// `BPF_F_NO_PREALLOC`: hash map elements are allocated as they are inserted.
const BPF_F_NO_PREALLOC: u32 = 1;

/// Last report time of each recent hit, to suppress repeats within the window: 16,384
/// buckets of four slots in one 64-byte line each (mmapable, so that its values start on a
/// page), by a hash of the hit's addresses, trail, destination port and protocol
/// (`suppress_slot`). A slot holds the hit's 64-bit tag (odd; 0: free) and its report's
/// `bpf_ktime_get_ns` time. A report takes its hit's own slot, else a free one, else the
/// oldest: it frees the slot, writes the time, then the tag; a reader reads the tag, the
/// time and the tag again, and takes the time only when both reads found its tag: against
/// one writer at a time (on x86, whose stores other CPUs see in order; no barriers), it
/// never takes another hit's time for its own. Two CPUs writing one slot at one instant can
/// leave one hit's tag beside the other's time: two reports of that instant, so the window
/// it starts is the same to within their gap.
/// Until 2026-12-07 an LRU hash map of 65,536 hits (a 40-byte key: 7.3 MB of kernel memory,
/// and an insert under the LRU's locks for every new hit).
#[map]
static SUPPRESS: Array<SuppressBucket> = Array::with_max_entries(SUPPRESS_BUCKETS, BPF_F_MMAPABLE);

/// Buckets of `SUPPRESS` (a power of two; 1 MiB, 65,536 slots).
const SUPPRESS_BUCKETS: u32 = 16_384;
const _: () = assert!(SUPPRESS_BUCKETS == 1 << 14, "suppress_slot takes 14 bits");

/// Slots of a `SUPPRESS` bucket.
const SUPPRESS_WAYS: usize = 4;

/// A `SUPPRESS` bucket: four hits.
#[repr(C)]
#[derive(Clone, Copy)]
struct SuppressBucket {
    tags: [u64; SUPPRESS_WAYS],
    times: [u64; SUPPRESS_WAYS],
}
const _: () = assert!(core::mem::size_of::<SuppressBucket>() == 64);

/// Trail hits for userspace. (Ring sizes here are defaults; userspace sizes them at load.)
#[map]
static HITS: RingBuf = RingBuf::with_byte_size(xtrail_common::ring::HITS_BYTES, 0);

/// Inline mode (and mirror mode without AF_XDP): copies of the first bytes of DNS, HTTP and
/// TLS packets for userspace, one record each of the smallest size class that holds the
/// frame (`PayloadRecord<N>`: header + 128 to 2048 bytes).
#[map]
static PAYLOADS: RingBuf = RingBuf::with_byte_size(xtrail_common::ring::PAYLOADS_BYTES, 0);

/// Mirror mode: one AF_XDP socket per interface slot and receive queue.
#[map]
/// Sized at load to interfaces × `Config::xsk_queues`.
static XSKS: XskMap = XskMap::with_max_entries(XSK_MAX_IFACES, 0);

/// Flow starts for the scan heuristics.
#[map]
static FLOWS: RingBuf = RingBuf::with_byte_size(xtrail_common::ring::FLOWS_BYTES, 0);

/// Recently sent flow starts, per CPU, direct-mapped by a hash of their flow (`flow_hash`):
/// each slot holds the hash's upper half (made odd) and the send time (coarse clock,
/// in 2^20 ns units truncated to 32 bits, so it wraps every ~52 days). An
/// array slot costs one memory access where an LRU hash update takes locks; a collision only
/// means a flow start is sent again. Stored as blocks of `FLOW_SEEN_BLOCK` slots: a per-CPU
/// array allocates each element on its own, and 65,536 one-word elements took 60-70 ms to
/// create at start; 16 elements of 32 KiB (the largest per-CPU value) take well under 1 ms.
#[map]
static FLOW_SEEN: PerCpuArray<[u64; FLOW_SEEN_BLOCK]> =
    PerCpuArray::with_max_entries(FLOW_CACHE_SLOTS / FLOW_SEEN_BLOCK as u32, 0);

/// Slots per `FLOW_SEEN` element (a power of two; 32 KiB).
const FLOW_SEEN_BLOCK: usize = 4096;

/// Each CPU's flow starts not yet sent (`xtrail_common::FlowBatch`): a ring reservation
/// and commit cost ~40 ns per record, one batch record costs that once per
/// `FLOW_BATCH` flow starts.
#[map(name = "FLOW_BATCH")]
static FLOW_BATCH_MAP: PerCpuArray<FlowBatch> = PerCpuArray::with_max_entries(1, 0);

/// Flows whose next segments are handed over until their ClientHello is complete, so that
/// userspace can reassemble a ClientHello that spans segments (post-quantum key shares make
/// it ~1.8 KB: two segments). A TCP flow (one direction) is kept in a slot of the bucket of
/// its hash (`tls_flow_slot`), four slots to a bucket of one 64-byte line (the map is
/// mmapable so that its values start on a page: a bucket never straddles two lines). Every
/// TCP data segment reads its bucket, so the table is kept small (64 KiB). A flow takes a
/// free or expired slot of its bucket, else the one that expires first (counted in
/// `tls_flows_evicted`: its later segments are no longer handed over); a flow's segments
/// follow each other within microseconds, so only flows long incomplete give way. Until
/// 2026-12-07 an LRU hash map (65,536 flows, ~180 ns an insert by its share of a profile)
/// counted per slot of a second table (`TLS_PENDING`, so that other segments skipped its
/// look-up). Slots are read and written without locks: a flow's segments come to one CPU
/// (RSS), but two flows of one bucket on two CPUs at one instant can overwrite each other's
/// slot, or a reader find one flow's tag beside the other's end: a rare miss of a
/// continuation (its name then unread), or a segment handed over that userspace does not
/// follow.
#[map]
static TLS_FLOWS: Array<TlsBucket> = Array::with_max_entries(TLS_BUCKETS, BPF_F_MMAPABLE);

/// `BPF_F_MMAPABLE` (uapi `bpf.h`): the array's values start on a page boundary.
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Slots of a `TLS_FLOWS` bucket.
const TLS_WAYS: usize = 4;

/// Buckets of `TLS_FLOWS` (a power of two).
const TLS_BUCKETS: u32 = tls_flow::SLOTS / TLS_WAYS as u32;
const _: () = assert!(TLS_BUCKETS.is_power_of_two() && TLS_BUCKETS <= 1 << 16);
const _: () = assert!(core::mem::size_of::<TlsBucket>() == 64);

/// A `TLS_FLOWS` bucket: four followed flows.
#[repr(C)]
#[derive(Clone, Copy)]
struct TlsBucket {
    /// Each slot's flow (`tls_flow_slot`'s tag; 0: free).
    tags: [u64; TLS_WAYS],
    /// Sequence number just past the record (at most `tls_flow::MAX_BYTES` from its start).
    end_seq: [u32; TLS_WAYS],
    /// When the flow stops being followed, in `units` (wrapping): the coarse clock at the
    /// first segment plus `tls_flow::TIMEOUT_NS` (see `tls_live`).
    expires: [u32; TLS_WAYS],
}

/// A clock reading in the units `TLS_FLOWS` keeps expiry times in (2^20 ns, ~1.05 ms; wraps
/// after ~52 days: see `tls_live`).
#[inline(always)]
fn units(ns: u64) -> u32 {
    (ns >> 20) as u32
}

/// Whether a `TLS_FLOWS` slot that expires at `expires` is still followed at `now` (both in
/// `units` of the coarse clock, which set it): at most a timeout ahead (and a unit, for the
/// rounding). A slot left behind (a flow whose next segment never came) reads as expired
/// however long ago that was, until the clock has wrapped (~52 days) to within a timeout of
/// it again.
#[inline(always)]
fn tls_live(expires: u32, now: u32) -> bool {
    expires.wrapping_sub(now) <= units(tls_flow::TIMEOUT_NS) + 1
}

/// The packet being processed (see `parse::parse_into`) and what a CPU keeps between
/// packets (`CpuState`), per CPU: one lookup per packet for both.
#[map]
static PACKET: PerCpuArray<CpuScratch> = PerCpuArray::with_max_entries(1, 0);

/// A CPU's `PACKET` slot.
#[repr(C)]
#[derive(Clone, Copy)]
struct CpuScratch {
    pkt: Packet,
    state: CpuState,
}

/// What a CPU's packets leave for its next ones.
#[repr(C)]
#[derive(Clone, Copy)]
struct CpuState {
    /// Non-zero while this CPU's `FLOW_BATCH` holds records as far as this program knows: set
    /// by an append that leaves records, cleared by a send and by a frame that finds the batch
    /// empty. While it is zero, a frame that starts no flow skips the batch lookup
    /// (`flush_stale_flows`). Only a hint that it may be non-empty: the flush program and
    /// userspace empty the batch without clearing it.
    flows_pending: u32,
    _pad: u32,
    /// `jiffies` when `clock_ns` was read: the coarse clock only moves on with the tick, so
    /// it is read again (a helper call) only once the tick changed (see `coarse_now`).
    clock_jiffies: u64,
    /// `bpf_ktime_get_coarse_ns()` as last read (at `clock_jiffies`).
    clock_ns: u64,
    /// The hits this CPU reported or found suppressed lately (see `report`), each in the
    /// slot of its addresses, port and protocol.
    hits_seen: [HitSeen; HITS_SEEN_SLOTS],
}

/// A hit's whole identity (addresses, trail, destination port, protocol) and its report's
/// time by the coarse clock, 64 bytes (per-CPU
/// map values are only 8-byte aligned, so not always one cache line). All zeros when empty:
/// no reportable hit has protocol 0 (`Packet::reportable`).
#[repr(C)]
#[derive(Clone, Copy)]
struct HitSeen {
    src: [u32; 4],
    dst: [u32; 4],
    /// The trail id, the destination port (bits 32-47) and the protocol (bits 48-55).
    rest: u64,
    time_ns: u64,
    _pad: [u64; 2],
}

impl HitSeen {
    /// Whether the slot holds the hit of `pkt` whose `rest` (see the field) is `rest`:
    /// every word compared, one branch.
    #[inline(always)]
    fn holds(&self, pkt: &Packet, rest: u64) -> bool {
        let mut d = self.rest ^ rest;
        for k in 0..4 {
            d |= u64::from(self.src[k] ^ pkt.src[k]) | u64::from(self.dst[k] ^ pkt.dst[k]);
        }
        d == 0
    }

    #[inline(always)]
    fn set(&mut self, pkt: &Packet, rest: u64, time_ns: u64) {
        parse::set_words(&mut self.src, pkt.src);
        parse::set_words(&mut self.dst, pkt.dst);
        self.rest = rest;
        self.time_ns = time_ns;
    }
}

/// Slots of `CpuState::hits_seen` (a power of two; 8 KiB a CPU).
const HITS_SEEN_SLOTS: usize = 128;

/// How far short of the suppression window `hits_seen` answers (2^26 ns, ~67 ms; so not at
/// all for windows up to that): it reads the coarse clock, which lags the
/// `bpf_ktime_get_ns` time `SUPPRESS` holds by up to a tick, and by up to five when this
/// kernel (6.18) lets timekeeping stall before it forces a `jiffies` update
/// (`MAX_STALLED_JIFFIES`): 50 ms at HZ=100. Within the margin `SUPPRESS` decides. Not
/// covered: a read in the gap between a tick's `jiffies` update and its clock update after
/// an idle spell, which `coarse_now` may take for the whole tick (see there).
const HITS_SEEN_MARGIN_NS: u64 = 1 << 26;

/// When a record last woke the reader by the gap rule, any ring (CLOCK_MONOTONIC ns; see
/// [`gap_flags`]).
#[map]
static GAP_WAKE: Array<u64> = Array::with_max_entries(1, 0);

/// Interface index to its slot in `XSKS`.
#[map]
static IFSLOTS: HashMap<u32, u32> = HashMap::with_max_entries(XSK_MAX_IFACES, 0);

/// One bit per TCP port on which requests are parsed as HTTP (filled by userspace).
#[map]
static HTTP_PORTS: Array<u64> = Array::with_max_entries(HTTP_PORT_WORDS, 0);

/// `bpf_ringbuf_query` flag: bytes not yet consumed.
const BPF_RB_AVAIL_DATA: u64 = 0;
/// Submit flags: do not wake the reader / wake it.
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;

/// Waking the reader costs microseconds (an irq_work and a wake-up), so records are
/// submitted without a wake-up except the one that takes the pending bytes across a multiple
/// of `2^shift` (the gap rule, [`gap_flags`], and userspace's poll, `wake::POLL_MS`, bound the
/// latency). Waking on every record while more than the threshold is pending, as before, cost
/// each record ~6 us once the reader fell behind, just when it could least afford it.
/// `record`: the bytes this record occupies (ring header included).
#[inline(always)]
fn wakeup_flags(ring: &RingBuf, shift: u32, record: u64) -> u64 {
    crossing_flags(ring.query(BPF_RB_AVAIL_DATA), shift, record)
}

/// The rule of [`wakeup_flags`] for pending bytes `avail` that include this record's.
#[inline(always)]
fn crossing_flags(avail: u64, shift: u32, record: u64) -> u64 {
    if avail >> shift != avail.saturating_sub(record) >> shift {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// The flags of a record that [`wakeup_flags`] (`threshold`) did not wake for: the gap rule.
/// At most once per `wake::GAP_NS` (one userspace poll interval) over all rings, a record
/// wakes the reader: the first record after a quiet spell reaches userspace at once, not on
/// the next poll; records that keep coming wait for that poll (or a threshold) instead of
/// waking the reader each: a wake-up costs both sides microseconds (hits alone once woke the
/// reader ~800 times a second on the NIC-like mix at 500k packets/s; limited, the sensor's
/// CPU per packet fell from 140-156 to 126-143 ns). A reader that has read nothing for two
/// polls sleeps up to `wake::IDLE_POLL_MS` and relies on this wake-up. A forced wake-up, not
/// the kernel's conditional one (no flags: only when the reader has read up to this record):
/// a record reserved before this one on another CPU and committed after it would leave the
/// reader asleep with both. `now`: `bpf_ktime_get_ns`.
#[inline(always)]
fn gap_flags(threshold: u64, now: u64) -> u64 {
    if threshold == BPF_RB_FORCE_WAKEUP {
        return BPF_RB_FORCE_WAKEUP;
    }
    let Some(last) = GAP_WAKE.get_ptr_mut(0) else {
        return BPF_RB_NO_WAKEUP;
    };
    // SAFETY: the one slot of an array map; CPUs race on it harmlessly (at worst two
    // wake-ups in one gap).
    unsafe {
        if now.wrapping_sub(*last) < wake::GAP_NS {
            return BPF_RB_NO_WAKEUP;
        }
        *last = now;
    }
    BPF_RB_FORCE_WAKEUP
}

/// The wake-up threshold (`log2` bytes) of ring `which` (`xtrail_common::wake`) as
/// userspace set it for the ring's size, or the default for its largest rings.
#[inline(always)]
fn wake_shift(cfg: &Config, which: usize) -> u32 {
    let s = u32::from(cfg.wake_shifts[which & 3]);
    if s == 0 {
        wake::DEFAULT_SHIFTS[which & 3]
    } else {
        s
    }
}

/// Bytes of a ring record: the kernel's 8-byte header and `T`, rounded up to 8.
const fn ring_bytes<T>() -> u64 {
    ((8 + core::mem::size_of::<T>() as u64) + 7) & !7
}

/// This CPU's counters (its `STATS` value), looked up once per run and passed down, so
/// that each count is one add in place.
#[derive(Clone, Copy)]
struct Stats(*mut PerCpuStats);

impl Stats {
    /// This CPU's counters (`None` never happens: element 0 of a per-CPU array).
    #[inline(always)]
    fn get() -> Option<Stats> {
        STATS.get_ptr_mut(0).map(Stats)
    }

    /// Adds `n` to counter `index` (one of `xtrail_common::stat`). Wrapping: `send_flows`
    /// takes records back out with a negative `n`.
    #[inline(always)]
    fn add(self, index: u32, n: u64) {
        // SAFETY: this CPU's slot of a per-CPU array; only this CPU writes it while this
        // program runs.
        if let Some(c) = unsafe { (*self.0).counters.get_mut(index as usize) } {
            *c = c.wrapping_add(n);
        }
    }
}

#[xdp]
pub fn xtrail_xdp(ctx: XdpContext) -> u32 {
    // Read in place, not copied: element 0 of an array always exists.
    let Some(cfg) = CONFIG.get(0) else {
        return xdp_action::XDP_PASS;
    };
    // Once per packet: every lookup of this packet uses the same set.
    let set = TRAIL_SET.get(0).copied().unwrap_or(0);
    let Some(stats) = Stats::get() else {
        return idle_verdict(cfg);
    };
    let verdict = process(&ctx, cfg, set, stats);
    // Redirects are counted where they happen (`redirected`).
    if verdict == xdp_action::XDP_DROP {
        stats.add(stat::DROP, 1);
    } else if verdict == xdp_action::XDP_PASS {
        stats.add(stat::PASS, 1);
    }
    verdict
}

/// Sends this CPU's flow-start batch if it holds records, whatever the frame (a second
/// program of this object, sharing its maps). Never attached: userspace runs it with
/// BPF_PROG_TEST_RUN on each CPU whose batch holds records, every 250 ms
/// (`Sensor::flush_flows`), so a flow start on a CPU that sees no more packets waits about
/// that long, not until its next packet. Safe beside the attached program on the same CPU:
/// the kernel's `bpf_test_run` (net/bpf/test_run.c, as in 6.18) runs a program with
/// migration disabled and each run inside `local_bh_disable()`/`local_bh_enable()`, so no
/// NAPI (softirq) run of `xtrail_xdp` on this CPU interleaves with it, as two NAPI runs on
/// one CPU never do.
#[xdp]
pub fn xtrail_flush(_ctx: XdpContext) -> u32 {
    let cfg = match CONFIG.get(0) {
        Some(c) => *c,
        None => Config::default(),
    };
    if let Some(batch) = FLOW_BATCH_MAP.get_ptr_mut(0) {
        // SAFETY: this CPU's slot of a per-CPU array; with bottom halves disabled nothing
        // else on this CPU uses it during this run (see above).
        let batch = unsafe { &mut *batch };
        if batch.len != 0 {
            send_flows(batch, &cfg);
        }
    }
    xdp_action::XDP_PASS
}

/// The default verdict for a packet that hit nothing.
#[inline(always)]
fn idle_verdict(cfg: &Config) -> u32 {
    if cfg.mode == mode::MIRROR {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

#[inline(always)]
fn process(ctx: &XdpContext, cfg: &Config, set: u32, stats: Stats) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    stats.add(stat::PACKETS, 1);
    stats.add(stat::BYTES, len);
    let Some(slot) = PACKET.get_ptr_mut(0) else {
        return idle_verdict(cfg);
    };
    // SAFETY: this CPU's slot of a per-CPU array; nothing else uses it during this run.
    let status = parse::parse_into(ctx.ctx, unsafe { &mut (*slot).pkt });
    // SAFETY: as above; read back from map memory, so the verifier knows nothing of it.
    let pkt: &Packet = unsafe { &(*slot).pkt };
    // SAFETY: as above; a field `parse_into` does not touch.
    let state = unsafe { &mut (*slot).state };
    match status {
        0 => {}
        1 => {
            stats.add(stat::NON_IP, 1);
            // Any frame sends a stale batch, not only an IP one.
            if cfg.flags & config_flags::FLOWS != 0 {
                flush_stale_flows(cfg, state);
            }
            return idle_verdict(cfg);
        }
        _ => {
            stats.add(stat::PARSE_ERRORS, 1);
            if cfg.log_level > 0 {
                debug!(ctx, "xtrail: malformed frame, {} bytes", len);
            }
            if cfg.flags & config_flags::FLOWS != 0 {
                flush_stale_flows(cfg, state);
            }
            return idle_verdict(cfg);
        }
    }
    if pkt.fragment {
        stats.add(stat::FRAGMENTS, 1);
    }
    if cfg.flags & config_flags::FLOWS != 0 {
        if !pkt.fragment && pkt.is_flow_start() {
            flow_start(pkt, cfg, stats, state);
        } else {
            flush_stale_flows(cfg, state);
        }
    }
    let hit = lookup_packet(pkt, set, stats);
    let enforce = cfg.mode == mode::INLINE && cfg.flags & config_flags::ENFORCE != 0;
    let mut verdict = idle_verdict(cfg);
    if hit.is_some() {
        stats.add(stat::HITS, 1);
        if enforce {
            stats.add(stat::ENFORCED, 1);
            verdict = xdp_action::XDP_DROP;
        }
    }
    // Names live in payloads: hand DNS, HTTP and TLS ClientHello packets to userspace.
    // An enforced drop is not handed over: the packet goes nowhere.
    let mut dns_handed_off = false;
    if !(enforce && hit.is_some()) {
        if let Some(kind) = classify(ctx, pkt, cfg, stats) {
            // Both addresses looked up and clean: userspace need not look them up again.
            let addrs = if hit.is_none() && !pkt.fragment {
                addr_check::CLEAN | ((set & trail_set::INDEX) as u8 & addr_check::SET)
            } else {
                addr_check::UNKNOWN
            };
            // The verdict and the selector's epoch in one argument.
            let stamp =
                u32::from(addrs) | (set & (trail_set::EPOCH_MASK << trail_set::EPOCH_SHIFT));
            // SAFETY: this run's context.
            let v = unsafe { hand_off(ctx.ctx, kind, stamp) };
            if v != NOT_HANDED_OFF {
                if cfg.mode == mode::MIRROR {
                    verdict = v;
                }
                dns_handed_off = kind == handoff::DNS;
            }
        }
    }
    let hit = match hit {
        Some(h) => h,
        None => return verdict,
    };
    // Userspace reports IP trails of DNS packets itself, as `ip (query)`.
    if !pkt.reportable() || dns_handed_off {
        stats.add(stat::UNREPORTED, 1);
        return verdict;
    }
    // A repeat this CPU saw lately, answered here without a call (see `report`). The slot by
    // the packet's fields alone: a slot index computed from the hit would make the verifier
    // track the hit's values precisely (a variable offset into map memory), and walk three
    // times the states.
    let i = tuple_hash(pkt, cfg.hash_seed) as usize & (HITS_SEEN_SLOTS - 1);
    let rest = hit_rest(pkt, hit.trail_id);
    let (coarse, _) = coarse_now(state);
    // 0 without suppression: then nothing is below it.
    let window = cfg.suppress_ns.saturating_sub(HITS_SEEN_MARGIN_NS);
    let seen = &state.hits_seen[i];
    // The stored time is never later than this CPU's coarse clock now.
    if seen.holds(pkt, rest) && coarse.wrapping_sub(seen.time_ns) < window {
        stats.add(stat::SUPPRESSED, 1);
        return verdict;
    }
    // The hit and the mode in one argument: trail id (bits 0-31), kind, side, set (bits
    // 32-55), enforced (bit 56).
    let packed = u64::from(hit.trail_id)
        | u64::from(hit.kind) << 32
        | u64::from(hit.side) << 40
        | u64::from(hit.set) << 48
        | u64::from(enforce) << 56;
    // SAFETY: this run's context and scalars; nothing here uses `pkt` or `state` after it.
    unsafe { report(ctx.ctx, packed, len, i as u32, coarse) };
    verdict
}

/// Adds a flow-start record to this CPU's batch (sent by `send_flows` when full or once the
/// kernel's tick moved on) unless the same flow (`flow_hash`) was sent within the window.
/// Inline: a flow start already sent, the common case, makes no call
/// (measured ~8 ns less per such packet than as a BPF function of its own), and so does the
/// append (`add_flow`) until the batch is sent. Time is the coarse clock (`coarse_now`:
/// CLOCK_MONOTONIC at tick resolution, read about once per tick; `bpf_ktime_get_ns` costs
/// ~20-30 ns on a VM), kept in units of 2^20 ns (~1.05 ms) so that the window test needs no
/// division.
#[inline(always)]
fn flow_start(pkt: &Packet, cfg: &Config, stats: Stats, state: &mut CpuState) {
    let (now, tick) = coarse_now(state);
    let h = flow_hash(pkt, cfg.hash_seed);
    let slot = (h as u32) & (FLOW_CACHE_SLOTS - 1);
    // Odd: an empty slot (0) holds no flow's tag.
    let tag = h >> 32 | 1;
    let now_u = (now >> 20) as u32;
    let window_u = (cfg.flow_ns >> 20).min(u64::from(u32::MAX)) as u32;
    let block = FLOW_SEEN.get_ptr_mut(slot / FLOW_SEEN_BLOCK as u32);
    // SAFETY: the slot's index within its block is masked below the block's length.
    let slot_ptr =
        block.map(|b| unsafe { (b as *mut u64).add(slot as usize & (FLOW_SEEN_BLOCK - 1)) });
    if let Some(p) = slot_ptr {
        // SAFETY: per-CPU slot, only this CPU touches it while the program runs.
        let v = unsafe { *p };
        if v >> 32 == tag && now_u.wrapping_sub(v as u32) < window_u {
            stats.add(stat::FLOW_REPEATS, 1);
            // As any frame that starts no flow: no batch lookup while none is pending.
            flush_stale_flows(cfg, state);
            return;
        }
        // SAFETY: as above.
        unsafe { *p = (tag << 32) | u64::from(now_u) };
    }
    let Some(batch) = FLOW_BATCH_MAP.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot of a per-CPU array; nothing else uses it during this run.
    let batch = unsafe { &mut *batch };
    add_flow(pkt, batch, now, tick, cfg, stats);
    // Empty again when the append sent the batch.
    state.flows_pending = batch.len;
}

/// A hash of a packet's addresses, destination port and protocol (the slot of a hit in
/// `hits_seen`).
#[inline(always)]
fn tuple_hash(pkt: &Packet, seed: u64) -> u64 {
    hash_with(pkt, 0, seed)
}

/// The flow-start cache's key: `tuple_hash`'s fields, and a UDP datagram's source port
/// unless it goes from an ephemeral port to a service port
/// (`xtrail_common::flow::udp_source_port_counts`). Replay's flows are the same
/// (`xtrail_detect::heuristics::scan::FlowRepeats`).
#[inline(always)]
fn flow_hash(pkt: &Packet, seed: u64) -> u64 {
    let by_source = pkt.proto == parse::IPPROTO_UDP
        && xtrail_common::flow::udp_source_port_counts(pkt.src_port, pkt.dst_port);
    let source = if by_source {
        u64::from(pkt.src_port) << 24
    } else {
        0
    };
    hash_with(pkt, source, seed)
}

/// `tuple_hash` with `extra` (bits above the 24 of the port and protocol) in its key.
#[inline(always)]
fn hash_with(pkt: &Packet, extra: u64, seed: u64) -> u64 {
    let h = (addresses_hash(pkt, pkt.family != 4, seed)
        ^ (u64::from(pkt.dst_port) << 8 | u64::from(pkt.proto) | extra))
        .wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
    h ^ (h >> 29)
}

/// A hash of a packet's two addresses: one multiply round for the last address words, three
/// more for the others when `all_words` (IPv6; an IPv4 address's other words are
/// constant); the words of the two addresses paired into 64-bit lanes. Started from this
/// load's random `seed` (`Config::hash_seed`), so that which packets share a table's slot
/// cannot be worked out from outside.
#[inline(always)]
fn addresses_hash(pkt: &Packet, all_words: bool, seed: u64) -> u64 {
    let mix = |h: u64, w: u64| (h ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(31);
    let lane = |lo: u32, hi: u32| u64::from(lo) | u64::from(hi) << 32;
    let mut h = mix(0x243f_6a88_85a3_08d3 ^ seed, lane(pkt.src[3], pkt.dst[3]));
    if all_words {
        h = mix(h, lane(pkt.src[0], pkt.dst[0]));
        h = mix(h, lane(pkt.src[1], pkt.dst[1]));
        h = mix(h, lane(pkt.src[2], pkt.dst[2]));
    }
    h
}

/// Appends a flow start to this CPU's batch, and sends the batch when it is full or the
/// kernel's tick moved on since its first record. Inline: as a BPF function of its own (as
/// it was) it cost ~10 ns more per flow start by BPF_PROG_TEST_RUN (a call and a return
/// through the return thunk of AMD's SRSO mitigation), for ~1,500 fewer instructions of
/// verification. Its addresses are stored word by word (`parse::set_words`).
#[inline(always)]
fn add_flow(pkt: &Packet, batch: &mut FlowBatch, now: u64, tick: u32, cfg: &Config, stats: Stats) {
    // Below FLOW_BATCH between runs; masked so the verifier knows it.
    let i = batch.len as usize & (FLOW_BATCH - 1);
    if i == 0 {
        batch.tick = tick;
    }
    let r = &mut batch.records[i];
    r.ts_ns = now;
    // Word by word (`FlowRecord`'s addresses are 4-byte aligned): a `[u8; 16]` assignment
    // compiles to a call to a byte-wise `memmove` here.
    // SAFETY: `[u8; 16]` and `[u32; 4]` have the same size; `src` and `dst` sit at offsets 8
    // and 24 of a record whose alignment is 8.
    unsafe {
        parse::set_words(&mut *r.src.as_mut_ptr().cast::<[u32; 4]>(), pkt.src);
        parse::set_words(&mut *r.dst.as_mut_ptr().cast::<[u32; 4]>(), pkt.dst);
    }
    r.src_port = pkt.src_port;
    r.dst_port = pkt.dst_port;
    r.family = pkt.family;
    r.proto = pkt.proto;
    r.tcp_flags = pkt.tcp_flags;
    r._pad = 0;
    batch.len = i as u32 + 1;
    stats.add(stat::FLOW_STARTS, 1);
    if i + 1 == FLOW_BATCH || batch.tick != tick {
        send_flows(batch, cfg);
    }
}

/// The coarse clock, read through this CPU's cache in `state`, and `jiffies` (truncated):
/// the clock is read again only once `jiffies` moved on (the coarse clock advances with the
/// tick), so most packets make no helper call. The tick bumps `jiffies_64` before
/// `update_wall_time()` moves the coarse clock: a read in that gap returns the old time, so
/// the tick is cached only once the clock read differs from the cached one (until then every
/// packet reads it again; after a NOHZ idle spell the old time may be seconds old).
#[inline(always)]
fn coarse_now(state: &mut CpuState) -> (u64, u32) {
    // SAFETY: a helper without arguments, inlined by the verifier as a load of `jiffies`.
    let j = unsafe { bpf_jiffies64() };
    if state.clock_jiffies == j {
        return (state.clock_ns, j as u32);
    }
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if now != state.clock_ns {
        state.clock_jiffies = j;
        state.clock_ns = now;
    }
    (now, j as u32)
}

/// The kernel's tick counter, truncated: `bpf_jiffies64` is a helper the verifier replaces
/// with a load of `jiffies` (no call). The coarse clock moves on with it.
#[inline(always)]
fn jiffies() -> u32 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_jiffies64() as u32 }
}

/// A frame that starts no flow: sends this CPU's flow starts if the coarse clock has
/// moved on since the first of them (so a lone flow start waits about a clock tick, not for
/// the batch to fill). No map lookup while `CpuState::flows_pending` is clear.
#[inline(always)]
fn flush_stale_flows(cfg: &Config, state: &mut CpuState) {
    if state.flows_pending == 0 {
        return;
    }
    let Some(batch) = FLOW_BATCH_MAP.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot of a per-CPU array; nothing else uses it during this run.
    let batch = unsafe { &mut *batch };
    if batch.len == 0 {
        state.flows_pending = 0;
        return;
    }
    if batch.tick != jiffies() {
        send_flows(batch, cfg);
        state.flows_pending = 0;
    }
}

/// Sends the batch's records as one `FLOWS` record and empties it. A full ring loses the
/// batch: its records move from `flow_starts` to `flows_full` (on this CPU's counters,
/// which counted them).
#[inline(never)]
fn send_flows(batch: &mut FlowBatch, cfg: &Config) {
    // In [1, FLOW_BATCH] in a form the verifier tracks (`len` is in [1, FLOW_BATCH] here).
    let n = (batch.len.wrapping_sub(1) & (FLOW_BATCH as u32 - 1)) + 1;
    batch.len = 0;
    let size = u64::from(n) * core::mem::size_of::<FlowRecord>() as u64;
    // The wake-up rule of `wakeup_flags`; `output` reserves after this query, so the
    // record's bytes are added to what is pending.
    let record = (8 + size + 7) & !7;
    let threshold = crossing_flags(
        FLOWS.query(BPF_RB_AVAIL_DATA) + record,
        wake_shift(cfg, wake::FLOWS),
        record,
    );
    // SAFETY: a helper without arguments (once per batch, not per flow start; the coarse
    // clock may lag a stalled tick).
    let flags = gap_flags(threshold, unsafe { bpf_ktime_get_ns() });
    // SAFETY: `n` records of the batch, all written (`len` counted them).
    let records = unsafe { core::slice::from_raw_parts(batch.records.as_ptr(), n as usize) };
    if FLOWS.output::<[FlowRecord]>(records, flags).is_err() {
        // Rare: its own lookup of the counters rather than an argument on every path here.
        if let Some(stats) = Stats::get() {
            stats.add(stat::FLOWS_FULL, u64::from(n));
            stats.add(stat::FLOW_STARTS, u64::from(n).wrapping_neg());
        }
    }
}

/// What kind of payload this packet carries, if userspace wants it.
#[inline(always)]
fn classify(ctx: &XdpContext, pkt: &Packet, cfg: &Config, stats: Stats) -> Option<u8> {
    if cfg.flags & config_flags::HANDOFF == 0 || pkt.fragment || pkt.payload_off == 0 {
        return None;
    }
    let is_tcp = pkt.proto == parse::IPPROTO_TCP;
    if (pkt.dst_port == 53 || pkt.src_port == 53) && (is_tcp || pkt.proto == parse::IPPROTO_UDP) {
        let (word, word2) = parse::payload_head(ctx, pkt.payload_off);
        // A bare TCP segment (handshake, ACK) carries no DNS message.
        if is_tcp && (word, word2) == (0, 0) {
            return None;
        }
        // Port 53 is no free pass: a datagram without a plausible DNS header (a tunnel, C2 on
        // 53) is not DNS; its trail hit is reported here like any datagram's. The test is
        // `Header::is_plausible` of xtrail_detect's DNS parser (keep them equal), so what
        // fails here fails in userspace (and replay) too: 12 bytes, one question, an
        // assigned opcode. What passes but does not parse, userspace reports.
        let seg = ((ctx.data_end() - ctx.data()) as u64).saturating_sub(pkt.payload_off as u64);
        if !is_tcp && !dns_plausible(word, word2, seg) {
            stats.add(stat::PORT53_NOT_DNS, 1);
            return None;
        }
        stats.add(stat::HANDOFF_DNS, 1);
        return Some(handoff::DNS);
    }
    if !is_tcp {
        // A QUIC v1/v2 client Initial (long header, fixed bit, Initial type): its
        // ClientHello's server name is readable by anyone.
        if pkt.proto != parse::IPPROTO_UDP {
            return None;
        }
        let (word, word2) = parse::payload_head(ctx, pkt.payload_off);
        let b0 = word >> 24;
        let version = (word << 8) | (word2 >> 24);
        let initial = b0 & 0xc0 == 0xc0
            && ((version == 1 && (b0 >> 4) & 3 == 0)
                || (version == 0x6b33_43cf && (b0 >> 4) & 3 == 1));
        if initial {
            stats.add(stat::HANDOFF_TLS, 1);
            return Some(handoff::TLS_CLIENT_HELLO);
        }
        return None;
    }
    let (word, word2) = parse::payload_head(ctx, pkt.payload_off);
    if word == 0 && word2 == 0 {
        return None;
    }
    let is_method = matches!(
        word,
        0x4745_5420 // "GET "
            | 0x504f_5354 // "POST"
            | 0x4845_4144 // "HEAD"
            | 0x5055_5420 // "PUT "
            | 0x4445_4c45 // "DELE"
            | 0x4f50_5449 // "OPTI"
            | 0x434f_4e4e // "CONN"
            | 0x5041_5443 // "PATC"
            | 0x5452_4143 // "TRAC"
    );
    if is_method || (word == 0x4854_5450 && http_port(pkt.src_port)) {
        // Requests on any port; responses ("HTTP") only from the HTTP ports.
        stats.add(stat::HANDOFF_HTTP, 1);
        return Some(if is_method {
            handoff::HTTP_REQUEST
        } else {
            handoff::HTTP_RESPONSE
        });
    }
    let seg = ((ctx.data_end() - ctx.data()) as u64).saturating_sub(pkt.payload_off as u64);
    // TLS handshake record (0x16 0x03 x), handshake type ClientHello (1).
    if word >> 16 == 0x1603 && (word2 >> 16) & 0xff == 0x01 {
        stats.add(stat::HANDOFF_TLS, 1);
        // A record longer than this segment: follow the flow (even if the hand-off below
        // fails: userspace then ignores the continuations it gets).
        let record = ((word & 0xff) << 8 | word2 >> 24) + 5;
        if u64::from(record) > seg {
            let (bucket, tag) = tls_flow_slot(pkt, cfg.hash_seed);
            // SAFETY: scalars only.
            unsafe { tls_track(bucket, tag, pkt.tcp_seq, record, seg) };
        }
        return Some(handoff::TLS_CLIENT_HELLO);
    }
    // A segment of a followed ClientHello, ruled out here for most segments by one read of
    // its flow's `TLS_FLOWS` bucket, without a clock read or a call.
    if let Some((bucket, way, tag)) = tls_followed(pkt, cfg.hash_seed) {
        let at = u64::from(bucket) | u64::from(way) << 16 | seg << 32;
        // SAFETY: scalars only.
        if unsafe { tls_continues(at, tag, pkt.tcp_seq) } == 1 {
            stats.add(stat::TLS_CONTINUATIONS, 1);
            return Some(handoff::TLS_CONTINUATION);
        }
    }
    // Requests that do not start a segment with a method but go to an HTTP port are not
    // parseable as requests; nothing to hand over.
    None
}

/// A UDP payload (`seg` bytes) that starts like a DNS message: at least the 12-byte header,
/// exactly one question, opcode QUERY, IQUERY, STATUS, NOTIFY or UPDATE (`word`, `word2`:
/// its first 8 bytes as from `payload_head`). Scalars only, and a function of its own: the
/// verifier walks it once instead of once per path through `process`.
#[inline(never)]
fn dns_plausible(word: u32, word2: u32, seg: u64) -> bool {
    // Opcodes 0, 1, 2, 4, 5 as a bit mask.
    let opcode_ok = (0b11_0111u32 >> ((word >> 11) & 0x0f)) & 1;
    let one_question = u32::from(word2 >> 16 == 1);
    let long_enough = u32::from(seg >= 12);
    opcode_ok & one_question & long_enough == 1
}

/// After a ClientHello's first segment (`seg` payload bytes, at sequence number `seq`) was
/// handed over, its record (`record` bytes, header included) longer than the segment:
/// remember the flow (`tls_flow_slot`'s `bucket` and `tag`) so that its next segments are
/// handed over too, up to `tls_flow::MAX_BYTES` and for `tls_flow::TIMEOUT_NS`. The window
/// starts and ends by the coarse clock (one clock, read by whichever CPU: no lag between the
/// start and the checks to allow for), to within the rounding to `units` (under ~1 ms). A
/// flow already followed (its first segment again) keeps its slot.
///
/// A global BPF function, like `hand_off`: verified once, on its own (the choice among a
/// bucket's slots branches); scalars only, the counters looked up here. Returns 0 (a
/// global function returns a scalar).
///
/// # Safety
/// None beyond a BPF function's: `unsafe` for the exported ABI only.
#[unsafe(no_mangle)]
#[inline(never)]
pub unsafe extern "C" fn tls_track(bucket: u32, tag: u64, seq: u32, record: u32, seg: u64) -> u32 {
    let Some(stats) = Stats::get() else {
        return 0;
    };
    let mut want = record;
    if want > tls_flow::MAX_BYTES {
        stats.add(stat::TLS_FLOWS_CAPPED, 1);
        want = tls_flow::MAX_BYTES;
        if u64::from(want) <= seg {
            return 0;
        }
    }
    let Some(b) = TLS_FLOWS.get_ptr_mut(bucket) else {
        return 0;
    };
    // SAFETY: a helper without arguments.
    let now = units(unsafe { bpf_ktime_get_coarse_ns() });
    // The slot to take: this flow's, else a free one, else one no longer live, else the one
    // that expires first. Passes that stop at their find, and one minimum, so that the
    // verifier's states stay few (ranking all at once in one pass verified ~25,000 more
    // instructions).
    // SAFETY (each read below): a bucket of an array map, its slot in bounds; other CPUs may
    // write it (volatile: as it is in memory now).
    let tag_at = |i: usize| unsafe { core::ptr::read_volatile(&raw const (*b).tags[i]) };
    let expiry_at = |i: usize| unsafe { core::ptr::read_volatile(&raw const (*b).expires[i]) };
    let pick = match (0..TLS_WAYS).find(|&i| tag_at(i) == tag) {
        Some(i) => i,
        None => match (0..TLS_WAYS).find(|&i| tag_at(i) == 0 || !tls_live(expiry_at(i), now)) {
            Some(i) => i,
            None => {
                let mut pick = 0;
                let mut least = u32::MAX;
                for i in 0..TLS_WAYS {
                    let left = expiry_at(i).wrapping_sub(now);
                    if left < least {
                        least = left;
                        pick = i;
                    }
                }
                stats.add(stat::TLS_FLOWS_EVICTED, 1);
                pick
            }
        },
    };
    let pick = pick & (TLS_WAYS - 1);
    // SAFETY: as above. The tag is written last: on x86, whose stores other CPUs see in
    // order, a reader that finds the new tag finds the new end and expiry (no barrier
    // elsewhere).
    unsafe {
        core::ptr::write_volatile(&raw mut (*b).end_seq[pick], seq.wrapping_add(want));
        core::ptr::write_volatile(
            &raw mut (*b).expires[pick],
            now.wrapping_add(units(tls_flow::TIMEOUT_NS)),
        );
        core::ptr::write_volatile(&raw mut (*b).tags[pick], tag);
    }
    stats.add(stat::TLS_FLOWS_TRACKED, 1);
    0
}

/// `TLS_FLOWS`'s bucket for the TCP flow of `pkt` and its tag there (never 0): a hash of
/// both addresses and ports (an IPv4 packet and one of its v4-mapped IPv6 form share a
/// slot).
#[inline(always)]
fn tls_flow_slot(pkt: &Packet, seed: u64) -> (u32, u64) {
    let mapped = |a: &[u32; 4]| a[0] == 0 && a[1] == 0 && a[2] == parse::V4_MAPPED_WORD;
    let v4 = mapped(&pkt.src) && mapped(&pkt.dst);
    let h = (addresses_hash(pkt, !v4, seed)
        ^ (u64::from(pkt.src_port) << 16 | u64::from(pkt.dst_port)))
    .wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
    let h = h ^ h >> 29;
    (h as u32 & (TLS_BUCKETS - 1), h | 1)
}

/// The slot of `TLS_FLOWS` that follows `pkt`'s flow, if one does: its bucket, the slot in
/// it and the flow's tag. One bucket read (one line) per data segment.
#[inline(always)]
fn tls_followed(pkt: &Packet, seed: u64) -> Option<(u32, u32, u64)> {
    let (bucket, tag) = tls_flow_slot(pkt, seed);
    let b = TLS_FLOWS.get_ptr(bucket)?;
    // SAFETY: a bucket of an array map, read while other CPUs may write it (volatile: each
    // tag as it is in memory now).
    let tags = unsafe { core::ptr::read_volatile(&raw const (*b).tags) };
    let way = tags.iter().position(|&t| t == tag)?;
    Some((bucket, way as u32, tag))
}

/// Whether a TCP segment (at sequence number `seq`) continues the ClientHello followed
/// under `tag` (see `tls_track`) in the `TLS_FLOWS` slot `at` names (`tls_followed`'s bucket
/// in bits 0-15, its slot in bits 16-31, the segment's payload bytes in bits 32-63); forgets
/// the flow once the segment reaches the record's end, or when it expired. Time is the
/// coarse clock, read once here. 1 for a continuation, else 0.
///
/// A global BPF function, like `tls_track` (the slot found is a different constant on each
/// path of `tls_followed`: verified in its caller's states, this and what follows it were
/// verified once per slot); scalars only, the counters looked up here.
///
/// # Safety
/// None beyond a BPF function's: `unsafe` for the exported ABI only.
#[unsafe(no_mangle)]
#[inline(never)]
pub unsafe extern "C" fn tls_continues(at: u64, tag: u64, seq: u32) -> u32 {
    let seg = at >> 32;
    let Some(stats) = Stats::get() else {
        return 0;
    };
    if seg == 0 {
        return 0;
    }
    let Some(b) = TLS_FLOWS.get_ptr_mut(at as u32 & 0xffff) else {
        return 0;
    };
    let way = (at >> 16) as usize & (TLS_WAYS - 1);
    // The coarse clock read here (not through this CPU's cached reading in `PACKET`, which
    // its caller holds): a continuation's candidates only.
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // SAFETY: a bucket of an array map, its slot in bounds (masked); other CPUs may write it
    // (volatile: as it is in memory now).
    let (t, end_seq, expires) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*b).tags[way]),
            core::ptr::read_volatile(&raw const (*b).end_seq[way]),
            core::ptr::read_volatile(&raw const (*b).expires[way]),
        )
    };
    // Another flow took the slot since it was found.
    if t != tag {
        return 0;
    }
    // Sequence arithmetic modulo 2^32: bytes left before the record's end (more than a
    // record's bound: not this flow's record).
    let left = end_seq.wrapping_sub(seq) as i32;
    let expired = !tls_live(expires, units(now)) || left > tls_flow::MAX_BYTES as i32;
    if expired || left <= 0 || seg >= left as u64 {
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(&raw mut (*b).tags[way], 0) };
        if expired {
            stats.add(stat::TLS_FLOWS_EXPIRED, 1);
            return 0;
        }
        return u32::from(left > 0);
    }
    1
}

#[inline(always)]
fn http_port(port: u16) -> bool {
    let word = HTTP_PORTS.get(u32::from(port) >> 6).copied().unwrap_or(0);
    (word >> (port & 63)) & 1 == 1
}

/// `hand_off`'s answer when the packet was not handed over.
const NOT_HANDED_OFF: u32 = u32::MAX;

/// Mirror mode with sockets: redirect to this queue's AF_XDP socket (a packet that fits a
/// socket's frame), after an `XskMeta` put before the frame. Otherwise: copy the first bytes
/// to the payload ring buffer. `stamp`: the `addr_check` verdict in bits 0-7 and the
/// `TRAIL_SET` value's epoch bits. Returns the verdict for the packet handed over,
/// or `NOT_HANDED_OFF`.
///
/// A global BPF function (exported, so its BTF linkage is global): the kernel verifies it
/// once, on its own; as a static one it was verified again for each state of its caller at
/// the call (43 times: 53,140 of the 79,263 instructions its log listed, 2026-12-06). It
/// takes the context and scalars (a pointer to memory would need a null check here) and
/// looks the configuration and counters up itself; the verifier knows nothing of what it
/// returns.
///
/// # Safety
/// `raw` is the context of the XDP run that calls it.
#[unsafe(no_mangle)]
#[inline(never)]
pub unsafe extern "C" fn hand_off(raw: *mut xdp_md, kind: u8, stamp: u32) -> u32 {
    let ctx = &XdpContext::new(raw);
    let (Some(cfg), Some(stats)) = (CONFIG.get(0), Stats::get()) else {
        return NOT_HANDED_OFF;
    };
    let addrs = stamp as u8;
    let len = (ctx.data_end() - ctx.data()) as u64;
    // A packet longer than a socket's frame (with the meta before it) would be dropped
    // there: it is copied below.
    if cfg.mode == mode::MIRROR
        && cfg.flags & config_flags::XSK != 0
        && len + XSK_META_LEN as u64 <= u64::from(XSK_FRAME_ROOM)
    {
        // SAFETY: the context pointer is valid for this run.
        let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
        let queue = ctx.rx_queue_index();
        // A queue without a socket slot is never redirected (the kernel would refuse the
        // frame at a socket bound to another queue): it goes by ring-buffer copy below.
        if let (Some(slot), true) = (
            // SAFETY: the value is copied out at once, so no reference outlives a concurrent
            // update.
            unsafe { IFSLOTS.get(&ifindex) }.copied(),
            queue < cfg.xsk_queues,
        ) {
            let index = slot * cfg.xsk_queues + queue;
            // Without room before the frame (a driver that gives less headroom than
            // XDP_PACKET_HEADROOM), it goes by copy below.
            if put_meta(ctx, addrs, (stamp >> trail_set::EPOCH_SHIFT) as u8, kind) {
                return match XSKS.redirect(index, u64::from(xdp_action::XDP_DROP)) {
                    Ok(v) => {
                        stats.add(stat::REDIRECTED, 1);
                        v
                    }
                    Err(_) => {
                        // The frame as it came, for whatever the caller does with it.
                        // SAFETY: the context of this run; gives back the bytes `put_meta` took.
                        unsafe { bpf_xdp_adjust_head(ctx.ctx, XSK_META_LEN as i32) };
                        stats.add(stat::HANDOFF_FAILED, 1);
                        NOT_HANDED_OFF
                    }
                };
            }
        }
    }
    let cap = if len > PAYLOAD_CAP as u64 {
        PAYLOAD_CAP as u32
    } else {
        len as u32
    };
    // `cap` is in [0, CAP]; `((cap - 1) & (CAP - 1)) + 1` is in [1, CAP] in a form the
    // verifier tracks (a mask), and equals `cap` whenever `cap` is non-zero.
    let n = (cap.wrapping_sub(1) & (PAYLOAD_CAP as u32 - 1)) + 1;
    let header = PayloadHeader {
        // SAFETY: a helper without arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        // SAFETY: the context pointer is valid for this run.
        ifindex: unsafe { (*ctx.ctx).ingress_ifindex },
        rx_queue: ctx.rx_queue_index(),
        pkt_len: len as u32,
        cap_len: n,
        kind,
        addrs,
        _pad: [0; 6],
    };
    if !reserve_class(ctx, &header, n, wake_shift(cfg, wake::PAYLOADS)) {
        stats.add(stat::HANDOFF_FAILED, 1);
        return NOT_HANDED_OFF;
    }
    stats.add(stat::COPIED, 1);
    // A copy leaves the packet's fate to the mode: pass (inline) or drop (mirror).
    idle_verdict(cfg)
}

/// Moves the frame's start back by `XSK_META_LEN` bytes and writes an `XskMeta` there
/// (every byte: the headroom is not zeroed); false, the frame untouched, when the driver
/// left no room.
#[inline(always)]
fn put_meta(ctx: &XdpContext, addrs: u8, epoch: u8, kind: u8) -> bool {
    // SAFETY: the context of this run; a negative delta grows the packet at its front.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(XSK_META_LEN as i32)) } != 0 {
        return false;
    }
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + XSK_META_LEN > end {
        // Not reached (the frame had an Ethernet header); the verifier wants the check.
        // SAFETY: as above, giving the bytes back.
        unsafe { bpf_xdp_adjust_head(ctx.ctx, XSK_META_LEN as i32) };
        return false;
    }
    let p = start as *mut u8;
    // SAFETY: bytes [start, start + XSK_META_LEN) are inside the packet (checked above);
    // unaligned stores, which packet memory allows on the architectures XDP runs on here.
    // `XskMeta`'s fields at their offsets (`xsk_meta`), then its nine pad bytes zeroed.
    unsafe {
        core::ptr::write_unaligned(p.cast::<u32>(), XSK_META_MAGIC);
        core::ptr::write_unaligned(p.add(xsk_meta::ADDRS), addrs);
        core::ptr::write_unaligned(p.add(xsk_meta::EPOCH), epoch);
        core::ptr::write_unaligned(p.add(xsk_meta::KIND), kind);
        core::ptr::write_unaligned(p.add(xsk_meta::PAD), 0u8);
        core::ptr::write_unaligned(p.add(xsk_meta::PAD + 1).cast::<u64>(), 0);
    }
    true
}

/// Reserves the smallest size class that holds `n` frame bytes (as
/// `xtrail_common::payload_class`) and copies them in place. (Measured against staging the
/// record in a per-CPU slot and `bpf_ringbuf_output` of its exact length: that costs a
/// second copy, ~15-20 ns more per DNS packet by BPF_PROG_TEST_RUN, for records ~25%
/// smaller.)
#[inline(always)]
fn reserve_class(ctx: &XdpContext, header: &PayloadHeader, n: u32, shift: u32) -> bool {
    if n <= 128 {
        reserve_in::<128>(ctx, header, n, shift)
    } else if n <= 256 {
        reserve_in::<256>(ctx, header, n, shift)
    } else if n <= 512 {
        reserve_in::<512>(ctx, header, n, shift)
    } else if n <= 1024 {
        reserve_in::<1024>(ctx, header, n, shift)
    } else {
        reserve_in::<PAYLOAD_CAP>(ctx, header, n, shift)
    }
}

/// Writes one record of class `N` (`n` <= `N` frame bytes) into a reserved `PAYLOADS` slot.
#[inline(always)]
fn reserve_in<const N: usize>(
    ctx: &XdpContext,
    header: &PayloadHeader,
    n: u32,
    shift: u32,
) -> bool {
    let Some(mut entry) = PAYLOADS.reserve::<PayloadRecord<N>>(0) else {
        return false;
    };
    let r = entry.as_mut_ptr();
    // `n` is in [1, N] (N a power of two), in a form the verifier tracks; read through a
    // volatile load so that the compiler cannot drop the mask for the caller's branch (which
    // the verifier does not connect to this register).
    // SAFETY: a read of a local.
    let n = unsafe { core::ptr::read_volatile(&n) };
    let n = (n.wrapping_sub(1) & (N as u32 - 1)) + 1;
    // SAFETY: `r` points at a reserved PayloadRecord<N>; `data` holds N bytes, `n` at most N.
    let loaded = unsafe {
        write_header(&mut (*r).header, header, n);
        bpf_xdp_load_bytes(ctx.ctx, 0, (*r).data.as_mut_ptr().cast(), n)
    };
    if loaded != 0 {
        entry.discard(0);
        return false;
    }
    let threshold = wakeup_flags(&PAYLOADS, shift, ring_bytes::<PayloadRecord<N>>());
    entry.submit(gap_flags(threshold, header.ts_ns));
    true
}

/// `*to = *header` with `cap_len` `n`, field by field: the copy of a whole header compiles
/// to a call to a byte-wise `memset` for the six zero bytes of `_pad` (a BPF call and a
/// return, ~10 ns per hand-off where returns go through a return thunk).
#[inline(always)]
fn write_header(to: &mut PayloadHeader, header: &PayloadHeader, n: u32) {
    to.ts_ns = header.ts_ns;
    to.ifindex = header.ifindex;
    to.rx_queue = header.rx_queue;
    to.pkt_len = header.pkt_len;
    to.cap_len = n;
    to.kind = header.kind;
    to.addrs = header.addrs;
    let pad = to._pad.as_mut_ptr();
    // SAFETY: `_pad` is bytes 26 to 31 of an 8-aligned header: a 2-aligned u16 at 26 and a
    // 4-aligned u32 at 28, both inside it; volatile so that LLVM does not merge them back
    // into a `memset`.
    unsafe {
        core::ptr::write_volatile(pad.cast::<u16>(), 0);
        core::ptr::write_volatile(pad.add(2).cast::<u32>(), 0);
    }
}

/// Suppresses repeats, then writes the hit to the ring buffer. A hit is recorded in
/// `SUPPRESS` only once its ring-buffer slot is reserved: a hit lost to a full ring must not
/// suppress its repeats, or the loss would hide them for the whole window.
///
/// A repeat is first looked for (by `process`, before the call) in this CPU's `hits_seen`,
/// which keeps the whole key and the time `SUPPRESS` holds for a hit this CPU reported or
/// found suppressed (by the coarse clock, not later than it): while that time is
/// `HITS_SEEN_MARGIN_NS` or more inside the window the repeat is suppressed without this
/// call, the clock read and the `SUPPRESS` lookup. It
/// suppresses nothing `SUPPRESS` would report but a repeat whose slot another hit took inside
/// its window, or one read by a coarse clock that lags by more than the margin (see
/// `HITS_SEEN_MARGIN_NS`). By test run, a suppressed repeat of a SYN to an IP trail: 134-244
/// ns net before, 62-123 with these slots (medians 217 and 117, 3 alternating pairs; then
/// with `SUPPRESS` an LRU hash map).
///
/// A global BPF function: verified once, on its own, not once per state of `process` at
/// the call (with the suppression slots below inlined there, ~123,000 instructions were
/// verified in all). It takes the context and scalars (`hit`: `Hit`'s fields and the
/// enforce flag packed, as `process` packs them; `len`: the frame's length; `seen`: the
/// hit's `hits_seen` slot and `coarse`: the coarse time, as `process` found them) and looks
/// the configuration, the counters and this CPU's `PACKET` slot (the packet its caller
/// parsed and the CPU's state) up itself.
///
/// # Safety
/// `raw` is the context of the XDP run that calls it, the run whose packet this CPU's
/// `PACKET` slot holds; the caller does not use its references into that slot after the
/// call.
#[unsafe(no_mangle)]
#[inline(never)]
pub unsafe extern "C" fn report(
    raw: *mut xdp_md,
    hit: u64,
    len: u64,
    seen: u32,
    coarse: u64,
) -> u32 {
    let ctx = &XdpContext::new(raw);
    let (Some(cfg), Some(stats), Some(slot)) = (CONFIG.get(0), Stats::get(), PACKET.get_ptr_mut(0))
    else {
        return 0;
    };
    // SAFETY: this CPU's `PACKET` slot, as `process` left it for this run; its references
    // into the slot are not used again (see the contract).
    let (pkt, state) = unsafe { (&(*slot).pkt, &mut (*slot).state) };
    let enforce = (hit >> 56) & 1 == 1;
    let hit = Hit {
        trail_id: hit as u32,
        kind: (hit >> 32) as u8,
        side: (hit >> 40) as u8,
        set: (hit >> 48) as u8,
    };
    // Masked in bounds (the verifier knows nothing of an argument).
    let i = seen as usize & (HITS_SEEN_SLOTS - 1);
    let rest = hit_rest(pkt, hit.trail_id);
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let (bucket, tag) = suppress_slot(pkt, rest, cfg.hash_seed);
    if cfg.suppress_ns > 0 {
        // SAFETY: scalars only.
        let last = unsafe { suppress_last(bucket, tag) };
        // `last` after `now`: another CPU reported it since `now` was read.
        if last != NOT_SUPPRESSED && (last >= now || now - last < cfg.suppress_ns) {
            // The earlier of the two: the coarse clock may not have reached a report made
            // in this tick.
            state.hits_seen[i].set(pkt, rest, last.min(coarse));
            stats.add(stat::SUPPRESSED, 1);
            return 0;
        }
    }
    // Written in place in the ring buffer: a HitRecord on the stack would not fit beside
    // the parse state in 512 bytes.
    match HITS.reserve::<HitRecord>(0) {
        Some(mut entry) => {
            if cfg.suppress_ns > 0 {
                // SAFETY: scalars only.
                unsafe { suppress_record(bucket, tag, now) };
                // The coarse time, not later than `now`.
                state.hits_seen[i].set(pkt, rest, coarse);
            }
            let r = entry.as_mut_ptr();
            // SAFETY: `r` points at a reserved, writable HitRecord-sized slot.
            unsafe {
                (*r).ts_ns = now;
                (*r).ifindex = (*ctx.ctx).ingress_ifindex;
                (*r).rx_queue = ctx.rx_queue_index();
                (*r).trail_id = hit.trail_id;
                (*r).src = bytes(&pkt.src);
                (*r).dst = bytes(&pkt.dst);
                (*r).src_port = pkt.src_port;
                (*r).dst_port = pkt.dst_port;
                (*r).family = pkt.family;
                (*r).proto = pkt.proto;
                (*r).tcp_flags = pkt.tcp_flags;
                (*r).kind = hit.kind;
                (*r).side = hit.side;
                (*r).action = if enforce { action::DROP } else { action::PASS };
                (*r).icmp_type = pkt.icmp_type;
                (*r).trail_set = hit.set;
                (*r).pkt_len = len as u32;
            }
            let shift = wake_shift(cfg, wake::HITS);
            let threshold = wakeup_flags(&HITS, shift, ring_bytes::<HitRecord>());
            entry.submit(gap_flags(threshold, now));
            stats.add(stat::REPORTED, 1);
        }
        None => stats.add(stat::RINGBUF_FULL, 1),
    }
    0
}

/// A hit's trail, destination port and protocol in one word (`HitSeen::rest`).
#[inline(always)]
fn hit_rest(pkt: &Packet, trail_id: u32) -> u64 {
    u64::from(trail_id) | u64::from(pkt.dst_port) << 32 | u64::from(pkt.proto) << 48
}

/// `suppress_last`'s answer for a hit `SUPPRESS` does not hold.
const NOT_SUPPRESSED: u64 = u64::MAX;

/// `SUPPRESS`'s bucket for the hit of `pkt` whose trail, destination port and protocol are
/// `rest` (see `HitSeen::rest`), and its tag there (odd): two multiplicative hashes of one
/// 64-bit mix of the fields, so that hits of one bucket differ in all of their tags' bits.
#[inline(always)]
fn suppress_slot(pkt: &Packet, rest: u64, seed: u64) -> (u32, u64) {
    let x = addresses_hash(pkt, pkt.family != 4, seed) ^ rest;
    let bucket = (x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 50) as u32 & (SUPPRESS_BUCKETS - 1);
    let h = x.wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
    (bucket, (h ^ h >> 29) | 1)
}

/// The report time `SUPPRESS`'s `bucket` holds for the hit tagged `tag`, or
/// `NOT_SUPPRESSED` (also when the slot changed hands while it was read).
///
/// A global BPF function (scalars only): verified once, not once per state of its caller
/// for each slot it may find.
///
/// # Safety
/// None beyond a BPF function's: `unsafe` for the exported ABI only.
#[unsafe(no_mangle)]
#[inline(never)]
pub unsafe extern "C" fn suppress_last(bucket: u32, tag: u64) -> u64 {
    let Some(b) = SUPPRESS.get_ptr(bucket) else {
        return NOT_SUPPRESSED;
    };
    // SAFETY (each read): a bucket of an array map, its slot in bounds; other CPUs may write
    // it (volatile: as it is in memory now, each read once, in this order).
    let tag_at = |i: usize| unsafe { core::ptr::read_volatile(&raw const (*b).tags[i]) };
    let Some(i) = (0..SUPPRESS_WAYS).find(|&i| tag_at(i) == tag) else {
        return NOT_SUPPRESSED;
    };
    // SAFETY: as above.
    let time = unsafe { core::ptr::read_volatile(&raw const (*b).times[i]) };
    if tag_at(i) == tag {
        time
    } else {
        NOT_SUPPRESSED
    }
}

/// Records a report of the hit tagged `tag` at `now` in `SUPPRESS`'s `bucket`: in the hit's
/// own slot, else a free one, else the oldest (see `SUPPRESS` for the order of the writes).
/// Returns 0 (a global function returns a scalar).
///
/// # Safety
/// None beyond a BPF function's: `unsafe` for the exported ABI only.
#[unsafe(no_mangle)]
#[inline(never)]
pub unsafe extern "C" fn suppress_record(bucket: u32, tag: u64, now: u64) -> u32 {
    let Some(b) = SUPPRESS.get_ptr_mut(bucket) else {
        return 0;
    };
    // Passes that stop at their find, and one minimum (few verifier states, as in
    // `tls_track`).
    // SAFETY (each read): as in `suppress_last`.
    let tag_at = |i: usize| unsafe { core::ptr::read_volatile(&raw const (*b).tags[i]) };
    let pick = match (0..SUPPRESS_WAYS).find(|&i| tag_at(i) == tag) {
        Some(i) => i,
        None => match (0..SUPPRESS_WAYS).find(|&i| tag_at(i) == 0) {
            Some(i) => i,
            None => {
                let mut pick = 0;
                let mut oldest = u64::MAX;
                for i in 0..SUPPRESS_WAYS {
                    // SAFETY: as above.
                    let t = unsafe { core::ptr::read_volatile(&raw const (*b).times[i]) };
                    if t < oldest {
                        oldest = t;
                        pick = i;
                    }
                }
                pick
            }
        },
    } & (SUPPRESS_WAYS - 1);
    // SAFETY: as above, the slot index masked in bounds.
    unsafe {
        core::ptr::write_volatile(&raw mut (*b).tags[pick], 0);
        core::ptr::write_volatile(&raw mut (*b).times[pick], now);
        core::ptr::write_volatile(&raw mut (*b).tags[pick], tag);
    }
    0
}

struct Hit {
    trail_id: u32,
    kind: u8,
    side: u8,
    /// The map set that matched.
    set: u8,
}

/// Destination first, then source, as Maltrail does, in the trail set `set` selects.
#[inline(always)]
fn lookup_packet(pkt: &Packet, set: u32, stats: Stats) -> Option<Hit> {
    let index = set & trail_set::INDEX;
    // The prefilter's answers for the two addresses as read here (`None`: not read), so that
    // `lookup_addr` does not read a word again.
    let (mut dst_has, mut src_has) = (None, None);
    if pkt.family == 4 && set & config_flags::PREFILTER4 != 0 {
        let dst = prefilter_has(pkt.dst[3], index);
        dst_has = Some(dst);
        if !dst {
            // Most IPv4 traffic: both /24s clear, one counter update and done.
            if !prefilter_has(pkt.src[3], index) {
                stats.add(stat::PREFILTER_SKIPS, 2);
                return None;
            }
            src_has = Some(true);
        }
    }
    if let Some((trail_id, kind)) = lookup_addr(&pkt.dst, pkt.dst_port, pkt, set, stats, dst_has) {
        return Some(Hit {
            trail_id,
            kind,
            side: side::DST,
            set: index as u8,
        });
    }
    if let Some((trail_id, kind)) = lookup_addr(&pkt.src, pkt.src_port, pkt, set, stats, src_has) {
        return Some(Hit {
            trail_id,
            kind,
            side: side::SRC,
            set: index as u8,
        });
    }
    None
}

/// The address words as the byte array the maps use.
#[inline(always)]
fn bytes(words: &[u32; 4]) -> [u8; 16] {
    // SAFETY: [u32; 4] and [u8; 16] have the same size and every bit pattern is valid.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(*words) }
}

/// One address in the trail set `set` (the `TRAIL_SET` value: index and flags);
/// `prefiltered`: the prefilter's answer for it when the caller read it already.
#[inline(always)]
fn lookup_addr(
    words: &[u32; 4],
    port: u16,
    pkt: &Packet,
    set: u32,
    stats: Stats,
    prefiltered: Option<bool>,
) -> Option<(u32, u8)> {
    let index = set & trail_set::INDEX;
    let has_ports = pkt.proto == parse::IPPROTO_TCP || pkt.proto == parse::IPPROTO_UDP;
    // An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is looked up as the IPv4 address, as
    // replay does (`IpTrails::lookup`): IPv4 trails are stored only in the IPv4 maps.
    let v4_mapped = words[0] == 0 && words[1] == 0 && words[2] == parse::V4_MAPPED_WORD;
    if pkt.family == 4 || v4_mapped {
        let v4 = TrailKey4 {
            set: index,
            addr: words[3].to_ne_bytes(),
        };
        let bits = |shift: u32| (set >> shift) & trail_set::BITS_MASK;
        if set & config_flags::PREFILTER4 != 0
            && !prefiltered.unwrap_or_else(|| prefilter_has(words[3], index))
        {
            stats.add(stat::PREFILTER_SKIPS, 1);
            return None;
        }
        if has_ports && !pkt.fragment && set & config_flags::HAVE_IPPORT != 0 {
            let key = trail_table::ipport_key(words[3], port);
            let bits = bits(trail_set::PORT_BITS_SHIFT);
            if let Some(id) = table_get(&IPPORT4_TABLE, key, bits, index) {
                return Some((id, trail_kind::IPPORT));
            }
        }
        let key = trail_table::v4_key(words[3]);
        if let Some(id) = table_get(&IPV4_TABLE, key, bits(trail_set::V4_BITS_SHIFT), index) {
            return Some((id, trail_kind::IP));
        }
        if set & config_flags::HAVE_CIDR4 != 0 {
            if let Some(id) = IPV4_CIDRS.get(&Key::new(64, v4)) {
                return Some((*id, trail_kind::CIDR));
            }
        }
    } else {
        if has_ports && !pkt.fragment && set & config_flags::HAVE_IPPORT != 0 {
            let key = IpPortKey {
                addr: bytes(words),
                port,
                set: index as u8,
                _pad: 0,
            };
            if let Some(id) = unsafe { IPPORT_TRAILS.get(&key) } {
                return Some((*id, trail_kind::IPPORT));
            }
        }
        let v6 = TrailKey6 {
            set: index,
            addr: bytes(words),
        };
        if set & config_flags::HAVE_IPV6 != 0 {
            if let Some(id) = unsafe { IPV6_TRAILS.get(&v6) } {
                return Some((*id, trail_kind::IP));
            }
        }
        if set & config_flags::HAVE_CIDR6 != 0 {
            if let Some(id) = IPV6_CIDRS.get(&Key::new(160, v6)) {
                return Some((*id, trail_kind::CIDR));
            }
        }
    }
    None
}

/// Whether set `index`'s prefilter has the bit of the /24 of `addr` (network order, as
/// loaded from the packet): an IPv4 trail may match it.
#[inline(always)]
fn prefilter_has(addr: u32, index: u32) -> bool {
    let base = index * PREFILTER_SET_WORDS;
    // Network order: the first two bytes are the /16, the first three the /24.
    let host = u32::from_be(addr);
    let slash16 = host >> 16;
    let summary = IPV4_PREFILTER
        .get(base + PREFILTER_WORDS + (slash16 >> 6))
        .copied()
        .unwrap_or(0);
    if (summary >> (slash16 & 63)) & 1 == 0 {
        return false;
    }
    let slash24 = host >> 8;
    let word = IPV4_PREFILTER
        .get(base + (slash24 >> 6))
        .copied()
        .unwrap_or(0);
    (word >> (slash24 & 63)) & 1 == 1
}

/// The label of `key` in set `index`'s cuckoo table of `2^bits` buckets: at most two array
/// lookups (inlined by the verifier) and ten compares.
#[inline(always)]
fn table_get(table: &Array<trail_table::Bucket>, key: u64, bits: u32, index: u32) -> Option<u32> {
    let first = trail_table::bucket(key, bits, 0) as u32;
    if let Some(l) = slot_of(table.get((first << 1) | index)?, key) {
        return Some(l);
    }
    let second = trail_table::bucket(key, bits, 1) as u32;
    slot_of(table.get((second << 1) | index)?, key)
}

/// The label in the slot of `bucket` that holds `key`. Each match returns at once: the
/// verifier walks one path per slot. (Per-slot match flags combined without branches
/// were compiled to a branch per slot anyway, each with its outcome a known constant:
/// 2^10 paths per table and over the verifier's limit.)
#[inline(always)]
fn slot_of(bucket: &trail_table::Bucket, key: u64) -> Option<u32> {
    let mut s = 0;
    while s < trail_table::SLOTS {
        // One 64-bit compare per slot.
        if (u64::from(bucket[3 * s + 1]) << 32 | u64::from(bucket[3 * s])) == key {
            return Some(bucket[3 * s + 2]);
        }
        s += 1;
    }
    None
}

/// On the host this crate is an empty binary; the real program is built for BPF.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
