//! A linearizability checker for histories of whole-file registers (DESIGN §1.3, issue 8 item 7).
//!
//! What it owns: deciding whether a recorded client history — calls with the time they were invoked and the
//! time they returned — could have come from one register per state, each operation taking effect at one
//! instant between its invocation and its return. It knows nothing of FUSE, clusters or faults; the harness
//! in `tests/robustness.rs` records histories and hands them over.
//!
//! The model, per state: the register holds `None` (the file does not exist) or `Some(v)` (its whole
//! content). Operations:
//! - `write(v)`: sets `Some(v)`. A write whose `close` failed (`EIO`, a timeout, the node killed under it)
//!   is **indeterminate**: its outcome is unknown, so it may take effect at any instant after its
//!   invocation — even long after it returned — or never. The checker gives such an operation an infinite
//!   return time; "never" is then "after everything", which no later read can tell apart.
//! - `read() → v`: sees exactly the register's value at its instant. Failed reads are not recorded (they
//!   changed nothing and observed nothing).
//! - `create_excl(v)` (`O_CREAT|O_EXCL`): won ⇒ the register was `None` and becomes `Some(v)`; lost
//!   (`EEXIST`) ⇒ it was `Some(_)` and stays; unknown ⇒ either, at any instant after the invocation, or never.
//!
//! The algorithm is the one of Wing & Gong as improved by Lowe ("Testing for linearizability", 2017): the
//! history becomes a list of call and return events in time order; the search repeatedly takes a call that
//! comes before the first remaining return ("minimal"), applies it to the register if legal, lifts its two
//! events out of the list and starts over; reaching a return whose operation was not linearized means
//! backtracking. A cache of (set of linearized operations, register value) pairs already explored makes the
//! search polynomial on the histories that matter (the set is kept as a 128-bit Zobrist fingerprint). Two
//! reductions keep it small:
//! - **P-compositionality**: each state is an independent register, so each is checked on its own.
//! - **Unobserved indeterminate writes are dropped**: an indeterminate write whose value no read returned
//!   can always be placed "never" (after everything), so removing it changes neither verdict; only the
//!   ones some read saw take part in the search. Likewise only the earliest of several indeterminate
//!   exclusive creates of one value is kept (see [`reduce`]).
//!
//! When there is no linearization, the report names the furthest point the search reached: how many
//! operations it could order, the register's value there, the operation that could not be placed, and the
//! operations around it — enough to read the violation off the history.

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::hash::Hash;
use std::time::Duration;

/// How a write ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Every syscall returned 0: the write took effect between invocation and return.
    Acked,
    /// Some step failed after the write may have been proposed: it may take effect later, or never.
    Unknown,
}

/// How an `O_CREAT|O_EXCL` create ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExclOutcome {
    /// `open` succeeded: the state did not exist and now holds the value.
    Won,
    /// `open` failed with `EEXIST`: the state existed; nothing changed.
    Exists,
    /// Any other failure: it may have won (at any time after the invocation) or never taken effect.
    Unknown,
}

/// One client call on one register.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op<V> {
    /// Replace the whole content with `value`.
    Write {
        /// The new content.
        value: V,
        /// Whether the call succeeded.
        outcome: WriteOutcome,
    },
    /// Read the whole content; `saw` is `None` when the state did not exist.
    Read {
        /// What the read returned.
        saw: Option<V>,
    },
    /// Create the state with `value` only if it does not exist.
    CreateExcl {
        /// The content a winning create installs.
        value: V,
        /// Whether the call won, lost, or ended unknown.
        outcome: ExclOutcome,
    },
}

/// One recorded operation: which register, what, when, by whom.
#[derive(Clone, Debug)]
pub struct Operation<V> {
    /// The register (state id).
    pub key: String,
    /// What the call did and how it ended.
    pub op: Op<V>,
    /// When the call was invoked (since the history's origin).
    pub invoke: Duration,
    /// When the call returned, successfully or not (since the history's origin). Ignored for ordering when
    /// the operation is indeterminate, but shown in reports.
    pub complete: Duration,
    /// Which client (thread) made the call: the calls of one client never overlap.
    pub client: usize,
    /// Free text for reports: the node it went through, the error of a failed call.
    pub note: String,
}

