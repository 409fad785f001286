//! False positives of the URL candidates on clean traffic: Maltrail's full static trail tree
//! against a few thousand benign-looking HTTP requests (common CMS, static-asset, API and
//! shop paths on benign hosts, generated deterministically), counting the requests that raise
//! a `URL` event with Maltrail's candidates (the default) and with
//! `ProcessorConfig::url_extra_candidates`.
//!
//! Run with `--nocapture` to see the counts and the trails hit. Without the shared data the
//! test is skipped, unless `CI=true`, where it fails.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use xtrail_detect::event::EventType;
use xtrail_detect::packet::LINKTYPE_RAW;
use xtrail_detect::process::{Processor, ProcessorConfig};
use xtrail_detect::trails::{LoadOptions, TrailSet};
use xtrail_detect::whitelist::Whitelist;

/// Requests generated.
const REQUESTS: usize = 5_000;

fn shared_data() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/maltrail");
    if dir.join("trails-static").is_dir() {
        return Some(dir);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "Maltrail static trails missing at {} (required in CI)",
        dir.display()
    );
    eprintln!("skipping: no Maltrail static trails at {}", dir.display());
    None
}

/// A small deterministic generator (xorshift64*), so the request set never changes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const HOSTS: &[&str] = &[
    "www.example.com",
    "blog.example.org",
    "shop.example.net",
    "news.example.co.uk",
    "static.example-cdn.com",
    "api.example.io",
    "www.wikipedia.org",
    "www.bbc.co.uk",
    "www.microsoft.com",
    "www.apple.com",
    "www.amazon.com",
    "www.nytimes.com",
    "www.theguardian.com",
    "www.reddit.com",
    "stackoverflow.com",
    "www.mozilla.org",
    "www.debian.org",
    "www.python.org",
    "www.w3.org",
    "www.cloudflare.com",
    "www.university.edu",
    "intranet.company.example",
    "portal.city-council.gov.uk",
    "www.local-bakery.com",
    "www.dentist-smith.com",
];

const WORDS: &[&str] = &[
    "about",
    "contact",
    "news",
    "summer",
    "sale",
    "team",
    "office",
    "garden",
    "recipe",
    "travel",
    "report",
    "annual",
    "photo",
    "gallery",
    "product",
    "service",
    "support",
    "help",
    "pricing",
    "features",
    "download",
    "manual",
    "guide",
    "event",
    "conference",
    "history",
    "careers",
    "press",
    "privacy",
    "terms",
    "faq",
    "shipping",
    "returns",
    "winter",
    "spring",
    "holiday",
    "family",
    "coffee",
    "bread",
    "cake",
    "music",
    "video",
    "sports",
    "football",
    "weather",
    "science",
    "health",
    "school",
    "library",
    "museum",
    "park",
    "city",
    "beach",
    "mountain",
    "river",
    "camera",
    "laptop",
    "phone",
    "shoes",
    "jacket",
];

const THEMES: &[&str] = &[
    "twentytwentyfour",
    "astra",
    "divi",
    "oceanwp",
    "generatepress",
];
const PLUGINS: &[&str] = &[
    "contact-form-7",
    "woocommerce",
    "elementor",
    "jetpack",
    "wordpress-seo",
    "akismet",
];
const EXTS_IMG: &[&str] = &["jpg", "png", "gif", "webp", "svg"];
const FONTS: &[&str] = &[
    "roboto-regular",
    "opensans-bold",
    "lato-light",
    "fa-solid-900",
];

