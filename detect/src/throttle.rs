//! Collapses repeated events: the same (source, destination, destination port, protocol,
//! type, trail) within one time window (default: the same second, as Maltrail's log
//! throttling) is passed once.
//!
//! A separate stage after [`crate::process::Processor`], so live capture and replay share it.
//! Memory is bounded: at most [`ThrottleConfig::capacity`] keys are remembered; when full, the
//! oldest is forgotten (and counted). Keys of past windows are dropped when the window moves.
//! Time comes from the events, so replayed pcaps are throttled by their own clock.

use std::collections::VecDeque;
use std::net::IpAddr;

use hashbrown::HashSet;

use crate::event::{Event, EventType};

/// Settings of a [`Throttle`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Window length in microseconds; windows are aligned to multiples of it.
    pub window_us: i64,
    /// Keys remembered at most.
    pub capacity: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            window_us: 1_000_000,
            capacity: 65_536,
        }
    }
}

/// Counters of a [`Throttle`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThrottleStats {
    /// Events passed on.
    pub passed: u64,
    /// Events collapsed into an earlier one.
    pub suppressed: u64,
    /// Keys forgotten early because the table was full.
    pub evicted: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    src: IpAddr,
    dst: IpAddr,
    dst_port: u16,
    proto: String,
    kind: EventType,
    trail: String,
}

impl Key {
    fn of(e: &Event) -> Key {
        Key {
            src: e.src_ip,
            dst: e.dst_ip,
            dst_port: e.dst_port,
            proto: e.proto.clone(),
            kind: e.kind,
            trail: e.trail.clone(),
        }
    }
}

/// The throttle stage.
#[derive(Debug)]
pub struct Throttle {
    config: ThrottleConfig,
    window: Option<i64>,
    seen: HashSet<Key>,
    order: VecDeque<Key>,
    stats: ThrottleStats,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new(ThrottleConfig::default())
    }
}

impl Throttle {
    /// A throttle with the given settings (a zero window or capacity is raised to 1).
    pub fn new(config: ThrottleConfig) -> Self {
        Throttle {
            config: ThrottleConfig {
                window_us: config.window_us.max(1),
                capacity: config.capacity.max(1),
            },
            window: None,
            seen: HashSet::new(),
            order: VecDeque::new(),
            stats: ThrottleStats::default(),
        }
    }

    /// Whether `event` should be passed on (and remembers it if so).
    pub fn admit(&mut self, event: &Event) -> bool {
        let window = event.ts_us.div_euclid(self.config.window_us);
        if self.window != Some(window) {
            self.window = Some(window);
            self.seen.clear();
            self.order.clear();
        }
        let key = Key::of(event);
        if self.seen.contains(&key) {
            self.stats.suppressed += 1;
            return false;
        }
        if self.seen.len() >= self.config.capacity {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
                self.stats.evicted += 1;
            }
        }
        self.order.push_back(key.clone());
        self.seen.insert(key);
        self.stats.passed += 1;
        true
    }

    /// Passes `event` to `out` unless it repeats one already passed in this window.
    pub fn filter(&mut self, event: Event, out: &mut impl FnMut(Event)) {
        if self.admit(&event) {
            out(event);
        }
    }

    /// Keys currently remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// The counters so far.
    pub fn stats(&self) -> ThrottleStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Action, Details, Severity};

    fn ev(ts_us: i64, src_port: u16, trail: &str) -> Event {
        Event {
            ts_us,
            sensor: "t".into(),
            src_ip: "10.0.0.1".parse().unwrap(),
            src_port,
            dst_ip: "8.8.8.8".parse().unwrap(),
            dst_port: 53,
            proto: "UDP".into(),
            kind: EventType::Dns,
            trail: trail.into(),
            info: "malware".into(),
            reference: "(static)".into(),
            severity: Severity::High,
            action: Action::Pass,
            iface: None,
            details: Details::default(),
        }
    }

    #[test]
    fn repeats_in_one_second_collapse_across_source_ports() {
        let mut t = Throttle::default();
        assert!(t.admit(&ev(5_000_000, 1, "a.example")));
        assert!(!t.admit(&ev(5_100_000, 2, "a.example")));
        assert!(t.admit(&ev(5_200_000, 2, "b.example")));
        assert!(t.admit(&ev(6_000_000, 3, "a.example")));
        assert_eq!(
            t.stats(),
            ThrottleStats {
                passed: 3,
                suppressed: 1,
                evicted: 0
            }
        );
    }

    #[test]
    fn flooding_stays_bounded() {
        let mut t = Throttle::new(ThrottleConfig {
            window_us: 1_000_000,
            capacity: 100,
        });
        for i in 0..10_000 {
            assert!(t.admit(&ev(1_000_000, 1, &format!("d{i}.example"))));
            assert!(t.len() <= 100);
        }
        assert_eq!(t.stats().evicted, 9_900);
        // The newest keys are still remembered, the oldest are not.
        assert!(!t.admit(&ev(1_000_000, 1, "d9999.example")));
        assert!(t.admit(&ev(1_000_000, 1, "d0.example")));
    }
}
