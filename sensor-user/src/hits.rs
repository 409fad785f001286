//! Turning the XDP program's [`HitRecord`]s into [`Event`]s.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use xtrail_common::{
    action, addr_check, side, trail_kind, FlowRecord, HitRecord, PayloadHeader, PAYLOAD_CAP,
    PAYLOAD_HEADER_LEN,
};
use xtrail_detect::event::{
    clear_for_reuse, decimal, set_str, Action, Details, Event, EventType, IpText, Severity,
};
use xtrail_detect::process::PacketContext;
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

    /// Wall-clock microseconds of a `bpf_ktime_get_ns()` value (per record: in 64 bits while
    /// the sum fits, until 2262; a 128-bit division is a library call, ~2% of a DNS
    /// hand-off's live samples).
    pub fn to_unix_us(&self, ktime_ns: u64) -> i64 {
        let sum = i64::try_from(ktime_ns)
            .ok()
            .zip(i64::try_from(self.offset_ns).ok())
            .and_then(|(k, o)| k.checked_add(o));
        match sum {
            Some(ns) => ns / 1000,
            None => i64::try_from((i128::from(ktime_ns) + self.offset_ns) / 1000).unwrap_or(0),
        }
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

/// The event for a hit, written over `event` (every field; its `trail_set_version` emptied):
/// the strings of an event already written are reused ([`set_str`]), so a warm sensor
/// allocates nothing per hit. The trail printed is the matching address (`ip`, or `ip:port`
/// / `[ip6]:port` for IP:port trails), as Maltrail prints it.
pub fn fill_event(
    event: &mut Event,
    rec: &HitRecord,
    trails: &TrailSet,
    sensor: &str,
    iface: Option<&str>,
    clock: &Clock,
) {
    use std::fmt::Write as _;

    let src_ip = addr(rec.family, rec.src);
    let dst_ip = addr(rec.family, rec.dst);
    let (trail_ip, trail_port) = if rec.side == side::SRC {
        (src_ip, rec.src_port)
    } else {
        (dst_ip, rec.dst_port)
    };
    let trail = clear_for_reuse(&mut event.trail);
    // Writing into a String cannot fail.
    event.kind = if rec.kind == trail_kind::IPPORT {
        let _ = match trail_ip {
            IpAddr::V4(_) => {
                trail.push_str(IpText::new(trail_ip).as_str());
                trail.push(':');
                trail.push_str(decimal(u64::from(trail_port), &mut [0; 20]));
                Ok(())
            }
            IpAddr::V6(a) => write!(trail, "[{a}]:{trail_port}"),
        };
        EventType::IpPort
    } else {
        trail.push_str(IpText::new(trail_ip).as_str());
        EventType::Ip
    };
    match trails.labels.get(rec.trail_id as usize) {
        Some(l) => {
            set_str(&mut event.info, &l.info);
            set_str(&mut event.reference, &l.reference);
        }
        None => {
            let _ = write!(
                clear_for_reuse(&mut event.info),
                "unknown trail {}",
                rec.trail_id
            );
            event.reference.clear();
        }
    }
    PacketContext {
        ts_us: clock.to_unix_us(rec.ts_ns),
        sensor,
        iface,
        src: src_ip,
        src_port: rec.src_port,
        dst: dst_ip,
        dst_port: rec.dst_port,
        proto: rec.proto,
    }
    .write_packet(event);
    event.severity = Severity::from_info(&event.info);
    event.action = if rec.action == action::DROP {
        Action::Drop
    } else {
        Action::Pass
    };
    if event.details != Details::default() {
        event.details = Details::default();
    }
}

/// Parses a raw flow-start ring-buffer item's first record.
pub fn parse_flow(bytes: &[u8]) -> Option<FlowRecord> {
    if bytes.len() < std::mem::size_of::<FlowRecord>() {
        return None;
    }
    // SAFETY: FlowRecord is plain old data and `bytes` holds at least one.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<FlowRecord>()) })
}

/// The flow starts of a raw flow-start ring-buffer item: a batch of 1 to
/// `xtrail_common::FLOW_BATCH` records back to back (`None` for an item that is not a
/// whole number of them, or holds more than a batch).
pub fn parse_flows(bytes: &[u8]) -> Option<impl Iterator<Item = FlowRecord> + '_> {
    let size = std::mem::size_of::<FlowRecord>();
    if bytes.is_empty()
        || !bytes.len().is_multiple_of(size)
        || bytes.len() > size * xtrail_common::FLOW_BATCH
    {
        return None;
    }
    Some(bytes.chunks_exact(size).filter_map(parse_flow))
}

