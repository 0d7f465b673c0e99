//! The filesystem layer without FUSE: random operation sequences against a reference model.
//!
//! Each case starts a real single-node [`Node`] on a temporary data directory (real log,
//! real fsync, real chain) and drives [`Fs`] the way the kernel would — lookups to resolve a
//! path, then the operation — comparing the outcome (success or errno) and the whole visible
//! tree with a `BTreeMap` model after every step: kinds, contents, symlink targets, owners and
//! the times the model can know (those set explicitly; a block's own time it cannot predict).
//! The harness does not follow symlinks (the kernel would): a symlink met where a directory
//! or a file to open is expected behaves as the `fs` contract says without a kernel.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::node::{Config, Node};
use crate::store::DataDir;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kinded {
    File(Vec<u8>),
    Dir,
    Symlink(String),
}

/// One state as the model (and a snapshot) sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Model {
    kind: Kinded,
    uid: u32,
    gid: u32,
    /// Access time, when the model knows it (set explicitly); `None`: some block's time.
    atime: Option<i64>,
    /// Modification time, likewise.
    mtime: Option<i64>,
}

impl Model {
    fn new(kind: Kinded, by: Caller) -> Model {
        Model { kind, uid: by.uid, gid: by.gid, atime: None, mtime: None }
    }
    fn is_dir(&self) -> bool {
        self.kind == Kinded::Dir
    }
}

fn file(content: &[u8]) -> Kinded {
    Kinded::File(content.to_vec())
}

#[derive(Clone, Debug)]
enum Op {
    Create(Caller, String),
    Write(String, Vec<u8>),
    Append(String, Vec<u8>),
    Truncate(String, u64),
    Rename(String, String),
    Unlink(String),
    Mkdir(Caller, String),
    Rmdir(String),
    Symlink(Caller, String, String),
    /// `chown` by `Caller` (uid, gid).
    Chown(Caller, String, Option<u32>, Option<u32>),
    /// `utimensat` (atime, mtime).
    Times(String, Option<TimeSpec>, Option<TimeSpec>),
    /// Stop the node and start it again on the same data directory.
    Restart,
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 1..=3).prop_map(|parts| parts.join("/"))
}

fn caller() -> impl Strategy<Value = Caller> {
    prop::sample::select(vec![Caller::ROOT, Caller::user(1000, 1000), Caller::user(65534, 65534)])
}

fn id() -> impl Strategy<Value = Option<u32>> {
    prop::option::of(prop::sample::select(vec![0u32, 1000, 65534]))
}

fn time() -> impl Strategy<Value = Option<TimeSpec>> {
    prop::option::of(prop_oneof![
        Just(TimeSpec::Now),
        // Before and after the epoch, at nanosecond precision.
        (-3_000_000_000_000_000_000i64..3_000_000_000_000_000_000).prop_map(TimeSpec::At),
    ])
}

fn op() -> impl Strategy<Value = Op> {
    let data = prop::collection::vec(any::<u8>(), 0..16);
    let target = prop::sample::select(vec!["a", "../b", "/etc/passwd", "c/a"]).prop_map(String::from);
    prop_oneof![
        4 => (caller(), path()).prop_map(|(c, p)| Op::Create(c, p)),
        4 => (path(), data.clone()).prop_map(|(p, d)| Op::Write(p, d)),
        4 => (path(), data).prop_map(|(p, d)| Op::Append(p, d)),
        4 => (path(), 0u64..20).prop_map(|(p, s)| Op::Truncate(p, s)),
        4 => (path(), path()).prop_map(|(a, b)| Op::Rename(a, b)),
        4 => path().prop_map(Op::Unlink),
        4 => (caller(), path()).prop_map(|(c, p)| Op::Mkdir(c, p)),
        4 => path().prop_map(Op::Rmdir),
        3 => (caller(), path(), target).prop_map(|(c, p, t)| Op::Symlink(c, p, t)),
        3 => (caller(), path(), id(), id()).prop_map(|(c, p, u, g)| Op::Chown(c, p, u, g)),
        3 => (path(), time(), time()).prop_map(|(p, a, m)| Op::Times(p, a, m)),
        // Rare: a restart takes an election.
        1 => Just(Op::Restart),
    ]
}

/// A change to a directory's children makes its mtime the block's (as on ext4, also after a
/// `utimensat` set it): the model stops tracking an explicit value.
fn touch_parent(m: &mut BTreeMap<String, Model>, p: &str) {
    if let Some(parent) = parent_of(p).and_then(|d| m.get_mut(d)) {
        parent.mtime = None;
    }
}

fn parent_of(p: &str) -> Option<&str> {
    p.rfind('/').map(|i| &p[..i])
}

