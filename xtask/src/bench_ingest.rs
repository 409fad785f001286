//! The collector's ingest scenario of `cargo xtask bench` (alone: `cargo xtask bench --only
//! ingest`): `collector/examples/ingest_bench.rs` (sensor streams, collectors and live
//! subscribers in one process, loopback) against SQLite (one collector) and against a
//! private PostgreSQL server started for the run (`initdb` in a temporary directory,
//! `fsync` on, as the `postgres` user when run as root), with one and with two collectors
//! sharing it. Measures events/s stored (publishing as fast as acknowledged) and
//! sensor→subscriber latency at a steady rate; see [`METHOD`].

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;

use crate::paths;

/// How the figures are taken (written into the results).
pub const METHOD: &str = "collector/examples/ingest_bench.rs, one process on loopback (the machine's cores shared by sensors, collectors and subscribers). Rate: 4 sensor streams (Ingest/Publish, batches of 1000 events as the sensor builds them, at most 8 unacknowledged per stream, spread over the collectors) publish `events` events as fast as acknowledged; events_per_s = events / time to the last acknowledgement (every event committed: SQLite synchronous=FULL, PostgreSQL synchronous_commit=on, fsync on); cpu_us_per_event = process user+sys CPU over that phase / events. Latency: one stock Publisher (spool included) per collector, `latency_rate` events/s in total for 10 s, alternating between collectors; `subscribers` live subscribers on the first collector record receipt time minus the event's ts_us (set at publish); p50/p99/max over all samples. PostgreSQL: a private server (initdb, shared_buffers=256MB, fsync on) on the same machine; with two collectors the subscribers see the other collector's events by polling the store (woken by local commits, at least every 200 ms).";

/// One configuration measured.
#[derive(Clone, Debug)]
pub struct IngestRun {
    pub store: String,
    pub collectors: u32,
    pub streams: u32,
    pub events: u64,
    pub events_per_s: f64,
    pub cpu_us_per_event: f64,
    pub latency_rate: u64,
    pub subscribers: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

fn num(x: f64) -> String {
    crate::bench::json_num(x, 3)
}

impl IngestRun {
    pub fn json(&self) -> String {
        format!(
            "{{\"store\":\"{}\",\"collectors\":{},\"streams\":{},\"events\":{},\"events_per_s\":{},\"cpu_us_per_event\":{},\"latency_rate\":{},\"subscribers\":{},\"p50_ms\":{},\"p99_ms\":{},\"max_ms\":{}}}",
            self.store,
            self.collectors,
            self.streams,
            self.events,
            num(self.events_per_s),
            num(self.cpu_us_per_event),
            self.latency_rate,
            self.subscribers,
            num(self.p50_ms),
            num(self.p99_ms),
            num(self.max_ms)
        )
    }

