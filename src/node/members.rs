//! What this node knows of the other members' progress and chains, refreshed in the background.
//!
//! Once a second, each member is asked (`Cluster.Hello`, short deadline) with this node's head
//! (height, hash); it answers with its own head and its hash at this node's height when it
//! holds that block. Each answer thus yields a [`Probe`]: both hashes at a common height (this
//! node's height, or the member's when it is behind — then this node's own hash there comes
//! from its hash index, reading `chain/` for old heights). The latest answers feed the
//! `members` of the status document; after every round [`divergence::judge`] decides whether
//! this node's chain is the wrong one, and if so the node stops serving — logged once, with
//! both hashes and the height.
//!
//! It also notices when this node was **removed** from the membership (`lightchain member
//! remove`, or replaced after losing its data): its own membership no longer names it after it
//! was a member, or every member it asks refuses it as a non-member for several rounds in a
//! row. It then logs why once and stops serving writes (see `Node::removed`).
//!
//! This module only asks and records; it never changes the chain or consensus.

use openraft::async_runtime::WatchReceiver as _;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::divergence::{self, Divergence, Probe};
use crate::chain::{BlockHash, Digest};
use crate::consensus::state_machine::Shared;
use crate::consensus::typ::{MetricsRx, Raft, RaftMetrics};
use crate::rpc::pb::cluster_client::ClusterClient;
use crate::rpc::pb::HelloRequest;
use crate::rpc::peer::{self, Channels, PeerGuard};

/// The last answer of one member.
#[derive(Clone, Debug)]
pub struct MemberView {
    /// Its chain height.
    pub head_height: Option<u64>,
    /// Its head hash.
    pub head_hash: Option<BlockHash>,
    /// Whether it said it was ready.
    pub ready: bool,
    /// When it answered.
    pub at: Instant,
    /// The voters of its current membership, as it answered.
    pub voters: BTreeSet<u64>,
    /// The latest comparison of its chain with this node's at a common height (kept when an
    /// answer allows none: a comparison stays true).
    pub probe: Option<Probe>,
}

/// Member views by node id.
pub type Views = Arc<Mutex<HashMap<u64, MemberView>>>;

/// What the poller needs.
pub struct Poller {
    /// Connections to peers.
    pub channels: Channels,
    /// Stamps and admits peer metadata.
    pub guard: Arc<dyn PeerGuard>,
    /// Where answers are recorded.
    pub views: Views,
    /// This node's id.
    pub self_id: u64,
    /// Consensus metrics (membership, leader).
    pub metrics: MetricsRx,
    /// Consensus, which a diverged node leaves: it stops campaigning and, as a leader, hands
    /// leadership over.
    pub raft: Raft,
    /// The replica (this node's head) and its hash index.
    pub shared: Arc<Shared>,
    /// Set once when this node finds its chain is the wrong one.
    pub diverged: Arc<OnceLock<Divergence>>,
    /// Set once when this node finds it is no longer a member (why).
    pub removed: Arc<OnceLock<String>>,
}

/// Rounds in a row in which every answering member refused this node as a non-member before it
/// concludes it was removed (a joiner may be refused for a moment by a member that has not yet
/// applied the membership that adds it).
const REFUSED_ROUNDS: u32 = 5;

/// How one poll of a member ended.
enum Asked {
    /// It answered.
    View(MemberView),
    /// It refused this node as not a member.
    NotAMember(String),
    /// No answer (unreachable, or any other refusal).
    Nothing,
}

fn digest(bytes: &[u8]) -> Option<Digest> {
    Some(Digest(bytes.try_into().ok()?))
}

/// This node's hash at `height`, from its hash index (a blocking read of `chain/` for an old
/// height, so it runs off the async threads).
async fn own_hash_at(shared: &Arc<Shared>, height: u64) -> Option<BlockHash> {
    let hashes = shared.hashes.clone();
    match tokio::task::spawn_blocking(move || hashes.get(height)).await {
        Ok(Ok(hash)) => hash,
        Ok(Err(e)) => {
            tracing::warn!(height, error = %e, "cannot read this node's hash at a height to compare chains");
            None
        }
        Err(_) => None,
    }
}

/// Asks one member how far it is and what it holds at `mine` (this node's head).
async fn ask(p: &Poller, id: u64, addr: &str, mine: Option<(u64, BlockHash)>) -> Asked {
    let Ok(channel) = p.channels.get(addr) else { return Asked::Nothing };
    let hello = HelloRequest {
        head_height: mine.map(|(h, _)| h),
        head_hash: mine.map_or_else(Vec::new, |(_, hash)| hash.0.to_vec()),
    };
    let request = peer::request_to(hello, p.guard.as_ref(), Duration::from_millis(800), id);
    match ClusterClient::new(channel).hello(request).await {
        Err(s) if s.code() == tonic::Code::PermissionDenied && s.message().contains("is not a member") => {
            Asked::NotAMember(s.message().to_owned())
        }
        Err(_) => Asked::Nothing,
        Ok(response) => match view(p, response, mine).await {
            Some(v) => Asked::View(v),
            None => Asked::Nothing,
        },
    }
}

