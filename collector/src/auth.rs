//! Who may call, and as whom.
//!
//! - **Per-sensor credentials** (`xtrail-collector sensor add NAME`): a random token whose
//!   SHA-256 is kept in `credentials.db` in the data directory; its holder publishes only as
//!   sensor NAME, and `sensor revoke NAME` ends it (open streams included, within seconds).
//! - **Shared sensor tokens** (`--sensor-token`, for labs): any holder may publish under any
//!   name. The collector warns at start.
//! - **Subscriber tokens** (`--subscriber-token`): subscribe and query (gRPC Events, HTTP API).
//!
//! Every refused token gets the same answer (`UNAUTHENTICATED`, "unknown, revoked or
//! wrong-role token"), so a refusal never confirms that a string is a token of another role.
//! Failures are limited per source address (an IPv6 source by its /64): past
//! [`MAX_FAILURES`] in [`FAILURE_WINDOW`], every attempt from it is refused
//! (`RESOURCE_EXHAUSTED`) until the window ends. Tokens are compared in constant time.
//! A role with no token configured (and, for sensors, no credential) is open.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension as _};
use sha2::{Digest as _, Sha256};
use thiserror::Error;
use tonic::Status;

use crate::metrics::{inc, Metrics};

/// Failed authentications a source may make per window before it is refused outright.
pub const MAX_FAILURES: u32 = 20;
/// The failure-counting window.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Sources tracked at most (the oldest windows are forgotten first).
const MAX_TRACKED: usize = 65_536;
/// How often the credential cache is reread (revocations take effect within this).
const REFRESH: Duration = Duration::from_secs(2);
/// The answer to every refused token.
const REFUSED: &str = "unknown, revoked or wrong-role token";

/// Who may call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Publishes events.
    Sensor,
    /// Subscribes to and queries events.
    Subscriber,
}

/// Who a caller was authenticated as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// A shared sensor token, or an open sensor role: may publish under any name.
    AnySensor,
    /// A per-sensor credential: may publish only as this sensor name.
    Sensor(String),
    /// A subscriber token, or an open subscriber role.
    Subscriber,
}

