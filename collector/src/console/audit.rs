//! The audit log: logins (success and failure), logouts, user changes and triage changes,
//! appended to `console.db` (triggers refuse updates and deletes). Read by admins with
//! `GET /api/audit?limit=N` (newest first).

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rusqlite::params;
use serde_json::json;
use xtrail_detect::event::format_rfc3339;

use super::db::{ConsoleDb, DbError};
use super::session::{api_error, Authed};
use crate::access::Viewer;
use crate::http::HttpState;

/// Most entries one `GET /api/audit` returns.
pub const MAX_LIMIT: u32 = 10_000;
/// Entries returned without `limit`.
pub const DEFAULT_LIMIT: u32 = 200;

/// One entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// When (µs since the epoch).
    pub time_us: i64,
    /// Who (a user name, `token:subscriber`, `cli`, or the name tried at a failed login).
    pub user: String,
    /// The source address (empty for the command line).
    pub source: String,
    /// What: `login`, `login_failed`, `logout`, `user_add`, `triage`, ...
    pub action: String,
    /// Free text.
    pub detail: String,
}

/// Appends an entry to `db`.
pub fn append(
    db: &ConsoleDb,
    user: &str,
    source: Option<IpAddr>,
    action: &str,
    detail: &str,
) -> Result<(), DbError> {
    let source = source.map(|a| a.to_string()).unwrap_or_default();
    db.with(|c| {
        c.execute(
            "INSERT INTO audit (time_us, user, source, action, detail) VALUES (?, ?, ?, ?, ?)",
            params![super::now_us(), user, source, action, detail],
        )
        .map(|_| ())
        .map_err(DbError::from)
    })
}

/// Records what `viewer` did from `source` in the running collector's audit log (triage
/// changes and the like). A failure to write is logged, never hidden.
pub fn record(
    viewer: &Viewer,
    source: impl Into<Option<IpAddr>>,
    action: &str,
    detail: impl AsRef<str>,
) {
    let Some(db) = super::db::current() else {
        log::error!(
            "audit log not open; lost entry: {} {action} {}",
            viewer.name,
            detail.as_ref()
        );
        return;
    };
    if let Err(e) = append(&db, &viewer.name, source.into(), action, detail.as_ref()) {
        log::error!(
            "audit log: {e}; lost entry: {} {action} {}",
            viewer.name,
            detail.as_ref()
        );
    }
}

/// The newest `limit` entries, newest first.
pub fn newest(db: &ConsoleDb, limit: u32) -> Result<Vec<Entry>, DbError> {
    db.with(|c| {
        let mut stmt = c.prepare(
            "SELECT time_us, user, source, action, detail FROM audit ORDER BY id DESC LIMIT ?",
        )?;
        let rows = stmt.query_map([limit], |r| {
            Ok(Entry {
                time_us: r.get(0)?,
                user: r.get(1)?,
                source: r.get(2)?,
                action: r.get(3)?,
                detail: r.get(4)?,
            })
        })?;
        rows.collect::<Result<Vec<_>, _>>().map_err(DbError::from)
    })
}

/// `GET /api/audit?limit=N` (admins only).
pub async fn api_audit(
    State(s): State<Arc<HttpState>>,
    Authed(viewer): Authed,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    if !viewer.is_admin() {
        return api_error(StatusCode::FORBIDDEN, "the audit log is for admins");
    }
    let mut limit = DEFAULT_LIMIT;
    for (k, v) in &pairs {
        match k.as_str() {
            "limit" => match v.parse::<u32>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => limit = n,
                _ => {
                    return api_error(
                        StatusCode::BAD_REQUEST,
                        format!("limit: {v:?} is not 1-{MAX_LIMIT}"),
                    )
                }
            },
            other => {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    format!("unknown parameter {other:?}"),
                )
            }
        }
    }
    let db = Arc::clone(&s.console.db);
    match tokio::task::spawn_blocking(move || newest(&db, limit)).await {
        Ok(Ok(entries)) => {
            let entries: Vec<_> = entries
                .into_iter()
                .map(|e| {
                    json!({
                        "time": format_rfc3339(e.time_us),
                        "user": e.user,
                        "source": e.source,
                        "action": e.action,
                        "detail": e.detail,
                    })
                })
                .collect();
            Json(json!({ "entries": entries })).into_response()
        }
        Ok(Err(e)) => api_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(e) => api_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_only() {
        let dir = tempfile::tempdir().unwrap();
        let db = ConsoleDb::open(dir.path()).unwrap();
        append(&db, "ana", Some("198.18.0.1".parse().unwrap()), "login", "").unwrap();
        append(&db, "ana", None, "triage", "status=resolved").unwrap();
        let e = newest(&db, 10).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].action, "triage");
        assert_eq!(e[1].source, "198.18.0.1");
        let refused = db.with(|c| c.execute("DELETE FROM audit", []).map_err(DbError::from));
        assert!(refused.is_err());
        let refused = db.with(|c| {
            c.execute("UPDATE audit SET user = 'x'", [])
                .map_err(DbError::from)
        });
        assert!(refused.is_err());
    }
}
