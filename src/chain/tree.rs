//! The tree of states: the deterministic state machine that blocks are applied to.
//!
//! [`Tree::apply`] checks a transaction's preconditions against the tree *as it is when the
//! block is applied* and either changes the tree or rejects the transaction; the same
//! transactions in the same order give the same tree and the same outcomes on every node. It
//! also keeps, incrementally, the [`StateRoot`] (a digest of the whole tree whose update costs
//! O(changed entries), never O(tree)) and, through [`Dedup`], what exactly-once needs to know
//! of applied request ids (the whole invariant is stated in `chain::dedup`).
//!
//! Inode numbers are assigned here, from a counter that only grows, when a state is created:
//! every node and every restart (which replays the chain) assigns the same numbers, a number
//! is never reused, and a rename keeps it.
//!
//! Every entry has an owner (uid/gid, recorded by the transaction that created it), a mode,
//! and atime/mtime/ctime in nanoseconds. Times come only from the chain — the timestamp of the
//! block that changed an entry, or what a `times` transaction set — so every node shows the
//! same times. Reads never change atime (as with `noatime`).
//!
//! Pure: no clock, no I/O. The caller passes the block's height and timestamp.

use std::collections::{BTreeMap, HashMap};

use super::block::{Digest, Encoder, Height};
use super::dedup::{Dedup, Verdict};
use super::tx::{Content, Outcome, Reject, RenameMode, TimeSpec, Transaction, TxOp, MAX_SYMLINK_TARGET};
use super::{Limits, StateId};

/// Inode number of a state; the root directory is 1.
pub type InodeNo = u64;

/// The root directory's inode number.
pub const ROOT_INO: InodeNo = 1;

/// Default permission bits of a directory created by a `put` or of the root.
const DEFAULT_DIR_MODE: u32 = 0o755;
/// Default permission bits of a file created by a `put`/`append`.
const DEFAULT_FILE_MODE: u32 = 0o644;
/// Permission bits of every symlink (as on Linux, where they are never checked).
pub const SYMLINK_MODE: u32 = 0o777;
/// `S_ISUID`.
const SET_UID: u32 = 0o4000;
/// `S_ISGID`.
const SET_GID: u32 = 0o2000;
/// `S_IXGRP`.
const GROUP_EXEC: u32 = 0o010;

/// A file, a directory or a symlink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file and its content.
    File(Content),
    /// A directory (its children are the entries below it).
    Dir,
    /// A symbolic link and its target (never resolved here).
    Symlink(String),
}

/// One state (file, directory or symlink) in the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Stable inode number.
    pub ino: InodeNo,
    /// File content, directory marker or symlink target.
    pub kind: EntryKind,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    /// Owner: the caller that created it, unless a `chown` changed it.
    pub uid: u32,
    /// Group: the creating caller's, unless a `chown` changed it.
    pub gid: u32,
    /// Access time, ns since the epoch: creation or a `times` transaction (reads never set it).
    pub atime_ns: i64,
    /// Modification time, ns since the epoch: the block that last changed the content (for a
    /// directory, its list of children), unless a `times` transaction set it since.
    pub mtime_ns: i64,
    /// Change time, ns since the epoch: the block that last changed anything about it.
    pub ctime_ns: i64,
    /// Height of the block that last changed it.
    pub changed_at: Height,
    /// What this entry adds to the state root (kept by the tree, so removing or replacing
    /// the entry never hashes its content again).
    digest: Digest,
}

impl Entry {
    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        matches!(self.kind, EntryKind::Dir)
    }

    /// Whether this is a symlink.
    pub fn is_symlink(&self) -> bool {
        matches!(self.kind, EntryKind::Symlink(_))
    }

    /// Size in bytes: a file's content, a symlink's target (0 for a directory).
    pub fn size(&self) -> u64 {
        match &self.kind {
            EntryKind::File(c) => c.len() as u64,
            EntryKind::Dir => 0,
            EntryKind::Symlink(target) => target.len() as u64,
        }
    }
}

/// `mode` without the privileges a write by an unprivileged process drops (POSIX, as Linux's
/// `file_remove_privs`): setuid always, setgid when the group may execute (without group
/// execute, setgid means mandatory locking and stays).
pub fn mode_after_unprivileged_write(mode: u32) -> u32 {
    let mut mode = mode & !SET_UID;
    if mode & GROUP_EXEC != 0 {
        mode &= !SET_GID;
    }
    mode
}

/// What a transaction changed, for the backing directory and the kernel caches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A file was created or its content changed.
    Wrote(StateId),
    /// A file was removed.
    Removed(StateId),
    /// A directory was created.
    MadeDir(StateId),
    /// An empty directory was removed.
    RemovedDir(StateId),
    /// A file or a directory with everything below it moved, replacing what was at `to`.
    Renamed { from: StateId, to: StateId },
    /// Two states swapped places.
    Exchanged { a: StateId, b: StateId },
    /// Attributes changed: permission bits, owner or times (`chmod`, `chown`, `utimensat`).
    ModeChanged(StateId),
}

/// Where a block is being applied: its height and (already monotonic) timestamp.
#[derive(Clone, Copy, Debug)]
pub struct ApplyCtx {
    /// Height of the block being built.
    pub height: Height,
    /// Its timestamp, which becomes the mtime/ctime of what it changes.
    pub timestamp_ms: u64,
}

impl ApplyCtx {
    /// The block's timestamp in nanoseconds since the epoch.
    pub fn now_ns(&self) -> i64 {
        i64::try_from(self.timestamp_ms).map_or(i64::MAX, |ms| ms.saturating_mul(1_000_000))
    }

    fn resolve(&self, t: TimeSpec) -> i64 {
        match t {
            TimeSpec::Now => self.now_ns(),
            TimeSpec::At(ns) => ns,
        }
    }
}

/// An order-independent, incrementally maintained digest of a set of entries: the lane-wise
/// sum (mod 2^64) of the entries' sha256 digests. Adding and removing an entry are O(1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateRoot([u64; 4]);

impl StateRoot {
    fn add(&mut self, d: &Digest) {
        for (lane, word) in self.0.iter_mut().zip(lanes(d)) {
            *lane = lane.wrapping_add(word);
        }
    }
    fn remove(&mut self, d: &Digest) {
        for (lane, word) in self.0.iter_mut().zip(lanes(d)) {
            *lane = lane.wrapping_sub(word);
        }
    }
    /// The root as a digest (for the block).
    pub fn digest(&self) -> Digest {
        let mut out = [0u8; 32];
        for (i, lane) in self.0.iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&lane.to_be_bytes());
        }
        Digest(out)
    }
}

fn lanes(d: &Digest) -> [u64; 4] {
    let mut out = [0u64; 4];
    for (i, lane) in out.iter_mut().enumerate() {
        *lane = u64::from_be_bytes(d.0[i * 8..i * 8 + 8].try_into().unwrap());
    }
    out
}

