//! Network namespaces joined by a veth pair, and raw frame injection from inside one.
//!
//! Everything created here is removed on drop. Addresses come from 198.18.0.0/15 and
//! 2001:db8::/32; nothing here routes anywhere outside the two namespaces.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// Failures creating or using namespaces.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("`{cmd}` failed: {stderr}")]
    Command { cmd: String, stderr: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

fn ip(args: &[&str]) -> Result<Output, NetnsError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| NetnsError::Io {
            what: "running ip (install iproute2)".into(),
            source,
        })?;
    if !out.status.success() {
        return Err(NetnsError::Command {
            cmd: format!("ip {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Two namespaces, `sensor_ns` and `peer_ns`, joined by a veth pair.
#[derive(Debug)]
pub struct VethPair {
    pub sensor_ns: String,
    pub peer_ns: String,
    /// The sensor's end, inside `sensor_ns`.
    pub sensor_if: String,
    /// The traffic source's end, inside `peer_ns`.
    pub peer_if: String,
    /// IPv4 of the sensor's end (198.18.N.1).
    pub sensor_ip: String,
    /// IPv4 of the peer's end (198.18.N.2).
    pub peer_ip: String,
    /// MAC of the sensor's end.
    pub sensor_mac: [u8; 6],
    /// MAC of the peer's end.
    pub peer_mac: [u8; 6],
}

impl VethPair {
    /// Creates `<tag>s<N>` and `<tag>p<N>` namespaces and the veth between them.
    /// `tag` should be short (interface names are limited to 15 bytes).
    pub fn create(tag: &str) -> Result<VethPair, NetnsError> {
        VethPair::create_with_queues(tag, 1)
    }

    /// Like [`VethPair::create`], with `queues` receive and transmit queues on each end
    /// (flows are spread over them by the sender's queue selection).
    pub fn create_with_queues(tag: &str, queues: u32) -> Result<VethPair, NetnsError> {
        let n = (std::process::id() % 10_000) * 100 + COUNTER.fetch_add(1, Ordering::Relaxed) % 100;
        let subnet = n % 250;
        let pair = VethPair {
            sensor_ns: format!("{tag}s{n}"),
            peer_ns: format!("{tag}p{n}"),
            sensor_if: format!("{tag}a{n}"),
            peer_if: format!("{tag}b{n}"),
            sensor_ip: format!("198.18.{subnet}.1"),
            peer_ip: format!("198.18.{subnet}.2"),
            sensor_mac: [0x02, 0x58, 0x54, 0, (n >> 8) as u8, n as u8],
            peer_mac: [0x02, 0x58, 0x54, 1, (n >> 8) as u8, n as u8],
        };
        // Remove leftovers of an earlier run with the same names.
        let _ = ip(&["netns", "del", &pair.sensor_ns]);
        let _ = ip(&["netns", "del", &pair.peer_ns]);
        ip(&["netns", "add", &pair.sensor_ns])?;
        // From here on, Drop cleans up whatever was created.
        ip(&["netns", "add", &pair.peer_ns])?;
        let q = queues.max(1).to_string();
        ip(&[
            "link",
            "add",
            &pair.sensor_if,
            "netns",
            &pair.sensor_ns,
            "numrxqueues",
            &q,
            "numtxqueues",
            &q,
            "type",
            "veth",
            "peer",
            "name",
            &pair.peer_if,
            "netns",
            &pair.peer_ns,
            "numrxqueues",
            &q,
            "numtxqueues",
            &q,
        ])?;
        let mac = |m: [u8; 6]| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        for (ns, ifname, addr, addr6, m) in [
            (
                &pair.sensor_ns,
                &pair.sensor_if,
                &pair.sensor_ip,
                format!("2001:db8:{subnet:x}::1/64"),
                pair.sensor_mac,
            ),
            (
                &pair.peer_ns,
                &pair.peer_if,
                &pair.peer_ip,
                format!("2001:db8:{subnet:x}::2/64"),
                pair.peer_mac,
            ),
        ] {
            ip(&["-n", ns, "link", "set", ifname, "address", &mac(m)])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                ifname,
            ])?;
            ip(&[
                "-n", ns, "-6", "addr", "add", &addr6, "dev", ifname, "nodad",
            ])?;
            ip(&["-n", ns, "link", "set", ifname, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(pair)
    }

    /// Sets the MTU of both ends.
    pub fn set_mtu(&self, mtu: u32) -> Result<(), NetnsError> {
        let mtu = mtu.to_string();
        for (ns, ifname) in [
            (&self.sensor_ns, &self.sensor_if),
            (&self.peer_ns, &self.peer_if),
        ] {
            ip(&["-n", ns, "link", "set", "dev", ifname, "mtu", &mtu])?;
        }
        Ok(())
    }

    /// A command run inside the sensor's namespace.
    pub fn in_sensor_ns(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.sensor_ns, program]);
        c
    }

    /// A command run inside the peer's namespace.
    pub fn in_peer_ns(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.peer_ns, program]);
        c
    }

    /// A raw injector on the peer's end: frames sent arrive at the sensor's end.
    pub fn injector(&self) -> Result<Injector, NetnsError> {
        Injector::open(&self.peer_ns, &self.peer_if)
    }

    /// Whether an XDP program is attached to the sensor's end.
    pub fn sensor_has_xdp(&self) -> Result<bool, NetnsError> {
        let out = ip(&[
            "-n",
            &self.sensor_ns,
            "-j",
            "-d",
            "link",
            "show",
            &self.sensor_if,
        ])?;
        let text = String::from_utf8_lossy(&out.stdout);
        // iproute2 prints an "xdp" object (mode, prog id) only while a program is attached.
        Ok(text.contains("\"xdp\":"))
    }

    /// Adds a veth pair `a` / `b` inside the peer's namespace, both ends up and without IPv6
    /// addresses (nothing of their own is sent): a relay's way into the pair.
    pub fn add_peer_veth(&self, a: &str, b: &str) -> Result<(), NetnsError> {
        let ns = self.peer_ns.as_str();
        ip(&[
            "-n", ns, "link", "add", a, "type", "veth", "peer", "name", b,
        ])?;
        for end in [a, b] {
            ip(&["-n", ns, "link", "set", end, "addrgenmode", "none"])?;
            ip(&["-n", ns, "link", "set", end, "up"])?;
        }
        Ok(())
    }

    /// Packets received on the sensor's end, from /sys inside the namespace.
    pub fn sensor_rx_packets(&self) -> Result<u64, NetnsError> {
        let out = ip(&[
            "-n",
            &self.sensor_ns,
            "-s",
            "-j",
            "link",
            "show",
            &self.sensor_if,
        ])?;
        let text = String::from_utf8_lossy(&out.stdout);
        // "rx":{"bytes":N,"packets":M,...}
        let packets = text
            .split("\"rx\":{")
            .nth(1)
            .and_then(|s| s.split("\"packets\":").nth(1))
            .and_then(|s| s.split([',', '}']).next())
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| NetnsError::Command {
                cmd: format!(
                    "ip -n {} -s -j link show {}",
                    self.sensor_ns, self.sensor_if
                ),
                stderr: format!("no rx packet count in its output: {}", text.trim()),
            })?;
        Ok(packets)
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.sensor_ns]);
        let _ = ip(&["netns", "del", &self.peer_ns]);
    }
}

