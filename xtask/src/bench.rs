//! `cargo xtask bench`: throughput, cost per packet and detection under load, on veth pairs.
//!
//! A benchmark, not a test: it reports figures and plots and never fails on a number. Each
//! scenario runs the release sensor on one end of a fresh veth pair and the generator
//! (`xtrail_bench::gen`) on the other; results go to `bench/results/` as JSON, a Markdown
//! table and SVG plots.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context as _;
use xtrail_bench::child::{spawn_watched, Watched};
use xtrail_bench::gen::{self, SendReport};
use xtrail_bench::netns::{in_ns, VethPair};
use xtrail_bench::scenario::{self, Traffic, TrailPicks};
use xtrail_detect::trails::{LoadOptions, TrailSet};
use xtrail_detect::whitelist::Whitelist;

use crate::bench_ingest::{self, IngestRun};
use crate::paths;

/// Options of a bench run.
pub struct BenchOptions {
    pub quick: bool,
    pub peer: Option<String>,
    /// Offline replay by another sensor (`{pcap}` substituted).
    pub peer_replay: Option<String>,
    pub seed: u64,
    /// Run only the scenarios whose name starts with one of these.
    pub only: Vec<String>,
    /// Extra arguments for `xtrail-sensor run`.
    pub sensor_args: Vec<String>,
    /// Rounds of the NIC-like runs (without `quick`).
    pub nic_rounds: usize,
}

/// One measured run.
#[derive(Clone, Debug, Default)]
struct Run {
    scenario: String,
    sensor: String,
    mode: String,
    trails: String,
    trail_count: usize,
    offered_rate: Option<u64>,
    offered: u64,
    send_pps: f64,
    /// `sendmmsg` calls a full socket refused, retried from the first frame not taken.
    send_retries: u64,
    received: u64,
    xdp_packets: u64,
    handed: u64,
    events: u64,
    reported: u64,
    suppressed: u64,
    ringbuf_full: u64,
    handoff_failed: u64,
    injected: usize,
    detected: usize,
    xdp_ns_per_packet: f64,
    softirq_ns_per_packet: f64,
    user_ns_per_packet: f64,
    user_ns_per_handed: f64,
    rss_mb: f64,
    load_s: f64,
    fill_s: f64,
    /// Busy CPU time of the whole machine (all CPUs, all modes) per packet offered: with the
    /// generator's share the same in every run, differences between runs are what each
    /// sensor costs.
    busy_ns_per_packet: f64,
    /// Offline replay: CPU of the sensor's process (all its threads) or, for `--peer-replay`,
    /// of its processes, per packet, set-up excluded.
    replay_cpu_ns_per_packet: Option<f64>,
}

impl Run {
    fn recall(&self) -> Option<f64> {
        (self.injected > 0).then(|| self.detected as f64 / self.injected as f64)
    }

    fn loss(&self) -> u64 {
        self.offered
            .saturating_sub(self.xdp_packets.min(self.received))
    }

    fn json(&self) -> String {
        let f = |x: f64| json_num(x, 3);
        format!(
            concat!(
                "{{\"scenario\":\"{}\",\"sensor\":\"{}\",\"mode\":\"{}\",\"trails\":\"{}\",\"trail_count\":{},",
                "\"offered_rate\":{},\"offered\":{},\"send_pps\":{},\"send_retries\":{},\"received\":{},\"xdp_packets\":{},",
                "\"handed_to_userspace\":{},\"events\":{},\"reported\":{},\"suppressed\":{},\"ringbuf_full\":{},",
                "\"handoff_failed\":{},\"injected\":{},\"detected\":{},\"recall\":{},\"xdp_ns_per_packet\":{},",
                "\"softirq_ns_per_packet\":{},\"user_ns_per_packet\":{},\"user_ns_per_handed\":{},",
                "\"rss_mb\":{},\"trail_load_s\":{},\"map_fill_s\":{},\"busy_ns_per_packet\":{},",
                "\"replay_cpu_ns_per_packet\":{}}}"
            ),
            self.scenario,
            self.sensor,
            self.mode,
            self.trails,
            self.trail_count,
            self.offered_rate.map(|r| r.to_string()).unwrap_or("null".into()),
            self.offered,
            f(self.send_pps),
            self.send_retries,
            self.received,
            self.xdp_packets,
            self.handed,
            self.events,
            self.reported,
            self.suppressed,
            self.ringbuf_full,
            self.handoff_failed,
            self.injected,
            self.detected,
            self.recall().map(f).unwrap_or("null".into()),
            f(self.xdp_ns_per_packet),
            f(self.softirq_ns_per_packet),
            f(self.user_ns_per_packet),
            f(self.user_ns_per_handed),
            f(self.rss_mb),
            f(self.load_s),
            f(self.fill_s),
            f(self.busy_ns_per_packet),
            self.replay_cpu_ns_per_packet.map(f).unwrap_or("null".into()),
        )
    }
}

/// CPU time (ns) of one process, its threads gone or alive, read from its CPU-time clock
/// (`clock_getcpuclockid`): exact, where /proc/PID/stat counts clock ticks (10 ms here: at
/// 100,000 packets one tick is 100 ns a packet). 0 for a process that is gone.
pub(crate) fn proc_cpu_ns(pid: u32) -> u64 {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return 0;
    };
    let mut clock: libc::clockid_t = 0;
    // SAFETY: clock_getcpuclockid writes one clock id into `clock`.
    if unsafe { libc::clock_getcpuclockid(pid, &mut clock) } != 0 {
        return 0;
    }
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The sum of two tick fields of `/proc/PID/stat` at `at` and `at + 1` (counted after the
/// ")" that ends the command name); 0 for a process that is gone.
fn stat_ticks(pid: u32, at: usize) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let after = stat.rsplit(')').next().unwrap_or("");
    after
        .split_whitespace()
        .skip(at)
        .take(2)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum()
}

/// Total softirq ticks over all CPUs from /proc/stat.
fn softirq_ticks() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(7).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Busy ticks of all CPUs (everything but idle and iowait) from /proc/stat.
pub(crate) fn busy_ticks() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines().next().map(|l| {
                l.split_whitespace()
                    .skip(1)
                    .take(8)
                    .enumerate()
                    .filter(|(i, _)| *i != 3 && *i != 4)
                    .filter_map(|(_, v)| v.parse::<u64>().ok())
                    .sum()
            })
        })
        .unwrap_or(0)
}

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

pub(crate) fn tick_ns() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1e9 / if hz > 0 { hz as f64 } else { 100.0 }
}

