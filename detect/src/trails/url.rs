//! URL trails: `host/path` and bare `/path` trails, matched against an HTTP request the way
//! Maltrail does (a handful of candidate paths derived from the request path, each tried
//! bare and with the Host prefixed). [`UrlCandidates::WithExtras`] adds two candidate kinds
//! Maltrail never tries (opt-in: they raise events on clean traffic; see
//! `tests/url_candidates_fp.rs` for the measured rate).

use std::borrow::Cow;

use super::table::{KeyHasher, StrTable};
use super::LabelId;

/// Longest Host considered.
const MAX_HOST: usize = 255;
/// Most candidate paths one request yields.
const MAX_CHECKS: usize = 12;

/// Candidate paths of one request, on the stack.
#[derive(Default)]
struct Checks<'a> {
    items: [&'a str; MAX_CHECKS],
    n: usize,
}

impl<'a> Checks<'a> {
    fn push(&mut self, c: &'a str) {
        if self.n < MAX_CHECKS {
            self.items[self.n] = c;
            self.n += 1;
        }
    }

    fn last(&self) -> &'a str {
        self.items[self.n.saturating_sub(1)]
    }

    fn as_slice(&self) -> &[&'a str] {
        &self.items[..self.n]
    }
}

/// Which candidate paths a request yields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UrlCandidates {
    /// Exactly Maltrail's candidates (sensor.py, `_process_packet`): the default.
    #[default]
    Maltrail,
    /// Maltrail's, then the path as sent (a trailing `/` kept) and its parent directory with
    /// the trailing `/`: trails like `host/dir/` become reachable, and a bare `/dir/` trail
    /// matches any file under that directory on any host.
    WithExtras,
}

/// A URL trail hit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UrlMatch {
    /// The request URL (`host` + path) with the parts outside the matched trail in
    /// parentheses, as Maltrail prints it: `(hostcheck.example)/malicious-login.php`,
    /// `evil-url.example/bad/path(?x=1)`.
    pub trail: String,
    /// The matched trail's label.
    pub label: LabelId,
}

/// URL trails in an arena hash table; keys are `host/path` (host lowercased, no port) or
/// `/path`.
#[derive(Debug, Default)]
pub struct UrlTrails {
    pub(crate) table: StrTable,
}

/// Maltrail's `re.sub(r"(\w+=)[^&=]+", r"\g<1>", path)`: drops parameter values.
/// (`\w` is taken as ASCII alphanumerics, `_`, and any non-ASCII byte.)
fn strip_param_values(path: &str) -> String {
    let b = path.as_bytes();
    let is_word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80;
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        if !is_word(b[i]) {
            let next = i + 1 + b[i + 1..].iter().take_while(|&&c| !is_word(c)).count();
            out.push_str(&path[i..next]);
            i = next;
            continue;
        }
        let end = i + b[i..].iter().take_while(|&&c| is_word(c)).count();
        if end < b.len()
            && b[end] == b'='
            && end + 1 < b.len()
            && !matches!(b[end + 1], b'&' | b'=')
        {
            out.push_str(&path[i..=end]);
            let mut k = end + 1;
            while k < b.len() && !matches!(b[k], b'&' | b'=') {
                k += 1;
            }
            i = k;
        } else {
            out.push_str(&path[i..end]);
            i = end;
        }
    }
    out
}

/// Whether `s` holds two `/` or more.
fn two_slashes(s: &str) -> bool {
    memchr::memchr_iter(b'/', s.as_bytes()).nth(1).is_some()
}

/// `url.split(check)` joined back with the non-empty pieces in parentheses.
fn annotate(url: &str, matched: &str) -> String {
    if matched.is_empty() {
        return url.to_owned();
    }
    let mut out = String::with_capacity(url.len() + 4);
    for (i, part) in url.split(matched).enumerate() {
        if i > 0 {
            out.push_str(matched);
        }
        if !part.is_empty() {
            out.push('(');
            out.push_str(part);
            out.push(')');
        }
    }
    out
}

