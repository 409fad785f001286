//! `cargo xtask`: the project's driver.
//!
//! - `deps`: installs what building and testing need, idempotently (Debian packages, nightly
//!   rust-src, bpf-linker 0.13.0 against the nightly toolchain's LLVM 22).
//! - `demo`: builds everything and runs a self-contained demo on a veth pair.
//! - `test`: runs every test, privileged ones included (as root, or they fail under CI=true).
//! - `bench`: the benchmarks (bench/results); `ab`: two sensor builds on the same NIC-like
//!   traffic, alternating, for one change's live cost.

mod ab;
mod bench;
mod bench_console;
mod bench_ingest;
mod bench_nic;
mod bench_reload;
mod bench_startup;
mod demo;
mod deps;
mod host;
mod paths;
mod results;
mod xdp_profile;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "xtrail's build, demo and test driver")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install build and test dependencies (idempotent).
    Deps,
    /// Build the sensor in release mode.
    Build,
    /// Run the demo: sensor on a veth pair, trail and clean traffic, events, summary.
    Demo {
        /// Trail source (default: ../shared/data/maltrail/trails-static, else the bundled set).
        #[arg(long)]
        trails: Option<std::path::PathBuf>,
        /// Sensor mode: inline or mirror.
        #[arg(long, default_value = "inline")]
        mode: String,
    },
    /// Benchmarks on veth pairs: throughput, cost per packet, recall; results in bench/results/.
    Bench {
        /// A few minutes instead of the full run.
        #[arg(long)]
        quick: bool,
        /// Another sensor to measure on the same traffic, e.g. a wrapper that runs Maltrail's
        /// sensor on an interface (README, "Maltrail beside xtrail"). Substituted: `{iface}` (its
        /// end of the veth), `{trails}` (xtrail's trail source), `{log}` (a file for its events
        /// as Maltrail event lines: given, its recall is scored like xtrail's). It is measured
        /// once it prints a line containing "running" (at most 600 s), its process tree's CPU
        /// counted; NIC runs add a 50k pps rate and xtrail/peer ratios.
        #[arg(long)]
        peer: Option<String>,
        /// Another sensor's offline replay of the offline scenario's pcap, timed like xtrail's
        /// (set-up excluded), e.g. the same wrapper with Maltrail's offline mode. Substituted:
        /// `{pcap}`, `{trails}`, `{log}`; it must print "running" once set up, and exit at the
        /// end of the file.
        #[arg(long)]
        peer_replay: Option<String>,
        /// Seed of the generated traffic.
        #[arg(long, default_value_t = bench::DEFAULT_SEED)]
        seed: u64,
        /// Only these scenarios (background, mix, storm, scale, offline, baseline, nic, ingest, console, startup, reload, urlfp; a prefix selects each it starts); repeatable.
        /// A partial run writes its scenario report to files named after the scenarios (`--only offline`: offline.json and offline.md), not latest.*; ingest, startup and reload update their own parts of latest.*.
        #[arg(long)]
        only: Vec<String>,
        /// Extra argument for `xtrail-sensor run` (repeatable), e.g. --sensor-arg=--no-flow-starts.
        #[arg(long = "sensor-arg", allow_hyphen_values = true)]
        sensor_args: Vec<String>,
        /// Rounds of the NIC-like runs (rows are medians over them; --quick: 1). More rounds
        /// narrow the spread of the added CPU per packet, about 8 minutes each with --peer.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
        nic_rounds: u32,
    },
    /// Two sensor builds on the same NIC-like traffic, alternating run by run: the sensor
    /// process's CPU per frame sent (a change's live cost; needs root).
    Ab(ab::AbOptions),
    /// The live XDP program's time by instruction: perf samples over NIC-like traffic into
    /// one sensor, counted per instruction of its JIT image (needs root, perf, objdump).
    XdpProfile(xdp_profile::ProfileOptions),
    /// Run all tests, including privileged ones.
    Test {
        /// Extra arguments passed to `cargo test`.
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Deps => deps::ensure(),
        Command::Build => {
            deps::ensure()?;
            build_release()
        }
        Command::Demo { trails, mode } => {
            deps::ensure()?;
            build_release()?;
            demo::run(trails, &mode)
        }
        Command::Bench {
            quick,
            peer,
            peer_replay,
            seed,
            only,
            sensor_args,
            nic_rounds,
        } => {
            deps::ensure()?;
            // The collector's ingest scenario alone builds what it needs itself.
            let ingest_only =
                !only.is_empty() && only.iter().all(|o| "ingest".starts_with(o.as_str()));
            if !ingest_only {
                eprintln!("xtask: building the sensor, the libpcap baseline and the NIC-like generator (release)");
                run(cargo().args([
                    "build",
                    "--release",
                    "-p",
                    "xtrail-sensor",
                    "-p",
                    "xtrail-bench",
                    "-p",
                    "xtrail-nicgen",
                ]))?;
            }
            bench::run(&bench::BenchOptions {
                quick,
                peer,
                peer_replay,
                seed,
                only,
                sensor_args,
                nic_rounds: nic_rounds as usize,
            })
        }
        Command::Ab(o) => {
            deps::ensure()?;
            run(cargo().args(["build", "--release", "-p", "xtrail-nicgen"]))?;
            ab::run(&o)
        }
        Command::XdpProfile(o) => {
            deps::ensure()?;
            let mut build = cargo();
            build.args(["build", "--release", "-p", "xtrail-nicgen"]);
            // The default sensor is this tree's: built so that it is not a stale one.
            if o.sensor.is_none() {
                build.args(["-p", "xtrail-sensor"]);
            }
            run(&mut build)?;
            xdp_profile::run(&o)
        }
        Command::Test { args } => {
            deps::ensure()?;
            test(&args)
        }
    }
}

/// Runs a command, echoing it, and fails on a non-zero exit.
pub fn run(cmd: &mut std::process::Command) -> anyhow::Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status()?;
    anyhow::ensure!(status.success(), "{cmd:?} failed: {status}");
    Ok(())
}

fn cargo() -> std::process::Command {
    let mut c =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(paths::workspace_root());
    c
}

fn build_release() -> anyhow::Result<()> {
    eprintln!("xtask: building xtrail-sensor (release)");
    run(cargo().args(["build", "--release", "-p", "xtrail-sensor"]))
}

fn test(extra: &[String]) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("xtask: not root: privileged tests (XDP, netns) will be skipped (they fail under CI=true)");
    }
    eprintln!(
        "xtask: running the whole test suite (unit, integration, XDP, veth end to end, corpus)"
    );
    run(cargo()
        .args(["test", "--workspace", "--no-fail-fast"])
        .args(extra))?;
    eprintln!("xtask: all tests passed");
    Ok(())
}
