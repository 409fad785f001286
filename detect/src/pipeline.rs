//! The one detection pipeline. Replay, the live sensor's ring-buffer copies (inline), its
//! AF_XDP frames (mirror) and its kernel IP hits all enter a [`Detector`], the only place
//! the stages are assembled:
//!
//! ```text
//! frame ──► decode ─► trail matching ─► heuristics ─► whitelist ─┐
//! flow start ─────────────────────────► heuristics ─► whitelist ─┤
//! kernel hit ──────────────────────────► whitelist ─► label rules┴─► throttle ─► flood guard ─► out
//! ```
//!
//! Every stateful stage (heuristic counters, the SYN dedupe, the throttle, the flood guard)
//! lives in the one `Detector`, so a packet's verdict never depends on which receive queue,
//! thread or capture path brought it: the live sensor feeds one `Detector` from all its
//! transports through bounded queues (what a full queue drops is counted), replay calls it
//! directly.
//!
//! The **flood guard** ([`FloodConfig`]) keeps the event rate leaving the sensor bounded
//! whatever the traffic: when more than [`FloodConfig::sources_per_trail`] distinct sources
//! hit one trail within [`FloodConfig::window_us`], further events of that trail are absorbed
//! and reported at the window's end as one aggregate event (`... (flood: N events from M
//! sources in 60s, e.g. a, b, c)`); and a token bucket ([`FloodConfig::budget_per_sec`],
//! [`FloodConfig::burst`]) caps everything else, its overflow reported per trail in at most
//! [`FloodConfig::max_overflow_reports`] summary events per window plus counters. Time comes
//! from the events, so replay and live agree.

use std::net::IpAddr;
use std::sync::Arc;

use hashbrown::{HashMap, HashSet};

use crate::event::{recycle, set_str, Event, EventType, SpareStrings};
use crate::heuristics::{
    FlowStart, HeuristicsConfig, HeuristicsError, MaltrailHeuristics, UaPatterns,
};
use crate::packet::PacketError;
use crate::process::{syn_hit_reported, Addresses, Processor, ProcessorConfig, ProcessorStats};
use crate::shared_trails::SharedTrails;
use crate::throttle::{Throttle, ThrottleConfig, ThrottleStats};
use crate::trails::TrailSet;
use crate::whitelist::Whitelist;

/// Settings of the flood guard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FloodConfig {
    /// Distinct sources of one trail within a window before the trail is aggregated (50,
    /// Maltrail's UI threshold for one flood).
    pub sources_per_trail: usize,
    /// Window length, microseconds (60 s).
    pub window_us: i64,
    /// Trails tracked at most; when full, finished windows are reported and forgotten, and
    /// new trails pass unaggregated (counted).
    pub capacity: usize,
    /// Sources named in an aggregate event.
    pub sample: usize,
    /// Events per second leaving the sensor, sustained (token bucket rate).
    pub budget_per_sec: u32,
    /// Events the bucket holds (bursts).
    pub burst: u32,
    /// Trails whose budget overflow is reported by an event per window; the rest only in
    /// the counters.
    pub max_overflow_reports: usize,
}

impl Default for FloodConfig {
    fn default() -> Self {
        FloodConfig {
            sources_per_trail: 50,
            window_us: 60_000_000,
            capacity: 65_536,
            sample: 5,
            budget_per_sec: 2_000,
            burst: 10_000,
            max_overflow_reports: 20,
        }
    }
}

/// Counters of the flood guard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FloodStats {
    /// Events absorbed into per-trail aggregates.
    pub aggregated: u64,
    /// Aggregate events written.
    pub aggregates: u64,
    /// Events over the rate budget (not written; counted per trail in overflow reports).
    pub over_budget: u64,
    /// Overflow report events written.
    pub overflow_reports: u64,
    /// Over-budget events of trails beyond `max_overflow_reports` (only counted here).
    pub unreported: u64,
    /// Trails passed unaggregated because the table was full.
    pub table_full: u64,
}