fn counter(stats: &str, name: &str) -> u64 {
    stats
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn seconds_after(line: &str, marker: &str) -> f64 {
    line.split(marker)
        .nth(1)
        .and_then(|s| s.split('s').next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Writes a trails.csv with the picks plus `n` other trails of the set (trail scale).
fn subset_csv(trails: &TrailSet, picks: &TrailPicks, n: usize, path: &Path) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let label = |id: u32| {
        trails
            .labels
            .get(id as usize)
            .map(|l| (l.info.replace('"', ""), l.reference.clone()))
            .unwrap_or_default()
    };
    for a in &picks.ips {
        writeln!(out, "{a},bench ip (malware),(bench)")?;
    }
    for d in &picks.domains {
        writeln!(out, "{d},bench domain (malware),(bench)")?;
    }
    for (h, p) in &picks.urls {
        writeln!(out, "{h}{p},bench url (malware),(bench)")?;
    }
    let mut written = 0;
    let per = n / 3;
    for (a, l) in trails.ip.v4.iter().take(per) {
        let (i, r) = label(l);
        writeln!(out, "{},\"{i}\",{r}", Ipv4Addr::from(a))?;
        written += 1;
    }
    for (d, l) in trails.domains.iter().take(per) {
        let (i, r) = label(l);
        writeln!(out, "{d},\"{i}\",{r}")?;
        written += 1;
    }
    for (u, l) in trails.urls.iter().take(n.saturating_sub(written)) {
        if u.contains([',', '"']) {
            continue;
        }
        let (i, r) = label(l);
        writeln!(out, "{u},\"{i}\",{r}")?;
    }
    Ok(())
}

pub(crate) struct Sensor {
    pub(crate) child: Child,
    lines: mpsc::Receiver<String>,
    load_s: f64,
    fill_s: f64,
}

/// Starts the sensor `binary` (the bench's: [`paths::sensor_binary`]) on `pair` and waits
/// until it is attached.
pub(crate) fn start_sensor(
    binary: &Path,
    pair: &VethPair,
    trails: &Path,
    mode: &str,
    log: &Path,
    extra: &[String],
) -> anyhow::Result<Sensor> {
    let mut cmd = pair.in_sensor_ns(&binary.to_string_lossy());
    cmd.args(["run", "--iface", &pair.sensor_if, "--trails"])
        .arg(trails)
        .args(["--mode", mode, "--events-log"])
        .arg(log)
        .args([
            "--format",
            "json",
            "--stats-interval",
            "0",
            "--sensor-name",
            "bench",
            // Recall is scored on every injected item: the output-rate guard (a product
            // setting, tested on its own) would hide items by design.
            "--no-flood-guard",
        ])
        .args(extra)
        .stdout(Stdio::null());
    let watched = spawn_watched(&mut cmd, None).context("starting xtrail-sensor")?;
    let seen = watched
        .wait_for("attached to", "error:", Duration::from_secs(180))
        .map_err(|e| anyhow::anyhow!("the sensor did not attach: {e}"))?;
    let seconds = |marker: &str| {
        seen.iter()
            .find(|l| l.contains(marker))
            .map(|l| seconds_after(l, marker))
            .unwrap_or(0.0)
    };
    let (load_s, fill_s) = (seconds("trails loaded in"), seconds("maps filled in"));
    let Watched { child, lines: rx } = watched;
    Ok(Sensor {
        child,
        lines: rx,
        load_s,
        fill_s,
    })
}

pub(crate) fn stop_child(child: &mut Child) {
    xtrail_bench::child::interrupt_and_wait(child, Duration::from_secs(20));
}

/// What the bench waits for on a `--peer`'s output (stdout or stderr) before measuring:
/// Maltrail's sensor prints `[^] running...` once its trails are loaded, its capture open and
/// its worker processes started.
pub(crate) const PEER_READY: &str = "running";
/// How long a `--peer` may take to print [`PEER_READY`] (Maltrail loads the 1.6M trails of
/// the reference set in Python, then zero-fills its capture ring).
const PEER_START: Duration = Duration::from_secs(600);
/// How long after a send a `--peer`'s log is complete: Maltrail writes the events whose
/// info holds one of its CONDENSE_ON_INFO_KEYWORDS ("scanner", "attacker", ...) merged,
/// every CONDENSED_EVENTS_FLUSH_PERIOD (10 s), and drops what is pending when it stops.
pub(crate) const PEER_LOG_FLUSH: Duration = Duration::from_secs(11);

/// A capture sensor started from a command line: `--peer`, the libpcap baseline, or
/// nothing (`sleep`). `{iface}`, `{trails}` and `{log}` are substituted.
pub(crate) struct Other {
    pub(crate) child: Child,
    /// The file the command was given for `{log}` (events in Maltrail's line format), when
    /// it takes one: its events are scored like xtrail's.
    pub(crate) log: Option<PathBuf>,
    /// The peer's output lines, kept read so that it never blocks on a full pipe.
    _output: Option<mpsc::Receiver<String>>,
}

impl Other {
    /// Starts `command` for sensor `name` in the sensor's namespace of `pair` and waits
    /// until it captures: for the peer until it prints [`PEER_READY`], else 3 s. `stdout`
    /// receives the baseline's output (the peer's goes to the watcher).
    pub(crate) fn start(
        pair: &VethPair,
        name: &str,
        command: &str,
        trails: &Path,
        log: &Path,
        stdout: Stdio,
    ) -> anyhow::Result<Other> {
        let takes_log = command.contains("{log}");
        let cmdline = command
            .replace("{iface}", &pair.sensor_if)
            .replace("{trails}", &trails.to_string_lossy())
            .replace("{log}", &log.to_string_lossy());
        let mut cmd = pair.in_sensor_ns("sh");
        let mut other = if name == "peer" {
            cmd.args(["-c", &format!("exec {cmdline} 1>&2")])
                .stdout(Stdio::null());
            let watched =
                spawn_watched(&mut cmd, None).with_context(|| format!("starting {cmdline}"))?;
            let ready = watched.wait_for(PEER_READY, "\u{0}", PEER_START);
            let mut other = Other {
                child: watched.child,
                log: None,
                _output: Some(watched.lines),
            };
            if let Err(e) = ready {
                other.stop();
                anyhow::bail!("the peer exited or printed no {PEER_READY:?} line: {e}");
            }
            other
        } else {
            cmd.args(["-c", &format!("exec {cmdline}")])
                .stdout(stdout)
                .stderr(Stdio::null());
            Other {
                child: cmd.spawn().with_context(|| format!("starting {cmdline}"))?,
                log: None,
                _output: None,
            }
        };
        std::thread::sleep(Duration::from_secs(if name == "peer" { 2 } else { 3 }));
        other.log = takes_log.then(|| log.to_path_buf());
        Ok(other)
    }

    /// Stops the sensor and whatever processes it forked: SIGINT, then SIGTERM after 5 s
    /// (Python ignores SIGINT when started with it ignored), SIGKILL after 20 s; then
    /// SIGKILL for any descendant left (a Maltrail worker whose parent was killed would
    /// poll its ring forever).
    pub(crate) fn stop(&mut self) {
        let tree = process_tree(self.child.id());
        let pid = self.child.id() as i32;
        let started = std::time::Instant::now();
        let mut sent_term = false;
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid, libc::SIGINT) };
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            let waited = started.elapsed();
            if waited > Duration::from_secs(20) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            if waited > Duration::from_secs(5) && !sent_term {
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGTERM) };
                sent_term = true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for pid in tree.into_iter().skip(1) {
            if Path::new(&format!("/proc/{pid}")).exists() {
                // SAFETY: kill(2) on a descendant of our own child, listed before it stopped.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
    }
}

/// `pid` and its descendants, from the parent pids in /proc (a sensor that forks workers,
/// such as Maltrail's with PROCESS_COUNT above 1).
pub(crate) fn process_tree(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter_map(|p| {
                    let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
                    let ppid = stat.rsplit(')').next()?.split_whitespace().nth(1)?;
                    Some((p, ppid.parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    tree
}

/// CPU time (ns) of a process tree: `pid` and its descendants ([`proc_cpu_ns`]), plus the
/// time of children they have reaped (cutime + cstime, in clock ticks: only a worker that
/// exits mid-run), so that such a worker still counts.
pub(crate) fn tree_cpu_ns(pid: u32) -> u64 {
    let tick = tick_ns();
    process_tree(pid)
        .into_iter()
        // cutime + cstime are fields 16 and 17 of /proc/PID/stat.
        .map(|p| proc_cpu_ns(p) + (stat_ticks(p, 13) as f64 * tick) as u64)
        .sum()
}

/// Waits after a send until the process tree of `pid` stops using CPU (at most two clock
/// ticks' worth, 20 ms, in 250 ms: an idle Maltrail's worker polling its ring takes about
/// one), at most `max`; returns the time waited. A capture sensor that queues
/// packets in userspace (Maltrail's ring between its capture process and its workers)
/// goes on working after the traffic ends, and that work is part of what the traffic cost.
pub(crate) fn settle(pid: u32, max: Duration) -> Duration {
    let step = Duration::from_millis(250);
    let started = std::time::Instant::now();
    let idle = (2.0 * tick_ns()) as u64;
    let mut last = tree_cpu_ns(pid);
    loop {
        std::thread::sleep(step);
        let now = tree_cpu_ns(pid);
        if now.saturating_sub(last) <= idle || started.elapsed() >= max {
            return started.elapsed();
        }
        last = now;
    }
}

fn send(
    pair: &VethPair,
    traffic: &Traffic,
    count: u64,
    rate: Option<u64>,
) -> anyhow::Result<SendReport> {
    let frames = traffic.frames.clone();
    let ns = pair.peer_ns.clone();
    let ifname = pair.peer_if.clone();
    let handle = in_ns(&pair.peer_ns, move || -> anyhow::Result<SendReport> {
        let inj = xtrail_bench::netns::Injector::open(&ns, &ifname)?;
        Ok(gen::blast(
            &inj,
            &frames,
            count,
            rate,
            Duration::from_secs(60),
        )?)
    });
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("generator thread panicked"))??
}

struct Case<'a> {
    scenario: &'a str,
    mode: &'a str,
    trails: &'a Path,
    trails_name: String,
    trail_count: usize,
    traffic: &'a Traffic,
    count: u64,
    rate: Option<u64>,
    extra: &'a [String],
}

fn run_xtrail(case: &Case<'_>, tmp: &Path) -> anyhow::Result<Run> {
    let pair = VethPair::create("xb")?;
    let log = tmp.join(format!(
        "events-{}-{}.jsonl",
        case.scenario,
        std::process::id()
    ));
    let _ = std::fs::remove_file(&log);
    let mut sensor = start_sensor(
        &paths::sensor_binary(),
        &pair,
        case.trails,
        case.mode,
        &log,
        case.extra,
    )?;
    let pid = sensor.child.id();
    let rx0 = pair.sensor_rx_packets()?;
    let (t0, s0, b0) = (proc_cpu_ns(pid), softirq_ticks(), busy_ticks());
    let report = send(&pair, case.traffic, case.count, case.rate)?;
    let b1 = busy_ticks();
    std::thread::sleep(Duration::from_millis(1500));
    let (t1, s1) = (proc_cpu_ns(pid), softirq_ticks());
    let rss = rss_mb(pid);
    let rx1 = pair.sensor_rx_packets()?;
    stop_child(&mut sensor.child);
    let mut stats = String::new();
    while let Ok(line) = sensor.lines.recv_timeout(Duration::from_millis(500)) {
        if line.contains("final stats") {
            stats = line;
        }
    }
    let events = logged_trails(&std::fs::read_to_string(&log).unwrap_or_default());
    let _ = std::fs::remove_file(&log);
    let missed: Vec<&scenario::Item> = case
        .traffic
        .items
        .iter()
        .filter(|item| !events.iter().any(|t| scenario::matches(item, t)))
        .collect();
    for m in missed.iter().take(5) {
        eprintln!("bench:   missed {:?} {}", m.kind, m.needle);
    }
    let detected = case.traffic.items.len() - missed.len();
    let packets = counter(&stats, "packets");
    let handed = counter(&stats, "copied") + counter(&stats, "redirected");
    let runs = counter(&stats, "xdp_runs");
    let run_ns = counter(&stats, "xdp_run_ns");
    let tick = tick_ns();
    Ok(Run {
        scenario: case.scenario.into(),
        sensor: "xtrail".into(),
        mode: case.mode.into(),
        trails: case.trails_name.clone(),
        trail_count: case.trail_count,
        offered_rate: case.rate,
        offered: report.sent,
        send_pps: report.pps(),
        send_retries: report.retries,
        received: rx1.saturating_sub(rx0),
        xdp_packets: packets,
        handed,
        events: events.len() as u64,
        reported: counter(&stats, "reported"),
        suppressed: counter(&stats, "suppressed"),
        ringbuf_full: counter(&stats, "ringbuf_full"),
        handoff_failed: counter(&stats, "handoff_failed"),
        injected: case.traffic.items.len(),
        detected,
        xdp_ns_per_packet: if runs > 0 {
            run_ns as f64 / runs as f64
        } else {
            f64::NAN
        },
        softirq_ns_per_packet: (s1 - s0) as f64 * tick / packets.max(1) as f64,
        user_ns_per_packet: t1.saturating_sub(t0) as f64 / packets.max(1) as f64,
        user_ns_per_handed: t1.saturating_sub(t0) as f64 / handed.max(1) as f64,
        rss_mb: rss,
        load_s: sensor.load_s,
        fill_s: sensor.fill_s,
        busy_ns_per_packet: (b1 - b0) as f64 * tick / report.sent.max(1) as f64,
        replay_cpu_ns_per_packet: None,
    })
}

/// A libpcap sensor (ours, or `--peer`) on the same traffic: its CPU per packet processed,
/// and its recall when the traffic holds items and the command takes `{log}`. Its CPU is its
/// process tree's (Maltrail forks workers), sampled once that tree stops working after the
/// send (at least 1.5 s, at most 60 s): what it queued is part of the cost. The machine's
/// busy time covers the send only, like the runs it is compared with.
fn run_other(
    name: &str,
    command: &str,
    scenario_name: &str,
    traffic: &Traffic,
    count: u64,
    trails: &Path,
    tmp: &Path,
) -> anyhow::Result<Run> {
    let pair = VethPair::create("xc")?;
    let log = tmp.join(format!("events-{name}-{scenario_name}.log"));
    let _ = std::fs::remove_file(&log);
    let mut other = Other::start(&pair, name, command, trails, &log, Stdio::piped())?;
    let pid = other.child.id();
    let rx0 = pair.sensor_rx_packets()?;
    let (t0, b0) = (tree_cpu_ns(pid), busy_ticks());
    let report = send(&pair, traffic, count, None);
    // Whole-machine busy time over the send only, as for xtrail's runs and the no-sensor
    // run it is compared with; the sensor's own CPU also after it.
    let b1 = busy_ticks();
    std::thread::sleep(Duration::from_millis(1500));
    let max = Duration::from_secs(60);
    if settle(pid, max) >= max {
        eprintln!("bench: {name}/{scenario_name}: still busy {max:?} after the send: its CPU is undercounted");
    }
    let t1 = tree_cpu_ns(pid);
    let rss = rss_mb(pid);
    let rx1 = pair.sensor_rx_packets()?;
    if other.log.is_some() && !traffic.items.is_empty() {
        std::thread::sleep(PEER_LOG_FLUSH);
    }
    other.stop();
    let report = report?;
    let mut out = String::new();
    if let Some(mut s) = other.child.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut s, &mut out);
    }
    let processed = counter(&out, "processed");
    let received = rx1.saturating_sub(rx0);
    let processed = if processed > 0 { processed } else { received };
    let detected = match &other.log {
        Some(log) if !traffic.items.is_empty() => {
            let events = logged_trails(&std::fs::read_to_string(log).unwrap_or_default());
            traffic
                .items
                .iter()
                .filter(|item| events.iter().any(|t| scenario::matches(item, t)))
                .count()
        }
        _ => 0,
    };
    let _ = std::fs::remove_file(&log);
    Ok(Run {
        scenario: scenario_name.into(),
        sensor: name.into(),
        mode: "capture".into(),
        trails: trails
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
        offered: report.sent,
        send_pps: report.pps(),
        send_retries: report.retries,
        received,
        xdp_packets: processed,
        injected: if other.log.is_some() {
            traffic.items.len()
        } else {
            0
        },
        detected,
        user_ns_per_packet: t1.saturating_sub(t0) as f64 / processed.max(1) as f64,
        xdp_ns_per_packet: f64::NAN,
        softirq_ns_per_packet: f64::NAN,
        user_ns_per_handed: f64::NAN,
        rss_mb: rss,
        busy_ns_per_packet: (b1 - b0) as f64 * tick_ns() / report.sent.max(1) as f64,
        ..Run::default()
    })
}

/// Offline replay: one pass of `xtrail-sensor replay` over a pcap of the mix, as the sensor
/// reports it (the time from the first packet read to the last event written; loading the
/// trails and building the pipeline excluded). One pass over distinct frames, so the regex
/// engines' warm-up and cold caches count as they would on a real capture, not the same
/// frames looped through a warm pipeline.
/// With `peer_replay`, the same pcap is then replayed by that command ([`peer_replay`]).
fn replay_offline(
    scenario: &str,
    frames: &[Vec<u8>],
    trails: &Path,
    tmp: &Path,
    trail_count: usize,
    peer_replay: Option<&str>,
) -> (anyhow::Result<Run>, Option<anyhow::Result<Run>>) {
    // XTRAIL_BENCH_PCAP keeps the mix as a pcap for profiling the replay path (the flows
    // beside it, `.flows.pcap`).
    let keep = std::env::var_os("XTRAIL_BENCH_PCAP")
        .map(PathBuf::from)
        .map(|p| match scenario {
            OFFLINE => p,
            _ => p.with_extension("flows.pcap"),
        });
    let pcap = keep.clone().unwrap_or_else(|| tmp.join("mix.pcap"));
    let written = write_replay_pcap(&pcap, frames);
    let ours =
        written.and_then(|()| replay_xtrail(scenario, &pcap, frames.len(), trails, trail_count));
    let peer = peer_replay.map(|command| {
        peer_replay_run(
            command,
            scenario,
            &pcap,
            frames.len(),
            trails,
            tmp,
            trail_count,
        )
    });
    if keep.is_none() {
        let _ = std::fs::remove_file(&pcap);
    }
    (ours, peer)
}

/// How the offline scenarios are run and timed (in latest.json).
const OFFLINE_METHOD: &str = "One pass of `xtrail-sensor replay` over a pcap of the mix (1,000,000 frames, 200,000 with --quick, 10 us apart; a ClientHello in two segments, half the mix's, is two frames of one flow), timed by the sensor from the first packet read to the last event written (loading trails and building the pipeline excluded); since 2026-12-07 16:00 the sensor reads the file ahead on a second thread, so beside that wall time it reports its process's CPU over the same span (every thread, from the process CPU clock) and the CPU ratio is xtrail's CPU over the peer's (until then: xtrail's wall time, its CPU then, over the peer's CPU). 'offline replay': distinct frames, every packet its own flow. 'offline replay, flows': the same frames as templates sent as the NIC-like generator sends them (xtrail_bench::flows::FlowFrames: background templates 8 packets per flow, 256 flows interleaved, each flow its own source address and port). --peer-replay on the same pcap: wall from its 'running' line to its exit (its end-of-run work included), CPU over the same span = its process tree's (getrusage of waited-for children) minus what the tree had used at its 'running' line (until 2026-12-07: minus a run on an empty pcap, whose start-up varied by more than the replay cost).";

/// The offline scenario with every packet its own flow ...
const OFFLINE: &str = "offline replay";
/// ... and with the same frames sent as flows ([`flow_sequence`]).
const OFFLINE_FLOWS: &str = "offline replay, flows";

/// `n` frames of `templates` as the NIC-like generator sends them: background templates
/// [`crate::bench_nic::FLOW_PACKETS`] times per flow, [`crate::bench_nic::WINDOW`] flows
/// interleaved, each flow from its own source address and port.
fn flow_sequence(templates: &[Vec<u8>], n: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    use crate::bench_nic::{FLOW_PACKETS, WINDOW};
    Ok(xtrail_bench::flows::sequence(
        templates,
        FLOW_PACKETS,
        WINDOW,
        n,
    )?)
}

/// Writes `frames` to `path` as a pcap, 10 µs apart.
fn write_replay_pcap(path: &Path, frames: &[Vec<u8>]) -> anyhow::Result<()> {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    xtrail_bench::pcapw::write_header(&mut w)?;
    let t0: i64 = 1_790_000_000_000_000;
    for (i, f) in frames.iter().enumerate() {
        xtrail_bench::pcapw::write_packet(&mut w, t0 + i as i64 * 10, f)?;
    }
    w.flush()?;
    Ok(())
}

/// One pass of `xtrail-sensor replay` over `pcap` (`packets` frames).
fn replay_xtrail(
    scenario: &str,
    pcap: &Path,
    packets: usize,
    trails: &Path,
    trail_count: usize,
) -> anyhow::Result<Run> {
    let out = Command::new(paths::sensor_binary())
        .arg("replay")
        .arg("--pcap")
        .arg(pcap)
        .arg("--trails")
        .arg(trails)
        .args(["--events-log", "/dev/null", "--format", "json"])
        .output()
        .context("running xtrail-sensor replay")?;
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.contains("ns/packet"))
        .unwrap_or("")
        .to_string();
    // "... in 0.326s (326 ns/packet, CPU 351 ns/packet)": wall, then the process's CPU.
    let figures = line.rsplit('(').next().unwrap_or("");
    let ns = figures
        .split(" ns/packet")
        .next()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    let cpu = figures
        .split("CPU ")
        .nth(1)
        .and_then(|s| s.split(" ns/packet").next())
        .and_then(|s| s.trim().parse::<f64>().ok());
    let load = err
        .lines()
        .find(|l| l.contains("trails loaded in"))
        .map(|l| seconds_after(l, "trails loaded in"))
        .unwrap_or(0.0);
    Ok(Run {
        user_ns_per_packet: ns,
        replay_cpu_ns_per_packet: cpu,
        load_s: load,
        ..replay_run(scenario, "xtrail", trails, trail_count, packets)
    })
}

