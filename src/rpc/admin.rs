//! The admin service: a node's status and its membership for operators. It answers holders of
//! the cluster token only (the CLI reads it from the data directory). `Status` changes nothing;
//! `Member` lists, removes or promotes members (`lightchain member`); `Limits` shows or changes
//! the cluster-wide limits (`lightchain limits`).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::pb;
use crate::store::identity::{ClusterToken, Tokens};

/// What the admin service asks of the node it serves.
#[tonic::async_trait]
pub trait AdminHandler: Send + Sync + 'static {
    /// The node's status document, as JSON.
    fn status_json(&self) -> String;
    /// Lists (`id` unused), removes or promotes a member; the members afterwards as JSON, or
    /// why not (`UNAVAILABLE` when there is no leader, `FAILED_PRECONDITION` for a refused change).
    async fn member(&self, op: pb::MemberOp, id: u64) -> Result<String, Status>;
    /// The cluster's limits as JSON, after setting `max_state_size` if it is not 0.
    async fn limits(&self, max_state_size: u64) -> Result<String, Status>;
    /// A token rotation step on this node, or (`Rotate`) a whole rotation across the members;
    /// JSON of where it stands (never a token).
    async fn token(&self, op: pb::TokenOp, token: ClusterToken) -> Result<String, Status>;
}

/// Serves `Admin`.
pub struct AdminService {
    /// The node.
    handler: Arc<dyn AdminHandler>,
    /// The tokens a caller may present (the node's, which a rotation changes).
    token: Tokens,
}

impl AdminService {
    /// A service answering from `handler` to holders of `token`.
    pub fn new(handler: Arc<dyn AdminHandler>, token: Tokens) -> Self {
        AdminService { handler, token }
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn status(&self, request: Request<pb::StatusRequest>) -> Result<Response<pb::StatusReply>, Status> {
        super::peer::check_token(request.metadata(), &self.token)?;
        Ok(Response::new(pb::StatusReply { json: self.handler.status_json() }))
    }

    async fn member(&self, request: Request<pb::MemberRequest>) -> Result<Response<pb::MemberReply>, Status> {
        super::peer::check_token(request.metadata(), &self.token)?;
        let body = request.into_inner();
        let op = pb::MemberOp::try_from(body.op)
            .map_err(|_| Status::invalid_argument("unknown member operation"))?;
        let json = self.handler.member(op, body.id).await?;
        Ok(Response::new(pb::MemberReply { json }))
    }

    async fn token(&self, request: Request<pb::TokenRequest>) -> Result<Response<pb::TokenReply>, Status> {
        super::peer::check_token(request.metadata(), &self.token)?;
        let body = request.into_inner();
        let op = pb::TokenOp::try_from(body.op)
            .map_err(|_| Status::invalid_argument("unknown token operation"))?;
        let token = match op {
            pb::TokenOp::Status => self.token.current(),
            _ => ClusterToken::parse(&body.token).map_err(Status::invalid_argument)?,
        };
        let json = self.handler.token(op, token).await?;
        Ok(Response::new(pb::TokenReply { json }))
    }

    async fn limits(&self, request: Request<pb::LimitsRequest>) -> Result<Response<pb::LimitsReply>, Status> {
        super::peer::check_token(request.metadata(), &self.token)?;
        let json = self.handler.limits(request.into_inner().max_state_size).await?;
        Ok(Response::new(pb::LimitsReply { json }))
    }
}

/// An Admin client on the node at `addr` (HOST:PORT), with mutual TLS when `tls` is given
/// (presenting that certificate, trusting only its CA); requests time out after `timeout`.
async fn admin_client(
    addr: &str,
    timeout: std::time::Duration,
    tls: Option<&super::tls::PeerTls>,
) -> Result<pb::admin_client::AdminClient<tonic::transport::Channel>, String> {
    let endpoint = super::tls::endpoint(addr, tls)?
        .connect_timeout(std::time::Duration::from_secs(5).min(timeout))
        .timeout(timeout);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("cannot reach {addr}: {}", super::tls::error_chain(&e)))?;
    Ok(pb::admin_client::AdminClient::new(channel))
}

/// `message` carrying `token` if there is one.
fn with_token<T>(message: T, token: Option<&ClusterToken>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        super::peer::attach_token(request.metadata_mut(), token);
    }
    request
}

/// Asks the node at `addr` for the cluster's limits, setting `max_state_size` first unless it
/// is 0, presenting `token` (and `tls`, see [`admin_client`]); the limits afterwards (JSON).
pub async fn limits_call(
    addr: &str,
    timeout: std::time::Duration,
    token: Option<&ClusterToken>,
    tls: Option<&super::tls::PeerTls>,
    max_state_size: u64,
) -> Result<String, String> {
    let mut client = admin_client(addr, timeout, tls).await?;
    let request = with_token(pb::LimitsRequest { max_state_size }, token);
    let reply = client.limits(request).await.map_err(|e| format!("{addr}: {}", e.message()))?;
    Ok(reply.into_inner().json)
}

/// Asks the node at `addr` for a token operation (`op`, with the new `new_token`), presenting
/// `token` (and `tls`); where it stands afterwards (JSON).
pub async fn token_call(
    addr: &str,
    timeout: std::time::Duration,
    token: Option<&ClusterToken>,
    tls: Option<&super::tls::PeerTls>,
    op: pb::TokenOp,
    new_token: &str,
) -> Result<String, String> {
    let mut client = admin_client(addr, timeout, tls).await?;
    let request = with_token(pb::TokenRequest { op: op as i32, token: new_token.to_owned() }, token);
    let reply = client.token(request).await.map_err(|e| format!("{addr}: {}", e.message()))?;
    Ok(reply.into_inner().json)
}

/// Asks the node at `addr` to list, remove or promote a member, presenting `token` (and
/// `tls`); the members afterwards (JSON).
pub async fn member_call(
    addr: &str,
    timeout: std::time::Duration,
    token: Option<&ClusterToken>,
    tls: Option<&super::tls::PeerTls>,
    op: pb::MemberOp,
    id: u64,
) -> Result<String, String> {
    let mut client = admin_client(addr, timeout, tls).await?;
    let request = with_token(pb::MemberRequest { op: op as i32, id }, token);
    let reply = client.member(request).await.map_err(|e| format!("{addr}: {}", e.message()))?;
    Ok(reply.into_inner().json)
}

/// Asks the node at `addr` (HOST:PORT) for its status document (JSON), presenting `token`
/// (and, with `tls`, this certificate, trusting only its CA).
pub async fn fetch_status(
    addr: &str,
    timeout: std::time::Duration,
    token: Option<&ClusterToken>,
    tls: Option<&super::tls::PeerTls>,
) -> Result<String, String> {
    let mut client = admin_client(addr, timeout, tls).await?;
    let request = with_token(pb::StatusRequest {}, token);
    let reply = client.status(request).await.map_err(|e| format!("{addr}: {}", e.message()))?;
    Ok(reply.into_inner().json)
}
