//! `xtrail-sensor run --metrics ADDR`: the kernel and pipeline counters in the Prometheus
//! text format at `http://ADDR/metrics`.
//!
//! The live loop renders a page about once a second ([`render`]) and hands it to the
//! [`MetricsServer`], whose thread answers scrapes with the latest page; a scrape never
//! touches the loop or the maps. The server is deliberately small (one connection at a time,
//! `GET` only, short timeouts): it serves a scraper on a management network, not the public.
//!
//! Names (all counters end in `_total`): `xtrail_sensor_xdp_<counter>_total` for each XDP
//! program counter (`xtrail_common::stat::NAMES`, summed over CPUs), the userspace transport
//! and detector counters as `xtrail_sensor_<name>_total`, events written per type
//! (`xtrail_sensor_events_total{type="DNS"}`) and per heuristic
//! (`xtrail_sensor_heuristic_events_total{heuristic="potential port scanning"}`), and the
//! gauges `xtrail_sensor_trail_set_generation` and `xtrail_sensor_state_entries`; each of the
//! heuristics' bounded tables as `xtrail_sensor_heuristic_table_entries{table="scan_udp"}`
//! (gauge) and `xtrail_sensor_heuristic_table_evictions_total{table="scan_udp"}`.
//! Tested by `tests/metrics_e2e.rs` (root, veth pair) and the unit test below.

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use xtrail_detect::event::{Event, EventType};
use xtrail_detect::heuristics::{TableState, REFERENCE as HEURISTIC_REFERENCE};
use xtrail_detect::pipeline::DetectorStats;

use crate::live::LiveSummary;
use crate::stats::Counters;

/// How long a scraper may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest request head read.
const MAX_REQUEST: usize = 8192;
/// Distinct heuristic labels kept apart; more are counted as `other`.
const MAX_HEURISTICS: usize = 64;

/// Events written, per type and per heuristic; owned by the live loop (no locking).
#[derive(Clone, Debug, Default)]
pub struct EventCounts {
    by_type: [u64; EventType::ALL.len()],
    heuristics: Vec<(String, u64)>,
    other_heuristics: u64,
}

impl EventCounts {
    /// Counts one written event.
    pub fn count(&mut self, ev: &Event) {
        self.count_parts(ev.kind, &ev.reference, &ev.info);
    }

    fn count_parts(&mut self, kind: EventType, reference: &str, info: &str) {
        if let Some(i) = EventType::ALL.iter().position(|t| *t == kind) {
            self.by_type[i] += 1;
        }
        if reference != HEURISTIC_REFERENCE {
            return;
        }
        if let Some((_, n)) = self.heuristics.iter_mut().find(|(k, _)| k == info) {
            *n += 1;
        } else if self.heuristics.len() < MAX_HEURISTICS {
            self.heuristics.push((info.to_string(), 1));
        } else {
            self.other_heuristics += 1;
        }
    }
}

/// What one page shows.
#[derive(Debug)]
pub struct Sample<'a> {
    /// The XDP program's counters (`None` if the map could not be read).
    pub kernel: Option<&'a Counters>,
    /// Userspace transport counters.
    pub summary: &'a LiveSummary,
    /// The detector's counters.
    pub detector: &'a DetectorStats,
    /// Events written, by type and heuristic.
    pub events: &'a EventCounts,
    /// Trail sets installed up to the one in use (1 the start set, +1 per reload).
    pub trail_set_generation: u64,
    /// Entries held by the stateful stages (heuristics, throttle, flood guard).
    pub state_entries: usize,
    /// The heuristics' bounded tables.
    pub tables: &'a [TableState],
}

/// A label value escaped for the text format (`\`, `"` and newlines).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Page(String);

impl Page {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "counter", help);
        let _ = writeln!(self.0, "{name} {value}");
    }

    fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "gauge", help);
        let _ = writeln!(self.0, "{name} {value}");
    }
}

