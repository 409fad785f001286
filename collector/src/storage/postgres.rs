//! PostgreSQL storage (`--database postgres://...`): the store several collectors can
//! share.
//!
//! Tables (created on open, all named `xtrail_*`):
//! - `xtrail_events`: one row per event, range-partitioned by event time, one partition per
//!   UTC day (`xtrail_events_YYYYMMDD`), created when the first event of that day arrives.
//!   Filterable fields in columns (addresses as 16-byte keys, `trail` and `info` folded by
//!   [`fold`] in Rust, so a filter matches exactly as it does live and in SQLite), the whole
//!   event as its protobuf encoding.
//! - `xtrail_keys`: the dedupe keys, unpartitioned: (sensor key, seq) → SHA-256 of the
//!   stored encoding and the event time. A resend matches its digest (a duplicate); other
//!   content under a stored key fails the batch ([`StorageError::Conflict`]).
//! - `xtrail_partitions`: which day partitions exist; `xtrail_meta`: the probe row.
//!
//! Cursors come from the sequence `xtrail_cursor`, taken while holding a transaction-level
//! advisory lock ([`INSERT_LOCK`]) that is released only by the commit. Commits of all
//! collectors on one database are therefore serialised at that point, and cursor order is
//! commit order: a reader that sees cursor N sees every committed cursor below N (the
//! lock is released after the commit became visible). A rolled-back batch leaves a hole,
//! never a reused cursor. The rest of the batch (dedupe against `xtrail_keys`) runs before
//! the lock is taken.
//!
//! Retention drops whole day partitions (with their keys) once the day is older than the
//! age limit, and deletes the rows of the day that straddles the limit; the byte limit
//! drops the oldest day partitions while the store is above it, but never the newest one.
//!
//! Connections: one for the writer, a small pool for readers; a broken connection is
//! dropped and reopened on the next call. `synchronous_commit` is forced on, so a batch is
//! durable on the server when `insert_batch` returns. No TLS to the server (yet): use a
//! unix socket, loopback or a trusted network.
//!
//! The `postgres` client runs its own small runtime per connection and cannot be driven
//! from a thread inside a tokio runtime context; every public entry point that finds
//! itself on such a thread runs its work on a short-lived scoped thread
//! ([`off_runtime`]). The writer thread and `spawn_blocking` callers mostly pay a thread
//! spawn per call there, which is small next to a round trip to the server.

use std::collections::{HashMap, HashSet};
use std::str::FromStr as _;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use ::postgres::error::SqlState;
use ::postgres::types::ToSql;
use ::postgres::{Client, Config, NoTls, Row};
use prost::Message as _;
use sha2::{Digest as _, Sha256};
use xtrail_proto::v1;

use super::{
    as_i64, key_of, Committed, Order, Page, QuerySpec, Storage, StorageError, StorageStats,
    PAGE_MAX_BYTES,
};
use crate::filter::{fold, EventFilter};

/// Microseconds in a day: the partition width.
const DAY_US: i64 = 86_400_000_000;
/// Advisory lock held from cursor assignment to commit (all collectors on the database).
pub const INSERT_LOCK: i64 = 0x7874_7261_696c_0001;
/// Advisory lock serialising schema and partition changes.
const DDL_LOCK: i64 = 0x7874_7261_696c_0002;
/// Rows fetched per round trip while filling a page.
const FETCH: i32 = 256;
/// Rows deleted per statement by retention, so ingest is never locked out for long.
const DELETE_CHUNK: i64 = 5000;