#[derive(Debug)]
struct TrailWindow {
    start_us: i64,
    sources: HashSet<IpAddr>,
    /// Set once the trail counts as a flood: events absorbed, distinct sources seen, and
    /// the last event (the aggregate is a copy of it).
    flood: Option<(u64, Vec<IpAddr>, Event)>,
}

#[derive(Debug, Default)]
struct Overflow {
    count: u64,
    last: Option<Event>,
}

/// A borrowed `(kind, trail)` key: looks up the guard's tables without copying the trail
/// (hashes as the owned tuple does).
#[derive(Hash)]
struct TrailKeyRef<'a>(EventType, &'a str);

impl hashbrown::Equivalent<(EventType, String)> for TrailKeyRef<'_> {
    fn equivalent(&self, key: &(EventType, String)) -> bool {
        self.0 == key.0 && self.1 == key.1
    }
}

/// The flood guard stage.
#[derive(Debug)]
pub struct FloodGuard {
    config: FloodConfig,
    trails: HashMap<(EventType, String), TrailWindow>,
    tokens: f64,
    last_ts: Option<i64>,
    overflow: HashMap<(EventType, String), Overflow>,
    overflow_start: Option<i64>,
    /// Last second at which finished windows were swept.
    swept_sec: Option<i64>,
    /// Keys and emptied source sets of finished windows, reused by new trails (at most
    /// [`SPARE_WINDOWS`] of each): a warm guard allocates nothing per event.
    spare_keys: SpareStrings,
    spare_sets: Vec<HashSet<IpAddr>>,
    stats: FloodStats,
}

/// Finished windows' key strings [`FloodGuard::spare_keys`] keeps.
const SPARE_WINDOWS: usize = 1024;
/// Source sets with room for more than this (a large flood's) are freed, not kept.
const SPARE_SET_CAPACITY: usize = 128;

