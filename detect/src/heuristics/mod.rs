//! Maltrail's heuristics: what trails cannot catch because nobody listed it yet.
//!
//! [`MaltrailHeuristics`] implements the [`Heuristics`] hooks of the per-packet
//! [`crate::process::Processor`] and takes flow starts from the kernel
//! ([`MaltrailHeuristics::on_flow_start`]). Every event carries reference `(heuristic)` and
//! Maltrail's wording, which SIEM rules match on:
//!
//! | family | info | type, trail |
//! |---|---|---|
//! | port scan (TCP SYN, NULL/FIN/XMAS) | `potential port scanning` | `IP`, the source |
//! | UDP scan | `potential udp scanning` | `IP`, the source |
//! | infection scan | `potential infection` | `PORT`, the port |
//! | web scan | `potential web scanning` | `PATH`, the path |
//! | DNS exhaustion | `potential dns exhaustion (suspicious)` | `DNS`, `(sub).base` |
//! | NXDOMAIN flood | `excessive no such domain (suspicious)` | `DNS`, name or `(a,b).base` |
//! | NXDOMAIN entropy / consonants | `entropy threshold no such domain (suspicious)`, `consonant threshold no such domain (suspicious)` | `DNS`, `(label).tld` |
//! | long first label | `long domain (suspicious)` | `DNS`, `(sub).base` |
//! | A answer on a sinkhole / parking trail | `sinkholed by <operator> (malware)`, `parked site (suspicious)` | `DNS`, `(name).tld` |
//! | response markers | `sinkhole response (malware)`, `seized domain (suspicious)`, `content type (suspicious)` | `HTTP`, the marker |
//! | missing Host (optional) | `missing host header (suspicious)` | `HTTP`, the target |
//! | IoT dropper download | `potential iot-malware download (suspicious)` | `URL`, `host(path)` |
//! | proxy probe | `potential proxy probe (suspicious)` | `URL`, the target |
//! | user agent | `user agent (suspicious)` | `UA`, `match(rest)` |
//! | attack battery ([`attack`]) | `<family> (suspicious)`, e.g. `potential sql injection (suspicious)` | `URL`, `host(target)` |
//! | executable download | `direct .<ext> download (suspicious)` | `URL`, `host(path)` |
//!
//! Thresholds are Maltrail's defaults ([`HeuristicsConfig::default`]) and configurable.
//! Scans count over a sliding window per key and alert once per key per window; all time
//! comes from the packets or flow starts, so a replayed pcap runs on its own clock.
//!
//! **Where scans come from.** Live capture: the XDP program sends flow starts and the sensor
//! calls [`MaltrailHeuristics::on_flow_start`] (or [`crate::process::Processor::on_flow_start`])
//! with [`HeuristicsConfig::scans_from_packets`] off. Replay: the same logic is fed from the
//! packets, their repeats skipped as the kernel skips them ([`HeuristicsConfig::replay`],
//! [`scan::FlowRepeats`]).
//!
//! **Not flagged**, as in Maltrail: whitelisted sources and whitelisted host names; scans of
//! loopback, multicast and broadcast addresses; web scans between two local addresses; ACK/RST/SYN-ACK packets (an ACK sweep is not
//! a port scan); IoT and executable downloads and data leakage towards local (private,
//! loopback, link-local) destinations. Non-DNS events with a whitelisted address are dropped.
//!
//! **Bounded state.** Every table the network can grow has a capacity: scan windows
//! ([`HeuristicsConfig::max_scan_keys`] per table and address family, `threshold + 1` items
//! per key), web-scan windows, NXDOMAIN counters, DNS-exhaustion domains (each at most
//! `threshold` subdomain hashes), the user-agent verdict cache. Full tables forget their
//! least recently used keys; the IPv4 scan and web-scan tables, the least recently used of
//! the new key's set of four, which can happen before the table is full (see
//! [`bounded::PackedMap`]); an IPv4 scan or web-scan key seen with one item so far is kept
//! in a table of first sightings, sets of two, where a third key of a set takes the slot of
//! the one seen longer ago (see [`bounded::FirstSightings`]).
//! `tests/heuristics.rs` floods each of them.
//!
//! One file per family; tests beside each, end to end in `tests/heuristics.rs` and the
//! replay corpus in `tests/corpus.rs`.

