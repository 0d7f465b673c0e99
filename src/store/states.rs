//! `states/`: the current tree of states as plain files, for people and tools without lightchain.
//!
//! Derived data. After a block is applied its changes are mirrored here: a file is written to
//! `tmp/` and renamed into place (a reader never sees a torn file), directories are created,
//! removed and renamed as in the tree. Files are not fsynced one by one: the chain is the
//! source of truth, and at start-up [`StatesDir::repair`] compares `states/` with the tree
//! rebuilt from the chain and fixes every difference, logging each.

use std::fs::Permissions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{DataDir, IoContext, Result};
use crate::chain::{Change, EntryKind, StateId, Tree};

/// Threads that write the files of one busy batch at once.
const WRITER_THREADS: usize = 4;

/// A difference between `states/` and the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// A state is missing on disk or differs in kind, content or mode.
    Stale(StateId),
    /// Something on disk is not in the tree (path relative to `states/`).
    Extra(PathBuf),
}

/// Writer of `states/`.
pub struct StatesDir {
    root: PathBuf,
    tmp: PathBuf,
    counter: AtomicU64,
    /// This process's id, naming its temporary files.
    pid: u32,
    /// This process's umask: a mode it does not strip needs no separate chmod.
    umask: u32,
}

impl StatesDir {
    /// Uses the `states/` and `tmp/` of a data directory.
    pub fn new(dir: &DataDir) -> StatesDir {
        StatesDir {
            root: dir.states(),
            tmp: dir.tmp(),
            counter: AtomicU64::new(0),
            pid: std::process::id(),
            umask: process_umask(),
        }
    }

    fn path(&self, id: &StateId) -> PathBuf {
        self.root.join(id.as_str())
    }

