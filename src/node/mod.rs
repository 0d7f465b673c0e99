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
mod bootstrap;
pub mod cluster_service;
mod discovery;
pub mod divergence;
mod guard;
mod health;
mod members;
pub mod membership;
#[cfg(test)]
mod power_loss;
mod read_index;
mod readiness;
mod services;
mod status;
pub mod token;

use openraft::async_runtime::WatchReceiver as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, RwLockReadGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::BasicNode;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

pub use batcher::Applied;
pub use readiness::NotReady;
pub use status::{MemberStatus, Status};

use crate::chain::dedup::{new_incarnation, Issuer};
use crate::chain::{
    Change, Height, Limits, NodeId, Outcome, Reject, Transaction, TxOp, DEFAULT_MAX_STATE_SIZE,
};
use crate::consensus::log_store::LogStore;
use crate::consensus::network::Network;
use crate::consensus::state_machine::{Replica, Shared, StateMachineStore};
use crate::consensus::typ::Raft;
use crate::rpc::peer::Channels;
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
    /// The other members' addresses (static bootstrap); this node's own may be included.
    pub peers: Vec<String>,
    /// Take a snapshot (and let the log be purged) every this many log entries.
    pub snapshot_every: u64,
    /// `--cluster-token-file`: the cluster's token, shared by every member. Without it the data
    /// directory's token is used; a new single node on loopback makes its own.
    pub token_file: Option<std::path::PathBuf>,
    /// `--peer-tls-*`: mutual TLS for the server and every channel to peers; plaintext without.
    pub peer_tls: Option<crate::rpc::tls::PeerTls>,
    /// `--join`: members to ask for admission when the data directory is new (ignored once it
    /// holds data). Empty: static bootstrap from `peers`.
    pub join: Vec<String>,
    /// `--voters`: the leader promotes caught-up learners while there are fewer voters.
    pub voters: usize,
    /// `--replace-after`: a voter unheard of for this long is replaced by a caught-up learner
    /// (`None`: never).
    pub replace_after: Option<Duration>,
    /// `--bootstrap-expect`: a new data directory founds the cluster with this many new nodes
    /// found through `discover_dns` and `peers`, or joins the cluster they are in
    /// (`discovery`). `None`: static bootstrap from `peers`, or `--join`.
    pub bootstrap_expect: Option<usize>,
    /// `--discover-dns NAME:PORT`: the name whose addresses are the contacts of discovery,
    /// resolved again every round.
    pub discover_dns: Option<String>,
}

impl Config {
    /// A lone node on `listen` with the defaults, for the crate's own tests (`node`, `fs`).
    #[cfg(test)]
    pub(crate) fn single_node_for_tests(listen: SocketAddr) -> Config {
        Config {
            name: "test".into(),
            listen,
            advertise: listen.to_string(),
            commit_timeout: Duration::from_secs(10),
            read_consistency: ReadConsistency::Linearizable,
            peers: Vec::new(),
            snapshot_every: 5000,
            token_file: None,
            peer_tls: None,
            join: Vec::new(),
            voters: 3,
            replace_after: None,
            bootstrap_expect: None,
            discover_dns: None,
        }
    }
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
    /// This node knows no leader, so it refuses before proposing; nothing changed.
    #[error("no quorum: this node knows no leader")]
    NoQuorum,
    /// This node is not the leader (a peer asked it to do a leader's job).
    #[error("not the leader")]
    NotLeader,
    /// The request's id was refused as expired (`chain::dedup`): whether an earlier copy
    /// applied can no longer be told. Never reported as a success.
    #[error("the outcome is unknown: the request id expired before this copy was applied")]
    OutcomeUnknown,
    /// Consensus stopped after a storage failure; the node must be restarted.
    #[error("consensus stopped: {0}")]
    Fatal(String),
    /// This node was removed from the cluster's membership: it serves no writes.
    #[error("this node is no longer a member of the cluster: {0}")]
    Removed(String),
    /// This node's chain differs from the cluster's at a common height, so it serves nothing
    /// (DESIGN §1.5) until an operator replaces its data directory.
    #[error("this node's chain diverged at height {height} (its hash {hash}, the cluster's {expected}); it does not serve")]
    Diverged {
        /// The common height compared.
        height: Height,
        /// This node's hash there.
        hash: String,
        /// The cluster's hash there.
        expected: String,
    },
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
    /// Starting would be unsafe (see the message).
    #[error("{0}")]
    Refused(String),
}

