//! Loads the replay corpus fixture `trails.csv` and checks a lookup for every row, with the
//! trail text Maltrail prints for the corpus's DNS, HTTP and IP cases.

use std::net::IpAddr;
use std::path::PathBuf;

use xtrail_detect::trails::{IpMatchKind, LoadOptions, TrailSet};

fn load() -> Option<TrailSet> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/maltrail/corpus/trails.csv");
    if !path.is_file() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "corpus trails.csv missing at {} (required in CI)",
            path.display()
        );
        eprintln!("skipping: no corpus trails.csv at {}", path.display());
        return None;
    }
    Some(TrailSet::load(&[path], &LoadOptions::default()).expect("corpus trails.csv loads"))
}

#[test]
fn every_row_is_found() {
    let Some(t) = load() else { return };
    let r = &t.report;
    assert_eq!(r.lines, 20, "{r}");
    assert_eq!(r.malformed, 0, "{r}");
    assert_eq!(r.duplicates, 0, "{r}");
    assert_eq!(
        (r.ipv4, r.ipv6, r.ipport, r.domains, r.urls, r.regexes),
        (7, 1, 2, 7, 2, 1),
        "{r}"
    );

    let info = |l| t.label(l).info.as_str();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let dns = |q: &str| {
        t.domains
            .lookup(q)
            .map(|m| (m.trail, info(m.label).to_owned()))
            .unwrap_or_else(|| panic!("{q} not found"))
    };
    let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());

    // Domain rows, with the queries of the dns_queries case.
    assert_eq!(
        dns("evil-test-domain.com"),
        pair("evil-test-domain.com", "malware (test)")
    );
    assert_eq!(
        dns("sub.evil-parent.com"),
        pair("sub.evil-parent.com", "malware (test)")
    );
    assert_eq!(
        dns("evil-parent.com"),
        pair("evil-parent.com", "malware (test)")
    );
    assert_eq!(
        dns("www.evil-parent.com"),
        pair("(www).evil-parent.com", "malware (test)")
    );
    assert_eq!(
        dns("badsite.onion.to"),
        pair("badsite.onion(.to)", "malware (test)")
    );
    assert_eq!(
        dns("badsite.onion"),
        pair("badsite.onion", "malware (test)")
    );
    assert_eq!(
        dns("evilname.ip-adress.com"),
        pair("evilname(.ip-adress.com)", "malware (test)")
    );
    assert_eq!(
        t.domains.contains("evilname"),
        t.domains.contains("evilname")
    );
    assert!(t.domains.contains("evilname").is_some());
    assert_eq!(
        dns("dga1234.wildcard-test.com"),
        pair("dga1234.wildcard-test.com", "malware (test)")
    );
    assert_eq!(
        dns("tls-evil.example"),
        pair("tls-evil.example", "malware (test)")
    );
    assert_eq!(
        dns("quic-evil.example"),
        pair("quic-evil.example", "malware (test)")
    );
    assert!(t.domains.lookup("whatever.com").is_none());
    assert!(t.domains.lookup("dga.wildcard-test.com").is_none());

    // IP rows.
    for (addr, port, kind, want) in [
        ("66.66.66.66", None, IpMatchKind::Ip, "malware (test)"),
        ("6.6.6.6", Some(8443), IpMatchKind::IpPort, "malware (test)"),
        ("7.7.7.7", None, IpMatchKind::Ip, "phishing (test)"),
        ("198.51.100.53", Some(53), IpMatchKind::Ip, "known attacker"),
        ("203.0.113.44", Some(80), IpMatchKind::Ip, "malware (test)"),
        ("198.51.100.66", None, IpMatchKind::Ip, "botnet c2 (test)"),
        ("dead::beef", None, IpMatchKind::Ip, "malware (test)"),
        (
            "dead::beef",
            Some(443),
            IpMatchKind::IpPort,
            "malware (test)",
        ),
        (
            "198.51.100.90",
            None,
            IpMatchKind::Ip,
            "sinkhole testsink (malware)",
        ),
        (
            "198.51.100.91",
            None,
            IpMatchKind::Ip,
            "parking site (suspicious)",
        ),
    ] {
        let m =
            t.ip.lookup(ip(addr), port)
                .unwrap_or_else(|| panic!("{addr} {port:?} not found"));
        assert_eq!((m.kind, info(m.label)), (kind, want), "{addr} {port:?}");
    }
    assert!(t.ip.lookup(ip("6.6.6.6"), Some(443)).is_none());
    assert_eq!(t.label(0).reference, "(static)");

    // URL rows, as in the http_trails case.
    let m = t
        .urls
        .lookup(Some("hostcheck.example"), "/malicious-login.php")
        .unwrap();
    assert_eq!(m.trail, "(hostcheck.example)/malicious-login.php");
    assert_eq!(info(m.label), "malware (test)");
    let m = t
        .urls
        .lookup(Some("evil-url.example"), "/bad/path")
        .unwrap();
    assert_eq!(m.trail, "evil-url.example/bad/path");
    assert!(t
        .urls
        .lookup(Some("evil-url.example"), "/good/path")
        .is_none());
}
