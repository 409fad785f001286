//! The whole per-packet pipeline with the corpus trails: first byte picks the link type,
//! the next two advance the clock (so the duplicate-SYN table and throttle see time pass).
#![no_main]

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use xtrail_detect::heuristics::{HeuristicsConfig, MaltrailHeuristics, UaPatterns};
use xtrail_detect::process::{Processor, ProcessorConfig};
use xtrail_detect::throttle::Throttle;
use xtrail_detect::trails::{LoadOptions, TrailSet};
use xtrail_detect::whitelist::Whitelist;

const LINKTYPES: &[u32] = &[0, 1, 12, 101, 108, 113, 228, 229, 276];

struct State {
    processor: Processor,
    throttle: Throttle,
    ts: i64,
}

fn state() -> &'static Mutex<State> {
    static STATE: OnceLock<Mutex<State>> = OnceLock::new();
    STATE.get_or_init(|| {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/maltrail");
        let csv = data.join("corpus/trails.csv");
        let trails = TrailSet::load(&[csv], &LoadOptions::default()).unwrap_or_default();
        let wl = Arc::new(Whitelist::empty());
        let mut processor = Processor::new(
            Arc::new(trails),
            Arc::clone(&wl),
            ProcessorConfig::default(),
        );
        // The heuristics too, with low thresholds so that inputs reach their alert paths.
        let ua = UaPatterns::load(&data.join("data/ua.txt")).unwrap_or_else(|_| UaPatterns::empty());
        let config = HeuristicsConfig::hair_trigger();
        // A set-up failure shows as a panic, not as a run without the heuristics.
        let h = MaltrailHeuristics::new(config, wl, Arc::new(ua)).expect("heuristics build");
        processor.set_heuristics(Box::new(h));
        Mutex::new(State {
            processor,
            throttle: Throttle::default(),
            ts: 1_700_000_000_000_000,
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let [pick, t0, t1, frame @ ..] = data else {
        return;
    };
    let Ok(mut s) = state().lock() else { return };
    let s = &mut *s;
    s.ts += i64::from(u16::from_be_bytes([*t0, *t1])) * 100;
    let linktype = LINKTYPES[usize::from(*pick) % LINKTYPES.len()];
    let mut events = Vec::new();
    s.processor
        .process(s.ts, linktype, frame, &mut |e| events.push(e));
    for e in events {
        s.throttle.filter(e, &mut |e| {
            let _ = e.to_maltrail();
            let _ = e.to_json();
        });
    }
});
