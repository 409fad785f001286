//! Ingest and fan-out benchmark: one or two collectors (in this process, SQLite on a temp
//! dir or a shared PostgreSQL database), sensors and live subscribers, all on loopback.
//!
//! Measures:
//! 1. **Events/s stored**: STREAMS sensor streams (raw `Ingest/Publish` streams, batches of
//!    1000 events built as the sensor builds them, at most 8 batches in flight per stream,
//!    spread over the collectors) publish EVENTS events as fast as the collectors
//!    acknowledge; the rate is EVENTS over the time until the last acknowledgement (every
//!    event committed). The process CPU time (user+sys, all threads: load generator,
//!    collectors, subscribers) over that phase is printed per event.
//! 2. **Sensor→subscriber latency** at a steady RATE: one stock `Publisher` (with its
//!    spool) per collector, events alternating between them; each subscriber (connected to
//!    the first collector) records, per event, receipt time minus the event's `ts_us`
//!    (set when the event is published). p50/p99/max over all subscribers' samples.
//!
//! `cargo run --release -p xtrail-collector --example ingest_bench -- [EVENTS] [RATE]
//! [SUBSCRIBERS] [--collectors N] [--streams K]` (defaults 200000 events, 50000 events/s,
//! 4 subscribers, 1 collector, 4 streams). `XTRAIL_BENCH_DATABASE=postgres://...` uses
//! the PostgreSQL store (required for two collectors).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use tokio_stream::wrappers::ReceiverStream;
use xtrail_collector::config::{ServeArgs, ServerConfig};
use xtrail_detect::event::{Action, Details, Event, EventType, Severity};
use xtrail_proto::v1::{self, events_client::EventsClient, ingest_client::IngestClient};
use xtrail_proto::v1::{PublishRequest, SubscribeRequest};
use xtrail_publish::{Publisher, PublisherConfig};

/// Events per batch of the load generator (the stock publisher's default).
const BATCH: u64 = 1000;
/// Batches a load-generator stream keeps unacknowledged (the stock publisher keeps 4).
const IN_FLIGHT: usize = 8;

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
        trail_set_version: Default::default(),
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

/// User+system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which ends with ')'): utime is the 12th, stime 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) as f64 / hz
}

struct Args {
    events: u64,
    rate: u64,
    subscribers: usize,
    collectors: usize,
    streams: u64,
}

fn args() -> anyhow::Result<Args> {
    let mut positional = Vec::new();
    let mut collectors = 1;
    let mut streams = 4;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--collectors" => collectors = it.next().context("--collectors N")?.parse()?,
            "--streams" => streams = it.next().context("--streams K")?.parse()?,
            _ => positional.push(a.parse::<u64>().with_context(|| format!("argument {a}"))?),
        }
    }
    anyhow::ensure!((1..=8).contains(&collectors), "--collectors: 1 to 8");
    anyhow::ensure!(streams >= 1, "--streams: at least 1");
    Ok(Args {
        events: *positional.first().unwrap_or(&200_000),
        rate: *positional.get(1).unwrap_or(&50_000),
        subscribers: *positional.get(2).unwrap_or(&4) as usize,
        collectors,
        streams,
    })
}

