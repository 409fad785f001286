//! URL trails: `host/path` and bare `/path` trails, matched against an HTTP request the way
//! Maltrail does (a handful of candidate paths derived from the request path, each tried
//! bare and with the Host prefixed). [`UrlCandidates::WithExtras`] adds two candidate kinds
//! Maltrail never tries (opt-in: they raise events on clean traffic; see
//! `tests/url_candidates_fp.rs` for the measured rate).

use std::borrow::Cow;
use std::mem::MaybeUninit;
use std::ops::Range;

use super::key_filter::{self, may_hold, prefetch_bit, KeyFilter};
use super::table::{KeyHasher, LayoutError, SharedBytes, StrTable};
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
    /// Rules out probes that cannot hit ([`filter_words`]: a clear bit also proves that no
    /// key names a host, so the host-prefixed candidates are not even hashed); built with
    /// the table, or stored beside it.
    filter: KeyFilter,
}

/// Filter bits per entry (a key, or a key's `host/` prefix): about 94% or more of absent
/// hashes meet a clear bit.
const FILTER_BITS_PER_ENTRY: usize = 16;

/// The `host/` prefix of a stored key: up to and including its first `/`, unless that
/// starts the key.
fn host_prefix(key: &[u8]) -> Option<&[u8]> {
    let i = memchr::memchr(b'/', key).filter(|&i| i > 0)?;
    key.get(..=i)
}

/// The filter words of `table` (a power of two of them, at least one), as
/// [`UrlTrails::mapped`] expects them stored: a bit for each key and each key's `host/`
/// prefix.
pub(crate) fn filter_words(table: &StrTable) -> Vec<u64> {
    let entries = table.len()
        + table
            .iter()
            .filter(|(k, _)| host_prefix(k).is_some())
            .count();
    let hashes = table.iter().flat_map(|(key, _)| {
        std::iter::once(KeyHasher::hash(key)).chain(host_prefix(key).map(KeyHasher::hash))
    });
    key_filter::build(entries, FILTER_BITS_PER_ENTRY, hashes)
}

/// Bytes of a path rewritten on the stack ([`PathOut`]): a live hand-off carries at most
/// 2,048 bytes of its frame, so most paths fit; a longer one goes to the heap.
const PATH_ROOM: usize = 2048;

/// Stack room for [`PathOut`], left uninitialised: only what a rewrite writes is read.
type PathRoom = [MaybeUninit<u8>; PATH_ROOM];

/// Uninitialised room for [`PathOut::new`] (nothing is written until a rewrite pushes).
const fn path_room() -> PathRoom {
    [MaybeUninit::uninit(); PATH_ROOM]
}

/// A path rewritten from pieces of a `&str` (neither rewrite lengthens it): built in a
/// stack buffer, moved to the heap only when it outgrows the buffer, so that a request
/// with a query or a `//` allocates nothing. The buffer is not zeroed first.
struct PathOut<'b> {
    /// `buf[..len]` is initialised and UTF-8: it only ever receives whole `&str`s, one
    /// after another.
    buf: &'b mut PathRoom,
    len: usize,
    heap: Option<String>,
}

impl<'b> PathOut<'b> {
    fn new(buf: &'b mut PathRoom) -> Self {
        PathOut {
            buf,
            len: 0,
            heap: None,
        }
    }

    /// `buf[..len]` as a `&str`.
    ///
    /// # Safety
    /// `buf[..len]` is initialised and UTF-8.
    unsafe fn stacked(buf: &[MaybeUninit<u8>], len: usize) -> &str {
        debug_assert!(len <= buf.len());
        let b = buf.get(..len).unwrap_or_default();
        // SAFETY: initialised and UTF-8, by the caller's contract.
        unsafe { std::str::from_utf8_unchecked(b.assume_init_ref()) }
    }

