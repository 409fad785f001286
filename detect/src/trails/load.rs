//! Reading trail sources (CSV, static trees, list files) into a [`TrailSet`].

use std::fs;
use std::path::{Path, PathBuf};

use hashbrown::hash_map::Entry;
use hashbrown::HashMap;
use regex::{Regex, RegexBuilder};

use super::classify::{classify, strip_comment, Parsed};
use super::domain::{label_flags, DomainTrails, RegexTrails};
use super::ip::{mask4, mask6};
use super::maltrail::{self, Dropped};
use super::table::{Inserted, StrTable};
use super::url::UrlTrails;
use super::{
    IpTrails, Label, LabelId, LoadOptions, LoadReport, MalformedLine, MalformedReason, TrailError,
    TrailSet,
};

/// Reference Maltrail gives static trails.
const STATIC_REFERENCE: &str = "(static)";

/// How bad a label is, for choosing between duplicates: malware > malicious > suspicious >
/// anything else.
fn severity(info: &str) -> u8 {
    if info.contains("malware") {
        3
    } else if info.contains("malicious") {
        2
    } else if info.contains("suspicious") {
        1
    } else {
        0
    }
}

/// Maltrail's static-file label: the file stem with `_` as spaces, plus ` (category)` when
/// the file sits in a category folder.
pub(crate) fn static_info(file: &Path, category: Option<&str>) -> String {
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().replace('_', " "))
        .unwrap_or_default();
    match category {
        Some(c) => format!("{stem} ({c})"),
        None => stem,
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TrailError + '_ {
    move |source| TrailError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Replaces `*slot` by `new` if `new` is more severe; counts the duplicate.
fn merge(slot: &mut LabelId, new: LabelId, severity: &[u8], report: &mut LoadReport) {
    report.duplicates += 1;
    let sev = |l: LabelId| severity.get(l as usize).copied().unwrap_or(0);
    if sev(new) > sev(*slot) {
        *slot = new;
        report.relabelled += 1;
    }
}

struct Builder<'o> {
    opts: &'o LoadOptions,
    labels: Vec<Label>,
    label_ids: HashMap<Label, LabelId>,
    /// Per label, the index in `sources` of the file that defined it first.
    label_sources: Vec<u32>,
    /// Files that defined labels, each once.
    sources: Vec<PathBuf>,
    source_ids: HashMap<PathBuf, u32>,
    severity: Vec<u8>,
    ip: IpTrails,
    cidr4_pos: HashMap<([u8; 4], u8), usize>,
    cidr6_pos: HashMap<([u8; 16], u8), usize>,
    domains: StrTable,
    urls: StrTable,
    regexes: Vec<(Regex, LabelId)>,
    regex_pos: HashMap<String, usize>,
    report: LoadReport,
    scratch: Vec<u8>,
    /// Static lines of the current source, keyed as Maltrail's static parser keys them.
    pending: HashMap<Box<str>, Raw>,
    /// Files of the current static source (indexed by `Raw::file`).
    pending_files: Vec<PathBuf>,
}

/// One static key waiting for Maltrail's merge and post-processing.
#[derive(Clone, Copy, Debug)]
struct Raw {
    /// Order of first appearance.
    pos: u32,
    /// The label of the last file that listed it.
    label: LabelId,
    /// Where that was (index into `pending_files`, 1-based line).
    file: u32,
    line: u32,
}

/// Longest regex trail accepted (the static tree's longest is under 700 bytes).
const MAX_REGEX_LEN: usize = 1024;

/// Whether a regex trail is a plausible domain pattern: only name characters and regex
/// syntax, (as Maltrail's own test for regex trails) a repeated class or dot (`].+`, `.*`)
/// or a bracketed name-character class, and a literal top-level domain at the end.
pub(crate) fn plausible_domain_regex(r: &str) -> bool {
    if r.len() > MAX_REGEX_LEN {
        return false;
    }
    let b = r.as_bytes();
    if !b.iter().all(|&c| {
        c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'.' | b'-'
                    | b'_'
                    | b'\\'
                    | b'['
                    | b']'
                    | b'('
                    | b')'
                    | b'{'
                    | b'}'
                    | b'*'
                    | b'+'
                    | b'?'
                    | b'|'
                    | b'^'
                    | b'$'
                    | b','
            )
    }) {
        return false;
    }
    let repeated = b
        .windows(2)
        .any(|w| matches!(w[0], b']' | b'.') && matches!(w[1], b'*' | b'+'));
    let class = {
        let mut found = false;
        let mut i = 0;
        while let Some(o) = b[i..].iter().position(|&c| c == b'[') {
            let start = i + o + 1;
            let len = b[start..]
                .iter()
                .take_while(|&&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
                .count();
            if len > 0 && b.get(start + len) == Some(&b']') {
                found = true;
                break;
            }
            i = start;
        }
        found
    };
    (repeated || class) && ends_with_tld(r)
}

