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

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{free_port, must_write_state as write_state};

/// One `lightchain mount` child with its directories; stopped and unmounted on drop.
struct Node {
    binary: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Node {
    fn new(binary: &Path, listen: &str, extra: &[String]) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut args: Vec<String> = vec!["mount".into(), dir.path().join("mnt").display().to_string()];
        args.extend(["--data".into(), dir.path().join("data").display().to_string()]);
        args.extend(["--listen".into(), listen.into()]);
        args.extend(extra.iter().cloned());
        let mut node = Node { binary: binary.to_owned(), args, child: None, dir };
        node.start();
        node
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("node.log"))
            .expect("node.log");
        let child = Command::new(&self.binary)
            .args(&self.args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start lightchain");
        self.child = Some(child);
    }

    fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    fn status(&self) -> Value {
        std::fs::read(self.mnt().join(".lightchain/status"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    }

    fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.status()["ready"] != Value::Bool(true) {
            assert!(
                Instant::now() < deadline,
                "lightchain did not become ready; see {}",
                self.dir.path().display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The resident set of the process, in MiB.
    fn rss_mib(&self) -> f64 {
        let pid = self.child.as_ref().expect("running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        kib / 1024.0
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
        if let Ok(path) = CString::new(self.mnt().as_os_str().as_bytes()) {
            // SAFETY: a valid C string; failing (nothing mounted) is fine.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

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
    let mut node = Node::new(binary, "127.0.0.1:0", &[]);
    node.wait_ready(Duration::from_secs(60));
    let mnt = node.mnt();
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
    let token = tempfile::NamedTempFile::new().unwrap();
    let secret: String = (0..4).map(|_| format!("{:016x}", rand::random::<u64>())).collect();
    std::fs::write(token.path(), secret).unwrap();
    let addrs: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let mut extra = vec!["--cluster-token-file".to_string(), token.path().display().to_string()];
    for a in &addrs {
        extra.extend(["--peer".to_string(), a.clone()]);
    }
    let mut nodes: Vec<Node> = addrs.iter().map(|a| Node::new(binary, a, &extra)).collect();
    for n in &nodes {
        n.wait_ready(Duration::from_secs(60));
    }
    let leader = nodes.iter().position(|n| n.status()["role"] == "leader").unwrap_or(0);
    let lagging = (leader + 1) % 3;
    let mnt = nodes[leader].mnt();
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