const SCHEMA: &str = "
CREATE SEQUENCE IF NOT EXISTS xtrail_cursor AS BIGINT;
CREATE TABLE IF NOT EXISTS xtrail_keys (
    sensor_id TEXT   NOT NULL,
    seq       BIGINT NOT NULL,
    ts_us     BIGINT NOT NULL,
    digest    BYTEA  NOT NULL,
    PRIMARY KEY (sensor_id, seq)
);
CREATE INDEX IF NOT EXISTS xtrail_keys_ts ON xtrail_keys (ts_us);
CREATE TABLE IF NOT EXISTS xtrail_events (
    cursor       BIGINT  NOT NULL,
    sensor_id    TEXT    NOT NULL,
    seq          BIGINT  NOT NULL,
    ts_us        BIGINT  NOT NULL,
    sensor       TEXT    NOT NULL,
    src_ip       BYTEA   NOT NULL,
    dst_ip       BYTEA   NOT NULL,
    type         TEXT    NOT NULL,
    trail_folded TEXT    NOT NULL,
    info_folded  TEXT    NOT NULL,
    severity     INTEGER NOT NULL,
    body         BYTEA   NOT NULL
) PARTITION BY RANGE (ts_us);
CREATE INDEX IF NOT EXISTS xtrail_events_cursor ON xtrail_events (cursor);
CREATE INDEX IF NOT EXISTS xtrail_events_ts     ON xtrail_events (ts_us);
CREATE INDEX IF NOT EXISTS xtrail_events_src    ON xtrail_events (src_ip);
CREATE INDEX IF NOT EXISTS xtrail_events_dst    ON xtrail_events (dst_ip);
CREATE INDEX IF NOT EXISTS xtrail_events_sensor ON xtrail_events (sensor);
CREATE TABLE IF NOT EXISTS xtrail_partitions (
    day  BIGINT PRIMARY KEY,
    name TEXT   NOT NULL,
    lo   BIGINT NOT NULL,
    hi   BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS xtrail_meta (
    key   TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
";

const COLUMNS: &str = "cursor, sensor_id, seq, body";

/// PostgreSQL-backed [`Storage`].
pub struct PgStorage {
    config: Config,
    writer: Mutex<Option<Client>>,
    readers: Mutex<Vec<Client>>,
    /// Days whose partition this process knows to exist (cleared on an insert error: another
    /// collector's retention may have dropped one).
    partitions: Mutex<HashSet<i64>>,
}

impl std::fmt::Debug for PgStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStorage")
            .field("hosts", &self.config.get_hosts())
            .field("dbname", &self.config.get_dbname())
            .finish_non_exhaustive()
    }
}

/// Runs `f` where the blocking `postgres` client may run: here when this thread is outside
/// any tokio runtime, else on a scoped thread.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether `url` selects PostgreSQL (`postgres://` or `postgresql://`).
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// `url` without its password, for messages.
pub fn redact(url: &str) -> String {
    match Config::from_str(url) {
        Ok(c) => format!(
            "postgres://{}@{:?}:{:?}/{}",
            c.get_user().unwrap_or("?"),
            c.get_hosts(),
            c.get_ports(),
            c.get_dbname().unwrap_or("?")
        ),
        Err(_) => "postgres://(unparsable)".into(),
    }
}

/// The partition of a day: its name and bounds (`None` = unbounded at that end).
fn partition_of(day: i64) -> (String, Option<i64>, Option<i64>) {
    let lo = day.checked_mul(DAY_US);
    let hi = day.checked_add(1).and_then(|d| d.checked_mul(DAY_US));
    let date = time::OffsetDateTime::from_unix_timestamp(day.saturating_mul(86_400))
        .ok()
        .filter(|t| (1000..=9999).contains(&t.year()));
    let name = match date {
        Some(t) => format!(
            "xtrail_events_{:04}{:02}{:02}",
            t.year(),
            u8::from(t.month()),
            t.day()
        ),
        None if day < 0 => format!("xtrail_events_dm{}", day.unsigned_abs()),
        None => format!("xtrail_events_d{day}"),
    };
    (name, lo, hi)
}

