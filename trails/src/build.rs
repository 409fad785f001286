//! One build: sources → Maltrail's merge → a compiled set, refused (fail closed) when it is
//! empty, shrinks below `min_ratio` of the current set, or fails; the output file is then not
//! touched.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use xtrail_detect::trails::compiled::{self, CompileOptions};
use xtrail_detect::trails::{
    CompiledSet, LoadOptions, Merge, StaticFilters, TrailSet, UpdateOptions,
};

use crate::feeds::FeedDef;
use crate::fetch::{cached_rows, fetch_feed, FeedStatus, FetchOptions};
use crate::indicators;

/// What to build from.
#[derive(Clone, Debug)]
pub struct BuildConfig {
    /// Output set file.
    pub out: PathBuf,
    /// Maltrail static trail tree.
    pub static_dir: Option<PathBuf>,
    /// Custom trail folders.
    pub custom: Vec<PathBuf>,
    /// Feed definitions (enabled ones are used).
    pub feeds: Vec<FeedDef>,
    /// Zeek / MISP / STIX files.
    pub indicators: Vec<PathBuf>,
    /// Cache folder (feeds, status, metrics).
    pub cache: PathBuf,
    /// Refuse a set smaller than this fraction of the current one.
    pub min_ratio: f64,
    /// The set in use (default: `out` if it exists).
    pub current: Option<PathBuf>,
    /// Sign with this ed25519 seed.
    pub signing_key: Option<[u8; 32]>,
    /// Maltrail data folder (whitelist.txt, bogon_ranges.txt, cdn_ranges.txt).
    pub maltrail_data: Option<PathBuf>,
    /// Use cached feed bodies only.
    pub offline: bool,
    /// Maltrail's `IP_MINIMUM_FEEDS`.
    pub ip_minimum_feeds: usize,
    /// Fetch limits.
    pub fetch: FetchOptions,
}

/// Why a build did not replace the set.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A source could not be read.
    #[error("{0}")]
    Source(String),
    /// The new set is empty.
    #[error("the new set is empty: keeping the current set")]
    Empty,
    /// The new set is much smaller than the current one.
    #[error("the new set has {new} trails, below {ratio} of the current set's {current}: keeping the current set")]
    Shrank {
        /// Trails in the new set.
        new: usize,
        /// Trails in the current set.
        current: usize,
        /// The threshold.
        ratio: f64,
    },
    /// Writing failed.
    #[error("writing the set: {0}")]
    Write(String),
}

