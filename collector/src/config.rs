//! The collector's settings: command-line flags, optionally a TOML config file (flags win;
//! tokens from both are accepted).
//!
//! ```toml
//! data_dir = "/var/lib/xtrail-collector"
//! database = "postgres://xtrail:secret@db.example:5432/xtrail"  # default: SQLite in data_dir
//! grpc = "0.0.0.0:50051"
//! http = "127.0.0.1:8338"
//! sensor_tokens = ["..."]
//! subscriber_tokens = ["..."]
//! tls_cert = "/etc/xtrail/collector.crt"
//! tls_key = "/etc/xtrail/collector.key"
//! retention_days = 30
//! retention_bytes = 20_000_000_000
//! max_batch_events = 10000
//! subscriber_buffer = 1024
//! max_http_connections = 1024
//! max_http_connections_per_source = 64
//! http_idle_seconds = 15
//! max_grpc_connections = 8192
//! max_grpc_connections_per_source = 1024
//! grpc_idle_seconds = 90
//! trails = ["/var/lib/xtrail/trails.csv"]     # for /api/check (as the sensor's --trails)
//! trail_set = "/var/lib/xtrail/trails.xtrails" # compiled, signed set served to sensors
//! whitelist = "/etc/xtrail/whitelist.txt"
//! maltrail_data = "/opt/maltrail/misc"         # optional: Maltrail's updater filters
//! http_tls_cert = "/etc/xtrail/console.crt"   # HTTPS on the HTTP port
//! http_tls_key = "/etc/xtrail/console.key"
//! session_idle_seconds = 1800                # console sessions
//! session_max_seconds = 43200
//! threat_flood_sources = 64                  # console: sources per trail and hour before a flood
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use serde::Deserialize;

use std::time::Duration;

use crate::conn::ConnLimits;
use crate::ingest::BatchLimits;
use crate::retention::Retention;

/// Flags of the server (the default command).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// Directory for the event store (created if missing).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Keep events in PostgreSQL (`postgres://user:password@host:port/dbname`) instead of
    /// SQLite in the data directory; several collectors may share one database.
    #[arg(long, value_name = "URL")]
    pub database: Option<String>,
    /// gRPC listen address [default: 127.0.0.1:50051].
    #[arg(long, value_name = "ADDR")]
    pub grpc: Option<SocketAddr>,
    /// HTTP listen address for /api and /metrics [default: 127.0.0.1:8338].
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// Token a sensor must present to publish (repeatable).
    #[arg(long = "sensor-token", value_name = "T")]
    pub sensor_tokens: Vec<String>,
    /// Token a subscriber must present to subscribe or query (repeatable).
    #[arg(long = "subscriber-token", value_name = "T")]
    pub subscriber_tokens: Vec<String>,
    /// TOML config file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// PEM certificate chain: serve gRPC over TLS (needs --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Delete events older than this many days.
    #[arg(long, value_name = "N")]
    pub retention_days: Option<u64>,
    /// Keep the store under this many bytes, deleting the oldest events.
    #[arg(long, value_name = "N")]
    pub retention_bytes: Option<u64>,
    /// Most events accepted in one batch [default: 10000].
    #[arg(long, value_name = "N")]
    pub max_batch_events: Option<usize>,
    /// Committed batches a subscriber may fall behind before it is told to resume
    /// [default: 1024].
    #[arg(long, value_name = "N")]
    pub subscriber_buffer: Option<usize>,
    /// Open HTTP connections at most [default: 1024].
    #[arg(long, value_name = "N")]
    pub max_http_connections: Option<usize>,
    /// Open HTTP connections from one source address at most [default: 64].
    #[arg(long, value_name = "N")]
    pub max_http_connections_per_source: Option<usize>,
    /// Close an HTTP connection idle for this long [default: 15].
    #[arg(long, value_name = "SECS")]
    pub http_idle_seconds: Option<u64>,
    /// Open gRPC connections at most [default: 8192].
    #[arg(long, value_name = "N")]
    pub max_grpc_connections: Option<usize>,
    /// Open gRPC connections from one source address at most [default: 1024].
    #[arg(long, value_name = "N")]
    pub max_grpc_connections_per_source: Option<usize>,
    /// Close a gRPC connection idle for this long [default: 90].
    #[arg(long, value_name = "SECS")]
    pub grpc_idle_seconds: Option<u64>,
    /// Trail source for `/api/check`, as the sensor's --trails: a trails.csv, a static trail
    /// tree or a list file (repeatable; replaces the config file's list).
    #[arg(long = "trails", value_name = "PATH")]
    pub trails: Vec<PathBuf>,
    /// Maltrail whitelist file consulted by `/api/check`.
    #[arg(long, value_name = "FILE")]
    pub whitelist: Option<PathBuf>,
    /// Compiled, signed trail set (`xtrail-trails build`) served to sensors over the
    /// `Trails` gRPC service and used by `/api/check`; reread on SIGHUP and when it changes.
    #[arg(long = "trail-set", value_name = "PATH")]
    pub trail_set: Option<PathBuf>,
    /// Maltrail's data folder (whitelist.txt, bogon_ranges.txt, cdn_ranges.txt): static
    /// trails are filtered as Maltrail's updater does; its whitelist.txt is the default
    /// whitelist.
    #[arg(long, value_name = "DIR")]
    pub maltrail_data: Option<PathBuf>,
    /// PEM certificate chain: serve the HTTP port (API, console) over TLS (needs
    /// --http-tls-key).
    #[arg(long, value_name = "PATH", requires = "http_tls_key")]
    pub http_tls_cert: Option<PathBuf>,
    /// PEM private key for --http-tls-cert.
    #[arg(long, value_name = "PATH", requires = "http_tls_cert")]
    pub http_tls_key: Option<PathBuf>,
    /// End a console session unused for this long [default: 1800].
    #[arg(long, value_name = "SECS")]
    pub session_idle_seconds: Option<u64>,
    /// End a console session this long after login regardless [default: 43200].
    #[arg(long, value_name = "SECS")]
    pub session_max_seconds: Option<u64>,
    /// Console grouping: more distinct sources than this on one trail within an hour make
    /// one flood threat [default: 64].
    #[arg(long, value_name = "N")]
    pub threat_flood_sources: Option<usize>,
}

