//! The `Cluster` gRPC service: what members ask each other outside consensus.
//!
//! - `Forward`: a follower's transactions, proposed here on the leader (they join the leader's
//!   next group commit) and answered once applied here, with the entry's log index so the
//!   follower can wait until it has applied that far too.
//! - `ReadIndex`: the leader's read index, for linearizable reads on followers.
//! - `Hello`: what this node knows, for the start-up checks of `bootstrap` and for the
//!   members' once-a-second poll: its head, and its hash at the asker's height (divergence
//!   checks, see `members`), its advertised address, voters and — while it discovers its
//!   cluster — its proposal (`discovery`). A caller with a cluster id must be a member; a caller
//!   without one needs only the token (it may be discovering, or replacing a member that lost
//!   its data), is not checked for its incarnation and leaves no trace: it reads no more than
//!   `lightchain status` shows, and a node with a wiped directory gets an answer that explains
//!   why it is refused.
//! - `Join`: a new node asks to become a member (`membership`). The token is required; the
//!   sender is either the joiner itself (its metadata must match the body) or a member
//!   forwarding it (admitted as any member's message); either way the joiner's id must be the
//!   one derived from its address and incarnation, so no one joins under another's id. A
//!   follower forwards to the leader.

use openraft::async_runtime::WatchReceiver as _;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::services::NodeCell;
use super::Node;
use crate::chain::Transaction;
use crate::rpc::pb::cluster_server::Cluster;
use crate::rpc::pb::{
    ForwardReply, ForwardRequest, HelloReply, HelloRequest, JoinReply, JoinRequest, ReadIndexReply,
    ReadIndexRequest,
};
use crate::rpc::peer;

