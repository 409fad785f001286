//! Request heuristics that look at one request's shape (the attack battery is in
//! [`super::attack`], user agents in [`super::user_agent`]):
//!
//! - missing `Host` header (optional: old clients and some devices omit it legitimately);
//! - IoT malware download: a numeric `Host` and a file named after a CPU architecture
//!   (`mirai.x86`, `bins/sora.arm7`, `x.mpsl`), to a non-local destination;
//! - proxy probe: an absolute-form request target (only proxies receive those) whose URL
//!   talks about probing, proxies, echo or checks (open-proxy hunters);
//! - direct download of an executable type with a short file name (stem under 10
//!   characters, as Maltrail) and no query parameters, to a non-local destination.

/// Info of the missing-host event.
pub const INFO_MISSING_HOST: &str = "missing host header (suspicious)";
/// Info of the IoT download event.
pub const INFO_IOT: &str = "potential iot-malware download (suspicious)";
/// Info of the proxy-probe event.
pub const INFO_PROXY_PROBE: &str = "potential proxy probe (suspicious)";

/// Executable types whose direct download is reported.
pub const DIRECT_DOWNLOAD_EXTENSIONS: &[&str] = &[
    "apk", "bin", "class", "chm", "dll", "egg", "exe", "hta", "hwp", "lnk", "msi", "pif", "ps1",
    "pyz", "scr", "sct", "vsto", "wbk", "xpi",
];

/// Shortest and longest of [`DIRECT_DOWNLOAD_EXTENSIONS`] (a test checks): other lengths are
/// rejected without comparing.
const DIRECT_DOWNLOAD_EXTENSION_LEN: std::ops::RangeInclusive<usize> = 3..=5;

/// Path parts of software repositories and server scripts that serve such files routinely.
const DIRECT_DOWNLOAD_ALLOWED: &[&str] = &["/cgi-bin/", "/_vti_bin/", "/scripts/", "/softpaq/"];

/// CPU architecture names IoT droppers use as file names or extensions.
const ARCHITECTURES: &[&str] = &[
    "arm", "arm4", "arm5", "arm6", "arm7", "armv4l", "armv5l", "armv6l", "armv7l", "arm64",
    "aarch64", "mips", "mipsel", "mips64", "mpsl", "m68k", "m68", "ppc", "powerpc", "ppc440",
    "sh4", "spc", "sparc", "x86", "x86_64", "x64", "i386", "i486", "i586", "i686", "amd64", "arc",
    "riscv64",
];

/// The path of a request target without query or fragment: origin form as is, the path of an
/// absolute form.
pub fn path_of(target: &[u8]) -> &[u8] {
    let path = match crate::protocols::http::find_scheme_sep(target) {
        Some(i) => {
            let rest = target.get(i + 3..).unwrap_or_default();
            rest.get(memchr::memchr(b'/', rest).unwrap_or(rest.len())..)
                .unwrap_or_default()
        }
        None => target,
    };
    let end = memchr::memchr2(b'?', b'#', path).unwrap_or(path.len());
    path.get(..end).unwrap_or(path)
}

/// The last segment of a path.
fn file_name(path: &[u8]) -> &[u8] {
    let start = memchr::memrchr(b'/', path).map_or(0, |i| i + 1);
    path.get(start..).unwrap_or_default()
}

