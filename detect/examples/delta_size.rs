//! Measures the size of a trail set delta for a realistic change: the trails CSV given
//! (default: Maltrail's reference trails.csv) compiled as is, and again with 1% of its rows
//! (every 100th) replaced by another trail of the same kind.
//!
//! `cargo run --release -p xtrail-detect --example delta_size [-- TRAILS.csv [EVERY]]`

use std::time::Instant;

use xtrail_detect::trails::{compiled, delta, CompileOptions, LoadOptions, TrailSet};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let src = args
        .next()
        .unwrap_or_else(|| "/work/shared/data/maltrail/reference/trails.csv".into());
    let every: usize = args.next().map_or(Ok(100), |a| a.parse())?;
    let text = std::fs::read_to_string(&src)?;
    let changed: String = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i % every != 0 {
                return format!("{l}\n");
            }
            let (trail, rest) = l.split_once(',').unwrap_or((l, ""));
            let new = match trail.parse::<std::net::Ipv4Addr>() {
                Ok(ip) => std::net::Ipv4Addr::from(u32::from(ip) ^ 0x0000_0100).to_string(),
                Err(_) => format!("z{trail}"),
            };
            format!("{new},{rest}\n")
        })
        .collect();
    let dir = std::env::temp_dir().join(format!("xtrail-delta-size-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let b = dir.join("changed.csv");
    std::fs::write(&b, changed)?;
    let compile = |p: std::path::PathBuf, at: u64| -> Result<Vec<u8>, Box<dyn std::error::Error>> {
        let set = TrailSet::load(&[p], &LoadOptions::default())?;
        Ok(compiled::write(
            &set,
            &CompileOptions {
                built_at: at,
                signing_key: None,
                meta: serde_json::json!({}),
            },
        ))
    };
    let old = compile(src.clone().into(), 1_700_000_000)?;
    let new = compile(b, 1_700_000_100)?;
    let t = Instant::now();
    let delta_bytes = delta::diff(&old, &new);
    let d = &delta_bytes;
    let diff_time = t.elapsed();
    let t = Instant::now();
    let rebuilt = delta::apply(&old, d, 1 << 31)?;
    let apply_time = t.elapsed();
    assert_eq!(rebuilt, new);
    println!(
        "rows changed: 1 in {every}; set {} -> {} bytes; delta {} bytes ({:.1}% of the set); diff {:.2?}, apply {:.2?}",
        old.len(),
        new.len(),
        d.len(),
        100.0 * d.len() as f64 / new.len() as f64,
        diff_time,
        apply_time
    );
    // Where the literal bytes fall, per section of the new file (ids as in compiled.rs).
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let u64_at = |b: &[u8], at: usize| {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(x)
    };
    let body = compiled::HEADER_LEN;
    let n = u32_at(&new, body) as usize;
    let sections: Vec<(u32, usize, usize)> = (0..n)
        .map(|i| {
            let e = body + 8 + i * 24;
            let off = body + u64_at(&new, e + 8) as usize;
            (u32_at(&new, e), off, off + u64_at(&new, e + 16) as usize)
        })
        .collect();
    let mut literal = vec![0usize; 32];
    let mut d = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::DeflateDecoder::new(&delta_bytes[8 + 32 + 32 + 8..]),
        &mut d,
    )?;
    let (mut at, mut pos) = (0, 0usize);
    while at < d.len() {
        if d[at] == 0 {
            pos += u32_at(&d, at + 9) as usize;
            at += 13;
        } else {
            let len = u32_at(&d, at + 1) as usize;
            for p in pos..pos + len {
                if let Some(s) = sections.iter().find(|s| s.1 <= p && p < s.2) {
                    literal[s.0 as usize] += 1;
                }
            }
            pos += len;
            at += 5 + len;
        }
    }
    for (id, start, end) in &sections {
        println!(
            "section {id:2}: {:>10} bytes, {:>10} literal in the delta",
            end - start,
            literal[*id as usize]
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
