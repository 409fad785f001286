//! Types that cross the kernel/user boundary of xtrail's XDP program.
//!
//! Everything here is `#[repr(C)]`, fixed size and free of padding surprises: the XDP
//! program writes these records into maps and ring buffers, and userspace reads them back
//! byte for byte. With the `user` feature the types implement `aya::Pod`.
#![no_std]

/// Names of the maps the XDP program declares; userspace looks them up by these.
pub mod maps {
    pub const CONFIG: &str = "CONFIG";
    pub const STATS: &str = "STATS";
    pub const IPV6_TRAILS: &str = "IPV6_TRAILS";
    pub const IPV4_CIDRS: &str = "IPV4_CIDRS";
    pub const IPV6_CIDRS: &str = "IPV6_CIDRS";
    pub const IPPORT_TRAILS: &str = "IPPORT_TRAILS";
    /// IPv4 address trails: cuckoo table buckets (see [`super::trail_table`]).
    pub const IPV4_TABLE: &str = "IPV4_TABLE";
    /// IPv4 IP:port trails: cuckoo table buckets.
    pub const IPPORT4_TABLE: &str = "IPPORT4_TABLE";
    pub const IPV4_PREFILTER: &str = "IPV4_PREFILTER";
    pub const SUPPRESS: &str = "SUPPRESS";
    pub const HITS: &str = "HITS";
    pub const PAYLOADS: &str = "PAYLOADS";
    pub const XSKS: &str = "XSKS";
    pub const HTTP_PORTS: &str = "HTTP_PORTS";
    pub const IFSLOTS: &str = "IFSLOTS";
    pub const FLOWS: &str = "FLOWS";
    pub const FLOW_SEEN: &str = "FLOW_SEEN";
    /// Per-CPU flow starts not yet sent (see [`super::FlowBatch`]).
    pub const FLOW_BATCH: &str = "FLOW_BATCH";
    /// The active trail map set and its flags (see [`super::trail_set`]).
    pub const TRAIL_SET: &str = "TRAIL_SET";
}

/// The `TRAIL_SET` selector: one `u32` the XDP program reads once per packet. Two trail
/// sets, 0 and 1, live side by side in the same maps: the set index is part of every trail
/// key ([`TrailKey4`], [`TrailKey6`], [`IpPortKey::set`], the LPM keys) and selects the
/// half of the prefilter. Bit 0 of the selector is the active set; the set's own
/// `HAVE_*`/`PREFILTER4` bits of [`config_flags`] ride along, so a reload switches set and
/// flags with one aligned 4-byte write and no packet sees a half-filled set. Bits 8-15 count
/// the writes (the epoch): a frame stamped with the selector's index and epoch was looked
/// up in the contents the set has had since that write ([`XskMeta`]).
pub mod trail_set {
    /// The active set's index.
    pub const INDEX: u32 = 1;
    /// Bits 8-15: the selector's epoch, one more at every write (wrapping: a frame held
    /// across 256 switches would pass for one of the newest; a reload waits for the live
    /// loop's drains, up to 5 s, so that takes a loop stalled for over 20 minutes).
    pub const EPOCH_SHIFT: u32 = 8;
    /// Mask of the epoch after shifting.
    pub const EPOCH_MASK: u32 = 0xff;
    /// Flags that describe a set's contents (the rest of `config_flags` is not per set).
    pub const FLAG_MASK: u32 = super::config_flags::HAVE_CIDR4
        | super::config_flags::HAVE_CIDR6
        | super::config_flags::HAVE_IPPORT
        | super::config_flags::HAVE_IPV6
        | super::config_flags::PREFILTER4;

    /// Bits 16-20: `log2` of the bucket count of the set's IPv4 address table.
    pub const V4_BITS_SHIFT: u32 = 16;
    /// Bits 24-28: `log2` of the bucket count of the set's IPv4 IP:port table.
    pub const PORT_BITS_SHIFT: u32 = 24;
    /// Mask of a table's bits after shifting.
    pub const BITS_MASK: u32 = 31;

    /// The selector value for set `index` at `epoch` with `flags` (which carry the tables'
    /// sizes).
    pub const fn value(index: u8, epoch: u8, flags: u32) -> u32 {
        (index as u32 & INDEX)
            | (epoch as u32) << EPOCH_SHIFT
            | (flags & (FLAG_MASK | BITS_MASK << V4_BITS_SHIFT | BITS_MASK << PORT_BITS_SHIFT))
    }

    /// The epoch of selector value `v`.
    pub const fn epoch(v: u32) -> u8 {
        ((v >> EPOCH_SHIFT) & EPOCH_MASK) as u8
    }

