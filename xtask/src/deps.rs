//! Idempotent installation of build and test dependencies.
//!
//! Each step checks first and says what it does; a second run only checks.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};

/// Debian packages: clang/m4/libelf/zlib/pkg-config/libpcap for libxdp (xsk-rs) and the eBPF
/// build, iproute2 for namespaces and veth pairs, iputils-ping for the enforce test, openssl
/// for the collector's TLS test certificates, rsyslog (with its GnuTLS driver, for syslog
/// over TLS) as the collector's syslog export receiver, chromium for the console's browser tests (driven over the DevTools protocol, no
/// chromedriver), libcap2-bin (`setcap`) for the test of a sensor given file capabilities.
const APT_PACKAGES: &[&str] = &[
    "clang",
    "m4",
    "libelf-dev",
    "zlib1g-dev",
    "pkg-config",
    "libpcap-dev",
    "iproute2",
    "iputils-ping",
    "openssl",
    "libcap2-bin",
    "tcpreplay",
    "rsyslog",
    "rsyslog-gnutls",
    "postgresql",
    "chromium",
];

const BPF_LINKER_VERSION: &str = "0.13.0";

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn output(cmd: &mut Command) -> String {
    cmd.stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Installs whatever is missing.
pub fn ensure() -> anyhow::Result<()> {
    apt()?;
    nightly_rust_src()?;
    bpf_linker()?;
    python_grpc()?;
    eprintln!("xtask deps: all dependencies present");
    Ok(())
}

fn apt() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .contains("install ok installed")
        })
        .collect();
    if missing.is_empty() {
        eprintln!(
            "xtask deps: Debian packages present ({})",
            APT_PACKAGES.join(" ")
        );
        return Ok(());
    }
    eprintln!(
        "xtask deps: installing Debian packages: {}",
        missing.join(" ")
    );
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "missing Debian packages ({}); run as root or `apt-get install -y {}`",
            missing.join(" "),
            missing.join(" ")
        );
    }
    crate::run(Command::new("apt-get").args(["update", "-qq"]))?;
    crate::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing),
    )
}

/// grpcio for the test that subscribes from Python (the contract is not Rust-only).
fn python_grpc() -> anyhow::Result<()> {
    if quiet(Command::new("python3").args(["-c", "import grpc, grpc_tools"])) {
        eprintln!("xtask deps: Python grpcio and grpcio-tools present");
        return Ok(());
    }
    eprintln!(
        "xtask deps: installing Python grpcio and grpcio-tools (for the Python subscriber test)"
    );
    crate::run(Command::new("python3").args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "grpcio",
        "grpcio-tools",
    ]))
}

fn nightly_rust_src() -> anyhow::Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]));
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        eprintln!(
            "xtask deps: installing the nightly toolchain (the XDP program needs -Z build-std)"
        );
        crate::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]));
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("xtask deps: nightly rust-src present");
        return Ok(());
    }
    eprintln!("xtask deps: adding rust-src to the nightly toolchain");
    crate::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
}

fn bpf_linker() -> anyhow::Result<()> {
    let version = output(Command::new("bpf-linker").arg("--version"));
    if version.contains(BPF_LINKER_VERSION) {
        eprintln!("xtask deps: bpf-linker {BPF_LINKER_VERSION} present");
        return Ok(());
    }
    // Build bpf-linker against the LLVM that ships inside the nightly toolchain, so its LLVM
    // major matches rustc's.
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]));
    let lib = PathBuf::from(sysroot.trim()).join("lib");
    let llvm = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so.") || (n.starts_with("libLLVM-") && n.ends_with(".so")))
        .with_context(|| format!("no libLLVM in {}", lib.display()))?;
    let major = llvm
        .trim_start_matches("libLLVM.so.")
        .trim_start_matches("libLLVM-")
        .split(['.', '-'])
        .next()
        .unwrap_or("22")
        .to_string();
    let prefix = PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
        .join(".cache/xtrail/llvm-prefix");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for name in ["libLLVM.so".to_string(), llvm.clone()] {
        let link = prefix_lib.join(&name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(lib.join(&llvm), &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    eprintln!(
        "xtask deps: installing bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {major} ({llvm}); takes about a minute"
    );
    crate::run(
        Command::new("cargo")
            .env("LLVM_PREFIX", &prefix)
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ]),
    )?;
    if !quiet(Command::new("bpf-linker").arg("--version")) {
        bail!("bpf-linker installed but not on PATH: add ~/.cargo/bin to PATH");
    }
    Ok(())
}
