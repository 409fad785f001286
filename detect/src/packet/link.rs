//! Link-layer headers: find where the IP header starts.

use super::{be16, Layer, PacketError, MAX_VLAN_TAGS};

/// BSD loopback (`DLT_NULL`): 4-byte address family in host byte order.
pub const LINKTYPE_NULL: u32 = 0;
/// Ethernet II (with 802.1Q / 802.1ad tags and PPPoE sessions followed).
pub const LINKTYPE_ETHERNET: u32 = 1;
/// Raw IP as `DLT_RAW` is numbered on most systems.
pub const LINKTYPE_RAW_BSD: u32 = 12;
/// Raw IP as `DLT_RAW` is numbered on OpenBSD.
pub const LINKTYPE_RAW_OPENBSD: u32 = 14;
/// Raw IP (`LINKTYPE_RAW`, what pcap files should carry).
pub const LINKTYPE_RAW: u32 = 101;
/// OpenBSD loopback (`DLT_LOOP`): 4-byte address family in network byte order.
pub const LINKTYPE_LOOP: u32 = 108;
/// Linux cooked capture v1 (`any` interface).
pub const LINKTYPE_LINUX_SLL: u32 = 113;
/// Raw IPv4.
pub const LINKTYPE_IPV4: u32 = 228;
/// Raw IPv6.
pub const LINKTYPE_IPV6: u32 = 229;
/// Linux cooked capture v2.
pub const LINKTYPE_LINUX_SLL2: u32 = 276;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;
const ETHERTYPE_QINQ_OLD: u16 = 0x9100;
const ETHERTYPE_PPPOE_SESSION: u16 = 0x8864;
const PPP_IPV4: u16 = 0x0021;
const PPP_IPV6: u16 = 0x0057;

/// The IP version a link header announced, when it announces one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum IpVersion {
    V4,
    V6,
}

/// The network-layer bytes of a frame and the IP version its link header announced.
pub(super) struct Network<'a> {
    pub(super) version: Option<IpVersion>,
    pub(super) bytes: &'a [u8],
}

/// Strips the link-layer header(s) of a frame.
pub(super) fn strip(linktype: u32, frame: &[u8]) -> Result<Network<'_>, PacketError> {
    match linktype {
        LINKTYPE_ETHERNET => {
            let ethertype = be16(frame, 12).ok_or(PacketError::Truncated(Layer::Link))?;
            let rest = frame.get(14..).ok_or(PacketError::Truncated(Layer::Link))?;
            by_ethertype(ethertype, rest)
        }
        LINKTYPE_RAW_BSD | LINKTYPE_RAW_OPENBSD | LINKTYPE_RAW => Ok(Network {
            version: None,
            bytes: frame,
        }),
        LINKTYPE_IPV4 => Ok(Network {
            version: Some(IpVersion::V4),
            bytes: frame,
        }),
        LINKTYPE_IPV6 => Ok(Network {
            version: Some(IpVersion::V6),
            bytes: frame,
        }),
        LINKTYPE_LINUX_SLL => {
            // packet type (2), ARPHRD type (2), address length (2), address (8), protocol (2)
            let protocol = be16(frame, 14).ok_or(PacketError::Truncated(Layer::Link))?;
            let rest = frame.get(16..).ok_or(PacketError::Truncated(Layer::Link))?;
            by_ethertype(protocol, rest)
        }
        LINKTYPE_LINUX_SLL2 => {
            // protocol (2), reserved (2), ifindex (4), ARPHRD (2), packet type (1),
            // address length (1), address (8)
            let protocol = be16(frame, 0).ok_or(PacketError::Truncated(Layer::Link))?;
            let rest = frame.get(20..).ok_or(PacketError::Truncated(Layer::Link))?;
            by_ethertype(protocol, rest)
        }
        LINKTYPE_NULL | LINKTYPE_LOOP => {
            let family: [u8; 4] = frame
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .ok_or(PacketError::Truncated(Layer::Link))?;
            let rest = frame.get(4..).ok_or(PacketError::Truncated(Layer::Link))?;
            // DLT_NULL is in the capturing host's byte order, DLT_LOOP in network order, and
            // files move between hosts: accept either order.
            let version = loopback_family(u32::from_le_bytes(family))
                .or_else(|| loopback_family(u32::from_be_bytes(family)))
                .ok_or(PacketError::UnknownFamily(u32::from_be_bytes(family)))?;
            Ok(Network {
                version: Some(version),
                bytes: rest,
            })
        }
        other => Err(PacketError::UnsupportedLinkType(other)),
    }
}

