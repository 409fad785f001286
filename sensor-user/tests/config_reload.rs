//! `xtrail-sensor config --print` with the reload keys: from the file, flags over them.

use std::process::Command;

#[test]
fn config_print_shows_reload_keys_with_flags_over_the_file() {
    let dir = std::env::temp_dir().join(format!("xtrail-cfg-print-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("sensor.toml");
    let key = "cd".repeat(32);
    std::fs::write(
        &p,
        format!("watch_trails = true\ntrail_min_ratio = 0.25\ntrails_from_collector = true\ntrails_public_key = \"{key}\"\n"),
    )
    .unwrap();
    let print = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_xtrail-sensor"))
            .args(["config", "--print", "--config"])
            .arg(&p)
            .args(extra)
            .output()
            .expect("run xtrail-sensor");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, text, err) = print(&[]);
    assert!(ok, "{err}");
    for want in [
        "watch_trails = true",
        "trail_min_ratio = 0.25",
        "trails_from_collector = true",
        &format!("trails_public_key = \"{key}\""),
    ] {
        assert!(text.contains(want), "no {want} in:\n{text}");
    }
    let (ok, text, err) = print(&["--trail-min-ratio", "0.9", "--trails-public-key", "/k.pub"]);
    assert!(ok, "{err}");
    assert!(text.contains("trail_min_ratio = 0.9"), "{text}");
    assert!(text.contains("trails_public_key = \"/k.pub\""), "{text}");
    let (ok, _, err) = print(&["--trail-min-ratio", "2"]);
    assert!(!ok && err.contains("trail_min_ratio"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
