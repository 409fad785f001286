//! AF_XDP workers for mirror mode: one socket and one thread per (interface, receive queue).
//!
//! The XDP program redirects DNS, HTTP and TLS ClientHello packets into the socket of the
//! queue they arrived on. Each worker runs to completion: poll, take a batch of frames, run
//! each through its own [`Processor`] and [`Throttle`], give the frames back to the fill
//! queue. Nothing is shared between workers on the packet path; events (rare) go to the main
//! loop over a bounded channel.

use std::num::NonZeroU32;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{anyhow, Context as _};
use aya::maps::{HashMap, MapData, XskMap};
use xsk_rs::config::{BindFlags, Interface, LibxdpFlags, SocketConfig, UmemConfig};
use xsk_rs::{FrameDesc, Socket, Umem};
use xtrail_common::{maps as names, XSK_MAX_IFACES, XSK_QUEUES_PER_IFACE};
use xtrail_detect::event::Event;
use xtrail_detect::throttle::{Throttle, ThrottleConfig};

use crate::hits::unix_us_now;
use crate::live::Pipeline;
use crate::loader::Sensor;

/// UMEM frames per socket.
const FRAMES: u32 = 4096;
/// Frames handed to the fill queue at a time (at most the fill-queue size).
const FILL_BATCH: usize = 2048;
/// Frames taken from the RX ring per poll.
const RX_BATCH: usize = 64;

/// Counters shared with the main loop (relaxed atomics, written once per batch).
#[derive(Debug, Default)]
pub struct WorkerCounters {
    pub frames: AtomicU64,
    pub events: AtomicU64,
}

