//! Pacing for the traffic generators: frame `i` of a run at `rate` frames per second is due
//! `i / rate` after the run's start. Shared by the AF_PACKET generators ([`crate::gen`]),
//! which send each tick's frames at its start ([`Pacer::due_in_tick`]), and the NIC-like one
//! (`xtrail-nicgen`, live frames), which injects what is due by now ([`Pacer::due`]): the
//! same rate over a run, bursts of a different shape within a tick.

use std::time::{Duration, Instant};

/// A run's clock: when it started and at what rate it sends.
#[derive(Clone, Copy, Debug)]
pub struct Pacer {
    start: Instant,
    /// Frames per second; None sends flat out.
    rate: Option<u64>,
}

impl Pacer {
    /// A run starting now, at `rate` frames per second or flat out (None; a rate of 0 is
    /// taken as flat out).
    pub fn start(rate: Option<u64>) -> Pacer {
        Pacer {
            start: Instant::now(),
            rate: rate.filter(|&r| r > 0),
        }
    }

    /// Whether the run is paced (not flat out).
    pub fn is_paced(&self) -> bool {
        self.rate.is_some()
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// How many of a run's `count` frames are due by the end of the current `tick` (the run
    /// divided into ticks from its start), and the time left until that end: a generator
    /// that sends them and then sleeps the time left sends a burst of rate × tick a tick.
    /// Flat out: all of them, no time left.
    pub fn due_in_tick(&self, count: u64, tick: Duration) -> (u64, Duration) {
        let Some(rate) = self.rate else {
            return (count, Duration::ZERO);
        };
        let now = self.start.elapsed().as_nanos();
        let tick = tick.as_nanos().max(1);
        let end = (now / tick + 1) * tick;
        let due = end * u128::from(rate) / 1_000_000_000;
        (
            u64::try_from(due).unwrap_or(u64::MAX).min(count),
            Duration::from_nanos(u64::try_from(end - now).unwrap_or(u64::MAX)),
        )
    }

    /// How many of a run's `count` frames are due by now: all of them flat out, else every
    /// frame whose time has come.
    pub fn due(&self, count: u64) -> u64 {
        match self.rate {
            None => count,
            Some(rate) => {
                let due = (self.start.elapsed().as_secs_f64() * rate as f64) as u64 + 1;
                due.min(count)
            }
        }
    }
}

/// Frames per second of `frames` sent in `elapsed` (0 for no time).
pub fn rate(frames: u64, elapsed: Duration) -> f64 {
    let s = elapsed.as_secs_f64();
    if s > 0.0 {
        frames as f64 / s
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_out_everything_is_due_at_once() {
        let p = Pacer::start(None);
        assert_eq!(p.due(500), 500);
        assert_eq!(Pacer::start(Some(0)).due(7), 7);
    }

    #[test]
    fn paced_frames_come_due_one_by_one() {
        // One frame a second: the first is due at the start, the second a second later.
        let p = Pacer::start(Some(1));
        assert_eq!(p.due(10), 1);
    }

    #[test]
    fn a_ticks_frames_are_due_at_its_start() {
        // A frame a second in one-hour ticks: the first tick's 3,600 at once, the time left
        // at most the tick (and nearly all of it: the test would have to stall for most of
        // an hour to see the next tick); flat out everything, no wait.
        let hour = Duration::from_secs(3600);
        let p = Pacer::start(Some(1));
        let (due, left) = p.due_in_tick(10_000, hour);
        assert_eq!(due, 3600);
        assert!(left <= hour && left > hour / 2);
        assert_eq!(p.due_in_tick(40, hour).0, 40);
        assert_eq!(
            Pacer::start(None).due_in_tick(7, Duration::from_millis(1)),
            (7, Duration::ZERO)
        );
    }

    #[test]
    fn rate_of_no_time_is_zero() {
        assert_eq!(rate(10, Duration::ZERO), 0.0);
        assert_eq!(rate(10, Duration::from_secs(2)), 5.0);
    }
}
