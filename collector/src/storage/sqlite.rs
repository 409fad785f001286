//! Embedded SQLite storage: one file `events.db` in the data directory, WAL journal,
//! `synchronous=FULL` (a commit is on disk when it returns, so an acknowledged batch
//! survives a crash or a power cut), one transaction per batch, or per group of batches
//! queued together ([`Storage::insert_batches`], savepoints keep a conflict to its batch).
//! A thread of its own copies the WAL back into the database (passive checkpoints), off
//! the writer's path.
//!
//! Each row keeps the filterable fields in columns (addresses as 16-byte keys so that a CIDR
//! is a range scan over an index) and the whole event as its protobuf encoding, so nothing
//! the sensor sent is lost. `cursor` is an AUTOINCREMENT rowid: increasing in commit order
//! and never reused, even after retention deletes everything.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use prost::Message as _;
use rusqlite::functions::FunctionFlags;
use rusqlite::types::Value;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension as _};
use xtrail_proto::v1;

use super::{
    as_i64, key_of, Committed, Order, Page, QuerySpec, Storage, StorageError, StorageStats,
    PAGE_MAX_BYTES,
};
use crate::filter::{fold, EventFilter};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    cursor    INTEGER PRIMARY KEY AUTOINCREMENT,
    sensor_id TEXT    NOT NULL,
    seq       INTEGER NOT NULL,
    ts_us     INTEGER NOT NULL,
    sensor    TEXT    NOT NULL,
    src_ip    BLOB    NOT NULL,
    dst_ip    BLOB    NOT NULL,
    type      TEXT    NOT NULL,
    trail     TEXT    NOT NULL,
    info      TEXT    NOT NULL,
    severity  INTEGER NOT NULL,
    body      BLOB    NOT NULL,
    UNIQUE (sensor_id, seq)
);
CREATE INDEX IF NOT EXISTS events_ts     ON events (ts_us);
CREATE INDEX IF NOT EXISTS events_src    ON events (src_ip);
CREATE INDEX IF NOT EXISTS events_dst    ON events (dst_ip);
-- No index on trail: its filter is a substring match (instr), which no index serves.
DROP INDEX IF EXISTS events_trail;
CREATE INDEX IF NOT EXISTS events_sensor ON events (sensor);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value ANY
);
";

const COLUMNS: &str = "cursor, sensor_id, seq, body";

/// SQLite-backed [`Storage`].
#[derive(Debug)]
pub struct SqliteStorage {
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    path: std::path::PathBuf,
    _checkpointer: Checkpointer,
}

/// Copies the WAL back into the database from its own thread and connection (a passive
/// checkpoint every [`CHECKPOINT_EVERY`]), so that the writer's commits do not do it.
/// Stopped and joined on drop.
#[derive(Debug)]
struct Checkpointer {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

impl Checkpointer {
    fn spawn(path: &Path) -> Checkpointer {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let path = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("xtrail-checkpoint".into())
            .spawn(move || {
                let conn = match Connection::open_with_flags(
                    &path,
                    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                ) {
                    Ok(c) => c,
                    Err(e) => {
                        // The writer's own checkpoints (wal_autocheckpoint) still run.
                        log::warn!("sqlite checkpoint thread: {e}");
                        return;
                    }
                };
                let _ = conn.pragma_update(None, "synchronous", "FULL");
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(CHECKPOINT_EVERY)
                {
                    // A failure (disk full) is the writer's to report; the next round retries.
                    let _: rusqlite::Result<(i64, i64, i64)> =
                        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                        });
                }
            })
            .ok();
        Checkpointer {
            stop: Some(stop),
            thread,
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SqliteStorage {
    /// Opens (creating if needed) `events.db` under `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StorageError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StorageError::Dir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join("events.db");
        let conn = Connection::open(&path)?;
        // auto_vacuum must be chosen before the first table exists; incremental lets
        // retention give pages back to the file system.
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // Index pages stay in memory between commits (64 MiB at most; with the default
        // 2 MiB commits read back index pages they had just written).
        conn.pragma_update(None, "cache_size", -65536)?;
        // Group commit keeps each batch in a savepoint, whose journal of changed pages is
        // then kept in memory rather than in a temporary file.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        // The checkpoint thread copies the WAL back; the writer does it itself only if
        // the WAL passes 64 MiB (the thread cannot keep up, or is gone).
        conn.pragma_update(None, "wal_autocheckpoint", 16384)?;
        // A burst (readers holding old snapshots) can grow the WAL file far past what it
        // holds later; once a checkpoint resets it, it is cut back to 16 MiB, so a disk
        // that filled gets that space back.
        conn.pragma_update(None, "journal_size_limit", 16 << 20)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch(SCHEMA)?;
        register_fold(&conn)?;
        Ok(SqliteStorage {
            writer: Mutex::new(conn),
            readers: Mutex::new(Vec::new()),
            _checkpointer: Checkpointer::spawn(&path),
            path,
        })
    }

    fn with_reader<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let conn = lock(&self.readers).pop();
        let conn = match conn {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                c.busy_timeout(std::time::Duration::from_secs(10))?;
                register_fold(&c)?;
                c
            }
        };
        let out = f(&conn);
        let mut pool = lock(&self.readers);
        if pool.len() < 8 {
            pool.push(conn);
        }
        out
    }
}

