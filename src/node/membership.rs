//! Membership changes after the first start (DESIGN §1.8): joining, promotion, removal.
//!
//! - **Joining** ([`join`], the joiner's side): a node started with `--join` on an empty data
//!   directory asks any member (`Cluster.Join`, with the token); a follower forwards to the
//!   leader. The leader ([`Node::admit_joiner`]) first removes every other member at the
//!   joiner's address — a node that lost its data and came back under a new id (ids of joiners
//!   are derived from address *and* incarnation, so a removed id is never reused) — but only a
//!   member that has not answered the member poll for [`EVICT_AFTER`]: a live member is never
//!   evicted by a join (a wrong `--advertise`, or any token holder); the joiner is told so and
//!   retries, so a wiped node that restarts at once is admitted a few seconds later — then adds
//!   the joiner as a learner and answers once that membership is committed. The joiner catches
//!   up by ordinary replication (log entries, or a snapshot with the chain segments it lacks).
//!   `add_learner` is not blocking: catching up a long chain may outlast any RPC deadline and
//!   the leader may change meanwhile, so promotion is not the join request's business.
//! - **Promotion** ([`promote_learners`], decided by [`to_promote`]): the leader, once a
//!   second, promotes caught-up learners while the cluster has fewer voters than `--voters`,
//!   moving only between odd counts: two learners in one change from an odd count (1 → 3,
//!   3 → 5, 5 → 7; a single caught-up learner waits for a second), one from an even count
//!   (left by `member remove` or `member promote`). It runs on every node and acts only while
//!   leading, so a leader change loses nothing. Past `--voters` a learner stays a read replica:
//!   it serves its mount (reads by read index from the leader, writes forwarded).
//! - **Replacing a lost voter** (same task): a voter that has not answered the leader's member
//!   poll for `--replace-after` (the grace period) is swapped for a caught-up learner in one
//!   change (`ReplaceAllVoters`, `retain = true`): the lost node stays a learner, so if it comes
//!   back it catches up as a read replica and nothing of it is lost; `member remove` takes it out.
//! - **Explicit changes** ([`Node::member_op`], `lightchain member`): list, remove, promote,
//!   through the admin service; a follower forwards a change to the leader. They do what the
//!   operator asks, even when that leaves an even number of voters (automatic promotion then
//!   brings it back to odd when a learner is caught up). Nothing here runs on a graceful stop:
//!   a stopped member stays a member.
//!
//! This module changes membership only through openraft's `add_learner`/`change_membership`;
//! it never touches the chain or the stores.

use openraft::async_runtime::WatchReceiver as _;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use openraft::{BasicNode, ChangeMembers};
use tokio::sync::watch;

use super::Node;
use crate::consensus::typ::Raft;
use crate::rpc::pb::cluster_client::ClusterClient;
use crate::rpc::pb::{JoinReply, JoinRequest, MemberOp};
use crate::rpc::peer::{self, Channels, PeerGuard};

/// A learner is caught up when its replicated log is at most this many entries behind the
/// leader's last log index.
const CAUGHT_UP_LAG: u64 = 8;
/// How long a joiner keeps asking before it gives up.
const JOIN_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a membership request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemberError {
    /// This node is not the leader and knows none to forward to.
    #[error("no leader is known; try again")]
    NoLeader,
    /// This node is not the leader; the leader is at `addr`.
    #[error("not the leader (the leader is node {id} at {addr})")]
    NotLeader {
        /// The leader's id.
        id: u64,
        /// The leader's address.
        addr: String,
    },
    /// No member has this id.
    #[error("node {0} is not a member")]
    NoSuchMember(u64),
    /// The member to promote is a voter already.
    #[error("node {0} is a voter already")]
    AlreadyVoter(u64),
    /// Removing the member would leave the cluster without a voter.
    #[error("node {0} is the last voter; it cannot be removed")]
    LastVoter(u64),
    /// Consensus refused or could not commit the change.
    #[error("the membership change failed: {0}")]
    Consensus(String),
    /// The leader a change was forwarded to refused it.
    #[error("the leader refused: {0}")]
    Forwarded(String),
    /// A joiner claims the address of a member that is alive (it answered the leader's member
    /// poll within [`EVICT_AFTER`]): a join never evicts a live member.
    #[error(
        "node {old} is a member at {addr} and answered {}: a join never evicts a live member. \
         If the joining node's --advertise is wrong, fix it; if node {old} really lost its data, stop it \
         (it is replaced once it has been silent for {}s), or take it out now with \
         `lightchain member remove {old}`",
        heard.map_or_else(|| "recently (this leader started moments ago)".to_owned(), |d| format!("{:.1}s ago", d.as_secs_f64())),
        EVICT_AFTER.as_secs()
    )]
    LiveMemberAtAddress {
        /// The member at that address.
        old: u64,
        /// The address.
        addr: String,
        /// How long ago it last answered (`None`: this leader has not polled long enough to know).
        heard: Option<Duration>,
    },
}

