//! DNS messages (RFC 1035): header, first question, answer records.
//!
//! Names are decoded with compression pointers followed backwards only (which rules out loops)
//! and at most [`MAX_POINTER_JUMPS`] times; labels longer than 63 bytes and names longer than
//! [`MAX_NAME_LEN`] are rejected. The decoded name is ASCII-lowercased, labels joined with `.`,
//! without the trailing dot. Over TCP a message carries a 2-byte length prefix: [`parse_tcp`].

use std::net::{Ipv4Addr, Ipv6Addr};

/// Longest name accepted, in presentation form without the trailing dot.
pub const MAX_NAME_LEN: usize = 253;
/// Compression pointers followed within one name.
pub const MAX_POINTER_JUMPS: usize = 16;
/// Questions skipped to reach the answers.
pub const MAX_QUESTIONS: u16 = 16;
/// Answer records decoded by [`Message::answers`].
pub const MAX_ANSWERS: u16 = 64;

/// Record type A.
pub const TYPE_A: u16 = 1;
/// Record type CNAME.
pub const TYPE_CNAME: u16 = 5;
/// Record type PTR.
pub const TYPE_PTR: u16 = 12;
/// Record type AAAA.
pub const TYPE_AAAA: u16 = 28;
/// Class IN.
pub const CLASS_IN: u16 = 1;
/// Response code NXDOMAIN.
pub const RCODE_NXDOMAIN: u8 = 3;

/// Why a DNS message could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// The message ends inside the header, a name or a record.
    #[error("truncated DNS message")]
    Truncated,
    /// A name is longer than [`MAX_NAME_LEN`].
    #[error("DNS name too long")]
    NameTooLong,
    /// A label type other than a length (0b00) or a pointer (0b11).
    #[error("unsupported DNS label type {0:#04x}")]
    BadLabelType(u8),
    /// A compression pointer pointing forward or too many jumps.
    #[error("bad DNS compression pointer")]
    BadPointer,
    /// The TCP length prefix is zero.
    #[error("bad DNS-over-TCP length prefix")]
    BadTcpLength,
}

/// A decoded domain name in a fixed buffer: no allocation.
#[derive(Clone, Copy)]
pub struct Name {
    buf: [u8; MAX_NAME_LEN],
    len: u8,
}

impl Default for Name {
    fn default() -> Self {
        Name {
            buf: [0; MAX_NAME_LEN],
            len: 0,
        }
    }
}

impl Name {
    /// The name's bytes: lowercase ASCII letters, other bytes as received.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..usize::from(self.len)).unwrap_or(&[])
    }

    /// The name as text, if it is valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(self.as_bytes()).ok()
    }

    /// Whether the name is the root (empty).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn push_label(&mut self, label: &[u8]) -> Result<(), DnsError> {
        let start = usize::from(self.len);
        let dot = usize::from(start != 0);
        let end = start + dot + label.len();
        if end > MAX_NAME_LEN {
            return Err(DnsError::NameTooLong);
        }
        let out = self.buf.get_mut(start..end).ok_or(DnsError::NameTooLong)?;
        let (sep, rest) = out.split_at_mut(dot);
        if let Some(b) = sep.first_mut() {
            *b = b'.';
        }
        for (o, i) in rest.iter_mut().zip(label) {
            *o = i.to_ascii_lowercase();
        }
        self.len = u8::try_from(end).map_err(|_| DnsError::NameTooLong)?;
        Ok(())
    }
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Name {}

/// The fixed 12-byte header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Header {
    /// Transaction id.
    pub id: u16,
    /// Flags: QR, opcode, AA, TC, RD, RA, Z, AD, CD, rcode.
    pub flags: u16,
    /// Question count.
    pub qdcount: u16,
    /// Answer count.
    pub ancount: u16,
    /// Authority count.
    pub nscount: u16,
    /// Additional count.
    pub arcount: u16,
}

impl Header {
    /// QR: this is a response.
    pub fn is_response(&self) -> bool {
        self.flags & 0x8000 != 0
    }

    /// The opcode (0 = standard query).
    pub fn opcode(&self) -> u8 {
        // four bits: the cast cannot truncate
        ((self.flags >> 11) & 0x0f) as u8
    }

    /// TC: truncated.
    pub fn is_truncated(&self) -> bool {
        self.flags & 0x0200 != 0
    }

    /// The response code (3 = NXDOMAIN).
    pub fn rcode(&self) -> u8 {
        (self.flags & 0x000f) as u8
    }

