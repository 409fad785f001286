//! Per-flow rewriting of template frames for the AF_PACKET path, with the NIC-like
//! generator's own templates and rewrite (`xtrail_nicgen_common`, which its XDP program in
//! bench/nicgen/ebpf uses too): the same packet sequence from both delivery paths.
//!
//! `window` flows are open at once and served round robin; a slot whose flow has sent all
//! its packets starts the next flow, numbered in order, with template `flow % templates`
//! (`Slot::advance`). Untagged IPv4 TCP/UDP templates get the flow's source address
//! (198.18.0.0/15) and source port, checksums updated; a template whose payload is a
//! background payload (`frames::background_payload`) is sent `flow_packets` times per flow,
//! any other once; consecutive templates that are one TCP stream's segments are one flow's,
//! sent in order (`Template::link`).

pub use xtrail_nicgen_common::TemplateError;
use xtrail_nicgen_common::{Rewrite, Slot, Template, MAX_WINDOW};

/// Packets per flow of the bench's background traffic.
pub const BENCH_FLOW_PACKETS: u32 = 8;
/// Flows the bench keeps open at once (interleaved).
pub const BENCH_WINDOW: u32 = 256;

/// The first `n` frames of [`FlowFrames`] over `frames` (first flow 0, CPU 0).
pub fn sequence(
    frames: &[Vec<u8>],
    flow_packets: u32,
    window: u32,
    n: usize,
) -> Result<Vec<Vec<u8>>, TemplateError> {
    let mut flows = FlowFrames::new(frames, flow_packets, window, 0, 0)?;
    Ok((0..n)
        .map(|_| {
            let mut f = Vec::new();
            flows.next_into(&mut f);
            f
        })
        .collect())
}

/// Produces the packet sequence of the XDP generator (one CPU) in userspace.
#[derive(Clone)]
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
    ) -> Result<FlowFrames, TemplateError> {
        let mut templates = frames
            .iter()
            .map(|f| Template::from_frame(f, flow_packets))
            .collect::<Result<Vec<_>, _>>()?;
        Template::link(&mut templates);
        Ok(FlowFrames {
            templates,
            slots: vec![Slot::default(); window.clamp(1, MAX_WINDOW) as usize],
            seq: 0,
            next_flow: first_flow,
            cpu,
        })
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
        let templates = &self.templates;
        let Some(t) = slot
            .advance(templates.len() as u32, &mut self.next_flow, |i| {
                templates
                    .get(i as usize)
                    .map(|t| (t.packets, t.follows, t.continues))
            })
            .and_then(|i| templates.get(i as usize))
        else {
            return;
        };
        out.extend_from_slice(t.frame());
        if t.l3 == 0 {
            return;
        }
        let (l3, sport, csum) = (
            usize::from(t.l3),
            usize::from(t.sport_off),
            usize::from(t.csum_off),
        );
        let Rewrite {
            addr,
            ip_csum,
            port,
            l4_csum,
        } = t.rewrite(slot.flow, self.cpu);
        out[l3 + 10..l3 + 12].copy_from_slice(&ip_csum);
        out[l3 + 12..l3 + 16].copy_from_slice(&addr);
        out[sport..sport + 2].copy_from_slice(&port);
        if csum != 0 {
            out[csum..csum + 2].copy_from_slice(&l4_csum);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::{background_udp, checksum, v4, Frame};

    #[test]
    fn rewritten_frames_keep_valid_checksums_and_flows_have_their_length() {
        let frames = vec![
            background_udp(v4("198.18.7.2"), 40000, v4("203.0.113.9"), 5000),
            Frame::udp(v4("198.18.7.2"), 40000, v4("203.0.113.9"), 53, b"not zeros").build(),
        ];
        let mut g = FlowFrames::new(&frames, 8, 4, 0, 0).expect("templates");
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

    /// A ClientHello in two segments is one flow's two packets, in order, from one source:
    /// no flow starts at the second segment.
    #[test]
    fn a_streams_segments_are_one_flow_sent_in_order() {
        let (c, s) = (v4("198.18.7.2"), v4("203.0.113.9"));
        let hello = vec![0x16u8; 2000];
        let tls = Frame::tcp(c, 40001, s, 443, crate::frames::tcp_flags::ACK);
        let mut frames = vec![background_udp(c, 40000, s, 5000)];
        frames.extend(tls.segments(&hello, crate::frames::MSS));
        frames.push(Frame::udp(c, 40002, s, 53, b"not zeros").build());
        assert_eq!(frames.len(), 4);
        let mut g = FlowFrames::new(&frames, 8, 4, 0, 0).expect("templates");
        let mut f = Vec::new();
        let mut open = std::collections::HashSet::new();
        let (mut firsts, mut seconds) = (0, 0);
        for _ in 0..4 * 11 * 10 {
            g.next_into(&mut f);
            let source = f[26..30].to_vec();
            match f.len() {
                1514 => {
                    assert!(open.insert(source));
                    firsts += 1;
                }
                n if n == 54 + 2000 - 1460 => {
                    assert!(open.remove(&source), "a second segment without its first");
                    seconds += 1;
                }
                _ => {}
            }
        }
        assert!(seconds > 20 && firsts - seconds <= 4, "{firsts} {seconds}");
    }

    /// A SYN without payload is background (8 packets a flow) though its frame is padded to
    /// 60 bytes with zeros; DNS is not.
    #[test]
    fn padding_is_no_payload() {
        let (c, s) = (v4("198.18.7.2"), v4("203.0.113.9"));
        let syn = Frame::syn(c, 40000, s, 443).build();
        assert_eq!(syn.len(), 60);
        let dns = Frame::udp(
            c,
            40001,
            s,
            53,
            &crate::frames::dns_query(1, "a.example", 1),
        )
        .build();
        let packets = |f: &Vec<u8>| Template::from_frame(f, 8).expect("template").packets;
        assert_eq!((packets(&syn), packets(&dns)), (8, 1));
    }

    /// Segments are linked only where each starts where the one before ends, in one stream,
    /// and at most `MAX_CHAIN` in a row.
    #[test]
    fn only_a_streams_next_segments_are_linked() {
        use xtrail_nicgen_common::MAX_CHAIN;
        let (c, s) = (v4("198.18.7.2"), v4("203.0.113.9"));
        let stream = Frame::tcp(c, 40001, s, 443, crate::frames::tcp_flags::ACK);
        let mut frames = stream.segments(&[1u8; 600], 100);
        // The same stream after a gap; another stream; a segment, then an empty one where
        // it ends.
        frames.push(stream.clone().with_seq(1).with_payload(&[1u8; 10]).build());
        frames.push(
            Frame::tcp(c, 40002, s, 443, 0x10)
                .with_seq(11)
                .with_payload(&[1u8; 10])
                .build(),
        );
        frames.push(stream.clone().with_seq(21).with_payload(&[1u8; 10]).build());
        frames.push(stream.with_seq(31).build());
        let mut t = frames
            .iter()
            .map(|f| Template::from_frame(f, 8))
            .collect::<Result<Vec<_>, _>>()
            .expect("templates");
        Template::link(&mut t);
        let follows: Vec<u8> = t.iter().map(|t| t.follows).collect();
        let continues: Vec<u8> = t.iter().map(|t| t.continues).collect();
        assert_eq!(MAX_CHAIN, 4);
        assert_eq!(follows, [1, 1, 1, 0, 1, 0, 0, 0, 0, 0]);
        assert_eq!(continues, [0, 1, 1, 1, 0, 1, 0, 0, 0, 0]);
    }
}
