//! Loading, configuring and attaching the XDP program.

use std::time::Duration;

use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use aya::programs::{ProgramError, TestRun, TestRunOptions, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use xtrail_common::{config_flags, maps as names, mode, Config, XSK_MAX_IFACES, XSK_MAX_QUEUES};
use xtrail_detect::trails::IpTrails;

use crate::maps::{self, FillError, FillReport};
use crate::stats::Counters;
use crate::trail_maps::{Capacity, KernelTrailSets, PrefilterHalf, TrailMapError};

/// Program name in the object (the `#[xdp]` function).
const PROGRAM: &str = "xtrail_xdp";
/// The object's second program: sends the current CPU's flow-start batch (never attached,
/// run by [`Sensor::flush_flows`]).
const FLUSH_PROGRAM: &str = "xtrail_flush";

/// The object's XDP program `name`.
fn xdp_program<'e>(ebpf: &'e mut Ebpf, name: &'static str) -> Result<&'e mut Xdp, LoadError> {
    ebpf.program_mut(name)
        .ok_or(LoadError::MissingProgram(name))?
        .try_into()
        .map_err(LoadError::Program)
}

/// How the program treats packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// On the router: every packet continues to the stack.
    #[default]
    Inline,
    /// On a SPAN/TAP port the sensor owns: uninteresting packets are dropped early.
    Mirror,
}

/// Which XDP attach mode to ask the kernel for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AttachMode {
    /// Driver mode, falling back to generic (skb) mode with a warning.
    #[default]
    Auto,
    /// Native driver mode only.
    Driver,
    /// Generic mode only.
    Skb,
}

/// Options for [`Sensor::load`].
#[derive(Clone, Debug)]
pub struct SensorOptions {
    pub mode: Mode,
    /// Drop packets that hit an IP trail (inline only).
    pub enforce: bool,
    /// Window in which repeats of the same hit are suppressed in the kernel.
    pub suppress: Duration,
    /// Program diagnostics through aya-log (0 off, 1 debug).
    pub ebpf_log_level: u8,
    /// Hand DNS, HTTP and TLS ClientHello packets to userspace.
    pub handoff: bool,
    /// TCP ports whose responses are handed over as HTTP (requests are recognised by their
    /// method on any port).
    pub http_ports: Vec<u16>,
    /// Send flow-start records (scan heuristics); repeats within `flow_window` are not sent.
    pub flows: bool,
    /// How long a flow start stands for its repeats (by default 30 s, replay's window).
    pub flow_window: Duration,
    /// Size of the `HITS` ring buffer in bytes (a power of two, at least a page); tests
    /// shrink it to fill it.
    pub hit_ring_bytes: u32,
    /// Sizes of the `PAYLOADS` and `FLOWS` ring buffers in bytes (powers of two, at least a
    /// page; `run --payload-ring-kib/--flow-ring-kib`).
    pub payload_ring_bytes: u32,
    pub flow_ring_bytes: u32,
    /// AF_XDP socket slots per interface in `XSKS` (the largest receive-queue count of the
    /// interfaces, mirror mode); the map holds `XSK_MAX_IFACES` times this many.
    pub xsk_queues: u32,
}

/// The `HITS` ring buffer's default size (512 KiB).
pub const DEFAULT_HIT_RING_BYTES: u32 = xtrail_common::ring::HITS_BYTES;

/// Maltrail's HTTP ports.
pub const DEFAULT_HTTP_PORTS: &[u16] = &[80, 8080, 8000, 3128, 1080, 8118];

impl Default for SensorOptions {
    fn default() -> Self {
        SensorOptions {
            mode: Mode::Inline,
            enforce: false,
            suppress: Duration::from_secs(1),
            ebpf_log_level: 0,
            handoff: true,
            http_ports: DEFAULT_HTTP_PORTS.to_vec(),
            flows: true,
            flow_window: Duration::from_nanos(xtrail_common::flow::REPEAT_WINDOW_NS),
            hit_ring_bytes: DEFAULT_HIT_RING_BYTES,
            payload_ring_bytes: xtrail_common::ring::PAYLOADS_BYTES,
            flow_ring_bytes: xtrail_common::ring::FLOWS_BYTES,
            xsk_queues: 1,
        }
    }
}

