//! The admin service: a node's status for operators.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::pb;

/// What the admin service asks of the node it serves.
pub trait AdminHandler: Send + Sync + 'static {
    /// The node's status document, as JSON.
    fn status_json(&self) -> String;
}

/// Serves `Admin`.
pub struct AdminService {
    handler: Arc<dyn AdminHandler>,
}

impl AdminService {
    /// A service answering from `handler`.
    pub fn new(handler: Arc<dyn AdminHandler>) -> Self {
        AdminService { handler }
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        Ok(Response::new(pb::StatusReply { json: self.handler.status_json() }))
    }
}

/// Asks the node at `addr` (HOST:PORT) for its status document (JSON).
pub async fn fetch_status(addr: &str, timeout: std::time::Duration) -> Result<String, String> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("bad address {addr}: {e}"))?
        .connect_timeout(timeout)
        .timeout(timeout);
    let channel = endpoint.connect().await.map_err(|e| format!("cannot reach {addr}: {e}"))?;
    let mut client = pb::admin_client::AdminClient::new(channel);
    let reply = client.status(pb::StatusRequest {}).await.map_err(|e| format!("{addr}: {}", e.message()))?;
    Ok(reply.into_inner().json)
}
