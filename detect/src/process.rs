//! The per-packet detection pipeline, shared by pcap replay and the live AF_XDP workers.
//!
//! [`Processor::process`] takes one captured frame and emits the [`Event`]s it raises, following
//! Maltrail's sensor semantics:
//!
//! - **IP trails.** TCP: connection attempts only (SYN set, ACK clear): the destination
//!   (`IP:port` trail → `IPORT`, else address/CIDR → `IP`), else the source. Identical SYNs
//!   (same addresses and ports) within one second are counted once. UDP other than DNS: the
//!   destination, else the source (xtrail also reports malware-labelled destinations, which
//!   Maltrail skips). ICMP/ICMPv6: echo requests only. Other IP protocols: the addresses.
//!   As in Maltrail, a SYN to an `attacker`-labelled address, a SYN to a `parking site` on a
//!   port other than 80/443, and a SYN from a `malware`-labelled address raise nothing.
//! - **DNS** (UDP or TCP, port 53 on either side; the DNS branch owns a packet that is a DNS
//!   message, [`dns::Header::is_plausible`]; any other UDP datagram on 53 gets the IP check
//!   of UDP, unlike Maltrail): standard queries with a valid name. For class IN and a type other than PTR/AAAA, a resolver trail
//!   raises `<resolver> (<query>)`; then the name is checked against the domain trails.
//! - **HTTP requests** (TCP payload starting with a method, any port): a `Host` name sent to
//!   an address trail raises `IP` `<dst> (<host>)`; otherwise the host name is checked against
//!   the domain trails; then host + path against the URL trails (`URL`).
//! - **TLS ClientHello** (any port): the server name against the domain trails; likewise the
//!   ClientHello inside a QUIC v1/v2 client Initial (UDP, any port), decrypted with the
//!   Initial keys every observer can derive. A ClientHello that spans TCP segments or QUIC
//!   Initials is reassembled first ([`crate::protocols::reassembly`], bounded).
//!
//! Domain checks of HTTP hosts and TLS server names raise `DNS` events with protocol `TCP`, as
//! Maltrail's `_check_domain` does for every name it checks.
//!
//! Non-`DNS` events involving a whitelisted address are dropped; names that are whitelisted or
//! end in an ignored suffix are not checked.
//!
//! The no-hit path allocates nothing: parsing borrows the frame, names are decoded and
//! lowercased into fixed buffers, the lowercased URL path goes into a reused buffer.
//! Repeated events are collapsed downstream by [`crate::throttle::Throttle`].
//!
//! Heuristics (scans, DNS exhaustion, NXDOMAIN floods, suspicious requests and user agents)
//! plug in through the [`Heuristics`] trait; they live in [`crate::heuristics`].

use std::borrow::Cow;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Arc;

use hashbrown::DefaultHashBuilder;

use crate::event::{
    blank, clear_for_reuse, decimal, push_proto_name, recycle, set_str, spare_event, Action,
    DetailsText, Event, EventType, IpText, Severity,
};
use crate::heuristics::FlowStart;
use crate::name_verdicts::NameVerdicts;
use crate::packet::{self, Packet, PacketError, TcpSegment, Transport};
use crate::protocols::reassembly::{
    CryptoReassembler, Flight, FlowKey, HelloReassembler, ReassemblyStats,
};
use crate::protocols::{dns, http, quic, tls};
use crate::trails::{DomainMatch, IpMatch, IpMatchKind, Label, LabelId, TrailSet, UrlCandidates};
use crate::whitelist::Whitelist;

/// Slots of the duplicate-SYN table (direct-mapped: a collision only forgets an older SYN).
const SYN_SLOTS: usize = 4096;
/// The DNS port.
const DNS_PORT: u16 = 53;
/// Longest host name looked up (HTTP `Host`, TLS SNI).
const MAX_HOST: usize = 255;

/// Settings of a [`Processor`].
#[derive(Clone, Debug)]
pub struct ProcessorConfig {
    /// Sensor name written into every event.
    pub sensor: String,
    /// Interface name written into every event (live capture).
    pub iface: Option<String>,
    /// Check HTTP `Host` names against the domain trails.
    pub check_host_domains: bool,
    /// Also try the URL candidates Maltrail never derives ([`UrlCandidates::WithExtras`]:
    /// the path with its trailing `/`, and its parent directory with the `/`, so `host/dir/`
    /// trails are reachable and a bare `/dir/` trail matches any file under it on any host).
    /// Off by default: exactly Maltrail's candidates.
    pub url_extra_candidates: bool,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        ProcessorConfig {
            sensor: String::from("xtrail"),
            iface: None,
            check_host_domains: true,
            url_extra_candidates: false,
        }
    }
}

impl ProcessorConfig {
    /// The defaults with the given sensor name.
    pub fn with_sensor(sensor: impl Into<String>) -> Self {
        ProcessorConfig {
            sensor: sensor.into(),
            ..ProcessorConfig::default()
        }
    }
}

/// Counters of a [`Processor`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessorStats {
    /// Frames given to [`Processor::process`].
    pub packets: u64,
    /// Frames the packet parser rejected.
    pub parse_errors: u64,
    /// Frames of a link type the parser does not know (also counted in `parse_errors`).
    pub unsupported_linktype: u64,
    /// Non-first IP fragments (not inspected).
    pub fragments: u64,
    /// DNS messages parsed.
    pub dns_messages: u64,
    /// Port-53 payloads that were not valid DNS.
    pub dns_errors: u64,
    /// HTTP requests parsed.
    pub http_requests: u64,
    /// TLS ClientHellos parsed.
    pub tls_client_hellos: u64,
    /// ClientHellos reassembled from several TCP segments, and the bounds hit doing so.
    pub tls_reassembly: ReassemblyStats,
    /// ClientHellos joined from several QUIC Initial packets, and the bounds hit doing so.
    pub quic_reassembly: ReassemblyStats,
    /// SYNs skipped as repeats within the same second.
    pub duplicate_syns: u64,
    /// Events emitted.
    pub events: u64,
    /// Events dropped because an address was whitelisted.
    pub whitelisted: u64,
    /// DNS query names, HTTP hosts and TLS/QUIC server names answered from the verdicts of
    /// names seen clean before.
    pub name_verdict_hits: u64,
    /// Frames whose addresses the capture found clean in the set in use
    /// ([`Addresses::Clean`]): not looked up again.
    pub addresses_vouched: u64,
}

/// What the capture already knows of a frame's addresses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Addresses {
    /// Nothing: the pipeline looks both up in the address trails.
    #[default]
    Unchecked,
    /// Both were looked up in the very trail set the pipeline uses (the destination with
    /// its port, the source with its port, each as an IP:port, an address and a CIDR trail:
    /// the live XDP program's lookups) and neither is a trail: the pipeline does not look
    /// them up again.
    Clean,
}

/// What one packet is, for building its events.
#[derive(Clone, Copy, Debug)]
pub struct PacketContext<'s> {
    /// Capture time, microseconds since the epoch.
    pub ts_us: i64,
    /// Sensor name.
    pub sensor: &'s str,
    /// Interface, when captured live.
    pub iface: Option<&'s str>,
    /// Source address.
    pub src: IpAddr,
    /// Source port (0 without one).
    pub src_port: u16,
    /// Destination address.
    pub dst: IpAddr,
    /// Destination port (0 without one).
    pub dst_port: u16,
    /// IP protocol number.
    pub proto: u8,
}

impl PacketContext<'_> {
    /// Writes this packet's part of an event over `event`, its strings' buffers kept (an
    /// interface's dropped when the packet has none): time, sensor, addresses, ports,
    /// protocol and interface; the trail-set version emptied (the pipeline, or the live loop
    /// for kernel hits, stamps it).
    #[inline]
    pub fn write_packet(&self, event: &mut Event) {
        event.ts_us = self.ts_us;
        set_str(&mut event.sensor, self.sensor);
        event.src_ip = self.src;
        event.src_port = self.src_port;
        event.dst_ip = self.dst;
        event.dst_port = self.dst_port;
        push_proto_name(self.proto, clear_for_reuse(&mut event.proto));
        match (&mut event.iface, self.iface) {
            (slot, Some(name)) => set_str(slot.get_or_insert_with(String::new), name),
            (slot, None) => *slot = None,
        }
        event.trail_set_version.clear();
    }

    /// An event for this packet with the given info and reference, written over an event
    /// given back on this thread (`event::recycle`): no allocation for its strings once warm.
    pub fn event(
        &self,
        kind: EventType,
        trail: &str,
        info: &str,
        reference: &str,
        details: DetailsText<'_>,
    ) -> Event {
        let mut e = spare_event().unwrap_or_else(blank);
        self.write_packet(&mut e);
        e.kind = kind;
        set_str(&mut e.trail, trail);
        set_str(&mut e.info, info);
        set_str(&mut e.reference, reference);
        e.severity = Severity::from_info(info);
        e.action = Action::Pass;
        details.write(&mut e.details);
        e
    }

    /// An event for this packet labelled by a trail's label.
    pub fn labelled(
        &self,
        kind: EventType,
        trail: &str,
        label: &Label,
        details: DetailsText<'_>,
    ) -> Event {
        self.event(kind, trail, &label.info, &label.reference, details)
    }
}

