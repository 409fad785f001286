//! The console's users, sessions, CSRF, throttling, audit log, sensors page and HTTPS,
//! against the real `xtrail-collector` binary over loopback with a plain HTTP/1.1 client.

mod common;

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{make_certs, tempdir, with_token, Collector, SENSOR_TOKEN, SUB_TOKEN};
use serde_json::Value;
use xtrail_proto::v1;

const BIN: &str = env!("CARGO_BIN_EXE_xtrail-collector");

use xtrail_bench::http::{exchange, Response as Resp};

/// What these tests read from an answer besides status, headers and body.
trait ConsoleAnswer {
    fn json(&self) -> Value;
    /// The session id of a `Set-Cookie: xtrail_session=...`.
    fn session_cookie(&self) -> Option<String>;
}

impl ConsoleAnswer for Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    fn session_cookie(&self) -> Option<String> {
        let c = self.header("set-cookie")?;
        let v = c.strip_prefix("xtrail_session=")?.split(';').next()?;
        (!v.is_empty()).then(|| v.to_string())
    }
}

/// One request from `source` (a loopback address) to `addr`.
fn http_from(
    source: IpAddr,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Resp {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stream = rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(source, 0)).unwrap();
        sock.connect(addr).await.expect("connect http")
    });
    let mut s = stream.into_std().unwrap();
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    exchange(&mut s, &addr.to_string(), method, path, headers, body).expect("http")
}

fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    http_from(
        IpAddr::from([127, 0, 0, 1]),
        addr,
        method,
        path,
        headers,
        body,
    )
}

fn cookie(id: &str) -> String {
    format!("xtrail_session={id}")
}

fn get(c: &Collector, path: &str, id: Option<&str>) -> Resp {
    match id {
        Some(id) => http(c.http, "GET", path, &[("Cookie", &cookie(id))], ""),
        None => http(c.http, "GET", path, &[], ""),
    }
}

fn login_from(
    source: IpAddr,
    c: &Collector,
    user: &str,
    pw: &str,
    cookie_hdr: Option<&str>,
) -> Resp {
    let body = format!(
        "username={}&password={}",
        user,
        pw.replace('%', "%25").replace(' ', "+").replace('&', "%26")
    );
    let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
    if let Some(ck) = cookie_hdr {
        headers.push(("Cookie", ck));
    }
    http_from(source, c.http, "POST", "/login", &headers, &body)
}

fn login(c: &Collector, user: &str, pw: &str) -> Resp {
    login_from(IpAddr::from([127, 0, 0, 1]), c, user, pw, None)
}

/// Signs in and returns the session id.
fn sign_in(c: &Collector, user: &str, pw: &str) -> String {
    let r = login(c, user, pw);
    assert_eq!(r.status, 303, "login {user}: {r:?}");
    r.session_cookie().expect("session cookie")
}

/// `POST /login` as ana (password "correct horse") with an `Origin` header.
fn login_with_origin(c: &Collector, origin: &str) -> Resp {
    http(
        c.http,
        "POST",
        "/login",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Origin", origin),
        ],
        "username=ana&password=correct+horse",
    )
}

/// `POST /logout` with `headers` and `body`.
fn logout(c: &Collector, headers: &[(&str, &str)], body: &str) -> Resp {
    http(c.http, "POST", "/logout", headers, body)
}

/// `GET path` with the subscriber token as a bearer token.
fn get_as_subscriber(c: &Collector, path: &str) -> Resp {
    let bearer = format!("Bearer {SUB_TOKEN}");
    http(c.http, "GET", path, &[("Authorization", &bearer)], "")
}

/// `xtrail-collector user ARGS --data-dir DIR` with `stdin`: (success, stderr).
fn user_cmd(dir: &Path, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(BIN)
        .arg("user")
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run user command");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn add_user(dir: &Path, name: &str, role: &str, scope: Option<&str>, pw: &str) {
    let mut args = vec!["add", name, "--role", role];
    if let Some(s) = scope {
        args.extend(["--scope", s]);
    }
    let (ok, _, err) = user_cmd(dir, &args, &format!("{pw}\n"));
    assert!(ok, "user add {name}: {err}");
}

fn assert_security_headers(r: &Resp) {
    let csp = r.header("content-security-policy").expect("CSP");
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
}