/// The peer port's services (`Raft`, `Cluster`) over `cell`; snapshots are staged under
/// `staging`.
pub fn peer_routes(cell: &NodeCell, staging: std::path::PathBuf) -> tonic::service::Routes {
    use crate::rpc::pb::cluster_server::ClusterServer;
    use crate::rpc::pb::raft_server::RaftServer;
    use crate::rpc::peer::MAX_MESSAGE_BYTES;
    let raft = RaftServer::new(crate::consensus::raft_service::RaftService::new(
        cell.raft.clone(),
        cell.guard.clone(),
        staging,
    ))
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let cluster = ClusterServer::new(ClusterService::new(cell.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    tonic::service::Routes::new(raft).add_service(cluster)
}

/// Serves `Cluster`.
pub struct ClusterService {
    cell: NodeCell,
}

impl ClusterService {
    /// A service over the node in `cell`.
    pub fn new(cell: NodeCell) -> Self {
        ClusterService { cell }
    }

    fn node(&self) -> Result<&Arc<Node>, Status> {
        self.cell.node.get().ok_or_else(|| Status::unavailable("the node is starting"))
    }
}

fn unavailable(e: super::Error) -> Status {
    Status::unavailable(e.to_string())
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn forward(&self, request: Request<ForwardRequest>) -> Result<Response<ForwardReply>, Status> {
        let node = self.node()?;
        let sender = peer::admit_request(&request, node.guard.as_ref())?;
        let body = request.into_inner();
        let txs: Vec<Transaction> = crate::consensus::codec::decode_message(body.encoding, &body.txs)
            .map_err(|e| Status::invalid_argument(format!("bad transactions: {e}")))?;
        // A member forwards its own transactions only: their ids name it as their origin.
        if let Some(tx) = txs.iter().find(|tx| tx.request.node != sender.node_id) {
            tracing::warn!(
                peer = sender.node_id,
                origin = tx.request.node,
                "refusing a Forward of transactions another node issued"
            );
            return Err(Status::permission_denied(format!(
                "node {} forwarded a transaction of node {}",
                sender.node_id, tx.request.node
            )));
        }
        let applied = node.propose_forwarded(txs).await.map_err(unavailable)?;
        let outcomes: Vec<_> = applied.iter().map(|a| a.outcome).collect();
        let last = applied.iter().max_by_key(|a| a.index).copied();
        let reply = ForwardReply {
            height: last.map_or(0, |a| a.height),
            index: last.map_or(0, |a| a.index),
            outcomes: serde_json::to_vec(&outcomes).expect("outcomes serialize"),
        };
        Ok(peer::response(reply, node.guard.as_ref()))
    }

    async fn read_index(
        &self,
        request: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexReply>, Status> {
        let node = self.node()?;
        peer::admit_request(&request, node.guard.as_ref())?;
        let index = node.leader_read_index().await.map_err(unavailable)?;
        Ok(peer::response(ReadIndexReply { index }, node.guard.as_ref()))
    }

    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        let node = self.node()?;
        let guard = node.guard.as_ref();
        let sender = peer::authenticate_token_holder(&request, guard)?;
        let body = request.get_ref().clone();
        if sender.node_id != body.node_id {
            // A member forwarding a joiner's request.
            peer::admit_request(&request, guard)?;
        } else if sender.incarnation != body.incarnation {
            return Err(Status::permission_denied("a join request's metadata and body name different lives"));
        }
        let addr = super::bootstrap::normalize(&body.addr);
        if sender.node_id == body.node_id && peer::PeerGuard::binds_certificates(guard) {
            // The joiner itself: with mutual TLS its certificate must name the address it claims,
            // so it cannot take another member's place (a forwarding member checked it already).
            peer::check_certificate(&request, body.node_id, &addr)?;
        }
        if body.node_id != crate::store::identity::node_id_for_joiner(&addr, body.incarnation) {
            tracing::warn!(node = body.node_id, %addr, "refusing a join under an id not derived from the joiner's address and incarnation");
            return Err(Status::permission_denied(format!(
                "node id {} is not the one derived from address {addr} and incarnation {}",
                body.node_id, body.incarnation
            )));
        }
        match node.admit_joiner(&addr, body.node_id).await {
            Ok(reply) => Ok(peer::response(reply, guard)),
            Err(super::membership::MemberError::NotLeader { id: leader_id, addr: leader }) => {
                let channel = node.channels.get(&leader).map_err(Status::unavailable)?;
                let forwarded = peer::request_to(body, guard, std::time::Duration::from_secs(25), leader_id);
                let response =
                    crate::rpc::pb::cluster_client::ClusterClient::new(channel).join(forwarded).await?;
                peer::admit_response(&response, guard).map_err(Status::unavailable)?;
                Ok(peer::response(response.into_inner(), guard))
            }
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }

    async fn hello(&self, request: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        // A caller that has a genesis is an established member: remember its incarnation (and
        // refuse it if it changed). A caller without one is a new node deciding how to start:
        // answer, but remember nothing, so a refused attempt leaves no trace.
        // Either way the caller must hold the token; a member must be one (a new node is not
        // yet: it may be discovering its cluster, or replace a member that lost its data).
        // A member names this node (`lc-to`, as every member's message does); a node that
        // does not know whom it asks (discovery, start-up checks) is answered as a new node.
        let meta = peer::authenticate_token_holder(&request, self.cell.guard.as_ref())?;
        if !meta.cluster_id.is_empty() && peer::names_target(&request) {
            peer::admit_request(&request, self.cell.guard.as_ref())?;
        }
        let from = Some(meta.node_id);
        let asked = request.get_ref().head_height;
        let guard = self.cell.guard.as_ref();
        let local = peer::PeerGuard::local(guard);
        let head = self.cell.node.get().and_then(|n| n.replica().head);
        // This node's hash at the asker's height, so the asker can compare (old heights are
        // read from chain/, off the async threads).
        let hash_at_asked = match (self.cell.node.get(), asked) {
            (Some(node), Some(height)) if head.is_some_and(|h| h.height >= height) => {
                let hashes = node.shared.hashes.clone();
                match tokio::task::spawn_blocking(move || hashes.get(height)).await {
                    Ok(Ok(Some(hash))) => hash.0.to_vec(),
                    _ => Vec::new(),
                }
            }
            _ => Vec::new(),
        };
        let reply = HelloReply {
            cluster_id: local.cluster_id.clone(),
            has_genesis: head.is_some() || !local.cluster_id.is_empty(),
            head_height: head.map(|h| h.height),
            known_incarnation: from.filter(|f| *f != local.node_id).and_then(|f| guard.known_incarnation(f)),
            node_id: local.node_id,
            ready: self.cell.node.get().is_some_and(|n| n.is_ready()),
            head_hash: head.map_or_else(Vec::new, |h| h.hash.0.to_vec()),
            hash_at_asked,
            addr: self.cell.advertise.clone(),
            voters: self.cell.raft.get().map_or_else(Vec::new, |raft| {
                raft.metrics().borrow_watched().membership_config.membership().voter_ids().collect()
            }),
            bootstrap: self.cell.bootstrap.lock().unwrap().as_ref().map(|p| p.to_pb()),
        };
        Ok(peer::response(reply, guard))
    }
}
