//! A disk that loses power, for tests (CrashMonkey/ALICE style).
//!
//! While a [`Recording`] is active for a directory, every change [`super::disk`] makes below it
//! is recorded in order. A [`Trace`] replays any prefix of those calls into a model of a disk
//! and writes out what a power cut at that point may leave: each file's content as of its last
//! completed fsync, plus any prefix of the writes made since (the last one possibly torn, the
//! file possibly extended with zeros to its unsynced size, or all of them with one unsynced
//! page left as zeros), and each directory's names as of its
//! last completed fsync, with any subset of the creates, renames and removals made since.
//!
//! The model knows only what goes through [`super::disk`]; [`Trace::check_against`] compares it
//! with the real directory, so a change made behind its back fails the test instead of being
//! missed. `states/`, `tmp/` and `lock` are not modelled (derived data, scratch, a lock).
//!
//! Must not: be compiled outside tests, or be consulted by anything but tests.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rand::Rng;

/// One recorded call of [`super::disk`].
#[derive(Clone, Debug)]
pub enum Op {
    /// A file was opened with creation (emptied if `truncate`).
    Create { path: PathBuf, truncate: bool },
    /// Bytes were written at `offset` (`None`: appended).
    Write { path: PathBuf, offset: Option<u64>, bytes: Vec<u8> },
    /// The file was cut or extended.
    SetLen { path: PathBuf, len: u64 },
    /// An fsync of the file completed; it covers the calls recorded before `mark`.
    Synced { path: PathBuf, mark: usize },
    /// A rename.
    Rename { from: PathBuf, to: PathBuf },
    /// A removal.
    Remove { path: PathBuf },
    /// An fsync of the directory completed; it covers the calls recorded before `mark`.
    SyncedDir { dir: PathBuf, mark: usize },
}

struct Recorder {
    root: PathBuf,
    ops: Vec<Op>,
}

static RECORDER: Mutex<Option<Recorder>> = Mutex::new(None);

fn recorder() -> std::sync::MutexGuard<'static, Option<Recorder>> {
    RECORDER.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Held by the one active recording; others wait their turn.
static TURN: Mutex<()> = Mutex::new(());

/// The names below a data directory that are not modelled.
const UNMODELLED: [&str; 3] = ["states", "tmp", "lock"];

fn modelled(root: &Path, path: &Path) -> bool {
    match path.strip_prefix(root) {
        Ok(rel) => !rel.components().next().is_some_and(|c| UNMODELLED.iter().any(|u| c.as_os_str() == *u)),
        Err(_) => false,
    }
}

/// Records `op` if a recording covers `path`.
pub(crate) fn record(path: &Path, op: impl FnOnce() -> Op) {
    if let Some(r) = recorder().as_mut() {
        if modelled(&r.root, path) {
            r.ops.push(op());
        }
    }
}

/// The position a sync that starts now covers up to.
pub(crate) fn mark() -> usize {
    recorder().as_ref().map_or(0, |r| r.ops.len())
}

/// How many calls the active recording holds so far: a power cut at this position or later
/// keeps everything that was durable now.
pub fn position() -> usize {
    mark()
}