/// A running node.
pub struct Node {
    raft: Raft,
    shared: Arc<Shared>,
    config: Config,
    identity: Identity,
    guard: Arc<guard::NodeGuard>,
    channels: Channels,
    /// Request ids of this process (a new incarnation per start) and their `acked_below`.
    requests: Arc<Mutex<Issuer>>,
    proposals: mpsc::UnboundedSender<batcher::Proposal>,
    reads: Arc<read_index::ReadIndexQueue>,
    views: members::Views,
    /// When this node started (its member poll knows nothing of the others before a few rounds).
    started: std::time::Instant,
    /// Set once this node finds its chain diverged from the cluster's: it then stops serving.
    diverged: Arc<OnceLock<divergence::Divergence>>,
    /// Set once this node finds it was removed from the membership (why, for logs and status).
    removed: Arc<OnceLock<String>>,
    /// Since when this node has known no leader.
    leaderless_since: Arc<Mutex<Option<std::time::Instant>>>,
    /// Whether this node has caught up with the cluster (part of being ready).
    catch_up: readiness::CatchUp,
    shutdown: watch::Sender<bool>,
    /// The data directory's lock, released when consensus has stopped.
    lock: Mutex<Option<crate::store::DirLock>>,
}

/// A leader whose last majority acknowledgement is older than this knows it has no quorum
/// (five heartbeats of `consensus::raft_config`: a slow 8 MiB append is no lost quorum).
const QUORUM_STALE: Duration = Duration::from_millis(2000);
/// A node that has known no leader for this long (longer than an election takes: the
/// longest election timeout, 2.4 s, plus a tick) knows there is no quorum.
const LEADERLESS: Duration = Duration::from_millis(3500);

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn consensus_err(e: impl std::fmt::Display) -> StartError {
    StartError::Consensus(e.to_string())
}

impl Node {
    /// Opens the data directory, serves gRPC on `listener`, and starts consensus. A new
    /// directory with no peers starts a single-node cluster; with peers, it bootstraps or
    /// joins as `bootstrap` decides. The server stops at [`shutdown`](Self::shutdown).
    pub async fn start(
        data: &DataDir,
        config: Config,
        listener: tokio::net::TcpListener,
    ) -> Result<Arc<Node>, StartError> {
        // One process per data directory: a second one would corrupt the log and the chain.
        let lock = data.lock()?;
        let discovery = config.bootstrap_expect.is_some();
        let members = bootstrap::configured_members(&config);
        let token = bootstrap::resolve_token(data, config.token_file.as_deref(), &members, &config)?;
        let existing = Identity::load(data)?;
        let fresh = existing.is_none();
        let advertised = bootstrap::normalize(&config.advertise);
        let identity = existing.unwrap_or_else(|| {
            if config.join.is_empty() && !discovery {
                Identity::generate(node_id_for(&advertised))
            } else {
                Identity::generate_joiner(&advertised)
            }
        });
        let shared_identity = Arc::new(Mutex::new(identity.clone()));
        let tokens = crate::store::identity::Tokens::load(data, token)?;
        let guard = Arc::new(
            guard::NodeGuard::new(shared_identity.clone(), data, tokens.clone(), members.clone())?
                .bind_certificates(config.peer_tls.is_some()),
        );
        let (shutdown, _) = watch::channel(false);
        let cell = services::NodeCell::new(guard.clone(), advertised.clone());
        let mut stop = shutdown.subscribe();
        let (health_reporter, health_service) = health::service().await;
        let server = crate::rpc::serve(
            listener,
            Arc::new(cell.clone()),
            tokens,
            cluster_service::peer_routes(&cell, data.tmp()).add_service(health_service),
            config.peer_tls.clone(),
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        );
        tokio::spawn(async move {
            if let Err(e) = server.await {
                tracing::error!(error = %e, "the gRPC server failed");
            }
        });
        let started =
            Self::start_consensus(data, config, identity, fresh, shared_identity, guard, &cell, &shutdown)
                .await;
        if started.is_err() {
            shutdown.send_replace(true);
        }
        let node = started?;
        tokio::spawn(readiness::track(Arc::downgrade(&node), shutdown.subscribe()));
        tokio::spawn(health::follow(Arc::downgrade(&node), health_reporter, shutdown.subscribe()));
        *node.lock.lock().unwrap() = Some(lock);
        let _ = cell.node.set(node.clone());
        Ok(node)
    }

