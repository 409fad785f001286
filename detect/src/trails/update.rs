//! Maltrail's updater across sources (`core/update.py`): feeds, indicator files, custom
//! trails and the static tree merged under one rule, then post-processed and filtered, giving
//! the rows of one trail set. The static tree's own merge stays in [`super::load`]; its
//! result enters here as one source, as Maltrail's static aggregate does.
//!
//! Order (the rule's outcome depends on it): feeds (and indicator files, which behave as
//! feeds), then custom trails, then the static tree.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use hashbrown::HashMap;
use regex::Regex;

use super::maltrail::{self, StaticFilters};
use super::{LoadOptions, TrailError, TrailSet};

/// A feed label with one of these loses against an existing trail.
const LOW_PRIORITY_INFO_KEYWORDS: [&str; 10] = [
    "reputation",
    "attacker",
    "spammer",
    "abuser",
    "malicious",
    "dnspod",
    "nicru",
    "crawler",
    "compromised",
    "bad history",
];
/// A label with one of these always wins.
const HIGH_PRIORITY_INFO_KEYWORDS: [&str; 2] = ["mass scanner", "ipinfo"];
/// An existing trail from one of these is only replaced by a high-priority label.
const HIGH_PRIORITY_REFERENCES: [&str; 4] = [
    "bambenekconsulting.com",
    "github.com/stamparm/blackbook",
    "(static)",
    "(custom)",
];

/// Post-processing options.
#[derive(Clone, Debug)]
pub struct UpdateOptions {
    /// Feed-only IPv4 trails need this many distinct sources (Maltrail's `IP_MINIMUM_FEEDS`,
    /// default 3; 1 or 0 disables the rule).
    pub ip_minimum_feeds: usize,
    /// Trails whose info matches are dropped (Maltrail's `DISABLED_TRAILS_INFO_REGEX`).
    pub disabled_info: Option<Regex>,
    /// Whitelist, bogon and CDN filters.
    pub filters: StaticFilters,
}

impl Default for UpdateOptions {
    fn default() -> Self {
        Self {
            ip_minimum_feeds: 3,
            disabled_info: None,
            filters: StaticFilters::default(),
        }
    }
}

/// What post-processing removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpdateReport {
    /// Keys merged (after `www.` folding), before post-processing.
    pub merged: usize,
    /// Keys listed by more than one source.
    pub duplicates: usize,
    /// Dropped by the disabled-info regex.
    pub disabled: usize,
    /// Alphabetic-only keys from feeds (`.com`, `localhost`).
    pub alphabetic: usize,
    /// Feed-only IPv4 trails listed by fewer than `ip_minimum_feeds` sources.
    pub below_minimum_feeds: usize,
    /// Keys that are not valid (octet over 255, not IDNA-encodable).
    pub invalid: usize,
    /// Whitelisted (or `127.`, `192.168.`, `localhost`).
    pub whitelisted: usize,
    /// Address trails in bogon or CDN ranges.
    pub bogon_cdn: usize,
    /// Rows produced.
    pub rows: usize,
}

/// One trail: (trail, info, reference).
pub type Row = (String, String, String);

/// Maltrail's merge of several sources into one trail dictionary.
#[derive(Debug, Default)]
pub struct Merge {
    trails: HashMap<String, (String, String)>,
    /// Keys in first-insertion order (Maltrail's dict order, which post-processing follows).
    order: Vec<String>,
    duplicates: HashMap<String, BTreeSet<String>>,
    /// Keys from already post-processed sources ([`Merge::merge_set`]): their text is final,
    /// and rewriting it again would change it (`//` collapses once per pass).
    processed: hashbrown::HashSet<String>,
}

/// `(?i)\A\.?[a-z]+\Z`
fn alphabetic_only(k: &str) -> bool {
    let k = k.strip_prefix('.').unwrap_or(k);
    !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphabetic())
}

fn custom_or_static(reference: &str) -> bool {
    // `\b(custom|static)\b`
    ["custom", "static"].iter().any(|w| {
        reference.match_indices(w).any(|(i, _)| {
            let before = reference[..i].chars().next_back();
            let after = reference[i + w.len()..].chars().next();
            let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
            !word(before) && !word(after)
        })
    })
}

impl Merge {
    /// An empty merge.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keys merged so far.
    pub fn len(&self) -> usize {
        self.trails.len()
    }

    /// Whether nothing was merged.
    pub fn is_empty(&self) -> bool {
        self.trails.is_empty()
    }

