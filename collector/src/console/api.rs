//! The console's threat API (see `collector/README.md`, "Console: threats, search and
//! triage"): lists, detail, triage, suppressions, stats, exports, IOCs, the live stream and
//! the search help. Every handler takes [`Authed`] and limits what it answers to the
//! viewer's scope: a threat is visible when one of its sources or destinations is inside,
//! its address lists show only addresses inside, and raw events are shown when either end
//! is inside ([`crate::access::Scope::allows_pair`]).

// The helpers fail with the answer itself (an axum `Response`), once per request.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use xtrail_detect::event::format_rfc3339;
use xtrail_proto::json::{event_to_json, severity_name};

// Sparkline points; in-scope addresses shown past a list's cut-off.
use super::rows::{MORE_SHOWN, SPARK};
use super::search::{self, Expr};
use super::session::{api_error, Authed};
use super::threats::{EventView, Index, Threat, ThreatView, Threats, Triage, HOUR_US};
use super::triage::{self, Change};
use crate::access::{Scope, Viewer};
use crate::conn::Peer;
use crate::http::HttpState;

/// Default and largest page of `/api/threats`.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 1000;
/// Most rows of an export.
const MAX_EXPORT: usize = 100_000;
/// Related threats per list in a detail.
const RELATED: usize = 20;
/// Longest range of the daily heatmap (days).
const MAX_DAYS: i64 = 731;
/// Most buckets of a timeline.
const MAX_BUCKETS: i64 = 1000;
/// Live updates per applied batch sent to one stream at most.
const LIVE_PER_BATCH: usize = 200;

/// The console's threat routes (merged into the HTTP router).
pub fn router() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/api/threats", get(list))
        .route("/api/threats.csv", get(export_csv))
        .route("/api/threats.json", get(export_json))
        .route("/api/threats/triage", post(triage_bulk))
        .route("/api/threats/{id}", get(detail))
        .route("/api/threats/{id}/triage", post(triage_one))
        .route("/api/iocs", get(iocs))
        .route(
            "/api/suppressions",
            get(suppressions).delete(super::suppress::api_remove),
        )
        .route("/api/stats/daily", get(stats_daily))
        .route("/api/stats/timeline", get(stats_timeline))
        .route("/api/live", get(live))
        .route("/api/search-help", get(search_help))
}

fn threats_of(s: &HttpState) -> Result<Arc<Threats>, Response> {
    s.threats.get().cloned().ok_or_else(|| {
        api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "threat aggregation is not running yet (see the collector's log)",
        )
    })
}

/// The aggregates and the view parameters of a request, or the answer that refuses it.
fn view(
    s: &HttpState,
    pairs: &[(String, String)],
    default_span_us: i64,
) -> Result<(Arc<Threats>, ViewParams), Response> {
    Ok((threats_of(s)?, params(pairs, default_span_us)?))
}

fn bad(msg: impl Into<String>) -> Response {
    api_error(StatusCode::BAD_REQUEST, msg)
}

/// Parses a time: RFC 3339 or seconds since the epoch; µs.
pub fn parse_time(v: &str) -> Result<i64, String> {
    if let Ok(s) = v.parse::<i64>() {
        return s
            .checked_mul(1_000_000)
            .ok_or_else(|| format!("{v:?} is out of range"));
    }
    let t = OffsetDateTime::parse(v, &Rfc3339)
        .map_err(|_| format!("{v:?} is neither RFC 3339 nor seconds since the epoch"))?;
    i64::try_from(t.unix_timestamp_nanos() / 1000).map_err(|_| format!("{v:?} is out of range"))
}

/// Sort keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sort {
    LastSeen,
    FirstSeen,
    Count,
    Severity,
}

/// The parameters common to the views.
#[derive(Debug)]
struct ViewParams {
    q: Expr,
    from: i64,
    to: i64,
    sort: Sort,
    desc: bool,
    offset: usize,
    limit: Option<usize>,
    bucket_s: Option<i64>,
}

