//! Trust boundaries and input limits, tried as an attacker and an unlucky operator would,
//! each against a real collector process on loopback: one sensor cannot silence another,
//! one identity used twice is refused instead of dropped, sequence regressions, oversize
//! batches and fields are refused naming the limit, filters answer alike live and stored,
//! floods of connections and failed logins are bounded, pages are bounded in bytes.

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use tonic::Code;
use xtrail_proto::v1::{self, subscribe_request::Start, PublishRequest, SubscribeRequest};

fn wire(seq: u64, sensor: &str) -> v1::Event {
    let mut e = v1::Event::from(&sample(seq as u32));
    e.seq = seq;
    e.sensor = sensor.into();
    e
}

fn batch(id: &str, sensor: &str, seqs: impl IntoIterator<Item = u64>) -> PublishRequest {
    PublishRequest {
        sensor_id: id.into(),
        events: seqs.into_iter().map(|s| wire(s, sensor)).collect(),
    }
}

/// Sends batches on one stream and collects the acks until the stream ends or errs.
async fn publish(
    url: &str,
    token: &str,
    batches: Vec<PublishRequest>,
) -> (Vec<v1::PublishResponse>, Option<tonic::Status>) {
    let n = batches.len();
    let mut c = ingest_client(url)
        .await
        .max_encoding_message_size(256 << 20);
    let mut acks = match c
        .publish(with_token(tokio_stream::iter(batches), token))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => return (Vec::new(), Some(s)),
    };
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), acks.message()).await {
            Ok(Ok(Some(a))) => {
                got.push(a);
                if got.len() == n {
                    return (got, None);
                }
            }
            Ok(Ok(None)) => return (got, None),
            Ok(Err(s)) => return (got, Some(s)),
            Err(_) => panic!("no answer within 30 s"),
        }
    }
}