pub mod attack;
pub mod bounded;
pub mod dns_answers;
pub mod dns_exhaustion;
pub mod http_request;
pub mod http_response;
pub mod long_domain;
pub mod names;
pub mod nxdomain;
pub mod scan;
pub mod user_agent;
pub mod web_scan;

use std::borrow::Cow;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use hashbrown::DefaultHashBuilder;

pub use scan::{flow_start_of, is_probe_flags, FlowStart, ScanAlert};
pub use user_agent::UaPatterns;

use crate::event::{decimal, DetailsText, Event, EventType, IpText};
use crate::packet::Packet;
use crate::process::{Heuristics, HttpHost, PacketContext};
use crate::protocols::{dns, http};
use crate::trails::TrailSet;
use crate::whitelist::{is_ignored_suffix, Whitelist};

use attack::AttackPatterns;
use bounded::BoundedMap;
use dns_exhaustion::DnsExhaustion;
use http_response::ResponseMarkers;
use nxdomain::NxDomain;
use scan::FlowRepeats;
use scan::ScanState;
use web_scan::WebScan;

/// The reference of every heuristic event.
pub const REFERENCE: &str = "(heuristic)";
/// Info of a port scan.
pub const INFO_PORT_SCAN: &str = "potential port scanning";
/// Info of a UDP scan.
pub const INFO_UDP_SCAN: &str = "potential udp scanning";
/// Info of an infection scan.
pub const INFO_INFECTION: &str = "potential infection";

/// Bytes of a request target or body decoded for the attack battery.
const MAX_DECODED: usize = 4096;
/// Longest trail text taken from a request.
const MAX_TRAIL: usize = 1024;

/// Why the heuristics could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HeuristicsError {
    /// The user-agent file could not be read.
    #[error("cannot read user-agent patterns {}: {source}", path.display())]
    UaFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The user-agent patterns did not compile together.
    #[error("cannot compile user-agent patterns {}: {message}", path.display())]
    UaRegex {
        /// The file.
        path: PathBuf,
        /// The regex engine's message.
        message: String,
    },
    /// A built-in pattern set did not compile.
    #[error("cannot compile built-in patterns: {0}")]
    Patterns(#[from] regex::Error),
}

