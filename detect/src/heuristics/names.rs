//! Small helpers on DNS names shared by the DNS heuristics.

/// The base domain (last two labels) and the rest: `a.b.example.com` → (`a.b`, `example.com`);
/// `example.com` → (`""`, `example.com`); a single label → (`""`, label).
pub fn split_base(name: &str) -> (&str, &str) {
    // Byte search: `.` is never part of a multi-byte UTF-8 sequence. Plain loops: the last
    // two labels are short, shorter than a vectorised search's set-up.
    let b = name.as_bytes();
    let Some(last_dot) = b.iter().rposition(|&c| c == b'.') else {
        return ("", name);
    };
    match b
        .get(..last_dot)
        .and_then(|head| head.iter().rposition(|&c| c == b'.'))
    {
        Some(dot) => (
            name.get(..dot).unwrap_or_default(),
            name.get(dot + 1..).unwrap_or_default(),
        ),
        None => ("", name),
    }
}

/// Maltrail's way of showing the suspicious part of a name: `(sub).base` for three labels or
/// more, `(first).tld` for two, the name itself for one.
pub fn paren_trail(name: &str) -> String {
    let (sub, base) = split_base(name);
    if !sub.is_empty() {
        return format!("({sub}).{base}");
    }
    match name.split_once('.') {
        Some((first, rest)) => format!("({first}).{rest}"),
        None => name.to_owned(),
    }
}

/// `(all but the last label).last`: how sinkholed and parked answers show their name.
pub fn paren_trail_tld(name: &str) -> String {
    match name.rsplit_once('.') {
        Some((head, tld)) => format!("({head}).{tld}"),
        None => name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bases() {
        assert_eq!(split_base("a.b.example.com"), ("a.b", "example.com"));
        assert_eq!(split_base("example.com"), ("", "example.com"));
        assert_eq!(split_base("com"), ("", "com"));
        assert_eq!(split_base(""), ("", ""));
        assert_eq!(paren_trail("x.y.example.com"), "(x.y).example.com");
        assert_eq!(paren_trail("abc.com"), "(abc).com");
        assert_eq!(paren_trail("abc"), "abc");
        assert_eq!(
            paren_trail_tld("a.sinkholed.example"),
            "(a.sinkholed).example"
        );
    }
}
