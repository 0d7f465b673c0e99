//! Process lifecycle, crash recovery and the offline tools (DESIGN §1.1, §1.3 durability, §1.4, §1.6):
//! `kill -9` mid-write then restart on the same (dead) mountpoint, SIGTERM/SIGINT unmounting cleanly,
//! `verify` catching tampering, `log` and `status` on a running and on a stopped node.

mod common;

use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::*;

fn node() -> Node {
    Node::start(Opts::default())
}

/// Asserts `verify` exits 0.
#[track_caller]
fn assert_verify_ok(n: &Node) {
    let run = n.verify();
    assert_ok(&run, "lightchain verify on an intact data directory");
}

// ----- crash and restart -----

#[test]
fn kill9_during_write_loop_keeps_every_acknowledged_write() {
    let mut n = node();
    fs::create_dir(n.path("loop")).expect("mkdir loop");

    let acked = Arc::new(Mutex::new(Vec::<u64>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (dir, acked, stop) = (n.path("loop"), Arc::clone(&acked), Arc::clone(&stop));
        thread::spawn(move || -> String {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let path = dir.join(i.to_string());
                let content = format!("loop entry {i}\n");
                let fd = match open_raw(&path, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, 0o644) {
                    Ok(fd) => fd,
                    Err(e) => return format!("open of #{i} failed: {e}"),
                };
                let result = write_all_raw(fd, content.as_bytes())
                    .and_then(|_| fsync_raw(fd))
                    .and_then(|_| close_raw(fd));
                match result {
                    // Acknowledged only when write, fsync and close all returned 0.
                    Ok(()) => acked.lock().unwrap().push(i),
                    Err(e) => return format!("#{i} failed after open: {e}"),
                }
                i += 1;
            }
            "stopped".into()
        })
    };

    // Let it run about a second, and until at least a few writes were acknowledged.
    thread::sleep(Duration::from_secs(1));
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().len() < 3 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    n.kill9();
    stop.store(true, Ordering::SeqCst);
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || tx.send(writer.join()));
    let ended = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("writer thread still blocked 30 s after kill -9 of the server")
        .expect("writer thread panicked");
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 3, "too few writes were acknowledged before the kill ({}): {ended}", acked.len());
    eprintln!("{} writes acknowledged before kill -9; writer ended with: {ended}", acked.len());

    n.restart(); // same data dir and mountpoint, no manual umount
    for i in &acked {
        let want = format!("loop entry {i}\n");
        let got = fs::read(n.path(&format!("loop/{i}"))).unwrap_or_else(|e| {
            panic!("acknowledged write loop/{i} lost after kill -9 ({} acked): {e}", acked.len())
        });
        assert_eq!(String::from_utf8_lossy(&got), want, "content of acknowledged loop/{i}");
        assert_eq!(
            n.state_file(&format!("loop/{i}")).map(|b| String::from_utf8_lossy(&b).into_owned()),
            Some(want),
            "states/loop/{i} after restart (repair at start-up)"
        );
    }
    // Still writable after recovery.
    put(&n.path("after-crash"), b"alive\n");
    n.stop();
    assert_verify_ok(&n);
}

#[test]
fn restart_after_kill9_replaces_the_dead_mount() {
    let mut n = node();
    put(&n.path("survivor"), b"still here\n");
    n.kill9();
    assert!(
        is_mounted(&n.mount()),
        "after kill -9 the dead FUSE mount is still in /proc/mounts (setup check)"
    );
    n.restart();
    assert_eq!(read(&n.path("survivor")), b"still here\n", "committed content after restart");
    let lines = mount_lines(&n.mount());
    assert_eq!(lines.len(), 2, "the new FUSE mount on the guard; the dead mount replaced: {lines:#?}");
    assert!(is_guard_line(&lines[0]) && is_fuse_line(&lines[1]), "the guard, then FUSE: {lines:#?}");
}

#[test]
fn restart_after_sigterm_keeps_everything() {
    let mut n = node();
    fs::create_dir(n.path("dir")).unwrap();
    put(&n.path("dir/kept"), b"persisted\n");
    let head = n.status_json()["head_hash"].clone();
    n.stop();
    n.restart();
    assert_eq!(read(&n.path("dir/kept")), b"persisted\n");
    let s = n.status_json();
    assert_eq!(s["head_hash"], head, "the chain head survives a clean restart unchanged");
    put(&n.path("dir/kept"), b"changed after restart\n");
    assert_eq!(read(&n.path("dir/kept")), b"changed after restart\n");
}