/// Runs `f` on a thread that has joined namespace `ns` (sockets it creates live there).
pub fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<Result<T, NetnsError>> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let nsfile = std::fs::File::open(&path).map_err(|source| NetnsError::Io {
            what: format!("opening {path}"),
            source,
        })?;
        // SAFETY: setns on a valid namespace descriptor affects only this thread.
        if unsafe { libc::setns(nsfile.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(NetnsError::Io {
                what: format!("joining namespace {path}"),
                source: io::Error::last_os_error(),
            });
        }
        Ok(f())
    })
}

/// An AF_PACKET socket bound to an interface inside a namespace.
pub struct Injector {
    fd: OwnedFd,
}

impl Injector {
    /// Opens the socket from a helper thread that joins `ns` (the socket keeps that
    /// namespace; this thread's namespace is unchanged).
    pub fn open(ns: &str, ifname: &str) -> Result<Injector, NetnsError> {
        let path = format!("/run/netns/{ns}");
        let ifname = ifname.to_string();
        let handle = std::thread::spawn(move || -> Result<OwnedFd, NetnsError> {
            let io_err = |what: String| {
                let source = io::Error::last_os_error();
                NetnsError::Io { what, source }
            };
            let nsfile = std::fs::File::open(&path).map_err(|source| NetnsError::Io {
                what: format!("opening {path}"),
                source,
            })?;
            // SAFETY: plain syscalls on valid descriptors; the thread ends right after.
            unsafe {
                if libc::setns(nsfile.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(io_err(format!("joining namespace {path}")));
                }
                let fd = libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW,
                    i32::from((libc::ETH_P_ALL as u16).to_be()),
                );
                if fd < 0 {
                    return Err(io_err("creating AF_PACKET socket".into()));
                }
                let fd = OwnedFd::from_raw_fd(fd);
                let cname = std::ffi::CString::new(ifname.clone()).map_err(|_| NetnsError::Io {
                    what: "interface name".into(),
                    source: io::Error::from(io::ErrorKind::InvalidInput),
                })?;
                let index = libc::if_nametoindex(cname.as_ptr());
                if index == 0 {
                    return Err(io_err(format!("finding {ifname}")));
                }
                let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                sll.sll_family = libc::AF_PACKET as u16;
                sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
                sll.sll_ifindex = index as i32;
                // Skip the qdisc: the generator measures the receiver, not tc.
                let one: libc::c_int = 1;
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_PACKET,
                    libc::PACKET_QDISC_BYPASS,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as u32,
                );
                if libc::bind(
                    fd.as_raw_fd(),
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                ) != 0
                {
                    return Err(io_err(format!("binding to {ifname}")));
                }
                Ok(fd)
            }
        });
        let fd = handle.join().map_err(|_| NetnsError::Io {
            what: "namespace helper thread panicked".into(),
            source: io::Error::other("panic"),
        })??;
        Ok(Injector { fd })
    }

    /// Sends a batch of frames with one `sendmmsg(2)`; returns how many went out.
    pub fn send_batch(&self, frames: &[&[u8]]) -> io::Result<usize> {
        let mut iovs: Vec<libc::iovec> = frames
            .iter()
            .map(|f| libc::iovec {
                iov_base: f.as_ptr() as *mut libc::c_void,
                iov_len: f.len(),
            })
            .collect();
        // SAFETY: zeroed mmsghdr is valid; each points at one iovec that outlives the call.
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .map(|iov| {
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        // SAFETY: msgs is a valid array of mmsghdr of the given length.
        let n =
            unsafe { libc::sendmmsg(self.fd.as_raw_fd(), msgs.as_mut_ptr(), msgs.len() as u32, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Sends one frame.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: frame is a valid buffer of the given length.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
