//! Exporters: the collector pushes stored events to SIEMs and log pipelines (syslog with CEF
//! or JSON bodies, Maltrail servers, rotated JSON files), one place for the whole fleet.
//!
//! Each exporter is an internal subscriber with its own cursor, configured as an
//! `[[exporter]]` table in the collector's config file:
//!
//! - a **reader** task reads the store after the exporter's cursor
//!   ([`crate::storage::Storage::read_after`], the filter pushed down), woken by every
//!   commit (the live ring as a doorbell); it hands batches ([`Chunk`]) to
//! - a **bounded queue** (`queue` batches of at most `batch` events), drained by
//! - a **deliverer** task that formats and sends each batch through its [`Sink`], retrying
//!   with backoff until the target takes it, then persists the batch's last cursor
//!   ([`cursor::CursorFile`], `DATA_DIR/exports/NAME.cursor`, written atomically).
//!
//! Delivery is at-least-once: after a restart (or crash) an exporter resumes after its
//! persisted cursor, so at most the batch that was in flight is sent again. A target that is
//! down stalls only its own deliverer: the queue fills and the reader waits; it holds no
//! events but the queue's, and the live ring never waits for it. Ingest and the other
//! exporters are not slowed; once the target is back the exporter reads on from storage.
//! Retention is the one limit: events deleted before an exporter reached them are not
//! exported.
//!
//! Kinds: [`syslog`] (RFC 5424 / RFC 3164, UDP / TCP / TLS, CEF ([`cef`]) or JSON bodies),
//! [`maltrail`] (Maltrail's `LOG_SERVER` UDP lines), [`file`] (ECS or Suricata-EVE JSON
//! lines, rotated by size and time, optionally gzipped), [`webhook`] (an HTTP POST per
//! event, JSON or a template, throttled per source and trail).
//!
//! Metrics per exporter (`/metrics`, label `exporter`): `xtrail_export_sent_total`,
//! `xtrail_export_failed_total`, `xtrail_export_retries_total`,
//! `xtrail_export_truncated_total`, `xtrail_export_cursor`, `xtrail_export_lag_cursors`,
//! `xtrail_export_queue_batches`, `xtrail_export_up`, `xtrail_export_throttled_total`.
//!
//! Tests: unit tests per file; `collector/tests/export.rs` runs the real collector fed by
//! the stock publisher against a real rsyslog, UDP sockets, files, a local HTTP server
//! (webhook) and a rustls TLS syslog receiver.

pub mod cef;
pub mod cursor;
pub mod file;
pub mod maltrail;
pub mod syslog;
pub mod webhook;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::Deserialize;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::mpsc;
use xtrail_proto::v1;

use crate::filter::{parse_filter_args, EventFilter};
use crate::metrics::{add, inc};
use crate::subscribe::Hub;

use self::cursor::CursorFile;

/// Events per batch unless `batch` says otherwise.
pub const DEFAULT_BATCH: usize = 500;
/// Batches queued per exporter unless `queue` says otherwise.
pub const DEFAULT_QUEUE: usize = 16;
/// First retry delay; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Longest retry delay.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A cursor advanced by filtered-out events only is persisted at most this often.
const IDLE_PERSIST: Duration = Duration::from_secs(1);

