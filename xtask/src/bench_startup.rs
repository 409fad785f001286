//! Sensor start (`cargo xtask bench --only startup`): time from `xtrail-sensor run` to
//! "attached" and to the first event for an injected trail hit ("detecting"), and the
//! sensor's peak RSS (`VmHWM`), with Maltrail's full static tree as its `trails.csv`
//! (`reference/trails.csv`) and as a compiled set of the same trails. Goals (issue #13):
//! detecting within 0.2 s with the compiled set, peak RSS at most half the CSV's size.
//! Figures go to `bench/results/startup.{json,md}` and a line of `latest.md`, with the
//! sensor's own timing of each phase of its start (median seconds since its start, from its
//! `start phases` debug line; less sensitive to other load than the wall-clock figures).

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use xtrail_bench::child::{interrupt_and_wait, spawn_watched, Watched};
use xtrail_bench::frames::Frame;
use xtrail_bench::netns::VethPair;
use xtrail_detect::trails::{compiled, CompileOptions, LoadOptions, TrailSet};

use crate::bench_nic::median;
use crate::paths;

/// One source's figures (medians over the runs, and the largest peak RSS).
pub struct StartupRun {
    pub source: String,
    pub file_mb: f64,
    pub runs: usize,
    pub attached_s: f64,
    pub detecting_s: f64,
    /// Largest `VmHWM` of the runs.
    pub peak_rss_mb: f64,
    /// Median `VmHWM`.
    pub median_peak_rss_mb: f64,
    /// Median `VmRSS` once detecting (what the running sensor holds).
    pub rss_mb: f64,
    /// The sensor's start phases: (name, median seconds since its start), in order.
    pub phases: Vec<(String, f64)>,
}

