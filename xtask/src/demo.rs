//! `cargo xtask demo`: the sensor on a veth pair, fed clean traffic and traffic to and from
//! trail addresses, with the events printed as they arrive and a summary at the end.

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use xtrail_bench::frames::{v4, Frame};
use xtrail_bench::netns::VethPair;
use xtrail_detect::trails::{LoadOptions, TrailSet};
use xtrail_detect::whitelist::Whitelist;

use crate::paths;

/// Trail addresses the demo sends to, picked from the loaded set.
struct Sample {
    ipv4: Vec<(IpAddr, String)>,
    ipport: Vec<(IpAddr, u16, String)>,
    cidr: Vec<(IpAddr, String)>,
    ipv6: Vec<(IpAddr, String)>,
    /// Domain trails queried over DNS (exactly and as a `www.` subdomain).
    domains: Vec<(String, String)>,
    /// A `host/path` URL trail requested over HTTP.
    url: Option<(String, String, String)>,
    /// A domain trail sent as a TLS SNI.
    sni: Option<(String, String)>,
}

fn pick(trails: &TrailSet, whitelist: &Whitelist) -> Sample {
    let info = |id: u32| {
        trails
            .labels
            .get(id as usize)
            .map(|l| l.info.clone())
            .unwrap_or_default()
    };
    let ok = |a: IpAddr| !whitelist.is_ip_whitelisted(a);
    let mut v4s: Vec<_> = trails
        .ip
        .v4
        .iter()
        .map(|(k, v)| (IpAddr::from(k), v))
        .collect();
    v4s.sort();
    let mut ports: Vec<_> = trails
        .ip
        .ipport
        .iter()
        .filter_map(|((a, p), v)| {
            let a = std::net::Ipv6Addr::from(a);
            a.to_ipv4_mapped().map(|a4| (IpAddr::V4(a4), p, v))
        })
        .collect();
    ports.sort();
    let mut cidrs: Vec<_> = trails.ip.cidr4.clone();
    cidrs.sort();
    let mut v6s: Vec<_> = trails
        .ip
        .v6
        .iter()
        .map(|(k, v)| (IpAddr::from(*k), *v))
        .collect();
    v6s.sort();
    // Spread the picks over the sorted sets so the demo shows different families.
    let spread = |n: usize, len: usize| -> Vec<usize> {
        if len == 0 {
            return Vec::new();
        }
        (0..n.min(len)).map(|i| i * len / n.min(len)).collect()
    };
    let mut names: Vec<(&str, u32)> = trails
        .domains
        .iter()
        .filter(|(d, l)| {
            d.len() < 40
                && d.split('.').count() == 2
                && d.bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'.' || b == b'-')
                && info(*l).contains("(malware)")
                && !whitelist.is_domain_whitelisted(d)
                && !xtrail_detect::whitelist::is_ignored_suffix(d)
                && trails.domains.lookup(d).is_some()
        })
        .collect();
    names.sort();
    let names: Vec<(String, String)> = spread(4, names.len())
        .into_iter()
        .map(|i| (names[i].0.to_string(), info(names[i].1)))
        .collect();
    let mut urls: Vec<(&str, u32)> = trails
        .urls
        .iter()
        .filter(|(u, _)| {
            !u.starts_with('/')
                && u.len() < 60
                && u.split_once('/').is_some_and(|(h, p)| {
                    h.contains('.') && !h.contains(':') && p.len() > 3 && !p.contains(['?', ' '])
                })
        })
        .collect();
    urls.sort();
    let url = urls.get(urls.len() / 2).and_then(|(u, l)| {
        let (host, path) = u.split_once('/')?;
        Some((host.to_string(), format!("/{path}"), info(*l)))
    });
    Sample {
        domains: names.iter().take(3).cloned().collect(),
        sni: names.get(3).cloned(),
        url,
        ipv4: spread(4, v4s.len())
            .into_iter()
            .map(|i| v4s[i])
            .filter(|(a, _)| ok(*a))
            .map(|(a, v)| (a, info(v)))
            .collect(),
        ipport: spread(2, ports.len())
            .into_iter()
            .map(|i| ports[i])
            .filter(|(a, _, _)| ok(*a))
            .map(|(a, p, v)| (a, p, info(v)))
            .collect(),
        cidr: spread(1, cidrs.len())
            .into_iter()
            .map(|i| cidrs[i])
            .map(|(a, prefix, v)| {
                let mut host = a;
                if prefix < 32 {
                    host[3] |= 7;
                }
                (IpAddr::from(host), info(v))
            })
            .filter(|(a, _)| ok(*a))
            .collect(),
        ipv6: spread(1, v6s.len())
            .into_iter()
            .map(|i| v6s[i])
            .filter(|(a, _)| ok(*a))
            .map(|(a, v)| (a, info(v)))
            .collect(),
    }
}