/// The reference semantics: what the operation returns and how the tree changes.
fn model_apply(m: &mut BTreeMap<String, Model>, op: &Op) -> Result<(), i32> {
    // Resolving the directory part of a path walks lookups: a missing component, or a file
    // or symlink where a directory must be looked into, is ENOENT. A non-directory as the last
    // directory component is seen by the transaction itself: ENOTDIR when it is applied.
    let walk = |m: &BTreeMap<String, Model>, p: &str| -> Result<bool, i32> {
        let parts: Vec<&str> = p.split('/').collect();
        let dirs = &parts[..parts.len() - 1];
        let mut at = String::new();
        for (i, part) in dirs.iter().enumerate() {
            at = if at.is_empty() { part.to_string() } else { format!("{at}/{part}") };
            match m.get(&at) {
                Some(e) if e.is_dir() => {}
                Some(_) if i + 1 == dirs.len() => return Ok(true),
                _ => return Err(libc::ENOENT),
            }
        }
        Ok(false)
    };
    let parent_ok = |m: &BTreeMap<String, Model>, p: &str| -> Result<(), i32> {
        match walk(m, p)? {
            true => Err(libc::ENOTDIR),
            false => Ok(()),
        }
    };
    let full_path_ok = |m: &BTreeMap<String, Model>, p: &str| -> Result<(), i32> {
        match walk(m, p)? {
            true => Err(libc::ENOENT), // the last lookup looks into a non-directory
            false => Ok(()),
        }
    };
    let below = |m: &BTreeMap<String, Model>, p: &str| m.keys().any(|k| k.starts_with(&format!("{p}/")));
    match op {
        Op::Restart => Ok(()), // everything committed survives
        Op::Create(by, p) => {
            parent_ok(m, p)?;
            match m.get(p).map(|e| &e.kind) {
                Some(Kinded::Dir) => Err(libc::EISDIR),
                Some(Kinded::Symlink(_)) => Err(libc::ELOOP),
                Some(Kinded::File(_)) => Ok(()),
                None => {
                    m.insert(p.clone(), Model::new(file(b""), *by));
                    touch_parent(m, p);
                    Ok(())
                }
            }
        }
        Op::Write(p, _) | Op::Append(p, _) | Op::Truncate(p, _) => {
            full_path_ok(m, p)?;
            let entry = m.get_mut(p).ok_or(libc::ENOENT)?;
            match (&mut entry.kind, op) {
                (Kinded::Dir, _) => Err(libc::EISDIR),
                (Kinded::Symlink(_), Op::Truncate(..)) => Err(libc::EINVAL),
                (Kinded::Symlink(_), _) => Err(libc::ELOOP),
                (Kinded::File(c), _) => {
                    match op {
                        Op::Write(_, d) => *c = d.clone(),
                        Op::Append(_, d) => c.extend_from_slice(d),
                        Op::Truncate(_, s) => c.resize(*s as usize, 0),
                        _ => unreachable!(),
                    }
                    entry.mtime = None;
                    Ok(())
                }
            }
        }
        Op::Unlink(p) => {
            parent_ok(m, p)?;
            match m.get(p) {
                None => Err(libc::ENOENT),
                Some(e) if e.is_dir() => Err(libc::EISDIR),
                Some(_) => {
                    m.remove(p);
                    touch_parent(m, p);
                    Ok(())
                }
            }
        }
        Op::Mkdir(by, p) | Op::Symlink(by, p, _) => {
            parent_ok(m, p)?;
            if m.contains_key(p) {
                return Err(libc::EEXIST);
            }
            let kind = match op {
                Op::Symlink(_, _, target) => Kinded::Symlink(target.clone()),
                _ => Kinded::Dir,
            };
            m.insert(p.clone(), Model::new(kind, *by));
            touch_parent(m, p);
            Ok(())
        }
        Op::Rmdir(p) => {
            parent_ok(m, p)?;
            match m.get(p) {
                None => Err(libc::ENOENT),
                Some(e) if !e.is_dir() => Err(libc::ENOTDIR),
                Some(_) if below(m, p) => Err(libc::ENOTEMPTY),
                Some(_) => {
                    m.remove(p);
                    touch_parent(m, p);
                    Ok(())
                }
            }
        }
        Op::Rename(from, to) => {
            walk(m, from)?;
            walk(m, to)?;
            parent_ok(m, from)?;
            let Some(src) = m.get(from).cloned() else {
                return Err(libc::ENOENT);
            };
            parent_ok(m, to)?;
            if from == to {
                return Ok(());
            }
            if to.starts_with(&format!("{from}/")) {
                return Err(libc::EINVAL);
            }
            match (src.is_dir(), m.get(to)) {
                (true, Some(t)) if !t.is_dir() => return Err(libc::ENOTDIR),
                (false, Some(t)) if t.is_dir() => return Err(libc::EISDIR),
                (true, Some(_)) if below(m, to) => return Err(libc::ENOTEMPTY),
                _ => {}
            }
            m.remove(to);
            let moved: Vec<(String, Model)> = m
                .iter()
                .filter(|(k, _)| *k == from || k.starts_with(&format!("{from}/")))
                .map(|(k, v)| (format!("{to}{}", &k[from.len()..]), v.clone()))
                .collect();
            m.retain(|k, _| !(k == from || k.starts_with(&format!("{from}/"))));
            m.extend(moved);
            for dir in [parent_of(from), parent_of(to)].into_iter().flatten() {
                if let Some(dir) = m.get_mut(dir) {
                    dir.mtime = None;
                }
            }
            Ok(())
        }
        Op::Chown(by, p, uid, gid) => {
            full_path_ok(m, p)?;
            let entry = m.get_mut(p).ok_or(libc::ENOENT)?;
            let gives_away = uid.is_some_and(|u| u != entry.uid);
            let regroups = gid.is_some_and(|g| g != entry.gid);
            if by.uid != 0 && (gives_away || (regroups && by.uid != entry.uid)) {
                return Err(libc::EPERM);
            }
            entry.uid = uid.unwrap_or(entry.uid);
            entry.gid = gid.unwrap_or(entry.gid);
            Ok(())
        }
        Op::Times(p, atime, mtime) => {
            full_path_ok(m, p)?;
            let entry = m.get_mut(p).ok_or(libc::ENOENT)?;
            let known = |t: &TimeSpec| match t {
                TimeSpec::Now => None,
                TimeSpec::At(ns) => Some(*ns),
            };
            if let Some(t) = atime {
                entry.atime = known(t);
            }
            if let Some(t) = mtime {
                entry.mtime = known(t);
            }
            Ok(())
        }
    }
}

