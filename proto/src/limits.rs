//! What one event and one batch may hold: the collector refuses more, the publisher
//! truncates to it before spooling, and the collector advertises it (`Ingest/GetLimits`).
//!
//! Field limits are bytes of UTF-8; truncation cuts at a character boundary.

use std::ops::ControlFlow;

use crate::v1;

/// Events per batch, by default.
pub const DEFAULT_MAX_BATCH_EVENTS: u32 = 10_000;
/// Encoded bytes per batch, by default.
pub const DEFAULT_MAX_BATCH_BYTES: u64 = 16 << 20;
/// Encoded bytes per event.
pub const MAX_EVENT_BYTES: u32 = 64 << 10;
/// `trail`.
pub const MAX_TRAIL_BYTES: u32 = 4096;
/// `info`.
pub const MAX_INFO_BYTES: u32 = 1024;
/// `reference`.
pub const MAX_REFERENCE_BYTES: u32 = 1024;
/// `http.path`.
pub const MAX_URL_BYTES: u32 = 8192;
/// `http.user_agent`.
pub const MAX_USER_AGENT_BYTES: u32 = 2048;
/// Every other text field: DNS query and type, HTTP host and method, TLS SNI, sensor,
/// iface, proto, type.
pub const MAX_NAME_BYTES: u32 = 1024;

/// The limits a collector with the default batch settings advertises.
pub fn default_limits() -> v1::Limits {
    v1::Limits {
        max_batch_events: DEFAULT_MAX_BATCH_EVENTS,
        max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
        max_event_bytes: MAX_EVENT_BYTES,
        max_trail_bytes: MAX_TRAIL_BYTES,
        max_info_bytes: MAX_INFO_BYTES,
        max_reference_bytes: MAX_REFERENCE_BYTES,
        max_url_bytes: MAX_URL_BYTES,
        max_user_agent_bytes: MAX_USER_AGENT_BYTES,
        max_name_bytes: MAX_NAME_BYTES,
    }
}

/// Calls `f` with every text field of an event, its name and byte limit, until `f` breaks
/// (no allocation: ingest runs this on every event).
fn each_field_mut<B>(
    ev: &mut v1::Event,
    mut f: impl FnMut(&'static str, &mut String, u32) -> ControlFlow<B>,
) -> ControlFlow<B> {
    f("sensor", &mut ev.sensor, MAX_NAME_BYTES)?;
    f("proto", &mut ev.proto, MAX_NAME_BYTES)?;
    f("type", &mut ev.r#type, MAX_NAME_BYTES)?;
    f("trail", &mut ev.trail, MAX_TRAIL_BYTES)?;
    f("info", &mut ev.info, MAX_INFO_BYTES)?;
    f("reference", &mut ev.reference, MAX_REFERENCE_BYTES)?;
    if let Some(s) = ev.iface.as_mut() {
        f("iface", s, MAX_NAME_BYTES)?;
    }
    if let Some(d) = ev.dns.as_mut() {
        if let Some(s) = d.query.as_mut() {
            f("dns.query", s, MAX_NAME_BYTES)?;
        }
        if let Some(s) = d.qtype.as_mut() {
            f("dns.qtype", s, MAX_NAME_BYTES)?;
        }
    }
    if let Some(h) = ev.http.as_mut() {
        if let Some(s) = h.method.as_mut() {
            f("http.method", s, MAX_NAME_BYTES)?;
        }
        if let Some(s) = h.host.as_mut() {
            f("http.host", s, MAX_NAME_BYTES)?;
        }
        if let Some(s) = h.path.as_mut() {
            f("http.path", s, MAX_URL_BYTES)?;
        }
        if let Some(s) = h.user_agent.as_mut() {
            f("http.user_agent", s, MAX_USER_AGENT_BYTES)?;
        }
    }
    if let Some(t) = ev.tls.as_mut() {
        if let Some(s) = t.sni.as_mut() {
            f("tls.sni", s, MAX_NAME_BYTES)?;
        }
    }
    ControlFlow::Continue(())
}

/// Cuts `s` to at most `max` bytes at a character boundary; whether it cut.
pub fn truncate_utf8(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    true
}

/// Truncates every field to its limit; returns how many fields were cut.
pub fn truncate_fields(ev: &mut v1::Event) -> usize {
    truncate_fields_to(ev, u32::MAX)
}

/// Truncates every field to its limit or `cap` bytes, whichever is lower (lists show
/// previews); returns how many fields were cut.
pub fn truncate_fields_to(ev: &mut v1::Event, cap: u32) -> usize {
    let mut cut = 0;
    let _ = each_field_mut::<()>(ev, |_, s, max| {
        cut += usize::from(truncate_utf8(s, max.min(cap) as usize));
        ControlFlow::Continue(())
    });
    cut
}

/// The first field over its limit, as a message naming the field and the limit.
pub fn check_fields(ev: &mut v1::Event) -> Result<(), String> {
    match each_field_mut(ev, |name, s, max| {
        if s.len() > max as usize {
            ControlFlow::Break(format!(
                "field {name} is {} bytes, over the limit of {max} bytes",
                s.len()
            ))
        } else {
            ControlFlow::Continue(())
        }
    }) {
        ControlFlow::Break(e) => Err(e),
        ControlFlow::Continue(()) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_at_char_boundaries() {
        let mut ev = v1::Event {
            trail: "é".repeat(3000),
            http: Some(v1::HttpDetails {
                path: Some("a".repeat(10_000)),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(check_fields(&mut ev).unwrap_err().contains("trail"));
        assert_eq!(truncate_fields(&mut ev), 2);
        assert!(ev.trail.len() <= MAX_TRAIL_BYTES as usize);
        assert!(ev.trail.chars().all(|c| c == 'é'));
        assert_eq!(
            ev.http
                .as_ref()
                .and_then(|h| h.path.as_ref())
                .map(String::len),
            Some(MAX_URL_BYTES as usize)
        );
        assert!(check_fields(&mut ev).is_ok());
        assert_eq!(truncate_fields(&mut ev), 0);
    }
}
