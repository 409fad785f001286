//! Exporters against real receivers: the collector (real process) fed by the stock
//! publisher, exporting to a real rsyslog (RFC 5424 and 3164, UDP and TCP, CEF and JSON
//! bodies, checked field by field), a Maltrail-style UDP listener, ECS/EVE files; a dead TCP
//! target that neither slows ingest nor loses events, across a collector restart; and
//! rsyslog over TCP and TLS plus an HTTPS webhook stopped for 30 s in the middle of a stream.
//!
//! rsyslog and the TLS syslog receiver run in a network namespace the test creates (a veth
//! pair to the root namespace, a /30 in 198.19.252.0/22); the collector exports to the
//! namespace's address. Those tests need root, and rsyslog: without them they are skipped
//! with a message, unless `CI=true` (then they fail; `cargo xtask deps` installs rsyslog).

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead as _, BufReader, Read as _};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::netns::{require_root, Netns};
use common::{make_certs, sample, tempdir, Collector, SENSOR_TOKEN, SUB_TOKEN};
use xtrail_detect::event::{Event, Severity};
use xtrail_publish::{Publisher, PublisherConfig};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn publish_all(url: &str, spool: &Path, events: &[Event]) {
    let mut cfg = PublisherConfig::new(url.to_string(), SENSOR_TOKEN, "gw-test", spool);
    cfg.batch_max_events = 250;
    let p = Publisher::start(cfg).unwrap();
    for e in events {
        p.publish(e).unwrap();
    }
    p.flush(Duration::from_secs(120)).expect("flush");
    p.shutdown().unwrap();
}

fn lines(path: &Path) -> Vec<String> {
    // The receiver may be writing: a last line without its newline is not complete yet.
    std::fs::read_to_string(path)
        .map(|t| {
            let complete = t.rfind('\n').map_or("", |i| &t[..=i]);
            complete.lines().map(String::from).collect()
        })
        .unwrap_or_default()
}

/// Writes `exporters` (TOML) to `dir/collector.toml` and starts a collector with it on a
/// data directory of its own; returns it, that directory and a spool directory for
/// publishers (both named after `tag`).
fn start_exporting(
    dir: &Path,
    tag: &str,
    exporters: &str,
) -> (Collector, tempfile::TempDir, tempfile::TempDir) {
    let config = dir.join("collector.toml");
    std::fs::write(&config, exporters).unwrap();
    let data = tempdir(&format!("{tag}-data"));
    let spool = tempdir(&format!("{tag}-spool"));
    let collector = Collector::start(data.path(), None, &["--config", config.to_str().unwrap()]);
    (collector, data, spool)
}

/// The collector of [`start_exporting`] (stopped) started again: the same data directory,
/// configuration and gRPC port.
fn start_again(stopped: &Collector, dir: &Path) -> Collector {
    let config = dir.join("collector.toml");
    Collector::start(
        &stopped.data_dir,
        Some(stopped.grpc),
        &["--config", config.to_str().unwrap()],
    )
}

/// Skips the test for a missing program or package, except under `CI=true`, where it
/// fails with `ci_message`.
fn skip_unless_ci(ci_message: &str, skip_message: &str) {
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{ci_message}");
    eprintln!("SKIP {skip_message}");
}

/// The value of metric `name` of exporter `exporter` of `kind` on metrics page `m`.
fn export_metric(m: &str, name: &str, exporter: &str, kind: &str) -> u64 {
    metric(
        m,
        &format!("{name}{{exporter=\"{exporter}\",kind=\"{kind}\"}}"),
    )
}

/// rsyslogd, killed on drop.
struct Rsyslog(Child);

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rsyslogd() -> Option<PathBuf> {
    ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Splits a CEF line into its 7 header fields (unescaped) and its extension (unescaped).
fn parse_cef(line: &str) -> (Vec<String>, HashMap<String, String>) {
    let mut header = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars();
    while header.len() < 7 {
        match chars.next().expect("CEF header ends early") {
            '\\' => cur.push(chars.next().expect("escape")),
            '|' => header.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    let ext: String = chars.collect();
    // Keys are words followed by an unescaped `=`; a value runs to the next ` key=`.
    let mut pairs = HashMap::new();
    let bytes: Vec<char> = ext.chars().collect();
    let mut i = 0;
    let mut key = String::new();
    let mut val = String::new();
    let mut in_key = true;
    while i < bytes.len() {
        let c = bytes[i];
        if in_key {
            if c == '=' {
                in_key = false;
            } else {
                key.push(c);
            }
        } else if c == '\\' {
            i += 1;
            match bytes[i] {
                'n' => val.push('\n'),
                'r' => val.push('\r'),
                o => val.push(o),
            }
        } else if c == ' ' && {
            // Next token is `word=` (unescaped): a new key.
            let rest: String = bytes[i + 1..].iter().collect();
            let word: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            !word.is_empty() && rest[word.len()..].starts_with('=')
        } {
            pairs.insert(std::mem::take(&mut key), std::mem::take(&mut val));
            in_key = true;
        } else {
            val.push(c);
        }
        i += 1;
    }
    pairs.insert(key, val);
    (header, pairs)
}

fn cef_severity(s: Severity) -> &'static str {
    match s {
        Severity::Low => "3",
        Severity::Medium => "6",
        Severity::High => "9",
    }
}

fn syslog_severity(s: Severity) -> u32 {
    match s {
        Severity::Low => 5,
        Severity::Medium => 4,
        Severity::High => 2,
    }
}

/// Checks one CEF body against the event it came from.
fn check_cef(cef: &str, e: &Event) {
    let (h, x) = parse_cef(cef);
    assert_eq!(h[0], "CEF:0", "{cef}");
    assert_eq!(h[1], "xtrail");
    assert_eq!(h[2], "xtrail-sensor");
    assert_eq!(h[4], e.kind.as_str());
    assert_eq!(h[5], e.info, "{cef}");
    assert_eq!(h[6], cef_severity(e.severity));
    assert_eq!(x["src"], e.src_ip.to_string());
    assert_eq!(x["spt"], e.src_port.to_string());
    assert_eq!(x["dst"], e.dst_ip.to_string());
    assert_eq!(x["dpt"], e.dst_port.to_string());
    assert_eq!(x["trail"], e.trail, "{cef}");
    assert_eq!(x["ref"], e.reference);
    assert_eq!(x["proto"], e.proto);
    assert_eq!(x["rt"], (e.ts_us / 1000).to_string());
    assert_eq!(x["dvchost"], e.sensor);
    assert_eq!(x["cat"], e.kind.as_str());
    assert!(x["externalId"].parse::<u64>().is_ok());
    if let Some(q) = &e.details.dns_query {
        assert_eq!(&x["dhost"], q);
    }
    if let Some(p) = &e.details.http_path {
        assert_eq!(
            x["request"],
            format!("http://{}{p}", e.details.http_host.as_deref().unwrap())
        );
        assert_eq!(
            Some(x["requestClientApplication"].as_str()),
            e.details.http_user_agent.as_deref()
        );
    }
}

/// Events for the syslog test: samples, the first with a trail and info that need every
/// CEF escape.
fn syslog_events(n: u32) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let mut e = sample(i);
            if i == 0 {
                e.trail = r"evil|trail=x\y.example".into();
                e.info = r"bad|label\ (malware)".into();
            }
            e
        })
        .collect()
}