impl FloodGuard {
    /// A guard with these settings.
    pub fn new(config: FloodConfig) -> Self {
        FloodGuard {
            config,
            trails: HashMap::new(),
            tokens: f64::from(config.burst),
            last_ts: None,
            overflow: HashMap::new(),
            overflow_start: None,
            swept_sec: None,
            spare_keys: SpareStrings::new(SPARE_WINDOWS),
            spare_sets: Vec::new(),
            stats: FloodStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> FloodStats {
        self.stats
    }

    /// Passes `event` to `out`, absorbs it into its trail's aggregate, or holds it back as
    /// over budget; writes due reports first.
    pub fn filter(&mut self, event: Event, out: &mut dyn FnMut(Event)) {
        self.flush(event.ts_us, out);
        if let Some(event) = self.aggregate(event) {
            self.spend(event, out);
        }
    }

    /// The per-trail step: the event back when it passes, `None` when it was absorbed (it
    /// becomes the aggregate's last event: moved, not copied).
    fn aggregate(&mut self, event: Event) -> Option<Event> {
        let cfg = self.config;
        let key = TrailKeyRef(event.kind, &event.trail);
        if !self.trails.contains_key(&key) {
            if self.trails.len() >= cfg.capacity {
                self.stats.table_full += 1;
                return Some(event);
            }
            let sources = self.spare_sets.pop().unwrap_or_default();
            self.trails.insert(
                (event.kind, self.spare_keys.copy(&event.trail)),
                TrailWindow {
                    start_us: event.ts_us,
                    sources,
                    flood: None,
                },
            );
        }
        let w = self
            .trails
            .get_mut(&TrailKeyRef(event.kind, &event.trail))?;
        if let Some((absorbed, sample, last)) = w.flood.as_mut() {
            *absorbed += 1;
            if sample.len() < cfg.sample && !sample.contains(&event.src_ip) {
                sample.push(event.src_ip);
            }
            w.sources.insert(event.src_ip);
            recycle(std::mem::replace(last, event));
            self.stats.aggregated += 1;
            return None;
        }
        if w.sources.len() <= cfg.sources_per_trail {
            w.sources.insert(event.src_ip);
        }
        if w.sources.len() > cfg.sources_per_trail {
            w.flood = Some((1, vec![event.src_ip], event));
            self.stats.aggregated += 1;
            return None;
        }
        Some(event)
    }

    /// The budget step.
    fn spend(&mut self, event: Event, out: &mut dyn FnMut(Event)) {
        let cfg = self.config;
        if let Some(last) = self.last_ts {
            let dt = event.ts_us.saturating_sub(last).max(0) as f64 / 1e6;
            self.tokens =
                (self.tokens + dt * f64::from(cfg.budget_per_sec)).min(f64::from(cfg.burst));
        }
        self.last_ts = Some(self.last_ts.map_or(event.ts_us, |l| l.max(event.ts_us)));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            out(event);
            return;
        }
        self.stats.over_budget += 1;
        self.overflow_start.get_or_insert(event.ts_us);
        let key = TrailKeyRef(event.kind, &event.trail);
        if !self.overflow.contains_key(&key) {
            if self.overflow.len() >= cfg.max_overflow_reports {
                self.stats.unreported += 1;
                recycle(event);
                return;
            }
            self.overflow
                .insert((event.kind, event.trail.clone()), Overflow::default());
        }
        if let Some(o) = self
            .overflow
            .get_mut(&TrailKeyRef(event.kind, &event.trail))
        {
            o.count += 1;
            if let Some(old) = o.last.replace(event) {
                recycle(old);
            }
        }
    }

    /// Writes the reports of windows that ended by `now_us`. Cheap to call per event: the
    /// table is walked at most once per second of `now_us` (as the throttle does).
    pub fn flush(&mut self, now_us: i64, out: &mut dyn FnMut(Event)) {
        let sec = now_us.div_euclid(1_000_000);
        if self.swept_sec.is_some_and(|s| s >= sec) {
            return;
        }
        self.swept_sec = Some(sec);
        self.sweep(now_us, out);
    }

    fn sweep(&mut self, now_us: i64, out: &mut dyn FnMut(Event)) {
        let window = self.config.window_us;
        let (stats, keys, sets) = (&mut self.stats, &mut self.spare_keys, &mut self.spare_sets);
        let done = |_: &(EventType, String), w: &mut TrailWindow| {
            now_us.saturating_sub(w.start_us) >= window
        };
        for ((_, trail), mut w) in self.trails.extract_if(done) {
            if let Some((absorbed, sample, last)) = w.flood.take() {
                stats.aggregates += 1;
                out(aggregate_event(
                    last,
                    absorbed,
                    w.sources.len(),
                    &sample,
                    window,
                ));
            }
            keys.keep(trail);
            if sets.len() < SPARE_WINDOWS && w.sources.capacity() <= SPARE_SET_CAPACITY {
                w.sources.clear();
                sets.push(w.sources);
            }
        }
        if self
            .overflow_start
            .is_some_and(|s| now_us.saturating_sub(s) >= window)
        {
            self.report_overflow(out);
        }
    }

    fn report_overflow(&mut self, out: &mut dyn FnMut(Event)) {
        self.overflow_start = None;
        let window_s = self.config.window_us / 1_000_000;
        let mut reports: Vec<_> = self.overflow.drain().collect();
        reports.sort_by(|a, b| b.1.count.cmp(&a.1.count).then_with(|| a.0 .1.cmp(&b.0 .1)));
        for (_, o) in reports {
            if let Some(mut ev) = o.last {
                ev.info = format!(
                    "{} (rate budget: {} more in {window_s}s not reported)",
                    ev.info, o.count
                );
                self.stats.overflow_reports += 1;
                out(ev);
            }
        }
    }

    /// Writes every pending report.
    pub fn finish(&mut self, out: &mut dyn FnMut(Event)) {
        self.sweep(i64::MAX, out);
        self.report_overflow(out);
    }

    /// Trails and overflow keys held.
    pub fn len(&self) -> usize {
        self.trails.len() + self.overflow.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn aggregate_event(
    mut last: Event,
    absorbed: u64,
    sources: usize,
    sample: &[IpAddr],
    window_us: i64,
) -> Event {
    let names: Vec<String> = sample.iter().map(ToString::to_string).collect();
    last.info = format!(
        "{} (flood: {absorbed} more events from {sources} sources in {}s, e.g. {})",
        last.info,
        window_us / 1_000_000,
        names.join(", ")
    );
    last
}

/// A trail hit found by the XDP program, as an event, with what the label rules need.
#[derive(Clone, Debug)]
pub struct KernelHit {
    /// The event as the kernel record describes it.
    pub event: Event,
    /// The packet was a TCP SYN.
    pub syn: bool,
    /// The trail matched the destination (else the source).
    pub trail_is_dst: bool,
}

/// Everything the pipeline is built from (one configuration, validated once).
#[derive(Clone)]
pub struct DetectorConfig {
    /// The trails.
    pub trails: Arc<TrailSet>,
    /// The whitelist.
    pub whitelist: Arc<Whitelist>,
    /// Sensor name and per-packet settings.
    pub processor: ProcessorConfig,
    /// Heuristics and their user-agent patterns; `None` runs trails only.
    pub heuristics: Option<(HeuristicsConfig, Arc<UaPatterns>)>,
    /// The throttle; `None` writes every event.
    pub throttle: Option<ThrottleConfig>,
    /// The flood guard; `None` leaves the rate unbounded.
    pub flood: Option<FloodConfig>,
    /// Maltrail's SYN label rules for kernel hits (replay applies them to its own hits).
    pub maltrail_syn_rules: bool,
}

impl std::fmt::Debug for DetectorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DetectorConfig")
            .field("processor", &self.processor)
            .field("heuristics", &self.heuristics.as_ref().map(|h| &h.0))
            .field("throttle", &self.throttle)
            .field("flood", &self.flood)
            .field("maltrail_syn_rules", &self.maltrail_syn_rules)
            .finish_non_exhaustive()
    }
}

/// Counters of the whole pipeline.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DetectorStats {
    /// The per-packet stages.
    pub processor: ProcessorStats,
    /// Kernel hits taken.
    pub kernel_hits: u64,
    /// Kernel hits dropped for a whitelisted address.
    pub hits_whitelisted: u64,
    /// Kernel hits dropped by Maltrail's SYN label rules.
    pub hits_filtered: u64,
    /// Flow starts taken.
    pub flow_starts: u64,
    /// The throttle.
    pub throttle: ThrottleStats,
    /// The flood guard.
    pub flood: FloodStats,
    /// Events written out.
    pub events: u64,
}

