//! `cargo xtask bench --only nic`: the machine CPU each sensor adds per packet at fixed
//! offered rates, on NIC-like delivery and on the AF_PACKET path.
//!
//! NIC-like delivery: `xtrail-nicgen send` (bench/nicgen) runs an XDP program with
//! `BPF_PROG_RUN` in live-frames mode in the peer namespace and redirects its frames into the
//! veth, so the sensor's end receives `xdp_frame`s as from a NIC driver (no skb, no veth
//! skb-to-xdp copy). Where the kernel refuses live frames, NIC-like delivery goes through a
//! [`Relay`] instead: the same frame sequence sent by AF_PACKET into a second veth whose XDP
//! program redirects every frame into the sensor's pair (delivery `relay`). The AF_PACKET path
//! sends the same frame sequence (`xtrail_bench::flows`) with batched `sendmmsg` into the
//! sensor's pair. GRO is on at the receiving end in every run (it gives the veth
//! NAPI without an XDP program). Every sensor runs on its own veth pair throughout; rounds
//! send each delivery, traffic and rate to every sensor back to back, bpf_stats off. Per run,
//! sampled at the same instants before the send and after a 0.5 s drain: the packet path's
//! CPU (generator, ksoftirqd, sensor process tree), busy time of the whole machine
//! (/proc/stat), packets received on the sensor's end. What a sensor adds per packet is the
//! median over rounds of its run's path CPU per delivered packet minus the same round's
//! no-sensor run. XDP ns/run comes from a short pass with bpf_stats on. Results:
//! bench/results/nic.json and nic.md.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use xtrail_bench::flows::FlowFrames;
use xtrail_bench::frames::{background_udp, tcp_flags, v4, Frame};
use xtrail_bench::gen;
use xtrail_bench::netns::{in_ns, Injector, VethPair};
use xtrail_bench::scenario::{self, Class, Traffic};

use crate::bench::{
    busy_ticks, proc_cpu_ns, settle, start_sensor, stop_child, tick_ns, tree_cpu_ns, Other,
    PEER_LOG_FLUSH,
};
use crate::paths;

/// Wait after a send before sampling: the sensor finishes what is queued.
const DRAIN: Duration = Duration::from_millis(500);
/// At most this long more for a capture sensor's process tree to stop working after a
/// send (`crate::bench::settle`): Maltrail queues up to 10% of memory in its capture ring.
const SETTLE_MAX: Duration = Duration::from_secs(60);
/// The extra rate run with `--peer`, for every sensor: one a Python sensor can follow.
const PEER_RATE: u64 = 50_000;
/// The delivery floor: `xtrail-nicgen sink`, an XDP program that drops every frame, the
/// least any receiver costs (the generator and the delivery alone).
const FLOOR: &str = "xdp-drop";
/// Seconds of traffic per run of the bpf_stats pass (XDP ns/run).
const XDP_PASS_SECONDS: f64 = 0.5;
/// Program loads the test-run cost is measured on: the running inline sensor's and fresh
/// ones (a test run's figures fall in one of two modes per load of the same program).
const XDP_COST_LOADS: usize = 5;
/// An AF_PACKET sender busy for this share of its send's wall time or more is saturated.
const SATURATED: f64 = 0.95;
/// Packets per flow of background traffic, and flows open at once (interleaved).
pub(crate) use xtrail_bench::flows::{BENCH_FLOW_PACKETS as FLOW_PACKETS, BENCH_WINDOW as WINDOW};
/// Templates per single-protocol scenario: a prime, so (source, template) pairs repeat only
/// after 251 cycles of the generator's source addresses.
const TEMPLATES: usize = 251;
/// Templates of the mix (prime, as above).
const MIX_TEMPLATES: usize = 4093;
/// The rate of the hand-off scenarios (the mix's DNS, HTTP or TLS templates alone, every
/// packet handed to userspace): about the hand-off rate of the mix at 1M pps.
const HANDOFF_RATE: u64 = 50_000;
/// The deliveries, in the order they run and are reported: NIC-like by live frames
/// (`nic`), NIC-like through a relay where the kernel refuses live frames (`relay`:
/// [`Relay`]), and AF_PACKET into the veth (`afpacket`).
const DELIVERIES: [&str; 3] = ["nic", "relay", "afpacket"];
/// The relay's veth pair in a [`VethPair`]'s peer namespace: AF_PACKET sends into the
/// first, whose peer (the second) runs `xtrail-nicgen relay`.
const RELAY_IN: &str = "xrin";
const RELAY_OUT: &str = "xrout";

/// What the NIC scenarios need from the bench.
pub struct NicInputs<'a> {
    pub quick: bool,
    /// Rounds (`--nic-rounds`; 1 when `quick`).
    pub rounds: usize,
    pub trails: &'a Path,
    pub trails_name: String,
    pub background: &'a Traffic,
    pub mix: &'a Traffic,
    pub sensor_args: &'a [String],
    pub peer: Option<&'a str>,
    pub tmp: &'a Path,
}

/// One measured run.
#[derive(Clone, Debug, Default)]
struct NicRun {
    delivery: &'static str,
    scenario: &'static str,
    sensor: String,
    mode: String,
    rate: u64,
    sent: u64,
    send_pps: f64,
    delivered: u64,
    /// Whole-machine busy time per packet.
    busy_ns_per_packet: f64,
    /// CPU of the packet path only: generator, softirq, ksoftirqd, sensor process.
    path_ns_per_packet: f64,
    added_path_ns_per_packet: Option<f64>,
    added_ns_per_packet: Option<f64>,
    process_ns_per_packet: f64,
    xdp_runs: u64,
    xdp_ns_per_run: Option<f64>,
    injected: usize,
    detected: Option<usize>,
    /// Seconds a capture sensor went on working after the drain (0 for the others).
    settle_s: f64,
    /// AF_PACKET and relay: the sending thread's CPU over the send's wall time (NaN with live
    /// frames). At
    /// [`SATURATED`] the sender did not idle (it could not keep the rate): the path per packet is then
    /// about its wall time per packet whatever the receiver costs.
    generator_busy: f64,
    /// AF_PACKET and relay: `sendmmsg` calls a full socket refused (`ENOBUFS`,
    /// `EWOULDBLOCK`), retried from the first frame not taken (no frame skipped); 0 with live
    /// frames.
    send_retries: u64,
    load: String,
    /// The round this run belongs to (raw runs).
    round: usize,
    /// Rounds aggregated into this row.
    rounds: usize,
    /// Added path ns/packet of each round (aggregated rows of a sensor).
    added_path_rounds: Vec<f64>,
    /// (round, path ns/packet) of each round (aggregated rows).
    path_rounds: Vec<(usize, f64)>,
}

impl NicRun {
    fn json(&self) -> String {
        let f = |x: f64| crate::bench::json_num(x, 1);
        let o = |x: Option<f64>| x.map(f).unwrap_or("null".into());
        format!(
            concat!(
                "{{\"delivery\":\"{}\",\"scenario\":\"{}\",\"sensor\":\"{}\",\"mode\":\"{}\",",
                "\"offered_rate\":{},\"sent\":{},\"send_pps\":{},\"delivered\":{},",
                "\"busy_ns_per_packet\":{},\"added_busy_ns_per_packet\":{},\"path_ns_per_packet\":{},\"added_path_ns_per_packet\":{},\"sensor_process_ns_per_packet\":{},",
                "\"xdp_runs\":{},\"xdp_ns_per_run\":{},\"injected\":{},\"detected\":{},\"settle_s\":{},\"generator_busy\":{},\"send_retries\":{},\"load\":\"{}\",",
                "\"rounds\":{},\"added_path_ns_per_packet_rounds\":[{}]}}"
            ),
            self.delivery,
            self.scenario,
            self.sensor,
            self.mode,
            self.rate,
            self.sent,
            f(self.send_pps),
            self.delivered,
            f(self.busy_ns_per_packet),
            o(self.added_ns_per_packet),
            f(self.path_ns_per_packet),
            o(self.added_path_ns_per_packet),
            f(self.process_ns_per_packet),
            self.xdp_runs,
            o(self.xdp_ns_per_run),
            self.injected,
            self.detected
                .map(|d| d.to_string())
                .unwrap_or("null".into()),
            f(self.settle_s),
            crate::bench::json_num(self.generator_busy, 3),
            self.send_retries,
            self.load,
            self.rounds,
            self.added_path_rounds
                .iter()
                .map(|x| f(*x))
                .collect::<Vec<_>>()
                .join(","),
        )
    }
}

pub(crate) fn nicgen() -> PathBuf {
    paths::workspace_root().join("target/release/xtrail-nicgen")
}

pub(crate) fn write_pcap(path: &Path, frames: &[Vec<u8>]) -> anyhow::Result<()> {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    xtrail_bench::pcapw::write_header(&mut w)?;
    for (i, f) in frames.iter().enumerate() {
        xtrail_bench::pcapw::write_packet(&mut w, i as i64, f)?;
    }
    w.flush()?;
    Ok(())
}

/// The template frames of the scenarios [`SCENARIOS`] names, in its order: UDP, TCP ACK and
/// TCP SYN background, the mix, and the mix's templates that xtrail hands to userspace
/// (DNS, HTTP, TLS).
pub(crate) fn templates(background: &Traffic, mix: &Traffic) -> [Vec<Vec<u8>>; 7] {
    let [udp, ack, syn] = by_kind(background);
    let mix_frames: Vec<Vec<u8>> = mix.frames.iter().take(MIX_TEMPLATES).cloned().collect();
    let [dns, http, tls] =
        [Class::Dns, Class::Http, Class::Tls].map(|c| mix.first_of(MIX_TEMPLATES, c));
    [udp, ack, syn, mix_frames, dns, http, tls]
}

/// The NIC-like scenarios, in [`templates`]' order.
pub(crate) const SCENARIOS: [&str; 7] = ["udp", "tcp-ack", "tcp-syn", "mix", "dns", "http", "tls"];

/// Splits background frames by kind: UDP, TCP ACK (with PSH), TCP SYN.
fn by_kind(background: &Traffic) -> [Vec<Vec<u8>>; 3] {
    let mut out: [Vec<Vec<u8>>; 3] = Default::default();
    for f in &background.frames {
        if f.len() < 48 || f[12..14] != [0x08, 0x00] || f[14] != 0x45 {
            continue;
        }
        let k = match (f[23], f[47]) {
            (17, _) => 0,
            (6, fl) if fl & tcp_flags::SYN != 0 => 2,
            (6, fl) if fl & tcp_flags::ACK != 0 => 1,
            _ => continue,
        };
        if out[k].len() < TEMPLATES {
            out[k].push(f.clone());
        }
    }
    out
}