/// Records every change below a directory until [`finish`](Self::finish). One at a time: a
/// second one waits until the first is finished or dropped.
pub struct Recording {
    root: PathBuf,
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl Recording {
    /// Starts recording changes below `root` (which should be empty, or not exist yet).
    pub fn start(root: &Path) -> Recording {
        let turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *recorder() = Some(Recorder { root: root.to_owned(), ops: Vec::new() });
        Recording { root: root.to_owned(), _turn: turn }
    }

    /// Stops recording.
    pub fn finish(self) -> Trace {
        let ops = recorder().take().map(|r| r.ops).unwrap_or_default();
        Trace { root: self.root.clone(), ops }
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        // Before the turn is released (fields drop after this).
        *recorder() = None;
    }
}

/// The calls recorded below one directory.
pub struct Trace {
    root: PathBuf,
    ops: Vec<Op>,
}

/// What a power cut did to a file or a name (for a test's failure message).
#[derive(Debug, Default)]
pub struct Damage {
    /// Unsynced writes and truncations dropped.
    pub writes_lost: usize,
    /// Writes torn part-way.
    pub torn: usize,
    /// Files extended with zeros to their unsynced size.
    pub zero_filled: usize,
    /// Unsynced pages left as zeros while later ones were written.
    pub holes: usize,
    /// Unsynced creates, renames and removals undone.
    pub names_lost: usize,
}

type Ino = usize;

#[derive(Clone, Debug)]
enum FileOp {
    Write { offset: Option<u64>, bytes: Vec<u8> },
    SetLen(u64),
}

#[derive(Default, Clone)]
struct Inode {
    durable: Vec<u8>,
    current: Vec<u8>,
    pending: Vec<(usize, FileOp)>,
}

#[derive(Clone, Debug)]
enum DirOp {
    Link(OsString, Ino),
    Unlink(OsString),
}

#[derive(Default, Clone)]
struct Dir {
    durable: BTreeMap<OsString, Ino>,
    current: BTreeMap<OsString, Ino>,
    pending: Vec<(usize, DirOp)>,
}

#[derive(Default)]
struct Model {
    inodes: Vec<Inode>,
    dirs: BTreeMap<PathBuf, Dir>,
}

fn apply_file(content: &mut Vec<u8>, op: &FileOp) {
    match op {
        FileOp::Write { offset, bytes } => {
            let at = offset.map_or(content.len(), |o| o as usize);
            if content.len() < at + bytes.len() {
                content.resize(at + bytes.len(), 0);
            }
            content[at..at + bytes.len()].copy_from_slice(bytes);
        }
        FileOp::SetLen(len) => content.resize(*len as usize, 0),
    }
}

fn apply_dir(names: &mut BTreeMap<OsString, Ino>, op: &DirOp) {
    match op {
        DirOp::Link(name, ino) => {
            names.insert(name.clone(), *ino);
        }
        DirOp::Unlink(name) => {
            names.remove(name);
        }
    }
}

fn split(path: &Path) -> (PathBuf, OsString) {
    (path.parent().expect("a file has a directory").to_owned(), path.file_name().expect("a name").to_owned())
}

impl Model {
    fn dir(&mut self, dir: PathBuf) -> &mut Dir {
        self.dirs.entry(dir).or_default()
    }

    fn ino(&mut self, path: &Path) -> Ino {
        let (dir, name) = split(path);
        *self
            .dir(dir)
            .current
            .get(&name)
            .unwrap_or_else(|| panic!("crashsim lost track of {}", path.display()))
    }

    fn file_op(&mut self, seq: usize, path: &Path, op: FileOp) {
        let ino = self.ino(path);
        let inode = &mut self.inodes[ino];
        // An append lands at the end the file has when it is made; record it with that offset
        // so a replay of part of the pending writes puts it in the same place.
        let op = match op {
            FileOp::Write { offset: None, bytes } => {
                FileOp::Write { offset: Some(inode.current.len() as u64), bytes }
            }
            op => op,
        };
        apply_file(&mut inode.current, &op);
        inode.pending.push((seq, op));
    }