impl<V> Operation<V> {
    /// Whether the outcome is unknown (the operation may take effect at any time after `invoke`, or never).
    pub fn indeterminate(&self) -> bool {
        matches!(
            self.op,
            Op::Write { outcome: WriteOutcome::Unknown, .. }
                | Op::CreateExcl { outcome: ExclOutcome::Unknown, .. }
        )
    }
}

/// Bounds on the search, so a pathological history ends with `Inconclusive` instead of exhausting memory.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most (linearized set, value) configurations explored per register.
    pub max_configurations: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_configurations: 2_000_000 }
    }
}

/// The verdict for one register.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A linearization exists.
    Linearizable,
    /// None exists; the text explains where the search got stuck.
    Violation(String),
    /// The search hit [`Limits`] before deciding.
    Inconclusive(String),
}

/// What the checker found for one register.
#[derive(Clone, Debug)]
pub struct KeyReport {
    /// The register.
    pub key: String,
    /// Operations recorded on it.
    pub operations: usize,
    /// Indeterminate writes dropped because no read saw their value.
    pub dropped_unobserved: usize,
    /// Configurations the search explored.
    pub explored: usize,
    /// The verdict.
    pub verdict: Verdict,
}

/// What the checker found for a whole history.
#[derive(Clone, Debug)]
pub struct Report {
    /// One entry per register, sorted by key.
    pub keys: Vec<KeyReport>,
}

impl Report {
    /// Whether every register is linearizable.
    pub fn is_linearizable(&self) -> bool {
        self.keys.iter().all(|k| k.verdict == Verdict::Linearizable)
    }

    /// The reports of the registers that are not (violations and inconclusive ones), joined.
    pub fn failures(&self) -> String {
        let mut out = String::new();
        for k in &self.keys {
            match &k.verdict {
                Verdict::Linearizable => {}
                Verdict::Violation(text) => {
                    out.push_str(&format!("state {:?}: NOT LINEARIZABLE\n{text}\n", k.key))
                }
                Verdict::Inconclusive(text) => {
                    out.push_str(&format!("state {:?}: INCONCLUSIVE\n{text}\n", k.key))
                }
            }
        }
        out
    }
}

/// Checks every register of `history` (all start as `None`: missing) with the default [`Limits`].
pub fn check<V: Clone + Eq + Hash + Debug>(history: &[Operation<V>]) -> Report {
    check_with(history, Limits::default())
}

