//! A store that is opened when it can be: a collector started on a full disk (SQLite cannot
//! create its WAL index, or the schema cannot be written) still starts, reports the reason
//! through every call (so health is red and ingest answers `UNAVAILABLE`), and opens the
//! store as soon as a call finds it possible again (at most one attempt per
//! [`RETRY_EVERY`]).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use xtrail_proto::v1;

use super::sqlite::SqliteStorage;
use super::{Committed, Page, QuerySpec, Storage, StorageError, StorageStats};
use crate::filter::EventFilter;

/// Least time between two attempts to open the store.
pub const RETRY_EVERY: Duration = Duration::from_millis(500);

type OnOpen = Box<dyn Fn(&SqliteStorage) + Send + Sync>;

struct State {
    store: Option<Arc<SqliteStorage>>,
    last_try: Option<Instant>,
    last_error: String,
}

/// [`SqliteStorage`], opened on first possible use.
pub struct RetryingStorage {
    dir: PathBuf,
    state: Mutex<State>,
    on_open: OnOpen,
}

impl std::fmt::Debug for RetryingStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryingStorage")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl RetryingStorage {
    /// Tries to open the store in `dir` now; `on_open` runs once when it opens.
    pub fn open(dir: PathBuf, on_open: impl Fn(&SqliteStorage) + Send + Sync + 'static) -> Self {
        let s = RetryingStorage {
            dir,
            state: Mutex::new(State {
                store: None,
                last_try: None,
                last_error: String::new(),
            }),
            on_open: Box::new(on_open),
        };
        let _ = s.store();
        s
    }

    fn store(&self) -> Result<Arc<SqliteStorage>, StorageError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = &st.store {
            return Ok(Arc::clone(s));
        }
        if st.last_try.is_some_and(|t| t.elapsed() < RETRY_EVERY) {
            return Err(StorageError::Unavailable(st.last_error.clone()));
        }
        st.last_try = Some(Instant::now());
        match SqliteStorage::open(&self.dir) {
            Ok(s) => {
                let s = Arc::new(s);
                (self.on_open)(&s);
                st.store = Some(Arc::clone(&s));
                Ok(s)
            }
            Err(e) => {
                st.last_error = format!("opening the event store in {}: {e}", self.dir.display());
                Err(StorageError::Unavailable(st.last_error.clone()))
            }
        }
    }
}

impl Storage for RetryingStorage {
    fn insert_batch(
        &self,
        sensor_key: &str,
        events: Vec<v1::Event>,
    ) -> Result<Committed, StorageError> {
        self.store()?.insert_batch(sensor_key, events)
    }

    fn read_after(
        &self,
        after_cursor: u64,
        min_ts_us: Option<i64>,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Page, StorageError> {
        self.store()?
            .read_after(after_cursor, min_ts_us, filter, limit)
    }

    fn query(&self, spec: &QuerySpec) -> Result<Page, StorageError> {
        self.store()?.query(spec)
    }

    fn get(&self, cursor: u64) -> Result<Option<v1::Event>, StorageError> {
        self.store()?.get(cursor)
    }

    fn probe(&self) -> Result<(), StorageError> {
        self.store()?.probe()
    }

    fn stats(&self) -> Result<StorageStats, StorageError> {
        self.store()?.stats()
    }

    fn enforce_retention(
        &self,
        older_than_ts_us: Option<i64>,
        max_bytes: Option<u64>,
    ) -> Result<u64, StorageError> {
        self.store()?.enforce_retention(older_than_ts_us, max_bytes)
    }
}
