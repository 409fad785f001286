//! Fetching feeds into a cache folder: timeouts, conditional GET (ETag / Last-Modified), a
//! size bound, retries with backoff, and per-feed status. A refused or failed fetch keeps the
//! previous cached body, which the build then uses.
//!
//! Cache layout: `<cache>/feeds/<name>.body` (last accepted body) and
//! `<cache>/feeds/<name>.json` ([`FeedStatus`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{Request, StatusCode, Uri};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use xtrail_detect::trails::Row;

use crate::feeds::{parse_body, FeedDef};

/// Fetch limits.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// Whole-request timeout (connect, headers and body), per attempt.
    pub timeout: Duration,
    /// Largest body accepted; larger ones are cut off and refused.
    pub max_bytes: u64,
    /// Attempts after the first one for network errors and 5xx answers.
    pub retries: u32,
    /// Wait before the first retry; doubled each time.
    pub backoff: Duration,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(60),
            max_bytes: 64 << 20,
            retries: 2,
            backoff: Duration::from_secs(2),
        }
    }
}

/// State of one feed after a fetch.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FeedStatus {
    /// Feed name.
    pub name: String,
    /// Feed URL.
    pub url: String,
    /// `ok`, `not_modified`, `refused`, `failed`, `disabled`.
    pub state: String,
    /// Trails in the body in use (the new one, or the cached one after a failure).
    pub rows: usize,
    /// Unix time of the last attempt.
    pub last_attempt: u64,
    /// Unix time of the last accepted body (or 304).
    pub last_success: u64,
    /// The last error or refusal, empty after a success.
    pub last_error: String,
    /// Whether the rows come from an older cached body.
    pub using_cache: bool,
    /// Validators for the next conditional GET.
    pub etag: String,
    /// `Last-Modified` of the cached body.
    pub last_modified: String,
    /// Bytes of the body in use.
    pub bytes: u64,
}

/// Fetch failures (one attempt).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Bad URL.
    #[error("bad URL: {0}")]
    Url(String),
    /// Connect, TLS or protocol error.
    #[error("{0}")]
    Net(String),
    /// No complete answer in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// Body over the size bound.
    #[error("body over {0} bytes (size bound)")]
    TooLarge(u64),
    /// The connection closed before the announced length.
    #[error("truncated: {got} of {want} bytes")]
    Truncated {
        /// Bytes received.
        got: u64,
        /// Content-Length.
        want: u64,
    },
    /// A non-success HTTP status.
    #[error("HTTP {0}")]
    Status(u16),
}

impl FetchError {
    fn retryable(&self) -> bool {
        matches!(
            self,
            FetchError::Net(_) | FetchError::Timeout(_) | FetchError::Truncated { .. }
        ) || matches!(self, FetchError::Status(s) if *s >= 500 || *s == 429)
    }
}

/// A completed response.
struct Answer {
    status: StatusCode,
    etag: String,
    last_modified: String,
    body: Vec<u8>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn tls() -> tokio_rustls::TlsConnector {
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let config = tokio_rustls::rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn send<S>(io: S, req: Request<Empty<Bytes>>, max: u64) -> Result<Answer, FetchError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let net = |e: hyper::Error| FetchError::Net(e.to_string());
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(net)?;
    let driver = tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(net)?;
    let header = |n: hyper::header::HeaderName| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (etag, last_modified) = (
        header(hyper::header::ETAG),
        header(hyper::header::LAST_MODIFIED),
    );
    let location = header(hyper::header::LOCATION);
    let want: Option<u64> = header(hyper::header::CONTENT_LENGTH).parse().ok();
    if want.is_some_and(|w| w > max) {
        driver.abort();
        return Err(FetchError::TooLarge(max));
    }
    let status = resp.status();
    let mut body = Vec::new();
    let mut incoming = resp.into_body();
    while let Some(frame) = incoming.frame().await {
        let frame = frame.map_err(|e| match want {
            Some(w) => FetchError::Truncated {
                got: body.len() as u64,
                want: w,
            },
            None => FetchError::Net(e.to_string()),
        })?;
        if let Some(d) = frame.data_ref() {
            if body.len() as u64 + d.len() as u64 > max {
                driver.abort();
                return Err(FetchError::TooLarge(max));
            }
            body.extend_from_slice(d);
        }
    }
    driver.abort();
    if let Some(w) = want {
        if (body.len() as u64) < w {
            return Err(FetchError::Truncated {
                got: body.len() as u64,
                want: w,
            });
        }
    }
    if status.is_redirection() && !location.is_empty() {
        return Ok(Answer {
            status,
            etag: location,
            last_modified,
            body,
        });
    }
    Ok(Answer {
        status,
        etag,
        last_modified,
        body,
    })
}

async fn get_once(
    url: &str,
    status: &FeedStatus,
    opts: &FetchOptions,
) -> Result<Answer, FetchError> {
    let mut url = url.to_owned();
    for _ in 0..5 {
        let uri: Uri = url.parse().map_err(|_| FetchError::Url(url.clone()))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(FetchError::Url(url)),
        };
        let host = uri
            .host()
            .ok_or_else(|| FetchError::Url(url.clone()))?
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let mut req = Request::get(path)
            .header(hyper::header::HOST, &host)
            .header(hyper::header::USER_AGENT, "xtrail-trails/0.1")
            .header(hyper::header::ACCEPT, "*/*");
        if !status.etag.is_empty() {
            req = req.header(hyper::header::IF_NONE_MATCH, &status.etag);
        }
        if !status.last_modified.is_empty() {
            req = req.header(hyper::header::IF_MODIFIED_SINCE, &status.last_modified);
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| FetchError::Url(e.to_string()))?;
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| FetchError::Net(format!("connect {host}:{port}: {e}")))?;
        let answer = if https {
            let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|_| FetchError::Url(url.clone()))?;
            let stream = tls()
                .connect(name, tcp)
                .await
                .map_err(|e| FetchError::Net(format!("TLS {host}: {e}")))?;
            send(stream, req, opts.max_bytes).await?
        } else {
            send(tcp, req, opts.max_bytes).await?
        };
        if answer.status.is_redirection() && answer.status != StatusCode::NOT_MODIFIED {
            // `etag` carries the Location of a redirect.
            url = if answer.etag.starts_with("http") {
                answer.etag
            } else {
                format!(
                    "{}://{host}:{port}{}",
                    if https { "https" } else { "http" },
                    answer.etag
                )
            };
            continue;
        }
        return Ok(answer);
    }
    Err(FetchError::Net("too many redirects".into()))
}

