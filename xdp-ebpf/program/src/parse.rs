//! Bounded header parsing over the XDP frame: every read is checked against `data_end`.

use aya_ebpf::bindings::xdp_md;
use aya_ebpf::helpers::bpf_xdp_load_bytes;
use aya_ebpf::programs::XdpContext;
use xtrail_common::flow;

/// The bounds of a frame: what the bounded reads check against.
pub trait Bounds {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
}

impl Bounds for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
}

/// Frame bounds read once from the context (see `parse_into`).
pub struct Frame {
    start: usize,
    end: usize,
    raw: *mut xdp_md,
}

/// Passes `v` through map memory (`scratch`, a word of this CPU's `PACKET` slot): the
/// verifier knows nothing of a value read from a map, so the paths that reach the same point
/// with different values (here one per sequence of IPv6 extension headers) become one state
/// and are pruned, instead of each walking the rest of the program. Costs a store and a load.
#[inline(always)]
pub fn forget(scratch: &mut u64, v: u64) -> u64 {
    // SAFETY: a valid, aligned `u64`; volatile so that the store and load stay.
    unsafe {
        core::ptr::write_volatile(scratch, v);
        core::ptr::read_volatile(scratch)
    }
}

impl Bounds for Frame {
    #[inline(always)]
    fn data(&self) -> usize {
        self.start
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        self.end
    }
}

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;

/// The third word of a v4-mapped IPv6 address (`::ffff:0:0/96`), in memory order.
pub const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// How many IPv6 extension headers are skipped before giving up (userspace's parser walks
/// as many).
const MAX_IPV6_EXT: usize = xtrail_common::MAX_IPV6_EXT_HEADERS;

/// Offsets past this many bytes are malformed (no linear XDP frame is as long): the bound
/// the verifier needs on an offset it knows nothing else of (see `forget`).
const MAX_L4_OFF: usize = 4096;

pub enum ParseError {
    /// Not an IP packet (ARP, LLDP, ...).
    NotIp,
    /// Truncated or inconsistent headers.
    Malformed,
}

/// The fields of a packet the trail lookups need.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Packet {
    pub family: u8,
    pub proto: u8,
    /// Addresses as four 32-bit words in network byte order (as they sit in the packet);
    /// IPv4 as v4-mapped IPv6 (`::ffff:a.b.c.d`). Words, not bytes: byte arrays get
    /// scalarised into one stack slot per byte and blow the 512-byte BPF stack.
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub src_port: u16,
    pub dst_port: u16,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    /// TCP sequence number (host order; 0 for other protocols).
    pub tcp_seq: u32,
    /// A fragment after the first: no transport header.
    pub fragment: bool,
    /// Offset of the TCP/UDP payload in the frame (0 when there is none).
    pub payload_off: usize,
    /// Parser's scratch word (`forget`).
    pub scratch: u64,
}

impl Packet {
    /// A TCP connection attempt or stealth probe (`flow::tcp_starts_flow`), or a UDP datagram
    /// that is not a reply by its ports (deduplicated per flow by the caller): what
    /// userspace's scan heuristics count.
    #[inline(always)]
    pub fn is_flow_start(&self) -> bool {
        match self.proto {
            IPPROTO_TCP => flow::tcp_starts_flow(self.tcp_flags),
            IPPROTO_UDP => !flow::udp_reply_by_ports(self.src_port, self.dst_port),
            _ => false,
        }
    }

    /// Maltrail's IP semantics: TCP SYN (without ACK), any UDP, ICMP echo requests, and any
    /// packet of another protocol (GRE, ESP, SCTP, ...; an IPv6 header past the walked
    /// ones) but 0, as userspace's pipeline reports them in replay.
    #[inline(always)]
    pub fn reportable(&self) -> bool {
        if self.fragment {
            return false;
        }
        match self.proto {
            IPPROTO_TCP => self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN,
            IPPROTO_UDP => true,
            IPPROTO_ICMP => self.icmp_type == ICMP_ECHO_REQUEST,
            IPPROTO_ICMPV6 => self.icmp_type == ICMPV6_ECHO_REQUEST,
            // 0: an IPv4 header naming IPv6 hop-by-hop options, or one past the walk (it
            // comes first or not at all); an empty `HitSeen` slot stands for protocol 0.
            p => p != 0,
        }
    }
}

#[inline(always)]
fn ptr_at<T>(ctx: &impl Bounds, offset: usize) -> Result<*const T, ParseError> {
    let start = ctx.data();
    let end = ctx.data_end();
    let len = core::mem::size_of::<T>();
    if start + offset + len > end {
        return Err(ParseError::Malformed);
    }
    Ok((start + offset) as *const T)
}