/// Whether a regex ends (before an optional `$`) with a literal top-level domain: `.com`,
/// `\.com`, or a group of them such as `\.(com|net)`. Every regex trail of the static tree
/// does; random text almost never.
fn ends_with_tld(r: &str) -> bool {
    let r = r.strip_suffix('$').unwrap_or(r);
    // `\.[a-z0-9._-]+`: any name as the last label.
    if let Some(class) = r.strip_suffix("]+").or_else(|| r.strip_suffix("]*")) {
        if let Some(open) = class.rfind('[') {
            return class[..open].ends_with('.');
        }
    }
    let tld = |t: &str| t.len() >= 2 && t.bytes().all(|b| b.is_ascii_alphabetic());
    let (prefix, ok) = match r.strip_suffix(')') {
        Some(inner) => match inner.rfind('(') {
            Some(open) => (&inner[..open], inner[open + 1..].split('|').all(tld)),
            None => return false,
        },
        None => {
            let n = r.bytes().rev().take_while(u8::is_ascii_alphabetic).count();
            (&r[..r.len() - n], n >= 2)
        }
    };
    ok && prefix.ends_with('.')
}

/// Shortens a refused line for reports and errors (at most 80 characters).
fn excerpt(text: &str) -> String {
    const MAX: usize = 80;
    match text.char_indices().nth(MAX) {
        None => text.to_owned(),
        Some((i, _)) => format!("{}... ({} bytes)", &text[..i], text.len()),
    }
}

impl<'o> Builder<'o> {
    fn new(opts: &'o LoadOptions) -> Self {
        Self {
            opts,
            labels: Vec::new(),
            label_ids: HashMap::new(),
            label_sources: Vec::new(),
            sources: Vec::new(),
            source_ids: HashMap::new(),
            severity: Vec::new(),
            ip: IpTrails::default(),
            cidr4_pos: HashMap::new(),
            cidr6_pos: HashMap::new(),
            domains: StrTable::default(),
            urls: StrTable::default(),
            regexes: Vec::new(),
            regex_pos: HashMap::new(),
            report: LoadReport::default(),
            scratch: Vec::with_capacity(256),
            pending: HashMap::new(),
            pending_files: Vec::new(),
        }
    }

    /// The label for (`info`, `reference`); a new one remembers `file` as its source.
    fn intern(&mut self, info: &str, reference: &str, file: &Path) -> LabelId {
        let key = Label {
            info: info.to_owned(),
            reference: reference.to_owned(),
        };
        if let Some(&id) = self.label_ids.get(&key) {
            return id;
        }
        let id = self.labels.len() as LabelId;
        let source = match self.source_ids.get(file) {
            Some(&s) => s,
            None => {
                let s = self.sources.len() as u32;
                self.sources.push(file.to_owned());
                self.source_ids.insert(file.to_owned(), s);
                s
            }
        };
        self.label_sources.push(source);
        self.severity.push(severity(info));
        self.labels.push(key.clone());
        self.label_ids.insert(key, id);
        id
    }

    fn malformed(&mut self, path: &Path, line: usize, text: &str, reason: MalformedReason) {
        self.report.malformed += 1;
        *self.report.malformed_reasons.entry(reason).or_insert(0) += 1;
        if self.report.malformed_examples.len() < self.opts.max_malformed_examples {
            self.report.malformed_examples.push(MalformedLine {
                path: path.to_owned(),
                line,
                text: excerpt(text),
                reason,
            });
        }
    }