/// A member at a joiner's address that answered the leader's member poll within this long is alive:
/// the joiner is not admitted (it retries) instead of evicting it.
pub const EVICT_AFTER: Duration = Duration::from_secs(5);

/// Why the member `old` must not be evicted now: it answered `heard` ago (`None`: never, as far as a
/// poller running for `polling` knows), or `None` when it is silent for [`EVICT_AFTER`].
fn alive(heard: Option<Duration>, polling: Duration) -> Option<Option<Duration>> {
    match heard {
        Some(ago) if ago < EVICT_AFTER => Some(Some(ago)),
        None if polling < EVICT_AFTER => Some(None),
        _ => None,
    }
}

/// Members as `lightchain member list` shows them.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct MemberList {
    /// The leader this node knows.
    pub leader: Option<u64>,
    /// Every member (voters and learners), by id.
    pub members: Vec<MemberEntry>,
}

/// One member.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct MemberEntry {
    /// Its node id.
    pub id: u64,
    /// The address peers reach it at.
    pub addr: String,
    /// `voter` or `learner`.
    pub role: String,
}

/// The membership as consensus knows it now: (voters, every node with its address, whether a
/// joint change is in progress).
fn membership(raft: &Raft) -> (BTreeSet<u64>, BTreeMap<u64, String>, bool) {
    let metrics = raft.metrics();
    let m = metrics.borrow_watched();
    let membership = m.membership_config.membership();
    let voters = membership.voter_ids().collect();
    let nodes = membership.nodes().map(|(id, n)| (*id, n.addr.clone())).collect();
    (voters, nodes, membership.get_joint_config().len() > 1)
}

/// Waits (up to `timeout`) until no joint membership change is in progress: openraft refuses a
/// new change while one is.
async fn wait_uniform(raft: &Raft, timeout: Duration) {
    let mut metrics = raft.metrics();
    let uniform = crate::consensus::wait_metrics(&mut metrics, |m| {
        m.membership_config.membership().get_joint_config().len() == 1
    });
    let _ = tokio::time::timeout(timeout, uniform).await;
}

fn consensus<E: std::fmt::Display>(e: E) -> MemberError {
    MemberError::Consensus(e.to_string())
}

