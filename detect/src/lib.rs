//! xtrail's detection library.
//!
//! Everything that decides *what* is malicious and *how it is reported*, with no kernel and
//! no privilege: trail loading and lookup tables ([`trails`]), the per-packet pipeline
//! ([`process`]), Maltrail's heuristics ([`heuristics`]), the event model and its output
//! formats ([`event`]) and event throttling ([`throttle`]), assembled in one place: the
//! [`pipeline::Detector`] that replay and every live capture path feed. The sensor binary wires these to
//! the XDP program and AF_XDP sockets; pcap replay ([`replay`]) drives the same code from
//! files, heuristics included, on the pcap's own clock.
//!
//! Events pass the throttle last: identical 5-tuples within one second collapse, and at most
//! 3 events per (source, trail) per 60 s are written; the rest of such a window is reported
//! by one summary event, a copy of the last held-back event whose info ends in
//! ` (summary: N more in 60s)` (see [`throttle`]).
//!
//! Tests: unit tests beside each module; `tests/corpus.rs` (Maltrail's replay corpus, all
//! cases), `tests/heuristics.rs` (thresholds, false-positive guards, flood bounds),
//! `tests/mutation.rs` (no panics), `tests/no_alloc.rs`, `tests/trails_*.rs`.

pub mod cpu_clock;
pub mod event;
pub mod heuristics;
mod name_verdicts;
pub mod packet;
pub mod pcap;
pub mod pipeline;
pub mod prefetch;
pub mod process;
pub mod protocols;
pub mod replay;
pub mod shared_trails;
pub mod throttle;
pub mod trails;
pub mod whitelist;

/// Helpers of the unit tests.
#[cfg(test)]
mod testing {
    /// A xorshift64 generator from `state` (not 0): reproducible pseudo-random test input.
    pub(crate) fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }
}
