//! Where events are kept. [`Storage`] is the interface the rest of the collector uses; the
//! embedded SQLite implementation ([`sqlite::SqliteStorage`]) is the default, and
//! [`postgres::PgStorage`] keeps events in a PostgreSQL server, which several collectors can
//! share.
//!
//! Contract every implementation keeps:
//! - `insert_batch` is atomic and durable when it returns (the collector acknowledges the
//!   batch to the sensor right after), stores each (sensor key, seq) at most once, and
//!   assigns cursors that increase in commit order and are never reused.
//! - An event whose (sensor key, seq) is stored already is a duplicate only if it is the
//!   same event (a resend); different content under a stored (key, seq) fails the whole
//!   batch with [`StorageError::Conflict`]. There is no per-sensor high-water mark: a seq
//!   far ahead cannot make later events look like duplicates. Exactly-once holds for the
//!   events still in the store (a resend of one that retention deleted is stored again).
//! - Pages are bounded in bytes as well as in events ([`PAGE_MAX_BYTES`]).
//! - Every reader sees a prefix of the cursor sequence: once a cursor is visible, no event
//!   with a lower cursor can appear later (so a reader that saw cursor N may continue after
//!   N). SQLite has one writer; PostgreSQL assigns cursors under a lock held to the commit.

pub mod postgres;
pub mod retrying;
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
    /// The PostgreSQL server reported an error (or cannot be reached).
    #[error("postgres: {0}")]
    Pg(#[from] ::postgres::Error),
    /// A stored row could not be decoded.
    #[error("stored event at cursor {0} is unreadable")]
    Corrupt(u64),
    /// The same (sensor key, seq) was stored before with other content.
    #[error("sequence number {seq} of sensor {sensor:?} was stored before with different content: two publishers share one identity")]
    Conflict {
        /// The sensor key.
        sensor: String,
        /// The sequence number.
        seq: u64,
    },
    /// The store cannot be opened now (disk full, unreadable); the collector retries.
    #[error("store unavailable: {0}")]
    Unavailable(String),
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

/// The 16-byte storage key of an address (`::ffff:a.b.c.d` for IPv4; zeros if unparsable:
/// ingest validated every address before it gets here).
pub(crate) fn key_of(ip: &str) -> [u8; 16] {
    ip.parse::<std::net::IpAddr>()
        .map(crate::filter::ip_key)
        .unwrap_or([0; 16])
}

/// A u64 as SQL's i64 (saturating).
pub(crate) fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Most encoded event bytes one page (a query page, a subscriber catch-up read) holds.
pub const PAGE_MAX_BYTES: usize = 4 << 20;

/// One page of stored events.
#[derive(Debug, Default)]
pub struct Page {
    /// The events, in the requested order.
    pub events: Vec<v1::Event>,
    /// Whether the page was cut by its event or byte limit (more may follow).
    pub more: bool,
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
        sensor_key: &str,
        events: Vec<v1::Event>,
    ) -> Result<Committed, StorageError>;

    /// Stores several batches (of one or several sensors) as a group: each batch keeps the
    /// contract of [`Storage::insert_batch`] (a conflict refuses that batch only), the
    /// results come back in the order given, and cursors increase in that order. An
    /// implementation may commit the group in one transaction (group commit: one durable
    /// write for all); the default commits each batch on its own.
    fn insert_batches(
        &self,
        batches: Vec<(String, Vec<v1::Event>)>,
    ) -> Vec<Result<Committed, StorageError>> {
        batches
            .into_iter()
            .map(|(key, events)| self.insert_batch(&key, events))
            .collect()
    }

    /// Stored events with cursor > `after_cursor` (and time >= `min_ts_us`) that pass the
    /// filter, in cursor order, at most `limit` and about [`PAGE_MAX_BYTES`].
    fn read_after(
        &self,
        after_cursor: u64,
        min_ts_us: Option<i64>,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Page, StorageError>;

    /// One page of a query, at most `spec.limit` events and about [`PAGE_MAX_BYTES`].
    fn query(&self, spec: &QuerySpec) -> Result<Page, StorageError>;

    /// One stored event by cursor.
    fn get(&self, cursor: u64) -> Result<Option<v1::Event>, StorageError>;

    /// A small durable write, to find out whether the store accepts writes again.
    fn probe(&self) -> Result<(), StorageError>;

    /// Size and last cursor.
    fn stats(&self) -> Result<StorageStats, StorageError>;

    /// The highest cursor committed and visible to readers (cheaper than [`Storage::stats`]
    /// where the size is costly to find).
    fn last_cursor(&self) -> Result<u64, StorageError> {
        Ok(self.stats()?.last_cursor)
    }

    /// Deletes events older than `older_than_ts_us`, then the oldest events until the store
    /// uses at most `max_bytes`. Returns how many were deleted.
    fn enforce_retention(
        &self,
        older_than_ts_us: Option<i64>,
        max_bytes: Option<u64>,
    ) -> Result<u64, StorageError>;
}
