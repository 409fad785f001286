//! `xtrail-trails`: builds one compiled trail set from Maltrail's static tree, custom trail
//! folders, public feeds (defined as data in a TOML file, fetched with conditional GET into a
//! cache) and the indicator files SOC teams already have (Zeek Intel, MISP CSV, STIX 2.1).
//!
//! Maltrail's rules (normalisation, merge priorities, filters) live in
//! `xtrail_detect::trails::update`; the file format in `xtrail_detect::trails::compiled`.
//! This crate fetches, parses sources, refuses bad feeds and bad sets, and writes the file.
//!
//! Tests: unit tests beside each module; `tests/build.rs` drives the real binary against
//! feeds served from a loopback HTTP server (every format and failure).

pub mod build;
pub mod feeds;
pub mod fetch;
pub mod indicators;
pub mod keys;
pub mod status;
