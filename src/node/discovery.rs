//! Cold start by discovery (`--bootstrap-expect N`, with `--discover-dns NAME:PORT` and/or
//! `--peer` addresses as contacts): how a node with a new data directory finds the others,
//! and whether it founds the cluster with them, joins the one that exists, or waits.
//!
//! This is the start-up path for Kubernetes (DESIGN §1.8), where pods start in any order,
//! get new IP addresses when they restart, and a pod's volume may be lost while the others
//! run. Nobody can hand every pod the same list of node ids in advance, so the first
//! membership is agreed here, outside consensus, and handed to openraft's `initialize`:
//!
//! - Every round (300 ms) the node resolves its contacts again (DNS may name new pods, or old
//!   ones at new addresses) and asks each one `Hello`. The answer names the responder's id and
//!   advertised address, the voters its consensus holds, and — while it is itself a new node
//!   discovering — its [`Proposal`].
//! - **A cluster exists** when a contact has a genesis block or a membership. If that
//!   membership names this node, its founders settled on the proposal this node holds, and it
//!   initializes the same membership (openraft accepts identical initializations). Otherwise
//!   this node joins as a learner, exactly like `--join` (`membership::join`): a pod whose
//!   volume was lost comes back under a new id, and the leader swaps out its old identity at
//!   that address. It never founds a second cluster while a contact of the first answers.
//! - **Founding**: once a node has found `N` new discovering nodes (itself included) with the
//!   same `N`, it *settles* its proposal on the `N` with the smallest ids and never changes it.
//!   It initializes only when every member of its proposal has settled on the very same one.
//!   Two nodes can therefore only ever initialize the same membership: any two settled
//!   proposals that both gathered full agreement share a member, and a member settles once.
//!
//! Node ids are derived from the advertised address *and* the incarnation (like a joiner's),
//! so they are unique even where an address is reused; the identity is saved before the
//! first round, so a node that crashes while discovering keeps its id.
//!
//! What it assumes: `N` is the number of nodes that start new together (a StatefulSet's
//! replicas). With more than `N` new nodes starting at once the proposals may never agree and
//! the nodes wait, saying so; with fewer, they wait for the rest. It must not be used to add
//! nodes to a running cluster beyond replacing lost ones: a node that finds a cluster joins it
//! as a learner, and promotion follows `--voters`.
//!
//! This module decides; it does not touch consensus, the stores or the membership afterwards.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::rpc::pb::cluster_client::ClusterClient;
use crate::rpc::pb::{BootstrapProposal, HelloReply, HelloRequest, ProposedMember};
use crate::rpc::peer::{self, Channels, PeerGuard};

/// A first membership: node id → advertised address.
pub type Members = BTreeMap<u64, String>;

/// Where a discovering node publishes its proposal, so its `Hello` answers carry it.
pub type Shared = std::sync::Arc<std::sync::Mutex<Option<Proposal>>>;

/// What a discovering node says in its `Hello` answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    /// Its `--bootstrap-expect`.
    pub expect: usize,
    /// The membership it settled on, once it found `expect` nodes.
    pub settled: Option<Members>,
}

impl Proposal {
    /// Its wire form.
    pub fn to_pb(&self) -> BootstrapProposal {
        BootstrapProposal {
            expect: self.expect as u32,
            members: self
                .settled
                .iter()
                .flatten()
                .map(|(id, addr)| ProposedMember { id: *id, addr: addr.clone() })
                .collect(),
        }
    }

    fn from_pb(pb: &BootstrapProposal) -> Proposal {
        let members: Members = pb.members.iter().map(|m| (m.id, m.addr.clone())).collect();
        Proposal { expect: pb.expect as usize, settled: (!members.is_empty()).then_some(members) }
    }
}

/// What one contact answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// The address this node reached it at.
    pub contact: String,
    /// Its node id.
    pub id: u64,
    /// The address it advertises.
    pub addr: String,
    /// Whether it holds a genesis block.
    pub has_genesis: bool,
    /// The voters of its membership (empty before it has one).
    pub voters: Vec<u64>,
    /// Its proposal, while it is discovering.
    pub proposal: Option<Proposal>,
}

impl Seen {
    fn from_reply(contact: &str, reply: &HelloReply) -> Seen {
        Seen {
            contact: contact.to_owned(),
            id: reply.node_id,
            addr: reply.addr.clone(),
            has_genesis: reply.has_genesis,
            voters: reply.voters.clone(),
            proposal: reply.bootstrap.as_ref().map(Proposal::from_pb),
        }
    }

    fn in_a_cluster(&self) -> bool {
        self.has_genesis || !self.voters.is_empty()
    }
}

/// What to do after one round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Initialize consensus with this first membership.
    Initialize(Members),
    /// A cluster exists and does not count this node: join it through these contacts.
    Join(Vec<String>),
    /// Ask again; the reason is for the log.
    Wait(String),
}