fn params(pairs: &[(String, String)], default_span_us: i64) -> Result<ViewParams, Response> {
    let now = super::now_us();
    let mut p = ViewParams {
        q: Expr::All,
        from: i64::MIN,
        to: i64::MIN,
        sort: Sort::LastSeen,
        desc: true,
        offset: 0,
        limit: None,
        bucket_s: None,
    };
    for (k, v) in pairs {
        match k.as_str() {
            "q" => {
                p.q = search::parse(v).map_err(|e| {
                    (
                        StatusCode::BAD_REQUEST,
                        Json(json!({ "error": e.to_string(), "position": e.pos })),
                    )
                        .into_response()
                })?;
            }
            "from" if !v.is_empty() => {
                p.from = parse_time(v).map_err(|e| bad(format!("from: {e}")))?
            }
            "to" if !v.is_empty() => p.to = parse_time(v).map_err(|e| bad(format!("to: {e}")))?,
            "from" | "to" => {}
            "sort" => {
                p.sort = match v.as_str() {
                    "last_seen" => Sort::LastSeen,
                    "first_seen" => Sort::FirstSeen,
                    "count" => Sort::Count,
                    "severity" => Sort::Severity,
                    _ => {
                        return Err(bad(format!(
                            "sort {v:?}: use last_seen, first_seen, count or severity"
                        )))
                    }
                }
            }
            "order" => {
                p.desc = match v.as_str() {
                    "desc" => true,
                    "asc" => false,
                    _ => return Err(bad(format!("order {v:?}: use asc or desc"))),
                }
            }
            "offset" => {
                p.offset = v
                    .parse()
                    .map_err(|_| bad(format!("offset {v:?} is not a number")))?;
            }
            "limit" => {
                p.limit = Some(
                    v.parse()
                        .ok()
                        .filter(|n| (1..=MAX_EXPORT).contains(n))
                        .ok_or_else(|| bad(format!("limit {v:?}: 1-{MAX_EXPORT}")))?,
                );
            }
            "bucket" => {
                p.bucket_s = Some(
                    v.parse()
                        .ok()
                        .filter(|n: &i64| *n >= 3600 && *n % 3600 == 0)
                        .ok_or_else(|| bad(format!("bucket {v:?}: seconds, a multiple of 3600")))?,
                );
            }
            _ => return Err(bad(format!("unknown parameter {k:?}"))),
        }
    }
    if p.to == i64::MIN {
        p.to = now;
    }
    if p.from == i64::MIN {
        p.from = p.to.saturating_sub(default_span_us);
    }
    if p.from >= p.to {
        return Err(bad("from must be before to"));
    }
    Ok(p)
}

/// A threat selected for a view: its position in the index, its count in the range, and
/// its sort key.
struct Row {
    i: usize,
    count: u64,
    key: (i64, i64),
}

/// Threats of the index at `start..end` that a view shows (see [`select`]).
fn select_part(idx: &Index, scope: &Scope, p: &ViewParams, start: usize, end: usize) -> Vec<Row> {
    let (lo, hi) = (p.from.saturating_sub(HOUR_US), p.to.saturating_add(HOUR_US));
    let (lo_hour, hi_hour) = super::threats::hour_span(p.from, p.to);
    let mut rows: Vec<Row> = Vec::new();
    for (i, span) in idx.spans.iter().enumerate().take(end).skip(start) {
        let (first, last) = (span.first, span.last);
        if last < lo || first >= hi {
            continue;
        }
        let t = &idx.list[i];
        if !scope.is_all() && !t.visible(scope) {
            continue;
        }
        // A threat wholly inside the range counts whole (neither it nor its hours are
        // touched: an unscoped view without a query sorted by time reads `spans` alone).
        let count = if first.div_euclid(HOUR_US) >= lo_hour && last.div_euclid(HOUR_US) < hi_hour {
            span.count
        } else {
            t.count_in(p.from, p.to)
        };
        if count == 0 {
            continue;
        }
        if !p.q.is_all()
            && !p.q.matches(&ThreatView {
                threat: t,
                triage: if idx.triage.is_empty() {
                    None
                } else {
                    idx.triage.get(&t.id)
                },
                scope,
            })
        {
            continue;
        }
        let key = match p.sort {
            Sort::LastSeen => (last, 0),
            Sort::FirstSeen => (first, 0),
            Sort::Count => (i64::try_from(count).unwrap_or(i64::MAX), last),
            Sort::Severity => (i64::from(t.severity), last),
        };
        rows.push(Row { i, count, key });
    }
    rows
}

/// Threats in the index from which a view is split over two threads (the scan is bound by
/// memory latency: one pointer chase per threat).
const PARALLEL_SELECT: usize = 16_384;

/// Threats visible to `scope` with events in the range that match the query: the total,
/// and the rows sorted (only the first `need` when given: a page needs no full sort).
fn select(idx: &Index, scope: &Scope, p: &ViewParams, need: Option<usize>) -> (usize, Vec<Row>) {
    let n = idx.spans.len();
    let mut rows = if n < PARALLEL_SELECT {
        select_part(idx, scope, p, 0, n)
    } else {
        std::thread::scope(|s| {
            let second = s.spawn(|| select_part(idx, scope, p, n / 2, n));
            let mut rows = select_part(idx, scope, p, 0, n / 2);
            rows.extend(
                second
                    .join()
                    .unwrap_or_else(|e| std::panic::resume_unwind(e)),
            );
            rows
        })
    };
    let total = rows.len();
    let desc = p.desc;
    let cmp = |a: &Row, b: &Row| {
        let o = if desc {
            b.key.cmp(&a.key)
        } else {
            a.key.cmp(&b.key)
        };
        o.then_with(|| a.i.cmp(&b.i))
    };
    if let Some(k) = need.filter(|&k| k > 0 && k < rows.len()) {
        rows.select_nth_unstable_by(k - 1, cmp);
        rows.truncate(k);
    }
    rows.sort_unstable_by(cmp);
    (total, rows)
}

/// The triage of a threat nobody triaged.
static NO_TRIAGE: Triage = Triage {
    status: String::new(),
    assignee: String::new(),
    tags: Vec::new(),
    notes: 0,
};

fn triage_ref<'a>(idx: &'a Index, id: &str) -> &'a Triage {
    idx.triage.get(id).unwrap_or(&NO_TRIAGE)
}

