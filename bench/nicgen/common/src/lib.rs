//! What the NIC-like generator's XDP program (`bench/nicgen/ebpf`) and its userspace share:
//! the map value layouts ([`GenConfig`], [`Template`]), how a frame becomes a template
//! ([`Template::from_frame`]) and how a template is rewritten per flow
//! ([`Template::rewrite`]), which templates are one flow's segments ([`Template::link`]) and
//! which template a slot sends next ([`Slot::advance`]). The loader (`xtrail-nicgen`) fills
//! the maps with these types and `xtrail_bench::flows` reproduces the program's frame
//! sequence with the same rewrite.
//!
//! `#[repr(C)]` and fixed size; with the `user` feature the map types implement `aya::Pod`.
#![no_std]

/// Largest template frame (bytes).
pub const MAX_FRAME: usize = 2048;
/// Most flows open at once per CPU.
pub const MAX_WINDOW: u32 = 4096;
/// Most templates one flow sends in a row ([`Template::link`]).
pub const MAX_CHAIN: u32 = 4;

/// Generator settings (element 0 of `CONFIG`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GenConfig {
    /// Interface frames are redirected to.
    pub ifindex: u32,
    /// Templates in `TEMPLATES`.
    pub templates: u32,
    /// Flows open at once (slots), at most [`MAX_WINDOW`].
    pub window: u32,
    pub _pad: u32,
}

/// One template frame (an element of `TEMPLATES`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Template {
    /// Frame length.
    pub len: u32,
    /// Packets per flow of this template.
    pub packets: u32,
    /// Offset of the IPv4 header, or 0: send the frame as it is.
    pub l3: u16,
    /// Offset of the TCP/UDP source port.
    pub sport_off: u16,
    /// Offset of the TCP/UDP checksum, or 0 (none, or a UDP checksum of 0).
    pub csum_off: u16,
    /// 1 when the checksum is UDP's (0 must be written as 0xffff).
    pub udp: u16,
    /// The template's source address and port and checksums, as 16-bit words read in
    /// memory order (one's complement sums do not care about byte order).
    pub src_words: [u16; 2],
    pub sport: u16,
    pub ip_csum: u16,
    pub l4_csum: u16,
    /// 1 when the flow goes on with the next template (the next segment of its TCP stream).
    pub follows: u8,
    /// 1 when this template goes on with the previous one's flow: it starts none.
    pub continues: u8,
    pub data: [u8; MAX_FRAME],
}

const _: () = assert!(core::mem::size_of::<Template>() == 28 + MAX_FRAME);

#[cfg(feature = "user")]
// SAFETY: repr(C), plain integers, no padding.
unsafe impl aya::Pod for GenConfig {}

#[cfg(feature = "user")]
// SAFETY: repr(C), plain integers and bytes; the fields add up to a multiple of 4 bytes.
unsafe impl aya::Pod for Template {}

/// Byte `i` of a background payload: bytes that look like encrypted data (a fixed
/// splitmix64 stream), so that a sensor reads them as it reads real data segments (all
/// zeros would look like no payload); the templates know their background frames by them.
/// The first bytes are no HTTP method, TLS record or QUIC Initial.
#[inline]
pub const fn filler_byte(i: usize) -> u8 {
    let mut x = (i as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (x ^ (x >> 31)) as u8
}

/// Whether `payload` is a background payload ([`filler_byte`]s from the first).
pub fn is_filler(payload: &[u8]) -> bool {
    payload
        .iter()
        .enumerate()
        .all(|(i, &b)| b == filler_byte(i))
}

/// Why a frame cannot be a template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TemplateError(pub &'static str);

impl core::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.0)
    }
}

impl core::error::Error for TemplateError {}

/// The bytes a flow's frame gets in place of the template's, at the template's offsets:
/// `addr` at `l3 + 12`, `ip_csum` at `l3 + 10`, `port` at `sport_off`, and `l4_csum` at
/// `csum_off` when that is not 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rewrite {
    pub addr: [u8; 4],
    pub ip_csum: [u8; 2],
    pub port: [u8; 2],
    pub l4_csum: [u8; 2],
}