/// The digest an entry contributes to the state root: its path, kind, mode, content or
/// target, and owner (left out when root's, so trees made before owners existed keep their
/// roots). Times are not part of it: they follow from the blocks' timestamps and the `times`
/// transactions, which the block hashes cover, and a directory's times change with every
/// child, which must not cost a rehash.
fn entry_digest(id: &StateId, entry: &Entry) -> Digest {
    let mut e = Encoder::new(b"lightchain/entry/v1");
    e.id(id);
    e.u64(u64::from(entry.mode));
    match &entry.kind {
        EntryKind::File(content) => {
            e.u8(1);
            e.bytes(content.as_bytes());
        }
        EntryKind::Dir => e.u8(2),
        EntryKind::Symlink(target) => {
            e.u8(3);
            e.bytes(target.as_bytes());
        }
    }
    e.owner(entry.uid, entry.gid);
    e.finish()
}

/// The whole tree of states.
#[derive(Clone, Debug)]
pub struct Tree {
    entries: BTreeMap<StateId, Entry>,
    by_ino: HashMap<InodeNo, StateId>,
    next_ino: InodeNo,
    root: StateRoot,
    dedup: Dedup,
    /// The cluster's limits, once a `Limits` transaction set them.
    limits: Option<Limits>,
}

impl Default for Tree {
    fn default() -> Self {
        Tree::new()
    }
}

impl Tree {
    /// An empty tree: just the root directory.
    pub fn new() -> Tree {
        let mut tree = Tree {
            entries: BTreeMap::new(),
            by_ino: HashMap::new(),
            next_ino: ROOT_INO + 1,
            root: StateRoot::default(),
            dedup: Dedup::default(),
            limits: None,
        };
        let root = Entry {
            ino: ROOT_INO,
            kind: EntryKind::Dir,
            mode: DEFAULT_DIR_MODE,
            uid: 0,
            gid: 0,
            atime_ns: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            changed_at: 0,
            digest: Digest::ZERO,
        };
        tree.insert(StateId::root(), root);
        tree
    }

    /// The entry named `id`.
    pub fn get(&self, id: &StateId) -> Option<&Entry> {
        self.entries.get(id)
    }

    /// The ID of inode `ino`, if it still names a state.
    pub fn id_of(&self, ino: InodeNo) -> Option<&StateId> {
        self.by_ino.get(&ino)
    }

    /// Number of states, the root included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether only the root exists.
    pub fn is_empty(&self) -> bool {
        self.entries.len() == 1
    }

    /// The digest of the whole tree.
    pub fn state_root(&self) -> Digest {
        self.root.digest()
    }

    /// The limits every transaction is applied under: the chain's, or the caps while it has none.
    pub fn limits(&self) -> Limits {
        self.limits.unwrap_or(Limits::CAPS)
    }

    /// Whether a `Limits` transaction has set the limits.
    pub fn limits_set(&self) -> bool {
        self.limits.is_some()
    }

    /// All entries in path order (the root first).
    pub fn iter(&self) -> impl Iterator<Item = (&StateId, &Entry)> {
        self.entries.iter()
    }

    /// `top` and everything below it, in path order (nothing if `top` is not in the tree).
    pub fn subtree<'a>(&'a self, top: &'a StateId) -> impl Iterator<Item = (&'a StateId, &'a Entry)> + 'a {
        let here = self.entries.get_key_value(top);
        here.into_iter().chain(here.into_iter().flat_map(move |_| self.descendants(top)))
    }

    /// The direct children of directory `dir`, in name order.
    pub fn children<'a>(&'a self, dir: &'a StateId) -> impl Iterator<Item = (&'a StateId, &'a Entry)> + 'a {
        self.descendants(dir).filter(move |(id, _)| id.parent().as_ref() == Some(dir))
    }

    fn descendants<'a>(&'a self, dir: &'a StateId) -> impl Iterator<Item = (&'a StateId, &'a Entry)> + 'a {
        use std::ops::Bound;
        let prefix = if dir.is_root() { String::new() } else { format!("{}/", dir.as_str()) };
        // Keys below `dir` sort right after "dir/" and before "dir0" ('0' follows '/').
        let end = if dir.is_root() { None } else { Some(format!("{}0", dir.as_str())) };
        let start = Bound::Excluded(dir.clone());
        self.entries
            .range::<StateId, _>((start, Bound::Unbounded))
            .take_while(move |(id, _)| match &end {
                None => true,
                Some(end) => id.as_str() < end.as_str(),
            })
            .filter(move |(id, _)| id.as_str().starts_with(&prefix))
    }

    fn has_children(&self, dir: &StateId) -> bool {
        self.descendants(dir).next().is_some()
    }

    fn insert(&mut self, id: StateId, mut entry: Entry) {
        entry.digest = entry_digest(&id, &entry);
        self.root.add(&entry.digest);
        self.by_ino.insert(entry.ino, id.clone());
        if let Some(old) = self.entries.insert(id.clone(), entry) {
            self.root.remove(&old.digest);
            if self.entries[&id].ino != old.ino {
                self.by_ino.remove(&old.ino);
            }
        }
    }

    fn remove(&mut self, id: &StateId) -> Option<Entry> {
        let entry = self.entries.remove(id)?;
        self.root.remove(&entry.digest);
        self.by_ino.remove(&entry.ino);
        Some(entry)
    }

    fn new_ino(&mut self) -> InodeNo {
        let ino = self.next_ino;
        self.next_ino += 1;
        ino
    }

    fn touch_dir(&mut self, dir: &StateId, ctx: &ApplyCtx) {
        if let Some(entry) = self.entries.get_mut(dir) {
            // Times are not part of the entry digest, so the root needs no update.
            entry.mtime_ns = ctx.now_ns();
            entry.ctime_ns = ctx.now_ns();
            entry.changed_at = ctx.height;
        }
    }

    /// The parent of `id` must exist and be a directory.
    fn check_parent(&self, id: &StateId) -> Result<StateId, Reject> {
        let parent = id.parent().ok_or(Reject::Invalid)?;
        match self.entries.get(&parent) {
            None => Err(Reject::NotFound),
            Some(e) if !e.is_dir() => Err(Reject::NotADirectory),
            Some(_) => Ok(parent),
        }
    }

    /// The file or symlink named `id` (not a directory): what `unlink` removes.
    fn non_dir(&self, id: &StateId) -> Result<&Entry, Reject> {
        match self.entries.get(id) {
            None => Err(Reject::NotFound),
            Some(e) if e.is_dir() => Err(Reject::IsADirectory),
            Some(e) => Ok(e),
        }
    }