/// Whether a host is an IPv4 literal (Maltrail: digits and dots only).
pub fn is_numeric_host(host: &str) -> bool {
    !host.is_empty() && host.contains('.') && host.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// Whether a path names an architecture-specific binary: a file name whose extension or
/// `-`/`_`/`.`-separated part is an architecture (`mirai.x86`, `arm7`, `bot-mips`).
pub fn is_iot_binary_path(path: &[u8]) -> bool {
    let name = file_name(path);
    if name.is_empty() || name.len() > 64 {
        return false;
    }
    let Ok(name) = std::str::from_utf8(name) else {
        return false;
    };
    let lower = name.to_ascii_lowercase();
    lower
        .split(['.', '-', '_'])
        .any(|part| ARCHITECTURES.contains(&part))
        || ARCHITECTURES.contains(&lower.as_str())
}

/// Whether an absolute-form target is an open-proxy probe.
pub fn is_proxy_probe(target: &[u8]) -> bool {
    // The first `://` ends an `http` or `https` scheme: it sits right after one (a scheme
    // holds no `:`), so no search is needed.
    let scheme_end = [4, 5].into_iter().find(|&n| {
        let scheme = target.get(..n).unwrap_or_default();
        target.get(n..n + 3) == Some(b"://".as_slice())
            && (scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https"))
    });
    let Some(scheme_end) = scheme_end else {
        return false;
    };
    let url = target.get(scheme_end + 3..).unwrap_or_default();
    let url = url.get(..url.len().min(512)).unwrap_or(url);
    [
        &b"probe"[..],
        b"proxy",
        b"echo",
        b"check",
        b"azenv",
        b"judge",
    ]
    .iter()
    .any(|w| url.windows(w.len()).any(|x| x.eq_ignore_ascii_case(w)))
}

/// The extension (lowercase, without the dot) of a directly downloaded executable: no query
/// parameters, a file name whose stem is at most `max_stem` characters, an extension in
/// [`DIRECT_DOWNLOAD_EXTENSIONS`].
pub fn direct_download_extension(target: &[u8], max_stem: usize) -> Option<String> {
    direct_download_extension_in(target, path_of(target), max_stem)
}

/// [`direct_download_extension`] with `path` the target's [`path_of`], known to the caller.
pub fn direct_download_extension_in(target: &[u8], path: &[u8], max_stem: usize) -> Option<String> {
    // Most paths end in no listed extension: rejected on the bytes first, without the query
    // search or the lowercase copy (an ASCII extension and the `/` and `.` before it read the
    // same in the lossy text). One backwards pass: the extension ends the last segment.
    let dot = path.iter().rposition(|&b| b == b'.' || b == b'/')?;
    if path.get(dot) != Some(&b'.') {
        return None;
    }
    let ext = path.get(dot + 1..).unwrap_or_default();
    if !DIRECT_DOWNLOAD_EXTENSION_LEN.contains(&ext.len())
        || !DIRECT_DOWNLOAD_EXTENSIONS
            .iter()
            .any(|e| e.as_bytes().eq_ignore_ascii_case(ext))
    {
        return None;
    }
    let query = memchr::memchr(b'?', target).and_then(|i| target.get(i..));
    if query.is_some_and(|q| memchr::memchr(b'=', q).is_some()) {
        return None;
    }
    let lower = String::from_utf8_lossy(path).to_ascii_lowercase();
    if DIRECT_DOWNLOAD_ALLOWED.iter().any(|a| lower.contains(a)) {
        return None;
    }
    let name = lower.rsplit('/').next().unwrap_or(&lower);
    let (stem, ext) = name.rsplit_once('.')?;
    if stem.is_empty() || stem.len() > max_stem || !DIRECT_DOWNLOAD_EXTENSIONS.contains(&ext) {
        return None;
    }
    Some(ext.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(path_of(b"/a/b?c=d"), b"/a/b");
        assert_eq!(path_of(b"http://h.example:8080/x/y#z"), b"/x/y");
        assert_eq!(path_of(b"http://h.example"), b"");
    }

    #[test]
    fn iot() {
        assert!(is_numeric_host("198.51.100.99"));
        assert!(!is_numeric_host("dl.example"));
        assert!(!is_numeric_host("1234"));
        assert!(is_iot_binary_path(b"/mirai.x86"));
        assert!(is_iot_binary_path(b"/bins/sora.arm7"));
        assert!(is_iot_binary_path(b"/mpsl"));
        assert!(is_iot_binary_path(b"/bot-mipsel"));
        assert!(!is_iot_binary_path(b"/index.html"));
        assert!(!is_iot_binary_path(b"/arm/"));
        assert!(!is_iot_binary_path(b"/charming.png"));
    }

    #[test]
    fn proxy_probes() {
        assert!(is_proxy_probe(b"http://proxycheck.example/"));
        assert!(is_proxy_probe(b"http://1.2.3.4/azenv.php"));
        assert!(is_proxy_probe(b"HTTP://x.example/echo"));
        assert!(!is_proxy_probe(b"/proxycheck"));
        assert!(!is_proxy_probe(b"http://www.example.com/index.html"));
    }

    /// The form that searched for the first `://`, as the reference.
    fn proxy_probe_reference(target: &[u8]) -> bool {
        let Some(scheme_end) = crate::protocols::http::find_scheme_sep(target) else {
            return false;
        };
        let scheme = target.get(..scheme_end).unwrap_or_default();
        if !(scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https")) {
            return false;
        }
        let url = target.get(scheme_end + 3..).unwrap_or_default();
        let url = url.get(..url.len().min(512)).unwrap_or(url);
        ["probe", "proxy", "echo", "check", "azenv", "judge"]
            .iter()
            .any(|w| {
                url.windows(w.len())
                    .any(|x| x.eq_ignore_ascii_case(w.as_bytes()))
            })
    }

    #[test]
    fn proxy_probes_match_the_reference() {
        for t in [
            &b"http://proxycheck.example/"[..],
            b"https://x/echo",
            b"HTTPS://x/judge",
            b"http:/x/echo",
            b"http:://x/echo",
            b"httpx://x/echo",
            b"ftp://x/echo",
            b"/a?u=http://x/echo",
            b"http",
            b"https:/",
            b"xhttp://x/echo",
            b"http://",
        ] {
            assert_eq!(
                is_proxy_probe(t),
                proxy_probe_reference(t),
                "{:?}",
                String::from_utf8_lossy(t)
            );
        }
    }

    #[test]
    fn extension_lengths() {
        let lens = DIRECT_DOWNLOAD_EXTENSIONS.iter().map(|e| e.len());
        assert_eq!(
            lens.clone().min()..=lens.max(),
            Some(*DIRECT_DOWNLOAD_EXTENSION_LEN.start())
                ..=Some(*DIRECT_DOWNLOAD_EXTENSION_LEN.end())
        );
    }

    #[test]
    fn direct_downloads() {
        assert_eq!(
            direct_download_extension(b"/setup.exe", 9).as_deref(),
            Some("exe")
        );
        assert_eq!(
            direct_download_extension(b"/a/b/X.DLL", 9).as_deref(),
            Some("dll")
        );
        // Stem at the limit (9), and just above (10).
        assert_eq!(
            direct_download_extension(b"/123456789.ps1", 9).as_deref(),
            Some("ps1")
        );
        assert_eq!(direct_download_extension(b"/1234567890.ps1", 9), None);
        assert_eq!(direct_download_extension(b"/setup.exe?v=1", 9), None);
        assert_eq!(direct_download_extension(b"/setup.zip", 9), None);
        assert_eq!(direct_download_extension(b"/cgi-bin/x.exe", 9), None);
        assert_eq!(direct_download_extension(b"/.exe", 9), None);
    }

    /// The form the extension-first one replaced, as the reference.
    fn direct_download_reference(target: &[u8], max_stem: usize) -> Option<String> {
        let query = memchr::memchr(b'?', target).and_then(|i| target.get(i..));
        if query.is_some_and(|q| memchr::memchr(b'=', q).is_some()) {
            return None;
        }
        let path = path_of(target);
        let lower = String::from_utf8_lossy(path).to_ascii_lowercase();
        if DIRECT_DOWNLOAD_ALLOWED.iter().any(|a| lower.contains(a)) {
            return None;
        }
        let name = lower.rsplit('/').next().unwrap_or(&lower);
        let (stem, ext) = name.rsplit_once('.')?;
        if stem.is_empty() || stem.len() > max_stem || !DIRECT_DOWNLOAD_EXTENSIONS.contains(&ext) {
            return None;
        }
        Some(ext.to_owned())
    }

    #[test]
    fn direct_downloads_match_the_reference() {
        let targets: [&[u8]; 24] = [
            b"",
            b"/",
            b".",
            b"/.",
            b"/a.",
            b"/a.exe",
            b"/A.EXE",
            b"/a.b/c",
            b"/a.exe/",
            b"/a.exe?x",
            b"/a.exe?x=1",
            b"/a?b.exe",
            b"/a?x=1.exe",
            b"/a.exe#f=1",
            b"http://h.example/a.exe",
            b"http://h.example",
            b"http://h.exe",
            b"a.exe",
            b"/d.ll/x.dll",
            b"/\xff.exe",
            b"/1234567890.exe",
            b"/cgi-bin/x.exe",
            b"/x.tar.exe",
            b"/x..exe",
        ];
        for t in targets {
            for max_stem in [0, 1, 9] {
                assert_eq!(
                    direct_download_extension(t, max_stem),
                    direct_download_reference(t, max_stem),
                    "{:?}",
                    String::from_utf8_lossy(t)
                );
            }
        }
    }
}