/// Hook for the heuristics stage ([`crate::heuristics::MaltrailHeuristics`]): each method
/// sees what the pipeline parsed and may emit events (or prefetches for a later hook). Every
/// method defaults to doing nothing.
pub trait Heuristics: Send {
    /// The sensor name and interface events carry (called by [`Processor::set_heuristics`]).
    fn set_context(&mut self, _sensor: &str, _iface: Option<&str>) {}
    /// The current trails (called on install and on every trail update).
    fn set_trails(&mut self, _trails: &Arc<TrailSet>) {}
    /// A flow start reported by the kernel (live capture); see
    /// [`crate::heuristics::FlowStart`].
    fn on_flow_start(&mut self, _flow: &FlowStart, _out: &mut dyn FnMut(Event)) {}
    /// Flow starts in a batch, in order: as many [`Heuristics::on_flow_start`] calls.
    fn on_flow_starts(&mut self, flows: &[FlowStart], out: &mut dyn FnMut(Event)) {
        for f in flows {
            self.on_flow_start(f, out);
        }
    }
    /// Entries held by the stage's bounded tables (for stats and the flood tests).
    fn state_entries(&self) -> usize {
        0
    }
    /// The stage's bounded tables, each with its entries and evictions (for metrics).
    fn tables(&self) -> Vec<crate::heuristics::TableState> {
        Vec::new()
    }
    /// A parsed packet is about to be checked: whether [`Heuristics::on_packet`] has work
    /// for it (the stage may note the packet: replay's flow-start cache). The stage may start
    /// fetching the entries that work will read, so that their cache misses overlap the
    /// checks.
    fn prefetch_packet(&mut self, _ctx: &PacketContext<'_>, _pkt: &Packet<'_>) -> bool {
        false
    }
    /// A packet [`Heuristics::prefetch_packet`] said it has work for, after the packet's
    /// trail checks and payload hooks; its events leave before the packet's others (held
    /// until then).
    fn on_packet(
        &mut self,
        _ctx: &PacketContext<'_>,
        _pkt: &Packet<'_>,
        _out: &mut dyn FnMut(Event),
    ) {
    }
    /// A standard DNS query with a valid name (after the whitelist and ignored suffixes).
    fn on_dns_query(
        &mut self,
        _ctx: &PacketContext<'_>,
        _msg: &dns::Message<'_>,
        _name: &str,
        _out: &mut dyn FnMut(Event),
    ) {
    }
    /// A DNS response.
    fn on_dns_response(
        &mut self,
        _ctx: &PacketContext<'_>,
        _msg: &dns::Message<'_>,
        _out: &mut dyn FnMut(Event),
    ) {
    }
    /// A TCP payload from `ctx` that may be an HTTP request is about to be parsed: the stage
    /// may start fetching the entries [`Heuristics::on_http_request`] will read, so that
    /// their cache misses overlap the parse.
    fn prefetch_http_request(&self, _ctx: &PacketContext<'_>) {}
    /// An HTTP request, with its `Host` as the pipeline read it (see [`HttpHost`]).
    fn on_http_request(
        &mut self,
        _ctx: &PacketContext<'_>,
        _req: &http::Request<'_>,
        _host: &HttpHost<'_>,
        _out: &mut dyn FnMut(Event),
    ) {
    }
    /// An HTTP response.
    fn on_http_response(
        &mut self,
        _ctx: &PacketContext<'_>,
        _resp: &http::Response<'_>,
        _out: &mut dyn FnMut(Event),
    ) {
    }
}

/// An HTTP request's `Host` header as the pipeline read it once: port stripped (`[v6]:port`
/// to `v6`), lowercased, at most 255 bytes, bytes that are not UTF-8 replaced (lossy); with its whitelist
/// verdict, so the heuristics redo neither.
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpHost<'a> {
    /// The host text; `None` when the request has none (or an empty one).
    pub name: Option<&'a str>,
    /// [`Whitelist::is_domain_whitelisted`] of `name` (false without one).
    pub whitelisted: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct SynKey {
    sec: i64,
    src: IpAddr,
    src_port: u16,
    dst: IpAddr,
    dst_port: u16,
}

/// The per-packet pipeline. One per worker; not shared between threads.
pub struct Processor {
    trails: Arc<TrailSet>,
    whitelist: Arc<Whitelist>,
    config: ProcessorConfig,
    stats: ProcessorStats,
    syns: Box<[Option<SynKey>]>,
    hasher: DefaultHashBuilder,
    path_buf: String,
    /// A packet's own events, held until [`Heuristics::on_packet`]'s are out (reused).
    held: Vec<Event>,
    /// Clean verdicts of recently seen names.
    names: NameVerdicts,
    heuristics: Option<Box<dyn Heuristics>>,
    /// ClientHellos that span TCP segments, per flow until complete (bounded).
    tls_flows: HelloReassembler,
    /// ClientHellos that span QUIC Initial packets, per connection until complete (bounded).
    quic_flows: CryptoReassembler,
}

impl std::fmt::Debug for Processor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Processor")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Maltrail's label rules for a TCP connection attempt that hit an IP trail (shared by
/// replay and the live sensor's kernel hits): a SYN to an `attacker`, or to a `parking site`
/// on a port other than 80/443, raises nothing; a SYN *from* a `malware` address (a scanner
/// listed twice, not an infection) or towards loopback raises nothing.
pub fn syn_hit_reported(
    info: &str,
    matched_dst: bool,
    dst_port: u16,
    dst_is_loopback: bool,
) -> bool {
    if matched_dst {
        let parked_elsewhere = info.contains("parking site") && !matches!(dst_port, 80 | 443);
        !(info.contains("attacker") || parked_elsewhere)
    } else {
        !(info.contains("malware") || dst_is_loopback)
    }
}

/// Emits an event unless one of its addresses is whitelisted (DNS events are exempt, as in
/// Maltrail: a resolver's address must not hide the names asked of it).
fn emit(wl: &Whitelist, stats: &mut ProcessorStats, out: &mut dyn FnMut(Event), event: Event) {
    if event.kind != EventType::Dns
        && (wl.is_ip_whitelisted(event.src_ip) || wl.is_ip_whitelisted(event.dst_ip))
    {
        stats.whitelisted += 1;
        recycle(event);
        return;
    }
    stats.events += 1;
    out(event);
}

impl Processor {
    /// A pipeline over the given trails and whitelist.
    pub fn new(trails: Arc<TrailSet>, whitelist: Arc<Whitelist>, config: ProcessorConfig) -> Self {
        Processor {
            trails,
            whitelist,
            config,
            stats: ProcessorStats::default(),
            syns: vec![None; SYN_SLOTS].into_boxed_slice(),
            hasher: DefaultHashBuilder::default(),
            path_buf: String::with_capacity(256),
            held: Vec::new(),
            names: NameVerdicts::default(),
            heuristics: None,
            tls_flows: HelloReassembler::default(),
            quic_flows: CryptoReassembler::default(),
        }
    }

    /// Installs the heuristics stage (e.g. [`crate::heuristics::MaltrailHeuristics`]); it
    /// is given this pipeline's sensor name, interface and trails.
    pub fn set_heuristics(&mut self, mut heuristics: Box<dyn Heuristics>) {
        heuristics.set_context(&self.config.sensor, self.config.iface.as_deref());
        heuristics.set_trails(&self.trails);
        self.heuristics = Some(heuristics);
    }

    /// Whether a heuristics stage is installed.
    pub fn has_heuristics(&self) -> bool {
        self.heuristics.is_some()
    }

    /// Entries held by the heuristics stage's bounded tables (0 without one).
    pub fn heuristics_state_entries(&self) -> usize {
        self.heuristics.as_deref().map_or(0, |h| h.state_entries())
    }

    /// The heuristics stage's bounded tables (none without one).
    pub fn heuristics_tables(&self) -> Vec<crate::heuristics::TableState> {
        self.heuristics
            .as_deref()
            .map_or_else(Vec::new, |h| h.tables())
    }

    /// A flow start from the kernel (live capture) through the installed heuristics; events
    /// with a whitelisted address are dropped as for packets.
    pub fn on_flow_start(&mut self, flow: &FlowStart, out: &mut dyn FnMut(Event)) {
        self.on_flow_starts(std::slice::from_ref(flow), out);
    }

