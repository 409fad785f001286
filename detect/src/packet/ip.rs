//! IPv4 and IPv6 headers (with IPv6 extension headers).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::link::{IpVersion, Network};
use super::{be16, transport, Layer, Packet, PacketError, Transport, MAX_IPV6_EXTENSION_HEADERS};

const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AH: u8 = 51;
const IPV6_DEST_OPTS: u8 = 60;
const IPV6_MOBILITY: u8 = 135;
const IPV6_HIP: u8 = 139;
const IPV6_SHIM6: u8 = 140;

/// Parses the IP header the link layer pointed at, then the transport. Inlined, as are
/// `ipv4` and `transport::parse`: the packet is then built where it is used, not copied out
/// of a returned `Result` (in replay's profile this function had 6% of the samples, most on
/// that copy's 16-byte loads of fields just written narrower).
#[inline(always)]
pub(super) fn parse(net: Network<'_>) -> Result<Packet<'_>, PacketError> {
    let first = *net
        .bytes
        .first()
        .ok_or(PacketError::Truncated(Layer::Ipv4))?;
    let version = first >> 4;
    match (version, net.version) {
        (4, None | Some(IpVersion::V4)) => ipv4(net.bytes),
        (6, None | Some(IpVersion::V6)) => ipv6(net.bytes),
        (v, _) => Err(PacketError::BadIpVersion(v)),
    }
}

#[inline(always)]
fn ipv4(b: &[u8]) -> Result<Packet<'_>, PacketError> {
    let header: &[u8; 20] = b
        .get(..20)
        .and_then(|h| h.try_into().ok())
        .ok_or(PacketError::Truncated(Layer::Ipv4))?;
    let ihl = usize::from(header[0] & 0x0f) * 4;
    if ihl < 20 {
        return Err(PacketError::BadIpv4HeaderLength);
    }
    if b.len() < ihl {
        return Err(PacketError::Truncated(Layer::Ipv4));
    }
    let total = usize::from(u16::from_be_bytes([header[2], header[3]]));
    // A total length of 0 is what TSO-offloaded captures show; a total length past the
    // captured bytes is a snaplen cut. Otherwise trim the Ethernet padding.
    let end = if total == 0 || total > b.len() {
        b.len()
    } else if total < ihl {
        return Err(PacketError::BadIpv4HeaderLength);
    } else {
        total
    };
    let payload = b.get(ihl..end).ok_or(PacketError::Truncated(Layer::Ipv4))?;
    let frag = u16::from_be_bytes([header[6], header[7]]);
    let proto = header[9];
    let src = IpAddr::V4(Ipv4Addr::new(
        header[12], header[13], header[14], header[15],
    ));
    let dst = IpAddr::V4(Ipv4Addr::new(
        header[16], header[17], header[18], header[19],
    ));
    let transport = if frag & 0x1fff != 0 {
        Transport::Fragment
    } else {
        transport::parse(proto, payload)?
    };
    Ok(Packet {
        src,
        dst,
        proto,
        ttl: header[8],
        transport,
    })
}

