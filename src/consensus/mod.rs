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
pub mod state_machine;

use serde::{Deserialize, Serialize};

use crate::chain::{Batch, Height, Outcome};

/// Bytes of entries one AppendEntries carries, at most (a single larger entry still goes
/// alone). Bounds the time an append takes, the follower's fsync included, well below the
/// AppendEntries deadline openraft gives (the heartbeat interval, see [`raft_config`]).
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
    /// The openraft type configuration of lightchain.
    pub TypeConfig:
        D = Batch,
        R = BatchResult,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = state_machine::SnapshotData,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Short names for openraft types instantiated with [`TypeConfig`].
pub mod typ {
    use super::TypeConfig;

    /// The Raft handle.
    pub type Raft = openraft::Raft<TypeConfig>;
    /// A log id.
    pub type LogId = openraft::LogId<u64>;
    /// A vote.
    pub type Vote = openraft::Vote<u64>;
    /// A log entry.
    pub type Entry = openraft::Entry<TypeConfig>;
    /// A storage error.
    pub type StorageError = openraft::StorageError<u64>;
    /// Membership as applied.
    pub type StoredMembership = openraft::StoredMembership<u64, openraft::BasicNode>;
    /// Snapshot metadata.
    pub type SnapshotMeta = openraft::SnapshotMeta<u64, openraft::BasicNode>;
    /// A snapshot.
    pub type Snapshot = openraft::Snapshot<TypeConfig>;
    /// Metrics.
    pub type RaftMetrics = openraft::RaftMetrics<u64, openraft::BasicNode>;
}

/// The Raft configuration, chosen for lightchain's workload rather than left at defaults.
///
/// - **AppendEntries deadline.** openraft 0.9 wraps every `RaftNetwork::append_entries` call in
///   a timeout of `heartbeat_interval` (`replication/mod.rs`), so the network layer cannot give
///   a large append a longer deadline than a heartbeat's. Instead each append is bounded in
///   bytes ([`MAX_APPEND_BYTES`], enforced by the log reader and by `PayloadTooLarge` in the
///   network) and the heartbeat interval is long enough for the largest one — 8 MiB sent,
///   decoded, written and fsynced by the follower — on a loaded small machine: 400 ms.
/// - **Elections** in about two seconds: a follower that hears nothing for 1.2–2.4 s (checked
///   every 1.5 heartbeats, openraft's tick) stands; three missed heartbeats at least.
/// - **Entries per append**: up to 64 small ones (group commit makes them big already).
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
        ..Default::default()
    }
}

/// Builds a storage error for openraft from one of ours.
pub(crate) fn storage_error(
    subject: openraft::ErrorSubject<u64>,
    verb: openraft::ErrorVerb,
    err: impl std::error::Error + 'static,
) -> typ::StorageError {
    openraft::StorageIOError::new(subject, verb, openraft::AnyError::new(&err)).into()
}