/// A threat as the API shows it to a viewer (borrowed; serialized straight into answers).
#[derive(serde::Serialize)]
struct Summary<'a> {
    id: &'a str,
    kind: &'a str,
    #[serde(rename = "type")]
    r#type: &'a str,
    trail: &'a str,
    info: &'a str,
    reference: &'a str,
    severity: &'static str,
    first_seen: String,
    last_seen: String,
    count: u64,
    total_count: u64,
    sensors: &'a [String],
    sources: Vec<std::borrow::Cow<'a, str>>,
    destinations: Vec<std::borrow::Cow<'a, str>>,
    sources_truncated: bool,
    destinations_truncated: bool,
    ports: &'a [u32],
    protocols: &'a [String],
    sparkline: Vec<u64>,
    status: &'a str,
    assignee: &'a str,
    tags: &'a [String],
    notes: u32,
}

/// The addresses of a list inside the scope; for a scoped viewer also its in-scope
/// addresses past the list (from the threat's sorted membership index).
fn addrs<'a>(
    list: &'a super::threats::Bounded<super::threats::Addr>,
    more: &'a [std::net::IpAddr],
    scope: &Scope,
) -> Vec<std::borrow::Cow<'a, str>> {
    let mut out: Vec<std::borrow::Cow<'a, str>> = list
        .items
        .iter()
        .filter(|a| scope.allows(&a.ip))
        .map(|a| a.text.as_str().into())
        .collect();
    if !scope.is_all() {
        out.extend(
            super::threats::in_scope(more, scope)
                .take(MORE_SHOWN)
                .map(|ip| ip.to_string().into()),
        );
    }
    out
}

impl<'a> Summary<'a> {
    fn new(t: &'a Threat, tr: &'a Triage, scope: &Scope, count: u64, from: i64, to: i64) -> Self {
        Summary {
            id: &t.id,
            kind: &t.kind,
            r#type: &t.r#type,
            trail: &t.trail,
            info: &t.info,
            reference: &t.reference,
            severity: severity_name(t.severity),
            first_seen: format_rfc3339(t.first_seen),
            last_seen: format_rfc3339(t.last_seen),
            count,
            total_count: t.count,
            sensors: &t.sensors.items,
            sources: addrs(&t.sources, &t.more_sources, scope),
            destinations: addrs(&t.destinations, &t.more_destinations, scope),
            sources_truncated: t.sources.truncated,
            destinations_truncated: t.destinations.truncated,
            ports: &t.ports.items,
            protocols: &t.protocols.items,
            sparkline: t.sparkline(from, to, SPARK),
            status: tr.status(),
            assignee: &tr.assignee,
            tags: &tr.tags,
            notes: tr.notes,
        }
    }
}

/// A threat as a JSON value (detail, related, live).
fn summary(t: &Threat, tr: &Triage, scope: &Scope, count: u64, from: i64, to: i64) -> Value {
    serde_json::to_value(Summary::new(t, tr, scope, count, from, to)).unwrap_or(Value::Null)
}

fn summaries<'a>(idx: &'a Index, rows: &[Row], scope: &Scope, p: &ViewParams) -> Vec<Summary<'a>> {
    rows.iter()
        .map(|r| {
            let t = &idx.list[r.i];
            Summary::new(t, triage_ref(idx, &t.id), scope, r.count, p.from, p.to)
        })
        .collect()
}

