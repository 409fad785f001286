//! DNS message parsing over UDP and TCP, answers included.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xtrail_detect::protocols::dns;

fuzz_target!(|data: &[u8]| {
    for msg in [dns::parse(data), dns::parse_tcp(data)]
        .into_iter()
        .flatten()
    {
        if let Some(q) = msg.question {
            assert!(q.name.as_bytes().len() <= dns::MAX_NAME_LEN);
        }
        for answer in msg.answers() {
            let _ = answer;
        }
    }
});
