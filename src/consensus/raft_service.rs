//! The `Raft` gRPC service: peers' consensus messages into this node's openraft.
//!
//! Every request's metadata is admitted first (see `rpc::peer`: token, member, incarnation),
//! then the payload must speak for its sender only: a vote's candidate, and the leader of
//! append-entries and of a snapshot, must be the sending node, and that node must be a voter of
//! this node's membership (a learner or a removed member claiming leadership is refused with
//! `PERMISSION_DENIED`, see `PeerGuard::authorize_voter`). Only then are append entries and
//! vote handed to openraft. AppendEntries also arrive on a long-lived stream
//! (`AppendStream`), admitted when it opens and each message again (the sender may have left
//! the membership since). A streamed snapshot (at most `MAX_SNAPSHOT_BYTES` of blocks) is staged under `tmp/` as a chain
//! segment — the manifest first, then the blocks this node lacks — and installed whole with
//! `install_full_snapshot`, so the state machine appends and verifies them in order.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::network::SnapshotHeader;
use super::state_machine::SnapshotData;
use super::typ::{Raft, Snapshot};
use crate::rpc::pb::raft_server::Raft as RaftRpc;
use crate::rpc::pb::{Encoding, RaftMessage, SnapshotChunk};
use crate::rpc::peer::{self, PeerGuard, PeerMeta, MAX_SNAPSHOT_BYTES};

/// Serves `Raft`.
pub struct RaftService {
    raft: Arc<OnceLock<Raft>>,
    guard: Arc<dyn PeerGuard>,
    staging: PathBuf,
    counter: AtomicU64,
}

impl RaftService {
    /// A service feeding `raft` (once it is set); snapshots are staged under `staging`.
    pub fn new(raft: Arc<OnceLock<Raft>>, guard: Arc<dyn PeerGuard>, staging: PathBuf) -> Self {
        RaftService { raft, guard, staging, counter: AtomicU64::new(0) }
    }

    fn raft(&self) -> Result<&Raft, Status> {
        self.raft.get().ok_or_else(|| Status::unavailable("consensus is starting"))
    }

    fn reply(&self, payload: Vec<u8>) -> Response<RaftMessage> {
        peer::response(RaftMessage { payload, encoding: Encoding::Json as i32 }, self.guard.as_ref())
    }

    async fn stage(
        &self,
        stream: &mut Streaming<SnapshotChunk>,
        dir: &PathBuf,
        sender: &PeerMeta,
    ) -> Result<SnapshotHeader, Status> {
        let first =
            stream.message().await?.ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        let header: SnapshotHeader = serde_json::from_slice(&first.header)
            .map_err(|e| Status::invalid_argument(format!("bad snapshot header: {e}")))?;
        peer::check_sender(sender, Some(header.vote.leader_id.node_id), "snapshot")?;
        peer::check_voter(sender, self.guard.as_ref(), "snapshot")?;
        std::fs::create_dir_all(dir).map_err(|e| Status::internal(e.to_string()))?;
        let mut file = std::fs::File::create(dir.join(format!("{:020}.jsonl", 0)))
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut complete = false;
        let mut total = 0u64;
        while let Some(chunk) = stream.message().await? {
            total += chunk.blocks.len() as u64;
            if total > MAX_SNAPSHOT_BYTES {
                return Err(Status::resource_exhausted(format!(
                    "the snapshot stream exceeds {MAX_SNAPSHOT_BYTES} bytes of blocks"
                )));
            }
            file.write_all(&chunk.blocks).map_err(|e| Status::internal(e.to_string()))?;
            complete = chunk.last;
        }
        if !complete {
            return Err(Status::aborted("the snapshot stream ended before its last chunk"));
        }
        Ok(header)
    }
}

/// One AppendEntries from `sender` (admitted), into openraft: the encoded answer.
async fn append(
    raft: &OnceLock<Raft>,
    guard: &dyn PeerGuard,
    sender: &PeerMeta,
    message: &RaftMessage,
) -> Result<Vec<u8>, Status> {
    let rpc: openraft::raft::AppendEntriesRequest<super::TypeConfig> = decode(message)?;
    peer::check_sender(sender, Some(rpc.vote.leader_id.node_id), "append-entries")?;
    peer::check_voter(sender, guard, "append-entries")?;
    let raft = raft.get().ok_or_else(|| Status::unavailable("consensus is starting"))?;
    tracing::debug!("append_entries received");
    let r = raft.append_entries(rpc).await;
    tracing::debug!("append_entries answered");
    Ok(json(&r))
}

fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("openraft messages serialize")
}

