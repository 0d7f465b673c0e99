//! The admin service: a node's status for operators. It answers holders of the cluster token
//! only (the CLI reads it from the data directory); it changes nothing.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::pb;
use crate::store::identity::ClusterToken;

/// What the admin service asks of the node it serves.
pub trait AdminHandler: Send + Sync + 'static {
    /// The node's status document, as JSON.
    fn status_json(&self) -> String;
}

/// Serves `Admin`.
pub struct AdminService {
    /// The node.
    handler: Arc<dyn AdminHandler>,
    /// The token a caller must present.
    token: ClusterToken,
}

impl AdminService {
    /// A service answering from `handler` to holders of `token`.
    pub fn new(handler: Arc<dyn AdminHandler>, token: ClusterToken) -> Self {
        AdminService { handler, token }
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn status(&self, request: Request<pb::StatusRequest>) -> Result<Response<pb::StatusReply>, Status> {
        super::peer::check_token(request.metadata(), &self.token)?;
        Ok(Response::new(pb::StatusReply { json: self.handler.status_json() }))
    }
}

/// Asks the node at `addr` (HOST:PORT) for its status document (JSON), presenting `token`
/// (and, with `tls`, this certificate, trusting only its CA).
pub async fn fetch_status(
    addr: &str,
    timeout: std::time::Duration,
    token: Option<&ClusterToken>,
    tls: Option<&super::tls::PeerTls>,
) -> Result<String, String> {
    let endpoint = super::tls::endpoint(addr, tls)?.connect_timeout(timeout).timeout(timeout);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("cannot reach {addr}: {}", super::tls::error_chain(&e)))?;
    let mut client = pb::admin_client::AdminClient::new(channel);
    let mut request = Request::new(pb::StatusRequest {});
    if let Some(token) = token {
        super::peer::attach_token(request.metadata_mut(), token);
    }
    let reply = client.status(request).await.map_err(|e| format!("{addr}: {}", e.message()))?;
    Ok(reply.into_inner().json)
}
