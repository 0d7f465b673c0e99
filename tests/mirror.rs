//! The `states/` mirror on the real binary (issue 19 §3).
//!
//! - A daemon that file permissions apply to (here: root without `CAP_DAC_OVERRIDE` and
//!   `CAP_DAC_READ_SEARCH`, which is what a daemon not run as root meets) mirrors states of mode
//!   0000 and directories of mode 0555 and 0000, writes below them, renames them and repairs
//!   them at start-up: nothing fails, and `verify` passes.
//! - `fsync` means "in `states/`, durably": on a state whose mirror writes keep failing it is
//!   `EIO` after the commit timeout, while `fsync` of another state returns 0; once the cause is
//!   gone it returns 0 again.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::*;

fn chmod(path: &std::path::Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn mode_on_disk(n: &Node, rel: &str) -> u32 {
    fs::symlink_metadata(n.state_path(rel)).unwrap().permissions().mode() & 0o7777
}

fn assert_mirror_clean(n: &Node, what: &str) {
    let m = n.status_json()["mirror"].clone();
    assert_eq!((m["errors"].as_u64(), m["failing"].as_u64()), (Some(0), Some(0)), "{what}: {m}");
}

#[test]
fn a_daemon_that_permissions_apply_to_mirrors_any_mode() {
    let mut n = Node::start(Opts { without_permission_override: true, ..Opts::default() });
    put(&n.path("locked"), b"nobody may read this\n");
    chmod(&n.path("locked"), 0o000);
    fs::create_dir(n.path("ro")).unwrap();
    put(&n.path("ro/a"), b"a\n");
    fs::create_dir(n.path("ro/sub")).unwrap();
    put(&n.path("ro/sub/b"), b"b\n");
    chmod(&n.path("ro/sub"), 0o555);
    chmod(&n.path("ro"), 0o555);
    fs::create_dir(n.path("shut")).unwrap();
    put(&n.path("shut/c"), b"c\n");
    chmod(&n.path("shut/c"), 0o444);
    chmod(&n.path("shut"), 0o000);
    n.wait_written_behind();
    // Later versions below them, a move of a closed directory into another, and a state after
    // them all.
    put(&n.path("ro/a"), b"a2\n");
    put(&n.path("ro/sub/new"), b"new\n");
    put(&n.path("shut/c"), b"c2\n");
    put(&n.path("locked"), b"still nobody\n");
    fs::rename(n.path("ro/sub"), n.path("shut/sub")).unwrap();
    put(&n.path("z"), b"after them\n");
    n.wait_written_behind();
    assert_mirror_clean(&n, "live");
    assert_eq!(n.state_file("z").as_deref(), Some(&b"after them\n"[..]));
    assert_eq!(n.state_file("shut/sub/new").as_deref(), Some(&b"new\n"[..]));
    assert_eq!(n.state_file("locked").as_deref(), Some(&b"still nobody\n"[..]));
    for (rel, mode) in
        [("locked", 0o000), ("ro", 0o555), ("shut", 0o000), ("shut/sub", 0o555), ("shut/c", 0o444)]
    {
        assert_eq!(mode_on_disk(&n, rel), mode, "{rel}");
    }
    // The start-up repair reads and compares all of it, and finds nothing to fix.
    n.stop();
    n.restart();
    n.wait_written_behind();
    assert_mirror_clean(&n, "after the start-up repair");
    assert!(!n.log().contains("repair:"), "nothing differed: {}", n.log_tail(20));
    // A hand edit below a closed directory is found and repaired at the next start.
    n.stop();
    chmod(&n.state_path("shut"), 0o700);
    fs::write(n.state_path("shut/c"), b"edited by hand\n").unwrap();
    chmod(&n.state_path("shut/c"), 0o444);
    chmod(&n.state_path("shut"), 0o000);
    n.restart();
    n.wait_written_behind();
    assert_mirror_clean(&n, "after repairing a hand edit");
    assert!(n.log().contains("repair: rewrote"), "the repair is logged");
    assert_eq!(n.state_file("shut/c").as_deref(), Some(&b"c2\n"[..]));
    assert_eq!(mode_on_disk(&n, "shut"), 0o000);
    n.stop();
    assert_ok(&n.verify(), "verify");
}

/// Unmounts a test's extra mount on drop (even when the test panics).
struct ExtraMount(std::path::PathBuf);

impl Drop for ExtraMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Opens `path` for writing (truncating), writes `content` and fsyncs; the descriptor stays open.
fn write_and_fsync(path: &std::path::Path, content: &[u8]) -> (i32, std::io::Result<()>) {
    let fd = open_raw(path, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, 0o644).unwrap();
    write_all_raw(fd, content).unwrap();
    (fd, fsync_raw(fd))
}

#[test]
fn fsync_of_a_state_the_mirror_cannot_write_is_eio_and_others_succeed() {
    let n = Node::start(Opts::default().commit_timeout("3s"));
    fs::create_dir(n.path("locked")).unwrap();
    put(&n.path("locked/a"), b"one\n");
    n.wait_written_behind();
    let dir = n.state_path("locked");
    run("mount", &["--bind", dir.to_str().unwrap(), dir.to_str().unwrap()]);
    let guard = ExtraMount(dir.clone());
    run("mount", &["-o", "remount,bind,ro", dir.to_str().unwrap()]);

    let (fd, synced) = write_and_fsync(&n.path("locked/a"), b"two\n");
    let e = synced.expect_err("fsync of a state the mirror cannot write");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert_eq!(read(&n.path("locked/a")), b"two\n", "the commit itself stands");
    let (other, synced) = write_and_fsync(&n.path("free"), b"free\n");
    synced.expect("fsync of a state the mirror can write");
    close_raw(other).unwrap();
    assert_eq!(n.state_file("free").as_deref(), Some(&b"free\n"[..]));

    // The cause goes away: the retry writes it, and the same descriptor's fsync returns 0.
    drop(guard);
    fsync_raw(fd).expect("fsync once the mirror caught up");
    close_raw(fd).unwrap();
    assert_eq!(n.state_file("locked/a").as_deref(), Some(&b"two\n"[..]));
    let m = n.status_json()["mirror"].clone();
    assert_eq!(m["failing"].as_u64(), Some(0), "{m}");
}
