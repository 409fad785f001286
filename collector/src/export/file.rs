//! JSON lines files for Filebeat, Vector, Logstash...: ECS-shaped documents or
//! Suricata-EVE-shaped `alert` records, one per line, appended to `path` and synced before
//! the exporter's cursor moves, rotated by size and/or age (checked before each batch is
//! written): the file is renamed to `PATH.YYYYMMDDTHHMMSSZ` (UTC; `-N` added if taken),
//! gzipped to `PATH.YYYYMMDDTHHMMSSZ.gz` when `gzip = true`, and the oldest rotated files
//! beyond `keep` are removed.
//!
//! ECS (`format = "ecs"`), one line per event (ECS 8.11 field names; `event.severity` on the
//! CEF scale: low 3, medium 6, high 9):
//!
//! ```text
//! {"@timestamp":"2026-08-07T09:14:22.117034Z","ecs":{"version":"8.11.0"},"event":{"kind":"alert","category":["network","intrusion_detection","threat"],"type":["indicator","allowed"],"action":"pass","severity":9,"id":"42","dataset":"xtrail.alert","module":"xtrail"},"source":{"ip":"198.18.0.7","port":41234},"destination":{"ip":"198.19.0.1","port":53},"network":{"transport":"udp","type":"ipv4"},"observer":{"name":"gw1","type":"ids","vendor":"xtrail","product":"xtrail-sensor"},"rule":{"name":"asyncrat (malware)","category":"DNS"},"threat":{"indicator":{"type":"domain-name","name":"evil.example","description":"asyncrat (malware)","reference":"(static)"}},"dns":{"question":{"name":"evil.example","type":"A"}},"xtrail":{"sensor_id":"gw1/1","seq":7,"cursor":42,"type":"DNS","severity":"high"}}
//! ```
//!
//! EVE (`format = "eve"`), as Suricata's `alert` records (`alert.severity` 1 high, 2
//! medium, 3 low; `signature_id` a stable 31-bit FNV-1a hash of type and trail):
//!
//! ```text
//! {"timestamp":"2026-08-07T09:14:22.117034+0000","event_type":"alert","src_ip":"198.18.0.7","src_port":41234,"dest_ip":"198.19.0.1","dest_port":53,"proto":"UDP","host":"gw1","alert":{"action":"allowed","gid":1,"signature_id":123456,"rev":1,"signature":"XTRAIL DNS evil.example (asyncrat (malware))","category":"asyncrat (malware)","severity":1},"dns":{"query":[{"type":"query","rrname":"evil.example","rrtype":"A"}]},"xtrail":{...}}
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{json, Map, Value};
use xtrail_detect::event::format_rfc3339;
use xtrail_proto::json::{action_name, severity_name};
use xtrail_proto::v1;

use super::{cef, ExporterFile, ExporterStats, Sink, SinkError};

/// Line shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Elastic Common Schema.
    Ecs,
    /// Suricata EVE `alert`.
    Eve,
}

/// A checked file exporter.
#[derive(Clone, Debug)]
pub struct FileConfig {
    /// The live file.
    pub path: PathBuf,
    /// Line shape.
    pub shape: Shape,
    /// Rotate at this size.
    pub rotate_bytes: Option<u64>,
    /// Rotate after this long.
    pub rotate_after: Option<Duration>,
    /// Rotated files kept.
    pub keep: usize,
    /// Gzip rotated files.
    pub gzip: bool,
}

impl FileConfig {
    /// Checks the options of a table.
    pub fn check(t: &ExporterFile) -> anyhow::Result<Self> {
        t.only(&[
            "path",
            "format",
            "rotate_bytes",
            "rotate_seconds",
            "keep",
            "gzip",
        ])?;
        let Some(path) = t.path.clone() else {
            bail!("path is required");
        };
        if path.file_name().is_none() {
            bail!("path {} names no file", path.display());
        }
        let shape = match t.format.as_deref() {
            None | Some("ecs") => Shape::Ecs,
            Some("eve") => Shape::Eve,
            Some(o) => bail!("format {o:?} is not ecs or eve"),
        };
        if t.rotate_bytes == Some(0) || t.rotate_seconds == Some(0) {
            bail!("rotate_bytes and rotate_seconds must be positive");
        }
        Ok(FileConfig {
            path,
            shape,
            rotate_bytes: t.rotate_bytes,
            rotate_after: t.rotate_seconds.map(Duration::from_secs),
            keep: t.keep.unwrap_or(10),
            gzip: t.gzip.unwrap_or(false),
        })
    }
}

