//! The collector's suppression list, applied to the events of a live run.
//!
//! Analysts mark a threat "false positive" in the collector's console and may suppress its
//! trail (every event with that `trail`) or its source (every event from that `src_ip`).
//! The collector answers the sensor's heartbeats with the list whenever it changed
//! (`HeartbeatResponse.suppressions`, see `xtrail_publish::Publisher::suppressions`); the
//! live loop installs each new version here and drops matching events before they are
//! logged or published, counting them per kind (`--metrics`, the stats lines). The
//! publisher keeps the last list in its spool directory, so a restarted sensor applies it
//! before its first heartbeat.

use std::collections::HashSet;
use std::net::IpAddr;

use xtrail_detect::event::Event;
use xtrail_proto::v1;

/// The installed list and what it suppressed.
#[derive(Debug, Default)]
pub struct Suppressions {
    version: String,
    trails: HashSet<String>,
    sources: HashSet<IpAddr>,
    /// Events dropped for a suppressed trail.
    pub by_trail: u64,
    /// Events dropped for a suppressed source (and not for their trail).
    pub by_source: u64,
}

impl Suppressions {
    /// Installs `list` when its version is new; returns whether it did. Entries of an
    /// unknown kind, and source entries that are not addresses, are ignored.
    pub fn install(&mut self, list: &v1::SuppressionList) -> bool {
        if list.version == self.version {
            return false;
        }
        self.trails.clear();
        self.sources.clear();
        for e in &list.entries {
            match v1::SuppressionKind::try_from(e.kind) {
                Ok(v1::SuppressionKind::Trail) => {
                    self.trails.insert(e.value.clone());
                }
                Ok(v1::SuppressionKind::Source) => {
                    if let Ok(ip) = e.value.parse() {
                        self.sources.insert(ip);
                    }
                }
                _ => {}
            }
        }
        self.version.clone_from(&list.version);
        true
    }

    /// The installed version (empty before the first list).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Entries installed: (trails, sources).
    pub fn len(&self) -> (usize, usize) {
        (self.trails.len(), self.sources.len())
    }

    /// Whether nothing is suppressed.
    pub fn is_empty(&self) -> bool {
        self.trails.is_empty() && self.sources.is_empty()
    }

    /// Whether `ev` is suppressed; counts it when it is.
    pub fn suppresses(&mut self, ev: &Event) -> bool {
        if self.is_empty() {
            return false;
        }
        if self.trails.contains(&ev.trail) {
            self.by_trail += 1;
            true
        } else if self.sources.contains(&ev.src_ip) {
            self.by_source += 1;
            true
        } else {
            false
        }
    }

    /// Events suppressed in all.
    pub fn total(&self) -> u64 {
        self.by_trail + self.by_source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(trail: &str, src: &str) -> Event {
        Event {
            ts_us: 0,
            sensor: "s".into(),
            src_ip: src.parse().unwrap(),
            src_port: 1,
            dst_ip: "198.18.1.1".parse().unwrap(),
            dst_port: 80,
            proto: "TCP".into(),
            kind: xtrail_detect::event::EventType::Ip,
            trail: trail.into(),
            info: String::new(),
            reference: String::new(),
            severity: xtrail_detect::event::Severity::High,
            action: xtrail_detect::event::Action::Pass,
            iface: None,
            trail_set_version: String::new(),
            details: Default::default(),
        }
    }

    fn list(version: &str, entries: &[(v1::SuppressionKind, &str)]) -> v1::SuppressionList {
        v1::SuppressionList {
            version: version.into(),
            entries: entries
                .iter()
                .map(|(k, v)| v1::Suppression {
                    kind: *k as i32,
                    value: (*v).into(),
                })
                .collect(),
        }
    }

    #[test]
    fn drops_suppressed_trails_and_sources_and_counts_them() {
        let mut s = Suppressions::default();
        assert!(!s.suppresses(&event("bad.example", "198.18.0.1")));
        let l = list(
            "v1",
            &[
                (v1::SuppressionKind::Trail, "bad.example"),
                (v1::SuppressionKind::Source, "198.18.0.9"),
                (v1::SuppressionKind::Source, "not an address"),
                (v1::SuppressionKind::Unspecified, "x"),
            ],
        );
        assert!(s.install(&l));
        assert!(!s.install(&l), "same version: nothing to do");
        assert_eq!(s.len(), (1, 1));
        assert!(s.suppresses(&event("bad.example", "198.18.0.1")));
        assert!(s.suppresses(&event("other.example", "198.18.0.9")));
        assert!(!s.suppresses(&event("other.example", "198.18.0.1")));
        assert_eq!((s.by_trail, s.by_source, s.total()), (1, 1, 2));
        // A shorter list lets events flow again; the counts stay.
        assert!(s.install(&list("v2", &[(v1::SuppressionKind::Source, "198.18.0.9")])));
        assert!(!s.suppresses(&event("bad.example", "198.18.0.1")));
        assert_eq!(s.version(), "v2");
        assert_eq!(s.total(), 2);
    }
}
