//! Counters and gauges, rendered in the Prometheus text format at `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// All collector counters. Plain atomics: updated on the hot path without locks.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Events newly stored.
    pub ingest_events: AtomicU64,
    /// Batches committed and acknowledged.
    pub ingest_batches: AtomicU64,
    /// Events received again and not stored twice.
    pub ingest_duplicates: AtomicU64,
    /// Batches refused as malformed.
    pub ingest_rejected: AtomicU64,
    /// Publish streams open now.
    pub ingest_streams: AtomicU64,
    /// Sum of batch commit times, microseconds.
    pub ingest_commit_us: AtomicU64,
    /// Subscriptions open now.
    pub subscribers: AtomicU64,
    /// Subscriptions ended because they fell behind.
    pub subscribers_lagged: AtomicU64,
    /// Events sent to subscribers.
    pub subscribe_events: AtomicU64,
    /// Query pages served (gRPC and HTTP).
    pub queries: AtomicU64,
    /// Requests refused for a missing, unknown or wrong-role token.
    pub auth_failures: AtomicU64,
    /// Events deleted by retention.
    pub retention_deleted: AtomicU64,
    /// Storage errors.
    pub storage_errors: AtomicU64,
    /// Refused batches by reason (their sum is `ingest_rejected`).
    pub rejected_batch_size: AtomicU64,
    /// A field or an event over its limit.
    pub rejected_field_size: AtomicU64,
    /// Bad or regressing sequence numbers.
    pub rejected_sequence: AtomicU64,
    /// Publishing as another sensor.
    pub rejected_identity: AtomicU64,
    /// Other malformed batches.
    pub rejected_malformed: AtomicU64,
    /// A stored (sensor, seq) resent with other content.
    pub rejected_conflict: AtomicU64,
    /// Authentication attempts refused because their source failed too often.
    pub auth_throttled: AtomicU64,
    /// Connections refused by a connection limit, per listener.
    pub conn_refused_http: AtomicU64,
    /// gRPC connections refused by a connection limit.
    pub conn_refused_grpc: AtomicU64,
    /// Connections closed for being idle (or too slow to send a request).
    pub conn_idle_closed: AtomicU64,
    /// Open connections, per listener.
    pub conn_open_http: AtomicU64,
    /// Open gRPC connections.
    pub conn_open_grpc: AtomicU64,
    /// Exporter counters (rendered with labels).
    pub exporters: crate::export::ExportRegistry,
}

/// Increments a counter by one.
pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Adds to a counter.
pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Decrements a gauge when dropped.
#[derive(Debug)]
pub struct GaugeGuard<'a>(&'a AtomicU64);

impl<'a> GaugeGuard<'a> {
    /// Increments `g` now and decrements it on drop.
    pub fn new(g: &'a AtomicU64) -> Self {
        inc(g);
        GaugeGuard(g)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    /// The Prometheus exposition, with the storage figures passed in.
    pub fn render(&self, storage_bytes: u64, last_cursor: u64, healthy: bool) -> String {
        let mut out = String::with_capacity(2048);
        let mut m = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        m(
            "xtrail_ingest_events_total",
            "counter",
            "Events newly stored.",
            g(&self.ingest_events),
        );
        m(
            "xtrail_ingest_batches_total",
            "counter",
            "Batches committed and acknowledged.",
            g(&self.ingest_batches),
        );
        m(
            "xtrail_ingest_duplicates_total",
            "counter",
            "Resent events acknowledged but not stored again.",
            g(&self.ingest_duplicates),
        );
        m(
            "xtrail_ingest_rejected_batches_total",
            "counter",
            "Batches refused as malformed.",
            g(&self.ingest_rejected),
        );
        m(
            "xtrail_ingest_streams",
            "gauge",
            "Publish streams open.",
            g(&self.ingest_streams),
        );
        // A float, written by hand.
        let _ = writeln!(
            out,
            "# HELP xtrail_ingest_commit_seconds_total Time spent committing batches.\n# TYPE xtrail_ingest_commit_seconds_total counter\nxtrail_ingest_commit_seconds_total {:.6}",
            g(&self.ingest_commit_us) as f64 / 1e6
        );
        let mut m = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        m(
            "xtrail_subscribers",
            "gauge",
            "Subscriptions open.",
            g(&self.subscribers),
        );
        m(
            "xtrail_subscribers_lagged_total",
            "counter",
            "Subscriptions ended for falling behind.",
            g(&self.subscribers_lagged),
        );
        m(
            "xtrail_subscribe_events_total",
            "counter",
            "Events sent to subscribers.",
            g(&self.subscribe_events),
        );
        m(
            "xtrail_queries_total",
            "counter",
            "Query pages served.",
            g(&self.queries),
        );
        m(
            "xtrail_auth_failures_total",
            "counter",
            "Requests refused for their token.",
            g(&self.auth_failures),
        );
        m(
            "xtrail_retention_deleted_total",
            "counter",
            "Events deleted by retention.",
            g(&self.retention_deleted),
        );
        m(
            "xtrail_storage_errors_total",
            "counter",
            "Storage errors.",
            g(&self.storage_errors),
        );
        for (reason, c) in [
            ("batch_size", &self.rejected_batch_size),
            ("field_size", &self.rejected_field_size),
            ("sequence", &self.rejected_sequence),
            ("identity", &self.rejected_identity),
            ("malformed", &self.rejected_malformed),
            ("conflict", &self.rejected_conflict),
        ] {
            let _ = writeln!(
                out,
                "xtrail_ingest_rejected_by_reason_total{{reason=\"{reason}\"}} {}",
                g(c)
            );
        }
        let mut m = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        m(
            "xtrail_auth_throttled_total",
            "counter",
            "Authentication attempts refused because their source failed too often.",
            g(&self.auth_throttled),
        );
        m(
            "xtrail_connections_idle_closed_total",
            "counter",
            "Connections closed for idling or sending too slowly.",
            g(&self.conn_idle_closed),
        );
        m(
            "xtrail_healthy",
            "gauge",
            "1 when the store accepts writes, 0 when ingest is failing (see /api/health).",
            u64::from(healthy),
        );
        m(
            "xtrail_storage_bytes",
            "gauge",
            "Bytes used by the event store.",
            storage_bytes,
        );
        m(
            "xtrail_storage_last_cursor",
            "gauge",
            "Highest cursor assigned.",
            last_cursor,
        );
        for (listener, refused, open) in [
            ("http", &self.conn_refused_http, &self.conn_open_http),
            ("grpc", &self.conn_refused_grpc, &self.conn_open_grpc),
        ] {
            let _ = writeln!(
                out,
                "xtrail_connections_refused_total{{listener=\"{listener}\"}} {}\nxtrail_connections_open{{listener=\"{listener}\"}} {}",
                g(refused),
                g(open)
            );
        }
        self.exporters.render(&mut out, last_cursor);
        out
    }
}