fn stored(a: &[v1::PublishResponse]) -> u32 {
    a.iter().map(|a| a.stored).sum()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn metric(c: &Collector, line_start: &str) -> u64 {
    let (_, body) = c.http_get("/metrics", None);
    body.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {line_start} in\n{body}"))
}

/// Asserts that a publish was refused with `code`, the message saying each of `says`.
fn assert_refused(e: Option<tonic::Status>, code: Code, says: &[&str]) {
    let e = e.expect("refused");
    assert_eq!(e.code(), code, "{e}");
    for s in says {
        assert!(e.message().contains(s), "{e}");
    }
}

/// Batches refused for `reason` (`xtrail_ingest_rejected_by_reason_total`).
fn rejected(c: &Collector, reason: &str) -> u64 {
    metric(
        c,
        &format!("xtrail_ingest_rejected_by_reason_total{{reason=\"{reason}\"}}"),
    )
}

#[test]
fn a_sensor_cannot_silence_another() {
    let data = tempdir("trust-identity");
    let victim = sensor_cmd(data.path(), "add", "victim");
    let attacker = sensor_cmd(data.path(), "add", "attacker");
    assert!(victim.starts_with("xts_") && victim != attacker);
    let collector = Collector::start_bare(data.path(), None, &[]);
    let url = collector.url();
    rt().block_on(async {
        // A per-sensor credential cannot publish under another name...
        let (_, e) = publish(&url, &attacker, vec![batch("v-id", "victim", [1])]).await;
        assert_refused(e, Code::PermissionDenied, &["\"attacker\""]);
        // ...and the victim's id with a huge seq under its own name touches only its own keys.
        let (a, e) = publish(
            &url,
            &attacker,
            vec![batch("v-id", "attacker", [i64::MAX as u64])],
        )
        .await;
        assert!(e.is_none(), "{e:?}");
        assert_eq!(stored(&a), 1);
        // The victim's events are all stored: 2,000 acknowledged, 2,000 stored.
        let batches = (0..4)
            .map(|b| batch("v-id", "victim", b * 500 + 1..=b * 500 + 500))
            .collect();
        let (a, e) = publish(&url, &victim, batches).await;
        assert!(e.is_none(), "{e:?}");
        assert_eq!(stored(&a), 2000);
        // Without a token, nothing.
        let (_, e) = publish(&url, "xts_00", vec![batch("x", "victim", [1])]).await;
        assert_eq!(e.expect("refused").code(), Code::Unauthenticated);
    });
    assert_eq!(collector.stored_counts(), (2001, 2001));
    // Revocation ends the credential within seconds, open streams included: a stream
    // opened before the revocation gets its next batch refused.
    let rt2 = rt();
    let (tx, mut acks) = rt2.block_on(async {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut c = ingest_client(&url).await;
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        tx.send(batch("v-id", "victim", [2500])).await.unwrap();
        let mut acks = c
            .publish(with_token(stream, &victim))
            .await
            .expect("stream opened")
            .into_inner();
        let ack = acks.message().await.expect("ack").expect("ack");
        assert_eq!(ack.stored, 1);
        (tx, acks)
    });
    sensor_cmd(data.path(), "revoke", "victim");
    std::thread::sleep(Duration::from_secs(3));
    rt2.block_on(async {
        tx.send(batch("v-id", "victim", [2501])).await.unwrap();
        let e = acks
            .message()
            .await
            .expect_err("refused on the open stream");
        assert_eq!(e.code(), Code::Unauthenticated, "{e}");
        assert!(e.message().contains("revoked"), "{e}");
        let (_, e) = publish(&url, &victim, vec![batch("v-id", "victim", [3000])]).await;
        assert_eq!(e.expect("revoked").code(), Code::Unauthenticated);
    });
    // A credential added while the collector runs works at once.
    let late = sensor_cmd(data.path(), "add", "late");
    rt().block_on(async {
        let (a, e) = publish(&url, &late, vec![batch("l-id", "late", [1, 2])]).await;
        assert!(e.is_none(), "{e:?}");
        assert_eq!(stored(&a), 2);
    });
    let list = sensor_cmd(data.path(), "list", "--");
    assert!(
        list.contains("victim") && list.contains("revoked"),
        "{list}"
    );
}

#[test]
fn a_shared_token_cannot_silence_a_sensor_either() {
    let data = tempdir("trust-shared");
    let collector = Collector::start(data.path(), None, &[]);
    let url = collector.url();
    rt().block_on(async {
        // The attack that used to raise the victim's high-water mark.
        let (a, e) = publish(
            &url,
            SENSOR_TOKEN,
            vec![batch("victim", "victim", [i64::MAX as u64])],
        )
        .await;
        assert!(e.is_none(), "{e:?}");
        assert_eq!(stored(&a), 1);
        let batches = (0..4)
            .map(|b| batch("victim", "victim", b * 500 + 1..=b * 500 + 500))
            .collect();
        let (a, e) = publish(&url, SENSOR_TOKEN, batches).await;
        assert!(e.is_none(), "{e:?}");
        assert_eq!(stored(&a), 2000, "every later event stored");
    });
}

#[test]
fn one_identity_used_twice_is_refused_not_dropped() {
    let data = tempdir("trust-twice");
    let collector = Collector::start(data.path(), None, &[]);
    let url = collector.url();
    rt().block_on(async {
        // Host A and host B, configured alike: same id, same seqs, different events.
        let (a, e) = publish(&url, SENSOR_TOKEN, vec![batch("gw", "gw", 1..=100)]).await;
        assert!(e.is_none());
        assert_eq!(stored(&a), 100);
        let mut other = batch("gw", "gw", 50..=150);
        for ev in &mut other.events {
            ev.trail = format!("host-b-{}", ev.seq);
        }
        let (a, e) = publish(&url, SENSOR_TOKEN, vec![other]).await;
        assert!(a.is_empty(), "nothing acknowledged: {a:?}");
        assert_refused(
            e,
            Code::FailedPrecondition,
            &["two publishers share one identity"],
        );
        // A true resend is acknowledged as duplicates and stored once.
        let (a, e) = publish(&url, SENSOR_TOKEN, vec![batch("gw", "gw", 1..=100)]).await;
        assert!(e.is_none());
        assert_eq!((a[0].stored, a[0].duplicates), (0, 100));
    });
    assert_eq!(collector.stored_counts(), (100, 100));
    assert_eq!(rejected(&collector, "conflict"), 1);
}

#[test]
fn sequence_size_and_field_limits_say_no() {
    let data = tempdir("trust-limits");
    let collector = Collector::start(data.path(), None, &[]);
    let url = collector.url();
    rt().block_on(async {
        // Backwards across batches of one stream.
        let (a, e) = publish(
            &url,
            SENSOR_TOKEN,
            vec![batch("s", "s", 10..=20), batch("s", "s", 5..=8)],
        )
        .await;
        assert_eq!(a.len(), 1, "the first batch is stored and acknowledged");
        assert_refused(e, Code::InvalidArgument, &["across batches"]);
        // A 17 MiB batch: refused out loud, naming the limit (not a silent OK).
        let mut big = batch("s", "s", 100..=100);
        big.events[0].info = "x".repeat(17 << 20);
        let (a, e) = publish(&url, SENSOR_TOKEN, vec![big]).await;
        assert!(a.is_empty());
        assert_refused(e, Code::ResourceExhausted, &["16777216 bytes"]);
        // A 15 MiB field: refused, naming the field and its limit.
        let mut fat = batch("s", "s", 200..=200);
        fat.events[0].info = "x".repeat(15 << 20);
        let mut c = ingest_client(&url).await;
        let limits = c
            .get_limits(with_token(v1::GetLimitsRequest {}, SENSOR_TOKEN))
            .await
            .expect("limits")
            .into_inner();
        assert_eq!(limits.max_batch_events, 10_000);
        assert_eq!(limits.max_info_bytes, 1024);
        fat.events[0].info = "x".repeat(limits.max_info_bytes as usize + 1);
        let (_, e) = publish(&url, SENSOR_TOKEN, vec![fat]).await;
        assert_refused(e, Code::InvalidArgument, &["info", "1024 bytes"]);
    });
    assert_eq!(collector.stored_counts(), (11, 11));
    assert_eq!(rejected(&collector, "batch_size"), 1);
    assert_eq!(rejected(&collector, "field_size"), 1);
    assert_eq!(rejected(&collector, "sequence"), 1);
}

#[test]
fn filters_answer_alike_live_stored_and_replayed() {
    let data = tempdir("trust-fold");
    let collector = Collector::start(data.path(), None, &[]);
    let url = collector.url();
    let filter = v1::Filter {
        trail_contains: "ärger".into(),
        info_contains: "ÜBEL".into(),
        ..Default::default()
    };
    rt().block_on(async {
        let mut c = events_client(&url).await;
        let mut live = c
            .subscribe(with_token(
                SubscribeRequest {
                    filter: Some(filter.clone()),
                    start: None,
                },
                SUB_TOKEN,
            ))
            .await
            .unwrap()
            .into_inner();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut b = batch("u", "u", 1..=3);
        b.events[0].trail = "ÄRGER.example".into();
        b.events[0].info = "übel (malware)".into();
        b.events[1].trail = "ärger.example".into();
        b.events[1].info = "Übel".into();
        let (_, e) = publish(&url, SENSOR_TOKEN, vec![b]).await;
        assert!(e.is_none());
        let mut live_seqs = Vec::new();
        for _ in 0..2 {
            let ev = tokio::time::timeout(Duration::from_secs(10), live.message())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            live_seqs.push(ev.seq);
        }
        let q = c
            .query(with_token(
                v1::QueryRequest {
                    filter: Some(filter.clone()),
                    order: v1::Order::OldestFirst as i32,
                    ..Default::default()
                },
                SUB_TOKEN,
            ))
            .await
            .unwrap()
            .into_inner();
        let stored: Vec<u64> = q.events.iter().map(|e| e.seq).collect();
        let mut replay = c
            .subscribe(with_token(
                SubscribeRequest {
                    filter: Some(filter),
                    start: Some(Start::AfterCursor(0)),
                },
                SUB_TOKEN,
            ))
            .await
            .unwrap()
            .into_inner();
        let mut replayed = Vec::new();
        for _ in 0..2 {
            let ev = tokio::time::timeout(Duration::from_secs(10), replay.message())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            replayed.push(ev.seq);
        }
        assert_eq!(live_seqs, [1, 2]);
        assert_eq!(stored, live_seqs, "query");
        assert_eq!(replayed, live_seqs, "replaying subscribe");
    });
}

#[test]
fn pages_are_bounded_in_bytes_and_fields_in_lists() {
    let data = tempdir("trust-pages");
    let collector = Collector::start(data.path(), None, &[]);
    let url = collector.url();
    // 400 events at the field limits: about 17 KB each, 6.8 MB in all.
    rt().block_on(async {
        let batches = (0..4)
            .map(|b| {
                let mut r = batch("p", "p", b * 100 + 1..=b * 100 + 100);
                for ev in &mut r.events {
                    ev.trail = "t".repeat(4096);
                    ev.info = "i".repeat(1024);
                    ev.reference = "r".repeat(1024);
                    ev.http = Some(v1::HttpDetails {
                        method: Some("GET".into()),
                        host: Some("h".repeat(1024)),
                        path: Some("/".repeat(8192)),
                        user_agent: Some("<script>".repeat(256)),
                    });
                }
                r
            })
            .collect();
        let (a, e) = publish(&url, SENSOR_TOKEN, batches).await;
        assert!(e.is_none(), "{e:?}");
        assert_eq!(stored(&a), 400);
        // gRPC: a page of "10000" stops near the byte budget and says more follows.
        let mut c = events_client(&url).await;
        let q = c
            .query(with_token(
                v1::QueryRequest {
                    limit: 10_000,
                    ..Default::default()
                },
                SUB_TOKEN,
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(q.events.len() < 400, "{}", q.events.len());
        assert!(!q.next_page_token.is_empty());
        let bytes: usize = q.events.iter().map(prost::Message::encoded_len).sum();
        assert!(bytes < 5 << 20, "{bytes}");
    });
    // HTTP: a list of 100 previews, each field cut, the whole event by cursor.
    let (code, body) = collector.http_get("/api/events?limit=100", Some(SUB_TOKEN));
    assert_eq!(code, 200);
    assert!(body.len() < 400_000, "{} bytes", body.len());
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let first = &v["events"][0];
    assert_eq!(first["truncated"], true);
    assert_eq!(first["trail"].as_str().unwrap().len(), 512);
    let cursor = first["cursor"].as_u64().unwrap();
    let (code, body) = collector.http_get(&format!("/api/events/{cursor}"), Some(SUB_TOKEN));
    assert_eq!(code, 200);
    let whole: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(whole["trail"].as_str().unwrap().len(), 4096);
    assert_eq!(collector.http_get("/api/events/1", None).0, 401);
    assert_eq!(
        collector.http_get("/api/events/999999", Some(SUB_TOKEN)).0,
        404
    );
}

#[test]
fn failed_logins_are_throttled_per_source() {
    let data = tempdir("trust-throttle");
    let collector = Collector::start(data.path(), None, &[]);
    let url = collector.url();
    rt().block_on(async {
        let mut codes = Vec::new();
        for i in 0..30 {
            let (_, e) = publish(&url, &format!("guess-{i}"), vec![batch("g", "g", [1])]).await;
            codes.push(e.expect("refused").code());
        }
        assert!(
            codes[..20].iter().all(|c| *c == Code::Unauthenticated),
            "{codes:?}"
        );
        assert!(
            codes[20..].iter().all(|c| *c == Code::ResourceExhausted),
            "{codes:?}"
        );
        // From the throttled source even the right token waits for the window.
        let (_, e) = publish(&url, SENSOR_TOKEN, vec![batch("g", "g", [1])]).await;
        assert_eq!(e.expect("throttled").code(), Code::ResourceExhausted);
    });
    assert_eq!(collector.http_get("/api/events", Some("nope")).0, 429);
    assert!(metric(&collector, "xtrail_auth_throttled_total") >= 11);
}

/// Opens `n` TCP connections that never send a byte.
fn idle_connections(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok())
        .collect()
}

#[test]
fn a_connection_flood_on_http_leaves_ingest_reachable() {
    let data = tempdir("trust-flood");
    let collector = Collector::start(
        data.path(),
        None,
        &["--http-idle-seconds", "2", "--max-http-connections", "300"],
    );
    let url = collector.url();
    // 3,000 idle, half-open connections from one source: at most 64 are kept.
    let flood = idle_connections(collector.http, 3000);
    assert!(flood.len() > 1000, "{}", flood.len());
    // gRPC ingest (a sensor) is still reachable at once.
    let started = Instant::now();
    rt().block_on(async {
        let (a, e) = publish(&url, SENSOR_TOKEN, vec![batch("f", "f", 1..=10)]).await;
        assert!(e.is_none(), "{e:?}");
        assert_eq!(stored(&a), 10);
    });
    assert!(started.elapsed() < Duration::from_secs(5));
    // HTTP from another source still answers (the scrapes below come from there too: the
    // flood's source is at its limit).
    let health = get_from_other(collector.http, "/api/health");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let metric = |name: &str| -> u64 {
        let body = get_from_other(collector.http, "/metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {body}"))
    };
    // The flood holds at most the per-source limit; the rest were refused as they were
    // accepted (connections the kernel's full accept queue never completed are not counted).
    let refused = metric("xtrail_connections_refused_total{listener=\"http\"}");
    assert!(refused >= 1000, "{refused} of {}", flood.len());
    // A gauge read again for a bounded while until `ok`: an earlier scrape's or health
    // check's connection leaves it when its task has ended, which may be just after the next
    // scrape arrives (CI saw 66 and, after the idle timeout, 2).
    let open_until = |ok: &dyn Fn(u64) -> bool| {
        let open = || metric("xtrail_connections_open{listener=\"http\"}");
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut now_open = open();
        while !ok(now_open) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            now_open = open();
        }
        now_open
    };
    let open = open_until(&|n| n <= 64 + 1);
    assert!(open <= 64 + 1, "{open}");
    // The idle ones are closed after the idle timeout.
    std::thread::sleep(Duration::from_secs(4));
    assert!(metric("xtrail_connections_idle_closed_total") >= 60);
    assert_eq!(open_until(&|n| n == 1), 1, "only the scrape itself");
    drop(flood);
}

/// GET `path` from source address 127.0.0.2: the whole response.
fn get_from_other(http: std::net::SocketAddr, path: &str) -> String {
    let other = std::net::SocketAddr::new("127.0.0.2".parse().unwrap(), 0);
    let mut s = socket2_connect(other, http).expect("connect from 127.0.0.2");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    buf
}

/// A TCP connection from a chosen local address.
fn socket2_connect(
    local: std::net::SocketAddr,
    remote: std::net::SocketAddr,
) -> std::io::Result<TcpStream> {
    // SAFETY: plain socket calls on a descriptor we own; sockaddr_in is filled in full.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let sin = |a: std::net::SocketAddr| {
            let std::net::SocketAddr::V4(v4) = a else {
                unreachable!()
            };
            libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            }
        };
        let l = sin(local);
        let r = sin(remote);
        let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
        let stream = <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd);
        if libc::bind(fd, (&raw const l).cast(), len) != 0
            || libc::connect(fd, (&raw const r).cast(), len) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}
