//! Trail sets from the collector (`run --trails-from-collector`).
//!
//! A thread follows the collector's `Trails.Watch` stream (same URL, token and CA as the
//! event link). When the collector serves a version the sensor does not run, it fetches the
//! set, verifies its checksum and its ed25519 signature with `--trails-public-key`, stores it
//! as `<state dir>/trails/current.xtrails` (so the next start needs no collector) and hands
//! it to the reloader, which hot-swaps it. A set that is unsigned, signed by another key or
//! altered is refused and the current set kept; the refusal is logged once per version.
//! After an install the sensor reports its new version (`Trails.Current`), which the
//! collector shows as `xtrail_sensor_trail_set{sensor,version}`.
//!
//! When the stored set is the one running, the sensor first asks for a delta
//! (`Trails.FetchDelta`), rebuilds the new file from the stored one and checks the result
//! exactly as a full transfer (size, SHA-256, then signature). A delta that is unavailable,
//! damaged or rebuilds a file that fails a check is refused, and the whole set is fetched.
//! Deltas applied are counted in [`DELTAS_APPLIED`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use xtrail_detect::shared_trails::SharedTrails;
use xtrail_detect::trails::{compiled, delta, CompiledSet};
use xtrail_proto::v1::trails_client::TrailsClient;
use xtrail_proto::v1::{FetchRequest, TrailSetInfo, TrailsRequest};

use crate::reload::{Inbox, Request};

/// Largest set accepted from a collector.
pub const MAX_SET_BYTES: u64 = 1 << 30;

/// Deltas from the collector applied and verified since start.
pub static DELTAS_APPLIED: AtomicU64 = AtomicU64::new(0);
/// Deltas discarded (damaged, or rebuilding a set that fails a check); the whole set was
/// fetched instead.
pub static DELTAS_DISCARDED: AtomicU64 = AtomicU64::new(0);

/// Reads an ed25519 public key: 64 hex digits, or a file holding them.
pub fn read_public_key(text: &str) -> anyhow::Result<[u8; 32]> {
    let parse = compiled::parse_key_hex;
    if let Some(k) = parse(text) {
        return Ok(k);
    }
    let body = std::fs::read_to_string(text).with_context(|| {
        format!("--trails-public-key {text}: not 64 hex digits nor a readable file")
    })?;
    parse(&body).with_context(|| format!("{text}: not a public key (expected 64 hex digits)"))
}

/// Where a set from the collector is kept.
pub fn stored_set(state_dir: &Path) -> PathBuf {
    state_dir.join("trails").join("current.xtrails")
}

/// What the puller needs.
#[derive(Clone, Debug)]
pub struct PullOptions {
    pub url: String,
    pub token: String,
    pub ca_cert: Option<PathBuf>,
    pub sensor_name: String,
    pub state_dir: PathBuf,
    pub public_key: [u8; 32],
}

/// The running puller; dropping it stops it.
pub struct TrailPuller {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for TrailPuller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn client(
    o: &PullOptions,
) -> anyhow::Result<
    TrailsClient<
        tonic::service::interceptor::InterceptedService<
            tonic::transport::Channel,
            impl tonic::service::Interceptor,
        >,
    >,
> {
    let mut endpoint = Endpoint::from_shared(o.url.clone())
        .with_context(|| format!("collector URL {}", o.url))?
        .connect_timeout(Duration::from_secs(10));
    if o.url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new().with_webpki_roots();
        if let Some(ca) = &o.ca_cert {
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        endpoint = endpoint.tls_config(tls)?;
    }
    let channel = endpoint.connect().await?;
    let auth: Option<MetadataValue<_>> = (!o.token.is_empty())
        .then(|| format!("Bearer {}", o.token).parse())
        .transpose()
        .context("the token is not a valid header value")?;
    Ok(
        TrailsClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
            if let Some(a) = &auth {
                req.metadata_mut().insert("authorization", a.clone());
            }
            Ok(req)
        })
        .max_decoding_message_size(4 << 20),
    )
}

