//! The XDP program's two trail sets and the switch between them (hot reload).
//!
//! Sets 0 and 1 share the trail maps: the set index is part of every hash and LPM key
//! (`xtrail_common::{TrailKey6, IpPortKey}`, the LPM keys), picks the half of the
//! prefilter bitmap, and the elements of the IPv4 tables' array maps (set `s`'s bucket `i`
//! is element `2i + s`, `xtrail_common::trail_table`). The IPv4 address and IP:port tables
//! are cuckoo tables built in userspace (`xtrail_detect::trails::iptable`, ready-made in a
//! compiled set): filling them is one batch of array writes straight from their buckets,
//! and their sizes ride in the `TRAIL_SET` value. A set's table buckets are never emptied:
//! a fill writes every one of the `2^bits` buckets its tables have (empty ones as zeros),
//! and lookups read only buckets below the `2^bits` of the selected set's `TRAIL_SET`
//! value, so buckets of a larger set before stay in the array unread (the arrays are
//! preallocated: zeroing them would free nothing). The program reads the one-element
//! `TRAIL_SET` array once per packet to pick a set (`xtrail_common::trail_set`). A reload
//! fills the inactive set while the active one keeps matching, switches with one 4-byte
//! write, waits until no packet can still be inside the old set (XDP runs under RCU and
//! lasts microseconds; the wait is [`GRACE`]), then deletes the old set's hash and LPM
//! entries in batches, so their memory is freed (those maps are not preallocated) and the
//! next fill of that set starts from none. No packet is ever matched against a half-filled
//! set.
//!
//! [`KernelTrailSets`] holds duplicates of the maps' descriptors, so a reload runs on a
//! thread of its own through the raw `bpf(2)` syscall while the live loop keeps the
//! [`aya::Ebpf`] object.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use aya::Ebpf;
use xtrail_common::{
    maps as names, trail_set, IpPortKey, Lpm4Key, Lpm6Key, TrailKey4, TrailKey6,
    PREFILTER_SET_WORDS,
};
use xtrail_detect::trails::iptable::{self, CuckooTable};
use xtrail_detect::trails::IpTrails;

use crate::maps::{prefilter_words, FillReport};

/// How long a switched-out set is kept before it is emptied: far longer than any one XDP
/// program run, which is what may still be looking at it.
pub const GRACE: Duration = Duration::from_millis(50);

const BPF_MAP_UPDATE_ELEM: u32 = 2;
const BPF_MAP_DELETE_ELEM: u32 = 3;
const BPF_MAP_GET_NEXT_KEY: u32 = 4;
const BPF_MAP_LOOKUP_BATCH: u32 = 24;
const BPF_MAP_UPDATE_BATCH: u32 = 26;
const BPF_MAP_DELETE_BATCH: u32 = 27;
/// Elements per batch syscall.
const BATCH: usize = 16_384;

/// Trail map failures.
#[derive(Debug, thiserror::Error)]
pub enum TrailMapError {
    #[error("the XDP object has no map named {0}")]
    MissingMap(&'static str),
    #[error("duplicating the descriptor of map {map}: {source}")]
    Dup {
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{op} on map {map} failed: {source}")]
    Syscall {
        op: &'static str,
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the new set has {count} {what} trails but the maps were sized for {capacity} at start; restart the sensor to load it"
    )]
    Capacity {
        what: &'static str,
        count: usize,
        capacity: u32,
    },
}

/// Map size for a kind of trail: both sets at once (during a reload), each of which may
/// grow by half (plus a margin) over the set the sensor started with and still be swapped in
/// without a restart. The hash maps are not preallocated, so the headroom costs only bucket
/// heads (16 bytes per slot).
pub fn reload_capacity(count: usize) -> u32 {
    u32::try_from(2 * (count + count / 2 + 1024)).unwrap_or(u32::MAX)
}

/// `log2` of the buckets per set of an IPv4 table map for a start table: room for the
/// [`reload_capacity`] headroom (half again, plus 1,024) at the tables' fill limit, and
/// never less than the table itself.
pub fn table_bits(table: &CuckooTable) -> u32 {
    let n = table.len();
    iptable::bits_for(n + n / 2 + 1024).max(table.bits())
}

/// Trails both sets of a table map with `2^bits` buckets per set hold (at the fill limit).
fn table_trails(bits: u32) -> u32 {
    let per_set = (iptable::BUCKET_SLOTS << bits) * iptable::MAX_LOAD_PERCENT / 100;
    u32::try_from(2 * per_set).unwrap_or(u32::MAX)
}

/// The size of each trail map (room for both sets).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capacity {
    /// IPv4 address trails both sets hold (the table map has `2^v4_bits` buckets per set).
    pub ipv4: u32,
    /// `log2` of the IPv4 address table map's buckets per set.
    pub v4_bits: u32,
    pub ipv6: u32,
    /// IPv4 IP:port trails both sets hold (`2^ipport4_bits` buckets per set).
    pub ipport4: u32,
    /// `log2` of the IPv4 IP:port table map's buckets per set.
    pub ipport4_bits: u32,
    /// IPv6 IP:port trails (a hash map).
    pub ipport: u32,
    pub cidr4: u32,
    pub cidr6: u32,
}