    #[allow(clippy::too_many_arguments)]
    async fn start_consensus(
        data: &DataDir,
        config: Config,
        identity: Identity,
        fresh: bool,
        shared_identity: Arc<Mutex<Identity>>,
        guard: Arc<guard::NodeGuard>,
        cell: &services::NodeCell,
        shutdown: &watch::Sender<bool>,
    ) -> Result<Arc<Node>, StartError> {
        let mut members = bootstrap::configured_members(&config);
        let peers: Vec<String> =
            members.iter().filter(|(id, _)| **id != identity.node_id).map(|(_, a)| a.clone()).collect();
        let channels = Channels::new(config.peer_tls.clone());
        // A directory with no cluster id and no consensus state yet may have crashed between
        // writing its identity and initializing: it decides again (bootstrap).
        let undecided = identity.cluster_id.is_none() && !bootstrap::has_consensus_state(data)?;
        let joining = !config.join.is_empty() && (fresh || undecided);
        if !config.join.is_empty() && !joining {
            tracing::info!("this data directory holds a member's data: --join is ignored");
        }
        // Where to ask for admission, when this node joins a running cluster.
        let mut join_via = joining.then(|| config.join.clone());
        let decision = if let Some(expect) = config.bootstrap_expect.filter(|_| fresh || undecided) {
            if fresh {
                identity.save(data)?;
                tracing::info!(node_id = identity.node_id, data = %data.root.display(), "created a new data directory; discovering the cluster");
            }
            guard.open_for_join();
            let contacts =
                discovery::Contacts { dns: config.discover_dns.clone(), fixed: config.peers.clone() };
            let outcome = discovery::run(
                &channels,
                guard.as_ref(),
                identity.node_id,
                &bootstrap::normalize(&config.advertise),
                expect,
                &contacts,
                &cell.bootstrap,
            )
            .await;
            match outcome {
                discovery::Outcome::Initialize(first) => {
                    members = first;
                    Some(bootstrap::Decision::Initialize)
                }
                discovery::Outcome::Join(contacts) => {
                    // A joiner is not a founder: others must not count it.
                    cell.bootstrap.lock().unwrap().take();
                    join_via = Some(contacts);
                    None
                }
            }
        } else if joining {
            if fresh {
                identity.save(data)?;
                tracing::info!(node_id = identity.node_id, data = %data.root.display(), "created a new data directory to join a cluster");
            }
            guard.open_for_join();
            None
        } else if undecided
            && identity.node_id
                == crate::store::identity::node_id_for_joiner(
                    &bootstrap::normalize(&config.advertise),
                    identity.incarnation,
                )
        {
            // Made to join, and not replicated to yet: deciding alone would found a second cluster.
            return Err(StartError::Refused(
                "this data directory was made to join a cluster and has not received its chain yet:                  start it again with --join HOST:PORT (or wipe it)"
                    .into(),
            ));
        } else if fresh || undecided {
            let d = bootstrap::decide_fresh(&channels, guard.as_ref(), identity.node_id, &members).await;
            let d = d.map_err(StartError::Refused)?;
            if fresh {
                identity.save(data)?;
                tracing::info!(node_id = identity.node_id, data = %data.root.display(), "created a new data directory");
            }
            Some(d)
        } else {
            bootstrap::check_existing(&channels, guard.as_ref(), &peers)
                .await
                .map_err(StartError::Refused)?;
            None
        };

        let log_store = LogStore::open(&data.raft())?;
        let state_machine = StateMachineStore::open(data, shared_identity)?;
        let shared = state_machine.shared();
        let raft_config =
            crate::consensus::raft_config(config.snapshot_every).validate().map_err(consensus_err)?;
        let network = Network::new(channels.clone(), guard.clone(), data.chain());
        let raft = Raft::new(identity.node_id, Arc::new(raft_config), network, log_store, state_machine)
            .await
            .map_err(consensus_err)?;
        guard.watch_membership(raft.metrics());
        let _ = cell.raft.set(raft.clone());
        if let Some(join_via) = &join_via {
            let me = crate::rpc::pb::JoinRequest {
                addr: bootstrap::normalize(&config.advertise),
                node_id: identity.node_id,
                incarnation: identity.incarnation,
            };
            tracing::info!(join = ?join_via, node_id = identity.node_id, "asking to join the cluster");
            let reply = membership::join(&channels, guard.as_ref(), join_via, me)
                .await
                .map_err(|e| StartError::Refused(e.to_string()))?;
            tracing::info!(leader = reply.leader, replaced = ?reply.replaced, "joined the cluster as a learner; catching up");
        }
        if decision == Some(bootstrap::Decision::Initialize)
            && !raft.is_initialized().await.map_err(consensus_err)?
        {
            tracing::info!(?members, "initializing a new cluster");
            let nodes: std::collections::BTreeMap<u64, BasicNode> =
                members.iter().map(|(id, addr)| (*id, BasicNode { addr: addr.clone() })).collect();
            match raft.initialize(nodes).await {
                Ok(()) => {}
                // A peer's election reached this node first: the cluster is forming already.
                Err(openraft::error::RaftError::APIError(openraft::error::InitializeError::NotAllowed(
                    e,
                ))) => {
                    tracing::info!(reason = %e, "a peer is already forming the cluster")
                }
                Err(e) => return Err(consensus_err(e)),
            }
        }

        let views = members::Views::default();
        guard.watch_views(views.clone());
        let (proposals, queue) = mpsc::unbounded_channel();
        // Request ids of this process: a new incarnation for every start, seqs from 1, so
        // they never repeat or go backwards, whatever the clock does (`chain::dedup`).
        let requests = Arc::new(Mutex::new(Issuer::new(identity.node_id, new_incarnation())));
        let node = Arc::new(Node {
            raft: raft.clone(),
            shared: shared.clone(),
            config,
            identity,
            guard: guard.clone(),
            channels: channels.clone(),
            requests,
            proposals,
            reads: Arc::default(),
            views,
            started: std::time::Instant::now(),
            diverged: Arc::default(),
            removed: Arc::default(),
            leaderless_since: Arc::default(),
            catch_up: Default::default(),
            shutdown: shutdown.clone(),
            lock: Mutex::new(None),
        });
        let ctx = batcher::Context {
            raft: raft.clone(),
            self_id: node.id(),
            channels: channels.clone(),
            guard,
            applied: shared.applied_index.subscribe(),
            commit_timeout: node.config.commit_timeout,
        };
        tokio::spawn(batcher::run(ctx, queue, shutdown.subscribe()));
        tokio::spawn(track_leaderless(raft.metrics(), node.leaderless_since.clone(), shutdown.subscribe()));
        let poller = members::Poller {
            channels,
            guard: node.guard.clone(),
            views: node.views.clone(),
            self_id: node.id(),
            metrics: raft.metrics(),
            raft: raft.clone(),
            shared: shared.clone(),
            diverged: node.diverged.clone(),
            removed: node.removed.clone(),
        };
        tokio::spawn(members::poll(poller, shutdown.subscribe()));
        let promoter = membership::Promoter {
            raft: raft.clone(),
            self_id: node.id(),
            target: node.config.voters,
            grace: node.config.replace_after,
            views: node.views.clone(),
        };
        tokio::spawn(membership::promote_learners(promoter, shutdown.subscribe()));
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

    /// Whether this node may serve its replica: not once its chain diverged from the
    /// cluster's ([`Error::Diverged`]).
    pub fn serving(&self) -> Result<(), Error> {
        match self.diverged.get() {
            None => Ok(()),
            Some(d) => {
                Err(Error::Diverged { height: d.height, hash: d.hash.clone(), expected: d.expected.clone() })
            }
        }
    }

    /// Why this node is no longer a member, once it found out.
    pub fn removed(&self) -> Option<&str> {
        self.removed.get().map(String::as_str)
    }

    /// This node's own divergence, once found.
    pub fn divergence(&self) -> Option<&divergence::Divergence> {
        self.diverged.get()
    }

    /// Proposes one transaction and waits until it is committed and applied here.
    pub async fn propose(&self, op: TxOp) -> Result<Committed, Error> {
        self.serving()?;
        if let Some(why) = self.removed.get() {
            return Err(Error::Removed(why.clone()));
        }
        // Checked before an id is issued: nothing that could never fit enters the log.
        crate::chain::admit(&op, self.replica().tree.limits()).map_err(Error::Rejected)?;
        let issued = self.requests.lock().unwrap().issue();
        // However this call ends (an answer, a timeout, or the caller dropping it), the id is
        // answered from then on: later transactions may tell the state machine to forget it.
        let _settle = Settle { requests: &self.requests, seq: issued.request.seq };
        let tx = Transaction { request: issued.request, acked_below: issued.acked_below, op };
        let applied = self.submit(tx).await?;
        match applied.outcome {
            Outcome::Ok => Ok(Committed { height: applied.height }),
            Outcome::Rejected(reject) => Err(Error::Rejected(reject)),
            // The state machine answers a duplicate with its first outcome; one that still
            // reads `duplicate` (or an expired id) has no outcome that can be told.
            Outcome::Duplicate | Outcome::Expired => Err(Error::OutcomeUnknown),
        }
    }

    /// Makes sure the chain holds the cluster's limits (`chain::Limits`), and answers them. A
    /// chain without any (a new cluster, or one made before limits were recorded) gets
    /// `wanted` (`--max-state-size`, else [`DEFAULT_MAX_STATE_SIZE`]) as an `initial` proposal:
    /// when several members propose at once, the first applied wins and the others are
    /// rejected as `already_exists`. A `wanted` that differs from the chain's is only logged:
    /// the limits are the cluster's, changed by `lightchain limits`.
    pub async fn adopt_limits(self: &Arc<Self>, wanted: Option<u64>) -> Result<Limits, Error> {
        self.catch_up().await?;
        if !self.replica().tree.limits_set() {
            let max_state_size = wanted.unwrap_or(DEFAULT_MAX_STATE_SIZE);
            match self.propose(TxOp::Limits { max_state_size, initial: true }).await {
                Ok(_) => tracing::info!(max_state_size, "the cluster's limits are recorded in the chain"),
                Err(Error::Rejected(Reject::AlreadyExists)) => {}
                Err(e) => return Err(e),
            }
        }
        let limits = self.replica().tree.limits();
        if let Some(wanted) = wanted.filter(|w| *w != limits.max_state_size) {
            tracing::warn!(
                wanted,
                cluster = limits.max_state_size,
                "--max-state-size differs from the cluster's, which applies (change it with `lightchain limits --max-state-size`)"
            );
        }
        Ok(limits)
    }

    /// Queues one transaction for the next group commit and waits for its outcome.
    async fn submit(&self, tx: Transaction) -> Result<Applied, Error> {
        let (reply, result) = oneshot::channel();
        let mut shutdown = self.shutdown.subscribe();
        if *shutdown.borrow() {
            return Err(Error::ShuttingDown);
        }
        if self.knows_no_quorum() {
            // Refuse before proposing, so nothing can change later.
            return Err(Error::NoQuorum);
        }
        self.proposals.send(batcher::Proposal { tx, reply }).map_err(|_| Error::ShuttingDown)?;
        let timeout = self.config.commit_timeout;
        tokio::select! {
            r = tokio::time::timeout(timeout, result) => match r {
                Err(_) => Err(Error::Timeout(timeout)),
                Ok(Err(_)) => Err(Error::ShuttingDown),
                Ok(Ok(r)) => r,
            },
            _ = shutdown.wait_for(|stop| *stop) => Err(Error::ShuttingDown),
        }
    }

    /// Proposes transactions forwarded by a follower (their request ids kept); the leader only.
    pub async fn propose_forwarded(&self, txs: Vec<Transaction>) -> Result<Vec<Applied>, Error> {
        // A diverged leader answers for nobody (it has stepped down or is about to).
        self.serving()?;
        if !self.is_leader() {
            return Err(Error::NotLeader);
        }
        let limits = self.replica().tree.limits();
        let waits = txs.into_iter().map(|tx| async move {
            match crate::chain::admit(&tx.op, limits) {
                // Refused before proposing, as the sender would have (its limits may lag).
                Err(reject) => {
                    tracing::warn!(origin = tx.request.node, kind = tx.op.kind(), %reject, "refusing a forwarded transaction");
                    Ok(Applied { height: 0, index: 0, outcome: Outcome::Rejected(reject) })
                }
                Ok(()) => self.submit(tx).await,
            }
        });
        futures_util::future::try_join_all(waits).await
    }

    fn is_leader(&self) -> bool {
        self.raft.metrics().borrow_watched().current_leader == Some(self.id())
    }

    /// Whether this node knows it cannot commit now (it knows no leader).
    ///
    /// A leader knows it when no majority acknowledged it for [`QUORUM_STALE`] (a sole voter is
    /// its own majority); any other node when it has known no leader for [`LEADERLESS`] (longer
    /// than an election takes). During an ordinary election it does not know, and a commit
    /// waits for the new leader.
    pub fn knows_no_quorum(&self) -> bool {
        // Copy out of the metrics first: a borrow of openraft's watch is a read lock, and holding
        // it while taking another lock (or borrowing it again) can deadlock against the raft
        // core waiting to publish new metrics.
        let (leader, since_ack, sole_voter) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow_watched();
            let mut voters = m.membership_config.membership().voter_ids();
            let sole_voter = voters.next() == Some(self.id()) && voters.next().is_none();
            // openraft 0.10 reports no quorum acknowledgement for a leader that is its own
            // quorum (0.9's `millis_since_quorum_ack` said 0).
            (m.current_leader, m.last_quorum_acked.as_deref().map(openraft::Instant::elapsed), sole_voter)
        };
        match leader {
            Some(leader) if leader == self.id() => {
                !sole_voter && since_ack.is_none_or(|age| age > QUORUM_STALE)
            }
            Some(_) => false,
            None => self.leaderless_since.lock().unwrap().is_some_and(|t| t.elapsed() > LEADERLESS),
        }
    }

