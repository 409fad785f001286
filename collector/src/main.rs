//! `xtrail-collector`: the server (default command) and `subscribe`, the reference client.

use std::io::Write as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use xtrail_collector::client::{self, SubscribeArgs};
use xtrail_collector::config::{ServeArgs, ServerConfig};
use xtrail_collector::server;

/// xtrail's collector: gRPC ingest from sensors with exactly-once storage, subscriptions for
/// SIEMs, an HTTP JSON API and Prometheus metrics.
#[derive(Parser, Debug)]
#[command(
    name = "xtrail-collector",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Subscribe to a collector and print events as JSON lines.
    Subscribe(SubscribeArgs),
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Some(Command::Subscribe(args)) => rt.block_on(client::run(args)),
        None => {
            let cfg = ServerConfig::from_args(cli.serve)?;
            rt.block_on(server::serve(cfg, shutdown_signal(), |bound| {
                log::info!("gRPC on {}, HTTP on {}", bound.grpc, bound.http);
                // One machine-readable line for scripts and tests that bind port 0.
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "listening grpc={} http={}", bound.grpc, bound.http);
                let _ = out.flush();
            }))
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtrail-collector: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
