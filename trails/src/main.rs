//! `xtrail-trails`: build, sign, verify compiled trail sets; show feed status.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use xtrail_detect::trails::compiled;
use xtrail_trails::build::{build, BuildConfig, BuildError};
use xtrail_trails::fetch::FetchOptions;
use xtrail_trails::{feeds, keys, status};

#[derive(Parser)]
#[command(
    name = "xtrail-trails",
    version,
    about = "Build xtrail's compiled trail sets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Build one set from the static tree, custom folders, feeds and indicator files.
    Build {
        /// Output set file (replaced atomically, only if the new set is accepted).
        #[arg(long)]
        out: PathBuf,
        /// Maltrail static trail tree.
        #[arg(long = "static")]
        static_dir: Option<PathBuf>,
        /// Custom trail folder (`*.txt`, info from the file name; repeatable).
        #[arg(long)]
        custom: Vec<PathBuf>,
        /// Feed definitions file (`shipped` for Maltrail's feeds; repeatable).
        #[arg(long)]
        feeds: Vec<String>,
        /// Only these feeds (comma-separated names), enabled or not.
        #[arg(long = "only-feeds")]
        only_feeds: Option<String>,
        /// Zeek Intel, MISP CSV or STIX 2.1 file (repeatable).
        #[arg(long)]
        indicators: Vec<PathBuf>,
        /// Cache folder for feed bodies and status.
        #[arg(long, default_value = "/var/cache/xtrail/trails")]
        cache: PathBuf,
        /// Refuse a set smaller than this fraction of the current one.
        #[arg(long = "min-ratio", default_value_t = 0.5)]
        min_ratio: f64,
        /// The set in use (default: --out if it exists).
        #[arg(long)]
        current: Option<PathBuf>,
        /// Sign with this private key file (from `keygen`).
        #[arg(long)]
        sign: Option<String>,
        /// Maltrail data folder: whitelist.txt, bogon_ranges.txt, cdn_ranges.txt.
        #[arg(long = "maltrail-data")]
        maltrail_data: Option<PathBuf>,
        /// Use cached feed bodies, fetch nothing.
        #[arg(long)]
        offline: bool,
        /// Feed-only IPv4 trails need this many sources (Maltrail's IP_MINIMUM_FEEDS).
        #[arg(long = "ip-minimum-feeds", default_value_t = 3)]
        ip_minimum_feeds: usize,
        /// Per-request timeout in seconds.
        #[arg(long = "fetch-timeout", default_value_t = 60)]
        fetch_timeout: u64,
        /// Largest feed body in bytes.
        #[arg(long = "max-feed-bytes", default_value_t = 64 << 20)]
        max_feed_bytes: u64,
        /// Retries per feed (network errors, 5xx), with doubling backoff.
        #[arg(long, default_value_t = 2)]
        retries: u32,
        /// First retry backoff in milliseconds.
        #[arg(long = "backoff-ms", default_value_t = 2000)]
        backoff_ms: u64,
    },
    /// Per-feed status from a cache folder.
    Status {
        /// Cache folder.
        #[arg(long, default_value = "/var/cache/xtrail/trails")]
        cache: PathBuf,
        /// Prometheus text format.
        #[arg(long)]
        prometheus: bool,
    },
    /// Write a new ed25519 private key file (and KEY.pub); print the public key.
    Keygen {
        /// Private key file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a set's checksum (and signature, with --public-key); print its version.
    Verify {
        /// The set file.
        set: PathBuf,
        /// Public key (file or 64 hex digits); the set must be signed by it.
        #[arg(long = "public-key")]
        public_key: Option<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtrail-trails: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Build {
            out,
            static_dir,
            custom,
            feeds: feed_files,
            only_feeds,
            indicators,
            cache,
            min_ratio,
            current,
            sign,
            maltrail_data,
            offline,
            ip_minimum_feeds,
            fetch_timeout,
            max_feed_bytes,
            retries,
            backoff_ms,
        } => {
            let mut defs = Vec::new();
            for f in &feed_files {
                defs.extend(feeds::load_defs(f)?);
            }
            if let Some(only) = only_feeds {
                let names: Vec<&str> = only.split(',').map(str::trim).collect();
                defs.retain(|d| names.contains(&d.name.as_str()));
                defs.iter_mut().for_each(|d| d.enabled = true);
            }
            let signing_key = sign.as_deref().map(keys::read_key).transpose()?;
            let cfg = BuildConfig {
                out: out.clone(),
                static_dir,
                custom,
                feeds: defs,
                indicators,
                cache,
                min_ratio,
                current,
                signing_key,
                maltrail_data,
                offline,
                ip_minimum_feeds,
                fetch: FetchOptions {
                    timeout: Duration::from_secs(fetch_timeout),
                    max_bytes: max_feed_bytes,
                    retries,
                    backoff: Duration::from_millis(backoff_ms),
                },
            };
            match build(&cfg) {
                Ok(o) => {
                    for f in &o.feeds {
                        if f.state != "ok" && f.state != "not_modified" {
                            eprintln!(
                                "xtrail-trails: feed {}: {}: {}{}",
                                f.name,
                                f.state,
                                f.last_error,
                                if f.using_cache {
                                    " (using cached copy)"
                                } else {
                                    ""
                                }
                            );
                        }
                    }
                    eprintln!("xtrail-trails: {}", o.summary);
                    println!("{} {} {} trails", out.display(), o.version, o.trails);
                    Ok(ExitCode::SUCCESS)
                }
                Err(e @ (BuildError::Empty | BuildError::Shrank { .. })) => {
                    eprintln!(
                        "xtrail-trails: refused: {e} ({} not replaced)",
                        out.display()
                    );
                    Ok(ExitCode::from(2))
                }
                Err(e) => {
                    eprintln!(
                        "xtrail-trails: build failed: {e} ({} not replaced)",
                        out.display()
                    );
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Status { cache, prometheus } => {
            let s = status::all(&cache);
            if prometheus {
                print!("{}", status::prometheus(&s));
            } else {
                print!("{}", status::text(&s));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Keygen { out } => {
            let (seed, public) = compiled::generate_key().context("reading /dev/urandom")?;
            keys::write_key(&out, &seed, true)?;
            let pub_path = PathBuf::from(format!("{}.pub", out.display()));
            keys::write_key(&pub_path, &public, false)?;
            eprintln!(
                "xtrail-trails: private key {}, public key {}",
                out.display(),
                pub_path.display()
            );
            println!("{}", keys::hex(&public));
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { set, public_key } => {
            let key = public_key.as_deref().map(keys::read_key).transpose()?;
            let h = compiled::verify_file(&set, key.as_ref())
                .with_context(|| format!("{}", set.display()))?;
            let signer = h.signer.map_or_else(
                || "unsigned".to_owned(),
                |k| format!("signed by {}", keys::hex(&k)),
            );
            println!("{} {} {}", set.display(), h.version, signer);
            Ok(ExitCode::SUCCESS)
        }
    }
}
