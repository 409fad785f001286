//! A network namespace joined to the root namespace by a veth pair, for receivers the tests
//! start inside it (`ip netns exec`). Addresses are /30s from 198.19.252.0/22; everything
//! is removed on drop, also when a test panics.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// True when the test may go on as root. Not root: panics under `CI=true`, otherwise prints
/// a skip message naming `test` and returns false.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} needs root for a network namespace (CI=true)"
    );
    eprintln!("SKIP {test}: needs root for a network namespace");
    false
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("running ip (install iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}`: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A namespace `name` with the veth end `ns_if` at `ns_ip`, its peer `host_if` at
/// `host_ip` in the root namespace (a /30 between them). Deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
    pub host_if: String,
    pub ns_if: String,
    pub host_ip: Ipv4Addr,
    pub ns_ip: Ipv4Addr,
}

impl Netns {
    /// Creates a namespace and veth pair with names and a /30 unique to this process and
    /// call (process id and a counter).
    pub fn create() -> Netns {
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        // 256 /30s in 198.19.252.0/22; neighbouring processes and calls differ.
        let k = (pid.wrapping_mul(7).wrapping_add(n)) % 256;
        let base = u32::from(Ipv4Addr::new(198, 19, 252, 0)) + k * 4;
        let ns = Netns {
            name: format!("xtrail-exp-{pid}-{n}"),
            host_if: format!("xe{pid}h{}", n % 100),
            ns_if: format!("xe{pid}n{}", n % 100),
            host_ip: Ipv4Addr::from(base + 1),
            ns_ip: Ipv4Addr::from(base + 2),
        };
        // Leftovers of an earlier process with the same id.
        let _ = ip(&["link", "del", &ns.host_if]);
        let _ = ip(&["netns", "del", &ns.name]);
        if let Err(e) = ns.setup() {
            panic!("network namespace {}: {e}", ns.name);
        }
        ns
    }

    fn setup(&self) -> Result<(), String> {
        let (host, nsip) = (format!("{}/30", self.host_ip), format!("{}/30", self.ns_ip));
        let n = self.name.as_str();
        ip(&["netns", "add", n])?;
        ip(&[
            "link",
            "add",
            &self.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &self.ns_if,
            "netns",
            n,
        ])?;
        ip(&["addr", "add", &host, "dev", &self.host_if])?;
        ip(&["link", "set", &self.host_if, "up"])?;
        ip(&["-n", n, "addr", "add", &nsip, "dev", &self.ns_if])?;
        ip(&["-n", n, "link", "set", &self.ns_if, "up"])?;
        ip(&["-n", n, "link", "set", "lo", "up"])
    }

    /// A command run inside the namespace: `ip netns exec NAME program` (ip execs the
    /// program, so the child's pid is the program's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// A TCP listener bound to `port` on the namespace's address, from a thread that joins
    /// the namespace (the socket stays in it and can be used from any thread).
    pub fn tcp_listener(&self, port: u16) -> std::net::TcpListener {
        let path = format!("/var/run/netns/{}", self.name);
        let addr = (self.ns_ip, port);
        std::thread::spawn(move || {
            let f = std::fs::File::open(&path).expect("open the namespace");
            use std::os::fd::AsRawFd as _;
            // SAFETY: `f` is an open namespace file for the whole call; setns only changes
            // this short-lived thread's network namespace.
            let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            std::net::TcpListener::bind(addr).expect("bind in the namespace")
        })
        .join()
        .expect("bind thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting one end removes both; the namespace goes once its processes are gone.
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}
