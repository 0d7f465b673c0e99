//! lightchain: a FUSE filesystem that is a small replicated blockchain.
//!
//! Layers, in dependency order (each depends only on the ones above it in this list):
//!
//! - [`chain`]: state IDs, transactions, blocks, hashing, the tree of states — pure.
//! - [`store`]: the backing directory: identity, chain segments, `states/`, repair.
//! - [`consensus`]: openraft glue — log storage, the state machine that turns entries into
//!   blocks, the network.
//! - [`rpc`]: gRPC services generated from `proto/`, answering through handler traits.
//! - [`node`]: the Node API — propose, read, status — over consensus; implements the rpc
//!   handlers.
//! - [`fs`]: filesystem semantics over the Node API, and the thin fuser adapter.
//! - [`cli`]: flags, start-up, signals.
//!
//! `docs/architecture/` has one page per layer.

pub mod chain;
pub mod cli;
pub mod consensus;
pub mod fs;
pub mod node;
pub mod rpc;
pub mod store;
