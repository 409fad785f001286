//! The console's query language (Maltrail-like), parsed once per request and evaluated
//! against threat aggregates (`console::threats`) and raw events (a threat's detail).
//!
//! ```text
//! query   := or
//! or      := and ("OR" and)*
//! and     := unary (["AND"] unary)*          juxtaposition is AND
//! unary   := ("NOT" | "-") unary | "(" or ")" | term
//! term    := [field ":"] value               value: word or "double quoted", globs * ?
//! ```
//!
//! A bare value matches any text field (trail, info, reference, sensor, type, addresses as
//! text, triage status/assignee/tags); fields: `src:` `dst:` (address, CIDR or glob),
//! `port:` (`N`, `N-M`, `N-`, `-M`, `>N`, `>=N`, `<N`, `<=N`; either end of the flow),
//! `proto:`, `type:`, `trail:`, `info:`, `ref:`, `sensor:`, `sev:` (`low|medium|high`, also
//! `>=medium`, `>low`, `<high`, `<=medium`), `status:`, `tag:`, `assignee:`. Text matching
//! ignores ASCII case; a value without `*`/`?` matches as a substring for free-text fields
//! (trail, info, ref, bare words) and whole for the others; a glob always matches whole.
//! Errors carry the character position they refer to ([`SyntaxError::pos`]).

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// Longest query accepted (bytes).
pub const MAX_QUERY: usize = 4096;
/// Deepest nesting accepted (parentheses and negations).
const MAX_DEPTH: usize = 64;

/// A malformed query: what is wrong and where (0-based character position).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("query syntax error at position {pos}: {message}")]
pub struct SyntaxError {
    /// Character offset into the query.
    pub pos: usize,
    /// What is wrong.
    pub message: String,
}

fn err<T>(pos: usize, message: impl Into<String>) -> Result<T, SyntaxError> {
    Err(SyntaxError {
        pos,
        message: message.into(),
    })
}

/// A text field a term can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextField {
    /// Any text field (a bare word).
    Any,
    /// `trail:`
    Trail,
    /// `info:`
    Info,
    /// `ref:`
    Reference,
    /// `sensor:`
    Sensor,
    /// `type:` (the event's trail type, e.g. DNS, IP, URL, UA, or `heuristic`)
    Type,
    /// `proto:`
    Proto,
    /// `status:`
    Status,
    /// `tag:`
    Tag,
    /// `assignee:`
    Assignee,
}

impl TextField {
    /// Whether an unglobbed value matches as a substring (free text) or whole.
    fn substring(self) -> bool {
        matches!(
            self,
            TextField::Any | TextField::Trail | TextField::Info | TextField::Reference
        )
    }
}

/// Which end of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Source.
    Src,
    /// Destination.
    Dst,
}

/// A text pattern: lowercase, glob or substring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    /// The value, ASCII-lowercased.
    pub text: String,
    glob: bool,
    substring: bool,
    /// For a glob, its longest run without `*`/`?` (lowercase): any text the glob matches
    /// contains it, so a cheap substring test rules most subjects out first.
    literal: String,
}

impl Pattern {
    fn new(text: &str, substring: bool) -> Self {
        let text = text.to_ascii_lowercase();
        let glob = text.contains(['*', '?']);
        let literal = if glob {
            text.split(['*', '?'])
                .max_by_key(|run| run.len())
                .unwrap_or_default()
                .to_string()
        } else {
            String::new()
        };
        Pattern {
            text,
            glob,
            substring,
            literal,
        }
    }

    /// A lowercase substring every text this pattern matches contains (`None` when the
    /// pattern has no such run or when it is not a glob: then use
    /// [`Pattern::plain_substring`]).
    pub fn glob_literal(&self) -> Option<&str> {
        (self.glob && !self.literal.is_empty()).then_some(self.literal.as_str())
    }

    /// The lowercase needle when this is a plain substring pattern (no glob).
    pub fn plain_substring(&self) -> Option<&str> {
        (self.substring && !self.glob).then_some(self.text.as_str())
    }

