//! The sensor's one configuration: a TOML file (`--config FILE`, else
//! `/etc/xtrail/sensor.toml` when it exists), command-line flags over it, checked once into
//! [`SensorConfig`], from which `run` and `replay` build their pipeline. `xtrail-sensor
//! config --print` shows the result.
//!
//! ```toml
//! sensor_name = "gw-1"
//! trails = ["/var/lib/xtrail/trails.csv"]
//! whitelist = "/etc/xtrail/whitelist.txt"
//! ua_file = "/etc/xtrail/ua.txt"
//! workers = 2                 # AF_XDP transport threads (mirror mode)
//! metrics = "127.0.0.1:9465"  # `run`: Prometheus text at http://ADDR/metrics
//! maltrail_syn_rules = false
//! collectors = ["http://10.0.0.5:50051", "http://10.0.0.6:50051"]  # tried in turn
//! watch_trails = true         # `run`: reload when a trail source changes
//! trail_min_ratio = 0.5       # refuse a reloaded set smaller than this share of the current
//! trails_from_collector = true            # `run`: take signed sets from the collector
//! trails_public_key = "/etc/xtrail/trails.pub"  # 64 hex digits, or a file holding them
//!
//! [heuristics]                # Maltrail's thresholds; windows in microseconds
//! port_scan_threshold = 10
//! nxdomain_per_hour_threshold = 20
//!
//! [throttle]                  # collapse identical events, summarize repeats
//! window_us = 1000000
//! [throttle.summarize]
//! max_events = 3
//! window_us = 60000000
//!
//! [flood]                     # per-trail aggregation and the sensor's event budget
//! sources_per_trail = 50
//! budget_per_sec = 2000
//! burst = 10000
//! ```
//!
//! Every detection setting is here. The data files are resolved once, here, and printed by
//! `config --print`: a flag or the file, else `$XTRAIL_WHITELIST` / `$XTRAIL_UA_FILE`, else
//! `/etc/xtrail/whitelist.txt` / `/etc/xtrail/ua.txt`, else (a development tree) Maltrail's
//! data folder `shared/data/maltrail/data/` in a folder above the executable. The pipeline
//! is built from the resolved paths only.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use xtrail_detect::heuristics::HeuristicsConfig;
use xtrail_detect::pipeline::FloodConfig;
use xtrail_detect::process::ProcessorConfig;
use xtrail_detect::throttle::ThrottleConfig;

/// Where the configuration is read from when `--config` is not given (if it exists).
pub const DEFAULT_PATH: &str = "/etc/xtrail/sensor.toml";

/// The effective configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SensorConfig {
    /// Sensor name in events (default: the host name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sensor_name: Option<String>,
    /// Trail sources: Maltrail trails.csv files, static trail trees, list files.
    pub trails: Vec<PathBuf>,
    /// Whitelist file (Maltrail's format).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub whitelist: Option<PathBuf>,
    /// Use no whitelist.
    pub no_whitelist: bool,
    /// Suspicious user-agent patterns (Maltrail's ua.txt).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ua_file: Option<PathBuf>,
    /// AF_XDP transport threads in mirror mode.
    pub workers: usize,
    /// `run`: serve the counters in the Prometheus text format at `http://ADDR/metrics`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Maltrail's SYN label rules for live kernel hits.
    pub maltrail_syn_rules: bool,
    /// Collector gRPC URLs (collectors of one store), tried in turn: the first while it
    /// serves, the next when it cannot be reached or is not serving. `--collector` flags
    /// replace the list.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub collectors: Vec<String>,
    /// URL candidates beyond Maltrail's (a `/dir/` trail matching any file under it).
    pub url_extra_candidates: bool,
    /// `run`: reload when a trail source changes (`--watch-trails`).
    pub watch_trails: bool,
    /// A reloaded set below this share of the current one is refused (`--trail-min-ratio`,
    /// Maltrail's `TRAIL_RELOAD_MIN_RATIO`).
    pub trail_min_ratio: f64,
    /// `run`: take the trail set from the collector (`--trails-from-collector`).
    pub trails_from_collector: bool,
    /// ed25519 key compiled sets must be signed with: 64 hex digits or a file holding them
    /// (`--trails-public-key`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trails_public_key: Option<String>,
    /// Trails only: no heuristics.
    pub no_heuristics: bool,
    /// Heuristic thresholds and bounds.
    pub heuristics: HeuristicsConfig,
    /// Write every event (no collapse, no summaries).
    pub no_throttle: bool,
    /// Collapse and summarize settings.
    pub throttle: ThrottleConfig,
    /// No flood guard (no per-trail aggregation, no event budget).
    pub no_flood_guard: bool,
    /// Per-trail aggregation and the event budget.
    pub flood: FloodConfig,
}

