//! The chain: state IDs, transactions, blocks, hashing and the tree of states they build.
//!
//! Everything here is pure — no clock, no randomness, no I/O, no async — so it is unit-tested
//! directly and behaves identically on every node. Layers above decide *when* to build a block
//! (consensus) and *where* to keep it (store); this layer decides what a block is, whether one
//! is valid, and what applying its transactions does to the tree.
//!
//! See `docs/architecture/chain.md`.

mod block;
mod build;
pub mod dedup;
mod limits;
mod state_id;
mod tree;
mod tx;

pub use block::{Block, BlockHash, BlockTx, Digest, Height, LinkError};
pub use build::{apply_batch, replay, LogPosition, ReplayError, Tip};
pub use limits::{admit, Limits, DEFAULT_MAX_STATE_SIZE, MAX_STATE_SIZE_CAP};
pub use state_id::{StateId, StateIdError, CONTROL_DIR, MAX_COMPONENT_LEN, MAX_PATH_LEN};
pub use tree::{
    mode_after_unprivileged_write, ApplyCtx, Change, Entry, EntryKind, InodeNo, Tree, ROOT_INO, SYMLINK_MODE,
};
pub use tx::{
    Batch, Content, Members, NodeId, Outcome, Reject, RenameMode, RequestId, TimeSpec, Transaction, TxOp,
    MAX_SYMLINK_TARGET,
};
