//! The live capture loop: ring buffers in, events out.
//!
//! The XDP program writes trail hits to `HITS` and, in inline mode, copies of DNS, HTTP and
//! TLS ClientHello packets to `PAYLOADS`. This loop polls both: hits become IP/IPORT events
//! directly; payloads go through the same [`Processor`] as pcap replay (domain, URL and host
//! matching, IP trails of DNS packets), then the [`Throttle`].

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use xtrail_common::{config_flags, side, PayloadRecord, PAYLOAD_CAP};
use xtrail_detect::event::Event;
use xtrail_detect::heuristics::{FlowStart, HeuristicsConfig, MaltrailHeuristics, UaPatterns};
use xtrail_detect::process::{syn_hit_reported, Processor, ProcessorConfig};
use xtrail_detect::throttle::{Throttle, ThrottleConfig};
use xtrail_detect::trails::TrailSet;
use xtrail_detect::whitelist::Whitelist;

use crate::hits::{self, Clock};
use crate::loader::{self, AttachMode, Mode, Sensor, SensorOptions};
use crate::output::EventLog;
use crate::xsk;
use xtrail_publish::Publisher;

/// Everything a live run needs.
pub struct LiveOptions {
    pub ifaces: Vec<String>,
    pub sensor: SensorOptions,
    pub attach: AttachMode,
    pub sensor_name: String,
    pub stats_interval: Duration,
    pub duration: Option<Duration>,
    /// Mirror mode: receive DNS/HTTP/TLS over AF_XDP sockets (else ring-buffer copies).
    pub afxdp: bool,
    /// Heuristics (scans, DNS, HTTP); `None` runs trails only.
    pub heuristics: Option<HeuristicsConfig>,
    /// Suspicious user-agent patterns for the heuristics.
    pub ua: Arc<UaPatterns>,
    /// Streams events to a collector, when configured.
    pub publisher: Option<Arc<Publisher>>,
    /// Apply Maltrail's SYN label rules to kernel hits (as replay does).
    pub maltrail_syn_rules: bool,
}

/// What every live [`Processor`] is built from: the main loop's (payload ring and flow starts)
/// and each AF_XDP worker's.
#[derive(Clone)]
pub struct Pipeline {
    pub trails: Arc<TrailSet>,
    pub whitelist: Arc<Whitelist>,
    pub sensor_name: String,
    /// Heuristics (scans, DNS, HTTP); `None` runs trails only.
    pub heuristics: Option<HeuristicsConfig>,
    pub ua: Arc<UaPatterns>,
}

impl Pipeline {
    /// A Processor for live capture on `iface`, with the heuristics installed when they are on.
    pub fn processor(&self, iface: Option<String>) -> anyhow::Result<Processor> {
        let mut p = Processor::new(
            Arc::clone(&self.trails),
            Arc::clone(&self.whitelist),
            ProcessorConfig {
                iface,
                ..ProcessorConfig::with_sensor(self.sensor_name.clone())
            },
        );
        if let Some(cfg) = &self.heuristics {
            let h = MaltrailHeuristics::new(
                cfg.clone(),
                Arc::clone(&self.whitelist),
                Arc::clone(&self.ua),
            )
            .context("setting up the heuristics")?;
            p.set_heuristics(Box::new(h));
        }
        Ok(p)
    }
}

/// Totals at the end of a run.
#[derive(Debug, Default)]
pub struct LiveSummary {
    pub events: u64,
    pub whitelisted: u64,
    /// Kernel hits dropped by Maltrail's label rules (SYN to an attacker, from malware...).
    pub filtered: u64,
    pub payloads: u64,
    /// Flow-start records read.
    pub flows: u64,
    /// Events that could not be spooled for the collector.
    pub publish_errors: u64,
}

/// Link type of the frames the XDP program copies (Ethernet).
const LINKTYPE_ETHERNET: u32 = 1;

/// Splits a payload ring-buffer item into its header and frame bytes.
fn payload(item: &[u8]) -> Option<(u64, u32, &[u8])> {
    let data_off = std::mem::offset_of!(PayloadRecord, data);
    if item.len() < data_off {
        return None;
    }
    let u64_at = |o: usize| {
        item.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_ne_bytes)
    };
    let u32_at = |o: usize| {
        item.get(o..o + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_ne_bytes)
    };
    let ts = u64_at(std::mem::offset_of!(PayloadRecord, ts_ns))?;
    let ifindex = u32_at(std::mem::offset_of!(PayloadRecord, ifindex))?;
    let cap = u32_at(std::mem::offset_of!(PayloadRecord, cap_len))? as usize;
    let frame = item.get(data_off..data_off + cap.min(PAYLOAD_CAP))?;
    Some((ts, ifindex, frame))
}

