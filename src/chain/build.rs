//! Building blocks from applied transactions, and checking stored blocks by rebuilding them.
//!
//! [`apply_batch`] is the one place a block is made: it applies the transactions to the tree,
//! records each outcome, and seals the block with the new state root. [`replay`] runs the same
//! function on a stored block's transactions and demands a byte-identical block, so a changed
//! content byte, a wrong outcome or a wrong state root is caught as surely as a broken hash.

use super::{ApplyCtx, Block, BlockHash, BlockTx, Change, Height, LinkError, NodeId, Transaction, Tree};

/// The last block of a chain, as the next block needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tip {
    /// Its height.
    pub height: Height,
    /// Its hash.
    pub hash: BlockHash,
    /// Its timestamp (the next block's is never earlier).
    pub timestamp_ms: u64,
    /// The consensus log index it came from.
    pub index: u64,
}

impl Tip {
    /// The tip a block makes.
    pub fn of(block: &Block) -> Tip {
        Tip { height: block.height, hash: block.hash, timestamp_ms: block.timestamp_ms, index: block.index }
    }
}

/// Where in the consensus log a block comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogPosition {
    /// Term of the entry.
    pub term: u64,
    /// Index of the entry.
    pub index: u64,
    /// The leader that created the entry.
    pub proposer: NodeId,
}

/// Applies `txs` to `tree` and seals the block they make on top of `prev`. Each change comes
/// with the node that asked for it (to tell local changes from remote ones).
pub fn apply_batch(
    tree: &mut Tree,
    prev: Option<Tip>,
    pos: LogPosition,
    timestamp_ms: u64,
    txs: Vec<Transaction>,
) -> (Block, Vec<(NodeId, Change)>) {
    let timestamp_ms = timestamp_ms.max(prev.map_or(0, |p| p.timestamp_ms));
    let height = prev.map_or(0, |p| p.height + 1);
    let ctx = ApplyCtx { height, timestamp_ms };
    let mut changes = Vec::new();
    let mut block_txs = Vec::with_capacity(txs.len());
    for tx in txs {
        let (outcome, tx_changes) = tree.apply(&ctx, &tx);
        changes.extend(tx_changes.into_iter().map(|c| (tx.request.node, c)));
        block_txs.push(BlockTx { request: tx.request, acked_below: tx.acked_below, op: tx.op, outcome });
    }
    let block = Block::seal(
        prev.map(|p| (p.height, p.hash)),
        pos.term,
        pos.index,
        timestamp_ms,
        pos.proposer,
        tree.state_root(),
        block_txs,
    );
    (block, changes)
}

/// Why a stored block is not the block its transactions make.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// The block's hash or link is wrong.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// Applying its transactions gives a different state root.
    #[error("state root differs: applying its transactions gives {computed}, block says {stored}")]
    StateRoot { stored: super::Digest, computed: super::Digest },
    /// Applying its transactions gives different outcomes.
    #[error("transaction {position} outcome differs: block says {stored:?}, applying gives {computed:?}")]
    Outcome { position: usize, stored: super::Outcome, computed: super::Outcome },
}