/// The fields every offline replay run shares (one pass of `packets` over `trails`).
fn replay_run(
    scenario: &str,
    sensor: &str,
    trails: &Path,
    trail_count: usize,
    packets: usize,
) -> Run {
    Run {
        scenario: scenario.into(),
        sensor: sensor.into(),
        mode: "replay".into(),
        trails: trails
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
        trail_count,
        offered: packets as u64,
        xdp_packets: packets as u64,
        xdp_ns_per_packet: f64::NAN,
        softirq_ns_per_packet: f64::NAN,
        user_ns_per_handed: f64::NAN,
        send_pps: f64::NAN,
        busy_ns_per_packet: f64::NAN,
        ..Run::default()
    }
}

/// Offline replay by `--peer-replay` (`{pcap}`, `{trails}`, `{log}` substituted; Maltrail:
/// its `-r PCAP`) of the same pcap, one pass, with set-up excluded. Wall: from its
/// [`PEER_READY`] line (printed once trails are loaded and workers started) to its exit
/// (which includes its own end-of-run work; Maltrail's Python sensor notices the end of the
/// file within a 1 s poll). CPU over the same span: its process tree's (getrusage of our
/// waited-for children) minus what the tree had used when the line came (not minus a
/// second run on an empty pcap: two start-ups differ by more than a replay costs).
fn peer_replay_run(
    command: &str,
    scenario: &str,
    pcap: &Path,
    packets: usize,
    trails: &Path,
    tmp: &Path,
    trail_count: usize,
) -> anyhow::Result<Run> {
    let log = tmp.join("peer-replay.log");
    let cmdline = command
        .replace("{pcap}", &pcap.to_string_lossy())
        .replace("{trails}", &trails.to_string_lossy())
        .replace("{log}", &log.to_string_lossy());
    let cpu0 = children_cpu_ns();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &format!("exec {cmdline} 1>&2")])
        .stdout(Stdio::null());
    let watched = spawn_watched(&mut cmd, None).with_context(|| format!("starting {cmdline}"))?;
    let ready = watched.wait_for(PEER_READY, "\u{0}", PEER_START);
    // What its start-up took, read just before the wall clock starts.
    let startup = tree_cpu_ns(watched.child.id());
    let started = std::time::Instant::now();
    let Watched { mut child, lines } = watched;
    // Keep its output read until it exits.
    let drain = std::thread::spawn(move || lines.iter().count());
    let status = child.wait()?;
    let wall = started.elapsed().as_nanos() as f64;
    let _ = drain.join();
    ready.map_err(|e| anyhow::anyhow!("{cmdline}: no {PEER_READY:?} line: {e}"))?;
    anyhow::ensure!(status.success(), "{cmdline} failed: {status}");
    let cpu = children_cpu_ns().saturating_sub(cpu0) as f64 - startup as f64;
    let _ = std::fs::remove_file(&log);
    let n = packets.max(1) as f64;
    Ok(Run {
        user_ns_per_packet: wall / n,
        replay_cpu_ns_per_packet: Some(cpu / n),
        ..replay_run(scenario, "peer", trails, trail_count, packets)
    })
}

