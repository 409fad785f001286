//! `cargo xtask xdp-profile`: where the live XDP program spends its time, by instruction.
//! One sensor on a fresh veth pair (GRO on, as the bench) gets a warm-up of NIC-like
//! traffic (through a relay where the kernel refuses live frames); its program's JIT image is dumped (`xtrail-nicgen jit-dump`); `perf record -a`
//! samples every CPU while `count` more frames are sent at `rate`; the samples inside the
//! program are counted per instruction of the image (`xtrail-nicgen jit-annotate`). Writes
//! `OUT/annotate.txt` (the whole annotated disassembly; OUT is target/xdp-profile unless
//! given) and prints its head.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;

use crate::ab::{scenario_templates, static_tree, with_sensor};
use crate::bench_nic::{nicgen, xdp_prog_id, SCENARIOS};

/// What `cargo xtask xdp-profile` profiles.
#[derive(clap::Args)]
pub struct ProfileOptions {
    /// Traffic, as the bench's NIC-like scenarios.
    #[arg(long, default_value = "mix", value_parser = clap::builder::PossibleValuesParser::new(SCENARIOS))]
    pub traffic: String,
    /// Sensor mode.
    #[arg(long, default_value = "inline", value_parser = ["inline", "mirror"])]
    pub mode: String,
    /// Frames a second.
    #[arg(long, default_value_t = 500_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: u64,
    /// Frames sent while perf samples (at most 60 s of them: the generator's limit).
    #[arg(long, default_value_t = 4_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: u64,
    /// Samples a second per CPU (`perf record -F`).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub frequency: u32,
    /// The sensor binary (default: target/release/xtrail-sensor, built first).
    #[arg(long)]
    pub sensor: Option<PathBuf>,
    /// Trail source for the sensor (default: the static tree).
    #[arg(long)]
    pub trails: Option<PathBuf>,
    /// Extra argument for `xtrail-sensor run` (repeatable).
    #[arg(long = "sensor-arg", allow_hyphen_values = true)]
    pub sensor_args: Vec<String>,
    /// Directory for the JIT dump, perf's data and log, and the annotation (default:
    /// target/xdp-profile).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// How many of the hottest instructions (and source lines) to print.
    #[arg(long, default_value_t = 25)]
    pub top: usize,
}

/// Runs the profile.
pub fn run(o: &ProfileOptions) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    anyhow::ensure!(
        unsafe { libc::geteuid() } == 0,
        "xdp-profile needs root (veth pairs, XDP, perf -a)"
    );
    for (tool, package) in [("perf", "linux-perf"), ("objdump", "binutils")] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        anyhow::ensure!(
            found,
            "xdp-profile needs {tool} (Debian: apt-get install {package})"
        );
    }
    let sensor = o.sensor.clone().unwrap_or_else(crate::paths::sensor_binary);
    // Absolute: the sensor starts in a network namespace, by path.
    let sensor = sensor
        .canonicalize()
        .with_context(|| format!("sensor binary {}", sensor.display()))?;
    let trails = o.trails.clone().unwrap_or_else(static_tree);
    let out = o.out.clone().unwrap_or_else(|| {
        // Beside the release directory of this tree's sensor binary.
        let release = crate::paths::sensor_binary();
        let target = release.parent().and_then(Path::parent);
        target
            .map_or_else(|| PathBuf::from("target"), Path::to_path_buf)
            .join("xdp-profile")
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let traffic = scenario_templates(&o.traffic, &out)?;
    with_sensor(
        &sensor,
        &trails,
        &o.mode,
        &o.sensor_args,
        &out,
        &traffic,
        |pair, _| {
            traffic.send(pair, o.count / 4, o.rate, 0)?;
            let id = xdp_prog_id(pair).context("no XDP program on the sensor's interface")?;
            let jit = out.join("jit");
            crate::run(
                Command::new(nicgen())
                    .args(["jit-dump", "--id", &id.to_string(), "--out"])
                    .arg(&jit)
                    .stdout(Stdio::null()),
            )?;
            let data = out.join("perf.data");
            let _ = std::fs::remove_file(&data);
            let perf_log = out.join("perf.log");
            let log_file = std::fs::File::create(&perf_log)
                .with_context(|| format!("creating {}", perf_log.display()))?;
            let mut perf = Command::new("perf")
                .args(["record", "-a", "-F", &o.frequency.to_string(), "-o"])
                .arg(&data)
                .stdout(log_file.try_clone()?)
                .stderr(log_file)
                .spawn()
                .context("starting perf record")?;
            std::thread::sleep(Duration::from_millis(500));
            let sent = traffic.send(pair, o.count, o.rate, o.count / 4);
            // perf writes its data on SIGINT.
            let stopped =
                xtrail_bench::child::interrupt_and_wait(&mut perf, Duration::from_secs(30));
            let perf_said = || std::fs::read_to_string(&perf_log).unwrap_or_default();
            anyhow::ensure!(
                stopped.is_some() && data.is_file(),
                "perf record did not finish with its data ({}): {}",
                stopped.map_or("killed after 30 s".into(), |s| s.to_string()),
                perf_said().trim()
            );
            let sent = sent?.sent;
            let script = Command::new("perf")
                .args(["script", "-F", "ip,sym", "-i"])
                .arg(&data)
                .output()
                .context("perf script")?;
            anyhow::ensure!(
                script.status.success(),
                "perf script failed ({}): {}; perf record said: {}",
                script.status,
                String::from_utf8_lossy(&script.stderr).trim(),
                perf_said().trim()
            );
            let samples = out.join("samples.txt");
            std::fs::write(&samples, &script.stdout)
                .with_context(|| format!("writing {}", samples.display()))?;
            let annotated = Command::new(nicgen())
                .args(["jit-annotate", "--top", &o.top.to_string(), "--jit"])
                .arg(&jit)
                .arg("--samples")
                .arg(&samples)
                .output()
                .context("xtrail-nicgen jit-annotate")?;
            anyhow::ensure!(
                annotated.status.success(),
                "jit-annotate failed: {}",
                String::from_utf8_lossy(&annotated.stderr)
            );
            let path = out.join("annotate.txt");
            std::fs::write(&path, &annotated.stdout)
                .with_context(|| format!("writing {}", path.display()))?;
            let text = String::from_utf8_lossy(&annotated.stdout);
            println!(
                "xdp-profile: {} {} at {} pps, {sent} frames sent while sampling",
                o.traffic, o.mode, o.rate
            );
            // The summary and the hottest instructions and lines; the listings follow in the file.
            let listing = |l: &str| l.starts_with("function ") && l.contains(" at 0x");
            for line in text.lines().take_while(|l| !listing(l)) {
                println!("{line}");
            }
            println!(
                "xdp-profile: the annotated disassembly is in {}",
                path.display()
            );
            Ok(())
        },
    )
}
