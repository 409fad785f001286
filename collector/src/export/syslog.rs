//! Syslog exporter: one message per event, RFC 5424 or RFC 3164, over UDP, TCP or TLS, with
//! a CEF ([`super::cef`]) or JSON (`xtrail_proto::json::event_to_json`) body.
//!
//! - RFC 5424: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME - MSGID - MSG`, TIMESTAMP the event's
//!   time (UTC, microseconds), MSGID the event type; over TCP/TLS octet-counted
//!   (RFC 6587 `LEN SP MSG`).
//! - RFC 3164: `<PRI>Mmm dd hh:mm:ss HOSTNAME TAG: MSG`, the event's time in UTC; over
//!   TCP/TLS newline-framed (line breaks in the body become spaces).
//! - PRI = facility × 8 + severity: high → 2 (critical), medium → 4 (warning), low → 5
//!   (notice).
//! - UDP: one datagram per message, no acknowledgement (a batch counts as sent when the
//!   kernel took it). TCP/TLS: a batch counts as sent when the receiving host's TCP has
//!   acknowledged every byte of it (the socket's send queue is empty, `TIOCOUTQ`); a broken
//!   connection is reopened and the whole batch sent again. A connection the receiver
//!   closed is noticed before writing (TCP: end of stream; TLS: close or end of stream), and
//!   one it resets while bytes wait for acknowledgement fails the batch at once (the kernel
//!   never drains the unacknowledged count of a reset socket, so waiting on it alone would
//!   hang for the whole 30 s write timeout).

use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use xtrail_detect::event::format_rfc3339;
use xtrail_proto::v1;

use super::{cef, host_name, truncate_utf8, ExporterFile, ExporterStats, Sink, SinkError};
use crate::metrics::inc;

/// Longest message unless `max_message_bytes` says otherwise (rsyslog's default limit is
/// 8 KiB).
pub const DEFAULT_MAX_MESSAGE: usize = 8192;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a batch to be written and acknowledged by the receiver's TCP.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    /// One datagram per message.
    Udp,
    /// Plain TCP.
    Tcp,
    /// TCP with TLS.
    Tls {
        /// CA certificates (PEM); the webpki roots when absent.
        ca: Option<PathBuf>,
        /// Name to verify.
        server_name: String,
    },
}

/// Message format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// RFC 5424.
    Rfc5424,
    /// RFC 3164 (BSD).
    Rfc3164,
}

/// Message body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    /// ArcSight CEF.
    Cef,
    /// The event as JSON.
    Json,
}

/// A checked syslog exporter.
#[derive(Clone, Debug)]
pub struct SyslogConfig {
    /// Transport.
    pub transport: Transport,
    /// `HOST:PORT`.
    pub address: String,
    /// Header format.
    pub protocol: Protocol,
    /// Body format.
    pub body: Body,
    /// Facility number (0-23).
    pub facility: u8,
    /// HOSTNAME field.
    pub hostname: String,
    /// APP-NAME / TAG.
    pub app_name: String,
    /// Longest message in bytes.
    pub max_message: usize,
}

/// Facility number of a name (`local0`, `auth`...) or a number 0-23.
pub fn parse_facility(v: &str) -> anyhow::Result<u8> {
    const NAMES: [&str; 24] = [
        "kern",
        "user",
        "mail",
        "daemon",
        "auth",
        "syslog",
        "lpr",
        "news",
        "uucp",
        "cron",
        "authpriv",
        "ftp",
        "ntp",
        "security",
        "console",
        "solaris-cron",
        "local0",
        "local1",
        "local2",
        "local3",
        "local4",
        "local5",
        "local6",
        "local7",
    ];
    if let Some(i) = NAMES.iter().position(|n| n.eq_ignore_ascii_case(v)) {
        return Ok(i as u8);
    }
    match v.parse::<u8>() {
        Ok(n) if n < 24 => Ok(n),
        _ => bail!("facility {v:?} is not a facility name or 0-23"),
    }
}

