//! `GET /api/check`: the real collector binary with trail files written here, queried over
//! loopback HTTP: IP:port, CIDR, IPv6, parent-domain and URL hits, misses, the whitelist,
//! list-file sources, bad queries, no token, and a collector without trails.

mod common;

use std::time::{Duration, Instant};

use common::{tempdir, Collector, SUB_TOKEN};
use serde_json::Value;

/// Percent-encodes everything but unreserved characters.
fn enc(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn check(c: &Collector, q: &str) -> (u16, Value) {
    let (status, body) = c.http_get(&format!("/api/check?q={}", enc(q)), Some(SUB_TOKEN));
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{q}: {e}: {body}"));
    (status, v)
}

fn listed(c: &Collector, q: &str) -> Value {
    let (status, v) = check(c, q);
    assert_eq!(status, 200, "{q}: {v}");
    assert_eq!(v["query"], q, "{v}");
    assert_eq!(v["listed"], true, "{q} not listed: {v}");
    v
}

fn not_listed(c: &Collector, q: &str) {
    let (status, v) = check(c, q);
    assert_eq!(status, 200, "{q}: {v}");
    assert_eq!(v["listed"], false, "{q} listed: {v}");
    assert_eq!(v["matches"].as_array().map(Vec::len), Some(0), "{v}");
}

/// Waits until the background trail load is done (503 "still loading" before).
fn wait_loaded(c: &Collector) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = c.http_get("/api/check?q=1.1.1.1", Some(SUB_TOKEN));
        if status != 503 {
            return;
        }
        assert!(body.contains("loading"), "{body}");
        assert!(Instant::now() < deadline, "trails never loaded: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn check_answers_from_the_trail_set() {
    let dir = tempdir("check");
    let csv = dir.path().join("trails.csv");
    std::fs::write(
        &csv,
        "6.6.6.6:8443,c2 port (malware),(custom)\n\
         198.18.77.0/24,bad net (malicious),abuse.example\n\
         198.18.5.5,known attacker,(static)\n\
         2001:db8::66,v6 host (malware),(custom)\n\
         evil-parent.example,evil parent (malware),(static)\n\
         evil.example/gate.php,gate (malware),(static)\n\
         goodsite.example,listed but whitelisted (suspicious),(custom)\n",
    )
    .unwrap();
    let list = dir.path().join("bad_hosts.txt");
    std::fs::write(&list, "# a list file\nlisted-domain.example\n").unwrap();
    let wl = dir.path().join("whitelist.txt");
    std::fs::write(&wl, "198.18.77.9\ngoodsite.example\n").unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let (csv_s, list_s, wl_s) = (
        csv.display().to_string(),
        list.display().to_string(),
        wl.display().to_string(),
    );
    let c = Collector::start(
        &data,
        None,
        &[
            "--trails",
            &csv_s,
            "--trails",
            &list_s,
            "--whitelist",
            &wl_s,
        ],
    );
    wait_loaded(&c);

    // IP:port: the IP:port row; the same address on another port or bare is not listed.
    let v = listed(&c, "6.6.6.6:8443");
    assert_eq!(v["kind"], "ip");
    assert_eq!(v["whitelisted"], false);
    let m = &v["matches"][0];
    assert_eq!(m["type"], "IPORT", "{v}");
    assert_eq!(m["match"], "ip_port");
    assert_eq!(m["trail"], "6.6.6.6:8443");
    assert_eq!(m["info"], "c2 port (malware)");
    assert_eq!(m["reference"], "(custom)");
    assert_eq!(m["source"], csv_s.as_str());
    not_listed(&c, "6.6.6.6:80");
    not_listed(&c, "6.6.6.6");

    // CIDR: the row that contains the address, and the whitelist.
    let v = listed(&c, "198.18.77.200");
    let m = &v["matches"][0];
    assert_eq!((&m["type"], &m["match"]), (&"IP".into(), &"cidr".into()));
    assert_eq!(m["cidr"], "198.18.77.0/24");
    assert_eq!(m["reference"], "abuse.example");
    assert_eq!(v["whitelisted"], false);
    let v = listed(&c, "198.18.77.9");
    assert_eq!(v["whitelisted"], true, "{v}");
    // An address with a port still matches its address row.
    let v = listed(&c, "198.18.5.5:22");
    assert_eq!(v["matches"][0]["match"], "ip", "{v}");
    assert_eq!(v["matches"][0]["info"], "known attacker");
    // IPv6, and an IPv4-mapped IPv6 address looked up as IPv4 (as the sensor does).
    let v = listed(&c, "[2001:db8::66]:443");
    assert_eq!(v["matches"][0]["trail"], "2001:db8::66", "{v}");
    listed(&c, "::ffff:198.18.5.5");
    not_listed(&c, "2001:db8::67");

    // Domains: exact, parent (printed the sensor's way), list-file source, whitelist.
    let v = listed(&c, "evil-parent.example");
    assert_eq!(v["kind"], "domain");
    assert_eq!(v["matches"][0]["type"], "DNS");
    assert_eq!(v["matches"][0]["trail"], "evil-parent.example");
    let v = listed(&c, "a.b.evil-parent.example");
    let trail = v["matches"][0]["trail"].as_str().unwrap_or_default();
    assert!(
        trail.starts_with("(a.b") && trail.ends_with("evil-parent.example"),
        "{v}"
    );
    not_listed(&c, "notevil-parent.example");
    not_listed(&c, "clean.example");
    let v = listed(&c, "listed-domain.example");
    assert_eq!(v["matches"][0]["info"], "bad hosts");
    assert_eq!(v["matches"][0]["source"], list_s.as_str());
    let v = listed(&c, "www.goodsite.example");
    assert_eq!(v["whitelisted"], true, "{v}");

    // URLs: the sensor's URL candidates (query cut, host prefixed), and the host's domain.
    let v = listed(&c, "http://evil.example/gate.php?id=1");
    assert_eq!(v["kind"], "url");
    let m = &v["matches"][0];
    assert_eq!(m["type"], "URL", "{v}");
    assert_eq!(m["info"], "gate (malware)");
    assert!(m["trail"]
        .as_str()
        .unwrap_or_default()
        .contains("/gate.php"));
    not_listed(&c, "http://evil.example/other.php");
    let v = listed(&c, "https://x.evil-parent.example/anything");
    assert_eq!(v["matches"][0]["type"], "DNS", "{v}");
    assert!(v["trails"]["version"].as_str().is_some(), "{v}");

    // Bad queries: 400 with a message.
    for q in [
        "/api/check",
        "/api/check?q=",
        "/api/check?q=not%20a%20name",
        "/api/check?q=nodot",
        "/api/check?q=1.2.3.4%3A99999",
        "/api/check?q=a.example&q=b.example",
        "/api/check?q=a.example&limit=3",
    ] {
        let (status, body) = c.http_get(q, Some(SUB_TOKEN));
        assert_eq!(status, 400, "{q}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
    }
    // No token, wrong token: 401.
    let (status, _) = c.http_get("/api/check?q=6.6.6.6", None);
    assert_eq!(status, 401);
    let (status, _) = c.http_get("/api/check?q=6.6.6.6", Some("wrong"));
    assert_eq!(status, 401);
}

#[test]
fn check_without_trails_is_503() {
    let dir = tempdir("check-none");
    let c = Collector::start(dir.path(), None, &[]);
    let (status, body) = c.http_get("/api/check?q=6.6.6.6", Some(SUB_TOKEN));
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("--trails"), "{body}");
}

/// A signed-in console user may ask without a token.
#[test]
fn check_accepts_a_console_session() {
    use std::io::Write as _;
    let dir = tempdir("check-console");
    let list = dir.path().join("bad_hosts.txt");
    std::fs::write(&list, "listed-domain.example\n").unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let mut add = std::process::Command::new(env!("CARGO_BIN_EXE_xtrail-collector"))
        .args(["user", "add", "ana", "--role", "viewer", "--data-dir"])
        .arg(&data)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("user add");
    add.stdin
        .take()
        .unwrap()
        .write_all(b"correct horse battery staple\n")
        .unwrap();
    let out = add.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list_s = list.display().to_string();
    let c = Collector::start(&data, None, &["--trails", &list_s]);
    wait_loaded(&c);
    let resp = xtrail_bench::http::request(
        c.http,
        "POST",
        "/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        "username=ana&password=correct+horse+battery+staple",
    )
    .unwrap();
    let cookie = resp
        .headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .filter_map(|(_, v)| v.split(';').next())
        .find(|c| c.starts_with("xtrail_session="))
        .unwrap_or_else(|| panic!("no session cookie: {resp:?}"))
        .to_string();
    let get = |cookie: &str| {
        xtrail_bench::http::request(
            c.http,
            "GET",
            "/api/check?q=listed-domain.example",
            &[("Cookie", cookie)],
            "",
        )
        .unwrap()
    };
    let ok = get(&cookie);
    assert_eq!(ok.status, 200, "{ok:?}");
    assert!(ok.body.contains("\"listed\":true"), "{ok:?}");
    let refused = get("xtrail_session=0000");
    assert_eq!(refused.status, 401, "{refused:?}");
}
