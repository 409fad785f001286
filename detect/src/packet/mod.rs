//! Packet parsing: link layer, IP and transport headers of one captured frame.
//!
//! [`parse`] takes a frame as captured (the pcap link type says what the first header is) and
//! returns a [`Packet`] of borrowed slices: addresses, protocol and the transport header with
//! its payload. It never copies the frame, never allocates, never panics on any input, and does
//! a bounded amount of work (at most [`MAX_VLAN_TAGS`] VLAN tags and
//! [`MAX_IPV6_EXTENSION_HEADERS`] IPv6 extension headers are walked; a packet with more is
//! left with its addresses and no transport header, as the XDP program leaves it).
//!
//! What it does not do: reassemble IP fragments (a non-first fragment has no transport header:
//! [`Transport::Fragment`]), reassemble TCP streams, or verify checksums (captures from the
//! sending host carry offloaded, unfilled checksums).
//!
//! Tests: unit tests here and in the submodules; `tests/mutation.rs` feeds mutated corpus frames;
//! `fuzz/fuzz_targets/packet.rs` fuzzes [`parse`].

mod ip;
mod link;
mod transport;

use std::net::IpAddr;

pub use link::{
    LINKTYPE_ETHERNET, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP, LINKTYPE_NULL, LINKTYPE_RAW, LINKTYPE_RAW_BSD, LINKTYPE_RAW_OPENBSD,
};
pub use transport::{TcpFlags, TcpSegment, UdpDatagram};

/// VLAN tags (802.1Q / 802.1ad) followed before the frame is given up on.
pub const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers walked to the transport header: the XDP program's limit, so that
/// live and replay read such a packet alike.
pub const MAX_IPV6_EXTENSION_HEADERS: usize = xtrail_common::MAX_IPV6_EXT_HEADERS;

/// IP protocol numbers used by the pipeline.
pub mod ipproto {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
}

/// The header a parse error was found in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layer {
    /// The link-layer header (Ethernet, SLL, SLL2, null/loopback).
    Link,
    /// An 802.1Q / 802.1ad tag.
    Vlan,
    /// A PPPoE session header.
    Pppoe,
    /// The IPv4 header.
    Ipv4,
    /// The IPv6 header.
    Ipv6,
    /// An IPv6 extension header.
    Ipv6Extension,
    /// The TCP header.
    Tcp,
    /// The UDP header.
    Udp,
    /// The ICMP or ICMPv6 header.
    Icmp,
}

impl std::fmt::Display for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Layer::Link => "link-layer",
            Layer::Vlan => "VLAN",
            Layer::Pppoe => "PPPoE",
            Layer::Ipv4 => "IPv4",
            Layer::Ipv6 => "IPv6",
            Layer::Ipv6Extension => "IPv6 extension",
            Layer::Tcp => "TCP",
            Layer::Udp => "UDP",
            Layer::Icmp => "ICMP",
        })
    }
}

/// Why a frame could not be parsed. Cheap to create and copy: malformed traffic is normal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum PacketError {
    /// The capture's link type is not one this parser knows.
    #[error("unsupported link type {0}")]
    UnsupportedLinkType(u32),
    /// A header extends past the end of the captured bytes.
    #[error("truncated {0} header")]
    Truncated(Layer),
    /// The frame carries something other than IPv4/IPv6 (ARP, LLDP, ...).
    #[error("not IP (ethertype {0:#06x})")]
    NotIp(u16),
    /// A PPPoE session carries something other than IPv4/IPv6 (LCP, ...).
    #[error("PPPoE carries PPP protocol {0:#06x}, not IP")]
    NotIpPpp(u16),
    /// A null/loopback header with an unknown address family.
    #[error("unknown loopback address family {0}")]
    UnknownFamily(u32),
    /// More VLAN tags than [`MAX_VLAN_TAGS`].
    #[error("more than {MAX_VLAN_TAGS} VLAN tags")]
    TooManyVlanTags,
    /// The IP version nibble is neither 4 nor 6 (or does not match the link header).
    #[error("bad IP version {0}")]
    BadIpVersion(u8),
    /// IPv4 IHL below 5 or total length below the header length.
    #[error("bad IPv4 header length")]
    BadIpv4HeaderLength,
    /// TCP data offset below 5.
    #[error("bad TCP data offset")]
    BadTcpDataOffset,
}

/// The transport layer of a parsed packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport<'a> {
    /// A TCP segment.
    Tcp(TcpSegment<'a>),
    /// A UDP datagram.
    Udp(UdpDatagram<'a>),
    /// An ICMP message: type and code.
    Icmp {
        /// ICMP type (8 = echo request).
        icmp_type: u8,
        /// ICMP code.
        code: u8,
    },
    /// An ICMPv6 message: type and code.
    Icmpv6 {
        /// ICMPv6 type (128 = echo request).
        icmp_type: u8,
        /// ICMPv6 code.
        code: u8,
    },
    /// A non-first IP fragment: no transport header.
    Fragment,
    /// Another IP protocol (GRE, ESP, SCTP, ...), or IPv6 "no next header"; the payload follows.
    Other(&'a [u8]),
}

/// One parsed packet: addresses, protocol, transport. Borrowed from the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet<'a> {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol number of the transport (after IPv6 extension headers).
    pub proto: u8,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    /// The transport header and payload.
    pub transport: Transport<'a>,
}

impl Packet<'_> {
    /// Source and destination ports (0 when the transport has none).
    pub fn ports(&self) -> (u16, u16) {
        match self.transport {
            Transport::Tcp(t) => (t.src_port, t.dst_port),
            Transport::Udp(u) => (u.src_port, u.dst_port),
            _ => (0, 0),
        }
    }
}

/// Parses a captured frame of the given pcap link type.
pub fn parse(linktype: u32, frame: &[u8]) -> Result<Packet<'_>, PacketError> {
    let l3 = link::strip(linktype, frame)?;
    ip::parse(l3)
}

/// Big-endian u16 at `off`, if the bytes are there.
#[inline]
pub(crate) fn be16(b: &[u8], off: usize) -> Option<u16> {
    let s: [u8; 2] = b.get(off..off.checked_add(2)?)?.try_into().ok()?;
    Some(u16::from_be_bytes(s))
}

/// Big-endian u32 at `off`, if the bytes are there.
#[inline]
pub(crate) fn be32(b: &[u8], off: usize) -> Option<u32> {
    let s: [u8; 4] = b.get(off..off.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_be_bytes(s))
}
