//! Compiles proto/xtrail/v1/*.proto with protox (no protoc needed) into Rust messages, tonic
//! clients and servers, and an encoded descriptor set for the reflection service.

use std::path::PathBuf;

use anyhow::Context as _;
use prost::Message as _;

const PROTOS: &[&str] = &[
    "xtrail/v1/event.proto",
    "xtrail/v1/ingest.proto",
    "xtrail/v1/events.proto",
    "xtrail/v1/trails.proto",
];

fn main() -> anyhow::Result<()> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["."]).context("compiling proto/xtrail/v1")?;
    let out = PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR")?);
    std::fs::write(out.join("xtrail_v1_descriptor.bin"), fds.encode_to_vec())
        .context("writing the descriptor set")?;
    tonic_prost_build::configure()
        .compile_fds(fds)
        .context("generating Rust code from the descriptor set")?;
    Ok(())
}
