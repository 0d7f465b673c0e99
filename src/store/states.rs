//! `states/`: the current tree of states as plain files, for people and tools without lightchain.
//!
//! Derived data, written behind the acknowledgement by the mirror worker ([`super::mirror`]):
//! this module only knows how to make one path on disk match one entry of the tree, how to move
//! and remove paths, and how to find every difference between `states/` and a tree.
//!
//! Every call works relative to directory file descriptors (`openat`, `renameat`, `mkdirat`,
//! `unlinkat`), walking one component at a time, so no absolute path is ever built: the
//! longest legal state ID (4,095 bytes) under a data directory that is itself deep never hits
//! the host's `PATH_MAX`. A file is written to a scratch directory inside `states/` (so it is
//! on the same filesystem even when `states/` is a mount of its own) and renamed into place: a
//! reader of `states/` never sees a torn file. The scratch directory is `states/.lightchain/`,
//! a name no state can have.
//!
//! A version that replaces a file is swapped in (`RENAME_EXCHANGE`), not renamed over it, and
//! the replaced file, emptied, holds the next version written — unless anything else has it
//! open (a reader keeps the version it opened, whole) or links to it. Creating a file per
//! version costs more than the write: ext4 writes a file back at once when it is renamed over
//! another (`auto_da_alloc`), and without a journal it skips every recently freed inode when
//! it allocates one, a scan that grows with the churn of the last minutes
//! (`docs/architecture/write-path.md`).
//!
//! Any mode, as any user: a process without `CAP_DAC_OVERRIDE` gives its own copies the owner's
//! bits while it works in them (a directory of 0555 or 0000, a file of 0000 it compares) and
//! sets their final modes last ([`StatesDir::finish`]).
//!
//! Must not: decide what the tree holds (the chain does), or let a failure here reach
//! consensus — callers log, count and retry.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, RenameFlags, Timestamps, Uid};
use rustix::io::Errno;
use rustix::time::Timespec;

use super::{DataDir, Error, Result};
use crate::chain::{Entry, EntryKind, StateId, Tree, CONTROL_DIR};

/// A difference between `states/` and the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// A state is missing on disk or differs in kind, content or mode.
    Stale(StateId),
    /// Something on disk is not in the tree: `name` inside the directory of state `dir`.
    Extra {
        /// The directory it is in (a state of the tree).
        dir: StateId,
        /// Its name on disk (not necessarily a valid state name).
        name: Vec<u8>,
    },
}

/// What [`StatesDir::settle`] did.
#[derive(Debug, Default)]
pub struct Settled {
    /// The differences it fixed.
    pub fixed: Vec<Mismatch>,
    /// The states it could not compare or fix, with why.
    pub failed: Vec<(StateId, Error)>,
    /// Directories it made on the way (mode 0755), whose own modes are still to be written.
    pub made: Vec<StateId>,
}

/// Writer of `states/`.
pub struct StatesDir {
    root: PathBuf,
    counter: AtomicU64,
    /// This process's id, naming its temporary files.
    pid: u32,
    /// This process's umask: a mode it does not strip needs no separate chmod.
    umask: u32,
    /// Whether this process may give files away (owners are mirrored only then).
    is_root: bool,
    /// Whether file permissions do not apply to this process (`CAP_DAC_OVERRIDE`, which root
    /// usually has). Without it, the mirror gives its own copies the owner's bits while it
    /// works in them (a file of mode 0000, a directory of 0555) and sets their modes last.
    overrides_permissions: bool,
    /// Set once the filesystem refused `RENAME_EXCHANGE`: files are renamed over from then on.
    no_exchange: AtomicBool,
    /// A test's fault hook: writes of these states fail (`EIO`) while they are listed.
    #[cfg(test)]
    pub(crate) refuse: std::sync::Arc<std::sync::Mutex<BTreeSet<StateId>>>,
}

/// How many emptied files the scratch directory keeps for versions to come. A round takes
/// one per file it writes and gives one back per file it replaces, so a few suffice.
const SPARES_KEPT: usize = 8;

/// Open directory descriptors for one pass over `states/`, by state ID. Cleared whenever a
/// directory is moved or removed, since a descriptor follows the directory, not the name.
#[derive(Default)]
pub struct Dirs {
    /// Directories of the tree.
    open: HashMap<StateId, OwnedFd>,
    /// The scratch directory.
    scratch: Option<OwnedFd>,
    /// Names of empty files in the scratch directory that nothing else opens or links to: the
    /// files of replaced versions, kept to hold the next ones.
    spares: Vec<String>,
    /// Directories opened up for this pass (a process that is not root gave them the owner's
    /// `rwx` to work inside them), each with the mode it gets back at
    /// [`StatesDir::finish`]. A descriptor follows its directory through renames.
    opened_up: Vec<(OwnedFd, u32)>,
    /// Which of `opened_up` each directory of the tree is, while `open` is valid.
    opened_up_ids: HashMap<StateId, usize>,
    /// Which of `opened_up` each directory is, by device and inode.
    opened_up_inodes: HashMap<(u64, u64), usize>,
}

impl Dirs {
    /// Forgets the descriptors of the tree's directories (the scratch one and the spares stay
    /// valid, and opened-up directories still get their modes back at the end of the pass).
    pub fn clear(&mut self) {
        self.open.clear();
        self.opened_up_ids.clear();
    }

    /// The mode directory `id` gets back at the end of the pass, if it was opened up.
    fn final_mode(&self, id: &StateId) -> Option<u32> {
        self.opened_up_ids.get(id).map(|&i| self.opened_up[i].1)
    }
}

/// The owner's read, write and search bits: what the mirror needs in a directory it works in.
const OWNER_RWX: u32 = 0o700;

fn io_err(op: &'static str, path: impl Into<PathBuf>, e: Errno) -> Error {
    Error::Io { op, path: path.into(), source: std::io::Error::from(e) }
}

fn display(id: &StateId) -> PathBuf {
    PathBuf::from(format!("states/{}", id.as_str()))
}

const DIR_FLAGS: OFlags =
    OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

impl StatesDir {
    /// Uses the `states/` of a data directory.
    pub fn new(dir: &DataDir) -> StatesDir {
        StatesDir {
            root: dir.states(),
            counter: AtomicU64::new(0),
            pid: std::process::id(),
            umask: process_umask(),
            is_root: rustix::process::geteuid().is_root(),
            overrides_permissions: overrides_permissions(),
            no_exchange: AtomicBool::new(false),
            #[cfg(test)]
            refuse: Default::default(),
        }
    }