    /// Applies one transaction. On a rejection, a duplicate or an expired id nothing changes.
    pub fn apply(&mut self, ctx: &ApplyCtx, tx: &Transaction) -> (Outcome, Vec<Change>) {
        match self.dedup.check(&tx.request, tx.acked_below) {
            Verdict::Duplicate { .. } => return (Outcome::Duplicate, Vec::new()),
            Verdict::Expired => return (Outcome::Expired, Vec::new()),
            Verdict::Fresh => {}
        }
        // A membership change comes from consensus itself (node 0), never from a member.
        let forged_membership = matches!(tx.op, TxOp::Membership { .. }) && tx.request.node != 0;
        let applied = match forged_membership {
            true => Err(Reject::Invalid),
            false => self.apply_op(ctx, &tx.op),
        };
        let (outcome, changes) = match applied {
            Ok(changes) => (Outcome::Ok, changes),
            Err(reject) => (Outcome::Rejected(reject), Vec::new()),
        };
        self.dedup.record(&tx.request, outcome);
        (outcome, changes)
    }

    /// What the proposer of `request` is told, given the outcome its block `recorded` (a
    /// duplicate learns the first application's outcome; see `chain::dedup`).
    pub fn answer(&self, request: &crate::chain::RequestId, recorded: Outcome) -> Outcome {
        self.dedup.answer(request, recorded)
    }

    fn apply_op(&mut self, ctx: &ApplyCtx, op: &TxOp) -> Result<Vec<Change>, Reject> {
        match op {
            TxOp::Put { id, content, uid, gid, ino } => {
                self.check_ino(id, *ino)?;
                self.check_size(content.len() as u64)?;
                self.write_file(ctx, id, (*uid, *gid), |_| content.clone())
            }
            TxOp::Append { id, content, uid, gid, ino } => {
                self.check_ino(id, *ino)?;
                let old_len = match self.entries.get(id).map(|e| &e.kind) {
                    Some(EntryKind::File(old)) => old.len() as u64,
                    _ => 0,
                };
                self.check_size(old_len.saturating_add(content.len() as u64))?;
                self.write_file(ctx, id, (*uid, *gid), |old| match old {
                    Some(old) if !old.is_empty() => {
                        let mut bytes = Vec::with_capacity(old.len() + content.len());
                        bytes.extend_from_slice(old.as_bytes());
                        bytes.extend_from_slice(content.as_bytes());
                        Content::from(bytes)
                    }
                    _ => content.clone(),
                })
            }
            TxOp::Create { id, mode, exclusive, uid, gid } => {
                let parent = self.check_parent(id)?;
                match self.entries.get(id) {
                    Some(_) if *exclusive => Err(Reject::AlreadyExists),
                    Some(e) if e.is_dir() => Err(Reject::IsADirectory),
                    Some(_) => Ok(Vec::new()),
                    None => {
                        let entry =
                            self.new_entry(ctx, EntryKind::File(Content::default()), *mode, (*uid, *gid));
                        self.insert(id.clone(), entry);
                        self.touch_dir(&parent, ctx);
                        Ok(vec![Change::Wrote(id.clone())])
                    }
                }
            }
            TxOp::Delete { id } => {
                self.check_parent(id)?;
                self.non_dir(id)?;
                self.remove(id);
                self.touch_dir(&id.parent().expect("a file is never the root"), ctx);
                Ok(vec![Change::Removed(id.clone())])
            }
            TxOp::Truncate { id, size } => {
                let old = match &self.non_dir(id)?.kind {
                    EntryKind::File(c) => c.clone(),
                    EntryKind::Symlink(_) => return Err(Reject::Invalid),
                    EntryKind::Dir => unreachable!("non_dir() returns no directories"),
                };
                // Checked before anything is allocated: `truncate -s 1T` is a rejection, not an abort.
                self.check_size(*size)?;
                let size = usize::try_from(*size).map_err(|_| Reject::Invalid)?;
                let mut bytes = old.as_bytes().to_vec();
                bytes.resize(size, 0);
                self.write_file(ctx, id, (0, 0), |_| Content::from(bytes))
            }
            TxOp::Rename { from, to, mode } => self.rename(ctx, from, to, *mode),
            TxOp::Mkdir { id, mode, uid, gid } => {
                let parent = self.check_parent(id)?;
                if self.entries.contains_key(id) {
                    return Err(Reject::AlreadyExists);
                }
                let entry = self.new_entry(ctx, EntryKind::Dir, *mode, (*uid, *gid));
                self.insert(id.clone(), entry);
                self.touch_dir(&parent, ctx);
                Ok(vec![Change::MadeDir(id.clone())])
            }
            TxOp::Rmdir { id } => {
                let parent = self.check_parent(id)?;
                match self.entries.get(id) {
                    None => return Err(Reject::NotFound),
                    Some(e) if !e.is_dir() => return Err(Reject::NotADirectory),
                    Some(_) => {}
                }
                if self.has_children(id) {
                    return Err(Reject::NotEmpty);
                }
                self.remove(id);
                self.touch_dir(&parent, ctx);
                Ok(vec![Change::RemovedDir(id.clone())])
            }
            TxOp::Chmod { id, mode } => {
                let mut entry = self.entries.get(id).ok_or(Reject::NotFound)?.clone();
                entry.mode = mode & 0o7777;
                entry.ctime_ns = ctx.now_ns();
                entry.changed_at = ctx.height;
                self.insert(id.clone(), entry);
                Ok(vec![Change::ModeChanged(id.clone())])
            }
            TxOp::Membership { .. } => Ok(Vec::new()),
            TxOp::Limits { max_state_size, initial } => {
                let limits = Limits { max_state_size: *max_state_size };
                if !limits.valid() {
                    return Err(Reject::Invalid);
                }
                if *initial && self.limits.is_some() {
                    return Err(Reject::AlreadyExists);
                }
                self.limits = Some(limits);
                Ok(Vec::new())
            }
            TxOp::Symlink { id, target, uid, gid } => {
                let parent = self.check_parent(id)?;
                if target.is_empty() || target.len() > MAX_SYMLINK_TARGET || target.contains('\0') {
                    return Err(Reject::Invalid);
                }
                if self.entries.contains_key(id) {
                    return Err(Reject::AlreadyExists);
                }
                let entry =
                    self.new_entry(ctx, EntryKind::Symlink(target.clone()), SYMLINK_MODE, (*uid, *gid));
                self.insert(id.clone(), entry);
                self.touch_dir(&parent, ctx);
                Ok(vec![Change::Wrote(id.clone())])
            }
            TxOp::Chown { id, uid, gid, mode } => {
                let mut entry = self.entries.get(id).ok_or(Reject::NotFound)?.clone();
                entry.uid = uid.unwrap_or(entry.uid);
                entry.gid = gid.unwrap_or(entry.gid);
                if let Some(mode) = mode {
                    entry.mode = mode & 0o7777;
                }
                if entry.is_symlink() {
                    entry.mode = SYMLINK_MODE;
                }
                entry.ctime_ns = ctx.now_ns();
                entry.changed_at = ctx.height;
                self.insert(id.clone(), entry);
                Ok(vec![Change::ModeChanged(id.clone())])
            }
            TxOp::Times { id, atime, mtime } => {
                let entry = self.entries.get_mut(id).ok_or(Reject::NotFound)?;
                // Times are not part of the entry digest: no rehash, no root update.
                if let Some(t) = atime {
                    entry.atime_ns = ctx.resolve(*t);
                }
                if let Some(t) = mtime {
                    entry.mtime_ns = ctx.resolve(*t);
                }
                entry.ctime_ns = ctx.now_ns();
                entry.changed_at = ctx.height;
                Ok(vec![Change::ModeChanged(id.clone())])
            }
        }
    }