/// A partition name read back from the database, checked before it goes into DDL.
fn checked_name(name: &str) -> Result<&str, StorageError> {
    if name.starts_with("xtrail_events_")
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        Ok(name)
    } else {
        Err(StorageError::Unavailable(format!(
            "unexpected partition name {name:?} in xtrail_partitions"
        )))
    }
}

fn to_event(row: &Row) -> Result<(v1::Event, usize), StorageError> {
    let cursor: i64 = row.try_get(0)?;
    let sensor_id: String = row.try_get(1)?;
    let seq: i64 = row.try_get(2)?;
    let body: &[u8] = row.try_get(3)?;
    let cursor = u64::try_from(cursor).unwrap_or(0);
    let bytes = body.len() + sensor_id.len();
    let mut ev = v1::Event::decode(body).map_err(|_| StorageError::Corrupt(cursor))?;
    ev.cursor = cursor;
    ev.sensor_id = sensor_id;
    ev.seq = u64::try_from(seq).unwrap_or(0);
    Ok((ev, bytes))
}

type Params = Vec<Box<dyn ToSql + Sync>>;

fn param(params: &mut Params, v: impl ToSql + Sync + 'static) -> String {
    params.push(Box::new(v));
    format!("${}", params.len())
}

/// Appends the filter's conditions (`AND ...`), as `storage::sqlite` does.
fn push_filter(f: &EventFilter, sql: &mut String, params: &mut Params) {
    if f.min_severity > 0 {
        let p = param(params, f.min_severity);
        sql.push_str(&format!(" AND severity >= {p}"));
    }
    if !f.types.is_empty() {
        let p = param(params, f.types.clone());
        sql.push_str(&format!(" AND type = ANY({p})"));
    }
    if !f.sensors.is_empty() {
        let p = param(params, f.sensors.clone());
        sql.push_str(&format!(" AND sensor = ANY({p})"));
    }
    for (col, ranges) in [("src_ip", &f.src), ("dst_ip", &f.dst)] {
        if ranges.is_empty() {
            continue;
        }
        sql.push_str(" AND (");
        for (i, r) in ranges.iter().enumerate() {
            if i > 0 {
                sql.push_str(" OR ");
            }
            let lo = param(params, r.lo.to_vec());
            let hi = param(params, r.hi.to_vec());
            sql.push_str(&format!("{col} BETWEEN {lo} AND {hi}"));
        }
        sql.push(')');
    }
    for (col, needle) in [("trail_folded", &f.trail), ("info_folded", &f.info)] {
        if let Some(n) = needle {
            let p = param(params, n.clone());
            sql.push_str(&format!(" AND strpos({col}, {p}) > 0"));
        }
    }
}

/// One event prepared for insertion.
struct Prepared {
    ev: v1::Event,
    body: Vec<u8>,
    digest: Vec<u8>,
}

impl PgStorage {
    /// Connects to `url` (`postgres://user:password@host:port/dbname`, or any form the
    /// `postgres` crate accepts) and creates the tables if needed.
    pub fn open(url: &str) -> Result<Self, StorageError> {
        off_runtime(|| Self::open_here(url))
    }