    /// Merges one source's rows under Maltrail's rule: a label with a low-priority keyword
    /// does not replace an existing trail, nor does anything replace a static/custom (or
    /// other high-priority reference) trail, unless the new label comes from a high-priority
    /// reference (and is not a `history` label) or has a high-priority keyword. Every
    /// reference that lists a key is remembered for the `(+others)` annotation.
    pub fn merge(&mut self, rows: impl IntoIterator<Item = Row>) {
        for (key, info, reference) in rows {
            let key = match key.strip_prefix("www.") {
                Some(rest) if !key.contains('/') => rest.to_owned(),
                _ => key,
            };
            let replace = match self.trails.get(&key) {
                None => true,
                Some((_, old_ref)) => {
                    self.duplicates
                        .entry(key.clone())
                        .or_insert_with(|| BTreeSet::from([old_ref.clone()]))
                        .insert(reference.clone());
                    let low = LOW_PRIORITY_INFO_KEYWORDS.iter().any(|w| info.contains(w));
                    let protected = HIGH_PRIORITY_REFERENCES.contains(&old_ref.as_str());
                    !(low || protected)
                        || (HIGH_PRIORITY_REFERENCES.contains(&reference.as_str())
                            && !info.contains("history"))
                        || HIGH_PRIORITY_INFO_KEYWORDS.iter().any(|w| info.contains(w))
                }
            };
            if replace {
                if !self.trails.contains_key(&key) {
                    self.order.push(key.clone());
                }
                self.trails.insert(key, (info, reference));
            }
        }
    }

    /// Merges a loaded trail set (a static tree as [`TrailSet::load`] builds it) as one
    /// source.
    pub fn merge_set(&mut self, set: &TrailSet) {
        let rows = set_rows(set);
        self.processed.extend(rows.iter().map(|r| r.0.clone()));
        self.merge(rows);
    }

    /// Maltrail's post-processing and filters; the rows of the final set.
    pub fn finish(mut self, opts: &UpdateOptions) -> (Vec<Row>, UpdateReport) {
        let mut report = UpdateReport {
            merged: self.trails.len(),
            duplicates: self.duplicates.len(),
            ..UpdateReport::default()
        };
        let order = std::mem::take(&mut self.order);
        let t = &mut self.trails;
        let dups = &mut self.duplicates;
        let rename = |t: &mut HashMap<String, (String, String)>, from: &str, to: String| {
            if let Some(v) = t.remove(from) {
                t.insert(to, v);
            }
        };
        for orig in order {
            let Some((info, _)) = t.get(&orig) else {
                continue;
            };
            if opts
                .disabled_info
                .as_ref()
                .is_some_and(|r| r.is_match(info))
            {
                t.remove(&orig);
                report.disabled += 1;
                continue;
            }
            let mut key = orig.clone();
            let final_text = self.processed.contains(&orig);
            // Lowercase / IDNA, then the remaining rewrites, one at a time as Maltrail does
            // (each rewrite overwrites a key it lands on).
            let lowered = match maltrail::post_process_case(&key) {
                Some(k) if !final_text => k,
                _ => key.clone(),
            };
            if lowered != key {
                rename(t, &key, lowered.clone());
                key = lowered;
            }
            let Some((info, reference)) = t.get(&key).cloned() else {
                continue;
            };
            if key.is_empty() || (alphabetic_only(&key) && !custom_or_static_any(&reference)) {
                t.remove(&key);
                report.alphabetic += 1;
                continue;
            }
            if maltrail::is_dotted_quad(&key) {
                if (info.contains("parking site") || info.contains("sinkhole"))
                    && dups.contains_key(&key)
                {
                    dups.remove(&key);
                }
                if info == "malware" {
                    t.insert(
                        key.clone(),
                        ("potential malware site".into(), reference.clone()),
                    );
                }
                if opts.ip_minimum_feeds > 1
                    && dups.get(&key).map_or(0, BTreeSet::len) < opts.ip_minimum_feeds
                    && !custom_or_static(&reference)
                {
                    t.remove(&key);
                    report.below_minimum_feeds += 1;
                    continue;
                }
                if key
                    .split('.')
                    .any(|o| o.parse::<u32>().map_or(true, |v| v > 255))
                {
                    t.remove(&key);
                    report.invalid += 1;
                    continue;
                }
            }
            if t.get(&key).is_some_and(|(i, _)| i == "ransomware") {
                if let Some(v) = t.get_mut(&key) {
                    v.0 = "ransomware (malware)".into();
                }
            }
            if !key.contains('/') {
                if let Some(rest) = key.strip_prefix("www.") {
                    let rest = rest.to_owned();
                    if rest.is_empty() {
                        t.remove(&key);
                        continue;
                    }
                    rename(t, &key, rest.clone());
                    key = rest;
                }
            }
            if key.contains('?') && !key.starts_with('/') && !final_text {
                let cut = key.split('?').next().unwrap_or("").to_owned();
                if cut.is_empty() {
                    t.remove(&key);
                    continue;
                }
                rename(t, &key, cut.clone());
                key = cut;
            }
            if key.contains("//") && !final_text {
                let c = key.replace("//", "/");
                rename(t, &key, c.clone());
                key = c;
            }
            if let Some(others) = dups.get(&key) {
                if let Some(v) = t.get_mut(&key) {
                    let rest: Vec<&str> = others
                        .iter()
                        .map(String::as_str)
                        .filter(|r| *r != v.1)
                        .collect();
                    if !rest.is_empty() && !v.1.contains(" (+") {
                        v.1 = format!("{} (+{})", v.1, rest.join(","));
                    }
                }
            }
        }
        let mut rows = Vec::with_capacity(t.len());
        for (key, (info, reference)) in t.drain() {
            match maltrail::filter(&key, &info, &opts.filters) {
                Some(maltrail::Dropped::Whitelisted) => report.whitelisted += 1,
                Some(maltrail::Dropped::BogonOrCdn) => report.bogon_cdn += 1,
                None => rows.push((key, info, reference)),
            }
        }
        rows.sort_unstable();
        report.rows = rows.len();
        (rows, report)
    }
}

