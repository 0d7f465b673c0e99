//! The state machine: committed log entries in, blocks out.
//!
//! For each batch of committed entries openraft hands over, in log order:
//! 1. a normal entry's transactions are applied to the tree (preconditions checked now) and
//!    sealed into one block; a membership entry makes a block holding one membership
//!    transaction (the first is the genesis, whose hash names the cluster); a blank entry
//!    makes no block;
//! 2. the applied index is published, waking the proposers and readers waiting for it — the
//!    mount serves the new tree from here on;
//! 3. the blocks go to the chain writer and the changes to the `states/` mirror, which
//!    persist behind (DESIGN §1.4): the entries are durable in the consensus log already.
//!
//! Readers (the filesystem) share the [`Replica`] behind a lock held only for in-memory work.
//! `states/` is derived data and never stops the node (the mirror logs, counts and retries).
//! A failure to write `chain/` is fatal: the next apply returns it to openraft, which stops.
//! A snapshot (which lets the log be purged) waits until the chain holds every block it
//! covers, so the manifest never claims a block that is not on disk.
//!
//! At start-up the chain is replayed from the genesis: every block is rebuilt from its
//! transactions and must come out identical, and the applied position is that of the last
//! durable block — so a restart re-applies only what the chain lacks; the mirror then
//! repairs `states/` against the tree, in the background.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use futures_util::TryStreamExt;
use openraft::storage::{ApplyResponder, EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StoredMembership};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use super::typ::{
    CommittedLeaderId, Entry, LogId, Membership, Snapshot, SnapshotMeta, StoredMembership as Stored,
};
use super::{storage_error, BatchResult, TypeConfig};
use crate::chain::{
    apply_batch, replay, Block, Change, LogPosition, Members, NodeId, Outcome, RequestId, Tip, Transaction,
    Tree, TxOp,
};
use crate::store::chain_file::{ChainFile, ChainWriter};
use crate::store::identity::Identity;
use crate::store::mirror::{Mirror, TreeReader};
use crate::store::states::StatesDir;
use crate::store::{DataDir, Error as StoreError};

const SNAPSHOT: &str = "snapshot.json";

/// What this node has applied: the tree of states and where the chain stands.
#[derive(Debug)]
pub struct Replica {
    /// The tree of states after the last applied block.
    pub tree: Tree,
    /// The last block.
    pub head: Option<Tip>,
    /// The last applied log entry (blank entries included).
    pub last_applied: Option<LogId>,
    /// The last applied membership.
    pub membership: Stored,
}

/// State shared between the state machine and its readers.
pub struct Shared {
    /// The replica; write-locked only while a batch is applied in memory.
    pub replica: RwLock<Replica>,
    /// The index of the last applied entry.
    pub applied_index: watch::Sender<u64>,
    /// The data directory's identity (the cluster id is filled in by the genesis).
    pub identity: Arc<Mutex<Identity>>,
    /// Every applied batch's changes, with the node that asked for each (for the kernel
    /// cache invalidation). Sent once the batch is applied in memory.
    pub changes: broadcast::Sender<Arc<Vec<(NodeId, Change)>>>,
    /// Writes `chain/` behind the acknowledgement.
    pub chain: ChainWriter,
    /// Writes `states/` behind the acknowledgement.
    pub mirror: Mirror,
    /// The heights and hashes of the chain's blocks, for comparing chains with other members.
    pub hashes: Arc<crate::store::hash_index::HashIndex>,
}

/// openraft's state machine. Clones share everything (one is the snapshot builder).
#[derive(Clone)]
pub struct StateMachineStore {
    shared: Arc<Shared>,
    data: DataDir,
}

/// A snapshot is a manifest: where the chain stood. The blocks themselves are durable in
/// `chain/`; a leader streams the ones a follower lacks (see `consensus::network`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Manifest {
    /// openraft's snapshot metadata.
    pub meta: SnapshotMeta,
    /// The chain head the snapshot covers.
    pub head: Option<Tip>,
}