fn ipv6(b: &[u8]) -> Result<Packet<'_>, PacketError> {
    let header: &[u8; 40] = b
        .get(..40)
        .and_then(|h| h.try_into().ok())
        .ok_or(PacketError::Truncated(Layer::Ipv6))?;
    let payload_len = usize::from(u16::from_be_bytes([header[4], header[5]]));
    let mut next = header[6];
    let hop_limit = header[7];
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&header[8..24]);
    dst.copy_from_slice(&header[24..40]);
    let rest = b.get(40..).ok_or(PacketError::Truncated(Layer::Ipv6))?;
    // Payload length 0 means a jumbogram (or an offloaded capture): take what was captured.
    let mut payload = if payload_len == 0 || payload_len > rest.len() {
        rest
    } else {
        rest.get(..payload_len).unwrap_or(rest)
    };
    let mut fragment = false;
    // At most MAX_IPV6_EXTENSION_HEADERS walked: past them, `next` names a header left
    // unread, and the packet has its addresses and no transport (as the XDP program's).
    for _ in 0..MAX_IPV6_EXTENSION_HEADERS {
        let len = match next {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS | IPV6_MOBILITY | IPV6_HIP
            | IPV6_SHIM6 => {
                let n = *payload
                    .get(1)
                    .ok_or(PacketError::Truncated(Layer::Ipv6Extension))?;
                (usize::from(n) + 1) * 8
            }
            IPV6_AH => {
                let n = *payload
                    .get(1)
                    .ok_or(PacketError::Truncated(Layer::Ipv6Extension))?;
                (usize::from(n) + 2) * 4
            }
            IPV6_FRAGMENT => {
                let offset =
                    be16(payload, 2).ok_or(PacketError::Truncated(Layer::Ipv6Extension))? >> 3;
                if offset != 0 {
                    fragment = true;
                }
                8
            }
            _ => break,
        };
        next = *payload
            .first()
            .ok_or(PacketError::Truncated(Layer::Ipv6Extension))?;
        payload = payload
            .get(len..)
            .ok_or(PacketError::Truncated(Layer::Ipv6Extension))?;
        if fragment {
            break;
        }
    }
    let transport = if fragment {
        Transport::Fragment
    } else {
        transport::parse(next, payload)?
    };
    Ok(Packet {
        src: IpAddr::V6(Ipv6Addr::from(src)),
        dst: IpAddr::V6(Ipv6Addr::from(dst)),
        proto: next,
        ttl: hop_limit,
        transport,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{parse as parse_frame, LINKTYPE_RAW};
    use super::*;

    fn v4(ihl_words: u8, proto: u8, frag: u16, l4: &[u8]) -> Vec<u8> {
        let hl = usize::from(ihl_words) * 4;
        let mut p = vec![0u8; hl];
        p[0] = 0x40 | ihl_words;
        let total = (hl + l4.len()) as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p[6..8].copy_from_slice(&frag.to_be_bytes());
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[66, 66, 66, 66]);
        p.extend_from_slice(l4);
        p
    }

    fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut u = Vec::new();
        u.extend_from_slice(&sport.to_be_bytes());
        u.extend_from_slice(&dport.to_be_bytes());
        u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(payload);
        u
    }

    #[test]
    fn ipv4_options_shift_the_transport_and_padding_is_trimmed() {
        let mut p = v4(6, 17, 0, &udp(1, 53, b"xy"));
        p.extend_from_slice(&[0u8; 6]); // Ethernet padding
        let pkt = parse_frame(LINKTYPE_RAW, &p).unwrap();
        match pkt.transport {
            Transport::Udp(u) => {
                assert_eq!((u.src_port, u.dst_port), (1, 53));
                assert_eq!(u.payload, b"xy");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ipv4_non_first_fragment_has_no_transport() {
        let p = v4(5, 17, 0x0010, &[0xff; 4]);
        assert_eq!(
            parse_frame(LINKTYPE_RAW, &p).unwrap().transport,
            Transport::Fragment
        );
    }

    #[test]
    fn ipv4_bad_ihl() {
        let mut p = v4(5, 17, 0, &udp(1, 2, b""));
        p[0] = 0x44;
        assert_eq!(
            parse_frame(LINKTYPE_RAW, &p),
            Err(PacketError::BadIpv4HeaderLength)
        );
    }

    fn v6(next: u8, ext: &[u8], l4: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x60;
        let len = (ext.len() + l4.len()) as u16;
        p[4..6].copy_from_slice(&len.to_be_bytes());
        p[6] = next;
        p[7] = 64;
        p[23] = 1;
        p[24] = 0xde;
        p[25] = 0xad;
        p[38] = 0xbe;
        p[39] = 0xef;
        p.extend_from_slice(ext);
        p.extend_from_slice(l4);
        p
    }

    #[test]
    fn ipv6_extension_headers_are_skipped() {
        // hop-by-hop (8 bytes) -> destination options (16 bytes) -> UDP
        let mut ext = vec![60, 0, 0, 0, 0, 0, 0, 0];
        ext.extend_from_slice(&[17, 1]);
        ext.extend_from_slice(&[0u8; 14]);
        let p = v6(0, &ext, &udp(5, 53, b"q"));
        let pkt = parse_frame(LINKTYPE_RAW, &p).unwrap();
        assert_eq!(pkt.proto, 17);
        assert_eq!(pkt.dst, "dead::beef".parse::<IpAddr>().unwrap());
        assert_eq!(pkt.ports(), (5, 53));
    }

    #[test]
    fn ipv6_extension_chain_is_bounded() {
        // `count` destination-options headers (8 bytes each), then UDP.
        let chain = |count: usize| {
            let mut ext = Vec::new();
            for i in 0..count {
                let next = if i + 1 == count { 17 } else { 60 };
                ext.extend_from_slice(&[next, 0, 0, 0, 0, 0, 0, 0]);
            }
            v6(if count == 0 { 17 } else { 60 }, &ext, &udp(5, 53, b"q"))
        };
        let at_limit = chain(MAX_IPV6_EXTENSION_HEADERS);
        let pkt = parse_frame(LINKTYPE_RAW, &at_limit).unwrap();
        assert_eq!((pkt.proto, pkt.ports()), (17, (5, 53)));
        // One more: the addresses, and the header left unread as the protocol (the XDP
        // program reads such a packet the same way).
        let past = chain(MAX_IPV6_EXTENSION_HEADERS + 1);
        let pkt = parse_frame(LINKTYPE_RAW, &past).unwrap();
        assert_eq!(pkt.proto, 60);
        assert!(matches!(pkt.transport, Transport::Other(_)));
        assert_eq!(pkt.dst, "dead::beef".parse::<IpAddr>().unwrap());
        // A long chain costs no more.
        let long = chain(20);
        assert_eq!(parse_frame(LINKTYPE_RAW, &long).unwrap().proto, 60);
    }

    #[test]
    fn ipv6_fragments() {
        let first = v6(44, &[17, 0, 0, 1, 0, 0, 0, 9], &udp(5, 53, b"q"));
        assert_eq!(parse_frame(LINKTYPE_RAW, &first).unwrap().ports(), (5, 53));
        let later = v6(44, &[17, 0, 0, 0x19, 0, 0, 0, 9], &[1, 2, 3]);
        assert_eq!(
            parse_frame(LINKTYPE_RAW, &later).unwrap().transport,
            Transport::Fragment
        );
    }

    #[test]
    fn version_must_match_link_header() {
        let p = v6(59, &[], &[]);
        assert!(parse_frame(super::super::LINKTYPE_IPV4, &p).is_err());
        assert_eq!(
            parse_frame(super::super::LINKTYPE_IPV6, &p)
                .unwrap()
                .transport,
            Transport::Other(&[])
        );
    }
}
