//! Shared helpers for the sensor's privileged tests.
#![allow(dead_code)]

/// True when this process may load BPF programs. Without the privilege the test is skipped
/// with a message, except under `CI=true`, where a missing privilege fails the test.
pub fn privileged(test: &str) -> bool {
    match xtrail_sensor::privilege::check() {
        Ok(()) => true,
        Err(e) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{test}: CI=true and the test cannot run: {e}");
            }
            eprintln!("SKIPPED {test}: {e}");
            false
        }
    }
}