    /// [`Processor::on_flow_start`] of each of `flows`, in order.
    pub fn on_flow_starts(&mut self, flows: &[FlowStart], out: &mut dyn FnMut(Event)) {
        if let Some(h) = self.heuristics.as_deref_mut() {
            let (wl, stats) = (&*self.whitelist, &mut self.stats);
            h.on_flow_starts(flows, &mut |e| emit(wl, stats, out, e));
        }
    }

    /// The trail set in use.
    pub fn trails(&self) -> &Arc<TrailSet> {
        &self.trails
    }

    /// Swaps in a new trail set (trail updates); the next packet uses it.
    pub fn set_trails(&mut self, trails: Arc<TrailSet>) {
        if let Some(h) = self.heuristics.as_deref_mut() {
            h.set_trails(&trails);
        }
        self.names.clear();
        self.trails = trails;
    }

    /// The counters so far (the reassemblers' taken as they stand: no copy per packet).
    pub fn stats(&self) -> ProcessorStats {
        ProcessorStats {
            tls_reassembly: self.tls_flows.stats().clone(),
            quic_reassembly: self.quic_flows.stats().clone(),
            ..self.stats.clone()
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ProcessorConfig {
        &self.config
    }

    /// Runs one captured frame through the pipeline; `out` receives the events it raises.
    pub fn process(
        &mut self,
        ts_us: i64,
        linktype: u32,
        frame: &[u8],
        out: &mut impl FnMut(Event),
    ) {
        // The error is counted in the stats; callers that want it use `process_frame`.
        let _ = self.process_frame(ts_us, linktype, frame, out);
    }

    /// Like [`Processor::process`], but says why a frame could not be parsed.
    pub fn process_frame(
        &mut self,
        ts_us: i64,
        linktype: u32,
        frame: &[u8],
        out: &mut dyn FnMut(Event),
    ) -> Result<(), PacketError> {
        self.process_frame_with(ts_us, linktype, None, frame, Addresses::Unchecked, out)
    }

    /// [`Processor::process_frame`] for a frame that arrived on `iface` (its events say so;
    /// `None`: the configured one) whose `addresses` the capture checked.
    pub fn process_frame_with(
        &mut self,
        ts_us: i64,
        linktype: u32,
        iface: Option<&str>,
        frame: &[u8],
        addresses: Addresses,
        out: &mut dyn FnMut(Event),
    ) -> Result<(), PacketError> {
        self.stats.packets += 1;
        self.stats.addresses_vouched += u64::from(addresses == Addresses::Clean);
        match packet::parse(linktype, frame) {
            Ok(pkt) => {
                self.process_packet_with(ts_us, &pkt, iface, addresses, out);
                Ok(())
            }
            Err(e) => {
                self.stats.parse_errors += 1;
                if matches!(e, PacketError::UnsupportedLinkType(_)) {
                    self.stats.unsupported_linktype += 1;
                }
                Err(e)
            }
        }
    }

    /// Runs an already parsed packet through the pipeline.
    pub fn process_packet(&mut self, ts_us: i64, pkt: &Packet<'_>, out: &mut dyn FnMut(Event)) {
        self.process_packet_with(ts_us, pkt, None, Addresses::Unchecked, out);
    }

    /// [`Processor::process_packet`] for a packet whose `addresses` the capture checked.
    fn process_packet_with(
        &mut self,
        ts_us: i64,
        pkt: &Packet<'_>,
        iface: Option<&str>,
        addresses: Addresses,
        out: &mut dyn FnMut(Event),
    ) {
        let (src_port, dst_port) = pkt.ports();
        // Field-by-field borrows: nothing is cloned or allocated per packet.
        let ctx = PacketContext {
            ts_us,
            sensor: &self.config.sensor,
            iface: iface.or(self.config.iface.as_deref()),
            src: pkt.src,
            src_port,
            dst: pkt.dst,
            dst_port,
            proto: pkt.proto,
        };
        let packet_hook = self
            .heuristics
            .as_deref_mut()
            .is_some_and(|h| h.prefetch_packet(&ctx, pkt));
        // With a packet hook (replay's flow starts, run last so that their table reads
        // overlap the checks), the packet's own events wait until the hook's are out: events
        // leave in the order they had when the flow start came first, so that the throttle
        // keeps the same ones (a scan alert and a trail hit of its scanner can share a
        // collapse key).
        let held = &mut self.held;
        let mut hold = |e: Event| held.push(e);
        let mut run = Run {
            trails: &self.trails,
            addresses_clean: addresses == Addresses::Clean,
            whitelist: &self.whitelist,
            stats: &mut self.stats,
            out: if packet_hook { &mut hold } else { &mut *out },
            check_host_domains: self.config.check_host_domains,
            url_candidates: if self.config.url_extra_candidates {
                UrlCandidates::WithExtras
            } else {
                UrlCandidates::Maltrail
            },
            path_buf: &mut self.path_buf,
            names: &mut self.names,
            heuristics: self.heuristics.as_deref_mut(),
        };
        match pkt.transport {
            Transport::Tcp(seg) => {
                if seg.flags.is_syn_only() {
                    let key = SynKey {
                        sec: ts_us.div_euclid(1_000_000),
                        src: pkt.src,
                        src_port,
                        dst: pkt.dst,
                        dst_port,
                    };
                    let slot =
                        usize::try_from(self.hasher.hash_one(key) % SYN_SLOTS as u64).unwrap_or(0);
                    let repeat = match self.syns.get_mut(slot) {
                        Some(entry) if *entry == Some(key) => true,
                        Some(entry) => {
                            *entry = Some(key);
                            false
                        }
                        None => false,
                    };
                    if repeat {
                        run.stats.duplicate_syns += 1;
                    } else {
                        run.tcp_syn(&ctx);
                    }
                } else if !seg.payload.is_empty() {
                    // A ClientHello longer than its segment waits for the rest of its record.
                    let key = FlowKey {
                        src: pkt.src,
                        src_port,
                        dst: pkt.dst,
                        dst_port,
                    };
                    match self.tls_flows.on_segment(key, ts_us, seg.seq, seg.payload) {
                        Flight::Ready(hello) => run.client_hello(&ctx, hello),
                        Flight::Parsed(hello) => run.parsed_client_hello(&ctx, hello),
                        Flight::Buffered => {}
                        Flight::Untracked => run.tcp_payload(&ctx, &seg),
                    }
                }
            }
            Transport::Udp(dgram) => {
                if src_port == DNS_PORT || dst_port == DNS_PORT {
                    // Port 53 is no free pass: what is not a DNS message (a tunnel, C2 on 53)
                    // is checked as any UDP datagram.
                    if !run.dns(&ctx, dgram.payload, false) {
                        run.addresses(&ctx, true);
                    }
                } else {
                    run.addresses(&ctx, true);
                    if quic::looks_like_initial(dgram.payload)
                        && !run.quic_initial(&ctx, dgram.payload)
                    {
                        // A ClientHello over several Initials: joined per connection.
                        let key = FlowKey {
                            src: pkt.src,
                            src_port,
                            dst: pkt.dst,
                            dst_port,
                        };
                        if let Flight::Ready(hello) =
                            self.quic_flows.on_initial(key, ts_us, dgram.payload)
                        {
                            run.quic_hello(&ctx, hello);
                        }
                    }
                }
            }
            Transport::Icmp { icmp_type, .. } => {
                if icmp_type == 8 {
                    run.addresses(&ctx, false);
                }
            }
            Transport::Icmpv6 { icmp_type, .. } => {
                if icmp_type == 128 {
                    run.addresses(&ctx, false);
                }
            }
            // Protocol 0 is IPv6 hop-by-hop options where they cannot be (the XDP program
            // reports no hit of it either).
            Transport::Other(_) if pkt.proto != 0 => run.addresses(&ctx, false),
            Transport::Other(_) => {}
            Transport::Fragment => run.stats.fragments += 1,
        }
        if !packet_hook {
            return;
        }
        let Run {
            whitelist,
            stats,
            heuristics,
            ..
        } = run;
        if let Some(h) = heuristics {
            h.on_packet(&ctx, pkt, &mut |e| emit(whitelist, stats, out, e));
        }
        for e in self.held.drain(..) {
            out(e);
        }
    }
}

/// The state one packet's checks borrow.
struct Run<'p, 'o> {
    trails: &'p TrailSet,
    /// Neither address is an address trail of `trails` (the capture looked them up).
    addresses_clean: bool,
    whitelist: &'p Whitelist,
    stats: &'p mut ProcessorStats,
    out: &'o mut dyn FnMut(Event),
    check_host_domains: bool,
    url_candidates: UrlCandidates,
    path_buf: &'p mut String,
    names: &'p mut NameVerdicts,
    heuristics: Option<&'p mut (dyn Heuristics + 'static)>,
}

impl Run<'_, '_> {
    fn emit(&mut self, event: Event) {
        emit(self.whitelist, self.stats, self.out, event);
    }

