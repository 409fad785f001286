//! A store that is opened when it can be: a collector started on a full disk (SQLite cannot
//! create its WAL index, or the schema cannot be written) still starts, reports the reason
//! through every call (so health is red and ingest answers `UNAVAILABLE`), and opens the
//! store as soon as a call finds it possible again (at most one attempt per
//! [`RETRY_EVERY`]). The same holds for a PostgreSQL server that is down or unreachable at
//! start.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use xtrail_proto::v1;

use super::postgres::{redact, PgStorage};
use super::sqlite::SqliteStorage;
use super::{Committed, Page, QuerySpec, Storage, StorageError, StorageStats};
use crate::filter::EventFilter;

/// Least time between two attempts to open the store.
pub const RETRY_EVERY: Duration = Duration::from_millis(500);

type OnOpen = Box<dyn Fn(&dyn Storage) + Send + Sync>;
type Opener = Box<dyn Fn() -> Result<Arc<dyn Storage>, StorageError> + Send + Sync>;

struct State {
    last_try: Option<Instant>,
    last_error: String,
}

/// A store ([`SqliteStorage`] or [`PgStorage`]), opened on first possible use.
pub struct RetryingStorage {
    /// What is opened, for messages (never a password).
    what: String,
    opener: Opener,
    /// The store once open: read without a lock on every call.
    opened: OnceLock<Arc<dyn Storage>>,
    /// Attempts while it is not.
    state: Mutex<State>,
    on_open: OnOpen,
}

impl std::fmt::Debug for RetryingStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryingStorage")
            .field("what", &self.what)
            .finish_non_exhaustive()
    }
}

impl RetryingStorage {
    /// Tries to open the SQLite store in `dir` now; `on_open` runs once when it opens.
    pub fn open(dir: PathBuf, on_open: impl Fn(&dyn Storage) + Send + Sync + 'static) -> Self {
        Self::with_opener(
            format!("the event store in {}", dir.display()),
            move || Ok(Arc::new(SqliteStorage::open(&dir)?) as Arc<dyn Storage>),
            on_open,
        )
    }

    /// Tries to connect to the PostgreSQL database `url` now; `on_open` runs once when it
    /// opens.
    pub fn postgres(url: String, on_open: impl Fn(&dyn Storage) + Send + Sync + 'static) -> Self {
        Self::with_opener(
            format!("the event store {}", redact(&url)),
            move || Ok(Arc::new(PgStorage::open(&url)?) as Arc<dyn Storage>),
            on_open,
        )
    }

    fn with_opener(
        what: String,
        opener: impl Fn() -> Result<Arc<dyn Storage>, StorageError> + Send + Sync + 'static,
        on_open: impl Fn(&dyn Storage) + Send + Sync + 'static,
    ) -> Self {
        let s = RetryingStorage {
            what,
            opener: Box::new(opener),
            opened: OnceLock::new(),
            state: Mutex::new(State {
                last_try: None,
                last_error: String::new(),
            }),
            on_open: Box::new(on_open),
        };
        let _ = s.store();
        s
    }

    fn store(&self) -> Result<&dyn Storage, StorageError> {
        if let Some(s) = self.opened.get() {
            return Ok(s.as_ref());
        }
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = self.opened.get() {
            return Ok(s.as_ref());
        }
        if st.last_try.is_some_and(|t| t.elapsed() < RETRY_EVERY) {
            return Err(StorageError::Unavailable(st.last_error.clone()));
        }
        st.last_try = Some(Instant::now());
        match (self.opener)() {
            Ok(s) => {
                (self.on_open)(s.as_ref());
                Ok(self.opened.get_or_init(|| s).as_ref())
            }
            Err(e) => {
                st.last_error = format!("opening {}: {e}", self.what);
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

    fn insert_batches(
        &self,
        batches: Vec<(String, Vec<v1::Event>)>,
    ) -> Vec<Result<Committed, StorageError>> {
        match self.store() {
            Ok(store) => store.insert_batches(batches),
            Err(e) => {
                let text = match e {
                    StorageError::Unavailable(text) => text,
                    other => other.to_string(),
                };
                batches
                    .iter()
                    .map(|_| Err(StorageError::Unavailable(text.clone())))
                    .collect()
            }
        }
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

    fn last_cursor(&self) -> Result<u64, StorageError> {
        self.store()?.last_cursor()
    }

    fn enforce_retention(
        &self,
        older_than_ts_us: Option<i64>,
        max_bytes: Option<u64>,
    ) -> Result<u64, StorageError> {
        self.store()?.enforce_retention(older_than_ts_us, max_bytes)
    }
}
