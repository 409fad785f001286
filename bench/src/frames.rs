//! Ethernet frame builders with correct IP, TCP, UDP and ICMP checksums.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// TCP flag bits.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// The transport part of a frame.
#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        /// Sequence number ([`DEFAULT_SEQ`] unless set).
        seq: u32,
        flags: u8,
        payload: Vec<u8>,
    },
    Udp {
        sport: u16,
        dport: u16,
        payload: Vec<u8>,
    },
    /// ICMP (IPv4) or ICMPv6 echo-style message with the given type.
    Icmp { kind: u8, payload: Vec<u8> },
    /// Any other protocol number with raw payload.
    Raw { proto: u8, payload: Vec<u8> },
}

/// A frame description; [`Frame::build`] renders the bytes.
#[derive(Clone, Debug)]
pub struct Frame {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// VLAN tags, outermost first: (TPID, VLAN id).
    pub vlans: Vec<(u16, u16)>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub l4: L4,
    /// IPv4 options (padded to 4 bytes).
    pub ipv4_options: Vec<u8>,
    /// IPv4 fragment offset in 8-byte units (0: first or unfragmented).
    pub frag_offset: u16,
    /// IPv4 "more fragments" flag.
    pub more_fragments: bool,
    /// IPv6 extension headers to insert before the transport header: (type, body length in
    /// bytes, must be 6 + 8*k for hop-by-hop/dest-opts/routing).
    pub ipv6_ext: Vec<u8>,
    pub ttl: u8,
}

/// A TCP frame's sequence number unless [`Frame::with_seq`] sets one.
pub const DEFAULT_SEQ: u32 = 0x0102_0304;
/// The most TCP payload a frame carries in a 1,500-byte IPv4 MTU without TCP options.
pub const MSS: usize = 1460;

pub const DEFAULT_SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const DEFAULT_DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

impl Frame {
    fn new(src: IpAddr, dst: IpAddr, l4: L4) -> Frame {
        Frame {
            src_mac: DEFAULT_SRC_MAC,
            dst_mac: DEFAULT_DST_MAC,
            vlans: Vec::new(),
            src,
            dst,
            l4,
            ipv4_options: Vec::new(),
            frag_offset: 0,
            more_fragments: false,
            ipv6_ext: Vec::new(),
            ttl: 64,
        }
    }