    fn new_entry(&mut self, ctx: &ApplyCtx, kind: EntryKind, mode: u32, (uid, gid): (u32, u32)) -> Entry {
        let now = ctx.now_ns();
        Entry {
            ino: self.new_ino(),
            kind,
            mode: mode & 0o7777,
            uid,
            gid,
            atime_ns: now,
            mtime_ns: now,
            ctime_ns: now,
            changed_at: ctx.height,
            digest: Digest::ZERO,
        }
    }

    /// Sets a file's content to `make(old content)`, creating the file (owned by `owner`) if
    /// it is missing. A symlink is not written through: the kernel follows links before it
    /// asks us, so a write that names one is invalid.
    /// A state of `len` bytes fits the cluster's limits.
    fn check_size(&self, len: u64) -> Result<(), Reject> {
        match len > self.limits().max_state_size {
            true => Err(Reject::TooBig),
            false => Ok(()),
        }
    }

    fn write_file(
        &mut self,
        ctx: &ApplyCtx,
        id: &StateId,
        owner: (u32, u32),
        make: impl FnOnce(Option<&Content>) -> Content,
    ) -> Result<Vec<Change>, Reject> {
        let parent = self.check_parent(id)?;
        let entry = match self.entries.get(id) {
            Some(e) => match &e.kind {
                EntryKind::Dir => return Err(Reject::IsADirectory),
                EntryKind::Symlink(_) => return Err(Reject::Invalid),
                EntryKind::File(old) => Entry {
                    kind: EntryKind::File(make(Some(old))),
                    mtime_ns: ctx.now_ns(),
                    ctime_ns: ctx.now_ns(),
                    changed_at: ctx.height,
                    ..e.clone()
                },
            },
            None => {
                let content = make(None);
                self.touch_dir(&parent, ctx);
                self.new_entry(ctx, EntryKind::File(content), DEFAULT_FILE_MODE, owner)
            }
        };
        self.insert(id.clone(), entry);
        Ok(vec![Change::Wrote(id.clone())])
    }

    fn rename(
        &mut self,
        ctx: &ApplyCtx,
        from: &StateId,
        to: &StateId,
        mode: RenameMode,
    ) -> Result<Vec<Change>, Reject> {
        if from.is_root() || to.is_root() {
            return Err(Reject::Invalid);
        }
        self.check_parent(from)?;
        let source = self.entries.get(from).ok_or(Reject::NotFound)?;
        let source_is_dir = source.is_dir();
        let to_parent = self.check_parent(to)?;
        if from == to {
            return Ok(Vec::new());
        }
        if to.is_within(from) || (mode == RenameMode::Exchange && from.is_within(to)) {
            return Err(Reject::Invalid);
        }
        self.check_rebased_lengths(from, to)?;
        if mode == RenameMode::Exchange {
            self.check_rebased_lengths(to, from)?;
        }
        let target = self.entries.get(to);
        match (mode, target) {
            (RenameMode::Exchange, None) => return Err(Reject::NotFound),
            (RenameMode::Exchange, Some(_)) => {
                let a = self.take_subtree(from);
                let b = self.take_subtree(to);
                self.put_subtree(a, from, to);
                self.put_subtree(b, to, from);
                self.touch_dir(&from.parent().unwrap(), ctx);
                self.touch_dir(&to_parent, ctx);
                return Ok(vec![Change::Exchanged { a: from.clone(), b: to.clone() }]);
            }
            (RenameMode::NoReplace, Some(_)) => return Err(Reject::AlreadyExists),
            (RenameMode::Replace, Some(t)) => match (source_is_dir, t.is_dir()) {
                (true, false) => return Err(Reject::NotADirectory),
                (false, true) => return Err(Reject::IsADirectory),
                (true, true) if self.has_children(to) => return Err(Reject::NotEmpty),
                _ => {
                    self.remove(to);
                }
            },
            (_, None) => {}
        }
        let moved = self.take_subtree(from);
        self.put_subtree(moved, from, to);
        if let Some(entry) = self.entries.get_mut(to) {
            // A rename changes the moved entry's ctime, as on ext4 (times are not hashed).
            entry.ctime_ns = ctx.now_ns();
        }
        self.touch_dir(&from.parent().unwrap(), ctx);
        self.touch_dir(&to_parent, ctx);
        Ok(vec![Change::Renamed { from: from.clone(), to: to.clone() }])
    }

    /// With an inode precondition, `id` must still name that inode.
    fn check_ino(&self, id: &StateId, ino: Option<InodeNo>) -> Result<(), Reject> {
        match (ino, self.entries.get(id)) {
            (None, _) => Ok(()),
            (Some(ino), Some(entry)) if entry.ino == ino => Ok(()),
            (Some(_), _) => Err(Reject::Moved),
        }
    }

    /// Moving `from` to `to` must not make any path below it longer than `PATH_MAX` allows.
    fn check_rebased_lengths(&self, from: &StateId, to: &StateId) -> Result<(), Reject> {
        let deepest = self.descendants(from).map(|(id, _)| id.as_str().len()).max().unwrap_or(0);
        let deepest = deepest.max(from.as_str().len());
        match deepest - from.as_str().len() + to.as_str().len() > super::state_id::MAX_PATH_LEN {
            true => Err(Reject::NameTooLong),
            false => Ok(()),
        }
    }

    /// Removes `top` and everything below it, returning the entries.
    fn take_subtree(&mut self, top: &StateId) -> Vec<(StateId, Entry)> {
        let mut ids = vec![top.clone()];
        ids.extend(self.descendants(top).map(|(id, _)| id.clone()));
        ids.into_iter()
            .map(|id| {
                let entry = self.remove(&id).expect("listed ids exist");
                (id, entry)
            })
            .collect()
    }

