//! Pcap replay: capture files through the same [`Detector`] the live sensor feeds (see
//! [`crate::pipeline`]), with time taken from the packets, events written one per line.
//!
//! The heuristics ([`MaltrailHeuristics`]) are installed by default, with scans fed from the
//! packets and every window on the pcap's clock; pending throttle summaries are written at
//! the end.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::event::{recycle, Event, Format, LineWriter};
use crate::heuristics::{HeuristicsConfig, HeuristicsError, UaPatterns};
use crate::pcap::{self, PcapError};
use crate::pipeline::{Detector, DetectorConfig, DetectorStats, FloodConfig};
use crate::process::{ProcessorConfig, ProcessorStats};
use crate::throttle::{ThrottleConfig, ThrottleStats};
use crate::trails::TrailSet;
use crate::whitelist::Whitelist;

/// Settings of a replay.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    /// Pipeline settings (sensor name, ...).
    pub processor: ProcessorConfig,
    /// Output line format.
    pub format: Format,
    /// Repeat collapsing and summarizing; `None` writes every event.
    pub throttle: Option<ThrottleConfig>,
    /// Heuristics settings; `None` runs trails only. The default is
    /// [`HeuristicsConfig::replay`] (scans fed from packets).
    pub heuristics: Option<HeuristicsConfig>,
    /// Suspicious user-agent patterns; `None` loads [`UaPatterns::load_default`] (no
    /// patterns when no file is found).
    pub ua_patterns: Option<Arc<UaPatterns>>,
    /// The flood guard; `None` leaves the event rate unbounded.
    pub flood: Option<FloodConfig>,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            processor: ProcessorConfig::default(),
            format: Format::Json,
            throttle: Some(ThrottleConfig::default()),
            heuristics: Some(HeuristicsConfig::replay()),
            ua_patterns: None,
            flood: Some(FloodConfig::default()),
        }
    }
}

/// Per-link-type counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinktypeStats {
    /// Packets of this link type.
    pub packets: u64,
    /// Of those, packets the parser rejected.
    pub parse_errors: u64,
}

/// A file that could not be read to its end (its readable packets were replayed).
#[derive(Debug)]
pub struct FileError {
    /// The file.
    pub path: PathBuf,
    /// What went wrong.
    pub error: PcapError,
}

