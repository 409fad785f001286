//! Suspicious user agents: Maltrail's `ua.txt` (one regular expression a line, `#` comments),
//! matched case-insensitively against the `User-Agent` header, with an allow-list for known
//! updaters and security products (which identify with odd agents on purpose).
//!
//! The file is Python regex syntax; each line is translated (`\Z` → `\z`, a `{` that does not
//! start a repetition is escaped) and checked on its own; lines the Rust engine cannot take
//! (look-arounds, back-references) are skipped and counted. The valid ones are joined into
//! one alternation, so a match costs one scan whatever the number of patterns.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use regex::bytes::{Regex, RegexBuilder};

use super::HeuristicsError;

/// Info of the event.
pub const INFO: &str = "user agent (suspicious)";

/// Agents never reported (updaters, security products, internal server traffic).
const ALLOWED: &str = r"(?i)AntiVir-NGUpd|TMSPS|AVGSETUP|SDDS|Sophos|Symantec|LiveUpdate|McAfee|ESET (Update|Smart)|Kaspersky|Windows-Update-Agent|Microsoft-Delivery-Optimization|Microsoft BITS|Google ?Update|GoogleSoftwareUpdate|Debian APT-HTTP|Ubuntu APT-HTTP|libdnf|internal dummy connection";

/// Longest agent looked at.
const MAX_UA: usize = 1024;

/// The environment variable naming the UA file.
pub const UA_FILE_ENV: &str = "XTRAIL_UA_FILE";
/// Where the UA file sits below a checkout's parent.
const UA_FILE_RELATIVE: &str = "shared/data/maltrail/data/ua.txt";

/// Suspicious user-agent patterns, compiled on first use (a replay without HTTP requests
/// never pays for the ~1,300-pattern regex) and shareable between workers.
#[derive(Debug, Default)]
pub struct UaPatterns {
    /// Translated pattern lines.
    lines: Vec<String>,
    /// Lines dropped before compiling (unbalanced parentheses).
    rejected: usize,
    compiled: OnceLock<Compiled>,
}

#[derive(Debug)]
struct Compiled {
    regex: Option<Regex>,
    allowed: Option<Regex>,
    patterns: usize,
    skipped: usize,
}

impl Clone for UaPatterns {
    fn clone(&self) -> Self {
        UaPatterns {
            lines: self.lines.clone(),
            rejected: self.rejected,
            compiled: OnceLock::new(),
        }
    }
}

