//! Admission of peer messages (see `rpc::peer`): same cluster, and the same incarnation as
//! the last time a member was heard from.

use std::sync::{Arc, Mutex};

use crate::rpc::peer::{PeerGuard, PeerMeta};
use crate::store::identity::{Identity, KnownPeers};
use crate::store::DataDir;

/// The node's [`PeerGuard`].
pub struct NodeGuard {
    identity: Arc<Mutex<Identity>>,
    known: Mutex<KnownPeers>,
    data: DataDir,
}

impl NodeGuard {
    /// A guard for the node whose identity and data directory these are.
    pub fn new(identity: Arc<Mutex<Identity>>, data: &DataDir) -> crate::store::Result<NodeGuard> {
        Ok(NodeGuard { identity, known: Mutex::new(KnownPeers::load(data)?), data: data.clone() })
    }

    /// The incarnation recorded for `node`, if it was ever heard from.
    pub fn known_incarnation(&self, node: u64) -> Option<u64> {
        self.known.lock().unwrap().incarnations.get(&node).copied()
    }
}

impl PeerGuard for NodeGuard {
    fn local(&self) -> PeerMeta {
        let identity = self.identity.lock().unwrap();
        PeerMeta {
            cluster_id: identity.cluster_id.clone().unwrap_or_default(),
            node_id: identity.node_id,
            incarnation: identity.incarnation,
        }
    }

    fn admit(&self, remote: &PeerMeta) -> Result<(), String> {
        let local = self.local();
        if !remote.cluster_id.is_empty()
            && !local.cluster_id.is_empty()
            && remote.cluster_id != local.cluster_id
        {
            return Err(format!(
                "node {} belongs to cluster {}, this node to cluster {}",
                remote.node_id, remote.cluster_id, local.cluster_id
            ));
        }
        let mut known = self.known.lock().unwrap();
        match known.incarnations.get(&remote.node_id) {
            Some(&seen) if seen == remote.incarnation => Ok(()),
            Some(&seen) => Err(format!(
                "node {} came back with a new data directory (incarnation {}, before {seen}): it lost its \
                 vote record and must not vote as the old member; wipe it and add it back as a new member",
                remote.node_id, remote.incarnation
            )),
            // Only a member with a genesis is remembered: a node still deciding how to start
            // (or one refused) must leave no trace, or its next attempt would look wiped.
            None if remote.cluster_id.is_empty() => Ok(()),
            None => {
                known.incarnations.insert(remote.node_id, remote.incarnation);
                if let Err(e) = known.save(&self.data) {
                    tracing::error!(error = %e, "cannot record a peer's incarnation");
                }
                Ok(())
            }
        }
    }
}
