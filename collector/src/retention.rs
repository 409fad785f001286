//! Retention: periodically deletes events older than the age limit, then the oldest events
//! while the store is above its size limit.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::metrics::{add, inc, Metrics};
use crate::storage::Storage;

/// The limits; `None` disables one.
#[derive(Clone, Copy, Debug, Default)]
pub struct Retention {
    /// Keep events at most this many days (by event time).
    pub max_age_days: Option<u64>,
    /// Keep the store at most this many bytes.
    pub max_bytes: Option<u64>,
}

impl Retention {
    fn cutoff(&self) -> Option<i64> {
        let days = self.max_age_days?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
        let age = Duration::from_secs(days.saturating_mul(86_400));
        let cutoff = now.saturating_sub(age);
        i64::try_from(cutoff.as_micros()).ok()
    }

    /// Runs once now, then every `every`, until the runtime stops.
    pub fn spawn(self, storage: Arc<dyn Storage>, metrics: Arc<Metrics>, every: Duration) {
        if self.max_age_days.is_none() && self.max_bytes.is_none() {
            return;
        }
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let storage = Arc::clone(&storage);
                let (cutoff, max) = (self.cutoff(), self.max_bytes);
                match tokio::task::spawn_blocking(move || storage.enforce_retention(cutoff, max))
                    .await
                {
                    Ok(Ok(0)) => {}
                    Ok(Ok(n)) => {
                        add(&metrics.retention_deleted, n);
                        log::info!("retention: deleted {n} events");
                    }
                    Ok(Err(e)) => {
                        inc(&metrics.storage_errors);
                        log::warn!("retention: {e}");
                    }
                    Err(e) => log::warn!("retention task: {e}"),
                }
            }
        });
    }
}