    fn push(&mut self, s: &str) {
        if let Some(h) = &mut self.heap {
            h.push_str(s);
        } else if let Some(to) = self.buf.get_mut(self.len..self.len + s.len()) {
            to.write_copy_of_slice(s.as_bytes());
            self.len += s.len();
        } else {
            let mut h = String::with_capacity(self.len + s.len());
            // SAFETY: the field's invariant.
            h.push_str(unsafe { Self::stacked(&self.buf[..], self.len) });
            h.push_str(s);
            self.heap = Some(h);
        }
    }

    fn finish(self) -> Cow<'b, str> {
        let PathOut { buf, len, heap } = self;
        match heap {
            Some(h) => Cow::Owned(h),
            None => {
                let buf: &'b PathRoom = buf;
                // SAFETY: the field's invariant.
                Cow::Borrowed(unsafe { Self::stacked(buf, len) })
            }
        }
    }
}

/// `path` with each `//` made `/`, left to right, as `str::replace("//", "/")`.
fn collapse_slashes<'b>(path: &str, mut out: PathOut<'b>) -> Cow<'b, str> {
    let b = path.as_bytes();
    let (mut last, mut i) = (0, 0);
    while i + 1 < b.len() {
        if b[i] == b'/' && b[i + 1] == b'/' {
            out.push(&path[last..i]);
            out.push("/");
            i += 2;
            last = i;
        } else {
            i += 1;
        }
    }
    out.push(&path[last..]);
    out.finish()
}

/// Maltrail's `re.sub(r"(\w+=)[^&=]+", r"\g<1>", path)`: drops parameter values.
/// (`\w` is taken as ASCII alphanumerics, `_`, and any non-ASCII byte.) The regex's matches
/// are the `=`s whose key byte (a word byte just before) lies past the previous match and
/// which a byte other than `&` and `=` follows; the value runs to the next `&` or `=`
/// (`a=b=c` gives `a==c`: the second `=`'s key byte is in the first match's value).
fn strip_param_values<'b>(path: &str, mut out: PathOut<'b>) -> Cow<'b, str> {
    let b = path.as_bytes();
    let is_word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80;
    // `path[kept..]` is not written yet; the next `=` is searched from `at`. (Byte loops:
    // paths are short, and a `memchr` call costs more than the bytes it would skip.)
    let (mut kept, mut at) = (0, 0);
    while let Some(eq) = b.get(at..).and_then(|r| r.iter().position(|&c| c == b'=')) {
        let eq = at + eq;
        let keyed = eq > at && b.get(eq - 1).is_some_and(|&c| is_word(c));
        let valued = b.get(eq + 1).is_some_and(|&c| c != b'&' && c != b'=');
        if keyed && valued {
            // Up to the `=` (an ASCII byte: a `char` boundary, as is the value's end).
            out.push(path.get(kept..=eq).unwrap_or_default());
            let value = b.get(eq + 1..).unwrap_or_default();
            let len = value.iter().position(|&c| c == b'&' || c == b'=');
            kept = eq + 1 + len.unwrap_or(value.len());
            at = kept;
        } else {
            at = eq + 1;
        }
    }
    out.push(path.get(kept..).unwrap_or_default());
    out.finish()
}

/// `s.trim()`; without decoding characters when both ends are ASCII other than whitespace
/// (every real host name).
fn trim(s: &str) -> &str {
    // `char::is_whitespace` for ASCII: `\t` to `\r`, and the space.
    let plain =
        |b: Option<&u8>| b.is_none_or(|&b| b.is_ascii() && !matches!(b, b'\t'..=b'\r' | b' '));
    let b = s.as_bytes();
    if plain(b.first()) && plain(b.last()) {
        s
    } else {
        s.trim()
    }
}

/// When [`UrlTrails::lookup_path`]'s host normalisation (up to the first `:`, trimmed, one
/// trailing `.` dropped, ASCII lowercase, at most [`MAX_HOST`] bytes) leaves `h` as it is:
/// whether `h` holds a `/`. One pass over the bytes without a branch per byte.
fn normalized_host(h: &[u8]) -> Option<bool> {
    let plain_end = |b: Option<&u8>| b.is_none_or(|&b| !matches!(b, b'\t'..=b'\r' | b' '));
    if h.len() > MAX_HOST
        || !plain_end(h.first())
        || !plain_end(h.last())
        || h.last() == Some(&b'.')
    {
        return None;
    }
    let (odd, slash) = h.iter().fold((false, false), |(odd, slash), &b| {
        (
            odd | (b >= 0x80) | b.is_ascii_uppercase() | (b == b':'),
            slash | (b == b'/'),
        )
    });
    (!odd).then_some(slash)
}

