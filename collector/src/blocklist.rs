//! `/api/blocklist`: the source addresses of stored events that pass a filter in the last N
//! minutes, as text for firewalls (fail2ban-style actions, ipset loaders), with `cleared`
//! marks for the sources of the previous N minutes that stopped.
//!
//! ```text
//! # xtrail blocklist minutes=60 since=2026-08-07T08:14:22.117034Z sources=2
//! 198.18.0.7
//! 2001:db8::9
//! # cleared 198.18.0.12
//! ```
//!
//! - Every line that is not a comment is one address (IPv4 or IPv6, no prefix), sorted
//!   (IPv4 first), each once: the sources of matching events with time at or after
//!   `now - N minutes` (later times, a sensor clock ahead, count too).
//! - `# cleared ADDR`: a source with a matching event in `[now - 2N, now - N)` and none
//!   since: it was on the list a window ago and is no longer (a consumer that polls
//!   every few minutes sees it for up to N minutes; removing an absent entry is harmless).
//! - At most [`MAX_SOURCES`]: the most recently stored ones are kept, a line
//!   `# truncated: more than MAX sources; cleared marks left out` follows, and no `cleared`
//!   line is given (the full list is unknown, so no source can be called cleared).
//!
//! Reads the store page by page, newest first ([`Storage::query`], filter pushed down);
//! events retention removed are not seen.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;

use xtrail_detect::event::format_rfc3339;

use crate::filter::EventFilter;
use crate::storage::{Order, QuerySpec, Storage, StorageError};

/// Window when none is asked for.
pub const DEFAULT_MINUTES: u32 = 60;
/// Longest window: 7 days.
pub const MAX_MINUTES: u32 = 10_080;
/// Most addresses listed.
pub const MAX_SOURCES: usize = 100_000;
const PAGE: usize = 10_000;

/// The list, before rendering.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Blocklist {
    /// Sources of the current window.
    pub sources: BTreeSet<IpAddr>,
    /// Sources of the previous window only.
    pub cleared: BTreeSet<IpAddr>,
    /// Whether `sources` was cut at the limit (then `cleared` is empty).
    pub truncated: bool,
}

/// Builds the list of the window `[now_us - minutes, ...)` and the cleared sources of
/// `[now_us - 2 * minutes, now_us - minutes)`, listing at most `max` sources.
pub fn build(
    storage: &dyn Storage,
    filter: &EventFilter,
    minutes: u32,
    now_us: i64,
    max: usize,
) -> Result<Blocklist, StorageError> {
    let window = i64::from(minutes) * 60_000_000;
    let since = now_us - window;
    let mut out = Blocklist::default();
    let mut previous = BTreeSet::new();
    let mut after = None;
    'pages: loop {
        let page = storage.query(&QuerySpec {
            filter: filter.clone(),
            from_ts_us: Some(now_us - 2 * window),
            to_ts_us: None,
            after_cursor: after,
            limit: PAGE,
            order: Order::NewestFirst,
        })?;
        for e in &page.events {
            let Ok(ip) = e.src_ip.parse::<IpAddr>() else {
                continue;
            };
            if e.ts_us >= since {
                if !out.sources.contains(&ip) {
                    if out.sources.len() >= max {
                        out.truncated = true;
                        break 'pages;
                    }
                    out.sources.insert(ip);
                }
            } else if previous.len() < max {
                previous.insert(ip);
            }
        }
        match (page.more, page.events.last()) {
            (true, Some(last)) => after = Some(last.cursor),
            _ => break,
        }
    }
    if !out.truncated {
        out.cleared = previous.difference(&out.sources).copied().collect();
    }
    Ok(out)
}