impl Default for SensorConfig {
    fn default() -> Self {
        SensorConfig {
            sensor_name: None,
            trails: Vec::new(),
            whitelist: None,
            no_whitelist: false,
            ua_file: None,
            workers: 1,
            metrics: None,
            maltrail_syn_rules: false,
            collectors: Vec::new(),
            url_extra_candidates: false,
            watch_trails: false,
            trail_min_ratio: 0.5,
            trails_from_collector: false,
            trails_public_key: None,
            no_heuristics: false,
            heuristics: HeuristicsConfig::default(),
            no_throttle: false,
            throttle: ThrottleConfig::default(),
            no_flood_guard: false,
            flood: FloodConfig::default(),
        }
    }
}

/// The first of `$env`, `/etc/xtrail/NAME`, `shared/data/maltrail/data/NAME` above the
/// executable that is a file.
fn default_data_file(env: &str, name: &str) -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os(env) {
        candidates.push(PathBuf::from(p));
    }
    candidates.push(Path::new("/etc/xtrail").join(name));
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1) {
            candidates.push(dir.join("shared/data/maltrail/data").join(name));
        }
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// What the command line says over the file (unset = the file's value).
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--sensor-name`.
    pub sensor_name: Option<String>,
    /// `--trails` (replaces the file's list when given).
    pub trails: Vec<PathBuf>,
    /// `--whitelist`.
    pub whitelist: Option<PathBuf>,
    /// `--no-whitelist`.
    pub no_whitelist: bool,
    /// `--ua-file`.
    pub ua_file: Option<PathBuf>,
    /// `--no-heuristics`.
    pub no_heuristics: bool,
    /// `--check-missing-host`.
    pub check_missing_host: bool,
    /// `--workers`.
    pub workers: Option<usize>,
    /// `--metrics`.
    pub metrics: Option<std::net::SocketAddr>,
    /// `--maltrail-syn-rules`.
    pub maltrail_syn_rules: bool,
    /// `--event-budget` (events per second).
    pub event_budget: Option<u32>,
    /// `--no-flood-guard`.
    pub no_flood_guard: bool,
    /// `--url-extra-candidates`.
    pub url_extra_candidates: bool,
    /// `--watch-trails`.
    pub watch_trails: bool,
    /// `--trail-min-ratio`.
    pub trail_min_ratio: Option<f64>,
    /// `--trails-from-collector`.
    pub trails_from_collector: bool,
    /// `--trails-public-key`.
    pub trails_public_key: Option<String>,
}

/// A configuration that cannot be used; the message names the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong (TOML's message, naming the key).
        message: String,
    },
    /// A setting is out of range.
    #[error("{0}")]
    Invalid(String),
}

impl SensorConfig {
    /// Reads `path` (or the default file when it exists), applies the flags, and checks.
    pub fn resolve(path: Option<&Path>, o: &Overrides) -> Result<SensorConfig, ConfigError> {
        let default = Path::new(DEFAULT_PATH);
        let path = path.or_else(|| default.is_file().then_some(default));
        let mut c = match path {
            Some(p) => Self::read(p)?,
            None => SensorConfig::default(),
        };
        if o.sensor_name.is_some() {
            c.sensor_name.clone_from(&o.sensor_name);
        }
        if !o.trails.is_empty() {
            c.trails.clone_from(&o.trails);
        }
        if o.whitelist.is_some() {
            c.whitelist.clone_from(&o.whitelist);
            c.no_whitelist = false;
        }
        if o.no_whitelist {
            c.no_whitelist = true;
            c.whitelist = None;
        }
        if o.ua_file.is_some() {
            c.ua_file.clone_from(&o.ua_file);
        }
        c.no_heuristics |= o.no_heuristics;
        c.heuristics.check_missing_host |= o.check_missing_host;
        if let Some(w) = o.workers {
            c.workers = w;
        }
        if o.metrics.is_some() {
            c.metrics = o.metrics;
        }
        c.maltrail_syn_rules |= o.maltrail_syn_rules;
        if let Some(b) = o.event_budget {
            c.flood.budget_per_sec = b;
        }
        c.no_flood_guard |= o.no_flood_guard;
        c.url_extra_candidates |= o.url_extra_candidates;
        c.watch_trails |= o.watch_trails;
        if let Some(r) = o.trail_min_ratio {
            c.trail_min_ratio = r;
        }
        c.trails_from_collector |= o.trails_from_collector;
        if o.trails_public_key.is_some() {
            c.trails_public_key.clone_from(&o.trails_public_key);
        }
        c.resolve_data_files();
        c.check()?;
        Ok(c)
    }

    /// Fills the whitelist and user-agent paths the file and flags left open from the
    /// default locations (see the module doc).
    pub fn resolve_data_files(&mut self) {
        if self.whitelist.is_none() && !self.no_whitelist {
            self.whitelist = default_data_file("XTRAIL_WHITELIST", "whitelist.txt");
        }
        if self.ua_file.is_none() {
            self.ua_file = default_data_file("XTRAIL_UA_FILE", "ua.txt");
        }
    }

    /// Parses a file.
    pub fn read(path: &Path) -> Result<SensorConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Range checks, each naming its setting.
    pub fn check(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.workers == 0 || self.workers > 1024 {
            return bad("workers must be between 1 and 1024");
        }
        if !(0.0..=1.0).contains(&self.trail_min_ratio) {
            return bad("trail_min_ratio (--trail-min-ratio) must be between 0 and 1");
        }
        if self.trails_from_collector && self.trails_public_key.is_none() {
            return bad(
                "trails_from_collector (--trails-from-collector) needs trails_public_key (--trails-public-key)",
            );
        }
        let h = &self.heuristics;
        if h.scan_window_us <= 0 || h.dns_exhaustion_window_us <= 0 {
            return bad("heuristics windows must be positive");
        }
        if h.max_scan_keys == 0 || h.max_nxdomain_counters == 0 || h.max_exhaustion_domains == 0 {
            return bad("heuristics table sizes must be positive");
        }
        let t = &self.throttle;
        if t.window_us <= 0 || t.capacity == 0 {
            return bad("throttle.window_us and throttle.capacity must be positive");
        }
        if let Some(s) = &t.summarize {
            if s.window_us <= 0 || s.capacity == 0 || s.max_events == 0 {
                return bad("throttle.summarize values must be positive");
            }
        }
        let f = &self.flood;
        if f.window_us <= 0 || f.capacity == 0 || f.sources_per_trail == 0 {
            return bad(
                "flood.window_us, flood.capacity and flood.sources_per_trail must be positive",
            );
        }
        if f.budget_per_sec == 0 || f.burst == 0 {
            return bad(
                "flood.budget_per_sec and flood.burst must be positive (or set no_flood_guard)",
            );
        }
        Ok(())
    }

    /// The trails, or an error saying where to give them.
    pub fn require_trails(&self) -> Result<&[PathBuf], ConfigError> {
        if self.trails.is_empty() {
            return Err(ConfigError::Invalid(
                "no trails: give --trails PATH or `trails = [...]` in the config file".into(),
            ));
        }
        Ok(&self.trails)
    }

    /// The heuristics for a capture path (`live`: scans from kernel flow starts).
    pub fn heuristics_for(&self, live: bool) -> Option<HeuristicsConfig> {
        (!self.no_heuristics).then(|| HeuristicsConfig {
            scans_from_packets: !live,
            ..self.heuristics.clone()
        })
    }

    /// The per-packet settings for sensor `name`.
    pub fn processor(&self, name: String) -> ProcessorConfig {
        ProcessorConfig {
            url_extra_candidates: self.url_extra_candidates,
            ..ProcessorConfig::with_sensor(name)
        }
    }

    /// The throttle, if on.
    pub fn throttle(&self) -> Option<ThrottleConfig> {
        (!self.no_throttle).then_some(self.throttle)
    }

    /// The flood guard, if on.
    pub fn flood(&self) -> Option<FloodConfig> {
        (!self.no_flood_guard).then_some(self.flood)
    }

    /// The configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_flags_then_checks() {
        let dir = std::env::temp_dir().join(format!("xtrail-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("sensor.toml");
        std::fs::write(
            &p,
            "sensor_name = \"gw\"\ntrails = [\"/a.csv\"]\nworkers = 3\nmetrics = \"127.0.0.1:9465\"\n[heuristics]\nport_scan_threshold = 5\n[flood]\nbudget_per_sec = 10\n",
        )
        .unwrap();
        let c = SensorConfig::resolve(Some(&p), &Overrides::default()).unwrap();
        assert_eq!(c.sensor_name.as_deref(), Some("gw"));
        assert_eq!(c.workers, 3);
        assert_eq!(c.metrics, Some("127.0.0.1:9465".parse().unwrap()));
        assert_eq!(c.heuristics.port_scan_threshold, 5);
        assert_eq!(c.flood.budget_per_sec, 10);
        let o = Overrides {
            workers: Some(1),
            metrics: Some("127.0.0.1:1".parse().unwrap()),
            trails: vec!["/b.csv".into()],
            ..Overrides::default()
        };
        let c = SensorConfig::resolve(Some(&p), &o).unwrap();
        assert_eq!(
            (c.workers, c.trails.clone()),
            (1, vec![PathBuf::from("/b.csv")])
        );
        assert_eq!(c.metrics, Some("127.0.0.1:1".parse().unwrap()));
        // The printed form reads back to the same configuration.
        assert_eq!(toml::from_str::<SensorConfig>(&c.to_toml()).unwrap(), c);
        std::fs::write(&p, "colour = 1\n").unwrap();
        let e = SensorConfig::resolve(Some(&p), &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
        std::fs::write(&p, "workers = 0\n").unwrap();
        let e = SensorConfig::resolve(Some(&p), &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("workers"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn reload_keys_from_the_file_and_the_flags() {
        let dir = std::env::temp_dir().join(format!("xtrail-cfg-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("sensor.toml");
        let key = "ab".repeat(32);
        std::fs::write(
            &p,
            format!("watch_trails = true\ntrail_min_ratio = 0.25\ntrails_from_collector = true\ntrails_public_key = \"{key}\"\n"),
        )
        .unwrap();
        let c = SensorConfig::resolve(Some(&p), &Overrides::default()).unwrap();
        assert!(c.watch_trails && c.trails_from_collector);
        assert_eq!(c.trail_min_ratio, 0.25);
        assert_eq!(c.trails_public_key.as_deref(), Some(key.as_str()));
        assert_eq!(toml::from_str::<SensorConfig>(&c.to_toml()).unwrap(), c);
        // Flags override the file.
        let o = Overrides {
            trail_min_ratio: Some(0.75),
            trails_public_key: Some("/etc/xtrail/other.pub".into()),
            ..Overrides::default()
        };
        let c = SensorConfig::resolve(Some(&p), &o).unwrap();
        assert_eq!(c.trail_min_ratio, 0.75);
        assert_eq!(
            c.trails_public_key.as_deref(),
            Some("/etc/xtrail/other.pub")
        );
        // Defaults, and the checks.
        let d = SensorConfig::default();
        assert!(!d.watch_trails && !d.trails_from_collector && d.trail_min_ratio == 0.5);
        std::fs::write(&p, "trail_min_ratio = 1.5\n").unwrap();
        let e = SensorConfig::resolve(Some(&p), &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("trail_min_ratio"), "{e}");
        std::fs::write(&p, "trails_from_collector = true\n").unwrap();
        let e = SensorConfig::resolve(Some(&p), &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("trails_public_key"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
