//! Console sign-in and sessions.
//!
//! - A session id is 256 random bits from the OS, sent once in the `xtrail_session` cookie
//!   (HttpOnly, SameSite=Strict, Path=/, Secure under TLS); only its SHA-256 is stored, in
//!   `console.db`, so sessions survive a restart and a stolen database holds no usable id.
//! - Sessions end after [`SessionSettings::idle`] without a request (default 30 min), after
//!   [`SessionSettings::absolute`] in any case (default 12 h), at logout, and when the user
//!   is deleted or changes password.
//! - A login always makes a new id and deletes any id the client sent (no fixation).
//! - Every state-changing request on a cookie session carries the session's CSRF token in
//!   `x-csrf-token` (or, for the logout form, the form field `csrf`); 403 otherwise.
//! - `POST /login` and `POST /logout` from another site (`Sec-Fetch-Site: cross-site`, or
//!   an `Origin` other than the `Host`) are refused (403): no login CSRF. A reverse proxy in
//!   front must pass the original `Host`.
//! - Failed logins are counted per source address (IPv6 by /64) and per user name: past
//!   [`MAX_LOGIN_FAILURES`] within [`LOGIN_WINDOW`], logins from that source or for that
//!   name answer 429 until the window ends. Failures say only "wrong user name or
//!   password", and unknown names are verified against a dummy hash (about equal time).
//! - [`Authed`] also accepts `authorization: Bearer <subscriber token>` (as the viewer
//!   `token:subscriber`, analyst, unrestricted; no CSRF: a browser never sends it on its
//!   own).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use rusqlite::{params, OptionalExtension as _};
use serde::Deserialize;
use serde_json::json;

use super::db::{ConsoleDb, DbError};
use super::{audit, hex, now_us, random_bytes, users};
use crate::access::{Role, Scope, Viewer};
use crate::auth::source_key;
use crate::auth::{hash, same};
use crate::conn::Peer;
use crate::http::HttpState;

/// The session cookie's name.
pub const COOKIE: &str = "xtrail_session";
/// The CSRF header.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Failed logins per source or per user name before logins are refused (429).
pub const MAX_LOGIN_FAILURES: u32 = 10;
/// The failure-counting window.
pub const LOGIN_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Sources and names tracked at most.
const MAX_TRACKED: usize = 65_536;
/// The viewer name of a subscriber-token request.
pub const TOKEN_VIEWER: &str = "token:subscriber";

/// Session lifetimes and cookie flags.
#[derive(Debug, Clone, Copy)]
pub struct SessionSettings {
    /// A session unused this long ends.
    pub idle: Duration,
    /// A session ends this long after login regardless.
    pub absolute: Duration,
    /// Set `Secure` on the cookie (the HTTP port serves TLS).
    pub secure: bool,
}

impl Default for SessionSettings {
    fn default() -> Self {
        SessionSettings {
            idle: Duration::from_secs(30 * 60),
            absolute: Duration::from_secs(12 * 3600),
            secure: false,
        }
    }
}

/// A signed-in request's session.
#[derive(Debug, Clone)]
pub struct Session {
    /// SHA-256 of the id.
    pub id_hash: Vec<u8>,
    /// The user, as they are now (role and scope changes apply at once).
    pub viewer: Viewer,
    /// The CSRF token.
    pub csrf: String,
}

