//! The filesystem layer without FUSE: random operation sequences against a reference model.
//!
//! Each case starts a real single-node [`Node`] on a temporary data directory (real log,
//! real fsync, real chain) and drives [`Fs`] the way the kernel would — lookups to resolve a
//! path, then the operation — comparing the outcome (success or errno) and the whole visible
//! tree with a `BTreeMap` model after every step.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::node::{Config, Node, ReadConsistency};
use crate::store::DataDir;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Model {
    File(Vec<u8>),
    Dir,
}

#[derive(Clone, Debug)]
enum Op {
    Create(String),
    Write(String, Vec<u8>),
    Append(String, Vec<u8>),
    Truncate(String, u64),
    Rename(String, String),
    Unlink(String),
    Mkdir(String),
    Rmdir(String),
    /// Stop the node and start it again on the same data directory.
    Restart,
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 1..=3).prop_map(|parts| parts.join("/"))
}

fn op() -> impl Strategy<Value = Op> {
    let data = prop::collection::vec(any::<u8>(), 0..16);
    prop_oneof![
        4 => path().prop_map(Op::Create),
        4 => (path(), data.clone()).prop_map(|(p, d)| Op::Write(p, d)),
        4 => (path(), data).prop_map(|(p, d)| Op::Append(p, d)),
        4 => (path(), 0u64..20).prop_map(|(p, s)| Op::Truncate(p, s)),
        4 => (path(), path()).prop_map(|(a, b)| Op::Rename(a, b)),
        4 => path().prop_map(Op::Unlink),
        4 => path().prop_map(Op::Mkdir),
        4 => path().prop_map(Op::Rmdir),
        // Rare: a restart takes an election.
        1 => Just(Op::Restart),
    ]
}

fn parent_of(p: &str) -> Option<&str> {
    p.rfind('/').map(|i| &p[..i])
}

