//! Start-up decisions of a node with a peer list (static bootstrap).
//!
//! Every member is started with the same `--peer` list; node ids are derived from the
//! addresses, so every node builds the byte-identical initial membership. A node whose data
//! directory is new asks its peers (`Cluster.Hello`) before doing anything:
//! - if a peer has recorded an incarnation for this node id, this node's data was lost: it
//!   refuses to start (its vote record is gone; joining under the old identity could make it
//!   vote twice in one term);
//! - if a peer already has a genesis block, the cluster exists and this member was simply late
//!   to its first start: it starts with an empty log and the leader replicates the chain;
//! - once a majority of members answer and none has a genesis, every node initializes the same
//!   membership (openraft accepts concurrent identical initializations).
//!
//! A node with data checks that reachable peers belong to its cluster.
//!
//! A node whose `identity.json` exists but which has no cluster id and no consensus state yet
//! (it crashed between writing its identity and its first membership) decides again, with the
//! same identity: a peer that remembers *this* incarnation is not a sign of lost
//! data, and initializing twice is a no-op, so such a node is never stuck uninitialized.
//!
//! [`resolve_token`] picks the cluster token before anything listens (DESIGN §1.7).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::rpc::pb::cluster_client::ClusterClient;
use crate::rpc::pb::{HelloReply, HelloRequest};
use crate::rpc::peer::{self, Channels, PeerGuard};
use crate::store::identity::{node_id_for, ClusterToken};
use crate::store::raft_log::RaftLog;
use crate::store::DataDir;

/// How long a new node waits for a majority of its peers.
const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(60);

/// What a new node should do.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Initialize the cluster's first membership.
    Initialize,
    /// The cluster exists; wait to be replicated to.
    Join,
}

/// The canonical spelling of an address (`127.0.0.1:07070` → `127.0.0.1:7070`, IPv6 in
/// brackets), so every node derives the same node id for the same member. Host names are
/// kept as written (lower-cased): resolving them could differ between nodes.
pub fn normalize(addr: &str) -> String {
    let addr = addr.trim();
    match addr.parse::<std::net::SocketAddr>() {
        Ok(sock) => sock.to_string(),
        Err(_) => addr.to_ascii_lowercase(),
    }
}

/// The initial members: every peer address and this node's, by derived node id.
pub fn members(advertise: &str, peers: &[String]) -> BTreeMap<u64, String> {
    let mut members: BTreeMap<u64, String> = peers
        .iter()
        .filter(|a| !a.trim().is_empty())
        .map(|a| normalize(a))
        .map(|a| (node_id_for(&a), a))
        .collect();
    let advertise = normalize(advertise);
    members.insert(node_id_for(&advertise), advertise);
    members
}

/// The members `config` names before anything is asked: the `--peer` list and this node
/// ([`members`]); with discovery (`--bootstrap-expect`) the peers are contacts, not members, so
/// only this node.
pub fn configured_members(config: &super::Config) -> BTreeMap<u64, String> {
    let peers: &[String] = if config.bootstrap_expect.is_some() { &[] } else { &config.peers };
    members(&config.advertise, peers)
}

/// The cluster token this node uses, in order: `--cluster-token-file` (copied into the data
/// directory when it differs, so the CLI finds it), the data directory's, or — for a lone node
/// listening on loopback only — a new one. A node with other members, or one listening beyond
/// loopback, refuses to start without a token it was given.
pub fn resolve_token(
    data: &DataDir,
    token_file: Option<&std::path::Path>,
    members: &BTreeMap<u64, String>,
    config: &super::Config,
) -> Result<ClusterToken, super::StartError> {
    let stored = ClusterToken::load(data)?;
    if let Some(file) = token_file {
        let given = ClusterToken::read_file(file)?;
        if let Some(current) =
            stored.as_ref().filter(|_| crate::store::identity::Tokens::is_retired(data, &given))
        {
            // `lightchain token rotate` replaced it while this node ran: the file is stale.
            tracing::warn!(file = %file.display(), "the cluster token file holds a token retired by `lightchain token rotate`; using the data directory's current token (update the file, e.g. the Kubernetes Secret)");
            return Ok(current.clone());
        }
        if stored.as_ref() != Some(&given) {
            if stored.is_some() {
                tracing::warn!(file = %file.display(), "the cluster token file differs from the data directory's token; using the file's");
            }
            given.save(data)?;
        }
        return Ok(given);
    }
    if let Some(token) = stored {
        return Ok(token);
    }
    if !config.join.is_empty() {
        return Err(super::StartError::Refused(
            "joining a cluster (--join) needs its shared secret: give --cluster-token-file FILE with the \
             cluster's token"
                .into(),
        ));
    }
    if members.len() > 1 || config.bootstrap_expect.is_some_and(|n| n > 1) {
        return Err(super::StartError::Refused(
            "a cluster of several members needs a shared secret: give every member the same \
             --cluster-token-file FILE (for example made with `openssl rand -hex 32 > FILE`)"
                .into(),
        ));
    }
    if !config.listen.ip().is_loopback() {
        return Err(super::StartError::Refused(format!(
            "refusing to listen on {} (not loopback) without a cluster token: give --cluster-token-file FILE",
            config.listen
        )));
    }
    let token = ClusterToken::generate();
    token.save(data)?;
    tracing::info!(path = %data.token().display(), "made a cluster token for this new single-node cluster");
    Ok(token)
}

