//! The collector's current trail set, for `/api/check` ([`crate::check`]).
//!
//! [`TrailHolder`] is a swappable holder: readers take [`TrailHolder::current`] (an `Arc`,
//! cheap to clone, never blocked for long) and keep using that snapshot while a writer
//! [`TrailHolder::replace`]s it. At start the collector loads the `--trails` sources once in
//! the background ([`spawn_initial_load`]), the way the sensor does (`TrailSet::load`, the
//! default `LoadOptions` or Maltrail's data folder filters, the whitelist file); anything
//! that obtains a newer set later (a hot reload, a set distributed to a fleet) calls
//! `replace` with it and a version string of its choosing.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use xtrail_detect::trails::{LoadOptions, TrailSet};
use xtrail_detect::whitelist::Whitelist;

/// Where the collector's trails come from (`--trails`, `--whitelist`, `--maltrail-data`).
#[derive(Clone, Debug, Default)]
pub struct TrailConfig {
    /// Trail sources, as the sensor's `--trails`: trails.csv files, static trees, list files.
    pub paths: Vec<PathBuf>,
    /// Maltrail's whitelist file (the sensor's `--whitelist`).
    pub whitelist: Option<PathBuf>,
    /// Maltrail's data folder: its bogon/CDN ranges and whitelist filter static trails as
    /// Maltrail's updater does (`LoadOptions::with_maltrail_data`); its `whitelist.txt` is the
    /// whitelist when none is given.
    pub maltrail_data: Option<PathBuf>,
}

impl TrailConfig {
    /// Whether any trail source is configured.
    pub fn is_enabled(&self) -> bool {
        !self.paths.is_empty()
    }

    /// The whitelist file in effect: `whitelist`, else `maltrail_data/whitelist.txt`.
    pub fn whitelist_path(&self) -> Option<PathBuf> {
        self.whitelist.clone().or_else(|| {
            self.maltrail_data
                .as_ref()
                .map(|d| d.join("whitelist.txt"))
                .filter(|p| p.is_file())
        })
    }
}

/// One trail set and what is known about it.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The trails.
    pub trails: Arc<TrailSet>,
    /// Whatever its producer calls it (the initial load: `local <RFC 3339 load time>`).
    pub version: String,
    /// When it was installed, microseconds since the epoch.
    pub installed_us: i64,
}

/// Why there is no trail set to answer from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unavailable {
    /// No trail source is configured.
    NotConfigured,
    /// The first load is still running.
    Loading,
    /// The first load failed (the message says why).
    Failed(String),
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unavailable::NotConfigured => f.write_str(
                "no trails configured: start the collector with --trails PATH (or trails = [...] in its config file)",
            ),
            Unavailable::Loading => f.write_str("trails are still loading; retry in a few seconds"),
            Unavailable::Failed(e) => write!(f, "loading trails failed: {e}"),
        }
    }
}

#[derive(Debug)]
struct State {
    current: Result<Snapshot, Unavailable>,
    whitelist: Arc<Whitelist>,
}

/// The current trail set and whitelist, swappable while readers use them.
#[derive(Debug)]
pub struct TrailHolder {
    state: RwLock<State>,
}

impl TrailHolder {
    /// A holder with nothing in it yet, for the given reason.
    pub fn new(reason: Unavailable) -> Self {
        TrailHolder {
            state: RwLock::new(State {
                current: Err(reason),
                whitelist: Arc::new(Whitelist::empty()),
            }),
        }
    }

    /// The current set, or why there is none.
    pub fn current(&self) -> Result<Snapshot, Unavailable> {
        self.read().current.clone()
    }

    /// The whitelist consulted with the set.
    pub fn whitelist(&self) -> Arc<Whitelist> {
        Arc::clone(&self.read().whitelist)
    }

    /// Installs a new set; readers holding the old one finish with it.
    pub fn replace(&self, trails: Arc<TrailSet>, version: String) {
        let snap = Snapshot {
            trails,
            version,
            installed_us: crate::now_us(),
        };
        self.write().current = Ok(snap);
    }

