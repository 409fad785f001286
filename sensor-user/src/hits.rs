//! Turning the XDP program's [`HitRecord`]s into [`Event`]s.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use xtrail_common::{action, side, trail_kind, FlowRecord, HitRecord};
use xtrail_detect::event::{proto_name, Action, Details, Event, EventType, Severity};
use xtrail_detect::trails::TrailSet;

/// Converts kernel monotonic timestamps to wall-clock microseconds.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Realtime minus monotonic, in nanoseconds.
    offset_ns: i128,
}

fn clock_ns(id: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec for clock_gettime to fill.
    unsafe { libc::clock_gettime(id, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl Clock {
    /// Samples both clocks now.
    pub fn now() -> Clock {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        Clock {
            offset_ns: real - mono,
        }
    }

    /// Wall-clock microseconds of a `bpf_ktime_get_ns()` value.
    pub fn to_unix_us(&self, ktime_ns: u64) -> i64 {
        i64::try_from((i128::from(ktime_ns) + self.offset_ns) / 1000).unwrap_or(0)
    }
}

/// Wall-clock microseconds since the Unix epoch, now.
pub fn unix_us_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// An address from the record's 16-byte form (IPv4 is v4-mapped).
pub fn addr(family: u8, bytes: [u8; 16]) -> IpAddr {
    if family == 4 {
        IpAddr::V4(Ipv4Addr::new(bytes[12], bytes[13], bytes[14], bytes[15]))
    } else {
        IpAddr::V6(Ipv6Addr::from(bytes))
    }
}

/// Parses a raw ring-buffer item.
pub fn parse_record(bytes: &[u8]) -> Option<HitRecord> {
    if bytes.len() < std::mem::size_of::<HitRecord>() {
        return None;
    }
    // SAFETY: HitRecord is plain old data and `bytes` holds at least one.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<HitRecord>()) })
}

/// Builds the event for a hit. The trail printed is the matching address (`ip`, or `ip:port`
/// / `[ip6]:port` for IP:port trails), as Maltrail prints it.
pub fn to_event(
    rec: &HitRecord,
    trails: &TrailSet,
    sensor: &str,
    iface: Option<String>,
    clock: &Clock,
) -> Event {
    let src_ip = addr(rec.family, rec.src);
    let dst_ip = addr(rec.family, rec.dst);
    let (trail_ip, trail_port) = if rec.side == side::SRC {
        (src_ip, rec.src_port)
    } else {
        (dst_ip, rec.dst_port)
    };
    let (kind, trail) = if rec.kind == trail_kind::IPPORT {
        let text = match trail_ip {
            IpAddr::V4(a) => format!("{a}:{trail_port}"),
            IpAddr::V6(a) => format!("[{a}]:{trail_port}"),
        };
        (EventType::IpPort, text)
    } else {
        (EventType::Ip, trail_ip.to_string())
    };
    let (info, reference) = trails
        .labels
        .get(rec.trail_id as usize)
        .map(|l| (l.info.clone(), l.reference.clone()))
        .unwrap_or_else(|| (format!("unknown trail {}", rec.trail_id), String::new()));
    Event {
        ts_us: clock.to_unix_us(rec.ts_ns),
        sensor: sensor.to_string(),
        src_ip,
        src_port: rec.src_port,
        dst_ip,
        dst_port: rec.dst_port,
        proto: proto_name(rec.proto),
        kind,
        trail,
        severity: Severity::from_info(&info),
        info,
        reference,
        action: if rec.action == action::DROP {
            Action::Drop
        } else {
            Action::Pass
        },
        iface,
        trail_set_version: String::new(),
        details: Details::default(),
    }
}

/// Parses a raw flow-start ring-buffer item.
pub fn parse_flow(bytes: &[u8]) -> Option<FlowRecord> {
    if bytes.len() < std::mem::size_of::<FlowRecord>() {
        return None;
    }
    // SAFETY: FlowRecord is plain old data and `bytes` holds at least one.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<FlowRecord>()) })
}
