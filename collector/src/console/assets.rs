//! The console's page and static files, embedded in the binary (no CDN, works offline).
//!
//! The sources are in `collector/console/` (plain HTML, CSS and JavaScript modules, no build
//! step). [`console_page`] is the page of a signed-in user, [`login_page`] the sign-in form,
//! and [`router`] serves `GET /static/{file}`: only the embedded names below, anything else
//! (`..`, encoded separators, absolute paths, unknown names) is a 404. Static files are sent
//! with `Cache-Control: no-cache` and a content-hash `ETag`, so a browser revalidates
//! (a 304 when unchanged) and never runs a stale script after an upgrade.

use axum::extract::rejection::PathRejection;
use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    hash: u64,
}

macro_rules! asset {
    ($name:literal, $type:literal) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_bytes!(concat!("../../console/", $name)),
            hash: hash_of(include_bytes!(concat!("../../console/", $name))),
        }
    };
}

/// Every file under `/static/`.
static ASSETS: &[Asset] = &[
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("api.js", "text/javascript; charset=utf-8"),
    asset!("dom.js", "text/javascript; charset=utf-8"),
    asset!("charts.js", "text/javascript; charset=utf-8"),
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
];

const INDEX_HTML: &str = include_str!("../../console/index.html");
const LOGIN_HTML: &str = include_str!("../../console/login.html");
/// Where [`login_page`] puts its message.
const MESSAGE_SLOT: &str = "<!--MESSAGE-->";

/// The FNV-1a 64 hash of a file, computed at compile time: its ETag.
const fn hash_of(body: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < body.len() {
        h ^= body[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
}

fn html(body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, super::CSP),
        ],
        body,
    )
        .into_response()
}

/// The console page for a signed-in user (`GET /`).
pub fn console_page() -> Response {
    html(INDEX_HTML.to_string())
}

/// The sign-in form (status 200; set another with `status_mut`), with an optional message
/// shown above the button. The message is HTML-escaped.
pub fn login_page(message: Option<&str>) -> Response {
    let slot = message.map_or_else(String::new, |m| {
        format!(
            "<p class=\"error\" id=\"login-message\" role=\"alert\">{}</p>",
            escape_html(m)
        )
    });
    html(LOGIN_HTML.replacen(MESSAGE_SLOT, &slot, 1))
}

/// Escapes text for an HTML text node or a quoted attribute.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `GET /static/{file}` for any router state.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/static/{file}", get(static_file))
}

fn find(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

async fn static_file(file: Result<Path<String>, PathRejection>, headers: HeaderMap) -> Response {
    let Some(asset) = file.ok().and_then(|Path(name)| find(&name)) else {
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "not found\n",
        )
            .into_response();
    };
    let etag = format!("\"{:016x}\"", asset.hash);
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.body,
        )
            .into_response()
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn status_of(name: &str) -> StatusCode {
        static_file(Ok(Path(name.to_string())), HeaderMap::new())
            .await
            .status()
    }

    #[tokio::test]
    async fn only_embedded_names_are_served() {
        for a in ASSETS {
            let r = static_file(Ok(Path(a.name.to_string())), HeaderMap::new()).await;
            assert_eq!(r.status(), StatusCode::OK, "{}", a.name);
            assert_eq!(r.headers()[header::CONTENT_TYPE], a.content_type);
            assert_eq!(r.headers()[header::CACHE_CONTROL], "no-cache");
        }
        for bad in [
            "../Cargo.toml",
            "..",
            "/etc/passwd",
            "../../src/main.rs",
            "%2e%2e",
            "..\\app.js",
            "app.js/",
            "index.html",
            "login.html",
            "APP.JS",
            "",
        ] {
            assert_eq!(status_of(bad).await, StatusCode::NOT_FOUND, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn unchanged_files_revalidate_with_304() {
        let r = static_file(Ok(Path("app.js".into())), HeaderMap::new()).await;
        let etag = r.headers()[header::ETAG].clone();
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, etag);
        let r = static_file(Ok(Path("app.js".into())), h).await;
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"0\""));
        let r = static_file(Ok(Path("app.js".into())), h).await;
        assert_eq!(r.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn login_message_is_escaped() {
        let body = login_page(Some("<script>alert(1)</script>\"'&")).into_body();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.expect("body");
        let page = String::from_utf8(bytes.to_vec()).expect("utf-8");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&amp;"));
        assert!(!page.contains("<script>alert"));
        assert_eq!(login_page(None).status(), StatusCode::OK);
        assert!(LOGIN_HTML.contains(MESSAGE_SLOT));
    }

    /// The pages keep to the CSP (no inline script or style) and the scripts never parse
    /// network data as HTML or code.
    #[test]
    fn sources_keep_to_the_csp() {
        for (name, text) in [("index.html", INDEX_HTML), ("login.html", LOGIN_HTML)] {
            assert!(!text.contains("style="), "{name}: inline style");
            assert!(!text.contains("<style"), "{name}: style element");
            for (i, _) in text.match_indices("<script") {
                let tag = &text[i..text[i..].find('>').map_or(text.len(), |e| i + e)];
                assert!(
                    tag.contains("src=\"/static/"),
                    "{name}: inline script {tag}"
                );
            }
            for handler in [
                "onclick=",
                "onload=",
                "onerror=",
                "onsubmit=",
                "onchange=",
                "oninput=",
            ] {
                assert!(
                    !text.contains(handler),
                    "{name}: inline event handler {handler}"
                );
            }
            assert!(
                !text.contains("http://") && !text.contains("https://"),
                "{name}: remote URL"
            );
        }
        for a in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            let text = std::str::from_utf8(a.body).expect("utf-8");
            for banned in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
                "new Function",
                "setAttribute('style'",
                "http://",
                "https://",
            ] {
                let hits = text
                    .lines()
                    .filter(|l| l.contains(banned) && !l.trim_start().starts_with("//"))
                    .count();
                // The SVG namespace URI is the one allowed absolute URL.
                let allowed = usize::from(banned == "http://" && a.name == "dom.js");
                assert_eq!(hits, allowed, "{}: {banned}", a.name);
            }
        }
    }
}