impl Capacity {
    /// The capacity [`reload_capacity`] and [`table_bits`] give a start set.
    pub fn for_set(ip: &IpTrails) -> Capacity {
        let v4_bits = table_bits(ip.v4.table());
        let ipport4_bits = table_bits(ip.ipport.v4_table());
        Capacity {
            ipv4: table_trails(v4_bits),
            v4_bits,
            ipv6: reload_capacity(ip.v6.len()),
            ipport4: table_trails(ipport4_bits),
            ipport4_bits,
            ipport: reload_capacity(ip.ipport.v6().len()),
            cidr4: reload_capacity(ip.cidr4.len()),
            cidr6: reload_capacity(ip.cidr6.len()),
        }
    }

    /// `max_entries` of the IPv4 address table map (both sets).
    pub fn v4_elements(&self) -> u32 {
        2 << self.v4_bits
    }

    /// `max_entries` of the IPv4 IP:port table map (both sets).
    pub fn ipport4_elements(&self) -> u32 {
        2 << self.ipport4_bits
    }

    /// Refuses a set that does not fit beside another as large (a table larger than the
    /// map's half counts as too many trails).
    pub fn check(&self, ip: &IpTrails) -> Result<(), TrailMapError> {
        let table = |what, t: &CuckooTable, bits: u32, capacity: u32| {
            if t.bits() > bits {
                Err(TrailMapError::Capacity {
                    what,
                    count: t.len(),
                    capacity: capacity / 2,
                })
            } else {
                Ok(())
            }
        };
        table("IPv4", ip.v4.table(), self.v4_bits, self.ipv4)?;
        table(
            "IPv4 IP:port",
            ip.ipport.v4_table(),
            self.ipport4_bits,
            self.ipport4,
        )?;
        let fits = |what, count: usize, capacity: u32| {
            let capacity = capacity / 2;
            if count > capacity as usize {
                Err(TrailMapError::Capacity {
                    what,
                    count,
                    capacity,
                })
            } else {
                Ok(())
            }
        };
        fits("IPv4", ip.v4.len(), self.ipv4)?;
        fits("IPv6", ip.v6.len(), self.ipv6)?;
        fits("IPv4 IP:port", ip.ipport.v4_table().len(), self.ipport4)?;
        fits("IPv6 IP:port", ip.ipport.v6().len(), self.ipport)?;
        fits("IPv4 CIDR", ip.cidr4.len(), self.cidr4)?;
        fits("IPv6 CIDR", ip.cidr6.len(), self.cidr6)
    }
}

/// One map: its name (for errors), descriptor and key size.
#[derive(Debug)]
struct MapFd {
    name: &'static str,
    fd: OwnedFd,
    key_size: usize,
}

impl MapFd {
    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// The trail maps (both sets live in each).
#[derive(Debug)]
struct TrailFds {
    v4_table: MapFd,
    ipport4_table: MapFd,
    ipv6: MapFd,
    ipport: MapFd,
    cidr4: MapFd,
    cidr6: MapFd,
    prefilter: MapFd,
}

fn dup(ebpf: &Ebpf, name: &'static str, key_size: usize) -> Result<MapFd, TrailMapError> {
    let fd = crate::maps::map_data(ebpf, name)
        .ok_or(TrailMapError::MissingMap(name))?
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| TrailMapError::Dup { map: name, source })?;
    Ok(MapFd { name, fd, key_size })
}