    fn open_here(url: &str) -> Result<Self, StorageError> {
        let mut config = Config::from_str(url)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("xtrail-collector");
        }
        let s = PgStorage {
            config,
            writer: Mutex::new(None),
            readers: Mutex::new(Vec::new()),
            partitions: Mutex::new(HashSet::new()),
        };
        let mut client = s.connect()?;
        {
            let mut tx = client.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&DDL_LOCK])?;
            tx.batch_execute(SCHEMA)?;
            tx.commit()?;
        }
        *lock(&s.writer) = Some(client);
        Ok(s)
    }

    fn connect(&self) -> Result<Client, StorageError> {
        let mut c = self.config.connect(NoTls)?;
        // Durable on commit whatever the server's default.
        c.batch_execute("SET synchronous_commit TO on")?;
        Ok(c)
    }

    /// Runs `f` with the writer connection, reconnecting if it was lost.
    fn with_writer<T>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let mut slot = lock(&self.writer);
        if slot.as_ref().is_none_or(Client::is_closed) {
            *slot = Some(self.connect()?);
        }
        let client = slot.as_mut().expect("connected above");
        let out = f(client);
        if client.is_closed() {
            *slot = None;
        }
        out
    }

    /// Runs `f` with a pooled reader connection.
    fn with_reader<T>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let pooled = lock(&self.readers).pop();
        let mut client = match pooled {
            Some(c) if !c.is_closed() => c,
            _ => self.connect()?,
        };
        let out = f(&mut client);
        if !client.is_closed() {
            let mut pool = lock(&self.readers);
            if pool.len() < 8 {
                pool.push(client);
            }
        }
        out
    }

    /// Creates the day partitions `days` needs, if missing.
    fn ensure_partitions(&self, client: &mut Client, days: &[i64]) -> Result<(), StorageError> {
        let missing: Vec<i64> = {
            let known = lock(&self.partitions);
            days.iter()
                .copied()
                .filter(|d| !known.contains(d))
                .collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let mut tx = client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&DDL_LOCK])?;
        for &day in &missing {
            let exists = tx
                .query_opt("SELECT 1 FROM xtrail_partitions WHERE day = $1", &[&day])?
                .is_some();
            if exists {
                continue;
            }
            let (name, lo, hi) = partition_of(day);
            let bound = |b: Option<i64>, open: &str| b.map_or(open.to_string(), |v| v.to_string());
            tx.batch_execute(&format!(
                "CREATE TABLE {name} PARTITION OF xtrail_events FOR VALUES FROM ({}) TO ({})",
                bound(lo, "MINVALUE"),
                bound(hi, "MAXVALUE"),
            ))?;
            tx.execute(
                "INSERT INTO xtrail_partitions (day, name, lo, hi) VALUES ($1, $2, $3, $4)",
                &[
                    &day,
                    &name,
                    &lo.unwrap_or(i64::MIN),
                    &hi.unwrap_or(i64::MAX),
                ],
            )?;
        }
        tx.commit()?;
        lock(&self.partitions).extend(missing);
        Ok(())
    }

    fn insert_once(
        &self,
        client: &mut Client,
        sensor_key: &str,
        prepared: &[Prepared],
    ) -> Result<(Vec<(usize, u64)>, u32), StorageError> {
        let mut days: Vec<i64> = prepared
            .iter()
            .map(|p| p.ev.ts_us.div_euclid(DAY_US))
            .collect();
        days.sort_unstable();
        days.dedup();
        self.ensure_partitions(client, &days)?;

        let mut tx = client.transaction()?;
        let seqs: Vec<i64> = prepared.iter().map(|p| as_i64(p.ev.seq)).collect();
        let ts: Vec<i64> = prepared.iter().map(|p| p.ev.ts_us).collect();
        let digests: Vec<Vec<u8>> = prepared.iter().map(|p| p.digest.clone()).collect();
        // Claim the keys; a key another transaction holds uncommitted waits for its outcome.
        let claimed: HashSet<i64> = tx
            .query(
                "INSERT INTO xtrail_keys (sensor_id, seq, ts_us, digest)
                 SELECT $1, s, t, d FROM unnest($2::int8[], $3::int8[], $4::bytea[]) AS u(s, t, d)
                 ON CONFLICT DO NOTHING RETURNING seq",
                &[&sensor_key, &seqs, &ts, &digests],
            )?
            .iter()
            .map(|r| r.get::<_, i64>(0))
            .collect();
        let others: Vec<i64> = seqs
            .iter()
            .copied()
            .filter(|s| !claimed.contains(s))
            .collect();
        let stored: HashMap<i64, Vec<u8>> = if others.is_empty() {
            HashMap::new()
        } else {
            tx.query(
                "SELECT seq, digest FROM xtrail_keys WHERE sensor_id = $1 AND seq = ANY($2)",
                &[&sensor_key, &others],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
        };
        // Decide per event: new, a duplicate (same digest), or a conflict.
        let mut new = Vec::new();
        let mut in_batch: HashMap<i64, &[u8]> = HashMap::new();
        let mut duplicates = 0u32;
        for (i, p) in prepared.iter().enumerate() {
            let seq = seqs[i];
            let before = match in_batch.get(&seq) {
                Some(d) => Some(*d),
                None if claimed.contains(&seq) => None,
                None => stored.get(&seq).map(Vec::as_slice),
            };
            match before {
                None => {
                    in_batch.insert(seq, &p.digest);
                    new.push(i);
                }
                Some(d) if d == p.digest.as_slice() => duplicates += 1,
                Some(_) => {
                    return Err(StorageError::Conflict {
                        sensor: sensor_key.to_string(),
                        seq: p.ev.seq,
                    })
                }
            }
        }
        if new.is_empty() {
            tx.commit()?;
            return Ok((Vec::new(), duplicates));
        }
        // From here to the commit, no other collector assigns cursors.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&INSERT_LOCK])?;
        let n = i64::try_from(new.len()).unwrap_or(i64::MAX);
        let mut cursors: Vec<i64> = tx
            .query(
                "SELECT nextval('xtrail_cursor') FROM generate_series(1, $1::int8)",
                &[&n],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect();
        cursors.sort_unstable();
        let col_seq: Vec<i64> = new.iter().map(|&i| seqs[i]).collect();
        let col_ts: Vec<i64> = new.iter().map(|&i| prepared[i].ev.ts_us).collect();
        let col_sensor: Vec<&str> = new
            .iter()
            .map(|&i| prepared[i].ev.sensor.as_str())
            .collect();
        let col_src: Vec<Vec<u8>> = new
            .iter()
            .map(|&i| key_of(&prepared[i].ev.src_ip))
            .collect();
        let col_dst: Vec<Vec<u8>> = new
            .iter()
            .map(|&i| key_of(&prepared[i].ev.dst_ip))
            .collect();
        let col_type: Vec<&str> = new
            .iter()
            .map(|&i| prepared[i].ev.r#type.as_str())
            .collect();
        let col_trail: Vec<String> = new.iter().map(|&i| fold(&prepared[i].ev.trail)).collect();
        let col_info: Vec<String> = new.iter().map(|&i| fold(&prepared[i].ev.info)).collect();
        let col_sev: Vec<i32> = new.iter().map(|&i| prepared[i].ev.severity).collect();
        let col_body: Vec<&[u8]> = new.iter().map(|&i| prepared[i].body.as_slice()).collect();
        tx.execute(
            "INSERT INTO xtrail_events
             (cursor, sensor_id, seq, ts_us, sensor, src_ip, dst_ip, type, trail_folded,
              info_folded, severity, body)
             SELECT c, $1, s, t, se, si, di, ty, tr, inf, sev, b
             FROM unnest($2::int8[], $3::int8[], $4::int8[], $5::text[], $6::bytea[],
                         $7::bytea[], $8::text[], $9::text[], $10::text[], $11::int4[],
                         $12::bytea[])
                  AS u(c, s, t, se, si, di, ty, tr, inf, sev, b)",
            &[
                &sensor_key,
                &cursors,
                &col_seq,
                &col_ts,
                &col_sensor,
                &col_src,
                &col_dst,
                &col_type,
                &col_trail,
                &col_info,
                &col_sev,
                &col_body,
            ],
        )?;
        tx.commit()?;
        let stored = new
            .into_iter()
            .zip(cursors.into_iter().map(|c| u64::try_from(c).unwrap_or(0)))
            .collect();
        Ok((stored, duplicates))
    }

    /// Rows in one partition (for the retention count).
    fn count_partition(client: &mut Client, name: &str) -> Result<u64, StorageError> {
        let n: i64 = client
            .query_one(
                &format!("SELECT count(*) FROM {}", checked_name(name)?),
                &[],
            )?
            .get(0);
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Drops one day partition and its keys; returns the events it held.
    fn drop_partition(
        &self,
        client: &mut Client,
        day: i64,
        name: &str,
        lo: i64,
        hi: i64,
    ) -> Result<u64, StorageError> {
        let name = checked_name(name)?;
        let n = Self::count_partition(client, name)?;
        let mut tx = client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&DDL_LOCK])?;
        tx.batch_execute(&format!("DROP TABLE IF EXISTS {name}"))?;
        tx.execute(
            "DELETE FROM xtrail_keys WHERE ts_us >= $1 AND ts_us < $2",
            &[&lo, &hi],
        )?;
        if hi == i64::MAX {
            tx.execute("DELETE FROM xtrail_keys WHERE ts_us = $1", &[&hi])?;
        }
        tx.execute("DELETE FROM xtrail_partitions WHERE day = $1", &[&day])?;
        tx.commit()?;
        lock(&self.partitions).remove(&day);
        Ok(n)
    }

    fn partitions_oldest_first(
        client: &mut Client,
    ) -> Result<Vec<(i64, String, i64, i64)>, StorageError> {
        Ok(client
            .query(
                "SELECT day, name, lo, hi FROM xtrail_partitions ORDER BY day",
                &[],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect())
    }

    fn used_bytes(client: &mut Client) -> Result<u64, StorageError> {
        let used: i64 = client
            .query_one(
                "SELECT (COALESCE((SELECT sum(pg_total_relation_size(inhrelid))
                                   FROM pg_inherits
                                   WHERE inhparent = 'xtrail_events'::regclass), 0)
                         + pg_total_relation_size('xtrail_keys'))::int8",
                &[],
            )?
            .get(0);
        Ok(u64::try_from(used).unwrap_or(0))
    }
}

