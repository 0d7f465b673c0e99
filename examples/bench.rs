//! Benchmarks lightchain through real mounts of the real binary and prints figures.
//!
//! ```sh
//! cargo build --release && cargo run --release --example bench
//! ```
//!
//! Measures, on a single-node cluster: write latency (`open`+`write`+`close` of a 100-byte
//! state) with 1 writer, throughput and latency with 32 concurrent writers, linearizable and
//! local hot reads (`open`+`read`+`close`) through the mount beside the same read of the plain
//! file in `states/`, a 1 MiB read both ways, and, as the floor, a plain
//! `open`+`write`+`fsync`+`close` on the same disk; on a 3-node cluster, the same writes and
//! reads, and 1 MiB states (random and all-zero bytes) written by 1 and by 8 writers, with the
//! bytes the consensus log and the chain hold per byte written. Compare figures within one run.
//!
//! `cargo run --release --example bench -- large` runs only the 1 MiB section, `-- reads` only
//! the local reads.

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::{must_write_state as write_state, Mounted};

/// A single node, ready.
fn single(binary: &Path, extra: &[&str]) -> Mounted {
    let node = Mounted::spawn(binary, "127.0.0.1:0", extra);
    node.wait_ready(Duration::from_secs(60));
    node
}

/// Three nodes on loopback with the same peer list, ready.
fn cluster(binary: &Path, extra: &[&str]) -> (Vec<Mounted>, tempfile::TempDir) {
    let token = tempfile::tempdir().expect("tempdir");
    (common::static_cluster(binary, 3, &token.path().join("cluster-token"), extra), token)
}

