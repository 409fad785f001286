//! Whether the collector can do its job now, as `/api/health` and the gRPC health service
//! (`xtrail.v1.Ingest`) report it.
//!
//! Storage is the part that fails in the field (a full disk, a read-only remount): a commit
//! that fails turns health red with the reason; the next commit that succeeds, or a probe
//! write (every [`PROBE_EVERY`] while red), turns it green again. Sensors keep their events
//! spooled meanwhile, so nothing is lost once the store accepts writes again.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::storage::Storage;

/// How often a red store is probed.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The collector's health: `None` when ingesting, else why not.
#[derive(Debug)]
pub struct Health {
    state: watch::Sender<Option<String>>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            state: watch::channel(None).0,
        }
    }
}

impl Health {
    /// Storage accepted a write.
    pub fn storage_ok(&self) {
        self.state.send_if_modified(|s| {
            if let Some(reason) = s.take() {
                log::info!("storage accepts writes again (was: {reason})");
                true
            } else {
                false
            }
        });
    }

    /// Storage refused a write.
    pub fn storage_failed(&self, reason: &str) {
        self.state.send_if_modified(|s| {
            let changed = s.as_deref() != Some(reason);
            if s.is_none() {
                log::error!("storage failed, not ingesting: {reason}");
            }
            *s = Some(reason.to_string());
            changed
        });
    }

    /// Why the collector is not healthy, if it is not.
    pub fn problem(&self) -> Option<String> {
        self.state.borrow().clone()
    }

    /// Changes of state.
    pub fn watch(&self) -> watch::Receiver<Option<String>> {
        self.state.subscribe()
    }

    /// Probes the store while health is red, until `stop`.
    pub fn spawn_prober(self: &Arc<Self>, storage: Arc<dyn Storage>) {
        let health = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROBE_EVERY);
            loop {
                tick.tick().await;
                if health.problem().is_none() {
                    continue;
                }
                let s = Arc::clone(&storage);
                match tokio::task::spawn_blocking(move || s.probe()).await {
                    Ok(Ok(())) => health.storage_ok(),
                    Ok(Err(e)) => health.storage_failed(&e.to_string()),
                    Err(_) => {}
                }
            }
        });
    }
}
