//! Bad input gets a clear error and loses nothing acknowledged: wrong or missing tokens, a
//! token of the wrong role, malformed filters and queries, oversized or malformed batches.

mod common;

use std::time::Duration;

use common::*;
use tonic::Code;
use xtrail_proto::v1::{self, PublishRequest, SubscribeRequest};
use xtrail_publish::{Publisher, PublisherConfig};

fn wire(seq: u64) -> v1::Event {
    let mut e = v1::Event::from(&sample(seq as u32));
    e.seq = seq;
    e
}

async fn publish_once(
    url: &str,
    token: Option<&str>,
    batch: PublishRequest,
) -> Result<v1::PublishResponse, tonic::Status> {
    let mut c = ingest_client(url)
        .await
        .max_encoding_message_size(256 << 20);
    let stream = tokio_stream::iter(vec![batch]);
    let req = match token {
        Some(t) => with_token(stream, t),
        None => tonic::Request::new(stream),
    };
    let mut acks = c.publish(req).await?.into_inner();
    match acks.message().await? {
        Some(a) => Ok(a),
        None => Err(tonic::Status::unknown("no ack")),
    }
}

fn batch(seqs: std::ops::RangeInclusive<u64>) -> PublishRequest {
    PublishRequest {
        sensor_id: "bad-input".into(),
        events: seqs.map(wire).collect(),
    }
}