/// Syslog header fields are printable ASCII without spaces; anything else becomes `_`.
fn header_field(v: &str, max: usize) -> String {
    let s: String = v
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .take(max)
        .collect();
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

impl SyslogConfig {
    /// Checks the syslog options of a table.
    pub fn check(t: &ExporterFile) -> anyhow::Result<Self> {
        t.only(&[
            "target",
            "format",
            "protocol",
            "facility",
            "hostname",
            "app_name",
            "max_message_bytes",
            "tls_ca",
            "tls_server_name",
        ])?;
        let Some(target) = &t.target else {
            bail!("target is required (udp://HOST:PORT, tcp://HOST:PORT or tls://HOST:PORT)");
        };
        let (scheme, address) = target
            .split_once("://")
            .context("target must be udp://HOST:PORT, tcp://HOST:PORT or tls://HOST:PORT")?;
        let host = split_host(address)?;
        let transport = match scheme {
            "udp" => Transport::Udp,
            "tcp" => Transport::Tcp,
            "tls" => Transport::Tls {
                ca: t.tls_ca.clone(),
                server_name: t
                    .tls_server_name
                    .clone()
                    .unwrap_or_else(|| host.to_string()),
            },
            other => bail!("target scheme {other:?} is not udp, tcp or tls"),
        };
        match &transport {
            Transport::Tls { ca, server_name } => {
                ServerName::try_from(server_name.clone())
                    .with_context(|| format!("tls_server_name {server_name:?}"))?;
                if let Some(ca) = ca {
                    load_roots(Some(ca))?;
                }
            }
            _ if t.tls_ca.is_some() || t.tls_server_name.is_some() => {
                bail!("tls_ca and tls_server_name need a tls:// target");
            }
            _ => {}
        }
        let protocol = match t.protocol.as_deref() {
            None | Some("rfc5424") => Protocol::Rfc5424,
            Some("rfc3164") => Protocol::Rfc3164,
            Some(o) => bail!("protocol {o:?} is not rfc5424 or rfc3164"),
        };
        let body = match t.format.as_deref() {
            None | Some("cef") => Body::Cef,
            Some("json") => Body::Json,
            Some(o) => bail!("format {o:?} is not cef or json"),
        };
        let max_message = t.max_message_bytes.unwrap_or(DEFAULT_MAX_MESSAGE);
        if !(480..=65_000).contains(&max_message) {
            bail!("max_message_bytes must be 480-65000");
        }
        Ok(SyslogConfig {
            transport,
            address: address.to_string(),
            protocol,
            body,
            facility: parse_facility(t.facility.as_deref().unwrap_or("local0"))?,
            hostname: header_field(&t.hostname.clone().unwrap_or_else(host_name), 255),
            app_name: header_field(t.app_name.as_deref().unwrap_or("xtrail"), 48),
            max_message,
        })
    }

    /// Syslog severity of a wire severity.
    fn severity(wire: i32) -> u8 {
        match v1::Severity::try_from(wire) {
            Ok(v1::Severity::High) => 2,
            Ok(v1::Severity::Medium) => 4,
            _ => 5,
        }
    }

    /// The message of one event (header and body), cut to `max_message`; true when cut.
    pub fn message(&self, e: &v1::Event) -> (String, bool) {
        let pri = u32::from(self.facility) * 8 + u32::from(Self::severity(e.severity));
        let body = match self.body {
            Body::Cef => cef::to_cef(e),
            Body::Json => xtrail_proto::json::event_to_json(e).to_string(),
        };
        let mut m = match self.protocol {
            Protocol::Rfc5424 => format!(
                "<{pri}>1 {} {} {} - {} - {body}",
                format_rfc3339(e.ts_us),
                self.hostname,
                self.app_name,
                header_field(&e.r#type, 32),
            ),
            Protocol::Rfc3164 => {
                let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(e.ts_us) * 1000)
                    .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
                const MONTHS: [&str; 12] = [
                    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
                    "Dec",
                ];
                format!(
                    "<{pri}>{} {:>2} {:02}:{:02}:{:02} {} {}: {body}",
                    MONTHS[usize::from(u8::from(t.month())) - 1],
                    t.day(),
                    t.hour(),
                    t.minute(),
                    t.second(),
                    self.hostname,
                    self.app_name,
                )
            }
        };
        let cut = truncate_utf8(&mut m, self.max_message);
        (m, cut)
    }
}

/// The host part of `HOST:PORT` / `[V6]:PORT`, checking the port.
pub fn split_host(address: &str) -> anyhow::Result<&str> {
    let (host, port) = address
        .rsplit_once(':')
        .with_context(|| format!("{address:?} is not HOST:PORT"))?;
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .with_context(|| format!("{address:?}: bad port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        bail!("{address:?}: empty host");
    }
    Ok(host)
}

/// Trusted roots: the PEM certificates of `ca`, or the webpki roots.
pub(crate) fn load_roots(ca: Option<&PathBuf>) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path)
                .with_context(|| format!("reading {}", path.display()))?
            {
                let cert = cert.with_context(|| format!("parsing {}", path.display()))?;
                roots
                    .add(cert)
                    .with_context(|| format!("a certificate in {}", path.display()))?;
            }
            if roots.is_empty() {
                bail!("{} holds no certificate", path.display());
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(roots)
}

enum Conn {
    Udp(UdpSocket),
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// The syslog sink: one connection (or socket), reopened after a failure.
pub struct SyslogSink {
    cfg: SyslogConfig,
    conn: Option<Conn>,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl SyslogSink {
    /// A sink that connects on first delivery.
    pub fn new(cfg: SyslogConfig) -> Self {
        SyslogSink {
            cfg,
            conn: None,
            tls: None,
        }
    }

    async fn resolve(&self) -> Result<SocketAddr, SinkError> {
        tokio::net::lookup_host(&self.cfg.address)
            .await?
            .next()
            .ok_or_else(|| SinkError(format!("{} resolves to no address", self.cfg.address)))
    }

    async fn connect(&mut self) -> Result<Conn, SinkError> {
        let addr = self.resolve().await?;
        let tcp = || async {
            let s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
                .await
                .map_err(|_| SinkError(format!("connecting to {addr}: timed out")))?
                .map_err(|e| SinkError(format!("connecting to {addr}: {e}")))?;
            s.set_nodelay(true)?;
            Ok::<_, SinkError>(s)
        };
        Ok(match &self.cfg.transport {
            Transport::Udp => Conn::Udp(super::connected_udp(addr).await?),
            Transport::Tcp => Conn::Tcp(tcp().await?),
            Transport::Tls { ca, server_name } => {
                if self.tls.is_none() {
                    let roots = load_roots(ca.as_ref()).map_err(|e| SinkError(format!("{e:#}")))?;
                    let provider = Arc::new(rustls::crypto::ring::default_provider());
                    let config = rustls::ClientConfig::builder_with_provider(provider)
                        .with_safe_default_protocol_versions()
                        .map_err(|e| SinkError(e.to_string()))?
                        .with_root_certificates(roots)
                        .with_no_client_auth();
                    self.tls = Some(tokio_rustls::TlsConnector::from(Arc::new(config)));
                }
                let name = ServerName::try_from(server_name.clone())
                    .map_err(|e| SinkError(e.to_string()))?;
                let s = tcp().await?;
                let connector = self.tls.as_ref().expect("set above");
                let s = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, s))
                    .await
                    .map_err(|_| SinkError(format!("TLS handshake with {addr}: timed out")))?
                    .map_err(|e| SinkError(format!("TLS handshake with {addr}: {e}")))?;
                Conn::Tls(Box::new(s))
            }
        })
    }

    async fn send(&mut self, frames: &[u8], datagrams: &[String]) -> Result<(), SinkError> {
        // A peer that closed a TCP connection is noticed before writing into it.
        if let Some(Conn::Tcp(s)) = &self.conn {
            let mut probe = [0u8; 1];
            match s.try_read(&mut probe) {
                Ok(_) => self.conn = None, // EOF, or data a syslog receiver never sends
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => self.conn = None,
            }
        }
        // Same for TLS, through rustls (the socket may hold post-handshake messages such as
        // TLS 1.3 session tickets, which rustls consumes): polled once, never waited on.
        if let Some(Conn::Tls(s)) = &mut self.conn {
            let mut probe = [0u8; 1];
            if tokio::time::timeout(Duration::ZERO, s.read(&mut probe))
                .await
                .is_ok()
            {
                // close_notify, end of stream, an error, or data a receiver never sends
                self.conn = None;
            }
        }
        if self.conn.is_none() {
            self.conn = Some(self.connect().await?);
        }
        let conn = self.conn.as_mut().expect("connected above");
        match conn {
            Conn::Udp(s) => {
                for d in datagrams {
                    s.send(d.as_bytes()).await?;
                }
            }
            Conn::Tcp(s) => {
                tokio::time::timeout(WRITE_TIMEOUT, async {
                    s.write_all(frames).await?;
                    s.flush().await
                })
                .await
                .map_err(|_| SinkError("write timed out".into()))??;
                wait_acknowledged(s.as_raw_fd()).await?;
            }
            Conn::Tls(s) => {
                tokio::time::timeout(WRITE_TIMEOUT, async {
                    s.write_all(frames).await?;
                    s.flush().await
                })
                .await
                .map_err(|_| SinkError("write timed out".into()))??;
                wait_acknowledged(s.get_ref().0.as_raw_fd()).await?;
            }
        }
        Ok(())
    }
}

/// Waits until the peer's TCP acknowledged everything written to `fd` (Linux `TIOCOUTQ`:
/// bytes not yet acknowledged). Fails at once when the connection is reset or closed
/// (`SO_ERROR` set, or state `TCP_CLOSE`): the unacknowledged count of such a socket never
/// drops to zero.
async fn wait_acknowledged(fd: std::os::fd::RawFd) -> Result<(), SinkError> {
    let started = Instant::now();
    let mut pause = Duration::from_micros(200);
    loop {
        let mut unacked: libc::c_int = 0;
        // SAFETY: fd is an open socket owned by the caller; TIOCOUTQ writes one c_int.
        let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut unacked) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        if unacked == 0 {
            return Ok(());
        }
        if let Some(e) = connection_broken(fd)? {
            return Err(SinkError(format!(
                "connection lost with {unacked} bytes not acknowledged by the receiver: {e}"
            )));
        }
        if started.elapsed() > WRITE_TIMEOUT {
            return Err(SinkError(format!(
                "{unacked} bytes not acknowledged by the receiver after {}s",
                WRITE_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Why the TCP connection of `fd` can no longer deliver (a pending socket error, or the
/// `TCP_CLOSE` state a reset leaves), or `None` while it is open.
fn connection_broken(fd: std::os::fd::RawFd) -> Result<Option<std::io::Error>, SinkError> {
    // SAFETY: SO_ERROR is one c_int.
    let err: libc::c_int = unsafe { sockopt(fd, libc::SOL_SOCKET, libc::SO_ERROR)? };
    if err != 0 {
        return Ok(Some(std::io::Error::from_raw_os_error(err)));
    }
    // SAFETY: TCP_INFO is a tcp_info, plain integers.
    let info: libc::tcp_info = unsafe { sockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO)? };
    // TCP_CLOSE is 7 in the kernel's enum (include/net/tcp_states.h).
    const TCP_CLOSE: u8 = 7;
    Ok((info.tcpi_state == TCP_CLOSE)
        .then(|| std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection closed")))
}

/// `getsockopt(fd, level, name)` into a `T`.
///
/// # Safety
/// `T` must be the option's type, valid when all zeroes.
unsafe fn sockopt<T>(
    fd: std::os::fd::RawFd,
    level: libc::c_int,
    name: libc::c_int,
) -> Result<T, SinkError> {
    // SAFETY: the caller guarantees all zeroes is a valid T.
    let mut value: T = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: fd is an open socket owned by the caller; the kernel writes at most `len`
    // bytes into `value`.
    let rc = unsafe { libc::getsockopt(fd, level, name, (&mut value as *mut T).cast(), &mut len) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(value)
}

impl Sink for SyslogSink {
    async fn deliver(
        &mut self,
        events: &[v1::Event],
        stats: &ExporterStats,
    ) -> Result<(), SinkError> {
        let mut frames = Vec::new();
        let mut datagrams = Vec::new();
        for e in events {
            let (mut m, cut) = self.cfg.message(e);
            if cut {
                inc(&stats.truncated);
            }
            match (&self.cfg.transport, self.cfg.protocol) {
                (Transport::Udp, _) => datagrams.push(m),
                (_, Protocol::Rfc5424) => {
                    frames.extend_from_slice(format!("{} ", m.len()).as_bytes());
                    frames.extend_from_slice(m.as_bytes());
                }
                (_, Protocol::Rfc3164) => {
                    m = m.replace(['\r', '\n'], " ");
                    frames.extend_from_slice(m.as_bytes());
                    frames.push(b'\n');
                }
            }
        }
        let r = self.send(&frames, &datagrams).await;
        if r.is_err() {
            self.conn = None;
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(protocol: Protocol, body: Body) -> SyslogConfig {
        SyslogConfig {
            transport: Transport::Udp,
            address: "127.0.0.1:514".into(),
            protocol,
            body,
            facility: 16,
            hostname: "collector-1".into(),
            app_name: "xtrail".into(),
            max_message: 8192,
        }
    }

    fn ev() -> v1::Event {
        v1::Event {
            ts_us: 1_786_094_062_117_034,
            sensor: "gw1".into(),
            src_ip: "198.18.0.7".into(),
            dst_ip: "198.19.0.1".into(),
            dst_port: 53,
            proto: "UDP".into(),
            r#type: "DNS".into(),
            trail: "evil.example".into(),
            info: "asyncrat (malware)".into(),
            severity: v1::Severity::High as i32,
            ..Default::default()
        }
    }

    #[test]
    fn headers_follow_the_rfcs() {
        let (m, cut) = cfg(Protocol::Rfc5424, Body::Cef).message(&ev());
        assert!(!cut);
        assert!(
            m.starts_with(
                "<130>1 2026-08-07T09:14:22.117034Z collector-1 xtrail - DNS - CEF:0|xtrail|"
            ),
            "{m}"
        );
        let (m, _) = cfg(Protocol::Rfc3164, Body::Json).message(&ev());
        assert!(
            m.starts_with("<130>Aug  7 09:14:22 collector-1 xtrail: {"),
            "{m}"
        );
        let mut low = ev();
        low.severity = v1::Severity::Low as i32;
        assert!(cfg(Protocol::Rfc5424, Body::Cef)
            .message(&low)
            .0
            .starts_with("<133>1 "));
        let mut c = cfg(Protocol::Rfc5424, Body::Json);
        c.max_message = 480;
        let mut big = ev();
        big.info = "x".repeat(1000);
        let (m, cut) = c.message(&big);
        assert!(cut && m.len() == 480);
    }

    /// A receiver that is gone when a batch is written (its kernel answers with a reset)
    /// fails the wait for acknowledgement at once instead of after WRITE_TIMEOUT.
    #[tokio::test]
    async fn a_reset_connection_fails_the_acknowledgement_wait() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (peer, _) = l.accept().unwrap();
        drop(peer);
        std::thread::sleep(Duration::from_millis(100));
        std::io::Write::write_all(&mut c, &[b'x'; 300]).unwrap();
        let r = tokio::time::timeout(WRITE_TIMEOUT / 2, wait_acknowledged(c.as_raw_fd()))
            .await
            .expect("noticed before the write timeout");
        assert!(r.is_err());
        // An open connection is acknowledged.
        let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_peer, _) = l.accept().unwrap();
        std::io::Write::write_all(&mut c, &[b'x'; 300]).unwrap();
        assert!(wait_acknowledged(c.as_raw_fd()).await.is_ok());
    }

    #[test]
    fn options_are_checked() {
        let t = |target: &str| ExporterFile {
            kind: "syslog".into(),
            name: "s".into(),
            target: Some(target.into()),
            ..Default::default()
        };
        assert!(SyslogConfig::check(&t("udp://127.0.0.1:514")).is_ok());
        assert!(SyslogConfig::check(&t("tls://[::1]:6514")).is_ok());
        assert!(SyslogConfig::check(&t("http://h:1")).is_err());
        assert!(SyslogConfig::check(&t("udp://h")).is_err());
        assert!(SyslogConfig::check(&t("udp://h:0")).is_err());
        let mut x = t("udp://h:1");
        x.tls_ca = Some("/nonexistent".into());
        assert!(SyslogConfig::check(&x).is_err());
        assert_eq!(parse_facility("authpriv").unwrap(), 10);
        assert_eq!(parse_facility("local7").unwrap(), 23);
        assert!(parse_facility("24").is_err());
    }
}