    // The epoch shares no bit with the index, the flags or the table sizes.
    const _: () = assert!(
        (EPOCH_MASK << EPOCH_SHIFT)
            & (INDEX | FLAG_MASK | BITS_MASK << V4_BITS_SHIFT | BITS_MASK << PORT_BITS_SHIFT)
            == 0
    );

    /// The flag bits that give a set's table sizes.
    pub const fn table_bits(v4_bits: u32, port_bits: u32) -> u32 {
        (v4_bits & BITS_MASK) << V4_BITS_SHIFT | (port_bits & BITS_MASK) << PORT_BITS_SHIFT
    }
}

/// The IPv4 trail tables (`IPV4_TABLE`, `IPPORT4_TABLE`): bucketized two-choice (cuckoo)
/// hash tables in array maps, one [`Bucket`] per element, built by userspace
/// (`xtrail_detect::trails::iptable`, which must agree with every constant here). Set `s`'s
/// bucket `i` is element `2 * i + s`; a set's table has `2^bits` buckets, `bits` (≥ 1) in
/// its `TRAIL_SET` value. A key lives in bucket [`bucket`]`(key, bits, 0)` or `(.., 1)`.
pub mod trail_table {
    /// Slots per bucket: per slot three words, the key's low half (the address as loaded
    /// from the packet), its high half (port and kind; never 0 in a used slot) and the label.
    pub const SLOTS: usize = 5;
    /// One bucket (64 bytes: five 12-byte slots and a zero word).
    pub type Bucket = [u32; 16];
    /// The multiply-shift constants.
    pub const HASH: [u64; 2] = [0x9E37_79B9_7F4A_7C15, 0xC2B2_AE3D_27D4_EB4F];
    /// Kind tag of an IPv4 address key.
    pub const KIND_IP: u64 = 1 << 48;
    /// Kind tag of an IPv4 IP:port key.
    pub const KIND_PORT: u64 = 2 << 48;

    /// Key of an address (`addr`: its network-order bytes loaded as a native `u32`).
    #[inline(always)]
    pub const fn v4_key(addr: u32) -> u64 {
        addr as u64 | KIND_IP
    }

    /// Key of an address and port (host order).
    #[inline(always)]
    pub const fn ipport_key(addr: u32, port: u16) -> u64 {
        addr as u64 | (port as u64) << 32 | KIND_PORT
    }

    /// Bucket `which` of `key` in a table of `2^bits` buckets: the top `bits` bits of
    /// `key * HASH[which]`.
    #[inline(always)]
    pub const fn bucket(key: u64, bits: u32, which: usize) -> u64 {
        key.wrapping_mul(HASH[which & 1]) >> (64 - bits)
    }
}

/// Slots of the per-CPU flow-start dedupe cache (a power of two).
pub const FLOW_CACHE_SLOTS: u32 = 1 << 16;

/// IPv6 extension headers walked to the transport header, by the XDP program and by
/// userspace's parser alike: a packet with more is checked by its addresses alone.
pub const MAX_IPV6_EXT_HEADERS: usize = 6;

/// What starts a flow for the scan heuristics, and what one flow is: one definition for the
/// XDP program's flow-start records and replay's.
pub mod flow {
    /// How long a flow start stands for its repeats (the program's default window, and
    /// replay's): 30 s.
    pub const REPEAT_WINDOW_NS: u64 = 30_000_000_000;

    /// Whether TCP flags open a flow or probe a port: SYN without ACK or RST, or the NULL,
    /// FIN and XMAS (FIN, PSH, URG) stealth sets (ECE and CWR ignored). ACK, RST and
    /// everything else in an established flow do not.
    #[inline(always)]
    pub const fn tcp_starts_flow(flags: u8) -> bool {
        const FIN: u8 = 0x01;
        const SYN: u8 = 0x02;
        const RST: u8 = 0x04;
        const PSH: u8 = 0x08;
        const ACK: u8 = 0x10;
        const URG: u8 = 0x20;
        let f = flags & 0x3f;
        f & (SYN | ACK | RST) == SYN || f == 0 || f == FIN || f == FIN | PSH | URG
    }

    /// A UDP datagram from a service port (below 1024) to an ephemeral one: the scan
    /// heuristics take it for a reply, whatever they saw, so it starts no flow.
    #[inline(always)]
    pub const fn udp_reply_by_ports(src_port: u16, dst_port: u16) -> bool {
        src_port < 1024 && dst_port >= 1024
    }

    /// A UDP datagram from an ephemeral port to a service port: never a reply, and its
    /// reverse is one by its ports alone.
    #[inline(always)]
    pub const fn udp_request_by_ports(src_port: u16, dst_port: u16) -> bool {
        src_port >= 1024 && dst_port < 1024
    }