/// One benign request path.
fn benign_path(r: &mut Rng) -> String {
    let w = |r: &mut Rng| r.pick(WORDS);
    let n = |r: &mut Rng, m: usize| r.below(m) + 1;
    let hash = |r: &mut Rng| format!("{:08x}", r.next() as u32);
    match r.below(34) {
        0 => format!(
            "/wp-content/uploads/{}/{:02}/{}-{}.{}",
            2015 + r.below(10),
            n(r, 12),
            w(r),
            n(r, 99),
            r.pick(EXTS_IMG)
        ),
        1 => format!(
            "/wp-content/themes/{}/style.css?ver=6.{}",
            r.pick(THEMES),
            n(r, 5)
        ),
        2 => format!(
            "/wp-content/plugins/{}/assets/js/{}.min.js?ver={}.{}",
            r.pick(PLUGINS),
            w(r),
            n(r, 9),
            n(r, 9)
        ),
        3 => "/wp-includes/js/jquery/jquery.min.js?ver=3.7.1".to_owned(),
        4 => "/wp-admin/admin-ajax.php".to_owned(),
        5 => "/wp-login.php".to_owned(),
        6 => format!("/static/js/app.{}.js", hash(r)),
        7 => format!("/static/css/main.{}.css", hash(r)),
        8 => format!("/assets/img/{}.{}", w(r), r.pick(EXTS_IMG)),
        9 => format!("/images/logo.png?v={}", n(r, 20)),
        10 => format!("/img/banner-{}.jpg", n(r, 12)),
        11 => format!("/api/v1/users/{}", n(r, 100_000)),
        12 => format!("/api/v2/products?page={}&limit=20", n(r, 50)),
        13 => format!("/index.php?page={}", w(r)),
        14 => format!(
            "/index.php?option=com_content&view=article&id={}&Itemid={}",
            n(r, 900),
            n(r, 90)
        ),
        15 => format!("/search?q={}+{}", w(r), w(r)),
        16 => r
            .pick(&["/favicon.ico", "/robots.txt", "/sitemap.xml", "/"])
            .to_owned(),
        17 => format!(
            "/blog/{}/{:02}/{}-{}/",
            2015 + r.below(10),
            n(r, 12),
            w(r),
            w(r)
        ),
        18 => format!("/products/{}-{}.html", w(r), n(r, 500)),
        19 => r
            .pick(&[
                "/login",
                "/account/settings",
                "/cart",
                "/checkout",
                "/logout",
            ])
            .to_owned(),
        20 => format!(
            "/js/{}.js",
            r.pick(&["main", "app", "vendor", "jquery.min", "bootstrap.min"])
        ),
        21 => format!(
            "/css/{}.css",
            r.pick(&["style", "main", "bootstrap.min", "print"])
        ),
        22 => format!("/fonts/{}.woff2", r.pick(FONTS)),
        23 => {
            let name = w(r);
            let a = &name[..1];
            let b = &name[1..2];
            format!("/media/catalog/product/{a}/{b}/{name}-{}.jpg", n(r, 40))
        }
        24 => format!("/images/{}/{}.gif", w(r), w(r)),
        25 => format!("/download/{}-{}.pdf", w(r), 2015 + r.below(10)),
        26 => r
            .pick(&["/admin/", "/administrator/index.php", "/user/login"])
            .to_owned(),
        27 => format!("/includes/js/{}.js", w(r)),
        28 => format!("/components/com_{}/assets/{}.css", w(r), w(r)),
        29 => format!("/uploads/{}_{}.png", w(r), n(r, 300)),
        30 => format!("/{}/{}", w(r), w(r)),
        31 => format!("/{}.html", w(r)),
        32 => format!("/en/{}/{}/", w(r), w(r)),
        33 => format!(
            "/cdn-cgi/scripts/{}/cloudflare-static/email-decode.min.js",
            hash(r)
        ),
        _ => unreachable!(),
    }
}

