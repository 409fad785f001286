//! The XDP program's per-CPU counters, summed over CPUs.

use std::fmt;

use aya::maps::{MapData, PerCpuArray};
use xtrail_common::stat;

/// Counter totals, indexed like `xtrail_common::stat`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters(pub [u64; stat::COUNT as usize]);

impl Counters {
    /// Reads and sums the per-CPU values of the `STATS` map.
    pub fn read(map: &PerCpuArray<MapData, u64>) -> Result<Counters, aya::maps::MapError> {
        let mut out = [0u64; stat::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let values = map.get(&(i as u32), 0)?;
            *slot = values.iter().sum();
        }
        Ok(Counters(out))
    }

    /// The value of one counter.
    pub fn get(&self, index: u32) -> u64 {
        self.0.get(index as usize).copied().unwrap_or(0)
    }

    /// Name/value pairs, in counter order.
    pub fn pairs(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        stat::NAMES.iter().copied().zip(self.0.iter().copied())
    }

    /// The counters as a JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.pairs()
                .map(|(k, v)| (k.to_string(), serde_json::Value::from(v)))
                .collect(),
        )
    }
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (name, value) in self.pairs() {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            write!(f, "{name}={value}")?;
        }
        Ok(())
    }
}

/// Finds the `STATS` maps of running xtrail sensors among the kernel's loaded maps.
pub fn find_running() -> Vec<(u32, PerCpuArray<MapData, u64>)> {
    let mut found = Vec::new();
    for info in aya::maps::loaded_maps().flatten() {
        let is_stats = info.name_as_str() == Some(xtrail_common::maps::STATS)
            && info.max_entries() == stat::COUNT
            && info.value_size() == 8
            && info.key_size() == 4;
        if !is_stats {
            continue;
        }
        let Ok(data) = MapData::from_id(info.id()) else {
            continue;
        };
        if let Ok(array) = PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data)) {
            found.push((info.id(), array));
        }
    }
    found
}
