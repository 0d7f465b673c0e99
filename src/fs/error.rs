//! The one place errors become errno values.
//!
//! Every failure the filesystem can report is an [`FsError`]; [`FsError::errno`] matches
//! exhaustively (no catch-all arm), so a new variant anywhere below forces a decision here.

use crate::chain::{Reject, StateIdError};
use crate::node;

/// A failed filesystem operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FsError {
    /// The node could not commit or read (no quorum, shutting down, stopped) or a
    /// precondition failed when the block was applied.
    #[error(transparent)]
    Node(#[from] node::Error),
    /// A precondition failed before anything was proposed.
    #[error("{0}")]
    Precondition(Reject),
    /// The name cannot be a state ID.
    #[error("invalid name: {0}")]
    InvalidName(#[from] StateIdError),
    /// The content would exceed `--max-state-size`.
    #[error("content would exceed the maximum state size of {0} bytes")]
    TooBig(u64),
    /// The control directory is read-only.
    #[error("the control directory is read-only")]
    ReadOnly,
    /// The file handle is unknown (already released).
    #[error("unknown file handle")]
    BadHandle,
    /// The operation is not supported by lightchain (links, device nodes, xattrs).
    #[error("operation not supported")]
    NotSupported,
    /// The operation is not permitted (changing the owner).
    #[error("operation not permitted")]
    NotPermitted,
    /// An argument is invalid (an unknown rename flag, a name that is not UTF-8).
    #[error("invalid argument")]
    InvalidArgument,
}

impl FsError {
    /// The errno an application sees.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::Node(e) => match e {
                node::Error::Timeout(_)
                | node::Error::ShuttingDown
                | node::Error::NotLeader
                | node::Error::NoQuorum
                | node::Error::Fatal(_) => libc::EIO,
                // A diverged replica must not spread its wrong view: every read and write fails.
                node::Error::Diverged { .. } => libc::EIO,
                node::Error::Rejected(reject) => reject_errno(*reject),
            },
            FsError::Precondition(reject) => reject_errno(*reject),
            FsError::InvalidName(e) => match e {
                StateIdError::TooLong => libc::ENAMETOOLONG,
                StateIdError::Reserved => libc::EACCES,
                StateIdError::Empty | StateIdError::Dot | StateIdError::Nul | StateIdError::NotUtf8 => {
                    libc::EINVAL
                }
            },
            FsError::TooBig(_) => libc::EFBIG,
            FsError::ReadOnly => libc::EACCES,
            FsError::BadHandle => libc::EBADF,
            FsError::NotSupported => libc::EOPNOTSUPP,
            FsError::NotPermitted => libc::EPERM,
            FsError::InvalidArgument => libc::EINVAL,
        }
    }

    /// Whether this is an ordinary answer (a missing name) rather than a failure worth a log line.
    pub fn is_expected(&self) -> bool {
        matches!(self, FsError::Precondition(Reject::NotFound))
    }
}

fn reject_errno(reject: Reject) -> i32 {
    match reject {
        Reject::NotFound => libc::ENOENT,
        Reject::AlreadyExists => libc::EEXIST,
        Reject::NotADirectory => libc::ENOTDIR,
        Reject::IsADirectory => libc::EISDIR,
        Reject::NotEmpty => libc::ENOTEMPTY,
        Reject::Invalid => libc::EINVAL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_errnos() {
        assert_eq!(FsError::TooBig(1).errno(), libc::EFBIG);
        assert_eq!(FsError::ReadOnly.errno(), libc::EACCES);
        assert_eq!(FsError::InvalidName(StateIdError::TooLong).errno(), libc::ENAMETOOLONG);
        assert_eq!(FsError::InvalidName(StateIdError::Reserved).errno(), libc::EACCES);
        assert_eq!(FsError::Node(node::Error::Timeout(std::time::Duration::from_secs(1))).errno(), libc::EIO);
        assert_eq!(FsError::Node(node::Error::Rejected(Reject::AlreadyExists)).errno(), libc::EEXIST);
        assert_eq!(FsError::Node(node::Error::Rejected(Reject::NotEmpty)).errno(), libc::ENOTEMPTY);
        let diverged = node::Error::Diverged { height: 3, hash: "aa".into(), expected: "bb".into() };
        assert_eq!(FsError::Node(diverged).errno(), libc::EIO);
    }
}
