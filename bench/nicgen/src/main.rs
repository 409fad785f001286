//! `xtrail-nicgen`: the bench's NIC-like traffic generator and XDP cost probe.
//!
//! - `send`: frames from a pcap as templates, injected with `BPF_PROG_RUN` live frames into
//!   an interface of the current network namespace (run it with `ip netns exec`), flat out
//!   or at a fixed rate. Prints one JSON line: frames sent, calls, seconds, pps.
//! - `xdp-cost`: `BPF_PROG_TEST_RUN` repeat on a loaded XDP program (the sensor's, by id)
//!   over each frame of a pcap; with `--flow-starts-every-run`, the program's `CONFIG` flow
//!   window is set to 0 during that frame's runs (and restored) so every run sends a
//!   flow-start record. Also the cost of one array map read. Prints one JSON line.
//! - `live-frames`: whether this kernel runs live-frames mode at all (some refuse it).
//! - `sink`: an XDP program that drops every frame, attached to an interface until killed
//!   (the bench's delivery floor).
//! - `jit-dump` and `jit-annotate`: a loaded program's JIT image, and `perf script` samples
//!   counted per instruction of it (see `xtrail_nicgen::jit`).

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use aya::maps::{Array, Map, MapData, PerCpuArray};
use aya::programs::ProgramInfo;
use clap::{Parser, Subcommand};
use xtrail_common::{stat, Config, PerCpuStats};
use xtrail_nicgen::{map_read_cost, read_pcap, templates, test_run, Floor, Generator};

/// Runs of the floor paired with each measured call (its average settles well before this).
const FLOOR_RUNS: u32 = 50_000;