#[test]
fn tokens_roles_filters_and_batches_are_checked() {
    let data = tempdir("bad-data");
    let collector = Collector::start(data.path(), None, &[]);
    let url = collector.url();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // A good batch, acknowledged after commit, then resent: acknowledged, stored once.
        let ack = publish_once(&url, Some(SENSOR_TOKEN), batch(1..=100))
            .await
            .unwrap();
        assert_eq!(
            (ack.committed_seq, ack.stored, ack.duplicates),
            (100, 100, 0)
        );
        let ack = publish_once(&url, Some(SENSOR_TOKEN), batch(51..=150))
            .await
            .unwrap();
        assert_eq!(
            (ack.committed_seq, ack.stored, ack.duplicates),
            (150, 50, 50)
        );

        // Tokens.
        let e = publish_once(&url, None, batch(151..=151))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e}");
        assert!(e.message().contains("authorization"), "{e}");
        let e = publish_once(&url, Some("guess"), batch(151..=151))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e}");
        let e = publish_once(&url, Some(SUB_TOKEN), batch(151..=151))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e}");
        // One answer for every refused token: a refusal confirms nothing.
        assert!(
            e.message().contains("unknown, revoked or wrong-role"),
            "{e}"
        );
        let mut c = events_client(&url).await;
        let e = c
            .subscribe(with_token(SubscribeRequest::default(), SENSOR_TOKEN))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e}");
        let e = c
            .subscribe(tonic::Request::new(SubscribeRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e}");
        let e = c
            .query(with_token(v1::QueryRequest::default(), "nope"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e}");

        // Malformed filters and queries.
        for (filter, field) in [
            (
                v1::Filter {
                    src_cidrs: vec!["10.0.0.0/33".into()],
                    ..Default::default()
                },
                "src_cidrs",
            ),
            (
                v1::Filter {
                    dst_cidrs: vec!["not-an-ip".into()],
                    ..Default::default()
                },
                "dst_cidrs",
            ),
            (
                v1::Filter {
                    min_severity: 42,
                    ..Default::default()
                },
                "min_severity",
            ),
            (
                v1::Filter {
                    types: vec!["".into()],
                    ..Default::default()
                },
                "types",
            ),
        ] {
            let req = SubscribeRequest {
                filter: Some(filter.clone()),
                start: None,
            };
            let e = c.subscribe(with_token(req, SUB_TOKEN)).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{e}");
            assert!(e.message().contains(field), "{field}: {e}");
            let q = v1::QueryRequest {
                filter: Some(filter),
                ..Default::default()
            };
            let e = c.query(with_token(q, SUB_TOKEN)).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{e}");
        }
        for (q, what) in [
            (
                v1::QueryRequest {
                    page_token: "xyz".into(),
                    ..Default::default()
                },
                "page_token",
            ),
            (
                v1::QueryRequest {
                    limit: 1_000_000,
                    ..Default::default()
                },
                "limit",
            ),
            (
                v1::QueryRequest {
                    from_ts_us: 10,
                    to_ts_us: 5,
                    ..Default::default()
                },
                "time range",
            ),
        ] {
            let e = c.query(with_token(q, SUB_TOKEN)).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{e}");
            assert!(e.message().contains(what), "{what}: {e}");
        }

        // Malformed and oversized batches: refused whole, nothing of them stored.
        let e = publish_once(&url, Some(SENSOR_TOKEN), batch(1000..=11_000))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
        assert!(e.message().contains("exceeds the limit of 10000"), "{e}");
        let mut b = batch(200..=210);
        b.events[3].src_ip = "999.1.1.1".into();
        let e = publish_once(&url, Some(SENSOR_TOKEN), b).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message().contains("event 3") && e.message().contains("src_ip"),
            "{e}"
        );
        let mut b = batch(300..=305);
        b.events.swap(1, 2);
        let e = publish_once(&url, Some(SENSOR_TOKEN), b).await.unwrap_err();
        assert!(e.message().contains("increase"), "{e}");
        let e = publish_once(
            &url,
            Some(SENSOR_TOKEN),
            PublishRequest {
                sensor_id: String::new(),
                events: vec![wire(1)],
            },
        )
        .await
        .unwrap_err();
        assert!(e.message().contains("sensor_id"), "{e}");
    });
    // What was acknowledged is all there, once.
    assert_eq!(collector.stored_counts(), (150, 150));

    // The HTTP API checks the same things.
    assert_eq!(collector.http_get("/api/events", None).0, 401);
    assert_eq!(collector.http_get("/api/events", Some(SENSOR_TOKEN)).0, 401);
    let (code, body) = collector.http_get("/api/events?src=10.0.0.0/33", Some(SUB_TOKEN));
    assert_eq!(code, 400);
    assert!(body.contains("src_cidrs"), "{body}");
    let (code, body) = collector.http_get("/api/events?colour=red", Some(SUB_TOKEN));
    assert_eq!(code, 400);
    assert!(body.contains("colour"), "{body}");
    let (code, body) = collector.http_get("/api/events?limit=10", Some(SUB_TOKEN));
    assert_eq!(code, 200, "{body}");
    let (_, metrics) = collector.http_get("/metrics", None);
    assert!(
        metrics.contains("xtrail_ingest_duplicates_total 50"),
        "{metrics}"
    );
    assert!(
        metrics.contains("xtrail_ingest_rejected_batches_total 4"),
        "{metrics}"
    );
}

#[test]
fn publisher_with_a_wrong_or_subscriber_token_reports_and_keeps_events() {
    let data = tempdir("badtok-data");
    let spool = tempdir("badtok-spool");
    let collector = Collector::start(data.path(), None, &[]);
    for token in ["wrong", SUB_TOKEN] {
        let mut cfg = PublisherConfig::new(collector.url(), token, "s-badtok", spool.path());
        cfg.backoff_max = Duration::from_millis(200);
        let p = Publisher::start(cfg).unwrap();
        p.publish(&sample(1)).unwrap();
        let err = p
            .flush(Duration::from_millis(1500))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("Unauthenticated") || err.contains("unknown, revoked or wrong-role"),
            "{err}"
        );
        assert!(p.stats().pending >= 1);
    }
    // The right token sends what the wrong ones kept.
    let p = Publisher::start(PublisherConfig::new(
        collector.url(),
        SENSOR_TOKEN,
        "s-badtok",
        spool.path(),
    ))
    .unwrap();
    p.flush(Duration::from_secs(30)).unwrap();
    assert_eq!(collector.stored_counts(), (2, 2));
}

#[test]
fn bad_flags_fail_with_one_clear_line() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xtrail-collector"))
        .args(["--grpc", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--data-dir is required"), "{err}");
}
