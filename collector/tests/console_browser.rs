//! The analyst console in a real headless browser (Debian's chromium over the DevTools
//! protocol): the real collector with console users made by `xtrail-collector user add`,
//! events stored through the real publisher and a capture replayed by the real
//! `xtrail-sensor replay --collector`, then what analysts do: log in, see threats,
//! filter with the query language, open a detail, triage as one analyst and see it as
//! another, a viewer cannot change anything, a scoped user never sees an address outside
//! the scope (page, detail, exports, live stream), a live update arrives, XSS payloads in
//! trail/URL/user agent stay inert text, the sensors page, the admin's audit log, logout. Screenshots of the main
//! views go to `target/console-screenshots/`.
//!
//! Also, without a browser: static routes serve only the embedded files (path traversal
//! is a 404) and the login page carries the strict CSP.
//!
//! Without chromium the browser test skips with a message, except under `CI=true`, where it
//! fails (`cargo xtask deps` installs it).

mod cdp;
mod common;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use cdp::{Browser, Page};
use common::{now_us, tempdir, Collector, SENSOR_TOKEN};
use xtrail_detect::event::{Action, Details, Event, EventType, Severity};
use xtrail_detect::protocols::{dns, tls};
use xtrail_publish::{HeartbeatConfig, Publisher, PublisherConfig, SensorStatus};

const PASSWORD: &str = "correct horse battery staple";
const WAIT: Duration = Duration::from_secs(45);

/// Inside the scoped user's scope.
const SCOPE: &str = "198.18.0.0/24";
/// A source outside it (another team's network): never shown to the scoped user.
const OUTSIDE: &str = "198.18.1.";

const XSS_TRAIL_UA: &str = "<img src=x onerror=alert('trail')>";
const XSS_PATH: &str = "/<script>alert('path')</script>?q=\"><img src=x onerror=alert('q')>";
const XSS_UA: &str = "Mozilla/5.0 <script>alert('ua')</script>";
const PCAP_XSS_PATH: &str = "/login/<script>alert('pcap')</script>";
const PCAP_XSS_UA: &str = "Mozilla/5.0 <img src=x onerror=alert('pcap-ua')>";
const XSS_INFO: &str = "<b onmouseover=alert('info')>bold</b> agent";

#[allow(clippy::too_many_arguments)]
fn event(
    ts_us: i64,
    src: &str,
    dst: &str,
    dst_port: u16,
    proto: &str,
    kind: EventType,
    trail: &str,
    info: &str,
    severity: Severity,
    details: Details,
) -> Event {
    Event {
        ts_us,
        sensor: "gw-test".into(),
        src_ip: src.parse().expect("src"),
        src_port: 40000,
        dst_ip: dst.parse().expect("dst"),
        dst_port,
        proto: proto.into(),
        kind,
        trail: trail.into(),
        info: info.into(),
        reference: "(static)".into(),
        severity,
        action: Action::Pass,
        iface: Some("eth0".into()),
        trail_set_version: String::new(),
        details,
    }
}

fn dns(q: &str) -> Details {
    Details {
        dns_query: Some(q.into()),
        dns_qtype: Some("A".into()),
        ..Details::default()
    }
}

fn http(host: &str, path: &str, ua: &str) -> Details {
    Details {
        http_method: Some("GET".into()),
        http_host: Some(host.into()),
        http_path: Some(path.into()),
        http_user_agent: Some(ua.into()),
        ..Details::default()
    }
}

/// The morning's events: a DNS C2 lookup, a URL and a user agent with XSS payloads, an IP
/// trail, a TLS SNI, and one host outside the scoped user's networks.
fn morning_events() -> Vec<Event> {
    let t = now_us() - 40 * 60 * 1_000_000;
    let min = 60 * 1_000_000;
    let mut v = Vec::new();
    for i in 0..5 {
        v.push(event(
            t + i * 3 * min,
            "198.18.0.10",
            "198.19.0.53",
            53,
            "UDP",
            EventType::Dns,
            "malware-c2.example",
            "emotet (malware)",
            Severity::High,
            dns("malware-c2.example"),
        ));
    }
    v.push(event(
        t + 4 * min,
        "198.18.0.10",
        "198.19.0.53",
        53,
        "UDP",
        EventType::Dns,
        "second-stage.example",
        "emotet (malware)",
        Severity::Medium,
        dns("second-stage.example"),
    ));
    v.push(event(
        t + 5 * min,
        "198.18.0.11",
        "198.19.0.80",
        80,
        "TCP",
        EventType::Url,
        "evil.example/<script>alert('trail-url')</script>",
        "phishing (suspicious)",
        Severity::Medium,
        http("evil.example", XSS_PATH, XSS_UA),
    ));
    v.push(event(
        t + 6 * min,
        "198.18.0.12",
        "198.19.0.80",
        80,
        "TCP",
        EventType::Ua,
        XSS_TRAIL_UA,
        XSS_INFO,
        Severity::Medium,
        http("shop.example", "/", XSS_TRAIL_UA),
    ));
    for i in 0..3 {
        v.push(event(
            t + (7 + i) * min,
            "198.18.0.13",
            "198.19.5.5",
            443,
            "TCP",
            EventType::Ip,
            "198.19.5.5",
            "known attacker",
            Severity::Low,
            Details::default(),
        ));
    }
    v.push(event(
        t + 10 * min,
        "198.18.0.14",
        "198.19.0.44",
        443,
        "TCP",
        EventType::Dns,
        "bad-tls.example",
        "cobalt strike (malware)",
        Severity::High,
        Details {
            tls_sni: Some("bad-tls.example".into()),
            ..Details::default()
        },
    ));
    for i in 0..2 {
        v.push(event(
            t + (11 + i) * min,
            "198.18.1.20",
            "198.19.0.53",
            53,
            "UDP",
            EventType::Dns,
            "other-team.example",
            "trickbot (malware)",
            Severity::High,
            dns("other-team.example"),
        ));
    }
    v
}