async fn view(
    p: &Poller,
    response: tonic::Response<crate::rpc::pb::HelloReply>,
    mine: Option<(u64, BlockHash)>,
) -> Option<MemberView> {
    peer::admit_response(&response, p.guard.as_ref()).ok()?;
    let reply = response.into_inner();
    let head_hash = digest(&reply.head_hash);
    let probe = match (mine, digest(&reply.hash_at_asked), reply.head_height.zip(head_hash)) {
        (Some((height, mine)), Some(theirs), _) => Some(Probe { height, theirs, mine }),
        // The member is behind: compare at its head.
        (Some((height, _)), None, Some((theirs_height, theirs))) if theirs_height < height => {
            own_hash_at(&p.shared, theirs_height).await.map(|mine| Probe {
                height: theirs_height,
                theirs,
                mine,
            })
        }
        _ => None,
    };
    Some(MemberView {
        head_height: reply.head_height,
        head_hash,
        ready: reply.ready,
        voters: reply.voters.iter().copied().collect(),
        at: Instant::now(),
        probe,
    })
}

/// Records (once) that this node is no longer a member, and says so.
fn removed(p: &Poller, why: String) {
    tracing::error!(
        reason = %why,
        "this node was removed from the cluster: it serves no writes (they fail with EIO); wipe its \
         data directory and start it with --join to add it back as a new member"
    );
    let _ = p.removed.set(why);
}

/// Judges this node's probes as they stand (see [`divergence::judge`]).
pub fn verdict(self_id: u64, metrics: &RaftMetrics, views: &HashMap<u64, MemberView>) -> divergence::Verdict {
    let membership = metrics.membership_config.membership();
    let members: BTreeSet<u64> = membership.nodes().map(|(id, _)| *id).collect();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let probes: BTreeMap<u64, Probe> = views.iter().filter_map(|(id, v)| Some((*id, v.probe?))).collect();
    divergence::judge(self_id, &members, &voters, metrics.current_leader, &probes)
}

/// Refreshes the views of the other members until `stop` fires, and stops this node from
/// serving once it finds its chain is the wrong one.
pub async fn poll(p: Poller, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut was_member = false;
    let mut refused_rounds = 0u32;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let (others, is_member): (Vec<(u64, String)>, bool) = {
            let m = p.metrics.borrow_watched();
            let membership = m.membership_config.membership();
            let is_member = membership.get_node(&p.self_id).is_some();
            let others = membership
                .nodes()
                .filter(|(id, _)| **id != p.self_id)
                .map(|(id, n)| (*id, n.addr.clone()))
                .collect();
            (others, is_member)
        };
        if was_member && !is_member && p.removed.get().is_none() {
            removed(&p, "the cluster's membership no longer includes it".to_owned());
        }
        was_member |= is_member;
        let mut answered = 0;
        let mut refusal = None;
        let mine = p.shared.replica.read().unwrap().head.map(|h| (h.height, h.hash));
        for (id, addr) in others {
            let mut view = match ask(&p, id, &addr, mine).await {
                Asked::View(view) => view,
                Asked::NotAMember(why) => {
                    refusal = Some(format!("member {id} at {addr} says: {why}"));
                    continue;
                }
                Asked::Nothing => continue,
            };
            answered += 1;
            {
                let mut views = p.views.lock().unwrap();
                if view.probe.is_none() {
                    view.probe = views.get(&id).and_then(|old| old.probe);
                }
                views.insert(id, view);
            }
        }
        match (answered, refusal) {
            (0, Some(why)) => {
                refused_rounds += 1;
                if refused_rounds >= REFUSED_ROUNDS && p.removed.get().is_none() {
                    removed(&p, why);
                }
            }
            _ => refused_rounds = 0,
        }
        if p.diverged.get().is_some() {
            continue;
        }
        let verdict = {
            let metrics = p.metrics.borrow_watched().clone();
            verdict(p.self_id, &metrics, &p.views.lock().unwrap())
        };
        if let Some(own) = verdict.own {
            tracing::error!(
                height = own.height,
                hash = %own.hash,
                expected = %own.expected,
                member = own.member,
                "this node's chain diverged from the cluster's: it stops serving (reads and writes fail \
                 with EIO) until an operator replaces its data directory"
            );
            let _ = p.diverged.set(own);
            step_down(&p).await;
        }
    }
}

/// A diverged node answers for nobody: it never campaigns again, and if it leads, it hands
/// leadership to a voter that agrees with the cluster (and stops its heartbeats, so that the
/// others elect one even if the handover fails).
async fn step_down(p: &Poller) {
    p.raft.runtime_config().elect(false);
    let (leads, voters) = {
        let metrics = p.metrics.borrow_watched();
        let voters: Vec<u64> = metrics.membership_config.membership().voter_ids().collect();
        (metrics.current_leader == Some(p.self_id), voters)
    };
    if !leads {
        tracing::warn!("diverged: this node will not campaign for leadership");
        return;
    }
    p.raft.runtime_config().heartbeat(false);
    let heir = {
        let views = p.views.lock().unwrap();
        voters
            .into_iter()
            .filter(|v| *v != p.self_id)
            .find(|v| views.get(v).is_some_and(|view| view.probe.is_some_and(|probe| !probe.agrees())))
    };
    tracing::warn!(heir, "diverged: this node steps down as leader and will not campaign again");
    if let Some(heir) = heir {
        if let Err(e) = p.raft.trigger().transfer_leader(heir).await {
            tracing::warn!(error = %e, heir, "leadership handover failed; the others elect a leader once heartbeats stop");
        }
    }
}
