//! No write lands under the mountpoint while no node serves it (DESIGN §1.1, issue 19 §4).
//!
//! A node mounts a read-only guard (an empty `ro` tmpfs named `lightchain-guard`) at its
//! mountpoint before it starts and puts its FUSE mount on top. After `kill -9` the dead FUSE
//! mount answers `ENOTCONN`; the restart detaches it as the last step before its new mount, and
//! in that moment the guard answers `EROFS`; after a clean stop the guard stays. Never does a
//! write reach the bare directory beneath, where it would return 0 and be hidden by the next
//! mount. These tests run the real binary and observe every `close` on the raw fd.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// How the writer's attempts ended: the ids acknowledged (open, write and close returned 0),
/// and the failures by step and errno.
#[derive(Default)]
struct Outcomes {
    /// Ids of the writes whose open, write and close all returned 0.
    acked: Vec<u64>,
    /// How many attempts failed, by "step errno".
    failed: BTreeMap<String, u64>,
    /// Failures with an errno no dead or guarded mountpoint gives.
    unexpected: Vec<String>,
}

/// The value written by attempt `i`: unique in the chain, and quoted exactly like this in a
/// block's JSON (plain ASCII content is stored as text).
fn value(tag: u64, i: u64) -> String {
    format!("guard-{tag:016x}-{i}.")
}

#[test]
fn a_writer_through_twenty_kill9_restarts_has_every_acknowledged_write_in_the_chain() {
    const RESTARTS: usize = 20;
    let mut n = Node::start(Opts::default());
    let tag = rand_u64();
    let path = n.path("w");
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (outcomes, stop) = (Arc::clone(&outcomes), Arc::clone(&stop));
        thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC;
                let result = write_with_flags(&path, flags, value(tag, i).as_bytes());
                let mut o = outcomes.lock().unwrap();
                match result {
                    Ok(()) => o.acked.push(i),
                    Err(step) => {
                        let errno = step.errno();
                        let name = format!("{} {}", step_name(&step), errno_name(errno));
                        // A dead FUSE mount (ENOTCONN; ECONNABORTED for a request cut by the
                        // death), the guard (EROFS), a commit failed at shutdown (EIO).
                        let expected = [libc::ENOTCONN, libc::ECONNABORTED, libc::EROFS, libc::EIO];
                        if !expected.contains(&errno) {
                            o.unexpected.push(format!("#{i}: {name}"));
                        }
                        *o.failed.entry(name).or_default() += 1;
                        drop(o);
                        // Fast enough to hit the restart's millisecond between the detach of the
                        // dead mount and the new mount, without spinning a CPU.
                        thread::sleep(Duration::from_micros(200));
                    }
                }
                i += 1;
            }
        })
    };

    let acked = || outcomes.lock().unwrap().acked.len();
    for round in 0..=RESTARTS {
        // A few writes through every incarnation of the mount before it dies.
        let (before, deadline) = (acked(), Instant::now() + Duration::from_secs(20));
        while acked() < before + 5 {
            assert!(
                Instant::now() < deadline,
                "round {round}: no write succeeded for 20 s\n{}",
                n.log_tail(40)
            );
            thread::sleep(Duration::from_millis(5));
        }
        if round < RESTARTS {
            n.kill9();
            n.restart();
        }
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().expect("writer thread");
    let o = outcomes.lock().unwrap();
    eprintln!(
        "{} writes acknowledged across {RESTARTS} kill -9 restarts; failures: {:?}",
        o.acked.len(),
        o.failed
    );
    assert!(o.unexpected.is_empty(), "failures with an unexpected errno: {:?}", o.unexpected);

    // Every write that returned 0 is in the chain (chain/ is written behind: wait for it).
    let chain = n.chain_text();
    let lost: Vec<u64> =
        o.acked.iter().copied().filter(|&i| !chain.contains(&format!("\"{}\"", value(tag, i)))).collect();
    assert!(
        lost.is_empty(),
        "{} of {} writes that returned 0 are not in the chain (written under the mountpoint while no node served it?): {:?}",
        lost.len(),
        o.acked.len(),
        &lost[..lost.len().min(20)]
    );
    // And nothing ever landed in the directory beneath the mounts.
    n.stop();
    assert_eq!(detach_all(&n.mount()), 1, "only the guard was left after the stop");
    assert_eq!(list_dir(&n.mount()), Vec::<String>::new(), "the bare mountpoint directory stays empty");
}

fn step_name(step: &Step) -> &'static str {
    match step {
        Step::Open(_) => "open",
        Step::Write(_) => "write",
        Step::Close(_) => "close",
    }
}

