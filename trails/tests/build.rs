//! Drives the real `xtrail-trails` binary against feeds served by a loopback HTTP server
//! started here: every feed format, every refusal (HTML error page, empty, truncated, 200 MB
//! streamed and announced, wrong encoding, binary), conditional GET with a 304, the previous
//! cached copy kept for a feed that turns bad, fail-closed builds, signatures, indicator files.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use xtrail_detect::trails::CompiledSet;

/// What the server saw and how the `flip` feed answers.
#[derive(Default)]
struct State {
    /// `If-None-Match` values received, by path.
    conditional: Mutex<Vec<(String, String)>>,
    /// The `flip` feed serves an HTML error page once set.
    flip_bad: AtomicBool,
    /// Requests served.
    requests: AtomicUsize,
}

const IPS: &str = "# attackers\n45.67.89.10\n45.67.89.11 # note\n91.200.12.7\n";
const DOMAINS: &str = "# domains\nbad-domain.example.com\nwww.other-bad.example.net\n";
const URLS: &str = "http://url-feed.example.org/gate.php\nhttps://url-feed.example.org/x/y/\n";
const CSV: &str =
    "# first_seen,ip,port\n2024-01-01,77.88.99.100,443\n2024-01-02,\"77.88.99.101\",80\n";
const REGEX_PAGE: &str = "<html><body><table><tr><td>88.77.66.55</td></tr><tr><td>88.77.66.56</td></tr></table></body></html>";
const FLIP: &str = "flip-marker\n61.62.63.64\n";

