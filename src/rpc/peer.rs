//! What every peer RPC carries, and the connections peers share.
//!
//! Each request and each answer between members carries the sender's cluster id, node id and
//! incarnation as metadata ([`PeerMeta`]). A [`PeerGuard`] (the node) admits or refuses them
//! *before* anything reaches consensus: a message from another cluster, or from a member that
//! comes back with a new incarnation (its data directory was wiped, so its vote record is
//! gone), is refused — such a node must never vote under its old identity.
//!
//! [`Channels`] holds one lazily connecting HTTP/2 channel per peer address; every RPC to that
//! peer reuses it (tonic multiplexes), so nothing dials inside openraft's core.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::metadata::MetadataMap;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

/// Largest gRPC message either side accepts (a batch of entries of up to 1 MiB states).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

const CLUSTER: &str = "lc-cluster";
const FROM: &str = "lc-from";
const INCARNATION: &str = "lc-incarnation";

/// Who sent a peer message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerMeta {
    /// The sender's cluster id; empty before its genesis block.
    pub cluster_id: String,
    /// The sender's node id.
    pub node_id: u64,
    /// The sender's data directory incarnation.
    pub incarnation: u64,
}

impl PeerMeta {
    fn attach(&self, md: &mut MetadataMap) {
        if let Ok(v) = self.cluster_id.parse() {
            md.insert(CLUSTER, v);
        }
        md.insert(FROM, self.node_id.to_string().parse().expect("digits are valid metadata"));
        md.insert(INCARNATION, self.incarnation.to_string().parse().expect("digits are valid metadata"));
    }

    fn read(md: &MetadataMap) -> Result<PeerMeta, String> {
        let get = |key: &str| md.get(key).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let number = |key: &str| {
            get(key)
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| format!("peer message without valid '{key}' metadata"))
        };
        Ok(PeerMeta {
            cluster_id: get(CLUSTER).unwrap_or_default(),
            node_id: number(FROM)?,
            incarnation: number(INCARNATION)?,
        })
    }
}

/// Admits or refuses peers; implemented by the node.
pub trait PeerGuard: Send + Sync + 'static {
    /// This node's metadata.
    fn local(&self) -> PeerMeta;
    /// Checks a peer's metadata (and remembers its incarnation); `Err` says why it is refused.
    fn admit(&self, remote: &PeerMeta) -> Result<(), String>;
}

/// Wraps `message` as a request carrying this node's metadata and a deadline.
pub fn request<T>(message: T, guard: &dyn PeerGuard, timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    guard.local().attach(request.metadata_mut());
    request.set_timeout(timeout);
    request
}

/// Admits the sender of an incoming request, or refuses it with `FAILED_PRECONDITION`.
pub fn admit_request<T>(request: &Request<T>, guard: &dyn PeerGuard) -> Result<PeerMeta, Status> {
    let meta = PeerMeta::read(request.metadata()).map_err(Status::invalid_argument)?;
    guard.admit(&meta).map_err(|why| {
        tracing::warn!(peer = meta.node_id, reason = %why, "refusing a peer message");
        Status::failed_precondition(why)
    })?;
    Ok(meta)
}

/// Wraps `message` as an answer carrying this node's metadata.
pub fn response<T>(message: T, guard: &dyn PeerGuard) -> Response<T> {
    let mut response = Response::new(message);
    guard.local().attach(response.metadata_mut());
    response
}

/// Admits the sender of an answer; `Err` says why it is refused.
pub fn admit_response<T>(response: &Response<T>, guard: &dyn PeerGuard) -> Result<(), String> {
    let meta = PeerMeta::read(response.metadata())?;
    guard.admit(&meta)
}

/// One lazily connecting channel per peer address, shared by every RPC to that peer.
#[derive(Clone, Default)]
pub struct Channels {
    inner: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Channels {
    /// The channel to `addr` (HOST:PORT); connects on first use, reconnects after failures.
    pub fn get(&self, addr: &str) -> Result<Channel, String> {
        let mut map = self.inner.lock().unwrap();
        if let Some(channel) = map.get(addr) {
            return Ok(channel.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("bad peer address {addr}: {e}"))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect_lazy();
        map.insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips() {
        let meta = PeerMeta { cluster_id: "abc".into(), node_id: 7, incarnation: 42 };
        let mut md = MetadataMap::new();
        meta.attach(&mut md);
        assert_eq!(PeerMeta::read(&md).unwrap(), meta);
        assert!(PeerMeta::read(&MetadataMap::new()).is_err());
        let fresh = PeerMeta { cluster_id: String::new(), node_id: 1, incarnation: 2 };
        let mut md = MetadataMap::new();
        fresh.attach(&mut md);
        assert_eq!(PeerMeta::read(&md).unwrap(), fresh);
    }
}