/// Reads a `T` at `offset`. Reads are at least two bytes wide: a one-byte bounds check
/// compiles to a `pkt_end > ptr` comparison the verifier does not learn a range from.
/// A word type is read with one load of its width, not byte by byte as `read_unaligned`
/// compiles for BPF (four loads, three shifts and three ors per IPv4 address): packet
/// headers sit at 2-byte boundaries at best, but the verifier accepts misaligned packet
/// loads wherever the JIT performs them (it rejects them where alignment matters), and the
/// x86-64 and arm64 JITs do.
#[inline(always)]
fn read<T: Copy>(ctx: &impl Bounds, offset: usize) -> Result<T, ParseError> {
    // SAFETY: ptr_at checked that `size_of::<T>()` bytes at `offset` lie inside the frame.
    // The pointer may be misaligned for `T`, which Rust's rules do not allow for `read`: this
    // relies on the BPF backend compiling it to one plain load (the eBPF build is always
    // release, so no alignment debug check is emitted) and on the kernel accepting
    // misaligned packet loads (x86-64 and arm64 JITs; a strict-alignment kernel refuses
    // the program at load rather than misbehaving).
    Ok(unsafe { core::ptr::read(ptr_at::<T>(ctx, offset)?) })
}

/// The first eight payload bytes as two big-endian words, or `(0, 0)` when the frame has
/// fewer than eight bytes after `off`. (Words, not an `Option<[u8; 8]>`: LLVM copies the
/// latter's undefined bytes from registers the verifier considers uninitialised.)
#[inline(always)]
pub fn payload_head(ctx: &XdpContext, off: usize) -> (u32, u32) {
    if off == 0 || off > 1024 {
        return (0, 0);
    }
    match (read::<u32>(ctx, off), read::<u32>(ctx, off + 4)) {
        (Ok(a), Ok(b)) => (u32::from_be(a), u32::from_be(b)),
        _ => (0, 0),
    }
}

/// Reads a `T` at `off` with `bpf_xdp_load_bytes`, which checks the bounds at run time: for
/// offsets the verifier knows nothing of (past IPv6 extension headers), where a bounds check
/// in the program would not be understood.
#[inline(always)]
fn load<T: Copy>(ctx: &Frame, off: usize) -> Result<T, ParseError> {
    let mut v = core::mem::MaybeUninit::<T>::uninit();
    // SAFETY: the helper writes `size_of::<T>()` bytes into `v` or fails.
    let rc = unsafe {
        bpf_xdp_load_bytes(
            ctx.raw,
            off as u32,
            v.as_mut_ptr().cast(),
            core::mem::size_of::<T>() as u32,
        )
    };
    if rc != 0 {
        return Err(ParseError::Malformed);
    }
    // SAFETY: the helper filled `v`.
    Ok(unsafe { v.assume_init() })
}

/// A read at a known offset (`read`), or past extension headers (`load`).
#[inline(always)]
fn read_at<T: Copy>(ctx: &Frame, off: usize, walked: bool) -> Result<T, ParseError> {
    if walked {
        load(ctx, off)
    } else {
        read(ctx, off)
    }
}

#[inline(always)]
fn be16(ctx: &impl Bounds, offset: usize) -> Result<u16, ParseError> {
    Ok(u16::from_be(read::<u16>(ctx, offset)?))
}

/// Parses the frame into `out` (a per-CPU scratch slot, see `PACKET` in main.rs) and returns
/// 0, or 1 for a frame that is not IP, 2 for a malformed one. Everything it learns goes to
/// map memory, which the verifier knows nothing of when the caller reads it back: the paths
/// through the parser (VLAN tags, IPv4 options, IPv6 extension headers) end in states it
/// prunes, so the rest of the program is walked once per return value, not once per header
/// layout (which cost over 600,000 instructions of verification, 1.5 s at start). Inline:
/// as a BPF function of its own (as it was) the call and return cost 7-11 ns per packet on
/// a kernel whose returns go through a return thunk (AMD's SRSO mitigation), for ~3,300
/// more instructions of verification than the call.
#[inline(always)]
pub fn parse_into(ctx: *mut xdp_md, out: &mut Packet) -> u32 {
    // Volatile reads: the frame bounds must be read here, from the context, for the verifier
    // to know them as packet pointers (the compiler would otherwise pass them in as plain
    // integers).
    // SAFETY: `ctx` is the program's context pointer.
    let frame = unsafe {
        Frame {
            start: core::ptr::read_volatile(&(*ctx).data) as usize,
            end: core::ptr::read_volatile(&(*ctx).data_end) as usize,
            raw: ctx,
        }
    };
    // Written in place: a `Packet` built on the stack and copied cost ~2 ns per packet.
    match parse(&frame, out) {
        Ok(()) => 0,
        Err(ParseError::NotIp) => 1,
        Err(ParseError::Malformed) => 2,
    }
}