    /// Whether `hay` matches (ASCII case ignored).
    pub fn matches(&self, hay: &str) -> bool {
        if self.glob {
            glob_match(self.text.as_bytes(), hay.as_bytes())
        } else if self.substring {
            contains_ci(hay.as_bytes(), self.text.as_bytes())
        } else {
            hay.eq_ignore_ascii_case(&self.text)
        }
    }
}

/// An address condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddrMatch {
    /// Inside a network (a bare address is a /32 or /128).
    Net(IpNet),
    /// The address as text against a glob.
    Text(Pattern),
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    /// `=`
    Eq,
    /// `>=`
    Ge,
    /// `>`
    Gt,
    /// `<=`
    Le,
    /// `<`
    Lt,
}

impl Cmp {
    fn holds(self, a: i64, b: i64) -> bool {
        match self {
            Cmp::Eq => a == b,
            Cmp::Ge => a >= b,
            Cmp::Gt => a > b,
            Cmp::Le => a <= b,
            Cmp::Lt => a < b,
        }
    }
}

/// A parsed query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// Every subject matches (the empty query).
    All,
    /// Both.
    And(Box<Expr>, Box<Expr>),
    /// Either.
    Or(Box<Expr>, Box<Expr>),
    /// Not.
    Not(Box<Expr>),
    /// A text field.
    Text(TextField, Pattern),
    /// `src:` / `dst:`.
    Addr(End, AddrMatch),
    /// `port:` an inclusive range.
    Port(u32, u32),
    /// `sev:` with a comparison against the wire severity value (1 low .. 3 high).
    Severity(Cmp, i32),
}

/// What a query is evaluated against: a threat aggregate or a raw event (scope-limited by
/// the implementation: addresses outside the viewer's scope are not offered).
pub trait Subject {
    /// Whether `f` holds for any value of the text field (for [`TextField::Any`], any text
    /// field including addresses).
    fn any_text(&self, field: TextField, f: &mut dyn FnMut(&str) -> bool) -> bool;
    /// Whether `f` holds for any address at that end.
    fn any_addr(&self, end: End, f: &mut dyn FnMut(IpAddr, &str) -> bool) -> bool;
    /// Whether `f` holds for any port (source or destination).
    fn any_port(&self, f: &mut dyn FnMut(u32) -> bool) -> bool;
    /// The wire severity value.
    fn severity(&self) -> i32;
    /// A fast path for a bare substring (`needle` lowercase) over every text field: `None`
    /// when the subject has none (then [`Subject::any_text`] is used).
    fn any_contains(&self, _needle: &str) -> Option<bool> {
        None
    }
}

impl Expr {
    /// Whether `s` matches.
    pub fn matches(&self, s: &dyn Subject) -> bool {
        match self {
            Expr::All => true,
            Expr::And(a, b) => a.matches(s) && b.matches(s),
            Expr::Or(a, b) => a.matches(s) || b.matches(s),
            Expr::Not(a) => !a.matches(s),
            Expr::Text(TextField::Any, p) => {
                match p.plain_substring().and_then(|n| s.any_contains(n)) {
                    Some(found) => found,
                    None => {
                        // A glob's literal run is a necessary condition: test it first
                        // over the precomputed lowercase text.
                        p.glob_literal().and_then(|n| s.any_contains(n)) != Some(false)
                            && s.any_text(TextField::Any, &mut |t| p.matches(t))
                    }
                }
            }
            Expr::Text(field, p) => {
                // Fields covered by `any_contains` (everything but protocols) get the same
                // necessary-condition test for a glob.
                let prefilter = *field != TextField::Proto;
                !(prefilter && p.glob_literal().and_then(|n| s.any_contains(n)) == Some(false))
                    && s.any_text(*field, &mut |t| p.matches(t))
            }
            Expr::Addr(end, m) => s.any_addr(*end, &mut |ip, text| match m {
                AddrMatch::Net(n) => n.contains(&ip),
                AddrMatch::Text(p) => p.matches(text),
            }),
            Expr::Port(lo, hi) => s.any_port(&mut |p| *lo <= p && p <= *hi),
            Expr::Severity(cmp, v) => cmp.holds(i64::from(s.severity()), i64::from(*v)),
        }
    }