/// The index of the last `/` of `s` when it holds two or more. (Byte loops: candidate paths
/// are short, and a `memchr` call per slash costs more.)
fn last_of_two_slashes(s: &[u8]) -> Option<usize> {
    let r = s.iter().rposition(|&b| b == b'/')?;
    s.get(..r)?.contains(&b'/').then_some(r)
}

/// Whether `p` holds `//`, and where its first `?` is (when it holds no `//`: such a path
/// is rewritten and searched again), eight bytes at a time.
fn scan_path(p: &[u8]) -> (bool, Option<usize>) {
    let mut query = None;
    // Whether the byte before the current word is a `/`.
    let mut carry = false;
    let words = p.chunks_exact(8);
    // The last bytes as a word, zero-padded (`\0` is neither byte looked for).
    let tail = words
        .remainder()
        .iter()
        .rev()
        .fold(0u64, |w, &b| w << 8 | u64::from(b));
    let full = words.map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()));
    for (k, w) in full
        .chain((!p.len().is_multiple_of(8)).then_some(tail))
        .enumerate()
    {
        // High bit of each byte that is a `/`.
        let slashes = zero_bytes(w ^ 0x2f2f_2f2f_2f2f_2f2f);
        if slashes & (slashes << 8) != 0 || (carry && slashes & 0x80 != 0) {
            return (true, query);
        }
        carry = slashes >> 63 != 0;
        if query.is_none() {
            let marks = zero_bytes(w ^ 0x3f3f_3f3f_3f3f_3f3f);
            if marks != 0 {
                query = Some(8 * k + (marks.trailing_zeros() / 8) as usize);
            }
        }
    }
    (false, query)
}