fn respond(mut s: TcpStream, state: &State) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let mut line = String::new();
    if r.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    state.requests.fetch_add(1, Ordering::Relaxed);
    if let Some(v) = headers.get("if-none-match") {
        state
            .conditional
            .lock()
            .unwrap()
            .push((path.clone(), v.clone()));
    }
    let ok = |s: &mut TcpStream, body: &[u8], extra: &str| {
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
            body.len()
        );
        let _ = s.write_all(body);
    };
    match path.as_str() {
        "/ips.txt" => {
            if headers.get("if-none-match").map(String::as_str) == Some("\"ips-v1\"") {
                let _ = write!(s, "HTTP/1.1 304 Not Modified\r\nETag: \"ips-v1\"\r\nConnection: close\r\n\r\n");
            } else {
                ok(&mut s, IPS.as_bytes(), "ETag: \"ips-v1\"\r\n");
            }
        }
        "/domains.txt" => ok(&mut s, DOMAINS.as_bytes(), "Last-Modified: Mon, 01 Jan 2024 00:00:00 GMT\r\n"),
        "/urls.txt" => ok(&mut s, URLS.as_bytes(), ""),
        "/feed.csv" => ok(&mut s, CSV.as_bytes(), ""),
        "/page.html" => ok(&mut s, REGEX_PAGE.as_bytes(), ""),
        "/redirect" => {
            let _ = write!(s, "HTTP/1.1 302 Found\r\nLocation: /ips.txt\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
        "/flip.txt" => {
            if state.flip_bad.load(Ordering::Relaxed) {
                ok(&mut s, b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>", "");
            } else {
                ok(&mut s, FLIP.as_bytes(), "");
            }
        }
        "/html" => ok(&mut s, b"<!DOCTYPE html>\n<html><head><title>Error</title></head><body>Service unavailable</body></html>", ""),
        "/empty" => ok(&mut s, b"", ""),
        "/truncated" => {
            let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n45.67.89.20\n45.67.8");
        }
        "/huge-announced" => {
            // Announces 200 MB; the client must refuse before reading it.
            let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: 209715200\r\nConnection: close\r\n\r\n");
            let chunk = "45.67.89.30\n".repeat(1000);
            for _ in 0..64 {
                if s.write_all(chunk.as_bytes()).is_err() {
                    break;
                }
            }
        }
        "/huge-streamed" => {
            // 200 MB chunked, generated on the fly (never stored); the client stops at its bound.
            let _ = write!(s, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
            let chunk = "45.67.89.31\n".repeat(8738); // ~104 KB
            let mut sent = 0usize;
            while sent < 200 << 20 {
                if write!(s, "{:x}\r\n{chunk}\r\n", chunk.len()).is_err() {
                    break;
                }
                sent += chunk.len();
            }
            let _ = write!(s, "0\r\n\r\n");
        }
        "/latin1" => ok(&mut s, b"45.67.89.40\ncaf\xe9.example\n", ""),
        "/binary" => ok(&mut s, b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03", ""),
        "/error500" => {
            let _ = write!(s, "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
        _ => {
            let _ = write!(s, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    }
    let _ = s.flush();
    // Drain what the client still sends so the close is orderly.
    let mut sink = [0u8; 64];
    let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
    let _ = s.read(&mut sink);
}

fn serve() -> (String, Arc<State>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(State::default());
    let st = Arc::clone(&state);
    thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let st = Arc::clone(&st);
            thread::spawn(move || respond(s, &st));
        }
    });
    (format!("http://{addr}"), state)
}

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("xtrail-trails-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.0.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn bin(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_xtrail-trails"))
        .args(args)
        .output()
        .expect("run xtrail-trails");
    eprintln!(
        "$ xtrail-trails {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn feed(name: &str, base: &str, path: &str, format: &str, marker: &str, extra: &str) -> String {
    format!(
        "[[feed]]\nname = \"{name}\"\nurl = \"{base}{path}\"\nformat = \"{format}\"\ninfo = \"known attacker\"\nreference = \"{name}.example\"\nmarker = \"{marker}\"\n{extra}\n"
    )
}

fn info(set: &CompiledSet, trail: &str) -> Option<(String, String)> {
    let t = set.trails();
    let id = if let Ok(a) = trail.parse::<IpAddr>() {
        t.ip.lookup(a, None).map(|m| m.label)
    } else if trail.contains('/') {
        t.urls.contains(trail)
    } else {
        t.domains.contains(trail)
    }?;
    let l = t.label(id);
    Some((l.info.clone(), l.reference.clone()))
}

#[test]
fn feeds_formats_failures_cache_and_status() {
    let (base, state) = serve();
    let d = Dir::new("feeds");
    let mut defs = String::new();
    defs += &feed("ips", &base, "/ips.txt", "ip", ".1", "");
    defs += &feed("domains", &base, "/domains.txt", "domain", "", "");
    defs += &feed("urls", &base, "/urls.txt", "url", "http", "");
    defs += &feed(
        "csvfeed",
        &base,
        "/feed.csv",
        "csv",
        "first_seen",
        "column = 1",
    );
    defs += &feed(
        "page",
        &base,
        "/page.html",
        "regex",
        "<table>",
        "regex = '<td>([0-9.]+)</td>'",
    );
    defs += &feed("redirected", &base, "/redirect", "ip", ".1", "");
    defs += &feed("flip", &base, "/flip.txt", "ip", "flip-marker", "");
    defs += &feed("html", &base, "/html", "ip", "", "");
    defs += &feed("empty", &base, "/empty", "ip", "", "");
    defs += &feed("truncated", &base, "/truncated", "ip", "", "");
    defs += &feed("huge_announced", &base, "/huge-announced", "ip", "", "");
    defs += &feed("huge_streamed", &base, "/huge-streamed", "ip", "", "");
    defs += &feed("latin1", &base, "/latin1", "ip", "", "");
    defs += &feed("binary", &base, "/binary", "ip", "", "");
    defs += &feed("error500", &base, "/error500", "ip", "", "");
    defs += &feed("wrongmarker", &base, "/ips.txt", "ip", "not-in-there", "");
    defs += &feed("off", &base, "/ips.txt", "ip", "", "enabled = false");
    let defs = d.write("feeds.toml", &defs);
    let (out, cache) = (d.path("set.xtrails"), d.path("cache"));
    let build = |extra: &[&str]| {
        let mut a = vec![
            "build",
            "--out",
            s(&out),
            "--feeds",
            s(&defs),
            "--cache",
            s(&cache),
            "--ip-minimum-feeds",
            "1",
            "--retries",
            "1",
            "--backoff-ms",
            "10",
            "--max-feed-bytes",
            "8388608",
            "--fetch-timeout",
            "20",
        ];
        a.extend_from_slice(extra);
        bin(&a)
    };

    let o = build(&[]);
    assert!(o.status.success());
    let set = CompiledSet::open(&out, None).unwrap();
    for t in [
        "45.67.89.10",
        "91.200.12.7",
        "bad-domain.example.com",
        "other-bad.example.net",
        "url-feed.example.org/gate.php",
        "url-feed.example.org/x/y",
        "77.88.99.101",
        "88.77.66.56",
        "61.62.63.64",
    ] {
        assert!(info(&set, t).is_some(), "{t} missing");
    }
    // Listed by `ips`, `redirected` (and not by the disabled `off`): one key, two references.
    assert_eq!(
        info(&set, "45.67.89.10").unwrap().1,
        "ips.example (+redirected.example)"
    );
    for t in ["45.67.89.20", "45.67.89.30", "45.67.89.31", "45.67.89.40"] {
        assert!(info(&set, t).is_none(), "{t} from a refused feed");
    }
    drop(set);

    let st = bin(&["status", "--cache", s(&cache)]);
    let text = String::from_utf8_lossy(&st.stdout).into_owned();
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} in status"))
            .to_owned()
    };
    assert!(line("ips").contains(" ok "), "{}", line("ips"));
    assert!(line("html").contains("refused") && line("html").contains("HTML page"));
    assert!(line("empty").contains("refused") && line("empty").contains("empty body"));
    assert!(line("truncated").contains("failed") && line("truncated").contains("truncated"));
    assert!(
        line("huge_announced").contains("failed") && line("huge_announced").contains("size bound")
    );
    assert!(
        line("huge_streamed").contains("failed") && line("huge_streamed").contains("size bound")
    );
    assert!(line("latin1").contains("refused") && line("latin1").contains("wrong encoding"));
    assert!(line("binary").contains("refused") && line("binary").contains("binary"));
    assert!(line("error500").contains("failed") && line("error500").contains("HTTP 500"));
    assert!(line("wrongmarker").contains("refused") && line("wrongmarker").contains("marker"));
    assert!(!text.contains("\noff "), "disabled feed fetched");

    // Second run: a 304 for the ETag; the flip feed now serves an error page and its cached
    // copy is used.
    state.flip_bad.store(true, Ordering::Relaxed);
    let o = build(&[]);
    assert!(o.status.success());
    let cond = state.conditional.lock().unwrap().clone();
    assert!(
        cond.iter()
            .any(|(p, v)| p == "/ips.txt" && v == "\"ips-v1\""),
        "{cond:?}"
    );
    let st = bin(&["status", "--cache", s(&cache)]);
    let text = String::from_utf8_lossy(&st.stdout).into_owned();
    let ips = text.lines().find(|l| l.starts_with("ips ")).unwrap();
    assert!(ips.contains("not_modified") && ips.contains(" 3 "), "{ips}");
    let flip = text.lines().find(|l| l.starts_with("flip ")).unwrap();
    assert!(
        flip.contains("refused") && flip.contains("using cached copy"),
        "{flip}"
    );
    let set = CompiledSet::open(&out, None).unwrap();
    assert!(
        info(&set, "61.62.63.64").is_some(),
        "flip's cached trails kept"
    );
    assert!(
        info(&set, "45.67.89.11").is_some(),
        "304 keeps the cached rows"
    );

    let prom = bin(&["status", "--cache", s(&cache), "--prometheus"]);
    let prom = String::from_utf8_lossy(&prom.stdout);
    assert!(prom.contains("xtrail_feed_up{feed=\"ips\"} 1"), "{prom}");
    assert!(prom.contains("xtrail_feed_up{feed=\"html\"} 0"));
    assert!(prom.contains("xtrail_feed_rows{feed=\"flip\"} 1"));
    assert!(prom.contains("xtrail_feed_using_cache{feed=\"flip\"} 1"));
    assert!(cache.join("metrics.prom").is_file());
    assert!(
        state.requests.load(Ordering::Relaxed) < 200,
        "retries bounded"
    );
}

#[test]
fn fail_closed() {
    let d = Dir::new("failclosed");
    let big = d.write(
        "custom-big/big_list.txt",
        &(0..1000)
            .map(|i| format!("host{i}.bad.example\n"))
            .collect::<String>(),
    );
    let small = d.write("custom-small/small_list.txt", "only.bad.example\n");
    let out = d.path("set.xtrails");
    let cache = d.path("cache");
    let o = bin(&[
        "build",
        "--out",
        s(&out),
        "--custom",
        s(big.parent().unwrap()),
        "--cache",
        s(&cache),
    ]);
    assert!(o.status.success());
    let before = std::fs::read(&out).unwrap();

    // Shrinks to 1 of 1000: refused, file untouched.
    let o = bin(&[
        "build",
        "--out",
        s(&out),
        "--custom",
        s(small.parent().unwrap()),
        "--cache",
        s(&cache),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("below 0.5 of the current set's 1000"));
    assert_eq!(std::fs::read(&out).unwrap(), before);
    // Allowed with a lower ratio (or an explicit --current that is smaller).
    let o = bin(&[
        "build",
        "--out",
        s(&d.path("other.xtrails")),
        "--current",
        s(&out),
        "--min-ratio",
        "0.0001",
        "--custom",
        s(small.parent().unwrap()),
        "--cache",
        s(&cache),
    ]);
    assert!(o.status.success());

    // Empty: refused.
    let empty = d.write("custom-empty/nothing.txt", "# nothing\n");
    let o = bin(&[
        "build",
        "--out",
        s(&out),
        "--custom",
        s(empty.parent().unwrap()),
        "--cache",
        s(&cache),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("empty"));
    // A source that fails: the build fails, the set stays.
    let o = bin(&[
        "build",
        "--out",
        s(&out),
        "--indicators",
        "/nonexistent/intel.dat",
        "--cache",
        s(&cache),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(std::fs::read(&out).unwrap(), before);
    // No temporary files left beside it.
    let leftovers: Vec<_> = std::fs::read_dir(&d.0)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn signatures_and_indicator_files() {
    let d = Dir::new("sign");
    let zeek = d.write(
        "intel.dat",
        "#separator \\x09\n#fields\tindicator\tindicator_type\tmeta.source\tmeta.desc\n\
        45.67.90.1\tIntel::ADDR\tsoc-team\tc2 server\n\
        zeek-bad.example.com\tIntel::DOMAIN\tsoc-team\t-\n\
        d41d8cd98f00b204e9800998ecf8427e\tIntel::FILE_HASH\tsoc-team\thash\n",
    );
    let misp = d.write(
        "misp.csv",
        "uuid,event_id,category,type,value,comment,to_ids,date\n\
        1,1,Network activity,ip-dst|port,45.67.90.2|8443,c2 port,1,20240101\n\
        2,1,Network activity,url,https://misp-bad.example.com/gate.php,,1,20240101\n\
        3,1,Payload delivery,sha256,abcd,,1,20240101\n",
    );
    let stix = d.write("bundle.json", r#"{"type":"bundle","id":"bundle--1","objects":[
        {"type":"indicator","pattern_type":"stix","name":"stix c2","pattern":"[ipv4-addr:value = '45.67.90.3'] OR [domain-name:value = 'stix-bad.example.com']"},
        {"type":"indicator","pattern_type":"stix","pattern":"[ipv4-addr:value = '45.67.91.0/24']"},
        {"type":"indicator","pattern_type":"stix","pattern":"[file:hashes.MD5 = 'abc']"}]}"#);
    let key = d.path("signing.key");
    let o = bin(&["keygen", "--out", s(&key)]);
    assert!(o.status.success());
    let public = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    assert_eq!(public.len(), 64);
    let out = d.path("set.xtrails");
    let o = bin(&[
        "build",
        "--out",
        s(&out),
        "--indicators",
        s(&zeek),
        "--indicators",
        s(&misp),
        "--indicators",
        s(&stix),
        "--sign",
        s(&key),
        "--cache",
        s(&d.path("cache")),
    ]);
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("zeek: 2 indicators, 1 skipped")
            && err.contains("stix: 3 indicators, 1 skipped"),
        "{err}"
    );

    let k = xtrail_trails::keys::parse_hex(&public).unwrap();
    let set = CompiledSet::open(&out, Some(&k)).unwrap();
    assert_eq!(
        info(&set, "45.67.90.1").unwrap(),
        ("c2 server".into(), "soc-team (custom)".into())
    );
    assert!(info(&set, "zeek-bad.example.com").is_some());
    let t = set.trails();
    assert!(t
        .ip
        .lookup("45.67.90.2".parse().unwrap(), Some(8443))
        .is_some());
    assert!(info(&set, "misp-bad.example.com/gate.php").is_some());
    assert_eq!(info(&set, "stix-bad.example.com").unwrap().0, "stix c2");
    assert!(t.ip.lookup("45.67.91.77".parse().unwrap(), None).is_some());
    drop(set);

    assert!(bin(&["verify", s(&out), "--public-key", &public])
        .status
        .success());
    assert!(bin(&[
        "verify",
        s(&out),
        "--public-key",
        &format!("{}.pub", s(&key))
    ])
    .status
    .success());
    let other = d.path("other.key");
    assert!(bin(&["keygen", "--out", s(&other)]).status.success());
    let o = bin(&[
        "verify",
        s(&out),
        "--public-key",
        &format!("{}.pub", s(&other)),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad signature"));
    let mut bytes = std::fs::read(&out).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 0x55;
    let tampered = d.path("tampered.xtrails");
    std::fs::write(&tampered, &bytes).unwrap();
    let o = bin(&["verify", s(&tampered), "--public-key", &public]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("checksum mismatch"));
    // Unsigned set with a key configured: refused.
    let unsigned = d.path("unsigned.xtrails");
    assert!(bin(&[
        "build",
        "--out",
        s(&unsigned),
        "--indicators",
        s(&zeek),
        "--cache",
        s(&d.path("cache"))
    ])
    .status
    .success());
    let o = bin(&["verify", s(&unsigned), "--public-key", &public]);
    assert!(!o.status.success(), "an unsigned set verified with a key");
    assert!(String::from_utf8_lossy(&o.stderr).contains("not signed"));
}