/// Resolves a path with lookups, as the kernel does.
async fn resolve(fs: &Fs, p: &str) -> Result<u64, FsError> {
    let mut ino = ROOT_INO;
    for part in p.split('/') {
        ino = fs.lookup(ino, part.as_bytes(), Caller::ROOT).await?.ino;
    }
    Ok(ino)
}

async fn resolve_parent<'a>(fs: &Fs, p: &'a str) -> Result<(u64, &'a str), FsError> {
    match parent_of(p) {
        Some(dir) => Ok((resolve(fs, dir).await?, &p[dir.len() + 1..])),
        None => Ok((ROOT_INO, p)),
    }
}

async fn write_file(fs: &Fs, p: &str, flags: i32, data: &[u8]) -> Result<(), FsError> {
    let ino = resolve(fs, p).await?;
    let opened = fs.open(ino, flags, Caller::ROOT).await?;
    let result = async {
        fs.write(opened.fh, 0, data, false)?;
        fs.flush(opened.fh).await
    }
    .await;
    fs.release(opened.fh);
    result
}

async fn fs_apply(fs: &Fs, op: &Op) -> Result<(), FsError> {
    match op {
        Op::Restart => unreachable!("restarts are done by the test loop"),
        Op::Create(by, p) => {
            let (dir, name) = resolve_parent(fs, p).await?;
            let (_, opened) = fs.create(dir, name.as_bytes(), 0o644, 0o022, libc::O_WRONLY, *by).await?;
            let result = fs.flush(opened.fh).await;
            fs.release(opened.fh);
            result
        }
        Op::Write(p, d) => write_file(fs, p, libc::O_WRONLY | libc::O_TRUNC, d).await,
        Op::Append(p, d) => write_file(fs, p, libc::O_WRONLY | libc::O_APPEND, d).await,
        Op::Truncate(p, size) => {
            let ino = resolve(fs, p).await?;
            // A truncate arrives with "mtime = now", as the kernel sends it.
            let set = SetAttr { size: Some(*size), mtime: Some(TimeSpec::Now), ..Default::default() };
            fs.setattr(ino, set, Caller::ROOT).await.map(drop)
        }
        Op::Unlink(p) => {
            let (dir, name) = resolve_parent(fs, p).await?;
            fs.unlink(dir, name.as_bytes()).await
        }
        Op::Mkdir(by, p) => {
            let (dir, name) = resolve_parent(fs, p).await?;
            fs.mkdir(dir, name.as_bytes(), 0o755, 0o022, *by).await.map(drop)
        }
        Op::Symlink(by, p, target) => {
            let (dir, name) = resolve_parent(fs, p).await?;
            let attr = fs.symlink(dir, name.as_bytes(), target.as_bytes(), *by).await?;
            assert_eq!((attr.kind, attr.perm, attr.size), (Kind::Symlink, 0o777, target.len() as u64));
            Ok(())
        }
        Op::Chown(by, p, uid, gid) => {
            let ino = resolve(fs, p).await?;
            fs.setattr(ino, SetAttr { uid: *uid, gid: *gid, ..Default::default() }, *by).await.map(drop)
        }
        Op::Times(p, atime, mtime) => {
            let ino = resolve(fs, p).await?;
            fs.setattr(ino, SetAttr { atime: *atime, mtime: *mtime, ..Default::default() }, Caller::ROOT)
                .await
                .map(drop)
        }
        Op::Rmdir(p) => {
            let (dir, name) = resolve_parent(fs, p).await?;
            fs.rmdir(dir, name.as_bytes()).await
        }
        Op::Rename(from, to) => {
            let (from_dir, from_name) = resolve_parent(fs, from).await?;
            let (to_dir, to_name) = resolve_parent(fs, to).await?;
            fs.rename(from_dir, from_name.as_bytes(), to_dir, to_name.as_bytes(), 0).await
        }
    }
}

