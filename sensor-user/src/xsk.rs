//! AF_XDP transport for mirror mode: one socket per (interface, receive queue), served by a
//! fixed number of transport threads (`--workers`). Transport only: each thread takes frames
//! from its sockets, copies each receive batch into a recycled [`FrameBatch`], hands it to
//! the sensor's one [`xtrail_detect::pipeline::Detector`] over a bounded queue and gives the
//! UMEM frames back to the fill queue. A batch that finds the queue full is dropped and its
//! frames counted (`queue_full`), never silently. Each frame comes after the XDP program's
//! [`XskMeta`](xtrail_common::XskMeta) (its address verdict, [`Stamp`]), which the copy
//! leaves out.
//!
//! Every receive queue of an interface that has sockets gets one (the real count, from sysfs,
//! up to the stride the `XSKS` map was sized with at load), so no queue's packets are
//! misdelivered; an interface without sockets (generic XDP, a driver without zero-copy
//! AF_XDP) and a queue past the stride have their packets handed over by ring-buffer copy.

use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use aya::maps::{HashMap, MapData, XskMap};
use xsk_rs::config::{BindFlags, FrameSize, Interface, LibxdpFlags, SocketConfig, UmemConfig};
use xsk_rs::{FillQueue, FrameDesc, RxQueue, Socket, Umem};
use xtrail_common::{
    maps as names, xsk_meta, XSK_FRAME_SIZE, XSK_MAX_IFACES, XSK_MAX_QUEUES, XSK_META_LEN,
    XSK_META_MAGIC,
};

use crate::hits::unix_us_now;
use crate::loader::Sensor;

/// UMEM frames per socket: more per socket when there are few.
fn frames_per_socket(sockets: usize) -> u32 {
    if sockets <= 4 {
        4096
    } else {
        512
    }
}
/// Frames the detector's queue holds at most (batches of up to [`RX_BATCH`]; a batch counts
/// as at least [`MIN_BATCH_FRAMES`]).
pub const MAX_QUEUED_FRAMES: u64 = 65_536;
/// Receive batches the detector's queue holds at most (its channel's bound): 8 s of
/// batches of a few frames every 2 ms.
pub const MAX_QUEUED_BATCHES: usize = 4096;
/// Frames a batch counts as in the queue's count at least: a batch of one frame takes one
/// of [`MAX_QUEUED_BATCHES`] slots, so it counts as that slot's share of
/// [`MAX_QUEUED_FRAMES`]. The count then bounds the batches too (the channel is never full
/// before it), and one-frame batches (a trickle over many sockets) cross [`WAKE_FRAMES`]
/// at an eighth of the slots.
const MIN_BATCH_FRAMES: u64 = MAX_QUEUED_FRAMES / MAX_QUEUED_BATCHES as u64;
/// What a batch of `n` frames counts as in the queue's frame count: at least
/// [`MIN_BATCH_FRAMES`]. [`LoopWake::reserve`] and [`LoopWake::release`] both count by it,
/// so a batch gives back what it took.
fn counted(n: u64) -> u64 {
    n.max(MIN_BATCH_FRAMES)
}

/// An awake loop is woken each time the frames queued for it cross a multiple of this (an
/// eighth of the queue, as the rings are woken per an eighth of their size), so the queue
/// never waits a whole poll to be drained.
pub const WAKE_FRAMES: u64 = MAX_QUEUED_FRAMES / 8;
/// How often a transport thread reads its sockets' drop counters.
const DROPS_EVERY: Duration = Duration::from_secs(1);
/// Frames taken from one RX ring per pass.
const RX_BATCH: usize = 64;
/// A pass over a thread's sockets that found fewer frames than this (and some) waits
/// before the next instead of polling: while frames trickle in, a polling thread is woken
/// for every few of them. Bursts are taken a burst a wake-up by polling.
const PAUSE_BELOW: usize = 16;
/// The longest pause (sockets of 4,096 frames): as long as a socket's free frames take to
/// fill at ~2 million frames a second (a pause is shorter in proportion for smaller
/// sockets); frames that overflow a socket are counted in `dropped`.
const BUSY_PAUSE: Duration = Duration::from_millis(2);
/// UMEM frames per socket at which a pause is [`BUSY_PAUSE`].
const PAUSE_FRAMES: u32 = 4096;