impl Node {
    /// The leader's id and address, if known.
    fn leader(&self) -> Option<(u64, String)> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        m.current_leader
            .and_then(|l| m.membership_config.membership().get_node(&l).map(|n| (l, n.addr.clone())))
    }

    fn leader_only(&self) -> Result<(), MemberError> {
        match self.leader() {
            Some((id, _)) if id == self.id() => Ok(()),
            Some((id, addr)) => Err(MemberError::NotLeader { id, addr }),
            None => Err(MemberError::NoLeader),
        }
    }

    /// The members now.
    pub fn member_list(&self) -> MemberList {
        let (voters, nodes, _) = membership(&self.raft);
        let members = nodes
            .into_iter()
            .map(|(id, addr)| MemberEntry {
                id,
                addr,
                role: if voters.contains(&id) { "voter" } else { "learner" }.to_owned(),
            })
            .collect();
        MemberList { leader: self.leader().map(|(id, _)| id), members }
    }

    /// On the leader: lets the node `id` at `addr` join as a learner, after removing every other
    /// member at that address (a node that lost its data). Idempotent: a member already is one.
    pub async fn admit_joiner(&self, addr: &str, id: u64) -> Result<JoinReply, MemberError> {
        self.leader_only()?;
        wait_uniform(&self.raft, self.config.commit_timeout).await;
        let addr = super::bootstrap::normalize(addr);
        let (voters, nodes, _) = membership(&self.raft);
        if nodes.contains_key(&id) {
            return Ok(JoinReply { leader: self.id(), replaced: Vec::new() });
        }
        let stale: Vec<u64> =
            nodes.iter().filter(|(n, a)| **n != id && **a == addr).map(|(n, _)| *n).collect();
        for old in &stale {
            if *old == self.id() {
                return Err(MemberError::LiveMemberAtAddress {
                    old: *old,
                    addr,
                    heard: Some(Duration::ZERO),
                });
            }
            let heard = self.views.lock().unwrap().get(old).map(|v| v.at.elapsed());
            if let Some(heard) = alive(heard, self.started.elapsed()) {
                tracing::warn!(old, new = id, %addr, ?heard, "refusing a join at a live member's address (it retries; the member is evicted only once silent)");
                return Err(MemberError::LiveMemberAtAddress { old: *old, addr, heard });
            }
        }
        for old in &stale {
            tracing::warn!(old, new = id, %addr, "a new node joins at a member's address: that member lost its data; removing its old identity");
            let change = if voters.contains(old) {
                ChangeMembers::RemoveVoters([*old].into())
            } else {
                ChangeMembers::RemoveNodes([*old].into())
            };
            self.raft.change_membership(change, false).await.map_err(consensus)?;
        }
        self.raft.add_learner(id, BasicNode { addr: addr.clone() }, false).await.map_err(consensus)?;
        tracing::info!(node = id, %addr, replaced = ?stale, "added a joining node as a learner");
        Ok(JoinReply { leader: self.id(), replaced: stale })
    }

    /// `lightchain member list|remove|promote`: on the leader, or forwarded to it. Answers the
    /// members after the change.
    pub async fn member_op(&self, op: MemberOp, id: u64) -> Result<MemberList, MemberError> {
        if op == MemberOp::List {
            return Ok(self.member_list());
        }
        match self.leader_only() {
            Ok(()) => {}
            Err(MemberError::NotLeader { addr, .. }) => {
                let timeout = self.config.commit_timeout + Duration::from_secs(5);
                let json = crate::rpc::admin::member_call(
                    &addr,
                    timeout,
                    Some(&self.guard.tokens().current()),
                    self.config.peer_tls.as_ref(),
                    op,
                    id,
                )
                .await
                .map_err(MemberError::Forwarded)?;
                return serde_json::from_str(&json).map_err(|e| MemberError::Forwarded(e.to_string()));
            }
            Err(e) => return Err(e),
        }
        wait_uniform(&self.raft, self.config.commit_timeout).await;
        let (voters, nodes, _) = membership(&self.raft);
        if !nodes.contains_key(&id) {
            return Err(MemberError::NoSuchMember(id));
        }
        match op {
            MemberOp::List => {}
            MemberOp::Remove => {
                let change = if voters.contains(&id) {
                    if voters.len() == 1 {
                        return Err(MemberError::LastVoter(id));
                    }
                    ChangeMembers::RemoveVoters([id].into())
                } else {
                    ChangeMembers::RemoveNodes([id].into())
                };
                self.raft.change_membership(change, false).await.map_err(consensus)?;
                tracing::info!(node = id, "removed a member");
            }
            MemberOp::Promote => {
                if voters.contains(&id) {
                    return Err(MemberError::AlreadyVoter(id));
                }
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds([id].into()), false)
                    .await
                    .map_err(consensus)?;
                tracing::info!(node = id, "promoted a learner to voter");
            }
        }
        Ok(self.member_list())
    }
}

