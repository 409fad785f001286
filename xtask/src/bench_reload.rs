//! Trail set hot reload (`cargo xtask bench --only reload`): the sensor runs with Maltrail's
//! full static tree as a compiled set (`reference/trails.csv` compiled) and reloads it on
//! SIGHUP several times. Per reload: time from SIGHUP to the sensor's "trails reloaded"
//! line, the phases that line gives (load, kernel fill, new set live, old set emptied), the
//! sensor's RSS before, at its peak during the swap and after (`VmHWM` reset per reload),
//! and the kernel memory of its BPF maps (`memlock` of every map descriptor in
//! `/proc/PID/fdinfo`, sampled every millisecond during the swap for its peak). Figures go
//! to `bench/results/reload.{json,md}` and a `- Trail reload` line of `latest.md`.
//! `XTRAIL_BENCH_SENSOR` names another sensor binary (to compare builds).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use xtrail_bench::child::{interrupt_and_wait, spawn_watched, Watched};
use xtrail_bench::netns::VethPair;

use crate::bench_nic::median;
use crate::paths;

/// One reload's figures (times in seconds, memory in MiB).
#[derive(Clone, Debug, Default)]
pub struct Reload {
    /// SIGHUP to the "trails reloaded" line.
    pub total_s: f64,
    pub load_s: f64,
    pub fill_s: f64,
    /// Request taken to new set selected in the kernel (0 when the sensor does not say).
    pub live_s: f64,
    pub emptied_s: f64,
    pub rss_before: f64,
    pub rss_peak: f64,
    pub rss_after: f64,
    pub maps_before: f64,
    pub maps_peak: f64,
    pub maps_after: f64,
}

/// The runs of one sensor binary.
pub struct ReloadRun {
    pub binary: String,
    pub file_mb: f64,
    pub reloads: Vec<Reload>,
}

/// Sum of `memlock` over the BPF map descriptors of `pid`, in bytes.
fn map_bytes(pid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return 0;
    };
    let mut sum = 0;
    for e in dir.flatten() {
        let Ok(info) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        if !info.contains("map_type:") {
            continue;
        }
        sum += info
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    sum
}