/// Frames on their way to the detector: one socket's receive batch, handed over in one
/// queue operation (one per frame cost more than the copies). The buffers stay with the
/// batch when it comes back for reuse, whatever its next batch's length.
#[derive(Debug, Default)]
pub struct FrameBatch {
    /// When the transport copied the batch (microseconds since the epoch): its frames
    /// arrived at most a pause ([`BUSY_PAUSE`]) or a poll earlier.
    pub ts_us: i64,
    /// Index of the interface in the sensor's interface list.
    pub iface: usize,
    /// The first `len` hold the batch's frames (Ethernet header first); the rest are spare.
    bufs: Vec<Vec<u8>>,
    /// The first `len` are the frames' stamps.
    stamps: Vec<Stamp>,
    len: usize,
}

/// A frame's address verdict as the XDP program stamped it
/// ([`XskMeta`](xtrail_common::XskMeta)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stamp {
    /// See `xtrail_common::addr_check`.
    pub addrs: u8,
    /// The epoch of the `TRAIL_SET` value the addresses were looked up under.
    pub epoch: u8,
}

/// The stamp of the [`XskMeta`](xtrail_common::XskMeta) at the start of `data` and the frame after it; `None` when
/// `data` does not start with one.
pub fn split_meta(data: &[u8]) -> Option<(Stamp, &[u8])> {
    let (meta, frame) = data.split_at_checked(XSK_META_LEN)?;
    let magic = u32::from_ne_bytes(meta.get(..4)?.try_into().ok()?);
    if magic != XSK_META_MAGIC {
        return None;
    }
    let at = |i: usize| meta.get(i).copied().unwrap_or(0);
    Some((
        Stamp {
            addrs: at(xsk_meta::ADDRS),
            epoch: at(xsk_meta::EPOCH),
        },
        frame,
    ))
}

impl FrameBatch {
    /// An empty batch of `iface`'s frames arrived at `ts_us`, keeping its buffers.
    fn reset(&mut self, ts_us: i64, iface: usize) {
        self.ts_us = ts_us;
        self.iface = iface;
        self.len = 0;
    }

    /// Adds a copy of `frame`, stamped `stamp`.
    fn push(&mut self, frame: &[u8], stamp: Stamp) {
        match self.bufs.get_mut(self.len) {
            Some(buf) => {
                buf.clear();
                buf.extend_from_slice(frame);
            }
            None => self.bufs.push(frame.to_vec()),
        }
        match self.stamps.get_mut(self.len) {
            Some(s) => *s = stamp,
            None => self.stamps.push(stamp),
        }
        self.len += 1;
    }

    /// Adds a copy of the frame after the meta that starts `data`; false (nothing added)
    /// when `data` starts with none.
    fn push_received(&mut self, data: &[u8]) -> bool {
        split_meta(data)
            .map(|(stamp, frame)| self.push(frame, stamp))
            .is_some()
    }

    /// Frames in the batch.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the batch holds no frame.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The batch's frames with their stamps, in arrival order.
    pub fn frames(&self) -> impl Iterator<Item = (&[u8], Stamp)> {
        self.bufs
            .iter()
            .zip(&self.stamps)
            .take(self.len)
            .map(|(b, s)| (b.as_slice(), *s))
    }
}

/// Counters of the transport (relaxed atomics).
#[derive(Debug, Default)]
pub struct TransportCounters {
    /// Frames received from the sockets (those without the XDP program's meta are in
    /// `malformed` instead).
    pub frames: AtomicU64,
    /// Frames dropped because the detector's queue was full.
    pub queue_full: AtomicU64,
    /// Frames that did not start with the XDP program's meta (none should).
    pub malformed: AtomicU64,
    /// Frames the sockets dropped before the transport saw them (the kernel's
    /// `XDP_STATISTICS` `rx_dropped + rx_ring_full + rx_invalid_descs`: no free frame in copy
    /// mode, a full receive ring), summed over sockets; read about once a second and when
    /// the transport stops.
    pub dropped: AtomicU64,
    /// Times the kernel found a socket's fill ring empty (`rx_fill_ring_empty_descs`): in
    /// zero-copy mode the NIC then had no buffer and dropped the frame before the XDP
    /// program saw it; attempts, not frames (a retry counts again; in copy mode the same
    /// frames are in `dropped` too).
    pub fill_empty: AtomicU64,
}

