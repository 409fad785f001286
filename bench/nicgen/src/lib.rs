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
//!
//! Needs root (or CAP_BPF + CAP_NET_ADMIN). The privileged test is `tests/deliver.rs`.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::Duration;

use aya::maps::{Array, PerCpuArray};
use aya::programs::{ProgramError, TestRun, TestRunAttrs, TestRunOptions, Xdp};
use aya::{Ebpf, EbpfLoader};
use xtrail_bench::pace::Pacer;

/// Largest template frame; as in the XDP program.
pub const MAX_FRAME: usize = 2048;
/// Most flows open at once; as in the XDP program.
pub const MAX_WINDOW: u32 = 4096;
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
    #[error("template {index}: {why}")]
    Template { index: usize, why: &'static str },
    #[error("BPF_PROG_TEST_RUN: {0}")]
    TestRun(std::io::Error),
}

/// Generator settings; layout shared with the XDP program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GenConfig {
    pub ifindex: u32,
    pub templates: u32,
    pub window: u32,
    pub _pad: u32,
}

// SAFETY: repr(C), plain integers, no padding.
unsafe impl aya::Pod for GenConfig {}

/// One template frame; layout shared with the XDP program.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Template {
    pub len: u32,
    pub packets: u32,
    pub l3: u16,
    pub sport_off: u16,
    pub csum_off: u16,
    pub udp: u16,
    pub src_words: [u16; 2],
    pub sport: u16,
    pub ip_csum: u16,
    pub l4_csum: u16,
    pub _pad: u16,
    pub data: [u8; MAX_FRAME],
}

// SAFETY: repr(C), plain integers and bytes; the fields add up to a multiple of 4 bytes.
unsafe impl aya::Pod for Template {}

const _: () = assert!(std::mem::size_of::<Template>() == 28 + MAX_FRAME);

fn word(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

impl Template {
    /// A template from an Ethernet frame. Untagged IPv4 TCP and UDP frames (not fragments)
    /// get per-flow source addresses and ports; anything else is sent as it is. A frame
    /// whose payload is all zeros (background traffic) is sent `flow_packets` times per flow,
    /// any other (DNS, HTTP, TLS) once.
    pub fn from_frame(index: usize, frame: &[u8], flow_packets: u32) -> Result<Template, GenError> {
        let bad = |why| GenError::Template { index, why };
        if frame.len() < 14 || frame.len() > MAX_FRAME {
            return Err(bad("frame shorter than Ethernet or longer than MAX_FRAME"));
        }
        let mut t = Template {
            len: frame.len() as u32,
            packets: 1,
            l3: 0,
            sport_off: 0,
            csum_off: 0,
            udp: 0,
            src_words: [0; 2],
            sport: 0,
            ip_csum: 0,
            l4_csum: 0,
            _pad: 0,
            data: [0; MAX_FRAME],
        };
        t.data[..frame.len()].copy_from_slice(frame);
        let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
        if ethertype != 0x0800 || frame.len() < 34 {
            return Ok(t);
        }
        let l3 = 14usize;
        let ihl = usize::from(frame[l3] & 0x0f) * 4;
        let proto = frame[l3 + 9];
        let frag = u16::from_be_bytes([frame[l3 + 6], frame[l3 + 7]]) & 0x3fff;
        let l4 = l3 + ihl;
        let (csum_at, hdr) = match proto {
            6 => (l4 + 16, 20),
            17 => (l4 + 6, 8),
            _ => return Ok(t),
        };
        if frag != 0 || ihl < 20 || frame.len() < l4 + hdr {
            return Ok(t);
        }
        if frame[l4 + hdr..].iter().all(|&b| b == 0) {
            t.packets = flow_packets.max(1);
        }
        t.l3 = l3 as u16;
        t.sport_off = l4 as u16;
        t.src_words = [word(frame, l3 + 12), word(frame, l3 + 14)];
        t.sport = word(frame, l4);
        t.ip_csum = word(frame, l3 + 10);
        t.l4_csum = word(frame, csum_at);
        t.udp = u16::from(proto == 17);
        // A UDP checksum of 0 means none: leave it so.
        if !(proto == 17 && t.l4_csum == 0) {
            t.csum_off = csum_at as u16;
        }
        Ok(t)
    }
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
    /// Loads the program with `templates` (from [`Template::from_frame`]) to redirect into
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
        })?;
        Ok(())
    }

    /// Sends `count` frames, at `rate` frames per second or flat out, for at most
    /// `max_duration`. Paced runs inject what is due every `tick` (frames leave in bursts of
    /// rate × tick, as from a NIC with interrupt moderation).
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
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    let mut attr = TestAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat,
        ..TestAttr::default()
    };
    // SAFETY: `attr` is a valid, fully initialised `bpf_attr.test` prefix of the size passed;
    // `data_in` points at `frame`, which outlives the call; no output buffers are given.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestAttr,
            std::mem::size_of::<TestAttr>() as libc::c_uint,
        )
    };
    if rc != 0 {
        return Err(GenError::TestRun(std::io::Error::last_os_error()));
    }
    Ok((attr.retval, attr.duration))
}

/// What one array map read costs per packet: (`noop` ns, `array_read` ns), each the
/// kernel's average over `repeat` test runs.
pub fn map_read_cost(repeat: u32) -> Result<(f64, f64), GenError> {
    let mut ebpf = EbpfLoader::new().load(OBJECT)?;
    let frame = [0u8; 64];
    let mut out = [0.0; 2];
    for (i, name) in ["noop", "array_read"].into_iter().enumerate() {
        let p = xdp(&mut ebpf, name)?;
        p.load()?;
        let fd = p
            .fd()?
            .as_fd()
            .try_clone_to_owned()
            .map_err(GenError::TestRun)?;
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

/// Reads a pcap file (as `xtrail_bench::pcapw` writes them) into frames.
pub fn read_pcap(bytes: &[u8]) -> Option<Vec<Vec<u8>>> {
    let magic = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?);
    let le = match magic {
        0xa1b2_c3d4 | 0xa1b2_3c4d => true,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => false,
        _ => return None,
    };
    let u32_at = |at: usize| -> Option<u32> {
        let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
        Some(if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    };
    let mut at = 24;
    let mut frames = Vec::new();
    while at + 16 <= bytes.len() {
        let caplen = u32_at(at + 8)? as usize;
        let data = bytes.get(at + 16..at + 16 + caplen)?;
        frames.push(data.to_vec());
        at += 16 + caplen;
    }
    Some(frames)
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

/// Whether `ifname` processes NAPI in a kernel thread (`/sys/class/net/IF/threaded`), as the
/// calling process sees /sys; `None` when unreadable.
pub fn threaded_napi(ifname: &str) -> Option<bool> {
    std::fs::read_to_string(format!("/sys/class/net/{ifname}/threaded"))
        .ok()
        .map(|s| s.trim() != "0")
}

/// Pins the calling thread to one CPU: the generator numbers flows per CPU, and a paced run
/// that moved between CPUs would leave flows unfinished.
pub use xtrail_bench::gen::pin_to_cpu;