/// CPU time (ns) of this process's waited-for children (getrusage).
fn children_cpu_ns() -> u64 {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return 0;
    }
    [ru.ru_utime, ru.ru_stime]
        .iter()
        .map(|tv| tv.tv_sec as u64 * 1_000_000_000 + tv.tv_usec as u64 * 1000)
        .sum()
}

/// Seed of the generated traffic unless `--seed` says otherwise (`cargo xtask ab` draws
/// the templates of a default run).
pub(crate) const DEFAULT_SEED: u64 = 1;

/// The trail items the scenarios inject (names, URLs, addresses).
pub(crate) fn draw_picks(set: &TrailSet, whitelist: &Whitelist, quick: bool) -> TrailPicks {
    scenario::picks(set, whitelist, if quick { 60 } else { 200 })
}

/// The background scenario's frames (the NIC-like UDP, ACK and SYN templates among them).
pub(crate) fn draw_background(
    seed: u64,
    quick: bool,
    is_trail: &dyn Fn(Ipv4Addr) -> bool,
) -> Traffic {
    scenario::background_only(seed, scenario_frames(quick), is_trail)
}

/// Frames of the background, mix and storm scenarios.
fn scenario_frames(quick: bool) -> usize {
    if quick {
        20_000
    } else {
        50_000
    }
}

/// The mix as NIC-like templates: fewer frames, more malicious items among them.
pub(crate) fn draw_nic_mix(
    seed: u64,
    picks: &TrailPicks,
    is_trail: &dyn Fn(Ipv4Addr) -> bool,
) -> Traffic {
    scenario::mix(seed + 3, 4093, picks, 0.05, is_trail)
}

/// The scenarios `--only` selects from (each `--only` value is a prefix of one or more).
const ONLY_SCENARIOS: [&str; 12] = [
    "background",
    "mix",
    "storm",
    "scale",
    "offline",
    "baseline",
    "nic",
    "ingest",
    "console",
    "startup",
    "reload",
    "urlfp",
];