fn ip_type(ip: &str) -> &'static str {
    if ip.contains(':') {
        "ipv6"
    } else {
        "ipv4"
    }
}

fn indicator_type(e: &v1::Event) -> &'static str {
    match e.r#type.as_str() {
        "DNS" | "CERT" => "domain-name",
        "URL" | "HTTP" | "PATH" => "url",
        "UA" => "software",
        "PORT" => "port",
        _ => {
            let addr = e.trail.split(['/', ' ']).next().unwrap_or("");
            let addr = addr
                .rsplit_once(':')
                .filter(|_| !addr.contains("::") && addr.matches(':').count() == 1)
                .map_or(addr, |(a, _)| a);
            if addr.parse::<std::net::Ipv6Addr>().is_ok() {
                "ipv6-addr"
            } else {
                "ipv4-addr"
            }
        }
    }
}

/// Removes null members and empty objects, so absent fields are absent.
fn prune(v: &mut Value) -> bool {
    match v {
        Value::Null => false,
        Value::Object(m) => {
            m.retain(|_, v| prune(v));
            !m.is_empty()
        }
        Value::String(s) => !s.is_empty(),
        _ => true,
    }
}

fn xtrail_block(e: &v1::Event) -> Value {
    json!({
        "sensor_id": e.sensor_id,
        "seq": e.seq,
        "cursor": e.cursor,
        "type": e.r#type,
        "severity": severity_name(e.severity),
    })
}

/// The ECS document of an event.
pub fn to_ecs(e: &v1::Event) -> Value {
    let port = |p: u32| (p != 0).then_some(p);
    // "ICMPV6" as sensors (and Maltrail) name it; "ICMPv6" as xtrail named it before.
    let transport = if e.proto.eq_ignore_ascii_case("ICMPv6") {
        "ipv6-icmp".to_string()
    } else {
        e.proto.to_ascii_lowercase()
    };
    let dropped = e.action == v1::Action::Drop as i32;
    let http = e.http.as_ref();
    let mut doc = json!({
        "@timestamp": format_rfc3339(e.ts_us),
        "ecs": {"version": "8.11.0"},
        "event": {
            "kind": "alert",
            "category": ["network", "intrusion_detection", "threat"],
            "type": ["indicator", if dropped { "denied" } else { "allowed" }],
            "action": action_name(e.action),
            "severity": cef::severity(e.severity),
            "id": e.cursor.to_string(),
            "dataset": "xtrail.alert",
            "module": "xtrail",
        },
        "source": {"ip": e.src_ip, "port": port(e.src_port)},
        "destination": {"ip": e.dst_ip, "port": port(e.dst_port)},
        "network": {"transport": transport, "type": ip_type(&e.src_ip)},
        "observer": {
            "name": e.sensor,
            "type": "ids",
            "vendor": "xtrail",
            "product": "xtrail-sensor",
            "ingress": {"interface": {"name": e.iface}},
        },
        "rule": {"name": if e.info.is_empty() { &e.trail } else { &e.info }, "category": e.r#type},
        "threat": {"indicator": {
            "type": indicator_type(e),
            "name": e.trail,
            "description": e.info,
            "reference": e.reference,
        }},
        "dns": {"question": {
            "name": e.dns.as_ref().and_then(|d| d.query.clone()),
            "type": e.dns.as_ref().and_then(|d| d.qtype.clone()),
        }},
        "url": {
            "original": cef::http_url(e),
            "domain": http.and_then(|h| h.host.clone()),
            "path": http.and_then(|h| h.path.clone()),
        },
        "http": {"request": {"method": http.and_then(|h| h.method.clone())}},
        "user_agent": {"original": http.and_then(|h| h.user_agent.clone())},
        "tls": {"client": {"server_name": e.tls.as_ref().and_then(|t| t.sni.clone())}},
        "xtrail": xtrail_block(e),
    });
    prune(&mut doc);
    doc
}

/// A stable 31-bit id of (type, trail): FNV-1a.
pub fn signature_id(e: &v1::Event) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in e.r#type.bytes().chain([0]).chain(e.trail.bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h & 0x7fff_ffff
}