/// Checks every register of `history` (all start as `None`: missing).
pub fn check_with<V: Clone + Eq + Hash + Debug>(history: &[Operation<V>], limits: Limits) -> Report {
    let mut by_key: HashMap<&str, Vec<&Operation<V>>> = HashMap::new();
    for op in history {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let mut keys: Vec<KeyReport> = by_key
        .into_iter()
        .map(|(key, ops)| {
            let operations = ops.len();
            let (kept, dropped_unobserved) = reduce(ops);
            let (verdict, explored) = Search::new(&kept).run(limits);
            KeyReport { key: key.to_string(), operations, dropped_unobserved, explored, verdict }
        })
        .collect();
    keys.sort_by(|a, b| a.key.cmp(&b.key));
    Report { keys }
}

/// The reductions of the module header, before the search. Returns the operations kept and how many
/// indeterminate writes were dropped as unobserved.
///
/// Also: of several indeterminate exclusive creates of one value, only the earliest invoked is kept. No
/// operation of this model makes a state missing again, so at most one create ever takes effect, and the
/// earliest one can take effect whenever a later one could (its window, from its invocation on, is longer);
/// the others are "never". Without this, `k` concurrent creates that failed under a partition would make
/// the search explore `2^k` equivalent subsets.
fn reduce<V: Eq + Hash>(ops: Vec<&Operation<V>>) -> (Vec<&Operation<V>>, usize) {
    let seen: HashSet<&V> = ops
        .iter()
        .filter_map(|o| match &o.op {
            Op::Read { saw: Some(v) } => Some(v),
            _ => None,
        })
        .collect();
    let mut earliest_create: HashMap<&V, (Duration, usize)> = HashMap::new();
    for (i, o) in ops.iter().enumerate() {
        if let Op::CreateExcl { value, outcome: ExclOutcome::Unknown } = &o.op {
            let e = earliest_create.entry(value).or_insert((o.invoke, i));
            if o.invoke < e.0 {
                *e = (o.invoke, i);
            }
        }
    }
    let mut dropped = 0;
    let kept: Vec<&Operation<V>> = ops
        .into_iter()
        .enumerate()
        .filter(|(i, o)| match &o.op {
            Op::Write { value, outcome: WriteOutcome::Unknown } => {
                let keep = seen.contains(value);
                dropped += usize::from(!keep);
                keep
            }
            Op::CreateExcl { value, outcome: ExclOutcome::Unknown } => earliest_create[value].1 == *i,
            _ => true,
        })
        .map(|(_, o)| o)
        .collect();
    (kept, dropped)
}

/// The register's value during the search: an interned value, or [`MISSING`].
type Val = u32;

/// The value of a register whose state does not exist.
const MISSING: Val = u32::MAX;

/// An operation with its values interned.
#[derive(Clone, Copy, Debug)]
enum Step {
    Write(Val),
    Read(Val),
    ExclWon(Val),
    ExclExists,
    ExclUnknown(Val),
}

impl Step {
    /// The register after this step from `state`, or `None` if the step is impossible there.
    fn apply(self, state: Val) -> Option<Val> {
        match self {
            Step::Write(v) => Some(v),
            Step::Read(v) => (state == v).then_some(state),
            Step::ExclWon(v) => (state == MISSING).then_some(v),
            Step::ExclExists => (state != MISSING).then_some(state),
            Step::ExclUnknown(v) => Some(if state == MISSING { v } else { state }),
        }
    }
}

/// One event of the history: an operation's call or return.
#[derive(Clone, Copy, Debug)]
struct Event {
    /// Nanoseconds since the origin; `u64::MAX` for the return of an indeterminate operation.
    time: u64,
    /// Call (true) or return.
    call: bool,
    /// Index into the operations.
    op: usize,
}

/// The set of linearized operations as a 128-bit fingerprint (Zobrist hashing: the XOR of a random pair
/// per member), so the cache holds 24 bytes per configuration however long the history is, and adding or
/// removing an operation costs one XOR. Two different sets collide with a probability of about 2^-128; a
/// collision could only prune a branch of the search (a false violation), never make a history pass.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
struct Fingerprint(u64, u64);

/// The random pair of each operation (a fixed seed: verdicts are reproducible).
struct Zobrist(Vec<(u64, u64)>);

impl Zobrist {
    fn new(n: usize) -> Zobrist {
        // splitmix64
        let mut x: u64 = 0x6c69_6768_7463_6861;
        let mut next = move || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Zobrist((0..n).map(|_| (next(), next())).collect())
    }

    /// Adds operation `i` to the set, or removes it (the same XOR).
    fn toggle(&self, fp: &mut Fingerprint, i: usize) {
        fp.0 ^= self.0[i].0;
        fp.1 ^= self.0[i].1;
    }
}

/// The search over one register's history (Wing–Gong–Lowe with memoization).
struct Search<'a, V> {
    /// The operations, as recorded.
    ops: &'a [&'a Operation<V>],
    /// Interned values, for reports.
    values: Vec<V>,
    /// Each operation's effect.
    steps: Vec<Step>,
    /// Call and return events in time order; index `events.len()` is the list's sentinel.
    events: Vec<Event>,
    /// Doubly linked list over `events` (plus the sentinel), from which linearized operations are lifted.
    next: Vec<usize>,
    /// See `next`.
    prev: Vec<usize>,
    /// Position in `events` of each operation's call and return.
    call_at: Vec<usize>,
    /// See `call_at`.
    ret_at: Vec<usize>,
}

