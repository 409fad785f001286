//! Replays pcaps through the detection pipeline (what `xtrail-sensor replay` does), for
//! testing the library on its own.
//!
//! ```text
//! cargo run -p xtrail-detect --example replay -- --pcap FILE [--pcap FILE2] --trails PATH
//!     [--whitelist FILE] [--format json|maltrail] [--events-log FILE|-] [--sensor NAME]
//!     [--no-throttle]
//! ```

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use xtrail_detect::event::Format;
use xtrail_detect::process::ProcessorConfig;
use xtrail_detect::replay::{replay, ReplayOptions};
use xtrail_detect::trails::{LoadOptions, TrailSet};
use xtrail_detect::whitelist::Whitelist;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("replay: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut pcaps = Vec::new();
    let mut trails = Vec::new();
    let mut whitelist = None;
    let mut format = Format::Json;
    let mut log = String::from("-");
    let mut opts = ReplayOptions::default();
    let mut sensor = String::from("xtrail");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--pcap" => pcaps.push(PathBuf::from(value()?)),
            "--trails" => trails.push(PathBuf::from(value()?)),
            "--whitelist" => whitelist = Some(PathBuf::from(value()?)),
            "--format" => {
                format = match value()?.as_str() {
                    "json" => Format::Json,
                    "maltrail" => Format::Maltrail,
                    other => return Err(format!("unknown format {other}")),
                }
            }
            "--events-log" => log = value()?,
            "--sensor" => sensor = value()?,
            "--no-throttle" => opts.throttle = None,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if pcaps.is_empty() || trails.is_empty() {
        return Err("--pcap and --trails are required".into());
    }
    let set = TrailSet::load(&trails, &LoadOptions::default()).map_err(|e| e.to_string())?;
    let wl = match whitelist {
        Some(p) => Whitelist::load(&p).map_err(|e| e.to_string())?,
        None => Whitelist::empty(),
    };
    opts.format = format;
    opts.processor = ProcessorConfig::with_sensor(sensor);
    let mut out: Box<dyn Write> = if log == "-" {
        Box::new(BufWriter::new(io::stdout().lock()))
    } else {
        Box::new(BufWriter::new(
            File::create(&log).map_err(|e| format!("{log}: {e}"))?,
        ))
    };
    let stats =
        replay(&pcaps, Arc::new(set), Arc::new(wl), &opts, &mut out).map_err(|e| e.to_string())?;
    for fe in &stats.file_errors {
        eprintln!("replay: warning: {}: {}", fe.path.display(), fe.error);
    }
    eprintln!(
        "replay: {} file(s), {} packets, {} events, {} parse errors, {} suppressed in {:.3}s ({:.0} ns/packet)",
        stats.files,
        stats.packets,
        stats.events,
        stats.parse_errors,
        stats.throttle.suppressed,
        stats.elapsed.as_secs_f64(),
        stats.elapsed.as_nanos() as f64 / stats.packets.max(1) as f64
    );
    // On a busy machine the wall time counts waiting for a CPU; the CPU time does not (it
    // counts the file's read-ahead thread beside the replaying one).
    if let Some(cpu) = stats.cpu {
        eprintln!(
            "replay: CPU {:.3}s ({:.0} ns/packet)",
            cpu.as_secs_f64(),
            cpu.as_nanos() as f64 / stats.packets.max(1) as f64
        );
    }
    Ok(())
}
