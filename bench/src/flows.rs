//! Per-flow rewriting of template frames, as the NIC-like generator's XDP program does it
//! (bench/nicgen/ebpf), for the AF_PACKET path: the same packet sequence from both
//! delivery paths.
//!
//! `window` flows are open at once and served round robin; a slot whose flow has sent all
//! its packets starts the next flow, numbered in order, with template `flow % templates`.
//! Untagged IPv4 TCP/UDP templates get the flow's source address (198.18.0.0/15) and source
//! port, checksums updated; a template whose payload is all zeros (background traffic) is
//! sent `flow_packets` times per flow, any other once.

/// One template and where its rewritten fields are.
#[derive(Clone, Debug)]
struct Template {
    frame: Vec<u8>,
    packets: u32,
    /// IPv4 header offset, or None: sent as it is.
    l3: Option<usize>,
    sport_off: usize,
    /// L4 checksum offset and whether it is UDP's.
    csum: Option<(usize, bool)>,
}

fn parse(frame: &[u8], flow_packets: u32) -> Template {
    let mut t = Template {
        frame: frame.to_vec(),
        packets: 1,
        l3: None,
        sport_off: 0,
        csum: None,
    };
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
        return t;
    }
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let proto = frame[23];
    let frag = u16::from_be_bytes([frame[20], frame[21]]) & 0x3fff;
    let l4 = 14 + ihl;
    let (csum_at, hdr) = match proto {
        6 => (l4 + 16, 20),
        17 => (l4 + 6, 8),
        _ => return t,
    };
    if frag != 0 || ihl < 20 || frame.len() < l4 + hdr {
        return t;
    }
    if frame[l4 + hdr..].iter().all(|&b| b == 0) {
        t.packets = flow_packets.max(1);
    }
    t.l3 = Some(14);
    t.sport_off = l4;
    let udp = proto == 17;
    if !(udp && frame[csum_at..csum_at + 2] == [0, 0]) {
        t.csum = Some((csum_at, udp));
    }
    t
}

/// The flow's source address and port (as the XDP generator computes them on CPU `cpu`).
pub fn flow_source(flow: u64, cpu: u64) -> ([u8; 4], u16) {
    let key = flow * 8 + (cpu & 7);
    let host = (key & 0x1_ffff) as u32;
    let src = 0xc612_0000u32 | if host == 0 { 1 } else { host };
    let sport = (1024 + ((key >> 17).wrapping_mul(7919) + key) % 64_000) as u16;
    (src.to_be_bytes(), sport)
}

/// Incremental one's complement checksum update (RFC 1624, eq. 3) over 16-bit words.
fn csum_update(csum: [u8; 2], old: &[u8], new: &[u8]) -> [u8; 2] {
    let mut sum = u32::from(!u16::from_be_bytes(csum));
    for (o, n) in old.chunks(2).zip(new.chunks(2)) {
        sum += u32::from(!u16::from_be_bytes([o[0], o[1]]))
            + u32::from(u16::from_be_bytes([n[0], n[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    (!(sum as u16)).to_be_bytes()
}

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    flow: u64,
    template: usize,
    left: u32,
}

/// Produces the packet sequence of the XDP generator (one CPU) in userspace.
#[derive(Clone, Debug)]
pub struct FlowFrames {
    templates: Vec<Template>,
    slots: Vec<Slot>,
    seq: u64,
    next_flow: u64,
    cpu: u64,
}

impl FlowFrames {
    /// `first_flow` numbers the first flow (runs that must not repeat earlier flows start
    /// further on); `cpu` is the CPU whose numbering to reproduce.
    pub fn new(
        frames: &[Vec<u8>],
        flow_packets: u32,
        window: u32,
        first_flow: u64,
        cpu: u64,
    ) -> FlowFrames {
        FlowFrames {
            templates: frames.iter().map(|f| parse(f, flow_packets)).collect(),
            slots: vec![Slot::default(); window.clamp(1, 4096) as usize],
            seq: 0,
            next_flow: first_flow,
            cpu,
        }
    }

    /// Writes the next frame into `out` (cleared first).
    pub fn next_into(&mut self, out: &mut Vec<u8>) {
        out.clear();
        if self.templates.is_empty() {
            return;
        }
        let n = self.slots.len() as u64;
        let slot = &mut self.slots[(self.seq % n) as usize];
        self.seq += 1;
        if slot.left == 0 {
            slot.flow = self.next_flow;
            self.next_flow += 1;
            slot.template = (slot.flow % self.templates.len() as u64) as usize;
            slot.left = self.templates[slot.template].packets.max(1);
        }
        slot.left -= 1;
        let t = &self.templates[slot.template];
        out.extend_from_slice(&t.frame);
        let Some(l3) = t.l3 else { return };
        let (addr, sport) = flow_source(slot.flow, self.cpu);
        let sport = sport.to_be_bytes();
        let old_addr: [u8; 4] = [out[l3 + 12], out[l3 + 13], out[l3 + 14], out[l3 + 15]];
        let old_port = [out[t.sport_off], out[t.sport_off + 1]];
        let ip = csum_update([out[l3 + 10], out[l3 + 11]], &old_addr, &addr);
        out[l3 + 10..l3 + 12].copy_from_slice(&ip);
        out[l3 + 12..l3 + 16].copy_from_slice(&addr);
        out[t.sport_off..t.sport_off + 2].copy_from_slice(&sport);
        if let Some((at, udp)) = t.csum {
            let mut old = old_addr.to_vec();
            old.extend_from_slice(&old_port);
            let mut new = addr.to_vec();
            new.extend_from_slice(&sport);
            let mut c = csum_update([out[at], out[at + 1]], &old, &new);
            if udp && c == [0, 0] {
                c = [0xff, 0xff];
            }
            out[at..at + 2].copy_from_slice(&c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::{checksum, v4, Frame};

    #[test]
    fn rewritten_frames_keep_valid_checksums_and_flows_have_their_length() {
        let frames = vec![
            Frame::udp(v4("198.18.7.2"), 40000, v4("203.0.113.9"), 5000, &[0u8; 48]).build(),
            Frame::udp(v4("198.18.7.2"), 40000, v4("203.0.113.9"), 53, b"not zeros").build(),
        ];
        let mut g = FlowFrames::new(&frames, 8, 4, 0, 0);
        let mut f = Vec::new();
        let mut per_source = std::collections::HashMap::new();
        for _ in 0..4 * 9 * 10 {
            g.next_into(&mut f);
            let ip = &f[14..34];
            assert_eq!(checksum(&[ip]), 0);
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            let l4 = &f[34..14 + total];
            let mut pseudo = ip[12..20].to_vec();
            pseudo.extend_from_slice(&[0, 17]);
            pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            assert_eq!(checksum(&[&pseudo, l4]), 0);
            *per_source
                .entry((ip[12..16].to_vec(), l4[2..4].to_vec()))
                .or_insert(0) += 1;
        }
        // Flows alternate templates: 8 background packets, then one DNS packet; only the
        // flows still open in the 4 slots at the end are shorter.
        let short = per_source.values().filter(|&&n| n != 8 && n != 1).count();
        assert!(short <= 4, "{short} flows of odd lengths");
        assert!(per_source.values().all(|&n| n <= 8));
        assert!(per_source.values().filter(|&&n| n == 8).count() > 30);
    }
}