    /// Mirrors the changes of applied blocks, in order. `tree` is the tree after them.
    ///
    /// The common batch — files written, nothing moved or removed — is written once per file
    /// and spread over a few threads: each write is a create, a write and a rename, whose
    /// latency (not CPU) bounds a busy node's block rate.
    pub fn apply_all<'a>(&self, changes: impl IntoIterator<Item = &'a Change>, tree: &Tree) -> Result<()> {
        let changes: Vec<&Change> = changes.into_iter().collect();
        let only_writes = changes.iter().all(|c| matches!(c, Change::Wrote(_) | Change::ModeChanged(_)));
        if !only_writes {
            // Changes are mirrored from the tree as it is after the whole batch, so a file
            // written and then moved or removed within the batch can leave a stale copy
            // behind a rename: settle every path the batch touched against the tree.
            changes.iter().try_for_each(|c| self.apply(c, tree))?;
            let mut touched: Vec<&StateId> = Vec::new();
            for change in &changes {
                match change {
                    Change::Renamed { from, to } => touched.extend([from, to]),
                    Change::Exchanged { a, b } => touched.extend([a, b]),
                    _ => {}
                }
            }
            touched.sort();
            touched.dedup();
            return touched.into_iter().try_for_each(|top| self.settle(top, tree));
        }
        if changes.len() < 4 {
            return changes.into_iter().try_for_each(|c| self.apply(c, tree));
        }
        let ids: std::collections::BTreeSet<&StateId> = changes
            .iter()
            .map(|c| match c {
                Change::Wrote(id) | Change::ModeChanged(id) => id,
                _ => unreachable!("only writes here"),
            })
            .collect();
        let ids: Vec<&StateId> = ids.into_iter().collect();
        let per_thread = ids.len().div_ceil(WRITER_THREADS);
        std::thread::scope(|scope| {
            let workers: Vec<_> = ids
                .chunks(per_thread)
                .map(|chunk| scope.spawn(move || chunk.iter().try_for_each(|id| self.write_state(id, tree))))
                .collect();
            workers.into_iter().try_for_each(|w| w.join().expect("a states/ writer panicked"))
        })
    }

    /// Mirrors one change of an applied block. `tree` is the tree after the block.
    pub fn apply(&self, change: &Change, tree: &Tree) -> Result<()> {
        match change {
            Change::Wrote(id) | Change::ModeChanged(id) | Change::MadeDir(id) => self.write_state(id, tree),
            Change::Removed(id) => remove_file(&self.path(id)),
            Change::RemovedDir(id) => remove_tree(&self.path(id)),
            Change::Renamed { from, to } => {
                let (src, dst) = (self.path(from), self.path(to));
                if dst.is_dir() {
                    remove_tree(&dst)?;
                }
                match std::fs::rename(&src, &dst) {
                    Ok(()) => Ok(()),
                    // The source was never mirrored (e.g. a crash before it was): rebuild it.
                    Err(_) => self.write_subtree(to, tree),
                }
            }
            Change::Exchanged { a, b } => {
                let parked = self.tmp_path();
                let (pa, pb) = (self.path(a), self.path(b));
                std::fs::rename(&pa, &parked).ctx("rename", &pa)?;
                std::fs::rename(&pb, &pa).ctx("rename", &pb)?;
                std::fs::rename(&parked, &pb).ctx("rename", &parked)
            }
        }
    }

    fn tmp_path(&self) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.tmp.join(format!("state-{}-{n}", self.pid))
    }

    /// Writes one state as the tree has it (file by temp + rename; directory created).
    fn write_state(&self, id: &StateId, tree: &Tree) -> Result<()> {
        let Some(entry) = tree.get(id) else {
            return Ok(());
        };
        let path = self.path(id);
        let perms = Permissions::from_mode(entry.mode);
        match &entry.kind {
            EntryKind::Dir => {
                if !path.is_dir() {
                    remove_file(&path)?;
                    std::fs::create_dir(&path).ctx("mkdir", &path)?;
                }
                std::fs::set_permissions(&path, perms).ctx("chmod", &path)
            }
            EntryKind::File(content) => {
                // Every syscall here is on the commit path of a busy node: create with the
                // right mode, chmod only when the umask strips bits, and look for a directory
                // in the way only when the rename says there is one.
                let tmp = self.tmp_path();
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(entry.mode)
                    .open(&tmp)
                    .ctx("create", &tmp)?;
                file.write_all(content.as_bytes()).ctx("write", &tmp)?;
                if entry.mode & self.umask != 0 {
                    file.set_permissions(perms).ctx("chmod", &tmp)?;
                }
                drop(file);
                match std::fs::rename(&tmp, &path) {
                    Err(_) if path.is_dir() => {
                        remove_tree(&path)?;
                        std::fs::rename(&tmp, &path).ctx("rename", &path)
                    }
                    result => result.ctx("rename", &path),
                }
            }
        }
    }

    fn write_subtree(&self, top: &StateId, tree: &Tree) -> Result<()> {
        let ids: Vec<StateId> =
            tree.iter().map(|(id, _)| id.clone()).filter(|id| id.is_within(top)).collect();
        for id in ids {
            self.write_state(&id, tree)?;
        }
        Ok(())
    }

    /// Every difference between `states/` and `tree`.
    pub fn compare(&self, tree: &Tree) -> Result<Vec<Mismatch>> {
        self.compare_within(tree, &StateId::root())
    }

    /// [`compare`](Self::compare), limited to `top` and what lies below it.
    fn compare_within(&self, tree: &Tree, top: &StateId) -> Result<Vec<Mismatch>> {
        let mut out = Vec::new();
        for (id, entry) in tree.iter() {
            if id.is_root() || !id.is_within(top) {
                continue;
            }
            let path = self.path(id);
            let fresh = match (std::fs::symlink_metadata(&path), &entry.kind) {
                (Ok(meta), EntryKind::Dir) => {
                    meta.is_dir() && meta.permissions().mode() & 0o7777 == entry.mode
                }
                (Ok(meta), EntryKind::File(content)) => {
                    meta.is_file()
                        && meta.permissions().mode() & 0o7777 == entry.mode
                        && meta.len() == content.len() as u64
                        && std::fs::read(&path).ctx("read", &path)? == content.as_bytes()
                }
                (Err(_), _) => false,
            };
            if !fresh {
                out.push(Mismatch::Stale(id.clone()));
            }
        }
        let start = self.path(top);
        if top.is_root() || start.is_dir() {
            self.find_extra(&start, tree, &mut out)?;
        } else if start.exists() && tree.get(top).is_none() {
            out.push(Mismatch::Extra(PathBuf::from(top.as_str())));
        }
        Ok(out)
    }

    fn find_extra(&self, dir: &Path, tree: &Tree, out: &mut Vec<Mismatch>) -> Result<()> {
        for entry in std::fs::read_dir(dir).ctx("list", dir)? {
            let path = entry.ctx("list", dir)?.path();
            let rel = path.strip_prefix(&self.root).expect("below root").to_owned();
            let known = rel
                .to_str()
                .and_then(|s| StateId::parse(s).ok())
                .and_then(|id| tree.get(&id).map(|e| e.is_dir()));
            match known {
                None => out.push(Mismatch::Extra(rel)),
                Some(true) if path.is_dir() => self.find_extra(&path, tree, out)?,
                Some(_) => {} // a kind mismatch is reported as Stale
            }
        }
        Ok(())
    }

    /// Makes `top` and everything below it on disk match the tree (quietly: this is the
    /// normal end of a batch that moved things, not a repair).
    fn settle(&self, top: &StateId, tree: &Tree) -> Result<()> {
        for m in self.compare_within(tree, top)? {
            match m {
                Mismatch::Extra(rel) => remove_tree(&self.root.join(rel))?,
                Mismatch::Stale(id) => self.write_state(&id, tree)?,
            }
        }
        Ok(())
    }

    /// Makes `states/` match `tree`, logging every repair. Returns how many were made.
    pub fn repair(&self, tree: &Tree) -> Result<usize> {
        let mismatches = self.compare(tree)?;
        for m in &mismatches {
            match m {
                Mismatch::Extra(rel) => {
                    tracing::warn!(path = %rel.display(), "repair: removing a file in states/ that the chain does not have");
                    remove_tree(&self.root.join(rel))?;
                }
                Mismatch::Stale(id) => {
                    tracing::warn!(state = %id, "repair: rewriting a state that differs from the chain");
                    // Parents come first in path order, so they exist by now.
                    self.write_state(id, tree)?;
                }
            }
        }
        // Leftovers of interrupted writes and of snapshots whose transfer was cut short.
        if let Ok(entries) = std::fs::read_dir(&self.tmp) {
            for entry in entries.flatten() {
                let _ = remove_tree(&entry.path());
            }
        }
        Ok(mismatches.len())
    }
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

