//! Deciding, from hash comparisons at common heights, which members' chains diverged
//! (DESIGN §1.5, "divergence is loud").
//!
//! Every member polls every other one with its head (height, hash); the answer gives the
//! other's hash at a height both hold ([`Probe`]). Blocks are built only from committed
//! entries, so two hashes at one height either agree forever or never: one differing probe is
//! proof that one of the two chains is wrong. [`judge`] decides which side is wrong:
//!
//! 1. the side (this node plus the members that agree with it, or the members that do not)
//!    that holds a majority of the voters is right;
//! 2. with no majority known (members unreachable, or a two-node cluster), the side of the
//!    leader is right;
//! 3. with neither, the members that disagree with this node are reported as diverged, but
//!    this node does not condemn itself.
//!
//! The members on the wrong side are marked `DIVERGED` in `status`; when this node is one of
//! them it stops serving (`node::Error::Diverged`). This module is pure: no I/O, no clock.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::chain::{BlockHash, Height, NodeId};

/// One comparison of this node's chain with a member's, at a height both hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    /// The common height.
    pub height: Height,
    /// The member's hash at that height.
    pub theirs: BlockHash,
    /// This node's hash at that height.
    pub mine: BlockHash,
}

impl Probe {
    /// Whether both chains hold the same block there.
    pub fn agrees(&self) -> bool {
        self.theirs == self.mine
    }
}

/// Evidence that this node's chain is the wrong one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Divergence {
    /// The common height compared.
    pub height: Height,
    /// This node's hash there.
    pub hash: String,
    /// The hash the cluster (its majority, or its leader) holds there.
    pub expected: String,
    /// The member whose answer showed it.
    pub member: NodeId,
}

/// What [`judge`] concluded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Members (this node possibly among them) whose chains are on the wrong side.
    pub diverged: BTreeSet<NodeId>,
    /// Set when this node is on the wrong side.
    pub own: Option<Divergence>,
}

/// Decides who diverged from this node's `probes` of the other members (see the module doc).
/// Probes of nodes that are not `members` are ignored.
pub fn judge(
    self_id: NodeId,
    members: &BTreeSet<NodeId>,
    voters: &BTreeSet<NodeId>,
    leader: Option<NodeId>,
    probes: &BTreeMap<NodeId, Probe>,
) -> Verdict {
    let probes: BTreeMap<NodeId, Probe> = probes
        .iter()
        .filter(|(id, _)| members.contains(id) && **id != self_id)
        .map(|(i, p)| (*i, *p))
        .collect();
    let mut agree: BTreeSet<NodeId> = probes.iter().filter(|(_, p)| p.agrees()).map(|(id, _)| *id).collect();
    agree.insert(self_id);
    let disagree: BTreeSet<NodeId> = probes.iter().filter(|(_, p)| !p.agrees()).map(|(id, _)| *id).collect();
    if disagree.is_empty() {
        return Verdict::default();
    }
    let majority = voters.len() / 2 + 1;
    let votes = |side: &BTreeSet<NodeId>| side.intersection(voters).count();
    let i_am_wrong = if votes(&agree) >= majority {
        Some(false)
    } else if votes(&disagree) >= majority {
        Some(true)
    } else {
        match leader {
            Some(l) if agree.contains(&l) => Some(false),
            Some(l) if disagree.contains(&l) => Some(true),
            _ => None,
        }
    };
    match i_am_wrong {
        Some(true) => {
            // The leader's probe is the best evidence; else any disagreeing voter's.
            let member = leader
                .filter(|l| disagree.contains(l))
                .or_else(|| disagree.iter().find(|id| voters.contains(id)).copied())
                .unwrap_or_else(|| *disagree.iter().next().expect("not empty"));
            let probe = probes[&member];
            let own = Divergence {
                height: probe.height,
                hash: probe.mine.to_hex(),
                expected: probe.theirs.to_hex(),
                member,
            };
            Verdict { diverged: agree, own: Some(own) }
        }
        Some(false) | None => Verdict { diverged: disagree, own: None },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::Digest;

    const GOOD: Digest = Digest([1; 32]);
    const BAD: Digest = Digest([2; 32]);

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    fn probes(list: &[(u64, Digest, Digest)]) -> BTreeMap<u64, Probe> {
        list.iter()
            .map(|(id, theirs, mine)| (*id, Probe { height: 7, theirs: *theirs, mine: *mine }))
            .collect()
    }

    #[test]
    fn agreement_is_no_divergence() {
        let v = judge(
            1,
            &set(&[1, 2, 3]),
            &set(&[1, 2, 3]),
            Some(2),
            &probes(&[(2, GOOD, GOOD), (3, GOOD, GOOD)]),
        );
        assert_eq!(v, Verdict::default());
    }

    #[test]
    fn the_majority_is_right_whoever_leads() {
        let all = set(&[1, 2, 3]);
        // Seen from a right node: member 3 is the odd one out, even when it leads.
        let v = judge(1, &all, &all, Some(3), &probes(&[(2, GOOD, GOOD), (3, BAD, GOOD)]));
        assert_eq!(v.diverged, set(&[3]));
        assert_eq!(v.own, None);
        // Seen from the wrong node: both others disagree with it.
        let v = judge(3, &all, &all, Some(3), &probes(&[(1, GOOD, BAD), (2, GOOD, BAD)]));
        assert_eq!(v.diverged, set(&[3]));
        let own = v.own.unwrap();
        assert_eq!((own.height, own.hash, own.expected), (7, BAD.to_hex(), GOOD.to_hex()));
    }

    #[test]
    fn without_a_known_majority_the_leader_decides_or_nobody_condemns_itself() {
        let all = set(&[1, 2, 3]);
        // Member 3 unreachable (no probe): 1 and 2 disagree; the leader's side is right.
        let v = judge(1, &all, &all, Some(2), &probes(&[(2, GOOD, BAD)]));
        assert_eq!(v.diverged, set(&[1]));
        assert!(v.own.is_some());
        let v = judge(2, &all, &all, Some(2), &probes(&[(1, BAD, GOOD)]));
        assert_eq!((v.diverged, v.own), (set(&[1]), None));
        // No leader known: the other is reported, this node does not stop.
        let v = judge(1, &all, &all, None, &probes(&[(2, GOOD, BAD)]));
        assert_eq!((v.diverged, v.own), (set(&[2]), None));
    }

    #[test]
    fn probes_of_former_members_are_ignored() {
        let v = judge(1, &set(&[1, 2]), &set(&[1, 2]), Some(1), &probes(&[(2, GOOD, GOOD), (9, BAD, GOOD)]));
        assert_eq!(v, Verdict::default());
    }
}