struct Collect(Vec<(u64, Kind, String)>);

impl DirReplier for Collect {
    fn add(&mut self, ino: u64, _offset: u64, kind: Kind, name: &str) -> bool {
        self.0.push((ino, kind, name.to_owned()));
        false
    }
}

fn ns_of(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i64,
        Err(e) => -(e.duration().as_nanos() as i64),
    }
}

/// Everything visible through the filesystem, as a model with every time known.
async fn snapshot(fs: &Fs) -> BTreeMap<String, Model> {
    let mut out = BTreeMap::new();
    let mut pending = vec![(ROOT_INO, String::new())];
    while let Some((dir, prefix)) = pending.pop() {
        let fh = fs.opendir(dir).await.unwrap();
        let mut entries = Collect(Vec::new());
        fs.readdir(fh, 0, &mut entries).unwrap();
        fs.releasedir(fh);
        for (ino, kind, name) in entries.0 {
            if name == "." || name == ".." || (dir == ROOT_INO && name == CONTROL_DIR) {
                continue;
            }
            let p = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
            let attr = fs.getattr(ino, None).unwrap();
            assert_eq!(attr.kind, kind, "{p}: readdir and getattr agree on the kind");
            let kinded = match kind {
                Kind::Dir => {
                    pending.push((ino, p.clone()));
                    Kinded::Dir
                }
                Kind::File => {
                    let opened = fs.open(ino, libc::O_RDONLY, Caller::ROOT).await.unwrap();
                    let data = fs.read(opened.fh, 0, 1 << 20).unwrap();
                    fs.release(opened.fh);
                    assert_eq!(attr.size, data.len() as u64);
                    Kinded::File(data)
                }
                Kind::Symlink => {
                    let target = String::from_utf8(fs.readlink(ino).unwrap()).unwrap();
                    assert_eq!((attr.size, attr.perm), (target.len() as u64, 0o777));
                    Kinded::Symlink(target)
                }
            };
            let (atime, mtime) = (Some(ns_of(attr.atime)), Some(ns_of(attr.mtime)));
            out.insert(p, Model { kind: kinded, uid: attr.uid, gid: attr.gid, atime, mtime });
        }
    }
    out
}

/// `snapshot`, forgetting the times the model does not know.
async fn seen_as(fs: &Fs, model: &BTreeMap<String, Model>) -> BTreeMap<String, Model> {
    let mut seen = snapshot(fs).await;
    for (p, e) in seen.iter_mut() {
        if let Some(m) = model.get(p) {
            e.atime = e.atime.filter(|_| m.atime.is_some());
            e.mtime = e.mtime.filter(|_| m.mtime.is_some());
        }
    }
    seen
}

async fn start_fs(dir: &std::path::Path, max_state_size: u64) -> Arc<Fs> {
    let data = DataDir::create(dir).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listen = listener.local_addr().unwrap();
    let config = Config::single_node_for_tests(listen);
    let node = Node::start(&data, config, listener).await.unwrap();
    assert!(node.wait_ready(Duration::from_secs(10)).await, "single node never became ready");
    node.adopt_limits(Some(max_state_size)).await.unwrap();
    Arc::new(Fs::new(node, FsConfig { uid: 0, gid: 0 }))
}

/// Runs `body` against a fresh single-node filesystem, then stops the node.
fn with_fs<F, Fut>(max_state_size: u64, body: F)
where
    F: FnOnce(Arc<Fs>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let fs = start_fs(tmp.path(), max_state_size).await;
        body(fs.clone()).await;
        fs.node().shutdown().await;
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_match_the_model(ops in prop::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        rt.block_on(async {
            let mut fs = start_fs(tmp.path(), 1 << 20).await;
            let mut model = BTreeMap::new();
            for (step, op) in ops.iter().enumerate() {
                let expected = model_apply(&mut model, op);
                let got = if let Op::Restart = op {
                    fs.node().shutdown().await;
                    drop(fs);
                    fs = start_fs(tmp.path(), 1 << 20).await;
                    Ok(())
                } else {
                    fs_apply(&fs, op).await.map_err(|e| e.errno())
                };
                assert_eq!(got, expected, "step {step}: {op:?}");
                assert_eq!(seen_as(&fs, &model).await, model, "tree after step {step}: {op:?}");
            }
            fs.node().shutdown().await;
        });
    }
}

