//! Replication over real processes, real mounts and loopback gRPC (DESIGN §1.2–1.3, issue 3): three
//! `lightchain mount` members of one static cluster, each with its own data directory and mountpoint.
//!
//! One test per scenario of issue 3: read-your-write across nodes, concurrent writers converging on one
//! chain, racing `O_EXCL` creates, `kill -9` of the leader, loss of the quorum, catch-up by snapshot, and a
//! member that lost its data directory. Every commit result is observed explicitly (`close(2)` on a raw
//! fd); waits are polls under a deadline, never fixed sleeps.

mod common;

use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;

/// Extra time allowed beyond `--commit-timeout` for a failing commit (FUSE round trips, a loaded machine).
const COMMIT_MARGIN: Duration = Duration::from_secs(5);

fn cluster() -> Cluster {
    Cluster::start(3, ClusterOpts::default())
}

/// One change whose syscall returned 0, to be found in the chain afterwards.
#[derive(Clone, Debug)]
enum Acked {
    Put { id: String, content: String },
    Rename { from: String, to: String },
    Delete { id: String },
}

/// Asserts every acknowledged change is in member `i`'s chain with outcome ok. On failure, shows every
/// transaction that names a missing change's states (whatever its outcome) and keeps the data.
#[track_caller]
fn assert_all_in_chain(c: &Cluster, i: usize, blocks: &[serde_json::Value], acked: &[Acked]) {
    let ix = ChainIndex::from_blocks(blocks);
    let mut missing = Vec::new();
    for a in acked {
        let found = match a {
            Acked::Put { id, content } => ix.puts.contains(&(id.clone(), content.clone())),
            Acked::Rename { from, to } => ix.renames.contains(&(from.clone(), to.clone())),
            Acked::Delete { id } => ix.deletes.contains(id),
        };
        if !found {
            missing.push(a.clone());
        }
    }
    if missing.is_empty() {
        return;
    }
    let mut related = String::new();
    for a in missing.iter().take(3) {
        let (ids, needle) = match a {
            Acked::Put { id, content } => (vec![id.as_str()], Some(content.as_str())),
            Acked::Rename { from, to } => (vec![from.as_str(), to.as_str()], None),
            Acked::Delete { id } => (vec![id.as_str()], None),
        };
        related.push_str(&format!("transactions naming {ids:?}:\n"));
        for b in blocks {
            for tx in b["txs"].as_array().into_iter().flatten() {
                let text = tx.to_string();
                let names = ids.iter().any(|id| text.contains(&format!("\"{id}\"")));
                let holds = needle.is_some_and(|n| json_contains_str(tx, n));
                if names || holds {
                    related.push_str(&format!("  height {}: {text}\n", b["height"]));
                }
            }
        }
    }
    let kept = c.keep_for_debugging();
    panic!(
        "member {i}: {} of {} acknowledged changes are not in the chain (data kept in {}), e.g. {:?}\n{related}",
        missing.len(),
        acked.len(),
        kept.display(),
        &missing[..missing.len().min(10)]
    );
}

/// `open(O_WRONLY|O_CREAT|O_TRUNC)` + write + `close`, every step's result observed.
fn try_put(path: &Path, content: &str) -> Result<(), Step> {
    write_with_flags(path, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, content.as_bytes())
}

// ----- 1. read-your-write across nodes -----

#[test]
fn write_on_one_node_is_readable_on_the_others_right_after_close() {
    let c = cluster();
    fs::create_dir(c.path(0, "rw")).expect("mkdir rw on member 0");
    // A directory made on member 0 is visible on the others at once.
    for r in 1..3 {
        assert!(
            c.path(r, "rw").is_dir(),
            "rw/ made on member 0 is not a directory on member {r} right after mkdir returned"
        );
    }
    for round in 0..9usize {
        let w = round % 3;
        // Overwrite one state (the readers have read the previous version: no stale cache may hide this
        // one) and create a new one (a negative lookup must not be served from a stale replica).
        let content = format!("round {round} written on member {w}\n");
        put(&c.path(w, "rw/same"), content.as_bytes());
        let fresh = format!("fresh state of round {round}\n");
        put(&c.path(w, &format!("rw/new{round}")), fresh.as_bytes());
        for r in (0..3).filter(|r| *r != w) {
            assert_eq!(
                read_string(&c.path(r, "rw/same")),
                content,
                "round {round}: member {r} did not see member {w}'s overwrite right after its close returned"
            );
            assert_eq!(
                read_string(&c.path(r, &format!("rw/new{round}"))),
                fresh,
                "round {round}: member {r} did not see the state member {w} just created"
            );
        }
    }
    let live = c.all();
    c.wait_converged(&live);
    c.wait_states_identical(&live);
}

// ----- 2. concurrent writers on all nodes -----

