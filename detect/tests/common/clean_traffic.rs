//! Clean Ethernet frames of the kinds the XDP program hands to userspace and replay sees
//! (background TCP/UDP, DNS queries, HTTP requests, TLS ClientHellos), from a bounded
//! population of hosts and names, reproducible from a seed. Shared by `tests/no_alloc.rs` and
//! `benches/parse.rs` (included with `#[path]`).
//!
//! "Clean" is checked against the trail set given: addresses and names that hit a trail are
//! skipped, and the population is small enough per key that no heuristic fires (fewer than
//! 10 ports per host pair, fewer than 1,000 subdomains per base domain, one path segment per
//! web server, short names).

#![allow(dead_code)]

use std::net::Ipv4Addr;

use xtrail_detect::trails::TrailSet;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// TCP ACK with 32 bytes of payload, or a SYN (one in ten).
    Tcp,
    /// UDP with 48 bytes of payload to a high port.
    Udp,
    /// A DNS query over UDP.
    Dns,
    /// An HTTP GET over TCP port 80, without a query.
    Http,
    /// An HTTP GET over TCP port 80 whose target carries a query (`?v=N&lang=en`).
    HttpQuery,
    /// A browser's TLS ClientHello (one segment, ~540 bytes) over TCP port 443.
    Tls,
}

/// Kinds in order, for reports.
pub const KINDS: [Kind; 6] = [
    Kind::Tcp,
    Kind::Udp,
    Kind::Dns,
    Kind::Http,
    Kind::HttpQuery,
    Kind::Tls,
];

/// The generator: a xorshift state and the population.
pub struct CleanTraffic {
    state: u64,
    clients: Vec<[u8; 4]>,
    servers: Vec<[u8; 4]>,
    names: Vec<String>,
}

impl CleanTraffic {
    /// A population of `clients` and `servers` addresses and `names` host names that hit
    /// nothing in `trails`.
    pub fn new(seed: u64, trails: &TrailSet, clients: usize, servers: usize, names: usize) -> Self {
        let mut g = CleanTraffic {
            state: seed | 1,
            clients: Vec::new(),
            servers: Vec::new(),
            names: Vec::new(),
        };
        while g.clients.len() < clients {
            let r = g.next();
            g.clients
                .push([198, 18, (r % 250) as u8 + 1, ((r >> 8) % 250) as u8 + 1]);
        }
        while g.servers.len() < servers {
            let a = Ipv4Addr::from(g.next() as u32);
            let o = a.octets();
            let special = o[0] == 0
                || o[0] == 10
                || o[0] == 127
                || o[0] >= 224
                || (o[0] == 198 && o[1] & 0xfe == 18)
                || a.is_private();
            if !special && trails.ip.lookup(a.into(), None).is_none() {
                g.servers.push(o);
            }
        }
        let mut i = 0u64;
        while g.names.len() < names {
            i += 1;
            // 40 subdomains a base: far below the DNS exhaustion threshold.
            let name = format!("h{}.bench-site{}.net", i % 40, i / 40);
            if trails.domains.lookup(&name).is_none() {
                g.names.push(name);
            }
        }
        g
    }

    fn next(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        x
    }

    fn index(&mut self, len: usize) -> usize {
        (self.next() % len.max(1) as u64) as usize
    }

    fn name(&mut self) -> String {
        let i = self.index(self.names.len());
        self.names[i].clone()
    }