#[test]
fn oversized_write_spoils_the_handle_and_keeps_the_old_content() {
    with_fs(8, |fs| async move {
        write_file(&fs, "x", libc::O_WRONLY, b"").await.unwrap_err(); // missing: ENOENT
        let (_, o) = fs.create(ROOT_INO, b"x", 0o644, 0, libc::O_WRONLY, Caller::ROOT).await.unwrap();
        fs.write(o.fh, 0, b"old", false).unwrap();
        fs.flush(o.fh).await.unwrap();
        fs.release(o.fh);
        let ino = resolve(&fs, "x").await.unwrap();
        let o = fs.open(ino, libc::O_WRONLY | libc::O_TRUNC, Caller::ROOT).await.unwrap();
        assert_eq!(fs.write(o.fh, 0, b"123456789", false).unwrap_err().errno(), libc::EFBIG);
        assert_eq!(fs.write(o.fh, 0, b"1", false).unwrap_err().errno(), libc::EFBIG, "spoiled");
        assert_eq!(fs.flush(o.fh).await.unwrap_err().errno(), libc::EFBIG, "spoiled");
        fs.release(o.fh);
        assert_eq!(snapshot(&fs).await.get("x").map(|e| &e.kind), Some(&file(b"old")));
    });
}

#[test]
fn exclusive_create_and_control_directory() {
    with_fs(1 << 20, |fs| async move {
        let excl = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
        let (_, o) = fs.create(ROOT_INO, b"lock", 0o644, 0, excl, Caller::ROOT).await.unwrap();
        fs.release(o.fh);
        let err = fs.create(ROOT_INO, b"lock", 0o644, 0, excl, Caller::ROOT).await.unwrap_err();
        assert_eq!(err.errno(), libc::EEXIST);
        let err = fs
            .create(ROOT_INO, CONTROL_DIR.as_bytes(), 0o644, 0, libc::O_WRONLY, Caller::ROOT)
            .await
            .unwrap_err();
        assert_eq!(err.errno(), libc::EACCES);
        let err = fs.create(CONTROL_INO, b"x", 0o644, 0, libc::O_WRONLY, Caller::ROOT).await.unwrap_err();
        assert_eq!(err.errno(), libc::EACCES);
        assert_eq!(
            fs.open(STATUS_INO, libc::O_WRONLY, Caller::ROOT).await.unwrap_err().errno(),
            libc::EACCES
        );
        let status = fs.open(STATUS_INO, libc::O_RDONLY, Caller::ROOT).await.unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&fs.read(status.fh, 0, 1 << 16).unwrap()).unwrap();
        assert_eq!(json["ready"], true);
        assert_eq!(json["role"], "leader");
        let long = vec![b'x'; 256];
        assert_eq!(
            fs.mkdir(ROOT_INO, &long, 0o755, 0, Caller::ROOT).await.unwrap_err().errno(),
            libc::ENAMETOOLONG
        );
    });
}

#[test]
fn committed_states_survive_a_restart_of_the_node() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let ops = [
            Op::Mkdir(USER, "a".into()),
            Op::Create(USER, "a/b".into()),
            Op::Write("a/b".into(), b"kept".to_vec()),
            Op::Symlink(USER, "a/l".into(), "b".into()),
            Op::Times(
                "a/b".into(),
                Some(TimeSpec::At(-1_500_000_000)),
                Some(TimeSpec::At(1_577_836_800_123_456_789)),
            ),
            Op::Chown(Caller::ROOT, "a/l".into(), Some(0), None),
            Op::Rename("a".into(), "c".into()),
        ];
        let mut fs = start_fs(tmp.path(), 1 << 20).await;
        let mut model = BTreeMap::new();
        for op in &ops {
            model_apply(&mut model, op).unwrap();
            fs_apply(&fs, op).await.unwrap();
        }
        let before = fs.node().status().head_hash;
        fs.node().shutdown().await;
        drop(fs);
        fs = start_fs(tmp.path(), 1 << 20).await;
        assert_eq!(fs.node().status().head_hash, before, "the chain head survives the restart");
        assert_eq!(seen_as(&fs, &model).await, model);
        fs_apply(&fs, &Op::Append("c/b".into(), b"+more".to_vec())).await.unwrap();
        let mut expected = model.clone();
        model_apply(&mut expected, &Op::Append("c/b".into(), b"+more".to_vec())).unwrap();
        assert_eq!(seen_as(&fs, &expected).await, expected, "and it keeps committing");
        fs.node().shutdown().await;
    });
}

