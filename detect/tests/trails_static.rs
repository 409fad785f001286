//! Loads Maltrail's real static trail tree and checks counts, labels and sample lookups.
//!
//! The tree lives outside the repository (`shared/data/maltrail/trails-static` beside the
//! workspace). Missing tree: skipped with a message, or a failure when `CI=true`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::OnceLock;

use xtrail_detect::trails::{IpMatchKind, LoadOptions, TrailSet};

fn tree_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/maltrail/trails-static")
}

/// The loaded tree, once for all tests (loading takes a second or so in debug builds... more).
fn trails() -> Option<&'static TrailSet> {
    static SET: OnceLock<Option<TrailSet>> = OnceLock::new();
    SET.get_or_init(|| {
        let path = tree_path();
        if !path.is_dir() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "Maltrail static trails missing at {} (required in CI)",
                path.display()
            );
            eprintln!("skipping: no Maltrail static trails at {}", path.display());
            return None;
        }
        match TrailSet::load(&[path], &LoadOptions::default()) {
            Ok(set) => Some(set),
            Err(e) => panic!("loading the static tree failed: {e}"),
        }
    })
    .as_ref()
}

fn in_range(what: &str, n: usize, lo: usize, hi: usize) {
    assert!((lo..=hi).contains(&n), "{what}: {n} not in {lo}..={hi}");
}

#[test]
fn counts_per_kind() {
    let Some(t) = trails() else { return };
    let r = &t.report;
    eprintln!("{r}");
    // Distinct trails (duplicates across files collapsed). `http://1.2.3.4` lines count as
    // IPv4 trails, which is why there are more IPv4 trails than bare IPv4 lines.
    in_range("files", r.files, 2_500, 5_000);
    in_range("lines", r.lines, 1_500_000, 2_500_000);
    in_range("ipv4", r.ipv4, 20_000, 150_000);
    in_range("ipv6", r.ipv6, 1_000, 5_000);
    in_range("ipport", r.ipport, 200_000, 400_000);
    in_range("cidr4", r.cidr4, 800, 2_000);
    in_range("domains", r.domains, 1_000_000, 1_700_000);
    in_range("urls", r.urls, 80_000, 250_000);
    in_range("regexes", r.regexes, 15, 60);
    in_range("labels", r.labels, 2_500, 5_000);
    // Keys listed by several files are merged before the tables (Maltrail's updater: the
    // later file wins), so no duplicate reaches them.
    assert_eq!(r.duplicates, 13, "{r}");
    assert_eq!(t.ip.v4.len(), r.ipv4);
    assert_eq!(t.ip.ipport.len(), r.ipport);
    assert_eq!(t.domains.len(), r.domains);
    assert_eq!(t.urls.len(), r.urls);
    assert_eq!(t.domains.regexes.len(), r.regexes);
}

#[test]
fn malformed_lines_are_counted() {
    let Some(t) = trails() else { return };
    let r = &t.report;
    in_range("malformed", r.malformed, 5, 1_000);
    assert_eq!(r.malformed_examples.len(), 10);
    // By reason: 31 bad IP:port (`161.35.41.9:53:53`, port 0 or over 65535) and 40
    // non-ASCII URL paths; support\u{ac}forum.org is IDNA-encoded as Maltrail does.
    use xtrail_detect::trails::MalformedReason;
    assert_eq!(r.malformed_reasons[&MalformedReason::BadIpPort], 31, "{r}");
    assert_eq!(r.malformed_reasons[&MalformedReason::NotAscii], 40, "{r}");
    assert!(t.domains.contains("xn--supportforum-tqa.org").is_some());
    let m = &r.malformed_examples[0];
    assert!(m.line > 0 && m.path.starts_with(tree_path()), "{m:?}");
}

#[test]
fn sample_trails_with_labels() {
    let Some(t) = trails() else { return };
    let info = |l| t.label(l).info.as_str();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();

    // IP:port (only in malware/asyncrat.txt).
    let m = t.ip.lookup(ip("213.152.161.99"), Some(47390)).unwrap();
    assert_eq!(
        (m.kind, info(m.label)),
        (IpMatchKind::IpPort, "asyncrat (malware)")
    );
    assert_eq!(t.label(m.label).reference, "(static)");
    assert!(t.ip.lookup(ip("213.152.161.99"), Some(47391)).is_none());
    // [IPv6]:port (malicious/magentocore.txt).
    let m = t.ip.lookup(ip("2a12:bec4:1460:50::2"), Some(3478)).unwrap();
    assert_eq!(info(m.label), "magentocore (malicious)");
    // v4-mapped [0:0:0:0:0:ffff:2d3e:c649]:53 (malware/ghostdns.txt) is 45.62.198.73:53.
    let m = t.ip.lookup(ip("45.62.198.73"), Some(53)).unwrap();
    assert_eq!(
        (m.kind, info(m.label)),
        (IpMatchKind::IpPort, "ghostdns (malware)")
    );
    // Root files: address trails, IPv6 trails and CIDRs.
    let m = t.ip.lookup(ip("67.21.36.103"), None).unwrap();
    assert_eq!((m.kind, info(m.label)), (IpMatchKind::Ip, "mass scanner"));
    let m = t.ip.lookup(ip("2400:6180:0:d0::1008:2001"), None).unwrap();
    assert_eq!(info(m.label), "mass scanner");
    let m = t.ip.lookup(ip("80.82.65.77"), None).unwrap();
    assert_eq!(
        (m.kind, info(m.label)),
        (IpMatchKind::Cidr, "mass scanner cidr")
    );

    // Domains: asyncrat and njrat are both malware: the later file by name (njrat) wins, as in
    // Maltrail's updater.
    let m = t.domains.lookup("mikus192091.ddns.net").unwrap();
    assert_eq!(
        (m.trail.as_str(), info(m.label)),
        ("mikus192091.ddns.net", "njrat (malware)")
    );
    let m = t.domains.lookup("www.google-stitch.com").unwrap();
    assert_eq!(m.trail, "(www).google-stitch.com");
    assert_eq!(info(m.label), "airsec fakestitch (suspicious)");
    // Regex trail from malware/medbot.txt.
    let m = t.domains.lookup("www.seek12.zootseek.com").unwrap();
    assert_eq!(
        (m.trail.as_str(), info(m.label)),
        ("(www).seek12.zootseek.com", "medbot (malware)")
    );
    // Name trails win over regex trails: temp.swtest.ru is listed in suspicious/domain.txt,
    // before malware/generic.txt's `[a-z0-9]{10}\.temp\.swtest\.ru` is tried.
    let m = t.domains.lookup("abcdefghij.temp.swtest.ru").unwrap();
    assert_eq!(
        (m.trail.as_str(), info(m.label)),
        ("(abcdefghij).temp.swtest.ru", "domain (suspicious)")
    );

    // URL (listed as http://regionsnews.net/OEqhU8Lg5 in malware/emotet.txt).
    let m = t
        .urls
        .lookup(Some("regionsnews.net"), "/OEqhU8Lg5")
        .unwrap();
    assert_eq!(
        (m.trail.as_str(), info(m.label)),
        ("regionsnews.net/oeqhu8lg5", "emotet (malware)")
    );
    assert!(t
        .urls
        .lookup(Some("regionsnews.net"), "/oequ8lg5")
        .is_none());

    // Clean names stay clean.
    assert!(t.domains.lookup("www.wikipedia.org").is_none());
    assert!(t.ip.lookup(ip("192.0.2.1"), Some(80)).is_none());
}
