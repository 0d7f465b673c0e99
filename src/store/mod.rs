//! The backing directory: everything lightchain keeps on disk, in files people can read.
//!
//! ```text
//! DATA/identity.json   node id, incarnation, cluster id
//! DATA/cluster-token   the cluster's shared secret for peer RPCs (mode 0600)
//! DATA/lock            held with an exclusive flock by the one process using the directory
//! DATA/chain/          blocks as JSON lines, one segment file per 10,000 blocks
//! DATA/states/         the current tree of states as plain files (derived, written behind;
//!                      repaired at start; `states/.lightchain/` is the mirror's scratch space)
//! DATA/raft/           consensus log segments, vote, committed index, snapshot manifest
//! DATA/tmp/            scratch space for crash-safe replace-by-rename
//! ```
//!
//! This layer knows files and bytes, not consensus: it never imports openraft, and it never
//! decides what a block means (that is `chain`). Its invariants: a write that is acknowledged
//! as durable was fsynced (file and, for new names, the directory); a file in `states/` is
//! replaced by rename, so a reader never sees it torn; nothing under `states/` is the source
//! of truth — the chain is, and the [`mirror`] makes `states/` follow it and repairs it.
//!
//! See `docs/architecture/store.md`.

pub mod chain_file;
pub mod chain_segments;
#[cfg(test)]
pub mod crashsim;
pub mod disk;
pub mod hash_index;
pub mod identity;
pub mod mirror;
pub mod pace;
pub mod raft_log;
pub mod states;

use std::fs::File;
use std::path::{Path, PathBuf};

/// A failure of the backing directory. Never deterministic: another node may not have it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the data directory.
    #[error(
        "data directory {path} is in use by another lightchain process (its lock file is held); \
         stop that process or choose another --data"
    )]
    Locked {
        /// The data directory.
        path: PathBuf,
    },
    /// A file's content is not what lightchain writes.
    #[error("{path}: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        detail: String,
    },
}

/// Result alias of this layer.
pub type Result<T> = std::result::Result<T, Error>;

/// Attaches the operation and path to an I/O error.
pub(crate) trait IoContext<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T> {
        self.map_err(|source| Error::Io { op, path: path.to_owned(), source })
    }
}

/// The paths of a data directory.
#[derive(Clone, Debug)]
pub struct DataDir {
    /// The data directory itself.
    pub root: PathBuf,
}

impl DataDir {
    /// Creates the directory layout if it is missing.
    pub fn create(root: &Path) -> Result<DataDir> {
        let dir = DataDir { root: root.to_owned() };
        for sub in [dir.root.clone(), dir.chain(), dir.states(), dir.raft(), dir.tmp()] {
            std::fs::create_dir_all(&sub).ctx("create directory", &sub)?;
        }
        Ok(dir)
    }

    /// Opens an existing directory without creating anything (for `log`, `verify`).
    pub fn open_existing(root: &Path) -> Result<DataDir> {
        let dir = DataDir { root: root.to_owned() };
        std::fs::metadata(dir.chain()).ctx("open chain directory", &dir.chain())?;
        Ok(dir)
    }

    /// `chain/`
    pub fn chain(&self) -> PathBuf {
        self.root.join("chain")
    }
    /// `states/`
    pub fn states(&self) -> PathBuf {
        self.root.join("states")
    }
    /// `raft/`
    pub fn raft(&self) -> PathBuf {
        self.root.join("raft")
    }
    /// `tmp/`
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }
    /// `identity.json`
    pub fn identity(&self) -> PathBuf {
        self.root.join("identity.json")
    }
    /// `cluster-token`
    pub fn token(&self) -> PathBuf {
        self.root.join("cluster-token")
    }

    /// Takes the directory for this process: an exclusive `flock` on `DATA/lock`, held until the
    /// returned guard is dropped (or the process dies; the kernel then releases it). A second
    /// process on the same directory gets [`Error::Locked`].
    pub fn lock(&self) -> Result<DirLock> {
        use std::os::unix::io::AsRawFd;
        let path = self.root.join("lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .ctx("open", &path)?;
        // SAFETY: flock on a valid, open descriptor has no memory-safety preconditions.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let source = std::io::Error::last_os_error();
            if source.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(Error::Locked { path: self.root.clone() });
            }
            return Err(Error::Io { op: "lock", path, source });
        }
        Ok(DirLock { _file: file })
    }
}

/// The exclusive lock on a data directory; released when dropped.
#[derive(Debug)]
pub struct DirLock {
    /// The open lock file holding the `flock`.
    _file: File,
}

/// Replaces `path` with `bytes` crash-safely: write a temporary file beside it, fsync it,
/// rename it over `path`, fsync the directory. After it returns, the new content survives
/// power loss; before, either the old or the new content is there, never a mix.
pub fn write_durable(path: &Path, bytes: &[u8]) -> Result<()> {
    // A name of its own per call: two writers of one file (a snapshot being built while one
    // is installed) must not share a temporary file.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp.{}.{n}", std::process::id()));
    replace_with(&tmp, path, bytes, 0o666)
}

/// Writes `bytes` into a new file `tmp` (mode `mode`), fsyncs it, renames it over `path` and
/// fsyncs the directory.
fn replace_with(tmp: &Path, path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let file = disk::open(tmp, disk::Open::New, false, mode)?;
    disk::write_at(&file, tmp, 0, &[bytes])?;
    disk::sync(&file, tmp)?;
    disk::rename(tmp, path)?;
    disk::sync_dir(path.parent().expect("a file has a directory"))
}

/// [`write_durable`] for a secret: the file is created readable by its owner only (0600).
pub fn write_durable_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = disk::remove(&tmp);
    replace_with(&tmp, path, bytes, 0o600)
}

/// Lets the kernel forget the cached pages of `file` below `len`, once they are on disk
/// (`POSIX_FADV_DONTNEED`), for files appended to and read back rarely or from memory
/// (`chain/`, the consensus log). Appending otherwise fills fresh page-cache pages for good,
/// and a fresh page costs more to write into than one the kernel freed a moment ago: on this
/// project's virtual machines, whose memory the host backs on first touch, 1 MiB appends
/// cost 1.1 ms of system time each kept against 0.7 ms dropped
/// (docs/architecture/write-path.md). The page that holds `len` is kept: the next append
/// writes into it, and would have to read it back from disk first. Only clean pages go, and
/// the caller has fsynced everything below `len`. A hint: a failure changes nothing stored.
pub fn drop_cached(file: &File, len: u64) {
    use std::os::fd::AsRawFd;
    const PAGE: u64 = 4096;
    let whole = (len / PAGE * PAGE) as libc::off_t;
    if whole > 0 {
        // SAFETY: a plain system call on a descriptor `file` owns; it reads no memory of ours.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, whole, libc::POSIX_FADV_DONTNEED) };
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_process_at_a_time_holds_a_data_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::create(tmp.path()).unwrap();
        let held = dir.lock().unwrap();
        // flock locks belong to open file descriptions, so a second open conflicts even here.
        assert!(matches!(dir.lock(), Err(Error::Locked { .. })));
        drop(held);
        dir.lock().unwrap();
    }
}
