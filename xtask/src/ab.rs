//! `cargo xtask ab`: two sensor builds on the same NIC-like traffic, alternating run by run,
//! for a change's effect on the live cost. Each run puts one build on a fresh veth pair
//! (GRO on, as the bench), sends a warm-up, then `rounds` sends of `count` frames at a fixed
//! rate NIC-like (the bench's templates and flows: `xtrail-nicgen send` with live frames, or
//! the bench's AF_PACKET sender through `xtrail-nicgen relay` where the kernel refuses them),
//! and reads the sensor process's CPU before each send and 0.5 s after it: ns per frame sent
//! (a send whose frames did not all reach the sensor's veth stops it). With `--xdp`, also
//! the XDP program's time per run over each send (bpf_stats on: its own clock reads
//! included, alike for both builds). Runs alternate A B, B A, ... so that the host's drift
//! falls on both builds alike.

use std::path::{Path, PathBuf};
use std::time::Duration;

use xtrail_bench::netns::VethPair;
use xtrail_detect::trails::{LoadOptions, TrailSet};
use xtrail_detect::whitelist::Whitelist;

use crate::bench::{
    draw_background, draw_nic_mix, draw_picks, start_sensor, stop_child, tree_cpu_ns, DEFAULT_SEED,
};
use crate::bench_nic::{
    gro_on, median, nicgen, prog_stats, templates, xdp_between, xdp_prog_id, Relay, StatsKnob,
    Templates, SCENARIOS,
};
use crate::paths;

/// What `cargo xtask ab` compares.
#[derive(clap::Args)]
pub struct AbOptions {
    /// Build A: a sensor binary (e.g. a copy of target/release/xtrail-sensor from before a
    /// change).
    #[arg(long)]
    pub a: PathBuf,
    /// Build B.
    #[arg(long)]
    pub b: PathBuf,
    /// Traffic, as the bench's NIC-like scenarios.
    #[arg(long, default_value = "dns", value_parser = clap::builder::PossibleValuesParser::new(SCENARIOS))]
    pub traffic: String,
    /// Sensor mode.
    #[arg(long, default_value = "inline", value_parser = ["inline", "mirror"])]
    pub mode: String,
    /// Frames a second.
    #[arg(long, default_value_t = 50_000)]
    pub rate: u64,
    /// Frames a round.
    #[arg(long, default_value_t = 100_000)]
    pub count: u64,
    /// Rounds a run.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// Runs of each build.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub pairs: u32,
    /// Trail source for the sensors (default: the static tree).
    #[arg(long)]
    pub trails: Option<PathBuf>,
    /// Extra argument for `xtrail-sensor run` (repeatable).
    #[arg(long = "sensor-arg", allow_hyphen_values = true)]
    pub sensor_args: Vec<String>,
    /// Also the XDP program's ns per run over each round (`kernel.bpf_stats_enabled` on for
    /// the whole comparison, restored after; its clock reads are in both builds' figures).
    #[arg(long)]
    pub xdp: bool,
}

/// The time a run's last frames get to reach the sensor before its CPU is read.
const DRAIN: Duration = Duration::from_millis(500);

