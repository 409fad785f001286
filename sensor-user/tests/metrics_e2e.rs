//! `xtrail-sensor run --metrics ADDR` on a veth pair in fresh namespaces: a bounded burst of
//! frames (clean SYNs, an IP trail hit, a DNS query for a domain trail, a SYN scan), then
//! `/metrics` scraped over plain HTTP from inside the sensor's namespace: the kernel and
//! pipeline counters moved, and every line is Prometheus text. Needs root (skipped with a
//! message without it, a failure under `CI=true`).

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use xtrail_bench::frames::{dns_query, v4, Frame};
use xtrail_bench::netns::VethPair;

/// Inside the sensor's namespace (its own loopback): a fixed port cannot collide.
const METRICS: &str = "127.0.0.1:9465";

/// GET `path` from the metrics address inside namespace `ns`: (status, body).
fn get(ns: &str, path: &str) -> (u16, String) {
    let r = common::http(Some(ns), METRICS, "GET", path, &[], "");
    (r.status, r.body)
}

/// Every line a `# HELP`/`# TYPE` comment or `name{labels} value`; each series once; each
/// sample's family declared by a `# TYPE` line.
fn check_prometheus_text(page: &str) {
    let mut typed = HashSet::new();
    let mut series = HashSet::new();
    for line in page.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let (name, kind) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
            assert!(
                ["counter", "gauge"].contains(&kind),
                "bad TYPE line: {line}"
            );
            assert!(typed.insert(name.to_string()), "{name} typed twice");
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (s, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line:?}"));
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name_end = s.find('{').unwrap_or(s.len());
        let name = &s[..name_end];
        assert!(
            !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        if name_end < s.len() {
            let labels = &s[name_end..];
            assert!(
                labels.ends_with('}') && labels.contains("=\""),
                "bad labels in {line:?}"
            );
        }
        assert!(typed.contains(name), "{name} has no # TYPE line");
        assert!(series.insert(s.to_string()), "{s} twice");
    }
    assert!(!series.is_empty(), "empty page");
}

