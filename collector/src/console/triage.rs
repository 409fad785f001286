//! Triage shared by the team: status, assignee, tags and notes per threat, a history of
//! every change, and the suppression list ("false positive" → suppress the trail or the
//! source). Stored in `threats.db` next to the aggregates; every change is also written to
//! the audit log (`console::audit::record`) by the API handler.

use rusqlite::{params, Connection, OptionalExtension as _};
use serde::Deserialize;
use serde_json::{json, Value};
use xtrail_detect::event::format_rfc3339;

use super::threats::Triage;

/// The statuses a threat can have.
pub const STATUSES: [&str; 4] = ["new", "investigating", "resolved", "false_positive"];
/// Most tags per threat.
const MAX_TAGS: usize = 32;
/// Longest tag, assignee (bytes).
const MAX_NAME: usize = 64;
/// Longest note (bytes).
const MAX_NOTE: usize = 4000;
/// Most ids in one bulk change.
pub const MAX_BULK: usize = 1000;

/// A triage change as posted (every field optional).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    /// Bulk only: the threats.
    #[serde(default)]
    pub ids: Vec<String>,
    /// New status.
    pub status: Option<String>,
    /// New assignee (empty to clear).
    pub assignee: Option<String>,
    /// Replaces the tags.
    pub tags: Option<Vec<String>>,
    /// Adds tags.
    #[serde(default)]
    pub add_tags: Vec<String>,
    /// A note to append.
    pub note: Option<String>,
    /// With `false_positive`: `trail` or `source`, added to the suppression list.
    pub suppress: Option<String>,
}

impl Change {
    /// Checks sizes and values; the message says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        if let Some(s) = &self.status {
            if !STATUSES.contains(&s.as_str()) {
                return Err(format!(
                    "status {s:?}: use new, investigating, resolved or false_positive"
                ));
            }
        }
        if let Some(a) = &self.assignee {
            if a.len() > MAX_NAME || a.chars().any(char::is_control) {
                return Err(format!(
                    "assignee: at most {MAX_NAME} bytes, no control characters"
                ));
            }
        }
        let tags = self.tags.iter().flatten().chain(&self.add_tags);
        for t in tags {
            if t.trim().is_empty() || t.len() > MAX_NAME || t.chars().any(char::is_control) {
                return Err(format!(
                    "tag {t:?}: 1-{MAX_NAME} bytes, no control characters"
                ));
            }
        }
        if self.tags.as_ref().map_or(0, Vec::len) + self.add_tags.len() > MAX_TAGS {
            return Err(format!("at most {MAX_TAGS} tags"));
        }
        if let Some(n) = &self.note {
            if n.trim().is_empty() || n.len() > MAX_NOTE {
                return Err(format!("note: 1-{MAX_NOTE} bytes"));
            }
        }
        match self.suppress.as_deref() {
            None => {}
            Some("trail" | "source") if self.status.as_deref() != Some("false_positive") => {
                return Err("suppress needs status false_positive".into());
            }
            Some("trail" | "source") => {}
            Some(o) => return Err(format!("suppress {o:?}: use trail or source")),
        }
        if self.status.is_none()
            && self.assignee.is_none()
            && self.tags.is_none()
            && self.add_tags.is_empty()
            && self.note.is_none()
        {
            return Err("nothing to change (status, assignee, tags, add_tags, note)".into());
        }
        Ok(())
    }
}

/// Applies `change` to threat `id` (current state `old`) by `user` at `now_us`; returns
/// the new state and the human-readable list of what changed (for history and audit).
pub fn apply(
    c: &mut Connection,
    id: &str,
    old: &Triage,
    change: &Change,
    user: &str,
    now_us: i64,
    suppress_value: Option<&str>,
) -> rusqlite::Result<(Triage, Vec<String>)> {
    let mut new = old.clone();
    let mut what = Vec::new();
    if let Some(s) = &change.status {
        if s != old.status() {
            what.push(format!("status {} -> {s}", old.status()));
            new.status.clone_from(s);
        }
    }
    if let Some(a) = &change.assignee {
        if *a != old.assignee {
            what.push(format!("assignee {:?} -> {a:?}", old.assignee));
            new.assignee.clone_from(a);
        }
    }
    if let Some(t) = &change.tags {
        let mut t: Vec<String> = t.iter().map(|s| s.trim().to_string()).collect();
        t.dedup();
        if t != old.tags {
            what.push(format!("tags {:?} -> {t:?}", old.tags));
            new.tags = t;
        }
    }
    for t in &change.add_tags {
        let t = t.trim().to_string();
        if !new.tags.contains(&t) && new.tags.len() < MAX_TAGS {
            what.push(format!("tag +{t:?}"));
            new.tags.push(t);
        }
    }
    let tx = c.transaction()?;
    if let Some(n) = &change.note {
        tx.execute(
            "INSERT INTO notes (id, time_us, user, text) VALUES (?, ?, ?, ?)",
            params![id, now_us, user, n],
        )?;
        new.notes += 1;
        what.push("note added".into());
    }
    if let (Some(kind), Some(value)) = (change.suppress.as_deref(), suppress_value) {
        let added = tx.execute(
            "INSERT OR IGNORE INTO suppressions (kind, value, user, time_us, threat) VALUES (?, ?, ?, ?, ?)",
            params![kind, value, user, now_us, id],
        )?;
        if added > 0 {
            what.push(format!("suppress {kind} {value:?}"));
        }
    }
    if !what.is_empty() {
        tx.execute(
            "INSERT INTO triage (id, status, assignee, tags, updated_us) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (id) DO UPDATE SET status = excluded.status, assignee = excluded.assignee,
             tags = excluded.tags, updated_us = excluded.updated_us",
            params![
                id,
                new.status(),
                new.assignee,
                serde_json::to_string(&new.tags).unwrap_or_else(|_| "[]".into()),
                now_us
            ],
        )?;
        tx.execute(
            "INSERT INTO history (id, time_us, user, change) VALUES (?, ?, ?, ?)",
            params![id, now_us, user, what.join("; ")],
        )?;
    }
    tx.commit()?;
    if new.status.is_empty() {
        new.status = "new".into();
    }
    Ok((new, what))
}

