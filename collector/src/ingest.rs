//! `xtrail.v1.Ingest/Publish`: batches in, acknowledgements out.
//!
//! Every batch is checked, then handed to the single writer thread, which commits it in one
//! transaction, publishes the newly stored events to live subscribers (in commit order,
//! which is cursor order), and only then lets the stream acknowledge the batch. A batch that
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

use crate::metrics::{add, inc, GaugeGuard, Metrics};
use crate::storage::{Storage, StorageError};

/// Live events as they are committed: one shared batch per commit.
pub type LiveBatch = Arc<Vec<v1::Event>>;

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
            max_events: 10_000,
            max_bytes: 16 << 20,
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
    ) -> std::io::Result<Writer> {
        let (tx, mut rx) = mpsc::channel::<Job>(64);
        std::thread::Builder::new()
            .name("xtrail-writer".into())
            .spawn(move || {
                while let Some(job) = rx.blocking_recv() {
                    let started = Instant::now();
                    let result = storage.insert_batch(&job.sensor_id, job.events);
                    let result = result.map(|c| {
                        let ack = Ack {
                            committed_seq: c.committed_seq,
                            stored: u32::try_from(c.stored.len()).unwrap_or(u32::MAX),
                            duplicates: c.duplicates,
                        };
                        add(&metrics.ingest_events, u64::from(ack.stored));
                        add(&metrics.ingest_duplicates, u64::from(ack.duplicates));
                        inc(&metrics.ingest_batches);
                        add(
                            &metrics.ingest_commit_us,
                            u64::try_from(started.elapsed().as_micros()).unwrap_or(0),
                        );
                        if let Some(last) = c.stored.last() {
                            last_cursor.store(last.cursor, Ordering::SeqCst);
                            // No receivers is fine: nobody is subscribed.
                            let _ = live.send(Arc::new(c.stored));
                        }
                        ack
                    });
                    if result.is_err() {
                        inc(&metrics.storage_errors);
                    }
                    let _ = job.reply.send(result);
                }
            })?;
        Ok(Writer { tx })
    }

    /// Commits a batch and waits for the outcome.
    pub async fn write(&self, sensor_id: String, events: Vec<v1::Event>) -> Result<Ack, Status> {
        let (reply, wait) = oneshot::channel();
        self.tx
            .send(Job {
                sensor_id,
                events,
                reply,
            })
            .await
            .map_err(|_| Status::unavailable("collector is shutting down"))?;
        match wait.await {
            Ok(Ok(ack)) => Ok(ack),
            Ok(Err(e)) => {
                log::error!("storing a batch: {e}");
                Err(Status::unavailable(format!("storage failed: {e}")))
            }
            Err(_) => Err(Status::unavailable("collector is shutting down")),
        }
    }
}

/// Checks a batch; the error says what is wrong. Fills each event's `sensor` from the
/// sensor id when empty.
pub fn validate_batch(
    req: &mut PublishRequest,
    limits: BatchLimits,
    stream_sensor: Option<&str>,
) -> Result<(), String> {
    if req.sensor_id.is_empty() {
        return Err("sensor_id is empty".into());
    }
    if req.sensor_id.len() > 256 {
        return Err("sensor_id is longer than 256 bytes".into());
    }
    if let Some(first) = stream_sensor {
        if first != req.sensor_id {
            return Err(format!(
                "sensor_id changed within a stream ({first:?} then {:?})",
                req.sensor_id
            ));
        }
    }
    if req.events.len() > limits.max_events {
        return Err(format!(
            "batch of {} events exceeds the limit of {}",
            req.events.len(),
            limits.max_events
        ));
    }
    let size = req.encoded_len();
    if size > limits.max_bytes {
        return Err(format!(
            "batch of {size} bytes exceeds the limit of {} bytes",
            limits.max_bytes
        ));
    }
    let mut prev = 0u64;
    for (i, ev) in req.events.iter_mut().enumerate() {
        let at = |what: String| format!("event {i} (seq {}): {what}", ev.seq);
        if ev.seq == 0 || ev.seq > i64::MAX as u64 {
            return Err(at("seq must be between 1 and 2^63-1".into()));
        }
        if ev.seq <= prev {
            return Err(at(format!(
                "seq must increase within a batch (previous {prev})"
            )));
        }
        prev = ev.seq;
        for (name, ip) in [("src_ip", &ev.src_ip), ("dst_ip", &ev.dst_ip)] {
            if ip.parse::<IpAddr>().is_err() {
                return Err(at(format!("{name} {ip:?} is not an IP address")));
            }
        }
        if ev.src_port > 65535 || ev.dst_port > 65535 {
            return Err(at("port above 65535".into()));
        }
        if ev.r#type.is_empty() || ev.r#type.len() > 32 {
            return Err(at("type must be 1 to 32 bytes".into()));
        }
        if v1::Severity::try_from(ev.severity).is_err() {
            return Err(at(format!("unknown severity {}", ev.severity)));
        }
        if ev.sensor.is_empty() {
            ev.sensor.clone_from(&req.sensor_id);
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
}

impl IngestService {
    /// A service committing through `writer`.
    pub fn new(writer: Writer, limits: BatchLimits, metrics: Arc<Metrics>) -> Self {
        IngestService {
            writer,
            limits,
            metrics,
        }
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
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let svc = self.clone();
        tokio::spawn(async move {
            let _open = GaugeGuard::new(&svc.metrics.ingest_streams);
            let mut sensor: Option<String> = None;
            loop {
                let mut batch = match inbound.message().await {
                    Ok(Some(b)) => b,
                    Ok(None) => break,
                    Err(status) => {
                        log::debug!("publish stream ended: {status}");
                        break;
                    }
                };
                if let Err(why) = validate_batch(&mut batch, svc.limits, sensor.as_deref()) {
                    inc(&svc.metrics.ingest_rejected);
                    log::warn!("refused a batch from {:?}: {why}", batch.sensor_id);
                    let _ = tx.send(Err(Status::invalid_argument(why))).await;
                    break;
                }
                if sensor.is_none() {
                    sensor = Some(batch.sensor_id.clone());
                }
                if batch.events.is_empty() {
                    continue;
                }
                let reply = svc
                    .writer
                    .write(batch.sensor_id, batch.events)
                    .await
                    .map(|ack| PublishResponse {
                        committed_seq: ack.committed_seq,
                        stored: ack.stored,
                        duplicates: ack.duplicates,
                    });
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
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
        let mut b = batch(&[1, 2, 3]);
        assert!(validate_batch(&mut b, l, None).is_ok());
        assert_eq!(b.events[0].sensor, "s");
        assert!(validate_batch(&mut batch(&[2, 1]), l, None)
            .unwrap_err()
            .contains("increase"));
        assert!(validate_batch(&mut batch(&[0]), l, None).is_err());
        let small = BatchLimits { max_events: 2, ..l };
        assert!(validate_batch(&mut batch(&[1, 2, 3]), small, None)
            .unwrap_err()
            .contains("exceeds"));
        let mut b = batch(&[1]);
        b.events[0].src_ip = "x".into();
        assert!(validate_batch(&mut b, l, None)
            .unwrap_err()
            .contains("src_ip"));
        assert!(validate_batch(&mut batch(&[1]), l, Some("other")).is_err());
    }
}
