//! CPU time used so far, from the kernel's CPU-time clocks (nanoseconds, not /proc's ticks).

use std::time::Duration;

/// The CPU time (user and system) this process has used: all its threads, alive or gone.
pub fn process() -> Option<Duration> {
    read(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// The CPU time (user and system) the calling thread has used.
pub fn thread() -> Option<Duration> {
    read(libc::CLOCK_THREAD_CPUTIME_ID)
}

fn read(clock: libc::clockid_t) -> Option<Duration> {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    if unsafe { libc::clock_gettime(clock, &mut t) } != 0 {
        return None;
    }
    Some(Duration::new(
        u64::try_from(t.tv_sec).ok()?,
        u32::try_from(t.tv_nsec).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    /// Work on this thread shows on both clocks, and the process's is never behind the
    /// thread's.
    #[test]
    fn work_moves_both_clocks() {
        let (p0, t0) = (super::process().unwrap(), super::thread().unwrap());
        let mut x = 0u64;
        let until = std::time::Instant::now() + std::time::Duration::from_millis(20);
        while std::time::Instant::now() < until {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let (p1, t1) = (super::process().unwrap(), super::thread().unwrap());
        assert!(t1 > t0 && p1 > p0);
        assert!(p1 >= t1, "{p1:?} < {t1:?}");
    }
}