/// A credential store failure.
#[derive(Debug, Error)]
pub enum CredentialError {
    /// The database failed.
    #[error("credential store: {0}")]
    Db(#[from] rusqlite::Error),
    /// The name is not acceptable.
    #[error("sensor name {0:?}: use 1 to 64 of A-Z a-z 0-9 . _ -")]
    BadName(String),
    /// The name exists already.
    #[error("sensor {0:?} already has a credential (revoke it first)")]
    Exists(String),
    /// No such active credential.
    #[error("no active credential for sensor {0:?}")]
    Unknown(String),
    /// No randomness.
    #[error("reading /dev/urandom: {0}")]
    Random(std::io::Error),
    /// The data directory.
    #[error("data directory {0}: {1}")]
    Dir(PathBuf, std::io::Error),
}

/// One credential as listed.
#[derive(Clone, Debug)]
pub struct CredentialInfo {
    /// Sensor name.
    pub name: String,
    /// Created, microseconds since the epoch.
    pub created_us: i64,
    /// Revoked, if it was.
    pub revoked_us: Option<i64>,
}

/// The per-sensor credentials in `credentials.db`.
#[derive(Debug)]
pub struct CredentialStore {
    conn: Mutex<Connection>,
}

pub(crate) fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Whether a sensor name is acceptable for a credential.
pub fn valid_sensor_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl CredentialStore {
    /// Opens (creating) `credentials.db` in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, CredentialError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| CredentialError::Dir(data_dir.to_path_buf(), e))?;
        let conn = Connection::open(data_dir.join("credentials.db"))?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS sensor_credentials (
                name       TEXT    NOT NULL,
                token_hash BLOB    NOT NULL UNIQUE,
                created_us INTEGER NOT NULL,
                revoked_us INTEGER
             );
             CREATE UNIQUE INDEX IF NOT EXISTS sensor_credentials_active
                 ON sensor_credentials (name) WHERE revoked_us IS NULL;",
        )?;
        Ok(CredentialStore {
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates a credential for `name` and returns its token (shown once, stored hashed).
    pub fn add(&self, name: &str) -> Result<String, CredentialError> {
        if !valid_sensor_name(name) {
            return Err(CredentialError::BadName(name.to_string()));
        }
        let mut raw = [0u8; 32];
        std::io::Read::read_exact(
            &mut std::fs::File::open("/dev/urandom").map_err(CredentialError::Random)?,
            &mut raw,
        )
        .map_err(CredentialError::Random)?;
        let token = format!(
            "xts_{}",
            raw.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let conn = self.lock();
        let exists: Option<i64> = conn
            .query_row(
                "SELECT 1 FROM sensor_credentials WHERE name = ? AND revoked_us IS NULL",
                [name],
                |r| r.get(0),
            )
            .optional()?;
        if exists.is_some() {
            return Err(CredentialError::Exists(name.to_string()));
        }
        conn.execute(
            "INSERT INTO sensor_credentials (name, token_hash, created_us) VALUES (?, ?, ?)",
            params![name, hash(&token), crate::now_us()],
        )?;
        Ok(token)
    }

    /// Revokes the active credential of `name`.
    pub fn revoke(&self, name: &str) -> Result<(), CredentialError> {
        let n = self.lock().execute(
            "UPDATE sensor_credentials SET revoked_us = ? WHERE name = ? AND revoked_us IS NULL",
            params![crate::now_us(), name],
        )?;
        if n == 0 {
            return Err(CredentialError::Unknown(name.to_string()));
        }
        Ok(())
    }

    /// Every credential, active and revoked.
    pub fn list(&self) -> Result<Vec<CredentialInfo>, CredentialError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT name, created_us, revoked_us FROM sensor_credentials ORDER BY name, created_us",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(CredentialInfo {
                name: r.get(0)?,
                created_us: r.get(1)?,
                revoked_us: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Active credentials: token hash to sensor name.
    fn active(&self) -> Result<HashMap<Vec<u8>, String>, CredentialError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare("SELECT token_hash, name FROM sensor_credentials WHERE revoked_us IS NULL")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// Compares without an early exit on the first differing byte.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Debug, Default)]
struct Cache {
    store: Option<Arc<CredentialStore>>,
    by_hash: HashMap<Vec<u8>, String>,
    loaded: Option<Instant>,
    /// The store could not be read: the sensor role fails closed.
    unreadable: bool,
}

#[derive(Debug, Default)]
struct Failures {
    by_source: HashMap<IpAddr, (Instant, u32)>,
}

/// The source key for per-source limits: IPv4 as is (also IPv4-mapped), IPv6 by its /64.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut o = v6.octets();
                o[8..].fill(0);
                IpAddr::from(o)
            }
        },
        v4 => v4,
    }
}

/// The authenticator shared by gRPC and HTTP.
#[derive(Clone, Debug)]
pub struct Auth {
    sensor: Arc<Vec<String>>,
    subscriber: Arc<Vec<String>>,
    credentials_dir: Option<PathBuf>,
    cache: Arc<Mutex<Cache>>,
    failures: Arc<Mutex<Failures>>,
    metrics: Arc<Metrics>,
}

impl Auth {
    /// Shared tokens for each role, and the directory of the per-sensor credential store
    /// (opened when it can be: a full disk does not keep the collector from starting).
    pub fn new(
        sensor: Vec<String>,
        subscriber: Vec<String>,
        credentials_dir: Option<PathBuf>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Auth {
            sensor: Arc::new(sensor),
            subscriber: Arc::new(subscriber),
            credentials_dir,
            cache: Arc::default(),
            failures: Arc::default(),
            metrics,
        }
    }