/// The pipeline: one per sensor (or replay), fed by every transport.
pub struct Detector {
    processor: Processor,
    whitelist: Arc<Whitelist>,
    throttle: Option<Throttle>,
    flood: Option<FloodGuard>,
    syn_rules: bool,
    kernel_hits: u64,
    hits_whitelisted: u64,
    hits_filtered: u64,
    flow_starts: u64,
    events: u64,
    /// The reloadable set this detector follows (hot reload), if any.
    shared: Option<SharedTrails>,
    /// Version of the set in use; written into the events that leave (empty: not known).
    trail_set_version: Arc<str>,
    /// The `SharedTrails` generation of the set in use.
    trail_generation: u64,
    /// Trail sets taken from `shared`.
    trail_swaps: u64,
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detector")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Detector {
    /// Builds the stages.
    pub fn new(config: DetectorConfig) -> Result<Self, HeuristicsError> {
        let mut processor = Processor::new(
            Arc::clone(&config.trails),
            Arc::clone(&config.whitelist),
            config.processor,
        );
        if let Some((h, ua)) = config.heuristics {
            let heuristics = MaltrailHeuristics::new(h, Arc::clone(&config.whitelist), ua)?;
            processor.set_heuristics(Box::new(heuristics));
        }
        Ok(Detector {
            processor,
            whitelist: config.whitelist,
            throttle: config.throttle.map(Throttle::new),
            flood: config.flood.map(FloodGuard::new),
            syn_rules: config.maltrail_syn_rules,
            kernel_hits: 0,
            hits_whitelisted: 0,
            hits_filtered: 0,
            flow_starts: 0,
            events: 0,
            shared: None,
            trail_set_version: Arc::from(""),
            trail_generation: 0,
            trail_swaps: 0,
        })
    }