/// The frames between the transport threads and the live loop: how many are in flight
/// (queued and not yet taken: the bound of the queue in frames, whatever the batches'
/// lengths, and how the loop knows the queue is empty) and how a batch wakes the loop.
/// Frames reach the loop by a channel, which wakes no one, so a thread that queues frames
/// while the loop sleeps long writes an eventfd among the loop's pollfds. While the loop is
/// awake it polls every `wake::POLL_MS` and takes what is queued then, as it does with ring
/// records below their ring's threshold; a write is made only when the queue crosses a
/// multiple of [`WAKE_FRAMES`], as a ring's threshold wakes the loop.
#[derive(Debug)]
pub struct LoopWake {
    fd: OwnedFd,
    /// Set by the loop before an idle poll; the first batch queued after it writes `fd`.
    idle: AtomicBool,
    /// Frames reserved by the threads and not yet taken by the loop (a batch at least
    /// [`MIN_BATCH_FRAMES`]).
    in_flight: AtomicU64,
}

impl LoopWake {
    /// A non-blocking eventfd, nothing in flight.
    pub fn new() -> std::io::Result<Self> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self {
            fd,
            idle: AtomicBool::new(false),
            in_flight: AtomicU64::new(0),
        })
    }

    /// A thread is about to queue a batch of `n` frames: `None` (nothing reserved) when the
    /// queue would then hold more than [`MAX_QUEUED_FRAMES`], else whether it takes the queue
    /// across a multiple of [`WAKE_FRAMES`] (for [`LoopWake::queued`]). Reserved before the
    /// batch is sent, so the count never falls below what the channel holds.
    pub fn reserve(&self, n: u64) -> Option<bool> {
        let n = counted(n);
        self.in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                (v + n <= MAX_QUEUED_FRAMES).then_some(v + n)
            })
            .ok()
            .map(|v| v / WAKE_FRAMES != (v + n) / WAKE_FRAMES)
    }

    /// A thread queued the frames it reserved: wakes the loop if it sleeps in an idle poll,
    /// or if they crossed a multiple of [`WAKE_FRAMES`] (`crossed`, from
    /// [`LoopWake::reserve`]).
    pub fn queued(&self, crossed: bool) {
        if self.idle.swap(false, Ordering::SeqCst) || crossed {
            self.wake_now();
        }
    }

    /// A reserved batch of `n` frames is no longer in flight: the loop took it, or a
    /// thread's send failed.
    pub fn release(&self, n: u64) {
        self.in_flight.fetch_sub(counted(n), Ordering::SeqCst);
    }

    /// The descriptor the loop polls.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Wakes the loop whether it sleeps or not (a transport thread ending: the loop looks at
    /// its threads after each poll).
    pub fn wake_now(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to an eventfd we own. A failure (counter
        // at its maximum) leaves the eventfd readable: the loop wakes anyway.
        unsafe { libc::write(self.fd(), one.as_ptr().cast(), one.len()) };
    }

    /// The loop is about to poll long: false (and no idle poll) while frames are in flight.
    /// Every frame queued after a true answer wakes the loop: the count is read after the
    /// flag is set, and a thread reserves before it sends and reads the flag after.
    pub fn arm(&self) -> bool {
        self.idle.store(true, Ordering::SeqCst);
        if self.in_flight.load(Ordering::SeqCst) == 0 {
            return true;
        }
        self.idle.store(false, Ordering::SeqCst);
        false
    }

    /// The loop is awake: no thread need write; the eventfd's count is read if `woken`.
    pub fn disarm(&self, woken: bool) {
        self.idle.store(false, Ordering::SeqCst);
        if woken {
            let mut count = [0u8; 8];
            // SAFETY: reads at most 8 bytes into a live buffer from an eventfd we own
            // (non-blocking: EAGAIN when another wake-up read it first).
            unsafe { libc::read(self.fd(), count.as_mut_ptr().cast(), count.len()) };
        }
    }
}

/// Wakes the loop when dropped.
struct WakeOnExit(Arc<LoopWake>);

impl Drop for WakeOnExit {
    fn drop(&mut self) {
        self.0.wake_now();
    }
}

