//! HTTP/1.x: request line and the headers detection uses; response status line.
//!
//! Only the first segment of a message is looked at. The request line must end within
//! [`MAX_LINE`] bytes; at most [`MAX_HEADERS`] header lines within [`MAX_HEAD`] bytes are
//! read; the first occurrence of a header wins.

/// Longest request or status line accepted.
pub const MAX_LINE: usize = 8192;
/// Bytes of the head (request line + headers) looked at.
pub const MAX_HEAD: usize = 16384;
/// Header lines looked at.
pub const MAX_HEADERS: usize = 100;
/// Longest method token accepted.
pub const MAX_METHOD: usize = 24;

/// Why a payload is not an HTTP request or response this parser accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The payload does not start with a method token and a space.
    #[error("not an HTTP request")]
    NotRequest,
    /// The payload does not start with `HTTP/`.
    #[error("not an HTTP response")]
    NotResponse,
    /// No line end within [`MAX_LINE`] bytes (or in the segment).
    #[error("HTTP first line not terminated")]
    Unterminated,
    /// The first line does not have the three space-separated parts.
    #[error("malformed HTTP first line")]
    BadFirstLine,
}

/// A request's first line and the headers detection uses (values trimmed, raw bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Request<'a> {
    /// Method, e.g. `GET`.
    pub method: &'a str,
    /// Request target: a path, an absolute URL (proxies) or `host:port` (`CONNECT`).
    pub target: &'a [u8],
    /// Version, e.g. `HTTP/1.1`.
    pub version: &'a [u8],
    /// `Host`.
    pub host: Option<&'a [u8]>,
    /// `User-Agent`.
    pub user_agent: Option<&'a [u8]>,
    /// `X-Forwarded-For`.
    pub x_forwarded_for: Option<&'a [u8]>,
    /// `X-Real-IP`.
    pub x_real_ip: Option<&'a [u8]>,
    /// `Forwarded`.
    pub forwarded: Option<&'a [u8]>,
    /// `Content-Type`.
    pub content_type: Option<&'a [u8]>,
    /// Bytes after the blank line ending the head; empty if the head is not complete.
    pub body: &'a [u8],
    /// Whether the blank line ending the head was seen.
    pub head_complete: bool,
}

/// A response's status line, `Content-Type` and the first body bytes in the segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Response<'a> {
    /// Version, e.g. `HTTP/1.1`.
    pub version: &'a [u8],
    /// Status code (0 if not three digits).
    pub status: u16,
    /// Reason phrase.
    pub reason: &'a [u8],
    /// `Content-Type`.
    pub content_type: Option<&'a [u8]>,
    /// `Server`.
    pub server: Option<&'a [u8]>,
    /// `Location`.
    pub location: Option<&'a [u8]>,
    /// The header lines (after the status line, up to the blank line or the segment's end).
    pub head: &'a [u8],
    /// Bytes after the blank line ending the head; empty if the head is not complete.
    pub body: &'a [u8],
}

/// Whether a payload starts like a request: a method token (uppercase letters) and a space.
/// Cheap; use it to decide whether to call [`parse_request`].
pub fn looks_like_request(p: &[u8]) -> bool {
    method_len(p).is_some()
}

fn method_len(p: &[u8]) -> Option<usize> {
    let n = p
        .iter()
        .take(MAX_METHOD + 1)
        .take_while(|b| b.is_ascii_uppercase() || **b == b'-' || **b == b'_')
        .count();
    (n > 0 && n <= MAX_METHOD && p.get(n) == Some(&b' ')).then_some(n)
}