/// The sensor's XDP program id on its interface (from iproute2's JSON), if one is attached.
pub(crate) fn xdp_prog_id(pair: &VethPair) -> Option<u32> {
    let out = Command::new("ip")
        .args([
            "-n",
            &pair.sensor_ns,
            "-j",
            "-d",
            "link",
            "show",
            &pair.sensor_if,
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    json_field(text.split("\"xdp\":").nth(1)?, "id")
}

/// The first value of `"key":` in one-line JSON `text` (a number or a bare word), parsed.
fn json_field<T: std::str::FromStr>(text: &str, key: &str) -> Option<T> {
    text.split(&format!("\"{key}\":"))
        .nth(1)?
        .split([',', '}'])
        .next()?
        .trim()
        .parse()
        .ok()
}

/// (run count, run time ns) of a program from bpf_stats.
pub(crate) fn prog_stats(id: Option<u32>) -> Option<(u64, u64)> {
    let id = id?;
    let out = Command::new(nicgen())
        .args(["prog-stats", "--id", &id.to_string()])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Some((
        json_field(&text, "run_cnt")?,
        json_field(&text, "run_time_ns")?,
    ))
}

/// (runs, ns a run) of a program between two `prog_stats` samples; `None` without both or
/// without a run between them.
pub(crate) fn xdp_between(
    before: Option<(u64, u64)>,
    after: Option<(u64, u64)>,
) -> Option<(u64, f64)> {
    let ((c0, t0), (c1, t1)) = (before?, after?);
    (c1 > c0).then(|| (c1 - c0, t1.saturating_sub(t0) as f64 / (c1 - c0) as f64))
}

/// User + system CPU (ns) of `who` (`RUSAGE_CHILDREN`, `RUSAGE_THREAD`, ...).
fn rusage_ns(who: libc::c_int) -> u64 {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(who, &mut ru) } != 0 {
        return 0;
    }
    [ru.ru_utime, ru.ru_stime]
        .iter()
        .map(|tv| tv.tv_sec as u64 * 1_000_000_000 + tv.tv_usec as u64 * 1000)
        .sum()
}

/// CPU time (ns) of the packet path outside the sensor process and the AF_PACKET generator
/// thread (which `send` times itself): the bench's waited-for children (the NIC-like
/// generator: its `BPF_PROG_RUN` calls run the receive path, softirq included, in its
/// context; the `ip` commands every run's samples use, sensor or not) and the ksoftirqd
/// threads. Not the bench's own threads (samples, settling), and not the irq/softirq
/// columns of /proc/stat: without IRQ time accounting a tick in softirq is charged both to
/// that column and to the task it interrupted, so adding them counts the receive path twice
/// (measured here: the generator's own time alone matches whole-machine busy time on an
/// idle machine). Unlike whole-machine busy time it does not count other work on a shared
/// machine, nor saturate when that work fills every CPU.
fn path_cpu_ns() -> u64 {
    let mut ns = rusage_ns(libc::RUSAGE_CHILDREN);
    for pid in ksoftirqd_pids() {
        ns += proc_cpu_ns(pid);
    }
    ns
}

fn ksoftirqd_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|c| c.starts_with("ksoftirqd/"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A sensor under measurement: ours (inline or mirror), a libpcap one (the baseline or
/// `--peer`), or nothing.
enum Under {
    None,
    Xtrail(crate::bench::Sensor),
    Process(Other),
}

impl Under {
    /// How the sensor process ended, if it has.
    fn exited(&mut self) -> Option<String> {
        let child = match self {
            Under::None => return None,
            Under::Xtrail(s) => &mut s.child,
            Under::Process(o) => &mut o.child,
        };
        child.try_wait().ok().flatten().map(|st| st.to_string())
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Under::None => None,
            Under::Xtrail(s) => Some(s.child.id()),
            Under::Process(o) => Some(o.child.id()),
        }
    }

    fn stop(&mut self) {
        match self {
            Under::None => {}
            Under::Xtrail(s) => stop_child(&mut s.child),
            Under::Process(o) => o.stop(),
        }
    }
}

struct Scenario<'a> {
    name: &'static str,
    pcap: PathBuf,
    frames: &'a [Vec<u8>],
    items: &'a [scenario::Item],
    /// The deliveries and rates it runs at.
    deliveries: &'static [&'static str],
    rates: &'a [u64],
}

/// What one run's send did.
pub(crate) struct Sent {
    pub(crate) sent: u64,
    pub(crate) seconds: f64,
    /// The AF_PACKET sending thread's CPU (ns): 0 with live frames, whose generator is a
    /// child process counted in the path.
    pub(crate) thread_cpu_ns: u64,
    /// AF_PACKET: `sendmmsg` calls refused by a full socket and retried.
    pub(crate) retries: u64,
}

/// [`nic_send`] as a [`Sent`]: the generator is a child process, its CPU in `path_cpu_ns`,
/// and live frames are never refused.
fn nic_sent(
    pair: &VethPair,
    pcap: &Path,
    count: u64,
    rate: u64,
    first_flow: u64,
) -> anyhow::Result<Sent> {
    let (sent, seconds) = nic_send(pair, pcap, count, rate, first_flow)?;
    Ok(Sent {
        sent,
        seconds,
        thread_cpu_ns: 0,
        retries: 0,
    })
}

/// Sends one run's traffic.
fn send(
    pair: &VethPair,
    delivery: &str,
    sc: &Scenario<'_>,
    count: u64,
    rate: u64,
    first_flow: u64,
) -> anyhow::Result<Sent> {
    match delivery {
        "nic" => nic_sent(pair, &sc.pcap, count, rate, first_flow),
        "relay" | "afpacket" => {
            let iface = if delivery == "relay" {
                RELAY_IN
            } else {
                &pair.peer_if
            };
            afpacket_send(pair, iface, sc.frames.to_vec(), count, rate, first_flow)
        }
        other => anyhow::bail!("unknown delivery {other}"),
    }
}

/// Sends `count` frames of the templates `frames` by AF_PACKET at `rate` into interface
/// `iface` of the peer's namespace (its end of the pair, or [`RELAY_IN`]; flows as
/// [`nic_send`]'s), from CPU 0.
pub(crate) fn afpacket_send(
    pair: &VethPair,
    iface: &str,
    frames: Vec<Vec<u8>>,
    count: u64,
    rate: u64,
    first_flow: u64,
) -> anyhow::Result<Sent> {
    let (ns, ifname) = (pair.peer_ns.clone(), iface.to_string());
    let handle = in_ns(&pair.peer_ns, move || -> anyhow::Result<Sent> {
        // The same CPU as the NIC-like generator; not fatal when it fails (the run is only
        // less comparable).
        let _ = gen::pin_to_cpu(0);
        let inj = Injector::open(&ns, &ifname)?;
        let mut flows = FlowFrames::new(&frames, FLOW_PACKETS, WINDOW, first_flow, 0)?;
        // This thread's own CPU (the receive path runs in its sendmmsg calls, in softirq),
        // not the bench's other threads'.
        let t0 = rusage_ns(libc::RUSAGE_THREAD);
        let r = gen::blast_flows(&inj, &mut flows, count, Some(rate), Duration::from_secs(60))?;
        Ok(Sent {
            sent: r.sent,
            seconds: r.elapsed.as_secs_f64(),
            thread_cpu_ns: rusage_ns(libc::RUSAGE_THREAD).saturating_sub(t0),
            retries: r.retries,
        })
    });
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("generator thread panicked"))??
}

/// Sends `count` frames of the templates in `pcap` NIC-like at `rate` from the peer's end
/// (background templates 8 packets a flow, 256 flows interleaved, flows numbered from
/// `first_flow`); returns (sent, seconds).
pub(crate) fn nic_send(
    pair: &VethPair,
    pcap: &Path,
    count: u64,
    rate: u64,
    first_flow: u64,
) -> anyhow::Result<(u64, f64)> {
    let out = pair
        .in_peer_ns(&nicgen().to_string_lossy())
        .args(["send", "--iface", &pair.peer_if, "--frames"])
        .arg(pcap)
        .args([
            "--count",
            &count.to_string(),
            "--rate",
            &rate.to_string(),
            "--flow-packets",
            &FLOW_PACKETS.to_string(),
            "--window",
            &WINDOW.to_string(),
            "--first-flow",
            &first_flow.to_string(),
            "--max-seconds",
            "60",
        ])
        .output();
    let text = nicgen_stdout(out, "send")?;
    let num = |k: &str| -> f64 { json_field(&text, k).unwrap_or(0.0) };
    Ok((num("sent") as u64, num("seconds")))
}

/// NIC-like delivery where the kernel refuses live frames: a veth pair ([`RELAY_IN`],
/// [`RELAY_OUT`]) in `pair`'s peer namespace and `xtrail-nicgen relay` on [`RELAY_OUT`],
/// which `bpf_redirect`s every frame into the pair's peer end. Frames sent into
/// [`RELAY_IN`] by AF_PACKET reach the sensor's end as `xdp_frame`s, as from a NIC driver;
/// veth's skb-to-XDP conversion is paid at [`RELAY_OUT`], in the sender's context, as part of
/// the delivery (the no-sensor run pays it too). Stopped when dropped; its veths go with the
/// namespace.
pub(crate) struct Relay {
    watched: xtrail_bench::child::Watched,
}

impl Relay {
    pub(crate) fn start(pair: &VethPair) -> anyhow::Result<Relay> {
        // No IPv6 address on either end: nothing of the relay's own (neighbour discovery,
        // MLD) is relayed into the sensor's veth.
        pair.add_peer_veth(RELAY_IN, RELAY_OUT)?;
        let mut cmd = pair.in_peer_ns(&nicgen().to_string_lossy());
        cmd.args(["relay", "--from", RELAY_OUT, "--to", &pair.peer_if])
            .stdout(Stdio::null());
        let watched = xtrail_bench::child::spawn_watched(&mut cmd, None)
            .context("starting xtrail-nicgen relay")?;
        // Dropped on failure: the process is stopped.
        let mut relay = Relay { watched };
        if let Err(e) = relay
            .watched
            .wait_for("running", "Error", Duration::from_secs(30))
        {
            let exited = relay.exited().unwrap_or_else(|| "still running".into());
            anyhow::bail!("xtrail-nicgen relay did not start ({exited}): {e}");
        }
        Ok(relay)
    }