    /// Whether this is the empty query.
    pub fn is_all(&self) -> bool {
        *self == Expr::All
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Open,
    Close,
    /// An atom: its raw text (quotes removed), whether any part was quoted, and where the
    /// first quote began inside the text (so `info:"a b"` is a field term).
    Atom {
        text: String,
        quoted_from: Option<usize>,
    },
}

/// Splits into tokens, each with its character position.
fn lex(q: &str) -> Result<Vec<(usize, Tok)>, SyntaxError> {
    let chars: Vec<char> = q.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c == '(' || c == ')' {
            out.push((i, if c == '(' { Tok::Open } else { Tok::Close }));
            i += 1;
            continue;
        }
        let start = i;
        let mut text = String::new();
        let mut quoted_from = None;
        while i < chars.len() {
            let c = chars[i];
            if c.is_whitespace() || c == '(' || c == ')' {
                break;
            }
            if c == '"' {
                let open = i;
                quoted_from.get_or_insert(text.chars().count());
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return err(open, "unterminated quote"),
                        Some('"') => break,
                        Some('\\') if matches!(chars.get(i + 1), Some('"' | '\\')) => {
                            text.push(chars[i + 1]);
                            i += 2;
                        }
                        Some(&c) => {
                            text.push(c);
                            i += 1;
                        }
                    }
                }
                i += 1;
                continue;
            }
            text.push(c);
            i += 1;
        }
        out.push((start, Tok::Atom { text, quoted_from }));
    }
    Ok(out)
}

/// Parses a query; the empty (or blank) query is [`Expr::All`].
pub fn parse(q: &str) -> Result<Expr, SyntaxError> {
    if q.len() > MAX_QUERY {
        return err(
            MAX_QUERY,
            format!("the query is longer than {MAX_QUERY} bytes"),
        );
    }
    let toks = lex(q)?;
    if toks.is_empty() {
        return Ok(Expr::All);
    }
    let mut p = Parser {
        toks,
        i: 0,
        end: q.chars().count(),
        depth: 0,
    };
    let e = p.or()?;
    if let Some((pos, t)) = p.toks.get(p.i) {
        return match t {
            Tok::Close => err(*pos, "unbalanced ')'"),
            _ => err(*pos, "unexpected term"),
        };
    }
    Ok(e)
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    i: usize,
    end: usize,
    depth: usize,
}

fn is_kw(t: &Tok, kw: &str) -> bool {
    matches!(t, Tok::Atom { text, quoted_from: None } if text == kw)
}

impl Parser {
    fn peek(&self) -> Option<&(usize, Tok)> {
        self.toks.get(self.i)
    }