/// Parses a request head; [`HttpError::NotRequest`] exactly when [`looks_like_request`] is
/// false.
pub fn parse_request(p: &[u8]) -> Result<Request<'_>, HttpError> {
    let n = method_len(p).ok_or(HttpError::NotRequest)?;
    let mut lines = Newlines::new(p);
    let (line, rest) = first_line(p, &mut lines)?;
    // Maltrail's rule: exactly two spaces, the third part starting with `HTTP/`. The line
    // starts with the method token `method_len` measured and a space (neither holds a line
    // end): the first part is that token.
    let method = line.get(..n).ok_or(HttpError::BadFirstLine)?;
    let after = line.get(n + 1..).ok_or(HttpError::BadFirstLine)?;
    let space = memchr::memchr(b' ', after).ok_or(HttpError::BadFirstLine)?;
    let target = after.get(..space).unwrap_or_default();
    let version = after.get(space + 1..).unwrap_or_default();
    if version.contains(&b' ') || target.is_empty() || !version.starts_with(b"HTTP/") {
        return Err(HttpError::BadFirstLine);
    }
    debug_assert!(method.is_ascii());
    // SAFETY: `method_len` accepted each of these bytes as an ASCII uppercase letter, `-` or
    // `_`: ASCII, hence UTF-8.
    let method = unsafe { std::str::from_utf8_unchecked(method) };
    let mut req = Request {
        method,
        target,
        version,
        ..Request::default()
    };
    let (body, complete) = headers(p, rest, lines, &REQUEST_HEADERS, |i, value| {
        let slot = match i {
            0 => &mut req.host,
            1 => &mut req.user_agent,
            2 => &mut req.x_forwarded_for,
            3 => &mut req.x_real_ip,
            4 => &mut req.forwarded,
            _ => &mut req.content_type,
        };
        if slot.is_none() {
            *slot = Some(trim(value));
        }
    });
    req.body = body;
    req.head_complete = complete;
    Ok(req)
}

/// Parses a response head.
pub fn parse_response(p: &[u8]) -> Result<Response<'_>, HttpError> {
    if !p.starts_with(b"HTTP/") {
        return Err(HttpError::NotResponse);
    }
    let mut lines = Newlines::new(p);
    let (line, rest_start) = first_line(p, &mut lines)?;
    let rest = p.get(rest_start..).unwrap_or_default();
    let mut parts = line.splitn(3, |b| *b == b' ');
    let version = parts.next().ok_or(HttpError::BadFirstLine)?;
    let code = parts.next().ok_or(HttpError::BadFirstLine)?;
    let reason = parts.next().unwrap_or_default();
    let status = match code {
        [a, b, c] if code.iter().all(u8::is_ascii_digit) => {
            u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0')
        }
        _ => return Err(HttpError::BadFirstLine),
    };
    let mut resp = Response {
        version,
        status,
        reason,
        ..Response::default()
    };
    let (body, complete) = headers(p, rest_start, lines, &RESPONSE_HEADERS, |i, value| {
        let slot = match i {
            0 => &mut resp.content_type,
            1 => &mut resp.server,
            _ => &mut resp.location,
        };
        if slot.is_none() {
            *slot = Some(trim(value));
        }
    });
    resp.body = body;
    let head_len = if complete {
        rest.len().saturating_sub(body.len())
    } else {
        rest.len().min(MAX_HEAD)
    };
    resp.head = rest.get(..head_len).unwrap_or_default();
    Ok(resp)
}

/// The first line (without its `\r\n` or `\n`) and where the next line starts; `lines`
/// scans `p` and is left after the line's `\n`.
fn first_line<'a>(p: &'a [u8], lines: &mut Newlines<'_>) -> Result<(&'a [u8], usize), HttpError> {
    let nl = lines
        .next()
        .filter(|&nl| nl < MAX_LINE)
        .ok_or(HttpError::Unterminated)?;
    let line = p.get(..nl).ok_or(HttpError::Unterminated)?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    Ok((line, nl + 1))
}

/// The `\n`s of a head in order, found 64 bytes at a time (a compare per 16 bytes, a bit
/// scan per line) instead of a `memchr` call per line: a request head is a handful of short
/// lines. Looks at no more than [`MAX_LINE`] + [`MAX_HEAD`] bytes, all that
/// [`first_line`] and [`headers`] accept.
struct Newlines<'a> {
    hay: &'a [u8],
    /// Start of the 64-byte block `mask` covers.
    block: usize,
    /// The block's `\n`s not returned yet: bit `i` for `hay[block + i]`.
    mask: u64,
}

impl<'a> Newlines<'a> {
    fn new(p: &'a [u8]) -> Self {
        let hay = p.get(..p.len().min(MAX_LINE + MAX_HEAD)).unwrap_or(p);
        Self {
            hay,
            block: 0,
            mask: newline_mask(hay, 0),
        }
    }

    /// Index of the next `\n`.
    #[inline]
    fn next(&mut self) -> Option<usize> {
        while self.mask == 0 {
            self.block += 64;
            if self.block >= self.hay.len() {
                return None;
            }
            self.mask = newline_mask(self.hay, self.block);
        }
        let i = self.block + self.mask.trailing_zeros() as usize;
        self.mask &= self.mask - 1;
        Some(i)
    }
}

