//! xtrail's gRPC contracts.
//!
//! The `.proto` files under `proto/xtrail/v1/` are the source of truth; this crate compiles
//! them at build time (protox, no protoc) and adds what every user of the contracts needs:
//!
//! - [`v1`]: the generated messages (`Event`, `PublishRequest`, `SubscribeRequest`, ...),
//!   clients (`ingest_client::IngestClient`, `events_client::EventsClient`,
//!   `trails_client::TrailsClient`) and servers.
//! - [`convert`]: the sensor's [`xtrail_detect::event::Event`] to and from [`v1::Event`].
//! - [`json`]: a [`v1::Event`] as the sensor's JSON line, plus its storage identity.
//! - [`limits`]: what a batch and an event may hold (field limits, truncation).
//! - [`FILE_DESCRIPTOR_SET`]: for the gRPC reflection service.
//!
//! Tests: `cargo test -p xtrail-proto` (conversions); the contracts themselves are exercised
//! end to end by `collector/tests/`.

pub mod convert;
pub mod json;
pub mod limits;

/// Generated code for the `xtrail.v1` package.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("xtrail.v1");
}

/// The encoded `FileDescriptorSet` of `xtrail/v1/*.proto`, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/xtrail_v1_descriptor.bin"));

/// The event type a sensor uses to report that its spool overflowed and dropped events.
pub const SPOOL_DROP_TYPE: &str = "SPOOL_DROP";
