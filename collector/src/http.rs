//! The HTTP side, on the HTTP port: `/api/events` (query pages as JSON, the same filters as
//! gRPC; text fields cut to [`LIST_FIELD_BYTES`] with `"truncated": true`), `/api/events/N`
//! (one event whole, by cursor), `/api/blocklist` (source addresses as text for firewalls,
//! [`crate::blocklist`]), `/api/check?q=` (is an indicator listed, [`crate::check`]),
//! `/api/health` (200 when ingesting, 503 with the reason when the store refuses writes),
//! and `/metrics` (Prometheus text). The event routes and `/api/check` take the subscriber
//! token in `authorization: Bearer T` like gRPC (`/api/check` also a console session);
//! health and metrics are open (they carry no events) so that probes and scrapers need no
//! secret.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tonic::Code;
use xtrail_proto::json::event_to_json;
use xtrail_proto::limits;
use xtrail_proto::v1::{self, QueryRequest};

use crate::auth::{Auth, Role};
use crate::conn::Peer;
use crate::filter::apply_filter_term;
use crate::health::Health;
use crate::subscribe::Hub;

/// Longest text field in an event list; `/api/events/N` has the whole event.
pub const LIST_FIELD_BYTES: u32 = 512;

/// What the HTTP handlers share.
#[derive(Clone, Debug)]
pub struct HttpState {
    /// Storage and counters.
    pub hub: Hub,
    /// Who may read events.
    pub auth: Auth,
    /// Whether the store accepts writes.
    pub health: Arc<Health>,
    /// The trail set `/api/check` answers from.
    pub trails: Arc<crate::trails::TrailHolder>,
    /// The trail set served to sensors and which sensor runs which version.
    pub trail_dist: Arc<crate::trail_dist::TrailDist>,
    /// The console: users, sessions, audit log (`console.db`).
    pub console: Arc<crate::console::Console>,
    /// Threat aggregates and triage (`threats.db`); empty until they could be opened (the
    /// server retries while the disk is full or the file unreadable).
    pub threats: Arc<std::sync::OnceLock<Arc<crate::console::threats::Threats>>>,
}

/// The routes, with the peer address as connect info (for throttling failed logins).
pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/api/events", get(events))
        .route("/api/events/{cursor}", get(event_detail))
        .route("/api/blocklist", get(blocklist))
        .route("/api/check", get(check))
        .route("/api/health", get(health))
        .route("/metrics", get(metrics))
        .merge(crate::console::router())
        .merge(crate::console::assets::router())
        .merge(crate::console::api::router())
        .layer(axum::middleware::map_response(
            crate::console::security_headers,
        ))
        .with_state(state)
}

fn authorize(s: &HttpState, headers: &HeaderMap, peer: SocketAddr) -> Result<(), Box<Response>> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    s.auth
        .check(Role::Subscriber, auth, Some(peer.ip()))
        .map(|_| ())
        .map_err(|status| Box::new(status_to_http(&status)))
}

fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(json!({ "error": msg.into() }))).into_response()
}