#[test]
fn syslog_to_rsyslog_cef_and_json_maltrail_and_files() {
    let Some(rsyslogd) = rsyslogd() else {
        skip_unless_ci(
            "rsyslogd is missing (CI=true): run `cargo xtask deps`",
            "syslog_to_rsyslog...: rsyslogd not installed (apt-get install rsyslog)",
        );
        return;
    };
    if !require_root("syslog_to_rsyslog_cef_and_json_maltrail_and_files") {
        return;
    }
    let ns = Netns::create();
    let rip = ns.ns_ip;
    let dir = tempdir("export-rsyslog");
    let out = dir.path();
    let [udp5424, tcp5424, udp3164, tcp3164] = [free_port(), free_port(), free_port(), free_port()];
    let conf = out.join("rsyslog.conf");
    let mut c = format!(
        "global(workDirectory=\"{d}\" maxMessageSize=\"64k\")\n\
         module(load=\"imudp\")\nmodule(load=\"imtcp\")\n\
         template(name=\"fields\" type=\"list\") {{ property(name=\"pri\") constant(value=\"\\t\") property(name=\"hostname\") constant(value=\"\\t\") property(name=\"app-name\") constant(value=\"\\t\") property(name=\"msgid\") constant(value=\"\\t\") property(name=\"timereported\" dateFormat=\"rfc3339\") constant(value=\"\\t\") property(name=\"msg\") constant(value=\"\\n\") }}\n",
        d = out.display()
    );
    for (name, port, kind) in [
        ("udp5424", udp5424, "imudp"),
        ("tcp5424", tcp5424, "imtcp"),
        ("udp3164", udp3164, "imudp"),
        ("tcp3164", tcp3164, "imtcp"),
    ] {
        c.push_str(&format!(
            "ruleset(name=\"{name}\") {{ action(type=\"omfile\" file=\"{}\" template=\"fields\") }}\n\
             input(type=\"{kind}\" address=\"{rip}\" port=\"{port}\" ruleset=\"{name}\")\n",
            out.join(format!("{name}.log")).display()
        ));
    }
    write_rsyslog_conf(&rsyslogd, &conf, &c);
    let pid = out.join("rsyslogd.pid");
    let _rsyslog = start_rsyslog(&ns, &rsyslogd, &conf, &pid, &[tcp5424, tcp3164]);
    std::thread::sleep(Duration::from_millis(300));

    // A Maltrail server's UDP collector, played by a socket.
    let maltrail = UdpSocket::bind("127.0.0.1:0").unwrap();
    maltrail
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let maltrail_addr = maltrail.local_addr().unwrap();

    let ecs = out.join("files/ecs.json");
    let eve = out.join("files/eve.json");
    let exporters = format!(
        r#"
[[exporter]]
kind = "syslog"
name = "udp5424"
target = "udp://{rip}:{udp5424}"
hostname = "xtrail-test"
start = "oldest"
[[exporter]]
kind = "syslog"
name = "tcp5424"
target = "tcp://{rip}:{tcp5424}"
hostname = "xtrail-test"
[[exporter]]
kind = "syslog"
name = "udp3164"
target = "udp://{rip}:{udp3164}"
protocol = "rfc3164"
hostname = "xtrail-test"
filter = ["min_severity=high"]
[[exporter]]
kind = "syslog"
name = "tcp3164json"
target = "tcp://{rip}:{tcp3164}"
protocol = "rfc3164"
format = "json"
facility = "authpriv"
hostname = "xtrail-test"
[[exporter]]
kind = "maltrail"
name = "maltrail"
target = "{maltrail_addr}"
[[exporter]]
kind = "file"
name = "ecs"
path = "{ecs}"
rotate_bytes = 20000
batch = 10
gzip = true
keep = 100
[[exporter]]
kind = "file"
name = "eve"
path = "{eve}"
format = "eve"
filter = ["type=DNS"]
"#,
        ecs = ecs.display(),
        eve = eve.display(),
    );
    let (collector, _data, spool) = start_exporting(out, "export-rsyslog", &exporters);
    const N: u32 = 60;
    let events = syslog_events(N);
    publish_all(&collector.url(), spool.path(), &events);
    let high: Vec<&Event> = events
        .iter()
        .filter(|e| e.severity == Severity::High)
        .collect();

    let log = |n: &str| out.join(format!("{n}.log"));
    wait_for(
        "rsyslog to write every message",
        Duration::from_secs(30),
        || {
            lines(&log("udp5424")).len() >= N as usize
                && lines(&log("tcp5424")).len() >= N as usize
                && lines(&log("udp3164")).len() >= high.len()
                && lines(&log("tcp3164")).len() >= N as usize
        },
    );
    // Each event by (src, trail), which is unique among the samples.
    let by_key: HashMap<(String, String), &Event> = events
        .iter()
        .map(|e| ((e.src_ip.to_string(), e.trail.clone()), e))
        .collect();
    let find_cef = |cef: &str| -> &Event {
        let (_, x) = parse_cef(cef);
        by_key[&(x["src"].clone(), x["trail"].clone())]
    };
    for name in ["udp5424", "tcp5424"] {
        let got = lines(&log(name));
        let mut seen = HashSet::new();
        for l in &got {
            let f: Vec<&str> = l.splitn(6, '\t').collect();
            let cef = f[5].trim_start();
            let e = find_cef(cef);
            check_cef(cef, e);
            assert_eq!(
                f[0],
                (16 * 8 + syslog_severity(e.severity)).to_string(),
                "{l}"
            );
            assert_eq!(f[1], "xtrail-test");
            assert_eq!(f[2], "xtrail");
            assert_eq!(f[3], e.kind.as_str());
            // rsyslog parsed the RFC 5424 timestamp (event time, UTC, microseconds).
            assert_eq!(f[4], xtrail_detect::event::format_rfc3339(e.ts_us), "{l}");
            seen.insert(e.trail.clone());
        }
        assert_eq!(seen.len(), N as usize, "{name}: every event once or more");
    }
    // The escaped one, whole.
    let first = lines(&log("tcp5424"))
        .into_iter()
        .find(|l| l.contains("evil"))
        .unwrap();
    assert!(
        first.contains(r"|bad\|label\\ (malware)|")
            && first.contains(r"trail=evil|trail\=x\\y.example "),
        "{first}"
    );
    // RFC 3164 over UDP, CEF, filtered to high severity.
    let got = lines(&log("udp3164"));
    assert_eq!(got.len(), high.len());
    for l in &got {
        let f: Vec<&str> = l.splitn(6, '\t').collect();
        let e = find_cef(f[5].trim_start());
        assert_eq!(e.severity, Severity::High);
        check_cef(f[5].trim_start(), e);
        assert_eq!(f[0], "130");
        assert_eq!(f[1], "xtrail-test");
        assert_eq!(f[2], "xtrail");
    }
    // RFC 3164 over TCP (newline framing), JSON body, facility authpriv (10).
    let got = lines(&log("tcp3164"));
    let mut seen = HashSet::new();
    for l in &got {
        let f: Vec<&str> = l.splitn(6, '\t').collect();
        let j: serde_json::Value = serde_json::from_str(f[5].trim_start()).expect(l);
        let e = by_key[&(
            j["src_ip"].as_str().unwrap().to_string(),
            j["trail"].as_str().unwrap().to_string(),
        )];
        assert_eq!(f[0], (10 * 8 + syslog_severity(e.severity)).to_string());
        assert_eq!(j["info"], e.info.as_str());
        assert_eq!(j["dst_port"], e.dst_port);
        assert_eq!(j["sensor"], "gw-test");
        assert!(j["cursor"].as_u64().unwrap() > 0);
        seen.insert(e.trail.clone());
    }
    assert_eq!(seen.len(), N as usize);

    // Maltrail: `<epoch> <line>\n`, the line as the sensor's --format maltrail.
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    let end = Instant::now() + Duration::from_secs(20);
    while got.len() < N as usize && Instant::now() < end {
        if let Ok(n) = maltrail.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    assert_eq!(got.len(), N as usize);
    for (d, e) in got.iter().zip(&events) {
        assert_eq!(d, &format!("{} {}\n", e.ts_us / 1_000_000, e.to_maltrail()));
    }

    // Files: ECS rotated and gzipped, EVE with DNS alerts only.
    wait_for("the file exporters", Duration::from_secs(20), || {
        let m = collector.http_get("/metrics", None).1;
        m.contains(&format!(
            "xtrail_export_sent_total{{exporter=\"ecs\",kind=\"file\"}} {N}"
        )) && m.contains("xtrail_export_sent_total{exporter=\"eve\",kind=\"file\"} 15")
    });
    let mut ecs_lines = Vec::new();
    let mut rotated = 0;
    for entry in std::fs::read_dir(out.join("files")).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("ecs.json.") {
            assert!(name.ends_with(".gz"), "{name}");
            rotated += 1;
            let mut text = String::new();
            flate2::read::GzDecoder::new(std::fs::File::open(&p).unwrap())
                .read_to_string(&mut text)
                .unwrap();
            ecs_lines.extend(text.lines().map(String::from));
        }
    }
    assert!(rotated >= 1, "rotation by size happened");
    ecs_lines.extend(lines(&ecs));
    assert_eq!(ecs_lines.len(), N as usize);
    for l in &ecs_lines {
        let j: serde_json::Value = serde_json::from_str(l).unwrap();
        let e = by_key[&(
            j["source"]["ip"].as_str().unwrap().to_string(),
            j["threat"]["indicator"]["name"]
                .as_str()
                .unwrap()
                .to_string(),
        )];
        assert_eq!(
            j["@timestamp"],
            xtrail_detect::event::format_rfc3339(e.ts_us)
        );
        assert_eq!(j["source"]["port"], e.src_port);
        assert_eq!(j["destination"]["ip"], e.dst_ip.to_string());
        assert_eq!(j["destination"]["port"], e.dst_port);
        assert_eq!(j["network"]["transport"], e.proto.to_ascii_lowercase());
        assert_eq!(j["observer"]["name"], "gw-test");
        assert_eq!(j["threat"]["indicator"]["description"], e.info.as_str());
        assert_eq!(j["event"]["severity"].to_string(), cef_severity(e.severity));
        if let Some(q) = &e.details.dns_query {
            assert_eq!(j["dns"]["question"]["name"], q.as_str());
        }
        if let Some(p) = &e.details.http_path {
            assert_eq!(j["url"]["original"], format!("http://evil.example{p}"));
            assert_eq!(j["url"]["domain"], "evil.example");
            assert_eq!(j["user_agent"]["original"], "curl/8.0");
        }
        if let Some(s) = &e.details.tls_sni {
            assert_eq!(j["tls"]["client"]["server_name"], s.as_str());
        }
    }
    let eve_lines = lines(&eve);
    assert_eq!(eve_lines.len(), 15);
    for l in &eve_lines {
        let j: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(j["event_type"], "alert");
        assert!(j["dns"]["query"][0]["rrname"]
            .as_str()
            .unwrap()
            .ends_with(".evil.example"));
    }
    let m = collector.http_get("/metrics", None).1;
    assert!(
        m.contains("xtrail_export_sent_total{exporter=\"udp3164\",kind=\"syslog\"} 20"),
        "{m}"
    );
    assert!(
        m.contains("xtrail_export_lag_cursors{exporter=\"tcp5424\",kind=\"syslog\"} 0"),
        "{m}"
    );
}