    /// The read index on the leader: the log index a linearizable read must wait for.
    pub async fn leader_read_index(&self) -> Result<u64, Error> {
        let timeout = self.config.commit_timeout;
        // ReadIndex: a quorum acknowledges a heartbeat sent after the request (no lease).
        let read = self.raft.get_read_log_id(openraft::ReadPolicy::ReadIndex);
        match tokio::time::timeout(timeout, read).await {
            Err(_) => Err(Error::Timeout(timeout)),
            Ok(Ok((read, _applied))) => Ok(read.log_id().index),
            Ok(Err(openraft::error::RaftError::Fatal(e))) => Err(Error::Fatal(e.to_string())),
            Ok(Err(openraft::error::RaftError::APIError(_))) => Err(Error::NotLeader),
        }
    }

    /// Asks for a read index: the leader's own, or a follower's from the leader.
    async fn fetch_read_index(self: &Arc<Self>) -> Result<u64, Error> {
        let deadline = tokio::time::Instant::now() + self.config.commit_timeout;
        loop {
            let leader = {
                let metrics = self.raft.metrics();
                let m = metrics.borrow_watched();
                m.current_leader
                    .and_then(|l| m.membership_config.membership().get_node(&l).map(|n| (l, n.addr.clone())))
            };
            let attempt = match leader {
                Some((l, _)) if l == self.id() => self.leader_read_index().await,
                Some((l, addr)) => self.remote_read_index(l, &addr).await,
                None => Err(Error::NotLeader),
            };
            match attempt {
                Ok(index) => return Ok(index),
                Err(Error::Fatal(e)) => return Err(Error::Fatal(e)),
                Err(_) if *self.shutdown.borrow() => return Err(Error::ShuttingDown),
                Err(_) if tokio::time::Instant::now() >= deadline => {
                    return Err(Error::Timeout(self.config.commit_timeout))
                }
                Err(_) => tokio::time::sleep(read_index::RETRY).await,
            }
        }
    }

