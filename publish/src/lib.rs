//! xtrail-publish: the sensor side of the collector link.
//!
//! A sensor hands each event to [`Publisher::publish`], which appends it to an on-disk spool
//! and returns at once (one `write`, no network wait). A background thread with its own
//! small tokio runtime streams the spool to the collector over `xtrail.v1.Ingest/Publish` in
//! batches with sequence numbers, deletes what the collector acknowledged (it acknowledges
//! only after its commit), reconnects with exponential backoff and jitter, and after a
//! reconnect or a restart resends everything not acknowledged: at-least-once on the wire,
//! exactly-once in the collector's storage.
//!
//! The spool is bounded ([`PublisherConfig::spool_max_bytes`], 1 GiB by default): when full,
//! the oldest events are dropped, counted once in [`Stats::dropped`] and reported to the
//! collector as a `SPOOL_DROP` event whose `trail` is the count (the counts of the reports
//! the collector receives add up to exactly the events lost). A torn or corrupt spool tail is
//! detected on start, logged, counted ([`Stats::corrupt_regions`]) and cut off; the good
//! records before it are kept and sent. See [`spool`] for the file format.
//!
//! Identity: events are published as stream [`Publisher::stream_id`] with sequence numbers
//! from a counter persisted in the spool (never reused, see [`spool`]); a sensor makes its
//! stream ids from its persistent [`identity`] with [`PublisherConfig::stream_suffix`], so
//! two sensors with one name, or two spools on one host, never collide at the collector.
//!
//! The collector's word: on each connection the sender asks `Ingest/GetLimits` (an older
//! collector's UNIMPLEMENTED means the defaults) and splits batches to the smaller of its own
//! and the collector's limits; fields are cut to [`xtrail_proto::limits`] before spooling
//! ([`Stats::truncated`]). A refused credential (UNAUTHENTICATED, PERMISSION_DENIED) is
//! counted ([`Stats::auth_refused`]), retried with backoff, and ends [`Publisher::flush`] at
//! once with [`PublishError::Refused`].
//!
//! Usable from plain threads: nothing here needs the caller to run an async runtime.
//!
//! ```no_run
//! use std::time::Duration;
//! use xtrail_publish::{Publisher, PublisherConfig};
//! # fn events() -> Vec<xtrail_detect::event::Event> { Vec::new() }
//! let publisher = Publisher::start(PublisherConfig::new(
//!     "http://127.0.0.1:50051",
//!     "sensor-token",
//!     "gw-1",
//!     "/var/lib/xtrail/spool",
//! ))?;
//! for event in events() {
//!     publisher.publish(&event)?;
//! }
//! publisher.flush(Duration::from_secs(30))?; // replay: wait for the collector's acks
//! # Ok::<(), xtrail_publish::PublishError>(())
//! ```
//!
//! Tests: unit tests in each module; end to end against a real collector process in
//! `publish/tests/` and `collector/tests/`.

mod backoff;
mod error;
pub mod heartbeat;
pub mod identity;
mod sender;
pub mod spool;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use xtrail_detect::event::Event;
use xtrail_proto::v1;

pub use backoff::Backoff;
pub use error::PublishError;
pub use heartbeat::{HeartbeatConfig, SensorStatus};
pub use spool::{drop_report_count, OpenReport, Spool, SpoolConfig};
pub use xtrail_proto::v1::SensorCounters;

/// Default spool bound: 1 GiB.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 1 << 30;
/// The smallest spool bound accepted.
pub const MIN_SPOOL_MAX_BYTES: u64 = 64 * 1024;

