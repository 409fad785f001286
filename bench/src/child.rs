//! Stopping child processes the way an operator would: SIGINT, a grace period, then SIGKILL.

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// Sends SIGINT and waits up to `grace` for the child to exit; kills it after that.
/// Returns the exit status when it exited on its own.
pub fn interrupt_and_wait(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}
