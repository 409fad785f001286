//! The event model and its two line formats: JSON lines and Maltrail's event line.

use std::net::IpAddr;

use serde::Serialize;
use time::{format_description::FormatItem, macros::format_description, OffsetDateTime};

/// Event types, as Maltrail names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum EventType {
    #[serde(rename = "IP")]
    Ip,
    #[serde(rename = "IPORT")]
    IpPort,
    #[serde(rename = "DNS")]
    Dns,
    #[serde(rename = "URL")]
    Url,
    #[serde(rename = "HTTP")]
    Http,
    #[serde(rename = "UA")]
    Ua,
    #[serde(rename = "PORT")]
    Port,
    #[serde(rename = "PATH")]
    Path,
    #[serde(rename = "CERT")]
    Cert,
}

impl EventType {
    /// Every type, in the order Maltrail lists them.
    pub const ALL: [EventType; 9] = [
        EventType::Ip,
        EventType::IpPort,
        EventType::Dns,
        EventType::Url,
        EventType::Http,
        EventType::Ua,
        EventType::Port,
        EventType::Path,
        EventType::Cert,
    ];

    /// The name used in both output formats.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Ip => "IP",
            EventType::IpPort => "IPORT",
            EventType::Dns => "DNS",
            EventType::Url => "URL",
            EventType::Http => "HTTP",
            EventType::Ua => "UA",
            EventType::Port => "PORT",
            EventType::Path => "PATH",
            EventType::Cert => "CERT",
        }
    }
}

/// How bad an event is, derived from its info label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
}

impl Severity {
    /// Maltrail's labels carry the category in parentheses: any mention of `malware`, or
    /// `(malicious)`, is high; `mass scanner` and `known attacker` are low; anything else
    /// (`(suspicious)` ...) medium. ASCII case is ignored.
    pub fn from_info(info: &str) -> Severity {
        // ASCII case-insensitive, without a lowercased copy ("(malware)" is within "malware").
        let has = |needle: &str| {
            info.as_bytes()
                .windows(needle.len())
                .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
        };
        if has("malware") || has("(malicious)") {
            Severity::High
        } else if has("mass scanner") || has("known attacker") {
            Severity::Low
        } else {
            Severity::Medium
        }
    }
}

/// What the sensor did with the packet that raised the event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Observed only.
    Pass,
    /// Dropped (enforce mode).
    Drop,
}

/// Protocol details, present for DNS, HTTP and TLS events.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Details {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_query: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_qtype: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_user_agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_sni: Option<String>,
}

impl Details {
    fn is_empty(&self) -> bool {
        *self == Details::default()
    }

    /// Every field, in [`DetailsText::fields`]' order.
    fn fields_mut(&mut self) -> [&mut Option<String>; 7] {
        [
            &mut self.dns_query,
            &mut self.dns_qtype,
            &mut self.http_method,
            &mut self.http_host,
            &mut self.http_path,
            &mut self.http_user_agent,
            &mut self.tls_sni,
        ]
    }
}

/// An event's [`Details`] as the packet's own bytes (each written as text, invalid UTF-8
/// replaced as `String::from_utf8_lossy` does), for [`DetailsText::write`] to copy into a
/// reused event's strings instead of allocating new ones.
#[derive(Clone, Copy, Debug, Default)]
pub struct DetailsText<'a> {
    pub dns_query: Option<&'a [u8]>,
    pub dns_qtype: Option<&'a [u8]>,
    pub http_method: Option<&'a [u8]>,
    pub http_host: Option<&'a [u8]>,
    pub http_path: Option<&'a [u8]>,
    pub http_user_agent: Option<&'a [u8]>,
    pub tls_sni: Option<&'a [u8]>,
}

impl DetailsText<'_> {
    /// Every field, in [`Details::fields_mut`]' order.
    fn fields(&self) -> [Option<&[u8]>; 7] {
        [
            self.dns_query,
            self.dns_qtype,
            self.http_method,
            self.http_host,
            self.http_path,
            self.http_user_agent,
            self.tls_sni,
        ]
    }

    /// Writes these details over `d` (a field these lack is dropped), keeping the buffers
    /// of the fields both have.
    pub fn write(&self, d: &mut Details) {
        for (field, value) in d.fields_mut().into_iter().zip(self.fields()) {
            match value {
                Some(v) => set_lossy(field.get_or_insert_with(String::new), v),
                None => *field = None,
            }
        }
    }
}