/// `(time, user, text)` rows of a table for one threat, oldest first, at most 500.
fn rows(c: &Connection, sql: &str, id: &str) -> rusqlite::Result<Vec<Value>> {
    let mut st = c.prepare_cached(sql)?;
    let r = st.query_map([id], |r| {
        Ok(json!({
            "time": format_rfc3339(r.get(0)?),
            "user": r.get::<_, String>(1)?,
            "text": r.get::<_, String>(2)?,
        }))
    })?;
    r.collect()
}

/// A threat's notes, oldest first.
pub fn notes(c: &Connection, id: &str) -> rusqlite::Result<Vec<Value>> {
    rows(
        c,
        "SELECT time_us, user, text FROM notes WHERE id = ? ORDER BY n LIMIT 500",
        id,
    )
}

/// A threat's triage history, oldest first.
pub fn history(c: &Connection, id: &str) -> rusqlite::Result<Vec<Value>> {
    rows(
        c,
        "SELECT time_us, user, change FROM history WHERE id = ? ORDER BY n LIMIT 500",
        id,
    )
}

/// One suppression.
#[derive(Debug, Clone)]
pub struct Suppression {
    /// `trail` or `source`.
    pub kind: String,
    /// The trail or the address.
    pub value: String,
    /// Who added it.
    pub user: String,
    /// When, µs.
    pub time_us: i64,
    /// The threat it came from.
    pub threat: String,
}

/// The suppression list, oldest first.
pub fn suppressions(c: &Connection) -> rusqlite::Result<Vec<Suppression>> {
    let mut st = c.prepare_cached(
        "SELECT kind, value, user, time_us, threat FROM suppressions ORDER BY time_us, kind, value",
    )?;
    let r = st.query_map([], |r| {
        Ok(Suppression {
            kind: r.get(0)?,
            value: r.get(1)?,
            user: r.get(2)?,
            time_us: r.get(3)?,
            threat: r.get(4)?,
        })
    })?;
    r.collect()
}

/// Whether a threat id has a triage row (for tests and tooling).
pub fn has_triage(c: &Connection, id: &str) -> rusqlite::Result<bool> {
    c.query_row("SELECT 1 FROM triage WHERE id = ?", [id], |_| Ok(()))
        .optional()
        .map(|o| o.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_checked_applied_and_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = super::super::threats::open_db(dir.path()).unwrap();
        let bad =
            |j: &str| serde_json::from_str::<Change>(j).map_or(Err(String::new()), |c| c.check());
        assert!(bad(r#"{"status":"done"}"#).is_err());
        assert!(bad(r#"{}"#).is_err());
        assert!(bad(r#"{"colour":"red"}"#).is_err());
        assert!(bad(r#"{"status":"resolved","suppress":"trail"}"#).is_err());
        assert!(bad(r#"{"add_tags":[""]}"#).is_err());
        let ch: Change = serde_json::from_str(
            r#"{"status":"false_positive","add_tags":["benign"],"note":"scanner of ours","suppress":"source"}"#,
        )
        .unwrap();
        ch.check().unwrap();
        let (t, what) = apply(
            &mut c,
            "abc",
            &Triage::default(),
            &ch,
            "ann",
            1,
            Some("198.18.0.1"),
        )
        .unwrap();
        assert_eq!(t.status, "false_positive");
        assert_eq!(t.tags, ["benign"]);
        assert_eq!(t.notes, 1);
        assert_eq!(what.len(), 4, "{what:?}");
        assert!(has_triage(&c, "abc").unwrap());
        assert_eq!(notes(&c, "abc").unwrap()[0]["user"], "ann");
        assert_eq!(history(&c, "abc").unwrap().len(), 1);
        assert_eq!(suppressions(&c).unwrap()[0].value, "198.18.0.1");
        let dir_idx = super::super::threats::load(&c).unwrap();
        assert_eq!(dir_idx.triage["abc"], t);
    }
}