fn word(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

/// Adds the change from `old` to `new` to a one's complement sum (RFC 1624, eq. 3).
#[inline(always)]
fn csum_add(sum: u32, old: u16, new: u16) -> u32 {
    sum + u32::from(!old) + u32::from(new)
}

/// Applies a sum of changes to checksum `csum`.
#[inline(always)]
fn csum_finish(csum: u16, sum: u32) -> u16 {
    let mut s = u32::from(!csum) + sum;
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// The source address (198.18.0.0/15, big-endian) and source port of flow `flow` as CPU
/// `cpu` numbers it: each CPU numbers its flows on its own, the CPU goes into the low bits.
#[inline(always)]
pub fn flow_source(flow: u64, cpu: u64) -> ([u8; 4], u16) {
    let key = flow * 8 + (cpu & 7);
    let host = (key & 0x1_ffff) as u32;
    let src: u32 = 0xc612_0000 | if host == 0 { 1 } else { host };
    let sport = (1024 + ((key >> 17).wrapping_mul(7919) + key) % 64_000) as u16;
    (src.to_be_bytes(), sport)
}

impl Template {
    /// A template from an Ethernet frame. Untagged IPv4 TCP and UDP frames (not fragments)
    /// get per-flow source addresses and ports; anything else is sent as it is. A frame
    /// whose payload (up to the IPv4 total length: not the Ethernet padding of a short frame)
    /// is a background payload ([`is_filler`]; none at all counts) is sent `flow_packets`
    /// times per flow, any other (DNS, HTTP, TLS) once.
    pub fn from_frame(frame: &[u8], flow_packets: u32) -> Result<Template, TemplateError> {
        if frame.len() < 14 || frame.len() > MAX_FRAME {
            return Err(TemplateError(
                "frame shorter than Ethernet or longer than MAX_FRAME",
            ));
        }
        let mut t = Template {
            len: frame.len() as u32,
            packets: 1,
            l3: 0,
            sport_off: 0,
            csum_off: 0,
            udp: 0,
            src_words: [0; 2],
            sport: 0,
            ip_csum: 0,
            l4_csum: 0,
            follows: 0,
            continues: 0,
            data: [0; MAX_FRAME],
        };
        t.data[..frame.len()].copy_from_slice(frame);
        let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
        if ethertype != 0x0800 || frame.len() < 34 {
            return Ok(t);
        }
        let l3 = 14usize;
        let ihl = usize::from(frame[l3] & 0x0f) * 4;
        let proto = frame[l3 + 9];
        let frag = u16::from_be_bytes([frame[l3 + 6], frame[l3 + 7]]) & 0x3fff;
        let l4 = l3 + ihl;
        let (csum_at, hdr) = match proto {
            6 => (l4 + 16, 20),
            17 => (l4 + 6, 8),
            _ => return Ok(t),
        };
        if frag != 0 || ihl < 20 || frame.len() < l4 + hdr {
            return Ok(t);
        }
        let payload =
            payload_span(frame, l3, l4, proto == 17).and_then(|(data, end)| frame.get(data..end));
        if is_filler(payload.unwrap_or_default()) {
            t.packets = flow_packets.max(1);
        }
        t.l3 = l3 as u16;
        t.sport_off = l4 as u16;
        t.src_words = [word(frame, l3 + 12), word(frame, l3 + 14)];
        t.sport = word(frame, l4);
        t.ip_csum = word(frame, l3 + 10);
        t.l4_csum = word(frame, csum_at);
        t.udp = u16::from(proto == 17);
        // A UDP checksum of 0 means none: leave it so.
        if !(proto == 17 && t.l4_csum == 0) {
            t.csum_off = csum_at as u16;
        }
        Ok(t)
    }

    /// The template's frame bytes.
    pub fn frame(&self) -> &[u8] {
        &self.data[..(self.len as usize).min(MAX_FRAME)]
    }

    /// Marks templates that are the consecutive data segments of one TCP stream (same
    /// addresses and ports, each starting at the sequence number where the one before ends)
    /// as one flow's, up to [`MAX_CHAIN`] in a row: such a flow sends them in order, from
    /// one source (a ClientHello longer than a segment, say).
    pub fn link(templates: &mut [Template]) {
        let mut run = 1;
        for i in 1..templates.len() {
            let (before, after) = templates.split_at_mut(i);
            let (a, b) = (&mut before[i - 1], &mut after[0]);
            if run < MAX_CHAIN && a.is_followed_by(b) {
                a.follows = 1;
                b.continues = 1;
                run += 1;
            } else {
                run = 1;
            }
        }
    }

    /// Whether `next` is the data segment that follows this one in the same TCP stream.
    fn is_followed_by(&self, next: &Template) -> bool {
        match (self.tcp_data(), next.tcp_data()) {
            (Some((key, seq, len)), Some((next_key, next_seq, next_len))) => {
                len > 0 && next_len > 0 && key == next_key && seq.wrapping_add(len) == next_seq
            }
            _ => false,
        }
    }

    /// A rewritable TCP template's stream (addresses and ports), sequence number and
    /// payload length.
    fn tcp_data(&self) -> Option<([u8; 12], u32, u32)> {
        if self.l3 == 0 || self.udp != 0 {
            return None;
        }
        let f = self.frame();
        let (l3, l4) = (usize::from(self.l3), usize::from(self.sport_off));
        let (data, end) = payload_span(f, l3, l4, false)?;
        let seq = f.get(l4 + 4..l4 + 8)?;
        let mut key = [0u8; 12];
        key[..8].copy_from_slice(f.get(l3 + 12..l3 + 20)?);
        key[8..].copy_from_slice(f.get(l4..l4 + 4)?);
        Some((
            key,
            u32::from_be_bytes([seq[0], seq[1], seq[2], seq[3]]),
            end.saturating_sub(data) as u32,
        ))
    }

    /// What flow `flow` of CPU `cpu` writes over this template (meaningful when `l3` is not
    /// 0): its source address and port, with both checksums updated incrementally.
    #[inline(always)]
    pub fn rewrite(&self, flow: u64, cpu: u64) -> Rewrite {
        let (addr, sport) = flow_source(flow, cpu);
        let port = sport.to_be_bytes();
        let w0 = u16::from_ne_bytes([addr[0], addr[1]]);
        let w1 = u16::from_ne_bytes([addr[2], addr[3]]);
        let wp = u16::from_ne_bytes(port);
        let addr_sum = csum_add(csum_add(0, self.src_words[0], w0), self.src_words[1], w1);
        let ip_csum = csum_finish(self.ip_csum, addr_sum).to_ne_bytes();
        let l4 = csum_finish(self.l4_csum, csum_add(addr_sum, self.sport, wp));
        let l4 = if l4 == 0 && self.udp != 0 { 0xffff } else { l4 };
        Rewrite {
            addr,
            ip_csum,
            port,
            l4_csum: l4.to_ne_bytes(),
        }
    }
}

/// Where the TCP (`udp` false) or UDP payload of an IPv4 frame lies: from the end of its
/// transport header (TCP's data offset) to the IPv4 total length (not the Ethernet padding of
/// a short frame), within the frame.
fn payload_span(frame: &[u8], l3: usize, l4: usize, udp: bool) -> Option<(usize, usize)> {
    let total = usize::from(u16::from_be_bytes([
        *frame.get(l3 + 2)?,
        *frame.get(l3 + 3)?,
    ]));
    let data = if udp {
        l4 + 8
    } else {
        l4 + usize::from(*frame.get(l4 + 12)? >> 4) * 4
    };
    Some((data, (l3 + total).min(frame.len())))
}

/// One open flow of a generator slot: the program's per-CPU `SLOTS` values, and what
/// `xtrail_bench::flows` keeps for each slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Slot {
    /// The flow's number (its source address and port, [`flow_source`]).
    pub flow: u64,
    /// The template being sent.
    pub template: u32,
    /// Packets of that template still to send.
    pub left: u32,
    /// 1 when the flow goes on with the next template once these are sent.
    pub follows: u32,
    pub _pad: u32,
}

impl Slot {
    /// Moves the slot on by one packet and gives the template index to send. A slot whose
    /// flow is done starts the next flow (`next_flow`, taken and counted up) with template
    /// `flow % templates`; flow numbers whose template continues another's flow are passed
    /// over. `shape(i)`: template `i`'s packets, `follows` and `continues`.
    #[inline(always)]
    pub fn advance<F>(&mut self, templates: u32, next_flow: &mut u64, shape: F) -> Option<u32>
    where
        F: Fn(u32) -> Option<(u32, u8, u8)>,
    {
        if self.left == 0 {
            if self.follows != 0 {
                self.template += 1;
            } else {
                // A chain has at most MAX_CHAIN templates, so MAX_CHAIN tries reach a
                // template that starts a flow (the first never continues one).
                for _ in 0..MAX_CHAIN {
                    let f = *next_flow;
                    *next_flow = f + 1;
                    self.flow = f;
                    // `checked_rem`: a remainder the compiler cannot prove safe would link
                    // a panic into the BPF program.
                    self.template = f.checked_rem(u64::from(templates)).unwrap_or(0) as u32;
                    if shape(self.template)?.2 == 0 {
                        break;
                    }
                }
            }
            let (packets, follows, _) = shape(self.template)?;
            self.left = packets.max(1);
            self.follows = u32::from(follows);
        }
        self.left -= 1;
        Some(self.template)
    }
}
