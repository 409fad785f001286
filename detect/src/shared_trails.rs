//! The trail set in use, swappable while packets flow (hot reload).
//!
//! A [`SharedTrails`] holds the current [`VersionedTrails`] behind an `ArcSwap`: a reload
//! builds the new set beside the old one and [`SharedTrails::store`]s it with one atomic
//! pointer swap. A [`crate::pipeline::Detector`] that [follows](crate::pipeline::Detector::follow)
//! it checks the version counter (one atomic load) before each packet, so every packet is
//! matched against one whole set, the old or the new, never a mix. The old set is freed
//! when its last user drops it: at most two sets are alive at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::trails::TrailSet;

/// A trail set and the version it is known by (events carry it).
#[derive(Debug)]
pub struct VersionedTrails {
    /// The set's name: a compiled set's version (`20261201T120000Z-1a2b3c4d5e6f`), or for
    /// text sources `files-<newest modification time, Unix µs>`.
    pub version: String,
    /// The tables.
    pub trails: Arc<TrailSet>,
}

impl VersionedTrails {
    /// A set and its version.
    pub fn new(version: impl Into<String>, trails: Arc<TrailSet>) -> Self {
        VersionedTrails {
            version: version.into(),
            trails,
        }
    }
}

/// The current trail set, shared between the reloader and the detector.
#[derive(Clone, Debug)]
pub struct SharedTrails {
    current: Arc<ArcSwap<VersionedTrails>>,
    /// Bumped by every [`SharedTrails::store`].
    generation: Arc<AtomicU64>,
}

impl SharedTrails {
    /// Starts with `first` (shared, not copied: the kernel hit labels may hold it too).
    pub fn new(first: Arc<VersionedTrails>) -> Self {
        SharedTrails {
            current: Arc::new(ArcSwap::new(first)),
            generation: Arc::new(AtomicU64::new(1)),
        }
    }

    /// The current set.
    pub fn load(&self) -> Arc<VersionedTrails> {
        self.current.load_full()
    }

    /// Counts the sets stored so far (one atomic load: cheap enough for every packet). The
    /// set is stored before the count moves, so a reader that sees a new count loads the
    /// new set.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Installs `next`; returns the set it replaces.
    pub fn store(&self, next: Arc<VersionedTrails>) -> Arc<VersionedTrails> {
        let previous = self.current.swap(next);
        self.generation.fetch_add(1, Ordering::AcqRel);
        previous
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_swaps_the_set_and_its_version() {
        let shared = SharedTrails::new(Arc::new(VersionedTrails::new("a", Arc::default())));
        let follower = shared.clone();
        let g = follower.generation();
        let old = shared.store(Arc::new(VersionedTrails::new("b", Arc::default())));
        assert_eq!(old.version, "a");
        assert!(follower.generation() > g);
        assert_eq!(follower.load().version, "b");
    }
}
