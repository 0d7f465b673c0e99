//! The changes lightchain makes to the files that are the truth (`raft/`, `chain/`, the identity
//! files): create, write, truncate, fsync, rename, remove, and fsync of a directory.
//!
//! Each function is the plain system call, with the operation and path attached to its error.
//! In this crate's unit tests each one also reports what it did to [`super::crashsim`], which
//! replays the calls into a model of a disk that can lose power (every write not yet fsynced
//! may be lost, torn or zero-filled; every name not yet fsynced into its directory may come
//! back as it was). So a call that bypasses this module is a change the power-loss test cannot
//! see; the test fails when it finds one (its model and the real directory disagree).
//!
//! Must not: decide what is written or when it is synced (the callers do), or be used for the
//! derived files of `states/` and the scratch space `tmp/` (not the truth; repaired at start).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use super::{IoContext, Result};

#[cfg(test)]
use super::crashsim::{self, Op};

/// How [`open`] treats the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Open {
    /// The file must exist.
    Existing,
    /// Created if missing, kept as it is otherwise.
    Create,
    /// Created if missing, emptied otherwise.
    Truncate,
    /// Created; it must not exist yet.
    New,
}

/// Opens `path` for reading and writing (or, with `append`, for appending), as `how` says,
/// with permission bits `mode` for a file it creates.
pub fn open(path: &Path, how: Open, append: bool, mode: u32) -> Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).mode(mode);
    if append {
        options.append(true);
    } else {
        options.write(true);
    }
    match how {
        Open::Existing => {}
        Open::Create => {
            options.create(true);
        }
        Open::Truncate => {
            options.create(true).truncate(true);
        }
        Open::New => {
            options.create_new(true);
        }
    }
    let file = options.open(path).ctx(if how == Open::Existing { "open" } else { "create" }, path)?;
    #[cfg(test)]
    if how != Open::Existing {
        crashsim::record(path, || Op::Create { path: path.to_owned(), truncate: how == Open::Truncate });
    }
    Ok(file)
}

/// Writes `parts` one after the other at `offset` (`pwritev`, finishing a short write piece by
/// piece), without joining them into one buffer first.
pub fn write_at(file: &File, path: &Path, offset: u64, parts: &[&[u8]]) -> Result<()> {
    write_vectored_at(file, offset, parts).ctx("write", path)?;
    #[cfg(test)]
    crashsim::record(path, || Op::Write {
        path: path.to_owned(),
        offset: Some(offset),
        bytes: parts.concat(),
    });
    Ok(())
}

/// Appends `bytes` to a file opened for appending.
pub fn append(mut file: &File, path: &Path, bytes: &[u8]) -> Result<()> {
    file.write_all(bytes).ctx("write", path)?;
    #[cfg(test)]
    crashsim::record(path, || Op::Write { path: path.to_owned(), offset: None, bytes: bytes.to_vec() });
    Ok(())
}

/// Cuts or extends the file to `len` bytes.
pub fn set_len(file: &File, path: &Path, len: u64) -> Result<()> {
    file.set_len(len).ctx("truncate", path)?;
    #[cfg(test)]
    crashsim::record(path, || Op::SetLen { path: path.to_owned(), len });
    Ok(())
}

/// Makes the file's content durable (`fdatasync`; its size is part of what it syncs).
pub fn sync(file: &File, path: &Path) -> Result<()> {
    #[cfg(test)]
    let mark = crashsim::mark();
    file.sync_data().ctx("fsync", path)?;
    #[cfg(test)]
    crashsim::record(path, || Op::Synced { path: path.to_owned(), mark });
    Ok(())
}

/// Renames `from` to `to`, replacing `to`. Durable once both directories are synced.
pub fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).ctx("rename", to)?;
    #[cfg(test)]
    crashsim::record(to, || Op::Rename { from: from.to_owned(), to: to.to_owned() });
    Ok(())
}

/// Removes a file. Durable once its directory is synced.
pub fn remove(path: &Path) -> Result<()> {
    std::fs::remove_file(path).ctx("remove", path)?;
    #[cfg(test)]
    crashsim::record(path, || Op::Remove { path: path.to_owned() });
    Ok(())
}

/// Makes the names created, renamed or removed in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(test)]
    let mark = crashsim::mark();
    File::open(dir).ctx("open directory", dir)?.sync_all().ctx("fsync directory", dir)?;
    #[cfg(test)]
    crashsim::record(dir, || Op::SyncedDir { dir: dir.to_owned(), mark });
    Ok(())
}

/// `pwritev` of all of `parts` at `offset`, retried on `EINTR`, a short write finished piece by
/// piece.
fn write_vectored_at(file: &File, offset: u64, parts: &[&[u8]]) -> std::io::Result<()> {
    let slices: Vec<std::io::IoSlice<'_>> = parts.iter().map(|p| std::io::IoSlice::new(p)).collect();
    let mut written = loop {
        match rustix::io::pwritev(file, &slices, offset) {
            Ok(n) => break n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let mut at = offset;
    for part in parts {
        let done = written.min(part.len());
        written -= done;
        file.write_all_at(&part[done..], at + done as u64)?;
        at += part.len() as u64;
    }
    Ok(())
}
