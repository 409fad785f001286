//! Lookups over [`IpTrails`]: IP:port, address, then longest-prefix CIDR.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hashbrown::HashMap;

use super::{iptable, IpMatch, IpMatchKind, IpTrails, LabelId};

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
    /// IPv4 prefilter: one bit per /[`V4_BLOCK_BITS`] block that holds an IPv4 address,
    /// IPv4 IP:port or IPv4 CIDR trail. A clear bit answers an IPv4 lookup without touching
    /// the hash tables (most addresses of real traffic are in no listed block). Empty: not
    /// built.
    v4_blocks: Vec<u64>,
    /// `v4` and `ipport` sizes the prefilter was built from: tables changed since (by a
    /// caller that did not rebuild) turn it off.
    v4_count: usize,
    ipport_count: usize,
}

/// Prefix length of the IPv4 prefilter's blocks: 2^20 bits, 128 KiB.
const V4_BLOCK_BITS: u32 = 20;
/// Words of the IPv4 prefilter's bitmap.
pub(crate) const V4_BLOCK_WORDS: usize = v4_blocks::words(V4_BLOCK_BITS);

/// The IPv4 block prefilter, shared by the IP trails and the whitelist: a bitmap with one
/// bit per block of addresses sharing their first `block_bits` bits (`2^block_bits / 64`
/// words), set for every block that holds a listed address or overlaps a listed network, so
/// a clear bit answers a lookup without hashing.
pub(crate) mod v4_blocks {
    use super::mask4;

    /// Words of a bitmap of `block_bits`-bit blocks.
    pub(crate) const fn words(block_bits: u32) -> usize {
        (1usize << block_bits) / 64
    }

    /// Sets the bit of every block `net/prefix` overlaps (one for an address, `prefix` 32).
    pub(crate) fn mark(bits: &mut [u64], block_bits: u32, net: u32, prefix: u8) {
        let first = mask4(net, prefix) >> (32 - block_bits);
        // A prefix shorter than a block covers 2^(block bits - prefix) blocks.
        let span = 1u64 << block_bits.saturating_sub(u32::from(prefix.min(32)));
        for b in 0..span {
            let block = first.wrapping_add(b as u32);
            if let Some(w) = bits.get_mut((block >> 6) as usize) {
                *w |= 1 << (block & 63);
            }
        }
    }

    /// Whether `addr`'s block bit is set; `None` when `bits` is not a bitmap of
    /// `block_bits`-bit blocks (e.g. empty: none built).
    #[inline]
    pub(crate) fn test(bits: &[u64], block_bits: u32, addr: u32) -> Option<bool> {
        if bits.len() != words(block_bits) {
            return None;
        }
        let block = addr >> (32 - block_bits);
        bits.get((block >> 6) as usize)
            .map(|w| (w >> (block & 63)) & 1 == 1)
    }
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
        if let IpAddr::V4(v4) = addr {
            if !self.v4_may_match(v4) {
                return None;
            }
        }
        if let Some(port) = port {
            let label = match addr {
                IpAddr::V4(v4) => self.ipport.get_v4(v4.octets(), port),
                IpAddr::V6(v6) => self.ipport.get(&(v6.octets(), port)),
            };
            if let Some(label) = label {
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
                .map(|l| hit(IpMatchKind::Ip, l))
                .or_else(|| self.cidr4_lookup(v4).map(|l| hit(IpMatchKind::Cidr, l))),
            IpAddr::V6(v6) => self
                .v6
                .get(&v6.octets())
                .map(|&l| hit(IpMatchKind::Ip, l))
                .or_else(|| self.cidr6_lookup(v6).map(|l| hit(IpMatchKind::Cidr, l))),
        }
    }

    /// False when no IPv4 trail (address, IP:port or CIDR) can match `addr`: its block's bit
    /// is clear in the prefilter. True when it may, or without a current prefilter.
    #[inline]
    fn v4_may_match(&self, addr: Ipv4Addr) -> bool {
        let ix = &self.cidr_index;
        if ix.v4_count != self.v4.len()
            || ix.ipport_count != self.ipport.len()
            || ix.v4_len != self.cidr4.len()
        {
            return true;
        }
        v4_blocks::test(&ix.v4_blocks, V4_BLOCK_BITS, u32::from(addr)) != Some(false)
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
        let blocks = self.v4_block_bits();
        self.rebuild_cidr_index_with(blocks);
    }

    /// The IPv4 prefilter's bitmap (one bit per /`V4_BLOCK_BITS` block holding an IPv4
    /// trail of any kind): what a compiled set stores, so opening one reads no table.
    pub fn v4_block_bits(&self) -> Vec<u64> {
        let mut bits = vec![0u64; V4_BLOCK_WORDS];
        for (k, _) in self.v4.table().iter().chain(self.ipport.v4_table().iter()) {
            let addr = u32::from_be_bytes(iptable::key_addr(k));
            v4_blocks::mark(&mut bits, V4_BLOCK_BITS, addr, 32);
        }
        for &(net, p, _) in &self.cidr4 {
            v4_blocks::mark(&mut bits, V4_BLOCK_BITS, u32::from_be_bytes(net), p);
        }
        bits
    }

    /// [`IpTrails::rebuild_cidr_index`] with the prefilter bitmap given
    /// ([`IpTrails::v4_block_bits`] of these trails; a bitmap of another size leaves the
    /// prefilter off).
    pub(crate) fn rebuild_cidr_index_with(&mut self, v4_blocks: Vec<u64>) {
        let v4_blocks = if v4_blocks.len() == V4_BLOCK_WORDS {
            v4_blocks
        } else {
            Vec::new()
        };
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
            v4_blocks,
            v4_count: self.v4.len(),
            ipport_count: self.ipport.len(),
        };
    }

    /// The IPv4 prefilter's bitmap in use (empty: none).
    #[cfg(test)]
    pub(crate) fn v4_prefilter(&self) -> &[u64] {
        &self.cidr_index.v4_blocks
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
    fn prefilter_rules_out_unlisted_blocks_only() {
        let mut t = trails();
        // Without the /0, the prefilter has clear bits.
        t.cidr4.retain(|c| c.1 != 0);
        t.rebuild_cidr_index();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(t.cidr_index.v4_blocks.iter().any(|w| *w != u64::MAX));
        assert_eq!(t.lookup(ip("66.66.66.66"), None).map(|m| m.label), Some(1));
        assert_eq!(
            t.lookup(ip("6.6.6.6"), Some(8443)).map(|m| m.label),
            Some(3)
        );
        assert_eq!(t.lookup(ip("6.6.6.6"), None), None);
        assert_eq!(t.lookup(ip("10.200.3.4"), None).map(|m| m.label), Some(10));
        assert_eq!(t.lookup(ip("10.1.2.3"), None).map(|m| m.label), Some(24));
        assert_eq!(
            t.lookup(ip("::ffff:10.1.2.3"), None).map(|m| m.label),
            Some(24)
        );
        assert_eq!(t.lookup(ip("66.66.67.66"), None), None);
        assert!(!t.v4_may_match(Ipv4Addr::new(198, 18, 0, 1)));
        // Tables changed after the rebuild: the prefilter steps aside.
        t.v4.insert([198, 18, 0, 1], 7);
        assert_eq!(t.lookup(ip("198.18.0.1"), None).map(|m| m.label), Some(7));
        t.ipport.insert(
            (Ipv4Addr::new(198, 19, 0, 1).to_ipv6_mapped().octets(), 53),
            8,
        );
        assert_eq!(
            t.lookup(ip("198.19.0.1"), Some(53)).map(|m| m.label),
            Some(8)
        );
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