/// A frame handed over through the `PAYLOADS` ring, borrowed from the ring record: the
/// frame is parsed in place, never copied.
#[derive(Clone, Copy, Debug)]
pub struct Handoff<'a> {
    /// `bpf_ktime_get_ns()` at the hand-off.
    pub ts_ns: u64,
    pub ifindex: u32,
    /// Frame length on the wire (`frame` may be cut shorter).
    pub pkt_len: u32,
    /// One of `xtrail_common::handoff`.
    pub kind: u8,
    /// The trail set in whose maps the XDP program found neither address
    /// (`xtrail_common::addr_check`), if it says so.
    pub clean_in: Option<u8>,
    /// The frame's first bytes, Ethernet header first.
    pub frame: &'a [u8],
}

/// Splits a `PAYLOADS` record (a [`PayloadHeader`] and the frame's first `cap_len` bytes)
/// into header fields and frame; `None` for a record shorter than it says. Allocates nothing.
pub fn parse_payload(item: &[u8]) -> Option<Handoff<'_>> {
    let head = item.get(..PAYLOAD_HEADER_LEN)?;
    // SAFETY: PayloadHeader is plain old data and `head` holds exactly one.
    let h = unsafe { std::ptr::read_unaligned(head.as_ptr().cast::<PayloadHeader>()) };
    let cap = (h.cap_len as usize).min(PAYLOAD_CAP);
    let frame = item.get(PAYLOAD_HEADER_LEN..PAYLOAD_HEADER_LEN + cap)?;
    Some(Handoff {
        ts_ns: h.ts_ns,
        ifindex: h.ifindex,
        pkt_len: h.pkt_len,
        kind: h.kind,
        clean_in: (h.addrs & addr_check::CLEAN != 0).then_some(h.addrs & addr_check::SET),
        frame,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(cap_len: u32, frame: &[u8], extra: usize) -> Vec<u8> {
        let h = PayloadHeader {
            ts_ns: 42,
            ifindex: 7,
            rx_queue: 0,
            pkt_len: 1500,
            cap_len,
            kind: xtrail_common::handoff::DNS,
            addrs: addr_check::CLEAN | 1,
            _pad: [0; 6],
        };
        // SAFETY: PayloadHeader is plain old data.
        let bytes: [u8; PAYLOAD_HEADER_LEN] = unsafe { std::mem::transmute(h) };
        let mut v = bytes.to_vec();
        v.extend_from_slice(frame);
        v.resize(v.len() + extra, 0xee);
        v
    }

    #[test]
    fn an_event_filled_over_another_is_the_event_filled_over_a_blank_one() {
        let dir = std::env::temp_dir().join(format!("xtrail-fill-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let csv = dir.join("trails.csv");
        std::fs::write(&csv, "66.66.66.66,mass scanner,(test)\n").unwrap();
        let trails =
            TrailSet::load(std::slice::from_ref(&csv), &Default::default()).expect("trails");
        let _ = std::fs::remove_dir_all(&dir);
        let v6 = |last: u8| {
            let mut a = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            a[15] = last;
            a
        };
        let mapped = |a: [u8; 4]| {
            let mut b = [0u8; 16];
            b[10] = 0xff;
            b[11] = 0xff;
            b[12..].copy_from_slice(&a);
            b
        };
        let ipv4_hit = HitRecord {
            ts_ns: 5_000_000_000,
            trail_id: 0,
            src: mapped([198, 18, 0, 1]),
            dst: mapped([66, 66, 66, 66]),
            src_port: 40_000,
            dst_port: 443,
            family: 4,
            proto: 6,
            kind: trail_kind::IP,
            side: side::DST,
            action: action::PASS,
            ..HitRecord::default()
        };
        // An IP:port hit on the source, dropped, of an unknown trail, over IPv6 and UDP.
        let other = HitRecord {
            ts_ns: 7_000_000_000,
            trail_id: 99,
            src: v6(1),
            dst: v6(2),
            src_port: 53,
            dst_port: 1234,
            family: 6,
            proto: 17,
            kind: trail_kind::IPPORT,
            side: side::SRC,
            action: action::DROP,
            ..HitRecord::default()
        };
        let clock = Clock::now();
        let fresh = |rec: &HitRecord, iface: Option<&str>| {
            let mut e = xtrail_detect::event::blank();
            fill_event(&mut e, rec, &trails, "s", iface, &clock);
            e
        };
        let a = fresh(&ipv4_hit, Some("eth0"));
        assert_eq!(
            (a.kind, a.trail.as_str(), a.info.as_str(), a.severity),
            (EventType::Ip, "66.66.66.66", "mass scanner", Severity::Low)
        );
        let b = fresh(&other, None);
        assert_eq!(
            (b.kind, b.trail.as_str(), b.reference.as_str(), b.action),
            (EventType::IpPort, "[2001:db8::1]:53", "", Action::Drop)
        );
        assert_eq!(b.info, "unknown trail 99");
        // Each filled over the other, and over an event with every optional field set.
        let mut dirty = b.clone();
        dirty.trail_set_version = "files-1".into();
        dirty.details.http_path = Some("/x".into());
        for (over, rec, iface, want) in [
            (b.clone(), &ipv4_hit, Some("eth0"), &a),
            (dirty.clone(), &ipv4_hit, Some("eth0"), &a),
            (a.clone(), &other, None, &b),
            (dirty, &other, None, &b),
        ] {
            let mut e = over;
            fill_event(&mut e, rec, &trails, "s", iface, &clock);
            assert_eq!(&e, want);
        }
    }

    #[test]
    fn unix_time_in_64_bits_is_the_128_bit_quotient() {
        let big = i128::from(i64::MAX);
        for offset_ns in [
            0,
            1_764_800_000_123_456_789,
            -999,
            -1_001,
            big,
            big + 5,
            -big - 9,
        ] {
            let clock = Clock { offset_ns };
            for k in [0, 1, 999, 1_000, 123_456_789_012, i64::MAX as u64, u64::MAX] {
                let want = i64::try_from((i128::from(k) + offset_ns) / 1000).unwrap_or(0);
                assert_eq!(clock.to_unix_us(k), want, "{offset_ns} {k}");
            }
        }
    }

    #[test]
    fn the_frame_is_the_cap_len_bytes_after_the_header() {
        assert_eq!(PAYLOAD_HEADER_LEN, 32);
        let frame: Vec<u8> = (0..90u8).collect();
        // A record of a size class (128 here) is longer than its frame: the rest is not frame.
        let rec = record(90, &frame, 38);
        let h = parse_payload(&rec).unwrap();
        assert_eq!((h.ts_ns, h.ifindex, h.pkt_len), (42, 7, 1500));
        assert_eq!(h.kind, xtrail_common::handoff::DNS);
        assert_eq!(h.clean_in, Some(1));
        assert_eq!(h.frame, &frame[..]);
        // The address verdict's byte: unknown, or clean in set 0.
        let mut rec = rec;
        rec[25] = addr_check::UNKNOWN;
        assert_eq!(parse_payload(&rec).unwrap().clean_in, None);
        rec[25] = addr_check::CLEAN;
        assert_eq!(parse_payload(&rec).unwrap().clean_in, Some(0));
    }

    #[test]
    fn record_sizes_match_the_ring_sizing_docs() {
        // `xtrail_common::ring` and `run --help` size the rings by these.
        assert_eq!(std::mem::size_of::<HitRecord>(), 72);
        assert_eq!(std::mem::size_of::<FlowRecord>(), 48);
        assert_eq!(
            std::mem::size_of::<xtrail_common::PayloadRecord<128>>(),
            PAYLOAD_HEADER_LEN + 128
        );
    }

    #[test]
    fn a_flow_record_is_a_batch_of_whole_flow_starts() {
        let one = FlowRecord {
            dst_port: 22,
            ..FlowRecord::default()
        };
        let two = FlowRecord {
            dst_port: 23,
            ..FlowRecord::default()
        };
        let mut item = Vec::new();
        for r in [one, two] {
            // SAFETY: FlowRecord is plain old data.
            item.extend_from_slice(unsafe {
                std::slice::from_raw_parts((&r as *const FlowRecord).cast::<u8>(), 48)
            });
        }
        let ports: Vec<u16> = parse_flows(&item)
            .expect("batch")
            .map(|r| r.dst_port)
            .collect();
        assert_eq!(ports, [22, 23]);
        assert!(parse_flows(&item[..47]).is_none());
        assert!(parse_flows(&item[..50]).is_none());
        assert!(parse_flows(&[]).is_none());
        let full: Vec<u8> = item[..48].repeat(xtrail_common::FLOW_BATCH);
        assert_eq!(
            parse_flows(&full).expect("a full batch").count(),
            xtrail_common::FLOW_BATCH
        );
        let over: Vec<u8> = item[..48].repeat(xtrail_common::FLOW_BATCH + 1);
        assert!(parse_flows(&over).is_none());
    }

    #[test]
    fn a_record_shorter_than_it_says_is_refused() {
        assert!(parse_payload(&record(91, &[0; 90], 0)).is_none());
        assert!(parse_payload(&[0; 31]).is_none());
        assert!(parse_payload(&record(0, &[], 0)).is_some_and(|h| h.frame.is_empty()));
    }
}
