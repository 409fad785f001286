//! `xtrail.v1.Events/Subscribe`: stored events from the start point, then live ones, in
//! cursor order, without gaps, and without ever slowing ingest.
//!
//! How the hand-over from stored to live events avoids gaps: the subscription joins the
//! live channel *before* reading storage. The writer commits a batch, raises `last_cursor`,
//! then broadcasts it. So every batch is either in storage when a read runs, or still to
//! come on the channel (or both: duplicates are skipped by cursor). While catching up, the
//! channel is drained and ignored (what it carried was committed before the next read); the
//! catch-up ends on a short page, and from then on the channel alone feeds the stream.
//!
//! The live channel is a bounded ring (`tokio::sync::broadcast`): the writer never waits
//! for a subscriber. One that falls more than the ring behind is ended with
//! `RESOURCE_EXHAUSTED`, its resume point in the message and in the `xtrail-last-cursor`
//! trailer; it resumes with `after_cursor` and catches up from storage.
//!
//! A store shared by several collectors (PostgreSQL) commits events this collector's writer
//! never sees, so the live channel cannot be the source there: with
//! [`Hub::poll_storage`] set, a subscription keeps reading storage after its cursor after
//! the catch-up too, woken by every local commit (the channel, used only as a doorbell)
//! and at least every poll interval. Storage shows every reader a prefix of the cursor
//! sequence (see `storage`), so reading after the last cursor sent never skips an event.
//! A slow subscriber there is never ended: it simply reads further behind.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status};
use xtrail_proto::v1::{self, subscribe_request::Start, SubscribeRequest};

use crate::filter::EventFilter;
use crate::ingest::LiveBatch;
use crate::live::Outgoing;
use crate::metrics::{inc, GaugeGuard, Metrics};
use crate::storage::Storage;

/// Stored events read per page while catching up.
const PAGE: usize = 1000;
/// Events buffered per subscriber before it counts as slow.
const OUT_BUFFER: usize = 1024;
/// Trailer carrying the resume cursor of a lagged subscriber.
pub const LAST_CURSOR_TRAILER: &str = "xtrail-last-cursor";

/// Everything a subscription needs.
#[derive(Clone)]
pub struct Hub {
    /// The store.
    pub storage: Arc<dyn Storage>,
    /// Live committed batches.
    pub live: broadcast::Sender<LiveBatch>,
    /// Highest committed cursor.
    pub last_cursor: Arc<AtomicU64>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// `Some(interval)` when other collectors may write to the same store: subscribers then
    /// take every event from storage (see the module doc).
    pub poll_storage: Option<std::time::Duration>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

/// The event stream of one subscription (live events share their encoding, `live`).
pub type EventStream = Pin<Box<dyn Stream<Item = Result<Outgoing, Status>> + Send>>;

/// Starts a subscription; fails at once (INVALID_ARGUMENT) on a malformed filter.
pub fn subscribe(hub: &Hub, req: &SubscribeRequest) -> Result<EventStream, Status> {
    let filter = EventFilter::compile(req.filter.as_ref())
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    // Join the live channel first, then decide the start (see the module doc).
    let rx = hub.live.subscribe();
    let live_only = req.start.is_none();
    let (pos, min_ts) = match req.start {
        None => (hub.last_cursor.load(Ordering::SeqCst), None),
        Some(Start::AfterCursor(c)) => (c, None),
        Some(Start::SinceTsUs(ts)) => (0, Some(ts)),
    };
    let (tx, out) = mpsc::channel(OUT_BUFFER);
    let hub = hub.clone();
    tokio::spawn(async move {
        let metrics = Arc::clone(&hub.metrics);
        let _open = GaugeGuard::new(&metrics.subscribers);
        run(hub, filter, pos, min_ts, rx, tx, live_only).await;
    });
    Ok(Box::pin(ReceiverStream::new(out)))
}

type Tx = mpsc::Sender<Result<Outgoing, Status>>;

async fn send(tx: &Tx, metrics: &Metrics, ev: Outgoing) -> bool {
    if tx.send(Ok(ev)).await.is_err() {
        return false;
    }
    inc(&metrics.subscribe_events);
    true
}

/// Sends events read from storage, moving `pos` to each one's cursor: false when the
/// subscriber is gone.
async fn send_stored(tx: &Tx, metrics: &Metrics, events: Vec<v1::Event>, pos: &mut u64) -> bool {
    for ev in events {
        *pos = ev.cursor;
        if !send(tx, metrics, Outgoing::Stored(Box::new(ev))).await {
            return false;
        }
    }
    true
}

async fn run(
    hub: Hub,
    filter: EventFilter,
    mut pos: u64,
    min_ts: Option<i64>,
    mut rx: broadcast::Receiver<LiveBatch>,
    tx: Tx,
    live_only: bool,
) {
    let filter = Arc::new(filter);
    if hub.poll_storage.is_some() {
        follow_storage(hub, filter, pos, min_ts, rx, tx, live_only).await;
        return;
    }
    // Catch up from storage.
    loop {
        loop {
            match rx.try_recv() {
                Ok(_) | Err(TryRecvError::Lagged(_)) => {}
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Closed) => return,
            }
        }
        let f = Arc::clone(&filter);
        let page = match blocking(&hub, move |s| s.read_after(pos, min_ts, &f, PAGE)).await {
            Ok(page) => page,
            Err(st) => {
                let _ = tx.send(Err(st)).await;
                return;
            }
        };
        let short = !page.more;
        if !send_stored(&tx, &hub.metrics, page.events, &mut pos).await {
            return;
        }
        if short {
            break;
        }
    }
    // Follow live.
    loop {
        tokio::select! {
            got = rx.recv() => match got {
                Ok(batch) => {
                    for (i, ev) in batch.iter().enumerate() {
                        if ev.cursor <= pos {
                            continue;
                        }
                        pos = ev.cursor;
                        if min_ts.is_some_and(|t| ev.ts_us < t) || !filter.matches(ev) {
                            continue;
                        }
                        let out = Outgoing::Live(Arc::clone(&batch), i);
                        if !send(&tx, &hub.metrics, out).await {
                            return;
                        }
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    inc(&hub.metrics.subscribers_lagged);
                    let mut md = MetadataMap::new();
                    if let Ok(v) = pos.to_string().parse() {
                        md.insert(LAST_CURSOR_TRAILER, v);
                    }
                    let status = Status::with_metadata(
                        Code::ResourceExhausted,
                        format!(
                            "subscriber fell behind ({missed} batches skipped); resume with after_cursor={pos}"
                        ),
                        md,
                    );
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                Err(RecvError::Closed) => {
                    let _ = tx.send(Err(Status::unavailable("collector is shutting down"))).await;
                    return;
                }
            },
            () = tx.closed() => return,
        }
    }
}

/// Reads storage in a blocking task.
async fn blocking<T: Send + 'static>(
    hub: &Hub,
    f: impl FnOnce(&dyn Storage) -> Result<T, crate::storage::StorageError> + Send + 'static,
) -> Result<T, Status> {
    let storage = Arc::clone(&hub.storage);
    match tokio::task::spawn_blocking(move || f(storage.as_ref())).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            inc(&hub.metrics.storage_errors);
            Err(Status::unavailable(format!("storage: {e}")))
        }
        Err(e) => Err(Status::internal(format!("reader task: {e}"))),
    }
}

