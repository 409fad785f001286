//! Trails: loading Maltrail trail sources and the lookup tables built from them.
//!
//! CONTRACT (used by the sensor and by the replay pipeline; keep these names and shapes):
//! - `TrailSet::load(&[PathBuf], &LoadOptions) -> Result<TrailSet, TrailError>`: each path is a
//!   Maltrail `trails.csv` (`trail,info,reference`), a Maltrail static trail tree (folder), or
//!   a plain list file (one trail a line, labelled from its file name).
//! - `TrailSet::labels: Vec<Label>`, indexed by `LabelId` (u32): `info` and `reference`;
//!   `TrailSet::label_source(LabelId)` names the file that defined a label.
//! - `TrailSet::ip: IpTrails` with public fields `v4`, `v6`, `ipport`, `cidr4`, `cidr6` and
//!   `IpTrails::lookup(IpAddr, Option<u16>) -> Option<IpMatch>`. `v4` ([`V4Trails`]) and
//!   `ipport` ([`IpPortTrails`]) keep their IPv4 trails in cuckoo tables (`iptable`, the
//!   kernel's layout) with map-like calls (`insert`, `get`, `len`, `iter` of owned pairs).
//! - `TrailSet::report: LoadReport` (counts per kind, malformed lines and the first few).
//! - `TrailSet::domains: DomainTrails` (`lookup`, `contains`; regex trails inside) and
//!   `TrailSet::urls: UrlTrails` (`lookup(host, path)`).
//! - `CompiledSet::open(&Path, Option<&[u8; 32]>) -> Result<CompiledSet, CompiledError>`: a
//!   compiled set file (`compiled`), verified, memory-mapped; `trails()`/`into_trails()`
//!   give the `TrailSet`, `version()` its version, `ip_tables()` the kernel-map arrays and
//!   the IPv4 tables' buckets.
//! - `update::Merge`: Maltrail's updater merge across sources, then `TrailSet::from_rows`.
//!
//! Layout: `classify` decides what a line is, `load` walks files and builds the
//! tables, `table` is the arena hash table behind domains and URLs, `key_filter` the probe
//! filters beside those two tables, `iptable` the cuckoo
//! tables behind IPv4 and IPv4 IP:port trails, `ip`, `domain` and `url` implement the
//! lookups. Unit tests sit beside each; `detect/tests/trails_static.rs` loads the
//! real Maltrail tree, `detect/tests/trails_corpus.rs` the replay fixture, and
//! `detect/benches/trails.rs` measures load and lookups.
//!
//! Not here: the whitelist (`crate::whitelist`), heuristics, and event formatting.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use hashbrown::HashMap;

pub(crate) mod classify;
pub mod compiled;
pub mod delta;
mod domain;
pub(crate) mod ip;
pub mod iptable;
mod key_filter;
mod load;
mod maltrail;
mod regex_prefilter;
mod table;
pub(crate) use table::KeyHasher;
pub mod update;
mod url;

pub use classify::is_name_byte;
pub use compiled::{CompileOptions, CompiledError, CompiledSet, IpTables};
pub use domain::{DomainMatch, DomainTrails, RegexTrails};
pub(crate) use domain::{NameBuf, PendingName, NAME_BUF_LEN};
pub use iptable::{CuckooTable, IpPortTrails, V4Trails};
pub use maltrail::{Ipv4Ranges, StaticFilters};
pub use update::{Merge, Row, UpdateOptions, UpdateReport};
pub use url::{UrlCandidates, UrlMatch, UrlTrails};

/// Index into [`TrailSet::labels`]. This is also the value stored in the kernel maps.
pub type LabelId = u32;

/// What Maltrail prints for a trail: `info` (e.g. `asyncrat (malware)`) and `reference`
/// (e.g. `(static)`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Label {
    /// What the trail is, e.g. `asyncrat (malware)`.
    pub info: String,
    /// Where it comes from, e.g. `(static)`.
    pub reference: String,
}

/// Which IP table matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpMatchKind {
    /// An address trail.
    Ip,
    /// A CIDR trail containing the address.
    Cidr,
    /// An `IP:port` trail.
    IpPort,
}

/// A hit in the IP tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpMatch {
    /// Which table matched.
    pub kind: IpMatchKind,
    /// The matched trail's label.
    pub label: LabelId,
}

/// Address, CIDR and IP:port trails; the sensor copies them into the kernel maps.
#[derive(Debug, Default)]
pub struct IpTrails {
    /// IPv4 address trails (network byte order octets), in a cuckoo table
    /// ([`iptable`]: the kernel's and a compiled set's layout).
    pub v4: V4Trails,
    /// IPv6 address trails (never v4-mapped: those are in `v4`).
    pub v6: HashMap<[u8; 16], LabelId>,
    /// IPv4 keys are v4-mapped IPv6 (`::ffff:a.b.c.d`); port in host order. IPv4 ones are
    /// in a cuckoo table like `v4`.
    pub ipport: IpPortTrails,
    /// (network address, prefix length, label); the address is masked to the prefix.
    pub cidr4: Vec<([u8; 4], u8, LabelId)>,
    /// (network address, prefix length, label); the address is masked to the prefix.
    pub cidr6: Vec<([u8; 16], u8, LabelId)>,
    /// Longest-prefix index over `cidr4`/`cidr6` (see [`IpTrails::rebuild_cidr_index`]).
    cidr_index: ip::CidrIndex,
}

