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

/// Where a token rotation stands on this node (`lightchain token rotate`, see [`Tokens`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rotation {
    /// One token, sent and accepted.
    Steady,
    /// A new token is accepted too (`DATA/cluster-token.next`); the current one is still sent.
    Staged(ClusterToken),
    /// The new token is sent (and is `DATA/cluster-token`); the previous one is still accepted
    /// (`DATA/cluster-token.previous`) until every member sends the new one.
    Switched(ClusterToken),
}

/// Why a rotation step was refused.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    /// The step does not follow from where this node stands (e.g. retiring a token that was never
    /// switched to).
    #[error("token rotation out of order: {0}")]
    OutOfOrder(&'static str),
    /// The new token could not be stored.
    #[error(transparent)]
    Store(#[from] Error),
}

/// The tokens a node sends and accepts, shared by the peer guard and the admin service.
///
/// `lightchain token rotate` changes them on every member without downtime, in three steps each
/// member takes when the coordinator asks: **stage** (accept the new token too), **switch**
/// (send the new one, accept the old one too) and **retire** (accept the new one only; the old
/// one's digest is kept in `DATA/cluster-token.retired`, so a restart with a stale
/// `--cluster-token-file` does not bring it back). Each step is durable before it answers, and
/// a restart resumes where the node stood.
#[derive(Clone)]
pub struct Tokens {
    /// The token sent, and where a rotation stands.
    state: std::sync::Arc<std::sync::RwLock<(ClusterToken, Rotation)>>,
    /// Where the steps are recorded (`None`: in memory only, for tests).
    dir: Option<DataDir>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({:?})", self.rotation_name())
    }
}

impl Tokens {
    /// One token, in memory only.
    pub fn new(current: ClusterToken) -> Tokens {
        Tokens { state: std::sync::Arc::new(std::sync::RwLock::new((current, Rotation::Steady))), dir: None }
    }

    /// `current` (the data directory's token), and a rotation the directory records.
    pub fn load(dir: &DataDir, current: ClusterToken) -> Result<Tokens> {
        let read = |name: &str| -> Result<Option<ClusterToken>> {
            let path = dir.root.join(name);
            match std::fs::read_to_string(&path) {
                Ok(text) => ClusterToken::parse(&text)
                    .map(Some)
                    .map_err(|detail| Error::Corrupt { path: path.clone(), detail }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e).ctx("read", &path),
            }
        };
        let rotation = match (read(NEXT)?, read(PREVIOUS)?) {
            (_, Some(previous)) => Rotation::Switched(previous),
            (Some(next), None) => Rotation::Staged(next),
            (None, None) => Rotation::Steady,
        };
        let tokens = Tokens {
            state: std::sync::Arc::new(std::sync::RwLock::new((current, rotation))),
            dir: Some(dir.clone()),
        };
        Ok(tokens)
    }

    /// The token to send.
    pub fn current(&self) -> ClusterToken {
        self.state.read().unwrap().0.clone()
    }

    /// Whether `offered` is a token this node accepts now (each candidate is compared in
    /// constant time, and both are compared during a rotation).
    pub fn accepts(&self, offered: &str) -> bool {
        let state = self.state.read().unwrap();
        let other = match &state.1 {
            Rotation::Steady => false,
            Rotation::Staged(t) | Rotation::Switched(t) => t.matches(offered),
        };
        state.0.matches(offered) | other
    }

