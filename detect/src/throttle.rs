//! Event throttling, a separate stage after [`crate::process::Processor`] so live capture and
//! replay share it. Two steps, both configurable ([`ThrottleConfig`]):
//!
//! 1. **Collapse**: the same (source, destination, destination port, protocol, type, trail)
//!    within one window (default: the same second, as Maltrail's log throttling) passes once.
//! 2. **Summarize** (like Maltrail's `summarize` mode): at most
//!    [`SummarizeConfig::max_events`] (3) events per (source, trail) per
//!    [`SummarizeConfig::window_us`] (60 s) pass; later ones in the window are held back and
//!    counted. When the window ends, one **summary event** reports them: a copy of the last
//!    held-back event (its time, addresses, ports, type, trail and reference) whose info is the
//!    original info followed by ` (summary: N more in 60s)`, e.g.
//!    `"malware (test) (summary: 27 more in 60s)"`. A summary is written when the next event
//!    of that key arrives after its window, when time (taken from events, or given to
//!    [`Throttle::flush`]) passes the window's end, or at [`Throttle::finish`].
//!
//! Memory is bounded: at most [`ThrottleConfig::capacity`] collapse keys (when full the oldest
//! is forgotten and counted; their text sits in one buffer per window, and once it holds 16
//! MiB the window's keys so far are forgotten and counted) and [`SummarizeConfig::capacity`]
//! summarize keys (when full, finished windows are summarized and dropped; if none is
//! finished, the event passes unsummarized and is counted as an overflow: nothing is lost).
//! A summarize key holds no text: its trail is told by a 64-bit hash (see `Summary`).
//! Time comes from the events, so replayed pcaps are throttled by their own clock.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::net::IpAddr;

use hashbrown::{DefaultHashBuilder, HashTable};

use crate::event::{recycle, Event, EventType, Severity};

/// Settings of the summarize step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SummarizeConfig {
    /// Events of one (source, trail) passed per window (3).
    pub max_events: u32,
    /// Window length in microseconds (60 s), starting at the key's first event.
    pub window_us: i64,
    /// (source, trail) keys remembered at most.
    pub capacity: usize,
}

impl Default for SummarizeConfig {
    fn default() -> Self {
        SummarizeConfig {
            max_events: 3,
            window_us: 60_000_000,
            capacity: 65_536,
        }
    }
}

/// Settings of a [`Throttle`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ThrottleConfig {
    /// Collapse window length in microseconds; windows are aligned to multiples of it.
    pub window_us: i64,
    /// Collapse keys remembered at most.
    pub capacity: usize,
    /// The summarize step; `None` turns it off.
    pub summarize: Option<SummarizeConfig>,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            window_us: 1_000_000,
            capacity: 65_536,
            summarize: Some(SummarizeConfig::default()),
        }
    }
}

/// Counters of a [`Throttle`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThrottleStats {
    /// Events passed on (summaries not included).
    pub passed: u64,
    /// Events collapsed into an identical one of the same window.
    pub suppressed: u64,
    /// Collapse keys forgotten early: the table was full, or the window's key text at its
    /// bound.
    pub evicted: u64,
    /// Events held back by the summarize step (reported in summaries).
    pub summarized: u64,
    /// Summary events written.
    pub summaries: u64,
    /// Events passed unsummarized because the summarize table was full.
    pub overflow: u64,
}

/// A collapse key: (source, destination, destination port, protocol, type, trail), and the
/// number it was remembered under (to find it again when it is the oldest). Its protocol
/// and trail text sit in the window's [`SeenText`] (every key of a window goes at once).
#[derive(Debug)]
struct Seen {
    src: IpAddr,
    dst: IpAddr,
    dst_port: u16,
    kind: EventType,
    /// `proto` then `trail`, at `text` in the window's [`SeenText`].
    text: u32,
    proto_len: u16,
    trail_len: u32,
    seq: u64,
}

impl Seen {
    fn is_of(&self, e: &Event, text: &SeenText) -> bool {
        self.src == e.src_ip
            && self.dst == e.dst_ip
            && self.dst_port == e.dst_port
            && self.kind == e.kind
            && self.text(text) == (e.proto.as_bytes(), e.trail.as_bytes())
    }

