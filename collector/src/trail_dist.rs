//! Trail distribution: the `Trails` gRPC service (`proto/xtrail/v1/trails.proto`).
//!
//! The collector is given a compiled, signed trail set (`--trail-set PATH`, built by
//! `xtrail-trails build`), reads it whole, checks its format and checksum, and serves its
//! bytes to sensors: `Current` (the version), `Fetch` (the file in 1 MiB chunks) and `Watch`
//! (the version now, then each new one). It rereads the file on SIGHUP and when its
//! modification time or size changes (polled every second, installed after one quiet
//! second), keeps serving the previous set if the new file is unreadable or damaged, and
//! hands each new set to the `/api/check` holder ([`crate::trails::TrailHolder`]).
//!
//! Sensors verify the signature themselves; the collector only relays. Which sensor runs
//! which version is recorded from the `running_version` of their requests and exported as
//! `xtrail_sensor_trail_set{sensor,version} 1`.
//!
//! The last [`KEEP`] sets served are kept so that a sensor running one of them gets a delta
//! (`FetchDelta`, [`xtrail_detect::trails::delta`]) instead of the whole file, when the delta
//! is smaller. Deltas are computed once per (from, to) pair and counted in
//! `xtrail_trail_deltas_served_total`; full transfers in `xtrail_trail_sets_served_total`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};
use xtrail_detect::trails::compiled::{self, CompiledSet};
use xtrail_detect::trails::delta;
use xtrail_proto::v1::trails_server::Trails;
use xtrail_proto::v1::{FetchRequest, TrailSetChunk, TrailSetInfo, TrailsRequest};

use crate::trails::TrailHolder;

/// Bytes per `Fetch` chunk.
pub const CHUNK: usize = 1 << 20;
/// Sets kept for deltas, the current one included.
pub const KEEP: usize = 3;

/// One set as served.
#[derive(Debug)]
pub struct Served {
    pub info: TrailSetInfo,
    pub bytes: Vec<u8>,
}

impl AsRef<[u8]> for Served {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// What a sensor said it runs, and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SensorVersion {
    pub version: String,
    pub seen_us: i64,
}

/// The set being served and the sensors' versions.
#[derive(Debug)]
pub struct TrailDist {
    current: watch::Sender<Option<Arc<Served>>>,
    sensors: Mutex<BTreeMap<String, SensorVersion>>,
    /// The last [`KEEP`] sets installed, newest last.
    kept: Mutex<VecDeque<Arc<Served>>>,
    /// Deltas to the current set by base version (`None`: not smaller than the set).
    deltas: Mutex<HashMap<String, Option<Arc<Vec<u8>>>>>,
    deltas_served: AtomicU64,
    sets_served: AtomicU64,
}

/// Reads and checks a compiled set file (format, length, checksum).
pub fn read_set(path: &Path) -> anyhow::Result<Served> {
    use anyhow::Context as _;
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let header = compiled::verify_bytes(&bytes, None)
        .with_context(|| format!("{} is not a usable compiled trail set", path.display()))?;
    let info = TrailSetInfo {
        version: header.version,
        size: bytes.len() as u64,
        sha256: Sha256::digest(&bytes).to_vec(),
        signed: header.signer.is_some(),
        installed_us: crate::now_us(),
    };
    Ok(Served { info, bytes })
}

impl Default for TrailDist {
    fn default() -> Self {
        TrailDist {
            current: watch::Sender::new(None),
            sensors: Mutex::default(),
            kept: Mutex::default(),
            deltas: Mutex::default(),
            deltas_served: AtomicU64::new(0),
            sets_served: AtomicU64::new(0),
        }
    }
}

impl TrailDist {
    /// The set served now.
    pub fn current(&self) -> Option<Arc<Served>> {
        self.current.borrow().clone()
    }

    /// Serves `set` from now on (watchers are told).
    pub fn install(&self, set: Served) {
        let set = Arc::new(set);
        if let Ok(mut kept) = self.kept.lock() {
            kept.retain(|k| k.info.version != set.info.version);
            kept.push_back(Arc::clone(&set));
            while kept.len() > KEEP {
                kept.pop_front();
            }
        }
        if let Ok(mut d) = self.deltas.lock() {
            d.clear();
        }
        self.current.send_replace(Some(set));
    }

