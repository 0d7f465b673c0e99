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
    /// The operation is not supported by lightchain (device nodes, xattr writes, `fallocate`).
    #[error("operation not supported")]
    NotSupported,
    /// `getxattr`: lightchain keeps no extended attributes, so reading one is not implemented at
    /// all. Answered with `ENOSYS` on purpose, the one place lightchain does: the kernel then
    /// remembers it for the whole mount and answers every `getxattr` itself, without a round
    /// trip — including the `security.capability` query it otherwise sends with every `O_TRUNC`
    /// open of an existing file (to know whether to strip file capabilities). The application sees
    /// `EOPNOTSUPP` either way: the kernel turns this `ENOSYS` into `EOPNOTSUPP` on the call that
    /// gets it, and answers `EOPNOTSUPP` from then on (`fs/fuse/xattr.c`, `no_getxattr`).
    #[error("extended attributes are not implemented")]
    NoXattrs,
    /// The operation is not permitted (changing the owner).
    #[error("operation not permitted")]
    NotPermitted,
    /// An argument is invalid (an unknown rename flag, `readlink` of something not a link).
    #[error("invalid argument")]
    InvalidArgument,
    /// The inode the kernel named is gone (removed or replaced, possibly on another node):
    /// an `open` is retried by the kernel with a fresh lookup; an append handle's commit fails
    /// instead of adding its bytes to nothing.
    #[error("the state this handle or lookup named no longer exists")]
    Stale,
    /// `states/` did not reach the committed version within the commit timeout (`fsync`);
    /// the commit itself is durable.
    #[error("states/ did not catch up with the commit in time")]
    MirrorBehind,
    /// A symlink's target cannot be stored.
    #[error("symlink target: {0}")]
    SymlinkTarget(TargetError),
    /// A symlink was to be opened (the kernel follows links; this only happens if it did not).
    #[error("is a symlink")]
    IsSymlink,
}

/// Why a symlink target is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// The target is empty (Linux refuses it too).
    #[error("empty")]
    Empty,
    /// Over 4,095 bytes.
    #[error("longer than 4095 bytes")]
    TooLong,
    /// Not UTF-8: states and their targets are UTF-8 so the chain stays readable.
    #[error("not UTF-8")]
    NotUtf8,
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
                | node::Error::OutcomeUnknown
                | node::Error::Fatal(_) => libc::EIO,
                // A diverged replica must not spread its wrong view: every read and write fails.
                node::Error::Diverged { .. } => libc::EIO,
                // A removed member cannot commit anything any more.
                node::Error::Removed(_) => libc::EIO,
                node::Error::Rejected(reject) => reject_errno(*reject),
            },
            FsError::Precondition(reject) => reject_errno(*reject),
            FsError::InvalidName(e) => match e {
                StateIdError::TooLong | StateIdError::PathTooLong => libc::ENAMETOOLONG,
                StateIdError::Reserved => libc::EACCES,
                StateIdError::Empty | StateIdError::Dot | StateIdError::Nul | StateIdError::NotUtf8 => {
                    libc::EINVAL
                }
            },
            FsError::TooBig(_) => libc::EFBIG,
            FsError::ReadOnly => libc::EACCES,
            FsError::BadHandle => libc::EBADF,
            FsError::NotSupported => libc::EOPNOTSUPP,
            // Not a flush, fsync or create: the kernel remembering ENOSYS is the point (above).
            FsError::NoXattrs => libc::ENOSYS,
            FsError::NotPermitted => libc::EPERM,
            FsError::InvalidArgument => libc::EINVAL,
            FsError::Stale => libc::ESTALE,
            FsError::MirrorBehind => libc::EIO,
            FsError::SymlinkTarget(e) => match e {
                TargetError::Empty => libc::ENOENT,
                TargetError::TooLong => libc::ENAMETOOLONG,
                TargetError::NotUtf8 => libc::EINVAL,
            },
            FsError::IsSymlink => libc::ELOOP,
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
        Reject::NameTooLong => libc::ENAMETOOLONG,
        Reject::Moved => libc::ESTALE,
        Reject::TooBig => libc::EFBIG,
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
        assert_eq!(FsError::InvalidName(StateIdError::PathTooLong).errno(), libc::ENAMETOOLONG);
        assert_eq!(FsError::InvalidName(StateIdError::Reserved).errno(), libc::EACCES);
        assert_eq!(FsError::Node(node::Error::Timeout(std::time::Duration::from_secs(1))).errno(), libc::EIO);
        assert_eq!(FsError::Node(node::Error::Rejected(Reject::AlreadyExists)).errno(), libc::EEXIST);
        assert_eq!(FsError::Node(node::Error::OutcomeUnknown).errno(), libc::EIO);
        assert_eq!(FsError::Node(node::Error::Rejected(Reject::NotEmpty)).errno(), libc::ENOTEMPTY);
        assert_eq!(FsError::SymlinkTarget(TargetError::TooLong).errno(), libc::ENAMETOOLONG);
        assert_eq!(FsError::SymlinkTarget(TargetError::Empty).errno(), libc::ENOENT);
        assert_eq!(FsError::NotPermitted.errno(), libc::EPERM);
        assert_eq!(FsError::NotSupported.errno(), libc::EOPNOTSUPP);
        assert_eq!(FsError::NoXattrs.errno(), libc::ENOSYS, "the kernel stops asking only for ENOSYS");
        let diverged = node::Error::Diverged { height: 3, hash: "aa".into(), expected: "bb".into() };
        assert_eq!(FsError::Node(diverged).errno(), libc::EIO);
    }
}