    /// Rereads the credentials when the cache is older than `max_age`.
    fn credentials(&self, max_age: Duration) -> MutexGuard<'_, Cache> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let stale = cache.loaded.is_none_or(|t| t.elapsed() >= max_age);
        let Some(dir) = self.credentials_dir.as_deref().filter(|_| stale) else {
            return cache;
        };
        cache.loaded = Some(Instant::now());
        if cache.store.is_none() {
            match CredentialStore::open(dir) {
                Ok(s) => cache.store = Some(Arc::new(s)),
                Err(e) => {
                    if !cache.unreadable {
                        log::error!("sensor credentials unavailable, refusing them until they can be read: {e}");
                    }
                    cache.unreadable = true;
                    return cache;
                }
            }
        }
        let read = cache.store.as_ref().map(|s| s.active());
        match read {
            Some(Ok(map)) => {
                cache.by_hash = map;
                cache.unreadable = false;
            }
            Some(Err(e)) => {
                if !cache.unreadable {
                    log::error!("reading sensor credentials: {e}");
                }
                cache.unreadable = true;
            }
            None => {}
        }
        cache
    }

    /// Whether a role accepts callers without a token.
    pub fn is_open(&self, role: Role) -> bool {
        match role {
            Role::Sensor => self.sensor.is_empty() && self.credentials(REFRESH).by_hash.is_empty(),
            Role::Subscriber => self.subscriber.is_empty(),
        }
    }

    /// Whether shared sensor tokens are configured.
    pub fn has_shared_sensor_tokens(&self) -> bool {
        !self.sensor.is_empty()
    }

    /// Whether a per-sensor principal is still valid (not revoked).
    pub fn still_valid(&self, p: &Principal) -> bool {
        match p {
            Principal::Sensor(name) => self
                .credentials(REFRESH)
                .by_hash
                .values()
                .any(|n| n == name),
            _ => true,
        }
    }

    fn throttled(&self, source: Option<IpAddr>) -> bool {
        let Some(src) = source.map(source_key) else {
            return false;
        };
        let f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        f.by_source
            .get(&src)
            .is_some_and(|(start, n)| start.elapsed() < FAILURE_WINDOW && *n >= MAX_FAILURES)
    }

    fn record_failure(&self, source: Option<IpAddr>) {
        inc(&self.metrics.auth_failures);
        let Some(src) = source.map(source_key) else {
            return;
        };
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if f.by_source.len() >= MAX_TRACKED && !f.by_source.contains_key(&src) {
            f.by_source
                .retain(|_, (start, _)| start.elapsed() < FAILURE_WINDOW);
            if f.by_source.len() >= MAX_TRACKED {
                // Still full of live windows: forget one, bounded memory first.
                if let Some(k) = f.by_source.keys().next().copied() {
                    f.by_source.remove(&k);
                }
            }
        }
        let e = f.by_source.entry(src).or_insert((Instant::now(), 0));
        if e.0.elapsed() >= FAILURE_WINDOW {
            *e = (Instant::now(), 0);
        }
        e.1 += 1;
        if e.1 == MAX_FAILURES {
            log::warn!(
                "{MAX_FAILURES} failed authentications from {src} within {FAILURE_WINDOW:?}: refusing it until the window ends"
            );
        }
    }

    /// Checks an `authorization` header value for a role, from `source`.
    pub fn check(
        &self,
        role: Role,
        header: Option<&str>,
        source: Option<IpAddr>,
    ) -> Result<Principal, Status> {
        if self.throttled(source) {
            inc(&self.metrics.auth_throttled);
            return Err(Status::resource_exhausted(format!(
                "too many failed authentications from this address; retry after {}s",
                FAILURE_WINDOW.as_secs()
            )));
        }
        let open = self.is_open(role);
        let token = header
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim);
        let result = match (token, open) {
            (None, true) => Ok(match role {
                Role::Sensor => Principal::AnySensor,
                Role::Subscriber => Principal::Subscriber,
            }),
            (None, false) => Err(Status::unauthenticated(if header.is_none() {
                "missing `authorization: Bearer <token>` metadata"
            } else {
                "authorization metadata must be `Bearer <token>`"
            })),
            (Some(token), _) => self.lookup(role, token, open),
        };
        if result.is_err() {
            self.record_failure(source);
        }
        result
    }

    fn lookup(&self, role: Role, token: &str, open: bool) -> Result<Principal, Status> {
        let t = token.as_bytes();
        match role {
            Role::Subscriber => {
                if open || self.subscriber.iter().any(|s| same(s.as_bytes(), t)) {
                    return Ok(Principal::Subscriber);
                }
            }
            Role::Sensor => {
                if self.sensor.iter().any(|s| same(s.as_bytes(), t)) {
                    return Ok(Principal::AnySensor);
                }
                let h = hash(token);
                // Keyed by the token's SHA-256: a lookup, no constant-time scan needed.
                let found = |c: &Cache| c.by_hash.get(&h).map(|n| Principal::Sensor(n.clone()));
                // A token just added with `sensor add` is found after one reread.
                if let Some(p) = found(&self.credentials(REFRESH)) {
                    return Ok(p);
                }
                if let Some(p) = found(&self.credentials(Duration::ZERO)) {
                    return Ok(p);
                }
                if open {
                    return Ok(Principal::AnySensor);
                }
            }
        }
        Err(Status::unauthenticated(REFUSED))
    }

    /// A tonic interceptor for a role; the principal goes into the request's extensions.
    pub fn interceptor(
        &self,
        role: Role,
    ) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, Status> + Clone {
        let auth = self.clone();
        move |mut req: tonic::Request<()>| {
            let header = req
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            let source = req.remote_addr().map(|a| a.ip());
            let principal = auth.check(role, header, source)?;
            req.extensions_mut().insert(principal);
            Ok(req)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn auth(dir: Option<&Path>) -> Auth {
        Auth::new(
            vec!["s1".into()],
            vec!["u1".into()],
            dir.map(Path::to_path_buf),
            Arc::new(Metrics::default()),
        )
    }

    #[test]
    fn roles_are_separate_and_refusals_alike() {
        let t = auth(None);
        assert_eq!(
            t.check(Role::Sensor, Some("Bearer s1"), None).unwrap(),
            Principal::AnySensor
        );
        assert!(t.check(Role::Subscriber, Some("Bearer u1"), None).is_ok());
        assert_eq!(
            t.check(Role::Sensor, None, None).unwrap_err().code(),
            Code::Unauthenticated
        );
        let wrong_role = t.check(Role::Sensor, Some("Bearer u1"), None).unwrap_err();
        let unknown = t
            .check(Role::Sensor, Some("Bearer nope"), None)
            .unwrap_err();
        assert_eq!(wrong_role.code(), Code::Unauthenticated);
        assert_eq!(wrong_role.message(), unknown.message());
        assert!(Auth::new(vec![], vec![], None, Arc::default())
            .check(Role::Sensor, None, None)
            .is_ok());
    }

    #[test]
    fn credentials_bind_a_name_and_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let store = CredentialStore::open(dir.path()).unwrap();
        let token = store.add("gw-1").unwrap();
        assert!(matches!(store.add("gw-1"), Err(CredentialError::Exists(_))));
        assert!(store.add("bad name").is_err());
        let t = auth(Some(dir.path()));
        let p = t
            .check(Role::Sensor, Some(&format!("Bearer {token}")), None)
            .unwrap();
        assert_eq!(p, Principal::Sensor("gw-1".into()));
        assert!(t.still_valid(&p));
        store.revoke("gw-1").unwrap();
        std::thread::sleep(REFRESH);
        assert!(!t.still_valid(&p));
        assert!(t
            .check(Role::Sensor, Some(&format!("Bearer {token}")), None)
            .is_err());
    }

    #[test]
    fn failures_are_throttled_per_source() {
        let t = auth(None);
        let a: IpAddr = "198.18.0.9".parse().unwrap();
        let b: IpAddr = "198.18.0.10".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            assert_eq!(
                t.check(Role::Sensor, Some("Bearer x"), Some(a))
                    .unwrap_err()
                    .code(),
                Code::Unauthenticated
            );
        }
        // Even the right token is refused from a throttled source; others are unaffected.
        assert_eq!(
            t.check(Role::Sensor, Some("Bearer s1"), Some(a))
                .unwrap_err()
                .code(),
            Code::ResourceExhausted
        );
        assert!(t.check(Role::Sensor, Some("Bearer s1"), Some(b)).is_ok());
    }
}