    pub fn markdown_row(&self) -> String {
        format!(
            "| {} | {} | {} | {:.0} | {:.1} | {} | {} | {:.1} | {:.1} | {:.1} |\n",
            self.store,
            self.collectors,
            self.events,
            self.events_per_s,
            self.cpu_us_per_event,
            self.latency_rate,
            self.subscribers,
            self.p50_ms,
            self.p99_ms,
            self.max_ms
        )
    }
}

/// The ingest section of `latest.md`.
pub fn markdown(runs: &[IngestRun]) -> String {
    let mut md = String::from("\nCollector ingest (");
    md.push_str(METHOD);
    md.push_str(")\n\n| store | collectors | events | events/s stored | CPU us/event | latency at events/s | subscribers | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in runs {
        md.push_str(&r.markdown_row());
    }
    md
}

/// The ingest part of `latest.json` (after `"ingest":`).
pub fn json(runs: &[IngestRun]) -> String {
    format!(
        "[\n{}\n],\"ingest_method\":{:?}",
        runs.iter()
            .map(IngestRun::json)
            .collect::<Vec<_>>()
            .join(",\n"),
        METHOD
    )
}

/// `--only ingest`: replaces the ingest figures in `latest.json` and `latest.md`, keeping
/// the other scenarios' figures as they are.
pub fn write_merged(dir: &Path, runs: &[IngestRun], when: &str) -> anyhow::Result<()> {
    let jpath = dir.join("latest.json");
    let old = std::fs::read_to_string(&jpath).unwrap_or_default();
    let json = merged_json(&old, runs, when);
    std::fs::write(&jpath, json)?;
    let mpath = dir.join("latest.md");
    let old = std::fs::read_to_string(&mpath).unwrap_or_default();
    let kept = old
        .find("\nCollector ingest")
        .map_or(old.as_str(), |at| &old[..at]);
    let section = markdown(runs).replacen(
        "Collector ingest (",
        &format!("Collector ingest, taken {when} ("),
        1,
    );
    std::fs::write(&mpath, format!("{kept}{section}"))?;
    print!("{section}");
    Ok(())
}

/// `old` (a `latest.json`, possibly without ingest figures) with these ingest figures.
fn merged_json(old: &str, runs: &[IngestRun], when: &str) -> String {
    let ours = format!("\"ingest\":{},\"ingest_taken\":\"{when}\"}}\n", json(runs));
    if let Some(at) = old.find(",\"ingest\":") {
        return format!("{},{ours}", &old[..at]);
    }
    match old.trim_end().strip_suffix('}') {
        Some(head) if head.trim_start().starts_with('{') => format!("{head},{ours}"),
        _ => format!("{{\"runs\":[],{ours}"),
    }
}

/// The number after `marker` in `line` (up to the next space).
fn number_after(line: &str, marker: &str) -> Option<f64> {
    line.split(marker)
        .nth(1)?
        .split_whitespace()
        .next()?
        .trim_end_matches(',')
        .parse()
        .ok()
}

/// Reads the example's summary lines.
fn parse(
    store: &str,
    collectors: u32,
    out: &str,
    rate: u64,
    subscribers: u64,
) -> anyhow::Result<IngestRun> {
    let line = |start: &str| {
        out.lines()
            .find(|l| l.starts_with(start))
            .with_context(|| format!("ingest_bench printed no {start:?} line"))
    };
    let ingest = line("ingest:")?;
    let latency = line("latency at")?;
    let cpu = line("cpu:").unwrap_or("");
    Ok(IngestRun {
        store: store.into(),
        collectors,
        streams: number_after(ingest, "(").unwrap_or(f64::NAN) as u32,
        events: number_after(ingest, "ingest: ").unwrap_or(0.0) as u64,
        events_per_s: number_after(ingest, " = ").unwrap_or(f64::NAN),
        cpu_us_per_event: number_after(cpu, " = ").unwrap_or(f64::NAN),
        latency_rate: rate,
        subscribers,
        p50_ms: number_after(latency, "p50 ").unwrap_or(f64::NAN),
        p99_ms: number_after(latency, "p99 ").unwrap_or(f64::NAN),
        max_ms: number_after(latency, "max ").unwrap_or(f64::NAN),
    })
}

/// A PostgreSQL server for the run; stopped on drop.
struct Postgres {
    bin: PathBuf,
    dir: PathBuf,
    as_postgres: bool,
    port: u16,
}

impl Postgres {
    fn cmd(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    fn start(tmp: &Path) -> anyhow::Result<Postgres> {
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .context("PostgreSQL not installed (/usr/lib/postgresql)")?
            .filter_map(Result::ok)
            .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
            .filter(|(_, b): &(u32, PathBuf)| b.join("initdb").exists())
            .collect();
        versions.sort();
        let bin = versions.pop().context("no PostgreSQL initdb found")?.1;
        // SAFETY: geteuid has no preconditions.
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let dir = tmp.join("pg");
        std::fs::create_dir_all(&dir)?;
        if as_postgres {
            crate::run(Command::new("chown").args(["postgres:postgres"]).arg(&dir))?;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let pg = Postgres {
            bin,
            dir,
            as_postgres,
            port,
        };
        let data = pg.dir.join("data");
        crate::run(
            pg.cmd("initdb")
                .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "-D"])
                .arg(&data),
        )?;
        // fsync stays on: a commit is durable before the collector acknowledges, as in use.
        crate::run(
            pg.cmd("pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-o")
                .arg(format!(
                    "-p {port} -k {} -c listen_addresses=127.0.0.1 -c shared_buffers=256MB",
                    pg.dir.display()
                ))
                .arg("-l")
                .arg(pg.dir.join("log"))
                .args(["-w", "start"]),
        )?;
        Ok(pg)
    }

