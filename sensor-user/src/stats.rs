//! The XDP program's per-CPU counters, summed over CPUs.

use std::fmt;

use aya::maps::{MapData, PerCpuArray};
use xtrail_common::{stat, PerCpuStats};

/// Counter totals, indexed like `xtrail_common::stat`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters(pub [u64; stat::COUNT as usize]);

impl Counters {
    /// Reads and sums the per-CPU values of the `STATS` map.
    pub fn read<T: std::borrow::Borrow<MapData>>(
        map: &PerCpuArray<T, PerCpuStats>,
    ) -> Result<Counters, aya::maps::MapError> {
        Ok(Counters::sum(map.get(&0, 0)?.iter()))
    }

    /// The sums over CPUs of their counters.
    fn sum<'a>(cpus: impl Iterator<Item = &'a PerCpuStats>) -> Counters {
        let mut out = [0u64; stat::COUNT as usize];
        for cpu in cpus {
            for (slot, v) in out.iter_mut().zip(cpu.counters.iter()) {
                // Wrapping, as the program adds (it takes `flow_starts` back out with a
                // negative count when a batch is refused).
                *slot = slot.wrapping_add(*v);
            }
        }
        Counters(out)
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
pub fn find_running() -> Vec<(u32, PerCpuArray<MapData, PerCpuStats>)> {
    let mut found = Vec::new();
    for info in aya::maps::loaded_maps().flatten() {
        let is_stats = info.name_as_str() == Some(xtrail_common::maps::STATS)
            && info.max_entries() == 1
            && info.value_size() as usize == std::mem::size_of::<PerCpuStats>()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_each_counter_over_cpus() {
        let mut a = PerCpuStats {
            counters: [0; stat::COUNT as usize],
        };
        let mut b = a;
        a.counters[stat::PACKETS as usize] = 3;
        b.counters[stat::PACKETS as usize] = 4;
        // A counter that wrapped below zero on one CPU (the program adds with wrapping) still
        // sums right.
        a.counters[stat::FLOW_STARTS as usize] = 16;
        b.counters[stat::FLOW_STARTS as usize] = 5u64.wrapping_neg();
        let c = Counters::sum([a, b].iter());
        assert_eq!(c.get(stat::PACKETS), 7);
        assert_eq!(c.get(stat::FLOW_STARTS), 11);
        assert_eq!(c.get(stat::BYTES), 0);
        // Each counter under its own name, in the stats line as in the JSON.
        let names: std::collections::HashSet<_> = c.pairs().map(|(name, _)| name).collect();
        assert_eq!(names.len(), stat::COUNT as usize);
        let packets = stat::NAMES[stat::PACKETS as usize];
        assert!(c.to_string().contains(&format!("{packets}=7")));
        assert_eq!(c.to_json()[packets], 7);
    }
}
