//! Consensus: the openraft glue that turns proposals into an agreed, durable, ordered log and
//! the log into blocks.
//!
//! - [`log_store`]: openraft's log storage over `store::raft_log` — entries and vote are
//!   fsynced before they count; one fsync may cover many appends.
//! - [`state_machine`]: applies committed entries in order — one block per application entry,
//!   none for blank entries, a membership block per membership entry — writes the chain, then
//!   `states/`, then publishes the new replica to readers.
//! - [`network`]: how this node reaches its peers (openraft's RPCs over gRPC, streamed
//!   snapshots that carry the blocks a follower lacks).
//! - [`raft_service`]: the gRPC service that feeds peers' messages into openraft.
//!
//! This layer never talks to FUSE and never picks an errno; it does not batch proposals
//! either (openraft makes one entry per `client_write`; group commit is `node`'s job).
//!
//! See `docs/architecture/consensus.md`.

pub mod codec;
#[cfg(debug_assertions)]
mod fault;
pub mod log_store;
pub mod network;
pub mod raft_service;
mod recent;
pub mod state_machine;

use serde::{Deserialize, Serialize};

use crate::chain::{Batch, Height, Outcome};

/// Bytes of entries one AppendEntries carries, at most (a single larger entry still goes
/// alone). Bounds the time an append takes, the follower's fsync included, well below the
/// deadline the network gives an append that carries entries (the heartbeat interval, see
/// [`raft_config`]).
pub const MAX_APPEND_BYTES: usize = 8 << 20;

/// What applying one log entry produced, returned to the proposer by `client_write`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResult {
    /// The block the entry became (`None` for an entry that makes no block).
    pub height: Option<Height>,
    /// One outcome per transaction of the batch, in order.
    pub outcomes: Vec<Outcome>,
}

openraft::declare_raft_types!(
    /// The openraft type configuration of lightchain. Terms, leader ids (`term` and
    /// `node_id`: several leaders per term may be proposed, openraft's default), votes and
    /// entries are openraft's defaults, whose serialized shape is the one 0.9 wrote (the
    /// `on_disk_shape` test of `log_store` decodes bytes written by 0.9).
    pub TypeConfig:
        D = Batch,
        R = BatchResult,
        NodeId = u64,
        Node = openraft::BasicNode,
        AsyncRuntime = openraft::TokioRuntime,
);

/// openraft logs the entries it handles; a batch says how many transactions it holds (their
/// contents would flood the log).
impl std::fmt::Display for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Batch({} txs, t={})", self.txs.len(), self.timestamp_ms)
    }
}

/// Short names for openraft types instantiated with [`TypeConfig`].
pub mod typ {
    use openraft::type_config::alias;

    use super::state_machine::{SnapshotData, StateMachineStore};
    use super::TypeConfig;

    /// The Raft handle (0.10 names the state machine in it).
    pub type Raft = openraft::Raft<TypeConfig, StateMachineStore>;
    /// The leader id a log id carries (`term`, `node_id`).
    pub type CommittedLeaderId = alias::CommittedLeaderIdOf<TypeConfig>;
    /// A log id.
    pub type LogId = alias::LogIdOf<TypeConfig>;
    /// A vote.
    pub type Vote = alias::VoteOf<TypeConfig>;
    /// A log entry.
    pub type Entry = alias::EntryOf<TypeConfig>;
    /// A membership configuration.
    pub type Membership = openraft::Membership<u64, openraft::BasicNode>;
    /// Membership as applied.
    pub type StoredMembership = alias::StoredMembershipOf<TypeConfig>;
    /// Snapshot metadata.
    pub type SnapshotMeta = alias::SnapshotMetaOf<TypeConfig>;
    /// A snapshot.
    pub type Snapshot = alias::SnapshotOf<TypeConfig, SnapshotData>;
    /// Metrics.
    pub type RaftMetrics = openraft::RaftMetrics<TypeConfig>;
    /// openraft's metrics channel (0.10 wraps tokio's watch receiver in a type of its own:
    /// read it with `openraft::async_runtime::WatchReceiver`, wait with
    /// [`wait_metrics`](super::wait_metrics)).
    pub type MetricsRx = alias::WatchReceiverOf<TypeConfig, RaftMetrics>;
}

