//! The live capture loop: transport only. The XDP program writes trail hits to `HITS`, flow
//! starts to `FLOWS` and copies of DNS, HTTP and TLS packets to `PAYLOADS`, but in mirror
//! mode on interfaces with AF_XDP sockets, whose transport threads ([`crate::xsk`]) bring
//! those packets over a bounded queue. Everything goes into the sensor's one [`Detector`]
//! (the same pipeline replay uses), whose events go to the log and the collector. No
//! detection logic lives here.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use xtrail_common::{addr_check, config_flags, side, trail_set, HitRecord};
use xtrail_detect::event::{self, set_str, Event};
use xtrail_detect::heuristics::{FlowStart, HeuristicsConfig, UaPatterns};
use xtrail_detect::pipeline::{Detector, DetectorConfig, FloodConfig, KernelHit};
use xtrail_detect::process::{Addresses, ProcessorConfig};
use xtrail_detect::shared_trails::{SharedTrails, VersionedTrails};
use xtrail_detect::throttle::ThrottleConfig;
use xtrail_detect::trails::TrailSet;
use xtrail_detect::whitelist::Whitelist;

use crate::hits::{self, Clock};
use crate::loader::{self, AttachMode, Mode, Sensor, SensorOptions};
use crate::output::EventLog;
use crate::reload::{HitSets, ReloadOptions, Reloader};
use crate::trail_pull::{PullOptions, TrailPuller};
use crate::xsk;
use xtrail_publish::Publisher;

/// User-agent patterns compiling on another thread (taken once by [`run`]).
pub type PendingUa = Mutex<Option<std::thread::JoinHandle<anyhow::Result<Arc<UaPatterns>>>>>;

/// The patterns of a [`PendingUa`], waiting for them.
fn take_ua(pending: &PendingUa) -> anyhow::Result<Arc<UaPatterns>> {
    let handle = pending
        .lock()
        .map_err(|_| anyhow::anyhow!("the user-agent pattern loader panicked"))?
        .take()
        .context("the user-agent patterns were taken already")?;
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("the user-agent pattern loader panicked"))?
}

/// Everything a live run needs.
pub struct LiveOptions {
    pub ifaces: Vec<String>,
    pub sensor: SensorOptions,
    pub attach: AttachMode,
    pub sensor_name: String,
    /// Per-packet settings (sensor name, URL candidates).
    pub processor: ProcessorConfig,
    pub stats_interval: Duration,
    pub duration: Option<Duration>,
    /// Mirror mode: on which interfaces DNS/HTTP/TLS come over AF_XDP sockets (`None`: none;
    /// the others by ring-buffer copies).
    pub afxdp: Option<xsk::Afxdp>,
    /// AF_XDP transport threads (mirror mode); sockets are spread over them.
    pub workers: usize,
    /// Heuristics (scans, DNS, HTTP); `None` runs trails only.
    pub heuristics: Option<HeuristicsConfig>,
    /// Suspicious user-agent patterns for the heuristics, possibly still compiling: the
    /// detector's set-up waits for them, the XDP program's load does not.
    pub ua: PendingUa,
    /// The throttle; `None` writes every event.
    pub throttle: Option<ThrottleConfig>,
    /// The flood guard; `None` leaves the event rate unbounded.
    pub flood: Option<FloodConfig>,
    /// Streams events to a collector, when configured.
    pub publisher: Option<Arc<Publisher>>,
    /// Apply Maltrail's SYN label rules to kernel hits (as replay does).
    pub maltrail_syn_rules: bool,
    /// Version of the trail set the run starts with (events carry it).
    pub trail_set_version: String,
    /// The body checksum of the compiled set the run starts with, still being computed
    /// ([`crate::reload::load_sources_checking`]): the XDP program loads and its maps fill
    /// meanwhile; the run waits for it before anything is attached or detected, and stops
    /// with the refusal if it fails.
    pub trail_check: Mutex<Option<crate::reload::TrailCheck>>,
    /// Hot reload of the trails (SIGHUP, watched files, collector pushes); `None`: the set
    /// is fixed for the run.
    pub reload: Option<ReloadOptions>,
    /// Follow the collector's trail sets (needs `reload`).
    pub trail_pull: Option<PullOptions>,
    /// Serves the counters to Prometheus (`--metrics`); the loop refreshes its page.
    pub metrics: Option<crate::metrics::MetricsServer>,
}

/// Ring buffer sizes (`run` flags). Each ring holds its size in kernel memory; RSS shows it
/// twice (the kernel maps its data pages twice into the reader). A full ring loses records, every one
/// counted: `handoff_failed` (payloads), `ringbuf_full` (hits), `flows_full` (flow starts),
/// in the stats line, `xtrail-sensor stats` and the metrics.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct RingArgs {
    /// KiB of the ring that carries DNS/HTTP/TLS packets to userspace (a power of two, at
    /// least the page size; default 4096). A record takes 40 bytes plus its frame's size
    /// class (128, 256, 512, 1024 or 2048 bytes): a DNS query 168 bytes, an HTTP request head
    /// ~552, a full-size frame 2,088. Size it for what arrives while the reader is away (it
    /// is woken per an eighth of the ring pending, at most per 256 KiB, and polls every 200
    /// ms while records come): 50k hand-offs/s of 552 bytes put 256 KiB in it every ~10 ms,
    /// and the default holds ~150 ms of them. A full ring drops hand-offs, counted as
    /// `handoff_failed`; give a busy link 16384 or more. RSS shows twice the size.
    #[arg(long = "payload-ring-kib", value_parser = parse_ring_kib)]
    pub payload_ring_kib: Option<u32>,
    /// KiB of the trail-hit ring (80 bytes a hit; default 512: ~6.5k hits; a full ring
    /// drops hits, counted as `ringbuf_full`).
    #[arg(long = "hit-ring-kib", value_parser = parse_ring_kib)]
    pub hit_ring_kib: Option<u32>,
    /// KiB of the flow-start ring (48 bytes a flow start, sent in batches of up to 16 per
    /// CPU; default 1024: ~21k; a full ring drops flow starts, counted as `flows_full`).
    #[arg(long = "flow-ring-kib", value_parser = parse_ring_kib)]
    pub flow_ring_kib: Option<u32>,
}