/// What a replay did.
#[derive(Debug, Default)]
pub struct ReplayStats {
    /// Time spent reading and processing packets (set-up such as compiling the heuristics'
    /// patterns excluded).
    pub elapsed: std::time::Duration,
    /// CPU time of the whole process over the same span: every thread's (the files'
    /// read-ahead among them; a compiled trail set's background check and `--collector`'s
    /// publisher too while they run). `None` where the process's CPU clock could not be read.
    pub cpu: Option<std::time::Duration>,
    /// Files opened.
    pub files: usize,
    /// Packets read.
    pub packets: u64,
    /// Events written.
    pub events: u64,
    /// Packets the parser rejected.
    pub parse_errors: u64,
    /// Counters per link type.
    pub per_linktype: BTreeMap<u32, LinktypeStats>,
    /// Files that ended early or were corrupt part-way.
    pub file_errors: Vec<FileError>,
    /// The pipeline's counters.
    pub processor: ProcessorStats,
    /// The throttle's counters.
    pub throttle: ThrottleStats,
    /// Every stage's counters.
    pub detector: DetectorStats,
}

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A file could not be opened or is not a capture file.
    #[error("cannot read {}: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: PcapError,
    },
    /// The heuristics could not be set up.
    #[error(transparent)]
    Heuristics(#[from] HeuristicsError),
    /// Writing events failed.
    #[error("cannot write events: {0}")]
    Write(#[from] std::io::Error),
}

/// Replays the capture files in order, writing the events to `writer` (one per line).
pub fn replay<W: Write + ?Sized>(
    paths: &[PathBuf],
    trails: Arc<TrailSet>,
    whitelist: Arc<Whitelist>,
    opts: &ReplayOptions,
    writer: &mut W,
) -> Result<ReplayStats, ReplayError> {
    replay_with(paths, trails, whitelist, opts, writer, &mut |_| {})
}

/// Like [`replay`], and also hands every written event to `on_event` (e.g. to publish it to
/// a collector).
pub fn replay_with<W: Write + ?Sized>(
    paths: &[PathBuf],
    trails: Arc<TrailSet>,
    whitelist: Arc<Whitelist>,
    opts: &ReplayOptions,
    writer: &mut W,
    on_event: &mut dyn FnMut(&Event),
) -> Result<ReplayStats, ReplayError> {
    let heuristics = match &opts.heuristics {
        Some(config) => {
            let ua = match &opts.ua_patterns {
                Some(ua) => Arc::clone(ua),
                None => Arc::new(UaPatterns::load_default()?),
            };
            Some((config.clone(), ua))
        }
        None => None,
    };
    let mut detector = Detector::new(DetectorConfig {
        trails,
        whitelist,
        processor: opts.processor.clone(),
        heuristics,
        throttle: opts.throttle,
        flood: opts.flood,
        // Replay's packets carry their own SYNs: the processor applies the label rules.
        maltrail_syn_rules: false,
    })?;
    let started = std::time::Instant::now();
    let cpu_started = crate::cpu_clock::process();
    let mut stats = ReplayStats::default();
    let mut write_error: Option<std::io::Error> = None;
    let mut lines = LineWriter::new(opts.format);
    for path in paths {
        replay_file(
            path,
            &mut detector,
            &mut lines,
            writer,
            on_event,
            &mut stats,
            &mut write_error,
        )?;
        if let Some(e) = write_error.take() {
            return Err(ReplayError::Write(e));
        }
    }
    let mut summaries = Vec::new();
    detector.finish(&mut |e| summaries.push(e));
    for e in summaries {
        lines.write(writer, &e)?;
        on_event(&e);
        stats.events += 1;
    }
    writer.flush()?;
    stats.elapsed = started.elapsed();
    stats.cpu = crate::cpu_clock::process()
        .zip(cpu_started)
        .map(|(end, start)| end.saturating_sub(start));
    stats.detector = detector.stats();
    stats.processor = stats.detector.processor.clone();
    stats.parse_errors = stats.processor.parse_errors;
    stats.throttle = stats.detector.throttle;
    Ok(stats)
}

fn replay_file<W: Write + ?Sized>(
    path: &Path,
    detector: &mut Detector,
    lines: &mut LineWriter,
    writer: &mut W,
    on_event: &mut dyn FnMut(&Event),
    stats: &mut ReplayStats,
    write_error: &mut Option<std::io::Error>,
) -> Result<(), ReplayError> {
    let mut reader = pcap::open(path).map_err(|source| ReplayError::Open {
        path: path.to_owned(),
        source,
    })?;
    stats.files += 1;
    // This file's current link type's counters, added to `per_linktype` when the type changes
    // and at the end: no map lookup per packet.
    let mut current: Option<(u32, LinktypeStats)> = None;
    loop {
        let pkt = match reader.next_packet() {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(error) => {
                stats.file_errors.push(FileError {
                    path: path.to_owned(),
                    error,
                });
                break;
            }
        };
        stats.packets += 1;
        if current.is_some_and(|(t, _)| t != pkt.linktype) {
            add_linktype(stats, current.take());
        }
        let (_, lt) = current.get_or_insert((pkt.linktype, LinktypeStats::default()));
        lt.packets += 1;
        let mut write = |event: Event| {
            if write_error.is_some() {
                return;
            }
            match lines.write(writer, &event) {
                Ok(()) => {
                    on_event(&event);
                    stats.events += 1;
                }
                Err(e) => *write_error = Some(e),
            }
            // Its strings for the next event's.
            recycle(event);
        };
        if detector
            .frame(pkt.ts_us, pkt.linktype, None, pkt.data, &mut write)
            .is_err()
        {
            lt.parse_errors += 1;
        }
        if write_error.is_some() {
            break;
        }
    }
    add_linktype(stats, current);
    Ok(())
}

fn add_linktype(stats: &mut ReplayStats, counters: Option<(u32, LinktypeStats)>) {
    if let Some((linktype, c)) = counters {
        let lt = stats.per_linktype.entry(linktype).or_default();
        lt.packets += c.packets;
        lt.parse_errors += c.parse_errors;
    }
}