/// Thresholds and bounds. [`Default`] is Maltrail's defaults with scans fed from packets
/// (replay); [`HeuristicsConfig::live`] takes scans from kernel flow starts instead.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeuristicsConfig {
    /// Feed the scan heuristics from the packets (replay): each TCP probe and UDP datagram
    /// that does not repeat a flow start within 30 s, as the kernel's records would
    /// ([`scan::FlowRepeats`]). Off in live capture, where flow starts come from the kernel.
    /// Set by the capture path, not configurable.
    #[serde(skip)]
    pub scans_from_packets: bool,
    /// Sliding window of the scan heuristics (30 s).
    pub scan_window_us: i64,
    /// Port scan: more than this many TCP ports on one destination (10).
    pub port_scan_threshold: usize,
    /// UDP scan: more than this many UDP ports on one destination (10).
    pub udp_scan_threshold: usize,
    /// Infection scan: more than this many destinations on one infection port (32).
    pub infection_scan_threshold: usize,
    /// Ports of the infection scan.
    pub infection_ports: Vec<u16>,
    /// Web scan: more than this many distinct first path segments (10).
    pub web_scan_threshold: usize,
    /// DNS exhaustion: at least this many distinct subdomains of one base domain (1000)...
    pub dns_exhaustion_threshold: usize,
    /// ... within this window (60 s).
    pub dns_exhaustion_window_us: i64,
    /// More than this many NXDOMAIN answers in an hour for a name or `*.base` (20).
    pub nxdomain_per_hour_threshold: u32,
    /// NXDOMAIN two-label names: first-label entropy above this (3.5 bits).
    pub nxdomain_entropy_threshold: f64,
    /// NXDOMAIN two-label names: more consonants than this (9).
    pub nxdomain_consonant_threshold: usize,
    /// Long domain: first label longer than this (24).
    pub long_domain_threshold: usize,
    /// Report requests without a `Host` header (off, as in Maltrail).
    pub check_missing_host: bool,
    /// Direct downloads: file-name stems at most this long (9, i.e. under 10 characters).
    pub direct_download_max_stem: usize,
    /// Keys per scan table (TCP, UDP, infection, UDP flows) and of the web-scan table: as
    /// many IPv4 keys (in sets of four, a power of two sets: 1,000 gives 512) and as many
    /// others; the TCP, UDP, infection and web-scan tables keep as many IPv4 keys seen with
    /// one item besides (a power of two: 1,000 gives 512; 24 bytes each, a window's 64 only from a
    /// key's second item).
    pub max_scan_keys: usize,
    /// NXDOMAIN counters kept.
    pub max_nxdomain_counters: usize,
    /// Base domains tracked for DNS exhaustion.
    pub max_exhaustion_domains: usize,
    /// User-agent verdicts cached.
    pub max_ua_cache: usize,
}

impl Default for HeuristicsConfig {
    fn default() -> Self {
        HeuristicsConfig {
            scans_from_packets: true,
            scan_window_us: 30_000_000,
            port_scan_threshold: 10,
            udp_scan_threshold: 10,
            infection_scan_threshold: 32,
            infection_ports: vec![135, 139, 445, 1433, 3389, 6379, 6892, 6893, 6901],
            web_scan_threshold: 10,
            dns_exhaustion_threshold: 1000,
            dns_exhaustion_window_us: 60_000_000,
            nxdomain_per_hour_threshold: 20,
            nxdomain_entropy_threshold: 3.5,
            nxdomain_consonant_threshold: 9,
            long_domain_threshold: 24,
            check_missing_host: false,
            direct_download_max_stem: 9,
            max_scan_keys: 65_536,
            max_nxdomain_counters: 16_384,
            max_exhaustion_domains: 512,
            max_ua_cache: 4_096,
        }
    }
}

impl HeuristicsConfig {
    /// The defaults for pcap replay: scans from packets.
    pub fn replay() -> Self {
        Self::default()
    }

    /// The defaults for live capture: scans from the kernel's flow starts only.
    pub fn live() -> Self {
        HeuristicsConfig {
            scans_from_packets: false,
            ..Self::default()
        }
    }

    /// [`HeuristicsConfig::replay`] with every threshold at 2-4 and the missing-Host check
    /// on, so that a few packets reach each alert path (robustness tests and fuzzing).
    pub fn hair_trigger() -> Self {
        HeuristicsConfig {
            port_scan_threshold: 2,
            udp_scan_threshold: 2,
            infection_scan_threshold: 2,
            web_scan_threshold: 2,
            dns_exhaustion_threshold: 3,
            nxdomain_per_hour_threshold: 2,
            long_domain_threshold: 4,
            check_missing_host: true,
            ..Self::replay()
        }
    }
}

/// Counters of a [`MaltrailHeuristics`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeuristicsStats {
    /// Flow starts counted (from the kernel or from packets).
    pub flow_starts: u64,
    /// Packets of a replay that repeat a flow start ([`scan::FlowRepeats`]): not counted.
    pub flow_repeats: u64,
    /// Events raised.
    pub events: u64,
    /// Events dropped because an address was whitelisted.
    pub whitelisted: u64,
}