/// One round's decision for node `me` at `addr`, expecting `expect` founders, given what its
/// contacts answered. `settled` is this node's proposal: set here once, never changed after.
pub fn decide(me: u64, addr: &str, expect: usize, settled: &mut Option<Members>, seen: &[Seen]) -> Step {
    let others: Vec<&Seen> = seen.iter().filter(|s| s.id != me).collect();
    // A cluster that counts this node was founded on this node's own proposal.
    if let Some(founder) = others.iter().find(|s| s.voters.contains(&me)) {
        let voters: Vec<u64> = {
            let mut v = founder.voters.clone();
            v.sort_unstable();
            v
        };
        return match settled {
            Some(members) if members.keys().copied().eq(voters.iter().copied()) => {
                Step::Initialize(members.clone())
            }
            _ => Step::Wait(format!(
                "node {} at {} holds a membership {voters:?} naming this node that is not this node's proposal {:?}",
                founder.id,
                founder.contact,
                settled.as_ref().map(|m| m.keys().collect::<Vec<_>>())
            )),
        };
    }
    let existing: Vec<String> =
        others.iter().filter(|s| s.in_a_cluster()).map(|s| s.contact.clone()).collect();
    if !existing.is_empty() {
        return Step::Join(existing);
    }
    let mut found: Members = others
        .iter()
        .filter(|s| s.proposal.as_ref().is_some_and(|p| p.expect == expect))
        .map(|s| (s.id, s.addr.clone()))
        .collect();
    found.insert(me, addr.to_owned());
    if settled.is_none() && found.len() >= expect {
        *settled = Some(found.iter().take(expect).map(|(id, a)| (*id, a.clone())).collect());
    }
    let Some(members) = settled.as_ref() else {
        return Step::Wait(format!("found {} of {expect} new nodes", found.len()));
    };
    let agreed = |id: &u64| {
        *id == me
            || others.iter().any(|s| {
                s.id == *id && s.proposal.as_ref().is_some_and(|p| p.settled.as_ref() == Some(members))
            })
    };
    let waiting: Vec<u64> = members.keys().copied().filter(|id| !agreed(id)).collect();
    if waiting.is_empty() {
        Step::Initialize(members.clone())
    } else {
        Step::Wait(format!(
            "waiting for nodes {waiting:?} to settle on the same first membership {:?}",
            members.keys()
        ))
    }
}

/// Resolves `NAME:PORT` (see `rpc::resolve`) to contact addresses, in a stable order.
pub async fn resolve(spec: &str) -> Result<Vec<String>, String> {
    let (name, port) = spec.rsplit_once(':').ok_or_else(|| format!("{spec}: expected NAME:PORT"))?;
    let port: u16 = port.parse().map_err(|_| format!("{spec}: bad port"))?;
    let mut addrs: Vec<String> = crate::rpc::resolve::resolve(name, port)
        .await
        .map_err(|e| format!("{spec}: {e}"))?
        .into_iter()
        .map(|a| a.to_string())
        .collect();
    addrs.sort();
    addrs.dedup();
    Ok(addrs)
}

/// Asks `contact` who it is. A name usually resolves to this node too: its own answer is
/// taken as it is (and then ignored by [`decide`]).
async fn hello(channels: &Channels, guard: &dyn PeerGuard, contact: &str) -> Result<HelloReply, String> {
    let channel = channels.get(contact)?;
    let request = peer::request(HelloRequest::default(), guard, Duration::from_secs(2));
    let reply = ClusterClient::new(channel).hello(request).await.map_err(|s| s.message().to_owned())?;
    if peer::responder(&reply, guard)?.node_id != guard.local().node_id {
        peer::admit_response(&reply, guard)?;
    }
    Ok(reply.into_inner())
}

/// How a discovering node finds its contacts.
#[derive(Clone, Debug)]
pub struct Contacts {
    /// `--discover-dns NAME:PORT`, resolved again every round.
    pub dns: Option<String>,
    /// Fixed contact addresses (`--peer`).
    pub fixed: Vec<String>,
}

impl Contacts {
    /// The contacts now, and why the name did not resolve (if it did not).
    async fn list(&self) -> (Vec<String>, Option<String>) {
        let mut all = self.fixed.clone();
        let mut failed = None;
        if let Some(dns) = &self.dns {
            match resolve(dns).await {
                Ok(addrs) => all.extend(addrs),
                Err(e) => failed = Some(e),
            }
        }
        all.sort();
        all.dedup();
        (all, failed)
    }
}

/// What discovery decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Found the cluster with this first membership.
    Initialize(Members),
    /// Join the existing cluster through these contacts.
    Join(Vec<String>),
}