#[test]
fn after_a_clean_stop_writes_fail_until_the_next_start_and_umount_releases_the_guard() {
    let mut n = Node::start(Opts::default());
    put(&n.path("kept"), b"committed\n");
    n.stop();

    let lines = mount_lines(&n.mount());
    assert!(lines.len() == 1 && is_guard_line(&lines[0]), "only the guard is left: {lines:#?}");
    let create =
        write_with_flags(&n.path("after-stop"), libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, b"x");
    assert!(
        matches!(&create, Err(Step::Open(e)) if e.raw_os_error() == Some(libc::EROFS)),
        "a write after a clean stop must fail with EROFS at open: {create:?}"
    );
    assert_errno(fs::create_dir(n.path("dir")), &[libc::EROFS], "mkdir after a clean stop");
    assert_eq!(list_dir(&n.mount()), Vec::<String>::new(), "the guard is empty");

    // The next start recognises its own guard and mounts on it.
    n.restart();
    assert_eq!(read(&n.path("kept")), b"committed\n");
    let lines = mount_lines(&n.mount());
    assert!(
        lines.len() == 2 && is_guard_line(&lines[0]) && is_fuse_line(&lines[1]),
        "one guard, one FUSE mount on it: {lines:#?}"
    );
    n.stop();

    // `umount` releases it: a plain directory again, which anyone can remove (no flag on it).
    assert_eq!(
        unsafe { libc::umount2(cpath(&n.mount()).as_ptr(), 0) },
        0,
        "umount the guard: {}",
        errno_name(errno())
    );
    assert!(mount_lines(&n.mount()).is_empty());
    fs::remove_dir(n.mount()).expect("rmdir the released mountpoint");
    // A start on a missing mountpoint creates it and guards it again.
    n.restart();
    assert_eq!(read(&n.path("kept")), b"committed\n");
    assert!(is_guard_line(&mount_lines(&n.mount())[0]));
}

#[test]
fn release_guard_on_stop_leaves_no_mount() {
    let mut n = Node::start(Opts { extra: vec!["--release-guard-on-stop".into()], ..Opts::default() });
    put(&n.path("f"), b"x\n");
    n.stop();
    assert!(mount_lines(&n.mount()).is_empty(), "nothing left mounted: {:#?}", mount_lines(&n.mount()));
    assert!(n.log().contains("released the mountpoint guard"), "{}", n.log_tail(10));
}

/// Starts a node on a mountpoint prepared by `arrange` and asserts it refuses to start, leaving
/// the mounts there exactly as they were.
fn assert_refused(what: &str, arrange: impl FnOnce(&Node)) {
    let mut n = Node::prepare(Opts::default());
    arrange(&n);
    let before = mount_lines(&n.mount());
    n.spawn();
    let status = n
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("{what}: lightchain did not refuse within 30 s\n{}", n.log_tail(30)));
    assert!(!status.success(), "{what}: the exit status must be non-zero\n{}", n.log_tail(20));
    assert!(
        !n.log().contains("lightchain ready"),
        "{what}: it must refuse before serving\n{}",
        n.log_tail(20)
    );
    assert_eq!(mount_lines(&n.mount()), before, "{what}: the mounts are left alone");
    assert_eq!(fs::read_dir(n.data()).unwrap().count(), 0, "{what}: nothing created in the data directory");
}

/// `mount -t tmpfs -o OPTIONS SOURCE TARGET`, asserting success.
fn tmpfs(source: &str, target: &std::path::Path, read_only: bool) {
    let (src, fstype) = (std::ffi::CString::new(source).unwrap(), std::ffi::CString::new("tmpfs").unwrap());
    let flags = if read_only { libc::MS_RDONLY } else { 0 };
    let rc = unsafe {
        libc::mount(src.as_ptr(), cpath(target).as_ptr(), fstype.as_ptr(), flags, std::ptr::null())
    };
    assert_eq!(rc, 0, "mount tmpfs {source} on {}: {}", target.display(), errno_name(errno()));
}

#[test]
fn a_foreign_mount_is_still_refused_even_one_that_looks_like_a_guard_or_sits_on_one() {
    // A read-write tmpfs that borrows the guard's name is not a guard.
    assert_refused("a read-write tmpfs named lightchain-guard", |n| tmpfs(GUARD_SOURCE, &n.mount(), false));
    // A read-only tmpfs of another name is a foreign volume.
    assert_refused("a read-only tmpfs of another name", |n| tmpfs("some-volume", &n.mount(), true));
    // Someone mounted over a node's guard: the top is what counts.
    assert_refused("a tmpfs mounted on top of a guard", |n| {
        tmpfs(GUARD_SOURCE, &n.mount(), true);
        tmpfs("on-top", &n.mount(), false);
    });
}
