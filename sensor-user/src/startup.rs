//! The start's phases, timed from the process's start: each step on the way to "attached"
//! marks when it finished ([`mark`]), and the run logs them on one debug line once attached
//! ([`log_phases`], with the CPU time of the threads that did them, [`thread_cpu`];
//! `RUST_LOG=info,xtrail_sensor::startup=debug` shows it, and
//! `cargo xtask bench --only startup` reads it).

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

static START: OnceLock<Instant> = OnceLock::new();
static PHASES: Mutex<Vec<(&'static str, Duration)>> = Mutex::new(Vec::new());

/// Sets the zero of the clock (the first call wins; `main` calls it first thing).
pub fn begin() {
    START.get_or_init(Instant::now);
}

/// Time since [`begin`] (or since this first call).
pub fn elapsed() -> Duration {
    START.get_or_init(Instant::now).elapsed()
}

/// Records that `phase` finished now (a repeated name keeps its first time).
pub fn mark(phase: &'static str) {
    let at = elapsed();
    if let Ok(mut p) = PHASES.lock() {
        if !p.iter().any(|(n, _)| *n == phase) {
            p.push((phase, at));
        }
    }
}

/// Records the CPU time (user and system) the calling thread used so far, as `name`: what
/// a step cost, apart from the waits its wall-clock phase includes.
pub fn thread_cpu(name: &'static str) {
    let Some(used) = xtrail_detect::cpu_clock::thread() else {
        return;
    };
    if let Ok(mut c) = CPU.lock() {
        c.push((name, used));
    }
}

static CPU: Mutex<Vec<(&'static str, Duration)>> = Mutex::new(Vec::new());

/// The CPU times [`thread_cpu`] recorded: `cpu.name=seconds` pairs.
pub fn cpu_times() -> String {
    let c = CPU.lock().map(|c| c.clone()).unwrap_or_default();
    c.iter()
        .map(|(n, d)| format!("cpu.{n}={:.3}", d.as_secs_f64()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The phases recorded so far, in the order they finished: `name=seconds` pairs.
pub fn phases() -> String {
    let mut p = PHASES.lock().map(|p| p.clone()).unwrap_or_default();
    p.sort_by_key(|(_, at)| *at);
    p.iter()
        .map(|(n, at)| format!("{n}={:.3}", at.as_secs_f64()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Logs the phases (debug level), prefixed `start phases (s since start):`.
pub fn log_phases() {
    log::debug!(
        "start phases (s since start): {} (thread CPU, s: {})",
        phases(),
        cpu_times()
    );
}
