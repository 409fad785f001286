//! The stock publisher against a real collector process (`xtrail-collector` binary):
//! - two sensors configured with one name (one per-sensor credential, separate state and
//!   spool directories, identical events, publishing at once) have every event stored;
//! - a collector with a small batch limit (`--max-batch-events 7`, then 1) gets every event:
//!   the publisher asks `GetLimits` and splits its batches; fields over the limits are cut
//!   before spooling and counted;
//! - a refused credential (wrong token, or a per-sensor token used for another name) ends
//!   `flush` at once with `PublishError::Refused`, counted in `Stats`;
//! - a full spool with the collector down: stored real events + the counts of the stored
//!   `SPOOL_DROP` reports = events published, exactly, and = `Stats::dropped` + stored.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{add_sensor, event, free_addr, stored, Collector, SENSOR_TOKEN};
use xtrail_proto::v1;
use xtrail_publish::{drop_report_count, identity, PublishError, Publisher, PublisherConfig};

/// The sensor's configuration: identity from the state directory, a spool beside it.
fn sensor_config(url: &str, token: &str, name: &str, state: &Path) -> PublisherConfig {
    let id = identity::load_or_create(state).unwrap();
    let mut c = PublisherConfig::new(
        url,
        token,
        format!("{id}-run"),
        state.join(format!("spool-run-{name}")),
    );
    c.stream_suffix = true;
    c.sensor_name = name.into();
    c.backoff_max = Duration::from_millis(300);
    c
}

