//! Linearizable reads: one read index for every read that arrived while none was being asked.
//!
//! A read may use a read index only if the index was obtained *after* the read began, so a
//! read that arrives while a request is in flight waits for the next one. Rounds run back to
//! back while reads keep coming; each round asks the leader once (or, on the leader, checks
//! leadership with a heartbeat round once), however many reads it serves.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::oneshot;

use super::Error;

type Waiter = oneshot::Sender<Result<u64, Error>>;

/// Reads waiting for the next read index.
#[derive(Default)]
pub struct ReadIndexQueue {
    state: Mutex<QueueState>,
}

#[derive(Default)]
struct QueueState {
    running: bool,
    waiting: Vec<Waiter>,
}

impl ReadIndexQueue {
    /// Joins the next round; returns whether the caller must start the round loop.
    pub fn enqueue(&self, waiter: Waiter) -> bool {
        let mut state = self.state.lock().unwrap();
        state.waiting.push(waiter);
        !std::mem::replace(&mut state.running, true)
    }

    /// Takes everyone waiting for the next round; `None` ends the loop.
    pub fn next_round(&self) -> Option<Vec<Waiter>> {
        let mut state = self.state.lock().unwrap();
        if state.waiting.is_empty() {
            state.running = false;
            return None;
        }
        Some(std::mem::take(&mut state.waiting))
    }
}

/// Backoff between attempts while there is no leader.
pub const RETRY: Duration = Duration::from_millis(50);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_arriving_during_a_round_wait_for_the_next() {
        let queue = ReadIndexQueue::default();
        let (a, _ra) = oneshot::channel();
        assert!(queue.enqueue(a), "the first read starts the loop");
        let round = queue.next_round().unwrap();
        assert_eq!(round.len(), 1);
        let (b, _rb) = oneshot::channel();
        assert!(!queue.enqueue(b), "a read during a round joins the next one");
        assert_eq!(queue.next_round().unwrap().len(), 1);
        assert!(queue.next_round().is_none(), "the loop ends when nobody waits");
        let (c, _rc) = oneshot::channel();
        assert!(queue.enqueue(c), "and the next read starts it again");
    }
}