#[test]
fn users_login_cookies_fixation_csrf_logout() {
    let dir = tempdir("console-login");
    // Users come from standard input; an empty password is refused.
    add_user(dir.path(), "ana", "admin", None, "correct horse");
    add_user(
        dir.path(),
        "vic",
        "viewer",
        Some("198.18.0.0/24,2001:db8::/32"),
        "viewer pw",
    );
    let (ok, _, err) = user_cmd(dir.path(), &["add", "eve", "--role", "viewer"], "\n");
    assert!(!ok && err.contains("no password"), "{err}");
    let (ok, _, err) = user_cmd(dir.path(), &["add", "ana", "--role", "viewer"], "x\n");
    assert!(!ok && err.contains("exists"), "{err}");
    let (ok, _, err) = user_cmd(
        dir.path(),
        &["add", "bad", "--role", "viewer", "--scope", "10.0.0.0/33"],
        "x\n",
    );
    assert!(!ok, "{err}");
    let (ok, out, _) = user_cmd(dir.path(), &["list"], "");
    assert!(ok);
    assert!(out.contains("ana\tadmin\tall"), "{out}");
    assert!(
        out.contains("vic\tviewer\t198.18.0.0/24,2001:db8::/32"),
        "{out}"
    );
    assert!(!out.contains("argon2"), "{out}");
    // The hash is argon2id.
    let db = rusqlite::Connection::open(dir.path().join("console.db")).unwrap();
    let phc: String = db
        .query_row("SELECT phc FROM users WHERE name = 'ana'", [], |r| r.get(0))
        .unwrap();
    assert!(phc.starts_with("$argon2id$"), "{phc}");

    let c = Collector::start(dir.path(), None, &[]);
    // Not signed in: the login form, with the security headers.
    let r = get(&c, "/", None);
    assert_eq!(r.status, 200);
    assert!(r.body.contains("action=\"/login\""), "{}", r.body);
    assert!(!r.body.contains("<script>") && !r.body.contains("style="));
    assert_security_headers(&r);
    assert_security_headers(&get(&c, "/api/session", None));

    // Wrong password and unknown user: the same generic answer.
    let bad = login(&c, "ana", "wrong");
    let unknown = login(&c, "nobody", "wrong");
    assert_eq!(bad.status, 401);
    assert_eq!(unknown.status, 401);
    assert!(bad.session_cookie().is_none());
    let msg = |b: &str| {
        b.split("role=\"alert\">")
            .nth(1)
            .and_then(|m| m.split('<').next())
            .map(str::to_string)
    };
    assert!(msg(&bad.body).is_some(), "{}", bad.body);
    assert_eq!(msg(&bad.body), msg(&unknown.body));
    assert!(!bad.body.to_lowercase().contains("unknown user"));

    // Another site cannot sign a browser in.
    let r = login_with_origin(&c, "https://evil.example");
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.session_cookie().is_none());
    let same_site = format!("http://{}", c.http);
    let r = login_with_origin(&c, &same_site);
    assert_eq!(r.status, 303, "{r:?}");

    // Fixation: a session id the client brings is never adopted.
    let planted = "a".repeat(64);
    let r = login_from(
        IpAddr::from([127, 0, 0, 1]),
        &c,
        "ana",
        "correct horse",
        Some(&cookie(&planted)),
    );
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(r.header("location"), Some("/"));
    let id = r.session_cookie().expect("cookie");
    assert_ne!(id, planted);
    assert_eq!(id.len(), 64, "256 bits in hex");
    let set = r.header("set-cookie").unwrap();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(flag), "{set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP: {set}");
    assert_eq!(get(&c, "/api/session", Some(&planted)).status, 401);
    // Two logins, two different ids.
    assert_ne!(sign_in(&c, "ana", "correct horse"), id);

    // Signed in: the session, the console page.
    let s = get(&c, "/api/session", Some(&id));
    assert_eq!(s.status, 200, "{s:?}");
    let j = s.json();
    assert_eq!(j["user"], "ana");
    assert_eq!(j["role"], "admin");
    assert_eq!(j["scope"], "all");
    let csrf = j["csrf"].as_str().unwrap().to_string();
    assert_eq!(csrf.len(), 64);
    let page = get(&c, "/", Some(&id));
    assert_eq!(page.status, 200);
    assert!(!page.body.contains("action=\"/login\""), "{}", page.body);
    assert_security_headers(&page);
    let vic = sign_in(&c, "vic", "viewer pw");
    let j = get(&c, "/api/session", Some(&vic)).json();
    assert_eq!(j["role"], "viewer");
    assert_eq!(j["scope"], "198.18.0.0/24,2001:db8::/32");

    // CSRF: a state change on a cookie session needs the session's token.
    let form = ("Content-Type", "application/x-www-form-urlencoded");
    let ck = cookie(&id);
    let r = logout(&c, &[("Cookie", &ck), form], "");
    assert_eq!(r.status, 403, "{r:?}");
    let r = logout(
        &c,
        &[("Cookie", &ck), form],
        &format!("csrf={}", "0".repeat(64)),
    );
    assert_eq!(r.status, 403);
    let r = logout(&c, &[("Cookie", &ck), ("x-csrf-token", "nope")], "");
    assert_eq!(r.status, 403);
    // Another session's token does not do either.
    let vic_csrf = get(&c, "/api/session", Some(&vic)).json()["csrf"]
        .as_str()
        .unwrap()
        .to_string();
    let r = logout(&c, &[("Cookie", &ck), ("x-csrf-token", &vic_csrf)], "");
    assert_eq!(r.status, 403);
    // The extractor every console API takes checks it too (THREATS' triage).
    let json = ("Content-Type", "application/json");
    let r = http(
        c.http,
        "POST",
        "/api/threats/triage",
        &[("Cookie", &ck), json],
        "{\"ids\":[],\"status\":\"resolved\"}",
    );
    assert_eq!(r.status, 403, "{r:?}");
    assert!(
        r.json()["error"].as_str().unwrap().contains("csrf"),
        "{r:?}"
    );
    assert_eq!(get(&c, "/api/session", Some(&id)).status, 200);

    // Logout with the form field: the session ends, the cookie is cleared.
    let r = logout(&c, &[("Cookie", &ck), form], &format!("csrf={csrf}"));
    assert_eq!(r.status, 303, "{r:?}");
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
    assert_eq!(get(&c, "/api/session", Some(&id)).status, 401);
    assert!(get(&c, "/", Some(&id)).body.contains("action=\"/login\""));
    // Logout with the header.
    let r = logout(
        &c,
        &[("Cookie", &cookie(&vic)), ("x-csrf-token", &vic_csrf)],
        "",
    );
    assert_eq!(r.status, 303);
    assert_eq!(get(&c, "/api/session", Some(&vic)).status, 401);
}

