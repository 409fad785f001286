//! `xtrail-sensor`: live XDP capture (`run`), pcap replay (`replay`), kernel counters (`stats`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand, ValueEnum};
use xtrail_detect::event::Format;
use xtrail_detect::trails::{LoadOptions, TrailSet};
use xtrail_detect::whitelist::Whitelist;
use xtrail_sensor::hits::{self, Clock};
use xtrail_sensor::loader::{self, AttachMode, Mode, Sensor, SensorOptions};
use xtrail_sensor::output::EventLog;
use xtrail_sensor::{privilege, stats};

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

#[derive(Subcommand)]
enum Command {
    /// Attach to interfaces and report trail hits live.
    Run {
        /// Interface to attach to (repeatable).
        #[arg(long = "iface", required = true)]
        ifaces: Vec<String>,
        /// Trail source: a Maltrail trails.csv, a static trail tree, or a list file (repeatable).
        #[arg(long = "trails", required = true)]
        trails: Vec<PathBuf>,
        /// Whitelist file (Maltrail's whitelist.txt format): no event for listed addresses.
        #[arg(long)]
        whitelist: Option<PathBuf>,
        /// inline (router: everything passes) or mirror (SPAN/TAP port: uninteresting packets dropped).
        #[arg(long, value_enum, default_value = "inline")]
        mode: ModeArg,
        /// Drop packets that hit an IP trail (inline mode only).
        #[arg(long)]
        enforce: bool,
        /// XDP attach mode: auto tries driver mode, then falls back to generic (skb) mode.
        #[arg(long = "xdp-mode", value_enum, default_value = "auto")]
        xdp_mode: XdpModeArg,
        /// Where events go: a file (appended) or - for stdout.
        #[arg(long = "events-log", default_value = "-")]
        events_log: PathBuf,
        /// Event line format.
        #[arg(long, value_enum, default_value = "json")]
        format: FormatArg,
        /// Sensor name in events (default: the host name).
        #[arg(long = "sensor-name")]
        sensor_name: Option<String>,
        /// Window, in milliseconds, in which repeats of one hit are suppressed in the kernel.
        #[arg(long = "suppress-ms", default_value_t = 1000)]
        suppress_ms: u64,
        /// Print the kernel counters to stderr every N seconds (0: only at exit).
        #[arg(long = "stats-interval", default_value_t = 10)]
        stats_interval: u64,
        /// Stop after N seconds (0: run until SIGINT/SIGTERM).
        #[arg(long, default_value_t = 0)]
        duration: u64,
        /// The XDP program's own diagnostics (aya-log).
        #[arg(long = "ebpf-log", value_enum, default_value = "off")]
        ebpf_log: EbpfLog,
    },
    /// Show the kernel counters of running sensors.
    Stats {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            ifaces,
            trails,
            whitelist,
            mode,
            enforce,
            xdp_mode,
            events_log,
            format,
            sensor_name,
            suppress_ms,
            stats_interval,
            duration,
            ebpf_log,
        } => run(RunArgs {
            ifaces,
            trails,
            whitelist,
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
            events_log,
            format: format.into(),
            sensor_name: sensor_name.unwrap_or_else(hostname),
            suppress: Duration::from_millis(suppress_ms),
            stats_interval: Duration::from_secs(stats_interval),
            duration: (duration > 0).then(|| Duration::from_secs(duration)),
            ebpf_log_level: match ebpf_log {
                EbpfLog::Off => 0,
                EbpfLog::Debug => 1,
            },
        }),
        Command::Stats { json } => show_stats(json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtrail-sensor: error: {e:#}");
            ExitCode::FAILURE
        }
    }
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
    trails: Vec<PathBuf>,
    whitelist: Option<PathBuf>,
    mode: Mode,
    enforce: bool,
    xdp_mode: AttachMode,
    events_log: PathBuf,
    format: Format,
    sensor_name: String,
    suppress: Duration,
    stats_interval: Duration,
    duration: Option<Duration>,
    ebpf_log_level: u8,
}