/// Fills a page from `sql`, fetching [`FETCH`] rows at a time and stopping at `limit`
/// events or [`PAGE_MAX_BYTES`].
fn read_page(
    client: &mut Client,
    sql: &str,
    params: &Params,
    limit: usize,
) -> Result<Page, StorageError> {
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(AsRef::as_ref).collect();
    let mut tx = client.build_transaction().read_only(true).start()?;
    let portal = tx.bind(sql, &refs)?;
    let mut page = Page::default();
    let mut bytes = 0usize;
    'fetch: loop {
        let rows = tx.query_portal(&portal, FETCH)?;
        let last_batch = rows.len() < FETCH as usize;
        for row in &rows {
            let (ev, n) = to_event(row)?;
            bytes += n;
            page.events.push(ev);
            if page.events.len() >= limit || bytes >= PAGE_MAX_BYTES {
                page.more = true;
                break 'fetch;
            }
        }
        if last_batch {
            break;
        }
    }
    drop(portal);
    tx.commit()?;
    Ok(page)
}

impl Drop for PgStorage {
    fn drop(&mut self) {
        // Closing a client blocks on its runtime, which panics on a runtime thread.
        let writer = lock(&self.writer).take();
        let readers = std::mem::take(&mut *lock(&self.readers));
        off_runtime(move || drop((writer, readers)));
    }
}

