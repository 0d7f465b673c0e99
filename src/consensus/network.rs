//! How this node reaches its peers for consensus: openraft's RPCs over gRPC.
//!
//! [`Network`] hands openraft one [`PeerClient`] per target; each takes a clone of the
//! shared lazily connecting channel to that peer (never dialling inside openraft's core),
//! stamps every request with this node's metadata and the deadline openraft gives, and admits
//! the answer's metadata before believing it. AppendEntries requests travel in the binary
//! encoding of [`codec`](super::codec) (1 MiB states as raw bytes); votes and answers, small,
//! in JSON. What one AppendEntries carries is bounded by the log reader
//! ([`MAX_APPEND_BYTES`]; openraft 0.10 has no `PayloadTooLarge` to refuse a request with), and
//! an over-large one is still refused here rather than sent, as an error openraft retries; a
//! single larger entry goes alone (message limits allow it). A refusal by the peer (an error
//! openraft raised there) comes back as `Unreachable`: 0.10's network errors carry no remote
//! error, and `Unreachable` makes openraft back off as it did for one in 0.9.
//!
//! Appends are sent one at a time per peer (openraft's sequential `stream_append`): the leader
//! pipelines its own fsync with the send, not several sends with each other. They go over one
//! long-lived `AppendStream` per client, one message each way per append: a unary call costs
//! three HTTP/2 frames out (headers, data, end of stream; tonic's server waits for the last
//! before it dispatches), a new stream and task on the receiver, and as many wake-ups. Measured
//! between idle processes here, a stream's round trip is 26–47 µs p50 against 101–347 µs for a
//! unary call (write-path.md). A peer without the stream (an earlier version) gets unary calls.
//!
//! Snapshots are streamed, and carry the chain: the client asks the follower how far its
//! chain goes (`Cluster.Hello`), then sends the snapshot manifest followed by every block the
//! follower lacks, read from `chain/`. The cost of a transfer is the missing history, never
//! the whole of it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    Fatal, NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::typ::{Snapshot, Vote};
use super::TypeConfig;
use super::MAX_APPEND_BYTES;
use crate::rpc::pb::cluster_client::ClusterClient;
use crate::rpc::pb::raft_client::RaftClient;
use crate::rpc::pb::{Encoding, HelloRequest, RaftMessage, SnapshotChunk};
use crate::rpc::peer::{self, Channels, PeerGuard, MAX_MESSAGE_BYTES};

/// How long a snapshot transfer (and the follower's install) may take.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(300);

/// Blocks of JSON per snapshot chunk, at most (bytes).
const CHUNK_BYTES: usize = 1 << 20;

/// The header of a streamed snapshot.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct SnapshotHeader {
    /// The leader's vote.
    pub vote: Vote,
    /// Where the chain stood.
    pub manifest: super::state_machine::Manifest,
}

/// Hands out one client per peer.
#[derive(Clone)]
pub struct Network {
    channels: Channels,
    guard: Arc<dyn PeerGuard>,
    chain_dir: PathBuf,
}

impl Network {
    /// A network over shared channels; snapshots are read from `chain_dir`.
    pub fn new(channels: Channels, guard: Arc<dyn PeerGuard>, chain_dir: PathBuf) -> Network {
        Network { channels, guard, chain_dir }
    }
}

/// A client for one peer.
pub struct PeerClient {
    target: u64,
    addr: String,
    channels: Channels,
    guard: Arc<dyn PeerGuard>,
    chain_dir: PathBuf,
    /// The open `AppendStream`, between appends (taken while one is in flight, so an append
    /// cancelled or failed midway drops the stream and no late answer is read as the next).
    stream: Option<AppendStream>,
    /// The peer has no `AppendStream` (an earlier version): appends go as unary calls.
    unary_appends: bool,
}

/// An open `AppendStream`: requests go in, answers come back in order, one at a time.
struct AppendStream {
    requests: mpsc::Sender<RaftMessage>,
    answers: tonic::Streaming<RaftMessage>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerClient {
        PeerClient {
            target,
            addr: node.addr.clone(),
            channels: self.channels.clone(),
            guard: self.guard.clone(),
            chain_dir: self.chain_dir.clone(),
            stream: None,
            unary_appends: false,
        }
    }
}