/// Re-applies a stored block to `tree` (which must be the tree after `prev`) and checks that
/// it is exactly the block those transactions make. On error the tree is left part-applied.
pub fn replay(
    tree: &mut Tree,
    prev: Option<Tip>,
    block: &Block,
) -> Result<Vec<(NodeId, Change)>, ReplayError> {
    block.verify_after(prev)?;
    let txs = block
        .txs
        .iter()
        .map(|t| Transaction { request: t.request, acked_below: t.acked_below, op: t.op.clone() })
        .collect();
    let pos = LogPosition { term: block.term, index: block.index, proposer: block.proposer };
    let (rebuilt, changes) = apply_batch(tree, prev, pos, block.timestamp_ms, txs);
    for (position, (stored, computed)) in block.txs.iter().zip(&rebuilt.txs).enumerate() {
        if stored.outcome != computed.outcome {
            return Err(ReplayError::Outcome {
                position,
                stored: stored.outcome,
                computed: computed.outcome,
            });
        }
    }
    if rebuilt.state_root != block.state_root {
        return Err(ReplayError::StateRoot { stored: block.state_root, computed: rebuilt.state_root });
    }
    debug_assert_eq!(&rebuilt, block);
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::{Content, Outcome, Reject, RequestId, StateId, TxOp};

    fn tx(seq: u64, op: TxOp) -> Transaction {
        Transaction { request: RequestId { node: 1, incarnation: 1, seq }, acked_below: 0, op }
    }
    fn pos(index: u64) -> LogPosition {
        LogPosition { term: 1, index, proposer: 1 }
    }

    /// One transaction of every kind, each accepted and each rejected where it can be, in blocks
    /// built as the leader builds them; a replay onto an empty tree rebuilds every block exactly
    /// (outcomes, state roots, hashes) and ends in the same tree and limits.
    #[test]
    fn every_transaction_kind_replays_exactly_as_it_applied_live() {
        use crate::chain::{Members, RenameMode, TimeSpec};
        let id = |s: &str| StateId::parse(s).unwrap();
        let content = |s: &str| Content::from(s.as_bytes());
        let members =
            Members { configs: vec![[1u64].into()], nodes: [(1u64, "127.0.0.1:1".to_owned())].into() };
        let consensus = Transaction {
            request: RequestId { node: 0, incarnation: 0, seq: 1 },
            acked_below: 1,
            op: TxOp::Membership { members: members.clone() },
        };
        let ops = vec![
            TxOp::Limits { max_state_size: 16, initial: true },
            TxOp::Limits { max_state_size: 99, initial: true },
            TxOp::Mkdir { id: id("d"), mode: 0o755, uid: 1, gid: 2 },
            TxOp::Put { id: id("d/f"), content: content("hello"), uid: 1, gid: 2, ino: None },
            TxOp::Put { id: id("d/big"), content: content("seventeen bytes!!"), uid: 0, gid: 0, ino: None },
            TxOp::Append { id: id("d/f"), content: content(" world"), uid: 0, gid: 0, ino: None },
            TxOp::Append { id: id("d/f"), content: content(" and more"), uid: 0, gid: 0, ino: None },
            TxOp::Create { id: id("d/x"), mode: 0o600, exclusive: true, uid: 0, gid: 0 },
            TxOp::Create { id: id("d/x"), mode: 0o600, exclusive: true, uid: 0, gid: 0 },
            TxOp::Truncate { id: id("d/x"), size: 1 << 40 },
            TxOp::Truncate { id: id("d/x"), size: 3 },
            TxOp::Symlink { id: id("l"), target: "d/f".into(), uid: 0, gid: 0 },
            TxOp::Chmod { id: id("d/x"), mode: 0o644 },
            TxOp::Chown { id: id("d/x"), uid: Some(5), gid: None, mode: None },
            TxOp::Times { id: id("d/x"), atime: Some(TimeSpec::At(-5)), mtime: Some(TimeSpec::Now) },
            TxOp::Rename { from: id("d/x"), to: id("d/y"), mode: RenameMode::NoReplace },
            TxOp::Rename { from: id("d/y"), to: id("d/f"), mode: RenameMode::Exchange },
            TxOp::Membership { members },
            TxOp::Delete { id: id("d/y") },
            TxOp::Delete { id: id("l") },
            TxOp::Rmdir { id: id("d") },
            TxOp::Limits { max_state_size: 0, initial: false },
        ];
        let mut live = Tree::new();
        let mut blocks = Vec::new();
        let (genesis, _) = apply_batch(&mut live, None, pos(1), 10, vec![consensus]);
        blocks.push(genesis);
        // Three transactions to a block, the last ones alone (a lone forged membership among them).
        let mut seq = 0;
        for (n, chunk) in ops.chunks(3).enumerate() {
            let txs = chunk
                .iter()
                .map(|op| {
                    seq += 1;
                    tx(seq, op.clone())
                })
                .collect();
            let prev = Tip::of(blocks.last().unwrap());
            let (block, _) = apply_batch(&mut live, Some(prev), pos(n as u64 + 2), 20 + n as u64, txs);
            blocks.push(block);
        }
        let outcomes: Vec<_> = blocks.iter().flat_map(|b| b.txs.iter().map(|t| t.outcome)).collect();
        assert!(outcomes.contains(&Outcome::Rejected(Reject::TooBig)), "{outcomes:?}");
        assert!(outcomes.contains(&Outcome::Rejected(Reject::Invalid)), "{outcomes:?}");
        assert!(outcomes.contains(&Outcome::Rejected(Reject::AlreadyExists)), "{outcomes:?}");
        assert_eq!(live.limits().max_state_size, 16);

        let mut replayed = Tree::new();
        let mut prev = None;
        for block in &blocks {
            replay(&mut replayed, prev, block).expect("every block replays");
            prev = Some(Tip::of(block));
        }
        assert_eq!(replayed.state_root(), live.state_root());
        assert_eq!(replayed.limits(), live.limits());
        assert_eq!(replayed.iter().collect::<Vec<_>>(), live.iter().collect::<Vec<_>>());
    }

    #[test]
    fn replaying_a_chain_rebuilds_identical_blocks_and_catches_tampering() {
        let mut tree = Tree::new();
        let (b0, _) = apply_batch(&mut tree, None, pos(1), 100, vec![]);
        let put = TxOp::Put {
            id: StateId::parse("f").unwrap(),
            content: Content::from(&b"v1"[..]),
            uid: 0,
            gid: 0,
            ino: None,
        };
        let excl =
            TxOp::Create { id: StateId::parse("f").unwrap(), mode: 0o644, exclusive: true, uid: 0, gid: 0 };
        let (b1, _) = apply_batch(&mut tree, Some(Tip::of(&b0)), pos(2), 50, vec![tx(1, put), tx(2, excl)]);
        assert_eq!(b1.timestamp_ms, 100, "timestamps never go backwards");
        assert_eq!(b1.txs[1].outcome, Outcome::Rejected(Reject::AlreadyExists));

        let mut again = Tree::new();
        replay(&mut again, None, &b0).unwrap();
        replay(&mut again, Some(Tip::of(&b0)), &b1).unwrap();
        assert_eq!(again.state_root(), tree.state_root());

        // A forged outcome with a recomputed hash is still caught by replaying.
        let mut forged = b1.clone();
        forged.txs[1].outcome = Outcome::Ok;
        forged.hash = forged.compute_hash();
        let mut t = Tree::new();
        replay(&mut t, None, &b0).unwrap();
        assert!(matches!(
            replay(&mut t, Some(Tip::of(&b0)), &forged),
            Err(ReplayError::Outcome { position: 1, .. })
        ));

        // Changed content with a recomputed hash: the state root gives it away.
        let mut forged = b1.clone();
        forged.txs[0].op = TxOp::Put {
            id: StateId::parse("f").unwrap(),
            content: Content::from(&b"v2"[..]),
            uid: 0,
            gid: 0,
            ino: None,
        };
        forged.hash = forged.compute_hash();
        let mut t = Tree::new();
        replay(&mut t, None, &b0).unwrap();
        assert!(matches!(replay(&mut t, Some(Tip::of(&b0)), &forged), Err(ReplayError::StateRoot { .. })));
    }

    #[test]
    fn a_chain_written_before_owners_and_times_replays_to_its_state_roots() {
        // The blocks' state roots were computed before entries had owners: root-owned entries
        // must digest exactly as they did then.
        let text = include_str!("testdata/chain_before_owners.jsonl");
        let blocks: Vec<Block> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let mut tree = Tree::new();
        let mut prev = None;
        for block in &blocks {
            replay(&mut tree, prev, block).unwrap();
            prev = Some(Tip::of(block));
        }
        let f = tree.get(&StateId::parse("d/f").unwrap()).unwrap();
        assert_eq!((f.uid, f.gid), (0, 0), "states of old chains are root's");
        assert_eq!(f.mtime_ns, 1_700_000_000_500 * 1_000_000);
    }

    #[test]
    fn replay_rebuilds_the_same_dedup_memory() {
        // Seq 1 applies, its origin then declares 1..=2 answered, and a late copy of 1 and a
        // never-applied 2 are refused as expired. Replaying the chain judges every copy the same.
        let put = |c: &str| TxOp::Put {
            id: StateId::parse("f").unwrap(),
            content: Content::from(c.as_bytes()),
            uid: 0,
            gid: 0,
            ino: None,
        };
        let at = |seq, acked_below, c: &str| Transaction {
            request: RequestId { node: 1, incarnation: 1, seq },
            acked_below,
            op: put(c),
        };
        let mut tree = Tree::new();
        let (b0, _) = apply_batch(&mut tree, None, pos(1), 1, vec![at(1, 1, "one"), at(1, 1, "again")]);
        let (b1, _) = apply_batch(
            &mut tree,
            Some(Tip::of(&b0)),
            pos(2),
            2,
            vec![at(3, 3, "three"), at(1, 1, "late"), at(2, 1, "two")],
        );
        let outcomes: Vec<_> = b0.txs.iter().chain(&b1.txs).map(|t| t.outcome).collect();
        assert_eq!(
            outcomes,
            [Outcome::Ok, Outcome::Duplicate, Outcome::Ok, Outcome::Expired, Outcome::Expired]
        );
        let mut again = Tree::new();
        replay(&mut again, None, &b0).unwrap();
        replay(&mut again, Some(Tip::of(&b0)), &b1).unwrap();
        assert_eq!(again.state_root(), tree.state_root());
    }
}