/// One bounded table of the heuristics: what it holds and what it dropped to make room.
/// Keys stay until room is needed, stale ones included, so evictions rise steadily on a
/// busy link; evictions over one window near the entries held mean keys go before their
/// window ends (a scan seen only in part may then go unreported).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableState {
    /// The table's name (`scan_tcp`, `web_scan`, ...), as metrics label it.
    pub table: &'static str,
    /// Entries held.
    pub entries: usize,
    /// Entries dropped to make room since start.
    pub evicted: u64,
}

/// Maltrail's heuristic set. One per worker (not shared between threads).
pub struct MaltrailHeuristics {
    config: HeuristicsConfig,
    whitelist: Arc<Whitelist>,
    trails: Option<Arc<TrailSet>>,
    ua: Arc<UaPatterns>,
    attacks: AttackPatterns,
    responses: ResponseMarkers,
    scans: ScanState,
    /// Replay's flow-start cache (with [`HeuristicsConfig::scans_from_packets`]).
    repeats: Option<FlowRepeats>,
    web: WebScan,
    nx: NxDomain,
    exhaustion: DnsExhaustion,
    ua_cache: BoundedMap<u64, Option<String>>,
    hasher: DefaultHashBuilder,
    decoded: Vec<u8>,
    scratch: Vec<u8>,
    sensor: String,
    iface: Option<String>,
    stats: HeuristicsStats,
}