/// One load-generator stream: `count` events as sensor `sensor_id`, in batches of
/// [`BATCH`], at most [`IN_FLIGHT`] unacknowledged.
async fn publish_stream(
    url: String,
    sensor_id: String,
    first: u64,
    count: u64,
) -> anyhow::Result<()> {
    let mut client = IngestClient::connect(url)
        .await?
        .max_encoding_message_size(64 << 20);
    let (tx, rx) = tokio::sync::mpsc::channel::<PublishRequest>(IN_FLIGHT);
    let window = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut acks = client.publish(ReceiverStream::new(rx)).await?.into_inner();
    let producer = {
        let window = Arc::clone(&window);
        let sensor_id = sensor_id.clone();
        tokio::spawn(async move {
            let mut seq = 0u64;
            while seq < count {
                let Ok(permit) = window.acquire().await else {
                    return;
                };
                permit.forget();
                let n = BATCH.min(count - seq);
                let events = (seq..seq + n)
                    .map(|i| {
                        let mut e = v1::Event::from(&event(first + i));
                        e.seq = i + 1;
                        e
                    })
                    .collect();
                seq += n;
                let req = PublishRequest {
                    sensor_id: sensor_id.clone(),
                    events,
                };
                if tx.send(req).await.is_err() {
                    return;
                }
            }
        })
    };
    let mut acked = 0;
    while acked < count {
        let ack = acks
            .message()
            .await?
            .with_context(|| format!("{sensor_id}: stream ended at seq {acked}"))?;
        acked = ack.committed_seq;
        window.add_permits(1);
    }
    producer.await?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    let (rate, subs) = (a.rate, a.subscribers);
    let per_stream = a.events / a.streams;
    let n = per_stream * a.streams;
    let database = std::env::var("XTRAIL_BENCH_DATABASE").ok();
    anyhow::ensure!(
        a.collectors == 1 || database.is_some(),
        "several collectors need a shared PostgreSQL database (XTRAIL_BENCH_DATABASE)"
    );
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut dirs = Vec::new();
    let mut urls = Vec::new();
    for _ in 0..a.collectors {
        let data = tempfile::tempdir()?;
        let cfg = ServerConfig::from_args(ServeArgs {
            data_dir: Some(data.path().to_path_buf()),
            database: database.clone(),
            grpc: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            http: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            ..ServeArgs::default()
        })?;
        dirs.push(data);
        let (tx, rx) = std::sync::mpsc::channel();
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
        urls.push(format!("http://{addr}"));
    }

    // Subscribers on the first collector: live, recording latency per event in phase 2.
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let measuring = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let lat: Arc<Mutex<Vec<i64>>> = Arc::new(Mutex::new(Vec::new()));
    let m = n.min(rate * 10);
    let total = n + m;
    let mut handles = Vec::new();
    for _ in 0..subs {
        let url = urls[0].clone();
        let lat = Arc::clone(&lat);
        let measuring = Arc::clone(&measuring);
        let received = Arc::clone(&received);
        handles.push(client_rt.spawn(async move {
            let mut c = EventsClient::connect(url)
                .await?
                .max_decoding_message_size(64 << 20);
            let mut s = c.subscribe(SubscribeRequest::default()).await?.into_inner();
            let mut got = 0u64;
            let mut mine = Vec::new();
            while let Some(ev) = s.message().await? {
                got += 1;
                received.fetch_add(1, Ordering::Relaxed);
                if measuring.load(Ordering::Relaxed) {
                    mine.push(now_us() - ev.ts_us);
                }
                if got >= total {
                    break;
                }
            }
            lat.lock().unwrap().extend(mine);
            anyhow::Ok(got)
        }));
    }
    std::thread::sleep(Duration::from_millis(500));

    // (1) Throughput: raw sensor streams, spread over the collectors.
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let streams: Vec<_> = (0..a.streams)
        .map(|k| {
            let url = urls[k as usize % urls.len()].clone();
            client_rt.spawn(publish_stream(
                url,
                format!("bench-{k}"),
                k * per_stream,
                per_stream,
            ))
        })
        .collect();
    for s in streams {
        client_rt.block_on(s)??;
    }
    let stored = t0.elapsed();
    let cpu = cpu_seconds() - cpu0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while received.load(Ordering::Relaxed) < n * subs as u64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    let delivered = t0.elapsed();
    println!(
        "ingest: {n} events stored in {:.2} s = {:.0} events/s ({} streams, {} collectors, {subs} subscribers attached, all delivered to them after {:.2} s)",
        stored.as_secs_f64(),
        n as f64 / stored.as_secs_f64(),
        a.streams,
        a.collectors,
        delivered.as_secs_f64(),
    );
    println!(
        "cpu: {:.2} s user+sys during the ingest phase = {:.1} us per event (whole process)",
        cpu,
        cpu * 1e6 / n as f64
    );

    // (2) Latency at a steady rate: the stock publisher (spool included), one per collector.
    let received_before = received.load(Ordering::Relaxed);
    let spools: Vec<_> = urls
        .iter()
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let publishers: Vec<Publisher> = urls
        .iter()
        .zip(&spools)
        .enumerate()
        .map(|(i, (url, spool))| {
            let mut pcfg =
                PublisherConfig::new(url.clone(), "", format!("bench-sensor-{i}"), spool.path());
            pcfg.fsync_interval = Some(Duration::from_secs(1));
            Publisher::start(pcfg)
        })
        .collect::<Result<_, _>>()?;
    std::thread::sleep(Duration::from_millis(500));
    measuring.store(true, Ordering::SeqCst);
    let t1 = Instant::now();
    for i in 0..m {
        let due = t1 + Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        publishers[i as usize % publishers.len()].publish(&event(n + i))?;
    }
    for p in &publishers {
        p.flush(Duration::from_secs(600))?;
    }
    let mut total_got = 0;
    for h in handles {
        match client_rt.block_on(async { tokio::time::timeout(Duration::from_secs(120), h).await })
        {
            Ok(r) => total_got += r??,
            Err(_) => eprintln!("a subscriber did not receive every event within 120 s"),
        }
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
        "subscribers received {total_got} events in total (expected {}; {} in the latency phase)",
        total * subs as u64,
        received.load(Ordering::Relaxed) - received_before
    );
    for p in &publishers {
        println!("publisher: {:?}", p.stats());
    }
    anyhow::ensure!(
        total_got == total * subs as u64,
        "subscribers missed events"
    );
    drop(publishers);
    server_rt.shutdown_timeout(Duration::from_secs(1));
    drop(dirs);
    Ok(())
}