/// The pairs of the sensor's `start phases (s since start): name=0.012 ...` line.
fn parse_phases(line: &str) -> Vec<(String, f64)> {
    let Some((_, rest)) = line.split_once("start phases (s since start):") else {
        return Vec::new();
    };
    rest.split_whitespace()
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            let v = v.trim_end_matches(')');
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// Per phase, the median over the runs that have it, ordered by that median.
fn median_phases(runs: &[Vec<(String, f64)>]) -> Vec<(String, f64)> {
    let mut names: Vec<&str> = Vec::new();
    for r in runs {
        for (n, _) in r {
            if !names.contains(&n.as_str()) {
                names.push(n);
            }
        }
    }
    let mut out: Vec<(String, f64)> = names
        .iter()
        .map(|n| {
            let v = runs
                .iter()
                .filter_map(|r| r.iter().find(|(k, _)| k == n).map(|(_, s)| *s))
                .collect();
            (n.to_string(), median(v))
        })
        .collect();
    // Phases by time, then the threads' CPU times (`cpu.` names).
    out.sort_by(|a, b| {
        (a.0.starts_with("cpu."), a.1)
            .partial_cmp(&(b.0.starts_with("cpu."), b.1))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    out
}

/// A `/proc/PID/status` memory field (`VmHWM:`, `VmRSS:`) of the sensor in MB (the
/// `ip netns exec` child execs it, same pid).
fn status_mb(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The sensor's start phases: (name, seconds since its start).
type Phases = Vec<(String, f64)>;

/// One start: (attached s, detecting s, peak RSS MB, RSS MB once detecting, the sensor's
/// start phases).
fn start_once(
    trails: &Path,
    hits: &[Ipv4Addr],
    tmp: &Path,
) -> anyhow::Result<(f64, f64, f64, f64, Phases)> {
    let pair = VethPair::create("xst").context("veth pair")?;
    let log = tmp.join("startup-events.jsonl");
    let _ = std::fs::remove_file(&log);
    let mut cmd = pair.in_sensor_ns(&paths::sensor_binary().to_string_lossy());
    cmd.args(["run", "--iface", &pair.sensor_if, "--trails"])
        .arg(trails)
        .arg("--events-log")
        .arg(&log)
        .args(["--format", "json", "--stats-interval", "0"])
        .args(["--sensor-name", "bench", "--no-flood-guard"])
        .env("RUST_LOG", "info,xtrail_sensor::startup=debug")
        .stdout(Stdio::null());
    // The injector (a packet socket in the peer's namespace, 20-40 ms to set up) is made
    // before the sensor starts: its set-up is not the sensor's.
    let inj = pair.injector().context("injector")?;
    let me = IpAddr::V4(pair.peer_ip.parse().context("peer address")?);
    let t0 = Instant::now();
    let watched = spawn_watched(&mut cmd, None).context("starting xtrail-sensor")?;
    let attached = watched.wait_for("attached to", "error:", Duration::from_secs(120));
    let attached_s = t0.elapsed().as_secs_f64();
    let Watched { mut child, lines } = watched;
    if let Err(e) = attached {
        interrupt_and_wait(&mut child, Duration::from_secs(10));
        anyhow::bail!("the sensor did not attach: {e}");
    }
    // Trail hits, one every 2 ms, until the first event (at most 5 s).
    let mut detecting_s = None;
    // When the first hit left the injector (the bench's own set-up after "attached").
    let mut first_sent = None;
    for (i, hit) in hits.iter().cycle().take(2_500).enumerate() {
        let f = Frame::syn(me, 20_000 + (i % 40_000) as u16, IpAddr::V4(*hit), 443).build();
        let _ = inj.send(&f);
        first_sent.get_or_insert_with(|| t0.elapsed().as_secs_f64());
        if std::fs::metadata(&log).is_ok_and(|m| m.len() > 0) {
            detecting_s = Some(t0.elapsed().as_secs_f64());
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let peak = status_mb(child.id(), "VmHWM:");
    let rss = status_mb(child.id(), "VmRSS:");
    // The phases line follows "attached".
    let mut phases = Vec::new();
    while let Ok(l) = lines.recv_timeout(Duration::from_millis(500)) {
        phases = parse_phases(&l);
        if !phases.is_empty() {
            break;
        }
    }
    interrupt_and_wait(&mut child, Duration::from_secs(20));
    drop(lines);
    let detecting_s = detecting_s.context("no event for the injected trail hits within 5 s")?;
    if let Some(sent) = first_sent {
        phases.push(("bench.first_hit_sent".into(), sent));
    }
    Ok((attached_s, detecting_s, peak, rss, phases))
}

/// The reference `trails.csv` loaded and compiled (unsigned) into `tmp/trails.xtrails` for
/// bench `bench`: (the CSV, the compiled file, the set, the file's size in bytes).
pub fn compile_reference(
    bench: &str,
    tmp: &Path,
) -> anyhow::Result<(PathBuf, PathBuf, TrailSet, usize)> {
    let csv = paths::maltrail_data().join("reference/trails.csv");
    anyhow::ensure!(csv.is_file(), "{} not found", csv.display());
    eprintln!("bench: {bench}: compiling {}", csv.display());
    let set = TrailSet::load(std::slice::from_ref(&csv), &LoadOptions::default())?;
    let built_at = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let bytes = compiled::write(
        &set,
        &CompileOptions {
            built_at,
            signing_key: None,
            meta: serde_json::json!({ "bench": bench }),
        },
    );
    let path = tmp.join("trails.xtrails");
    compiled::write_atomic(&path, &bytes)?;
    Ok((csv, path, set, bytes.len()))
}

/// Measures both sources; `Err` when the reference CSV is missing or a start fails.
pub fn measure(quick: bool, tmp: &Path) -> anyhow::Result<Vec<StartupRun>> {
    let (csv, set_path, set, _) = compile_reference("startup", tmp)?;
    // Hits: IPv4 trails spread over the table (a few may be whitelisted).
    let step = (set.ip.v4.len() / 32).max(1);
    let hits: Vec<Ipv4Addr> = set
        .ip
        .v4
        .iter()
        .step_by(step)
        .map(|(a, _)| Ipv4Addr::from(a))
        .filter(|a| !a.is_private() && !a.is_loopback())
        .take(32)
        .collect();
    anyhow::ensure!(!hits.is_empty(), "no IPv4 trail to inject");
    drop(set);
    // The sensor's own start and memory (XDP program load, BPF maps, ring buffer) with one
    // trail, to tell them from what the trail set costs.
    let one = tmp.join("one-trail.csv");
    std::fs::write(&one, format!("{},bench (malware),(bench)\n", hits[0]))?;
    let n = if quick { 1 } else { 5 };
    let mut out = Vec::new();
    let sources: [(&str, PathBuf); 3] = [
        ("one trail", one),
        ("trails.csv", csv),
        ("compiled", set_path),
    ];
    for (name, path) in sources {
        let file_mb = std::fs::metadata(&path).map_or(0.0, |m| m.len() as f64 / 1048576.0);
        let (mut a, mut d, mut peaks, mut rss) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut phases = Vec::new();
        for i in 0..n {
            let (att, det, peak, held, ph) = start_once(&path, &hits, tmp)
                .with_context(|| format!("start {} with {name}", i + 1))?;
            eprintln!(
                "bench: startup: {name}: attached {att:.3} s, detecting {det:.3} s, peak RSS {peak:.1} MB, RSS {held:.1} MB; phases {}",
                ph.iter().map(|(k, v)| format!("{k}={v:.3}")).collect::<Vec<_>>().join(" ")
            );
            phases.push(ph);
            a.push(att);
            d.push(det);
            peaks.push(peak);
            rss.push(held);
        }
        let worst = peaks.iter().copied().fold(0f64, f64::max);
        out.push(StartupRun {
            source: name.into(),
            file_mb,
            runs: n,
            attached_s: median(a),
            detecting_s: median(d),
            peak_rss_mb: worst,
            median_peak_rss_mb: median(peaks),
            rss_mb: median(rss),
            phases: median_phases(&phases),
        });
    }
    Ok(out)
}

fn json(runs: &[StartupRun], when: &str) -> String {
    let rows: Vec<String> = runs
        .iter()
        .map(|r| {
            let phases: Vec<String> = r
                .phases
                .iter()
                .map(|(k, v)| format!("{{\"phase\":\"{k}\",\"s\":{v:.3}}}"))
                .collect();
            format!(
                "{{\"source\":\"{}\",\"file_mb\":{:.1},\"runs\":{},\"attached_s\":{:.3},\"detecting_s\":{:.3},\"peak_rss_mb\":{:.1},\"median_peak_rss_mb\":{:.1},\"rss_mb\":{:.1},\"phases\":[{}]}}",
                r.source, r.file_mb, r.runs, r.attached_s, r.detecting_s, r.peak_rss_mb, r.median_peak_rss_mb, r.rss_mb, phases.join(",")
            )
        })
        .collect();
    format!(
        "{{\"taken\":\"{when}\",\"load_average\":\"{}\",\"startup\":[\n{}\n]}}\n",
        crate::host::loadavg(1),
        rows.join(",\n")
    )
}

/// The one-line summary for `latest.md` (starts with `- Sensor start`).
pub fn line(runs: &[StartupRun]) -> String {
    let csv_mb = runs
        .iter()
        .find(|r| r.source == "trails.csv")
        .map_or(0.0, |r| r.file_mb);
    let base = runs.iter().find(|r| r.source == "one trail");
    let ratio = |mb: f64| if csv_mb > 0.0 { mb / csv_mb } else { 0.0 };
    let parts: Vec<String> = runs
        .iter()
        .map(|r| match base {
            Some(b) if r.source != b.source => format!(
                "{} {:.2} s to attached, {:.2} s to detecting, RSS {:.0} MB once detecting ({:.2}x the CSV), peak RSS median {:.0} MB ({:.2}x), largest {:.0} MB ({:.2}x; the set itself +{:.2} s, +{:.0} MB = {:.2}x)",
                r.source,
                r.attached_s,
                r.detecting_s,
                r.rss_mb,
                ratio(r.rss_mb),
                r.median_peak_rss_mb,
                ratio(r.median_peak_rss_mb),
                r.peak_rss_mb,
                ratio(r.peak_rss_mb),
                r.detecting_s - b.detecting_s,
                r.peak_rss_mb - b.peak_rss_mb,
                ratio(r.peak_rss_mb - b.peak_rss_mb)
            ),
            _ => format!(
                "{} {:.2} s to attached, {:.2} s to detecting, peak RSS {:.0} MB",
                r.source, r.attached_s, r.detecting_s, r.peak_rss_mb
            ),
        })
        .collect();
    format!(
        "- Sensor start with the full static tree ({csv_mb:.1} MB trails.csv; goal with the compiled set: ≤ 0.2 s, RSS ≤ 0.5x): {}.",
        parts.join("; ")
    )
}

/// Writes `startup.json`, `startup.md` and the `- Sensor start` line of `latest.md`.
pub fn write(dir: &Path, runs: &[StartupRun]) -> anyhow::Result<String> {
    let when = crate::host::utc_now();
    std::fs::write(dir.join("startup.json"), json(runs, &when))?;
    let mut md = format!(
        "# Sensor start, taken {when} (1-minute load average at the end: {})\n\nTime from `xtrail-sensor run` to \"attached\" and to the first event for injected trail hits (sent every 2 ms from the moment \"attached\" is read, by an injector set up before the sensor starts), RSS once detecting (VmRSS, median) and peak RSS (VmHWM: median and largest of the runs); times are medians. \"one trail\" is the sensor's own cost (XDP program load and verification, BPF maps, the three mapped ring buffers, whose data pages count twice); the rows below include it.\n\n| trails | file MB | runs | attached s | detecting s | RSS MB | peak RSS MB (median) | peak RSS MB (largest) |\n|---|---|---|---|---|---|---|---|\n",
        crate::host::loadavg(1)
    );
    for r in runs {
        md.push_str(&format!(
            "| {} | {:.1} | {} | {:.3} | {:.3} | {:.1} | {:.1} | {:.1} |\n",
            r.source,
            r.file_mb,
            r.runs,
            r.attached_s,
            r.detecting_s,
            r.rss_mb,
            r.median_peak_rss_mb,
            r.peak_rss_mb
        ));
    }
    md.push_str("\nThe sensor's start phases (its `start phases` debug line): when each step finished, in seconds since the process started, median of the runs (`bench.first_hit_sent`: when the bench sent its first trail hit, counted from the sensor's spawn); `cpu.` rows: the CPU time (user and system) of the thread that did a step, up to that step. Threads overlap: the BTF/feature probe, the trail set (and its checksum thread), the whitelist and the user-agent patterns, then the program's verification beside the maps' fill and the detector's set-up.\n\n| phase |");
    for r in runs {
        md.push_str(&format!(" {} |", r.source));
    }
    md.push_str("\n|---|");
    md.push_str(&"---|".repeat(runs.len()));
    md.push('\n');
    let mut names: Vec<&str> = Vec::new();
    for r in runs.iter().rev() {
        for (n, _) in &r.phases {
            if !names.contains(&n.as_str()) {
                names.push(n);
            }
        }
    }
    for n in names {
        md.push_str(&format!("| {n} |"));
        for r in runs {
            match r.phases.iter().find(|(k, _)| k == n) {
                Some((_, v)) => md.push_str(&format!(" {v:.3} |")),
                None => md.push_str(" |"),
            }
        }
        md.push('\n');
    }
    std::fs::write(dir.join("startup.md"), md)?;
    let l = line(runs);
    crate::results::set_latest_line(dir, "- Sensor start", &l)?;
    Ok(l)
}

/// `--only startup`: measures and writes; the other scenarios' figures stay.
pub fn only(quick: bool) -> anyhow::Result<()> {
    crate::results::run_only("startup", |tmp| measure(quick, tmp), |dir, r| write(dir, r))
}