    /// Whether a UDP datagram's flow includes its source port besides its addresses and
    /// destination port. The scan heuristics take a datagram for a reply when they saw its
    /// reverse, so each 5-tuple needs its flow start; but a request by ports is never looked
    /// up that way, and a resolver's clients' queries from random ports stay one flow.
    #[inline(always)]
    pub const fn udp_source_port_counts(src_port: u16, dst_port: u16) -> bool {
        !udp_request_by_ports(src_port, dst_port)
    }
}

/// Receive queues per interface the `XSKS` map can hold at most: the socket of queue `q` on
/// the interface in slot `s` (see `IFSLOTS`) sits at index `s * Config::xsk_queues + q`,
/// where `xsk_queues` is the largest real queue count of the sensor's interfaces (the map
/// is sized from it at load). A packet from a queue at or above `xsk_queues` is never
/// redirected (it would be misdelivered): it is copied to the payload ring instead.
pub const XSK_MAX_QUEUES: u32 = 4096;

/// Interfaces one sensor can own AF_XDP sockets on.
pub const XSK_MAX_IFACES: u32 = 16;

/// Bytes of an AF_XDP socket's UMEM frame.
pub const XSK_FRAME_SIZE: u32 = 2048;
/// The longest packet an AF_XDP socket can take: its frame less the kernel's
/// `XDP_PACKET_HEADROOM` (256 bytes). The XDP program redirects a frame only when it fits
/// with its [`XskMeta`] before it (a longer one would be dropped at the socket, lost to the
/// detector): a longer one is copied to the payload ring instead.
pub const XSK_FRAME_ROOM: u32 = XSK_FRAME_SIZE - 256;

/// Bytes of a frame copied to userspace in inline mode (the rest is cut). A power of two:
/// the XDP program bounds the copy length with a mask the verifier understands.
pub const PAYLOAD_CAP: usize = 2048;

/// Default sizes of the ring buffers, in bytes (each a power-of-two multiple of the page
/// size; userspace may size them at load). The kernel maps a ring's data pages twice into
/// the reader, so RSS shows a ring at twice its size.
pub mod ring {
    /// `PAYLOADS`: records of 8 (ring header) + 32 (`PayloadHeader`) + the frame's size
    /// class (`payload_class`: 128 to 2048 bytes): a DNS query takes 168 bytes, so 4 MiB
    /// hold ~25k of them, ~7.6k HTTP request heads of up to 512 bytes (the fixed 2,088-byte
    /// records of old needed 16 MiB for 8k records of any size).
    pub const PAYLOADS_BYTES: u32 = 4 << 20;
    /// `HITS`: 80 bytes per hit (ring header + `HitRecord`): ~6.5k hits; hits are already
    /// de-duplicated in the kernel (`SUPPRESS`).
    pub const HITS_BYTES: u32 = 512 << 10;
    /// `FLOWS`: 48 bytes per flow start (`FlowRecord`), sent in records of up to
    /// [`super::FLOW_BATCH`] of them plus an 8-byte ring header: ~21k flow starts; repeats
    /// within the flow window are not sent.
    pub const FLOWS_BYTES: u32 = 1 << 20;
}

/// Number of 64-bit words in the HTTP port bitmap (one bit per TCP port).
pub const HTTP_PORT_WORDS: u32 = 1024;

/// Why a packet was handed to userspace.
pub mod handoff {
    pub const DNS: u8 = 1;
    pub const HTTP_REQUEST: u8 = 2;
    pub const HTTP_RESPONSE: u8 = 3;
    pub const TLS_CLIENT_HELLO: u8 = 4;
    /// A later segment of a ClientHello longer than its first segment (see `TLS_FLOWS`).
    pub const TLS_CONTINUATION: u8 = 5;
}

/// [`PayloadHeader::addrs`]: what the XDP program's address lookups found for the frame.
pub mod addr_check {
    /// Not said (an address is a trail, the frame is a fragment, or an older program wrote
    /// the record): userspace looks the addresses up itself.
    pub const UNKNOWN: u8 = 0;
    /// Set with the trail set's index in bit 0: both addresses were looked up in that set
    /// (the destination with its port, the source with its port, each as an IP:port, an
    /// address and a CIDR trail) and neither is a trail.
    pub const CLEAN: u8 = 0x80;
    /// The trail set's index when [`CLEAN`] is set.
    pub const SET: u8 = 1;
}

/// Bounds of the XDP program's `TLS_FLOWS` map, which remembers TCP flows whose ClientHello
/// record is longer than its first segment so that their next segments are handed over too;
/// userspace reassembles with the same bounds (`xtrail_detect::protocols::reassembly`).
pub mod tls_flow {
    /// Flows followed at once: 1,024 buckets of 4 slots by a hash of the flow; a flow takes
    /// a free or expired slot of its bucket, else the one that expires first
    /// (`stat::TLS_FLOWS_EVICTED`).
    pub const SLOTS: u32 = 4096;
    /// Bytes of a ClientHello record followed per flow, record header included.
    pub const MAX_BYTES: u32 = 16 * 1024;
    /// How long a flow is followed after its first segment.
    pub const TIMEOUT_NS: u64 = 10_000_000_000;
}

