//! The bench's NIC-like traffic generator.
//!
//! An XDP program (`ebpf/`) is run with `BPF_PROG_RUN` in live-frames mode
//! (`BPF_F_TEST_XDP_LIVE_FRAMES`): the kernel runs it over page-pool frames in batches, and
//! what it redirects into a veth arrives at the peer end as `xdp_frame`s, the way a NIC
//! driver delivers them (no skb, no veth skb-to-xdp copy). Per frame the program picks a
//! template, gives it the source address and port of one of `window` interleaved flows
//! (each flow sends the template's packet count, 8 by default for background traffic), and
//! redirects it. [`Generator::run`] paces the runs at a fixed rate or sends flat out.
//!
//! Also here: [`test_run`], `BPF_PROG_TEST_RUN` on any program fd (the sensor's, found by
//! id), and [`map_read_cost`], what one array map read costs per packet.
//! [`jit`]: a loaded program's JIT image and `perf` samples counted per instruction of it.
//!
//! Needs root (or CAP_BPF + CAP_NET_ADMIN). The privileged test is `tests/deliver.rs`.

pub mod jit;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;
use std::time::Duration;

use aya::maps::{Array, PerCpuArray};
use aya::programs::{ProgramError, TestRun, TestRunAttrs, TestRunOptions, Xdp};
use aya::{Ebpf, EbpfLoader};
use xtrail_bench::pace::Pacer;
pub use xtrail_nicgen_common::{GenConfig, Template, MAX_FRAME, MAX_WINDOW};

/// Frames per batch of a live-frames run (the kernel's default is 64).
pub const DEFAULT_BATCH: u32 = 64;

/// Failures of the generator.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error("loading the generator's XDP program: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("generator program: {0}")]
    Program(#[from] ProgramError),
    #[error("generator map: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("no program or map named {0} in the generator's object")]
    Missing(&'static str),
    #[error("no interface {0} in this namespace")]
    NoInterface(String),
    #[error("template {index}: {why}")]
    Template { index: usize, why: &'static str },
    #[error("BPF_PROG_TEST_RUN: {0}")]
    TestRun(std::io::Error),
    /// Some kernels refuse `BPF_F_TEST_XDP_LIVE_FRAMES` (seen on a 6.18.44 build: EPERM to
    /// root with every capability but CAP_SYS_RESOURCE, even for a program that only returns,
    /// while test runs without the flag work: [`live_frames_supported`] checks both).
    #[error(
        "this kernel refuses BPF_PROG_RUN in live-frames mode (EPERM): NIC-like delivery by \
         live frames is not available here (through `xtrail-nicgen relay` it is)"
    )]
    LiveFramesRefused,
}

impl GenError {
    /// A live-frames run's error: EPERM (the program loaded, so not for want of privilege)
    /// becomes [`GenError::LiveFramesRefused`].
    fn from_live_run(e: ProgramError) -> GenError {
        match &e {
            ProgramError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::EPERM) => {
                GenError::LiveFramesRefused
            }
            _ => GenError::Program(e),
        }
    }
}

