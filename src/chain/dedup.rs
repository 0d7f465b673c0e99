//! Exactly-once: the whole invariant, both halves, in one place (DESIGN §1.6).
//!
//! # The promise
//!
//! An application's `close` (or any other committing call) returns success only if its
//! transaction was applied exactly once. A transaction may travel many times — a follower
//! forwards it to a leader that loses its role, the batcher retries after a back-off, a
//! forwarded copy sits in a partitioned old leader's log and is committed much later by the
//! new leader — and every copy carries the same [`RequestId`]. Whatever arrives, the state
//! machine
//!
//! 1. applies a request id **at most once**;
//! 2. answers a **duplicate with the first application's outcome** (so a late `O_EXCL` retry
//!    of a losing creator still learns `EEXIST`, and a retried put learns it succeeded);
//! 3. **refuses** an id it can no longer judge with [`Outcome::Expired`] — "outcome unknown",
//!    `EIO` to the application — and **never** reports such an id as a success;
//! 4. does all of this deterministically, from the chain alone, so every node and every replay
//!    of `chain/` rebuilds the same memory and writes the same outcomes into the same blocks.
//!
//! # Ids that never repeat
//!
//! A request id is `(node, incarnation, seq)`. The *incarnation* here is made afresh for every
//! process start ([`new_incarnation`]; a random 63-bit number) — it is **not** the data
//! directory's incarnation, which names the node to its peers and lives in `Identity`. `seq`
//! counts from 1 within one process. So ids never repeat and never go backwards, across
//! restarts and clock steps, and nothing needs persisting: a restarted process is a new origin
//! whose ids cannot collide with the old one's. (Earlier versions started `seq` from the wall
//! clock, so a clock stepped back across a restart made new writes look like old ones.)
//!
//! # How long an id is remembered: the horizon
//!
//! Remembering every id forever is correct but grows without bound; forgetting by a fixed
//! window (the old design kept 4,096 ids and 1,024 outcomes per origin) is wrong — a copy
//! delayed past the window was taken for a duplicate and its proposer told "success" for a
//! write that never happened. Instead, the *proposer* tells the state machine what it may
//! forget. Every transaction carries its origin's `acked_below`: a number such that every seq
//! of that origin below it has been answered to its application and will never be retried by
//! the proposer ([`Issuer`] keeps it: the smallest seq still waiting, or the next seq when none
//! is). Per origin, the state machine keeps
//!
//! - the **horizon**: the largest `acked_below` any applied transaction of the origin carried
//!   (each such claim was true when it was made, and stays true), and
//! - every **applied seq at or above the horizon, with its first outcome**.
//!
//! Seqs below the horizon are forgotten. A transaction is then judged ([`Dedup::check`]):
//!
//! | its seq | verdict | block records | proposer hears |
//! |---|---|---|---|
//! | remembered | [`Verdict::Duplicate`] | `duplicate`, nothing changes | the first outcome |
//! | not remembered, ≥ horizon | [`Verdict::Fresh`]: apply it, remember it | its outcome | its outcome |
//! | not remembered, < horizon | [`Verdict::Expired`], nothing changes | `expired` | `EIO`, outcome unknown |
//!
//! Why this is exact: while a proposer still waits for seq `s`, `s` is in its waiting set, so
//! every transaction it makes carries `acked_below ≤ s` and the horizon stays `≤ s`. If `s` was
//! applied, it is therefore still remembered, and a retry is answered with the first outcome.
//! If `s` was never applied, it is `≥` the horizon and applies now, for the first time. Only
//! after the proposer stopped waiting (it answered the application: success, a rejection, or
//! `EIO` after the commit timeout) can the horizon pass `s`; a copy of `s` arriving after that
//! (a stale forward, an old leader's log entry) is refused as `expired`: it changes nothing, and
//! nobody is told it succeeded. An application that saw `EIO` "outcome unknown" thus gets
//! exactly what the contract allows: the write either committed before the horizon passed it,
//! once, or never will.
//!
//! `acked_below` is clamped to the transaction's own seq (a transaction cannot declare itself
//! answered), and a horizon only ever rises. What is remembered per origin is bounded by what
//! that origin had in flight — proposals wait at most the commit timeout — plus, for an origin
//! that went quiet, its last few ids; an origin (one process life) costs a few dozen bytes
//! once it has gone quiet.
//!
//! Old chains (written before `acked_below` existed) read as `acked_below = 0`: everything is
//! remembered, which is correct, just not compact.
//!
//! Pure: no clock, no RNG (the incarnation is drawn by the caller's [`new_incarnation`] at
//! process start, outside any apply), no I/O.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::tx::{NodeId, Outcome, RequestId};

