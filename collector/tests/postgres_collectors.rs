//! Collector processes on a shared PostgreSQL database (a private server, see
//! `common::pg`):
//! - one collector with `--database postgres://...` and the stock publisher: every event
//!   stored once, subscribers (live and replaying) see all, every field intact;
//! - two collectors on one database, three publishers (one to each, one through a proxy
//!   that fails over from the first collector to the second), the first collector SIGKILLed
//!   mid-stream and restarted: every event stored exactly once, and a subscriber on the
//!   surviving collector sees all of them, in cursor order, including those the other
//!   collector committed;
//! - one publisher given both collectors' URLs (`fallback_urls`): the first SIGKILLed, it
//!   goes on to the second, and back to the first once restarted: every event stored once.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::pg::PgServer;
use common::*;
use xtrail_detect::event::Event;
use xtrail_publish::{Publisher, PublisherConfig};

/// (rows, distinct (sensor_id, seq)) in the shared store.
fn pg_counts(pg: &PgServer, db: &str) -> (i64, i64) {
    let row = pg
        .client(db)
        .query_one(
            "SELECT count(*), count(DISTINCT (sensor_id, seq)) FROM xtrail_events",
            &[],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

#[test]
fn collector_on_postgres_stores_every_event_once() {
    const N: u32 = 3000;
    let Some(pg) = PgServer::start("e2e") else {
        return;
    };
    let url = pg.create_db("e2e");
    let data = tempdir("pg-e2e-data");
    let spool = tempdir("pg-e2e-spool");
    let collector = Collector::start(data.path(), None, &["--database", &url]);
    assert!(
        !data.path().join("events.db").exists(),
        "no SQLite store when PostgreSQL is selected"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let live_task = live_subscriber(&rt, &collector.url(), N as usize);

    let mut cfg = PublisherConfig::new(collector.url(), SENSOR_TOKEN, "sensor-pg", spool.path());
    cfg.batch_max_events = 250;
    let originals: Vec<Event> = (0..N).map(sample).collect();
    let publisher = common::publish_all(cfg, &originals, Duration::from_secs(120));
    assert_eq!(publisher.stats().acked, u64::from(N));
    assert_eq!(pg_counts(&pg, "e2e"), (i64::from(N), i64::from(N)));

    let (replayed, _) = rt.block_on(collect_resuming(
        collector.url(),
        0,
        N as usize,
        Duration::from_secs(60),
    ));
    let live = rt.block_on(live_task).unwrap();
    assert_received("replay", &replayed, &originals, "sensor-pg");
    assert_received("live", &live, &originals, "sensor-pg");
    // The HTTP API reads the same store.
    let (status, body) =
        collector.http_get("/api/events?limit=5&trail=TRAIL-2999", Some(SUB_TOKEN));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("trail-2999.evil.example"), "{body}");
    let (status, body) = collector.http_get("/api/health", None);
    assert_eq!(status, 200, "{body}");
}

/// A TCP forwarder whose upstream can be switched; open connections stay where they are.
struct Proxy {
    addr: SocketAddr,
    upstream: Arc<Mutex<SocketAddr>>,
}

impl Proxy {
    fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream = Arc::new(Mutex::new(upstream));
        let target = Arc::clone(&upstream);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let to = *target.lock().unwrap();
                let Ok(server) = TcpStream::connect(to) else {
                    continue;
                };
                for (mut from, mut into) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || into.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = from.shutdown(Shutdown::Both);
                        let _ = into.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Proxy { addr, upstream }
    }

    fn switch(&self, to: SocketAddr) {
        *self.upstream.lock().unwrap() = to;
    }
}

#[test]
fn two_collectors_one_killed_every_event_once_subscriber_sees_all_in_order() {
    const N: u32 = 10_000;
    let Some(pg) = PgServer::start("two") else {
        return;
    };
    let url = pg.create_db("two");
    let (data_a, data_b) = (tempdir("pg-two-a"), tempdir("pg-two-b"));
    let mut a = Collector::start(data_a.path(), None, &["--database", &url]);
    let b = Collector::start(data_b.path(), None, &["--database", &url]);
    let a_addr = a.grpc;
    let proxy = Proxy::start(a.grpc);
    let rt = tokio::runtime::Runtime::new().unwrap();
    // The subscriber on the collector that survives, from the start.
    let sub = rt.spawn(collect_resuming(
        b.url(),
        0,
        3 * N as usize,
        Duration::from_secs(600),
    ));

    let spools: Vec<_> = (0..3)
        .map(|i| tempdir(&format!("pg-two-spool{i}")))
        .collect();
    let targets = [a.url(), b.url(), format!("http://{}", proxy.addr)];
    let producers: Vec<_> = targets
        .iter()
        .enumerate()
        .map(|(i, target)| {
            let mut cfg = PublisherConfig::new(
                target.clone(),
                SENSOR_TOKEN,
                format!("sensor-{i}"),
                spools[i].path(),
            );
            cfg.backoff_max = Duration::from_millis(300);
            cfg.batch_max_events = 200;
            let publisher = Publisher::start(cfg).unwrap();
            std::thread::spawn(move || {
                for n in 0..N {
                    publisher.publish(&sample(n)).unwrap();
                    if n % 500 == 0 {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                publisher
            })
        })
        .collect();

    // Kill A once a good part is stored (but not all).
    let deadline = Instant::now() + Duration::from_secs(300);
    while pg_counts(&pg, "two").0 < i64::from(N) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    a.kill9();
    proxy.switch(b.grpc);
    let at_kill = pg_counts(&pg, "two").0;
    assert!(
        at_kill < 3 * i64::from(N),
        "killed too late to matter ({at_kill})"
    );
    std::thread::sleep(Duration::from_millis(300));
    let a = Collector::start(data_a.path(), Some(a_addr), &["--database", &url]);

    for p in producers {
        let publisher = p.join().unwrap();
        publisher
            .flush(Duration::from_secs(300))
            .expect("flush after the restart");
        let stats = publisher.stats();
        assert_eq!(stats.pending, 0, "{stats:?}");
        assert_eq!(stats.dropped, 0, "{stats:?}");
    }
    assert_eq!(
        pg_counts(&pg, "two"),
        (3 * i64::from(N), 3 * i64::from(N)),
        "exactly once across both collectors"
    );

    let (got, resumes) = rt.block_on(sub).unwrap();
    eprintln!("killed at {at_kill} stored; subscriber on the survivor resumed {resumes} times");
    assert_eq!(got.len(), 3 * N as usize);
    assert!(
        got.windows(2).all(|w| w[1].cursor > w[0].cursor),
        "cursor order, no duplicate"
    );
    for i in 0..3 {
        let seqs: Vec<u64> = got
            .iter()
            .filter(|e| e.sensor_id == format!("sensor-{i}"))
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs.len(), N as usize, "sensor-{i}");
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "sensor-{i}: no gap in its sequence"
        );
    }
    // The restarted collector serves the same store.
    let (again, _) = rt.block_on(collect_resuming(
        a.url(),
        0,
        3 * N as usize,
        Duration::from_secs(120),
    ));
    assert_eq!(
        again.iter().map(|e| e.cursor).collect::<Vec<_>>(),
        got.iter().map(|e| e.cursor).collect::<Vec<_>>()
    );
}

/// `xtrail_ingest_events_total` of a collector (events it stored since it started).
fn ingested(c: &Collector) -> u64 {
    let (_, m) = c.http_get("/metrics", None);
    m.lines()
        .find_map(|l| l.strip_prefix("xtrail_ingest_events_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn publisher_with_both_urls_fails_over_and_back_every_event_once() {
    const N: u32 = 3000;
    let Some(pg) = PgServer::start("failover") else {
        return;
    };
    let url = pg.create_db("failover");
    let (data_a, data_b) = (tempdir("pg-fo-a"), tempdir("pg-fo-b"));
    let mut a = Collector::start(data_a.path(), None, &["--database", &url]);
    let b = Collector::start(data_b.path(), None, &["--database", &url]);
    let a_addr = a.grpc;
    let spool = tempdir("pg-fo-spool");
    let mut cfg = PublisherConfig::new(a.url(), SENSOR_TOKEN, "sensor-fo", spool.path());
    cfg.fallback_urls = vec![b.url()];
    cfg.failback_after = Duration::from_secs(1);
    cfg.backoff_max = Duration::from_millis(300);
    cfg.batch_max_events = 100;
    let publisher = Publisher::start(cfg).unwrap();

    // Phase 1: on A.
    for n in 0..N {
        publisher.publish(&sample(n)).unwrap();
    }
    publisher
        .flush(Duration::from_secs(120))
        .expect("flush on A");
    assert_eq!(
        ingested(&a),
        u64::from(N),
        "the first URL is used while it serves"
    );
    assert_eq!(ingested(&b), 0);

    // Phase 2: A killed mid-stream; the publisher goes on to B.
    for n in N..2 * N {
        publisher.publish(&sample(n)).unwrap();
        if n == N + N / 4 {
            a.kill9();
        }
    }
    publisher
        .flush(Duration::from_secs(120))
        .expect("flush with the first collector dead");
    assert!(ingested(&b) > 0, "B took over");
    assert_eq!(
        pg_counts(&pg, "failover"),
        (2 * i64::from(N), 2 * i64::from(N))
    );

    // Phase 3: A back; after `failback_after` the publisher returns to it.
    let a = Collector::start(data_a.path(), Some(a_addr), &["--database", &url]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut n = 2 * N;
    while ingested(&a) == 0 && Instant::now() < deadline {
        publisher.publish(&sample(n)).unwrap();
        n += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        ingested(&a) > 0,
        "back on the first URL once it serves again"
    );
    publisher
        .flush(Duration::from_secs(120))
        .expect("flush after failback");
    let stats = publisher.stats();
    assert_eq!((stats.pending, stats.dropped), (0, 0), "{stats:?}");
    assert_eq!(
        pg_counts(&pg, "failover"),
        (i64::from(n), i64::from(n)),
        "every event stored once across both collectors"
    );
}
