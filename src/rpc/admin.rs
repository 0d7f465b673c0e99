//! The admin service: a node's status for operators.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::pb;
use crate::node::Node;

/// Serves `Admin`.
pub struct AdminService {
    node: Arc<Node>,
}

impl AdminService {
    /// A service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        AdminService { node }
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn status(&self, _request: Request<pb::StatusRequest>) -> Result<Response<pb::StatusReply>, Status> {
        let json = serde_json::to_string(&self.node.status()).expect("status serializes");
        Ok(Response::new(pb::StatusReply { json }))
    }
}

/// Asks the node at `addr` (HOST:PORT) for its status document.
pub async fn fetch_status(addr: &str, timeout: std::time::Duration) -> Result<crate::node::Status, String> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("bad address {addr}: {e}"))?
        .connect_timeout(timeout)
        .timeout(timeout);
    let channel = endpoint.connect().await.map_err(|e| format!("cannot reach {addr}: {e}"))?;
    let mut client = pb::admin_client::AdminClient::new(channel);
    let reply = client.status(pb::StatusRequest {}).await.map_err(|e| format!("{addr}: {}", e.message()))?;
    serde_json::from_str(&reply.into_inner().json).map_err(|e| format!("{addr}: bad status document: {e}"))
}