impl std::fmt::Debug for MaltrailHeuristics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaltrailHeuristics")
            .field("config", &self.config)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl MaltrailHeuristics {
    /// The heuristics with the given settings, whitelist and user-agent patterns (see
    /// [`UaPatterns::load`] and [`UaPatterns::load_default`]). Sensor name and interface are
    /// taken from the [`crate::process::Processor`] it is installed in, or set with
    /// [`MaltrailHeuristics::set_sensor`].
    pub fn new(
        config: HeuristicsConfig,
        whitelist: Arc<Whitelist>,
        ua: Arc<UaPatterns>,
    ) -> Result<Self, HeuristicsError> {
        Ok(MaltrailHeuristics {
            scans: ScanState::new(&config),
            repeats: config.scans_from_packets.then(FlowRepeats::new),
            web: WebScan::new(config.max_scan_keys),
            nx: NxDomain::new(config.max_nxdomain_counters),
            exhaustion: DnsExhaustion::new(config.max_exhaustion_domains),
            ua_cache: BoundedMap::new(config.max_ua_cache),
            attacks: AttackPatterns::new()?,
            responses: ResponseMarkers::new()?,
            config,
            whitelist,
            trails: None,
            ua,
            hasher: DefaultHashBuilder::default(),
            decoded: Vec::with_capacity(MAX_DECODED),
            scratch: Vec::with_capacity(MAX_DECODED),
            sensor: String::from("xtrail"),
            iface: None,
            stats: HeuristicsStats::default(),
        })
    }

    /// Sets the sensor name and interface written into events raised from flow starts.
    pub fn set_sensor(&mut self, sensor: &str, iface: Option<&str>) {
        sensor.clone_into(&mut self.sensor);
        self.iface = iface.map(str::to_owned);
    }

    /// Gives the trails used to recognise sinkhole and parking addresses in DNS answers.
    pub fn set_trail_set(&mut self, trails: Arc<TrailSet>) {
        self.trails = Some(trails);
    }

    /// The settings.
    pub fn config(&self) -> &HeuristicsConfig {
        &self.config
    }

    /// The counters so far.
    pub fn stats(&self) -> &HeuristicsStats {
        &self.stats
    }

    /// Each bounded table's entries and evictions. DNS exhaustion's subdomain sets are
    /// capped per base domain (counting stops at the threshold) and never evict.
    pub fn tables(&self) -> Vec<TableState> {
        let mut t = self.scans.tables().to_vec();
        t.extend([
            TableState {
                table: "web_scan",
                entries: self.web.len(),
                evicted: self.web.evicted(),
            },
            TableState {
                table: "nxdomain",
                entries: self.nx.len(),
                evicted: self.nx.evicted(),
            },
            TableState {
                table: "dns_exhaustion",
                entries: self.exhaustion.domains(),
                evicted: self.exhaustion.evicted(),
            },
            TableState {
                table: "dns_exhaustion_subdomains",
                entries: self.exhaustion.subdomains(),
                evicted: 0,
            },
            TableState {
                table: "ua_cache",
                entries: self.ua_cache.len(),
                evicted: self.ua_cache.evicted(),
            },
        ]);
        t
    }

    /// A flow start from the kernel (live capture): counts it in the scan windows and emits
    /// the scan events it raises.
    pub fn on_flow_start(&mut self, f: &FlowStart, out: &mut dyn FnMut(Event)) {
        self.scans.prefetch(&self.config, f);
        self.prefetched_flow_start(f, out);
    }

    /// [`MaltrailHeuristics::on_flow_start`] of a start whose scan-table entries were
    /// prefetched ([`ScanState::prefetch`]).
    fn prefetched_flow_start(&mut self, f: &FlowStart, out: &mut dyn FnMut(Event)) {
        let sensor = std::mem::take(&mut self.sensor);
        let iface = self.iface.take();
        let ctx = PacketContext {
            ts_us: f.ts_us,
            sensor: &sensor,
            iface: iface.as_deref(),
            src: f.src,
            src_port: f.src_port,
            dst: f.dst,
            dst_port: f.dst_port,
            proto: f.proto,
        };
        self.flow_start(&ctx, f, out);
        self.sensor = sensor;
        self.iface = iface;
    }

    fn flow_start(&mut self, ctx: &PacketContext<'_>, f: &FlowStart, out: &mut dyn FnMut(Event)) {
        self.stats.flow_starts += 1;
        if self.whitelist.is_ip_whitelisted(f.src) {
            return;
        }
        let mut alerts = [None; 3];
        let mut n = 0;
        self.scans.observe(&self.config, f, |a| {
            if let Some(slot) = alerts.get_mut(n) {
                *slot = Some(a);
                n += 1;
            }
        });
        for alert in alerts.into_iter().flatten() {
            let e = match alert {
                ScanAlert::PortScan => ctx.event(
                    EventType::Ip,
                    IpText::new(f.src).as_str(),
                    INFO_PORT_SCAN,
                    REFERENCE,
                    DetailsText::default(),
                ),
                ScanAlert::UdpScan => ctx.event(
                    EventType::Ip,
                    IpText::new(f.src).as_str(),
                    INFO_UDP_SCAN,
                    REFERENCE,
                    DetailsText::default(),
                ),
                ScanAlert::Infection => ctx.event(
                    EventType::Port,
                    decimal(u64::from(f.dst_port), &mut [0; 20]),
                    INFO_INFECTION,
                    REFERENCE,
                    DetailsText::default(),
                ),
            };
            self.emit(e, out);
        }
    }

    /// Passes an event on unless it is a non-DNS event with a whitelisted address.
    fn emit(&mut self, e: Event, out: &mut dyn FnMut(Event)) {
        if e.kind != EventType::Dns
            && (self.whitelist.is_ip_whitelisted(e.src_ip)
                || self.whitelist.is_ip_whitelisted(e.dst_ip))
        {
            self.stats.whitelisted += 1;
            return;
        }
        self.stats.events += 1;
        out(e);
    }

    /// A name the DNS heuristics may look at: valid, not under an ignored suffix, not
    /// whitelisted.
    fn checkable_name(&self, name: &str) -> bool {
        name.contains('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
            && !is_ignored_suffix(name)
            && !self.whitelist.is_domain_whitelisted(name)
    }

    /// The user-agent verdict, cached by the agent's hash.
    fn ua_verdict(&mut self, ua: &[u8]) -> Option<String> {
        let key = bounded::hash_bytes(&self.hasher, ua);
        if let Some(v) = self.ua_cache.get_mut(&key) {
            return v.clone();
        }
        let verdict = self.ua.check(ua);
        self.ua_cache
            .value_or_insert_with(&key, || key, || None)
            .clone_from(&verdict);
        verdict
    }

    /// The first attack family in the target or (for uploads of form data) the body.
    fn attack_family(&mut self, req: &http::Request<'_>) -> Option<&'static str> {
        let target = attack::url_decoded(
            req.target,
            &mut self.decoded,
            &mut self.scratch,
            MAX_DECODED,
        );
        if let Some(f) = self.attacks.classify(target) {
            return Some(f);
        }
        let multipart = req.content_type.is_some_and(|ct| {
            ct.len() >= 9
                && ct
                    .get(..9)
                    .is_some_and(|p| p.eq_ignore_ascii_case(b"multipart"))
        });
        if req.body.is_empty() || multipart {
            return None;
        }
        let body = attack::url_decoded(req.body, &mut self.decoded, &mut self.scratch, MAX_DECODED);
        self.attacks.classify(body)
    }
}

/// Private, loopback, link-local, unique-local or unspecified: not "out there".
pub fn is_local_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            a.is_private()
                || a.is_loopback()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_broadcast()
        }
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => is_local_address(IpAddr::V4(v4)),
            None => {
                let first = a.segments().first().copied().unwrap_or(0);
                a.is_loopback()
                    || a.is_unspecified()
                    || (first & 0xfe00) == 0xfc00
                    || (first & 0xffc0) == 0xfe80
            }
        },
    }
}