/// `s` holding `value` as `String::from_utf8_lossy` writes it, in its own buffer when that
/// is large enough (see [`clear_for_reuse`]).
pub fn set_lossy(s: &mut String, value: &[u8]) {
    let s = clear_for_reuse(s);
    for chunk in value.utf8_chunks() {
        s.push_str(chunk.valid());
        if !chunk.invalid().is_empty() {
            s.push(char::REPLACEMENT_CHARACTER);
        }
    }
}

/// One detection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Event {
    /// Microseconds since the Unix epoch.
    #[serde(rename = "ts", serialize_with = "ser_ts")]
    pub ts_us: i64,
    pub sensor: String,
    pub src_ip: IpAddr,
    pub src_port: u16,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
    /// `TCP`, `UDP`, `ICMP`, `ICMPV6` or the protocol number.
    pub proto: String,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub trail: String,
    pub info: String,
    pub reference: String,
    pub severity: Severity,
    pub action: Action,
    /// Interface the packet arrived on, when captured live.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iface: Option<String>,
    /// Version of the trail set the event was matched with (empty: not known, not written).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub trail_set_version: String,
    #[serde(skip_serializing_if = "Details::is_empty", flatten)]
    pub details: Details,
}

const RFC3339_US: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");
const MALTRAIL_TS: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:6]");

