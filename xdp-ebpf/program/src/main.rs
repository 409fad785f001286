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
    bindings::xdp_action,
    helpers::{bpf_ktime_get_ns, bpf_xdp_load_bytes},
    macros::{map, xdp},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, XskMap},
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use parse::Packet;
use xtrail_common::{
    action, config_flags, handoff, mode, side, stat, tls_flow, trail_kind, trail_set, Config,
    FlowRecord, HitRecord, IpPortKey, PayloadRecord, SuppressKey, TrailKey4, TrailKey6,
    FLOW_CACHE_SLOTS, HTTP_PORT_WORDS, PAYLOAD_CAP, PREFILTER_WORDS, XSK_MAX_IFACES,
};

/// Runtime configuration (element 0).
#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Per-CPU counters, indexed by `xtrail_common::stat`.
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

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

/// IPv4 address trails to trail id. Sized by userspace.
#[map]
static IPV4_TRAILS: HashMap<TrailKey4, u32> = HashMap::with_max_entries(1, BPF_F_NO_PREALLOC);

/// IPv6 address trails to trail id.
#[map]
static IPV6_TRAILS: HashMap<TrailKey6, u32> = HashMap::with_max_entries(1, BPF_F_NO_PREALLOC);

/// IPv4 CIDR trails (prefix lengths count the 32 bits of the set index).
#[map]
static IPV4_CIDRS: LpmTrie<TrailKey4, u32> = LpmTrie::with_max_entries(1, 0);

/// IPv6 CIDR trails.
#[map]
static IPV6_CIDRS: LpmTrie<TrailKey6, u32> = LpmTrie::with_max_entries(1, 0);

/// IP:port trails (IPv4 as v4-mapped IPv6).
#[map]
static IPPORT_TRAILS: HashMap<IpPortKey, u32> = HashMap::with_max_entries(1, BPF_F_NO_PREALLOC);

/// Per set, one bit per IPv4 /24 that any IPv4 trail (address, CIDR or IP:port) falls in: a
/// clear bit lets clean traffic skip every hash and trie lookup for that address. Set 1's
/// bitmap follows set 0's.
#[map]
static IPV4_PREFILTER: Array<u64> = Array::with_max_entries(2 * PREFILTER_WORDS, 0);

/// `BPF_F_NO_PREALLOC`: hash map elements are allocated as they are inserted.
const BPF_F_NO_PREALLOC: u32 = 1;

/// Last report time of each recent hit, to suppress repeats within the window.
#[map]
static SUPPRESS: LruHashMap<SuppressKey, u64> = LruHashMap::with_max_entries(65536, 0);

/// Trail hits for userspace.
#[map]
static HITS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Inline mode: copies of the first bytes of DNS, HTTP and TLS packets for userspace.
#[map]
static PAYLOADS: RingBuf = RingBuf::with_byte_size(1 << 24, 0);

/// Mirror mode: one AF_XDP socket per interface slot and receive queue.
#[map]
/// Sized at load to interfaces × `Config::xsk_queues`.
static XSKS: XskMap = XskMap::with_max_entries(XSK_MAX_IFACES, 0);

