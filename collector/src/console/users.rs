//! Console users: a name, an argon2id password hash (PHC string), a role and a network
//! scope, in `console.db`. Managed with `xtrail-collector user add|passwd|del|list`; a
//! deleted user or a changed password ends that user's sessions at once (sessions are read
//! from the same file on every request).

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::Argon2;
use rusqlite::{params, OptionalExtension as _};
use thiserror::Error;

use super::db::{ConsoleDb, DbError};
use crate::access::{Role, Scope, Viewer};

/// A user-management failure.
#[derive(Debug, Error)]
pub enum UserError {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The name is not acceptable.
    #[error("user name {0:?}: use 1 to 64 of A-Z a-z 0-9 . _ @ -")]
    BadName(String),
    /// `add` of an existing name.
    #[error("user {0:?} already exists")]
    Exists(String),
    /// No such user.
    #[error("no user {0:?}")]
    Unknown(String),
    /// An empty password.
    #[error("the password is empty")]
    EmptyPassword,
    /// The stored scope or role could not be read.
    #[error("user {0:?}: stored {1}")]
    Corrupt(String, String),
    /// Hashing failed.
    #[error("password hash: {0}")]
    Hash(String),
    /// No random bytes.
    #[error("reading random bytes: {0}")]
    Random(#[from] std::io::Error),
}

impl From<rusqlite::Error> for UserError {
    fn from(e: rusqlite::Error) -> Self {
        UserError::Db(DbError::Sqlite(e))
    }
}

/// A user as listed (never the hash).
#[derive(Debug, Clone)]
pub struct User {
    /// The name.
    pub name: String,
    /// The role.
    pub role: Role,
    /// What the user may see.
    pub scope: Scope,
    /// When added (µs since the epoch).
    pub created_us: i64,
    /// When the password, role or scope last changed.
    pub changed_us: i64,
}

impl User {
    /// The viewer behind this user's requests.
    pub fn viewer(&self) -> Viewer {
        Viewer {
            name: self.name.clone(),
            role: self.role,
            scope: self.scope.clone(),
        }
    }
}

/// Whether `name` is an acceptable user name.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
}

/// Hashes a password with argon2id (default parameters: 19 MiB, 2 passes) and a random
/// salt, as a PHC string.
pub fn hash_password(password: &str) -> Result<String, UserError> {
    if password.is_empty() {
        return Err(UserError::EmptyPassword);
    }
    let salt = SaltString::encode_b64(&super::random_bytes::<16>()?)
        .map_err(|e| UserError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UserError::Hash(e.to_string()))
}

/// Whether `password` matches the PHC string `phc`.
pub fn verify_password(phc: &str, password: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// A hash of a random password, verified against for unknown user names so that a login
/// takes about as long whether the user exists or not.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let pw = super::random_bytes::<16>()
            .map(|b| super::hex(&b))
            .unwrap_or_else(|_| "dummy-password-never-matches".into());
        hash_password(&pw).unwrap_or_default()
    })
}

/// A scope as stored: its networks, empty for all.
fn scope_text(scope: &Scope) -> String {
    if scope.is_all() {
        String::new()
    } else {
        scope.to_string()
    }
}

/// Reads a stored scope (also `all`).
pub fn parse_scope(s: &str) -> Result<Scope, String> {
    if s.trim() == "all" {
        return Ok(Scope::all());
    }
    Scope::parse(s)
}

/// Computes the dummy hash ahead of the first login for an unknown name (which would
/// otherwise take one hash longer than the others).
pub fn prepare() {
    let _ = dummy_hash();
}

fn row_to_user(r: &rusqlite::Row<'_>) -> rusqlite::Result<(User, String, String)> {
    let role: String = r.get(1)?;
    let scope: String = r.get(2)?;
    Ok((
        User {
            name: r.get(0)?,
            role: Role::Viewer,
            scope: Scope::all(),
            created_us: r.get(3)?,
            changed_us: r.get(4)?,
        },
        role,
        scope,
    ))
}

fn finish(row: (User, String, String)) -> Result<User, UserError> {
    let (mut u, role, scope) = row;
    u.role = role
        .parse()
        .map_err(|e: String| UserError::Corrupt(u.name.clone(), e))?;
    u.scope = parse_scope(&scope).map_err(|e| UserError::Corrupt(u.name.clone(), e))?;
    Ok(u)
}

/// Adds a user.
pub fn add(
    db: &ConsoleDb,
    name: &str,
    password: &str,
    role: Role,
    scope: &Scope,
) -> Result<(), UserError> {
    if !valid_name(name) {
        return Err(UserError::BadName(name.to_string()));
    }
    let phc = hash_password(password)?;
    let now = super::now_us();
    db.with(|c| {
        let n = c.execute(
            "INSERT OR IGNORE INTO users (name, phc, role, scope, created_us, changed_us)
             VALUES (?, ?, ?, ?, ?, ?)",
            params![name, phc, role.as_str(), scope_text(scope), now, now],
        )?;
        if n == 0 {
            return Err(UserError::Exists(name.to_string()));
        }
        Ok(())
    })
}