    /// Installs `trails` only if no set was installed yet (the start-up load must not
    /// overwrite a newer set that arrived while it ran); true if it was installed.
    pub fn install_if_empty(&self, trails: Arc<TrailSet>, version: String) -> bool {
        let mut s = self.write();
        if s.current.is_ok() {
            return false;
        }
        s.current = Ok(Snapshot {
            trails,
            version,
            installed_us: crate::now_us(),
        });
        true
    }

    /// Installs a new whitelist.
    pub fn replace_whitelist(&self, whitelist: Arc<Whitelist>) {
        self.write().whitelist = whitelist;
    }

    /// Records why the set is unavailable (only while no set was ever installed).
    pub fn set_unavailable(&self, reason: Unavailable) {
        let mut s = self.write();
        if s.current.is_err() {
            s.current = Err(reason);
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // A writer cannot panic half-way (it assigns one field): a poisoned lock holds a
        // consistent state.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Loads the configured trails and whitelist, as the sensor does.
pub fn load(cfg: &TrailConfig) -> anyhow::Result<(TrailSet, Whitelist)> {
    use anyhow::Context as _;
    let opts = match &cfg.maltrail_data {
        Some(dir) => LoadOptions::with_maltrail_data(dir)
            .with_context(|| format!("reading Maltrail data folder {}", dir.display()))?,
        None => LoadOptions::default(),
    };
    let trails = TrailSet::load(&cfg.paths, &opts)?;
    let whitelist = match cfg.whitelist_path() {
        Some(p) => {
            Whitelist::load(&p).with_context(|| format!("reading whitelist {}", p.display()))?
        }
        None => Whitelist::empty(),
    };
    Ok((trails, whitelist))
}

/// A holder filled by a background load of `cfg` (empty and `NotConfigured` without trails).
pub fn spawn_initial_load(cfg: &TrailConfig) -> Arc<TrailHolder> {
    if !cfg.is_enabled() {
        return Arc::new(TrailHolder::new(Unavailable::NotConfigured));
    }
    let holder = Arc::new(TrailHolder::new(Unavailable::Loading));
    let (h, cfg) = (Arc::clone(&holder), cfg.clone());
    let spawned = std::thread::Builder::new()
        .name("trail-load".into())
        .spawn(move || {
            let started = std::time::Instant::now();
            match load(&cfg) {
                Ok((trails, whitelist)) => {
                    log::info!(
                        "trails for /api/check loaded in {:.2}s: {}",
                        started.elapsed().as_secs_f64(),
                        trails.report
                    );
                    h.replace_whitelist(Arc::new(whitelist));
                    let version = format!(
                        "local {}",
                        xtrail_detect::event::format_rfc3339(crate::now_us())
                    );
                    if !h.install_if_empty(Arc::new(trails), version) {
                        log::info!("a newer trail set arrived during the start-up load; kept it");
                    }
                }
                Err(e) => {
                    log::error!("loading trails for /api/check: {e:#}");
                    h.set_unavailable(Unavailable::Failed(format!("{e:#}")));
                }
            }
        });
    if let Err(e) = spawned {
        holder.set_unavailable(Unavailable::Failed(format!("starting the loader: {e}")));
    }
    holder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_swaps_for_new_readers_only() {
        let h = TrailHolder::new(Unavailable::Loading);
        assert_eq!(h.current().unwrap_err(), Unavailable::Loading);
        h.replace(Arc::new(TrailSet::default()), "v1".into());
        let old = h.current().unwrap();
        h.replace(Arc::new(TrailSet::default()), "v2".into());
        assert_eq!(old.version, "v1");
        assert_eq!(h.current().unwrap().version, "v2");
        // A failure after a set was installed does not hide the set, nor does a late
        // start-up load replace it.
        h.set_unavailable(Unavailable::Failed("x".into()));
        assert!(!h.install_if_empty(Arc::new(TrailSet::default()), "v0".into()));
        assert_eq!(h.current().unwrap().version, "v2");
        let e = TrailHolder::new(Unavailable::Loading);
        assert!(e.install_if_empty(Arc::new(TrailSet::default()), "v0".into()));
    }
}
