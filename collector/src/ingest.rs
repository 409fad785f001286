//! `xtrail.v1.Ingest/Publish`: batches in, acknowledgements out.
//!
//! Every batch is checked, then handed to the single writer thread, which commits it in one
//! transaction (shared with the batches queued behind it: group commit), publishes the
//! newly stored events to live subscribers (in commit order, which is cursor order), and
//! only then lets the stream acknowledge the batch. A stream keeps reading, checking and
//! queueing its next batches (up to 8) while earlier ones commit; its
//! acknowledgements go out in order, each after its own commit. A batch that
//! was already stored (a sensor resending after a lost acknowledgement) is acknowledged
//! again and stored once.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use prost::Message as _;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use xtrail_proto::v1::{self, ingest_server::Ingest, PublishRequest, PublishResponse};

use xtrail_proto::limits;

use crate::auth::{Auth, Principal};
use crate::health::Health;
use crate::metrics::{add, inc, GaugeGuard, Metrics};
use crate::storage::{Storage, StorageError};

/// Live events as they are committed: one shared batch per commit.
pub type LiveBatch = Arc<crate::live::LiveEvents>;

/// Limits on what one batch may hold.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    /// Events per batch.
    pub max_events: usize,
    /// Encoded bytes per batch.
    pub max_bytes: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_events: limits::DEFAULT_MAX_BATCH_EVENTS as usize,
            max_bytes: limits::DEFAULT_MAX_BATCH_BYTES as usize,
        }
    }
}

impl BatchLimits {
    /// What `GetLimits` answers.
    pub fn advertised(&self) -> v1::Limits {
        v1::Limits {
            max_batch_events: u32::try_from(self.max_events).unwrap_or(u32::MAX),
            max_batch_bytes: self.max_bytes as u64,
            ..limits::default_limits()
        }
    }
}

/// Why a batch was refused, for the status code and the metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// What kind of limit or rule.
    pub reason: RefusalReason,
    /// What is wrong, naming the limit.
    pub message: String,
}

/// The kinds of refusal, each counted in `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalReason {
    /// More events or bytes than a batch may hold.
    BatchSize,
    /// A field or an event over its limit.
    FieldSize,
    /// Sequence numbers out of range, not increasing, or going back within a stream.
    Sequence,
    /// The sensor id or name is not the caller's to use.
    Identity,
    /// Anything else malformed.
    Malformed,
}

impl Refusal {
    fn new(reason: RefusalReason, message: impl Into<String>) -> Self {
        Refusal {
            reason,
            message: message.into(),
        }
    }

    /// The gRPC status.
    pub fn status(&self) -> Status {
        match self.reason {
            RefusalReason::BatchSize => Status::resource_exhausted(self.message.clone()),
            RefusalReason::Identity => Status::permission_denied(self.message.clone()),
            _ => Status::invalid_argument(self.message.clone()),
        }
    }
}

/// The outcome of a commit, as acknowledged.
#[derive(Clone, Copy, Debug)]
pub struct Ack {
    /// Highest seq committed.
    pub committed_seq: u64,
    /// New events stored.
    pub stored: u32,
    /// Events already stored.
    pub duplicates: u32,
}

struct Job {
    sensor_id: String,
    events: Vec<v1::Event>,
    reply: oneshot::Sender<Result<Ack, StorageError>>,
}

/// Batches one stream may have queued for commit ahead of its acknowledgements.
const PIPELINE: usize = 8;
/// Most batches one group commit takes from the queue.
const GROUP_MAX_BATCHES: usize = 64;
/// A group takes no further batch once it holds this many events.
const GROUP_MAX_EVENTS: usize = 20_000;
/// A group of at least this many events (bulk publishing, not a trickle) waits up to
/// [`COMMIT_DELAY`] for more batches while it holds fewer than [`GROUP_TARGET_EVENTS`].
const GROUP_BULK_EVENTS: usize = 500;
/// See [`GROUP_BULK_EVENTS`].
const GROUP_TARGET_EVENTS: usize = 4_000;
/// Longest a bulk group waits for more batches before it commits.
const COMMIT_DELAY: std::time::Duration = std::time::Duration::from_millis(2);

/// Handle to the writer thread.
#[derive(Clone, Debug)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Job({}, {} events)", self.sensor_id, self.events.len())
    }
}

