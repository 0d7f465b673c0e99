//! Admission of peer messages (see `rpc::peer`): the cluster token, a sender that is a member
//! (or, before this node knows a membership, a configured peer), the same cluster, and the same
//! incarnation as the last time a member was heard from.
//!
//! A node that joins (`--join`) knows no member before the leader first replicates to it: until
//! it learns a membership it admits any holder of the token ([`NodeGuard::open_for_join`]).
//!
//! Only a voter of the membership may ask for votes or lead (`authorize_voter`); a node whose
//! membership lags accepts a leader it lists as a learner only when the other members vouch for
//! it ([`vouched`]). With mutual TLS the guard gives the address a sender's certificate must name
//! (`address_of`).

use openraft::async_runtime::WatchReceiver as _;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, OnceLock};

use crate::consensus::typ::MetricsRx;
use crate::rpc::peer::{PeerGuard, PeerMeta};
use crate::store::identity::{Identity, KnownPeers, Tokens};
use crate::store::DataDir;

/// The node's [`PeerGuard`].
pub struct NodeGuard {
    /// This node's identity (the cluster id appears with the genesis).
    identity: Arc<Mutex<Identity>>,
    /// The incarnation last seen of each member.
    known: Mutex<KnownPeers>,
    /// Where `known` is saved.
    data: DataDir,
    /// The cluster's shared secret (two during a rotation).
    token: Tokens,
    /// Node ids of the configured peers (`--peer`) and their addresses, admitted while no
    /// membership is known.
    configured: BTreeMap<u64, String>,
    /// Mutual TLS is on: every member's certificate must name the host of its address.
    certificates: bool,
    /// Consensus metrics, once consensus runs: the membership senders are checked against.
    metrics: OnceLock<MetricsRx>,
    /// The member poll's latest answers, once the node runs: they vouch for a leader this
    /// node's (lagging) membership does not list as a voter yet.
    views: OnceLock<super::members::Views>,
    /// The last node the other members vouched for (so that is logged once, not per message).
    vouched_for: std::sync::atomic::AtomicU64,
    /// Set on a joining node: while it knows no membership, any holder of the token is admitted
    /// (it cannot know the leader's id before the leader replicates to it).
    joining: std::sync::atomic::AtomicBool,
}

