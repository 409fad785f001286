//! Delivery of the suppression list to the sensors.
//!
//! Triage stores "false positive" suppressions in `threats.db` ([`super::triage`]); this
//! module keeps the current list in memory as the wire message ([`v1::SuppressionList`]),
//! versioned by a digest of its entries, and answers heartbeats with it: a sensor names the
//! version it applies in `HeartbeatRequest.suppressions_version` and gets the whole list
//! back in `HeartbeatResponse.suppressions` only when that version is not the current one.
//! So a change reaches every connected sensor within one heartbeat interval, and a
//! sensor that (re)connects gets the list with its first heartbeat.
//!
//! `DELETE /api/suppressions?kind=trail|source&value=V` (analyst or admin, audited) takes
//! an entry off; the next heartbeat carries the shorter list and the events flow again.

use std::sync::{Arc, RwLock};

use axum::extract::{ConnectInfo, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rusqlite::{params, Connection};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest as _, Sha256};
use xtrail_proto::v1;

use super::session::{api_error, Authed};
use super::threats::Threats;
use super::triage::{self, Suppression};
use crate::conn::Peer;
use crate::http::HttpState;

/// The current suppression list, as sensors receive it.
#[derive(Debug)]
pub struct Feed {
    current: RwLock<Arc<v1::SuppressionList>>,
}

/// The wire kind of a stored kind (`trail`, `source`).
fn kind_of(kind: &str) -> v1::SuppressionKind {
    match kind {
        "trail" => v1::SuppressionKind::Trail,
        "source" => v1::SuppressionKind::Source,
        _ => v1::SuppressionKind::Unspecified,
    }
}

/// The list message of stored entries: sorted, with a version that is a digest of them
/// (the same entries give the same version, also after a restart).
pub fn list_of(entries: &[Suppression]) -> v1::SuppressionList {
    let mut entries: Vec<v1::Suppression> = entries
        .iter()
        .filter(|e| kind_of(&e.kind) != v1::SuppressionKind::Unspecified)
        .map(|e| v1::Suppression {
            kind: kind_of(&e.kind) as i32,
            value: e.value.clone(),
        })
        .collect();
    entries.sort_by(|a, b| (a.kind, &a.value).cmp(&(b.kind, &b.value)));
    entries.dedup();
    let mut h = Sha256::new();
    for e in &entries {
        h.update(e.kind.to_le_bytes());
        h.update((e.value.len() as u64).to_le_bytes());
        h.update(e.value.as_bytes());
    }
    let digest = h.finalize();
    v1::SuppressionList {
        version: format!("s{}-{}", entries.len(), super::hex(&digest[..8])),
        entries,
    }
}

impl Feed {
    /// The list stored in `c` (threats.db).
    pub fn load(c: &Connection) -> rusqlite::Result<Feed> {
        Ok(Feed {
            current: RwLock::new(Arc::new(list_of(&triage::suppressions(c)?))),
        })
    }

    /// Reads the stored list again (after a change).
    pub fn reload(&self, c: &Connection) -> rusqlite::Result<()> {
        let list = Arc::new(list_of(&triage::suppressions(c)?));
        if list.version != self.current().version {
            log::info!(
                "suppressions: version {} ({} entries) for the sensors",
                list.version,
                list.entries.len()
            );
        }
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = list;
        Ok(())
    }

    /// The current list.
    pub fn current(&self) -> Arc<v1::SuppressionList> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// What a heartbeat answers to a sensor that applies `version`: the list when it
    /// changed, else nothing.
    pub fn reply(&self, version: &str) -> Option<v1::SuppressionList> {
        let cur = self.current();
        (cur.version != version).then(|| (*cur).clone())
    }
}

/// The heartbeat answer for a sensor applying `version`, when threat aggregation runs
/// (before it does, the collector has no list to give and says nothing).
pub fn heartbeat_reply(
    threats: &std::sync::OnceLock<Arc<Threats>>,
    version: &str,
) -> v1::HeartbeatResponse {
    v1::HeartbeatResponse {
        suppressions: threats.get().and_then(|t| t.suppressions.reply(version)),
    }
}

