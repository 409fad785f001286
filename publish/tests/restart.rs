//! The publisher against a real collector (in this process, on loopback): restart with a
//! non-empty spool resends without duplicates; a truncated spool tail is reported and the
//! good records before it are sent; a full spool drops the oldest and reports it.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use xtrail_collector::config::{ServeArgs, ServerConfig};
use xtrail_collector::filter::EventFilter;
use xtrail_collector::storage::sqlite::SqliteStorage;
use xtrail_collector::storage::Storage;
use xtrail_detect::event::Event;
use xtrail_proto::v1;
use xtrail_publish::{Publisher, PublisherConfig};

const TOKEN: &str = "t-sensor";

/// A collector served from a background thread until dropped.
struct Collector {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Collector {
    fn start(data_dir: &Path) -> Collector {
        let args = ServeArgs {
            data_dir: Some(data_dir.to_path_buf()),
            grpc: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            http: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            sensor_tokens: vec![TOKEN.into()],
            subscriber_tokens: vec!["t-sub".into()],
            ..ServeArgs::default()
        };
        let cfg = ServerConfig::from_args(args).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(xtrail_collector::server::serve(
                cfg,
                async move {
                    let _ = stopped.await;
                },
                move |b| {
                    let _ = bound_tx.send(b.grpc);
                },
            ))
            .unwrap();
        });
        let addr = bound_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        Collector {
            url: format!("http://{addr}"),
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A URL where nothing listens.
fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

fn stored(data_dir: &Path) -> Vec<v1::Event> {
    SqliteStorage::open(data_dir)
        .unwrap()
        .read_after(0, None, &EventFilter::default(), 1_000_000)
        .unwrap()
        .events
}

/// Sample event `i` of sensor "gw".
fn event(i: u32) -> Event {
    common::event("gw", i)
}

fn config(url: &str, spool: &Path) -> PublisherConfig {
    let mut c = PublisherConfig::new(url, TOKEN, "sensor-r", spool);
    c.backoff_max = Duration::from_millis(300);
    c
}

fn assert_once(events: &[v1::Event]) {
    let mut seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), events.len(), "a (sensor, seq) stored twice");
}

#[test]
fn restart_with_nonempty_spool_resends_without_duplicates() {
    let data = tempfile::tempdir().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let collector = Collector::start(data.path());

    // 3000 acknowledged, from four threads at once.
    let a = Arc::new(Publisher::start(config(&collector.url, spool.path())).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let a = Arc::clone(&a);
            std::thread::spawn(move || {
                for i in 0..750 {
                    a.publish(&event(t * 750 + i)).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    a.flush(Duration::from_secs(30)).unwrap();
    assert_eq!(a.stats().acked, 3000);
    let acked_seq = a.stats().acked_seq;

    // Collector gone: 2000 more wait in the spool; the sensor stops.
    drop(collector);
    for i in 3000..5000 {
        a.publish(&event(i)).unwrap();
    }
    assert!(a.flush(Duration::from_millis(300)).is_err());
    let a = Arc::try_unwrap(a).unwrap();
    a.shutdown().unwrap();
    // As if the last 1000 acknowledgements were lost in the crash.
    std::fs::write(
        spool.path().join("acked"),
        format!("{}\n", acked_seq - 1000),
    )
    .unwrap();

    let collector = Collector::start(data.path());
    let b = Publisher::start(config(&collector.url, spool.path())).unwrap();
    assert_eq!(b.open_report().pending, 3000);
    b.flush(Duration::from_secs(30)).unwrap();
    let stats = b.stats();
    assert_eq!(stats.pending, 0, "{stats:?}");
    let all = stored(data.path());
    assert_eq!(all.len(), 5000);
    assert_once(&all);
    let mut trails: Vec<_> = all.iter().map(|e| e.trail.clone()).collect();
    trails.sort();
    trails.dedup();
    assert_eq!(trails.len(), 5000);
    drop(b);
    drop(collector);
}

#[test]
fn truncated_spool_tail_is_reported_and_good_records_are_sent() {
    let data = tempfile::tempdir().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let a = Publisher::start(config(&dead_url(), spool.path())).unwrap();
    for i in 0..100 {
        a.publish(&event(i)).unwrap();
    }
    drop(a);
    let mut segs: Vec<_> = std::fs::read_dir(spool.path())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    let last = segs.last().unwrap();
    let len = std::fs::metadata(last).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(last)
        .unwrap()
        .set_len(len - 3)
        .unwrap();

    let collector = Collector::start(data.path());
    let b = Publisher::start(config(&collector.url, spool.path())).unwrap();
    let report = b.open_report().clone();
    assert_eq!(report.corrupt_regions, 1, "{report:?}");
    assert!(report.corrupt_bytes > 0);
    assert_eq!(report.pending, 99);
    assert_eq!(b.stats().corrupt_regions, 1);
    b.flush(Duration::from_secs(30)).unwrap();
    let all = stored(data.path());
    assert_eq!(all.len(), 99);
    assert_eq!(all[98].trail, "trail-98");
    // New events after the cut continue normally.
    b.publish(&event(1000)).unwrap();
    b.flush(Duration::from_secs(30)).unwrap();
    assert_eq!(stored(data.path()).len(), 100);
}

#[test]
fn full_spool_drops_oldest_and_reports_the_drop_to_the_collector() {
    let data = tempfile::tempdir().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let mut cfg = config(&dead_url(), spool.path());
    cfg.spool_max_bytes = 64 * 1024;
    let a = Publisher::start(cfg.clone()).unwrap();
    for i in 0..3000 {
        a.publish(&event(i)).unwrap();
    }
    let stats = a.stats();
    assert!(stats.dropped > 0, "{stats:?}");
    assert!(stats.spool_bytes <= 64 * 1024);
    let pending = stats.pending;
    drop(a);

    let collector = Collector::start(data.path());
    cfg.url = collector.url.clone();
    let b = Publisher::start(cfg).unwrap();
    b.flush(Duration::from_secs(30)).unwrap();
    let all = stored(data.path());
    assert_eq!(all.len() as u64, pending);
    assert_once(&all);
    let drops: Vec<_> = all
        .iter()
        .filter(|e| e.r#type == xtrail_proto::SPOOL_DROP_TYPE)
        .collect();
    assert!(!drops.is_empty());
    assert!(drops[0].info.contains("dropped"), "{}", drops[0].info);
    assert_eq!(
        all.last().unwrap().trail,
        "trail-2999",
        "the newest are kept"
    );
}