/// An IPv4 (link type RAW) TCP segment from a client to a web server carrying `payload`.
fn http_frame(i: usize, payload: &[u8]) -> Vec<u8> {
    let mut t = (20_000 + (i % 40_000) as u16).to_be_bytes().to_vec();
    t.extend_from_slice(&80u16.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(payload);
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 6, 0, 0];
    p[2..4].copy_from_slice(&((20 + t.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[10, 0, 0, 66]);
    p.extend_from_slice(&[192, 0, 2, 80]);
    p.extend_from_slice(&t);
    p
}

/// Requests that raised a `URL` event, and the trails hit (trail → requests).
fn url_events(
    trails: &Arc<TrailSet>,
    whitelist: &Arc<Whitelist>,
    requests: &[(String, String)],
    extra: bool,
) -> (usize, BTreeMap<String, usize>) {
    let config = ProcessorConfig {
        url_extra_candidates: extra,
        ..ProcessorConfig::with_sensor("fp")
    };
    let mut p = Processor::new(Arc::clone(trails), Arc::clone(whitelist), config);
    let mut requests_hit = 0;
    let mut by_trail = BTreeMap::new();
    for (i, (host, path)) in requests.iter().enumerate() {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\nAccept: */*\r\n\r\n"
        );
        let mut hit = false;
        p.process(
            1_700_000_000_000_000 + i as i64 * 1_000_000,
            LINKTYPE_RAW,
            &http_frame(i, req.as_bytes()),
            &mut |e| {
                if e.kind == EventType::Url {
                    hit = true;
                    *by_trail
                        .entry(format!("{} [{}]", e.trail, e.info))
                        .or_insert(0) += 1;
                }
            },
        );
        requests_hit += usize::from(hit);
    }
    (requests_hit, by_trail)
}

#[test]
fn extra_url_candidates_false_positives_on_clean_traffic() {
    let Some(dir) = shared_data() else { return };
    let trails = Arc::new(
        TrailSet::load(&[dir.join("trails-static")], &LoadOptions::default())
            .expect("loading the static tree"),
    );
    let wl_path = dir.join("data/whitelist.txt");
    let whitelist = Arc::new(if wl_path.is_file() {
        Whitelist::load(&wl_path).expect("whitelist")
    } else {
        Whitelist::empty()
    });

    let mut rng = Rng(0x5eed_0fc1_ea47_a5a5);
    let requests: Vec<(String, String)> = (0..REQUESTS)
        .map(|_| {
            let host = rng.pick(HOSTS).to_owned();
            (host, benign_path(&mut rng))
        })
        .collect();

    let (maltrail, maltrail_trails) = url_events(&trails, &whitelist, &requests, false);
    let (extra, extra_trails) = url_events(&trails, &whitelist, &requests, true);
    eprintln!(
        "URL trails: {}; clean requests: {REQUESTS}; with URL events: Maltrail's candidates \
         {maltrail} ({:.2}%), with url_extra_candidates {extra} ({:.2}%)",
        trails.urls.len(),
        100.0 * maltrail as f64 / REQUESTS as f64,
        100.0 * extra as f64 / REQUESTS as f64,
    );
    eprintln!("trails hit with Maltrail's candidates: {maltrail_trails:#?}");
    eprintln!("trails hit with the extras: {extra_trails:#?}");
    // The extras only add candidates after Maltrail's: never fewer hits.
    assert!(extra >= maltrail, "{extra} < {maltrail}");
    // The figure the README quotes: no false positive on this clean set, either way.
    assert_eq!(
        (maltrail, extra),
        (0, 0),
        "{maltrail_trails:#?} {extra_trails:#?}"
    );

    // What the extras reach that Maltrail cannot: trails ending in `/` below a host root
    // (`host/dir/`) or bare directory trails (`/dir/`), which match any file under them.
    let dir_trails: Vec<&str> = trails
        .urls
        .iter()
        .map(|(t, _)| t)
        .filter(|t| t.len() > 1 && t.ends_with('/') && t[..t.len() - 1].contains('/'))
        .collect();
    let bare_dirs = dir_trails.iter().filter(|t| t.starts_with('/')).count();
    eprintln!(
        "trails only the extras reach: {} (bare /dir/: {bare_dirs}): {dir_trails:?}",
        dir_trails.len()
    );
    let mut newly_reached = 0;
    for t in &dir_trails {
        let (host, path) = match t.find('/') {
            Some(0) => ("clean.example", *t),
            Some(i) => (&t[..i], &t[i..]),
            None => unreachable!(),
        };
        let file = [(host.to_owned(), format!("{path}readme-7f3a.txt"))];
        let (with_maltrail, _) = url_events(&trails, &whitelist, &file, false);
        let (with_extras, hit) = url_events(&trails, &whitelist, &file, true);
        assert!(with_extras >= with_maltrail, "{t}");
        if with_maltrail == 0 && with_extras == 1 {
            newly_reached += 1;
        } else {
            eprintln!("{t}: already reached without the extras (another trail): {hit:?}");
        }
    }
    eprintln!("directory trails reached only with the extras: {newly_reached}");
}
