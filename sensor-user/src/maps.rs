//! Map filling helpers: the HTTP port bitmap (one batched update through
//! [`crate::trail_maps`]' `bpf(2)` wrapper; aya has no batch API) and the IPv4 prefilter's
//! blocks (a 2^24-bit bitmap with one bit per /24 that holds any IPv4 trail, so clean
//! traffic skips every hash and trie lookup). The trail maps themselves are filled by
//! [`crate::trail_maps`], which also swaps them on a reload.

use std::os::fd::{AsFd, AsRawFd, RawFd};

use aya::maps::{Array, Map, MapData, MapError, PerCpuArray, PerCpuValues};
use aya::Ebpf;
use xtrail_common::{
    maps as names, FlowBatch, FlowRecord, FLOW_BATCH, HTTP_PORT_WORDS, PREFILTER_SUMMARY_WORDS,
    PREFILTER_WORDS,
};
use xtrail_detect::trails::{iptable, IpTrails};

/// Map filling failures.
#[derive(Debug, thiserror::Error)]
pub enum FillError {
    #[error("the XDP object has no map named {0}")]
    MissingMap(&'static str),
    #[error("BPF_MAP_UPDATE_BATCH on {map} failed after {done} of {total} entries: {source}")]
    Batch {
        map: &'static str,
        done: usize,
        total: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("updating {map}: {source}")]
    Update {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// How many entries went into each map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FillReport {
    pub ipv4: usize,
    pub ipv6: usize,
    pub ipport: usize,
    pub cidr4: usize,
    pub cidr6: usize,
    /// /24 blocks marked in the prefilter (0 when the prefilter is disabled).
    pub prefilter_blocks: usize,
    /// Whether the IPv4 prefilter is usable (no CIDR shorter than /8).
    pub prefilter: bool,
    /// `log2` of the buckets of the set's IPv4 address table.
    pub v4_bits: u32,
    /// `log2` of the buckets of the set's IPv4 IP:port table.
    pub ipport4_bits: u32,
}

/// The map named `name` in the loaded object, of any kind the XDP program declares.
pub(crate) fn map_data<'a>(ebpf: &'a Ebpf, name: &str) -> Option<&'a MapData> {
    match ebpf.map(name)? {
        Map::HashMap(d)
        | Map::Array(d)
        | Map::LpmTrie(d)
        | Map::PerCpuArray(d)
        | Map::RingBuf(d)
        | Map::XskMap(d) => Some(d),
        _ => None,
    }
}

/// Map sizes for a trail set: every map needs at least one entry, and a little headroom.
pub fn max_entries(count: usize) -> u32 {
    u32::try_from(count + count / 16 + 16).unwrap_or(u32::MAX)
}

/// The IPv4 prefilter of a set: its non-zero words (index, bits), in index order, one bit
/// per /24 block (`a<<16 | b<<8 | c`) that an IPv4 trail covers, then (from index
/// `PREFILTER_WORDS`) the /16 summary, a bit per /16 holding such a block; and the number of
/// /24 blocks. None when a CIDR is too wide (shorter than /8) for the bitmap to be worth it.
/// Built in a 2 MiB bitmap (no sort of the ~300,000 keys of Maltrail's static tree).
pub fn prefilter_words(ip: &IpTrails) -> Option<(Vec<(u32, u64)>, usize)> {
    if ip.cidr4.iter().any(|(_, prefix, _)| *prefix < 8) {
        return None;
    }
    let block = |a: [u8; 4]| (u32::from(a[0]) << 16) | (u32::from(a[1]) << 8) | u32::from(a[2]);
    let mut bits = vec![0u64; PREFILTER_WORDS as usize];
    let mut set = |b: u32| {
        if let Some(w) = bits.get_mut((b >> 6) as usize) {
            *w |= 1 << (b & 63);
        }
    };
    // Straight from the tables' key words: no per-entry conversion.
    for (k, _) in ip.v4.table().iter().chain(ip.ipport.v4_table().iter()) {
        set(block(iptable::key_addr(k)));
    }
    for (addr, prefix, _) in &ip.cidr4 {
        let span = if *prefix >= 24 {
            1
        } else {
            1u32 << (24 - prefix)
        };
        let first = block(*addr) & !(span - 1);
        for b in first..first + span {
            set(b);
        }
    }
    // A /16 is 256 /24 bits: four words.
    let mut summary = vec![0u64; PREFILTER_SUMMARY_WORDS as usize];
    for (slash16, quad) in bits.chunks_exact(4).enumerate() {
        if quad.iter().any(|w| *w != 0) {
            if let Some(w) = summary.get_mut(slash16 >> 6) {
                *w |= 1 << (slash16 & 63);
            }
        }
    }
    let blocks = bits.iter().map(|w| w.count_ones() as usize).sum();
    let words = bits
        .iter()
        .chain(&summary)
        .enumerate()
        .filter(|(_, w)| **w != 0)
        .map(|(i, w)| (i as u32, *w))
        .collect();
    Some((words, blocks))
}

/// Sets one bit per port in the `HTTP_PORTS` bitmap.
pub fn fill_http_ports(ebpf: &mut Ebpf, ports: &[u16]) -> Result<(), FillError> {
    let mut words = vec![0u64; HTTP_PORT_WORDS as usize];
    for p in ports {
        words[usize::from(*p >> 6)] |= 1u64 << (p & 63);
    }
    let indexes: Vec<u32> = (0..HTTP_PORT_WORDS).collect();
    let fd = map_data(ebpf, names::HTTP_PORTS)
        .ok_or(FillError::MissingMap(names::HTTP_PORTS))?
        .fd()
        .as_fd()
        .as_raw_fd();
    crate::trail_maps::update_batch_fd(fd, &indexes, &words).map_err(|(done, source)| {
        FillError::Batch {
            map: names::HTTP_PORTS,
            done,
            total: indexes.len(),
            source,
        }
    })
}