#[test]
fn concurrent_writers_on_all_nodes_converge_on_one_chain() {
    let c = cluster();
    for d in ["own", "shared", "tmp"] {
        fs::create_dir(c.path(0, d)).unwrap_or_else(|e| panic!("mkdir {d}: {e}"));
    }
    let run_for = Duration::from_secs(4);
    let start = Instant::now();
    let barrier = Arc::new(Barrier::new(3));
    let writers: Vec<_> = (0..3)
        .map(|k| {
            let mnt = c.node(k).mount();
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || -> (Vec<Acked>, Vec<String>, usize) {
                let p = |rel: &str| mnt.join(rel);
                let mut acked = Vec::new();
                // Failures that a healthy cluster must never produce.
                let mut bad = Vec::new();
                // Expected losses of races on shared states (ENOENT after another member's delete).
                let mut lost_races = 0usize;
                barrier.wait();
                let mut i = 0usize;
                while start.elapsed() < run_for {
                    let cycle = i / 5;
                    match i % 5 {
                        // A state only this member touches.
                        0 => {
                            let id = format!("own/n{k}-{i}");
                            let content = format!("own state n{k} i{i}\n");
                            match try_put(&p(&id), &content) {
                                Ok(()) => acked.push(Acked::Put { id, content }),
                                Err(e) => bad.push(format!("put {id}: {e:?}")),
                            }
                        }
                        // States every member writes (last writer wins, in chain order). Nobody deletes
                        // them: a put whose file is removed while open commits nothing and returns 0, like a
                        // write to an unlinked file (docs/SEMANTICS.md), so it could not be checked here.
                        1 => {
                            let id = format!("shared/s{}", cycle % 3);
                            let content = format!("shared state n{k} i{i}\n");
                            match try_put(&p(&id), &content) {
                                Ok(()) => acked.push(Acked::Put { id, content }),
                                Err(e) => bad.push(format!("put {id}: {e:?}")),
                            }
                        }
                        // Write a temp file, then rename it over a shared state (the atomic-replace idiom).
                        2 => {
                            let tmp = format!("tmp/n{k}-{i}");
                            let to = format!("shared/r{}", cycle % 2);
                            let content = format!("renamed state n{k} i{i}\n");
                            match try_put(&p(&tmp), &content) {
                                Ok(()) => {
                                    acked.push(Acked::Put { id: tmp.clone(), content });
                                    match fs::rename(p(&tmp), p(&to)) {
                                        Ok(()) => acked.push(Acked::Rename { from: tmp, to }),
                                        Err(e) => bad.push(format!("rename {tmp} -> {to}: {e}")),
                                    }
                                }
                                Err(e) => bad.push(format!("put {tmp}: {e:?}")),
                            }
                        }
                        // Delete every other own state written in this cycle.
                        3 => {
                            if cycle.is_multiple_of(2) {
                                let id = format!("own/n{k}-{}", i - 3);
                                match fs::remove_file(p(&id)) {
                                    Ok(()) => acked.push(Acked::Delete { id }),
                                    Err(e) => bad.push(format!("unlink {id}: {e}")),
                                }
                            }
                        }
                        // Delete a shared state that renames replace: members race, the losers get ENOENT.
                        _ => {
                            let id = format!("shared/r{}", (cycle + k) % 2);
                            match fs::remove_file(p(&id)) {
                                Ok(()) => acked.push(Acked::Delete { id }),
                                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => lost_races += 1,
                                Err(e) => bad.push(format!("unlink {id}: {e}")),
                            }
                        }
                    }
                    i += 1;
                }
                (acked, bad, lost_races)
            })
        })
        .collect();

    let mut acked = Vec::new();
    let mut bad = Vec::new();
    for (k, w) in writers.into_iter().enumerate() {
        let (a, b, lost) = w.join().expect("writer thread panicked");
        eprintln!(
            "member {k}: {} acknowledged changes, {} unexpected failures, {lost} lost races (ENOENT)",
            a.len(),
            b.len()
        );
        acked.extend(a);
        bad.extend(b.into_iter().map(|x| format!("member {k}: {x}")));
    }
    assert!(
        bad.is_empty(),
        "operations failed on a healthy cluster ({} of them): {:#?}",
        bad.len(),
        &bad[..bad.len().min(20)]
    );
    assert!(acked.len() >= 30, "only {} changes were acknowledged in {run_for:?}", acked.len());

    let live = c.all();
    let (height, hash) = c.wait_converged(&live);
    eprintln!("converged at height {height}, head {hash}");
    for i in live.iter().copied() {
        let blocks = c.log_blocks(i);
        let head = assert_full_chain(&blocks, &format!("member {i}"));
        assert_eq!(
            head,
            (height, hash.clone()),
            "member {i}: log --json ends elsewhere than the status head"
        );
        assert_all_in_chain(&c, i, &blocks, &acked);
    }
    c.wait_states_identical(&live);
    c.assert_verify(&live);
    // Every mount shows the same tree, with the content `states/` holds.
    let names = list_dir(&c.node(0).state_path("shared"));
    for i in live.iter().copied() {
        assert_eq!(
            list_dir(&c.path(i, "shared")),
            names,
            "member {i}'s mount lists shared/ differently from states/"
        );
        for n in &names {
            let want = c.node(0).state_file(&format!("shared/{n}")).unwrap();
            assert_eq!(
                read(&c.path(i, &format!("shared/{n}"))),
                want,
                "member {i}: shared/{n} differs from states/"
            );
        }
    }
}

// ----- 3. racing exclusive creates -----