    /// A TCP segment with the given flags.
    pub fn tcp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, flags: u8) -> Frame {
        Frame::new(
            src,
            dst,
            L4::Tcp {
                sport,
                dport,
                seq: DEFAULT_SEQ,
                flags,
                payload: Vec::new(),
            },
        )
    }

    /// A TCP SYN.
    pub fn syn(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Frame {
        Frame::tcp(src, sport, dst, dport, tcp_flags::SYN)
    }

    /// A UDP datagram.
    pub fn udp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, payload: &[u8]) -> Frame {
        Frame::new(
            src,
            dst,
            L4::Udp {
                sport,
                dport,
                payload: payload.to_vec(),
            },
        )
    }

    /// An ICMP echo request (ICMPv6 for IPv6 addresses).
    pub fn ping(src: IpAddr, dst: IpAddr) -> Frame {
        let kind = if src.is_ipv4() { 8 } else { 128 };
        Frame::icmp(src, dst, kind)
    }

    /// An ICMP/ICMPv6 message of the given type.
    pub fn icmp(src: IpAddr, dst: IpAddr, kind: u8) -> Frame {
        Frame::new(
            src,
            dst,
            L4::Icmp {
                kind,
                payload: vec![0u8; 8],
            },
        )
    }

    /// Sets the TCP sequence number (no effect on other protocols).
    pub fn with_seq(mut self, to: u32) -> Frame {
        if let L4::Tcp { seq, .. } = &mut self.l4 {
            *seq = to;
        }
        self
    }

    /// `data` as this TCP frame's stream sends it: one frame per `mss` bytes, each at the
    /// sequence number where the one before ends.
    pub fn segments(&self, data: &[u8], mss: usize) -> Vec<Vec<u8>> {
        let start = match &self.l4 {
            L4::Tcp { seq, .. } => *seq,
            _ => DEFAULT_SEQ,
        };
        data.chunks(mss.max(1))
            .enumerate()
            .map(|(k, chunk)| {
                self.clone()
                    .with_seq(start.wrapping_add((k * mss) as u32))
                    .with_payload(chunk)
                    .build()
            })
            .collect()
    }

    /// Sets the TCP payload (no effect on other protocols).
    pub fn with_payload(mut self, data: &[u8]) -> Frame {
        match &mut self.l4 {
            L4::Tcp { payload, .. }
            | L4::Udp { payload, .. }
            | L4::Icmp { payload, .. }
            | L4::Raw { payload, .. } => *payload = data.to_vec(),
        }
        self
    }

    /// Adds an 802.1Q tag (inner after any existing ones).
    pub fn vlan(mut self, id: u16) -> Frame {
        self.vlans.push((0x8100, id));
        self
    }

    /// Adds an 802.1ad (QinQ outer) tag.
    pub fn qinq(mut self, outer: u16, inner: u16) -> Frame {
        self.vlans.push((0x88a8, outer));
        self.vlans.push((0x8100, inner));
        self
    }

    /// Sets the MAC addresses.
    pub fn macs(mut self, src: [u8; 6], dst: [u8; 6]) -> Frame {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }

    /// Adds IPv4 options (padded to a multiple of 4 with End-of-list).
    pub fn ipv4_options(mut self, opts: &[u8]) -> Frame {
        self.ipv4_options = opts.to_vec();
        while !self.ipv4_options.len().is_multiple_of(4) {
            self.ipv4_options.push(0);
        }
        self
    }

    /// Marks the packet as a later IPv4 fragment (offset in 8-byte units).
    pub fn fragment(mut self, offset: u16) -> Frame {
        self.frag_offset = offset;
        self
    }

    /// Makes an IPv4 frame the first fragment of a packet: offset 0, "more fragments" set
    /// (an IPv6 frame is left as it is).
    pub fn first_fragment(mut self) -> Frame {
        self.frag_offset = 0;
        self.more_fragments = true;
        self
    }

    /// Adds an IPv6 hop-by-hop options header and a destination options header.
    pub fn ipv6_ext_headers(mut self) -> Frame {
        // Hop-by-hop (0) then destination options (60): each 8 bytes with PadN.
        self.ipv6_ext = vec![0, 60];
        self
    }

    fn l4_proto(&self) -> u8 {
        match &self.l4 {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::Icmp { .. } => {
                if self.src.is_ipv4() {
                    1
                } else {
                    58
                }
            }
            L4::Raw { proto, .. } => *proto,
        }
    }

    fn l4_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match &self.l4 {
            L4::Tcp {
                sport,
                dport,
                seq,
                flags,
                payload,
            } => {
                out.extend_from_slice(&sport.to_be_bytes());
                out.extend_from_slice(&dport.to_be_bytes());
                out.extend_from_slice(&seq.to_be_bytes());
                let ack = if flags & tcp_flags::ACK != 0 { 1u32 } else { 0 };
                out.extend_from_slice(&ack.to_be_bytes());
                out.push(5 << 4);
                out.push(*flags);
                out.extend_from_slice(&64240u16.to_be_bytes());
                out.extend_from_slice(&[0, 0, 0, 0]);
                out.extend_from_slice(payload);
                let sum = self.pseudo_checksum(6, &out);
                out[16..18].copy_from_slice(&sum.to_be_bytes());
            }
            L4::Udp {
                sport,
                dport,
                payload,
            } => {
                out.extend_from_slice(&sport.to_be_bytes());
                out.extend_from_slice(&dport.to_be_bytes());
                out.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(payload);
                let mut sum = self.pseudo_checksum(17, &out);
                if sum == 0 {
                    sum = 0xffff;
                }
                out[6..8].copy_from_slice(&sum.to_be_bytes());
            }
            L4::Icmp { kind, payload } => {
                out.push(*kind);
                out.push(0);
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(payload);
                let sum = if self.src.is_ipv4() {
                    checksum(&[&out])
                } else {
                    self.pseudo_checksum(58, &out)
                };
                out[2..4].copy_from_slice(&sum.to_be_bytes());
            }
            L4::Raw { payload, .. } => out.extend_from_slice(payload),
        }
        out
    }

    fn pseudo_checksum(&self, proto: u8, l4: &[u8]) -> u16 {
        let len = l4.len() as u32;
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut ph = Vec::with_capacity(12);
                ph.extend_from_slice(&s.octets());
                ph.extend_from_slice(&d.octets());
                ph.push(0);
                ph.push(proto);
                ph.extend_from_slice(&(len as u16).to_be_bytes());
                checksum(&[&ph, l4])
            }
            (s, d) => {
                let s = to_v6(s);
                let d = to_v6(d);
                let mut ph = Vec::with_capacity(40);
                ph.extend_from_slice(&s.octets());
                ph.extend_from_slice(&d.octets());
                ph.extend_from_slice(&len.to_be_bytes());
                ph.extend_from_slice(&[0, 0, 0, proto]);
                checksum(&[&ph, l4])
            }
        }
    }

    /// Renders the frame.
    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(128);
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        for (tpid, id) in &self.vlans {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&id.to_be_bytes());
        }
        let l4 = self.l4_bytes();
        let proto = self.l4_proto();
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                let ihl = 5 + self.ipv4_options.len() / 4;
                let total = ihl * 4 + l4.len();
                let start = f.len();
                f.push(0x40 | ihl as u8);
                f.push(0);
                f.extend_from_slice(&(total as u16).to_be_bytes());
                f.extend_from_slice(&0x1234u16.to_be_bytes());
                let mf = if self.more_fragments { 0x2000 } else { 0 };
                f.extend_from_slice(&(mf | self.frag_offset & 0x1fff).to_be_bytes());
                f.push(self.ttl);
                f.push(proto);
                f.extend_from_slice(&[0, 0]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
                f.extend_from_slice(&self.ipv4_options);
                let sum = checksum(&[&f[start..]]);
                f[start + 10..start + 12].copy_from_slice(&sum.to_be_bytes());
                f.extend_from_slice(&l4);
            }
            (s, d) => {
                f.extend_from_slice(&0x86ddu16.to_be_bytes());
                let ext_len = self.ipv6_ext.len() * 8;
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&((ext_len + l4.len()) as u16).to_be_bytes());
                f.push(self.ipv6_ext.first().copied().unwrap_or(proto));
                f.push(self.ttl);
                f.extend_from_slice(&to_v6(s).octets());
                f.extend_from_slice(&to_v6(d).octets());
                for (i, _) in self.ipv6_ext.iter().enumerate() {
                    let next = self.ipv6_ext.get(i + 1).copied().unwrap_or(proto);
                    // next header, length 0 (8 bytes), PadN option of 4 bytes.
                    f.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
                }
                f.extend_from_slice(&l4);
            }
        }
        while f.len() < 60 {
            f.push(0);
        }
        f
    }
}

