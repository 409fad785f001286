//! Exporters against real receivers: the collector (real process) fed by the stock
//! publisher, exporting to a real rsyslog (RFC 5424 and 3164, UDP and TCP, CEF and JSON
//! bodies, checked field by field), a Maltrail-style UDP listener, ECS/EVE files; and a
//! dead TCP target that neither slows ingest nor loses events, across a collector restart.
//!
//! rsyslog: skipped with a message when `rsyslogd` is missing, unless `CI=true` (then the
//! test fails; `cargo xtask deps` installs it).

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead as _, BufReader, Read as _};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{sample, tempdir, Collector, SENSOR_TOKEN};
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
    std::fs::read_to_string(path)
        .map(|t| t.lines().map(String::from).collect())
        .unwrap_or_default()
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
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "rsyslogd is missing (CI=true): run `cargo xtask deps`"
        );
        eprintln!("SKIP syslog_to_rsyslog...: rsyslogd not installed (apt-get install rsyslog)");
        return;
    };
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
             input(type=\"{kind}\" address=\"127.0.0.1\" port=\"{port}\" ruleset=\"{name}\")\n",
            out.join(format!("{name}.log")).display()
        ));
    }
    std::fs::write(&conf, c).unwrap();
    let check = Command::new(&rsyslogd)
        .args(["-N1", "-f"])
        .arg(&conf)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "rsyslog config: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let _rsyslog = Rsyslog(
        Command::new(&rsyslogd)
            .arg("-n")
            .arg("-f")
            .arg(&conf)
            .arg("-i")
            .arg(out.join("rsyslogd.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start rsyslogd"),
    );
    wait_for("rsyslog's TCP ports", Duration::from_secs(20), || {
        TcpStream::connect(("127.0.0.1", tcp5424)).is_ok()
            && TcpStream::connect(("127.0.0.1", tcp3164)).is_ok()
    });
    std::thread::sleep(Duration::from_millis(300));

    // A Maltrail server's UDP collector, played by a socket.
    let maltrail = UdpSocket::bind("127.0.0.1:0").unwrap();
    maltrail
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let maltrail_addr = maltrail.local_addr().unwrap();

    let config = out.join("collector.toml");
    let ecs = out.join("files/ecs.json");
    let eve = out.join("files/eve.json");
    std::fs::write(
        &config,
        format!(
            r#"
[[exporter]]
kind = "syslog"
name = "udp5424"
target = "udp://127.0.0.1:{udp5424}"
hostname = "xtrail-test"
start = "oldest"
[[exporter]]
kind = "syslog"
name = "tcp5424"
target = "tcp://127.0.0.1:{tcp5424}"
hostname = "xtrail-test"
[[exporter]]
kind = "syslog"
name = "udp3164"
target = "udp://127.0.0.1:{udp3164}"
protocol = "rfc3164"
hostname = "xtrail-test"
filter = ["min_severity=high"]
[[exporter]]
kind = "syslog"
name = "tcp3164json"
target = "tcp://127.0.0.1:{tcp3164}"
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
        ),
    )
    .unwrap();
    let data = tempdir("export-data");
    let spool = tempdir("export-spool");
    let collector = Collector::start(data.path(), None, &["--config", config.to_str().unwrap()]);
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
    let config = dir.path().join("collector.toml");
    std::fs::write(
        &config,
        format!(
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
        ),
    )
    .unwrap();
    let data = tempdir("export-dead-data");
    let spool = tempdir("export-dead-spool");
    let args = ["--config", config.to_str().unwrap()];
    let mut collector = Collector::start(data.path(), None, &args);
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
    assert!(
        metric(
            &m,
            "xtrail_export_failed_total{exporter=\"siem\",kind=\"syslog\"}"
        ) >= 1
    );
    assert_eq!(
        metric(&m, "xtrail_export_up{exporter=\"siem\",kind=\"syslog\"}"),
        0
    );
    assert_eq!(
        metric(
            &m,
            "xtrail_export_sent_total{exporter=\"siem\",kind=\"syslog\"}"
        ),
        0
    );
    assert_eq!(
        metric(
            &m,
            "xtrail_export_lag_cursors{exporter=\"siem\",kind=\"syslog\"}"
        ),
        10_000
    );
    assert_eq!(
        metric(
            &m,
            "xtrail_export_lag_cursors{exporter=\"ecs\",kind=\"file\"}"
        ),
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
    collector = Collector::start(data.path(), Some(grpc), &args);
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
    assert_eq!(
        metric(&m, "xtrail_export_up{exporter=\"siem\",kind=\"syslog\"}"),
        1
    );
    assert_eq!(
        metric(
            &m,
            "xtrail_export_lag_cursors{exporter=\"siem\",kind=\"syslog\"}"
        ),
        0
    );
}