fn us(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Creates a session for `user`; returns (id, CSRF token).
pub fn create(db: &ConsoleDb, user: &str) -> Result<(String, String), DbError> {
    let id = hex(&random_bytes::<32>().map_err(|e| DbError::Dir(db.dir().into(), e))?);
    let csrf = hex(&random_bytes::<32>().map_err(|e| DbError::Dir(db.dir().into(), e))?);
    let now = now_us();
    db.with(|c| {
        c.execute(
            "INSERT INTO sessions (id_hash, user, csrf, created_us, last_us) VALUES (?, ?, ?, ?, ?)",
            params![hash(&id), user, csrf, now, now],
        )
        .map_err(DbError::from)
    })?;
    Ok((id, csrf))
}

/// Ends a session.
pub fn destroy(db: &ConsoleDb, id_hash: &[u8]) -> Result<(), DbError> {
    db.with(|c| {
        c.execute("DELETE FROM sessions WHERE id_hash = ?", [id_hash])
            .map(|_| ())
            .map_err(DbError::from)
    })
}

/// Deletes expired sessions.
pub fn purge(db: &ConsoleDb, settings: &SessionSettings) -> Result<usize, DbError> {
    let now = now_us();
    db.with(|c| {
        c.execute(
            "DELETE FROM sessions WHERE last_us < ? OR created_us < ?",
            params![now - us(settings.idle), now - us(settings.absolute)],
        )
        .map_err(DbError::from)
    })
}

/// The live session of `id`, if any; refreshes its idle clock. Expired sessions and
/// sessions of deleted users are deleted.
pub fn lookup(
    db: &ConsoleDb,
    id: &str,
    settings: &SessionSettings,
) -> Result<Option<Session>, DbError> {
    let h = hash(id);
    let now = now_us();
    db.with(|c| {
        let row = c
            .query_row(
                "SELECT s.csrf, s.created_us, s.last_us, u.name, u.role, u.scope
                 FROM sessions s LEFT JOIN users u ON u.name = s.user WHERE s.id_hash = ?",
                [&h],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, Option<String>>(4)?,
                        r.get::<_, Option<String>>(5)?,
                    ))
                },
            )
            .optional()?;
        let Some((csrf, created, last, name, role, scope)) = row else {
            return Ok(None);
        };
        let expired = now.saturating_sub(last) >= us(settings.idle)
            || now.saturating_sub(created) >= us(settings.absolute);
        let user = match (name, role.map(|r| r.parse::<Role>()), scope) {
            (Some(name), Some(Ok(role)), Some(scope)) if !expired => users::parse_scope(&scope)
                .ok()
                .map(|scope| Viewer { name, role, scope }),
            _ => None,
        };
        let Some(viewer) = user else {
            c.execute("DELETE FROM sessions WHERE id_hash = ?", [&h])?;
            return Ok(None);
        };
        // The idle clock moves in steps, not one write per request.
        let step = us(settings.idle / 4).min(5_000_000);
        if now.saturating_sub(last) >= step {
            c.execute(
                "UPDATE sessions SET last_us = ? WHERE id_hash = ?",
                params![now, &h],
            )?;
        }
        Ok(Some(Session {
            id_hash: h,
            viewer,
            csrf,
        }))
    })
}

/// Session ids the request carries in `xtrail_session` cookies.
pub fn cookie_ids(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k.trim() == COOKIE && !v.is_empty() && v.len() <= 128).then(|| v.trim().to_string())
        })
        .collect()
}

/// The `Set-Cookie` value of a new session.
pub fn set_cookie(id: &str, settings: &SessionSettings) -> String {
    format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        settings.absolute.as_secs(),
        if settings.secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear_cookie(settings: &SessionSettings) -> String {
    format!(
        "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if settings.secure { "; Secure" } else { "" }
    )
}

/// A JSON error answer `{"error": msg}`.
pub fn api_error(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(json!({ "error": msg.into() }))).into_response()
}