/// How to reach the collector and where to spool.
#[derive(Clone, Debug)]
pub struct PublisherConfig {
    /// Collector gRPC URL: `http://host:50051`, or `https://...` for TLS.
    pub url: String,
    /// More collectors (of one shared store), tried in turn after `url` when the current
    /// one is unreachable, ends the stream, or reports `NOT_SERVING` (gRPC health of
    /// `xtrail.v1.Ingest`). Unacknowledged events are resent to the next one, which
    /// stores only what is new. Same token and TLS settings for all.
    pub fallback_urls: Vec<String>,
    /// While on a fallback, go back to `url` after this long (the stream is ended and
    /// what is unacknowledged resent there). Default 60 s.
    pub failback_after: Duration,
    /// Sensor token, sent as `authorization: Bearer <token>`; empty sends none.
    pub token: String,
    /// The stream id (`PublishRequest.sensor_id`), or its prefix with `stream_suffix`. With
    /// the sequence number it identifies every event forever, so it must not change across
    /// restarts, and two publishers must not share one.
    pub sensor_id: String,
    /// Publish as `<sensor_id>-<random suffix>`, the suffix made when the spool is created
    /// and kept in it: a lost spool (whose counter starts again) then never reuses a
    /// (stream, seq). The sensor sets this; off by default (the stream id is `sensor_id`).
    pub stream_suffix: bool,
    /// The sensor name in the spool's own `SPOOL_DROP` reports (empty: `sensor_id`). Events
    /// published carry their own `sensor` field.
    pub sensor_name: String,
    /// Spool directory (created if missing); one publisher per directory.
    pub spool_dir: PathBuf,
    /// Spool bound in bytes; the oldest events are dropped past it. Default 1 GiB.
    pub spool_max_bytes: u64,
    /// Events per batch at most; lowered to the collector's limit (`GetLimits`).
    pub batch_max_events: usize,
    /// Encoded bytes per batch at most; lowered to the collector's limit.
    pub batch_max_bytes: usize,
    /// Batches sent and not yet acknowledged, at most.
    pub max_in_flight: usize,
    /// How often the spool is fsync'ed; `None` leaves it to the kernel. A killed process
    /// loses nothing either way; this bounds what a power cut can take.
    pub fsync_interval: Option<Duration>,
    /// Reconnect backoff bounds.
    pub backoff_min: Duration,
    /// Upper bound of the reconnect backoff.
    pub backoff_max: Duration,
    /// TCP connect (and TLS handshake) timeout.
    pub connect_timeout: Duration,
    /// PEM CA certificate to trust for an `https` URL (besides the public roots).
    pub ca_cert: Option<PathBuf>,
    /// Server name to verify for `https`, if not the URL's host.
    pub tls_domain: Option<String>,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        PublisherConfig {
            url: String::new(),
            fallback_urls: Vec::new(),
            failback_after: Duration::from_secs(60),
            token: String::new(),
            sensor_id: String::new(),
            stream_suffix: false,
            sensor_name: String::new(),
            spool_dir: PathBuf::new(),
            spool_max_bytes: DEFAULT_SPOOL_MAX_BYTES,
            batch_max_events: 1000,
            batch_max_bytes: 1 << 20,
            max_in_flight: 4,
            fsync_interval: Some(Duration::from_secs(1)),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            ca_cert: None,
            tls_domain: None,
        }
    }
}

impl PublisherConfig {
    /// The defaults with the four things every publisher needs.
    pub fn new(
        url: impl Into<String>,
        token: impl Into<String>,
        sensor_id: impl Into<String>,
        spool_dir: impl Into<PathBuf>,
    ) -> Self {
        PublisherConfig {
            url: url.into(),
            token: token.into(),
            sensor_id: sensor_id.into(),
            spool_dir: spool_dir.into(),
            ..PublisherConfig::default()
        }
    }
}

/// Counters since [`Publisher::start`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events appended to the spool (including `SPOOL_DROP` reports).
    pub spooled: u64,
    /// Events sent to the collector (a resent event counts again).
    pub sent: u64,
    /// Events the collector acknowledged as committed.
    pub acked: u64,
    /// Real events lost (dropped unacknowledged) because the spool was full, each counted
    /// once; a dropped `SPOOL_DROP` report is not counted, its count moves to the next one.
    pub dropped: u64,
    /// Events in the spool waiting for an acknowledgement now (including any left from a
    /// previous run).
    pub pending: u64,
    /// Spool size on disk.
    pub spool_bytes: u64,
    /// Highest sequence number acknowledged.
    pub acked_seq: u64,
    /// Corrupt spool regions found and cut off at start.
    pub corrupt_regions: u64,
    /// Bytes cut off with them.
    pub corrupt_bytes: u64,
    /// Streams (re)opened to the collector.
    pub connects: u64,
    /// Whether a stream to the collector is open now.
    pub connected: bool,
    /// The last connection or stream error.
    pub last_error: Option<String>,
    /// Times the collector refused the credential (UNAUTHENTICATED, PERMISSION_DENIED).
    pub auth_refused: u64,
    /// The last refusal: the collector's code and message.
    pub last_refusal: Option<String>,
    /// Events with a field cut to the limits of [`xtrail_proto::limits`] before spooling.
    pub truncated: u64,
}