/// The config file.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    database: Option<String>,
    grpc: Option<SocketAddr>,
    http: Option<SocketAddr>,
    #[serde(default)]
    sensor_tokens: Vec<String>,
    #[serde(default)]
    subscriber_tokens: Vec<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    retention_days: Option<u64>,
    retention_bytes: Option<u64>,
    max_batch_events: Option<usize>,
    subscriber_buffer: Option<usize>,
    max_http_connections: Option<usize>,
    max_http_connections_per_source: Option<usize>,
    http_idle_seconds: Option<u64>,
    max_grpc_connections: Option<usize>,
    max_grpc_connections_per_source: Option<usize>,
    grpc_idle_seconds: Option<u64>,
    #[serde(default)]
    trails: Vec<PathBuf>,
    whitelist: Option<PathBuf>,
    trail_set: Option<PathBuf>,
    maltrail_data: Option<PathBuf>,
    http_tls_cert: Option<PathBuf>,
    http_tls_key: Option<PathBuf>,
    session_idle_seconds: Option<u64>,
    session_max_seconds: Option<u64>,
    threat_flood_sources: Option<usize>,
    /// `[[exporter]]` tables.
    #[serde(default)]
    exporter: Vec<crate::export::ExporterFile>,
}

/// Everything the server needs, checked.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Event store directory.
    pub data_dir: PathBuf,
    /// PostgreSQL URL of the event store; `None`: SQLite in `data_dir`.
    pub database: Option<String>,
    /// gRPC address.
    pub grpc: SocketAddr,
    /// HTTP address.
    pub http: SocketAddr,
    /// Sensor tokens.
    pub sensor_tokens: Vec<String>,
    /// Subscriber tokens.
    pub subscriber_tokens: Vec<String>,
    /// (certificate, key) PEM files.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Retention limits.
    pub retention: Retention,
    /// Batch limits.
    pub limits: BatchLimits,
    /// Live ring size, in committed batches.
    pub subscriber_buffer: usize,
    /// HTTP connection limits.
    pub http_conns: ConnLimits,
    /// gRPC connection limits.
    pub grpc_conns: ConnLimits,
    /// Exporters (`[[exporter]]` tables of the config file).
    pub exporters: Vec<crate::export::ExporterConfig>,
    /// Trails for `/api/check` (none: it answers 503).
    pub trails: crate::trails::TrailConfig,
    /// The compiled trail set served to sensors (`--trail-set`).
    pub trail_set: Option<PathBuf>,
    /// (certificate, key) PEM files of the HTTP port.
    pub http_tls: Option<(PathBuf, PathBuf)>,
    /// Console session lifetimes (and `secure` when the HTTP port has TLS).
    pub console_sessions: crate::console::session::SessionSettings,
    /// Console threat grouping.
    pub threats: crate::console::threats::ThreatsConfig,
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config {}", path.display()))
}