    /// The delta from `base` (a kept version) to `to` (the current set), if it is smaller
    /// than the set. Computed once per base.
    pub fn delta_to(&self, base: &str, to: &Served) -> Option<Arc<Vec<u8>>> {
        if let Some(d) = self.deltas.lock().ok()?.get(base) {
            return d.clone();
        }
        let from = self
            .kept
            .lock()
            .ok()?
            .iter()
            .find(|k| k.info.version == base)
            .cloned()?;
        if from.info.version == to.info.version {
            return None;
        }
        let d = delta::diff(&from.bytes, &to.bytes);
        let d = (d.len() < to.bytes.len()).then(|| Arc::new(d));
        let mut cache = self.deltas.lock().ok()?;
        // Cache only while `to` is still current (install clears the cache).
        if self
            .current()
            .is_some_and(|c| c.info.version == to.info.version)
        {
            cache.insert(base.to_string(), d.clone());
        }
        d
    }

    /// Records that `sensor` runs `version`.
    pub fn record(&self, sensor: &str, version: &str) {
        if sensor.is_empty() || sensor.len() > 256 || version.len() > 128 {
            return;
        }
        if let Ok(mut m) = self.sensors.lock() {
            // Bounded: a sensor name is a credential's or a configured one; cap anyway.
            if m.len() >= 65_536 && !m.contains_key(sensor) {
                return;
            }
            m.insert(
                sensor.to_string(),
                SensorVersion {
                    version: version.to_string(),
                    seen_us: crate::now_us(),
                },
            );
        }
    }

    /// Which sensor runs which version (as last reported).
    pub fn sensors(&self) -> BTreeMap<String, SensorVersion> {
        self.sensors.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Prometheus lines: `xtrail_sensor_trail_set{sensor,version} 1` per sensor, the
    /// version served, and the full sets and deltas sent.
    pub fn render_metrics(&self) -> String {
        let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let mut out = format!(
            "# HELP xtrail_trail_sets_served_total Full trail sets sent to sensors.\n# TYPE xtrail_trail_sets_served_total counter\nxtrail_trail_sets_served_total {}\n# HELP xtrail_trail_deltas_served_total Trail set deltas sent to sensors.\n# TYPE xtrail_trail_deltas_served_total counter\nxtrail_trail_deltas_served_total {}\n",
            self.sets_served.load(Ordering::Relaxed),
            self.deltas_served.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP xtrail_sensor_trail_set The trail set version each sensor last reported running (1).\n# TYPE xtrail_sensor_trail_set gauge\n",
        );
        for (sensor, v) in self.sensors() {
            out.push_str(&format!(
                "xtrail_sensor_trail_set{{sensor=\"{}\",version=\"{}\"}} 1\n",
                esc(&sensor),
                esc(&v.version)
            ));
        }
        if let Some(c) = self.current() {
            out.push_str(&format!(
                "# HELP xtrail_trail_set_served The trail set version the collector serves (1).\n# TYPE xtrail_trail_set_served gauge\nxtrail_trail_set_served{{version=\"{}\"}} 1\n",
                esc(&c.info.version)
            ));
        }
        out
    }

    /// Loads `path` now (an error if it cannot be served), then follows it on a thread:
    /// SIGHUP or a changed file rereads it; a bad file keeps the current set. Each set is
    /// also installed in `holder` for `/api/check`.
    pub fn follow(self: &Arc<Self>, path: PathBuf, holder: Arc<TrailHolder>) -> anyhow::Result<()> {
        let first = read_set(&path)?;
        log::info!(
            "serving trail set {} ({} bytes, {}) from {}",
            first.info.version,
            first.info.size,
            if first.info.signed {
                "signed"
            } else {
                "unsigned"
            },
            path.display()
        );
        self.install(first);
        if let Some(c) = self.current() {
            check_holder(&path, &c, &holder);
        }
        let sighup = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&sighup))?;
        let me = Arc::clone(self);
        std::thread::Builder::new()
            .name("trail-set".into())
            .spawn(move || me.watch_file(&path, &sighup, &holder))?;
        Ok(())
    }

    fn watch_file(&self, path: &Path, sighup: &AtomicBool, holder: &Arc<TrailHolder>) {
        let stamp = |p: &Path| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        };
        let mut seen = stamp(path);
        let mut changed: Option<Instant> = None;
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let now = stamp(path);
            let mut reload = sighup.swap(false, Ordering::Relaxed);
            if now != seen {
                seen = now;
                changed = Some(Instant::now());
            } else if changed.is_some_and(|t| t.elapsed() >= Duration::from_secs(1)) {
                changed = None;
                reload = true;
            }
            if !reload {
                continue;
            }
            match read_set(path) {
                Ok(set) => {
                    let same = self
                        .current()
                        .is_some_and(|c| c.info.sha256 == set.info.sha256);
                    if same {
                        continue;
                    }
                    log::info!(
                        "serving new trail set {} ({} bytes) from {}",
                        set.info.version,
                        set.info.size,
                        path.display()
                    );
                    self.install(set);
                    if let Some(c) = self.current() {
                        check_holder(path, &c, holder);
                    }
                }
                Err(e) => {
                    log::error!("trail set not changed, still serving the current one: {e:#}")
                }
            }
        }
    }
}

