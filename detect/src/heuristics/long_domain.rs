//! Long domain: a query whose first label is longer than the threshold (Maltrail: 24) and has
//! no `-` (DGA output, DNS tunnels and encoded exfiltration; hyphenated long labels are mostly
//! generated host names of clouds and CDNs).

use super::names::paren_trail;

/// Info of the event.
pub const INFO: &str = "long domain (suspicious)";

/// Names that legitimately carry long labels.
const ALLOWED_KEYWORDS: &[&str] = &["blogspot"];

/// The trail to report for `name`, if its first label is suspiciously long.
pub fn check(name: &str, threshold: usize) -> Option<String> {
    // The first label is no longer than the name: most names end here, without a search.
    if name.len() <= threshold {
        return None;
    }
    // Up to the first `.`, by a byte search (`split('.')` compares per dot).
    let bytes = name.as_bytes();
    let first = bytes
        .get(..memchr::memchr(b'.', bytes).unwrap_or(bytes.len()))
        .unwrap_or(bytes);
    if first.len() <= threshold || memchr::memchr(b'-', first).is_some() {
        return None;
    }
    if ALLOWED_KEYWORDS.iter().any(|k| name.contains(k)) {
        return None;
    }
    Some(paren_trail(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold() {
        let at = format!("{}.example.com", "a".repeat(24));
        let above = format!("{}.example.com", "a".repeat(25));
        assert_eq!(check(&at, 24), None);
        assert_eq!(
            check(&above, 24).as_deref(),
            Some(format!("({}).example.com", "a".repeat(25)).as_str())
        );
        assert_eq!(
            check(&format!("{}.com", "b".repeat(30)), 24).unwrap(),
            format!("({}).com", "b".repeat(30))
        );
        // With a hyphen, or an allowed keyword: not reported.
        assert_eq!(
            check(&format!("{}-x.example.com", "a".repeat(30)), 24),
            None
        );
        assert_eq!(check(&format!("{}.blogspot.com", "a".repeat(30)), 24), None);
    }

    /// The byte-wise search decides as splitting on `.` does.
    #[test]
    fn as_the_split_decides() {
        let reference = |name: &str, threshold: usize| {
            let first = name.split('.').next().unwrap_or(name);
            name.len() > threshold && first.len() > threshold && !first.contains('-')
        };
        for len in 0..40 {
            for hyphen in [None, Some(0), Some(len / 2)] {
                let mut label = "a".repeat(len);
                if let Some(at) = hyphen.filter(|&at| at < len) {
                    label.replace_range(at..=at, "-");
                }
                for name in [
                    label.clone(),
                    format!("{label}.example.com"),
                    format!("{label}.x"),
                    format!(".{label}"),
                    format!("{label}..x"),
                    format!("{label}.a-b.com"),
                    format!("\u{e9}{label}.com"),
                ] {
                    for threshold in [0, 5, 24] {
                        assert_eq!(
                            check(&name, threshold).is_some(),
                            reference(&name, threshold),
                            "{name} {threshold}"
                        );
                    }
                }
            }
        }
    }
}