/// A JSON answer from bytes already serialized.
fn json_bytes(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Runs `f` on the index in a blocking task (a view over every threat takes milliseconds).
async fn with_index<T: Send + 'static>(
    threats: Arc<Threats>,
    f: impl FnOnce(&Index) -> T + Send + 'static,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(move || f(&threats.read()))
        .await
        .map_err(|e| api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn list(
    State(s): State<Arc<HttpState>>,
    Authed(viewer): Authed,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let (threats, p) = match view(&s, &pairs, 24 * HOUR_US) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let applied = threats.applied.load(std::sync::atomic::Ordering::SeqCst);
    #[derive(serde::Serialize)]
    struct Page<'a> {
        threats: Vec<Summary<'a>>,
        total: usize,
        offset: usize,
        limit: usize,
        from: String,
        to: String,
        aggregated_cursor: u64,
    }
    let r = with_index(threats, move |idx| {
        let limit = p.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
        let need = p.offset.saturating_add(limit);
        let (total, rows) = select(idx, &viewer.scope, &p, Some(need));
        let page: Vec<Row> = rows.into_iter().skip(p.offset).collect();
        serde_json::to_vec(&Page {
            threats: summaries(idx, &page, &viewer.scope, &p),
            total,
            offset: p.offset,
            limit,
            from: format_rfc3339(p.from),
            to: format_rfc3339(p.to),
            aggregated_cursor: applied,
        })
    })
    .await;
    match r {
        Ok(Ok(v)) => json_bytes(v),
        Ok(Err(e)) => api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(r) => r,
    }
}

/// Where a trail comes from, by its reference.
fn trail_source(t: &Threat) -> Value {
    let origin = if t.reference == super::threats::HEURISTIC_REF {
        "heuristic"
    } else if t.reference.starts_with('(') {
        "file"
    } else {
        "feed"
    };
    json!({ "reference": t.reference, "origin": origin })
}

/// Defangs an indicator for copying: `hxxp://`, `[.]`, `[:]` in IPv6.
pub fn defang(s: &str) -> String {
    let mut out = s.replace('.', "[.]");
    for (from, to) in [("http://", "hxxp://"), ("https://", "hxxps://")] {
        if let Some(rest) = out.strip_prefix(from) {
            out = format!("{to}{rest}");
        }
    }
    if out.parse::<std::net::Ipv6Addr>().is_ok() || s.parse::<std::net::Ipv6Addr>().is_ok() {
        out = s.replace(':', "[:]");
    }
    out
}

async fn detail(
    State(s): State<Arc<HttpState>>,
    Authed(viewer): Authed,
    Path(id): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let (threats, p) = match view(&s, &pairs, i64::MAX / 4) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let scope = viewer.scope.clone();
    let found = {
        let idx = threats.read();
        idx.get(&id)
            .filter(|t| t.visible(&scope))
            .map(|t| (Arc::clone(t), triage_ref(&idx, &id).clone()))
    };
    let Some((t, tr)) = found else {
        return api_error(StatusCode::NOT_FOUND, format!("no threat {id:?}"));
    };
    // Raw events: the newest cursors kept with the aggregate, read from the store.
    let storage = Arc::clone(&s.hub.storage);
    let cursors: Vec<u64> = t.cursors.iter().rev().copied().collect();
    let (from, to) = (p.from, p.to);
    let q = p.q.clone();
    let ev_scope = scope.clone();
    let events = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for c in cursors {
            match storage.get(c) {
                Ok(Some(e)) => {
                    let src = e.src_ip.parse().ok();
                    let dst = e.dst_ip.parse().ok();
                    if e.ts_us >= from
                        && e.ts_us < to
                        && ev_scope.allows_pair(src, dst)
                        && (q.is_all() || q.matches(&EventView(&e)))
                    {
                        out.push(e);
                    }
                }
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(out)
    })
    .await;
    let events = match events {
        Ok(Ok(e)) => e,
        Ok(Err(e)) => return api_error(StatusCode::SERVICE_UNAVAILABLE, format!("storage: {e}")),
        Err(e) => return api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let mut iocs: BTreeSet<String> = BTreeSet::new();
    if t.kind != "heuristic" || t.r#type != "PATH" {
        iocs.insert(defang(&t.trail));
    }
    for e in &events {
        for v in [
            e.dns.as_ref().and_then(|d| d.query.as_deref()),
            e.http.as_ref().and_then(|h| h.host.as_deref()),
            e.tls.as_ref().and_then(|x| x.sni.as_deref()),
        ]
        .into_iter()
        .flatten()
        {
            iocs.insert(defang(v));
        }
    }
    let (same_source, same_trail) = {
        let idx = threats.read();
        let mine: Vec<std::net::IpAddr> = t
            .sources
            .items
            .iter()
            .filter(|a| scope.allows(&a.ip))
            .map(|a| a.ip)
            .collect();
        let mut by_src = Vec::new();
        let mut by_trail = Vec::new();
        for o in &idx.list {
            if o.id == t.id || !o.visible(&scope) {
                continue;
            }
            if by_src.len() < RELATED && o.sources.items.iter().any(|a| mine.contains(&a.ip)) {
                by_src.push(summary(
                    o,
                    triage_ref(&idx, &o.id),
                    &scope,
                    o.count,
                    o.last_seen - 24 * HOUR_US,
                    o.last_seen + 1,
                ));
            }
            if by_trail.len() < RELATED && o.trail == t.trail {
                by_trail.push(summary(
                    o,
                    triage_ref(&idx, &o.id),
                    &scope,
                    o.count,
                    o.last_seen - 24 * HOUR_US,
                    o.last_seen + 1,
                ));
            }
        }
        (by_src, by_trail)
    };
    let id2 = id.clone();
    let notes_history = {
        let threats = Arc::clone(&threats);
        tokio::task::spawn_blocking(move || {
            let c = threats.db();
            Ok::<_, rusqlite::Error>((triage::notes(&c, &id2)?, triage::history(&c, &id2)?))
        })
        .await
    };
    let (notes, history) = match notes_history {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return api_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(e) => return api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let span = (t.first_seen, t.last_seen + 1);
    let mut body = summary(
        &t,
        &tr,
        &scope,
        t.count,
        span.0.min(span.1 - HOUR_US),
        span.1,
    );
    body["events"] = events.iter().map(event_to_json).collect::<Vec<_>>().into();
    body["trail_source"] = trail_source(&t);
    body["related"] = json!({ "same_source": same_source, "same_trail": same_trail });
    body["iocs"] = iocs.into_iter().collect::<Vec<_>>().into();
    body["history"] = history.into();
    body["notes"] = notes.into();
    body["notes_count"] = tr.notes.into();
    Json(body).into_response()
}

/// Applies one triage change to the visible threats `ids`.
async fn change(
    s: &HttpState,
    viewer: Viewer,
    source: std::net::IpAddr,
    ids: Vec<String>,
    ch: Change,
) -> Response {
    if !viewer.can_triage() {
        return api_error(StatusCode::FORBIDDEN, "your role may not change triage");
    }
    if let Err(e) = ch.check() {
        return bad(e);
    }
    let threats = match threats_of(s) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let work = tokio::task::spawn_blocking(move || {
        let mut done = Vec::new();
        let mut missing = Vec::new();
        for id in ids {
            let (old, suppress_value) = {
                let idx = threats.read();
                let Some(t) = idx.get(&id).filter(|t| t.visible(&viewer.scope)) else {
                    missing.push(id);
                    continue;
                };
                let value = match ch.suppress.as_deref() {
                    Some("trail") => Some(t.trail.clone()),
                    Some("source") => t
                        .sources
                        .items
                        .iter()
                        .find(|a| viewer.scope.allows(&a.ip))
                        .map(|a| a.text.clone()),
                    _ => None,
                };
                (triage_ref(&idx, &id).clone(), value)
            };
            let res = {
                let mut c = threats.db();
                let r = triage::apply(
                    &mut c,
                    &id,
                    &old,
                    &ch,
                    &viewer.name,
                    super::now_us(),
                    suppress_value.as_deref(),
                );
                // The sensors' copy follows with their next heartbeat.
                match r {
                    Ok(done) if suppress_value.is_some() => {
                        threats.suppressions.reload(&c).map(|()| done)
                    }
                    r => r,
                }
            };
            match res {
                Ok((new, what)) => {
                    threats.write().triage.insert(id.clone(), new.clone());
                    if !what.is_empty() {
                        super::audit::record(
                            &viewer,
                            source,
                            "triage",
                            format!("threat {id}: {}", what.join("; ")),
                        );
                        let _ = threats.changes.send(Arc::new(vec![id.clone()]));
                    }
                    done.push(json!({ "id": id, "status": new.status(), "assignee": new.assignee, "tags": new.tags, "notes": new.notes, "changed": what }));
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok((done, missing))
    })
    .await;
    match work {
        Ok(Ok((done, missing))) => {
            if done.is_empty() {
                return api_error(
                    StatusCode::NOT_FOUND,
                    format!("no such threats: {missing:?}"),
                );
            }
            Json(json!({ "updated": done, "not_found": missing })).into_response()
        }
        Ok(Err(e)) => api_error(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn json_body(body: &[u8]) -> Result<Change, Response> {
    serde_json::from_slice(body).map_err(|e| bad(format!("body: {e}")))
}

async fn triage_one(
    State(s): State<Arc<HttpState>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    Authed(viewer): Authed,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let ch = match json_body(&body) {
        Ok(c) => c,
        Err(r) => return r,
    };
    if !ch.ids.is_empty() {
        return bad("ids belongs to the bulk form POST /api/threats/triage");
    }
    change(&s, viewer, peer.ip(), vec![id], ch).await
}

async fn triage_bulk(
    State(s): State<Arc<HttpState>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    Authed(viewer): Authed,
    body: axum::body::Bytes,
) -> Response {
    let mut ch = match json_body(&body) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let ids = std::mem::take(&mut ch.ids);
    if ids.is_empty() || ids.len() > triage::MAX_BULK {
        return bad(format!("ids: 1-{} threat ids", triage::MAX_BULK));
    }
    change(&s, viewer, peer.ip(), ids, ch).await
}

async fn suppressions(State(s): State<Arc<HttpState>>, Authed(viewer): Authed) -> Response {
    let threats = match threats_of(&s) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let r = tokio::task::spawn_blocking(move || triage::suppressions(&threats.db())).await;
    match r {
        Ok(Ok(list)) => {
            let visible: Vec<Value> = list
                .into_iter()
                .filter(|x| {
                    x.value
                        .parse::<std::net::IpAddr>()
                        .map_or(x.kind != "source", |ip| viewer.scope.allows(&ip))
                })
                .map(|x| {
                    json!({ "kind": x.kind, "value": x.value, "user": x.user,
                            "time": format_rfc3339(x.time_us), "threat": x.threat })
                })
                .collect();
            Json(json!({ "suppressions": visible })).into_response()
        }
        Ok(Err(e)) => api_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Calls `f(hour, severity index, count)` for the events per hour of the view, by each
/// threat's highest severity: from the index's running totals for an unscoped view without
/// a query, else from the selected threats.
fn hour_counts(idx: &Index, scope: &Scope, p: &ViewParams, mut f: impl FnMut(i64, usize, u64)) {
    let (lo, hi) = super::threats::hour_span(p.from, p.to);
    if scope.is_all() && p.q.is_all() {
        for (hour, by_sev) in idx.totals.range(lo..hi) {
            for (sev, c) in by_sev.iter().enumerate() {
                if *c > 0 {
                    f(*hour, sev, *c);
                }
            }
        }
        return;
    }
    for r in select(idx, scope, p, None).1 {
        let t = &idx.list[r.i];
        let sev = usize::try_from(t.severity.clamp(1, 3) - 1).unwrap_or(0);
        let h = &t.hours;
        let first = h.partition_point(|(x, _)| *x < lo);
        for (hour, c) in h[first..].iter().take_while(|(x, _)| *x < hi) {
            f(*hour, sev, u64::from(*c));
        }
    }
}

fn day_of(us: i64) -> String {
    format_rfc3339(us)[..10].to_string()
}

async fn stats_daily(
    State(s): State<Arc<HttpState>>,
    Authed(viewer): Authed,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let (threats, p) = match view(&s, &pairs, 120 * 24 * HOUR_US) {
        Ok(v) => v,
        Err(r) => return r,
    };
    const DAY: i64 = 24 * HOUR_US;
    if p.to.saturating_sub(p.from) / DAY > MAX_DAYS {
        return bad(format!("at most {MAX_DAYS} days"));
    }
    let r = with_index(threats, move |idx| {
        let first = p.from.div_euclid(DAY);
        let last = (p.to - 1).div_euclid(DAY);
        let mut days: BTreeMap<i64, u64> = (first..=last).map(|d| (d, 0)).collect();
        hour_counts(idx, &viewer.scope, &p, |hour, _, c| {
            *days.entry((hour * HOUR_US).div_euclid(DAY)).or_default() += c;
        });
        let days: Vec<Value> = days
            .into_iter()
            .map(|(d, c)| json!({ "day": day_of(d * DAY), "count": c }))
            .collect();
        json!({ "days": days })
    })
    .await;
    match r {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

async fn stats_timeline(
    State(s): State<Arc<HttpState>>,
    Authed(viewer): Authed,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let (threats, p) = match view(&s, &pairs, 24 * HOUR_US) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let start = p.from.div_euclid(HOUR_US) * HOUR_US;
    let span = p.to.saturating_sub(start);
    let bucket_us = match p.bucket_s {
        Some(b) => b * 1_000_000,
        None => {
            // Hours, days or weeks: at most ~200 buckets.
            let mut b = HOUR_US;
            while span / b > 200 {
                b *= if b < 24 * HOUR_US { 24 } else { 7 };
            }
            b
        }
    };
    let n = span.saturating_add(bucket_us - 1) / bucket_us;
    if n > MAX_BUCKETS {
        return bad(format!(
            "at most {MAX_BUCKETS} buckets; use a larger bucket"
        ));
    }
    let r = with_index(threats, move |idx| {
        let n = usize::try_from(n).unwrap_or(0);
        let mut series = [vec![0u64; n], vec![0u64; n], vec![0u64; n]];
        hour_counts(idx, &viewer.scope, &p, |hour, sev, c| {
            let i = usize::try_from((hour * HOUR_US - start) / bucket_us).unwrap_or(0);
            if i < n {
                series[sev][i] += c;
            }
        });
        let [low, medium, high] = series;
        json!({
            "bucket_s": bucket_us / 1_000_000,
            "start": format_rfc3339(start),
            "series": { "high": high, "medium": medium, "low": low },
        })
    })
    .await;
    match r {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

/// Renders the current view of an export: every row (or the `offset`/`limit` page), at
/// most [`MAX_EXPORT`].
async fn export<T: Send + 'static>(
    s: &HttpState,
    viewer: Viewer,
    pairs: &[(String, String)],
    render: impl FnOnce(&Index, &[Row], &Scope, &ViewParams) -> T + Send + 'static,
) -> Result<T, Response> {
    let threats = threats_of(s)?;
    let p = params(pairs, 24 * HOUR_US)?;
    with_index(threats, move |idx| {
        let limit = p.limit.unwrap_or(MAX_EXPORT);
        let (_, rows) = select(idx, &viewer.scope, &p, Some(p.offset.saturating_add(limit)));
        let page = rows.get(p.offset.min(rows.len())..).unwrap_or_default();
        render(idx, page, &viewer.scope, &p)
    })
    .await
}

/// One row of a streamed export, taken from the index under its read lock.
struct Snap {
    t: Arc<Threat>,
    tr: Option<Triage>,
    count: u64,
}

/// Bytes of the first chunk of a streamed export (small: the first byte comes early) and
/// of the next ones.
const FIRST_CHUNK: usize = 16 * 1024;
const CHUNK: usize = 256 * 1024;

/// Rows of an export from which two threads write it.
const PARALLEL_EXPORT: usize = 4096;

/// Writes one export row (`scratch` is reused between rows).
type RowWriter = fn(&mut Vec<u8>, &mut String, usize, &Snap, &Scope, &ViewParams);

/// Streams an export as a chunked body: the rows are selected under the index's read lock
/// (shared pointers, no copies), the lock is released, and a blocking task writes them
/// straight into byte chunks ([`super::rows`]) while the first chunks are already on the
/// wire.
async fn export_stream(
    s: &HttpState,
    viewer: Viewer,
    pairs: &[(String, String)],
    headers: [(header::HeaderName, &'static str); 2],
    head: &'static str,
    tail: &'static str,
    row: RowWriter,
) -> Response {
    let threats = match threats_of(s) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let p = match params(pairs, 24 * HOUR_US) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let picked = with_index(threats, move |idx| {
        let limit = p.limit.unwrap_or(MAX_EXPORT);
        let (_, rows) = select(idx, &viewer.scope, &p, Some(p.offset.saturating_add(limit)));
        let snaps: Vec<Snap> = rows
            .get(p.offset.min(rows.len())..)
            .unwrap_or_default()
            .iter()
            .map(|r| {
                let t = &idx.list[r.i];
                Snap {
                    t: Arc::clone(t),
                    tr: if idx.triage.is_empty() {
                        None
                    } else {
                        idx.triage.get(&t.id).cloned()
                    },
                    count: r.count,
                }
            })
            .collect();
        (snaps, p, viewer.scope)
    })
    .await;
    let (snaps, p, scope) = match picked {
        Ok(x) => x,
        Err(r) => return r,
    };
    let (tx, rx) = mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        // A long export is written by two threads: this one streams the first half while
        // a helper writes the second half's chunks, sent once the first half is out.
        let half = if snaps.len() >= PARALLEL_EXPORT {
            snaps.len() / 2
        } else {
            snaps.len()
        };
        std::thread::scope(|s| {
            let second = (half < snaps.len()).then(|| {
                s.spawn(|| {
                    let mut chunks = Vec::new();
                    let mut out = Vec::with_capacity(CHUNK + 4096);
                    let mut scratch = String::new();
                    for (i, snap) in snaps.iter().enumerate().skip(half) {
                        row(&mut out, &mut scratch, i, snap, &scope, &p);
                        if out.len() >= CHUNK {
                            chunks.push(std::mem::replace(
                                &mut out,
                                Vec::with_capacity(CHUNK + 4096),
                            ));
                        }
                    }
                    chunks.push(out);
                    chunks
                })
            });
            let mut out = Vec::with_capacity(FIRST_CHUNK + 4096);
            let mut scratch = String::new();
            out.extend_from_slice(head.as_bytes());
            let mut limit = FIRST_CHUNK;
            for (i, snap) in snaps.iter().enumerate().take(half) {
                row(&mut out, &mut scratch, i, snap, &scope, &p);
                if out.len() >= limit {
                    let chunk = std::mem::replace(&mut out, Vec::with_capacity(CHUNK + 4096));
                    if tx.blocking_send(Ok(chunk)).is_err() {
                        return; // the client went away (the helper finishes on its own)
                    }
                    limit = CHUNK;
                }
            }
            if let Some(second) = second {
                let chunks = second
                    .join()
                    .unwrap_or_else(|e| std::panic::resume_unwind(e));
                for chunk in chunks {
                    let done = std::mem::replace(&mut out, chunk);
                    if !done.is_empty() && tx.blocking_send(Ok(done)).is_err() {
                        return;
                    }
                }
            }
            out.extend_from_slice(tail.as_bytes());
            let _ = tx.blocking_send(Ok(out));
        });
    });
    (
        headers,
        axum::body::Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response()
}

async fn export_json(
    State(s): State<Arc<HttpState>>,
    Authed(viewer): Authed,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    fn row(
        out: &mut Vec<u8>,
        _: &mut String,
        i: usize,
        snap: &Snap,
        scope: &Scope,
        p: &ViewParams,
    ) {
        if i > 0 {
            out.push(b',');
        }
        let tr = snap.tr.as_ref().unwrap_or(&NO_TRIAGE);
        super::rows::json_row(out, &snap.t, tr, scope, snap.count, p.from, p.to);
    }
    export_stream(
        &s,
        viewer,
        &pairs,
        [
            (header::CONTENT_TYPE, "application/json"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"threats.json\"",
            ),
        ],
        "{\"threats\":[",
        "]}",
        row,
    )
    .await
}

async fn export_csv(
    State(s): State<Arc<HttpState>>,
    Authed(viewer): Authed,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    fn row(
        out: &mut Vec<u8>,
        scratch: &mut String,
        _: usize,
        snap: &Snap,
        scope: &Scope,
        _: &ViewParams,
    ) {
        let tr = snap.tr.as_ref().unwrap_or(&NO_TRIAGE);
        super::rows::csv_row(out, scratch, &snap.t, tr, scope, snap.count);
    }
    export_stream(
        &s,
        viewer,
        &pairs,
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"threats.csv\"",
            ),
        ],
        super::rows::CSV_HEADER,
        "",
        row,
    )
    .await
}

async fn iocs(
    State(s): State<Arc<HttpState>>,
    Authed(viewer): Authed,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let body = export(&s, viewer, &pairs, |idx, rows, _, _| {
        // Defanged once per threat (when it is first stored): a sort and a dedup here.
        let mut list: Vec<std::borrow::Cow<'_, str>> = rows
            .iter()
            .map(|r| &idx.list[r.i])
            .filter(|t| t.kind != "heuristic" || t.r#type != "PATH")
            .map(|t| {
                if t.defanged.is_empty() {
                    defang(&t.trail).into()
                } else {
                    t.defanged.as_str().into()
                }
            })
            .collect();
        list.sort_unstable();
        list.dedup();
        let mut out = String::with_capacity(list.iter().map(|d| d.len() + 1).sum());
        for d in list {
            out.push_str(&d);
            out.push('\n');
        }
        out
    })
    .await;
    match body {
        Ok(out) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], out).into_response(),
        Err(r) => r,
    }
}

async fn search_help(Authed(_viewer): Authed) -> Response {
    Json(search::help()).into_response()
}

async fn live(State(s): State<Arc<HttpState>>, Authed(viewer): Authed) -> Response {
    let threats = match threats_of(&s) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let mut changes = threats.changes.subscribe();
    let (tx, rx) = mpsc::channel::<Result<SseEvent, std::convert::Infallible>>(64);
    tokio::spawn(async move {
        loop {
            let ids = tokio::select! {
                got = changes.recv() => match got {
                    Ok(ids) => ids,
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return,
                },
                () = tx.closed() => return,
            };
            let events: Vec<String> = {
                let idx = threats.read();
                ids.iter()
                    .filter_map(|id| idx.get(id))
                    .filter(|t| t.visible(&viewer.scope))
                    .take(LIVE_PER_BATCH)
                    .map(|t| {
                        let to = super::now_us().max(t.last_seen + 1);
                        // Straight to text (no `Value` in between): once per change and
                        // client, as the summary depends on the viewer's scope.
                        let s = Summary::new(
                            t,
                            triage_ref(&idx, &t.id),
                            &viewer.scope,
                            t.count,
                            to - 24 * HOUR_US,
                            to,
                        );
                        serde_json::to_string(&s).unwrap_or_default()
                    })
                    .collect()
            };
            for e in events {
                if tx
                    .send(Ok(SseEvent::default().event("threat").data(e)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    Sse::new(ReceiverStream::new(rx))
        .keep_alive(
            KeepAlive::new()
                .interval(Duration::from_secs(15))
                .text(" keepalive"),
        )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defang_and_csv() {
        assert_eq!(defang("evil.example"), "evil[.]example");
        assert_eq!(defang("http://evil.example/x"), "hxxp://evil[.]example/x");
        assert_eq!(defang("198.18.0.1"), "198[.]18[.]0[.]1");
        assert_eq!(defang("2001:db8::1"), "2001[:]db8[:][:]1");
        let cell = |v: &str| {
            let mut s = Vec::new();
            super::super::rows::csv_cell(&mut s, v);
            String::from_utf8(s).unwrap()
        };
        assert_eq!(cell("a,b"), "\"a,b\"");
        assert_eq!(cell("=cmd()"), "'=cmd()");
        assert_eq!(cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(parse_time("1786094062").unwrap(), 1_786_094_062_000_000);
        assert_eq!(
            parse_time("2026-08-07T09:14:22Z").unwrap(),
            1_786_094_062_000_000
        );
        assert!(parse_time("soon").is_err());
    }

    /// The export's JSON rows are the API's summaries, byte for byte, scoped or not.
    #[test]
    fn export_rows_are_the_summaries() {
        let mut t: Threat = serde_json::from_value(json!({
            "id": "abc", "key": "k", "kind": "trail", "type": "DNS",
            "trail": "evil\"<script>\u{1}.example", "info": "malware\nx", "reference": "(ref)",
            "severity": 3, "first_seen": 1_786_094_062_123_456i64,
            "last_seen": 1_786_097_662_000_001i64, "count": 42,
            "sensors": {"items": ["s1", "s\"2"]},
            "sources": {"items": ["198.18.0.1", "198.19.0.1", "2001:db8::1"], "truncated": true},
            "destinations": {"items": ["198.18.9.9"]},
            "ports": {"items": [53, 443]}, "protocols": {"items": ["UDP"]}
        }))
        .unwrap();
        t.hours = vec![(1_786_094_062 / 3600, 40), (1_786_097_662 / 3600, 2)];
        t.more_sources = vec!["198.18.0.7".parse().unwrap(), "198.19.5.5".parse().unwrap()];
        let tr = Triage {
            status: "investigating".into(),
            assignee: "ann".into(),
            tags: vec!["a".into(), "b,c".into()],
            notes: 2,
        };
        // Rendered per row, and from the parts rendered when the threat is stored.
        let mut stored = t.clone();
        stored.refold();
        let scoped = Scope::parse("198.18.0.0/16").unwrap();
        for t in [&t, &stored] {
            for scope in [Scope::all(), scoped.clone()] {
                for triage in [&tr, &NO_TRIAGE] {
                    let (from, to) = (1_786_000_000_000_000, 1_786_100_000_000_000);
                    let want = serde_json::to_string(&Summary::new(t, triage, &scope, 7, from, to))
                        .unwrap();
                    let mut got = Vec::new();
                    super::super::rows::json_row(&mut got, t, triage, &scope, 7, from, to);
                    assert_eq!(String::from_utf8(got).unwrap(), want);
                }
            }
        }
        // CSV rows: the same with and without the stored parts.
        for scope in [Scope::all(), scoped] {
            for triage in [&tr, &NO_TRIAGE] {
                let (mut a, mut b) = (Vec::new(), Vec::new());
                let mut scratch = String::new();
                super::super::rows::csv_row(&mut a, &mut scratch, &t, triage, &scope, 7);
                super::super::rows::csv_row(&mut b, &mut scratch, &stored, triage, &scope, 7);
                assert_eq!(String::from_utf8(a).unwrap(), String::from_utf8(b).unwrap());
            }
        }
        let mut row = Vec::new();
        super::super::rows::csv_row(&mut row, &mut String::new(), &stored, &tr, &Scope::all(), 7);
        // The columns of `CSV_HEADER`, in its order.
        assert_eq!(
            String::from_utf8(row).unwrap(),
            "abc,trail,high,2026-08-07T09:14:22.123456Z,2026-08-07T10:14:22.000001Z,7,DNS,\
             \"evil\"\"<script>\u{1}.example\",\"malware\nx\",(ref),\
             198.18.0.1 198.19.0.1 2001:db8::1,198.18.9.9,53 443,UDP,\"s1 s\"\"2\",\
             investigating,ann,\"a b,c\"\r\n"
        );
    }
}