impl ServerConfig {
    /// Merges flags over the config file and checks the result.
    pub fn from_args(args: ServeArgs) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(p) => read_file(p)?,
            None => FileConfig::default(),
        };
        let Some(data_dir) = args.data_dir.or(file.data_dir) else {
            bail!("--data-dir is required (or data_dir in the config file)");
        };
        let database = args.database.or(file.database);
        if let Some(url) = &database {
            if !crate::storage::postgres::is_postgres_url(url) {
                bail!("--database takes a postgres:// or postgresql:// URL");
            }
            url.parse::<postgres::Config>()
                .map_err(|e| anyhow::anyhow!("--database: {e}"))?;
        }
        let mut sensor_tokens = args.sensor_tokens;
        sensor_tokens.extend(file.sensor_tokens);
        let mut subscriber_tokens = args.subscriber_tokens;
        subscriber_tokens.extend(file.subscriber_tokens);
        for t in sensor_tokens.iter().chain(&subscriber_tokens) {
            if t.is_empty() || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
                bail!("tokens must be non-empty and contain no spaces or control characters");
            }
        }
        if sensor_tokens.iter().any(|t| subscriber_tokens.contains(t)) {
            bail!("a token cannot be both a sensor token and a subscriber token");
        }
        let tls = match (
            args.tls_cert.or(file.tls_cert),
            args.tls_key.or(file.tls_key),
        ) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => bail!("TLS needs both a certificate and a key"),
        };
        let max_events = args
            .max_batch_events
            .or(file.max_batch_events)
            .unwrap_or(BatchLimits::default().max_events);
        if max_events == 0 {
            bail!("--max-batch-events must be positive");
        }
        let subscriber_buffer = args
            .subscriber_buffer
            .or(file.subscriber_buffer)
            .unwrap_or(1024);
        if subscriber_buffer == 0 {
            bail!("--subscriber-buffer must be positive");
        }
        let conns = |max: Option<usize>,
                     per_source: Option<usize>,
                     idle: Option<u64>,
                     d: ConnLimits|
         -> anyhow::Result<ConnLimits> {
            let c = ConnLimits {
                max: max.unwrap_or(d.max),
                per_source: per_source.unwrap_or(d.per_source),
                idle: idle.map_or(d.idle, Duration::from_secs),
            };
            if c.max == 0 || c.per_source == 0 || c.idle.is_zero() {
                bail!("connection limits and idle timeouts must be positive");
            }
            Ok(c)
        };
        let http_conns = conns(
            args.max_http_connections.or(file.max_http_connections),
            args.max_http_connections_per_source
                .or(file.max_http_connections_per_source),
            args.http_idle_seconds.or(file.http_idle_seconds),
            ConnLimits::HTTP,
        )?;
        let grpc_conns = conns(
            args.max_grpc_connections.or(file.max_grpc_connections),
            args.max_grpc_connections_per_source
                .or(file.max_grpc_connections_per_source),
            args.grpc_idle_seconds.or(file.grpc_idle_seconds),
            ConnLimits::GRPC,
        )?;
        let exporters = crate::export::check_all(file.exporter)?;
        let trail_set = args.trail_set.or(file.trail_set);
        let trails = crate::trails::TrailConfig {
            paths: if args.trails.is_empty() {
                file.trails
            } else {
                args.trails
            },
            whitelist: args.whitelist.or(file.whitelist),
            maltrail_data: args.maltrail_data.or(file.maltrail_data),
        };
        for p in trails
            .paths
            .iter()
            .chain(&trails.whitelist)
            .chain(&trails.maltrail_data)
        {
            if !p.exists() {
                bail!(
                    "{} does not exist (--trails, --whitelist, --maltrail-data)",
                    p.display()
                );
            }
        }
        let http_tls = match (
            args.http_tls_cert.or(file.http_tls_cert),
            args.http_tls_key.or(file.http_tls_key),
        ) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => bail!("HTTP TLS needs both --http-tls-cert and --http-tls-key"),
        };
        let default_sessions = crate::console::session::SessionSettings::default();
        let console_sessions = crate::console::session::SessionSettings {
            idle: args
                .session_idle_seconds
                .or(file.session_idle_seconds)
                .map_or(default_sessions.idle, Duration::from_secs),
            absolute: args
                .session_max_seconds
                .or(file.session_max_seconds)
                .map_or(default_sessions.absolute, Duration::from_secs),
            secure: http_tls.is_some(),
        };
        if console_sessions.idle.is_zero() || console_sessions.absolute.is_zero() {
            bail!("session lifetimes must be positive");
        }
        if let Some(p) = &trail_set {
            if !p.is_file() {
                bail!("--trail-set {} is not a file", p.display());
            }
        }
        Ok(ServerConfig {
            exporters,
            trails,
            trail_set,
            http_tls,
            console_sessions,
            threats: crate::console::threats::ThreatsConfig {
                flood_sources: args
                    .threat_flood_sources
                    .or(file.threat_flood_sources)
                    .unwrap_or(crate::console::threats::ThreatsConfig::default().flood_sources)
                    .max(1),
                ..Default::default()
            },
            http_conns,
            grpc_conns,
            data_dir,
            database,
            grpc: args
                .grpc
                .or(file.grpc)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 50051))),
            http: args
                .http
                .or(file.http)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8338))),
            sensor_tokens,
            subscriber_tokens,
            tls,
            retention: Retention {
                max_age_days: args.retention_days.or(file.retention_days),
                max_bytes: args.retention_bytes.or(file.retention_bytes),
            },
            limits: BatchLimits {
                max_events,
                ..BatchLimits::default()
            },
            subscriber_buffer,
        })
    }
}
