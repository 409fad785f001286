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
    let watched = xtrail_bench::child::spawn_watched(&mut cmd, Some("sensor: "))
        .expect("start xtrail-sensor");
    if let Err(e) = watched.wait_for("attached to", "error:", std::time::Duration::from_secs(60)) {
        panic!("sensor did not attach: {e}");
    }
    watched
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

/// A fresh directory for one test, named after it and this process.
pub fn tempdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("xtrail-{tag}-{}", std::process::id()));
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