/// The session of a request's cookie, if it is live.
pub async fn session_of(s: &HttpState, headers: &HeaderMap) -> Result<Option<Session>, Response> {
    let ids = cookie_ids(headers);
    if ids.is_empty() {
        return Ok(None);
    }
    let db = Arc::clone(&s.console.db);
    let settings = s.console.sessions;
    let found = tokio::task::spawn_blocking(move || {
        for id in ids {
            if let Some(sess) = lookup(&db, &id, &settings)? {
                return Ok(Some(sess));
            }
        }
        Ok::<_, DbError>(None)
    })
    .await;
    match found {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(api_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
        Err(e) => Err(api_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    }
}

/// Whether a form post may come from another site: refused when the browser says so
/// (`Sec-Fetch-Site: cross-site`, or an `Origin` whose host is not the `Host`), so that no
/// other site can sign a browser in or out (login CSRF).
fn cross_site(headers: &HeaderMap) -> bool {
    let text = |h| headers.get(h).and_then(|v: &HeaderValue| v.to_str().ok());
    // A browser's own word wins: `Origin: null` is what Chromium sends for a same-origin form
    // under `Referrer-Policy: no-referrer`, with `Sec-Fetch-Site: same-origin`.
    match text("sec-fetch-site") {
        Some("same-origin") => return false,
        Some("cross-site" | "same-site") => return true,
        _ => {}
    }
    match (text("origin"), text("host")) {
        (Some("null"), _) => true,
        (Some(origin), Some(host)) => {
            let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
            !origin_host.eq_ignore_ascii_case(host)
        }
        _ => false,
    }
}

fn state_changing(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Who is asking, for a request: a live cookie session or a subscriber token.
#[derive(Debug, Clone)]
pub enum Resolved {
    /// A signed-in user.
    Session(Session),
    /// A subscriber token.
    Token(Viewer),
}

impl Resolved {
    /// The viewer.
    pub fn viewer(&self) -> &Viewer {
        match self {
            Resolved::Session(s) => &s.viewer,
            Resolved::Token(v) => v,
        }
    }
}

/// Resolves a request's viewer, or the 401/403/429/503 answer.
pub async fn resolve(
    s: &HttpState,
    method: &Method,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
) -> Result<Resolved, Response> {
    if let Some(h) = headers.get(header::AUTHORIZATION) {
        // With no subscriber token configured, the event API is open, but the console
        // is not: only a configured token counts.
        if s.auth.is_open(crate::auth::Role::Subscriber) {
            return Err(api_error(
                StatusCode::UNAUTHORIZED,
                "no subscriber token is configured: sign in",
            ));
        }
        return match s
            .auth
            .check(crate::auth::Role::Subscriber, h.to_str().ok(), peer)
        {
            Ok(_) => Ok(Resolved::Token(Viewer {
                name: TOKEN_VIEWER.into(),
                role: Role::Analyst,
                scope: Scope::all(),
            })),
            Err(st) => Err(api_error(
                if st.code() == tonic::Code::ResourceExhausted {
                    StatusCode::TOO_MANY_REQUESTS
                } else {
                    StatusCode::UNAUTHORIZED
                },
                st.message(),
            )),
        };
    }
    let Some(sess) = session_of(s, headers).await? else {
        return Err(api_error(
            StatusCode::UNAUTHORIZED,
            "sign in (POST /login) or send `authorization: Bearer <subscriber token>`",
        ));
    };
    if state_changing(method) {
        let sent = headers
            .get(CSRF_HEADER)
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        if !same(sent, sess.csrf.as_bytes()) {
            return Err(api_error(
                StatusCode::FORBIDDEN,
                "missing or wrong x-csrf-token (GET /api/session has it)",
            ));
        }
    }
    Ok(Resolved::Session(sess))
}

/// The viewer of a console request: a live session cookie (with the CSRF token on
/// state-changing methods) or a subscriber bearer token. Rejects with 401 JSON
/// `{"error": ...}` (403 on a CSRF mismatch).
#[derive(Debug, Clone)]
pub struct Authed(pub Viewer);

fn peer_of(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<Peer>>()
        .map(|ConnectInfo(Peer(a))| a.ip())
}

impl FromRequestParts<Arc<HttpState>> for Authed {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<HttpState>,
    ) -> Result<Self, Self::Rejection> {
        let peer = peer_of(parts);
        resolve(state, &parts.method, &parts.headers, peer)
            .await
            .map(|r| Authed(r.viewer().clone()))
    }
}

/// Failed logins per source and per name.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    inner: Mutex<ThrottleMaps>,
}

#[derive(Debug, Default)]
struct ThrottleMaps {
    by_source: HashMap<IpAddr, (Instant, u32)>,
    by_name: HashMap<String, (Instant, u32)>,
}

fn bump<K: std::hash::Hash + Eq + Clone>(m: &mut HashMap<K, (Instant, u32)>, k: K) -> u32 {
    if m.len() >= MAX_TRACKED && !m.contains_key(&k) {
        m.retain(|_, (t, _)| t.elapsed() < LOGIN_WINDOW);
        if m.len() >= MAX_TRACKED {
            if let Some(old) = m.keys().next().cloned() {
                m.remove(&old);
            }
        }
    }
    let e = m.entry(k).or_insert((Instant::now(), 0));
    if e.0.elapsed() >= LOGIN_WINDOW {
        *e = (Instant::now(), 0);
    }
    e.1 += 1;
    e.1
}

fn over<K: std::hash::Hash + Eq>(m: &HashMap<K, (Instant, u32)>, k: &K) -> bool {
    m.get(k)
        .is_some_and(|(t, n)| t.elapsed() < LOGIN_WINDOW && *n >= MAX_LOGIN_FAILURES)
}

impl LoginThrottle {
    fn lock(&self) -> std::sync::MutexGuard<'_, ThrottleMaps> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether logins from `source` or for `name` are refused now.
    pub fn refused(&self, source: Option<IpAddr>, name: &str) -> bool {
        let m = self.lock();
        source.is_some_and(|s| over(&m.by_source, &source_key(s)))
            || over(&m.by_name, &name.to_lowercase())
    }

    /// Counts a failure; true when it reaches the limit (for one log line).
    pub fn failed(&self, source: Option<IpAddr>, name: &str) -> bool {
        let mut m = self.lock();
        let by_src = source.map_or(0, |s| bump(&mut m.by_source, source_key(s)));
        let by_name = bump(&mut m.by_name, name.to_lowercase());
        by_src == MAX_LOGIN_FAILURES || by_name == MAX_LOGIN_FAILURES
    }

    /// Forgets a name's failures after a successful login.
    pub fn succeeded(&self, name: &str) {
        self.lock().by_name.remove(&name.to_lowercase());
    }
}

/// The login page (UI's form) with a status; `message` is one of this module's fixed
/// strings.
pub fn login_page(code: StatusCode, message: Option<&str>) -> Response {
    let mut r = super::assets::login_page(message);
    *r.status_mut() = code;
    r
}

/// `GET /`: the console when signed in, the login form otherwise.
pub async fn root(State(s): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    match session_of(&s, &headers).await {
        Ok(Some(_)) => super::assets::console_page(),
        Ok(None) => login_page(StatusCode::OK, None),
        Err(r) => r,
    }
}

/// The login form.
#[derive(Debug, Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

const BAD_LOGIN: &str = "Wrong user name or password.";
const THROTTLED: &str = "Too many failed sign-ins. Try again later.";
const CROSS_SITE: &str = "Sign in from the console's own page.";

fn see_other(location: &'static str, cookie: Option<String>) -> Response {
    let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response();
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `POST /login` (form `username`, `password`): 303 to `/` with a fresh session cookie, or
/// 401 with the login page, or 429 when throttled.
pub async fn login(
    State(s): State<Arc<HttpState>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let source = Some(peer.ip());
    // At most a user name's length goes into logs and the audit log.
    let name: String = form.username.trim().chars().take(64).collect();
    let console = Arc::clone(&s.console);
    if cross_site(&headers) {
        return login_page(StatusCode::FORBIDDEN, Some(CROSS_SITE));
    }
    if console.throttle.refused(source, &name) {
        return login_page(StatusCode::TOO_MANY_REQUESTS, Some(THROTTLED));
    }
    let sent_ids = cookie_ids(&headers);
    let db = Arc::clone(&console.db);
    let (n, pw) = (name.clone(), form.password);
    let settings = console.sessions;
    let outcome = tokio::task::spawn_blocking(move || -> Result<_, String> {
        // Whatever id the client sent is never adopted: it is deleted.
        for id in &sent_ids {
            destroy(&db, &hash(id)).map_err(|e| e.to_string())?;
        }
        let _ = purge(&db, &settings);
        if n.is_empty() || pw.is_empty() {
            return Ok(None);
        }
        let Some(user) = users::authenticate(&db, &n, &pw).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let (id, _csrf) = create(&db, &user.name).map_err(|e| e.to_string())?;
        Ok(Some((user, id)))
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    let db = Arc::clone(&console.db);
    match outcome {
        Ok(Some((user, id))) => {
            console.throttle.succeeded(&name);
            let _ = audit::append(&db, &user.name, source, "login", "");
            see_other("/", Some(set_cookie(&id, &console.sessions)))
        }
        Ok(None) => {
            if console.throttle.failed(source, &name) {
                log::warn!(
                    "{MAX_LOGIN_FAILURES} failed console logins from {peer} or for {name:?} within {LOGIN_WINDOW:?}: refusing them until the window ends"
                );
                let _ = audit::append(&db, &name, source, "login_throttled", "");
            }
            let _ = audit::append(&db, &name, source, "login_failed", "");
            login_page(StatusCode::UNAUTHORIZED, Some(BAD_LOGIN))
        }
        Err(e) => {
            log::error!("console login: {e}");
            login_page(
                StatusCode::SERVICE_UNAVAILABLE,
                Some("The console cannot sign anyone in right now."),
            )
        }
    }
}

/// `POST /logout`: CSRF-checked (header `x-csrf-token` or form field `csrf`); ends the
/// session; 303 to `/`.
pub async fn logout(
    State(s): State<Arc<HttpState>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let settings = s.console.sessions;
    if cross_site(&headers) {
        return api_error(StatusCode::FORBIDDEN, "cross-site logout refused");
    }
    let sess = match session_of(&s, &headers).await {
        Ok(Some(sess)) => sess,
        Ok(None) => return see_other("/", Some(clear_cookie(&settings))),
        Err(r) => return r,
    };
    let form_token = serde_urlencoded_form(&body);
    let sent = headers
        .get(CSRF_HEADER)
        .map(|v| v.as_bytes().to_vec())
        .or(form_token.map(String::into_bytes))
        .unwrap_or_default();
    if !same(&sent, sess.csrf.as_bytes()) {
        return api_error(StatusCode::FORBIDDEN, "missing or wrong CSRF token");
    }
    let db = Arc::clone(&s.console.db);
    let name = sess.viewer.name.clone();
    let done = tokio::task::spawn_blocking(move || {
        destroy(&db, &sess.id_hash)?;
        audit::append(&db, &name, Some(peer.ip()), "logout", "")
    })
    .await;
    if let Ok(Err(e)) = done {
        log::error!("console logout: {e}");
    }
    see_other("/", Some(clear_cookie(&settings)))
}

/// The `csrf` field of a URL-encoded form (the token is hex: no decoding needed).
fn serde_urlencoded_form(body: &[u8]) -> Option<String> {
    std::str::from_utf8(body)
        .ok()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "csrf")
        .map(|(_, v)| v.to_string())
        .filter(|c| !c.is_empty())
}

/// `GET /api/session`: who is signed in, and the CSRF token for state-changing calls.
pub async fn api_session(
    State(s): State<Arc<HttpState>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let r = match resolve(&s, &method, &headers, Some(peer.ip())).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let csrf = match &r {
        Resolved::Session(sess) => Some(sess.csrf.clone()),
        Resolved::Token(_) => None,
    };
    let v = r.viewer();
    let mut resp = Json(json!({
        "user": v.name,
        "role": v.role.as_str(),
        "scope": v.scope.to_string(),
        "csrf": csrf,
    }))
    .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_follow_users() {
        let dir = tempfile::tempdir().unwrap();
        let db = ConsoleDb::open(dir.path()).unwrap();
        users::add(&db, "ana", "pw", Role::Viewer, &Scope::all()).unwrap();
        let settings = SessionSettings::default();
        let (id, csrf) = create(&db, "ana").unwrap();
        assert_eq!(id.len(), 64);
        let s = lookup(&db, &id, &settings).unwrap().unwrap();
        assert_eq!(s.viewer.name, "ana");
        assert_eq!(s.csrf, csrf);
        assert!(lookup(&db, "nope", &settings).unwrap().is_none());
        let short = SessionSettings {
            idle: Duration::from_millis(1),
            ..settings
        };
        std::thread::sleep(Duration::from_millis(5));
        assert!(lookup(&db, &id, &short).unwrap().is_none());
        // Deleted as it expired.
        assert!(lookup(&db, &id, &settings).unwrap().is_none());
        let (id, _) = create(&db, "ana").unwrap();
        users::passwd(&db, "ana", "pw2").unwrap();
        assert!(lookup(&db, &id, &settings).unwrap().is_none());
    }

    #[test]
    fn cookies_are_parsed_and_flagged() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            "a=1; xtrail_session=abc; b=2".parse().unwrap(),
        );
        h.append(header::COOKIE, "xtrail_session=def".parse().unwrap());
        assert_eq!(cookie_ids(&h), ["abc", "def"]);
        let c = set_cookie(
            "x",
            &SessionSettings {
                secure: true,
                ..SessionSettings::default()
            },
        );
        for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Secure"] {
            assert!(c.contains(flag), "{c}");
        }
    }

    #[test]
    fn cross_site_posts_are_recognised() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, HeaderValue::from_static(v));
            }
            m
        };
        assert!(!cross_site(&h(&[("host", "c:8338")])));
        assert!(!cross_site(&h(&[
            ("host", "c:8338"),
            ("origin", "https://c:8338")
        ])));
        assert!(cross_site(&h(&[
            ("host", "c:8338"),
            ("origin", "https://evil.example")
        ])));
        assert!(cross_site(&h(&[("host", "c:8338"), ("origin", "null")])));
        assert!(cross_site(&h(&[("sec-fetch-site", "cross-site")])));
        assert!(!cross_site(&h(&[
            ("host", "c:8338"),
            ("origin", "null"),
            ("sec-fetch-site", "same-origin")
        ])));
    }

    #[test]
    fn throttle_per_source_and_name() {
        let t = LoginThrottle::default();
        let a: IpAddr = "198.18.0.1".parse().unwrap();
        let b: IpAddr = "198.18.0.2".parse().unwrap();
        for i in 0..MAX_LOGIN_FAILURES {
            assert!(!t.refused(Some(a), &format!("u{i}")));
            t.failed(Some(a), &format!("u{i}"));
        }
        assert!(t.refused(Some(a), "other"));
        assert!(!t.refused(Some(b), "other"));
        for _ in 0..MAX_LOGIN_FAILURES {
            t.failed(None, "victim");
        }
        assert!(t.refused(Some(b), "Victim"));
    }
}