/// State shared by the publishing threads and the sender.
#[derive(Debug)]
pub(crate) struct Shared {
    pub spool: Spool,
    pub notify: tokio::sync::Notify,
    pub stop: AtomicBool,
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub connects: AtomicU64,
    pub connected: AtomicBool,
    pub last_error: Mutex<Option<String>>,
    pub report: OpenReport,
    pub auth_refused: AtomicU64,
    pub last_refusal: Mutex<Option<String>>,
    /// Whether the last word from the collector was a refusal (cleared by an accepted
    /// stream or an acknowledgement).
    pub refused_now: AtomicBool,
    pub truncated: AtomicU64,
    /// The channel of the current stream (heartbeats share it); `None` while disconnected.
    pub channel: Mutex<Option<tonic::transport::Channel>>,
    /// What the sensor last reported for its heartbeats.
    pub status: Mutex<SensorStatus>,
    /// Heartbeats the collector accepted.
    pub heartbeats: AtomicU64,
    /// The collector's suppression list, from the last heartbeat answer that carried one
    /// (or, until then, the one kept in the spool directory by an earlier run).
    pub suppressions: Mutex<Option<Arc<v1::SuppressionList>>>,
    /// Where the list is kept across restarts (`suppressions.pb` in the spool directory).
    pub suppressions_file: PathBuf,
    /// When the publisher started.
    pub started: Instant,
}

fn read_locked(m: &Mutex<Option<String>>) -> Option<String> {
    m.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

impl Shared {
    pub fn set_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }

    fn last_error(&self) -> Option<String> {
        read_locked(&self.last_error)
    }

    /// Records a refusal of the credential.
    pub fn refused(&self, why: String) {
        *self.last_refusal.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
        self.auth_refused.fetch_add(1, Ordering::SeqCst);
        self.refused_now.store(true, Ordering::SeqCst);
    }
}

/// Spools events and streams them to the collector. `Sync`: share it between threads by
/// reference or `Arc`. Dropping it stops the sender; unacknowledged events stay spooled for
/// the next start.
#[derive(Debug)]
pub struct Publisher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    connect: sender::Connect,
    heartbeat: Mutex<Option<JoinHandle<()>>>,
}

impl Publisher {
    /// Opens the spool (reporting and cutting off a corrupt tail), then starts the sender
    /// thread, which connects in the background: an unreachable collector is not an error
    /// here, events just stay spooled.
    pub fn start(config: PublisherConfig) -> Result<Publisher, PublishError> {
        if config.sensor_id.is_empty() {
            return Err(PublishError::Config("sensor_id is empty".into()));
        }
        if config.spool_dir.as_os_str().is_empty() {
            return Err(PublishError::Config("spool_dir is empty".into()));
        }
        if config.spool_max_bytes < MIN_SPOOL_MAX_BYTES {
            return Err(PublishError::Config(format!(
                "spool_max_bytes must be at least {MIN_SPOOL_MAX_BYTES}"
            )));
        }
        if config.batch_max_events == 0 || config.max_in_flight == 0 {
            return Err(PublishError::Config(
                "batch_max_events and max_in_flight must be positive".into(),
            ));
        }
        let connect = sender::Connect::new(&config)?;
        let spool_config = SpoolConfig {
            max_bytes: config.spool_max_bytes,
            sensor_name: if config.sensor_name.is_empty() {
                config.sensor_id.clone()
            } else {
                config.sensor_name.clone()
            },
            stream_id: config.sensor_id.clone(),
            stream_suffix: config.stream_suffix,
        };
        let (spool, report) = Spool::open(&config.spool_dir, &spool_config)?;
        if report.corrupt_regions > 0 {
            log::warn!(
                "spool {}: {} corrupt region(s), {} bytes cut off; {} events kept to resend",
                config.spool_dir.display(),
                report.corrupt_regions,
                report.corrupt_bytes,
                report.pending
            );
        }
        let suppressions_file = config.spool_dir.join(heartbeat::SUPPRESSIONS_FILE);
        let shared = Arc::new(Shared {
            spool,
            notify: tokio::sync::Notify::new(),
            stop: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            last_error: Mutex::new(None),
            report,
            auth_refused: AtomicU64::new(0),
            last_refusal: Mutex::new(None),
            refused_now: AtomicBool::new(false),
            truncated: AtomicU64::new(0),
            channel: Mutex::new(None),
            status: Mutex::new(SensorStatus::default()),
            heartbeats: AtomicU64::new(0),
            suppressions: Mutex::new(heartbeat::load_suppressions(&suppressions_file)),
            suppressions_file,
            started: Instant::now(),
        });
        let thread_shared = Arc::clone(&shared);
        let sender_connect = connect.clone();
        let thread = std::thread::Builder::new()
            .name("xtrail-publish".into())
            .spawn(move || sender::run(thread_shared, config, sender_connect))
            .map_err(PublishError::Thread)?;
        Ok(Publisher {
            shared,
            thread: Some(thread),
            connect,
            heartbeat: Mutex::new(None),
        })
    }

