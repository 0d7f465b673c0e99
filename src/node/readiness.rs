//! Whether the node is ready ([`Node::not_ready`]), as `.lightchain/status`, `lightchain
//! status`, the member poll and the Kubernetes startupProbe see it.
//!
//! Ready means: consensus runs, the node knows a leader and a quorum, its chain has not
//! diverged, it was not removed — **and it has caught up**: it has applied at least the
//! leader's commit index as the leader gave it after this node started (a read-index round
//! trip, the one linearizable reads use). A node that just joined as a learner knows its
//! leader long before it holds the chain; an app started by the startupProbe would read
//! missing or stale states from it. Until it has caught up its status says
//! `catching up (applied X of Y)`.
//!
//! [`track`] asks for that index, waits until it is applied, and keeps the answer: once caught
//! up, a node stays so while it keeps the cluster in sight. When it knows it lost the quorum
//! (`Node::knows_no_quorum`, e.g. a long partition), it asks again before it is ready again.
//!
//! This module only reads consensus state and this node's applied index; it changes nothing.

use openraft::async_runtime::WatchReceiver as _;
use std::sync::{Mutex, Weak};
use std::time::Duration;

use tokio::sync::watch;

use super::Node;

/// How long to wait before asking for the leader's commit index again after a failed attempt.
const RETRY: Duration = Duration::from_millis(300);
/// How often a caught-up node checks whether it lost the cluster.
const RECHECK: Duration = Duration::from_secs(1);

/// Why a node is not ready (`"not_ready"` in its status).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// Consensus stopped after a fatal error.
    #[error("consensus stopped: {0}")]
    Stopped(String),
    /// This node's chain diverged from the cluster's.
    #[error("this node's chain diverged from the cluster's")]
    Diverged,
    /// This node was removed from the membership.
    #[error("removed from the cluster")]
    Removed,
    /// No leader is known (an election, or no quorum in sight yet).
    #[error("no leader known")]
    NoLeader,
    /// This node knows it cannot commit now.
    #[error("no quorum")]
    NoQuorum,
    /// This node has asked the leader how far the cluster is and has no answer yet.
    #[error("catching up (applied {applied}; asking the leader for its commit index)")]
    Asking {
        /// The last log index applied here.
        applied: u64,
    },
    /// This node has not yet applied what the cluster had committed when it asked.
    #[error("catching up (applied {applied} of {target})")]
    CatchingUp {
        /// The last log index applied here.
        applied: u64,
        /// The leader's commit index when it answered.
        target: u64,
    },
}

/// How far catching up has come.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Progress {
    /// The leader's commit index is not known yet.
    #[default]
    Asking,
    /// The leader's commit index, as it answered; not applied here yet.
    Target(u64),
    /// Applied up to the target: caught up.
    CaughtUp,
}

/// A node's catching-up state, shared by [`track`] and [`Node::not_ready`].
#[derive(Debug, Default)]
pub struct CatchUp {
    /// Where catching up stands.
    progress: Mutex<Progress>,
}

impl CatchUp {
    fn get(&self) -> Progress {
        *self.progress.lock().unwrap()
    }

    fn set(&self, progress: Progress) {
        *self.progress.lock().unwrap() = progress;
    }
}

impl Node {
    /// Why this node is not ready; `None` when it is.
    pub fn not_ready(&self) -> Option<NotReady> {
        // The borrow ends before `knows_no_quorum` borrows again (see there).
        let (stopped, leader) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow_watched();
            (m.running_state.as_ref().err().map(|e| e.to_string()), m.current_leader)
        };
        if let Some(e) = stopped {
            return Some(NotReady::Stopped(e));
        }
        if self.diverged.get().is_some() {
            return Some(NotReady::Diverged);
        }
        if self.removed.get().is_some() {
            return Some(NotReady::Removed);
        }
        if leader.is_none() {
            return Some(NotReady::NoLeader);
        }
        if self.knows_no_quorum() {
            return Some(NotReady::NoQuorum);
        }
        let applied = *self.shared.applied_index.borrow();
        match self.catch_up.get() {
            Progress::CaughtUp => None,
            // Applied already; `track` notes it at its next wake-up.
            Progress::Target(target) if applied >= target => None,
            Progress::Target(target) => Some(NotReady::CatchingUp { applied, target }),
            Progress::Asking => Some(NotReady::Asking { applied }),
        }
    }
}

/// Sleeps `d`; false if `stop` came first.
async fn pause(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stop.wait_for(|s| *s) => false,
    }
}

/// Catches up: asks for the leader's commit index, waits until this node has applied it, and
/// marks the node caught up; asks again after the node knew it had lost the quorum. Holds the
/// node only while it asks, so dropping it is not delayed. Runs until `stop`.
pub(super) async fn track(node: Weak<Node>, mut stop: watch::Receiver<bool>) {
    loop {
        let Some(n) = node.upgrade() else { return };
        if n.catch_up.get() == Progress::CaughtUp {
            if n.knows_no_quorum() {
                tracing::info!("lost sight of the quorum: ready again only once caught up with the cluster");
                n.catch_up.set(Progress::Asking);
            }
            drop(n);
            if !pause(RECHECK, &mut stop).await {
                return;
            }
            continue;
        }
        // Without a quorum in sight there is nothing to catch up with yet (and a leader cut off
        // from its majority would only answer its own commit index, again and again).
        if n.knows_no_quorum() {
            drop(n);
            if !pause(RETRY, &mut stop).await {
                return;
            }
            continue;
        }
        let asked = tokio::select! {
            asked = n.fetch_read_index() => asked,
            _ = stop.wait_for(|s| *s) => return,
        };
        let target = match asked {
            Ok(target) => target,
            Err(e) => {
                tracing::debug!(error = %e, "could not learn the leader's commit index yet");
                drop(n);
                if !pause(RETRY, &mut stop).await {
                    return;
                }
                continue;
            }
        };
        let mut applied = n.shared.applied_index.subscribe();
        let from = *applied.borrow();
        if from < target {
            n.catch_up.set(Progress::Target(target));
            tracing::info!(applied = from, target, "catching up with the cluster before saying ready");
        }
        drop(n);
        tokio::select! {
            done = applied.wait_for(|i| *i >= target) => if done.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
        let Some(n) = node.upgrade() else { return };
        n.catch_up.set(Progress::CaughtUp);
        if from < target {
            tracing::info!(target, "caught up with the cluster: ready");
        }
    }
}
