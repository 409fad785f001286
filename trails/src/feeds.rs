//! Feed definitions (data, not code: a TOML file of `[[feed]]` tables) and turning a fetched
//! body into trail rows, refusing bodies that are not what the feed serves.
//!
//! ```toml
//! [[feed]]
//! name = "greensnow"                 # cache file name and metric label
//! url = "https://blocklist.greensnow.co/greensnow.txt"
//! format = "ip"                      # ip | domain | url | csv | regex
//! info = "known attacker"
//! reference = "greensnow.co"
//! marker = ".1"                      # the body must contain this
//! enabled = true                     # default true
//! # csv: column = 1 (0-based), delimiter = ",", skip lines starting with "#"
//! # regex: regex = "..." (first capture group, or the whole match)
//! ```

use std::path::Path;

use regex::Regex;
use serde::Deserialize;
use xtrail_detect::trails::Row;

/// How a feed lists its trails.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One IP (or CIDR, or `IP:port`) a line.
    Ip,
    /// One domain a line.
    Domain,
    /// One URL a line (scheme removed).
    Url,
    /// One column of a CSV file.
    Csv,
    /// Every match of a regular expression (first capture group).
    Regex,
}

/// One feed.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedDef {
    /// Short name (cache file, metrics label, `DISABLED_FEEDS`-style selection).
    pub name: String,
    /// Where to fetch it.
    pub url: String,
    /// How it lists trails.
    pub format: Format,
    /// Info of its trails.
    pub info: String,
    /// Reference of its trails.
    pub reference: String,
    /// Text the body must contain (Maltrail's `__check__`); empty: no check.
    #[serde(default)]
    pub marker: String,
    /// Fetched by default.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// CSV: 0-based column of the trail.
    #[serde(default)]
    pub column: usize,
    /// CSV: the delimiter (one character).
    #[serde(default = "comma")]
    pub delimiter: char,
    /// Regex format: the pattern.
    #[serde(default)]
    pub regex: String,
    /// CSV: a column holding the port (the trail is then `IP:port`).
    #[serde(default)]
    pub port_column: Option<usize>,
    /// CSV: a column whose value replaces `{}` in `info` (e.g. a malware family).
    #[serde(default)]
    pub info_column: Option<usize>,
}

fn yes() -> bool {
    true
}