/// Loading failures that stop the load (malformed lines do not: they are counted).
#[derive(Debug, thiserror::Error)]
pub enum TrailError {
    /// A file or directory could not be read.
    #[error("cannot read trails from {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A folder of a trail tree is reached again (a symlink loop).
    #[error("trail tree loops: {path} is {first} again (symbolic link loop?)")]
    Loop {
        /// The folder reached again.
        path: PathBuf,
        /// Where it was first reached.
        first: PathBuf,
    },
    /// A trail tree nested deeper than a trail tree can reasonably be.
    #[error("trail tree too deep at {path}")]
    TooDeep {
        /// The folder.
        path: PathBuf,
    },
    /// A trail source that is not a regular file or folder (FIFO, socket, device).
    #[error("trail source {path} is {kind}, not a regular file")]
    NotAFile {
        /// The path.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// A trails CSV could not be read.
    #[error("cannot read trails CSV {path}: {source}")]
    Csv {
        /// The CSV file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: csv::Error,
    },
}

/// Why a trail line was not loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, thiserror::Error)]
pub enum MalformedReason {
    /// Nothing left once a URL scheme was removed.
    #[error("empty trail")]
    Empty,
    /// The line is not valid UTF-8.
    #[error("not UTF-8")]
    NotUtf8,
    /// An `IP:port` or `[IPv6]:port` with a bad address or port (e.g. `1.2.3.4:53:53`).
    #[error("bad IP:port")]
    BadIpPort,
    /// A CIDR with a bad prefix length.
    #[error("bad CIDR")]
    BadCidr,
    /// A domain with characters outside letters, digits, `-`, `_`, `.`.
    #[error("bad domain")]
    BadDomain,
    /// Digits and dots that are not an IPv4 address (e.g. `182.86.133`).
    #[error("numeric name that is not an IP")]
    NumericDomain,
    /// A URL whose host part is not a host name (or has a bad port).
    #[error("bad URL host")]
    BadUrlHost,
    /// A regex trail that does not compile.
    #[error("regex does not compile")]
    BadRegex,
    /// Longer than a trail can be (255 for domains, 65535 for URLs).
    #[error("too long")]
    TooLong,
    /// A CSV row without exactly three columns.
    #[error("CSV row without 3 columns")]
    CsvColumns,
    /// A line longer than [`LoadOptions::max_line_bytes`] (refused unread).
    #[error("line too long")]
    LineTooLong,
    /// Regex metacharacters that do not make a plausible domain pattern (or a pattern over the
    /// size and nesting limits).
    #[error("regex refused (not a domain pattern, or too complex)")]
    RegexRefused,
    /// Non-ASCII text that IDNA cannot encode (non-ASCII paths, bad labels).
    #[error("not ASCII and not IDNA-encodable")]
    NotAscii,
}

/// One malformed line, for the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MalformedLine {
    /// The file.
    pub path: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// The trail text (comment removed, trimmed; lossy if not UTF-8), at most 80 characters.
    pub text: String,
    /// Why it was not loaded.
    pub reason: MalformedReason,
}

/// Options for [`TrailSet::load`].
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// How many malformed lines the report keeps verbatim (all are counted). Default 10.
    pub max_malformed_examples: usize,
    /// Lines (or CSV rows) longer than this are refused unread. Default 4 KiB (the static
    /// tree's longest line is under 1 KiB).
    pub max_line_bytes: usize,
    /// Maltrail's updater filters for static trees and list files (whitelist, bogon and CDN
    /// ranges). Default: the built-in bogon ranges only; see
    /// [`LoadOptions::with_maltrail_data`].
    pub static_filters: StaticFilters,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            max_malformed_examples: 10,
            max_line_bytes: 4096,
            static_filters: StaticFilters::default(),
        }
    }
}

impl LoadOptions {
    /// Defaults plus the filters read from a Maltrail data folder (`whitelist.txt`,
    /// `bogon_ranges.txt`, `cdn_ranges.txt`), as Maltrail's updater applies them.
    pub fn with_maltrail_data(dir: &std::path::Path) -> Result<Self, TrailError> {
        Ok(Self {
            static_filters: StaticFilters::from_maltrail_data(dir)?,
            ..Self::default()
        })
    }
}