    /// Swaps in a new trail set; the next packet uses it.
    pub fn set_trails(&mut self, trails: Arc<TrailSet>) {
        self.processor.set_trails(trails);
    }

    /// Follows `shared` from now on: before each packet, a new set stored there is taken
    /// (one atomic load per packet when nothing changed), so a packet is matched against
    /// one whole set. Its version goes into the events.
    pub fn follow(&mut self, shared: SharedTrails) {
        self.trail_generation = shared.generation();
        let current = shared.load();
        self.processor.set_trails(Arc::clone(&current.trails));
        self.trail_set_version = Arc::from(current.version.as_str());
        self.shared = Some(shared);
    }

    /// Version of the trail set in use (empty when not following a [`SharedTrails`]).
    pub fn trail_set_version(&self) -> &str {
        &self.trail_set_version
    }

    /// Counts the sets stored in the followed [`SharedTrails`] up to the one in use (1 for
    /// the start set, +1 per reload; 0 when not following one): a number for gauges, where
    /// [`Detector::trail_set_version`] is the set's name.
    pub fn trail_set_generation(&self) -> u64 {
        self.trail_generation
    }

    /// Trail sets taken over from the followed [`SharedTrails`] since the start.
    pub fn trail_swaps(&self) -> u64 {
        self.trail_swaps
    }

    /// Takes a newer set from the followed [`SharedTrails`], between packets (done before
    /// each packet anyway; a live loop also calls it when idle, so the old set is dropped).
    #[inline]
    pub fn refresh_trails(&mut self) {
        let Some(shared) = &self.shared else {
            return;
        };
        let generation = shared.generation();
        if generation == self.trail_generation {
            return;
        }
        let current = shared.load();
        self.processor.set_trails(Arc::clone(&current.trails));
        if *current.version != *self.trail_set_version {
            self.trail_set_version = Arc::from(current.version.as_str());
        }
        self.trail_generation = generation;
        self.trail_swaps += 1;
    }

    /// One captured frame; `iface` (live capture) is written into its events.
    pub fn frame(
        &mut self,
        ts_us: i64,
        linktype: u32,
        iface: Option<&str>,
        frame: &[u8],
        out: &mut dyn FnMut(Event),
    ) -> Result<(), PacketError> {
        self.refresh_trails();
        self.frame_with(ts_us, linktype, iface, frame, Addresses::Unchecked, out)
    }

    /// The trail set in use (after [`Detector::refresh_trails`]): a capture that says a
    /// frame's [`Addresses`] are clean says it of this set.
    pub fn trails(&self) -> &Arc<TrailSet> {
        self.processor.trails()
    }

    /// [`Detector::frame`] for a frame whose `addresses` the capture looked up in the set
    /// in use, [`Detector::trails`]; it does not take a newer set (call
    /// [`Detector::refresh_trails`] first).
    pub fn frame_with(
        &mut self,
        ts_us: i64,
        linktype: u32,
        iface: Option<&str>,
        frame: &[u8],
        addresses: Addresses,
        out: &mut dyn FnMut(Event),
    ) -> Result<(), PacketError> {
        let Detector {
            processor,
            throttle,
            flood,
            events,
            trail_set_version,
            ..
        } = self;
        let mut out = |ev: Event| stamp(trail_set_version, ev, out);
        processor.process_frame_with(
            ts_us,
            linktype,
            iface,
            frame,
            addresses,
            // Each event carries `iface`: the packet's context, which builds them, has it.
            &mut |ev: Event| {
                // A repeat the throttle collapsed: its strings for the next event's.
                if let Some(ev) = release(throttle, flood, events, ev, &mut out) {
                    recycle(ev);
                }
            },
        )
    }