fn remove_file(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).ctx("remove", path),
        _ => Ok(()),
    }
}

fn remove_tree(path: &Path) -> Result<()> {
    let result = if path.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).ctx("remove", path),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::{ApplyCtx, Content, RenameMode, RequestId, Transaction, TxOp};

    fn apply(tree: &mut Tree, states: &StatesDir, seq: u64, op: TxOp) {
        let tx = Transaction { request: RequestId { node: 1, incarnation: 1, seq }, acked_below: 0, op };
        let (_, changes) = tree.apply(&ApplyCtx { height: seq, timestamp_ms: seq }, &tx);
        for c in &changes {
            states.apply(c, tree).unwrap();
        }
    }

    fn sid(s: &str) -> StateId {
        StateId::parse(s).unwrap()
    }

    #[test]
    fn mirrors_changes_and_repairs_damage() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::create(tmp.path()).unwrap();
        let states = StatesDir::new(&dir);
        let mut tree = Tree::new();
        apply(&mut tree, &states, 1, TxOp::Mkdir { id: sid("d"), mode: 0o755 });
        apply(&mut tree, &states, 2, TxOp::Put { id: sid("d/f"), content: Content::from(&b"hi"[..]) });
        apply(&mut tree, &states, 3, TxOp::Put { id: sid("g"), content: Content::from(&b"g"[..]) });
        apply(
            &mut tree,
            &states,
            4,
            TxOp::Rename { from: sid("d"), to: sid("e"), mode: RenameMode::Replace },
        );
        apply(
            &mut tree,
            &states,
            5,
            TxOp::Rename { from: sid("g"), to: sid("e/f"), mode: RenameMode::Exchange },
        );
        assert_eq!(std::fs::read(dir.states().join("e/f")).unwrap(), b"g");
        assert_eq!(std::fs::read(dir.states().join("g")).unwrap(), b"hi");
        assert!(states.compare(&tree).unwrap().is_empty());

        std::fs::write(dir.states().join("g"), b"torn").unwrap();
        std::fs::write(dir.states().join("stray"), b"x").unwrap();
        std::fs::remove_file(dir.states().join("e/f")).unwrap();
        assert_eq!(states.compare(&tree).unwrap().len(), 3);
        assert_eq!(states.repair(&tree).unwrap(), 3);
        assert!(states.compare(&tree).unwrap().is_empty());
        assert_eq!(std::fs::read(dir.states().join("g")).unwrap(), b"hi");
    }
}
