//! Differential test of compiled sets on Maltrail's full static tree: the tree loaded with
//! `TrailSet::load`, the same tree passed through the updater merge (`Merge`, as
//! `xtrail-trails build --static` does) and written as a compiled set, and that file opened
//! with `CompiledSet::open` must hold exactly the same trails with the same info and
//! reference, and answer lookups for every row of `reference/trails.csv` alike.
//!
//! Without the shared data the test is skipped, unless `CI=true`, where it fails.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use xtrail_detect::trails::compiled::{self, CompileOptions};
use xtrail_detect::trails::update::set_rows;
use xtrail_detect::trails::{CompiledSet, LoadOptions, Merge, TrailSet, UpdateOptions};

fn shared_data() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/maltrail");
    if dir.join("trails-static").is_dir() && dir.join("reference/trails.csv").is_file() {
        return Some(dir);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "Maltrail shared data not found at {} (required in CI)",
            dir.display()
        );
    }
    eprintln!("skipping: no Maltrail static tree at {}", dir.display());
    None
}

/// The label a set gives one reference row's trail, looked up as the sensor would.
fn lookup(t: &TrailSet, trail: &str) -> Option<(String, String)> {
    let l = |id| {
        let l = t.label(id);
        (l.info.clone(), l.reference.clone())
    };
    if let Ok(a) = trail.parse::<IpAddr>() {
        return t.ip.lookup(a, None).map(|m| l(m.label));
    }
    if let Some((a, p)) = trail.rsplit_once(':') {
        let a = a.trim_start_matches('[').trim_end_matches(']');
        if let (Ok(a), Ok(p)) = (a.parse::<IpAddr>(), p.parse::<u16>()) {
            return t.ip.lookup(a, Some(p)).map(|m| l(m.label));
        }
    }
    if let Some(d) = t.domains.contains(trail) {
        return Some(l(d));
    }
    if let Some(u) = t.urls.contains(trail) {
        return Some(l(u));
    }
    t.domains
        .regexes
        .iter()
        .find(|(r, _)| *r == trail)
        .map(|(_, id)| l(id))
}

/// Equal row lists, or a short account of the differences.
fn same_rows(got: &[(String, String, String)], want: &[(String, String, String)], what: &str) {
    use std::collections::HashSet;
    let g: HashSet<_> = got.iter().collect();
    let w: HashSet<_> = want.iter().collect();
    let extra: Vec<_> = g.difference(&w).take(10).collect();
    let missing: Vec<_> = w.difference(&g).take(10).collect();
    assert!(
        extra.is_empty() && missing.is_empty() && got.len() == want.len(),
        "{what}: {} vs {} rows; extra {extra:?}; missing {missing:?}",
        got.len(),
        want.len()
    );
}

#[test]
fn compiled_static_tree_equals_loaded_tree() {
    let Some(data) = shared_data() else { return };
    let opts = LoadOptions::with_maltrail_data(&data.join("data")).expect("Maltrail data");
    let loaded = TrailSet::load(&[data.join("trails-static")], &opts).expect("static tree");

    // The builder's path: the static tree as one source of the updater merge.
    let mut merge = Merge::new();
    merge.merge_set(&loaded);
    let update = UpdateOptions {
        filters: opts.static_filters.clone(),
        ..UpdateOptions::default()
    };
    let (rows, report) = merge.finish(&update);
    eprintln!("merge: {report:?}");
    let built = TrailSet::from_rows(
        rows.iter()
            .map(|(k, i, r)| (k.as_str(), i.as_str(), r.as_str())),
        &LoadOptions::default(),
    );
    let dir = std::env::temp_dir().join(format!("xtrail-compiled-ref-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("static.xtrails");
    let (seed, public) = compiled::generate_key().unwrap();
    compiled::write_file(
        &built,
        &CompileOptions {
            built_at: 0,
            signing_key: Some(seed),
            meta: serde_json::Value::Null,
        },
        &path,
    )
    .unwrap();
    let started = Instant::now();
    let set = CompiledSet::open(&path, Some(&public)).expect("compiled set opens");
    eprintln!(
        "opened {} ({} bytes) in {:.3?}",
        set.version(),
        std::fs::metadata(&path).unwrap().len(),
        started.elapsed()
    );
    let compiled = set.trails();

    let want = set_rows(&loaded);
    same_rows(&set_rows(&built), &want, "merge changed the static tree");
    same_rows(
        &set_rows(compiled),
        &want,
        "compiled set differs from the loaded tree",
    );

    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_path(data.join("reference/trails.csv"))
        .unwrap();
    let (mut rows_seen, mut found) = (0usize, 0usize);
    for row in reader.records() {
        let row = row.unwrap();
        rows_seen += 1;
        let a = lookup(&loaded, &row[0]);
        let b = lookup(compiled, &row[0]);
        assert_eq!(a, b, "{}", &row[0]);
        if a.as_ref()
            .is_some_and(|(i, r)| i == &row[1] && r == &row[2])
        {
            found += 1;
        }
    }
    eprintln!("{found} of {rows_seen} reference rows found with the reference's info/reference");
    // The rest are static_tree_reference.rs's documented differences (label order, ports in
    // URLs, unloadable texts, the custom trail) plus rows this simple lookup does not key
    // (CIDRs, bracketed IPv6 ports): 3,462 on this tree.
    assert!(rows_seen - found <= 3_462, "{found} of {rows_seen}");
    let _ = std::fs::remove_dir_all(&dir);
}