/// Request bytes as trail text, at most [`MAX_TRAIL`] bytes.
fn trail_text(b: &[u8]) -> String {
    String::from_utf8_lossy(trail_bytes(b)).into_owned()
}

/// The first [`MAX_TRAIL`] bytes of `b`, as [`trail_text`] keeps them.
fn trail_bytes(b: &[u8]) -> &[u8] {
    b.get(..b.len().min(MAX_TRAIL)).unwrap_or(b)
}

impl Heuristics for MaltrailHeuristics {
    fn set_context(&mut self, sensor: &str, iface: Option<&str>) {
        self.set_sensor(sensor, iface);
    }

    fn set_trails(&mut self, trails: &Arc<TrailSet>) {
        self.set_trail_set(Arc::clone(trails));
    }

    fn on_flow_start(&mut self, flow: &FlowStart, out: &mut dyn FnMut(Event)) {
        MaltrailHeuristics::on_flow_start(self, flow, out);
    }

    fn on_flow_starts(&mut self, flows: &[FlowStart], out: &mut dyn FnMut(Event)) {
        // The batch's table entries prefetched first: their cache misses overlap.
        for f in flows {
            self.scans.prefetch(&self.config, f);
        }
        for f in flows {
            self.prefetched_flow_start(f, out);
        }
    }

    fn state_entries(&self) -> usize {
        self.tables().iter().map(|t| t.entries).sum()
    }

    fn tables(&self) -> Vec<TableState> {
        MaltrailHeuristics::tables(self)
    }

    fn prefetch_packet(&mut self, ctx: &PacketContext<'_>, pkt: &Packet<'_>) -> bool {
        let Some(repeats) = self.repeats.as_mut() else {
            return false;
        };
        let Some(f) = flow_start_of(ctx.ts_us, pkt) else {
            return false;
        };
        // As live, where the kernel sends no record for a repeat.
        if repeats.repeats(&f) {
            self.stats.flow_repeats += 1;
            return false;
        }
        // Every table the start reads requested at once: its misses overlap each other and
        // the packet's trail checks, which come before `on_packet`.
        self.scans.prefetch(&self.config, &f);
        true
    }