#[inline(always)]
fn parse(ctx: &Frame, pkt: &mut Packet) -> Result<(), ParseError> {
    let mut off = 12usize;
    let mut ethertype = be16(ctx, off)?;
    off += 2;
    // Up to two VLAN tags (802.1ad outer, 802.1Q inner).
    if ethertype == ETH_P_8021AD || ethertype == ETH_P_8021Q {
        ethertype = be16(ctx, off + 2)?;
        off += 4;
        if ethertype == ETH_P_8021AD || ethertype == ETH_P_8021Q {
            ethertype = be16(ctx, off + 2)?;
            off += 4;
        }
    }
    // Only the fields the IPv4 and IPv6 paths do not both write, one store each: an assignment
    // of a whole `Packet` to map memory, or plain stores to adjacent fields (which LLVM
    // merges), compile to a call to a byte-wise `memset`.
    // SAFETY: volatile stores to fields of a valid `&mut Packet`.
    unsafe {
        core::ptr::write_volatile(&mut pkt.fragment, false);
        core::ptr::write_volatile(&mut pkt.src_port, 0);
        core::ptr::write_volatile(&mut pkt.dst_port, 0);
        core::ptr::write_volatile(&mut pkt.tcp_flags, 0);
        core::ptr::write_volatile(&mut pkt.icmp_type, 0);
        core::ptr::write_volatile(&mut pkt.tcp_seq, 0);
        core::ptr::write_volatile(&mut pkt.payload_off, 0);
    }
    // `walked`: past IPv6 extension headers, where offsets are read with `load`.
    let (l4, walked) = match ethertype {
        ETH_P_IP => (parse_ipv4(ctx, off, pkt)?, false),
        ETH_P_IPV6 => parse_ipv6(ctx, off, pkt)?,
        _ => return Err(ParseError::NotIp),
    };
    if pkt.fragment {
        return Ok(());
    }
    match pkt.proto {
        IPPROTO_TCP => {
            // Ports, sequence number, data offset and flags.
            let h = read_at::<TcpHead>(ctx, l4, walked)?;
            pkt.src_port = u16::from_be(h.src_port);
            pkt.dst_port = u16::from_be(h.dst_port);
            pkt.tcp_seq =
                u32::from(u16::from_be(h.seq[0])) << 16 | u32::from(u16::from_be(h.seq[1]));
            pkt.tcp_flags = h.off_flags[1];
            let doff = ((h.off_flags[0] >> 4) as usize) * 4;
            if doff >= 20 {
                pkt.payload_off = l4 + doff;
            }
        }
        IPPROTO_UDP => {
            let h = read_at::<[u16; 2]>(ctx, l4, walked)?;
            pkt.src_port = u16::from_be(h[0]);
            pkt.dst_port = u16::from_be(h[1]);
            pkt.payload_off = l4 + 8;
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            pkt.icmp_type = read_at::<[u8; 2]>(ctx, l4, walked)?[0];
        }
        // No header read: the headers before it must still end within the frame, as
        // userspace's parser wants them to (else a truncated chain would be a hit live only).
        _ => {
            if l4 > ctx.data_end() - ctx.data() {
                return Err(ParseError::Malformed);
            }
        }
    }
    Ok(())
}

/// The first 14 bytes of a TCP header (ports through flags), in 16-bit words: one load
/// per field, and no more bytes required than the parser always read.
#[repr(C)]
#[derive(Clone, Copy)]
struct TcpHead {
    src_port: u16,
    dst_port: u16,
    seq: [u16; 2],
    _ack: [u16; 2],
    /// Data offset (high nibble of the first byte) and flags (second byte).
    off_flags: [u8; 2],
}

/// An IPv4 header without options, in words.
#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv4Head {
    /// Version and header length, type of service.
    vihl_tos: [u8; 2],
    /// Total length (network order).
    len: u16,
    _id: u16,
    /// Flags and fragment offset (network order).
    frag: u16,
    /// Time to live, protocol.
    ttl_proto: [u8; 2],
    _csum: u16,
    src: u32,
    dst: u32,
}

