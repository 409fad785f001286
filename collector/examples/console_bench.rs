//! Console API benchmark: a fixture of realistic events written straight into a fresh
//! SQLite store (the collector's own storage writer, batches of 10,000), then a collector
//! (in this process) that aggregates them into threats at start, then every console API
//! call measured over loopback HTTP (a new connection per request, as a browser's first
//! request would), p50/p95/max.
//!
//! `cargo run --release -p xtrail-collector --example console_bench -- [EVENTS] [REPEATS]`
//! (defaults 1,000,000 events over the last 7 days, 40 requests per call).
//!
//! The fixture ([`fixture`]): 5,000 sources in 198.18.0.0/15, each hitting up to 8 of
//! 3,300 trails (domains, IPs, URLs) with skewed popularity, 10% scan/web-scan heuristics,
//! 1% DNS exhaustion; severities mixed; DNS/HTTP/TLS details set as a sensor would.
//!
//! Then the first view in a real browser ([`first_view`]): Debian's headless chromium,
//! driven over the DevTools protocol by the same client as `tests/console_browser.rs`
//! (`tests/cdp/mod.rs`, included below), signs in as an analyst and loads the default view
//! (threats of the last 24 h) several times; each load is timed by the browser's own clock
//! from the navigation's start to the first animation frame after the threat table got its
//! rows. Without chromium this part is reported as not measured.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[path = "../tests/cdp/mod.rs"]
mod cdp;

use xtrail_collector::access::{Role, Scope};
use xtrail_collector::config::{ServeArgs, ServerConfig};
use xtrail_collector::storage::sqlite::SqliteStorage;
use xtrail_collector::storage::Storage as _;
use xtrail_proto::v1;

const TOKEN: &str = "bench-token";
/// The console user the browser signs in as.
const USER: &str = "bench-analyst";
const PASSWORD: &str = "bench passphrase 1";
/// Loads of the default view timed in the browser (after the sign-in's own).
const LOADS: usize = 10;

/// Set up in every new document before the page's scripts: records, on the first
/// animation frame after the threat table has rows, the time since the navigation started
/// (the document's time origin tells loads apart).
const RENDER_PROBE: &str = r#"(() => {
  const rows = () => document.querySelectorAll('#threat-rows tr[data-id]').length;
  const obs = new MutationObserver(() => {
    if (rows() > 0) {
      obs.disconnect();
      requestAnimationFrame(() => {
        window.__xtrailRendered = { ms: performance.now(), origin: performance.timeOrigin, rows: rows() };
      });
    }
  });
  obs.observe(document, { childList: true, subtree: true });
})();"#;