/// Sets a user's password; ends the user's sessions.
pub fn passwd(db: &ConsoleDb, name: &str, password: &str) -> Result<(), UserError> {
    let phc = hash_password(password)?;
    db.with(|c| {
        let tx = c.transaction()?;
        let n = tx.execute(
            "UPDATE users SET phc = ?, changed_us = ? WHERE name = ?",
            params![phc, super::now_us(), name],
        )?;
        if n == 0 {
            return Err(UserError::Unknown(name.to_string()));
        }
        tx.execute("DELETE FROM sessions WHERE user = ?", [name])?;
        tx.commit()?;
        Ok(())
    })
}

/// Deletes a user; ends the user's sessions.
pub fn delete(db: &ConsoleDb, name: &str) -> Result<(), UserError> {
    db.with(|c| {
        let tx = c.transaction()?;
        let n = tx.execute("DELETE FROM users WHERE name = ?", [name])?;
        if n == 0 {
            return Err(UserError::Unknown(name.to_string()));
        }
        tx.execute("DELETE FROM sessions WHERE user = ?", [name])?;
        tx.commit()?;
        Ok(())
    })
}

/// Every user, by name.
pub fn list(db: &ConsoleDb) -> Result<Vec<User>, UserError> {
    let rows = db.with(|c| -> Result<Vec<_>, UserError> {
        let mut stmt =
            c.prepare("SELECT name, role, scope, created_us, changed_us FROM users ORDER BY name")?;
        let rows = stmt.query_map([], row_to_user)?;
        Ok(rows.collect::<Result<_, _>>()?)
    })?;
    rows.into_iter().map(finish).collect()
}

/// One user, if it exists.
pub fn get(db: &ConsoleDb, name: &str) -> Result<Option<User>, UserError> {
    let row = db.with(|c| -> Result<_, UserError> {
        Ok(c.query_row(
            "SELECT name, role, scope, created_us, changed_us FROM users WHERE name = ?",
            [name],
            row_to_user,
        )
        .optional()?)
    })?;
    row.map(finish).transpose()
}

/// Checks a name and password. Unknown names are verified against a dummy hash, so the
/// answer takes about as long either way; `Ok(None)` says only "not these credentials".
/// Slow by design (argon2id): call it off the async runtime.
pub fn authenticate(db: &ConsoleDb, name: &str, password: &str) -> Result<Option<User>, UserError> {
    let row = db.with(|c| -> Result<_, UserError> {
        Ok(
            c.query_row("SELECT phc FROM users WHERE name = ?", [name], |r| {
                r.get::<_, String>(0)
            })
            .optional()?,
        )
    })?;
    match row {
        Some(phc) => {
            if !verify_password(&phc, password) {
                return Ok(None);
            }
            get(db, name)
        }
        None => {
            let _ = verify_password(dummy_hash(), password);
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_add_verify_change_delete() {
        let dir = tempfile::tempdir().unwrap();
        let db = ConsoleDb::open(dir.path()).unwrap();
        let scope = Scope::parse("198.18.0.0/24,2001:db8::/32").unwrap();
        add(&db, "ana", "pw one", Role::Analyst, &scope).unwrap();
        assert!(matches!(
            add(&db, "ana", "x", Role::Viewer, &Scope::all()),
            Err(UserError::Exists(_))
        ));
        assert!(matches!(
            add(&db, "bad name", "x", Role::Viewer, &Scope::all()),
            Err(UserError::BadName(_))
        ));
        assert!(matches!(
            add(&db, "empty", "", Role::Viewer, &Scope::all()),
            Err(UserError::EmptyPassword)
        ));
        let u = authenticate(&db, "ana", "pw one").unwrap().unwrap();
        assert_eq!(u.role, Role::Analyst);
        assert_eq!(u.scope, scope);
        assert!(authenticate(&db, "ana", "pw two").unwrap().is_none());
        assert!(authenticate(&db, "nobody", "pw one").unwrap().is_none());
        passwd(&db, "ana", "pw two").unwrap();
        assert!(authenticate(&db, "ana", "pw one").unwrap().is_none());
        assert!(authenticate(&db, "ana", "pw two").unwrap().is_some());
        assert_eq!(list(&db).unwrap().len(), 1);
        delete(&db, "ana").unwrap();
        assert!(matches!(delete(&db, "ana"), Err(UserError::Unknown(_))));
        assert!(list(&db).unwrap().is_empty());
        // The stored hash is argon2id.
        assert!(hash_password("x").unwrap().starts_with("$argon2id$"));
    }
}