/// The scenarios `only` selects, in [`ONLY_SCENARIOS`]' order; an error for a value that
/// selects none (a typo would otherwise run nothing and write an empty report).
fn only_scenarios(only: &[String]) -> anyhow::Result<Vec<&'static str>> {
    for o in only {
        anyhow::ensure!(
            !o.is_empty() && ONLY_SCENARIOS.iter().any(|s| s.starts_with(o.as_str())),
            "--only {o:?} names no scenario (one of {})",
            ONLY_SCENARIOS.join(", ")
        );
    }
    Ok(ONLY_SCENARIOS
        .into_iter()
        .filter(|s| only.iter().any(|o| s.starts_with(o.as_str())))
        .collect())
}

/// Runs the benchmark.
pub fn run(opts: &BenchOptions) -> anyhow::Result<()> {
    // The scenarios `--only` selects (none: every one).
    let selected = only_scenarios(&opts.only)?;
    let wanted = |name: &str| selected.is_empty() || selected.contains(&name);
    let alone = |name: &str| selected == [name];
    if alone("ingest") {
        return ingest_only(opts);
    }
    if alone("startup") {
        return crate::bench_startup::only(opts.quick);
    }
    if alone("reload") {
        return crate::bench_reload::only(opts.quick);
    }
    let data = paths::maltrail_data();
    let full = data.join("trails-static");
    let full = if full.is_dir() {
        full
    } else {
        eprintln!(
            "bench: {} not found; using the bundled demo trails",
            full.display()
        );
        paths::workspace_root().join("xtask/demo/trails.csv")
    };
    let wl_path = data.join("data/whitelist.txt");
    let whitelist = if wl_path.is_file() {
        Whitelist::load(&wl_path)?
    } else {
        Whitelist::empty()
    };
    eprintln!("bench: loading {} to draw traffic from", full.display());
    let set = TrailSet::load(std::slice::from_ref(&full), &LoadOptions::default())?;
    let full_count = set.report.ipv4
        + set.report.ipv6
        + set.report.ipport
        + set.report.cidr4
        + set.report.cidr6
        + set.report.domains
        + set.report.urls
        + set.report.regexes;
    let picks = draw_picks(&set, &whitelist, opts.quick);
    let is_trail = |a: Ipv4Addr| set.ip.lookup(IpAddr::V4(a), None).is_some();
    let n_frames = scenario_frames(opts.quick);
    let count = if opts.quick { 300_000 } else { 2_000_000 };
    let background = draw_background(opts.seed, opts.quick, &is_trail);
    let mix = scenario::mix(opts.seed + 1, n_frames, &picks, 0.01, &is_trail);
    let storm = scenario::storm(opts.seed + 2, n_frames, &picks);
    let tmp = std::env::temp_dir().join(format!("xtrail-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let results_dir = paths::workspace_root().join("bench/results");
    std::fs::create_dir_all(&results_dir)?;
    // The console API (no privilege, no traffic): its own results file, a line in latest.md.
    let console_note = if wanted("console") {
        crate::bench_console::run(opts.quick, &results_dir)
    } else {
        None
    };
    if alone("console") {
        return Ok(());
    }

    // Per-program run time and count from the kernel (restored afterwards).
    let stats_knob = "/proc/sys/kernel/bpf_stats_enabled";
    let old_knob = std::fs::read_to_string(stats_knob).unwrap_or_else(|_| "0".into());
    let _ = std::fs::write(stats_knob, "1");

    let mut runs: Vec<Run> = Vec::new();
    let full_name = full
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut record = |r: anyhow::Result<Run>, what: &str| match r {
        Ok(r) => {
            eprintln!(
                "bench: {what}: offered {} ({:.0} pps), xdp {} , handed {}, events {}, recall {}, xdp {:.1} ns/pkt, user {:.1} ns/pkt",
                r.offered,
                r.send_pps,
                r.xdp_packets,
                r.handed,
                r.events,
                r.recall().map(|x| format!("{:.3}", x)).unwrap_or("-".into()),
                r.xdp_ns_per_packet,
                r.user_ns_per_packet
            );
            runs.push(r);
        }
        Err(e) => eprintln!("bench: {what}: failed: {e:#}"),
    };
    let case = |scenario: &'static str, mode: &'static str, traffic: &'static Traffic, rate| Case {
        scenario,
        mode,
        trails: &full,
        trails_name: full_name.clone(),
        trail_count: full_count,
        traffic,
        count,
        rate,
        extra: &opts.sensor_args,
    };
    // Leak the scenarios for the closures' lifetimes (one process, one run).
    let background: &'static Traffic = Box::leak(Box::new(background));
    let mix: &'static Traffic = Box::leak(Box::new(mix));
    let storm: &'static Traffic = Box::leak(Box::new(storm));

    // NIC-like delivery at fixed rates (its own results file, summary lines in latest.md).
    let nic_only = alone("nic");
    let mut nic_notes = Vec::new();
    if wanted("nic") {
        // The mix as templates: fewer frames, more malicious items among them.
        let nic_mix = draw_nic_mix(opts.seed, &picks, &is_trail);
        let when = crate::host::utc_now();
        let inputs = crate::bench_nic::NicInputs {
            quick: opts.quick,
            rounds: opts.nic_rounds,
            trails: &full,
            trails_name: full_name.clone(),
            background,
            mix: &nic_mix,
            sensor_args: &opts.sensor_args,
            peer: opts.peer.as_deref(),
            tmp: &tmp,
        };
        match crate::bench_nic::run(&inputs, &results_dir, &when) {
            Ok(lines) => nic_notes = lines,
            Err(e) => eprintln!("bench: nic: failed: {e:#}"),
        }
    }
    if nic_only {
        let _ = std::fs::write(stats_knob, old_knob.trim());
        let _ = std::fs::remove_dir_all(&tmp);
        eprintln!(
            "bench: NIC figures in {}",
            results_dir.join("nic.md").display()
        );
        return Ok(());
    }

    for mode in ["inline", "mirror"] {
        if wanted("background") {
            record(
                run_xtrail(&case("background", mode, background, None), &tmp),
                &format!("background/{mode}"),
            );
        }
    }
    if wanted("background") {
        // The same without flow-start records: the cost of the scan heuristics' feed.
        let no_flows: Vec<String> = opts
            .sensor_args
            .iter()
            .cloned()
            .chain(["--no-flow-starts".to_string()])
            .collect();
        let mut c = case("background", "inline", background, None);
        c.extra = &no_flows;
        let r = run_xtrail(&c, &tmp).map(|mut r| {
            r.mode = "inline, no flow starts".into();
            r
        });
        record(r, "background/inline/no-flow-starts");
    }
    let rates: Vec<Option<u64>> = if opts.quick {
        vec![Some(100_000), None]
    } else {
        vec![
            Some(50_000),
            Some(100_000),
            Some(200_000),
            Some(400_000),
            None,
        ]
    };
    for mode in ["inline", "mirror"] {
        for rate in rates.iter().filter(|_| wanted("mix")) {
            record(
                run_xtrail(&case("mix", mode, mix, *rate), &tmp),
                &format!(
                    "mix/{mode}/{}",
                    rate.map(|r| r.to_string()).unwrap_or("max".into())
                ),
            );
        }
    }
    if wanted("storm") {
        record(
            run_xtrail(&case("storm", "inline", storm, None), &tmp),
            "storm/inline",
        );
    }

    // Trail scale: the mix against subsets and the full set.
    let sizes: &[usize] = if opts.quick {
        &[10_000]
    } else {
        &[10_000, 100_000]
    };
    for &n in sizes.iter().filter(|_| wanted("scale")) {
        let csv = tmp.join(format!("trails-{n}.csv"));
        subset_csv(&set, &picks, n, &csv)?;
        let c = Case {
            scenario: "trail scale",
            mode: "inline",
            trails: &csv,
            trails_name: format!("{n} trails"),
            trail_count: n,
            traffic: mix,
            count,
            rate: None,
            extra: &opts.sensor_args,
        };
        record(run_xtrail(&c, &tmp), &format!("scale/{n}"));
    }
    if wanted("offline") {
        // Its own, longer mix (the same generator and seed, so it starts with the live
        // runs' frames): one pass over distinct packets, every packet its own flow (each
        // UDP datagram and SYN a new key for the scan tables: their worst case) ...
        let n = if opts.quick { 200_000 } else { 1_000_000 };
        let long = scenario::mix(opts.seed + 1, n, &picks, 0.01, &is_trail);
        // ... and the same frames as templates of flows as the NIC-like generator sends
        // them (background 8 packets per flow, 256 flows interleaved, a source per flow).
        let flows = flow_sequence(&long.frames, n);
        let runs = [(OFFLINE, Ok(long.frames)), (OFFLINE_FLOWS, flows)];
        for (name, frames) in runs {
            let frames = match frames {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("bench: {name}: failed: {e:#}");
                    continue;
                }
            };
            let peer_replay = opts.peer_replay.as_deref();
            let (ours, peer) = replay_offline(name, &frames, &full, &tmp, full_count, peer_replay);
            record(ours, name);
            if let Some(peer) = peer {
                record(peer, &format!("peer {name}"));
            }
        }
    }

    // The yardstick: a libpcap sensor on the same background traffic.
    let baseline = paths::workspace_root().join("target/release/xtrail-pcap-baseline");
    if wanted("baseline") || wanted("background") {
        // Nothing attached: the machine's cost of the traffic itself (generator, veth, stack).
        record(
            run_other(
                "none",
                "sleep 120",
                "background",
                background,
                count,
                &full,
                &tmp,
            ),
            "no sensor",
        );
    }
    if wanted("baseline") {
        record(
            run_other(
                "pcap-baseline",
                &format!(
                    "{} --iface {{iface}} --trails {{trails}} --duration 120",
                    baseline.display()
                ),
                "background",
                background,
                count,
                &full,
                &tmp,
            ),
            "pcap-baseline",
        );
    }
    if let Some(peer) = &opts.peer {
        // The peer on the background (its CPU) and on the mix at the highest rate (its
        // recall, scored when the command takes {log}).
        for (name, traffic) in [("background", background), ("mix", mix)] {
            record(
                run_other("peer", peer, name, traffic, count, &full, &tmp),
                &format!("peer/{name}"),
            );
        }
    }
    let _ = std::fs::write(stats_knob, old_knob.trim());
    drop(set);
    // The collector: events/s stored and sensor→subscriber latency, SQLite and PostgreSQL.
    let ingest = if wanted("ingest") {
        bench_ingest::run(opts.quick, &tmp)
    } else {
        Vec::new()
    };
    // Sensor start with the full static tree: CSV vs compiled set.
    let startup = if wanted("startup") {
        match crate::bench_startup::measure(opts.quick, &tmp) {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("bench: startup: failed: {e:#}");
                None
            }
        }
    } else {
        None
    };
    let _ = std::fs::remove_dir_all(&tmp);
    let mut notes = Vec::new();
    notes.extend(console_note);
    notes.extend(nic_notes);
    if let Some(r) = &startup {
        notes.push(crate::bench_startup::line(r));
    }
    if wanted("urlfp") {
        match url_candidates_fp() {
            Ok(line) => notes.push(line),
            Err(e) => eprintln!("bench: URL candidate false positives: {e:#}"),
        }
    }

    // A partial run (`--only`) writes its report to files named after the scenarios it ran
    // (`--only offline`: offline.json and offline.md) and no plots, leaving the last full
    // run's `latest.*` as they are.
    let stem = if selected.is_empty() {
        String::from("latest")
    } else {
        selected.join("+")
    };
    write_results(&results_dir, &stem, &runs, &ingest, opts, &notes)?;
    if let Some(r) = &startup {
        crate::bench_startup::write(&results_dir, r)?;
    }
    eprintln!("bench: results in {}", results_dir.display());
    Ok(())
}