impl UaPatterns {
    /// No patterns: nothing is reported.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Reads a `ua.txt`.
    pub fn load(path: &Path) -> Result<Self, HeuristicsError> {
        let text = std::fs::read(path).map_err(|source| HeuristicsError::UaFile {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&String::from_utf8_lossy(&text)).map_err(|e| HeuristicsError::UaRegex {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// The default file: `$XTRAIL_UA_FILE`, else `shared/data/maltrail/data/ua.txt` in an
    /// ancestor directory of the running executable. `None` when neither exists.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os(UA_FILE_ENV) {
            let p = PathBuf::from(p);
            return p.is_file().then_some(p);
        }
        let exe = std::env::current_exe().ok()?;
        exe.ancestors()
            .skip(1)
            .map(|d| d.join(UA_FILE_RELATIVE))
            .find(|p| p.is_file())
    }

    /// Loads [`UaPatterns::default_path`]; empty patterns when there is no file.
    pub fn load_default() -> Result<Self, HeuristicsError> {
        match Self::default_path() {
            Some(p) => Self::load(&p),
            None => Ok(Self::empty()),
        }
    }

    /// Reads the patterns of a `ua.txt` text (compiled on first use or by
    /// [`UaPatterns::prepare`]).
    pub fn parse(text: &str) -> Result<Self, regex::Error> {
        let (lines, unbalanced): (Vec<String>, Vec<String>) = text
            .lines()
            .map(|l| l.trim_end_matches(['\r', '\n']))
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .map(translate)
            .partition(|p| balanced(p));
        Ok(UaPatterns {
            lines,
            rejected: unbalanced.len(),
            compiled: OnceLock::new(),
        })
    }

    /// Compiles now (the sensor does this at start, so the first request does not wait).
    pub fn prepare(&self) {
        let _ = self.compiled();
    }

    fn compiled(&self) -> &Compiled {
        self.compiled.get_or_init(|| compile(&self.lines))
    }

    /// Patterns compiled.
    pub fn len(&self) -> usize {
        self.compiled().patterns
    }

    /// Whether no pattern was compiled.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty() || self.len() == 0
    }

    /// Lines skipped because the Rust engine cannot compile them.
    pub fn skipped(&self) -> usize {
        self.compiled().skipped + self.rejected
    }

    /// The event trail for a suspicious agent: the matched part with the rest of the agent in
    /// parentheses (Maltrail's form, e.g. `masscan(/1.0)`), or `match (agent)` when the match
    /// sits inside the agent.
    pub fn check(&self, ua: &[u8]) -> Option<String> {
        if self.lines.is_empty() {
            return None;
        }
        let c = self.compiled();
        let re = c.regex.as_ref()?;
        let ua = ua.get(..ua.len().min(MAX_UA)).unwrap_or(ua);
        if c.allowed.as_ref().is_some_and(|a| a.is_match(ua)) {
            return None;
        }
        let m = re.find(ua)?;
        let text = String::from_utf8_lossy(ua);
        let matched = String::from_utf8_lossy(m.as_bytes());
        if matched.is_empty() {
            return Some(escape(&text));
        }
        let (before, after) = text.split_once(matched.as_ref()).unwrap_or(("", ""));
        Some(if !before.is_empty() && !after.is_empty() {
            format!("{} ({})", escape(&matched), escape(&text))
        } else {
            let wrap = |p: &str| {
                if p.is_empty() {
                    String::new()
                } else {
                    format!("({})", escape(p))
                }
            };
            format!("{}{}{}", wrap(before), escape(&matched), wrap(after))
        })
    }
}

/// Joins the lines into one alternation; when that does not compile, keeps the lines that
/// compile on their own.
fn compile(lines: &[String]) -> Compiled {
    let join = |ls: &[&String]| {
        ls.iter()
            .map(|p| format!("(?:{p})"))
            .collect::<Vec<_>>()
            .join("|")
    };
    let all: Vec<&String> = lines.iter().collect();
    let (regex, patterns) = match builder(&join(&all)).build() {
        Ok(re) => (Some(re), all.len()),
        Err(_) => {
            let valid: Vec<&String> = all
                .iter()
                .copied()
                .filter(|p| builder(p).build().is_ok())
                .collect();
            let re = if valid.is_empty() {
                None
            } else {
                builder(&join(&valid)).build().ok()
            };
            let n = if re.is_some() { valid.len() } else { 0 };
            (re, n)
        }
    };
    Compiled {
        regex,
        allowed: Regex::new(ALLOWED).ok(),
        patterns,
        skipped: lines.len() - patterns,
    }
}

fn builder(pattern: &str) -> RegexBuilder {
    let mut b = RegexBuilder::new(pattern);
    b.case_insensitive(true)
        .unicode(false)
        .size_limit(256 << 20)
        .dfa_size_limit(64 << 20);
    b
}

/// Maltrail's escaping of trail parts: trailing backslashes dropped, parentheses escaped.
fn escape(s: &str) -> String {
    s.trim_end_matches('\\')
        .replace('(', "\\(")
        .replace(')', "\\)")
}

/// Python regex → Rust regex: `\Z` → `\z`; a `{` that does not open `{n}`, `{n,}` or `{n,m}`
/// is escaped.
fn translate(p: &str) -> String {
    let mut out = String::with_capacity(p.len() + 8);
    let mut chars = p.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                if let Some((_, n)) = chars.next() {
                    if n == 'Z' {
                        out.push_str("\\z");
                    } else if n == '<' || n == '>' {
                        // Python: a literal; Rust: a word-boundary assertion.
                        out.push(n);
                    } else {
                        out.push('\\');
                        out.push(n);
                    }
                } else {
                    out.push_str("\\\\");
                }
            }
            '{' => {
                let rest = p.get(i + 1..).unwrap_or_default();
                if is_repetition(rest) {
                    out.push('{');
                } else {
                    out.push_str("\\{");
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// Whether a pattern's groups are balanced (escapes and character classes skipped): one
/// unbalanced line would make the whole alternation fail to compile.
fn balanced(p: &str) -> bool {
    let mut depth = 0i32;
    let mut in_class = false;
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '[' if !in_class => in_class = true,
            ']' if in_class => in_class = false,
            '(' if !in_class => depth += 1,
            ')' if !in_class => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => {}
        }
    }
    depth == 0 && !in_class
}

/// Whether `rest` (after a `{`) is `n}`, `n,}` or `n,m}`.
fn is_repetition(rest: &str) -> bool {
    let Some(end) = rest.find('}') else {
        return false;
    };
    let body = rest.get(..end).unwrap_or_default();
    let (a, b) = body.split_once(',').unwrap_or((body, ""));
    !a.is_empty() && a.bytes().all(|x| x.is_ascii_digit()) && b.bytes().all(|x| x.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translation() {
        assert_eq!(translate(r"\Awget( \d)?\Z"), r"\Awget( \d)?\z");
        assert_eq!(translate(r"\(\) { :;"), r"\(\) \{ :;");
        assert_eq!(translate(r"\A\w{1,2}\Z"), r"\A\w{1,2}\z");
        assert_eq!(translate(r"a{3}"), r"a{3}");
        assert_eq!(translate(r"<script src=[^\>]*>"), r"<script src=[^>]*>");
        assert!(balanced(r"a(b)[(]\("));
        assert!(!balanced("Mozilla/1.0 (compatible; MSIE 8.0"));
    }

    #[test]
    fn matching_and_trails() {
        let p = UaPatterns::parse("# c\nmasscan\n\\Awget( \\d)?\\Z\nsqlmap\n(?<=x)y\n").unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p.skipped(), 1);
        assert_eq!(p.check(b"masscan/1.0").as_deref(), Some("masscan(/1.0)"));
        assert_eq!(p.check(b"MassCan").as_deref(), Some("MassCan"));
        assert_eq!(p.check(b"Wget").as_deref(), Some("Wget"));
        assert_eq!(p.check(b"Wget/1.21"), None);
        assert_eq!(
            p.check(b"Mozilla/5.0 (sqlmap 1.7)").as_deref(),
            Some("sqlmap (Mozilla/5.0 \\(sqlmap 1.7\\))")
        );
        assert_eq!(
            p.check(b"Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0"),
            None
        );
        // Allowed updaters.
        let p = UaPatterns::parse("update\n").unwrap();
        assert_eq!(p.check(b"Microsoft BITS/7.8 update").as_deref(), None);
        assert!(p.check(b"evil update").is_some());
    }

    #[test]
    fn maltrail_file_compiles() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/maltrail/data/ua.txt");
        if !path.is_file() {
            return;
        }
        let p = UaPatterns::load(&path).unwrap();
        assert!(
            p.len() > 1300 && p.skipped() < 10,
            "{} patterns, {} skipped",
            p.len(),
            p.skipped()
        );
        assert!(p.check(b"masscan/1.0").is_some());
        assert!(p.check(b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36").is_none());
        assert!(p.check(b"curl/8.0").is_none());
    }
}