/// The Suricata-EVE `alert` record of an event.
pub fn to_eve(e: &v1::Event) -> Value {
    let ts = format_rfc3339(e.ts_us);
    let ts = format!("{}+0000", ts.trim_end_matches('Z'));
    let sev = match v1::Severity::try_from(e.severity) {
        Ok(v1::Severity::High) => 1,
        Ok(v1::Severity::Medium) => 2,
        _ => 3,
    };
    let mut m = Map::new();
    m.insert("timestamp".into(), ts.into());
    m.insert("event_type".into(), "alert".into());
    m.insert("src_ip".into(), e.src_ip.clone().into());
    m.insert("src_port".into(), e.src_port.into());
    m.insert("dest_ip".into(), e.dst_ip.clone().into());
    m.insert("dest_port".into(), e.dst_port.into());
    m.insert("proto".into(), e.proto.clone().into());
    if let Some(i) = &e.iface {
        m.insert("in_iface".into(), i.clone().into());
    }
    m.insert("host".into(), e.sensor.clone().into());
    let label = if e.info.is_empty() { &e.trail } else { &e.info };
    m.insert(
        "alert".into(),
        json!({
            "action": if e.action == v1::Action::Drop as i32 { "blocked" } else { "allowed" },
            "gid": 1,
            "signature_id": signature_id(e),
            "rev": 1,
            "signature": format!("XTRAIL {} {} ({label})", e.r#type, e.trail),
            "category": label,
            "severity": sev,
            "metadata": {"reference": [e.reference.clone()]},
        }),
    );
    if let Some(q) = e.dns.as_ref().and_then(|d| d.query.as_ref()) {
        let mut rr = json!({"type": "query", "rrname": q});
        if let Some(t) = e.dns.as_ref().and_then(|d| d.qtype.as_ref()) {
            rr["rrtype"] = t.clone().into();
        }
        m.insert("dns".into(), json!({ "query": [rr] }));
    }
    if let Some(h) = &e.http {
        let mut v = json!({
            "hostname": h.host, "url": h.path,
            "http_user_agent": h.user_agent, "http_method": h.method,
        });
        prune(&mut v);
        m.insert("http".into(), v);
    }
    if let Some(sni) = e.tls.as_ref().and_then(|t| t.sni.as_ref()) {
        m.insert("tls".into(), json!({ "sni": sni }));
    }
    m.insert("xtrail".into(), xtrail_block(e));
    Value::Object(m)
}

/// The live file and its rotation (blocking I/O; the sink runs it on the blocking pool).
#[derive(Debug)]
pub struct RotatingFile {
    cfg: FileConfig,
    file: Option<File>,
    size: u64,
    opened: Instant,
    /// The last rotated name's (time stamp, `-NNN` number), so a removed name is not reused.
    last_suffix: Option<(String, u32)>,
}

impl RotatingFile {
    /// A file opened on first write.
    pub fn new(cfg: FileConfig) -> Self {
        RotatingFile {
            cfg,
            file: None,
            size: 0,
            opened: Instant::now(),
            last_suffix: None,
        }
    }

    fn open(&mut self) -> std::io::Result<()> {
        if let Some(dir) = self.cfg.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)?;
        }
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.cfg.path)?;
        self.size = f.metadata()?.len();
        self.opened = Instant::now();
        self.file = Some(f);
        Ok(())
    }

    /// Appends `bytes` (whole lines) and syncs, rotating first when due.
    pub fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.file.is_none() {
            self.open()?;
        }
        let by_size = self
            .cfg
            .rotate_bytes
            .is_some_and(|max| self.size + bytes.len() as u64 > max);
        let by_age = self
            .cfg
            .rotate_after
            .is_some_and(|a| self.opened.elapsed() >= a);
        if self.size > 0 && (by_size || by_age) {
            self.rotate()?;
            self.open()?;
        }
        let f = self.file.as_mut().expect("opened above");
        if let Err(e) = f.write_all(bytes).and_then(|()| f.sync_data()) {
            // Reopen next time; a partial line may precede the resent batch.
            self.file = None;
            return Err(e);
        }
        self.size += bytes.len() as u64;
        // A file that reached its size rotates now, not only before the next batch (which
        // may never come); the batch is written either way, so a failure here is logged and
        // retried on the next write rather than reported (that would resend the batch).
        if self.cfg.rotate_bytes.is_some_and(|max| self.size >= max) {
            if let Err(e) = self.rotate().and_then(|()| self.open()) {
                log::warn!("rotating {}: {e}", self.cfg.path.display());
                self.file = None;
            }
        }
        Ok(())
    }

    fn rotated_prefix(&self) -> String {
        format!(
            "{}.",
            self.cfg
                .path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
        )
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        let stamp = time::OffsetDateTime::now_utc()
            .format(time::macros::format_description!(
                "[year][month][day]T[hour][minute][second]Z"
            ))
            .unwrap_or_default();
        let dir = self
            .cfg
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let base = format!("{}{stamp}", self.rotated_prefix());
        // A second rotation within the same second gets `-NNN`, above every earlier one
        // (even one already removed by `keep`), so names sort in rotation order.
        let mut taken: Option<u32> = None;
        for entry in fs::read_dir(&dir)?.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let stem = name.trim_end_matches(".gz");
            if stem == base {
                taken = taken.max(Some(0));
            } else if let Some(n) = stem
                .strip_prefix(&base)
                .and_then(|r| r.strip_prefix('-'))
                .and_then(|n| n.parse::<u32>().ok())
            {
                taken = taken.max(Some(n));
            }
        }
        let taken = taken.max(
            self.last_suffix
                .as_ref()
                .filter(|(b, _)| *b == base)
                .map(|(_, n)| *n),
        );
        let name = match taken {
            None => base.clone(),
            Some(n) => format!("{base}-{:03}", n + 1),
        };
        self.last_suffix = Some((base, taken.map_or(0, |n| n + 1)));
        let rotated = dir.join(&name);
        fs::rename(&self.cfg.path, &rotated)?;
        if self.cfg.gzip {
            gzip_file(&rotated)?;
        }
        fs::File::open(&dir)?.sync_all()?;
        self.remove_old(&dir)
    }

    fn remove_old(&self, dir: &Path) -> std::io::Result<()> {
        let prefix = self.rotated_prefix();
        let mut rotated: Vec<String> = fs::read_dir(dir)?
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| {
                n.strip_prefix(&prefix).is_some_and(|rest| {
                    rest.len() >= 16
                        && rest.as_bytes()[8] == b'T'
                        && rest.as_bytes()[..8].iter().all(u8::is_ascii_digit)
                        && !rest.ends_with(".tmp")
                })
            })
            .collect();
        // `-NNN` (a second rotation within one second) sorts after its base name.
        rotated.sort_by(|a, b| a.trim_end_matches(".gz").cmp(b.trim_end_matches(".gz")));
        let excess = rotated.len().saturating_sub(self.cfg.keep);
        for n in &rotated[..excess] {
            fs::remove_file(dir.join(n))?;
        }
        Ok(())
    }
}

