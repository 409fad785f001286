//! Threat rows of the full exports (`/api/threats.json`, `/api/threats.csv`) written
//! straight into the output buffer: no per-row value tree, no intermediate strings for
//! times, counts and address lists. A JSON row is byte for byte what serializing the API's
//! threat summary gives (`api::Summary`, tested in `api`); a CSV row is the export's format.
//! The parts that depend on the threat alone are rendered once when it is stored
//! ([`Rendered`]) and copied into an unscoped viewer's rows.

use std::io::Write as _;
use std::net::IpAddr;

use xtrail_detect::event::{decimal, push_json_str as json_str, push_rfc3339};
use xtrail_proto::json::severity_name;

use super::threats::{in_scope, Addr, Bounded, Threat, Triage};
use crate::access::Scope;

/// Sparkline points of a row (as the API's summaries).
pub const SPARK: usize = 24;
/// Most in-scope addresses shown past a list's cut-off (as the API's summaries).
pub const MORE_SHOWN: usize = 100;

/// Appends `n` in decimal.
fn num(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(decimal(n, &mut [0; 20]).as_bytes());
}

/// Appends the in-scope addresses of a list (and, for a scoped viewer, those past it)
/// through `f`.
fn each_addr(
    list: &Bounded<Addr>,
    more: &[IpAddr],
    scope: &Scope,
    mut f: impl FnMut(Option<&str>, Option<&IpAddr>),
) {
    for a in list.items.iter().filter(|a| scope.allows(&a.ip)) {
        f(Some(&a.text), None);
    }
    if !scope.is_all() {
        for ip in in_scope(more, scope).take(MORE_SHOWN) {
            f(None, Some(ip));
        }
    }
}

fn json_addrs(out: &mut Vec<u8>, list: &Bounded<Addr>, more: &[IpAddr], scope: &Scope) {
    out.push(b'[');
    let mut first = true;
    each_addr(list, more, scope, |text, ip| {
        if !first {
            out.push(b',');
        }
        first = false;
        match (text, ip) {
            (Some(t), _) => json_str(out, t),
            (None, Some(ip)) => {
                let _ = write!(out, "\"{ip}\"");
            }
            _ => {}
        }
    });
    out.push(b']');
}

fn json_strs(out: &mut Vec<u8>, items: &[String]) {
    out.push(b'[');
    for (i, s) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json_str(out, s);
    }
    out.push(b']');
}

fn json_nums<T: Copy + Into<u64>>(out: &mut Vec<u8>, items: &[T]) {
    out.push(b'[');
    for (i, n) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        num(out, (*n).into());
    }
    out.push(b']');
}