#[test]
fn refuses_to_replace_a_non_fuse_mount() {
    let mut n = Node::prepare(Opts::default());
    let src = std::ffi::CString::new("tmpfs").unwrap();
    let rc =
        unsafe { libc::mount(src.as_ptr(), cpath(&n.mount()).as_ptr(), src.as_ptr(), 0, std::ptr::null()) };
    assert_eq!(rc, 0, "mount tmpfs for the test: {}", errno_name(errno()));
    fs::write(n.path("marker"), b"tmpfs content").unwrap();
    n.spawn();
    // Either it exits (correct), or it mounts on top of the tmpfs (its status file appears): fail at once.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = n.wait_exit(Duration::from_millis(200)) {
            break status;
        }
        assert!(
            !n.path(".lightchain/status").exists(),
            "lightchain mounted on top of a tmpfs at MOUNTPOINT instead of refusing (DESIGN §1.1)\n{}",
            mount_lines(&n.mount()).join("\n")
        );
        assert!(
            Instant::now() < deadline,
            "lightchain neither exited nor mounted within 30 s\n{}",
            n.log_tail(50)
        );
    };
    assert!(!status.success(), "exit status must be non-zero when MOUNTPOINT holds another mount");
    let line = mount_line(&n.mount()).expect("the tmpfs must still be mounted");
    assert!(line.starts_with("tmpfs "), "the tmpfs must be left alone, found: {line}");
    assert_eq!(fs::read(n.path("marker")).unwrap(), b"tmpfs content", "tmpfs content untouched");
    assert!(n.log().lines().count() > 1, "lightchain must explain why it refused (empty log)");
}

/// A bind mount made by a test, detached on drop (even when the test panics).
struct BindMount(std::path::PathBuf);

impl BindMount {
    fn new(source: &std::path::Path, target: &std::path::Path) -> BindMount {
        let rc = unsafe {
            libc::mount(
                cpath(source).as_ptr(),
                cpath(target).as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "bind-mount {source:?} on {target:?}: {}", errno_name(errno()));
        BindMount(target.to_path_buf())
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        unsafe { libc::umount2(cpath(&self.0).as_ptr(), libc::MNT_DETACH) };
    }
}

#[test]
fn refuses_the_root_of_a_shared_volume_and_says_to_use_a_subdirectory() {
    // The shape of a Kubernetes emptyDir inside a container: a directory bind-mounted at MOUNTPOINT.
    let volume = tempfile::Builder::new().prefix("lightchain-volume-").tempdir().unwrap();
    fs::write(volume.path().join("marker"), b"volume content").unwrap();
    let mut n = Node::prepare(Opts::default());
    let _bind = BindMount::new(volume.path(), &n.mount());
    n.spawn();
    let status = n.wait_exit(Duration::from_secs(30)).unwrap_or_else(|| {
        panic!("lightchain neither refused nor exited on a volume root within 30 s\n{}", n.log_tail(50))
    });
    assert!(!status.success(), "exit status must be non-zero on the root of a volume\n{}", n.log_tail(20));
    let log = n.log();
    assert!(
        log.contains("subdirectory") && log.contains(&n.mount().join("lightchain").display().to_string()),
        "the refusal must say to use a subdirectory of the volume:\n{}",
        n.log_tail(20)
    );
    assert!(!log.contains("lightchain ready"), "it must refuse before serving:\n{}", n.log_tail(20));
    assert_eq!(
        fs::read_dir(n.data()).unwrap().count(),
        0,
        "it must refuse before creating anything in the data directory"
    );
    let lines = mount_lines(&n.mount());
    assert_eq!(lines.len(), 1, "the volume must stay mounted, alone: {lines:#?}");
    assert!(!lines[0].contains("fuse"), "no FUSE mount on the volume: {}", lines[0]);
    assert_eq!(fs::read(n.path("marker")).unwrap(), b"volume content", "the volume is untouched");
}

// ----- clean shutdown -----

#[test]
fn sigterm_exits_zero_and_unmounts() {
    let mut n = node();
    put(&n.path("f"), b"x");
    assert!(is_mounted(&n.mount()), "mounted while running");
    let status = n.sigterm();
    assert!(status.success(), "exit status after SIGTERM must be 0, got {status:?}");
    assert_only_the_guard_is_left(&n, "SIGTERM");
    assert_verify_ok(&n);
}

#[test]
fn sigint_exits_zero_and_unmounts() {
    let mut n = node();
    let status = n.sigint();
    assert!(status.success(), "exit status after SIGINT must be 0, got {status:?}");
    assert_only_the_guard_is_left(&n, "SIGINT");
}

/// After a clean stop the FUSE mount is gone and the read-only guard beneath it stays (writes
/// there keep failing until the next start; `tests/guard.rs`).
#[track_caller]
fn assert_only_the_guard_is_left(n: &Node, after: &str) {
    let lines = mount_lines(&n.mount());
    assert!(
        lines.len() == 1 && is_guard_line(&lines[0]),
        "after {after} the FUSE mount must be gone and only the guard left: {lines:#?}"
    );
}

#[test]
fn logs_a_ready_line() {
    let n = node();
    assert!(
        n.log().lines().any(|l| l.contains("ready")),
        "the node must log a line containing `ready` once it serves\n{}",
        n.log_tail(50)
    );
}

// ----- the backing directory -----

#[test]
fn data_dir_has_the_documented_layout() {
    let mut n = node();
    put(&n.path("greeting"), b"hello\n");
    n.stop();
    let data = n.data();
    let identity: Value =
        serde_json::from_str(&fs::read_to_string(data.join("identity.json")).expect("identity.json"))
            .expect("identity.json is JSON");
    assert!(identity.is_object(), "identity.json: {identity}");
    assert!(data.join("raft").is_dir(), "raft/ exists");
    assert_eq!(fs::read(data.join("states/greeting")).unwrap(), b"hello\n", "states/greeting");
    let files = n.chain_files();
    assert!(!files.is_empty(), "chain/ has segments");
    let first = files[0].file_name().unwrap().to_str().unwrap().to_string();
    assert_eq!(first, format!("{:020}.jsonl", 0), "first segment is named after height 0, zero-padded to 20");
    for f in &files {
        let stem = f.file_stem().unwrap().to_str().unwrap();
        assert!(stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()), "segment name {stem}");
    }
    let blocks = n.chain_blocks();
    assert_eq!(blocks[0]["height"].as_u64(), Some(0), "the first block is the genesis");
    for (i, b) in blocks.iter().enumerate() {
        assert_eq!(b["height"].as_u64(), Some(i as u64), "heights are consecutive in chain/");
        if i > 0 {
            assert_eq!(b["prev_hash"], blocks[i - 1]["hash"], "block {i} links to block {}", i - 1);
        }
    }
}

