//! Server-side grouping of stored events into threats (Maltrail's keys), so that the
//! console never ships raw events to a browser to group them.
//!
//! A follower task reads every stored event in cursor order (`console::follow`: from the
//! store while catching up, then the writer's live batches without reading them back;
//! polling for a shared PostgreSQL store) and folds every event into its threat:
//!
//! | kind | key | when |
//! |---|---|---|
//! | `trail` | source → trail | a trail hit |
//! | `heuristic` | source → info | reference `(heuristic)` |
//! | `dns_exhaustion` | info → base domain | `potential dns exhaustion` |
//! | `flood` | trail | more than [`ThreatsConfig::flood_sources`] distinct sources hit one trail in one hour: its further events of that hour |
//!
//! Each aggregate keeps first/last seen, count, the highest severity, bounded distinct lists
//! (sensors, sources, destinations, destination ports, protocols: the first
//! [`ThreatsConfig::max_list`] of each, `*_truncated` past that), the newest
//! [`ThreatsConfig::keep_cursors`] event cursors (the detail's raw events), and a count per
//! hour (sparklines, timeline, in-range counts, the daily heatmap).
//!
//! Aggregates persist in `DATA_DIR/threats.db` (SQLite, WAL): one JSON row per threat, one
//! row per (threat, hour), and the follower's cursor, all written in one transaction per
//! applied batch, so a restart resumes exactly after the last applied event (no double
//! count). At start the whole index is loaded into memory ([`Index`]): queries filter, sort
//! and page in memory, a few milliseconds for tens of thousands of threats. Triage state
//! (`console::triage`) lives in the same file, keyed by threat id.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::sync::{broadcast, mpsc};
use xtrail_proto::v1;

use super::search::{End, Subject, TextField};
use crate::access::Scope;
use crate::export::{Chunk, ExporterStats};
use crate::subscribe::Hub;

/// The aggregates' file in the data directory.
pub const FILE: &str = "threats.db";
/// One hour in microseconds: the bucket of counts.
pub const HOUR_US: i64 = 3_600_000_000;
/// The info of Maltrail's DNS exhaustion heuristic.
const DNS_EXHAUSTION: &str = "potential dns exhaustion";
/// Events applied in one transaction at most (catch-up groups pages up to this).
const APPLY_MAX: usize = 50_000;
/// Events per page read from the store.
const READ_PAGE: usize = 2_000;
/// Least time between two applied transactions while events keep coming: each applies
/// every threat its events touched (a copy, a JSON row, an index update), so under load
/// a threat's many events share one write instead of one per chunk.
const APPLY_EVERY: Duration = Duration::from_millis(250);

/// Grouping settings.
#[derive(Clone, Copy, Debug)]
pub struct ThreatsConfig {
    /// More distinct sources than this on one trail within an hour make a flood threat.
    pub flood_sources: usize,
    /// Distinct values kept per list (sources, destinations, ports, sensors, protocols).
    pub max_list: usize,
    /// Newest event cursors kept per threat (the detail's raw events).
    pub keep_cursors: usize,
}

impl Default for ThreatsConfig {
    fn default() -> Self {
        ThreatsConfig {
            flood_sources: 64,
            max_list: 100,
            keep_cursors: 100,
        }
    }
}

/// An aggregate storage failure.
#[derive(Debug, thiserror::Error)]
pub enum ThreatsError {
    /// SQLite said no.
    #[error("threats database: {0}")]
    Db(#[from] rusqlite::Error),
    /// A stored aggregate does not decode.
    #[error("threats database: stored threat {0} is unreadable: {1}")]
    Corrupt(i64, String),
    /// The data directory.
    #[error("threats database {0}: {1}")]
    Dir(PathBuf, std::io::Error),
}

/// An address with its text.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Addr {
    /// Parsed.
    pub ip: IpAddr,
    /// As the sensor wrote it.
    pub text: String,
}

impl From<Addr> for String {
    fn from(a: Addr) -> String {
        a.text
    }
}

impl TryFrom<String> for Addr {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let ip = text
            .parse()
            .map_err(|_| format!("{text:?} is not an address"))?;
        Ok(Addr { ip, text })
    }
}

/// The first `cap` distinct values, and whether more were seen.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Bounded<T> {
    /// Values in order of first appearance.
    pub items: Vec<T>,
    /// More distinct values were seen than kept.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

impl<T> Default for Bounded<T> {
    fn default() -> Self {
        Bounded {
            items: Vec::new(),
            truncated: false,
        }
    }
}

impl<T: PartialEq> Bounded<T> {
    fn add(&mut self, v: T, cap: usize) {
        if self.items.contains(&v) {
            return;
        }
        if self.items.len() < cap {
            self.items.push(v);
        } else {
            self.truncated = true;
        }
    }
}

/// One threat aggregate.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Threat {
    /// Row id in `threats.db` (0 until first stored).
    #[serde(skip)]
    pub row: i64,
    /// Opaque, URL-safe, stable for the key.
    pub id: String,
    /// The grouping key.
    pub key: String,
    /// `trail`, `heuristic`, `dns_exhaustion`, `flood`.
    pub kind: String,
    /// The event type of the first event (DNS, IP, URL, ...).
    #[serde(rename = "type")]
    pub r#type: String,
    /// The trail of the first event (the base domain for DNS exhaustion).
    pub trail: String,
    /// The info of the first event.
    pub info: String,
    /// The reference of the first event.
    pub reference: String,
    /// Highest wire severity seen.
    pub severity: i32,
    /// First event time, µs.
    pub first_seen: i64,
    /// Last event time, µs.
    pub last_seen: i64,
    /// Events.
    pub count: u64,
    /// Sensors.
    pub sensors: Bounded<String>,
    /// Source addresses.
    pub sources: Bounded<Addr>,
    /// Destination addresses.
    pub destinations: Bounded<Addr>,
    /// Destination (service) ports.
    pub ports: Bounded<u32>,
    /// Protocols.
    pub protocols: Bounded<String>,
    /// Newest event cursors, oldest first (stored as a BLOB of little-endian u64s).
    #[serde(skip)]
    pub cursors: VecDeque<u64>,
    /// Events per hour: (hour since the epoch, count), sorted by hour.
    #[serde(skip)]
    pub hours: Vec<(i64, u32)>,
    /// Trail, info, reference, type, kind and sensors, ASCII-lowercased, one per line (bare
    /// word search).
    #[serde(skip)]
    pub folded: String,
    /// Every listed source and destination, one per line (bare word search of an unscoped
    /// viewer).
    #[serde(skip)]
    pub folded_addrs: String,
    /// The trail defanged (the IOC list), computed with [`Threat::refold`].
    #[serde(skip)]
    pub defanged: String,
    /// Sources past the listed ones (sorted, distinct; table `threat_addrs`): the membership
    /// index of a scoped view, so a threat is visible and `src:` matches by every source,
    /// not only by the first `max_list`.
    #[serde(skip)]
    pub more_sources: Vec<IpAddr>,
    /// Destinations past the listed ones, likewise.
    #[serde(skip)]
    pub more_destinations: Vec<IpAddr>,
    /// The export rows' parts of an unscoped view, computed with [`Threat::refold`].
    #[serde(skip)]
    pub rendered: super::rows::Rendered,
}