const USER: Caller = Caller::user(1000, 1000);

#[test]
fn owners_come_from_the_caller_and_root_alone_gives_states_away() {
    with_fs(1 << 20, |fs| async move {
        let (attr, o) = fs.create(ROOT_INO, b"f", 0o644, 0o022, libc::O_WRONLY, USER).await.unwrap();
        assert_eq!((attr.uid, attr.gid), (1000, 1000));
        fs.release(o.fh);
        let d = fs.mkdir(ROOT_INO, b"d", 0o755, 0, USER).await.unwrap();
        assert_eq!((d.uid, d.gid), (1000, 1000));
        let root = fs.getattr(ROOT_INO, None).unwrap();
        assert_eq!((root.uid, root.gid), (0, 0), "the root is the mounting user's (root in this test)");
        let chown = |uid, gid| SetAttr { uid, gid, ..Default::default() };
        let other = Caller::user(65534, 65534);
        let e = fs.setattr(attr.ino, chown(Some(65534), None), USER).await.unwrap_err();
        assert_eq!(e.errno(), libc::EPERM, "a non-root owner cannot give its file away");
        let e = fs.setattr(attr.ino, chown(None, Some(65534)), other).await.unwrap_err();
        assert_eq!(e.errno(), libc::EPERM, "nor can another user change its group");
        let a = fs.setattr(attr.ino, chown(None, Some(100)), USER).await.unwrap();
        assert_eq!((a.uid, a.gid), (1000, 100), "the owner changes the group");
        let a = fs.setattr(attr.ino, chown(Some(1000), None), USER).await.unwrap();
        assert_eq!(a.uid, 1000, "chown to oneself is no change");
        // Root changes owner, group and the mode the kernel sends along, in one transaction.
        let before = fs.node().status().head_height;
        let set = SetAttr { uid: Some(65534), gid: Some(65534), mode: Some(0o100755), ..Default::default() };
        let a = fs.setattr(attr.ino, set, Caller::ROOT).await.unwrap();
        assert_eq!((a.uid, a.gid, a.perm), (65534, 65534, 0o755));
        assert_eq!(fs.node().status().head_height, before.map(|h| h + 1), "one block for owner and mode");
    });
}

#[test]
fn an_unprivileged_write_drops_setuid_and_a_privileged_one_keeps_it() {
    with_fs(1 << 20, |fs| async move {
        let (attr, o) = fs.create(ROOT_INO, b"f", 0o6755, 0, libc::O_WRONLY, USER).await.unwrap();
        fs.release(o.fh);
        assert_eq!(attr.perm, 0o6755);
        let write = |kill: bool| {
            let fs = fs.clone();
            async move {
                let o = fs.open(attr.ino, libc::O_WRONLY, USER).await.unwrap();
                fs.write(o.fh, 0, b"x", kill).unwrap();
                fs.flush(o.fh).await.unwrap();
                fs.release(o.fh);
                fs.getattr(attr.ino, None).unwrap().perm
            }
        };
        assert_eq!(write(false).await, 0o6755, "a write with CAP_FSETID keeps the bits");
        assert_eq!(write(true).await, 0o755, "one without drops setuid and setgid");
    });
}

#[test]
fn touch_sets_the_block_time_and_a_truncate_makes_one_block() {
    with_fs(1 << 20, |fs| async move {
        let (attr, o) = fs.create(ROOT_INO, b"f", 0o644, 0, libc::O_WRONLY, USER).await.unwrap();
        fs.release(o.fh);
        let set =
            SetAttr { atime: Some(TimeSpec::At(5)), mtime: Some(TimeSpec::At(6)), ..Default::default() };
        let a = fs.setattr(attr.ino, set, USER).await.unwrap();
        assert_eq!((ns_of(a.atime), ns_of(a.mtime)), (5, 6));
        let set = SetAttr { atime: Some(TimeSpec::Now), mtime: Some(TimeSpec::Now), ..Default::default() };
        let a = fs.setattr(attr.ino, set, USER).await.unwrap();
        let head = fs.node().replica().head.unwrap().timestamp_ms as i64 * 1_000_000;
        assert_eq!(
            (ns_of(a.atime), ns_of(a.mtime), ns_of(a.ctime)),
            (head, head, head),
            "now is the block's time"
        );
        let before = fs.node().status().head_height;
        let set = SetAttr { size: Some(3), mtime: Some(TimeSpec::Now), ..Default::default() };
        fs.setattr(attr.ino, set, USER).await.unwrap();
        assert_eq!(
            fs.node().status().head_height,
            before.map(|h| h + 1),
            "truncate's own mtime needs no times block"
        );
    });
}