// ----- verify -----

#[test]
fn verify_reports_the_tampered_block() {
    let mut n = node();
    put(&n.path("before"), b"first\n");
    put(&n.path("target"), b"tamper-me-123\n");
    put(&n.path("after"), b"last\n");
    n.stop();
    assert_verify_ok(&n); // control: the untouched chain passes

    let (file, height) = n
        .chain_files()
        .into_iter()
        .find_map(|f| {
            let text = fs::read_to_string(&f).unwrap();
            let line = text.lines().find(|l| l.contains("tamper-me-123"))?;
            let block: Value = serde_json::from_str(line).expect("block line is JSON");
            Some((f, block["height"].as_u64().expect("block height")))
        })
        .expect("a chain line containing tamper-me-123");
    let text = fs::read_to_string(&file).unwrap();
    let tampered: String = text
        .split_inclusive('\n')
        .map(|l| {
            if l.contains("tamper-me-123") {
                l.replacen("tamper-me-123", "tamper-me-124", 1)
            } else {
                l.to_string()
            }
        })
        .collect();
    assert_ne!(tampered, text);
    fs::write(&file, tampered).unwrap();

    let (status, out, err) = n.verify();
    assert!(!status.success(), "verify must fail on a tampered chain\nstdout: {out}\nstderr: {err}");
    let all = format!("{out}\n{err}");
    assert!(
        mentions_block(&all, height),
        "verify must name the first bad block, `block {height}`\nstdout: {out}\nstderr: {err}"
    );
}

#[test]
fn verify_detects_a_modified_state_file() {
    let mut n = node();
    put(&n.path("config"), b"original\n");
    n.stop();
    assert_verify_ok(&n);
    fs::write(n.state_path("config"), b"edited behind lightchain's back\n").unwrap();
    let (status, out, err) = n.verify();
    assert!(
        !status.success(),
        "verify must fail when states/ disagrees with the chain\nstdout: {out}\nstderr: {err}"
    );
}

// ----- log -----

/// Writes three versions of `greeting` and one unrelated state.
fn write_history(n: &Node) {
    put(&n.path("greeting"), b"history-one\n");
    put(&n.path("unrelated-file"), b"noise\n");
    put(&n.path("greeting"), b"history-two\n");
    put(&n.path("greeting"), b"history-three\n");
    // `log` reads chain/, which is written behind the acknowledgement (in rounds at most
    // every few milliseconds): the last block may not be there yet when `close` returns.
    n.wait_written_behind();
}

