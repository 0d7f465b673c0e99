//! The newest log entries, decoded, kept in memory for the reads that follow an append at once.
//!
//! A leader replicates an entry right after appending it and applies it once a quorum has it;
//! a follower applies what it appended a moment before. Without this tail each of those reads
//! went back to the log file (a `pread` of the record and a decode that copies its content
//! twice: 3 % of a leader's CPU under 1 MiB writes). The tail holds the entries openraft
//! handed to `append`, as they were (a state's content is shared, not copied), up to
//! [`RECENT_BYTES`] of their encoded size, and always the newest one. What it does not hold is
//! read from the file as before.
//!
//! It owns no file and decides nothing about durability: the log store keeps it in step with
//! the file (appends, truncations, purges).

use std::collections::VecDeque;

/// Encoded bytes of entries kept, at most (a larger newest entry is kept alone). A few 1 MiB
/// entries in flight, or thousands of small ones; small beside DESIGN §4's memory budget.
pub const RECENT_BYTES: usize = 8 << 20;

/// Entries of consecutive indexes, oldest first.
pub struct Recent<E> {
    /// Index of the front entry.
    first: u64,
    entries: VecDeque<(E, usize)>,
    bytes: usize,
    budget: usize,
}

impl<E> Recent<E> {
    /// An empty tail holding up to `budget` encoded bytes.
    pub fn new(budget: usize) -> Recent<E> {
        Recent { first: 0, entries: VecDeque::new(), bytes: 0, budget }
    }

    /// Records the entry at `index`, `bytes` long encoded. An index that does not follow the
    /// newest one held (the log was cut or restarted elsewhere) starts the tail afresh.
    pub fn push(&mut self, index: u64, entry: E, bytes: usize) {
        if self.entries.is_empty() || index != self.first + self.entries.len() as u64 {
            self.entries.clear();
            self.bytes = 0;
            self.first = index;
        }
        self.entries.push_back((entry, bytes));
        self.bytes += bytes;
        while self.bytes > self.budget && self.entries.len() > 1 {
            let (_, gone) = self.entries.pop_front().expect("more than one entry");
            self.bytes -= gone;
            self.first += 1;
        }
    }

    /// The entry at `index`, if held.
    pub fn get(&self, index: u64) -> Option<&E> {
        let offset = index.checked_sub(self.first)?;
        self.entries.get(usize::try_from(offset).ok()?).map(|(e, _)| e)
    }

    /// Forgets `index` and everything after it (the log's suffix was cut).
    pub fn truncate_from(&mut self, index: u64) {
        let keep = index.saturating_sub(self.first).min(self.entries.len() as u64) as usize;
        for (_, gone) in self.entries.drain(keep..) {
            self.bytes -= gone;
        }
    }

    /// Forgets everything up to and including `index` (the log's prefix was purged).
    pub fn purge_upto(&mut self, index: u64) {
        while !self.entries.is_empty() && self.first <= index {
            let (_, gone) = self.entries.pop_front().expect("not empty");
            self.bytes -= gone;
            self.first += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(r: &Recent<u64>) -> Vec<u64> {
        (0..100).filter_map(|i| r.get(i).copied()).collect()
    }

    #[test]
    fn keeps_the_newest_entries_within_the_budget_and_always_the_newest() {
        let mut r = Recent::new(10);
        for i in 1..=5 {
            r.push(i, i, 3);
        }
        assert_eq!(held(&r), vec![3, 4, 5], "9 bytes fit, 12 do not");
        assert_eq!(r.get(2), None);
        r.push(6, 6, 50);
        assert_eq!(held(&r), vec![6], "an entry above the budget is kept alone");
        r.push(7, 7, 1);
        assert_eq!(held(&r), vec![7]);
    }

    #[test]
    fn follows_truncations_purges_and_a_log_that_restarts_elsewhere() {
        let mut r = Recent::new(100);
        for i in 10..=20 {
            r.push(i, i, 1);
        }
        r.truncate_from(16);
        assert_eq!(held(&r), (10..=15).collect::<Vec<_>>());
        r.truncate_from(30);
        assert_eq!(held(&r), (10..=15).collect::<Vec<_>>(), "nothing held after 30");
        r.push(16, 116, 1);
        assert_eq!(r.get(16), Some(&116), "the new entry at a cut index");
        r.purge_upto(12);
        assert_eq!(held(&r), vec![13, 14, 15, 116]);
        r.purge_upto(5);
        assert_eq!(held(&r), vec![13, 14, 15, 116], "nothing held before 5");
        r.push(40, 40, 1);
        assert_eq!(held(&r), vec![40], "a gap starts afresh: 17..40 are not held");
        r.truncate_from(0);
        assert_eq!(held(&r), Vec::<u64>::new());
        r.push(3, 3, 1);
        r.purge_upto(99);
        assert_eq!(held(&r), Vec::<u64>::new());
        assert_eq!(r.bytes, 0);
    }
}