/// Runs the comparison and prints each run's rounds and the medians.
pub fn run(o: &AbOptions) -> anyhow::Result<()> {
    anyhow::ensure!(
        nicgen().is_file(),
        "{} not built (cargo build --release -p xtrail-nicgen)",
        nicgen().display()
    );
    // Absolute: the sensors start in a network namespace, by path.
    let builds = [&o.a, &o.b].map(|b| {
        b.canonicalize()
            .map_err(|e| anyhow::anyhow!("sensor binary {}: {e}", b.display()))
    });
    let [a, b] = builds;
    let builds = [a?, b?];
    let trails = o.trails.clone().unwrap_or_else(static_tree);
    let tmp = std::env::temp_dir().join(format!("xtrail-ab-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let traffic = scenario_templates(&o.traffic, &tmp)?;
    // Restored when dropped, after the comparison.
    let knob = o.xdp.then(StatsKnob::new);
    if let Some(k) = &knob {
        k.set(true)?;
    }
    let mut per_build: [Vec<Round>; 2] = Default::default();
    let mut first_flow = 0;
    for pair in 0..o.pairs {
        let order = if pair % 2 == 0 { [0, 1] } else { [1, 0] };
        for build in order {
            let bin = &builds[build];
            let rounds = one_run(o, bin, &trails, &traffic, &tmp, &mut first_flow)?;
            let list = |f: fn(&Round) -> f64| {
                rounds
                    .iter()
                    .map(|r| format!("{:.0}", f(r)))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let mut line = format!(
                "ab: {} {}: {}",
                ["A", "B"][build],
                bin.display(),
                list(|r| r.sensor_ns)
            );
            if o.xdp {
                line += &format!("; XDP ns a run: {}", list(|r| r.xdp_ns));
            }
            line += &retried(&rounds);
            println!("{line}");
            per_build[build].extend(rounds);
        }
    }
    drop(knob);
    let _ = std::fs::remove_dir_all(&tmp);
    for (build, v) in per_build.iter().enumerate() {
        let what = format!("{} {} at {} pps", o.traffic, o.mode, o.rate);
        let sensor = summary(v.iter().map(|r| r.sensor_ns).collect(), "ns a frame");
        println!("ab: {} median {sensor}, {what}", ["A", "B"][build]);
        if o.xdp {
            let xdp = summary(v.iter().map(|r| r.xdp_ns).collect(), "XDP ns a run");
            println!("ab: {} median {xdp}, {what}", ["A", "B"][build]);
        }
    }
    // Round k of A's run i against round k of B's: the two ran back to back, so the drift
    // of the machine between rounds is mostly out of their difference.
    let [a, b] = &per_build;
    let pairs = |f: fn(&Round) -> f64| a.iter().map(f).zip(b.iter().map(f)).collect::<Vec<_>>();
    println!(
        "ab: B - A {}",
        paired(&pairs(|r| r.sensor_ns), "ns a frame")
    );
    if o.xdp {
        println!("ab: B - A {}", paired(&pairs(|r| r.xdp_ns), "XDP ns a run"));
    }
    Ok(())
}

/// "by round: median +D UNIT, B lower in K of N" over rounds paired (A, B).
fn paired(rounds: &[(f64, f64)], unit: &str) -> String {
    let d: Vec<f64> = rounds.iter().map(|(a, b)| b - a).collect();
    let (lower, n) = (d.iter().filter(|x| **x < 0.0).count(), d.len());
    format!(
        "by round: median {:+.0} {unit}, B lower in {lower} of {n}",
        median(d)
    )
}

/// The static trail tree of the Maltrail data.
pub(crate) fn static_tree() -> PathBuf {
    paths::maltrail_data().join("trails-static")
}

/// The templates of NIC-like scenario `traffic` (one of `SCENARIOS`), as a full `cargo
/// xtask bench` run draws them, written to `dir/TRAFFIC.pcap`.
pub(crate) fn scenario_templates(traffic: &str, dir: &Path) -> anyhow::Result<Templates> {
    let which = SCENARIOS
        .iter()
        .position(|s| *s == traffic)
        .ok_or_else(|| anyhow::anyhow!("traffic {traffic} is none of {SCENARIOS:?}"))?;
    let tree = static_tree();
    anyhow::ensure!(tree.is_dir(), "no static trail tree at {}", tree.display());
    eprintln!("xtask: loading {} to draw traffic from", tree.display());
    let set = TrailSet::load(std::slice::from_ref(&tree), &LoadOptions::default())?;
    let whitelist = Whitelist::load(&paths::maltrail_data().join("data/whitelist.txt"))?;
    let picks = draw_picks(&set, &whitelist, false);
    let is_trail = |a| set.ip.lookup(std::net::IpAddr::V4(a), None).is_some();
    let background = draw_background(DEFAULT_SEED, false, &is_trail);
    let mix = draw_nic_mix(DEFAULT_SEED, &picks, &is_trail);
    let frames = templates(&background, &mix)
        .into_iter()
        .nth(which)
        .unwrap_or_default();
    anyhow::ensure!(!frames.is_empty(), "no {traffic} templates");
    Templates::new(dir.join(format!("{traffic}.pcap")), frames)
}

/// One round's figures: the sensor process's CPU per frame sent and (with `--xdp`) the XDP
/// program's time per run over the round (NaN when not read).
struct Round {
    sensor_ns: f64,
    xdp_ns: f64,
    /// `sendmmsg` calls a full socket refused and the sender retried (relay delivery).
    retries: u64,
}

/// " (N sends retried)" when the sender's socket refused any of a run's `sendmmsg` calls
/// (each retried, no frame skipped), else nothing.
fn retried(rounds: &[Round]) -> String {
    match rounds.iter().map(|r| r.retries).sum::<u64>() {
        0 => String::new(),
        n => format!(" ({n} sends retried)"),
    }
}

/// "median UNIT (range lo-hi, n rounds)" of `v`.
fn summary(mut v: Vec<f64>, unit: &str) -> String {
    v.sort_by(f64::total_cmp);
    format!(
        "{:.0} {unit} (range {:.0}-{:.0}, {} rounds)",
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN),
        v.first().copied().unwrap_or(f64::NAN),
        v.last().copied().unwrap_or(f64::NAN),
        v.len()
    )
}

/// One build on a fresh veth pair: the warm-up, then the rounds' CPU per frame sent.
fn one_run(
    o: &AbOptions,
    bin: &Path,
    trails: &Path,
    traffic: &Templates,
    tmp: &Path,
    first_flow: &mut u64,
) -> anyhow::Result<Vec<Round>> {
    with_sensor(
        bin,
        trails,
        &o.mode,
        &o.sensor_args,
        tmp,
        traffic,
        |pair, pid| one_run_on(o, pair, pid, traffic, first_flow),
    )
}

/// Runs `f` with `sensor` (a binary) started on a fresh veth pair (GRO on, as the bench;
/// with the relay `traffic` is sent through where live frames are refused), its events in
/// `dir/events.jsonl`; `f` gets the pair and the sensor's pid. The sensor is stopped after,
/// whatever `f` returned.
pub(crate) fn with_sensor<T>(
    sensor: &Path,
    trails: &Path,
    mode: &str,
    args: &[String],
    dir: &Path,
    traffic: &Templates,
    f: impl FnOnce(&VethPair, u32) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let pair = VethPair::create("xab")?;
    gro_on(&pair)?;
    let _relay = if traffic.live {
        None
    } else {
        Some(Relay::start(&pair)?)
    };
    let log = dir.join("events.jsonl");
    let _ = std::fs::remove_file(&log);
    let mut started = start_sensor(sensor, &pair, trails, mode, &log, args)?;
    let result = f(&pair, started.child.id());
    stop_child(&mut started.child);
    result
}

/// One run's warm-up and rounds on a started sensor.
fn one_run_on(
    o: &AbOptions,
    pair: &VethPair,
    pid: u32,
    traffic: &Templates,
    first_flow: &mut u64,
) -> anyhow::Result<Vec<Round>> {
    let prog = if o.xdp { xdp_prog_id(pair) } else { None };
    anyhow::ensure!(
        !o.xdp || prog.is_some(),
        "--xdp: no XDP program on {}",
        pair.sensor_if
    );
    let mut send = |count: u64| {
        // Fresh flows every send: a new source for each, as the bench's runs.
        let r = traffic.send(pair, count, o.rate, *first_flow);
        *first_flow += count;
        r
    };
    send(o.count / 2)?;
    std::thread::sleep(DRAIN);
    let mut rounds = Vec::new();
    for _ in 0..o.rounds {
        let xdp_before = prog_stats(prog);
        let before = tree_cpu_ns(pid);
        let rx0 = pair.sensor_rx_packets()?;
        let s = send(o.count)?;
        let sent = s.sent;
        std::thread::sleep(DRAIN);
        let used = tree_cpu_ns(pid).saturating_sub(before);
        // A frame that never arrived (a relay gone, a full ring) would lower the figure.
        let arrived = pair.sensor_rx_packets()?.saturating_sub(rx0);
        anyhow::ensure!(
            arrived >= sent,
            "only {arrived} of {sent} frames sent arrived at the sensor's veth"
        );
        let xdp_ns = xdp_between(xdp_before, prog_stats(prog)).map_or(f64::NAN, |(_, ns)| ns);
        rounds.push(Round {
            sensor_ns: used as f64 / sent.max(1) as f64,
            xdp_ns,
            retries: s.retries,
        });
    }
    Ok(rounds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_line_says_how_many_sends_were_retried() {
        let round = |retries| Round {
            sensor_ns: 1.0,
            xdp_ns: f64::NAN,
            retries,
        };
        assert_eq!(retried(&[round(0), round(0)]), "");
        assert_eq!(
            retried(&[round(2), round(0), round(1)]),
            " (3 sends retried)"
        );
    }

    #[test]
    fn paired_rounds_give_the_median_difference_and_the_count_b_lower() {
        let rounds = [(100.0, 90.0), (120.0, 125.0), (110.0, 100.0)];
        assert_eq!(
            paired(&rounds, "ns a frame"),
            "by round: median -10 ns a frame, B lower in 2 of 3"
        );
        assert_eq!(
            paired(&[], "ns"),
            "by round: median NaN ns, B lower in 0 of 0"
        );
    }
}
