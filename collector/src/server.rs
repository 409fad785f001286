//! Wires the collector together: storage, the writer, gRPC (Ingest, Events, health,
//! reflection; TLS when configured) and HTTP, until shutdown.

use std::future::{Future, IntoFuture as _};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use xtrail_proto::v1::ingest_server::IngestServer;
use xtrail_proto::v1::trails_server::TrailsServer;

use crate::auth::{Auth, Role};
use crate::config::ServerConfig;
use crate::conn::{GrpcIncoming, HttpListener, Listener, Peer, Tracker};
use crate::health::Health;
use crate::http::{router, HttpState};
use crate::ingest::{IngestService, Writer};
use crate::metrics::Metrics;
use crate::storage::retrying::RetryingStorage;
use crate::storage::Storage;
use crate::subscribe::Hub;

/// How long a shutdown waits for open streams to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How often threat aggregation is retried when `threats.db` could not be opened at start.
const THREATS_RETRY: Duration = Duration::from_secs(5);
/// How often a subscriber looks for events other collectors committed to a shared store.
const POLL_SHARED_STORE: Duration = Duration::from_millis(200);

/// Addresses actually bound (useful with port 0).
#[derive(Clone, Copy, Debug)]
pub struct Bound {
    /// gRPC.
    pub grpc: SocketAddr,
    /// HTTP.
    pub http: SocketAddr,
}