fn publish(collector: &Collector, spool: &Path, events: &[Event]) {
    let cfg = PublisherConfig::new(collector.url(), SENSOR_TOKEN, "sensor-a", spool);
    common::publish_all(cfg, events, Duration::from_secs(60));
}

// --- A capture replayed through the sensor's replay pipeline --------------------------

/// Trails for the replayed capture (Maltrail CSV: trail, info, reference).
const PCAP_TRAILS: &str = "\
pcap-c2.xtrail-test.net,dridex (malware),(static)
xss-host.example,phishing (suspicious),(static)
pcap-tls.example,cobalt strike (malware),(static)
";

/// IPv4 (link type RAW) from `src` to `dst` around an L4 header and payload.
fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0];
    p[2..4].copy_from_slice(&u16::try_from(20 + l4.len()).expect("short").to_be_bytes());
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(l4);
    p
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = sport.to_be_bytes().to_vec();
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(
        &u16::try_from(8 + payload.len())
            .expect("short")
            .to_be_bytes(),
    );
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

fn tcp_push(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut t = sport.to_be_bytes().to_vec();
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(payload);
    t
}

/// A classic pcap (link type RAW) of the frames, one second apart from `start_s`.
fn write_pcap(path: &Path, start_s: u32, frames: &[Vec<u8>]) {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&65535u32.to_le_bytes());
    out.extend_from_slice(&101u32.to_le_bytes());
    for (i, f) in (0u32..).zip(frames) {
        let len = u32::try_from(f.len()).expect("frame size");
        out.extend_from_slice(&(start_s + i).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(f);
    }
    std::fs::write(path, out).expect("write pcap");
}

/// Replays a capture (a DNS query, an HTTP request with XSS in its path and user agent, a
/// TLS ClientHello; 20 minutes ago) with the real `xtrail-sensor replay --pcap ...
/// --collector URL`, which publishes every event to the collector as sensor `gw-pcap`.
fn replay_capture(collector: &Collector, dir: &Path) {
    let csv = dir.join("trails.csv");
    let pcap = dir.join("morning.pcap");
    std::fs::write(&csv, PCAP_TRAILS).expect("trails");
    let req = format!(
        "GET {PCAP_XSS_PATH} HTTP/1.1\r\nHost: xss-host.example\r\nUser-Agent: {PCAP_XSS_UA}\r\n\r\n"
    );
    let frames = vec![
        ipv4(
            [198, 18, 0, 21],
            [198, 19, 0, 53],
            17,
            &udp(
                40001,
                53,
                &dns::query_message(7, "pcap-c2.xtrail-test.net", 1),
            ),
        ),
        ipv4(
            [198, 18, 0, 22],
            [198, 19, 0, 80],
            6,
            &tcp_push(40002, 80, req.as_bytes()),
        ),
        ipv4(
            [198, 18, 0, 23],
            [198, 19, 0, 44],
            6,
            &tcp_push(40003, 443, &tls::client_hello_record("pcap-tls.example")),
        ),
    ];
    let start = u32::try_from(now_us() / 1_000_000 - 20 * 60).expect("time fits");
    write_pcap(&pcap, start, &frames);
    let sensor = sensor_binary();
    let log = dir.join("events.jsonl");
    let out = Command::new(&sensor)
        .args(["replay", "--pcap"])
        .arg(&pcap)
        .arg("--trails")
        .arg(&csv)
        .args(["--no-heuristics", "--no-whitelist", "--events-log"])
        .arg(&log)
        .args(["--format", "json", "--sensor-name", "gw-pcap"])
        .args(["--collector", &collector.url(), "--token", SENSOR_TOKEN])
        .arg("--state-dir")
        .arg(dir.join("sensor-state"))
        .output()
        .expect("running xtrail-sensor replay");
    assert!(
        out.status.success(),
        "xtrail-sensor replay: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        lines.lines().count(),
        3,
        "one event per packet of the capture: {lines}"
    );
}

