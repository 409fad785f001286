//! Hot reload of the trail set while traffic flows.
//!
//! A [`Reloader`] thread waits for a reason to reload (SIGHUP, a change of a watched trail
//! file, a set pushed by the collector), then:
//!
//! 1. loads the new set from the configured sources beside the current one (the current
//!    set keeps matching meanwhile);
//! 2. refuses it, keeping the current set, if it failed to load, is empty, or shrank below
//!    [`ReloadOptions::min_ratio`] of the current one (Maltrail's `TRAIL_RELOAD_MIN_RATIO`);
//! 3. fills the inactive kernel map set ([`KernelTrailSets`]; a compiled set's body checksum
//!    is still being computed meanwhile, and a set that fails it is refused before anything
//!    of it is used) and publishes the new set to
//!    userspace: [`HitSets`] (labels of kernel hits, by map set) and [`SharedTrails`] (the
//!    detector's set, taken between two packets);
//! 4. switches the kernel to the new map set with one write;
//! 5. after the grace period, and once the live loop has drained every hit of the old map
//!    set, empties the old kernel set and drops the old userspace set.
//!
//! At most two sets exist at once, plus the loader's temporaries; the peak RSS of each
//! reload is logged.

use std::collections::VecDeque;
use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use xtrail_detect::shared_trails::{SharedTrails, VersionedTrails};
use xtrail_detect::trails::{compiled, CompiledSet, LoadOptions, LoadReport, TrailSet};

use crate::trail_maps::{KernelTrailSets, GRACE};

/// Why a reload was refused or failed; the current set stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("loading the trails: {0}")]
    Load(String),
    #[error("the new set is empty")]
    Empty,
    #[error(
        "the new set has {new} trails, fewer than {ratio} of the current {current} (min ratio; --trail-min-ratio changes it)"
    )]
    Shrunk {
        new: usize,
        current: usize,
        ratio: f64,
    },
    #[error("{0}")]
    Kernel(#[from] crate::trail_maps::TrailMapError),
}

/// Trails in a set, all kinds together (for the shrink rule).
pub fn trail_count(r: &LoadReport) -> usize {
    r.ipv4 + r.ipv6 + r.ipport + r.cidr4 + r.cidr6 + r.domains + r.urls + r.regexes
}

/// A version for a set loaded from `sources`: `files-` and the newest modification time
/// among them, in microseconds since the Unix epoch (sensors reading the same files agree,
/// and a rewritten file gives another version).
pub fn version_of(sources: &[PathBuf]) -> String {
    format!("files-{}", newest_mtime_us(sources))
}

fn newest_mtime_us(sources: &[PathBuf]) -> u64 {
    fn newest(p: &Path, depth: usize) -> u64 {
        let Ok(meta) = std::fs::metadata(p) else {
            return 0;
        };
        let own = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_micros() as u64);
        if !meta.is_dir() || depth > 16 {
            return own;
        }
        let children = std::fs::read_dir(p).into_iter().flatten().flatten();
        children.fold(own, |m, e| m.max(newest(&e.path(), depth + 1)))
    }
    sources
        .iter()
        .map(|p| newest(p, 0))
        .max()
        .unwrap_or(0)
        .max(1)
}

/// Loads a set from `sources` as `run` does: one compiled set (checked, and with a key
/// its signature required), or trail text files and trees.
pub fn load_sources(
    sources: &[PathBuf],
    public_key: Option<&[u8; 32]>,
) -> Result<(TrailSet, String), ReloadError> {
    let (trails, version, check) = load_sources_checking(sources, public_key)?;
    if let Some(check) = check {
        check.wait()?;
    }
    Ok((trails, version))
}

/// [`load_sources`] with a compiled set's body checksum still being computed on another
/// thread: the set must not be used for detection (nor its kernel maps attached) before
/// [`TrailCheck::wait`] returned `Ok`. `None` for text sources (nothing pending).
pub fn load_sources_checking(
    sources: &[PathBuf],
    public_key: Option<&[u8; 32]>,
) -> Result<(TrailSet, String, Option<TrailCheck>), ReloadError> {
    if let Some(p) = sources.iter().find(|p| compiled::is_compiled(p)) {
        if sources.len() > 1 {
            return Err(ReloadError::Load(format!(
                "{} is a compiled trail set: it must be the only source",
                p.display()
            )));
        }
        let (set, check) = CompiledSet::open_checking(p, public_key)
            .map_err(|e| ReloadError::Load(format!("{}: {e}", p.display())))?;
        let version = set.version().to_string();
        let check = TrailCheck {
            path: p.clone(),
            check,
        };
        return Ok((set.into_trails(), version, Some(check)));
    }
    let version = version_of(sources);
    let trails = TrailSet::load(sources, &LoadOptions::default())
        .map_err(|e| ReloadError::Load(e.to_string()))?;
    Ok((trails, version, None))
}

