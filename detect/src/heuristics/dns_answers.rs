//! DNS answers pointing at a sinkhole or a parking service: an A/AAAA answer whose address is
//! an IP trail labelled `sinkhole <operator> ...` raises `sinkholed by <operator> (malware)`
//! (the name was taken over by a researcher or registrar: whoever asks for it is likely
//! infected); one labelled `parking ...` raises `parked site (suspicious)`.

use std::net::IpAddr;

use crate::protocols::dns::{Message, RData};
use crate::trails::TrailSet;

use super::names::paren_trail_tld;

/// Info of the parked-site event.
pub const INFO_PARKED: &str = "parked site (suspicious)";

/// `(trail, info)` for the first answer of `msg` that hits a sinkhole or parking trail.
pub fn check(msg: &Message<'_>, name: &str, trails: &TrailSet) -> Option<(String, String)> {
    for answer in msg.answers() {
        let Ok(answer) = answer else { break };
        let addr = match answer.data {
            RData::A(a) => IpAddr::V4(a),
            RData::Aaaa(a) => IpAddr::V6(a),
            _ => continue,
        };
        let Some(m) = trails.ip.lookup(addr, None) else {
            continue;
        };
        let info = trails.label(m.label).info.as_str();
        if let Some(operator) = sinkhole_operator(info) {
            return Some((
                paren_trail_tld(name),
                format!("sinkholed by {operator} (malware)"),
            ));
        }
        if info.contains("parking") {
            return Some((paren_trail_tld(name), INFO_PARKED.to_owned()));
        }
    }
    None
}

/// The word after `sinkhole` in a trail label (`sinkhole microsoft (malware)` → `microsoft`);
/// `unknown` when the label names no operator; `None` when it is not a sinkhole label.
pub fn sinkhole_operator(info: &str) -> Option<&str> {
    let mut words = info.split_whitespace();
    words.find(|w| w.starts_with("sinkhole"))?;
    Some(
        words
            .next()
            .filter(|w| !w.starts_with('('))
            .unwrap_or("unknown"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operators() {
        assert_eq!(
            sinkhole_operator("sinkhole testsink (malware)"),
            Some("testsink")
        );
        assert_eq!(sinkhole_operator("sinkhole (malware)"), Some("unknown"));
        assert_eq!(sinkhole_operator("parking site (suspicious)"), None);
    }
}