#[test]
fn exclusive_create_raced_from_all_nodes_has_exactly_one_winner() {
    let c = cluster();
    fs::create_dir(c.path(0, "locks")).expect("mkdir locks");
    for round in 0..5 {
        let rel = format!("locks/lock{round}");
        let barrier = Arc::new(Barrier::new(3));
        let racers: Vec<_> = (0..3)
            .map(|k| {
                let path = c.path(k, &rel);
                let barrier = Arc::clone(&barrier);
                thread::spawn(move || -> Result<(), i32> {
                    barrier.wait();
                    let fd = open_raw(&path, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o644)
                        .map_err(|e| e.raw_os_error().unwrap_or(-1))?;
                    let content = format!("held by member {k}\n");
                    let written = write_all_raw(fd, content.as_bytes());
                    let closed = close_raw(fd);
                    written.map_err(|e| -1000 - e.raw_os_error().unwrap_or(0))?;
                    closed.map_err(|e| -2000 - e.raw_os_error().unwrap_or(0))
                })
            })
            .collect();
        let results: Vec<Result<(), i32>> = racers.into_iter().map(|t| t.join().unwrap()).collect();
        let shown: Vec<String> = results
            .iter()
            .map(|r| match r {
                Ok(()) => "created".to_string(),
                Err(e) if *e <= -2000 => format!("close failed: {}", errno_name(-2000 - e)),
                Err(e) if *e <= -1000 => format!("write failed: {}", errno_name(-1000 - e)),
                Err(e) => format!("open failed: {}", errno_name(*e)),
            })
            .collect();
        let winners: Vec<usize> = (0..3).filter(|k| results[*k].is_ok()).collect();
        assert_eq!(
            winners.len(),
            1,
            "round {round}: {} racers created {rel} exclusively: {shown:?}",
            winners.len()
        );
        for k in (0..3).filter(|k| !winners.contains(k)) {
            assert_eq!(
                results[k],
                Err(libc::EEXIST),
                "round {round}: the loser on member {k} got {} instead of EEXIST (all: {shown:?})",
                shown[k]
            );
        }
        let winner = winners[0];
        let want = format!("held by member {winner}\n");
        for k in 0..3 {
            assert_eq!(
                read_string(&c.path(k, &rel)),
                want,
                "round {round}: member {k} does not show the winner's lock file"
            );
        }
    }
    let live = c.all();
    c.wait_converged(&live);
    let ix = ChainIndex::from_blocks(&c.log_blocks(0));
    for round in 0..5 {
        let id = format!("locks/lock{round}");
        let n = ix.creates.iter().filter(|(x, excl)| *x == id && *excl).count();
        assert_eq!(n, 1, "the chain holds {n} successful exclusive creates of {id}");
    }
    c.wait_states_identical(&live);
}

// ----- 4. kill -9 of the leader during a write loop -----

/// Results of one member's write loop.
#[derive(Default)]
struct LoopLog {
    /// Acknowledged puts: (when close returned, state id, content).
    acked: Vec<(Instant, String, String)>,
    /// Failures: (when, description, errno).
    failed: Vec<(Instant, String, i32)>,
}