impl RingArgs {
    /// Sets the sizes given in `opts` (the rest keep their defaults).
    pub fn apply(&self, opts: &mut SensorOptions) {
        if let Some(k) = self.payload_ring_kib {
            opts.payload_ring_bytes = k << 10;
        }
        if let Some(k) = self.hit_ring_kib {
            opts.hit_ring_bytes = k << 10;
        }
        if let Some(k) = self.flow_ring_kib {
            opts.flow_ring_bytes = k << 10;
        }
    }
}

/// A ring size in KiB: a power of two from 4 (one page) to 1 GiB.
pub fn parse_ring_kib(s: &str) -> Result<u32, String> {
    let k: u32 = s.trim().parse().map_err(|e| format!("{s:?}: {e}"))?;
    if !k.is_power_of_two() || !(4..=1 << 20).contains(&k) {
        return Err(format!(
            "{k} KiB: a ring buffer is a power of two of KiB, from 4 (a page) to 1048576"
        ));
    }
    Ok(k)
}

/// How often the loop refreshes the metrics page.
const METRICS_EVERY: Duration = Duration::from_secs(1);

/// How often the loop looks for a new suppression list while no events come.
const SUPPRESSIONS_EVERY: Duration = Duration::from_millis(250);

/// The live loop's poll timeout while records come: the XDP program wakes the reader only
/// per so many pending bytes of a ring, so a few records wait for it (at most this long). A
/// record that lands in a ring the loop has read empty wakes it at once, at most once per
/// this interval over all rings (the gap rule, `xtrail_common::wake`).
const POLL_MS: i32 = xtrail_common::wake::POLL_MS as i32;
// The quiet loop's timeout is clamped to [POLL_MS, IDLE_POLL_MS].
const _: () = assert!(POLL_MS <= IDLE_POLL_MS);
/// The poll timeout once the loop has read nothing for [`QUIET`]: every record then arrives
/// after a gap and wakes it (`xtrail_common::wake`), so an idle sensor wakes 4 times a
/// second (measured on a 2-core VM with the 20 ms poll of before: 49.5 wake-ups and 3.7-4.1
/// ms of CPU a second -> 4 and 0.46).
const IDLE_POLL_MS: i32 = xtrail_common::wake::IDLE_POLL_MS as i32;
/// Nothing read for this long (two polls) lets the loop sleep [`IDLE_POLL_MS`]: the kernel's
/// last gap-rule wake-up was then at least that long ago (it came with a record the loop
/// read), so the next record wakes it.
const QUIET: Duration = Duration::from_millis(2 * xtrail_common::wake::POLL_MS as u64);
/// How often the live loop sends what the CPUs' flow-start batches hold
/// (`Sensor::flush_flows`): a flow start on a CPU that sees no further packet waits at most
/// about this long (plus a poll, [`IDLE_POLL_MS`] when the loop is quiet) for the reader.
const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// How often at most the event log's buffered lines are written out: the first line after
/// a quiet spell at once, the next ones at most about this long (plus a poll) after their
/// event, in one write(2) together instead of one per wake-up; all of them on stop. A
/// sensor killed outright (SIGKILL, the OOM killer) loses at most that long plus a poll
/// ([`POLL_MS`]) of log lines; the collector's spool is written apart.
const LOG_FLUSH_EVERY: Duration = Duration::from_millis(50);

/// Totals at the end of a run. Every packet handed to userspace is accounted for:
/// `payloads + xsk_frames = processed + queue_full` (malformed ring records and AF_XDP frames
/// are in neither side: `malformed_records`), and the detector's own counters say how many
/// of the processed ones failed to parse.
#[derive(Debug, Default)]
pub struct LiveSummary {
    pub events: u64,
    /// Kernel hits dropped for a whitelisted address.
    pub whitelisted: u64,
    /// Kernel hits dropped by Maltrail's label rules (SYN to an attacker, from malware...).
    pub filtered: u64,
    /// Ring-buffer copies read (inline).
    pub payloads: u64,
    /// Frames the AF_XDP transport received (mirror).
    pub xsk_frames: u64,
    /// Frames dropped because the detector's queue was full.
    pub queue_full: u64,
    /// Frames the AF_XDP sockets dropped before the transport read them (no free frame in
    /// copy mode, a full receive ring): redirected frames are `xsk_frames + xsk_dropped`
    /// (and any in `malformed_records`).
    pub xsk_dropped: u64,
    /// Times a socket's fill ring was found empty (zero-copy: a frame the NIC dropped
    /// before the XDP program; attempts, not frames).
    pub xsk_fill_empty: u64,
    /// Handed-over packets run through the detector.
    pub processed: u64,
    /// Of those, frames the parser rejected.
    pub parse_errors: u64,
    /// Of those, frames whose addresses the XDP program's verdict spared looking up.
    pub addresses_vouched: u64,
    /// Ring-buffer records too short to read, AF_XDP frames without the program's meta.
    pub malformed_records: u64,
    /// Flow-start records read.
    pub flows: u64,
    /// CPUs whose flow-start batch the loop sent by a flush run (`Sensor::flush_flows`).
    pub flow_flushes: u64,
    /// Events that could not be spooled for the collector.
    pub publish_errors: u64,
    /// Events not reported for the collector's suppression list: their trail, their source
    /// (`crate::suppress`).
    pub suppressed_trail: u64,
    pub suppressed_source: u64,
}