/// Loading and attaching failures.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "--enforce needs --mode inline: a mirror port carries copies, there is nothing to block"
    )]
    EnforceNeedsInline,
    #[error("loading the XDP object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the XDP object has no program {0}")]
    MissingProgram(&'static str),
    #[error("the XDP object has no map {0}")]
    MissingMap(&'static str),
    #[error("loading the XDP program into the kernel: {0}")]
    Program(#[source] ProgramError),
    #[error("filling the trail maps: {0}")]
    Fill(#[from] FillError),
    #[error("writing the program's configuration: {0}")]
    Config(#[source] aya::maps::MapError),
    #[error("{0}")]
    FlowBatches(#[from] maps::FlowBatchError),
    #[error("pinning the thread to a CPU to flush its flow starts: {0}")]
    Affinity(#[source] std::io::Error),
    #[error("unknown interface {0}")]
    UnknownInterface(String),
    #[error("trail maps: {0}")]
    TrailMaps(#[from] TrailMapError),
    #[error("attaching XDP to {iface} in {mode} mode was refused: {source}")]
    Attach {
        iface: String,
        mode: &'static str,
        #[source]
        source: ProgramError,
    },
}

/// One attachment.
#[derive(Debug)]
pub struct Attachment {
    pub iface: String,
    pub ifindex: u32,
    /// `driver` or `skb`.
    pub mode: &'static str,
    link: aya::programs::xdp::XdpLinkId,
}

/// The loaded program, its maps and its attachments.
pub struct Sensor {
    ebpf: Ebpf,
    pub fill: FillReport,
    /// Size of each trail map (both sets): reloads must fit in it.
    pub capacity: Capacity,
    /// What the prefilter halves hold after the start fill (handed to [`KernelTrailSets`]).
    prefilter: [PrefilterHalf; 2],
    /// The `TRAIL_SET` value the start wrote; the reloader's handle ([`Sensor::trail_sets`])
    /// goes on from its epoch.
    selected: u32,
    pub config: Config,
    attachments: Vec<Attachment>,
}

/// The loader [`prepare`] is making on another thread, or has made ([`btf_freed`]).
enum Prepared {
    Making(std::thread::JoinHandle<EbpfLoader<'static>>),
    Made(Box<EbpfLoader<'static>>),
}

/// The loader [`prepare`] makes for the next [`Sensor::load`].
static PREPARED: std::sync::Mutex<Option<Prepared>> = std::sync::Mutex::new(None);

/// Starts making the next [`Sensor::load`]'s loader on another thread: `EbpfLoader::new`
/// reads and parses the kernel's BTF (5 MB read, ~18 MB of heap at its peak, ~20 ms; aya
/// 0.14 has no way to make a loader without it). The program needs no CO-RE relocation, so
/// the parsed BTF is dropped there and then, and its heap trimmed. The thread then probes
/// the kernel's BPF features (aya does it once, at the first load: a dozen small program
/// and map loads, under 0.5 ms of CPU by the start phases). [`btf_freed`] waits for it
/// before the start builds anything big, so the parse's peak is not added to the trail
/// set's and the detector's.
pub fn prepare() {
    let handle = std::thread::Builder::new()
        .name("xtrail-btf".into())
        .spawn(|| {
            let mut loader = EbpfLoader::new();
            loader.btf(None);
            // The parsed BTF's freed heap goes back to the system now, not when the
            // allocator next trims its top.
            crate::reload::release_freed_memory();
            crate::startup::mark("btf_parsed");
            let _ = aya::features();
            crate::startup::mark("bpf_features_probed");
            crate::startup::thread_cpu("btf_and_features");
            loader
        });
    if let (Ok(h), Ok(mut slot)) = (handle, PREPARED.lock()) {
        *slot = Some(Prepared::Making(h));
    }
}

/// Waits until [`prepare`]'s loader is made (the BTF parse over and its memory freed).
/// Starting the trail set and the detector only then lowers the start's peak RSS by the
/// parse's ~18 MB and costs no time: alone on a core the parse takes ~20 ms, beside them
/// 50-70 ms (2026-12-04, 2 cores). A second call, or one without [`prepare`], does nothing.
pub fn btf_freed() {
    let Ok(mut slot) = PREPARED.lock() else {
        return;
    };
    if let Some(Prepared::Making(h)) = slot.take() {
        *slot = h.join().ok().map(|l| Prepared::Made(Box::new(l)));
    }
}

/// The loader [`prepare`] made, or a new one.
fn ebpf_loader() -> EbpfLoader<'static> {
    let prepared = PREPARED.lock().ok().and_then(|mut s| s.take());
    let loader = match prepared {
        Some(Prepared::Making(h)) => h.join().ok(),
        Some(Prepared::Made(l)) => Some(*l),
        None => None,
    };
    loader.unwrap_or_default()
}

/// The packet program's `verified_insns`.
fn verified_instructions(ebpf: &Ebpf) -> Option<u32> {
    ebpf.program(PROGRAM)
        .and_then(|p| p.info().ok())
        .and_then(|i| i.verified_instruction_count())
}

/// The interface index of `name`, if it exists.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: c is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

/// The interface name of `index`, if it exists.
pub fn ifname(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

impl Sensor {
    /// Loads the program with maps sized for `ip`, fills them and writes the configuration.
    /// Nothing is attached yet.
    pub fn load(ip: &IpTrails, opts: &SensorOptions) -> Result<Sensor, LoadError> {
        if opts.enforce && opts.mode != Mode::Inline {
            return Err(LoadError::EnforceNeedsInline);
        }
        // Room for two sets (a reload fills one beside the other), with headroom to grow.
        let capacity = Capacity::for_set(ip);
        let started = std::time::Instant::now();
        let mut loader = ebpf_loader();
        let btf_wait = started.elapsed();
        // The program has no CO-RE relocations (it reads no kernel structure), so the kernel
        // BTF `EbpfLoader::new` parsed is not needed: dropping it here frees its memory
        // before the maps are created and filled. (aya 0.14 parses it in `new` regardless;
        // `prepare` does that on another thread.)
        loader.btf(None);
        // A ring nothing writes to gets one page: userspace maps every ring's data twice,
        // so a ring costs twice its size in RSS.
        // SAFETY: sysconf has no preconditions.
        let page = u32::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let ring = |on: bool, bytes: u32| if on { bytes.max(page) } else { page };
        loader.map_max_entries(names::PAYLOADS, ring(opts.handoff, opts.payload_ring_bytes));
        loader.map_max_entries(names::FLOWS, ring(opts.flows, opts.flow_ring_bytes));
        crate::startup::mark("ebpf_loader_ready");
        let mut ebpf = loader
            .map_max_entries(names::IPV4_TABLE, capacity.v4_elements())
            .map_max_entries(names::IPPORT4_TABLE, capacity.ipport4_elements())
            .map_max_entries(names::IPV6_TRAILS, capacity.ipv6)
            .map_max_entries(names::IPPORT_TRAILS, capacity.ipport)
            .map_max_entries(names::IPV4_CIDRS, capacity.cidr4)
            .map_max_entries(names::IPV6_CIDRS, capacity.cidr6)
            .map_max_entries(names::HITS, opts.hit_ring_bytes)
            .map_max_entries(
                names::XSKS,
                XSK_MAX_IFACES * opts.xsk_queues.clamp(1, XSK_MAX_QUEUES),
            )
            .load(crate::XDP_OBJECT)?;
        let created = started.elapsed();
        crate::startup::mark("maps_created");
        // The maps exist: trail set 0 (made the active one below) is filled while the kernel
        // verifies the program on another thread (neither needs the other).
        let mut sets = KernelTrailSets::of(&ebpf, 0, capacity)?
            .with_prefilter([PrefilterHalf::Zero, PrefilterHalf::Zero]);
        let (verified, filled) = std::thread::scope(|s| {
            let verified = s.spawn(|| -> Result<std::time::Duration, LoadError> {
                for name in [PROGRAM, FLUSH_PROGRAM] {
                    xdp_program(&mut ebpf, name)?
                        .load()
                        .map_err(LoadError::Program)?;
                }
                crate::startup::mark("program_verified");
                crate::startup::thread_cpu("verifier");
                Ok(started.elapsed())
            });
            let filled = sets.fill(0, ip).map(|f| (f, started.elapsed()));
            crate::startup::mark("set0_filled");
            crate::startup::thread_cpu("main_to_set0_filled");
            (verified.join(), filled)
        });
        let verified = verified.unwrap_or_else(|p| std::panic::resume_unwind(p))?;
        let ((fill, _), filled) = filled?;
        log::debug!(
            "program load: BTF loader ready at {:.3}s, maps created at {:.3}s, trail set 0 filled at {:.3}s, program verified at {:.3}s ({} instructions verified)",
            btf_wait.as_secs_f64(),
            created.as_secs_f64(),
            filled.as_secs_f64(),
            verified.as_secs_f64(),
            verified_instructions(&ebpf).unwrap_or(0)
        );
        let mut flags = 0;
        if opts.enforce {
            flags |= config_flags::ENFORCE;
        }
        if fill.cidr4 > 0 {
            flags |= config_flags::HAVE_CIDR4;
        }
        if fill.cidr6 > 0 {
            flags |= config_flags::HAVE_CIDR6;
        }
        if fill.ipport > 0 {
            flags |= config_flags::HAVE_IPPORT;
        }
        if fill.ipv6 > 0 {
            flags |= config_flags::HAVE_IPV6;
        }
        if fill.prefilter {
            flags |= config_flags::PREFILTER4;
        }
        if opts.handoff {
            flags |= config_flags::HANDOFF;
        }
        if opts.flows {
            flags |= config_flags::FLOWS;
        }
        maps::fill_http_ports(&mut ebpf, &opts.http_ports)?;
        let config = Config {
            mode: match opts.mode {
                Mode::Inline => mode::INLINE,
                Mode::Mirror => mode::MIRROR,
            },
            log_level: opts.ebpf_log_level,
            _pad: [0; 2],
            flags,
            suppress_ns: u64::try_from(opts.suppress.as_nanos()).unwrap_or(u64::MAX),
            flow_ns: u64::try_from(opts.flow_window.as_nanos()).unwrap_or(u64::MAX),
            xsk_queues: opts.xsk_queues,
            // Reader wake-ups per an eighth of each ring (at most the default thresholds).
            wake_shifts: xtrail_common::wake::shifts(
                ring(opts.handoff, opts.payload_ring_bytes),
                opts.hit_ring_bytes,
                ring(opts.flows, opts.flow_ring_bytes),
            ),
            // The workspace's random numbers (seeded from the OS), one draw per load.
            hash_seed: fastrand::u64(..),
        };
        let mut sensor = Sensor {
            ebpf,
            fill,
            capacity,
            prefilter: sets.prefilter().clone(),
            selected: 0,
            config,
            attachments: Vec::new(),
        };
        sensor.write_config(config)?;
        // Set 0 is filled: make it the one packets use.
        let flags = sensor.fill.set_flags();
        let mut sets = sensor.trail_sets()?;
        sets.select(0, flags)?;
        sensor.selected = sets.selected();
        Ok(sensor)
    }

    /// The `TRAIL_SET` value the start wrote (set 0 at its first epoch).
    pub fn selected(&self) -> u32 {
        self.selected
    }

    /// The two trail map sets, for reloads on another thread (set 0 is active after
    /// [`Sensor::load`]; a [`KernelTrailSets`] tracks switches itself from then on).
    pub fn trail_sets(&self) -> Result<KernelTrailSets, LoadError> {
        Ok(
            KernelTrailSets::of(&self.ebpf, self.selected, self.capacity)?
                .with_prefilter(self.prefilter.clone()),
        )
    }

    /// Replaces the program's configuration.
    pub fn write_config(&mut self, config: Config) -> Result<(), LoadError> {
        let map = self
            .ebpf
            .map_mut(names::CONFIG)
            .ok_or(LoadError::MissingMap(names::CONFIG))?;
        let mut array: Array<&mut MapData, Config> =
            Array::try_from(map).map_err(LoadError::Config)?;
        array.set(0, config, 0).map_err(LoadError::Config)?;
        self.config = config;
        Ok(())
    }

    fn program(&mut self) -> Result<&mut Xdp, LoadError> {
        xdp_program(&mut self.ebpf, PROGRAM)
    }

    /// Attaches to `iface`; in [`AttachMode::Auto`], driver mode first, then generic mode
    /// with a warning.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<&Attachment, LoadError> {
        let ifindex = ifindex(iface).ok_or_else(|| LoadError::UnknownInterface(iface.into()))?;
        let program = self.program()?;
        let tries: &[(XdpMode, &'static str)] = match mode {
            AttachMode::Auto => &[(XdpMode::Driver, "driver"), (XdpMode::Skb, "skb")],
            AttachMode::Driver => &[(XdpMode::Driver, "driver")],
            AttachMode::Skb => &[(XdpMode::Skb, "skb")],
        };
        let mut last = None;
        for (i, (xdp_mode, name)) in tries.iter().enumerate() {
            match program.attach(iface, *xdp_mode) {
                Ok(link) => {
                    if i > 0 {
                        log::warn!(
                            "{iface}: driver-mode XDP refused ({}); running in generic (skb) mode, which is slower",
                            last.as_ref().map(|e: &ProgramError| e.to_string()).unwrap_or_default()
                        );
                    }
                    self.attachments.push(Attachment {
                        iface: iface.to_string(),
                        ifindex,
                        mode: name,
                        link,
                    });
                    return self
                        .attachments
                        .last()
                        .ok_or(LoadError::MissingProgram(PROGRAM));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(LoadError::Attach {
            iface: iface.to_string(),
            mode: tries.last().map(|t| t.1).unwrap_or("driver"),
            source: last.unwrap_or(ProgramError::NotLoaded),
        })
    }

    /// Current attachments.
    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    /// Detaches from every interface.
    pub fn detach_all(&mut self) {
        let attachments = std::mem::take(&mut self.attachments);
        if let Ok(program) = self.program() {
            for a in attachments {
                if let Err(e) = program.detach(a.link) {
                    log::warn!("detaching XDP from {}: {e}", a.iface);
                }
            }
        }
    }

    /// Takes the hit ring buffer (once).
    pub fn take_hits(&mut self) -> Result<RingBuf<MapData>, LoadError> {
        let map = self
            .ebpf
            .take_map(names::HITS)
            .ok_or(LoadError::MissingMap(names::HITS))?;
        RingBuf::try_from(map).map_err(LoadError::Config)
    }

    /// Takes the flow-start ring buffer, once.
    pub fn take_flows(&mut self) -> Result<RingBuf<MapData>, LoadError> {
        let map = self
            .ebpf
            .take_map(names::FLOWS)
            .ok_or(LoadError::MissingMap(names::FLOWS))?;
        RingBuf::try_from(map).map_err(LoadError::Config)
    }

    /// Takes the flow starts the program's per-CPU batches still hold, emptying them
    /// ([`maps::take_flow_batches`]): only once the program cannot run (after
    /// [`Sensor::detach_all`], or between test runs).
    pub fn take_pending_flows(&mut self) -> Result<Vec<xtrail_common::FlowRecord>, LoadError> {
        let map = self
            .ebpf
            .map_mut(names::FLOW_BATCH)
            .ok_or(LoadError::MissingMap(names::FLOW_BATCH))?;
        Ok(maps::take_flow_batches(map)?)
    }

    /// Takes the payload ring buffer (inline-mode copies of DNS/HTTP/TLS packets), once.
    pub fn take_payloads(&mut self) -> Result<RingBuf<MapData>, LoadError> {
        let map = self
            .ebpf
            .take_map(names::PAYLOADS)
            .ok_or(LoadError::MissingMap(names::PAYLOADS))?;
        RingBuf::try_from(map).map_err(LoadError::Config)
    }

    /// Starts aya-log forwarding of the program's diagnostics (when it logs at all).
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        aya_log::EbpfLogger::init(&mut self.ebpf).ok()
    }

    /// Reads the per-CPU counters.
    pub fn counters(&self) -> Result<Counters, LoadError> {
        let map = self
            .ebpf
            .map(names::STATS)
            .ok_or(LoadError::MissingMap(names::STATS))?;
        let array: PerCpuArray<&MapData, xtrail_common::PerCpuStats> =
            PerCpuArray::try_from(map).map_err(LoadError::Config)?;
        Counters::read(&array).map_err(LoadError::Config)
    }

    /// How often the program ran and for how long in total, as the kernel counts it
    /// (zero unless `kernel.bpf_stats_enabled` is 1).
    pub fn run_stats(&self) -> (u64, Duration) {
        let Some(program) = self.ebpf.program(PROGRAM) else {
            return (0, Duration::ZERO);
        };
        match program.info() {
            Ok(info) => (info.run_count(), info.run_time()),
            Err(_) => (0, Duration::ZERO),
        }
    }

    /// How many instructions the kernel's verifier walked to load the packet program (its
    /// `verified_insns`; `None` where the kernel does not say).
    pub fn verified_instructions(&self) -> Option<u32> {
        verified_instructions(&self.ebpf)
    }

    /// Runs the program once over `frame` with BPF_PROG_TEST_RUN and returns its verdict.
    pub fn test_run(&mut self, frame: &[u8]) -> Result<u32, LoadError> {
        let program = self.program()?;
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        let result = program.test_run(opts).map_err(LoadError::Program)?;
        Ok(result.return_value)
    }

    /// Sends the flow starts each CPU's batch holds to the `FLOWS` ring, by running the
    /// object's `xtrail_flush` program once (BPF_PROG_TEST_RUN, a 14-byte frame) on each
    /// CPU whose batch holds records, the calling thread pinned to that CPU in turn (its
    /// affinity is restored after). The per-CPU map read that picks the CPUs is only a hint
    /// (the attached program may change a batch meanwhile); the flush itself runs on the CPU
    /// with bottom halves disabled, so it never interleaves with that CPU's NAPI run of the
    /// program (see `xtrail_flush`). Returns how many CPUs it ran on.
    pub fn flush_flows(&mut self) -> Result<usize, LoadError> {
        let cpus: Vec<usize> = {
            let map = self
                .ebpf
                .map(names::FLOW_BATCH)
                .ok_or(LoadError::MissingMap(names::FLOW_BATCH))?;
            let array: PerCpuArray<&MapData, xtrail_common::FlowBatch> =
                PerCpuArray::try_from(map).map_err(LoadError::Config)?;
            let values = array.get(&0, 0).map_err(LoadError::Config)?;
            values
                .iter()
                .enumerate()
                .filter(|(_, b)| b.len != 0)
                .map(|(cpu, _)| cpu)
                .collect()
        };
        if cpus.is_empty() {
            return Ok(0);
        }
        let program = xdp_program(&mut self.ebpf, FLUSH_PROGRAM)?;
        let frame = [0u8; 14];
        // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity writes at most
        // its size into it.
        let mut original: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above; pid 0 is the calling thread.
        if unsafe {
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut original)
        } != 0
        {
            return Err(LoadError::Affinity(std::io::Error::last_os_error()));
        }
        let mut ran = 0;
        let mut result = Ok(());
        for cpu in cpus {
            if cpu >= libc::CPU_SETSIZE as usize {
                break;
            }
            // SAFETY: as above; CPU_SET writes one bit, its index checked below CPU_SETSIZE;
            // sched_setaffinity only reads the set.
            let pinned = unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
            };
            // Not allowed here (offline, or outside the sensor's CPU affinity: packets are
            // still processed there): its batch waits for that CPU's next frame or detach.
            if !pinned {
                continue;
            }
            let mut opts = TestRunOptions::new();
            opts.data_in = Some(&frame);
            if let Err(e) = program.test_run(opts) {
                result = Err(LoadError::Program(e));
                break;
            }
            ran += 1;
        }
        // SAFETY: `original` is the set sched_getaffinity filled in; only read.
        if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &original) }
            != 0
        {
            return Err(LoadError::Affinity(std::io::Error::last_os_error()));
        }
        result.map(|()| ran)
    }

    /// The underlying aya object (for tests and benchmarks).
    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    /// The underlying aya object, mutably (AF_XDP socket registration).
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}

impl Drop for Sensor {
    fn drop(&mut self) {
        self.detach_all();
    }
}