/// Loads, attaches, and runs until `stop` is set or the duration passes; detaches on return.
pub fn run(
    trails: Arc<TrailSet>,
    whitelist: Arc<Whitelist>,
    opts: &LiveOptions,
    log: &mut EventLog,
    stop: &AtomicBool,
) -> anyhow::Result<LiveSummary> {
    let pipeline = Pipeline {
        trails: Arc::clone(&trails),
        whitelist: Arc::clone(&whitelist),
        sensor_name: opts.sensor_name.clone(),
        heuristics: opts.heuristics.clone(),
        ua: Arc::clone(&opts.ua),
    };
    let started = Instant::now();
    let mut sensor = Sensor::load(&trails.ip, &opts.sensor)?;
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
    let mut ring = sensor.take_hits()?;
    let mut payloads = sensor.take_payloads()?;
    let mut flows = sensor.take_flows()?;
    let ifaces: Vec<(String, u32)> = opts
        .ifaces
        .iter()
        .map(|i| (i.clone(), loader::ifindex(i).unwrap_or(0)))
        .collect();
    // Mirror mode: AF_XDP workers, one per (interface, queue).
    let (worker_tx, worker_rx) = std::sync::mpsc::sync_channel::<Event>(65_536);
    let worker_stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    if opts.sensor.mode == Mode::Mirror && opts.afxdp && opts.sensor.handoff {
        let ctx = xsk::WorkerContext {
            pipeline: pipeline.clone(),
            events: worker_tx.clone(),
            stop: Arc::clone(&worker_stop),
        };
        match xsk::start(&mut sensor, &ifaces, &ctx) {
            Ok(w) => {
                let mut config = sensor.config;
                config.flags |= config_flags::XSK;
                sensor.write_config(config)?;
                eprintln!(
                    "xtrail-sensor: {} AF_XDP worker(s): {}",
                    w.len(),
                    w.iter()
                        .map(|w| format!("{}:{}", w.iface, w.queue))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
                workers = w;
            }
            Err(e) => log::warn!(
                "AF_XDP sockets unavailable ({e:#}); mirror mode hands packets over by ring-buffer copies"
            ),
        }
    }
    drop(worker_tx);
    for iface in &opts.ifaces {
        let a = sensor.attach(iface, opts.attach)?;
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
    let ifnames: Vec<(u32, String)> = sensor
        .attachments()
        .iter()
        .map(|a| (a.ifindex, a.iface.clone()))
        .collect();
    let ifname = |index: u32| {
        ifnames
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, n)| n.clone())
    };
    // One processor for the payload ring (inline mode) and the flow starts (both modes): a
    // single heuristics instance sees every flow start, so scan counts are not split.
    let mut processor = pipeline.processor(None)?;
    let mut throttle = Throttle::new(ThrottleConfig::default());
    let mut last_flush = Instant::now();
    let mut summary = LiveSummary::default();
    let mut clock = Clock::now();
    let mut last_clock = Instant::now();
    let mut last_stats = Instant::now();
    let run_started = Instant::now();
    let mut pending: Vec<Event> = Vec::new();
    let fds = [
        Some(ring.as_raw_fd()),
        Some(payloads.as_raw_fd()),
        Some(flows.as_raw_fd()),
        logger.as_ref().map(AsRawFd::as_raw_fd),
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
    loop {
        if !finishing {
            let timed_out = opts.duration.is_some_and(|d| run_started.elapsed() >= d);
            if stop.load(Ordering::Relaxed) || timed_out {
                // Detach first, stop the workers, then drain what arrived before.
                sensor.detach_all();
                worker_stop.store(true, Ordering::Relaxed);
                for w in workers.drain(..) {
                    let name = format!("{}:{}", w.iface, w.queue);
                    if let Err(e) = w.join() {
                        log::error!("AF_XDP worker {name}: {e:#}");
                    }
                }
                finishing = true;
            } else {
                // SAFETY: pollfds is a valid array of pollfd of the given length.
                unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, 20) };
                // A worker that died is fatal: say so and stop.
                if let Some(i) = workers.iter().position(|w| w.is_finished()) {
                    let w = workers.swap_remove(i);
                    let name = format!("{}:{}", w.iface, w.queue);
                    let result = w.join();
                    sensor.detach_all();
                    worker_stop.store(true, Ordering::Relaxed);
                    return Err(anyhow::anyhow!(
                        "AF_XDP worker {name} stopped: {}",
                        result
                            .err()
                            .map(|e| format!("{e:#}"))
                            .unwrap_or_else(|| "no error".into())
                    ));
                }
            }
        }
        if last_clock.elapsed() > Duration::from_secs(60) {
            clock = Clock::now();
            last_clock = Instant::now();
        }
        while let Some(item) = ring.next() {
            let Some(rec) = hits::parse_record(&item) else {
                continue;
            };
            let event = hits::to_event(
                &rec,
                &trails,
                &opts.sensor_name,
                ifname(rec.ifindex),
                &clock,
            );
            // Maltrail drops a hit when either address is whitelisted.
            if whitelist.is_ip_whitelisted(event.src_ip)
                || whitelist.is_ip_whitelisted(event.dst_ip)
            {
                summary.whitelisted += 1;
                continue;
            }
            // Maltrail's label rules for SYNs (nothing for a SYN to an `attacker` or *from* a
            // `malware` host) always apply to pcap replay, for parity with its corpus; live,
            // every reportable hit is reported unless --maltrail-syn-rules asks for them.
            if opts.maltrail_syn_rules
                && rec.proto == 6
                && !syn_hit_reported(
                    &event.info,
                    rec.side == side::DST,
                    rec.dst_port,
                    event.dst_ip.is_loopback(),
                )
            {
                summary.filtered += 1;
                continue;
            }
            pending.push(event);
        }
        while let Some(item) = payloads.next() {
            let Some((ts_ns, ifindex, frame)) = payload(&item) else {
                continue;
            };
            summary.payloads += 1;
            let ts_us = clock.to_unix_us(ts_ns);
            let iface = ifname(ifindex);
            processor.process(ts_us, LINKTYPE_ETHERNET, frame, &mut |mut ev: Event| {
                ev.iface.clone_from(&iface);
                throttle.filter(ev, &mut |ev| pending.push(ev));
            });
        }
        while let Some(item) = flows.next() {
            let Some(rec) = hits::parse_flow(&item) else {
                continue;
            };
            summary.flows += 1;
            let flow = FlowStart {
                ts_us: clock.to_unix_us(rec.ts_ns),
                src: hits::addr(rec.family, rec.src),
                dst: hits::addr(rec.family, rec.dst),
                src_port: rec.src_port,
                dst_port: rec.dst_port,
                proto: rec.proto,
                tcp_flags: rec.tcp_flags,
            };
            processor.on_flow_start(&flow, &mut |ev: Event| {
                throttle.filter(ev, &mut |ev| pending.push(ev));
            });
        }
        // Summaries of throttled events come out when their window closes.
        if finishing {
            throttle.finish(&mut |ev| pending.push(ev));
        } else if last_flush.elapsed() >= Duration::from_secs(1) {
            last_flush = Instant::now();
            throttle.flush(hits::unix_us_now(), &mut |ev| pending.push(ev));
        }
        while let Ok(ev) = worker_rx.try_recv() {
            pending.push(ev);
        }
        for ev in pending.drain(..) {
            log.write(&ev).context("writing event")?;
            if let Some(p) = &opts.publisher {
                if let Err(e) = p.publish(&ev) {
                    summary.publish_errors += 1;
                    log::error!("spooling an event for the collector: {e}");
                }
            }
            summary.events += 1;
        }
        log.flush().context("writing event")?;
        if let Some(l) = logger.as_mut() {
            l.flush();
        }
        if finishing {
            break;
        }
        if !opts.stats_interval.is_zero() && last_stats.elapsed() >= opts.stats_interval {
            last_stats = Instant::now();
            if let Ok(c) = sensor.counters() {
                eprintln!(
                    "xtrail-sensor: stats {c} events={} whitelisted={} filtered={} payloads={}",
                    summary.events, summary.whitelisted, summary.filtered, summary.payloads
                );
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
    let counters = sensor.counters()?;
    let (runs, run_time) = sensor.run_stats();
    eprintln!(
        "xtrail-sensor: detached; final stats {counters} events={} whitelisted={} filtered={} payloads={} flows={} xdp_runs={runs} xdp_run_ns={}",
        summary.events,
        summary.whitelisted,
        summary.filtered,
        summary.payloads,
        summary.flows,
        run_time.as_nanos()
    );
    Ok(summary)
}