impl Blocklist {
    /// The text answer (see the module doc).
    pub fn render(&self, minutes: u32, now_us: i64, max: usize) -> String {
        let mut s = String::with_capacity(self.sources.len() * 16 + 128);
        let _ = writeln!(
            s,
            "# xtrail blocklist minutes={minutes} since={} sources={}",
            format_rfc3339(now_us - i64::from(minutes) * 60_000_000),
            self.sources.len()
        );
        for ip in &self.sources {
            let _ = writeln!(s, "{ip}");
        }
        for ip in &self.cleared {
            let _ = writeln!(s, "# cleared {ip}");
        }
        if self.truncated {
            let _ = writeln!(
                s,
                "# truncated: more than {max} sources; cleared marks left out"
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use xtrail_proto::v1;

    use super::*;
    use crate::filter::parse_filter_args;
    use crate::storage::sqlite::SqliteStorage;

    const NOW: i64 = 1_786_094_062_000_000;
    const MIN: i64 = 60_000_000;

    fn ev(seq: u64, src: &str, minutes_ago: i64, ty: &str, sev: v1::Severity) -> v1::Event {
        v1::Event {
            seq,
            ts_us: NOW - minutes_ago * MIN,
            sensor: "gw".into(),
            src_ip: src.into(),
            dst_ip: "198.19.0.1".into(),
            r#type: ty.into(),
            trail: format!("t{seq}"),
            severity: sev as i32,
            ..Default::default()
        }
    }

    fn filter(terms: &[&str]) -> EventFilter {
        let terms: Vec<String> = terms.iter().map(|t| (*t).to_string()).collect();
        EventFilter::compile(Some(&parse_filter_args(&terms).unwrap())).unwrap()
    }

    #[test]
    fn windows_filters_cleared_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let st = SqliteStorage::open(dir.path()).unwrap();
        use v1::Severity::{High, Low};
        st.insert_batch(
            "gw",
            vec![
                ev(1, "198.18.0.1", 5, "DNS", High),   // now
                ev(2, "198.18.0.1", 90, "DNS", High),  // and before
                ev(3, "198.18.0.2", 90, "DNS", High),  // before only: cleared
                ev(4, "2001:db8::9", 1, "HTTP", High), // now, HTTP
                ev(5, "198.18.0.3", 30, "DNS", Low),   // now, low
                ev(6, "198.18.0.4", 500, "DNS", High), // too old for both windows
                ev(7, "198.18.0.5", -3, "DNS", High),  // ahead of the clock: now
                ev(8, "198.18.0.6", 61, "IP", Low),    // before only, low, IP
            ],
        )
        .unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let b = build(&st, &filter(&[]), 60, NOW, MAX_SOURCES).unwrap();
        assert_eq!(
            b.sources,
            ["198.18.0.1", "198.18.0.3", "198.18.0.5", "2001:db8::9"]
                .map(ip)
                .into()
        );
        assert_eq!(b.cleared, ["198.18.0.2", "198.18.0.6"].map(ip).into());
        assert!(!b.truncated);
        let text = b.render(60, NOW, MAX_SOURCES);
        assert_eq!(
            text,
            "# xtrail blocklist minutes=60 since=2026-08-07T08:14:22.000000Z sources=4\n\
             198.18.0.1\n198.18.0.3\n198.18.0.5\n2001:db8::9\n\
             # cleared 198.18.0.2\n# cleared 198.18.0.6\n"
        );
        // Filters: high DNS only.
        let b = build(
            &st,
            &filter(&["min_severity=high", "type=DNS"]),
            60,
            NOW,
            100,
        )
        .unwrap();
        assert_eq!(b.sources, ["198.18.0.1", "198.18.0.5"].map(ip).into());
        assert_eq!(b.cleared, [ip("198.18.0.2")].into());
        // A longer window takes in the older events.
        let b = build(&st, &filter(&[]), 600, NOW, 100).unwrap();
        assert_eq!(b.sources.len(), 7);
        assert!(b.cleared.is_empty());
        // Cut at 2: the most recently stored sources, no cleared marks.
        let b = build(&st, &filter(&[]), 60, NOW, 2).unwrap();
        assert!(b.truncated);
        assert_eq!(b.sources, ["198.18.0.3", "198.18.0.5"].map(ip).into());
        assert!(b.cleared.is_empty());
        assert!(b
            .render(60, NOW, 2)
            .ends_with("# truncated: more than 2 sources; cleared marks left out\n"));
    }
}