    /// A fresh database for one configuration.
    fn create_db(&self, name: &str) -> anyhow::Result<()> {
        crate::run(self.cmd("createdb").args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            name,
        ]))
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "fast", "-w", "stop"])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs the ingest scenario: SQLite with one collector, then PostgreSQL (skipped with a
/// message if it is not installed) with one and two collectors.
pub fn run(quick: bool, tmp: &Path) -> Vec<IngestRun> {
    let (events, rate, subscribers) = if quick {
        (100_000u64, 50_000u64, 4u64)
    } else {
        (300_000, 50_000, 4)
    };
    let built = crate::run(crate::cargo().args([
        "build",
        "--release",
        "-p",
        "xtrail-collector",
        "--example",
        "ingest_bench",
    ]));
    if let Err(e) = built {
        eprintln!("bench: ingest: building the example failed: {e:#}");
        return Vec::new();
    }
    let exe = paths::workspace_root().join("target/release/examples/ingest_bench");
    let measure =
        |store: &str, collectors: u32, database: Option<String>| -> anyhow::Result<IngestRun> {
            let mut c = Command::new(&exe);
            c.args([
                events.to_string(),
                rate.to_string(),
                subscribers.to_string(),
                "--collectors".into(),
                collectors.to_string(),
            ]);
            match &database {
                Some(url) => c.env("XTRAIL_BENCH_DATABASE", url),
                None => c.env_remove("XTRAIL_BENCH_DATABASE"),
            };
            let out = c.output().context("running ingest_bench")?;
            let text = String::from_utf8_lossy(&out.stdout);
            anyhow::ensure!(
                out.status.success(),
                "ingest_bench failed: {}{}",
                text,
                String::from_utf8_lossy(&out.stderr)
            );
            parse(store, collectors, &text, rate, subscribers)
        };
    let mut runs = Vec::new();
    let mut record = |r: anyhow::Result<IngestRun>, what: &str| match r {
        Ok(r) => {
            eprintln!(
                "bench: ingest/{what}: {:.0} events/s stored ({:.1} us CPU/event); latency at {} events/s p50 {:.1} ms, p99 {:.1} ms",
                r.events_per_s, r.cpu_us_per_event, r.latency_rate, r.p50_ms, r.p99_ms
            );
            runs.push(r);
        }
        Err(e) => eprintln!("bench: ingest/{what}: failed: {e:#}"),
    };
    record(measure("sqlite", 1, None), "sqlite");
    match Postgres::start(tmp) {
        Ok(pg) => {
            for (n, db) in [(1u32, "one"), (2, "two")] {
                let url = pg.create_db(db).map(|()| pg.url(db));
                record(
                    url.and_then(|u| measure("postgresql", n, Some(u))),
                    &format!("postgresql/{n} collectors"),
                );
            }
        }
        Err(e) => eprintln!("bench: ingest/postgresql: skipped: {e:#}"),
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_example_output() {
        let out = "ingest: 200000 events stored in 2.30 s = 87072 events/s (4 streams, 1 collectors, 4 subscribers attached, all delivered to them after 2.31 s)\n\
                   cpu: 4.18 s user+sys during the ingest phase = 20.9 us per event (whole process)\n\
                   latency at 50000 events/s, 200000 events x 4 subscribers (800000 samples): p50 12.87 ms, p99 40.17 ms, max 49.07 ms\n";
        let r = parse("sqlite", 1, out, 50_000, 4).unwrap();
        assert_eq!((r.events, r.streams), (200_000, 4));
        assert_eq!(r.events_per_s, 87072.0);
        assert_eq!(r.cpu_us_per_event, 20.9);
        assert_eq!((r.p50_ms, r.p99_ms, r.max_ms), (12.87, 40.17, 49.07));
    }

    #[test]
    fn ingest_figures_replace_only_their_part() {
        let run = IngestRun {
            store: "sqlite".into(),
            collectors: 1,
            streams: 4,
            events: 10,
            events_per_s: 5.0,
            cpu_us_per_event: 1.0,
            latency_rate: 5,
            subscribers: 4,
            p50_ms: 1.0,
            p99_ms: 2.0,
            max_ms: 3.0,
        };
        let without = "{\"taken\":\"t\",\"runs\":[\n{\"a\":1}\n]}\n";
        let once = merged_json(without, std::slice::from_ref(&run), "w1");
        assert!(
            once.starts_with(
                "{\"taken\":\"t\",\"runs\":[\n{\"a\":1}\n],\"ingest\":[\n{\"store\":\"sqlite\""
            ),
            "{once}"
        );
        assert!(once.ends_with("\"ingest_taken\":\"w1\"}\n"), "{once}");
        let twice = merged_json(&once, &[run], "w2");
        assert_eq!(twice.matches("\"ingest\":").count(), 1, "{twice}");
        assert!(
            twice.contains("{\"a\":1}") && twice.contains("\"w2\""),
            "{twice}"
        );
    }

    /// `cargo test -p xtrail-xtask -- --ignored`: the run's PostgreSQL server starts,
    /// answers and stops.
    #[test]
    #[ignore = "starts a PostgreSQL server"]
    fn postgres_starts_and_stops() {
        let tmp = std::env::temp_dir().join(format!("xtrail-ingest-pg-{}", std::process::id()));
        let pg = Postgres::start(&tmp).unwrap();
        pg.create_db("xtrail").unwrap();
        let ok = pg
            .cmd("psql")
            .args([&pg.url("xtrail"), "-c", "SELECT 1"])
            .status()
            .unwrap();
        assert!(ok.success());
        drop(pg);
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