/// Fetches version `info.version` whole, checks its size and hash.
async fn fetch<S>(
    c: &mut TrailsClient<S>,
    o: &PullOptions,
    running: &str,
    info: &TrailSetInfo,
) -> anyhow::Result<Vec<u8>>
where
    S: tonic::client::GrpcService<tonic::body::Body>,
    S::Error: Into<tonic::codegen::StdError>,
    S::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <S::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    if info.size > MAX_SET_BYTES {
        bail!("the set is {} bytes, more than {MAX_SET_BYTES}", info.size);
    }
    let mut stream = c
        .fetch(FetchRequest {
            sensor: o.sensor_name.clone(),
            running_version: running.to_string(),
            version: info.version.clone(),
        })
        .await?
        .into_inner();
    let mut bytes = Vec::with_capacity(info.size as usize);
    while let Some(chunk) = stream.message().await? {
        append_chunk(&mut bytes, chunk.offset, &chunk.data, info.size, "")?;
    }
    check_announced(&bytes, info)?;
    Ok(bytes)
}

/// Appends one streamed chunk: it must start where the bytes so far end and stay within
/// `announced` (`what` names the stream in the errors).
fn append_chunk(
    bytes: &mut Vec<u8>,
    offset: u64,
    data: &[u8],
    announced: u64,
    what: &str,
) -> anyhow::Result<()> {
    if offset != bytes.len() as u64 {
        bail!("{what}chunk at {offset} where {} was expected", bytes.len());
    }
    if bytes.len() as u64 + data.len() as u64 > announced {
        bail!("more {what}bytes than the announced {announced}");
    }
    bytes.extend_from_slice(data);
    Ok(())
}

/// Checks `bytes` against the announced size and SHA-256.
fn check_announced(bytes: &[u8], info: &TrailSetInfo) -> anyhow::Result<()> {
    if bytes.len() as u64 != info.size {
        bail!("{} of {} bytes received", bytes.len(), info.size);
    }
    use sha2::Digest as _;
    if sha2::Sha256::digest(bytes).as_slice() != info.sha256.as_slice() {
        bail!("the bytes received do not match the announced SHA-256");
    }
    Ok(())
}

/// Fetches the delta from `running` to `info.version` (unchecked bytes).
async fn fetch_delta<S>(
    c: &mut TrailsClient<S>,
    o: &PullOptions,
    running: &str,
    info: &TrailSetInfo,
) -> anyhow::Result<Vec<u8>>
where
    S: tonic::client::GrpcService<tonic::body::Body>,
    S::Error: Into<tonic::codegen::StdError>,
    S::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <S::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let mut stream = c
        .fetch_delta(FetchRequest {
            sensor: o.sensor_name.clone(),
            running_version: running.to_string(),
            version: info.version.clone(),
        })
        .await?
        .into_inner();
    let mut bytes = Vec::new();
    let mut total = None;
    while let Some(chunk) = stream.message().await? {
        let t = *total.get_or_insert(chunk.delta_size);
        if t > MAX_SET_BYTES {
            bail!("more delta bytes than the announced {t}");
        }
        append_chunk(&mut bytes, chunk.offset, &chunk.data, t, "delta ")?;
    }
    if total != Some(bytes.len() as u64) {
        bail!("{} delta bytes received of {total:?}", bytes.len());
    }
    Ok(bytes)
}

/// Rebuilds the set `info` announces from `base` and `delta`, and checks it: the delta's
/// own checksum of its result (`delta::apply`), the announced size and version, and the
/// set's checksum and signature with `public_key` (two passes over the bytes, not four).
pub fn rebuild(
    base: &[u8],
    delta_bytes: &[u8],
    info: &TrailSetInfo,
    public_key: &[u8; 32],
) -> anyhow::Result<Vec<u8>> {
    rebuild_checked(base, delta_bytes, info, public_key).map(|(bytes, _)| bytes)
}