impl LiveSummary {
    /// `key=value` pairs for the stats line and the stats file.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "events": self.events,
            "whitelisted": self.whitelisted,
            "filtered": self.filtered,
            "payloads": self.payloads,
            "xsk_frames": self.xsk_frames,
            "queue_full": self.queue_full,
            "xsk_dropped": self.xsk_dropped,
            "xsk_fill_empty": self.xsk_fill_empty,
            "processed": self.processed,
            "parse_errors": self.parse_errors,
            "addresses_vouched": self.addresses_vouched,
            "malformed_records": self.malformed_records,
            "flows": self.flows,
            "flow_flushes": self.flow_flushes,
            "publish_errors": self.publish_errors,
            "suppressed_trail": self.suppressed_trail,
            "suppressed_source": self.suppressed_source,
        })
    }

    fn line(&self) -> String {
        format!(
            "events={} whitelisted={} filtered={} payloads={} xsk_frames={} queue_full={} xsk_dropped={} xsk_fill_empty={} processed={} parse_errors={} addresses_vouched={} flows={} suppressed_trail={} suppressed_source={}",
            self.events,
            self.whitelisted,
            self.filtered,
            self.payloads,
            self.xsk_frames,
            self.queue_full,
            self.xsk_dropped,
            self.xsk_fill_empty,
            self.processed,
            self.parse_errors,
            self.addresses_vouched,
            self.flows,
            self.suppressed_trail,
            self.suppressed_source
        )
    }
}

/// Link type of the frames the XDP program copies (Ethernet).
const LINKTYPE_ETHERNET: u32 = 1;

/// The kernel map set that holds the detector's trail set, as the live loop read it (once a
/// wake-up, after `Detector::refresh_trails`): a hand-off whose addresses the XDP program
/// found clean in that map set is not looked up again. No set is held here (a reload's old
/// set is freed where it was).
#[derive(Clone, Copy, Debug)]
pub struct MapSets {
    index: Option<u8>,
    /// The epoch of the newest `TRAIL_SET` write, when no write came during the read: an
    /// AF_XDP frame, which may have waited in a socket since any earlier write, is vouched
    /// for only when stamped with it.
    epoch: Option<u8>,
    /// The detector's set when read: a newer one vouches for nothing until read again.
    generation: u64,
}

impl MapSets {
    /// The map set of `hit_sets` that holds `detector`'s set, unless records of the set it
    /// held before may still be unread ([`HitSets::fresh`]).
    pub fn read(hit_sets: &HitSets, detector: &Detector) -> Self {
        let selected = hit_sets.selector();
        let index = (0..2u8).find(|&i| hit_sets.fresh(i) && hit_sets.holds(i, detector.trails()));
        MapSets {
            epoch: (hit_sets.selector() == selected).then_some(trail_set::epoch(selected)),
            ..MapSets::holding(index, detector)
        }
    }

    /// Map set `index` holds `detector`'s set (`None`: neither does); no AF_XDP frame is
    /// vouched for.
    pub fn holding(index: Option<u8>, detector: &Detector) -> Self {
        MapSets {
            index,
            epoch: None,
            generation: detector.trail_set_generation(),
        }
    }

    /// Whether a record found clean in map set `index` is clean for `detector`'s set.
    fn vouch(&self, index: Option<u8>, detector: &Detector) -> bool {
        index.is_some() && index == self.index && self.generation == detector.trail_set_generation()
    }

    /// Whether an AF_XDP frame stamped `stamp` is clean for `detector`'s set: found clean
    /// under the newest `TRAIL_SET` write, in the map set holding the detector's set.
    fn vouch_frame(&self, stamp: xsk::Stamp, detector: &Detector) -> bool {
        stamp.addrs & addr_check::CLEAN != 0
            && self.epoch == Some(stamp.epoch)
            && self.vouch(Some(stamp.addrs & addr_check::SET), detector)
    }
}

/// Runs one `PAYLOADS` record's frame through the detector, in place; false for a malformed
/// record. The frame's addresses are not looked up again when the XDP program found both
/// clean in the set the detector uses (`sets`). Allocates nothing itself (the detector
/// allocates nothing per clean frame after warm-up: `tests/handoff_no_alloc.rs`).
pub fn hand_over<'n>(
    item: &[u8],
    clock: &Clock,
    ifname: &impl Fn(u32) -> Option<&'n str>,
    sets: &MapSets,
    detector: &mut Detector,
    out: &mut impl FnMut(Event),
) -> bool {
    let Some(h) = hits::parse_payload(item) else {
        return false;
    };
    let ts_us = clock.to_unix_us(h.ts_ns);
    let iface = ifname(h.ifindex);
    run_frame(
        detector,
        ts_us,
        iface,
        h.frame,
        |d| sets.vouch(h.clean_in, d),
        out,
    );
    true
}

/// Runs one AF_XDP frame (its meta taken off by the transport, `stamp`) of `iface`, received
/// at `ts_us`, through the detector; its addresses are not looked up again when the XDP
/// program found both clean under the newest selector write in the set the detector uses.
pub fn hand_over_frame(
    frame: &[u8],
    stamp: xsk::Stamp,
    ts_us: i64,
    iface: Option<&str>,
    sets: &MapSets,
    detector: &mut Detector,
    out: &mut impl FnMut(Event),
) {
    run_frame(
        detector,
        ts_us,
        iface,
        frame,
        |d| sets.vouch_frame(stamp, d),
        out,
    );
}

/// A handed-over frame through the detector: its addresses are not looked up again when
/// `vouched` says the XDP program found them clean in the set the frame meets (taken
/// first, before it is compared with the kernel's).
fn run_frame(
    detector: &mut Detector,
    ts_us: i64,
    iface: Option<&str>,
    frame: &[u8],
    vouched: impl FnOnce(&Detector) -> bool,
    out: &mut impl FnMut(Event),
) {
    detector.refresh_trails();
    let addresses = if vouched(detector) {
        Addresses::Clean
    } else {
        Addresses::Unchecked
    };
    // A frame the parser rejects is counted by the detector (`parse_errors`).
    let _ = detector.frame_with(ts_us, LINKTYPE_ETHERNET, iface, frame, addresses, out);
}

