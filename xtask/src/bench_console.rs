//! The console API scenario of `cargo xtask bench` (`--only console`):
//! `collector/examples/console_bench.rs` stores a fixture of 1,000,000 realistic events
//! (200,000 with `--quick`) into a fresh SQLite store, starts a collector on it (which
//! aggregates them into threats at start), and measures p50/p95/max of every console API
//! call over loopback HTTP (the whole answer, full exports included), then the first view
//! in Debian's headless chromium (sign in, time until the threat table is rendered, over
//! several loads). Results: `bench/results/console.json` and `console.md`; one summary line
//! goes into `latest.md`. Goals: p95 < 100 ms for every call, first view < 1 s.

use std::path::Path;
use std::process::Command;

use anyhow::Context as _;

use crate::paths;

/// Runs the scenario; returns the summary line for `latest.md` (None if it failed).
pub fn run(quick: bool, results_dir: &Path) -> Option<String> {
    match measure(quick, results_dir) {
        Ok(line) => Some(line),
        Err(e) => {
            eprintln!("bench: console: failed: {e:#}");
            None
        }
    }
}

fn measure(quick: bool, results_dir: &Path) -> anyhow::Result<String> {
    let events: u64 = if quick { 200_000 } else { 1_000_000 };
    crate::run(crate::cargo().args([
        "build",
        "--release",
        "-p",
        "xtrail-collector",
        "--example",
        "console_bench",
    ]))
    .context("building the console_bench example")?;
    let exe = paths::workspace_root().join("target/release/examples/console_bench");
    let load = Some(crate::host::loadavg(3))
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| "unknown".into());
    eprintln!("bench: console: {events} events (fixture, aggregation, then the API calls)");
    let out = Command::new(&exe)
        .args([events.to_string(), "40".into()])
        .output()
        .context("running console_bench")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(
        out.status.success(),
        "console_bench failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = text
        .lines()
        .find_map(|l| l.strip_prefix("json: "))
        .context("console_bench printed no json line")?;
    let v: serde_json::Value = serde_json::from_str(json).context("console_bench json")?;
    std::fs::write(results_dir.join("console.json"), format!("{json}\n"))?;
    let mut md = format!(
        "# Console API with {} stored events\n\n`cargo xtask bench --only console` (`collector/examples/console_bench.rs`): a fixture of {} events over 7 days (5,000 sources, 3,300 trails, heuristics, DNS exhaustion) stored with the collector's SQLite writer in {:.1} s; the collector aggregates them at start into {} threats in {:.1} s; each call then requested 40 times over loopback HTTP, one connection per request (subscriber token), timed to the last byte of the answer (read, not decoded). Load average at the start of the run: {}.\n\n",
        v["events"], v["events"], v["fixture_s"].as_f64().unwrap_or(0.0), v["threats"],
        v["aggregate_s"].as_f64().unwrap_or(0.0), load
    );
    md.push_str("| call | p50 ms | p95 ms | max ms | first byte p95 ms | bytes |\n|---|---:|---:|---:|---:|---:|\n");
    for c in v["calls"].as_array().map(Vec::as_slice).unwrap_or_default() {
        md.push_str(&format!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {} |\n",
            c["call"].as_str().unwrap_or(""),
            c["p50_ms"].as_f64().unwrap_or(f64::NAN),
            c["p95_ms"].as_f64().unwrap_or(f64::NAN),
            c["max_ms"].as_f64().unwrap_or(f64::NAN),
            c["first_byte_p95_ms"].as_f64().unwrap_or(f64::NAN),
            c["bytes"]
        ));
    }
    let fv = &v["first_view"];
    let view_line = if fv.is_null() {
        md.push_str("\nFirst view: not measured (no chromium).\n");
        "first view not measured (no chromium)".to_string()
    } else {
        md.push_str(&format!(
            "\n## First view in a browser\n\nDebian's headless chromium over the DevTools protocol (the client of `collector/tests/console_browser.rs`), signed in as an analyst, default view (threats of the last 24 h, {} rows shown of {} threats), timed by the browser from the navigation's start to the first animation frame after the threat table got its rows.\n\n| load | p50 ms | p95 ms | max ms |\n|---|---:|---:|---:|\n| sign-in (form submit, redirect, page, API) | {:.1} | | |\n| `/` signed in, {} loads | {:.1} | {:.1} | {:.1} |\n",
            fv["rows"], v["threats"], fv["login_ms"].as_f64().unwrap_or(f64::NAN),
            fv["loads"], fv["p50_ms"].as_f64().unwrap_or(f64::NAN),
            fv["p95_ms"].as_f64().unwrap_or(f64::NAN), fv["max_ms"].as_f64().unwrap_or(f64::NAN)
        ));
        format!(
            "first view in headless chromium p95 {:.0} ms over {} loads (sign-in to table {:.0} ms; goal < 1 s)",
            fv["p95_ms"].as_f64().unwrap_or(f64::NAN),
            fv["loads"],
            fv["login_ms"].as_f64().unwrap_or(f64::NAN)
        )
    };
    std::fs::write(results_dir.join("console.md"), &md)?;
    eprint!("{md}");
    let worst = v["worst_p95_ms"].as_f64().unwrap_or(f64::NAN);
    Ok(format!(
        "- Console API with {} stored events ({} threats): worst p95 {worst:.1} ms over every call, full exports' whole answers included (goal < 100 ms); {view_line}; `console.md`.",
        v["events"], v["threats"]
    ))
}