impl UrlTrails {
    /// Number of URL trails.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.table.len() == 0
    }

    /// Heap bytes of the table (arena and index).
    pub fn heap_bytes(&self) -> usize {
        self.table.heap_bytes()
    }

    /// Total length of the stored trails.
    pub fn text_bytes(&self) -> usize {
        self.table.key_bytes()
    }

    /// Exact lookup of a stored trail (`host/path` with a lowercase host, or `/path`).
    pub fn contains(&self, trail: &str) -> Option<LabelId> {
        self.table.get(trail.as_bytes())
    }

    /// Iterates over (trail, label) in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, LabelId)> + '_ {
        self.table
            .iter()
            .map(|(k, l)| (std::str::from_utf8(k).unwrap_or(""), l))
    }

    /// Maltrail's URL trail check for a request with Host `host` and request target `path`
    /// (an absolute `http://host/path` target is split into both): exactly Maltrail's
    /// candidates, [`UrlCandidates::Maltrail`].
    pub fn lookup(&self, host: Option<&str>, path: &str) -> Option<UrlMatch> {
        self.lookup_candidates(host, path, UrlCandidates::Maltrail)
    }

    /// The URL trail check with the given candidate set.
    ///
    /// Maltrail's candidates (sensor.py), in order: the path without trailing `/`; if there
    /// is a query, the path without it, the path up to and including the first `=`, and the
    /// path with parameter values removed (if not already a candidate) with, when it has two
    /// or more `/`, its last segment; then, if the last candidate has two or more `/`, its
    /// parent (no trailing `/`) and the first candidate's last segment (`/name`, no query).
    /// [`UrlCandidates::WithExtras`] appends the path as sent (a trailing `/` kept) and its
    /// parent directory with the trailing `/`. Each candidate is tried bare, then with the
    /// host prefixed; finally a `host/` trail matches any request to that host. Matching is
    /// case-insensitive (trails are stored lowercased). Allocates only on a hit, or for a
    /// path with `//`, query parameters or upper-case letters.
    pub fn lookup_candidates(
        &self,
        host: Option<&str>,
        path: &str,
        candidates: UrlCandidates,
    ) -> Option<UrlMatch> {
        if self.table.len() == 0 {
            return None;
        }
        if path.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.lookup_candidates(host, &path.to_ascii_lowercase(), candidates);
        }
        // Byte searches below: `/`, `?`, `=` and `:` are never part of a multi-byte UTF-8
        // sequence, so every index found is a character boundary.
        let (host, path) = match crate::protocols::http::find_scheme_sep(path.as_bytes()) {
            Some(i) if path[..i].bytes().all(|b| b.is_ascii_alphabetic()) => {
                let rest = &path[i + 3..];
                match memchr::memchr(b'/', rest.as_bytes()) {
                    Some(j) => (Some(&rest[..j]), &rest[j..]),
                    None => (Some(rest), "/"),
                }
            }
            _ => (host, path),
        };

        let mut hbuf = [0u8; MAX_HOST];
        let host: &str = match host {
            Some(h) => {
                let h = h[..memchr::memchr(b':', h.as_bytes()).unwrap_or(h.len())].trim();
                let h = h.strip_suffix('.').unwrap_or(h);
                if h.len() > MAX_HOST || !h.is_ascii() {
                    ""
                } else {
                    let out = &mut hbuf[..h.len()];
                    for (o, b) in out.iter_mut().zip(h.bytes()) {
                        *o = b.to_ascii_lowercase();
                    }
                    debug_assert!(out.is_ascii());
                    // SAFETY: `out` holds the bytes of `h`, checked ASCII above, lowercased:
                    // ASCII, hence UTF-8.
                    unsafe { std::str::from_utf8_unchecked(out) }
                }
            }
            None => "",
        };

        let original = path;
        let path: Cow<'_, str> = if crate::protocols::http::has_double_slash(path.as_bytes()) {
            Cow::Owned(path.replace("//", "/"))
        } else {
            Cow::Borrowed(path)
        };
        let p: &str = &path;
        let query = memchr::memchr(b'?', p.as_bytes());
        let stripped: Option<String> = query.map(|_| strip_param_values(p));

        let mut checks = Checks::default();
        let first = p.trim_end_matches('/');
        checks.push(first);
        if let Some(q) = query {
            checks.push(p[..q].trim_end_matches('/'));
            if let Some(e) = memchr::memchr(b'=', p.as_bytes()) {
                checks.push(&p[..=e]);
            }
            if let Some(s) = stripped.as_deref() {
                if !checks.as_slice().contains(&s) {
                    checks.push(s);
                    if two_slashes(s) {
                        if let Some(r) = memchr::memrchr(b'/', s.as_bytes()) {
                            checks.push(&s[r..]);
                        }
                    }
                }
            }
        }
        let last = checks.last();
        if two_slashes(last) {
            if let Some(r) = memchr::memrchr(b'/', last.as_bytes()) {
                checks.push(&last[..r]);
            }
            let tail = memchr::memrchr(b'/', first.as_bytes()).map_or(first, |r| &first[r..]);
            let tail_end = memchr::memchr(b'?', tail.as_bytes()).unwrap_or(tail.len());
            checks.push(&tail[..tail_end]);
        }
        if candidates == UrlCandidates::WithExtras {
            checks.push(p);
            let no_query = p.split('?').next().unwrap_or(p);
            if let Some(r) = no_query.rfind('/').filter(|&r| r > 0) {
                checks.push(&no_query[..=r]);
            }
        }

        let hb = host.as_bytes();
        // Every key's hash first, each key's index entries prefetched, then the probes in
        // Maltrail's order: the table's cache misses overlap instead of queueing.
        // (bare, with host) per check.
        let mut hashes = [(0u64, 0u64); MAX_CHECKS];
        let mut wanted = [0u64; 2 * MAX_CHECKS + 1];
        let mut n = 0;
        let mut want = |h: u64| {
            if let Some(slot) = wanted.get_mut(n) {
                *slot = h;
                n += 1;
            }
        };
        for (&check, slot) in checks.as_slice().iter().zip(hashes.iter_mut()) {
            let mut h = KeyHasher::new();
            h.prepend(check.as_bytes());
            slot.0 = h.finish();
            h.prepend(hb);
            slot.1 = h.finish();
            if !check.is_empty() {
                want(slot.0);
                if !hb.is_empty() {
                    want(slot.1);
                }
            }
        }
        let host_root = {
            let mut h = KeyHasher::new();
            h.prepend(b"/");
            h.prepend(hb);
            h.finish()
        };
        if !hb.is_empty() {
            want(host_root);
        }
        self.table
            .prefetch(wanted.get(..n).unwrap_or_default().iter().copied());
        for (&check, &(bare, with_host)) in checks.as_slice().iter().zip(hashes.iter()) {
            if check.is_empty() {
                continue;
            }
            if let Some(label) = self.table.get_hashed(bare, check.as_bytes(), &[]) {
                return Some(self.hit(host, original, check, "", label));
            }
            if !hb.is_empty() {
                if let Some(label) = self.table.get_hashed(with_host, hb, check.as_bytes()) {
                    return Some(self.hit(host, original, check, host, label));
                }
            }
        }
        if !hb.is_empty() {
            if let Some(label) = self.table.get_hashed(host_root, hb, b"/") {
                return Some(UrlMatch {
                    trail: format!("{host}/"),
                    label,
                });
            }
        }
        None
    }

    fn hit(&self, host: &str, path: &str, check: &str, prefix: &str, label: LabelId) -> UrlMatch {
        let url = format!("{host}{path}");
        let matched = format!("{prefix}{check}");
        UrlMatch {
            trail: annotate(&url, &matched),
            label,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trails(list: &[(&str, LabelId)]) -> UrlTrails {
        let mut u = UrlTrails::default();
        for (t, l) in list {
            u.table.insert(t.as_bytes(), *l);
        }
        u
    }

    fn hit(u: &UrlTrails, host: Option<&str>, path: &str) -> Option<(String, LabelId)> {
        u.lookup(host, path).map(|m| (m.trail, m.label))
    }

    fn s(t: &str, l: LabelId) -> Option<(String, LabelId)> {
        Some((t.to_owned(), l))
    }

    #[test]
    fn bare_path() {
        let u = trails(&[("/malicious-login.php", 1)]);
        assert_eq!(
            hit(&u, Some("hostcheck.example"), "/malicious-login.php"),
            s("(hostcheck.example)/malicious-login.php", 1)
        );
        assert_eq!(
            hit(&u, None, "/malicious-login.php"),
            s("/malicious-login.php", 1)
        );
        assert_eq!(
            hit(&u, Some("h.example"), "/malicious-login.php?user=x"),
            s("(h.example)/malicious-login.php(?user=x)", 1)
        );
        // Last segment of a deeper path.
        assert_eq!(
            hit(&u, Some("h.example"), "/a/b/malicious-login.php"),
            s("(h.example/a/b)/malicious-login.php", 1)
        );
        assert_eq!(hit(&u, Some("h.example"), "/malicious-login.phpx"), None);
    }

    #[test]
    fn host_and_path() {
        let u = trails(&[("evil-url.example/bad/path", 2)]);
        assert_eq!(
            hit(&u, Some("evil-url.example"), "/bad/path"),
            s("evil-url.example/bad/path", 2)
        );
        assert_eq!(
            hit(&u, Some("EVIL-URL.example:8080"), "/bad/path/"),
            s("evil-url.example/bad/path(/)", 2)
        );
        assert_eq!(
            hit(&u, Some("evil-url.example"), "/bad/path?x=1"),
            s("evil-url.example/bad/path(?x=1)", 2)
        );
        // Parent directory (Maltrail's, without the slash).
        assert_eq!(
            hit(&u, Some("evil-url.example"), "/bad/path/x.php"),
            s("evil-url.example/bad/path(/x.php)", 2)
        );
        assert_eq!(hit(&u, Some("other.example"), "/bad/path"), None);
        assert_eq!(hit(&u, None, "/bad/path"), None);
        assert_eq!(
            hit(&u, None, "http://evil-url.example/bad/path"),
            s("evil-url.example/bad/path", 2)
        );
        assert_eq!(
            hit(&u, Some("evil-url.example"), "//bad//path"),
            s("(evil-url.example//bad//path)", 2)
        );
    }

    #[test]
    fn query_candidates() {
        let u = trails(&[
            ("namchoncc.co.kr/include/?ind=", 3),
            ("/gate.php?id=&data=", 4),
        ]);
        assert_eq!(
            hit(&u, Some("namchoncc.co.kr"), "/include/?ind=abc"),
            s("namchoncc.co.kr/include/?ind=(abc)", 3)
        );
        assert_eq!(
            hit(&u, Some("x.example"), "/gate.php?id=7&data=zz"),
            s("(x.example/gate.php?id=7&data=zz)", 4)
        );
    }

    fn hit_extra(u: &UrlTrails, host: Option<&str>, path: &str) -> Option<(String, LabelId)> {
        u.lookup_candidates(host, path, UrlCandidates::WithExtras)
            .map(|m| (m.trail, m.label))
    }

    #[test]
    fn trailing_slash_trails_and_host_root() {
        let u = trails(&[("4devsolutions.com/4nuak1/", 5), ("bad.example/", 6)]);
        // Maltrail strips the trailing `/` of every candidate: `host/dir/` is unreachable.
        assert_eq!(hit(&u, Some("4devsolutions.com"), "/4nuak1/"), None);
        assert_eq!(
            hit(&u, Some("4devsolutions.com"), "/4nuak1/payload.exe"),
            None
        );
        assert_eq!(
            hit_extra(&u, Some("4devsolutions.com"), "/4nuak1/"),
            s("4devsolutions.com/4nuak1/", 5)
        );
        assert_eq!(
            hit_extra(&u, Some("4devsolutions.com"), "/4nuak1/payload.exe"),
            s("4devsolutions.com/4nuak1/(payload.exe)", 5)
        );
        assert_eq!(hit_extra(&u, Some("4devsolutions.com"), "/other/x"), None);
        // The `host/` trail is Maltrail's own last check.
        assert_eq!(
            hit(&u, Some("bad.example"), "/anything.php"),
            s("bad.example/", 6)
        );
    }

    #[test]
    fn bare_directory_trails_only_with_extras() {
        let u = trails(&[("/wp-content/uploads/", 7)]);
        assert_eq!(
            hit(&u, Some("blog.example"), "/wp-content/uploads/logo.png"),
            None
        );
        assert_eq!(
            hit_extra(&u, Some("blog.example"), "/wp-content/uploads/logo.png"),
            s("(blog.example)/wp-content/uploads/(logo.png)", 7)
        );
    }

    /// Every candidate Maltrail derives (sensor.py), each reachable by default.
    #[test]
    fn maltrail_candidates_each_reachable() {
        // (trail, host, request path)
        let cases = [
            ("/a/b/c.php", "h.example", "/a/b/c.php/"), // path, trailing `/` stripped
            ("/a/b/c.php", "h.example", "/a/b/c.php?x=1"), // path without the query
            ("/a/b/c.php?x=", "h.example", "/a/b/c.php?x=1&y=2"), // up to the first `=`
            ("/a/c.php?x=&y=", "h.example", "/a/c.php?x=1&y=2"), // values removed
            ("/c.php?x=&y=", "h.example", "/a/c.php?x=1&y=2"), // its last segment
            ("/a/b", "h.example", "/a/b/c.php"),        // parent directory
            ("/c.php", "h.example", "/a/b/c.php"),      // last segment
            ("h.example/a/b", "h.example", "/a/b/c.php"), // each with the host
        ];
        for (trail, host, path) in cases {
            let u = trails(&[(trail, 9)]);
            assert!(
                hit(&u, Some(host), path).is_some(),
                "{trail} not reached by {host}{path}"
            );
        }
        // Not candidates in Maltrail: the bare parent directory with its `/`, a grandparent.
        for (trail, path) in [("/a/b/", "/a/b/c.php"), ("/a", "/a/b/c.php")] {
            let u = trails(&[(trail, 9)]);
            assert_eq!(hit(&u, Some("h.example"), path), None, "{trail}");
        }
    }

    #[test]
    fn param_values() {
        assert_eq!(strip_param_values("/a.php?x=1&y=22"), "/a.php?x=&y=");
        assert_eq!(strip_param_values("/a.php?x=&y=2"), "/a.php?x=&y=");
        assert_eq!(strip_param_values("/a.php"), "/a.php");
        assert_eq!(strip_param_values("/é.php?ü=ö"), "/é.php?ü=");
        assert_eq!(annotate("h/a/h/b", "/h"), "(h/a)/h(/b)");
    }
}