impl<'a, V: Clone + Eq + Hash + Debug> Search<'a, V> {
    fn new(ops: &'a [&'a Operation<V>]) -> Self {
        let mut ids: HashMap<V, Val> = HashMap::new();
        let mut values: Vec<V> = Vec::new();
        let mut intern = |v: &V| -> Val {
            *ids.entry(v.clone()).or_insert_with(|| {
                values.push(v.clone());
                (values.len() - 1) as Val
            })
        };
        let steps: Vec<Step> = ops
            .iter()
            .map(|o| match &o.op {
                Op::Write { value, .. } => Step::Write(intern(value)),
                Op::Read { saw: Some(v) } => Step::Read(intern(v)),
                Op::Read { saw: None } => Step::Read(MISSING),
                Op::CreateExcl { value, outcome: ExclOutcome::Won } => Step::ExclWon(intern(value)),
                Op::CreateExcl { outcome: ExclOutcome::Exists, .. } => Step::ExclExists,
                Op::CreateExcl { value, outcome: ExclOutcome::Unknown } => Step::ExclUnknown(intern(value)),
            })
            .collect();
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX - 1);
        let mut events: Vec<Event> = Vec::with_capacity(ops.len() * 2);
        for (i, o) in ops.iter().enumerate() {
            events.push(Event { time: nanos(o.invoke), call: true, op: i });
            let ret = if o.indeterminate() { u64::MAX } else { nanos(o.complete).max(nanos(o.invoke)) };
            events.push(Event { time: ret, call: false, op: i });
        }
        // At equal times calls come first: such operations count as concurrent (the lenient reading).
        events.sort_by_key(|e| (e.time, !e.call, e.op));
        let n = events.len();
        let next: Vec<usize> = (0..=n).map(|i| (i + 1) % (n + 1)).collect();
        let prev: Vec<usize> = (0..=n).map(|i| (i + n) % (n + 1)).collect();
        let mut call_at = vec![0; ops.len()];
        let mut ret_at = vec![0; ops.len()];
        for (pos, e) in events.iter().enumerate() {
            if e.call {
                call_at[e.op] = pos;
            } else {
                ret_at[e.op] = pos;
            }
        }
        Search { ops, values, steps, events, next, prev, call_at, ret_at }
    }

    fn unlink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    fn relink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        self.prev[n] = e;
    }

    /// Lifts operation `op`'s events out of the list.
    fn lift(&mut self, op: usize) {
        self.unlink(self.call_at[op]);
        self.unlink(self.ret_at[op]);
    }

    /// Puts them back (strictly in the reverse order of lifting).
    fn unlift(&mut self, op: usize) {
        self.relink(self.ret_at[op]);
        self.relink(self.call_at[op]);
    }

    fn run(mut self, limits: Limits) -> (Verdict, usize) {
        let sentinel = self.events.len();
        let zobrist = Zobrist::new(self.ops.len());
        let mut linearized = Fingerprint::default();
        let mut seen: HashSet<(Fingerprint, Val)> = HashSet::new();
        let mut stack: Vec<(usize, Val)> = Vec::new();
        let mut state: Val = MISSING;
        // The furthest the search got: (operations linearized, the operation it could not place, the value).
        let mut furthest: (usize, usize, Val) = (0, usize::MAX, MISSING);
        let mut e = self.next[sentinel];
        loop {
            if e == sentinel {
                return (Verdict::Linearizable, seen.len());
            }
            let ev = self.events[e];
            if ev.call {
                if let Some(after) = self.steps[ev.op].apply(state) {
                    zobrist.toggle(&mut linearized, ev.op);
                    if seen.insert((linearized, after)) {
                        if seen.len() > limits.max_configurations {
                            return (
                                Verdict::Inconclusive(format!(
                                    "gave up after exploring {} configurations ({} operations)",
                                    limits.max_configurations,
                                    self.ops.len()
                                )),
                                seen.len(),
                            );
                        }
                        stack.push((ev.op, state));
                        state = after;
                        self.lift(ev.op);
                        e = self.next[sentinel];
                        continue;
                    }
                    zobrist.toggle(&mut linearized, ev.op);
                }
                e = self.next[e];
            } else {
                if ev.time == u64::MAX {
                    // Only indeterminate operations are left: each may never take effect.
                    return (Verdict::Linearizable, seen.len());
                }
                if stack.len() >= furthest.0 {
                    furthest = (stack.len(), ev.op, state);
                }
                match stack.pop() {
                    None => {
                        let explored = seen.len();
                        return (Verdict::Violation(self.explain(furthest)), explored);
                    }
                    Some((op, before)) => {
                        zobrist.toggle(&mut linearized, op);
                        state = before;
                        self.unlift(op);
                        e = self.next[self.call_at[op]];
                    }
                }
            }
        }
    }

    fn show_val(&self, v: Val) -> String {
        if v == MISSING {
            "<missing>".to_string()
        } else {
            format!("{:?}", self.values[v as usize])
        }
    }

    /// A readable account of where the search got stuck.
    fn explain(&self, (done, stuck, state): (usize, usize, Val)) -> String {
        let mut out = format!(
            "the search ordered at most {done} of {} operations; there the register held {} and this \
             operation, which had returned, could not be placed:\n  {}\n",
            self.ops.len(),
            self.show_val(state),
            self.describe(stuck)
        );
        let s = self.ops[stuck];
        // Writes of the values in question, wherever they are in the history.
        let mut wanted: Vec<Val> = match self.steps[stuck] {
            Step::Read(v) => vec![v, state],
            _ => vec![state],
        };
        wanted.dedup();
        for v in wanted.into_iter().filter(|v| *v != MISSING) {
            let writers: Vec<usize> = (0..self.ops.len())
                .filter(|&i| match self.steps[i] {
                    Step::Write(w) | Step::ExclWon(w) | Step::ExclUnknown(w) => w == v,
                    Step::Read(_) | Step::ExclExists => false,
                })
                .collect();
            out.push_str(&format!("writes of {}:\n", self.show_val(v)));
            if writers.is_empty() {
                out.push_str("  (none: no client wrote it)\n");
            }
            for &i in writers.iter().take(10) {
                out.push_str(&format!("  {}\n", self.describe(i)));
            }
        }
        // The operations overlapping the stuck one, and the few that completed just before it.
        let mut around: Vec<usize> = (0..self.ops.len())
            .filter(|&i| {
                let o = self.ops[i];
                let end = if o.indeterminate() { Duration::MAX } else { o.complete };
                o.invoke <= s.complete && end >= s.invoke
            })
            .collect();
        let mut before: Vec<usize> = (0..self.ops.len())
            .filter(|&i| !self.ops[i].indeterminate() && self.ops[i].complete < s.invoke)
            .collect();
        before.sort_by_key(|&i| self.ops[i].complete);
        around.extend(before.iter().rev().take(8));
        around.sort_by_key(|&i| (self.ops[i].invoke, i));
        around.dedup();
        out.push_str(&format!("operations around it ({}, by invocation):\n", around.len()));
        for &i in around.iter().take(60) {
            out.push_str(&format!("  {}{}\n", if i == stuck { "> " } else { "" }, self.describe(i)));
        }
        out
    }

    fn describe(&self, i: usize) -> String {
        let o = self.ops[i];
        let ms = |d: Duration| format!("{:.3}", d.as_secs_f64() * 1000.0);
        let what = match &o.op {
            Op::Write { value, outcome: WriteOutcome::Acked } => format!("write {value:?} ok"),
            Op::Write { value, outcome: WriteOutcome::Unknown } => format!("write {value:?} INDETERMINATE"),
            Op::Read { saw: Some(v) } => format!("read -> {v:?}"),
            Op::Read { saw: None } => "read -> <missing>".to_string(),
            Op::CreateExcl { value, outcome } => format!("create_excl {value:?} {outcome:?}"),
        };
        let end =
            if o.indeterminate() { format!("? (failed at {})", ms(o.complete)) } else { ms(o.complete) };
        let note = if o.note.is_empty() { String::new() } else { format!(" ({})", o.note) };
        format!("client {:>2} [{} ms -> {} ms] {what}{note}", o.client, ms(o.invoke), end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// A history under construction: times in milliseconds.
    #[derive(Default)]
    struct H(Vec<Operation<String>>);

    impl H {
        fn push(&mut self, client: usize, op: Op<String>, invoke: u64, complete: u64) -> &mut Self {
            self.0.push(Operation {
                key: "k".into(),
                op,
                invoke: Duration::from_millis(invoke),
                complete: Duration::from_millis(complete),
                client,
                note: String::new(),
            });
            self
        }
        fn w(&mut self, c: usize, v: &str, a: u64, b: u64) -> &mut Self {
            self.push(c, Op::Write { value: v.into(), outcome: WriteOutcome::Acked }, a, b)
        }
        fn w_unknown(&mut self, c: usize, v: &str, a: u64, b: u64) -> &mut Self {
            self.push(c, Op::Write { value: v.into(), outcome: WriteOutcome::Unknown }, a, b)
        }
        fn r(&mut self, c: usize, v: Option<&str>, a: u64, b: u64) -> &mut Self {
            self.push(c, Op::Read { saw: v.map(str::to_string) }, a, b)
        }
        fn excl(&mut self, c: usize, v: &str, outcome: ExclOutcome, a: u64, b: u64) -> &mut Self {
            self.push(c, Op::CreateExcl { value: v.into(), outcome }, a, b)
        }
        fn verdict(&self) -> Verdict {
            let report = check(&self.0);
            assert_eq!(report.keys.len(), 1);
            report.keys[0].verdict.clone()
        }
        #[track_caller]
        fn assert_ok(&self) {
            let v = self.verdict();
            assert_eq!(v, Verdict::Linearizable, "expected linearizable");
        }
        #[track_caller]
        fn assert_violation(&self) -> String {
            match self.verdict() {
                Verdict::Violation(text) => text,
                other => panic!("expected a violation, got {other:?}"),
            }
        }
    }

    #[test]
    fn empty_and_sequential_histories_are_linearizable() {
        assert!(check::<String>(&[]).is_linearizable());
        H::default()
            .r(0, None, 0, 1)
            .w(0, "a", 2, 3)
            .r(0, Some("a"), 4, 5)
            .w(1, "b", 6, 7)
            .r(2, Some("b"), 8, 9)
            .assert_ok();
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_a_violation() {
        let mut h = H::default();
        h.w(0, "a", 0, 1).w(0, "b", 2, 3).r(1, Some("a"), 4, 5);
        let text = h.assert_violation();
        assert!(text.contains("read -> \"a\""), "the report names the stale read:\n{text}");
        // The same read overlapping the second write is fine.
        H::default().w(0, "a", 0, 1).w(0, "b", 2, 6).r(1, Some("a"), 4, 5).assert_ok();
    }

    #[test]
    fn a_read_of_a_value_nobody_wrote_is_a_violation() {
        let text = H::default().w(0, "a", 0, 1).r(1, Some("zzz"), 2, 3).assert_violation();
        assert!(text.contains("no client wrote it"), "{text}");
    }

    #[test]
    fn reads_may_see_a_concurrent_write_either_way_but_not_go_back() {
        H::default().w(0, "a", 0, 10).r(1, None, 1, 2).r(1, Some("a"), 3, 4).assert_ok();
        H::default().w(0, "a", 0, 10).r(1, Some("a"), 1, 2).r(1, None, 3, 4).assert_violation();
        // Two readers, each allowed on its own, but not together: one saw the write, the later one did not.
        H::default().w(0, "a", 0, 10).r(1, Some("a"), 1, 2).r(2, None, 3, 4).assert_violation();
    }

    #[test]
    fn two_readers_seeing_two_writes_in_opposite_orders_is_a_violation() {
        let mut h = H::default();
        h.w(0, "a", 0, 100).w(1, "b", 0, 100);
        h.r(2, Some("a"), 10, 20).r(2, Some("b"), 30, 40);
        h.r(3, Some("b"), 10, 20).r(3, Some("a"), 30, 40);
        h.assert_violation();
        // One order for both readers is fine.
        let mut h = H::default();
        h.w(0, "a", 0, 100).w(1, "b", 0, 100);
        h.r(2, Some("a"), 10, 20).r(2, Some("b"), 30, 40);
        h.r(3, Some("a"), 10, 20).r(3, Some("b"), 30, 40);
        h.assert_ok();
    }

    #[test]
    fn an_indeterminate_write_may_appear_late_or_never_but_not_vanish() {
        // Took effect long after it failed.
        H::default()
            .w(0, "x", 0, 1)
            .w_unknown(0, "a", 2, 3)
            .r(1, Some("x"), 4, 5)
            .r(1, Some("a"), 90, 91)
            .assert_ok();
        // Never took effect.
        H::default()
            .w(0, "x", 0, 1)
            .w_unknown(0, "a", 2, 3)
            .r(1, Some("x"), 4, 5)
            .r(1, Some("x"), 90, 91)
            .assert_ok();
        // Cannot take effect before it was invoked.
        H::default().w(0, "x", 0, 1).r(1, Some("a"), 2, 3).w_unknown(0, "a", 4, 5).assert_violation();
        // Once seen, it cannot be un-seen without another write.
        H::default()
            .w(0, "x", 0, 1)
            .w_unknown(0, "a", 2, 3)
            .r(1, Some("a"), 4, 5)
            .r(1, Some("x"), 6, 7)
            .assert_violation();
        // ...and it takes effect once: seen, overwritten, seen again is a violation.
        let mut h = H::default();
        h.w_unknown(0, "a", 0, 1).r(1, Some("a"), 2, 3).w(2, "b", 4, 5).r(1, Some("a"), 6, 7);
        h.assert_violation();
    }

    #[test]
    fn a_lost_acknowledged_write_is_a_violation() {
        H::default().w(0, "a", 0, 1).r(1, None, 2, 3).assert_violation();
        // b returned after a, so the final read must not show a.
        H::default().w(0, "a", 0, 1).w(1, "b", 2, 3).r(2, Some("a"), 10, 11).assert_violation();
        // Had b been concurrent with a, either could be last.
        H::default().w(0, "a", 0, 3).w(1, "b", 1, 2).r(2, Some("a"), 10, 11).assert_ok();
    }

    #[test]
    fn exclusive_creates_have_one_winner() {
        use ExclOutcome::*;
        H::default().excl(0, "a", Won, 0, 5).excl(1, "b", Exists, 1, 6).r(2, Some("a"), 7, 8).assert_ok();
        H::default().excl(0, "a", Won, 0, 5).excl(1, "b", Won, 1, 6).assert_violation();
        // EEXIST before anything could exist.
        H::default().excl(1, "b", Exists, 0, 1).excl(0, "a", Won, 2, 3).assert_violation();
        // A loser that saw a create whose outcome is unknown: it did win.
        H::default().excl(0, "a", Unknown, 0, 1).excl(1, "b", Exists, 2, 3).r(2, Some("a"), 4, 5).assert_ok();
        // An unknown create that never happened.
        H::default().excl(0, "a", Unknown, 0, 1).r(2, None, 4, 5).excl(1, "b", Won, 6, 7).assert_ok();
        // The winner's value is what the state holds.
        H::default().excl(0, "a", Won, 0, 1).r(2, Some("b"), 4, 5).assert_violation();
    }

    #[test]
    fn many_indeterminate_exclusive_creates_of_one_value_stay_cheap() {
        // A partition: 40 creators fail with EIO, then one of them turns out to have won.
        use ExclOutcome::*;
        let mut h = H::default();
        for i in 0..40u64 {
            h.excl(i as usize, "", Unknown, 10 + i, 11 + i);
        }
        h.excl(50, "", Exists, 100, 101).r(51, Some(""), 102, 103).excl(52, "", Won, 104, 105);
        let report = check_with(&h.0, Limits { max_configurations: 10_000 });
        assert!(matches!(report.keys[0].verdict, Verdict::Violation(_)), "{:?}", report.keys[0].verdict);
        let mut h = H::default();
        for i in 0..40u64 {
            h.excl(i as usize, "", Unknown, 10 + i, 11 + i);
        }
        h.excl(50, "", Exists, 100, 101).r(51, Some(""), 102, 103).excl(52, "", Exists, 104, 105);
        let report = check_with(&h.0, Limits { max_configurations: 10_000 });
        assert_eq!(report.keys[0].verdict, Verdict::Linearizable);
    }

    #[test]
    fn registers_are_independent() {
        let op = |key: &str, op, a, b| Operation {
            key: key.to_string(),
            op,
            invoke: Duration::from_millis(a),
            complete: Duration::from_millis(b),
            client: 0,
            note: String::new(),
        };
        let h = vec![
            op("x", Op::Write { value: "a".to_string(), outcome: WriteOutcome::Acked }, 0, 1),
            op("y", Op::Read { saw: None }, 2, 3),
            op("x", Op::Read { saw: Some("a".to_string()) }, 4, 5),
            op("y", Op::Read { saw: Some("a".to_string()) }, 6, 7),
        ];
        let report = check(&h);
        assert_eq!(report.keys.len(), 2);
        assert_eq!(report.keys[0].verdict, Verdict::Linearizable, "x");
        assert!(matches!(report.keys[1].verdict, Verdict::Violation(_)), "y: {:?}", report.keys[1].verdict);
        assert!(!report.is_linearizable());
        assert!(report.failures().contains("state \"y\""), "{}", report.failures());
    }

    #[test]
    fn unobserved_indeterminate_writes_are_dropped_before_the_search() {
        let mut h = H::default();
        h.w(0, "start", 0, 1);
        for i in 0..2_000u64 {
            h.w_unknown(1 + (i % 7) as usize, &format!("lost{i}"), 2 + i, 3 + i);
        }
        h.r(9, Some("start"), 5_000, 5_001);
        let report = check(&h.0);
        assert!(report.is_linearizable(), "{}", report.failures());
        assert_eq!(report.keys[0].dropped_unobserved, 2_000);
    }

    #[test]
    fn the_search_gives_up_within_its_limits() {
        // Many concurrent indeterminate writes that all were seen, then a read of a value nobody wrote: the
        // search must explore every order before it can say "violation".
        let mut h = H::default();
        for i in 0..16u64 {
            h.w_unknown(i as usize, &format!("v{i}"), 0, 1);
            h.r(100 + i as usize, Some(&format!("v{i}")), 2, 3);
        }
        h.r(200, Some("nobody"), 4, 5);
        let report = check_with(&h.0, Limits { max_configurations: 1_000 });
        assert!(matches!(report.keys[0].verdict, Verdict::Inconclusive(_)), "{:?}", report.keys[0].verdict);
    }

    /// Simulates clients on one register: each operation takes effect at a random instant inside its interval
    /// (an indeterminate write: anywhere after its invocation, or never); reads return what the register
    /// held then. Every such history is linearizable by construction.
    fn random_history(rng: &mut StdRng, clients: usize, per_client: usize) -> Vec<Operation<String>> {
        struct Planned {
            client: usize,
            invoke: u64,
            complete: u64,
            effect: Option<u64>,
            write: Option<(String, WriteOutcome)>,
        }
        let mut planned = Vec::new();
        for c in 0..clients {
            let mut t = rng.gen_range(0..20u64);
            for i in 0..per_client {
                let len = rng.gen_range(1..30u64);
                let (invoke, complete) = (t, t + len);
                let write = rng.gen_bool(0.5).then(|| {
                    let outcome =
                        if rng.gen_bool(0.15) { WriteOutcome::Unknown } else { WriteOutcome::Acked };
                    (format!("c{c}-{i}"), outcome)
                });
                let effect = match &write {
                    Some((_, WriteOutcome::Unknown)) => match rng.gen_range(0..3) {
                        0 => None,
                        1 => Some(rng.gen_range(invoke..complete)),
                        _ => Some(rng.gen_range(invoke..complete + 200)),
                    },
                    _ => Some(rng.gen_range(invoke..complete)),
                };
                planned.push(Planned { client: c, invoke, complete, effect, write });
                t = complete + rng.gen_range(0..10u64);
            }
        }
        // Apply effects in time order (ties broken by index, any order is a valid linearization).
        let mut order: Vec<usize> = (0..planned.len()).filter(|&i| planned[i].effect.is_some()).collect();
        order.sort_by_key(|&i| (planned[i].effect, i));
        let mut reg: Option<String> = None;
        let mut saw: HashMap<usize, Option<String>> = HashMap::new();
        for i in order {
            match &planned[i].write {
                Some((v, _)) => reg = Some(v.clone()),
                None => {
                    saw.insert(i, reg.clone());
                }
            }
        }
        planned
            .iter()
            .enumerate()
            .map(|(i, p)| Operation {
                key: "k".into(),
                op: match &p.write {
                    Some((v, outcome)) => Op::Write { value: v.clone(), outcome: *outcome },
                    None => Op::Read { saw: saw[&i].clone() },
                },
                invoke: Duration::from_micros(p.invoke),
                complete: Duration::from_micros(p.complete),
                client: p.client,
                note: String::new(),
            })
            .collect()
    }

    #[test]
    fn random_linearizable_histories_pass_and_corrupted_ones_mostly_fail() {
        let mut rng = StdRng::seed_from_u64(8);
        let mut caught = 0;
        let rounds = 60;
        for round in 0..rounds {
            let h = random_history(&mut rng, 6, 60);
            let report = check(&h);
            assert!(
                report.is_linearizable(),
                "round {round}: a linearizable history was rejected:\n{}",
                report.failures()
            );
            // Corrupt it: one read that saw a value now claims the initial, missing state after that value's
            // acknowledged write completed.
            let mut bad = h.clone();
            let target = bad.iter().position(|o| matches!(o.op, Op::Read { saw: Some(_) }));
            if let Some(t) = target {
                let Op::Read { saw: Some(v) } = bad[t].op.clone() else { unreachable!() };
                let w = h.iter().find(
                    |o| matches!(&o.op, Op::Write { value, outcome: WriteOutcome::Acked } if *value == v),
                );
                if let Some(w) = w {
                    bad[t].op = Op::Read { saw: None };
                    bad[t].invoke = w.complete + Duration::from_micros(1);
                    bad[t].complete = bad[t].invoke + Duration::from_micros(1);
                    let report = check(&bad);
                    assert!(
                        !report.is_linearizable(),
                        "round {round}: a read of <missing> after a write was accepted"
                    );
                    caught += 1;
                }
            }
        }
        assert!(caught > rounds / 2, "only {caught} corrupted histories were built");
    }
}