/// Runs the collector until `shutdown` completes. `on_bound` is called once both listeners
/// are bound.
pub async fn serve(
    cfg: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(Bound),
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());
    let last_cursor = Arc::new(AtomicU64::new(0));
    // A store that cannot be opened (a full disk) does not stop the collector: it serves
    // health (red, with the reason) and keeps trying; sensors keep spooling meanwhile.
    let storage: Arc<dyn Storage> = {
        let last_cursor = Arc::clone(&last_cursor);
        let health = Arc::clone(&health);
        let on_open = move |opened: &dyn Storage| {
            if let Ok(last) = opened.last_cursor() {
                last_cursor.fetch_max(last, std::sync::atomic::Ordering::SeqCst);
            }
            health.storage_ok();
        };
        Arc::new(match &cfg.database {
            Some(url) => RetryingStorage::postgres(url.clone(), on_open),
            None => RetryingStorage::open(cfg.data_dir.clone(), on_open),
        })
    };
    // A store that opens but cannot take a write (a full disk) is red from the start.
    if let Err(e) = storage.stats().and_then(|_| storage.probe()) {
        log::error!(
            "the event store in {} cannot take writes now: {e}; serving without ingest until it can",
            cfg.data_dir.display()
        );
        health.storage_failed(&e.to_string());
    }
    health.spawn_prober(Arc::clone(&storage));
    let (live, _) = broadcast::channel(cfg.subscriber_buffer);
    let writer = Writer::spawn(
        Arc::clone(&storage),
        live.clone(),
        Arc::clone(&last_cursor),
        Arc::clone(&metrics),
        Arc::clone(&health),
    )
    .context("starting the writer thread")?;
    let hub = Hub {
        storage: Arc::clone(&storage),
        live,
        last_cursor,
        metrics: Arc::clone(&metrics),
        // Other collectors may commit to a shared PostgreSQL store: subscribers follow the
        // store itself (see `subscribe`).
        poll_storage: cfg.database.as_ref().map(|_| POLL_SHARED_STORE),
    };
    crate::export::spawn_all(&cfg.exporters, &hub, &cfg.data_dir)
        .context("starting the exporters")?;
    cfg.retention.spawn(
        Arc::clone(&storage),
        Arc::clone(&metrics),
        Duration::from_secs(60),
    );

    let auth = Auth::new(
        cfg.sensor_tokens.clone(),
        cfg.subscriber_tokens.clone(),
        Some(cfg.data_dir.clone()),
        Arc::clone(&metrics),
    );
    if auth.is_open(Role::Sensor) {
        log::warn!("no sensor credential and no --sensor-token: anyone who can reach the gRPC port may publish under any name");
    } else if auth.has_shared_sensor_tokens() {
        log::warn!("shared --sensor-token configured (lab use): its holders may publish under any sensor name; give each sensor its own credential with `xtrail-collector sensor add NAME`");
    }
    if auth.is_open(Role::Subscriber) {
        log::warn!("no --subscriber-token: anyone who can reach the ports may read events");
    }

    let console = crate::console::Console::new(&cfg.data_dir, cfg.console_sessions);
    // Threat aggregates and triage, set below once `threats.db` opens; heartbeats answer
    // with its suppression list.
    let threats = Arc::new(std::sync::OnceLock::new());
    crate::console::sensors::spawn_follower(&hub, Arc::clone(&console.db));
    let ingest = IngestServer::new(
        IngestService::new(writer, cfg.limits, Arc::clone(&metrics), auth.clone())
            .with_heartbeats(Arc::clone(&console.db))
            .with_suppressions(Arc::clone(&threats)),
    )
    .max_decoding_message_size(cfg.limits.max_bytes);
    let ingest = InterceptedService::new(ingest, auth.interceptor(Role::Sensor));
    let events = crate::live::EventsRoutes::new(hub.clone());
    let events = InterceptedService::new(events, auth.interceptor(Role::Subscriber));
    // Trail distribution: sensors fetch the set with their own credential.
    let trail_holder = crate::trails::spawn_initial_load(&cfg.trails);
    let trail_dist = Arc::new(crate::trail_dist::TrailDist::default());
    if let Some(path) = &cfg.trail_set {
        trail_dist
            .follow(path.clone(), Arc::clone(&trail_holder))
            .context("--trail-set")?;
    }
    let trails_service = TrailsServer::new(crate::trail_dist::TrailsService {
        dist: Arc::clone(&trail_dist),
    })
    .max_encoding_message_size(4 << 20);
    let trails_service = InterceptedService::new(trails_service, auth.interceptor(Role::Sensor));

    let (reporter, health_service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("xtrail.v1.Events", tonic_health::ServingStatus::Serving)
        .await;
    // Ingest follows the store: NOT_SERVING while commits fail.
    {
        let mut changes = health.watch();
        tokio::spawn(async move {
            loop {
                let status = if changes.borrow_and_update().is_none() {
                    tonic_health::ServingStatus::Serving
                } else {
                    tonic_health::ServingStatus::NotServing
                };
                reporter
                    .set_service_status("xtrail.v1.Ingest", status)
                    .await;
                if changes.changed().await.is_err() {
                    return;
                }
            }
        });
    }
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(xtrail_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(xtrail_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("building the reflection service")?;

    // Read before binding: a bad certificate is an error at start, not at the first client.
    let http_tls = match &cfg.http_tls {
        Some((cert, key)) => Some(crate::console::tls::acceptor(cert, key)?),
        None => None,
    };
    let grpc_listener = TcpListener::bind(cfg.grpc)
        .await
        .with_context(|| format!("binding gRPC on {}", cfg.grpc))?;
    let http_listener = TcpListener::bind(cfg.http)
        .await
        .with_context(|| format!("binding HTTP on {}", cfg.http))?;
    let bound = Bound {
        grpc: grpc_listener.local_addr()?,
        http: http_listener.local_addr()?,
    };

    let mut builder = Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)));
    if let Some((cert, key)) = &cfg.tls {
        let cert = std::fs::read(cert)
            .with_context(|| format!("reading TLS certificate {}", cert.display()))?;
        let key =
            std::fs::read(key).with_context(|| format!("reading TLS key {}", key.display()))?;
        builder = builder
            .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
            .context("TLS configuration")?;
    }

    let (stop_tx, _) = broadcast::channel::<()>(1);
    let stop_grpc = {
        let mut rx = stop_tx.subscribe();
        async move {
            let _ = rx.recv().await;
        }
    };
    let stop_http = {
        let mut rx = stop_tx.subscribe();
        async move {
            let _ = rx.recv().await;
        }
    };
    // Graceful shutdown waits for open streams; sensors and subscribers keep theirs open
    // for ever, so after a grace period the collector stops regardless (nothing is lost:
    // unacknowledged batches are resent, subscribers resume from their cursor).
    let grace_over = {
        let mut rx = stop_tx.subscribe();
        async move {
            let _ = rx.recv().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        }
    };
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(());
    });

    let grpc = builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(ingest)
        .add_service(events)
        .add_service(trails_service)
        .serve_with_incoming_shutdown(
            GrpcIncoming::new(
                grpc_listener,
                Tracker::new(Listener::Grpc, cfg.grpc_conns, Arc::clone(&metrics)),
            ),
            stop_grpc,
        );
    start_threats(
        Arc::clone(&threats),
        hub.clone(),
        cfg.data_dir.clone(),
        cfg.threats,
    );
    let http_state = Arc::new(HttpState {
        threats,
        trails: trail_holder,
        trail_dist,
        hub,
        auth,
        health,
        console,
    });
    let http_listener = crate::console::tls::MaybeTlsListener {
        inner: HttpListener {
            listener: http_listener,
            tracker: Tracker::new(Listener::Http, cfg.http_conns, Arc::clone(&metrics)),
        },
        tls: http_tls,
    };
    let http = axum::serve(
        http_listener,
        router(http_state).into_make_service_with_connect_info::<Peer>(),
    )
    .with_graceful_shutdown(stop_http);

    on_bound(bound);
    tokio::select! {
        (g, h) = async { tokio::join!(grpc, http.into_future()) } => {
            g.context("gRPC server")?;
            h.context("HTTP server")?;
        }
        () = grace_over => log::info!("streams still open after {SHUTDOWN_GRACE:?}; closing them"),
    }
    Ok(())
}

/// Starts threat aggregation, which follows the store from its persisted cursor (catching up
/// first), into `slot`. The first try is made here, before the HTTP server starts, so
/// `/api/threats` answers at once; if `threats.db` cannot be opened (a full disk), it is
/// retried every [`THREATS_RETRY`] until it can.
fn start_threats(
    slot: Arc<std::sync::OnceLock<Arc<crate::console::threats::Threats>>>,
    hub: Hub,
    data_dir: std::path::PathBuf,
    config: crate::console::threats::ThreatsConfig,
) {
    let try_start = move || {
        crate::console::threats::Threats::spawn(&hub, &data_dir, config).map(|t| {
            let _ = slot.set(t);
        })
    };
    let Err(e) = try_start() else { return };
    log::error!(
        "threat aggregation not started: {e}; retrying every {}s",
        THREATS_RETRY.as_secs()
    );
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(THREATS_RETRY).await;
            match try_start() {
                Ok(()) => {
                    log::info!("threat aggregation started");
                    return;
                }
                Err(e) => log::debug!("threat aggregation still not started: {e}"),
            }
        }
    });
}