/// The `xtrail-sensor` binary next to this test's collector (`target/<profile>/`), built
/// with `cargo build -p xtrail-sensor` when it is not there yet (a test of this package
/// has no `CARGO_BIN_EXE_` of another package's binary).
fn sensor_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    // target/<profile>/deps/<this test> -> target/<profile>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable under target/<profile>/deps")
        .to_path_buf();
    let sensor = profile_dir.join("xtrail-sensor");
    if !sensor.exists() {
        let target_dir = profile_dir.parent().expect("target dir");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args([
            "build",
            "-p",
            "xtrail-sensor",
            "--bin",
            "xtrail-sensor",
            "--target-dir",
        ]);
        build.arg(target_dir);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build
            .status()
            .expect("running cargo build -p xtrail-sensor");
        assert!(status.success(), "cargo build -p xtrail-sensor failed");
    }
    assert!(sensor.exists(), "{} missing", sensor.display());
    sensor
}

/// A publisher that sends heartbeats every second as sensor `name` (silent once dropped).
fn heartbeating(collector: &Collector, spool: &Path, name: &str) -> Publisher {
    let cfg = PublisherConfig::new(collector.url(), SENSOR_TOKEN, name, spool);
    let p = Publisher::start(cfg).expect("publisher");
    p.set_status(SensorStatus {
        trail_set_version: "2026-12-01.1".into(),
        ..SensorStatus::default()
    });
    p.start_heartbeats(HeartbeatConfig {
        sensor_name: name.into(),
        identity: format!("{name}-identity"),
        version: "0.1.0".into(),
        interval: Duration::from_secs(1),
    })
    .expect("heartbeats");
    p
}

