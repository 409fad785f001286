//! Feed status as text (`xtrail-trails status`) and as Prometheus text exposition.

use std::fmt::Write as _;
use std::path::Path;

use crate::fetch::FeedStatus;

/// Every feed status stored in a cache folder, by name.
pub fn all(cache: &Path) -> Vec<FeedStatus> {
    let mut out: Vec<FeedStatus> = std::fs::read_dir(cache.join("feeds"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// One line per feed.
pub fn text(statuses: &[FeedStatus]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<24} {:<13} {:>8}  {:<20} last error",
        "feed", "state", "rows", "last success"
    );
    for st in statuses {
        let when = if st.last_success == 0 {
            "never".to_owned()
        } else {
            time::OffsetDateTime::from_unix_timestamp(st.last_success as i64)
                .map(|t| {
                    format!(
                        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
                        t.year(),
                        u8::from(t.month()),
                        t.day(),
                        t.hour(),
                        t.minute(),
                        t.second()
                    )
                })
                .unwrap_or_default()
        };
        let _ = writeln!(
            s,
            "{:<24} {:<13} {:>8}  {:<20} {}{}",
            st.name,
            st.state,
            st.rows,
            when,
            st.last_error,
            if st.using_cache {
                " (using cached copy)"
            } else {
                ""
            }
        );
    }
    s
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text format.
pub fn prometheus(statuses: &[FeedStatus]) -> String {
    let mut s = String::new();
    let metric =
        |s: &mut String, name: &str, help: &str, kind: &str, f: &dyn Fn(&FeedStatus) -> String| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for st in statuses {
                let _ = writeln!(s, "{name}{{feed=\"{}\"}} {}", escape(&st.name), f(st));
            }
        };
    metric(
        &mut s,
        "xtrail_feed_up",
        "1 if the last fetch gave a usable answer (ok or not modified).",
        "gauge",
        &|st| u8::from(st.state == "ok" || st.state == "not_modified").to_string(),
    );
    metric(
        &mut s,
        "xtrail_feed_rows",
        "Trails in the body in use.",
        "gauge",
        &|st| st.rows.to_string(),
    );
    metric(
        &mut s,
        "xtrail_feed_using_cache",
        "1 if the rows come from an older cached copy.",
        "gauge",
        &|st| u8::from(st.using_cache).to_string(),
    );
    metric(
        &mut s,
        "xtrail_feed_last_success_timestamp_seconds",
        "Unix time of the last accepted answer.",
        "gauge",
        &|st| st.last_success.to_string(),
    );
    metric(
        &mut s,
        "xtrail_feed_last_attempt_timestamp_seconds",
        "Unix time of the last fetch.",
        "gauge",
        &|st| st.last_attempt.to_string(),
    );
    s
}
