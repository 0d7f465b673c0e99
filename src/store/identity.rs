//! `identity.json`: who this data directory belongs to.
//!
//! Written once when the directory is created (node id, a random incarnation) and again when
//! the genesis block is applied (cluster id). The incarnation distinguishes lives of a node:
//! a node whose directory was wiped comes back with a new one, so its old request ids and
//! votes can never be confused with the new ones.

use serde::{Deserialize, Serialize};

use super::{write_durable, DataDir, Error, IoContext, Result};
use crate::chain::NodeId;

/// The identity of a node's data directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Consensus node id, derived from the advertised address when the directory was created.
    pub node_id: NodeId,
    /// Random id made when the directory was created.
    pub incarnation: u64,
    /// Id of the cluster, from its genesis block; `None` until the genesis is applied.
    pub cluster_id: Option<String>,
}

impl Identity {
    /// Reads `identity.json`, or `None` when the directory is new.
    pub fn load(dir: &DataDir) -> Result<Option<Identity>> {
        let path = dir.identity();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::Corrupt { path: path.clone(), detail: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).ctx("read", &path),
        }
    }

    /// Makes a new identity for a new directory.
    pub fn generate(node_id: NodeId) -> Identity {
        Identity { node_id, incarnation: rand::random::<u64>() >> 1, cluster_id: None }
    }

    /// Writes `identity.json` durably.
    pub fn save(&self, dir: &DataDir) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self).expect("identity serializes");
        write_durable(&dir.identity(), &bytes)
    }
}

/// Derives a node id from the address peers reach it at, so every node computes the same id
/// for the same member from the same peer list. Never 0 and below 2^63.
pub fn node_id_for(addr: &str) -> NodeId {
    let digest = crate::chain::Digest::of(addr.as_bytes());
    let id = u64::from_be_bytes(digest.0[..8].try_into().unwrap()) >> 1;
    id.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_stable_and_distinct() {
        assert_eq!(node_id_for("127.0.0.1:7070"), node_id_for("127.0.0.1:7070"));
        assert_ne!(node_id_for("127.0.0.1:7070"), node_id_for("127.0.0.1:7071"));
        assert!(node_id_for("x") > 0);
    }

    #[test]
    fn identity_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::create(tmp.path()).unwrap();
        assert_eq!(Identity::load(&dir).unwrap(), None);
        let id = Identity::generate(5);
        id.save(&dir).unwrap();
        assert_eq!(Identity::load(&dir).unwrap(), Some(id));
    }
}

/// The incarnation this node has seen for each peer (`peers.json`), so a peer that comes back
/// with a wiped data directory (a new incarnation) is recognised and refused.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownPeers {
    /// Node id → incarnation.
    pub incarnations: std::collections::BTreeMap<NodeId, u64>,
}

impl KnownPeers {
    fn path(dir: &DataDir) -> std::path::PathBuf {
        dir.root.join("peers.json")
    }

    /// Reads `peers.json` (empty when missing).
    pub fn load(dir: &DataDir) -> Result<KnownPeers> {
        let path = Self::path(dir);
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt { path, detail: e.to_string() })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(KnownPeers::default()),
            Err(e) => Err(e).ctx("read", &path),
        }
    }

    /// Writes `peers.json` durably.
    pub fn save(&self, dir: &DataDir) -> Result<()> {
        write_durable(&Self::path(dir), &serde_json::to_vec_pretty(self).expect("peers serialize"))
    }
}
