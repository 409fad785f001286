//! A sensor's persistent identity: 128 random bits in hex, generated once and kept in the
//! state directory (`<state-dir>/identity`), so that two sensors configured with the same
//! name never publish under the same stream id. Each spool adds its own suffix (see
//! [`crate::spool`]), so `run` and `replay` on one host, or a lost spool, never share one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::path::Path;

use crate::error::PublishError;

/// The identity file's name in the state directory.
pub const IDENTITY_FILE: &str = "identity";

/// `n` random bytes as lowercase hex, from the kernel's generator (falling back to a
/// seeded PRNG only if `/dev/urandom` is unreadable).
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    if File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_err()
    {
        let mut rng = fastrand::Rng::new();
        rng.fill(&mut bytes);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn valid(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The identity kept in `state_dir`, if there is one.
pub fn read(state_dir: &Path) -> Result<Option<String>, PublishError> {
    let path = state_dir.join(IDENTITY_FILE);
    match fs::read_to_string(&path) {
        Ok(text) if valid(text.trim()) => Ok(Some(text.trim().to_string())),
        Ok(_) => Err(PublishError::Config(format!(
            "{} does not hold a sensor identity (32 hex digits); remove it to make a new one",
            path.display()
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PublishError::Spool {
            path,
            what: "reading the sensor identity",
            source,
        }),
    }
}

/// The identity kept in `state_dir`, generated (and the directory created) on first use.
/// Safe against a concurrent first start: the file is linked into place without replacing,
/// and the loser reads the winner's.
pub fn load_or_create(state_dir: &Path) -> Result<String, PublishError> {
    if let Some(id) = read(state_dir)? {
        return Ok(id);
    }
    let err = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| PublishError::Spool { path, what, source }
    };
    fs::create_dir_all(state_dir).map_err(err("creating the state directory", state_dir))?;
    let id = random_hex(16);
    let tmp = state_dir.join(format!(".{IDENTITY_FILE}.{}", random_hex(4)));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(err("writing the sensor identity", &tmp))?;
    f.write_all(format!("{id}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(err("writing the sensor identity", &tmp))?;
    drop(f);
    let path = state_dir.join(IDENTITY_FILE);
    let linked = fs::hard_link(&tmp, &path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            if let Ok(d) = File::open(state_dir) {
                let _ = d.sync_all();
            }
            Ok(id)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read(state_dir)?.ok_or_else(|| {
            PublishError::Config(format!("{} vanished while reading it", path.display()))
        }),
        Err(e) => Err(err("writing the sensor identity", &path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        assert_eq!(read(&state).unwrap(), None);
        let a = load_or_create(&state).unwrap();
        assert!(valid(&a), "{a}");
        assert_eq!(load_or_create(&state).unwrap(), a);
        assert_eq!(read(&state).unwrap(), Some(a.clone()));
        let other = tempfile::tempdir().unwrap();
        assert_ne!(load_or_create(other.path()).unwrap(), a);
        fs::write(state.join(IDENTITY_FILE), "junk\n").unwrap();
        assert!(load_or_create(&state).is_err());
    }
}
