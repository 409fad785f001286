//! xtrail's detection library.
//!
//! Everything that decides *what* is malicious and *how it is reported*, with no kernel and
//! no privilege: trail loading and lookup tables ([`trails`]), the event model and its output
//! formats ([`event`]). The sensor binary wires these to the XDP program and AF_XDP sockets;
//! pcap replay drives the same code from files.

pub mod event;
pub mod packet;
pub mod pcap;
pub mod process;
pub mod protocols;
pub mod replay;
pub mod throttle;
pub mod trails;
pub mod whitelist;