    fn or(&mut self) -> Result<Expr, SyntaxError> {
        let mut left = self.and()?;
        while let Some((_, t)) = self.peek() {
            if !is_kw(t, "OR") {
                break;
            }
            self.i += 1;
            let right = self.and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, SyntaxError> {
        let mut left = self.unary()?;
        loop {
            match self.peek() {
                None => break,
                Some((_, t)) if is_kw(t, "OR") || *t == Tok::Close => break,
                Some((_, t)) if is_kw(t, "AND") => {
                    self.i += 1;
                }
                Some(_) => {}
            }
            let right = self.unary()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, SyntaxError> {
        let Some((pos, tok)) = self.peek().cloned() else {
            return err(self.end, "a term is missing at the end");
        };
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return err(pos, format!("nested deeper than {MAX_DEPTH}"));
        }
        let r = self.unary_inner(pos, tok);
        self.depth -= 1;
        r
    }

    fn unary_inner(&mut self, pos: usize, tok: Tok) -> Result<Expr, SyntaxError> {
        match tok {
            Tok::Open => {
                self.i += 1;
                if matches!(self.peek(), Some((_, Tok::Close))) {
                    return err(pos, "empty parentheses");
                }
                let e = self.or()?;
                match self.peek() {
                    Some((_, Tok::Close)) => {
                        self.i += 1;
                        Ok(e)
                    }
                    _ => err(pos, "'(' is never closed"),
                }
            }
            Tok::Close => err(pos, "unexpected ')'"),
            Tok::Atom { .. } if is_kw(&tok, "NOT") => {
                self.i += 1;
                Ok(Expr::Not(Box::new(self.unary()?)))
            }
            Tok::Atom { ref text, .. } if is_kw(&tok, "AND") || is_kw(&tok, "OR") => {
                err(pos, format!("{text} needs a term before it"))
            }
            Tok::Atom {
                mut text,
                quoted_from,
            } => {
                self.i += 1;
                // `-term`: negation (not of a quoted-only atom nor of a lone '-').
                if text.len() > 1 && text.starts_with('-') && quoted_from != Some(0) {
                    text.remove(0);
                    let inner = term(pos + 1, &text, quoted_from.map(|q| q - 1))?;
                    return Ok(Expr::Not(Box::new(inner)));
                }
                term(pos, &text, quoted_from)
            }
        }
    }
}

/// One `[field:]value` term at `pos`.
fn term(pos: usize, text: &str, quoted_from: Option<usize>) -> Result<Expr, SyntaxError> {
    if let Some(colon) = text.find(':') {
        let name = &text[..colon];
        let colon_chars = text[..colon].chars().count();
        let before_quote = quoted_from.is_none_or(|q| colon_chars < q);
        let alpha = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphabetic());
        let value = &text[colon + 1..];
        let url_like = value.starts_with("//");
        if before_quote && alpha && !url_like {
            let vpos = pos + colon_chars + 1;
            return field_term(pos, vpos, &name.to_ascii_lowercase(), value);
        }
    }
    if text.is_empty() {
        return err(pos, "empty term");
    }
    Ok(Expr::Text(TextField::Any, Pattern::new(text, true)))
}

fn field_term(pos: usize, vpos: usize, name: &str, value: &str) -> Result<Expr, SyntaxError> {
    let text_field = match name {
        "trail" => Some(TextField::Trail),
        "info" => Some(TextField::Info),
        "ref" | "reference" => Some(TextField::Reference),
        "sensor" => Some(TextField::Sensor),
        "type" => Some(TextField::Type),
        "proto" => Some(TextField::Proto),
        "status" => Some(TextField::Status),
        "tag" => Some(TextField::Tag),
        "assignee" => Some(TextField::Assignee),
        _ => None,
    };
    if value.is_empty() {
        return err(vpos, format!("{name}: needs a value"));
    }
    if let Some(f) = text_field {
        if f == TextField::Status {
            const STATUSES: [&str; 4] = ["new", "investigating", "resolved", "false_positive"];
            if !value.contains(['*', '?']) && !STATUSES.contains(&value) {
                return err(
                    vpos,
                    format!("status {value:?}: use new, investigating, resolved or false_positive"),
                );
            }
        }
        return Ok(Expr::Text(f, Pattern::new(value, f.substring())));
    }
    match name {
        "src" | "dst" => {
            let end = if name == "src" { End::Src } else { End::Dst };
            Ok(Expr::Addr(end, addr_match(vpos, value)?))
        }
        "port" => port_range(vpos, value),
        "sev" | "severity" => severity(vpos, value),
        _ => err(
            pos,
            format!(
                "unknown field {name:?} (fields: src dst port proto type trail info ref sensor sev status tag assignee)"
            ),
        ),
    }
}

fn addr_match(vpos: usize, v: &str) -> Result<AddrMatch, SyntaxError> {
    if v.contains(['*', '?']) {
        return Ok(AddrMatch::Text(Pattern::new(v, false)));
    }
    if let Ok(n) = v.parse::<IpNet>() {
        return Ok(AddrMatch::Net(n.trunc()));
    }
    match v.parse::<IpAddr>() {
        Ok(a) => Ok(AddrMatch::Net(IpNet::from(a))),
        Err(_) => err(
            vpos,
            format!("{v:?} is not an address, a CIDR or a glob (e.g. 198.18.0.0/15, 198.18.*)"),
        ),
    }
}

fn port_num(pos: usize, s: &str) -> Result<u32, SyntaxError> {
    match s.parse::<u32>() {
        Ok(n) if n <= 65_535 => Ok(n),
        _ => err(pos, format!("{s:?} is not a port (0-65535)")),
    }
}

fn port_range(vpos: usize, v: &str) -> Result<Expr, SyntaxError> {
    let (cmp, rest) = comparison(v);
    let rpos = vpos + (v.len() - rest.len());
    if cmp != Cmp::Eq {
        let n = port_num(rpos, rest)?;
        let (lo, hi) = match cmp {
            Cmp::Ge => (n, 65_535),
            Cmp::Gt => (n.saturating_add(1), 65_535),
            Cmp::Le => (0, n),
            Cmp::Lt => (0, n.saturating_sub(1)),
            Cmp::Eq => (n, n),
        };
        if (cmp == Cmp::Lt && n == 0) || (cmp == Cmp::Gt && n == 65_535) {
            return err(vpos, format!("port {v} matches nothing"));
        }
        return Ok(Expr::Port(lo, hi));
    }
    match v.split_once('-') {
        None => {
            let n = port_num(vpos, v)?;
            Ok(Expr::Port(n, n))
        }
        Some((a, b)) => {
            let lo = if a.is_empty() { 0 } else { port_num(vpos, a)? };
            let hi = if b.is_empty() {
                65_535
            } else {
                port_num(vpos + a.len() + 1, b)?
            };
            if a.is_empty() && b.is_empty() {
                return err(vpos, "a port range needs at least one end");
            }
            if lo > hi {
                return err(vpos, format!("port range {v}: {lo} is above {hi}"));
            }
            Ok(Expr::Port(lo, hi))
        }
    }
}

fn comparison(v: &str) -> (Cmp, &str) {
    for (p, c) in [
        (">=", Cmp::Ge),
        ("<=", Cmp::Le),
        (">", Cmp::Gt),
        ("<", Cmp::Lt),
        ("=", Cmp::Eq),
    ] {
        if let Some(rest) = v.strip_prefix(p) {
            return (c, rest);
        }
    }
    (Cmp::Eq, v)
}

/// The wire value of a severity name.
pub fn severity_value(name: &str) -> Option<i32> {
    match name.to_ascii_lowercase().as_str() {
        "low" => Some(1),
        "medium" | "med" => Some(2),
        "high" => Some(3),
        _ => None,
    }
}

fn severity(vpos: usize, v: &str) -> Result<Expr, SyntaxError> {
    let (cmp, rest) = comparison(v);
    match severity_value(rest) {
        Some(n) => Ok(Expr::Severity(cmp, n)),
        None => err(
            vpos + (v.len() - rest.len()),
            format!("severity {rest:?}: use low, medium or high (optionally >=, >, <=, <)"),
        ),
    }
}

/// ASCII-case-insensitive substring search; `needle` is lowercase.
pub fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    if needle.is_empty() {
        return true;
    }
    if needle.len() > hay.len() {
        return false;
    }
    let first = needle[0];
    hay.windows(needle.len()).any(|w| {
        w[0].to_ascii_lowercase() == first
            && w.iter()
                .zip(needle)
                .all(|(a, b)| a.to_ascii_lowercase() == *b)
    })
}

/// Whole-string glob match (`*` any run, `?` one byte), ASCII case ignored; `pat` is
/// lowercase. Linear backtracking over the last `*`: no exponential inputs.
fn glob_match(pat: &[u8], hay: &[u8]) -> bool {
    let (mut p, mut h) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while h < hay.len() {
        if p < pat.len() && (pat[p] == b'?' || pat[p] == hay[h].to_ascii_lowercase()) {
            p += 1;
            h += 1;
        } else if p < pat.len() && pat[p] == b'*' {
            star = Some((p, h));
            p += 1;
        } else if let Some((sp, sh)) = star {
            p = sp + 1;
            h = sh + 1;
            star = Some((sp, sh + 1));
        } else {
            return false;
        }
    }
    while p < pat.len() && pat[p] == b'*' {
        p += 1;
    }
    p == pat.len()
}

/// The syntax help served at `GET /api/search-help`.
pub fn help() -> serde_json::Value {
    serde_json::json!({
        "syntax": "terms joined by AND, OR, NOT (or -term); juxtaposition is AND; parentheses group; \"double quotes\" keep spaces; * and ? are globs",
        "bare_word": "matches any text field as a substring: trail, info, reference, sensor, type, addresses, status, tags, assignee",
        "fields": {
            "src:": "source address, CIDR or glob: src:198.18.0.0/15, src:2001:db8::/32, src:198.18.*",
            "dst:": "destination address, CIDR or glob",
            "port:": "source or destination port: port:53, port:8000-8100, port:1024-, port:>=1024",
            "proto:": "protocol: proto:tcp, proto:udp, proto:icmp",
            "type:": "trail type: type:dns, type:ip, type:url, type:ua, type:http, type:heuristic",
            "trail:": "the trail (substring, or a glob matching it whole): trail:*.example",
            "info:": "the trail's info: info:\"port scanning\"",
            "ref:": "the trail's reference (feed or file)",
            "sensor:": "sensor name",
            "sev:": "severity: sev:high, sev:>=medium",
            "status:": "triage status: new, investigating, resolved, false_positive",
            "tag:": "triage tag",
            "assignee:": "triage assignee"
        },
        "examples": [
            "sev:>=medium AND NOT status:resolved",
            "src:198.18.0.0/24 (type:dns OR type:url)",
            "trail:*.example -tag:benign",
            "info:\"port scanning\" port:1-1024"
        ],
        "errors": "a malformed query is answered 400 with {\"error\": \"query syntax error at position N: ...\", \"position\": N}"
    })
}

impl fmt::Display for Cmp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cmp::Eq => "=",
            Cmp::Ge => ">=",
            Cmp::Gt => ">",
            Cmp::Le => "<=",
            Cmp::Lt => "<",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct S {
        texts: Vec<(TextField, &'static str)>,
        src: Vec<&'static str>,
        dst: Vec<&'static str>,
        ports: Vec<u32>,
        sev: i32,
    }

    impl Subject for S {
        fn any_text(&self, field: TextField, f: &mut dyn FnMut(&str) -> bool) -> bool {
            self.texts
                .iter()
                .any(|(k, v)| (field == TextField::Any || *k == field) && f(v))
                || (field == TextField::Any && self.src.iter().chain(&self.dst).any(|a| f(a)))
        }
        fn any_addr(&self, end: End, f: &mut dyn FnMut(IpAddr, &str) -> bool) -> bool {
            let l = if end == End::Src {
                &self.src
            } else {
                &self.dst
            };
            l.iter().any(|a| f(a.parse().unwrap(), a))
        }
        fn any_port(&self, f: &mut dyn FnMut(u32) -> bool) -> bool {
            self.ports.iter().any(|p| f(*p))
        }
        fn severity(&self) -> i32 {
            self.sev
        }
    }

    fn sample() -> S {
        S {
            texts: vec![
                (TextField::Trail, "evil.example"),
                (TextField::Info, "malware C&C (trojan)"),
                (TextField::Reference, "(static)"),
                (TextField::Type, "DNS"),
                (TextField::Proto, "UDP"),
                (TextField::Sensor, "edge-1"),
                (TextField::Status, "investigating"),
                (TextField::Tag, "apt"),
            ],
            src: vec!["198.18.0.7"],
            dst: vec!["198.19.0.53", "2001:db8::1"],
            ports: vec![53, 40_000],
            sev: 3,
        }
    }

    fn m(q: &str) -> bool {
        parse(q)
            .unwrap_or_else(|e| panic!("{q}: {e}"))
            .matches(&sample())
    }

    #[test]
    fn terms_fields_and_logic() {
        assert!(m(""));
        assert!(m("evil"));
        assert!(m("EVIL.example"));
        assert!(!m("good"));
        assert!(m("trail:evil"));
        assert!(m("trail:*.example"));
        assert!(!m("trail:*.org"));
        assert!(m("info:\"c&c (trojan)\""));
        assert!(m("\"malware c&c\""));
        assert!(m("src:198.18.0.0/24"));
        assert!(!m("src:198.18.1.0/24"));
        assert!(m("dst:2001:db8::/32"));
        assert!(m("dst:198.19.*"));
        assert!(m("198.19.0"));
        assert!(m("port:53"));
        assert!(m("port:50-60"));
        assert!(m("port:40000-"));
        assert!(m("port:-53"));
        assert!(m("port:>=40000"));
        assert!(!m("port:54-39999"));
        assert!(m("proto:udp"));
        assert!(!m("proto:tcp"));
        assert!(m("type:dns"));
        assert!(m("sensor:edge-1"));
        assert!(m("sensor:edge-*"));
        assert!(!m("sensor:edge"));
        assert!(m("sev:high"));
        assert!(m("sev:>=medium"));
        assert!(!m("sev:<high"));
        assert!(m("status:investigating tag:apt"));
        assert!(!m("status:new"));
        assert!(m("evil AND NOT good"));
        assert!(m("evil -good"));
        assert!(!m("-evil"));
        assert!(m("good OR evil"));
        assert!(!m("good OR (evil AND proto:tcp)"));
        assert!(m("(good OR evil) AND (port:53 OR port:1)"));
        assert!(m("NOT NOT evil"));
        assert!(m("ref:static"));
        assert!(m("http://nothing OR evil"));
    }

    #[test]
    fn errors_point_at_the_problem() {
        let e = |q: &str| parse(q).unwrap_err();
        assert_eq!(e("evil AND").pos, 8);
        assert_eq!(e("(evil").pos, 0);
        assert_eq!(e("evil )").pos, 5);
        assert_eq!(e("a \"open").pos, 2);
        assert_eq!(e("colour:red").pos, 0);
        assert!(e("colour:red").message.contains("unknown field"));
        assert_eq!(e("src:nope").pos, 4);
        assert_eq!(e("x port:99999").pos, 7);
        assert_eq!(e("sev:>=severe").pos, 6);
        assert_eq!(e("port:9-1").pos, 5);
        assert_eq!(e("OR x").pos, 0);
        assert_eq!(e("()").pos, 0);
        assert_eq!(e("status:done").pos, 7);
        assert!(parse(&"(".repeat(100)).is_err());
        assert!(parse(&"x".repeat(MAX_QUERY + 1)).is_err());
    }

    #[test]
    fn globs_are_linear_and_exact() {
        assert!(glob_match(b"a*b?d", b"axxxbcd"));
        assert!(!glob_match(b"a*b?d", b"axxxbd"));
        assert!(glob_match(b"*", b""));
        assert!(glob_match(b"**a**", b"bab"));
        let hay = vec![b'a'; 5000];
        let mut pat = b"*a".repeat(50);
        pat.push(b'b');
        assert!(!glob_match(&pat, &hay));
    }

    /// Random queries from an alphabet of the grammar's pieces: parse never panics, and
    /// what parses evaluates without panicking.
    #[test]
    fn random_inputs_never_panic() {
        let pieces = [
            "(",
            ")",
            " ",
            "\"",
            "-",
            "AND",
            "OR",
            "NOT",
            "src:",
            "dst:",
            "port:",
            "sev:",
            ">=",
            "-",
            "*",
            "?",
            "198.18.0.0/24",
            "::1",
            "x",
            "é",
            "status:",
            "new",
            "1-",
            "65536",
            ":",
            "\\",
            "tag:",
            "info:",
            "\t",
            "ünï",
            "/",
            "0",
        ];
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let s = sample();
        for _ in 0..20_000 {
            let n = (next() % 12) as usize;
            let mut q = String::new();
            for _ in 0..n {
                q.push_str(pieces[(next() % pieces.len() as u64) as usize]);
            }
            if let Ok(e) = parse(&q) {
                let _ = e.matches(&s);
            }
            // Random bytes as (lossy) text, too.
            let raw: Vec<u8> = (0..n * 3).map(|_| (next() & 0xff) as u8).collect();
            if let Ok(e) = parse(&String::from_utf8_lossy(&raw)) {
                let _ = e.matches(&s);
            }
        }
    }
}
