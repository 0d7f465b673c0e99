//! The mirror worker: keeps `states/` following the tree, behind the acknowledgement.
//!
//! The state machine hands every applied batch's changes to [`Mirror::submit`] and moves on; a
//! commit never waits for `states/`. One thread, the only writer of `states/`, takes whatever
//! batches have queued up, replays their moves and removals on disk in chain order, and then
//! writes each touched state once, as the tree has it *now* — many versions of a busy state
//! coalesce into the last. Renames move whole directories on disk (cheap); what moved is
//! trusted, and only the paths the round still holds below it follow it, so a round's work is
//! in proportion to the states that changed. A round that wrote anything ends with one
//! `syncfs` of `states/`, and only then is its height reported: [`Mirror::wait_for`] (what
//! `fsync` on a handle waits for) means written and durable, and never covers a state whose
//! writes keep failing.
//!
//! Derived data never stops a node: a failure here (disk full, a hand-edited or hand-deleted
//! file, a directory made unwritable, a path the host refuses) is logged with the state and the
//! reason, counted in [`MirrorStatus`], and the state (that one alone) is retried every
//! [`RETRY`] until it succeeds. The first job after start is a full repair: `states/` is compared with the tree
//! rebuilt from the chain and every difference fixed (logged).
//!
//! Must not: touch anything but `states/`, hold the tree's lock while doing disk I/O (it
//! copies the entries it needs — content is shared, not copied), or report an error upwards.

use std::collections::BTreeSet;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::pace::{self, Pace};
use super::states::{Dirs, Mismatch, StatesDir};
use crate::chain::{Change, Entry, Height, NodeId, StateId, Tree};

/// How often states whose mirroring failed are tried again.
pub const RETRY: Duration = Duration::from_secs(1);

/// At most one round per this long (and rounds busy at most a share of the time,
/// `store::pace`): under load a round writes many blocks' states, and versions of a busy state
/// coalesce into the last. `fsync` on a handle waits this much longer, under load up to
/// [`super::pace::LONGEST_HOLD`].
pub const ROUND_EVERY: Duration = Duration::from_millis(10);

/// Runs a closure with the current tree (under the replica's read lock).
pub type TreeReader = Arc<dyn Fn(&mut dyn FnMut(&Tree)) + Send + Sync>;

/// What `status` shows of the mirror.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MirrorStatus {
    /// Height of the last block whose changes are written to `states/` and durable there
    /// (a round's `syncfs` succeeded), except for the states in `failing`.
    pub height: Option<Height>,
    /// Failures since start (each failed attempt counts).
    pub errors: u64,
    /// States whose last attempt failed; retried until they succeed.
    pub failing: usize,
    /// The last failure, with its state and reason.
    pub last_error: Option<String>,
}

/// What the worker publishes after each round.
#[derive(Clone, Default)]
struct Progress {
    /// What `status` shows.
    status: MirrorStatus,
    /// The states `status.height` does not cover yet: those failing, and directories made on
    /// the way whose own modes the next round writes. Everything below one is behind too.
    behind: Arc<BTreeSet<StateId>>,
    /// States written or compared since start: the work the rounds did.
    work: u64,
}

enum Job {
    /// Changes of applied blocks up to `height`.
    Changes { height: Height, changes: Arc<Vec<(NodeId, Change)>> },
    /// Compare everything and fix every difference (start-up, snapshot install).
    Repair { height: Option<Height> },
}

/// Handle to the mirror worker. Dropping it lets the worker finish what is queued and stop.
pub struct Mirror {
    jobs: Mutex<mpsc::Sender<Job>>,
    progress: watch::Sender<Progress>,
}

/// What to do to a path once the queued moves have been replayed on disk.
#[derive(Default)]
struct Plan {
    /// Paths to write exactly as the tree has them (or remove, if it has nothing).
    write: BTreeSet<StateId>,
    /// Paths to compare with the tree, with everything below them, and fix.
    settle: BTreeSet<StateId>,
}

impl Plan {
    /// A move on disk took everything below `from` to `to` (and, for a swap, back): the paths
    /// still to be written or settled follow it.
    fn follow(&mut self, from: &StateId, to: &StateId, swap: bool) {
        for set in [&mut self.write, &mut self.settle] {
            *set = std::mem::take(set).into_iter().map(|id| moved(id, from, to, swap)).collect();
        }
    }
}

