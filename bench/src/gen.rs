//! The traffic generator: sends prebuilt frames from the peer end of a veth pair.
//!
//! Batched `sendmmsg(2)` on an AF_PACKET socket with `PACKET_QDISC_BYPASS`. Why not AF_XDP
//! TX: on a veth, AF_XDP runs in copy mode and is no faster than a batched raw socket, while
//! the raw socket needs no UMEM, no XDP program on the sender side and no driver support;
//! the receiver's XDP program is what is being measured. Every run is bounded by a packet
//! count and a duration.

use std::io;
use std::time::Duration;

use crate::flows::FlowFrames;
use crate::netns::Injector;
use crate::pace::{self, Pacer};

/// Frames per `sendmmsg` call.
pub const BATCH: usize = 64;

/// What a run sent.
#[derive(Clone, Copy, Debug, Default)]
pub struct SendReport {
    /// Frames the kernel accepted.
    pub sent: u64,
    /// Send calls a full socket refused (`ENOBUFS`, `EWOULDBLOCK`: under overload), each
    /// retried from the first frame not taken.
    pub retries: u64,
    pub elapsed: Duration,
}

impl SendReport {
    /// Achieved send rate in packets per second.
    pub fn pps(&self) -> f64 {
        pace::rate(self.sent, self.elapsed)
    }
}

/// The AF_PACKET generators' pacing interval: the NIC-like generator's (`xtrail-nicgen send
/// --tick-us`, 1 ms).
pub const TICK: Duration = Duration::from_millis(1);

/// How a paced sender waits: each [`TICK`] of the run, the frames due by its end are sent
/// (in batches of [`BATCH`]), then it sleeps to the next tick. Returns how many of `count`
/// frames are due by the end of the current tick, or `None` after that sleep when the `sent`
/// ones are all that is. So the sending thread's CPU is its sends' and the receive path's they
/// run, not a spin's (spinning on waits under 200 µs, as `blast_flows` did until 2026-12-07
/// 08:20 and `blast` until 11:26, a sender that kept up at 500k pps was busy its whole wall
/// time whatever the receiver cost), nor that of calls of a frame or two (sending only what
/// is due by now, a sender at 1M never caught up).
fn due_in_tick(pacer: &Pacer, count: u64, sent: u64) -> Option<u64> {
    let (due, left) = pacer.due_in_tick(count, TICK);
    if due <= sent {
        std::thread::sleep(left);
        return None;
    }
    Some(due)
}

/// One `sendmmsg` of `batch`: the frames the kernel took. A full socket (`EWOULDBLOCK`,
/// `ENOBUFS`) takes none and counts a retry in `report`.
fn send_batch(inj: &Injector, batch: &[&[u8]], report: &mut SendReport) -> io::Result<usize> {
    match inj.send_batch(batch) {
        Ok(n) => Ok(n),
        Err(e)
            if e.kind() == io::ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::ENOBUFS) =>
        {
            report.retries += 1;
            std::thread::yield_now();
            Ok(0)
        }
        Err(e) => Err(e),
    }
}

/// Sends `count` frames cycling through `frames`, as fast as possible or at `rate_pps`
/// (paced in 1 ms tick bursts, as [`blast_flows`]), stopping early after `max_duration`.
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
    let pacer = Pacer::start(rate_pps);
    let mut report = SendReport::default();
    let mut next = 0usize;
    let mut batch: Vec<&[u8]> = Vec::with_capacity(BATCH);
    while report.sent < count && pacer.elapsed() < max_duration {
        let Some(due) = due_in_tick(&pacer, count, report.sent) else {
            continue;
        };
        batch.clear();
        let want = (due - report.sent).min(BATCH as u64) as usize;
        batch.extend((0..want).map(|i| &frames[(next + i) % frames.len()][..]));
        let n = send_batch(inj, &batch, &mut report)?;
        // On from the first frame not taken: a full socket skips none of the cycle.
        next = (next + n) % frames.len();
        report.sent += n as u64;
    }
    report.elapsed = pacer.elapsed();
    Ok(report)
}

/// Like [`blast`], with frames from a [`FlowFrames`] sequence (per-flow source addresses,
/// as the NIC-like generator sends them). The rewrite of each batch is generator work, done
/// the same way in every run. Paced in tick bursts: each [`TICK`] of the run, the frames due
/// by its end in batches of [`BATCH`], then a sleep to the next tick.
pub fn blast_flows(
    inj: &Injector,
    flows: &mut FlowFrames,
    count: u64,
    rate_pps: Option<u64>,
    max_duration: Duration,
) -> io::Result<SendReport> {
    let pacer = Pacer::start(rate_pps);
    let mut report = SendReport::default();
    let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(2048)).collect();
    let mut ready = 0usize;
    let mut sent_of_batch = 0usize;
    while report.sent < count && pacer.elapsed() < max_duration {
        let Some(due) = due_in_tick(&pacer, count, report.sent) else {
            continue;
        };
        if sent_of_batch == ready {
            ready = (due - report.sent).min(BATCH as u64) as usize;
            for b in bufs.iter_mut().take(ready) {
                flows.next_into(b);
            }
            sent_of_batch = 0;
        }
        let batch: Vec<&[u8]> = bufs[sent_of_batch..ready]
            .iter()
            .map(Vec::as_slice)
            .collect();
        let n = send_batch(inj, &batch, &mut report)?;
        report.sent += n as u64;
        sent_of_batch += n;
    }
    report.elapsed = pacer.elapsed();
    Ok(report)
}

/// Pins the calling thread to CPU `cpu` (generators send from a fixed CPU, so runs compare).
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity only
    // touch it and this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
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