    /// How the relay process ended, if it has (its frames then go nowhere).
    pub(crate) fn exited(&mut self) -> Option<String> {
        self.watched
            .child
            .try_wait()
            .ok()
            .flatten()
            .map(|st| st.to_string())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        stop_child(&mut self.watched.child);
    }
}

/// Turns GRO on at the sensor's end of `pair` (NAPI without an XDP program, as a NIC's).
pub(crate) fn gro_on(pair: &VethPair) -> anyhow::Result<()> {
    let gro = pair
        .in_sensor_ns(&nicgen().to_string_lossy())
        .args(["gro", "--iface", &pair.sensor_if])
        .status()?;
    anyhow::ensure!(gro.success(), "turning GRO on at the receiving veth failed");
    Ok(())
}

/// Events (trail field values) written to the log since byte `from`.
fn events_since(log: &Path, from: &mut u64) -> Vec<String> {
    let text = std::fs::read(log).unwrap_or_default();
    let start = (*from as usize).min(text.len());
    *from = text.len() as u64;
    crate::bench::logged_trails(&String::from_utf8_lossy(&text[start..]))
}

/// Counters sampled before and after a run.
struct Sample {
    busy_ticks: u64,
    path_ns: u64,
    process_ns: u64,
    rx_packets: u64,
    xdp: Option<(u64, u64)>,
}

impl Sample {
    /// The sample before a send: the packet path's CPU read last, so that the other reads
    /// (commands, /proc scans) are not inside the run's window.
    fn before(pair: &VethPair, pid: Option<u32>, prog: Option<u32>) -> anyhow::Result<Sample> {
        let (rx_packets, xdp) = (pair.sensor_rx_packets()?, prog_stats(prog));
        let process_ns = pid.map(tree_cpu_ns).unwrap_or(0);
        let busy_ticks = busy_ticks();
        let path_ns = path_cpu_ns();
        Ok(Sample {
            busy_ticks,
            path_ns,
            process_ns,
            rx_packets,
            xdp,
        })
    }

    /// The sample after a send: the packet path's CPU read first.
    fn after(pair: &VethPair, pid: Option<u32>, prog: Option<u32>) -> anyhow::Result<Sample> {
        let path_ns = path_cpu_ns();
        let busy_ticks = busy_ticks();
        let process_ns = pid.map(tree_cpu_ns).unwrap_or(0);
        Ok(Sample {
            busy_ticks,
            path_ns,
            process_ns,
            rx_packets: pair.sensor_rx_packets()?,
            xdp: prog_stats(prog),
        })
    }
}

/// One run: a delivery of one scenario at one rate, with one sensor under measurement.
struct Run<'a> {
    pair: &'a VethPair,
    delivery: &'static str,
    sc: &'a Scenario<'a>,
    sensor: &'a str,
    mode: &'a str,
    rate: u64,
    count: u64,
    /// The sensor process, if any.
    pid: Option<u32>,
    /// The sensor's XDP program, if any.
    prog: Option<u32>,
    /// The sensor's events log.
    log: &'a Path,
    /// A capture sensor: sampled after its process tree stops working (`settle`).
    capture: bool,
    /// Its events are scored: xtrail's, and a `--peer`'s given `{log}`.
    scored: bool,
}

impl Run<'_> {
    /// Sends the run's traffic from flow `first_flow` on (moved past what was sent) and
    /// measures it; reads the log's new events from `log_at`. None when the send failed
    /// (said on stderr).
    fn measure(&self, first_flow: &mut u64, log_at: &mut u64) -> anyhow::Result<Option<NicRun>> {
        let (delivery, sc, sensor, mode, rate) =
            (self.delivery, self.sc, self.sensor, self.mode, self.rate);
        // Only what this run's sensor writes from here on is scored.
        *log_at = std::fs::metadata(self.log).map_or(0, |m| m.len());
        let before = Sample::before(self.pair, self.pid, self.prog)?;
        let sent = send(self.pair, delivery, sc, self.count, rate, *first_flow);
        std::thread::sleep(DRAIN);
        let settle_s = match self.pid {
            Some(pid) if self.capture => {
                let waited = settle(pid, SETTLE_MAX);
                if waited >= SETTLE_MAX {
                    eprintln!("bench: nic {delivery}/{}/{sensor}/{rate}: still busy {SETTLE_MAX:?} after the send: its CPU is undercounted", sc.name);
                }
                waited.as_secs_f64()
            }
            _ => 0.0,
        };
        let after = Sample::after(self.pair, self.pid, self.prog)?;
        let Sent {
            sent,
            seconds: secs,
            thread_cpu_ns: generator_thread_ns,
            retries: send_retries,
        } = match sent {
            Ok(s) => s,
            Err(e) => {
                eprintln!(
                    "bench: nic {delivery}/{}/{sensor} {mode}/{rate}: failed: {e:#}",
                    sc.name
                );
                return Ok(None);
            }
        };
        *first_flow += sent;
        let delivered = after.rx_packets.saturating_sub(before.rx_packets);
        let per_ns = |ns: u64| ns as f64 / delivered.max(1) as f64;
        let per = |ticks: u64| per_ns(ticks) * tick_ns();
        let (xdp_runs, xdp_ns) = match xdp_between(before.xdp, after.xdp) {
            Some((runs, ns)) => (runs, Some(ns)),
            None => (0, None),
        };
        if self.scored && self.capture && !sc.items.is_empty() {
            std::thread::sleep(PEER_LOG_FLUSH);
        }
        let events = events_since(self.log, log_at);
        let detected = (self.scored && !sc.items.is_empty()).then(|| {
            let sent_items: Vec<&scenario::Item> = if sent >= MIX_TEMPLATES as u64 {
                sc.items.iter().collect()
            } else {
                Vec::new()
            };
            sent_items
                .iter()
                .filter(|i| events.iter().any(|t| scenario::matches(i, t)))
                .count()
        });
        let process = per_ns(after.process_ns.saturating_sub(before.process_ns));
        let r = NicRun {
            delivery,
            scenario: sc.name,
            sensor: sensor.to_string(),
            mode: mode.to_string(),
            rate,
            sent,
            send_pps: sent as f64 / secs.max(1e-9),
            delivered,
            busy_ns_per_packet: per(after.busy_ticks - before.busy_ticks),
            path_ns_per_packet: (after.path_ns - before.path_ns + generator_thread_ns) as f64
                / delivered.max(1) as f64
                + if self.pid.is_some() { process } else { 0.0 },
            added_path_ns_per_packet: None,
            added_ns_per_packet: None,
            process_ns_per_packet: if self.pid.is_some() {
                process
            } else {
                f64::NAN
            },
            xdp_runs,
            xdp_ns_per_run: xdp_ns,
            injected: sc.items.len(),
            detected,
            settle_s,
            generator_busy: if delivery != "nic" {
                generator_thread_ns as f64 / (secs * 1e9).max(1.0)
            } else {
                f64::NAN
            },
            send_retries,
            load: crate::host::loadavg(3),
            round: 0,
            rounds: 1,
            added_path_rounds: Vec::new(),
            path_rounds: Vec::new(),
        };
        eprintln!(
            "bench: nic {delivery}/{}/{sensor} {mode}/{rate}: sent {} ({:.0} pps), delivered {}, busy {:.0} ns/pkt, process {:.0} ns/pkt, xdp {} ns/run, load {}",
            sc.name,
            r.sent,
            r.send_pps,
            r.delivered,
            r.busy_ns_per_packet,
            r.process_ns_per_packet,
            r.xdp_ns_per_run.map(|x| format!("{x:.0}")).unwrap_or("-".into()),
            r.load
        );
        Ok(Some(r))
    }
}

/// A sensor under measurement on its own veth pair, kept running through every round.
struct Sut {
    sensor: String,
    mode: String,
    /// The relay into `pair` where live frames are refused (stopped before `pair` goes).
    relay: Option<Relay>,
    pair: VethPair,
    under: Under,
    prog: Option<u32>,
    log: PathBuf,
    scored: bool,
    log_at: u64,
    first_flow: u64,
}

