//! Ingest and fan-out benchmark: a collector (in this process, SQLite on a temp dir), one
//! publisher (the sensor side, spool included) and live subscribers, all on loopback.
//!
//! Measures (1) events/s stored, publishing as fast as possible until every event is
//! acknowledged, and (2) sensor→subscriber latency (from `Publisher::publish` to receipt by
//! each subscriber) at a steady rate, p50/p99/max.
//!
//! `cargo run --release -p xtrail-collector --example ingest_bench -- [EVENTS] [RATE] [SUBSCRIBERS]`
//! (defaults 200000 events, 20000 events/s for the latency run, 4 subscribers).
//! `XTRAIL_BENCH_DATABASE=postgres://...` measures the PostgreSQL store instead of SQLite.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use xtrail_collector::config::{ServeArgs, ServerConfig};
use xtrail_detect::event::{Action, Details, Event, EventType, Severity};
use xtrail_proto::v1::events_client::EventsClient;
use xtrail_proto::v1::SubscribeRequest;
use xtrail_publish::{Publisher, PublisherConfig};

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

fn event(i: u64) -> Event {
    Event {
        ts_us: now_us(),
        sensor: "bench".into(),
        src_ip: "198.18.0.1".parse().unwrap(),
        src_port: (i % 60000) as u16,
        dst_ip: "198.19.0.1".parse().unwrap(),
        dst_port: 53,
        proto: "UDP".into(),
        kind: EventType::Dns,
        trail: format!("t{}.evil.example", i % 1000),
        info: "asyncrat (malware)".into(),
        reference: "(static)".into(),
        severity: Severity::High,
        action: Action::Pass,
        iface: Some("eth0".into()),
        details: Details {
            dns_query: Some(format!("x{i}.t{}.evil.example", i % 1000)),
            dns_qtype: Some("A".into()),
            ..Details::default()
        },
    }
}

fn pct(sorted: &[i64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx] as f64 / 1000.0
}

fn main() -> anyhow::Result<()> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = *args.first().unwrap_or(&200_000);
    let rate = *args.get(1).unwrap_or(&20_000);
    let subs = *args.get(2).unwrap_or(&4) as usize;
    let data = tempfile::tempdir()?;
    let spool = tempfile::tempdir()?;

    let cfg = ServerConfig::from_args(ServeArgs {
        data_dir: Some(data.path().to_path_buf()),
        database: std::env::var("XTRAIL_BENCH_DATABASE").ok(),
        grpc: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        http: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        ..ServeArgs::default()
    })?;
    let (tx, rx) = std::sync::mpsc::channel();
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    server_rt.spawn(async move {
        let r = xtrail_collector::server::serve(cfg, std::future::pending(), move |b| {
            let _ = tx.send(b.grpc);
        })
        .await;
        if let Err(e) = r {
            eprintln!("collector: {e:#}");
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(30))?;
    let url = format!("http://{addr}");

    // Subscribers: live, recording latency per event after the throughput phase.
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lat: Arc<Mutex<Vec<i64>>> = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for _ in 0..subs {
        let url = url.clone();
        let lat = Arc::clone(&lat);
        let measuring = Arc::clone(&measuring);
        let total = n + n.min(rate * 10);
        handles.push(client_rt.spawn(async move {
            let mut c = EventsClient::connect(url)
                .await
                .unwrap()
                .max_decoding_message_size(64 << 20);
            let mut s = c
                .subscribe(SubscribeRequest::default())
                .await
                .unwrap()
                .into_inner();
            let mut got = 0u64;
            let mut mine = Vec::new();
            while let Ok(Some(ev)) = s.message().await {
                got += 1;
                if measuring.load(std::sync::atomic::Ordering::Relaxed) {
                    mine.push(now_us() - ev.ts_us);
                }
                if got >= total {
                    break;
                }
            }
            lat.lock().unwrap().extend(mine);
            got
        }));
    }
    std::thread::sleep(Duration::from_millis(300));

    let mut pcfg = PublisherConfig::new(url.clone(), "", "bench-sensor", spool.path());
    pcfg.fsync_interval = Some(Duration::from_secs(1));
    let publisher = Publisher::start(pcfg)?;

    // (1) Throughput.
    let t0 = Instant::now();
    for i in 0..n {
        publisher.publish(&event(i))?;
    }
    let spooled = t0.elapsed();
    publisher.flush(Duration::from_secs(600))?;
    let stored = t0.elapsed();
    println!(
        "ingest: {n} events stored in {:.2} s = {:.0} events/s (spool append {:.0} events/s, {} subscribers attached)",
        stored.as_secs_f64(),
        n as f64 / stored.as_secs_f64(),
        n as f64 / spooled.as_secs_f64(),
        subs
    );

    // (2) Latency at a steady rate.
    std::thread::sleep(Duration::from_millis(500));
    measuring.store(true, std::sync::atomic::Ordering::SeqCst);
    let m = n.min(rate * 10);
    let t1 = Instant::now();
    for i in 0..m {
        let due = t1 + Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        publisher.publish(&event(n + i))?;
    }
    publisher.flush(Duration::from_secs(600))?;
    let mut total_got = 0;
    for h in handles {
        total_got += client_rt.block_on(h)?;
    }
    let mut l = lat.lock().unwrap().clone();
    l.sort_unstable();
    println!(
        "latency at {rate} events/s, {m} events x {subs} subscribers ({} samples): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        l.len(),
        pct(&l, 0.50),
        pct(&l, 0.99),
        pct(&l, 1.0)
    );
    println!(
        "subscribers received {total_got} events in total (expected {})",
        (n + m) * subs as u64
    );
    let st = publisher.stats();
    println!("publisher: {st:?}");
    drop(publisher);
    server_rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}
