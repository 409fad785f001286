//! Lookups over [`IpTrails`]: IP:port, address, then longest-prefix CIDR.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hashbrown::HashMap;

use super::{IpMatch, IpMatchKind, IpTrails, LabelId};

/// Per-prefix-length hash maps over the CIDR vectors, longest prefix first.
///
/// There are about 1,100 CIDR trails, nearly all /24, so a lookup is one or a few hash probes
/// instead of a scan. The index is rebuilt by [`IpTrails::rebuild_cidr_index`]; if someone
/// edits `cidr4`/`cidr6` and forgets, lookups notice the length mismatch and scan instead.
#[derive(Debug, Default)]
pub(crate) struct CidrIndex {
    v4: Vec<(u8, HashMap<u32, LabelId>)>,
    v6: Vec<(u8, HashMap<u128, LabelId>)>,
    v4_len: usize,
    v6_len: usize,
}

/// The network address of `addr` under a `prefix`-bit mask.
pub(crate) fn mask4(addr: u32, prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p if p >= 32 => addr,
        p => addr & (u32::MAX << (32 - u32::from(p))),
    }
}

/// The network address of `addr` under a `prefix`-bit mask.
pub(crate) fn mask6(addr: u128, prefix: u8) -> u128 {
    match prefix {
        0 => 0,
        p if p >= 128 => addr,
        p => addr & (u128::MAX << (128 - u32::from(p))),
    }
}

impl IpTrails {
    /// Looks an address up the way the XDP program does: IP:port (when a port is given),
    /// then the address, then the longest CIDR prefix. An IPv4-mapped IPv6 address
    /// (`::ffff:a.b.c.d`) is looked up as the IPv4 address.
    pub fn lookup(&self, addr: IpAddr, port: Option<u16>) -> Option<IpMatch> {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        if let Some(port) = port {
            let key = match addr {
                IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                IpAddr::V6(v6) => v6.octets(),
            };
            if let Some(&label) = self.ipport.get(&(key, port)) {
                return Some(IpMatch {
                    kind: IpMatchKind::IpPort,
                    label,
                });
            }
        }
        let hit = |kind, label| IpMatch { kind, label };
        match addr {
            IpAddr::V4(v4) => self
                .v4
                .get(&v4.octets())
                .map(|&l| hit(IpMatchKind::Ip, l))
                .or_else(|| self.cidr4_lookup(v4).map(|l| hit(IpMatchKind::Cidr, l))),
            IpAddr::V6(v6) => self
                .v6
                .get(&v6.octets())
                .map(|&l| hit(IpMatchKind::Ip, l))
                .or_else(|| self.cidr6_lookup(v6).map(|l| hit(IpMatchKind::Cidr, l))),
        }
    }

    /// Label of the longest IPv4 CIDR trail containing `addr`.
    pub fn cidr4_lookup(&self, addr: Ipv4Addr) -> Option<LabelId> {
        let a = u32::from(addr);
        if self.cidr_index.v4_len == self.cidr4.len() {
            return self
                .cidr_index
                .v4
                .iter()
                .find_map(|(p, m)| m.get(&mask4(a, *p)).copied());
        }
        self.cidr4
            .iter()
            .filter(|(net, p, _)| mask4(a, *p) == mask4(u32::from_be_bytes(*net), *p))
            .max_by_key(|(_, p, _)| *p)
            .map(|&(_, _, l)| l)
    }

    /// Label of the longest IPv6 CIDR trail containing `addr`.
    pub fn cidr6_lookup(&self, addr: Ipv6Addr) -> Option<LabelId> {
        let a = u128::from(addr);
        if self.cidr_index.v6_len == self.cidr6.len() {
            return self
                .cidr_index
                .v6
                .iter()
                .find_map(|(p, m)| m.get(&mask6(a, *p)).copied());
        }
        self.cidr6
            .iter()
            .filter(|(net, p, _)| mask6(a, *p) == mask6(u128::from_be_bytes(*net), *p))
            .max_by_key(|(_, p, _)| *p)
            .map(|&(_, _, l)| l)
    }