/// Runs the demo.
pub fn run(trails: Option<PathBuf>, mode: &str) -> anyhow::Result<()> {
    let data = paths::maltrail_data();
    let trails = match trails {
        Some(p) => p,
        None if data.join("trails-static").is_dir() => data.join("trails-static"),
        None => {
            eprintln!(
                "demo: {} not found; using the bundled demo trails",
                data.join("trails-static").display()
            );
            paths::workspace_root().join("xtask/demo/trails.csv")
        }
    };
    let whitelist_path = data.join("data/whitelist.txt");
    let whitelist = if whitelist_path.is_file() {
        Whitelist::load(&whitelist_path).context("reading the whitelist")?
    } else {
        Whitelist::empty()
    };
    eprintln!(
        "demo: loading {} to pick trail addresses for the traffic",
        trails.display()
    );
    let set = TrailSet::load(std::slice::from_ref(&trails), &LoadOptions::default())?;
    let sample = pick(&set, &whitelist);
    drop(set);

    eprintln!("demo: creating a network namespace pair joined by a veth (198.18.0.0/15)");
    let pair = VethPair::create("xd").context("creating the veth pair (needs root)")?;
    eprintln!(
        "demo: sensor side {} in {}, traffic side {} in {}",
        pair.sensor_if, pair.sensor_ns, pair.peer_if, pair.peer_ns
    );
    let sensor = paths::sensor_binary();
    let mut cmd = pair.in_sensor_ns(&sensor.to_string_lossy());
    cmd.args(["run", "--iface", &pair.sensor_if, "--trails"])
        .arg(&trails)
        .args(["--mode", mode, "--events-log", "-", "--format", "json"])
        .args(["--sensor-name", "demo", "--stats-interval", "0"]);
    if whitelist_path.is_file() {
        cmd.arg("--whitelist").arg(&whitelist_path);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    eprintln!("demo: starting {cmd:?}");
    let mut child = cmd.spawn().context("starting xtrail-sensor")?;
    let result = drive(&pair, &mut child, &sample);
    // Whatever happened, stop the sensor before the namespaces go.
    stop(&mut child);
    // Let the output threads print the sensor's last lines.
    std::thread::sleep(Duration::from_millis(300));
    let summary = result?;
    let detached = !pair.sensor_has_xdp().unwrap_or(true);
    eprintln!();
    eprintln!("demo: summary");
    eprintln!("  trails:          {}", trails.display());
    eprintln!(
        "  packets sent:    {} clean, {} to or from trail addresses",
        summary.clean, summary.trail
    );
    eprintln!(
        "  events expected: {} (one per distinct reportable trail packet)",
        summary.expected
    );
    eprintln!(
        "  events received: {}",
        summary.events.load(Ordering::Relaxed)
    );
    if let Some(line) = summary.final_stats.lock().ok().and_then(|l| l.clone()) {
        eprintln!("  kernel counters: {line}");
    }
    eprintln!("  XDP detached:    {}", if detached { "yes" } else { "NO" });
    drop(pair);
    eprintln!("demo: namespaces removed");
    if !detached {
        bail!("the XDP program was left on the interface");
    }
    if summary.events.load(Ordering::Relaxed) < summary.expected {
        bail!("fewer events than expected");
    }
    Ok(())
}

/// DNS queries, an HTTP request and a TLS ClientHello for trail names, sent by real sockets
/// in the traffic namespace to responders in the sensor's namespace (inline mode: they must
/// still arrive). Returns how many events to expect.
fn names_traffic(pair: &VethPair, sample: &Sample) -> anyhow::Result<u64> {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream, UdpSocket};
    use xtrail_bench::frames::{dns_query, tls_client_hello};
    use xtrail_bench::netns::in_ns;

    let mut queries: Vec<String> = Vec::new();
    for (d, info) in &sample.domains {
        eprintln!("demo:   DNS A {d} and www.{d} ({info})");
        queries.push(d.clone());
        queries.push(format!("www.{d}"));
    }
    queries.push("clean-demo-name.com".into());
    let n_queries = queries.len();
    let server = pair.sensor_ip.clone();
    let ip = server.clone();
    let dns = in_ns(&pair.sensor_ns, move || -> usize {
        let Ok(sock) = UdpSocket::bind((ip.as_str(), 53)) else {
            return 0;
        };
        let _ = sock.set_read_timeout(Some(Duration::from_secs(5)));
        let mut buf = [0u8; 512];
        let mut answered = 0;
        while answered < n_queries {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                break;
            };
            let mut reply = buf[..n].to_vec();
            if reply.len() > 3 {
                reply[2] |= 0x80;
                reply[3] |= 0x03; // NXDOMAIN: the demo resolver knows nothing
            }
            let _ = sock.send_to(&reply, from);
            answered += 1;
        }
        answered
    });
    let ip = server.clone();
    let web = in_ns(&pair.sensor_ns, move || -> usize {
        let (Ok(http), Ok(tls)) = (
            TcpListener::bind((ip.as_str(), 80)),
            TcpListener::bind((ip.as_str(), 443)),
        ) else {
            return 0;
        };
        let mut served = 0;
        for l in [&http, &tls] {
            if let Ok((mut c, _)) = l.accept() {
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 2048];
                if c.read(&mut buf).unwrap_or(0) > 0 {
                    let _ = c.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                    served += 1;
                }
            }
        }
        served
    });
    std::thread::sleep(Duration::from_millis(200));
    let url = sample.url.clone();
    let sni = sample.sni.clone();
    if let Some((host, path, info)) = &url {
        eprintln!("demo:   HTTP GET http://{host}{path} ({info})");
    }
    if let Some((name, info)) = &sni {
        eprintln!("demo:   TLS ClientHello with SNI {name} ({info})");
    }
    let ip = server.clone();
    let client = in_ns(&pair.peer_ns, move || -> (usize, bool, bool) {
        let mut answers = 0;
        if let Ok(sock) = UdpSocket::bind("0.0.0.0:0") {
            let _ = sock.set_read_timeout(Some(Duration::from_secs(2)));
            for (i, q) in queries.iter().enumerate() {
                let _ = sock.send_to(&dns_query(0x4000 + i as u16, q, 1), (ip.as_str(), 53));
                let mut buf = [0u8; 512];
                if sock.recv_from(&mut buf).is_ok() {
                    answers += 1;
                }
            }
        }
        let (host, path) = url
            .map(|(h, p, _)| (h, p))
            .unwrap_or_else(|| ("clean-demo-name.com".into(), "/".into()));
        let mut http_ok = false;
        if let Ok(mut c) = TcpStream::connect((ip.as_str(), 80)) {
            let req =
                format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: xtrail-demo\r\n\r\n");
            let _ = c.write_all(req.as_bytes());
            let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
            let mut r = String::new();
            let _ = c.read_to_string(&mut r);
            http_ok = r.starts_with("HTTP/1.1");
        }
        let mut tls_ok = false;
        let name = sni
            .map(|s| s.0)
            .unwrap_or_else(|| "clean-demo-name.com".into());
        if let Ok(mut c) = TcpStream::connect((ip.as_str(), 443)) {
            let _ = c.write_all(&tls_client_hello(&name));
            let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
            let mut r = Vec::new();
            let _ = c.read_to_end(&mut r);
            tls_ok = !r.is_empty();
        }
        (answers, http_ok, tls_ok)
    });
    let (answers, http_ok, tls_ok) = client
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
    let _ = dns.join();
    let _ = web.join();
    eprintln!(
        "demo:   inline mode: {answers}/{n_queries} DNS answers, HTTP reply {}, TLS reply {} (traffic still reaches its destination)",
        if http_ok { "received" } else { "MISSING" },
        if tls_ok { "received" } else { "MISSING" }
    );
    Ok(2 * sample.domains.len() as u64
        + u64::from(sample.url.is_some())
        + u64::from(sample.sni.is_some()))
}