/// One proposer's life: a node and the incarnation of the process that made the ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin {
    /// The node that accepted the request from an application.
    pub node: NodeId,
    /// The incarnation of that node's process.
    pub incarnation: u64,
}

impl Origin {
    /// The origin of `request`.
    pub fn of(request: &RequestId) -> Origin {
        Origin { node: request.node, incarnation: request.incarnation }
    }
}

/// What the state machine remembers of one origin.
#[derive(Clone, Debug, Default)]
struct OriginMemory {
    /// Every seq below this was answered by its proposer; they are forgotten.
    horizon: u64,
    /// Applied seqs at or above `horizon`, with what their first application did.
    applied: BTreeMap<u64, Outcome>,
}

/// How the state machine must treat a transaction, by its request id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Never applied, and still judgeable: apply it, then [`Dedup::record`] its outcome.
    Fresh,
    /// Applied before, with this first outcome; nothing changes.
    Duplicate {
        /// The outcome of the first application.
        first: Outcome,
    },
    /// Below its origin's horizon and not remembered: whether it ever applied can no longer be
    /// told. Nothing changes; the proposer hears "outcome unknown".
    Expired,
}

/// The state machine's half: which request ids applied, for as long as they can arrive.
#[derive(Clone, Debug, Default)]
pub struct Dedup {
    /// Per origin, its horizon and remembered ids.
    origins: HashMap<Origin, OriginMemory>,
}

impl Dedup {
    /// Judges `request` (carrying its origin's `acked_below`), then lets the origin's horizon
    /// rise to `acked_below` (clamped to the request's own seq) and forgets what falls below.
    /// After [`Verdict::Fresh`], the caller applies the transaction and calls
    /// [`record`](Self::record).
    pub fn check(&mut self, request: &RequestId, acked_below: u64) -> Verdict {
        let memory = self.origins.entry(Origin::of(request)).or_default();
        let verdict = match memory.applied.get(&request.seq) {
            Some(first) => Verdict::Duplicate { first: *first },
            None if request.seq < memory.horizon => Verdict::Expired,
            None => Verdict::Fresh,
        };
        let horizon = acked_below.min(request.seq);
        if horizon > memory.horizon {
            memory.horizon = horizon;
            memory.applied = memory.applied.split_off(&horizon);
        }
        verdict
    }

    /// Records the first outcome of a request judged [`Verdict::Fresh`].
    pub fn record(&mut self, request: &RequestId, outcome: Outcome) {
        let memory = self.origins.entry(Origin::of(request)).or_default();
        debug_assert!(request.seq >= memory.horizon, "a fresh request is never below the horizon");
        memory.applied.entry(request.seq).or_insert(outcome);
    }

    /// The first outcome of `request`, while it is remembered.
    pub fn first_outcome(&self, request: &RequestId) -> Option<Outcome> {
        self.origins.get(&Origin::of(request))?.applied.get(&request.seq).copied()
    }

    /// What the proposer of a transaction is told, given what its block recorded: a duplicate
    /// gets the first outcome — or, if that was forgotten within the same block (only a stale
    /// copy nobody waits for), [`Outcome::Expired`]. Never a success that did not happen.
    pub fn answer(&self, request: &RequestId, recorded: Outcome) -> Outcome {
        match recorded {
            Outcome::Duplicate => self.first_outcome(request).unwrap_or(Outcome::Expired),
            other => other,
        }
    }

    /// The horizon of `origin` (0 when it was never seen).
    pub fn horizon(&self, origin: Origin) -> u64 {
        self.origins.get(&origin).map_or(0, |m| m.horizon)
    }

    /// How many request ids are remembered, over all origins.
    pub fn remembered(&self) -> usize {
        self.origins.values().map(|m| m.applied.len()).sum()
    }
}

/// A fresh process incarnation for request ids: random, below 2^63 (readable by JSON tools
/// that parse numbers as signed). Drawn once per process start.
pub fn new_incarnation() -> u64 {
    rand::random::<u64>() >> 1
}

/// The proposer's half: hands out request ids of one origin and keeps its `acked_below`.
#[derive(Debug)]
pub struct Issuer {
    /// Which node and process life the ids belong to.
    origin: Origin,
    /// The next seq to hand out (seqs start at 1).
    next_seq: u64,
    /// Seqs handed out whose proposer has not yet answered its application.
    waiting: BTreeSet<u64>,
}

