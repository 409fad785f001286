//! Sensors: heartbeats (`Ingest.Heartbeat`), the last event per sensor, `GET /api/sensors`,
//! and the silent-sensor gauges of `/metrics`.
//!
//! - A heartbeat carries the sensor's name, identity, version, trail-set version, interval
//!   and counters; the last one per sensor name is kept in `console.db`, with events/s from
//!   the difference to the one before.
//! - The last event time per sensor comes from a follower of the event store (the exporters'
//!   reader), its cursor persisted with the times in one transaction; so sensors that
//!   stored events but never sent a heartbeat are listed too.
//! - A sensor is `silent` when its last heartbeat is older than [`SILENT_INTERVALS`] times
//!   its interval; `/metrics` has `xtrail_sensor_silent{sensor}` (0/1) and
//!   `xtrail_sensor_heartbeat_age_seconds{sensor}` for every sensor that heartbeats.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rusqlite::{params, OptionalExtension as _};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tonic::Status;
use xtrail_detect::event::format_rfc3339;
use xtrail_proto::v1;

use super::db::{ConsoleDb, DbError};
use super::now_us;
use super::session::{api_error, Authed};
use crate::auth::{valid_sensor_name, Principal};
use crate::export::{Chunk, ExporterStats};
use crate::http::HttpState;
use crate::subscribe::Hub;

/// A sensor is silent after this many heartbeat intervals without one.
pub const SILENT_INTERVALS: i64 = 3;
/// Longest heartbeat interval accepted, in seconds.
pub const MAX_INTERVAL_S: u32 = 3600;
/// Sensors with a heartbeat kept at most (a shared lab token may name any sensor).
pub const MAX_SENSORS: i64 = 10_000;
/// Events read per page by the last-event follower.
const READ_PAGE: usize = 2000;

/// The counters of a heartbeat, as stored (JSON).
fn counters_json(c: &v1::SensorCounters) -> Value {
    json!({
        "processed": c.processed,
        "events": c.events,
        "drops": c.drops,
        "ringbuf_full": c.ringbuf_full,
        "handoff_failed": c.handoff_failed,
        "parse_errors": c.parse_errors,
        "uptime_s": c.uptime_s,
    })
}

fn check_text(what: &str, v: &str, max: usize) -> Result<(), Status> {
    if v.len() > max || v.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "{what} must be at most {max} bytes without control characters"
        )));
    }
    Ok(())
}