struct Summary {
    clean: usize,
    trail: usize,
    expected: u64,
    events: Arc<AtomicU64>,
    final_stats: Arc<Mutex<Option<String>>>,
}

fn stop(child: &mut Child) {
    xtrail_bench::child::interrupt_and_wait(child, Duration::from_secs(10));
}

fn drive(pair: &VethPair, child: &mut Child, sample: &Sample) -> anyhow::Result<Summary> {
    let events = Arc::new(AtomicU64::new(0));
    let final_stats = Arc::new(Mutex::new(None));
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let stderr = child.stderr.take().context("sensor stderr")?;
    let stdout = child.stdout.take().context("sensor stdout")?;
    {
        let final_stats = Arc::clone(&final_stats);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("  sensor | {line}");
                if line.contains("attached to") {
                    let _ = ready_tx.send(Ok(()));
                } else if line.contains("error:") {
                    let _ = ready_tx.send(Err(line.clone()));
                }
                if let Some(stats) = line.split("final stats ").nth(1) {
                    if let Ok(mut s) = final_stats.lock() {
                        *s = Some(stats.to_string());
                    }
                }
            }
        });
    }
    {
        let events = Arc::clone(&events);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                events.fetch_add(1, Ordering::Relaxed);
                match serde_json::from_str::<serde_json::Value>(&line) {
                    Ok(v) => eprintln!(
                        "  EVENT  {} {} {}:{} -> {}:{} {} trail={} info=\"{}\" action={}",
                        v["ts"].as_str().unwrap_or(""),
                        v["type"].as_str().unwrap_or(""),
                        v["src_ip"].as_str().unwrap_or(""),
                        v["src_port"],
                        v["dst_ip"].as_str().unwrap_or(""),
                        v["dst_port"],
                        v["proto"].as_str().unwrap_or(""),
                        v["trail"].as_str().unwrap_or(""),
                        v["info"].as_str().unwrap_or(""),
                        v["action"].as_str().unwrap_or(""),
                    ),
                    Err(_) => eprintln!("  EVENT  {line}"),
                }
            }
        });
    }
    match ready_rx.recv_timeout(Duration::from_secs(180)) {
        Ok(Ok(())) => {}
        Ok(Err(line)) => bail!("the sensor failed to start: {line}"),
        Err(_) => bail!("the sensor did not attach within 180 s"),
    }
    let inj = pair.injector()?;
    let me = v4(&pair.peer_ip);
    let sensor_ip = v4(&pair.sensor_ip);
    let me6: IpAddr = "2001:db8::2".parse()?;
    let mut clean = 0;
    let mut trail = 0;
    let mut expected = 0u64;
    let mut send = |f: Frame, is_trail: bool| -> anyhow::Result<()> {
        inj.send(&f.build())?;
        if is_trail {
            trail += 1;
        } else {
            clean += 1;
        }
        std::thread::sleep(Duration::from_millis(2));
        Ok(())
    };
    eprintln!("demo: sending clean traffic (TCP and UDP to 198.18.0.0/15)");
    for i in 0..100u16 {
        // Many connections to two services: ordinary traffic, not a scan.
        send(
            Frame::syn(me, 40000 + i, sensor_ip, [80, 443][usize::from(i % 2)]),
            false,
        )?;
        send(Frame::udp(me, 50000 + i, sensor_ip, 5000, b"clean"), false)?;
    }
    eprintln!("demo: sending traffic to and from trail addresses");
    for (a, info) in &sample.ipv4 {
        eprintln!("demo:   {a} ({info}): SYN out, SYN in, UDP, ping, and 5 repeats (suppressed)");
        send(Frame::syn(me, 41000, *a, 443), true)?;
        send(Frame::syn(*a, 41001, sensor_ip, 22), true)?;
        send(Frame::udp(me, 41002, *a, 123, b"ntp?"), true)?;
        send(Frame::ping(me, *a), true)?;
        for _ in 0..5 {
            send(Frame::syn(me, 41000, *a, 443), true)?;
        }
        expected += 4;
    }
    for (a, port, info) in &sample.ipport {
        eprintln!("demo:   {a}:{port} ({info}): SYN");
        send(Frame::syn(me, 42000, *a, *port), true)?;
        expected += 1;
    }
    for (a, info) in &sample.cidr {
        eprintln!("demo:   {a} (inside a CIDR trail, {info}): SYN");
        send(Frame::syn(me, 43000, *a, 80), true)?;
        expected += 1;
    }
    for (a, info) in &sample.ipv6 {
        eprintln!("demo:   {a} ({info}): IPv6 SYN");
        send(Frame::syn(me6, 44000, *a, 443), true)?;
        expected += 1;
    }
    expected += names_traffic(pair, sample)?;
    eprintln!("demo: a port scan: SYNs from 198.18.222.9 to 20 ports (heuristic: potential port scanning)");
    let scanner = v4("198.18.222.9");
    for port in 1000..1020u16 {
        send(Frame::syn(scanner, 40000 + port, sensor_ip, port), false)?;
    }
    expected += 1;
    // Let the last events arrive.
    let deadline = Instant::now() + Duration::from_secs(5);
    while events.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    let rx = pair.sensor_rx_packets().unwrap_or(0);
    eprintln!("demo: the sensor's interface received {rx} packets");
    Ok(Summary {
        clean,
        trail,
        expected,
        events,
        final_stats,
    })
}