impl Threat {
    /// Events in `[from_us, to_us)`, at hour granularity (an hour counts when it overlaps).
    pub fn count_in(&self, from_us: i64, to_us: i64) -> u64 {
        let (lo, hi) = hour_span(from_us, to_us);
        match (self.hours.first(), self.hours.last()) {
            (Some((first, _)), Some((last, _))) if lo <= *first && *last < hi => {
                return self.count;
            }
            (None, _) => return 0,
            _ => {}
        }
        let start = self.hours.partition_point(|(h, _)| *h < lo);
        self.hours[start..]
            .iter()
            .take_while(|(h, _)| *h < hi)
            .map(|(_, c)| u64::from(*c))
            .sum()
    }

    /// Counts per equal slice of `[from_us, to_us)` (`n` slices), by hour.
    pub fn sparkline(&self, from_us: i64, to_us: i64, n: usize) -> Vec<u64> {
        let mut out = vec![0u64; n];
        self.sparkline_into(from_us, to_us, &mut out);
        out
    }

    /// [`Threat::sparkline`] into `out` (zeroed by the caller), one slice per element.
    pub fn sparkline_into(&self, from_us: i64, to_us: i64, out: &mut [u64]) {
        let n = out.len();
        if n == 0 || from_us >= to_us {
            return;
        }
        let span = i128::from(to_us) - i128::from(from_us);
        let (lo, hi) = hour_span(from_us, to_us);
        let start = self.hours.partition_point(|(h, _)| *h < lo);
        for (h, c) in self.hours[start..].iter().take_while(|(h, _)| *h < hi) {
            // An hour counts in the slice of its middle.
            let t = h
                .saturating_mul(HOUR_US)
                .saturating_add(HOUR_US / 2)
                .clamp(from_us, to_us - 1);
            let i = (i128::from(t) - i128::from(from_us)) * n as i128 / span;
            out[usize::try_from(i).unwrap_or(0).min(n - 1)] += u64::from(*c);
        }
    }

    /// Whether any source or destination is inside `scope` (listed or past the list).
    pub fn visible(&self, scope: &Scope) -> bool {
        scope.is_all()
            || self
                .sources
                .items
                .iter()
                .chain(&self.destinations.items)
                .any(|a| scope.allows(&a.ip))
            || [&self.more_sources, &self.more_destinations]
                .into_iter()
                .any(|more| in_scope(more, scope).next().is_some())
    }

    /// Recomputes [`Threat::folded`].
    pub fn refold(&mut self) {
        let mut f = String::with_capacity(
            self.trail.len() + self.info.len() + self.reference.len() + self.r#type.len() + 32,
        );
        for part in [
            &self.trail,
            &self.info,
            &self.reference,
            &self.r#type,
            &self.kind,
        ]
        .into_iter()
        .chain(&self.sensors.items)
        {
            f.push_str(part);
            f.push('\n');
        }
        f.make_ascii_lowercase();
        self.folded = f;
        let mut a = String::new();
        for x in self.sources.items.iter().chain(&self.destinations.items) {
            a.push_str(&x.text);
            a.push('\n');
        }
        a.make_ascii_lowercase();
        self.folded_addrs = a;
        if self.defanged.is_empty() {
            self.defanged = super::api::defang(&self.trail);
        }
        self.rendered = super::rows::Rendered::of(self);
    }

    fn add_hour(&mut self, hour: i64) {
        match self.hours.binary_search_by_key(&hour, |(h, _)| *h) {
            Ok(i) => self.hours[i].1 = self.hours[i].1.saturating_add(1),
            Err(i) => self.hours.insert(i, (hour, 1)),
        }
    }
}

/// The addresses of a sorted list inside `scope`, by a binary search per network.
pub fn in_scope<'a>(sorted: &'a [IpAddr], scope: &'a Scope) -> impl Iterator<Item = &'a IpAddr> {
    let all: &[IpAddr] = if scope.is_all() { sorted } else { &[] };
    all.iter().chain(scope.networks().iter().flat_map(move |n| {
        let (lo, hi) = (n.network(), n.broadcast());
        let start = sorted.partition_point(|a| *a < lo);
        sorted[start..].iter().take_while(move |a| **a <= hi)
    }))
}

/// Adds an address (`ip`, written as `text`) to a bounded list or, past its cap, to the
/// sorted overflow; true when it is new in the overflow. Copies `text` only when listed.
fn add_addr(
    list: &mut Bounded<Addr>,
    more: &mut Vec<IpAddr>,
    ip: IpAddr,
    text: &str,
    cap: usize,
) -> bool {
    if list.items.iter().any(|a| a.ip == ip && a.text == text) {
        return false;
    }
    if list.items.len() < cap {
        list.items.push(Addr {
            ip,
            text: text.to_string(),
        });
        return false;
    }
    list.truncated = true;
    match more.binary_search(&ip) {
        Ok(_) => false,
        Err(i) => {
            more.insert(i, ip);
            true
        }
    }
}

/// [`Bounded::add`] for text, copying it only when it is new.
fn add_text(list: &mut Bounded<String>, v: &str, cap: usize) {
    if list.items.iter().any(|x| x == v) {
        return;
    }
    if list.items.len() < cap {
        list.items.push(v.to_string());
    } else {
        list.truncated = true;
    }
}