/// Where `id` is after a move on disk of `from` to `to` (and, for a swap, of `to` to `from`).
fn moved(id: StateId, from: &StateId, to: &StateId, swap: bool) -> StateId {
    if id.is_within(from) {
        id.rebase(from, to)
    } else if swap && id.is_within(to) {
        id.rebase(to, from)
    } else {
        id
    }
}

/// Whether `id` or one of its directories is in `set`.
fn covered(set: &BTreeSet<StateId>, id: &StateId) -> bool {
    let mut at = Some(id.clone());
    while let Some(id) = at {
        if set.contains(&id) {
            return true;
        }
        at = id.parent();
    }
    false
}

impl Mirror {
    /// Starts the worker. It waits for its first job (start-up queues a [`repair`](Self::repair)).
    pub fn start(states: StatesDir, tree: TreeReader) -> std::io::Result<Mirror> {
        let (jobs, queue) = mpsc::channel();
        let (progress, _) = watch::channel(Progress::default());
        let worker = Worker {
            states,
            tree,
            progress: progress.clone(),
            dirs: Dirs::default(),
            failing: BTreeSet::new(),
            redo: BTreeSet::new(),
            errors: 0,
            last_error: None,
            height: None,
            work: 0,
        };
        std::thread::Builder::new()
            .name("lc-mirror".into())
            // Removing a deep directory recurses once per level (up to ~2,000).
            .stack_size(64 << 20)
            .spawn(move || worker.run(queue))?;
        Ok(Mirror { jobs: Mutex::new(jobs), progress })
    }

    /// Queues the changes of applied blocks up to `height`.
    pub fn submit(&self, height: Height, changes: Arc<Vec<(NodeId, Change)>>) {
        let _ = self.jobs.lock().unwrap().send(Job::Changes { height, changes });
    }

    /// Queues a full repair (after a snapshot replaced the tree).
    pub fn repair(&self, height: Option<Height>) {
        let _ = self.jobs.lock().unwrap().send(Job::Repair { height });
    }

    /// The mirror's progress and errors.
    pub fn status(&self) -> MirrorStatus {
        self.progress.borrow().status.clone()
    }

    /// States written or compared since start (what the rounds cost; for tests and benches).
    pub fn work(&self) -> u64 {
        self.progress.borrow().work
    }

    /// Waits until the changes up to `height` are written to `states/` and durable — for
    /// `state`, if given, including that state (and the directories it is in): a state whose
    /// writes keep failing is never reported written. False on timeout.
    pub async fn wait_for(&self, height: Height, state: Option<&StateId>, timeout: Duration) -> bool {
        let mut progress = self.progress.subscribe();
        let reached = async move {
            progress
                .wait_for(|p| {
                    p.status.height.is_some_and(|h| h >= height)
                        && state.is_none_or(|id| !covered(&p.behind, id))
                })
                .await
                .is_ok()
        };
        tokio::time::timeout(timeout, reached).await.unwrap_or(false)
    }
}

struct Worker {
    states: StatesDir,
    tree: TreeReader,
    progress: watch::Sender<Progress>,
    dirs: Dirs,
    /// States whose last attempt failed: settled again each [`RETRY`].
    failing: BTreeSet<StateId>,
    /// Directories made on the way (mode 0755) whose own modes the next round writes.
    redo: BTreeSet<StateId>,
    /// Failures since start.
    errors: u64,
    /// The last failure, with its state and reason.
    last_error: Option<String>,
    /// The last height written and durable.
    height: Option<Height>,
    /// States written or compared since start.
    work: u64,
}

