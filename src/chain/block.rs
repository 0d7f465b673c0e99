//! Blocks: hash-linked records of applied transactions, and their canonical encoding.
//!
//! A block's `hash` is sha256 over a canonical binary encoding of every other field
//! ([`Block::compute_hash`]). The encoding is written out by hand (fixed field order,
//! big-endian integers, length-prefixed strings and bytes, one tag byte per variant) so the
//! hash never depends on how a JSON library formats numbers or orders keys. The JSON form of a
//! block is for people and tools; it is decoded and re-hashed when verified.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::tx::{Members, NodeId, Outcome, Reject, RenameMode, RequestId, TimeSpec, TxOp};
use super::StateId;

/// Position of a block in the chain; the genesis block is height 0.
pub type Height = u64;

/// A sha256 digest, shown and serialized as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The digest of the empty prefix: the genesis block's `prev_hash`.
    pub const ZERO: Digest = Digest([0; 32]);

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// sha256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", &self.to_hex()[..12])
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(&text, &mut bytes).map_err(serde::de::Error::custom)?;
        Ok(Digest(bytes))
    }
}

/// A block's hash.
pub type BlockHash = Digest;

/// A transaction as recorded in a block: the request, the change, and what applying it did.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct BlockTx {
    /// Who asked (deduplication key).
    pub request: RequestId,
    /// The origin's answered-below mark the transaction carried (see `chain::dedup`).
    #[serde(default, skip_serializing_if = "super::tx::is_zero")]
    pub acked_below: u64,
    /// The change.
    pub op: TxOp,
    /// Whether it was applied, rejected by a precondition, or a duplicate.
    pub outcome: Outcome,
}

/// One block of the chain. Made from exactly one consensus log entry.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Block {
    /// Position in the chain (genesis = 0).
    pub height: Height,
    /// Hash of the block before (zero for the genesis).
    pub prev_hash: BlockHash,
    /// sha256 of the canonical encoding of every other field.
    pub hash: BlockHash,
    /// Consensus term of the log entry the block came from.
    pub term: u64,
    /// Consensus log index of that entry.
    pub index: u64,
    /// The proposing leader's clock (ms since the epoch), never earlier than the previous block's.
    pub timestamp_ms: u64,
    /// The node that proposed the entry.
    pub proposer: NodeId,
    /// Digest of the whole tree of states after this block was applied.
    pub state_root: Digest,
    /// The transactions, in the order they were applied.
    pub txs: Vec<BlockTx>,
}

/// Why a block does not belong where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The stored hash is not the hash of the block's content.
    #[error("hash mismatch: content hashes to {computed}, block says {stored}")]
    BadHash { stored: BlockHash, computed: BlockHash },
    /// `prev_hash` does not name the previous block.
    #[error("broken link: prev_hash {found} but the previous block is {expected}")]
    BadPrev { expected: BlockHash, found: BlockHash },
    /// Heights are not consecutive.
    #[error("height {found} where {expected} was expected")]
    BadHeight { expected: Height, found: Height },
    /// The timestamp runs backwards.
    #[error("timestamp {found} is earlier than the previous block's {previous}")]
    BadTimestamp { previous: u64, found: u64 },
}

impl Block {
    /// Builds a block on top of `prev` (`None` for the genesis) and computes its hash.
    #[allow(clippy::too_many_arguments)]
    pub fn seal(
        prev: Option<(Height, BlockHash)>,
        term: u64,
        index: u64,
        timestamp_ms: u64,
        proposer: NodeId,
        state_root: Digest,
        txs: Vec<BlockTx>,
    ) -> Block {
        let (height, prev_hash) = match prev {
            Some((h, hash)) => (h + 1, hash),
            None => (0, Digest::ZERO),
        };
        let mut block = Block {
            height,
            prev_hash,
            hash: Digest::ZERO,
            term,
            index,
            timestamp_ms,
            proposer,
            state_root,
            txs,
        };
        block.hash = block.compute_hash();
        block
    }