    /// Adds one trail text (trimmed, comment-free, not empty); the caller counts the line.
    fn add(&mut self, path: &Path, line: usize, text: &str, label: LabelId, allow_regex: bool) {
        let parsed = match classify(text, allow_regex) {
            Ok(p) => p,
            Err(reason) => return self.malformed(path, line, text, reason),
        };
        let (sev, rep) = (&self.severity[..], &mut self.report);
        match parsed {
            // One probe per line: the insert hands back a duplicate's label, put back only
            // when it outranks the new one.
            Parsed::V4(a) => match self.ip.v4.insert(a, label) {
                Some(prev) => {
                    let mut l = prev;
                    merge(&mut l, label, sev, rep);
                    if l != label {
                        self.ip.v4.insert(a, l);
                    }
                }
                None => rep.ipv4 += 1,
            },
            Parsed::V6(a) => match self.ip.v6.entry(a) {
                Entry::Occupied(mut e) => merge(e.get_mut(), label, sev, rep),
                Entry::Vacant(e) => {
                    e.insert(label);
                    rep.ipv6 += 1;
                }
            },
            Parsed::IpPort(a, port) => match self.ip.ipport.insert((a, port), label) {
                Some(prev) => {
                    let mut l = prev;
                    merge(&mut l, label, sev, rep);
                    if l != label {
                        self.ip.ipport.insert((a, port), l);
                    }
                }
                None => rep.ipport += 1,
            },
            Parsed::Cidr4(a, p) => {
                let net = mask4(u32::from_be_bytes(a), p).to_be_bytes();
                match self.cidr4_pos.entry((net, p)) {
                    Entry::Occupied(e) => merge(&mut self.ip.cidr4[*e.get()].2, label, sev, rep),
                    Entry::Vacant(e) => {
                        e.insert(self.ip.cidr4.len());
                        self.ip.cidr4.push((net, p, label));
                        rep.cidr4 += 1;
                    }
                }
            }
            Parsed::Cidr6(a, p) => {
                let net = mask6(u128::from_be_bytes(a), p).to_be_bytes();
                match self.cidr6_pos.entry((net, p)) {
                    Entry::Occupied(e) => merge(&mut self.ip.cidr6[*e.get()].2, label, sev, rep),
                    Entry::Vacant(e) => {
                        e.insert(self.ip.cidr6.len());
                        self.ip.cidr6.push((net, p, label));
                        rep.cidr6 += 1;
                    }
                }
            }
            Parsed::Domain(d) => {
                self.scratch.clear();
                self.scratch
                    .extend(d.bytes().map(|b| b.to_ascii_lowercase()));
                match self.domains.insert(&self.scratch, label) {
                    Inserted::New => self.report.domains += 1,
                    Inserted::Existing { record, label: old } => {
                        let mut l = old;
                        merge(&mut l, label, &self.severity, &mut self.report);
                        if l != old {
                            self.domains.set_label(record, l);
                        }
                    }
                    Inserted::Full => self.malformed(path, line, text, MalformedReason::TooLong),
                }
            }
            Parsed::Url { host, path: p } => {
                self.scratch.clear();
                // URLs match case-insensitively: the pipeline lowercases request paths.
                self.scratch
                    .extend(host.bytes().map(|b| b.to_ascii_lowercase()));
                self.scratch
                    .extend(p.bytes().map(|b| b.to_ascii_lowercase()));
                match self.urls.insert(&self.scratch, label) {
                    Inserted::New => self.report.urls += 1,
                    Inserted::Existing { record, label: old } => {
                        let mut l = old;
                        merge(&mut l, label, &self.severity, &mut self.report);
                        if l != old {
                            self.urls.set_label(record, l);
                        }
                    }
                    Inserted::Full => self.malformed(path, line, text, MalformedReason::TooLong),
                }
            }
            Parsed::Regex(r) => {
                if let Some(&i) = self.regex_pos.get(r) {
                    merge(&mut self.regexes[i].1, label, sev, rep);
                    return;
                }
                if !plausible_domain_regex(r) {
                    return self.malformed(path, line, text, MalformedReason::RegexRefused);
                }
                let compiled = RegexBuilder::new(r)
                    .size_limit(1 << 20)
                    .dfa_size_limit(1 << 20)
                    .nest_limit(16)
                    .build();
                match compiled {
                    Ok(re) => {
                        self.regex_pos.insert(r.to_owned(), self.regexes.len());
                        self.regexes.push((re, label));
                        self.report.regexes += 1;
                    }
                    Err(_) => self.malformed(path, line, text, MalformedReason::BadRegex),
                }
            }
        }
    }