/// openraft's snapshot data: the manifest, and for a snapshot received from a leader the
/// directory of staged blocks this node lacked (a chain segment directory).
#[derive(Debug, Default)]
pub struct SnapshotData {
    /// Where the chain stood.
    pub manifest: Manifest,
    /// Received blocks, to append on install.
    pub staged_blocks: Option<PathBuf>,
}

/// Replays one stored block onto `tree`, tracking the membership it may carry. The error says
/// why the block does not fit.
fn replay_block(
    tree: &mut Tree,
    prev: Option<Tip>,
    membership: &mut Stored,
    block: &Block,
) -> Result<Vec<(NodeId, Change)>, String> {
    let changes = replay(tree, prev, block).map_err(|e| e.to_string())?;
    // Exactly what live apply adopts: consensus's own entry (node 0, alone in its block, which
    // the tree applied). A member's forged membership transaction was rejected when applied.
    if let [tx] = block.txs.as_slice() {
        let from_consensus = tx.request.node == 0 && tx.outcome == Outcome::Ok;
        if let (true, TxOp::Membership { members }) = (from_consensus, &tx.op) {
            let config = membership_of(members).map_err(|e| format!("bad membership: {e}"))?;
            *membership = StoredMembership::new(Some(log_id_of(block)), config);
        }
    }
    Ok(changes)
}

/// openraft's membership for the one a block holds (which came from openraft: every voter is
/// among the nodes, unless the block was made by hand).
fn membership_of(members: &Members) -> Result<Membership, openraft::error::MembershipError<u64>> {
    let nodes = members.nodes.iter().map(|(id, addr)| (*id, openraft::BasicNode { addr: addr.clone() }));
    Membership::new(members.configs.clone(), nodes.collect::<std::collections::BTreeMap<_, _>>())
}

fn members_of(membership: &Membership) -> Members {
    Members {
        configs: membership.get_joint_config().clone(),
        nodes: membership.nodes().map(|(id, node)| (*id, node.addr.clone())).collect(),
    }
}

fn log_id_of(block: &Block) -> LogId {
    LogId::new(CommittedLeaderId { term: block.term, node_id: block.proposer }, block.index)
}

/// The cluster id a genesis block gives.
pub fn cluster_id_of(genesis: &Block) -> String {
    genesis.hash.to_hex()[..32].to_owned()
}

impl StateMachineStore {
    /// Replays `chain/`, repairs `states/`, and returns the state machine.
    pub fn open(data: &DataDir, identity: Arc<Mutex<Identity>>) -> Result<StateMachineStore, StoreError> {
        let cluster_id = identity.lock().unwrap().cluster_id.clone();
        let mut tree = Tree::new();
        let mut prev: Option<Tip> = None;
        let mut membership = Stored::default();
        let mut genesis_cluster = None;
        let mut last_block_log_id = None;
        let chain = ChainFile::open(&data.chain(), |block| {
            replay_block(&mut tree, prev, &mut membership, block).map_err(|e| StoreError::Corrupt {
                path: data.chain(),
                detail: format!("block {}: {e}", block.height),
            })?;
            if block.height == 0 {
                genesis_cluster = Some(cluster_id_of(block));
            }
            prev = Some(Tip::of(block));
            last_block_log_id = Some(log_id_of(block));
            Ok(())
        })?;
        match (&cluster_id, &genesis_cluster) {
            (Some(have), Some(chain_id)) if have != chain_id => {
                return Err(StoreError::Corrupt {
                    path: data.identity(),
                    detail: format!(
                        "identity names cluster {have} but the chain's genesis is cluster {chain_id}"
                    ),
                });
            }
            (None, Some(chain_id)) => {
                // The genesis arrived but the identity was not updated (a crash in between).
                let mut identity = identity.lock().unwrap();
                identity.cluster_id = Some(chain_id.clone());
                identity.save(data)?;
            }
            _ => {}
        }
        let head = chain.head();
        let snapshot = read_manifest(data)?.and_then(|m| m.meta.last_log_id);
        // Blank entries after the last block make no block but may have been snapshotted.
        let last_applied = std::cmp::max(last_block_log_id, snapshot);
        tracing::info!(height = head.map(|h| h.height), states = tree.len() - 1, "chain replayed");
        let (applied_index, _) = watch::channel(last_applied.map_or(0, |l| l.index));
        let thread_failed =
            |e: std::io::Error| StoreError::Io { op: "start thread", path: data.root.clone(), source: e };
        // The mirror reads the tree through the replica it is part of: a weak link, set below.
        let link: Arc<std::sync::OnceLock<std::sync::Weak<Shared>>> = Arc::default();
        let reader: TreeReader = {
            let link = link.clone();
            Arc::new(move |f: &mut dyn FnMut(&Tree)| {
                if let Some(shared) = link.get().and_then(|w| w.upgrade()) {
                    f(&shared.replica.read().unwrap().tree);
                }
            })
        };
        let shared = Arc::new(Shared {
            replica: RwLock::new(Replica { tree, head, last_applied, membership }),
            applied_index,
            identity,
            changes: broadcast::channel(1024).0,
            hashes: chain.hashes(),
            chain: ChainWriter::start(chain).map_err(thread_failed)?,
            mirror: Mirror::start(StatesDir::new(data), reader).map_err(thread_failed)?,
        });
        let _ = link.set(Arc::downgrade(&shared));
        shared.mirror.repair(head.map(|h| h.height));
        Ok(StateMachineStore { shared, data: data.clone() })
    }

