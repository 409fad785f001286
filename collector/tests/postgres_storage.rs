//! `PgStorage` against a real, private PostgreSQL server (see `common::pg`): the storage
//! contract as `storage::sqlite`'s unit tests check it (exactly once, conflicts, cursor
//! order, filters, page bytes, retention), filters compared with SQLite and with the live
//! matcher on the same events (non-ASCII included), day partitions, and two stores on one
//! database writing concurrently while a reader checks that it only ever sees a prefix of
//! the cursor sequence.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::pg::PgServer;
use xtrail_collector::filter::{parse_filter_args, EventFilter};
use xtrail_collector::storage::postgres::PgStorage;
use xtrail_collector::storage::sqlite::SqliteStorage;
use xtrail_collector::storage::{Order, QuerySpec, Storage, StorageError, PAGE_MAX_BYTES};
use xtrail_proto::v1;

const DAY_US: i64 = 86_400_000_000;
/// 2026-08-07T00:00:00Z.
const T0: i64 = 1_786_060_800_000_000;

fn ev(seq: u64, ts: i64, src: &str) -> v1::Event {
    v1::Event {
        seq,
        ts_us: ts,
        sensor: "gw".into(),
        src_ip: src.into(),
        dst_ip: "198.18.1.1".into(),
        r#type: "IP".into(),
        trail: format!("t{seq}"),
        info: "x (malware)".into(),
        severity: 3,
        ..Default::default()
    }
}

fn all(s: &dyn Storage) -> Vec<v1::Event> {
    s.read_after(0, None, &EventFilter::default(), 1_000_000)
        .unwrap()
        .events
}

fn filter(args: &[&str]) -> EventFilter {
    let args: Vec<String> = args.iter().map(|s| (*s).to_string()).collect();
    EventFilter::compile(Some(&parse_filter_args(&args).unwrap())).unwrap()
}

#[test]
fn exactly_once_conflict_and_cursor_order() {
    let Some(pg) = PgServer::start("once") else {
        return;
    };
    let s = PgStorage::open(&pg.create_db("once")).unwrap();
    let c = s
        .insert_batch("a", (1..=10).map(|i| ev(i, T0, "198.18.0.1")).collect())
        .unwrap();
    assert_eq!((c.stored.len(), c.duplicates, c.committed_seq), (10, 0, 10));
    assert!(c.stored.iter().all(|e| e.sensor_id == "a" && e.cursor > 0));
    let c = s
        .insert_batch("a", (5..=12).map(|i| ev(i, T0, "198.18.0.1")).collect())
        .unwrap();
    assert_eq!((c.stored.len(), c.duplicates), (2, 6));
    let c = s
        .insert_batch("b", (1..=3).map(|i| ev(i, T0, "198.18.0.1")).collect())
        .unwrap();
    assert_eq!(c.stored.len(), 3);
    let stored = all(&s);
    assert_eq!(stored.len(), 15);
    assert!(stored.windows(2).all(|w| w[1].cursor > w[0].cursor));
    assert_eq!(s.stats().unwrap().last_cursor, stored[14].cursor);
    assert_eq!(s.get(stored[3].cursor).unwrap().unwrap(), stored[3]);
    assert!(s.get(999_999).unwrap().is_none());

    // The same seq with other content is a second publisher, refused whole.
    let mut other = ev(11, T0, "198.18.0.1");
    other.trail = "not what was stored".into();
    let before = s.stats().unwrap().last_cursor;
    assert!(matches!(
        s.insert_batch("a", vec![ev(13, T0, "198.18.0.1"), other]),
        Err(StorageError::Conflict { seq: 11, .. })
    ));
    assert_eq!(
        s.stats().unwrap().last_cursor,
        before,
        "nothing of it stored"
    );
    // Same seq twice in one batch with different content: refused too.
    let mut twin = ev(20, T0, "198.18.0.1");
    twin.info = "other".into();
    assert!(matches!(
        s.insert_batch("a", vec![ev(20, T0, "198.18.0.1"), twin]),
        Err(StorageError::Conflict { seq: 20, .. })
    ));
    // A huge seq moves nothing: later, lower seqs are stored.
    let c = s
        .insert_batch("a", vec![ev(i64::MAX as u64, T0, "198.18.0.1")])
        .unwrap();
    assert_eq!(c.stored.len(), 1);
    let c = s.insert_batch("a", vec![ev(13, T0, "198.18.0.1")]).unwrap();
    assert_eq!(c.stored.len(), 1);
    // Cursors are never reused: the conflicting batches consumed none that show up
    // again, and a reopened store continues above the last one.
    let last = s.stats().unwrap().last_cursor;
    drop(s);
    let s = PgStorage::open(&pg.url("once")).unwrap();
    let c = s.insert_batch("a", vec![ev(14, T0, "198.18.0.1")]).unwrap();
    assert!(c.stored[0].cursor > last);
    assert_eq!(all(&s).len(), 18);
    s.probe().unwrap();

    // Dedupe keys survive partitioning: the same (key, seq) on another day is still the
    // same key.
    let mut later = ev(14, T0 + 3 * DAY_US, "198.18.0.1");
    later.trail = "t14".into();
    assert!(matches!(
        s.insert_batch("a", vec![later]),
        Err(StorageError::Conflict { seq: 14, .. })
    ));
}