/// Follows a shared store: reads after `pos` until a short page, then waits for a local
/// commit or the poll interval, and again.
async fn follow_storage(
    hub: Hub,
    filter: Arc<EventFilter>,
    mut pos: u64,
    min_ts: Option<i64>,
    mut rx: broadcast::Receiver<LiveBatch>,
    tx: Tx,
    live_only: bool,
) {
    let every = hub
        .poll_storage
        .unwrap_or(std::time::Duration::from_millis(200));
    let fail = |status: Status| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(Err(status)).await;
        }
    };
    if live_only {
        // Live only: from the newest event any collector committed.
        match blocking(&hub, |s| s.last_cursor()).await {
            Ok(c) => pos = pos.max(c),
            Err(st) => return fail(st).await,
        }
    }
    loop {
        // Everything committed after `pos`, page by page. `horizon` is read first: every
        // cursor up to it is final (committed or never), so after a short page the
        // subscription may move past non-matching events up to it.
        loop {
            let horizon = match blocking(&hub, |s| s.last_cursor()).await {
                Ok(h) => h,
                Err(st) => return fail(st).await,
            };
            let f = Arc::clone(&filter);
            let page = match blocking(&hub, move |s| s.read_after(pos, min_ts, &f, PAGE)).await {
                Ok(p) => p,
                Err(st) => return fail(st).await,
            };
            let short = !page.more;
            if !send_stored(&tx, &hub.metrics, page.events, &mut pos).await {
                return;
            }
            if short {
                pos = pos.max(horizon);
                break;
            }
        }
        tokio::select! {
            got = rx.recv() => match got {
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => {
                    return fail(Status::unavailable("collector is shutting down")).await;
                }
            },
            () = tokio::time::sleep(every) => {}
            () = tx.closed() => return,
        }
        loop {
            match rx.try_recv() {
                Ok(_) | Err(TryRecvError::Lagged(_)) => {}
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Closed) => {
                    return fail(Status::unavailable("collector is shutting down")).await;
                }
            }
        }
    }
}

/// The Events service: Query (in `query`); Subscribe is served by
/// [`crate::live::EventsRoutes`] with shared encodings and never reaches this one.
#[derive(Clone, Debug)]
pub struct EventsService {
    /// Shared state.
    pub hub: Hub,
}

#[tonic::async_trait]
impl v1::events_server::Events for EventsService {
    type SubscribeStream = Pin<Box<dyn Stream<Item = Result<v1::Event, Status>> + Send>>;

    async fn subscribe(
        &self,
        _request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        Err(Status::internal(
            "Subscribe is routed by live::EventsRoutes",
        ))
    }

    async fn query(
        &self,
        request: Request<v1::QueryRequest>,
    ) -> Result<Response<v1::QueryResponse>, Status> {
        crate::query::query(&self.hub, request.into_inner())
            .await
            .map(Response::new)
    }
}