/// Number of 64-bit words in the IPv4 /24 prefilter bitmap (2^24 bits).
pub const PREFILTER_WORDS: u32 = 1 << 18;

/// Number of 64-bit words in the prefilter's /16 summary (2^16 bits: a bit per /16 whose
/// /24 bits are not all clear), stored after the /24 bitmap. Its 8 KiB stay in cache where
/// the 2 MiB bitmap does not: a clean address in a /16 without trails is settled by it.
pub const PREFILTER_SUMMARY_WORDS: u32 = 1 << 10;

/// Words of one trail set's prefilter: the /24 bitmap, then its /16 summary.
pub const PREFILTER_SET_WORDS: u32 = PREFILTER_WORDS + PREFILTER_SUMMARY_WORDS;

/// Sensor operating mode, stored in [`Config::mode`].
pub mod mode {
    /// Router: every packet continues to the stack (XDP_PASS).
    pub const INLINE: u8 = 0;
    /// SPAN/TAP port the sensor owns: packets nobody needs are dropped early.
    pub const MIRROR: u8 = 1;
}

/// Flags in [`Config::flags`].
pub mod config_flags {
    /// Drop packets that hit an IP trail (inline mode only).
    pub const ENFORCE: u32 = 1 << 0;
    /// IPv4 CIDR trails are loaded: consult the LPM trie.
    pub const HAVE_CIDR4: u32 = 1 << 1;
    /// IPv6 CIDR trails are loaded.
    pub const HAVE_CIDR6: u32 = 1 << 2;
    /// IP:port trails are loaded.
    pub const HAVE_IPPORT: u32 = 1 << 3;
    /// IPv6 address trails are loaded.
    pub const HAVE_IPV6: u32 = 1 << 4;
    /// The IPv4 /24 prefilter bitmap is filled: a clear bit means no IPv4 trail can match.
    pub const PREFILTER4: u32 = 1 << 5;
    /// Hand DNS, HTTP and TLS ClientHello packets to userspace.
    pub const HANDOFF: u32 = 1 << 6;
    /// Mirror mode hands packets over through the XskMap (AF_XDP) instead of copying.
    pub const XSK: u32 = 1 << 7;
    /// Send flow-start records (for the scan heuristics).
    pub const FLOWS: u32 = 1 << 8;
}

/// Runtime configuration, element 0 of the `CONFIG` array map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// One of [`mode`].
    pub mode: u8,
    /// Log level for the program's own diagnostics (0 = off, 1 = debug).
    pub log_level: u8,
    pub _pad: [u8; 2],
    /// Bit set of [`config_flags`].
    pub flags: u32,
    /// Window in which identical hits are suppressed, in nanoseconds (0 disables).
    pub suppress_ns: u64,
    /// Window in which a repeated flow start (same flow: addresses, destination port,
    /// protocol, and a UDP source port where [`flow::udp_source_port_counts`]) is not sent
    /// again, in nanoseconds.
    pub flow_ns: u64,
    /// Stride of `XSKS` per interface slot: the receive queues each interface has sockets for.
    pub xsk_queues: u32,
    /// Per ring (indexed by [`wake`]), `log2` of the pending bytes per reader wake-up (see
    /// [`wake::shift_for`]); 0 means the ring's default ([`wake::DEFAULT_SHIFTS`]).
    pub wake_shifts: [u8; 4],
    /// Random per load: the start of the program's hashes of packet fields (the slots of its
    /// flow, ClientHello and suppression tables), so that no one outside can aim packets at
    /// one slot.
    pub hash_seed: u64,
}