/// Records a heartbeat from `principal` (a per-sensor credential heartbeats only as its
/// own name).
pub async fn heartbeat(
    db: Arc<ConsoleDb>,
    principal: &Principal,
    req: v1::HeartbeatRequest,
) -> Result<(), Status> {
    let name = match principal {
        Principal::Sensor(own) => {
            if !req.sensor_name.is_empty() && req.sensor_name != *own {
                return Err(Status::permission_denied(format!(
                    "this credential heartbeats as sensor {own:?}, not {:?}",
                    req.sensor_name
                )));
            }
            own.clone()
        }
        _ => req.sensor_name.clone(),
    };
    if !valid_sensor_name(&name) {
        return Err(Status::invalid_argument(
            "sensor_name: use 1 to 64 of A-Z a-z 0-9 . _ -",
        ));
    }
    check_text("identity", &req.identity, 256)?;
    check_text("version", &req.version, 64)?;
    check_text("trail_set_version", &req.trail_set_version, 128)?;
    if !(1..=MAX_INTERVAL_S).contains(&req.interval_s) {
        return Err(Status::invalid_argument(format!(
            "interval_s must be 1 to {MAX_INTERVAL_S}"
        )));
    }
    let counters = req.counters.unwrap_or_default();
    let now = now_us();
    let stored = tokio::task::spawn_blocking(move || {
        db.with(|c| {
            let prev: Option<(i64, String)> = c
                .query_row(
                    "SELECT received_us, counters FROM sensor_heartbeats WHERE name = ?",
                    [&name],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            if prev.is_none() {
                let n: i64 =
                    c.query_row("SELECT count(*) FROM sensor_heartbeats", [], |r| r.get(0))?;
                if n >= MAX_SENSORS {
                    return Ok(false);
                }
            }
            let rate = prev
                .and_then(|(at, text)| {
                    let before = serde_json::from_str::<Value>(&text).ok()?["events"].as_u64()?;
                    let dt = (now - at) as f64 / 1e6;
                    // A restarted sensor counts from zero again: no rate from that pair.
                    (dt > 0.0 && counters.events >= before)
                        .then(|| (counters.events - before) as f64 / dt)
                })
                .unwrap_or(0.0);
            c.execute(
                "INSERT INTO sensor_heartbeats
                   (name, identity, version, trail_set_version, interval_s, received_us,
                    counters, events_per_sec)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (name) DO UPDATE SET identity = excluded.identity,
                   version = excluded.version, trail_set_version = excluded.trail_set_version,
                   interval_s = excluded.interval_s, received_us = excluded.received_us,
                   counters = excluded.counters, events_per_sec = excluded.events_per_sec",
                params![
                    name,
                    req.identity,
                    req.version,
                    req.trail_set_version,
                    req.interval_s,
                    now,
                    counters_json(&counters).to_string(),
                    rate
                ],
            )?;
            Ok::<_, DbError>(true)
        })
    })
    .await;
    match stored {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => Err(Status::resource_exhausted(format!(
            "the collector keeps heartbeats of at most {MAX_SENSORS} sensors"
        ))),
        Ok(Err(e)) => Err(Status::unavailable(e.to_string())),
        Err(e) => Err(Status::unavailable(e.to_string())),
    }
}

/// What the console knows of one sensor.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SensorInfo {
    /// Name.
    pub name: String,
    /// Its last heartbeat.
    pub heartbeat: Option<Heartbeat>,
    /// Time of its newest stored event (µs).
    pub last_event_us: Option<i64>,
}

/// A sensor's last heartbeat.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Heartbeat {
    /// Identity.
    pub identity: String,
    /// Software version.
    pub version: String,
    /// Trail-set version.
    pub trail_set_version: String,
    /// Interval, seconds.
    pub interval_s: i64,
    /// When received (µs).
    pub received_us: i64,
    /// Counters.
    pub counters: Value,
    /// Events per second since the heartbeat before.
    pub events_per_sec: f64,
}

impl Heartbeat {
    /// Whether the sensor is silent at `now_us`.
    pub fn silent(&self, now_us: i64) -> bool {
        now_us.saturating_sub(self.received_us)
            > SILENT_INTERVALS * self.interval_s.max(1) * 1_000_000
    }
}

/// Every sensor with a heartbeat or a stored event, by name.
pub fn list(db: &ConsoleDb) -> Result<Vec<SensorInfo>, DbError> {
    db.with(|c| {
        let mut out: BTreeMap<String, SensorInfo> = BTreeMap::new();
        let mut stmt = c.prepare(
            "SELECT name, identity, version, trail_set_version, interval_s, received_us,
                    counters, events_per_sec FROM sensor_heartbeats",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                Heartbeat {
                    identity: r.get(1)?,
                    version: r.get(2)?,
                    trail_set_version: r.get(3)?,
                    interval_s: r.get(4)?,
                    received_us: r.get(5)?,
                    counters: serde_json::from_str(&r.get::<_, String>(6)?).unwrap_or(Value::Null),
                    events_per_sec: r.get(7)?,
                },
            ))
        })?;
        for row in rows {
            let (name, hb) = row?;
            out.insert(
                name.clone(),
                SensorInfo {
                    name,
                    heartbeat: Some(hb),
                    last_event_us: None,
                },
            );
        }
        let mut stmt = c.prepare("SELECT sensor, last_ts_us FROM sensor_last_event")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (name, ts) = row?;
            let s = out.entry(name.clone()).or_default();
            s.name = name;
            s.last_event_us = Some(ts);
        }
        Ok(out.into_values().collect())
    })
}