    /// A static list file: one trail a line, `#` comments, all with `label`. Lines are staged
    /// for Maltrail's merge (see [`Builder::flush_static`]).
    fn load_list(&mut self, path: &Path, label: LabelId) -> Result<(), TrailError> {
        let data = fs::read(path).map_err(io_error(path))?;
        self.report.files += 1;
        self.report.bytes += data.len() as u64;
        let file = self.pending_files.len() as u32;
        self.pending_files.push(path.to_owned());
        for (i, raw) in data.split(|&b| b == b'\n').enumerate() {
            // Cheap pre-filter: comment-only and blank lines are most of the non-trail lines.
            let first = raw.iter().position(|b| !b.is_ascii_whitespace());
            match first {
                None => continue,
                Some(f) if raw[f] == b'#' => continue,
                Some(_) => {}
            }
            if raw.len() > self.opts.max_line_bytes {
                self.report.lines += 1;
                let lossy = String::from_utf8_lossy(&raw[..raw.len().min(256)]).into_owned();
                self.malformed(path, i + 1, &lossy, MalformedReason::LineTooLong);
                continue;
            }
            match std::str::from_utf8(raw) {
                Ok(line) => {
                    let text = strip_comment(line);
                    if !text.is_empty() {
                        self.report.lines += 1;
                        self.stage_static(file, i + 1, text, label);
                    }
                }
                Err(_) => {
                    self.report.lines += 1;
                    let lossy = String::from_utf8_lossy(raw);
                    let text = strip_comment(&lossy).to_owned();
                    self.malformed(path, i + 1, &text, MalformedReason::NotUtf8);
                }
            }
        }
        Ok(())
    }

    /// Stages one static line: last file listing a key gives its label, first appearance its
    /// place in the merge order (Maltrail's static dictionary).
    fn stage_static(&mut self, file: u32, line: usize, text: &str, label: LabelId) {
        let key = maltrail::static_key(text);
        if key.is_empty() {
            let path = self.pending_files[file as usize].clone();
            return self.malformed(&path, line, text, MalformedReason::Empty);
        }
        let line = u32::try_from(line).unwrap_or(u32::MAX);
        let pos = self.pending.len() as u32;
        // One probe: the key is copied only when new.
        match self.pending.entry_ref(key.as_ref()) {
            hashbrown::hash_map::EntryRef::Occupied(mut e) => {
                let r = e.get_mut();
                r.label = label;
                r.file = file;
                r.line = line;
            }
            hashbrown::hash_map::EntryRef::Vacant(e) => {
                e.insert(Raw {
                    pos,
                    label,
                    file,
                    line,
                });
            }
        }
    }

    /// Runs Maltrail's merge and post-processing over the staged static keys, then adds the
    /// surviving trails to the tables.
    fn flush_static(&mut self) {
        if self.pending.is_empty() {
            self.pending_files.clear();
            return;
        }
        // Merge: `www.name` and `name` are one key; a later key replaces an earlier one unless
        // its label is a "history" one.
        let mut staged: Vec<(Box<str>, Raw)> = self.pending.drain().collect();
        staged.sort_unstable_by_key(|(_, r)| r.pos);
        let mut merged: HashMap<Box<str>, Raw> = HashMap::with_capacity(staged.len());
        for (k, r) in staged {
            let k = match k.strip_prefix("www.") {
                Some(rest) if !k.contains('/') => rest.into(),
                _ => k,
            };
            let next = merged.len() as u32;
            match merged.entry(k) {
                Entry::Occupied(mut e) => {
                    if maltrail::may_replace(&self.labels[r.label as usize].info) {
                        let pos = e.get().pos;
                        *e.get_mut() = Raw { pos, ..r };
                    }
                }
                Entry::Vacant(e) => {
                    e.insert(Raw { pos: next, ..r });
                }
            }
        }
        // Post-processing in merge order: a key rewritten onto another (case, `www.`,
        // `?query`, `//`) replaces it.
        let mut staged: Vec<(Box<str>, Raw)> = merged.drain().collect();
        staged.sort_unstable_by_key(|(_, r)| r.pos);
        let mut last: HashMap<Box<str>, (Raw, bool)> = HashMap::with_capacity(staged.len());
        for (k, r) in staged {
            match maltrail::post_process(&k) {
                Err(reason) => {
                    let path = self.pending_files[r.file as usize].clone();
                    self.malformed(&path, r.line as usize, &k, reason);
                }
                Ok(fin) if *fin == *k => {
                    last.entry(k).or_insert((r, false));
                }
                Ok(fin) => {
                    last.insert(fin.into_boxed_str(), (r, true));
                }
            }
        }
        let mut staged: Vec<(Box<str>, Raw)> = last.drain().map(|(k, (r, _))| (k, r)).collect();
        staged.sort_unstable_by_key(|(_, r)| r.pos);
        let filters = &self.opts.static_filters;
        let mut keep = Vec::with_capacity(staged.len());
        for (k, r) in staged {
            match maltrail::filter(&k, &self.labels[r.label as usize].info, filters) {
                Some(Dropped::Whitelisted) => self.report.dropped_whitelisted += 1,
                Some(Dropped::BogonOrCdn) => self.report.dropped_bogon_cdn += 1,
                None => keep.push((k, r)),
            }
        }
        let files = std::mem::take(&mut self.pending_files);
        for (k, r) in keep {
            self.add(&files[r.file as usize], r.line as usize, &k, r.label, true);
        }
    }