/// Runs everything and writes nic.json / nic.md; returns the Markdown summary lines.
pub fn run(inp: &NicInputs<'_>, results: &Path, when: &str) -> anyhow::Result<Vec<String>> {
    anyhow::ensure!(
        nicgen().is_file(),
        "{} not built (cargo build --release -p xtrail-nicgen)",
        nicgen().display()
    );
    let live = live_frames()?;
    if !live {
        eprintln!("bench: nic: this kernel refuses BPF_PROG_RUN live frames (xtrail-nicgen live-frames): NIC-like delivery through a relay instead (AF_PACKET into a veth whose XDP program redirects every frame into the sensor's veth), and AF_PACKET delivery");
    }
    let [udp, ack, syn, mix_frames, dns, http, tls] = templates(inp.background, inp.mix);
    let rates: &[u64] = if inp.peer.is_some() {
        &[PEER_RATE, 500_000, 1_000_000]
    } else {
        &[500_000, 1_000_000]
    };
    let mut scenarios = Vec::new();
    for (name, frames, items, handoff) in [
        ("udp", &udp[..], &[][..], false),
        ("tcp-ack", &ack[..], &[][..], false),
        ("tcp-syn", &syn[..], &[][..], false),
        ("mix", &mix_frames[..], &inp.mix.items[..], false),
        ("dns", &dns[..], &[][..], true),
        ("http", &http[..], &[][..], true),
        ("tls", &tls[..], &[][..], true),
    ] {
        anyhow::ensure!(!frames.is_empty(), "bench: nic: no {name} templates");
        let pcap = inp.tmp.join(format!("nic-{name}.pcap"));
        write_pcap(&pcap, frames)?;
        scenarios.push(Scenario {
            name,
            pcap,
            frames,
            items,
            // The hand-off scenarios: NIC-like delivery (by live frames, else through the
            // relay) at one rate.
            deliveries: match (handoff, live) {
                (true, true) => &["nic"],
                (false, true) => &["nic", "afpacket"],
                (true, false) => &["relay"],
                (false, false) => &["relay", "afpacket"],
            },
            rates: if handoff { &[HANDOFF_RATE] } else { rates },
        });
    }
    let (seconds, rounds) = if inp.quick {
        (1.0, 1)
    } else {
        (2.0, inp.rounds.max(1))
    };
    let mut sensors: Vec<(String, String)> = vec![
        ("none".into(), "-".into()),
        (FLOOR.into(), "floor".into()),
        ("xtrail".into(), "inline".into()),
        ("xtrail".into(), "mirror".into()),
        ("pcap-baseline".into(), "capture".into()),
    ];
    if inp.peer.is_some() {
        sensors.push(("peer".into(), "capture".into()));
    }
    // Every sensor starts on its own veth pair and runs until the end, so that the rounds
    // can alternate between them (the sensors not under measurement idle meanwhile; the
    // path CPU counts only the processes of the one measured).
    let mut suts = Vec::new();
    let mut threaded = String::new();
    for (sensor, mode) in &sensors {
        let mut sut = start_sut(inp, sensor, mode, "")?;
        if !live {
            sut.relay = Some(Relay::start(&sut.pair)?);
        }
        if threaded.is_empty() {
            threaded = sut
                .pair
                .in_sensor_ns("cat")
                .arg(format!("/sys/class/net/{}/threaded", sut.pair.sensor_if))
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default();
        }
        suts.push(sut);
    }
    // bpf_stats off while CPU is measured: its two clock reads per program run (for every
    // sensor's programs, the capture sensors' socket filters included) are not part of
    // any sensor's cost. XDP ns/run comes from a separate pass below.
    let knob = StatsKnob::new();
    knob.set(false)?;
    let plan: Vec<(&'static str, &Scenario<'_>, u64)> = DELIVERIES
        .into_iter()
        .flat_map(|delivery| {
            scenarios
                .iter()
                .filter(move |sc| sc.deliveries.contains(&delivery))
                .flat_map(move |sc| sc.rates.iter().map(move |&rate| (delivery, sc, rate)))
        })
        .collect();
    let mut raw: Vec<NicRun> = Vec::new();
    for round in 0..rounds {
        for &(delivery, sc, rate) in &plan {
            // Every sensor back to back on the same traffic, in an order that turns each
            // round and runs backwards every other round (so no sensor always follows the
            // same one).
            let n = suts.len();
            for i in 0..n {
                let k = (i + round / 2) % n;
                let k = if round % 2 == 1 { n - 1 - k } else { k };
                let sut = &mut suts[k];
                if let Some(gone) = sut.under.exited() {
                    anyhow::bail!("{} {} exited during the runs: {gone}", sut.sensor, sut.mode);
                }
                sut.relay_alive()?;
                // bpf_stats is off: no program stats to read. Recall is scored in the first
                // round (a capture sensor's log is read seconds after the run: see
                // PEER_LOG_FLUSH).
                let (capture, scored) = (sut.capture(), sut.scored && round == 0);
                let count = (rate as f64 * seconds) as u64;
                if let Some(mut r) =
                    sut.measure(delivery, sc, rate, count, None, capture, scored)?
                {
                    r.round = round;
                    raw.push(r);
                }
            }
        }
    }
    let mut cost_json = None;
    if let Some(id) = suts
        .iter()
        .find(|s| s.sensor == "xtrail" && s.mode == "inline")
        .and_then(|s| s.prog)
    {
        // Still with bpf_stats off: its two clock reads per run would be counted in.
        match xdp_cost_over_loads(id, inp) {
            Ok(j) => cost_json = Some(j),
            Err(e) => eprintln!("bench: nic: XDP cost by test run failed: {e:#}"),
        }
    }
    // XDP ns/run under each run's traffic: a shorter pass with bpf_stats on, for the
    // sensors with an XDP program (xtrail and the delivery floor).
    knob.set(true)?;
    let mut xdp_pass: Vec<NicRun> = Vec::new();
    for &(delivery, sc, rate) in &plan {
        for sut in suts.iter_mut().filter(|s| s.prog.is_some()) {
            let count = (rate as f64 * XDP_PASS_SECONDS) as u64;
            if let Some(r) = sut.measure(delivery, sc, rate, count, sut.prog, false, false)? {
                xdp_pass.push(r);
            }
        }
    }
    drop(knob);
    // A relay gone during the last runs (the rounds check before each run) spoils them too.
    for sut in &mut suts {
        sut.relay_alive()?;
    }
    // Each sensor stops (and its log goes) as its `Sut` drops, here or on an early return.
    drop(suts);
    let runs = aggregate(&raw, &xdp_pass, rounds);
    write(
        results,
        &runs,
        cost_json.as_deref(),
        &threaded,
        live,
        when,
        inp,
    )
}

/// Whether `r`'s run or the no-sensor run of its delivery, traffic and rate had a saturated
/// sender ([`SATURATED`]).
fn saturated(runs: &[NicRun], r: &NicRun) -> bool {
    let busy = |x: &NicRun| x.generator_busy >= SATURATED;
    busy(r)
        || runs.iter().any(|n| {
            n.sensor == "none"
                && n.delivery == r.delivery
                && n.scenario == r.scenario
                && n.rate == r.rate
                && busy(n)
        })
}

/// A scenario's templates as `cargo xtask ab` and `xdp-profile` send them: NIC-like, by
/// live frames where the kernel runs them, else through the pair's [`Relay`] (started by
/// `ab::with_sensor`).
pub(crate) struct Templates {
    pub(crate) pcap: PathBuf,
    pub(crate) frames: Vec<Vec<u8>>,
    pub(crate) live: bool,
}

impl Templates {
    /// `frames` written to `pcap`; the delivery decided (and said on stderr when it is not
    /// NIC-like).
    pub(crate) fn new(pcap: PathBuf, frames: Vec<Vec<u8>>) -> anyhow::Result<Templates> {
        write_pcap(&pcap, &frames)?;
        let live = live_frames()?;
        if !live {
            eprintln!("xtask: this kernel refuses BPF_PROG_RUN live frames: NIC-like delivery through a relay (AF_PACKET into a veth whose XDP program redirects every frame into the sensor's veth)");
        }
        Ok(Templates { pcap, frames, live })
    }

    /// Sends `count` frames at `rate`, flows numbered from `first_flow` (through `pair`'s
    /// relay where live frames are refused).
    pub(crate) fn send(
        &self,
        pair: &VethPair,
        count: u64,
        rate: u64,
        first_flow: u64,
    ) -> anyhow::Result<Sent> {
        if self.live {
            nic_sent(pair, &self.pcap, count, rate, first_flow)
        } else {
            afpacket_send(pair, RELAY_IN, self.frames.clone(), count, rate, first_flow)
        }
    }
}

/// Whether this kernel runs BPF_PROG_RUN in live-frames mode, the NIC-like delivery (some
/// refuse it to every caller: `xtrail-nicgen live-frames`).
fn live_frames() -> anyhow::Result<bool> {
    let out = Command::new(nicgen()).arg("live-frames").output();
    let text = nicgen_stdout(out, "live-frames")?;
    json_field(&text, "live_frames").context("xtrail-nicgen live-frames printed no verdict")
}

impl Sut {
    /// One run of `count` frames of `sc` at `rate` on this sensor (see [`Run::measure`]).
    #[allow(clippy::too_many_arguments)]
    fn measure(
        &mut self,
        delivery: &'static str,
        sc: &Scenario<'_>,
        rate: u64,
        count: u64,
        prog: Option<u32>,
        capture: bool,
        scored: bool,
    ) -> anyhow::Result<Option<NicRun>> {
        let run = Run {
            pair: &self.pair,
            delivery,
            sc,
            sensor: &self.sensor,
            mode: &self.mode,
            rate,
            count,
            pid: self.under.pid(),
            prog,
            log: &self.log,
            capture,
            scored,
        };
        run.measure(&mut self.first_flow, &mut self.log_at)
    }

    /// An error when the sensor's relay (if it has one) has exited: its frames went nowhere.
    fn relay_alive(&mut self) -> anyhow::Result<()> {
        if let Some(gone) = self.relay.as_mut().and_then(Relay::exited) {
            anyhow::bail!(
                "the relay of {} {} exited during the runs: {gone}",
                self.sensor,
                self.mode
            );
        }
        Ok(())
    }

    /// A capture sensor (the libpcap baseline, `--peer`): sampled after its process tree
    /// stops working. Not the delivery floor, whose program runs in the kernel.
    fn capture(&self) -> bool {
        matches!(self.under, Under::Process(_)) && self.sensor != FLOOR
    }
}

impl Drop for Sut {
    fn drop(&mut self) {
        self.under.stop();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// `kernel.bpf_stats_enabled`, restored to what it was when dropped.
pub(crate) struct StatsKnob {
    old: String,
}

impl StatsKnob {
    const PATH: &'static str = "/proc/sys/kernel/bpf_stats_enabled";

    pub(crate) fn new() -> StatsKnob {
        StatsKnob {
            old: std::fs::read_to_string(Self::PATH).unwrap_or_else(|_| "0".into()),
        }
    }

    /// Sets the knob and reads it back.
    pub(crate) fn set(&self, on: bool) -> anyhow::Result<()> {
        let want = if on { "1" } else { "0" };
        std::fs::write(Self::PATH, want).with_context(|| format!("writing {}", Self::PATH))?;
        let now = std::fs::read_to_string(Self::PATH).unwrap_or_default();
        anyhow::ensure!(
            now.trim() == want,
            "{} reads {:?} after writing {want}",
            Self::PATH,
            now.trim()
        );
        Ok(())
    }
}

impl Drop for StatsKnob {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, self.old.trim());
    }
}

/// Creates a veth pair (GRO on at the sensor's end) and starts `sensor` on it, its events
/// in a file named after it and `tag` (another instance of the same sensor needs its own).
fn start_sut(inp: &NicInputs<'_>, sensor: &str, mode: &str, tag: &str) -> anyhow::Result<Sut> {
    let pair = VethPair::create("xn")?;
    gro_on(&pair)?;
    let log = inp.tmp.join(format!(
        "nic-events-{sensor}-{mode}{tag}.{}",
        if sensor == "xtrail" { "jsonl" } else { "log" }
    ));
    let _ = std::fs::remove_file(&log);
    let under = match sensor {
        "none" => Under::None,
        "xtrail" => Under::Xtrail(start_sensor(
            &paths::sensor_binary(),
            &pair,
            inp.trails,
            mode,
            &log,
            inp.sensor_args,
        )?),
        other => {
            let cmdline = if other == "peer" {
                inp.peer.unwrap_or_default().to_string()
            } else if other == FLOOR {
                format!("{} sink --iface {{iface}}", nicgen().display())
            } else {
                let baseline = paths::workspace_root().join("target/release/xtrail-pcap-baseline");
                format!(
                    "{} --iface {{iface}} --trails {{trails}} --duration 86400",
                    baseline.display()
                )
            };
            Under::Process(Other::start(
                &pair,
                other,
                &cmdline,
                inp.trails,
                &log,
                Stdio::null(),
            )?)
        }
    };
    let prog = xdp_prog_id(&pair);
    if (sensor == "xtrail" || sensor == FLOOR) && prog.is_none() {
        let mut under = under;
        under.stop();
        anyhow::bail!(
            "{sensor} {mode}: no XDP program attached to {}",
            pair.sensor_if
        );
    }
    let scored = match &under {
        Under::Xtrail(_) => true,
        Under::Process(o) => o.log.is_some(),
        Under::None => false,
    };
    Ok(Sut {
        sensor: sensor.to_string(),
        mode: mode.to_string(),
        relay: None,
        pair,
        under,
        prog,
        log,
        scored,
        log_at: 0,
        first_flow: 0,
    })
}