/// The learners whose replicated log is at most [`CAUGHT_UP_LAG`] entries behind the leader's
/// last log index (empty unless this node leads: only a leader has replication metrics).
fn caught_up_learners(m: &crate::consensus::typ::RaftMetrics) -> BTreeSet<u64> {
    let last = m.last_log_index.unwrap_or(0);
    let Some(replication) = m.replication.as_ref() else { return BTreeSet::new() };
    m.membership_config
        .membership()
        .learner_ids()
        .filter(|l| {
            replication
                .get(l)
                .and_then(|matched| matched.as_ref())
                .is_some_and(|matched| matched.index + CAUGHT_UP_LAG >= last)
        })
        .collect()
}

/// Which learners to promote now, from the membership alone: `voters` voters, the `learners`
/// (in the order to prefer them), those of them `caught_up`, and `--voters` = `target`.
///
/// The voter count only ever moves between odd numbers on the way up: an even count tolerates
/// no more failures than the odd count below it, and has one more node that can fail. So:
/// - at or above `target`: nobody;
/// - an odd count below `target`: two caught-up learners in one change (3 → 5, 1 → 3), or
///   nobody while fewer than two are caught up (one caught-up learner waits for a second);
/// - an even count (after `member remove`, an explicit `member promote`, or a wiped voter's
///   old identity removed): one caught-up learner, back to an odd count.
///
/// Empty, or one or two ids, every one of them in `caught_up`.
pub(crate) fn to_promote(
    voters: usize,
    learners: &[u64],
    caught_up: &BTreeSet<u64>,
    target: usize,
) -> Vec<u64> {
    if voters >= target {
        return Vec::new();
    }
    let want = if voters.is_multiple_of(2) {
        1
    } else if voters + 2 <= target {
        2
    } else {
        // An odd count one below an (even) target: the odd numbers stop here.
        return Vec::new();
    };
    let ready: Vec<u64> = learners.iter().copied().filter(|l| caught_up.contains(l)).take(want).collect();
    if ready.len() == want {
        ready
    } else {
        Vec::new()
    }
}

/// The caught-up learners to promote, if the leader `self_id` should promote any now
/// ([`to_promote`]); empty on a follower or during a joint change.
fn promotion_candidates(raft: &Raft, self_id: u64, target: usize) -> Vec<u64> {
    let metrics = raft.metrics();
    let m = metrics.borrow_watched();
    let membership = m.membership_config.membership();
    if m.current_leader != Some(self_id) || membership.get_joint_config().len() > 1 {
        return Vec::new();
    }
    let learners: Vec<u64> = membership.learner_ids().collect();
    to_promote(membership.voter_ids().count(), &learners, &caught_up_learners(&m), target)
}

/// A member poll answer younger than this counts as "heard from".
const HEARD: Duration = Duration::from_secs(3);

/// What the promoter needs.
pub struct Promoter {
    /// Consensus.
    pub raft: Raft,
    /// This node's id.
    pub self_id: u64,
    /// `--voters`.
    pub target: usize,
    /// `--replace-after`: how long a voter may be unheard of before a caught-up learner takes its
    /// place (`None`: never).
    pub grace: Option<Duration>,
    /// The member poller's latest answers.
    pub views: super::members::Views,
}

/// A lost voter and the caught-up learner to take its place, if one is due.
fn replacement(
    p: &Promoter,
    missing_since: &mut BTreeMap<u64, Instant>,
) -> Option<(u64, u64, BTreeSet<u64>)> {
    let grace = p.grace?;
    let (voters, learners, leading, caught_up) = {
        let metrics = p.raft.metrics();
        let m = metrics.borrow_watched();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let learners: Vec<u64> = membership.learner_ids().collect();
        let caught_up = caught_up_learners(&m);
        let leading = m.current_leader == Some(p.self_id) && membership.get_joint_config().len() == 1;
        (voters, learners, leading, caught_up)
    };
    if !leading {
        missing_since.clear();
        return None;
    }
    let now = Instant::now();
    {
        let views = p.views.lock().unwrap();
        for v in voters.iter().filter(|v| **v != p.self_id) {
            let heard = views.get(v).is_some_and(|view| view.at.elapsed() < HEARD);
            if heard {
                missing_since.remove(v);
            } else {
                missing_since.entry(*v).or_insert(now);
            }
        }
    }
    missing_since.retain(|id, _| voters.contains(id));
    let lost =
        missing_since.iter().find(|(_, since)| now.duration_since(**since) >= grace).map(|(id, _)| *id)?;
    let learner = learners.into_iter().find(|l| caught_up.contains(l))?;
    let mut new_voters = voters;
    new_voters.remove(&lost);
    new_voters.insert(learner);
    Some((lost, learner, new_voters))
}

