//! The Node API: what the filesystem asks of the replicated chain.
//!
//! - [`Node::propose`]: submit one transaction; resolves once its block is committed by a
//!   majority *and* applied on this node (so the caller reads its own write), or fails with
//!   an [`Error`] after at most the commit timeout.
//! - [`Node::read_barrier`]: for linearizable reads, wait until this node has applied
//!   everything committed before the call began.
//! - [`Node::replica`]: the applied tree of states and the chain head, for reads.
//! - [`Node::status`]: the node's view of itself and the cluster.
//!
//! Group commit lives here ([`batcher`]): proposals queue while earlier entries are in
//! flight and go into the next log entry together, stamped with the leader's clock. Many
//! proposals can wait at once; none of them holds a thread while it waits.
//!
//! This layer knows nothing of FUSE or errno; `fs` maps its errors.
//!
//! See `docs/architecture/node.md`.

mod batcher;
mod status;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLockReadGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::BasicNode;
use tokio::sync::{mpsc, oneshot, watch};

pub use status::{MemberStatus, Status};

use crate::chain::{Height, Members, Outcome, Reject, RequestId, Transaction, TxOp};
use crate::consensus::log_store::LogStore;
use crate::consensus::network::Network;
use crate::consensus::state_machine::{Replica, Shared, StateMachineStore};
use crate::consensus::typ::Raft;
use crate::store::identity::{node_id_for, Identity};
use crate::store::DataDir;

/// How reads are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReadConsistency {
    /// An open sees every write whose close returned before the open began, on any node.
    Linearizable,
    /// Serve the local replica as it is (may lag the cluster).
    Local,
}

/// How a node is started.
#[derive(Clone, Debug)]
pub struct Config {
    /// A human name for logs and status.
    pub name: String,
    /// The address the gRPC server is bound to.
    pub listen: SocketAddr,
    /// The address peers reach this node at.
    pub advertise: String,
    /// How long a commit or a linearizable read may wait before failing.
    pub commit_timeout: Duration,
    /// How reads are served.
    pub read_consistency: ReadConsistency,
}

/// Why a proposal or a read failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No commit (or no read index) within the commit timeout: no quorum or no leader. For a
    /// proposal the outcome is unknown — it may still commit later, exactly once.
    #[error("not committed within {0:?} (no quorum or no leader); the outcome is unknown")]
    Timeout(Duration),
    /// The transaction's precondition failed when its block was applied; nothing changed.
    #[error("rejected at apply: {0}")]
    Rejected(Reject),
    /// The node is stopping; the outcome of a pending proposal is unknown.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// Consensus stopped after a storage failure; the node must be restarted.
    #[error("consensus stopped: {0}")]
    Fatal(String),
}

/// Result of a committed proposal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// The block that holds the transaction.
    pub height: Height,
}

/// Start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory cannot be used.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    /// openraft refused to start.
    #[error("consensus failed to start: {0}")]
    Consensus(String),
}

