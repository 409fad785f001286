//! The detector as the live sensor runs it over the full static tree, for the benches and
//! profiling examples.

use std::path::Path;
use std::sync::Arc;

use xtrail_detect::heuristics::{HeuristicsConfig, UaPatterns};
use xtrail_detect::pipeline::{Detector, DetectorConfig, FloodConfig};
use xtrail_detect::process::ProcessorConfig;
use xtrail_detect::throttle::ThrottleConfig;
use xtrail_detect::trails::{LoadOptions, TrailSet};
use xtrail_detect::whitelist::Whitelist;

/// The static tree of the Maltrail data folder `data`, its whitelist and ua.txt, or `None`
/// (with a message).
pub fn shared(data: &Path) -> Option<(Arc<TrailSet>, Arc<Whitelist>, Arc<UaPatterns>)> {
    let trails = match TrailSet::load(&[data.join("trails-static")], &LoadOptions::default()) {
        Ok(t) => Arc::new(t),
        Err(e) => {
            eprintln!("skipping: no static tree at {}: {e}", data.display());
            return None;
        }
    };
    let whitelist = Arc::new(
        Whitelist::load(&data.join("data/whitelist.txt")).unwrap_or_else(|_| Whitelist::empty()),
    );
    let ua = Arc::new(UaPatterns::load(&data.join("data/ua.txt")).unwrap_or_default());
    Some((trails, whitelist, ua))
}

/// A detector over these, with `heuristics`, throttling and the flood guard on.
pub fn detector(
    trails: &Arc<TrailSet>,
    whitelist: &Arc<Whitelist>,
    ua: &Arc<UaPatterns>,
    heuristics: HeuristicsConfig,
) -> Option<Detector> {
    Detector::new(DetectorConfig {
        trails: Arc::clone(trails),
        whitelist: Arc::clone(whitelist),
        processor: ProcessorConfig::with_sensor("bench"),
        heuristics: Some((heuristics, Arc::clone(ua))),
        throttle: Some(ThrottleConfig::default()),
        flood: Some(FloodConfig::default()),
        maltrail_syn_rules: true,
    })
    .map_err(|e| eprintln!("skipping: {e}"))
    .ok()
}
