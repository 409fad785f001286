//! Errors of the publisher.

use std::path::PathBuf;

use thiserror::Error;

/// What can go wrong starting the publisher or spooling an event. Network trouble is not an
/// error here: the publisher keeps events spooled and retries; see [`crate::Stats`].
#[derive(Debug, Error)]
pub enum PublishError {
    /// The configuration cannot work (bad URL, token, certificate).
    #[error("publisher configuration: {0}")]
    Config(String),
    /// Another publisher (another sensor process) holds this spool directory.
    #[error("spool {0} is in use by another process")]
    SpoolBusy(PathBuf),
    /// A spool file could not be read or written.
    #[error("spool {path}: {what}: {source}")]
    Spool {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// One event encodes to more than a spool record may hold.
    #[error("event too large for the spool ({0} bytes)")]
    EventTooLarge(usize),
    /// `flush` gave up with events still unacknowledged.
    #[error("flush timed out with {pending} events not acknowledged by the collector{}", last_error.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default())]
    FlushTimeout {
        /// Events still waiting.
        pending: u64,
        /// The last connection or stream error, if any.
        last_error: Option<String>,
    },
    /// The collector refused this publisher's credential (UNAUTHENTICATED or
    /// PERMISSION_DENIED): retrying cannot help until the token or the collector's sensor
    /// list changes. The events stay spooled.
    #[error("the collector refused the credential: {0}")]
    Refused(String),
    /// The background sender could not be started.
    #[error("starting the sender thread: {0}")]
    Thread(std::io::Error),
}
