//! What the benches record about the machine with their figures: when, and how busy.

/// The first `n` (at most 3) load averages of `/proc/loadavg` (1, 5 and 15 minutes),
/// space-separated; empty when unreadable.
pub fn loadavg(n: usize) -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| {
            l.split_whitespace()
                .take(n.min(3))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// The current UTC time to the second, as `date -u +%FT%TZ` prints it.
pub fn utc_now() -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::now_utc()
        .format(format)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_now_looks_like_date() {
        let t = super::utc_now();
        assert_eq!(t.len(), 20, "{t}");
        assert_eq!((&t[4..5], &t[10..11], &t[19..]), ("-", "T", "Z"), "{t}");
    }

    #[test]
    fn loadavg_has_the_fields_asked_for() {
        assert_eq!(super::loadavg(3).split(' ').count(), 3);
        assert_eq!(super::loadavg(1).split(' ').count(), 1);
    }
}
