//! Webhook exporter: one HTTP POST per event, a JSON body, to `http://` or `https://` URLs
//! (chat hooks, SOAR, ticketing).
//!
//! - Body: the event as `xtrail_proto::json::event_to_json` (as `/api/events` shows it), or
//!   a `template`: JSON text whose `{field}` placeholders (the JSON field names: `trail`,
//!   `info`, `src_ip`, `severity`, ...) are replaced by the event's value, JSON-escaped (so a
//!   placeholder goes inside a string literal, or stands alone for a number field). A
//!   template that does not give valid JSON is an error at start.
//! - `throttle_seconds`: at most one POST per (source address, trail) per that many seconds
//!   of event time; the others are counted (`xtrail_export_throttled_total`) and skipped.
//!   Event time, so a backlog sent after an outage is throttled as the events happened.
//!   The state is in memory (a restart forgets it) and bounded ([`THROTTLE_KEYS`]).
//! - A response other than 2xx (redirects are not followed) or a network error fails the
//!   batch; the runner retries it with backoff. Events of the batch that were already taken
//!   are not posted again on the retry.
//! - TLS (rustls): the webpki roots, or `tls_ca`; `insecure_skip_verify = true` accepts any
//!   certificate (logged as a warning at start). The URL's path and query are never logged
//!   (chat hooks keep their secret there).
//!
//! HTTP/1.1 with keep-alive, one request at a time, hyper's connection-level client over
//! `tokio-rustls` (both already in the collector for tonic and axum).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{DigitallySignedStruct, SignatureScheme};
use xtrail_detect::event::JSON_FIELDS;
use xtrail_proto::v1;

use super::syslog::load_roots;
use super::{ExporterFile, ExporterStats, Sink, SinkError};
use crate::metrics::inc;

/// Most (source, trail) keys the throttle remembers; when full, expired keys are dropped,
/// and if none expired the throttle starts afresh (more POSTs, never fewer events seen).
pub const THROTTLE_KEYS: usize = 100_000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Most response-body bytes read (and 200 of them quoted in an error).
const MAX_RESPONSE: usize = 64 * 1024;

/// Fields a template may name besides the ones every event line carries
/// ([`xtrail_detect::event::JSON_FIELDS`]): the keys `event_to_json` adds when they apply.
pub const OPTIONAL_TEMPLATE_FIELDS: [&str; 11] = [
    "iface",
    "dns_query",
    "dns_qtype",
    "http_method",
    "http_host",
    "http_path",
    "http_user_agent",
    "tls_sni",
    "sensor_id",
    "seq",
    "cursor",
];

/// Every field a template may name: the keys of `event_to_json`.
pub fn template_fields() -> impl Iterator<Item = &'static str> {
    JSON_FIELDS.into_iter().chain(OPTIONAL_TEMPLATE_FIELDS)
}

/// A body template: literal JSON text and `{field}` placeholders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(&'static str),
}

impl Template {
    /// Parses `{name}` placeholders (`name` one of [`template_fields`]); any other brace is
    /// literal text. The result must be JSON for an event with every field set.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            lit.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let name_len = after
                .bytes()
                .take_while(|b| b.is_ascii_lowercase() || *b == b'_')
                .count();
            if name_len > 0 && after[name_len..].starts_with('}') {
                let name = &after[..name_len];
                let Some(field) = template_fields().find(|f| *f == name) else {
                    bail!(
                        "template: unknown field {{{name}}} (fields: {})",
                        template_fields().collect::<Vec<_>>().join(", ")
                    );
                };
                if !lit.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut lit)));
                }
                parts.push(Part::Field(field));
                rest = &after[name_len + 1..];
            } else {
                lit.push('{');
                rest = after;
            }
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            parts.push(Part::Text(lit));
        }
        let t = Template { parts };
        let sample = v1::Event {
            ts_us: 1,
            sensor: "s \"x\"".into(),
            src_ip: "198.18.0.7".into(),
            dst_ip: "198.19.0.1".into(),
            r#type: "DNS".into(),
            trail: "t\\\n".into(),
            info: "i".into(),
            ..Default::default()
        };
        let out = t.render(&sample);
        serde_json::from_slice::<serde_json::Value>(&out).with_context(|| {
            format!(
                "template: not JSON once filled in (a text field's placeholder belongs inside \"...\"): {}",
                String::from_utf8_lossy(&out)
            )
        })?;
        Ok(t)
    }

    /// The body for one event: each placeholder replaced by the field's value (strings
    /// JSON-escaped without their quotes, numbers as digits, absent fields empty).
    pub fn render(&self, e: &v1::Event) -> Vec<u8> {
        let j = xtrail_proto::json::event_to_json(e);
        let mut out = String::with_capacity(256);
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Field(f) => match j.get(*f) {
                    Some(serde_json::Value::String(s)) => {
                        let quoted = serde_json::Value::String(s.clone()).to_string();
                        out.push_str(&quoted[1..quoted.len() - 1]);
                    }
                    Some(serde_json::Value::Null) | None => {}
                    Some(other) => out.push_str(&other.to_string()),
                },
            }
        }
        out.into_bytes()
    }
}

