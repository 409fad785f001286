//! Trails: loading Maltrail trail sources and the lookup tables built from them.
//!
//! CONTRACT (used by the sensor and by the replay pipeline; keep these names and shapes):
//! - `TrailSet::load(&[PathBuf], &LoadOptions) -> Result<TrailSet, TrailError>`: each path is a
//!   Maltrail `trails.csv` (`trail,info,reference`), a Maltrail static trail tree (folder), or
//!   a plain list file (one trail a line, labelled from its file name).
//! - `TrailSet::labels: Vec<Label>`, indexed by `LabelId` (u32): `info` and `reference`.
//! - `TrailSet::ip: IpTrails` with public fields `v4`, `v6`, `ipport`, `cidr4`, `cidr6` and
//!   `IpTrails::lookup(IpAddr, Option<u16>) -> Option<IpMatch>`.
//! - `TrailSet::report: LoadReport` (counts per kind, malformed lines and the first few).

use std::net::IpAddr;
use std::path::PathBuf;

use hashbrown::HashMap;

/// Index into [`TrailSet::labels`]. This is also the value stored in the kernel maps.
pub type LabelId = u32;

/// What Maltrail prints for a trail: `info` (e.g. `asyncrat (malware)`) and `reference`
/// (e.g. `(static)`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Label {
    pub info: String,
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
    pub kind: IpMatchKind,
    pub label: LabelId,
}

/// Address, CIDR and IP:port trails; the sensor copies them into the kernel maps.
#[derive(Debug, Default)]
pub struct IpTrails {
    pub v4: HashMap<[u8; 4], LabelId>,
    pub v6: HashMap<[u8; 16], LabelId>,
    /// IPv4 keys are v4-mapped IPv6 (`::ffff:a.b.c.d`); port in host order.
    pub ipport: HashMap<([u8; 16], u16), LabelId>,
    /// (network address, prefix length, label).
    pub cidr4: Vec<([u8; 4], u8, LabelId)>,
    pub cidr6: Vec<([u8; 16], u8, LabelId)>,
}

/// Loading failures that stop the load (malformed lines do not: they are counted).
#[derive(Debug, thiserror::Error)]
pub enum TrailError {
    #[error("cannot read trails from {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Options for [`TrailSet::load`].
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {}

/// What a load found.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    pub files: usize,
    pub malformed: usize,
}

/// Everything loaded from the trail sources.
#[derive(Debug, Default)]
pub struct TrailSet {
    pub labels: Vec<Label>,
    pub ip: IpTrails,
    pub report: LoadReport,
}

impl IpTrails {
    /// Looks an address up the way the XDP program does: IP:port (when a port is given),
    /// then the address, then the CIDR tables.
    pub fn lookup(&self, _addr: IpAddr, _port: Option<u16>) -> Option<IpMatch> {
        None
    }
}