fn datetime(ts_us: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ts_us) * 1000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Formats microseconds since the epoch as RFC 3339 UTC with microseconds (times beyond the
/// `time` crate's range as the epoch).
pub fn format_rfc3339(us: i64) -> String {
    match rfc3339_digits(us) {
        Some(b) => b.iter().map(|&c| char::from(c)).collect(),
        None => datetime(us)
            .format(RFC3339_US)
            .unwrap_or_else(|_| String::from("1970-01-01T00:00:00.000000Z")),
    }
}

/// Appends `us` (µs since the epoch) as a Maltrail event line starts:
/// `"2026-12-01 20:54:06.123456"`, quotes included (shared with the collector's Maltrail
/// exporter).
pub fn push_maltrail_ts(out: &mut String, us: i64) {
    out.push('"');
    match rfc3339_digits(us) {
        // RFC 3339's digits with a space for the `T` and without the `Z`.
        Some(mut b) => {
            b[10] = b' ';
            out.extend(b[..26].iter().map(|&c| char::from(c)));
        }
        None => out.push_str(&datetime(us).format(MALTRAIL_TS).unwrap_or_default()),
    }
    out.push('"');
}

/// Appends `us` (µs since the epoch) as [`format_rfc3339`] writes it
/// (`2026-12-01T20:54:06.123456Z`); without allocating for years 0-9999.
pub fn push_rfc3339(out: &mut Vec<u8>, us: i64) {
    match rfc3339_digits(us) {
        Some(b) => out.extend_from_slice(&b),
        None => out.extend_from_slice(format_rfc3339(us).as_bytes()),
    }
}

/// `us` (µs since the epoch) in RFC 3339 UTC with microseconds, computed without the `time`
/// crate's formatter or an allocation; `None` for years outside 0-9999.
fn rfc3339_digits(us: i64) -> Option<[u8; 27]> {
    let secs = us.div_euclid(1_000_000);
    let micros = us.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    if !(0..=9999).contains(&year) {
        return None;
    }
    let mut b = *b"0000-00-00T00:00:00.000000Z";
    let mut put = |at: usize, width: usize, mut v: i64| {
        for i in (at..at + width).rev() {
            // `v` is in range for `width` digits here.
            b[i] = b'0' + u8::try_from(v % 10).unwrap_or(0);
            v /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, sod / 3600);
    put(14, 2, sod / 60 % 60);
    put(17, 2, sod % 60);
    put(20, 6, micros);
    Some(b)
}

fn ser_ts<S: serde::Serializer>(ts_us: &i64, s: S) -> Result<S::Ok, S::Error> {
    match rfc3339_digits(*ts_us) {
        // ASCII digits and separators: always UTF-8.
        Some(b) => s.serialize_str(std::str::from_utf8(&b).unwrap_or_default()),
        None => s.serialize_str(&format_rfc3339(*ts_us)),
    }
}

/// Name of an IP protocol number as events show it.
pub fn proto_name(proto: u8) -> String {
    let mut s = String::new();
    push_proto_name(proto, &mut s);
    s
}

/// Bytes a reused string is given at least when it must grow: the strings of events,
/// throttle keys and flood-guard keys that are reused ([`set_str`]) for values of different
/// lengths settle at a size that fits instead of growing again and again (an IPv6
/// `[addr]:port` trail is 47).
const REUSED_STR_MIN: usize = 48;

/// `s` emptied, with room for [`REUSED_STR_MIN`] bytes (allocated only if it had less).
pub fn clear_for_reuse(s: &mut String) -> &mut String {
    s.clear();
    s.reserve(REUSED_STR_MIN);
    s
}

/// `s` holding `value`, in its own buffer when that is large enough (see
/// [`clear_for_reuse`]).
pub fn set_str(s: &mut String, value: &str) {
    let s = clear_for_reuse(s);
    s.push_str(value);
}

/// Events kept for reuse per thread: more than a live wake-up writes in the bench's DNS
/// hand-off scenario (~1,100 records a wake-up at 50k, ~5% of them raising an event).
pub(crate) const SPARE_EVENTS: usize = 256;

thread_local! {
    /// Events written and given back ([`recycle`]), for the next ones built on this thread
    /// ([`crate::process::PacketContext::event`], the live loop's kernel hits): their strings
    /// keep their buffers (sensor, protocol, trail, info, reference, interface, trail-set
    /// version, the details a protocol's events have), so a warm sensor allocates only what
    /// an event has new (a details field the reused event lacked, a trail text built on the
    /// heap: an address's or a URL's). Per thread: the thread that writes events (the live
    /// loop, replay) is the one that builds them.
    static SPARE: std::cell::RefCell<Vec<Event>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Keeps `event` (written, no longer needed) for the next event built on this thread; its
/// trail and details strings only when short (a long URL's or request line's buffer is
/// freed, as [`SpareStrings`] frees them: the pool does not hold on to the longest events).
pub fn recycle(mut event: Event) {
    if too_long_to_keep(&event.trail) {
        event.trail = String::new();
    }
    for field in event.details.fields_mut() {
        if field.as_ref().is_some_and(too_long_to_keep) {
            *field = None;
        }
    }
    let _ = SPARE.try_with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < SPARE_EVENTS {
            s.push(event);
        }
    });
}

/// Strings with room for more than this (a long URL trail's) are freed, not kept.
const SPARE_STRING_CAPACITY: usize = 256;

/// Whether `s`'s buffer is too large to keep for reuse ([`SPARE_STRING_CAPACITY`]).
fn too_long_to_keep(s: &String) -> bool {
    s.capacity() > SPARE_STRING_CAPACITY
}

/// An event whose strings are all empty (nothing allocated), to be written over when no
/// [`spare_event`] is at hand.
pub fn blank() -> Event {
    let unspecified = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
    Event {
        ts_us: 0,
        sensor: String::new(),
        src_ip: unspecified,
        src_port: 0,
        dst_ip: unspecified,
        dst_port: 0,
        proto: String::new(),
        kind: EventType::Ip,
        trail: String::new(),
        info: String::new(),
        reference: String::new(),
        severity: Severity::Low,
        action: Action::Pass,
        iface: None,
        trail_set_version: String::new(),
        details: Details::default(),
    }
}

/// An event given back on this thread ([`recycle`]), to be written over, if any.
pub fn spare_event() -> Option<Event> {
    SPARE.try_with(|s| s.borrow_mut().pop()).ok().flatten()
}

/// Events given back on this thread and not drawn again, after emptying the pool when
/// `empty` (the tests of the give-backs).
#[cfg(test)]
pub(crate) fn spare_events(empty: bool) -> usize {
    SPARE.with(|s| {
        let mut s = s.borrow_mut();
        if empty {
            s.clear();
        }
        s.len()
    })
}

/// Strings of forgotten keys kept for new keys' copies, so that a warm table allocates
/// nothing per key (the flood guard's).
#[derive(Debug)]
pub struct SpareStrings {
    kept: Vec<String>,
    max: usize,
}

impl SpareStrings {
    /// A pool that keeps at most `max` strings.
    pub fn new(max: usize) -> Self {
        SpareStrings {
            kept: Vec::new(),
            max,
        }
    }

    /// A copy of `value`, in a kept string's buffer when there is one ([`set_str`]).
    pub fn copy(&mut self, value: &str) -> String {
        let mut s = self.kept.pop().unwrap_or_default();
        set_str(&mut s, value);
        s
    }

    /// Keeps `s` for [`SpareStrings::copy`] while there is room and `s` is not a long one.
    pub fn keep(&mut self, s: String) {
        if self.kept.len() < self.max && !too_long_to_keep(&s) {
            self.kept.push(s);
        }
    }
}

/// An address as text, on the stack: IPv4 written digit by digit (its `Display` goes through
/// `core::fmt`, ~1,000 instructions an address: most of a kernel hit's event), IPv6 as
/// `Display` writes it.
#[derive(Clone, Copy, Debug)]
pub struct IpText {
    buf: [u8; 45],
    len: u8,
}

impl IpText {
    /// The text of `ip` (`Display`'s).
    pub fn new(ip: IpAddr) -> IpText {
        let mut t = IpText {
            buf: [0; 45],
            len: 0,
        };
        match ip {
            IpAddr::V4(a) => {
                for (i, o) in a.octets().into_iter().enumerate() {
                    if i > 0 {
                        t.push(b'.');
                    }
                    if o >= 100 {
                        t.push(b'0' + o / 100);
                    }
                    if o >= 10 {
                        t.push(b'0' + o / 10 % 10);
                    }
                    t.push(b'0' + o % 10);
                }
            }
            IpAddr::V6(a) => {
                use std::fmt::Write as _;
                // At most 39 bytes (eight groups of four hex digits): the buffer holds 45.
                let _ = write!(t, "{a}");
            }
        }
        t
    }

    fn push(&mut self, b: u8) {
        if let Some(slot) = self.buf.get_mut(usize::from(self.len)) {
            *slot = b;
            self.len += 1;
        }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever written: digits, `.`, and what `Ipv6Addr`'s `Display` writes.
        std::str::from_utf8(self.buf.get(..usize::from(self.len)).unwrap_or_default())
            .unwrap_or_default()
    }
}

impl std::fmt::Write for IpText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = usize::from(self.len) + s.len();
        let slot = self
            .buf
            .get_mut(usize::from(self.len)..end)
            .ok_or(std::fmt::Error)?;
        slot.copy_from_slice(s.as_bytes());
        self.len = end as u8;
        Ok(())
    }
}

