//! Loads Maltrail's static tree (`shared/data/maltrail/trails-static`) and compares every
//! trail and label with `reference/trails.csv`, the output of Maltrail's own updater for the
//! same tree. Every difference is classified and counted; only the deliberate ones below are
//! allowed (also listed in README.md, "Differences from Maltrail"):
//!
//! - `custom`: the reference carries Maltrail's one bundled custom trail
//!   (`175.45.177.138`, `dprk`, `(custom)`), which is not part of the static tree.
//! - `label_order` (2,257): keys listed by two files of the same folder. Maltrail's updater (the
//!   version that built the reference) read files in directory order, which depends on the
//!   file system; xtrail reads them sorted by name (as later Maltrail does), so the later file
//!   by name wins. Both labels always come from the same folder (category).
//! - `url_port` (41), `cidr_masked` (0): xtrail stores URL trails without a `:port` in the host and
//!   CIDRs masked to their prefix (`5.63.151.7/24` is `5.63.151.0/24`); Maltrail keeps the
//!   text.
//! - `not_loadable` (71): texts Maltrail keeps as opaque strings but that cannot match
//!   anything, which xtrail counts as malformed: 31 bad `IP:port` (`161.35.41.9:53:53`,
//!   port 0 or over 65535) and 40 non-ASCII URL paths that Maltrail's IDNA step turns into
//!   `xn--/...` strings no request can carry.
//!
//! Without the shared data the test is skipped, unless `CI=true`, where it fails.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Instant;

use xtrail_detect::trails::{LoadOptions, TrailSet};

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
    eprintln!(
        "skipping: no Maltrail static tree/reference at {}",
        dir.display()
    );
    None
}

/// A trail in a canonical form both sides agree on (addresses parsed, so `::ffff:1.2.3.4`
/// and `1.2.3.4` are one key).
fn canonical(key: &str) -> String {
    if let Ok(a) = key.parse::<IpAddr>() {
        return ip_text(a);
    }
    if let Some(rest) = key.strip_prefix('[') {
        if let Some((a, p)) = rest.split_once("]:") {
            if let (Ok(a), Ok(p)) = (a.parse::<Ipv6Addr>(), p.parse::<u16>()) {
                return format!("{}:{p}", ip_text(IpAddr::V6(a)));
            }
        }
    }
    if let Some((a, p)) = key.rsplit_once(':') {
        if let (Ok(a), Ok(p)) = (a.parse::<Ipv4Addr>(), p.parse::<u16>()) {
            return format!("{a}:{p}");
        }
    }
    key.to_owned()
}

fn ip_text(a: IpAddr) -> String {
    match a {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => v6.to_string(),
        },
        IpAddr::V4(v4) => v4.to_string(),
    }
}

/// Every loaded trail as (canonical text, (info, reference)).
fn loaded(t: &TrailSet) -> HashMap<String, (String, String)> {
    let mut out = HashMap::new();
    let label = |l| {
        let l = t.label(l);
        (l.info.clone(), l.reference.clone())
    };
    for (a, l) in &t.ip.v4 {
        out.insert(Ipv4Addr::from(a).to_string(), label(l));
    }
    for (a, l) in &t.ip.v6 {
        out.insert(Ipv6Addr::from(*a).to_string(), label(*l));
    }
    for ((a, p), l) in &t.ip.ipport {
        out.insert(
            format!("{}:{p}", ip_text(IpAddr::V6(Ipv6Addr::from(a)))),
            label(l),
        );
    }
    for (a, p, l) in &t.ip.cidr4 {
        out.insert(format!("{}/{p}", Ipv4Addr::from(*a)), label(*l));
    }
    for (a, p, l) in &t.ip.cidr6 {
        out.insert(format!("{}/{p}", Ipv6Addr::from(*a)), label(*l));
    }
    for (d, l) in t.domains.iter() {
        out.insert(d.to_owned(), label(l));
    }
    for (r, l) in t.domains.regexes.iter() {
        out.insert(r.to_owned(), label(l));
    }
    for (u, l) in t.urls.iter() {
        out.insert(u.to_owned(), label(l));
    }
    out
}

/// The reference as (canonical text, (info, reference, original text)).
fn reference(path: &Path) -> HashMap<String, (String, String, String)> {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_path(path)
        .expect("reference opens");
    let mut out = HashMap::new();
    for row in r.records() {
        let row = row.expect("reference row");
        let (k, i, f) = (&row[0], &row[1], &row[2]);
        out.insert(canonical(k), (i.to_owned(), f.to_owned(), k.to_owned()));
    }
    out
}

