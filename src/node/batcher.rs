//! Group commit: packs queued proposals into log entries.
//!
//! One task takes proposals off a queue. Each time it may send, it drains everything queued
//! into one [`Batch`], stamps it with the clock (never earlier than the previous batch), and
//! submits it to openraft without waiting for the result; a separate task per entry waits for
//! the entry to be applied and answers each proposer with its own outcome. At most
//! [`MAX_IN_FLIGHT`] entries are in flight, so while they are, new proposals pile up and go
//! into the next entry together: the busier the node, the bigger its blocks, and the fewer
//! fsyncs per write.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use super::{now_ms, Error};
use crate::chain::{Batch, Height, Outcome, Transaction};
use crate::consensus::typ::Raft;

/// Entries submitted and not yet applied, at most.
const MAX_IN_FLIGHT: usize = 4;
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
    /// What applying it did.
    pub outcome: Outcome,
}

fn content_len(tx: &Transaction) -> usize {
    match &tx.op {
        crate::chain::TxOp::Put { content, .. } | crate::chain::TxOp::Append { content, .. } => {
            content.len()
        }
        _ => 0,
    }
}

/// Runs until the queue closes or shutdown is signalled.
pub async fn run(
    raft: Raft,
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
        let raft = raft.clone();
        let timestamp_ms = last_ts;
        tokio::spawn(async move {
            commit(&raft, timestamp_ms, batch).await;
            drop(permit);
        });
    }
}

/// Submits one batch, retrying while there is no leader yet, and answers every proposer.
async fn commit(raft: &Raft, timestamp_ms: u64, mut batch: Vec<Proposal>) {
    let mut backoff = Duration::from_millis(20);
    loop {
        // Proposers that gave up (timed out) need no answer; their transactions still go in,
        // but only if someone waits: an abandoned retry must not commit after its error.
        batch.retain(|p| !p.reply.is_closed());
        if batch.is_empty() {
            return;
        }
        let txs = batch.iter().map(|p| p.tx.clone()).collect();
        match raft.client_write(Batch { timestamp_ms, txs }).await {
            Ok(response) => {
                let result = response.data;
                let height = result.height.expect("a normal entry always makes a block");
                for (p, outcome) in batch.into_iter().zip(result.outcomes) {
                    let _ = p.reply.send(Ok(Applied { height, outcome }));
                }
                return;
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                // No leader here yet (an election is under way): wait and try again with the
                // same request ids, which the state machine deduplicates.
                tracing::debug!(leader = ?f.leader_id, "no leader to commit to yet; retrying");
                tokio::time::sleep(backoff).await;
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
