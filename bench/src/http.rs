//! A minimal HTTP/1.1 client for the tests and benches that talk to the collector's and the
//! sensor's HTTP ports: one request per connection (`Connection: close`), the whole answer
//! read, chunked bodies decoded. Requests go out exactly as given (no path normalisation),
//! so tests can send what a browser would not.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// How long a request waits for its answer.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// An answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Response {
    /// 0 when the answer had no status line.
    pub status: u16,
    /// Header fields in order, names lowercased, values trimmed.
    pub headers: Vec<(String, String)>,
    /// The body (lossy UTF-8), de-chunked.
    pub body: String,
}

impl Response {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The text of a request to `host`; `Content-Length` is sent with a body and with any
/// method but GET and HEAD.
pub fn request_text(
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> String {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || !matches!(method, "GET" | "HEAD") {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    req
}

/// Parses a whole answer.
pub fn parse(raw: &[u8]) -> Response {
    let text = String::from_utf8_lossy(raw);
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.get(9..12))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Sends a request over an open connection (plain or TLS) and reads the answer to its end.
/// A connection closed without a clean end (a TLS close without close_notify) still leaves
/// what was read.
pub fn exchange<S: Read + Write>(
    stream: &mut S,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> io::Result<Response> {
    stream.write_all(request_text(host, method, path, headers, body).as_bytes())?;
    let mut raw = Vec::new();
    if let Err(e) = stream.read_to_end(&mut raw) {
        if raw.is_empty() {
            return Err(e);
        }
    }
    Ok(parse(&raw))
}

/// One request to `addr` on a new connection, waiting at most [`TIMEOUT`] for the answer.
pub fn request(
    addr: impl ToSocketAddrs,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> io::Result<Response> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    let host = s.peer_addr()?.to_string();
    exchange(&mut s, &host, method, path, headers, body)
}

/// [`request`] from a thread inside network namespace `ns` (see [`crate::netns::in_ns`]).
pub fn request_in(
    ns: &str,
    addr: impl ToSocketAddrs,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> io::Result<Response> {
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
    let (method, path, body) = (method.to_string(), path.to_string(), body.to_string());
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    crate::netns::in_ns(ns, move || {
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        request(&addrs[..], &method, &path, &headers, &body)
    })
    .join()
    .map_err(|_| io::Error::other("HTTP client thread panicked"))?
    .map_err(io::Error::other)?
}

/// `GET path` on `addr`.
pub fn get(addr: impl ToSocketAddrs, path: &str) -> io::Result<Response> {
    request(addr, "GET", path, &[], "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_chunked_answers_and_headers() {
        let r = parse(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("text/plain"));
        assert_eq!(r.header("Content-Type"), Some("text/plain"));
        assert_eq!(r.body, "hello world");
        assert_eq!(parse(b"garbage").status, 0);
    }

    #[test]
    fn a_request_over_loopback() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().expect("accept");
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.ends_with(b"body") {
                let n = s.read(&mut buf).expect("read");
                assert!(n > 0, "request cut short");
                req.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 201 Created\r\nX-A: b\r\n\r\ndone")
                .expect("write");
            String::from_utf8(req).expect("text")
        });
        let r = request(addr, "POST", "/p?q=1", &[("X-T", "v")], "body").expect("request");
        assert_eq!(
            (r.status, r.header("x-a"), r.body.as_str()),
            (201, Some("b"), "done")
        );
        let req = server.join().expect("server");
        assert!(req.starts_with("POST /p?q=1 HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("\r\nX-T: v\r\n") && req.contains("Content-Length: 4\r\n"));
    }
}