/// The hours `[lo, hi)` overlapping `[from_us, to_us)`.
pub fn hour_span(from_us: i64, to_us: i64) -> (i64, i64) {
    (
        from_us.div_euclid(HOUR_US),
        (to_us.saturating_add(HOUR_US - 1)).div_euclid(HOUR_US),
    )
}

/// The opaque id of a key: 24 hex digits of its SHA-256.
pub fn id_of(key: &str) -> String {
    super::hex(&Sha256::digest(key.as_bytes())[..12])
}

/// Triage state of a threat (changed through `console::triage`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Triage {
    /// `new`, `investigating`, `resolved`, `false_positive`.
    pub status: String,
    /// Who handles it.
    pub assignee: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Notes attached.
    pub notes: u32,
}

impl Triage {
    /// The status, `new` when never set.
    pub fn status(&self) -> &str {
        if self.status.is_empty() {
            "new"
        } else {
            &self.status
        }
    }
}

/// A threat's times and count, kept contiguous in [`Index::spans`].
#[derive(Clone, Copy, Debug)]
pub struct Span {
    /// First event time, µs.
    pub first: i64,
    /// Last event time, µs.
    pub last: i64,
    /// Events.
    pub count: u64,
}

impl Span {
    fn of(t: &Threat) -> Span {
        Span {
            first: t.first_seen,
            last: t.last_seen,
            count: t.count,
        }
    }
}

/// Every aggregate, in memory.
#[derive(Debug, Default)]
pub struct Index {
    /// Threats (their position never changes).
    pub list: Vec<Arc<Threat>>,
    /// First and last seen and count of each threat, by position (a time filter and the
    /// rows of an unscoped view without following every pointer).
    pub spans: Vec<Span>,
    /// Events per hour of all threats by their highest severity (low, medium, high): the
    /// heatmap and timeline of an unscoped, unfiltered view.
    pub totals: std::collections::BTreeMap<i64, [u64; 3]>,
    by_key: HashMap<String, usize>,
    by_id: HashMap<String, usize>,
    /// Triage by threat id.
    pub triage: HashMap<String, Triage>,
    /// Every event up to this cursor is aggregated.
    pub cursor: u64,
}

impl Index {
    /// A threat by id.
    pub fn get(&self, id: &str) -> Option<&Arc<Threat>> {
        self.by_id.get(id).map(|&i| &self.list[i])
    }

    /// The triage of a threat (default when never changed).
    pub fn triage_of(&self, id: &str) -> Triage {
        self.triage.get(id).cloned().unwrap_or_default()
    }

    fn put(&mut self, mut t: Threat) {
        t.refold();
        let span = Span::of(&t);
        let t = Arc::new(t);
        match self.by_key.get(&t.key) {
            Some(&i) => {
                self.list[i] = t;
                self.spans[i] = span;
            }
            None => {
                let i = self.list.len();
                self.by_key.insert(t.key.clone(), i);
                self.by_id.insert(t.id.clone(), i);
                self.list.push(t);
                self.spans.push(span);
            }
        }
    }

    /// Adds `sign` × a threat's hours to the totals under its severity.
    fn add_totals(&mut self, hours: &[(i64, u32)], severity: i32, sign: i64) {
        let s = usize::try_from(severity.clamp(1, 3) - 1).unwrap_or(0);
        for (h, c) in hours {
            let e = self.totals.entry(*h).or_default();
            e[s] = e[s].saturating_add_signed(sign * i64::from(*c));
        }
    }
}

/// A threat as a query subject, seen through a viewer's scope.
pub struct ThreatView<'a> {
    /// The aggregate.
    pub threat: &'a Threat,
    /// Its triage.
    pub triage: Option<&'a Triage>,
    /// Whose view.
    pub scope: &'a Scope,
}

impl Subject for ThreatView<'_> {
    fn any_text(&self, field: TextField, f: &mut dyn FnMut(&str) -> bool) -> bool {
        let t = self.threat;
        let tr = self.triage;
        let status = tr.map_or("new", Triage::status);
        match field {
            TextField::Trail => f(&t.trail),
            TextField::Info => f(&t.info),
            TextField::Reference => f(&t.reference),
            TextField::Sensor => t.sensors.items.iter().any(|s| f(s)),
            TextField::Type => f(&t.r#type) || f(&t.kind),
            TextField::Proto => t.protocols.items.iter().any(|s| f(s)),
            TextField::Status => f(status),
            TextField::Tag => tr.is_some_and(|x| x.tags.iter().any(|s| f(s))),
            TextField::Assignee => tr.is_some_and(|x| f(&x.assignee)),
            TextField::Any => {
                f(&t.trail)
                    || f(&t.info)
                    || f(&t.reference)
                    || f(&t.r#type)
                    || t.sensors.items.iter().any(|s| f(s))
                    || self.any_addr_text(End::Src, f)
                    || self.any_addr_text(End::Dst, f)
                    || tr
                        .is_some_and(|x| f(&x.assignee) || x.tags.iter().any(|s| f(s)) || f(status))
            }
        }
    }

    fn any_addr(&self, end: End, f: &mut dyn FnMut(IpAddr, &str) -> bool) -> bool {
        let (list, more) = self.end(end);
        list.iter()
            .filter(|a| self.scope.allows(&a.ip))
            .any(|a| f(a.ip, &a.text))
            || in_scope(more, self.scope).any(|ip| {
                // Formatted on the stack: a `src:` CIDR over a flood's many addresses.
                let mut buf = [0u8; 64];
                let mut w = &mut buf[..];
                let _ = std::io::Write::write_fmt(&mut w, format_args!("{ip}"));
                let n = 64 - w.len();
                f(*ip, std::str::from_utf8(&buf[..n]).unwrap_or_default())
            })
    }

    fn any_port(&self, f: &mut dyn FnMut(u32) -> bool) -> bool {
        self.threat.ports.items.iter().any(|p| f(*p))
    }

    fn severity(&self) -> i32 {
        self.threat.severity
    }

    fn any_contains(&self, needle: &str) -> Option<bool> {
        let t = self.threat;
        let n = needle.as_bytes();
        let ci = |s: &str| super::search::contains_ci(s.as_bytes(), n);
        let status = self.triage.map_or("new", Triage::status);
        let in_addrs = if self.scope.is_all() {
            t.folded_addrs.contains(needle)
        } else {
            self.any_addr_text(End::Src, &mut |a| ci(a))
                || self.any_addr_text(End::Dst, &mut |a| ci(a))
        };
        Some(
            t.folded.contains(needle)
                || in_addrs
                || ci(status)
                || self
                    .triage
                    .is_some_and(|x| ci(&x.assignee) || x.tags.iter().any(|s| ci(s))),
        )
    }
}

impl ThreatView<'_> {
    /// One end's listed addresses and its sorted addresses past the list.
    fn end(&self, end: End) -> (&[Addr], &[IpAddr]) {
        match end {
            End::Src => (&self.threat.sources.items, &self.threat.more_sources),
            End::Dst => (
                &self.threat.destinations.items,
                &self.threat.more_destinations,
            ),
        }
    }

    /// Whether `f` holds for an address as text (bare words): the listed ones inside the
    /// scope and, for a scoped viewer, its in-scope addresses past the list.
    fn any_addr_text(&self, end: End, f: &mut dyn FnMut(&str) -> bool) -> bool {
        let (list, more) = self.end(end);
        list.iter()
            .filter(|a| self.scope.allows(&a.ip))
            .any(|a| f(&a.text))
            || (!self.scope.is_all() && in_scope(more, self.scope).any(|ip| f(&ip.to_string())))
    }
}