fn real(events: &[v1::Event]) -> usize {
    events
        .iter()
        .filter(|e| e.r#type != xtrail_proto::SPOOL_DROP_TYPE)
        .count()
}

#[test]
fn two_sensors_with_one_name_have_every_event_stored() {
    let data = tempfile::tempdir().unwrap();
    let token = add_sensor(data.path(), "gw-twin");
    let collector = Collector::start(data.path(), "127.0.0.1:0", &[]);
    let n = 10_000u32;
    let publishers: Vec<_> = (0..2)
        .map(|_| {
            let state = tempfile::tempdir().unwrap();
            let p = Publisher::start(sensor_config(
                &collector.url(),
                &token,
                "gw-twin",
                state.path(),
            ))
            .unwrap();
            (Arc::new(p), state)
        })
        .collect();
    assert_ne!(publishers[0].0.stream_id(), publishers[1].0.stream_id());
    // Identical events from both, at once: only the identity tells them apart.
    let threads: Vec<_> = publishers
        .iter()
        .map(|(p, _)| {
            let p = Arc::clone(p);
            std::thread::spawn(move || {
                for i in 0..n {
                    p.publish(&event("gw-twin", i)).unwrap();
                }
                p.flush(Duration::from_secs(120)).unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for (p, _) in &publishers {
        let s = p.stats();
        assert_eq!((s.acked, s.pending), (u64::from(n), 0), "{s:?}");
    }
    let all = stored(&collector.url(), 2 * n as usize + 1, Duration::from_secs(3));
    assert_eq!(all.len(), 2 * n as usize);
    for (p, _) in &publishers {
        // A per-sensor credential's events are keyed `<name>/<stream id>`.
        let key = format!("gw-twin/{}", p.stream_id());
        let mine: Vec<_> = all.iter().filter(|e| e.sensor_id == key).collect();
        assert_eq!(mine.len(), n as usize);
        assert!(mine.iter().all(|e| e.sensor == "gw-twin"));
        let mut seqs: Vec<u64> = mine.iter().map(|e| e.seq).collect();
        seqs.dedup();
        assert_eq!(seqs.len(), n as usize);
    }
}

#[test]
fn the_collectors_batch_limit_is_followed_and_fields_are_cut() {
    for limit in ["7", "1"] {
        let data = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let collector =
            Collector::start(data.path(), "127.0.0.1:0", &["--max-batch-events", limit]);
        let p = Publisher::start(sensor_config(
            &collector.url(),
            SENSOR_TOKEN,
            "gw-l",
            state.path(),
        ))
        .unwrap();
        let n = 300;
        for i in 0..n {
            p.publish(&event("gw-l", i)).unwrap();
        }
        let mut long = event("gw-l", n);
        long.trail = "t".repeat(10_000);
        long.info = "é".repeat(1000);
        p.publish(&long).unwrap();
        p.flush(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("limit {limit}: {e}; {:?}", p.stats()));
        let s = p.stats();
        assert_eq!(s.truncated, 1, "{s:?}");
        assert_eq!(s.acked, u64::from(n) + 1);
        let all = stored(&collector.url(), n as usize + 2, Duration::from_secs(2));
        assert_eq!(all.len(), n as usize + 1, "limit {limit}");
        let last = all.last().unwrap();
        assert_eq!(
            last.trail.len(),
            xtrail_proto::limits::MAX_TRAIL_BYTES as usize
        );
        assert!(last.info.len() <= xtrail_proto::limits::MAX_INFO_BYTES as usize);
    }
}

#[test]
fn a_refused_credential_ends_flush_at_once() {
    let data = tempfile::tempdir().unwrap();
    let gw_a = add_sensor(data.path(), "gw-a");
    let collector = Collector::start(data.path(), "127.0.0.1:0", &[]);
    // A token the collector does not know; gw-a's token publishing as gw-b.
    for (token, name) in [("wrong", "gw-a"), (gw_a.as_str(), "gw-b")] {
        let state = tempfile::tempdir().unwrap();
        let p =
            Publisher::start(sensor_config(&collector.url(), token, name, state.path())).unwrap();
        p.publish(&event(name, 1)).unwrap();
        let started = Instant::now();
        let err = p.flush(Duration::from_secs(60)).unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        let PublishError::Refused(why) = &err else {
            panic!("{name}: {err}");
        };
        assert!(
            why.contains("Unauthenticated") || why.contains("PermissionDenied"),
            "{why}"
        );
        let s = p.stats();
        assert!(s.auth_refused >= 1, "{s:?}");
        assert_eq!(s.last_refusal.as_deref(), Some(why.as_str()));
        assert_eq!(s.pending, 1, "the event stays spooled");
    }
    assert!(stored(&collector.url(), 1, Duration::from_secs(1)).is_empty());
}

#[test]
fn a_full_spool_accounts_for_every_lost_event() {
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let mut cfg = sensor_config(
        &format!("http://{addr}"),
        SENSOR_TOKEN,
        "gw-f",
        state.path(),
    );
    cfg.spool_max_bytes = 64 * 1024;
    let p = Publisher::start(cfg).unwrap();
    let n = 20_000u32;
    for i in 0..n {
        p.publish(&event("gw-f", i)).unwrap();
    }
    let before = p.stats();
    assert!(
        before.dropped > 0 && before.spool_bytes <= 64 * 1024,
        "{before:?}"
    );
    // Enough loss that reports themselves were dropped (their counts carried on).
    assert!(
        before.spooled - u64::from(n) > 1,
        "{before:?}: needs more than one drop report"
    );

    let collector = Collector::start(data.path(), &addr, &[]);
    p.flush(Duration::from_secs(60)).unwrap();
    let all = stored(&collector.url(), n as usize + 1, Duration::from_secs(2));
    let reported: u64 = all
        .iter()
        .filter(|e| e.r#type == xtrail_proto::SPOOL_DROP_TYPE)
        .map(drop_report_count)
        .sum();
    assert_eq!(real(&all) as u64 + reported, u64::from(n));
    assert_eq!(reported, p.stats().dropped);
    assert_eq!(
        all.iter()
            .rfind(|e| e.r#type != xtrail_proto::SPOOL_DROP_TYPE)
            .unwrap()
            .trail,
        format!("trail-{}", n - 1),
        "the newest are kept"
    );
}