/// The page for one sample.
pub fn render(s: &Sample<'_>) -> String {
    let mut p = Page(String::with_capacity(8192));
    p.gauge(
        "xtrail_sensor_kernel_counters_readable",
        "1 when the XDP counters map was read for this page",
        u64::from(s.kernel.is_some()),
    );
    if let Some(k) = s.kernel {
        for (name, value) in k.pairs() {
            p.counter(
                &format!("xtrail_sensor_xdp_{name}_total"),
                &format!("XDP program counter {name}, summed over CPUs"),
                value,
            );
        }
    }
    let u = s.summary;
    let d = s.detector;
    let pr = &d.processor;
    let counters: [(&str, &str, u64); 40] = [
        (
            "payloads",
            "Ring-buffer packet copies read (inline mode)",
            u.payloads,
        ),
        (
            "xsk_frames",
            "Frames received over AF_XDP (mirror mode)",
            u.xsk_frames,
        ),
        (
            "queue_full",
            "AF_XDP frames dropped: the detector's queue was full",
            u.queue_full,
        ),
        (
            "xsk_dropped",
            "AF_XDP frames the sockets dropped before the transport read them (no free frame, a full receive ring)",
            u.xsk_dropped,
        ),
        (
            "xsk_fill_empty",
            "Times an AF_XDP socket's fill ring was found empty (zero-copy: the NIC dropped the frame; attempts, not frames)",
            u.xsk_fill_empty,
        ),
        (
            "malformed_records",
            "Ring-buffer records too short to read",
            u.malformed_records,
        ),
        ("flow_records", "Flow-start records read", u.flows),
        (
            "publish_errors",
            "Events that could not be spooled for the collector",
            u.publish_errors,
        ),
        (
            "events_suppressed_trail",
            "Events not reported: their trail is on the collector's suppression list",
            u.suppressed_trail,
        ),
        (
            "events_suppressed_source",
            "Events not reported: their source is on the collector's suppression list",
            u.suppressed_source,
        ),
        (
            "processed",
            "Handed-over packets run through the detector",
            pr.packets,
        ),
        (
            "parse_errors",
            "Handed-over packets the parser rejected",
            pr.parse_errors,
        ),
        (
            "fragments",
            "Non-first IP fragments (not inspected)",
            pr.fragments,
        ),
        ("dns_messages", "DNS messages parsed", pr.dns_messages),
        (
            "dns_errors",
            "Port-53 payloads that were not DNS",
            pr.dns_errors,
        ),
        ("http_requests", "HTTP requests parsed", pr.http_requests),
        (
            "tls_client_hellos",
            "TLS ClientHellos parsed",
            pr.tls_client_hellos,
        ),
        (
            "name_verdict_hits",
            "Names answered from the verdicts of names seen clean before",
            pr.name_verdict_hits,
        ),
        (
            "addresses_vouched",
            "Hand-offs whose addresses the XDP program found clean in the detector's set",
            pr.addresses_vouched,
        ),
        (
            "duplicate_syns",
            "SYNs skipped as repeats within a second",
            pr.duplicate_syns,
        ),
        (
            "packet_events_whitelisted",
            "Packet events dropped for a whitelisted address",
            pr.whitelisted,
        ),
        (
            "tls_reassembly_started",
            "TLS ClientHellos buffered over several segments",
            pr.tls_reassembly.started,
        ),
        (
            "tls_reassembly_completed",
            "TLS ClientHellos reassembled",
            pr.tls_reassembly.completed,
        ),
        (
            "tls_reassembly_evicted",
            "TLS reassembly flows evicted",
            pr.tls_reassembly.evicted,
        ),
        (
            "tls_reassembly_timed_out",
            "TLS reassembly flows timed out",
            pr.tls_reassembly.timed_out,
        ),
        (
            "quic_reassembly_started",
            "QUIC ClientHellos buffered over several Initials",
            pr.quic_reassembly.started,
        ),
        (
            "quic_reassembly_completed",
            "QUIC ClientHellos reassembled",
            pr.quic_reassembly.completed,
        ),
        (
            "kernel_hits",
            "Trail hits read from the kernel",
            d.kernel_hits,
        ),
        (
            "hits_whitelisted",
            "Kernel hits dropped for a whitelisted address",
            d.hits_whitelisted,
        ),
        (
            "hits_filtered",
            "Kernel hits dropped by Maltrail's SYN label rules",
            d.hits_filtered,
        ),
        (
            "flow_starts",
            "Flow starts given to the heuristics",
            d.flow_starts,
        ),
        (
            "throttle_suppressed",
            "Events collapsed into an identical one",
            d.throttle.suppressed,
        ),
        (
            "throttle_summarized",
            "Events held back into summaries",
            d.throttle.summarized,
        ),
        (
            "throttle_summaries",
            "Summary events written",
            d.throttle.summaries,
        ),
        (
            "throttle_evicted",
            "Throttle keys forgotten early (table or key text full)",
            d.throttle.evicted,
        ),
        (
            "flood_aggregated",
            "Events absorbed into per-trail flood aggregates",
            d.flood.aggregated,
        ),
        (
            "flood_aggregates",
            "Flood aggregate events written",
            d.flood.aggregates,
        ),
        (
            "flood_over_budget",
            "Events over the event budget (not written)",
            d.flood.over_budget,
        ),
        (
            "flood_overflow_reports",
            "Overflow report events written",
            d.flood.overflow_reports,
        ),
        (
            "flood_unreported",
            "Over-budget events beyond the overflow reports",
            d.flood.unreported,
        ),
    ];
    for (name, help, value) in counters {
        p.counter(&format!("xtrail_sensor_{name}_total"), help, value);
    }
    p.counter(
        "xtrail_sensor_events_written_total",
        "Events written to the log (and the collector spool)",
        u.events,
    );
    p.family(
        "xtrail_sensor_events_total",
        "counter",
        "Events written, by event type",
    );
    for (t, n) in EventType::ALL.iter().zip(s.events.by_type) {
        let _ = writeln!(
            p.0,
            "xtrail_sensor_events_total{{type=\"{}\"}} {n}",
            t.as_str()
        );
    }
    p.family(
        "xtrail_sensor_heuristic_events_total",
        "counter",
        "Heuristic events written, by heuristic (the event's info)",
    );
    for (h, n) in &s.events.heuristics {
        let _ = writeln!(
            p.0,
            "xtrail_sensor_heuristic_events_total{{heuristic=\"{}\"}} {n}",
            escape(h)
        );
    }
    if s.events.other_heuristics > 0 {
        let _ = writeln!(
            p.0,
            "xtrail_sensor_heuristic_events_total{{heuristic=\"other\"}} {}",
            s.events.other_heuristics
        );
    }
    p.gauge(
        "xtrail_sensor_trail_set_generation",
        "Trail sets installed up to the one in use (1 the start set, +1 per reload)",
        s.trail_set_generation,
    );
    p.gauge(
        "xtrail_sensor_state_entries",
        "Entries held by the stateful stages (heuristics, throttle, flood guard)",
        s.state_entries as u64,
    );
    p.family(
        "xtrail_sensor_heuristic_table_entries",
        "gauge",
        "Entries held by each of the heuristics' bounded tables",
    );
    for t in s.tables {
        let _ = writeln!(
            p.0,
            "xtrail_sensor_heuristic_table_entries{{table=\"{}\"}} {}",
            t.table, t.entries
        );
    }
    p.family(
        "xtrail_sensor_heuristic_table_evictions_total",
        "counter",
        "Entries each of the heuristics' bounded tables dropped to make room, stale ones included \
         (over one window near the entries held: keys go before their window ends)",
    );
    for t in s.tables {
        let _ = writeln!(
            p.0,
            "xtrail_sensor_heuristic_table_evictions_total{{table=\"{}\"}} {}",
            t.table, t.evicted
        );
    }
    p.0
}