/// One `[[exporter]]` table as written in the config file. Checked into an
/// [`ExporterConfig`] by [`ExporterFile::check`]; an option that does not apply to the
/// exporter's kind is an error naming it.
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct ExporterFile {
    /// `syslog`, `maltrail`, `file` or `webhook`.
    pub kind: String,
    /// Unique name: cursor file and metrics label (1-64 of `A-Z a-z 0-9 . _ -`).
    pub name: String,
    /// syslog: `udp://HOST:PORT`, `tcp://HOST:PORT`, `tls://HOST:PORT`; maltrail:
    /// `HOST:PORT` (UDP); webhook: `https://...` or `http://...` URL.
    pub target: Option<String>,
    /// syslog: `cef` (default) or `json`; file: `ecs` (default) or `eve`.
    pub format: Option<String>,
    /// syslog: `rfc5424` (default) or `rfc3164`.
    pub protocol: Option<String>,
    /// Filter terms, as `--filter` (`min_severity=high`, `type=DNS,HTTP`, `src=CIDR`...).
    #[serde(default)]
    pub filter: Vec<String>,
    /// Any kind: severity floor (`low`, `medium`, `high`), the same as a `min_severity=`
    /// filter term.
    pub min_severity: Option<String>,
    /// Where a new exporter (no cursor yet) starts: `now` (default) or `oldest`.
    pub start: Option<String>,
    /// Batches queued between reader and deliverer.
    pub queue: Option<usize>,
    /// Events per batch.
    pub batch: Option<usize>,
    /// syslog: facility name (`local0`...`local7`, `user`, `daemon`, `auth`, `authpriv`...)
    /// or number; default `local0`.
    pub facility: Option<String>,
    /// syslog: HOSTNAME field; default the collector's host name.
    pub hostname: Option<String>,
    /// syslog: APP-NAME / TAG; default `xtrail`.
    pub app_name: Option<String>,
    /// syslog: longest message (bytes, after the syslog header); longer bodies are cut.
    pub max_message_bytes: Option<usize>,
    /// syslog over TLS: PEM CA certificates to trust (default: the webpki roots).
    pub tls_ca: Option<PathBuf>,
    /// syslog over TLS: name to verify (default: the target's host).
    pub tls_server_name: Option<String>,
    /// file: the file written (rotated files get a time suffix).
    pub path: Option<PathBuf>,
    /// file: rotate when the file reaches this many bytes.
    pub rotate_bytes: Option<u64>,
    /// file: rotate when the file has been written for this many seconds.
    pub rotate_seconds: Option<u64>,
    /// file: rotated files kept (oldest removed); default 10.
    pub keep: Option<usize>,
    /// file: gzip rotated files.
    pub gzip: Option<bool>,
    /// webhook: body template (JSON with `{field}` placeholders); default the event JSON.
    pub template: Option<String>,
    /// webhook: at most one POST per (source, trail) per this many seconds of event time.
    pub throttle_seconds: Option<u64>,
    /// webhook: extra request headers (`authorization = "Bearer ..."`).
    pub headers: Option<BTreeMap<String, String>>,
    /// webhook over https: accept any certificate (a warning is logged).
    pub insecure_skip_verify: Option<bool>,
}

/// Where a new exporter starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartAt {
    /// Events stored from now on.
    Now,
    /// Every stored event.
    Oldest,
}

/// What an exporter does, by kind.
#[derive(Clone, Debug)]
pub enum Kind {
    /// Syslog.
    Syslog(syslog::SyslogConfig),
    /// Maltrail `LOG_SERVER` lines.
    Maltrail(maltrail::MaltrailConfig),
    /// JSON lines files.
    File(file::FileConfig),
    /// HTTP POST per event.
    Webhook(webhook::WebhookConfig),
}

impl Kind {
    fn name(&self) -> &'static str {
        match self {
            Kind::Syslog(_) => "syslog",
            Kind::Maltrail(_) => "maltrail",
            Kind::File(_) => "file",
            Kind::Webhook(_) => "webhook",
        }
    }
}

/// One checked exporter.
#[derive(Clone, Debug)]
pub struct ExporterConfig {
    /// Unique name.
    pub name: String,
    /// Which events.
    pub filter: v1::Filter,
    /// Start of a new exporter.
    pub start: StartAt,
    /// Queue length, in batches.
    pub queue: usize,
    /// Events per batch.
    pub batch: usize,
    /// Kind and its settings.
    pub kind: Kind,
}

/// A UDP socket bound to any local address of `addr`'s family and connected to it.
pub(crate) async fn connected_udp(
    addr: std::net::SocketAddr,
) -> std::io::Result<tokio::net::UdpSocket> {
    let local = if addr.is_ipv4() {
        std::net::SocketAddr::from(([0u8; 4], 0))
    } else {
        std::net::SocketAddr::from(([0u16; 8], 0))
    };
    let s = tokio::net::UdpSocket::bind(local).await?;
    s.connect(addr).await?;
    Ok(s)
}

