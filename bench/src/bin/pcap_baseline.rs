//! `xtrail-pcap-baseline`: a minimal libpcap-based IP-trail sensor, the yardstick for
//! `cargo xtask bench`. It does what a libpcap sensor (like Maltrail's) does per packet:
//! capture through libpcap, parse Ethernet/VLAN/IPv4/IPv6, look both addresses up in a hash
//! table of the IP trails. At exit it prints what it processed; the benchmark reads its CPU
//! time from /proc.
//!
//! usage: xtrail-pcap-baseline --iface IF --trails PATH [--duration SECS]

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xtrail_detect::trails::{LoadOptions, TrailSet};

fn main() {
    if let Err(e) = run() {
        eprintln!("xtrail-pcap-baseline: error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let mut iface = None;
    let mut trails = None;
    let mut duration = Duration::from_secs(60);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--iface" => iface = Some(value()?),
            "--trails" => trails = Some(PathBuf::from(value()?)),
            "--duration" => {
                duration = Duration::from_secs(value()?.parse().map_err(|_| "bad --duration")?)
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let iface = iface.ok_or("--iface is required")?;
    let trails = trails.ok_or("--trails is required")?;
    let set = TrailSet::load(&[trails], &LoadOptions::default()).map_err(|e| e.to_string())?;
    let v4: HashSet<[u8; 4]> = set.ip.v4.keys().collect();
    let v6: HashSet<[u8; 16]> = set.ip.v6.keys().copied().collect();
    drop(set);
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).map_err(|e| e.to_string())?;
    }
    let mut cap = pcap::Capture::from_device(iface.as_str())
        .map_err(|e| e.to_string())?
        .promisc(true)
        .immediate_mode(true)
        .snaplen(256)
        .buffer_size(64 << 20)
        .timeout(100)
        .open()
        .map_err(|e| e.to_string())?;
    eprintln!("xtrail-pcap-baseline: capturing on {iface}");
    let started = Instant::now();
    let (mut processed, mut hits) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) && started.elapsed() < duration {
        match cap.next_packet() {
            Ok(p) => {
                processed += 1;
                if lookup(p.data, &v4, &v6) {
                    hits += 1;
                }
            }
            Err(pcap::Error::TimeoutExpired) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    let stats = cap.stats().map_err(|e| e.to_string())?;
    println!(
        "processed={processed} hits={hits} received={} dropped={} if_dropped={}",
        stats.received, stats.dropped, stats.if_dropped
    );
    Ok(())
}

fn lookup(frame: &[u8], v4: &HashSet<[u8; 4]>, v6: &HashSet<[u8; 16]>) -> bool {
    let mut off = 12;
    let mut ethertype = match frame.get(12..14) {
        Some(b) => u16::from_be_bytes([b[0], b[1]]),
        None => return false,
    };
    while ethertype == 0x8100 || ethertype == 0x88a8 {
        off += 4;
        ethertype = match frame.get(off..off + 2) {
            Some(b) => u16::from_be_bytes([b[0], b[1]]),
            None => return false,
        };
    }
    let ip = off + 2;
    match ethertype {
        0x0800 => {
            let (Some(s), Some(d)) = (frame.get(ip + 12..ip + 16), frame.get(ip + 16..ip + 20))
            else {
                return false;
            };
            let s: [u8; 4] = [s[0], s[1], s[2], s[3]];
            let d: [u8; 4] = [d[0], d[1], d[2], d[3]];
            v4.contains(&d) || v4.contains(&s)
        }
        0x86dd => {
            let (Some(s), Some(d)) = (frame.get(ip + 8..ip + 24), frame.get(ip + 24..ip + 40))
            else {
                return false;
            };
            let mut sa = [0u8; 16];
            let mut da = [0u8; 16];
            sa.copy_from_slice(s);
            da.copy_from_slice(d);
            v6.contains(&da) || v6.contains(&sa)
        }
        _ => false,
    }
}