    /// sha256 over the canonical encoding of every field but `hash`.
    pub fn compute_hash(&self) -> BlockHash {
        let mut e = Encoder::new(b"lightchain/block/v1");
        e.u64(self.height);
        e.bytes(&self.prev_hash.0);
        e.u64(self.term);
        e.u64(self.index);
        e.u64(self.timestamp_ms);
        e.u64(self.proposer);
        e.bytes(&self.state_root.0);
        e.u64(self.txs.len() as u64);
        for tx in &self.txs {
            e.u64(tx.request.node);
            e.u64(tx.request.incarnation);
            e.u64(tx.request.seq);
            if tx.acked_below != 0 {
                // Tagged, and left out when 0, so blocks made before it existed hash as they
                // did; the tag is no op's, so the encoding stays unambiguous.
                e.u8(ACKED_BELOW_TAG);
                e.u64(tx.acked_below);
            }
            encode_op(&mut e, &tx.op);
            encode_outcome(&mut e, tx.outcome);
        }
        e.finish()
    }

    /// Checks the block's own hash and its link to `prev` (`None`: it must be a genesis).
    pub fn verify(&self, prev: Option<&Block>) -> Result<(), LinkError> {
        self.verify_after(prev.map(super::Tip::of))
    }

    /// [`verify`](Self::verify) given only the previous block's tip.
    pub fn verify_after(&self, prev: Option<super::Tip>) -> Result<(), LinkError> {
        let computed = self.compute_hash();
        if computed != self.hash {
            return Err(LinkError::BadHash { stored: self.hash, computed });
        }
        let (expected_height, expected_prev, previous_ts) = match prev {
            Some(p) => (p.height + 1, p.hash, p.timestamp_ms),
            None => (0, Digest::ZERO, 0),
        };
        if self.height != expected_height {
            return Err(LinkError::BadHeight { expected: expected_height, found: self.height });
        }
        if self.prev_hash != expected_prev {
            return Err(LinkError::BadPrev { expected: expected_prev, found: self.prev_hash });
        }
        if self.timestamp_ms < previous_ts {
            return Err(LinkError::BadTimestamp { previous: previous_ts, found: self.timestamp_ms });
        }
        Ok(())
    }
}

/// Tag of the optional owner section (see [`Encoder::owner`]); never a valid outcome tag.
const OWNER_TAG: u8 = 0xf1;
/// Tag of the optional inode precondition (see [`Encoder::expected_ino`]); never a valid
/// outcome tag, and not the owner's.
const INO_TAG: u8 = 0xf2;

/// Feeds a canonical encoding straight into sha256.
pub(crate) struct Encoder(Sha256);

impl Encoder {
    /// Starts an encoding under a domain tag, so digests of different kinds never collide.
    pub(crate) fn new(domain: &[u8]) -> Self {
        let mut e = Encoder(Sha256::new());
        e.bytes(domain);
        e
    }
    pub(crate) fn u8(&mut self, v: u8) {
        self.0.update([v]);
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.0.update(v.to_be_bytes());
    }
    pub(crate) fn bytes(&mut self, v: &[u8]) {
        self.u64(v.len() as u64);
        self.0.update(v);
    }
    pub(crate) fn id(&mut self, id: &StateId) {
        self.bytes(id.as_str().as_bytes());
    }
    /// An owner that is not root's (0, 0), as an optional trailing section: tag byte
    /// [`OWNER_TAG`], uid, gid; nothing for root's. Encodings made before owners existed (every
    /// state root's) are therefore unchanged, and the encoding stays injective because the tag
    /// differs from every byte that can follow an op or an entry (an outcome tag, or the end).
    pub(crate) fn owner(&mut self, uid: u32, gid: u32) {
        if (uid, gid) != (0, 0) {
            self.u8(OWNER_TAG);
            self.u64(u64::from(uid));
            self.u64(u64::from(gid));
        }
    }
    /// An inode precondition, as an optional trailing section after the owner's: tag byte
    /// [`INO_TAG`] and the inode; nothing without one (so older encodings are unchanged).
    pub(crate) fn expected_ino(&mut self, ino: Option<u64>) {
        if let Some(ino) = ino {
            self.u8(INO_TAG);
            self.u64(ino);
        }
    }
    fn opt_u32(&mut self, v: Option<u32>) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                self.u64(u64::from(v));
            }
        }
    }
    fn time(&mut self, t: Option<TimeSpec>) {
        match t {
            None => self.u8(0),
            Some(TimeSpec::Now) => self.u8(1),
            Some(TimeSpec::At(ns)) => {
                self.u8(2);
                self.u64(ns as u64); // two's complement: times before 1970 stay distinct
            }
        }
    }
    pub(crate) fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