fn status_to_http(s: &tonic::Status) -> Response {
    let code = match s.code() {
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(code, s.message())
}

/// Parses a time: RFC 3339 (`2026-08-07T09:14:22Z`) or microseconds since the epoch.
pub fn parse_time(v: &str) -> Result<i64, String> {
    if let Ok(us) = v.parse::<i64>() {
        return Ok(us);
    }
    let t = OffsetDateTime::parse(v, &Rfc3339)
        .map_err(|_| format!("{v:?} is neither RFC 3339 nor microseconds since the epoch"))?;
    i64::try_from(t.unix_timestamp_nanos() / 1000).map_err(|_| format!("{v:?} is out of range"))
}

/// Builds a query request from URL parameters: the filter keys of `--filter`, plus `from`,
/// `to`, `limit`, `page`, `order` (`newest` or `oldest`).
pub fn query_from_params(pairs: &[(String, String)]) -> Result<QueryRequest, String> {
    let mut req = QueryRequest::default();
    let mut filter = v1::Filter::default();
    for (k, v) in pairs {
        match k.as_str() {
            "from" => req.from_ts_us = parse_time(v).map_err(|e| format!("from: {e}"))?,
            "to" => req.to_ts_us = parse_time(v).map_err(|e| format!("to: {e}"))?,
            "limit" => {
                req.limit = v
                    .parse()
                    .map_err(|_| format!("limit: {v:?} is not a number"))?;
            }
            "page" | "page_token" => req.page_token.clone_from(v),
            "order" => {
                req.order = match v.as_str() {
                    "newest" | "desc" => v1::Order::NewestFirst as i32,
                    "oldest" | "asc" => v1::Order::OldestFirst as i32,
                    _ => return Err(format!("order: {v:?} is not newest or oldest")),
                }
            }
            key => {
                if !apply_filter_term(&mut filter, key, v).map_err(|e| e.to_string())? {
                    return Err(format!("unknown parameter {key:?}"));
                }
            }
        }
    }
    req.filter = Some(filter);
    Ok(req)
}

async fn events(
    State(s): State<Arc<HttpState>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    if let Err(r) = authorize(&s, &headers, peer) {
        return *r;
    }
    let req = match query_from_params(&pairs) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match crate::query::query(&s.hub, req).await {
        Ok(page) => {
            let events: Vec<_> = page
                .events
                .into_iter()
                .map(|mut e| {
                    let cut = limits::truncate_fields_to(&mut e, LIST_FIELD_BYTES) > 0;
                    let mut j = event_to_json(&e);
                    if cut {
                        j["truncated"] = true.into();
                    }
                    j
                })
                .collect();
            let next = (!page.next_page_token.is_empty()).then_some(page.next_page_token);
            Json(json!({ "events": events, "next_page": next })).into_response()
        }
        Err(status) => status_to_http(&status),
    }
}

async fn event_detail(
    State(s): State<Arc<HttpState>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(cursor): Path<String>,
) -> Response {
    if let Err(r) = authorize(&s, &headers, peer) {
        return *r;
    }
    let Ok(cursor) = cursor.parse::<u64>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{cursor:?} is not a cursor"),
        );
    };
    let storage = Arc::clone(&s.hub.storage);
    match tokio::task::spawn_blocking(move || storage.get(cursor)).await {
        Ok(Ok(Some(e))) => Json(event_to_json(&e)).into_response(),
        Ok(Ok(None)) => error(StatusCode::NOT_FOUND, format!("no stored event {cursor}")),
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, format!("storage: {e}")),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// Reads `minutes` (default [`crate::blocklist::DEFAULT_MINUTES`], 1 to
/// [`crate::blocklist::MAX_MINUTES`]) and filter terms; anything else is refused.
pub fn blocklist_params(pairs: &[(String, String)]) -> Result<(u32, v1::Filter), String> {
    use crate::blocklist::{DEFAULT_MINUTES, MAX_MINUTES};
    let mut minutes = DEFAULT_MINUTES;
    let mut filter = v1::Filter::default();
    for (k, v) in pairs {
        if k == "minutes" {
            minutes = v
                .parse()
                .ok()
                .filter(|m| (1..=MAX_MINUTES).contains(m))
                .ok_or_else(|| format!("minutes: {v:?} is not 1-{MAX_MINUTES}"))?;
        } else if !apply_filter_term(&mut filter, k, v).map_err(|e| e.to_string())? {
            return Err(format!("unknown parameter {k:?}"));
        }
    }
    Ok((minutes, filter))
}