/// Events that exercise every filter field, non-ASCII trail and info included.
fn filter_corpus() -> Vec<v1::Event> {
    let texts = [
        ("İSTANBUL-c2.example", "ÄRGER (malware)"),
        ("istanbul-mirror.example", "ärger report"),
        ("ΣΊΣΥΦΟΣ.example", "Straße (suspicious)"),
        ("σίσυφος.example", "STRASSE"),
        ("plain.example", "asyncrat (malware)"),
        ("KELVIN-\u{212A}.example", "ǅemal"),
    ];
    let srcs = ["198.18.0.1", "10.9.9.9", "2001:db8::1", "198.19.255.255"];
    let types = ["IP", "DNS", "HTTP"];
    (0..48u64)
        .map(|i| {
            let (trail, info) = texts[i as usize % texts.len()];
            v1::Event {
                seq: i + 1,
                ts_us: T0 + i64::try_from(i).unwrap() * 1000,
                sensor: if i % 2 == 0 { "gw-a" } else { "gw-b" }.into(),
                src_ip: srcs[i as usize % srcs.len()].into(),
                dst_ip: if i % 3 == 0 {
                    "2001:db8::7"
                } else {
                    "198.18.9.9"
                }
                .into(),
                r#type: types[i as usize % types.len()].into(),
                trail: trail.into(),
                info: info.into(),
                severity: 1 + (i % 3) as i32,
                ..Default::default()
            }
        })
        .collect()
}