/// Once a second, while this node leads: promotes caught-up learners while there are fewer
/// voters than `target` ([`to_promote`]: one or two at once, so the count stays odd), and replaces a voter lost for longer than the grace period by a
/// caught-up learner. Runs until `stop`.
pub async fn promote_learners(p: Promoter, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut missing_since = BTreeMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let raft = &p.raft;
        if let Some((lost, learner, voters)) = replacement(&p, &mut missing_since) {
            tracing::warn!(lost, learner, grace = ?p.grace, "a voter was lost for longer than the grace period: a caught-up learner takes its place (it stays a learner)");
            let change = raft.change_membership(ChangeMembers::ReplaceAllVoters(voters), true);
            tokio::select! {
                done = change => match done {
                    Ok(_) => { missing_since.remove(&lost); }
                    Err(e) => tracing::warn!(lost, learner, error = %e, "could not replace a lost voter; retrying"),
                },
                _ = stop.wait_for(|s| *s) => return,
            }
            continue;
        }
        let promote = promotion_candidates(raft, p.self_id, p.target);
        if promote.is_empty() {
            continue;
        }
        tracing::info!(nodes = ?promote, target = p.target, "promoting caught-up learners to voters");
        let change =
            raft.change_membership(ChangeMembers::AddVoterIds(promote.iter().copied().collect()), false);
        tokio::select! {
            done = change => if let Err(e) = done {
                tracing::warn!(nodes = ?promote, error = %e, "could not promote learners; retrying");
            },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Why a node could not join.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// A member refused this node (wrong token, or an id that is not its own).
    #[error("{addr} refused to let this node join: {reason}")]
    Refused {
        /// The member that refused.
        addr: String,
        /// Its reason.
        reason: String,
    },
    /// No member answered in time.
    #[error("no member of {addrs:?} let this node join within {timeout:?} (last error: {last})")]
    Timeout {
        /// The addresses tried.
        addrs: Vec<String>,
        /// How long it tried.
        timeout: Duration,
        /// The last error seen.
        last: String,
    },
}

/// How one join attempt failed.
enum Attempt {
    /// Refused for good (the token, or the id).
    Refused(String),
    /// Worth another try (no leader yet, unreachable, a change in progress).
    Retry(String),
}

async fn ask_join(
    channels: &Channels,
    guard: &dyn PeerGuard,
    addr: &str,
    me: &JoinRequest,
) -> Result<JoinReply, Attempt> {
    let channel = channels.get(addr).map_err(Attempt::Refused)?;
    let request = peer::request(me.clone(), guard, Duration::from_secs(30));
    let response = ClusterClient::new(channel).join(request).await.map_err(|s| match s.code() {
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
            Attempt::Refused(s.message().to_owned())
        }
        _ => Attempt::Retry(s.message().to_owned()),
    })?;
    peer::admit_response(&response, guard).map_err(Attempt::Retry)?;
    Ok(response.into_inner())
}

