//! Traffic tooling shared by the tests, the demo and the benchmarks.
//!
//! - [`frames`]: builds Ethernet frames (VLAN, IPv4 with options and fragments, IPv6 with
//!   extension headers, TCP, UDP, ICMP, ICMPv6) with correct checksums.
//! - [`netns`]: network namespaces joined by a veth pair, torn down on drop, and raw
//!   AF_PACKET injection from inside a namespace.
//! - [`gen`]: the traffic generator (batched raw-socket sends, bounded, optionally paced).
//! - [`pace`]: when each frame of a paced run is due (both generators).
//! - [`flows`]: per-flow rewriting of template frames, the NIC-like generator's sequence.
//! - [`scenario`]: reproducible benchmark traffic mixes with known malicious items.
//! - [`pcapw`]: a pcap writer, for the offline (replay) scenario.
//! - [`http`]: a minimal HTTP/1.1 client for the tests of the collector's and sensor's ports.
//!
//! Addresses for test traffic come from 198.18.0.0/15 and 2001:db8::/32; frames carrying
//! trail addresses only ever travel between namespaces this code created.

pub mod child;
pub mod flows;
pub mod frames;
pub mod gen;
pub mod http;
pub mod netns;
pub mod pace;
pub mod pcapw;
pub mod scenario;
