//! Heartbeats: every interval, `Ingest.Heartbeat` with the sensor's name, identity,
//! version, trail-set version and counters, on the publisher's own connection (the
//! channel of the current `Publish` stream; nothing is sent while disconnected, which is
//! what the collector's "silent" flag is for). The sensor sets its counters with
//! [`crate::Publisher::set_status`]; the publisher adds its own (events spooled, events
//! dropped by a full spool). An older collector's UNIMPLEMENTED is logged once.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tonic::Code;
use xtrail_proto::v1::ingest_client::IngestClient;
use xtrail_proto::v1::{HeartbeatRequest, SensorCounters};

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
            let auth = connect.auth.clone();
            let mut client =
                IngestClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
                    if let Some(v) = &auth {
                        req.metadata_mut().insert("authorization", v.clone());
                    }
                    Ok(req)
                });
            let req = request(&shared, &cfg);
            match tokio::time::timeout(Duration::from_secs(5), client.heartbeat(req)).await {
                Ok(Ok(_)) => {
                    shared.heartbeats.fetch_add(1, Ordering::Relaxed);
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