    /// Flow starts from the kernel (live scans), a ring record's batch at once (the scan
    /// tables' look-ups of a batch are started together: their cache misses overlap).
    pub fn flow_starts(&mut self, flows: &[FlowStart], out: &mut dyn FnMut(Event)) {
        self.flow_starts += flows.len() as u64;
        self.refresh_trails();
        let Detector {
            processor,
            throttle,
            flood,
            events,
            trail_set_version,
            ..
        } = self;
        let mut out = |ev: Event| stamp(trail_set_version, ev, out);
        processor.on_flow_starts(flows, &mut |ev| {
            if let Some(ev) = release(throttle, flood, events, ev, &mut out) {
                recycle(ev);
            }
        });
    }

    /// A trail hit the kernel found (its event carries the version of the kernel map set
    /// that matched, set by the caller). Its event comes back when the whitelist, the SYN
    /// filter or the throttle's collapse drops it: a steady stream of repeated hits then
    /// reuses one event's strings instead of allocating and freeing them per hit.
    pub fn kernel_hit(&mut self, hit: KernelHit, out: &mut dyn FnMut(Event)) -> Option<Event> {
        self.kernel_hits += 1;
        let ev = hit.event;
        // Maltrail drops a hit when either address is whitelisted.
        if self.whitelist.is_ip_whitelisted(ev.src_ip)
            || self.whitelist.is_ip_whitelisted(ev.dst_ip)
        {
            self.hits_whitelisted += 1;
            return Some(ev);
        }
        if self.syn_rules
            && hit.syn
            && !syn_hit_reported(
                &ev.info,
                hit.trail_is_dst,
                ev.dst_port,
                ev.dst_ip.is_loopback(),
            )
        {
            self.hits_filtered += 1;
            return Some(ev);
        }
        let version = &*self.trail_set_version;
        release(
            &mut self.throttle,
            &mut self.flood,
            &mut self.events,
            ev,
            &mut |ev| stamp(version, ev, out),
        )
    }

    /// Time passes (live: the wall clock, about once a second): due summaries come out.
    pub fn tick(&mut self, now_us: i64, out: &mut dyn FnMut(Event)) {
        // A reload between packets is taken here too, so an idle detector frees the old set.
        self.refresh_trails();
        let Detector {
            throttle,
            flood,
            events,
            trail_set_version,
            ..
        } = self;
        let out = &mut |ev: Event| stamp(trail_set_version, ev, out);
        let mut to_flood = |ev: Event| pass_flood(flood, events, ev, out);
        if let Some(t) = throttle.as_mut() {
            t.flush(now_us, &mut to_flood);
        }
        if let Some(f) = flood.as_mut() {
            f.flush(now_us, &mut |ev| {
                *events += 1;
                out(ev);
            });
        }
    }