/// `--only ingest`: the collector scenario alone (no trails, no veth pairs); its figures
/// replace the ingest section of the results, the other scenarios' stay.
fn ingest_only(opts: &BenchOptions) -> anyhow::Result<()> {
    let tmp = std::env::temp_dir().join(format!("xtrail-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let ingest = bench_ingest::run(opts.quick, &tmp);
    let _ = std::fs::remove_dir_all(&tmp);
    anyhow::ensure!(!ingest.is_empty(), "no ingest figure was taken");
    let when = crate::host::utc_now();
    let dir = paths::workspace_root().join("bench/results");
    std::fs::create_dir_all(&dir)?;
    bench_ingest::write_merged(&dir, &ingest, &when)?;
    eprintln!("bench: ingest figures in {}", dir.display());
    Ok(())
}

/// The trail of each event line of a sensor's events log `text`: xtrail's JSON lines, or
/// Maltrail's own lines as a `--peer` writes them to `{log}`.
pub(crate) fn logged_trails(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            l.split("\"trail\":\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .map(str::to_string)
                .or_else(|| maltrail_field(l, MALTRAIL_TRAIL))
        })
        .collect()
}

/// Index of the trail in a Maltrail event line: `"<time>" <sensor> <src_ip> <src_port>
/// <dst_ip> <dst_port> <proto> <type> <trail> <info> <reference>`.
const MALTRAIL_TRAIL: usize = 8;

/// Field `index` of a Maltrail event line (values separated by spaces; one with a space or
/// `"` is quoted, inner `"` doubled): the reading side of `xtrail_detect`'s
/// `push_maltrail_value`. None when the line has fewer fields (not an event line).
fn maltrail_field(line: &str, index: usize) -> Option<String> {
    let mut chars = line.chars().peekable();
    let mut at = 0;
    loop {
        while chars.next_if_eq(&' ').is_some() {}
        let first = *chars.peek()?;
        let mut value = String::new();
        if first == '"' {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.next_if_eq(&'"').is_some() => value.push('"'),
                    Some('"') | None => break,
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != ' ') {
                value.push(c);
            }
        }
        if at == index {
            return Some(value);
        }
        at += 1;
    }
}

/// `x` with `places` decimals as a JSON number; `null` when it is not finite.
pub(crate) fn json_num(x: f64, places: usize) -> String {
    if x.is_finite() {
        format!("{x:.places$}")
    } else {
        "null".into()
    }
}

pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    // SAFETY: sysconf has no preconditions.
    let cores = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    format!("{cores} cores ({cpu}), Linux {}", kernel.trim())
}

fn fmt_ns(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.0}")
    } else {
        "-".into()
    }
}

