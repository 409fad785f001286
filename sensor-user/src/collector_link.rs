//! The sensor's link to the collector (`--collector`): its identity, its spool, the
//! publisher, and a reporter that says on stderr, at most every 30 s each (with counts),
//! when the collector refuses the token and when a full spool loses events. Neither is
//! fatal here (`run` keeps retrying; `replay` ends on the refusal through `flush`), so the
//! lines do not use the fatal `xtrail-sensor: error:` prefix. The publisher also sends a
//! heartbeat with the sensor's counters every `--heartbeat-seconds` during `run` (whose
//! loop sets them with `Publisher::set_status`; a replay sends none).
//!
//! State directory layout (`--state-dir`):
//! - `identity`: the sensor's persistent identity, 32 hex digits, made on first use;
//! - `spool-run-NAME/`, `spool-replay-NAME/`: one spool per command and sensor name, each
//!   publishing as its own stream `<identity>-<command>-<suffix>` (the suffix is kept in the
//!   spool, see `xtrail_publish::spool`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use xtrail_publish::{identity, HeartbeatConfig, Publisher, PublisherConfig, Stats};

/// How often the reporter says the same kind of thing again.
const REPORT_EVERY: Duration = Duration::from_secs(30);

/// The state directory: the flag, else /var/lib/xtrail for root, else
/// ~/.local/state/xtrail.
pub fn state_dir(flag: Option<&Path>) -> PathBuf {
    if let Some(dir) = flag {
        return dir.to_path_buf();
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        PathBuf::from("/var/lib/xtrail")
    } else {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".local/state/xtrail")
    }
}

/// What the sensor needs to publish.
pub struct LinkOptions<'a> {
    /// Collector URLs, tried in turn (at least one).
    pub urls: &'a [String],
    pub token: &'a str,
    pub sensor_name: &'a str,
    /// `run` or `replay`: each has its own spool and stream.
    pub command: &'a str,
    pub state_dir: PathBuf,
    pub spool_max_bytes: u64,
    pub ca_cert: Option<PathBuf>,
    /// Time between heartbeats (`Ingest.Heartbeat`, the console's sensors page).
    pub heartbeat: Duration,
}

/// A running publisher and its reporter; dropping it stops both (what is not acknowledged
/// stays spooled).
pub struct CollectorLink {
    publisher: Arc<Publisher>,
    spool: PathBuf,
    stop: Arc<AtomicBool>,
    reporter: Option<JoinHandle<()>>,
}

impl CollectorLink {
    /// Loads (or makes) the identity, opens the spool, starts the publisher and the
    /// reporter, and prints the start line.
    pub fn start(o: &LinkOptions<'_>) -> anyhow::Result<CollectorLink> {
        let id = identity::load_or_create(&o.state_dir).context("the sensor identity")?;
        let spool = o
            .state_dir
            .join(format!("spool-{}-{}", o.command, o.sensor_name));
        let (url, fallbacks) = o.urls.split_first().context("no collector URL")?;
        let mut config =
            PublisherConfig::new(url, o.token, format!("{id}-{}", o.command), spool.clone());
        config.fallback_urls = fallbacks.to_vec();
        config.stream_suffix = true;
        config.sensor_name = o.sensor_name.to_string();
        config.spool_max_bytes = o.spool_max_bytes;
        config.ca_cert = o.ca_cert.clone();
        let publisher =
            Arc::new(Publisher::start(config).context("starting the collector publisher")?);
        // A replay is a one-off: it would only show as a silent sensor afterwards.
        if o.command == "run" {
            publisher
                .start_heartbeats(HeartbeatConfig {
                    sensor_name: o.sensor_name.to_string(),
                    identity: id.to_string(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    interval: o.heartbeat,
                })
                .context("starting the heartbeats")?;
        }
        let report = publisher.open_report();
        eprintln!(
            "xtrail-sensor: publishing to {} as sensor {} (identity {id}, stream {}; spool {}, {} pending from before{})",
            o.urls.join(", "),
            o.sensor_name,
            publisher.stream_id(),
            spool.display(),
            report.pending,
            if report.corrupt_regions > 0 {
                format!(
                    "; {} corrupt region(s), {} bytes skipped",
                    report.corrupt_regions, report.corrupt_bytes
                )
            } else {
                String::new()
            }
        );
        let stop = Arc::new(AtomicBool::new(false));
        let reporter = {
            let publisher = Arc::clone(&publisher);
            let stop = Arc::clone(&stop);
            let spool = spool.clone();
            let max = o.spool_max_bytes;
            std::thread::Builder::new()
                .name("xtrail-link-report".into())
                .spawn(move || report_loop(&publisher, &stop, &spool, max))
                .context("starting the collector reporter")?
        };
        Ok(CollectorLink {
            publisher,
            spool,
            stop,
            reporter: Some(reporter),
        })
    }

    /// The publisher, to hand to whatever produces events.
    pub fn publisher(&self) -> Arc<Publisher> {
        Arc::clone(&self.publisher)
    }

    /// The spool directory.
    pub fn spool(&self) -> &Path {
        &self.spool
    }
}

impl Drop for CollectorLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.reporter.take() {
            let _ = t.join();
        }
    }
}