    /// A Maltrail `trails.csv`: `trail,info,reference` rows.
    fn load_csv(&mut self, path: &Path) -> Result<(), TrailError> {
        let file = fs::File::open(path).map_err(io_error(path))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        self.report.files += 1;
        self.report.bytes += size;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(std::io::BufReader::with_capacity(1 << 16, file));
        let mut record = csv::ByteRecord::new();
        // Rows come grouped by feed: remember the last label instead of interning each row.
        let mut last: Option<(Vec<u8>, Vec<u8>, LabelId)> = None;
        loop {
            match reader.read_byte_record(&mut record) {
                Ok(false) => break,
                Ok(true) => {}
                Err(source) => {
                    return Err(TrailError::Csv {
                        path: path.to_owned(),
                        source,
                    })
                }
            }
            let line = record.position().map_or(0, |p| p.line() as usize);
            let trail_raw = record.get(0).unwrap_or_default();
            let trail = String::from_utf8_lossy(trail_raw);
            let trail = trail.trim();
            if trail.starts_with('#') || (record.len() == 1 && trail.is_empty()) {
                continue;
            }
            if record.as_slice().len() > self.opts.max_line_bytes {
                self.report.lines += 1;
                self.malformed(path, line, trail, MalformedReason::LineTooLong);
                continue;
            }
            if record.len() != 3 {
                self.report.lines += 1;
                self.malformed(path, line, trail, MalformedReason::CsvColumns);
                continue;
            }
            if std::str::from_utf8(trail_raw).is_err() {
                self.report.lines += 1;
                self.malformed(path, line, trail, MalformedReason::NotUtf8);
                continue;
            }
            let (info, reference) = (&record[1], &record[2]);
            let label = match &last {
                Some((i, r, l)) if i == info && r == reference => *l,
                _ => {
                    let l = self.intern(
                        &String::from_utf8_lossy(info),
                        &String::from_utf8_lossy(reference),
                        path,
                    );
                    last = Some((info.to_vec(), reference.to_vec(), l));
                    l
                }
            };
            if trail.is_empty() {
                self.report.lines += 1;
                self.malformed(path, line, trail, MalformedReason::Empty);
                continue;
            }
            let allow_regex = memchr::memmem::find(reference, b"static").is_some();
            self.report.lines += 1;
            self.add(path, line, trail, label, allow_regex);
        }
        Ok(())
    }