#[test]
fn symlink_targets_are_checked_and_read_back() {
    with_fs(1 << 20, |fs| async move {
        let a = fs.symlink(ROOT_INO, b"l", b"../somewhere", USER).await.unwrap();
        assert_eq!((a.kind, a.uid, a.size), (Kind::Symlink, 1000, 12));
        assert_eq!(fs.readlink(a.ino).unwrap(), b"../somewhere");
        assert_eq!(fs.lookup(ROOT_INO, b"l", Caller::ROOT).await.unwrap().kind, Kind::Symlink);
        assert_eq!(fs.open(a.ino, libc::O_RDONLY, USER).await.unwrap_err().errno(), libc::ELOOP);
        let err = |r: Result<Attr, FsError>| r.unwrap_err().errno();
        assert_eq!(err(fs.symlink(ROOT_INO, b"l", b"x", USER).await), libc::EEXIST);
        assert_eq!(err(fs.symlink(ROOT_INO, b"m", b"", USER).await), libc::ENOENT);
        assert_eq!(err(fs.symlink(ROOT_INO, b"m", &[0xff], USER).await), libc::EINVAL);
        assert_eq!(err(fs.symlink(ROOT_INO, b"m", &[b'x'; 4096], USER).await), libc::ENAMETOOLONG);
        let longest = fs.symlink(ROOT_INO, b"m", &[b'x'; 4095], USER).await.unwrap();
        assert_eq!(fs.readlink(longest.ino).unwrap().len(), 4095);
        let (f, o) = fs.create(ROOT_INO, b"f", 0o644, 0, libc::O_WRONLY, USER).await.unwrap();
        fs.release(o.fh);
        assert_eq!(fs.readlink(f.ino).unwrap_err().errno(), libc::EINVAL);
        assert_eq!(fs.readlink(ROOT_INO).unwrap_err().errno(), libc::EINVAL);
    });
}

#[test]
fn times_set_while_a_write_is_open_outlast_its_close() {
    with_fs(1 << 20, |fs| async move {
        let (attr, o) = fs.create(ROOT_INO, b"f", 0o644, 0, libc::O_WRONLY, USER).await.unwrap();
        fs.write(o.fh, 0, b"copied", false).unwrap();
        let set = SetAttr { mtime: Some(TimeSpec::At(42)), ..Default::default() };
        assert_eq!(ns_of(fs.setattr(attr.ino, set, USER).await.unwrap().mtime), 42);
        let height = fs.node().status().head_height;
        fs.flush(o.fh).await.unwrap();
        fs.release(o.fh);
        assert_eq!(fs.node().status().head_height, height, "the close had nothing left to commit");
        let after = fs.getattr(attr.ino, None).unwrap();
        assert_eq!((ns_of(after.mtime), after.size), (42, 6));
    });
}

#[test]
fn getxattr_alone_is_not_implemented_so_the_kernel_stops_asking() {
    with_fs(1 << 20, |fs| async move {
        // ENOSYS for getxattr only: the kernel remembers it per mount (and shows EOPNOTSUPP).
        assert_eq!(fs.unsupported("getxattr"), FsError::NoXattrs);
        assert_eq!(fs.unsupported("getxattr").errno(), libc::ENOSYS);
        // Everything else keeps the errno it had (setxattr and removexattr are not on any hot path).
        for op in ["setxattr", "removexattr", "fallocate"] {
            assert_eq!(fs.unsupported(op).errno(), libc::EOPNOTSUPP, "{op}");
        }
        for op in ["link", "mknod"] {
            assert_eq!(fs.unsupported(op).errno(), libc::EPERM, "{op}");
        }
    });
}

/// Linearizable mode (the default) lets the kernel keep only directories' attributes, briefly
/// (DESIGN §1.3 as `LINEARIZABLE_DIR_ATTR_TTL` explains); local mode keeps everything 10 s.
#[test]
fn only_directories_attributes_are_cached_in_linearizable_mode_and_never_names() {
    with_fs(1 << 20, |fs| async move {
        let dir = fs.mkdir(ROOT_INO, b"d", 0o755, 0, USER).await.unwrap();
        let (file, o) = fs.create(ROOT_INO, b"f", 0o644, 0, libc::O_WRONLY, USER).await.unwrap();
        fs.release(o.fh);
        let link = fs.symlink(ROOT_INO, b"l", b"f", USER).await.unwrap();
        let root = fs.getattr(ROOT_INO, None).unwrap();
        let ttls = fs.ttls();
        for attr in [&dir, &root] {
            let ttl = ttls.of(attr);
            assert_eq!(ttl.entry, Duration::ZERO, "names are always looked up again");
            assert!(ttl.attr > Duration::ZERO && ttl.attr <= Duration::from_millis(1), "{ttl:?}");
        }
        for attr in [&file, &link] {
            assert_eq!(ttls.of(attr), Ttl { entry: Duration::ZERO, attr: Duration::ZERO });
        }
        let local = Ttls { local: true };
        for attr in [&dir, &file, &link] {
            assert_eq!(local.of(attr), Ttl { entry: LOCAL_TTL, attr: LOCAL_TTL });
        }
    });
}

