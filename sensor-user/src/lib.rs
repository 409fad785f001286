//! xtrail-sensor's library: everything between the trail tables and the XDP program.
//!
//! - [`loader`]: loads the embedded XDP object with maps sized for the trail set, fills them,
//!   writes the configuration and attaches/detaches the program.
//! - [`maps`]: batched map filling (`BPF_MAP_UPDATE_BATCH` through the raw syscall) and the
//!   IPv4 /24 prefilter bitmap.
//! - [`hits`]: turns the program's ring-buffer records into events.
//! - [`output`]: writes events as JSON lines or Maltrail lines.
//! - [`stats`]: reads the per-CPU counters; [`metrics`]: serves them and the pipeline's
//!   counters to Prometheus (`run --metrics ADDR`).
//! - [`trail_maps`]: the two kernel trail map sets and the switch between them;
//!   [`reload`]: hot reload of the trail set (SIGHUP, watched files, collector pushes);
//!   [`trail_pull`]: signed trail sets from the collector's `Trails` service.
//! - [`privilege`]: the up-front capability check; [`suppress`]: the collector's
//!   suppression list applied to events.
//! - [`live`]: the live loop; [`xsk`]: the AF_XDP workers of mirror mode; [`startup`]: the
//!   start's phase timings.
//!
//! The binary (`src/main.rs`) owns argument parsing and the run loop.

pub mod config;
pub mod hits;
pub mod live;
pub mod loader;
pub mod maps;
pub mod metrics;
pub mod output;
pub mod privilege;
pub mod reload;
pub mod startup;
pub mod stats;
pub mod suppress;
pub mod trail_maps;
pub mod trail_pull;
pub mod xsk;

/// The XDP object built by `build.rs` from `xdp-ebpf/program`.
pub static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xtrail-xdp"));