    /// Whether this header can start a DNS message the sensor treats as DNS: exactly one
    /// question and an assigned opcode (QUERY, IQUERY, STATUS, NOTIFY, UPDATE). Anything else
    /// on port 53 (a tunnel, C2 using the port) is checked as a plain datagram. The XDP
    /// program applies the same test to a UDP payload before handing it over as DNS
    /// (`dns_plausible` in `xdp-ebpf/program/src/main.rs`): keep them equal.
    pub fn is_plausible(&self) -> bool {
        self.qdcount == 1 && matches!(self.opcode(), 0 | 1 | 2 | 4 | 5)
    }
}

/// The first question of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Question {
    /// The queried name.
    pub name: Name,
    /// QTYPE.
    pub qtype: u16,
    /// QCLASS.
    pub qclass: u16,
}

/// Record data of the types the heuristics use.
// A CNAME is decoded in place (no allocation); records are yielded one at a time, so the
// size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RData<'a> {
    /// An IPv4 address.
    A(Ipv4Addr),
    /// An IPv6 address.
    Aaaa(Ipv6Addr),
    /// An alias.
    Cname(Name),
    /// Anything else, undecoded.
    Other(&'a [u8]),
}

/// One answer record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer<'a> {
    /// Owner name.
    pub name: Name,
    /// TYPE.
    pub rtype: u16,
    /// CLASS.
    pub class: u16,
    /// TTL in seconds.
    pub ttl: u32,
    /// Record data.
    pub data: RData<'a>,
}

/// A parsed message: header, first question; answers decoded lazily.
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    /// The header.
    pub header: Header,
    /// The first question, when `qdcount > 0`.
    pub question: Option<Question>,
    msg: &'a [u8],
    /// Offset of the first answer, once every question was skipped.
    answers_at: Option<usize>,
}

/// Parses a DNS message carried over UDP.
pub fn parse(msg: &[u8]) -> Result<Message<'_>, DnsError> {
    let mut slot = None;
    parse_into(msg, &mut slot)?;
    slot.ok_or(DnsError::Truncated)
}

/// [`parse`] into `slot`, which then holds the message: built where the caller keeps it, the
/// question's 254-byte name decoded in place, never moved.
pub fn parse_into<'a, 's>(
    msg: &'a [u8],
    slot: &'s mut Option<Message<'a>>,
) -> Result<&'s mut Message<'a>, DnsError> {
    let h: &[u8; 12] = msg
        .get(..12)
        .and_then(|h| h.try_into().ok())
        .ok_or(DnsError::Truncated)?;
    let be = |i: usize| u16::from_be_bytes([h[i], h[i + 1]]);
    let header = Header {
        id: be(0),
        flags: be(2),
        qdcount: be(4),
        ancount: be(6),
        nscount: be(8),
        arcount: be(10),
    };
    let message = slot.insert(Message {
        header,
        question: None,
        msg,
        answers_at: None,
    });
    let mut pos = 12usize;
    if header.qdcount > 0 {
        let q = message.question.insert(Question {
            name: Name::default(),
            qtype: 0,
            qclass: 0,
        });
        let next = walk_name(msg, pos, |l| q.name.push_label(l))?;
        q.qtype = read_u16(msg, next)?;
        q.qclass = read_u16(msg, next + 2)?;
        pos = next + 4;
        let mut complete = true;
        for _ in 1..header.qdcount.min(MAX_QUESTIONS) {
            match skip_name(msg, pos) {
                Ok(next) if next + 4 <= msg.len() => pos = next + 4,
                _ => {
                    complete = false;
                    break;
                }
            }
        }
        if complete && header.qdcount <= MAX_QUESTIONS {
            message.answers_at = Some(pos);
        }
    } else {
        message.answers_at = Some(pos);
    }
    Ok(message)
}

/// Parses a DNS message carried over TCP (2-byte length prefix). A message longer than the
/// segment is parsed as far as the segment goes.
pub fn parse_tcp(payload: &[u8]) -> Result<Message<'_>, DnsError> {
    parse(tcp_message(payload)?)
}

/// [`parse_tcp`] into `slot`, as [`parse_into`].
pub fn parse_tcp_into<'a, 's>(
    payload: &'a [u8],
    slot: &'s mut Option<Message<'a>>,
) -> Result<&'s mut Message<'a>, DnsError> {
    parse_into(tcp_message(payload)?, slot)
}