    async fn remote_read_index(&self, leader: u64, addr: &str) -> Result<u64, Error> {
        use crate::rpc::pb::cluster_client::ClusterClient;
        let channel = self.channels.get(addr).map_err(|_| Error::NotLeader)?;
        let request = crate::rpc::peer::request_to(
            crate::rpc::pb::ReadIndexRequest {},
            self.guard.as_ref(),
            self.config.commit_timeout,
            leader,
        );
        let response = ClusterClient::new(channel).read_index(request).await.map_err(|_| Error::NotLeader)?;
        crate::rpc::peer::admit_response(&response, self.guard.as_ref()).map_err(|_| Error::NotLeader)?;
        Ok(response.into_inner().index)
    }

    /// Waits until this node has applied everything committed before the call (a no-op in
    /// local read mode). Concurrent callers share read indexes (see [`read_index`]).
    pub async fn read_barrier(self: &Arc<Self>) -> Result<(), Error> {
        self.serving()?;
        if self.config.read_consistency == ReadConsistency::Local {
            return Ok(());
        }
        self.catch_up().await
    }

    /// Waits until this node has applied everything committed before the call, in either read
    /// mode: what an open for writing needs, so that it binds the state its path names now
    /// (DESIGN §1.3). Concurrent callers share read indexes with [`read_barrier`](Self::read_barrier).
    pub async fn catch_up(self: &Arc<Self>) -> Result<(), Error> {
        self.serving()?;
        let timeout = self.config.commit_timeout;
        // One deadline for the whole barrier (read index, then catching up), and shutdown ends
        // it at once: a parked read never waits longer than the commit timeout, nor past a stop.
        let deadline = tokio::time::Instant::now() + timeout;
        let mut shutdown = self.shutdown.subscribe();
        if *shutdown.borrow() {
            return Err(Error::ShuttingDown);
        }
        let (tx, rx) = oneshot::channel();
        if self.reads.enqueue(tx) {
            let node = self.clone();
            tokio::spawn(async move {
                while let Some(waiters) = node.reads.next_round() {
                    let result = node.fetch_read_index().await;
                    for w in waiters {
                        let _ = w.send(result.clone());
                    }
                }
            });
        }
        let applied = self.shared.applied_index.subscribe();
        let barrier = async move {
            let index = match rx.await {
                Err(_) => return Err(Error::ShuttingDown),
                Ok(index) => index?,
            };
            let mut applied = applied;
            let caught_up = applied.wait_for(|i| *i >= index).await.is_ok();
            if caught_up {
                Ok(())
            } else {
                Err(Error::ShuttingDown)
            }
        };
        tokio::select! {
            r = tokio::time::timeout_at(deadline, barrier) => r.unwrap_or(Err(Error::Timeout(timeout))),
            _ = shutdown.wait_for(|stop| *stop) => Err(Error::ShuttingDown),
        }
    }

