//! `xtrail-sensor`: live XDP capture (`run`), pcap replay (`replay`), kernel counters (`stats`).

mod collector_link;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand, ValueEnum};
use xtrail_detect::event::Format;
use xtrail_detect::heuristics::UaPatterns;

use xtrail_detect::replay::ReplayOptions;

use xtrail_detect::trails::{compiled, TrailSet};
use xtrail_detect::whitelist::Whitelist;
use xtrail_publish::PublishError;
use xtrail_sensor::config::{Overrides, SensorConfig};
use xtrail_sensor::live::{self, LiveOptions};
use xtrail_sensor::loader::{self, AttachMode, Mode, SensorOptions};
use xtrail_sensor::output::{open_output, EventLog};
use xtrail_sensor::reload::{self, ReloadOptions};
use xtrail_sensor::trail_pull::{self, PullOptions};
use xtrail_sensor::{privilege, startup, stats};

use crate::collector_link::{CollectorLink, LinkOptions};

#[derive(Parser)]
#[command(
    name = "xtrail-sensor",
    version,
    about = "xtrail's malicious-traffic sensor"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Inline,
    Mirror,
}

#[derive(Clone, Copy, ValueEnum)]
enum XdpModeArg {
    Auto,
    Driver,
    Skb,
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    Json,
    Maltrail,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Format {
        match f {
            FormatArg::Json => Format::Json,
            FormatArg::Maltrail => Format::Maltrail,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum EbpfLog {
    Off,
    Debug,
}

/// Trail and whitelist flags shared by `run` and `replay`.
#[derive(clap::Args, Clone)]
struct TrailArgs {
    /// Trail source: a Maltrail trails.csv, a static trail tree, or a list file (repeatable;
    /// replaces the config file's `trails`).
    #[arg(long = "trails")]
    trails: Vec<PathBuf>,
    /// Whitelist file (Maltrail's whitelist.txt format): no event for listed addresses
    /// (default: the config file's, $XTRAIL_WHITELIST, /etc/xtrail/whitelist.txt, or in a
    /// development tree shared/data/maltrail/data/whitelist.txt above the executable).
    #[arg(long)]
    whitelist: Option<PathBuf>,
    /// Use no whitelist at all.
    #[arg(long = "no-whitelist", conflicts_with = "whitelist")]
    no_whitelist: bool,
}

/// The configuration file and the pipeline flags shared by `run`, `replay` and `config`.
#[derive(clap::Args, Clone)]
struct ConfigArgs {
    /// Sensor configuration file (TOML; default /etc/xtrail/sensor.toml when it exists).
    /// Flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// AF_XDP transport threads in mirror mode [default: 1].
    #[arg(long)]
    workers: Option<usize>,
    /// Events per second the sensor writes at most, sustained; the overflow is summarised
    /// per trail [default: 2000].
    #[arg(long = "event-budget", value_name = "N")]
    event_budget: Option<u32>,
    /// No per-trail flood aggregation and no event budget.
    #[arg(long = "no-flood-guard")]
    no_flood_guard: bool,
    /// URL candidates beyond Maltrail's: a `/dir/` trail also matches any file under it.
    #[arg(long = "url-extra-candidates")]
    url_extra_candidates: bool,
    /// `run`: serve the kernel and pipeline counters in the Prometheus text format at
    /// http://ADDR/metrics (e.g. 127.0.0.1:9465).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
}

/// Merges the configuration file and the flags, checked once.
fn resolve_config(
    cfg: &ConfigArgs,
    trails: &TrailArgs,
    heuristics: &HeuristicArgs,
    sensor_name: Option<String>,
    maltrail_syn_rules: bool,
    reload: Option<&ReloadArgs>,
) -> anyhow::Result<SensorConfig> {
    let o = Overrides {
        watch_trails: reload.is_some_and(|r| r.watch_trails),
        trail_min_ratio: reload.and_then(|r| r.trail_min_ratio),
        trails_from_collector: reload.is_some_and(|r| r.trails_from_collector),
        trails_public_key: reload.and_then(|r| r.trails_public_key.clone()),
        sensor_name,
        trails: trails.trails.clone(),
        whitelist: trails.whitelist.clone(),
        no_whitelist: trails.no_whitelist,
        ua_file: heuristics.ua_file.clone(),
        no_heuristics: heuristics.no_heuristics,
        check_missing_host: heuristics.check_missing_host,
        workers: cfg.workers,
        metrics: cfg.metrics,
        maltrail_syn_rules,
        event_budget: cfg.event_budget,
        no_flood_guard: cfg.no_flood_guard,
        url_extra_candidates: cfg.url_extra_candidates,
    };
    Ok(SensorConfig::resolve(cfg.config.as_deref(), &o)?)
}

/// Loads the trails (with `public_key`, a compiled set must be signed by it) and the
/// whitelist a configuration names, side by side; returns the set's version too, and a
/// compiled set's body checksum still being computed (`run` waits for it before it
/// attaches; `None` when nothing is pending).
fn load_detection(
    cfg: &SensorConfig,
    public_key: Option<&[u8; 32]>,
) -> anyhow::Result<(TrailSet, String, Whitelist, Option<reload::TrailCheck>)> {
    let paths = cfg.require_trails()?;
    std::thread::scope(|s| {
        let whitelist = s.spawn(|| match &cfg.whitelist {
            Some(p) => {
                eprintln!("xtrail-sensor: whitelist {}", p.display());
                let w = Whitelist::load(p)
                    .with_context(|| format!("reading whitelist {}", p.display()));
                startup::mark("whitelist_loaded");
                startup::thread_cpu("whitelist");
                w
            }
            None => Ok(Whitelist::empty()),
        });
        let trails = load_trails(paths, public_key);
        let whitelist = whitelist
            .join()
            .map_err(|_| anyhow::anyhow!("the whitelist loader panicked"))?;
        let (trails, version, check) = trails?;
        Ok((trails, version, whitelist?, check))
    })
}

/// The user-agent patterns a configuration names (or the default file).
fn load_ua(cfg: &SensorConfig) -> anyhow::Result<Arc<UaPatterns>> {
    load_ua_file(cfg.ua_file.as_deref())
}

/// The user-agent patterns of `file` (none without one), compiled.
fn load_ua_file(file: Option<&std::path::Path>) -> anyhow::Result<Arc<UaPatterns>> {
    let ua = match file {
        Some(p) => UaPatterns::load(p).with_context(|| format!("reading {}", p.display()))?,
        None => UaPatterns::empty(),
    };
    ua.prepare();
    startup::mark("ua_patterns_compiled");
    startup::thread_cpu("ua_patterns");
    Ok(Arc::new(ua))
}

/// Event output flags shared by `run` and `replay`.
#[derive(clap::Args, Clone)]
struct OutputArgs {
    /// Where events go: a file (appended) or - for stdout.
    #[arg(long = "events-log", default_value = "-")]
    events_log: PathBuf,
    /// Event line format.
    #[arg(long, value_enum, default_value = "json")]
    format: FormatArg,
    /// Sensor name in events (default: the host name).
    #[arg(long = "sensor-name")]
    sensor_name: Option<String>,
}

/// The sensor name a configuration gives, or the host name.
fn sensor_name(cfg: &SensorConfig) -> String {
    cfg.sensor_name.clone().unwrap_or_else(hostname)
}

/// Collector flags shared by `run` and `replay`.
#[derive(clap::Args, Clone)]
struct CollectorArgs {
    /// Stream events to an xtrail collector (e.g. http://127.0.0.1:50051), in addition to
    /// the local log. Events wait in an on-disk spool until the collector acknowledges them.
    /// Repeat for several collectors of one store, tried in turn (the first while it
    /// serves); replaces the config file's `collectors`.
    #[arg(long)]
    collector: Vec<String>,
    /// Bearer token for the collector (or $XTRAIL_TOKEN).
    #[arg(long, env = "XTRAIL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Where the sensor's identity and spools live (default /var/lib/xtrail, or
    /// ~/.local/state/xtrail when not root).
    #[arg(long = "state-dir")]
    state_dir: Option<PathBuf>,
    /// Spool bound in bytes; when full, the oldest events are dropped and the drop reported.
    #[arg(long = "spool-max-bytes", default_value_t = 1 << 30)]
    spool_max_bytes: u64,
    /// CA certificate for an https:// collector.
    #[arg(long = "collector-ca")]
    collector_ca: Option<PathBuf>,
    /// Seconds between heartbeats to the collector (its sensors page flags a sensor silent
    /// for 3 of them).
    #[arg(long = "heartbeat-seconds", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    heartbeat_seconds: u64,
}

impl CollectorArgs {
    /// The collector URLs: the `--collector` flags, else the config file's `collectors`.
    fn urls(&self, cfg: &SensorConfig) -> Vec<String> {
        if self.collector.is_empty() {
            cfg.collectors.clone()
        } else {
            self.collector.clone()
        }
    }

    /// Starts the collector link when a collector URL is given; `command` is `run` or
    /// `replay` (each has its own spool and stream).
    fn start(
        &self,
        cfg: &SensorConfig,
        sensor: &str,
        command: &str,
    ) -> anyhow::Result<Option<CollectorLink>> {
        let urls = self.urls(cfg);
        if urls.is_empty() {
            return Ok(None);
        }
        CollectorLink::start(&LinkOptions {
            urls: &urls,
            token: self.token.as_deref().unwrap_or_default(),
            sensor_name: sensor,
            command,
            state_dir: collector_link::state_dir(self.state_dir.as_deref()),
            spool_max_bytes: self.spool_max_bytes,
            ca_cert: self.collector_ca.clone(),
            heartbeat: Duration::from_secs(self.heartbeat_seconds),
        })
        .map(Some)
    }
}

/// Heuristics flags shared by `run` and `replay`.
#[derive(clap::Args, Clone)]
struct HeuristicArgs {
    /// Suspicious user-agent patterns (Maltrail's ua.txt; default: the config file's,
    /// $XTRAIL_UA_FILE, /etc/xtrail/ua.txt, or in a development tree
    /// shared/data/maltrail/data/ua.txt above the executable).
    #[arg(long = "ua-file")]
    ua_file: Option<PathBuf>,
    /// Trails only: no scan, DNS or HTTP heuristics.
    #[arg(long = "no-heuristics")]
    no_heuristics: bool,
    /// Flag HTTP requests without a Host header (Maltrail's optional check).
    #[arg(long = "check-missing-host")]
    check_missing_host: bool,
}

/// Hot reload flags of `run` (SIGHUP always reloads from the trail sources); each has a
/// config file key of the same name with `_` (`watch_trails`, ...), which the flag overrides.
#[derive(clap::Args, Clone)]
struct ReloadArgs {
    /// Reload when a trail source changes (its modification time or size, polled every
    /// second; the reload waits for one quiet second).
    #[arg(long = "watch-trails")]
    watch_trails: bool,
    /// A reloaded set with fewer trails than this share of the current one is refused and
    /// the current set kept (Maltrail's TRAIL_RELOAD_MIN_RATIO; default 0.5).
    #[arg(long = "trail-min-ratio", value_name = "RATIO")]
    trail_min_ratio: Option<f64>,
    /// Take the trail set from the collector (`--collector`): fetched at start when none is
    /// stored in the state directory yet, then hot-swapped whenever the collector serves a
    /// new one. Needs --trails-public-key; without --trails the stored set is the source.
    #[arg(long = "trails-from-collector")]
    trails_from_collector: bool,
    /// ed25519 public key (64 hex digits, or a file holding them) that compiled trail sets
    /// must be signed with; unsigned or altered sets are refused and the current set kept.
    #[arg(long = "trails-public-key", value_name = "KEY")]
    trails_public_key: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Attach to interfaces and report trail hits live.
    Run {
        /// Interface to attach to (repeatable).
        #[arg(long = "iface", required = true)]
        ifaces: Vec<String>,
        #[command(flatten)]
        trails: TrailArgs,
        /// inline (router: everything passes) or mirror (SPAN/TAP port: uninteresting packets dropped).
        #[arg(long, value_enum, default_value = "inline")]
        mode: ModeArg,
        /// Drop packets that hit an IP trail (inline mode only).
        #[arg(long)]
        enforce: bool,
        /// XDP attach mode: auto tries driver mode, then falls back to generic (skb) mode.
        #[arg(long = "xdp-mode", value_enum, default_value = "auto")]
        xdp_mode: XdpModeArg,
        #[command(flatten)]
        output: OutputArgs,
        /// Window, in milliseconds, in which repeats of one hit are suppressed in the kernel.
        #[arg(long = "suppress-ms", default_value_t = 1000)]
        suppress_ms: u64,
        #[command(flatten)]
        rings: xtrail_sensor::live::RingArgs,
        /// Print the kernel counters to stderr every N seconds (0: only at exit).
        #[arg(long = "stats-interval", default_value_t = 10)]
        stats_interval: u64,
        /// Stop after N seconds (0: run until SIGINT/SIGTERM).
        #[arg(long, default_value_t = 0)]
        duration: u64,
        /// The XDP program's own diagnostics (aya-log).
        #[arg(long = "ebpf-log", value_enum, default_value = "off")]
        ebpf_log: EbpfLog,
        /// Extra TCP port whose responses are parsed as HTTP (repeatable; Maltrail's 80,
        /// 8080, 8000, 3128, 1080 and 8118 are always on).
        #[arg(long = "http-port")]
        http_ports: Vec<u16>,
        /// Do not hand DNS/HTTP/TLS packets to userspace (IP trails only).
        #[arg(long = "no-payloads")]
        no_payloads: bool,
        /// Mirror mode: copy packets through a ring buffer instead of AF_XDP sockets.
        #[arg(long = "no-afxdp")]
        no_afxdp: bool,
        /// Mirror mode: AF_XDP sockets, in copy mode, also on interfaces whose driver has no
        /// zero-copy AF_XDP (a veth) and with generic (skb) XDP. Without it those interfaces
        /// hand packets over by ring-buffer copy, which costs less there.
        #[arg(long = "afxdp-copy", conflicts_with = "no_afxdp")]
        afxdp_copy: bool,
        /// Do not send flow starts to userspace (disables the scan heuristics).
        #[arg(long = "no-flow-starts")]
        no_flow_starts: bool,
        /// Apply Maltrail's SYN label rules to IP hits, as replay does: no event for a SYN to
        /// an `attacker` or a `parking site` (off ports 80/443), or from a `malware` host.
        #[arg(long = "maltrail-syn-rules")]
        maltrail_syn_rules: bool,
        #[command(flatten)]
        heuristics: HeuristicArgs,
        #[command(flatten)]
        collector: CollectorArgs,
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        reload: ReloadArgs,
    },
    /// Replay pcap/pcapng files through the same parsers and matchers (no root needed).
    Replay {
        /// Capture file (repeatable; replayed in order).
        #[arg(long = "pcap", required = true)]
        pcaps: Vec<PathBuf>,
        #[command(flatten)]
        trails: TrailArgs,
        #[command(flatten)]
        output: OutputArgs,
        #[command(flatten)]
        heuristics: HeuristicArgs,
        #[command(flatten)]
        collector: CollectorArgs,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// The effective configuration: the config file with the flags over it, checked.
    Config {
        /// Print it as TOML (the format of the file).
        #[arg(long)]
        print: bool,
        #[command(flatten)]
        trails: TrailArgs,
        /// Sensor name in events (default: the host name).
        #[arg(long = "sensor-name")]
        sensor_name: Option<String>,
        #[command(flatten)]
        heuristics: HeuristicArgs,
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        reload: ReloadArgs,
        /// As `run --maltrail-syn-rules`.
        #[arg(long = "maltrail-syn-rules")]
        maltrail_syn_rules: bool,
    },
    /// Show the sensor identity of a state directory and the kernel counters of running
    /// sensors.
    Stats {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// The state directory whose identity to show (default as for --collector).
        #[arg(long = "state-dir")]
        state_dir: Option<PathBuf>,
    },
}

/// The tunable that puts glibc's malloc on transparent huge pages.
const HUGE_MALLOC: &str = "glibc.malloc.hugetlb";
/// Set for the re-executed image only (and removed by it): one re-execution, whatever glibc
/// made of `GLIBC_TUNABLES`.
const REEXECUTED: &str = "XTRAIL_SENSOR_REEXECUTED";

/// Puts the heap on transparent huge pages where the kernel gives them only on request
/// (`madvise`, Debian's default): glibc requests them for its heap when started with
/// `glibc.malloc.hugetlb=1`, a tunable it reads only at process start, so `run` executes
/// itself once more with it (same process, arguments and descriptors). The
/// detector's tables are read at scattered addresses; on 2 MiB pages those reads miss the
/// TLB far less (bench/results/PERF-LOG.md, 2026-12-07 from 13:04). A `GLIBC_TUNABLES` that
/// names the tunable (`glibc.malloc.hugetlb=0` opts out) is left as it is; a setuid or
/// file-capability binary, whose tunables glibc ignores, is not re-executed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn malloc_on_huge_pages() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os(REEXECUTED).is_some() {
        // Edition 2021, and no other thread exists yet.
        std::env::remove_var(REEXECUTED);
        return;
    }
    // SAFETY: getauxval reads the auxiliary vector; no preconditions.
    let secure = unsafe { libc::getauxval(libc::AT_SECURE) } != 0;
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled");
    if secure || !thp.is_ok_and(|t| t.contains("[madvise]")) {
        return;
    }
    // Tunables that are not UTF-8 are left alone.
    let given = std::env::var_os("GLIBC_TUNABLES").unwrap_or_default();
    let Some(tunables) = given.to_str().and_then(tunables_with_huge_malloc) else {
        return;
    };
    let mut args = std::env::args_os();
    // By its own path, not /proc/self/exe: the process's name (`comm`, what pgrep and top
    // show) is the executed file's.
    let (Some(arg0), Ok(exe)) = (args.next(), std::env::current_exe()) else {
        return;
    };
    // Returns only if the exec failed: the sensor goes on with 4 KiB pages.
    let error = std::process::Command::new(exe)
        .arg0(arg0)
        .args(args)
        .env("GLIBC_TUNABLES", tunables)
        .env(REEXECUTED, "1")
        .exec();
    eprintln!("xtrail-sensor: heap left on 4 KiB pages (re-executing with {HUGE_MALLOC}=1 failed: {error})");
}

/// `GLIBC_TUNABLES` with the huge-page tunable added; `None` if it names that tunable already.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tunables_with_huge_malloc(given: &str) -> Option<String> {
    if given
        .split(':')
        .any(|t| t.split('=').next() == Some(HUGE_MALLOC))
    {
        None
    } else if given.is_empty() {
        Some(format!("{HUGE_MALLOC}=1"))
    } else {
        Some(format!("{given}:{HUGE_MALLOC}=1"))
    }
}

/// Elsewhere the heap stays as the allocator makes it.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn malloc_on_huge_pages() {}

fn main() -> ExitCode {
    // One malloc arena for all threads: start-up work on helper threads (aya's kernel BTF
    // parse, trail loading) frees megabytes that later allocations then reuse instead of
    // growing other arenas (median peak RSS of a compiled-set start 34.4-35.1 MB with one
    // arena, 38.8-41.5 MB without, 8 starts each, 2026-12-02). The detector allocates
    // nothing per clean packet (`detect/tests/no_alloc.rs`, `tests/handoff_no_alloc.rs`);
    // events, the publisher and AF_XDP set-up do, and now share the one arena's lock.
    // SAFETY: mallopt only tunes the allocator; no other thread exists yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    startup::begin();
    let cli = Cli::parse();
    // Live only: replays of trails loaded into the heap ran 3 of 8 times 33-125 ns a packet
    // slower with it (PERF-LOG.md, 2026-12-07 from 13:04).
    if matches!(cli.command, Command::Run { .. }) {
        malloc_on_huge_pages();
    }
    // `run`: the XDP loader (the kernel's BTF parsed, its BPF features probed) is made on
    // another thread from now on, while the configuration is read; `run` waits for it
    // (`loader::btf_freed`) before it builds the trail set.
    if matches!(cli.command, Command::Run { .. }) {
        loader::prepare();
    }
    // The XDP program's aya-log records arrive at debug level.
    let level = match &cli.command {
        Command::Run {
            ebpf_log: EbpfLog::Debug,
            ..
        } => "info,xtrail_xdp=debug",
        _ => "info",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_target(false)
        .init();
    let result = match cli.command {
        Command::Run {
            ifaces,
            trails,
            mode,
            enforce,
            xdp_mode,
            output,
            suppress_ms,
            rings,
            stats_interval,
            duration,
            ebpf_log,
            http_ports,
            no_payloads,
            no_afxdp,
            afxdp_copy,
            no_flow_starts,
            maltrail_syn_rules,
            heuristics,
            collector,
            config,
            reload,
        } => run(RunArgs {
            ifaces,
            trails,
            mode: match mode {
                ModeArg::Inline => Mode::Inline,
                ModeArg::Mirror => Mode::Mirror,
            },
            enforce,
            xdp_mode: match xdp_mode {
                XdpModeArg::Auto => AttachMode::Auto,
                XdpModeArg::Driver => AttachMode::Driver,
                XdpModeArg::Skb => AttachMode::Skb,
            },
            output,
            suppress: Duration::from_millis(suppress_ms),
            rings,
            stats_interval: Duration::from_secs(stats_interval),
            duration: (duration > 0).then(|| Duration::from_secs(duration)),
            ebpf_log_level: match ebpf_log {
                EbpfLog::Off => 0,
                EbpfLog::Debug => 1,
            },
            http_ports,
            no_payloads,
            no_afxdp,
            afxdp_copy,
            no_flow_starts,
            maltrail_syn_rules,
            heuristics,
            collector,
            config,
            reload,
        }),
        Command::Replay {
            pcaps,
            trails,
            output,
            heuristics,
            collector,
            config,
        } => replay(ReplayArgs {
            pcaps,
            trails,
            output,
            heuristics,
            collector,
            config,
        }),
        Command::Config {
            print,
            trails,
            sensor_name,
            heuristics,
            config,
            reload,
            maltrail_syn_rules,
        } => resolve_config(
            &config,
            &trails,
            &heuristics,
            sensor_name,
            maltrail_syn_rules,
            Some(&reload),
        )
        .map(|c| {
            if print {
                print!("{}", c.to_toml());
            } else {
                eprintln!("xtrail-sensor: configuration is valid (--print shows it)");
            }
        }),
        Command::Stats { json, state_dir } => show_stats(json, state_dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtrail-sensor: error: {}", error_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, skipping a cause its parent already quotes.
fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "xtrail".to_string())
}

struct RunArgs {
    ifaces: Vec<String>,
    trails: TrailArgs,
    mode: Mode,
    enforce: bool,
    xdp_mode: AttachMode,
    output: OutputArgs,
    suppress: Duration,
    rings: xtrail_sensor::live::RingArgs,
    stats_interval: Duration,
    duration: Option<Duration>,
    ebpf_log_level: u8,
    http_ports: Vec<u16>,
    no_payloads: bool,
    no_afxdp: bool,
    afxdp_copy: bool,
    no_flow_starts: bool,
    maltrail_syn_rules: bool,
    heuristics: HeuristicArgs,
    collector: CollectorArgs,
    config: ConfigArgs,
    reload: ReloadArgs,
}

/// Loads trails from every source as a reload does ([`reload::load_sources_checking`]: a
/// compiled set is opened once, its version read from its header, its header and signature
/// checked, its body checksum computed on another thread) and prints what was found;
/// returns the set, its version and the pending checksum.
fn load_trails(
    paths: &[PathBuf],
    public_key: Option<&[u8; 32]>,
) -> anyhow::Result<(TrailSet, String, Option<reload::TrailCheck>)> {
    let started = Instant::now();
    // A compiled set (`xtrail-trails build`, found by its magic bytes) is memory-mapped, not
    // parsed; it holds a whole set, so it is the only source.
    let compiled = paths.iter().find(|p| compiled::is_compiled(p));
    if let (Some(p), true) = (compiled, paths.len() > 1) {
        bail!(
            "{} is a compiled trail set: give it as the only --trails source",
            p.display()
        );
    }
    let (trails, version, check) =
        reload::load_sources_checking(paths, public_key).map_err(|e| match compiled {
            Some(p) => anyhow::anyhow!("trail set {} refused: {e}", p.display()),
            None => anyhow::Error::new(e),
        })?;
    startup::mark("trails_opened");
    startup::thread_cpu("main_to_trails_opened");
    match compiled {
        Some(p) => eprintln!(
            "xtrail-sensor: compiled trail set {} version {version} opened in {:.3}s (checksum checked before attaching): {}",
            p.display(),
            started.elapsed().as_secs_f64(),
            trails.report
        ),
        None => eprintln!(
            "xtrail-sensor: trails loaded in {:.2}s: {}",
            started.elapsed().as_secs_f64(),
            trails.report
        ),
    }
    Ok((trails, version, check))
}

/// Waits for a compiled set's body checksum; a refusal reads as at the set's opening.
fn trail_check(check: Option<reload::TrailCheck>) -> anyhow::Result<()> {
    match check {
        Some(c) => {
            let path = c.path().display().to_string();
            c.wait()
                .map_err(|e| anyhow::anyhow!("trail set {path} refused: {e}"))
        }
        None => Ok(()),
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    if args.enforce && args.mode != Mode::Inline {
        bail!("--enforce needs --mode inline: a mirror port carries copies, there is nothing to block");
    }
    privilege::check()?;
    for iface in &args.ifaces {
        if loader::ifindex(iface).is_none() {
            bail!("unknown interface {iface}");
        }
    }
    let mut cfg = resolve_config(
        &args.config,
        &args.trails,
        &args.heuristics,
        args.output.sensor_name.clone(),
        args.maltrail_syn_rules,
        Some(&args.reload),
    )?;
    let public_key = cfg
        .trails_public_key
        .as_deref()
        .map(trail_pull::read_public_key)
        .transpose()?;
    let trail_pull = if cfg.trails_from_collector {
        let urls = args.collector.urls(&cfg);
        let (Some(url), Some(key)) = (urls.first(), public_key) else {
            bail!("--trails-from-collector needs --collector and --trails-public-key");
        };
        let o = PullOptions {
            url: url.clone(),
            token: args.collector.token.clone().unwrap_or_default(),
            ca_cert: args.collector.collector_ca.clone(),
            sensor_name: sensor_name(&cfg),
            state_dir: collector_link::state_dir(args.collector.state_dir.as_deref()),
            public_key: key,
        };
        if cfg.trails.is_empty() {
            let stored = trail_pull::stored_set(&o.state_dir);
            if !stored.is_file() {
                trail_pull::pull_once(&o).context("first trail set from the collector")?;
            }
            cfg.trails = vec![stored];
        }
        Some(o)
    } else {
        None
    };
    // The trail set, the whitelist and the user-agent patterns are built once the kernel
    // BTF's parse has freed its memory.
    loader::btf_freed();
    // The user-agent patterns compile meanwhile.
    let ua_file = cfg.ua_file.clone();
    let ua = std::thread::spawn(move || load_ua_file(ua_file.as_deref()));
    // A compiled source must carry a good signature when a key is configured (checked as it
    // is opened).
    let (trails, trail_set_version, whitelist, check) = load_detection(&cfg, public_key.as_ref())?;
    if trails.ip.is_empty() {
        // Said of a set whose checksum holds only.
        trail_check(check)?;
        bail!(
            "no IP, CIDR or IP:port trails in {}: the XDP fast path has nothing to look for",
            cfg.trails
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let sensor_name = sensor_name(&cfg);
    let events_log = &args.output.events_log;
    let mut log = EventLog::open(events_log, args.output.format.into())
        .with_context(|| format!("opening events log {}", events_log.display()))?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("installing signal handler")?;
    }
    let mut http_ports = loader::DEFAULT_HTTP_PORTS.to_vec();
    http_ports.extend(&args.http_ports);
    // Kept to the end: dropping it stops the reporter after live::run's last flush.
    let link = args.collector.start(&cfg, &sensor_name, "run")?;
    let metrics = match cfg.metrics {
        Some(addr) => {
            let m = xtrail_sensor::metrics::MetricsServer::start(addr)
                .with_context(|| format!("serving metrics on {addr}"))?;
            eprintln!(
                "xtrail-sensor: metrics on http://{}/metrics",
                m.local_addr()
            );
            Some(m)
        }
        None => None,
    };
    let mut sensor = SensorOptions {
        mode: args.mode,
        enforce: args.enforce,
        suppress: args.suppress,
        ebpf_log_level: args.ebpf_log_level,
        handoff: !args.no_payloads,
        http_ports,
        flows: !args.no_flow_starts,
        ..SensorOptions::default()
    };
    args.rings.apply(&mut sensor);
    let opts = LiveOptions {
        metrics,
        ifaces: args.ifaces,
        sensor,
        attach: args.xdp_mode,
        sensor_name: sensor_name.clone(),
        processor: cfg.processor(sensor_name.clone()),
        stats_interval: args.stats_interval,
        duration: args.duration,
        afxdp: match (args.no_afxdp, args.afxdp_copy) {
            (true, _) => None,
            (false, true) => Some(xtrail_sensor::xsk::Afxdp::Always),
            (false, false) => Some(xtrail_sensor::xsk::Afxdp::ZeroCopy),
        },
        heuristics: cfg.heuristics_for(true),
        ua: std::sync::Mutex::new(Some(ua)),
        publisher: link.as_ref().map(CollectorLink::publisher),
        maltrail_syn_rules: cfg.maltrail_syn_rules,
        workers: cfg.workers,
        throttle: cfg.throttle(),
        flood: cfg.flood(),
        trail_set_version,
        trail_check: std::sync::Mutex::new(check),
        reload: Some(ReloadOptions {
            sources: cfg.trails.clone(),
            min_ratio: cfg.trail_min_ratio,
            watch: cfg.watch_trails,
            public_key,
            ..ReloadOptions::default()
        }),
        trail_pull,
    };
    live::run(
        Arc::new(trails),
        Arc::new(whitelist),
        &opts,
        &mut log,
        &stop,
    )?;
    Ok(())
}

struct ReplayArgs {
    pcaps: Vec<PathBuf>,
    trails: TrailArgs,
    output: OutputArgs,
    heuristics: HeuristicArgs,
    collector: CollectorArgs,
    config: ConfigArgs,
}

fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let cfg = resolve_config(
        &args.config,
        &args.trails,
        &args.heuristics,
        args.output.sensor_name.clone(),
        false,
        None,
    )?;
    let sensor_name = sensor_name(&cfg);
    let link = args.collector.start(&cfg, &sensor_name, "replay")?;
    let publisher = link.as_ref().map(CollectorLink::publisher);
    let (trails, _, whitelist, check) = load_detection(&cfg, None)?;
    trail_check(check)?;
    let opts = ReplayOptions {
        processor: cfg.processor(sensor_name),
        format: args.output.format.into(),
        heuristics: cfg.heuristics_for(false),
        ua_patterns: Some(load_ua(&cfg)?),
        throttle: cfg.throttle(),
        flood: cfg.flood(),
    };
    let events_log = &args.output.events_log;
    let mut out = open_output(events_log)
        .with_context(|| format!("opening events log {}", events_log.display()))?;
    let mut publish_errors = 0u64;
    let stats = xtrail_detect::replay::replay_with(
        &args.pcaps,
        Arc::new(trails),
        Arc::new(whitelist),
        &opts,
        &mut out,
        &mut |ev| {
            if let Some(p) = &publisher {
                if p.publish(ev).is_err() {
                    publish_errors += 1;
                }
            }
        },
    )?;
    drop(out);
    if let Some(p) = &publisher {
        if publish_errors > 0 {
            bail!("{publish_errors} event(s) could not be written to the spool");
        }
        eprintln!(
            "xtrail-sensor: waiting for the collector to acknowledge {} event(s)",
            p.stats().pending
        );
        let spool = link.as_ref().map(|l| l.spool().display().to_string());
        let spool = spool.unwrap_or_default();
        match p.flush(Duration::from_secs(120)) {
            Ok(()) => {}
            Err(e @ PublishError::Refused(_)) => bail!(
                "{e}; the {} event(s) stay in the spool {spool} and are sent by the next replay with a token the collector accepts",
                p.stats().pending
            ),
            Err(e) => bail!(
                "{e}; the collector did not acknowledge every event: the rest stay in the spool {spool} and are sent on the next replay"
            ),
        }
        let s = p.stats();
        eprintln!("xtrail-sensor: collector acknowledged {} event(s)", s.acked);
    }
    let secs = stats.elapsed.as_secs_f64();
    let per_packet = |secs: f64| {
        if stats.packets > 0 {
            secs * 1e9 / stats.packets as f64
        } else {
            0.0
        }
    };
    for e in &stats.file_errors {
        eprintln!(
            "xtrail-sensor: warning: {} ended early: {}",
            e.path.display(),
            e.error
        );
    }
    eprintln!(
        "xtrail-sensor: replayed {} file(s), {} packets, {} events, {} unparsable packets in {:.3}s ({:.0} ns/packet{})",
        stats.files,
        stats.packets,
        stats.events,
        stats.parse_errors,
        secs,
        per_packet(secs),
        // The process's CPU (every thread: the files' read-ahead too), where read.
        match stats.cpu {
            Some(cpu) if stats.packets > 0 =>
                format!(", CPU {:.0} ns/packet", per_packet(cpu.as_secs_f64())),
            _ => String::new(),
        },
    );
    Ok(())
}

fn show_stats(json: bool, state_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let state = collector_link::state_dir(state_dir.as_deref());
    let id = xtrail_publish::identity::read(&state)?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "state_dir": state.display().to_string(), "identity": id })
        );
    } else {
        match &id {
            Some(id) => println!("identity {id} (state dir {})", state.display()),
            None => println!(
                "identity: none yet in {} (made on the first start with --collector)",
                state.display()
            ),
        }
    }
    privilege::check()?;
    let running = stats::find_running();
    if running.is_empty() {
        bail!("no running xtrail-sensor found (no STATS map loaded in the kernel)");
    }
    for (id, map) in running {
        let c = stats::Counters::read(&map).context("reading counters")?;
        if json {
            println!(
                "{}",
                serde_json::json!({ "map_id": id, "counters": c.to_json() })
            );
        } else {
            println!("map {id}: {c}");
        }
    }
    // Userspace counters of running sensors (written every --stats-interval).
    let files = std::fs::read_dir(live::STATS_DIR)
        .into_iter()
        .flatten()
        .flatten();
    for entry in files {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        let pid = v["pid"].as_u64().unwrap_or(0);
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if json {
            println!("{v}");
        } else {
            let pairs = |o: &serde_json::Value| {
                o.as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default()
            };
            println!(
                "sensor pid {pid}: userspace {} detector {}",
                pairs(&v["userspace"]),
                pairs(&v["detector"])
            );
        }
    }
    Ok(())
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::tunables_with_huge_malloc;

    #[test]
    fn the_huge_page_tunable_is_added_once_and_others_are_kept() {
        let add = tunables_with_huge_malloc;
        assert_eq!(add("").as_deref(), Some("glibc.malloc.hugetlb=1"));
        assert_eq!(
            add("glibc.malloc.arena_max=2").as_deref(),
            Some("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")
        );
        assert_eq!(add("glibc.malloc.hugetlb=0"), None);
        assert_eq!(add("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"), None);
        // Another tunable whose name starts alike is not this one.
        assert!(add("glibc.malloc.hugetlbx=1").is_some());
    }
}
