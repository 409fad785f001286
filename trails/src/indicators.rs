//! Indicator files SOC teams already have, as trail rows: Zeek Intel framework files, MISP
//! CSV exports and STIX 2.1 bundles. Network indicators only (addresses, subnets, `IP:port`,
//! domains, URLs); everything else (file hashes, e-mail addresses...) is counted as skipped.
//!
//! Indicator rows carry the reference `<source> (custom)`: like Maltrail's custom trails they
//! are trusted by whoever supplies them, so the `IP_MINIMUM_FEEDS` rule for feed-only IPs
//! does not drop them; static trails still win a tie (Maltrail's merge priority).

use std::path::Path;

use regex::Regex;
use xtrail_detect::trails::Row;

/// Rows of one indicator file and what was skipped.
#[derive(Debug, Default)]
pub struct Indicators {
    /// Trail rows.
    pub rows: Vec<Row>,
    /// Indicators of other kinds (hashes, e-mail...) or malformed.
    pub skipped: usize,
    /// Which format the file was read as.
    pub format: &'static str,
}

/// Indicator file problems.
#[derive(Debug, thiserror::Error)]
pub enum IndicatorError {
    /// Unreadable.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Not a format this reads.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

const DEFAULT_INFO: &str = "intel indicator";

fn reference(source: &str) -> String {
    format!("{source} (custom)")
}

fn url_trail(v: &str) -> String {
    let v = v.trim();
    let v = v.find("://").map_or(v, |i| &v[i + 3..]);
    v.trim_end_matches('/').to_owned()
}

/// Reads a file, guessing the format: JSON (`{`) is STIX, `#fields`/`#separator` is Zeek, a
/// CSV header with `type` and `value` is MISP.
pub fn read(path: &Path) -> Result<Indicators, IndicatorError> {
    let text = std::fs::read(path).map_err(|source| IndicatorError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let text = String::from_utf8_lossy(&text);
    let name = path
        .file_name()
        .map_or_else(|| "indicators".into(), |n| n.to_string_lossy().into_owned());
    let bad = |message: String| IndicatorError::Format {
        path: path.display().to_string(),
        message,
    };
    let t = text.trim_start_matches('\u{feff}').trim_start();
    if t.starts_with('{') {
        stix(t, &name).map_err(bad)
    } else if t.starts_with("#separator") || t.starts_with("#fields") {
        zeek(t, &name).map_err(bad)
    } else if t
        .lines()
        .next()
        .is_some_and(|h| h.split(',').any(|c| c.trim().trim_matches('"') == "type"))
    {
        misp(t, &name).map_err(bad)
    } else {
        Err(bad(
            "not a Zeek Intel file (#fields), MISP CSV (type,value columns) or STIX 2.1 bundle"
                .into(),
        ))
    }
}

/// Zeek Intel framework file: tab-separated, `#fields indicator indicator_type meta.source
/// [meta.desc ...]`.
pub fn zeek(text: &str, name: &str) -> Result<Indicators, String> {
    let mut out = Indicators {
        format: "zeek",
        ..Indicators::default()
    };
    let mut fields: Vec<String> = Vec::new();
    for line in text.lines() {
        if let Some(f) = line.strip_prefix("#fields") {
            fields = f
                .split('\t')
                .filter(|s| !s.is_empty())
                .map(|s| s.trim().to_owned())
                .collect();
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if fields.is_empty() {
            return Err("data before the #fields line".into());
        }
        let cols: Vec<&str> = line.split('\t').collect();
        let get = |n: &str| {
            fields
                .iter()
                .position(|f| f == n)
                .and_then(|i| cols.get(i))
                .map(|s| s.trim())
                .filter(|s| !s.is_empty() && *s != "-")
        };
        let (Some(ind), Some(kind)) = (get("indicator"), get("indicator_type")) else {
            out.skipped += 1;
            continue;
        };
        let info = get("meta.desc").unwrap_or(DEFAULT_INFO).to_owned();
        let source = get("meta.source").unwrap_or(name);
        let trail = match kind {
            "Intel::ADDR" | "Intel::SUBNET" | "Intel::DOMAIN" => {
                ind.trim_end_matches('.').to_owned()
            }
            "Intel::URL" => url_trail(ind),
            _ => {
                out.skipped += 1;
                continue;
            }
        };
        out.rows.push((trail, info, reference(source)));
    }
    Ok(out)
}

/// MISP CSV export: a header with `type` and `value` (and optionally `comment`,
/// `category`, `event_info`).
pub fn misp(text: &str, name: &str) -> Result<Indicators, String> {
    let mut out = Indicators {
        format: "misp",
        ..Indicators::default()
    };
    let mut r = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(text.as_bytes());
    let headers = r.headers().map_err(|e| e.to_string())?.clone();
    let col = |n: &str| headers.iter().position(|h| h.trim() == n);
    let (Some(t), Some(v)) = (col("type"), col("value")) else {
        return Err("no type/value columns".into());
    };
    let info_col = col("comment").or(col("event_info"));
    for rec in r.records() {
        let Ok(rec) = rec else {
            out.skipped += 1;
            continue;
        };
        let (Some(kind), Some(value)) = (rec.get(t), rec.get(v)) else {
            out.skipped += 1;
            continue;
        };
        let info = info_col
            .and_then(|i| rec.get(i))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .unwrap_or(DEFAULT_INFO)
            .to_owned();
        let value = value.trim();
        let trails: Vec<String> = match kind.trim() {
            "ip-src" | "ip-dst" | "domain" | "hostname" => vec![value.to_owned()],
            "url" | "uri" if value.contains('.') => vec![url_trail(value)],
            "ip-src|port" | "ip-dst|port" => match value.split_once('|') {
                Some((ip, port)) if ip.contains(':') => vec![format!("[{ip}]:{port}")],
                Some((ip, port)) => vec![format!("{ip}:{port}")],
                None => vec![],
            },
            "domain|ip" => value.split('|').map(str::to_owned).collect(),
            _ => vec![],
        };
        if trails.is_empty() {
            out.skipped += 1;
        }
        for tr in trails {
            out.rows
                .push((tr, info.clone(), reference(&format!("misp:{name}"))));
        }
    }
    Ok(out)
}

/// STIX 2.1 bundle: `indicator` objects with `pattern_type: stix` whose pattern is one
/// comparison or OR-joined comparisons of `ipv4-addr`, `ipv6-addr`, `domain-name` or `url`
/// values (CIDR values included). Patterns with AND, other object types, or other pattern
/// languages are skipped.
pub fn stix(text: &str, name: &str) -> Result<Indicators, String> {
    let mut out = Indicators {
        format: "stix",
        ..Indicators::default()
    };
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("JSON: {e}"))?;
    let objects = match &v["objects"] {
        serde_json::Value::Array(a) => a.clone(),
        _ if v["type"] == "indicator" => vec![v.clone()],
        _ => return Err("no objects array (not a STIX bundle)".into()),
    };
    let term =
        Regex::new(r"([a-z0-9-]+):value\s*=\s*'((?:[^'\\]|\\.)*)'").map_err(|e| e.to_string())?;
    for o in objects {
        if o["type"] != "indicator" {
            continue;
        }
        let pattern = o["pattern"].as_str().unwrap_or("");
        let ptype = o["pattern_type"].as_str().unwrap_or("stix");
        if ptype != "stix" || pattern.contains(" AND ") || pattern.contains("FOLLOWEDBY") {
            out.skipped += 1;
            continue;
        }
        let info = o["name"]
            .as_str()
            .or_else(|| o["description"].as_str())
            .unwrap_or(DEFAULT_INFO)
            .to_owned();
        let comparisons = pattern.matches('=').count();
        let mut terms = Vec::new();
        for c in term.captures_iter(pattern) {
            let value = c[2].replace("\\'", "'").replace("\\\\", "\\");
            match &c[1] {
                "ipv4-addr" | "ipv6-addr" | "domain-name" => terms.push(value),
                "url" => terms.push(url_trail(&value)),
                _ => {}
            }
        }
        if terms.is_empty() || terms.len() != comparisons {
            out.skipped += 1;
            continue;
        }
        for t in terms {
            out.rows
                .push((t, info.clone(), reference(&format!("stix:{name}"))));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeek_file() {
        let z = "#separator \\x09\n#fields\tindicator\tindicator_type\tmeta.source\tmeta.desc\n\
                 198.51.100.7\tIntel::ADDR\tsoc\tc2 server\n\
                 evil.example\tIntel::DOMAIN\tsoc\t-\n\
                 http://evil.example/gate.php\tIntel::URL\tsoc\tgate\n\
                 203.0.113.0/24\tIntel::SUBNET\tsoc\tbad net\n\
                 d41d8cd98f00b204e9800998ecf8427e\tIntel::FILE_HASH\tsoc\thash\n";
        let i = zeek(z, "intel.dat").unwrap();
        assert_eq!(i.rows.len(), 4);
        assert_eq!(i.skipped, 1);
        assert_eq!(
            i.rows[0],
            (
                "198.51.100.7".into(),
                "c2 server".into(),
                "soc (custom)".into()
            )
        );
        assert_eq!(i.rows[1].1, DEFAULT_INFO);
        assert_eq!(i.rows[2].0, "evil.example/gate.php");
    }

    #[test]
    fn misp_csv() {
        let m = "uuid,event_id,category,type,value,comment,to_ids,date\n\
                 1,1,Network activity,ip-dst,198.51.100.9,c2,1,20240101\n\
                 2,1,Network activity,ip-dst|port,198.51.100.10|8443,,1,20240101\n\
                 3,1,Network activity,hostname,bad.example,,1,20240101\n\
                 4,1,Network activity,url,https://bad.example/x,,1,20240101\n\
                 5,1,Payload delivery,sha256,abcd,,1,20240101\n";
        let i = misp(m, "misp.csv").unwrap();
        let trails: Vec<&str> = i.rows.iter().map(|r| r.0.as_str()).collect();
        assert_eq!(
            trails,
            [
                "198.51.100.9",
                "198.51.100.10:8443",
                "bad.example",
                "bad.example/x"
            ]
        );
        assert_eq!(i.skipped, 1);
        assert_eq!(i.rows[0].1, "c2");
    }

    #[test]
    fn stix_bundle() {
        let s = r#"{"type":"bundle","id":"bundle--1","objects":[
          {"type":"indicator","pattern_type":"stix","name":"c2","pattern":"[ipv4-addr:value = '198.51.100.1']"},
          {"type":"indicator","pattern_type":"stix","pattern":"[ipv4-addr:value = '203.0.113.0/24'] OR [domain-name:value = 'evil.example']"},
          {"type":"indicator","pattern_type":"stix","pattern":"[ipv6-addr:value = '2001:db8::1']"},
          {"type":"indicator","pattern_type":"stix","pattern":"[url:value = 'http://evil.example/a']"},
          {"type":"indicator","pattern_type":"stix","pattern":"[file:hashes.'SHA-256' = 'abc']"},
          {"type":"indicator","pattern_type":"stix","pattern":"[ipv4-addr:value = '1.2.3.4' AND domain-name:value = 'x.example']"},
          {"type":"indicator","pattern_type":"snort","pattern":"alert tcp any any"},
          {"type":"malware","name":"x"}]}"#;
        let i = stix(s, "b.json").unwrap();
        let trails: Vec<&str> = i.rows.iter().map(|r| r.0.as_str()).collect();
        assert_eq!(
            trails,
            [
                "198.51.100.1",
                "203.0.113.0/24",
                "evil.example",
                "2001:db8::1",
                "evil.example/a"
            ]
        );
        assert_eq!(i.skipped, 3);
    }
}