/// `custom`/`static` anywhere in the reference (Maltrail's alphabetic-key exemption).
fn custom_or_static_any(reference: &str) -> bool {
    reference.contains("custom") || reference.contains("static")
}

/// Every trail of a loaded set as a row, with addresses in the text Maltrail writes
/// (`1.2.3.4`, `1.2.3.4:80`, `[2001:db8::1]:80`, `5.63.151.0/24`).
pub fn set_rows(set: &TrailSet) -> Vec<Row> {
    let label = |l| {
        let l = set.label(l);
        (l.info.clone(), l.reference.clone())
    };
    let mut out = Vec::with_capacity(set.report.lines);
    let mut push = |k: String, l: u32| {
        let (i, r) = label(l);
        out.push((k, i, r));
    };
    for (a, l) in &set.ip.v4 {
        push(Ipv4Addr::from(a).to_string(), l);
    }
    for (a, l) in &set.ip.v6 {
        push(Ipv6Addr::from(*a).to_string(), *l);
    }
    for ((a, p), l) in &set.ip.ipport {
        let k = match Ipv6Addr::from(a).to_ipv4_mapped() {
            Some(v4) => format!("{v4}:{p}"),
            None => format!("[{}]:{p}", Ipv6Addr::from(a)),
        };
        push(k, l);
    }
    for (a, p, l) in &set.ip.cidr4 {
        push(format!("{}/{p}", Ipv4Addr::from(*a)), *l);
    }
    for (a, p, l) in &set.ip.cidr6 {
        push(format!("{}/{p}", IpAddr::V6(Ipv6Addr::from(*a))), *l);
    }
    for (d, l) in set.domains.iter() {
        push(d.to_owned(), l);
    }
    for (r, l) in set.domains.regexes.iter() {
        push(r.to_owned(), l);
    }
    for (u, l) in set.urls.iter() {
        push(u.to_owned(), l);
    }
    // Deterministic order for a deterministic merge.
    out.sort_unstable();
    out
}

/// Custom trail files (`*.txt` under `dir`, recursively): info from the file name, reference
/// `(custom)`, lines keyed as static lines are.
pub fn custom_rows(dir: &Path) -> Result<Vec<Row>, TrailError> {
    let mut files = Vec::new();
    collect(dir, &mut files, 0)?;
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let data = std::fs::read(&f).map_err(|source| TrailError::Io {
            path: f.clone(),
            source,
        })?;
        let info = super::load::static_info(&f, None);
        for line in String::from_utf8_lossy(&data).lines() {
            let text = super::classify::strip_comment(line);
            if text.is_empty() {
                continue;
            }
            let key = maltrail::static_key(text);
            if !key.is_empty() {
                out.push((key.into_owned(), info.clone(), "(custom)".to_owned()));
            }
        }
    }
    Ok(out)
}