/// [`rebuild`], with the verified header.
fn rebuild_checked(
    base: &[u8],
    delta_bytes: &[u8],
    info: &TrailSetInfo,
    public_key: &[u8; 32],
) -> anyhow::Result<(Vec<u8>, compiled::Header)> {
    let bytes = delta::apply(base, delta_bytes, info.size.min(MAX_SET_BYTES))?;
    if bytes.len() as u64 != info.size {
        bail!("{} of {} bytes rebuilt", bytes.len(), info.size);
    }
    let header = compiled::verify_bytes(&bytes, Some(public_key))?;
    if header.version != info.version {
        bail!(
            "the delta rebuilt version {}, not the announced {}",
            header.version,
            info.version
        );
    }
    Ok((bytes, header))
}

/// The stored set's bytes if it is version `running`.
fn stored_base(o: &PullOptions, running: &str) -> Option<Vec<u8>> {
    if running.is_empty() {
        return None;
    }
    let bytes = std::fs::read(stored_set(&o.state_dir)).ok()?;
    let header = compiled::read_header(&bytes).ok()?;
    (header.version == running).then_some(bytes)
}

/// The set `info` announces: by delta from the stored set when possible, else whole.
/// Returns the bytes, their header when a delta rebuilt them (already verified), and
/// whether a delta was used.
async fn obtain<S>(
    c: &mut TrailsClient<S>,
    o: &PullOptions,
    running: &str,
    info: &TrailSetInfo,
) -> anyhow::Result<(Vec<u8>, Option<compiled::Header>, bool)>
where
    S: tonic::client::GrpcService<tonic::body::Body>,
    S::Error: Into<tonic::codegen::StdError>,
    S::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <S::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    if let Some(base) = stored_base(o, running) {
        // Unavailable (not kept, not smaller) is normal; a delta that does not rebuild the
        // announced, signed set is discarded. Either way the whole set is fetched.
        match fetch_delta(c, o, running, info).await {
            Err(e) => log::info!("no delta for trail set {}: {e:#}", info.version),
            Ok(d) => match rebuild_checked(&base, &d, info, &o.public_key) {
                Ok((bytes, header)) => {
                    DELTAS_APPLIED.fetch_add(1, Ordering::Relaxed);
                    eprintln!(
                        "xtrail-sensor: trail set {} rebuilt from a {}-byte delta against {running}",
                        info.version,
                        d.len()
                    );
                    return Ok((bytes, Some(header), true));
                }
                Err(e) => {
                    DELTAS_DISCARDED.fetch_add(1, Ordering::Relaxed);
                    eprintln!(
                        "xtrail-sensor: delta to trail set {} discarded, fetching the whole set: {e:#}",
                        info.version
                    );
                }
            },
        }
    }
    Ok((fetch(c, o, running, info).await?, None, false))
}

/// Verifies `bytes` with the key (unless `verified` is their header, already checked) and
/// installs them; returns the version.
fn verify_and_store(
    o: &PullOptions,
    bytes: &[u8],
    verified: Option<compiled::Header>,
) -> anyhow::Result<(PathBuf, String)> {
    let header = match verified {
        Some(h) => h,
        None => compiled::verify_bytes(bytes, Some(&o.public_key))?,
    };
    let path = stored_set(&o.state_dir);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    compiled::write_atomic(&path, bytes)?;
    Ok((path, header.version))
}

impl TrailPuller {
    /// Starts following the collector; new sets go to `inbox`, `shared` says what runs.
    pub fn start(o: PullOptions, inbox: Arc<Inbox>, shared: SharedTrails) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("xtrail-trails".into())
            .spawn(move || runtime.block_on(follow(o, inbox, shared, s)))?;
        Ok(TrailPuller {
            stop,
            thread: Some(thread),
        })
    }
}

async fn follow(o: PullOptions, inbox: Arc<Inbox>, shared: SharedTrails, stop: Arc<AtomicBool>) {
    let mut backoff = Duration::from_secs(1);
    let mut refused: Option<String> = None;
    while !stop.load(Ordering::Relaxed) {
        let result = follow_once(&o, &inbox, &shared, &stop, &mut refused).await;
        if let Err(e) = result {
            log::warn!("trail sets from the collector: {e:#}; retrying in {backoff:?}");
            let until = Instant::now() + backoff;
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        } else {
            backoff = Duration::from_secs(1);
        }
    }
}

