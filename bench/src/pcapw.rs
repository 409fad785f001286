//! Writes frames to a classic pcap file (Ethernet, microsecond timestamps).

use std::io::{self, Write};

/// Writes the pcap global header.
pub fn write_header(w: &mut impl Write) -> io::Result<()> {
    w.write_all(&0xa1b2_c3d4u32.to_le_bytes())?;
    w.write_all(&2u16.to_le_bytes())?;
    w.write_all(&4u16.to_le_bytes())?;
    w.write_all(&0i32.to_le_bytes())?;
    w.write_all(&0u32.to_le_bytes())?;
    w.write_all(&65535u32.to_le_bytes())?;
    w.write_all(&1u32.to_le_bytes())
}

/// Writes one packet record.
pub fn write_packet(w: &mut impl Write, ts_us: i64, frame: &[u8]) -> io::Result<()> {
    w.write_all(&((ts_us / 1_000_000) as u32).to_le_bytes())?;
    w.write_all(&((ts_us % 1_000_000) as u32).to_le_bytes())?;
    w.write_all(&(frame.len() as u32).to_le_bytes())?;
    w.write_all(&(frame.len() as u32).to_le_bytes())?;
    w.write_all(frame)
}
