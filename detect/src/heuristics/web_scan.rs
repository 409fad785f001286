//! Web scan: more than the threshold (Maltrail: 10) distinct first path segments requested by
//! one source from one destination within the scan window (content discovery tools walking a
//! word list). One alert per (source, destination) per window.

use std::net::IpAddr;

use hashbrown::DefaultHashBuilder;

use super::scan::ScanTable;

/// Info of the event.
pub const INFO: &str = "potential web scanning";

/// The per-(source, destination) windows, kept as the port scans' are: an IPv4 pair's first
/// request in a first-sighting slot, its window line from its second first segment on (a
/// pair's first request touches two or three cache lines, the window set's bookkeeping and a
/// 48-byte first-sighting set, not a window set's five).
#[derive(Debug)]
pub struct WebScan {
    windows: ScanTable<(IpAddr, IpAddr)>,
    hasher: DefaultHashBuilder,
}

impl WebScan {
    /// At most `max_keys` (source, destination) pairs with windows, and as many IPv4 pairs
    /// seen with one first segment (see [`super::HeuristicsConfig::max_scan_keys`]).
    pub fn new(max_keys: usize) -> Self {
        WebScan {
            windows: ScanTable::new(max_keys),
            hasher: DefaultHashBuilder::default(),
        }
    }

    /// Pairs tracked.
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    /// Windows and first sightings dropped to make room so far.
    pub fn evicted(&self) -> u64 {
        self.windows.evicted()
    }

    /// Whether no pair is tracked.
    pub fn is_empty(&self) -> bool {
        self.windows.len() == 0
    }

    /// Starts fetching what [`WebScan::observe`] of the pair reads first: its window set's
    /// bookkeeping and its first-sighting set (an IPv4 pair), else its window.
    pub fn prefetch(&self, src: IpAddr, dst: IpAddr) {
        self.windows.prefetch(&(src, dst));
    }

    /// Counts a request for `path` (without query); true when the pair passes the threshold.
    pub fn observe(
        &mut self,
        src: IpAddr,
        dst: IpAddr,
        path: &[u8],
        ts_us: i64,
        window_us: i64,
        threshold: usize,
    ) -> bool {
        let item = super::bounded::hash_bytes(&self.hasher, first_segment(path));
        self.windows
            .count_distinct((src, dst), item, ts_us, window_us, threshold)
    }
}

/// `/a/b` → `a`; `/a` → `a`; `/` → ``.
pub fn first_segment(path: &[u8]) -> &[u8] {
    let p = path.strip_prefix(b"/").unwrap_or(path);
    let end = memchr::memchr(b'/', p).unwrap_or(p.len());
    p.get(..end).unwrap_or(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold() {
        let (a, b) = (
            "203.0.113.9".parse().unwrap(),
            "198.51.100.7".parse().unwrap(),
        );
        let mut w = WebScan::new(64);
        for i in 0..10 {
            let p = format!("/scan{i}/x");
            assert!(!w.observe(a, b, p.as_bytes(), 0, 30_000_000, 10));
            // Same first segment again: not a new one.
            let p = format!("/scan{i}/y");
            assert!(!w.observe(a, b, p.as_bytes(), 0, 30_000_000, 10));
        }
        assert!(w.observe(a, b, b"/scan10/x", 0, 30_000_000, 10));
        assert_eq!(first_segment(b"/a/b"), b"a");
        assert_eq!(first_segment(b"/"), b"");
    }
}