    fn on_packet(&mut self, ctx: &PacketContext<'_>, pkt: &Packet<'_>, out: &mut dyn FnMut(Event)) {
        // The start `prefetch_packet` took, found again (cheaper than keeping a copy).
        if self.repeats.is_none() {
            return;
        }
        if let Some(f) = flow_start_of(ctx.ts_us, pkt) {
            self.flow_start(ctx, &f, out);
        }
    }

    fn on_dns_query(
        &mut self,
        ctx: &PacketContext<'_>,
        _msg: &dns::Message<'_>,
        name: &str,
        out: &mut dyn FnMut(Event),
    ) {
        // The pipeline passes a valid name (letters, digits, `-`, `.`, two labels or more),
        // not under an ignored suffix, not whitelisted (the trait's contract): what
        // `checkable_name` would check again.
        debug_assert!(self.checkable_name(name));
        let details = DetailsText {
            dns_query: Some(name.as_bytes()),
            ..DetailsText::default()
        };
        if let Some(trail) = long_domain::check(name, self.config.long_domain_threshold) {
            let e = ctx.event(
                EventType::Dns,
                &trail,
                long_domain::INFO,
                REFERENCE,
                details,
            );
            self.emit(e, out);
        }
        if let Some(trail) = self.exhaustion.observe(
            name,
            ctx.ts_us,
            self.config.dns_exhaustion_threshold,
            self.config.dns_exhaustion_window_us,
        ) {
            let e = ctx.event(
                EventType::Dns,
                &trail,
                dns_exhaustion::INFO,
                REFERENCE,
                details,
            );
            self.emit(e, out);
        }
    }

    fn on_dns_response(
        &mut self,
        ctx: &PacketContext<'_>,
        msg: &dns::Message<'_>,
        out: &mut dyn FnMut(Event),
    ) {
        let Some(q) = msg.question else { return };
        let Some(name) = q.name.as_str() else { return };
        if !self.checkable_name(name) {
            return;
        }
        let details = DetailsText {
            dns_query: Some(name.as_bytes()),
            ..DetailsText::default()
        };
        match msg.header.rcode() {
            dns::RCODE_NXDOMAIN => {
                if let Some(trail) =
                    self.nx
                        .observe(name, ctx.ts_us, self.config.nxdomain_per_hour_threshold)
                {
                    let e = ctx.event(
                        EventType::Dns,
                        &trail,
                        nxdomain::INFO_EXCESSIVE,
                        REFERENCE,
                        details,
                    );
                    self.emit(e, out);
                }
                if let Some((trail, info)) = nxdomain::dga_shape(
                    name,
                    self.config.nxdomain_entropy_threshold,
                    self.config.nxdomain_consonant_threshold,
                ) {
                    let e = ctx.event(EventType::Dns, &trail, info, REFERENCE, details);
                    self.emit(e, out);
                }
            }
            0 => {
                let Some(trails) = self.trails.as_deref() else {
                    return;
                };
                if let Some((trail, info)) = dns_answers::check(msg, name, trails) {
                    let e = ctx.event(EventType::Dns, &trail, &info, REFERENCE, details);
                    self.emit(e, out);
                }
            }
            _ => {}
        }
    }

    fn prefetch_http_request(&self, ctx: &PacketContext<'_>) {
        // The pair's web-scan entries: random lines of large tables (fetched for internal
        // pairs too, which skip the heuristic: cheaper than asking).
        self.web.prefetch(ctx.src, ctx.dst);
    }

    fn on_http_request(
        &mut self,
        ctx: &PacketContext<'_>,
        req: &http::Request<'_>,
        host: &HttpHost<'_>,
        out: &mut dyn FnMut(Event),
    ) {
        if self.whitelist.is_ip_whitelisted(ctx.src) {
            return;
        }
        // The pipeline read `Host` once (and asked the whitelist about it).
        if host.whitelisted {
            return;
        }
        let header_host = host.name;
        let host: Cow<'_, str> = match &header_host {
            Some(h) => Cow::Borrowed(h),
            None => Cow::Owned(ctx.dst.to_string()),
        };
        let details = DetailsText {
            http_method: Some(req.method.as_bytes()),
            http_host: Some(host.as_bytes()),
            http_path: Some(trail_bytes(req.target)),
            http_user_agent: req.user_agent.map(trail_bytes),
            ..DetailsText::default()
        };