/// The joiner's side: asks the members at `addrs` in turn until one (or the leader it forwards
/// to) has added this node as a learner. A refusal for the token or the id ends it at once.
pub async fn join(
    channels: &Channels,
    guard: &dyn PeerGuard,
    addrs: &[String],
    me: JoinRequest,
) -> Result<JoinReply, JoinError> {
    let deadline = Instant::now() + JOIN_TIMEOUT;
    let mut last = String::from("no answer yet");
    let mut last_report = Instant::now();
    for addr in addrs.iter().cycle() {
        match ask_join(channels, guard, addr, &me).await {
            Ok(reply) => return Ok(reply),
            Err(Attempt::Refused(reason)) => return Err(JoinError::Refused { addr: addr.clone(), reason }),
            Err(Attempt::Retry(why)) => {
                let reason = format!("{addr}: {why}");
                if reason != last {
                    tracing::warn!(reason = %reason, "the cluster did not let this node join yet; retrying");
                }
                last = reason;
            }
        }
        if Instant::now() > deadline {
            return Err(JoinError::Timeout { addrs: addrs.to_vec(), timeout: JOIN_TIMEOUT, last });
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            tracing::info!(last = %last, "still asking to join the cluster");
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(JoinError::Timeout { addrs: addrs.to_vec(), timeout: JOIN_TIMEOUT, last })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    #[test]
    fn a_member_heard_from_within_the_grace_period_is_never_evicted() {
        let s = Duration::from_secs;
        assert_eq!(alive(Some(s(1)), s(60)), Some(Some(s(1))), "answered a second ago");
        assert_eq!(alive(None, s(1)), Some(None), "the leader polled too briefly to know");
        assert_eq!(alive(Some(EVICT_AFTER), s(60)), None, "silent for the grace period");
        assert_eq!(alive(None, s(60)), None, "never answered a poller running for a minute");
    }

    #[test]
    fn from_an_odd_count_two_caught_up_learners_are_promoted_together() {
        assert_eq!(to_promote(3, &[10, 11], &set(&[10, 11]), 5), vec![10, 11]);
        assert_eq!(to_promote(5, &[10, 11, 12], &set(&[10, 11, 12]), 7), vec![10, 11]);
        // The preferred order is the learners' order; a lagging one is skipped.
        assert_eq!(to_promote(3, &[10, 11, 12], &set(&[10, 12]), 7), vec![10, 12]);
    }

    #[test]
    fn from_an_odd_count_one_caught_up_learner_waits_for_a_second() {
        assert!(to_promote(3, &[10], &set(&[10]), 5).is_empty());
        assert!(to_promote(3, &[10, 11], &set(&[11]), 5).is_empty());
        // A single voter and one learner: it stays one voter until a second learner is caught up.
        assert!(to_promote(1, &[10], &set(&[10]), 3).is_empty());
        assert_eq!(to_promote(1, &[10, 11], &set(&[10, 11]), 3), vec![10, 11]);
        // No learner caught up: nothing.
        assert!(to_promote(1, &[10, 11], &set(&[]), 3).is_empty());
    }

    #[test]
    fn from_an_even_count_one_learner_brings_it_back_to_odd() {
        assert_eq!(to_promote(2, &[10, 11], &set(&[10, 11]), 3), vec![10]);
        assert_eq!(to_promote(4, &[10], &set(&[10]), 5), vec![10]);
        assert_eq!(to_promote(2, &[10, 11], &set(&[11]), 7), vec![11]);
        assert!(to_promote(2, &[10], &set(&[]), 3).is_empty());
    }

    #[test]
    fn at_or_past_the_target_nobody_is_promoted() {
        assert!(to_promote(3, &[10, 11], &set(&[10, 11]), 3).is_empty());
        assert!(to_promote(5, &[10, 11], &set(&[10, 11]), 3).is_empty());
        assert!(to_promote(1, &[10, 11], &set(&[10, 11]), 1).is_empty());
        // An even count past the target (an operator's promote) stays as it is.
        assert!(to_promote(4, &[10], &set(&[10]), 3).is_empty());
    }

    #[test]
    fn the_voter_count_only_ever_takes_odd_values_on_the_way_up() {
        // Learners catch up one at a time; every count the promoter makes is odd.
        for target in [1, 3, 5, 7] {
            for start in 1..=target {
                let mut voters = start;
                let mut caught_up = BTreeSet::new();
                for learner in 100..110 {
                    caught_up.insert(learner);
                    let learners: Vec<u64> = caught_up.iter().copied().collect();
                    let promoted = to_promote(voters, &learners, &caught_up, target);
                    assert!(promoted.iter().all(|p| caught_up.contains(p)));
                    for p in &promoted {
                        caught_up.remove(p);
                    }
                    voters += promoted.len();
                    assert!(voters <= target, "{start} voters grew past the target {target}");
                    if !promoted.is_empty() {
                        assert_eq!(voters % 2, 1, "{start} voters toward {target} reached {voters}");
                    }
                }
                assert_eq!(voters, target, "{start} voters never reached the target {target}");
            }
        }
    }
}