    fn label(&self, id: LabelId) -> &Label {
        self.trails.label(id)
    }

    /// `addr` (one of the packet's, with its own port or none) in the address trails; not
    /// looked up again when the capture found both addresses clean.
    fn ip_lookup(&self, addr: IpAddr, port: Option<u16>) -> Option<IpMatch> {
        if self.addresses_clean {
            return None;
        }
        self.trails.ip.lookup(addr, port)
    }

    /// `name`'s whitelist verdict and domain trail hit
    /// ([`DomainTrails::lookup_whitelisted`](crate::trails::DomainTrails::lookup_whitelisted)),
    /// from the verdicts of names seen clean before when it is one.
    fn lookup_name(&mut self, name: &str) -> (bool, Option<DomainMatch>) {
        let hits = &mut self.stats.name_verdict_hits;
        (self.names).lookup_whitelisted(name, &self.trails.domains, self.whitelist, hits)
    }

    /// Trail text for an address hit: `ip`, or `ip:port` / `[v6]:port` for an IP:port trail.
    fn ip_trail(addr: IpAddr, port: u16, kind: IpMatchKind) -> (EventType, String) {
        match (kind, addr) {
            (IpMatchKind::IpPort, IpAddr::V4(a)) => (EventType::IpPort, format!("{a}:{port}")),
            (IpMatchKind::IpPort, IpAddr::V6(a)) => (EventType::IpPort, format!("[{a}]:{port}")),
            _ => (EventType::Ip, addr.to_string()),
        }
    }

    /// A connection attempt: destination trail, else source trail (Maltrail's label rules).
    fn tcp_syn(&mut self, ctx: &PacketContext<'_>) {
        if let Some(m) = self.ip_lookup(ctx.dst, Some(ctx.dst_port)) {
            let info = &self.label(m.label).info;
            if !syn_hit_reported(info, true, ctx.dst_port, ctx.dst.is_loopback()) {
                return;
            }
            let (kind, trail) = Self::ip_trail(ctx.dst, ctx.dst_port, m.kind);
            let e = ctx.labelled(kind, &trail, self.label(m.label), DetailsText::default());
            self.emit(e);
        } else if let Some(m) = self.ip_lookup(ctx.src, Some(ctx.src_port)) {
            let info = &self.label(m.label).info;
            if !syn_hit_reported(info, false, ctx.dst_port, ctx.dst.is_loopback()) {
                return;
            }
            let (kind, trail) = Self::ip_trail(ctx.src, ctx.src_port, m.kind);
            let e = ctx.labelled(kind, &trail, self.label(m.label), DetailsText::default());
            self.emit(e);
        }
    }

    /// Address check for UDP (with ports), ICMP echo requests and other protocols (without).
    fn addresses(&mut self, ctx: &PacketContext<'_>, with_ports: bool) {
        let port = |p: u16| with_ports.then_some(p);
        let hit = self
            .ip_lookup(ctx.dst, port(ctx.dst_port))
            .map(|m| (ctx.dst, ctx.dst_port, m))
            .or_else(|| {
                self.ip_lookup(ctx.src, port(ctx.src_port))
                    .map(|m| (ctx.src, ctx.src_port, m))
            });
        if let Some((addr, p, m)) = hit {
            let (kind, trail) = Self::ip_trail(addr, p, m.kind);
            let e = ctx.labelled(kind, &trail, self.label(m.label), DetailsText::default());
            self.emit(e);
        }
    }

    /// A TCP segment with payload (not a connection attempt).
    fn tcp_payload(&mut self, ctx: &PacketContext<'_>, seg: &TcpSegment<'_>) {
        let p = seg.payload;
        if p.starts_with(b"HTTP/") {
            if let (Ok(resp), Some(h)) = (http::parse_response(p), self.heuristics.as_deref_mut()) {
                let (wl, stats, out) = (self.whitelist, &mut *self.stats, &mut *self.out);
                h.on_http_response(ctx, &resp, &mut |e| emit(wl, stats, out, e));
            }
            return;
        }
        // Nearly every method starts with an upper-case letter (a miss only costs time).
        if p.first().is_some_and(u8::is_ascii_uppercase) {
            if let Some(h) = self.heuristics.as_deref() {
                h.prefetch_http_request(ctx);
            }
        }
        // The parse's first test is `http::looks_like_request`: a payload failing it is
        // `NotRequest` (one scan of the method token instead of two).
        match http::parse_request(p) {
            Ok(req) => {
                self.stats.http_requests += 1;
                self.http_request(ctx, &req);
            }
            Err(http::HttpError::NotRequest) if tls::looks_like_client_hello(p) => {
                self.client_hello(ctx, p);
            }
            Err(http::HttpError::NotRequest)
                if ctx.src_port == DNS_PORT || ctx.dst_port == DNS_PORT =>
            {
                self.dns(ctx, p, true);
            }
            Err(_) => {}
        }
    }

    /// A TLS ClientHello (one segment's, or reassembled): the server name against the domain
    /// trails.
    fn client_hello(&mut self, ctx: &PacketContext<'_>, p: &[u8]) {
        self.parsed_client_hello(ctx, tls::parse_client_hello(p));
    }

    /// A parsed TLS ClientHello's server name against the domain trails.
    fn parsed_client_hello(
        &mut self,
        ctx: &PacketContext<'_>,
        hello: Result<tls::ClientHello<'_>, tls::TlsError>,
    ) {
        if let Ok(hello) = hello {
            self.stats.tls_client_hellos += 1;
            if let Some(sni) = hello.sni {
                self.server_name(ctx, sni);
            }
        }
    }

    /// A DNS message over UDP or TCP. False when the payload is not a DNS message
    /// ([`dns::Header::is_plausible`] and a parseable question): the caller then checks the
    /// addresses as for any datagram, as the XDP program does.
    fn dns(&mut self, ctx: &PacketContext<'_>, payload: &[u8], tcp: bool) -> bool {
        // Built in `slot`, never moved: the message holds the question's 254-byte name.
        let mut slot = None;
        let parsed = if tcp {
            dns::parse_tcp_into(payload, &mut slot)
        } else {
            dns::parse_into(payload, &mut slot)
        };
        let msg: &dns::Message<'_> = match parsed {
            Ok(m) if m.header.is_plausible() => m,
            _ => {
                self.stats.dns_errors += 1;
                return false;
            }
        };
        self.stats.dns_messages += 1;
        let h = msg.header;
        if h.is_response() {
            if let Some(heur) = self.heuristics.as_deref_mut() {
                let (wl, stats, out) = (self.whitelist, &mut *self.stats, &mut *self.out);
                heur.on_dns_response(ctx, msg, &mut |e| emit(wl, stats, out, e));
            }
            return true;
        }
        // Standard query, not truncated (Maltrail: flags byte & 0xfa == 0).
        if h.opcode() != 0 || h.is_truncated() {
            return true;
        }
        let Some(q) = &msg.question else { return true };
        let Some(name) = scan_dns_name::<true>(q.name.as_bytes()) else {
            return true;
        };
        // One pass over the name gives its whitelist verdict (the heuristics' contract is a
        // name after the whitelist) and its domain trail hit (a pure lookup: reported last,
        // after the heuristics' and the address events). The trail probes come last too:
        // the heuristics and the address lookups overlap their filter words' cache misses.
        let mut buf = None;
        let hits = &mut self.stats.name_verdict_hits;
        let lookup = (self.names).begin(name, &self.trails.domains, self.whitelist, hits, &mut buf);
        let whitelisted = lookup.whitelisted();
        if let Some(heur) = self.heuristics.as_deref_mut().filter(|_| !whitelisted) {
            let (wl, stats, out) = (self.whitelist, &mut *self.stats, &mut *self.out);
            heur.on_dns_query(ctx, msg, name, &mut |e| emit(wl, stats, out, e));
        }
        let mut qtype_digits = [0u8; 20];
        let details = DetailsText {
            dns_query: Some(name.as_bytes()),
            dns_qtype: Some(qtype_name(q.qtype, &mut qtype_digits).as_bytes()),
            ..DetailsText::default()
        };
        if q.qtype != dns::TYPE_PTR && q.qtype != dns::TYPE_AAAA && q.qclass == dns::CLASS_IN {
            if let Some(m) = self.ip_lookup(ctx.dst, Some(ctx.dst_port)) {
                let label = self.label(m.label);
                let is_resolver_port =
                    m.kind == IpMatchKind::IpPort && label.info.contains("resolver");
                if !is_resolver_port {
                    let kind = if m.kind == IpMatchKind::IpPort {
                        EventType::IpPort
                    } else {
                        EventType::Ip
                    };
                    let trail = format!("{} ({name})", ctx.dst);
                    let e = ctx.labelled(kind, &trail, label, details);
                    self.emit(e);
                }
            } else if let Some(m) = self.ip_lookup(ctx.src, None) {
                let trail = IpText::new(ctx.src);
                let e = ctx.labelled(EventType::Ip, trail.as_str(), self.label(m.label), details);
                self.emit(e);
            }
        }
        let (_, hit) = self.names.finish(name, &lookup, &self.trails.domains);
        self.report_domain_hit(ctx, name, hit, details);
        true
    }