/// A raw event as a query subject (the detail's event list).
pub struct EventView<'a>(pub &'a v1::Event);

impl Subject for EventView<'_> {
    fn any_text(&self, field: TextField, f: &mut dyn FnMut(&str) -> bool) -> bool {
        let e = self.0;
        let heuristic = e.reference == crate::console::threats::HEURISTIC_REF;
        match field {
            TextField::Trail => f(&e.trail),
            TextField::Info => f(&e.info),
            TextField::Reference => f(&e.reference),
            TextField::Sensor => f(&e.sensor),
            TextField::Type => f(&e.r#type) || (heuristic && f("heuristic")),
            TextField::Proto => f(&e.proto),
            TextField::Status | TextField::Tag | TextField::Assignee => false,
            TextField::Any => {
                let details = [
                    e.dns.as_ref().and_then(|d| d.query.as_deref()),
                    e.http.as_ref().and_then(|h| h.host.as_deref()),
                    e.http.as_ref().and_then(|h| h.path.as_deref()),
                    e.http.as_ref().and_then(|h| h.user_agent.as_deref()),
                    e.tls.as_ref().and_then(|t| t.sni.as_deref()),
                ];
                [
                    &e.trail,
                    &e.info,
                    &e.reference,
                    &e.sensor,
                    &e.r#type,
                    &e.src_ip,
                    &e.dst_ip,
                ]
                .iter()
                .any(|s| f(s))
                    || details.iter().flatten().any(|s| f(s))
            }
        }
    }

    fn any_addr(&self, end: End, f: &mut dyn FnMut(IpAddr, &str) -> bool) -> bool {
        let text = match end {
            End::Src => &self.0.src_ip,
            End::Dst => &self.0.dst_ip,
        };
        text.parse().is_ok_and(|ip| f(ip, text))
    }

    fn any_port(&self, f: &mut dyn FnMut(u32) -> bool) -> bool {
        f(self.0.src_port) || f(self.0.dst_port)
    }

    fn severity(&self) -> i32 {
        self.0.severity
    }
}

/// The reference of heuristic events.
pub const HEURISTIC_REF: &str = "(heuristic)";

/// The threats of a collector: the in-memory index, its database, and the live feed of
/// changed threats.
pub struct Threats {
    /// Every aggregate.
    pub index: RwLock<Index>,
    /// Triage, notes, history and suppressions (a second connection on the same file).
    pub db: Mutex<Connection>,
    /// Ids of threats new or changed, per applied batch.
    pub changes: broadcast::Sender<Arc<Vec<String>>>,
    /// Every event up to this cursor is aggregated (for waiting on catch-up).
    pub applied: AtomicU64,
    /// Settings.
    pub config: ThreatsConfig,
    /// The suppression list as sensors receive it (reloaded on every change).
    pub suppressions: super::suppress::Feed,
}

