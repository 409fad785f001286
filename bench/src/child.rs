//! Child processes as an operator runs them: watched for a line on stderr (the sensor's
//! "attached to"), stopped with SIGINT, a grace period, then SIGKILL.

use std::io::{self, BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
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

/// A child whose stderr lines are read by a thread and handed over a channel (and echoed to
/// our stderr with a prefix when asked), so a caller can wait for a line while the child runs.
pub struct Watched {
    pub child: Child,
    pub lines: Receiver<String>,
}

/// Spawns `cmd` with stderr piped into a [`Watched`] (stdout is left as the caller set it).
pub fn spawn_watched(cmd: &mut Command, echo: Option<&'static str>) -> io::Result<Watched> {
    let mut child = cmd.stderr(Stdio::piped()).spawn()?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| io::Error::other("no stderr pipe"))?;
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(prefix) = echo {
                eprintln!("{prefix}{line}");
            }
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Ok(Watched { child, lines })
}

impl Watched {
    /// Waits for a line containing `ready`; fails on a line containing `failed` or after
    /// `timeout`. Returns every line read until then.
    pub fn wait_for(
        &self,
        ready: &str,
        failed: &str,
        timeout: Duration,
    ) -> Result<Vec<String>, String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) if line.contains(ready) => {
                    seen.push(line);
                    return Ok(seen);
                }
                Ok(line) if line.contains(failed) => return Err(line),
                Ok(line) => seen.push(line),
                Err(_) => return Err(format!("no line with {ready:?} within {timeout:?}")),
            }
        }
    }
}