/// Loads trails from every source and prints what was found.
fn load_trails(paths: &[PathBuf]) -> anyhow::Result<TrailSet> {
    let started = Instant::now();
    let trails = TrailSet::load(paths, &LoadOptions::default())?;
    eprintln!(
        "xtrail-sensor: trails loaded in {:.2}s: {}",
        started.elapsed().as_secs_f64(),
        trails.report
    );
    Ok(trails)
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
    let trails = load_trails(&args.trails)?;
    if trails.ip.is_empty() {
        bail!(
            "no IP, CIDR or IP:port trails in {}: the XDP fast path has nothing to look for",
            args.trails
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let whitelist = match &args.whitelist {
        Some(p) => {
            Whitelist::load(p).with_context(|| format!("reading whitelist {}", p.display()))?
        }
        None => Whitelist::empty(),
    };
    let mut log = EventLog::open(&args.events_log, args.format)
        .with_context(|| format!("opening events log {}", args.events_log.display()))?;

    let started = Instant::now();
    let mut sensor = Sensor::load(
        &trails.ip,
        &SensorOptions {
            mode: args.mode,
            enforce: args.enforce,
            suppress: args.suppress,
            ebpf_log_level: args.ebpf_log_level,
        },
    )?;
    let f = &sensor.fill;
    eprintln!(
        "xtrail-sensor: maps filled in {:.2}s: {} IPv4, {} IPv6, {} IP:port, {} IPv4 CIDR, {} IPv6 CIDR; prefilter {}",
        started.elapsed().as_secs_f64(),
        f.ipv4,
        f.ipv6,
        f.ipport,
        f.cidr4,
        f.cidr6,
        if f.prefilter {
            format!("on ({} /24 blocks)", f.prefilter_blocks)
        } else {
            "off".to_string()
        }
    );
    let mut logger = if args.ebpf_log_level > 0 {
        sensor.take_logger()
    } else {
        None
    };
    let mut ring = sensor.take_hits()?;

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("installing signal handler")?;
    }
    for iface in &args.ifaces {
        let a = sensor.attach(iface, args.xdp_mode)?;
        eprintln!(
            "xtrail-sensor: attached to {} ({} mode, {} mode{})",
            a.iface,
            a.mode,
            match args.mode {
                Mode::Inline => "inline",
                Mode::Mirror => "mirror",
            },
            if args.enforce { ", enforcing" } else { "" }
        );
    }

    let mut clock = Clock::now();
    let mut last_stats = Instant::now();
    let mut last_clock = Instant::now();
    let mut whitelisted = 0u64;
    let run_started = Instant::now();
    let ring_fd = std::os::fd::AsRawFd::as_raw_fd(&ring);
    let log_fd = logger.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
    let ifnames: Vec<(u32, String)> = sensor
        .attachments()
        .iter()
        .map(|a| (a.ifindex, a.iface.clone()))
        .collect();
    while !stop.load(Ordering::Relaxed) {
        if let Some(d) = args.duration {
            if run_started.elapsed() >= d {
                break;
            }
        }
        let mut fds = vec![libc::pollfd {
            fd: ring_fd,
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Some(fd) = log_fd {
            fds.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: fds is a valid array of pollfd of the given length.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 200) };
        if last_clock.elapsed() > Duration::from_secs(60) {
            clock = Clock::now();
            last_clock = Instant::now();
        }
        let mut wrote = false;
        while let Some(item) = ring.next() {
            let Some(rec) = hits::parse_record(&item) else {
                continue;
            };
            let iface = ifnames
                .iter()
                .find(|(i, _)| *i == rec.ifindex)
                .map(|(_, n)| n.clone());
            let event = hits::to_event(&rec, &trails, &args.sensor_name, iface, &clock);
            let trail_ip = if rec.side == xtrail_common::side::SRC {
                event.src_ip
            } else {
                event.dst_ip
            };
            if whitelist.is_ip_whitelisted(trail_ip) {
                whitelisted += 1;
                continue;
            }
            log.write(&event).context("writing event")?;
            wrote = true;
        }
        if wrote {
            log.flush().context("writing event")?;
        }
        if let Some(l) = logger.as_mut() {
            l.flush();
        }
        if !args.stats_interval.is_zero() && last_stats.elapsed() >= args.stats_interval {
            last_stats = Instant::now();
            if let Ok(c) = sensor.counters() {
                eprintln!(
                    "xtrail-sensor: stats {c} events={} whitelisted={whitelisted}",
                    log.written
                );
            }
        }
    }
    sensor.detach_all();
    // Drain what arrived before detaching.
    while let Some(item) = ring.next() {
        if let Some(rec) = hits::parse_record(&item) {
            let event = hits::to_event(&rec, &trails, &args.sensor_name, None, &clock);
            log.write(&event).context("writing event")?;
        }
    }
    log.flush().context("writing event")?;
    let counters = sensor.counters()?;
    eprintln!(
        "xtrail-sensor: detached; final stats {counters} events={} whitelisted={whitelisted}",
        log.written
    );
    Ok(())
}

fn show_stats(json: bool) -> anyhow::Result<()> {
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
    Ok(())
}
