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
