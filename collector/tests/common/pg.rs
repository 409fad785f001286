//! A private PostgreSQL server for one test: `initdb` into a temporary directory, `pg_ctl
//! start` on a free loopback port (unix socket in the same directory), stopped and removed
//! on drop. As root, the server runs as the `postgres` OS user (initdb refuses root).
//!
//! Without PostgreSQL (Debian's `postgresql` package) the test is skipped with a message;
//! with `CI=true` it fails instead. The server runs with `fsync=off`: the tests kill
//! collectors, never the database server, and a synced commit is not what they measure.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A running private server; stopped (and its directory removed) on drop.
pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

/// The newest `/usr/lib/postgresql/*/bin` with `initdb` and `pg_ctl`.
fn find_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").exists() && bin.join("pg_ctl").exists()).then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl PgServer {
    /// Starts a server, or returns `None` (after saying why) when PostgreSQL is not
    /// installed; under `CI=true` that panics instead.
    pub fn start(tag: &str) -> Option<PgServer> {
        let Some(bin) = find_bin() else {
            let msg = "PostgreSQL not installed (apt-get install postgresql, or cargo xtask deps)";
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{msg}; CI=true requires it");
            }
            eprintln!("SKIPPED: {msg}");
            return None;
        };
        // SAFETY: geteuid has no preconditions.
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let dir = tempfile::Builder::new()
            .prefix(&format!("xtrail-pg-{tag}-"))
            .tempdir()
            .expect("tempdir");
        if as_postgres {
            let ok = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown the server directory to postgres");
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        let mut s = PgServer {
            dir,
            bin,
            port: 0,
            as_postgres,
        };
        let out = s
            .cmd("initdb")
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .args(["--locale=C.UTF-8", "-D"])
            .arg(s.data())
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A port may be taken between choosing and binding it: try a few.
        for _ in 0..5 {
            s.port = free_port();
            let opts = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
                s.port,
                s.dir.path().display()
            );
            let status = s
                .cmd("pg_ctl")
                .arg("-D")
                .arg(s.data())
                .arg("-l")
                .arg(s.dir.path().join("server.log"))
                .args(["-w", "-t", "60", "-o", &opts, "start"])
                .stdout(Stdio::null())
                .status()
                .expect("run pg_ctl");
            if status.success() {
                return Some(s);
            }
        }
        let log = std::fs::read_to_string(s.dir.path().join("server.log")).unwrap_or_default();
        panic!("PostgreSQL did not start:\n{log}");
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn cmd(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    /// The server's directory (data, socket, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The URL of database `db` (created by [`PgServer::create_db`], or `postgres`).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates database `name` and returns its URL.
    pub fn create_db(&self, name: &str) -> String {
        let mut c = postgres::Client::connect(&self.url("postgres"), postgres::NoTls)
            .expect("connect to the test server");
        c.batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create database");
        self.url(name)
    }

    /// A client on database `db`.
    pub fn client(&self, db: &str) -> postgres::Client {
        postgres::Client::connect(&self.url(db), postgres::NoTls).expect("connect")
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