/// Precedes a transaction's non-zero `acked_below` in the canonical encoding (op tags are small).
const ACKED_BELOW_TAG: u8 = 0xA0;

fn encode_op(e: &mut Encoder, op: &TxOp) {
    match op {
        TxOp::Put { id, content, uid, gid, ino } => {
            e.u8(1);
            e.id(id);
            e.bytes(content.as_bytes());
            e.owner(*uid, *gid);
            e.expected_ino(*ino);
        }
        TxOp::Append { id, content, uid, gid, ino } => {
            e.u8(2);
            e.id(id);
            e.bytes(content.as_bytes());
            e.owner(*uid, *gid);
            e.expected_ino(*ino);
        }
        TxOp::Create { id, mode, exclusive, uid, gid } => {
            e.u8(3);
            e.id(id);
            e.u64(u64::from(*mode));
            e.u8(u8::from(*exclusive));
            e.owner(*uid, *gid);
        }
        TxOp::Delete { id } => {
            e.u8(4);
            e.id(id);
        }
        TxOp::Truncate { id, size } => {
            e.u8(5);
            e.id(id);
            e.u64(*size);
        }
        TxOp::Rename { from, to, mode } => {
            e.u8(6);
            e.id(from);
            e.id(to);
            e.u8(match mode {
                RenameMode::Replace => 0,
                RenameMode::NoReplace => 1,
                RenameMode::Exchange => 2,
            });
        }
        TxOp::Mkdir { id, mode, uid, gid } => {
            e.u8(7);
            e.id(id);
            e.u64(u64::from(*mode));
            e.owner(*uid, *gid);
        }
        TxOp::Rmdir { id } => {
            e.u8(8);
            e.id(id);
        }
        TxOp::Chmod { id, mode } => {
            e.u8(9);
            e.id(id);
            e.u64(u64::from(*mode));
        }
        TxOp::Membership { members } => {
            e.u8(10);
            encode_members(e, members);
        }
        TxOp::Symlink { id, target, uid, gid } => {
            e.u8(11);
            e.id(id);
            e.bytes(target.as_bytes());
            e.u64(u64::from(*uid));
            e.u64(u64::from(*gid));
        }
        TxOp::Chown { id, uid, gid, mode } => {
            e.u8(12);
            e.id(id);
            e.opt_u32(*uid);
            e.opt_u32(*gid);
            e.opt_u32(*mode);
        }
        TxOp::Times { id, atime, mtime } => {
            e.u8(13);
            e.id(id);
            e.time(*atime);
            e.time(*mtime);
        }
        TxOp::Limits { max_state_size, initial } => {
            e.u8(14);
            e.u64(*max_state_size);
            e.u8(u8::from(*initial));
        }
    }
}

fn encode_members(e: &mut Encoder, members: &Members) {
    e.u64(members.configs.len() as u64);
    for config in &members.configs {
        e.u64(config.len() as u64);
        for id in config {
            e.u64(*id);
        }
    }
    e.u64(members.nodes.len() as u64);
    for (id, addr) in &members.nodes {
        e.u64(*id);
        e.bytes(addr.as_bytes());
    }
}