    /// Inserts entries taken from below `from` under `to`, keeping their inode numbers.
    fn put_subtree(&mut self, entries: Vec<(StateId, Entry)>, from: &StateId, to: &StateId) {
        for (id, entry) in entries {
            self.insert(id.rebase(from, to), entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::tx::RequestId;

    struct Harness {
        tree: Tree,
        seq: u64,
        height: Height,
    }

    impl Harness {
        fn new() -> Self {
            Harness { tree: Tree::new(), seq: 0, height: 0 }
        }
        fn apply(&mut self, op: TxOp) -> Outcome {
            self.seq += 1;
            self.height += 1;
            let ctx = ApplyCtx { height: self.height, timestamp_ms: self.height * 1000 };
            let tx = Transaction {
                request: RequestId { node: 1, incarnation: 1, seq: self.seq },
                acked_below: 0,
                op,
            };
            self.tree.apply(&ctx, &tx).0
        }
        fn content(&self, id: &str) -> Option<Vec<u8>> {
            match &self.tree.get(&sid(id))?.kind {
                EntryKind::File(c) => Some(c.as_bytes().to_vec()),
                EntryKind::Dir | EntryKind::Symlink(_) => None,
            }
        }
        fn entry(&self, id: &str) -> &Entry {
            self.tree.get(&sid(id)).unwrap()
        }
        /// The timestamp (ns) the next `apply` stamps.
        fn next_ns(&self) -> i64 {
            (self.height as i64 + 1) * 1000 * 1_000_000
        }
    }

    fn sid(s: &str) -> StateId {
        StateId::parse(s).unwrap()
    }
    fn put(id: &str, c: &str) -> TxOp {
        TxOp::Put { id: sid(id), content: Content::from(c.as_bytes()), uid: 0, gid: 0, ino: None }
    }
    fn mkdir(id: &str) -> TxOp {
        TxOp::Mkdir { id: sid(id), mode: 0o755, uid: 0, gid: 0 }
    }
    fn symlink(id: &str, target: &str) -> TxOp {
        TxOp::Symlink { id: sid(id), target: target.into(), uid: 1000, gid: 1000 }
    }
    fn rejected(r: Reject) -> Outcome {
        Outcome::Rejected(r)
    }

    #[test]
    fn put_append_truncate_delete() {
        let mut h = Harness::new();
        assert_eq!(h.apply(put("a", "one")), Outcome::Ok);
        assert_eq!(
            h.apply(TxOp::Append {
                id: sid("a"),
                content: Content::from(&b"+two"[..]),
                uid: 0,
                gid: 0,
                ino: None
            }),
            Outcome::Ok
        );
        assert_eq!(h.content("a").unwrap(), b"one+two");
        assert_eq!(h.apply(TxOp::Truncate { id: sid("a"), size: 3 }), Outcome::Ok);
        assert_eq!(h.content("a").unwrap(), b"one");
        assert_eq!(h.apply(TxOp::Truncate { id: sid("a"), size: 5 }), Outcome::Ok);
        assert_eq!(h.content("a").unwrap(), b"one\0\0");
        assert_eq!(h.apply(TxOp::Delete { id: sid("a") }), Outcome::Ok);
        assert!(h.tree.get(&sid("a")).is_none());
        assert_eq!(h.apply(TxOp::Delete { id: sid("a") }), rejected(Reject::NotFound));
        assert_eq!(
            h.apply(TxOp::Append {
                id: sid("b"),
                content: Content::from(&b"x"[..]),
                uid: 0,
                gid: 0,
                ino: None
            }),
            Outcome::Ok
        );
        assert_eq!(h.content("b").unwrap(), b"x");
    }

    #[test]
    fn parents_must_exist_and_be_directories() {
        let mut h = Harness::new();
        assert_eq!(h.apply(put("d/a", "x")), rejected(Reject::NotFound));
        assert_eq!(h.apply(put("f", "x")), Outcome::Ok);
        assert_eq!(h.apply(put("f/a", "x")), rejected(Reject::NotADirectory));
        assert_eq!(h.apply(mkdir("d")), Outcome::Ok);
        assert_eq!(h.apply(put("d/a", "x")), Outcome::Ok);
        assert_eq!(h.apply(put("d", "x")), rejected(Reject::IsADirectory));
        assert_eq!(h.apply(TxOp::Delete { id: sid("d") }), rejected(Reject::IsADirectory));
    }

    #[test]
    fn exclusive_create_fails_on_existing_and_changes_nothing() {
        let mut h = Harness::new();
        let create = |excl| TxOp::Create { id: sid("lock"), mode: 0o600, exclusive: excl, uid: 0, gid: 0 };
        assert_eq!(h.apply(create(true)), Outcome::Ok);
        assert_eq!(h.apply(put("lock", "a")), Outcome::Ok);
        let before = h.tree.clone();
        assert_eq!(h.apply(create(true)), rejected(Reject::AlreadyExists));
        assert_eq!(h.tree.state_root(), before.state_root());
        assert_eq!(h.content("lock").unwrap(), b"a");
        // A plain create of an existing file is a successful no-op.
        assert_eq!(h.apply(create(false)), Outcome::Ok);
        assert_eq!(h.content("lock").unwrap(), b"a");
        assert_eq!(h.tree.get(&sid("lock")).unwrap().mode, 0o600);
    }

    #[test]
    fn mkdir_rmdir_and_not_empty() {
        let mut h = Harness::new();
        assert_eq!(h.apply(mkdir("d")), Outcome::Ok);
        assert_eq!(h.apply(mkdir("d")), rejected(Reject::AlreadyExists));
        assert_eq!(h.apply(put("d/x", "1")), Outcome::Ok);
        assert_eq!(h.apply(TxOp::Rmdir { id: sid("d") }), rejected(Reject::NotEmpty));
        assert_eq!(h.apply(TxOp::Rmdir { id: sid("d/x") }), rejected(Reject::NotADirectory));
        assert_eq!(h.apply(TxOp::Delete { id: sid("d/x") }), Outcome::Ok);
        assert_eq!(h.apply(TxOp::Rmdir { id: sid("d") }), Outcome::Ok);
        assert_eq!(h.apply(TxOp::Rmdir { id: sid("d") }), rejected(Reject::NotFound));
        // "d0" sorts right after "d/..." keys; it must not count as a child of "d".
        assert_eq!(h.apply(mkdir("e")), Outcome::Ok);
        assert_eq!(h.apply(put("e0", "x")), Outcome::Ok);
        assert_eq!(h.apply(TxOp::Rmdir { id: sid("e") }), Outcome::Ok);
    }

    #[test]
    fn rename_moves_whole_directories_and_keeps_inodes() {
        let mut h = Harness::new();
        h.apply(mkdir("a"));
        h.apply(mkdir("a/b"));
        h.apply(put("a/b/c", "deep"));
        h.apply(put("ab", "sibling"));
        let ino = h.tree.get(&sid("a/b/c")).unwrap().ino;
        let rename = |from: &str, to: &str, mode| TxOp::Rename { from: sid(from), to: sid(to), mode };
        assert_eq!(h.apply(rename("a", "z", RenameMode::Replace)), Outcome::Ok);
        assert_eq!(h.content("z/b/c").unwrap(), b"deep");
        assert_eq!(h.tree.get(&sid("z/b/c")).unwrap().ino, ino);
        assert_eq!(h.tree.id_of(ino), Some(&sid("z/b/c")));
        assert!(h.tree.get(&sid("a/b")).is_none());
        assert_eq!(h.content("ab").unwrap(), b"sibling");
        assert_eq!(h.apply(rename("z", "z/b/in", RenameMode::Replace)), rejected(Reject::Invalid));
        assert_eq!(h.apply(rename("ab", "z", RenameMode::Replace)), rejected(Reject::IsADirectory));
        assert_eq!(h.apply(rename("z", "ab", RenameMode::Replace)), rejected(Reject::NotADirectory));
        assert_eq!(h.apply(rename("missing", "q", RenameMode::Replace)), rejected(Reject::NotFound));
    }

    #[test]
    fn a_write_bound_to_an_inode_applies_only_while_the_path_names_it() {
        let mut h = Harness::new();
        h.apply(put("log", "one\n"));
        let ino = h.tree.get(&sid("log")).unwrap().ino;
        let bound = |content: &str| TxOp::Append {
            id: sid("log"),
            content: Content::from(content.as_bytes()),
            uid: 0,
            gid: 0,
            ino: Some(ino),
        };
        assert_eq!(h.apply(bound("two\n")), Outcome::Ok);
        // Rotated: the path now names another inode; the bound append is refused, nothing changes.
        h.apply(TxOp::Rename { from: sid("log"), to: sid("log.1"), mode: RenameMode::Replace });
        h.apply(put("log", "fresh\n"));
        let root = h.tree.state_root();
        assert_eq!(h.apply(bound("three\n")), rejected(Reject::Moved));
        assert_eq!(h.tree.state_root(), root);
        assert_eq!(h.content("log").unwrap(), b"fresh\n");
        assert_eq!(h.content("log.1").unwrap(), b"one\ntwo\n");
        // Removed: refused as well, and not recreated.
        h.apply(TxOp::Delete { id: sid("log.1") });
        let put_bound =
            TxOp::Put { id: sid("log.1"), content: Content::from(&b"x"[..]), uid: 0, gid: 0, ino: Some(ino) };
        assert_eq!(h.apply(put_bound), rejected(Reject::Moved));
        assert!(h.tree.get(&sid("log.1")).is_none());
    }

    #[test]
    fn rename_refuses_paths_past_path_max() {
        let mut h = Harness::new();
        let long = "n".repeat(255);
        let mut deep = String::new();
        for _ in 0..15 {
            deep = if deep.is_empty() { long.clone() } else { format!("{deep}/{long}") };
            h.apply(TxOp::Mkdir { id: sid(&deep), mode: 0o755, uid: 0, gid: 0 });
        }
        h.apply(TxOp::Mkdir { id: sid("a"), mode: 0o755, uid: 0, gid: 0 });
        h.apply(put(&format!("a/{}", "f".repeat(255)), "x"));
        // deep/a would be fine, but deep/a/fff... is past 4,095 bytes.
        let target = format!("{deep}/a");
        let rename = TxOp::Rename { from: sid("a"), to: sid(&target), mode: RenameMode::Replace };
        assert_eq!(h.apply(rename), rejected(Reject::NameTooLong));
        assert!(h.tree.get(&sid("a")).is_some());
    }

    #[test]
    fn rename_modes() {
        let mut h = Harness::new();
        h.apply(put("x", "X"));
        h.apply(put("y", "Y"));
        let rename = |mode| TxOp::Rename { from: sid("x"), to: sid("y"), mode };
        assert_eq!(h.apply(rename(RenameMode::NoReplace)), rejected(Reject::AlreadyExists));
        assert_eq!(h.apply(rename(RenameMode::Exchange)), Outcome::Ok);
        assert_eq!(h.content("x").unwrap(), b"Y");
        assert_eq!(h.content("y").unwrap(), b"X");
        assert_eq!(h.apply(rename(RenameMode::Replace)), Outcome::Ok);
        assert_eq!(h.content("y").unwrap(), b"Y");
        assert!(h.tree.get(&sid("x")).is_none());
        assert_eq!(h.apply(rename(RenameMode::Exchange)), rejected(Reject::NotFound));
    }

    #[test]
    fn chmod_and_duplicates() {
        let mut h = Harness::new();
        h.apply(put("f", "x"));
        assert_eq!(h.apply(TxOp::Chmod { id: sid("f"), mode: 0o100600 }), Outcome::Ok);
        assert_eq!(h.tree.get(&sid("f")).unwrap().mode, 0o600);
        let ctx = ApplyCtx { height: 99, timestamp_ms: 99 };
        let request = RequestId { node: 2, incarnation: 5, seq: 1 };
        let tx = Transaction { request, acked_below: 1, op: put("f", "once") };
        assert_eq!(h.tree.apply(&ctx, &tx).0, Outcome::Ok);
        h.apply(put("f", "later"));
        assert_eq!(h.tree.apply(&ctx, &tx).0, Outcome::Duplicate);
        assert_eq!(h.content("f").unwrap(), b"later");
    }

    #[test]
    fn no_transaction_grows_a_state_past_the_clusters_limit_and_none_allocates_what_it_asks() {
        let mut h = Harness::new();
        assert!(!h.tree.limits_set());
        assert_eq!(h.tree.limits(), Limits::CAPS, "a chain without limits applies the caps");
        // `truncate -s 1T` (or 16 EiB) is a rejection, before any allocation.
        h.apply(put("f", "abc"));
        assert_eq!(h.apply(TxOp::Truncate { id: sid("f"), size: 1 << 40 }), rejected(Reject::TooBig));
        assert_eq!(h.apply(TxOp::Truncate { id: sid("f"), size: u64::MAX }), rejected(Reject::TooBig));
        assert_eq!(h.content("f").unwrap(), b"abc", "nothing changed");

        let limits = |max_state_size, initial| TxOp::Limits { max_state_size, initial };
        assert_eq!(h.apply(limits(8, true)), Outcome::Ok);
        assert_eq!(h.tree.limits().max_state_size, 8);
        assert_eq!(h.apply(limits(100, true)), rejected(Reject::AlreadyExists), "one initial limits wins");
        assert_eq!(h.tree.limits().max_state_size, 8);

        assert_eq!(h.apply(put("g", "12345678")), Outcome::Ok, "exactly the limit fits");
        assert_eq!(h.apply(put("g", "123456789")), rejected(Reject::TooBig));
        assert_eq!(h.content("g").unwrap(), b"12345678");
        let append = |c: &str| TxOp::Append {
            id: sid("f"),
            content: Content::from(c.as_bytes()),
            uid: 0,
            gid: 0,
            ino: None,
        };
        assert_eq!(h.apply(append("defgh")), Outcome::Ok, "3 + 5 bytes fit");
        assert_eq!(h.apply(append("i")), rejected(Reject::TooBig), "the append is checked on the sum");
        assert_eq!(h.content("f").unwrap(), b"abcdefgh");
        assert_eq!(h.apply(TxOp::Truncate { id: sid("f"), size: 9 }), rejected(Reject::TooBig));
        assert_eq!(h.apply(TxOp::Truncate { id: sid("f"), size: 2 }), Outcome::Ok);

        // A later change applies to what follows; states already larger stay as they are.
        assert_eq!(h.apply(limits(4, false)), Outcome::Ok);
        assert_eq!(h.content("g").unwrap(), b"12345678");
        assert_eq!(h.apply(put("g", "12345")), rejected(Reject::TooBig));
        assert_eq!(h.apply(limits(0, false)), rejected(Reject::Invalid));
        assert_eq!(h.apply(limits(MAX_CAP_PLUS_ONE, false)), rejected(Reject::Invalid));
        assert_eq!(h.tree.limits().max_state_size, 4, "invalid limits change nothing");
    }

    const MAX_CAP_PLUS_ONE: u64 = crate::chain::MAX_STATE_SIZE_CAP + 1;

    #[test]
    fn a_membership_change_from_anyone_but_consensus_is_invalid() {
        let mut h = Harness::new();
        let members = crate::chain::Members { configs: vec![], nodes: Default::default() };
        assert_eq!(h.apply(TxOp::Membership { members: members.clone() }), rejected(Reject::Invalid));
        let ctx = ApplyCtx { height: 9, timestamp_ms: 9 };
        let from_consensus = Transaction {
            request: RequestId { node: 0, incarnation: 0, seq: 9 },
            acked_below: 9,
            op: TxOp::Membership { members },
        };
        assert_eq!(h.tree.apply(&ctx, &from_consensus).0, Outcome::Ok);
    }

    #[test]
    fn state_root_is_incremental_and_order_independent() {
        let mut a = Harness::new();
        a.apply(put("x", "1"));
        a.apply(put("y", "2"));
        let mut b = Harness::new();
        b.apply(put("y", "2"));
        b.apply(put("x", "1"));
        assert_eq!(a.tree.state_root(), b.tree.state_root());
        b.apply(put("x", "changed"));
        assert_ne!(a.tree.state_root(), b.tree.state_root());
        b.apply(put("x", "1"));
        assert_eq!(a.tree.state_root(), b.tree.state_root());
        let empty = Tree::new().state_root();
        a.apply(TxOp::Delete { id: sid("x") });
        a.apply(TxOp::Delete { id: sid("y") });
        assert_eq!(a.tree.state_root(), empty);
    }

    #[test]
    fn a_retry_learns_what_the_first_attempt_did() {
        let mut h = Harness::new();
        let ctx = ApplyCtx { height: 50, timestamp_ms: 50 };
        h.apply(put("lock", "a"));
        let request = RequestId { node: 3, incarnation: 9, seq: 77 };
        let create = TxOp::Create { id: sid("lock"), mode: 0o644, exclusive: true, uid: 0, gid: 0 };
        let tx = Transaction { request, acked_below: 77, op: create };
        assert_eq!(h.tree.apply(&ctx, &tx).0, rejected(Reject::AlreadyExists));
        assert_eq!(h.tree.apply(&ctx, &tx).0, Outcome::Duplicate);
        assert_eq!(h.tree.answer(&request, Outcome::Duplicate), rejected(Reject::AlreadyExists));
        // Once its origin declares it answered, a late copy is refused, never a success.
        let later =
            Transaction { request: RequestId { seq: 78, ..request }, acked_below: 78, op: put("x", "1") };
        assert_eq!(h.tree.apply(&ctx, &later).0, Outcome::Ok);
        assert_eq!(h.tree.apply(&ctx, &tx).0, Outcome::Expired);
        assert_eq!(h.tree.answer(&request, Outcome::Duplicate), Outcome::Expired);
    }

    #[test]
    fn creating_transactions_record_their_owner() {
        let mut h = Harness::new();
        let (uid, gid) = (1000, 100);
        let ops = [
            TxOp::Create { id: sid("c"), mode: 0o644, exclusive: false, uid, gid },
            TxOp::Mkdir { id: sid("m"), mode: 0o755, uid, gid },
            TxOp::Put { id: sid("p"), content: Content::from(&b"x"[..]), uid, gid, ino: None },
            TxOp::Append { id: sid("a"), content: Content::from(&b"x"[..]), uid, gid, ino: None },
            TxOp::Symlink { id: sid("l"), target: "c".into(), uid, gid },
        ];
        for op in ops {
            assert_eq!(h.apply(op), Outcome::Ok);
        }
        for id in ["c", "m", "p", "a", "l"] {
            assert_eq!((h.entry(id).uid, h.entry(id).gid), (uid, gid), "{id}");
        }
        // Rewriting someone's file keeps its owner, whoever asks.
        let rewrite =
            TxOp::Put { id: sid("p"), content: Content::from(&b"y"[..]), uid: 0, gid: 0, ino: None };
        assert_eq!(h.apply(rewrite), Outcome::Ok);
        assert_eq!((h.entry("p").uid, h.entry("p").gid), (uid, gid));
        assert_eq!(
            h.apply(TxOp::Rename { from: sid("p"), to: sid("q"), mode: RenameMode::Replace }),
            Outcome::Ok
        );
        assert_eq!(h.entry("q").uid, uid, "a rename keeps the owner");
    }

    #[test]
    fn chown_changes_owner_group_and_mode_at_once() {
        let mut h = Harness::new();
        h.apply(TxOp::Create { id: sid("f"), mode: 0o4755, exclusive: false, uid: 1000, gid: 1000 });
        let chown = |uid, gid, mode| TxOp::Chown { id: sid("f"), uid, gid, mode };
        assert_eq!(h.apply(chown(None, Some(50), None)), Outcome::Ok);
        assert_eq!((h.entry("f").uid, h.entry("f").gid, h.entry("f").mode), (1000, 50, 0o4755));
        let at = h.next_ns();
        assert_eq!(h.apply(chown(Some(0), None, Some(0o100755))), Outcome::Ok);
        let f = h.entry("f");
        assert_eq!((f.uid, f.gid, f.mode), (0, 50, 0o755), "owner and mode changed in one transaction");
        assert_eq!(f.ctime_ns, at, "ctime is the block's time");
        assert_eq!(
            h.apply(TxOp::Chown { id: sid("nope"), uid: Some(1), gid: None, mode: None }),
            rejected(Reject::NotFound)
        );
        // A symlink can be chowned (lchown); its mode stays 0777.
        h.apply(symlink("l", "f"));
        assert_eq!(
            h.apply(TxOp::Chown { id: sid("l"), uid: Some(7), gid: Some(7), mode: Some(0o600) }),
            Outcome::Ok
        );
        assert_eq!((h.entry("l").uid, h.entry("l").mode), (7, SYMLINK_MODE));
    }

    #[test]
    fn privileges_an_unprivileged_write_drops() {
        assert_eq!(mode_after_unprivileged_write(0o4755), 0o755);
        assert_eq!(mode_after_unprivileged_write(0o6755), 0o755);
        assert_eq!(mode_after_unprivileged_write(0o2754), 0o754, "setgid with group exec goes");
        assert_eq!(mode_after_unprivileged_write(0o2744), 0o2744, "setgid without group exec stays");
        assert_eq!(mode_after_unprivileged_write(0o1777), 0o1777, "sticky stays");
    }

    #[test]
    fn owners_are_part_of_the_state_root_but_times_are_not() {
        let make = |uid, gid| {
            let mut h = Harness::new();
            h.apply(TxOp::Create { id: sid("f"), mode: 0o644, exclusive: false, uid, gid });
            h
        };
        let root = make(0, 0).tree.state_root();
        assert_ne!(make(1000, 0).tree.state_root(), root);
        assert_ne!(make(0, 1000).tree.state_root(), root);
        assert_ne!(make(1000, 0).tree.state_root(), make(0, 1000).tree.state_root());
        let mut h = make(0, 0);
        h.apply(TxOp::Chown { id: sid("f"), uid: Some(1000), gid: None, mode: None });
        assert_eq!(h.tree.state_root(), make(1000, 0).tree.state_root(), "chown moves the root");
        h.apply(TxOp::Chown { id: sid("f"), uid: Some(0), gid: None, mode: None });
        assert_eq!(h.tree.state_root(), root, "and back");
        h.apply(TxOp::Times { id: sid("f"), atime: Some(TimeSpec::At(1)), mtime: None });
        assert_eq!(h.tree.state_root(), root);
    }

    #[test]
    fn times_now_and_at() {
        let mut h = Harness::new();
        h.apply(put("f", "x"));
        let created = h.entry("f").clone();
        assert_eq!(
            (created.atime_ns, created.mtime_ns, created.ctime_ns),
            (1_000_000_000, 1_000_000_000, 1_000_000_000)
        );
        // touch -d 1969-12-31: a time before the epoch; atime untouched.
        let at = -86_400_000_000_123;
        let now = h.next_ns();
        assert_eq!(
            h.apply(TxOp::Times { id: sid("f"), atime: None, mtime: Some(TimeSpec::At(at)) }),
            Outcome::Ok
        );
        let f = h.entry("f");
        assert_eq!((f.atime_ns, f.mtime_ns, f.ctime_ns), (created.atime_ns, at, now));
        // touch: both to the block's time.
        let now = h.next_ns();
        assert_eq!(
            h.apply(TxOp::Times { id: sid("f"), atime: Some(TimeSpec::Now), mtime: Some(TimeSpec::Now) }),
            Outcome::Ok
        );
        let f = h.entry("f");
        assert_eq!((f.atime_ns, f.mtime_ns, f.ctime_ns), (now, now, now));
        // A content change sets mtime and ctime, never atime.
        let now = h.next_ns();
        h.apply(TxOp::Times { id: sid("f"), atime: Some(TimeSpec::At(5)), mtime: Some(TimeSpec::At(6)) });
        h.apply(put("f", "y"));
        let f = h.entry("f");
        assert_eq!((f.atime_ns, f.mtime_ns), (5, now + 1_000_000_000));
        // chmod and rename change ctime only.
        let now = h.next_ns();
        h.apply(TxOp::Chmod { id: sid("f"), mode: 0o600 });
        assert_eq!((h.entry("f").ctime_ns, h.entry("f").atime_ns), (now, 5));
        let now = h.next_ns();
        h.apply(TxOp::Rename { from: sid("f"), to: sid("g"), mode: RenameMode::Replace });
        assert_eq!(h.entry("g").ctime_ns, now);
        // Directories: their mtime is the time their list of children last changed.
        h.apply(mkdir("d"));
        let now = h.next_ns();
        h.apply(put("d/x", "1"));
        assert_eq!((h.entry("d").mtime_ns, h.entry("d").ctime_ns), (now, now));
        assert_eq!(
            h.apply(TxOp::Times { id: sid("d"), atime: None, mtime: Some(TimeSpec::At(0)) }),
            Outcome::Ok
        );
        assert_eq!(h.entry("d").mtime_ns, 0);
        assert_eq!(
            h.apply(TxOp::Times { id: sid("gone"), atime: None, mtime: None }),
            rejected(Reject::NotFound)
        );
    }

    #[test]
    fn symlinks_are_created_renamed_and_removed_like_files() {
        let mut h = Harness::new();
        h.apply(mkdir("d"));
        assert_eq!(h.apply(symlink("d/l", "../target")), Outcome::Ok);
        let l = h.entry("d/l").clone();
        assert_eq!(l.kind, EntryKind::Symlink("../target".into()));
        assert_eq!((l.mode, l.size(), l.uid), (SYMLINK_MODE, 9, 1000));
        assert_eq!(h.apply(symlink("d/l", "other")), rejected(Reject::AlreadyExists));
        assert_eq!(h.apply(symlink("missing/l", "x")), rejected(Reject::NotFound));
        assert_eq!(h.apply(symlink("e", "")), rejected(Reject::Invalid));
        assert_eq!(h.apply(symlink("e", &"x".repeat(MAX_SYMLINK_TARGET + 1))), rejected(Reject::Invalid));
        assert_eq!(h.apply(symlink("e", &"x".repeat(MAX_SYMLINK_TARGET))), Outcome::Ok);
        // Writes never go through a link (the kernel follows it first).
        assert_eq!(h.apply(put("d/l", "x")), rejected(Reject::Invalid));
        assert_eq!(h.apply(TxOp::Truncate { id: sid("d/l"), size: 0 }), rejected(Reject::Invalid));
        assert_eq!(h.apply(TxOp::Rmdir { id: sid("d/l") }), rejected(Reject::NotADirectory));
        // Renamed with its directory, keeping its inode; then on its own, over a file.
        assert_eq!(
            h.apply(TxOp::Rename { from: sid("d"), to: sid("z"), mode: RenameMode::Replace }),
            Outcome::Ok
        );
        assert_eq!(h.entry("z/l").ino, l.ino);
        h.apply(put("f", "file"));
        assert_eq!(
            h.apply(TxOp::Rename { from: sid("z/l"), to: sid("f"), mode: RenameMode::Replace }),
            Outcome::Ok
        );
        assert_eq!(h.entry("f").kind, EntryKind::Symlink("../target".into()));
        let before = h.tree.state_root();
        assert_eq!(h.apply(TxOp::Delete { id: sid("f") }), Outcome::Ok);
        assert!(h.tree.get(&sid("f")).is_none());
        assert_ne!(h.tree.state_root(), before);
        assert_eq!(h.apply(TxOp::Rmdir { id: sid("z") }), Outcome::Ok, "the directory is empty again");
        // A link's target is part of the state root.
        let mut a = Harness::new();
        a.apply(symlink("l", "x"));
        let mut b = Harness::new();
        b.apply(symlink("l", "y"));
        assert_ne!(a.tree.state_root(), b.tree.state_root());
    }
}