/// The collector's host name (syslog HOSTNAME, ECS `observer.name`).
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).into_owned();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

impl ExporterFile {
    /// Checks one table into an [`ExporterConfig`].
    pub fn check(self) -> anyhow::Result<ExporterConfig> {
        let name = self.name.clone();
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            || name.starts_with('.')
        {
            bail!("exporter name {name:?}: 1-64 of A-Z a-z 0-9 . _ - (not starting with .)");
        }
        let ctx = |what: &str| format!("exporter {name:?}: {what}");
        let mut terms = self.filter.clone();
        if let Some(floor) = &self.min_severity {
            if terms.iter().any(|t| {
                let key = t.split('=').next().unwrap_or("").trim();
                key == "min_severity" || key == "severity"
            }) {
                bail!(
                    "{}",
                    ctx("min_severity is set both as an option and in filter")
                );
            }
            terms.push(format!("min_severity={floor}"));
        }
        let filter = parse_filter_args(&terms).with_context(|| ctx("filter"))?;
        let start = match self.start.as_deref() {
            None | Some("now") => StartAt::Now,
            Some("oldest") => StartAt::Oldest,
            Some(other) => bail!("{}", ctx(&format!("start {other:?} is not now or oldest"))),
        };
        let queue = self.queue.unwrap_or(DEFAULT_QUEUE);
        let batch = self.batch.unwrap_or(DEFAULT_BATCH);
        if queue == 0 || batch == 0 || batch > 10_000 {
            bail!("{}", ctx("queue must be positive and batch 1-10000"));
        }
        let kind = match self.kind.as_str() {
            "syslog" => {
                Kind::Syslog(syslog::SyslogConfig::check(&self).with_context(|| ctx("syslog"))?)
            }
            "maltrail" => Kind::Maltrail(
                maltrail::MaltrailConfig::check(&self).with_context(|| ctx("maltrail"))?,
            ),
            "file" => Kind::File(file::FileConfig::check(&self).with_context(|| ctx("file"))?),
            "webhook" => {
                Kind::Webhook(webhook::WebhookConfig::check(&self).with_context(|| ctx("webhook"))?)
            }
            other => bail!(
                "{}",
                ctx(&format!(
                    "unknown kind {other:?} (syslog, maltrail, file, webhook)"
                ))
            ),
        };
        Ok(ExporterConfig {
            name,
            filter,
            start,
            queue,
            batch,
            kind,
        })
    }

    /// The options set in this table, by their config names (to refuse the ones that do
    /// not apply to its kind).
    fn set_options(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        let mut opt = |set: bool, name: &'static str| {
            if set {
                v.push(name);
            }
        };
        opt(self.target.is_some(), "target");
        opt(self.format.is_some(), "format");
        opt(self.protocol.is_some(), "protocol");
        opt(self.facility.is_some(), "facility");
        opt(self.hostname.is_some(), "hostname");
        opt(self.app_name.is_some(), "app_name");
        opt(self.max_message_bytes.is_some(), "max_message_bytes");
        opt(self.tls_ca.is_some(), "tls_ca");
        opt(self.tls_server_name.is_some(), "tls_server_name");
        opt(self.path.is_some(), "path");
        opt(self.rotate_bytes.is_some(), "rotate_bytes");
        opt(self.rotate_seconds.is_some(), "rotate_seconds");
        opt(self.keep.is_some(), "keep");
        opt(self.gzip.is_some(), "gzip");
        opt(self.template.is_some(), "template");
        opt(self.throttle_seconds.is_some(), "throttle_seconds");
        opt(self.headers.is_some(), "headers");
        opt(self.insecure_skip_verify.is_some(), "insecure_skip_verify");
        v
    }

    /// Fails naming the first option set that is not in `allowed`.
    pub(crate) fn only(&self, allowed: &[&str]) -> anyhow::Result<()> {
        if let Some(o) = self
            .set_options()
            .into_iter()
            .find(|o| !allowed.contains(o))
        {
            bail!("option {o:?} does not apply to kind {:?}", self.kind);
        }
        Ok(())
    }
}

