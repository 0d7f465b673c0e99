//! No input through the mount can stop a node, `states/` is derived data that never can either,
//! and no read ever sees anything but one whole committed version (DESIGN §1.2–1.4).
//!
//! - Path limits: the longest legal path works end to end (mount, `states/`, restart); one byte
//!   more is `ENAMETOOLONG` at the call, and the node keeps serving.
//! - Mirror faults: a full filesystem under `states/`, a read-only directory in it, hand-deleted
//!   and hand-edited files. Writes keep committing, `status` counts the mirror's errors, and once
//!   the cause is gone the mirror catches up and `verify` passes.
//! - Torn reads: rewriters and readers of the same states, on one mount and across mounts, in
//!   both read modes; every read returns exactly one value that some writer wrote whole.

mod common;

use std::fs;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::cluster::{Cluster, ClusterOpts};
use common::*;

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Unmounts a test's extra mount on drop (even when the test panics).
struct ExtraMount(std::path::PathBuf);

impl Drop for ExtraMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

// ----- limits -----

#[test]
fn the_longest_legal_path_works_and_one_byte_more_is_enametoolong() {
    let mut n = Node::start(Opts::default());
    let component = "c".repeat(255);
    // 15 directories of 255 bytes and a file of 255 bytes: 4,095 bytes, the longest legal ID.
    // Each mkdir goes through a relative path from the directory above, as a deep tree is built.
    let mut dir = n.mount();
    for _ in 0..15 {
        dir = dir.join(&component);
        fs::create_dir(&dir).expect("mkdir of a legal component");
    }
    assert_eq!(vec![component.as_str(); 16].join("/").len(), 4095);
    // The absolute path exceeds PATH_MAX; work relative to the deepest directory.
    let fd = {
        let c = cpath(&dir);
        check(unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) }).expect("open deep dir")
    };
    let at = |name: &str, flags: i32| {
        let c = std::ffi::CString::new(name).unwrap();
        check(unsafe { libc::openat(fd, c.as_ptr(), flags, 0o644) })
    };
    let file =
        at(&component, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC).expect("create the deepest file");
    write_all_raw(file, b"deep\n").unwrap();
    close_raw(file).expect("close commits");
    // One byte more, as a file and as a directory: refused before anything is proposed.
    let before = n.head_height();
    let too_long = format!("{component}x");
    assert_errno(at(&too_long, libc::O_WRONLY | libc::O_CREAT), &[libc::ENAMETOOLONG], "component of 256");
    let sub = std::ffi::CString::new("d").unwrap();
    let file_fd = at(&component, libc::O_RDONLY).unwrap();
    close_raw(file_fd).unwrap();
    // A name that fits NAME_MAX but makes the whole path longer than 4,095 bytes.
    let deeper = dir.join(&component);
    assert_errno(
        fs::create_dir(&deeper).map(|_| ()),
        &[libc::ENAMETOOLONG, libc::EEXIST],
        "mkdir past PATH_MAX",
    );
    let rc = unsafe { libc::mkdirat(fd, sub.as_ptr(), 0o755) };
    assert_eq!(rc, 0, "a short name still fits below the 15th level");
    let sub_fd = at("d", libc::O_RDONLY | libc::O_DIRECTORY).unwrap();
    let long = std::ffi::CString::new("e".repeat(255)).unwrap();
    let rc = unsafe { libc::mkdirat(sub_fd, long.as_ptr(), 0o755) };
    assert_eq!((rc, errno()), (-1, libc::ENAMETOOLONG), "a 4,096+ byte path is ENAMETOOLONG");
    unsafe {
        libc::close(sub_fd);
        libc::close(fd);
    }
    assert_eq!(n.head_height(), before + 1, "only the short mkdir made a block");

    // The mirror holds it (states/ is far past PATH_MAX as an absolute path), verify agrees,
    // and a restart replays it.
    n.wait_written_behind();
    let st = n.status_json();
    assert_eq!(st["mirror"]["failing"], 0, "mirror failures: {st}");
    n.stop();
    assert_ok(&n.verify(), "verify after a 4,095-byte path");
    n.restart();
    // With the mount's prefix the absolute path is past PATH_MAX: walk to it again.
    let mut dir = n.mount();
    for _ in 0..15 {
        dir = dir.join(&component);
    }
    let dfd = check(unsafe { libc::open(cpath(&dir).as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) }).unwrap();
    let cname = std::ffi::CString::new(component.clone()).unwrap();
    let f = check(unsafe { libc::openat(dfd, cname.as_ptr(), libc::O_RDONLY) }).unwrap();
    let mut buf = [0u8; 16];
    let got = unsafe { libc::read(f, buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(&buf[..got as usize], b"deep\n", "the deepest state after a restart");
    unsafe {
        libc::close(f);
        libc::close(dfd);
    }
}

// ----- the mirror's faults -----

fn mirror(n: &Node) -> serde_json::Value {
    n.status_json()["mirror"].clone()
}

/// Polls `cond` on the node's status for up to 20 s.
fn wait_status(n: &Node, what: &str, cond: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = n.status_json();
        if cond(&st) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: status never got there: {st}");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_full_disk_under_states_never_stops_commits_and_the_mirror_catches_up() {
    let mut n = Node::start(Opts::default());
    put(&n.path("small"), b"fits\n");
    n.stop();
    // states/ becomes a 64 KiB tmpfs holding what it held.
    let states = n.data().join("states");
    let saved = n.data().join("states.saved");
    fs::rename(&states, &saved).unwrap();
    fs::create_dir(&states).unwrap();
    run("mount", &["-t", "tmpfs", "-o", "size=64k", "lc-test", states.to_str().unwrap()]);
    let guard = ExtraMount(states.clone());
    n.restart();
    // 40 states of 16 KiB cannot fit: writes through the mount go on committing regardless.
    let content = vec![b'z'; 16 << 10];
    for i in 0..40 {
        let path = n.path(&format!("big-{i}"));
        write_with_flags(&path, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, &content)
            .unwrap_or_else(|e| panic!("commit {i} with states/ full: {e:?}"));
    }
    assert_eq!(read(&n.path("big-39")), content, "the mount serves what states/ could not hold");
    wait_status(&n, "mirror errors counted", |st| st["mirror"]["errors"].as_u64() > Some(0));
    let m = mirror(&n);
    assert!(m["failing"].as_u64() > Some(0), "failing states are shown: {m}");
    assert!(m["last_error"].as_str().is_some_and(|e| e.contains("big-")), "the error names the state: {m}");
    assert!(n.log().contains("mirror: cannot write states/"), "the failure is logged");
    // The cause goes away (the disk grows): the mirror catches up without a restart.
    run("mount", &["-o", "remount,size=16m", states.to_str().unwrap()]);
    wait_status(&n, "mirror caught up", |st| st["mirror"]["failing"] == 0 && st["mirror"]["lag"] == 0);
    assert_eq!(n.state_file("big-39").as_deref(), Some(&content[..]));
    n.stop();
    assert_ok(&n.verify(), "verify after the mirror caught up");
    drop(guard);
}

#[test]
fn a_read_only_directory_in_states_is_retried_until_it_is_writable_again() {
    let n = Node::start(Opts::default());
    fs::create_dir(n.path("locked")).unwrap();
    put(&n.path("locked/a"), b"one\n");
    let dir = n.state_path("locked");
    run("mount", &["--bind", dir.to_str().unwrap(), dir.to_str().unwrap()]);
    let guard = ExtraMount(dir.clone());
    run("mount", &["-o", "remount,bind,ro", dir.to_str().unwrap()]);
    put(&n.path("locked/a"), b"two\n");
    put(&n.path("locked/b"), b"new\n");
    assert_eq!(read(&n.path("locked/a")), b"two\n");
    wait_status(&n, "mirror errors counted", |st| st["mirror"]["failing"].as_u64() > Some(0));
    drop(guard);
    wait_status(&n, "mirror caught up", |st| st["mirror"]["failing"] == 0 && st["mirror"]["lag"] == 0);
    assert_eq!(n.state_file("locked/a").as_deref(), Some(&b"two\n"[..]));
    assert_eq!(n.state_file("locked/b").as_deref(), Some(&b"new\n"[..]));
}

#[test]
fn hand_deleted_and_hand_edited_mirror_files_are_repaired_and_commits_go_on() {
    let mut n = Node::start(Opts::default());
    fs::create_dir(n.path("d")).unwrap();
    put(&n.path("d/kept"), b"kept\n");
    put(&n.path("edited"), b"original\n");
    n.wait_written_behind();
    fs::remove_dir_all(n.data().join("states/d")).unwrap();
    fs::write(n.data().join("states/edited"), b"changed behind lightchain's back\n").unwrap();
    // A write below the hand-deleted directory still commits; the mirror recreates the way.
    put(&n.path("d/new"), b"new\n");
    assert_eq!(read(&n.path("d/kept")), b"kept\n", "the mount never depended on states/");
    assert_eq!(n.state_file("d/new").as_deref(), Some(&b"new\n"[..]));
    n.stop();
    n.restart();
    n.wait_written_behind();
    assert_eq!(n.state_file("d/kept").as_deref(), Some(&b"kept\n"[..]), "repaired at start");
    assert_eq!(n.state_file("edited").as_deref(), Some(&b"original\n"[..]), "repaired at start");
    assert!(n.log().contains("repair:"), "repairs are logged");
    n.stop();
    assert_ok(&n.verify(), "verify after repair");
}

// ----- torn reads -----

/// Every value a writer may write: a 16-byte unit naming the value's tag and length, repeated
/// to `len` bytes, so a torn, cut or mixed read is recognisable.
fn value(tag: u64, len: usize) -> Vec<u8> {
    let unit = format!("<{tag:08}:{len:05}>");
    unit.as_bytes().iter().cycle().take(len).copied().collect()
}

/// Whether `bytes` is exactly one value that [`value`] makes.
fn is_whole(bytes: &[u8]) -> bool {
    let Some(unit) = bytes.get(..16) else { return false };
    let declared = std::str::from_utf8(&unit[10..15]).ok().and_then(|l| l.parse::<usize>().ok());
    declared == Some(bytes.len()) && bytes.chunks(16).all(|c| c == &unit[..c.len()])
}

/// Rewriters and readers race on `states` across `mounts` for `duration`; panics on any read
/// that is not one whole value.
fn race(mounts: &[std::path::PathBuf], lens: &[usize], duration: Duration) -> (u64, u64, Vec<String>) {
    // States of their own per set of lengths, so earlier rounds' values never count.
    let prefix = format!("race-{}", lens[0]);
    let states = [format!("{prefix}-s0"), format!("{prefix}-s1")];
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(1));
    let (reads, writes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let torn: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    for s in &states {
        put(&mounts[0].join(s), &value(0, lens[0]));
        // In local mode another mount may still serve the empty file `create` committed first:
        // a committed version, but not one the racers wrote. Start once every mount has the value.
        for m in mounts {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !is_whole(&read_whole(&m.join(s))) {
                assert!(Instant::now() < deadline, "{} never showed the first value", m.display());
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
    let mut threads = Vec::new();
    for (i, mount) in mounts.iter().enumerate() {
        for w in 0..2 {
            let (mount, stop, next, writes, lens, states) =
                (mount.clone(), stop.clone(), next.clone(), writes.clone(), lens.to_vec(), states.clone());
            threads.push(thread::spawn(move || {
                let mut k = w + i;
                while !stop.load(Ordering::Relaxed) {
                    k += 1;
                    let v = value(next.fetch_add(1, Ordering::Relaxed), lens[k % lens.len()]);
                    let path = mount.join(&states[k % 2]);
                    // A commit may time out on a loaded machine (EIO: outcome unknown); only
                    // the reads are judged here.
                    if write_with_flags(&path, libc::O_WRONLY | libc::O_TRUNC, &v).is_ok() {
                        writes.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for r in 0..3 {
            let (mount, stop, reads, states, torn) =
                (mount.clone(), stop.clone(), reads.clone(), states.clone(), torn.clone());
            threads.push(thread::spawn(move || {
                let mut k = r;
                while !stop.load(Ordering::Relaxed) {
                    k += 1;
                    let path = mount.join(&states[k % 2]);
                    let got = read_whole(&path);
                    let n = reads.fetch_add(1, Ordering::Relaxed);
                    // Local reads never wait for consensus: unthrottled, nine of them on two
                    // cores starve the nodes' heartbeats and no write commits.
                    thread::sleep(Duration::from_micros(500));
                    if !is_whole(&got) {
                        torn.lock().unwrap().push(format!(
                            "read #{n} of {} returned {} bytes that are not one whole written value: {:?}",
                            path.display(),
                            got.len(),
                            String::from_utf8_lossy(&got[..got.len().min(64)]),
                        ));
                    }
                }
            }));
        }
    }
    thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("a racer failed");
    }
    let torn = std::mem::take(&mut *torn.lock().unwrap());
    (reads.load(Ordering::Relaxed), writes.load(Ordering::Relaxed), torn)
}

/// open + read until 0 + close, with raw calls (no size hint from `stat`).
fn read_whole(path: &std::path::Path) -> Vec<u8> {
    let fd = open_raw(path, libc::O_RDONLY, 0).expect("open for reading");
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        assert!(n >= 0, "read: {}", std::io::Error::last_os_error());
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
    close_raw(fd).expect("close after reading");
    out
}

/// Sizes that change (smaller and larger than a page) and sizes that stay equal.
const CHANGING: &[usize] = &[100, 5000, 20_000];
const EQUAL: &[usize] = &[4000];

#[test]
fn no_torn_reads_on_the_writers_own_mount_in_either_read_mode() {
    for mode in ["linearizable", "local"] {
        let n = Node::start(Opts::default().read_consistency(mode));
        for lens in [CHANGING, EQUAL] {
            let (reads, writes, torn) = race(&[n.mount()], lens, Duration::from_secs(2));
            eprintln!("{mode} {lens:?}: {reads} reads, {writes} writes");
            if !torn.is_empty() {
                let suspicious: Vec<String> = n
                    .chain_blocks()
                    .iter()
                    .map(|b| b.to_string())
                    .filter(|b| {
                        b.contains(r#""content":"""#) || b.contains("truncate") || b.contains("create")
                    })
                    .map(|b| b[..b.len().min(400)].to_string())
                    .collect();
                panic!(
                    "{mode}: {} torn reads of {reads}:\n{}\nblocks: {suspicious:#?}",
                    torn.len(),
                    torn[..torn.len().min(5)].join("\n")
                );
            }
            assert!(
                reads > 50 && writes > 20,
                "{mode}: too little happened ({reads} reads, {writes} writes)"
            );
        }
    }
}

#[test]
fn no_torn_reads_across_mounts_of_a_cluster() {
    for mode in ["linearizable", "local"] {
        let c = Cluster::start(
            3,
            ClusterOpts { read_consistency: Some(mode.to_string()), ..ClusterOpts::default() },
        );
        let mounts: Vec<_> = c.all().iter().map(|&i| c.node(i).mount()).collect();
        let (reads, writes, torn) = race(&mounts, CHANGING, Duration::from_secs(3));
        assert!(
            torn.is_empty(),
            "{mode}: {} torn reads of {reads}:\n{}",
            torn.len(),
            torn[..torn.len().min(5)].join("\n")
        );
        assert!(reads > 50 && writes > 20, "{mode}: too little happened ({reads} reads, {writes} writes)");
        // A remote rewrite of equal size is seen too (kernel caches invalidated).
        // (In local mode a follower may lag the writer: wait for the first version to arrive.)
        put(&c.path(0, "same"), b"aaaa");
        let deadline = Instant::now() + Duration::from_secs(10);
        while fs::read(c.path(1, "same")).ok().as_deref() != Some(b"aaaa") {
            assert!(Instant::now() < deadline, "{mode}: a remote write never showed");
            thread::sleep(Duration::from_millis(20));
        }
        if mode == "linearizable" {
            // A linearizable read after the writer's close sees it at once.
            put(&c.path(0, "same"), b"cccc");
            assert_eq!(read(&c.path(1, "same")), b"cccc");
        }
        put(&c.path(0, "same"), b"bbbb");
        let deadline = Instant::now() + Duration::from_secs(10);
        while read(&c.path(1, "same")) != b"bbbb" {
            assert!(Instant::now() < deadline, "{mode}: a same-size remote rewrite never showed");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

// ----- handles bind to what they opened -----

#[test]
fn an_append_to_a_state_removed_while_open_fails_its_close() {
    let n = Node::start(Opts::default());
    put(&n.path("log"), b"first\n");
    let fd = open_raw(&n.path("log"), libc::O_WRONLY | libc::O_APPEND, 0).unwrap();
    fs::remove_file(n.path("log")).unwrap();
    write_all_raw(fd, b"lost?\n").unwrap();
    assert_errno(close_raw(fd), &[libc::ESTALE], "close of an append handle whose state is gone");
    assert_errno(fs::metadata(n.path("log")), &[libc::ENOENT], "nothing was recreated");
    assert!(n.log().contains("commit"), "the refusal is logged");
}

#[test]
fn an_append_follows_its_state_through_a_rotation() {
    let n = Node::start(Opts::default());
    put(&n.path("app.log"), b"one\n");
    let fd = open_raw(&n.path("app.log"), libc::O_WRONLY | libc::O_APPEND, 0).unwrap();
    // logrotate: the old file moves aside and a new one takes its name.
    fs::rename(n.path("app.log"), n.path("app.log.1")).unwrap();
    put(&n.path("app.log"), b"fresh\n");
    write_all_raw(fd, b"two\n").unwrap();
    close_raw(fd).expect("the append commits");
    assert_eq!(read(&n.path("app.log.1")), b"one\ntwo\n", "the bytes went to the state the app opened");
    assert_eq!(read(&n.path("app.log")), b"fresh\n", "the new state is untouched");
}

// ----- what the mirror carries -----

#[test]
fn states_mirrors_owners_modes_times_and_symlinks() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let n = Node::start(Opts::default());
    fs::create_dir(n.path("d")).unwrap();
    put(&n.path("d/f"), b"owned\n");
    std::os::unix::fs::chown(n.path("d/f"), Some(1000), Some(1000)).unwrap();
    fs::set_permissions(n.path("d/f"), fs::Permissions::from_mode(0o640)).unwrap();
    let (st, out, err) = n.sh("touch -d '2020-01-02 03:04:05.123456789' d/f && ln -s f d/link");
    assert!(st.success(), "{out}{err}");
    let mounted = fs::symlink_metadata(n.path("d/f")).unwrap();
    let mirrored = fs::symlink_metadata(n.state_path("d/f")).unwrap();
    assert_eq!((mirrored.uid(), mirrored.gid()), (1000, 1000), "owner mirrored");
    assert_eq!(mirrored.mode() & 0o7777, 0o640, "mode mirrored");
    assert_eq!(
        (mirrored.mtime(), mirrored.mtime_nsec()),
        (mounted.mtime(), mounted.mtime_nsec()),
        "mtime mirrored"
    );
    assert_eq!(
        fs::read_link(n.state_path("d/link")).unwrap(),
        std::path::PathBuf::from("f"),
        "a real symlink"
    );
    n.wait_written_behind();
    let st = n.status_json();
    assert_eq!(st["mirror"]["failing"], 0, "{st}");
}

// ----- the chain may be fatal, and then a restart recovers -----

#[test]
fn a_full_disk_under_chain_stops_the_node_and_a_restart_recovers_once_space_is_back() {
    let mut n = Node::start(Opts::default().commit_timeout("3s"));
    put(&n.path("before"), b"kept\n");
    n.stop();
    // chain/ becomes a 256 KiB tmpfs holding what it held.
    let chain = n.data().join("chain");
    let saved = n.data().join("chain.saved");
    fs::rename(&chain, &saved).unwrap();
    fs::create_dir(&chain).unwrap();
    run("mount", &["-t", "tmpfs", "-o", "size=256k", "lc-test-chain", chain.to_str().unwrap()]);
    let guard = ExtraMount(chain.clone());
    for entry in fs::read_dir(&saved).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), chain.join(entry.file_name())).unwrap();
    }
    n.restart();
    // Each block carries 32 KiB of JSON: the chain fills up after a few, and the node stops
    // committing (EIO) instead of acknowledging blocks it cannot record.
    let content = vec![b'c'; 32 << 10];
    let mut acknowledged = Vec::new();
    let mut failed = false;
    // The chain is written behind, so a few more blocks may be acknowledged before its writer
    // meets the full disk (more on a loaded machine); the bound only keeps the test finite.
    for i in 0..200 {
        let rel = format!("big-{i}");
        match write_with_flags(&n.path(&rel), libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, &content) {
            Ok(()) => acknowledged.push(rel),
            Err(step) => {
                assert_eq!(step.errno(), libc::EIO, "a full chain/ is EIO for the app");
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "200 blocks of 32 KiB fit in a 256 KiB chain/?");
    assert!(n.log().contains("cannot write chain/"), "the failure is logged");
    // Consensus stopped: the node stops too and exits 1, so that a supervisor restarts it,
    // instead of answering EIO for as long as it lives.
    let status = n
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("the node kept running after consensus stopped\n{}", n.log_tail(40)));
    assert!(!status.success(), "a node whose consensus stopped exits with a failure: {status:?}");
    assert!(n.log().contains("exited so that a supervisor restarts this node"), "{}", n.log_tail(20));
    // Space is back: the node restarts cleanly, the acknowledged writes are there (re-applied
    // from the consensus log where the chain lacked them), and verify passes.
    run("mount", &["-o", "remount,size=64m", chain.to_str().unwrap()]);
    n.restart();
    for rel in &acknowledged {
        assert_eq!(read(&n.path(rel)), content, "acknowledged {rel} survives");
    }
    put(&n.path("after"), b"serving again\n");
    n.stop();
    assert_ok(&n.verify(), "verify after the chain filled up and recovered");
    drop(guard);
}