/// `xtrail-collector user add NAME --role ROLE [--scope CIDR]`, password on stdin.
fn add_user(data: &Path, name: &str, role: &str, scope: Option<&str>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtrail-collector"));
    cmd.args(["user", "add", name, "--role", role])
        .arg("--data-dir")
        .arg(data);
    if let Some(s) = scope {
        cmd.args(["--scope", s]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run user add");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .expect("password on stdin");
    let out = child.wait_with_output().expect("user add");
    assert!(
        out.status.success(),
        "user add {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    target.join("console-screenshots")
}

/// A JavaScript string literal.
fn js_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

fn login(page: &Page, base: &str, user: &str, password: &str) {
    page.goto(&format!("{base}/"));
    page.wait_for("!!document.querySelector('#username')", WAIT);
    page.js(&format!(
        "document.querySelector('#username').value = {}; \
         document.querySelector('#password').value = {}; \
         document.querySelector('form[action=\"/login\"] button[type=submit]').click(); true",
        js_str(user),
        js_str(password)
    ));
}

fn login_ok(page: &Page, base: &str, user: &str) {
    login(page, base, user, PASSWORD);
    page.wait_for("document.body.classList.contains('ready')", WAIT);
}

/// Waits until the threats table has a row whose text contains `needle`; returns its id.
fn row_with(page: &Page, needle: &str) -> String {
    let expr = format!(
        "(() => {{ const r = Array.from(document.querySelectorAll('#threat-rows tr[data-id]'))\
         .find((tr) => tr.innerText.includes({})); return r ? r.dataset.id : null; }})()",
        js_str(needle)
    );
    page.wait_for(&expr, WAIT)
        .as_str()
        .expect("row id")
        .to_string()
}

fn open_row(page: &Page, needle: &str) -> String {
    let id = row_with(page, needle);
    page.js(&format!(
        "document.querySelector('#threat-rows tr[data-id=\"' + CSS.escape({}) + '\"]').click(); true",
        js_str(&id)
    ));
    page.wait_for(
        &format!(
            "document.querySelector('#drawer').dataset.loaded === {}",
            js_str(&id)
        ),
        WAIT,
    );
    id
}

/// Picks a preset of the time range picker.
fn set_range(page: &Page, value: &str) {
    page.js(&format!(
        "(() => {{ const r = document.querySelector('#range'); r.value = {}; \
           r.dispatchEvent(new Event('change')); return true; }})()",
        js_str(value)
    ));
}

fn body_text(page: &Page) -> String {
    page.js("document.body.innerText")
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn search(page: &Page, q: &str) {
    page.js(&format!(
        "document.querySelector('#q').value = {}; \
         document.querySelector('#search-btn').click(); true",
        js_str(q)
    ));
}

/// No JavaScript dialog ever opened, no CSP violation, no uncaught exception, no failed
/// request other than those the test expects (`Page::expect_error`).
fn assert_clean(page: &Page, who: &str) {
    let dialogs = page.dialogs();
    assert!(dialogs.is_empty(), "{who}: a dialog opened: {dialogs:?}");
    let bad = page.errors();
    assert!(bad.is_empty(), "{who}: page errors: {bad:?}");
}

/// Injected elements from the payloads: any <img>, any <script> other than the console's
/// module, any <b>, any element with an inline event handler.
fn injected(page: &Page) -> serde_json::Value {
    page.js("(() => ({ img: document.querySelectorAll('img').length, \
           b: document.querySelectorAll('b[onmouseover]').length, \
           scripts: Array.from(document.querySelectorAll('script')).map((s) => s.src), \
           handlers: Array.from(document.querySelectorAll('*')).filter((e) => \
             Array.from(e.attributes).some((a) => a.name.startsWith('on'))).length }))()")
}

#[test]
fn console_in_a_real_browser() {
    let Some(chromium) = cdp::chromium_path() else {
        let msg = format!(
            "chromium not found at {} (apt-get install chromium; cargo xtask deps)",
            cdp::CHROMIUM
        );
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{msg}");
        }
        eprintln!("SKIP console_in_a_real_browser: {msg}");
        return;
    };
    let shots = screenshot_dir();

    let data = tempdir("console-ui");
    let spool = tempdir("console-ui-spool");
    add_user(data.path(), "alice", "analyst", None);
    add_user(data.path(), "bob", "analyst", None);
    add_user(data.path(), "vera", "viewer", None);
    add_user(data.path(), "sam", "analyst", Some(SCOPE));
    add_user(data.path(), "ada", "admin", None);
    let collector = Collector::start(data.path(), None, &[]);
    let base = format!("http://{}", collector.http);
    publish(&collector, spool.path(), &morning_events());
    let capture = tempdir("console-ui-pcap");
    replay_capture(&collector, capture.path());
    // Two sensors heartbeat; one of them stops (it goes silent after 3 intervals).
    let (east_spool, west_spool) = (tempdir("console-ui-east"), tempdir("console-ui-west"));
    let east = heartbeating(&collector, east_spool.path(), "gw-east");
    let west = heartbeating(&collector, west_spool.path(), "gw-west");

    let browser = Browser::launch(&chromium);

    // --- The login form; a wrong password is refused with a message. ---------------------
    let alice = browser.new_user_page(1440, 900);
    alice.goto(&format!("{base}/"));
    alice.wait_for("!!document.querySelector('#username')", WAIT);
    alice.screenshot(&shots.join("login.png"));
    login(&alice, &base, "alice", "wrong password");
    alice.wait_for(
        "!!document.querySelector('#username') && document.body.innerText.length > 0 \
         && !!document.querySelector('.error, [role=alert]')",
        WAIT,
    );
    assert_eq!(
        alice.js("document.cookie"),
        serde_json::json!(""),
        "the session cookie is HttpOnly"
    );
    // The browser logs the 401 of the refused login.
    alice.expect_error(&["status of 401", "/login"]);

    // --- alice (analyst) signs in and sees the morning's threats. -------------------------
    login_ok(&alice, &base, "alice");
    row_with(&alice, "198.18.0.10");
    row_with(&alice, "198.18.0.13");
    row_with(&alice, OUTSIDE);
    alice.wait_for(
        "document.querySelectorAll('#heatmap rect.day').length > 0",
        WAIT,
    );
    alice.wait_for(
        "document.querySelectorAll('#timeline rect.bar').length > 0",
        WAIT,
    );
    alice.wait_for(
        "document.querySelectorAll('#threat-rows svg.spark polyline').length > 0",
        WAIT,
    );
    let first_view = alice.js("document.body.dataset.firstViewMs");
    eprintln!("console first view (navigation to threats table drawn): {first_view} ms");
    let text = body_text(&alice);
    assert!(text.contains("malware-c2.example"), "{text}");
    assert!(text.contains("alice (analyst)"), "who is signed in: {text}");

    // The replayed capture's threats.
    row_with(&alice, "pcap-c2.xtrail-test.net");
    row_with(&alice, "pcap-tls.example");
    open_row(&alice, "198.18.0.22");
    let drawer = alice.js("document.querySelector('#drawer-body').innerText");
    let drawer = drawer.as_str().unwrap_or_default();
    assert!(
        drawer.contains(PCAP_XSS_UA),
        "replayed UA as text: {drawer}"
    );
    assert!(
        drawer.contains("<script>alert('pcap')</script>"),
        "replayed path as text: {drawer}"
    );

    // --- XSS payloads are shown as text, never run or parsed. ------------------------------
    let text = body_text(&alice);
    assert!(
        text.contains(XSS_TRAIL_UA),
        "the trail is shown as text: {text}"
    );
    open_row(&alice, "198.18.0.11");
    alice.wait_for(
        "document.querySelector('#drawer-body').innerText.includes('alert(\\'ua\\')')",
        WAIT,
    );
    let drawer = alice.js("document.querySelector('#drawer-body').innerText");
    let drawer = drawer.as_str().unwrap_or_default();
    assert!(drawer.contains(XSS_UA), "UA as text: {drawer}");
    assert!(
        drawer.contains("<script>alert('path')</script>"),
        "path as text: {drawer}"
    );
    open_row(&alice, "198.18.0.12");
    let inj = injected(&alice);
    assert_eq!(inj["img"], 0, "{inj}");
    assert_eq!(inj["b"], 0, "{inj}");
    assert_eq!(inj["handlers"], 0, "{inj}");
    assert_eq!(
        inj["scripts"],
        serde_json::json!([format!("{base}/static/app.js")]),
        "{inj}"
    );
    assert_clean(&alice, "alice after XSS payloads");

    // --- Sorting in the server: by count, then ascending. --------------------------------
    let first_row = "document.querySelector('#threat-rows tr[data-id]').innerText";
    alice.js("document.querySelector('th[data-sort=count]').click(); true");
    alice.wait_for(
        &format!("location.hash.includes('sort=count') && {first_row}.includes('198.18.0.10')"),
        WAIT,
    );
    alice.js("document.querySelector('th[data-sort=count]').click(); true");
    alice.wait_for(
        &format!(
            "location.hash.includes('order=asc') && !{first_row}.includes('malware-c2.example')"
        ),
        WAIT,
    );
    alice.js("document.querySelector('th[data-sort=last_seen]').click(); true");
    alice.wait_for("!location.hash.includes('sort=')", WAIT);

    // --- The query language filters in the server. ----------------------------------------
    search(&alice, "src:198.18.0.10 AND sev:high");
    alice.wait_for(
        "(() => { const rows = Array.from(document.querySelectorAll('#threat-rows tr[data-id]')); \
          return rows.length > 0 && rows.every((r) => r.innerText.includes('198.18.0.10')); })()",
        WAIT,
    );
    assert!(alice
        .js("location.hash")
        .as_str()
        .unwrap_or("")
        .contains("q="));
    search(&alice, "src:(");
    alice.wait_for("!document.querySelector('#error').hidden", WAIT);
    // The syntax help, and one of its examples put into the search box.
    alice.js("document.querySelector('#help-btn').click(); true");
    alice.wait_for(
        "document.querySelector('#help-popover').innerText.includes('sev:') && \
         !!document.querySelector('#help-popover a.example')",
        WAIT,
    );
    alice.js(
        "document.querySelector('#help-popover a.example').click(); \
              document.querySelector('#help-btn').click(); true",
    );
    assert_ne!(alice.js("document.querySelector('#q').value"), "src:(");
    // The browser logs the 400s of the bad query (the list, the charts).
    alice.expect_error(&["status of 400", "q=src%3A%28"]);
    search(&alice, "");
    row_with(&alice, "198.18.0.13");

    // --- Detail drawer: raw events (DNS), IOCs, related. -----------------------------------
    let c2 = open_row(&alice, "198.18.0.10");
    let drawer = alice.js("document.querySelector('#drawer-body').innerText");
    let drawer = drawer.as_str().unwrap_or_default().to_string();
    assert!(
        drawer.contains("malware-c2.example (A)"),
        "DNS query/type: {drawer}"
    );
    alice.wait_for(
        "Array.from(document.querySelectorAll('#drawer-body .related a.related-link')) \
           .some((a) => a.innerText.includes('second-stage.example'))",
        WAIT,
    );
    let iocs = alice.js("document.querySelector('#ioc-list').value");
    assert!(
        iocs.as_str()
            .unwrap_or_default()
            .contains("malware-c2[.]example"),
        "defanged IOC: {iocs}"
    );
    alice.screenshot(&shots.join("detail.png"));

    // --- alice triages; bob sees it. --------------------------------------------------------
    alice.js(
        "document.querySelector('#triage-status').value = 'investigating'; \
         document.querySelector('#triage-assignee').value = 'alice'; \
         document.querySelector('#triage-note').value = 'looking into the C2 lookups'; \
         document.querySelector('#triage-save').click(); true",
    );
    alice.wait_for(
        &format!(
            "(() => {{ const r = document.querySelector('#threat-rows tr[data-id=\"' + CSS.escape({}) + '\"]'); \
              return r && r.innerText.includes('investigating'); }})()",
            js_str(&c2)
        ),
        WAIT,
    );
    let bob = browser.new_user_page(1440, 900);
    login_ok(&bob, &base, "bob");
    let row = row_with(&bob, "198.18.0.10");
    assert_eq!(row, c2, "the same threat id for every analyst");
    bob.wait_for(
        &format!(
            "document.querySelector('#threat-rows tr[data-id=\"' + CSS.escape({}) + '\"]').innerText.includes('investigating')",
            js_str(&c2)
        ),
        WAIT,
    );
    open_row(&bob, "198.18.0.10");
    bob.wait_for(
        "document.querySelector('#drawer-body').innerText.includes('looking into the C2 lookups')",
        WAIT,
    );

    // Bulk: bob tags two threats at once; alice sees the tag after a refresh.
    bob.js("document.querySelector('#drawer-close').click(); true");
    bob.js(
        "(() => { for (const src of ['198.18.0.11', '198.18.0.12']) { \
            const tr = Array.from(document.querySelectorAll('#threat-rows tr[data-id]')).find((r) => r.innerText.includes(src)); \
            tr.querySelector('.row-select').click(); } return true; })()",
    );
    bob.wait_for("!document.querySelector('#bulk-bar').hidden", WAIT);
    bob.js("document.querySelector('#bulk-tag').value = 'xss-probe'; \
         document.querySelector('#bulk-apply').click(); true");
    bob.wait_for(
        "Array.from(document.querySelectorAll('#threat-rows tr[data-id]')).filter((r) => r.innerText.includes('xss-probe')).length === 2",
        WAIT,
    );
    // A false positive that suppresses its trail (for the sensors).
    open_row(&bob, "198.18.0.14");
    bob.js(
        "(() => { const s = document.querySelector('#triage-status'); s.value = 'false_positive'; \
           s.dispatchEvent(new Event('change')); \
           document.querySelector('#triage-suppress').value = 'trail'; \
           document.querySelector('#triage-save').click(); return true; })()",
    );
    bob.wait_for(
        "Array.from(document.querySelectorAll('#threat-rows tr[data-id]')).some((r) => \
           r.innerText.includes('198.18.0.14') && r.innerText.includes('false positive'))",
        WAIT,
    );
    let sup = bob.js("fetch('/api/suppressions').then((r) => r.text())");
    assert!(
        sup.as_str().unwrap_or_default().contains("bad-tls.example"),
        "suppressions: {sup}"
    );
    bob.js("document.querySelector('#drawer-close').click(); true");
    bob.screenshot(&shots.join("threats.png"));
    assert_clean(&bob, "bob");

    // --- vera (viewer) sees the same, cannot change anything. ---------------------------
    let vera = browser.new_user_page(1440, 900);
    login_ok(&vera, &base, "vera");
    row_with(&vera, "198.18.0.10");
    assert_eq!(
        vera.js("document.querySelectorAll('.row-select').length"),
        0
    );
    open_row(&vera, "198.18.0.10");
    assert_eq!(vera.js("!!document.querySelector('#triage-form')"), false);
    vera.wait_for("!!document.querySelector('#read-only-note')", WAIT);
    vera.wait_for(
        "document.querySelector('#drawer-body').innerText.includes('investigating')",
        WAIT,
    );
    let status = vera.js(&format!(
        "(async () => {{ const s = await (await fetch('/api/session')).json(); \
           const r = await fetch('/api/threats/' + encodeURIComponent({}) + '/triage', {{ method: 'POST', \
             headers: {{ 'content-type': 'application/json', 'x-csrf-token': s.csrf }}, \
             body: JSON.stringify({{ status: 'resolved' }}) }}); return r.status; }})()",
        js_str(&c2)
    ));
    assert_eq!(status, 403, "a viewer's triage is refused");
    // The browser logs the 403.
    vera.expect_error(&["status of 403", "/triage"]);

    // --- sam (scoped to 198.18.0.0/24) never sees 198.18.1.x. ---------------------------
    let sam = browser.new_user_page(1440, 900);
    login_ok(&sam, &base, "sam");
    sam.js(
        "window.__live = []; const es = new EventSource('/api/live'); \
         es.addEventListener('threat', (e) => window.__live.push(e.data)); true",
    );
    row_with(&sam, "198.18.0.10");
    let text = body_text(&sam);
    assert!(
        !text.contains(OUTSIDE),
        "scoped page shows {OUTSIDE}: {text}"
    );
    assert!(!text.contains("other-team.example"), "{text}");
    let ids = sam.js("Array.from(document.querySelectorAll('#threat-rows tr[data-id]')).map((r) => r.dataset.id)");
    for id in ids.as_array().expect("ids") {
        let id = id.as_str().expect("id");
        sam.js(&format!(
            "document.querySelector('#threat-rows tr[data-id=\"' + CSS.escape({}) + '\"]').click(); true",
            js_str(id)
        ));
        sam.wait_for(
            &format!(
                "document.querySelector('#drawer').dataset.loaded === {}",
                js_str(id)
            ),
            WAIT,
        );
        let d = sam.js("document.querySelector('#drawer').innerText");
        let d = d.as_str().unwrap_or_default();
        assert!(
            !d.contains(OUTSIDE),
            "scoped detail {id} shows {OUTSIDE}: {d}"
        );
    }
    let exports = sam.js(
        "(async () => { const out = []; \
           for (const a of ['#export-csv', '#export-json', '#export-iocs']) { \
             const r = await fetch(document.querySelector(a).href); out.push(r.status + ' ' + await r.text()); } \
           return out; })()",
    );
    for e in exports.as_array().expect("exports") {
        let e = e.as_str().unwrap_or_default();
        assert!(e.starts_with("200 "), "export: {e}");
        assert!(!e.contains(OUTSIDE), "scoped export shows {OUTSIDE}: {e}");
    }

    // --- Time range picker: the last hour still holds the morning (40 min ago). ----------
    set_range(&alice, "1h");
    alice.wait_for("location.hash.includes('range=1h')", WAIT);
    row_with(&alice, "198.18.0.10");
    set_range(&alice, "7d");
    alice.wait_for("location.hash.includes('range=7d')", WAIT);
    row_with(&alice, "198.18.0.10");
    // A heatmap day with events opens that day as a custom range.
    alice.js(
        "(() => { const d = Array.from(document.querySelectorAll('#heatmap rect.day')) \
           .filter((r) => Number(r.dataset.count) > 0).pop(); \
           d.dispatchEvent(new MouseEvent('click', { bubbles: true })); return true; })()",
    );
    alice.wait_for(
        "location.hash.includes('range=custom') && !document.querySelector('#custom-range').hidden",
        WAIT,
    );
    row_with(&alice, "198.18.0.10");
    set_range(&alice, "24h");
    alice.wait_for("!location.hash.includes('range=')", WAIT);

    // --- Live: new events while the pages are open; alice opted in to notifications. ---
    alice.grant(&base, &["notifications"]);
    // Record the notifications the page creates (the headless browser shows none).
    alice.js(
        "(() => { window.__notified = []; const N = window.Notification; \
         window.Notification = class extends N { constructor(t, o) { super(t, o); window.__notified.push(t + ' ' + (o && o.body)); } }; \
         Object.defineProperty(window.Notification, 'permission', { get: () => N.permission }); return true; })()",
    );
    alice.js("document.querySelector('#notify-btn').click(); true");
    alice.wait_for(
        "document.querySelector('#notify-btn').classList.contains('on')",
        WAIT,
    );
    let before = alice.js("Number(document.querySelector('#live-count').textContent)");
    let t = now_us();
    publish(
        &collector,
        spool.path(),
        &[
            event(
                t,
                "198.18.1.77",
                "198.19.0.53",
                53,
                "UDP",
                EventType::Dns,
                "live-other-team.example",
                "qakbot (malware)",
                Severity::High,
                dns("live-other-team.example"),
            ),
            event(
                t + 1,
                "198.18.0.99",
                "198.19.0.53",
                53,
                "UDP",
                EventType::Dns,
                "live-new.example",
                "qakbot (malware)",
                Severity::High,
                dns("live-new.example"),
            ),
        ],
    );
    alice.wait_for(
        &format!(
            "Number(document.querySelector('#live-count').textContent) > {}",
            before.as_u64().unwrap_or(0)
        ),
        WAIT,
    );
    alice.wait_for(
        "window.__notified.some((n) => n.includes('live-new.example'))",
        WAIT,
    );
    alice.js("document.querySelector('#live-badge').click(); true");
    row_with(&alice, "198.18.0.99");
    sam.wait_for(
        "window.__live.some((d) => d.includes('live-new.example'))",
        WAIT,
    );
    // The out-of-scope one was published first: had it been sent, it would be here now.
    let live = sam.js("window.__live.join('\\n')");
    assert!(
        !live.as_str().unwrap_or_default().contains(OUTSIDE),
        "scoped live stream: {live}"
    );
    assert!(!body_text(&sam).contains(OUTSIDE));

    // --- Sensors page: the stopped sensor is flagged silent. -----------------------------
    drop(west);
    std::thread::sleep(Duration::from_secs(4));
    alice.js("document.querySelector('#nav-sensors').click(); true");
    alice.wait_for(
        "!document.querySelector('#view-sensors').hidden && \
         (document.querySelectorAll('#sensor-rows tr').length > 0 || !document.querySelector('#sensors-error').hidden)",
        WAIT,
    );
    assert!(
        alice.js("document.querySelector('#sensors-error').hidden") == true,
        "sensors: {}",
        body_text(&alice)
    );
    let sensor_row = |name: &str, class: &str| {
        format!(
            "(() => {{ const r = document.querySelector('#sensor-rows tr[data-name=' + JSON.stringify({}) + ']'); \
               return !!r && r.classList.contains({}); }})()",
            js_str(name),
            js_str(class)
        )
    };
    // Refreshed until the silence shows (the collector judges it at request time).
    let deadline = std::time::Instant::now() + WAIT;
    while !alice.becomes(&sensor_row("gw-west", "silent"), Duration::from_secs(2)) {
        assert!(
            std::time::Instant::now() < deadline,
            "gw-west never flagged silent: {}",
            body_text(&alice)
        );
        alice.js("document.querySelector('#sensors-refresh').click(); true");
    }
    alice.wait_for(&sensor_row("gw-east", "ok"), WAIT);
    // gw-test stored events but never sent a heartbeat.
    alice.wait_for(&sensor_row("gw-test", "unknown"), WAIT);
    let west_text = alice.js("document.querySelector('#sensor-rows tr.silent').innerText");
    assert!(
        west_text.as_str().unwrap_or_default().contains("SILENT"),
        "{west_text}"
    );
    alice.screenshot(&shots.join("sensors.png"));
    drop(east);

    // --- Audit log: an admin view, hidden from everyone else. ---------------------------
    assert_eq!(
        alice.js("document.querySelector('#nav-audit').hidden"),
        true,
        "an analyst has no audit log tab"
    );
    let refused = alice.js("fetch('/api/audit').then((r) => r.status)");
    assert_eq!(refused, 403, "the audit API is for admins");
    // The browser logs the 403.
    alice.expect_error(&["status of 403", "/api/audit"]);
    let ada = browser.new_user_page(1440, 900);
    login_ok(&ada, &base, "ada");
    ada.wait_for("!document.querySelector('#nav-audit').hidden", WAIT);
    ada.js("document.querySelector('#nav-audit').click(); true");
    ada.wait_for(
        "!document.querySelector('#view-audit').hidden && \
         (document.querySelectorAll('#audit-rows tr[data-action]').length > 0 || !document.querySelector('#audit-error').hidden)",
        WAIT,
    );
    let audit = ada.js("document.querySelector('#audit').innerText");
    let audit = audit.as_str().unwrap_or_default();
    // alice's refused password, her sign-in, her triage change with its note.
    for needle in ["login_failed", "alice", "triage", "investigating", "ada"] {
        assert!(
            audit.contains(needle),
            "audit log lacks {needle:?}: {audit}"
        );
    }
    assert_eq!(
        ada.js("document.querySelectorAll('#audit-rows tr[data-action=\"triage\"]').length > 0"),
        true
    );
    ada.screenshot(&shots.join("audit.png"));

    for (p, who) in [
        (&alice, "alice"),
        (&bob, "bob"),
        (&vera, "vera"),
        (&sam, "sam"),
        (&ada, "ada"),
    ] {
        assert_clean(p, who);
        let inj = injected(p);
        assert_eq!(inj["img"], 0, "{who}: {inj}");
        assert_eq!(inj["handlers"], 0, "{who}: {inj}");
    }

    // --- Logout: back to the form, the session is gone. --------------------------------
    alice.js("document.querySelector('#logout-btn').click(); true");
    alice.wait_for(
        "!!document.querySelector('#username') && !document.querySelector('#threat-rows')",
        WAIT,
    );
    let after = alice.js("fetch('/api/session').then((r) => r.status)");
    assert_eq!(after, 401, "the session ended");
    // bob is still signed in.
    let bob_session = bob.js("fetch('/api/session').then((r) => r.status)");
    assert_eq!(bob_session, 200);
}

/// One HTTP/1.1 GET (the path sent exactly as given): (status, header lines lowercased
/// as `name: value`, body).
fn raw_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let r = xtrail_bench::http::get(addr, path).expect("GET");
    let head = r
        .headers
        .iter()
        .map(|(k, v)| format!("{k}: {}\n", v.to_ascii_lowercase()))
        .collect();
    (r.status, head, r.body)
}

#[test]
fn static_routes_serve_only_embedded_files_and_pages_carry_the_csp() {
    let data = tempdir("console-static");
    let collector = Collector::start(data.path(), None, &[]);
    let addr = collector.http;

    for (name, ty) in [
        ("app.js", "text/javascript"),
        ("app.css", "text/css"),
        ("dom.js", "text/javascript"),
        ("favicon.svg", "image/svg+xml"),
    ] {
        let (status, head, body) = raw_get(addr, &format!("/static/{name}"));
        assert_eq!(status, 200, "{name}: {head}");
        assert!(
            head.contains(&format!("content-type: {ty}")),
            "{name}: {head}"
        );
        assert!(head.contains("etag: \""), "{name}: {head}");
        assert!(head.contains("cache-control: no-cache"), "{name}: {head}");
        assert!(
            head.contains("x-content-type-options: nosniff"),
            "{name}: {head}"
        );
        assert!(!body.is_empty());
    }
    for path in [
        "/static/../Cargo.toml",
        "/static/..%2fCargo.toml",
        "/static/%2e%2e/Cargo.toml",
        "/static/%2e%2e%2fCargo.toml",
        "/static/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/static/..%5c..%5cCargo.toml",
        "/static//etc/passwd",
        "/static/%2fetc%2fpasswd",
        "/static/app.js/",
        "/static/app.js%00.png",
        "/static/index.html",
        "/static/assets.rs",
        "/static/",
        "/static/%ff",
    ] {
        let (status, _, body) = raw_get(addr, path);
        assert_eq!(status, 404, "{path}: {body}");
        assert!(
            !body.contains("[package]") && !body.contains("root:"),
            "{path}"
        );
    }

    // The login page (no session): strict CSP, no inline script or style.
    let (status, head, body) = raw_get(addr, "/");
    assert_eq!(status, 200, "{head}");
    assert!(
        head.contains(
            "content-security-policy: default-src 'self'; script-src 'self'; style-src 'self'"
        ),
        "{head}"
    );
    assert!(head.contains("frame-ancestors 'none'"), "{head}");
    assert!(body.contains("action=\"/login\""), "{body}");
    assert!(
        !body.contains("style=") && !body.contains("<style"),
        "{body}"
    );
    assert!(!body.contains("<script>"), "{body}");
    // Without a session the API answers 401.
    let (status, _, _) = raw_get(addr, "/api/session");
    assert_eq!(status, 401);
}