/// `GET /api/sensors`.
pub async fn api_sensors(State(s): State<Arc<HttpState>>, Authed(_v): Authed) -> Response {
    let db = Arc::clone(&s.console.db);
    let listed = tokio::task::spawn_blocking(move || list(&db)).await;
    let sensors = match listed {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => return api_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(e) => return api_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let now = now_us();
    let out: Vec<Value> = sensors
        .iter()
        .map(|s| {
            let hb = s.heartbeat.as_ref();
            let counter = |k: &str| hb.and_then(|h| h.counters.get(k).cloned());
            json!({
                "name": s.name,
                "identity": hb.map(|h| h.identity.clone()),
                "version": hb.map(|h| h.version.clone()),
                "trail_set_version": hb.map(|h| h.trail_set_version.clone()),
                "last_event": s.last_event_us.map(format_rfc3339),
                "last_heartbeat": hb.map(|h| format_rfc3339(h.received_us)),
                "events_per_sec": hb.map(|h| (h.events_per_sec * 100.0).round() / 100.0),
                "processed": counter("processed"),
                "events": counter("events"),
                "drops": counter("drops"),
                "ringbuf_full": counter("ringbuf_full"),
                "handoff_failed": counter("handoff_failed"),
                "parse_errors": counter("parse_errors"),
                "heartbeat_interval_s": hb.map(|h| h.interval_s),
                "silent": hb.is_some_and(|h| h.silent(now)),
            })
        })
        .collect();
    Json(json!({ "sensors": out })).into_response()
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The sensor gauges for `/metrics` (empty when the console database cannot be read).
pub fn render_metrics(db: &ConsoleDb) -> String {
    let Ok(sensors) = list(db) else {
        return String::new();
    };
    let now = now_us();
    let beating: Vec<(&str, &Heartbeat)> = sensors
        .iter()
        .filter_map(|s| s.heartbeat.as_ref().map(|h| (s.name.as_str(), h)))
        .collect();
    let mut out = String::new();
    if beating.is_empty() {
        return out;
    }
    out.push_str("# HELP xtrail_sensor_silent 1 when the sensor's last heartbeat is older than 3 of its intervals.\n# TYPE xtrail_sensor_silent gauge\n");
    for (name, h) in &beating {
        let _ = writeln!(
            out,
            "xtrail_sensor_silent{{sensor=\"{}\"}} {}",
            label(name),
            u8::from(h.silent(now))
        );
    }
    out.push_str("# HELP xtrail_sensor_heartbeat_age_seconds Seconds since the sensor's last heartbeat.\n# TYPE xtrail_sensor_heartbeat_age_seconds gauge\n");
    for (name, h) in &beating {
        let _ = writeln!(
            out,
            "xtrail_sensor_heartbeat_age_seconds{{sensor=\"{}\"}} {:.3}",
            label(name),
            (now - h.received_us).max(0) as f64 / 1e6
        );
    }
    let _ = writeln!(
        out,
        "# HELP xtrail_sensors_silent Sensors whose heartbeat is overdue.\n# TYPE xtrail_sensors_silent gauge\nxtrail_sensors_silent {}",
        beating.iter().filter(|(_, h)| h.silent(now)).count()
    );
    out
}

/// Folds a chunk of stored events into the last-event table with its cursor, in one
/// transaction.
fn apply_chunk(db: &ConsoleDb, chunk: &Chunk) -> Result<(), DbError> {
    let mut newest: HashMap<&str, i64> = HashMap::new();
    for e in &chunk.events {
        let t = newest.entry(e.sensor.as_str()).or_insert(e.ts_us);
        *t = (*t).max(e.ts_us);
    }
    db.with(|c| {
        let tx = c.transaction()?;
        for (sensor, ts) in &newest {
            tx.execute(
                "INSERT INTO sensor_last_event (sensor, last_ts_us) VALUES (?, ?)
                 ON CONFLICT (sensor) DO UPDATE SET last_ts_us = max(last_ts_us, excluded.last_ts_us)",
                params![sensor, ts],
            )?;
        }
        tx.execute(
            "INSERT INTO sensor_follow (id, cursor) VALUES (1, ?)
             ON CONFLICT (id) DO UPDATE SET cursor = excluded.cursor",
            [crate::storage::as_i64(chunk.upto)],
        )?;
        tx.commit()?;
        Ok(())
    })
}

fn follow_start(db: &ConsoleDb) -> Result<u64, DbError> {
    db.with(|c| {
        c.query_row("SELECT cursor FROM sensor_follow WHERE id = 1", [], |r| {
            r.get::<_, i64>(0)
        })
        .optional()
        .map(|v| u64::try_from(v.unwrap_or(0)).unwrap_or(0))
        .map_err(DbError::from)
    })
}

/// Starts the follower that keeps the last event time per sensor, from its persisted
/// cursor (retried every few seconds while `console.db` cannot be read, e.g. a full disk).
pub fn spawn_follower(hub: &Hub, db: Arc<ConsoleDb>) {
    let hub = hub.clone();
    tokio::spawn(async move {
        let mut said = false;
        let start = loop {
            let d = Arc::clone(&db);
            match tokio::task::spawn_blocking(move || follow_start(&d)).await {
                Ok(Ok(start)) => break start,
                Ok(Err(e)) if !said => {
                    log::error!("sensors page: last event per sensor unavailable until console.db can be read: {e}");
                    said = true;
                }
                _ => {}
            }
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        };
        let stats = Arc::new(ExporterStats {
            name: "console-sensors".into(),
            kind: "console",
            ..Default::default()
        });
        let (tx, mut rx) = mpsc::channel::<Chunk>(4);
        tokio::spawn(super::follow::follow_loop(hub, start, READ_PAGE, tx, stats));
        while let Some(chunk) = rx.recv().await {
            let db = Arc::clone(&db);
            let done = tokio::task::spawn_blocking(move || apply_chunk(&db, &chunk)).await;
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => log::error!("sensors: last-event follower: {e}"),
                Err(e) => log::error!("sensors: last-event follower: {e}"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn heartbeats_are_bound_to_the_credential() {
        let dir = tempfile::tempdir().unwrap();
        let db = ConsoleDb::open(dir.path()).unwrap();
        let req = |name: &str, events: u64| v1::HeartbeatRequest {
            sensor_name: name.into(),
            identity: "id-1".into(),
            version: "1.0".into(),
            trail_set_version: "t1".into(),
            interval_s: 10,
            counters: Some(v1::SensorCounters {
                events,
                drops: 2,
                ..Default::default()
            }),
            ..Default::default()
        };
        let gw = Principal::Sensor("gw".into());
        heartbeat(Arc::clone(&db), &gw, req("", 5)).await.unwrap();
        let refused = heartbeat(Arc::clone(&db), &gw, req("other", 5)).await;
        assert_eq!(refused.unwrap_err().code(), tonic::Code::PermissionDenied);
        heartbeat(Arc::clone(&db), &Principal::AnySensor, req("lab", 1))
            .await
            .unwrap();
        assert!(
            heartbeat(Arc::clone(&db), &Principal::AnySensor, req("", 1))
                .await
                .is_err()
        );
        apply_chunk(
            &db,
            &Chunk {
                events: vec![v1::Event {
                    sensor: "quiet".into(),
                    ts_us: 7,
                    ..Default::default()
                }],
                upto: 1,
            },
        )
        .unwrap();
        let l = list(&db).unwrap();
        let names: Vec<_> = l.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["gw", "lab", "quiet"]);
        let gw = l[0].heartbeat.as_ref().unwrap();
        assert_eq!(gw.counters["drops"], 2);
        assert!(!gw.silent(now_us()));
        assert!(gw.silent(now_us() + 31_000_000));
        assert_eq!(l[2].last_event_us, Some(7));
        assert!(render_metrics(&db).contains("xtrail_sensor_silent{sensor=\"gw\"} 0"));
    }
}
