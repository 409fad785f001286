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
//! the oldest events are dropped, counted in [`Stats::dropped`] and reported to the
//! collector as a `SPOOL_DROP` event. A torn or corrupt spool tail is detected on start,
//! logged, counted ([`Stats::corrupt_regions`]) and cut off; the good records before it are
//! kept and sent. See [`spool`] for the file format.
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
pub use spool::{OpenReport, Spool};

/// Default spool bound: 1 GiB.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 1 << 30;
/// The smallest spool bound accepted.
pub const MIN_SPOOL_MAX_BYTES: u64 = 64 * 1024;

/// How to reach the collector and where to spool.
#[derive(Clone, Debug)]
pub struct PublisherConfig {
    /// Collector gRPC URL: `http://host:50051`, or `https://...` for TLS.
    pub url: String,
    /// Sensor token, sent as `authorization: Bearer <token>`; empty sends none.
    pub token: String,
    /// This sensor's stable id. With the sequence number it identifies every event forever,
    /// so it must not change across restarts, and two sensors must not share one.
    pub sensor_id: String,
    /// Spool directory (created if missing); one publisher per directory.
    pub spool_dir: PathBuf,
    /// Spool bound in bytes; the oldest events are dropped past it. Default 1 GiB.
    pub spool_max_bytes: u64,
    /// Events per batch (the collector refuses more than its limit, 10000 by default).
    pub batch_max_events: usize,
    /// Approximate bytes per batch.
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
            token: String::new(),
            sensor_id: String::new(),
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
    /// Unacknowledged events dropped because the spool was full.
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
}

impl Shared {
    pub fn set_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }

    fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Spools events and streams them to the collector. `Sync`: share it between threads by
/// reference or `Arc`. Dropping it stops the sender; unacknowledged events stay spooled for
/// the next start.
#[derive(Debug)]
pub struct Publisher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
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
        let (spool, report) =
            Spool::open(&config.spool_dir, config.spool_max_bytes, &config.sensor_id)?;
        if report.corrupt_regions > 0 {
            log::warn!(
                "spool {}: {} corrupt region(s), {} bytes cut off; {} events kept to resend",
                config.spool_dir.display(),
                report.corrupt_regions,
                report.corrupt_bytes,
                report.pending
            );
        }
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
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("xtrail-publish".into())
            .spawn(move || sender::run(thread_shared, config, connect))
            .map_err(PublishError::Thread)?;
        Ok(Publisher {
            shared,
            thread: Some(thread),
        })
    }

    /// Spools one sensor event for the collector and returns its sequence number. Does not
    /// wait for the network; fails only if the spool cannot be written.
    pub fn publish(&self, event: &Event) -> Result<u64, PublishError> {
        self.publish_wire(v1::Event::from(event))
    }

    /// Spools an event already in wire form (its `seq` is overwritten).
    pub fn publish_wire(&self, mut event: v1::Event) -> Result<u64, PublishError> {
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
        }
    }

    /// What opening the spool found (events left to resend, corruption cut off).
    pub fn open_report(&self) -> &OpenReport {
        &self.shared.report
    }

    /// Waits until the collector has acknowledged every event published before this call,
    /// or `timeout` passes (then [`PublishError::FlushTimeout`]; the events stay spooled).
    pub fn flush(&self, timeout: Duration) -> Result<(), PublishError> {
        let spool = &self.shared.spool;
        let target = spool.last_assigned();
        let deadline = Instant::now() + timeout;
        loop {
            if spool.acked_seq() >= target || spool.pending() == 0 {
                return Ok(());
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
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.stop();
        let _ = self.shared.spool.sync();
    }
}