fn encode_outcome(e: &mut Encoder, outcome: Outcome) {
    match outcome {
        Outcome::Ok => e.u8(0),
        Outcome::Duplicate => e.u8(1),
        Outcome::Expired => e.u8(3),
        Outcome::Rejected(reject) => {
            e.u8(2);
            e.u8(match reject {
                Reject::NotFound => 0,
                Reject::AlreadyExists => 1,
                Reject::NotADirectory => 2,
                Reject::IsADirectory => 3,
                Reject::NotEmpty => 4,
                Reject::Invalid => 5,
                Reject::NameTooLong => 6,
                Reject::Moved => 7,
                Reject::TooBig => 8,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::tx::Content;

    fn tx(seq: u64, op: TxOp) -> BlockTx {
        BlockTx {
            request: RequestId { node: 1, incarnation: 7, seq },
            acked_below: 0,
            op,
            outcome: Outcome::Ok,
        }
    }

    fn put(id: &str, content: &str) -> TxOp {
        TxOp::Put {
            id: StateId::parse(id).unwrap(),
            content: Content::from(content.as_bytes()),
            uid: 0,
            gid: 0,
            ino: None,
        }
    }

    fn sid(id: &str) -> StateId {
        StateId::parse(id).unwrap()
    }

    fn sample_chain() -> Vec<Block> {
        let genesis = Block::seal(None, 0, 0, 0, 0, Digest::ZERO, vec![]);
        let b1 = Block::seal(
            Some((genesis.height, genesis.hash)),
            1,
            2,
            1000,
            1,
            Digest::of(b"root1"),
            vec![tx(1, put("a", "x")), tx(2, put("b", "y"))],
        );
        let b2 = Block::seal(Some((b1.height, b1.hash)), 1, 3, 1000, 1, Digest::of(b"r2"), vec![]);
        vec![genesis, b1, b2]
    }

    #[test]
    fn hashing_is_deterministic_and_survives_json() {
        let chain = sample_chain();
        let again = sample_chain();
        assert_eq!(chain, again);
        for block in &chain {
            let json = serde_json::to_string(block).unwrap();
            let decoded: Block = serde_json::from_str(&json).unwrap();
            assert_eq!(decoded.compute_hash(), block.hash);
        }
    }

    #[test]
    fn a_valid_chain_verifies() {
        let chain = sample_chain();
        chain[0].verify(None).unwrap();
        chain[1].verify(Some(&chain[0])).unwrap();
        chain[2].verify(Some(&chain[1])).unwrap();
    }

    #[test]
    fn any_changed_field_is_detected() {
        let chain = sample_chain();
        let b1 = &chain[1];
        type Mutation = Box<dyn Fn(&mut Block)>;
        let mutations: Vec<Mutation> = vec![
            Box::new(|b| b.height += 1),
            Box::new(|b| b.term += 1),
            Box::new(|b| b.index += 1),
            Box::new(|b| b.timestamp_ms += 1),
            Box::new(|b| b.proposer += 1),
            Box::new(|b| b.state_root.0[0] ^= 1),
            Box::new(|b| b.prev_hash.0[31] ^= 1),
            Box::new(|b| b.txs[0].request.seq += 1),
            Box::new(|b| b.txs[0].outcome = Outcome::Rejected(Reject::NotFound)),
            Box::new(|b| b.txs[0].outcome = Outcome::Expired),
            Box::new(|b| b.txs[0].acked_below += 1),
            Box::new(|b| b.txs[1].op = put("b", "z")),
            Box::new(|b| b.txs.swap(0, 1)),
            Box::new(|b| {
                b.txs.pop();
            }),
        ];
        for (i, mutate) in mutations.iter().enumerate() {
            let mut changed = b1.clone();
            mutate(&mut changed);
            assert!(
                matches!(changed.verify(Some(&chain[0])), Err(LinkError::BadHash { .. })),
                "mutation {i} went unnoticed"
            );
        }
    }

    #[test]
    fn any_changed_byte_of_the_json_is_detected_or_rejected() {
        let chain = sample_chain();
        let json = serde_json::to_vec(&chain[1]).unwrap();
        for i in 0..json.len() {
            let mut bytes = json.clone();
            bytes[i] = bytes[i].wrapping_add(1);
            let Ok(decoded) = serde_json::from_slice::<Block>(&bytes) else {
                continue;
            };
            if decoded == chain[1] {
                continue; // e.g. a changed key name that serde ignores cannot change content
            }
            assert!(decoded.verify(Some(&chain[0])).is_err(), "byte {i} changed unnoticed");
        }
    }

    /// One op of every kind, with every field away from its default, so each field can be
    /// changed in turn.
    fn every_op() -> Vec<TxOp> {
        vec![
            TxOp::Put { id: sid("p"), content: Content::from(&b"c"[..]), uid: 1000, gid: 100, ino: None },
            TxOp::Append { id: sid("a"), content: Content::from(&b"c"[..]), uid: 1000, gid: 100, ino: None },
            TxOp::Create { id: sid("c"), mode: 0o640, exclusive: true, uid: 1000, gid: 100 },
            TxOp::Mkdir { id: sid("m"), mode: 0o750, uid: 1000, gid: 100 },
            TxOp::Symlink { id: sid("l"), target: "../t".into(), uid: 1000, gid: 100 },
            TxOp::Chown { id: sid("o"), uid: Some(1000), gid: Some(100), mode: Some(0o755) },
            TxOp::Times { id: sid("t"), atime: Some(TimeSpec::At(-5)), mtime: Some(TimeSpec::Now) },
        ]
    }

    /// Every variant of each op that differs from it in exactly one field.
    fn one_field_changed(op: &TxOp) -> Vec<TxOp> {
        let mut out = Vec::new();
        let mut push = |f: &dyn Fn(&mut TxOp)| {
            let mut changed = op.clone();
            f(&mut changed);
            out.push(changed);
        };
        match op {
            TxOp::Put { .. } | TxOp::Append { .. } => {
                push(&|o| match o {
                    TxOp::Put { uid, .. } | TxOp::Append { uid, .. } => *uid = 0,
                    _ => unreachable!(),
                });
                push(&|o| match o {
                    TxOp::Put { gid, .. } | TxOp::Append { gid, .. } => *gid = 0,
                    _ => unreachable!(),
                });
                push(&|o| match o {
                    TxOp::Put { uid, gid, .. } | TxOp::Append { uid, gid, .. } => (*uid, *gid) = (100, 1000),
                    _ => unreachable!(),
                });
            }
            TxOp::Create { .. } => {
                push(&|o| {
                    if let TxOp::Create { uid, .. } = o {
                        *uid = 0
                    }
                });
                push(&|o| {
                    if let TxOp::Create { gid, .. } = o {
                        *gid = 1
                    }
                });
                push(&|o| {
                    if let TxOp::Create { exclusive, .. } = o {
                        *exclusive = false
                    }
                });
            }
            TxOp::Mkdir { .. } => {
                push(&|o| {
                    if let TxOp::Mkdir { uid, gid, .. } = o {
                        (*uid, *gid) = (0, 0)
                    }
                });
                push(&|o| {
                    if let TxOp::Mkdir { gid, .. } = o {
                        *gid = 7
                    }
                });
            }
            TxOp::Symlink { .. } => {
                push(&|o| {
                    if let TxOp::Symlink { target, .. } = o {
                        target.push('x')
                    }
                });
                push(&|o| {
                    if let TxOp::Symlink { uid, .. } = o {
                        *uid = 0
                    }
                });
                push(&|o| {
                    if let TxOp::Symlink { gid, .. } = o {
                        *gid = 0
                    }
                });
            }
            TxOp::Chown { .. } => {
                push(&|o| {
                    if let TxOp::Chown { uid, .. } = o {
                        *uid = None
                    }
                });
                push(&|o| {
                    if let TxOp::Chown { uid, .. } = o {
                        *uid = Some(0)
                    }
                });
                push(&|o| {
                    if let TxOp::Chown { gid, .. } = o {
                        *gid = None
                    }
                });
                push(&|o| {
                    if let TxOp::Chown { mode, .. } = o {
                        *mode = None
                    }
                });
                push(&|o| {
                    if let TxOp::Chown { mode, .. } = o {
                        *mode = Some(0o4755)
                    }
                });
            }
            TxOp::Times { .. } => {
                push(&|o| {
                    if let TxOp::Times { atime, .. } = o {
                        *atime = None
                    }
                });
                push(&|o| {
                    if let TxOp::Times { atime, .. } = o {
                        *atime = Some(TimeSpec::At(5))
                    }
                });
                push(&|o| {
                    if let TxOp::Times { atime, .. } = o {
                        *atime = Some(TimeSpec::Now)
                    }
                });
                push(&|o| {
                    if let TxOp::Times { mtime, .. } = o {
                        *mtime = Some(TimeSpec::At(0))
                    }
                });
                push(&|o| {
                    if let TxOp::Times { mtime, .. } = o {
                        *mtime = None
                    }
                });
            }
            _ => {}
        }
        out
    }

    #[test]
    fn every_field_of_the_new_ops_is_hashed() {
        let genesis = Block::seal(None, 0, 0, 0, 0, Digest::ZERO, vec![]);
        let block_of =
            |op: TxOp| Block::seal(Some((0, genesis.hash)), 1, 1, 5, 1, Digest::ZERO, vec![tx(1, op)]);
        let mut hashes = std::collections::HashSet::new();
        for op in every_op() {
            let block = block_of(op.clone());
            let json = serde_json::to_string(&block).unwrap();
            let decoded: Block = serde_json::from_str(&json).unwrap();
            assert_eq!(decoded, block, "{op:?} survives JSON");
            assert_eq!(decoded.compute_hash(), block.hash);
            assert!(hashes.insert(block.hash), "{op:?} hashes like another op");
            for changed in one_field_changed(&op) {
                let other = block_of(changed.clone());
                assert_ne!(other.hash, block.hash, "{changed:?} hashes like {op:?}");
                assert!(hashes.insert(other.hash), "{changed:?} hashes like another op");
            }
        }
    }

    #[test]
    fn chains_written_before_owners_and_times_still_verify() {
        // Blocks written by the version before owners, symlinks and times existed.
        let text = include_str!("testdata/chain_before_owners.jsonl");
        let blocks: Vec<Block> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        blocks[0].verify(None).unwrap();
        blocks[1].verify(Some(&blocks[0])).unwrap();
        // And they re-encode to the same JSON: nothing new appears for root's states.
        for (line, block) in text.lines().zip(&blocks) {
            assert_eq!(serde_json::to_string(block).unwrap(), line);
        }
    }

    #[test]
    fn acked_below_is_hashed_and_absent_when_zero() {
        // Blocks made before `acked_below` existed read it as 0 and hash as they did: a 0 is
        // neither encoded nor written, so the JSON is what old code wrote.
        let chain = sample_chain();
        let json = serde_json::to_string(&chain[1]).unwrap();
        assert!(!json.contains("acked_below"));
        let mut with = chain[1].clone();
        with.txs[0].acked_below = 1;
        with.hash = with.compute_hash();
        assert_ne!(with.hash, chain[1].hash);
        let json = serde_json::to_string(&with).unwrap();
        assert!(json.contains(r#""acked_below":1"#));
        assert_eq!(serde_json::from_str::<Block>(&json).unwrap(), with);
    }

    #[test]
    fn broken_links_are_detected() {
        let chain = sample_chain();
        let other = Block::seal(None, 0, 0, 0, 9, Digest::ZERO, vec![]);
        assert!(matches!(chain[1].verify(Some(&other)), Err(LinkError::BadPrev { .. })));
        assert!(matches!(chain[2].verify(Some(&chain[0])), Err(LinkError::BadHeight { .. })));
        let early = Block::seal(Some((chain[1].height, chain[1].hash)), 1, 3, 999, 1, Digest::ZERO, vec![]);
        assert!(matches!(early.verify(Some(&chain[1])), Err(LinkError::BadTimestamp { .. })));
    }
}