/// Whether the directory holds anything of consensus or the chain (a log record, a vote, a
/// purge point or a block): then it initialized or was replicated to, and is not deciding
/// again. What a crash or a power cut left unwritten (a torn or zero-filled tail, which the
/// log and the chain cut when they open) does not count: a node whose initialization never
/// became durable initializes again.
pub fn has_consensus_state(data: &DataDir) -> Result<bool, crate::store::Error> {
    let log = RaftLog::open(&data.raft())?;
    if log.bounds().is_some()
        || log.load_meta("vote.json")?.is_some()
        || log.load_meta("purged.json")?.is_some()
    {
        return Ok(true);
    }
    let mut blocks = 0u64;
    crate::store::chain_file::read_all(&data.chain(), |_| {
        blocks += 1;
        Ok(())
    })?;
    Ok(blocks > 0)
}

async fn hello(channels: &Channels, guard: &dyn PeerGuard, addr: &str) -> Result<HelloReply, String> {
    let channel = channels.get(addr)?;
    let request = peer::request(HelloRequest::default(), guard, Duration::from_secs(2));
    let reply = ClusterClient::new(channel).hello(request).await.map_err(|s| s.message().to_owned())?;
    Ok(reply.into_inner())
}

/// Decides how a node with a new data directory starts. `Err` explains a refusal.
pub async fn decide_fresh(
    channels: &Channels,
    guard: &dyn PeerGuard,
    self_id: u64,
    members: &BTreeMap<u64, String>,
) -> Result<Decision, String> {
    let others: Vec<&String> = members.iter().filter(|(id, _)| **id != self_id).map(|(_, a)| a).collect();
    if others.is_empty() {
        return Ok(Decision::Initialize);
    }
    let majority = members.len() / 2 + 1;
    let deadline = Instant::now() + BOOTSTRAP_TIMEOUT;
    let mut last_report = Instant::now();
    loop {
        let mut answered = 1; // this node
        let mut existing = None;
        for addr in &others {
            let Ok(reply) = hello(channels, guard, addr).await else { continue };
            answered += 1;
            if reply.known_incarnation.is_some_and(|known| known != guard.local().incarnation) {
                return Err(format!(
                    "this node's data directory is new, but peer {addr} already knows node {self_id} from an earlier \
                     life: its data was lost, and with it its vote record. It must not rejoin under its old identity. \
                     Restore its data directory, or start it with its empty data directory and --join HOST:PORT (any member): \
                     it then joins under a new id and replaces its old identity"
                ));
            }
            if reply.has_genesis {
                existing.get_or_insert((addr.to_string(), reply.cluster_id));
            }
        }
        // Every reachable peer was asked first: any of them remembering this node wins.
        if let Some((addr, cluster)) = existing {
            tracing::info!(peer = %addr, cluster = %cluster, "the cluster exists; joining as a member that has not started before");
            return Ok(Decision::Join);
        }
        if answered >= majority {
            return Ok(Decision::Initialize);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "only {answered} of {} members answered within {BOOTSTRAP_TIMEOUT:?}; start the others",
                members.len()
            ));
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            tracing::info!(answered, needed = majority, "waiting for a majority of the initial members");
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Refuses to start when a reachable peer belongs to another cluster.
pub async fn check_existing(
    channels: &Channels,
    guard: &dyn PeerGuard,
    peers: &[String],
) -> Result<(), String> {
    let local = guard.local();
    for addr in peers {
        if let Ok(reply) = hello(channels, guard, addr).await {
            if !reply.cluster_id.is_empty()
                && !local.cluster_id.is_empty()
                && reply.cluster_id != local.cluster_id
            {
                return Err(format!(
                    "this data directory belongs to cluster {} but peer {addr} is in cluster {}: \
                     wrong --data or wrong --peer list",
                    local.cluster_id, reply.cluster_id
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_derives_the_same_members() {
        let peers =
            vec!["127.0.0.1:7071".to_owned(), " 127.0.0.1:7072".to_owned(), "127.0.0.1:7073".to_owned()];
        let a = members("127.0.0.1:7071", &peers);
        let b = members("127.0.0.1:7072", &peers);
        assert_eq!(a, b);
        assert_eq!(a.len(), 3);
        assert_eq!(normalize("[::1]:80"), "[::1]:80");
        assert_eq!(normalize("Node-1.Example:7070"), "node-1.example:7070");
        // A node not in the list is added (its own address may be omitted).
        assert_eq!(members("127.0.0.1:7074", &peers).len(), 4);
    }
}