/// The render probe's record of a load other than `previous` (by time origin), bounded.
fn rendered(page: &cdp::Page, previous: f64) -> anyhow::Result<(f64, f64, u64)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(v) = page.eval("window.__xtrailRendered || null") {
            let origin = v["origin"].as_f64();
            if let Some(origin) = origin.filter(|o| *o != previous) {
                return Ok((
                    v["ms"].as_f64().unwrap_or(f64::NAN),
                    origin,
                    v["rows"].as_u64().unwrap_or(0),
                ));
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the threat table did not render within 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Signs in with headless chromium and times the default view: (sign-in to table ms,
/// loads' ms sorted, rows shown); `None` without chromium.
fn first_view(http: SocketAddr) -> anyhow::Result<Option<(f64, Vec<f64>, u64)>> {
    let Some(chromium) = cdp::chromium_path() else {
        println!(
            "browser: chromium not found ({}); first view not measured",
            cdp::CHROMIUM
        );
        return Ok(None);
    };
    let browser = cdp::Browser::launch(&chromium);
    let page = browser.new_user_page(1440, 900);
    page.on_new_document(RENDER_PROBE);
    let base = format!("http://{http}");
    page.goto(&format!("{base}/"));
    page.wait_for(
        "!!document.querySelector('#username')",
        Duration::from_secs(30),
    );
    page.js(&format!(
        "document.querySelector('#username').value = {}; \
         document.querySelector('#password').value = {}; \
         document.querySelector('form[action=\"/login\"] button[type=submit]').click(); true",
        serde_json::Value::from(USER),
        serde_json::Value::from(PASSWORD)
    ));
    let (login_ms, mut origin, rows) = rendered(&page, f64::NAN)?;
    let mut loads = Vec::with_capacity(LOADS);
    for _ in 0..LOADS {
        page.navigate(&format!("{base}/"));
        let (ms, o, _) = rendered(&page, origin)?;
        origin = o;
        loads.push(ms);
    }
    loads.sort_by(f64::total_cmp);
    Ok(Some((login_ms, loads, rows)))
}
const HOUR: i64 = 3_600_000_000;

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// Skewed pick in 0..n (small values more often).
    fn skewed(&mut self, n: u64) -> u64 {
        let a = self.below(n);
        let b = self.below(n);
        a.min(b)
    }
}

/// Event `i` of `n`, spread over the 7 days before `now` in time order.
fn event(rng: &mut Rng, i: u64, n: u64, now: i64) -> v1::Event {
    let span = 7 * 24 * HOUR;
    let ts_us = now - span + (i as i64) * (span / n as i64) + rng.below(1000) as i64;
    let s = rng.skewed(5000);
    let src = format!("198.18.{}.{}", s / 250, s % 250 + 1);
    let sev = [1, 2, 2, 3][rng.below(4) as usize];
    let mut e = v1::Event {
        ts_us,
        sensor: format!("edge-{}", s % 4),
        src_ip: src.clone(),
        src_port: 1024 + rng.below(60_000) as u32,
        severity: sev,
        action: 1,
        ..Default::default()
    };
    let roll = rng.below(100);
    if roll < 1 {
        let base = rng.below(20);
        e.dst_ip = "198.19.255.53".into();
        e.dst_port = 53;
        e.proto = "UDP".into();
        e.r#type = "DNS".into();
        e.trail = format!("({:x}).victim{base}.example", rng.next() & 0xffff_ffff);
        e.info = "potential dns exhaustion (suspicious)".into();
        e.reference = "(heuristic)".into();
        e.dns = Some(v1::DnsDetails {
            query: Some(format!("{:x}.victim{base}.example", rng.next())),
            qtype: Some("A".into()),
        });
    } else if roll < 11 {
        let web = roll < 6;
        e.dst_ip = format!("198.19.{}.{}", rng.below(250), rng.below(250) + 1);
        e.proto = "TCP".into();
        e.reference = "(heuristic)".into();
        if web {
            e.dst_port = 80;
            e.r#type = "PATH".into();
            e.trail = format!("/admin{}.php", rng.below(500));
            e.info = "potential web scanning".into();
        } else {
            e.dst_port = rng.below(65_535) as u32 + 1;
            e.r#type = "IP".into();
            e.trail = src;
            e.info = "potential port scanning".into();
        }
    } else {
        // Each source keeps to up to 8 trails of its own.
        let k = rng.skewed(8);
        let t = (s * 7919 + k * 104_729) % 3300;
        e.proto = "TCP".into();
        match t % 11 {
            0..=6 => {
                e.dst_ip = "198.19.255.53".into();
                e.dst_port = 53;
                e.proto = "UDP".into();
                e.r#type = "DNS".into();
                e.trail = format!("c2-{t}.bad{}.example", t % 40);
                e.info = [
                    "asyncrat (malware)",
                    "emotet (malware)",
                    "suspicious domain",
                ][(t % 3) as usize]
                    .into();
                e.reference = ["(static)", "abuse.ch", "(custom)"][(t % 3) as usize].into();
                e.dns = Some(v1::DnsDetails {
                    query: Some(e.trail.clone()),
                    qtype: Some("A".into()),
                });
            }
            7..=9 => {
                e.dst_ip = format!("198.19.{}.{}", t % 250, t / 250 + 1);
                e.dst_port = [443, 8080, 4444][(t % 3) as usize];
                e.r#type = "IP".into();
                e.trail = e.dst_ip.clone();
                e.info = "known attacker".into();
                e.reference = "blocklist.example".into();
            }
            _ => {
                e.dst_ip = format!("198.19.{}.{}", t % 250, 200);
                e.dst_port = 80;
                e.r#type = "URL".into();
                e.trail = format!("dl{t}.example/payload.bin");
                e.info = "malware distribution".into();
                e.reference = "urlhaus.example".into();
                e.http = Some(v1::HttpDetails {
                    method: Some("GET".into()),
                    host: Some(format!("dl{t}.example")),
                    path: Some("/payload.bin".into()),
                    user_agent: Some("Mozilla/5.0 <script>x</script>".into()),
                });
            }
        }
    }
    e.seq = i + 1;
    e
}

/// Stores `n` fixture events into `dir`'s SQLite store; returns the seconds it took.
fn fixture(dir: &std::path::Path, n: u64, now: i64) -> anyhow::Result<f64> {
    let start = Instant::now();
    let store = SqliteStorage::open(dir)?;
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let mut i = 0;
    while i < n {
        let mut batches = Vec::new();
        for _ in 0..5 {
            let m = (n - i).min(10_000);
            if m == 0 {
                break;
            }
            let evs: Vec<v1::Event> = (i..i + m).map(|k| event(&mut rng, k, n, now)).collect();
            i += m;
            batches.push(("bench/fixture".to_string(), evs));
        }
        for r in store.insert_batches(batches) {
            r?;
        }
    }
    Ok(start.elapsed().as_secs_f64())
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let r = xtrail_bench::http::parse(&get_bytes(addr, path)).expect("a well-formed answer");
    (r.status, r.body)
}

/// The whole answer to a GET of `path` with the subscriber token, as bytes.
fn get_bytes(addr: SocketAddr, path: &str) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    read_all(&mut s, &mut None)
}

/// The status of `path`, after reading the whole answer (bytes, no decoding: the time is
/// the server's and the wire's, not this client's).
fn get_status(addr: SocketAddr, path: &str) -> u16 {
    get_bytes(addr, path)
        .get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Reads the whole answer; sets `first` to when the first byte of the body arrived.
fn read_all(s: &mut TcpStream, first: &mut Option<Instant>) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = s.read(&mut chunk).expect("read");
        if n == 0 {
            return buf;
        }
        buf.extend_from_slice(&chunk[..n]);
        if first.is_none() {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                if buf.len() > end + 4 {
                    *first = Some(Instant::now());
                }
            }
        }
    }
}