    /// A QUIC client Initial: the ClientHello's server name against the domain trails.
    /// False when the datagram alone names no server (the caller tries reassembly).
    fn quic_initial(&mut self, ctx: &PacketContext<'_>, p: &[u8]) -> bool {
        let Ok(Some(sni)) = quic::initial_sni(p) else {
            return false;
        };
        self.quic_server_name(ctx, &sni);
        true
    }

    /// A ClientHello joined from several QUIC Initials (a handshake message, no record
    /// header).
    fn quic_hello(&mut self, ctx: &PacketContext<'_>, hello: &[u8]) {
        if let Ok(tls::ClientHello { sni: Some(sni), .. }) = tls::parse_handshake(hello) {
            self.quic_server_name(ctx, sni);
        }
    }

    fn quic_server_name(&mut self, ctx: &PacketContext<'_>, sni: &str) {
        self.stats.tls_client_hellos += 1;
        self.server_name(ctx, sni);
    }

    /// A TLS or QUIC ClientHello's server name, lowercased, against the domain trails.
    fn server_name(&mut self, ctx: &PacketContext<'_>, sni: &str) {
        let mut buf = [0u8; MAX_HOST];
        if let Some(name) = lowercase_into(sni.as_bytes(), &mut buf) {
            let details = DetailsText {
                tls_sni: Some(name.as_bytes()),
                ..DetailsText::default()
            };
            self.check_domain(ctx, name, None, details);
        }
    }

    /// An HTTP request: host against the address and domain trails, host + path against the
    /// URL trails.
    fn http_request(&mut self, ctx: &PacketContext<'_>, req: &http::Request<'_>) {
        let mut host_buf = [0u8; MAX_HOST];
        // Filled only for an absolute or CONNECT target.
        let mut url_host_buf: [u8; MAX_HOST];
        let dst_text;
        // `Host`, read once: the heuristics' text (port stripped, lowercased, at most 255
        // bytes, lossy) and the trails' name (the same with a trailing dot dropped, when the
        // text is the whole name).
        let raw_host = req.host.map(strip_port);
        let host_text = raw_host
            .map(|h| host_text(h, &mut host_buf))
            .filter(|h| !h.is_empty());
        let header_host = match (&host_text, raw_host) {
            (Some(Cow::Borrowed(t)), Some(raw)) if raw.len() <= MAX_HOST => {
                Some(t.strip_suffix('.').unwrap_or(t))
            }
            // One byte over, a trailing dot: the text is the name without it.
            (Some(Cow::Borrowed(t)), Some(raw))
                if raw.len() == MAX_HOST + 1 && raw.ends_with(b".") =>
            {
                Some(*t)
            }
            _ => None,
        }
        .filter(|h| !h.is_empty());
        // The URL: origin-form path, or the host and path of an absolute / CONNECT target.
        let target = req.target;
        let mut path: &[u8] = target;
        let authority = if let Some(i) = crate::protocols::http::find_scheme_sep(target) {
            let rest = target.get(i + 3..).unwrap_or_default();
            let slash = memchr::memchr(b'/', rest).unwrap_or(rest.len());
            path = rest.get(slash..).unwrap_or_default();
            rest.get(..slash)
        } else if req.method == "CONNECT" {
            let slash = memchr::memchr(b'/', target).unwrap_or(target.len());
            path = target.get(slash..).unwrap_or_default();
            target.get(..slash)
        } else {
            None
        };
        let authority = match authority {
            Some(a) => {
                url_host_buf = [0u8; MAX_HOST];
                lowercase_into(strip_port(a), &mut url_host_buf)
            }
            None => None,
        }
        .filter(|h| !h.is_empty());
        if path.is_empty() {
            path = b"/";
        }
        // The name the URL check uses: the target's host, else the Host name, else the
        // destination address.
        let host: &str = match (authority, header_host) {
            (Some(h), _) | (None, Some(h)) => h,
            (None, None) => {
                dst_text = ctx.dst.to_string();
                &dst_text
            }
        };
        // An ASCII test alone for an ASCII path (nearly all), validation for other UTF-8: the
        // lossy decoder's chunking costs more.
        let path_text = if path.is_ascii() {
            // SAFETY: ASCII is UTF-8.
            Cow::Borrowed(unsafe { std::str::from_utf8_unchecked(path) })
        } else {
            match std::str::from_utf8(path) {
                Ok(p) => Cow::Borrowed(p),
                Err(_) => String::from_utf8_lossy(path),
            }
        };
        // Lowercased (ASCII letters only, as `char::to_ascii_lowercase` per character would),
        // and the absolute URL split above: `path` starts with `/` or holds no `://`. Taken
        // out of the run for the lookup (put back below, no return in between).
        let mut path_buf = std::mem::take(self.path_buf);
        path_buf.clear();
        path_buf.push_str(&path_text);
        path_buf.make_ascii_lowercase();
        let (trails, candidates) = (self.trails, self.url_candidates);
        // The URL trail lookup starts first: its filter reads overlap the name checks and
        // the heuristics (`between`), which report their events before the URL's.
        let mut whitelisted: Option<bool> = None;
        let between = || {
            whitelisted = self.host_checks(ctx, req, header_host, host_text.as_deref(), authority);
            whitelisted != Some(true)
        };
        let hit = trails
            .urls
            .lookup_path_after(Some(host), &path_buf, candidates, between);
        *self.path_buf = path_buf;
        // The whitelists are asked only on a URL trail hit (they can only drop it).
        let Some(m) = hit else { return };
        if whitelisted.unwrap_or_else(|| self.whitelist.is_domain_whitelisted(host))
            || self.whitelist.is_url_whitelisted(host, &path_text)
        {
            return;
        }
        let e = ctx.labelled(
            EventType::Url,
            &m.trail,
            self.label(m.label),
            http_details(req, host),
        );
        self.emit(e);
    }

    /// A request's name checks before its URL's: the Host name's whitelist verdict and
    /// domain trail hit (asked once: the heuristics, the domain check and the URL check all
    /// need it), the heuristics, the destination address of a name-based request, and the
    /// target's own host (`authority`, lowercased, without port). Returns the whitelist
    /// verdict of the name the URL check uses, when known.
    fn host_checks(
        &mut self,
        ctx: &PacketContext<'_>,
        req: &http::Request<'_>,
        header_host: Option<&str>,
        host_text: Option<&str>,
        authority: Option<&str>,
    ) -> Option<bool> {
        // With the domain check on, the verdict and the trail hit come from one pass.
        let (header_whitelisted, header_hit) = match header_host {
            Some(h) if self.check_host_domains => self.lookup_name(h),
            Some(h) => (self.whitelist.is_domain_whitelisted(h), None),
            None => (false, None),
        };
        if let Some(heur) = self.heuristics.as_deref_mut() {
            // The verdict is the name's when the text is the name (no trailing dot).
            let whitelisted = if host_text == header_host {
                header_whitelisted
            } else {
                host_text.is_some_and(|t| self.whitelist.is_domain_whitelisted(t))
            };
            let host = HttpHost {
                name: host_text,
                whitelisted,
            };
            let (wl, stats, out) = (self.whitelist, &mut *self.stats, &mut *self.out);
            heur.on_http_request(ctx, req, &host, &mut |e| emit(wl, stats, out, e));
        }
        let mut whitelisted = header_host.map(|_| header_whitelisted);
        if let Some(h) = header_host {
            let starts_alpha = h.as_bytes().first().is_some_and(u8::is_ascii_alphabetic);
            let dst_hit = if starts_alpha {
                self.ip_lookup(ctx.dst, None)
            } else {
                None
            };
            if let Some(m) = dst_hit {
                // A name-based request to a listed address: Maltrail's host-annotated IP trail.
                let trail = format!("{} ({h})", ctx.dst);
                let e = ctx.labelled(
                    EventType::Ip,
                    &trail,
                    self.label(m.label),
                    http_details(req, h),
                );
                self.emit(e);
            } else if self.check_host_domains {
                // Cloned on a hit only: an absolute URL naming the same host reports it again.
                self.report_domain_hit(ctx, h, header_hit.clone(), http_details(req, h));
            }
        }
        if let Some(h) = authority {
            if header_host == Some(h) && self.check_host_domains {
                // The Host name again: its verdict and trail hit are known (one lookup for
                // both), and its hit is reported again as `check_domain` would.
                whitelisted = Some(header_whitelisted);
                if !header_whitelisted {
                    self.report_domain_hit(ctx, h, header_hit, http_details(req, h));
                }
            } else {
                let known = header_host
                    .filter(|hh| *hh == h)
                    .map(|_| header_whitelisted);
                whitelisted = self.check_domain(ctx, h, known, http_details(req, h));
            }
        }
        whitelisted
    }