/// A running transport thread.
pub struct XskWorker {
    /// "iface:queue" of each socket it serves.
    pub sockets: Vec<String>,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl XskWorker {
    /// Whether the thread has ended.
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Waits for the thread; its error (or panic) is reported loudly.
    pub fn join(self) -> anyhow::Result<()> {
        let name = self.sockets.join(",");
        self.handle
            .join()
            .map_err(|_| anyhow!("AF_XDP worker {name} panicked"))?
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

/// The `XSKS` stride the interfaces need: their largest queue count, or a clear error.
pub fn queue_stride(ifaces: &[String]) -> anyhow::Result<u32> {
    if ifaces.len() as u32 > XSK_MAX_IFACES {
        return Err(anyhow!(
            "AF_XDP supports at most {XSK_MAX_IFACES} interfaces per sensor"
        ));
    }
    let most = ifaces.iter().map(|i| rx_queues(i)).max().unwrap_or(1);
    if most > XSK_MAX_QUEUES {
        return Err(anyhow!(
            "an interface has {most} receive queues; AF_XDP here supports at most {XSK_MAX_QUEUES}"
        ));
    }
    Ok(most)
}

/// One socket with its UMEM and rings.
struct Xsk {
    name: String,
    iface: usize,
    umem: Umem,
    rx: RxQueue,
    fq: FillQueue,
    batch: Vec<FrameDesc>,
    /// UMEM frames of the socket.
    frames: u32,
    /// A batch the detector's queue refused, kept for its buffers.
    spare: Option<FrameBatch>,
    /// The socket's drops and empty-fill counts so far (its `XDP_STATISTICS` when last read).
    dropped: u64,
    fill_empty: u64,
    /// Whether a failure to read the statistics was logged.
    stats_warned: bool,
}

impl Xsk {
    /// Adds the socket's drops and empty-fill counts since the last call to `counters`.
    fn count_drops(&mut self, counters: &TransportCounters) {
        match self.rx.fd().xdp_statistics() {
            Ok(st) => {
                let dropped = st.rx_dropped() + st.rx_ring_full() + st.rx_invalid_descs();
                let add = |last: &mut u64, now: u64, to: &AtomicU64| {
                    to.fetch_add(now.saturating_sub(*last), Ordering::Relaxed);
                    *last = now;
                };
                add(&mut self.dropped, dropped, &counters.dropped);
                add(
                    &mut self.fill_empty,
                    st.rx_fill_ring_empty_descs(),
                    &counters.fill_empty,
                );
            }
            Err(e) if !self.stats_warned => {
                self.stats_warned = true;
                log::warn!(
                    "AF_XDP socket {}: its drop counters cannot be read ({e}): xsk_dropped leaves them out",
                    self.name
                );
            }
            Err(_) => {}
        }
    }
}

/// What the transport threads share.
#[derive(Clone)]
pub struct TransportContext {
    /// Frames to the detector, a receive batch at a time.
    pub frames: SyncSender<FrameBatch>,
    /// Batches the detector is done with, for reuse.
    pub recycled: Arc<Mutex<Receiver<FrameBatch>>>,
    pub counters: Arc<TransportCounters>,
    pub stop: Arc<AtomicBool>,
    /// Counts the frames in flight; wakes the loop out of its idle poll.
    pub wake: Arc<LoopWake>,
}

/// Which interfaces of a mirror-mode sensor hand packets over by AF_XDP; the others (and
/// all of them with `--no-afxdp`) by ring-buffer copies, as inline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Afxdp {
    /// Those whose driver binds AF_XDP sockets in zero-copy mode (the default): in copy mode
    /// (a veth, a driver without zero-copy AF_XDP) a socket costs the sensor more than a
    /// ring-buffer copy (bench/results/PERF-LOG.md, 2026-12-07 from 21:18).
    ZeroCopy,
    /// Every interface, in copy mode where the driver has no zero-copy (`--afxdp-copy`).
    Always,
}

/// The sockets [`open`] made, and the interfaces whose driver refused them zero-copy.
pub struct Opened {
    sockets: Vec<Xsk>,
    /// Interfaces whose driver refused a zero-copy bind, with the refusal.
    pub without_zero_copy: Vec<(String, anyhow::Error)>,
}

impl Opened {
    /// Whether no interface got sockets.
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }
}

/// Creates a socket on every receive queue (up to `stride` an interface) of `ifaces` (name,
/// index), but those named in `skip`, and registers them in the `XSKS` map at `slot * stride + queue` (`slot`: the
/// interface's place in `ifaces`), the interface in `IFSLOTS`. With [`Afxdp::ZeroCopy`], an
/// interface whose driver refuses a zero-copy bind (`EOPNOTSUPP`) gets no socket. An
/// interface without sockets has its packets handed over by ring-buffer copy. The program
/// redirects to the sockets only once the caller sets `config_flags::XSK` (when [`start`]
/// succeeded): it may run meanwhile.
pub fn open(
    sensor: &mut Sensor,
    ifaces: &[(String, u32)],
    skip: &[String],
    stride: u32,
    policy: Afxdp,
) -> anyhow::Result<Opened> {
    let wanted = |iface: &String| !skip.contains(iface);
    let total: usize = ifaces
        .iter()
        .filter(|(i, _)| wanted(i))
        .map(|(i, _)| rx_queues(i).min(stride) as usize)
        .sum();
    let mut opened = Opened {
        sockets: Vec::with_capacity(total),
        without_zero_copy: Vec::new(),
    };
    'ifaces: for (slot, (iface, ifindex)) in ifaces.iter().enumerate() {
        if !wanted(iface) {
            continue;
        }
        let first = opened.sockets.len();
        // Queues past the stride (a driver that changed its count since) would run into the
        // next slot's indices: they get no socket, so their packets go by ring copy.
        for queue in 0..rx_queues(iface).min(stride) {
            let index = slot as u32 * stride + queue;
            match open_one(sensor, iface, slot, index, queue, total, policy) {
                Ok(xsk) => opened.sockets.push(xsk),
                Err(e) if policy == Afxdp::ZeroCopy && is_unsupported(&e) => {
                    // Closing them takes their `XSKS` entries away.
                    opened.sockets.truncate(first);
                    opened.without_zero_copy.push((iface.clone(), e));
                    continue 'ifaces;
                }
                Err(e) => return Err(e.context(format!("AF_XDP socket on {iface} queue {queue}"))),
            }
        }
        let map = sensor
            .ebpf_mut()
            .map_mut(names::IFSLOTS)
            .context("IFSLOTS map")?;
        let mut slots: HashMap<&mut MapData, u32, u32> = HashMap::try_from(map)?;
        slots.insert(ifindex, slot as u32, 0)?;
    }
    Ok(opened)
}

