//! The filesystem semantics of DESIGN §1.2 over the Node API — without fuser types.
//!
//! Every operation is a method named after the FUSE call it serves, taking and returning
//! plain values, so the semantics are tested without a kernel mount; [`fuse`] is the thin
//! adapter that moves requests in and replies out. Operations that wait for consensus or a
//! read index are `async`; the adapter never blocks a FUSE thread on them.
//!
//! The write path: an open for writing gets a handle that buffers the whole new content in
//! memory (from the committed content, or empty with `O_TRUNC`); `flush` (every `close`) and
//! `fsync` of a dirty handle commit it as one `put` (or `append` for `O_APPEND` handles) and
//! return only once the block is applied here. A handle whose write or commit failed is
//! spoiled: later writes and commits fail with the same error. `release` never commits.
//!
//! Reads serve a snapshot taken at `open`, whole (DESIGN §1.3: no torn or mixed view). Read
//! handles use direct I/O, in both read modes: the kernel's page cache belongs to the inode,
//! not the handle, and a cached read stops at the size the kernel holds for the inode, which
//! a writer on the same mount changes under the reader (an `O_TRUNC` open sets it to 0; its
//! writes grow it; both race with the reader's attribute refresh). Measured on this machine:
//! racing readers through the page cache read about 1 in 2,000 reads short or empty; with
//! direct I/O none did. The price is one FUSE round trip per `read` call.
//!
//! In linearizable mode an open (except an `O_TRUNC` one) and a lookup that finds nothing
//! first wait for a read index, and the kernel is told to cache no names, no pages and no
//! attributes but a directory's for a tick (see [`Ttls`]); in local mode the
//! replica is served as it is, with long TTLs. After the read index an open binds to the
//! inode the kernel named; if that inode is gone (removed or replaced on another node), the
//! open fails with `ESTALE`, on which the kernel looks the path up again and retries once.
//!
//! Ownership: every state records the uid/gid of the [`Caller`] that created it, and the
//! kernel enforces access from those owners and modes (`DefaultPermissions`), so apps running
//! as different users share a mount as they share ext4. `setattr` turns `chown`/`chmod` into
//! one transaction and `utimensat` into a `times` transaction; symlinks are states of their
//! own kind, created by `symlink` and read by `readlink` (the kernel follows them).
//!
//! Must not: hold a lock across an `.await`, pick an errno anywhere but [`error`], or touch
//! the backing directory (that is the state machine's job).
//!
//! See `docs/architecture/fs.md` and `docs/SEMANTICS.md`.

pub mod error;
pub mod fuse;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use error::FsError;

use crate::chain::{
    mode_after_unprivileged_write, Change, Content, Entry, EntryKind, RenameMode, StateId, TimeSpec, TxOp,
    CONTROL_DIR, MAX_SYMLINK_TARGET, ROOT_INO,
};
use crate::node::{Node, ReadConsistency};
pub use error::TargetError;

/// Inode of the read-only control directory `.lightchain/`.
pub const CONTROL_INO: u64 = u64::MAX - 1;
/// Inode of `.lightchain/status`.
pub const STATUS_INO: u64 = u64::MAX - 2;
/// The status file's name.
const STATUS_NAME: &str = "status";

/// How long the kernel may cache entries and attributes in local read mode.
const LOCAL_TTL: Duration = Duration::from_secs(10);

/// How long the kernel may keep a directory's attributes in linearizable mode. Every path walk
/// checks the search permission of each directory on it, and with a TTL of 0 each check is a
/// GETATTR (the root's on every `open`). A directory's attributes are not a version of any
/// state: its children are looked up afresh (entry TTL 0) and listed after a read index, so
/// what this may show late is only its own mode, owner, times and link count, by a kernel
/// tick or two (it rounds up to ticks of 1-4 ms). A file's or symlink's attributes keep a TTL
/// of 0: an `fstat` right after an `open` that waited for a read index must show the version
/// the open serves.
const LINEARIZABLE_DIR_ATTR_TTL: Duration = Duration::from_millis(1);

/// How long the kernel may cache a reply's entry and its attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttl {
    /// The name's binding to its inode.
    pub entry: Duration,
    /// The inode's attributes.
    pub attr: Duration,
}

/// The TTLs of a read mode, for any inode.
#[derive(Debug, Clone, Copy)]
pub struct Ttls {
    local: bool,
}

impl Ttls {
    /// The TTLs of a reply about the inode with `attr`.
    pub fn of(&self, attr: &Attr) -> Ttl {
        match (self.local, attr.kind) {
            (true, _) => Ttl { entry: LOCAL_TTL, attr: LOCAL_TTL },
            (false, Kind::Dir) => Ttl { entry: Duration::ZERO, attr: LINEARIZABLE_DIR_ATTR_TTL },
            (false, Kind::File | Kind::Symlink) => Ttl { entry: Duration::ZERO, attr: Duration::ZERO },
        }
    }
}

/// File, directory or symlink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
}

impl Kind {
    fn of(entry: &Entry) -> Kind {
        match entry.kind {
            EntryKind::File(_) => Kind::File,
            EntryKind::Dir => Kind::Dir,
            EntryKind::Symlink(_) => Kind::Symlink,
        }
    }
}

/// Who sent a request (from the FUSE request header): the owner of what it creates, and the
/// thread that made the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
    /// The calling thread's id: a path walk's lookups and the open that follows them come from
    /// the same thread (see [`Fs::open`]).
    pub tid: u32,
}

impl Caller {
    /// The superuser.
    pub const ROOT: Caller = Caller::user(0, 0);

    /// A user, calling from thread 0.
    pub const fn user(uid: u32, gid: u32) -> Caller {
        Caller { uid, gid, tid: 0 }
    }
}