/// Reads one value of an array map (used by tests and `stats`).
pub fn array_get(ebpf: &Ebpf, name: &'static str, index: u32) -> Result<u64, FillError> {
    let map = ebpf.map(name).ok_or(FillError::MissingMap(name))?;
    let array: Array<&MapData, u64> =
        Array::try_from(map).map_err(|source| FillError::Update { map: name, source })?;
    array
        .get(&index, 0)
        .map_err(|source| FillError::Update { map: name, source })
}

/// Reading and emptying the per-CPU flow-start batches failed.
#[derive(Debug, thiserror::Error)]
pub enum FlowBatchError {
    #[error("reading or emptying the flow-start batches: {0}")]
    Map(#[from] MapError),
    /// The emptied values are one per possible CPU, as read; aya checks that count against
    /// /sys/devices/system/cpu/possible again, which can only fail to be read here.
    #[error("building the emptied per-CPU flow-start batches (possible CPUs): {0}")]
    PerCpuValues(#[source] std::io::Error),
}

/// The flow starts the XDP program's per-CPU batches hold (`xtrail_common::FlowBatch`), CPU
/// by CPU, each batch emptied. Only while the program cannot run (after it is detached and
/// [`wait_for_running_programs`] returned, or between test runs): a run on a CPU meanwhile
/// would race the read and the emptying.
pub fn take_flow_batches(map: &mut Map) -> Result<Vec<FlowRecord>, FlowBatchError> {
    let mut array: PerCpuArray<&mut MapData, FlowBatch> = PerCpuArray::try_from(map)?;
    let values = array.get(&0, 0)?;
    let mut out = Vec::new();
    let mut emptied = Vec::with_capacity(values.len());
    for batch in values.iter() {
        out.extend_from_slice(&batch.records[..(batch.len as usize).min(FLOW_BATCH)]);
        emptied.push(FlowBatch { len: 0, ..*batch });
    }
    let emptied = PerCpuValues::try_from(emptied).map_err(FlowBatchError::PerCpuValues)?;
    array.set(0, emptied, 0)?;
    Ok(out)
}

/// `BPF_MAP_CREATE` command number and the map types used below.
const BPF_MAP_CREATE: u32 = 0;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

/// The leading fields of `union bpf_attr` for `BPF_MAP_CREATE` (the rest zero).
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    _rest: [u64; 12],
}

fn map_create(map_type: u32, inner_map_fd: u32) -> std::io::Result<std::os::fd::OwnedFd> {
    let mut attr = MapCreateAttr {
        map_type,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        inner_map_fd,
        ..MapCreateAttr::default()
    };
    // SAFETY: `attr` is a complete `bpf_attr` prefix for BPF_MAP_CREATE, without pointers.
    let fd = unsafe { xtrail_common::sys::bpf(BPF_MAP_CREATE, &mut attr) }?;
    // SAFETY: BPF_MAP_CREATE returned a new file descriptor this process owns.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd as RawFd) })
}

/// Waits until every BPF program run that started before the call has finished (an RCU
/// grace period): after detaching the XDP program, no instance still running on some CPU
/// can then write a ring or a map behind the reader's back. Updating an element of a
/// map-in-map makes the kernel call `synchronize_rcu()` before the syscall returns
/// (`maybe_wait_bpf_programs` in kernel/bpf/syscall.c), and an XDP run is an RCU read-side
/// section (it runs under `rcu_read_lock` in softirq context), so this is exact rather than
/// a guess at how long a run takes. Costs two tiny maps, created and closed here.
pub fn wait_for_running_programs() -> std::io::Result<()> {
    let inner = map_create(BPF_MAP_TYPE_ARRAY, 0)?;
    let outer = map_create(BPF_MAP_TYPE_ARRAY_OF_MAPS, inner.as_raw_fd() as u32)?;
    crate::trail_maps::update_elem_fd(outer.as_raw_fd(), &0u32, &(inner.as_raw_fd() as u32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use xtrail_detect::trails::{LoadOptions, TrailSet};

    /// The /16 summary after the /24 bitmap has a bit for exactly the /16s holding a /24 bit
    /// (addresses, IP:port and CIDR trails), so that it never hides a trail.
    #[test]
    fn the_summary_marks_exactly_the_slash16s_with_trails() {
        let path =
            std::env::temp_dir().join(format!("xtrail-prefilter-{}.csv", std::process::id()));
        let rows = "198.51.100.7,a,(static)\n192.0.2.5:8080,b,(static)\n10.1.0.0/15,c,(static)\n";
        std::fs::write(&path, rows).unwrap();
        let set = TrailSet::load(std::slice::from_ref(&path), &LoadOptions::default()).unwrap();
        let _ = std::fs::remove_file(&path);
        let (words, blocks) = prefilter_words(&set.ip).unwrap();
        // 1 + 1 + 512 /24s (a /15 is two /16s).
        assert_eq!(blocks, 514);
        let summary: Vec<u32> = words
            .iter()
            .filter(|(i, _)| *i >= PREFILTER_WORDS)
            .flat_map(|&(i, w)| {
                (0..64)
                    .filter(move |b| w >> b & 1 == 1)
                    .map(move |b| (i - PREFILTER_WORDS) * 64 + b)
            })
            .collect();
        let slash16 = |a: u32, b: u32| a << 8 | b;
        assert_eq!(
            summary,
            [
                slash16(10, 0),
                slash16(10, 1),
                slash16(192, 0),
                slash16(198, 51)
            ]
        );
        assert!(words
            .iter()
            .all(|(i, _)| *i < PREFILTER_WORDS + PREFILTER_SUMMARY_WORDS));
    }
}