    /// Its protocol and trail.
    fn text<'t>(&self, text: &'t SeenText) -> (&'t [u8], &'t [u8]) {
        let proto = text.get(self.text, usize::from(self.proto_len));
        let trail = text.get(
            self.text + u32::from(self.proto_len),
            self.trail_len as usize,
        );
        (proto.unwrap_or_default(), trail.unwrap_or_default())
    }
}

/// The text of a collapse window's keys, one after another: emptied (its buffer kept) when
/// the window ends, so a warm throttle allocates nothing per key.
#[derive(Debug, Default)]
struct SeenText {
    bytes: Vec<u8>,
}

/// Text a window holds before its keys are forgotten early (more keys than that in one
/// window: a flood of distinct events, which then pass uncollapsed).
const SEEN_TEXT_MAX: usize = 16 << 20;

impl SeenText {
    fn get(&self, at: u32, len: usize) -> Option<&[u8]> {
        self.bytes.get(at as usize..at as usize + len)
    }
}

/// One (source, trail) window of the summarize step. Small (its last held event lives in
/// [`HeldEvents`]), with no text of its own: the table holds up to
/// [`SummarizeConfig::capacity`] of them and each new key writes one into memory that is
/// seldom in cache. The trail is told by the 64-bit hash of (source, trail), with the source:
/// two trails of one source share a window only if their hashes collide, about one pair in
/// 2^64 by chance. The hasher (foldhash, seeded per process from address-space
/// randomization) does not resist chosen collisions: a crafted pair would pass 3 events for
/// both trails instead of 3 each, and the window's summary would count both trails' held-back
/// events under the last one's trail (none goes unreported).
#[derive(Debug)]
struct Summary {
    src: IpAddr,
    /// `hash_one((src, trail))`: the table's hash and, with `src`, the key.
    hash: u64,
    start_us: i64,
    passed: u32,
    held: u64,
    /// The last event held back, in [`Throttle::held_events`].
    last: Option<u32>,
    /// Tells this key from others of the same hash in [`Throttle::expiry`].
    id: u64,
}

/// The summarize windows' last held-back events: slots reused once their summary is written,
/// so a warm throttle moves events in and out without allocating.
#[derive(Debug, Default)]
struct HeldEvents {
    slots: Vec<Option<Event>>,
    free: Vec<u32>,
}

impl HeldEvents {
    /// Keeps `event` as the last of the window whose slot is `last` (a new slot if none).
    fn keep(&mut self, last: &mut Option<u32>, event: Event) {
        if let Some(slot) = last.and_then(|i| self.slots.get_mut(i as usize)) {
            // The window's earlier last: its strings for the next event's.
            if let Some(old) = slot.replace(event) {
                recycle(old);
            }
            return;
        }
        let i = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        if let Some(slot) = self.slots.get_mut(i as usize) {
            *slot = Some(event);
            *last = Some(i);
        }
    }

    /// Takes the event of slot `last` (now free) out.
    fn take(&mut self, last: &mut Option<u32>) -> Option<Event> {
        let i = last.take()?;
        let event = self.slots.get_mut(i as usize)?.take();
        self.free.push(i);
        event
    }
}

/// The throttle stage.
#[derive(Debug)]
pub struct Throttle {
    config: ThrottleConfig,
    window: Option<i64>,
    /// The collapse keys of this window, looked up from an event's fields (no key is built
    /// for a repeat), and (hash, number) of each, oldest first.
    seen: HashTable<Seen>,
    seen_text: SeenText,
    order: VecDeque<(u64, u64)>,
    next_seq: u64,
    summaries: HashTable<Summary>,
    /// (start, id, hash) of each summarize key's window in the order they started (their
    /// common length makes it the order they end): a sweep looks at those that ended, not
    /// at the whole table. A start earlier than the last one queued (events out of time
    /// order) is queued as that one, so its summary may come a little late, but never
    /// early. One entry per key: a key whose window started again is queued again when its
    /// entry comes up.
    expiry: VecDeque<(i64, u64, u64)>,
    next_id: u64,
    held_events: HeldEvents,
    hasher: DefaultHashBuilder,
    /// Last second at which finished summarize windows were swept.
    swept_sec: Option<i64>,
    stats: ThrottleStats,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new(ThrottleConfig::default())
    }
}

