//! Trail input is bounded (issue 11 item 9): symlink loops and special files fail at once
//! with a clear error, an over-long line is refused (quoted by a short prefix only) without
//! touching the regex engine, garbage lines are refused and counted by reason, and loading
//! memory stays a small multiple of the input (measured with a counting allocator).

use std::alloc::{GlobalAlloc, Layout, System};
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use xtrail_detect::trails::{LoadOptions, MalformedReason, TrailError, TrailSet};

/// Counts live heap bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// Serialises the tests so that the peak belongs to one load.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Peak heap growth during `f`, in bytes.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let r = f();
    (r, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("xtrail-limits-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn symlink_loop_fails_fast() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let d = TempDir::new("loop");
    fs::create_dir_all(d.0.join("malware")).unwrap();
    fs::write(d.0.join("malware/x.txt"), "evil.example\n").unwrap();
    std::os::unix::fs::symlink(&d.0, d.0.join("malware/again")).unwrap();
    let start = Instant::now();
    let r = TrailSet::load(std::slice::from_ref(&d.0), &LoadOptions::default());
    let took = start.elapsed();
    let err = r.expect_err("a symlink loop must fail");
    assert!(matches!(err, TrailError::Loop { .. }), "{err}");
    assert!(err.to_string().contains("loop"), "{err}");
    assert!(took < Duration::from_millis(500), "took {took:?}");
}

#[test]
fn fifo_in_tree_does_not_hang() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let d = TempDir::new("fifo");
    fs::create_dir_all(d.0.join("malware")).unwrap();
    fs::write(d.0.join("malware/a.txt"), "evil.example\n").unwrap();
    let fifo = d.0.join("malware/b.txt");
    let ok = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipping: mkfifo unavailable");
        return;
    }
    let start = Instant::now();
    let err = TrailSet::load(std::slice::from_ref(&d.0), &LoadOptions::default())
        .expect_err("a FIFO must be refused");
    assert!(matches!(err, TrailError::NotAFile { .. }), "{err}");
    assert!(err.to_string().contains("FIFO"), "{err}");
    // Given directly, too.
    let err = TrailSet::load(&[fifo], &LoadOptions::default()).expect_err("FIFO path");
    assert!(matches!(err, TrailError::NotAFile { .. }), "{err}");
    assert!(start.elapsed() < Duration::from_millis(500));
}

#[test]
fn ten_megabyte_nested_line_is_refused_cheaply() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let d = TempDir::new("long");
    let n = 5 * 1024 * 1024;
    let mut line = "(".repeat(n);
    line.push_str(&")".repeat(n));
    let path = d.0.join("nested.txt");
    fs::write(&path, format!("good.example\n{line}\n")).unwrap();
    drop(line);
    let input = fs::metadata(&path).unwrap().len() as usize;
    let start = Instant::now();
    let (t, peak) =
        peak_during(|| TrailSet::load(std::slice::from_ref(&path), &LoadOptions::default()));
    let t = t.expect("loads, refusing the line");
    let took = start.elapsed();
    eprintln!(
        "{input} bytes: peak heap {peak} bytes, {took:?}: {}",
        t.report
    );
    assert_eq!(t.report.domains, 1);
    assert_eq!(t.report.malformed, 1);
    assert_eq!(t.report.malformed_reasons[&MalformedReason::LineTooLong], 1);
    let m = &t.report.malformed_examples[0];
    assert!(
        m.text.len() < 200,
        "quoted line is short: {} bytes",
        m.text.len()
    );
    assert!(t.report.to_string().len() < 1_000);
    assert!(peak < 3 * input, "peak {peak} for {input} input bytes");
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

/// xorshift, so the test needs no crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn random_lines_are_refused_and_counted() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let d = TempDir::new("random");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut text = String::new();
    for _ in 0..100_000 {
        let len = 1 + rng.next() % 60;
        for _ in 0..len {
            // Printable ASCII except '#' (a comment) and whitespace.
            let c = (b'!' + (rng.next() % 94) as u8) as char;
            text.push(if c == '#' { 'x' } else { c });
        }
        text.push('\n');
    }
    let path = d.0.join("random.txt");
    fs::write(&path, &text).unwrap();
    let input = text.len();
    drop(text);
    let start = Instant::now();
    let (t, peak) =
        peak_during(|| TrailSet::load(std::slice::from_ref(&path), &LoadOptions::default()));
    let t = t.expect("loads");
    let took = start.elapsed();
    let r = &t.report;
    eprintln!("{input} bytes: peak heap {peak} bytes, {took:?}: {r}");
    assert_eq!(r.lines, 100_000);
    // Random text has regex metacharacters in most lines; none is a domain pattern.
    assert!(r.regexes <= 5, "{r}");
    let refused = r
        .malformed_reasons
        .get(&MalformedReason::RegexRefused)
        .copied()
        .unwrap_or(0);
    assert!(refused > 40_000, "{r}");
    assert_eq!(
        r.malformed,
        r.malformed_reasons.values().sum::<usize>(),
        "every refusal has a reason"
    );
    assert!(peak < 10 * input, "peak {peak} for {input} input bytes");
}