/// False positives of the URL candidates on clean traffic (the full static tree against
/// 5,000 generated benign requests, Maltrail's candidates and `--url-extra-candidates`),
/// measured by `detect/tests/url_candidates_fp.rs` in release mode: its summary line.
fn url_candidates_fp() -> anyhow::Result<String> {
    let out = Command::new("cargo")
        .current_dir(paths::workspace_root())
        .args([
            "test",
            "--release",
            "-p",
            "xtrail-detect",
            "--test",
            "url_candidates_fp",
            "--",
            "--nocapture",
        ])
        .output()
        .context("running the URL candidate measurement")?;
    if !out.status.success() {
        anyhow::bail!(
            "the measurement failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The test prints its summary on stderr.
    let text = String::from_utf8_lossy(&out.stderr);
    let line = text
        .lines()
        .find(|l| l.starts_with("URL trails:"))
        .context("the measurement printed no summary")?;
    Ok(format!("- URL candidates on clean traffic: {line}."))
}

/// Writes `stem`.json and `stem`.md (and, for a full run's `latest`, the plots), taken now
/// on this machine.
fn write_results(
    dir: &Path,
    stem: &str,
    runs: &[Run],
    ingest: &[IngestRun],
    opts: &BenchOptions,
    notes: &[String],
) -> anyhow::Result<()> {
    let when = crate::host::utc_now();
    let machine = machine();
    let json = format!(
        "{{\"taken\":\"{when}\",\"machine\":\"{}\",\"quick\":{},\"seed\":{},\"offline_method\":{:?},\"runs\":[\n{}\n],\"ingest\":{}}}\n",
        machine.replace('"', "'"),
        opts.quick,
        opts.seed,
        OFFLINE_METHOD,
        runs.iter().map(Run::json).collect::<Vec<_>>().join(",\n"),
        bench_ingest::json(ingest)
    );
    std::fs::write(dir.join(format!("{stem}.json")), json)?;
    let mut md = String::new();
    md.push_str(&format!(
        "Taken {when} on {machine}{}.\n\n",
        if opts.quick { " (`--quick`)" } else { "" }
    ));
    md.push_str("| scenario | sensor | mode | trails | offered rate | offered | sent pps | received | XDP | to userspace | events | recall | XDP ns/pkt | softirq ns/pkt | user ns/pkt | user ns/handed | machine busy ns/pkt | RSS MB | load s |\n");
    md.push_str(
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in runs {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.2} |\n",
            r.scenario,
            r.sensor,
            r.mode,
            r.trails,
            r.offered_rate.map(|x| x.to_string()).unwrap_or("max".into()),
            r.offered,
            fmt_ns(r.send_pps),
            r.received,
            r.xdp_packets,
            r.handed,
            r.events,
            r.recall().map(|x| format!("{x:.3}")).unwrap_or("-".into()),
            fmt_ns(r.xdp_ns_per_packet),
            fmt_ns(r.softirq_ns_per_packet),
            fmt_ns(r.user_ns_per_packet),
            if r.handed > 0 { fmt_ns(r.user_ns_per_handed) } else { "-".into() },
            fmt_ns(r.busy_ns_per_packet),
            r.rss_mb,
            r.load_s,
        ));
    }
    // Headline ratios.
    let xdp_bg = runs
        .iter()
        .find(|r| r.scenario == "background" && r.sensor == "xtrail" && r.mode == "inline");
    let pcap_bg = runs.iter().find(|r| r.sensor == "pcap-baseline");
    md.push('\n');
    if let (Some(x), Some(p)) = (xdp_bg, pcap_bg) {
        let x_cost = x.xdp_ns_per_packet;
        let p_cost = p.user_ns_per_packet;
        if x_cost.is_finite() && x_cost > 0.0 && p_cost.is_finite() {
            md.push_str(&format!(
                "- Background traffic, CPU per packet: xtrail XDP {x_cost:.0} ns vs libpcap baseline {p_cost:.0} ns (userspace only, kernel capture cost not counted): **{:.1}x** packets per second per core.\n",
                p_cost / x_cost
            ));
        }
    }
    let none = runs
        .iter()
        .find(|r| r.sensor == "none")
        .map(|r| r.busy_ns_per_packet);
    if let (Some(none), Some(p)) = (none, pcap_bg) {
        for x in runs
            .iter()
            .filter(|r| r.scenario == "background" && r.sensor == "xtrail")
        {
            let xo = x.busy_ns_per_packet - none;
            let po = p.busy_ns_per_packet - none;
            md.push_str(&format!(
                "- Background, whole-machine CPU each sensor adds per packet (busy time minus the no-sensor run's {none:.0} ns): xtrail {} {xo:.0} ns, libpcap baseline {po:.0} ns: **{:.1}x**.\n",
                x.mode,
                if xo > 0.0 { po / xo } else { f64::INFINITY }
            ));
        }
    }
    let peer_bg = runs
        .iter()
        .find(|r| r.sensor == "peer" && r.scenario == "background");
    if let (Some(none), Some(p)) = (none, peer_bg) {
        // Like with like: each sensor's whole-machine busy time per packet offered, minus
        // the no-sensor run's, on the same background traffic at the same (highest) rate.
        let po = p.busy_ns_per_packet - none;
        for x in runs
            .iter()
            .filter(|r| r.scenario == "background" && r.sensor == "xtrail")
        {
            let xo = x.busy_ns_per_packet - none;
            md.push_str(&format!(
                "- Background, whole-machine CPU added per packet during the send, xtrail {} vs `--peer`: {xo:.0} ns vs {po:.0} ns: xtrail/peer **{:.2}** (the peer's process tree, the time it worked on after the send included: {:.0} ns/packet).\n",
                x.mode,
                if po > 0.0 { xo / po } else { f64::NAN },
                p.user_ns_per_packet
            ));
        }
    }
    if let Some(p) = runs
        .iter()
        .find(|r| r.sensor == "peer" && r.scenario == "mix" && r.injected > 0)
    {
        let x = runs.iter().find(|r| {
            r.scenario == "mix"
                && r.sensor == "xtrail"
                && r.mode == "inline"
                && r.offered_rate.is_none()
        });
        md.push_str(&format!(
            "- Mix at the highest rate, recall: `--peer` {}/{}{}.\n",
            p.detected,
            p.injected,
            x.map(|x| format!(", xtrail inline {}/{}", x.detected, x.injected))
                .unwrap_or_default()
        ));
    }
    // Only when the mix ran (`--only` runs leave it out).
    if runs.iter().any(|r| r.scenario == "mix") {
        let best = runs
            .iter()
            .filter(|r| r.scenario == "mix" && r.loss() == 0 && r.recall() == Some(1.0))
            .map(|r| r.send_pps)
            .fold(0.0f64, f64::max);
        md.push_str(&format!(
            "- Mix: highest sent rate with no loss and full recall: {best:.0} pps.\n"
        ));
    }
    for (scenario, what) in [
        (OFFLINE, "the mix, every packet its own flow".to_string()),
        (
            OFFLINE_FLOWS,
            format!(
                "the mix as flows (background {} packets per flow, {} flows interleaved)",
                crate::bench_nic::FLOW_PACKETS,
                crate::bench_nic::WINDOW
            ),
        ),
    ] {
        let replay = |sensor: &str| {
            runs.iter()
                .find(|r| r.scenario == scenario && r.sensor == sensor)
        };
        let Some(r) = replay("xtrail") else {
            continue;
        };
        let cpu = r
            .replay_cpu_ns_per_packet
            .map(|c| format!(" wall, {c:.0} ns/packet CPU (its threads together: the replay and the file's read-ahead)"))
            .unwrap_or_default();
        md.push_str(&format!(
            "- Offline replay of {what} (one pass over {} packets, set-up excluded) with {} trails: {:.0} ns/packet{cpu}.\n",
            r.offered, r.trail_count, r.user_ns_per_packet
        ));
        if let Some(p) = replay("peer") {
            md.push_str(&peer_replay_line(
                (r.user_ns_per_packet, r.replay_cpu_ns_per_packet),
                p.user_ns_per_packet,
                p.replay_cpu_ns_per_packet,
            ));
        }
    }
    for n in notes {
        md.push_str(n);
        md.push('\n');
    }
    if !ingest.is_empty() {
        md.push_str(&bench_ingest::markdown(ingest));
    }
    std::fs::write(dir.join(format!("{stem}.md")), &md)?;
    if stem == "latest" {
        plots(dir, runs)?;
    }
    println!("{md}");
    Ok(())
}

/// A horizontal bar chart (SVG) of named values; negative values extend left of zero.
pub(crate) fn bar_chart(title: &str, bars: &[(String, f64)]) -> String {
    let (w, bh) = (760.0, 22.0);
    let h = 50.0 + bh * bars.len() as f64;
    let max = bars.iter().map(|b| b.1).fold(1.0f64, f64::max);
    let min = bars.iter().map(|b| b.1).fold(0.0f64, f64::min);
    let (x0, span) = (265.0, w - 340.0);
    let zero = x0 + span * -min / (max - min);
    let mut s = format!("<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n<text x='{}' y='20' text-anchor='middle' font-size='14'>{title}</text>\n", w / 2.0);
    for (i, (name, v)) in bars.iter().enumerate() {
        let y = 35.0 + bh * i as f64;
        let len = span * v.abs() / (max - min);
        let x = if *v < 0.0 { zero - len } else { zero };
        s.push_str(&format!("<text x='{}' y='{}' text-anchor='end'>{name}</text><rect x='{x:.1}' y='{y}' width='{len:.1}' height='{}' fill='{}'/><text x='{}' y='{}'>{v:.0}</text>\n", x0 - 5.0, y + 15.0, bh - 6.0, if *v < 0.0 { "#2ca02c" } else { "#1f77b4" }, if *v < 0.0 { zero + 5.0 } else { zero + len + 5.0 }, y + 15.0));
    }
    s.push_str(&format!(
        "<line x1='{zero:.1}' y1='30' x2='{zero:.1}' y2='{}' stroke='black'/>\n",
        h - 10.0
    ));
    s.push_str("</svg>\n");
    s
}