/// A checked webhook exporter.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// `https` or `http`.
    pub https: bool,
    /// Host name or address (no brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path and query sent (never logged).
    pub path_and_query: String,
    /// CA certificates (PEM); the webpki roots when absent.
    pub ca: Option<PathBuf>,
    /// Accept any server certificate.
    pub insecure_skip_verify: bool,
    /// Body template; the event JSON when absent.
    pub template: Option<Template>,
    /// Throttle window per (source, trail), microseconds of event time.
    pub throttle_us: Option<i64>,
    /// Extra request headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl WebhookConfig {
    /// Checks the webhook options of a table.
    pub fn check(t: &ExporterFile) -> anyhow::Result<Self> {
        t.only(&[
            "target",
            "template",
            "throttle_seconds",
            "headers",
            "tls_ca",
            "insecure_skip_verify",
        ])?;
        let Some(target) = &t.target else {
            bail!("target is required (an http:// or https:// URL)");
        };
        let uri: hyper::Uri = target
            .parse()
            .map_err(|_| anyhow::anyhow!("target is not a URL"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => bail!("target must be an http:// or https:// URL"),
        };
        let authority = uri.authority().context("target has no host")?;
        if authority.as_str().contains('@') {
            bail!("target: user:password@ is not supported (use headers = {{ authorization = \"...\" }})");
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        if https {
            ServerName::try_from(host.clone()).with_context(|| format!("host {host:?}"))?;
        }
        let path_and_query = uri
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
        if !https && (t.tls_ca.is_some() || t.insecure_skip_verify.is_some()) {
            bail!("tls_ca and insecure_skip_verify need an https:// target");
        }
        if let Some(ca) = &t.tls_ca {
            load_roots(Some(ca))?;
        }
        let insecure_skip_verify = t.insecure_skip_verify.unwrap_or(false);
        if insecure_skip_verify && t.tls_ca.is_some() {
            bail!("tls_ca and insecure_skip_verify = true contradict each other");
        }
        let template = t.template.as_deref().map(Template::parse).transpose()?;
        let throttle_us = match t.throttle_seconds {
            None | Some(0) => None,
            Some(s) if s <= 30 * 86_400 => Some(i64::try_from(s).expect("small") * 1_000_000),
            Some(_) => bail!("throttle_seconds must be at most 30 days"),
        };
        let mut headers = Vec::new();
        for (k, v) in t.headers.iter().flatten() {
            let name = HeaderName::try_from(k.as_str()).with_context(|| format!("header {k:?}"))?;
            if [
                "host",
                "content-length",
                "content-type",
                "transfer-encoding",
                "connection",
            ]
            .contains(&name.as_str())
            {
                bail!("header {k:?} is set by the exporter");
            }
            let mut value =
                HeaderValue::try_from(v.as_str()).with_context(|| format!("header {k:?} value"))?;
            value.set_sensitive(true);
            headers.push((name, value));
        }
        Ok(WebhookConfig {
            https,
            host,
            port,
            path_and_query,
            ca: t.tls_ca.clone(),
            insecure_skip_verify,
            template,
            throttle_us,
            headers,
        })
    }

    /// `scheme://host:port`: the URL without its path and query, for messages.
    pub fn origin(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }

    /// The request body for one event.
    pub fn body(&self, e: &v1::Event) -> Vec<u8> {
        match &self.template {
            Some(t) => t.render(e),
            None => xtrail_proto::json::event_to_json(e)
                .to_string()
                .into_bytes(),
        }
    }
}

/// Accepts any server certificate (`insecure_skip_verify`), still checking that the
/// handshake is signed by the key of the certificate presented.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Per (source, trail): the event time of the last POST, bounded to [`THROTTLE_KEYS`].
#[derive(Debug, Default)]
pub struct Throttle {
    last: HashMap<(String, String), i64>,
}

impl Throttle {
    /// Whether an event at `ts_us` for `key` falls within `window_us` of the last one
    /// posted for it.
    pub fn holds(&self, key: &(String, String), ts_us: i64, window_us: i64) -> bool {
        self.last
            .get(key)
            .is_some_and(|&t| ts_us.abs_diff(t) < window_us.unsigned_abs())
    }

    /// Records a POST for `key` at `ts_us`.
    pub fn record(&mut self, key: (String, String), ts_us: i64, window_us: i64) {
        if self.last.len() >= THROTTLE_KEYS && !self.last.contains_key(&key) {
            self.last
                .retain(|_, t| ts_us.abs_diff(*t) < window_us.unsigned_abs());
            if self.last.len() >= THROTTLE_KEYS {
                self.last.clear();
            }
        }
        self.last.insert(key, ts_us);
    }

    /// Keys remembered.
    pub fn len(&self) -> usize {
        self.last.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
}

/// The webhook sink: one keep-alive connection, reopened after a failure.
pub struct WebhookSink {
    cfg: WebhookConfig,
    conn: Option<SendRequest<Full<Bytes>>>,
    tls: Option<tokio_rustls::TlsConnector>,
    throttle: Throttle,
    /// Events of the batch being delivered up to this cursor are done (posted or
    /// throttled): a retry of the batch skips them.
    done: u64,
}

impl WebhookSink {
    /// A sink that connects on first delivery; warns when verification is off.
    pub fn new(cfg: WebhookConfig, name: &str) -> Self {
        if cfg.https && cfg.insecure_skip_verify {
            log::warn!(
                "exporter {name:?}: insecure_skip_verify = true: the certificate of {} is NOT verified; anyone on the path can read and change what it is sent",
                cfg.origin()
            );
        }
        WebhookSink {
            cfg,
            conn: None,
            tls: None,
            throttle: Throttle::default(),
            done: 0,
        }
    }

    fn tls_connector(&mut self) -> Result<tokio_rustls::TlsConnector, SinkError> {
        if let Some(c) = &self.tls {
            return Ok(c.clone());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| SinkError(e.to_string()))?;
        let mut config = if self.cfg.insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth()
        } else {
            let roots =
                load_roots(self.cfg.ca.as_ref()).map_err(|e| SinkError(format!("{e:#}")))?;
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let c = tokio_rustls::TlsConnector::from(Arc::new(config));
        self.tls = Some(c.clone());
        Ok(c)
    }

    async fn connect(&mut self) -> Result<SendRequest<Full<Bytes>>, SinkError> {
        let origin = self.cfg.origin();
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((self.cfg.host.as_str(), self.cfg.port)),
        )
        .await
        .map_err(|_| SinkError(format!("connecting to {origin}: timed out")))?
        .map_err(|e| SinkError(format!("connecting to {origin}: {e}")))?;
        tcp.set_nodelay(true)?;
        let handshake_err = |e: hyper::Error| SinkError(format!("HTTP with {origin}: {e}"));
        if self.cfg.https {
            let connector = self.tls_connector()?;
            let name = ServerName::try_from(self.cfg.host.clone())
                .map_err(|e| SinkError(e.to_string()))?;
            let tls = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
                .await
                .map_err(|_| SinkError(format!("TLS handshake with {origin}: timed out")))?
                .map_err(|e| SinkError(format!("TLS handshake with {origin}: {e}")))?;
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(handshake_err)?;
            tokio::spawn(conn);
            Ok(send)
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(handshake_err)?;
            tokio::spawn(conn);
            Ok(send)
        }
    }

    async fn post(&mut self, body: Vec<u8>) -> Result<(), SinkError> {
        let mut send = match self.conn.take() {
            Some(s) if !s.is_closed() => s,
            _ => self.connect().await?,
        };
        let origin = self.cfg.origin();
        let mut req = hyper::Request::post(self.cfg.path_and_query.as_str())
            .header(
                hyper::header::HOST,
                if (self.cfg.https && self.cfg.port == 443)
                    || (!self.cfg.https && self.cfg.port == 80)
                {
                    self.cfg.host.clone()
                } else {
                    format!("{}:{}", self.cfg.host, self.cfg.port)
                },
            )
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("xtrail-collector/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| SinkError(format!("request: {e}")))?;
        for (k, v) in &self.cfg.headers {
            req.headers_mut().insert(k.clone(), v.clone());
        }
        let exchange = async {
            send.ready().await?;
            let resp = send.send_request(req).await?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Ok::<_, hyper::Error>((status, body))
        };
        let (status, resp_body) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| {
                SinkError(format!(
                    "POST to {origin}: no answer in {}s",
                    REQUEST_TIMEOUT.as_secs()
                ))
            })?
            .map_err(|e| SinkError(format!("POST to {origin}: {e}")))?;
        if status.is_success() {
            self.conn = Some(send);
            return Ok(());
        }
        let text = String::from_utf8_lossy(&resp_body[..resp_body.len().min(200)])
            .replace(['\r', '\n'], " ");
        Err(SinkError(format!(
            "POST to {origin}: HTTP {status}: {text}"
        )))
    }
}

impl Sink for WebhookSink {
    async fn deliver(
        &mut self,
        events: &[v1::Event],
        stats: &ExporterStats,
    ) -> Result<(), SinkError> {
        for e in events {
            if e.cursor != 0 && e.cursor <= self.done {
                continue;
            }
            let key = (e.src_ip.clone(), e.trail.clone());
            if let Some(w) = self.cfg.throttle_us {
                if self.throttle.holds(&key, e.ts_us, w) {
                    inc(&stats.throttled);
                    self.done = e.cursor;
                    continue;
                }
            }
            let body = self.cfg.body(e);
            self.post(body).await?;
            if let Some(w) = self.cfg.throttle_us {
                self.throttle.record(key, e.ts_us, w);
            }
            self.done = e.cursor;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(target: &str) -> ExporterFile {
        ExporterFile {
            kind: "webhook".into(),
            name: "w".into(),
            target: Some(target.into()),
            ..Default::default()
        }
    }

    #[test]
    fn templates_fill_in_escaped_values() {
        let t = Template::parse(
            r#"{"text": "{trail} {info} from {src_ip}", "port": {src_port}, "x": "{}"}"#,
        )
        .unwrap();
        let e = v1::Event {
            src_ip: "198.18.0.7".into(),
            src_port: 41234,
            trail: "evil\"x\\.example".into(),
            info: "line\nbreak".into(),
            ..Default::default()
        };
        let j: serde_json::Value = serde_json::from_slice(&t.render(&e)).unwrap();
        assert_eq!(j["text"], "evil\"x\\.example line\nbreak from 198.18.0.7");
        assert_eq!(j["port"], 41234);
        assert_eq!(j["x"], "{}");
        assert!(Template::parse(r#"{"a": "{colour}"}"#).is_err());
        assert!(Template::parse(r#"{"a": {trail}}"#).is_err());
        assert!(Template::parse(r#"{"a": "{iface}"}"#).is_ok());
    }

    #[test]
    fn options_are_checked() {
        let c = WebhookConfig::check(&table("https://hooks.example/services/T0/B0/secret?x=1"))
            .unwrap();
        assert!(c.https);
        assert_eq!(c.port, 443);
        assert_eq!(c.path_and_query, "/services/T0/B0/secret?x=1");
        assert_eq!(c.origin(), "https://hooks.example:443");
        let c = WebhookConfig::check(&table("http://[::1]:8080")).unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.path_and_query.as_str()),
            ("::1", 8080, "/")
        );
        assert!(WebhookConfig::check(&table("ftp://h/")).is_err());
        assert!(WebhookConfig::check(&table("https://u:p@h/")).is_err());
        let mut t = table("http://h/");
        t.insecure_skip_verify = Some(true);
        assert!(WebhookConfig::check(&t).is_err());
        let mut t = table("https://h/");
        t.headers = Some([("Content-Length".to_string(), "1".to_string())].into());
        assert!(WebhookConfig::check(&t).is_err());
        t.headers = Some([("Authorization".to_string(), "Bearer x".to_string())].into());
        t.throttle_seconds = Some(60);
        let c = WebhookConfig::check(&t).unwrap();
        assert_eq!(c.throttle_us, Some(60_000_000));
        t.protocol = Some("rfc5424".into());
        assert!(WebhookConfig::check(&t).is_err());
    }

    #[test]
    fn throttle_is_per_key_and_bounded() {
        let mut t = Throttle::default();
        let k = |i: u32| (format!("198.18.0.{i}"), "trail".to_string());
        let w = 60_000_000;
        assert!(!t.holds(&k(1), 0, w));
        t.record(k(1), 0, w);
        assert!(t.holds(&k(1), 59_999_999, w));
        assert!(!t.holds(&k(1), 60_000_000, w));
        assert!(!t.holds(&k(2), 1, w));
        for i in 0..THROTTLE_KEYS as u32 + 10 {
            t.record(k(i), i64::from(i) * 1000, w);
        }
        assert!(t.len() <= THROTTLE_KEYS);
    }
}