    /// A static trail tree: `category/*.txt` get `stem (category)`, root files `stem`. Files
    /// are read in Maltrail's order (see [`collect_txt`]) and merged as its updater does.
    fn load_tree(&mut self, root: &Path) -> Result<(), TrailError> {
        let mut files = Vec::new();
        let mut seen = HashMap::new();
        collect_txt(root, &mut files, &mut seen, 0)?;
        for file in files {
            let category = file
                .parent()
                .filter(|p| *p != root)
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned());
            let label = self.intern(
                &static_info(&file, category.as_deref()),
                STATIC_REFERENCE,
                &file,
            );
            self.load_list(&file, label)?;
        }
        self.flush_static();
        Ok(())
    }

    fn load_path(&mut self, path: &Path) -> Result<(), TrailError> {
        let meta = fs::metadata(path).map_err(io_error(path))?;
        if meta.is_dir() {
            self.load_tree(path)
        } else if !meta.is_file() {
            Err(TrailError::NotAFile {
                path: path.to_owned(),
                kind: file_kind(&meta.file_type()),
            })
        } else if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
        {
            self.load_csv(path)
        } else {
            let label = self.intern(&static_info(path, None), STATIC_REFERENCE, path);
            self.load_list(path, label)?;
            self.flush_static();
            Ok(())
        }
    }

    fn finish(mut self) -> TrailSet {
        self.ip.rebuild_cidr_index();
        self.domains.shrink_to_fit();
        self.urls.shrink_to_fit();
        self.report.labels = self.labels.len();
        self.report.sources = self.sources;
        self.report.label_sources = self.label_sources;
        let flags = self.labels.iter().map(|l| label_flags(&l.info)).collect();
        TrailSet {
            labels: self.labels,
            ip: self.ip,
            domains: DomainTrails::new(self.domains, RegexTrails::new(self.regexes), flags),
            urls: UrlTrails::new(self.urls),
            report: self.report,
        }
    }
}

/// Deepest directory nesting walked in a trail tree.
const MAX_TREE_DEPTH: usize = 16;

fn file_kind(t: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// All `*.txt` files under `dir`, in Maltrail's merge order: `malicious`/`suspicious` folders
/// first, then the folder's own files, then the other folders (`custom` last); names sorted
/// within each group and `history` files last in their folder (so later files win ties, as in
/// Maltrail's updater, deterministically). A folder reached twice (symlink loop) or a
/// special file (FIFO, socket, device) ending in `.txt` is an error, found before anything is
/// opened.
fn collect_txt(
    dir: &Path,
    out: &mut Vec<PathBuf>,
    seen: &mut HashMap<(u64, u64), PathBuf>,
    depth: usize,
) -> Result<(), TrailError> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(dir).map_err(io_error(dir))?;
    if let Some(first) = seen.insert((meta.dev(), meta.ino()), dir.to_owned()) {
        return Err(TrailError::Loop {
            path: dir.to_owned(),
            first,
        });
    }
    if depth > MAX_TREE_DEPTH {
        return Err(TrailError::TooDeep {
            path: dir.to_owned(),
        });
    }
    let mut entries = fs::read_dir(dir)
        .map_err(io_error(dir))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_error(dir))?;
    entries.sort();
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    for p in entries {
        // Follows symlinks: a link to a folder is walked (loops caught above).
        let meta = match fs::metadata(&p) {
            Ok(m) => m,
            // A dangling symlink: nothing to read.
            Err(_) if fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) => {
                continue
            }
            Err(e) => return Err(io_error(&p)(e)),
        };
        let is_txt = p.extension().is_some_and(|e| e == "txt");
        if meta.is_dir() {
            dirs.push(p);
        } else if is_txt && meta.is_file() {
            files.push(p);
        } else if is_txt {
            return Err(TrailError::NotAFile {
                kind: file_kind(&meta.file_type()),
                path: p,
            });
        }
    }
    let name = |p: &PathBuf| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    files.sort_by_key(|p| name(p).contains("history"));
    dirs.sort_by_key(|p| {
        let n = name(p);
        if n.contains("suspicious") || n.contains("malicious") {
            0
        } else if n.contains("custom") {
            2
        } else {
            1
        }
    });
    let (first, rest): (Vec<_>, Vec<_>) = dirs.into_iter().partition(|p| {
        let n = name(p);
        n.contains("suspicious") || n.contains("malicious")
    });
    for d in first {
        collect_txt(&d, out, seen, depth + 1)?;
    }
    out.extend(files);
    for d in rest {
        collect_txt(&d, out, seen, depth + 1)?;
    }
    Ok(())
}

/// A set from final `trail,info,reference` rows (see [`TrailSet::from_rows`]).
pub(crate) fn from_rows<'a>(
    rows: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>,
    opts: &LoadOptions,
) -> TrailSet {
    let mut b = Builder::new(opts);
    let path = PathBuf::from("(rows)");
    let mut last: Option<(&str, &str, LabelId)> = None;
    for (n, (trail, info, reference)) in rows.into_iter().enumerate() {
        let label = match last {
            Some((i, r, l)) if i == info && r == reference => l,
            _ => {
                let l = b.intern(info, reference, &path);
                last = Some((info, reference, l));
                l
            }
        };
        let trail = trail.trim();
        b.report.lines += 1;
        if trail.is_empty() {
            b.malformed(&path, n + 1, trail, MalformedReason::Empty);
            continue;
        }
        if trail.len() > opts.max_line_bytes {
            b.malformed(&path, n + 1, trail, MalformedReason::LineTooLong);
            continue;
        }
        b.add(&path, n + 1, trail, label, reference.contains("static"));
    }
    b.finish()
}

