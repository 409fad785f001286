//! Shared writing of `bench/results`.

use std::path::Path;

/// Puts `line` in `dir/latest.md` in place of the line starting with `prefix` (a scenario's
/// summary line, such as `- Sensor start`): before the collector's section (which
/// `--only ingest` rewrites), else at the end. The other lines stay as they are.
pub fn set_latest_line(dir: &Path, prefix: &str, line: &str) -> std::io::Result<()> {
    let latest = dir.join("latest.md");
    let old = std::fs::read_to_string(&latest).unwrap_or_default();
    let mut lines: Vec<&str> = old.lines().filter(|x| !x.starts_with(prefix)).collect();
    let at = lines
        .iter()
        .position(|x| x.starts_with("Collector ingest"))
        .unwrap_or(lines.len());
    lines.insert(at, line);
    std::fs::write(&latest, lines.join("\n") + "\n")
}

/// One scenario run alone (`--only NAME`): `measure` in a scratch directory of its own
/// (removed after), then `write` into `bench/results`, whose summary line is printed; the
/// other scenarios' figures stay.
pub fn run_only<T>(
    name: &str,
    measure: impl FnOnce(&Path) -> anyhow::Result<T>,
    write: impl FnOnce(&Path, &T) -> anyhow::Result<String>,
) -> anyhow::Result<()> {
    let tmp = std::env::temp_dir().join(format!("xtrail-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let run = measure(&tmp);
    let _ = std::fs::remove_dir_all(&tmp);
    let dir = crate::paths::workspace_root().join("bench/results");
    std::fs::create_dir_all(&dir)?;
    let line = write(&dir, &run?)?;
    println!("{line}");
    Ok(())
}