/// The high bit of each zero byte of `w` (exactly: no false positives from borrows).
#[inline]
fn zero_bytes(w: u64) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    !(((w & LOW7) + LOW7) | w | LOW7)
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
    /// URL trails of a table built in memory (its probe filter built here).
    pub(crate) fn new(table: StrTable) -> Self {
        let filter = KeyFilter::owned(filter_words(&table), table.len());
        Self { table, filter }
    }

    /// URL trails of a table in a compiled set, with its probe filter stored there: `range`
    /// of `bytes` holds [`filter_words`] of the table (u64 LE, 8-aligned).
    pub(crate) fn mapped(
        table: StrTable,
        bytes: SharedBytes,
        range: Range<usize>,
    ) -> Result<Self, LayoutError> {
        let filter = KeyFilter::mapped(bytes, range, table.len(), "URL filter size")?;
        Ok(Self { table, filter })
    }

    /// Number of URL trails.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.table.len() == 0
    }

    /// Heap bytes of the table (arena and index) and of its probe filter; 0 if mapped.
    pub fn heap_bytes(&self) -> usize {
        self.table.heap_bytes() + self.filter.heap_bytes()
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
    /// case-insensitive (trails are stored lowercased). Allocates only on a hit, for a path
    /// with upper-case letters, or for one longer than 2 KiB with `//` or a query.
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
        // Byte searches here and below: `/`, `?`, `=` and `:` are never part of a multi-byte
        // UTF-8 sequence, so every index found is a character boundary.
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
        self.lookup_path(host, path, candidates)
    }

    /// [`UrlTrails::lookup_candidates`] for a path whose ASCII letters are lowercase and
    /// whose absolute URL, if any, is split off already (the HTTP pipeline's request path;
    /// a `://` after anything but letters is not a scheme and stays in the path). Neither is
    /// searched for again.
    pub(crate) fn lookup_path(
        &self,
        host: Option<&str>,
        path: &str,
        candidates: UrlCandidates,
    ) -> Option<UrlMatch> {
        self.lookup_path_after(host, path, candidates, || true)
    }

    /// [`UrlTrails::lookup_path`] with the caller's own work, `between`, run once the probe
    /// filter's words for the bare candidates and the `host/` key are being fetched (the
    /// host-prefixed keys are hashed only after, when the filter names the host) and before
    /// they are read: their cache misses overlap that work instead of stalling the probes.
    /// `between` runs exactly once, whatever the outcome; returning false, it ends the
    /// lookup there (`None`, no probe).
    pub(crate) fn lookup_path_after(
        &self,
        host: Option<&str>,
        path: &str,
        candidates: UrlCandidates,
        between: impl FnOnce() -> bool,
    ) -> Option<UrlMatch> {
        debug_assert!(!path.bytes().any(|b| b.is_ascii_uppercase()));
        if self.table.len() == 0 {
            between();
            return None;
        }
        // Filled only when the host needs normalising.
        let mut hbuf: [u8; MAX_HOST];
        // Whether the host holds a `/` (see `host_named` below).
        let mut host_slash = false;
        let normalized = host.and_then(|h| normalized_host(h.as_bytes()));
        let host: &str = match (host, normalized) {
            // Already as the normalisation below leaves it (the HTTP pipeline's hosts): no copy.
            (Some(h), Some(slash)) => {
                host_slash = slash;
                h
            }
            (Some(h), None) => {
                let h = trim(&h[..memchr::memchr(b':', h.as_bytes()).unwrap_or(h.len())]);
                let h = h.strip_suffix('.').unwrap_or(h);
                if h.len() > MAX_HOST || !h.is_ascii() {
                    ""
                } else {
                    hbuf = [0u8; MAX_HOST];
                    let out = &mut hbuf[..h.len()];
                    for (o, b) in out.iter_mut().zip(h.bytes()) {
                        *o = b.to_ascii_lowercase();
                        host_slash |= b == b'/';
                    }
                    debug_assert!(out.is_ascii());
                    // SAFETY: `out` holds the bytes of `h`, checked ASCII above, lowercased:
                    // ASCII, hence UTF-8.
                    unsafe { std::str::from_utf8_unchecked(out) }
                }
            }
            (None, _) => "",
        };

        let original = path;
        // Stack room (uninitialised), taken only when used.
        let (mut collapsed, mut unvalued);
        let (path, query): (Cow<'_, str>, _) = match scan_path(path.as_bytes()) {
            (true, _) => {
                collapsed = path_room();
                let p = collapse_slashes(path, PathOut::new(&mut collapsed));
                let query = memchr::memchr(b'?', p.as_bytes());
                (p, query)
            }
            (false, query) => (Cow::Borrowed(path), query),
        };
        let p: &str = &path;
        let stripped = match query {
            Some(_) => {
                unvalued = path_room();
                Some(strip_param_values(p, PathOut::new(&mut unvalued)))
            }
            None => None,
        };

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
                    if let Some(r) = last_of_two_slashes(s.as_bytes()) {
                        checks.push(&s[r..]);
                    }
                }
            }
        }
        let last = checks.last();
        if let Some(r) = last_of_two_slashes(last.as_bytes()) {
            checks.push(&last[..r]);
            let first_slash = if last == first {
                Some(r)
            } else {
                memchr::memrchr(b'/', first.as_bytes())
            };
            let tail = first_slash.map_or(first, |r| &first[r..]);
            // Without a query in the path, none in its tail either.
            let tail_end = query
                .and_then(|_| memchr::memchr(b'?', tail.as_bytes()))
                .unwrap_or(tail.len());
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
        let filter = self.filter.for_table(self.table.len());
        // `host/` is the key of Maltrail's last check, and the filter's entry for "some trail
        // names this host": a host-prefixed candidate `host` + `/...` cannot be stored
        // otherwise. (A host holding `/`, or a candidate not starting with `/`, splits
        // elsewhere: those are looked up on their own bits.)
        let host_root = {
            let mut h = KeyHasher::new();
            h.prepend(b"/");
            h.prepend(hb);
            h.finish()
        };
        // Each check's bare hash and the hasher state it leaves (a host-prefixed key goes on
        // from there); empty checks are never probed.
        let mut bare = [(KeyHasher::new(), 0u64); MAX_CHECKS];
        for (&check, slot) in checks.as_slice().iter().zip(bare.iter_mut()) {
            if !check.is_empty() {
                slot.0.prepend(check.as_bytes());
                slot.1 = slot.0.finish();
            }
        }
        if let Some(words) = filter {
            prefetch_bit(words, host_root);
            for (check, &(_, h)) in checks.as_slice().iter().zip(bare.iter()) {
                if !check.is_empty() {
                    prefetch_bit(words, h);
                }
            }
        }
        if !between() {
            return None;
        }
        let host_named = !hb.is_empty() && (host_slash || may_hold(filter, host_root));
        // Every surviving key's hash first, each key's index entries prefetched, then the
        // probes in Maltrail's order: the table's cache misses overlap instead of queueing.
        // (bare, with host) per check; `None` where the filter rules the key out.
        let mut hashes = [(None, None); MAX_CHECKS];
        let mut wanted = [0u64; 2 * MAX_CHECKS + 1];
        let mut n = 0;
        let mut want = |h: u64| {
            if let Some(slot) = wanted.get_mut(n) {
                *slot = h;
                n += 1;
            }
            Some(h)
        };
        for ((&check, &(mut h, bare)), slot) in checks
            .as_slice()
            .iter()
            .zip(bare.iter())
            .zip(hashes.iter_mut())
        {
            if check.is_empty() {
                continue;
            }
            if may_hold(filter, bare) {
                slot.0 = want(bare);
            }
            if host_named || (!hb.is_empty() && !check.starts_with('/')) {
                h.prepend(hb);
                let with_host = h.finish();
                if may_hold(filter, with_host) {
                    slot.1 = want(with_host);
                }
            }
        }
        let host_root = if host_named && may_hold(filter, host_root) {
            want(host_root)
        } else {
            None
        };
        self.table
            .prefetch(wanted.get(..n).unwrap_or_default().iter().copied());
        for (&check, &(bare, with_host)) in checks.as_slice().iter().zip(hashes.iter()) {
            if let Some(label) = bare.and_then(|h| self.table.get_hashed(h, check.as_bytes(), &[]))
            {
                return Some(self.hit(host, original, check, "", label));
            }
            if let Some(label) =
                with_host.and_then(|h| self.table.get_hashed(h, hb, check.as_bytes()))
            {
                return Some(self.hit(host, original, check, host, label));
            }
        }
        if let Some(label) = host_root.and_then(|h| self.table.get_hashed(h, hb, b"/")) {
            return Some(UrlMatch {
                trail: format!("{host}/"),
                label,
            });
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

    #[test]
    fn hosts_taken_as_they_are_only_when_already_normalised() {
        let long = "a".repeat(MAX_HOST + 1);
        for (h, plain) in [
            ("evil.example", Some(false)),
            ("", Some(false)),
            ("a/b", Some(true)),
            ("Evil.example", None),
            ("evil.example:8080", None),
            ("evil.example.", None),
            (" evil.example", None),
            ("evil.example\x0c", None),
            ("\u{e9}vil.example", None),
            ("a/B", None),
            (long.as_str(), None),
        ] {
            assert_eq!(normalized_host(h.as_bytes()), plain, "{h:?}");
        }
        // Either way the lookup answers alike.
        let t = trails(&[("evil.example/x.php", 1)]);
        for h in [
            "evil.example",
            "EVIL.example:80",
            "evil.example.",
            " evil.example\t",
        ] {
            let m = t.lookup_path(Some(h), "/x.php", UrlCandidates::Maltrail);
            assert_eq!(m.map(|m| m.label), Some(1), "{h:?}");
        }
    }

    fn trails(list: &[(&str, LabelId)]) -> UrlTrails {
        let mut table = StrTable::default();
        for (t, l) in list {
            table.insert(t.as_bytes(), *l);
        }
        UrlTrails::new(table)
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
    fn between_runs_once_whatever_the_outcome() {
        let u = trails(&[("evil-url.example/bad/path", 2)]);
        let after = |u: &UrlTrails, host: &str, path: &str, go_on: bool| {
            let mut runs = 0;
            let m = u.lookup_path_after(Some(host), path, UrlCandidates::Maltrail, || {
                runs += 1;
                go_on
            });
            (m.map(|m| m.label), runs)
        };
        assert_eq!(
            after(&u, "evil-url.example", "/bad/path", true),
            (Some(2), 1)
        );
        assert_eq!(after(&u, "evil-url.example", "/good/path", true), (None, 1));
        assert_eq!(after(&u, "other.example", "/bad/path?x=1", true), (None, 1));
        // Stopped by the caller: no probe, even for a trail.
        assert_eq!(after(&u, "evil-url.example", "/bad/path", false), (None, 1));
        // No trails at all.
        assert_eq!(
            after(&trails(&[]), "evil-url.example", "/bad/path", true),
            (None, 1)
        );
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

    /// The filter's host entry is `host/`: keys that split elsewhere are still found.
    #[test]
    fn filter_keeps_keys_split_elsewhere() {
        let u = trails(&[("a/b/c.php", 1), ("h.examplex.php", 2), ("/p.php", 3)]);
        // A Host holding `/`: the stored key's host part is `a`, not `a/b`.
        assert_eq!(hit(&u, Some("a/b"), "/c.php"), s("a/b/c.php", 1));
        // A target not starting with `/`: the key holds no `/` at all.
        assert_eq!(hit(&u, Some("h.example"), "x.php"), s("h.examplex.php", 2));
        // A host no trail names still meets the bare trails.
        assert_eq!(
            hit(&u, Some("z.example"), "/p.php"),
            s("(z.example)/p.php", 3)
        );
        assert_eq!(hit(&u, Some("z.example"), "/c.php"), None);
    }

    /// The filter rules out what is absent, never what is stored; keys added after it was
    /// built bypass it.
    #[test]
    fn filter_answers_for_its_table_only() {
        let mut table = StrTable::default();
        for i in 0..2000 {
            table.insert(format!("h{i}.example/p{i}.php").as_bytes(), i);
            table.insert(format!("/bare{i}.php").as_bytes(), i);
        }
        let mut u = UrlTrails::new(table);
        let words = u.filter.for_table(u.len()).unwrap();
        for (k, _) in u.table.iter() {
            assert!(may_hold(Some(words), KeyHasher::hash(k)));
            if let Some(p) = host_prefix(k) {
                assert!(may_hold(Some(words), KeyHasher::hash(p)));
            }
        }
        let absent = (0..10_000)
            .filter(|i| !may_hold(Some(words), KeyHasher::hash(format!("/x{i}").as_bytes())))
            .count();
        assert!(absent > 9_000, "{absent} of 10,000 absent keys ruled out");
        for i in (0..2000).step_by(97) {
            assert_eq!(
                hit(&u, Some(&format!("h{i}.example")), &format!("/p{i}.php")),
                s(&format!("h{i}.example/p{i}.php"), i)
            );
        }
        u.table.insert(b"late.example/x.php", 7);
        assert!(u.filter.for_table(u.len()).is_none());
        assert_eq!(
            hit(&u, Some("late.example"), "/x.php"),
            s("late.example/x.php", 7)
        );
    }

    #[test]
    fn path_scans() {
        for p in [
            "",
            "/",
            "//",
            "/a//b?c",
            "/a?b//c",
            "/a/b?c?d",
            "?",
            "/a/b/c.php",
            "/static/123456.js",
            "/234567/",
            "/2345678//",
            "/234567//",
            "/2345678?/x/",
            "/234567?",
            "/23456789012345?/",
            "/é/ü?/ö//",
            "\u{ff}/\u{7f}\u{2f}",
            "/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p?q=r/s",
        ] {
            let b = p.as_bytes();
            let (double, query) = scan_path(b);
            assert_eq!(double, memchr::memmem::find(b, b"//").is_some(), "{p}");
            if !double {
                assert_eq!(query, memchr::memchr(b'?', b), "{p}");
            }
            let two = memchr::memchr_iter(b'/', b).nth(1).is_some();
            assert_eq!(
                last_of_two_slashes(b),
                memchr::memrchr(b'/', b).filter(|_| two),
                "{p}"
            );
        }
    }

    #[test]
    fn trims_like_str_trim() {
        for s in [
            "",
            " ",
            "a",
            " a",
            "a ",
            "\u{b}a\u{c}",
            "\ta\r",
            "a\u{a0}",
            "\u{a0}a",
            "\u{3000}a b\u{85}",
            "\u{1c}a\u{1f}",
            "é",
            "a\u{7f}",
            "\n",
        ] {
            assert_eq!(trim(s), s.trim(), "{s:?}");
        }
        for b in 0..=0x7fu8 {
            let s = char::from(b).to_string();
            assert_eq!(trim(&s), s.trim(), "{b:#x}");
        }
    }

    fn unvalued(p: &str) -> String {
        strip_param_values(p, PathOut::new(&mut path_room())).into_owned()
    }

    #[test]
    fn param_values() {
        assert_eq!(unvalued("/a.php?x=1&y=22"), "/a.php?x=&y=");
        assert_eq!(unvalued("/a.php?x=&y=2"), "/a.php?x=&y=");
        assert_eq!(unvalued("/a.php"), "/a.php");
        assert_eq!(unvalued("/é.php?ü=ö"), "/é.php?ü=");
        // Longer than the stack buffer: finished on the heap, the same (from the first push,
        // and after pieces on the stack).
        let long = format!("/{}.php?x=1&y=22", "é".repeat(PATH_ROOM));
        assert_eq!(
            unvalued(&long),
            format!("/{}.php?x=&y=", "é".repeat(PATH_ROOM))
        );
        let spilled = format!("/a.php?{}", "x=1&".repeat(700));
        assert_eq!(unvalued(&spilled), format!("/a.php?{}", "x=&".repeat(700)));
        assert_eq!(annotate("h/a/h/b", "/h"), "(h/a)/h(/b)");
    }

    /// The regex Maltrail runs, with `\w` as [`strip_param_values`] takes it, against it on
    /// every string of up to 7 characters over an alphabet of each kind of byte it tells
    /// apart.
    #[test]
    fn param_values_as_the_regex() {
        let re = regex::bytes::Regex::new(r"(?-u)([0-9A-Za-z_\x80-\xff]+=)[^&=]+").expect("regex");
        let alphabet = ['a', '_', '1', '=', '&', '?', '/', 'é', '.'];
        let mut s = String::new();
        let mut checked = 0;
        for len in 0..=7u32 {
            for mut n in 0..alphabet.len().pow(len) {
                s.clear();
                for _ in 0..len {
                    s.push(alphabet[n % alphabet.len()]);
                    n /= alphabet.len();
                }
                let want = re.replace_all(s.as_bytes(), &b"$1"[..]);
                assert_eq!(unvalued(&s).as_bytes(), &want[..], "{s}");
                checked += 1;
            }
        }
        assert!(checked > 5_000_000);
    }

    #[test]
    fn slashes_collapse_as_str_replace() {
        for p in ["//", "///", "////a", "/a//b///c", "a", "", "/é//ü/", "/x/"] {
            let once = |p: &str| collapse_slashes(p, PathOut::new(&mut path_room())).into_owned();
            assert_eq!(once(p), p.replace("//", "/"), "{p}");
            let long = format!("{p}{}", "/a//".repeat(PATH_ROOM));
            assert_eq!(once(&long), long.replace("//", "/"));
        }
    }
}