    fn apply(&mut self, seq: usize, op: &Op) {
        match op {
            Op::Create { path, truncate } => {
                let (dir, name) = split(path);
                if self.dir(dir.clone()).current.contains_key(&name) {
                    if *truncate {
                        self.file_op(seq, path, FileOp::SetLen(0));
                    }
                } else {
                    self.inodes.push(Inode::default());
                    let ino = self.inodes.len() - 1;
                    let d = self.dir(dir);
                    d.current.insert(name.clone(), ino);
                    d.pending.push((seq, DirOp::Link(name, ino)));
                }
            }
            Op::Write { path, offset, bytes } => {
                self.file_op(seq, path, FileOp::Write { offset: *offset, bytes: bytes.clone() })
            }
            Op::SetLen { path, len } => self.file_op(seq, path, FileOp::SetLen(*len)),
            Op::Synced { path, mark } => {
                let ino = self.ino(path);
                let inode = &mut self.inodes[ino];
                let covered = inode.pending.iter().take_while(|(s, _)| s < mark).count();
                for (_, op) in inode.pending.drain(..covered) {
                    apply_file(&mut inode.durable, &op);
                }
            }
            Op::Rename { from, to } => {
                let ino = self.ino(from);
                let (from_dir, from_name) = split(from);
                let d = self.dir(from_dir);
                d.current.remove(&from_name);
                d.pending.push((seq, DirOp::Unlink(from_name)));
                let (to_dir, to_name) = split(to);
                let d = self.dir(to_dir);
                d.current.insert(to_name.clone(), ino);
                d.pending.push((seq, DirOp::Link(to_name, ino)));
            }
            Op::Remove { path } => {
                let (dir, name) = split(path);
                let d = self.dir(dir);
                d.current.remove(&name);
                d.pending.push((seq, DirOp::Unlink(name)));
            }
            Op::SyncedDir { dir, mark } => {
                let d = self.dir(dir.clone());
                let covered = d.pending.iter().take_while(|(s, _)| s < mark).count();
                let ops: Vec<DirOp> = d.pending.drain(..covered).map(|(_, op)| op).collect();
                for op in &ops {
                    apply_dir(&mut d.durable, op);
                }
            }
        }
    }
}

impl Trace {
    /// How many calls were recorded.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    fn model(&self, cut: usize) -> Model {
        let mut model = Model::default();
        for (seq, op) in self.ops[..cut].iter().enumerate() {
            model.apply(seq, op);
        }
        model
    }

    /// Checks that the whole trace, replayed, is what `root` holds now (every modelled file,
    /// byte for byte): a change made behind [`super::disk`]'s back would make a power cut look
    /// kinder than it is.
    pub fn check_against(&self, root: &Path) -> Result<(), String> {
        let model = self.model(self.ops.len());
        let mut expected = BTreeMap::new();
        for (dir, d) in &model.dirs {
            for (name, ino) in &d.current {
                let path = dir.join(name);
                expected.insert(
                    path.strip_prefix(&self.root).unwrap().to_owned(),
                    model.inodes[*ino].current.clone(),
                );
            }
        }
        let mut found = BTreeMap::new();
        walk(root, root, &mut found).map_err(|e| format!("walk {}: {e}", root.display()))?;
        for (path, bytes) in &found {
            match expected.get(path) {
                None => return Err(format!("{} was written behind store::disk's back", path.display())),
                Some(want) if want != bytes => {
                    return Err(format!(
                        "{} holds {} bytes, the model {} (a change behind store::disk's back)",
                        path.display(),
                        bytes.len(),
                        want.len()
                    ))
                }
                Some(_) => {}
            }
        }
        if let Some(missing) = expected.keys().find(|p| !found.contains_key(*p)) {
            return Err(format!("{} was removed behind store::disk's back", missing.display()));
        }
        Ok(())
    }

    /// Writes into `dest` (a new directory) what the modelled files may hold after a power cut
    /// right after the first `cut` calls, choosing what survives with `rng`.
    pub fn crash_image(&self, cut: usize, rng: &mut impl Rng, dest: &Path) -> std::io::Result<Damage> {
        let model = self.model(cut);
        let mut damage = Damage::default();
        let mut contents: BTreeMap<Ino, Vec<u8>> = BTreeMap::new();
        for (dir, d) in &model.dirs {
            let mut names = d.durable.clone();
            for (_, op) in &d.pending {
                if rng.gen_bool(0.5) {
                    apply_dir(&mut names, op);
                } else {
                    damage.names_lost += 1;
                }
            }
            let rel = dir.strip_prefix(&self.root).expect("modelled paths are below the root");
            std::fs::create_dir_all(dest.join(rel))?;
            for (name, ino) in names {
                let content =
                    contents.entry(ino).or_insert_with(|| survivor(&model.inodes[ino], rng, &mut damage));
                std::fs::write(dest.join(rel).join(name), &content)?;
            }
        }
        Ok(damage)
    }
}