/// What a build did.
#[derive(Debug)]
pub struct BuildOutcome {
    /// Version of the written set.
    pub version: String,
    /// Trails in it.
    pub trails: usize,
    /// Feed statuses.
    pub feeds: Vec<FeedStatus>,
    /// A one-line account of the sources and the merge.
    pub summary: String,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Trails in the current set (0 if there is none or it cannot be read).
fn current_len(path: &Path) -> Option<usize> {
    if !path.exists() {
        return None;
    }
    if compiled::is_compiled(path) {
        return CompiledSet::open(path, None).ok().map(|s| s.len());
    }
    TrailSet::load(&[path.to_owned()], &LoadOptions::default())
        .ok()
        .map(|t| t.report.lines)
}

/// Runs a build.
pub fn build(cfg: &BuildConfig) -> Result<BuildOutcome, BuildError> {
    let filters = match &cfg.maltrail_data {
        Some(d) => {
            StaticFilters::from_maltrail_data(d).map_err(|e| BuildError::Source(e.to_string()))?
        }
        None => StaticFilters::default(),
    };
    let load_opts = LoadOptions {
        static_filters: filters.clone(),
        ..LoadOptions::default()
    };
    let mut merge = Merge::new();
    let mut summary = Vec::new();

    // Feeds (sorted by name, as Maltrail imports its modules), then indicator files.
    let mut feeds: Vec<&FeedDef> = cfg.feeds.iter().filter(|f| f.enabled).collect();
    feeds.sort_by(|a, b| a.name.cmp(&b.name));
    let mut statuses = Vec::new();
    if !feeds.is_empty() {
        std::fs::create_dir_all(&cfg.cache)
            .map_err(|e| BuildError::Source(format!("{}: {e}", cfg.cache.display())))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| BuildError::Source(e.to_string()))?;
        for f in &feeds {
            let rows = if cfg.offline {
                cached_rows(f, &cfg.cache)
            } else {
                let (st, rows) = rt.block_on(fetch_feed(f, &cfg.cache, &cfg.fetch));
                statuses.push(st);
                rows
            };
            merge.merge(rows);
        }
        let ok = statuses
            .iter()
            .filter(|s| s.state == "ok" || s.state == "not_modified")
            .count();
        summary.push(format!("{} feeds ({ok} fetched or unchanged)", feeds.len()));
        let _ = std::fs::write(
            cfg.cache.join("metrics.prom"),
            crate::status::prometheus(&crate::status::all(&cfg.cache)),
        );
    }
    for p in &cfg.indicators {
        let i = indicators::read(p).map_err(|e| BuildError::Source(e.to_string()))?;
        summary.push(format!(
            "{} ({}: {} indicators, {} skipped)",
            p.display(),
            i.format,
            i.rows.len(),
            i.skipped
        ));
        merge.merge(i.rows);
    }
    for d in &cfg.custom {
        let rows = xtrail_detect::trails::update::custom_rows(d)
            .map_err(|e| BuildError::Source(e.to_string()))?;
        summary.push(format!("{} ({} custom trails)", d.display(), rows.len()));
        merge.merge(rows);
    }
    if let Some(s) = &cfg.static_dir {
        let set = TrailSet::load(std::slice::from_ref(s), &load_opts)
            .map_err(|e| BuildError::Source(e.to_string()))?;
        summary.push(format!(
            "{} (static tree: {} lines, {} malformed)",
            s.display(),
            set.report.lines,
            set.report.malformed
        ));
        merge.merge_set(&set);
    }
    let (rows, report) = merge.finish(&UpdateOptions {
        ip_minimum_feeds: cfg.ip_minimum_feeds,
        disabled_info: None,
        filters,
    });
    let set = TrailSet::from_rows(
        rows.iter()
            .map(|(k, i, r)| (k.as_str(), i.as_str(), r.as_str())),
        &LoadOptions::default(),
    );
    let trails = set.ip.len() + set.domains.len() + set.domains.regexes.len() + set.urls.len();
    summary.push(format!(
        "merged {} keys, {} rows kept ({} below IP_MINIMUM_FEEDS, {} whitelisted, {} bogon/CDN), {} trails",
        report.merged, report.rows, report.below_minimum_feeds, report.whitelisted, report.bogon_cdn, trails
    ));
    if trails == 0 {
        return Err(BuildError::Empty);
    }
    let current = cfg.current.clone().unwrap_or_else(|| cfg.out.clone());
    if let Some(n) = current_len(&current) {
        if (trails as f64) < cfg.min_ratio * n as f64 {
            return Err(BuildError::Shrank {
                new: trails,
                current: n,
                ratio: cfg.min_ratio,
            });
        }
    }
    let meta = serde_json::json!({
        "built_at": now(),
        "sources": summary,
        "feeds": statuses.iter().map(|s| serde_json::json!({"name": s.name, "state": s.state, "rows": s.rows})).collect::<Vec<_>>(),
    });
    let version = compiled::write_file(
        &set,
        &CompileOptions {
            built_at: now(),
            signing_key: cfg.signing_key,
            meta,
        },
        &cfg.out,
    )
    .map_err(|e| BuildError::Write(e.to_string()))?;
    Ok(BuildOutcome {
        version,
        trails,
        feeds: statuses,
        summary: summary.join("; "),
    })
}
