//! The collector binary (`target/debug/xtrail-collector`, built if missing) for the
//! publisher's tests against a real collector process, and a subscriber that reads back
//! what it stored.
#![allow(dead_code)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tonic::metadata::MetadataValue;
use xtrail_detect::event::{Action, Details, Event, EventType, Severity};
use xtrail_proto::v1::events_client::EventsClient;
use xtrail_proto::v1::{self, subscribe_request::Start, SubscribeRequest};

pub const SENSOR_TOKEN: &str = "t-sensor";
pub const SUB_TOKEN: &str = "t-sub";

/// The collector binary beside this test's target directory (built if missing).
pub fn collector_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("xtrail-collector");
    if !bin.exists() {
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "-p",
                "xtrail-collector",
                "--bin",
                "xtrail-collector",
            ])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .expect("cargo build");
        assert!(status.success());
    }
    bin
}

/// A collector process; killed on drop.
pub struct Collector {
    child: Child,
    pub grpc: String,
}

impl Collector {
    /// Starts the collector on `data` with the shared sensor token and `extra` flags;
    /// `grpc` is an address or `127.0.0.1:0`.
    pub fn start(data: &Path, grpc: &str, extra: &[&str]) -> Collector {
        let mut child = Command::new(collector_bin())
            .arg("--data-dir")
            .arg(data)
            .args(["--grpc", grpc, "--http", "127.0.0.1:0"])
            .args([
                "--sensor-token",
                SENSOR_TOKEN,
                "--subscriber-token",
                SUB_TOKEN,
            ])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start collector");
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
        let grpc = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("grpc="))
            .expect("listening line")
            .to_string();
        Collector { child, grpc }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `xtrail-collector sensor add NAME`: the new per-sensor token.
pub fn add_sensor(data: &Path, name: &str) -> String {
    let out = Command::new(collector_bin())
        .args(["sensor", "add", name, "--data-dir"])
        .arg(data)
        .output()
        .expect("sensor add");
    assert!(
        out.status.success(),
        "sensor add {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A URL where nothing listens (yet): the port can be given to a collector later.
pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// Everything stored, from the first cursor, until `want` arrived or nothing came for
/// `idle`.
pub fn stored(url: &str, want: usize, idle: Duration) -> Vec<v1::Event> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = EventsClient::connect(url.to_string())
            .await
            .expect("connect")
            .max_decoding_message_size(64 << 20);
        let mut req = tonic::Request::new(SubscribeRequest {
            filter: None,
            start: Some(Start::AfterCursor(0)),
        });
        let auth: MetadataValue<_> = format!("Bearer {SUB_TOKEN}").parse().unwrap();
        req.metadata_mut().insert("authorization", auth);
        let mut s = c.subscribe(req).await.expect("subscribe").into_inner();
        let mut got = Vec::new();
        let end = Instant::now() + Duration::from_secs(120);
        while got.len() < want && Instant::now() < end {
            match tokio::time::timeout(idle, s.message()).await {
                Ok(Ok(Some(ev))) => got.push(ev),
                _ => break,
            }
        }
        got
    })
}

/// Sample event `i` of sensor `sensor`.
pub fn event(sensor: &str, i: u32) -> Event {
    Event {
        ts_us: 1_786_094_062_000_000 + i64::from(i),
        sensor: sensor.into(),
        src_ip: "198.18.0.1".parse().unwrap(),
        src_port: 1234,
        dst_ip: "198.19.0.1".parse().unwrap(),
        dst_port: 80,
        proto: "TCP".into(),
        kind: EventType::Url,
        trail: format!("trail-{i}"),
        info: "suspicious".into(),
        reference: "(static)".into(),
        severity: Severity::Medium,
        action: Action::Pass,
        iface: None,
        trail_set_version: String::new(),
        details: Details::default(),
    }
}
