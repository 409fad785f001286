//! The analyst console, served on the HTTP port.
//!
//! - [`users`]: local users in `DATA_DIR/console.db` (argon2id hashes, roles, scopes) and the
//!   `xtrail-collector user` command;
//! - [`session`]: sign-in, sessions, CSRF, login throttling, and [`session::Authed`], the
//!   extractor every console handler takes;
//! - [`audit`]: the append-only audit log;
//! - [`sensors`]: sensor heartbeats and `GET /api/sensors`; [`tls`]: HTTPS on the HTTP
//!   port; [`db`]: `console.db`;
//! - [`threats`]: events grouped into threats by a follower of the store (`threats.db`);
//!   [`search`]: the query language; [`triage`]: shared triage and suppressions; [`api`]:
//!   the threat routes (`/api/threats...`, stats, exports, IOCs, `/api/live`); [`suppress`]:
//!   the suppression list sensors receive with their heartbeats; [`rows`]: export rows.
//!
//! Console state lives in one SQLite file, `console.db`, in the data directory (also when
//! events are in PostgreSQL), opened in WAL mode so the `user` command and the server can
//! use it at once.

pub mod api;
pub mod assets;
pub mod audit;
pub mod db;
pub mod follow;
pub mod rows;
pub mod search;
pub mod sensors;
pub mod session;
pub mod suppress;
pub mod threats;
pub mod tls;
pub mod triage;
pub mod users;

use axum::http::{header, HeaderValue};
use axum::response::Response;

/// The Content-Security-Policy of every console response.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Adds the console's security headers (CSP, nosniff, no referrer, no framing) to a
/// response; applied to every response of the HTTP port.
pub async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

/// `n` random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut raw = [0u8; N];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut raw)?;
    Ok(raw)
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub use crate::now_us;

use std::path::Path;
use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;

use crate::http::HttpState;

/// The console's shared state (a field of [`HttpState`]).
#[derive(Debug)]
pub struct Console {
    /// `console.db`.
    pub db: Arc<db::ConsoleDb>,
    /// Session lifetimes and cookie flags.
    pub sessions: session::SessionSettings,
    /// Failed-login counters.
    pub throttle: session::LoginThrottle,
}

impl Console {
    /// The console of the data directory `dir` (its database opens at first use); also
    /// the audit log [`audit::record`] writes to.
    pub fn new(dir: &Path, sessions: session::SessionSettings) -> Arc<Self> {
        let db = db::ConsoleDb::new(dir);
        db::set_current(&db);
        let _ = std::thread::Builder::new()
            .name("console-prepare".into())
            .spawn(users::prepare);
        Arc::new(Console {
            db,
            sessions,
            throttle: session::LoginThrottle::default(),
        })
    }
}

/// AUTH's console routes: `/`, `/login`, `/logout`, `/api/session`, `/api/audit`,
/// `/api/sensors`.
pub fn router() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/", get(session::root))
        .route("/login", post(session::login))
        .route("/logout", post(session::logout))
        .route("/api/session", get(session::api_session))
        .route("/api/audit", get(audit::api_audit))
        .route("/api/sensors", get(sensors::api_sensors))
}
