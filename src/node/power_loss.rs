//! Power loss at hundreds of points: a real single node (real log, chain, fsync) writes while
//! [`crashsim`](crate::store::crashsim) records every change to its data directory; then, for
//! each cut point, the files a power cut there may leave are written out (unsynced writes
//! dropped, torn or zero-filled, unsynced names undone, `states/` damaged at random), a node
//! starts on them, and every write acknowledged before the cut must be there, a new write must
//! commit, and `lightchain verify` must pass once `states/` is repaired.
//!
//! `LIGHTCHAIN_CRASH_CUTS` sets the number of cut points (default 200), `LIGHTCHAIN_CRASH_SEED`
//! the seed (printed).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};

use crate::chain::{EntryKind, StateId, TxOp};
use crate::node::{Config, Node};
use crate::store::crashsim::{self, Recording, Trace};
use crate::store::DataDir;

/// What one state was set to, in order, with the trace position at which each was
/// acknowledged (`None`: removed).
type History = Vec<(usize, Option<Vec<u8>>)>;

fn put(id: &StateId, content: Vec<u8>) -> TxOp {
    TxOp::Put { id: id.clone(), content: content.into(), uid: 0, gid: 0, ino: None }
}

async fn start(dir: &Path) -> Arc<Node> {
    let data = DataDir::create(dir).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = Config::single_node_for_tests(listener.local_addr().unwrap());
    // The same name at every start (a node's id derives from it), whatever port is free now.
    config.advertise = "127.0.0.1:9".into();
    // Snapshots (and the purges they allow) happen during the run too.
    config.snapshot_every = 16;
    let node = Node::start(&data, config, listener).await.unwrap_or_else(|e| panic!("start: {e}"));
    assert!(node.wait_ready(Duration::from_secs(20)).await, "the node never became ready");
    node
}

/// Runs the workload under a recording: `writers` writers, each setting its own states in turn
/// (new files, overwrites, removals), and returns the trace and every state's history.
async fn record(root: &Path, writers: usize, rounds: usize) -> (Trace, BTreeMap<StateId, History>) {
    let recording = Recording::start(root);
    let node = start(root).await;
    let histories = Arc::new(Mutex::new(BTreeMap::<StateId, History>::new()));
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (node, histories) = (node.clone(), histories.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(w as u64);
            for round in 0..rounds {
                let id = StateId::parse(&format!("w{w}-{}", round % 7)).unwrap();
                let removes = round % 5 == 4;
                let content = format!("writer {w} round {round} ").repeat(rng.gen_range(1..150)).into_bytes();
                let op = if removes { TxOp::Delete { id: id.clone() } } else { put(&id, content.clone()) };
                let existed = histories
                    .lock()
                    .unwrap()
                    .get(&id)
                    .and_then(|h| h.last())
                    .is_some_and(|(_, v)| v.is_some());
                if removes && !existed {
                    continue;
                }
                node.propose(op).await.unwrap_or_else(|e| panic!("write {id}: {e}"));
                let at = crashsim::position();
                histories.lock().unwrap().entry(id).or_default().push((at, (!removes).then_some(content)));
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    node.shutdown().await;
    drop(node);
    // Let the threads that write behind (committed.json) see the store is gone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let trace = recording.finish();
    trace.check_against(root).unwrap_or_else(|e| panic!("the crash model missed a change: {e}"));
    let histories = std::mem::take(&mut *histories.lock().unwrap());
    (trace, histories)
}

/// The values a state may hold after a cut at `cut`: the last one acknowledged before it, or
/// the next (it may have been durable before it was acknowledged); before the first
/// acknowledgement, nothing or the first value. (Each state has one writer, which waits for
/// each write before the next.)
fn allowed(history: &History, cut: usize) -> Vec<Option<&[u8]>> {
    let acked = history.iter().rposition(|(at, _)| *at <= cut);
    let value = |i: usize| history.get(i).map(|(_, v)| v.as_deref());
    match acked {
        Some(i) => [value(i), value(i + 1)].into_iter().flatten().collect(),
        None => [Some(None), value(0)].into_iter().flatten().collect(),
    }
}

/// Makes `states/` of `image` a damaged copy of the final one: files kept, emptied to zeros
/// of the same size, cut in half or removed.
fn damaged_states(from: &Path, to: &Path, rng: &mut impl Rng) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type().unwrap().is_dir() {
            damaged_states(&src, &dst, rng);
            continue;
        }
        let bytes = std::fs::read(&src).unwrap();
        match rng.gen_range(0..4) {
            0 => std::fs::write(&dst, &bytes).unwrap(),
            1 => std::fs::write(&dst, vec![0u8; bytes.len()]).unwrap(),
            2 => std::fs::write(&dst, &bytes[..bytes.len() / 2]).unwrap(),
            _ => {}
        }
    }
}