/// Reader wake-ups of the ring buffers. A record is submitted without waking the reader
/// (which polls every [`POLL_MS`] while records come) unless it takes the ring's pending bytes
/// across a multiple of `2^shift`: a wake-up costs microseconds, so it is spent once per that
/// many bytes. Besides, a record wakes the reader at most once per [`GAP_NS`] over all three
/// rings (the gap rule): a lone record after a quiet spell reaches userspace at once, a
/// steady stream does not wake the reader for each, and a reader that has read nothing for
/// two polls may sleep long ([`IDLE_POLL_MS`]): the first record after that comes after a
/// gap, so it wakes it.
pub mod wake {
    /// Index of the `PAYLOADS` ring in [`super::Config::wake_shifts`].
    pub const PAYLOADS: usize = 0;
    /// Index of the `HITS` ring.
    pub const HITS: usize = 1;
    /// Index of the `FLOWS` ring.
    pub const FLOWS: usize = 2;
    /// The largest thresholds: 256 KiB of payloads, 16 KiB of hits, 64 KiB of flow starts
    /// (index 3 is unused).
    pub const DEFAULT_SHIFTS: [u32; 4] = [18, 14, 16, 16];
    /// A ring is woken at least per this fraction of its size (`2^-FRACTION_SHIFT`).
    pub const FRACTION_SHIFT: u32 = 3;
    /// How often (ms) the live reader polls every ring whether woken or not while records
    /// come: the longest a record below its ring's threshold and inside a gap waits. (20 ms
    /// until 2026-12-04: 50 cut the reader's wake-ups on the NIC-like mix at 50k packets/s
    /// from 80 to 28 a second and its CPU by 8-21%; 50 until 2026-12-05: 100 cut them to 16
    /// a second and the sensor's CPU a packet on that mix from 177 to 129-136 ns, on DNS
    /// hand-offs alone from 655 to 599; 100 until 2026-12-05 late: 200 cut the loop's context
    /// switches in a run of that mix 523 -> 147 and its CPU a packet 113 -> 95 and 136 -> 102
    /// ns inline, 225 -> 181 in mirror mode, DNS hand-offs the same, 647 vs 634, `cargo xtask
    /// ab`.) The AF_XDP transport's frame queue wakes the loop per an eighth of its size too:
    /// per 8,192 frames queued, a batch counting as at least 16 (one of its 4,096 slots), so
    /// per 512 one-frame batches (`xsk::WAKE_FRAMES`).
    pub const POLL_MS: u32 = 200;
    /// How long (ms) the live reader sleeps once it has read nothing for two polls: a
    /// record then wakes it by the gap rule, so this bounds only the reader's own work
    /// between records (summaries, metrics, a stop the signal did not interrupt).
    pub const IDLE_POLL_MS: u32 = 250;
    /// The least time between two gap-rule wake-ups (any ring): one poll interval, so no
    /// record waits longer than it would for a poll.
    pub const GAP_NS: u64 = POLL_MS as u64 * 1_000_000;

    /// The threshold of ring `which` when it holds `ring_bytes` (a power of two): an eighth
    /// of the ring, at most the default (which the default rings' eighth exceeds), at least
    /// 256 bytes.
    pub const fn shift_for(which: usize, ring_bytes: u32) -> u8 {
        let log2 = if ring_bytes == 0 {
            0
        } else {
            31 - ring_bytes.leading_zeros()
        };
        let fraction = log2.saturating_sub(FRACTION_SHIFT);
        let default = DEFAULT_SHIFTS[which & 3];
        let s = if fraction < default {
            fraction
        } else {
            default
        };
        if s < 8 {
            8
        } else {
            s as u8
        }
    }

    /// [`super::Config::wake_shifts`] for rings of these sizes in bytes.
    pub const fn shifts(payloads: u32, hits: u32, flows: u32) -> [u8; 4] {
        [
            shift_for(PAYLOADS, payloads),
            shift_for(HITS, hits),
            shift_for(FLOWS, flows),
            0,
        ]
    }
}

/// The value of the per-CPU `STATS` array's one element: every counter of a CPU, indexed by
/// [`stat`]. One element, not one per counter: the XDP program looks it up once per packet
/// and increments the counters in place (a clean packet made four lookups, one per counter).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PerCpuStats {
    pub counters: [u64; stat::COUNT as usize],
}

