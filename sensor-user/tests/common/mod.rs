//! Shared helpers for the sensor's privileged tests.
#![allow(dead_code)]

/// True when this process may load BPF programs. Without the privilege the test is skipped
/// with a message, except under `CI=true`, where a missing privilege fails the test.
pub fn privileged(test: &str) -> bool {
    match xtrail_sensor::privilege::check() {
        Ok(()) => true,
        Err(e) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{test}: CI=true and the test cannot run: {e}");
            }
            eprintln!("SKIPPED {test}: {e}");
            false
        }
    }
}

/// Starts `xtrail-sensor run` on the sensor end of `pair` (JSON events to `log` under sensor
/// name `name`, no periodic stats, then `extra`) and waits until it has attached.
pub fn start_sensor(
    pair: &xtrail_bench::netns::VethPair,
    trails: &std::path::Path,
    log: &std::path::Path,
    name: &str,
    extra: &[&str],
) -> xtrail_bench::child::Watched {
    start_sensor_said(pair, trails, log, name, extra).0
}

/// [`start_sensor`], with the lines the sensor wrote until it had attached.
pub fn start_sensor_said(
    pair: &xtrail_bench::netns::VethPair,
    trails: &std::path::Path,
    log: &std::path::Path,
    name: &str,
    extra: &[&str],
) -> (xtrail_bench::child::Watched, Vec<String>) {
    let mut cmd = pair.in_sensor_ns(env!("CARGO_BIN_EXE_xtrail-sensor"));
    cmd.args(["run", "--iface", &pair.sensor_if, "--trails"])
        .arg(trails)
        .arg("--events-log")
        .arg(log)
        .args([
            "--format",
            "json",
            "--sensor-name",
            name,
            "--stats-interval",
            "0",
        ])
        .args(extra)
        .stdout(std::process::Stdio::null());
    spawn_attached(&mut cmd, "error:", std::time::Duration::from_secs(60))
}

/// Spawns the sensor command `cmd` (stderr watched, echoed as "sensor: ") and waits up to
/// `timeout` until it has attached; panics when a line with `failed` comes first. Returns
/// it and the lines it wrote until then.
pub fn spawn_attached(
    cmd: &mut std::process::Command,
    failed: &str,
    timeout: std::time::Duration,
) -> (xtrail_bench::child::Watched, Vec<String>) {
    let watched =
        xtrail_bench::child::spawn_watched(cmd, Some("sensor: ")).expect("start xtrail-sensor");
    match watched.wait_for("attached to", failed, timeout) {
        Ok(lines) => (watched, lines),
        Err(e) => panic!("sensor did not attach: {e}"),
    }
}

/// SIGINT, a clean exit, and the sensor's final stats line.
pub fn stop_sensor(watched: xtrail_bench::child::Watched) -> String {
    let xtrail_bench::child::Watched { mut child, lines } = watched;
    let status =
        xtrail_bench::child::interrupt_and_wait(&mut child, std::time::Duration::from_secs(20))
            .expect("sensor did not exit on SIGINT");
    assert!(status.success(), "sensor exited with {status}");
    let mut last = String::new();
    while let Ok(line) = lines.recv_timeout(std::time::Duration::from_millis(500)) {
        if line.contains("final stats") {
            last = line;
        }
    }
    last
}

/// A counter of a sensor's final stats line; a missing counter (or line) fails the test.
pub fn counter(stats: &str, name: &str) -> u64 {
    stats
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no counter {name} in the final stats: {stats:?}"))
}

/// A fresh directory for one test, named after it and this process.
pub fn tempdir(tag: &str) -> std::path::PathBuf {
    tempdir_in(&std::env::temp_dir(), tag)
}

/// [`tempdir`] under `base`.
pub fn tempdir_in(base: &std::path::Path, tag: &str) -> std::path::PathBuf {
    let d = base.join(format!("xtrail-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// The collector binary next to this test's target directory (built if missing).
pub fn collector_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test path");
    let dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target dir");
    let bin = dir.join("xtrail-collector");
    if !bin.exists() {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "-p", "xtrail-collector"])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .expect("cargo build");
        assert!(status.success());
    }
    bin
}

/// The reference corpus (pcaps and trails), or None (the test skipped with a message) when
/// it is missing; under `CI=true` a missing corpus fails the test.
pub fn corpus() -> Option<std::path::PathBuf> {
    let p = std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/maltrail/corpus"
    ));
    if p.is_dir() {
        return Some(p);
    }
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "CI=true and {} is missing",
        p.display()
    );
    eprintln!("SKIPPED: {} not found", p.display());
    None
}

/// The JSON events in log `log` (none while it does not exist).
pub fn events(log: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    // The sensor may be writing: a last line without its newline is not complete yet.
    let complete = text.rfind('\n').map_or("", |i| &text[..=i]);
    complete
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON event line"))
        .collect()
}