fn decode_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, String, i64, Vec<u8>)> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
}

fn to_event(
    (cursor, sensor_id, seq, body): (i64, String, i64, Vec<u8>),
) -> Result<v1::Event, StorageError> {
    let cursor = u64::try_from(cursor).unwrap_or(0);
    let mut ev = v1::Event::decode(body.as_slice()).map_err(|_| StorageError::Corrupt(cursor))?;
    ev.cursor = cursor;
    ev.sensor_id = sensor_id;
    ev.seq = u64::try_from(seq).unwrap_or(0);
    Ok(ev)
}

/// Runs a page query, stopping at `limit` rows or [`PAGE_MAX_BYTES`] of event bodies.
fn read_page(
    conn: &Connection,
    sql: &str,
    params: Vec<Value>,
    limit: usize,
) -> Result<Page, StorageError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
    let mut page = Page::default();
    let mut bytes = 0usize;
    while let Some(row) = rows.next()? {
        let (cursor, sensor_id, seq, body) = decode_row(row)?;
        bytes += body.len() + sensor_id.len();
        page.events.push(to_event((cursor, sensor_id, seq, body))?);
        if page.events.len() >= limit || bytes >= PAGE_MAX_BYTES {
            page.more = true;
            break;
        }
    }
    Ok(page)
}

/// Registers `xfold(text)`: the collector's one case fold ([`fold`]), so that stored and
/// live events are filtered alike.
fn register_fold(conn: &Connection) -> rusqlite::Result<()> {
    conn.create_scalar_function(
        "xfold",
        1,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let s: String = ctx.get(0)?;
            Ok(fold(&s))
        },
    )
}

/// Appends the filter's conditions (`AND ...`) and their parameters.
fn push_filter(f: &EventFilter, sql: &mut String, params: &mut Vec<Value>) {
    if f.min_severity > 0 {
        sql.push_str(" AND severity >= ?");
        params.push(Value::Integer(i64::from(f.min_severity)));
    }
    let mut push_in = |col: &str, values: &[String], sql: &mut String| {
        if values.is_empty() {
            return;
        }
        sql.push_str(&format!(" AND {col} IN ("));
        for (i, v) in values.iter().enumerate() {
            sql.push_str(if i == 0 { "?" } else { ",?" });
            params.push(Value::Text(v.clone()));
        }
        sql.push(')');
    };
    push_in("type", &f.types, sql);
    push_in("sensor", &f.sensors, sql);
    for (col, ranges) in [("src_ip", &f.src), ("dst_ip", &f.dst)] {
        if ranges.is_empty() {
            continue;
        }
        sql.push_str(" AND (");
        for (i, r) in ranges.iter().enumerate() {
            if i > 0 {
                sql.push_str(" OR ");
            }
            sql.push_str(&format!("{col} BETWEEN ? AND ?"));
            params.push(Value::Blob(r.lo.to_vec()));
            params.push(Value::Blob(r.hi.to_vec()));
        }
        sql.push(')');
    }
    for (col, needle) in [("trail", &f.trail), ("info", &f.info)] {
        if let Some(n) = needle {
            sql.push_str(&format!(" AND instr(xfold({col}), ?) > 0"));
            params.push(Value::Text(n.clone()));
        }
    }
}