/// Indexes of the per-CPU counters in [`PerCpuStats::counters`] (the `STATS` map's value).
pub mod stat {
    pub const PACKETS: u32 = 0;
    pub const BYTES: u32 = 1;
    pub const PASS: u32 = 2;
    pub const DROP: u32 = 3;
    /// Packets that hit a trail (reported or not).
    pub const HITS: u32 = 4;
    /// Hits written to the ring buffer.
    pub const REPORTED: u32 = 5;
    /// Hits on packets Maltrail does not report (non-SYN TCP, ICMP other than echo...).
    pub const UNREPORTED: u32 = 6;
    /// Hits suppressed as repeats within the window.
    pub const SUPPRESSED: u32 = 7;
    /// Hits lost because the ring buffer was full.
    pub const RINGBUF_FULL: u32 = 8;
    /// Frames too short or malformed to parse (passed untouched).
    pub const PARSE_ERRORS: u32 = 9;
    /// Packets that were not IPv4/IPv6 (ARP, LLDP, ...).
    pub const NON_IP: u32 = 10;
    /// IPv4/IPv6 fragments after the first (no L4 header).
    pub const FRAGMENTS: u32 = 11;
    /// Packets dropped because they hit a trail in enforce mode.
    pub const ENFORCED: u32 = 12;
    /// Lookups skipped because the prefilter said no trail can match.
    pub const PREFILTER_SKIPS: u32 = 13;
    /// DNS packets handed to userspace.
    pub const HANDOFF_DNS: u32 = 14;
    /// HTTP requests and responses handed to userspace.
    pub const HANDOFF_HTTP: u32 = 15;
    /// TLS ClientHellos handed to userspace.
    pub const HANDOFF_TLS: u32 = 16;
    /// Packets redirected to an AF_XDP socket (mirror mode).
    pub const REDIRECTED: u32 = 17;
    /// Packets copied to the payload ring buffer (inline mode).
    pub const COPIED: u32 = 18;
    /// Hand-offs that failed: no AF_XDP socket on the queue, or the ring buffer full.
    pub const HANDOFF_FAILED: u32 = 19;
    /// Flow-start records sent to userspace, or waiting in a CPU's [`super::FlowBatch`] to
    /// be (those a full ring refuses are moved to `FLOWS_FULL`).
    pub const FLOW_STARTS: u32 = 20;
    /// Flow starts not sent again within the window.
    pub const FLOW_REPEATS: u32 = 21;
    /// Flow starts lost because the ring buffer was full.
    pub const FLOWS_FULL: u32 = 22;
    /// UDP port-53 packets without a plausible DNS header (not handed over as DNS; their
    /// trail hits are reported like any datagram's).
    pub const PORT53_NOT_DNS: u32 = 23;
    /// TCP ClientHellos longer than their segment: flows whose next segments are handed over.
    pub const TLS_FLOWS_TRACKED: u32 = 24;
    /// Later segments of such ClientHellos handed over.
    pub const TLS_CONTINUATIONS: u32 = 25;
    /// Followed flows that did not complete within `tls_flow::TIMEOUT_NS`.
    pub const TLS_FLOWS_EXPIRED: u32 = 26;
    /// ClientHello records longer than `tls_flow::MAX_BYTES` (followed up to the bound).
    pub const TLS_FLOWS_CAPPED: u32 = 27;
    /// Followed flows whose slot another flow took before their ClientHello was complete
    /// (their later segments are not handed over; see `tls_flow::SLOTS`).
    pub const TLS_FLOWS_EVICTED: u32 = 28;
    /// Number of counters.
    pub const COUNT: u32 = 29;

    /// Human names, indexed like the counters.
    pub const NAMES: [&str; COUNT as usize] = [
        "packets",
        "bytes",
        "pass",
        "drop",
        "hits",
        "reported",
        "unreported",
        "suppressed",
        "ringbuf_full",
        "parse_errors",
        "non_ip",
        "fragments",
        "enforced",
        "prefilter_skips",
        "handoff_dns",
        "handoff_http",
        "handoff_tls",
        "redirected",
        "copied",
        "handoff_failed",
        "flow_starts",
        "flow_repeats",
        "flows_full",
        "port53_not_dns",
        "tls_flows_tracked",
        "tls_continuations",
        "tls_flows_expired",
        "tls_flows_capped",
        "tls_flows_evicted",
    ];
}

/// What kind of trail table produced a hit.
pub mod trail_kind {
    pub const IP: u8 = 1;
    pub const CIDR: u8 = 2;
    pub const IPPORT: u8 = 3;
}

/// Which side of the packet matched.
pub mod side {
    pub const DST: u8 = 1;
    pub const SRC: u8 = 2;
}

/// What the program did with a packet.
pub mod action {
    pub const PASS: u8 = 0;
    pub const DROP: u8 = 1;
}

/// Key of the `IPPORT_TRAILS` hash (IPv6 IP:port trails; IPv4 ones are in `IPPORT4_TABLE`,
/// [`trail_table`]): address and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IpPortKey {
    pub addr: [u8; 16],
    /// Port in host byte order.
    pub port: u16,
    /// The trail set (0 or 1, see [`trail_set`]).
    pub set: u8,
    pub _pad: u8,
}

/// The data of an `IPV4_CIDRS` LPM key (whose prefix length then counts the 32 bits of
/// `set` too). IPv4 address trails are in `IPV4_TABLE` ([`trail_table`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TrailKey4 {
    /// The trail set (0 or 1, see [`trail_set`]).
    pub set: u32,
    /// Network byte order.
    pub addr: [u8; 4],
}

/// Key of the `IPV6_TRAILS` hash and data of an `IPV6_CIDRS` LPM key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TrailKey6 {
    /// The trail set (0 or 1, see [`trail_set`]).
    pub set: u32,
    pub addr: [u8; 16],
}

/// Key of the IPv4 LPM trie: prefix length (32 set bits plus the CIDR's), then the set and
/// the address in network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lpm4Key {
    pub prefix_len: u32,
    pub data: TrailKey4,
}

/// Key of the IPv6 LPM trie (as [`Lpm4Key`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lpm6Key {
    pub prefix_len: u32,
    pub data: TrailKey6,
}