#[derive(Parser)]
#[command(
    name = "xtrail-nicgen",
    about = "NIC-like traffic generator (BPF_PROG_RUN live frames)"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Send frames into an interface of this network namespace.
    Send {
        #[arg(long)]
        iface: String,
        /// Template frames (pcap).
        #[arg(long)]
        frames: PathBuf,
        #[arg(long)]
        count: u64,
        /// Frames per second (flat out without).
        #[arg(long)]
        rate: Option<u64>,
        /// Packets per flow of background templates (`filler_byte` payloads).
        #[arg(long, default_value_t = 8)]
        flow_packets: u32,
        /// Flows open at once, interleaved.
        #[arg(long, default_value_t = 256)]
        window: u32,
        /// Frames per live-frames batch.
        #[arg(long, default_value_t = 64)]
        batch: u32,
        /// Pacing interval in microseconds.
        #[arg(long, default_value_t = 1000)]
        tick_us: u64,
        #[arg(long, default_value_t = 120)]
        max_seconds: u64,
        /// Number of the first flow (runs that must not repeat flows start further on).
        #[arg(long, default_value_t = 0)]
        first_flow: u64,
        /// CPU to run on (flows are numbered per CPU).
        #[arg(long, default_value_t = 0)]
        cpu: usize,
    },
    /// Turn GRO on (or off) on an interface of this namespace, as `ethtool -K IF gro on`.
    Gro {
        #[arg(long)]
        iface: String,
        #[arg(long)]
        off: bool,
    },
    /// Attach an XDP program that drops every frame to an interface of this namespace (the
    /// bench's delivery floor); prints "running" and holds it until killed.
    Sink {
        #[arg(long)]
        iface: String,
    },
    /// Attach an XDP program to --from that redirects every frame to --to (interfaces of this
    /// namespace): frames sent into --from's veth peer reach --to's peer as xdp_frames, as
    /// from a NIC driver (NIC-like delivery where live frames are refused; --to's peer needs
    /// an XDP program or GRO on); prints "running" on stderr and holds it until killed.
    Relay {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
    },
    /// Whether this kernel runs XDP programs in live-frames mode (NIC-like delivery): prints
    /// {"live_frames":true|false}.
    LiveFrames,
    /// Run count and run time of a loaded program (bpf_stats) as JSON.
    ProgStats {
        #[arg(long)]
        id: u32,
    },
    /// Cost per packet of a loaded XDP program, by BPF_PROG_TEST_RUN repeat.
    XdpCost {
        #[arg(long)]
        prog_id: u32,
        /// Frames to run (pcap), named by --names in order.
        #[arg(long)]
        frames: PathBuf,
        #[arg(long, value_delimiter = ',')]
        names: Vec<String>,
        /// Names of frames to run with the flow window at 0 (a flow-start record every run).
        #[arg(long, value_delimiter = ',')]
        flow_starts_every_run: Vec<String>,
        #[arg(long, default_value_t = 200_000)]
        repeat: u32,
    },
    /// Write a loaded program's JIT image (each function's machine code and kernel address)
    /// to a directory.
    JitDump {
        #[arg(long)]
        id: u32,
        #[arg(long)]
        out: PathBuf,
    },
    /// Count `perf script -F ip,sym` samples per instruction of a JIT dump (taken while the
    /// same program was loaded) and print the disassembly annotated with them.
    JitAnnotate {
        /// A `jit-dump` directory.
        #[arg(long)]
        jit: PathBuf,
        /// `perf script -F ip,sym` output.
        #[arg(long)]
        samples: PathBuf,
        /// How many of the hottest instructions (and source lines) to list first.
        #[arg(long, default_value_t = 20)]
        top: usize,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Send {
            iface,
            frames,
            count,
            rate,
            flow_packets,
            window,
            batch,
            tick_us,
            max_seconds,
            first_flow,
            cpu,
        } => {
            xtrail_nicgen::pin_to_cpu(cpu).context("pinning to the CPU")?;
            let frames =
                read_pcap(&frames).with_context(|| format!("reading {}", frames.display()))?;
            let templates = templates(&frames, flow_packets)?;
            let mut g = Generator::load(
                xtrail_nicgen::if_index(&iface)?,
                &templates,
                window,
                first_flow,
            )?
            .with_batch(batch);
            let r = g.run(
                count,
                rate,
                Duration::from_micros(tick_us.max(50)),
                Duration::from_secs(max_seconds),
            )?;
            println!(
                "{{\"sent\":{},\"calls\":{},\"seconds\":{:.6},\"pps\":{:.0}}}",
                r.sent,
                r.calls,
                r.elapsed.as_secs_f64(),
                r.pps()
            );
            Ok(())
        }
        Cmd::Gro { iface, off } => {
            xtrail_nicgen::set_gro(&iface, !off).with_context(|| format!("GRO on {iface}"))?;
            Ok(())
        }
        Cmd::LiveFrames => {
            let ok = xtrail_nicgen::live_frames_supported()?;
            println!("{{\"live_frames\":{ok}}}");
            Ok(())
        }
        Cmd::Relay { from, to } => {
            let _relay = xtrail_nicgen::Relay::attach(&from, &to)?;
            // On stderr, beside any error: the bench watches that stream.
            eprintln!("[nicgen] redirecting every frame from {from} to {to}: running");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        Cmd::Sink { iface } => {
            let _sink = xtrail_nicgen::Sink::attach(&iface)?;
            println!("[nicgen] dropping every frame on {iface}: running");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        Cmd::ProgStats { id } => {
            let (runs, ns) =
                xtrail_nicgen::prog_stats(id).with_context(|| format!("no program {id}"))?;
            println!("{{\"run_cnt\":{runs},\"run_time_ns\":{ns}}}");
            Ok(())
        }
        Cmd::XdpCost {
            prog_id,
            frames,
            names,
            flow_starts_every_run,
            repeat,
        } => xdp_cost(prog_id, &frames, &names, &flow_starts_every_run, repeat),
        Cmd::JitDump { id, out } => {
            let image = xtrail_nicgen::jit::jit_image(id)?;
            let funcs = &image.funcs;
            xtrail_nicgen::jit::write_dump(&out, funcs)?;
            if let Some(why) = &image.no_lines {
                eprintln!("[nicgen] program {id}: no source lines ({why})");
            }
            println!(
                "{{\"functions\":{},\"bytes\":{},\"source_lines\":{}}}",
                funcs.len(),
                funcs.iter().map(|f| f.image.len()).sum::<usize>(),
                funcs.iter().map(|f| f.lines.len()).sum::<usize>()
            );
            Ok(())
        }
        Cmd::JitAnnotate { jit, samples, top } => {
            let funcs = xtrail_nicgen::jit::read_dump(&jit)?;
            // perf prints symbol names as they are: not necessarily UTF-8.
            let bytes = std::fs::read(&samples)
                .with_context(|| format!("reading {}", samples.display()))?;
            let text = String::from_utf8_lossy(&bytes);
            let samples = xtrail_nicgen::jit::count_samples(&funcs, &text);
            let text = xtrail_nicgen::jit::annotate(&jit, &funcs, &samples, top)?;
            // Into `head` as well: a reader that stops early is not an error.
            match std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
                _ => Ok(()),
            }
        }
    }
}

