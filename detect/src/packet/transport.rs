//! TCP, UDP and ICMP headers.

use super::{be16, be32, ipproto, Layer, PacketError, Transport};

/// TCP flag bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
    /// URG.
    pub const URG: u8 = 0x20;

    /// Whether every bit of `mask` is set.
    pub fn has(self, mask: u8) -> bool {
        self.0 & mask == mask
    }

    /// A connection attempt: SYN set, ACK clear.
    pub fn is_syn_only(self) -> bool {
        self.has(Self::SYN) && !self.has(Self::ACK)
    }
}

/// A TCP segment: ports, flags, payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSegment<'a> {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq: u32,
    /// Flags.
    pub flags: TcpFlags,
    /// Bytes after the header (options skipped).
    pub payload: &'a [u8],
}

/// A UDP datagram: ports and payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpDatagram<'a> {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Bytes after the 8-byte header, trimmed to the UDP length when it fits.
    pub payload: &'a [u8],
}

/// Parses the transport header of protocol `proto` at the start of `b`.
#[inline(always)]
pub(super) fn parse(proto: u8, b: &[u8]) -> Result<Transport<'_>, PacketError> {
    match proto {
        ipproto::TCP => {
            let src_port = be16(b, 0).ok_or(PacketError::Truncated(Layer::Tcp))?;
            let dst_port = be16(b, 2).ok_or(PacketError::Truncated(Layer::Tcp))?;
            let seq = be32(b, 4).ok_or(PacketError::Truncated(Layer::Tcp))?;
            let offset = b.get(12).ok_or(PacketError::Truncated(Layer::Tcp))? >> 4;
            let flags = *b.get(13).ok_or(PacketError::Truncated(Layer::Tcp))?;
            let header_len = usize::from(offset) * 4;
            if header_len < 20 {
                return Err(PacketError::BadTcpDataOffset);
            }
            let payload = b
                .get(header_len..)
                .ok_or(PacketError::Truncated(Layer::Tcp))?;
            Ok(Transport::Tcp(TcpSegment {
                src_port,
                dst_port,
                seq,
                flags: TcpFlags(flags),
                payload,
            }))
        }
        ipproto::UDP => {
            let src_port = be16(b, 0).ok_or(PacketError::Truncated(Layer::Udp))?;
            let dst_port = be16(b, 2).ok_or(PacketError::Truncated(Layer::Udp))?;
            let len = usize::from(be16(b, 4).ok_or(PacketError::Truncated(Layer::Udp))?);
            let rest = b.get(8..).ok_or(PacketError::Truncated(Layer::Udp))?;
            let payload = match len.checked_sub(8) {
                Some(n) if n <= rest.len() => rest.get(..n).unwrap_or(rest),
                _ => rest,
            };
            Ok(Transport::Udp(UdpDatagram {
                src_port,
                dst_port,
                payload,
            }))
        }
        ipproto::ICMP | ipproto::ICMPV6 => {
            let icmp_type = *b.first().ok_or(PacketError::Truncated(Layer::Icmp))?;
            let code = b.get(1).copied().unwrap_or(0);
            Ok(if proto == ipproto::ICMP {
                Transport::Icmp { icmp_type, code }
            } else {
                Transport::Icmpv6 { icmp_type, code }
            })
        }
        _ => Ok(Transport::Other(b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_options_are_skipped_and_bad_offsets_rejected() {
        let mut seg = vec![0u8; 24];
        seg[0..2].copy_from_slice(&1234u16.to_be_bytes());
        seg[2..4].copy_from_slice(&80u16.to_be_bytes());
        seg[12] = 6 << 4;
        seg[13] = TcpFlags::SYN;
        seg.extend_from_slice(b"GET");
        match parse(ipproto::TCP, &seg).unwrap() {
            Transport::Tcp(t) => {
                assert_eq!(t.payload, b"GET");
                assert!(t.flags.is_syn_only());
            }
            other => panic!("{other:?}"),
        }
        seg[12] = 4 << 4;
        assert_eq!(
            parse(ipproto::TCP, &seg),
            Err(PacketError::BadTcpDataOffset)
        );
        seg[12] = 15 << 4;
        assert_eq!(
            parse(ipproto::TCP, &seg),
            Err(PacketError::Truncated(Layer::Tcp))
        );
    }

    #[test]
    fn short_headers() {
        assert!(parse(ipproto::TCP, &[0; 13]).is_err());
        assert!(parse(ipproto::UDP, &[0; 7]).is_err());
        assert!(parse(ipproto::ICMP, &[]).is_err());
        assert_eq!(
            parse(ipproto::ICMPV6, &[128]).unwrap(),
            Transport::Icmpv6 {
                icmp_type: 128,
                code: 0
            }
        );
    }
}