    /// The `states/` directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn open_root(&self) -> Result<OwnedFd> {
        rustix::fs::open(&self.root, DIR_FLAGS, Mode::empty()).map_err(|e| io_err("open", &self.root, e))
    }

    /// Opens `states/` itself, giving it the owner's `rwx` first if this process cannot open it
    /// (the root state's mode can be 0000 too).
    fn open_root_dir(&self, dirs: &mut Dirs) -> Result<OwnedFd> {
        match self.open_root() {
            Err(Error::Io { source, .. })
                if source.raw_os_error() == Some(Errno::ACCESS.raw_os_error())
                    && !self.overrides_permissions =>
            {
                let failed = |op, e| io_err(op, &self.root, e);
                let st = rustix::fs::stat(&self.root).map_err(|e| failed("stat", e))?;
                let mode = st.st_mode & 0o7777;
                rustix::fs::chmod(&self.root, Mode::from_raw_mode(mode | OWNER_RWX))
                    .map_err(|e| failed("chmod", e))?;
                let fd = self.open_root()?;
                let dup = fd.try_clone().map_err(|source| Error::Io {
                    op: "dup",
                    path: self.root.clone(),
                    source,
                })?;
                dirs.opened_up.push((dup, mode));
                dirs.opened_up_inodes.insert((st.st_dev, st.st_ino), dirs.opened_up.len() - 1);
                Ok(fd)
            }
            other => other,
        }
    }

    /// Opens directory `name` of `parent`. A process that is not root cannot open a directory
    /// of mode 0000, nor search one of 0600: it gives its own copy the owner's `rwx` first.
    fn open_dir_at(
        &self,
        dirs: &mut Dirs,
        parent: &OwnedFd,
        name: &str,
    ) -> std::result::Result<OwnedFd, Errno> {
        match rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty()) {
            Err(Errno::ACCESS) if !self.overrides_permissions => {
                let st = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)?;
                let mode = st.st_mode & 0o7777;
                rustix::fs::chmodat(parent, name, Mode::from_raw_mode(mode | OWNER_RWX), AtFlags::empty())?;
                let fd = rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty())?;
                let dup = fd.try_clone().map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))?;
                dirs.opened_up.push((dup, mode));
                dirs.opened_up_inodes.insert((st.st_dev, st.st_ino), dirs.opened_up.len() - 1);
                Ok(fd)
            }
            other => other,
        }
    }

    /// Makes directory `fd` (state `id`) one the mirror can work in: a process that is not
    /// root gives it the owner's `rwx` for this pass, and [`finish`](Self::finish) sets its mode
    /// back. Nothing to do as root, or when it has them.
    fn open_up(&self, dirs: &mut Dirs, id: &StateId, fd: &OwnedFd) -> Result<()> {
        if self.overrides_permissions || dirs.opened_up_ids.contains_key(id) {
            return Ok(());
        }
        let st = rustix::fs::fstat(fd).map_err(|e| io_err("stat", display(id), e))?;
        let mode = st.st_mode & 0o7777;
        // A directory opened up on the way (mode 0000) is already among them.
        let inode = (st.st_dev, st.st_ino);
        let index = match dirs.opened_up_inodes.get(&inode).copied() {
            Some(i) => i,
            None if mode & OWNER_RWX == OWNER_RWX => return Ok(()),
            None => {
                rustix::fs::fchmod(fd, Mode::from_raw_mode(mode | OWNER_RWX))
                    .map_err(|e| io_err("chmod", display(id), e))?;
                let dup =
                    fd.try_clone().map_err(|source| Error::Io { op: "dup", path: display(id), source })?;
                dirs.opened_up.push((dup, mode));
                dirs.opened_up_inodes.insert(inode, dirs.opened_up.len() - 1);
                dirs.opened_up.len() - 1
            }
        };
        dirs.opened_up_ids.insert(id.clone(), index);
        Ok(())
    }

    /// Sets directory `fd` (state `id`) to `mode`; one the mirror opened up keeps the owner's
    /// `rwx` until [`finish`](Self::finish), which sets `mode` last.
    fn set_dir_mode(&self, dirs: &mut Dirs, id: &StateId, fd: &OwnedFd, mode: u32) -> Result<()> {
        let chmod = |mode: u32| {
            rustix::fs::fchmod(fd, Mode::from_raw_mode(mode)).map_err(|e| io_err("chmod", display(id), e))
        };
        if self.overrides_permissions {
            return chmod(mode);
        }
        let st = rustix::fs::fstat(fd).map_err(|e| io_err("stat", display(id), e))?;
        let inode = (st.st_dev, st.st_ino);
        let known = dirs.opened_up_ids.get(id).or_else(|| dirs.opened_up_inodes.get(&inode)).copied();
        match known {
            // Opened up already: it stays open until the end of the pass, which sets `mode`.
            Some(i) => {
                dirs.opened_up[i].1 = mode;
                dirs.opened_up_ids.insert(id.clone(), i);
                chmod(mode | OWNER_RWX)
            }
            None if mode & OWNER_RWX != OWNER_RWX => {
                chmod(mode | OWNER_RWX)?;
                let dup =
                    fd.try_clone().map_err(|source| Error::Io { op: "dup", path: display(id), source })?;
                dirs.opened_up.push((dup, mode));
                let index = dirs.opened_up.len() - 1;
                dirs.opened_up_ids.insert(id.clone(), index);
                dirs.opened_up_inodes.insert(inode, index);
                Ok(())
            }
            None => chmod(mode),
        }
    }

    /// Ends a pass: every directory opened up gets its mode back (the last thing written to
    /// it), and the descriptors are forgotten. Returns the first failure.
    pub fn finish(&self, dirs: &mut Dirs) -> Result<()> {
        dirs.clear();
        dirs.opened_up_inodes.clear();
        let mut result = Ok(());
        for (fd, mode) in dirs.opened_up.drain(..) {
            if let Err(e) = rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)) {
                // Removed meanwhile is fine; anything else is a failure of the pass.
                if result.is_ok() {
                    result = Err(io_err("chmod", &self.root, e));
                }
            }
        }
        result
    }

    /// The descriptor of directory `id`, walking from the root one component at a time.
    /// Missing directories on the way are created (mode 0755; the mirror then writes their
    /// real mode) when `create` is set; their IDs are added to `made`.
    fn dir<'a>(
        &self,
        dirs: &'a mut Dirs,
        id: &StateId,
        create: bool,
        made: &mut Vec<StateId>,
    ) -> Result<&'a OwnedFd> {
        if !dirs.open.contains_key(id) {
            let fd = match id.parent() {
                None => self.open_root_dir(dirs)?,
                Some(parent) => {
                    self.dir(dirs, &parent, create, made)?;
                    let parent_fd = dirs.open[&parent].try_clone().map_err(|source| Error::Io {
                        op: "dup",
                        path: display(&parent),
                        source,
                    })?;
                    let name = id.name();
                    match self.open_dir_at(dirs, &parent_fd, name) {
                        Ok(fd) => fd,
                        Err(Errno::NOENT) if create => {
                            rustix::fs::mkdirat(&parent_fd, name, Mode::from_raw_mode(0o755))
                                .map_err(|e| io_err("mkdir", display(id), e))?;
                            made.push(id.clone());
                            rustix::fs::openat(&parent_fd, name, DIR_FLAGS, Mode::empty())
                                .map_err(|e| io_err("open", display(id), e))?
                        }
                        Err(e) => return Err(io_err("open", display(id), e)),
                    }
                }
            };
            self.open_up(dirs, id, &fd)?;
            dirs.open.insert(id.clone(), fd);
        }
        Ok(&dirs.open[id])
    }

    /// The scratch directory for files on their way into place.
    fn scratch<'a>(&self, dirs: &'a mut Dirs) -> Result<&'a OwnedFd> {
        if dirs.scratch.is_none() {
            let path = self.root.join(CONTROL_DIR);
            let root = self.dir(dirs, &StateId::root(), false, &mut Vec::new())?;
            let fd = match rustix::fs::openat(root, CONTROL_DIR, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => {
                    rustix::fs::mkdirat(root, CONTROL_DIR, Mode::from_raw_mode(0o700))
                        .map_err(|e| io_err("mkdir", &path, e))?;
                    rustix::fs::openat(root, CONTROL_DIR, DIR_FLAGS, Mode::empty())
                        .map_err(|e| io_err("open", &path, e))?
                }
                Err(e) => return Err(io_err("open", &path, e)),
            };
            dirs.scratch = Some(fd);
        }
        Ok(dirs.scratch.as_ref().expect("opened above"))
    }

    fn tmp_name(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("state-{}-{n}", self.pid)
    }

    /// Makes path `id` match `entry` (`None`: nothing is there). Directories missing on the
    /// way are created; their IDs are returned so their own modes get written too.
    pub fn write(&self, dirs: &mut Dirs, id: &StateId, entry: Option<&Entry>) -> Result<Vec<StateId>> {
        #[cfg(test)]
        if self.refuse.lock().unwrap().contains(id) {
            return Err(io_err("write", display(id), Errno::IO));
        }
        let mut made = Vec::new();
        let Some(parent) = id.parent() else {
            // The root: only its mode is mirrored.
            if let Some(entry) = entry {
                let root = self.dir(dirs, id, false, &mut made)?;
                let root =
                    root.try_clone().map_err(|source| Error::Io { op: "dup", path: display(id), source })?;
                self.set_dir_mode(dirs, id, &root, entry.mode)?;
            }
            return Ok(made);
        };
        let Some(entry) = entry else {
            match self.dir(dirs, &parent, false, &mut made) {
                Ok(_) => {}
                // No parent on disk: nothing to remove.
                Err(Error::Io { source, .. }) if source.raw_os_error() == Some(libc_enoent()) => {
                    return Ok(made)
                }
                Err(e) => return Err(e),
            }
            self.remove(dirs, &parent, id.name().as_bytes())?;
            return Ok(made);
        };
        self.dir(dirs, &parent, true, &mut made)?;
        let name = id.name();
        match &entry.kind {
            EntryKind::Dir => {
                let parent_fd = self.dir(dirs, &parent, false, &mut made)?;
                match rustix::fs::statat(parent_fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {}
                    Ok(_) => {
                        self.remove(dirs, &parent, name.as_bytes())?;
                        self.mkdir(dirs, &parent, id)?;
                    }
                    Err(Errno::NOENT) => self.mkdir(dirs, &parent, id)?,
                    Err(e) => return Err(io_err("stat", display(id), e)),
                }
                let fd = self.dir(dirs, id, false, &mut made)?;
                let fd =
                    fd.try_clone().map_err(|source| Error::Io { op: "dup", path: display(id), source })?;
                self.own(&fd, entry).map_err(|e| io_err("chown", display(id), e))?;
                // After the owner: a change of owner clears the set-group-ID bit.
                self.set_dir_mode(dirs, id, &fd, entry.mode)?;
                // A directory's mtime moves again as its children are written; it is mirrored
                // as of this write only.
                rustix::fs::futimens(&fd, &timestamps(entry))
                    .map_err(|e| io_err("utimens", display(id), e))?;
            }
            EntryKind::Symlink(target) => {
                let tmp = self.tmp_name();
                let scratch = self.scratch(dirs)?;
                let made_link = rustix::fs::symlinkat(target.as_str(), scratch, tmp.as_str())
                    .and_then(|()| match self.is_root {
                        true => rustix::fs::chownat(
                            scratch,
                            tmp.as_str(),
                            Some(Uid::from_raw(entry.uid)),
                            Some(Gid::from_raw(entry.gid)),
                            AtFlags::SYMLINK_NOFOLLOW,
                        ),
                        false => Ok(()),
                    })
                    .and_then(|()| {
                        rustix::fs::utimensat(
                            scratch,
                            tmp.as_str(),
                            &timestamps(entry),
                            AtFlags::SYMLINK_NOFOLLOW,
                        )
                    });
                if let Err(e) = made_link {
                    let _ = rustix::fs::unlinkat(scratch, tmp.as_str(), AtFlags::empty());
                    return Err(io_err("symlink", display(id), e));
                }
                self.place(dirs, &parent, &tmp, id)?;
            }
            EntryKind::File(content) => {
                let (tmp, fd, spare) = self.scratch_file(dirs, id, entry.mode)?;
                let mut file = std::fs::File::from(fd);
                let written = file.write_all(content.as_bytes()).map_err(|source| Error::Io {
                    op: "write",
                    path: display(id),
                    source,
                });
                let chmod = || {
                    // The owner first: a change of owner clears the set-user-ID bit.
                    self.own(&file, entry).map_err(|e| io_err("chown", display(id), e))?;
                    // A spare has the mode of the version it held; a new file lacks what the
                    // umask took, and the set-ID bits the owner change cleared.
                    if spare || entry.mode & (self.umask | 0o6000) != 0 {
                        rustix::fs::fchmod(&file, Mode::from_raw_mode(entry.mode))
                            .map_err(|e| io_err("chmod", display(id), e))?;
                    }
                    // After the write, which set them to now.
                    rustix::fs::futimens(&file, &timestamps(entry))
                        .map_err(|e| io_err("utimens", display(id), e))
                };
                if let Err(e) = written.and_then(|()| chmod()) {
                    let _ = rustix::fs::unlinkat(self.scratch(dirs)?, tmp.as_str(), AtFlags::empty());
                    return Err(e);
                }
                drop(file);
                self.place(dirs, &parent, &tmp, id)?;
            }
        }
        Ok(made)
    }

    /// Gives `fd` the entry's owner — only when running as root; otherwise the host does not
    /// allow it and owners are not mirrored (DESIGN §1.4: "where the host allows").
    fn own(&self, fd: impl AsFd, entry: &Entry) -> std::result::Result<(), Errno> {
        if !self.is_root {
            return Ok(());
        }
        rustix::fs::fchown(fd, Some(Uid::from_raw(entry.uid)), Some(Gid::from_raw(entry.gid)))
    }

    fn mkdir(&self, dirs: &mut Dirs, parent: &StateId, id: &StateId) -> Result<()> {
        let parent_fd = self.dir(dirs, parent, false, &mut Vec::new())?;
        rustix::fs::mkdirat(parent_fd, id.name(), Mode::from_raw_mode(0o700))
            .map_err(|e| io_err("mkdir", display(id), e))
    }

    /// An empty file in the scratch directory for the next version of `id`, opened for
    /// writing: a spare if there is one (true), else a new file of mode `mode` (false).
    fn scratch_file(&self, dirs: &mut Dirs, id: &StateId, mode: u32) -> Result<(String, OwnedFd, bool)> {
        self.scratch(dirs)?;
        let scratch = dirs.scratch.as_ref().expect("opened above");
        while let Some(spare) = dirs.spares.pop() {
            // Non-blocking, in case something other than our file took its name.
            let flags = OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
            match rustix::fs::openat(scratch, spare.as_str(), flags, Mode::empty()) {
                Ok(fd) => return Ok((spare, fd, true)),
                // Removed or replaced behind our back: forget it and try the next.
                Err(_) => {
                    let _ = rustix::fs::unlinkat(scratch, spare.as_str(), AtFlags::empty());
                }
            }
        }
        let tmp = self.tmp_name();
        let fd = rustix::fs::openat(
            scratch,
            tmp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )
        .map_err(|e| io_err("create", display(id), e))?;
        Ok((tmp, fd, false))
    }

    /// Scratch file `tmp` holds the version just replaced: kept, emptied, as a spare when
    /// nothing else has it open or links to it; removed otherwise.
    fn keep_spare(&self, dirs: &mut Dirs, tmp: &str) {
        let Some(scratch) = dirs.scratch.as_ref() else { return };
        if !self.overrides_permissions {
            // The replaced version may have had no write bit for its owner (mode 0444, 0000).
            let _ = rustix::fs::chmodat(scratch, tmp, Mode::from_raw_mode(0o600), AtFlags::empty());
        }
        let emptied = dirs.spares.len() < SPARES_KEPT && empty_if_unshared(scratch, tmp);
        if emptied {
            dirs.spares.push(tmp.to_owned());
        } else if let Err(e) = rustix::fs::unlinkat(scratch, tmp, AtFlags::empty()) {
            tracing::warn!(error = %e, file = tmp, "mirror: cannot remove a replaced version from the scratch directory");
        }
    }

    /// Puts scratch file `tmp` in the place of `id`: swapped with a file or symlink there (the
    /// one replaced then becomes a spare or is removed), renamed into place otherwise, first
    /// removing a directory in the way.
    fn place(&self, dirs: &mut Dirs, parent: &StateId, tmp: &str, id: &StateId) -> Result<()> {
        for attempt in 0..2 {
            self.scratch(dirs)?;
            self.dir(dirs, parent, false, &mut Vec::new())?;
            let (scratch, parent_fd) = (dirs.scratch.as_ref().expect("opened"), &dirs.open[parent]);
            let replaces_a_file = rustix::fs::statat(parent_fd, id.name(), AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) != FileType::Directory);
            if replaces_a_file && !self.no_exchange.load(Ordering::Relaxed) {
                match rustix::fs::renameat_with(scratch, tmp, parent_fd, id.name(), RenameFlags::EXCHANGE) {
                    Ok(()) => {
                        self.keep_spare(dirs, tmp);
                        return Ok(());
                    }
                    // A filesystem without it: rename from now on.
                    Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                        self.no_exchange.store(true, Ordering::Relaxed);
                    }
                    // Gone meanwhile, or anything else: the rename below says what it is.
                    Err(_) => {}
                }
            }
            match rustix::fs::renameat(scratch, tmp, parent_fd, id.name()) {
                Ok(()) => return Ok(()),
                Err(Errno::ISDIR | Errno::NOTEMPTY | Errno::EXIST) if attempt == 0 => {
                    self.remove(dirs, parent, id.name().as_bytes())?;
                }
                Err(e) => {
                    let _ = rustix::fs::unlinkat(scratch, tmp, AtFlags::empty());
                    return Err(io_err("rename", display(id), e));
                }
            }
        }
        unreachable!("the second attempt returns")
    }

    /// Removes `name` (a file or a whole directory) from directory `dir`; missing is fine.
    pub fn remove(&self, dirs: &mut Dirs, dir: &StateId, name: &[u8]) -> Result<()> {
        let name = OsStr::from_bytes(name);
        let parent_fd = self.dir(dirs, dir, false, &mut Vec::new())?;
        let shown = || display(dir).join(name);
        match rustix::fs::unlinkat(parent_fd, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(Errno::ISDIR | Errno::PERM) => {
                let fd = open_to_empty(parent_fd, name).map_err(|e| io_err("open", shown(), e))?;
                empty_dir(&fd).map_err(|e| io_err("empty", shown(), e))?;
                let parent_fd = self.dir(dirs, dir, false, &mut Vec::new())?;
                rustix::fs::unlinkat(parent_fd, name, AtFlags::REMOVEDIR)
                    .map_err(|e| io_err("rmdir", shown(), e))?;
                dirs.clear();
                Ok(())
            }
            Err(e) => Err(io_err("remove", shown(), e)),
        }
    }

    /// Moves `from` to `to` on disk, replacing what is at `to`. Returns false when `from` is
    /// not on disk (never mirrored): the caller then writes `to` from the tree.
    pub fn rename(&self, dirs: &mut Dirs, from: &StateId, to: &StateId) -> Result<bool> {
        let (Some(from_dir), Some(to_dir)) = (from.parent(), to.parent()) else { return Ok(false) };
        for attempt in 0..2 {
            let src = match self.dir(dirs, &from_dir, false, &mut Vec::new()) {
                Ok(fd) => fd.try_clone().map_err(|source| Error::Io {
                    op: "dup",
                    path: display(&from_dir),
                    source,
                })?,
                Err(_) => return Ok(false),
            };
            let dst = self.dir(dirs, &to_dir, true, &mut Vec::new())?;
            match rustix::fs::renameat(&src, from.name(), dst, to.name()) {
                Ok(()) => {
                    dirs.clear();
                    return Ok(true);
                }
                Err(Errno::NOENT) => return Ok(false),
                Err(Errno::ISDIR | Errno::NOTEMPTY | Errno::EXIST | Errno::NOTDIR) if attempt == 0 => {
                    self.remove(dirs, &to_dir, to.name().as_bytes())?;
                }
                // A directory moved to another parent needs its own write bit (for `..`).
                Err(Errno::ACCESS) if attempt == 0 && !self.overrides_permissions => {
                    self.dir(dirs, from, false, &mut Vec::new())?;
                }
                Err(e) => return Err(io_err("rename", display(from), e)),
            }
        }
        unreachable!("the second attempt returns")
    }

    /// Swaps `a` and `b` on disk. Returns false when either is missing.
    pub fn exchange(&self, dirs: &mut Dirs, a: &StateId, b: &StateId) -> Result<bool> {
        let (Some(a_dir), Some(b_dir)) = (a.parent(), b.parent()) else { return Ok(false) };
        let a_fd = match self.dir(dirs, &a_dir, false, &mut Vec::new()) {
            Ok(fd) => {
                fd.try_clone().map_err(|source| Error::Io { op: "dup", path: display(&a_dir), source })?
            }
            Err(_) => return Ok(false),
        };
        let Ok(b_fd) = self.dir(dirs, &b_dir, false, &mut Vec::new()) else { return Ok(false) };
        let b_fd =
            b_fd.try_clone().map_err(|source| Error::Io { op: "dup", path: display(&b_dir), source })?;
        for attempt in 0..2 {
            match rustix::fs::renameat_with(&a_fd, a.name(), &b_fd, b.name(), RenameFlags::EXCHANGE) {
                Ok(()) => {
                    dirs.clear();
                    return Ok(true);
                }
                Err(Errno::NOENT) => return Ok(false),
                // Directories swapped between parents need their own write bits (for `..`).
                Err(Errno::ACCESS) if attempt == 0 && !self.overrides_permissions => {
                    for id in [a, b] {
                        // Fails (harmlessly) for what is not a directory.
                        let _ = self.dir(dirs, id, false, &mut Vec::new());
                    }
                }
                Err(e) => return Err(io_err("exchange", display(a), e)),
            }
        }
        Err(io_err("exchange", display(a), Errno::ACCESS))
    }

    /// Every difference between `states/` at `top` (and below) and `entries`, which must be
    /// the tree's entries at and below `top`, in path order. Stops at the first failure.
    pub fn compare(
        &self,
        dirs: &mut Dirs,
        top: &StateId,
        entries: &[(StateId, Entry)],
    ) -> Result<Vec<Mismatch>> {
        let mut out = Vec::new();
        self.compare_into(dirs, top, entries, &mut out, &mut |_, e| Err(e))?;
        Ok(out)
    }

    /// [`compare`](Self::compare), handing each failure to `failed`, which decides whether to
    /// go on (`Ok`) or stop.
    fn compare_into(
        &self,
        dirs: &mut Dirs,
        top: &StateId,
        entries: &[(StateId, Entry)],
        out: &mut Vec<Mismatch>,
        failed: &mut dyn FnMut(&StateId, Error) -> Result<()>,
    ) -> Result<()> {
        let known: BTreeSet<&StateId> = entries.iter().map(|(id, _)| id).collect();
        for (id, entry) in entries {
            match self.is_fresh(dirs, id, entry) {
                Ok(true) => {}
                Ok(false) => out.push(Mismatch::Stale(id.clone())),
                Err(e) => failed(id, e)?,
            }
        }
        // Extras: walk the directories the tree has, below `top`.
        for (id, entry) in entries {
            if !entry.is_dir() {
                continue;
            }
            let Ok(fd) = self.dir(dirs, id, false, &mut Vec::new()) else { continue };
            let listed = match fd.try_clone() {
                Ok(fd) => list(&fd).map_err(|e| io_err("list", display(id), e)),
                Err(source) => Err(Error::Io { op: "dup", path: display(id), source }),
            };
            let names = match listed {
                Ok(names) => names,
                Err(e) => {
                    failed(id, e)?;
                    continue;
                }
            };
            for name in names {
                if id.is_root() && name == CONTROL_DIR.as_bytes() {
                    continue; // the scratch directory
                }
                let child = id.child(&name).ok();
                if !child.as_ref().is_some_and(|c| known.contains(c)) {
                    out.push(Mismatch::Extra { dir: id.clone(), name });
                }
            }
        }
        // `top` itself on disk while the tree has nothing there.
        if entries.is_empty() {
            if let Some(parent) = top.parent() {
                if let Ok(fd) = self.dir(dirs, &parent, false, &mut Vec::new()) {
                    if rustix::fs::statat(fd, top.name(), AtFlags::SYMLINK_NOFOLLOW).is_ok() {
                        out.push(Mismatch::Extra { dir: parent, name: top.name().as_bytes().to_vec() });
                    }
                }
            }
        }
        Ok(())
    }

    fn is_fresh(&self, dirs: &mut Dirs, id: &StateId, entry: &Entry) -> Result<bool> {
        let Some(parent) = id.parent() else {
            let root = self.dir(dirs, id, false, &mut Vec::new())?;
            let st = rustix::fs::fstat(root).map_err(|e| io_err("stat", &self.root, e))?;
            let mode = dirs.final_mode(id).unwrap_or(st.st_mode & 0o7777);
            return Ok(mode == entry.mode);
        };
        let final_mode = dirs.final_mode(id);
        let Ok(parent_fd) = self.dir(dirs, &parent, false, &mut Vec::new()) else { return Ok(false) };
        let st = match rustix::fs::statat(parent_fd, id.name(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(false),
            Err(e) => return Err(io_err("stat", display(id), e)),
        };
        let kind = FileType::from_raw_mode(st.st_mode);
        let owned = !self.is_root || (st.st_uid == entry.uid && st.st_gid == entry.gid);
        if !owned {
            return Ok(false);
        }
        if let EntryKind::Symlink(target) = &entry.kind {
            if kind != FileType::Symlink || !same_mtime(&st, entry) {
                return Ok(false);
            }
            let on_disk = rustix::fs::readlinkat(parent_fd, id.name(), Vec::new())
                .map_err(|e| io_err("readlink", display(id), e))?;
            return Ok(on_disk.as_bytes() == target.as_bytes());
        }
        let mode = match kind {
            // A directory opened up for this pass: the mode it gets back.
            FileType::Directory => final_mode.unwrap_or(st.st_mode & 0o7777),
            _ => st.st_mode & 0o7777,
        };
        if mode != entry.mode {
            return Ok(false);
        }
        Ok(match &entry.kind {
            EntryKind::Symlink(_) => unreachable!("handled above"),
            EntryKind::Dir => kind == FileType::Directory,
            EntryKind::File(content) => {
                if kind != FileType::RegularFile
                    || st.st_size as u64 != content.len() as u64
                    || !same_mtime(&st, entry)
                {
                    return Ok(false);
                }
                let Some(fd) = self.open_to_read(parent_fd, id, st.st_mode & 0o7777)? else {
                    return Ok(false);
                };
                let mut bytes = Vec::with_capacity(content.len());
                std::fs::File::from(fd).read_to_end(&mut bytes).map_err(|source| Error::Io {
                    op: "read",
                    path: display(id),
                    source,
                })?;
                bytes == content.as_bytes()
            }
        })
    }

    /// Opens file `id` (of mode `mode`, in directory `parent_fd`) to read it. A process that is
    /// not root cannot read its own file of mode 0000: it adds the owner's read bit for the
    /// open and sets the mode back. `None`: it cannot be read even so (someone else's file),
    /// which makes it stale.
    fn open_to_read(&self, parent_fd: &OwnedFd, id: &StateId, mode: u32) -> Result<Option<OwnedFd>> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        match rustix::fs::openat(parent_fd, id.name(), flags, Mode::empty()) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::ACCESS) if !self.overrides_permissions => {
                let readable = Mode::from_raw_mode(mode | 0o400);
                if rustix::fs::chmodat(parent_fd, id.name(), readable, AtFlags::empty()).is_err() {
                    return Ok(None);
                }
                let opened = rustix::fs::openat(parent_fd, id.name(), flags, Mode::empty());
                let restored = match &opened {
                    Ok(fd) => rustix::fs::fchmod(fd, Mode::from_raw_mode(mode)),
                    Err(_) => {
                        rustix::fs::chmodat(parent_fd, id.name(), Mode::from_raw_mode(mode), AtFlags::empty())
                    }
                };
                restored.map_err(|e| io_err("chmod", display(id), e))?;
                Ok(opened.ok())
            }
            Err(e) => Err(io_err("open", display(id), e)),
        }
    }

    /// Makes `top` and everything below it match `entries` (see [`compare`](Self::compare)).
    /// A state that cannot be compared or fixed does not stop the others: the result lists
    /// what was fixed and what failed, by state.
    pub fn settle(&self, dirs: &mut Dirs, top: &StateId, entries: &[(StateId, Entry)]) -> Settled {
        let mut settled = Settled::default();
        let mut mismatches = Vec::new();
        let mut compare_failed = |id: &StateId, e: Error| {
            settled.failed.push((id.clone(), e));
            Ok(())
        };
        let _ = self.compare_into(dirs, top, entries, &mut mismatches, &mut compare_failed);
        let by_id: HashMap<&StateId, &Entry> = entries.iter().map(|(id, e)| (id, e)).collect();
        for m in mismatches {
            let done = match &m {
                Mismatch::Extra { dir, name } => self.remove(dirs, dir, name).map_err(|e| (dir.clone(), e)),
                // Parents come first in path order, so they exist by now (or failed).
                Mismatch::Stale(id) => match self.write(dirs, id, by_id.get(id).copied()) {
                    Ok(made) => {
                        settled.made.extend(made);
                        Ok(())
                    }
                    Err(e) => Err((id.clone(), e)),
                },
            };
            match done {
                Ok(()) => settled.fixed.push(m),
                Err((id, e)) => {
                    settled.failed.push((id, e));
                    // A descriptor may point at a directory that failed half-way.
                    dirs.clear();
                }
            }
        }
        settled
    }

    /// Removes what interrupted writes left in the scratch directory, and the spares.
    pub fn clean_scratch(&self, dirs: &mut Dirs) -> Result<()> {
        dirs.spares.clear();
        let fd = self.scratch(dirs)?;
        empty_dir(fd).map_err(|e| io_err("empty", self.root.join(CONTROL_DIR), e))
    }

    /// Every difference between all of `states/` and `tree` (for `lightchain verify`).
    pub fn compare_tree(&self, tree: &Tree) -> Result<Vec<Mismatch>> {
        let entries: Vec<(StateId, Entry)> = tree.iter().map(|(id, e)| (id.clone(), e.clone())).collect();
        let mut dirs = Dirs::default();
        let compared = self.compare(&mut dirs, &StateId::root(), &entries);
        let restored = self.finish(&mut dirs);
        let compared = compared?;
        restored?;
        Ok(compared)
    }

    /// Makes what this process wrote to `states/` durable: one `syncfs` of its filesystem.
    pub fn sync(&self, dirs: &mut Dirs) -> Result<()> {
        let root = self.dir(dirs, &StateId::root(), false, &mut Vec::new())?;
        rustix::fs::syncfs(root).map_err(|e| io_err("syncfs", &self.root, e))
    }
}

