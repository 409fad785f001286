//! Benchmark traffic, reproducible from a seed, with the malicious items it carries known so
//! recall can be measured.

use std::net::{IpAddr, Ipv4Addr};

use xtrail_detect::trails::TrailSet;
use xtrail_detect::whitelist::{is_ignored_suffix, Whitelist};

use crate::frames::{background_payload, background_udp, dns_query, tcp_flags, Frame, MSS};
use crate::gen::Rng;

/// Trail material the scenarios draw malicious items from.
#[derive(Clone, Debug, Default)]
pub struct TrailPicks {
    /// IPv4 address trails.
    pub ips: Vec<Ipv4Addr>,
    /// Domain trails.
    pub domains: Vec<String>,
    /// URL trails as (host, path).
    pub urls: Vec<(String, String)>,
}

/// What kind of malicious item was injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemKind {
    Ip,
    Dns,
    Url,
    Sni,
}

/// One injected malicious item: an event whose trail contains `needle` is expected.
#[derive(Clone, Debug)]
pub struct Item {
    pub kind: ItemKind,
    pub needle: String,
}

/// What a scenario's frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// TCP or UDP to a clean address, with a background payload (or none).
    Background,
    /// A DNS query.
    Dns,
    /// An HTTP request.
    Http,
    /// A TLS ClientHello, or a later segment of one.
    Tls,
    /// A SYN to an IP trail.
    IpTrail,
}

/// A scenario's frames and the malicious items among them.
#[derive(Clone, Debug, Default)]
pub struct Traffic {
    pub frames: Vec<Vec<u8>>,
    pub items: Vec<Item>,
    /// Each frame's class, in the frames' order.
    pub classes: Vec<Class>,
}

impl Traffic {
    /// The first `n` frames that are of `class`, in order.
    pub fn first_of(&self, n: usize, class: Class) -> Vec<Vec<u8>> {
        self.frames
            .iter()
            .zip(&self.classes)
            .take(n)
            .filter(|(_, c)| **c == class)
            .map(|(f, _)| f.clone())
            .collect()
    }
}

fn client(rng: &mut Rng) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        198,
        18,
        rng.below(250) as u8 + 1,
        rng.below(250) as u8 + 1,
    ))
}

/// A random public-looking IPv4 address that is not a trail.
fn clean_server(rng: &mut Rng, is_trail: &dyn Fn(Ipv4Addr) -> bool) -> IpAddr {
    loop {
        let a = Ipv4Addr::from(rng.next_u64() as u32);
        let o = a.octets();
        let special = o[0] == 0
            || o[0] == 10
            || o[0] == 127
            || o[0] >= 224
            || (o[0] == 198 && o[1] & 0xfe == 18);
        if !special && !is_trail(a) {
            return IpAddr::V4(a);
        }
    }
}

fn background(rng: &mut Rng, is_trail: &dyn Fn(Ipv4Addr) -> bool) -> Vec<u8> {
    let src = client(rng);
    let dst = clean_server(rng, is_trail);
    let sport = 1024 + rng.below(60000) as u16;
    if rng.chance(0.5) {
        let flags = if rng.chance(0.1) {
            tcp_flags::SYN
        } else {
            tcp_flags::ACK | tcp_flags::PSH
        };
        Frame::tcp(
            src,
            sport,
            dst,
            [443, 80, 22, 25, 8443][rng.below(5) as usize],
            flags,
        )
        .with_payload(&background_payload(32))
        .build()
    } else {
        background_udp(src, sport, dst, 1024 + rng.below(60000) as u16)
    }
}

/// Picks malicious items from the trail set, deterministically.
pub fn picks(trails: &TrailSet, whitelist: &Whitelist, n: usize) -> TrailPicks {
    let info = |id: u32| {
        trails
            .labels
            .get(id as usize)
            .map(|l| l.info.as_str())
            .unwrap_or("")
    };
    let mut ips: Vec<Ipv4Addr> = trails
        .ip
        .v4
        .iter()
        .filter(|(a, l)| {
            let a = Ipv4Addr::from(*a);
            !whitelist.is_ip_whitelisted(IpAddr::V4(a))
                && xtrail_detect::process::syn_hit_reported(info(*l), true, 443, false)
                && !a.is_private()
                && !a.is_loopback()
        })
        .map(|(a, _)| Ipv4Addr::from(a))
        .collect();
    ips.sort();
    let mut domains: Vec<String> = trails
        .domains
        .iter()
        .filter(|(d, _)| {
            d.len() < 48
                && d.contains('.')
                && !d.starts_with('.')
                && d.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
                && !whitelist.is_domain_whitelisted(d)
                && !is_ignored_suffix(d)
                && trails.domains.lookup(d).is_some_and(|m| m.trail == *d)
                && trails.domains.lookup(&format!("www.{d}")).is_some()
        })
        .map(|(d, _)| d.to_string())
        .collect();
    domains.sort();
    let mut urls: Vec<(String, String)> = trails
        .urls
        .iter()
        .filter_map(|(u, _)| {
            let (h, p) = u.split_once('/')?;
            let ok = h.contains('.')
                && !h.contains(':')
                && p.len() > 3
                && !p.contains(['?', ' ', '%'])
                && !whitelist.is_domain_whitelisted(h)
                && p.bytes().all(|b| b.is_ascii_graphic());
            ok.then(|| (h.to_string(), format!("/{p}")))
        })
        .collect();
    urls.sort();
    let spread = |len: usize| -> Vec<usize> {
        let k = n.min(len);
        (0..k).map(|i| i * len / k.max(1)).collect()
    };
    TrailPicks {
        ips: spread(ips.len()).into_iter().map(|i| ips[i]).collect(),
        domains: spread(domains.len())
            .into_iter()
            .map(|i| domains[i].clone())
            .collect(),
        urls: spread(urls.len())
            .into_iter()
            .map(|i| urls[i].clone())
            .collect(),
    }
}

