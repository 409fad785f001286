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
    let first = name.split('.').next().unwrap_or(name);
    if first.len() <= threshold || first.contains('-') {
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
}