/// Paths of a feed's cached body and status.
pub fn cache_paths(cache: &Path, name: &str) -> (PathBuf, PathBuf) {
    let d = cache.join("feeds");
    (
        d.join(format!("{name}.body")),
        d.join(format!("{name}.json")),
    )
}

/// The stored status of a feed (default if none).
pub fn read_status(cache: &Path, name: &str) -> FeedStatus {
    let (_, s) = cache_paths(cache, name);
    std::fs::read(&s)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn write_status(cache: &Path, st: &FeedStatus) -> std::io::Result<()> {
    let (_, s) = cache_paths(cache, &st.name);
    let tmp = s.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(st).unwrap_or_default())?;
    std::fs::rename(tmp, s)
}

/// The rows of a feed's cached body (empty if none or no longer parseable).
pub fn cached_rows(def: &FeedDef, cache: &Path) -> Vec<Row> {
    let (b, _) = cache_paths(cache, &def.name);
    std::fs::read(b)
        .ok()
        .and_then(|body| parse_body(def, &body).ok())
        .unwrap_or_default()
}

/// Fetches one feed (with retries), checks the body, updates the cache and the status, and
/// returns the status and the rows to use (new, or cached after a failure or refusal).
pub async fn fetch_feed(
    def: &FeedDef,
    cache: &Path,
    opts: &FetchOptions,
) -> (FeedStatus, Vec<Row>) {
    let (body_path, _) = cache_paths(cache, &def.name);
    let _ = std::fs::create_dir_all(cache.join("feeds"));
    let mut st = read_status(cache, &def.name);
    st.name = def.name.clone();
    if st.url != def.url {
        // Another URL: the validators describe another resource.
        st.etag.clear();
        st.last_modified.clear();
        st.url = def.url.clone();
    }
    if !body_path.is_file() {
        // Validators without the body would earn a 304 and leave nothing.
        st.etag.clear();
        st.last_modified.clear();
    }
    st.last_attempt = now();
    let mut attempt = 0;
    let result = loop {
        let r = match tokio::time::timeout(opts.timeout, get_once(&def.url, &st, opts)).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Timeout(opts.timeout)),
        };
        let r = r.and_then(|a| {
            if a.status == StatusCode::NOT_MODIFIED || a.status.is_success() {
                Ok(a)
            } else {
                Err(FetchError::Status(a.status.as_u16()))
            }
        });
        match r {
            Err(e) if e.retryable() && attempt < opts.retries => {
                tokio::time::sleep(opts.backoff * 2u32.pow(attempt)).await;
                attempt += 1;
            }
            other => break other,
        }
    };
    let fallback = |st: &mut FeedStatus, state: &str, error: String| {
        let rows = cached_rows(def, cache);
        st.state = state.into();
        st.last_error = error;
        st.using_cache = !rows.is_empty();
        st.rows = rows.len();
        rows
    };
    let rows = match result {
        Err(e) => fallback(&mut st, "failed", e.to_string()),
        Ok(a) if a.status == StatusCode::NOT_MODIFIED => {
            let rows = cached_rows(def, cache);
            st.state = "not_modified".into();
            st.last_success = st.last_attempt;
            st.last_error.clear();
            st.using_cache = true;
            st.rows = rows.len();
            rows
        }
        Ok(a) => match parse_body(def, &a.body) {
            Err(why) => fallback(&mut st, "refused", why.to_string()),
            Ok(rows) => {
                let tmp = body_path.with_extension("body.tmp");
                match std::fs::write(&tmp, &a.body).and_then(|()| std::fs::rename(&tmp, &body_path))
                {
                    Ok(()) => {
                        st.etag = a.etag;
                        st.last_modified = a.last_modified;
                    }
                    Err(_) => {
                        st.etag.clear();
                        st.last_modified.clear();
                    }
                }
                st.state = "ok".into();
                st.last_success = st.last_attempt;
                st.last_error.clear();
                st.using_cache = false;
                st.rows = rows.len();
                st.bytes = a.body.len() as u64;
                rows
            }
        },
    };
    let _ = write_status(cache, &st);
    (st, rows)
}