/// Whether this kernel runs XDP programs in live-frames mode: one run of `drop_all` (which
/// sends nothing anywhere). `Ok(false)` when it refuses the mode but runs the same program
/// without it; an error when it refuses test runs altogether.
pub fn live_frames_supported() -> Result<bool, GenError> {
    let mut ebpf = EbpfLoader::new().load(OBJECT)?;
    let prog = xdp(&mut ebpf, "drop_all")?;
    prog.load()?;
    let data = [0u8; 64];
    match prog
        .test_run(TestRunOptions {
            data_in: Some(&data),
            repeat: 1,
            attrs: TestRunAttrs::new().xdp_live_frames(DEFAULT_BATCH),
            ..TestRunOptions::new()
        })
        .map_err(GenError::from_live_run)
    {
        Ok(_) => Ok(true),
        Err(GenError::LiveFramesRefused) => {
            let fd = prog
                .fd()?
                .as_fd()
                .try_clone_to_owned()
                .map_err(GenError::TestRun)?;
            test_run(fd.as_fd(), &data, 1)?;
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Template frames from Ethernet frames ([`Template::from_frame`]), numbered for errors;
/// consecutive segments of one TCP stream linked into one flow ([`Template::link`]).
pub fn templates(frames: &[Vec<u8>], flow_packets: u32) -> Result<Vec<Template>, GenError> {
    let mut templates = frames
        .iter()
        .enumerate()
        .map(|(index, f)| {
            Template::from_frame(f, flow_packets)
                .map_err(|e| GenError::Template { index, why: e.0 })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Template::link(&mut templates);
    Ok(templates)
}

/// The frames of a pcap or pcapng file, in order.
pub fn read_pcap(path: &Path) -> Result<Vec<Vec<u8>>, xtrail_detect::pcap::PcapError> {
    let mut cap = xtrail_detect::pcap::open(path)?;
    let mut frames = Vec::new();
    while let Some(p) = cap.next_packet()? {
        frames.push(p.data.to_vec());
    }
    Ok(frames)
}

/// What a generator run sent.
#[derive(Clone, Copy, Debug, Default)]
pub struct GenReport {
    /// Frames the program wrote and redirected (its own counter).
    pub sent: u64,
    /// `BPF_PROG_RUN` calls made.
    pub calls: u64,
    pub elapsed: Duration,
}

impl GenReport {
    pub fn pps(&self) -> f64 {
        xtrail_bench::pace::rate(self.sent, self.elapsed)
    }
}

/// The loaded generator, ready to send into one interface.
pub struct Generator {
    ebpf: Ebpf,
    frame_len: usize,
    batch: u32,
}

/// The generator's object, built by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xtrail-nicgen-xdp"));

fn xdp<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, GenError> {
    let p: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or(GenError::Missing(name))?
        .try_into()?;
    Ok(p)
}

impl Generator {
    /// Loads the program with `templates` (from [`templates`]) to redirect into
    /// interface `ifindex` of the calling thread's network namespace; `window` flows are
    /// open at once.
    /// Flows are numbered from `first_flow` (a run that must not repeat an earlier run's
    /// flows starts further on).
    pub fn load(
        ifindex: u32,
        templates: &[Template],
        window: u32,
        first_flow: u64,
    ) -> Result<Generator, GenError> {
        if templates.is_empty() {
            return Err(GenError::Template {
                index: 0,
                why: "no templates",
            });
        }
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("TEMPLATES", templates.len() as u32)
            .load(OBJECT)?;
        {
            let mut t: Array<_, Template> = Array::try_from(
                ebpf.map_mut("TEMPLATES")
                    .ok_or(GenError::Missing("TEMPLATES"))?,
            )?;
            for (i, tmpl) in templates.iter().enumerate() {
                t.set(i as u32, tmpl, 0)?;
            }
            let mut c: Array<_, GenConfig> =
                Array::try_from(ebpf.map_mut("CONFIG").ok_or(GenError::Missing("CONFIG"))?)?;
            c.set(
                0,
                GenConfig {
                    ifindex,
                    templates: templates.len() as u32,
                    window: window.clamp(1, MAX_WINDOW),
                    _pad: 0,
                },
                0,
            )?;
        }
        {
            let mut c: PerCpuArray<_, u64> = PerCpuArray::try_from(
                ebpf.map_mut("COUNTERS")
                    .ok_or(GenError::Missing("COUNTERS"))?,
            )?;
            let cpus = aya::util::nr_cpus().map_err(|(_, e)| GenError::TestRun(e))?;
            c.set(
                1,
                aya::maps::PerCpuValues::try_from(vec![first_flow; cpus])
                    .map_err(GenError::TestRun)?,
                0,
            )?;
        }
        xdp(&mut ebpf, "nicgen")?.load()?;
        let frame_len = templates.iter().map(|t| t.len as usize).max().unwrap_or(64);
        Ok(Generator {
            ebpf,
            frame_len,
            batch: DEFAULT_BATCH,
        })
    }

    /// Frames per live-frames batch (the kernel caps it at 256).
    pub fn with_batch(mut self, batch: u32) -> Generator {
        self.batch = batch.clamp(1, 256);
        self
    }

    /// Frames written so far, over all CPUs.
    pub fn written(&self) -> Result<u64, GenError> {
        let map = self
            .ebpf
            .map("COUNTERS")
            .ok_or(GenError::Missing("COUNTERS"))?;
        let c: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
        Ok(c.get(&0, 0)?.iter().sum())
    }

    /// One `BPF_PROG_RUN` in live-frames mode: `count` frames, sent before it returns.
    pub fn inject(&mut self, count: u32) -> Result<(), GenError> {
        let data = vec![0u8; self.frame_len];
        let batch = self.batch;
        let prog = xdp(&mut self.ebpf, "nicgen")?;
        prog.test_run(TestRunOptions {
            data_in: Some(&data),
            repeat: count,
            attrs: TestRunAttrs::new().xdp_live_frames(batch),
            ..TestRunOptions::new()
        })
        .map_err(GenError::from_live_run)?;
        Ok(())
    }

    /// Sends `count` frames, at `rate` frames per second or flat out, for at most
    /// `max_duration`. Paced runs inject what is due by now and sleep `tick` once caught up
    /// (after a sleep a burst of about rate × tick; at high rates the calls between carry a
    /// few frames each: the AF_PACKET generators, `xtrail_bench::gen::blast_flows` and
    /// `blast`, send whole tick bursts since 2026-12-07, this one not yet: it cannot run on
    /// the kernel of that change).
    pub fn run(
        &mut self,
        count: u64,
        rate: Option<u64>,
        tick: Duration,
        max_duration: Duration,
    ) -> Result<GenReport, GenError> {
        let before = self.written()?;
        let pacer = Pacer::start(rate);
        let mut report = GenReport::default();
        let mut queued = 0u64;
        // Flat out: large calls; each returns after its frames are through.
        let chunk = 16_384u64;
        while queued < count && pacer.elapsed() < max_duration {
            let due = pacer.due(count);
            if due <= queued {
                std::thread::sleep(tick);
                continue;
            }
            let n = (due - queued).min(if pacer.is_paced() { chunk * 4 } else { chunk });
            self.inject(n as u32)?;
            queued += n;
            report.calls += 1;
        }
        report.elapsed = pacer.elapsed();
        report.sent = self.written()? - before;
        Ok(report)
    }
}

/// `BPF_PROG_TEST_RUN` of any XDP program fd over `frame`, `repeat` times (not live):
/// returns the program's verdict and the kernel's average run time in nanoseconds.
pub fn test_run(prog: BorrowedFd<'_>, frame: &[u8], repeat: u32) -> Result<(u32, u32), GenError> {
    // The kernel's `bpf_attr.test` (include/uapi/linux/bpf.h).
    #[repr(C)]
    #[derive(Default)]
    struct TestAttr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        _pad: u32,
    }
    const BPF_PROG_TEST_RUN: u32 = 10;
    let mut attr = TestAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat,
        ..TestAttr::default()
    };
    // SAFETY: `attr` is a valid, fully initialised `bpf_attr.test` prefix of the size passed;
    // `data_in` points at `frame`, which outlives the call; no output buffers are given.
    unsafe { xtrail_common::sys::bpf(BPF_PROG_TEST_RUN, &mut attr) }.map_err(GenError::TestRun)?;
    Ok((attr.retval, attr.duration))
}

/// The test-run floor: a loaded XDP program that only returns `XDP_PASS`, run beside each
/// measurement so that a figure net of it is paired with a floor taken at the same moment.
pub struct Floor {
    fd: std::os::fd::OwnedFd,
    _ebpf: Ebpf,
}

impl Floor {
    pub fn load() -> Result<Floor, GenError> {
        let mut ebpf = EbpfLoader::new().load(OBJECT)?;
        let fd = loaded_fd(&mut ebpf, "noop")?;
        Ok(Floor { fd, _ebpf: ebpf })
    }

    /// The loaded program.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The kernel's average ns per run of the floor over `repeat` runs of `frame`.
    pub fn run(&self, frame: &[u8], repeat: u32) -> Result<u32, GenError> {
        test_run(self.fd.as_fd(), frame, repeat).map(|(_, d)| d)
    }
}

/// `drop_all` attached (driver mode) to interface `iface` of this namespace; detached when
/// dropped.
pub struct Sink {
    _ebpf: Ebpf,
}

impl Sink {
    pub fn attach(iface: &str) -> Result<Sink, GenError> {
        let mut ebpf = EbpfLoader::new().load(OBJECT)?;
        attach(&mut ebpf, "drop_all", iface)?;
        Ok(Sink { _ebpf: ebpf })
    }
}

/// `relay` attached (driver mode) to interface `from` of this namespace, redirecting every
/// frame that arrives there to interface `to` of the same namespace; detached when dropped.
/// Frames sent into `from`'s veth peer by AF_PACKET reach `to`'s peer as `xdp_frame`s, as
/// from a NIC driver (`to`'s peer needs NAPI: an XDP program or GRO on): NIC-like delivery
/// for the receiver where live frames are refused, the skb-to-XDP conversion paid at `from`.
pub struct Relay {
    _ebpf: Ebpf,
}

impl Relay {
    pub fn attach(from: &str, to: &str) -> Result<Relay, GenError> {
        let to_index = if_index(to)?;
        let mut ebpf = EbpfLoader::new().load(OBJECT)?;
        let mut target: Array<_, u32> = Array::try_from(
            ebpf.map_mut("RELAY_TO")
                .ok_or(GenError::Missing("RELAY_TO"))?,
        )?;
        target.set(0, to_index, 0)?;
        attach(&mut ebpf, "relay", from)?;
        Ok(Relay { _ebpf: ebpf })
    }
}

/// Loads the object's XDP program `name` and attaches it to `iface` in driver mode (until
/// `ebpf` is dropped).
fn attach(ebpf: &mut Ebpf, name: &'static str, iface: &str) -> Result<(), GenError> {
    let p = xdp(ebpf, name)?;
    p.load()?;
    p.attach(iface, aya::programs::XdpMode::Driver)?;
    Ok(())
}

/// The index of interface `name` in this namespace.
pub fn if_index(name: &str) -> Result<u32, GenError> {
    let c = std::ffi::CString::new(name).map_err(|_| GenError::NoInterface(name.to_string()))?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(GenError::NoInterface(name.to_string())),
        i => Ok(i),
    }
}

/// Loads the object's XDP program `name` and returns an owned fd of it.
fn loaded_fd(ebpf: &mut Ebpf, name: &'static str) -> Result<std::os::fd::OwnedFd, GenError> {
    let p = xdp(ebpf, name)?;
    p.load()?;
    p.fd()?
        .as_fd()
        .try_clone_to_owned()
        .map_err(GenError::TestRun)
}

/// What one array map read costs per packet: (`noop` ns, `array_read` ns), each the
/// kernel's average over `repeat` test runs.
pub fn map_read_cost(repeat: u32) -> Result<(f64, f64), GenError> {
    let mut ebpf = EbpfLoader::new().load(OBJECT)?;
    let frame = [0u8; 64];
    let mut out = [0.0; 2];
    for (i, name) in ["noop", "array_read"].into_iter().enumerate() {
        let fd = loaded_fd(&mut ebpf, name)?;
        // Several rounds; the lowest average is the least disturbed by other work.
        let best = (0..5)
            .map(|_| test_run(fd.as_fd(), &frame, repeat).map(|(_, d)| d))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .min()
            .unwrap_or(0);
        out[i] = f64::from(best);
    }
    Ok((out[0], out[1]))
}

/// Run count and total run time (`bpf_stats`, needs `kernel.bpf_stats_enabled=1`) of a
/// loaded program.
pub fn prog_stats(id: u32) -> Option<(u64, u64)> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .map(|p| (p.run_count(), p.run_time().as_nanos() as u64))
}

/// Turns GRO on or off on `ifname` in the calling thread's network namespace (what
/// `ethtool -K IF gro on` does, through the `SIOCETHTOOL` ioctl). On a veth, GRO on gives the
/// receiving end its NAPI context without an XDP program: frames redirected into its peer
/// are then received instead of dropped.
pub fn set_gro(ifname: &str, on: bool) -> std::io::Result<()> {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    const ETHTOOL_SGRO: u32 = 0x0000_002c;
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    if ifname.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    let mut value = EthtoolValue {
        cmd: ETHTOOL_SGRO,
        data: u32::from(on),
    };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut value,
        _pad: [0; 16],
    };
    req.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
    // SAFETY: a plain socket(2); the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: `req` is a valid ifreq whose data points at `value`; both outlive the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), SIOCETHTOOL, &mut req as *mut IfReq) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Pins the calling thread to one CPU: the generator numbers flows per CPU, and a paced run
/// that moved between CPUs would leave flows unfinished.
pub use xtrail_bench::gen::pin_to_cpu;
