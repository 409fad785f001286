//! `console.db`: the console's SQLite file (users, sessions, audit log, sensor heartbeats).
//!
//! Opened lazily and reopened after a failure, so a full disk at start does not keep the
//! collector from serving events; console calls answer 503 meanwhile.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use rusqlite::Connection;
use thiserror::Error;

/// The file name in the data directory.
pub const FILE: &str = "console.db";

/// A console database failure.
#[derive(Debug, Error)]
pub enum DbError {
    /// SQLite failed.
    #[error("console database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The data directory could not be created.
    #[error("console database directory {0}: {1}")]
    Dir(PathBuf, std::io::Error),
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    name       TEXT PRIMARY KEY,
    phc        TEXT NOT NULL,
    role       TEXT NOT NULL,
    scope      TEXT NOT NULL,
    created_us INTEGER NOT NULL,
    changed_us INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    id_hash    BLOB PRIMARY KEY,
    user       TEXT NOT NULL,
    csrf       TEXT NOT NULL,
    created_us INTEGER NOT NULL,
    last_us    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_user ON sessions (user);
CREATE TABLE IF NOT EXISTS audit (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    time_us INTEGER NOT NULL,
    user    TEXT NOT NULL,
    source  TEXT NOT NULL,
    action  TEXT NOT NULL,
    detail  TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TABLE IF NOT EXISTS sensor_heartbeats (
    name              TEXT PRIMARY KEY,
    identity          TEXT NOT NULL,
    version           TEXT NOT NULL,
    trail_set_version TEXT NOT NULL,
    interval_s        INTEGER NOT NULL,
    received_us       INTEGER NOT NULL,
    counters          TEXT NOT NULL,
    events_per_sec    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sensor_last_event (
    sensor     TEXT PRIMARY KEY,
    last_ts_us INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sensor_follow (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    cursor INTEGER NOT NULL
);
";

/// The console database, shared by the server's handlers (one connection behind a mutex;
/// every statement is short).
#[derive(Debug)]
pub struct ConsoleDb {
    dir: PathBuf,
    conn: Mutex<Option<Connection>>,
}

/// Opens `console.db` in `dir` (created if missing) with the schema.
pub fn open_connection(dir: &Path) -> Result<Connection, DbError> {
    std::fs::create_dir_all(dir).map_err(|e| DbError::Dir(dir.to_path_buf(), e))?;
    let conn = Connection::open(dir.join(FILE))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

impl ConsoleDb {
    /// The database of the data directory `dir`; opened at first use.
    pub fn new(dir: &Path) -> Arc<Self> {
        Arc::new(ConsoleDb {
            dir: dir.to_path_buf(),
            conn: Mutex::new(None),
        })
    }

    /// Opens now (the `user` command wants errors at once).
    pub fn open(dir: &Path) -> Result<Arc<Self>, DbError> {
        let conn = open_connection(dir)?;
        Ok(Arc::new(ConsoleDb {
            dir: dir.to_path_buf(),
            conn: Mutex::new(Some(conn)),
        }))
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `f` on the connection, opening it first if needed; a failed statement closes
    /// it so that the next call reopens.
    pub fn with<T, E>(&self, f: impl FnOnce(&mut Connection) -> Result<T, E>) -> Result<T, E>
    where
        E: From<DbError>,
    {
        let mut guard: MutexGuard<'_, Option<Connection>> =
            self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Some(open_connection(&self.dir)?);
        }
        let Some(conn) = guard.as_mut() else {
            unreachable!("opened above")
        };
        f(conn)
    }
}

static CURRENT: OnceLock<Mutex<Option<Arc<ConsoleDb>>>> = OnceLock::new();

/// Makes `db` the one [`crate::console::audit::record`] writes to (set when the server
/// starts).
pub fn set_current(db: &Arc<ConsoleDb>) {
    let slot = CURRENT.get_or_init(|| Mutex::new(None));
    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(db));
}

/// The database set by [`set_current`].
pub fn current() -> Option<Arc<ConsoleDb>> {
    CURRENT
        .get()
        .and_then(|m| m.lock().unwrap_or_else(|p| p.into_inner()).clone())
}