/// Appends `s` as a JSON string: copied as is when nothing needs escaping (the common
/// case), else escaped by serde_json.
pub fn push_json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// `n` in decimal, written into `buf` (without `core::fmt`).
pub fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        // A digit: n % 10 < 10.
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("")
}

/// Appends [`proto_name`] of `proto` to `out`: the names of Maltrail's protocol table
/// (`IPPROTO_LUT`, from Python's `socket` on Linux) for the protocols it names, else the
/// number.
pub fn push_proto_name(proto: u8, out: &mut String) {
    use std::fmt::Write as _;
    let name = match proto {
        0 => "IP",
        1 => "ICMP",
        2 => "IGMP",
        4 => "IPIP",
        6 => "TCP",
        8 => "EGP",
        12 => "PUP",
        17 => "UDP",
        22 => "IDP",
        29 => "TP",
        41 => "IPV6",
        43 => "ROUTING",
        44 => "FRAGMENT",
        46 => "RSVP",
        47 => "GRE",
        50 => "ESP",
        51 => "AH",
        58 => "ICMPV6",
        59 => "NONE",
        60 => "DSTOPTS",
        103 => "PIM",
        132 => "SCTP",
        136 => "UDPLITE",
        255 => "RAW",
        // Writing into a String cannot fail.
        other => {
            let _ = write!(out, "{other}");
            return;
        }
    };
    out.push_str(name);
}