impl Writer {
    /// Starts the writer thread. `last_cursor` is kept at the highest committed cursor
    /// (updated before the batch is broadcast, see `subscribe`).
    pub fn spawn(
        storage: Arc<dyn Storage>,
        live: broadcast::Sender<LiveBatch>,
        last_cursor: Arc<AtomicU64>,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> std::io::Result<Writer> {
        let (tx, mut rx) = mpsc::channel::<Job>(64);
        std::thread::Builder::new()
            .name("xtrail-writer".into())
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    // Group commit: the batches queued behind the first (several streams,
                    // or one stream's batches in flight) share its transaction and its
                    // sync; each is still acknowledged only after that commit.
                    let mut jobs = vec![first];
                    let mut events = jobs[0].events.len();
                    // Under load (a group of bulk batches), wait up to COMMIT_DELAY for
                    // more: each commit is a sync, costly in time and in CPU.
                    let waiting_since = Instant::now();
                    while jobs.len() < GROUP_MAX_BATCHES && events < GROUP_MAX_EVENTS {
                        match rx.try_recv() {
                            Ok(job) => {
                                events += job.events.len();
                                jobs.push(job);
                            }
                            Err(mpsc::error::TryRecvError::Empty)
                                if (GROUP_BULK_EVENTS..GROUP_TARGET_EVENTS).contains(&events)
                                    && waiting_since.elapsed() < COMMIT_DELAY =>
                            {
                                std::thread::sleep(COMMIT_DELAY / 8);
                            }
                            Err(_) => break,
                        }
                    }
                    let started = Instant::now();
                    let mut replies = Vec::with_capacity(jobs.len());
                    let batches = jobs
                        .into_iter()
                        .map(|job| {
                            replies.push(job.reply);
                            (job.sensor_id, job.events)
                        })
                        .collect();
                    let results = storage.insert_batches(batches);
                    add(
                        &metrics.ingest_commit_us,
                        u64::try_from(started.elapsed().as_micros()).unwrap_or(0),
                    );
                    for (result, reply) in results.into_iter().zip(replies) {
                        let result = result.map(|c| {
                            let ack = Ack {
                                committed_seq: c.committed_seq,
                                stored: u32::try_from(c.stored.len()).unwrap_or(u32::MAX),
                                duplicates: c.duplicates,
                            };
                            add(&metrics.ingest_events, u64::from(ack.stored));
                            add(&metrics.ingest_duplicates, u64::from(ack.duplicates));
                            inc(&metrics.ingest_batches);
                            if let Some(last) = c.stored.last() {
                                last_cursor.store(last.cursor, Ordering::SeqCst);
                                // No receivers is fine: nobody is subscribed.
                                let batch = crate::live::LiveEvents::new(c.stored);
                                let _ = live.send(Arc::new(batch));
                            }
                            ack
                        });
                        match &result {
                            Ok(_) => health.storage_ok(),
                            Err(StorageError::Conflict { .. }) => {
                                inc(&metrics.ingest_rejected);
                                inc(&metrics.rejected_conflict);
                            }
                            Err(e) => {
                                inc(&metrics.storage_errors);
                                health.storage_failed(&e.to_string());
                            }
                        }
                        let _ = reply.send(result);
                    }
                }
            })?;
        Ok(Writer { tx })
    }

    /// Queues a batch for commit (waiting only for room in the queue) and returns the
    /// handle to its outcome, so that a stream can read and queue its next batch while this
    /// one commits (the batches of one stream then share group commits).
    pub async fn submit(
        &self,
        sensor_id: String,
        events: Vec<v1::Event>,
    ) -> Result<PendingAck, Status> {
        let (reply, wait) = oneshot::channel();
        self.tx
            .send(Job {
                sensor_id,
                events,
                reply,
            })
            .await
            .map_err(|_| Status::unavailable("collector is shutting down"))?;
        Ok(PendingAck(wait))
    }
}

/// The outcome of a queued batch, once committed ([`Writer::submit`]).
#[derive(Debug)]
pub struct PendingAck(oneshot::Receiver<Result<Ack, StorageError>>);

impl PendingAck {
    /// Waits for the commit.
    pub async fn outcome(self) -> Result<Ack, Status> {
        match self.0.await {
            Ok(Ok(ack)) => Ok(ack),
            Ok(Err(e @ StorageError::Conflict { .. })) => {
                log::error!("refused a batch: {e}");
                Err(Status::failed_precondition(e.to_string()))
            }
            Ok(Err(e)) => {
                log::error!("storing a batch: {e}");
                Err(Status::unavailable(format!("storage failed: {e}")))
            }
            Err(_) => Err(Status::unavailable("collector is shutting down")),
        }
    }
}

/// What a stream has established: who publishes, under which key, up to which seq.
#[derive(Debug, Default)]
pub struct StreamState {
    /// The `sensor_id` of the first batch.
    pub sensor_id: Option<String>,
    /// The highest seq of the batches so far.
    pub last_seq: u64,
}