/// The number after `key` in `line` (`key` ends right before it).
fn after(line: &str, key: &str) -> f64 {
    line.split_once(key)
        .and_then(|(_, rest)| {
            let n: String = rest
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            n.parse().ok()
        })
        .unwrap_or(0.0)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

/// Starts the sensor on `set` and reloads it `n` times.
fn reloads(binary: &Path, set: &Path, n: usize) -> anyhow::Result<Vec<Reload>> {
    let pair = VethPair::create("xrl").context("veth pair")?;
    let mut cmd = pair.in_sensor_ns(&binary.to_string_lossy());
    cmd.args(["run", "--iface", &pair.sensor_if, "--trails"])
        .arg(set)
        .args(["--format", "json", "--stats-interval", "0"])
        .args(["--sensor-name", "bench", "--no-flood-guard"])
        .stdout(Stdio::null());
    let watched = spawn_watched(&mut cmd, None).context("starting xtrail-sensor")?;
    let attached = watched.wait_for("attached to", "error:", Duration::from_secs(120));
    let Watched { mut child, lines } = watched;
    let pid = child.id();
    let result = (|| -> anyhow::Result<Vec<Reload>> {
        attached.map_err(|e| anyhow::anyhow!("the sensor did not attach: {e}"))?;
        // Let the start settle (the detector's first set, freed pages).
        std::thread::sleep(Duration::from_millis(500));
        let mut out = Vec::new();
        for i in 0..n {
            let before = map_bytes(pid);
            let peak = Arc::new(AtomicU64::new(before));
            let done = Arc::new(AtomicBool::new(false));
            let sampler = {
                let (peak, done) = (Arc::clone(&peak), Arc::clone(&done));
                std::thread::spawn(move || {
                    while !done.load(Ordering::Relaxed) {
                        peak.fetch_max(map_bytes(pid), Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(1));
                    }
                })
            };
            let t0 = Instant::now();
            // SAFETY: kill(2) on our own child's pid (`ip netns exec` execs the sensor).
            unsafe { libc::kill(pid as i32, libc::SIGHUP) };
            let line = loop {
                let l = lines
                    .recv_timeout(Duration::from_secs(60))
                    .context("no reload line within 60 s")?;
                if l.contains("trails reloaded") {
                    break l;
                }
                anyhow::ensure!(!l.contains("reload (SIGHUP) refused"), "{l}");
            };
            let total_s = t0.elapsed().as_secs_f64();
            done.store(true, Ordering::Relaxed);
            let _ = sampler.join();
            let r = Reload {
                total_s,
                load_s: after(&line, "; load "),
                fill_s: after(&line, "kernel fill "),
                live_s: after(&line, "live after "),
                emptied_s: after(&line, " entries) in "),
                rss_before: after(&line, "RSS before "),
                rss_peak: after(&line, "MiB, peak "),
                rss_after: after(&line, "MiB, after "),
                maps_before: mib(before),
                maps_peak: mib(peak.load(Ordering::Relaxed)),
                maps_after: mib(map_bytes(pid)),
            };
            eprintln!(
                "bench: reload {}: {:.3} s (load {:.3}, fill {:.3}, live {:.3}, emptied {:.3}); RSS {:.0} / peak {:.0} / {:.0} MiB; BPF maps {:.1} / peak {:.1} / {:.1} MiB",
                i + 1,
                r.total_s,
                r.load_s,
                r.fill_s,
                r.live_s,
                r.emptied_s,
                r.rss_before,
                r.rss_peak,
                r.rss_after,
                r.maps_before,
                r.maps_peak,
                r.maps_after
            );
            out.push(r);
            // The next SIGHUP after the detector took the set (its old one is freed then).
            std::thread::sleep(Duration::from_millis(300));
        }
        Ok(out)
    })();
    interrupt_and_wait(&mut child, Duration::from_secs(20));
    drop(lines);
    result
}

/// Compiles the reference tree and measures the reloads of the sensor binary
/// (`XTRAIL_BENCH_SENSOR` or the release build).
pub fn measure(quick: bool, tmp: &Path) -> anyhow::Result<ReloadRun> {
    let (_, path, set, len) = crate::bench_startup::compile_reference("reload", tmp)?;
    drop(set);
    let file_mb = len as f64 / 1048576.0;
    let binary = std::env::var_os("XTRAIL_BENCH_SENSOR")
        .map(PathBuf::from)
        .unwrap_or_else(paths::sensor_binary);
    let n = if quick { 3 } else { 10 };
    Ok(ReloadRun {
        binary: binary.display().to_string(),
        file_mb,
        reloads: reloads(&binary, &path, n)?,
    })
}

fn largest(v: impl Iterator<Item = f64>) -> f64 {
    v.fold(0.0, f64::max)
}

/// The `- Trail reload` line of `latest.md`.
pub fn line(r: &ReloadRun) -> String {
    let m = |f: fn(&Reload) -> f64| median(r.reloads.iter().map(f).collect());
    let x = |f: fn(&Reload) -> f64| largest(r.reloads.iter().map(f));
    format!(
        "- Trail reload of the full static tree (compiled, {:.1} MB; {} SIGHUPs, medians): {:.3} s from SIGHUP to reloaded (load {:.3} s, kernel fill {:.3} s, new set live after {:.3} s, old set emptied in {:.3} s); RSS {:.0} MiB before, peak {:.0} MiB (largest {:.0}), {:.0} MiB after; BPF maps {:.1} MiB before, peak {:.1} MiB (largest {:.1}), {:.1} MiB after (load average {}).",
        r.file_mb,
        r.reloads.len(),
        m(|x| x.total_s),
        m(|x| x.load_s),
        m(|x| x.fill_s),
        m(|x| x.live_s),
        m(|x| x.emptied_s),
        m(|x| x.rss_before),
        m(|x| x.rss_peak),
        x(|x| x.rss_peak),
        m(|x| x.rss_after),
        m(|x| x.maps_before),
        m(|x| x.maps_peak),
        x(|x| x.maps_peak),
        m(|x| x.maps_after),
        crate::host::loadavg(1)
    )
}

/// Writes `reload.json`, `reload.md` and the `- Trail reload` line of `latest.md`.
pub fn write(dir: &Path, r: &ReloadRun) -> anyhow::Result<String> {
    let when = crate::host::utc_now();
    let rows: Vec<String> = r
        .reloads
        .iter()
        .map(|x| {
            format!(
                "{{\"total_s\":{:.3},\"load_s\":{:.3},\"fill_s\":{:.3},\"live_s\":{:.3},\"emptied_s\":{:.3},\"rss_before_mib\":{:.0},\"rss_peak_mib\":{:.0},\"rss_after_mib\":{:.0},\"maps_before_mib\":{:.1},\"maps_peak_mib\":{:.1},\"maps_after_mib\":{:.1}}}",
                x.total_s, x.load_s, x.fill_s, x.live_s, x.emptied_s, x.rss_before, x.rss_peak, x.rss_after, x.maps_before, x.maps_peak, x.maps_after
            )
        })
        .collect();
    std::fs::write(
        dir.join("reload.json"),
        format!(
            "{{\"taken\":\"{when}\",\"load_average\":\"{}\",\"file_mb\":{:.1},\"reloads\":[\n{}\n]}}\n",
            crate::host::loadavg(1),
            r.file_mb,
            rows.join(",\n")
        ),
    )?;
    let mut md = format!(
        "# Trail reload, taken {when} (1-minute load average at the end: {})\n\nSensor binary: `{}`. The sensor runs with the full static tree compiled ({:.1} MB) and is sent SIGHUP; per reload: seconds from SIGHUP to its \"trails reloaded\" line and the phases it reports (load, kernel fill, new set live in the kernel and userspace, old set emptied), RSS before / peak during (VmHWM, reset per reload) / after in MiB, and the kernel memory of its BPF maps (sum of `memlock`, sampled every ms) before / peak / after in MiB.\n\n| # | total s | load s | fill s | live s | emptied s | RSS before | RSS peak | RSS after | maps before | maps peak | maps after |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        crate::host::loadavg(1),
        r.binary,
        r.file_mb
    );
    for (i, x) in r.reloads.iter().enumerate() {
        md.push_str(&format!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} |\n",
            i + 1,
            x.total_s,
            x.load_s,
            x.fill_s,
            x.live_s,
            x.emptied_s,
            x.rss_before,
            x.rss_peak,
            x.rss_after,
            x.maps_before,
            x.maps_peak,
            x.maps_after
        ));
    }
    std::fs::write(dir.join("reload.md"), md)?;
    let l = line(r);
    crate::results::set_latest_line(dir, "- Trail reload", &l)?;
    Ok(l)
}

/// `--only reload`: measures and writes; the other scenarios' figures stay.
pub fn only(quick: bool) -> anyhow::Result<()> {
    crate::results::run_only("reload", |tmp| measure(quick, tmp), write)
}
