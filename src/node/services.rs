//! The node's gRPC services, served from before the node exists.
//!
//! Members bootstrap together: each must answer its peers' `Hello` while it is itself still
//! deciding how to start. So the server starts first, over cells that are filled once
//! consensus runs; until then `Hello` answers from the identity (the cluster id is known once
//! a genesis was applied), the admin status says `"ready": false`, and everything else is
//! `UNAVAILABLE`.

use std::sync::{Arc, OnceLock};

use super::guard::NodeGuard;
use super::Node;
use crate::consensus::typ::Raft;
use crate::rpc::admin::AdminHandler;

/// Where the services find the node once it runs.
#[derive(Clone)]
pub struct NodeCell {
    /// The node, once started.
    pub node: Arc<OnceLock<Arc<Node>>>,
    /// Consensus, once started (before the node is complete).
    pub raft: Arc<OnceLock<Raft>>,
    /// Peer admission (exists from the start).
    pub guard: Arc<NodeGuard>,
    /// The address this node advertises, for `Hello` answers.
    pub advertise: String,
    /// This node's proposal while it discovers its first members (`discovery`).
    pub bootstrap: super::discovery::Shared,
}

impl NodeCell {
    /// Empty cells around `guard`, for a node advertising `advertise`.
    pub fn new(guard: Arc<NodeGuard>, advertise: String) -> NodeCell {
        NodeCell { node: Arc::default(), raft: Arc::default(), guard, advertise, bootstrap: Arc::default() }
    }
}

#[tonic::async_trait]
impl AdminHandler for NodeCell {
    fn status_json(&self) -> String {
        match self.node.get() {
            Some(node) => node.status_json(),
            None => {
                let local = crate::rpc::peer::PeerGuard::local(self.guard.as_ref());
                serde_json::json!({ "node_id": local.node_id, "ready": false, "starting": true }).to_string()
            }
        }
    }

    async fn member(&self, op: crate::rpc::pb::MemberOp, id: u64) -> Result<String, tonic::Status> {
        let node = self.node.get().ok_or_else(|| tonic::Status::unavailable("the node is starting"))?;
        AdminHandler::member(node.as_ref(), op, id).await
    }

    async fn token(
        &self,
        op: crate::rpc::pb::TokenOp,
        token: crate::store::identity::ClusterToken,
    ) -> Result<String, tonic::Status> {
        let node = self.node.get().ok_or_else(|| tonic::Status::unavailable("the node is starting"))?;
        AdminHandler::token(node.as_ref(), op, token).await
    }

    async fn limits(&self, max_state_size: u64) -> Result<String, tonic::Status> {
        let node = self.node.get().ok_or_else(|| tonic::Status::unavailable("the node is starting"))?;
        AdminHandler::limits(node.as_ref(), max_state_size).await
    }
}