/// The message in a TCP payload: after the length prefix, at most that long.
fn tcp_message(payload: &[u8]) -> Result<&[u8], DnsError> {
    let len = usize::from(read_u16(payload, 0)?);
    if len == 0 {
        return Err(DnsError::BadTcpLength);
    }
    let body = payload.get(2..).ok_or(DnsError::Truncated)?;
    Ok(body.get(..len).unwrap_or(body))
}

impl<'a> Message<'a> {
    /// The answer records (at most [`MAX_ANSWERS`]); stops at the first malformed one.
    pub fn answers(&self) -> Answers<'a> {
        Answers {
            msg: self.msg,
            pos: self.answers_at.unwrap_or(usize::MAX),
            left: if self.answers_at.is_some() {
                self.header.ancount.min(MAX_ANSWERS)
            } else {
                0
            },
        }
    }
}

/// Iterator over answer records.
#[derive(Clone, Debug)]
pub struct Answers<'a> {
    msg: &'a [u8],
    pos: usize,
    left: u16,
}

impl<'a> Iterator for Answers<'a> {
    type Item = Result<Answer<'a>, DnsError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let r = self.read();
        if r.is_err() {
            self.left = 0;
        }
        Some(r)
    }
}

impl<'a> Answers<'a> {
    fn read(&mut self) -> Result<Answer<'a>, DnsError> {
        let (name, p) = read_name(self.msg, self.pos)?;
        let rtype = read_u16(self.msg, p)?;
        let class = read_u16(self.msg, p + 2)?;
        let ttl =
            u32::from(read_u16(self.msg, p + 4)?) << 16 | u32::from(read_u16(self.msg, p + 6)?);
        let rdlen = usize::from(read_u16(self.msg, p + 8)?);
        let start = p + 10;
        let rdata = self
            .msg
            .get(start..start + rdlen)
            .ok_or(DnsError::Truncated)?;
        self.pos = start + rdlen;
        let data = match rtype {
            TYPE_A => match <[u8; 4]>::try_from(rdata) {
                Ok(a) => RData::A(Ipv4Addr::from(a)),
                Err(_) => RData::Other(rdata),
            },
            TYPE_AAAA => match <[u8; 16]>::try_from(rdata) {
                Ok(a) => RData::Aaaa(Ipv6Addr::from(a)),
                Err(_) => RData::Other(rdata),
            },
            TYPE_CNAME => RData::Cname(read_name(self.msg, start)?.0),
            _ => RData::Other(rdata),
        };
        Ok(Answer {
            name,
            rtype,
            class,
            ttl,
            data,
        })
    }
}

fn read_u16(msg: &[u8], at: usize) -> Result<u16, DnsError> {
    let b: [u8; 2] = msg
        .get(at..at.checked_add(2).ok_or(DnsError::Truncated)?)
        .and_then(|b| b.try_into().ok())
        .ok_or(DnsError::Truncated)?;
    Ok(u16::from_be_bytes(b))
}

/// Walks a name starting at `pos`; calls `label` for each label. Returns the offset just past
/// the name as it sits at `pos` (after its first pointer, if any).
fn walk_name(
    msg: &[u8],
    mut pos: usize,
    mut label: impl FnMut(&[u8]) -> Result<(), DnsError>,
) -> Result<usize, DnsError> {
    let mut end = None;
    let mut jumps = 0usize;
    let mut wire_len = 0usize;
    loop {
        let len = *msg.get(pos).ok_or(DnsError::Truncated)?;
        match len & 0xc0 {
            0x00 => {
                if len == 0 {
                    return Ok(end.unwrap_or(pos + 1));
                }
                let n = usize::from(len);
                let bytes = msg.get(pos + 1..pos + 1 + n).ok_or(DnsError::Truncated)?;
                wire_len += n + 1;
                if wire_len > MAX_NAME_LEN + 1 {
                    return Err(DnsError::NameTooLong);
                }
                label(bytes)?;
                pos += 1 + n;
            }
            0xc0 => {
                let low = *msg.get(pos + 1).ok_or(DnsError::Truncated)?;
                let target = usize::from(len & 0x3f) << 8 | usize::from(low);
                // Only backward pointers: a name cannot point at itself or ahead, so no loop.
                if target >= pos {
                    return Err(DnsError::BadPointer);
                }
                jumps += 1;
                if jumps > MAX_POINTER_JUMPS {
                    return Err(DnsError::BadPointer);
                }
                end.get_or_insert(pos + 2);
                pos = target;
            }
            other => return Err(DnsError::BadLabelType(other)),
        }
    }
}

