//! An exporter's persisted cursor: `DIR/NAME.cursor`, one decimal number and a newline,
//! replaced atomically (written to `NAME.cursor.tmp`, synced, renamed over, directory
//! synced), so a crash leaves either the old or the new cursor, never a torn one.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// One exporter's cursor file.
#[derive(Debug)]
pub struct CursorFile {
    dir: PathBuf,
    path: PathBuf,
    tmp: PathBuf,
}

impl CursorFile {
    /// The cursor file of exporter `name` in `dir`.
    pub fn new(dir: &Path, name: &str) -> Self {
        CursorFile {
            dir: dir.to_path_buf(),
            path: dir.join(format!("{name}.cursor")),
            tmp: dir.join(format!("{name}.cursor.tmp")),
        }
    }

    /// The saved cursor, `None` if there is none yet.
    pub fn load(&self) -> std::io::Result<Option<u64>> {
        match fs::read_to_string(&self.path) {
            Ok(text) => text.trim().parse().map(Some).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} does not hold a cursor: {text:?}", self.path.display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Replaces the saved cursor, durably.
    pub fn store(&self, cursor: u64) -> std::io::Result<()> {
        let mut f = fs::File::create(&self.tmp)?;
        writeln!(f, "{cursor}")?;
        f.sync_all()?;
        drop(f);
        fs::rename(&self.tmp, &self.path)?;
        fs::File::open(&self.dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let c = CursorFile::new(dir.path(), "siem");
        assert_eq!(c.load().unwrap(), None);
        c.store(42).unwrap();
        c.store(43).unwrap();
        assert_eq!(c.load().unwrap(), Some(43));
        assert!(!dir.path().join("siem.cursor.tmp").exists());
        fs::write(dir.path().join("siem.cursor"), "x").unwrap();
        assert!(c.load().is_err());
    }
}