/// The [`Storage`] methods, run where the client may block (see [`off_runtime`]).
impl PgStorage {
    fn insert_batch_here(
        &self,
        sensor_key: &str,
        events: Vec<v1::Event>,
    ) -> Result<Committed, StorageError> {
        let committed_seq = events.iter().map(|e| e.seq).max().unwrap_or(0);
        let prepared: Vec<Prepared> = events
            .into_iter()
            .map(|mut ev| {
                ev.cursor = 0;
                ev.sensor_id.clear();
                let body = ev.encode_to_vec();
                let digest = Sha256::digest(&body).to_vec();
                Prepared { ev, body, digest }
            })
            .collect();
        let outcome = self.with_writer(|client| {
            match self.insert_once(client, sensor_key, &prepared) {
                // A partition dropped by another collector's retention after this one
                // cached it: forget the cache and try once more.
                Err(StorageError::Pg(e)) if e.code() == Some(&SqlState::CHECK_VIOLATION) => {
                    lock(&self.partitions).clear();
                    self.insert_once(client, sensor_key, &prepared)
                }
                other => other,
            }
        });
        let (stored, duplicates) = match outcome {
            Ok(v) => v,
            Err(e) => {
                lock(&self.partitions).clear();
                return Err(e);
            }
        };
        let mut out = Committed {
            committed_seq,
            duplicates,
            ..Committed::default()
        };
        let mut prepared: Vec<Option<Prepared>> = prepared.into_iter().map(Some).collect();
        for (i, cursor) in stored {
            let Some(p) = prepared[i].take() else {
                continue;
            };
            let mut ev = p.ev;
            ev.cursor = cursor;
            ev.sensor_id = sensor_key.to_string();
            out.stored.push(ev);
        }
        Ok(out)
    }