/// Decodes the name at `pos`; returns it and the offset just past it.
pub fn read_name(msg: &[u8], pos: usize) -> Result<(Name, usize), DnsError> {
    let mut name = Name::default();
    let next = walk_name(msg, pos, |l| name.push_label(l))?;
    Ok((name, next))
}

fn skip_name(msg: &[u8], pos: usize) -> Result<usize, DnsError> {
    walk_name(msg, pos, |_| Ok(()))
}

/// Builds a standard recursive query for `name` (class IN): for tests, benchmarks and
/// traffic generators.
pub fn query_message(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut m = Vec::with_capacity(18 + name.len());
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&CLASS_IN.to_be_bytes());
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        query_message(0x1234, name, qtype)
    }

    #[test]
    fn query_is_decoded_and_lowercased() {
        let m = query("Evil-Test-Domain.COM", TYPE_A);
        let msg = parse(&m).unwrap();
        assert!(!msg.header.is_response());
        assert_eq!(msg.header.opcode(), 0);
        let q = msg.question.unwrap();
        assert_eq!(q.name.as_str(), Some("evil-test-domain.com"));
        assert_eq!((q.qtype, q.qclass), (TYPE_A, CLASS_IN));
    }

    #[test]
    fn tcp_length_prefix() {
        let m = query("a.example", TYPE_A);
        let mut t = (m.len() as u16).to_be_bytes().to_vec();
        t.extend_from_slice(&m);
        assert_eq!(
            parse_tcp(&t).unwrap().question.unwrap().name.as_str(),
            Some("a.example")
        );
        assert_eq!(parse_tcp(&[0, 0]).unwrap_err(), DnsError::BadTcpLength);
    }

    #[test]
    fn response_answers_with_compression() {
        let mut m = query("www.example.com", TYPE_A);
        m[2] = 0x81;
        m[3] = 0x80;
        m[7] = 3; // ancount
                  // CNAME www.example.com -> cdn.example.com (pointer to "example.com" at 16)
        m.extend_from_slice(&[
            0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 6, 3, b'c', b'd', b'n', 0xc0, 16,
        ]);
        // A record for the alias (pointer to the CNAME's rdata)
        let alias = 12 + 17 + 4 + 12;
        m.extend_from_slice(&[0xc0, alias as u8, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 1, 2, 3, 4]);
        m.extend_from_slice(&[0xc0, 12, 0, 28, 0, 1, 0, 0, 0, 60, 0, 16]);
        m.extend_from_slice(&[0u8; 15]);
        m.push(1);
        let msg = parse(&m).unwrap();
        let answers: Vec<_> = msg.answers().collect::<Result<_, _>>().unwrap();
        assert_eq!(answers.len(), 3);
        match answers[0].data {
            RData::Cname(n) => assert_eq!(n.as_str(), Some("cdn.example.com")),
            other => panic!("{other:?}"),
        }
        assert_eq!(answers[1].name.as_str(), Some("cdn.example.com"));
        assert_eq!(answers[1].data, RData::A(Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(answers[2].data, RData::Aaaa(Ipv6Addr::from(1u128)));
    }

    #[test]
    fn pointer_loops_and_forward_pointers_are_rejected() {
        let mut m = vec![0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&[0xc0, 12]); // points at itself
        assert_eq!(parse(&m).unwrap_err(), DnsError::BadPointer);
        let mut m = vec![0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&[0xc0, 14, 1, b'a', 0, 0, 1, 0, 1]);
        assert_eq!(parse(&m).unwrap_err(), DnsError::BadPointer);
    }

    #[test]
    fn long_names_and_bad_labels_are_rejected() {
        let long = vec!["a".repeat(63); 5].join(".");
        assert_eq!(parse(&query(&long, 1)).unwrap_err(), DnsError::NameTooLong);
        let mut m = vec![0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&[0x41, 0]);
        assert_eq!(parse(&m).unwrap_err(), DnsError::BadLabelType(0x40));
        assert_eq!(parse(&[0; 11]).unwrap_err(), DnsError::Truncated);
        let mut m = query("a.example", 1);
        m.truncate(m.len() - 1);
        assert_eq!(parse(&m).unwrap_err(), DnsError::Truncated);
    }

    #[test]
    fn longest_legal_name_fits() {
        let name = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61),
        ]
        .join(".");
        assert_eq!(name.len(), 253);
        let m = query(&name, 1);
        assert_eq!(
            parse(&m).unwrap().question.unwrap().name.as_str(),
            Some(name.as_str())
        );
    }
}