fn to_v6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V6(a) => a,
        IpAddr::V4(a) => a.to_ipv6_mapped(),
    }
}

/// The Internet checksum over the concatenation of `parts`.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for part in parts {
        for &b in *part {
            match odd.take() {
                Some(hi) => sum += u32::from(u16::from_be_bytes([hi, b])),
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(u16::from_be_bytes([hi, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Parses an IPv4 literal (panics on bad input: for test code and constants only).
pub fn v4(s: &str) -> IpAddr {
    IpAddr::V4(s.parse::<Ipv4Addr>().expect("IPv4 literal"))
}

/// Parses an IPv6 literal (panics on bad input: for test code and constants only).
pub fn v6(s: &str) -> IpAddr {
    IpAddr::V6(s.parse::<Ipv6Addr>().expect("IPv6 literal"))
}

/// A DNS query payload for `name` with the given qtype (1 = A).
pub fn dns_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    xtrail_detect::protocols::dns::query_message(id, name, qtype)
}

/// A background payload of `len` bytes: bytes that look like encrypted data, by which the
/// generators know a background template ([`xtrail_nicgen_common::filler_byte`]).
pub fn background_payload(len: usize) -> Vec<u8> {
    (0..len).map(xtrail_nicgen_common::filler_byte).collect()
}

/// A background UDP datagram: 48 bytes of [`background_payload`].
pub fn background_udp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Vec<u8> {
    Frame::udp(src, sport, dst, dport, &background_payload(48)).build()
}

/// A DNS response to a query for `name` with rcode NXDOMAIN and no answers.
pub fn dns_nxdomain(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut p = dns_query(id, name, qtype);
    p[2] = 0x81; // QR, RD
    p[3] = 0x83; // RA, rcode 3
    p
}

/// A TLS ClientHello record carrying `sni` in the server_name extension.
pub fn tls_client_hello(sni: &str) -> Vec<u8> {
    xtrail_detect::protocols::tls::client_hello_record(sni)
}

/// A QUIC v1 client Initial datagram (UDP payload) whose ClientHello names `sni`.
pub fn quic_client_initial(sni: &str) -> Vec<u8> {
    let hello = tls_client_hello(sni);
    let dcid = [0x83, 0x94, 0xc8, 0xf0, 0x3e, 0x51, 0x57, 0x08];
    xtrail_detect::protocols::quic::client_initial(&dcid, hello.get(5..).unwrap_or_default())
        .unwrap_or_default()
}

/// A ClientHello record as current Chrome sends it, about 1.8 KB: two TCP segments, the
/// server name in the second at a typical MSS
/// ([`xtrail_detect::protocols::tls::browser_client_hello`] with its post-quantum key share;
/// [`chrome_sni_offset`] says where the name starts).
pub fn chrome_client_hello(sni: &str) -> Vec<u8> {
    xtrail_detect::protocols::tls::browser_client_hello(sni, true)
}

/// The two QUIC v1 client Initial datagrams (UDP payloads) that carry
/// [`chrome_client_hello`]'s handshake message the way Chrome sends it: split over two
/// Initials, the first with two CRYPTO frames out of order, the server name in the second.
pub fn chrome_quic_initials(sni: &str) -> Vec<Vec<u8>> {
    let rec = chrome_client_hello(sni);
    let hs = &rec[5..];
    let dcid = [0x5c, 0x1e, 0x7a, 0x42, 0x09, 0xd3, 0x88, 0x61];
    let first = xtrail_detect::protocols::quic::client_initial_pieces(
        &dcid,
        0,
        &[(600, &hs[600..1050]), (0, &hs[..600])],
    );
    let second =
        xtrail_detect::protocols::quic::client_initial_pieces(&dcid, 1, &[(1050, &hs[1050..])]);
    vec![first.unwrap_or_default(), second.unwrap_or_default()]
}

/// Where the server name starts in [`chrome_client_hello`]'s record.
pub fn chrome_sni_offset(record: &[u8], sni: &str) -> usize {
    record
        .windows(sni.len())
        .position(|w| w == sni.as_bytes())
        .unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chrome_quic_hello_needs_both_initials() {
        use xtrail_detect::protocols::quic::initial_sni;
        let dgrams = chrome_quic_initials("quic-split.example");
        assert_eq!(dgrams.len(), 2);
        for d in &dgrams {
            assert!((1100..1300).contains(&d.len()), "{}", d.len());
            assert!(!matches!(initial_sni(d), Ok(Some(_))));
        }
    }

    #[test]
    fn chrome_hello_is_chrome_sized_with_the_name_in_the_second_segment() {
        let rec = chrome_client_hello("tls-split.example");
        assert!((1700..2100).contains(&rec.len()), "{}", rec.len());
        assert!(chrome_sni_offset(&rec, "tls-split.example") > 1448);
        let hello = xtrail_detect::protocols::tls::parse_client_hello(&rec).unwrap();
        assert_eq!(hello.sni, Some("tls-split.example"));
        assert_eq!(
            xtrail_detect::protocols::tls::parse_client_hello(&rec[..1448])
                .ok()
                .and_then(|h| h.sni),
            None
        );
    }

    #[test]
    fn ipv4_header_checksum_verifies() {
        let f = Frame::syn(v4("198.18.0.2"), 40000, v4("66.66.66.66"), 80).build();
        assert_eq!(checksum(&[&f[14..34]]), 0);
        assert_eq!(f[23], 6);
    }

    #[test]
    fn options_shift_the_transport_header() {
        let f = Frame::syn(v4("198.18.0.2"), 40000, v4("66.66.66.66"), 80)
            .ipv4_options(&[1, 1, 1, 1])
            .build();
        assert_eq!(f[14], 0x46);
        assert_eq!(u16::from_be_bytes([f[38], f[39]]), 40000);
    }

    #[test]
    fn vlan_tags_come_before_the_ethertype() {
        let f = Frame::ping(v4("198.18.0.2"), v4("66.66.66.66"))
            .qinq(10, 20)
            .build();
        assert_eq!(&f[12..14], &[0x88, 0xa8]);
        assert_eq!(&f[16..18], &[0x81, 0x00]);
        assert_eq!(&f[20..22], &[0x08, 0x00]);
    }
}