/// The content a fresh read handle of `ino` sees.
async fn read_ino(fs: &Fs, ino: u64) -> Vec<u8> {
    let o = fs.open(ino, libc::O_RDONLY, USER).await.unwrap();
    let data = fs.read(o.fh, 0, 1 << 20).unwrap();
    fs.release(o.fh);
    data
}

/// The blocks a rewrite costs (`docs/architecture/write-path.md`): through one descriptor the
/// truncation rides in the flush's put, one block; the shell's `open; dup2; close(3)` flushes the
/// truncated handle before its write, and that flush must commit the empty state (it cannot tell
/// it from the only flush of an `open(O_TRUNC)` + `close`), then the last flush the content.
#[test]
fn a_rewrite_through_one_descriptor_is_one_block_and_the_shells_early_flush_commits_empty() {
    with_fs(1 << 20, |fs| async move {
        let height = || fs.node().status().head_height.unwrap();
        let (attr, o) = fs.create(ROOT_INO, b"f", 0o644, 0, libc::O_WRONLY, USER).await.unwrap();
        fs.write(o.fh, 0, b"old\n", false).unwrap();
        fs.flush(o.fh).await.unwrap();
        fs.release(o.fh);
        let trunc = libc::O_WRONLY | libc::O_TRUNC;

        // open(O_TRUNC) + write + close: one block, and the open commits nothing.
        let start = height();
        let o = fs.open(attr.ino, trunc, USER).await.unwrap();
        assert_eq!(height(), start, "an O_TRUNC open commits nothing by itself");
        fs.write(o.fh, 0, b"new\n", false).unwrap();
        fs.flush(o.fh).await.unwrap();
        fs.release(o.fh);
        assert_eq!(height(), start + 1, "one block for the whole rewrite");
        assert_eq!(read_ino(&fs, attr.ino).await, b"new\n");

        // echo x > f: flush (close of fd 3), write, flush (dup2 over fd 1), release.
        let start = height();
        let o = fs.open(attr.ino, trunc, USER).await.unwrap();
        fs.flush(o.fh).await.unwrap();
        assert_eq!(height(), start + 1, "the early flush commits the truncation");
        assert_eq!(read_ino(&fs, attr.ino).await, b"", "and a reader may see the empty version");
        fs.write(o.fh, 0, b"x\n", false).unwrap();
        fs.flush(o.fh).await.unwrap();
        fs.release(o.fh);
        assert_eq!(height(), start + 2);
        assert_eq!(read_ino(&fs, attr.ino).await, b"x\n");

        // An O_TRUNC open of an empty state, closed at once: nothing to commit.
        let (empty, o) = fs.create(ROOT_INO, b"e", 0o644, 0, libc::O_WRONLY, USER).await.unwrap();
        fs.flush(o.fh).await.unwrap();
        fs.release(o.fh);
        let start = height();
        let o = fs.open(empty.ino, trunc, USER).await.unwrap();
        fs.flush(o.fh).await.unwrap();
        fs.release(o.fh);
        assert_eq!(height(), start, "a clean handle commits nothing");
    });
}

#[test]
fn an_open_fails_stale_when_its_path_was_renamed_since_its_lookup_and_binds_anew_after() {
    with_fs(1 << 20, |fs| async move {
        let (file, o) = fs.create(ROOT_INO, b"app.log", 0o644, 0, libc::O_WRONLY, USER).await.unwrap();
        fs.release(o.fh);
        let looked_up = fs.lookup(ROOT_INO, b"app.log", USER).await.unwrap();
        assert_eq!(looked_up.ino, file.ino);
        // Between this thread's lookup and its open, the state is renamed away (here; on a
        // cluster, anywhere): the path the kernel walked names nothing now.
        fs.rename(ROOT_INO, b"app.log", ROOT_INO, b"app.log.1", 0).await.unwrap();
        let err = fs.open(file.ino, libc::O_RDONLY, USER).await.unwrap_err();
        assert_eq!(err.errno(), libc::ESTALE, "an open bound to a renamed-away inode");
        // Another thread's lookup is not this open's: the record is per thread.
        let other = Caller { tid: 7, ..USER };
        fs.lookup(ROOT_INO, b"app.log.1", other).await.unwrap();
        let o = fs.open(file.ino, libc::O_RDONLY, USER).await.unwrap();
        fs.release(o.fh);
        // The kernel's retry looks the new name up again and then opens.
        fs.lookup(ROOT_INO, b"app.log.1", USER).await.unwrap();
        let o = fs.open(file.ino, libc::O_WRONLY | libc::O_TRUNC, USER).await.unwrap();
        fs.release(o.fh);
    });
}
