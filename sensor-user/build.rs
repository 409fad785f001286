//! Builds the XDP program (xdp-ebpf/program) for bpfel-unknown-none with nightly and
//! bpf-linker, so that `cargo build` of the sensor embeds a fresh object.
//! `cargo xtask deps` installs what this needs.

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest_dir)
        .join("../xdp-ebpf/program")
        .canonicalize()
        .context("xdp-ebpf/program not found next to sensor-user")?;
    let common = std::path::Path::new(&manifest_dir).join("../xdp-ebpf/common");
    println!("cargo:rerun-if-changed={}", common.display());
    let root = root.to_str().context("non-UTF-8 path")?.to_owned();
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "xtrail-xdp",
            root_dir: &root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context("building the XDP program (run `cargo xtask deps` to install nightly rust-src and bpf-linker)")
}