/// SIGHUP to our own child `pid` (a sensor's or a collector's reload).
pub fn sighup(pid: u32) {
    signal(pid, libc::SIGHUP);
}

/// Sends `sig` to our own child `pid` (SIGSTOP / SIGCONT stall and resume its readers while
/// the XDP program keeps running).
pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) with a valid signal on our own child.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(rc, 0, "signal {sig} to {pid}");
}

/// One HTTP/1.1 request to `addr` (from inside network namespace `ns` when given).
pub fn http(
    ns: Option<&str>,
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> xtrail_bench::http::Response {
    match ns {
        Some(ns) => xtrail_bench::http::request_in(ns, addr, method, path, headers, body),
        None => xtrail_bench::http::request(addr, method, path, headers, body),
    }
    .unwrap_or_else(|e| panic!("{method} http://{addr}{path}: {e}"))
}

/// `GET path` on `addr` (from inside network namespace `ns` when given): the body.
pub fn http_get(ns: Option<&str>, addr: &str, path: &str) -> String {
    http(ns, addr, "GET", path, &[], "").body
}

/// Compiles trails CSV `source` into a set signed with `seed`, written to `out`:
/// (its version, its bytes).
pub fn compile_signed(
    source: &std::path::Path,
    seed: &[u8; 32],
    built_at: u64,
    out: &std::path::Path,
) -> (String, Vec<u8>) {
    use xtrail_detect::trails::{compiled, CompileOptions, LoadOptions, TrailSet};
    let set = TrailSet::load(&[source.to_path_buf()], &LoadOptions::default()).expect("trails");
    let bytes = compiled::write(
        &set,
        &CompileOptions {
            built_at,
            signing_key: Some(*seed),
            meta: serde_json::json!({}),
        },
    );
    let version = compiled::read_header(&bytes).expect("header").version;
    compiled::write_atomic(out, &bytes).expect("write set");
    (version, bytes)
}

/// The collector binary, run inside network namespace `ns` when given.
fn collector_cmd(ns: Option<&str>) -> std::process::Command {
    match ns {
        Some(ns) => {
            let mut c = std::process::Command::new("ip");
            c.args(["netns", "exec", ns]).arg(collector_bin());
            c
        }
        None => std::process::Command::new(collector_bin()),
    }
}

/// The shared sensor token of [`Collector::with_tokens`].
pub const SENSOR_TOKEN: &str = "sensor-secret";
/// The subscriber token of [`Collector::with_tokens`].
pub const SUB_TOKEN: &str = "siem-secret";

/// A collector process on loopback ports (of network namespace `ns` when given); killed on
/// drop.
pub struct Collector {
    pub child: std::process::Child,
    /// The gRPC address.
    pub grpc: String,
    /// The HTTP address.
    pub http: String,
}

impl Collector {
    /// Starts the collector binary on `data` (inside namespace `ns` when given), gRPC on
    /// `grpc` (`127.0.0.1:0` for any port), HTTP on any port, with `args` after those, and
    /// waits for the line that says where it listens.
    pub fn start<S: AsRef<std::ffi::OsStr>>(
        ns: Option<&str>,
        data: &std::path::Path,
        grpc: &str,
        args: &[S],
    ) -> Collector {
        use std::io::BufRead as _;
        let mut child = collector_cmd(ns)
            .arg("--data-dir")
            .arg(data)
            .args(["--grpc", grpc, "--http", "127.0.0.1:0"])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start collector");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("collector output");
        let word = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .unwrap_or_else(|| panic!("no {k} in {line:?}"))
                .to_string()
        };
        Collector {
            grpc: word("grpc="),
            http: word("http="),
            child,
        }
    }

    /// [`Collector::start`] with the shared [`SENSOR_TOKEN`] and [`SUB_TOKEN`].
    pub fn with_tokens(ns: Option<&str>, data: &std::path::Path, grpc: &str) -> Collector {
        Collector::start(
            ns,
            data,
            grpc,
            &[
                "--sensor-token",
                SENSOR_TOKEN,
                "--subscriber-token",
                SUB_TOKEN,
            ],
        )
    }

    /// The gRPC URL sensors are given.
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

/// The first `n` events the collector at `url` stores, from cursor 0, as JSON lines
/// through the reference subscriber (run inside namespace `ns` when given) with `token`.
pub fn subscribe(url: &str, token: &str, n: usize, ns: Option<&str>) -> Vec<String> {
    let out = collector_cmd(ns)
        .args(["subscribe", "--collector", url, "--token", token])
        .args(["--from", "0", "--max-events", &n.to_string()])
        .stderr(std::process::Stdio::null())
        .output()
        .expect("subscribe");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}
