//! The mirror worker: keeps `states/` following the tree, behind the acknowledgement.
//!
//! The state machine hands every applied batch's changes to [`Mirror::submit`] and moves on; a
//! commit never waits for `states/`. One thread, the only writer of `states/`, takes whatever
//! batches have queued up, replays their moves and removals on disk in chain order, and then
//! writes each touched state once, as the tree has it *now* — many versions of a busy state
//! coalesce into the last. Renames move whole directories on disk (cheap) and then settle
//! both ends against the tree.
//!
//! Derived data never stops a node: a failure here (disk full, a hand-edited or hand-deleted
//! file, a directory made unwritable, a path the host refuses) is logged with the state and the
//! reason, counted in [`MirrorStatus`], and the state is retried every [`RETRY`] until it
//! succeeds. The first job after start is a full repair: `states/` is compared with the tree
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
    /// Height of the last block whose changes were mirrored (attempted; see `failing`).
    pub height: Option<Height>,
    /// Failures since start (each failed attempt counts).
    pub errors: u64,
    /// States whose last attempt failed; retried until they succeed.
    pub failing: usize,
    /// The last failure, with its state and reason.
    pub last_error: Option<String>,
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
    progress: watch::Sender<MirrorStatus>,
}

/// What to do to a path once the queued moves have been replayed on disk.
#[derive(Default)]
struct Plan {
    /// Paths to write exactly as the tree has them (or remove, if it has nothing).
    write: BTreeSet<StateId>,
    /// Paths to compare with the tree, with everything below them, and fix.
    settle: BTreeSet<StateId>,
}

impl Mirror {
    /// Starts the worker. It waits for its first job (start-up queues a [`repair`](Self::repair)).
    pub fn start(states: StatesDir, tree: TreeReader) -> std::io::Result<Mirror> {
        let (jobs, queue) = mpsc::channel();
        let (progress, _) = watch::channel(MirrorStatus::default());
        let worker = Worker {
            states,
            tree,
            progress: progress.clone(),
            dirs: Dirs::default(),
            failing: BTreeSet::new(),
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
        self.progress.borrow().clone()
    }

    /// Waits until the changes up to `height` were mirrored; false on timeout.
    pub async fn wait_for(&self, height: Height, timeout: Duration) -> bool {
        let mut progress = self.progress.subscribe();
        let reached =
            async move { progress.wait_for(|s| s.height.is_some_and(|h| h >= height)).await.is_ok() };
        tokio::time::timeout(timeout, reached).await.unwrap_or(false)
    }
}

struct Worker {
    states: StatesDir,
    tree: TreeReader,
    progress: watch::Sender<MirrorStatus>,
    dirs: Dirs,
    /// States whose last attempt failed.
    failing: BTreeSet<StateId>,
}

impl Worker {
    fn run(mut self, queue: mpsc::Receiver<Job>) {
        pace::run_behind("lc-mirror");
        let mut pace = Pace::new(ROUND_EVERY);
        loop {
            let timeout = if self.failing.is_empty() { Duration::from_secs(3600) } else { RETRY };
            let first = match queue.recv_timeout(timeout) {
                Ok(job) => Some(job),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            pace.wait();
            let mut plan = Plan::default();
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
            // Whatever failed before is compared and fixed again with this round.
            plan.settle.extend(std::mem::take(&mut self.failing));
            self.carry_out(plan);
            pace.done();
            self.progress.send_modify(|s| {
                if height.is_some() {
                    s.height = height;
                }
                s.failing = self.failing.len();
            });
        }
    }

    /// Replays renames on disk now (so a moved directory is not rewritten file by file) and
    /// notes every other touched path for the end of the round.
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
                    if let Err(e) = self.states.rename(&mut self.dirs, from, to) {
                        self.failed(to, &e);
                    }
                    plan.settle.extend([from.clone(), to.clone()]);
                }
                Change::Exchanged { a, b } => {
                    if let Err(e) = self.states.exchange(&mut self.dirs, a, b) {
                        self.failed(a, &e);
                    }
                    plan.settle.extend([a.clone(), b.clone()]);
                }
            }
        }
    }

    fn carry_out(&mut self, plan: Plan) {
        // Copy what is needed out of the tree; the disk work happens without its lock.
        let mut writes: Vec<(StateId, Option<Entry>)> = Vec::with_capacity(plan.write.len());
        let mut settles: Vec<(StateId, Vec<(StateId, Entry)>)> = Vec::new();
        let settle_tops = outermost(&plan.settle);
        (self.tree)(&mut |tree: &Tree| {
            for id in &plan.write {
                if !settle_tops.iter().any(|top| id.is_within(top)) {
                    writes.push((id.clone(), tree.get(id).cloned()));
                }
            }
            for top in &settle_tops {
                let below =
                    tree.iter().filter(|(id, _)| id.is_within(top)).map(|(id, e)| (id.clone(), e.clone()));
                settles.push((top.clone(), below.collect()));
            }
        });
        // Path order puts directories before what they hold.
        for (id, entry) in writes {
            match self.states.write(&mut self.dirs, &id, entry.as_ref()) {
                Ok(made) => {
                    self.failing.remove(&id);
                    // Directories made on the way get their own mode written next round.
                    self.failing.extend(made);
                }
                Err(e) => self.failed(&id, &e),
            }
        }
        for (top, entries) in settles {
            match self.states.settle(&mut self.dirs, &top, &entries) {
                Ok(fixed) => {
                    if top.is_root() && !fixed.is_empty() {
                        for m in &fixed {
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
                }
                Err(e) => {
                    self.failed(&top, &e);
                    // Settle it again next round, as a whole.
                    self.failing.insert(top.clone());
                }
            }
        }
        self.dirs.clear();
    }

    fn failed(&mut self, id: &StateId, e: &super::Error) {
        tracing::warn!(state = %id, error = %e, "mirror: cannot write states/; retrying (the chain is unaffected)");
        self.failing.insert(id.clone());
        // A descriptor may point at a directory that moved or failed.
        self.dirs.clear();
        let message = format!("{id}: {e}");
        self.progress.send_modify(|s| {
            s.errors += 1;
            s.last_error = Some(message);
        });
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