/// What a load found. Per-kind counts are distinct trails kept (after duplicates).
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    /// Files read.
    pub files: usize,
    /// Bytes of trail source text read.
    pub bytes: u64,
    /// Trail lines (not empty, not comments) or CSV rows seen.
    pub lines: usize,
    /// IPv4 address trails.
    pub ipv4: usize,
    /// IPv6 address trails.
    pub ipv6: usize,
    /// `IP:port` and `[IPv6]:port` trails.
    pub ipport: usize,
    /// IPv4 CIDR trails.
    pub cidr4: usize,
    /// IPv6 CIDR trails.
    pub cidr6: usize,
    /// Domain trails.
    pub domains: usize,
    /// URL trails.
    pub urls: usize,
    /// Regex domain trails.
    pub regexes: usize,
    /// Distinct labels.
    pub labels: usize,
    /// Trails seen again (same file or another); one entry is kept.
    pub duplicates: usize,
    /// Duplicates whose label was replaced by a more severe one.
    pub relabelled: usize,
    /// Malformed lines (not loaded).
    pub malformed: usize,
    /// Malformed lines per reason.
    pub malformed_reasons: BTreeMap<MalformedReason, usize>,
    /// Static trails dropped as whitelisted (or `127.`, `192.168.`, `localhost` prefixed).
    pub dropped_whitelisted: usize,
    /// Static address trails dropped for a bogon or CDN address.
    pub dropped_bogon_cdn: usize,
    /// The first malformed lines, up to [`LoadOptions::max_malformed_examples`].
    pub malformed_examples: Vec<MalformedLine>,
    /// The files labels came from (a trails CSV, a list file, a file of a static tree).
    pub sources: Vec<PathBuf>,
    /// Per label (indexed by [`LabelId`]), the index in `sources` of the file that defined
    /// it first (see [`TrailSet::label_source`]).
    pub label_sources: Vec<u32>,
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} files, {} trail lines ({:.1} MB): {} IPv4, {} IPv6, {} IP:port, {} CIDR \
             ({} v4, {} v6), {} domains, {} URLs, {} regexes; {} labels; {} duplicates; \
             {} malformed, {} whitelisted, {} bogon/CDN",
            self.files,
            self.lines,
            self.bytes as f64 / 1e6,
            self.ipv4,
            self.ipv6,
            self.ipport,
            self.cidr4 + self.cidr6,
            self.cidr4,
            self.cidr6,
            self.domains,
            self.urls,
            self.regexes,
            self.labels,
            self.duplicates,
            self.malformed,
            self.dropped_whitelisted,
            self.dropped_bogon_cdn,
        )?;
        if !self.malformed_reasons.is_empty() {
            let reasons: Vec<String> = self
                .malformed_reasons
                .iter()
                .map(|(r, n)| format!("{n} {r}"))
                .collect();
            write!(f, " ({})", reasons.join(", "))?;
        }
        if let Some(m) = self.malformed_examples.first() {
            write!(
                f,
                " (first: {}:{}: {:?}: {})",
                m.path.display(),
                m.line,
                m.text,
                m.reason
            )?;
        }
        Ok(())
    }
}

/// Everything loaded from the trail sources.
#[derive(Debug, Default)]
pub struct TrailSet {
    /// Labels, indexed by [`LabelId`].
    pub labels: Vec<Label>,
    /// Address, IP:port and CIDR trails.
    pub ip: IpTrails,
    /// Domain trails (names and regexes).
    pub domains: DomainTrails,
    /// URL trails.
    pub urls: UrlTrails,
    /// What the load found.
    pub report: LoadReport,
}

/// Returned by [`TrailSet::label`] for an id that is not in [`TrailSet::labels`].
static UNKNOWN_LABEL: Label = Label {
    info: String::new(),
    reference: String::new(),
};

impl TrailSet {
    /// Loads trails from Maltrail `trails.csv` files (`*.csv`), static trail trees
    /// (directories, walked recursively for `*.txt`) and plain list files (anything else, one
    /// trail a line, labelled from the file name). Malformed lines are counted in the report,
    /// never fatal; unreadable paths are.
    pub fn load(paths: &[PathBuf], opts: &LoadOptions) -> Result<TrailSet, TrailError> {
        load::load(paths, opts)
    }

    /// The label for `id` (an empty label if `id` is unknown).
    pub fn label(&self, id: LabelId) -> &Label {
        self.labels.get(id as usize).unwrap_or(&UNKNOWN_LABEL)
    }

    /// The file that defined label `id` first (for "why is this listed" answers; a label
    /// shared by several files names the first one read).
    pub fn label_source(&self, id: LabelId) -> Option<&std::path::Path> {
        let s = *self.report.label_sources.get(id as usize)?;
        self.report.sources.get(s as usize).map(PathBuf::as_path)
    }

    /// Heap bytes of the domain and URL tables (arenas, indexes and probe filters; 0 for
    /// what a compiled set maps).
    pub fn name_table_bytes(&self) -> usize {
        self.domains.heap_bytes() + self.urls.heap_bytes()
    }
}