/// Why a call to a peer failed, before openraft's error types are chosen.
enum CallError {
    /// The peer could not be reached or refused us (down, partitioned, other cluster, or a new
    /// node at the address of the member addressed): openraft backs off before it retries.
    Unreachable(String),
    /// Something else went wrong on the way.
    Network(String),
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Message(String);

impl CallError {
    fn from_status(status: tonic::Status) -> CallError {
        use tonic::Code;
        match status.code() {
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::FailedPrecondition
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::Unknown => CallError::Unreachable(status.to_string()),
            _ => CallError::Network(status.to_string()),
        }
    }

    fn into_rpc(self) -> RPCError<TypeConfig> {
        match self {
            CallError::Unreachable(m) => RPCError::Unreachable(Unreachable::new(&Message(m))),
            CallError::Network(m) => RPCError::Network(NetworkError::new(&Message(m))),
        }
    }
}

/// A peer's answer to an openraft request: openraft's own result, or why there was none.
type Answer<Resp> = Result<Result<Resp, RaftError<TypeConfig>>, CallError>;

/// Decodes openraft's result from a peer's answer.
fn decode_answer<T: DeserializeOwned>(answer: RaftMessage) -> Result<T, CallError> {
    super::codec::decode_message(answer.encoding, &answer.payload)
        .map_err(|e| CallError::Network(e.to_string()))
}

impl PeerClient {
    fn raft_client(&self) -> Result<RaftClient<tonic::transport::Channel>, CallError> {
        let channel = self.channels.get(&self.addr).map_err(CallError::Network)?;
        Ok(RaftClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// Sends one encoded openraft request; decodes openraft's `Result` from the answer.
    async fn call<Resp: DeserializeOwned, E: DeserializeOwned>(
        &self,
        kind: &'static str,
        message: RaftMessage,
        timeout: Duration,
    ) -> Result<Result<Resp, E>, CallError> {
        let mut client = self.raft_client()?;
        let request = peer::request_to(message, self.guard.as_ref(), timeout, self.target);
        let response = match kind {
            "append" => client.append_entries(request).await,
            _ => client.vote(request).await,
        }
        .map_err(CallError::from_status)?;
        peer::admit_response_from(&response, self.guard.as_ref(), self.target)
            .map_err(CallError::Unreachable)?;
        decode_answer(response.into_inner())
    }

    /// [`call`](Self::call) with openraft's error types.
    async fn raft_rpc<Resp: DeserializeOwned>(
        &self,
        kind: &'static str,
        message: RaftMessage,
        timeout: Duration,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        self.raft_result(self.call::<Resp, RaftError<TypeConfig>>(kind, message, timeout).await)
    }

    /// openraft's error types for an answer: an error openraft raised on the peer (it stopped,
    /// say) makes the peer unreachable for now.
    fn raft_result<Resp>(&self, answer: Answer<Resp>) -> Result<Resp, RPCError<TypeConfig>> {
        match answer {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(remote)) => {
                Err(CallError::Unreachable(format!("peer {}: {remote}", self.target)).into_rpc())
            }
            Err(e) => Err(e.into_rpc()),
        }
    }

    /// Opens an `AppendStream` and admits the peer's answer; `None` when the peer does not
    /// serve one.
    async fn open_stream(&self, timeout: Duration) -> Result<Option<AppendStream>, CallError> {
        let mut client = self.raft_client()?;
        let (requests, queued) = mpsc::channel(1);
        let request = peer::stream_request_to(ReceiverStream::new(queued), self.guard.as_ref(), self.target);
        let opened = tokio::time::timeout(timeout, client.append_stream(request)).await.map_err(|_| {
            CallError::Unreachable(format!("peer {}: no append stream within {timeout:?}", self.target))
        })?;
        let response = match opened {
            Ok(response) => response,
            Err(status) if status.code() == tonic::Code::Unimplemented => return Ok(None),
            Err(status) => return Err(CallError::from_status(status)),
        };
        peer::admit_response_from(&response, self.guard.as_ref(), self.target)
            .map_err(CallError::Unreachable)?;
        Ok(Some(AppendStream { requests, answers: response.into_inner() }))
    }

    /// One AppendEntries on the stream (opened first if none is). `Err(message)` gives the
    /// message back when the peer does not serve one. The stream is kept only after a whole
    /// exchange within `timeout`.
    async fn append_on_stream(
        &mut self,
        message: RaftMessage,
        timeout: Duration,
    ) -> Result<Answer<AppendEntriesResponse<TypeConfig>>, RaftMessage> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut stream = match self.stream.take() {
            Some(stream) => stream,
            None => match self.open_stream(timeout).await {
                Ok(Some(stream)) => stream,
                Ok(None) => return Err(message),
                Err(e) => return Ok(Err(e)),
            },
        };
        let closed = || CallError::Unreachable(format!("peer {}: the append stream closed", self.target));
        let exchange = async {
            stream.requests.send(message).await.map_err(|_| closed())?;
            stream.answers.message().await.map_err(CallError::from_status)?.ok_or_else(closed)
        };
        let answer = match tokio::time::timeout_at(deadline, exchange).await {
            Err(_) => {
                Err(CallError::Unreachable(format!("peer {}: no answer within {timeout:?}", self.target)))
            }
            Ok(answer) => answer,
        };
        Ok(answer.and_then(|answer| {
            self.stream = Some(stream);
            decode_answer(answer)
        }))
    }

