//! Where things are: the workspace root and the shared data beside it.

use std::path::PathBuf;

/// The workspace root (the parent of xtask/).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// Maltrail's data beside the checkout (`../shared/data/maltrail`), or `$XTRAIL_SHARED/data/maltrail`.
pub fn maltrail_data() -> PathBuf {
    match std::env::var_os("XTRAIL_SHARED") {
        Some(p) => PathBuf::from(p).join("data/maltrail"),
        None => workspace_root().join("../shared/data/maltrail"),
    }
}

/// The release sensor binary.
pub fn sensor_binary() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("release/xtrail-sensor")
}