/// Compresses `path` to `path.gz` (through `path.gz.tmp`, synced) and removes `path`.
fn gzip_file(path: &Path) -> std::io::Result<()> {
    let gz = PathBuf::from(format!("{}.gz", path.display()));
    let tmp = PathBuf::from(format!("{}.gz.tmp", path.display()));
    let mut input = File::open(path)?;
    let out = File::create(&tmp)?;
    let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::default());
    std::io::copy(&mut input, &mut enc)?;
    enc.finish()?.sync_all()?;
    fs::rename(&tmp, &gz)?;
    fs::remove_file(path)
}

/// The file sink.
pub struct FileSink {
    shape: Shape,
    file: Option<RotatingFile>,
}

impl FileSink {
    /// A sink for `cfg`.
    pub fn new(cfg: FileConfig) -> Self {
        FileSink {
            shape: cfg.shape,
            file: Some(RotatingFile::new(cfg)),
        }
    }
}

impl Sink for FileSink {
    async fn deliver(
        &mut self,
        events: &[v1::Event],
        _stats: &ExporterStats,
    ) -> Result<(), SinkError> {
        let mut bytes = Vec::with_capacity(events.len() * 600);
        for e in events {
            let v = match self.shape {
                Shape::Ecs => to_ecs(e),
                Shape::Eve => to_eve(e),
            };
            serde_json::to_writer(&mut bytes, &v).map_err(|e| SinkError(e.to_string()))?;
            bytes.push(b'\n');
        }
        let mut file = self
            .file
            .take()
            .expect("file is put back after every write");
        let (file, r) = tokio::task::spawn_blocking(move || {
            let r = file.write(&bytes);
            (file, r)
        })
        .await
        .map_err(|e| SinkError(format!("file task: {e}")))?;
        self.file = Some(file);
        r.map_err(|e| SinkError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    fn ev(i: u64) -> v1::Event {
        v1::Event {
            ts_us: 1_786_094_062_117_034,
            sensor: "gw1".into(),
            src_ip: "198.18.0.7".into(),
            src_port: 41234,
            dst_ip: "198.19.0.1".into(),
            dst_port: 53,
            proto: "UDP".into(),
            r#type: "DNS".into(),
            trail: "evil.example".into(),
            info: "asyncrat (malware)".into(),
            reference: "(static)".into(),
            severity: v1::Severity::High as i32,
            action: v1::Action::Pass as i32,
            dns: Some(v1::DnsDetails {
                query: Some("evil.example".into()),
                qtype: Some("A".into()),
            }),
            sensor_id: "gw1/1".into(),
            seq: i,
            cursor: i,
            ..Default::default()
        }
    }

    #[test]
    fn ecs_and_eve_shapes() {
        let v = to_ecs(&ev(42));
        assert_eq!(v["@timestamp"], "2026-08-07T09:14:22.117034Z");
        assert_eq!(v["source"]["ip"], "198.18.0.7");
        assert_eq!(v["source"]["port"], 41234);
        assert_eq!(v["destination"]["port"], 53);
        assert_eq!(v["network"]["transport"], "udp");
        assert_eq!(v["dns"]["question"]["name"], "evil.example");
        assert_eq!(v["threat"]["indicator"]["type"], "domain-name");
        assert_eq!(v["threat"]["indicator"]["name"], "evil.example");
        assert_eq!(v["event"]["severity"], 9);
        assert_eq!(v["observer"]["name"], "gw1");
        assert!(v.get("url").is_none() && v.get("tls").is_none());
        // ECS's IANA keyword for ICMPv6, whichever spelling the sensor sent.
        for proto in ["ICMPV6", "ICMPv6"] {
            let mut i = ev(2);
            i.proto = proto.into();
            assert_eq!(to_ecs(&i)["network"]["transport"], "ipv6-icmp");
        }
        let mut h = ev(1);
        h.r#type = "HTTP".into();
        h.dns = None;
        h.http = Some(v1::HttpDetails {
            method: Some("GET".into()),
            host: Some("evil.example".into()),
            path: Some("/x".into()),
            user_agent: Some("curl/8".into()),
        });
        let v = to_ecs(&h);
        assert_eq!(v["url"]["original"], "http://evil.example/x");
        assert_eq!(v["url"]["domain"], "evil.example");
        assert_eq!(v["user_agent"]["original"], "curl/8");
        assert_eq!(v["threat"]["indicator"]["type"], "url");
        let v = to_eve(&ev(42));
        assert_eq!(v["timestamp"], "2026-08-07T09:14:22.117034+0000");
        assert_eq!(v["event_type"], "alert");
        assert_eq!(v["dest_port"], 53);
        assert_eq!(v["alert"]["severity"], 1);
        assert_eq!(v["dns"]["query"][0]["rrname"], "evil.example");
        assert_eq!(v["alert"]["signature_id"], signature_id(&ev(1)));
    }

    #[test]
    fn rotates_by_size_gzips_and_keeps_a_few() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/ecs.json");
        let mut f = RotatingFile::new(FileConfig {
            path: path.clone(),
            shape: Shape::Ecs,
            rotate_bytes: Some(100),
            rotate_after: None,
            keep: 2,
            gzip: true,
        });
        for i in 0..5 {
            f.write(format!("{{\"line\":{i},\"pad\":\"{}\"}}\n", "x".repeat(60)).as_bytes())
                .unwrap();
        }
        let mut names: Vec<String> = fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort_by(|a, b| a.trim_end_matches(".gz").cmp(b.trim_end_matches(".gz")));
        // Four rotations, two kept, plus the live file.
        assert_eq!(names.len(), 3, "{names:?}");
        assert_eq!(names[0], "ecs.json");
        assert!(
            names[1].starts_with("ecs.json.") && names[1].ends_with(".gz"),
            "{names:?}"
        );
        let live = fs::read_to_string(&path).unwrap();
        assert!(live.contains("\"line\":4"));
        let mut text = String::new();
        flate2::read::GzDecoder::new(File::open(dir.path().join("sub").join(&names[2])).unwrap())
            .read_to_string(&mut text)
            .unwrap();
        assert!(text.contains("\"line\":3"), "{text}");
    }

    #[test]
    fn rotates_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("eve.json");
        let mut f = RotatingFile::new(FileConfig {
            path: path.clone(),
            shape: Shape::Eve,
            rotate_bytes: None,
            rotate_after: Some(Duration::from_millis(50)),
            keep: 10,
            gzip: false,
        });
        f.write(b"a\n").unwrap();
        f.write(b"b\n").unwrap();
        std::thread::sleep(Duration::from_millis(80));
        f.write(b"c\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "c\n");
        let rotated: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p != &path)
            .collect();
        assert_eq!(rotated.len(), 1);
        assert_eq!(fs::read_to_string(&rotated[0]).unwrap(), "a\nb\n");
    }
}