    /// The state readers share.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    fn apply_entry(
        &self,
        replica: &mut Replica,
        blocks: &mut Vec<Arc<Block>>,
        entry: Entry,
        changes: &mut Vec<(NodeId, Change)>,
    ) -> Result<BatchResult, StoreError> {
        let log_id = entry.log_id;
        replica.last_applied = Some(log_id);
        if replica.head.is_some_and(|h| h.index >= log_id.index) {
            // Already in the chain (the chain is ahead of what openraft thought was applied).
            return Ok(BatchResult::default());
        }
        let pos = LogPosition {
            term: log_id.leader_id.term,
            index: log_id.index,
            proposer: log_id.leader_id.node_id,
        };
        let (block, outcomes) = match entry.payload {
            EntryPayload::Blank => return Ok(BatchResult::default()),
            EntryPayload::Normal(batch) => {
                #[cfg(debug_assertions)] // a test-only fault hook, absent from release builds
                let batch = super::fault::diverge(replica.head.map_or(0, |h| h.height + 1), batch);
                let (block, tx_changes) =
                    apply_batch(&mut replica.tree, replica.head, pos, batch.timestamp_ms, batch.txs);
                changes.extend(tx_changes);
                // A retried request reads `duplicate` in the block; its proposer gets what the
                // first attempt did (`chain::dedup`).
                let outcomes = block.txs.iter().map(|t| replica.tree.answer(&t.request, t.outcome)).collect();
                (block, outcomes)
            }
            EntryPayload::Membership(membership) => {
                let members = members_of(&membership);
                // Node 0 is consensus itself: one id per log index, and nothing below it will
                // ever arrive again.
                let seq = log_id.index + 1;
                let request = RequestId { node: 0, incarnation: 0, seq };
                let tx = Transaction { request, acked_below: seq, op: TxOp::Membership { members } };
                let timestamp = replica.head.map_or(0, |h| h.timestamp_ms);
                let (block, _) = apply_batch(&mut replica.tree, replica.head, pos, timestamp, vec![tx]);
                replica.membership = StoredMembership::new(Some(log_id), membership);
                if block.height == 0 {
                    self.record_cluster_id(&block)?;
                }
                (block, vec![Outcome::Ok])
            }
        };
        replica.head = Some(Tip::of(&block));
        let height = block.height;
        blocks.push(Arc::new(block));
        Ok(BatchResult { height: Some(height), outcomes })
    }

    fn record_cluster_id(&self, genesis: &Block) -> Result<(), StoreError> {
        let mut identity = self.shared.identity.lock().unwrap();
        let cluster = cluster_id_of(genesis);
        tracing::info!(cluster = %cluster, "genesis block applied");
        identity.cluster_id = Some(cluster);
        identity.save(&self.data)
    }

    /// Wakes waiters for the applied index, and hands the changes to the cache invalidator
    /// and the `states/` mirror.
    fn announce(&self, changes: Vec<(NodeId, Change)>, last_index: u64, height: Option<u64>) {
        self.shared.applied_index.send_replace(last_index);
        let changes = Arc::new(changes);
        if let Some(height) = height {
            // Even a block that changed nothing moves the mirror's height along.
            self.shared.mirror.submit(height, changes.clone());
        }
        if !changes.is_empty() {
            // No subscriber (no mount yet) is fine.
            let _ = self.shared.changes.send(changes);
        }
    }

    /// The manifest of what is applied now, once `chain/` holds every block it covers.
    async fn current_manifest(&self) -> Result<Manifest, StoreError> {
        let manifest = {
            let replica = self.shared.replica.read().unwrap();
            let last = replica.last_applied;
            // 0.10 has no snapshot id: a snapshot is named by the log id it covers.
            let meta = SnapshotMeta { last_log_id: last, last_membership: replica.membership.clone() };
            Manifest { meta, head: replica.head }
        };
        // Read first, then wait: the manifest covers nothing the chain does not hold.
        self.shared.chain.wait_durable(manifest.head.map(|h| h.height)).await?;
        Ok(manifest)
    }

    /// Appends the staged blocks this node lacked and adopts the snapshot's position.
    async fn install(&self, meta: &SnapshotMeta, data: SnapshotData) -> Result<(), StoreError> {
        // Every block applied so far is on disk before the staged ones follow it.
        let head = self.shared.replica.read().unwrap().head;
        self.shared.chain.wait_durable(head.map(|h| h.height)).await?;
        // Replaying many blocks takes seconds: off the async thread, which keeps serving.
        let (this, meta) = (self.clone(), meta.clone());
        match tokio::task::spawn_blocking(move || this.install_blocks(&meta, data)).await {
            Ok(installed) => installed,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(StoreError::Io {
                op: "install the snapshot's blocks",
                path: self.data.chain(),
                source: std::io::Error::other(e),
            }),
        }
    }

    /// The synchronous part of [`install`](Self::install): checks and appends the staged
    /// blocks, adopts the snapshot's position, and announces the changes.
    fn install_blocks(&self, meta: &SnapshotMeta, data: SnapshotData) -> Result<(), StoreError> {
        self.install_blocks_observed(meta, data, &mut |_| {})
    }

    /// [`install_blocks`](Self::install_blocks), calling `observe` after each staged block is
    /// replayed (`None`) and after each is appended to the chain (`Some`: the bytes the chain
    /// holds in memory then) — for tests of the lock and of the memory it takes.
    ///
    /// Readers are never held up for the work: the staged blocks are checked and replayed onto
    /// a copy of the replica taken under its read lock (the tree's contents are shared, not
    /// copied; openraft never applies while it installs, so nothing else changes the replica
    /// meanwhile), appended to `chain/` and synced, and only then swapped in under the write
    /// lock, which is O(1). Memory: the staged blocks are read one at a time, twice (replay,
    /// then append), and the chain writes and syncs whenever [`INSTALL_SYNC_BYTES`] of them are
    /// queued, so the blocks in memory at once are at most that much plus one block, besides
    /// the copy of the tree (its index, and the contents the staged blocks replace, until the
    /// swap).
    fn install_blocks_observed(
        &self,
        meta: &SnapshotMeta,
        data: SnapshotData,
        observe: &mut dyn FnMut(Option<usize>),
    ) -> Result<(), StoreError> {
        let mut changes = Vec::new();
        let (mut tree, have, mut membership) = {
            let replica = self.shared.replica.read().unwrap();
            (replica.tree.clone(), replica.head, replica.membership.clone())
        };
        let mut head = have;
        if let Some(dir) = &data.staged_blocks {
            check_staged(dir, have, data.manifest.head)?;
            crate::store::chain_file::read_all(dir, |read| {
                let block = &read.block;
                if have.is_some_and(|h| block.height <= h.height) {
                    return Ok(()); // already here (the sender started early)
                }
                let applied = replay_block(&mut tree, head, &mut membership, block).map_err(|e| {
                    StoreError::Corrupt {
                        path: read.path.clone(),
                        detail: format!("received block {}: {e}", block.height),
                    }
                })?;
                changes.extend(applied);
                head = Some(Tip::of(block));
                observe(None);
                Ok(())
            })?;
        }
        let wanted = data.manifest.head.map(|h| (h.height, h.hash));
        if wanted.is_some() && wanted != head.map(|h| (h.height, h.hash)) {
            return Err(StoreError::Corrupt {
                path: self.data.chain(),
                detail: format!(
                    "after installing the snapshot the chain head is {head:?}, the snapshot's is {:?}",
                    data.manifest.head
                ),
            });
        }
        // Every staged block replays: append them all to the chain, durably.
        self.shared.chain.with_file(|chain| {
            if let Some(dir) = &data.staged_blocks {
                crate::store::chain_file::read_all(dir, |read| {
                    let block = &read.block;
                    if have.is_some_and(|h| block.height <= h.height) {
                        return Ok(());
                    }
                    chain.append(block)?;
                    if chain.pending_bytes() >= INSTALL_SYNC_BYTES {
                        chain.sync()?;
                    }
                    if block.height == 0 {
                        self.record_cluster_id(block)?;
                    }
                    observe(Some(chain.pending_bytes()));
                    Ok(())
                })?;
            }
            chain.sync()
        })?;
        // The swap: O(1) under the write lock; the old tree is dropped after it.
        let old = {
            let mut replica = self.shared.replica.write().unwrap();
            replica.head = head;
            replica.last_applied = meta.last_log_id;
            replica.membership = meta.last_membership.clone();
            std::mem::replace(&mut replica.tree, tree)
        };
        drop(old);
        drop(membership);
        let bytes = serde_json::to_vec(&data.manifest).expect("manifest serializes");
        crate::store::write_durable(&self.data.raft().join(SNAPSHOT), &bytes)?;
        if let Some(dir) = &data.staged_blocks {
            let _ = std::fs::remove_dir_all(dir);
        }
        tracing::info!(
            height = data.manifest.head.map(|h| h.height),
            changes = changes.len(),
            "snapshot installed"
        );
        let height = data.manifest.head.map(|h| h.height);
        self.announce(changes, meta.last_log_id.map_or(0, |l| l.index), height);
        Ok(())
    }
}