impl Worker {
    fn run(mut self, queue: mpsc::Receiver<Job>) {
        pace::run_behind("lc-mirror");
        let mut pace = Pace::new(ROUND_EVERY);
        loop {
            let timeout = if !self.redo.is_empty() {
                Duration::ZERO
            } else if !self.failing.is_empty() {
                RETRY
            } else {
                Duration::from_secs(3600)
            };
            let first = match queue.recv_timeout(timeout) {
                Ok(job) => Some(job),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            pace.wait();
            let mut plan = Plan::default();
            // Whatever failed before is compared and fixed again with this round (first, so
            // that the moves below take it along).
            plan.settle.extend(std::mem::take(&mut self.failing));
            plan.write.extend(std::mem::take(&mut self.redo));
            let mut height = None;
            for job in first.into_iter().chain(std::iter::from_fn(|| queue.try_recv().ok())) {
                match job {
                    Job::Changes { height: h, changes } => {
                        height = Some(h);
                        self.replay_moves(&changes, &mut plan);
                    }
                    Job::Repair { height: h } => {
                        height = h.or(height);
                        plan.settle.insert(StateId::root());
                        if let Err(e) = self.states.clean_scratch(&mut self.dirs) {
                            tracing::warn!(error = %e, "mirror: cannot clean the scratch directory of states/");
                        }
                    }
                }
            }
            let wrote = !plan.write.is_empty() || !plan.settle.is_empty();
            let touched: Vec<StateId> = plan.write.iter().chain(&plan.settle).cloned().collect();
            self.carry_out(plan);
            if let Err(e) = self.states.finish(&mut self.dirs) {
                self.failed(&StateId::root(), &e);
            }
            // What this round wrote counts once it is durable: one syncfs for all of it.
            let durable = !wrote || self.durable(&touched);
            pace.done();
            if durable && height.is_some() {
                self.height = height;
            }
            self.publish();
        }
    }

    /// Syncs what the round wrote; on failure every state it touched is retried.
    fn durable(&mut self, touched: &[StateId]) -> bool {
        match self.states.sync(&mut self.dirs) {
            Ok(()) => true,
            Err(e) => {
                for id in touched {
                    self.failed(id, &e);
                }
                false
            }
        }
    }

    fn publish(&self) {
        let behind: BTreeSet<StateId> = self.failing.union(&self.redo).cloned().collect();
        self.progress.send_modify(|p| {
            p.status = MirrorStatus {
                height: self.height,
                errors: self.errors,
                failing: self.failing.len(),
                last_error: self.last_error.clone(),
            };
            p.behind = Arc::new(behind);
            p.work = self.work;
        });
    }

    /// Replays renames on disk now (so a moved directory is not rewritten file by file) and
    /// notes every other touched path for the end of the round. A move that happened on disk
    /// leaves what it moved as it was — only what the plan still holds below it (states
    /// written or failing before the move) follows it — so a round's work is in proportion
    /// to the states that changed, never to those a rename moved.
    fn replay_moves(&mut self, changes: &[(NodeId, Change)], plan: &mut Plan) {
        for (_, change) in changes {
            match change {
                Change::Wrote(id) | Change::ModeChanged(id) | Change::MadeDir(id) => {
                    plan.write.insert(id.clone());
                }
                Change::Removed(id) | Change::RemovedDir(id) => {
                    plan.write.insert(id.clone());
                }
                Change::Renamed { from, to } => {
                    match self.states.rename(&mut self.dirs, from, to) {
                        Ok(true) => plan.follow(from, to, false),
                        // Not on disk: `to` is written from the tree, whole.
                        Ok(false) => {
                            plan.follow(from, to, false);
                            plan.settle.insert(to.clone());
                        }
                        Err(e) => {
                            self.failed(to, &e);
                            self.failing.insert(from.clone());
                            plan.settle.extend([from.clone(), to.clone()]);
                        }
                    }
                }
                Change::Exchanged { a, b } => match self.states.exchange(&mut self.dirs, a, b) {
                    Ok(true) => plan.follow(a, b, true),
                    Ok(false) => {
                        plan.follow(a, b, true);
                        plan.settle.extend([a.clone(), b.clone()]);
                    }
                    Err(e) => {
                        self.failed(a, &e);
                        self.failing.insert(b.clone());
                        plan.settle.extend([a.clone(), b.clone()]);
                    }
                },
            }
        }
    }

    fn carry_out(&mut self, plan: Plan) {
        // Copy what is needed out of the tree; the disk work happens without its lock.
        let mut writes: Vec<(StateId, Option<Entry>)> = Vec::with_capacity(plan.write.len());
        let mut settles: Vec<(StateId, Vec<(StateId, Entry)>)> = Vec::new();
        let settle_tops: BTreeSet<StateId> = outermost(&plan.settle).into_iter().collect();
        (self.tree)(&mut |tree: &Tree| {
            for id in &plan.write {
                if !covered(&settle_tops, id) {
                    writes.push((id.clone(), tree.get(id).cloned()));
                }
            }
            for top in &settle_tops {
                let below = tree.subtree(top).map(|(id, e)| (id.clone(), e.clone()));
                settles.push((top.clone(), below.collect()));
            }
        });
        self.work += (writes.len() + settles.iter().map(|(_, below)| below.len()).sum::<usize>()) as u64;
        // Path order puts directories before what they hold.
        for (id, entry) in writes {
            match self.states.write(&mut self.dirs, &id, entry.as_ref()) {
                Ok(made) => {
                    self.failing.remove(&id);
                    // Directories made on the way get their own mode written next round.
                    self.redo.extend(made);
                }
                Err(e) => self.failed(&id, &e),
            }
        }
        for (top, entries) in settles {
            let settled = self.states.settle(&mut self.dirs, &top, &entries);
            if top.is_root() {
                for m in &settled.fixed {
                    match m {
                        Mismatch::Stale(id) => {
                            tracing::warn!(state = %id, "repair: rewrote a state in states/ that differed from the chain")
                        }
                        Mismatch::Extra { dir, name } => tracing::warn!(
                            dir = %dir, name = %String::from_utf8_lossy(name),
                            "repair: removed a file in states/ that the chain does not have"
                        ),
                    }
                }
            }
            self.failing.retain(|id| !id.is_within(&top));
            self.redo.extend(settled.made);
            // Only the states that failed are tried again, each on its own.
            for (id, e) in settled.failed {
                self.failed(&id, &e);
            }
        }
        self.dirs.clear();
    }

    fn failed(&mut self, id: &StateId, e: &super::Error) {
        tracing::warn!(state = %id, error = %e, "mirror: cannot write states/; retrying (the chain is unaffected)");
        self.failing.insert(id.clone());
        // A descriptor may point at a directory that moved or failed.
        self.dirs.clear();
        self.errors += 1;
        self.last_error = Some(format!("{id}: {e}"));
    }
}

/// The paths of `set` that no other path of `set` contains.
fn outermost(set: &BTreeSet<StateId>) -> Vec<StateId> {
    let mut out: Vec<StateId> = Vec::new();
    for id in set {
        if !out.iter().any(|top| id.is_within(top)) {
            out.push(id.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::RwLock;

    use super::*;
    use crate::chain::{ApplyCtx, Content, RenameMode, RequestId, Transaction, TxOp};
    use crate::store::DataDir;

    fn sid(s: &str) -> StateId {
        StateId::parse(s).unwrap()
    }

    /// A tree, a mirror of it, and a height per applied transaction.
    struct Rig {
        tree: Arc<RwLock<Tree>>,
        mirror: Mirror,
        dir: DataDir,
        height: Height,
        refuse: Arc<Mutex<BTreeSet<StateId>>>,
        _tmp: tempfile::TempDir,
    }

    impl Rig {
        fn new() -> Rig {
            let tmp = tempfile::tempdir().unwrap();
            let dir = DataDir::create(tmp.path()).unwrap();
            let tree = Arc::new(RwLock::new(Tree::new()));
            let reader: TreeReader = {
                let tree = tree.clone();
                Arc::new(move |f: &mut dyn FnMut(&Tree)| f(&tree.read().unwrap()))
            };
            let states = StatesDir::new(&dir);
            let refuse = states.refuse.clone();
            let mirror = Mirror::start(states, reader).unwrap();
            mirror.repair(None);
            Rig { tree, mirror, dir, height: 0, refuse, _tmp: tmp }
        }

        /// Applies `ops` as one block and hands its changes to the mirror.
        fn block(&mut self, ops: Vec<TxOp>) -> Height {
            self.height += 1;
            let mut changes = Vec::new();
            let mut tree = self.tree.write().unwrap();
            for (i, op) in ops.into_iter().enumerate() {
                let seq = self.height * 1000 + i as u64;
                let request = RequestId { node: 1, incarnation: 1, seq };
                let tx = Transaction { request, acked_below: 0, op };
                let ctx = ApplyCtx { height: self.height, timestamp_ms: self.height };
                let (outcome, applied) = tree.apply(&ctx, &tx);
                assert_eq!(outcome, crate::chain::Outcome::Ok, "{tx:?}");
                changes.extend(applied.into_iter().map(|c| (1, c)));
            }
            drop(tree);
            self.mirror.submit(self.height, Arc::new(changes));
            self.height
        }

        fn wait(&self, height: Height, state: Option<&str>, timeout: Duration) -> bool {
            let state = state.map(sid);
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
            rt.block_on(self.mirror.wait_for(height, state.as_ref(), timeout))
        }

        fn converged(&self) -> bool {
            let states = StatesDir::new(&self.dir);
            states.compare_tree(&self.tree.read().unwrap()).unwrap().is_empty()
        }
    }

    fn put(id: &str, content: &str) -> TxOp {
        TxOp::Put { id: sid(id), content: Content::from(content.as_bytes()), uid: 0, gid: 0, ino: None }
    }

    fn mkdir(id: &str, mode: u32) -> TxOp {
        TxOp::Mkdir { id: sid(id), mode, uid: 0, gid: 0 }
    }

    const LONG: Duration = Duration::from_secs(20);

    /// Run as a user that is not root, states of mode 0000 and directories of 0555 and 0000 do
    /// not stop the mirror: nothing fails, the states after them are written, and `states/`
    /// matches the tree.
    #[test]
    fn a_mirror_not_run_as_root_converges_for_any_mode() {
        crate::store::states::tests::as_non_root(
            "store::mirror::tests::a_mirror_not_run_as_root_converges_for_any_mode",
            || {
                let mut rig = Rig::new();
                rig.block(vec![put("a", "a"), TxOp::Chmod { id: sid("a"), mode: 0o000 }]);
                rig.block(vec![
                    mkdir("ro", 0o755),
                    put("ro/f", "f"),
                    TxOp::Chmod { id: sid("ro"), mode: 0o555 },
                ]);
                rig.block(vec![mkdir("shut", 0o000)]);
                rig.block(vec![put("ro/f", "f2"), put("ro/g", "g"), put("z", "after them")]);
                rig.block(vec![TxOp::Rename {
                    from: sid("ro"),
                    to: sid("moved"),
                    mode: RenameMode::Replace,
                }]);
                let h = rig.block(vec![put("a", "a2"), put("moved/h", "h")]);
                assert!(rig.wait(h, None, LONG));
                let status = rig.mirror.status();
                assert_eq!((status.errors, status.failing), (0, 0), "{status:?}");
                assert!(rig.converged());
                drop(rig.mirror);
                crate::store::states::tests::open_everything(rig._tmp.path());
            },
        );
    }

    /// The reported height means written and durable: a state whose writes keep failing is
    /// never reported (`fsync` of it times out, which is `EIO`), while other states are; once
    /// it succeeds it is reported too.
    #[test]
    fn a_state_that_keeps_failing_is_never_reported_written() {
        let mut rig = Rig::new();
        rig.refuse.lock().unwrap().insert(sid("bad"));
        let h = rig.block(vec![put("good", "g"), put("bad", "b"), put("later", "l")]);
        assert!(rig.wait(h, Some("good"), LONG));
        assert!(rig.wait(h, Some("later"), LONG), "the states after it are written");
        assert!(!rig.wait(h, Some("bad"), Duration::from_millis(1500)), "retried, and still failing");
        let status = rig.mirror.status();
        assert!(status.failing == 1 && status.errors >= 2, "{status:?}");
        assert!(status.last_error.as_deref().is_some_and(|e| e.starts_with("bad:")), "{status:?}");
        rig.refuse.lock().unwrap().clear();
        assert!(rig.wait(h, Some("bad"), LONG), "written at the next retry");
        assert!(rig.converged());
    }

    /// A rename costs the mirror the renamed state, not what it holds: the round after moving
    /// a directory of 500 states writes or compares a handful. A state written before the
    /// move in the same round lands where the move took it.
    #[test]
    fn a_renamed_directory_costs_a_round_what_changed_not_what_it_holds() {
        let mut rig = Rig::new();
        let mut ops = vec![mkdir("big", 0o755)];
        ops.extend((0..500).map(|i| put(&format!("big/f{i:03}"), "x")));
        let h = rig.block(ops);
        assert!(rig.wait(h, None, LONG));
        for round in 0..4 {
            let before = rig.mirror.work();
            let (from, to) = if round % 2 == 0 { ("big", "big2") } else { ("big2", "big") };
            let h = rig.block(vec![
                put(&format!("{from}/f007"), &format!("round {round}")),
                TxOp::Rename { from: sid(from), to: sid(to), mode: RenameMode::Replace },
            ]);
            assert!(rig.wait(h, None, LONG));
            let cost = rig.mirror.work() - before;
            assert!(cost <= 4, "round {round}: {cost} states written or compared");
            assert!(rig.converged(), "round {round}");
        }
        // An exchange of two directories, one with a write still pending below it.
        let h = rig.block(vec![mkdir("other", 0o700), put("other/x", "x")]);
        assert!(rig.wait(h, None, LONG));
        let before = rig.mirror.work();
        let h = rig.block(vec![
            put("big/f001", "swapped"),
            TxOp::Rename { from: sid("big"), to: sid("other"), mode: RenameMode::Exchange },
        ]);
        assert!(rig.wait(h, None, LONG));
        assert!(rig.mirror.work() - before <= 4);
        assert!(rig.converged());
    }
}