/// Address families that mean IPv4 or IPv6 on the BSDs, macOS and Linux.
fn loopback_family(family: u32) -> Option<IpVersion> {
    match family {
        2 => Some(IpVersion::V4),
        // Linux, OpenBSD/NetBSD, FreeBSD, macOS
        10 | 24 | 28 | 30 => Some(IpVersion::V6),
        _ => None,
    }
}

/// Follows VLAN tags and a PPPoE session header from an ethertype to the IP header.
fn by_ethertype(mut ethertype: u16, mut rest: &[u8]) -> Result<Network<'_>, PacketError> {
    let mut tags = 0usize;
    loop {
        match ethertype {
            ETHERTYPE_IPV4 => {
                return Ok(Network {
                    version: Some(IpVersion::V4),
                    bytes: rest,
                })
            }
            ETHERTYPE_IPV6 => {
                return Ok(Network {
                    version: Some(IpVersion::V6),
                    bytes: rest,
                })
            }
            ETHERTYPE_VLAN | ETHERTYPE_QINQ | ETHERTYPE_QINQ_OLD => {
                tags += 1;
                if tags > MAX_VLAN_TAGS {
                    return Err(PacketError::TooManyVlanTags);
                }
                // TCI (2), inner ethertype (2)
                ethertype = be16(rest, 2).ok_or(PacketError::Truncated(Layer::Vlan))?;
                rest = rest.get(4..).ok_or(PacketError::Truncated(Layer::Vlan))?;
            }
            ETHERTYPE_PPPOE_SESSION => {
                // version/type (1), code (1), session id (2), length (2), PPP protocol (2)
                let ppp = be16(rest, 6).ok_or(PacketError::Truncated(Layer::Pppoe))?;
                let payload_len = usize::from(be16(rest, 4).unwrap_or(0));
                let body = rest.get(8..).ok_or(PacketError::Truncated(Layer::Pppoe))?;
                // The PPPoE length counts the PPP protocol field; trim Ethernet padding.
                let body = match payload_len.checked_sub(2) {
                    Some(n) if n <= body.len() => body.get(..n).unwrap_or(body),
                    _ => body,
                };
                return match ppp {
                    PPP_IPV4 => Ok(Network {
                        version: Some(IpVersion::V4),
                        bytes: body,
                    }),
                    PPP_IPV6 => Ok(Network {
                        version: Some(IpVersion::V6),
                        bytes: body,
                    }),
                    other => Err(PacketError::NotIpPpp(other)),
                };
            }
            other => return Err(PacketError::NotIp(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ethernet_vlan_and_qinq_are_followed_three_tags_are_not() {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x81, 0x00, 0, 100, 0x88, 0xa8, 0, 101, 0x08, 0x00, 0x45]);
        let n = strip(LINKTYPE_ETHERNET, &f).unwrap();
        assert_eq!(n.version, Some(IpVersion::V4));
        assert_eq!(n.bytes, &[0x45]);

        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[
            0x81, 0x00, 0, 1, 0x81, 0x00, 0, 2, 0x81, 0x00, 0, 3, 0x08, 0,
        ]);
        assert!(matches!(
            strip(LINKTYPE_ETHERNET, &f),
            Err(PacketError::TooManyVlanTags)
        ));
    }

    #[test]
    fn pppoe_session_ipv6() {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x88, 0x64, 0x11, 0, 0, 1, 0, 3, 0x00, 0x57, 0x60, 0xff]);
        let n = strip(LINKTYPE_ETHERNET, &f).unwrap();
        assert_eq!(n.version, Some(IpVersion::V6));
        assert_eq!(n.bytes, &[0x60]);
    }

    #[test]
    fn loopback_family_in_either_byte_order() {
        let n = strip(LINKTYPE_NULL, &[2, 0, 0, 0, 0x45]).unwrap();
        assert_eq!(n.version, Some(IpVersion::V4));
        let n = strip(LINKTYPE_LOOP, &[0, 0, 0, 30, 0x60]).unwrap();
        assert_eq!(n.version, Some(IpVersion::V6));
        assert!(strip(LINKTYPE_NULL, &[7, 0, 0, 0]).is_err());
    }

    #[test]
    fn sll2_and_short_frames() {
        let mut f = vec![0x86, 0xdd];
        f.extend_from_slice(&[0u8; 18]);
        f.push(0x60);
        assert_eq!(strip(LINKTYPE_LINUX_SLL2, &f).unwrap().bytes, &[0x60]);
        for lt in [0, 1, 108, 113, 276] {
            assert!(strip(lt, &[0u8; 3]).is_err());
        }
        assert!(matches!(
            strip(9999, &[]),
            Err(PacketError::UnsupportedLinkType(9999))
        ));
    }
}