fn decode<T: serde::de::DeserializeOwned>(message: &RaftMessage) -> Result<T, Status> {
    super::codec::decode_message(message.encoding, &message.payload)
        .map_err(|e| Status::invalid_argument(format!("bad raft message: {e}")))
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let sender = peer::admit_request(&request, self.guard.as_ref())?;
        let answer = append(&self.raft, self.guard.as_ref(), &sender, request.get_ref()).await?;
        Ok(self.reply(answer))
    }

    type AppendStreamStream = ReceiverStream<Result<RaftMessage, Status>>;

    async fn append_stream(
        &self,
        request: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        let sender = peer::admit_request(&request, self.guard.as_ref())?;
        let (raft, guard) = (self.raft.clone(), self.guard.clone());
        let mut requests = request.into_inner();
        let (answers, answered) = mpsc::channel(1);
        tokio::spawn(async move {
            // Ends when the sender closes the stream or a message is refused (its status ends
            // the stream; the sender opens a new one, admitted afresh).
            while let Ok(Some(message)) = requests.message().await {
                let answer = match peer::readmit(&sender, guard.as_ref()) {
                    Ok(()) => append(&raft, guard.as_ref(), &sender, &message).await,
                    Err(refused) => Err(refused),
                };
                let refused = answer.is_err();
                let answer = answer.map(|payload| RaftMessage { payload, encoding: Encoding::Json as i32 });
                if answers.send(answer).await.is_err() || refused {
                    return;
                }
            }
        });
        Ok(peer::response(ReceiverStream::new(answered), self.guard.as_ref()))
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let sender = peer::admit_request(&request, self.guard.as_ref())?;
        let rpc: openraft::raft::VoteRequest<super::TypeConfig> = decode(request.get_ref())?;
        peer::check_sender(&sender, Some(rpc.vote.leader_id.node_id), "vote request")?;
        peer::check_voter(&sender, self.guard.as_ref(), "vote request")?;
        Ok(self.reply(json(&self.raft()?.vote(rpc).await)))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftMessage>, Status> {
        let sender = peer::admit_request(&request, self.guard.as_ref())?;
        let raft = self.raft()?.clone();
        let mut stream = request.into_inner();
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let dir = self.staging.join(format!("snapshot-{}-{n}", std::process::id()));
        let staged = self.stage(&mut stream, &dir, &sender).await;
        let header = match staged {
            Ok(h) => h,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let meta = header.manifest.meta.clone();
        let data = SnapshotData { manifest: header.manifest, staged_blocks: Some(dir.clone()) };
        let result = raft.install_full_snapshot(header.vote, Snapshot { meta, snapshot: data }).await;
        let _ = std::fs::remove_dir_all(&dir);
        Ok(self.reply(json(&result)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use openraft::raft::AppendEntriesRequest;
    use tonic::transport::server::TcpIncoming;

    use super::*;
    use crate::consensus::typ::Vote;
    use crate::rpc::pb::raft_client::RaftClient;
    use crate::rpc::pb::raft_server::RaftServer;
    use crate::store::identity::{ClusterToken, Tokens};

    /// Node `id` of cluster "c"; it lets node 1 in while `member` holds.
    struct Guard {
        id: u64,
        token: Tokens,
        member: AtomicBool,
    }

    impl PeerGuard for Guard {
        fn local(&self) -> PeerMeta {
            PeerMeta { cluster_id: "c".into(), node_id: self.id, incarnation: 1 }
        }
        fn tokens(&self) -> &Tokens {
            &self.token
        }
        fn authorize(&self, node: u64) -> Result<(), String> {
            match node == 1 && self.member.load(Ordering::SeqCst) {
                true => Ok(()),
                false => Err(format!("node {node} is not a member")),
            }
        }
        fn admit(&self, _remote: &PeerMeta) -> Result<(), String> {
            Ok(())
        }
    }

    /// An empty AppendEntries from node 1 as leader.
    fn append_from_leader_1() -> RaftMessage {
        let rpc = AppendEntriesRequest::<super::super::TypeConfig> {
            vote: Vote::new(1, 1),
            prev_log_id: None,
            entries: vec![],
            leader_commit: None,
        };
        RaftMessage { payload: super::super::codec::to_binary(&rpc), encoding: Encoding::Binary as i32 }
    }

    /// Opens an append stream from node 1 to `addr`, sends one message, and returns the code
    /// of the answer (the service here has no consensus yet, so an admitted message meets
    /// `UNAVAILABLE`), after `between` ran between the open and the message.
    async fn one_message(addr: std::net::SocketAddr, sender: &Guard, between: impl FnOnce()) -> tonic::Code {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let (requests, queued) = mpsc::channel(1);
        let request = peer::stream_request_to(ReceiverStream::new(queued), sender, 2);
        let mut answers =
            RaftClient::new(channel).append_stream(request).await.expect("admitted at open").into_inner();
        between();
        requests.send(append_from_leader_1()).await.unwrap();
        answers.message().await.expect_err("no consensus here: every message is refused").code()
    }

    #[tokio::test]
    async fn a_sender_that_leaves_the_membership_is_refused_on_the_stream_it_opened_before() {
        let token = Tokens::new(ClusterToken::generate());
        let receiver = Arc::new(Guard { id: 2, token: token.clone(), member: AtomicBool::new(true) });
        let staging = tempfile::tempdir().unwrap();
        let service =
            RaftService::new(Arc::new(OnceLock::new()), receiver.clone(), staging.path().to_owned());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RaftServer::new(service))
                .serve_with_incoming(TcpIncoming::from(listener)),
        );
        let sender = Guard { id: 1, token, member: AtomicBool::new(true) };
        // Still a member: the message passes admission and reaches consensus (not started here).
        assert_eq!(one_message(addr, &sender, || {}).await, tonic::Code::Unavailable);
        // Removed between the open and the message: refused, though the stream was admitted.
        let removed = || receiver.member.store(false, Ordering::SeqCst);
        assert_eq!(one_message(addr, &sender, removed).await, tonic::Code::PermissionDenied);
    }
}