/// Inserts one batch inside the caller's transaction (see [`Storage::insert_batch`]):
/// clears each event's `cursor` and `sensor_id` (they are not part of the stored body) and
/// returns the cursor of each event newly stored (`None` for a duplicate). The events are
/// left in place, so a failed group can be committed again batch by batch. One cached
/// single-row statement per event: multi-row INSERTs with RETURNING measured slower
/// (13 against 10 us of CPU per event, `insert_rows` of 4 x 1000 events).
fn insert_rows(
    conn: &Connection,
    sensor_key: &str,
    events: &mut [v1::Event],
) -> Result<Vec<Option<u64>>, StorageError> {
    let mut insert = conn.prepare_cached(
        "INSERT OR IGNORE INTO events
         (sensor_id, seq, ts_us, sensor, src_ip, dst_ip, type, trail, info, severity, body)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )?;
    let mut stored_body =
        conn.prepare_cached("SELECT body FROM events WHERE sensor_id = ? AND seq = ?")?;
    let mut body = Vec::with_capacity(512);
    let mut cursors = Vec::with_capacity(events.len());
    for ev in events.iter_mut() {
        ev.cursor = 0;
        ev.sensor_id.clear();
        body.clear();
        // Encoding into a Vec cannot fail.
        let _ = ev.encode(&mut body);
        let changed = insert.execute(params![
            sensor_key,
            as_i64(ev.seq),
            ev.ts_us,
            ev.sensor,
            &key_of(&ev.src_ip)[..],
            &key_of(&ev.dst_ip)[..],
            ev.r#type,
            ev.trail,
            ev.info,
            ev.severity,
            body,
        ])?;
        if changed == 0 {
            // Already stored: a resend is the same event to the byte; anything else is a
            // second publisher using this identity, and is refused whole.
            let before: Vec<u8> =
                stored_body.query_row(params![sensor_key, as_i64(ev.seq)], |r| r.get(0))?;
            if before != body {
                return Err(StorageError::Conflict {
                    sensor: sensor_key.to_string(),
                    seq: ev.seq,
                });
            }
            cursors.push(None);
            continue;
        }
        cursors.push(Some(u64::try_from(conn.last_insert_rowid()).unwrap_or(0)));
    }
    Ok(cursors)
}

/// One batch of a group: the cursors [`insert_rows`] assigned, or its refusal.
type BatchOutcome = Result<Vec<Option<u64>>, StorageError>;

/// What a committed batch produced, from [`insert_rows`]' cursors.
fn committed(sensor_key: &str, events: Vec<v1::Event>, cursors: &[Option<u64>]) -> Committed {
    let mut out = Committed {
        committed_seq: events.iter().map(|e| e.seq).max().unwrap_or(0),
        stored: Vec::with_capacity(events.len()),
        duplicates: 0,
    };
    for (mut ev, cursor) in events.into_iter().zip(cursors) {
        match cursor {
            Some(c) => {
                ev.cursor = *c;
                ev.sensor_id = sensor_key.to_string();
                out.stored.push(ev);
            }
            None => out.duplicates += 1,
        }
    }
    out
}

