//! ed25519 key files: one line of 64 hex digits (private seed, or public key).

use std::path::Path;

/// Key file problems.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Not 64 hex digits.
    #[error("{0}: not a key (expected 64 hex digits)")]
    Format(String),
}

pub use xtrail_detect::trails::compiled::{hex, parse_key_hex as parse_hex};

/// Reads a key: a file holding 64 hex digits, or the 64 hex digits themselves.
pub fn read_key(arg: &str) -> Result<[u8; 32], KeyError> {
    if let Some(k) = parse_hex(arg) {
        return Ok(k);
    }
    let text = std::fs::read_to_string(arg).map_err(|source| KeyError::Io {
        path: arg.to_owned(),
        source,
    })?;
    parse_hex(&text).ok_or_else(|| KeyError::Format(arg.to_owned()))
}

/// Writes a key file (`0600` for private keys).
pub fn write_key(path: &Path, key: &[u8; 32], private: bool) -> Result<(), KeyError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| KeyError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .map_err(io)?;
    writeln!(f, "{}", hex(key)).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let k = [7u8; 32];
        assert_eq!(parse_hex(&hex(&k)), Some(k));
        assert_eq!(parse_hex("zz"), None);
        assert!(read_key("/nonexistent/key").is_err());
    }
}