/// A trail hit as written to the `HITS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HitRecord {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at the hit.
    pub ts_ns: u64,
    pub ifindex: u32,
    pub rx_queue: u32,
    pub trail_id: u32,
    /// Source address; IPv4 as v4-mapped IPv6 (`::ffff:a.b.c.d`).
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Ports in host byte order (0 for ICMP).
    pub src_port: u16,
    pub dst_port: u16,
    /// 4 or 6.
    pub family: u8,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6).
    pub proto: u8,
    pub tcp_flags: u8,
    /// One of [`trail_kind`].
    pub kind: u8,
    /// One of [`side`].
    pub side: u8,
    /// One of [`action`].
    pub action: u8,
    /// ICMP type for ICMP packets.
    pub icmp_type: u8,
    /// The trail map set (0 or 1) that matched: `trail_id` is a label of that set's trails.
    pub trail_set: u8,
    /// Frame length on the wire.
    pub pkt_len: u32,
}

/// A flow start (a TCP SYN without ACK or RST, a NULL/FIN/XMAS stealth probe, or the first
/// UDP datagram of a flow, see [`flow`]) as written to the `FLOWS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowRecord {
    /// `bpf_ktime_get_coarse_ns()`: CLOCK_MONOTONIC at tick resolution (1-10 ms), read
    /// about once per tick and CPU and cached: up to about two ticks late (the tick bumps
    /// `jiffies` just before it moves the coarse clock; a CPU whose first packet of a tick
    /// reads in between caches the previous tick's time for this tick).
    pub ts_ns: u64,
    /// Addresses; IPv4 as v4-mapped IPv6.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    /// 4 or 6.
    pub family: u8,
    pub proto: u8,
    pub tcp_flags: u8,
    pub _pad: u8,
}

/// Flow starts per `FLOWS` ring record, at most (a power of two). The XDP program collects
/// a CPU's flow starts in its [`FlowBatch`] and sends them as one record of `n`
/// [`FlowRecord`]s (the record's length says `n`): one ring reservation and commit per
/// batch instead of per flow start.
pub const FLOW_BATCH: usize = 16;

/// A CPU's flow starts not yet sent (element 0 of the per-CPU `FLOW_BATCH` map). The batch
/// is sent when it is full, or at the CPU's next frame once the kernel's tick counter has
/// moved on from `tick` (1-10 ms), or by the object's `xtrail_flush` program, which
/// userspace runs on each CPU whose batch holds records every 250 ms; what a CPU holds when
/// the program is detached, userspace takes from the map itself. Only programs running on
/// that CPU (never two at once: both run with bottom halves disabled) write it while
/// attached.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FlowBatch {
    /// Records held, below [`FLOW_BATCH`] between runs.
    pub len: u32,
    /// The kernel's tick counter (`jiffies`, truncated) at the batch's first record.
    pub tick: u32,
    pub records: [FlowRecord; FLOW_BATCH],
}

/// The header of a frame handed to userspace through the `PAYLOADS` ring buffer. A record
/// is this header followed by the frame's first `cap_len` bytes: records are as long as
/// what they carry, not `PAYLOAD_CAP`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PayloadHeader {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    pub ifindex: u32,
    pub rx_queue: u32,
    /// Frame length on the wire.
    pub pkt_len: u32,
    /// Bytes of the frame that follow the header (at most [`PAYLOAD_CAP`]).
    pub cap_len: u32,
    /// One of [`handoff`].
    pub kind: u8,
    /// See [`addr_check`].
    pub addrs: u8,
    pub _pad: [u8; 6],
}

/// Bytes of [`PayloadHeader`]: the frame starts at this offset of a `PAYLOADS` record.
pub const PAYLOAD_HEADER_LEN: usize = core::mem::size_of::<PayloadHeader>();

/// What the XDP program writes before a frame it redirects to an AF_XDP socket (it moves the
/// frame's start back by [`XSK_META_LEN`] bytes, `bpf_xdp_adjust_head`): the frame's address
/// verdict, as a `PAYLOADS` record's header carries it, and the epoch of the `TRAIL_SET`
/// value it was looked up under, so that userspace vouches for it only while that write is
/// the newest ([`trail_set::EPOCH_SHIFT`]). Native endianness.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XskMeta {
    /// [`XSK_META_MAGIC`].
    pub magic: u32,
    /// See [`addr_check`].
    pub addrs: u8,
    /// [`trail_set::epoch`] of the selector the addresses were looked up under.
    pub epoch: u8,
    /// See [`handoff`].
    pub kind: u8,
    pub _pad: [u8; 9],
}

/// Bytes before each AF_XDP frame ([`XskMeta`]).
pub const XSK_META_LEN: usize = core::mem::size_of::<XskMeta>();
const _: () = assert!(XSK_META_LEN == 16);