    /// Rebuilds the CIDR lookup index from `cidr4` and `cidr6` (the loader does this; call it
    /// after editing those vectors by hand, or lookups fall back to a linear scan).
    pub fn rebuild_cidr_index(&mut self) {
        let mut v4: Vec<(u8, HashMap<u32, LabelId>)> = Vec::new();
        for &(net, p, l) in &self.cidr4 {
            let key = mask4(u32::from_be_bytes(net), p);
            match v4.iter_mut().find(|(q, _)| *q == p) {
                Some((_, m)) => {
                    m.entry(key).or_insert(l);
                }
                None => v4.push((p, HashMap::from_iter([(key, l)]))),
            }
        }
        v4.sort_by_key(|e| std::cmp::Reverse(e.0));
        let mut v6: Vec<(u8, HashMap<u128, LabelId>)> = Vec::new();
        for &(net, p, l) in &self.cidr6 {
            let key = mask6(u128::from_be_bytes(net), p);
            match v6.iter_mut().find(|(q, _)| *q == p) {
                Some((_, m)) => {
                    m.entry(key).or_insert(l);
                }
                None => v6.push((p, HashMap::from_iter([(key, l)]))),
            }
        }
        v6.sort_by_key(|e| std::cmp::Reverse(e.0));
        self.cidr_index = CidrIndex {
            v4,
            v6,
            v4_len: self.cidr4.len(),
            v6_len: self.cidr6.len(),
        };
    }

    /// Number of IP trails of all kinds.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len() + self.ipport.len() + self.cidr4.len() + self.cidr6.len()
    }

    /// Whether there are no IP trails at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trails() -> IpTrails {
        let mut t = IpTrails::default();
        t.v4.insert([66, 66, 66, 66], 1);
        t.v6.insert("dead::beef".parse::<Ipv6Addr>().unwrap().octets(), 2);
        t.ipport.insert(
            (Ipv4Addr::new(6, 6, 6, 6).to_ipv6_mapped().octets(), 8443),
            3,
        );
        t.ipport
            .insert(("dead::beef".parse::<Ipv6Addr>().unwrap().octets(), 443), 4);
        t.cidr4.push(([10, 0, 0, 0], 8, 10));
        t.cidr4.push(([10, 1, 0, 0], 16, 16));
        t.cidr4.push(([10, 1, 2, 0], 24, 24));
        t.cidr4.push(([0, 0, 0, 0], 0, 99));
        t.cidr6
            .push(("2001:db8::".parse::<Ipv6Addr>().unwrap().octets(), 32, 32));
        t.cidr6
            .push(("2001:db8:1::".parse::<Ipv6Addr>().unwrap().octets(), 48, 48));
        t
    }

    fn check(t: &IpTrails) {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let m = |kind, label| Some(IpMatch { kind, label });
        assert_eq!(t.lookup(ip("66.66.66.66"), None), m(IpMatchKind::Ip, 1));
        assert_eq!(t.lookup(ip("66.66.66.66"), Some(80)), m(IpMatchKind::Ip, 1));
        assert_eq!(
            t.lookup(ip("::ffff:66.66.66.66"), None),
            m(IpMatchKind::Ip, 1)
        );
        assert_eq!(t.lookup(ip("dead::beef"), None), m(IpMatchKind::Ip, 2));
        assert_eq!(
            t.lookup(ip("dead::beef"), Some(443)),
            m(IpMatchKind::IpPort, 4)
        );
        assert_eq!(
            t.lookup(ip("6.6.6.6"), Some(8443)),
            m(IpMatchKind::IpPort, 3)
        );
        assert_eq!(
            t.lookup(ip("::ffff:6.6.6.6"), Some(8443)),
            m(IpMatchKind::IpPort, 3)
        );
        // No port: the IP:port trail does not match, the /0 does.
        assert_eq!(t.lookup(ip("6.6.6.6"), None), m(IpMatchKind::Cidr, 99));
        assert_eq!(t.lookup(ip("10.1.2.3"), None), m(IpMatchKind::Cidr, 24));
        assert_eq!(t.lookup(ip("10.1.3.3"), None), m(IpMatchKind::Cidr, 16));
        assert_eq!(t.lookup(ip("10.2.3.3"), None), m(IpMatchKind::Cidr, 10));
        assert_eq!(
            t.lookup(ip("2001:db8:1::5"), None),
            m(IpMatchKind::Cidr, 48)
        );
        assert_eq!(
            t.lookup(ip("2001:db8:2::5"), None),
            m(IpMatchKind::Cidr, 32)
        );
        assert_eq!(t.lookup(ip("2001:db9::5"), None), None);
    }

    #[test]
    fn lookup_order_and_longest_prefix_indexed() {
        let mut t = trails();
        t.rebuild_cidr_index();
        check(&t);
        assert_eq!(t.len(), 10);
        assert!(!t.is_empty());
    }

    #[test]
    fn lookup_without_index_scans() {
        let t = trails();
        check(&t);
    }

    #[test]
    fn masks() {
        assert_eq!(mask4(0x0a01_0203, 24), 0x0a01_0200);
        assert_eq!(mask4(0x0a01_0203, 0), 0);
        assert_eq!(mask4(0x0a01_0203, 32), 0x0a01_0203);
        assert_eq!(mask6(u128::MAX, 1), 1 << 127);
    }
}