async fn follow_once(
    o: &PullOptions,
    inbox: &Inbox,
    shared: &SharedTrails,
    stop: &AtomicBool,
    refused: &mut Option<String>,
) -> anyhow::Result<()> {
    let mut c = client(o).await?;
    let running = shared.load().version.clone();
    let mut watch = c
        .watch(TrailsRequest {
            sensor: o.sensor_name.clone(),
            running_version: running,
        })
        .await?
        .into_inner();
    loop {
        let next = tokio::select! {
            m = watch.message() => m?,
            () = async {
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            } => return Ok(()),
        };
        let Some(info) = next else {
            bail!("the collector ended the watch");
        };
        let running = shared.load().version.clone();
        if info.version == running || refused.as_deref() == Some(info.version.as_str()) {
            continue;
        }
        let (bytes, verified, _) = obtain(&mut c, o, &running, &info).await?;
        let (path, version) = match verify_and_store(o, &bytes, verified) {
            Ok(v) => v,
            Err(e) => {
                eprintln!(
                    "xtrail-sensor: trail set {} from the collector refused, keeping version {running}: {e:#}",
                    info.version
                );
                *refused = Some(info.version.clone());
                continue;
            }
        };
        let set = CompiledSet::open(&path, Some(&o.public_key))
            .with_context(|| format!("opening {}", path.display()))?;
        eprintln!(
            "xtrail-sensor: trail set {version} received from the collector ({} bytes, signature good)",
            bytes.len()
        );
        drop(bytes);
        inbox.push(Request::Install {
            why: "collector",
            version: version.clone(),
            trails: Box::new(set.into_trails()),
        });
        // Report the new version once it runs (bounded wait).
        let deadline = Instant::now() + Duration::from_secs(60);
        while shared.load().version != version && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        c.current(TrailsRequest {
            sensor: o.sensor_name.clone(),
            running_version: shared.load().version.clone(),
        })
        .await?;
    }
}

/// At start without a stored set: fetches the collector's current set once, verifies and
/// stores it; returns where.
pub fn pull_once(o: &PullOptions) -> anyhow::Result<PathBuf> {
    pull(o).map(|p| p.path)
}

/// What [`pull`] stored.
#[derive(Clone, Debug)]
pub struct Pulled {
    pub path: PathBuf,
    pub version: String,
    /// Rebuilt from a delta against the stored set.
    pub via_delta: bool,
}

/// Fetches the collector's current set once (by delta from the stored set when it can),
/// verifies and stores it.
pub fn pull(o: &PullOptions) -> anyhow::Result<Pulled> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut c = client(o).await?;
        let running = std::fs::read(stored_set(&o.state_dir))
            .ok()
            .and_then(|b| compiled::read_header(&b).ok())
            .map(|h| h.version)
            .unwrap_or_default();
        let info = c
            .current(TrailsRequest {
                sensor: o.sensor_name.clone(),
                running_version: running.clone(),
            })
            .await?
            .into_inner();
        let (bytes, verified, via_delta) = obtain(&mut c, o, &running, &info).await?;
        let (path, version) = verify_and_store(o, &bytes, verified)
            .with_context(|| format!("trail set {} from the collector refused", info.version))?;
        eprintln!(
            "xtrail-sensor: trail set {version} received from the collector ({} bytes, signature good)",
            bytes.len()
        );
        Ok(Pulled {
            path,
            version,
            via_delta,
        })
    })
}

/// Fetches the raw delta from `running` to the collector's current set, with the set's
/// announcement (for tests and diagnostics; [`rebuild`] checks it).
pub fn fetch_delta_once(o: &PullOptions, running: &str) -> anyhow::Result<(TrailSetInfo, Vec<u8>)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut c = client(o).await?;
        let info = c
            .current(TrailsRequest {
                sensor: o.sensor_name.clone(),
                running_version: running.to_string(),
            })
            .await?
            .into_inner();
        let d = fetch_delta(&mut c, o, running, &info).await?;
        Ok((info, d))
    })
}
