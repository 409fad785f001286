//! `xtrail-collector subscribe`: the reference subscriber. Prints matching events as JSON
//! lines (the sensor's field names plus `sensor_id`, `seq`, `cursor`) and, when the stream
//! breaks (collector restart, network, or "fell behind"), resumes after the last cursor it
//! printed, so its output has no gap and no duplicate.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tonic::Code;
use xtrail_proto::json::event_to_json;
use xtrail_proto::v1::events_client::EventsClient;
use xtrail_proto::v1::{subscribe_request::Start, SubscribeRequest};

use crate::filter::parse_filter_args;
use crate::http::parse_time;

/// Flags of `subscribe`.
#[derive(clap::Args, Debug, Clone)]
pub struct SubscribeArgs {
    /// Collector gRPC URL (https:// for TLS).
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub collector: String,
    /// Subscriber token (or env XTRAIL_TOKEN).
    #[arg(long, env = "XTRAIL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Filter terms, key=value: min_severity=high, type=DNS, sensor=gw, src=CIDR, dst=CIDR,
    /// trail=SUBSTR, info=SUBSTR (repeatable; lists also comma-separated).
    #[arg(long = "filter", value_name = "K=V")]
    pub filters: Vec<String>,
    /// Start after this cursor (0 = from the oldest stored event).
    #[arg(long, value_name = "CURSOR", conflicts_with = "since")]
    pub from: Option<u64>,
    /// Start with stored events at or after this time (RFC 3339 or microseconds).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// PEM CA certificate to trust for https.
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Exit after printing this many events.
    #[arg(long, value_name = "N")]
    pub max_events: Option<u64>,
    /// Exit on the first stream error instead of resuming.
    #[arg(long)]
    pub no_resume: bool,
}

async fn connect(args: &SubscribeArgs) -> anyhow::Result<tonic::transport::Channel> {
    let mut endpoint = Endpoint::from_shared(args.collector.clone())
        .with_context(|| format!("collector URL {:?}", args.collector))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    if args.collector.starts_with("https://") {
        let mut tls = ClientTlsConfig::new().with_webpki_roots();
        if let Some(ca) = &args.ca_cert {
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        endpoint = endpoint.tls_config(tls)?;
    }
    Ok(endpoint.connect().await?)
}

/// Runs the subscriber until the stream ends for good (or `--max-events`).
pub async fn run(args: SubscribeArgs) -> anyhow::Result<()> {
    let filter = parse_filter_args(&args.filters)?;
    let mut start = match (&args.from, &args.since) {
        (Some(c), _) => Some(Start::AfterCursor(*c)),
        (None, Some(t)) => Some(Start::SinceTsUs(
            parse_time(t).map_err(|e| anyhow::anyhow!("--since: {e}"))?,
        )),
        (None, None) => None,
    };
    let auth: Option<MetadataValue<Ascii>> = match &args.token {
        Some(t) => Some(
            format!("Bearer {t}")
                .parse()
                .context("the token is not a valid header value")?,
        ),
        None => None,
    };
    let mut printed = 0u64;
    let mut last_cursor: Option<u64> = None;
    let mut delay = Duration::from_millis(100);
    let stdout = std::io::stdout();
    loop {
        if let Some(c) = last_cursor {
            start = Some(Start::AfterCursor(c));
        }
        let result: Result<(), tonic::Status> = async {
            let channel = connect(&args)
                .await
                .map_err(|e| tonic::Status::unavailable(format!("{e:#}")))?;
            let auth = auth.clone();
            let mut client =
                EventsClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
                    if let Some(v) = &auth {
                        req.metadata_mut().insert("authorization", v.clone());
                    }
                    Ok(req)
                })
                .max_decoding_message_size(64 << 20);
            let req = SubscribeRequest {
                filter: Some(filter.clone()),
                start,
            };
            let mut stream = client.subscribe(req).await?.into_inner();
            delay = Duration::from_millis(100);
            while let Some(ev) = stream.message().await? {
                let mut out = stdout.lock();
                let line = event_to_json(&ev).to_string();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
                last_cursor = Some(ev.cursor);
                printed += 1;
                if args.max_events.is_some_and(|m| printed >= m) {
                    return Ok(());
                }
            }
            Err(tonic::Status::unavailable("the collector ended the stream"))
        }
        .await;
        match result {
            Ok(()) => return Ok(()),
            Err(s)
                if matches!(
                    s.code(),
                    Code::Unauthenticated | Code::PermissionDenied | Code::InvalidArgument
                ) =>
            {
                bail!("{}: {}", s.code(), s.message());
            }
            Err(s) => {
                if args.no_resume {
                    bail!("{}: {}", s.code(), s.message());
                }
                if let Some(c) = s
                    .metadata()
                    .get(crate::subscribe::LAST_CURSOR_TRAILER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    last_cursor = Some(last_cursor.map_or(c, |l| l.max(c)));
                }
                eprintln!(
                    "xtrail-collector subscribe: {}: {}; resuming after cursor {} in {delay:?}",
                    s.code(),
                    s.message(),
                    last_cursor.map_or_else(|| "(start point)".into(), |c| c.to_string())
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
