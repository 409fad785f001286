//! Failover on health: a collector whose store is red (here a PostgreSQL store that cannot
//! be reached: nothing listens at its URL) answers the gRPC health check of
//! `xtrail.v1.Ingest` with `NOT_SERVING`; a publisher given it first and a healthy
//! collector next moves on to the next URL at once and has every event stored there, once.

mod common;

use std::time::{Duration, Instant};

use common::{event, free_addr, stored, Collector, SENSOR_TOKEN};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
use xtrail_publish::{Publisher, PublisherConfig};

/// The health of `xtrail.v1.Ingest` at `url`, asked until it is `want` (at most 30 s).
fn wait_for_health(url: &str, want: ServingStatus) -> ServingStatus {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let end = Instant::now() + Duration::from_secs(30);
        let mut last = ServingStatus::Unknown;
        while Instant::now() < end {
            let channel = tonic::transport::Endpoint::from_shared(url.to_string())
                .expect("url")
                .connect()
                .await;
            if let Ok(mut c) = channel.map(HealthClient::new) {
                let req = HealthCheckRequest {
                    service: "xtrail.v1.Ingest".into(),
                };
                if let Ok(r) = c.check(req).await {
                    last = r.into_inner().status();
                    if last == want {
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        last
    })
}

#[test]
fn a_collector_not_serving_is_passed_over_for_the_next_url() {
    let red_dir = tempfile::tempdir().unwrap();
    let good_dir = tempfile::tempdir().unwrap();
    // Nothing listens there: the store never opens, so the collector is red from the start.
    let unreachable = format!("postgres://xtrail@{}/xtrail", free_addr());
    let red = Collector::start(red_dir.path(), "127.0.0.1:0", &["--database", &unreachable]);
    let good = Collector::start(good_dir.path(), "127.0.0.1:0", &[]);
    assert_eq!(
        wait_for_health(&red.url(), ServingStatus::NotServing),
        ServingStatus::NotServing,
        "a collector whose store cannot be reached answers NOT_SERVING"
    );
    assert_eq!(
        wait_for_health(&good.url(), ServingStatus::Serving),
        ServingStatus::Serving
    );

    let spool = tempfile::tempdir().unwrap();
    let mut cfg = PublisherConfig::new(red.url(), SENSOR_TOKEN, "failover", spool.path());
    cfg.fallback_urls = vec![good.url()];
    cfg.backoff_max = Duration::from_millis(300);
    let publisher = Publisher::start(cfg).unwrap();
    let n = 2_000u32;
    for i in 0..n {
        publisher.publish(&event("gw", i)).unwrap();
    }
    publisher.flush(Duration::from_secs(60)).unwrap();
    let stats = publisher.stats();
    assert_eq!(stats.acked, u64::from(n), "{stats:?}");
    // One stream opened, on the healthy collector: the red one was passed over on its
    // health answer, not after a failed stream (which would count a second connect).
    assert_eq!(stats.connects, 1, "{stats:?}");

    let got = stored(&good.url(), n as usize + 1, Duration::from_secs(3));
    let mut seqs: Vec<u64> = got
        .iter()
        .filter(|e| e.sensor_id == "failover")
        .map(|e| e.seq)
        .collect();
    seqs.sort_unstable();
    let want: Vec<u64> = (1..=u64::from(n)).collect();
    assert_eq!(
        seqs, want,
        "every event stored once on the healthy collector"
    );
    drop(publisher);
}