/// Returns the offset of the transport header.
#[inline(always)]
fn parse_ipv4(ctx: &Frame, off: usize, pkt: &mut Packet) -> Result<usize, ParseError> {
    // One bounds check for the fixed header.
    let h = read::<Ipv4Head>(ctx, off)?;
    let vihl = h.vihl_tos[0];
    if vihl >> 4 != 4 {
        return Err(ParseError::Malformed);
    }
    let ihl = ((vihl & 0x0f) as usize) * 4;
    // A total length shorter than the header is malformed, as userspace's parser has it;
    // 0 is what captures of segmentation-offloaded packets show.
    let total = u16::from_be(h.len) as usize;
    if ihl < 20 || (total != 0 && total < ihl) {
        return Err(ParseError::Malformed);
    }
    pkt.family = 4;
    pkt.proto = h.ttl_proto[1];
    pkt.src = [0, 0, V4_MAPPED_WORD, h.src];
    pkt.dst = [0, 0, V4_MAPPED_WORD, h.dst];
    pkt.fragment = u16::from_be(h.frag) & 0x1fff != 0;
    Ok(off + ihl)
}

/// `*to = words`, one 32-bit store per word: an array assignment from the frame to map
/// memory compiles to a call to a byte-wise `memmove`.
#[inline(always)]
pub fn set_words(to: &mut [u32; 4], words: [u32; 4]) {
    for (t, w) in to.iter_mut().zip(words) {
        // SAFETY: a volatile store to a valid `&mut u32`.
        unsafe { core::ptr::write_volatile(t, w) };
    }
}

#[inline(always)]
fn parse_ipv6(ctx: &Frame, off: usize, pkt: &mut Packet) -> Result<(usize, bool), ParseError> {
    let v = read::<[u8; 2]>(ctx, off)?[0];
    if v >> 4 != 6 {
        return Err(ParseError::Malformed);
    }
    pkt.family = 6;
    let mut next = read::<[u8; 2]>(ctx, off + 6)?[0];
    let src = read::<[u32; 4]>(ctx, off + 8)?;
    let dst = read::<[u32; 4]>(ctx, off + 24)?;
    set_words(&mut pkt.src, src);
    set_words(&mut pkt.dst, dst);
    let mut l4 = off + 40;
    if !matches!(next, 0 | 43 | 60 | 135 | 139 | 140 | 44 | 51) {
        pkt.proto = next;
        return Ok((l4, false));
    }
    let mut fragment = false;
    for _ in 0..MAX_IPV6_EXT {
        // Where the walk stands, forgotten by the verifier (see `forget`); reads
        // from here on go through `load`.
        let w = forget(
            &mut pkt.scratch,
            l4 as u64 | u64::from(next) << 32 | u64::from(fragment) << 40,
        );
        l4 = (w & 0xffff_ffff) as usize;
        next = (w >> 32) as u8;
        fragment = (w >> 40) & 1 == 1;
        if l4 > MAX_L4_OFF {
            return Err(ParseError::Malformed);
        }
        // A later fragment carries data, not headers (userspace's parser stops here too).
        if fragment {
            break;
        }
        match next {
            // Hop-by-hop, routing, destination options, mobility, HIP, Shim6: length in
            // 8-octet units (as userspace's parser walks them).
            0 | 43 | 60 | 135 | 139 | 140 => {
                let h = load::<[u8; 2]>(ctx, l4)?;
                next = h[0];
                let len = (h[1] as usize + 1) * 8;
                l4 += len;
            }
            // Fragment header: fixed 8 bytes; later fragments carry no transport header.
            44 => {
                let h = load::<[u8; 4]>(ctx, l4)?;
                next = h[0];
                if u16::from_be_bytes([h[2], h[3]]) & 0xfff8 != 0 {
                    fragment = true;
                }
                l4 += 8;
            }
            // Authentication header: length in 4-octet units, plus 2.
            51 => {
                let h = load::<[u8; 2]>(ctx, l4)?;
                next = h[0];
                let len = (h[1] as usize + 2) * 4;
                l4 += len;
            }
            _ => break,
        }
    }
    let w = forget(
        &mut pkt.scratch,
        l4 as u64 | u64::from(next) << 32 | u64::from(fragment) << 40,
    );
    l4 = (w & 0xffff_ffff) as usize;
    next = (w >> 32) as u8;
    pkt.fragment = (w >> 40) & 1 == 1;
    if l4 > MAX_L4_OFF {
        return Err(ParseError::Malformed);
    }
    pkt.proto = next;
    Ok((l4, true))
}
