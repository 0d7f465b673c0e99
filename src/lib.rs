//! lightchain: a FUSE filesystem that is a small replicated blockchain.
//!
//! Layers, bottom up; each uses only layers listed before it:
//!
//! - [`chain`]: state IDs, transactions, blocks, hashing, the tree of states — pure.
//! - [`store`]: the backing directory: identity, chain segments, `states/`, repair.
//! - [`rpc`]: the gRPC protocol from `proto/`, peer metadata and connections, the server;
//!   services answer through handler traits and never call up.
//! - [`consensus`]: openraft glue — log storage, the state machine that turns entries into
//!   blocks, the network and the raft service over `rpc`.
//! - [`node`]: the Node API — propose, read, status — over consensus: group commit,
//!   forwarding to the leader, read indexes, start-up of a cluster.
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