/// Attributes of a state, as `stat` shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: u64,
    /// File, directory or symlink.
    pub kind: Kind,
    /// Size in bytes (a symlink's: its target's length).
    pub size: u64,
    /// Permission bits.
    pub perm: u16,
    /// Last access time (set at creation and by `utimensat` only).
    pub atime: SystemTime,
    /// Last modification of the content (or of a directory's list of children).
    pub mtime: SystemTime,
    /// Last change of anything about the state.
    pub ctime: SystemTime,
    /// Link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// What `open`/`create` tell the kernel about a new handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opened {
    /// The handle.
    pub fh: u64,
    /// Bypass the page cache (for files whose size changes under it).
    pub direct_io: bool,
    /// Keep the page cache from earlier opens.
    pub keep_cache: bool,
    /// The kernel need not send `flush` on close (read-only handles).
    pub no_flush: bool,
}

/// Attribute changes requested by `setattr`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    /// New access time.
    pub atime: Option<TimeSpec>,
    /// New modification time.
    pub mtime: Option<TimeSpec>,
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size.
    pub size: Option<u64>,
    /// The handle, for `ftruncate`.
    pub fh: Option<u64>,
}

/// One directory entry of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// Inode number.
    pub ino: u64,
    /// File, directory or symlink.
    pub kind: Kind,
    /// Name within the directory.
    pub name: String,
}

/// Receives directory entries; returns true when it is full.
pub trait DirReplier {
    /// Adds one entry; `offset` is where the next listing call resumes.
    fn add(&mut self, ino: u64, offset: u64, kind: Kind, name: &str) -> bool;
}

/// A kernel cache entry to drop after another node changed a state.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Invalidation {
    /// The name `name` in directory `parent` (a positive or negative dentry).
    Entry {
        /// The directory's inode.
        parent: u64,
        /// The name.
        name: String,
    },
    /// An inode's attributes and cached pages.
    Inode(u64),
}

/// Settings of the filesystem layer.
#[derive(Clone, Debug)]
pub struct FsConfig {
    /// Owner shown for the root directory (until a `chown` gives it away) and `.lightchain/`.
    pub uid: u32,
    /// Group shown for the root directory (until a `chown` gives it away) and `.lightchain/`.
    pub gid: u32,
}

/// An open file: its attributes at open (served while the state is gone, as for an
/// unlinked file that is still open) and its content.
struct OpenFile {
    attr: Attr,
    handle: Handle,
    /// Taken by a commit for its whole duration: two flushes of one handle in flight at once
    /// (a `dup`, or a child's inherited descriptor closed at `exec`) commit one after the other,
    /// and the second commits only what the first did not.
    commit: Arc<tokio::sync::Mutex<()>>,
}

/// An open file's content.
enum Handle {
    /// Read-only: the content at open.
    Read(Content),
    /// Open for writing.
    Write(WriteHandle),
}

struct WriteHandle {
    /// The state's inode (the state may be renamed while open).
    ino: u64,
    /// Who opened it: the owner if a commit has to create the file again.
    caller: Caller,
    /// A write came from a process without `CAP_FSETID`: the commit drops setuid/setgid
    /// first, as a write does on ext4.
    drop_privileges: bool,
    /// `O_APPEND`: `buffer` holds only bytes to add, `base` what was there at open.
    append: bool,
    base: Content,
    /// The new content (or, when appending, the bytes not yet committed).
    buffer: Vec<u8>,
    /// Changed since the last commit.
    dirty: bool,
    /// Bumped by every change, to tell whether a commit covered the latest one.
    version: u64,
    /// Height of the block of this handle's last commit (what `fsync` waits for in `states/`).
    committed_at: Option<u64>,
    /// The error that spoiled this handle.
    spoiled: Option<FsError>,
}

impl WriteHandle {
    fn content_len(&self) -> usize {
        if self.append {
            self.base.len() + self.buffer.len()
        } else {
            self.buffer.len()
        }
    }

    fn content(&self) -> Vec<u8> {
        if self.append {
            [self.base.as_bytes(), &self.buffer].concat()
        } else {
            self.buffer.clone()
        }
    }
}

/// The filesystem.
pub struct Fs {
    node: Arc<Node>,
    config: FsConfig,
    handles: Mutex<HashMap<u64, Arc<Mutex<OpenFile>>>>,
    dirs: Mutex<HashMap<u64, Arc<Vec<DirEntry>>>>,
    /// Linearizable mode: each file inode's latest lookup by each thread, which the `open` that
    /// follows it in the same call takes (see [`Fs::open`]).
    looked_up: Mutex<HashMap<(u64, u32), LookedUp>>,
    next_fh: AtomicU64,
}

/// How many lookups [`Fs::open`] can pair with; past it the record starts again (an open whose
/// lookup was forgotten waits for a read index of its own).
const LOOKUPS_REMEMBERED: usize = 1 << 16;

/// How long a lookup may wait for the open of the same call. The kernel sends the open right
/// after the walk's last lookup; a lookup older than this was not part of the walk of the open
/// that finds it (a `stat` long before an open that needed no lookup, such as a reopen through
/// `/proc/self/fd`), so that open waits for a read index of its own.
const LOOKUP_PAIRS_WITHIN: Duration = Duration::from_millis(500);

/// A file's lookup, answered after a read index.
struct LookedUp {
    /// The path it was looked up by.
    path: StateId,
    /// When the answer was given.
    at: std::time::Instant,
}

/// What a handle's commit did.
enum Commit {
    /// Applied to the handle's state, in this block.
    Applied(crate::node::Committed),
    /// The state was removed after the handle was opened: like an unlinked file's, its data goes
    /// nowhere (ext4 does the same).
    Removed,
}