fn assert_state_history(n: &Node, when: &str) {
    // The heights of the blocks that changed `greeting` (the text format is free, but it must list them).
    let heights: Vec<u64> = n
        .chain_blocks()
        .iter()
        .filter(|b| json_contains_str(b, "history-"))
        .map(|b| b["height"].as_u64().unwrap())
        .collect();
    assert_eq!(heights.len(), 3, "three blocks in chain/ carry the three versions");
    let run = n.log_cli(&["greeting"]);
    assert_ok(&run, &format!("log greeting ({when})"));
    let tokens: Vec<&str> = run.1.split_whitespace().collect();
    for h in &heights {
        assert!(
            tokens.contains(&h.to_string().as_str()),
            "log greeting ({when}) must list block {h}, which changed the state:\n{}",
            run.1
        );
    }
    assert!(
        !run.1.contains("unrelated-file") && !run.1.contains("noise"),
        "log greeting ({when}) must not show other states:\n{}",
        run.1
    );

    let run = n.log_cli(&["greeting", "--json"]);
    assert_ok(&run, &format!("log greeting --json ({when})"));
    let lines: Vec<Value> = run
        .1
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("log --json line is not JSON ({e}): {l}")))
        .collect();
    let pos = |s: &str| {
        lines
            .iter()
            .position(|v| json_contains_str(v, s))
            .unwrap_or_else(|| panic!("log greeting --json ({when}) lacks {s}:\n{}", run.1))
    };
    let (one, two, three) = (pos("history-one"), pos("history-two"), pos("history-three"));
    assert!(
        one < two && two < three,
        "versions must be listed in chain order ({when}): {one}, {two}, {three}"
    );
    assert!(
        !lines.iter().any(|v| json_contains_str(v, "unrelated-file")),
        "log greeting --json ({when}) must not include other states' transactions"
    );
}

fn assert_whole_chain_log(n: &Node, when: &str) -> Vec<Value> {
    let run = n.log_cli(&["--json"]);
    assert_ok(&run, &format!("log --json ({when})"));
    let blocks: Vec<Value> = run
        .1
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("log --json line is not JSON ({e}): {l}")))
        .collect();
    assert!(!blocks.is_empty(), "log --json ({when}) printed nothing");
    for (i, b) in blocks.iter().enumerate() {
        assert_eq!(b["height"].as_u64(), Some(i as u64), "log --json ({when}): heights from 0, consecutive");
        if i > 0 {
            assert_eq!(
                b["prev_hash"],
                blocks[i - 1]["hash"],
                "log --json ({when}): block {i} links to its parent"
            );
        }
    }
    let on_disk: Vec<Value> = n.chain_blocks().iter().map(|b| b["hash"].clone()).collect();
    let logged: Vec<Value> = blocks.iter().map(|b| b["hash"].clone()).collect();
    assert_eq!(logged, on_disk, "log --json ({when}) shows exactly the blocks in chain/");
    let run = n.log_cli(&[]);
    assert_ok(&run, &format!("log ({when})"));
    assert!(
        run.1.contains("greeting"),
        "plain `log` ({when}) must mention the states it touched:\n{}",
        run.1
    );
    blocks
}

#[test]
fn log_of_one_state_while_running_and_after_stop() {
    let mut n = node();
    write_history(&n);
    assert_state_history(&n, "while running");
    n.stop();
    assert_state_history(&n, "after stop");
}

#[test]
fn log_json_of_whole_chain_while_running_and_after_stop() {
    let mut n = node();
    write_history(&n);
    let head = n.status_json();
    let running = assert_whole_chain_log(&n, "while running");
    assert_eq!(
        running.last().unwrap()["hash"],
        head["head_hash"],
        "the last logged block is the head reported by status"
    );
    n.stop();
    let stopped = assert_whole_chain_log(&n, "after stop");
    assert_eq!(running, stopped, "the log after stop equals the log while running (no writes in between)");
}

// ----- status CLI -----

#[test]
fn status_cli_reports_a_healthy_node_and_fails_when_it_is_gone() {
    let mut n = node();
    put(&n.path("f"), b"x\n");
    n.wait_written_behind();
    let run = n.status_cli(&[]);
    assert_ok(&run, "lightchain status on a healthy single-node cluster");
    // The text view shows how far chain/ and states/ are (written behind) and the mirror's errors.
    let head = n.head_height();
    assert!(run.1.contains(&format!("chain/     height {head}")), "status text: {}", run.1);
    assert!(
        run.1.contains(&format!("states/    height {head}, lag 0, 0 errors, 0 failing")),
        "status text: {}",
        run.1
    );
    let run = n.status_cli(&["--json"]);
    assert_ok(&run, "lightchain status --json");
    let v: Value = serde_json::from_str(run.1.trim())
        .unwrap_or_else(|e| panic!("status --json is not one JSON document ({e}): {}", run.1));
    assert!(json_contains_str(&v, &n.listen_addr()), "status --json must show the member address: {v}");
    n.stop();
    let run = n.status_cli(&[]);
    assert!(
        !run.0.success(),
        "status must exit non-zero when the node is down\nstdout: {}\nstderr: {}",
        run.1,
        run.2
    );
}