/// The storage key of a publisher: a per-sensor credential's events are keyed under its
/// name, so no other credential can touch them; a shared token's under the id it sends.
pub fn sensor_key(principal: &Principal, sensor_id: &str) -> String {
    match principal {
        Principal::Sensor(name) => format!("{name}/{sensor_id}"),
        _ => sensor_id.to_string(),
    }
}

/// Checks a batch against the limits, the caller's identity and the stream so far; the
/// refusal names the limit. Fills each event's `sensor` (the credential's name, or the
/// sensor id) when empty.
pub fn validate_batch(
    req: &mut PublishRequest,
    limits: BatchLimits,
    principal: &Principal,
    stream: &StreamState,
) -> Result<(), Refusal> {
    use RefusalReason::*;
    if req.sensor_id.is_empty() {
        return Err(Refusal::new(Malformed, "sensor_id is empty"));
    }
    if req.sensor_id.len() > 256 || req.sensor_id.contains('/') {
        return Err(Refusal::new(
            Malformed,
            "sensor_id must be at most 256 bytes and contain no '/'",
        ));
    }
    if let Some(first) = &stream.sensor_id {
        if *first != req.sensor_id {
            return Err(Refusal::new(
                Identity,
                format!(
                    "sensor_id changed within a stream ({first:?} then {:?})",
                    req.sensor_id
                ),
            ));
        }
    }
    if req.events.len() > limits.max_events {
        return Err(Refusal::new(
            BatchSize,
            format!(
                "batch of {} events exceeds the limit of {} events (GetLimits)",
                req.events.len(),
                limits.max_events
            ),
        ));
    }
    let size = req.encoded_len();
    if size > limits.max_bytes {
        return Err(Refusal::new(
            BatchSize,
            format!(
                "batch of {size} bytes exceeds the limit of {} bytes (GetLimits)",
                limits.max_bytes
            ),
        ));
    }
    let mut prev = stream.last_seq;
    for (i, ev) in req.events.iter_mut().enumerate() {
        let seq = ev.seq;
        let at = |what: String| format!("event {i} (seq {seq}): {what}");
        if ev.seq == 0 || ev.seq > i64::MAX as u64 {
            return Err(Refusal::new(
                Sequence,
                at("seq must be between 1 and 2^63-1".into()),
            ));
        }
        if ev.seq <= prev {
            return Err(Refusal::new(
                Sequence,
                at(if i == 0 {
                    format!("seq must increase within a stream, also across batches (the previous batch ended at {prev})")
                } else {
                    format!("seq must increase within a batch (previous {prev})")
                }),
            ));
        }
        prev = ev.seq;
        let event_bytes = ev.encoded_len();
        if event_bytes > limits::MAX_EVENT_BYTES as usize {
            return Err(Refusal::new(
                FieldSize,
                at(format!(
                    "event of {event_bytes} bytes exceeds the limit of {} bytes",
                    limits::MAX_EVENT_BYTES
                )),
            ));
        }
        limits::check_fields(ev).map_err(|e| Refusal::new(FieldSize, at(e)))?;
        for (name, ip) in [("src_ip", &ev.src_ip), ("dst_ip", &ev.dst_ip)] {
            if ip.parse::<IpAddr>().is_err() {
                return Err(Refusal::new(
                    Malformed,
                    at(format!("{name} {ip:?} is not an IP address")),
                ));
            }
        }
        if ev.src_port > 65535 || ev.dst_port > 65535 {
            return Err(Refusal::new(Malformed, at("port above 65535".into())));
        }
        if ev.r#type.is_empty() || ev.r#type.len() > 32 {
            return Err(Refusal::new(
                Malformed,
                at("type must be 1 to 32 bytes".into()),
            ));
        }
        if v1::Severity::try_from(ev.severity).is_err() {
            return Err(Refusal::new(
                Malformed,
                at(format!("unknown severity {}", ev.severity)),
            ));
        }
        match principal {
            Principal::Sensor(name) => {
                if ev.sensor.is_empty() {
                    ev.sensor.clone_from(name);
                } else if ev.sensor != *name {
                    return Err(Refusal::new(
                        Identity,
                        at(format!(
                            "this credential publishes as sensor {name:?}, not {:?}",
                            ev.sensor
                        )),
                    ));
                }
            }
            _ => {
                if ev.sensor.is_empty() {
                    ev.sensor.clone_from(&req.sensor_id);
                }
            }
        }
    }
    Ok(())
}