    fn read_after_here(
        &self,
        after_cursor: u64,
        min_ts_us: Option<i64>,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Page, StorageError> {
        let mut params: Params = Vec::new();
        let p = param(&mut params, as_i64(after_cursor));
        let mut sql = format!("SELECT {COLUMNS} FROM xtrail_events WHERE cursor > {p}");
        if let Some(ts) = min_ts_us {
            let p = param(&mut params, ts);
            sql.push_str(&format!(" AND ts_us >= {p}"));
        }
        push_filter(filter, &mut sql, &mut params);
        let p = param(&mut params, as_i64(limit as u64));
        sql.push_str(&format!(" ORDER BY cursor LIMIT {p}"));
        self.with_reader(|c| read_page(c, &sql, &params, limit))
    }

    fn query_here(&self, spec: &QuerySpec) -> Result<Page, StorageError> {
        let mut params: Params = Vec::new();
        let mut sql = format!("SELECT {COLUMNS} FROM xtrail_events WHERE true");
        if let Some(ts) = spec.from_ts_us {
            let p = param(&mut params, ts);
            sql.push_str(&format!(" AND ts_us >= {p}"));
        }
        if let Some(ts) = spec.to_ts_us {
            let p = param(&mut params, ts);
            sql.push_str(&format!(" AND ts_us < {p}"));
        }
        if let Some(c) = spec.after_cursor {
            let p = param(&mut params, as_i64(c));
            sql.push_str(&match spec.order {
                Order::NewestFirst => format!(" AND cursor < {p}"),
                Order::OldestFirst => format!(" AND cursor > {p}"),
            });
        }
        push_filter(&spec.filter, &mut sql, &mut params);
        let p = param(&mut params, as_i64(spec.limit as u64));
        sql.push_str(&match spec.order {
            Order::NewestFirst => format!(" ORDER BY cursor DESC LIMIT {p}"),
            Order::OldestFirst => format!(" ORDER BY cursor ASC LIMIT {p}"),
        });
        self.with_reader(|c| read_page(c, &sql, &params, spec.limit))
    }

    fn get_here(&self, cursor: u64) -> Result<Option<v1::Event>, StorageError> {
        self.with_reader(|c| {
            let row = c.query_opt(
                &format!("SELECT {COLUMNS} FROM xtrail_events WHERE cursor = $1"),
                &[&as_i64(cursor)],
            )?;
            row.map(|r| to_event(&r).map(|(ev, _)| ev)).transpose()
        })
    }

    fn probe_here(&self) -> Result<(), StorageError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        self.with_writer(|c| {
            c.execute(
                "INSERT INTO xtrail_meta (key, value) VALUES ('probe', $1)
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                &[&now],
            )?;
            Ok(())
        })
    }