/// A TCP syslog receiver (RFC 6587 octet counting) collecting JSON bodies' (sensor_id, seq).
fn octet_counted_receiver(port: u16, got: Arc<Mutex<Vec<(String, u64)>>>) {
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind receiver");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let got = Arc::clone(&got);
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn);
                loop {
                    let mut len = Vec::new();
                    if r.read_until(b' ', &mut len).unwrap_or(0) == 0 {
                        return;
                    }
                    let n: usize = String::from_utf8_lossy(&len)
                        .trim()
                        .parse()
                        .expect("length");
                    let mut msg = vec![0u8; n];
                    if r.read_exact(&mut msg).is_err() {
                        return;
                    }
                    let msg = String::from_utf8(msg).unwrap();
                    let body = &msg[msg.find(" - {").expect("json body") + 3..];
                    let j: serde_json::Value = serde_json::from_str(body).unwrap();
                    got.lock().unwrap().push((
                        j["sensor_id"].as_str().unwrap().to_string(),
                        j["seq"].as_u64().unwrap(),
                    ));
                }
            });
        }
    });
}

fn metric(m: &str, series: &str) -> u64 {
    m.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {series} in\n{m}"))
}

#[test]
fn dead_target_does_not_slow_ingest_and_restart_resumes() {
    let dir = tempdir("export-dead");
    let port = free_port(); // nothing listens here yet
    let ecs = dir.path().join("ecs.json");
    let exporters = format!(
        r#"
[[exporter]]
kind = "syslog"
name = "siem"
target = "tcp://127.0.0.1:{port}"
format = "json"
start = "oldest"
[[exporter]]
kind = "file"
name = "ecs"
path = "{}"
"#,
        ecs.display()
    );
    let (mut collector, _data, spool) = start_exporting(dir.path(), "export-dead", &exporters);
    let grpc: SocketAddr = collector.grpc;

    // 10k events while the syslog target is down: ingest and the file exporter go on.
    let first: Vec<Event> = (0..10_000).map(sample).collect();
    let started = Instant::now();
    publish_all(&collector.url(), spool.path(), &first);
    let ingest_time = started.elapsed();
    assert_eq!(collector.stored_counts().0, 10_000);
    wait_for("the file exporter", Duration::from_secs(60), || {
        lines(&ecs).len() == 10_000
    });
    let m = collector.http_get("/metrics", None).1;
    assert!(export_metric(&m, "xtrail_export_failed_total", "siem", "syslog") >= 1);
    assert_eq!(export_metric(&m, "xtrail_export_up", "siem", "syslog"), 0);
    assert_eq!(
        export_metric(&m, "xtrail_export_sent_total", "siem", "syslog"),
        0
    );
    assert_eq!(
        export_metric(&m, "xtrail_export_lag_cursors", "siem", "syslog"),
        10_000
    );
    assert_eq!(
        export_metric(&m, "xtrail_export_lag_cursors", "ecs", "file"),
        0
    );
    eprintln!("10k events ingested in {ingest_time:?} with the syslog target down");

    // The receiver comes up: it gets everything.
    let got = Arc::new(Mutex::new(Vec::new()));
    octet_counted_receiver(port, Arc::clone(&got));
    let distinct = |got: &Mutex<Vec<(String, u64)>>| {
        got.lock()
            .unwrap()
            .iter()
            .cloned()
            .collect::<HashSet<_>>()
            .len()
    };
    wait_for(
        "the receiver to get 10k events",
        Duration::from_secs(90),
        || distinct(&got) == 10_000,
    );

    // SIGKILL the collector, publish 2k more while it is down, restart it: the exporter
    // resumes from its cursor; nothing is lost, duplicates at most one batch.
    collector.kill9();
    let second: Vec<Event> = (10_000..12_000).map(sample).collect();
    let url = format!("http://{grpc}");
    let publisher = {
        let mut cfg = PublisherConfig::new(url.clone(), SENSOR_TOKEN, "gw-test", spool.path());
        cfg.batch_max_events = 250;
        Publisher::start(cfg).unwrap()
    };
    for e in &second {
        publisher.publish(e).unwrap();
    }
    collector = start_again(&collector, dir.path());
    publisher
        .flush(Duration::from_secs(120))
        .expect("flush after restart");
    publisher.shutdown().unwrap();
    wait_for(
        "the receiver to get 12k events",
        Duration::from_secs(90),
        || distinct(&got) == 12_000,
    );
    std::thread::sleep(Duration::from_millis(500));
    let total = got.lock().unwrap().len();
    assert!(
        total - 12_000 <= xtrail_collector::export::DEFAULT_BATCH,
        "{} duplicates, more than one batch",
        total - 12_000
    );
    let m = collector.http_get("/metrics", None).1;
    assert_eq!(export_metric(&m, "xtrail_export_up", "siem", "syslog"), 1);
    assert_eq!(
        export_metric(&m, "xtrail_export_lag_cursors", "siem", "syslog"),
        0
    );
}

