//! Link, IP and transport parsing; the first byte picks the link type.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xtrail_detect::packet;

const LINKTYPES: &[u32] = &[0, 1, 12, 14, 101, 108, 113, 228, 229, 276];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, frame)) = data.split_first() else {
        return;
    };
    let linktype = LINKTYPES[usize::from(pick) % LINKTYPES.len()];
    if let Ok(pkt) = packet::parse(linktype, frame) {
        let _ = pkt.ports();
    }
});