/// The entry to remove.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Remove {
    kind: String,
    value: String,
}

/// `DELETE /api/suppressions?kind=trail|source&value=V`: takes the entry off the list
/// (analyst or admin; a scoped user only for what the list shows them). 404 when there is
/// no such entry.
pub async fn api_remove(
    State(s): State<Arc<HttpState>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    Authed(viewer): Authed,
    Query(r): Query<Remove>,
) -> Response {
    if !viewer.can_triage() {
        return api_error(StatusCode::FORBIDDEN, "your role may not change triage");
    }
    if r.kind != "trail" && r.kind != "source" {
        return api_error(StatusCode::BAD_REQUEST, "kind: use trail or source");
    }
    // As in the list: an address (a source, or an IP trail) only inside the scope.
    if let Ok(ip) = r.value.parse::<std::net::IpAddr>() {
        if !viewer.scope.allows(&ip) {
            return api_error(StatusCode::NOT_FOUND, "no such suppression");
        }
    } else if r.kind == "source" {
        return api_error(StatusCode::BAD_REQUEST, "value: a source is an address");
    }
    let Some(threats) = s.threats.get().cloned() else {
        return api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "threat aggregation is not running yet (see the collector's log)",
        );
    };
    let (kind, value) = (r.kind.clone(), r.value.clone());
    let work = tokio::task::spawn_blocking(move || {
        let c = threats.db();
        let n = c.execute(
            "DELETE FROM suppressions WHERE kind = ? AND value = ?",
            params![kind, value],
        )?;
        if n > 0 {
            threats.suppressions.reload(&c)?;
        }
        Ok::<_, rusqlite::Error>((n, threats.suppressions.current().version.clone()))
    })
    .await;
    match work {
        Ok(Ok((0, _))) => api_error(StatusCode::NOT_FOUND, "no such suppression"),
        Ok(Ok((_, version))) => {
            super::audit::record(
                &viewer,
                peer.ip(),
                "unsuppress",
                format!("{} {:?} (list version {version})", r.kind, r.value),
            );
            Json(json!({ "removed": { "kind": r.kind, "value": r.value }, "version": version }))
                .into_response()
        }
        Ok(Err(e)) => api_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: &str, value: &str) -> Suppression {
        Suppression {
            kind: kind.into(),
            value: value.into(),
            user: "ann".into(),
            time_us: 1,
            threat: "t".into(),
        }
    }

    #[test]
    fn versions_follow_the_entries_only() {
        let a = list_of(&[entry("trail", "bad.example"), entry("source", "198.18.0.1")]);
        let b = list_of(&[entry("source", "198.18.0.1"), entry("trail", "bad.example")]);
        assert_eq!(a, b, "order and who/when do not matter");
        assert_eq!(a.entries.len(), 2);
        let empty = list_of(&[]);
        assert!(
            !empty.version.is_empty(),
            "a sensor with no list gets the empty one"
        );
        assert_ne!(a.version, empty.version);
        let c = list_of(&[entry("trail", "bad.example")]);
        assert_ne!(a.version, c.version);
        assert!(list_of(&[entry("other", "x")]).entries.is_empty());
    }

    #[test]
    fn heartbeats_get_the_list_only_when_it_changed() {
        let dir = tempfile::tempdir().unwrap();
        let c = super::super::threats::open_db(dir.path()).unwrap();
        let feed = Feed::load(&c).unwrap();
        let first = feed.reply("").expect("a new sensor gets the (empty) list");
        assert!(first.entries.is_empty());
        assert!(feed.reply(&first.version).is_none());
        c.execute(
            "INSERT INTO suppressions (kind, value, user, time_us, threat) VALUES ('trail', 'x.example', 'ann', 1, 't')",
            [],
        )
        .unwrap();
        feed.reload(&c).unwrap();
        let next = feed.reply(&first.version).expect("changed");
        assert_eq!(next.entries[0].value, "x.example");
        assert_eq!(next.entries[0].kind, v1::SuppressionKind::Trail as i32);
        assert!(feed.reply(&next.version).is_none());
    }
}