    /// Reports a hit of [`DomainTrails::lookup_whitelisted`] (`None` for a whitelisted name):
    /// not for IP literals or invalid names (Maltrail's `_check_domain` skips those).
    ///
    /// [`DomainTrails::lookup_whitelisted`]: crate::trails::DomainTrails::lookup_whitelisted
    fn report_domain_hit(
        &mut self,
        ctx: &PacketContext<'_>,
        name: &str,
        hit: Option<DomainMatch>,
        details: DetailsText<'_>,
    ) {
        if let Some(m) = hit.filter(|_| !is_ip_literal(name) && is_valid_dns_name(name)) {
            self.emit_domain_hit(ctx, m, details);
        }
    }

    /// The `DNS` event of a domain trail hit (Maltrail's exceptions, name servers of sinkholed
    /// domains and bare dynamic-DNS providers, are applied by the lookup itself).
    fn emit_domain_hit(
        &mut self,
        ctx: &PacketContext<'_>,
        m: DomainMatch,
        details: DetailsText<'_>,
    ) {
        let label = self.label(m.label);
        let e = ctx.labelled(EventType::Dns, &m.trail, label, details);
        self.emit(e);
    }

    /// A name against the domain trails (Maltrail's `_check_domain`): a `DNS` event on a hit,
    /// for DNS queries, HTTP hosts and TLS/QUIC server names alike (SIEM rules written for
    /// Maltrail rely on that type). IP literals, invalid and whitelisted names are not
    /// reported (a whitelisted name is not looked up when the caller knows its verdict).
    /// [`Run::lookup_name`] gives the verdict and the hit in one pass, or from the verdicts of
    /// names seen clean before; returns the verdict, for callers that need it again.
    fn check_domain(
        &mut self,
        ctx: &PacketContext<'_>,
        name: &str,
        whitelisted: Option<bool>,
        details: DetailsText<'_>,
    ) -> Option<bool> {
        if whitelisted == Some(true) {
            return whitelisted;
        }
        let (listed, hit) = self.lookup_name(name);
        self.report_domain_hit(ctx, name, hit, details);
        Some(listed)
    }
}

/// The details an HTTP request's events carry, with `host` as the name they name.
fn http_details<'a>(req: &'a http::Request<'_>, host: &'a str) -> DetailsText<'a> {
    DetailsText {
        http_method: Some(req.method.as_bytes()),
        http_host: Some(host.as_bytes()),
        http_path: Some(req.target),
        http_user_agent: req.user_agent,
        ..DetailsText::default()
    }
}

/// Maltrail's `VALID_DNS_NAME_REGEX`: `[a-z0-9.-]*\.[a-z0-9-]+` (at least two labels).
fn is_valid_dns_name(name: &str) -> bool {
    valid_dns_name(name.as_bytes()).is_some()
}

/// `name` as text when [`is_valid_dns_name`] holds: one pass over the bytes, which also
/// proves them ASCII (no separate UTF-8 validation).
fn valid_dns_name(name: &[u8]) -> Option<&str> {
    scan_dns_name::<false>(name)
}

/// [`valid_dns_name`]; with `UNIGNORED`, also `None` when
/// [`is_ignored_suffix`](crate::whitelist::is_ignored_suffix) holds, from the same pass (a
/// `.intranet.` is looked for at each dot).
#[inline(always)]
fn scan_dns_name<const UNIGNORED: bool>(name: &[u8]) -> Option<&str> {
    let mut last_dot = None;
    for (i, &b) in name.iter().enumerate() {
        if !DNS_NAME_BYTE[usize::from(b)] {
            return None;
        }
        if b == b'.' {
            if UNIGNORED && crate::whitelist::is_intranet_at(name, i) {
                return None;
            }
            last_dot = Some(i);
        }
    }
    // A non-empty last label after the last dot.
    let d = last_dot.filter(|&d| d + 1 < name.len())?;
    if UNIGNORED && crate::whitelist::is_ignored_label(name.get(d + 1..).unwrap_or_default()) {
        return None;
    }
    debug_assert!(name.is_ascii());
    // SAFETY: every byte was checked above to be an ASCII letter, digit, `-` or `.`: ASCII,
    // hence UTF-8.
    Some(unsafe { std::str::from_utf8_unchecked(name) })
}

/// The bytes [`scan_dns_name`] accepts: ASCII letters, digits, `-` and `.` (one load per
/// byte instead of four range tests).
static DNS_NAME_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric() || b == b'-' || b == b'.';
        i += 1;
    }
    t
};

/// Digits and dots only (Maltrail skips such names), or an IPv6 literal.
fn is_ip_literal(name: &str) -> bool {
    name.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        || memchr::memchr(b':', name.as_bytes()).is_some()
}

/// `host:port` → `host`, `[v6]:port` → `v6`.
fn strip_port(host: &[u8]) -> &[u8] {
    if let Some(inner) = host.strip_prefix(b"[") {
        let end = memchr::memchr(b']', inner).unwrap_or(inner.len());
        return inner.get(..end).unwrap_or_default();
    }
    // One colon: the port's; more than one and no brackets: a bare IPv6 address.
    match memchr::memchr(b':', host) {
        Some(i) if memchr::memchr(b':', host.get(i + 1..).unwrap_or_default()).is_none() => {
            host.get(..i).unwrap_or(host)
        }
        _ => host,
    }
}

/// `Host` text as events and the heuristics show it: `host` (port already stripped) at most
/// [`MAX_HOST`] bytes, lowercased; valid UTF-8 (every real host name) into `buf`, without
/// allocating, else lossily.
fn host_text<'b>(host: &[u8], buf: &'b mut [u8; MAX_HOST]) -> Cow<'b, str> {
    let h = host.get(..host.len().min(MAX_HOST)).unwrap_or(host);
    match lower_into(h, buf) {
        Some(text) => Cow::Borrowed(text),
        None => Cow::Owned(String::from_utf8_lossy(h).to_ascii_lowercase()),
    }
}

/// ASCII-lowercases `src` into `buf`; `None` if it does not fit or is not UTF-8. A trailing
/// dot is dropped.
fn lowercase_into<'b>(src: &[u8], buf: &'b mut [u8; MAX_HOST]) -> Option<&'b str> {
    lower_into(src.strip_suffix(b".").unwrap_or(src), buf)
}

/// ASCII-lowercases `src` into the start of `buf` as text; `None` if it does not fit or is
/// not UTF-8. The copy notes whether every byte is ASCII (every real host name), which then
/// needs no UTF-8 validation.
#[inline]
fn lower_into<'b>(src: &[u8], buf: &'b mut [u8; MAX_HOST]) -> Option<&'b str> {
    let out = buf.get_mut(..src.len())?;
    let mut high = 0u8;
    for (o, &b) in out.iter_mut().zip(src) {
        high |= b;
        *o = b.to_ascii_lowercase();
    }
    if high.is_ascii() {
        // SAFETY: `out` holds `src`'s bytes lowercased, all ASCII (their OR has the top bit
        // clear): ASCII is UTF-8.
        return Some(unsafe { std::str::from_utf8_unchecked(out) });
    }
    std::str::from_utf8(out).ok()
}

