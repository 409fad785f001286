//! Checks, before anything is loaded, that the process may load BPF and attach XDP.

/// CAP_NET_ADMIN, CAP_PERFMON and CAP_BPF bit numbers.
const CAP_NET_ADMIN: u32 = 12;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Why the sensor cannot run live capture.
#[derive(Debug, thiserror::Error)]
#[error("xtrail-sensor needs root, or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN, to load and attach XDP (missing: {missing})")]
pub struct PrivilegeError {
    pub missing: String,
}

/// Reads the effective capability set of this process from /proc/self/status.
fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Ok when the process can load BPF programs and attach them to interfaces.
pub fn check() -> Result<(), PrivilegeError> {
    let caps = effective_caps();
    let missing: Vec<&str> = [
        (CAP_BPF, "CAP_BPF"),
        (CAP_PERFMON, "CAP_PERFMON"),
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
    ]
    .iter()
    .filter(|(bit, _)| caps & (1u64 << bit) == 0)
    .map(|(_, name)| *name)
    .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PrivilegeError {
            missing: missing.join(", "),
        })
    }
}