/// `ip/n` masked to its prefix, if it is one.
fn masked_cidr(k: &str) -> Option<String> {
    let (a, p) = k.split_once('/')?;
    let a: Ipv4Addr = a.parse().ok()?;
    let p: u8 = p.parse().ok().filter(|&p| p <= 32)?;
    let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
    Some(format!("{}/{p}", Ipv4Addr::from(u32::from(a) & mask)))
}

/// `host:port/path` without the port, if it has one.
fn without_port(k: &str) -> Option<String> {
    let slash = k.find('/')?;
    let (host, port) = k[..slash].rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    Some(format!("{}{}", host.trim_end_matches('.'), &k[slash..]))
}

fn category(info: &str) -> &str {
    info.rsplit_once(" (").map_or("", |(_, c)| c)
}

#[test]
fn static_tree_matches_maltrail_reference() {
    let Some(data) = shared_data() else { return };
    let opts = LoadOptions::with_maltrail_data(&data.join("data")).expect("Maltrail data");
    let start = Instant::now();
    let t = TrailSet::load(&[data.join("trails-static")], &opts).expect("static tree loads");
    let load_time = start.elapsed();
    eprintln!("loaded in {load_time:.2?}: {}", t.report);

    let start = Instant::now();
    let ours = loaded(&t);
    let theirs = reference(&data.join("reference/trails.csv"));
    let mut classes: HashMap<&str, Vec<String>> = HashMap::new();
    let mut matched: HashSet<&str> = HashSet::new();
    for (k, (info, rf, text)) in &theirs {
        match ours.get(k) {
            Some((i, r)) if i == info && r == rf => {
                matched.insert(k);
            }
            Some((i, r)) => {
                matched.insert(k);
                let class = if r == rf && category(i) == category(info) {
                    "label_order"
                } else {
                    "label_other"
                };
                classes
                    .entry(class)
                    .or_default()
                    .push(format!("{text}: reference {info:?}, xtrail {i:?}"));
            }
            None if rf == "(custom)" => classes.entry("custom").or_default().push(text.clone()),
            None => {
                let alt = masked_cidr(k)
                    .map(|c| ("cidr_masked", c))
                    .or_else(|| without_port(k).map(|u| ("url_port", u)));
                match alt {
                    Some((class, alt)) if ours.contains_key(&alt) => {
                        matched.insert(k);
                        classes.entry(class).or_default().push(text.clone());
                    }
                    _ => classes
                        .entry("not_loadable")
                        .or_default()
                        .push(text.clone()),
                }
            }
        }
    }
    // Trails only xtrail has: neither an exact key of the reference nor the port-less or
    // masked form of one.
    let alt_keys: HashSet<String> = theirs
        .keys()
        .filter(|k| !ours.contains_key(*k))
        .filter_map(|k| masked_cidr(k).or_else(|| without_port(k)))
        .collect();
    for k in ours.keys() {
        if !theirs.contains_key(k) && !alt_keys.contains(k) {
            classes.entry("extra").or_default().push(k.clone());
        }
    }
    eprintln!("compared in {:.2?}", start.elapsed());
    let mut names: Vec<_> = classes.keys().copied().collect();
    names.sort_unstable();
    for c in &names {
        let v = classes.get_mut(c).unwrap();
        v.sort();
        eprintln!(
            "{c}: {} (first: {:?})",
            v.len(),
            &v[..v.len().min(if *c == "not_loadable" { 80 } else { 8 })]
        );
    }
    let count = |c: &str| classes.get(c).map_or(0, Vec::len);

    // Allowed differences, with their exact counts for this tree.
    assert_eq!(count("label_other"), 0, "labels differing across folders");
    assert_eq!(count("custom"), 1);
    assert_eq!(count("extra"), 0, "trails only xtrail has");
    let expected: &[(&str, usize)] = &[
        ("label_order", EXPECTED_LABEL_ORDER),
        ("url_port", EXPECTED_URL_PORT),
        ("cidr_masked", EXPECTED_CIDR_MASKED),
        ("not_loadable", EXPECTED_NOT_LOADABLE),
    ];
    for (c, n) in expected {
        assert_eq!(count(c), *n, "{c}");
    }
    assert_eq!(
        theirs.len(),
        matched.len() + count("custom") + count("not_loadable"),
    );
}

const EXPECTED_LABEL_ORDER: usize = 2_257;
const EXPECTED_URL_PORT: usize = 41;
const EXPECTED_CIDR_MASKED: usize = 0;
const EXPECTED_NOT_LOADABLE: usize = 71;