// ---------------------------------------------------------------------------------------
// Webhooks, TLS syslog, blocklist: receivers in the test process.

/// What a test HTTP receiver got: (path, JSON body) per request it answered 2xx; the next
/// `fail` requests get a 500 instead.
#[derive(Default)]
struct HookState {
    got: Mutex<Vec<(String, serde_json::Value)>>,
    fail: std::sync::atomic::AtomicU32,
    refused: std::sync::atomic::AtomicU32,
}

impl HookState {
    fn bodies(&self, path: &str) -> Vec<serde_json::Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p.starts_with(path))
            .map(|(_, b)| b.clone())
            .collect()
    }
}

/// A minimal HTTP/1.1 server (keep-alive, content-length bodies) over any stream.
async fn serve_http<S>(stream: S, state: Arc<HookState>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::io::BufReader::new(stream);
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if s.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let mut lines = head.lines();
        let request = lines.next().unwrap_or_default().to_string();
        let mut len = 0usize;
        let mut ctype = String::new();
        for l in lines {
            let (k, v) = l.split_once(':').unwrap();
            match k.to_ascii_lowercase().as_str() {
                "content-length" => len = v.trim().parse().unwrap(),
                "content-type" => ctype = v.trim().to_string(),
                _ => {}
            }
        }
        let mut body = vec![0u8; len];
        if s.read_exact(&mut body).await.is_err() {
            return;
        }
        assert!(request.starts_with("POST "), "{request}");
        assert_eq!(ctype, "application/json");
        let path = request.split(' ').nth(1).unwrap().to_string();
        let failing = state
            .fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let answer = if failing {
            state.refused.fetch_add(1, Ordering::SeqCst);
            "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\n\r\nbusy"
        } else {
            let j: serde_json::Value = serde_json::from_slice(&body).expect("JSON body");
            state.got.lock().unwrap().push((path, j));
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        };
        if s.get_mut().write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Runs `f` on a fresh two-thread tokio runtime in the background, for the test's life.
fn background<F: std::future::Future<Output = ()> + Send + 'static>(f: F) {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(f);
    });
}

/// A plain HTTP receiver on a free port.
fn http_receiver(state: Arc<HookState>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    background(async move {
        let l = tokio::net::TcpListener::from_std(l).unwrap();
        loop {
            let (c, _) = l.accept().await.unwrap();
            tokio::spawn(serve_http(c, Arc::clone(&state)));
        }
    });
    addr
}