/// The entry's access and modification times, for `futimens`/`utimensat`.
fn timestamps(entry: &Entry) -> Timestamps {
    let spec =
        |ns: i64| Timespec { tv_sec: ns.div_euclid(1_000_000_000), tv_nsec: ns.rem_euclid(1_000_000_000) };
    Timestamps { last_access: spec(entry.atime_ns), last_modification: spec(entry.mtime_ns) }
}

fn same_mtime(st: &rustix::fs::Stat, entry: &Entry) -> bool {
    let ns = i128::from(st.st_mtime) * 1_000_000_000 + i128::from(st.st_mtime_nsec);
    ns == i128::from(entry.mtime_ns)
}

fn libc_enoent() -> i32 {
    Errno::NOENT.raw_os_error()
}

/// The names in directory `fd`, `.` and `..` left out.
fn list(fd: &OwnedFd) -> std::result::Result<Vec<Vec<u8>>, Errno> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(fd.as_fd())? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    Ok(names)
}

/// Removes everything inside directory `fd` (depth first, one descriptor per level).
fn empty_dir(fd: &OwnedFd) -> std::result::Result<(), Errno> {
    for name in list(fd)? {
        let name = OsStr::from_bytes(&name);
        match rustix::fs::unlinkat(fd, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(Errno::ISDIR | Errno::PERM) => {
                let child = open_to_empty(fd, name)?;
                empty_dir(&child)?;
                rustix::fs::unlinkat(fd, name, AtFlags::REMOVEDIR)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Opens directory `name` of `dir` to remove everything in it. It is about to go, so it first
/// gets mode 0700 (a process that is not root could neither list a directory of mode 0000 nor
/// remove anything from one of 0555; refused for a directory someone else owns).
fn open_to_empty(dir: &OwnedFd, name: &OsStr) -> std::result::Result<OwnedFd, Errno> {
    let _ = rustix::fs::chmodat(dir, name, Mode::from_raw_mode(OWNER_RWX), AtFlags::empty());
    rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty())
}

/// Empties file `name` of directory `dir` if it is a regular file that nothing else has open
/// or links to; false (and untouched) otherwise, or on any error. A write lease is granted
/// only while no other descriptor of the file is open anywhere (`fcntl(2)`), and it is
/// released at once: this only asks.
fn empty_if_unshared(dir: &OwnedFd, name: &str) -> bool {
    // Non-blocking: an open of a file with someone else's lease would wait for them.
    let flags = OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let Ok(fd) = rustix::fs::openat(dir, name, flags, Mode::empty()) else { return false };
    let single = rustix::fs::fstat(&fd)
        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile && st.st_nlink == 1);
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own, with integer arguments.
    let alone = single && unsafe { libc::fcntl(raw, libc::F_SETLEASE, libc::F_WRLCK) } == 0;
    if alone {
        // SAFETY: as above; drops the lease just taken.
        unsafe { libc::fcntl(raw, libc::F_SETLEASE, libc::F_UNLCK) };
    }
    // Emptied through this descriptor, which is then closed: ext4 writes a file back when it
    // is closed after being truncated to nothing (`auto_da_alloc`), and it has nothing to
    // write yet.
    alone && rustix::fs::ftruncate(&fd, 0).is_ok()
}

/// Whether this process has `CAP_DAC_OVERRIDE` in effect (from `/proc/self/status`; assumed
/// so for root if unreadable).
fn overrides_permissions() -> bool {
    const CAP_DAC_OVERRIDE: u32 = 1;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .map_or(rustix::process::geteuid().is_root(), |caps| caps & (1 << CAP_DAC_OVERRIDE) != 0)
}

/// The umask of this process, from `/proc/self/status` (assumed the common 022 if unreadable).
fn process_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::chain::{ApplyCtx, Content, RenameMode, RequestId, Transaction, TxOp};

    fn sid(s: &str) -> StateId {
        StateId::parse(s).unwrap()
    }

    fn apply(tree: &mut Tree, seq: u64, op: TxOp) {
        let tx = Transaction { request: RequestId { node: 1, incarnation: 1, seq }, acked_below: 0, op };
        tree.apply(&ApplyCtx { height: seq, timestamp_ms: seq }, &tx);
    }

    /// What a settle that must not fail fixed.
    fn settled(settled: Settled) -> Vec<Mismatch> {
        assert!(settled.failed.is_empty(), "{:?}", settled.failed);
        settled.fixed
    }

    fn entries(tree: &Tree) -> Vec<(StateId, Entry)> {
        tree.iter().map(|(id, e)| (id.clone(), e.clone())).collect()
    }

    #[test]
    fn settles_to_the_tree_and_repairs_damage() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::create(tmp.path()).unwrap();
        let states = StatesDir::new(&dir);
        let mut dirs = Dirs::default();
        let mut tree = Tree::new();
        apply(&mut tree, 1, TxOp::Mkdir { id: sid("d"), mode: 0o750, uid: 0, gid: 0 });
        apply(
            &mut tree,
            2,
            TxOp::Put { id: sid("d/f"), content: Content::from(&b"hi"[..]), uid: 0, gid: 0, ino: None },
        );
        apply(
            &mut tree,
            3,
            TxOp::Put { id: sid("g"), content: Content::from(&b"g"[..]), uid: 0, gid: 0, ino: None },
        );
        let root = StateId::root();
        settled(states.settle(&mut dirs, &root, &entries(&tree)));
        assert_eq!(std::fs::read(dir.states().join("d/f")).unwrap(), b"hi");
        assert!(states.compare(&mut dirs, &root, &entries(&tree)).unwrap().is_empty());

        // A rename on disk follows a rename in the tree.
        apply(&mut tree, 4, TxOp::Rename { from: sid("d"), to: sid("e"), mode: RenameMode::Replace });
        assert!(states.rename(&mut dirs, &sid("d"), &sid("e")).unwrap());
        apply(&mut tree, 5, TxOp::Rename { from: sid("g"), to: sid("e/f"), mode: RenameMode::Exchange });
        assert!(states.exchange(&mut dirs, &sid("g"), &sid("e/f")).unwrap());
        assert!(states.compare(&mut dirs, &root, &entries(&tree)).unwrap().is_empty());
        assert_eq!(std::fs::read(dir.states().join("e/f")).unwrap(), b"g");

        // Hand edits: a torn file, a stray file, a deleted file, a stray directory.
        std::fs::write(dir.states().join("g"), b"torn").unwrap();
        std::fs::write(dir.states().join("stray"), b"x").unwrap();
        std::fs::remove_file(dir.states().join("e/f")).unwrap();
        std::fs::create_dir_all(dir.states().join("e/junk/deeper")).unwrap();
        let fixed = settled(states.settle(&mut dirs, &root, &entries(&tree)));
        assert_eq!(fixed.len(), 4, "{fixed:?}");
        assert!(states.compare(&mut dirs, &root, &entries(&tree)).unwrap().is_empty());
        assert_eq!(std::fs::read(dir.states().join("g")).unwrap(), b"hi");
    }

    /// Versions of one state written one after another: the file each replaces is emptied
    /// and holds a later version, unless something else has it open or links to it.
    #[test]
    fn a_replaced_version_holds_a_later_one_unless_anything_else_has_it() {
        use std::io::Seek;
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::create(tmp.path()).unwrap();
        let states = StatesDir::new(&dir);
        let mut dirs = Dirs::default();
        let mut tree = Tree::new();
        let path = dir.states().join("f");
        let mut seq = 0;
        let mut put = |dirs: &mut Dirs, tree: &mut Tree, content: &str| {
            seq += 1;
            let content = Content::from(content.as_bytes());
            apply(tree, seq, TxOp::Put { id: sid("f"), content, uid: 0, gid: 0, ino: None });
            states.write(dirs, &sid("f"), tree.get(&sid("f"))).unwrap();
            std::fs::metadata(&path).unwrap().ino()
        };
        let first = put(&mut dirs, &mut tree, "first version, the longest");
        let second = put(&mut dirs, &mut tree, "second");
        assert_ne!(second, first);
        assert_eq!(put(&mut dirs, &mut tree, "third"), first, "the first file, emptied, holds the third");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "third", "no byte of the first is left");

        // A reader of the third version keeps it whole while later ones are written.
        let mut reader = std::fs::File::open(&path).unwrap();
        assert_eq!(put(&mut dirs, &mut tree, "fourth"), second);
        let fifth = put(&mut dirs, &mut tree, "fifth");
        assert!(fifth != first && fifth != second, "the file a reader holds is not reused");
        let mut held = String::new();
        reader.read_to_string(&mut held).unwrap();
        assert_eq!(held, "third");

        // A file linked from elsewhere keeps its content.
        let outside = tmp.path().join("linked");
        std::fs::hard_link(&path, &outside).unwrap();
        put(&mut dirs, &mut tree, "sixth");
        put(&mut dirs, &mut tree, "seventh");
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "fifth");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "seventh");
        reader.rewind().unwrap();
        held.clear();
        reader.read_to_string(&mut held).unwrap();
        assert_eq!(held, "third", "still whole");

        // The scratch directory holds only empty spares; nothing differs from the tree.
        let scratch = dir.states().join(CONTROL_DIR);
        let left: Vec<u64> =
            std::fs::read_dir(&scratch).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).collect();
        assert!(
            !left.is_empty() && left.len() <= SPARES_KEPT && left.iter().all(|&len| len == 0),
            "{left:?}"
        );
        assert!(states.compare(&mut dirs, &StateId::root(), &entries(&tree)).unwrap().is_empty());

        // Cleaning the scratch directory forgets the spares; writing goes on.
        states.clean_scratch(&mut dirs).unwrap();
        assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0);
        put(&mut dirs, &mut tree, "eighth");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "eighth");
    }

    /// A FIFO someone made in the way is replaced without the mirror blocking on it (opening
    /// a FIFO for writing waits for a reader), and is not kept as a spare.
    #[test]
    fn a_fifo_in_the_way_is_replaced_and_never_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::create(tmp.path()).unwrap();
        let states = StatesDir::new(&dir);
        let mut dirs = Dirs::default();
        let mut tree = Tree::new();
        let content = Content::from(&b"version"[..]);
        apply(&mut tree, 1, TxOp::Put { id: sid("f"), content, uid: 0, gid: 0, ino: None });
        let fifo = std::ffi::CString::new(dir.states().join("f").as_os_str().as_bytes()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        states.write(&mut dirs, &sid("f"), tree.get(&sid("f"))).unwrap();
        assert_eq!(std::fs::read(dir.states().join("f")).unwrap(), b"version");
        let scratch = dir.states().join(CONTROL_DIR);
        assert!(std::fs::read_dir(&scratch).unwrap().all(|e| e.unwrap().file_type().unwrap().is_file()));
        assert!(states.compare(&mut dirs, &StateId::root(), &entries(&tree)).unwrap().is_empty());
    }

    /// A spare has the mode and owner of the version it held: the next version gets its own,
    /// set-user-ID bit included (a change of owner clears it, so the owner goes first).
    #[test]
    fn a_spare_takes_the_mode_and_owner_of_the_version_it_holds() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::create(tmp.path()).unwrap();
        let states = StatesDir::new(&dir);
        let mut dirs = Dirs::default();
        let mut tree = Tree::new();
        let root = rustix::process::geteuid().is_root();
        let (uid, gid) = if root { (1234, 5678) } else { (0, 0) };
        let versions = [(0o600, b"a".as_slice(), 0, 0), (0o4755, b"bb", uid, gid), (0o640, b"", 0, 0)];
        for (seq, (mode, content, uid, gid)) in (1..).step_by(3).zip(versions) {
            let content = Content::from(content);
            apply(&mut tree, seq, TxOp::Put { id: sid("f"), content, uid: 0, gid: 0, ino: None });
            let (uid, gid) = (Some(uid), Some(gid));
            apply(&mut tree, seq + 1, TxOp::Chown { id: sid("f"), uid, gid, mode: None });
            apply(&mut tree, seq + 2, TxOp::Chmod { id: sid("f"), mode });
            states.write(&mut dirs, &sid("f"), tree.get(&sid("f"))).unwrap();
            let meta = std::fs::metadata(dir.states().join("f")).unwrap();
            assert_eq!(meta.permissions().mode() & 0o7777, mode, "version {seq}");
            if root {
                assert_eq!((Some(meta.uid()), Some(meta.gid())), (uid, gid), "version {seq}");
            }
            assert!(states.compare(&mut dirs, &StateId::root(), &entries(&tree)).unwrap().is_empty());
        }
    }

    /// Runs `body` as a user that is not root: in a child process (this test binary, run for
    /// `test` alone as `nobody`) when this one is root, directly otherwise.
    pub(crate) fn as_non_root(test: &str, body: impl FnOnce()) {
        const CHILD: &str = "LIGHTCHAIN_TEST_NON_ROOT_CHILD";
        if std::env::var_os(CHILD).is_some() || !rustix::process::geteuid().is_root() {
            assert!(!rustix::process::geteuid().is_root(), "the child runs as root");
            return body();
        }
        use std::os::unix::process::CommandExt;
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .env("TMPDIR", "/tmp")
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "the non-root child failed:\n{text}");
        assert!(text.contains("1 passed"), "the child ran no test:\n{text}");
    }

    fn mode_of(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
    }

    /// A daemon that is not root mirrors any mode: a file of mode 0000, a directory of 0555 with
    /// files written into it, one of 0000, later versions, a rename of such a directory to
    /// another parent and its removal — its own copy gets the owner's bits while it works and
    /// its final mode last.
    #[test]
    fn any_mode_is_mirrored_by_a_user_that_is_not_root() {
        as_non_root("store::states::tests::any_mode_is_mirrored_by_a_user_that_is_not_root", || {
            let tmp = tempfile::tempdir().unwrap();
            let dir = DataDir::create(tmp.path()).unwrap();
            let states = StatesDir::new(&dir);
            let mut dirs = Dirs::default();
            let mut tree = Tree::new();
            let mut seq = 0;
            let mut op = |tree: &mut Tree, op: TxOp| {
                seq += 1;
                apply(tree, seq, op);
            };
            let put = |id: &str, content: &str| TxOp::Put {
                id: sid(id),
                content: Content::from(content.as_bytes()),
                uid: 0,
                gid: 0,
                ino: None,
            };
            let (uid, gid) = (rustix::process::geteuid().as_raw(), rustix::process::getegid().as_raw());
            op(&mut tree, put("locked", "nobody may read this"));
            op(&mut tree, TxOp::Chmod { id: sid("locked"), mode: 0o000 });
            op(&mut tree, TxOp::Mkdir { id: sid("ro"), mode: 0o755, uid, gid });
            op(&mut tree, put("ro/a", "a"));
            op(&mut tree, TxOp::Mkdir { id: sid("ro/sub"), mode: 0o755, uid, gid });
            op(&mut tree, put("ro/sub/b", "b"));
            op(&mut tree, TxOp::Chmod { id: sid("ro/sub"), mode: 0o555 });
            op(&mut tree, TxOp::Chmod { id: sid("ro"), mode: 0o555 });
            op(&mut tree, TxOp::Mkdir { id: sid("shut"), mode: 0o755, uid, gid });
            op(&mut tree, put("shut/c", "c"));
            op(&mut tree, TxOp::Chmod { id: sid("shut/c"), mode: 0o444 });
            op(&mut tree, TxOp::Chmod { id: sid("shut"), mode: 0o000 });
            op(&mut tree, TxOp::Chmod { id: StateId::root(), mode: 0o500 });
            let root = StateId::root();
            let check = |states: &StatesDir, dirs: &mut Dirs, tree: &Tree| {
                assert!(states.compare(dirs, &root, &entries(tree)).unwrap().is_empty());
                states.finish(dirs).unwrap();
                // What the owner can reach by path (the compares above open the rest up).
                let reachable = |id: &StateId| {
                    let mut at = id.parent();
                    while let Some(d) = at {
                        if tree.get(&d).is_some_and(|e| e.mode & 0o100 == 0) {
                            return false;
                        }
                        at = d.parent();
                    }
                    true
                };
                for (id, entry) in tree.iter().filter(|(id, _)| reachable(id)) {
                    assert_eq!(mode_of(&dir.states().join(id.as_str())), entry.mode, "{id:?}");
                }
                assert!(states.compare_tree(tree).unwrap().is_empty());
            };
            settled(states.settle(&mut dirs, &root, &entries(&tree)));
            states.finish(&mut dirs).unwrap();
            check(&states, &mut dirs, &tree);

            // Hand damage under the closed directories is found and repaired.
            let shut = dir.states().join("shut");
            std::fs::set_permissions(&shut, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
            std::fs::set_permissions(shut.join("c"), std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
            std::fs::write(shut.join("c"), "torn").unwrap();
            std::fs::set_permissions(shut.join("c"), std::os::unix::fs::PermissionsExt::from_mode(0o444))
                .unwrap();
            std::fs::write(shut.join("stray"), "x").unwrap();
            std::fs::set_permissions(&shut, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
            let fixed = settled(states.settle(&mut dirs, &root, &entries(&tree)));
            states.finish(&mut dirs).unwrap();
            assert_eq!(fixed.len(), 2, "{fixed:?}");
            check(&states, &mut dirs, &tree);

            // New versions inside them, one by one as the mirror writes them.
            for (id, content) in [("ro/a", "a2"), ("ro/sub/b", "b2"), ("shut/c", "c2"), ("locked", "l2")] {
                op(&mut tree, put(id, content));
                states.write(&mut dirs, &sid(id), tree.get(&sid(id))).unwrap();
            }
            states.finish(&mut dirs).unwrap();
            check(&states, &mut dirs, &tree);

            // A closed directory moves to another parent, and one is removed.
            op(
                &mut tree,
                TxOp::Rename { from: sid("ro/sub"), to: sid("shut/sub"), mode: RenameMode::Replace },
            );
            assert!(states.rename(&mut dirs, &sid("ro/sub"), &sid("shut/sub")).unwrap());
            states.finish(&mut dirs).unwrap();
            check(&states, &mut dirs, &tree);
            op(&mut tree, TxOp::Delete { id: sid("shut/sub/b") });
            op(&mut tree, TxOp::Rmdir { id: sid("shut/sub") });
            states.write(&mut dirs, &sid("shut/sub"), None).unwrap();
            states.finish(&mut dirs).unwrap();
            check(&states, &mut dirs, &tree);

            // Even `states/` itself may be closed.
            op(&mut tree, TxOp::Chmod { id: StateId::root(), mode: 0o000 });
            states.write(&mut dirs, &root, tree.get(&root)).unwrap();
            states.finish(&mut dirs).unwrap();
            assert_eq!(mode_of(&dir.states()), 0o000);
            op(&mut tree, put("after", "the root closed"));
            states.write(&mut dirs, &sid("after"), tree.get(&sid("after"))).unwrap();
            states.finish(&mut dirs).unwrap();
            assert!(states.compare_tree(&tree).unwrap().is_empty());
            assert_eq!(mode_of(&dir.states()), 0o000);
            open_everything(tmp.path());
        });
    }

    /// Gives every directory below `path` mode 0700, so that a test's temporary directory can
    /// be removed by the user that made it.
    pub(crate) fn open_everything(path: &Path) {
        use std::os::unix::fs::PermissionsExt;
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700));
            for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
                open_everything(&entry.path());
            }
        }
    }

    #[test]
    fn the_longest_legal_path_is_mirrored_under_a_deep_data_directory() {
        // The data directory itself sits deep, so states/ + the ID is far past PATH_MAX.
        let tmp = tempfile::tempdir().unwrap();
        let mut base = tmp.path().to_owned();
        for _ in 0..4 {
            base = base.join("b".repeat(200));
        }
        let dir = DataDir::create(&base).unwrap();
        let states = StatesDir::new(&dir);
        let mut tree = Tree::new();
        let component = "c".repeat(255);
        let mut id = String::new();
        for seq in 1..16 {
            id = if id.is_empty() { component.clone() } else { format!("{id}/{component}") };
            apply(&mut tree, seq, TxOp::Mkdir { id: sid(&id), mode: 0o755, uid: 0, gid: 0 });
        }
        let file = format!("{id}/{component}");
        assert_eq!(file.len(), crate::chain::MAX_PATH_LEN);
        apply(
            &mut tree,
            16,
            TxOp::Put { id: sid(&file), content: Content::from(&b"deep"[..]), uid: 0, gid: 0, ino: None },
        );
        let mut dirs = Dirs::default();
        settled(states.settle(&mut dirs, &StateId::root(), &entries(&tree)));
        assert!(states.compare(&mut dirs, &StateId::root(), &entries(&tree)).unwrap().is_empty());
        // Removing it again works too.
        states.remove(&mut dirs, &StateId::root(), component.as_bytes()).unwrap();
        assert!(std::fs::read_dir(dir.states()).unwrap().all(|e| e.unwrap().file_name() == CONTROL_DIR));
    }
}
