//! Where events go: a JSON-lines or Maltrail-lines log on a file or stdout.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::Path;

use xtrail_detect::event::{Event, Format, LineWriter};

/// Bytes of lines an event log holds before it writes them (unless flushed first).
const BUFFER: usize = 64 * 1024;

/// Opens `path` for appending, or stdout for `-`; buffered either way (callers flush).
pub fn open_output(path: &Path) -> io::Result<Box<dyn Write + Send>> {
    if path.as_os_str() == "-" {
        return Ok(Box::new(BufWriter::with_capacity(BUFFER, io::stdout())));
    }
    let file: File = OpenOptions::new().create(true).append(true).open(path)?;
    Ok(Box::new(BufWriter::with_capacity(BUFFER, file)))
}

/// A line-oriented event log.
pub struct EventLog {
    out: Box<dyn Write + Send>,
    lines: LineWriter,
    /// Events written.
    pub written: u64,
}

impl EventLog {
    /// Opens `path` for appending, or stdout for `-`.
    pub fn open(path: &Path, format: Format) -> io::Result<EventLog> {
        Ok(EventLog {
            out: open_output(path)?,
            lines: LineWriter::new(format),
            written: 0,
        })
    }

    /// Writes into any writer (tests, replay into memory).
    pub fn from_writer(out: Box<dyn Write + Send>, format: Format) -> EventLog {
        EventLog {
            out,
            lines: LineWriter::new(format),
            written: 0,
        }
    }

    /// Writes one event as a line.
    pub fn write(&mut self, event: &Event) -> io::Result<()> {
        self.lines.write(&mut self.out, event)?;
        self.written += 1;
        Ok(())
    }

    /// Flushes buffered lines.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