/// The fields every JSON event line carries (others, like `iface` and the protocol details,
/// appear when they apply).
pub const JSON_FIELDS: [&str; 13] = [
    "ts",
    "sensor",
    "src_ip",
    "src_port",
    "dst_ip",
    "dst_port",
    "proto",
    "type",
    "trail",
    "info",
    "reference",
    "severity",
    "action",
];

/// Output line formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line.
    Json,
    /// Maltrail's space-separated event line.
    Maltrail,
}

impl Event {
    /// The event as one JSON line (without the newline).
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(256);
        self.write_json(&mut out);
        // Only whole UTF-8 strings and ASCII are written.
        String::from_utf8(out).unwrap_or_default()
    }

    /// Appends the event as one line in `format` (with the newline) to `out`: what a log
    /// writes, into a buffer it reuses.
    pub fn write_line(&self, format: Format, out: &mut Vec<u8>) {
        match format {
            Format::Json => self.write_json(out),
            Format::Maltrail => out.extend_from_slice(self.to_maltrail().as_bytes()),
        }
        out.push(b'\n');
    }

    /// The event as a JSON object, as `serde_json` writes its `Serialize` (the same fields,
    /// order and escapes; `json_line_is_serdes` checks): written field by field, strings
    /// without escapes copied whole.
    fn write_json(&self, out: &mut Vec<u8>) {
        let key = |out: &mut Vec<u8>, k: &str| {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b"\":");
        };
        let text = |out: &mut Vec<u8>, k: &str, v: &str| {
            key(out, k);
            push_json_str(out, v);
        };
        let number = |out: &mut Vec<u8>, k: &str, v: u16| {
            key(out, k);
            out.extend_from_slice(decimal(u64::from(v), &mut [0; 20]).as_bytes());
        };
        out.extend_from_slice(b"{\"ts\":");
        match rfc3339_digits(self.ts_us) {
            Some(b) => {
                out.push(b'"');
                out.extend_from_slice(&b);
                out.push(b'"');
            }
            None => push_json_str(out, &format_rfc3339(self.ts_us)),
        }
        text(out, "sensor", &self.sensor);
        text(out, "src_ip", IpText::new(self.src_ip).as_str());
        number(out, "src_port", self.src_port);
        text(out, "dst_ip", IpText::new(self.dst_ip).as_str());
        number(out, "dst_port", self.dst_port);
        text(out, "proto", &self.proto);
        text(out, "type", self.kind.as_str());
        text(out, "trail", &self.trail);
        text(out, "info", &self.info);
        text(out, "reference", &self.reference);
        text(
            out,
            "severity",
            match self.severity {
                Severity::Low => "low",
                Severity::Medium => "medium",
                Severity::High => "high",
            },
        );
        text(
            out,
            "action",
            match self.action {
                Action::Pass => "pass",
                Action::Drop => "drop",
            },
        );
        if let Some(i) = &self.iface {
            text(out, "iface", i);
        }
        if !self.trail_set_version.is_empty() {
            text(out, "trail_set_version", &self.trail_set_version);
        }
        let d = &self.details;
        for (k, v) in [
            ("dns_query", &d.dns_query),
            ("dns_qtype", &d.dns_qtype),
            ("http_method", &d.http_method),
            ("http_host", &d.http_host),
            ("http_path", &d.http_path),
            ("http_user_agent", &d.http_user_agent),
            ("tls_sni", &d.tls_sni),
        ] {
            if let Some(v) = v {
                text(out, k, v);
            }
        }
        out.push(b'}');
    }

    /// The event in Maltrail's line format (without the newline):
    /// `"<ts>" <sensor> <src_ip> <src_port> <dst_ip> <dst_port> <proto> <type> <trail> <info> <reference>`.
    pub fn to_maltrail(&self) -> String {
        let mut out = String::with_capacity(160);
        push_maltrail_ts(&mut out, self.ts_us);
        let port = |p: u16| if p == 0 { String::new() } else { p.to_string() };
        let (src_ip, dst_ip) = (IpText::new(self.src_ip), IpText::new(self.dst_ip));
        let (src_port, dst_port) = (port(self.src_port), port(self.dst_port));
        for field in [
            self.sensor.as_str(),
            src_ip.as_str(),
            &src_port,
            dst_ip.as_str(),
            &dst_port,
            &self.proto,
            self.kind.as_str(),
            &self.trail,
            &self.info,
            &self.reference,
        ] {
            out.push(' ');
            push_maltrail_value(&mut out, field);
        }
        out
    }
}