/// Bit `i` set where `hay[at + i]` is `\n`, for the (up to) 64 bytes from `at`.
#[inline]
fn newline_mask(hay: &[u8], at: usize) -> u64 {
    let left = hay.len().saturating_sub(at);
    if let Some(block) = hay.get(at..).and_then(|b| b.first_chunk::<64>()) {
        return block_mask(block);
    }
    // A short last block: the last 64 bytes of a longer haystack (the bits before `at`
    // shifted out), else a zero-padded copy (`\0` is no `\n`).
    if let Some(last) = hay.last_chunk::<64>() {
        return block_mask(last) >> (64 - left);
    }
    let mut buf = [0u8; 64];
    if let (Some(dst), Some(src)) = (buf.get_mut(..left), hay.get(at..)) {
        dst.copy_from_slice(src);
    }
    block_mask(&buf)
}

/// Bit `i` set where `block[i]` is `\n`.
#[inline]
fn block_mask(block: &[u8; 64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8,
        };
        let mut mask = 0u64;
        for (k, part) in block.chunks_exact(16).enumerate() {
            // SAFETY: SSE2 is part of the x86_64 baseline, so these instructions exist; `part`
            // is 16 readable bytes, and an unaligned load has no alignment requirement.
            let hits = unsafe {
                let v = _mm_loadu_si128(part.as_ptr().cast());
                _mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(b'\n' as i8)))
            };
            mask |= u64::from(hits as u32 & 0xffff) << (16 * k);
        }
        mask
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        block
            .iter()
            .enumerate()
            .fold(0, |m, (i, &b)| m | (u64::from(b == b'\n') << i))
    }
}

/// Header names a walk keeps (lowercase, each starting with a letter), with the set of their
/// first letters.
struct HeaderNames {
    names: &'static [&'static [u8]],
    /// Bit `c - b'a'` for each first letter `c`.
    firsts: u32,
}

impl HeaderNames {
    const fn new(names: &'static [&'static [u8]]) -> Self {
        let mut firsts = 0;
        let mut i = 0;
        while i < names.len() {
            let c = names[i][0];
            assert!(
                c.is_ascii_lowercase(),
                "a header name starts with a lowercase letter"
            );
            firsts |= 1 << (c - b'a');
            i += 1;
        }
        Self { names, firsts }
    }
}

/// The request headers [`parse_request`] keeps, in its slots' order.
const REQUEST_HEADERS: HeaderNames = HeaderNames::new(&[
    b"host",
    b"user-agent",
    b"x-forwarded-for",
    b"x-real-ip",
    b"forwarded",
    b"content-type",
]);

/// The response headers [`parse_response`] keeps, in its slots' order.
const RESPONSE_HEADERS: HeaderNames = HeaderNames::new(&[b"content-type", b"server", b"location"]);

/// Walks the header lines of `p` from `start` (after the first line; `lines` scans `p` and
/// stands there), calling `f(i, value)` for a line named `names[i]` (ASCII
/// case-insensitively; the name is what precedes the line's first `:`), the value untrimmed
/// (see [`trim`]); returns the body and whether the head ended within [`MAX_HEAD`] bytes
/// and [`MAX_HEADERS`] lines. A name is tested where its `:` would be (no search for the
/// `:` of each line), and only on a line whose first letter starts one of `names`.
fn headers<'a>(
    p: &'a [u8],
    start: usize,
    mut lines: Newlines<'_>,
    names: &HeaderNames,
    mut f: impl FnMut(usize, &'a [u8]),
) -> (&'a [u8], bool) {
    let end = start.saturating_add(MAX_HEAD);
    let mut pos = start;
    for _ in 0..MAX_HEADERS {
        let Some(nl) = lines.next().filter(|&nl| nl < end) else {
            return (&[], false);
        };
        let line = p.get(pos..nl).unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        pos = nl + 1;
        let Some(&first) = line.first() else {
            return (p.get(pos..).unwrap_or_default(), true);
        };
        // `| 0x20` lowercases a letter and maps no other byte into `a..=z`.
        let letter = (first | 0x20).wrapping_sub(b'a');
        if letter >= 26 || names.firsts >> letter & 1 == 0 {
            continue;
        }
        // A name holds no `:`, so a line named `name` is `name` then `:`.
        let named = names.names.iter().position(|name| {
            line.get(name.len()) == Some(&b':')
                && line
                    .get(..name.len())
                    .is_some_and(|n| n.eq_ignore_ascii_case(name))
        });
        if let Some(i) = named {
            let colon = names.names.get(i).map_or(0, |n| n.len());
            f(i, line.get(colon + 1..).unwrap_or_default());
        }
    }
    (&[], false)
}