/// Waits until `pred` holds for openraft's metrics (the current ones first), as tokio's
/// `watch::Receiver::wait_for` does; `Err` once openraft stopped publishing.
pub async fn wait_metrics(
    metrics: &mut typ::MetricsRx,
    mut pred: impl FnMut(&typ::RaftMetrics) -> bool,
) -> Result<(), openraft::async_runtime::RecvError> {
    use openraft::async_runtime::WatchReceiver;
    loop {
        if pred(&metrics.borrow_and_update()) {
            return Ok(());
        }
        metrics.changed().await?;
    }
}

/// The Raft configuration, chosen for lightchain's workload rather than left at defaults.
///
/// - **AppendEntries deadline.** openraft 0.10 hands every append the heartbeat interval as
///   its `RPCOption` (`replication/mod.rs`, `core/heartbeat/worker.rs`) and leaves the deadline
///   to the network: it cuts a heartbeat at that interval but sets no timer on the replication
///   stream. The network gives an append that carries entries the whole interval as its gRPC
///   deadline (a heartbeat gets `soft_ttl`, so it fails before openraft drops it). Each append
///   is bounded in bytes ([`MAX_APPEND_BYTES`], enforced by the log reader; openraft 0.10 has
///   no `PayloadTooLarge` any more) and the heartbeat interval is long enough for the largest
///   one — 8 MiB sent, decoded, written and fsynced by the follower — on a loaded small
///   machine: 400 ms.
/// - **Elections** in about two seconds: a follower that hears nothing for 1.2–2.4 s stands;
///   three missed heartbeats at least (openraft ticks every 13/64 of a heartbeat interval).
/// - **Entries per append**: up to 64 small ones (group commit makes them big already).
/// - **Replication starts at submission**, openraft 0.10's default: once the core has run the
///   leader's `append` (which returns before the fsync), it tells the replication streams the
///   entry is submitted, and they read and send it while the fsync runs (the entry counts for
///   the leader only once fsynced). `broadcast_submitted_on_append`, which tells them right
///   after `append` instead of at the end of the core's loop turn, measured no different for
///   our workload (write-path.md), so it stays at openraft's default.
/// - **No leadership restored at start-up** (`enable_leader_restore`, on by default in 0.10): a
///   node that was leader when it stopped starts as a follower and leads again only by winning
///   an election in a later term. Restored, it would serve linearizable reads at the commit
///   index it restarted with, and ours lags what it had acknowledged: `raft/committed.json` is
///   a hint written behind (every 200 ms) and the state machine is rebuilt from `chain/`, also
///   written behind. openraft's own documentation names exactly these two conditions as the
///   ones under which a restored leader serves a stale state. The robustness harness found such
///   reads; `tests/robustness.rs` reproduces them. The cost: after a leader's restart, an
///   election (1.2–2.4 s) before writes go on, as after any leader's loss (a single node elects
///   itself at once: its first write came 0.15–0.2 s after a restart, 0.03–0.04 s before).
/// - **Snapshots** every `snapshot_every` entries so the log stays short; each snapshot
///   transfer gets its own, longer deadline (`network::SNAPSHOT_TIMEOUT`).
pub fn raft_config(snapshot_every: u64) -> openraft::Config {
    openraft::Config {
        cluster_name: "lightchain".into(),
        heartbeat_interval: 400,
        election_timeout_min: 1200,
        election_timeout_max: 2400,
        install_snapshot_timeout: 10_000,
        max_payload_entries: 64,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_every),
        // Keep a fifth of a snapshot interval: a follower that fell a little behind catches up
        // from the log; one further behind gets a snapshot (which carries the chain).
        max_in_snapshot_log_to_keep: snapshot_every / 5,
        purge_batch_size: 1,
        enable_leader_restore: Some(false),
        ..Default::default()
    }
}

/// A storage error for openraft (0.10's storage traits return `std::io::Error`): what failed,
/// and why. An I/O error keeps its kind.
pub(crate) fn storage_error(
    what: impl std::fmt::Display,
    err: impl std::error::Error + 'static,
) -> std::io::Error {
    let kind = (&err as &dyn std::error::Error)
        .downcast_ref::<std::io::Error>()
        .map_or(std::io::ErrorKind::Other, |e| e.kind());
    std::io::Error::new(kind, format!("{what}: {err}"))
}