/// What a kernel hit's event carries besides its record.
pub struct Hit<'a> {
    /// The sensor's name.
    pub sensor: &'a str,
    /// The interface the packet arrived on.
    pub iface: Option<&'a str>,
    /// The kernel clock's offset.
    pub clock: &'a Clock,
}

impl Hit<'_> {
    /// Gives the detector the event of a `HITS` record matched by `set`, filled into an
    /// event given back on this thread when there is one (the live loop gives back the
    /// events it wrote, `event::recycle`): allocates nothing once warm
    /// (`tests/handoff_no_alloc.rs`).
    pub fn report(
        &self,
        rec: &HitRecord,
        set: &VersionedTrails,
        detector: &mut Detector,
        out: &mut impl FnMut(Event),
    ) {
        let mut event = event::spare_event().unwrap_or_else(event::blank);
        hits::fill_event(
            &mut event,
            rec,
            &set.trails,
            self.sensor,
            self.iface,
            self.clock,
        );
        set_str(&mut event.trail_set_version, &set.version);
        let hit = KernelHit {
            event,
            syn: rec.proto == 6,
            trail_is_dst: rec.side == side::DST,
        };
        // Dropped (whitelisted, filtered or a repeat): kept for the next event's strings.
        if let Some(event) = detector.kernel_hit(hit, out) {
            event::recycle(event);
        }
    }
}

/// Bytes of the next record fetched while one is read: of a hand-off, its header and frame
/// up to a DNS message or most of an HTTP head; of the flow starts, the whole batch.
const NEXT_PAYLOAD_BYTES: usize = 512;
const NEXT_FLOWS_BYTES: usize = 8 + std::mem::size_of::<xtrail_common::FlowBatch>();

/// Starts fetching the ring record after `item` (`bytes` of it) while `item` is read, so
/// that its cache misses (the XDP program wrote it, on another CPU or long before) overlap
/// this record's work. In a BPF ring buffer the next record's 8-byte header follows this
/// record's data rounded up to 8 bytes, across the wrap too (the data pages are mapped
/// twice in a row). Only a prefetch hint's address: nothing is read there, so a record not
/// written yet, or the ring's end, costs nothing. Not for the kernel hits: rare, small
/// records, each prefetch would fetch the same lines again.
fn fetch_next_record(item: &[u8], bytes: usize) {
    let next = item.as_ptr().wrapping_add(item.len().next_multiple_of(8));
    xtrail_detect::prefetch::span(next, bytes);
}

/// Gives `records` to the detector as one batch (`starts`: reused, no allocation per
/// record); how many there were.
fn flow_starts(
    detector: &mut Detector,
    starts: &mut Vec<FlowStart>,
    records: impl Iterator<Item = xtrail_common::FlowRecord>,
    clock: &Clock,
    out: &mut dyn FnMut(Event),
) -> u64 {
    starts.clear();
    starts.extend(records.map(|rec| flow_start(&rec, clock)));
    detector.flow_starts(starts, out);
    starts.len() as u64
}

/// The detector's view of a flow-start record.
fn flow_start(rec: &xtrail_common::FlowRecord, clock: &Clock) -> FlowStart {
    FlowStart {
        ts_us: clock.to_unix_us(rec.ts_ns),
        src: hits::addr(rec.family, rec.src),
        dst: hits::addr(rec.family, rec.dst),
        src_port: rec.src_port,
        dst_port: rec.dst_port,
        proto: rec.proto,
        tcp_flags: rec.tcp_flags,
    }
}

/// Where a running sensor writes its userspace counters for `xtrail-sensor stats`.
pub const STATS_DIR: &str = "/run/xtrail";

fn write_stats_file(summary: &LiveSummary, detector: &Detector, kernel: Option<String>) {
    let path = std::path::Path::new(STATS_DIR).join(format!("sensor-{}.json", std::process::id()));
    let d = detector.stats();
    let body = serde_json::json!({
        "pid": std::process::id(),
        "userspace": summary.to_json(),
        "detector": {
            "frames": d.processor.packets,
            "parse_errors": d.processor.parse_errors,
            "tls_reassembly": d.processor.tls_reassembly,
            "quic_reassembly": d.processor.quic_reassembly,
            "kernel_hits": d.kernel_hits,
            "flow_starts": d.flow_starts,
            "throttle_suppressed": d.throttle.suppressed,
            "throttle_summarized": d.throttle.summarized,
            "flood_aggregated": d.flood.aggregated,
            "flood_over_budget": d.flood.over_budget,
            "flood_unreported": d.flood.unreported,
            "events": d.events,
        },
        "kernel": kernel,
    });
    let _ = std::fs::create_dir_all(STATS_DIR);
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, body.to_string()).is_ok() {
        let _ = std::fs::rename(&tmp, &path);
    }
}

