//! Response heuristics, over the status line, headers and the first body bytes of a segment:
//!
//! - sinkhole response: markers sinkhole operators put in headers or pages (`X-Sinkhole`
//!   and `X-Zinkhole` headers, a `sinkhole` server, a sinkhole operator's cookie, "sinkholed
//!   by" / "this is a sinkhole" / `Sinkhole</title>` text):
//!   the client is talking to a name taken away from malware;
//! - seized domain: a page title announcing a domain or site seized by law enforcement;
//! - suspicious content type: media types of scripts and shortcuts a browser should rarely
//!   receive (HTA, CHM, shell scripts, shortcuts, VSTO add-ins, scriptlets, ClickOnce).

use regex::bytes::{Regex, RegexBuilder};

/// Info of the sinkhole event.
pub const INFO_SINKHOLE: &str = "sinkhole response (malware)";
/// Info of the seized-domain event.
pub const INFO_SEIZED: &str = "seized domain (suspicious)";
/// Info of the content-type event.
pub const INFO_CONTENT_TYPE: &str = "content type (suspicious)";

/// Bytes of a response looked at.
const MAX_LOOK: usize = 2048;

/// Suspicious media types (compared without parameters, lowercase).
pub const SUSPICIOUS_CONTENT_TYPES: &[&str] = &[
    "application/hta",
    "application/x-hta",
    "text/hta",
    "application/vnd.ms-htmlhelp",
    "application/x-chm",
    "application/x-sh",
    "application/x-shellscript",
    "application/x-csh",
    "application/x-bsh",
    "text/x-sh",
    "text/x-shellscript",
    "application/x-ms-shortcut",
    "application/x-mswinurl",
    "application/x-ms-vsto",
    "text/x-scriptlet",
    "application/x-ms-application",
    "application/x-ms-manifest",
];

const SINKHOLE: &str = r"(?im)^x-(sinkhole[\w-]*|sinkholed[\w-]*|zinkhole)\s*:|^server\s*:[^\r\n]*sinkhole|^set-cookie\s*:\s*snkz=|\bsinkholed?\s+by\b|\bthis\s+(is\s+a|domain\s+is\s+a)\s+(malware\s+)?sinkhole\b|\ba\s+malware\s+sinkhole\b|\bsinkhole(\s+project)?\s*</title>|\bconnecting\s+to\s+this\s+sinkhole\b|\bbots\s+party\s+hard\b|\b(domain|host(name)?|site)\s+(has\s+been|is|was)\s+sinkholed\b|\bsinkhole\s+(server|page|response|operated\s+by)\b";
const SEIZED: &str = r"(?i)\b(domain|website|web\s+site|site|this\s+page)\b.{0,60}\bseiz(ed|ure)\b|\bseiz(ed|ure)\b.{0,40}\b(domain|website|site)\b|\bseized\s+by\s+(the\s+)?(fbi|europol|nca|bka|police|department|u\.?s\.?|law\s+enforcement|homeland|hsi|ice|interpol|doj)";

/// The compiled response markers.
#[derive(Clone, Debug)]
pub struct ResponseMarkers {
    sinkhole: Regex,
    seized: Regex,
}

/// What a response raised: `(trail, info)`.
pub type Finding = (String, &'static str);

impl ResponseMarkers {
    /// Compiles the markers.
    pub fn new() -> Result<Self, regex::Error> {
        let build = |p: &str| RegexBuilder::new(p).unicode(false).build();
        Ok(ResponseMarkers {
            sinkhole: build(SINKHOLE)?,
            seized: build(SEIZED)?,
        })
    }

    /// Checks a response segment: `head` is the header block, `body` the first body bytes,
    /// `content_type` the `Content-Type` value. At most one sinkhole-or-seized finding and
    /// one content-type finding.
    pub fn check(
        &self,
        head: &[u8],
        body: &[u8],
        content_type: Option<&[u8]>,
        mut found: impl FnMut(Finding),
    ) {
        let head = head.get(..head.len().min(MAX_LOOK)).unwrap_or(head);
        let body = body.get(..body.len().min(MAX_LOOK)).unwrap_or(body);
        let hit = self
            .sinkhole
            .find(head)
            .or_else(|| self.sinkhole.find(body));
        if let Some(m) = hit {
            let trail = String::from_utf8_lossy(m.as_bytes()).trim().to_owned();
            found((trail, INFO_SINKHOLE));
        } else if let Some(title) = title(body) {
            if self.seized.is_match(title) {
                let t = String::from_utf8_lossy(title).trim().to_owned();
                found((t, INFO_SEIZED));
            }
        }
        if let Some(ct) = content_type {
            let media = ct.split(|b| *b == b';').next().unwrap_or(ct);
            let media = String::from_utf8_lossy(media).trim().to_ascii_lowercase();
            if SUSPICIOUS_CONTENT_TYPES.contains(&media.as_str()) {
                found((media, INFO_CONTENT_TYPE));
            }
        }
    }
}

/// The text between `<title>` and `</title>` (case-insensitive), at most 256 bytes.
fn title(body: &[u8]) -> Option<&[u8]> {
    let open = find_ci(body, b"<title")?;
    let rest = body.get(open..)?;
    let start = memchr::memchr(b'>', rest)? + 1;
    let rest = rest.get(start..)?;
    let end = find_ci(rest, b"</title").unwrap_or(rest.len().min(256));
    rest.get(..end.min(256))
}

fn find_ci(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(head: &str, body: &str, ct: Option<&str>) -> Vec<Finding> {
        let m = ResponseMarkers::new().unwrap();
        let mut out = Vec::new();
        m.check(
            head.as_bytes(),
            body.as_bytes(),
            ct.map(str::as_bytes),
            |f| out.push(f),
        );
        out
    }

    #[test]
    fn sinkholes() {
        let f = run("Server: nginx\r\nX-Sinkhole: Malware\r\n", "", None);
        assert_eq!(f, [("X-Sinkhole:".to_owned(), INFO_SINKHOLE)]);
        let f = run(
            "Server: nginx\r\n",
            "<html>This domain has been sinkholed by a CERT</html>",
            None,
        );
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].1, INFO_SINKHOLE);
        assert_eq!(run("Server: sinkhole\r\n", "", None).len(), 1);
        assert_eq!(run("X-Zinkhole: 1\r\n", "", None).len(), 1);
        assert_eq!(run("", "<html><title>Sinkhole</title>", None).len(), 1);
        assert_eq!(
            run("", "this is a sinkhole operated for research", None).len(),
            1
        );
        assert!(run(
            "Server: nginx\r\n",
            "<title>Giant sinkhole swallows road</title>",
            None
        )
        .is_empty());
    }

    #[test]
    fn seized() {
        let f = run(
            "",
            "<html><head><TITLE>This domain has been seized</TITLE></head>",
            None,
        );
        assert_eq!(f, [("This domain has been seized".to_owned(), INFO_SEIZED)]);
        assert_eq!(
            run("", "<title>Domain Seized by the FBI</title>", None).len(),
            1
        );
        assert_eq!(run("", "<title>WEBSITE SEIZED</title>", None).len(), 1);
        assert!(run("", "<title>Police seized 2 tons of cocaine</title>", None).is_empty());
    }

    #[test]
    fn content_types() {
        let f = run("", "", Some("application/hta; charset=utf-8"));
        assert_eq!(f, [("application/hta".to_owned(), INFO_CONTENT_TYPE)]);
        assert_eq!(run("", "", Some("Application/X-SH")).len(), 1);
        assert!(run("", "", Some("text/html")).is_empty());
        assert!(run("", "", Some("application/octet-stream")).is_empty());
    }
}
