//! HTTP/1.x request and response heads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xtrail_detect::protocols::http;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = http::parse_request(data) {
        assert!(http::looks_like_request(data));
        assert!(req.method.len() <= http::MAX_METHOD);
    }
    let _ = http::parse_response(data);
});