/// While a snapshot's blocks are appended to the chain, it writes and syncs whenever this many
/// bytes of them are queued: the bound on the chain's JSON in memory during a catch-up.
pub const INSTALL_SYNC_BYTES: usize = 8 << 20;

/// Checks, before anything changes, that the staged blocks are whole: consecutive, each
/// hashing to itself and linking to the one before, from this node's head up to the
/// snapshot's head.
fn check_staged(dir: &std::path::Path, have: Option<Tip>, want: Option<Tip>) -> Result<(), StoreError> {
    let mut prev = have;
    crate::store::chain_file::read_all(dir, |read| {
        let block = &read.block;
        if have.is_some_and(|h| block.height <= h.height) {
            return Ok(());
        }
        block.verify_after(prev).map_err(|e| StoreError::Corrupt {
            path: read.path.clone(),
            detail: format!("received block {}: {e}", block.height),
        })?;
        prev = Some(Tip::of(block));
        Ok(())
    })?;
    let (got, wanted) = (prev.map(|t| (t.height, t.hash)), want.map(|t| (t.height, t.hash)));
    if wanted.is_some() && got != wanted {
        return Err(StoreError::Corrupt {
            path: dir.to_owned(),
            detail: format!("the received blocks end at {got:?}, the snapshot's head is {wanted:?}"),
        });
    }
    Ok(())
}

