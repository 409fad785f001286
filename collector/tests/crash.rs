//! SIGKILL the collector in the middle of a 100k-event stream, restart it on the same data
//! directory: every event is stored exactly once, and a subscriber that resumes from its
//! last cursor sees them all, in order, with no gap and no duplicate.

mod common;

use std::time::{Duration, Instant};

use common::*;
use xtrail_publish::{Publisher, PublisherConfig};

const N: u32 = 100_000;

#[test]
fn collector_sigkill_mid_stream_loses_nothing_and_stores_once() {
    let data = tempdir("crash-data");
    let spool = tempdir("crash-spool");
    let mut collector = Collector::start(data.path(), None, &[]);
    let addr = collector.grpc;
    let url = collector.url();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sub = rt.spawn(collect_resuming(
        url.clone(),
        0,
        N as usize,
        Duration::from_secs(600),
    ));

    let mut cfg = PublisherConfig::new(url.clone(), SENSOR_TOKEN, "sensor-crash", spool.path());
    cfg.backoff_max = Duration::from_millis(500);
    let publisher = Publisher::start(cfg).unwrap();
    let producer = std::thread::spawn({
        let started = Instant::now();
        move || {
            for i in 0..N {
                publisher.publish(&sample(i)).unwrap();
            }
            (publisher, started.elapsed())
        }
    });

    // Kill once a good part is acknowledged (but not all).
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (rows, _) = collector.stored_counts();
        if rows >= 20_000 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    collector.kill9();
    let at_kill = collector.stored_counts().0;
    assert!(
        at_kill < i64::from(N),
        "killed too late to matter ({at_kill})"
    );
    std::thread::sleep(Duration::from_millis(300));
    let collector = Collector::start(data.path(), Some(addr), &[]);

    let (publisher, _) = producer.join().unwrap();
    publisher
        .flush(Duration::from_secs(300))
        .expect("flush after restart");
    let stats = publisher.stats();
    assert_eq!(stats.pending, 0, "{stats:?}");
    assert!(stats.connects >= 2, "reconnected: {stats:?}");
    assert_eq!(
        collector.stored_counts(),
        (i64::from(N), i64::from(N)),
        "exactly once"
    );

    let (got, resumes) = rt.block_on(sub).unwrap();
    eprintln!("killed at {at_kill} stored; subscriber resumed {resumes} times");
    assert!(resumes >= 1, "the subscriber saw the collector die");
    assert_eq!(got.len(), N as usize);
    assert!(
        got.windows(2).all(|w| w[1].cursor > w[0].cursor),
        "cursor order, no duplicate"
    );
    assert!(
        got.windows(2).all(|w| w[1].seq == w[0].seq + 1),
        "no gap in the sensor's sequence"
    );
    assert_eq!(got[0].trail, sample(0).trail);
    assert_eq!(got[N as usize - 1].trail, sample(N - 1).trail);
}