impl TrailFds {
    fn of(ebpf: &Ebpf) -> Result<TrailFds, TrailMapError> {
        use std::mem::size_of;
        Ok(TrailFds {
            v4_table: dup(ebpf, names::IPV4_TABLE, 4)?,
            ipport4_table: dup(ebpf, names::IPPORT4_TABLE, 4)?,
            ipv6: dup(ebpf, names::IPV6_TRAILS, size_of::<TrailKey6>())?,
            ipport: dup(ebpf, names::IPPORT_TRAILS, size_of::<IpPortKey>())?,
            cidr4: dup(ebpf, names::IPV4_CIDRS, size_of::<Lpm4Key>())?,
            cidr6: dup(ebpf, names::IPV6_CIDRS, size_of::<Lpm6Key>())?,
            prefilter: dup(ebpf, names::IPV4_PREFILTER, 4)?,
        })
    }
}

#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn syscall_err(op: &'static str, map: &MapFd) -> impl FnOnce(std::io::Error) -> TrailMapError {
    let name = map.name;
    move |source| TrailMapError::Syscall {
        op,
        map: name,
        source,
    }
}

/// Writes `keys[i] -> values[i]` in batches.
fn update_batch<K, V>(map: &MapFd, keys: &[K], values: &[V]) -> Result<(), TrailMapError> {
    update_batch_fd(map.raw(), keys, values)
        .map_err(|(_, e)| syscall_err("BPF_MAP_UPDATE_BATCH", map)(e))
}

/// `BPF_MAP_UPDATE_BATCH` of `keys[i] -> values[i]` on the map behind `fd`, in batches; on
/// failure, how many entries went in before it and the error.
pub(crate) fn update_batch_fd<K, V>(
    fd: RawFd,
    keys: &[K],
    values: &[V],
) -> Result<(), (usize, std::io::Error)> {
    debug_assert_eq!(keys.len(), values.len());
    let len = keys.len().min(values.len());
    let mut done = 0;
    while done < len {
        let n = BATCH.min(len - done);
        let mut attr = BatchAttr {
            in_batch: 0,
            out_batch: 0,
            keys: keys[done..].as_ptr() as u64,
            values: values[done..].as_ptr() as u64,
            count: n as u32,
            map_fd: fd as u32,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: `keys` and `values` hold `n` more entries past `done`; the kernel only
        // reads them, `n` times the map's key and value sizes (callers pass the map's own key
        // and value types).
        unsafe { xtrail_common::sys::bpf(BPF_MAP_UPDATE_BATCH, &mut attr) }
            .map_err(|e| (done + attr.count as usize, e))?;
        done += n;
    }
    Ok(())
}

fn update_elem<K, V>(map: &MapFd, key: &K, value: &V) -> Result<(), TrailMapError> {
    update_elem_fd(map.raw(), key, value).map_err(syscall_err("BPF_MAP_UPDATE_ELEM", map))
}

/// `BPF_MAP_UPDATE_ELEM` of `key -> value` on the map behind `fd`.
pub(crate) fn update_elem_fd<K, V>(fd: RawFd, key: &K, value: &V) -> std::io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: fd as u32,
        _pad: 0,
        key: key as *const K as u64,
        value: value as *const V as u64,
        flags: 0,
    };
    // SAFETY: the kernel only reads the key and the value (the map's key and value sizes;
    // callers pass the map's own key and value types), which outlive the call.
    unsafe { xtrail_common::sys::bpf(BPF_MAP_UPDATE_ELEM, &mut attr) }.map(drop)
}

/// Whether a batch call failed because the map type has no batch operations.
fn no_batch(e: &std::io::Error) -> bool {
    // 524: the kernel's ENOTSUPP (not in libc).
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | 524 | libc::EOPNOTSUPP)
    )
}

