//! Measures lightchain at ten times the usual number of states (DESIGN §4, issue 10 item 4) and
//! prints figures; never run as a timed test.
//!
//! ```sh
//! cargo build --release && cargo run --release --example scale            # 100k states, 100k blocks
//! cargo run --release --example scale -- --states 20000 --blocks 20000    # a quicker look
//! ```
//!
//! 1. **Memory**: a single node takes `--states` states of 1 KiB (32 writers, 256 directories);
//!    its resident set is printed beside the target (twice the content plus 30 MiB), then again
//!    after a restart (the chain replayed), with how long the restart took.
//! 2. **Catch-up**: a 3-node cluster; one member is stopped (SIGTERM), the leader takes `--blocks`
//!    blocks from one writer (each close is one block of one 1 KiB state), and the stopped member
//!    is started again: the time until it has applied the leader's head (the log is purged by
//!    then, so it is a snapshot with the chain segments it lacks), and its resident set.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::{must_write_state as write_state, Mounted};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name} takes a number")))
        .unwrap_or(default)
}

/// A 1 KiB content that differs per state (so nothing compresses or deduplicates by accident).
fn content(i: usize) -> Vec<u8> {
    let mut data = format!("state {i} ").into_bytes();
    data.resize(1024, b'a' + (i % 26) as u8);
    data
}

fn memory(binary: &Path, states: usize) {
    println!("memory: one node, {states} states of 1 KiB");
    let mut node = Mounted::spawn(binary, "127.0.0.1:0", &[]);
    node.wait_ready(Duration::from_secs(60));
    let mnt = node.mnt.clone();
    for d in 0..256 {
        std::fs::create_dir(mnt.join(format!("d{d}"))).unwrap();
    }
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let writers: Vec<_> = (0..32)
        .map(|_| {
            let (next, mnt) = (next.clone(), mnt.clone());
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= states {
                    return;
                }
                write_state(&mnt.join(format!("d{}/s{i}", i % 256)), &content(i));
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let took = started.elapsed();
    let content_mib = (states * 1024) as f64 / (1 << 20) as f64;
    let target = 2.0 * content_mib + 30.0;
    println!("  written in {:.1} s ({:.0} states/s)", took.as_secs_f64(), states as f64 / took.as_secs_f64());
    println!("  content {content_mib:.1} MiB; target: resident under {target:.1} MiB");
    println!("  resident after the writes:  {:>7.1} MiB", node.rss_mib());
    node.stop();
    let started = Instant::now();
    node.start();
    node.wait_ready(Duration::from_secs(300));
    println!(
        "  resident after a restart:   {:>7.1} MiB (ready again in {:.2} s: the chain replayed)",
        node.rss_mib(),
        started.elapsed().as_secs_f64()
    );
}

fn catch_up(binary: &Path, blocks: usize) {
    println!("catch-up: three nodes; one stopped while the leader takes {blocks} blocks of one 1 KiB state");
    let token = tempfile::tempdir().unwrap();
    let mut nodes = common::static_cluster(binary, 3, &token.path().join("cluster-token"), &[]);
    let leader = nodes.iter().position(|n| n.status()["role"] == "leader").unwrap_or(0);
    let lagging = (leader + 1) % 3;
    let mnt = nodes[leader].mnt.clone();
    // The states exist before: every write the stopped node misses is one block.
    for i in 0..1000 {
        write_state(&mnt.join(format!("c{i}")), &content(i));
    }
    let before = nodes[leader].status()["head_height"].as_u64().unwrap();
    nodes[lagging].stop();
    let started = Instant::now();
    for i in 0..blocks {
        write_state(&mnt.join(format!("c{}", i % 1000)), &content(i));
    }
    let took = started.elapsed();
    let head = nodes[leader].status()["head_height"].as_u64().unwrap();
    println!(
        "  {} blocks written in {:.1} s ({:.2} ms each, with one member down)",
        head - before,
        took.as_secs_f64(),
        took.as_secs_f64() * 1e3 / blocks as f64
    );
    let started = Instant::now();
    nodes[lagging].start();
    let deadline = Instant::now() + Duration::from_secs(600);
    while nodes[lagging].status()["applied_height"].as_u64().is_none_or(|h| h < head) {
        assert!(Instant::now() < deadline, "the lagging node did not catch up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = started.elapsed();
    println!(
        "  caught up to height {head} in {:.2} s from its start ({:.0} blocks/s); target under 10 s",
        took.as_secs_f64(),
        blocks as f64 / took.as_secs_f64()
    );
    println!("  resident on the caught-up node: {:.1} MiB", nodes[lagging].rss_mib());
}

fn main() {
    let binary = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("lightchain");
    if !binary.exists() {
        eprintln!("{} is missing: run `cargo build --release` first", binary.display());
        std::process::exit(2);
    }
    memory(&binary, arg("--states", 100_000));
    println!();
    catch_up(&binary, arg("--blocks", 100_000));
}