/// The median of `v` (NaN when empty).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One row per sensor, delivery, traffic and rate: the medians over the rounds, what each
/// sensor adds as the median of its per-round differences from the no-sensor run of the
/// same round, recall from the first round, XDP ns/run from the bpf_stats pass.
fn aggregate(raw: &[NicRun], xdp_pass: &[NicRun], rounds: usize) -> Vec<NicRun> {
    let same = |a: &NicRun, b: &NicRun| {
        a.delivery == b.delivery && a.scenario == b.scenario && a.rate == b.rate
    };
    let mut out: Vec<NicRun> = Vec::new();
    for r in raw {
        if out
            .iter()
            .any(|o| same(o, r) && o.sensor == r.sensor && o.mode == r.mode)
        {
            continue;
        }
        let mine: Vec<&NicRun> = raw
            .iter()
            .filter(|x| same(x, r) && x.sensor == r.sensor && x.mode == r.mode)
            .collect();
        let none_of = |x: &NicRun| {
            raw.iter()
                .find(|b| same(b, x) && b.sensor == "none" && b.round == x.round)
        };
        let med = |f: &dyn Fn(&NicRun) -> f64| median(mine.iter().map(|x| f(x)).collect());
        let added_path: Vec<f64> = mine
            .iter()
            .filter_map(|x| Some(x.path_ns_per_packet - none_of(x)?.path_ns_per_packet))
            .collect();
        let added_busy: Vec<f64> = mine
            .iter()
            .filter_map(|x| Some(x.busy_ns_per_packet - none_of(x)?.busy_ns_per_packet))
            .collect();
        let first = mine.iter().find(|x| x.round == 0).copied().unwrap_or(r);
        let xdp = xdp_pass
            .iter()
            .find(|x| same(x, r) && x.sensor == r.sensor && x.mode == r.mode);
        let is_sensor = r.sensor != "none";
        out.push(NicRun {
            sent: mine.iter().map(|x| x.sent).sum::<u64>() / mine.len().max(1) as u64,
            send_pps: med(&|x| x.send_pps),
            generator_busy: med(&|x| x.generator_busy),
            send_retries: mine.iter().map(|x| x.send_retries).max().unwrap_or(0),
            delivered: mine.iter().map(|x| x.delivered).sum::<u64>() / mine.len().max(1) as u64,
            busy_ns_per_packet: med(&|x| x.busy_ns_per_packet),
            path_ns_per_packet: med(&|x| x.path_ns_per_packet),
            added_path_ns_per_packet: (is_sensor && !added_path.is_empty())
                .then(|| median(added_path.clone())),
            added_ns_per_packet: (is_sensor && !added_busy.is_empty()).then(|| median(added_busy)),
            added_path_rounds: if is_sensor { added_path } else { Vec::new() },
            path_rounds: mine
                .iter()
                .map(|x| (x.round, x.path_ns_per_packet))
                .collect(),
            process_ns_per_packet: med(&|x| x.process_ns_per_packet),
            xdp_runs: xdp.map_or(0, |x| x.xdp_runs),
            xdp_ns_per_run: xdp.and_then(|x| x.xdp_ns_per_run),
            detected: first.detected,
            settle_s: mine.iter().map(|x| x.settle_s).fold(0.0, f64::max),
            load: first.load.clone(),
            rounds,
            ..r.clone()
        });
    }
    out
}

/// The sent-rate column's marks: `(saturated)` (see [`SATURATED`]) and the `sendmmsg` calls a
/// full socket refused (retried).
fn sender_marks(r: &NicRun) -> String {
    let mut m = String::new();
    if r.generator_busy >= SATURATED {
        m.push_str(" (saturated)");
    }
    if r.send_retries > 0 {
        m.push_str(&format!(" ({} sends retried)", r.send_retries));
    }
    m
}

/// [`xdp_cost`] on the running inline sensor's program, then on [`XDP_COST_LOADS`] - 1
/// fresh sensors (each its own load of the program, started and stopped in turn), combined
/// by [`combine_loads`]. A fresh load that fails ends the series with the loads so far.
fn xdp_cost_over_loads(running: u32, inp: &NicInputs<'_>) -> anyhow::Result<String> {
    let mut loads = vec![parse_cost(&xdp_cost(running, inp.tmp)?)?];
    for k in 1..XDP_COST_LOADS {
        let fresh = || -> anyhow::Result<serde_json::Value> {
            let sut = start_sut(inp, "xtrail", "inline", &format!("-load{k}"))?;
            let prog = sut
                .prog
                .context("a fresh inline sensor has no XDP program")?;
            parse_cost(&xdp_cost(prog, inp.tmp)?)
        };
        match fresh() {
            Ok(load) => loads.push(load),
            Err(e) => {
                eprintln!("bench: nic: XDP cost on fresh load {k} failed: {e:#}");
                break;
            }
        }
    }
    Ok(combine_loads(loads).to_string())
}

fn parse_cost(text: &str) -> anyhow::Result<serde_json::Value> {
    serde_json::from_str(text).context("xtrail-nicgen xdp-cost printed no JSON")
}

/// One figure per frame over several program loads: `net_ns_median` and `ns_median` the
/// medians over the loads of each load's, `net_ns_loads` each load's, `ns_min` the lowest,
/// the counters summed; `noop_ns` the lowest floor, `array_read_ns` the median,
/// `array_read_net_ns` the median of each load's `array_read_ns - noop_ns`; each load's own
/// output in `per_load`.
fn combine_loads(loads: Vec<serde_json::Value>) -> serde_json::Value {
    use serde_json::{json, Value};
    let num = |v: &Value, key: &str| v.get(key).and_then(Value::as_f64);
    let frame_of = |load: &Value, name: &str| -> Option<Value> {
        load.get("frames")?
            .as_array()?
            .iter()
            .find(|f| f.get("frame").and_then(Value::as_str) == Some(name))
            .cloned()
    };
    let names: Vec<String> = loads
        .first()
        .and_then(|l| l.get("frames")?.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|f| Some(f.get("frame")?.as_str()?.to_string()))
        .collect();
    let frames: Vec<Value> = names
        .iter()
        .map(|name| {
            let each: Vec<Value> = loads.iter().filter_map(|l| frame_of(l, name)).collect();
            let all = |key: &str| -> Vec<f64> { each.iter().filter_map(|f| num(f, key)).collect() };
            let sum = |key: &str| all(key).iter().sum::<f64>() as u64;
            let net = all("net_ns_median");
            json!({
                "frame": name,
                "flow_window_0": each.first().and_then(|f| f.get("flow_window_0")).cloned(),
                "loads": each.len(),
                "runs": sum("runs"),
                "ns_median": median(all("ns_median")),
                "ns_min": all("ns_min").into_iter().reduce(f64::min),
                "net_ns_median": median(net.clone()),
                "net_ns_loads": net,
                "verdict": each.first().and_then(|f| f.get("verdict")).cloned(),
                "flow_starts": sum("flow_starts"),
                "flows_full": sum("flows_full"),
            })
        })
        .collect();
    let tops = |key: &str| -> Vec<f64> { loads.iter().filter_map(|l| num(l, key)).collect() };
    let read_net: Vec<f64> = loads
        .iter()
        .filter_map(|l| Some(num(l, "array_read_ns")? - num(l, "noop_ns")?))
        .collect();
    json!({
        "program": loads.first().and_then(|l| l.get("program")).cloned(),
        "verified_insns": loads.first().and_then(|l| l.get("verified_insns")).cloned(),
        "loads": loads.len(),
        "frames": frames,
        "noop_ns": tops("noop_ns").into_iter().reduce(f64::min),
        "array_read_ns": median(tops("array_read_ns")),
        "array_read_net_ns": median(read_net),
        "per_load": loads,
    })
}

/// BPF_PROG_TEST_RUN repeat on the sensor's loaded program (full trail maps, inline
/// config): a clean TCP ACK, a clean UDP packet and SYN whose flow start is already sent
/// (the cache hit), and a UDP packet with the flow window at 0 (a flow-start record every
/// run); plus the cost of one array map read.
fn xdp_cost(prog: u32, tmp: &Path) -> anyhow::Result<String> {
    let server = v4("203.0.113.77");
    // The ACK without payload (before 2026-12-06 09:10 with 32 zero bytes, which the
    // program reads as none: the same path); the UDP packets with a background payload.
    let frames = vec![
        Frame::tcp(v4("198.18.9.9"), 40000, server, 443, tcp_flags::ACK).build(),
        background_udp(v4("198.18.9.9"), 40000, server, 5000),
        Frame::syn(v4("198.18.9.9"), 40001, server, 443).build(),
        background_udp(v4("198.18.9.10"), 40000, server, 5001),
    ];
    let pcap = tmp.join("nic-xdp-cost.pcap");
    write_pcap(&pcap, &frames)?;
    let out = Command::new(nicgen())
        .args(["xdp-cost", "--prog-id", &prog.to_string(), "--frames"])
        .arg(&pcap)
        .args([
            "--names",
            "tcp_ack,udp_flow_seen,syn_flow_seen,udp_flow_start",
            "--flow-starts-every-run",
            "udp_flow_start",
            "--repeat",
            "200000",
        ])
        .output();
    nicgen_stdout(out, "xdp-cost")
}