fn collect(dir: &Path, out: &mut Vec<std::path::PathBuf>, depth: usize) -> Result<(), TrailError> {
    let io = |source| TrailError::Io {
        path: dir.to_owned(),
        source,
    };
    if depth > 16 {
        return Err(TrailError::TooDeep {
            path: dir.to_owned(),
        });
    }
    for e in std::fs::read_dir(dir).map_err(io)? {
        let p = e.map_err(io)?.path();
        if p.is_dir() {
            collect(&p, out, depth + 1)?;
        } else if p.extension().is_some_and(|e| e == "txt") && p.is_file() {
            out.push(p);
        }
    }
    Ok(())
}

impl TrailSet {
    /// Builds a set from final rows (`trail,info,reference`, as a Maltrail `trails.csv`
    /// holds them): regex trails only where the reference mentions `static`.
    pub fn from_rows<'a>(
        rows: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>,
        opts: &LoadOptions,
    ) -> TrailSet {
        super::load::from_rows(rows, opts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(k: &str, i: &str, r: &str) -> Row {
        (k.into(), i.into(), r.into())
    }

    fn finish(m: Merge, min: usize) -> HashMap<String, (String, String)> {
        let opts = UpdateOptions {
            ip_minimum_feeds: min,
            ..UpdateOptions::default()
        };
        m.finish(&opts)
            .0
            .into_iter()
            .map(|(k, i, r)| (k, (i, r)))
            .collect()
    }

    #[test]
    fn priorities_and_duplicates() {
        let mut m = Merge::new();
        m.merge([
            row("evil.example", "malware", "feed-a"),
            row("6.6.6.6", "known attacker", "feed-a"),
            row("WWW.Shout.example", "phishing", "feed-a"),
        ]);
        m.merge([
            row("evil.example", "bad reputation", "feed-b"),
            row("6.6.6.6", "known attacker", "feed-b"),
            row("www.shout.example", "malware", "feed-b"),
        ]);
        m.merge([row("6.6.6.6", "mass scanner", "feed-c")]);
        m.merge([row("evil.example", "asyncrat (malware)", "(static)")]);
        let t = finish(m, 3);
        assert_eq!(
            t["evil.example"],
            (
                "asyncrat (malware)".into(),
                "(static) (+feed-a,feed-b)".into()
            )
        );
        // Three feeds: kept; the high-priority label wins.
        assert_eq!(t["6.6.6.6"].0, "mass scanner");
        assert_eq!(t["6.6.6.6"].1, "feed-c (+feed-a,feed-b)");
        assert!(t.contains_key("shout.example"), "{t:?}");
    }

    #[test]
    fn feed_only_ips_need_minimum_feeds() {
        let mut m = Merge::new();
        m.merge([row("9.9.9.9", "malware", "feed-a")]);
        m.merge([row("9.9.9.9", "malware", "feed-b")]);
        m.merge([row("8.8.4.4", "malware", "feed-a")]);
        m.merge([row("7.7.7.7", "dprk", "(custom)")]);
        let t = finish(m, 3);
        assert!(!t.contains_key("9.9.9.9"));
        assert!(!t.contains_key("8.8.4.4"));
        assert_eq!(t["7.7.7.7"], ("dprk".into(), "(custom)".into()));
        let mut m = Merge::new();
        m.merge([row("9.9.9.9", "malware", "feed-a")]);
        let t = finish(m, 1);
        assert_eq!(t["9.9.9.9"].0, "potential malware site");
    }

    #[test]
    fn cleanup_rules() {
        let mut m = Merge::new();
        m.merge([
            row("com", "malware", "feed"),
            row("evil.example/a?b=1", "malware", "feed"),
            row("evil.example//x", "malware", "feed"),
            row("10.1.2.3:80", "malware", "feed"),
            row("bad.example", "ransomware", "feed"),
        ]);
        let t = finish(m, 3);
        assert!(!t.contains_key("com"));
        assert!(t.contains_key("evil.example/a"));
        assert!(t.contains_key("evil.example/x"));
        assert!(!t.contains_key("10.1.2.3:80"));
        assert_eq!(t["bad.example"].0, "ransomware (malware)");
    }

    #[test]
    fn word_boundaries() {
        assert!(custom_or_static("(static)"));
        assert!(custom_or_static("x (+(custom))"));
        assert!(!custom_or_static("customs.example"));
        assert!(alphabetic_only(".com"));
        assert!(!alphabetic_only("a.com"));
    }
}