/// Runs rounds until one decides, publishing this node's proposal in `shared`. Waits as long
/// as it takes (a pod that gives up only restarts and waits again), saying every few seconds
/// what it waits for.
pub async fn run(
    channels: &Channels,
    guard: &dyn PeerGuard,
    me: u64,
    addr: &str,
    expect: usize,
    contacts: &Contacts,
    shared: &Shared,
) -> Outcome {
    let mut settled = None;
    *shared.lock().unwrap() = Some(Proposal { expect, settled: None });
    let mut last_report = Instant::now();
    loop {
        let mut seen = Vec::new();
        let (list, unresolved) = contacts.list().await;
        let mut silent = Vec::new();
        for contact in &list {
            match hello(channels, guard, contact).await {
                Ok(reply) => seen.push(Seen::from_reply(contact, &reply)),
                Err(e) => silent.push(format!("{contact}: {e}")),
            }
        }
        let step = decide(me, addr, expect, &mut settled, &seen);
        shared.lock().unwrap().replace(Proposal { expect, settled: settled.clone() });
        match step {
            Step::Initialize(members) => {
                tracing::info!(?members, "every founder settled on the same first membership");
                return Outcome::Initialize(members);
            }
            Step::Join(contacts) => {
                tracing::info!(?contacts, "a cluster exists: joining it");
                return Outcome::Join(contacts);
            }
            Step::Wait(why) if last_report.elapsed() > Duration::from_secs(5) => {
                tracing::info!(
                    expect,
                    contacts = list.len(),
                    answered = seen.len(),
                    unresolved = unresolved.as_deref().unwrap_or("-"),
                    silent = ?silent,
                    "discovering the cluster's first members: {why}"
                );
                last_report = Instant::now();
            }
            Step::Wait(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh(id: u64, settled: Option<&Members>) -> Seen {
        Seen {
            contact: format!("10.0.0.{id}:7070"),
            id,
            addr: format!("n{id}:7070"),
            has_genesis: false,
            voters: Vec::new(),
            proposal: Some(Proposal { expect: 3, settled: settled.cloned() }),
        }
    }

    fn members(ids: &[u64]) -> Members {
        ids.iter().map(|id| (*id, format!("n{id}:7070"))).collect()
    }

    #[test]
    fn founders_settle_once_then_wait_for_agreement() {
        let mut settled = None;
        let step = decide(2, "n2:7070", 3, &mut settled, &[fresh(1, None)]);
        assert!(matches!(step, Step::Wait(_)));
        assert_eq!(settled, None, "fewer than expected: nothing settled");

        let step = decide(2, "n2:7070", 3, &mut settled, &[fresh(1, None), fresh(3, None), fresh(2, None)]);
        assert!(matches!(step, Step::Wait(_)), "the others have not settled yet");
        assert_eq!(settled, Some(members(&[1, 2, 3])));

        // A fourth new node appears: the settled proposal does not change.
        let all = members(&[1, 2, 3]);
        let seen = [fresh(0, None), fresh(1, Some(&all)), fresh(3, Some(&all))];
        assert_eq!(decide(2, "n2:7070", 3, &mut settled, &seen), Step::Initialize(all.clone()));
        assert_eq!(settled, Some(all));
    }

    #[test]
    fn a_differing_proposal_blocks_initialization() {
        let mut settled = Some(members(&[1, 2, 3]));
        let other = members(&[0, 1, 2]);
        let seen = [fresh(1, Some(&other)), fresh(3, Some(&members(&[1, 2, 3])))];
        assert!(matches!(decide(2, "n2:7070", 3, &mut settled, &seen), Step::Wait(_)));
    }

    #[test]
    fn a_cluster_that_exists_is_joined_not_founded_again() {
        let mut settled = None;
        let mut member = fresh(1, None);
        member.proposal = None;
        member.has_genesis = true;
        member.voters = vec![1, 3, 5];
        let seen = [member.clone(), fresh(4, None), fresh(6, None)];
        assert_eq!(decide(2, "n2:7070", 3, &mut settled, &seen), Step::Join(vec![member.contact.clone()]));
    }

    #[test]
    fn a_founder_that_initialized_first_is_followed_with_the_same_membership() {
        let all = members(&[1, 2, 3]);
        let mut settled = Some(all.clone());
        let mut founder = fresh(1, None);
        founder.proposal = None;
        founder.voters = vec![3, 1, 2];
        assert_eq!(decide(2, "n2:7070", 3, &mut settled, &[founder.clone()]), Step::Initialize(all));
        // Without a matching proposal of its own it waits rather than guess.
        let mut none = None;
        assert!(matches!(decide(2, "n2:7070", 3, &mut none, &[founder]), Step::Wait(_)));
    }

    #[test]
    fn nodes_with_another_expectation_are_not_counted() {
        let mut settled = None;
        let mut odd = fresh(3, None);
        odd.proposal = Some(Proposal { expect: 5, settled: None });
        let step = decide(2, "n2:7070", 3, &mut settled, &[fresh(1, None), odd]);
        assert!(matches!(step, Step::Wait(_)));
        assert_eq!(settled, None);
    }

    #[test]
    fn a_lone_expected_node_founds_alone() {
        let mut settled = None;
        assert_eq!(decide(7, "n7:7070", 1, &mut settled, &[]), Step::Initialize(members(&[7])));
    }

    #[tokio::test]
    async fn ip_literals_resolve_to_themselves() {
        assert_eq!(resolve("127.0.0.1:7070").await.unwrap(), vec!["127.0.0.1:7070".to_owned()]);
        assert!(resolve("no-port").await.is_err());
    }
}