fn value(page: &str, series: &str) -> u64 {
    page.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|v| v.strip_prefix(' '))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn metrics_endpoint_serves_kernel_and_pipeline_counters() {
    if !common::privileged(module_path!()) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("xtrail-metrics-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let trails = dir.join("trails.csv");
    std::fs::write(
        &trails,
        "198.19.66.66,metrics botnet (malware),(test)\n\
         metrics-evil-xtrail.com,metrics domain (malware),(test)\n",
    )
    .unwrap();
    let log = dir.join("events.jsonl");
    let pair = VethPair::create("xm").expect("veth pair");
    let sensor = common::start_sensor(&pair, &trails, &log, "metrics", &["--metrics", METRICS]);

    // The address answers from the start (an empty page); the loop's first pass, right
    // after the attach, renders the first full page: polled, bounded.
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        let (status, page) = get(&pair.sensor_ns, "/metrics");
        assert_eq!(status, 200);
        if !page.is_empty() || Instant::now() > deadline {
            break page;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    check_prometheus_text(&first);

    let inj = pair.injector().expect("injector");
    let me = v4(&pair.peer_ip);
    let there = v4(&pair.sensor_ip);
    for i in 0..50u16 {
        inj.send(&Frame::syn(me, 30000 + i, there, 80).build())
            .unwrap();
    }
    inj.send(&Frame::syn(me, 40000, v4("198.19.66.66"), 443).build())
        .unwrap();
    let q = dns_query(7, "www.metrics-evil-xtrail.com", 1);
    inj.send(&Frame::udp(me, 40001, there, 53, &q).build())
        .unwrap();
    let scanner = v4("198.18.222.9");
    for port in 1000..1020u16 {
        inj.send(&Frame::syn(scanner, 41000 + port, there, port).build())
            .unwrap();
    }

    // The loop refreshes the page once a second: poll (bounded) until the counters moved.
    let deadline = Instant::now() + Duration::from_secs(15);
    let page = loop {
        let (_, page) = get(&pair.sensor_ns, "/metrics");
        let done = value(&page, "xtrail_sensor_xdp_packets_total") >= 72
            && value(&page, "xtrail_sensor_events_total{type=\"IP\"}") >= 2
            && value(&page, "xtrail_sensor_events_total{type=\"DNS\"}") >= 1
            && value(
                &page,
                "xtrail_sensor_heuristic_events_total{heuristic=\"potential port scanning\"}",
            ) >= 1;
        if done || Instant::now() > deadline {
            break page;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    check_prometheus_text(&page);
    let v = |s: &str| value(&page, s);
    assert!(v("xtrail_sensor_xdp_packets_total") >= 72, "{page}");
    assert!(v("xtrail_sensor_xdp_bytes_total") > 0, "{page}");
    assert!(v("xtrail_sensor_xdp_reported_total") >= 1, "{page}");
    assert!(v("xtrail_sensor_xdp_handoff_dns_total") >= 1, "{page}");
    assert!(v("xtrail_sensor_kernel_hits_total") >= 1, "{page}");
    assert!(v("xtrail_sensor_processed_total") >= 1, "{page}");
    assert!(v("xtrail_sensor_dns_messages_total") >= 1, "{page}");
    assert!(v("xtrail_sensor_flow_starts_total") >= 20, "{page}");
    assert_eq!(v("xtrail_sensor_kernel_counters_readable"), 1, "{page}");
    // The AF_XDP transport's loss counters are served in every mode (0 without sockets).
    for series in [
        "xtrail_sensor_xsk_dropped_total",
        "xtrail_sensor_xsk_fill_empty_total",
        "xtrail_sensor_queue_full_total",
    ] {
        assert!(
            page.lines().any(|l| l == format!("{series} 0")),
            "{series}\n{page}"
        );
    }
    // The trail hit and the port scan (a heuristic IP event).
    assert_eq!(v("xtrail_sensor_events_total{type=\"IP\"}"), 2, "{page}");
    assert_eq!(v("xtrail_sensor_events_total{type=\"DNS\"}"), 1, "{page}");
    assert_eq!(
        v("xtrail_sensor_heuristic_events_total{heuristic=\"potential port scanning\"}"),
        1,
        "{page}"
    );
    assert!(v("xtrail_sensor_events_written_total") >= 3, "{page}");
    // The SYNs' (source, destination) keys in the TCP scan table, nothing evicted; every
    // table listed.
    assert!(
        v("xtrail_sensor_heuristic_table_entries{table=\"scan_tcp\"}") >= 1,
        "{page}"
    );
    for table in [
        "scan_tcp",
        "scan_udp",
        "scan_infection",
        "udp_flows",
        "web_scan",
        "nxdomain",
        "dns_exhaustion",
        "dns_exhaustion_subdomains",
        "ua_cache",
    ] {
        let entries = format!("xtrail_sensor_heuristic_table_entries{{table=\"{table}\"}} ");
        assert!(
            page.lines().any(|l| l.starts_with(&entries)),
            "no {entries}in\n{page}"
        );
        let series =
            format!("xtrail_sensor_heuristic_table_evictions_total{{table=\"{table}\"}} 0");
        assert!(page.lines().any(|l| l == series), "no {series} in\n{page}");
    }
    // Counters that exist even when zero.
    for name in [
        "xtrail_sensor_xdp_ringbuf_full_total",
        "xtrail_sensor_xdp_handoff_failed_total",
        "xtrail_sensor_parse_errors_total",
        "xtrail_sensor_flood_over_budget_total",
        "xtrail_sensor_throttle_suppressed_total",
        "xtrail_sensor_trail_set_generation",
    ] {
        assert!(
            page.lines().any(|l| l.starts_with(&format!("{name} "))),
            "no {name} in\n{page}"
        );
    }
    let (status, _) = get(&pair.sensor_ns, "/");
    assert_eq!(status, 404);

    let stats = common::stop_sensor(sensor);
    assert!(stats.contains("final stats"), "{stats}");
    let _ = std::fs::remove_dir_all(&dir);
}