/// The Ingest service.
#[derive(Debug, Clone)]
pub struct IngestService {
    writer: Writer,
    limits: BatchLimits,
    metrics: Arc<Metrics>,
    auth: Auth,
    /// Where heartbeats go (`console.db`); `None`: UNIMPLEMENTED.
    heartbeats: Option<Arc<crate::console::db::ConsoleDb>>,
    /// Whose suppression list heartbeats answer with (`console::suppress`).
    suppressions: Option<Arc<std::sync::OnceLock<Arc<crate::console::threats::Threats>>>>,
}

impl IngestService {
    /// Keeps sensor heartbeats in `db` (the console's sensors page).
    pub fn with_heartbeats(mut self, db: Arc<crate::console::db::ConsoleDb>) -> Self {
        self.heartbeats = Some(db);
        self
    }

    /// Answers heartbeats with the suppression list of `threats` when it changed.
    pub fn with_suppressions(
        mut self,
        threats: Arc<std::sync::OnceLock<Arc<crate::console::threats::Threats>>>,
    ) -> Self {
        self.suppressions = Some(threats);
        self
    }

    /// A service committing through `writer`; `auth` rechecks per-sensor credentials
    /// (revocation) on every batch.
    pub fn new(writer: Writer, limits: BatchLimits, metrics: Arc<Metrics>, auth: Auth) -> Self {
        IngestService {
            writer,
            limits,
            metrics,
            auth,
            heartbeats: None,
            suppressions: None,
        }
    }

    fn refuse(&self, sensor_id: &str, r: &Refusal) -> Status {
        let m = &self.metrics;
        inc(&m.ingest_rejected);
        inc(match r.reason {
            RefusalReason::BatchSize => &m.rejected_batch_size,
            RefusalReason::FieldSize => &m.rejected_field_size,
            RefusalReason::Sequence => &m.rejected_sequence,
            RefusalReason::Identity => &m.rejected_identity,
            RefusalReason::Malformed => &m.rejected_malformed,
        });
        log::warn!("refused a batch from {sensor_id:?}: {}", r.message);
        r.status()
    }
}

