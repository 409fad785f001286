//! The traffic generator: sends prebuilt frames from the peer end of a veth pair.
//!
//! Batched `sendmmsg(2)` on an AF_PACKET socket with `PACKET_QDISC_BYPASS`. Why not AF_XDP
//! TX: on a veth, AF_XDP runs in copy mode and is no faster than a batched raw socket, while
//! the raw socket needs no UMEM, no XDP program on the sender side and no driver support;
//! the receiver's XDP program is what is being measured. Every run is bounded by a packet
//! count and a duration.

use std::io;
use std::time::{Duration, Instant};

use crate::flows::FlowFrames;
use crate::netns::Injector;

/// Frames per `sendmmsg` call.
pub const BATCH: usize = 64;

/// What a run sent.
#[derive(Clone, Copy, Debug, Default)]
pub struct SendReport {
    /// Frames the kernel accepted.
    pub sent: u64,
    /// Send calls that failed (e.g. ENOBUFS under overload).
    pub errors: u64,
    pub elapsed: Duration,
}

impl SendReport {
    /// Achieved send rate in packets per second.
    pub fn pps(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.sent as f64 / s
        } else {
            0.0
        }
    }
}

/// Sends `count` frames cycling through `frames`, as fast as possible or at `rate_pps`,
/// stopping early after `max_duration`.
pub fn blast(
    inj: &Injector,
    frames: &[Vec<u8>],
    count: u64,
    rate_pps: Option<u64>,
    max_duration: Duration,
) -> io::Result<SendReport> {
    if frames.is_empty() {
        return Ok(SendReport::default());
    }
    let start = Instant::now();
    let mut report = SendReport::default();
    let mut next = 0usize;
    let mut batch: Vec<&[u8]> = Vec::with_capacity(BATCH);
    while report.sent < count && start.elapsed() < max_duration {
        if let Some(rate) = rate_pps {
            // Pace: packet i is due at start + i / rate.
            let due = Duration::from_secs_f64(report.sent as f64 / rate as f64);
            let now = start.elapsed();
            if due > now {
                let wait = due - now;
                if wait > Duration::from_micros(200) {
                    std::thread::sleep(wait);
                }
                continue;
            }
        }
        batch.clear();
        let want = (count - report.sent).min(BATCH as u64) as usize;
        for _ in 0..want {
            batch.push(&frames[next]);
            next = (next + 1) % frames.len();
        }
        match inj.send_batch(&batch) {
            Ok(n) => report.sent += n as u64,
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.raw_os_error() == Some(libc::ENOBUFS) =>
            {
                report.errors += 1;
                std::thread::yield_now();
            }
            Err(e) => return Err(e),
        }
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

/// Like [`blast`], with frames from a [`FlowFrames`] sequence (per-flow source addresses,
/// as the NIC-like generator sends them). The rewrite of each batch is generator work, done
/// the same way in every run.
pub fn blast_flows(
    inj: &Injector,
    flows: &mut FlowFrames,
    count: u64,
    rate_pps: Option<u64>,
    max_duration: Duration,
) -> io::Result<SendReport> {
    let start = Instant::now();
    let mut report = SendReport::default();
    let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(2048)).collect();
    let mut ready = 0usize;
    let mut sent_of_batch = 0usize;
    while report.sent < count && start.elapsed() < max_duration {
        if let Some(rate) = rate_pps {
            let due = Duration::from_secs_f64(report.sent as f64 / rate as f64);
            let now = start.elapsed();
            if due > now {
                let wait = due - now;
                if wait > Duration::from_micros(200) {
                    std::thread::sleep(wait);
                }
                continue;
            }
        }
        if sent_of_batch == ready {
            ready = (count - report.sent).min(BATCH as u64) as usize;
            for b in bufs.iter_mut().take(ready) {
                flows.next_into(b);
            }
            sent_of_batch = 0;
        }
        let batch: Vec<&[u8]> = bufs[sent_of_batch..ready]
            .iter()
            .map(Vec::as_slice)
            .collect();
        match inj.send_batch(&batch) {
            Ok(n) => {
                report.sent += n as u64;
                sent_of_batch += n;
            }
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.raw_os_error() == Some(libc::ENOBUFS) =>
            {
                report.errors += 1;
                std::thread::yield_now();
            }
            Err(e) => return Err(e),
        }
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

/// A small deterministic PRNG (SplitMix64): scenarios are reproducible from a seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}
