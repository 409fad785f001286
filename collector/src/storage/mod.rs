//! Where events are kept. [`Storage`] is the interface the rest of the collector uses; the
//! embedded SQLite implementation ([`sqlite::SqliteStorage`]) is the default, and a server
//! database (PostgreSQL, for several collectors sharing one store) can implement the same
//! trait.
//!
//! Contract every implementation keeps:
//! - `insert_batch` is atomic and durable when it returns (the collector acknowledges the
//!   batch to the sensor right after), stores each (sensor_id, seq) at most once, and assigns
//!   cursors that increase in commit order and are never reused.
//! - An event with a seq at or below the highest seq already stored for its sensor is a
//!   duplicate, even if retention has deleted the original since.

pub mod sqlite;

use thiserror::Error;
use xtrail_proto::v1;

use crate::filter::EventFilter;

/// A storage failure.
#[derive(Debug, Error)]
pub enum StorageError {
    /// The database reported an error.
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    /// A stored row could not be decoded.
    #[error("stored event at cursor {0} is unreadable")]
    Corrupt(u64),
    /// Opening the data directory failed.
    #[error("data directory {path}: {source}")]
    Dir {
        /// The directory.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// What a committed batch produced.
#[derive(Debug, Default)]
pub struct Committed {
    /// The newly stored events, with `cursor` and `sensor_id` set, in cursor order.
    pub stored: Vec<v1::Event>,
    /// Events of the batch already stored before.
    pub duplicates: u32,
    /// The highest seq of the batch (all of it is now stored).
    pub committed_seq: u64,
}

/// Which way a query pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Highest cursor first.
    NewestFirst,
    /// Lowest cursor first.
    OldestFirst,
}

/// One page request.
#[derive(Clone, Debug)]
pub struct QuerySpec {
    /// Which events.
    pub filter: EventFilter,
    /// Event time lower bound (inclusive), microseconds.
    pub from_ts_us: Option<i64>,
    /// Event time upper bound (exclusive), microseconds.
    pub to_ts_us: Option<i64>,
    /// Continue after this cursor (exclusive), in the query's order.
    pub after_cursor: Option<u64>,
    /// Page size.
    pub limit: usize,
    /// Direction.
    pub order: Order,
}

/// Size and position of the store.
#[derive(Clone, Copy, Debug, Default)]
pub struct StorageStats {
    /// Bytes in use by the database (excluding free pages).
    pub used_bytes: u64,
    /// Highest cursor assigned.
    pub last_cursor: u64,
}

/// The collector's event store. Methods block; async callers use `spawn_blocking`.
pub trait Storage: Send + Sync + 'static {
    /// Stores a batch from one sensor in one transaction (see the module contract).
    fn insert_batch(
        &self,
        sensor_id: &str,
        events: Vec<v1::Event>,
    ) -> Result<Committed, StorageError>;

    /// Stored events with cursor > `after_cursor` (and time >= `min_ts_us`) that pass the
    /// filter, in cursor order, at most `limit`.
    fn read_after(
        &self,
        after_cursor: u64,
        min_ts_us: Option<i64>,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<v1::Event>, StorageError>;

    /// One page of a query.
    fn query(&self, spec: &QuerySpec) -> Result<Vec<v1::Event>, StorageError>;

    /// Size and last cursor.
    fn stats(&self) -> Result<StorageStats, StorageError>;

    /// Deletes events older than `older_than_ts_us`, then the oldest events until the store
    /// uses at most `max_bytes`. Returns how many were deleted.
    fn enforce_retention(
        &self,
        older_than_ts_us: Option<i64>,
        max_bytes: Option<u64>,
    ) -> Result<u64, StorageError>;
}
