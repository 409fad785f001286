//! Builds the generator's XDP program (bench/nicgen/ebpf) for bpfel-unknown-none with
//! nightly and bpf-linker, as sensor-user's build script does for the sensor's program.

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest_dir)
        .join("ebpf")
        .canonicalize()
        .context("bench/nicgen/ebpf not found")?;
    // The program's shared types live next to it (aya-build watches only `ebpf/`).
    let common = std::path::Path::new(&manifest_dir).join("common");
    println!("cargo:rerun-if-changed={}", common.display());
    let root = root.to_str().context("non-UTF-8 path")?.to_owned();
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "xtrail-nicgen-ebpf",
            root_dir: &root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context("building the generator's XDP program (run `cargo xtask deps` for nightly rust-src and bpf-linker)")
}