/// Writes LPM trie entries: one batch where the kernel supports batches on tries, else one
/// by one.
fn update_lpm<K: Copy>(map: &MapFd, entries: &[(K, u32)]) -> Result<(), TrailMapError> {
    let keys: Vec<K> = entries.iter().map(|e| e.0).collect();
    let values: Vec<u32> = entries.iter().map(|e| e.1).collect();
    match update_batch(map, &keys, &values) {
        Ok(()) => Ok(()),
        Err(TrailMapError::Syscall { source, .. }) if no_batch(&source) => {
            for (k, v) in entries {
                update_elem(map, k, v)?;
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Every key of a map, back to back: in batches (`BPF_MAP_LOOKUP_BATCH`) where the kernel
/// has them for the map type, else one `BPF_MAP_GET_NEXT_KEY` per key. The trail hash and
/// LPM maps' values are `u32` labels.
fn all_keys(map: &MapFd) -> Result<Vec<u8>, TrailMapError> {
    let size = map.key_size;
    let mut keys: Vec<u8> = Vec::new();
    let mut batch = vec![0u8; size * BATCH];
    let mut values = vec![0u32; BATCH];
    // The resume token: a bucket index for hash maps, a key for the generic (LPM) walk.
    let mut token = [[0u8; 64]; 2];
    let mut first = true;
    loop {
        let [from, to] = &mut token;
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { from.as_ptr() as u64 },
            out_batch: to.as_mut_ptr() as u64,
            keys: batch.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH as u32,
            map_fd: map.raw() as u32,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: the kernel writes at most `count` keys of `map.key_size` bytes into `batch`
        // and as many values into `values` (the `u32` labels of the maps this walks), and a
        // resume token into `to` (a bucket index or, for the generic walk, a key: at most 64
        // bytes, the largest key here being 36).
        let done = match unsafe { xtrail_common::sys::bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) } {
            Ok(_) => false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Err(e) if first && no_batch(&e) => return all_keys_one_by_one(map),
            Err(e) => return Err(syscall_err("BPF_MAP_LOOKUP_BATCH", map)(e)),
        };
        let n = (attr.count as usize).min(BATCH);
        keys.extend_from_slice(&batch[..n * size]);
        if done {
            return Ok(keys);
        }
        token.swap(0, 1);
        first = false;
    }
}

fn all_keys_one_by_one(map: &MapFd) -> Result<Vec<u8>, TrailMapError> {
    let size = map.key_size;
    let mut keys: Vec<u8> = Vec::new();
    let mut next = vec![0u8; size];
    loop {
        let prev = keys.len().checked_sub(size).map(|o| keys[o..].as_ptr());
        let mut attr = ElemAttr {
            map_fd: map.raw() as u32,
            _pad: 0,
            key: prev.map_or(0, |p| p as u64),
            value: next.as_mut_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the previous key (if any) and the room for the next are key-sized.
        match unsafe { xtrail_common::sys::bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) } {
            Ok(_) => keys.extend_from_slice(&next),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(keys),
            Err(e) => return Err(syscall_err("BPF_MAP_GET_NEXT_KEY", map)(e)),
        }
    }
}

/// Deletes `keys` (whole keys of the map's key size, back to back, all present) in
/// batches; one by one where the kernel has no batch delete for the map type.
fn delete_keys(map: &MapFd, keys: &[u8]) -> Result<usize, TrailMapError> {
    let size = map.key_size;
    let n = keys.len() / size;
    for (i, chunk) in keys[..n * size].chunks(BATCH * size).enumerate() {
        let mut attr = BatchAttr {
            in_batch: 0,
            out_batch: 0,
            keys: chunk.as_ptr() as u64,
            values: 0,
            count: (chunk.len() / size) as u32,
            map_fd: map.raw() as u32,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: `chunk` holds `count` whole keys.
        match unsafe { xtrail_common::sys::bpf(BPF_MAP_DELETE_BATCH, &mut attr) } {
            Ok(_) => {}
            Err(e) if i == 0 && no_batch(&e) => {
                for key in keys[..n * size].chunks(size) {
                    delete_elem(map, key)?;
                }
                return Ok(n);
            }
            Err(e) => return Err(syscall_err("BPF_MAP_DELETE_BATCH", map)(e)),
        }
    }
    Ok(n)
}

/// Deletes typed keys (`K` is the map's key type).
fn delete_typed<K: Copy>(map: &MapFd, keys: &[K]) -> Result<usize, TrailMapError> {
    debug_assert_eq!(std::mem::size_of::<K>(), map.key_size);
    // SAFETY: the key types are `repr(C)` plain data without padding bytes
    // (`xtrail_common`'s map keys), so their memory is `size_of_val(keys)` initialised bytes.
    let bytes = unsafe {
        std::slice::from_raw_parts(keys.as_ptr().cast::<u8>(), std::mem::size_of_val(keys))
    };
    delete_keys(map, bytes)
}

/// `key`: `map.key_size` bytes.
fn delete_elem(map: &MapFd, key: &[u8]) -> Result<(), TrailMapError> {
    debug_assert_eq!(key.len(), map.key_size);
    let mut attr = ElemAttr {
        map_fd: map.raw() as u32,
        _pad: 0,
        key: key.as_ptr() as u64,
        value: 0,
        flags: 0,
    };
    // SAFETY: the kernel only reads the key, `map.key_size` bytes: `key` is one of
    // `delete_keys`' chunks of exactly that size.
    unsafe { xtrail_common::sys::bpf(BPF_MAP_DELETE_ELEM, &mut attr) }
        .map(drop)
        .map_err(syscall_err("BPF_MAP_DELETE_ELEM", map))
}

/// Deletes the keys `of_set` picks, in batches; returns how many.
fn delete_where(map: &MapFd, of_set: impl Fn(&[u8]) -> bool) -> Result<usize, TrailMapError> {
    let size = map.key_size;
    let keys: Vec<u8> = all_keys(map)?
        .chunks(size)
        .filter(|k| of_set(k))
        .flatten()
        .copied()
        .collect();
    delete_keys(map, &keys)
}

/// Writes `(key, value)` pairs made by `make` from `items` in batches, building at most one
/// batch of keys and values at a time (a whole set's keys at once would add its size to
/// the peak RSS).
fn update_chunked<T, K: Copy, V: Copy>(
    map: &MapFd,
    items: impl Iterator<Item = T>,
    make: impl Fn(T) -> (K, V),
) -> Result<(), TrailMapError> {
    let mut keys: Vec<K> = Vec::with_capacity(BATCH);
    let mut values: Vec<V> = Vec::with_capacity(BATCH);
    for item in items {
        let (k, v) = make(item);
        keys.push(k);
        values.push(v);
        if keys.len() == BATCH {
            update_batch(map, &keys, &values)?;
            keys.clear();
            values.clear();
        }
    }
    update_batch(map, &keys, &values)
}

/// What a half of the prefilter bitmap holds, as far as this process knows.
#[derive(Clone, Debug, Default)]
pub enum PrefilterHalf {
    /// Unknown: the next fill rewrites every word of it.
    #[default]
    Unknown,
    /// All zero (a freshly loaded program).
    Zero,
    /// Zero except at these word indexes (relative to the half).
    Words(Vec<u32>),
}

/// Writes set `index`'s half of a table map: every bucket of `table` (from wherever its
/// buckets are: a compiled set's mapping needs no copy), in batches.
fn fill_table(map: &MapFd, index: u8, table: &CuckooTable) -> Result<(), TrailMapError> {
    let buckets = table.buckets();
    let set = u32::from(index & 1);
    let mut keys: Vec<u32> = Vec::with_capacity(BATCH.min(buckets.len()));
    for (n, chunk) in buckets.chunks(BATCH).enumerate() {
        let first = (n * BATCH) as u32;
        keys.clear();
        keys.extend((0..chunk.len() as u32).map(|i| ((first + i) << 1) | set));
        update_batch(map, &keys, chunk)?;
    }
    Ok(())
}

/// Fills set `index` (empty) from `ip`; returns what went in, the set's `TRAIL_SET` flags
/// and what its prefilter half now holds. `half` is what that half held before: only the
/// words that change are written (the whole half, 262,144 single-element updates and
/// 80 ms, only when it is unknown). The IPv4 IP:port table, the largest of Maltrail's
/// static tree, goes in on a second thread beside the others.
fn fill_set(
    maps: &TrailFds,
    index: u8,
    ip: &IpTrails,
    half: &PrefilterHalf,
) -> Result<(FillReport, u32, PrefilterHalf), TrailMapError> {
    let set = u32::from(index & 1);
    // The prefilter first, while a compiled set's table pages are resident from opening it.
    let prefilter = prefilter_words(ip);
    let rest = || -> Result<(FillReport, PrefilterHalf), TrailMapError> {
        fill_table(&maps.v4_table, index, ip.v4.table())?;
        update_chunked(&maps.ipv6, ip.v6.iter(), |(addr, v)| {
            (TrailKey6 { set, addr: *addr }, *v)
        })?;
        update_chunked(&maps.ipport, ip.ipport.v6().iter(), |((addr, port), v)| {
            (
                IpPortKey {
                    addr: *addr,
                    port: *port,
                    set: index & 1,
                    _pad: 0,
                },
                *v,
            )
        })?;
        // LPM prefixes count the 32 bits of the set index in front of the address.
        let cidr4: Vec<(Lpm4Key, u32)> = ip
            .cidr4
            .iter()
            .map(|(addr, prefix, label)| {
                let data = TrailKey4 { set, addr: *addr };
                let prefix_len = 32 + u32::from(*prefix);
                (Lpm4Key { prefix_len, data }, *label)
            })
            .collect();
        update_lpm(&maps.cidr4, &cidr4)?;
        let cidr6: Vec<(Lpm6Key, u32)> = ip
            .cidr6
            .iter()
            .map(|(addr, prefix, label)| {
                let data = TrailKey6 { set, addr: *addr };
                let prefix_len = 32 + u32::from(*prefix);
                (Lpm6Key { prefix_len, data }, *label)
            })
            .collect();
        update_lpm(&maps.cidr6, &cidr6)?;
        let mut report = FillReport {
            ipv4: ip.v4.len(),
            ipv6: ip.v6.len(),
            ipport: ip.ipport.len(),
            cidr4: ip.cidr4.len(),
            cidr6: ip.cidr6.len(),
            v4_bits: ip.v4.table().bits(),
            ipport4_bits: ip.ipport.v4_table().bits(),
            ..FillReport::default()
        };
        let words = match prefilter {
            Some((words, blocks)) => {
                report.prefilter_blocks = blocks;
                report.prefilter = true;
                words
            }
            None => Vec::new(),
        };
        let base = set * PREFILTER_SET_WORDS;
        // Every word of the half that must change: the old set's words (zeroed unless the
        // new set sets them) and the new set's.
        let (indexes, values): (Vec<u32>, Vec<u64>) = match half {
            PrefilterHalf::Unknown => {
                let mut all = vec![0u64; PREFILTER_SET_WORDS as usize];
                for (i, bits) in &words {
                    all[*i as usize] = *bits;
                }
                ((base..base + PREFILTER_SET_WORDS).collect(), all)
            }
            PrefilterHalf::Zero | PrefilterHalf::Words(_) => {
                let old: &[u32] = match half {
                    PrefilterHalf::Words(w) => w,
                    _ => &[],
                };
                let mut change: Vec<(u32, u64)> = old
                    .iter()
                    .filter(|i| words.binary_search_by_key(*i, |w| w.0).is_err())
                    .map(|i| (*i, 0))
                    .chain(words.iter().copied())
                    .collect();
                change.sort_unstable_by_key(|w| w.0);
                change.into_iter().map(|(i, bits)| (base + i, bits)).unzip()
            }
        };
        update_batch(&maps.prefilter, &indexes, &values)?;
        Ok((
            report,
            PrefilterHalf::Words(words.into_iter().map(|w| w.0).collect()),
        ))
    };
    let (ports, rest) = std::thread::scope(|s| {
        let ports = s.spawn(|| fill_table(&maps.ipport4_table, index, ip.ipport.v4_table()));
        let rest = rest();
        (ports.join(), rest)
    });
    // A compiled set's buckets were read through its mapping: drop those pages from the
    // resident set (lookups fault back in the few they touch).
    ip.v4.table().release_pages();
    ip.ipport.v4_table().release_pages();
    ports.unwrap_or_else(|p| std::panic::resume_unwind(p))?;
    let (report, half) = rest?;
    let flags = report.set_flags();
    Ok((report, flags, half))
}

impl FillReport {
    /// The `config_flags` bits that describe this set (the `TRAIL_SET` flags).
    pub fn set_flags(&self) -> u32 {
        use xtrail_common::config_flags as f;
        let mut flags = 0;
        if self.cidr4 > 0 {
            flags |= f::HAVE_CIDR4;
        }
        if self.cidr6 > 0 {
            flags |= f::HAVE_CIDR6;
        }
        if self.ipport > 0 {
            flags |= f::HAVE_IPPORT;
        }
        if self.ipv6 > 0 {
            flags |= f::HAVE_IPV6;
        }
        if self.prefilter {
            flags |= f::PREFILTER4;
        }
        flags | trail_set::table_bits(self.v4_bits, self.ipport4_bits)
    }
}

/// Both trail map sets of a loaded program and its `TRAIL_SET` selector.
#[derive(Debug)]
pub struct KernelTrailSets {
    maps: TrailFds,
    selector: MapFd,
    active: u8,
    /// The `TRAIL_SET` value last written (as far as this handle knows).
    selected: u32,
    capacity: Capacity,
    /// What each half of the prefilter bitmap holds.
    prefilter: [PrefilterHalf; 2],
    /// Per half: it may hold hash and LPM entries (a fill, even a failed one, since the last
    /// successful emptying); the next fill of such a half empties it first.
    filled: std::cell::Cell<[bool; 2]>,
}

impl KernelTrailSets {
    /// The sets of a loaded program whose `TRAIL_SET` value is `selected` (0 for a fresh
    /// program: set 0, epoch 0) and whose maps were sized with `capacity`.
    pub fn of(ebpf: &Ebpf, selected: u32, capacity: Capacity) -> Result<Self, TrailMapError> {
        Ok(KernelTrailSets {
            maps: TrailFds::of(ebpf)?,
            selector: dup(ebpf, names::TRAIL_SET, 4)?,
            active: (selected & trail_set::INDEX) as u8,
            selected,
            capacity,
            prefilter: Default::default(),
            filled: Default::default(),
        })
    }

    /// Says what the prefilter halves hold (a freshly created map: both
    /// [`PrefilterHalf::Zero`]), so that fills write only the words that change.
    pub fn with_prefilter(mut self, halves: [PrefilterHalf; 2]) -> Self {
        self.prefilter = halves;
        self
    }

    /// What the prefilter halves hold, as far as this handle knows.
    pub fn prefilter(&self) -> &[PrefilterHalf; 2] {
        &self.prefilter
    }

    /// The set packets are matched against now.
    pub fn active(&self) -> u8 {
        self.active
    }

    /// The maps' capacity.
    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    /// Fills set `index` (inactive; its table buckets may hold anything) without switching
    /// to it. Hash and LPM entries a former fill left there (its emptying failed or never
    /// ran) are deleted first. The start fill of a freshly loaded program is `fill(0, ..)`
    /// then `select(0, ..)`.
    pub fn fill(&mut self, index: u8, ip: &IpTrails) -> Result<(FillReport, u32), TrailMapError> {
        self.capacity.check(ip)?;
        let half = usize::from(index & 1);
        if self.filled.get()[half] {
            self.clear(index)?;
        }
        self.set_filled(index, true);
        // Unknown until the fill succeeds (a failed one leaves some words written).
        let before = std::mem::take(&mut self.prefilter[half]);
        let (report, flags, after) = fill_set(&self.maps, index, ip, &before)?;
        self.prefilter[half] = after;
        Ok((report, flags))
    }

    fn set_filled(&self, index: u8, filled: bool) {
        let mut f = self.filled.get();
        f[usize::from(index & 1)] = filled;
        self.filled.set(f);
    }

    /// Makes set `index` (filled, with `flags`) the one every following packet uses, at the
    /// next epoch.
    pub fn select(&mut self, index: u8, flags: u32) -> Result<(), TrailMapError> {
        let epoch = trail_set::epoch(self.selected).wrapping_add(1);
        let value = trail_set::value(index, epoch, flags);
        update_elem(&self.selector, &0u32, &value)?;
        self.active = index & 1;
        self.selected = value;
        Ok(())
    }

    /// The `TRAIL_SET` value last written.
    pub fn selected(&self) -> u32 {
        self.selected
    }

    /// Deletes the hash and LPM entries of set `index` (inactive), which was filled from
    /// `ip`: by their keys, in batches; if that fails (the maps do not hold what `ip` says),
    /// by walking the maps ([`KernelTrailSets::clear`]). Returns how many entries went. The
    /// IPv4 tables' buckets are left as they are (see the module doc).
    pub fn clear_filled(&self, index: u8, ip: &IpTrails) -> Result<usize, TrailMapError> {
        match self.delete_known(index, ip) {
            Ok(n) => {
                self.set_filled(index, false);
                Ok(n)
            }
            Err(e) => {
                log::warn!("emptying trail set {index} by its keys: {e}; walking the maps");
                self.clear(index)
            }
        }
    }

    fn delete_known(&self, index: u8, ip: &IpTrails) -> Result<usize, TrailMapError> {
        let set = u32::from(index & 1);
        let m = &self.maps;
        let v6: Vec<TrailKey6> = ip
            .v6
            .keys()
            .map(|addr| TrailKey6 { set, addr: *addr })
            .collect();
        let mut n = delete_typed(&m.ipv6, &v6)?;
        drop(v6);
        let ipport: Vec<IpPortKey> = ip
            .ipport
            .v6()
            .keys()
            .map(|(addr, port)| IpPortKey {
                addr: *addr,
                port: *port,
                set: index & 1,
                _pad: 0,
            })
            .collect();
        n += delete_typed(&m.ipport, &ipport)?;
        drop(ipport);
        let cidr4: Vec<Lpm4Key> = ip
            .cidr4
            .iter()
            .map(|(addr, prefix, _)| Lpm4Key {
                prefix_len: 32 + u32::from(*prefix),
                data: TrailKey4 { set, addr: *addr },
            })
            .collect();
        n += delete_typed(&m.cidr4, &cidr4)?;
        drop(cidr4);
        let cidr6: Vec<Lpm6Key> = ip
            .cidr6
            .iter()
            .map(|(addr, prefix, _)| Lpm6Key {
                prefix_len: 32 + u32::from(*prefix),
                data: TrailKey6 { set, addr: *addr },
            })
            .collect();
        n += delete_typed(&m.cidr6, &cidr6)?;
        Ok(n)
    }

    /// Deletes the hash and LPM entries of set `index` (inactive) whatever they are, by
    /// walking the maps in batches; returns how many. The IPv4 tables' buckets are left as
    /// they are: the next fill of the set writes every bucket its size covers.
    pub fn clear(&self, index: u8) -> Result<usize, TrailMapError> {
        let set = u32::from(index & 1);
        let m = &self.maps;
        // Key layouts: `TrailKey*` and the LPM data start with the set as a native u32 (the
        // LPM key after its prefix length); `IpPortKey` has it as byte 18.
        let u32_at = |k: &[u8], o: usize| {
            k.get(o..o + 4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_ne_bytes)
        };
        let ipport_set = std::mem::offset_of!(IpPortKey, set);
        let n = delete_where(&m.ipv6, |k| u32_at(k, 0) == Some(set))?
            + delete_where(&m.ipport, |k| k.get(ipport_set).copied() == Some(set as u8))?
            + delete_where(&m.cidr4, |k| u32_at(k, 4) == Some(set))?
            + delete_where(&m.cidr6, |k| u32_at(k, 4) == Some(set))?;
        self.set_filled(index, false);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xtrail_common::trail_table;

    /// The XDP program's table constants are the builder's.
    #[test]
    fn kernel_and_builder_tables_agree() {
        assert_eq!(trail_table::HASH, iptable::HASH);
        assert_eq!(trail_table::SLOTS, iptable::BUCKET_SLOTS);
        assert_eq!(trail_table::KIND_IP, iptable::KIND_IP);
        assert_eq!(trail_table::KIND_PORT, iptable::KIND_PORT);
        const { assert!(iptable::MAX_BITS <= trail_set::BITS_MASK) };
        for (i, addr) in [[6u8, 6, 6, 7], [198, 19, 0, 1], [255, 0, 0, 9]]
            .iter()
            .enumerate()
        {
            let native = u32::from_ne_bytes(*addr);
            let port = 8443 + i as u16;
            assert_eq!(trail_table::v4_key(native), iptable::v4_key(*addr));
            assert_eq!(
                trail_table::ipport_key(native, port),
                iptable::ipport_key(*addr, port)
            );
            for bits in [1, 13, 17, 30] {
                let k = iptable::ipport_key(*addr, port);
                for which in 0..2 {
                    assert_eq!(
                        trail_table::bucket(k, bits, which) as usize,
                        iptable::bucket(k, bits, which)
                    );
                }
            }
        }
    }

    #[test]
    fn capacity_refuses_tables_larger_than_a_half() {
        let mut start = IpTrails::default();
        start.v4.insert([198, 19, 1, 1], 1);
        let cap = Capacity::for_set(&start);
        assert_eq!(cap.v4_elements(), 2 << cap.v4_bits);
        assert!(cap.check(&start).is_ok());
        let mut big = IpTrails::default();
        for i in 0..=cap.ipv4 / 2 {
            big.v4.insert(i.to_be_bytes(), 1);
        }
        assert!(matches!(
            cap.check(&big),
            Err(TrailMapError::Capacity { what: "IPv4", .. })
        ));
        let flags = FillReport {
            v4_bits: 13,
            ipport4_bits: 17,
            ..FillReport::default()
        }
        .set_flags();
        let v = trail_set::value(1, 0xa5, flags);
        assert_eq!((v >> trail_set::V4_BITS_SHIFT) & trail_set::BITS_MASK, 13);
        assert_eq!((v >> trail_set::PORT_BITS_SHIFT) & trail_set::BITS_MASK, 17);
        assert_eq!(v & trail_set::INDEX, 1);
        assert_eq!(trail_set::epoch(v), 0xa5);
        // The epoch takes none of the flags' bits.
        assert_eq!(
            v & !(0xff << trail_set::EPOCH_SHIFT),
            trail_set::value(1, 0, flags)
        );
        assert_eq!(flags & (0xff << trail_set::EPOCH_SHIFT), 0);
    }
}