/// Time to the first byte of the body of `path`, ms.
fn first_byte_ms(addr: SocketAddr, path: &str) -> f64 {
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut first = None;
    read_all(&mut s, &mut first);
    first.map_or(f64::NAN, |f| (f - t).as_secs_f64() * 1000.0)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() -> anyhow::Result<()> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = *args.first().unwrap_or(&1_000_000);
    let repeats = *args.get(1).unwrap_or(&40) as usize;
    let data = tempfile::tempdir()?;
    let now = now_us();
    let stored_s = fixture(data.path(), n, now)?;
    {
        let db = xtrail_collector::console::db::ConsoleDb::open(data.path())?;
        xtrail_collector::console::users::add(&db, USER, PASSWORD, Role::Analyst, &Scope::all())?;
    }
    println!(
        "fixture: {n} events stored in {stored_s:.1} s ({:.0} events/s)",
        n as f64 / stored_s
    );

    let cfg = ServerConfig::from_args(ServeArgs {
        data_dir: Some(data.path().to_path_buf()),
        grpc: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        http: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        subscriber_tokens: vec![TOKEN.into()],
        sensor_tokens: vec!["bench-sensor".into()],
        ..ServeArgs::default()
    })?;
    let (tx, rx) = std::sync::mpsc::channel();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let started = Instant::now();
    rt.spawn(async move {
        let r = xtrail_collector::server::serve(cfg, std::future::pending(), move |b| {
            let _ = tx.send(b.http);
        })
        .await;
        if let Err(e) = r {
            eprintln!("collector: {e:#}");
        }
    });
    let http = rx.recv_timeout(Duration::from_secs(60))?;
    // Catch-up: the follower aggregates every stored event.
    let (_, health) = get(http, "/api/health");
    let last: u64 = serde_json::from_str::<serde_json::Value>(&health)?["last_cursor"]
        .as_u64()
        .unwrap_or(n);
    let total_threats;
    loop {
        let (_, body) = get(http, "/api/threats?limit=1&from=0");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if v["aggregated_cursor"].as_u64() == Some(last) {
            total_threats = v["total"].as_u64().unwrap_or(0);
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "aggregation did not finish: {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let agg_s = started.elapsed().as_secs_f64();
    println!(
        "aggregated: {n} events into {total_threats} threats in {agg_s:.1} s ({:.0} events/s, at start)",
        n as f64 / agg_s
    );

    let week = now / 1_000_000 - 7 * 86_400;
    let (_, top) = get(
        http,
        &format!("/api/threats?from={week}&sort=count&limit=1"),
    );
    let top: serde_json::Value = serde_json::from_str(&top)?;
    let top_id = top["threats"][0]["id"]
        .as_str()
        .unwrap_or("none")
        .to_string();
    let q = "q=sev%3A%3E%3Dmedium%20AND%20src%3A198.18.0.0%2F20%20AND%20NOT%20status%3Aresolved";
    let q_text = "q=bad1*%20OR%20%22port%20scanning%22%20OR%20trail%3A*.php";
    let calls: Vec<(&str, String)> = vec![
        ("threats 24h", "/api/threats".into()),
        ("threats 7d", format!("/api/threats?from={week}")),
        (
            "threats 7d q fields",
            format!("/api/threats?from={week}&{q}"),
        ),
        (
            "threats 7d q text",
            format!("/api/threats?from={week}&{q_text}"),
        ),
        (
            "threats 7d sort=count",
            format!("/api/threats?from={week}&sort=count&order=desc"),
        ),
        ("threat detail", format!("/api/threats/{top_id}")),
        ("stats daily", "/api/stats/daily".into()),
        (
            "stats timeline 7d",
            format!("/api/stats/timeline?from={week}"),
        ),
        (
            "threats.csv 24h 1000 rows",
            "/api/threats.csv?limit=1000".into(),
        ),
        (
            "threats.json 24h 1000 rows",
            "/api/threats.json?limit=1000".into(),
        ),
        ("threats.csv 24h all rows", "/api/threats.csv".into()),
        ("threats.json 24h all rows", "/api/threats.json".into()),
        ("iocs 24h", "/api/iocs".into()),
        ("search-help", "/api/search-help".into()),
    ];
    let mut worst: f64 = 0.0;
    let mut rows = Vec::new();
    for (name, path) in &calls {
        let (st, body) = get(http, path);
        anyhow::ensure!(st == 200, "{name}: {st} {body}");
        let bytes = body.len();
        let mut ms = Vec::with_capacity(repeats);
        for _ in 0..repeats {
            let t = Instant::now();
            let st = get_status(http, path);
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
            anyhow::ensure!(st == 200, "{name}: {st}");
        }
        ms.sort_by(f64::total_cmp);
        let (p50, p95, max) = (pct(&ms, 0.5), pct(&ms, 0.95), pct(&ms, 1.0));
        let mut fb: Vec<f64> = (0..repeats).map(|_| first_byte_ms(http, path)).collect();
        fb.sort_by(f64::total_cmp);
        let fb95 = pct(&fb, 0.95);
        // Every call, full exports included, is judged by its whole answer.
        worst = worst.max(p95);
        println!(
            "console: {name} | p50 {p50:.2} ms | p95 {p95:.2} ms | max {max:.2} ms | first byte p95 {fb95:.2} ms | {bytes} bytes"
        );
        rows.push(format!(
            "{{\"call\":\"{name}\",\"path\":\"{}\",\"p50_ms\":{p50:.3},\"p95_ms\":{p95:.3},\"max_ms\":{max:.3},\"first_byte_p95_ms\":{fb95:.3},\"bytes\":{bytes}}}",
            path.replace('"', "%22")
        ));
    }
    println!(
        "worst p95 (whole answers): {worst:.2} ms over {} calls, {repeats} requests each",
        calls.len()
    );
    let view = match first_view(http)? {
        Some((login_ms, loads, shown)) => {
            let (p50, p95, max) = (pct(&loads, 0.5), pct(&loads, 0.95), pct(&loads, 1.0));
            println!(
                "browser: first view ({shown} rows): sign-in to table {login_ms:.1} ms; {} loads p50 {p50:.1} ms, p95 {p95:.1} ms, max {max:.1} ms",
                loads.len()
            );
            format!(
                "{{\"rows\":{shown},\"login_ms\":{login_ms:.1},\"loads\":{},\"p50_ms\":{p50:.1},\"p95_ms\":{p95:.1},\"max_ms\":{max:.1}}}",
                loads.len()
            )
        }
        None => "null".to_string(),
    };
    println!(
        "json: {{\"events\":{n},\"threats\":{total_threats},\"fixture_s\":{stored_s:.1},\"aggregate_s\":{agg_s:.1},\"worst_p95_ms\":{worst:.3},\"first_view\":{view},\"calls\":[{}]}}",
        rows.join(",")
    );
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}