    /// Starts sending `Ingest.Heartbeat` every `config.interval` on the publisher's
    /// connection, until the publisher stops (see [`heartbeat`]). Once per publisher.
    pub fn start_heartbeats(&self, config: HeartbeatConfig) -> Result<(), PublishError> {
        if config.interval.is_zero() {
            return Err(PublishError::Config(
                "the heartbeat interval must be positive".into(),
            ));
        }
        let mut slot = self.heartbeat.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() {
            return Err(PublishError::Config("heartbeats already started".into()));
        }
        let shared = Arc::clone(&self.shared);
        let connect = self.connect.clone();
        *slot = Some(
            std::thread::Builder::new()
                .name("xtrail-heartbeat".into())
                .spawn(move || heartbeat::run(shared, config, connect))
                .map_err(PublishError::Thread)?,
        );
        Ok(())
    }

    /// Sets what the next heartbeats report (the sensor's counters and trail set).
    pub fn set_status(&self, status: SensorStatus) {
        *self.shared.status.lock().unwrap_or_else(|p| p.into_inner()) = status;
    }

    /// Heartbeats the collector accepted so far.
    pub fn heartbeats_sent(&self) -> u64 {
        self.shared.heartbeats.load(Ordering::Relaxed)
    }

    /// The collector's suppression list (events the sensor must not report), as the last
    /// heartbeat answer that carried one gave it; `None` before the first (or from a
    /// collector that has none). A new list has a new `version`.
    pub fn suppressions(&self) -> Option<Arc<v1::SuppressionList>> {
        self.shared
            .suppressions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Spools one sensor event for the collector and returns its sequence number. Does not
    /// wait for the network; fails only if the spool cannot be written.
    pub fn publish(&self, event: &Event) -> Result<u64, PublishError> {
        self.publish_wire(v1::Event::from(event))
    }

    /// Spools an event already in wire form (its `seq` is overwritten; a field over the
    /// limits of [`xtrail_proto::limits`] is cut, and counted in [`Stats::truncated`]).
    pub fn publish_wire(&self, mut event: v1::Event) -> Result<u64, PublishError> {
        if xtrail_proto::limits::truncate_fields(&mut event) > 0 {
            self.shared.truncated.fetch_add(1, Ordering::Relaxed);
        }
        let seq = self.shared.spool.append(&mut event)?;
        self.shared.notify.notify_one();
        Ok(seq)
    }

    /// Current counters.
    pub fn stats(&self) -> Stats {
        let s = &self.shared;
        let (spooled, dropped) = s.spool.counters();
        Stats {
            spooled,
            sent: s.sent.load(Ordering::Relaxed),
            acked: s.acked.load(Ordering::Relaxed),
            dropped,
            pending: s.spool.pending(),
            spool_bytes: s.spool.bytes(),
            acked_seq: s.spool.acked_seq(),
            corrupt_regions: s.report.corrupt_regions,
            corrupt_bytes: s.report.corrupt_bytes,
            connects: s.connects.load(Ordering::Relaxed),
            connected: s.connected.load(Ordering::Relaxed),
            last_error: s.last_error(),
            auth_refused: s.auth_refused.load(Ordering::Relaxed),
            last_refusal: read_locked(&s.last_refusal),
            truncated: s.truncated.load(Ordering::Relaxed),
        }
    }

    /// The stream id events are published under (`PublishRequest.sensor_id`).
    pub fn stream_id(&self) -> &str {
        self.shared.spool.stream_id()
    }

    /// What opening the spool found (events left to resend, corruption cut off).
    pub fn open_report(&self) -> &OpenReport {
        &self.shared.report
    }

    /// Waits until the collector has acknowledged every event published before this call,
    /// or `timeout` passes (then [`PublishError::FlushTimeout`]), or the collector refuses
    /// the credential (then at once [`PublishError::Refused`]). Either way the events stay
    /// spooled.
    pub fn flush(&self, timeout: Duration) -> Result<(), PublishError> {
        let spool = &self.shared.spool;
        let target = spool.last_assigned();
        let deadline = Instant::now() + timeout;
        loop {
            if spool.acked_seq() >= target || spool.pending() == 0 {
                return Ok(());
            }
            if self.shared.refused_now.load(Ordering::SeqCst) {
                return Err(PublishError::Refused(
                    read_locked(&self.shared.last_refusal).unwrap_or_default(),
                ));
            }
            if Instant::now() >= deadline {
                return Err(PublishError::FlushTimeout {
                    pending: spool.pending(),
                    last_error: self.shared.last_error(),
                });
            }
            self.shared.notify.notify_one();
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the sender and fsyncs the spool. Unacknowledged events stay for the next start.
    pub fn shutdown(mut self) -> Result<(), PublishError> {
        self.stop();
        self.shared.spool.sync()
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.notify.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let beat = self
            .heartbeat
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(t) = beat {
            let _ = t.join();
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.stop();
        let _ = self.shared.spool.sync();
    }
}