/// Index of the first `://` in `b` (a URL's scheme separator). Searches for `:` and checks
/// what follows: cheaper than setting up a substring searcher per request, and a request
/// target holds few colons.
pub(crate) fn find_scheme_sep(b: &[u8]) -> Option<usize> {
    memchr::memchr_iter(b':', b).find(|&i| b.get(i + 1..i + 3) == Some(b"//".as_slice()))
}

/// A header value without the spaces and tabs around it.
fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let end = v.iter().rposition(|b| !matches!(b, b' ' | b'\t'));
    match (start, end) {
        (Some(s), Some(e)) => v.get(s..=e).unwrap_or_default(),
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheme_separator() {
        for t in [
            &b"http://a/b"[..],
            b"/x:y/http://z",
            b":::/:///",
            b"/a:/b",
            b"",
            b":",
            b"://",
        ] {
            assert_eq!(find_scheme_sep(t), memchr::memmem::find(t, b"://"), "{t:?}");
        }
    }

    /// What a header walk saw: (name index, untrimmed value) per kept line, the body and
    /// whether the head ended.
    type Walk<'a> = (Vec<(usize, &'a [u8])>, &'a [u8], bool);

    /// The walk as it was (each line's name up to its first `:`, compared with each kept
    /// name), as the reference.
    fn headers_reference<'a>(mut rest: &'a [u8], names: &[&[u8]]) -> Walk<'a> {
        let mut seen = Vec::new();
        let mut budget = MAX_HEAD;
        for _ in 0..MAX_HEADERS {
            let window = rest.get(..rest.len().min(budget)).unwrap_or(rest);
            let Some(nl) = memchr::memchr(b'\n', window) else {
                return (seen, &[], false);
            };
            budget = budget.saturating_sub(nl + 1);
            let line = rest.get(..nl).unwrap_or_default();
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            rest = rest.get(nl + 1..).unwrap_or_default();
            if line.is_empty() {
                return (seen, rest, true);
            }
            if let Some(colon) = memchr::memchr(b':', line) {
                let name = &line[..colon];
                if let Some(i) = names.iter().position(|n| name.eq_ignore_ascii_case(n)) {
                    seen.push((i, &line[colon + 1..]));
                }
            }
        }
        (seen, &[], false)
    }

    #[test]
    fn header_walk_matches_the_reference() {
        let huge = [&b"X: "[..], &[b'a'; MAX_HEAD], b"\r\nHost: h\r\n\r\n"].concat();
        let heads: [&[u8]; 16] = [
            b"",
            b"\r\n",
            b"Host: a\r\n\r\nbody",
            b"HOST:a\nUser-Agent: \t x \t\nhost: b\n\nbody",
            b"no colon\r\nHost: a:8080\r\n\r\n",
            b":\r\n:x\r\nHost::b\r\nHost :c\r\n Host: d\r\n\r\n",
            b"Host: a\r\nunterminated",
            b"Host\r\n: x\nHost\n\n",
            b"Hostx: a\r\nHos: b\r\nhost: c\r\r\n\r\n",
            b"X-Forwarded-For: 1.2.3.4\r\nX-Real-IP: 5.6.7.8\r\nForwarded: for=x\r\n\r\n",
            b"Content-Type: text/html\r\nServer: s\r\nLocation: /x\r\n\r\n",
            b"Content-Type:\r\nServer\r\n",
            b"user-agent:a:b\r\n\r\n",
            b"User-Agent\xff: x\r\nUser-Agent: \xff\r\n\r\n",
            b"A: b\r\r\n\r\n",
            &huge,
        ];
        // Heads over several 64-byte blocks of the newline scan.
        let browser = b"Host: h1.bench-site2.net\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\nAccept: */*\r\nAccept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\n\r\nbody";
        let many = [&b"X-A: b\r\n".repeat(90)[..], b"content-TYPE: t\r\n\r\n"].concat();
        let near_end = [&b"X: "[..], &[b'a'; MAX_HEAD - 8], b"\r\nH\r\n\r\n"].concat();
        for h in heads.into_iter().chain([
            &browser[..],
            &many,
            &near_end,
            &near_end[..near_end.len() - 1],
        ]) {
            for names in [&REQUEST_HEADERS, &RESPONSE_HEADERS] {
                let mut seen = Vec::new();
                // A first line, so that the walk starts where it does in a message.
                let p = [&b"GET / HTTP/1.1\r\n"[..], h].concat();
                let mut lines = Newlines::new(&p);
                let (_, start) = first_line(&p, &mut lines).unwrap();
                let (body, complete) = headers(&p, start, lines, names, |i, v| seen.push((i, v)));
                assert_eq!(
                    (seen, body, complete),
                    headers_reference(h, names.names),
                    "{:?}",
                    String::from_utf8_lossy(h)
                );
            }
        }
    }

    #[test]
    fn newlines_match_memchr() {
        // Lengths around the 64-byte blocks, newlines at block edges and runs of them.
        let mut next = crate::testing::xorshift(0x9e37_79b9_7f4a_7c15);
        for len in (0..300).chain([MAX_LINE + MAX_HEAD - 1, MAX_LINE + MAX_HEAD + 70]) {
            for density in [2u64, 7, 40] {
                let hay: Vec<u8> = (0..len)
                    .map(|_| {
                        let seed = next();
                        if seed.is_multiple_of(density) {
                            b'\n'
                        } else {
                            (seed >> 8) as u8 | 1
                        }
                    })
                    .collect();
                let mut lines = Newlines::new(&hay);
                let got: Vec<usize> = std::iter::from_fn(|| lines.next()).collect();
                let window = &hay[..hay.len().min(MAX_LINE + MAX_HEAD)];
                let want: Vec<usize> = memchr::memchr_iter(b'\n', window).collect();
                assert_eq!(got, want, "len {len}");
            }
        }
    }

    #[test]
    fn request_line_and_headers() {
        let p = b"GET /bad/path?x=1 HTTP/1.1\r\nhost:  Evil-URL.example:8080 \r\nUser-Agent: curl/8.0\r\nX-Forwarded-For: 1.2.3.4\r\nHost: second\r\n\r\nbody";
        let r = parse_request(p).unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.target, b"/bad/path?x=1");
        assert_eq!(r.host, Some(&b"Evil-URL.example:8080"[..]));
        assert_eq!(r.user_agent, Some(&b"curl/8.0"[..]));
        assert_eq!(r.x_forwarded_for, Some(&b"1.2.3.4"[..]));
        assert!(r.head_complete);
        assert_eq!(r.body, b"body");
    }

    #[test]
    fn rejects_non_requests() {
        assert_eq!(parse_request(b"\x16\x03\x01"), Err(HttpError::NotRequest));
        assert_eq!(
            parse_request(b"GET / HTTP/1.1"),
            Err(HttpError::Unterminated)
        );
        assert_eq!(
            parse_request(b"GET / x HTTP/1.1\r\n"),
            Err(HttpError::BadFirstLine)
        );
        for bad in [
            &b"GET  / HTTP/1.1\r\n"[..],
            b"GET / HTTP/1.1 \r\n",
            b"GET /\r\n",
            b"GET / FTP/1.1\r\n",
            b"GET \r\n",
            b"GET  HTTP/1.1\r\n",
            b"GET /a\rb HTTP/1.1 x\n",
        ] {
            assert_eq!(parse_request(bad), Err(HttpError::BadFirstLine), "{bad:?}");
        }
        let r = parse_request(b"M-_ /a\rb HTTP/1.1\r\r\n").unwrap();
        assert_eq!(
            (r.method, r.target, r.version),
            ("M-_", &b"/a\rb"[..], &b"HTTP/1.1\r"[..])
        );
        assert_eq!(
            parse_request(b"get / HTTP/1.1\r\n"),
            Err(HttpError::NotRequest)
        );
        let long = [b"GET /".as_slice(), &[b'a'; MAX_LINE], b" HTTP/1.1\r\n"].concat();
        assert_eq!(parse_request(&long), Err(HttpError::Unterminated));
    }

    #[test]
    fn header_count_is_bounded() {
        let mut p = b"GET / HTTP/1.0\r\n".to_vec();
        for _ in 0..MAX_HEADERS {
            p.extend_from_slice(b"X-A: b\r\n");
        }
        p.extend_from_slice(b"Host: late\r\n\r\n");
        let r = parse_request(&p).unwrap();
        assert_eq!(r.host, None);
        assert!(!r.head_complete);
    }

    #[test]
    fn response() {
        let r = parse_response(b"HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\n\r\n<html>")
            .unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.reason, b"Not Found");
        assert_eq!(r.content_type, Some(&b"text/html"[..]));
        assert_eq!(r.body, b"<html>");
        assert!(parse_response(b"HTTP/1.1 2x0 OK\r\n").is_err());
    }
}