    fn stats_here(&self) -> Result<StorageStats, StorageError> {
        let last_cursor = self.last_cursor_here()?;
        let used_bytes = self.with_reader(Self::used_bytes)?;
        Ok(StorageStats {
            used_bytes,
            last_cursor,
        })
    }

    fn last_cursor_here(&self) -> Result<u64, StorageError> {
        self.with_reader(|c| {
            let last: i64 = c
                .query_one("SELECT COALESCE(max(cursor), 0) FROM xtrail_events", &[])?
                .get(0);
            Ok(u64::try_from(last).unwrap_or(0))
        })
    }

    fn enforce_retention_here(
        &self,
        older_than_ts_us: Option<i64>,
        max_bytes: Option<u64>,
    ) -> Result<u64, StorageError> {
        // Its own connection: dropping a partition may wait for readers, and ingest must
        // not wait behind it on the writer connection.
        let mut client = self.connect()?;
        let mut deleted = 0u64;
        if let Some(cut) = older_than_ts_us {
            for (day, name, lo, hi) in Self::partitions_oldest_first(&mut client)? {
                if hi <= cut {
                    deleted += self.drop_partition(&mut client, day, &name, lo, hi)?;
                }
            }
            // The day that straddles the limit: its older rows, in chunks.
            loop {
                let n = client.execute(
                    "DELETE FROM xtrail_events WHERE cursor IN
                     (SELECT cursor FROM xtrail_events WHERE ts_us < $1 LIMIT $2)",
                    &[&cut, &DELETE_CHUNK],
                )?;
                deleted += n;
                if n < DELETE_CHUNK as u64 {
                    break;
                }
            }
            loop {
                let n = client.execute(
                    "DELETE FROM xtrail_keys WHERE ctid IN
                     (SELECT ctid FROM xtrail_keys WHERE ts_us < $1 LIMIT $2)",
                    &[&cut, &DELETE_CHUNK],
                )?;
                if n < DELETE_CHUNK as u64 {
                    break;
                }
            }
        }
        if let Some(max) = max_bytes {
            // Whole days, oldest first; the newest day is kept whatever its size.
            loop {
                let parts = Self::partitions_oldest_first(&mut client)?;
                if parts.len() <= 1 || Self::used_bytes(&mut client)? <= max {
                    break;
                }
                let (day, name, lo, hi) = &parts[0];
                deleted += self.drop_partition(&mut client, *day, name, *lo, *hi)?;
            }
        }
        Ok(deleted)
    }
}

impl Storage for PgStorage {
    fn insert_batch(
        &self,
        sensor_key: &str,
        events: Vec<v1::Event>,
    ) -> Result<Committed, StorageError> {
        off_runtime(|| self.insert_batch_here(sensor_key, events))
    }

    fn read_after(
        &self,
        after_cursor: u64,
        min_ts_us: Option<i64>,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Page, StorageError> {
        off_runtime(|| self.read_after_here(after_cursor, min_ts_us, filter, limit))
    }

    fn query(&self, spec: &QuerySpec) -> Result<Page, StorageError> {
        off_runtime(|| self.query_here(spec))
    }

    fn get(&self, cursor: u64) -> Result<Option<v1::Event>, StorageError> {
        off_runtime(|| self.get_here(cursor))
    }

    fn probe(&self) -> Result<(), StorageError> {
        off_runtime(|| self.probe_here())
    }

    fn stats(&self) -> Result<StorageStats, StorageError> {
        off_runtime(|| self.stats_here())
    }

    fn last_cursor(&self) -> Result<u64, StorageError> {
        off_runtime(|| self.last_cursor_here())
    }

    fn enforce_retention(
        &self,
        older_than_ts_us: Option<i64>,
        max_bytes: Option<u64>,
    ) -> Result<u64, StorageError> {
        off_runtime(|| self.enforce_retention_here(older_than_ts_us, max_bytes))
    }
}