/// Where [`XskMeta::addrs`], [`XskMeta::epoch`] and [`XskMeta::kind`] sit (the XDP program
/// writes them at these offsets, the pad after them zeroed to the end).
pub mod xsk_meta {
    use super::XskMeta;
    pub const ADDRS: usize = core::mem::offset_of!(XskMeta, addrs);
    pub const EPOCH: usize = core::mem::offset_of!(XskMeta, epoch);
    pub const KIND: usize = core::mem::offset_of!(XskMeta, kind);
    pub const PAD: usize = core::mem::offset_of!(XskMeta, _pad);
    const _: () = assert!(ADDRS == 4 && EPOCH == 5 && KIND == 6 && PAD == 7);
}

/// [`XskMeta::magic`]: "xtm1".
pub const XSK_META_MAGIC: u32 = u32::from_le_bytes(*b"xtm1");

/// A `PAYLOADS` record of size class `N`: the header and room for `N` frame bytes, of which
/// `header.cap_len` are the frame. The XDP program reserves the smallest class that holds
/// the frame ([`payload_class`]): `bpf_ringbuf_reserve` needs a size the verifier knows.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PayloadRecord<const N: usize = PAYLOAD_CAP> {
    pub header: PayloadHeader,
    pub data: [u8; N],
}

/// Frame bytes of the smallest payload record class that holds `cap` bytes: 128, 256, 512,
/// 1024 or [`PAYLOAD_CAP`].
pub const fn payload_class(cap: usize) -> usize {
    if cap <= 128 {
        128
    } else if cap <= 256 {
        256
    } else if cap <= 512 {
        512
    } else if cap <= 1024 {
        1024
    } else {
        PAYLOAD_CAP
    }
}

/// Builds the v4-mapped IPv6 form of an IPv4 address given in network order.
#[inline(always)]
pub const fn v4_mapped(a: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

/// Userspace's raw `bpf(2)`, for the commands aya does not wrap (batched map updates,
/// test runs with options, object info): one place for the syscall.
#[cfg(feature = "user")]
pub mod sys {
    extern crate std;

    /// `bpf(cmd, attr)` with `attr`'s size: what it returns (0, or a new descriptor for the
    /// commands that create one), or the OS error.
    ///
    /// # Safety
    /// `attr` is a valid, initialised `bpf_attr` prefix for `cmd`, and every pointer in it
    /// points at memory valid for what `cmd` reads or writes there during the call.
    pub unsafe fn bpf<T>(cmd: u32, attr: &mut T) -> std::io::Result<i64> {
        // SAFETY: by the caller's contract.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                libc::c_long::from(cmd),
                attr as *mut T,
                core::mem::size_of::<T>() as libc::c_uint,
            )
        };
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for IpPortKey {}
    unsafe impl aya::Pod for TrailKey4 {}
    unsafe impl aya::Pod for TrailKey6 {}
    unsafe impl aya::Pod for Lpm4Key {}
    unsafe impl aya::Pod for Lpm6Key {}
    unsafe impl aya::Pod for HitRecord {}
    unsafe impl aya::Pod for PayloadHeader {}
    unsafe impl<const N: usize> aya::Pod for PayloadRecord<N> {}
    unsafe impl aya::Pod for FlowRecord {}
    unsafe impl aya::Pod for FlowBatch {}
    unsafe impl aya::Pod for PerCpuStats {}
}

#[cfg(test)]
mod tests {
    use super::{ring, wake};

    #[test]
    fn wake_thresholds_follow_ring_sizes() {
        // The default rings keep the fixed thresholds of before.
        assert_eq!(
            wake::shifts(ring::PAYLOADS_BYTES, ring::HITS_BYTES, ring::FLOWS_BYTES),
            [18, 14, 16, 0]
        );
        // Larger rings: never above the defaults.
        assert_eq!(wake::shifts(1 << 30, 1 << 30, 1 << 30), [18, 14, 16, 0]);
        // The smallest rings (one 4 KiB page): an eighth, 512 bytes.
        assert_eq!(wake::shifts(4096, 4096, 4096), [9, 9, 9, 0]);
        // 64 KiB rings: 8 KiB.
        assert_eq!(wake::shift_for(wake::HITS, 64 << 10), 13);
        // Never below 256 bytes, whatever userspace passes.
        assert_eq!(wake::shift_for(wake::FLOWS, 0), 8);
        assert_eq!(wake::shift_for(wake::FLOWS, 1024), 8);
    }

    #[test]
    fn config_layout_is_unchanged() {
        assert_eq!(core::mem::size_of::<super::Config>(), 40);
        assert_eq!(core::mem::offset_of!(super::Config, hash_seed), 32);
    }
}
