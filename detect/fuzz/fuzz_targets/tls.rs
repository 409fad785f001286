//! TLS ClientHello server names.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xtrail_detect::protocols::tls;

fuzz_target!(|data: &[u8]| {
    if let Ok(hello) = tls::parse_client_hello(data) {
        if let Some(sni) = hello.sni {
            assert!(!sni.is_empty() && sni.len() <= tls::MAX_SNI);
        }
    }
});