fn write_fsync_plain(path: &Path, data: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

fn read_all(path: &Path, buf: &mut Vec<u8>) {
    buf.clear();
    std::fs::File::open(path).unwrap().read_to_end(buf).unwrap();
}

struct Figures(Vec<Duration>);

impl Figures {
    fn time(n: usize, mut f: impl FnMut(usize)) -> Figures {
        let mut samples = Vec::with_capacity(n);
        for i in 0..n {
            let start = Instant::now();
            f(i);
            samples.push(start.elapsed());
        }
        Figures(samples)
    }
    fn pct(&self, p: f64) -> Duration {
        let mut s = self.0.clone();
        s.sort();
        s[((s.len() as f64 - 1.0) * p).round() as usize]
    }
    fn line(&self, what: &str) {
        println!("{what:<58} p50 {:>9.1} µs   p99 {:>9.1} µs", us(self.pct(0.5)), us(self.pct(0.99)));
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn concurrent_writes(mnt: &Path, writers: usize, run_for: Duration) -> (f64, Figures) {
    concurrent_writes_of(mnt, writers, run_for, Arc::new(vec![b'x'; 100]))
}

fn concurrent_writes_of(mnt: &Path, writers: usize, run_for: Duration, data: Arc<Vec<u8>>) -> (f64, Figures) {
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let (stop, mnt, data) = (stop.clone(), mnt.to_owned(), data.clone());
            std::thread::spawn(move || {
                let mut samples = Vec::new();
                let path = mnt.join(format!("c{w}"));
                while !stop.load(Ordering::Relaxed) {
                    let start = Instant::now();
                    write_state(&path, &data);
                    samples.push(start.elapsed());
                }
                samples
            })
        })
        .collect();
    std::thread::sleep(run_for);
    stop.store(true, Ordering::Relaxed);
    let samples: Vec<Duration> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    (samples.len() as f64 / run_for.as_secs_f64(), Figures(samples))
}

/// Bytes in the files under `dir`, recursively.
fn bytes_under(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => bytes_under(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// 1 MiB states on a 3-node cluster: latency of one writer on the leader, throughput of 8
/// writers, and how many bytes the leader's consensus log and chain hold per byte written.
fn large_states(binary: &Path) {
    use rand::RngCore;
    println!("\n3-node cluster on loopback, 1 MiB states written on the leader");
    let mut random = vec![0u8; 1 << 20];
    rand::thread_rng().fill_bytes(&mut random);
    for (what, data) in [("random bytes", random), ("zero bytes", vec![0u8; 1 << 20])] {
        let (cluster, _token) = cluster(binary, &[]);
        let leader = cluster.iter().position(Mounted::is_leader).unwrap_or(0);
        let lead = &cluster[leader];
        let (raft0, chain0) = (bytes_under(&lead.data.join("raft")), bytes_under(&lead.data.join("chain")));
        let n = 50;
        Figures::time(n, |i| write_state(&lead.mnt.join(format!("big{}", i % 5)), &data))
            .line(&format!("1 MiB write, {what}, 1 writer"));
        let written = (n << 20) as f64;
        let raft = (bytes_under(&lead.data.join("raft")) - raft0) as f64 / written;
        let chain = (bytes_under(&lead.data.join("chain")) - chain0) as f64 / written;
        println!(
            "{:<58} raft log {raft:.2}×, chain {chain:.2}×",
            format!("  bytes kept per byte written ({what}):")
        );
        let (rate, figures) =
            concurrent_writes_of(&lead.mnt, 8, Duration::from_secs(5), Arc::new(data.clone()));
        figures.line(&format!("1 MiB write, {what}, 8 writers: {rate:>6.1} writes/s"));
    }
}

fn main() {
    let binary = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("lightchain");
    if !binary.exists() {
        eprintln!("{} is missing: run `cargo build --release` first", binary.display());
        std::process::exit(2);
    }
    if std::env::args().nth(1).as_deref() == Some("large") {
        large_states(&binary);
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("reads") {
        local_reads(&binary);
        return;
    }
    let data_100 = [b'a'; 100];
    println!("lightchain benchmark — single-node cluster, 100-byte states unless noted\n");

    let plain = tempfile::tempdir().unwrap();
    Figures::time(500, |i| write_fsync_plain(&plain.path().join(format!("p{}", i % 50)), &data_100))
        .line("floor: plain open+write+fsync+close (same disk)");

    println!("\nsingle-node cluster");
    let node = single(&binary, &[]);
    for i in 0..50 {
        write_state(&node.mnt.join(format!("w{i}")), &data_100);
    }
    Figures::time(2000, |i| write_state(&node.mnt.join(format!("w{}", i % 50)), &data_100))
        .line("write, 1 writer (open+write+close)");
    let (rate, figures) = concurrent_writes(&node.mnt, 32, Duration::from_secs(5));
    figures.line(&format!("write, 32 writers: {rate:>8.0} writes/s"));
    let mut buf = Vec::new();
    Figures::time(5000, |_| read_all(&node.mnt.join("w1"), &mut buf))
        .line("linearizable read (open+read+close) through the mount");
    let height: String = std::fs::read_to_string(node.mnt.join(".lightchain/status"))
        .unwrap()
        .lines()
        .find(|l| l.contains("head_height"))
        .unwrap_or_default()
        .trim()
        .to_owned();
    println!("{:<58} {height}", "chain after the write runs:");
    drop(node);

    println!("\n3-node cluster on loopback");
    let (cluster, _token) = cluster(&binary, &[]);
    let leader = cluster.iter().position(Mounted::is_leader).unwrap_or(0);
    let follower = (leader + 1) % 3;
    let (lead, foll) = (&cluster[leader], &cluster[follower]);
    for i in 0..50 {
        write_state(&lead.mnt.join(format!("w{i}")), &data_100);
    }
    Figures::time(2000, |i| write_state(&lead.mnt.join(format!("w{}", i % 50)), &data_100))
        .line("write, 1 writer on the leader");
    Figures::time(1000, |i| write_state(&foll.mnt.join(format!("w{}", i % 50)), &data_100))
        .line("write, 1 writer on a follower (forwarded)");
    let (rate, figures) = concurrent_writes(&lead.mnt, 32, Duration::from_secs(5));
    figures.line(&format!("write, 32 writers on the leader: {rate:>8.0} writes/s"));
    let (rate, figures) = concurrent_writes(&foll.mnt, 32, Duration::from_secs(5));
    figures.line(&format!("write, 32 writers on a follower: {rate:>8.0} writes/s"));
    Figures::time(3000, |_| read_all(&lead.mnt.join("w1"), &mut buf)).line("linearizable read on the leader");
    Figures::time(3000, |_| read_all(&foll.mnt.join("w1"), &mut buf))
        .line("linearizable read on a follower (read index)");
    drop(cluster);
    large_states(&binary);
    local_reads(&binary);
}

/// Hot reads in local mode through the mount, beside the same reads of the plain file.
fn local_reads(binary: &Path) {
    let data_100 = [b'a'; 100];
    let mut buf = Vec::new();
    println!("\nlocal reads (--read-consistency local, single node)");
    let node = single(binary, &["--read-consistency", "local"]);
    write_state(&node.mnt.join("hot"), &data_100);
    let big = vec![b'b'; 1 << 20];
    write_state(&node.mnt.join("big"), &big);
    let plain_hot = node.data.join("states/hot");
    let plain_big = node.data.join("states/big");
    for _ in 0..100 {
        read_all(&node.mnt.join("hot"), &mut buf);
        read_all(&plain_hot, &mut buf);
    }
    Figures::time(20_000, |_| read_all(&node.mnt.join("hot"), &mut buf))
        .line("hot read, local mode, through the mount");
    Figures::time(20_000, |_| read_all(&plain_hot, &mut buf)).line("hot read of the plain file in states/");
    Figures::time(500, |_| read_all(&node.mnt.join("big"), &mut buf))
        .line("1 MiB read, local mode, through the mount");
    Figures::time(500, |_| read_all(&plain_big, &mut buf)).line("1 MiB read of the plain file in states/");
    assert_eq!(buf.len(), 1 << 20);
}