/// A running node.
pub struct Node {
    raft: Raft,
    shared: Arc<Shared>,
    config: Config,
    identity: Identity,
    next_seq: AtomicU64,
    proposals: mpsc::UnboundedSender<batcher::Proposal>,
    shutdown: watch::Sender<bool>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Node {
    /// Opens the data directory and starts consensus. A new directory starts a new
    /// single-node cluster whose genesis block names this node.
    pub async fn start(data: &DataDir, config: Config) -> Result<Arc<Node>, StartError> {
        let identity = match Identity::load(data)? {
            Some(identity) => identity,
            None => {
                let identity = Identity::generate(node_id_for(&config.advertise));
                identity.save(data)?;
                tracing::info!(node_id = identity.node_id, data = %data.root.display(), "created a new data directory");
                identity
            }
        };
        let log_store = LogStore::open(&data.raft())?;
        let state_machine = StateMachineStore::open(data, identity.clone())?;
        let shared = state_machine.shared();
        let raft_config = Arc::new(
            crate::consensus::raft_config()
                .validate()
                .map_err(|e| StartError::Consensus(e.to_string()))?,
        );
        let raft = Raft::new(
            identity.node_id,
            raft_config,
            Network,
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| StartError::Consensus(e.to_string()))?;
        let fresh = !raft
            .is_initialized()
            .await
            .map_err(|e| StartError::Consensus(e.to_string()))?;
        if fresh {
            let members = Members {
                configs: vec![[identity.node_id].into()],
                nodes: [(identity.node_id, config.advertise.clone())].into(),
            };
            tracing::info!(?members, "initializing a new cluster");
            let nodes: std::collections::BTreeMap<u64, BasicNode> = members
                .nodes
                .iter()
                .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
                .collect();
            raft.initialize(nodes)
                .await
                .map_err(|e| StartError::Consensus(e.to_string()))?;
        }
        let (proposals, queue) = mpsc::unbounded_channel();
        let (shutdown, _) = watch::channel(false);
        // Sequence numbers start from the clock so they keep growing across restarts of the
        // same data directory (its incarnation stays the same).
        let next_seq = AtomicU64::new(now_ms() * 1000);
        let node = Arc::new(Node {
            raft: raft.clone(),
            shared,
            config,
            identity,
            next_seq,
            proposals,
            shutdown,
        });
        tokio::spawn(batcher::run(raft, queue, node.shutdown.subscribe()));
        Ok(node)
    }

    /// This node's consensus id.
    pub fn id(&self) -> u64 {
        self.identity.node_id
    }

    /// The start-up configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Proposes one transaction and waits until it is committed and applied here.
    pub async fn propose(&self, op: TxOp) -> Result<Committed, Error> {
        let request = RequestId {
            node: self.identity.node_id,
            incarnation: self.identity.incarnation,
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
        };
        let (reply, result) = oneshot::channel();
        let mut shutdown = self.shutdown.subscribe();
        if *shutdown.borrow() {
            return Err(Error::ShuttingDown);
        }
        self.proposals
            .send(batcher::Proposal {
                tx: Transaction { request, op },
                reply,
            })
            .map_err(|_| Error::ShuttingDown)?;
        let timeout = self.config.commit_timeout;
        let applied = tokio::select! {
            r = tokio::time::timeout(timeout, result) => match r {
                Err(_) => return Err(Error::Timeout(timeout)),
                Ok(Err(_)) => return Err(Error::ShuttingDown),
                Ok(Ok(r)) => r?,
            },
            _ = shutdown.wait_for(|stop| *stop) => return Err(Error::ShuttingDown),
        };
        match applied.outcome {
            Outcome::Ok | Outcome::Duplicate => Ok(Committed {
                height: applied.height,
            }),
            Outcome::Rejected(reject) => Err(Error::Rejected(reject)),
        }
    }

    /// Waits until this node has applied everything committed before the call (a no-op in
    /// local read mode).
    pub async fn read_barrier(&self) -> Result<(), Error> {
        if self.config.read_consistency == ReadConsistency::Local {
            return Ok(());
        }
        let timeout = self.config.commit_timeout;
        match tokio::time::timeout(timeout, self.raft.ensure_linearizable()).await {
            Err(_) => Err(Error::Timeout(timeout)),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(openraft::error::RaftError::Fatal(e))) => Err(Error::Fatal(e.to_string())),
            // Not the leader (an election is under way): the caller may retry.
            Ok(Err(openraft::error::RaftError::APIError(_))) => Err(Error::Timeout(timeout)),
        }
    }

    /// The applied replica. Hold the guard only for in-memory work.
    pub fn replica(&self) -> RwLockReadGuard<'_, Replica> {
        self.shared.replica.read().unwrap()
    }

    /// Whether the node serves and knows a leader.
    pub fn is_ready(&self) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        metrics.running_state.is_ok() && metrics.current_leader.is_some()
    }

    /// Waits until [`is_ready`](Self::is_ready), or the timeout.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut metrics = self.raft.metrics();
        let ready = async move {
            metrics
                .wait_for(|m| m.running_state.is_ok() && m.current_leader.is_some())
                .await
                .is_ok()
        };
        tokio::time::timeout(timeout, ready).await.unwrap_or(false)
    }

    /// The node's view of itself and the cluster.
    pub fn status(&self) -> Status {
        status::build(self)
    }

    /// The status document as JSON.
    pub fn status_json(&self) -> String {
        serde_json::to_string(&self.status()).expect("status serializes")
    }

    /// Fails every pending and future proposal with [`Error::ShuttingDown`] and stops
    /// consensus.
    pub async fn shutdown(&self) {
        self.shutdown.send_replace(true);
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "consensus did not stop cleanly");
        }
    }
}

impl crate::rpc::admin::AdminHandler for Node {
    fn status_json(&self) -> String {
        Node::status_json(self)
    }
}