fn mtime_of(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Nanoseconds since the epoch (negative: before it) as a `SystemTime`.
fn time_of(ns: i64) -> SystemTime {
    let magnitude = Duration::from_nanos(ns.unsigned_abs());
    if ns >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

impl Fs {
    /// A filesystem over `node`.
    pub fn new(node: Arc<Node>, config: FsConfig) -> Fs {
        Fs {
            node,
            config,
            handles: Mutex::default(),
            dirs: Mutex::default(),
            looked_up: Mutex::default(),
            next_fh: AtomicU64::new(1),
        }
    }

    /// The node below.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// The cluster's limit on a state's content (from the chain: `chain::Limits`). Checked here
    /// so a `write` past it fails at once with `EFBIG`; the apply step enforces it too.
    fn max_state_size(&self) -> u64 {
        self.node.replica().tree.limits().max_state_size
    }

    fn local_reads(&self) -> bool {
        self.node.config().read_consistency == ReadConsistency::Local
    }

    /// How long the kernel may cache entries and attributes.
    pub fn ttls(&self) -> Ttls {
        Ttls { local: self.local_reads() }
    }

    fn attr_of(&self, entry: &Entry) -> Attr {
        let nlink = if entry.is_dir() { 2 } else { 1 };
        // The root directory is the mounting user's until a chown gives it to someone else.
        let (uid, gid) = match (entry.ino, entry.uid, entry.gid) {
            (ROOT_INO, 0, 0) => (self.config.uid, self.config.gid),
            (_, uid, gid) => (uid, gid),
        };
        Attr {
            ino: entry.ino,
            kind: Kind::of(entry),
            size: entry.size(),
            perm: entry.mode as u16,
            atime: time_of(entry.atime_ns),
            mtime: time_of(entry.mtime_ns),
            ctime: time_of(entry.ctime_ns),
            nlink,
            uid,
            gid,
        }
    }

    fn control_attr(&self, ino: u64) -> Attr {
        let (kind, perm, size, nlink) = if ino == CONTROL_INO {
            (Kind::Dir, 0o555, 0, 2)
        } else {
            (Kind::File, 0o444, self.status_bytes().len() as u64, 1)
        };
        let mtime = self.node.replica().head.map_or(UNIX_EPOCH, |h| mtime_of(h.timestamp_ms));
        let (uid, gid) = (self.config.uid, self.config.gid);
        Attr { ino, kind, size, perm, atime: mtime, mtime, ctime: mtime, nlink, uid, gid }
    }

    fn status_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(&self.node.status()).expect("status serializes");
        bytes.push(b'\n');
        bytes
    }

    /// The state ID of inode `ino`.
    fn id_of(&self, ino: u64) -> Result<StateId, FsError> {
        if ino == ROOT_INO {
            return Ok(StateId::root());
        }
        if ino == CONTROL_INO || ino == STATUS_INO {
            return Err(FsError::ReadOnly);
        }
        let replica = self.node.replica();
        replica.tree.id_of(ino).cloned().ok_or(FsError::Precondition(crate::chain::Reject::NotFound))
    }

    /// The ID of `name` in directory `parent`; the control directory is read-only.
    fn child_id(&self, parent: u64, name: &[u8]) -> Result<StateId, FsError> {
        self.id_of(parent)?.child(name).map_err(FsError::from)
    }

    fn entry_attr(&self, id: &StateId) -> Option<Attr> {
        self.node.replica().tree.get(id).map(|e| self.attr_of(e))
    }

    fn not_found() -> FsError {
        FsError::Precondition(crate::chain::Reject::NotFound)
    }

    fn logged<T>(
        &self,
        op: &str,
        state: &dyn std::fmt::Display,
        result: Result<T, FsError>,
    ) -> Result<T, FsError> {
        if let Err(e) = &result {
            if !e.is_expected() {
                tracing::warn!(op, state = %state, errno = e.errno(), error = %e, "operation failed");
            }
        }
        result
    }

    /// `lookup`: the attributes of `name` in `parent`. In linearizable mode it answers only
    /// after a read index, found or not: a name that another node renamed, replaced or removed
    /// before this call began is never answered with the inode it named before (the kernel
    /// would open that inode, and a write would land on a state the path no longer names).
    pub async fn lookup(&self, parent: u64, name: &[u8], caller: Caller) -> Result<Attr, FsError> {
        if parent == ROOT_INO && name == CONTROL_DIR.as_bytes() {
            return Ok(self.control_attr(CONTROL_INO));
        }
        if parent == CONTROL_INO {
            return match name == STATUS_NAME.as_bytes() {
                true => Ok(self.control_attr(STATUS_INO)),
                false => Err(Self::not_found()),
            };
        }
        let id = match self.child_id(parent, name) {
            Ok(id) => id,
            // A name that cannot be a state is simply not there, unless it is too long.
            Err(FsError::InvalidName(e))
                if !matches!(
                    e,
                    crate::chain::StateIdError::TooLong | crate::chain::StateIdError::PathTooLong
                ) =>
            {
                return Err(Self::not_found())
            }
            Err(e) => return Err(e),
        };
        let barrier = self.node.read_barrier().await.map_err(FsError::from);
        self.logged("lookup", &id, barrier)?;
        // The parent's path may have changed while the barrier waited.
        let id = self.child_id(parent, name)?;
        let attr = self.entry_attr(&id).ok_or_else(Self::not_found)?;
        if attr.kind == Kind::File && !self.local_reads() {
            let mut looked_up = self.looked_up.lock().unwrap();
            if looked_up.len() >= LOOKUPS_REMEMBERED {
                looked_up.clear();
            }
            let at = std::time::Instant::now();
            looked_up.insert((attr.ino, caller.tid), LookedUp { path: id, at });
        }
        Ok(attr)
    }

    /// `getattr`. With a handle open for writing, the size is that of its buffer. A state removed
    /// (or replaced by a rename) while open stays stat-able through its handles, as an unlinked
    /// file is (with a link count of 0); an inode that is gone with no handle open is stale:
    /// `ESTALE` makes the kernel look its path up again (the permission check of an `open`
    /// asks for attributes before the open itself, and ENOENT there would reach the app).
    pub fn getattr(&self, ino: u64, fh: Option<u64>) -> Result<Attr, FsError> {
        if ino == CONTROL_INO || ino == STATUS_INO {
            return Ok(self.control_attr(ino));
        }
        // A diverged node serves nothing of its tree, except the root (which the path to
        // `.lightchain/status` crosses).
        if ino != ROOT_INO {
            self.node.serving()?;
        }
        let current = self.id_of(ino).ok().and_then(|id| self.entry_attr(&id));
        let open = {
            let handles = self.handles.lock().unwrap();
            match (fh, &current) {
                (Some(fh), _) => handles.get(&fh).cloned(),
                // `fstat` names no handle: any handle of the removed inode answers.
                (None, None) => handles.values().find(|h| h.lock().unwrap().attr.ino == ino).cloned(),
                (None, Some(_)) => None,
            }
        };
        let Some(open) = open else {
            return current.ok_or(FsError::Stale);
        };
        let open = open.lock().unwrap();
        // Its size is that of what the handle reads: the snapshot, or the write buffer.
        let removed = current.is_none();
        let mut attr = current.unwrap_or_else(|| open.attr.clone());
        if removed {
            attr.nlink = 0;
        }
        attr.size = match &open.handle {
            Handle::Write(w) => w.content_len() as u64,
            Handle::Read(content) => content.len() as u64,
        };
        Ok(attr)
    }

    fn insert_handle(&self, attr: Attr, handle: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles
            .lock()
            .unwrap()
            .insert(fh, Arc::new(Mutex::new(OpenFile { attr, handle, commit: Arc::default() })));
        fh
    }

    fn handle(&self, fh: u64) -> Result<Arc<Mutex<OpenFile>>, FsError> {
        self.handles.lock().unwrap().get(&fh).cloned().ok_or(FsError::BadHandle)
    }

    /// `open`: a snapshot for reading, or a write buffer. The kernel follows symlinks before
    /// it opens, so a symlink never gets here (if one does: `ELOOP`, as for `O_NOFOLLOW`).
    pub async fn open(&self, ino: u64, flags: i32, caller: Caller) -> Result<Opened, FsError> {
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        if ino == STATUS_INO {
            if writable {
                return self.logged("open", &".lightchain/status", Err(FsError::ReadOnly));
            }
            let fh = self.insert_handle(
                self.control_attr(STATUS_INO),
                Handle::Read(Content::from(self.status_bytes())),
            );
            return Ok(Opened { fh, direct_io: true, keep_cache: false, no_flush: true });
        }
        // An inode that is gone (replaced by a rename since the kernel looked it up) is stale, not
        // missing: ESTALE makes the kernel look the path up again, ENOENT would reach the app.
        let id = match self.id_of(ino) {
            Err(FsError::Precondition(crate::chain::Reject::NotFound)) => return Err(FsError::Stale),
            other => other?,
        };
        // A diverged node serves nothing (its status above stays readable).
        self.logged("open", &id, self.node.serving().map_err(FsError::from))?;
        if writable && self.node.knows_no_quorum() {
            return self.logged("open", &id, Err(FsError::Node(crate::node::Error::NoQuorum)));
        }
        // The lookup of this call's path walk, if it is recent: it answered after a read index
        // taken once the call had begun, so this open needs none of its own.
        let paired = self
            .looked_up
            .lock()
            .unwrap()
            .remove(&(ino, caller.tid))
            .filter(|l| l.at.elapsed() < LOOKUP_PAIRS_WITHIN);
        if paired.is_none() {
            // A handle for writing must be bound to the state its path names now, in either
            // read mode and with O_TRUNC too: bound to an inode another node has since replaced
            // (`mv tmp conf`), its commit would land nowhere. A read handle waits in
            // linearizable mode only.
            let barrier = match writable {
                true => self.node.catch_up().await,
                false => self.node.read_barrier().await,
            };
            self.logged("open", &id, barrier.map_err(FsError::from))?;
        }
        // Bind to the inode the kernel named, as it is now: it must still exist, and still have
        // the path it was looked up by (renamed away meanwhile, that path names another state
        // now, or none). ESTALE makes the kernel look the path up again and retry once.
        let Some(id) = self.node.replica().tree.id_of(ino).cloned() else {
            return self.logged("open", &id, Err(FsError::Stale));
        };
        if let Some(looked_up) = paired.filter(|l| l.path != id) {
            tracing::debug!(state = %id, looked_up = %looked_up.path, "open: renamed since its lookup");
            return Err(FsError::Stale);
        }
        self.open_id(ino, &id, flags, caller)
    }

    fn open_id(&self, ino: u64, id: &StateId, flags: i32, caller: Caller) -> Result<Opened, FsError> {
        let (content, attr) = {
            let replica = self.node.replica();
            match replica.tree.get(id) {
                None => return Err(Self::not_found()),
                // Replaced between the caller's look at the tree and this one.
                Some(entry) if entry.ino != ino => return Err(FsError::Stale),
                Some(Entry { kind: EntryKind::Dir, .. }) => {
                    return Err(FsError::Precondition(crate::chain::Reject::IsADirectory))
                }
                Some(Entry { kind: EntryKind::Symlink(_), .. }) => return Err(FsError::IsSymlink),
                Some(entry @ Entry { kind: EntryKind::File(content), .. }) => {
                    (content.clone(), self.attr_of(entry))
                }
            }
        };
        if flags & libc::O_ACCMODE == libc::O_RDONLY {
            // Direct I/O: every read is answered from this handle's snapshot, whatever size
            // the kernel holds for the inode (see the module's doc).
            let fh = self.insert_handle(attr, Handle::Read(content));
            return Ok(Opened { fh, direct_io: true, keep_cache: false, no_flush: true });
        }
        let truncate = flags & libc::O_TRUNC != 0;
        let append = flags & libc::O_APPEND != 0 && !truncate;
        let handle = WriteHandle {
            ino,
            caller,
            drop_privileges: false,
            append,
            buffer: if truncate || append { Vec::new() } else { content.as_bytes().to_vec() },
            dirty: truncate && !content.is_empty(),
            base: content,
            version: 0,
            committed_at: None,
            spoiled: None,
        };
        let fh = self.insert_handle(attr, Handle::Write(handle));
        // Direct I/O: every write reaches the buffer, and the kernel refuses a shared writable
        // mmap (ENODEV), whose stores would bypass flush and never be committed.
        Ok(Opened { fh, direct_io: true, keep_cache: false, no_flush: false })
    }

    /// `create`: commits the new file (with `O_EXCL`, on condition that it does not exist)
    /// before answering, then opens it.
    pub async fn create(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        flags: i32,
        caller: Caller,
    ) -> Result<(Attr, Opened), FsError> {
        let id = self.child_id(parent, name);
        let id = self.logged("create", &String::from_utf8_lossy(name), id)?;
        if self.node.knows_no_quorum() {
            return self.logged("create", &id, Err(FsError::Node(crate::node::Error::NoQuorum)));
        }
        let exclusive = flags & libc::O_EXCL != 0;
        let (uid, gid, _) = self.new_owner(&id, caller);
        let op = TxOp::Create { id: id.clone(), mode: mode & !umask & 0o7777, exclusive, uid, gid };
        let committed = self.node.propose(op).await.map_err(FsError::from);
        self.logged("create", &id, committed)?;
        let ino = self.entry_attr(&id).ok_or_else(Self::not_found)?.ino;
        let opened = self.open_id(ino, &id, flags, caller)?;
        let attr = self.entry_attr(&id).ok_or_else(Self::not_found)?;
        Ok((attr, opened))
    }

    /// `read` from the handle's snapshot or buffer.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        let handle = self.handle(fh)?;
        let open = handle.lock().unwrap();
        if open.attr.ino != STATUS_INO {
            self.node.serving()?; // not even a snapshot taken before the divergence was found
        }
        let slice = |bytes: &[u8]| {
            let start = (offset as usize).min(bytes.len());
            let end = start.saturating_add(size as usize).min(bytes.len());
            bytes[start..end].to_vec()
        };
        Ok(match &open.handle {
            Handle::Read(content) => slice(content.as_bytes()),
            Handle::Write(w) if w.append => slice(&w.content()),
            Handle::Write(w) => slice(&w.buffer),
        })
    }

    /// `write` into the handle's buffer. Over the size limit: `EFBIG`, and the handle is spoiled.
    /// `drop_privileges`: the writer lacks `CAP_FSETID` (the kernel's `FUSE_WRITE_KILL_SUIDGID`),
    /// so the commit clears setuid/setgid as a write does on ext4.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8], drop_privileges: bool) -> Result<u32, FsError> {
        self.node.serving()?;
        let handle = self.handle(fh)?;
        let mut open = handle.lock().unwrap();
        let Handle::Write(w) = &mut open.handle else {
            return Err(FsError::BadHandle);
        };
        if let Some(e) = &w.spoiled {
            return Err(e.clone());
        }
        let new_len = if w.append {
            (w.base.len() + w.buffer.len() + data.len()) as u64
        } else {
            w.buffer.len().max(offset as usize + data.len()) as u64
        };
        let max_state_size = self.max_state_size();
        if new_len > max_state_size {
            let e = FsError::TooBig(max_state_size);
            w.spoiled = Some(e.clone());
            let state = self.node.replica().tree.id_of(w.ino).cloned();
            return self.logged("write", &format!("{state:?}"), Err(e));
        }
        if w.append || offset as usize == w.buffer.len() {
            // Appending (the usual sequential write): no zero fill to overwrite.
            w.buffer.extend_from_slice(data);
        } else {
            let end = offset as usize + data.len();
            if w.buffer.len() < end {
                w.buffer.resize(end, 0);
            }
            w.buffer[offset as usize..end].copy_from_slice(data);
        }
        w.dirty = true;
        w.drop_privileges |= drop_privileges;
        w.version += 1;
        Ok(data.len() as u32)
    }

    /// `flush` (every `close`): commits a dirty handle and waits until it is applied.
    pub async fn flush(&self, fh: u64) -> Result<(), FsError> {
        let handle = self.handle(fh)?;
        let commit = handle.lock().unwrap().commit.clone();
        let _turn = commit.lock().await;
        let (op, chmod, version, sent) = {
            let open = handle.lock().unwrap();
            let Handle::Write(w) = &open.handle else {
                return Ok(());
            };
            if let Some(e) = &w.spoiled {
                return Err(e.clone());
            }
            if !w.dirty {
                return Ok(());
            }
            let replica = self.node.replica();
            let Some(id) = replica.tree.id_of(w.ino).cloned() else {
                if w.append {
                    // Bytes meant for the end of a state that no longer exists (rotated or
                    // removed, here or elsewhere): refuse rather than lose them silently.
                    let state = format!("inode {}", w.ino);
                    drop(replica);
                    drop(open);
                    return self.logged("commit", &state, Err(FsError::Stale));
                }
                // Removed while open: like an unlinked file, its data goes nowhere. The open bound
                // this inode after a read index (see `open`), so its removal came after the open
                // in the chain, as an unlink after an open does on ext4.
                return Ok(());
            };
            // An unprivileged write drops setuid/setgid before the new content lands.
            let chmod = replica.tree.get(&id).map(|e| e.mode).and_then(|mode| {
                let dropped = mode_after_unprivileged_write(mode);
                (w.drop_privileges && dropped != mode).then(|| TxOp::Chmod { id: id.clone(), mode: dropped })
            });
            // One copy, into the shared content (a Vec's clone and then its conversion made two).
            let content = Content::from(&w.buffer[..]);
            let (uid, gid) = (w.caller.uid, w.caller.gid);
            // The commit names the path, on condition that it still names this inode when the
            // block is applied: a rename racing the commit cannot redirect it to another state.
            let ino = Some(w.ino);
            let op = if w.append {
                TxOp::Append { id, content, uid, gid, ino }
            } else {
                TxOp::Put { id, content, uid, gid, ino }
            };
            (op, chmod, w.version, w.buffer.len())
        };
        let id = op.state_ids()[0].clone();
        let result = match chmod {
            Some(chmod) => self.node.propose(chmod).await.map(drop).map_err(FsError::from),
            None => Ok(()),
        };
        let result = match result {
            Ok(()) => self.commit_to_inode(op).await,
            Err(e) => Err(e),
        };
        let mut open = handle.lock().unwrap();
        let Handle::Write(w) = &mut open.handle else { unreachable!("a handle keeps its kind") };
        match result {
            // Bytes meant for the end of a state that no longer exists: refused, as above.
            Ok(Commit::Removed) if w.append => {
                let e = FsError::Stale;
                w.spoiled = Some(e.clone());
                drop(open);
                self.logged("commit", &id, Err(e))
            }
            // A whole-content handle of a state removed after it was opened: as for an
            // unlinked file, nothing more to commit.
            Ok(Commit::Removed) => {
                w.dirty = false;
                Ok(())
            }
            Ok(Commit::Applied(committed)) if w.append => {
                let appended: Vec<u8> = w.buffer.drain(..sent).collect();
                w.base = Content::from([w.base.as_bytes(), &appended].concat());
                w.dirty = !w.buffer.is_empty();
                w.committed_at = Some(committed.height);
                Ok(())
            }
            Ok(Commit::Applied(committed)) => {
                w.dirty = w.version != version;
                w.committed_at = Some(committed.height);
                Ok(())
            }
            Err(e) => {
                w.spoiled = Some(e.clone());
                drop(open);
                self.logged("commit", &id, Err(e))
            }
        }
    }

    /// Proposes a handle's `put`/`append`. Each names the state's path on condition that it
    /// still names the handle's inode when its block is applied; when a rename (here or on
    /// another node) moved the inode meanwhile, the commit follows it to its new path and tries
    /// again, for as long as the inode exists and the commit timeout allows: it applies to the
    /// handle's state, or the state was removed ([`Commit::Removed`]), or it fails.
    async fn commit_to_inode(&self, mut op: TxOp) -> Result<Commit, FsError> {
        let deadline = tokio::time::Instant::now() + self.node.config().commit_timeout;
        loop {
            match self.node.propose(op.clone()).await {
                Err(crate::node::Error::Rejected(crate::chain::Reject::Moved)) => {}
                other => return other.map(Commit::Applied).map_err(FsError::from),
            }
            let (TxOp::Put { id, ino: Some(ino), .. } | TxOp::Append { id, ino: Some(ino), .. }) = &mut op
            else {
                unreachable!("only a commit bound to an inode is rejected as moved");
            };
            // This node has applied the rejected block, so its replica shows where the inode
            // went since.
            match self.node.replica().tree.id_of(*ino) {
                Some(now) => *id = now.clone(),
                None => return Ok(Commit::Removed),
            }
            if tokio::time::Instant::now() >= deadline {
                let timeout = self.node.config().commit_timeout;
                tracing::warn!(state = %id, "commit: the state kept moving for the whole commit timeout");
                return Err(FsError::Node(crate::node::Error::Timeout(timeout)));
            }
        }
    }

    /// `fsync`: the same commit as `flush`, then a wait until `states/` holds it too (the
    /// mirror is written behind; a mirror that stays behind for the commit timeout is `EIO`).
    pub async fn fsync(&self, fh: u64) -> Result<(), FsError> {
        self.flush(fh).await?;
        let committed_at = match &self.handle(fh)?.lock().unwrap().handle {
            Handle::Write(w) => w.committed_at.map(|height| (height, w.ino)),
            Handle::Read(_) => None,
        };
        match committed_at {
            Some((height, ino)) => {
                // The path that names it now: a state whose writes to `states/` keep failing
                // fails its `fsync`.
                let id = self.node.replica().tree.id_of(ino).cloned();
                if self.node.wait_mirrored(height, id.as_ref()).await {
                    return Ok(());
                }
                self.logged("fsync", &format!("block {height}"), Err(FsError::MirrorBehind))
            }
            None => Ok(()),
        }
    }

    /// `release`: forgets the handle. Never commits.
    pub fn release(&self, fh: u64) {
        self.handles.lock().unwrap().remove(&fh);
    }

    /// `setattr`: `ftruncate` edits the handle; `truncate(path)` is a transaction; owner,
    /// group and mode changes that arrive together (a `chown` with the setuid bit the kernel
    /// clears) are one `chown` transaction, a mode alone a `chmod`; `utimensat` is a `times`
    /// transaction. The kernel has already checked permissions (`DefaultPermissions`); as a
    /// second line of defence only root may give a state to another owner, and only the owner
    /// (or root) may change its group.
    pub async fn setattr(&self, ino: u64, set: SetAttr, caller: Caller) -> Result<Attr, FsError> {
        if ino == CONTROL_INO || ino == STATUS_INO {
            let changes = set.mode.is_some()
                || set.size.is_some()
                || set.uid.is_some()
                || set.gid.is_some()
                || set.atime.is_some()
                || set.mtime.is_some();
            if changes {
                return self.logged("setattr", &".lightchain", Err(FsError::ReadOnly));
            }
            return Ok(self.control_attr(ino));
        }
        let id = self.id_of(ino)?;
        if set.uid.is_some() || set.gid.is_some() {
            let current = self.entry_attr(&id).ok_or_else(Self::not_found)?;
            let gives_away = set.uid.is_some_and(|u| u != current.uid);
            let regroups = set.gid.is_some_and(|g| g != current.gid);
            if caller.uid != 0 && (gives_away || (regroups && caller.uid != current.uid)) {
                return self.logged("chown", &id, Err(FsError::NotPermitted));
            }
        }
        if let Some(size) = set.size {
            let max_state_size = self.max_state_size();
            if size > max_state_size {
                return self.logged("truncate", &id, Err(FsError::TooBig(max_state_size)));
            }
            match set.fh.map(|fh| self.handle(fh)).transpose()? {
                Some(handle) => self.truncate_handle(&handle, size)?,
                None => {
                    let committed = self.node.propose(TxOp::Truncate { id: id.clone(), size }).await;
                    self.logged("truncate", &id, committed.map_err(FsError::from))?;
                }
            }
        }
        let mode = set.mode.map(|m| m & 0o7777);
        let attrs = match (set.uid, set.gid, mode) {
            (None, None, None) => None,
            (None, None, Some(mode)) => Some(("chmod", TxOp::Chmod { id: id.clone(), mode })),
            (uid, gid, mode) => Some(("chown", TxOp::Chown { id: id.clone(), uid, gid, mode })),
        };
        if let Some((op, tx)) = attrs {
            let committed = self.node.propose(tx).await;
            self.logged(op, &id, committed.map_err(FsError::from))?;
        }
        // A truncate sends "mtime = now" along; its own transaction already set mtime to its
        // block's time, so only explicit times remain.
        let keep = |t: Option<TimeSpec>| match (set.size, t) {
            (Some(_), Some(TimeSpec::Now)) => None,
            (_, t) => t,
        };
        let (atime, mtime) = (keep(set.atime), keep(set.mtime));
        if atime.is_some() || mtime.is_some() {
            // Times set after writes must outlast them (`cp -p` sets them before its close):
            // commit what open handles hold first, as ext4 has those writes already.
            self.commit_open_writes(ino).await?;
            let committed = self.node.propose(TxOp::Times { id: id.clone(), atime, mtime }).await;
            self.logged("utimensat", &id, committed.map_err(FsError::from))?;
        }
        self.getattr(ino, set.fh)
    }

    /// Commits every dirty, unspoiled write handle of inode `ino` (a later `flush` of them
    /// commits nothing new).
    async fn commit_open_writes(&self, ino: u64) -> Result<(), FsError> {
        let dirty: Vec<u64> = self
            .handles
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, open)| {
                // A spoiled handle commits nothing; its error belongs to its own caller.
                let open = open.lock().unwrap();
                matches!(&open.handle, Handle::Write(w) if w.ino == ino && w.dirty && w.spoiled.is_none())
            })
            .map(|(fh, _)| *fh)
            .collect();
        for fh in dirty {
            self.flush(fh).await?;
        }
        Ok(())
    }

    fn truncate_handle(&self, handle: &Mutex<OpenFile>, size: u64) -> Result<(), FsError> {
        let mut open = handle.lock().unwrap();
        let Handle::Write(w) = &mut open.handle else {
            return Err(FsError::BadHandle);
        };
        if let Some(e) = &w.spoiled {
            return Err(e.clone());
        }
        if w.append {
            // Truncating an append-only handle rewrites the whole content.
            w.buffer = w.content();
            w.append = false;
        }
        w.buffer.resize(size as usize, 0);
        w.dirty = true;
        w.version += 1;
        Ok(())
    }

    /// Owner and group of a state `caller` creates at `id`, and the setgid bit a new directory
    /// inherits: in a setgid directory the group is the directory's and subdirectories are
    /// setgid too (as ext4 does; the kernel leaves this to the filesystem).
    fn new_owner(&self, id: &StateId, caller: Caller) -> (u32, u32, u32) {
        const SETGID: u32 = 0o2000;
        let replica = self.node.replica();
        match id.parent().as_ref().and_then(|p| replica.tree.get(p)) {
            Some(dir) if dir.mode & SETGID != 0 => (caller.uid, self.attr_of(dir).gid, SETGID),
            _ => (caller.uid, caller.gid, 0),
        }
    }

    /// `mkdir`: a directory owned by the caller.
    pub async fn mkdir(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        caller: Caller,
    ) -> Result<Attr, FsError> {
        let id = self.child_id(parent, name);
        let id = self.logged("mkdir", &String::from_utf8_lossy(name), id)?;
        let (uid, gid, setgid) = self.new_owner(&id, caller);
        let mode = (mode & !umask & 0o7777) | setgid;
        let op = TxOp::Mkdir { id: id.clone(), mode, uid, gid };
        let committed = self.node.propose(op).await;
        self.logged("mkdir", &id, committed.map_err(FsError::from))?;
        self.entry_attr(&id).ok_or_else(Self::not_found)
    }

    /// `symlink`: a link named `name` in `parent` holding `target`, owned by the caller. The
    /// target is stored as given: UTF-8 (else `EINVAL`), not empty (`ENOENT`), at most 4,095
    /// bytes (`ENAMETOOLONG`).
    pub async fn symlink(
        &self,
        parent: u64,
        name: &[u8],
        target: &[u8],
        caller: Caller,
    ) -> Result<Attr, FsError> {
        let id = self.child_id(parent, name);
        let id = self.logged("symlink", &String::from_utf8_lossy(name), id)?;
        let target = match std::str::from_utf8(target) {
            Err(_) => Err(FsError::SymlinkTarget(TargetError::NotUtf8)),
            Ok("") => Err(FsError::SymlinkTarget(TargetError::Empty)),
            Ok(t) if t.len() > MAX_SYMLINK_TARGET => Err(FsError::SymlinkTarget(TargetError::TooLong)),
            Ok(t) => Ok(t.to_owned()),
        };
        let target = self.logged("symlink", &id, target)?;
        let (uid, gid, _) = self.new_owner(&id, caller);
        let op = TxOp::Symlink { id: id.clone(), target, uid, gid };
        let committed = self.node.propose(op).await;
        self.logged("symlink", &id, committed.map_err(FsError::from))?;
        self.entry_attr(&id).ok_or_else(Self::not_found)
    }

    /// `readlink`: a symlink's target (`EINVAL` for anything else, as Linux answers).
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        if ino == CONTROL_INO || ino == STATUS_INO {
            return Err(FsError::InvalidArgument);
        }
        // A diverged node serves nothing of its tree.
        self.node.serving()?;
        let id = self.id_of(ino)?;
        match self.node.replica().tree.get(&id).map(|e| &e.kind) {
            None => Err(Self::not_found()),
            Some(EntryKind::Symlink(target)) => Ok(target.as_bytes().to_vec()),
            Some(EntryKind::File(_) | EntryKind::Dir) => Err(FsError::InvalidArgument),
        }
    }

    /// `unlink`.
    pub async fn unlink(&self, parent: u64, name: &[u8]) -> Result<(), FsError> {
        let id = self.child_id(parent, name);
        let id = self.logged("unlink", &String::from_utf8_lossy(name), id)?;
        let committed = self.node.propose(TxOp::Delete { id: id.clone() }).await;
        self.logged("unlink", &id, committed.map(drop).map_err(FsError::from))
    }

    /// `rmdir`.
    pub async fn rmdir(&self, parent: u64, name: &[u8]) -> Result<(), FsError> {
        let id = self.child_id(parent, name);
        let id = self.logged("rmdir", &String::from_utf8_lossy(name), id)?;
        let committed = self.node.propose(TxOp::Rmdir { id: id.clone() }).await;
        self.logged("rmdir", &id, committed.map(drop).map_err(FsError::from))
    }

    /// `rename`, honouring `RENAME_NOREPLACE` and `RENAME_EXCHANGE`.
    pub async fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
    ) -> Result<(), FsError> {
        let ids =
            self.child_id(parent, name).and_then(|from| Ok((from, self.child_id(new_parent, new_name)?)));
        let (from, to) = self.logged("rename", &String::from_utf8_lossy(name), ids)?;
        let mode = match flags {
            0 => RenameMode::Replace,
            f if f == libc::RENAME_NOREPLACE => RenameMode::NoReplace,
            f if f == libc::RENAME_EXCHANGE => RenameMode::Exchange,
            _ => return self.logged("rename", &from, Err(FsError::InvalidArgument)),
        };
        let committed = self.node.propose(TxOp::Rename { from: from.clone(), to, mode }).await;
        self.logged("rename", &from, committed.map(drop).map_err(FsError::from))
    }

    /// `opendir`: takes a snapshot of the listing, so `readdir` pages stay consistent.
    pub async fn opendir(&self, ino: u64) -> Result<u64, FsError> {
        let mut entries = vec![
            DirEntry { ino, kind: Kind::Dir, name: ".".into() },
            DirEntry { ino: ROOT_INO, kind: Kind::Dir, name: "..".into() },
        ];
        if ino == CONTROL_INO {
            entries.push(DirEntry { ino: STATUS_INO, kind: Kind::File, name: STATUS_NAME.into() });
        } else {
            let id = self.id_of(ino)?;
            self.node.read_barrier().await?;
            let replica = self.node.replica();
            match replica.tree.get(&id) {
                None => return Err(Self::not_found()),
                Some(e) if !e.is_dir() => {
                    return Err(FsError::Precondition(crate::chain::Reject::NotADirectory))
                }
                Some(_) => {}
            }
            if let Some(parent) = id.parent().and_then(|p| replica.tree.get(&p)) {
                entries[1].ino = parent.ino;
            }
            if id.is_root() {
                entries.push(DirEntry { ino: CONTROL_INO, kind: Kind::Dir, name: CONTROL_DIR.into() });
            }
            for (child, entry) in replica.tree.children(&id) {
                entries.push(DirEntry {
                    ino: entry.ino,
                    kind: Kind::of(entry),
                    name: child.name().to_owned(),
                });
            }
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs.lock().unwrap().insert(fh, Arc::new(entries));
        Ok(fh)
    }

    /// `readdir`: entries of the `opendir` snapshot from `offset` on.
    pub fn readdir(&self, fh: u64, offset: u64, replier: &mut dyn DirReplier) -> Result<(), FsError> {
        let entries = self.dirs.lock().unwrap().get(&fh).cloned().ok_or(FsError::BadHandle)?;
        for (i, entry) in entries.iter().enumerate().skip(offset as usize) {
            if replier.add(entry.ino, i as u64 + 1, entry.kind, &entry.name) {
                break;
            }
        }
        Ok(())
    }

    /// `releasedir`.
    pub fn releasedir(&self, fh: u64) {
        self.dirs.lock().unwrap().remove(&fh);
    }

    /// What the kernel must forget after `change`, made by another node, was applied: the
    /// names involved, their directories, and the states themselves.
    pub fn invalidations(&self, change: &Change) -> Vec<Invalidation> {
        let replica = self.node.replica();
        let tree = &replica.tree;
        let mut out = Vec::new();
        let mut touch = |id: &StateId| {
            if let Some(dir) = id.parent().and_then(|p| tree.get(&p)) {
                out.push(Invalidation::Entry { parent: dir.ino, name: id.name().to_owned() });
                out.push(Invalidation::Inode(dir.ino));
            }
            if let Some(entry) = tree.get(id) {
                out.push(Invalidation::Inode(entry.ino));
            }
        };
        match change {
            Change::Wrote(id)
            | Change::Removed(id)
            | Change::MadeDir(id)
            | Change::RemovedDir(id)
            | Change::ModeChanged(id) => touch(id),
            Change::Renamed { from, to } => {
                touch(from);
                touch(to);
            }
            Change::Exchanged { a, b } => {
                touch(a);
                touch(b);
            }
        }
        out
    }

    /// Refuses what lightchain does not support (hard links, special files, xattrs): `EPERM`
    /// for links and special files, [`FsError::NoXattrs`] for `getxattr` (the kernel then stops
    /// asking, and answers `EOPNOTSUPP` itself), `EOPNOTSUPP` for the rest.
    pub fn unsupported(&self, op: &str) -> FsError {
        tracing::debug!(op, "unsupported operation");
        match op {
            "link" | "mknod" => FsError::NotPermitted,
            "getxattr" => FsError::NoXattrs,
            _ => FsError::NotSupported,
        }
    }
}

#[cfg(test)]
mod tests;