#[test]
fn after_a_power_cut_anywhere_the_node_starts_keeps_every_acknowledged_write_and_verifies() {
    let cuts: usize = std::env::var("LIGHTCHAIN_CRASH_CUTS").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    let seed: u64 = std::env::var("LIGHTCHAIN_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("power loss: {cuts} cut points, seed {seed} (LIGHTCHAIN_CRASH_CUTS, LIGHTCHAIN_CRASH_SEED)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let debug = std::env::var_os("LIGHTCHAIN_CRASH_DEBUG").is_some();
    if debug {
        let _ = tracing_subscriber::fmt().with_env_filter("info").with_test_writer().try_init();
    }
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().to_owned();
    // With LIGHTCHAIN_CRASH_DEBUG the images are kept, and the nodes log.
    let _tmp = if debug {
        eprintln!("power loss: keeping {}", tmp.keep().display());
        None
    } else {
        Some(tmp)
    };
    let root = base.join("data");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (trace, histories) = rt.block_on(record(&root, 3, 80));
    eprintln!("power loss: {} recorded changes, {} states", trace.len(), histories.len());
    for n in 0..cuts {
        let cut = rng.gen_range(0..=trace.len());
        let image = base.join(format!("cut-{n}"));
        let damage = trace.crash_image(cut, &mut rng, &image).unwrap();
        damaged_states(&root.join("states"), &image.join("states"), &mut rng);
        let context = format!("cut {n} at change {cut} of {} (seed {seed}, {damage:?})", trace.len());
        if debug {
            eprintln!("{context}: {}", image.display());
        }
        rt.block_on(async {
            let node = start(&image).await;
            node.read_barrier().await.unwrap_or_else(|e| panic!("{context}: read barrier: {e}"));
            {
                let replica = node.replica();
                for (id, history) in &histories {
                    let got = replica.tree.get(id).map(|e| match &e.kind {
                        EntryKind::File(c) => c.as_bytes().to_vec(),
                        other => panic!("{context}: {id} is {other:?}"),
                    });
                    let allowed = allowed(history, cut);
                    assert!(
                        allowed.contains(&got.as_deref()),
                        "{context}: {id} holds {:?} bytes; allowed: {:?}",
                        got.as_ref().map(|g| g.len()),
                        allowed.iter().map(|a| a.map(|v| v.len())).collect::<Vec<_>>()
                    );
                }
            }
            let after = StateId::parse("after-the-cut").unwrap();
            let committed = node
                .propose(put(&after, b"still writable\n".to_vec()))
                .await
                .unwrap_or_else(|e| panic!("{context}: a write after the restart: {e}"));
            assert!(node.wait_mirrored(committed.height, None).await, "{context}: states/ never caught up");
            node.shutdown().await;
        });
        if let Some(problem) = crate::cli::verify::problems(&image) {
            panic!("{context}: verify: {problem}");
        }
        if !debug {
            // The mirror may still be finishing a round; the temporary directory goes at the end.
            let _ = std::fs::remove_dir_all(&image);
        }
    }
}