    /// `steady`, `staged` or `switched`.
    pub fn rotation_name(&self) -> &'static str {
        match self.state.read().unwrap().1 {
            Rotation::Steady => "steady",
            Rotation::Staged(_) => "staged",
            Rotation::Switched(_) => "switched",
        }
    }

    /// Step 1: accept `new` too. Done already (this node sends `new`): nothing to do.
    pub fn stage(&self, new: &ClusterToken) -> std::result::Result<(), RotateError> {
        let mut state = self.state.write().unwrap();
        if state.0 == *new {
            return Ok(());
        }
        if let Some(dir) = &self.dir {
            super::write_durable_private(&dir.root.join(NEXT), format!("{}\n", new.expose()).as_bytes())?;
        }
        state.1 = Rotation::Staged(new.clone());
        Ok(())
    }

    /// Undoes [`Tokens::stage`] of `new` (a rotation that could not reach every member).
    pub fn abort(&self, new: &ClusterToken) -> std::result::Result<(), RotateError> {
        let mut state = self.state.write().unwrap();
        if state.1 == Rotation::Staged(new.clone()) {
            if let Some(dir) = &self.dir {
                remove(&dir.root.join(NEXT))?;
            }
            state.1 = Rotation::Steady;
        }
        Ok(())
    }

    /// Step 2: send `new`, accept the old token too. `new` must be staged (or sent already).
    pub fn switch(&self, new: &ClusterToken) -> std::result::Result<(), RotateError> {
        let mut state = self.state.write().unwrap();
        if state.0 == *new {
            return Ok(());
        }
        if state.1 != Rotation::Staged(new.clone()) {
            return Err(RotateError::OutOfOrder("switching to a token that was not staged on this node"));
        }
        let old = state.0.clone();
        if let Some(dir) = &self.dir {
            super::write_durable_private(&dir.root.join(PREVIOUS), format!("{}\n", old.expose()).as_bytes())?;
            new.save(dir)?;
            remove(&dir.root.join(NEXT))?;
        }
        *state = (new.clone(), Rotation::Switched(old));
        Ok(())
    }

    /// Step 3: accept `new` only; the old token is retired for good.
    pub fn retire(&self, new: &ClusterToken) -> std::result::Result<(), RotateError> {
        let mut state = self.state.write().unwrap();
        if state.0 != *new {
            return Err(RotateError::OutOfOrder("retiring the token before switching to the new one"));
        }
        if let Rotation::Switched(old) = &state.1 {
            if let Some(dir) = &self.dir {
                let path = dir.root.join(RETIRED);
                let mut retired = std::fs::read_to_string(&path).unwrap_or_default();
                retired.push_str(&format!("{}\n", crate::chain::Digest::of(old.expose().as_bytes())));
                super::write_durable_private(&path, retired.as_bytes())?;
                remove(&dir.root.join(PREVIOUS))?;
            }
        }
        state.1 = Rotation::Steady;
        Ok(())
    }

    /// Whether `token` was retired by a rotation this data directory took part in.
    pub fn is_retired(dir: &DataDir, token: &ClusterToken) -> bool {
        let digest = crate::chain::Digest::of(token.expose().as_bytes()).to_string();
        std::fs::read_to_string(dir.root.join(RETIRED))
            .is_ok_and(|text| text.lines().any(|l| l.trim() == digest))
    }
}

/// The token a rotation stages (`DATA/cluster-token.next`).
const NEXT: &str = "cluster-token.next";
/// The token a rotation switched from, accepted until it is retired (`DATA/cluster-token.previous`).
const PREVIOUS: &str = "cluster-token.previous";
/// Digests of retired tokens, one per line (`DATA/cluster-token.retired`).
const RETIRED: &str = "cluster-token.retired";

/// Removes a rotation's file durably (a retired token must not come back after a power cut).
fn remove(path: &std::path::Path) -> Result<()> {
    match super::disk::remove(path) {
        Ok(()) => super::disk::sync_dir(path.parent().expect("a file has a directory")),
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotation_accepts_both_tokens_until_it_retires_the_old_one_and_survives_a_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::create(tmp.path()).unwrap();
        let (old, new) = (ClusterToken::generate(), ClusterToken::generate());
        old.save(&dir).unwrap();
        let tokens = Tokens::load(&dir, old.clone()).unwrap();
        assert!(tokens.accepts(old.expose()) && !tokens.accepts(new.expose()));
        assert!(matches!(tokens.switch(&new), Err(RotateError::OutOfOrder(_))), "switch before stage");
        tokens.stage(&new).unwrap();
        assert!(tokens.accepts(old.expose()) && tokens.accepts(new.expose()));
        assert_eq!(tokens.current(), old);
        assert!(matches!(tokens.retire(&new), Err(RotateError::OutOfOrder(_))), "retire before switch");
        tokens.switch(&new).unwrap();
        assert_eq!(tokens.current(), new);
        assert_eq!(ClusterToken::load(&dir).unwrap(), Some(new.clone()));
        // A restart in the middle resumes there.
        let again = Tokens::load(&dir, new.clone()).unwrap();
        assert_eq!(again.rotation_name(), "switched");
        assert!(again.accepts(old.expose()) && again.accepts(new.expose()));
        tokens.retire(&new).unwrap();
        assert!(!tokens.accepts(old.expose()) && tokens.accepts(new.expose()));
        assert!(Tokens::is_retired(&dir, &old) && !Tokens::is_retired(&dir, &new));
        assert_eq!(Tokens::load(&dir, new.clone()).unwrap().rotation_name(), "steady");
        // Every step again is a no-op.
        tokens.stage(&new).unwrap();
        tokens.switch(&new).unwrap();
        tokens.retire(&new).unwrap();
        assert!(!tokens.accepts(old.expose()));
        // An aborted stage leaves the old token alone.
        let third = ClusterToken::generate();
        tokens.stage(&third).unwrap();
        tokens.abort(&third).unwrap();
        assert!(!tokens.accepts(third.expose()) && tokens.accepts(new.expose()));
        assert_eq!(Tokens::load(&dir, new).unwrap().rotation_name(), "steady");
    }

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
