//! The collector's ingest scenario of `cargo xtask bench`: `collector/examples/ingest_bench.rs`
//! (publisher, collector and live subscribers in one process, loopback) against SQLite and
//! against a private PostgreSQL server started for the run (`initdb` in a temporary
//! directory, `fsync` on, as the `postgres` user when run as root). Measures events/s
//! stored (publishing as fast as possible) and sensor→subscriber latency at a steady rate.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;

use crate::paths;

/// One store measured.
#[derive(Clone, Debug)]
pub struct IngestRun {
    pub store: String,
    pub collectors: u32,
    pub events: u64,
    pub events_per_s: f64,
    pub latency_rate: u64,
    pub subscribers: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl IngestRun {
    pub fn json(&self) -> String {
        let f = |x: f64| {
            if x.is_finite() {
                format!("{x:.3}")
            } else {
                "null".into()
            }
        };
        format!(
            "{{\"store\":\"{}\",\"collectors\":{},\"events\":{},\"events_per_s\":{},\"latency_rate\":{},\"subscribers\":{},\"p50_ms\":{},\"p99_ms\":{},\"max_ms\":{}}}",
            self.store,
            self.collectors,
            self.events,
            f(self.events_per_s),
            self.latency_rate,
            self.subscribers,
            f(self.p50_ms),
            f(self.p99_ms),
            f(self.max_ms)
        )
    }

    pub fn markdown_row(&self) -> String {
        format!(
            "| {} | {} | {} | {:.0} | {} | {} | {:.1} | {:.1} | {:.1} |\n",
            self.store,
            self.collectors,
            self.events,
            self.events_per_s,
            self.latency_rate,
            self.subscribers,
            self.p50_ms,
            self.p99_ms,
            self.max_ms
        )
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

/// Reads the example's two summary lines.
fn parse(store: &str, out: &str, rate: u64, subscribers: u64) -> anyhow::Result<IngestRun> {
    let ingest = out
        .lines()
        .find(|l| l.starts_with("ingest:"))
        .context("ingest_bench printed no ingest line")?;
    let latency = out
        .lines()
        .find(|l| l.starts_with("latency at"))
        .context("ingest_bench printed no latency line")?;
    Ok(IngestRun {
        store: store.into(),
        collectors: 1,
        events: number_after(ingest, "ingest: ").unwrap_or(0.0) as u64,
        events_per_s: number_after(ingest, " = ").unwrap_or(f64::NAN),
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
        crate::run(pg.cmd("createdb").args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "xtrail",
        ]))?;
        Ok(pg)
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/xtrail", self.port)
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

/// Runs the ingest scenario: SQLite, then PostgreSQL (skipped with a message if it is not
/// installed), one collector each.
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
    let measure = |store: &str, database: Option<String>| -> anyhow::Result<IngestRun> {
        let mut c = Command::new(&exe);
        c.args([
            events.to_string(),
            rate.to_string(),
            subscribers.to_string(),
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
        parse(store, &text, rate, subscribers)
    };
    let mut runs = Vec::new();
    let mut record = |r: anyhow::Result<IngestRun>, what: &str| match r {
        Ok(r) => {
            eprintln!(
                "bench: ingest/{what}: {:.0} events/s stored; latency at {} events/s p50 {:.1} ms, p99 {:.1} ms",
                r.events_per_s, r.latency_rate, r.p50_ms, r.p99_ms
            );
            runs.push(r);
        }
        Err(e) => eprintln!("bench: ingest/{what}: failed: {e:#}"),
    };
    record(measure("sqlite", None), "sqlite");
    match Postgres::start(tmp) {
        Ok(pg) => record(measure("postgresql", Some(pg.url())), "postgresql"),
        Err(e) => eprintln!("bench: ingest/postgresql: skipped: {e:#}"),
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_example_output() {
        let out = "ingest: 200000 events stored in 2.30 s = 87072 events/s (spool append 265690 events/s, 4 subscribers attached)\n\
                   latency at 50000 events/s, 200000 events x 4 subscribers (800000 samples): p50 12.87 ms, p99 40.17 ms, max 49.07 ms\n";
        let r = parse("sqlite", out, 50_000, 4).unwrap();
        assert_eq!(r.events, 200_000);
        assert_eq!(r.events_per_s, 87072.0);
        assert_eq!((r.p50_ms, r.p99_ms, r.max_ms), (12.87, 40.17, 49.07));
    }

    /// `cargo test -p xtrail-xtask -- --ignored`: the run's PostgreSQL server starts,
    /// answers and stops.
    #[test]
    #[ignore = "starts a PostgreSQL server"]
    fn postgres_starts_and_stops() {
        let tmp = std::env::temp_dir().join(format!("xtrail-ingest-pg-{}", std::process::id()));
        let pg = Postgres::start(&tmp).unwrap();
        let ok = pg
            .cmd("psql")
            .args([&pg.url(), "-c", "SELECT 1"])
            .status()
            .unwrap();
        assert!(ok.success());
        drop(pg);
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
