//! The background sender: one thread, one current-thread tokio runtime, one
//! `Ingest.Publish` stream at a time. On each connection it asks the collector's limits
//! (`Ingest.GetLimits`; UNIMPLEMENTED from an older collector means the defaults), then reads
//! the spool from the first unacknowledged event in batches within both its own and the
//! collector's limits, keeps up to `max_in_flight` batches unacknowledged, records each
//! acknowledgement in the spool, and on any error reconnects with backoff and starts again
//! from the first unacknowledged event. A refused credential is recorded as such (see
//! `Shared::refused`) and retried like any error.
//!
//! Several collector URLs (`url`, then `fallback_urls`): a stream that cannot be opened,
//! breaks, or finds the collector `NOT_SERVING` moves on to the next URL at once; the
//! backoff applies after each full round of the list. On a fallback the stream is ended
//! after `failback_after` and `url` tried again.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use xtrail_proto::v1::ingest_client::IngestClient;
use xtrail_proto::v1::{GetLimitsRequest, Limits, PublishRequest};

use crate::backoff::Backoff;
use crate::spool::SpoolReader;
use crate::{PublishError, PublisherConfig, Shared};

/// How to open a channel: the endpoints (with TLS), `url` first, and the authorization
/// header, validated when the publisher starts so that a typo fails there and not in a log
/// line later.
#[derive(Clone, Debug)]
pub(crate) struct Connect {
    /// (URL, endpoint), tried in turn.
    targets: Vec<(String, Endpoint)>,
    pub(crate) auth: Option<MetadataValue<Ascii>>,
}

/// Adds the sensor's token (if any) to every request of a client.
#[derive(Clone, Debug)]
pub(crate) struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

impl Connect {
    /// An `Ingest` client on `channel` that sends the sensor's token.
    pub(crate) fn ingest(
        &self,
        channel: tonic::transport::Channel,
    ) -> IngestClient<
        tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
    > {
        IngestClient::with_interceptor(channel, Bearer(self.auth.clone()))
    }

    pub fn new(cfg: &PublisherConfig) -> Result<Self, PublishError> {
        let targets = std::iter::once(&cfg.url)
            .chain(&cfg.fallback_urls)
            .map(|url| Ok((url.clone(), endpoint(cfg, url)?)))
            .collect::<Result<Vec<_>, PublishError>>()?;
        let auth = if cfg.token.is_empty() {
            None
        } else {
            Some(format!("Bearer {}", cfg.token).parse().map_err(|_| {
                PublishError::Config("token contains characters not allowed in a header".into())
            })?)
        };
        Ok(Connect { targets, auth })
    }
}

/// One collector's endpoint, with the TLS settings of `cfg`.
fn endpoint(cfg: &PublisherConfig, url: &str) -> Result<Endpoint, PublishError> {
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| PublishError::Config(format!("collector URL {url:?}: {e}")))?
        .connect_timeout(cfg.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10));
    if url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new().with_webpki_roots();
        if let Some(ca) = &cfg.ca_cert {
            let pem = std::fs::read(ca).map_err(|e| {
                PublishError::Config(format!("reading CA certificate {}: {e}", ca.display()))
            })?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        if let Some(domain) = &cfg.tls_domain {
            tls = tls.domain_name(domain.clone());
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| PublishError::Config(format!("TLS: {e}")))?;
    } else if !url.starts_with("http://") {
        return Err(PublishError::Config(format!(
            "collector URL {url:?} must start with http:// or https://"
        )));
    }
    Ok(endpoint)
}

