//! `identity.json`: who this data directory belongs to.
//!
//! Written once when the directory is created (node id, a random incarnation) and again when
//! the genesis block is applied (cluster id). The incarnation distinguishes lives of a node:
//! a node whose directory was wiped comes back with a new one, so its votes can never be
//! confused with the new ones.
//!
//! Also the cluster token (`cluster-token`, mode 0600): the shared secret every peer RPC
//! carries (DESIGN §1.7). A single node makes its own; members of a static cluster are all
//! given the same one with `--cluster-token-file`. [`ClusterToken`] never prints its secret and
//! compares in constant time.

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

    /// Makes a new identity for a node that joins an existing cluster (`--join`): its id is
    /// derived from its address *and* its new incarnation, so a node that comes back at a
    /// reused address with a wiped directory never gets the id of the member it replaces.
    pub fn generate_joiner(addr: &str) -> Identity {
        let incarnation = rand::random::<u64>() >> 1;
        Identity { node_id: node_id_for_joiner(addr, incarnation), incarnation, cluster_id: None }
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

/// The node id of a joiner at `addr` (normalized) in its life `incarnation`: distinct from
/// [`node_id_for`] of the same address and from every other life's. Never 0 and below 2^63.
pub fn node_id_for_joiner(addr: &str, incarnation: u64) -> NodeId {
    node_id_for(&format!("{addr}#{incarnation}"))
}

/// The cluster's shared secret. Its `Debug` hides the secret; compare with [`matches`](Self::matches).
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterToken(String);

/// Shortest token accepted from a file (a generated one has 64 hex digits).
pub const MIN_TOKEN_LEN: usize = 16;
/// Longest token accepted (it travels as gRPC metadata on every peer RPC).
pub const MAX_TOKEN_LEN: usize = 1024;

impl std::fmt::Debug for ClusterToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterToken(<secret>)")
    }
}

impl ClusterToken {
    /// A new random token: 32 random bytes as 64 hex digits.
    pub fn generate() -> ClusterToken {
        ClusterToken(hex::encode(rand::random::<[u8; 32]>()))
    }

    /// A token from the text of a token file: surrounding whitespace is ignored; the rest must be
    /// 16 to 1024 visible ASCII characters (it travels as gRPC metadata).
    pub fn parse(text: &str) -> std::result::Result<ClusterToken, String> {
        let token = text.trim();
        if token.len() < MIN_TOKEN_LEN || token.len() > MAX_TOKEN_LEN {
            return Err(format!(
                "a cluster token has {MIN_TOKEN_LEN} to {MAX_TOKEN_LEN} characters, this one {}",
                token.len()
            ));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("a cluster token is visible ASCII only (no spaces inside)".into());
        }
        Ok(ClusterToken(token.to_owned()))
    }

    /// Reads a token file (`--cluster-token-file`).
    pub fn read_file(path: &std::path::Path) -> Result<ClusterToken> {
        let text = std::fs::read_to_string(path).ctx("read cluster token file", path)?;
        ClusterToken::parse(&text).map_err(|detail| Error::Corrupt { path: path.to_owned(), detail })
    }

    /// The data directory's token, or `None` when it has none yet.
    pub fn load(dir: &DataDir) -> Result<Option<ClusterToken>> {
        let path = dir.token();
        match std::fs::read_to_string(&path) {
            Ok(text) => ClusterToken::parse(&text)
                .map(Some)
                .map_err(|detail| Error::Corrupt { path: path.clone(), detail }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).ctx("read", &path),
        }
    }

    /// Stores the token in the data directory, readable by its owner only (0600), durably.
    pub fn save(&self, dir: &DataDir) -> Result<()> {
        super::write_durable_private(&dir.token(), format!("{}\n", self.0).as_bytes())
    }

    /// The secret, to send.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `offered` is this token, in time that does not depend on where they differ
    /// (both are hashed first, so not even on their lengths).
    pub fn matches(&self, offered: &str) -> bool {
        let a = crate::chain::Digest::of(self.0.as_bytes());
        let b = crate::chain::Digest::of(offered.as_bytes());
        a.0.iter().zip(b.0.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_private_parsed_and_compared_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::create(tmp.path()).unwrap();
        assert_eq!(ClusterToken::load(&dir).unwrap(), None);
        let token = ClusterToken::generate();
        assert_eq!(token.expose().len(), 64);
        assert_ne!(token, ClusterToken::generate());
        token.save(&dir).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.token()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(ClusterToken::load(&dir).unwrap(), Some(token.clone()));
        assert!(token.matches(token.expose()));
        assert!(!token.matches(&token.expose()[1..]));
        assert!(!token.matches(""));
        assert!(!format!("{token:?}").contains(token.expose()));
        assert_eq!(ClusterToken::parse("  0123456789abcdef\n").unwrap().expose(), "0123456789abcdef");
        assert!(ClusterToken::parse("short").is_err());
        assert!(ClusterToken::parse("0123456789 abcdef").is_err());
    }

    #[test]
    fn node_ids_are_stable_and_distinct() {
        assert_eq!(node_id_for("127.0.0.1:7070"), node_id_for("127.0.0.1:7070"));
        assert_ne!(node_id_for("127.0.0.1:7070"), node_id_for("127.0.0.1:7071"));
        assert!(node_id_for("x") > 0);
        let a = node_id_for_joiner("127.0.0.1:7070", 1);
        assert_eq!(a, node_id_for_joiner("127.0.0.1:7070", 1));
        assert_ne!(a, node_id_for_joiner("127.0.0.1:7070", 2), "a new life at one address, a new id");
        assert_ne!(a, node_id_for("127.0.0.1:7070"));
        let joiner = Identity::generate_joiner("127.0.0.1:7070");
        assert_eq!(joiner.node_id, node_id_for_joiner("127.0.0.1:7070", joiner.incarnation));
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