    /// Applied changes, with the node that asked for each, batch by batch.
    pub fn subscribe_changes(&self) -> broadcast::Receiver<Arc<Vec<(NodeId, Change)>>> {
        self.shared.changes.subscribe()
    }

    /// The applied replica. Hold the guard only for in-memory work.
    pub fn replica(&self) -> RwLockReadGuard<'_, Replica> {
        self.shared.replica.read().unwrap()
    }

    /// Whether the node is ready: it serves, knows a leader and a quorum, and has caught up
    /// with the cluster ([`not_ready`](Self::not_ready) says why not).
    pub fn is_ready(&self) -> bool {
        self.not_ready().is_none()
    }

    /// Waits until [`is_ready`](Self::is_ready), or the timeout.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.is_ready() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Waits until consensus runs and knows a leader, or the timeout: enough to mount and
    /// serve, but a node may still be catching up then (not [`is_ready`](Self::is_ready)).
    pub async fn wait_leader(&self, timeout: Duration) -> bool {
        let mut metrics = self.raft.metrics();
        let known = async move {
            crate::consensus::wait_metrics(&mut metrics, |m| {
                m.running_state.is_ok() && m.current_leader.is_some()
            })
            .await
            .is_ok()
        };
        tokio::time::timeout(timeout, known).await.unwrap_or(false)
    }

    /// The node's view of itself and the cluster.
    pub fn status(&self) -> Status {
        status::build(self)
    }

    /// The status document as JSON.
    pub fn status_json(&self) -> String {
        serde_json::to_string(&self.status()).expect("status serializes")
    }

    /// Waits until `states/` holds the block at `height` durably, state `state` included (for
    /// `fsync`); false after the commit timeout, and while that state's writes keep failing.
    pub async fn wait_mirrored(&self, height: Height, state: Option<&crate::chain::StateId>) -> bool {
        self.shared.mirror.wait_for(height, state, self.config.commit_timeout).await
    }

    /// Fails every pending and future proposal with [`Error::ShuttingDown`], stops consensus,
    /// and lets `chain/` and `states/` catch up with what was applied.
    pub async fn shutdown(&self) {
        self.shutdown.send_replace(true);
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "consensus did not stop cleanly");
        }
        self.shared.chain.stop();
        let head = self.replica().head.map(|h| h.height);
        if let Some(head) = head {
            if !self.shared.mirror.wait_for(head, None, Duration::from_secs(5)).await {
                tracing::warn!(
                    head,
                    "states/ did not catch up before shutdown; it is repaired at the next start"
                );
            }
        }
        // Nothing writes the directory any more: another process (a restart) may take it.
        self.lock.lock().unwrap().take();
    }
}