/// Installs the set at `path` for `/api/check`, if it is still the one just served (a file
/// replaced in between is left to the watcher, which sees it change and reloads both).
fn check_holder(path: &Path, served: &Served, holder: &TrailHolder) {
    match CompiledSet::open(path, None) {
        Ok(set) => {
            let same = compiled::read_header(&served.bytes)
                .is_ok_and(|h| h.body_sha256 == set.header().body_sha256);
            if !same {
                log::warn!(
                    "{} changed while it was loaded; /api/check keeps its set until the next reload",
                    path.display()
                );
                return;
            }
            let version = set.version().to_string();
            holder.replace(Arc::new(set.into_trails()), version);
        }
        Err(e) => log::error!("trail set for /api/check: {e}"),
    }
}

/// The `Trails` service.
#[derive(Clone, Debug)]
pub struct TrailsService {
    pub dist: Arc<TrailDist>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// `bytes` as a stream of chunks; the first carries `info` (and the length, for a delta).
fn chunked<B: AsRef<[u8]> + Send + Sync + 'static>(
    bytes: Arc<B>,
    info: TrailSetInfo,
    is_delta: bool,
) -> BoxStream<TrailSetChunk> {
    let len = (*bytes).as_ref().len();
    let chunks = len.div_ceil(CHUNK).max(1);
    Box::pin(tokio_stream::iter(0..chunks).map(move |i| {
        let b = (*bytes).as_ref();
        let start = i * CHUNK;
        let end = (start + CHUNK).min(len);
        Ok(TrailSetChunk {
            info: (i == 0).then(|| info.clone()),
            offset: start as u64,
            data: b[start..end].to_vec(),
            delta_size: if i == 0 && is_delta { len as u64 } else { 0 },
        })
    }))
}

fn none_yet() -> Status {
    Status::not_found("this collector serves no trail set (start it with --trail-set PATH)")
}

/// Records the asking sensor's version and answers the set being served, refusing a request
/// for a version that is no longer it.
fn requested(dist: &TrailDist, r: &FetchRequest) -> Result<Arc<Served>, Status> {
    dist.record(&r.sensor, &r.running_version);
    let set = dist.current().ok_or_else(none_yet)?;
    if !r.version.is_empty() && r.version != set.info.version {
        return Err(Status::failed_precondition(format!(
            "version {} is no longer served (now {})",
            r.version, set.info.version
        )));
    }
    Ok(set)
}

#[tonic::async_trait]
impl Trails for TrailsService {
    async fn current(
        &self,
        request: Request<TrailsRequest>,
    ) -> Result<Response<TrailSetInfo>, Status> {
        let r = request.into_inner();
        self.dist.record(&r.sensor, &r.running_version);
        let set = self.dist.current().ok_or_else(none_yet)?;
        Ok(Response::new(set.info.clone()))
    }

    type FetchStream = BoxStream<TrailSetChunk>;

    async fn fetch(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<Self::FetchStream>, Status> {
        let r = request.into_inner();
        let set = requested(&self.dist, &r)?;
        self.dist.sets_served.fetch_add(1, Ordering::Relaxed);
        let info = set.info.clone();
        Ok(Response::new(chunked(set, info, false)))
    }

    type FetchDeltaStream = BoxStream<TrailSetChunk>;

    async fn fetch_delta(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<Self::FetchDeltaStream>, Status> {
        let r = request.into_inner();
        let set = requested(&self.dist, &r)?;
        let dist = Arc::clone(&self.dist);
        let target = Arc::clone(&set);
        let base = r.running_version.clone();
        let d = tokio::task::spawn_blocking(move || dist.delta_to(&base, &target))
            .await
            .map_err(|e| Status::internal(format!("delta: {e}")))?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no delta from {:?} to {} (not kept, or not smaller than the set)",
                    r.running_version, set.info.version
                ))
            })?;
        self.dist.deltas_served.fetch_add(1, Ordering::Relaxed);
        log::info!(
            "trail set delta {} -> {} ({} bytes for a {}-byte set) to {}",
            r.running_version,
            set.info.version,
            d.len(),
            set.info.size,
            r.sensor
        );
        Ok(Response::new(chunked(d, set.info.clone(), true)))
    }

    type WatchStream = BoxStream<TrailSetInfo>;

    async fn watch(
        &self,
        request: Request<TrailsRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let r = request.into_inner();
        self.dist.record(&r.sensor, &r.running_version);
        let rx = self.dist.current.subscribe();
        let stream = tokio_stream::wrappers::WatchStream::new(rx)
            .filter_map(|set| set.map(|s| Ok(s.info.clone())));
        Ok(Response::new(Box::pin(stream)))
    }
}