impl std::fmt::Debug for Threats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Threats").finish_non_exhaustive()
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS threat_addrs (
    row INTEGER NOT NULL, side INTEGER NOT NULL, ip TEXT NOT NULL,
    PRIMARY KEY (row, side, ip)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS threats (
    row INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, data TEXT NOT NULL, cursors BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS threat_hours (
    row INTEGER NOT NULL, hour INTEGER NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (row, hour)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS triage (
    id TEXT PRIMARY KEY, status TEXT NOT NULL, assignee TEXT NOT NULL, tags TEXT NOT NULL,
    updated_us INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS notes (
    n INTEGER PRIMARY KEY, id TEXT NOT NULL, time_us INTEGER NOT NULL, user TEXT NOT NULL,
    text TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS notes_id ON notes (id);
CREATE TABLE IF NOT EXISTS history (
    n INTEGER PRIMARY KEY, id TEXT NOT NULL, time_us INTEGER NOT NULL, user TEXT NOT NULL,
    change TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS history_id ON history (id);
CREATE TABLE IF NOT EXISTS suppressions (
    kind TEXT NOT NULL, value TEXT NOT NULL, user TEXT NOT NULL, time_us INTEGER NOT NULL,
    threat TEXT NOT NULL, PRIMARY KEY (kind, value));
";

/// Opens `threats.db` in `dir` with the schema.
pub fn open_db(dir: &Path) -> Result<Connection, ThreatsError> {
    std::fs::create_dir_all(dir).map_err(|e| ThreatsError::Dir(dir.to_path_buf(), e))?;
    let c = Connection::open(dir.join(FILE))?;
    c.busy_timeout(Duration::from_secs(10))?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "NORMAL")?;
    c.execute_batch(SCHEMA)?;
    Ok(c)
}

/// Loads every aggregate and triage state.
pub fn load(c: &Connection) -> Result<Index, ThreatsError> {
    let mut idx = Index::default();
    let mut rows: HashMap<i64, usize> = HashMap::new();
    {
        let mut st = c.prepare("SELECT row, data, cursors FROM threats ORDER BY row")?;
        let mut q = st.query([])?;
        while let Some(r) = q.next()? {
            let row: i64 = r.get(0)?;
            let data: String = r.get(1)?;
            let mut t: Threat = serde_json::from_str(&data)
                .map_err(|e| ThreatsError::Corrupt(row, e.to_string()))?;
            t.row = row;
            let blob: Vec<u8> = r.get(2)?;
            t.cursors = blob
                .chunks_exact(8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
                .collect();
            rows.insert(row, idx.list.len());
            idx.by_key.insert(t.key.clone(), idx.list.len());
            idx.by_id.insert(t.id.clone(), idx.list.len());
            idx.list.push(Arc::new(t));
        }
    }
    {
        let mut st = c.prepare("SELECT row, hour, count FROM threat_hours ORDER BY row, hour")?;
        let mut q = st.query([])?;
        while let Some(r) = q.next()? {
            let row: i64 = r.get(0)?;
            if let Some(&i) = rows.get(&row) {
                let t = Arc::make_mut(&mut idx.list[i]);
                t.hours.push((
                    r.get(1)?,
                    u32::try_from(r.get::<_, i64>(2)?).unwrap_or(u32::MAX),
                ));
            }
        }
    }
    {
        let mut st = c.prepare(
            "SELECT t.id, t.status, t.assignee, t.tags, (SELECT COUNT(*) FROM notes n WHERE n.id = t.id) FROM triage t",
        )?;
        let mut q = st.query([])?;
        while let Some(r) = q.next()? {
            let tags: String = r.get(3)?;
            idx.triage.insert(
                r.get(0)?,
                Triage {
                    status: r.get(1)?,
                    assignee: r.get(2)?,
                    tags: serde_json::from_str(&tags).unwrap_or_default(),
                    notes: r.get(4)?,
                },
            );
        }
    }
    {
        // Addresses past the lists (side 0 source, 1 destination).
        let mut st = c.prepare("SELECT row, side, ip FROM threat_addrs")?;
        let mut q = st.query([])?;
        while let Some(r) = q.next()? {
            let row: i64 = r.get(0)?;
            let side: i64 = r.get(1)?;
            let ip: String = r.get(2)?;
            if let (Some(&i), Ok(ip)) = (rows.get(&row), ip.parse::<IpAddr>()) {
                let t = Arc::make_mut(&mut idx.list[i]);
                if side == 0 {
                    &mut t.more_sources
                } else {
                    &mut t.more_destinations
                }
                .push(ip);
            }
        }
    }
    // Derived state: search text, spans, totals.
    let list = std::mem::take(&mut idx.list);
    for mut t in list {
        let m = Arc::make_mut(&mut t);
        m.more_sources.sort_unstable();
        m.more_sources.dedup();
        m.more_destinations.sort_unstable();
        m.more_destinations.dedup();
        m.refold();
        idx.spans.push(Span::of(&t));
        idx.add_totals(&t.hours, t.severity, 1);
        idx.list.push(t);
    }
    idx.cursor = c
        .query_row("SELECT v FROM meta WHERE k = 'cursor'", [], |r| {
            r.get::<_, i64>(0)
        })
        .optional()?
        .map_or(0, |v| u64::try_from(v).unwrap_or(0));
    Ok(idx)
}

/// Flood windows: distinct sources per (hour, trail), bounded to the threshold. Keyed by
/// hour first so that an event's lookup borrows its trail (no allocation per event).
#[derive(Default)]
struct Floods {
    windows: HashMap<i64, HashMap<String, (HashSet<IpAddr>, bool)>>,
    /// Trails in `windows`, all hours.
    trails: usize,
    newest_hour: i64,
}

impl Floods {
    /// Whether this event of a trail hit belongs to the trail's flood.
    fn flooding(&mut self, trail: &str, hour: i64, src: Option<IpAddr>, n: usize) -> bool {
        if hour > self.newest_hour {
            self.newest_hour = hour;
            if self.trails > 10_000 {
                let keep = hour - 2;
                self.windows.retain(|h, _| *h >= keep);
                self.trails = self.windows.values().map(HashMap::len).sum();
            }
        }
        let trails = self.windows.entry(hour).or_default();
        let w = match trails.get_mut(trail) {
            Some(w) => w,
            None => {
                self.trails += 1;
                trails.entry(trail.to_string()).or_default()
            }
        };
        if w.1 {
            return true;
        }
        if let Some(src) = src {
            w.0.insert(src);
        }
        if w.0.len() > n {
            w.0 = HashSet::new();
            w.1 = true;
        }
        w.1
    }

    /// Rebuilt from the aggregates of the last two hours (after a restart).
    fn rebuild(idx: &Index) -> Floods {
        let mut f = Floods::default();
        let newest = idx
            .list
            .iter()
            .filter_map(|t| t.hours.last().map(|(h, _)| *h))
            .max()
            .unwrap_or(0);
        f.newest_hour = newest;
        for t in &idx.list {
            for (h, _) in t.hours.iter().rev().take_while(|(h, _)| *h >= newest - 1) {
                let trails = f.windows.entry(*h).or_default();
                if !trails.contains_key(&t.trail) {
                    f.trails += 1;
                }
                let w = trails.entry(t.trail.clone()).or_default();
                match t.kind.as_str() {
                    "flood" => w.1 = true,
                    "trail" => {
                        if let Some(a) = t.sources.items.first() {
                            w.0.insert(a.ip);
                        }
                    }
                    _ => {}
                }
            }
        }
        f
    }
}

/// Writes the grouping key of an event into `key` (cleared first) and returns its kind
/// (None: not a threat, e.g. a sensor's spool report). `src` is the event's source, parsed.
fn key_of(
    e: &v1::Event,
    src: Option<IpAddr>,
    floods: &mut Floods,
    cfg: &ThreatsConfig,
    key: &mut String,
) -> Option<&'static str> {
    key.clear();
    if e.r#type == "SPOOL_DROP" {
        return None;
    }
    let (parts, kind): ([&str; 3], &'static str) = if e.info.starts_with(DNS_EXHAUSTION) {
        let base = e
            .trail
            .strip_prefix('(')
            .and_then(|t| t.split_once(")."))
            .map_or(e.trail.as_str(), |(_, b)| b);
        (["x", &e.info, base], "dns_exhaustion")
    } else if e.reference == HEURISTIC_REF {
        (["h", &e.src_ip, &e.info], "heuristic")
    } else if floods.flooding(
        &e.trail,
        e.ts_us.div_euclid(HOUR_US),
        src,
        cfg.flood_sources,
    ) {
        (["f", &e.trail, ""], "flood")
    } else {
        (["t", &e.src_ip, &e.trail], "trail")
    };
    let [tag, a, b] = parts;
    key.push_str(tag);
    key.push('\u{1f}');
    key.push_str(a);
    if kind != "flood" {
        key.push('\u{1f}');
        key.push_str(b);
    }
    Some(kind)
}

fn new_threat(key: String, kind: &str, e: &v1::Event) -> Threat {
    let trail = if kind == "dns_exhaustion" {
        key.rsplit('\u{1f}').next().unwrap_or(&e.trail).to_string()
    } else {
        e.trail.clone()
    };
    Threat {
        row: 0,
        id: id_of(&key),
        key,
        kind: kind.to_string(),
        r#type: e.r#type.clone(),
        trail,
        info: e.info.clone(),
        reference: e.reference.clone(),
        severity: e.severity,
        first_seen: e.ts_us,
        last_seen: e.ts_us,
        count: 0,
        sensors: Bounded::default(),
        sources: Bounded::default(),
        destinations: Bounded::default(),
        ports: Bounded::default(),
        protocols: Bounded::default(),
        cursors: VecDeque::new(),
        hours: Vec::new(),
        folded: String::new(),
        folded_addrs: String::new(),
        defanged: String::new(),
        more_sources: Vec::new(),
        more_destinations: Vec::new(),
        rendered: Default::default(),
    }
}

/// Folds one event into a threat; addresses new past the lists go to `more` (side 0
/// source, 1 destination) to be stored. `src` is the event's source, parsed. Nothing is
/// copied for a value already listed (the common case: a threat's events repeat them).
fn fold_event(
    t: &mut Threat,
    e: &v1::Event,
    src: Option<IpAddr>,
    cfg: &ThreatsConfig,
    more: &mut Vec<(u8, IpAddr)>,
) {
    t.count += 1;
    t.severity = t.severity.max(e.severity);
    t.first_seen = t.first_seen.min(e.ts_us);
    t.last_seen = t.last_seen.max(e.ts_us);
    add_text(&mut t.sensors, &e.sensor, cfg.max_list);
    if let Some(ip) = src {
        if add_addr(
            &mut t.sources,
            &mut t.more_sources,
            ip,
            &e.src_ip,
            cfg.max_list,
        ) {
            more.push((0, ip));
        }
    }
    let listed = t.destinations.items.iter().any(|a| a.text == e.dst_ip);
    if let (false, Ok(ip)) = (listed, e.dst_ip.parse::<IpAddr>()) {
        if add_addr(
            &mut t.destinations,
            &mut t.more_destinations,
            ip,
            &e.dst_ip,
            cfg.max_list,
        ) {
            more.push((1, ip));
        }
    }
    if e.dst_port != 0 {
        t.ports.add(e.dst_port, cfg.max_list);
    }
    if !e.proto.is_empty() {
        add_text(&mut t.protocols, &e.proto, cfg.max_list);
    }
    t.cursors.push_back(e.cursor);
    while t.cursors.len() > cfg.keep_cursors {
        t.cursors.pop_front();
    }
    t.add_hour(e.ts_us.div_euclid(HOUR_US));
}

impl Threats {
    /// Opens `DATA_DIR/threats.db`, loads the index, and starts the follower on the hub's
    /// store after the persisted cursor (catching up on what was stored meanwhile).
    pub fn spawn(
        hub: &Hub,
        data_dir: &Path,
        config: ThreatsConfig,
    ) -> Result<Arc<Threats>, ThreatsError> {
        let writer = open_db(data_dir)?;
        let idx = load(&writer)?;
        let reader = open_db(data_dir)?;
        let suppressions = super::suppress::Feed::load(&reader)?;
        let start = idx.cursor;
        if let Ok(last) = hub.storage.last_cursor() {
            if start > last {
                log::warn!(
                    "threats: aggregated up to cursor {start} but the store ends at {last} (a new store?); aggregating what comes after {start}"
                );
            }
        }
        let floods = Floods::rebuild(&idx);
        log::info!(
            "threats: {} aggregates loaded, following the store after cursor {start}",
            idx.list.len()
        );
        let (changes, _) = broadcast::channel(256);
        let threats = Arc::new(Threats {
            index: RwLock::new(idx),
            db: Mutex::new(reader),
            changes,
            applied: AtomicU64::new(start),
            config,
            suppressions,
        });
        let stats = Arc::new(ExporterStats {
            name: "console-threats".into(),
            kind: "console",
            ..Default::default()
        });
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(super::follow::follow_loop(
            hub.clone(),
            start,
            READ_PAGE,
            tx,
            Arc::clone(&stats),
        ));
        let follower = Follower {
            threats: Arc::clone(&threats),
            conn: writer,
            floods,
        };
        tokio::spawn(follow(follower, rx, stats));
        Ok(threats)
    }

    /// A read lock on the index.
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A write lock on the index (triage changes).
    pub fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The triage database connection.
    pub fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

struct Follower {
    threats: Arc<Threats>,
    conn: Connection,
    floods: Floods,
}

impl Follower {
    /// Folds `events` (cursor order) into the aggregates and persists them with `upto`, in
    /// one transaction; then publishes them to the index and the live feed.
    fn apply(&mut self, events: &[v1::Event], upto: u64) -> Result<(), ThreatsError> {
        let cfg = self.threats.config;
        // Each changed threat with its new counts per hour.
        #[allow(clippy::type_complexity)]
        let mut changed: HashMap<String, (Threat, Vec<(i64, u32)>, Vec<(u8, IpAddr)>)> =
            HashMap::new();
        {
            let idx = self.threats.read();
            let mut key = String::new();
            for e in events {
                let src = e.src_ip.parse::<IpAddr>().ok();
                let Some(kind) = key_of(e, src, &mut self.floods, &cfg, &mut key) else {
                    continue;
                };
                if !changed.contains_key(key.as_str()) {
                    let t = match idx.by_key.get(key.as_str()) {
                        Some(&i) => (*idx.list[i]).clone(),
                        None => new_threat(key.clone(), kind, e),
                    };
                    changed.insert(key.clone(), (t, Vec::new(), Vec::new()));
                }
                let Some((t, deltas, more)) = changed.get_mut(key.as_str()) else {
                    continue;
                };
                fold_event(t, e, src, &cfg, more);
                let hour = e.ts_us.div_euclid(HOUR_US);
                match deltas.iter_mut().find(|(h, _)| *h == hour) {
                    Some((_, n)) => *n += 1,
                    None => deltas.push((hour, 1)),
                }
            }
        }
        let tx = self.conn.transaction()?;
        {
            let mut insert =
                tx.prepare_cached("INSERT INTO threats (id, data, cursors) VALUES (?, ?, ?)")?;
            let mut update =
                tx.prepare_cached("UPDATE threats SET data = ?, cursors = ? WHERE row = ?")?;
            let mut hours = tx.prepare_cached(
                "INSERT INTO threat_hours (row, hour, count) VALUES (?, ?, ?)
                 ON CONFLICT (row, hour) DO UPDATE SET count = count + excluded.count",
            )?;
            let mut addrs = tx.prepare_cached(
                "INSERT OR IGNORE INTO threat_addrs (row, side, ip) VALUES (?, ?, ?)",
            )?;
            for (t, deltas, more) in changed.values_mut() {
                let data = serde_json::to_string(&*t)
                    .map_err(|e| ThreatsError::Corrupt(t.row, e.to_string()))?;
                let cursors: Vec<u8> = t.cursors.iter().flat_map(|c| c.to_le_bytes()).collect();
                if t.row == 0 {
                    insert.execute(params![t.id, data, cursors])?;
                    t.row = tx.last_insert_rowid();
                } else {
                    update.execute(params![data, cursors, t.row])?;
                }
                for (hour, n) in deltas.iter() {
                    hours.execute(params![t.row, hour, n])?;
                }
                for (side, ip) in more.iter() {
                    addrs.execute(params![t.row, side, ip.to_string()])?;
                }
            }
            tx.execute(
                "INSERT INTO meta (k, v) VALUES ('cursor', ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                [crate::storage::as_i64(upto)],
            )?;
        }
        tx.commit()?;
        let ids: Vec<String> = changed.values().map(|(t, _, _)| t.id.clone()).collect();
        {
            let mut idx = self.threats.write();
            for (t, deltas, _) in changed.into_values() {
                let old = idx.by_key.get(&t.key).map(|&i| Arc::clone(&idx.list[i]));
                if let Some(old) = old.filter(|o| o.severity != t.severity) {
                    idx.add_totals(&old.hours, old.severity, -1);
                    idx.add_totals(&old.hours, t.severity, 1);
                }
                idx.add_totals(&deltas, t.severity, 1);
                idx.put(t);
            }
            idx.cursor = upto;
        }
        self.threats.applied.store(upto, Ordering::SeqCst);
        if !ids.is_empty() {
            let _ = self.threats.changes.send(Arc::new(ids));
        }
        Ok(())
    }
}

/// Applies what the reader queues: several chunks at once (up to [`APPLY_MAX`] events
/// per transaction; while events keep coming, what arrives within [`APPLY_EVERY`] of the
/// previous transaction), retrying a failed transaction until it commits.
async fn follow(mut f: Follower, mut rx: mpsc::Receiver<Chunk>, stats: Arc<ExporterStats>) {
    let mut last_applied = tokio::time::Instant::now() - APPLY_EVERY;
    while let Some(first) = rx.recv().await {
        stats.queued.fetch_sub(1, Ordering::Relaxed);
        let mut events = first.events;
        let mut upto = first.upto;
        let due = last_applied + APPLY_EVERY;
        while events.len() < APPLY_MAX {
            let next = match rx.try_recv() {
                Ok(c) => Some(c),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                // Keep receiving (the reader must not stall on a full channel) until due.
                Err(mpsc::error::TryRecvError::Empty) => {
                    tokio::time::timeout_at(due, rx.recv()).await.ok().flatten()
                }
            };
            let Some(c) = next else { break };
            stats.queued.fetch_sub(1, Ordering::Relaxed);
            events.extend(c.events);
            upto = c.upto;
        }
        let events = Arc::new(events);
        loop {
            let ev = Arc::clone(&events);
            let res = tokio::task::spawn_blocking(move || {
                let r = f.apply(&ev, upto);
                (f, r)
            })
            .await;
            match res {
                Ok((back, Ok(()))) => {
                    f = back;
                    last_applied = tokio::time::Instant::now();
                    break;
                }
                Ok((back, Err(e))) => {
                    f = back;
                    log::warn!("threats: applying events up to cursor {upto}: {e}; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => {
                    log::error!("threats: follower task: {e}; grouping stops");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(
        cursor: u64,
        src: &str,
        trail: &str,
        info: &str,
        reference: &str,
        ts_us: i64,
    ) -> v1::Event {
        v1::Event {
            cursor,
            ts_us,
            sensor: "s1".into(),
            src_ip: src.into(),
            dst_ip: "198.19.0.1".into(),
            dst_port: 80,
            proto: "TCP".into(),
            r#type: "IP".into(),
            trail: trail.into(),
            info: info.into(),
            reference: reference.into(),
            severity: 2,
            ..Default::default()
        }
    }

    fn follower(dir: &Path, cfg: ThreatsConfig) -> Follower {
        let conn = open_db(dir).unwrap();
        let idx = load(&conn).unwrap();
        let floods = Floods::rebuild(&idx);
        Follower {
            threats: Arc::new(Threats {
                index: RwLock::new(idx),
                db: Mutex::new(open_db(dir).unwrap()),
                changes: broadcast::channel(4).0,
                applied: AtomicU64::new(0),
                config: cfg,
                suppressions: super::super::suppress::Feed::load(&conn).unwrap(),
            }),
            conn,
            floods,
        }
    }

    #[test]
    fn keys_counts_hours_and_restart() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = 1_786_000_000_000_000;
        let mut f = follower(dir.path(), ThreatsConfig::default());
        let evs = vec![
            ev(1, "198.18.0.1", "evil.example", "malware", "(static)", t0),
            ev(
                2,
                "198.18.0.1",
                "evil.example",
                "malware",
                "(static)",
                t0 + HOUR_US,
            ),
            ev(3, "198.18.0.2", "evil.example", "malware", "(static)", t0),
            ev(
                4,
                "198.18.0.1",
                "/a",
                "potential web scanning",
                HEURISTIC_REF,
                t0,
            ),
            ev(
                5,
                "198.18.0.1",
                "/b",
                "potential web scanning",
                HEURISTIC_REF,
                t0,
            ),
            ev(
                6,
                "198.18.0.3",
                "(x1).victim.example",
                "potential dns exhaustion (suspicious)",
                HEURISTIC_REF,
                t0,
            ),
            ev(
                7,
                "198.18.0.4",
                "(x2).victim.example",
                "potential dns exhaustion (suspicious)",
                HEURISTIC_REF,
                t0,
            ),
        ];
        f.apply(&evs, 7).unwrap();
        let check = |idx: &Index| {
            assert_eq!(idx.list.len(), 4, "{:#?}", idx.list);
            let id = id_of("t\u{1f}198.18.0.1\u{1f}evil.example");
            let t = idx.get(&id).unwrap();
            assert_eq!(t.count, 2);
            assert_eq!(t.hours.len(), 2);
            assert_eq!(t.count_in(t0, t0 + 1), 1);
            assert_eq!(t.sparkline(t0, t0 + 2 * HOUR_US, 2), [1, 1]);
            let h = idx
                .get(&id_of("h\u{1f}198.18.0.1\u{1f}potential web scanning"))
                .unwrap();
            assert_eq!(h.count, 2);
            let x = idx
                .get(&id_of(
                    "x\u{1f}potential dns exhaustion (suspicious)\u{1f}victim.example",
                ))
                .unwrap();
            assert_eq!(
                (x.count, x.sources.items.len(), x.trail.as_str()),
                (2, 2, "victim.example")
            );
            assert_eq!(idx.cursor, 7);
        };
        check(&f.threats.read());
        drop(f);
        let f = follower(dir.path(), ThreatsConfig::default());
        check(&f.threats.read());
    }

    #[test]
    fn totals_follow_the_highest_severity() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = follower(dir.path(), ThreatsConfig::default());
        let t0 = 1_786_000_000_000_000;
        let mut a = ev(1, "198.18.0.1", "x.example", "m", "(static)", t0);
        a.severity = 1;
        f.apply(&[a.clone()], 1).unwrap();
        let h = t0.div_euclid(HOUR_US);
        assert_eq!(f.threats.read().totals[&h], [1, 0, 0]);
        a.cursor = 2;
        a.severity = 3;
        a.ts_us += HOUR_US;
        f.apply(&[a], 2).unwrap();
        let idx = f.threats.read();
        assert_eq!(idx.totals[&h], [0, 0, 1]);
        assert_eq!(idx.totals[&(h + 1)], [0, 0, 1]);
        drop(idx);
        drop(f);
        let f = follower(dir.path(), ThreatsConfig::default());
        assert_eq!(f.threats.read().totals[&h], [0, 0, 1]);
        assert!(f.threats.read().list[0].folded.contains("x.example\nm\n"));
    }

    #[test]
    fn many_sources_on_one_trail_become_a_flood() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ThreatsConfig {
            flood_sources: 3,
            ..Default::default()
        };
        let mut f = follower(dir.path(), cfg);
        let t0 = 1_786_000_000_000_000;
        let evs: Vec<_> = (0..10)
            .map(|i| {
                ev(
                    i + 1,
                    &format!("198.18.0.{}", i + 1),
                    "bad.example",
                    "spam",
                    "(x)",
                    t0,
                )
            })
            .collect();
        f.apply(&evs, 10).unwrap();
        let idx = f.threats.read();
        let flood = idx.get(&id_of("f\u{1f}bad.example")).unwrap();
        assert_eq!(flood.kind, "flood");
        assert_eq!(flood.count, 7);
        assert_eq!(idx.list.len(), 4);
        let scoped = Scope::parse("198.18.0.5/32").unwrap();
        assert!(flood.visible(&scoped));
        let first = idx
            .get(&id_of("t\u{1f}198.18.0.1\u{1f}bad.example"))
            .unwrap();
        assert!(!first.visible(&scoped));
    }

    #[test]
    fn addresses_past_the_list_keep_a_threat_visible_to_its_scope() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ThreatsConfig {
            flood_sources: 3,
            max_list: 2,
            ..Default::default()
        };
        let t0 = 1_786_000_000_000_000;
        let evs: Vec<_> = (0..10)
            .map(|i| {
                let src = format!("198.18.0.{}", i + 1);
                ev(i + 1, &src, "bad.example", "spam", "(x)", t0)
            })
            .collect();
        let key = id_of("f\u{1f}bad.example");
        let only_late = Scope::parse("198.18.0.9/32").unwrap();
        let elsewhere = Scope::parse("198.18.5.0/24").unwrap();
        {
            let mut f = follower(dir.path(), cfg);
            f.apply(&evs, 10).unwrap();
            let idx = f.threats.read();
            let flood = idx.get(&key).unwrap();
            assert_eq!(flood.sources.items.len(), 2);
            assert!(flood.sources.truncated);
            assert_eq!(flood.more_sources.len(), 5, "{:?}", flood.more_sources);
            assert!(flood.visible(&only_late), "in scope past the list");
            assert!(!flood.visible(&elsewhere));
            let wide = Scope::parse("198.18.0.8/31").unwrap();
            let inside: Vec<String> = in_scope(&flood.more_sources, &wide)
                .map(ToString::to_string)
                .collect();
            assert_eq!(inside, ["198.18.0.8", "198.18.0.9"]);
            let q = crate::console::search::parse("src:198.18.0.9").unwrap();
            let view = ThreatView {
                threat: flood,
                triage: None,
                scope: &only_late,
            };
            assert!(q.matches(&view));
        }
        // The index is stored: the same after a restart.
        let f = follower(dir.path(), cfg);
        let idx = f.threats.read();
        let flood = idx.get(&key).unwrap();
        assert_eq!(flood.more_sources.len(), 5);
        assert!(flood.visible(&only_late));
        assert!(!flood.visible(&elsewhere));
    }
}