/// Flow starts for the scan heuristics.
#[map]
static FLOWS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Recently sent flow starts, per CPU, direct-mapped by a hash of (source, destination,
/// port, protocol): each slot holds the hash's upper half and the send time in seconds. An
/// array slot costs one memory access where an LRU hash update takes locks; a collision only
/// means a flow start is sent again. Stored as blocks of `FLOW_SEEN_BLOCK` slots: a per-CPU
/// array allocates each element on its own, and 65,536 one-word elements took 60-70 ms to
/// create at start; 16 elements of 32 KiB (the largest per-CPU value) take well under 1 ms.
#[map]
static FLOW_SEEN: PerCpuArray<[u64; FLOW_SEEN_BLOCK]> =
    PerCpuArray::with_max_entries(FLOW_CACHE_SLOTS / FLOW_SEEN_BLOCK as u32, 0);

/// Slots per `FLOW_SEEN` element (a power of two; 32 KiB).
const FLOW_SEEN_BLOCK: usize = 4096;

/// A TCP flow (one direction) whose ClientHello record is longer than its first segment.
#[repr(C)]
#[derive(Clone, Copy)]
struct TlsFlowKey {
    src: [u8; 16],
    dst: [u8; 16],
    src_port: u16,
    dst_port: u16,
}

/// Where such a flow's ClientHello ends, and until when it is followed.
#[repr(C)]
#[derive(Clone, Copy)]
struct TlsFlow {
    /// Sequence number just past the record (at most `tls_flow::MAX_BYTES` from its start).
    end_seq: u32,
    _pad: u32,
    expires_ns: u64,
}

/// Flows whose next segments are handed over until their ClientHello is complete, so that
/// userspace can reassemble a ClientHello that spans segments (post-quantum key shares make
/// it ~1.8 KB: two segments).
#[map]
static TLS_FLOWS: LruHashMap<TlsFlowKey, TlsFlow> =
    LruHashMap::with_max_entries(tls_flow::SLOTS, 0);

/// Until when (`bpf_ktime_get_ns`) any `TLS_FLOWS` entry may be live: while none can be,
/// TCP segments skip the map lookup.
#[map]
static TLS_FLOWS_UNTIL: Array<u64> = Array::with_max_entries(1, 0);

/// The packet being processed, per CPU (see `parse::parse_into`).
#[map]
static PACKET: PerCpuArray<Packet> = PerCpuArray::with_max_entries(1, 0);

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

/// Waking the reader on every record costs microseconds; wake it only once this much is
/// pending (userspace also polls with a short timeout, which bounds the latency).
#[inline(always)]
fn wakeup_flags(ring: &RingBuf, threshold: u64) -> u64 {
    if ring.query(BPF_RB_AVAIL_DATA) >= threshold {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

#[inline(always)]
fn count(index: u32, n: u64) {
    if let Some(p) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while this program runs.
        unsafe { *p += n };
    }
}

#[xdp]
pub fn xtrail_xdp(ctx: XdpContext) -> u32 {
    let cfg = match CONFIG.get(0) {
        Some(c) => *c,
        None => Config::default(),
    };
    // Once per packet: every lookup of this packet uses the same set.
    let set = TRAIL_SET.get(0).copied().unwrap_or(0);
    let verdict = process(&ctx, &cfg, set);
    // Redirects are counted where they happen (`redirected`).
    if verdict == xdp_action::XDP_DROP {
        count(stat::DROP, 1);
    } else if verdict == xdp_action::XDP_PASS {
        count(stat::PASS, 1);
    }
    verdict
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
fn process(ctx: &XdpContext, cfg: &Config, set: u32) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    count(stat::PACKETS, 1);
    count(stat::BYTES, len);
    let Some(slot) = PACKET.get_ptr_mut(0) else {
        return idle_verdict(cfg);
    };
    // SAFETY: this CPU's slot of a per-CPU array; nothing else uses it during this run.
    let status = parse::parse_into(ctx.ctx, unsafe { &mut *slot });
    // SAFETY: as above; read back from map memory, so the verifier knows nothing of it.
    let pkt: &Packet = unsafe { &*slot };
    match status {
        0 => {}
        1 => {
            count(stat::NON_IP, 1);
            return idle_verdict(cfg);
        }
        _ => {
            count(stat::PARSE_ERRORS, 1);
            if cfg.log_level > 0 {
                debug!(ctx, "xtrail: malformed frame, {} bytes", len);
            }
            return idle_verdict(cfg);
        }
    }
    if pkt.fragment {
        count(stat::FRAGMENTS, 1);
    }
    if cfg.flags & config_flags::FLOWS != 0 && !pkt.fragment && pkt.is_flow_start() {
        flow_start(pkt, cfg);
    }
    let hit = lookup_packet(pkt, set);
    let enforce = cfg.mode == mode::INLINE && cfg.flags & config_flags::ENFORCE != 0;
    let mut verdict = idle_verdict(cfg);
    if hit.is_some() {
        count(stat::HITS, 1);
        if enforce {
            count(stat::ENFORCED, 1);
            verdict = xdp_action::XDP_DROP;
        }
    }
    // Names live in payloads: hand DNS, HTTP and TLS ClientHello packets to userspace.
    // An enforced drop is not handed over: the packet goes nowhere.
    let mut dns_handed_off = false;
    if !(enforce && hit.is_some()) {
        if let Some(kind) = classify(ctx, pkt, cfg) {
            if let Some(v) = hand_off(ctx, cfg, kind, len) {
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
        count(stat::UNREPORTED, 1);
        return verdict;
    }
    report(ctx, pkt, &hit, cfg, enforce, len);
    verdict
}

/// Sends a flow-start record unless the same (source, destination, port, protocol) was sent
/// within the window. A separate BPF function, verified once.
#[inline(never)]
fn flow_start(pkt: &Packet, cfg: &Config) {
    let now = unsafe { bpf_ktime_get_ns() };
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15 ^ (u64::from(pkt.dst_port) << 8 | u64::from(pkt.proto));
    let mix = |h: u64, w: u32| {
        (h ^ u64::from(w))
            .wrapping_mul(0x0100_0000_01b3)
            .rotate_left(29)
    };
    h = mix(h, pkt.src[0]);
    h = mix(h, pkt.src[1]);
    h = mix(h, pkt.src[2]);
    h = mix(h, pkt.src[3]);
    h = mix(h, pkt.dst[0]);
    h = mix(h, pkt.dst[1]);
    h = mix(h, pkt.dst[2]);
    h = mix(h, pkt.dst[3]);
    h ^= h >> 31;
    let slot = (h as u32) & (FLOW_CACHE_SLOTS - 1);
    let tag = h >> 32;
    let now_s = now / 1_000_000_000;
    let window_s = cfg.flow_ns / 1_000_000_000;
    let block = FLOW_SEEN.get_ptr_mut(slot / FLOW_SEEN_BLOCK as u32);
    // SAFETY: the slot's index within its block is masked below the block's length.
    let slot_ptr =
        block.map(|b| unsafe { (b as *mut u64).add(slot as usize & (FLOW_SEEN_BLOCK - 1)) });
    if let Some(p) = slot_ptr {
        // SAFETY: per-CPU slot, only this CPU touches it while the program runs.
        let v = unsafe { *p };
        if v >> 32 == tag && now_s.wrapping_sub(v & 0xffff_ffff) < window_s {
            count(stat::FLOW_REPEATS, 1);
            return;
        }
        unsafe { *p = (tag << 32) | (now_s & 0xffff_ffff) };
    }
    match FLOWS.reserve::<FlowRecord>(0) {
        Some(mut entry) => {
            let r = entry.as_mut_ptr();
            // SAFETY: `r` points at a reserved FlowRecord-sized slot.
            unsafe {
                (*r).ts_ns = now;
                (*r).src = bytes(&pkt.src);
                (*r).dst = bytes(&pkt.dst);
                (*r).src_port = pkt.src_port;
                (*r).dst_port = pkt.dst_port;
                (*r).family = pkt.family;
                (*r).proto = pkt.proto;
                (*r).tcp_flags = pkt.tcp_flags;
                (*r)._pad = 0;
            }
            entry.submit(wakeup_flags(&FLOWS, 64 * 1024));
            count(stat::FLOW_STARTS, 1);
        }
        None => count(stat::FLOWS_FULL, 1),
    }
}

/// What kind of payload this packet carries, if userspace wants it.
#[inline(always)]
fn classify(ctx: &XdpContext, pkt: &Packet, cfg: &Config) -> Option<u8> {
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
            count(stat::PORT53_NOT_DNS, 1);
            return None;
        }
        count(stat::HANDOFF_DNS, 1);
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
            count(stat::HANDOFF_TLS, 1);
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
        count(stat::HANDOFF_HTTP, 1);
        return Some(if is_method {
            handoff::HTTP_REQUEST
        } else {
            handoff::HTTP_RESPONSE
        });
    }
    let seg = ((ctx.data_end() - ctx.data()) as u64).saturating_sub(pkt.payload_off as u64);
    // TLS handshake record (0x16 0x03 x), handshake type ClientHello (1).
    if word >> 16 == 0x1603 && (word2 >> 16) & 0xff == 0x01 {
        count(stat::HANDOFF_TLS, 1);
        // A record longer than this segment: follow the flow (even if the hand-off below
        // fails: userspace then ignores the continuations it gets).
        tls_track(pkt, ((word & 0xff) << 8 | word2 >> 24) + 5, seg);
        return Some(handoff::TLS_CLIENT_HELLO);
    }
    if tls_continues(pkt, seg) {
        count(stat::TLS_CONTINUATIONS, 1);
        return Some(handoff::TLS_CONTINUATION);
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

/// The flow key of a TCP packet in `TLS_FLOWS`.
#[inline(always)]
fn tls_flow_key(pkt: &Packet) -> TlsFlowKey {
    TlsFlowKey {
        src: bytes(&pkt.src),
        dst: bytes(&pkt.dst),
        src_port: pkt.src_port,
        dst_port: pkt.dst_port,
    }
}

/// After a ClientHello's first segment (`seg` payload bytes) was handed over: if its record
/// (`record` bytes, header included) is longer than the segment, remember the flow so that
/// its next segments are handed over too, up to `tls_flow::MAX_BYTES` and for
/// `tls_flow::TIMEOUT_NS`. (Scalars in, no packet access: verified once as its own function.)
#[inline(never)]
fn tls_track(pkt: &Packet, record: u32, seg: u64) {
    if u64::from(record) <= seg {
        return;
    }
    let mut want = record;
    if want > tls_flow::MAX_BYTES {
        count(stat::TLS_FLOWS_CAPPED, 1);
        want = tls_flow::MAX_BYTES;
        if u64::from(want) <= seg {
            return;
        }
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let flow = TlsFlow {
        end_seq: pkt.tcp_seq.wrapping_add(want),
        _pad: 0,
        expires_ns: now + tls_flow::TIMEOUT_NS,
    };
    if TLS_FLOWS.insert(&tls_flow_key(pkt), &flow, 0).is_ok() {
        count(stat::TLS_FLOWS_TRACKED, 1);
        if let Some(p) = TLS_FLOWS_UNTIL.get_ptr_mut(0) {
            // SAFETY: a u64 slot of an array map; a racing writer also writes a time a flow
            // may be live until, and a torn order only costs a lookup.
            unsafe { *p = flow.expires_ns };
        }
    }
}

/// Whether this TCP segment (`seg` payload bytes) continues a followed ClientHello (see
/// `tls_track`); forgets the flow once the segment reaches the record's end, or when it
/// expired.
#[inline(never)]
fn tls_continues(pkt: &Packet, seg: u64) -> bool {
    if seg == 0 || pkt.proto != parse::IPPROTO_TCP {
        return false;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    if TLS_FLOWS_UNTIL.get(0).copied().unwrap_or(0) < now {
        return false;
    }
    let key = tls_flow_key(pkt);
    let Some(flow) = (unsafe { TLS_FLOWS.get(&key) }).copied() else {
        return false;
    };
    if flow.expires_ns < now {
        let _ = TLS_FLOWS.remove(&key);
        count(stat::TLS_FLOWS_EXPIRED, 1);
        return false;
    }
    // Sequence arithmetic modulo 2^32: bytes left before the record's end.
    let left = flow.end_seq.wrapping_sub(pkt.tcp_seq) as i32;
    if left <= 0 {
        let _ = TLS_FLOWS.remove(&key);
        return false;
    }
    if seg >= left as u64 {
        let _ = TLS_FLOWS.remove(&key);
    }
    true
}

#[inline(always)]
fn http_port(port: u16) -> bool {
    let word = HTTP_PORTS.get(u32::from(port) >> 6).copied().unwrap_or(0);
    (word >> (port & 63)) & 1 == 1
}

/// Mirror mode with sockets: redirect to this queue's AF_XDP socket. Otherwise: copy the
/// first bytes to the payload ring buffer. Returns the verdict for a redirect.
/// A separate BPF function: verified once, not once per path through `process`.
#[inline(never)]
fn hand_off(ctx: &XdpContext, cfg: &Config, kind: u8, len: u64) -> Option<u32> {
    if cfg.mode == mode::MIRROR && cfg.flags & config_flags::XSK != 0 {
        let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
        let queue = ctx.rx_queue_index();
        // A queue without a socket slot is never redirected (the kernel would refuse the
        // frame at a socket bound to another queue): it goes by ring-buffer copy below.
        if let (Some(slot), true) = (
            unsafe { IFSLOTS.get(&ifindex) }.copied(),
            queue < cfg.xsk_queues,
        ) {
            let index = slot * cfg.xsk_queues + queue;
            return match XSKS.redirect(index, u64::from(xdp_action::XDP_DROP)) {
                Ok(v) => {
                    count(stat::REDIRECTED, 1);
                    Some(v)
                }
                Err(_) => {
                    count(stat::HANDOFF_FAILED, 1);
                    None
                }
            };
        }
    }
    let Some(mut entry) = PAYLOADS.reserve::<PayloadRecord>(0) else {
        count(stat::HANDOFF_FAILED, 1);
        return None;
    };
    let r = entry.as_mut_ptr();
    let cap = if len > PAYLOAD_CAP as u64 {
        PAYLOAD_CAP as u32
    } else {
        len as u32
    };
    // SAFETY: `r` points at a reserved PayloadRecord; `data` holds PAYLOAD_CAP bytes and
    // `cap` is at most that.
    let copied = unsafe {
        (*r).ts_ns = bpf_ktime_get_ns();
        (*r).ifindex = (*ctx.ctx).ingress_ifindex;
        (*r).rx_queue = ctx.rx_queue_index();
        (*r).pkt_len = len as u32;
        (*r).kind = kind;
        (*r)._pad = [0; 7];
        // `cap` is in [0, CAP]; `((cap - 1) & (CAP - 1)) + 1` is in [1, CAP] in a form the
        // verifier tracks (a mask), and equals `cap` whenever `cap` is non-zero.
        let n = (cap.wrapping_sub(1) & (PAYLOAD_CAP as u32 - 1)) + 1;
        (*r).cap_len = n;
        bpf_xdp_load_bytes(ctx.ctx, 0, (*r).data.as_mut_ptr().cast(), n)
    };
    if copied != 0 {
        entry.discard(0);
        count(stat::HANDOFF_FAILED, 1);
        return None;
    }
    entry.submit(wakeup_flags(&PAYLOADS, 256 * 1024));
    count(stat::COPIED, 1);
    // A copy leaves the packet's fate to the mode: pass (inline) or drop (mirror).
    Some(idle_verdict(cfg))
}

/// Suppresses repeats, then writes the hit to the ring buffer. A hit is recorded in
/// `SUPPRESS` only once its ring-buffer slot is reserved: a hit lost to a full ring must not
/// suppress its repeats, or the loss would hide them for the whole window.
#[inline(always)]
fn report(ctx: &XdpContext, pkt: &Packet, hit: &Hit, cfg: &Config, enforce: bool, len: u64) {
    let now = unsafe { bpf_ktime_get_ns() };
    let key = SuppressKey {
        src: bytes(&pkt.src),
        dst: bytes(&pkt.dst),
        trail_id: hit.trail_id,
        dst_port: pkt.dst_port,
        proto: pkt.proto,
        _pad: 0,
    };
    if cfg.suppress_ns > 0 {
        if let Some(last) = unsafe { SUPPRESS.get(&key) } {
            if now.wrapping_sub(*last) < cfg.suppress_ns {
                count(stat::SUPPRESSED, 1);
                return;
            }
        }
    }
    // Written in place in the ring buffer: a HitRecord on the stack would not fit beside
    // the parse state in 512 bytes.
    match HITS.reserve::<HitRecord>(0) {
        Some(mut entry) => {
            if cfg.suppress_ns > 0 {
                let _ = SUPPRESS.insert(&key, &now, 0);
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
            entry.submit(wakeup_flags(&HITS, 16 * 1024));
            count(stat::REPORTED, 1);
        }
        None => count(stat::RINGBUF_FULL, 1),
    }
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
fn lookup_packet(pkt: &Packet, set: u32) -> Option<Hit> {
    let index = set & trail_set::INDEX;
    if let Some((trail_id, kind)) = lookup_addr(&pkt.dst, pkt.dst_port, pkt, set) {
        return Some(Hit {
            trail_id,
            kind,
            side: side::DST,
            set: index as u8,
        });
    }
    if let Some((trail_id, kind)) = lookup_addr(&pkt.src, pkt.src_port, pkt, set) {
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

/// One address in the trail set `set` (the `TRAIL_SET` value: index and flags).
#[inline(always)]
fn lookup_addr(words: &[u32; 4], port: u16, pkt: &Packet, set: u32) -> Option<(u32, u8)> {
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
        if set & config_flags::PREFILTER4 != 0 {
            // Network order: the first three bytes are the /24.
            let slash24 = u32::from_be(words[3]) >> 8;
            let word = IPV4_PREFILTER
                .get(index * PREFILTER_WORDS + (slash24 >> 6))
                .copied()
                .unwrap_or(0);
            if (word >> (slash24 & 63)) & 1 == 0 {
                count(stat::PREFILTER_SKIPS, 1);
                return None;
            }
        }
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
        if let Some(id) = unsafe { IPV4_TRAILS.get(&v4) } {
            return Some((*id, trail_kind::IP));
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