/// Hand-written SVG plots (no plotting dependency).
fn plots(dir: &Path, runs: &[Run]) -> anyhow::Result<()> {
    let mut series: BTreeMap<String, Vec<(f64, f64, f64)>> = BTreeMap::new();
    for r in runs.iter().filter(|r| r.scenario == "mix") {
        series.entry(r.mode.clone()).or_default().push((
            r.send_pps,
            r.xdp_packets.min(r.received) as f64 / r.offered.max(1) as f64 * r.send_pps,
            r.recall().unwrap_or(0.0),
        ));
    }
    let line_chart = |title: &str,
                      ylabel: &str,
                      pick: &dyn Fn(&(f64, f64, f64)) -> f64,
                      ymax: f64| {
        let (w, h, l, b) = (640.0, 400.0, 70.0, 50.0);
        let xmax = series
            .values()
            .flatten()
            .map(|p| p.0)
            .fold(1.0f64, f64::max)
            * 1.05;
        let mut s = format!("<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n<text x='{}' y='20' text-anchor='middle' font-size='14'>{title}</text>\n", w / 2.0);
        s.push_str(&format!("<line x1='{l}' y1='{}' x2='{}' y2='{}' stroke='black'/><line x1='{l}' y1='30' x2='{l}' y2='{}' stroke='black'/>\n", h - b, w - 20.0, h - b, h - b));
        s.push_str(&format!("<text x='{}' y='{}' text-anchor='middle'>offered rate (pps)</text><text x='15' y='{}' transform='rotate(-90 15 {})' text-anchor='middle'>{ylabel}</text>\n", w / 2.0, h - 10.0, h / 2.0, h / 2.0));
        for i in 0..=4 {
            let fx = xmax * i as f64 / 4.0;
            let x = l + (w - l - 20.0) * i as f64 / 4.0;
            s.push_str(&format!(
                "<text x='{x}' y='{}' text-anchor='middle'>{:.0}k</text>\n",
                h - b + 15.0,
                fx / 1000.0
            ));
            let fy = ymax * i as f64 / 4.0;
            let y = h - b - (h - b - 30.0) * i as f64 / 4.0;
            s.push_str(&format!(
                "<text x='{}' y='{}' text-anchor='end'>{}</text>\n",
                l - 5.0,
                y + 4.0,
                if ymax > 10.0 {
                    format!("{:.0}k", fy / 1000.0)
                } else {
                    format!("{fy:.2}")
                }
            ));
        }
        for (i, (name, pts)) in series.iter().enumerate() {
            let color = ["#1f77b4", "#d62728", "#2ca02c"][i % 3];
            let mut pts = pts.clone();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            let path: Vec<String> = pts
                .iter()
                .map(|p| {
                    let x = l + (w - l - 20.0) * p.0 / xmax;
                    let y = h - b - (h - b - 30.0) * (pick(p) / ymax).min(1.0);
                    format!("{x:.1},{y:.1}")
                })
                .collect();
            s.push_str(&format!(
                "<polyline fill='none' stroke='{color}' stroke-width='2' points='{}'/>\n",
                path.join(" ")
            ));
            s.push_str(&format!(
                "<text x='{}' y='{}' fill='{color}'>{name}</text>\n",
                w - 120.0,
                45.0 + 15.0 * i as f64
            ));
        }
        s.push_str("</svg>\n");
        s
    };
    let ymax = series
        .values()
        .flatten()
        .map(|p| p.1)
        .fold(1.0f64, f64::max)
        * 1.1;
    std::fs::write(
        dir.join("throughput.svg"),
        line_chart(
            "Mix: packets processed by XDP vs offered",
            "processed (pps)",
            &|p| p.1,
            ymax,
        ),
    )?;
    std::fs::write(
        dir.join("recall.svg"),
        line_chart("Mix: recall vs offered rate", "recall", &|p| p.2, 1.0),
    )?;
    // Cost per packet by scenario (bars).
    let bars: Vec<(String, f64)> = runs
        .iter()
        .filter(|r| r.offered_rate.is_none())
        .map(|r| {
            let cost = if r.xdp_ns_per_packet.is_finite() {
                r.xdp_ns_per_packet + r.user_ns_per_packet.max(0.0)
            } else {
                r.user_ns_per_packet
            };
            (format!("{} {} {}", r.scenario, r.sensor, r.mode), cost)
        })
        .filter(|(_, c)| c.is_finite())
        .collect();
    let s = bar_chart(
        "CPU per packet (ns): XDP + userspace, or userspace for capture sensors",
        &bars,
    );
    std::fs::write(dir.join("cost.svg"), s)?;
    Ok(())
}

/// The report's line for `--peer-replay` on the pcap xtrail replayed at `ours` (wall, CPU) ns
/// a packet: the peer's wall time a packet and its CPU a packet from its 'running' line to
/// its exit. The CPU ratio is CPU over CPU; a CPU that is not positive is no measurement, so
/// it gets no CPU ratio, and neither does a replay whose CPU was not read.
fn peer_replay_line(ours: (f64, Option<f64>), peer_wall: f64, peer_cpu: Option<f64>) -> String {
    let wall = ours.0 / peer_wall;
    let cpu = match (peer_cpu, ours.1) {
        (Some(c), Some(o)) if c > 0.0 && o > 0.0 && o.is_finite() => format!(
            "{c:.0} ns/packet CPU of its processes over the same span: xtrail/peer **{wall:.2}** (wall), **{:.2}** (CPU)",
            o / c
        ),
        (Some(c), _) if c > 0.0 => format!(
            "{c:.0} ns/packet CPU of its processes over the same span: xtrail/peer **{wall:.2}** (wall)"
        ),
        (Some(c), _) if c <= 0.0 => format!(
            "CPU of its processes over the same span {c:.0} ns/packet, not a measurement: xtrail/peer **{wall:.2}** (wall)"
        ),
        _ => format!("xtrail/peer **{wall:.2}** (wall)"),
    };
    format!(
        "- `--peer-replay` on the same pcap: {peer_wall:.0} ns/packet wall from its start line to its exit (its end-of-run work included), {cpu}.\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer replay's CPU ratio only from a positive net CPU (run of 12-06 11:47: -52 ns a
    /// packet gave "-5.00"), and only as CPU over CPU (xtrail's replay reads ahead on a
    /// second thread: its wall time is not its CPU).
    #[test]
    fn a_peer_replay_cpu_ratio_only_from_a_positive_net_cpu() {
        let measured = peer_replay_line((262.0, Some(393.0)), 526.0, Some(524.0));
        assert!(
            measured.contains("**0.50** (wall), **0.75** (CPU)"),
            "{measured}"
        );
        for cpu in [Some(-52.0), Some(0.0), Some(f64::NAN), None] {
            let line = peer_replay_line((262.0, Some(393.0)), 526.0, cpu);
            assert!(
                line.contains("**0.50** (wall)") && !line.contains("(CPU)"),
                "{line}"
            );
        }
        for ours in [None, Some(0.0), Some(f64::NAN)] {
            let line = peer_replay_line((262.0, ours), 526.0, Some(524.0));
            assert!(!line.contains("(CPU)"), "{line}");
        }
        assert!(peer_replay_line((262.0, None), 526.0, Some(-52.0)).contains("not a measurement"));
    }

    /// `--only` values select scenarios by prefix, in one order; one that selects none is an
    /// error, not an empty report over another run's files.
    #[test]
    fn only_names_scenarios() {
        let only =
            |v: &[&str]| only_scenarios(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(only(&["offline"]).unwrap(), ["offline"]);
        assert_eq!(
            only(&["st", "off"]).unwrap(),
            ["storm", "offline", "startup"]
        );
        assert!(only(&[]).unwrap().is_empty());
        for bad in ["latest", "PERF-LOG", "ofline", ""] {
            assert!(only(&[bad]).is_err(), "{bad}");
        }
    }

    /// The method written into latest.json states the flow shape the run uses.
    #[test]
    fn offline_method_names_the_flow_shape() {
        use crate::bench_nic::{FLOW_PACKETS, WINDOW};
        assert!(OFFLINE_METHOD.contains(&format!("{FLOW_PACKETS} packets per flow")));
        assert!(OFFLINE_METHOD.contains(&format!("{WINDOW} flows interleaved")));
    }

    /// Another process's CPU time is read to the ns, a busy child's grows by what it spent,
    /// and a process that is gone reads 0.
    #[test]
    fn cpu_time_of_another_process() {
        let mut child = std::process::Command::new("sh")
            .args([
                "-c",
                "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; sleep 5",
            ])
            .spawn()
            .expect("sh");
        let pid = child.id();
        let first = proc_cpu_ns(pid);
        std::thread::sleep(Duration::from_millis(300));
        let later = tree_cpu_ns(pid);
        assert!(later > first, "{first} -> {later}");
        // Not a multiple of a clock tick, as /proc/PID/stat would give.
        assert_ne!(later % 1_000_000, 0);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(proc_cpu_ns(pid), 0);
    }

    #[test]
    fn trails_of_maltrail_and_json_event_lines() {
        let log = concat!(
            "\"2026-08-07 09:14:22.117034\" gw 10.13.13.2 57809 1.1.1.1 53 UDP DNS malware.example \"asyncrat (malware)\" (static)\n",
            "\"2026-08-07 09:14:23.000001\" gw 10.0.0.1 80 10.0.0.2 - TCP URL \"evil.example(/a \"\"b\"\")\" \"x (suspicious)\" (heuristic)\n",
            "{\"ts\":\"x\",\"trail\":\"66.66.66.66\",\"info\":\"y\"}\n",
            "[i] not an event\n",
        );
        assert_eq!(
            logged_trails(log),
            ["malware.example", "evil.example(/a \"b\")", "66.66.66.66"]
        );
    }
}