    /// How far the target's chain goes.
    async fn target_height(&self, timeout: Duration) -> Result<Option<u64>, CallError> {
        let channel = self.channels.get(&self.addr).map_err(CallError::Network)?;
        let request = peer::request_to(HelloRequest::default(), self.guard.as_ref(), timeout, self.target);
        let reply = ClusterClient::new(channel).hello(request).await.map_err(CallError::from_status)?;
        Ok(reply.into_inner().head_height)
    }
}

/// What an AppendEntries adds to the encodings of its entries (vote, log ids, field names):
/// well under this.
const APPEND_OVERHEAD: usize = 64 << 10;

/// Whether an AppendEntries of `entries` entries that encodes to `bytes` is over the limit the
/// log reader keeps ([`MAX_APPEND_BYTES`] of entry records): only a single entry may be larger.
fn over_limit(entries: usize, bytes: usize) -> bool {
    entries > 1 && bytes > MAX_APPEND_BYTES + APPEND_OVERHEAD
}

/// The gRPC deadline of an AppendEntries, given openraft's `option`: the whole of it for one
/// that carries entries (openraft sets no timer on the replication stream, and
/// [`MAX_APPEND_BYTES`] is sized for it, see `raft_config`), `soft_ttl` for a heartbeat (which
/// openraft drops at `hard_ttl`).
fn append_deadline(entries: usize, option: &RPCOption) -> Duration {
    if entries == 0 {
        option.soft_ttl()
    } else {
        option.hard_ttl()
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = super::state_machine::SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let payload = super::codec::to_binary(&rpc);
        if over_limit(rpc.entries.len(), payload.len()) {
            // The log reader keeps appends within the limit; this one is not, so a bug let it
            // through. Refuse it rather than send what the follower's deadline is not made for.
            tracing::error!(entries = rpc.entries.len(), bytes = payload.len(), "append over the size limit");
            let detail =
                format!("{} entries in {} bytes, over {MAX_APPEND_BYTES}", rpc.entries.len(), payload.len());
            return Err(CallError::Network(detail).into_rpc());
        }
        let timeout = append_deadline(rpc.entries.len(), &option);
        let message = RaftMessage { payload, encoding: Encoding::Binary as i32 };
        tracing::debug!(peer = self.target, entries = rpc.entries.len(), "append_entries sent");
        let streamed =
            if self.unary_appends { Err(message) } else { self.append_on_stream(message, timeout).await };
        let reply = match streamed {
            Ok(answer) => self.raft_result(answer),
            Err(message) => {
                if !self.unary_appends {
                    tracing::info!(
                        peer = self.target,
                        "the peer has no append stream; appends go as unary calls"
                    );
                    self.unary_appends = true;
                }
                self.raft_rpc("append", message, timeout).await
            }
        };
        tracing::debug!(peer = self.target, "append_entries reply");
        reply
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let payload = serde_json::to_vec(&rpc).expect("openraft messages serialize");
        let message = RaftMessage { payload, encoding: Encoding::Json as i32 };
        self.raft_rpc("vote", message, option.soft_ttl()).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let streaming = |e: CallError| -> StreamingError<TypeConfig> {
            match e {
                CallError::Unreachable(m) => StreamingError::Unreachable(Unreachable::new(&Message(m))),
                CallError::Network(m) => StreamingError::Network(NetworkError::new(&Message(m))),
            }
        };
        // The transfer carries every block the follower lacks, and its replay: give it time.
        let timeout = option.hard_ttl().max(SNAPSHOT_TIMEOUT);
        let work = async {
            let has = self.target_height(Duration::from_secs(5)).await.map_err(streaming)?;
            let from = has.map_or(0, |h| h + 1);
            let manifest = snapshot.snapshot.manifest.clone();
            let upto = manifest.head.map_or(0, |h| h.height);
            tracing::info!(
                target = self.target,
                from,
                upto,
                "sending a snapshot with the blocks the follower lacks"
            );
            let header = serde_json::to_vec(&SnapshotHeader { vote, manifest }).expect("header serializes");
            let (tx, rx) = mpsc::channel::<SnapshotChunk>(4);
            let chain_dir = self.chain_dir.clone();
            // Read blocks on a blocking thread and stream them in chunks.
            tokio::task::spawn_blocking(move || {
                let _ = tx.blocking_send(SnapshotChunk { header, blocks: Vec::new(), last: false });
                let mut chunk = Vec::new();
                let result = crate::store::chain_file::read_from(&chain_dir, from, |read| {
                    if read.block.height > upto {
                        return Ok(());
                    }
                    serde_json::to_writer(&mut chunk, &read.block).expect("blocks serialize");
                    chunk.push(b'\n');
                    if chunk.len() >= CHUNK_BYTES {
                        let blocks = std::mem::take(&mut chunk);
                        let _ = tx.blocking_send(SnapshotChunk { header: Vec::new(), blocks, last: false });
                    }
                    Ok(())
                });
                if let Err(e) = result {
                    // Ending without `last` makes the follower discard what it received.
                    tracing::error!(error = %e, "cannot read the chain to send a snapshot");
                    return;
                }
                let _ = tx.blocking_send(SnapshotChunk { header: Vec::new(), blocks: chunk, last: true });
            });
            let mut client = self.raft_client().map_err(streaming)?;
            let request =
                peer::request_to(ReceiverStream::new(rx), self.guard.as_ref(), timeout, self.target);
            let response =
                client.install_snapshot(request).await.map_err(|s| streaming(CallError::from_status(s)))?;
            peer::admit_response_from(&response, self.guard.as_ref(), self.target)
                .map_err(|m| streaming(CallError::Unreachable(m)))?;
            let result: Result<SnapshotResponse<TypeConfig>, Fatal<TypeConfig>> =
                serde_json::from_slice(&response.into_inner().payload)
                    .map_err(|e| streaming(CallError::Network(e.to_string())))?;
            // The follower's openraft stopped: back off as from an unreachable peer.
            result
                .map_err(|fatal| streaming(CallError::Unreachable(format!("peer {}: {fatal}", self.target))))
        };
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            result = work => result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_single_entry_may_exceed_the_append_limit() {
        assert!(!over_limit(64, 1000));
        assert!(!over_limit(1, 40 << 20), "a single entry goes alone, whatever its size");
        assert!(!over_limit(2, MAX_APPEND_BYTES + 100), "the request's own fields fit in the margin");
        assert!(over_limit(2, MAX_APPEND_BYTES + APPEND_OVERHEAD + 1));
    }

    #[test]
    fn an_append_with_entries_gets_the_whole_interval_and_a_heartbeat_less() {
        let option = RPCOption::new(Duration::from_millis(400));
        assert_eq!(append_deadline(3, &option), Duration::from_millis(400));
        assert!(append_deadline(0, &option) < Duration::from_millis(400));
    }
}
