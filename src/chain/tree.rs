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
//! Pure: no clock, no I/O. The caller passes the block's height and timestamp.

use std::collections::{BTreeMap, HashMap};

use super::block::{Digest, Encoder, Height};
use super::dedup::{Dedup, Verdict};
use super::tx::{Content, Outcome, Reject, RenameMode, Transaction, TxOp};
use super::StateId;

/// Inode number of a state; the root directory is 1.
pub type InodeNo = u64;

/// The root directory's inode number.
pub const ROOT_INO: InodeNo = 1;

/// Default permission bits of a directory created by a `put` or of the root.
const DEFAULT_DIR_MODE: u32 = 0o755;
/// Default permission bits of a file created by a `put`/`append`.
const DEFAULT_FILE_MODE: u32 = 0o644;

/// A file or a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file and its content.
    File(Content),
    /// A directory (its children are the entries below it).
    Dir,
}

/// One state (file or directory) in the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Stable inode number.
    pub ino: InodeNo,
    /// File content or directory marker.
    pub kind: EntryKind,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    /// Timestamp of the block that last changed it (or, for a directory, its list of children).
    pub mtime_ms: u64,
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

    /// File size in bytes (0 for a directory).
    pub fn size(&self) -> u64 {
        match &self.kind {
            EntryKind::File(c) => c.len() as u64,
            EntryKind::Dir => 0,
        }
    }
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
    /// Permission bits changed.
    ModeChanged(StateId),
}

