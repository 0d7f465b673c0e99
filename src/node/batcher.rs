//! Group commit: packs queued proposals into log entries, and forwards them when this node
//! is not the leader.
//!
//! One task takes proposals off a queue. Each time it may send, it drains everything queued
//! into one [`Batch`], stamps it with the clock (never earlier than the previous batch), and
//! submits it without waiting for the result; a separate task per entry waits for the entry
//! to be applied and answers each proposer with its own outcome. At most [`MAX_IN_FLIGHT`]
//! entries are in flight, so while they are, new proposals pile up and go into the next
//! entry together: the busier the node, the bigger its blocks, and the fewer fsyncs per write.
//!
//! On a follower, openraft answers with the leader's address: the batch is forwarded there
//! (`Cluster.Forward`), joins the leader's next group commit, and is answered here only once
//! this node has applied the entry too, so a writer always reads its own write. Retries (no
//! leader yet, a leader that just lost its role, a lost connection) reuse the same request
//! ids and `acked_below`, which the state machine deduplicates: a transaction applies at most
//! once, and a retry learns what its first copy did (`chain::dedup`). A retry is sent only
//! while its proposer still waits, and an attempt is abandoned the moment every proposer of
//! the batch gave up, so a write stuck on a partitioned old leader frees its slot at the
//! commit timeout.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use super::{now_ms, Error};
use crate::chain::{Batch, Height, Outcome, Transaction};
use crate::consensus::typ::Raft;
use crate::rpc::pb::cluster_client::ClusterClient;
use crate::rpc::pb::{Encoding, ForwardRequest};
use crate::rpc::peer::{self, Channels, PeerGuard, MAX_MESSAGE_BYTES};

/// Entries submitted and not yet applied, at most.
const MAX_IN_FLIGHT: usize = 8;
/// Transactions per entry, at most.
const MAX_BATCH_TXS: usize = 1024;
/// Bytes of content per entry, at most (keeps entries well below message size limits).
const MAX_BATCH_BYTES: usize = 8 << 20;

/// One transaction waiting to be proposed.
pub struct Proposal {
    /// The transaction.
    pub tx: Transaction,
    /// Where its outcome goes.
    pub reply: oneshot::Sender<Result<Applied, Error>>,
}

/// The outcome of an applied transaction.
#[derive(Debug, Clone, Copy)]
pub struct Applied {
    /// The block that holds it.
    pub height: Height,
    /// The log entry that holds it.
    pub index: u64,
    /// What applying it did.
    pub outcome: Outcome,
}

/// What the batcher needs of its node.
#[derive(Clone)]
pub struct Context {
    /// Consensus.
    pub raft: Raft,
    /// This node's id.
    pub self_id: u64,
    /// Connections to peers.
    pub channels: Channels,
    /// Metadata for peer requests.
    pub guard: Arc<dyn PeerGuard>,
    /// The applied index, to wait for forwarded entries.
    pub applied: watch::Receiver<u64>,
    /// How long a commit may take.
    pub commit_timeout: Duration,
}

fn content_len(tx: &Transaction) -> usize {
    match &tx.op {
        crate::chain::TxOp::Put { content, .. } | crate::chain::TxOp::Append { content, .. } => content.len(),
        _ => 0,
    }
}