/// Whether `e` is a driver's refusal of a zero-copy bind.
fn is_unsupported(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            == Some(libc::EOPNOTSUPP)
    })
}

/// Starts `workers` threads serving the `opened` sockets (none without sockets).
pub fn start(
    opened: Opened,
    workers: usize,
    ctx: &TransportContext,
) -> anyhow::Result<Vec<XskWorker>> {
    let sockets = opened.sockets;
    if sockets.is_empty() {
        return Ok(Vec::new());
    }
    let workers = workers.clamp(1, sockets.len());
    let mut groups: Vec<Vec<Xsk>> = (0..workers).map(|_| Vec::new()).collect();
    for (i, s) in sockets.into_iter().enumerate() {
        groups[i % workers].push(s);
    }
    groups
        .into_iter()
        .enumerate()
        .map(|(i, group)| {
            let names: Vec<String> = group.iter().map(|s| s.name.clone()).collect();
            let ctx = ctx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("xsk-{i}"))
                .spawn(move || {
                    // However the thread ends (an error, a panic), the loop hears of it at
                    // once rather than after its idle poll.
                    let _wake = WakeOnExit(Arc::clone(&ctx.wake));
                    serve(group, &ctx)
                })
                .context("starting an AF_XDP worker")?;
            Ok(XskWorker {
                sockets: names,
                handle,
            })
        })
        .collect()
}

fn open_one(
    sensor: &mut Sensor,
    iface: &str,
    iface_idx: usize,
    index: u32,
    queue: u32,
    total: usize,
    policy: Afxdp,
) -> anyhow::Result<Xsk> {
    let frames = NonZeroU32::new(frames_per_socket(total)).context("frame count")?;
    let umem_config = UmemConfig::builder()
        .frame_size(FrameSize::new(XSK_FRAME_SIZE).map_err(|e| anyhow!("frame size: {e}"))?)
        .fill_queue_size(frames.get().next_power_of_two().try_into()?)
        .comp_queue_size(64.try_into()?)
        .build()
        .map_err(|e| anyhow!("UMEM config: {e}"))?;
    let (umem, mut descs) =
        Umem::new(umem_config, frames, false).map_err(|e| anyhow!("creating UMEM: {e}"))?;
    let config = SocketConfig::builder()
        .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
        .rx_queue_size(frames.get().next_power_of_two().try_into()?)
        // XDP_ZEROCOPY: a driver without zero-copy refuses the bind. Without it (nor
        // XDP_COPY) the kernel uses zero-copy where the driver has it, copy elsewhere.
        .bind_flags(match policy {
            Afxdp::ZeroCopy => BindFlags::XDP_USE_NEED_WAKEUP | BindFlags::XDP_ZEROCOPY,
            Afxdp::Always => BindFlags::XDP_USE_NEED_WAKEUP,
        })
        .build();
    let name: Interface = iface
        .parse()
        .map_err(|_| anyhow!("bad interface name {iface}"))?;
    // SAFETY: the UMEM outlives the socket (both move into the worker together).
    let (_tx, rx, fq_cq) = unsafe { Socket::new(config, &umem, &name, queue) }
        .map_err(|e| anyhow::Error::new(e).context("creating the socket"))?;
    let (mut fq, _cq) = fq_cq.context("the socket has no fill queue")?;
    {
        let map = sensor.ebpf_mut().map_mut(names::XSKS).context("XSKS map")?;
        let mut xsks: XskMap<&mut MapData> = XskMap::try_from(map)?;
        xsks.set(index, rx.fd().as_raw_fd(), 0)?;
    }
    // Keep a receive batch of descriptors; the rest go to the fill queue.
    let batch: Vec<FrameDesc> = descs.split_off(descs.len() - RX_BATCH);
    // SAFETY: the descriptors belong to this UMEM and are not in use.
    let filled = unsafe { fq.produce(&descs) };
    if filled != descs.len() {
        return Err(anyhow!(
            "the fill queue took {filled} of {} frames",
            descs.len()
        ));
    }
    Ok(Xsk {
        name: format!("{iface}:{queue}"),
        iface: iface_idx,
        umem,
        rx,
        fq,
        batch,
        frames: frames.get(),
        spare: None,
        dropped: 0,
        fill_empty: 0,
        stats_warned: false,
    })
}