/// What a file holds after a power cut: its durable content, then some of the writes made
/// since, the next one perhaps torn, and perhaps zeros up to the size it had.
fn survivor(inode: &Inode, rng: &mut impl Rng, damage: &mut Damage) -> Vec<u8> {
    let mut content = inode.durable.clone();
    let kept = rng.gen_range(0..=inode.pending.len());
    for (_, op) in &inode.pending[..kept] {
        apply_file(&mut content, op);
    }
    damage.writes_lost += inode.pending.len() - kept;
    if let Some((_, FileOp::Write { offset, bytes })) = inode.pending.get(kept) {
        if !bytes.is_empty() && rng.gen_bool(0.3) {
            let part = rng.gen_range(0..bytes.len());
            apply_file(&mut content, &FileOp::Write { offset: *offset, bytes: bytes[..part].to_vec() });
            damage.torn += 1;
        }
    }
    if content.len() < inode.current.len() && rng.gen_bool(0.25) {
        content.resize(inode.current.len(), 0);
        damage.zero_filled += 1;
    } else if kept == inode.pending.len() && content.len() > inode.durable.len() && rng.gen_bool(0.2) {
        // The kernel wrote back a later page of the unsynced part but not an earlier one.
        const PAGE: usize = 4096;
        let page = rng.gen_range(inode.durable.len() / PAGE..=(content.len() - 1) / PAGE);
        let from = (page * PAGE).max(inode.durable.len());
        let to = ((page + 1) * PAGE).min(content.len());
        content[from..to].fill(0);
        damage.holes += 1;
    }
    content
}

/// Every modelled file below `root`, by path relative to `top`.
fn walk(top: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if !modelled(top, &path) {
            continue;
        }
        if path.is_dir() {
            walk(top, &path, out)?;
        } else {
            out.insert(path.strip_prefix(top).unwrap().to_owned(), std::fs::read(&path)?);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;
    use crate::store::disk::{self, Open};

    #[test]
    fn a_power_cut_keeps_what_was_synced_and_may_drop_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("data");
        std::fs::create_dir_all(root.join("raft")).unwrap();
        let recording = Recording::start(&root);
        let a = root.join("raft/a");
        let file = disk::open(&a, Open::New, false, 0o644).unwrap();
        disk::write_at(&file, &a, 0, &[b"synced"]).unwrap();
        disk::sync(&file, &a).unwrap();
        disk::sync_dir(&root.join("raft")).unwrap();
        let durable = position();
        disk::write_at(&file, &a, 6, &[b" and not"]).unwrap();
        let b = root.join("raft/b");
        disk::open(&b, Open::New, false, 0o644).unwrap();
        let trace = recording.finish();
        trace.check_against(&root).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let (mut lost_b, mut kept_tail) = (false, false);
        for n in 0..64 {
            let dest = tmp.path().join(format!("image-{n}"));
            trace.crash_image(trace.len(), &mut rng, &dest).unwrap();
            let content = std::fs::read(dest.join("raft/a")).unwrap();
            assert!(content.starts_with(b"synced"), "{content:?}");
            kept_tail |= content == b"synced and not";
            lost_b |= !dest.join("raft/b").exists();
            // A cut before the first sync completed may lose the file's name and bytes.
            let early = tmp.path().join(format!("early-{n}"));
            trace.crash_image(durable - 2, &mut rng, &early).unwrap();
        }
        assert!(lost_b && kept_tail, "the model neither dropped an unsynced name nor kept an unsynced write");
    }

    #[test]
    fn a_change_behind_the_models_back_is_found() {
        let tmp = tempfile::tempdir().unwrap();
        let recording = Recording::start(tmp.path());
        let a = tmp.path().join("a");
        disk::open(&a, Open::New, false, 0o644).unwrap();
        std::fs::write(&a, b"sneaky").unwrap();
        let trace = recording.finish();
        assert!(trace.check_against(tmp.path()).is_err());
    }
}