/// Appends the start of a threat's JSON summary, up to its `"count":` (the threat alone).
fn json_head(out: &mut Vec<u8>, t: &Threat) {
    out.extend_from_slice(b"{\"id\":");
    json_str(out, &t.id);
    for (name, v) in [
        ("kind", &t.kind),
        ("type", &t.r#type),
        ("trail", &t.trail),
        ("info", &t.info),
        ("reference", &t.reference),
    ] {
        field(out, name);
        json_str(out, v);
    }
    field(out, "severity");
    json_str(out, severity_name(t.severity));
    field(out, "first_seen");
    out.push(b'"');
    push_rfc3339(out, t.first_seen);
    out.push(b'"');
    field(out, "last_seen");
    out.push(b'"');
    push_rfc3339(out, t.last_seen);
    out.push(b'"');
    out.extend_from_slice(b",\"count\":");
}

/// Appends the middle of a threat's JSON summary, from `,"total_count"` to its
/// `"sparkline":` (the threat and the scope).
fn json_mid(out: &mut Vec<u8>, t: &Threat, scope: &Scope) {
    out.extend_from_slice(b",\"total_count\":");
    num(out, t.count);
    field(out, "sensors");
    json_strs(out, &t.sensors.items);
    field(out, "sources");
    json_addrs(out, &t.sources, &t.more_sources, scope);
    field(out, "destinations");
    json_addrs(out, &t.destinations, &t.more_destinations, scope);
    let flag = |b: bool| if b { &b"true"[..] } else { &b"false"[..] };
    out.extend_from_slice(b",\"sources_truncated\":");
    out.extend_from_slice(flag(t.sources.truncated));
    out.extend_from_slice(b",\"destinations_truncated\":");
    out.extend_from_slice(flag(t.destinations.truncated));
    field(out, "ports");
    json_nums(out, &t.ports.items);
    field(out, "protocols");
    json_strs(out, &t.protocols.items);
    field(out, "sparkline");
}

/// Appends `,"name":`.
fn field(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

/// The parts of a threat's export rows that depend on the threat alone (as an unscoped
/// viewer sees it), rendered once when the threat is stored ([`Threat::refold`]) so that
/// a full export copies one contiguous buffer per threat instead of following every
/// string of it. One allocation: JSON head, JSON middle, CSV head, CSV middle.
#[derive(Clone, Debug, Default)]
pub struct Rendered {
    buf: Box<[u8]>,
    /// Ends of the first three parts in `buf`.
    cuts: [u32; 3],
}

impl Rendered {
    /// Renders `t`'s parts.
    pub fn of(t: &Threat) -> Rendered {
        let all = Scope::all();
        let mut buf = Vec::with_capacity(1024);
        let mut scratch = String::new();
        let mut cuts = [0u32; 3];
        json_head(&mut buf, t);
        cuts[0] = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        json_mid(&mut buf, t, &all);
        cuts[1] = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        csv_head(&mut buf, t);
        cuts[2] = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        csv_mid(&mut buf, &mut scratch, t, &all);
        if u32::try_from(buf.len()).is_err() {
            return Rendered::default(); // absurdly large: rendered per row instead
        }
        Rendered {
            buf: buf.into_boxed_slice(),
            cuts,
        }
    }

    /// The four parts, when rendered.
    fn parts(&self) -> Option<[&[u8]; 4]> {
        if self.buf.is_empty() {
            return None;
        }
        let [a, b, c] = self.cuts.map(|x| x as usize);
        Some([
            self.buf.get(..a)?,
            self.buf.get(a..b)?,
            self.buf.get(b..c)?,
            self.buf.get(c..)?,
        ])
    }
}

/// Appends one threat as the API's JSON summary: `count` events in `[from, to)`.
pub fn json_row(
    out: &mut Vec<u8>,
    t: &Threat,
    tr: &Triage,
    scope: &Scope,
    count: u64,
    from: i64,
    to: i64,
) {
    match t.rendered.parts().filter(|_| scope.is_all()) {
        Some([head, mid, _, _]) => {
            out.extend_from_slice(head);
            num(out, count);
            out.extend_from_slice(mid);
        }
        None => {
            json_head(out, t);
            num(out, count);
            json_mid(out, t, scope);
        }
    }
    let mut spark = [0u64; SPARK];
    t.sparkline_into(from, to, &mut spark);
    json_nums(out, &spark);
    field(out, "status");
    json_str(out, tr.status());
    field(out, "assignee");
    json_str(out, &tr.assignee);
    field(out, "tags");
    json_strs(out, &tr.tags);
    out.extend_from_slice(b",\"notes\":");
    num(out, u64::from(tr.notes));
    out.push(b'}');
}

/// The CSV export's header line.
pub const CSV_HEADER: &str = "id,kind,severity,first_seen,last_seen,count,type,trail,info,reference,sources,destinations,ports,protocols,sensors,status,assignee,tags\r\n";

/// Appends one CSV cell: quoted when needed; a leading `= + - @` (a spreadsheet formula)
/// is prefixed with `'`.
pub fn csv_cell(out: &mut Vec<u8>, v: &str) {
    let b = v.as_bytes();
    let formula = matches!(b.first(), Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r'));
    let quote = b.iter().any(|&c| matches!(c, b',' | b'"' | b'\n' | b'\r'));
    if quote {
        out.push(b'"');
    }
    if formula {
        out.push(b'\'');
    }
    if quote {
        for part in v.split_inclusive('"') {
            out.extend_from_slice(part.as_bytes());
            if part.ends_with('"') {
                out.push(b'"');
            }
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(v.as_bytes());
    }
}

/// Appends a threat's CSV cells up to its count: `id,...,last_seen,`.
fn csv_head(out: &mut Vec<u8>, t: &Threat) {
    csv_cell(out, &t.id);
    out.push(b',');
    csv_cell(out, &t.kind);
    out.push(b',');
    csv_cell(out, severity_name(t.severity));
    out.push(b',');
    push_rfc3339(out, t.first_seen);
    out.push(b',');
    push_rfc3339(out, t.last_seen);
    out.push(b',');
}

/// Appends a threat's CSV cells after its count: `,type,...,sensors`.
fn csv_mid(out: &mut Vec<u8>, scratch: &mut String, t: &Threat, scope: &Scope) {
    use std::fmt::Write as _;
    let cell = |out: &mut Vec<u8>, v: &str| {
        out.push(b',');
        csv_cell(out, v);
    };
    cell(out, &t.r#type);
    cell(out, &t.trail);
    cell(out, &t.info);
    cell(out, &t.reference);
    let joined = |scratch: &mut String, list: &Bounded<Addr>, more: &[IpAddr]| {
        scratch.clear();
        each_addr(list, more, scope, |text, ip| {
            if !scratch.is_empty() {
                scratch.push(' ');
            }
            match (text, ip) {
                (Some(t), _) => scratch.push_str(t),
                (None, Some(ip)) => {
                    let _ = write!(scratch, "{ip}");
                }
                _ => {}
            }
        });
    };
    joined(scratch, &t.sources, &t.more_sources);
    cell(out, scratch);
    joined(scratch, &t.destinations, &t.more_destinations);
    cell(out, scratch);
    scratch.clear();
    for (i, p) in t.ports.items.iter().enumerate() {
        if i > 0 {
            scratch.push(' ');
        }
        scratch.push_str(decimal(u64::from(*p), &mut [0; 20]));
    }
    cell(out, scratch);
    words(scratch, &t.protocols.items);
    cell(out, scratch);
    words(scratch, &t.sensors.items);
    cell(out, scratch);
}

/// `items` joined by spaces, in `scratch`.
fn words(scratch: &mut String, items: &[String]) {
    scratch.clear();
    for (i, s) in items.iter().enumerate() {
        if i > 0 {
            scratch.push(' ');
        }
        scratch.push_str(s);
    }
}

/// Appends one threat as a CSV row (`scratch` is reused between rows for the joined cells).
pub fn csv_row(
    out: &mut Vec<u8>,
    scratch: &mut String,
    t: &Threat,
    tr: &Triage,
    scope: &Scope,
    count: u64,
) {
    match t.rendered.parts().filter(|_| scope.is_all()) {
        Some([_, _, head, mid]) => {
            out.extend_from_slice(head);
            num(out, count);
            out.extend_from_slice(mid);
        }
        None => {
            csv_head(out, t);
            num(out, count);
            csv_mid(out, scratch, t, scope);
        }
    }
    out.push(b',');
    csv_cell(out, tr.status());
    out.push(b',');
    csv_cell(out, &tr.assignee);
    words(scratch, &tr.tags);
    out.push(b',');
    csv_cell(out, scratch);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_quote_and_defuse() {
        let mut out = Vec::new();
        csv_cell(&mut out, "a,\"b\"");
        out.push(b'|');
        csv_cell(&mut out, "=cmd");
        out.push(b'|');
        csv_cell(&mut out, "-1,\"x");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"a,\"\"b\"\"\"|'=cmd|\"'-1,\"\"x\""
        );
    }
}