/// Where a block is being applied: its height and (already monotonic) timestamp.
#[derive(Clone, Copy, Debug)]
pub struct ApplyCtx {
    /// Height of the block being built.
    pub height: Height,
    /// Its timestamp, which becomes the mtime of what it changes.
    pub timestamp_ms: u64,
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

/// The digest an entry contributes to the state root: its path, kind, mode and content.
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
    }
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
        };
        let root = Entry {
            ino: ROOT_INO,
            kind: EntryKind::Dir,
            mode: DEFAULT_DIR_MODE,
            mtime_ms: 0,
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

    /// All entries in path order (the root first).
    pub fn iter(&self) -> impl Iterator<Item = (&StateId, &Entry)> {
        self.entries.iter()
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
            // mtime is not part of the entry digest, so the root needs no update.
            entry.mtime_ms = ctx.timestamp_ms;
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

    /// The file named `id` (not a directory).
    fn file(&self, id: &StateId) -> Result<&Entry, Reject> {
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
        let (outcome, changes) = match self.apply_op(ctx, &tx.op) {
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
            TxOp::Put { id, content } => self.write_file(ctx, id, |_| content.clone()),
            TxOp::Append { id, content } => self.write_file(ctx, id, |old| match old {
                Some(old) if !old.is_empty() => {
                    let mut bytes = Vec::with_capacity(old.len() + content.len());
                    bytes.extend_from_slice(old.as_bytes());
                    bytes.extend_from_slice(content.as_bytes());
                    Content::from(bytes)
                }
                _ => content.clone(),
            }),
            TxOp::Create { id, mode, exclusive } => {
                let parent = self.check_parent(id)?;
                match self.entries.get(id) {
                    Some(_) if *exclusive => Err(Reject::AlreadyExists),
                    Some(e) if e.is_dir() => Err(Reject::IsADirectory),
                    Some(_) => Ok(Vec::new()),
                    None => {
                        let entry = self.new_entry(ctx, EntryKind::File(Content::default()), *mode);
                        self.insert(id.clone(), entry);
                        self.touch_dir(&parent, ctx);
                        Ok(vec![Change::Wrote(id.clone())])
                    }
                }
            }
            TxOp::Delete { id } => {
                self.check_parent(id)?;
                self.file(id)?;
                self.remove(id);
                self.touch_dir(&id.parent().expect("a file is never the root"), ctx);
                Ok(vec![Change::Removed(id.clone())])
            }
            TxOp::Truncate { id, size } => {
                let old = match &self.file(id)?.kind {
                    EntryKind::File(c) => c.clone(),
                    EntryKind::Dir => unreachable!("file() returns files only"),
                };
                let size = usize::try_from(*size).map_err(|_| Reject::Invalid)?;
                let mut bytes = old.as_bytes().to_vec();
                bytes.resize(size, 0);
                self.write_file(ctx, id, |_| Content::from(bytes))
            }
            TxOp::Rename { from, to, mode } => self.rename(ctx, from, to, *mode),
            TxOp::Mkdir { id, mode } => {
                let parent = self.check_parent(id)?;
                if self.entries.contains_key(id) {
                    return Err(Reject::AlreadyExists);
                }
                let entry = self.new_entry(ctx, EntryKind::Dir, *mode);
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
                entry.changed_at = ctx.height;
                self.insert(id.clone(), entry);
                Ok(vec![Change::ModeChanged(id.clone())])
            }
            TxOp::Membership { .. } => Ok(Vec::new()),
        }
    }

    fn new_entry(&mut self, ctx: &ApplyCtx, kind: EntryKind, mode: u32) -> Entry {
        Entry {
            ino: self.new_ino(),
            kind,
            mode: mode & 0o7777,
            mtime_ms: ctx.timestamp_ms,
            changed_at: ctx.height,
            digest: Digest::ZERO,
        }
    }

    /// Sets a file's content to `make(old content)`, creating the file if it is missing.
    fn write_file(
        &mut self,
        ctx: &ApplyCtx,
        id: &StateId,
        make: impl FnOnce(Option<&Content>) -> Content,
    ) -> Result<Vec<Change>, Reject> {
        let parent = self.check_parent(id)?;
        let entry = match self.entries.get(id) {
            Some(e) if e.is_dir() => return Err(Reject::IsADirectory),
            Some(e) => {
                let EntryKind::File(old) = &e.kind else { unreachable!() };
                Entry {
                    kind: EntryKind::File(make(Some(old))),
                    mtime_ms: ctx.timestamp_ms,
                    changed_at: ctx.height,
                    ..e.clone()
                }
            }
            None => {
                let content = make(None);
                self.touch_dir(&parent, ctx);
                self.new_entry(ctx, EntryKind::File(content), DEFAULT_FILE_MODE)
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
        self.touch_dir(&from.parent().unwrap(), ctx);
        self.touch_dir(&to_parent, ctx);
        Ok(vec![Change::Renamed { from: from.clone(), to: to.clone() }])
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
                EntryKind::Dir => None,
            }
        }
    }

    fn sid(s: &str) -> StateId {
        StateId::parse(s).unwrap()
    }
    fn put(id: &str, c: &str) -> TxOp {
        TxOp::Put { id: sid(id), content: Content::from(c.as_bytes()) }
    }
    fn rejected(r: Reject) -> Outcome {
        Outcome::Rejected(r)
    }

    #[test]
    fn put_append_truncate_delete() {
        let mut h = Harness::new();
        assert_eq!(h.apply(put("a", "one")), Outcome::Ok);
        assert_eq!(h.apply(TxOp::Append { id: sid("a"), content: Content::from(&b"+two"[..]) }), Outcome::Ok);
        assert_eq!(h.content("a").unwrap(), b"one+two");
        assert_eq!(h.apply(TxOp::Truncate { id: sid("a"), size: 3 }), Outcome::Ok);
        assert_eq!(h.content("a").unwrap(), b"one");
        assert_eq!(h.apply(TxOp::Truncate { id: sid("a"), size: 5 }), Outcome::Ok);
        assert_eq!(h.content("a").unwrap(), b"one\0\0");
        assert_eq!(h.apply(TxOp::Delete { id: sid("a") }), Outcome::Ok);
        assert!(h.tree.get(&sid("a")).is_none());
        assert_eq!(h.apply(TxOp::Delete { id: sid("a") }), rejected(Reject::NotFound));
        assert_eq!(h.apply(TxOp::Append { id: sid("b"), content: Content::from(&b"x"[..]) }), Outcome::Ok);
        assert_eq!(h.content("b").unwrap(), b"x");
    }

    #[test]
    fn parents_must_exist_and_be_directories() {
        let mut h = Harness::new();
        assert_eq!(h.apply(put("d/a", "x")), rejected(Reject::NotFound));
        assert_eq!(h.apply(put("f", "x")), Outcome::Ok);
        assert_eq!(h.apply(put("f/a", "x")), rejected(Reject::NotADirectory));
        assert_eq!(h.apply(TxOp::Mkdir { id: sid("d"), mode: 0o755 }), Outcome::Ok);
        assert_eq!(h.apply(put("d/a", "x")), Outcome::Ok);
        assert_eq!(h.apply(put("d", "x")), rejected(Reject::IsADirectory));
        assert_eq!(h.apply(TxOp::Delete { id: sid("d") }), rejected(Reject::IsADirectory));
    }

    #[test]
    fn exclusive_create_fails_on_existing_and_changes_nothing() {
        let mut h = Harness::new();
        let create = |excl| TxOp::Create { id: sid("lock"), mode: 0o600, exclusive: excl };
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
        assert_eq!(h.apply(TxOp::Mkdir { id: sid("d"), mode: 0o755 }), Outcome::Ok);
        assert_eq!(h.apply(TxOp::Mkdir { id: sid("d"), mode: 0o755 }), rejected(Reject::AlreadyExists));
        assert_eq!(h.apply(put("d/x", "1")), Outcome::Ok);
        assert_eq!(h.apply(TxOp::Rmdir { id: sid("d") }), rejected(Reject::NotEmpty));
        assert_eq!(h.apply(TxOp::Rmdir { id: sid("d/x") }), rejected(Reject::NotADirectory));
        assert_eq!(h.apply(TxOp::Delete { id: sid("d/x") }), Outcome::Ok);
        assert_eq!(h.apply(TxOp::Rmdir { id: sid("d") }), Outcome::Ok);
        assert_eq!(h.apply(TxOp::Rmdir { id: sid("d") }), rejected(Reject::NotFound));
        // "d0" sorts right after "d/..." keys; it must not count as a child of "d".
        assert_eq!(h.apply(TxOp::Mkdir { id: sid("e"), mode: 0o755 }), Outcome::Ok);
        assert_eq!(h.apply(put("e0", "x")), Outcome::Ok);
        assert_eq!(h.apply(TxOp::Rmdir { id: sid("e") }), Outcome::Ok);
    }

    #[test]
    fn rename_moves_whole_directories_and_keeps_inodes() {
        let mut h = Harness::new();
        h.apply(TxOp::Mkdir { id: sid("a"), mode: 0o755 });
        h.apply(TxOp::Mkdir { id: sid("a/b"), mode: 0o755 });
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
        let create = TxOp::Create { id: sid("lock"), mode: 0o644, exclusive: true };
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
}
