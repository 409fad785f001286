//! Heartbeats: every interval, `Ingest.Heartbeat` with the sensor's name, identity,
//! version, trail-set version and counters, on the publisher's own connection (the
//! channel of the current `Publish` stream; nothing is sent while disconnected, which is
//! what the collector's "silent" flag is for). The sensor sets its counters with
//! [`crate::Publisher::set_status`]; the publisher adds its own (events spooled, events
//! dropped by a full spool). An older collector's UNIMPLEMENTED is logged once. The
//! answer carries the collector's suppression list when it differs from the version the
//! request names; [`crate::Publisher::suppressions`] hands it to the sensor.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use tonic::Code;
use xtrail_proto::v1::{HeartbeatRequest, SensorCounters, SuppressionList};

use crate::sender::Connect;
use crate::Shared;

/// Default interval between heartbeats.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// Who the heartbeats are from.
#[derive(Clone, Debug)]
pub struct HeartbeatConfig {
    /// The sensor name (a per-sensor credential's name; empty: the credential's).
    pub sensor_name: String,
    /// The sensor's persistent identity.
    pub identity: String,
    /// The sensor's software version.
    pub version: String,
    /// Time between heartbeats (1 s to 1 h).
    pub interval: Duration,
}

/// What the sensor reports besides the publisher's own counters.
#[derive(Clone, Debug, Default)]
pub struct SensorStatus {
    /// The trail set in use.
    pub trail_set_version: String,
    /// Its counters (`events` and `drops` are raised to the publisher's when lower).
    pub counters: SensorCounters,
}

/// The request for one heartbeat.
pub(crate) fn request(shared: &Shared, cfg: &HeartbeatConfig) -> HeartbeatRequest {
    let status = shared
        .status
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let (spooled, dropped) = shared.spool.counters();
    let mut counters = status.counters;
    counters.events = counters.events.max(spooled);
    counters.drops = counters.drops.max(dropped);
    counters.uptime_s = shared.started.elapsed().as_secs();
    HeartbeatRequest {
        sensor_name: cfg.sensor_name.clone(),
        identity: cfg.identity.clone(),
        version: cfg.version.clone(),
        trail_set_version: status.trail_set_version,
        interval_s: u32::try_from(cfg.interval.as_secs().clamp(1, 3600)).unwrap_or(10),
        counters: Some(counters),
        suppressions_version: shared
            .suppressions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|l| l.version.clone())
            .unwrap_or_default(),
    }
}

/// The file in the spool directory that keeps the last suppression list across restarts.
pub(crate) const SUPPRESSIONS_FILE: &str = "suppressions.pb";

/// The list an earlier run kept, if any (a damaged file is reported and ignored: the next
/// heartbeat brings the current list).
pub(crate) fn load_suppressions(path: &std::path::Path) -> Option<Arc<SuppressionList>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            log::warn!("xtrail-publish: reading {}: {e}", path.display());
            return None;
        }
    };
    match SuppressionList::decode(bytes.as_slice()) {
        Ok(list) => {
            log::info!(
                "xtrail-publish: suppression list {} ({} entries) kept from the last run",
                list.version,
                list.entries.len()
            );
            Some(Arc::new(list))
        }
        Err(e) => {
            log::warn!(
                "xtrail-publish: {} is damaged ({e}); ignored",
                path.display()
            );
            None
        }
    }
}

/// Keeps `list` for the next run (written beside, then renamed over the old one).
fn save_suppressions(path: &std::path::Path, list: &SuppressionList) {
    let tmp = path.with_extension("pb.tmp");
    let written =
        std::fs::write(&tmp, list.encode_to_vec()).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        log::warn!(
            "xtrail-publish: keeping the suppression list in {}: {e} (it is still applied)",
            path.display()
        );
    }
}

/// The heartbeat thread's body: runs until the publisher stops.
pub(crate) fn run(shared: Arc<Shared>, cfg: HeartbeatConfig, connect: Connect) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log::error!("xtrail-publish: cannot start the heartbeat runtime: {e}");
            return;
        }
    };
    rt.block_on(async move {
        let mut said_unimplemented = false;
        let mut next = tokio::time::Instant::now();
        while !shared.stop.load(Ordering::SeqCst) {
            if tokio::time::Instant::now() < next {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            let channel = shared
                .channel
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let Some(channel) = channel else {
                // Not connected: try again soon, so the first heartbeat follows a connect.
                next = tokio::time::Instant::now() + Duration::from_millis(200);
                continue;
            };
            next = tokio::time::Instant::now() + cfg.interval;
            let mut client = connect.ingest(channel);
            let req = request(&shared, &cfg);
            match tokio::time::timeout(Duration::from_secs(5), client.heartbeat(req)).await {
                Ok(Ok(answer)) => {
                    shared.heartbeats.fetch_add(1, Ordering::Relaxed);
                    // A new suppression list (only sent when it changed) replaces ours.
                    if let Some(list) = answer.into_inner().suppressions {
                        log::info!(
                            "xtrail-publish: suppression list {} ({} entries) from the collector",
                            list.version,
                            list.entries.len()
                        );
                        save_suppressions(&shared.suppressions_file, &list);
                        *shared
                            .suppressions
                            .lock()
                            .unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(list));
                    }
                }
                Ok(Err(s)) if s.code() == Code::Unimplemented => {
                    if !said_unimplemented {
                        log::info!("xtrail-publish: the collector does not take heartbeats");
                        said_unimplemented = true;
                    }
                }
                Ok(Err(s)) => {
                    log::warn!(
                        "xtrail-publish: heartbeat refused: {:?}: {}",
                        s.code(),
                        s.message()
                    );
                }
                Err(_) => log::warn!("xtrail-publish: heartbeat timed out"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use xtrail_proto::v1::{Suppression, SuppressionKind};

    #[test]
    fn a_kept_list_is_there_at_the_next_start_and_damage_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let list = SuppressionList {
            version: "v7".into(),
            entries: vec![Suppression {
                kind: SuppressionKind::Trail as i32,
                value: "evil.example".into(),
            }],
        };
        let file = dir.path().join(SUPPRESSIONS_FILE);
        assert!(load_suppressions(&file).is_none());
        save_suppressions(&file, &list);
        // A publisher started on that spool has it before any heartbeat (no collector here).
        let publisher = crate::Publisher::start(crate::PublisherConfig::new(
            "http://127.0.0.1:9",
            "token",
            "kept",
            dir.path(),
        ))
        .unwrap();
        assert_eq!(publisher.suppressions().as_deref(), Some(&list));
        drop(publisher);
        std::fs::write(&file, b"\xff\xff\xff not protobuf").unwrap();
        assert!(load_suppressions(&file).is_none());
    }
}