/// What the reporter said last, per kind.
#[derive(Default)]
struct Said {
    refused: u64,
    refused_at: Option<Instant>,
    dropped: u64,
    dropped_at: Option<Instant>,
}

fn due(at: Option<Instant>, last_pass: bool) -> bool {
    last_pass || at.is_none_or(|t| t.elapsed() >= REPORT_EVERY)
}

fn report(
    out: &mut dyn Write,
    s: &Stats,
    said: &mut Said,
    spool: &Path,
    max_bytes: u64,
    last_pass: bool,
) {
    if s.auth_refused > said.refused && due(said.refused_at, last_pass) {
        let _ = writeln!(
            out,
            "xtrail-sensor: the collector refused the token ({} refusal(s) since start): {}; events stay in the spool {} and are retried (check --token, or `xtrail-collector sensor add NAME` for --sensor-name NAME)",
            s.auth_refused,
            s.last_refusal.as_deref().unwrap_or("no reason given"),
            spool.display()
        );
        said.refused = s.auth_refused;
        said.refused_at = Some(Instant::now());
    }
    if s.dropped > said.dropped && due(said.dropped_at, last_pass) {
        let _ = writeln!(
            out,
            "xtrail-sensor: spool full: {} events dropped ({} since start; spool bound {max_bytes} bytes, collector {}); the collector gets a SPOOL_DROP report with the count",
            s.dropped - said.dropped,
            s.dropped,
            if s.connected { "slow" } else { "unreachable" }
        );
        said.dropped = s.dropped;
        said.dropped_at = Some(Instant::now());
    }
}

fn report_loop(publisher: &Publisher, stop: &AtomicBool, spool: &Path, max_bytes: u64) {
    let mut said = Said::default();
    let mut pass = |last: bool| {
        let stderr = &mut std::io::stderr().lock();
        report(
            stderr,
            &publisher.stats(),
            &mut said,
            spool,
            max_bytes,
            last,
        );
    };
    while !stop.load(Ordering::SeqCst) {
        pass(false);
        std::thread::sleep(Duration::from_millis(200));
    }
    pass(true);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_each_thing_at_most_every_30_s_with_counts() {
        let mut out = Vec::new();
        let mut said = Said::default();
        let spool = Path::new("/spool");
        let mut s = Stats {
            auth_refused: 1,
            last_refusal: Some("Unauthenticated: wrong token".into()),
            dropped: 100,
            ..Stats::default()
        };
        report(&mut out, &s, &mut said, spool, 1 << 20, false);
        s.auth_refused = 5;
        s.dropped = 150;
        report(&mut out, &s, &mut said, spool, 1 << 20, false);
        let text = String::from_utf8(out.clone()).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.contains("refused the token (1 refusal(s) since start): Unauthenticated"));
        assert!(text.contains("spool full: 100 events dropped (100 since start"));
        // The last pass says what is new, once.
        report(&mut out, &s, &mut said, spool, 1 << 20, true);
        report(&mut out, &s, &mut said, spool, 1 << 20, true);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 4, "{text}");
        assert!(text.contains("(5 refusal(s) since start)"));
        assert!(text.contains("spool full: 50 events dropped (150 since start"));
    }
}