    /// One frame of the given kind.
    pub fn frame(&mut self, kind: Kind) -> Vec<u8> {
        let (c, s) = (
            self.index(self.clients.len()),
            self.index(self.servers.len()),
        );
        let (src, dst) = (self.clients[c], self.servers[s]);
        let sport = 1024 + (self.next() % 60_000) as u16;
        match kind {
            Kind::Tcp => {
                let syn = self.next().is_multiple_of(10);
                // A SYN carries no payload; five service ports keep each host pair under the
                // port scan threshold.
                let dport = [443, 80, 22, 25, 8443][(self.next() % 5) as usize];
                if syn {
                    tcp(src, dst, sport, dport, 0x02, &[])
                } else {
                    tcp(src, dst, sport, dport, 0x18, &[0u8; 32])
                }
            }
            Kind::Udp => {
                // A fixed destination port per host pair: no UDP scan.
                let dport = 20_000 + (u16::from(dst[3]) ^ u16::from(src[3]));
                udp(src, dst, sport, dport, &[0u8; 48])
            }
            Kind::Dns => {
                let name = self.name();
                let id = self.next() as u16;
                udp(
                    src,
                    dst,
                    sport,
                    53,
                    &xtrail_detect::protocols::dns::query_message(id, &name, 1),
                )
            }
            Kind::Http | Kind::HttpQuery => {
                let host = self.name();
                let n = self.next() % 1_000_000;
                let query = match kind {
                    Kind::HttpQuery => format!("?v={}&lang=en", self.next() % 100_000),
                    _ => String::new(),
                };
                let req = format!(
                    "GET /static/{n}.js{query} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\nAccept: */*\r\nAccept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\n\r\n"
                );
                tcp(src, dst, sport, 80, 0x18, req.as_bytes())
            }
            Kind::Tls => {
                let sni = self.name();
                tcp(
                    src,
                    dst,
                    sport,
                    443,
                    0x18,
                    &xtrail_detect::protocols::tls::browser_client_hello(&sni, false),
                )
            }
        }
    }

    /// A TCP SYN to one of five service ports.
    pub fn syn(&mut self) -> Vec<u8> {
        let (c, s) = (
            self.index(self.clients.len()),
            self.index(self.servers.len()),
        );
        let sport = 1024 + (self.next() % 60_000) as u16;
        let dport = [443, 80, 22, 25, 8443][(self.next() % 5) as usize];
        tcp(self.clients[c], self.servers[s], sport, dport, 0x02, &[])
    }

    /// The bench's mix proportions: 70% background (half TCP, half UDP), 15% DNS, 10% HTTP
    /// (half of it with a query), 5% TLS.
    pub fn mixed(&mut self) -> (Kind, Vec<u8>) {
        let kind = match self.next() % 100 {
            0..=34 => Kind::Tcp,
            35..=69 => Kind::Udp,
            70..=84 => Kind::Dns,
            85..=89 => Kind::Http,
            90..=94 => Kind::HttpQuery,
            _ => Kind::Tls,
        };
        (kind, self.frame(kind))
    }
}

/// Flow starts of host pair `i` (below 2^17: 198.18.0.0/15 to 198.18.0.0/15, pairs the
/// population's frames never make) with two items for each scan table it meets (a SYN to
/// two service ports, UDP to two high ports): each pair gets a window line, which is what
/// fills those tables to their bound.
pub fn second_items(i: u32) -> [Vec<u8>; 4] {
    let [_, h, a, b] = i.to_be_bytes();
    let (src, dst) = ([198, 18 | (h & 1), a, b], [198, 19 - (h & 1), b, a]);
    [
        tcp(src, dst, 40_000, 443, 0x02, &[]),
        tcp(src, dst, 40_001, 80, 0x02, &[]),
        udp(src, dst, 40_000, 20_000, &[0u8; 48]),
        udp(src, dst, 40_000, 20_001, &[0u8; 48]),
    ]
}

/// Ethernet + IPv4 header around an L4 segment.
fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(34 + l4.len());
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00]);
    let total = (20 + l4.len()) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(l4);
    f
}

/// An Ethernet/IPv4/TCP frame.
pub fn tcp(
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut t = Vec::with_capacity(20 + payload.len());
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(payload);
    ipv4(src, dst, 6, &t)
}

/// An Ethernet/IPv4/UDP frame.
pub fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    ipv4(src, dst, 17, &u)
}
