//! `xtrail-collector`: the server (default command) and `subscribe`, the reference client.

use std::io::Write as _;
use std::process::ExitCode;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use xtrail_collector::auth::CredentialStore;
use xtrail_collector::client::{self, SubscribeArgs};
use xtrail_collector::config::{ServeArgs, ServerConfig};
use xtrail_collector::server;

use xtrail_detect::event::format_rfc3339;

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
    /// Per-sensor credentials: `add` prints a new token (once), `revoke` ends one, `list`.
    Sensor {
        #[command(subcommand)]
        action: SensorAction,
        /// The collector's data directory (where `credentials.db` lives).
        #[arg(long, value_name = "DIR", global = true)]
        data_dir: Option<PathBuf>,
        /// The collector's config file (its data_dir is used).
        #[arg(long, value_name = "FILE", global = true)]
        config: Option<PathBuf>,
    },
    /// Console users: `add` and `passwd` read the password from the first line of standard
    /// input; `del`; `list`.
    User {
        #[command(subcommand)]
        action: UserAction,
        /// The collector's data directory (where `console.db` lives).
        #[arg(long, value_name = "DIR", global = true)]
        data_dir: Option<PathBuf>,
        /// The collector's config file (its data_dir is used).
        #[arg(long, value_name = "FILE", global = true)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum UserAction {
    /// Adds a console user; the password is the first line of standard input.
    Add {
        /// User name (1-64 of A-Z a-z 0-9 . _ @ -).
        name: String,
        /// admin (everything, users and audit log), analyst (reads and triages) or viewer
        /// (reads).
        #[arg(long, value_name = "ROLE")]
        role: xtrail_collector::access::Role,
        /// Networks the user may see (CIDR,CIDR,...; IPv4 and IPv6); default: all.
        #[arg(long, value_name = "CIDR,...")]
        scope: Option<String>,
    },
    /// Sets a user's password (first line of standard input); ends the user's sessions.
    Passwd {
        /// User name.
        name: String,
    },
    /// Deletes a user; ends the user's sessions.
    Del {
        /// User name.
        name: String,
    },
    /// Lists users (never their hashes).
    List,
}

/// The first line of standard input, without its line end; an empty one is refused.
fn password_from_stdin() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let pw = line.trim_end_matches(['\n', '\r']).to_string();
    if pw.is_empty() {
        anyhow::bail!("no password: give it as the first line of standard input");
    }
    Ok(pw)
}

/// The data directory an administrative command works on: `--data-dir`, else the config
/// file's, else the default (the same rules as `serve`).
fn admin_data_dir(data_dir: Option<PathBuf>, config: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let cfg = ServerConfig::from_args(ServeArgs {
        data_dir,
        config,
        ..ServeArgs::default()
    })?;
    Ok(cfg.data_dir)
}

fn user_command(
    action: UserAction,
    data_dir: Option<PathBuf>,
    config: Option<PathBuf>,
) -> anyhow::Result<()> {
    use xtrail_collector::console::{audit, db::ConsoleDb, users};
    let db = ConsoleDb::open(&admin_data_dir(data_dir, config)?)?;
    let log = |action: &str, detail: String| {
        if let Err(e) = audit::append(&db, "cli", None, action, &detail) {
            eprintln!("xtrail-collector: warning: audit log: {e}");
        }
    };
    match action {
        UserAction::Add { name, role, scope } => {
            let scope = xtrail_collector::access::Scope::parse(scope.as_deref().unwrap_or(""))
                .map_err(anyhow::Error::msg)?;
            let pw = password_from_stdin()?;
            users::add(&db, &name, &pw, role, &scope)?;
            log(
                "user_add",
                format!("{name} role={} scope={scope}", role.as_str()),
            );
            eprintln!(
                "xtrail-collector: user {name:?} added ({}, scope {scope})",
                role.as_str()
            );
        }
        UserAction::Passwd { name } => {
            let pw = password_from_stdin()?;
            users::passwd(&db, &name, &pw)?;
            log("user_passwd", name.clone());
            eprintln!("xtrail-collector: password of {name:?} changed; its sessions ended");
        }
        UserAction::Del { name } => {
            users::delete(&db, &name)?;
            log("user_del", name.clone());
            eprintln!("xtrail-collector: user {name:?} deleted; its sessions ended");
        }
        UserAction::List => {
            for u in users::list(&db)? {
                println!(
                    "{}\t{}\t{}\tcreated {}",
                    u.name,
                    u.role.as_str(),
                    u.scope,
                    format_rfc3339(u.created_us)
                );
            }
        }
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
enum SensorAction {
    /// Creates a credential that may publish only as sensor NAME; prints its token.
    Add {
        /// Sensor name (1-64 of A-Z a-z 0-9 . _ -), as the sensor's --sensor-name.
        name: String,
    },
    /// Revokes NAME's credential; its open streams end within seconds.
    Revoke {
        /// Sensor name.
        name: String,
    },
    /// Lists credentials (never their tokens).
    List,
}

fn sensor_command(
    action: SensorAction,
    data_dir: Option<PathBuf>,
    config: Option<PathBuf>,
) -> anyhow::Result<()> {
    let store = CredentialStore::open(&admin_data_dir(data_dir, config)?)?;
    match action {
        SensorAction::Add { name } => {
            let token = store.add(&name)?;
            println!("{token}");
            eprintln!(
                "xtrail-collector: credential for sensor {name:?} created; give the token to that sensor (--token or $XTRAIL_TOKEN, with --sensor-name {name}); it is not shown again"
            );
        }
        SensorAction::Revoke { name } => {
            store.revoke(&name)?;
            eprintln!("xtrail-collector: credential of sensor {name:?} revoked");
        }
        SensorAction::List => {
            for c in store.list()? {
                let state = match c.revoked_us {
                    Some(t) => format!("revoked {}", format_rfc3339(t)),
                    None => "active".into(),
                };
                println!(
                    "{}\tcreated {}\t{state}",
                    c.name,
                    format_rfc3339(c.created_us)
                );
            }
        }
    }
    Ok(())
}

/// Raises the open-file limit to its hard maximum: the connection limits, not the process
/// limit, should be what refuses a flood.
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read the struct we pass, nothing else.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
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
        Some(Command::Sensor {
            action,
            data_dir,
            config,
        }) => sensor_command(action, data_dir, config),
        Some(Command::User {
            action,
            data_dir,
            config,
        }) => user_command(action, data_dir, config),
        None => {
            raise_nofile();
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
