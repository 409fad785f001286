//! QUIC Initial server names: arbitrary datagrams, and Initials built around arbitrary
//! CRYPTO data (so the decrypted path is fuzzed too, not only the header checks).
#![no_main]

use libfuzzer_sys::fuzz_target;
use xtrail_detect::protocols::quic;

fuzz_target!(|data: &[u8]| {
    let _ = quic::initial_sni(data);
    if let Some(dgram) = quic::client_initial(&[1, 2, 3, 4, 5, 6, 7, 8], data) {
        let _ = quic::initial_sni(&dgram);
    }
});