/// The reference semantics: what the operation returns and how the tree changes.
fn model_apply(m: &mut BTreeMap<String, Model>, op: &Op) -> Result<(), i32> {
    // Resolving the directory part of a path walks lookups: a missing component, or a file
    // where a directory must be looked into, is ENOENT. A file as the last directory
    // component is seen by the transaction itself: ENOTDIR when it is applied.
    let walk = |m: &BTreeMap<String, Model>, p: &str| -> Result<bool, i32> {
        let parts: Vec<&str> = p.split('/').collect();
        let dirs = &parts[..parts.len() - 1];
        let mut at = String::new();
        for (i, part) in dirs.iter().enumerate() {
            at = if at.is_empty() { part.to_string() } else { format!("{at}/{part}") };
            match m.get(&at) {
                Some(Model::Dir) => {}
                Some(Model::File(_)) if i + 1 == dirs.len() => return Ok(true),
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
            true => Err(libc::ENOENT), // the last lookup looks into a file
            false => Ok(()),
        }
    };
    let below = |m: &BTreeMap<String, Model>, p: &str| m.keys().any(|k| k.starts_with(&format!("{p}/")));
    match op {
        Op::Restart => Ok(()), // everything committed survives
        Op::Create(p) => {
            parent_ok(m, p)?;
            match m.get(p) {
                Some(Model::Dir) => Err(libc::EISDIR),
                Some(Model::File(_)) => Ok(()),
                None => {
                    m.insert(p.clone(), Model::File(Vec::new()));
                    Ok(())
                }
            }
        }
        Op::Write(p, _) | Op::Append(p, _) | Op::Truncate(p, _) => {
            full_path_ok(m, p)?;
            match m.get_mut(p) {
                None => Err(libc::ENOENT),
                Some(Model::Dir) => Err(libc::EISDIR),
                Some(Model::File(c)) => {
                    match op {
                        Op::Write(_, d) => *c = d.clone(),
                        Op::Append(_, d) => c.extend_from_slice(d),
                        Op::Truncate(_, s) => c.resize(*s as usize, 0),
                        _ => unreachable!(),
                    }
                    Ok(())
                }
            }
        }
        Op::Unlink(p) => {
            parent_ok(m, p)?;
            match m.get(p) {
                None => Err(libc::ENOENT),
                Some(Model::Dir) => Err(libc::EISDIR),
                Some(_) => {
                    m.remove(p);
                    Ok(())
                }
            }
        }
        Op::Mkdir(p) => {
            parent_ok(m, p)?;
            if m.contains_key(p) {
                return Err(libc::EEXIST);
            }
            m.insert(p.clone(), Model::Dir);
            Ok(())
        }
        Op::Rmdir(p) => {
            parent_ok(m, p)?;
            match m.get(p) {
                None => Err(libc::ENOENT),
                Some(Model::File(_)) => Err(libc::ENOTDIR),
                Some(Model::Dir) if below(m, p) => Err(libc::ENOTEMPTY),
                Some(Model::Dir) => {
                    m.remove(p);
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
            match (&src, m.get(to)) {
                (Model::Dir, Some(Model::File(_))) => return Err(libc::ENOTDIR),
                (Model::File(_), Some(Model::Dir)) => return Err(libc::EISDIR),
                (Model::Dir, Some(Model::Dir)) if below(m, to) => return Err(libc::ENOTEMPTY),
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
            Ok(())
        }
    }
}

/// Resolves a path with lookups, as the kernel does.
async fn resolve(fs: &Fs, p: &str) -> Result<u64, FsError> {
    let mut ino = ROOT_INO;
    for part in p.split('/') {
        ino = fs.lookup(ino, part.as_bytes()).await?.ino;
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
    let opened = fs.open(ino, flags).await?;
    let result = async {
        fs.write(opened.fh, 0, data)?;
        fs.flush(opened.fh).await
    }
    .await;
    fs.release(opened.fh);
    result
}

async fn fs_apply(fs: &Fs, op: &Op) -> Result<(), FsError> {
    match op {
        Op::Restart => unreachable!("restarts are done by the test loop"),
        Op::Create(p) => {
            let (dir, name) = resolve_parent(fs, p).await?;
            let (_, opened) = fs.create(dir, name.as_bytes(), 0o644, 0o022, libc::O_WRONLY).await?;
            let result = fs.flush(opened.fh).await;
            fs.release(opened.fh);
            result
        }
        Op::Write(p, d) => write_file(fs, p, libc::O_WRONLY | libc::O_TRUNC, d).await,
        Op::Append(p, d) => write_file(fs, p, libc::O_WRONLY | libc::O_APPEND, d).await,
        Op::Truncate(p, size) => {
            let ino = resolve(fs, p).await?;
            fs.setattr(ino, SetAttr { size: Some(*size), ..Default::default() }).await.map(drop)
        }
        Op::Unlink(p) => {
            let (dir, name) = resolve_parent(fs, p).await?;
            fs.unlink(dir, name.as_bytes()).await
        }
        Op::Mkdir(p) => {
            let (dir, name) = resolve_parent(fs, p).await?;
            fs.mkdir(dir, name.as_bytes(), 0o755, 0o022).await.map(drop)
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

/// Everything visible through the filesystem, as a model.
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
            match kind {
                Kind::Dir => {
                    out.insert(p.clone(), Model::Dir);
                    pending.push((ino, p));
                }
                Kind::File => {
                    let opened = fs.open(ino, libc::O_RDONLY).await.unwrap();
                    let data = fs.read(opened.fh, 0, 1 << 20).unwrap();
                    fs.release(opened.fh);
                    assert_eq!(fs.getattr(ino, None).unwrap().size, data.len() as u64);
                    out.insert(p, Model::File(data));
                }
            }
        }
    }
    out
}

async fn start_fs(dir: &std::path::Path, max_state_size: u64) -> Arc<Fs> {
    let data = DataDir::create(dir).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listen = listener.local_addr().unwrap();
    let config = Config {
        name: "test".into(),
        listen,
        advertise: listen.to_string(),
        commit_timeout: Duration::from_secs(10),
        read_consistency: ReadConsistency::Linearizable,
        peers: Vec::new(),
        snapshot_every: 5000,
        token_file: None,
    };
    let node = Node::start(&data, config, listener).await.unwrap();
    assert!(node.wait_ready(Duration::from_secs(10)).await, "single node never became ready");
    Arc::new(Fs::new(node, FsConfig { max_state_size, uid: 0, gid: 0 }))
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
                assert_eq!(snapshot(&fs).await, model, "tree after step {step}: {op:?}");
            }
            fs.node().shutdown().await;
        });
    }
}

#[test]
fn oversized_write_spoils_the_handle_and_keeps_the_old_content() {
    with_fs(8, |fs| async move {
        write_file(&fs, "x", libc::O_WRONLY, b"").await.unwrap_err(); // missing: ENOENT
        let (_, o) = fs.create(ROOT_INO, b"x", 0o644, 0, libc::O_WRONLY).await.unwrap();
        fs.write(o.fh, 0, b"old").unwrap();
        fs.flush(o.fh).await.unwrap();
        fs.release(o.fh);
        let ino = resolve(&fs, "x").await.unwrap();
        let o = fs.open(ino, libc::O_WRONLY | libc::O_TRUNC).await.unwrap();
        assert_eq!(fs.write(o.fh, 0, b"123456789").unwrap_err().errno(), libc::EFBIG);
        assert_eq!(fs.write(o.fh, 0, b"1").unwrap_err().errno(), libc::EFBIG, "spoiled");
        assert_eq!(fs.flush(o.fh).await.unwrap_err().errno(), libc::EFBIG, "spoiled");
        fs.release(o.fh);
        assert_eq!(snapshot(&fs).await.get("x"), Some(&Model::File(b"old".to_vec())));
    });
}

#[test]
fn exclusive_create_and_control_directory() {
    with_fs(1 << 20, |fs| async move {
        let excl = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
        let (_, o) = fs.create(ROOT_INO, b"lock", 0o644, 0, excl).await.unwrap();
        fs.release(o.fh);
        let err = fs.create(ROOT_INO, b"lock", 0o644, 0, excl).await.unwrap_err();
        assert_eq!(err.errno(), libc::EEXIST);
        let err = fs.create(ROOT_INO, CONTROL_DIR.as_bytes(), 0o644, 0, libc::O_WRONLY).await.unwrap_err();
        assert_eq!(err.errno(), libc::EACCES);
        let err = fs.create(CONTROL_INO, b"x", 0o644, 0, libc::O_WRONLY).await.unwrap_err();
        assert_eq!(err.errno(), libc::EACCES);
        assert_eq!(fs.open(STATUS_INO, libc::O_WRONLY).await.unwrap_err().errno(), libc::EACCES);
        let status = fs.open(STATUS_INO, libc::O_RDONLY).await.unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&fs.read(status.fh, 0, 1 << 16).unwrap()).unwrap();
        assert_eq!(json["ready"], true);
        assert_eq!(json["role"], "leader");
        let long = vec![b'x'; 256];
        assert_eq!(fs.mkdir(ROOT_INO, &long, 0o755, 0).await.unwrap_err().errno(), libc::ENAMETOOLONG);
    });
}

#[test]
fn committed_states_survive_a_restart_of_the_node() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let ops = [
            Op::Mkdir("a".into()),
            Op::Create("a/b".into()),
            Op::Write("a/b".into(), b"kept".to_vec()),
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
        assert_eq!(snapshot(&fs).await, model);
        fs_apply(&fs, &Op::Append("c/b".into(), b"+more".to_vec())).await.unwrap();
        let mut expected = model.clone();
        model_apply(&mut expected, &Op::Append("c/b".into(), b"+more".to_vec())).unwrap();
        assert_eq!(snapshot(&fs).await, expected, "and it keeps committing");
        fs.node().shutdown().await;
    });
}