impl Storage for SqliteStorage {
    fn insert_batch(
        &self,
        sensor_key: &str,
        mut events: Vec<v1::Event>,
    ) -> Result<Committed, StorageError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction()?;
        let cursors = insert_rows(&tx, sensor_key, &mut events)?;
        tx.commit()?;
        Ok(committed(sensor_key, events, &cursors))
    }

    /// Group commit: every batch in one transaction (one WAL sync for all), each inside a
    /// savepoint so that a conflict refuses its own batch only. If anything else fails, the
    /// group is rolled back and each batch is committed on its own, so that each gets its
    /// own outcome.
    fn insert_batches(
        &self,
        mut batches: Vec<(String, Vec<v1::Event>)>,
    ) -> Vec<Result<Committed, StorageError>> {
        if batches.len() <= 1 {
            return batches
                .into_iter()
                .map(|(key, events)| self.insert_batch(&key, events))
                .collect();
        }
        let grouped = {
            let mut conn = lock(&self.writer);
            (|| -> Result<Vec<BatchOutcome>, StorageError> {
                let mut tx = conn.transaction()?;
                let mut out = Vec::with_capacity(batches.len());
                for (key, events) in &mut batches {
                    let sp = tx.savepoint()?;
                    match insert_rows(&sp, key, events) {
                        Ok(cursors) => {
                            sp.commit()?;
                            out.push(Ok(cursors));
                        }
                        // Dropping the savepoint rolls this batch back.
                        Err(e @ StorageError::Conflict { .. }) => out.push(Err(e)),
                        Err(e) => return Err(e),
                    }
                }
                tx.commit()?;
                Ok(out)
            })()
        };
        match grouped {
            Ok(out) => batches
                .into_iter()
                .zip(out)
                .map(|((key, events), r)| r.map(|cursors| committed(&key, events, &cursors)))
                .collect(),
            Err(_) => batches
                .into_iter()
                .map(|(key, events)| self.insert_batch(&key, events))
                .collect(),
        }
    }

    fn read_after(
        &self,
        after_cursor: u64,
        min_ts_us: Option<i64>,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Page, StorageError> {
        let mut sql = format!("SELECT {COLUMNS} FROM events WHERE cursor > ?");
        let mut params = vec![Value::Integer(as_i64(after_cursor))];
        if let Some(ts) = min_ts_us {
            sql.push_str(" AND ts_us >= ?");
            params.push(Value::Integer(ts));
        }
        push_filter(filter, &mut sql, &mut params);
        sql.push_str(" ORDER BY cursor LIMIT ?");
        params.push(Value::Integer(as_i64(limit as u64)));
        self.with_reader(|conn| read_page(conn, &sql, params, limit))
    }

    fn query(&self, spec: &QuerySpec) -> Result<Page, StorageError> {
        let mut sql = format!("SELECT {COLUMNS} FROM events WHERE 1");
        let mut params = Vec::new();
        if let Some(ts) = spec.from_ts_us {
            sql.push_str(" AND ts_us >= ?");
            params.push(Value::Integer(ts));
        }
        if let Some(ts) = spec.to_ts_us {
            sql.push_str(" AND ts_us < ?");
            params.push(Value::Integer(ts));
        }
        if let Some(c) = spec.after_cursor {
            sql.push_str(match spec.order {
                Order::NewestFirst => " AND cursor < ?",
                Order::OldestFirst => " AND cursor > ?",
            });
            params.push(Value::Integer(as_i64(c)));
        }
        push_filter(&spec.filter, &mut sql, &mut params);
        sql.push_str(match spec.order {
            Order::NewestFirst => " ORDER BY cursor DESC LIMIT ?",
            Order::OldestFirst => " ORDER BY cursor ASC LIMIT ?",
        });
        params.push(Value::Integer(as_i64(spec.limit as u64)));
        self.with_reader(|conn| read_page(conn, &sql, params, spec.limit))
    }

    fn get(&self, cursor: u64) -> Result<Option<v1::Event>, StorageError> {
        self.with_reader(|conn| {
            let row = conn
                .prepare_cached(&format!("SELECT {COLUMNS} FROM events WHERE cursor = ?"))?
                .query_row([as_i64(cursor)], decode_row)
                .optional()?;
            row.map(to_event).transpose()
        })
    }

    fn probe(&self) -> Result<(), StorageError> {
        let conn = lock(&self.writer);
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('probe', ?1)
             ON CONFLICT (key) DO UPDATE SET value = ?1",
            [crate::now_us()],
        )?;
        Ok(())
    }

    fn stats(&self) -> Result<StorageStats, StorageError> {
        self.with_reader(|conn| {
            let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
            let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
            let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
            let last: Option<i64> = conn
                .query_row(
                    "SELECT seq FROM sqlite_sequence WHERE name = 'events'",
                    [],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(StorageStats {
                used_bytes: u64::try_from((pages - free) * page_size).unwrap_or(0),
                last_cursor: last.map_or(0, |v| u64::try_from(v).unwrap_or(0)),
            })
        })
    }

    fn enforce_retention(
        &self,
        older_than_ts_us: Option<i64>,
        max_bytes: Option<u64>,
    ) -> Result<u64, StorageError> {
        let mut deleted = 0u64;
        if let Some(ts) = older_than_ts_us {
            // In chunks, so ingest is never locked out for long.
            loop {
                let n = lock(&self.writer).execute(
                    "DELETE FROM events WHERE cursor IN
                     (SELECT cursor FROM events WHERE ts_us < ? LIMIT 5000)",
                    [ts],
                )?;
                deleted += n as u64;
                if n < 5000 {
                    break;
                }
            }
        }
        if let Some(max) = max_bytes {
            for _ in 0..10_000 {
                let used = self.stats()?.used_bytes;
                if used <= max {
                    break;
                }
                let rows: i64 =
                    lock(&self.writer)
                        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))?;
                if rows == 0 {
                    break;
                }
                // Delete the share of rows the excess represents (at least a chunk).
                let excess = (used - max) as f64 / used as f64;
                let n = ((rows as f64 * excess).ceil() as i64).clamp(100, 5000);
                deleted += lock(&self.writer).execute(
                    "DELETE FROM events WHERE cursor IN
                     (SELECT cursor FROM events ORDER BY cursor LIMIT ?)",
                    [n],
                )? as u64;
            }
        }
        if deleted > 0 {
            let conn = lock(&self.writer);
            conn.execute_batch("PRAGMA incremental_vacuum;")?;
            let _: rusqlite::Result<(i64, i64, i64)> =
                conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                });
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::parse_filter_args;

    fn ev(seq: u64, ts: i64, src: &str) -> v1::Event {
        v1::Event {
            seq,
            ts_us: ts,
            sensor: "gw".into(),
            src_ip: src.into(),
            dst_ip: "198.18.1.1".into(),
            r#type: "IP".into(),
            trail: format!("t{seq}"),
            info: "x (malware)".into(),
            severity: 3,
            ..Default::default()
        }
    }

    #[test]
    fn exactly_once_and_cursor_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStorage::open(dir.path()).unwrap();
        let c = s
            .insert_batch("a", (1..=10).map(|i| ev(i, 1, "198.18.0.1")).collect())
            .unwrap();
        assert_eq!((c.stored.len(), c.duplicates, c.committed_seq), (10, 0, 10));
        let c = s
            .insert_batch("a", (5..=12).map(|i| ev(i, 1, "198.18.0.1")).collect())
            .unwrap();
        assert_eq!((c.stored.len(), c.duplicates), (2, 6));
        let c = s
            .insert_batch("b", (1..=3).map(|i| ev(i, 1, "198.18.0.1")).collect())
            .unwrap();
        assert_eq!(c.stored.len(), 3);
        let all = s
            .read_after(0, None, &EventFilter::default(), 100)
            .unwrap()
            .events;
        assert_eq!(all.len(), 15);
        assert!(all.windows(2).all(|w| w[1].cursor > w[0].cursor));
        assert_eq!(s.stats().unwrap().last_cursor, all[14].cursor);
        // The same seq with other content is a second publisher, refused whole.
        let mut other = ev(11, 1, "198.18.0.1");
        other.trail = "not what was stored".into();
        let before = s.stats().unwrap().last_cursor;
        assert!(matches!(
            s.insert_batch("a", vec![ev(13, 1, "198.18.0.1"), other]),
            Err(StorageError::Conflict { seq: 11, .. })
        ));
        assert_eq!(
            s.stats().unwrap().last_cursor,
            before,
            "nothing of it stored"
        );
        // A huge seq moves nothing: later, lower seqs are stored.
        let c = s
            .insert_batch("a", vec![ev(i64::MAX as u64, 1, "198.18.0.1")])
            .unwrap();
        assert_eq!(c.stored.len(), 1);
        let c = s.insert_batch("a", vec![ev(13, 1, "198.18.0.1")]).unwrap();
        assert_eq!(c.stored.len(), 1);
    }

    #[test]
    fn group_commit_keeps_each_batch_apart() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStorage::open(dir.path()).unwrap();
        s.insert_batch("a", vec![ev(1, 1, "198.18.0.1")]).unwrap();
        let mut conflicting = ev(1, 1, "198.18.0.1");
        conflicting.trail = "other".into();
        let out = s.insert_batches(vec![
            (
                "b".into(),
                (1..=3).map(|i| ev(i, 1, "198.18.0.1")).collect(),
            ),
            ("a".into(), vec![ev(2, 1, "198.18.0.1"), conflicting]),
            (
                "a".into(),
                vec![ev(1, 1, "198.18.0.1"), ev(3, 1, "198.18.0.1")],
            ),
            ("c".into(), vec![ev(7, 1, "198.18.0.1")]),
        ]);
        assert_eq!(out.len(), 4);
        assert!(matches!(out[1], Err(StorageError::Conflict { seq: 1, .. })));
        let ok: Vec<&Committed> = out.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(
            ok.iter()
                .map(|c| (c.stored.len(), c.duplicates))
                .collect::<Vec<_>>(),
            [(3, 0), (1, 1), (1, 0)]
        );
        // Cursors increase in the order given; nothing of the refused batch is stored.
        let cursors: Vec<u64> = ok
            .iter()
            .flat_map(|c| c.stored.iter().map(|e| e.cursor))
            .collect();
        assert!(cursors.windows(2).all(|w| w[1] > w[0]), "{cursors:?}");
        let all = s
            .read_after(0, None, &EventFilter::default(), 100)
            .unwrap()
            .events;
        assert_eq!(all.len(), 6);
        assert!(!all.iter().any(|e| e.sensor_id == "a" && e.seq == 2));
        assert_eq!(all.last().unwrap().cursor, *cursors.last().unwrap());
    }

    #[test]
    fn filters_push_down() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStorage::open(dir.path()).unwrap();
        let batch = vec![
            ev(1, 10, "198.18.0.1"),
            ev(2, 20, "10.9.9.9"),
            ev(3, 30, "2001:db8::1"),
        ];
        s.insert_batch("a", batch).unwrap();
        let f = EventFilter::compile(Some(
            &parse_filter_args(&["src=198.18.0.0/15".into()]).unwrap(),
        ))
        .unwrap();
        let got = s.read_after(0, None, &f, 10).unwrap().events;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].src_ip, "198.18.0.1");
        let f = EventFilter::compile(Some(
            &parse_filter_args(&["src=2001:db8::/32".into(), "trail=T3".into()]).unwrap(),
        ))
        .unwrap();
        assert_eq!(s.read_after(0, None, &f, 10).unwrap().events.len(), 1);
        assert_eq!(
            s.read_after(0, Some(20), &EventFilter::default(), 10)
                .unwrap()
                .events
                .len(),
            2
        );
        let page = s
            .query(&QuerySpec {
                filter: EventFilter::default(),
                from_ts_us: Some(10),
                to_ts_us: Some(30),
                after_cursor: None,
                limit: 1,
                order: Order::NewestFirst,
            })
            .unwrap()
            .events;
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].seq, 2);
    }

    #[test]
    fn size_retention_shrinks() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStorage::open(dir.path()).unwrap();
        for b in 0..20u64 {
            s.insert_batch(
                "a",
                (1..=500)
                    .map(|i| ev(b * 1000 + i, 1, "198.18.0.1"))
                    .collect(),
            )
            .unwrap();
        }
        let before = s.stats().unwrap().used_bytes;
        s.enforce_retention(None, Some(before / 2)).unwrap();
        assert!(s.stats().unwrap().used_bytes <= before / 2);
        let left = s
            .read_after(0, None, &EventFilter::default(), 100_000)
            .unwrap()
            .events;
        assert!(!left.is_empty() && left.len() < 10_000);
        assert_eq!(left.last().unwrap().seq, 19 * 1000 + 500, "newest kept");
    }
}