#[test]
fn kill9_of_the_leader_fails_over_and_keeps_every_acknowledged_write() {
    let mut c = cluster();
    fs::create_dir(c.path(0, "loop")).expect("mkdir loop");
    let leader = c.wait_leader(&c.all());
    let survivors: Vec<usize> = c.all().into_iter().filter(|i| *i != leader).collect();
    eprintln!("leader is member {leader} (node {})", c.ids[leader]);

    let stop = Arc::new(AtomicBool::new(false));
    let logs: Vec<Arc<Mutex<LoopLog>>> = (0..3).map(|_| Arc::default()).collect();
    let writers: Vec<_> = (0..3)
        .map(|k| {
            let mnt = c.node(k).mount();
            let (stop, log) = (Arc::clone(&stop), Arc::clone(&logs[k]));
            thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let id = format!("loop/n{k}-{i}");
                    let content = format!("loop write {i} on member {k}\n");
                    match try_put(&mnt.join(&id), &content) {
                        Ok(()) => log.lock().unwrap().acked.push((Instant::now(), id, content)),
                        Err(e) => {
                            let errno = e.errno();
                            log.lock().unwrap().failed.push((Instant::now(), format!("{id}: {e:?}"), errno));
                            if errno == libc::ENOTCONN || errno == libc::ECONNABORTED {
                                return; // this member's mount is dead: it was killed
                            }
                            thread::sleep(Duration::from_millis(50));
                        }
                    }
                    i += 1;
                }
            })
        })
        .collect();
    let count_after =
        |k: usize, t: Instant| logs[k].lock().unwrap().acked.iter().filter(|(at, _, _)| *at > t).count();
    let wait_for = |what: &str, cond: &dyn Fn() -> bool| {
        let deadline = Instant::now() + POLL_TIMEOUT;
        while !cond() {
            if Instant::now() > deadline {
                stop.store(true, Ordering::SeqCst);
                panic!("timed out after {POLL_TIMEOUT:?} waiting for {what}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    };
    let t0 = Instant::now() - Duration::from_secs(1);
    wait_for("5 acknowledged writes on every member before the kill", &|| {
        (0..3).all(|k| count_after(k, t0) >= 5)
    });

    let killed_at = Instant::now();
    c.kill9(leader);
    let new_leader = c.wait_leader(&survivors);
    let election = killed_at.elapsed();
    assert_ne!(new_leader, leader);
    assert!(election < Duration::from_secs(10), "the survivors took {election:?} to agree on a new leader");
    eprintln!("new leader member {new_leader} known on both survivors {election:?} after the kill");
    wait_for("5 acknowledged writes on each survivor after the kill", &|| {
        survivors.iter().all(|&k| count_after(k, killed_at) >= 5)
    });
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().expect("writer thread panicked");
    }

    let mut acked = Vec::new();
    for (k, log) in logs.iter().enumerate().take(3) {
        let log = log.lock().unwrap();
        let resumed = log
            .acked
            .iter()
            .find(|(at, _, _)| *at > killed_at)
            .map(|(at, _, _)| at.duration_since(killed_at));
        eprintln!(
            "member {k}: {} acknowledged, {} failed, first acknowledgement after the kill: {resumed:?}; failures: {:?}",
            log.acked.len(),
            log.failed.len(),
            log.failed.iter().map(|(_, d, _)| d).collect::<Vec<_>>()
        );
        // While the leader is gone a commit may time out (EIO, outcome unknown); nothing else is allowed.
        // The killed member's own mount answers ECONNABORTED to the request in flight when its process dies
        // (the kernel aborts the FUSE connection), then ENOTCONN.
        let allowed: &[i32] =
            if k == leader { &[libc::ENOTCONN, libc::ECONNABORTED, libc::EIO] } else { &[libc::EIO] };
        for (_, what, errno) in &log.failed {
            assert!(
                allowed.contains(errno),
                "member {k}: a write failed with {} during failover: {what}",
                errno_name(*errno)
            );
        }
        acked.extend(
            log.acked.iter().map(|(_, id, content)| Acked::Put { id: id.clone(), content: content.clone() }),
        );
    }

    // The killed member comes back on its dead mountpoint and catches up.
    c.restart(leader);
    let live = c.all();
    let (height, hash) = c.wait_converged(&live);
    eprintln!("all three converged at height {height} ({hash})");
    c.wait_states_identical(&live);
    c.assert_verify(&live);
    for i in live.iter().copied() {
        let blocks = c.log_blocks(i);
        assert_full_chain(&blocks, &format!("member {i}"));
        assert_all_in_chain(&c, i, &blocks, &acked);
    }
    // The restarted member serves every acknowledged write through its mount, and takes writes again.
    for a in &acked {
        if let Acked::Put { id, content } = a {
            assert_eq!(&read_string(&c.path(leader, id)), content, "restarted member {leader}: {id}");
        }
    }
    put(&c.path(leader, "loop/after-restart"), b"back\n");
    for k in survivors {
        assert_eq!(read_string(&c.path(k, "loop/after-restart")), "back\n");
    }
}

// ----- exactly once across failovers (issue 8) -----

/// Writers on every member while the leader is killed and restarted, twice: a write whose `close`
/// returned 0 is in every chain and served by every mount, and no request id ever applied twice
/// (retries and forwards after a failover are answered from the first application or refused as
/// expired, never applied again and never acknowledged for a write that did not happen).
#[test]
fn writes_through_followers_across_leader_restarts_apply_exactly_once() {
    let mut c = cluster();
    fs::create_dir(c.path(0, "once")).expect("mkdir once");
    let stop = Arc::new(AtomicBool::new(false));
    let logs: Vec<Arc<Mutex<LoopLog>>> = (0..3).map(|_| Arc::default()).collect();
    let writers: Vec<_> = (0..3)
        .map(|k| {
            let mnt = c.node(k).mount();
            let (stop, log) = (Arc::clone(&stop), Arc::clone(&logs[k]));
            thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let id = format!("once/n{k}-{i}");
                    let content = format!("once {i} on member {k}\n");
                    match try_put(&mnt.join(&id), &content) {
                        Ok(()) => log.lock().unwrap().acked.push((Instant::now(), id, content)),
                        Err(e) => {
                            let errno = e.errno();
                            log.lock().unwrap().failed.push((Instant::now(), format!("{id}: {e:?}"), errno));
                            // A killed member's mount is dead until it restarts on the same mountpoint.
                            thread::sleep(Duration::from_millis(50));
                        }
                    }
                    i += 1;
                }
            })
        })
        .collect();
    let acked_since = |t: Instant| {
        logs.iter()
            .map(|l| l.lock().unwrap().acked.iter().filter(|(at, _, _)| *at > t).count())
            .sum::<usize>()
    };
    let wait_for = |what: &str, cond: &dyn Fn() -> bool| {
        let deadline = Instant::now() + POLL_TIMEOUT;
        while !cond() {
            if Instant::now() > deadline {
                stop.store(true, Ordering::SeqCst);
                panic!("timed out after {POLL_TIMEOUT:?} waiting for {what}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    };
    let mut killed = Vec::new();
    for round in 0..2 {
        let t = Instant::now();
        wait_for("10 acknowledged writes", &|| acked_since(t) >= 10);
        let leader = c.wait_leader(&c.all());
        eprintln!("round {round}: killing the leader, member {leader}");
        killed.push(leader);
        c.kill9(leader);
        let survivors: Vec<usize> = c.all().into_iter().filter(|i| *i != leader).collect();
        c.wait_leader(&survivors);
        let t = Instant::now();
        wait_for("10 acknowledged writes after the kill", &|| acked_since(t) >= 10);
        c.restart(leader);
    }
    let t = Instant::now();
    wait_for("10 acknowledged writes after the last restart", &|| acked_since(t) >= 10);
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().expect("writer thread panicked");
    }

    let mut acked = Vec::new();
    for (k, log) in logs.iter().enumerate() {
        let log = log.lock().unwrap();
        eprintln!("member {k}: {} acknowledged, {} failed", log.acked.len(), log.failed.len());
        // EIO is "outcome unknown" (a timeout, or an id refused as expired); a killed member's mount
        // answers ECONNABORTED/ENOTCONN until it is back, and while the restart swaps the dead mount for
        // a new one the mountpoint is a bare directory without `once/` (ENOENT: nothing reached
        // lightchain). Nothing else, and never a silent loss.
        let allowed: &[i32] = if killed.contains(&k) {
            &[libc::ENOTCONN, libc::ECONNABORTED, libc::EIO, libc::ENOENT]
        } else {
            &[libc::EIO]
        };
        for (_, what, errno) in &log.failed {
            assert!(
                allowed.contains(errno),
                "member {k}: a write failed with {}: {what}",
                errno_name(*errno)
            );
        }
        acked.extend(
            log.acked.iter().map(|(_, id, content)| Acked::Put { id: id.clone(), content: content.clone() }),
        );
    }
    let live = c.all();
    c.wait_converged(&live);
    c.wait_states_identical(&live);
    c.assert_verify(&live);
    for i in live.iter().copied() {
        let blocks = c.log_blocks(i);
        assert_full_chain(&blocks, &format!("member {i}"));
        assert_all_in_chain(&c, i, &blocks, &acked);
        // Each request id changed the tree at most once. (A content may legitimately be put twice under
        // two ids: a member restarted while a writer had its file open inherits the descriptor, and
        // closing that copy at `exec` is a second `flush` of the same dirty handle.)
        let mut applied = HashSet::new();
        for b in &blocks {
            for tx in b["txs"].as_array().into_iter().flatten() {
                let outcome = tx["outcome"].as_str().unwrap_or("rejected");
                if outcome == "duplicate" || outcome == "expired" {
                    continue;
                }
                let r = &tx["request"];
                let key = (r["node"].as_u64(), r["incarnation"].as_u64(), r["seq"].as_u64());
                assert!(applied.insert(key), "member {i}: request {key:?} applied twice: {tx}");
            }
        }
    }
    for a in &acked {
        if let Acked::Put { id, content } = a {
            for i in live.iter().copied() {
                assert_eq!(&read_string(&c.path(i, id)), content, "member {i}: {id}");
            }
        }
    }
}

// ----- 5. loss of the quorum -----

#[test]
fn without_quorum_a_write_fails_with_eio_and_changes_nothing_then_the_cluster_heals() {
    let mut c = cluster();
    let limit = c.opts.commit_timeout_duration() + COMMIT_MARGIN;
    put(&c.path(0, "base"), b"before\n");
    let live = c.all();
    c.wait_converged(&live);
    // Keep a follower: the dead leader can commit nothing, and a follower proposes nothing itself, so a
    // failed write there must change nothing, now or after the cluster heals.
    let leader = c.wait_leader(&live);
    let survivor = (leader + 1) % 3;
    let others: Vec<usize> = live.iter().copied().filter(|i| *i != survivor).collect();
    let before = c.head(survivor);
    for &i in &others {
        c.kill9(i);
    }

    // A new state, right after the majority died.
    let started = Instant::now();
    let res = try_put(&c.path(survivor, "lost-new"), "LOST-NEW\n");
    let took = started.elapsed();
    eprintln!("write of a new state without quorum: {res:?} after {took:?}");
    match res {
        Ok(()) => panic!("a write without quorum succeeded on member {survivor}"),
        Err(e) => assert_eq!(
            e.errno(),
            libc::EIO,
            "a write without quorum failed with {} ({e:?}) instead of EIO",
            errno_name(e.errno())
        ),
    }
    assert!(
        took <= limit,
        "the write without quorum took {took:?} to fail (commit timeout {:?} + margin {COMMIT_MARGIN:?})",
        c.opts.commit_timeout_duration()
    );

    // Once the survivor knows it has no leader, an overwrite of an existing state fails too.
    let deadline = Instant::now() + POLL_TIMEOUT;
    while !c.status(survivor)["leader"].is_null() {
        assert!(
            Instant::now() < deadline,
            "member {survivor} still names a leader {POLL_TIMEOUT:?} after the majority died: {}",
            c.status(survivor)
        );
        thread::sleep(Duration::from_millis(100));
    }
    let started = Instant::now();
    let res = try_put(&c.path(survivor, "base"), "LOST-OVERWRITE\n");
    let took = started.elapsed();
    eprintln!("overwrite without quorum (no leader known): {res:?} after {took:?}");
    match res {
        Ok(()) => panic!("an overwrite without quorum succeeded on member {survivor}"),
        Err(e) => assert_eq!(
            e.errno(),
            libc::EIO,
            "an overwrite without quorum failed with {} ({e:?}) instead of EIO",
            errno_name(e.errno())
        ),
    }
    assert!(took <= limit, "the overwrite without quorum took {took:?} to fail");

    // Nothing changed on the survivor.
    assert_eq!(c.head(survivor), before, "the survivor's head moved without quorum");
    let n = c.node(survivor);
    assert_eq!(n.state_file("lost-new"), None, "states/lost-new exists on the survivor");
    assert_eq!(n.state_file("base").as_deref(), Some(&b"before\n"[..]));

    // Heal: the two come back on their dead mounts; the cluster re-forms and agrees.
    for &i in &others {
        c.restart(i);
    }
    let (height, _) = c.wait_converged(&live);
    c.wait_states_identical(&live);
    c.assert_verify(&live);
    for i in live.iter().copied() {
        let blocks = c.log_blocks(i);
        assert_full_chain(&blocks, &format!("member {i}"));
        let ix = ChainIndex::from_blocks(&blocks);
        assert!(
            !ix.all_contents.contains("LOST-NEW\n")
                && !ix.all_contents.contains("LOST-OVERWRITE\n")
                && !ix.all_ids.contains("lost-new"),
            "member {i}: a write that failed without quorum is in the chain (height {height})"
        );
        assert_eq!(read_string(&c.path(i, "base")), "before\n");
        assert!(!c.path(i, "lost-new").exists());
    }
    // Writes succeed everywhere and are seen everywhere.
    for w in live.iter().copied() {
        let rel = format!("healed-{w}");
        let content = format!("written on member {w} after healing\n");
        put(&c.path(w, &rel), content.as_bytes());
        for r in live.iter().copied() {
            assert_eq!(read_string(&c.path(r, &rel)), content, "member {r} reading {rel}");
        }
    }
}

// ----- 6. catch-up through a snapshot -----

#[test]
fn a_node_that_missed_more_than_the_kept_log_catches_up_by_snapshot_with_the_full_chain() {
    // A snapshot every 20 entries; the leader then keeps only 4 entries before it.
    let mut c = Cluster::start(3, ClusterOpts::default().snapshot_every(20));
    fs::create_dir(c.path(0, "snap")).expect("mkdir snap");
    let live = c.all();
    c.wait_converged(&live);
    let leader = c.wait_leader(&live);
    let behind = (leader + 1) % 3;
    let writers: Vec<usize> = live.iter().copied().filter(|i| *i != behind).collect();
    let log_lines_before = c.node(behind).log().lines().count();
    let stopped_at = c.head(behind).0;
    c.nodes[behind].stop();

    // ≥ 100 blocks while it is down (a new state is a create and a put), from both remaining members.
    let mut written = Vec::new();
    for i in 0..55 {
        let w = writers[i % 2];
        let rel = format!("snap/f{i:03}");
        let content = format!("state {i} written on member {w} while member {behind} was down\n");
        put(&c.path(w, &rel), content.as_bytes());
        written.push((rel, content));
    }
    let (height, _) = c.wait_converged(&writers);
    eprintln!(
        "member {behind} stopped at height {stopped_at}; the others reached {height} ({} blocks later)",
        height - stopped_at
    );
    assert!(
        height - stopped_at >= 100,
        "only {} blocks were written while member {behind} was down",
        height - stopped_at
    );

    c.restart(behind);
    let (height, hash) = c.wait_converged(&live);
    c.wait_states_identical(&live);
    c.assert_verify(&live);
    let blocks = c.log_blocks(behind);
    let head = assert_full_chain(&blocks, &format!("caught-up member {behind}"));
    assert_eq!(head, (height, hash), "member {behind}'s chain ends elsewhere");
    let ix = ChainIndex::from_blocks(&blocks);
    assert!(ix.mkdirs.contains("snap"), "member {behind}'s chain lacks the early history (mkdir snap)");
    for (rel, content) in &written {
        assert!(
            ix.puts.contains(&(rel.clone(), content.clone())),
            "member {behind}'s chain lacks the put of {rel}"
        );
        assert_eq!(&read_string(&c.path(behind, rel)), content, "member {behind} serves {rel}");
    }
    // It must really have been a snapshot: the log was purged past what it had.
    let log = c.node(behind).log();
    let since_restart: Vec<&str> = log.lines().skip(log_lines_before).collect();
    assert!(
        since_restart.iter().any(|l| l.contains("snapshot installed")),
        "member {behind} caught up without installing a snapshot (log since restart):\n{}",
        since_restart.join("\n")
    );
}

// ----- 7. a member whose data directory was lost -----

#[test]
fn a_node_restarted_with_an_empty_data_directory_is_refused_and_the_cluster_is_unharmed() {
    let mut c = cluster();
    put(&c.path(0, "kept"), b"history\n");
    let live = c.all();
    c.wait_converged(&live);
    let leader = c.wait_leader(&live);
    refuse_wiped_member(&mut c, (leader + 1) % 3);
}

/// The same for a member that joined after the others had formed the cluster, and so never took part in an
/// election: only the leader ever exchanged consensus messages with it. While it is down, the leader goes
/// down too, so the only peer it can reach is the other follower; that follower has the chain (DESIGN §5: a
/// node with an empty directory refuses to start fresh if a peer already has a genesis) and has seen the
/// member as a ready member of the cluster, so the wiped member must still be refused.
#[test]
fn a_late_joiner_restarted_with_an_empty_data_directory_is_refused() {
    let late = 2;
    let mut c = Cluster::start_with_late(3, ClusterOpts::default(), Some(late));
    put(&c.path(0, "kept"), b"history\n");
    let live = c.all();
    c.wait_converged(&live);
    assert_eq!(read_string(&c.path(late, "kept")), "history\n");
    let leader = c.wait_leader(&live);
    assert_ne!(leader, late, "the late joiner became the leader; this test needs it to be a follower");
    let follower = 3 - leader - late;
    // Every member's status shows every other member reachable and ready.
    let deadline = Instant::now() + POLL_TIMEOUT;
    loop {
        let seen = live.iter().all(|&i| {
            let s = c.status(i);
            s["members"].as_array().is_some_and(|m| {
                m.len() == 3 && m.iter().all(|x| x["reachable"] == true && x["ready"] == true)
            })
        });
        if seen {
            break;
        }
        assert!(Instant::now() < deadline, "members never all saw each other: {}", c.status(follower));
        thread::sleep(Duration::from_millis(200));
    }

    c.kill9(late);
    c.kill9(leader);
    wipe_and_expect_refusal(&mut c, late);

    // The old leader comes back; with the follower it is a majority again, and the chain is unharmed.
    c.restart(leader);
    let rest = vec![leader.min(follower), leader.max(follower)];
    let (height, hash) = c.wait_converged(&rest);
    c.wait_states_identical(&rest);
    c.assert_verify(&rest);
    for i in rest.iter().copied() {
        assert_eq!(assert_full_chain(&c.log_blocks(i), &format!("member {i}")), (height, hash.clone()));
        assert_eq!(read_string(&c.path(i, "kept")), "history\n");
    }
    put(&c.path(follower, "after"), b"still writable\n");
    assert_eq!(read_string(&c.path(leader, "after")), "still writable\n");
}

/// Kills member `lost`, empties its data directory, starts it again at its old address and asserts it is
/// refused with a clear message while the rest of the cluster is unharmed.
fn refuse_wiped_member(c: &mut Cluster, lost: usize) {
    let live = c.all();
    let rest: Vec<usize> = live.iter().copied().filter(|i| *i != lost).collect();

    // The machine dies and its disk is replaced: same address, empty data directory.
    c.kill9(lost);
    wipe_and_expect_refusal(c, lost);

    // The rest of the cluster is unharmed and still takes writes.
    let (height, hash) = c.wait_converged(&rest);
    c.wait_states_identical(&rest);
    c.assert_verify(&rest);
    for i in rest.iter().copied() {
        let head = assert_full_chain(&c.log_blocks(i), &format!("member {i}"));
        assert_eq!(head, (height, hash.clone()));
        assert_eq!(read_string(&c.path(i, "kept")), "history\n");
    }
    put(&c.path(rest[0], "after"), b"still writable\n");
    assert_eq!(read_string(&c.path(rest[1], "after")), "still writable\n");
    put(&c.path(rest[1], "after"), b"from the other one\n");
    assert_eq!(read_string(&c.path(rest[0], "after")), "from the other one\n");
    c.wait_converged(&rest);
    c.assert_verify(&rest);
}

/// Empties the data directory of the dead member `lost`, starts it again at its old address and asserts it
/// exits non-zero saying its data was lost (and never becomes ready under its old identity).
fn wipe_and_expect_refusal(c: &mut Cluster, lost: usize) {
    let data = c.node(lost).data();
    fs::remove_dir_all(&data).expect("wipe data dir");
    fs::create_dir(&data).expect("recreate data dir");
    let log_lines_before = c.node(lost).log().lines().count();
    c.nodes[lost].spawn();
    let deadline = Instant::now() + POLL_TIMEOUT;
    let status = loop {
        if let Some(status) = c.nodes[lost].wait_exit(Duration::from_millis(200)) {
            break status;
        }
        let since = c.node(lost).log().lines().skip(log_lines_before).collect::<Vec<_>>().join("\n");
        assert!(
            !since.contains("lightchain ready"),
            "member {lost} rejoined under its old identity (node {}) with an empty data directory, \
             instead of being refused:\n{since}",
            c.ids[lost]
        );
        assert!(
            Instant::now() < deadline,
            "member {lost} with an empty data directory neither exited nor became ready in {POLL_TIMEOUT:?}:\n{since}"
        );
    };
    let log = c.node(lost).log();
    let since: String = log.lines().skip(log_lines_before).collect::<Vec<_>>().join("\n");
    assert!(!status.success(), "member {lost} with an empty data directory exited 0:\n{since}");
    assert!(
        since.contains("data directory is new") || since.contains("must not rejoin"),
        "member {lost} was refused without saying its data was lost:\n{since}"
    );
    eprintln!("refused with {status:?}");
}

// ----- owners, symlinks and times on every member -----

#[test]
fn owners_symlinks_and_times_made_on_one_member_show_on_the_others() {
    let c = cluster();
    let script =
        "mkdir -m 1777 shared && echo x > shared/f && chown 1000:2000 shared/f && chmod 4750 shared/f \
                  && ln -s f shared/link && touch -h -d @1234567890.5 shared/link \
                  && touch -d '2020-01-01 00:00:00 UTC' shared/f && cp -a shared copy";
    assert_ok(&c.node(0).sh(script), "owners, links and times on member 0");
    let stat = "TZ=UTC stat -c '%n %F %u %g %a %x %y %z' shared shared/f shared/link copy/f copy/link \
                && readlink shared/link copy/link";
    let on_0 = c.node(0).sh(stat);
    assert_ok(&on_0, "stat on member 0");
    assert!(on_0.1.contains("shared/f regular file 1000 2000 4750"), "{}", on_0.1);
    assert!(on_0.1.contains("shared/link symbolic link 0 0 777"), "{}", on_0.1);
    assert!(on_0.1.contains("2020-01-01 00:00:00.000000000 +0000"), "{}", on_0.1);
    assert!(
        on_0.1.contains("2009-02-13 23:31:30.500000000 +0000"),
        "touch -h sets the link's own times: {}",
        on_0.1
    );
    for r in 1..3 {
        let seen = c.node(r).sh(stat);
        assert_ok(&seen, &format!("stat on member {r}"));
        assert_eq!(seen.1, on_0.1, "member {r} shows what member 0 made");
    }
    let live = c.all();
    c.wait_converged(&live);
    c.wait_states_identical(&live);
}

// ----- 8. divergence is loud (DESIGN §1.5) -----

/// Member 2 builds a different block on purpose (the debug-only fault hook `LIGHTCHAIN_TEST_DIVERGE_AT`):
/// every member's `lightchain status` marks it `DIVERGED` and exits non-zero, its mount refuses reads and
/// writes with `EIO` (its `.lightchain/status` says why), and the other two keep serving.
#[test]
fn a_member_that_builds_a_different_block_is_marked_diverged_and_stops_serving() {
    const AT: u64 = 4;
    let opts = ClusterOpts {
        member_env: vec![(2, "LIGHTCHAIN_TEST_DIVERGE_AT".into(), AT.to_string())],
        ..ClusterOpts::default()
    };
    let c = Cluster::start(3, opts);
    let bad = c.ids[2];
    // Write past the height on a good member, each put confirmed by close(2).
    for n in 0..(AT + 4) {
        put(&c.path(0, &format!("d{n}")), format!("content {n}\n").as_bytes());
    }
    assert!(c.head(0).0 > AT, "member 0 did not get past height {AT}: {:?}", c.head(0));

    // Every member's view marks member 2, and only member 2, DIVERGED and exits non-zero.
    for i in c.all() {
        let deadline = Instant::now() + POLL_TIMEOUT;
        loop {
            let (code, out, err) = c.cli(&["status", "--addr", &c.addrs[i]]);
            let marked: Vec<&str> = out.lines().filter(|l| l.contains("DIVERGED")).collect();
            let member_line = |id: u64| marked.iter().any(|l| l.trim_start().starts_with(&id.to_string()));
            if !code.success() && member_line(bad) {
                assert_eq!(code.code(), Some(3), "status of member {i}: wrong exit code\n{out}{err}");
                for good in [c.ids[0], c.ids[1]] {
                    assert!(!member_line(good), "member {i} marks good member {good} DIVERGED:\n{out}");
                }
                break;
            }
            assert!(
                Instant::now() < deadline,
                "member {i}'s status never marked member {bad} DIVERGED within {POLL_TIMEOUT:?} (exit {code:?}):\n{out}{err}"
            );
            thread::sleep(Duration::from_millis(200));
        }
        let (code, out, _) = c.cli(&["status", "--addr", &c.addrs[i], "--json"]);
        assert_eq!(code.code(), Some(3), "status --json of member {i}: {out}");
        let status: serde_json::Value = serde_json::from_str(&out).expect("status --json is JSON");
        let diverged: Vec<u64> = status["members"]
            .as_array()
            .expect("members")
            .iter()
            .filter(|m| m["diverged"] == serde_json::Value::Bool(true))
            .map(|m| m["id"].as_u64().unwrap())
            .collect();
        assert_eq!(diverged, vec![bad], "member {i}'s JSON status: {out}");
    }

    // The diverged member knows it, says so in .lightchain/status, and refuses reads and writes.
    let own = c.status(2);
    assert!(
        own["diverged"]["height"].is_u64(),
        "member 2's .lightchain/status does not say it diverged: {own}"
    );
    assert_eq!(own["ready"], serde_json::Value::Bool(false), "a diverged member is not ready: {own}");
    let refused = |what: &str, r: Result<(), Step>| match r {
        Err(step) => assert_eq!(step.errno(), libc::EIO, "{what} on the diverged member: {step:?}"),
        Ok(()) => panic!("{what} on the diverged member succeeded"),
    };
    refused("read", fs::File::open(c.path(2, "d0")).map(drop).map_err(Step::Open));
    refused("overwrite", try_put(&c.path(2, "d1"), "from the diverged member\n"));
    refused("create", try_put(&c.path(2, "new-on-diverged"), "x\n"));
    let log = c.nodes[2].log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("chain diverged from the cluster's")).collect();
    assert_eq!(lines.len(), 1, "the divergence is logged exactly once:\n{}", c.nodes[2].log_tail(40));
    for field in ["height=", "hash=", "expected="] {
        assert!(lines[0].contains(field), "the divergence log line lacks {field}: {}", lines[0]);
    }

    // The other two keep serving each other's writes.
    for (w, r) in [(0, 1), (1, 0)] {
        let content = format!("after the divergence, written on member {w}\n");
        // If member 2 led, it steps down and the others elect a leader first (a few seconds:
        // the writes in between fail with EIO, never succeed through the diverged member).
        let deadline = Instant::now() + POLL_TIMEOUT;
        while let Err(e) = try_put(&c.path(w, &format!("after{w}")), &content) {
            assert_eq!(e.errno(), libc::EIO, "{e:?}");
            assert!(
                Instant::now() < deadline,
                "no write on member {w} within {POLL_TIMEOUT:?}\n{}",
                c.nodes[2].log_tail(30)
            );
        }
        assert_eq!(read_string(&c.path(r, &format!("after{w}"))), content);
    }
    assert_eq!(read_string(&c.path(1, "d0")), "content 0\n");
}

/// The leader is the member whose chain diverges (member 2, made leader by pausing the others'
/// leaders in turn): it steps down, never campaigns again (not even when the good leader is paused
/// and an election follows), and the cluster's writes go on through a good leader, never answered
/// with the diverged member's outcomes. Before: the diverged leader kept leading and answered
/// forwarded writes with the outcomes of its own wrong apply.
#[test]
fn a_diverged_leader_steps_down_and_never_campaigns_again() {
    const AT: u64 = 30;
    let opts = ClusterOpts {
        member_env: vec![(2, "LIGHTCHAIN_TEST_DIVERGE_AT".into(), AT.to_string())],
        ..ClusterOpts::default()
    };
    let c = Cluster::start(3, opts);
    let leader_of = |live: &[usize]| c.wait_leader(live);
    let mut leader = leader_of(&c.all());
    for _ in 0..20 {
        if leader == 2 {
            break;
        }
        // Pause the leader until the other two elect one of them, then let it rejoin as a follower.
        c.nodes[leader].signal(libc::SIGSTOP);
        let others: Vec<usize> = c.all().into_iter().filter(|i| *i != leader).collect();
        let next = leader_of(&others);
        c.nodes[leader].signal(libc::SIGCONT);
        leader = next;
    }
    assert_eq!(leader, 2, "member 2 never became the leader");
    assert!(c.head(0).0 < AT, "the chain passed height {AT} before member 2 led: {:?}", c.head(0));

    // Writes through member 0 (forwarded to member 2) carry the chain past the divergence.
    let mut n = 0;
    let deadline = Instant::now() + POLL_TIMEOUT;
    while c.head(0).0 <= AT + 2 {
        assert!(Instant::now() < deadline, "the chain never got past height {AT}: {:?}", c.head(0));
        // While member 2 still leads after diverging, a write may fail (EIO); never with success
        // for content that is not in the good members' chain (checked below).
        let _ = try_put(&c.path(0, &format!("w{n}")), &format!("write {n}\n"));
        n += 1;
    }

    // It steps down: the good members agree on a good leader.
    let good = leader_of(&[0, 1]);
    assert_ne!(good, 2);
    assert!(c.status(2)["diverged"]["height"].is_u64(), "member 2 knows it diverged: {}", c.status(2));
    assert!(c.nodes[2].log().contains("steps down as leader"), "{}", c.nodes[2].log_tail(30));

    // An election with member 2 free to campaign: the good leader paused, the other good one wins.
    c.nodes[good].signal(libc::SIGSTOP);
    let other = 1 - good;
    let next = leader_of(&[other, 2]);
    c.nodes[good].signal(libc::SIGCONT);
    assert_eq!(next, other, "the diverged member must not win an election");
    let leader = leader_of(&[0, 1]);
    assert_ne!(leader, 2);

    // Writes go on, from both good members, and both hold the same chain.
    for w in [0, 1] {
        put(&c.path(w, &format!("after{w}")), b"after\n");
    }
    c.wait_converged(&[0, 1]);
    assert_eq!(read_string(&c.path(1, "after0")), "after\n");
    let refused = fs::metadata(c.path(2, "after0")).map(drop);
    assert_eq!(refused.map_err(|e| e.raw_os_error()), Err(Some(libc::EIO)), "stat on the diverged member");
}
