//! The limits that shape the chain, cluster-wide: recorded in the chain by [`TxOp::Limits`]
//! transactions, so every member applies the same ones and a replay rebuilds them.
//!
//! Applying a transaction is total and bounded by these limits: a state that would grow past
//! [`Limits::max_state_size`] is a deterministic [`Reject::TooBig`](super::Reject::TooBig),
//! never an allocation of what a transaction asks. The limit itself is capped at
//! [`MAX_STATE_SIZE_CAP`], far enough below the peer message limit (64 MiB) that a state and
//! its block always travel, and a chain that has no `Limits` transaction yet (every chain made
//! before them, and a new one for the moment after its genesis) applies the cap.
//!
//! This module holds values and their rules; it never reads a flag or a file.
//!
//! [`TxOp::Limits`]: super::TxOp::Limits

use serde::{Deserialize, Serialize};

use super::{Reject, TxOp};

/// The largest `max_state_size` a cluster may have: 32 MiB. A block's JSON line holds the
/// content as text or base64 (at most 1.33× in base64), and a log entry or a `Forward` carries
/// it as bytes; both stay well below the 64 MiB message limit.
pub const MAX_STATE_SIZE_CAP: u64 = 32 << 20;

/// The `max_state_size` a new cluster gets when its first node names none: 1 MiB.
pub const DEFAULT_MAX_STATE_SIZE: u64 = 1 << 20;

/// The cluster-wide limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// The most bytes a file's content may hold.
    pub max_state_size: u64,
}

impl Limits {
    /// What a chain without a `Limits` transaction applies: the caps.
    pub const CAPS: Limits = Limits { max_state_size: MAX_STATE_SIZE_CAP };

    /// Whether these limits may be set: each between 1 and its cap.
    pub fn valid(&self) -> bool {
        (1..=MAX_STATE_SIZE_CAP).contains(&self.max_state_size)
    }
}

/// The checks a transaction passes before it is proposed (at the node that proposes it, and
/// at the leader for a forwarded one), so an entry that could never replicate never enters the
/// log. The apply step enforces the same limits on what the state becomes.
pub fn admit(op: &TxOp, limits: Limits) -> Result<(), Reject> {
    let too_big = |len: u64| match len > limits.max_state_size {
        true => Err(Reject::TooBig),
        false => Ok(()),
    };
    match op {
        TxOp::Put { content, .. } | TxOp::Append { content, .. } => too_big(content.len() as u64),
        TxOp::Truncate { size, .. } => too_big(*size),
        // Consensus makes membership changes; a member never proposes one.
        TxOp::Membership { .. } => Err(Reject::Invalid),
        TxOp::Limits { max_state_size, .. } => match (Limits { max_state_size: *max_state_size }).valid() {
            true => Ok(()),
            false => Err(Reject::Invalid),
        },
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::{Content, Members, StateId};

    #[test]
    fn admit_refuses_what_could_never_fit_and_any_membership() {
        let limits = Limits { max_state_size: 10 };
        let id = StateId::parse("f").unwrap();
        let put = |n: usize| TxOp::Put {
            id: id.clone(),
            content: Content::from(vec![b'x'; n]),
            uid: 0,
            gid: 0,
            ino: None,
        };
        assert_eq!(admit(&put(10), limits), Ok(()));
        assert_eq!(admit(&put(11), limits), Err(Reject::TooBig));
        let append = TxOp::Append {
            id: id.clone(),
            content: Content::from(vec![b'x'; 11]),
            uid: 0,
            gid: 0,
            ino: None,
        };
        assert_eq!(admit(&append, limits), Err(Reject::TooBig));
        assert_eq!(admit(&TxOp::Truncate { id: id.clone(), size: 1 << 40 }, limits), Err(Reject::TooBig));
        assert_eq!(admit(&TxOp::Truncate { id: id.clone(), size: 10 }, limits), Ok(()));
        let members = Members { configs: vec![], nodes: Default::default() };
        assert_eq!(admit(&TxOp::Membership { members }, limits), Err(Reject::Invalid));
        let set = |max_state_size| TxOp::Limits { max_state_size, initial: false };
        assert_eq!(admit(&set(MAX_STATE_SIZE_CAP), limits), Ok(()));
        assert_eq!(admit(&set(MAX_STATE_SIZE_CAP + 1), limits), Err(Reject::Invalid));
        assert_eq!(admit(&set(0), limits), Err(Reject::Invalid));
        assert_eq!(admit(&TxOp::Delete { id }, limits), Ok(()));
    }

    #[test]
    fn limits_are_valid_from_one_byte_up_to_the_cap() {
        assert!(Limits { max_state_size: 1 }.valid());
        assert!(Limits::CAPS.valid());
        assert!(Limits { max_state_size: DEFAULT_MAX_STATE_SIZE }.valid());
        assert!(!Limits { max_state_size: 0 }.valid());
        assert!(!Limits { max_state_size: MAX_STATE_SIZE_CAP + 1 }.valid());
        assert!(!Limits { max_state_size: u64::MAX }.valid());
    }
}
