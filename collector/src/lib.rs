//! xtrail-collector: receives events from sensors, stores each exactly once, and serves them
//! to SIEMs, the HTTP API and the dashboard.
//!
//! The flow, one module per stage:
//! - [`auth`]: per-sensor credentials, shared tokens per role, failure throttling;
//! - [`conn`]: connection limits and idle timeouts per listener; [`health`]: storage health;
//! - [`ingest`]: `Ingest.Publish` streams, batch checks, the single writer thread that
//!   commits, broadcasts live, then acknowledges;
//! - [`storage`]: the [`storage::Storage`] trait and its SQLite and PostgreSQL
//!   implementations;
//! - [`subscribe`]: `Events.Subscribe`, stored then live, gapless, lag-aware;
//! - [`query`]: `Events.Query` pages; [`http`]: `/api/events`, `/api/blocklist`
//!   ([`blocklist`]), `/api/health`, `/metrics`;
//! - [`export`]: exporters (syslog CEF/JSON, Maltrail, ECS/EVE files, webhooks), each an internal
//!   subscriber with its own queue and persisted cursor;
//! - [`check`]: `/api/check`, indicator lookups against the [`trails`] holder;
//! - [`filter`]: the filters shared by all of them; [`retention`]: age and size limits;
//! - [`console`]: the analyst console on the HTTP port (users, sessions, audit log, sensor
//!   heartbeats, threats, the page); `console::tls` serves the HTTP port over TLS;
//! - [`server`]: wiring; [`config`]: flags and config file; [`client`]: `subscribe` command.
//!
//! Tests: unit tests per module; `collector/tests/` drives the real binary over loopback
//! (end to end with the publisher, SIGKILL mid-stream, bad input, a Python grpcio client).

pub mod access;
pub mod auth;
pub mod blocklist;
pub mod check;
pub mod client;
pub mod config;
pub mod conn;
pub mod console;
pub mod export;
pub mod filter;
pub mod health;
pub mod http;
pub mod ingest;
pub mod live;
pub mod metrics;
pub mod query;
pub mod retention;
pub mod server;
pub mod storage;
pub mod subscribe;
pub mod trail_dist;
pub mod trails;

/// Microseconds since the epoch, now (0 before 1970, saturating far in the future).
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}
