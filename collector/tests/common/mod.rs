//! Helpers for the collector's integration tests: the real binary on loopback ports, unique
//! data directories, sample events, and a resuming subscriber.
#![allow(dead_code)]

pub mod netns;
pub mod pg;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use xtrail_detect::event::{Action, Details, Event, EventType, Severity};
use xtrail_proto::v1::events_client::EventsClient;
use xtrail_proto::v1::ingest_client::IngestClient;
use xtrail_proto::v1::{self, subscribe_request::Start, SubscribeRequest};

pub const SENSOR_TOKEN: &str = "sensor-secret";
pub const SUB_TOKEN: &str = "subscriber-secret";

/// A collector process; killed on drop.
pub struct Collector {
    pub child: Child,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub data_dir: PathBuf,
}

impl Collector {
    /// Starts the binary on `data_dir` with the shared test tokens; `grpc` None binds
    /// port 0.
    pub fn start(data_dir: &Path, grpc: Option<SocketAddr>, extra: &[&str]) -> Collector {
        let mut args = vec!["--sensor-token", SENSOR_TOKEN];
        args.extend_from_slice(extra);
        Collector::start_bare(data_dir, grpc, &args)
    }

    /// Starts the binary with only the subscriber token: sensors need a per-sensor
    /// credential (`sensor add`) unless `extra` gives a shared one.
    pub fn start_bare(data_dir: &Path, grpc: Option<SocketAddr>, extra: &[&str]) -> Collector {
        let grpc_arg = grpc.map_or_else(|| "127.0.0.1:0".to_string(), |a| a.to_string());
        let mut child = Command::new(env!("CARGO_BIN_EXE_xtrail-collector"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--grpc", &grpc_arg, "--http", "127.0.0.1:0"])
            .args(["--subscriber-token", SUB_TOKEN])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn collector");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("collector did not report its ports");
        let mut grpc = None;
        let mut http = None;
        for part in line.split_whitespace() {
            if let Some(a) = part.strip_prefix("grpc=") {
                grpc = a.parse().ok();
            }
            if let Some(a) = part.strip_prefix("http=") {
                http = a.parse().ok();
            }
        }
        Collector {
            child,
            grpc: grpc.expect("grpc address"),
            http: http.expect("http address"),
            data_dir: data_dir.to_path_buf(),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// (rows, distinct (sensor_id, seq)) in the store, read directly.
    pub fn stored_counts(&self) -> (i64, i64) {
        let db = rusqlite::Connection::open_with_flags(
            self.data_dir.join("events.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open db");
        db.query_row(
            "SELECT count(*), (SELECT count(*) FROM (SELECT DISTINCT sensor_id, seq FROM events)) FROM events",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("count")
    }

    /// GET a path on the HTTP port: (status, body).
    pub fn http_get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        let r = xtrail_bench::http::request(self.http, "GET", path, &headers, "").expect("http");
        (r.status, r.body)
    }
}

/// Publishes `events` through a real publisher (`cfg`) and waits up to `flush` for the
/// collector to acknowledge them all; the publisher, for its stats.
pub fn publish_all(
    cfg: xtrail_publish::PublisherConfig,
    events: &[Event],
    flush: Duration,
) -> xtrail_publish::Publisher {
    let p = xtrail_publish::Publisher::start(cfg).expect("publisher");
    for e in events {
        p.publish(e).expect("publish");
    }
    p.flush(flush)
        .expect("events acknowledged by the collector");
    p
}

/// Now, in microseconds since the epoch (event time).
pub fn now_us() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(d.as_micros()).expect("time fits")
}

/// Checks what subscriber `name` received: every event of `sent` once, in cursor and
/// sequence order, from sensor identity `sensor_id`, field for field.
pub fn assert_received(name: &str, got: &[v1::Event], sent: &[Event], sensor_id: &str) {
    assert_eq!(got.len(), sent.len(), "{name}: count");
    assert!(
        got.windows(2).all(|w| w[1].cursor > w[0].cursor),
        "{name}: cursor order"
    );
    assert!(
        got.windows(2).all(|w| w[1].seq > w[0].seq),
        "{name}: seq order"
    );
    for (wire, orig) in got.iter().zip(sent) {
        assert_eq!(wire.sensor_id, sensor_id);
        let back = Event::try_from(wire).expect("valid event");
        assert_eq!(&back, orig, "{name}: fields of cursor {}", wire.cursor);
    }
}

/// `xtrail-collector sensor ACTION NAME --data-dir DIR`: its stdout (the token for `add`).
pub fn sensor_cmd(data_dir: &Path, action: &str, name: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_xtrail-collector"))
        .args(["sensor", action])
        .args((name != "--").then_some(name))
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .expect("run sensor command");
    assert!(
        out.status.success(),
        "sensor {action} {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Test certificates: a CA and a server certificate for localhost / 127.0.0.1 signed by
/// it (`ca.pem`, `c.pem`, `k.pem`), and an unrelated CA (`other-ca.pem`). None when
/// openssl is missing.
pub fn make_certs(dir: &Path) -> Option<()> {
    let script = "set -e
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \\
            -subj /CN=xtrail-test-ca -keyout ca.key -out ca.pem
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \\
            -subj /CN=xtrail-other-ca -keyout other-ca.key -out other-ca.pem
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \\
            -subj /CN=localhost -keyout k.pem -out c.csr
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\n' > ext.cnf
        openssl x509 -req -in c.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \\
            -extfile ext.cnf -out c.pem";
    let made = std::process::Command::new("sh")
        .args(["-c", script])
        .current_dir(dir)
        .stderr(std::process::Stdio::null())
        .status();
    made.is_ok_and(|s| s.success()).then_some(())
}

/// A fresh directory under the system temp dir, removed on drop.
pub fn tempdir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("xtrail-{tag}-"))
        .tempdir()
        .expect("tempdir")
}

/// Sample event `i`: every field set, details varying by type.
pub fn sample(i: u32) -> Event {
    let kinds = [
        EventType::Dns,
        EventType::Http,
        EventType::Ip,
        EventType::Cert,
    ];
    let kind = kinds[(i % 4) as usize];
    let mut details = Details::default();
    match kind {
        EventType::Dns => {
            details.dns_query = Some(format!("q{i}.evil.example"));
            details.dns_qtype = Some("A".into());
        }
        EventType::Http => {
            details.http_method = Some("GET".into());
            details.http_host = Some("evil.example".into());
            details.http_path = Some(format!("/p/{i}"));
            details.http_user_agent = Some("curl/8.0".into());
        }
        EventType::Cert => details.tls_sni = Some("evil.example".into()),
        _ => {}
    }
    Event {
        ts_us: 1_786_094_062_000_000 + i64::from(i),
        sensor: "gw-test".into(),
        src_ip: format!("198.18.{}.{}", (i >> 8) & 0xff, i & 0xff)
            .parse()
            .unwrap(),
        src_port: (1024 + i % 60000) as u16,
        dst_ip: if i.is_multiple_of(5) {
            "2001:db8::7".parse().unwrap()
        } else {
            "198.19.0.1".parse().unwrap()
        },
        dst_port: 53,
        proto: "UDP".into(),
        kind,
        trail: format!("trail-{i}.evil.example"),
        info: if i.is_multiple_of(3) {
            "asyncrat (malware)".into()
        } else {
            "suspicious".into()
        },
        reference: "(static)".into(),
        severity: [Severity::Low, Severity::Medium, Severity::High][(i % 3) as usize],
        action: if i.is_multiple_of(7) {
            Action::Drop
        } else {
            Action::Pass
        },
        iface: i.is_multiple_of(2).then(|| "eth0".into()),
        trail_set_version: String::new(),
        details,
    }
}

pub async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_string())
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect")
}

pub fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    let v: MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
    req.metadata_mut().insert("authorization", v);
    req
}

pub async fn events_client(url: &str) -> EventsClient<Channel> {
    EventsClient::new(channel(url).await).max_decoding_message_size(64 << 20)
}

pub async fn ingest_client(url: &str) -> IngestClient<Channel> {
    IngestClient::new(channel(url).await)
}

/// A live-only subscriber, joined before this returns: a task on `rt` collecting up to `n`
/// events (each waited for at most 60 s).
pub fn live_subscriber(
    rt: &tokio::runtime::Runtime,
    url: &str,
    n: usize,
) -> tokio::task::JoinHandle<Vec<v1::Event>> {
    let mut s = rt.block_on(async {
        let mut c = events_client(url).await;
        c.subscribe(with_token(SubscribeRequest::default(), SUB_TOKEN))
            .await
            .expect("live subscribe")
            .into_inner()
    });
    rt.spawn(async move {
        let mut got = Vec::new();
        while got.len() < n {
            match tokio::time::timeout(Duration::from_secs(60), s.message()).await {
                Ok(Ok(Some(ev))) => got.push(ev),
                _ => break,
            }
        }
        got
    })
}

/// Subscribes from `after` and collects events until `want` arrived or `deadline`; on a
/// broken stream it reconnects and resumes after the last cursor seen (as a SIEM would).
/// Returns the events and how many times it resumed.
pub async fn collect_resuming(
    url: String,
    after: u64,
    want: usize,
    deadline: Duration,
) -> (Vec<v1::Event>, u32) {
    let end = Instant::now() + deadline;
    let mut got: Vec<v1::Event> = Vec::new();
    let mut resumes = 0;
    while got.len() < want && Instant::now() < end {
        let from = got.last().map_or(after, |e| e.cursor);
        let attempt = async {
            let ch = Channel::from_shared(url.clone())
                .unwrap()
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            let mut c = EventsClient::new(ch);
            let req = SubscribeRequest {
                filter: None,
                start: Some(Start::AfterCursor(from)),
            };
            let mut s = c
                .subscribe(with_token(req, SUB_TOKEN))
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            loop {
                match tokio::time::timeout_at(end.into(), s.message()).await {
                    Ok(Ok(Some(ev))) => {
                        got.push(ev);
                        if got.len() >= want {
                            return Ok::<(), String>(());
                        }
                    }
                    Ok(Ok(None)) => return Err("stream ended".into()),
                    Ok(Err(st)) => return Err(st.to_string()),
                    Err(_) => return Ok(()),
                }
            }
        };
        if attempt.await.is_err() {
            resumes += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    (got, resumes)
}