/// The last snapshot's manifest, if any.
pub fn read_manifest(data: &DataDir) -> Result<Option<Manifest>, StoreError> {
    match std::fs::read(data.raft().join(SNAPSHOT)) {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
        Err(_) => Ok(None),
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, std::io::Error> {
        let manifest = self.current_manifest().await.map_err(|e| storage_error("build a snapshot", e))?;
        let bytes = serde_json::to_vec(&manifest).expect("manifest serializes");
        crate::store::write_durable(&self.data.raft().join(SNAPSHOT), &bytes)
            .map_err(|e| storage_error("save the snapshot manifest", e))?;
        Ok(Snapshot { meta: manifest.meta.clone(), snapshot: SnapshotData { manifest, staged_blocks: None } })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Stored), std::io::Error> {
        let replica = self.shared.replica.read().unwrap();
        Ok((replica.last_applied, replica.membership.clone()))
    }

    async fn apply<Strm>(&mut self, entries: Strm) -> Result<(), std::io::Error>
    where
        Strm: futures_util::Stream<Item = Result<EntryResponder<TypeConfig>, std::io::Error>>
            + Unpin
            + OptionalSend,
    {
        tracing::debug!("apply start");
        if let Some(reason) = self.shared.chain.failure() {
            let e = StoreError::Corrupt {
                path: self.data.chain(),
                detail: format!("cannot write the chain: {reason}"),
            };
            return Err(storage_error("apply", e));
        }
        // openraft reads the committed entries from the log and hands them over at once; take
        // them all, so one write lock of the replica covers the batch.
        let entries: Vec<EntryResponder<TypeConfig>> = entries.try_collect().await?;
        #[cfg(debug_assertions)] // a test-only hook, absent from release builds
        let entries = super::fault::delay_apply(entries).await;
        let (entries, responders): (Vec<Entry>, Vec<Option<ApplyResponder<TypeConfig>>>) =
            entries.into_iter().unzip();
        let mut results = Vec::with_capacity(entries.len());
        let mut changes = Vec::new();
        let mut blocks = Vec::new();
        let (last_index, height) = {
            // Readers wait for this lock, so it covers in-memory work only, never disk I/O.
            let mut replica = self.shared.replica.write().unwrap();
            for entry in entries {
                let result = self.apply_entry(&mut replica, &mut blocks, entry, &mut changes);
                results.push(result.map_err(|e| storage_error("apply", e))?);
            }
            (replica.last_applied.map_or(0, |l| l.index), replica.head.map(|h| h.height))
        };
        for block in blocks {
            self.shared.chain.append(block);
        }
        self.announce(changes, last_index, height);
        // The proposers hear only now, when readers of this node see what they wrote.
        answer(responders, results, |responder, result| responder.send(result));
        tracing::debug!("apply end");
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), std::io::Error> {
        // Snapshots arrive whole through `Raft::install_full_snapshot` (see the raft service).
        self.install(meta, snapshot).await.map_err(|e| storage_error("install a snapshot", e))
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, std::io::Error> {
        let manifest =
            read_manifest(&self.data).map_err(|e| storage_error("read the snapshot manifest", e))?;
        Ok(manifest.map(|m| Snapshot {
            meta: m.meta.clone(),
            snapshot: SnapshotData { manifest: m, staged_blocks: None },
        }))
    }
}

/// Hands each entry's result to its responder (entries replicated from another leader, or
/// proposed by no one waiting, have none), in log order: the `i`th result is the `i`th entry's.
fn answer<R, T>(responders: Vec<Option<R>>, results: Vec<T>, mut send: impl FnMut(R, T)) {
    debug_assert_eq!(responders.len(), results.len(), "one result per applied entry");
    for (responder, result) in responders.into_iter().zip(results) {
        if let Some(responder) = responder {
            send(responder, result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_result_goes_to_the_responder_of_its_entry() {
        let responders = vec![Some("a"), None, Some("c"), Some("d")];
        let results = vec![1, 2, 3, 4];
        let mut sent = Vec::new();
        answer(responders, results, |r, v| sent.push((r, v)));
        assert_eq!(sent, vec![("a", 1), ("c", 3), ("d", 4)]);
    }

    /// A snapshot of 40 blocks, each a 1 MiB state, from another member: installing it never
    /// holds the replica's lock while blocks are read, checked, replayed or written (readers
    /// and writers get it at every step), the chain holds at most [`INSTALL_SYNC_BYTES`] and a
    /// block of them in memory, and afterwards replica and chain are those of the sender.
    #[test]
    fn a_snapshot_installs_without_holding_the_lock_and_with_bounded_memory() {
        use crate::chain::{Content, StateId};
        let tmp = tempfile::tempdir().unwrap();
        let data = DataDir::create(tmp.path()).unwrap();
        let identity = Identity { node_id: 2, incarnation: 1, cluster_id: None };
        let sm = StateMachineStore::open(&data, Arc::new(Mutex::new(identity))).unwrap();

        // The sender's chain: 1 MiB states, rewritten in turn.
        let (mut tree, mut head, mut blocks) = (Tree::new(), None, Vec::new());
        for i in 0..40u64 {
            let id = StateId::parse(&format!("s{}", i % 8)).unwrap();
            let content = Content::from(vec![b'a' + (i % 26) as u8; 1 << 20]);
            let op = TxOp::Put { id, content, uid: 0, gid: 0, ino: None };
            let tx = Transaction {
                request: RequestId { node: 1, incarnation: 1, seq: i + 1 },
                acked_below: 0,
                op,
            };
            let pos = LogPosition { term: 1, index: i + 1, proposer: 1 };
            let (block, _) = apply_batch(&mut tree, head, pos, 1_000 + i, vec![tx]);
            assert!(block.txs[0].outcome == Outcome::Ok, "{:?}", block.txs[0].outcome);
            head = Some(Tip::of(&block));
            blocks.push(block);
        }
        let staged = tmp.path().join("staged");
        std::fs::create_dir(&staged).unwrap();
        let mut file =
            std::io::BufWriter::new(std::fs::File::create(staged.join(format!("{:020}.jsonl", 0))).unwrap());
        for block in &blocks {
            serde_json::to_writer(&mut file, block).unwrap();
            std::io::Write::write_all(&mut file, b"\n").unwrap();
        }
        drop(file);
        let one_block = serde_json::to_vec(&blocks[0]).unwrap().len();
        let last = blocks.last().unwrap();
        let meta = SnapshotMeta { last_log_id: Some(log_id_of(last)), last_membership: Stored::default() };
        let manifest = Manifest { meta: meta.clone(), head };
        let snapshot = SnapshotData { manifest, staged_blocks: Some(staged) };

        let shared = sm.shared();
        let (mut replayed, mut appended, mut most_pending) = (0, 0, 0);
        sm.install_blocks_observed(&meta, snapshot, &mut |pending| {
            assert!(shared.replica.try_write().is_ok(), "the replica is not locked while installing");
            match pending {
                None => replayed += 1,
                Some(bytes) => {
                    appended += 1;
                    most_pending = most_pending.max(bytes);
                }
            }
        })
        .unwrap();
        assert_eq!((replayed, appended), (40, 40));
        assert!(
            most_pending <= INSTALL_SYNC_BYTES + one_block,
            "{most_pending} bytes of chain in memory (blocks of {one_block})"
        );
        assert!(40 * one_block > 4 * INSTALL_SYNC_BYTES, "the test installs more than the bound");
        let replica = shared.replica.read().unwrap();
        assert_eq!(replica.head.map(|h| (h.height, h.hash)), head.map(|h| (h.height, h.hash)));
        assert_eq!(replica.tree.state_root(), tree.state_root());
        assert_eq!(replica.last_applied, meta.last_log_id);
        drop(replica);
        let mut on_disk = 0;
        crate::store::chain_file::read_all(&data.chain(), |_| {
            on_disk += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(on_disk, 40, "every block is in chain/");
    }

    #[test]
    fn a_membership_block_round_trips_and_a_bad_one_is_refused() {
        let members = Members {
            configs: vec![[1, 2].into(), [1, 2, 3].into()],
            nodes: [
                (1, "a:1".to_owned()),
                (2, "a:2".to_owned()),
                (3, "a:3".to_owned()),
                (4, "a:4".to_owned()),
            ]
            .into(),
        };
        let membership = membership_of(&members).unwrap();
        assert_eq!(membership.learner_ids().collect::<Vec<_>>(), vec![4]);
        assert_eq!(members_of(&membership), members);
        let voter_without_address = Members { configs: vec![[1, 5].into()], nodes: members.nodes.clone() };
        assert!(membership_of(&voter_without_address).is_err());
    }
}
