//! Pacing for the writers behind the acknowledgement (`chain/` and `states/`).
//!
//! Those writers take whatever has queued up and write it in one round. When writes arrive
//! one at a time, every round would carry a single block: an `fsync` of `chain/` and a new
//! file in `states/` per write on every node, competing with the consensus log's `fsync` for
//! the disk and for the CPUs. A [`Pace`] holds a round back until a minimum time has passed
//! since the previous one began, so a busy node writes many blocks per round, while a quiet
//! node (whose last round is long past) is not delayed at all. A round is also held back in
//! proportion to its own length, so rounds are busy at most a twentieth of the time: a round
//! grows with the load (the states that changed, the bytes to `fsync`), and without this the
//! next would follow at once — the mirror rewriting every busy state a hundred times a second,
//! the chain writer `fsync`ing a 1 MiB block at a time between the consensus log's own.
//!
//! The mirror also runs at a lower CPU priority ([`run_behind`]): on a machine with few CPUs,
//! its round (a file written and swapped in per state) would otherwise take a CPU from the
//! threads that answer a commit. The chain writer keeps the default priority: it does little
//! but `fsync`, and a starved chain writer would let the node acknowledge ever more blocks
//! that `chain/` has not recorded before a full disk stops it.
//!
//! Must not: be used on the acknowledgement path (it sleeps or deprioritises the calling
//! thread).

use std::time::{Duration, Instant};

/// The nice value of a thread that runs behind (the mirror; 0 is the default, 19 the lowest).
const BEHIND_NICE: libc::c_int = 10;

/// Lowers the calling thread's CPU priority (Linux's nice value is per thread). Best effort:
/// a failure is logged and the thread runs on at its priority.
pub fn run_behind(thread: &str) {
    // SAFETY: setpriority takes plain integers; `who` 0 is the calling thread.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, BEHIND_NICE) };
    if rc != 0 {
        tracing::warn!(thread, error = %std::io::Error::last_os_error(), "cannot lower the thread's priority");
    }
}

/// Rounds are busy at most one part in this many of the time: a round that took 1 ms is
/// followed by 19 ms without one. A writer whose rounds grow with the load (more states to
/// write, more bytes to `fsync`) then takes a bounded share of a CPU or of the disk, and its
/// longer rounds gather more work each.
const BUSY_ONE_IN: u32 = 20;

/// The longest a round is held back for [`BUSY_ONE_IN`]: how far behind a writer may fall for
/// its share, beyond its own round.
pub const LONGEST_HOLD: Duration = Duration::from_millis(100);

/// At most one round per interval, and rounds busy at most a share of the time.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    every: Duration,
    /// How long to stay idle per unit of time the previous round was busy.
    idle_per_busy: u32,
    /// When the previous round began, and how long it took (zero until [`done`](Self::done)).
    last: Option<(Instant, Duration)>,
}

impl Pace {
    /// At most one round per `every`, busy at most one part in [`BUSY_ONE_IN`] of the time,
    /// never held back longer than [`LONGEST_HOLD`] (or `every`, if longer).
    pub fn new(every: Duration) -> Pace {
        Pace { every, idle_per_busy: BUSY_ONE_IN - 1, last: None }
    }

    /// Sleeps until a round may begin (at once if the previous one is long past), and marks
    /// the new round's start.
    pub fn wait(&mut self) {
        if let Some(hold) = self.hold_at(Instant::now()) {
            std::thread::sleep(hold);
        }
        self.last = Some((Instant::now(), Duration::ZERO));
    }

    /// Marks the end of the round that began with the last [`wait`](Self::wait).
    pub fn done(&mut self) {
        if let Some((began, took)) = self.last.as_mut() {
            *took = began.elapsed();
        }
    }

    /// How long a round that could begin at `now` is held back.
    fn hold_at(&self, now: Instant) -> Option<Duration> {
        let (began, took) = self.last?;
        let for_the_share = (took + took * self.idle_per_busy).min(LONGEST_HOLD);
        let due = began + self.every.max(for_the_share);
        (due > now).then(|| due - now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_round_within_the_interval_of_the_previous_one_is_held_back() {
        let every = Duration::from_millis(10);
        let mut pace = Pace::new(every);
        let t0 = Instant::now();
        assert_eq!(pace.hold_at(t0), None, "the first round begins at once");
        pace.last = Some((t0, Duration::ZERO));
        assert_eq!(pace.hold_at(t0), Some(every));
        assert_eq!(pace.hold_at(t0 + Duration::from_millis(4)), Some(Duration::from_millis(6)));
        assert_eq!(pace.hold_at(t0 + every), None);
        assert_eq!(pace.hold_at(t0 + Duration::from_secs(5)), None, "a quiet node is not delayed");
    }

    #[test]
    fn a_busy_share_holds_long_rounds_back_in_proportion_up_to_the_longest_hold() {
        let ms = Duration::from_millis;
        let pace = Pace::new(ms(10));
        let t0 = Instant::now();
        let after = |took: Duration| Pace { last: Some((t0, took)), ..pace };
        assert_eq!(after(ms(0)).hold_at(t0), Some(ms(10)), "the interval still holds");
        assert_eq!(after(ms(1)).hold_at(t0), Some(ms(20)), "a 1 ms round: 19 ms idle after it");
        assert_eq!(after(ms(1)).hold_at(t0 + ms(15)), Some(ms(5)));
        assert_eq!(after(ms(30)).hold_at(t0), Some(ms(100)), "never longer than the longest hold");
        assert_eq!(after(ms(30)).hold_at(t0 + ms(100)), None);
        assert_eq!(after(ms(1)).hold_at(t0 + Duration::from_secs(5)), None, "a quiet node is not delayed");
    }

    #[test]
    fn wait_marks_the_start_of_each_round_and_done_its_length() {
        let mut pace = Pace::new(Duration::from_millis(1));
        pace.wait();
        let (first, took) = pace.last.expect("marked");
        assert_eq!(took, Duration::ZERO);
        std::thread::sleep(Duration::from_millis(2));
        pace.done();
        assert!(pace.last.expect("marked").1 >= Duration::from_millis(2), "done measured the round");
        pace.wait();
        let (second, _) = pace.last.expect("marked");
        assert!(second >= first + Duration::from_millis(1), "the second round began within the interval");
    }
}