/// Loads, attaches, and runs until `stop` is set or the duration passes; detaches on return.
pub fn run(
    trails: Arc<TrailSet>,
    whitelist: Arc<Whitelist>,
    opts: &LiveOptions,
    log: &mut EventLog,
    stop: &AtomicBool,
) -> anyhow::Result<LiveSummary> {
    let started = Instant::now();
    let afxdp = opts
        .afxdp
        .filter(|_| opts.sensor.mode == Mode::Mirror && opts.sensor.handoff);
    let use_xsk = afxdp.is_some();
    let mut sensor_opts = opts.sensor.clone();
    if use_xsk {
        sensor_opts.xsk_queues = xsk::queue_stride(&opts.ifaces)?;
    }
    // The detector is set up while the XDP program loads and its maps fill.
    let (detector, sensor) = std::thread::scope(|s| {
        let detector = s.spawn(|| -> anyhow::Result<Detector> {
            let ua = take_ua(&opts.ua)?;
            let d = Detector::new(DetectorConfig {
                trails: Arc::clone(&trails),
                whitelist,
                processor: opts.processor.clone(),
                heuristics: opts.heuristics.clone().map(|h| (h, ua)),
                throttle: opts.throttle,
                flood: opts.flood,
                maltrail_syn_rules: opts.maltrail_syn_rules,
            })
            .context("setting up the heuristics");
            crate::startup::mark("detector_ready");
            crate::startup::thread_cpu("detector_with_ua_wait");
            d
        });
        let sensor = Sensor::load(&trails.ip, &sensor_opts);
        crate::startup::mark("sensor_loaded");
        (detector.join(), sensor)
    });
    // Nothing is attached and no packet was seen: the set is used from here on only if its
    // checksum holds (the program and its maps go away with `sensor` otherwise). Checked
    // before the load's own errors: a damaged set may fail to load, and is refused as such.
    let check = opts
        .trail_check
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    if let Some(check) = check {
        let path = check.path().display().to_string();
        check
            .wait()
            .map_err(|e| anyhow::anyhow!("trail set {path} refused: {e}"))?;
        crate::startup::mark("checksum_verified");
    }
    let mut detector =
        detector.map_err(|_| anyhow::anyhow!("setting up the detector panicked"))??;
    let mut sensor = sensor?;
    // The set in use: the detector follows it, kernel hits are labelled by map set (one
    // `VersionedTrails` for both).
    let first = Arc::new(VersionedTrails::new(
        opts.trail_set_version.clone(),
        Arc::clone(&trails),
    ));
    let shared = SharedTrails::new(Arc::clone(&first));
    detector.follow(shared.clone());
    let hit_sets = Arc::new(HitSets::new(first, sensor.selected()));
    drop(trails);
    let reloader = match &opts.reload {
        Some(r) => Some(Reloader::start(
            r.clone(),
            sensor.trail_sets()?,
            shared.clone(),
            Arc::clone(&hit_sets),
        )?),
        None => None,
    };
    let puller = match (&opts.trail_pull, &opts.reload) {
        (Some(p), Some(r)) => Some(TrailPuller::start(
            p.clone(),
            Arc::clone(&r.inbox),
            shared.clone(),
        )?),
        _ => None,
    };
    crate::startup::mark("reloader_started");
    let f = &sensor.fill;
    eprintln!(
        "xtrail-sensor: maps filled in {:.2}s: {} IPv4, {} IPv6, {} IP:port, {} IPv4 CIDR, {} IPv6 CIDR; prefilter {}",
        started.elapsed().as_secs_f64(),
        f.ipv4,
        f.ipv6,
        f.ipport,
        f.cidr4,
        f.cidr6,
        if f.prefilter {
            format!("on ({} /24 blocks)", f.prefilter_blocks)
        } else {
            "off".to_string()
        }
    );
    let mut logger = if opts.sensor.ebpf_log_level > 0 {
        sensor.take_logger()
    } else {
        None
    };
    // What the start freed (~7 MB: the maps' fill, the program's load, the detector's
    // set-up) goes back to the kernel before the rings are mapped, so it is neither kept
    // in the heap nor added to the rings at the start's peak.
    crate::reload::release_freed_memory();
    let mut ring = sensor.take_hits()?;
    let mut payloads = sensor.take_payloads()?;
    let mut flows = sensor.take_flows()?;
    let ifaces: Vec<(String, u32)> = opts
        .ifaces
        .iter()
        .map(|i| (i.clone(), loader::ifindex(i).unwrap_or(0)))
        .collect();
    crate::startup::mark("rings_mapped");
    // Attached before mirror's sockets are opened: only then is it known which interfaces run
    // the program in generic (skb) mode (`--xdp-mode auto` falls back to it where the driver
    // refuses). Until the sockets are registered and `config_flags::XSK` set, the program
    // hands packets over by ring-buffer copy; the "attached" lines, which say the sensor is
    // ready, come after that.
    for iface in &opts.ifaces {
        sensor.attach(iface, opts.attach)?;
    }
    // Generic XDP copies every frame into a socket, whatever the driver: no zero-copy.
    let generic: Vec<String> = match afxdp {
        Some(xsk::Afxdp::ZeroCopy) => sensor
            .attachments()
            .iter()
            .filter(|a| a.mode != "driver")
            .map(|a| a.iface.clone())
            .collect(),
        _ => Vec::new(),
    };
    for iface in &generic {
        eprintln!(
            "xtrail-sensor: {iface}: generic (skb) XDP has no zero-copy AF_XDP: its packets are handed over by ring-buffer copy (--afxdp-copy: AF_XDP in copy mode)"
        );
    }
    // Mirror mode: the AF_XDP sockets, on interfaces with zero-copy AF_XDP (every one with
    // `--afxdp-copy`); the others' packets come by ring-buffer copy, as inline.
    let opened = match afxdp {
        Some(_) if ifaces.iter().all(|(i, _)| generic.contains(i)) => None,
        Some(policy) => match xsk::open(
            &mut sensor,
            &ifaces,
            &generic,
            sensor_opts.xsk_queues,
            policy,
        ) {
            Ok(opened) => {
                for (iface, e) in &opened.without_zero_copy {
                    eprintln!(
                        "xtrail-sensor: {iface}: no zero-copy AF_XDP ({e:#}): its packets are handed over by ring-buffer copy (--afxdp-copy: AF_XDP in copy mode)"
                    );
                }
                Some(opened).filter(|o| !o.is_empty())
            }
            Err(e) => {
                log::warn!(
                    "AF_XDP sockets unavailable ({e:#}); mirror mode hands packets over by ring-buffer copies"
                );
                None
            }
        },
        None => None,
    };
    // AF_XDP transport threads feed frames to this loop's detector, a receive batch at a
    // time; the loop sends each batch back for its buffers' reuse. A bounded channel
    // initialises every slot when made, so without sockets the channels hold nothing.
    let queue = if opened.is_some() {
        xsk::MAX_QUEUED_BATCHES
    } else {
        0
    };
    let (frame_tx, frame_rx) = std::sync::mpsc::sync_channel::<xsk::FrameBatch>(queue);
    let (recycle_tx, recycle_rx) = std::sync::mpsc::sync_channel::<xsk::FrameBatch>(queue);
    let counters: Arc<xsk::TransportCounters> = Arc::default();
    let stop_workers = Arc::new(AtomicBool::new(false));
    // Made with the transport threads; without them nothing writes it: neither polled nor
    // armed.
    let mut wake = None;
    let mut workers = Vec::new();
    if let Some(opened) = opened {
        let w = Arc::new(xsk::LoopWake::new().context("creating the AF_XDP transport's eventfd")?);
        let transport = xsk::TransportContext {
            frames: frame_tx,
            recycled: Arc::new(Mutex::new(recycle_rx)),
            counters: Arc::clone(&counters),
            stop: Arc::clone(&stop_workers),
            wake: Arc::clone(&w),
        };
        match xsk::start(opened, opts.workers, &transport) {
            Ok(started) => {
                let mut config = sensor.config;
                config.flags |= config_flags::XSK;
                sensor.write_config(config)?;
                eprintln!(
                    "xtrail-sensor: {} AF_XDP socket(s) on {} worker thread(s): {}",
                    started.iter().map(|w| w.sockets.len()).sum::<usize>(),
                    started.len(),
                    started
                        .iter()
                        .map(|w| w.sockets.join(","))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
                workers = started;
                wake = Some(w);
            }
            Err(e) => log::warn!(
                "AF_XDP workers unavailable ({e:#}); mirror mode hands packets over by ring-buffer copies"
            ),
        }
    }
    for a in sensor.attachments() {
        eprintln!(
            "xtrail-sensor: attached to {} ({} mode, {} mode{})",
            a.iface,
            a.mode,
            match opts.sensor.mode {
                Mode::Inline => "inline",
                Mode::Mirror => "mirror",
            },
            if opts.sensor.enforce {
                ", enforcing"
            } else {
                ""
            }
        );
    }
    crate::startup::mark("attached");
    crate::startup::thread_cpu("main_to_attached");
    crate::startup::log_phases();
    let ifnames: Vec<(u32, String)> = sensor
        .attachments()
        .iter()
        .map(|a| (a.ifindex, a.iface.clone()))
        .collect();
    let ifname = |index: u32| {
        ifnames
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, n)| n.as_str())
    };
    let mut summary = LiveSummary::default();
    let mut clock = Clock::now();
    let mut last_clock = Instant::now();
    let mut last_stats = Instant::now();
    let mut last_tick = Instant::now();
    let mut last_metrics: Option<Instant> = None;
    // When the heartbeat status (counters for the collector) was last set.
    let mut last_status: Option<Instant> = None;
    let mut event_counts = crate::metrics::EventCounts::default();
    let run_started = Instant::now();
    let mut pending: Vec<Event> = Vec::new();
    let mut suppressions = crate::suppress::Suppressions::default();
    let mut last_suppressions = Instant::now();
    let mut last_flush = Instant::now();
    let mut last_log_flush: Option<Instant> = None;
    // Whether lines were written to the log since its last flush.
    let mut unflushed = false;
    // The transport's eventfd last: its entry is looked at after each poll.
    let fds = [
        Some(ring.as_raw_fd()),
        Some(payloads.as_raw_fd()),
        Some(flows.as_raw_fd()),
        logger.as_ref().map(AsRawFd::as_raw_fd),
        wake.as_ref().map(|w| w.fd()),
    ];
    let mut pollfds: Vec<libc::pollfd> = fds
        .iter()
        .flatten()
        .map(|fd| libc::pollfd {
            fd: *fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let mut finishing = false;
    // When a wake-up last found something to read (see `QUIET`).
    let mut last_read = Instant::now();
    // A ring record's flow starts, for the detector (reused: no allocation per record).
    let mut starts: Vec<FlowStart> = Vec::with_capacity(xtrail_common::FLOW_BATCH);
    loop {
        if !finishing {
            let timed_out = opts.duration.is_some_and(|d| run_started.elapsed() >= d);
            if stop.load(Ordering::Relaxed) || timed_out {
                // Detach first, stop the transport, then drain what arrived before.
                sensor.detach_all();
                // A program run still in flight on some CPU could send a flow-start batch
                // after the last drain below, or append to a batch between the map read and
                // its emptying (`take_pending_flows`): wait for every run to finish first.
                if let Err(e) = crate::maps::wait_for_running_programs() {
                    log::warn!("waiting for the XDP program's last runs: {e}; sleeping instead");
                    std::thread::sleep(Duration::from_millis(POLL_MS as u64));
                }
                stop_workers.store(true, Ordering::Relaxed);
                for w in workers.drain(..) {
                    let name = w.sockets.join(",");
                    if let Err(e) = w.join() {
                        log::error!("AF_XDP worker {name}: {e:#}");
                    }
                }
                finishing = true;
            } else {
                // Quiet: sleep long (a frame the AF_XDP transport queues meanwhile wakes the
                // loop). Not with log lines waiting for their flush, nor past the next
                // flow-start flush or the run's end.
                let timeout = if !unflushed
                    && last_read.elapsed() >= QUIET
                    && wake.as_ref().is_none_or(|w| w.arm())
                {
                    let mut due = FLUSH_EVERY.saturating_sub(last_flush.elapsed());
                    if let Some(d) = opts.duration {
                        due = due.min(d.saturating_sub(run_started.elapsed()));
                    }
                    // Rounded up: woken a little early, the loop would poll again at once.
                    let ms = i32::try_from(due.as_millis() + 1).unwrap_or(IDLE_POLL_MS);
                    ms.clamp(POLL_MS, IDLE_POLL_MS)
                } else {
                    POLL_MS
                };
                // SAFETY: pollfds is a valid array of pollfd of the given length.
                unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, timeout) };
                if let Some(w) = &wake {
                    let woken = pollfds
                        .last()
                        .is_some_and(|p| p.revents & libc::POLLIN != 0);
                    w.disarm(woken);
                }
                // A worker that died is fatal: say so and stop.
                if let Some(i) = workers.iter().position(|w| w.is_finished()) {
                    let w = workers.swap_remove(i);
                    let name = w.sockets.join(",");
                    let result = w.join();
                    sensor.detach_all();
                    stop_workers.store(true, Ordering::Relaxed);
                    // The lines still buffered, with an error of their own if they fail.
                    log.flush().context("writing event")?;
                    return Err(anyhow::anyhow!(
                        "AF_XDP worker {name} stopped: {}",
                        result
                            .err()
                            .map(|e| format!("{e:#}"))
                            .unwrap_or_else(|| "no error".into())
                    ));
                }
                // A CPU that sees no further packet holds its flow starts: send them.
                if last_flush.elapsed() >= FLUSH_EVERY {
                    last_flush = Instant::now();
                    match sensor.flush_flows() {
                        Ok(n) => summary.flow_flushes += n as u64,
                        Err(e) => log::warn!("sending the CPUs' pending flow starts: {e}"),
                    }
                }
            }
        }
        if last_clock.elapsed() > Duration::from_secs(60) {
            clock = Clock::now();
            last_clock = Instant::now();
        }
        let mut out = |ev: Event| pending.push(ev);
        let mut read = false;
        while let Some(item) = ring.next() {
            read = true;
            let Some(rec) = hits::parse_record(&item) else {
                summary.malformed_records += 1;
                continue;
            };
            // The labels of the map set that matched (the record says which).
            let set = hit_sets.get(rec.trail_set).unwrap_or_else(|| shared.load());
            let hit = Hit {
                sensor: &opts.sensor_name,
                iface: ifname(rec.ifindex),
                clock: &clock,
            };
            hit.report(&rec, &set, &mut detector, &mut out);
        }
        // Every record pending is read per wake-up; each frame is parsed where it lies in the
        // ring (no copy, no allocation here) and its slot released when the item drops.
        detector.refresh_trails();
        let sets = MapSets::read(&hit_sets, &detector);
        while let Some(item) = payloads.next() {
            read = true;
            fetch_next_record(&item, NEXT_PAYLOAD_BYTES);
            if hand_over(&item, &clock, &ifname, &sets, &mut detector, &mut out) {
                summary.payloads += 1;
            } else {
                summary.malformed_records += 1;
            }
        }
        while let Ok(batch) = frame_rx.try_recv() {
            read = true;
            if let Some(w) = &wake {
                w.release(batch.len() as u64);
            }
            let iface = ifaces.get(batch.iface).map(|(n, _)| n.as_str());
            for (frame, stamp) in batch.frames() {
                hand_over_frame(
                    frame,
                    stamp,
                    batch.ts_us,
                    iface,
                    &sets,
                    &mut detector,
                    &mut out,
                );
            }
            let _ = recycle_tx.try_send(batch);
        }
        // Each record is a batch of a CPU's flow starts (`xtrail_common::FlowBatch`), given
        // to the detector at once.
        while let Some(item) = flows.next() {
            read = true;
            fetch_next_record(&item, NEXT_FLOWS_BYTES);
            let Some(batch) = hits::parse_flows(&item) else {
                summary.malformed_records += 1;
                continue;
            };
            summary.flows += flow_starts(&mut detector, &mut starts, batch, &clock, &mut out);
        }
        if read {
            last_read = Instant::now();
        }
        // Detached: what the CPUs' batches still hold was never sent; take it from the map.
        if finishing {
            match sensor.take_pending_flows() {
                Ok(pending) => {
                    let pending = pending.into_iter();
                    summary.flows +=
                        flow_starts(&mut detector, &mut starts, pending, &clock, &mut out);
                }
                Err(e) => log::warn!("reading the flow starts not yet sent: {e}"),
            }
        }
        // Every ring buffer was read empty and the detector holds the newest set: a reload
        // may now drop a switched-out set.
        detector.refresh_trails();
        hit_sets.drained();
        // Summaries (throttle, floods, rate budget) come out when their window closes.
        if finishing {
            detector.finish(&mut out);
        } else if last_tick.elapsed() >= Duration::from_secs(1) {
            last_tick = Instant::now();
            detector.tick(hits::unix_us_now(), &mut out);
        }
        // The collector's suppression list: a new version is installed before these events
        // (and, while none come, looked for at the first wake-up SUPPRESSIONS_EVERY after the
        // last look).
        if !pending.is_empty() || last_suppressions.elapsed() >= SUPPRESSIONS_EVERY {
            last_suppressions = Instant::now();
            if let Some(list) = opts.publisher.as_ref().and_then(|p| p.suppressions()) {
                if suppressions.install(&list) {
                    let (trails, sources) = suppressions.len();
                    eprintln!(
                        "xtrail-sensor: suppression list {} from the collector: {trails} trail(s), {sources} source(s) not reported",
                        list.version
                    );
                }
            }
        }
        for ev in pending.drain(..) {
            if suppressions.suppresses(&ev) {
                summary.suppressed_trail = suppressions.by_trail;
                summary.suppressed_source = suppressions.by_source;
            } else {
                log.write(&ev).context("writing event")?;
                unflushed = true;
                if let Some(p) = &opts.publisher {
                    if let Err(e) = p.publish(&ev) {
                        summary.publish_errors += 1;
                        log::error!("spooling an event for the collector: {e}");
                    }
                }
                summary.events += 1;
                event_counts.count(&ev);
            }
            // Written: its strings for the next event's (kernel hits and the detector's
            // alike build theirs into given-back events, `event::recycle`).
            event::recycle(ev);
        }
        if unflushed && (finishing || last_log_flush.is_none_or(|t| t.elapsed() >= LOG_FLUSH_EVERY))
        {
            last_log_flush = Some(Instant::now());
            unflushed = false;
            log.flush().context("writing event")?;
        }
        if let Some(l) = logger.as_mut() {
            l.flush();
        }
        if let Some(p) = opts
            .publisher
            .as_ref()
            .filter(|_| last_status.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)))
        {
            last_status = Some(Instant::now());
            let kernel = sensor.counters().ok();
            let k = |i: u32| kernel.as_ref().map_or(0, |c| c.get(i));
            p.set_status(xtrail_publish::SensorStatus {
                trail_set_version: detector.trail_set_version().to_string(),
                counters: xtrail_publish::SensorCounters {
                    processed: k(xtrail_common::stat::PACKETS),
                    events: summary.events,
                    drops: summary.publish_errors,
                    ringbuf_full: k(xtrail_common::stat::RINGBUF_FULL),
                    handoff_failed: k(xtrail_common::stat::HANDOFF_FAILED),
                    parse_errors: detector.stats().processor.parse_errors,
                    uptime_s: 0,
                },
            });
        }
        let stats_due =
            !opts.stats_interval.is_zero() && last_stats.elapsed() >= opts.stats_interval;
        let metrics_due = opts.metrics.is_some()
            && (finishing || last_metrics.is_none_or(|t| t.elapsed() >= METRICS_EVERY));
        if finishing || stats_due || metrics_due {
            summary.xsk_frames = counters.frames.load(Ordering::Relaxed);
            summary.queue_full = counters.queue_full.load(Ordering::Relaxed);
            summary.xsk_dropped = counters.dropped.load(Ordering::Relaxed);
            summary.xsk_fill_empty = counters.fill_empty.load(Ordering::Relaxed);
            summary.malformed_records += counters.malformed.swap(0, Ordering::Relaxed);
            let d = detector.stats();
            summary.whitelisted = d.hits_whitelisted;
            summary.filtered = d.hits_filtered;
            summary.processed = d.processor.packets;
            summary.parse_errors = d.processor.parse_errors;
            summary.addresses_vouched = d.processor.addresses_vouched;
            if let (true, Some(m)) = (metrics_due, &opts.metrics) {
                last_metrics = Some(Instant::now());
                let kernel = sensor.counters().ok();
                let tables = detector.heuristic_tables();
                m.publish(crate::metrics::render(&crate::metrics::Sample {
                    kernel: kernel.as_ref(),
                    summary: &summary,
                    detector: &d,
                    events: &event_counts,
                    trail_set_generation: detector.trail_set_generation(),
                    state_entries: detector.state_entries(),
                    tables: &tables,
                }));
            }
        }
        if finishing {
            break;
        }
        if stats_due {
            last_stats = Instant::now();
            if let Ok(c) = sensor.counters() {
                eprintln!(
                    "xtrail-sensor: stats {c} {} trail_set_version={}",
                    summary.line(),
                    detector.trail_set_version()
                );
                write_stats_file(&summary, &detector, Some(c.to_string()));
            }
        }
    }
    if let Some(p) = &opts.publisher {
        // Best effort: what is not acknowledged stays in the spool for the next start.
        match p.flush(Duration::from_secs(5)) {
            Ok(()) => eprintln!("xtrail-sensor: collector acknowledged every event"),
            Err(e) => eprintln!(
                "xtrail-sensor: {e}; the rest stays in the spool and is sent on the next start"
            ),
        }
    }
    // The reloader stops before the maps it writes go away.
    let reloads = reloader.as_ref().map_or(0, |r| {
        r.stats.reloads.load(std::sync::atomic::Ordering::Relaxed)
    });
    drop(puller);
    drop(reloader);
    let counters = sensor.counters()?;
    let (runs, run_time) = sensor.run_stats();
    let d = detector.stats();
    let _ = std::fs::remove_file(
        std::path::Path::new(STATS_DIR).join(format!("sensor-{}.json", std::process::id())),
    );
    eprintln!(
        "xtrail-sensor: detached; final stats {counters} {} throttled={} flood_aggregated={} over_budget={} trail_reloads={reloads} trail_set_version={} xdp_runs={runs} xdp_run_ns={}",
        summary.line(),
        d.throttle.suppressed + d.throttle.summarized,
        d.flood.aggregated,
        d.flood.over_budget,
        shared.load().version,
        run_time.as_nanos()
    );
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_sizes_are_powers_of_two_of_kib() {
        assert_eq!(parse_ring_kib("4"), Ok(4));
        assert_eq!(parse_ring_kib("16384"), Ok(16384));
        for bad in ["0", "2", "3000", "2097152", "-1", "4k", ""] {
            assert!(parse_ring_kib(bad).is_err(), "{bad}");
        }
        let mut opts = SensorOptions::default();
        assert_eq!(opts.payload_ring_bytes, 4 << 20);
        assert_eq!(opts.hit_ring_bytes, 512 << 10);
        assert_eq!(opts.flow_ring_bytes, 1 << 20);
        RingArgs {
            payload_ring_kib: Some(16384),
            hit_ring_kib: None,
            flow_ring_kib: Some(64),
        }
        .apply(&mut opts);
        assert_eq!(
            (
                opts.payload_ring_bytes,
                opts.hit_ring_bytes,
                opts.flow_ring_bytes
            ),
            (16 << 20, 512 << 10, 64 << 10)
        );
    }
}
