//! The node's view of itself and the cluster, as `.lightchain/status` and `lightchain status`
//! show it: every member's head (height, hash), and whether its chain diverged (DESIGN §1.5,
//! decided by `divergence::judge` from this node's comparisons at common heights).

use openraft::async_runtime::WatchReceiver as _;
use serde::{Deserialize, Serialize};

use super::Node;

/// One member of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Consensus node id.
    pub id: u64,
    /// Address peers reach it at.
    pub addr: String,
    /// `voter` or `learner`.
    pub role: String,
    /// Its chain height, as it last said (this node's own for itself).
    pub head_height: Option<u64>,
    /// Its head hash, as it last said.
    pub head_hash: Option<String>,
    /// How many blocks it is behind the highest height known here.
    pub lag: Option<u64>,
    /// Whether it answered within the last few seconds (always true for this node).
    pub reachable: bool,
    /// Whether it said it was ready.
    pub ready: bool,
    /// Whether its chain differs from the cluster's at a common height (shown as `DIVERGED`).
    #[serde(default)]
    pub diverged: bool,
}

/// A node's status document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Consensus node id.
    pub node_id: u64,
    /// Human name.
    pub name: String,
    /// The cluster's id (from its genesis block).
    pub cluster_id: Option<String>,
    /// `leader`, `follower`, `candidate` or `learner`.
    pub role: String,
    /// The leader's node id, if known.
    pub leader: Option<u64>,
    /// Current consensus term.
    pub term: u64,
    /// The members.
    pub members: Vec<MemberStatus>,
    /// Height of the last block.
    pub head_height: Option<u64>,
    /// Hash of the last block.
    pub head_hash: Option<String>,
    /// Height of the last block applied here (equal to `head_height` on this node).
    pub applied_height: Option<u64>,
    /// Index of the last consensus log entry applied here.
    pub applied_index: Option<u64>,
    /// Height of the last block fsynced in `chain/` (written behind `applied_height`).
    pub chain_height: Option<u64>,
    /// The `states/` mirror, written behind `applied_height`.
    pub mirror: MirrorView,
    /// Number of states (files and directories, the root excluded).
    pub states: usize,
    /// Whether the node is ready: it serves, knows a leader and a quorum, and has caught up
    /// with the cluster (applied the leader's commit index as of after it started).
    pub ready: bool,
    /// Why it is not ready (e.g. `catching up (applied 120 of 5000)`); absent when ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_ready: Option<String>,
    /// The address the node's gRPC server is bound to.
    pub listen: String,
    /// How reads are served.
    pub read_consistency: String,
    /// Set when this node's own chain diverged from the cluster's: it then serves nothing.
    #[serde(default)]
    pub diverged: Option<super::divergence::Divergence>,
    /// Set when this node found it was removed from the cluster's membership: why. It then
    /// serves no writes.
    #[serde(default)]
    pub removed: Option<String>,
}

/// What `status` shows of the `states/` mirror.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorView {
    /// Height of the last block whose changes are in `states/`.
    pub height: Option<u64>,
    /// Blocks applied here but not yet in `states/`.
    pub lag: u64,
    /// Failed attempts to write `states/` since start (each is logged with its state).
    pub errors: u64,
    /// States whose last write failed; retried every second.
    pub failing: usize,
    /// The last failure: the state and the reason.
    pub last_error: Option<String>,
}

pub(super) fn build(node: &Node) -> Status {
    let metrics = node.raft.metrics().borrow_watched().clone();
    let replica = node.replica();
    let membership = metrics.membership_config.membership();
    let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
    let own = node.divergence().cloned();
    let not_ready = node.not_ready();
    let ready = not_ready.is_none();
    let views = node.views.lock().unwrap().clone();
    let mut verdict = super::members::verdict(node.id(), &metrics, &views);
    if own.is_some() {
        verdict.diverged.insert(node.id());
    }
    let own_height = replica.head.map(|h| h.height);
    let own_hash = replica.head.map(|h| h.hash.to_hex());
    let fresh = |at: std::time::Instant| at.elapsed() < std::time::Duration::from_secs(3);
    let mut members: Vec<MemberStatus> = membership
        .nodes()
        .map(|(id, n)| {
            let (head_height, head_hash, reachable, member_ready) = if *id == node.id() {
                (own_height, own_hash.clone(), true, ready)
            } else {
                match views.get(id) {
                    Some(v) => {
                        (v.head_height, v.head_hash.map(|h| h.to_hex()), fresh(v.at), v.ready && fresh(v.at))
                    }
                    None => (None, None, false, false),
                }
            };
            MemberStatus {
                id: *id,
                addr: n.addr.clone(),
                role: if voters.contains(id) { "voter" } else { "learner" }.to_owned(),
                head_height,
                head_hash,
                lag: None,
                reachable,
                ready: member_ready,
                diverged: verdict.diverged.contains(id),
            }
        })
        .collect();
    let top = members.iter().filter_map(|m| m.head_height).max();
    for m in &mut members {
        m.lag = top.zip(m.head_height).map(|(t, h)| t.saturating_sub(h));
    }
    let role = match metrics.state {
        openraft::ServerState::Leader => "leader",
        openraft::ServerState::Follower => "follower",
        openraft::ServerState::Candidate => "candidate",
        openraft::ServerState::Learner => "learner",
        openraft::ServerState::Shutdown => "shutdown",
    };
    Status {
        node_id: node.id(),
        name: node.config.name.clone(),
        cluster_id: node.shared.identity.lock().unwrap().cluster_id.clone(),
        role: role.to_owned(),
        leader: metrics.current_leader,
        term: metrics.current_term,
        members,
        head_height: replica.head.map(|h| h.height),
        head_hash: replica.head.map(|h| h.hash.to_hex()),
        applied_height: replica.head.map(|h| h.height),
        applied_index: replica.last_applied.map(|l| l.index),
        chain_height: node.shared.chain.durable().map(|h| h.height),
        mirror: {
            let m = node.shared.mirror.status();
            let lag = own_height.map_or(0, |h| h.saturating_sub(m.height.unwrap_or(0)));
            let lag = if m.height.is_none() && own_height.is_some() { lag + 1 } else { lag };
            MirrorView {
                height: m.height,
                lag,
                errors: m.errors,
                failing: m.failing,
                last_error: m.last_error,
            }
        },
        states: replica.tree.len() - 1,
        ready,
        not_ready: not_ready.map(|r| r.to_string()),
        listen: node.config.listen.to_string(),
        read_consistency: format!("{:?}", node.config.read_consistency).to_lowercase(),
        diverged: own,
        removed: node.removed().map(str::to_owned),
    }
}
