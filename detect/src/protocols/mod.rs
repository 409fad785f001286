//! Application protocols the sensor looks into: DNS queries and answers, HTTP/1.x requests and
//! responses, TLS ClientHello server names, QUIC Initial server names.
//!
//! Each parser takes one payload slice, borrows from it, allocates nothing (DNS names are
//! decoded into a fixed stack buffer), checks every length against the bytes it has and does a
//! bounded amount of work. None of them reassembles streams: a message split over segments is
//! parsed as far as the first segment goes, except a TLS ClientHello, whose first record
//! [`reassembly`] buffers across TCP segments (bounded per flow, in flows and in time).
//!
//! Tests: unit tests in each file; `tests/mutation.rs`; the `dns`, `http` and `tls` fuzz targets.

pub mod dns;
pub mod http;
pub mod quic;
pub mod reassembly;
pub mod tls;