pub(crate) fn load(paths: &[PathBuf], opts: &LoadOptions) -> Result<TrailSet, TrailError> {
    let mut b = Builder::new(opts);
    for p in paths {
        b.load_path(p)?;
    }
    Ok(b.finish())
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::trails::IpMatchKind;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let p = std::env::temp_dir().join(format!(
                "xtrail-trails-{name}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            Self(p)
        }

        fn write(&self, rel: &str, text: &str) -> PathBuf {
            let p = self.0.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, text).unwrap();
            p
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn tree() -> TempDir {
        let d = TempDir::new("tree");
        d.write(
            "malware/async_rat.txt",
            "# Reference: somewhere\n\
             \n\
             evil.example\n\
             Shared.Example.\n\
             6.6.6.6:8443\n\
             1.2.3.4 # inline comment\n\
             [0:0:0:0:0:ffff:2d3e:c649]:53\n\
             evil.example/gate.php\n\
             /c2.php\n\
             dga[0-9]+\\.wildcard-test\\.com\n\
             161.35.41.9:53:53\n\
             support\u{ac}forum.org\n\
             bad[regex\n",
        );
        d.write(
            "suspicious/parking_site.txt",
            "shared.example\n1.2.3.4\nonly-suspicious.example\n",
        );
        d.write("malicious/zz.txt", "shared.example\n");
        d.write("mass_scanner.txt", "9.9.9.9 # scanner\n");
        d.write(
            "mass_scanner_cidr.txt",
            "5.63.151.7/24 # rapid7\n10.0.0.0/33\n",
        );
        d.write("malware/readme.md", "not.loaded.example\n");
        d
    }

    #[test]
    fn static_tree_labels_and_kinds() {
        let d = tree();
        let t = TrailSet::load(std::slice::from_ref(&d.0), &LoadOptions::default()).unwrap();
        let info = |l: LabelId| t.label(l).info.clone();
        let r = &t.report;
        assert_eq!(r.files, 5);
        assert_eq!(r.ipv4, 2);
        assert_eq!(r.ipport, 2);
        assert_eq!(r.cidr4, 1);
        // support\u{ac}forum.org is IDNA-encoded, as Maltrail does.
        assert_eq!(r.domains, 4, "{r}");
        assert!(t.domains.contains("xn--supportforum-tqa.org").is_some());
        assert_eq!(r.urls, 2);
        assert_eq!(r.regexes, 1);
        assert_eq!(r.malformed, 2, "{r}");
        // 10.0.0.0/33 is dropped as a bogon before it is parsed, as in Maltrail.
        assert_eq!(r.dropped_bogon_cdn, 1, "{r}");
        assert_eq!(r.lines, 18);
        let m = t.domains.lookup("evil.example").unwrap();
        assert_eq!(info(m.label), "async rat (malware)");
        assert_eq!(t.label(m.label).reference, "(static)");
        assert_eq!(
            t.label_source(m.label),
            Some(d.0.join("malware/async_rat.txt").as_path())
        );
        // Duplicates: malware beats suspicious and malicious whatever the order.
        assert_eq!(
            info(t.domains.contains("shared.example").unwrap()),
            "async rat (malware)"
        );
        assert_eq!(
            info(t.ip.lookup("1.2.3.4".parse().unwrap(), None).unwrap().label),
            "async rat (malware)"
        );
        assert_eq!(
            info(t.domains.contains("only-suspicious.example").unwrap()),
            "parking site (suspicious)"
        );
        let scan = t.ip.lookup("9.9.9.9".parse().unwrap(), None).unwrap();
        assert_eq!(info(scan.label), "mass scanner");
        let cidr = t.ip.lookup("5.63.151.200".parse().unwrap(), None).unwrap();
        assert_eq!(cidr.kind, IpMatchKind::Cidr);
        assert_eq!(info(cidr.label), "mass scanner cidr");
        assert_eq!(t.ip.cidr4[0].0, [5, 63, 151, 0]);
        // The v4-mapped [::ffff:2d3e:c649]:53 is 45.62.198.73:53.
        let ip: IpAddr = "45.62.198.73".parse().unwrap();
        assert_eq!(t.ip.lookup(ip, Some(53)).unwrap().kind, IpMatchKind::IpPort);
        assert!(t.domains.lookup("dga77.wildcard-test.com").is_some());
        assert!(t.urls.lookup(Some("evil.example"), "/gate.php").is_some());
        assert!(t.urls.lookup(Some("x.example"), "/c2.php").is_some());
        assert!(t.domains.contains("not.loaded.example").is_none());

        let texts: Vec<_> = r
            .malformed_examples
            .iter()
            .map(|m| (m.text.as_str(), m.reason, m.line))
            .collect();
        assert_eq!(
            texts,
            vec![
                ("161.35.41.9:53:53", MalformedReason::BadIpPort, 11),
                ("bad[regex", MalformedReason::RegexRefused, 13),
            ]
        );
        let shown = r.to_string();
        assert!(shown.contains("2 malformed"), "{shown}");
        assert!(shown.contains("1 bad IP:port"), "{shown}");
        assert!(shown.contains("161.35.41.9:53:53"), "{shown}");
    }

    #[test]
    fn first_seen_wins_on_equal_severity() {
        let d = TempDir::new("equal");
        let a = d.write("a_list.txt", "same.example\n");
        let b = d.write("b_list.txt", "same.example\n");
        let t = TrailSet::load(&[a, b], &LoadOptions::default()).unwrap();
        let l = t.domains.contains("same.example").unwrap();
        assert_eq!(t.label(l).info, "a list");
        assert_eq!(t.report.duplicates, 1);
        assert_eq!(t.report.relabelled, 0);
    }

    #[test]
    fn csv_file() {
        let d = TempDir::new("csv");
        let p = d.write(
            "trails.csv",
            "evil.example,malware (test),(static)\n\
             \"quoted,name.example\",x,y\n\
             \"a.example\",\"info, with comma\",(custom)\n\
             dga[0-9]+\\.x\\.com,malware (test),(static)\n\
             feed[0-9]\\.x\\.com,feed,(remote)\n\
             too,few\n\
             66.66.66.66,known attacker,(static)\n",
        );
        let t = TrailSet::load(&[p], &LoadOptions::default()).unwrap();
        assert_eq!(t.report.lines, 7);
        assert_eq!(t.report.malformed, 3, "{}", t.report);
        assert_eq!(
            t.label(t.domains.contains("a.example").unwrap()).info,
            "info, with comma"
        );
        assert_eq!(t.report.regexes, 1);
        assert_eq!(t.labels.len(), 5);
        let m = t.ip.lookup("66.66.66.66".parse().unwrap(), None).unwrap();
        assert_eq!(t.label(m.label).info, "known attacker");
        assert_eq!(
            t.label_source(m.label),
            Some(d.0.join("trails.csv").as_path())
        );
        assert_eq!(t.report.sources.len(), 1);
    }

    #[test]
    fn regex_plausibility() {
        for ok in [
            r"q(l|r)[0-9]{5,6}\.pw",
            r"nklmtf[0-9][^.]*[0-9].t35.com",
            r"^[a-z]{1,3}\-leboncoin\.(com|info|me|top)$",
            r"(gomon|perevod|sdelka|shcet|v[i,y]plata)[0-9]{2,3}\.ru",
        ] {
            assert!(plausible_domain_regex(ok), "{ok}");
        }
        for bad in [
            "bad[regex",
            "((((((((a))))))))",
            "a[b]c",
            r"x[a-z]+\.(com|n3t)",
            "a{1000}",
        ] {
            assert!(!plausible_domain_regex(bad), "{bad}");
        }
    }

    #[test]
    fn missing_path_is_an_error() {
        let r = TrailSet::load(
            &[PathBuf::from("/nonexistent/xtrail/trails")],
            &LoadOptions::default(),
        );
        assert!(matches!(r, Err(TrailError::Io { .. })));
    }

    #[test]
    fn labels_from_file_names() {
        assert_eq!(
            static_info(Path::new("x/malware/asyncrat.txt"), Some("malware")),
            "asyncrat (malware)"
        );
        assert_eq!(
            static_info(Path::new("mass_scanner.txt"), None),
            "mass scanner"
        );
    }
}
