//! `xtrail-sensor replay --trails SET` with a compiled set reports exactly what the same
//! trails give as a CSV, on Maltrail's replay corpus; a mixed `--trails` list is refused.
//!
//! Without the shared data the test is skipped, unless `CI=true`, where it fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use xtrail_detect::trails::{compiled, CompileOptions, LoadOptions, TrailSet};

const SENSOR: &str = env!("CARGO_BIN_EXE_xtrail-sensor");

fn corpus() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/maltrail/corpus");
    if dir.join("trails.csv").is_file() {
        return Some(dir);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "Maltrail corpus not found at {} (required in CI)",
            dir.display()
        );
    }
    eprintln!("skipping: no Maltrail corpus at {}", dir.display());
    None
}

fn replay(pcaps: &[PathBuf], trails: &[&Path]) -> (bool, String, String) {
    let mut c = Command::new(SENSOR);
    c.args([
        "replay",
        "--no-whitelist",
        "--format",
        "maltrail",
        "--sensor-name",
        "t",
    ]);
    for p in pcaps {
        c.arg("--pcap").arg(p);
    }
    for t in trails {
        c.arg("--trails").arg(t);
    }
    let out = c.output().expect("run xtrail-sensor");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn compiled_set_replays_like_its_csv() {
    let Some(dir) = corpus() else { return };
    let csv = dir.join("trails.csv");
    let set = TrailSet::load(std::slice::from_ref(&csv), &LoadOptions::default()).unwrap();
    let tmp = std::env::temp_dir().join(format!("xtrail-compiled-replay-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let out = tmp.join("corpus.xtrails");
    compiled::write_file(&set, &CompileOptions::default(), &out).unwrap();

    let mut pcaps: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "pcap"))
        .collect();
    pcaps.sort();
    let (ok_csv, ev_csv, err_csv) = replay(&pcaps, &[&csv]);
    let (ok_set, ev_set, err_set) = replay(&pcaps, &[&out]);
    assert!(ok_csv, "{err_csv}");
    assert!(ok_set, "{err_set}");
    assert!(err_set.contains("compiled trail set"), "{err_set}");
    assert!(ev_csv.lines().count() > 10, "{ev_csv}");
    assert_eq!(ev_csv, ev_set);

    // A compiled set is a whole set: mixing it with other sources is an error.
    let (ok, _, err) = replay(&pcaps[..1], &[&out, &csv]);
    assert!(!ok);
    assert!(err.contains("only --trails source"), "{err}");
    let _ = std::fs::remove_dir_all(&tmp);
}
