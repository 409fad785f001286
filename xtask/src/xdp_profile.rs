//! `cargo xtask xdp-profile`: where the live XDP program spends its time, by instruction.
//! One sensor on a fresh veth pair (GRO on, as the bench) gets a warm-up of NIC-like
//! traffic; its program's JIT image is dumped (`xtrail-nicgen jit-dump`); `perf record -a`
//! samples every CPU while `count` more frames are sent at `rate`; the samples inside the
//! program are counted per instruction of the image (`xtrail-nicgen jit-annotate`). Writes
//! `OUT/annotate.txt` (the whole annotated disassembly) and prints its head.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use xtrail_bench::netns::VethPair;

use crate::ab::{scenario_pcap, static_tree};
use crate::bench::{start_sensor, stop_child};
use crate::bench_nic::{gro_on, nic_send, nicgen, xdp_prog_id, SCENARIOS};

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
    #[arg(long, default_value_t = 500_000)]
    pub rate: u64,
    /// Frames sent while perf samples.
    #[arg(long, default_value_t = 4_000_000)]
    pub count: u64,
    /// Samples a second per CPU (`perf record -F`).
    #[arg(long, default_value_t = 10_000)]
    pub frequency: u32,
    /// The sensor binary (default: target/release/xtrail-sensor).
    #[arg(long)]
    pub sensor: Option<PathBuf>,
    /// Trail source for the sensor (default: the static tree).
    #[arg(long)]
    pub trails: Option<PathBuf>,
    /// Extra argument for `xtrail-sensor run` (repeatable).
    #[arg(long = "sensor-arg", allow_hyphen_values = true)]
    pub sensor_args: Vec<String>,
    /// Directory for the JIT dump, perf's data and the annotation.
    #[arg(long, default_value = "/tmp/xtrail-xdp-profile")]
    pub out: PathBuf,
    /// Hottest instructions printed.
    #[arg(long, default_value_t = 25)]
    pub top: usize,
}

/// Runs the profile.
pub fn run(o: &ProfileOptions) -> anyhow::Result<()> {
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
    std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    let pcap = scenario_pcap(&o.traffic, &o.out)?;
    let pair = VethPair::create("xpf")?;
    gro_on(&pair)?;
    let log = o.out.join("events.jsonl");
    let _ = std::fs::remove_file(&log);
    let mut started = start_sensor(&sensor, &pair, &trails, &o.mode, &log, &o.sensor_args)?;
    let result = (|| {
        nic_send(&pair, &pcap, o.count / 4, o.rate, 0)?;
        let id = xdp_prog_id(&pair).context("no XDP program on the sensor's interface")?;
        let jit = o.out.join("jit");
        crate::run(
            Command::new(nicgen())
                .args(["jit-dump", "--id", &id.to_string(), "--out"])
                .arg(&jit)
                .stdout(Stdio::null()),
        )?;
        let data = o.out.join("perf.data");
        let mut perf = Command::new("perf")
            .args(["record", "-a", "-F", &o.frequency.to_string(), "-o"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting perf record")?;
        std::thread::sleep(Duration::from_millis(500));
        let sent = nic_send(&pair, &pcap, o.count, o.rate, o.count / 4);
        // perf writes its data on SIGINT.
        xtrail_bench::child::interrupt_and_wait(&mut perf, Duration::from_secs(30));
        let (sent, _) = sent?;
        let script = Command::new("perf")
            .args(["script", "-F", "ip,sym", "-i"])
            .arg(&data)
            .stderr(Stdio::null())
            .output()
            .context("perf script")?;
        anyhow::ensure!(
            script.status.success(),
            "perf script failed: {}",
            script.status
        );
        let samples = o.out.join("samples.txt");
        std::fs::write(&samples, &script.stdout)?;
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
        let path = o.out.join("annotate.txt");
        std::fs::write(&path, &annotated.stdout)?;
        let text = String::from_utf8_lossy(&annotated.stdout);
        println!(
            "xdp-profile: {} {} at {} pps, {sent} frames sent while sampling",
            o.traffic, o.mode, o.rate
        );
        // The summary and the hottest instructions; the listings follow in the file.
        for line in text.lines().take_while(|l| !l.starts_with("function 0 at")) {
            println!("{line}");
        }
        println!(
            "xdp-profile: the annotated disassembly is in {}",
            path.display()
        );
        Ok(())
    })();
    stop_child(&mut started.child);
    result
}