/// Runs until the queue closes or shutdown is signalled.
pub async fn run(
    ctx: Context,
    mut queue: mpsc::UnboundedReceiver<Proposal>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut last_ts = 0u64;
    let mut carry: Option<Proposal> = None;
    loop {
        let first = match carry.take() {
            Some(p) => p,
            None => tokio::select! {
                p = queue.recv() => match p { Some(p) => p, None => return },
                _ = shutdown.wait_for(|s| *s) => return,
            },
        };
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.expect("semaphore never closes"),
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let mut bytes = content_len(&first.tx);
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_TXS {
            match queue.try_recv() {
                Ok(p) if bytes + content_len(&p.tx) > MAX_BATCH_BYTES => {
                    carry = Some(p);
                    break;
                }
                Ok(p) => {
                    bytes += content_len(&p.tx);
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        last_ts = last_ts.max(now_ms());
        let ctx = ctx.clone();
        let timestamp_ms = last_ts;
        tokio::spawn(async move {
            commit(&ctx, timestamp_ms, batch).await;
            drop(permit);
        });
    }
}

/// Submits one batch (here, or forwarded to the leader), retrying while there is no usable
/// leader, and answers every proposer.
async fn commit(ctx: &Context, timestamp_ms: u64, mut batch: Vec<Proposal>) {
    let mut backoff = Duration::from_millis(20);
    loop {
        // Proposers that gave up (timed out) need no answer and no retry.
        batch.retain(|p| !p.reply.is_closed());
        if batch.is_empty() {
            return;
        }
        let txs: Vec<Transaction> = batch.iter().map(|p| p.tx.clone()).collect();
        tracing::debug!(txs = txs.len(), "client_write start");
        let write = ctx.raft.client_write(Batch { timestamp_ms, txs: txs.clone() });
        let written = tokio::select! {
            written = write => written,
            // Everyone gave up (their commit timeout passed): free the in-flight slot now
            // rather than when a write stuck on an unreachable leader finally fails. What was
            // sent may still commit; its ids are then answered and expire (`chain::dedup`).
            () = all_gave_up(&mut batch) => return,
        };
        match written {
            Ok(response) => {
                tracing::debug!("client_write done");
                let height = response.data.height.expect("a normal entry always makes a block");
                let index = response.log_id.index;
                for (p, outcome) in batch.into_iter().zip(response.data.outcomes) {
                    let _ = p.reply.send(Ok(Applied { height, index, outcome }));
                }
                return;
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                if let (Some(leader), Some(node)) = (f.leader_id, f.leader_node) {
                    if leader != ctx.self_id {
                        let forwarded = tokio::select! {
                            forwarded = forward(ctx, leader, &node.addr, &txs) => forwarded,
                            () = all_gave_up(&mut batch) => return,
                        };
                        match forwarded {
                            Ok(applied) => {
                                for (p, a) in batch.into_iter().zip(applied) {
                                    let _ = p.reply.send(Ok(a));
                                }
                                return;
                            }
                            Err(e) => {
                                tracing::debug!(leader, error = %e, "forwarding failed; retrying")
                            }
                        }
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = all_gave_up(&mut batch) => return,
                }
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
            Err(e) => {
                let error = Error::Fatal(e.to_string());
                for p in batch {
                    let _ = p.reply.send(Err(error.clone()));
                }
                return;
            }
        }
    }
}

/// Resolves once every proposer of `batch` stopped waiting (its call timed out or was dropped).
async fn all_gave_up(batch: &mut [Proposal]) {
    futures_util::future::join_all(batch.iter_mut().map(|p| p.reply.closed())).await;
}

/// Proposes `txs` on the leader at `addr`, then waits until this node applied the entry.
async fn forward(
    ctx: &Context,
    leader: u64,
    addr: &str,
    txs: &[Transaction],
) -> Result<Vec<Applied>, String> {
    let channel = ctx.channels.get(addr)?;
    let mut client = ClusterClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    // Binary, so 1 MiB states travel as their bytes (see `consensus::codec`).
    let body =
        ForwardRequest { txs: crate::consensus::codec::to_binary(&txs), encoding: Encoding::Binary as i32 };
    let request = peer::request_to(body, ctx.guard.as_ref(), ctx.commit_timeout, leader);
    let response = client.forward(request).await.map_err(|s| s.message().to_owned())?;
    peer::admit_response(&response, ctx.guard.as_ref())?;
    let reply = response.into_inner();
    let outcomes: Vec<Outcome> = serde_json::from_slice(&reply.outcomes).map_err(|e| e.to_string())?;
    if outcomes.len() != txs.len() {
        return Err(format!("leader answered {} outcomes for {} transactions", outcomes.len(), txs.len()));
    }
    let mut applied = ctx.applied.clone();
    tokio::time::timeout(ctx.commit_timeout, applied.wait_for(|i| *i >= reply.index))
        .await
        .map_err(|_| "committed on the leader but not applied here in time".to_owned())?
        .map_err(|_| "shutting down".to_owned())?;
    Ok(outcomes
        .into_iter()
        .map(|outcome| Applied { height: reply.height, index: reply.index, outcome })
        .collect())
}