/// A request id to propose, and the `acked_below` its transaction carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Issued {
    /// The new request id.
    pub request: RequestId,
    /// Every seq of this origin below it has been answered and will never be retried.
    pub acked_below: u64,
}

impl Issuer {
    /// An issuer for `node` in a process of incarnation `incarnation`.
    pub fn new(node: NodeId, incarnation: u64) -> Issuer {
        Issuer { origin: Origin { node, incarnation }, next_seq: 1, waiting: BTreeSet::new() }
    }

    /// A new request id, now waiting for its answer.
    pub fn issue(&mut self) -> Issued {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.waiting.insert(seq);
        let request = RequestId { node: self.origin.node, incarnation: self.origin.incarnation, seq };
        Issued { request, acked_below: self.acked_below() }
    }

    /// `seq` was answered to its application (success, rejection, or outcome unknown) and
    /// will never be proposed again by this process.
    pub fn settle(&mut self, seq: u64) {
        self.waiting.remove(&seq);
    }

    /// The smallest seq still waiting, or the next one to be issued.
    pub fn acked_below(&self) -> u64 {
        self.waiting.first().copied().unwrap_or(self.next_seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::tx::Reject;

    fn id(incarnation: u64, seq: u64) -> RequestId {
        RequestId { node: 7, incarnation, seq }
    }

    /// The state machine side: checks and records like `Tree::apply` does, with `outcome` as
    /// what applying the transaction would do.
    fn apply(d: &mut Dedup, request: RequestId, acked_below: u64, outcome: Outcome) -> Outcome {
        let verdict = d.check(&request, acked_below);
        let recorded = match verdict {
            Verdict::Fresh => {
                d.record(&request, outcome);
                outcome
            }
            Verdict::Duplicate { .. } => Outcome::Duplicate,
            Verdict::Expired => Outcome::Expired,
        };
        d.answer(&request, recorded)
    }

    #[test]
    fn reordered_ids_each_apply_once() {
        let mut d = Dedup::default();
        // 5, 3, 4, 1, 2 all in flight (acked_below 1): each is fresh once.
        for seq in [5, 3, 4, 1, 2] {
            assert_eq!(d.check(&id(1, seq), 1), Verdict::Fresh);
            d.record(&id(1, seq), Outcome::Ok);
        }
        for seq in [2, 5, 1] {
            assert_eq!(d.check(&id(1, seq), 1), Verdict::Duplicate { first: Outcome::Ok });
        }
    }

    #[test]
    fn a_gap_is_never_promoted_however_far_behind() {
        // Seq 1 stays in flight (its proposer waits) while 100,000 later ids apply — far past
        // the old 4,096-id window. It must still apply when it finally arrives.
        let mut d = Dedup::default();
        for seq in 2..100_002 {
            assert_eq!(apply(&mut d, id(1, seq), 1, Outcome::Ok), Outcome::Ok);
        }
        assert_eq!(d.check(&id(1, 1), 1), Verdict::Fresh);
        d.record(&id(1, 1), Outcome::Ok);
        // And a late retry of any of them is still a duplicate, answered with its outcome.
        assert_eq!(apply(&mut d, id(1, 17), 1, Outcome::Ok), Outcome::Ok);
        assert_eq!(d.check(&id(1, 17), 1), Verdict::Duplicate { first: Outcome::Ok });
    }

    #[test]
    fn a_late_exclusive_create_retry_still_loses() {
        let mut d = Dedup::default();
        let loser = id(1, 1);
        let lost = Outcome::Rejected(Reject::AlreadyExists);
        assert_eq!(apply(&mut d, loser, 1, lost), lost);
        // Thousands of later requests while the loser's proposer still waits (acked_below 1)...
        for seq in 2..5_000 {
            apply(&mut d, id(1, seq), 1, Outcome::Ok);
        }
        // ...then the retry: the first outcome, never a success (the old ring held 1,024).
        assert_eq!(apply(&mut d, loser, 1, Outcome::Ok), lost);
    }

    #[test]
    fn below_the_horizon_is_refused_never_a_success() {
        let mut d = Dedup::default();
        assert_eq!(apply(&mut d, id(1, 1), 1, Outcome::Ok), Outcome::Ok);
        assert_eq!(apply(&mut d, id(1, 3), 1, Outcome::Ok), Outcome::Ok);
        // The proposer answered 1..=3 (2 with a timeout, never applied) and moved on.
        assert_eq!(apply(&mut d, id(1, 4), 4, Outcome::Ok), Outcome::Ok);
        assert_eq!(d.horizon(Origin { node: 7, incarnation: 1 }), 4);
        assert_eq!(d.remembered(), 1, "1 and 3 are forgotten");
        // A stale copy of 2 (never applied) and of 1 (applied) arrive late: both refused.
        assert_eq!(apply(&mut d, id(1, 2), 1, Outcome::Ok), Outcome::Expired);
        assert_eq!(apply(&mut d, id(1, 1), 1, Outcome::Ok), Outcome::Expired);
        // The horizon never goes back down.
        assert_eq!(d.horizon(Origin { node: 7, incarnation: 1 }), 4);
        assert_eq!(apply(&mut d, id(1, 4), 4, Outcome::Ok), Outcome::Ok, "4 is still remembered");
    }

    #[test]
    fn a_request_cannot_declare_itself_answered() {
        let mut d = Dedup::default();
        assert_eq!(apply(&mut d, id(1, 5), 1_000, Outcome::Ok), Outcome::Ok);
        assert_eq!(d.horizon(Origin { node: 7, incarnation: 1 }), 5);
        assert_eq!(d.check(&id(1, 5), 0), Verdict::Duplicate { first: Outcome::Ok });
    }

    #[test]
    fn a_restart_is_a_new_origin_and_the_clock_plays_no_part() {
        // The old process used seqs 1..=3; a restarted one (new incarnation) counts from 1
        // again, whatever the wall clock says, and none of its ids is taken for an old one.
        let mut d = Dedup::default();
        for seq in 1..=3 {
            apply(&mut d, id(100, seq), seq, Outcome::Ok);
        }
        let mut issuer = Issuer::new(7, 200);
        for _ in 0..3 {
            let issued = issuer.issue();
            assert_eq!(d.check(&issued.request, issued.acked_below), Verdict::Fresh);
            d.record(&issued.request, Outcome::Ok);
            issuer.settle(issued.request.seq);
        }
        // A copy from the dead process is still judged on its own origin's memory.
        assert_eq!(d.check(&id(100, 3), 0), Verdict::Duplicate { first: Outcome::Ok });
        assert_ne!(new_incarnation(), new_incarnation());
    }

    #[test]
    fn issuer_keeps_acked_below_at_the_oldest_waiting_seq() {
        let mut issuer = Issuer::new(1, 9);
        let a = issuer.issue();
        assert_eq!((a.request.seq, a.acked_below), (1, 1));
        let b = issuer.issue();
        let c = issuer.issue();
        assert_eq!(c.acked_below, 1, "1 still waits");
        issuer.settle(b.request.seq);
        assert_eq!(issuer.acked_below(), 1);
        issuer.settle(a.request.seq);
        assert_eq!(issuer.acked_below(), 3, "3 still waits");
        issuer.settle(c.request.seq);
        assert_eq!(issuer.acked_below(), 4);
        assert_eq!(issuer.issue().acked_below, 4);
    }

    #[test]
    fn retries_with_the_issuer_apply_once_and_memory_stays_small() {
        // A proposer with up to 8 requests waiting; each is delivered twice (a retry) in a
        // scrambled order. Every request applies once, every copy learns the first outcome,
        // and what is remembered stays bounded by what is in flight.
        let mut d = Dedup::default();
        let mut issuer = Issuer::new(3, 1);
        let mut waiting = std::collections::VecDeque::new();
        let mut applied = std::collections::HashSet::new();
        for round in 0..10_000u64 {
            waiting.push_back(issuer.issue());
            if waiting.len() == 8 {
                // Deliver the oldest twice and a younger one once, then answer the oldest.
                let oldest = waiting.pop_front().unwrap();
                let younger = waiting[(round % 7) as usize];
                for copy in [oldest, younger, oldest] {
                    match d.check(&copy.request, copy.acked_below) {
                        Verdict::Fresh => {
                            assert!(applied.insert(copy.request.seq), "applied twice");
                            d.record(&copy.request, Outcome::Ok);
                        }
                        Verdict::Duplicate { first } => assert_eq!(first, Outcome::Ok),
                        Verdict::Expired => panic!("a waited-for request was refused"),
                    }
                }
                issuer.settle(oldest.request.seq);
            }
            assert!(d.remembered() <= 16, "memory grows: {}", d.remembered());
        }
    }
}
