//! How the console's followers (`threats`, `sensors`) read the stored events: from storage
//! while catching up, then from the writer's live channel (`Hub::live`), the batches just
//! committed, without reading them back from the store.
//!
//! No gap, no duplicate (the subscription's argument, `subscribe`): the channel is joined
//! before storage is read, the writer raises `last_cursor` and then broadcasts, so every
//! batch is in storage when a read runs or still to come on the channel (or both: a cursor
//! at or below the position is skipped). A follower that falls more than the ring behind
//! (`Lagged`) goes back to reading storage from its position; it is never ended. A store
//! shared with other collectors (`Hub::poll_storage`) is read from storage throughout
//! (`export::read_loop`), as the channel carries only this collector's commits.

use std::sync::Arc;

use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::mpsc;
use xtrail_proto::v1;

use crate::export::{Chunk, ExporterStats};
use crate::filter::EventFilter;
use crate::metrics::inc;
use crate::subscribe::Hub;

/// Reads every event after `pos` in cursor order and hands them on as [`Chunk`]s of about
/// `batch` events (several live batches coalesced when they are waiting).
pub(crate) async fn follow_loop(
    hub: Hub,
    mut pos: u64,
    batch: usize,
    tx: mpsc::Sender<Chunk>,
    stats: Arc<ExporterStats>,
) {
    if hub.poll_storage.is_some() {
        let filter = EventFilter::default();
        return crate::export::read_loop(hub, filter, pos, batch, tx, stats).await;
    }
    let all = Arc::new(EventFilter::default());
    let mut rx = hub.live.subscribe();
    loop {
        // Catch up from storage: drain the channel (what it carried is committed, so the
        // read below sees it), read pages until a short one.
        loop {
            match crate::export::read_step(&hub, &mut rx, &all, &mut pos, batch, &tx, &stats).await
            {
                Some(true) => {}
                Some(false) => break,
                None => return,
            }
        }
        // Live: the committed batches as the writer broadcasts them.
        loop {
            let first = match rx.recv().await {
                Ok(b) => b,
                Err(RecvError::Lagged(_)) => break,
                Err(RecvError::Closed) => return,
            };
            let mut events = Vec::with_capacity(first.len());
            let mut lagged = false;
            take(&first, &mut pos, &mut events);
            while events.len() < batch {
                match rx.try_recv() {
                    Ok(b) => take(&b, &mut pos, &mut events),
                    Err(TryRecvError::Lagged(_)) => {
                        lagged = true;
                        break;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Closed) => return,
                }
            }
            if !events.is_empty() {
                inc(&stats.queued);
                let chunk = Chunk { events, upto: pos };
                if tx.send(chunk).await.is_err() {
                    return;
                }
            }
            if lagged {
                break;
            }
        }
        log::debug!(
            "{}: fell behind the live channel; reading the store after cursor {pos}",
            stats.name
        );
    }
}

/// Appends the events of a live batch past `pos` (an event read from storage may come
/// again on the channel), advancing `pos`.
fn take(batch: &[v1::Event], pos: &mut u64, out: &mut Vec<v1::Event>) {
    for ev in batch {
        if ev.cursor > *pos {
            *pos = ev.cursor;
            out.push(ev.clone());
        }
    }
}