async fn blocklist(
    State(s): State<Arc<HttpState>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    use crate::blocklist::MAX_SOURCES;
    if let Err(r) = authorize(&s, &headers, peer) {
        return *r;
    }
    let (minutes, filter) = match blocklist_params(&pairs) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let filter = match crate::filter::EventFilter::compile(Some(&filter)) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let now_us = crate::now_us();
    let storage = Arc::clone(&s.hub.storage);
    let built = tokio::task::spawn_blocking(move || {
        crate::blocklist::build(storage.as_ref(), &filter, minutes, now_us, MAX_SOURCES)
    })
    .await;
    match built {
        Ok(Ok(list)) => {
            crate::metrics::inc(&s.hub.metrics.queries);
            (
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                list.render(minutes, now_us, MAX_SOURCES),
            )
                .into_response()
        }
        Ok(Err(e)) => {
            crate::metrics::inc(&s.hub.metrics.storage_errors);
            error(StatusCode::SERVICE_UNAVAILABLE, format!("storage: {e}"))
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// `GET /api/check?q=INDICATOR` ([`crate::check`]): the subscriber token as for
/// `/api/events`, or a console session; 400 for a bad or missing `q`, 503 while no trail set
/// is loaded.
async fn check(
    State(s): State<Arc<HttpState>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    // A signed-in console user (session cookie, no bearer token sent) may ask too.
    let console_user = !headers.contains_key(header::AUTHORIZATION)
        && matches!(
            crate::console::session::session_of(&s, &headers).await,
            Ok(Some(_))
        );
    if !console_user {
        if let Err(r) = authorize(&s, &headers, peer) {
            return *r;
        }
    }
    let mut q = None;
    for (k, v) in &pairs {
        match (k.as_str(), &q) {
            ("q", None) => q = Some(v.as_str()),
            ("q", Some(_)) => return error(StatusCode::BAD_REQUEST, "give q once"),
            _ => return error(StatusCode::BAD_REQUEST, format!("unknown parameter {k:?}")),
        }
    }
    let Some(q) = q else {
        return error(
            StatusCode::BAD_REQUEST,
            "missing q: /api/check?q=<IP, IP:port, domain or URL>",
        );
    };
    let ind = match crate::check::parse_query(q) {
        Ok(i) => i,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let snap = match s.trails.current() {
        Ok(snap) => snap,
        Err(why) => return error(StatusCode::SERVICE_UNAVAILABLE, why.to_string()),
    };
    let answer = crate::check::check(&snap.trails, &s.trails.whitelist(), q, &ind);
    let mut body = serde_json::to_value(&answer).unwrap_or_default();
    body["trails"] = json!({
        "version": snap.version,
        "installed": xtrail_detect::event::format_rfc3339(snap.installed_us),
    });
    Json(body).into_response()
}

async fn health(State(s): State<Arc<HttpState>>) -> Response {
    let common = json!({
        "subscribers": s.hub.metrics.subscribers.load(Ordering::Relaxed),
        "ingest_streams": s.hub.metrics.ingest_streams.load(Ordering::Relaxed),
    });
    if let Some(reason) = s.health.problem() {
        let mut body = json!({ "status": "failing", "ingest": false, "reason": reason });
        body["subscribers"] = common["subscribers"].clone();
        body["ingest_streams"] = common["ingest_streams"].clone();
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    let storage = Arc::clone(&s.hub.storage);
    match tokio::task::spawn_blocking(move || storage.stats()).await {
        Ok(Ok(st)) => Json(json!({
            "status": "ok",
            "ingest": true,
            "last_cursor": st.last_cursor,
            "storage_bytes": st.used_bytes,
            "subscribers": common["subscribers"],
            "ingest_streams": common["ingest_streams"],
        }))
        .into_response(),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "failing", "ingest": false, "reason": e.to_string() })),
        )
            .into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn metrics(State(s): State<Arc<HttpState>>) -> Response {
    let storage = Arc::clone(&s.hub.storage);
    let st = tokio::task::spawn_blocking(move || storage.stats())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let mut text =
        s.hub
            .metrics
            .render(st.used_bytes, st.last_cursor, s.health.problem().is_none());
    let db = Arc::clone(&s.console.db);
    if let Ok(sensors) =
        tokio::task::spawn_blocking(move || crate::console::sensors::render_metrics(&db)).await
    {
        text.push_str(&sensors);
    }
    text.push_str(&s.trail_dist.render_metrics());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_become_a_query() {
        let p = |k: &str, v: &str| (k.to_string(), v.to_string());
        let q = query_from_params(&[
            p("from", "2026-08-07T09:14:22Z"),
            p("limit", "5"),
            p("type", "DNS"),
            p("src", "198.18.0.0/15"),
            p("order", "oldest"),
        ])
        .unwrap();
        assert_eq!(q.from_ts_us, 1_786_094_062_000_000);
        assert_eq!(q.limit, 5);
        assert_eq!(q.filter.unwrap().types, ["DNS"]);
        assert!(query_from_params(&[p("bogus", "1")]).is_err());
        assert!(query_from_params(&[p("from", "yesterday")]).is_err());
    }

    #[test]
    fn blocklist_params_are_checked() {
        let p = |k: &str, v: &str| (k.to_string(), v.to_string());
        let (m, f) = blocklist_params(&[p("type", "DNS"), p("min_severity", "high")]).unwrap();
        assert_eq!(m, 60);
        assert_eq!(f.types, ["DNS"]);
        assert_eq!(
            blocklist_params(&[p("minutes", "10080")]).unwrap().0,
            10_080
        );
        assert!(blocklist_params(&[p("minutes", "10081")]).is_err());
        assert!(blocklist_params(&[p("minutes", "0")]).is_err());
        assert!(blocklist_params(&[p("limit", "5")]).is_err());
    }
}