/// Scenario 1: TCP and UDP to clean addresses only (the XDP fast path).
pub fn background_only(seed: u64, n: usize, is_trail: &dyn Fn(Ipv4Addr) -> bool) -> Traffic {
    let mut rng = Rng::new(seed);
    let frames: Vec<Vec<u8>> = (0..n).map(|_| background(&mut rng, is_trail)).collect();
    Traffic {
        classes: vec![Class::Background; n],
        frames,
        items: Vec::new(),
    }
}

/// User agents of the mix's HTTP requests.
const BROWSER_AGENTS: [&str; 2] = [
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
];

/// Scenario 2: `n` frames of ~70% background, 15% DNS, 10% HTTP (a browser's request heads;
/// the clean requests to 1,000 host names, half with a query), 3% TLS ClientHello (a
/// browser's; half with a post-quantum key share, two segments), 2% to IP trails; about
/// `malicious_share` of the DNS names, URLs and SNIs are drawn from the trails (with `www.`
/// subdomains for half the domains). Each malicious item appears once.
pub fn mix(
    seed: u64,
    n: usize,
    picks: &TrailPicks,
    malicious_share: f64,
    is_trail: &dyn Fn(Ipv4Addr) -> bool,
) -> Traffic {
    let mut rng = Rng::new(seed);
    let mut t = Traffic::default();
    let (mut d, mut u, mut ip) = (0usize, 0usize, 0usize);
    for i in 0.. {
        if t.frames.len() >= n {
            break;
        }
        let r = rng.below(1000);
        let src = client(&mut rng);
        let sport = 1024 + rng.below(60000) as u16;
        let frames = if r < 700 {
            t.classes.push(Class::Background);
            vec![background(&mut rng, is_trail)]
        } else if r < 850 {
            t.classes.push(Class::Dns);
            let resolver = clean_server(&mut rng, is_trail);
            let name = if rng.chance(malicious_share) && d < picks.domains.len() {
                let base = &picks.domains[d];
                d += 1;
                let name = if d % 2 == 0 {
                    format!("www.{base}")
                } else {
                    base.clone()
                };
                t.items.push(Item {
                    kind: ItemKind::Dns,
                    needle: base.clone(),
                });
                name
            } else {
                format!(
                    "h{}.cdn{}.bench-clean.net",
                    rng.below(100_000),
                    rng.below(100)
                )
            };
            vec![Frame::udp(src, sport, resolver, 53, &dns_query(i as u16, &name, 1)).build()]
        } else if r < 950 {
            t.classes.push(Class::Http);
            let server = clean_server(&mut rng, is_trail);
            let (host, path) = if rng.chance(malicious_share) && u < picks.urls.len() {
                let (h, p) = picks.urls[u].clone();
                u += 1;
                t.items.push(Item {
                    kind: ItemKind::Url,
                    needle: p.trim_end_matches('/').to_string(),
                });
                (h, p)
            } else {
                // Half with a query, as real requests often carry one, to one of 1,000 web
                // servers' names (both from the same draw: the rest of the mix stays as it
                // was).
                let k = rng.below(1_000_000);
                let path = if k.is_multiple_of(2) {
                    format!("/static/{k}.js?v={}&lang=en", k % 100_000)
                } else {
                    format!("/static/{k}.js")
                };
                (format!("www{}.bench-clean.net", k / 2 % 1_000), path)
            };
            // A browser's request head (307-371 bytes, one of two browsers by the draw's
            // index), not a minimal one.
            let ua = BROWSER_AGENTS[i % BROWSER_AGENTS.len()];
            let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {ua}\r\nAccept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\nAccept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\nConnection: keep-alive\r\n\r\n");
            vec![
                Frame::tcp(src, sport, server, 80, tcp_flags::PSH | tcp_flags::ACK)
                    .with_payload(req.as_bytes())
                    .build(),
            ]
        } else if r < 980 {
            t.classes.push(Class::Tls);
            let server = clean_server(&mut rng, is_trail);
            let sni = if rng.chance(malicious_share) && d < picks.domains.len() {
                let name = picks.domains[d].clone();
                d += 1;
                t.items.push(Item {
                    kind: ItemKind::Sni,
                    needle: name.clone(),
                });
                name
            } else {
                format!("api{}.bench-clean.net", rng.below(10_000))
            };
            // A browser's ClientHello (the name the 17th of 18 extensions), not a minimal
            // one that names only the server. On odd draws with the post-quantum key share
            // browsers send by default (~1,760 bytes: two segments, the name in the
            // second), when both fit in the `n` frames; else without (~540 bytes, one).
            let post_quantum = i % 2 == 1 && t.frames.len() + 2 <= n;
            let hello = xtrail_detect::protocols::tls::browser_client_hello(&sni, post_quantum);
            Frame::tcp(src, sport, server, 443, tcp_flags::PSH | tcp_flags::ACK)
                .segments(&hello, MSS)
        } else if ip < picks.ips.len() {
            t.classes.push(Class::IpTrail);
            let a = picks.ips[ip];
            ip += 1;
            t.items.push(Item {
                kind: ItemKind::Ip,
                needle: a.to_string(),
            });
            vec![Frame::syn(src, sport, IpAddr::V4(a), 443).build()]
        } else {
            // The IP trails drawn are used up: background instead.
            t.classes.push(Class::Background);
            vec![background(&mut rng, is_trail)]
        };
        // Each frame its class: a ClientHello's later segments are `Tls` too.
        if let Some(&class) = t.classes.last() {
            t.classes.resize(t.classes.len() + frames.len() - 1, class);
        }
        t.frames.extend(frames);
    }
    t
}