/// A compiled set's body checksum being computed ([`load_sources_checking`]).
#[derive(Debug)]
pub struct TrailCheck {
    path: PathBuf,
    check: compiled::PendingCheck,
}

impl TrailCheck {
    /// The set file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The verdict, as [`load_sources`] words a refusal.
    pub fn wait(self) -> Result<(), ReloadError> {
        self.check
            .wait()
            .map_err(|e| ReloadError::Load(format!("{}: {e}", self.path.display())))
    }
}

/// (modification time, size) of every source, to notice a change.
fn stamp(sources: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    sources
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

/// Per kernel map set, the userspace set whose labels its `trail_id`s index, and a counter
/// of the live loop's drains (a reload waits for it to move before it drops a set).
#[derive(Debug, Default)]
pub struct HitSets {
    slots: [ArcSwapOption<VersionedTrails>; 2],
    drains: AtomicU64,
    /// Per map set, the drain count from which every record of its index the live loop
    /// reads was made against the set it holds now: the records of a set the kernel
    /// switched away from at drain count `d` are all read by drain `d + 2`, even when a
    /// reload stopped waiting for that (a live loop stalled for seconds).
    fresh_from: [AtomicU64; 2],
    /// The `TRAIL_SET` value written last (its epoch dates AF_XDP frames' verdicts).
    selected: AtomicU32,
}

impl HitSets {
    /// Starts with `current` in map set 0, made the active set by the `TRAIL_SET` write of
    /// value `selected` (`Sensor::selected`).
    pub fn new(current: Arc<VersionedTrails>, selected: u32) -> Self {
        let sets = HitSets::default();
        sets.slots[0].store(Some(current));
        sets.selected(selected);
        sets
    }

    /// The set behind map set `index`.
    pub fn get(&self, index: u8) -> Option<Arc<VersionedTrails>> {
        self.slots[usize::from(index & 1)].load_full()
    }

    /// Whether map set `index` holds `trails` (the very set, by pointer): read through an
    /// arc-swap guard, without cloning the `Arc` (no reference count traffic in the common
    /// case).
    pub fn holds(&self, index: u8, trails: &Arc<TrailSet>) -> bool {
        let slot = self.slots[usize::from(index & 1)].load();
        slot.as_ref()
            .is_some_and(|s| Arc::ptr_eq(&s.trails, trails))
    }

    /// The kernel's `TRAIL_SET` is now `value` (written before this call).
    pub fn selected(&self, value: u32) {
        self.selected.store(value, Ordering::Release);
    }

    /// The `TRAIL_SET` value written last, as far as [`HitSets::selected`] said.
    pub fn selector(&self) -> u32 {
        self.selected.load(Ordering::Acquire)
    }

    fn put(&self, index: u8, set: Option<Arc<VersionedTrails>>) {
        self.slots[usize::from(index & 1)].store(set);
    }

    /// The live loop read every ring buffer empty once more.
    pub fn drained(&self) {
        self.drains.fetch_add(1, Ordering::Release);
    }

    /// The kernel no longer uses map set `index` (its records made so far are stale once
    /// the set is refilled).
    pub fn switched_away(&self, index: u8) {
        let d = self.drains.load(Ordering::Acquire);
        self.fresh_from[usize::from(index & 1)].store(d + 2, Ordering::Release);
    }

    /// Whether every record of map set `index` still unread was made against the set it
    /// holds now ([`HitSets::switched_away`]).
    pub fn fresh(&self, index: u8) -> bool {
        self.drains.load(Ordering::Acquire)
            >= self.fresh_from[usize::from(index & 1)].load(Ordering::Acquire)
    }

    /// Waits (bounded) until the live loop drained twice more: every record written before
    /// the call has then been read.
    fn wait_drained(&self, stop: &AtomicBool) {
        let start = self.drains.load(Ordering::Acquire);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.drains.load(Ordering::Acquire) < start + 2
            && Instant::now() < deadline
            && !stop.load(Ordering::Relaxed)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Reload requests from other threads (the collector link), taken by the reloader.
#[derive(Debug, Default)]
pub struct Inbox {
    queue: Mutex<VecDeque<Request>>,
    /// Wakes the reload thread (set by [`Reloader::start`], replaced by a later start).
    waker: Mutex<Option<Waker>>,
}

impl Inbox {
    /// Queues a request and wakes the reload thread.
    pub fn push(&self, r: Request) {
        if let Ok(mut q) = self.queue.lock() {
            q.push_back(r);
        }
        if let Some(w) = self.waker.lock().ok().as_deref().and_then(Option::as_ref) {
            w.wake();
        }
    }

    fn pop(&self) -> Option<Request> {
        self.queue.lock().ok()?.pop_front()
    }
}

/// The writing end of the reload thread's wake-up socket, beside the SIGHUP handler's: its
/// byte, [`WAKE`], wakes the thread without counting as a signal.
#[derive(Debug)]
struct Waker(UnixStream);

impl Waker {
    /// A byte for the thread; none is needed when one is already waiting (the socket is
    /// non-blocking: a full buffer is such a case).
    fn wake(&self) {
        let _ = (&self.0).write(&[WAKE]);
    }
}

/// How and from where the sensor reloads its trails.
#[derive(Clone, Debug)]
pub struct ReloadOptions {
    /// The trail sources (as at start).
    pub sources: Vec<PathBuf>,
    /// A new set with fewer trails than this share of the current one is refused.
    pub min_ratio: f64,
    /// Poll the sources' modification time and size and reload when they change.
    pub watch: bool,
    /// How often the watched sources are polled.
    pub watch_interval: Duration,
    /// Requests from elsewhere (collector pushes).
    pub inbox: Arc<Inbox>,
    /// A compiled set must be signed by this key (`--trails-public-key`).
    pub public_key: Option<[u8; 32]>,
}

impl Default for ReloadOptions {
    fn default() -> Self {
        ReloadOptions {
            sources: Vec::new(),
            min_ratio: 0.5,
            watch: false,
            watch_interval: Duration::from_secs(1),
            inbox: Arc::default(),
            public_key: None,
        }
    }
}

/// A reason to reload.
#[derive(Debug)]
pub enum Request {
    /// Reload from the configured sources (SIGHUP, a watched file, a command).
    Sources(&'static str),
    /// Install a set loaded elsewhere (the collector's, verified) as `version`.
    Install {
        why: &'static str,
        version: String,
        trails: Box<TrailSet>,
    },
}

/// Counters of the reloader, for the stats line.
#[derive(Debug, Default)]
pub struct ReloadStats {
    pub reloads: AtomicU64,
    pub refused: AtomicU64,
    /// Version of the set in use.
    pub version: Mutex<String>,
    /// Why the last refused reload was refused (empty before any).
    pub last_refusal: Mutex<String>,
}

impl ReloadStats {
    fn set_version(&self, v: &str) {
        if let Ok(mut g) = self.version.lock() {
            v.clone_into(&mut g);
        }
    }
}

/// The reload thread.
pub struct Reloader {
    thread: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    waker: Waker,
    sighup: Option<signal_hook::SigId>,
    pub stats: Arc<ReloadStats>,
}

struct Worker {
    opts: ReloadOptions,
    kernel: KernelTrailSets,
    shared: SharedTrails,
    hits: Arc<HitSets>,
    stats: Arc<ReloadStats>,
    stop: Arc<AtomicBool>,
    /// A byte arrives per SIGHUP (written by the signal handler) and a [`WAKE`] per request
    /// in the inbox or stop; reads time out when the watched sources are due (or after
    /// [`IDLE_WAIT`]), so the thread sleeps until it has something to do.
    wake: UnixStream,
}

/// The byte [`Waker`] writes; any other byte on the wake-up socket is the signal handler's.
const WAKE: u8 = b'W';

/// How long the reload thread sleeps when it watches no source (it is woken for anything
/// else: a signal, a request, stop).
const IDLE_WAIT: Duration = Duration::from_secs(5);

/// Resident set size and its peak since the last reset, in KiB (`/proc/self/status`).
pub fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Hands freed heap back to the kernel (glibc keeps it otherwise, and the RSS would stay
/// near its peak): after a reload, what the old set and the loader freed (the detector may
/// still hold the old set until its next packet; what it frees later is returned by the
/// next reload), and once at the start, before the rings are mapped.
pub(crate) fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Resets the peak RSS (`VmHWM`) to the current RSS.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

impl Reloader {
    /// Starts the thread. `kernel` are the program's map sets (set 0 active), `shared` and
    /// `hits` the sets userspace matches and labels with; SIGHUP requests a reload.
    pub fn start(
        opts: ReloadOptions,
        kernel: KernelTrailSets,
        shared: SharedTrails,
        hits: Arc<HitSets>,
    ) -> anyhow::Result<Reloader> {
        let stop = Arc::new(AtomicBool::new(false));
        let (wake, handler_end) = UnixStream::pair()?;
        // The handler sends without blocking; the other writers do the same.
        handler_end.set_nonblocking(true)?;
        let waker = Waker(handler_end.try_clone()?);
        if let Ok(mut w) = opts.inbox.waker.lock() {
            *w = Some(Waker(handler_end.try_clone()?));
        }
        let sig = signal_hook::low_level::pipe::register(signal_hook::consts::SIGHUP, handler_end)?;
        let stats = Arc::new(ReloadStats::default());
        stats.set_version(&shared.load().version);
        let worker = Worker {
            opts,
            kernel,
            shared,
            hits,
            stats: Arc::clone(&stats),
            stop: Arc::clone(&stop),
            wake,
        };
        let thread = std::thread::Builder::new()
            .name("xtrail-reload".into())
            .spawn(move || worker.run())?;
        Ok(Reloader {
            thread: Some(thread),
            stop,
            waker,
            sighup: Some(sig),
            stats,
        })
    }
}

impl Drop for Reloader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.waker.wake();
        if let Some(sig) = self.sighup.take() {
            signal_hook::low_level::unregister(sig);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Worker {
    /// Sleeps until woken or `timeout` passes; whether SIGHUP came (several signals since
    /// the last call, up to 64 bytes read, count once).
    fn wait(&mut self, timeout: Duration) -> bool {
        let mut buf = [0u8; 64];
        let _ = self
            .wake
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))));
        match self.wake.read(&mut buf) {
            Ok(0) => {
                // Every writer gone: cannot happen (the inbox this thread reads holds one).
                std::thread::sleep(IDLE_WAIT);
                false
            }
            Ok(n) => buf.get(..n).is_some_and(|b| b.iter().any(|&c| c != WAKE)),
            Err(_) => false,
        }
    }

    fn run(mut self) {
        let mut seen = stamp(&self.opts.sources);
        let mut changed_at: Option<Instant> = None;
        let mut last_poll = Instant::now();
        while !self.stop.load(Ordering::Acquire) {
            let mut request = self.opts.inbox.pop();
            // Until the watched sources are due (an early wake does not postpone them).
            let timeout = if self.opts.watch {
                (last_poll + self.opts.watch_interval).saturating_duration_since(Instant::now())
            } else {
                IDLE_WAIT
            };
            if request.is_none() && self.wait(timeout) {
                request = Some(Request::Sources("SIGHUP"));
            }
            if request.is_none()
                && self.opts.watch
                && last_poll.elapsed() >= self.opts.watch_interval
            {
                last_poll = Instant::now();
                let now = stamp(&self.opts.sources);
                if now != seen {
                    // Wait for one quiet interval: a file being written is not read half.
                    seen = now;
                    changed_at = Some(Instant::now());
                } else if changed_at.take().is_some() {
                    request = Some(Request::Sources("trail file changed"));
                }
            }
            if let Some(r) = request {
                if matches!(r, Request::Sources(_)) {
                    seen = stamp(&self.opts.sources);
                }
                self.handle(r);
            }
        }
    }

    fn handle(&mut self, request: Request) {
        let why = match &request {
            Request::Sources(w) | Request::Install { why: w, .. } => *w,
        };
        reset_peak_rss();
        let (rss_before, _) = rss_kib();
        let started = Instant::now();
        match self.reload(request) {
            Ok(line) => {
                let (rss_after, peak) = rss_kib();
                self.stats.reloads.fetch_add(1, Ordering::Relaxed);
                eprintln!(
                    "xtrail-sensor: trails reloaded ({why}) in {:.2}s: {line}; RSS before {} MiB, peak {} MiB, after {} MiB",
                    started.elapsed().as_secs_f64(),
                    rss_before / 1024,
                    peak / 1024,
                    rss_after / 1024
                );
            }
            Err(e) => {
                if let Ok(mut g) = self.stats.last_refusal.lock() {
                    *g = e.to_string();
                }
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                eprintln!(
                    "xtrail-sensor: trail reload ({why}) refused, keeping version {}: {e}",
                    self.shared.load().version
                );
            }
        }
    }

    fn reload(&mut self, request: Request) -> Result<String, ReloadError> {
        let load_started = Instant::now();
        let current = self.shared.load();
        // A compiled set's checksum is still being computed while the inactive kernel set
        // is filled (never selected before the check passed); userspace gets it after.
        let (version, trails, check) = match request {
            Request::Sources(_) => {
                let (trails, version, check) =
                    load_sources_checking(&self.opts.sources, self.opts.public_key.as_ref())?;
                (version, trails, check)
            }
            Request::Install {
                version, trails, ..
            } => (version, *trails, None),
        };
        let load_time = load_started.elapsed();
        let new = trail_count(&trails.report);
        let old = trail_count(&current.trails.report);
        let refusal = if new == 0 {
            Some(ReloadError::Empty)
        } else if (new as f64) < (old as f64) * self.opts.min_ratio {
            Some(ReloadError::Shrunk {
                new,
                current: old,
                ratio: self.opts.min_ratio,
            })
        } else {
            None
        };
        if let Some(refusal) = refusal {
            // A corrupt body may read as a tiny set: its checksum is the truer reason.
            if let Some(c) = check {
                c.wait()?;
            }
            return Err(refusal);
        }
        let next = Arc::new(VersionedTrails::new(version, Arc::new(trails)));
        let from = self.kernel.active();
        let to = from ^ 1;
        let fill_started = Instant::now();
        let filled = self
            .kernel
            .fill(to, &next.trails.ip)
            .map_err(ReloadError::from);
        // A corrupt body may fail the fill too: its checksum is the truer reason.
        let checked = match check {
            Some(c) => c.wait(),
            None => Ok(()),
        };
        let (fill, flags) = match checked.and(filled) {
            Ok(f) => f,
            Err(e) => {
                if let Err(c) = self.kernel.clear(to) {
                    log::error!("emptying the inactive trail map set: {c}");
                }
                return Err(e);
            }
        };
        let fill_time = fill_started.elapsed();
        // Labels for the new map set's hits first, then the detector's set, then the kernel.
        self.hits.put(to, Some(Arc::clone(&next)));
        self.shared.store(Arc::clone(&next));
        drop(current);
        self.kernel.select(to, flags)?;
        self.hits.selected(self.kernel.selected());
        self.hits.switched_away(from);
        let live = load_started.elapsed();
        self.stats.set_version(&next.version);
        let version = next.version.clone();
        let report = next.trails.report.to_string();
        drop(next);
        // No packet is inside the old set after the grace period; no hit of it is unread
        // once the live loop has drained twice.
        std::thread::sleep(GRACE);
        self.hits.wait_drained(&self.stop);
        let clear_started = Instant::now();
        let cleared = match self.hits.get(from) {
            Some(old) => self.kernel.clear_filled(from, &old.trails.ip)?,
            None => self.kernel.clear(from)?,
        };
        self.hits.put(from, None);
        release_freed_memory();
        Ok(format!(
            "version {version} in map set {to}: {report}; load {:.3}s, kernel fill {:.3}s ({} IPv4, {} IPv6, {} IP:port, {} CIDR), new set live after {:.3}s, old set emptied ({cleared} entries) in {:.3}s",
            load_time.as_secs_f64(),
            fill_time.as_secs_f64(),
            fill.ipv4,
            fill.ipv6,
            fill.ipport,
            fill.cidr4 + fill.cidr6,
            live.as_secs_f64(),
            clear_started.elapsed().as_secs_f64()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A map set the kernel switched away from vouches for its records only after the live
    /// loop drained twice since: until then records of the set it held may be unread.
    #[test]
    fn a_set_switched_away_from_is_fresh_after_two_drains() {
        let sets = HitSets::default();
        assert!(sets.fresh(0) && sets.fresh(1));
        sets.drained();
        sets.switched_away(1);
        assert!(sets.fresh(0) && !sets.fresh(1));
        sets.drained();
        assert!(!sets.fresh(1));
        sets.drained();
        assert!(sets.fresh(1) && sets.fresh(0));
    }
}