fn tls_acceptor(dir: &Path) -> tokio_rustls::TlsAcceptor {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("c.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("k.pem")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

/// A TLS server on listener `l` handing each accepted stream to `serve`; counts failed
/// handshakes.
fn tls_listener<F, Fut>(
    l: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    handshake_failures: Arc<std::sync::atomic::AtomicU32>,
    serve: F,
) -> SocketAddr
where
    F: Fn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    background(async move {
        let l = tokio::net::TcpListener::from_std(l).unwrap();
        let serve = Arc::new(serve);
        loop {
            let (c, _) = l.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let failures = Arc::clone(&handshake_failures);
            let serve = Arc::clone(&serve);
            tokio::spawn(async move {
                match acceptor.accept(c).await {
                    Ok(s) => serve(s).await,
                    Err(_) => {
                        failures.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            });
        }
    });
    addr
}

/// Events for the webhook test: `sample(i)`, except that events 0..10 share one source
/// and one trail, a second apart, all high (a throttle of 60 s lets the first through).
fn webhook_events(n: u32, first: u32) -> Vec<Event> {
    (first..first + n)
        .map(|i| {
            let mut e = sample(i);
            if i < 10 {
                e.src_ip = "198.18.200.1".parse().unwrap();
                e.trail = "repeat.evil.example".into();
                e.severity = Severity::High;
                e.ts_us = 1_786_094_062_000_000 + i64::from(i) * 1_000_000;
            }
            e
        })
        .collect()
}

#[test]
fn webhook_bodies_floor_throttle_retries_and_restart() {
    use std::sync::atomic::Ordering;
    let state = Arc::new(HookState::default());
    state.fail.store(3, Ordering::SeqCst); // the first three POSTs get a 500
    let addr = http_receiver(Arc::clone(&state));
    let dir = tempdir("export-webhook");
    let exporters = format!(
        r#"
[[exporter]]
kind = "webhook"
name = "hook"
target = "http://{addr}/hook/s3cret?k=1"
start = "oldest"
min_severity = "medium"
throttle_seconds = 60
headers = {{ authorization = "Bearer hook-token" }}
batch = 7
[[exporter]]
kind = "webhook"
name = "chat"
target = "http://{addr}/chat"
start = "oldest"
filter = ["type=DNS"]
template = '{{"text": "{{trail}} {{info}} from {{src_ip}}", "severity": "{{severity}}", "port": {{src_port}}, "cursor": {{cursor}}}}'
"#
    );
    let (mut collector, _data, spool) = start_exporting(dir.path(), "export-webhook", &exporters);
    const N: u32 = 40;
    let events = webhook_events(N, 0);
    publish_all(&collector.url(), spool.path(), &events);

    // Expected: severity >= medium, and of the ten repeats only the first.
    let wanted: Vec<&Event> = events
        .iter()
        .enumerate()
        .filter(|(i, e)| e.severity != Severity::Low && (*i == 0 || *i >= 10))
        .map(|(_, e)| e)
        .collect();
    let dns: Vec<&Event> = events
        .iter()
        .filter(|e| e.kind == xtrail_detect::event::EventType::Dns)
        .collect();
    wait_for("the webhooks", Duration::from_secs(60), || {
        state.bodies("/hook/").len() >= wanted.len() && state.bodies("/chat").len() >= dns.len()
    });
    std::thread::sleep(Duration::from_millis(300));
    let hook = state.bodies("/hook/s3cret?k=1");
    assert_eq!(hook.len(), wanted.len(), "one POST per event, none twice");
    for (j, e) in hook.iter().zip(&wanted) {
        // The default body: the event as /api/events shows it, in cursor order.
        assert_eq!(j["src_ip"], e.src_ip.to_string());
        assert_eq!(j["trail"], e.trail.as_str());
        assert_eq!(j["info"], e.info.as_str());
        assert_eq!(j["dst_port"], e.dst_port);
        assert_eq!(j["sensor"], "gw-test");
        assert_ne!(j["severity"], "low");
    }
    let chat = state.bodies("/chat");
    assert_eq!(chat.len(), dns.len());
    for (j, e) in chat.iter().zip(&dns) {
        assert_eq!(
            j["text"],
            format!("{} {} from {}", e.trail, e.info, e.src_ip),
            "{j}"
        );
        assert_eq!(j["port"], e.src_port);
        assert!(j["cursor"].as_u64().unwrap() > 0);
    }
    assert_eq!(state.refused.load(Ordering::SeqCst), 3);
    let m = collector.http_get("/metrics", None).1;
    let hook_metric = |m: &str, name: &str| export_metric(m, name, "hook", "webhook");
    let failed = hook_metric(&m, "xtrail_export_failed_total")
        + export_metric(&m, "xtrail_export_failed_total", "chat", "webhook");
    assert_eq!(failed, 3, "{m}");
    assert!(hook_metric(&m, "xtrail_export_retries_total") >= 1);
    assert_eq!(hook_metric(&m, "xtrail_export_throttled_total"), 9);
    assert_eq!(hook_metric(&m, "xtrail_export_up"), 1);
    assert_eq!(hook_metric(&m, "xtrail_export_lag_cursors"), 0);

    // Restart (SIGKILL): the exporters resume after their cursors; only new events follow.
    let last_cursor = hook.last().unwrap()["cursor"].as_u64().unwrap();
    collector.kill9();
    collector = start_again(&collector, dir.path());
    let more = webhook_events(20, 100);
    publish_all(&collector.url(), spool.path(), &more);
    let more_wanted = more.iter().filter(|e| e.severity != Severity::Low).count();
    wait_for(
        "the webhooks after a restart",
        Duration::from_secs(60),
        || state.bodies("/hook/").len() >= wanted.len() + more_wanted,
    );
    std::thread::sleep(Duration::from_millis(300));
    let hook = state.bodies("/hook/");
    let again: Vec<_> = hook[wanted.len()..]
        .iter()
        .filter(|j| j["cursor"].as_u64().unwrap() <= last_cursor)
        .collect();
    assert!(
        again.len() <= 7,
        "more than one batch sent again: {again:?}"
    );
    let new: HashSet<String> = hook[wanted.len()..]
        .iter()
        .filter(|j| j["cursor"].as_u64().unwrap() > last_cursor)
        .map(|j| j["trail"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(new.len(), more_wanted);
    drop(collector);
}

#[test]
fn syslog_over_tls_verifies_the_ca_and_webhook_https() {
    use std::sync::atomic::{AtomicU32, Ordering};
    let certs = tempdir("export-tls-certs");
    if make_certs(certs.path()).is_none() {
        skip_unless_ci(
            "openssl is missing (CI=true)",
            "syslog_over_tls...: openssl could not make test certificates",
        );
        return;
    }
    if !require_root("syslog_over_tls_verifies_the_ca_and_webhook_https") {
        return;
    }
    // The syslog receiver listens in a network namespace; the webhook on loopback.
    let ns = Netns::create();
    let rip = ns.ns_ip;
    let acceptor = tls_acceptor(certs.path());
    // Syslog receiver: RFC 6587 octet-counted RFC 5424 messages over TLS.
    let messages = Arc::new(Mutex::new(Vec::<String>::new()));
    let syslog_failures = Arc::new(AtomicU32::new(0));
    let syslog_addr = {
        let messages = Arc::clone(&messages);
        let l = ns.tcp_listener(0);
        tls_listener(
            l,
            acceptor.clone(),
            Arc::clone(&syslog_failures),
            move |s| {
                let messages = Arc::clone(&messages);
                async move {
                    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _};
                    let mut r = tokio::io::BufReader::new(s);
                    loop {
                        let mut len = Vec::new();
                        if r.read_until(b' ', &mut len).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let n: usize = String::from_utf8_lossy(&len)
                            .trim()
                            .parse()
                            .expect("length");
                        let mut msg = vec![0u8; n];
                        if r.read_exact(&mut msg).await.is_err() {
                            return;
                        }
                        messages
                            .lock()
                            .unwrap()
                            .push(String::from_utf8(msg).unwrap());
                    }
                }
            },
        )
    };
    // HTTPS webhook receiver with the same certificate.
    let hooks = Arc::new(HookState::default());
    let https_failures = Arc::new(AtomicU32::new(0));
    let https_addr = {
        let hooks = Arc::clone(&hooks);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        tls_listener(l, acceptor, Arc::clone(&https_failures), move |s| {
            serve_http(s, Arc::clone(&hooks))
        })
    };
    let ca = certs.path().join("ca.pem");
    let other = certs.path().join("other-ca.pem");
    let (sp, hp) = (syslog_addr.port(), https_addr.port());
    let dir = tempdir("export-tls");
    let exporters = format!(
        r#"
[[exporter]]
kind = "syslog"
name = "tls-good"
target = "tls://{rip}:{sp}"
tls_ca = "{ca}"
tls_server_name = "localhost"
format = "json"
hostname = "xtrail-test"
start = "oldest"
[[exporter]]
kind = "syslog"
name = "tls-wrong-ca"
target = "tls://{rip}:{sp}"
tls_ca = "{other}"
tls_server_name = "localhost"
start = "oldest"
[[exporter]]
kind = "webhook"
name = "https-good"
target = "https://localhost:{hp}/good"
tls_ca = "{ca}"
start = "oldest"
[[exporter]]
kind = "webhook"
name = "https-default-roots"
target = "https://localhost:{hp}/default"
start = "oldest"
[[exporter]]
kind = "webhook"
name = "https-insecure"
target = "https://localhost:{hp}/insecure"
insecure_skip_verify = true
start = "oldest"
"#,
        ca = ca.display(),
        other = other.display()
    );
    let (collector, _data, spool) = start_exporting(dir.path(), "export-tls", &exporters);
    const N: u32 = 25;
    let events: Vec<Event> = (0..N).map(sample).collect();
    publish_all(&collector.url(), spool.path(), &events);
    wait_for("the TLS receivers", Duration::from_secs(60), || {
        messages.lock().unwrap().len() >= N as usize
            && hooks.bodies("/good").len() >= N as usize
            && hooks.bodies("/insecure").len() >= N as usize
    });
    // Every message an RFC 5424 header and the event as JSON.
    let got = messages.lock().unwrap().clone();
    assert_eq!(got.len(), N as usize);
    let mut seen = HashSet::new();
    for m in &got {
        assert!(m.starts_with('<') && m.contains(">1 "), "{m}");
        // <PRI>1 TIMESTAMP HOSTNAME APP-NAME - MSGID - MSG
        let f: Vec<&str> = m.splitn(8, ' ').collect();
        assert_eq!(f[2], "xtrail-test");
        assert_eq!(f[3], "xtrail");
        assert_eq!((f[4], f[6]), ("-", "-"));
        let j: serde_json::Value = serde_json::from_str(f[7]).expect(m);
        let e = &events[j["trail"]
            .as_str()
            .unwrap()
            .trim_start_matches("trail-")
            .trim_end_matches(".evil.example")
            .parse::<usize>()
            .unwrap()];
        assert_eq!(f[1], xtrail_detect::event::format_rfc3339(e.ts_us));
        assert_eq!(f[5], e.kind.as_str());
        seen.insert(j["seq"].as_u64().unwrap());
    }
    assert_eq!(seen.len(), N as usize);
    // The wrong CA and the default roots refuse the test certificate: nothing sent.
    wait_for(
        "the refused exporters to fail",
        Duration::from_secs(30),
        || {
            let m = collector.http_get("/metrics", None).1;
            export_metric(&m, "xtrail_export_failed_total", "tls-wrong-ca", "syslog") >= 2
                && export_metric(
                    &m,
                    "xtrail_export_failed_total",
                    "https-default-roots",
                    "webhook",
                ) >= 2
        },
    );
    let m = collector.http_get("/metrics", None).1;
    for (name, kind, up, sent) in [
        ("tls-good", "syslog", 1, u64::from(N)),
        ("tls-wrong-ca", "syslog", 0, 0),
        ("https-good", "webhook", 1, u64::from(N)),
        ("https-default-roots", "webhook", 0, 0),
        ("https-insecure", "webhook", 1, u64::from(N)),
    ] {
        assert_eq!(
            export_metric(&m, "xtrail_export_up", name, kind),
            up,
            "{name}"
        );
        assert_eq!(
            export_metric(&m, "xtrail_export_sent_total", name, kind),
            sent,
            "{name}"
        );
    }
    assert!(hooks.bodies("/default").is_empty());
    assert!(syslog_failures.load(Ordering::SeqCst) >= 2);
    assert!(https_failures.load(Ordering::SeqCst) >= 2);
}

#[test]
fn blocklist_lists_recent_sources_by_filter() {
    let data = tempdir("blocklist-data");
    let spool = tempdir("blocklist-spool");
    let collector = Collector::start(data.path(), None, &[]);
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros(),
    )
    .unwrap();
    let min = 60_000_000i64;
    let ev = |i: u32, src: &str, minutes_ago: i64, sev: Severity| {
        let mut e = sample(i);
        e.src_ip = src.parse().unwrap();
        e.ts_us = now - minutes_ago * min;
        e.severity = sev;
        e
    };
    let events = vec![
        ev(0, "198.18.0.1", 5, Severity::High),    // DNS, now
        ev(1, "198.18.0.2", 10, Severity::High),   // HTTP, now
        ev(4, "198.18.0.3", 90, Severity::High),   // DNS, previous hour: cleared
        ev(8, "2001:db8::1", 20, Severity::Low),   // DNS, now, low
        ev(12, "198.18.0.4", 300, Severity::High), // DNS, 5 h ago
        ev(16, "198.18.0.1", 100, Severity::High), // DNS, previous hour, still listed
    ];
    publish_all(&collector.url(), spool.path(), &events);
    let get = |q: &str| collector.http_get(&format!("/api/blocklist{q}"), Some(SUB_TOKEN));
    let (status, body) = get("");
    assert_eq!(status, 200, "{body}");
    let listed = |body: &str| -> Vec<String> {
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .map(String::from)
            .collect()
    };
    let cleared = |body: &str| -> Vec<String> {
        body.lines()
            .filter_map(|l| l.strip_prefix("# cleared "))
            .map(String::from)
            .collect()
    };
    assert!(
        body.starts_with("# xtrail blocklist minutes=60 since="),
        "{body}"
    );
    assert_eq!(
        listed(&body),
        ["198.18.0.1", "198.18.0.2", "2001:db8::1"],
        "{body}"
    );
    assert_eq!(cleared(&body), ["198.18.0.3"], "{body}");
    let (_, body) = get("?type=DNS&min_severity=high");
    assert_eq!(listed(&body), ["198.18.0.1"], "{body}");
    assert_eq!(cleared(&body), ["198.18.0.3"], "{body}");
    let (_, body) = get("?minutes=360&src=198.18.0.0/24");
    assert_eq!(
        listed(&body),
        ["198.18.0.1", "198.18.0.2", "198.18.0.3", "198.18.0.4"],
        "{body}"
    );
    assert!(cleared(&body).is_empty());
    assert_eq!(get("?minutes=20000").0, 400);
    assert_eq!(get("?colour=red").0, 400);
    assert_eq!(collector.http_get("/api/blocklist", None).0, 401);
    assert_eq!(collector.http_get("/api/blocklist", Some("wrong")).0, 401);
}

// ---------------------------------------------------------------------------------------
// Receivers down for 30 s in the middle of a stream.

/// An HTTPS webhook receiver on `port` that can be stopped (listener and open connections
/// closed) and started again on the same port.
struct StoppableHttps {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StoppableHttps {
    fn start(acceptor: tokio_rustls::TlsAcceptor, port: u16, state: Arc<HookState>) -> Self {
        let l = TcpListener::bind(("127.0.0.1", port)).expect("bind the HTTPS port again");
        l.set_nonblocking(true).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(l).unwrap();
                let accept = async {
                    loop {
                        let Ok((c, _)) = l.accept().await else {
                            continue;
                        };
                        let (acceptor, state) = (acceptor.clone(), Arc::clone(&state));
                        tokio::spawn(async move {
                            if let Ok(s) = acceptor.accept(c).await {
                                serve_http(s, state).await;
                            }
                        });
                    }
                };
                tokio::select! {
                    () = accept => {}
                    _ = rx => {}
                }
            });
            // Dropping the runtime aborts the connection tasks: their sockets close.
            rt.shutdown_timeout(Duration::from_secs(1));
        });
        StoppableHttps {
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for StoppableHttps {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes rsyslog configuration `text` to `conf`, checked by `rsyslogd -N1`.
fn write_rsyslog_conf(rsyslogd: &Path, conf: &Path, text: &str) {
    std::fs::write(conf, text).unwrap();
    let check = Command::new(rsyslogd)
        .args(["-N1", "-f"])
        .arg(conf)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "rsyslog config: {}",
        String::from_utf8_lossy(&check.stderr)
    );
}

/// rsyslogd with `conf` in namespace `ns`, up once `ports` accept connections there.
fn start_rsyslog(ns: &Netns, rsyslogd: &Path, conf: &Path, pid: &Path, ports: &[u16]) -> Rsyslog {
    let r = Rsyslog(
        ns.command(rsyslogd)
            .args(["-n", "-f"])
            .arg(conf)
            .arg("-i")
            .arg(pid)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start rsyslogd"),
    );
    wait_for("rsyslog's ports", Duration::from_secs(20), || {
        ports
            .iter()
            .all(|p| TcpStream::connect((ns.ns_ip, *p)).is_ok())
    });
    r
}

/// SIGTERM (rsyslog writes out what it has read), then reap.
fn stop_rsyslog(mut r: Rsyslog) {
    let pid = libc::pid_t::try_from(r.0.id()).unwrap();
    // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let _ = r.0.wait();
}

/// rsyslog over TCP and over TLS (GnuTLS driver) receiving CEF, and an HTTPS webhook, all
/// stopped for 30 s in the middle of a stream of events: events published before, during
/// and after the outage all arrive, every CEF field checked, duplicates at most one batch
/// per exporter.
///
/// The receivers are stopped when they have taken everything sent so far (rsyslog with
/// SIGTERM, as a service stop does). Syslog over TCP has no application acknowledgement:
/// bytes a receiver's kernel acknowledged but the receiver never read (a crash) cannot be
/// known lost by any sender; that case is not claimed.
#[test]
fn receivers_down_for_30s_mid_stream_lose_nothing() {
    let Some(rsyslogd) = rsyslogd() else {
        skip_unless_ci(
            "rsyslogd is missing (CI=true): run `cargo xtask deps`",
            "receivers_down...: rsyslogd not installed (apt-get install rsyslog)",
        );
        return;
    };
    let gtls = ["/usr/lib/x86_64-linux-gnu/rsyslog", "/usr/lib/rsyslog"]
        .iter()
        .any(|d| Path::new(d).join("lmnsd_gtls.so").exists());
    let dir = tempdir("export-outage");
    let out = dir.path();
    if !gtls || make_certs(out).is_none() {
        skip_unless_ci(
            "rsyslog-gnutls or openssl is missing (CI=true): run `cargo xtask deps`",
            "receivers_down...: rsyslog-gnutls or openssl missing",
        );
        return;
    }
    if !require_root("receivers_down_for_30s_mid_stream_lose_nothing") {
        return;
    }
    let ns = Netns::create();
    let rip = ns.ns_ip;
    let (tcp, tls, https) = (free_port(), free_port(), free_port());
    let conf = out.join("rsyslog.conf");
    let text = format!(
        "global(workDirectory=\"{d}\" maxMessageSize=\"64k\" \
           defaultNetstreamDriverCAFile=\"{d}/ca.pem\" \
           defaultNetstreamDriverCertFile=\"{d}/c.pem\" \
           defaultNetstreamDriverKeyFile=\"{d}/k.pem\")\n\
         module(load=\"imtcp\")\n\
         template(name=\"fields\" type=\"list\") {{ property(name=\"pri\") constant(value=\"\\t\") property(name=\"hostname\") constant(value=\"\\t\") property(name=\"app-name\") constant(value=\"\\t\") property(name=\"msgid\") constant(value=\"\\t\") property(name=\"timereported\" dateFormat=\"rfc3339\") constant(value=\"\\t\") property(name=\"msg\") constant(value=\"\\n\") }}\n\
         ruleset(name=\"tcp\") {{ action(type=\"omfile\" file=\"{d}/tcp.log\" template=\"fields\") }}\n\
         ruleset(name=\"tls\") {{ action(type=\"omfile\" file=\"{d}/tls.log\" template=\"fields\") }}\n\
         input(type=\"imtcp\" address=\"{rip}\" port=\"{tcp}\" ruleset=\"tcp\")\n\
         input(type=\"imtcp\" address=\"{rip}\" port=\"{tls}\" ruleset=\"tls\" \
           streamDriver.name=\"gtls\" streamDriver.mode=\"1\" streamDriver.authMode=\"anon\")\n",
        d = out.display()
    );
    write_rsyslog_conf(&rsyslogd, &conf, &text);
    let pid = out.join("rsyslogd.pid");
    let rsyslog = start_rsyslog(&ns, &rsyslogd, &conf, &pid, &[tcp, tls]);
    let acceptor = tls_acceptor(out);
    let hooks = Arc::new(HookState::default());
    let mut receiver = StoppableHttps::start(acceptor.clone(), https, Arc::clone(&hooks));

    let exporters = format!(
        r#"
[[exporter]]
kind = "syslog"
name = "tcp"
target = "tcp://{rip}:{tcp}"
hostname = "xtrail-test"
start = "oldest"
[[exporter]]
kind = "syslog"
name = "tls"
target = "tls://{rip}:{tls}"
tls_ca = "{ca}"
tls_server_name = "localhost"
hostname = "xtrail-test"
start = "oldest"
[[exporter]]
kind = "webhook"
name = "https"
target = "https://localhost:{https}/hook"
tls_ca = "{ca}"
start = "oldest"
"#,
        ca = out.join("ca.pem").display()
    );
    let (collector, _data, spool) = start_exporting(out, "export-outage", &exporters);
    const N: u32 = 300;
    let events = syslog_events(N);
    let by_trail: HashMap<&str, &Event> = events.iter().map(|e| (e.trail.as_str(), e)).collect();
    let mut cfg = PublisherConfig::new(collector.url(), SENSOR_TOKEN, "gw-test", spool.path());
    cfg.batch_max_events = 50;
    let publisher = Publisher::start(cfg).unwrap();
    let publish = |range: std::ops::Range<u32>| {
        for i in range {
            publisher.publish(&events[i as usize]).unwrap();
        }
        publisher.flush(Duration::from_secs(60)).expect("flush");
    };
    let log = |n: &str| out.join(format!("{n}.log"));
    let cef_of = |l: &str| {
        l.splitn(6, '\t')
            .nth(5)
            .unwrap_or_default()
            .trim_start()
            .to_string()
    };
    let distinct = |name: &str| -> HashSet<String> {
        lines(&log(name))
            .iter()
            .map(|l| parse_cef(&cef_of(l)).1["trail"].clone())
            .collect()
    };
    let hook_trails = || -> HashSet<String> {
        hooks
            .bodies("/hook")
            .iter()
            .map(|j| j["trail"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let all_have = |n: usize| {
        distinct("tcp").len() >= n && distinct("tls").len() >= n && hook_trails().len() >= n
    };

    // Before: 100 events reach all three receivers.
    publish(0..100);
    wait_for("the first 100 events", Duration::from_secs(60), || {
        all_have(100)
    });

    // The receivers stop; 150 events arrive over the next 30 s while they are down.
    stop_rsyslog(rsyslog);
    receiver.stop();
    let down = Instant::now();
    for chunk in 0..10u32 {
        publish(100 + chunk * 15..100 + (chunk + 1) * 15);
        std::thread::sleep(Duration::from_secs(3));
    }
    let m = collector.http_get("/metrics", None).1;
    for (name, kind) in [("tcp", "syslog"), ("tls", "syslog"), ("https", "webhook")] {
        assert_eq!(
            export_metric(&m, "xtrail_export_up", name, kind),
            0,
            "{name}\n{m}"
        );
        assert!(
            export_metric(&m, "xtrail_export_lag_cursors", name, kind) > 0,
            "{name}"
        );
    }
    assert!(distinct("tcp").len() == 100 && hook_trails().len() == 100);
    let outage = down.elapsed();
    assert!(outage >= Duration::from_secs(30), "{outage:?}");

    // After: the receivers return on the same ports; 50 more events; everything arrives.
    let rsyslog = start_rsyslog(&ns, &rsyslogd, &conf, &pid, &[tcp, tls]);
    let _receiver = StoppableHttps::start(acceptor, https, Arc::clone(&hooks));
    publish(250..N);
    wait_for(
        "every event after the outage",
        Duration::from_secs(120),
        || all_have(N as usize),
    );
    std::thread::sleep(Duration::from_millis(500));
    drop(publisher);
    for name in ["tcp", "tls"] {
        let got = lines(&log(name));
        let mut seen = HashSet::new();
        for l in &got {
            let f: Vec<&str> = l.splitn(6, '\t').collect();
            let cef = cef_of(l);
            let (_, x) = parse_cef(&cef);
            let e = by_trail[x["trail"].as_str()];
            check_cef(&cef, e);
            assert_eq!(
                f[0],
                (16 * 8 + syslog_severity(e.severity)).to_string(),
                "{l}"
            );
            assert_eq!(
                (f[1], f[2], f[3]),
                ("xtrail-test", "xtrail", e.kind.as_str())
            );
            assert_eq!(f[4], xtrail_detect::event::format_rfc3339(e.ts_us), "{l}");
            seen.insert(e.trail.clone());
        }
        assert_eq!(seen.len(), N as usize, "{name}: every event");
        assert!(
            got.len() - seen.len() <= xtrail_collector::export::DEFAULT_BATCH,
            "{name}: {} duplicates, more than one batch",
            got.len() - seen.len()
        );
    }
    let bodies = hooks.bodies("/hook");
    for j in &bodies {
        let e = by_trail[j["trail"].as_str().unwrap()];
        assert_eq!(j["src_ip"], e.src_ip.to_string());
        assert_eq!(j["info"], e.info.as_str());
    }
    assert_eq!(hook_trails().len(), N as usize);
    assert!(bodies.len() - N as usize <= xtrail_collector::export::DEFAULT_BATCH);
    let m = collector.http_get("/metrics", None).1;
    for (name, kind) in [("tcp", "syslog"), ("tls", "syslog"), ("https", "webhook")] {
        assert_eq!(
            export_metric(&m, "xtrail_export_up", name, kind),
            1,
            "{name}"
        );
        assert_eq!(
            export_metric(&m, "xtrail_export_lag_cursors", name, kind),
            0,
            "{name}"
        );
        assert!(
            export_metric(&m, "xtrail_export_failed_total", name, kind) >= 1,
            "{name}"
        );
    }
    drop(rsyslog);
}
