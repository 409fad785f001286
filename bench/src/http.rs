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

    /// The `name=value` of the first cookie the answer sets (a console session).
    pub fn cookie(&self) -> Option<&str> {
        self.header("set-cookie").and_then(|v| v.split(';').next())
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

/// Parses a whole answer; a malformed chunked body is an error (`InvalidData`).
pub fn parse(raw: &[u8]) -> io::Result<Response> {
    let (head, rest) = match find(raw, b"\r\n\r\n") {
        Some(at) => (&raw[..at], &raw[at + 4..]),
        None => (raw, &raw[raw.len()..]),
    };
    let head = String::from_utf8_lossy(head);
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
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Decodes a chunked body on its bytes (a chunk may end inside a character), up to the
/// last chunk; chunk extensions (`5;name=value`) are ignored, trailers dropped.
fn dechunk(mut s: &[u8]) -> io::Result<Vec<u8>> {
    let bad =
        |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("chunked body: {what}"));
    let mut out = Vec::new();
    loop {
        let eol = find(s, b"\r\n").ok_or_else(|| bad("a chunk size line without its end"))?;
        let line = String::from_utf8_lossy(&s[..eol]);
        let size = line.split(';').next().unwrap_or("").trim();
        let n =
            usize::from_str_radix(size, 16).map_err(|_| bad(&format!("chunk size {size:?}")))?;
        s = &s[eol + 2..];
        if n == 0 {
            return Ok(out);
        }
        if s.len() < n + 2 || &s[n..n + 2] != b"\r\n" {
            return Err(bad(&format!("a chunk of {n} bytes cut short")));
        }
        out.extend_from_slice(&s[..n]);
        s = &s[n + 2..];
    }
}

/// Sends a request over an open connection (plain or TLS) and reads the answer to its end.
/// A connection closed without a clean end (a TLS close without close_notify, or a reset
/// by a server that did not read the whole request) still leaves what was read; any other
/// read error (a timeout halfway) is returned.
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
        let ended = matches!(
            e.kind(),
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
        );
        if raw.is_empty() || !ended {
            return Err(e);
        }
    }
    parse(&raw)
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
              5\r\nhello\r\n3;ext=1\r\n w\xc3\r\n2\r\n\xa9d\r\n0\r\n\r\n",
        )
        .expect("parse");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("text/plain"));
        assert_eq!(r.header("Content-Type"), Some("text/plain"));
        assert_eq!(r.body, "hello w\u{e9}d");
        assert_eq!(parse(b"garbage").expect("parse").status, 0);
        for cut in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        ] {
            let e = parse(cut).expect_err("a malformed chunked body is an error");
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        }
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