/// Serves the latest page at `/metrics` from its own thread until dropped.
#[derive(Debug)]
pub struct MetricsServer {
    latest: Arc<Mutex<String>>,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `addr` and starts serving (an empty page until the first [`Self::publish`]).
    pub fn start(addr: SocketAddr) -> std::io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let latest = Arc::new(Mutex::new(String::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (latest, stop) = (Arc::clone(&latest), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("metrics".into())
                .spawn(move || serve(&listener, &latest, &stop))?
        };
        Ok(MetricsServer {
            latest,
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the page scrapers get.
    pub fn publish(&self, page: String) {
        *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = page;
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(listener: &TcpListener, latest: &Mutex<String>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((conn, _)) => {
                if let Err(e) = answer(conn, latest) {
                    log::debug!("metrics request: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                log::warn!("metrics listener: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// Reads one request head and answers it; the connection is closed after.
fn answer(mut conn: TcpStream, latest: &Mutex<String>) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(READ_TIMEOUT))?;
    conn.set_write_timeout(Some(READ_TIMEOUT))?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_REQUEST {
            return respond(
                &mut conn,
                "431 Request Header Fields Too Large",
                "text/plain",
                "request too large\n",
            );
        }
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or(target);
    match (method, path) {
        ("GET", "/metrics") => {
            let page = latest.lock().unwrap_or_else(|e| e.into_inner()).clone();
            respond(
                &mut conn,
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                &page,
            )
        }
        ("GET", _) => respond(&mut conn, "404 Not Found", "text/plain", "try /metrics\n"),
        _ => respond(
            &mut conn,
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n",
        ),
    }
}

fn respond(conn: &mut TcpStream, status: &str, ctype: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes())?;
    conn.write_all(body.as_bytes())?;
    conn.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every line a comment or `name{labels} value`.
    pub(crate) fn is_prometheus_text(page: &str) -> bool {
        page.lines().all(|l| {
            if l.starts_with("# HELP ") || l.starts_with("# TYPE ") {
                return true;
            }
            let Some((series, value)) = l.rsplit_once(' ') else {
                return false;
            };
            let name_end = series.find('{').unwrap_or(series.len());
            let name = &series[..name_end];
            let name_ok = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            let labels_ok = name_end == series.len()
                || (series.ends_with('}') && series[name_end..].contains('='));
            name_ok && labels_ok && value.parse::<f64>().is_ok()
        })
    }

    #[test]
    fn page_is_prometheus_text_and_served() {
        let mut events = EventCounts::default();
        events.count_parts(
            EventType::Port,
            HEURISTIC_REFERENCE,
            "potential \"port\" scanning",
        );
        let summary = LiveSummary::default();
        let detector = DetectorStats::default();
        let kernel = Counters::default();
        let page = render(&Sample {
            kernel: Some(&kernel),
            summary: &summary,
            detector: &detector,
            events: &events,
            trail_set_generation: 7,
            state_entries: 3,
            tables: &[TableState {
                table: "scan_udp",
                entries: 3,
                evicted: 2,
            }],
        });
        assert!(is_prometheus_text(&page), "{page}");
        assert!(page.contains("xtrail_sensor_xdp_ringbuf_full_total 0"));
        assert!(page.contains("xtrail_sensor_events_total{type=\"PORT\"} 1"));
        assert!(page.contains("xtrail_sensor_heuristic_table_entries{table=\"scan_udp\"} 3"));
        assert!(
            page.contains("xtrail_sensor_heuristic_table_evictions_total{table=\"scan_udp\"} 2")
        );
        assert!(page.contains(
            "xtrail_sensor_heuristic_events_total{heuristic=\"potential \\\"port\\\" scanning\"} 1"
        ));

        let server = MetricsServer::start("127.0.0.1:0".parse().unwrap()).unwrap();
        server.publish(page.clone());
        let mut c = TcpStream::connect(server.local_addr()).unwrap();
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut got = String::new();
        c.read_to_string(&mut got).unwrap();
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
        assert!(got.ends_with(&page));
        let mut c = TcpStream::connect(server.local_addr()).unwrap();
        c.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let mut got = String::new();
        c.read_to_string(&mut got).unwrap();
        assert!(got.starts_with("HTTP/1.1 404"), "{got}");
    }
}