/// Checks every `[[exporter]]` table; names must be unique.
pub fn check_all(tables: Vec<ExporterFile>) -> anyhow::Result<Vec<ExporterConfig>> {
    let mut out: Vec<ExporterConfig> = Vec::with_capacity(tables.len());
    for t in tables {
        let c = t.check()?;
        if out.iter().any(|o| o.name == c.name) {
            bail!("two exporters are named {:?}", c.name);
        }
        out.push(c);
    }
    Ok(out)
}

/// Why a delivery failed (the batch is retried).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub String);

impl From<std::io::Error> for SinkError {
    fn from(e: std::io::Error) -> Self {
        SinkError(e.to_string())
    }
}

/// Where an exporter's batches go.
pub trait Sink: Send + 'static {
    /// Delivers every event of `events`, or fails (the whole batch is then retried).
    fn deliver(
        &mut self,
        events: &[v1::Event],
        stats: &ExporterStats,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// Counters of one exporter.
#[derive(Debug, Default)]
pub struct ExporterStats {
    /// Exporter name.
    pub name: String,
    /// Kind name.
    pub kind: &'static str,
    /// Events delivered.
    pub sent: AtomicU64,
    /// Delivery attempts that failed.
    pub failed: AtomicU64,
    /// Attempts after a failure.
    pub retries: AtomicU64,
    /// Messages cut to the target's size limit.
    pub truncated: AtomicU64,
    /// Cursor delivered (and persisted, or about to be).
    pub cursor: AtomicU64,
    /// Batches waiting in the queue.
    pub queued: AtomicU64,
    /// 1 after a successful delivery, 0 after a failed one.
    pub up: AtomicU64,
    /// Events skipped by a throttle (webhook).
    pub throttled: AtomicU64,
}

/// Every exporter's counters, rendered with the collector's metrics.
#[derive(Debug, Default)]
pub struct ExportRegistry {
    exporters: Mutex<Vec<Arc<ExporterStats>>>,
}

impl ExportRegistry {
    fn register(&self, s: Arc<ExporterStats>) {
        self.exporters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(s);
    }

    /// Appends the exporter metrics in the Prometheus text format; lag is measured against
    /// `last_cursor`.
    pub fn render(&self, out: &mut String, last_cursor: u64) {
        let list = self
            .exporters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if list.is_empty() {
            return;
        }
        type Get = fn(&ExporterStats, u64) -> u64;
        let series: [(&str, &str, &str, Get); 9] = [
            (
                "xtrail_export_sent_total",
                "counter",
                "Events delivered by an exporter.",
                |s, _| s.sent.load(Ordering::Relaxed),
            ),
            (
                "xtrail_export_failed_total",
                "counter",
                "Failed delivery attempts.",
                |s, _| s.failed.load(Ordering::Relaxed),
            ),
            (
                "xtrail_export_retries_total",
                "counter",
                "Delivery attempts after a failure.",
                |s, _| s.retries.load(Ordering::Relaxed),
            ),
            (
                "xtrail_export_truncated_total",
                "counter",
                "Messages cut to the target's size limit.",
                |s, _| s.truncated.load(Ordering::Relaxed),
            ),
            (
                "xtrail_export_cursor",
                "gauge",
                "Last cursor delivered.",
                |s, _| s.cursor.load(Ordering::Relaxed),
            ),
            (
                "xtrail_export_lag_cursors",
                "gauge",
                "Cursors between the last stored event and the last delivered.",
                |s, last| last.saturating_sub(s.cursor.load(Ordering::Relaxed)),
            ),
            (
                "xtrail_export_queue_batches",
                "gauge",
                "Batches queued for delivery.",
                |s, _| s.queued.load(Ordering::Relaxed),
            ),
            (
                "xtrail_export_up",
                "gauge",
                "1 when the last delivery succeeded.",
                |s, _| s.up.load(Ordering::Relaxed),
            ),
            (
                "xtrail_export_throttled_total",
                "counter",
                "Events not sent because of a throttle (counted in sent as well).",
                |s, _| s.throttled.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, get) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for s in &list {
                let _ = writeln!(
                    out,
                    "{name}{{exporter=\"{}\",kind=\"{}\"}} {}",
                    s.name,
                    s.kind,
                    get(s, last_cursor)
                );
            }
        }
    }
}

/// A batch handed from reader to deliverer: the events to send (possibly none, when a
/// filter passed nothing) and the cursor that is done once they are delivered.
#[derive(Debug)]
pub struct Chunk {
    /// Events, in cursor order.
    pub events: Vec<v1::Event>,
    /// Every event up to this cursor is in `events` or filtered out.
    pub upto: u64,
}

/// Starts every configured exporter on the collector's tasks; they run until the runtime
/// stops. Cursor files live in `DATA_DIR/exports/`.
pub fn spawn_all(configs: &[ExporterConfig], hub: &Hub, data_dir: &Path) -> anyhow::Result<()> {
    if configs.is_empty() {
        return Ok(());
    }
    let dir = data_dir.join("exports");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for c in configs {
        spawn_one(c, hub, &dir)?;
    }
    Ok(())
}

fn spawn_one(c: &ExporterConfig, hub: &Hub, dir: &Path) -> anyhow::Result<()> {
    let cursor_file = CursorFile::new(dir, &c.name);
    let stored_last = hub.storage.last_cursor().ok();
    let start = match cursor_file
        .load()
        .with_context(|| format!("exporter {:?}", c.name))?
    {
        Some(saved) => match stored_last {
            Some(last) if saved > last => {
                log::warn!(
                    "exporter {:?}: its cursor {saved} is past the store's last cursor {last} (a new store?); starting after {last}",
                    c.name
                );
                last
            }
            _ => saved,
        },
        None => match c.start {
            StartAt::Oldest => 0,
            StartAt::Now => hub.last_cursor.load(Ordering::SeqCst),
        },
    };
    cursor_file
        .store(start)
        .with_context(|| format!("exporter {:?}: writing its cursor", c.name))?;
    let stats = Arc::new(ExporterStats {
        name: c.name.clone(),
        kind: c.kind.name(),
        ..Default::default()
    });
    stats.cursor.store(start, Ordering::Relaxed);
    hub.metrics.exporters.register(Arc::clone(&stats));
    let filter = EventFilter::compile(Some(&c.filter))
        .with_context(|| format!("exporter {:?}: filter", c.name))?;
    let (tx, rx) = mpsc::channel(c.queue);
    tokio::spawn(read_loop(
        hub.clone(),
        filter,
        start,
        c.batch,
        tx,
        Arc::clone(&stats),
    ));
    match &c.kind {
        Kind::Syslog(k) => {
            tokio::spawn(deliver_loop(
                syslog::SyslogSink::new(k.clone()),
                rx,
                stats,
                cursor_file,
            ));
        }
        Kind::Maltrail(k) => {
            tokio::spawn(deliver_loop(
                maltrail::MaltrailSink::new(k.clone()),
                rx,
                stats,
                cursor_file,
            ));
        }
        Kind::File(k) => {
            tokio::spawn(deliver_loop(
                file::FileSink::new(k.clone()),
                rx,
                stats,
                cursor_file,
            ));
        }
        Kind::Webhook(k) => {
            tokio::spawn(deliver_loop(
                webhook::WebhookSink::new(k.clone(), &c.name),
                rx,
                stats,
                cursor_file,
            ));
        }
    }
    log::info!(
        "exporter {:?} ({}) starts after cursor {start}",
        c.name,
        c.kind.name()
    );
    Ok(())
}

/// One read of the store after `*pos`: drains the live doorbell (every commit it signalled
/// is visible to the read), reads a page through `filter` (retrying storage errors every
/// second), queues it as a [`Chunk`] and moves `*pos`. With a store only this collector
/// writes, a short page means everything up to the last commit was seen, so the cursor
/// may move past filtered-out events. Answers whether more is waiting, or `None` when the
/// ring or the receiver is gone. Shared by [`read_loop`] and the console's followers.
pub(crate) async fn read_step(
    hub: &Hub,
    rx: &mut tokio::sync::broadcast::Receiver<crate::ingest::LiveBatch>,
    filter: &Arc<EventFilter>,
    pos: &mut u64,
    batch: usize,
    tx: &mpsc::Sender<Chunk>,
    stats: &ExporterStats,
) -> Option<bool> {
    loop {
        loop {
            match rx.try_recv() {
                Ok(_) | Err(TryRecvError::Lagged(_)) => {}
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Closed) => return None,
            }
        }
        let committed = hub.last_cursor.load(Ordering::SeqCst);
        let storage = Arc::clone(&hub.storage);
        let f = Arc::clone(filter);
        let from = *pos;
        let page =
            tokio::task::spawn_blocking(move || storage.read_after(from, None, &f, batch)).await;
        let page = match page {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                inc(&hub.metrics.storage_errors);
                log::warn!("{:?}: reading the store: {e}; retrying", stats.name);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => {
                log::error!("{:?}: reader task: {e}", stats.name);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let more = page.more;
        let mut upto = page.events.last().map_or(*pos, |e| e.cursor);
        if !more && hub.poll_storage.is_none() {
            upto = upto.max(committed);
        }
        if upto > *pos {
            *pos = upto;
            inc(&stats.queued);
            let chunk = Chunk {
                events: page.events,
                upto,
            };
            if tx.send(chunk).await.is_err() {
                return None;
            }
        }
        return Some(more);
    }
}

/// Reads the store after `pos` and queues what passes the filter. The live ring is only a
/// doorbell: every commit wakes the reader, which then reads storage again, so a slow or
/// dead target never makes it miss anything (it simply reads further behind), and events
/// other collectors commit to a shared store are found by polling (`Hub::poll_storage`).
/// The console's followers (`console::follow`) use it on a shared store and its
/// [`read_step`] to catch up; only `stats.name` and `stats.queued` are used here.
pub(crate) async fn read_loop(
    hub: Hub,
    filter: EventFilter,
    mut pos: u64,
    batch: usize,
    tx: mpsc::Sender<Chunk>,
    stats: Arc<ExporterStats>,
) {
    let filter = Arc::new(filter);
    let mut rx = hub.live.subscribe();
    loop {
        let more = match read_step(&hub, &mut rx, &filter, &mut pos, batch, &tx, &stats).await {
            Some(more) => more,
            None => return,
        };
        if more {
            continue;
        }
        // Caught up: wait for the next commit (or the next poll of a shared store).
        let woke = async {
            match rx.recv().await {
                Ok(_) | Err(RecvError::Lagged(_)) => true,
                Err(RecvError::Closed) => false,
            }
        };
        let go_on = match hub.poll_storage {
            None => woke.await,
            Some(every) => tokio::select! {
                w = woke => w,
                () = tokio::time::sleep(every) => true,
            },
        };
        if !go_on {
            return;
        }
    }
}

/// Delivers queued batches in order, retrying each until it is taken, then persists its
/// cursor.
async fn deliver_loop<S: Sink>(
    mut sink: S,
    mut rx: mpsc::Receiver<Chunk>,
    stats: Arc<ExporterStats>,
    cursor_file: CursorFile,
) {
    let cursor_file = Arc::new(cursor_file);
    let mut last_persist = Instant::now();
    let mut last_log: Option<Instant> = None;
    while let Some(chunk) = rx.recv().await {
        stats.queued.fetch_sub(1, Ordering::Relaxed);
        if !chunk.events.is_empty() {
            let mut backoff = FIRST_BACKOFF;
            loop {
                match sink.deliver(&chunk.events, &stats).await {
                    Ok(()) => {
                        add(&stats.sent, chunk.events.len() as u64);
                        if stats.up.swap(1, Ordering::Relaxed) == 0 && last_log.is_some() {
                            log::info!("exporter {:?}: delivering again", stats.name);
                            last_log = None;
                        }
                        break;
                    }
                    Err(e) => {
                        inc(&stats.failed);
                        stats.up.store(0, Ordering::Relaxed);
                        if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                            log::warn!(
                                "exporter {:?}: {e}; retrying (every {}s at most)",
                                stats.name,
                                MAX_BACKOFF.as_secs()
                            );
                            last_log = Some(Instant::now());
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        inc(&stats.retries);
                    }
                }
            }
        }
        stats.cursor.store(chunk.upto, Ordering::Relaxed);
        if chunk.events.is_empty() && last_persist.elapsed() < IDLE_PERSIST && !rx.is_empty() {
            continue;
        }
        let f = Arc::clone(&cursor_file);
        let upto = chunk.upto;
        match tokio::task::spawn_blocking(move || f.store(upto)).await {
            Ok(Ok(())) => last_persist = Instant::now(),
            Ok(Err(e)) => log::error!("exporter {:?}: persisting cursor {upto}: {e}", stats.name),
            Err(e) => log::error!("exporter {:?}: cursor task: {e}", stats.name),
        }
    }
}

pub use xtrail_proto::limits::truncate_utf8;

#[cfg(test)]
mod tests {
    use super::*;

    fn table(toml_text: &str) -> anyhow::Result<Vec<ExporterConfig>> {
        #[derive(Deserialize)]
        struct F {
            exporter: Vec<ExporterFile>,
        }
        let f: F = toml::from_str(toml_text)?;
        check_all(f.exporter)
    }

    #[test]
    fn config_tables_are_checked() {
        let c = table(
            r#"
            [[exporter]]
            kind = "syslog"
            name = "siem"
            target = "tcp://127.0.0.1:6514"
            protocol = "rfc3164"
            format = "json"
            filter = ["min_severity=high", "type=DNS"]
            start = "oldest"
            [[exporter]]
            kind = "file"
            name = "ecs"
            path = "/var/log/xtrail/ecs.json"
            rotate_bytes = 1000
            "#,
        )
        .unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].start, StartAt::Oldest);
        assert_eq!(c[0].filter.types, ["DNS"]);
        let err = |t: &str| format!("{:#}", table(t).unwrap_err());
        let e = err(
            "[[exporter]]\nkind = \"syslog\"\nname = \"a\"\ntarget = \"udp://h:1\"\npath = \"/x\"",
        );
        assert!(e.contains("\"path\" does not apply"), "{e}");
        let e = err("[[exporter]]\nkind = \"smtp\"\nname = \"a\"");
        assert!(e.contains("unknown kind"), "{e}");
        let e = err("[[exporter]]\nkind = \"maltrail\"\nname = \"a/b\"\ntarget = \"h:1\"");
        assert!(e.contains("name"), "{e}");
        let e = err("[[exporter]]\nkind = \"maltrail\"\nname = \"a\"\ntarget = \"h:1\"\nfilter = [\"color=red\"]");
        assert!(e.contains("filter"), "{e}");
        let e = err("[[exporter]]\nkind = \"maltrail\"\nname = \"a\"\ntarget = \"h:1\"\n[[exporter]]\nkind = \"maltrail\"\nname = \"a\"\ntarget = \"h:2\"");
        assert!(e.contains("two exporters"), "{e}");
        let e =
            err("[[exporter]]\nkind = \"maltrail\"\nname = \"a\"\ntarget = \"h:1\"\ncolour = 1");
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn truncation_keeps_characters_whole() {
        let mut s = "aé".to_string();
        assert!(truncate_utf8(&mut s, 2));
        assert_eq!(s, "a");
        let mut s = "abc".to_string();
        assert!(!truncate_utf8(&mut s, 3));
    }
}