    /// The end (replay's last packet, the sensor's shutdown): every pending summary.
    pub fn finish(&mut self, out: &mut dyn FnMut(Event)) {
        let Detector {
            throttle,
            flood,
            events,
            trail_set_version,
            ..
        } = self;
        let out = &mut |ev: Event| stamp(trail_set_version, ev, out);
        if let Some(t) = throttle.as_mut() {
            t.finish(&mut |ev: Event| pass_flood(flood, events, ev, out));
        }
        if let Some(f) = flood.as_mut() {
            f.finish(&mut |ev| {
                *events += 1;
                out(ev);
            });
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> DetectorStats {
        DetectorStats {
            processor: self.processor.stats(),
            kernel_hits: self.kernel_hits,
            hits_whitelisted: self.hits_whitelisted,
            hits_filtered: self.hits_filtered,
            flow_starts: self.flow_starts,
            throttle: self
                .throttle
                .as_ref()
                .map(Throttle::stats)
                .unwrap_or_default(),
            flood: self
                .flood
                .as_ref()
                .map(FloodGuard::stats)
                .unwrap_or_default(),
            events: self.events,
        }
    }

    /// The heuristics' bounded tables, each with its entries and evictions.
    pub fn heuristic_tables(&self) -> Vec<crate::heuristics::TableState> {
        self.processor.heuristics_tables()
    }

    /// Entries held by the stateful stages (heuristics, throttle, flood guard).
    pub fn state_entries(&self) -> usize {
        self.processor.heuristics_state_entries()
            + self
                .throttle
                .as_ref()
                .map_or(0, |t| t.len() + t.summarize_len())
            + self.flood.as_ref().map_or(0, FloodGuard::len)
    }
}

/// Writes the version of the trail set in use into an event leaving the pipeline (after the
/// throttle and the flood guard, so a dropped event costs no copy); kernel hits come with the
/// version of the map set that matched and keep it.
fn stamp(version: &str, mut ev: Event, out: &mut dyn FnMut(Event)) {
    if ev.trail_set_version.is_empty() && !version.is_empty() {
        set_str(&mut ev.trail_set_version, version);
    }
    out(ev);
}

/// Through the throttle and the flood guard to `out`; a repeat the throttle collapsed comes
/// back.
fn release(
    throttle: &mut Option<Throttle>,
    flood: &mut Option<FloodGuard>,
    events: &mut u64,
    ev: Event,
    out: &mut dyn FnMut(Event),
) -> Option<Event> {
    match throttle.as_mut() {
        Some(t) => t.filter(ev, &mut |ev| pass_flood(flood, events, ev, out)),
        None => {
            pass_flood(flood, events, ev, out);
            None
        }
    }
}

fn pass_flood(
    flood: &mut Option<FloodGuard>,
    events: &mut u64,
    ev: Event,
    out: &mut dyn FnMut(Event),
) {
    match flood.as_mut() {
        Some(f) => f.filter(ev, &mut |ev| {
            *events += 1;
            out(ev);
        }),
        None => {
            *events += 1;
            out(ev);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Action, Details, Severity};

    fn ev(ts_us: i64, src: &str, trail: &str) -> Event {
        Event {
            ts_us,
            sensor: "s".into(),
            src_ip: src.parse().unwrap(),
            src_port: 1000,
            dst_ip: "198.19.0.1".parse().unwrap(),
            dst_port: 80,
            proto: "TCP".into(),
            kind: EventType::Ip,
            trail: trail.into(),
            info: "x (malware)".into(),
            reference: "(static)".into(),
            severity: Severity::High,
            action: Action::Pass,
            iface: None,
            trail_set_version: String::new(),
            details: Details::default(),
        }
    }

    #[test]
    fn events_leaving_carry_the_set_version_kernel_hits_keep_theirs() {
        use crate::shared_trails::VersionedTrails;
        use crate::trails::LoadOptions;
        let path = std::env::temp_dir().join(format!("xtrail-pipeline-{}.csv", std::process::id()));
        std::fs::write(&path, "66.66.66.66,malware (test),(static)\n").unwrap();
        let trails =
            Arc::new(TrailSet::load(std::slice::from_ref(&path), &LoadOptions::default()).unwrap());
        let _ = std::fs::remove_file(&path);
        let mut d = Detector::new(DetectorConfig {
            trails: Arc::clone(&trails),
            whitelist: Arc::new(Whitelist::empty()),
            processor: ProcessorConfig::default(),
            heuristics: None,
            throttle: Some(ThrottleConfig::default()),
            flood: None,
            maltrail_syn_rules: true,
        })
        .unwrap();
        d.follow(SharedTrails::new(Arc::new(VersionedTrails::new(
            "v1", trails,
        ))));
        // UDP 10.0.0.1:5000 -> 66.66.66.66:4444 (raw IPv4), twice: the throttle drops the
        // repeat.
        let mut frame = vec![
            0x45, 0, 0, 29, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 66, 66, 66, 66,
        ];
        frame.extend_from_slice(&[0x13, 0x88, 0x11, 0x5c, 0, 9, 0, 0, b'x']);
        let mut out = Vec::new();
        for _ in 0..2 {
            d.frame(
                1_000_000,
                crate::packet::LINKTYPE_RAW,
                None,
                &frame,
                &mut |e| out.push(e),
            )
            .unwrap();
        }
        assert_eq!(out.len(), 1, "{out:#?}");
        assert_eq!(out[0].trail_set_version, "v1");
        assert_eq!(d.stats().throttle.suppressed, 1);
        let mut hit = ev(2_000_000, "198.18.0.9", "198.19.0.1");
        hit.trail_set_version = "kernel-set".into();
        d.kernel_hit(
            KernelHit {
                event: hit,
                syn: false,
                trail_is_dst: true,
            },
            &mut |e| out.push(e),
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].trail_set_version, "kernel-set");
    }

    #[test]
    fn many_sources_of_one_trail_become_one_aggregate() {
        use crate::event::{spare_events, SPARE_EVENTS};
        spare_events(true);
        let mut g = FloodGuard::new(FloodConfig::default());
        let mut out = Vec::new();
        for i in 0..1000u32 {
            let src = format!("198.18.{}.{}", i / 250, i % 250 + 1);
            g.filter(ev(i64::from(i) * 1000, &src, "198.19.0.1"), &mut |e| {
                out.push(e)
            });
        }
        assert_eq!(out.len(), 50, "the first 50 sources pass");
        // The 51st began the flood as its last event; each later one replaced the last,
        // which went back to the thread's pool.
        assert_eq!(spare_events(false), 949.min(SPARE_EVENTS));
        g.finish(&mut |e| out.push(e));
        assert_eq!(out.len(), 51);
        let agg = &out[50];
        assert!(
            agg.info
                .contains("flood: 950 more events from 1000 sources"),
            "{}",
            agg.info
        );
        assert_eq!(g.stats().aggregated, 950);
    }

    #[test]
    fn over_budget_events_not_kept_for_a_report_go_back() {
        use crate::event::spare_events;
        spare_events(true);
        let cfg = FloodConfig {
            budget_per_sec: 1,
            burst: 1,
            sources_per_trail: usize::MAX,
            max_overflow_reports: 1,
            ..FloodConfig::default()
        };
        let mut g = FloodGuard::new(cfg);
        let mut out = Vec::new();
        // Two trails in turn within a millisecond: the first event (of "b") passes; "a", the
        // first over budget, takes the one report and keeps its last; "b"'s later ones are
        // only counted.
        // Fewer than the pool holds, so that each give-back counts.
        for i in 0..200i64 {
            let trail = if i % 2 == 0 { "b" } else { "a" };
            g.filter(ev(i, "198.18.0.1", trail), &mut |e| out.push(e));
        }
        assert_eq!(out.len(), 1);
        let s = g.stats();
        assert_eq!((s.over_budget, s.unreported), (199, 99));
        // Every over-budget event but "a"'s last went back.
        assert_eq!(spare_events(false), 198);
    }

    #[test]
    fn the_budget_bounds_the_rate_and_reports_overflow() {
        let cfg = FloodConfig {
            budget_per_sec: 100,
            burst: 100,
            sources_per_trail: usize::MAX,
            ..FloodConfig::default()
        };
        let mut g = FloodGuard::new(cfg);
        let mut out = Vec::new();
        // 10,000 events of 10 trails in one second.
        for i in 0..10_000i64 {
            g.filter(
                ev(i * 100, "198.18.0.1", &format!("t{}", i % 10)),
                &mut |e| out.push(e),
            );
        }
        assert!(out.len() <= 200, "{}", out.len());
        g.finish(&mut |e| out.push(e));
        let reports: Vec<_> = out
            .iter()
            .filter(|e| e.info.contains("rate budget"))
            .collect();
        assert_eq!(reports.len(), 10);
        let held: u64 = reports
            .iter()
            .map(|e| {
                let n = e.info.split("rate budget: ").nth(1).unwrap();
                n.split(' ').next().unwrap().parse::<u64>().unwrap()
            })
            .sum();
        assert_eq!(
            held + (out.len() - reports.len()) as u64,
            10_000,
            "every event accounted"
        );
    }
}
