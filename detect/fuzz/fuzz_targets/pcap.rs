//! The pcap / pcapng reader over arbitrary files.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xtrail_detect::pcap::PcapReader;

fuzz_target!(|data: &[u8]| {
    let Ok(mut reader) = PcapReader::new(data) else {
        return;
    };
    let mut n = 0usize;
    while let Ok(Some(pkt)) = reader.next_packet() {
        n += 1;
        assert!(pkt.data.len() <= data.len());
        assert!(n <= data.len());
    }
});