/// One transport thread: drain its sockets, hand frames over, refill, wait when idle; at
/// stop, take what the sockets still hold (the XDP program is detached by then).
fn serve(mut group: Vec<Xsk>, ctx: &TransportContext) -> anyhow::Result<()> {
    let mut pollfds: Vec<libc::pollfd> = group
        .iter()
        .map(|s| libc::pollfd {
            fd: s.rx.fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let smallest = group.iter().map(|s| s.frames).min().unwrap_or(PAUSE_FRAMES);
    let pause = BUSY_PAUSE * smallest.min(PAUSE_FRAMES) / PAUSE_FRAMES;
    let mut drops_read = Instant::now();
    while !ctx.stop.load(Ordering::Relaxed) {
        if drops_read.elapsed() >= DROPS_EVERY {
            drops_read = Instant::now();
            for s in &mut group {
                s.count_drops(&ctx.counters);
            }
        }
        let (mut got, mut full) = (0, false);
        for s in &mut group {
            let n = drain(s, ctx)?;
            got += n;
            full |= n == RX_BATCH;
        }
        if full {
            continue;
        }
        if got > 0 && got < PAUSE_BELOW {
            std::thread::sleep(pause);
        } else {
            // SAFETY: pollfds is a valid array of pollfd of the given length.
            unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, 100) };
        }
    }
    for s in &mut group {
        // Bounded: the rings hold at most `frames` and nothing new arrives.
        for _ in 0..=s.frames as usize / RX_BATCH {
            if drain(s, ctx)? == 0 {
                break;
            }
        }
        s.count_drops(&ctx.counters);
    }
    Ok(())
}