impl NodeGuard {
    /// A guard for the node whose identity, data directory, token and configured peers these are.
    pub fn new(
        identity: Arc<Mutex<Identity>>,
        data: &DataDir,
        token: Tokens,
        configured: BTreeMap<u64, String>,
    ) -> crate::store::Result<NodeGuard> {
        Ok(NodeGuard {
            identity,
            known: Mutex::new(KnownPeers::load(data)?),
            data: data.clone(),
            token,
            configured,
            certificates: false,
            metrics: OnceLock::new(),
            views: OnceLock::new(),
            vouched_for: std::sync::atomic::AtomicU64::new(0),
            joining: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// With mutual TLS: a sender's certificate must name the host of its address, on every
    /// message (see `rpc::peer::check_certificate`).
    pub fn bind_certificates(mut self, on: bool) -> NodeGuard {
        self.certificates = on;
        self
    }

    /// From now on, senders are checked against consensus's membership (once it has one).
    pub fn watch_membership(&self, metrics: MetricsRx) {
        let _ = self.metrics.set(metrics);
    }

    /// From now on, the member poll's answers may vouch for a voter this node does not know yet.
    pub fn watch_views(&self, views: super::members::Views) {
        let _ = self.views.set(views);
    }

    /// This node is joining: until it knows a membership, admit any holder of the token.
    pub fn open_for_join(&self) {
        self.joining.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// The members consensus knows (voters and learners), if it knows any.
    fn members(&self) -> Option<BTreeSet<u64>> {
        let metrics = self.metrics.get()?;
        let m = metrics.borrow_watched();
        let ids: BTreeSet<u64> = m.membership_config.membership().nodes().map(|(id, _)| *id).collect();
        (!ids.is_empty()).then_some(ids)
    }

    /// The voters and the members (voters and learners) of consensus's membership, if it knows one.
    fn voters_and_members(&self) -> Option<(BTreeSet<u64>, BTreeSet<u64>)> {
        let metrics = self.metrics.get()?;
        let m = metrics.borrow_watched();
        let membership = m.membership_config.membership();
        let members: BTreeSet<u64> = membership.nodes().map(|(id, _)| *id).collect();
        (!members.is_empty()).then(|| (membership.voter_ids().collect(), members))
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

    fn tokens(&self) -> &Tokens {
        &self.token
    }

    fn authorize(&self, node: u64) -> Result<(), String> {
        if node == self.identity.lock().unwrap().node_id {
            return Err(format!("a peer message claims to come from this node ({node})"));
        }
        match self.members() {
            Some(members) if members.contains(&node) => Ok(()),
            Some(members) => Err(format!("node {node} is not a member (members: {members:?})")),
            None if self.configured.contains_key(&node) => Ok(()),
            None if self.joining.load(std::sync::atomic::Ordering::SeqCst) => Ok(()),
            None => Err(format!(
                "node {node} is not one of the configured peers {:?}, and this node knows no membership yet",
                self.configured.keys().collect::<Vec<_>>()
            )),
        }
    }

    fn binds_certificates(&self) -> bool {
        self.certificates
    }

    fn address_of(&self, node: u64) -> Option<String> {
        if let Some(metrics) = self.metrics.get() {
            let m = metrics.borrow_watched();
            let membership = m.membership_config.membership();
            if membership.nodes().next().is_some() {
                return membership.get_node(&node).map(|n| n.addr.clone());
            }
        }
        self.configured.get(&node).cloned()
    }

    fn authorize_voter(&self, node: u64) -> Result<(), String> {
        self.authorize(node)?;
        // Before consensus knows a membership, `authorize` decided (configured peers, a joiner).
        let Some((voters, members)) = self.voters_and_members() else { return Ok(()) };
        if voters.contains(&node) {
            return Ok(());
        }
        let me = self.identity.lock().unwrap().node_id;
        if let Some(views) = self.views.get() {
            if vouched(node, me, &members, &views.lock().unwrap(), VOUCH_FRESH) {
                if self.vouched_for.swap(node, std::sync::atomic::Ordering::Relaxed) != node {
                    tracing::info!(peer = node, "a node this node's membership lists as a learner is a voter by the other members' answers (this node lags)");
                }
                return Ok(());
            }
        }
        Err(format!(
            "node {node} is not a voter (voters: {voters:?}): only a voter may ask for votes or send entries"
        ))
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
                 vote record and must not vote as the old member; start it with an empty data directory and --join to replace it",
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

/// How recent a member's answer must be to vouch for a voter.
const VOUCH_FRESH: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether the other members vouch for `node` as a voter while this node (`me`) lags: of the
/// `members` of this node's membership other than `me` and `node` itself, those that answered
/// within `fresh`, at least one, and more than half of them, list it among their voters. A
/// claimant cannot vouch for itself, and it cannot forge another member's answer.
fn vouched(
    node: u64,
    me: u64,
    members: &BTreeSet<u64>,
    views: &std::collections::HashMap<u64, super::members::MemberView>,
    fresh: std::time::Duration,
) -> bool {
    let answers: Vec<bool> = members
        .iter()
        .filter(|m| **m != me && **m != node)
        .filter_map(|m| views.get(m))
        .filter(|v| v.at.elapsed() < fresh)
        .map(|v| v.voters.contains(&node))
        .collect();
    let yes = answers.iter().filter(|y| **y).count();
    yes > 0 && yes * 2 > answers.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_a_membership_only_configured_peers_are_authorized() {
        let tmp = tempfile::tempdir().unwrap();
        let data = DataDir::create(tmp.path()).unwrap();
        let identity = Arc::new(Mutex::new(Identity::generate(1)));
        let configured = [1, 2, 3].map(|i| (i, format!("127.0.0.{i}:7070"))).into();
        let guard = NodeGuard::new(
            identity,
            &data,
            Tokens::new(crate::store::identity::ClusterToken::generate()),
            configured,
        )
        .unwrap();
        guard.authorize(2).unwrap();
        guard.authorize(3).unwrap();
        assert!(guard.authorize(4).is_err(), "not a configured peer");
        assert!(guard.authorize(1).is_err(), "a message claiming to be from this node");
        // A stranger with an empty cluster id and an unused node id is not admitted any more: it
        // fails `authorize` before `admit` is asked.
        assert!(guard.authorize(999).is_err());
    }

    fn view(voters: &[u64], age: std::time::Duration) -> super::super::members::MemberView {
        super::super::members::MemberView {
            head_height: None,
            head_hash: None,
            ready: true,
            voters: voters.iter().copied().collect(),
            at: std::time::Instant::now() - age,
            probe: None,
        }
    }

    #[test]
    fn only_a_majority_of_fresh_answers_of_other_members_vouch_for_a_voter() {
        let fresh = std::time::Duration::from_secs(5);
        let recent = std::time::Duration::ZERO;
        let members: BTreeSet<u64> = [1, 2, 3, 4].into();
        // This node is 1, the claimant 4 (a learner here).
        let views = |v: Vec<(u64, super::super::members::MemberView)>| v.into_iter().collect();
        assert!(!vouched(4, 1, &members, &views(vec![]), fresh), "nobody answered");
        assert!(vouched(4, 1, &members, &views(vec![(2, view(&[2, 3, 4], recent))]), fresh));
        assert!(
            !vouched(4, 1, &members, &views(vec![(4, view(&[1, 2, 3, 4], recent))]), fresh),
            "the claimant vouches for itself"
        );
        assert!(
            !vouched(4, 1, &members, &views(vec![(2, view(&[2, 3, 4], fresh * 2))]), fresh),
            "an old answer"
        );
        let split = views(vec![(2, view(&[2, 3, 4], recent)), (3, view(&[1, 2, 3], recent))]);
        assert!(!vouched(4, 1, &members, &split, fresh), "half is no majority");
        // A stranger is not a member: no answer names it.
        assert!(!vouched(9, 1, &members, &views(vec![(2, view(&[1, 2, 3], recent))]), fresh));
    }
}