/// The sender thread's body.
pub(crate) fn run(shared: Arc<Shared>, cfg: PublisherConfig, connect: Connect) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            shared.set_error(Some(format!("cannot start the sender runtime: {e}")));
            log::error!("xtrail-publish: cannot start the sender runtime: {e}");
            return;
        }
    };
    rt.block_on(async move {
        if let Some(every) = cfg.fsync_interval {
            tokio::spawn(fsync_loop(Arc::clone(&shared), every));
        }
        let mut backoff = Backoff::new(cfg.backoff_min, cfg.backoff_max);
        let mut current = 0;
        while !shared.stop.load(Ordering::SeqCst) {
            // On a fallback, end the stream after a while to try `url` again.
            let failback = (current > 0).then(|| Instant::now() + cfg.failback_after);
            let result = session(&shared, &cfg, &connect, current, &mut backoff, failback).await;
            shared.connected.store(false, Ordering::SeqCst);
            *shared.channel.lock().unwrap_or_else(|p| p.into_inner()) = None;
            match &result {
                Ok(Ended::FailBack) => {
                    log::info!(
                        "xtrail-publish: back to {} after {:?} on {}",
                        connect.targets[0].0,
                        cfg.failback_after,
                        connect.targets[current].0
                    );
                    current = 0;
                    continue;
                }
                Ok(Ended::Stopped) => {}
                Err(_) if connect.targets.len() > 1 => {
                    current = (current + 1) % connect.targets.len();
                }
                Err(_) => {}
            }
            if let Err(e) = result {
                let e = match e {
                    SessionError::Refused(why) => {
                        // Counted and reported by the caller (Stats, flush): no log per retry.
                        log::debug!("xtrail-publish: collector refused the credential: {why}");
                        shared.refused(why.clone());
                        format!("collector refused the credential: {why}")
                    }
                    SessionError::Other(e) => {
                        log::warn!("xtrail-publish: {e}");
                        e
                    }
                };
                shared.set_error(Some(e));
                if current != 0 {
                    // Next URL of the round at once; the backoff after a full round.
                    log::info!("xtrail-publish: trying {}", connect.targets[current].0);
                    continue;
                }
                let delay = backoff.next_delay();
                let until = tokio::time::Instant::now() + delay;
                while tokio::time::Instant::now() < until && !shared.stop.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
}

async fn fsync_loop(shared: Arc<Shared>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let s = Arc::clone(&shared);
        let res = tokio::task::spawn_blocking(move || s.spool.sync()).await;
        if let Ok(Err(e)) = res {
            log::warn!("xtrail-publish: {e}");
        }
    }
}

/// Why a stream ended without an error.
enum Ended {
    /// Asked to stop.
    Stopped,
    /// On a fallback URL for `failback_after`: time to try `url` again.
    FailBack,
}

/// Why a stream ended.
enum SessionError {
    /// The collector refused the credential.
    Refused(String),
    /// Anything else: connection, stream, storage, a refused batch.
    Other(String),
}

impl From<String> for SessionError {
    fn from(e: String) -> Self {
        SessionError::Other(e)
    }
}

/// A status from the collector, sorted into a refusal or another error.
fn status_error(context: &str, s: &Status) -> SessionError {
    match s.code() {
        Code::Unauthenticated | Code::PermissionDenied => {
            SessionError::Refused(format!("{:?}: {}", s.code(), s.message()))
        }
        code => SessionError::Other(format!("{context}: {code:?}: {}", s.message())),
    }
}

/// Batch bounds: ours, lowered to the collector's. Room is left for the request's own
/// fields (the stream id) beside the events.
fn batch_bounds(cfg: &PublisherConfig, limits: &Limits) -> (usize, usize) {
    let events = match usize::try_from(limits.max_batch_events) {
        Ok(0) | Err(_) => cfg.batch_max_events,
        Ok(n) => cfg.batch_max_events.min(n),
    };
    let bytes = match usize::try_from(limits.max_batch_bytes) {
        Ok(0) | Err(_) => cfg.batch_max_bytes,
        Ok(n) => cfg.batch_max_bytes.min(n.saturating_sub(1024).max(1)),
    };
    (events.max(1), bytes)
}

/// One stream to `connect.targets[target]`: returns Ok when asked to stop or at
/// `failback`, Err when the stream broke or the collector is not serving.
async fn session(
    shared: &Shared,
    cfg: &PublisherConfig,
    connect: &Connect,
    target: usize,
    backoff: &mut Backoff,
    failback: Option<Instant>,
) -> Result<Ended, SessionError> {
    let (url, endpoint) = &connect.targets[target];
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("connecting to {url}: {}", error_chain(&e)))?;
    // A collector whose store fails says NOT_SERVING: go to the next one. Any other answer
    // (no health service: an older collector) lets the stream itself tell.
    let check = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "xtrail.v1.Ingest".into(),
        })
        .await;
    if check.is_ok_and(|r| r.get_ref().status() == ServingStatus::NotServing) {
        return Err(format!("collector {url}: NOT_SERVING").into());
    }
    let spool = &shared.spool;
    let channel_for_heartbeats = channel.clone();
    let mut client = connect.ingest(channel).max_encoding_message_size(64 << 20);
    let limits = match client.get_limits(GetLimitsRequest {}).await {
        Ok(l) => l.into_inner(),
        Err(s) if s.code() == Code::Unimplemented => xtrail_proto::limits::default_limits(),
        Err(s) => return Err(status_error("collector: GetLimits", &s)),
    };
    let (batch_events, batch_bytes) = batch_bounds(cfg, &limits);
    log::debug!(
        "xtrail-publish: collector limits {} events / {} bytes per batch; sending batches of at most {batch_events} events / {batch_bytes} bytes",
        limits.max_batch_events,
        limits.max_batch_bytes
    );
    let (tx, rx) = tokio::sync::mpsc::channel(cfg.max_in_flight + 1);
    let mut acks = client
        .publish(ReceiverStream::new(rx))
        .await
        .map_err(|s| status_error("collector refused the stream", &s))?
        .into_inner();
    shared.connects.fetch_add(1, Ordering::Relaxed);
    shared.connected.store(true, Ordering::SeqCst);
    *shared.channel.lock().unwrap_or_else(|p| p.into_inner()) = Some(channel_for_heartbeats);
    shared.refused_now.store(false, Ordering::SeqCst);
    let stream_id = spool.stream_id().to_string();

    let mut reader = SpoolReader::new(spool.acked_seq() + 1);
    // (last seq, event count) of each batch sent and not yet acknowledged.
    let mut in_flight: VecDeque<(u64, u64)> = VecDeque::new();
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return Ok(Ended::Stopped);
        }
        if failback.is_some_and(|at| Instant::now() >= at) {
            return Ok(Ended::FailBack);
        }
        while in_flight.len() < cfg.max_in_flight {
            let batch = reader
                .next_batch(spool, batch_events, batch_bytes)
                .map_err(|e| e.to_string())?;
            let Some(last) = batch.last().map(|e| e.seq) else {
                break;
            };
            let n = batch.len() as u64;
            let req = PublishRequest {
                sensor_id: stream_id.clone(),
                events: batch,
            };
            tx.send(req)
                .await
                .map_err(|_| "the collector closed the stream".to_string())?;
            shared.sent.fetch_add(n, Ordering::Relaxed);
            in_flight.push_back((last, n));
        }
        tokio::select! {
            msg = acks.message() => match msg {
                Ok(Some(ack)) => {
                    // Count first: `flush` returns as soon as the spool shows the ack.
                    while let Some(&(last, n)) = in_flight.front() {
                        if last > ack.committed_seq {
                            break;
                        }
                        shared.acked.fetch_add(n, Ordering::SeqCst);
                        in_flight.pop_front();
                    }
                    spool.ack(ack.committed_seq).map_err(|e| e.to_string())?;
                    backoff.reset();
                    shared.set_error(None);
                    shared.refused_now.store(false, Ordering::SeqCst);
                }
                Ok(None) => return Err("the collector ended the stream".to_string().into()),
                Err(s) => return Err(status_error("collector", &s)),
            },
            () = shared.notify.notified(), if in_flight.len() < cfg.max_in_flight => {}
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                // Idle: write the last acknowledgement that waited for the interval.
                spool.persist_acked(false).map_err(|e| e.to_string())?;
            }
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}