/// The trimmed standard output of `xtrail-nicgen COMMAND`, or its error (standard error)
/// when it failed.
fn nicgen_stdout(
    out: std::io::Result<std::process::Output>,
    command: &str,
) -> anyhow::Result<String> {
    let out = out.with_context(|| format!("running xtrail-nicgen {command}"))?;
    anyhow::ensure!(
        out.status.success(),
        "xtrail-nicgen {command}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

const METHOD: &str = "Fixed offered rates. NIC-like delivery: xtrail-nicgen runs an XDP program with BPF_PROG_RUN in live-frames mode (BPF_F_TEST_XDP_LIVE_FRAMES, batch 64) on CPU 0 of the peer namespace, injecting what is due every 1 ms, and bpf_redirects each frame into the veth: the sensor's end receives xdp_frames as from a NIC driver. AF_PACKET delivery: the same frame sequence (xtrail_bench::flows) sent with batched sendmmsg from CPU 0, paced in 1 ms ticks: each tick the frames due by its end, in batches of 64, then a sleep to the next tick (until 2026-12-07 08:20 waits under 200 us were spun: a sender that kept up at 500k or 1M pps was busy for its whole wall time, which hid the receive path's cost, an XDP program's included, in the spin while a capture sensor's process was counted apart; the full run of 08:19 sent what was due by now and slept 1 ms once caught up: at 1M its sender never caught up, sending a frame or two a call). Both rewrite each template frame's IPv4 source (198.18.0.0/15) and source port per flow, checksums updated; background templates (payloads of xtrail_nicgen_common::filler_byte, bytes that look like ciphertext; all-zero payloads before 2026-12-06 09:06) are sent 8 packets per flow, 256 flows interleaved; DNS/HTTP/TLS templates of the mix once per flow, but a ClientHello in two segments (half the mix's: with the post-quantum key share) is one flow of two packets, sent in order (consecutive templates that continue one TCP stream are linked: Template::link). Scenarios udp, tcp-ack, tcp-syn (251 background templates each) and mix (4,093 templates) run on both deliveries at every rate; dns, http and tls (the mix's templates of that kind alone: every packet is handed to userspace, so the sensor process's CPU per packet is the live cost of a hand-off with its flow start, wake-ups and ring reads included) run NIC-like at 50k pps only. live_frames: false when the kernel refuses BPF_PROG_RUN in live-frames mode (xtrail-nicgen live-frames; some builds return EPERM even to root): then NIC-like delivery runs through a relay (delivery 'relay', in place of 'nic', the hand-off scenarios too): the same frame sequence sent by AF_PACKET (as above) into a veth in the peer namespace whose XDP program (xtrail-nicgen relay, native mode) bpf_redirects every frame into the peer's end of the sensor's veth, so the sensor's end receives xdp_frames as from a NIC driver, as with live frames; the relay's skb-to-XDP conversion and redirect run in the sender's context (its RUSAGE_THREAD) in every run, the no-sensor run's too (until 2026-12-07 10:30 such a kernel had AF_PACKET delivery only). GRO is on at the receiving veth in every run (NAPI without an XDP program). xtrail mirror runs use the sensor's default hand-off transport: on these veths, which have no zero-copy AF_XDP, ring-buffer copies as inline (until 88d1a7b, 2026-12-07 21:51, AF_XDP sockets in copy mode, which cost the sensor 340-510 ns more a hand-off). Every sensor (and 'none', a veth pair with nothing on it, and 'xdp-drop', the delivery floor: xtrail-nicgen sink attaches an XDP program that drops every frame) runs on its own veth pair from the start to the end; a full run has --nic-rounds rounds (default 3; --quick: 1), and in each round every delivery, traffic and rate is sent to each sensor back to back (2 s per run, --quick 1 s; the sensors' order turns each round and runs backwards every other round). kernel.bpf_stats_enabled=0 during these runs (written and read back) (its clock reads per program run, XDP and socket filters alike, are not a sensor's cost). Per run, sampled at the same instants before the send and after a 0.5 s drain: whole-machine busy time (/proc/stat, all CPUs, everything but idle and iowait), the sensor process's CPU (its CPU-time clock, clock_getcpuclockid: ns, not /proc's 10 ms ticks), packets received on the sensor's veth. busy_ns_per_packet = whole-machine busy time / packets delivered (meaningless while other work fills every CPU: see load); path_ns_per_packet = CPU of the packet path only / packets delivered: the generator's own CPU (live frames, delivery 'nic': the xtrail-nicgen process, a waited-for child, whose BPF_PROG_RUN calls run the receive path, the sensor's XDP program and the stack included, in softirq in its context; AF_PACKET and relay: the sending thread's RUSAGE_THREAD, its sendmmsg calls likewise, the relay's XDP program and redirect included; generator_busy (AF_PACKET and relay rows): that thread's CPU over the send's wall time, median over rounds; at 0.95 or more the sender is saturated and a row's path is about its wall time per packet, marked '(saturated)' in nic.md; send_retries (AF_PACKET and relay rows): sendmmsg calls a full socket refused (ENOBUFS or EWOULDBLOCK), each retried from the first frame not taken after a yield, so no frame is skipped, the most in any round, marked '(N sends retried)' in nic.md), the bench's other waited-for children (the ip commands every run's samples use, sensor or not), the ksoftirqd threads and the sensor process tree (CPU-time clocks, exact to the ns; nic runs before 2026-12-04 used /proc's 10 ms ticks: up to 10 ns a packet per process at 1M packets, 100 ns at the 50k rate's 100,000; other work on the machine, the bench's own sampling and settling included, is not counted). The irq/softirq columns of /proc/stat are not added: without IRQ time accounting their ticks are also charged to the interrupted task, which would count the receive path twice. The path CPU is read last before the send and first after it. Rows are medians over the rounds; added_path_ns_per_packet = the median over rounds of the run's path minus the same round's no-sensor run's (added_path_ns_per_packet_rounds lists them); added_busy_ns_per_packet likewise with busy time. sent and delivered are means over the rounds. xdp_ns_per_run and xdp_runs: a separate pass after the rounds for the sensors with an XDP program (xtrail, xdp-drop), 0.5 s per delivery, traffic and rate with kernel.bpf_stats_enabled=1 (run_time_ns / run_cnt of the sensor's XDP program; bpf_stats' own clock reads included: see the xdp-drop rows). Recall: scored in the first round, on the events a sensor wrote from the send to the sample. Capture sensors (the libpcap baseline, --peer): the sensor process CPU is the process tree's, and the after-sample waits until that tree stops working (settle_s, the largest over rounds; see peer_method). Each run starts at fresh flow numbers. xdp_cost: BPF_PROG_TEST_RUN repeat (not live) on the running inline sensor's program with the full trail maps and on 4 fresh inline sensors started one after another (5 loads of the program: a test run's figures fall in one of two modes per load; until 2026-12-07 the running sensor's alone), the figures the medians over the loads (net_ns_loads: each load's; per_load: each load's output); the flow-start frame runs with the CONFIG flow window set to 0 (restored after) so that every run writes a flow-start record (into the CPU's batch, sent as one ring record per 16: the figure is the cost per flow start with the batch's send shared out), 10,000 runs per call with 100 ms between calls for the sensor to drain; medians over calls; kernel.bpf_stats_enabled=0 meanwhile. noop_ns is the test-run floor on this machine (a program that only returns; the lowest of 5 averages): figures net of it are the program's own cost; net_ns_median is the median over calls of each call minus a floor run of the same frame just before it (the floor moves with the host's load). array_read_net_ns (the median over the loads of each load's array_read_ns - noop_ns) is one array map read per packet (the trail-set selector the two-set keys added).";

/// Each xtrail run with the `--peer` run of the same delivery, traffic and rate.
fn peer_pairs(runs: &[NicRun]) -> Vec<(&NicRun, &NicRun)> {
    runs.iter()
        .filter(|x| x.sensor == "xtrail")
        .filter_map(|x| {
            runs.iter()
                .find(|p| {
                    p.sensor == "peer"
                        && p.delivery == x.delivery
                        && p.scenario == x.scenario
                        && p.rate == x.rate
                })
                .map(|p| (x, p))
        })
        .collect()
}

/// `x / peer`, when the peer's figure is positive.
fn ratio(x: Option<f64>, peer: Option<f64>) -> Option<f64> {
    match (x, peer) {
        (Some(x), Some(p)) if p > 0.0 && x.is_finite() => Some(x / p),
        _ => None,
    }
}

/// The xtrail/peer ratios of one pair: (added path, whole path, added busy, whole path net
/// of the delivery floor's).
fn pair_ratios(runs: &[NicRun], x: &NicRun, p: &NicRun) -> [Option<f64>; 4] {
    let floor = runs.iter().find(|f| {
        f.sensor == FLOOR
            && f.delivery == x.delivery
            && f.scenario == x.scenario
            && f.rate == x.rate
    });
    // Net of the floor round by round (as the added figures are), then the median.
    let path_in = |r: &NicRun, round: usize| {
        r.path_rounds
            .iter()
            .find(|(k, _)| *k == round)
            .map(|(_, v)| *v)
    };
    let net = floor.map(|f| {
        median(
            x.path_rounds
                .iter()
                .filter_map(|&(round, xp)| {
                    let (pp, fp) = (path_in(p, round)?, path_in(f, round)?);
                    ratio(Some(xp - fp), Some(pp - fp))
                })
                .collect(),
        )
    });
    [
        ratio(x.added_path_ns_per_packet, p.added_path_ns_per_packet),
        ratio(Some(x.path_ns_per_packet), Some(p.path_ns_per_packet)),
        ratio(x.added_ns_per_packet, p.added_ns_per_packet),
        net.filter(|v| v.is_finite()),
    ]
}

/// How a `--peer` is measured (nic.json `peer_method`).
const PEER_METHOD: &str = "The --peer command runs in the sensor's namespace with {iface} (its end of the veth), {trails} (the trail source xtrail loads) and {log} (a file for its events in Maltrail's line format) substituted; the bench waits until it prints a line containing 'running' (at most 600 s) and 2 s more. It is measured like the libpcap baseline: the same deliveries, traffic and rates, plus a 50k pps rate for every sensor. Its CPU is its whole process tree's (the CPU-time clock of the process and of each descendant, plus the reaped children's cutime+cstime: Maltrail's Python sensor forks PROCESS_COUNT-1 workers; its Rust sensor runs worker threads). After each send and the 0.5 s drain, the samples wait until that tree stops working (at most 20 ms of CPU, two clock ticks, in 250 ms, at most 60 s; settle_s): Maltrail queues captured packets in a ring for its workers and processes them after the traffic ends. Its recall: the trail field of each event line it wrote to {log} during the run, read 11 s after the sample (Maltrail writes events whose info holds one of its condensing keywords merged every 10 s), matched to the injected items by the same rule as xtrail's events (xtrail_bench::scenario::matches). peer_ratios: xtrail / peer for the same delivery, traffic and rate: added_path_ratio = added_path_ns_per_packet ratio (goal of issue #12 for inline: <= 0.20), path_ratio = path_ns_per_packet ratio (mirror: whole CPU per packet, goal <= 0.25), added_busy_ratio = added_busy_ns_per_packet ratio (whole machine; valid only when otherwise idle), path_net_of_floor_ratio = the path_ns_per_packet ratio with the xdp-drop run's path (the delivery floor: generator and delivery to a program that drops every frame) taken off both, round by round, median over rounds.";

fn write(
    dir: &Path,
    runs: &[NicRun],
    cost: Option<&str>,
    threaded: &str,
    live: bool,
    when: &str,
    inp: &NicInputs<'_>,
) -> anyhow::Result<Vec<String>> {
    let machine = crate::bench::machine();
    let pairs = peer_pairs(runs);
    let num = |x: Option<f64>, places: usize| {
        x.map(|v| crate::bench::json_num(v, places))
            .unwrap_or("null".into())
    };
    let peer_json = pairs
        .iter()
        .map(|(x, p)| {
            let [added, path, busy, net] = pair_ratios(runs, x, p);
            format!(
                "{{\"delivery\":\"{}\",\"scenario\":\"{}\",\"offered_rate\":{},\"xtrail_mode\":\"{}\",\"added_path_ratio\":{},\"path_ratio\":{},\"added_busy_ratio\":{},\"path_net_of_floor_ratio\":{},\"injected\":{},\"xtrail_detected\":{},\"peer_detected\":{}}}",
                x.delivery,
                x.scenario,
                x.rate,
                x.mode,
                num(added, 3),
                num(path, 3),
                num(busy, 3),
                num(net, 3),
                x.injected,
                num(x.detected.map(|d| d as f64), 0),
                num(p.detected.map(|d| d as f64), 0),
            )
        })
        .collect::<Vec<_>>();
    let json = format!(
        "{{\"taken\":\"{when}\",\"machine\":\"{}\",\"quick\":{},\"trails\":\"{}\",\"threaded_napi\":\"{threaded}\",\"live_frames\":{live},\"method\":\"{}\",\"peer\":{},\"peer_method\":{},\"runs\":[\n{}\n],\"peer_ratios\":[\n{}\n],\"xdp_cost\":{}}}\n",
        machine.replace('"', "'"),
        inp.quick,
        inp.trails_name,
        METHOD,
        inp.peer
            .map(|c| serde_json::Value::String(c.to_string()).to_string())
            .unwrap_or("null".into()),
        if inp.peer.is_some() {
            serde_json::Value::String(PEER_METHOD.to_string()).to_string()
        } else {
            "null".into()
        },
        runs.iter().map(NicRun::json).collect::<Vec<_>>().join(",\n"),
        peer_json.join(",\n"),
        cost.unwrap_or("null")
    );
    std::fs::write(dir.join("nic.json"), json)?;
    let mut md = format!(
        "NIC-like and AF_PACKET delivery at fixed rates, taken {when} on {machine}{} with {}; threaded NAPI on the receiving veth: {}.\n\n",
        if inp.quick { " (`--quick`)" } else { "" },
        inp.trails_name,
        if threaded.is_empty() { "unknown" } else { threaded }
    );
    if !live {
        md.push_str("**This kernel refuses BPF_PROG_RUN in live-frames mode** (EPERM to root, even for a program that only returns; `xtrail-nicgen live-frames`), **so NIC-like delivery runs through a relay** (the `relay` rows, the hand-off scenarios too): frames sent by AF_PACKET into a veth whose XDP program (`xtrail-nicgen relay`) `bpf_redirect`s every frame into the sensor's veth, whose end then receives `xdp_frame`s as from a NIC driver, as with live frames. The relay's skb-to-XDP conversion and redirect run in the sender's context in every run, the no-sensor run's too: they raise the floor and the path, not what a sensor adds.\n\n");
    }
    md.push_str(&format!("CPU per delivered packet (ns; nic.svg plots the added path at 500k pps), medians over {} round(s), bpf_stats off. Path: the generator's own CPU (the receive path runs in softirq in its context), the bench's `ip` commands, ksoftirqd and the sensor's process tree (other work on the machine, the bench's sampling included, is not counted; sent and delivered are means); added: minus the same round's no-sensor run with the same delivery, traffic and rate (median over rounds; each round's in brackets). Machine busy: all CPUs' busy time (/proc/stat), valid only while the machine is otherwise idle (see load, 2 cores). XDP ns/run: a separate pass with bpf_stats on, its own two clock reads per run included (the xdp-drop row's program only returns). xdp-drop: the delivery floor, an XDP program that drops every frame (the generator and the delivery alone).\n\n", runs.first().map_or(1, |r| r.rounds)));
    md.push_str("| delivery | traffic | rate | sensor | sent pps | delivered | path ns/pkt | **added path ns/pkt** | machine busy ns/pkt | added busy ns/pkt | sensor process ns/pkt | XDP ns/run | recall | load |\n|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for r in runs {
        md.push_str(&format!(
            "| {} | {} | {}k | {}{} | {:.0}{} | {} | {:.0} | {} | {:.0} | {} | {} | {} | {} | {} |\n",
            r.delivery,
            r.scenario,
            r.rate / 1000,
            r.sensor,
            if r.mode == "-" {
                String::new()
            } else {
                format!(" {}", r.mode)
            },
            r.send_pps,
            sender_marks(r),
            r.delivered,
            r.path_ns_per_packet,
            r.added_path_ns_per_packet
                .map(|x| if r.added_path_rounds.len() > 1 {
                    format!(
                        "{x:+.0} [{}]",
                        r.added_path_rounds
                            .iter()
                            .map(|v| format!("{v:+.0}"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    )
                } else {
                    format!("{x:+.0}")
                })
                .unwrap_or("-".into()),
            r.busy_ns_per_packet,
            r.added_ns_per_packet
                .map(|x| format!("{x:+.0}"))
                .unwrap_or("-".into()),
            if r.process_ns_per_packet.is_finite() {
                format!("{:.0}", r.process_ns_per_packet)
            } else {
                "-".into()
            },
            r.xdp_ns_per_run
                .map(|x| format!("{x:.0}"))
                .unwrap_or("-".into()),
            match r.detected {
                Some(d) if r.injected > 0 => format!("{d}/{}", r.injected),
                _ => "-".into(),
            },
            r.load
        ));
    }
    let mut summary = Vec::new();
    if !live {
        summary.push("- This kernel refuses BPF_PROG_RUN in live-frames mode: NIC-like delivery ran through a relay (AF_PACKET into a veth whose XDP program redirects every frame into the sensor's veth; the `relay` rows of bench/results/nic.md).".to_string());
    }
    if let Some(c) = cost.and_then(|c| serde_json::from_str::<serde_json::Value>(c).ok()) {
        use serde_json::Value;
        let frame = |name: &str| -> Option<&Value> {
            c.get("frames")?
                .as_array()?
                .iter()
                .find(|f| f.get("frame").and_then(Value::as_str) == Some(name))
        };
        let num = |name: &str, key: &str| frame(name)?.get(key)?.as_f64();
        let top = |key: &str| c.get(key).and_then(Value::as_f64);
        let fmt = |x: Option<f64>| x.map(|v| format!("{v:.0}")).unwrap_or("-".into());
        let floor = top("noop_ns");
        // The median over the loads of each call net of a floor run just before it
        // (nicgen's net_ns_median); each load's, the gross median and the lowest floor in
        // brackets.
        let net = |name: &str| -> String {
            let loads: Vec<String> = frame(name)
                .and_then(|f| f.get("net_ns_loads")?.as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(Value::as_f64)
                .map(|x| format!("{x:.0}"))
                .collect();
            match (num(name, "net_ns_median"), num(name, "ns_median"), floor) {
                (Some(n), Some(x), Some(f)) => format!(
                    "{n:.0} ns (loads {}; median {x:.0}; floor ≥ {f:.0})",
                    loads.join(" / ")
                ),
                _ => "-".into(),
            }
        };
        let line = format!(
            "- XDP program by BPF_PROG_TEST_RUN repeat (full trail maps, inline; net of the test-run floor; the median over {} loads of the program, each load's in brackets): clean TCP ACK {} (goal ≤ 25), UDP with its flow start already sent {}, SYN likewise {}, UDP writing a flow-start record every run {} (goal ≤ 45; {} records written, {} refused as ring full); one array map read {:.1} ns (array_read − noop, the median over the loads; array_read {}, noop ≥ {}).",
            fmt(top("loads")),
            net("tcp_ack"),
            net("udp_flow_seen"),
            net("syn_flow_seen"),
            net("udp_flow_start"),
            fmt(num("udp_flow_start", "flow_starts")),
            fmt(num("udp_flow_start", "flows_full")),
            top("array_read_net_ns").unwrap_or(f64::NAN),
            fmt(top("array_read_ns")),
            fmt(top("noop_ns")),
        );
        md.push('\n');
        md.push_str(&line);
        md.push('\n');
        summary.push(line);
    }
    for delivery in DELIVERIES {
        let mut parts = Vec::new();
        for r in runs.iter().filter(|r| {
            r.delivery == delivery && r.rate == 500_000 && r.added_path_ns_per_packet.is_some()
        }) {
            parts.push(format!(
                "{} {} {:+.0}",
                r.scenario,
                if r.sensor == "xtrail" {
                    r.mode.clone()
                } else {
                    r.sensor.clone()
                },
                r.added_path_ns_per_packet.unwrap_or(f64::NAN)
            ));
        }
        if !parts.is_empty() {
            summary.push(format!(
                "- {delivery} delivery at 500k pps, packet-path CPU each sensor adds per packet (ns): {} (bench/results/nic.md).",
                parts.join(", ")
            ));
        }
    }
    let handoffs: Vec<String> = ["dns", "http", "tls"]
        .into_iter()
        .filter_map(|kind| {
            let process = |sensor: &str, mode: &str| {
                runs.iter()
                    .find(|r| r.scenario == kind && r.sensor == sensor && r.mode == mode)
                    .map(|r| r.process_ns_per_packet)
                    .filter(|x| x.is_finite())
            };
            let x = process("xtrail", "inline")?;
            Some(match process("peer", "capture") {
                Some(p) => format!("{kind} {x:.0} (peer {p:.0})"),
                None => format!("{kind} {x:.0}"),
            })
        })
        .collect();
    if !handoffs.is_empty() {
        let line = format!(
            "- Hand-offs live: the mix's DNS, HTTP or TLS templates alone, {} delivery at {}k pps (every packet handed to userspace), the xtrail inline sensor process's CPU per packet (ns): {} (goal ≤ 300; bench/results/nic.md).",
            if live { "NIC-like" } else { "NIC-like (relay)" },
            HANDOFF_RATE / 1000,
            handoffs.join(", ")
        );
        md.push('\n');
        md.push_str(&line);
        md.push('\n');
        summary.push(line);
    }
    if !pairs.is_empty() {
        md.push_str("\nxtrail against `--peer` (");
        md.push_str(&inp.peer.unwrap_or_default().replace('|', "\\|"));
        md.push_str("), like with like: the same delivery, traffic and rate, in this run. Ratios are xtrail / peer (below 1: xtrail costs less). Added path: packet-path CPU each adds per packet (issue #12, inline: goal ≤ 0.20); path: the whole packet path per packet (mirror: goal ≤ 0.25); added busy: whole-machine busy time added (valid only on an otherwise idle machine); path net of floor: the whole path minus the delivery floor's (xdp-drop: the generator and the delivery to an XDP program that drops every frame, which no sensor on NIC-like delivery can go below; a NIC does that part in hardware and its driver; on AF_PACKET delivery an XDP program on a veth also pays veth's skb-to-XDP conversion, so there the floor is not a lower bound for a capture sensor). Recall on the mix: items detected / injected. Peer settle: seconds the peer went on working after the send (sampled after it). (saturated): the AF_PACKET sender (AF_PACKET and relay rows) was busy for 95% or more of its wall time in the run of either sensor or of the no-sensor run it is taken from: it did not idle (in the full run of 2026-12-07 08:19 at 1M, a sender that sent a frame or two a call), so the path per packet is about its wall time per packet and what a sensor adds in the sender's context (an XDP program's cost, the stack's) shows only as far as it lowers the send rate: not comparable with a capture sensor's cost, counted in its own process.\n\n| delivery | traffic | rate | xtrail | added path ns/pkt xtrail / peer | **added path ratio** | path ns/pkt xtrail / peer | **path ratio** | path net of floor ratio | added busy ratio | recall xtrail / peer | peer settle s |\n|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|---:|\n");
        let fmt = |x: Option<f64>, places: usize| {
            x.map(|v| format!("{v:.places$}")).unwrap_or("-".into())
        };
        for (x, p) in &pairs {
            let [added, path, busy, net] = pair_ratios(runs, x, p);
            let recall = |r: &NicRun| match r.detected {
                Some(d) if r.injected > 0 => format!("{d}/{}", r.injected),
                _ => "-".into(),
            };
            let mark = if saturated(runs, x) || saturated(runs, p) {
                " (saturated)"
            } else {
                ""
            };
            md.push_str(&format!(
                "| {} | {} | {}k | {} | {} / {} | {}{mark} | {:.0} / {:.0} | {} | {} | {} | {} / {} | {:.1} |\n",
                x.delivery,
                x.scenario,
                x.rate / 1000,
                x.mode,
                fmt(x.added_path_ns_per_packet, 0),
                fmt(p.added_path_ns_per_packet, 0),
                fmt(added, 3),
                x.path_ns_per_packet,
                p.path_ns_per_packet,
                fmt(path, 3),
                fmt(net, 3),
                fmt(busy, 3),
                recall(x),
                recall(p),
                p.settle_s,
            ));
        }
        for delivery in DELIVERIES {
            for mode in ["inline", "mirror"] {
                let parts: Vec<String> = pairs
                    .iter()
                    .filter(|(x, _)| x.delivery == delivery && x.mode == mode)
                    .map(|(x, p)| {
                        let [added, path, _, net] = pair_ratios(runs, x, p);
                        // The whole path holds the delivery's own cost, which on AF_PACKET
                        // and through the relay (a send system call, an skb, a copy) is far
                        // above live frames': the ratio net of the floor beside it.
                        let net = if mode == "mirror" && delivery != "nic" {
                            format!(" (net of floor {})", fmt(net, 2))
                        } else {
                            String::new()
                        };
                        format!(
                            "{} {}k {}{net}",
                            x.scenario,
                            x.rate / 1000,
                            fmt(if mode == "inline" { added } else { path }, 2)
                        )
                    })
                    .collect();
                if !parts.is_empty() {
                    summary.push(format!(
                        "- {delivery} delivery, xtrail {mode} / `--peer`, {} per packet: {} (goal ≤ {}; bench/results/nic.md).",
                        if mode == "inline" { "packet-path CPU added" } else { "whole packet-path CPU" },
                        parts.join(", "),
                        if mode == "inline" { "0.20" } else { "0.25" },
                    ));
                }
            }
        }
        if let Some(line) = pairs
            .iter()
            .filter(|(x, p)| x.mode == "inline" && x.detected.is_some() && p.detected.is_some())
            .map(|(x, p)| {
                format!(
                    "{} {}k {}/{} vs {}/{}",
                    x.delivery,
                    x.rate / 1000,
                    x.detected.unwrap_or(0),
                    x.injected,
                    p.detected.unwrap_or(0),
                    p.injected
                )
            })
            .reduce(|a, b| format!("{a}, {b}"))
        {
            summary.push(format!("- Mix recall, xtrail inline vs `--peer`: {line}."));
        }
    }
    // CPU each sensor adds per packet at 500k pps, by delivery, traffic and sensor.
    let bars: Vec<(String, f64)> = DELIVERIES
        .iter()
        .flat_map(|d| {
            runs.iter()
                .filter(move |r| r.delivery == *d && r.rate == 500_000)
        })
        .filter_map(|r| {
            Some((
                format!(
                    "{} {} {}",
                    r.delivery,
                    r.scenario,
                    if r.sensor == "xtrail" {
                        format!("xtrail {}", r.mode)
                    } else {
                        r.sensor.clone()
                    }
                ),
                r.added_path_ns_per_packet?,
            ))
        })
        .collect();
    std::fs::write(
        dir.join("nic.svg"),
        crate::bench::bar_chart(
            "Packet-path CPU each sensor adds per packet (ns), 500k pps offered",
            &bars,
        ),
    )?;
    std::fs::write(dir.join("nic.md"), &md)?;
    println!("{md}");
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(sensor: &str, round: usize, path: f64) -> NicRun {
        NicRun {
            delivery: "nic",
            scenario: "udp",
            sensor: sensor.into(),
            mode: "-".into(),
            rate: 500_000,
            path_ns_per_packet: path,
            busy_ns_per_packet: path,
            round,
            rounds: 1,
            ..Default::default()
        }
    }

    #[test]
    fn sent_column_marks_saturation_and_retries() {
        let mut r = run("xtrail", 0, 1000.0);
        assert_eq!(sender_marks(&r), "");
        r.send_retries = 3;
        assert_eq!(sender_marks(&r), " (3 sends retried)");
        r.generator_busy = SATURATED;
        assert_eq!(sender_marks(&r), " (saturated) (3 sends retried)");
        // Aggregated: the most retries of any round.
        let mut other = run("xtrail", 1, 1000.0);
        other.send_retries = 7;
        let rows = aggregate(&[r, other], &[], 2);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].send_retries, 7);
        assert!(rows[0].json().contains("\"send_retries\":7,"));
    }

    #[test]
    fn test_run_costs_are_combined_over_loads() {
        let load = |net: f64, noop: f64| {
            serde_json::json!({
                "program": "xtrail_xdp",
                "verified_insns": 100,
                "frames": [
                    {"frame": "tcp_ack", "runs": 10, "ns_median": net + noop, "ns_min": net,
                     "net_ns_median": net, "verdict": 2, "flow_starts": 0, "flows_full": 0},
                    {"frame": "udp_flow_start", "runs": 5, "ns_median": 2.0 * net,
                     "ns_min": net, "net_ns_median": 2.0 * net, "verdict": 2,
                     "flow_starts": 5, "flows_full": 1},
                ],
                "noop_ns": noop,
                "array_read_ns": noop + 1.0,
            })
        };
        let c = combine_loads(vec![load(30.0, 34.0), load(50.0, 33.0), load(20.0, 35.0)]);
        assert_eq!(c["loads"], 3);
        assert_eq!(c["noop_ns"], 33.0);
        assert_eq!(c["array_read_ns"], 35.0);
        assert_eq!(c["array_read_net_ns"], 1.0);
        let ack = &c["frames"][0];
        assert_eq!(ack["frame"], "tcp_ack");
        assert_eq!(ack["net_ns_median"], 30.0);
        assert_eq!(ack["net_ns_loads"], serde_json::json!([30.0, 50.0, 20.0]));
        assert_eq!(ack["ns_min"], 20.0);
        assert_eq!(ack["runs"], 30);
        let start = &c["frames"][1];
        assert_eq!(
            (start["flow_starts"].clone(), start["flows_full"].clone()),
            (15.into(), 3.into())
        );
        assert_eq!(c["per_load"].as_array().map(Vec::len), Some(3));
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(vec![f64::NAN]).is_nan());
    }

    #[test]
    fn what_a_sensor_adds_is_paired_with_the_same_rounds_baseline() {
        // The baseline drifts by round; the sensor adds 100 in every round.
        let raw = vec![
            run("none", 0, 1000.0),
            run("x", 0, 1100.0),
            run("none", 1, 1300.0),
            run("x", 1, 1400.0),
            run("none", 2, 900.0),
            run("x", 2, 1000.0),
        ];
        let rows = aggregate(&raw, &[], 3);
        assert_eq!(rows.len(), 2);
        let x = rows.iter().find(|r| r.sensor == "x").unwrap();
        assert_eq!(x.added_path_ns_per_packet, Some(100.0));
        assert_eq!(x.added_path_rounds, vec![100.0, 100.0, 100.0]);
        assert_eq!(x.path_ns_per_packet, 1100.0);
        let none = rows.iter().find(|r| r.sensor == "none").unwrap();
        assert_eq!(none.added_path_ns_per_packet, None);
    }

    #[test]
    fn bars_below_zero_extend_left() {
        let svg = crate::bench::bar_chart("t", &[("a".into(), 100.0), ("b".into(), -50.0)]);
        assert_eq!(svg.matches("<rect x=").count(), 2);
        assert!(svg.contains("fill='#2ca02c'"));
    }
}
