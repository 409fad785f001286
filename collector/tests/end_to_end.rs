//! Publisher → collector (real process) → subscribers: every event arrives once, in order,
//! with every field; the HTTP API and metrics agree.

mod common;

use std::time::Duration;

use common::*;
use xtrail_detect::event::Event;
use xtrail_proto::v1::{self, subscribe_request::Start, SubscribeRequest};
use xtrail_publish::{Publisher, PublisherConfig};

const N: u32 = 3000;

#[test]
fn publisher_to_subscriber_every_event_once_in_order_with_all_fields() {
    let data = tempdir("e2e-data");
    let spool = tempdir("e2e-spool");
    let collector = Collector::start(data.path(), None, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();

    // A live-only subscriber, joined before anything is published.
    let live_task = live_subscriber(&rt, &collector.url(), N as usize);

    let mut cfg = PublisherConfig::new(collector.url(), SENSOR_TOKEN, "sensor-a", spool.path());
    cfg.batch_max_events = 250;
    let originals: Vec<Event> = (0..N).map(sample).collect();
    let publisher = publish_all(cfg, &originals, Duration::from_secs(60));
    let stats = publisher.stats();
    assert_eq!(stats.acked, u64::from(N), "{stats:?}");
    assert_eq!(stats.pending, 0);
    assert_eq!(stats.dropped, 0);

    // A replaying subscriber from the start, and the live one.
    let (replayed, _) = rt.block_on(collect_resuming(
        collector.url(),
        0,
        N as usize,
        Duration::from_secs(60),
    ));
    let live = rt.block_on(live_task).unwrap();
    assert_received("replay", &replayed, &originals, "sensor-a");
    assert_received("live", &live, &originals, "sensor-a");
    assert_eq!(collector.stored_counts(), (i64::from(N), i64::from(N)));

    // Since-time start, with a filter, matches the query API.
    rt.block_on(async {
        let mut c = events_client(&collector.url()).await;
        let req = SubscribeRequest {
            filter: Some(v1::Filter {
                types: vec!["dns".into()],
                src_cidrs: vec!["198.18.0.0/24".into()],
                ..Default::default()
            }),
            start: Some(Start::SinceTsUs(1_786_094_062_000_000 + 100)),
        };
        let mut s = c
            .subscribe(with_token(req, SUB_TOKEN))
            .await
            .unwrap()
            .into_inner();
        let mut n = 0;
        while let Ok(Ok(Some(ev))) =
            tokio::time::timeout(Duration::from_millis(1500), s.message()).await
        {
            assert_eq!(ev.r#type, "DNS");
            assert!(ev.ts_us >= 1_786_094_062_000_100);
            n += 1;
        }
        // DNS = i % 4 == 0, src in 198.18.0.0/24 = i < 256, ts filter = i >= 100.
        assert_eq!(n, (100..256).filter(|i| i % 4 == 0).count());

        let page = c
            .query(with_token(
                v1::QueryRequest {
                    limit: 1000,
                    order: v1::Order::OldestFirst as i32,
                    ..Default::default()
                },
                SUB_TOKEN,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.events.len(), 1000);
        assert!(!page.next_page_token.is_empty());
        let next = c
            .query(with_token(
                v1::QueryRequest {
                    limit: 1000,
                    order: v1::Order::OldestFirst as i32,
                    page_token: page.next_page_token.clone(),
                    ..Default::default()
                },
                SUB_TOKEN,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(next.events[0].cursor, page.events[999].cursor + 1);
    });

    // HTTP API and metrics.
    let (code, body) = collector.http_get(
        "/api/events?type=DNS&limit=5&min_severity=high",
        Some(SUB_TOKEN),
    );
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let evs = v["events"].as_array().unwrap();
    assert_eq!(evs.len(), 5);
    assert!(evs
        .iter()
        .all(|e| e["type"] == "DNS" && e["severity"] == "high"));
    assert!(evs[0]["dns_query"].is_string() && evs[0]["ts"].as_str().unwrap().ends_with('Z'));
    let (code, body) = collector.http_get("/api/health", None);
    assert_eq!(code, 200);
    assert!(body.contains("\"ok\""), "{body}");
    let (code, body) = collector.http_get("/metrics", None);
    assert_eq!(code, 200);
    assert!(
        body.contains(&format!("xtrail_ingest_events_total {N}")),
        "{body}"
    );
    assert!(body.contains("xtrail_ingest_batches_total"));
    assert!(body.contains("xtrail_subscribers_lagged_total 0"));
    drop(publisher);
}

#[test]
fn subscribe_command_prints_json_lines() {
    let data = tempdir("cli-data");
    let spool = tempdir("cli-spool");
    let collector = Collector::start(data.path(), None, &[]);
    let publisher = Publisher::start(PublisherConfig::new(
        collector.url(),
        SENSOR_TOKEN,
        "s-cli",
        spool.path(),
    ))
    .unwrap();
    for i in 0..20 {
        publisher.publish(&sample(i)).unwrap();
    }
    publisher.flush(Duration::from_secs(30)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xtrail-collector"))
        .args([
            "subscribe",
            "--collector",
            &collector.url(),
            "--token",
            SUB_TOKEN,
        ])
        .args(["--from", "0", "--filter", "type=HTTP", "--max-events", "5"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    assert!(lines
        .iter()
        .all(|l| l["type"] == "HTTP" && l["http_method"] == "GET" && l["sensor_id"] == "s-cli"));

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xtrail-collector"))
        .args([
            "subscribe",
            "--collector",
            &collector.url(),
            "--token",
            SUB_TOKEN,
            "--filter",
            "src=1.2.3.4/99",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("src_cidrs"));
}

#[test]
fn tls_publish_and_subscribe() {
    let certs = tempdir("tls-certs");
    let (ca, cert, key) = (
        certs.path().join("ca.pem"),
        certs.path().join("c.pem"),
        certs.path().join("k.pem"),
    );
    // A test CA and a server certificate for localhost / 127.0.0.1 signed by it.
    if make_certs(certs.path()).is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "openssl could not make test certificates (CI=true)"
        );
        eprintln!("SKIPPED tls_publish_and_subscribe: openssl could not make test certificates");
        return;
    }
    let data = tempdir("tls-data");
    let spool = tempdir("tls-spool");
    let collector = Collector::start(
        data.path(),
        None,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let url = format!("https://localhost:{}", collector.grpc.port());
    let mut cfg = PublisherConfig::new(url.clone(), SENSOR_TOKEN, "s-tls", spool.path());
    cfg.ca_cert = Some(ca.clone());
    let p = Publisher::start(cfg).unwrap();
    for i in 0..10 {
        p.publish(&sample(i)).unwrap();
    }
    p.flush(Duration::from_secs(30)).expect("flush over TLS");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xtrail-collector"))
        .args([
            "subscribe",
            "--collector",
            &url,
            "--token",
            SUB_TOKEN,
            "--from",
            "0",
            "--max-events",
            "10",
        ])
        .arg("--ca-cert")
        .arg(&ca)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 10);
    // Plain text to a TLS port does not get through.
    let mut plain = PublisherConfig::new(
        collector.url(),
        SENSOR_TOKEN,
        "s-plain",
        tempdir("tls-spool2").path(),
    );
    plain.backoff_max = Duration::from_millis(200);
    let q = Publisher::start(plain).unwrap();
    q.publish(&sample(1)).unwrap();
    assert!(q.flush(Duration::from_millis(1000)).is_err());
}