type AckStream = Pin<Box<dyn Stream<Item = Result<PublishResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Ingest for IngestService {
    type PublishStream = AckStream;

    async fn publish(
        &self,
        request: Request<Streaming<PublishRequest>>,
    ) -> Result<Response<Self::PublishStream>, Status> {
        let principal = request
            .extensions()
            .get::<Principal>()
            .cloned()
            .unwrap_or(Principal::AnySensor);
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        // Batches queued for commit, acknowledged in order by the task below; the reader
        // goes on reading (and queueing) up to PIPELINE batches ahead of the acks.
        let (pending_tx, mut pending_rx) = mpsc::channel::<Result<PendingAck, Status>>(PIPELINE);
        tokio::spawn(async move {
            while let Some(next) = pending_rx.recv().await {
                let reply = match next {
                    Ok(pending) => pending.outcome().await.map(|ack| PublishResponse {
                        committed_seq: ack.committed_seq,
                        stored: ack.stored,
                        duplicates: ack.duplicates,
                    }),
                    Err(status) => Err(status),
                };
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    // Dropping the receiver stops the reader at its next batch.
                    break;
                }
            }
        });
        let svc = self.clone();
        tokio::spawn(async move {
            let _open = GaugeGuard::new(&svc.metrics.ingest_streams);
            let mut stream = StreamState::default();
            loop {
                let mut batch = match inbound.message().await {
                    Ok(Some(b)) => b,
                    Ok(None) => break,
                    Err(status) => {
                        // A message over the decoding limit is refused out loud; a broken
                        // connection just ends the stream.
                        if status.code() == tonic::Code::OutOfRange {
                            let r = Refusal::new(
                                RefusalReason::BatchSize,
                                format!(
                                    "batch exceeds the limit of {} bytes (GetLimits): {}",
                                    svc.limits.max_bytes,
                                    status.message()
                                ),
                            );
                            let who = stream.sensor_id.clone().unwrap_or_default();
                            let _ = pending_tx.send(Err(svc.refuse(&who, &r))).await;
                        } else {
                            log::debug!("publish stream ended: {status}");
                        }
                        break;
                    }
                };
                if !svc.auth.still_valid(&principal) {
                    inc(&svc.metrics.auth_failures);
                    let _ = pending_tx
                        .send(Err(Status::unauthenticated(
                            "this sensor credential was revoked",
                        )))
                        .await;
                    break;
                }
                if let Err(r) = validate_batch(&mut batch, svc.limits, &principal, &stream) {
                    let _ = pending_tx.send(Err(svc.refuse(&batch.sensor_id, &r))).await;
                    break;
                }
                if stream.sensor_id.is_none() {
                    stream.sensor_id = Some(batch.sensor_id.clone());
                }
                let Some(last) = batch.events.last().map(|e| e.seq) else {
                    continue;
                };
                stream.last_seq = last;
                let key = sensor_key(&principal, &batch.sensor_id);
                let queued = svc.writer.submit(key, batch.events).await;
                let failed = queued.is_err();
                if pending_tx.send(queued).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_limits(
        &self,
        _request: Request<v1::GetLimitsRequest>,
    ) -> Result<Response<v1::Limits>, Status> {
        Ok(Response::new(self.limits.advertised()))
    }

    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let principal = request
            .extensions()
            .get::<Principal>()
            .cloned()
            .unwrap_or(Principal::AnySensor);
        let Some(db) = self.heartbeats.clone() else {
            return Err(Status::unimplemented("heartbeats are not kept here"));
        };
        if !self.auth.still_valid(&principal) {
            return Err(Status::unauthenticated(
                "this sensor credential was revoked",
            ));
        }
        let req = request.into_inner();
        let version = req.suppressions_version.clone();
        crate::console::sensors::heartbeat(db, &principal, req).await?;
        Ok(Response::new(match &self.suppressions {
            Some(t) => crate::console::suppress::heartbeat_reply(t, &version),
            None => v1::HeartbeatResponse::default(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(seqs: &[u64]) -> PublishRequest {
        PublishRequest {
            sensor_id: "s".into(),
            events: seqs
                .iter()
                .map(|&seq| v1::Event {
                    seq,
                    src_ip: "198.18.0.1".into(),
                    dst_ip: "198.18.0.2".into(),
                    r#type: "IP".into(),
                    severity: 2,
                    ..Default::default()
                })
                .collect(),
        }
    }

    #[test]
    fn batches_are_checked() {
        let l = BatchLimits::default();
        let any = Principal::AnySensor;
        let fresh = StreamState::default();
        let mut b = batch(&[1, 2, 3]);
        assert!(validate_batch(&mut b, l, &any, &fresh).is_ok());
        assert_eq!(b.events[0].sensor, "s");
        let e = validate_batch(&mut batch(&[2, 1]), l, &any, &fresh).unwrap_err();
        assert_eq!(e.reason, RefusalReason::Sequence);
        assert!(validate_batch(&mut batch(&[0]), l, &any, &fresh).is_err());
        let small = BatchLimits { max_events: 2, ..l };
        let e = validate_batch(&mut batch(&[1, 2, 3]), small, &any, &fresh).unwrap_err();
        assert_eq!(e.status().code(), tonic::Code::ResourceExhausted);
        assert!(e.message.contains("limit of 2 events"));
        let mut b = batch(&[1]);
        b.events[0].src_ip = "x".into();
        assert!(validate_batch(&mut b, l, &any, &fresh)
            .unwrap_err()
            .message
            .contains("src_ip"));
        let other = StreamState {
            sensor_id: Some("other".into()),
            last_seq: 0,
        };
        assert!(validate_batch(&mut batch(&[1]), l, &any, &other).is_err());
        // Backwards across batches of one stream.
        let after5 = StreamState {
            sensor_id: Some("s".into()),
            last_seq: 5,
        };
        let e = validate_batch(&mut batch(&[3, 4]), l, &any, &after5).unwrap_err();
        assert_eq!(e.status().code(), tonic::Code::InvalidArgument);
        assert!(e.message.contains("across batches"), "{}", e.message);
        // Oversize fields name the field and the limit.
        let mut b = batch(&[1]);
        b.events[0].info = "x".repeat(20_000);
        let e = validate_batch(&mut b, l, &any, &fresh).unwrap_err();
        assert_eq!(e.reason, RefusalReason::FieldSize);
        assert!(
            e.message.contains("info") && e.message.contains("1024"),
            "{}",
            e.message
        );
        // A per-sensor credential publishes only as itself.
        let gw = Principal::Sensor("gw".into());
        let mut b = batch(&[1]);
        assert!(validate_batch(&mut b, l, &gw, &fresh).is_ok());
        assert_eq!(b.events[0].sensor, "gw");
        let mut b = batch(&[1]);
        b.events[0].sensor = "victim".into();
        let e = validate_batch(&mut b, l, &gw, &fresh).unwrap_err();
        assert_eq!(e.status().code(), tonic::Code::PermissionDenied);
        assert_eq!(sensor_key(&gw, "abc"), "gw/abc");
        let mut b = batch(&[1]);
        b.sensor_id = "gw/abc".into();
        assert!(validate_batch(&mut b, l, &any, &fresh).is_err());
    }
}