impl Throttle {
    /// A throttle with the given settings (zero windows, capacities or limits are raised to 1).
    pub fn new(config: ThrottleConfig) -> Self {
        Throttle {
            config: ThrottleConfig {
                window_us: config.window_us.max(1),
                capacity: config.capacity.max(1),
                summarize: config.summarize.map(|s| SummarizeConfig {
                    max_events: s.max_events.max(1),
                    window_us: s.window_us.max(1),
                    capacity: s.capacity.max(1),
                }),
            },
            window: None,
            seen: HashTable::new(),
            seen_text: SeenText::default(),
            order: VecDeque::new(),
            next_seq: 0,
            summaries: HashTable::new(),
            expiry: VecDeque::new(),
            next_id: 0,
            held_events: HeldEvents::default(),
            hasher: DefaultHashBuilder::default(),
            swept_sec: None,
            stats: ThrottleStats::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &ThrottleConfig {
        &self.config
    }

    /// The collapse step alone: whether `event` is not an identical repeat within the window
    /// (and remembers it if so).
    fn collapse(&mut self, event: &Event) -> bool {
        let window = event.ts_us.div_euclid(self.config.window_us);
        if self.window != Some(window) {
            self.window = Some(window);
            self.forget_window();
        }
        let (proto, trail) = (event.proto.as_bytes(), event.trail.as_bytes());
        let hash = collapse_hash(
            &self.hasher,
            (event.src_ip, event.dst_ip, event.dst_port),
            proto,
            event.kind,
            trail,
        );
        let text = &self.seen_text;
        if self.seen.find(hash, |k| k.is_of(event, text)).is_some() {
            self.stats.suppressed += 1;
            return false;
        }
        let (Ok(proto_len), Ok(trail_len)) =
            (u16::try_from(proto.len()), u32::try_from(trail.len()))
        else {
            // Not remembered (no event has such text): passes.
            return true;
        };
        if self.seen_text.bytes.len() + proto.len() + trail.len() > SEEN_TEXT_MAX {
            // A flood of distinct keys in one window: forget them early rather than grow.
            self.stats.evicted += self.seen.len() as u64;
            self.forget_window();
        }
        if self.seen.len() >= self.config.capacity {
            if let Some((old_hash, old_seq)) = self.order.pop_front() {
                if let Ok(old) = self.seen.find_entry(old_hash, |k| k.seq == old_seq) {
                    // Its text stays until the window ends.
                    old.remove();
                }
                self.stats.evicted += 1;
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.push_back((hash, seq));
        let at = self.seen_text.bytes.len() as u32;
        self.seen_text.bytes.extend_from_slice(proto);
        self.seen_text.bytes.extend_from_slice(trail);
        let key = Seen {
            src: event.src_ip,
            dst: event.dst_ip,
            dst_port: event.dst_port,
            kind: event.kind,
            text: at,
            proto_len,
            trail_len,
            seq,
        };
        let (hasher, text) = (&self.hasher, &self.seen_text);
        self.seen.insert_unique(hash, key, |k| {
            let (proto, trail) = k.text(text);
            collapse_hash(hasher, (k.src, k.dst, k.dst_port), proto, k.kind, trail)
        });
        true
    }

    /// Forgets every collapse key (its buffers kept).
    fn forget_window(&mut self) {
        self.seen.clear();
        self.seen_text.bytes.clear();
        self.order.clear();
    }

    /// Whether `event` should be passed on now. Events held back by the summarize step return
    /// `false` and are reported later by a summary, which only [`Throttle::filter`],
    /// [`Throttle::flush`] and [`Throttle::finish`] write: prefer those.
    pub fn admit(&mut self, event: &Event) -> bool {
        if !self.collapse(event) {
            return false;
        }
        let pass = self.summarize(event.clone(), &mut |_| {}).is_some();
        if pass {
            self.stats.passed += 1;
        }
        pass
    }

    /// Passes `event` to `out` unless it repeats one of this second or its (source, trail)
    /// already passed its share of the summarize window; writes due summaries first. A
    /// repeat comes back (its strings can be reused).
    pub fn filter(&mut self, event: Event, out: &mut impl FnMut(Event)) -> Option<Event> {
        self.flush(event.ts_us, out);
        if !self.collapse(&event) {
            return Some(event);
        }
        if let Some(event) = self.summarize(event, &mut *out) {
            self.stats.passed += 1;
            out(event);
        }
        None
    }

    /// The summarize step for an event that survived the collapse: the event back to pass
    /// it, or `None` when it is held back (kept as its key's last). A finished window of the
    /// same key is summarized to `out` first.
    fn summarize(&mut self, event: Event, mut out: &mut dyn FnMut(Event)) -> Option<Event> {
        let Some(cfg) = self.config.summarize else {
            return Some(event);
        };
        let hash = self.hasher.hash_one((event.src_ip, event.trail.as_str()));
        let is_key = |s: &Summary| s.hash == hash && s.src == event.src_ip;
        if self.summaries.find(hash, is_key).is_none() && self.summaries.len() >= cfg.capacity {
            // Finished windows are swept at most once per second of event time (the sweep
            // reads the expiry queue's ended entries, none when all windows run).
            self.flush(event.ts_us, &mut out);
            if self.summaries.len() >= cfg.capacity {
                self.stats.overflow += 1;
                return Some(event);
            }
        }
        let held = &mut self.held_events;
        let s = match self.summaries.entry(hash, is_key, |s| s.hash) {
            hashbrown::hash_table::Entry::Occupied(o) => o.into_mut(),
            hashbrown::hash_table::Entry::Vacant(v) => {
                let id = self.next_id;
                self.next_id += 1;
                queue_expiry(&mut self.expiry, event.ts_us, id, hash);
                v.insert(Summary {
                    src: event.src_ip,
                    hash,
                    start_us: event.ts_us,
                    passed: 0,
                    held: 0,
                    last: None,
                    id,
                })
                .into_mut()
            }
        };
        if event.ts_us.saturating_sub(s.start_us) >= cfg.window_us {
            if let Some(summary) = summary_event(s, held, cfg.window_us) {
                self.stats.summaries += 1;
                out(summary);
            }
            // Its entry in the expiry queue finds it running and queues it again.
            s.start_us = event.ts_us;
            s.passed = 0;
            s.held = 0;
        }
        if s.passed < cfg.max_events {
            s.passed += 1;
            Some(event)
        } else {
            s.held += 1;
            held.keep(&mut s.last, event);
            self.stats.summarized += 1;
            None
        }
    }

    /// Writes the summaries of windows that ended by `now_us` and forgets those keys. Cheap
    /// to call often: it looks at most once per second of `now_us`, and then only at the
    /// windows that ended (in the order they started). The live
    /// sensor calls it periodically with the wall clock so summaries are not delayed until
    /// the next event.
    pub fn flush(&mut self, now_us: i64, out: &mut impl FnMut(Event)) {
        let sec = now_us.div_euclid(1_000_000);
        if self.swept_sec.is_some_and(|s| s >= sec) {
            return;
        }
        self.swept_sec = Some(sec);
        self.sweep(Some(now_us), out);
    }

    /// Summarizes and forgets the windows that ended by `now_us` (every window with `None`).
    fn sweep(&mut self, now_us: Option<i64>, out: &mut dyn FnMut(Event)) {
        let Some(cfg) = self.config.summarize else {
            return;
        };
        let mut due = Vec::new();
        let ended =
            |start_us: i64| now_us.is_none_or(|now| now.saturating_sub(start_us) >= cfg.window_us);
        let mut summarize = |mut s: Summary, held: &mut HeldEvents| {
            if let Some(summary) = summary_event(&mut s, held, cfg.window_us) {
                due.push(summary);
            }
        };
        while let Some(&(queued_us, id, hash)) = self.expiry.front() {
            if !ended(queued_us) {
                break;
            }
            self.expiry.pop_front();
            let Ok(entry) = self.summaries.find_entry(hash, |s| s.id == id) else {
                continue;
            };
            let start_us = entry.get().start_us;
            if !ended(start_us) {
                // Started again since: queued again, for its new end.
                queue_expiry(&mut self.expiry, start_us, id, hash);
                continue;
            }
            let (s, _) = entry.remove();
            summarize(s, &mut self.held_events);
        }
        if now_us.is_none() {
            // Every key had its entry; should one not, it is summarized all the same.
            for s in self.summaries.drain() {
                summarize(s, &mut self.held_events);
            }
        }
        self.stats.summaries += due.len() as u64;
        // In time order (the table's order differs from run to run): a replay writes the
        // same lines every time.
        due.sort_by(|a, b| {
            (a.ts_us, a.src_ip, &a.trail, a.src_port)
                .cmp(&(b.ts_us, b.src_ip, &b.trail, b.src_port))
        });
        for summary in due {
            out(summary);
        }
    }

    /// Writes every pending summary (end of a replay, shutdown) and forgets all keys.
    pub fn finish(&mut self, out: &mut impl FnMut(Event)) {
        self.sweep(None, out);
    }

    /// Collapse keys currently remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no collapse key is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Summarize keys currently remembered.
    pub fn summarize_len(&self) -> usize {
        self.summaries.len()
    }

    /// The counters so far.
    pub fn stats(&self) -> ThrottleStats {
        self.stats
    }
}

/// The collapse table's hash of (source, destination, destination port), protocol, type and
/// trail.
fn collapse_hash(
    hasher: &DefaultHashBuilder,
    addrs: (IpAddr, IpAddr, u16),
    proto: &[u8],
    kind: EventType,
    trail: &[u8],
) -> u64 {
    hasher.hash_one((addrs, proto, kind, trail))
}

/// Queues a summarize window that started at `start_us` (at the last queued start when
/// earlier: the queue stays in order).
fn queue_expiry(expiry: &mut VecDeque<(i64, u64, u64)>, start_us: i64, id: u64, hash: u64) {
    let at = expiry
        .back()
        .map_or(start_us, |&(last, _, _)| start_us.max(last));
    expiry.push_back((at, id, hash));
}

/// The summary of a window with held-back events.
fn summary_event(s: &mut Summary, held: &mut HeldEvents, window_us: i64) -> Option<Event> {
    let mut e = held.take(&mut s.last)?;
    let secs = window_us / 1_000_000;
    e.info = format!("{} (summary: {} more in {secs}s)", e.info, s.held);
    e.severity = Severity::from_info(&e.info);
    s.held = 0;
    Some(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Action, Details, Severity};

    fn ev(ts_us: i64, src_port: u16, trail: &str) -> Event {
        Event {
            ts_us,
            sensor: "t".into(),
            src_ip: "10.0.0.1".parse().unwrap(),
            src_port,
            dst_ip: "8.8.8.8".parse().unwrap(),
            dst_port: 53,
            proto: "UDP".into(),
            kind: EventType::Dns,
            trail: trail.into(),
            info: "malware".into(),
            reference: "(static)".into(),
            severity: Severity::High,
            action: Action::Pass,
            iface: None,
            trail_set_version: String::new(),
            details: Details::default(),
        }
    }

    #[test]
    fn repeats_in_one_second_collapse_across_source_ports() {
        let mut t = Throttle::default();
        assert!(t.admit(&ev(5_000_000, 1, "a.example")));
        assert!(!t.admit(&ev(5_100_000, 2, "a.example")));
        assert!(t.admit(&ev(5_200_000, 2, "b.example")));
        assert!(t.admit(&ev(6_000_000, 3, "a.example")));
        assert_eq!(
            t.stats(),
            ThrottleStats {
                passed: 3,
                suppressed: 1,
                ..ThrottleStats::default()
            }
        );
    }

    #[test]
    fn flooding_stays_bounded() {
        let mut t = Throttle::new(ThrottleConfig {
            window_us: 1_000_000,
            capacity: 100,
            summarize: None,
        });
        for i in 0..10_000 {
            assert!(t.admit(&ev(1_000_000, 1, &format!("d{i}.example"))));
            assert!(t.len() <= 100);
        }
        assert_eq!(t.stats().evicted, 9_900);
        // The newest keys are still remembered, the oldest are not.
        assert!(!t.admit(&ev(1_000_000, 1, "d9999.example")));
        assert!(t.admit(&ev(1_000_000, 1, "d0.example")));
    }

    fn collect(t: &mut Throttle, events: impl IntoIterator<Item = Event>) -> Vec<Event> {
        let mut out = Vec::new();
        for e in events {
            t.filter(e, &mut |e| out.push(e));
        }
        out
    }

    #[test]
    fn three_per_minute_then_one_summary() {
        let mut t = Throttle::default();
        let s = 1_000_000;
        // 30 events of one (source, trail), one a second.
        let mut out = collect(&mut t, (0..30).map(|i| ev(i * s, 1, "a.example")));
        assert_eq!(out.len(), 3);
        // The next event after the window writes the summary, then passes.
        out.extend(collect(&mut t, [ev(61 * s, 1, "a.example")]));
        assert_eq!(out.len(), 5, "{out:#?}");
        assert_eq!(out[3].info, "malware (summary: 27 more in 60s)");
        assert_eq!(out[3].ts_us, 29 * s);
        assert_eq!(out[4].info, "malware");
        let st = t.stats();
        assert_eq!((st.passed, st.summarized, st.summaries), (4, 27, 1));
    }

    #[test]
    fn held_back_events_replaced_by_later_ones_go_back() {
        use crate::event::{spare_events, SPARE_EVENTS};
        spare_events(true);
        let mut t = Throttle::default();
        let mut out = Vec::new();
        // One a second (no collapse), one (source, trail): 3 pass, the 4th is held back,
        // each later one replaces it and the replaced one goes back.
        for i in 0..50 {
            let back = t.filter(ev(i * 1_000_000, 1, "a.example"), &mut |e| out.push(e));
            assert!(back.is_none());
        }
        assert_eq!(out.len(), 3);
        assert_eq!(spare_events(false), 46.min(SPARE_EVENTS));
    }

    #[test]
    fn at_and_around_the_limit() {
        let s = 1_000_000;
        for (n, want) in [(2, 2), (3, 3), (4, 4)] {
            let mut t = Throttle::default();
            let mut out = collect(&mut t, (0..n).map(|i| ev(i * s, 1, "b.example")));
            t.finish(&mut |e| out.push(e));
            // Up to 3 pass; a 4th is reported by a summary.
            assert_eq!(out.len(), want, "{n}");
            assert_eq!(
                out.iter().filter(|e| e.info.contains("summary")).count(),
                usize::from(n > 3)
            );
        }
    }

    #[test]
    fn summaries_are_flushed_by_time_and_keyed_by_source_and_trail() {
        let s = 1_000_000;
        let mut t = Throttle::default();
        let mut out = collect(&mut t, (0..5).map(|i| ev(i * s, 1, "c.example")));
        // Another source with the same trail has its own budget.
        let mut other = ev(5 * s, 1, "c.example");
        other.src_ip = "10.0.0.2".parse().unwrap();
        out.extend(collect(&mut t, [other]));
        assert_eq!(out.len(), 4);
        t.flush(59 * s, &mut |e| out.push(e));
        assert_eq!(out.len(), 4);
        t.flush(61 * s, &mut |e| out.push(e));
        assert_eq!(out.len(), 5);
        assert!(out[4].info.ends_with("(summary: 2 more in 60s)"));
        assert_eq!(t.summarize_len(), 1);
    }

    #[test]
    fn each_trail_of_a_source_has_its_own_budget() {
        let s = 1_000_000;
        let mut t = Throttle::default();
        // One source, two trails, interleaved: 3 of each pass, 2 of each are summarized.
        let events = (0..10).map(|i| {
            let trail = if i % 2 == 0 { "a.example" } else { "b.example" };
            ev(i * s, 1, trail)
        });
        let mut out = collect(&mut t, events);
        assert_eq!(out.len(), 6);
        t.finish(&mut |e| out.push(e));
        let mut summaries: Vec<_> = (out.iter().skip(6))
            .map(|e| (e.trail.as_str(), e.info.as_str()))
            .collect();
        summaries.sort();
        assert_eq!(
            summaries,
            [
                ("a.example", "malware (summary: 2 more in 60s)"),
                ("b.example", "malware (summary: 2 more in 60s)"),
            ]
        );
        // Many trails of one source in one table: keys whose hashes share a probe group and
        // a tag are still told apart (a key by the source alone would merge them).
        let mut t = Throttle::default();
        let trails: Vec<String> = (0..2_000).map(|i| format!("t{i}.example")).collect();
        let rounds = (0..4).flat_map(|r| trails.iter().map(move |tr| ev(r * s, 1, tr)));
        assert_eq!(collect(&mut t, rounds).len(), 3 * 2_000);
        assert_eq!(t.stats().summarized, 2_000);
    }

    #[test]
    fn keys_are_found_again_after_the_table_grows() {
        let s = 1_000_000;
        let mut t = Throttle::default();
        // 10,000 keys (the table grows several times), the first one's budget used first.
        let first = (0..3).map(|i| ev(i * s, 1, "d0.example"));
        let others = (1..10_000).map(|i| ev(3 * s, 1, &format!("d{i}.example")));
        assert_eq!(collect(&mut t, first.chain(others)).len(), 10_002);
        assert_eq!(t.summarize_len(), 10_000);
        // Its 4th event in the window is held back: the key was found after the growth.
        assert!(collect(&mut t, [ev(4 * s, 1, "d0.example")]).is_empty());
        assert_eq!(t.stats().summarized, 1);
    }

    /// The default throttle with room for `n` summarize keys.
    fn with_summarize_capacity(n: usize) -> Throttle {
        Throttle::new(ThrottleConfig {
            summarize: Some(SummarizeConfig {
                capacity: n,
                ..SummarizeConfig::default()
            }),
            ..ThrottleConfig::default()
        })
    }

    #[test]
    fn summarize_table_is_bounded() {
        let mut t = with_summarize_capacity(100);
        let mut passed = 0;
        for i in 0..10_000 {
            t.filter(ev(1_000_000 + i, 1, &format!("d{i}.example")), &mut |_| {
                passed += 1
            });
            assert!(t.summarize_len() <= 100);
        }
        // Nothing is lost: overflowing keys pass unsummarized.
        assert_eq!(passed, 10_000);
        assert_eq!(t.stats().overflow, 9_900);
    }

    #[test]
    fn a_full_summarize_table_frees_ended_windows_for_new_keys() {
        let s = 1_000_000;
        let mut t = with_summarize_capacity(2);
        let mut out = Vec::new();
        for e in [ev(0, 1, "a.example"), ev(s / 2, 1, "b.example")] {
            t.filter(e, &mut |e| out.push(e));
        }
        // Full of running windows: a new key passes unsummarized, as often as it comes.
        for i in 0..3 {
            t.filter(ev((2 + i) * s, 1, "c.example"), &mut |e| out.push(e));
        }
        assert_eq!((out.len(), t.stats().overflow), (5, 3));
        // Both windows have ended: the new key takes a slot and is summarized again.
        for i in 0..5 {
            t.filter(ev((61 + i) * s, 1, "d.example"), &mut |e| out.push(e));
        }
        assert_eq!(t.stats().overflow, 3);
        assert_eq!(t.summarize_len(), 1);
        assert_eq!(out.len(), 8, "{out:#?}");
    }

    #[test]
    fn a_full_summarize_table_is_swept_at_most_once_a_second() {
        let s = 1_000_000;
        let mut t = with_summarize_capacity(2);
        let mut out = Vec::new();
        let mut send = |t: &mut Throttle, ts: i64, trail: &str| {
            t.filter(ev(ts, 1, trail), &mut |e| out.push(e));
        };
        send(&mut t, 0, "a.example");
        send(&mut t, s / 2, "b.example");
        // Second 60's sweep frees a's ended window: c takes its slot.
        send(&mut t, 60 * s + s / 5, "c.example");
        assert_eq!((t.summarize_len(), t.stats().overflow), (2, 0));
        // b's window ended at 60.5 s, but second 60 was swept already: d overflows rather
        // than being swept again within the second.
        send(&mut t, 60 * s + 7 * s / 10, "d.example");
        assert_eq!((t.summarize_len(), t.stats().overflow), (2, 1));
        // Second 61's sweep frees b: e takes its slot.
        send(&mut t, 61 * s + s / 10, "e.example");
        assert_eq!((t.summarize_len(), t.stats().overflow), (2, 1));
        assert_eq!(out.len(), 5);
    }

    /// More key text in one window than it keeps: the keys so far are forgotten (counted as
    /// evicted) and the text starts again, so an early key passes again and a late one is
    /// still collapsed.
    #[test]
    fn a_window_with_too_much_key_text_forgets_its_keys_early() {
        let mut t = Throttle::new(ThrottleConfig {
            summarize: None,
            ..ThrottleConfig::default()
        });
        let long = |i: usize| format!("{i}/{}", "x".repeat(4096));
        let n = SEEN_TEXT_MAX / 4096 + 10;
        let mut passed = 0;
        for i in 0..n {
            let _ = t.filter(ev(1_000_000, 1, &long(i)), &mut |_| passed += 1);
        }
        assert_eq!(passed, n);
        assert!(t.stats().evicted > 0);
        assert!(t.seen_text.bytes.len() <= SEEN_TEXT_MAX);
        let _ = t.filter(ev(1_000_001, 1, &long(0)), &mut |_| passed += 1);
        assert_eq!(passed, n + 1, "the first key was forgotten");
        let _ = t.filter(ev(1_000_002, 1, &long(n - 1)), &mut |_| passed += 1);
        assert_eq!(passed, n + 1, "the last key is still remembered");
        assert_eq!(t.stats().suppressed, 1);
    }

    /// An event at the end of time queues every later window behind it: `finish` still
    /// writes each window's summary.
    #[test]
    fn finish_summarizes_every_window_after_a_time_at_the_end_of_time() {
        let s = 1_000_000;
        let mut t = Throttle::default();
        let mut out = Vec::new();
        // A second apart: none collapses into another.
        for i in 0..5 {
            t.filter(ev((1 + i) * s, 1, "a.example"), &mut |e| out.push(e));
        }
        t.filter(ev(i64::MAX - 10, 1, "b.example"), &mut |e| out.push(e));
        for i in 0..5 {
            t.filter(ev((10 + i) * s, 1, "c.example"), &mut |e| out.push(e));
        }
        // The time at the end swept a's window (ended by then): c's is queued behind it.
        assert_eq!(out.len(), 8, "{out:#?}");
        t.finish(&mut |e| out.push(e));
        let summaries: Vec<&str> = out
            .iter()
            .filter(|e| e.info.contains("summary"))
            .map(|e| e.trail.as_str())
            .collect();
        assert_eq!(summaries, ["a.example", "c.example"]);
        assert_eq!(t.summarize_len(), 0);
    }

    /// A key whose window starts again and again keeps one entry in the expiry queue, swept
    /// or not.
    #[test]
    fn the_expiry_queue_holds_one_entry_per_key() {
        let s = 1_000_000;
        let mut t = Throttle::default();
        for i in 0..1_000 {
            let _ = t.admit(&ev(i * 61 * s, 1, "a.example"));
            let _ = t.admit(&ev(i * 61 * s, 1, "b.example"));
        }
        assert_eq!(t.expiry.len(), 2);
        let mut out = Vec::new();
        for i in 0..1_000 {
            let _ = t.filter(ev((1_000 + i) * 61 * s, 1, "a.example"), &mut |e| {
                out.push(e)
            });
        }
        assert!(t.expiry.len() <= 2, "{}", t.expiry.len());
    }

    /// Events of a few sources and trails at times that mostly move on, sometimes step back
    /// and sometimes jump past a window, through a small summarize table: every event is
    /// passed, collapsed or held, every held one is counted in exactly one summary, and
    /// nothing is left in the table after `finish`.
    #[test]
    fn every_held_event_is_summarized_once_whatever_the_order_of_times() {
        let s = 1_000_000i64;
        let mut t = with_summarize_capacity(8);
        let mut out = Vec::new();
        let mut next = crate::testing::xorshift(0x9e37_79b9_7f4a_7c15);
        let mut ts = 0i64;
        let n = 20_000;
        for i in 0..n {
            let r = next();
            ts += match r % 100 {
                0 => 70 * s,
                1..=9 => -(((r >> 8) % (5 * s as u64)) as i64),
                _ => ((r >> 8) % (s as u64 / 4)) as i64,
            };
            let mut e = ev(
                ts.max(0),
                (i % 7) as u16,
                &format!("t{}.example", (r >> 40) % 5),
            );
            e.src_ip = IpAddr::from([10, 0, 0, ((r >> 50) % 6) as u8]);
            t.filter(e, &mut |e| out.push(e));
        }
        t.finish(&mut |e| out.push(e));
        let st = t.stats();
        assert_eq!(st.passed + st.suppressed + st.summarized, n);
        let held_in_summaries: u64 = out
            .iter()
            .filter_map(|e| e.info.split("(summary: ").nth(1))
            .filter_map(|rest| rest.split(' ').next()?.parse::<u64>().ok())
            .sum();
        assert_eq!(held_in_summaries, st.summarized);
        assert!(st.summaries > 0 && st.summarized > 0, "{st:?}");
        assert_eq!(t.summarize_len(), 0);
        assert!(t.held_events.slots.iter().all(Option::is_none));
    }
}