/// Query type as events show it.
fn qtype_name(qtype: u16, digits: &mut [u8; 20]) -> &str {
    match qtype {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        12 => "PTR",
        15 => "MX",
        16 => "TXT",
        28 => "AAAA",
        33 => "SRV",
        64 => "SVCB",
        65 => "HTTPS",
        255 => "ANY",
        other => decimal(u64::from(other), digits),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{TcpFlags, LINKTYPE_RAW};
    use crate::trails::LoadOptions;

    const TRAILS: &str = "\
evil-test-domain.com,malware (test),(static)
66.66.66.66,malware (test),(static)
6.6.6.6:8443,malware (test),(static)
198.51.100.53,known attacker,(static)
198.51.100.54,scanner (malware),(static)
198.51.100.91,parking site (suspicious),(static)
9.9.9.9:53,public resolver (suspicious),(static)
evil-url.example/bad/path,malware (test),(static)
198.51.100.7/ip/path,malware (test),(static)
tls-evil.example,malware (test),(static)
sinkholed.example,sinkhole x (malware),(static)
";

    fn processor(whitelist: &str) -> Processor {
        let path = std::env::temp_dir().join(format!(
            "xtrail-process-{}-{:?}.csv",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, TRAILS).unwrap();
        let trails = TrailSet::load(std::slice::from_ref(&path), &LoadOptions::default()).unwrap();
        let _ = std::fs::remove_file(&path);
        Processor::new(
            Arc::new(trails),
            Arc::new(Whitelist::parse(whitelist)),
            ProcessorConfig::with_sensor("t"),
        )
    }

    fn v4(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0];
        let total = (20 + l4.len()) as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(l4);
        p
    }

    fn tcp(sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut t = sport.to_be_bytes().to_vec();
        t.extend_from_slice(&dport.to_be_bytes());
        t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        t.extend_from_slice(payload);
        t
    }

    fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut u = sport.to_be_bytes().to_vec();
        u.extend_from_slice(&dport.to_be_bytes());
        u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(payload);
        u
    }

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        dns::query_message(0x1234, name, qtype)
    }

    const ME: [u8; 4] = [10, 0, 0, 66];

    fn run(p: &mut Processor, frames: &[Vec<u8>]) -> Vec<String> {
        let mut lines = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            let ts = 1_700_000_000_000_000 + i as i64 * 1_000_000;
            p.process(ts, LINKTYPE_RAW, f, &mut |e| {
                let line = e.to_maltrail();
                lines.push(
                    line.split_once("\" ")
                        .map_or(line.clone(), |(_, r)| r.to_owned()),
                );
            });
        }
        lines
    }

    #[test]
    fn name_rules() {
        assert!(is_valid_dns_name("evil-test-domain.com"));
        assert!(!is_valid_dns_name("localhost"));
        assert!(!is_valid_dns_name("a.example."));
        assert!(!is_valid_dns_name("_ldap._tcp.example.com"));
        assert!(is_ip_literal("1.2.3.4"));
        assert!(!is_ip_literal("1.2.3.example"));
        // The one-pass form against the memrchr-based one it replaced.
        let reference = |name: &str| {
            let Some(dot) = memchr::memrchr(b'.', name.as_bytes()) else {
                return false;
            };
            let last = &name[dot + 1..];
            !last.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        };
        for name in [
            "", ".", "a.", ".a", "a.b", "a..b", "A-1.B", "a_b.c", "a.b_", "ü.com", "a.b.c.",
            "1.2.3.4", "x:80.com", "a b.c", "-.-",
        ] {
            assert_eq!(is_valid_dns_name(name), reference(name), "{name:?}");
            assert_eq!(
                valid_dns_name(name.as_bytes()).is_some(),
                reference(name),
                "{name:?}"
            );
        }
        assert_eq!(valid_dns_name(&[b'a', b'.', 0xff]), None);
        // The fused query-name check against the two checks it replaced.
        for name in [
            "",
            ".",
            "a.b",
            "a.local",
            "a.LOCAL",
            "a.local.",
            "a.intranet.b",
            "a.Intranet.b.c",
            "intranet.a.b",
            "a.intranet",
            "a..intranet.b",
            "x.intranetx.b",
            "a.corp.com",
            "a.b.localdomain",
            "ü.local",
            "a_b.local",
            "x.in-addr.arpa",
            "evil.com",
            "a.dev",
        ] {
            let separate =
                valid_dns_name(name.as_bytes()).filter(|n| !crate::whitelist::is_ignored_suffix(n));
            assert_eq!(scan_dns_name::<true>(name.as_bytes()), separate, "{name:?}");
        }
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port(b"a.example:8080"), b"a.example");
        assert_eq!(strip_port(b"[::1]:80"), b"::1");
        assert_eq!(strip_port(b"::1"), b"::1");
        assert_eq!(strip_port(b"a.example"), b"a.example");
        assert_eq!(strip_port(b"a:b:c"), b"a:b:c");
        assert_eq!(strip_port(b":"), b"");
        assert_eq!(strip_port(b"a:"), b"a");
        assert_eq!(strip_port(b"::"), b"::");
        assert_eq!(strip_port(b""), b"");
    }

    #[test]
    fn hosts() {
        let text = |h: &[u8]| host_text(strip_port(h), &mut [0u8; MAX_HOST]).into_owned();
        assert_eq!(text(b"Example.COM:8080"), "example.com");
        assert_eq!(text(b"[::1]:80"), "::1");
        assert_eq!(text(b"1.2.3.4"), "1.2.3.4");
        assert_eq!(text(b"a\xffB"), "a\u{fffd}b");
        assert_eq!(text(&[b'a'; 300]).len(), MAX_HOST);
    }

    #[test]
    fn lowercasing_is_bounded() {
        let mut buf = [0u8; MAX_HOST];
        assert_eq!(lowercase_into(b"A.Example.", &mut buf), Some("a.example"));
        assert_eq!(lowercase_into(&[b'a'; 300], &mut buf), None);
    }

    #[test]
    fn processor_is_send() {
        fn send<T: Send>() {}
        send::<Processor>();
    }

    #[test]
    fn syn_rules() {
        let mut p = processor("");
        let lines = run(
            &mut p,
            &[
                v4(ME, [66, 66, 66, 66], 6, &tcp(1000, 443, TcpFlags::SYN, b"")),
                v4(ME, [6, 6, 6, 6], 6, &tcp(1001, 8443, TcpFlags::SYN, b"")),
                // SYN-ACK, plain ACK: not connection attempts
                v4(
                    ME,
                    [66, 66, 66, 66],
                    6,
                    &tcp(1002, 443, TcpFlags::SYN | TcpFlags::ACK, b""),
                ),
                v4(ME, [66, 66, 66, 66], 6, &tcp(1003, 443, TcpFlags::ACK, b"")),
                // to an attacker, to a parked domain's address off 80/443, from malware: silent
                v4(
                    ME,
                    [198, 51, 100, 53],
                    6,
                    &tcp(1004, 22, TcpFlags::SYN, b""),
                ),
                v4(
                    ME,
                    [198, 51, 100, 91],
                    6,
                    &tcp(1005, 8080, TcpFlags::SYN, b""),
                ),
                v4(
                    [198, 51, 100, 54],
                    ME,
                    6,
                    &tcp(1006, 22, TcpFlags::SYN, b""),
                ),
                // from an attacker: reported on the source
                v4(
                    [198, 51, 100, 53],
                    ME,
                    6,
                    &tcp(1007, 22, TcpFlags::SYN, b""),
                ),
                v4(
                    ME,
                    [198, 51, 100, 91],
                    6,
                    &tcp(1008, 443, TcpFlags::SYN, b""),
                ),
            ],
        );
        assert_eq!(
            lines,
            [
                "t 10.0.0.66 1000 66.66.66.66 443 TCP IP 66.66.66.66 \"malware (test)\" (static)",
                "t 10.0.0.66 1001 6.6.6.6 8443 TCP IPORT 6.6.6.6:8443 \"malware (test)\" (static)",
                "t 198.51.100.53 1007 10.0.0.66 22 TCP IP 198.51.100.53 \"known attacker\" (static)",
                "t 10.0.0.66 1008 198.51.100.91 443 TCP IP 198.51.100.91 \"parking site (suspicious)\" (static)",
            ]
        );
    }

    #[test]
    fn udp_icmp_and_fragments() {
        let mut p = processor("");
        let mut frag = v4(ME, [66, 66, 66, 66], 17, &udp(1, 2, b"x"));
        frag[7] = 1;
        let lines = run(
            &mut p,
            &[
                v4(ME, [66, 66, 66, 66], 17, &udp(5000, 4444, b"x")),
                v4(ME, [6, 6, 6, 6], 17, &udp(5001, 8443, b"quic")),
                v4(ME, [66, 66, 66, 66], 1, &[0, 0, 0, 0, 0, 0, 0, 0]),
                v4(ME, [66, 66, 66, 66], 1, &[8, 0, 0, 0, 0, 0, 0, 0]),
                v4(ME, [66, 66, 66, 66], 47, &[0, 0, 8, 0]),
                frag,
            ],
        );
        assert_eq!(lines.len(), 4, "{lines:#?}");
        assert!(lines[0].contains(" UDP IP 66.66.66.66 "));
        assert!(lines[1].contains(" UDP IPORT 6.6.6.6:8443 "));
        assert!(lines[2].starts_with("t 10.0.0.66 - 66.66.66.66 - ICMP IP 66.66.66.66 "));
        // GRE (47), named as Maltrail names it.
        assert!(lines[3].contains(" GRE IP 66.66.66.66 "));
        assert_eq!(p.stats().fragments, 1);
    }

    /// A name seen clean is answered from the verdicts until the trails change: then the
    /// new trail set decides.
    #[test]
    fn new_trails_forget_the_verdicts_of_names_seen_clean() {
        let mut p = processor("");
        let q = |sport| {
            let dns = udp(sport, 53, &query("later-evil.com", 1));
            v4(ME, [9, 9, 9, 10], 17, &dns)
        };
        assert!(run(&mut p, &[q(5353), q(5354)]).is_empty());
        assert_eq!(p.stats().name_verdict_hits, 1);
        let path =
            std::env::temp_dir().join(format!("xtrail-process-{}-new.csv", std::process::id()));
        std::fs::write(&path, "later-evil.com,malware (test),(static)\n").unwrap();
        let trails = TrailSet::load(std::slice::from_ref(&path), &LoadOptions::default()).unwrap();
        let _ = std::fs::remove_file(&path);
        p.set_trails(Arc::new(trails));
        let lines = run(&mut p, &[q(5355)]);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("later-evil.com"), "{lines:?}");
        assert_eq!(p.stats().name_verdict_hits, 1);
    }

    #[test]
    fn dns_rules() {
        let mut p = processor("");
        let mut tcp_dns = (query("evil-test-domain.com", 1).len() as u16)
            .to_be_bytes()
            .to_vec();
        tcp_dns.extend_from_slice(&query("evil-test-domain.com", 1));
        let mut response = query("evil-test-domain.com", 1);
        response[2] = 0x81;
        let lines = run(
            &mut p,
            &[
                // resolver trail + domain trail: both
                v4(
                    ME,
                    [198, 51, 100, 53],
                    17,
                    &udp(1, 53, &query("Evil-Test-Domain.COM", 1)),
                ),
                // AAAA: no resolver event, the domain still counts
                v4(ME, [198, 51, 100, 53], 17, &udp(2, 53, &query("x.org", 28))),
                // an IP:port trail labelled resolver is not reported
                v4(ME, [9, 9, 9, 9], 17, &udp(3, 53, &query("y.org", 1))),
                // over TCP
                v4(
                    ME,
                    [8, 8, 8, 8],
                    6,
                    &tcp(4, 53, TcpFlags::ACK | TcpFlags::PSH, &tcp_dns),
                ),
                // responses, ignored suffixes, single labels: nothing
                v4([8, 8, 8, 8], ME, 17, &udp(53, 5, &response)),
                v4(
                    ME,
                    [198, 51, 100, 53],
                    17,
                    &udp(6, 53, &query("printer.local", 1)),
                ),
                v4(ME, [198, 51, 100, 53], 17, &udp(7, 53, &query("wpad", 1))),
                // port-53 UDP that is not DNS is no free pass: the IP check as for any UDP
                v4(ME, [66, 66, 66, 66], 17, &udp(8, 53, b"\x00")),
            ],
        );
        assert_eq!(
            lines,
            [
                "t 10.0.0.66 1 198.51.100.53 53 UDP IP \"198.51.100.53 (evil-test-domain.com)\" \"known attacker\" (static)",
                "t 10.0.0.66 1 198.51.100.53 53 UDP DNS evil-test-domain.com \"malware (test)\" (static)",
                "t 10.0.0.66 4 8.8.8.8 53 TCP DNS evil-test-domain.com \"malware (test)\" (static)",
                "t 10.0.0.66 8 66.66.66.66 53 UDP IP 66.66.66.66 \"malware (test)\" (static)",
            ]
        );
    }

    #[test]
    fn whitelists() {
        let mut p = processor("evil-test-domain.com\n10.0.0.66\n");
        crate::event::spare_events(true);
        let lines = run(
            &mut p,
            &[
                v4(ME, [66, 66, 66, 66], 6, &tcp(1000, 443, TcpFlags::SYN, b"")),
                v4(
                    ME,
                    [8, 8, 8, 8],
                    17,
                    &udp(1, 53, &query("www.evil-test-domain.com", 1)),
                ),
            ],
        );
        assert!(lines.is_empty(), "{lines:#?}");
        assert_eq!(p.stats().whitelisted, 1);
        // The whitelisted event's strings go back for the next event's.
        assert_eq!(crate::event::spare_events(false), 1);
    }

    /// The URL check around a request's name checks: a whitelisted Host drops its URL's hit,
    /// not that of an absolute URL naming another host; the address event comes before the
    /// URL's; without a Host the URL's host is the destination address.
    #[test]
    fn url_checks_around_the_host_checks() {
        let mut p = processor("evil-url.example\ngood.example\n");
        let (a, listed) = ([1, 2, 3, 4], [66, 66, 66, 66]);
        let (evil, ip_url) = (
            "http://evil-url.example/bad/path",
            "http://198.51.100.7/ip/path",
        );
        let good = Some("good.example");
        // (source port, destination, request target, Host)
        let requests = [
            (1, a, "/bad/path", Some("evil-url.example")),
            (2, a, evil, good),
            (3, a, ip_url, good),
            (4, listed, ip_url, Some("name.example")),
            (5, [198, 51, 100, 7], "/ip/path", None),
        ];
        let frames: Vec<Vec<u8>> = requests
            .iter()
            .map(|&(sport, dst, target, host)| {
                let host = host.map_or(String::new(), |h| format!("Host: {h}\r\n"));
                let head = format!("GET {target} HTTP/1.1\r\n{host}\r\n");
                v4(ME, dst, 6, &tcp(sport, 80, 0x18, head.as_bytes()))
            })
            .collect();
        let lines = run(&mut p, &frames);
        let text = lines.join("\n");
        // Whitelisted: the request's host in both cases (Maltrail drops a whitelisted
        // host's URL hits).
        assert!(!text.contains(" 1 1.2.3.4"), "{text}");
        assert!(!text.contains(" 2 1.2.3.4"), "{text}");
        for want in [
            "3 1.2.3.4 80 TCP URL 198.51.100.7/ip/path",
            "5 198.51.100.7 80 TCP URL 198.51.100.7/ip/path",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        // A name-based request to a listed address: its address event, then its URL's.
        let four: Vec<&String> = lines
            .iter()
            .filter(|l| l.contains(" 4 66.66.66.66 "))
            .collect();
        assert_eq!(four.len(), 2, "{text}");
        assert!(
            four[0].contains("IP \"66.66.66.66 (name.example)\""),
            "{text}"
        );
        assert!(four[1].contains("URL 198.51.100.7/ip/path"), "{text}");
    }

    #[test]
    fn http_and_tls() {
        let mut p = processor("");
        let hello = crate::protocols::tls::tests::client_hello("TLS-Evil.Example");
        let lines = run(
            &mut p,
            &[
                v4(ME, [1, 2, 3, 4], 6, &tcp(1, 8080, 0x18, b"GET /Bad/Path?x=1 HTTP/1.1\r\nHost: evil-url.example:8080\r\n\r\n")),
                v4(ME, [1, 2, 3, 4], 6, &tcp(2, 3128, 0x18, b"GET http://evil-test-domain.com/x HTTP/1.1\r\nHost: evil-test-domain.com\r\n\r\n")),
                v4(ME, [66, 66, 66, 66], 6, &tcp(3, 80, 0x18, b"POST /a HTTP/1.0\r\nHost: name.example\r\n\r\n")),
                v4(ME, [66, 66, 66, 66], 6, &tcp(4, 80, 0x18, b"GET /a HTTP/1.0\r\nHost: 66.66.66.66\r\n\r\n")),
                v4(ME, [1, 2, 3, 4], 6, &tcp(5, 443, 0x18, &hello)),
                v4(ME, [1, 2, 3, 4], 6, &tcp(6, 443, 0x18, b"CONNECT sinkholed.example:443 HTTP/1.1\r\n\r\n")),
            ],
        );
        let text = lines.join("\n");
        for want in [
            "1 1.2.3.4 8080 TCP URL evil-url.example/bad/path(?x=1)",
            "2 1.2.3.4 3128 TCP DNS evil-test-domain.com ",
            "3 66.66.66.66 80 TCP IP \"66.66.66.66 (name.example)\"",
            "5 1.2.3.4 443 TCP DNS tls-evil.example ",
            "6 1.2.3.4 443 TCP DNS sinkholed.example ",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(!text.contains(" 4 66.66.66.66"), "{text}");
        // An absolute URL naming the Host's name: its hit is reported for the header and
        // for the URL (one lookup serves both).
        assert_eq!(
            text.matches("2 1.2.3.4 3128 TCP DNS evil-test-domain.com ")
                .count(),
            2,
            "{text}"
        );
    }
}