#[test]
fn filters_agree_with_sqlite_and_the_live_matcher() {
    let Some(pg) = PgServer::start("filters") else {
        return;
    };
    let p = PgStorage::open(&pg.create_db("filters")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let q = SqliteStorage::open(dir.path()).unwrap();
    let corpus = filter_corpus();
    p.insert_batch("a", corpus.clone()).unwrap();
    q.insert_batch("a", corpus.clone()).unwrap();
    let cases: &[&[&str]] = &[
        &[],
        &["src=198.18.0.0/15"],
        &["src=2001:db8::/32"],
        &["dst=2001:db8::7"],
        &["type=DNS,HTTP"],
        &["sensor=gw-a"],
        &["min_severity=high"],
        &["min_severity=medium", "src=198.18.0.0/15"],
        &["trail=istanbul"],
        &["trail=İSTANBUL"],
        &["trail=σίσυφος"],
        &["trail=ΣΊΣΥΦΟΣ"],
        &["trail=\u{212A}"],
        &["trail=k"],
        &["info=ärger"],
        &["info=ÄRGER"],
        &["info=straße"],
        &["info=strasse"],
        &["info=ǆ"],
        &["info=malware", "type=IP"],
    ];
    for case in cases {
        let f = filter(case);
        let live: Vec<u64> = corpus
            .iter()
            .filter(|e| f.matches(e))
            .map(|e| e.seq)
            .collect();
        let pg_seqs: Vec<u64> = p
            .read_after(0, None, &f, 1000)
            .unwrap()
            .events
            .iter()
            .map(|e| e.seq)
            .collect();
        let sq_seqs: Vec<u64> = q
            .read_after(0, None, &f, 1000)
            .unwrap()
            .events
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(pg_seqs, sq_seqs, "postgres vs sqlite for {case:?}");
        assert_eq!(pg_seqs, live, "postgres vs live for {case:?}");
    }
    // Non-ASCII cases really match something (the comparison above is not vacuous).
    assert_eq!(
        p.read_after(0, None, &filter(&["trail=İSTANBUL"]), 100)
            .unwrap()
            .events
            .len(),
        8
    );
    assert_eq!(
        p.read_after(0, None, &filter(&["info=ärger"]), 100)
            .unwrap()
            .events
            .len(),
        16
    );
    // Time bounds and paging both ways, as SQLite.
    for order in [Order::NewestFirst, Order::OldestFirst] {
        let pages = |st: &dyn Storage| {
            let mut after = None;
            let mut seqs = Vec::new();
            loop {
                let page = st
                    .query(&QuerySpec {
                        filter: filter(&["src=198.18.0.0/15"]),
                        from_ts_us: Some(T0 + 5000),
                        to_ts_us: Some(T0 + 40_000),
                        after_cursor: after,
                        limit: 3,
                        order,
                    })
                    .unwrap();
                seqs.push(page.events.iter().map(|e| e.seq).collect::<Vec<_>>());
                if !page.more {
                    return seqs;
                }
                after = page.events.last().map(|e| e.cursor);
            }
        };
        let got = pages(&p);
        assert!(got.len() > 2, "{got:?}");
        assert_eq!(got, pages(&q), "{order:?} pages");
    }
    // since_ts start.
    assert_eq!(
        p.read_after(0, Some(T0 + 20_000), &EventFilter::default(), 100)
            .unwrap()
            .events
            .len(),
        28
    );
}

#[test]
fn pages_bounded_in_bytes() {
    let Some(pg) = PgServer::start("pages") else {
        return;
    };
    let s = PgStorage::open(&pg.create_db("pages")).unwrap();
    let big = "x".repeat(60_000);
    let batch: Vec<v1::Event> = (1..=100)
        .map(|i| {
            let mut e = ev(i, T0, "198.18.0.1");
            e.info = big.clone();
            e
        })
        .collect();
    s.insert_batch("a", batch).unwrap();
    let page = s
        .read_after(0, None, &EventFilter::default(), 10_000)
        .unwrap();
    assert!(page.more, "cut by bytes");
    let bytes: usize = page.events.iter().map(|e| e.info.len()).sum();
    assert!(
        bytes <= PAGE_MAX_BYTES + 70_000 && page.events.len() < 100,
        "{} events, {bytes} bytes",
        page.events.len()
    );
    // The rest follows on the next page.
    let next = s
        .read_after(
            page.events.last().unwrap().cursor,
            None,
            &EventFilter::default(),
            10_000,
        )
        .unwrap();
    assert_eq!(page.events.len() + next.events.len(), 100);
    assert!(!next.more);
    // Cut by count.
    let p = s
        .query(&QuerySpec {
            filter: EventFilter::default(),
            from_ts_us: None,
            to_ts_us: None,
            after_cursor: None,
            limit: 7,
            order: Order::NewestFirst,
        })
        .unwrap();
    assert_eq!((p.events.len(), p.more), (7, true));
    assert_eq!(p.events[0].seq, 100);
}

fn partitions(pg: &PgServer, db: &str) -> Vec<String> {
    pg.client(db)
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'xtrail_events'::regclass ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
fn day_partitions_and_retention() {
    let Some(pg) = PgServer::start("retention") else {
        return;
    };
    let s = PgStorage::open(&pg.create_db("retention")).unwrap();
    // Five days, 400 events each, inserted in mixed order across days.
    for b in 0..4u64 {
        let batch: Vec<v1::Event> = (0..500u64)
            .map(|i| {
                let n = b * 500 + i;
                let day = i64::try_from(n % 5).unwrap();
                ev(n + 1, T0 + day * DAY_US + 1000, "198.18.0.1")
            })
            .collect();
        s.insert_batch("a", batch).unwrap();
    }
    assert_eq!(
        partitions(&pg, "retention"),
        [
            "xtrail_events_20260807",
            "xtrail_events_20260808",
            "xtrail_events_20260809",
            "xtrail_events_20260810",
            "xtrail_events_20260811"
        ]
    );
    assert_eq!(all(&s).len(), 2000);

    // Age: days 0 and 1 wholly older than the cutoff (dropped as partitions); within day 2
    // only the events before the cutoff go (none: they are all at +1000 µs).
    let cut = T0 + 2 * DAY_US + 500;
    assert_eq!(s.enforce_retention(Some(cut), None).unwrap(), 800);
    assert_eq!(partitions(&pg, "retention").len(), 3);
    let left = all(&s);
    assert_eq!(left.len(), 1200);
    assert!(left.iter().all(|e| e.ts_us >= cut));
    // The straddling day loses exactly its older rows.
    let cut2 = T0 + 2 * DAY_US + 2000;
    assert_eq!(s.enforce_retention(Some(cut2), None).unwrap(), 400);
    assert_eq!(all(&s).len(), 800);
    // The keys went with the events: a resend of a deleted event is stored again; a
    // resend of a kept one is still a duplicate.
    let c = s
        .insert_batch("a", vec![ev(1, T0 + 1000, "198.18.0.1")])
        .unwrap();
    assert_eq!(c.stored.len(), 1);
    let c = s
        .insert_batch("a", vec![ev(4, T0 + 3 * DAY_US + 1000, "198.18.0.1")])
        .unwrap();
    assert_eq!((c.stored.len(), c.duplicates), (0, 1));
    let keys: i64 = pg
        .client("retention")
        .query_one("SELECT count(*) FROM xtrail_keys", &[])
        .unwrap()
        .get(0);
    assert_eq!(keys, 801);

    // Bytes: oldest days go first; the newest is kept whatever its size.
    let before = s.stats().unwrap().used_bytes;
    assert!(before > 0);
    let deleted = s.enforce_retention(None, Some(1)).unwrap();
    assert_eq!(deleted, 401, "every day but the newest");
    assert_eq!(partitions(&pg, "retention"), ["xtrail_events_20260811"]);
    let left = all(&s);
    assert_eq!(left.len(), 400);
    assert!(left.iter().all(|e| e.ts_us >= T0 + 4 * DAY_US));
    assert!(s.stats().unwrap().used_bytes < before);
    // A dropped day comes back on demand (this store's partition cache is stale).
    let c = s
        .insert_batch("a", vec![ev(1, T0 + 1000, "198.18.0.1")])
        .unwrap();
    assert_eq!(c.stored.len(), 1);
    // Extreme timestamps get partitions too.
    s.insert_batch(
        "z",
        vec![ev(1, i64::MIN, "198.18.0.1"), ev(2, i64::MAX, "198.18.0.1")],
    )
    .unwrap();
    assert_eq!(all(&s).len(), 403);
    assert_eq!(s.enforce_retention(Some(T0), None).unwrap(), 1);
}

#[test]
fn two_stores_on_one_database_commit_in_cursor_order() {
    let Some(pg) = PgServer::start("shared") else {
        return;
    };
    let url = pg.create_db("shared");
    let a = Arc::new(PgStorage::open(&url).unwrap());
    let b = Arc::new(PgStorage::open(&url).unwrap());
    let reader = Arc::new(PgStorage::open(&url).unwrap());
    let done = Arc::new(AtomicBool::new(false));
    const BATCHES: u64 = 150;
    // The reader follows by cursor as a subscriber on a shared store does; it must never
    // see a cursor appear below one it already passed.
    let follow = {
        let (reader, done) = (Arc::clone(&reader), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut pos = 0u64;
            let mut seen = Vec::new();
            loop {
                let finished = done.load(Ordering::SeqCst);
                loop {
                    let page = reader
                        .read_after(pos, None, &EventFilter::default(), 1000)
                        .unwrap();
                    for e in &page.events {
                        pos = e.cursor;
                        seen.push((e.sensor_id.clone(), e.seq, e.cursor));
                    }
                    if !page.more {
                        break;
                    }
                }
                if finished {
                    return seen;
                }
            }
        })
    };
    // Both stores write the same keys (a sensor that failed over resends to the other
    // collector) and their own.
    let writers: Vec<_> = [(Arc::clone(&a), "own-a"), (Arc::clone(&b), "own-b")]
        .into_iter()
        .map(|(s, own)| {
            std::thread::spawn(move || {
                let mut stored = 0usize;
                for n in 0..BATCHES {
                    let shared: Vec<v1::Event> = (0..20)
                        .map(|i| ev(n * 20 + i + 1, T0 + i64::try_from(n).unwrap(), "198.18.0.1"))
                        .collect();
                    stored += s.insert_batch("shared", shared).unwrap().stored.len();
                    let mine: Vec<v1::Event> = (0..10)
                        .map(|i| ev(n * 10 + i + 1, T0, "198.18.0.2"))
                        .collect();
                    stored += s.insert_batch(own, mine).unwrap().stored.len();
                }
                stored
            })
        })
        .collect();
    let stored: usize = writers.into_iter().map(|w| w.join().unwrap()).sum();
    done.store(true, Ordering::SeqCst);
    let seen = follow.join().unwrap();
    let total = (BATCHES * 20 + 2 * BATCHES * 10) as usize;
    assert_eq!(stored, total, "each event stored by exactly one of the two");
    assert_eq!(seen.len(), total, "the follower saw every event once");
    let keys: BTreeSet<(String, u64)> = seen.iter().map(|(k, s, _)| (k.clone(), *s)).collect();
    assert_eq!(keys.len(), total);
    assert!(seen.windows(2).all(|w| w[1].2 > w[0].2), "cursor order");
    assert_eq!(all(reader.as_ref()).len(), total);
}

#[test]
fn group_commit_keeps_each_batch_apart() {
    let Some(pg) = PgServer::start("groups") else {
        return;
    };
    let s = PgStorage::open(&pg.create_db("groups")).unwrap();
    s.insert_batch("a", vec![ev(1, T0, "198.18.0.1")]).unwrap();
    let mut conflicting = ev(1, T0, "198.18.0.1");
    conflicting.trail = "other".into();
    let out = s.insert_batches(vec![
        (
            "b".into(),
            (1..=3).map(|i| ev(i, T0, "198.18.0.1")).collect(),
        ),
        ("a".into(), vec![ev(2, T0, "198.18.0.1"), conflicting]),
        (
            "a".into(),
            vec![ev(1, T0, "198.18.0.1"), ev(3, T0 + DAY_US, "198.18.0.1")],
        ),
        ("c".into(), vec![]),
        ("c".into(), vec![ev(7, T0, "198.18.0.1")]),
    ]);
    assert_eq!(out.len(), 5);
    assert!(matches!(out[1], Err(StorageError::Conflict { seq: 1, .. })));
    let ok: Vec<_> = out.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(
        ok.iter()
            .map(|c| (c.stored.len(), c.duplicates))
            .collect::<Vec<_>>(),
        [(3, 0), (1, 1), (0, 0), (1, 0)]
    );
    // Cursors increase in the order given; nothing of the refused batch is stored.
    let cursors: Vec<u64> = ok
        .iter()
        .flat_map(|c| c.stored.iter().map(|e| e.cursor))
        .collect();
    assert!(cursors.windows(2).all(|w| w[1] > w[0]), "{cursors:?}");
    let stored = all(&s);
    assert_eq!(stored.len(), 6);
    assert!(!stored.iter().any(|e| e.sensor_id == "a" && e.seq == 2));
}