        if let Some(ua) = req.user_agent {
            if let Some(trail) = self.ua_verdict(ua) {
                let e = ctx.event(EventType::Ua, &trail, user_agent::INFO, REFERENCE, details);
                self.emit(e, out);
            }
        }
        if self.config.check_missing_host && header_host.is_none() && req.head_complete {
            let e = ctx.event(
                EventType::Http,
                &trail_text(req.target),
                http_request::INFO_MISSING_HOST,
                REFERENCE,
                details,
            );
            self.emit(e, out);
        }

        let path = http_request::path_of(req.target);
        // Internal to internal (reverse proxies, health checks, service meshes) is not web
        // scanning.
        let local_dst = is_local_address(ctx.dst);
        let internal = local_dst && is_local_address(ctx.src);
        if !internal
            && self.web.observe(
                ctx.src,
                ctx.dst,
                path,
                ctx.ts_us,
                self.config.scan_window_us,
                self.config.web_scan_threshold,
            )
        {
            let e = ctx.event(
                EventType::Path,
                &trail_text(path),
                web_scan::INFO,
                REFERENCE,
                details,
            );
            self.emit(e, out);
        }

        // One verdict on the request itself: the first that applies.
        let host_path = || format!("{host}({})", trail_text(path));
        if http_request::is_proxy_probe(req.target) {
            let e = ctx.event(
                EventType::Url,
                &trail_text(req.target),
                http_request::INFO_PROXY_PROBE,
                REFERENCE,
                details,
            );
            self.emit(e, out);
            return;
        }
        if !local_dst
            && header_host.is_some_and(http_request::is_numeric_host)
            && http_request::is_iot_binary_path(path)
        {
            let e = ctx.event(
                EventType::Url,
                &host_path(),
                http_request::INFO_IOT,
                REFERENCE,
                details,
            );
            self.emit(e, out);
            return;
        }
        if let Some(family) = self.attack_family(req) {
            if !(family == "potential data leakage" && local_dst) {
                let trail = format!("{host}({})", trail_text(req.target));
                let info = format!("{family} (suspicious)");
                let e = ctx.event(EventType::Url, &trail, &info, REFERENCE, details);
                self.emit(e, out);
                return;
            }
        }
        if !local_dst {
            if let Some(ext) = http_request::direct_download_extension_in(
                req.target,
                path,
                self.config.direct_download_max_stem,
            ) {
                let info = format!("direct .{ext} download (suspicious)");
                let e = ctx.event(EventType::Url, &host_path(), &info, REFERENCE, details);
                self.emit(e, out);
            }
        }
    }

    fn on_http_response(
        &mut self,
        ctx: &PacketContext<'_>,
        resp: &http::Response<'_>,
        out: &mut dyn FnMut(Event),
    ) {
        let mut found = Vec::new();
        self.responses
            .check(resp.head, resp.body, resp.content_type, |f| found.push(f));
        for (trail, info) in found {
            let e = ctx.event(
                EventType::Http,
                &trail,
                info,
                REFERENCE,
                DetailsText::default(),
            );
            self.emit(e, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_addresses() {
        for a in [
            "10.1.2.3",
            "192.168.0.1",
            "172.16.0.1",
            "127.0.0.1",
            "169.254.1.1",
            "fd00::1",
            "fe80::1",
            "::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_local_address(a.parse().unwrap()), "{a}");
        }
        for a in ["198.51.100.99", "8.8.8.8", "2001:db8::1", "::ffff:8.8.8.8"] {
            assert!(!is_local_address(a.parse().unwrap()), "{a}");
        }
    }
}