fn comma() -> char {
    ','
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedFile {
    #[serde(default)]
    feed: Vec<FeedDef>,
}

/// Definition file problems.
#[derive(Debug, thiserror::Error)]
pub enum DefError {
    /// Unreadable.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML or not a feed list.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// The definitions shipped with xtrail (Maltrail's feeds).
pub const SHIPPED: &str = include_str!("../feeds.toml");

/// Parses a definitions text; `origin` names it in errors.
pub fn parse_defs(text: &str, origin: &str) -> Result<Vec<FeedDef>, DefError> {
    let invalid = |message: String| DefError::Invalid {
        path: origin.to_owned(),
        message,
    };
    let file: FeedFile = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
    let mut seen = std::collections::HashSet::new();
    for f in &file.feed {
        if f.name.is_empty()
            || !f
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(invalid(format!(
                "feed name {:?}: letters, digits, - and _ only",
                f.name
            )));
        }
        if !seen.insert(f.name.clone()) {
            return Err(invalid(format!("feed {} defined twice", f.name)));
        }
        if !(f.url.starts_with("http://") || f.url.starts_with("https://")) {
            return Err(invalid(format!(
                "feed {}: url must be http:// or https://",
                f.name
            )));
        }
        if f.format == Format::Regex {
            Regex::new(&f.regex).map_err(|e| invalid(format!("feed {}: regex: {e}", f.name)))?;
        }
    }
    Ok(file.feed)
}

/// Reads definitions: `shipped` for the built-in file, else a path.
pub fn load_defs(path: &str) -> Result<Vec<FeedDef>, DefError> {
    if path == "shipped" {
        return parse_defs(SHIPPED, "shipped feeds.toml");
    }
    let text = std::fs::read_to_string(Path::new(path)).map_err(|source| DefError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse_defs(&text, path)
}

/// Why a body was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Nothing in it.
    #[error("empty body")]
    Empty,
    /// NUL bytes or mostly non-text.
    #[error("binary content, not a text list")]
    Binary,
    /// Not UTF-8 (or Latin-1 text with control bytes).
    #[error("not UTF-8 text (wrong encoding)")]
    Encoding,
    /// An HTML page (error page, captive portal, login page).
    #[error("HTML page instead of a list")]
    Html,
    /// The marker the feed always carries is missing.
    #[error("marker {0:?} missing (not the feed's content)")]
    Marker(String),
    /// Lines, but no trail in them.
    #[error("no trails in {0} lines")]
    NoTrails(usize),
}

/// Plausibility checks, then the trail rows of a body.
pub fn parse_body(def: &FeedDef, body: &[u8]) -> Result<Vec<Row>, Refused> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Refused::Empty);
    }
    if body.contains(&0) {
        return Err(Refused::Binary);
    }
    let text = std::str::from_utf8(body).map_err(|_| Refused::Encoding)?;
    let head: String = text
        .trim_start_matches('\u{feff}')
        .trim_start()
        .chars()
        .take(512)
        .collect::<String>()
        .to_ascii_lowercase();
    if def.format != Format::Regex
        && (head.starts_with("<!doctype html")
            || head.starts_with("<html")
            || head.contains("<body"))
    {
        return Err(Refused::Html);
    }
    if !def.marker.is_empty() && !text.contains(&def.marker) {
        return Err(Refused::Marker(def.marker.clone()));
    }
    let mut rows: Vec<Row> = Vec::new();
    let mut lines = 0;
    let push = |rows: &mut Vec<Row>, trail: &str| {
        let t = trail.trim().trim_matches('"');
        if t.is_empty() {
            return;
        }
        let t = match t.find("://") {
            Some(i) => &t[i + 3..],
            None => t,
        };
        let t = if def.format == Format::Url || t.contains('/') {
            t.trim_end_matches('/')
        } else {
            t.trim_matches('.')
        };
        if !t.is_empty() {
            rows.push((t.to_owned(), def.info.clone(), def.reference.clone()));
        }
    };
    match def.format {
        Format::Ip | Format::Domain | Format::Url => {
            for line in text.lines() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                    continue;
                }
                lines += 1;
                // `1.2.3.4 # comment`, `1.2.3.4<TAB>3`, `1.2.3.4 ; SBL123`
                let first = line.split(['#', ';', ' ', '\t']).next().unwrap_or("");
                if def.format == Format::Ip && !first.contains(['.', ':']) {
                    continue;
                }
                if def.format == Format::Domain && !first.contains('.') {
                    continue;
                }
                push(&mut rows, first);
            }
        }
        Format::Csv => {
            for line in text.lines() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                lines += 1;
                let cols: Vec<&str> = line
                    .split(def.delimiter)
                    .map(|c| c.trim().trim_matches('"'))
                    .collect();
                let Some(f) = cols.get(def.column) else {
                    continue;
                };
                if !(f.contains('.') || f.contains(':')) {
                    continue;
                }
                let trail = match def.port_column.and_then(|c| cols.get(c)) {
                    Some(port) if port.parse::<u16>().is_ok() => format!("{f}:{port}"),
                    Some(_) => continue,
                    None => (*f).to_owned(),
                };
                let info = def
                    .info_column
                    .and_then(|c| cols.get(c))
                    .map(|v| def.info.replace("{}", &v.to_lowercase()));
                let before = rows.len();
                push(&mut rows, &trail);
                if let (Some(info), Some(r)) = (info, rows.get_mut(before)) {
                    r.1 = info;
                }
            }
        }
        Format::Regex => {
            let re = Regex::new(&def.regex).map_err(|_| Refused::NoTrails(0))?;
            for c in re.captures_iter(text) {
                lines += 1;
                if let Some(m) = c.get(1).or_else(|| c.get(0)) {
                    push(&mut rows, m.as_str());
                }
            }
        }
    }
    if rows.is_empty() {
        return Err(Refused::NoTrails(lines));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(format: Format) -> FeedDef {
        FeedDef {
            name: "t".into(),
            url: "http://127.0.0.1/".into(),
            format,
            info: "known attacker".into(),
            reference: "t.example".into(),
            marker: String::new(),
            enabled: true,
            column: 1,
            delimiter: ',',
            regex: r"<td>([0-9.]+)</td>".into(),
            port_column: None,
            info_column: None,
        }
    }

    #[test]
    fn shipped_definitions_parse() {
        let defs = parse_defs(SHIPPED, "shipped").unwrap();
        assert_eq!(defs.len(), 42);
        assert!(defs.iter().filter(|d| d.enabled).count() >= 30);
    }

    #[test]
    fn formats() {
        let ips = parse_body(&def(Format::Ip), b"# c\n1.2.3.4\n5.6.7.8 # x\n\nfoo\n").unwrap();
        assert_eq!(ips.len(), 2);
        let urls = parse_body(&def(Format::Url), b"http://evil.example/a/\n").unwrap();
        assert_eq!(urls[0].0, "evil.example/a");
        let csv = parse_body(
            &def(Format::Csv),
            b"# h\n2024,1.2.3.4,x\n2024,\"5.6.7.8\",y\n",
        )
        .unwrap();
        assert_eq!(csv[1].0, "5.6.7.8");
        let mut d = def(Format::Csv);
        d.column = 0;
        d.port_column = Some(1);
        d.info_column = Some(2);
        d.info = "{} (malware)".into();
        let c = parse_body(&d, b"1.2.3.4,443,Emotet\n1.2.3.5,x,Y\n").unwrap();
        assert_eq!(
            c,
            vec![(
                "1.2.3.4:443".into(),
                "emotet (malware)".into(),
                "t.example".into()
            )]
        );
        let rx = parse_body(&def(Format::Regex), b"<html><td>9.9.9.9</td></html>").unwrap();
        assert_eq!(rx[0].0, "9.9.9.9");
    }

    #[test]
    fn refusals() {
        let mut d = def(Format::Ip);
        assert_eq!(parse_body(&d, b"  \n"), Err(Refused::Empty));
        assert_eq!(
            parse_body(&d, b"<!DOCTYPE html><html>503</html>"),
            Err(Refused::Html)
        );
        assert_eq!(parse_body(&d, b"1.2.3.4\0\0"), Err(Refused::Binary));
        assert_eq!(parse_body(&d, b"1.2.3.4\n\xff\xfe"), Err(Refused::Encoding));
        assert_eq!(parse_body(&d, b"nothing here\n"), Err(Refused::NoTrails(1)));
        d.marker = "greensnow".into();
        assert!(matches!(
            parse_body(&d, b"1.2.3.4\n"),
            Err(Refused::Marker(_))
        ));
    }
}