/// Scenario 3: every packet is a SYN to an IP trail, from ever-changing sources.
pub fn storm(seed: u64, n: usize, picks: &TrailPicks) -> Traffic {
    let mut rng = Rng::new(seed);
    let mut t = Traffic::default();
    if picks.ips.is_empty() {
        return t;
    }
    for _ in 0..n {
        let a = picks.ips[rng.below(picks.ips.len() as u64) as usize];
        let f = Frame::syn(
            client(&mut rng),
            1024 + rng.below(60000) as u16,
            IpAddr::V4(a),
            443,
        );
        t.frames.push(f.build());
        t.classes.push(Class::IpTrail);
    }
    t
}

/// Whether an event's trail text satisfies an item.
pub fn matches(item: &Item, trail: &str) -> bool {
    trail.contains(&item.needle) || trail.replace(['(', ')'], "").contains(&item.needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each frame of the mix carries its class: DNS queries to port 53, HTTP requests, TLS
    /// handshake records or their second segments, SYNs to the IP trails drawn, background
    /// otherwise; `n` frames in all.
    #[test]
    fn the_mix_says_each_frames_class() {
        let picks = TrailPicks {
            ips: vec![Ipv4Addr::new(203, 0, 113, 7)],
            domains: vec!["evil.example".into()],
            urls: vec![("evil.example".into(), "/gate.php".into())],
        };
        let mix = mix(7, 4093, &picks, 0.05, &|_| false);
        assert_eq!(mix.frames.len(), 4093);
        assert_eq!(mix.classes.len(), mix.frames.len());
        let udp_payload = |f: &[u8]| f[42..].to_vec();
        let tcp_payload = |f: &[u8]| f[54..].to_vec();
        let mut seen = [0usize; 5];
        let mut second_segments = 0;
        for (k, (f, c)) in mix.frames.iter().zip(&mix.classes).enumerate() {
            let (proto, dport) = (f[23], u16::from_be_bytes([f[36], f[37]]));
            match c {
                Class::Dns => assert!(proto == 17 && dport == 53 && udp_payload(f)[5] == 1),
                Class::Http => assert!(proto == 6 && tcp_payload(f).starts_with(b"GET ")),
                Class::Tls => {
                    // A second segment continues the frame before it (a ClientHello's first
                    // segment: same ports, the next bytes), whatever its first byte is.
                    let seq = |f: &[u8]| u32::from_be_bytes([f[38], f[39], f[40], f[41]]);
                    let continues = k.checked_sub(1).is_some_and(|j| {
                        let first = &mix.frames[j];
                        mix.classes[j] == Class::Tls
                            && tcp_payload(first)[0] == 0x16
                            && first[34..38] == f[34..38]
                            && seq(f) == seq(first) + tcp_payload(first).len() as u32
                    });
                    if continues {
                        second_segments += 1;
                    } else {
                        // A handshake record holding a ClientHello.
                        let p = tcp_payload(f);
                        assert!(proto == 6 && p[0] == 0x16 && p[5] == 1);
                    }
                }
                Class::IpTrail => assert_eq!(f[30..34], [203, 0, 113, 7]),
                Class::Background => assert!(f[34..].len() < 60),
            }
            seen[*c as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 0), "{seen:?}");
        // About half the ~120 ClientHellos are two segments.
        assert!((30..90).contains(&second_segments), "{second_segments}");
    }
}