/// The program's map named `name`.
fn map_of(info: &ProgramInfo, name: &str) -> anyhow::Result<MapData> {
    for id in info.map_ids()?.unwrap_or_default() {
        let m = MapData::from_id(id)?;
        if m.info()?.name_as_str() == Some(name) {
            return Ok(m);
        }
    }
    anyhow::bail!("program {} has no map {name}", info.id())
}

fn stat_sum(stats: &PerCpuArray<MapData, PerCpuStats>, index: u32) -> u64 {
    stats
        .get(&0, 0)
        .map(|v| {
            v.iter()
                .map(|c| c.counters[index as usize])
                .fold(0u64, u64::wrapping_add)
        })
        .unwrap_or(0)
}

fn xdp_cost(
    prog_id: u32,
    frames: &std::path::Path,
    names: &[String],
    every_run: &[String],
    repeat: u32,
) -> anyhow::Result<()> {
    let frames = read_pcap(frames).with_context(|| format!("reading {}", frames.display()))?;
    let info = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == prog_id)
        .with_context(|| format!("no loaded program with id {prog_id}"))?;
    let fd = info.fd()?;
    let mut config: Array<MapData, Config> = Array::try_from(Map::Array(map_of(&info, "CONFIG")?))?;
    let stats: PerCpuArray<MapData, PerCpuStats> =
        PerCpuArray::try_from(Map::PerCpuArray(map_of(&info, "STATS")?))?;
    let floor = Floor::load()?;
    let mut out = Vec::new();
    for (i, frame) in frames.iter().enumerate() {
        let name = names.get(i).cloned().unwrap_or_else(|| format!("frame{i}"));
        let every = every_run.contains(&name);
        let saved = config.get(&0, 0)?;
        // Fewer runs per call when each sends a record: the sensor drains the ring between
        // calls, so records are written, not refused as `flows_full`.
        let (per_call, calls) = if every {
            (10_000u32, (repeat / 10_000).max(1))
        } else {
            (repeat, 5)
        };
        if every {
            config.set(
                0,
                Config {
                    flow_ns: 0,
                    ..saved
                },
                0,
            )?;
        }
        let (starts0, full0) = (
            stat_sum(&stats, stat::FLOW_STARTS),
            stat_sum(&stats, stat::FLOWS_FULL),
        );
        let mut durations = Vec::new();
        // Each call net of a floor run of the same frame just before it: the floor moves with
        // the host's load from call to call, so the pair is the like-for-like figure.
        let mut net = Vec::new();
        let mut verdict = 0;
        for _ in 0..calls {
            let f = floor.run(frame, per_call.min(FLOOR_RUNS))?;
            let (v, d) = test_run(fd.as_fd(), frame, per_call)?;
            verdict = v;
            durations.push(d);
            net.push(i64::from(d) - i64::from(f));
            if every {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if every {
            config.set(0, saved, 0)?;
        }
        let starts = stat_sum(&stats, stat::FLOW_STARTS) - starts0;
        let full = stat_sum(&stats, stat::FLOWS_FULL) - full0;
        durations.sort_unstable();
        let median = durations[durations.len() / 2];
        let min = durations[0];
        net.sort_unstable();
        let net_median = net[net.len() / 2];
        out.push(format!(
            "{{\"frame\":\"{name}\",\"flow_window_0\":{every},\"runs\":{},\"ns_median\":{median},\"ns_min\":{min},\"net_ns_median\":{net_median},\"verdict\":{verdict},\"flow_starts\":{starts},\"flows_full\":{full}}}",
            u64::from(per_call) * calls as u64
        ));
    }
    let (noop, read) = map_read_cost(repeat)?;
    // The verifier's processed-instruction count: what the program costs at load.
    let verified = info.verified_instruction_count().unwrap_or(0);
    println!(
        "{{\"program\":\"{}\",\"verified_insns\":{verified},\"frames\":[{}],\"noop_ns\":{noop},\"array_read_ns\":{read}}}",
        info.name_as_str().unwrap_or("?"),
        out.join(",")
    );
    Ok(())
}