/// Event lines in one format, each built in a buffer reused from event to event: what the
/// sensor's log and replay write.
#[derive(Debug)]
pub struct LineWriter {
    format: Format,
    line: Vec<u8>,
}

impl LineWriter {
    /// A writer of `format` lines.
    pub fn new(format: Format) -> Self {
        LineWriter {
            format,
            line: Vec::with_capacity(512),
        }
    }

    /// Writes `event` as one line (with the newline) to `out`, in one `write_all`.
    pub fn write<W: std::io::Write + ?Sized>(
        &mut self,
        out: &mut W,
        event: &Event,
    ) -> std::io::Result<()> {
        self.line.clear();
        event.write_line(self.format, &mut self.line);
        out.write_all(&self.line)
    }
}

/// Appends one value of a Maltrail event line: empty values are `-`; values with a space or
/// `"` are quoted with inner quotes doubled (shared with the collector's Maltrail exporter).
pub fn push_maltrail_value(out: &mut String, value: &str) {
    if value.is_empty() {
        out.push('-');
    } else if value.contains([' ', '"']) {
        out.push('"');
        out.push_str(&value.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_are_named_as_maltrail_names_them() {
        assert_eq!(proto_name(47), "GRE");
        assert_eq!(proto_name(50), "ESP");
        assert_eq!(proto_name(132), "SCTP");
        assert_eq!(proto_name(58), "ICMPV6");
        assert_eq!(proto_name(6), "TCP");
        assert_eq!(proto_name(200), "200");
        let mut s = String::from("x");
        push_proto_name(17, &mut s);
        assert_eq!(s, "xUDP");
    }

    #[test]
    fn ip_text_is_the_display_text() {
        let edges = [0u8, 1, 9, 10, 42, 99, 100, 101, 199, 200, 250, 255];
        for &a in &edges {
            for &b in &edges {
                let ip = IpAddr::from([a, b, 255 - a, b / 3]);
                assert_eq!(IpText::new(ip).as_str(), ip.to_string());
            }
        }
        for s in [
            "::",
            "::1",
            "2001:db8::8:800:200c:417a",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:255.255.255.255",
            "64:ff9b::192.0.2.33",
            "fe80::1:2:3:4",
        ] {
            let ip: IpAddr = s.parse().unwrap();
            assert_eq!(IpText::new(ip).as_str(), ip.to_string(), "{s}");
        }
    }

    fn sample() -> Event {
        Event {
            ts_us: 1_786_094_062_117_034,
            sensor: "gw".into(),
            src_ip: "10.13.13.2".parse().unwrap(),
            src_port: 57809,
            dst_ip: "1.1.1.1".parse().unwrap(),
            dst_port: 53,
            proto: "UDP".into(),
            kind: EventType::Dns,
            trail: "malware.example".into(),
            info: "asyncrat (malware)".into(),
            reference: "(static)".into(),
            severity: Severity::High,
            action: Action::Pass,
            iface: None,
            trail_set_version: String::new(),
            details: Details::default(),
        }
    }

    /// The hand-written JSON line is what `serde_json` makes of the `Serialize` impl, for
    /// every optional field, escapes, text beyond ASCII, IPv6, edge ports and times.
    #[test]
    fn json_line_is_serdes() {
        let odd = "a\"b\\c\n\t\r\u{8}\u{c}\u{1}\u{1f}\u{7f} é ✓ 𝄞 </script>";
        let mut events = vec![sample()];
        let mut e = sample();
        e.iface = Some("eth0".into());
        e.trail_set_version = "files-1".into();
        e.severity = Severity::Low;
        e.action = Action::Drop;
        e.src_port = 0;
        e.dst_port = 65_535;
        e.src_ip = "2001:db8::1".parse().unwrap();
        e.dst_ip = "::ffff:10.0.0.1".parse().unwrap();
        events.push(e);
        for (i, ts) in [0, -1, i64::MIN, i64::MAX, 253_402_300_800_000_000]
            .into_iter()
            .enumerate()
        {
            let mut e = sample();
            e.ts_us = ts;
            e.severity = Severity::Medium;
            e.kind = EventType::ALL[i % EventType::ALL.len()];
            events.push(e);
        }
        let mut e = sample();
        e.sensor = odd.into();
        e.trail = odd.into();
        e.info = odd.into();
        e.reference = String::new();
        e.proto = "253".into();
        e.iface = Some(odd.into());
        e.trail_set_version = odd.into();
        events.push(e);
        let details = [
            |d: &mut Details, v: String| d.dns_query = Some(v),
            |d: &mut Details, v: String| d.dns_qtype = Some(v),
            |d: &mut Details, v: String| d.http_method = Some(v),
            |d: &mut Details, v: String| d.http_host = Some(v),
            |d: &mut Details, v: String| d.http_path = Some(v),
            |d: &mut Details, v: String| d.http_user_agent = Some(v),
            |d: &mut Details, v: String| d.tls_sni = Some(v),
        ];
        let mut all = sample();
        for (i, set) in details.iter().enumerate() {
            let mut e = sample();
            set(&mut e.details, format!("v{i} {odd}"));
            events.push(e);
            set(&mut all.details, String::new());
        }
        events.push(all);
        for e in &events {
            let mut line = Vec::new();
            e.write_line(Format::Json, &mut line);
            let want = serde_json::to_string(e).unwrap() + "\n";
            assert_eq!(String::from_utf8(line).unwrap(), want);
            assert_eq!(e.to_json() + "\n", want);
        }
    }

    #[test]
    fn times_match_the_time_crate() {
        let mut x: u64 = 0x1234_5678_9abc_def1;
        // The epoch, around it, a leap day, the first and last microsecond of years 0-9999.
        let mut samples = vec![
            0,
            1,
            -1,
            951_782_400_000_000,
            4_102_444_799_999_999,
            -62_167_219_200_000_000,
            253_402_300_799_999_999,
        ];
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Years 1900 to about 2217 (about a fifth of them before 1970).
            samples.push((x % 10_000_000_000_000_000) as i64 - 2_208_988_800_000_000);
        }
        // Just outside years 0-9999: the `time` crate's formatter.
        samples.extend([-62_167_219_200_000_001, 253_402_300_800_000_000]);
        for us in samples {
            let ts = datetime(us).format(MALTRAIL_TS).unwrap();
            let mut e = sample();
            e.ts_us = us;
            assert!(e.to_maltrail().starts_with(&format!("\"{ts}\" ")), "{us}");
            let expected = datetime(us).format(RFC3339_US).unwrap();
            assert_eq!(format_rfc3339(us), expected, "{us}");
            let mut out = b"x".to_vec();
            push_rfc3339(&mut out, us);
            assert_eq!(out, [b"x", expected.as_bytes()].concat(), "{us}");
        }
    }

    #[test]
    fn severity_from_info_ignores_ascii_case() {
        for (info, want) in [
            ("asyncrat (malware)", Severity::High),
            ("Known MALWARE host", Severity::High),
            ("phishing (MALICIOUS)", Severity::High),
            ("Mass Scanner", Severity::Low),
            ("known attacker", Severity::Low),
            ("parking site (suspicious)", Severity::Medium),
            ("", Severity::Medium),
            ("malwar", Severity::Medium),
            // High before low.
            ("malware known attacker", Severity::High),
        ] {
            assert_eq!(Severity::from_info(info), want, "{info}");
        }
    }

    #[test]
    fn a_written_line_is_the_event_and_a_newline() {
        let mut e = sample();
        e.iface = Some("eth1".into());
        e.details.dns_query = Some("malware.example".into());
        let json = concat!(
            r#"{"ts":"2026-08-07T09:14:22.117034Z","sensor":"gw","src_ip":"10.13.13.2","#,
            r#""src_port":57809,"dst_ip":"1.1.1.1","dst_port":53,"proto":"UDP","type":"DNS","#,
            r#""trail":"malware.example","info":"asyncrat (malware)","reference":"(static)","#,
            r#""severity":"high","action":"pass","iface":"eth1","dns_query":"malware.example"}"#
        );
        let maltrail = concat!(
            r#""2026-08-07 09:14:22.117034" gw 10.13.13.2 57809 1.1.1.1 53 UDP DNS "#,
            r#"malware.example "asyncrat (malware)" (static)"#
        );
        for (format, line) in [(Format::Json, json), (Format::Maltrail, maltrail)] {
            let mut lines = LineWriter::new(format);
            let mut out = b"old\n".to_vec();
            lines.write(&mut out, &e).unwrap();
            lines.write(&mut out, &e).unwrap();
            assert_eq!(
                String::from_utf8(out).unwrap(),
                format!("old\n{line}\n{line}\n")
            );
        }
    }

    #[test]
    fn maltrail_line_matches_documented_example() {
        assert_eq!(
            sample().to_maltrail(),
            "\"2026-08-07 09:14:22.117034\" gw 10.13.13.2 57809 1.1.1.1 53 UDP DNS malware.example \"asyncrat (malware)\" (static)"
        );
    }

    #[test]
    fn maltrail_line_dashes_empty_values_and_zero_ports() {
        let mut e = sample();
        e.src_port = 0;
        e.dst_port = 0;
        e.reference = String::new();
        e.info = "say \"hi\"".into();
        let line = e.to_maltrail();
        assert!(line.contains(" 10.13.13.2 - 1.1.1.1 - UDP "), "{line}");
        assert!(line.ends_with("\"say \"\"hi\"\"\" -"), "{line}");
    }

    #[test]
    fn json_has_the_documented_fields() {
        let v: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
        for key in JSON_FIELDS {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["ts"], "2026-08-07T09:14:22.117034Z");
        assert_eq!(v["type"], "DNS");
        assert_eq!(v["severity"], "high");
    }

    #[test]
    fn given_back_events_keep_only_short_buffers() {
        spare_events(true);
        let mut e = blank();
        e.trail = "u".repeat(1000);
        e.info = "info".into();
        e.details.dns_query = Some("evil.example".into());
        e.details.http_path = Some("/".repeat(SPARE_STRING_CAPACITY + 1));
        recycle(e);
        let e = spare_event().expect("kept");
        assert_eq!(e.trail.capacity(), 0);
        assert_eq!(e.info, "info");
        assert_eq!(e.details.dns_query.as_deref(), Some("evil.example"));
        assert_eq!(e.details.http_path, None);
    }

    #[test]
    fn lossy_text_is_from_utf8_lossys() {
        let inputs: [&[u8]; 7] = [
            b"",
            b"/index.php?a=1",
            "caf\u{e9} \u{1f600}".as_bytes(),
            b"\xff",
            b"a\xc3",
            b"\xe2\x82x\xf0\x9f\x98",
            b"ok\xffok\xc0\xafend",
        ];
        let mut s = String::from("an older, longer value in the buffer");
        for b in inputs {
            set_lossy(&mut s, b);
            assert_eq!(s, String::from_utf8_lossy(b), "{b:?}");
        }
    }

    #[test]
    fn details_written_over_others_are_exactly_the_new_ones() {
        let mut d = Details::default();
        DetailsText {
            http_method: Some(b"GET"),
            http_host: Some(b"example.com"),
            http_path: Some(b"/a\xff"),
            http_user_agent: Some(b"curl/8"),
            tls_sni: Some(b"sni.example"),
            ..DetailsText::default()
        }
        .write(&mut d);
        assert_eq!(d.http_path.as_deref(), Some("/a\u{fffd}"));
        let dns = DetailsText {
            dns_query: Some(b"evil.example"),
            dns_qtype: Some(b"A"),
            ..DetailsText::default()
        };
        dns.write(&mut d);
        assert_eq!(
            d,
            Details {
                dns_query: Some("evil.example".into()),
                dns_qtype: Some("A".into()),
                ..Details::default()
            }
        );
        DetailsText::default().write(&mut d);
        assert!(d.is_empty());
    }
}