#[test]
fn bearer_tokens_roles_and_the_audit_log() {
    let dir = tempdir("console-roles");
    add_user(dir.path(), "ana", "admin", None, "admin pw");
    add_user(dir.path(), "vic", "viewer", None, "viewer pw");
    let c = Collector::start(dir.path(), None, &[]);
    // No session, a bad bearer token: 401 JSON.
    for (path, auth) in [
        ("/api/sensors", None),
        ("/api/sensors", Some("Bearer wrong")),
        ("/api/session", Some("Basic abc")),
        ("/api/audit", None),
    ] {
        let r = match auth {
            Some(a) => http(c.http, "GET", path, &[("Authorization", a)], ""),
            None => http(c.http, "GET", path, &[], ""),
        };
        assert_eq!(r.status, 401, "{path} {auth:?}: {r:?}");
        assert!(r.json()["error"].is_string());
    }
    // The subscriber token works, as an unrestricted analyst.
    let r = get_as_subscriber(&c, "/api/sensors");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.json()["sensors"].is_array());
    let r = get_as_subscriber(&c, "/api/session");
    assert_eq!(r.json()["user"], "token:subscriber");
    assert_eq!(r.json()["role"], "analyst");
    // The audit log is for admins.
    let _ = login(&c, "ana", "not it");
    let vic = sign_in(&c, "vic", "viewer pw");
    assert_eq!(get(&c, "/api/audit", Some(&vic)).status, 403);
    let r = get_as_subscriber(&c, "/api/audit");
    assert_eq!(r.status, 403);
    let ana = sign_in(&c, "ana", "admin pw");
    let r = get(&c, "/api/audit?limit=50", Some(&ana));
    assert_eq!(r.status, 200, "{r:?}");
    let entries = r.json()["entries"].as_array().unwrap().clone();
    let has = |user: &str, action: &str| {
        entries
            .iter()
            .any(|e| e["user"] == user && e["action"] == action && e["source"] == "127.0.0.1")
    };
    assert!(has("ana", "login_failed"), "{entries:?}");
    assert!(has("vic", "login"), "{entries:?}");
    assert!(has("ana", "login"), "{entries:?}");
    assert!(entries
        .iter()
        .any(|e| e["user"] == "cli" && e["action"] == "user_add"));
    assert!(entries[0]["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(get(&c, "/api/audit?limit=0", Some(&ana)).status, 400);
    // Append-only, also for someone with the file.
    let db = rusqlite::Connection::open(dir.path().join("console.db")).unwrap();
    let rows: i64 = db
        .query_row("SELECT count(*) FROM audit", [], |r| r.get(0))
        .unwrap();
    assert!(rows > 0);
    for sql in ["DELETE FROM audit", "UPDATE audit SET user = 'x'"] {
        let e = db.execute(sql, []).unwrap_err();
        assert!(e.to_string().contains("append-only"), "{sql}: {e}");
    }
}

#[test]
fn login_brute_force_is_throttled_per_source_and_per_user() {
    let dir = tempdir("console-throttle");
    add_user(dir.path(), "ana", "analyst", None, "ana pw");
    add_user(dir.path(), "bob", "analyst", None, "bob pw");
    add_user(dir.path(), "cat", "analyst", None, "cat pw");
    let c = Collector::start(dir.path(), None, &[]);
    let a = IpAddr::from([127, 0, 0, 1]);
    let b = IpAddr::from([127, 0, 0, 2]);
    let d = IpAddr::from([127, 0, 0, 3]);
    // Ten failures for one user from one source: then 429, even with the right password,
    // for that user from anywhere...
    for i in 0..10 {
        let r = login_from(a, &c, "ana", &format!("guess {i}"), None);
        assert_eq!(r.status, 401, "attempt {i}");
    }
    let r = login_from(a, &c, "ana", "ana pw", None);
    assert_eq!(r.status, 429, "{r:?}");
    assert!(r.session_cookie().is_none());
    assert_eq!(login_from(b, &c, "ana", "ana pw", None).status, 429);
    // ... and for anyone from that source.
    assert_eq!(login_from(a, &c, "bob", "bob pw", None).status, 429);
    // Others are unaffected.
    assert_eq!(login_from(b, &c, "bob", "bob pw", None).status, 303);
    // Ten failures spread over names from one source also close that source.
    for i in 0..10 {
        let r = login_from(d, &c, &format!("nobody{i}"), "x", None);
        assert_eq!(r.status, 401, "attempt {i}");
    }
    assert_eq!(login_from(d, &c, "cat", "cat pw", None).status, 429);
    assert_eq!(login_from(b, &c, "cat", "cat pw", None).status, 303);
    // The throttle is in the audit log once per crossing.
    let db = rusqlite::Connection::open(dir.path().join("console.db")).unwrap();
    let n: i64 = db
        .query_row(
            "SELECT count(*) FROM audit WHERE action = 'login_throttled'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(n >= 2, "{n}");
}

#[test]
fn sessions_survive_a_restart_and_end_with_the_user_or_by_age() {
    let dir = tempdir("console-restart");
    add_user(dir.path(), "ana", "analyst", None, "ana pw");
    add_user(dir.path(), "bob", "analyst", None, "bob pw");
    let mut c = Collector::start(dir.path(), None, &[]);
    let ana = sign_in(&c, "ana", "ana pw");
    let bob = sign_in(&c, "bob", "bob pw");
    c.kill9();
    let c = Collector::start(dir.path(), None, &[]);
    assert_eq!(get(&c, "/api/session", Some(&ana)).status, 200);
    assert_eq!(get(&c, "/api/session", Some(&bob)).status, 200);
    // Only the hash of an id is stored.
    let db = rusqlite::Connection::open(dir.path().join("console.db")).unwrap();
    let stored: Vec<u8> = db
        .query_row("SELECT id_hash FROM sessions LIMIT 1", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stored.len(), 32);
    assert!(!String::from_utf8_lossy(&stored).contains(&ana));
    // A deleted user's and a changed password's sessions end at once.
    let (ok, _, err) = user_cmd(dir.path(), &["del", "ana"], "");
    assert!(ok, "{err}");
    assert_eq!(get(&c, "/api/session", Some(&ana)).status, 401);
    assert_eq!(login(&c, "ana", "ana pw").status, 401);
    let (ok, _, err) = user_cmd(dir.path(), &["passwd", "bob"], "new bob pw\n");
    assert!(ok, "{err}");
    assert_eq!(get(&c, "/api/session", Some(&bob)).status, 401);
    assert_eq!(login(&c, "bob", "bob pw").status, 401);
    sign_in(&c, "bob", "new bob pw");
    let (ok, _, _) = user_cmd(dir.path(), &["del", "ana"], "");
    assert!(!ok, "deleting twice");
    drop(c);

    // Idle and absolute expiry.
    let c = Collector::start(
        dir.path(),
        None,
        &["--session-idle-seconds", "2", "--session-max-seconds", "5"],
    );
    let idle = sign_in(&c, "bob", "new bob pw");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(get(&c, "/api/session", Some(&idle)).status, 401, "idle");
    let busy = sign_in(&c, "bob", "new bob pw");
    let start = Instant::now();
    let mut ended = None;
    while start.elapsed() < Duration::from_secs(8) {
        if get(&c, "/api/session", Some(&busy)).status == 401 {
            ended = Some(start.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let ended = ended.expect("a used session still ends at its absolute expiry");
    assert!(ended >= Duration::from_secs(4), "{ended:?}");
}

fn sensors(c: &Collector) -> Vec<Value> {
    let r = get_as_subscriber(c, "/api/sensors");
    assert_eq!(r.status, 200, "{r:?}");
    r.json()["sensors"].as_array().unwrap().clone()
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn heartbeats_fill_the_sensors_page_and_silence_is_flagged() {
    let dir = tempdir("console-sensors");
    let token = common::sensor_cmd(dir.path(), "add", "gw-1");
    let c = Collector::start(dir.path(), None, &[]);
    let state = tempdir("console-sensors-spool");

    // A per-sensor credential heartbeats only as its own name.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let code = rt.block_on(async {
        let mut client = common::ingest_client(&c.url()).await;
        let req = v1::HeartbeatRequest {
            sensor_name: "gw-2".into(),
            identity: "x".into(),
            version: "t".into(),
            trail_set_version: String::new(),
            interval_s: 1,
            counters: None,
            ..Default::default()
        };
        client
            .heartbeat(with_token(req, &token))
            .await
            .unwrap_err()
            .code()
    });
    assert_eq!(code, tonic::Code::PermissionDenied);

    // The real publisher with heartbeats every second.
    let mut cfg = xtrail_publish::PublisherConfig::new(
        c.url(),
        token.clone(),
        "id-gw-1",
        state.path().join("spool-gw-1"),
    );
    cfg.sensor_name = "gw-1".into();
    let publisher = xtrail_publish::Publisher::start(cfg).unwrap();
    publisher
        .start_heartbeats(xtrail_publish::HeartbeatConfig {
            sensor_name: "gw-1".into(),
            identity: "id-gw-1".into(),
            version: "9.9.9".into(),
            interval: Duration::from_secs(1),
        })
        .unwrap();
    publisher.set_status(xtrail_publish::SensorStatus {
        trail_set_version: "42".into(),
        counters: v1::SensorCounters {
            processed: 1000,
            ringbuf_full: 3,
            handoff_failed: 4,
            ..Default::default()
        },
    });
    for i in 0..5 {
        let mut e = common::sample(i);
        e.sensor = "gw-1".into();
        publisher.publish(&e).unwrap();
    }
    publisher.flush(Duration::from_secs(20)).unwrap();
    // A sensor that stores events but sends no heartbeat (a shared token, no heartbeats).
    let quiet = xtrail_publish::Publisher::start(xtrail_publish::PublisherConfig::new(
        c.url(),
        SENSOR_TOKEN,
        "id-quiet",
        state.path().join("spool-quiet"),
    ))
    .unwrap();
    let mut e = common::sample(9);
    e.sensor = "quiet".into();
    quiet.publish(&e).unwrap();
    quiet.flush(Duration::from_secs(20)).unwrap();

    let find = |list: &[Value], name: &str| list.iter().find(|s| s["name"] == name).cloned();
    wait_for("gw-1 with a heartbeat and events", 20, || {
        let l = sensors(&c);
        find(&l, "gw-1")
            .is_some_and(|s| s["last_heartbeat"].is_string() && s["last_event"].is_string())
            && find(&l, "quiet").is_some_and(|s| s["last_event"].is_string())
    });
    let l = sensors(&c);
    let gw = find(&l, "gw-1").unwrap();
    assert_eq!(gw["identity"], "id-gw-1");
    assert_eq!(gw["version"], "9.9.9");
    assert_eq!(gw["trail_set_version"], "42");
    assert_eq!(gw["heartbeat_interval_s"], 1);
    assert_eq!(gw["ringbuf_full"], 3);
    assert_eq!(gw["handoff_failed"], 4);
    assert_eq!(gw["processed"], 1000);
    assert_eq!(gw["silent"], false);
    assert!(gw["events_per_sec"].is_number());
    assert!(
        gw["last_event"]
            .as_str()
            .unwrap()
            .starts_with("2026-08-07T"),
        "{gw}"
    );
    let q = find(&l, "quiet").unwrap();
    assert!(q["last_heartbeat"].is_null(), "{q}");
    assert_eq!(q["silent"], false);
    assert!(publisher.heartbeats_sent() >= 1);
    let (_, m) = c.http_get("/metrics", None);
    assert!(m.contains("xtrail_sensor_silent{sensor=\"gw-1\"} 0"), "{m}");
    assert!(m.contains("xtrail_sensor_heartbeat_age_seconds{sensor=\"gw-1\"}"));

    // The sensor stops: after three intervals it is flagged, on the page and in /metrics.
    drop(publisher);
    wait_for("gw-1 silent", 20, || {
        find(&sensors(&c), "gw-1").is_some_and(|s| s["silent"] == true)
    });
    let (_, m) = c.http_get("/metrics", None);
    assert!(m.contains("xtrail_sensor_silent{sensor=\"gw-1\"} 1"), "{m}");
    assert!(m.contains("xtrail_sensors_silent 1"), "{m}");
}

/// One HTTPS request trusting `ca.pem` of `dir`.
fn https(
    dir: &Path,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Resp {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(dir.join("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let mut sock = std::net::TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    // A close without close_notify still leaves the whole answer read.
    exchange(&mut tls, &addr.to_string(), method, path, headers, body).unwrap_or_default()
}

/// `POST /login` as ana (password "ana pw") over HTTPS.
fn https_login(dir: &Path, addr: SocketAddr) -> Resp {
    https(
        dir,
        addr,
        "POST",
        "/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        "username=ana&password=ana+pw",
    )
}

#[test]
fn tls_on_the_http_port() {
    let dir = tempdir("console-tls");
    let certs = tempdir("console-tls-certs");
    if make_certs(certs.path()).is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "openssl is missing (CI=true)"
        );
        eprintln!("SKIP tls_on_the_http_port: openssl could not make test certificates");
        return;
    }
    add_user(dir.path(), "ana", "analyst", None, "ana pw");
    let cert = certs.path().join("c.pem");
    let key = certs.path().join("k.pem");
    let c = Collector::start(
        dir.path(),
        None,
        &[
            "--http-tls-cert",
            cert.to_str().unwrap(),
            "--http-tls-key",
            key.to_str().unwrap(),
        ],
    );
    let r = https(certs.path(), c.http, "GET", "/", &[], "");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("action=\"/login\""));
    assert_security_headers(&r);
    let r = https_login(certs.path(), c.http);
    assert_eq!(r.status, 303, "{r:?}");
    let set = r.header("set-cookie").unwrap();
    assert!(
        set.contains("; Secure") && set.contains("HttpOnly"),
        "{set}"
    );
    let id = r.session_cookie().unwrap();
    let r = https(
        certs.path(),
        c.http,
        "GET",
        "/api/session",
        &[("Cookie", &cookie(&id))],
        "",
    );
    assert_eq!(r.json()["user"], "ana");
    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = xtrail_bench::http::get(c.http, "/");
    assert!(
        plain.as_ref().map_or(true, |r| r.status == 0),
        "plain HTTP answered on the TLS port: {plain:?}"
    );
    // Connection limits still apply on the TLS listener: the metrics count it open.
    let r = https(certs.path(), c.http, "GET", "/metrics", &[], "");
    assert!(
        r.body
            .contains("xtrail_connections_open{listener=\"http\"} 1"),
        "{}",
        r.body
    );
    drop(c);
    // The same from the config file.
    let conf = certs.path().join("collector.toml");
    std::fs::write(
        &conf,
        format!(
            "http_tls_cert = {:?}\nhttp_tls_key = {:?}\nsession_idle_seconds = 600\nsession_max_seconds = 3600\n",
            cert.to_str().unwrap(),
            key.to_str().unwrap()
        ),
    )
    .unwrap();
    let c = Collector::start(dir.path(), None, &["--config", conf.to_str().unwrap()]);
    let r = https_login(certs.path(), c.http);
    assert_eq!(r.status, 303, "{r:?}");
    let set = r.header("set-cookie").unwrap();
    assert!(
        set.contains("Max-Age=3600") && set.contains("; Secure"),
        "{set}"
    );
    // A bad certificate path is an error at start.
    let out = Command::new(BIN)
        .args(["--data-dir"])
        .arg(dir.path())
        .args(["--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .args(["--http-tls-cert", "/nonexistent.pem", "--http-tls-key"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("HTTP TLS certificate"));
}