/// A running worker.
pub struct XskWorker {
    pub iface: String,
    pub queue: u32,
    pub counters: Arc<WorkerCounters>,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl XskWorker {
    /// Whether the worker thread has ended.
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Waits for the worker; its error (or panic) is reported loudly.
    pub fn join(self) -> anyhow::Result<()> {
        self.handle
            .join()
            .map_err(|_| anyhow!("AF_XDP worker {}:{} panicked", self.iface, self.queue))?
    }
}

/// The number of receive queues of an interface (from sysfs; 1 when unknown).
pub fn rx_queues(iface: &str) -> u32 {
    std::fs::read_dir(format!("/sys/class/net/{iface}/queues"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count() as u32
        })
        .unwrap_or(1)
        .max(1)
}

/// What every worker needs.
#[derive(Clone)]
pub struct WorkerContext {
    /// Each worker builds its own Processor (and DNS/HTTP heuristics) from it; scans are fed
    /// centrally from the flow starts.
    pub pipeline: Pipeline,
    pub events: SyncSender<Event>,
    pub stop: Arc<AtomicBool>,
}

/// Creates sockets on every receive queue of `ifaces` (name, index), registers them in the
/// `XSKS` map and starts one worker per socket. Call before attaching, so no packet is
/// redirected to a queue without a socket.
pub fn start(
    sensor: &mut Sensor,
    ifaces: &[(String, u32)],
    ctx: &WorkerContext,
) -> anyhow::Result<Vec<XskWorker>> {
    if ifaces.len() as u32 > XSK_MAX_IFACES {
        return Err(anyhow!(
            "AF_XDP supports at most {XSK_MAX_IFACES} interfaces per sensor"
        ));
    }
    let mut workers = Vec::new();
    for (slot, (iface, ifindex)) in ifaces.iter().enumerate() {
        {
            let map = sensor
                .ebpf_mut()
                .map_mut(names::IFSLOTS)
                .context("IFSLOTS map")?;
            let mut slots: HashMap<&mut MapData, u32, u32> = HashMap::try_from(map)?;
            slots.insert(ifindex, slot as u32, 0)?;
        }
        let queues = rx_queues(iface).min(XSK_QUEUES_PER_IFACE);
        for queue in 0..queues {
            let worker = spawn_one(sensor, ctx, iface, slot as u32, queue)
                .with_context(|| format!("AF_XDP socket on {iface} queue {queue}"))?;
            workers.push(worker);
        }
    }
    Ok(workers)
}

fn spawn_one(
    sensor: &mut Sensor,
    ctx: &WorkerContext,
    iface: &str,
    slot: u32,
    queue: u32,
) -> anyhow::Result<XskWorker> {
    let frames = NonZeroU32::new(FRAMES).context("frame count")?;
    let (umem, mut descs) = Umem::new(UmemConfig::default(), frames, false)
        .map_err(|e| anyhow!("creating UMEM: {e}"))?;
    let config = SocketConfig::builder()
        .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
        // No XDP_COPY/XDP_ZEROCOPY: the kernel uses zero-copy where the driver has it.
        .bind_flags(BindFlags::XDP_USE_NEED_WAKEUP)
        .build();
    let name: Interface = iface
        .parse()
        .map_err(|_| anyhow!("bad interface name {iface}"))?;
    // SAFETY: the UMEM outlives the socket (both move into the worker together).
    let (_tx, mut rx, fq_cq) = unsafe { Socket::new(config, &umem, &name, queue) }
        .map_err(|e| anyhow!("creating the socket: {e}"))?;
    let (mut fq, _cq) = fq_cq.context("the socket has no fill queue")?;
    {
        let map = sensor.ebpf_mut().map_mut(names::XSKS).context("XSKS map")?;
        let mut xsks: XskMap<&mut MapData> = XskMap::try_from(map)?;
        xsks.set(slot * XSK_QUEUES_PER_IFACE + queue, rx.fd().as_raw_fd(), 0)?;
    }
    // Hand the kernel frames to receive into (the fill queue takes at most its size).
    let mut free: Vec<FrameDesc> = descs.split_off(FILL_BATCH.min(descs.len()));
    // SAFETY: the descriptors belong to this UMEM and are not in use.
    let filled = unsafe { fq.produce(&descs) };
    if filled != descs.len() {
        return Err(anyhow!(
            "the fill queue took {filled} of {} frames",
            descs.len()
        ));
    }
    let counters = Arc::new(WorkerCounters::default());
    let c = Arc::clone(&counters);
    let ctx = ctx.clone();
    let iface_name = iface.to_string();
    let handle = std::thread::Builder::new()
        .name(format!("xsk-{iface}-{queue}"))
        .spawn(move || -> anyhow::Result<()> {
            let mut processor = ctx.pipeline.processor(Some(iface_name.clone()))?;
            let mut last_flush = std::time::Instant::now();
            let mut throttle = Throttle::new(ThrottleConfig::default());
            let mut batch: Vec<FrameDesc> = free.drain(..RX_BATCH.min(free.len())).collect();
            if batch.len() < RX_BATCH {
                return Err(anyhow!("not enough UMEM frames for a receive batch"));
            }
            let mut events: Vec<Event> = Vec::with_capacity(16);
            while !ctx.stop.load(Ordering::Relaxed) {
                // SAFETY: `batch` descriptors belong to this UMEM.
                let n = unsafe { rx.poll_and_consume(&mut batch, 100) }
                    .context("polling the AF_XDP socket")?;
                if last_flush.elapsed() >= std::time::Duration::from_secs(1) {
                    last_flush = std::time::Instant::now();
                    throttle.flush(unix_us_now(), &mut |ev| events.push(ev));
                }
                if n == 0 {
                    for ev in events.drain(..) {
                        if ctx.events.send(ev).is_err() {
                            return Ok(());
                        }
                    }
                    continue;
                }
                let now = unix_us_now();
                for desc in &batch[..n] {
                    // SAFETY: the kernel handed this frame to us and will not touch it until
                    // it is back on the fill queue.
                    let data = unsafe { umem.data(desc) };
                    processor.process(now, 1, data.contents(), &mut |ev| {
                        throttle.filter(ev, &mut |ev| events.push(ev));
                    });
                }
                // SAFETY: the frames were consumed above; give them back to the kernel.
                let mut given = unsafe { fq.produce(&batch[..n]) };
                while given < n && !ctx.stop.load(Ordering::Relaxed) {
                    if fq.needs_wakeup() {
                        fq.wakeup(rx.fd_mut(), 10)
                            .context("waking the fill queue")?;
                    }
                    // SAFETY: as above.
                    given = unsafe { fq.produce(&batch[..n]) };
                }
                if fq.needs_wakeup() {
                    fq.wakeup(rx.fd_mut(), 0).context("waking the fill queue")?;
                }
                c.frames.fetch_add(n as u64, Ordering::Relaxed);
                for ev in events.drain(..) {
                    c.events.fetch_add(1, Ordering::Relaxed);
                    if ctx.events.send(ev).is_err() {
                        return Ok(());
                    }
                }
            }
            throttle.finish(&mut |ev| events.push(ev));
            for ev in events.drain(..) {
                let _ = ctx.events.send(ev);
            }
            drop(umem);
            Ok(())
        })
        .context("starting the worker thread")?;
    Ok(XskWorker {
        iface: iface.to_string(),
        queue,
        counters,
        handle,
    })
}