fn drain(s: &mut Xsk, ctx: &TransportContext) -> anyhow::Result<usize> {
    // SAFETY: the batch's descriptors belong to this socket's UMEM.
    let n = unsafe { s.rx.consume(&mut s.batch) };
    if n == 0 {
        if s.fq.needs_wakeup() {
            s.fq.wakeup(s.rx.fd_mut(), 0)
                .context("waking the fill queue")?;
        }
        return Ok(0);
    }
    let mut batch = s
        .spare
        .take()
        .or_else(|| ctx.recycled.lock().ok().and_then(|r| r.try_recv().ok()))
        .unwrap_or_default();
    batch.reset(unix_us_now(), s.iface);
    for desc in &s.batch[..n] {
        // SAFETY: the kernel handed this frame to us and will not touch it until it is back
        // on the fill queue.
        let data = unsafe { s.umem.data(desc) };
        if !batch.push_received(data.contents()) {
            // Counted apart (malformed records), not as received frames.
            ctx.counters.malformed.fetch_add(1, Ordering::Relaxed);
        }
    }
    let n64 = batch.len() as u64;
    ctx.counters.frames.fetch_add(n64, Ordering::Relaxed);
    if batch.is_empty() {
        // Nothing to hand over (every frame was malformed): the loop is not woken.
        s.spare = Some(batch);
    } else {
        let sent = match ctx.wake.reserve(n64) {
            Some(crossed) => (ctx.frames.try_send(batch))
                .map(|()| crossed)
                .inspect_err(|_| ctx.wake.release(n64)),
            None => Err(TrySendError::Full(batch)),
        };
        match sent {
            Ok(crossed) => ctx.wake.queued(crossed),
            // The queue holds more than the loop takes in a long while: the frames are
            // dropped and counted, the batch kept for its buffers.
            Err(TrySendError::Full(batch)) => {
                ctx.counters.queue_full.fetch_add(n64, Ordering::Relaxed);
                s.spare = Some(batch);
            }
            // The loop is gone (it stopped on an error): nothing takes frames any more.
            Err(TrySendError::Disconnected(_)) => {
                ctx.counters.queue_full.fetch_add(n64, Ordering::Relaxed);
            }
        }
    }
    // SAFETY: the frames were copied out above; give them back to the kernel.
    let mut given = unsafe { s.fq.produce(&s.batch[..n]) };
    while given < n && !ctx.stop.load(Ordering::Relaxed) {
        if s.fq.needs_wakeup() {
            s.fq.wakeup(s.rx.fd_mut(), 10)
                .context("waking the fill queue")?;
        }
        // SAFETY: as above.
        given = unsafe { s.fq.produce(&s.batch[..n]) };
    }
    if s.fq.needs_wakeup() {
        s.fq.wakeup(s.rx.fd_mut(), 0)
            .context("waking the fill queue")?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::{
        split_meta, FrameBatch, LoopWake, Stamp, MAX_QUEUED_BATCHES, MAX_QUEUED_FRAMES, WAKE_FRAMES,
    };
    use xtrail_common::{XskMeta, XSK_META_LEN, XSK_META_MAGIC};

    /// `frame` after a meta as the XDP program writes it.
    fn received(frame: &[u8], addrs: u8, epoch: u8) -> Vec<u8> {
        let meta = XskMeta {
            magic: XSK_META_MAGIC,
            addrs,
            epoch,
            kind: 1,
            _pad: [0; 9],
        };
        let mut v = Vec::with_capacity(XSK_META_LEN + frame.len());
        v.extend_from_slice(&meta.magic.to_ne_bytes());
        v.extend_from_slice(&[meta.addrs, meta.epoch, meta.kind]);
        v.extend_from_slice(&meta._pad);
        v.extend_from_slice(frame);
        v
    }

    #[test]
    fn the_meta_is_taken_off_each_frame_and_kept_as_its_stamp() {
        let data = received(b"frame bytes", 0x81, 7);
        let (stamp, frame) = split_meta(&data).unwrap();
        assert_eq!(
            stamp,
            Stamp {
                addrs: 0x81,
                epoch: 7
            }
        );
        assert_eq!(frame, b"frame bytes");
        assert_eq!(split_meta(&received(b"", 0, 0)).unwrap().1, b"");
        // No meta: too short, or another magic.
        assert!(split_meta(&data[..XSK_META_LEN - 1]).is_none());
        let mut bad = data.clone();
        bad[0] ^= 1;
        assert!(split_meta(&bad).is_none());
        let mut b = FrameBatch::default();
        b.reset(1, 0);
        assert!(b.push_received(&data));
        assert!(!b.push_received(&bad));
        assert_eq!(
            b.frames().collect::<Vec<_>>(),
            [(&b"frame bytes"[..], stamp)]
        );
    }

    #[test]
    fn a_batch_keeps_its_buffers_across_lengths() {
        let mut b = FrameBatch::default();
        let s = |epoch| Stamp { addrs: 0, epoch };
        b.reset(7, 1);
        for (i, f) in [&b"first frame"[..], b"second", b"third one"]
            .into_iter()
            .enumerate()
        {
            b.push(f, s(i as u8));
        }
        assert_eq!(
            b.frames().collect::<Vec<_>>(),
            [
                (&b"first frame"[..], s(0)),
                (b"second", s(1)),
                (b"third one", s(2))
            ]
        );
        let first = b.bufs[0].as_ptr();
        // A shorter batch next: only its frames are seen, every buffer is kept.
        b.reset(8, 0);
        assert!(b.is_empty());
        b.push(b"x", s(9));
        assert_eq!((b.ts_us, b.iface, b.len()), (8, 0, 1));
        assert_eq!(b.frames().collect::<Vec<_>>(), [(&b"x"[..], s(9))]);
        assert_eq!(b.bufs.len(), 3);
        assert_eq!(b.bufs[0].as_ptr(), first, "the buffer was reused");
        // A longer one grows the pool.
        b.reset(9, 0);
        for i in 0..5u8 {
            b.push(&[i; 3], s(i));
        }
        assert_eq!(
            b.frames().map(|(f, s)| (f[0], s.epoch)).collect::<Vec<_>>(),
            [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)]
        );
        assert_eq!(b.bufs.len(), 5);
    }

    /// Whether the eventfd is readable now.
    fn readable(w: &LoopWake) -> bool {
        let mut p = libc::pollfd {
            fd: w.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no wait.
        unsafe { libc::poll(&mut p, 1, 0) };
        p.revents & libc::POLLIN != 0
    }

    #[test]
    fn frames_wake_only_an_idle_loop() {
        let w = LoopWake::new().unwrap();
        // Awake: frames queued write nothing.
        assert_eq!(w.reserve(3), Some(false));
        w.queued(false);
        assert!(!readable(&w));
        // Frames the loop has not taken: no idle poll.
        assert!(!w.arm());
        assert!(!readable(&w));
        assert_eq!(w.reserve(1), Some(false));
        w.queued(false);
        assert!(!readable(&w), "the failed arm left the loop awake");
        // All taken: idle; the next batch wakes it, once.
        w.release(3);
        w.release(1);
        assert!(w.arm());
        assert_eq!(w.reserve(2), Some(false));
        w.queued(false);
        assert!(readable(&w));
        assert_eq!(w.reserve(5), Some(false));
        w.queued(false);
        let mut count = [0u8; 8];
        // SAFETY: reads 8 bytes into a live buffer from the test's own eventfd.
        let n = unsafe { libc::read(w.fd(), count.as_mut_ptr().cast(), count.len()) };
        assert_eq!(
            (n, u64::from_ne_bytes(count)),
            (8, 1),
            "one write for the idle poll"
        );
        assert!(!readable(&w), "the wake-up was read");
        w.disarm(false);
        assert_eq!(w.reserve(1), Some(false));
        w.queued(false);
        assert!(!readable(&w), "awake again: no write");
        for n in [2, 5, 1] {
            w.release(n);
        }
        assert!(w.arm());
        w.disarm(false);
        w.wake_now();
        assert!(
            readable(&w),
            "a thread's end wakes the loop even when awake"
        );
    }

    #[test]
    fn the_queue_is_bounded_in_frames() {
        let w = LoopWake::new().unwrap();
        assert!(w.reserve(MAX_QUEUED_FRAMES - 32).is_some());
        assert_eq!(w.reserve(33), None, "past the bound: nothing reserved");
        assert!(w.reserve(32).is_some());
        assert_eq!(w.reserve(1), None);
        // A send that failed gives its room back, as does a batch taken.
        w.release(32);
        w.release(MAX_QUEUED_FRAMES - 32);
        assert!(w.arm(), "nothing in flight");
        w.disarm(false);
        assert!(w.reserve(MAX_QUEUED_FRAMES).is_some());
        w.release(MAX_QUEUED_FRAMES);
        // One-frame batches: no more than the channel's slots are reserved.
        for _ in 0..MAX_QUEUED_BATCHES {
            assert!(w.reserve(1).is_some());
        }
        assert_eq!(w.reserve(1), None, "every slot of the channel taken");
    }

    #[test]
    fn an_awake_loop_is_woken_per_eighth_of_the_queue() {
        let w = LoopWake::new().unwrap();
        assert_eq!(w.reserve(WAKE_FRAMES - 16), Some(false));
        w.queued(false);
        assert!(!readable(&w), "below an eighth: no write");
        // Across the first multiple: the thread writes once its frames are queued.
        assert_eq!(w.reserve(32), Some(true));
        w.queued(true);
        assert!(readable(&w));
        w.disarm(true);
        assert!(!readable(&w), "the wake-up was read");
        assert_eq!(w.reserve(WAKE_FRAMES - 32), Some(false));
        assert_eq!(w.reserve(16), Some(true), "the second multiple");
        // Taken frames count down: the next crossing is from the new count.
        w.release(WAKE_FRAMES - 16);
        w.release(32);
        w.release(WAKE_FRAMES - 32);
        w.release(16);
        assert_eq!(w.reserve(WAKE_FRAMES), Some(true));
        w.release(WAKE_FRAMES);
    }

    #[test]
    fn an_awake_loop_is_woken_per_eighth_of_the_batches() {
        // Batches of one frame (a trickle over many sockets) would fill the channel's
        // MAX_QUEUED_BATCHES long before WAKE_FRAMES frames: each counts as a slot's share.
        let w = LoopWake::new().unwrap();
        let eighth = MAX_QUEUED_BATCHES as u64 / 8;
        for _ in 1..eighth {
            assert_eq!(w.reserve(1), Some(false));
        }
        assert_eq!(w.reserve(1), Some(true), "an eighth of the batches");
        // Taken batches count down.
        for _ in 0..eighth {
            w.release(1);
        }
        for _ in 1..eighth {
            assert_eq!(w.reserve(1), Some(false));
        }
        assert_eq!(w.reserve(1), Some(true));
    }
}