/// Marks a request id answered when its proposal ends, however it ends.
struct Settle<'a> {
    /// The issuer the id came from.
    requests: &'a Mutex<Issuer>,
    /// The id's seq.
    seq: u64,
}

impl Drop for Settle<'_> {
    fn drop(&mut self) {
        self.requests.lock().unwrap().settle(self.seq);
    }
}

/// Keeps `since` at the moment this node last lost sight of a leader (`None` while it knows one).
async fn track_leaderless(
    mut metrics: crate::consensus::typ::MetricsRx,
    since: Arc<Mutex<Option<std::time::Instant>>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let has_leader = metrics.borrow_and_update().current_leader.is_some();
        {
            let mut since = since.lock().unwrap();
            match (has_leader, *since) {
                (true, _) => *since = None,
                (false, None) => *since = Some(std::time::Instant::now()),
                (false, Some(_)) => {}
            }
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

#[tonic::async_trait]
impl crate::rpc::admin::AdminHandler for Node {
    fn status_json(&self) -> String {
        Node::status_json(self)
    }

    async fn member(&self, op: crate::rpc::pb::MemberOp, id: u64) -> Result<String, tonic::Status> {
        use membership::MemberError;
        match self.member_op(op, id).await {
            Ok(list) => Ok(serde_json::to_string(&list).expect("members serialize")),
            Err(e @ (MemberError::NoLeader | MemberError::NotLeader { .. } | MemberError::Consensus(_))) => {
                Err(tonic::Status::unavailable(e.to_string()))
            }
            Err(
                e @ (MemberError::NoSuchMember(_)
                | MemberError::AlreadyVoter(_)
                | MemberError::LastVoter(_)
                | MemberError::LiveMemberAtAddress { .. }),
            ) => Err(tonic::Status::failed_precondition(e.to_string())),
            Err(MemberError::Forwarded(e)) => Err(tonic::Status::unavailable(e)),
        }
    }

    async fn token(
        &self,
        op: crate::rpc::pb::TokenOp,
        token: crate::store::identity::ClusterToken,
    ) -> Result<String, tonic::Status> {
        use crate::rpc::pb::TokenOp;
        let tokens = crate::rpc::peer::PeerGuard::tokens(self.guard.as_ref());
        if op == TokenOp::Rotate {
            let members = self.rotate_token(&token).await.map_err(|e| match e {
                token::RotateFailure::Aborted { .. } => tonic::Status::failed_precondition(e.to_string()),
                token::RotateFailure::Incomplete { .. } => tonic::Status::unavailable(e.to_string()),
            })?;
            return Ok(
                serde_json::json!({ "rotation": tokens.rotation_name(), "members": members }).to_string()
            );
        }
        self.token_step(op, &token).map_err(|e| {
            tracing::warn!(?op, error = %e, "refusing a token rotation step");
            tonic::Status::failed_precondition(e.to_string())
        })?;
        if op != TokenOp::Status {
            tracing::info!(?op, rotation = tokens.rotation_name(), "took a token rotation step");
        }
        Ok(serde_json::json!({ "rotation": tokens.rotation_name() }).to_string())
    }

    async fn limits(&self, max_state_size: u64) -> Result<String, tonic::Status> {
        if max_state_size != 0 {
            let op = TxOp::Limits { max_state_size, initial: false };
            match self.propose(op).await {
                Ok(committed) => {
                    tracing::info!(max_state_size, height = committed.height, "the cluster's limits changed")
                }
                Err(Error::Rejected(reject)) => {
                    return Err(tonic::Status::invalid_argument(format!(
                        "max state size {max_state_size}: {reject} (from 1 byte up to {} MiB)",
                        crate::chain::MAX_STATE_SIZE_CAP >> 20
                    )))
                }
                Err(e) => return Err(tonic::Status::unavailable(e.to_string())),
            }
        }
        let tree = &self.replica().tree;
        let limits = tree.limits();
        Ok(serde_json::json!({ "max_state_size": limits.max_state_size, "recorded": tree.limits_set() })
            .to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::{Content, StateId};

    async fn start(data: &DataDir) -> Result<Arc<Node>, StartError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listen = listener.local_addr().unwrap();
        Node::start(data, Config::single_node_for_tests(listen), listener).await
    }

    fn put(id: &str) -> TxOp {
        TxOp::Put {
            id: StateId::parse(id).unwrap(),
            content: Content::from(&b"x"[..]),
            uid: 0,
            gid: 0,
            ino: None,
        }
    }

    #[test]
    fn an_identity_written_before_a_crash_before_initialize_still_initializes() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        rt.block_on(async {
            let data = DataDir::create(tmp.path()).unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let listen = listener.local_addr().unwrap();
            // What a crash between writing identity.json and `initialize` leaves behind.
            let identity = Identity::generate(node_id_for(&bootstrap::normalize(&listen.to_string())));
            identity.save(&data).unwrap();
            let node = Node::start(&data, Config::single_node_for_tests(listen), listener).await.unwrap();
            assert!(node.wait_ready(Duration::from_secs(10)).await, "the node never initialized");
            node.propose(put("f")).await.unwrap();
            assert_eq!(node.id(), identity.node_id);
            node.shutdown().await;
        });
    }

    #[test]
    fn a_held_data_directory_is_refused_until_its_node_stops() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        rt.block_on(async {
            let data = DataDir::create(tmp.path()).unwrap();
            let first = start(&data).await.unwrap();
            assert!(first.wait_ready(Duration::from_secs(10)).await);
            match start(&data).await {
                Err(StartError::Store(crate::store::Error::Locked { .. })) => {}
                Err(e) => panic!("wrong refusal: {e}"),
                Ok(_) => panic!("a second node started on a held data directory"),
            }
            first.propose(put("a")).await.unwrap();
            first.shutdown().await;
            let second = start(&data).await.unwrap();
            assert!(second.wait_ready(Duration::from_secs(10)).await);
            // A restart is a new origin: its seqs start again at 1 and are not taken for the old ones.
            second.propose(put("b")).await.unwrap();
            assert!(second.replica().tree.get(&StateId::parse("b").unwrap()).is_some());
            second.shutdown().await;
        });
    }
}
