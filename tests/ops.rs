//! DESIGN §1.2, row by row, through `std::fs` and raw `libc` calls on a real mount of the real binary.
//!
//! Every commit is observed explicitly: `put`/`append` check the return value of `close(2)`, and tests that
//! use `File` call `sync_all` and check it. "Committed" is then checked where a user would look: the mount,
//! `DATA/states/`, and `DATA/chain/`.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::UNIX_EPOCH;

use common::*;

/// Errnos DESIGN §1.1/§1.2 allow for writes into `.lightchain/`.
const READ_ONLY: &[i32] = &[libc::EACCES, libc::EROFS];
/// Errnos allowed for unsupported operations (hard link, mknod).
const UNSUPPORTED: &[i32] = &[libc::EPERM, libc::EOPNOTSUPP];

fn node() -> Node {
    Node::start(Opts::default())
}

fn renameat2(from: &std::path::Path, to: &std::path::Path, flags: u32) -> std::io::Result<i32> {
    let (a, b) = (cpath(from), cpath(to));
    check(unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), flags) })
}

// ----- write, close, commit -----

#[test]
fn close_returning_zero_means_committed_in_states_and_chain() {
    let n = node();
    let h0 = n.head_height();
    put(&n.path("greeting"), b"hello close-commit-7f3a\n");
    // Checked immediately after close returned 0, with nothing in between.
    assert_eq!(
        n.state_file("greeting").as_deref(),
        Some(&b"hello close-commit-7f3a\n"[..]),
        "DATA/states/greeting must hold the new content as soon as close returned 0"
    );
    assert!(
        n.chain_text().contains("hello close-commit-7f3a"),
        "DATA/chain/ must contain the block with the new content as soon as close returned 0"
    );
    assert!(n.head_height() > h0, "head_height must grow after a commit");
    assert_eq!(read(&n.path("greeting")), b"hello close-commit-7f3a\n", "read back through the mount");
}

#[test]
fn sync_all_commits_through_std_file() {
    let n = node();
    let mut f = File::create(n.path("std-file")).expect("File::create");
    f.write_all(b"written with std\n").expect("write_all");
    f.sync_all().expect("sync_all must return Ok once committed");
    assert_eq!(
        n.state_file("std-file").as_deref(),
        Some(&b"written with std\n"[..]),
        "states/ must hold the content right after sync_all"
    );
    drop(f);
    assert_eq!(read(&n.path("std-file")), b"written with std\n");
}

#[test]
fn fsync_of_dirty_handle_commits_before_close() {
    let n = node();
    let p = n.path("fsynced");
    let fd = open_raw(&p, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, 0o644).expect("open");
    write_all_raw(fd, b"durable before close\n").expect("write");
    fsync_raw(fd).expect("fsync of a dirty handle must commit and return 0");
    let visible = n.state_file("fsynced");
    let in_chain = n.chain_text().contains("durable before close");
    close_raw(fd).expect("close");
    assert_eq!(
        visible.as_deref(),
        Some(&b"durable before close\n"[..]),
        "states/fsynced must hold the content after fsync returned, while the fd was still open"
    );
    assert!(in_chain, "the block must be in chain/ after fsync returned, before close");
}

#[test]
fn close_after_fsync_without_new_writes_commits_nothing() {
    let n = node();
    let p = n.path("once");
    let fd = open_raw(&p, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, 0o644).expect("open");
    write_all_raw(fd, b"only one commit\n").expect("write");
    fsync_raw(fd).expect("fsync");
    let after_fsync = n.head_height();
    close_raw(fd).expect("close");
    let after_close = n.head_height();
    assert_eq!(after_close, after_fsync, "close of a handle already committed by fsync must add no block");
    assert_eq!(read(&p), b"only one commit\n");
}

#[test]
fn close_of_clean_handle_commits_nothing() {
    let n = node();
    let p = n.path("clean");
    put(&p, b"unchanged\n");
    let before = n.head_height();
    // Opened for writing and for read-write, but never written.
    let fd = open_raw(&p, libc::O_WRONLY, 0).expect("open O_WRONLY");
    close_raw(fd).expect("close of clean O_WRONLY handle");
    let fd = open_raw(&p, libc::O_RDWR, 0).expect("open O_RDWR");
    let mut buf = [0u8; 64];
    let got = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
    assert_eq!(got, 10, "read on O_RDWR handle");
    close_raw(fd).expect("close of clean O_RDWR handle");
    assert_eq!(n.head_height(), before, "closing clean handles must not add blocks");
    assert_eq!(read(&p), b"unchanged\n");
}

#[test]
fn o_trunc_open_replaces_content() {
    let n = node();
    let p = n.path("replaced");
    put(&p, b"a much longer first version\n");
    put(&p, b"short\n");
    assert_eq!(read(&p), b"short\n", "O_TRUNC + write must replace, not overlay");
    assert_eq!(n.state_file("replaced").as_deref(), Some(&b"short\n"[..]));
    assert_eq!(fs::metadata(&p).unwrap().len(), 6, "size after replacing with a shorter content");
}

#[test]
fn write_without_o_trunc_edits_the_committed_content() {
    let n = node();
    let p = n.path("edited");
    put(&p, b"hello world\n");
    let fd = open_raw(&p, libc::O_WRONLY, 0).expect("open O_WRONLY without O_TRUNC");
    let rc = unsafe { libc::pwrite(fd, b"WORLD".as_ptr() as *const libc::c_void, 5, 6) };
    assert_eq!(rc, 5, "pwrite: {}", errno_name(errno()));
    close_raw(fd).expect("close");
    assert_eq!(read(&p), b"hello WORLD\n", "the handle must start from the committed content");
    assert_eq!(n.state_file("edited").as_deref(), Some(&b"hello WORLD\n"[..]));
}

#[test]
fn o_append_appends() {
    let n = node();
    let p = n.path("journal");
    put(&p, b"one\n");
    append(&p, b"two\n");
    append(&p, b"three\n");
    assert_eq!(read(&p), b"one\ntwo\nthree\n", "O_APPEND must add to the end");
    assert_eq!(n.state_file("journal").as_deref(), Some(&b"one\ntwo\nthree\n"[..]));
}

#[test]
fn o_append_creates_missing_file() {
    let n = node();
    let p = n.path("fresh-journal");
    append(&p, b"first line\n");
    assert_eq!(read(&p), b"first line\n");
}

#[test]
fn concurrent_append_handles_keep_both_lines() {
    let n = node();
    let p = n.path("shared-journal");
    put(&p, b"start\n");
    // Two appenders open before either commits: an append is applied to whatever the state holds when
    // its block is applied, so neither may overwrite the other (DESIGN §1.2).
    let a = open_raw(&p, libc::O_WRONLY | libc::O_APPEND, 0).expect("open appender a");
    let b = open_raw(&p, libc::O_WRONLY | libc::O_APPEND, 0).expect("open appender b");
    write_all_raw(a, b"from a\n").expect("write a");
    write_all_raw(b, b"from b\n").expect("write b");
    close_raw(a).expect("close a");
    close_raw(b).expect("close b");
    assert_eq!(read_string(&p), "start\nfrom a\nfrom b\n", "both appended lines survive, in commit order");
}

#[test]
fn o_trunc_open_without_write_commits_empty_content() {
    let n = node();
    let p = n.path("emptied");
    put(&p, b"something\n");
    let fd = open_raw(&p, libc::O_WRONLY | libc::O_TRUNC, 0).expect("open O_TRUNC");
    close_raw(fd).expect("close");
    assert_eq!(read(&p), b"", "an O_TRUNC open of a non-empty state is dirty and commits empty content");
    assert_eq!(n.state_file("emptied").as_deref(), Some(&b""[..]), "states/emptied is empty");
}

#[test]
fn content_of_exactly_the_default_limit_round_trips() {
    let n = node();
    let content: Vec<u8> = (0..DEFAULT_MAX_STATE_SIZE).map(|i| (i * 31 % 253) as u8).collect();
    put(&n.path("full-size"), &content);
    assert_eq!(fs::metadata(n.path("full-size")).unwrap().len(), DEFAULT_MAX_STATE_SIZE as u64);
    assert!(read(&n.path("full-size")) == content, "1 MiB read back through the mount differs");
    assert!(n.state_file("full-size") == Some(content), "states/full-size differs");
}

#[test]
fn binary_content_round_trips() {
    let n = node();
    let content: Vec<u8> = (0..4096u32).map(|i| (i % 256) as u8).rev().collect();
    put(&n.path("blob.bin"), &content);
    assert_eq!(read(&n.path("blob.bin")), content, "non-UTF-8 bytes read back through the mount");
    assert_eq!(n.state_file("blob.bin"), Some(content), "non-UTF-8 bytes in states/");
}

#[test]
fn reader_keeps_its_snapshot_after_unlink() {
    let n = node();
    let p = n.path("vanishing");
    put(&p, b"read me later\n");
    let mut reader = File::open(&p).expect("open reader");
    fs::remove_file(&p).expect("unlink");
    let mut got = Vec::new();
    reader.read_to_end(&mut got).expect("read after unlink");
    assert_eq!(got, b"read me later\n", "an open handle reads the snapshot taken at open, even after unlink");
}

#[test]
fn reads_see_the_snapshot_taken_at_open() {
    let n = node();
    let p = n.path("snap");
    put(&p, b"version one\n");
    let mut reader = File::open(&p).expect("open reader");
    put(&p, b"version two, longer\n");
    let mut got = Vec::new();
    reader.read_to_end(&mut got).expect("read");
    assert_eq!(got, b"version one\n", "a handle opened before the write must read the old snapshot");
    assert_eq!(read(&p), b"version two, longer\n", "a new open must see the new content");
}

#[test]
fn concurrent_closes_all_commit() {
    let n = node();
    let mount = n.mount();
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let mount = mount.clone();
            thread::spawn(move || {
                for round in 0..4 {
                    put(&mount.join(format!("w{t}")), format!("writer {t} round {round}\n").as_bytes());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a writer thread failed (see its panic above)");
    }
    for t in 0..16 {
        let want = format!("writer {t} round 3\n");
        assert_eq!(read_string(&n.path(&format!("w{t}"))), want, "final content of w{t}");
        assert_eq!(n.state_file(&format!("w{t}")), Some(want.into_bytes()), "states/w{t}");
    }
}

// ----- create -----

#[test]
fn create_is_committed_before_open_returns() {
    let n = node();
    let p = n.path("born");
    let fd = open_raw(&p, libc::O_WRONLY | libc::O_CREAT, 0o644).expect("open O_CREAT");
    // Not written, not closed: the creation alone must already be committed.
    let in_states = n.state_file("born");
    let stat = fs::metadata(&p);
    close_raw(fd).expect("close");
    assert_eq!(in_states.as_deref(), Some(&b""[..]), "states/born must exist (empty) once open returned");
    let stat = stat.expect("the new file must be visible in the mount while its creator holds it open");
    assert_eq!(stat.len(), 0);
}

#[test]
fn touch_of_missing_name_creates_empty_file() {
    let n = node();
    let p = n.path("empty");
    let f = File::create(&p).expect("create");
    f.sync_all().expect("sync_all");
    drop(f);
    assert_eq!(fs::metadata(&p).expect("stat").len(), 0);
    assert_eq!(n.state_file("empty").as_deref(), Some(&b""[..]));
}

#[test]
fn create_excl_on_existing_name_fails_at_open_with_eexist() {
    let n = node();
    let p = n.path("lock");
    put(&p, b"holder 1\n");
    assert_errno(
        open_raw(&p, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o644),
        &[libc::EEXIST],
        "open(O_CREAT|O_EXCL) of an existing name",
    );
    assert_eq!(read(&p), b"holder 1\n", "the losing O_EXCL open must change nothing");
    assert_eq!(n.state_file("lock").as_deref(), Some(&b"holder 1\n"[..]), "states/lock unchanged");
}

#[test]
fn create_excl_on_missing_name_succeeds() {
    let n = node();
    let p = n.path("newlock");
    let fd =
        open_raw(&p, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o644).expect("O_EXCL on a missing name");
    write_all_raw(fd, b"mine\n").expect("write");
    close_raw(fd).expect("close");
    assert_eq!(read(&p), b"mine\n");
}

#[test]
fn racing_create_excl_has_exactly_one_winner() {
    let n = node();
    let p = n.path("race-lock");
    let racers = 8;
    let barrier = Arc::new(Barrier::new(racers));
    let handles: Vec<_> = (0..racers)
        .map(|i| {
            let (p, barrier) = (p.clone(), Arc::clone(&barrier));
            thread::spawn(move || {
                barrier.wait();
                match open_raw(&p, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o644) {
                    Ok(fd) => {
                        write_all_raw(fd, format!("winner {i}\n").as_bytes()).expect("winner's write");
                        close_raw(fd).expect("winner's close");
                        Ok(i)
                    }
                    Err(e) => Err(e.raw_os_error().unwrap_or(-1)),
                }
            })
        })
        .collect();
    let results: Vec<Result<usize, i32>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let winners: Vec<usize> = results.iter().filter_map(|r| r.ok()).collect();
    assert_eq!(winners.len(), 1, "exactly one O_EXCL creator must win; results: {results:?}");
    for r in &results {
        if let Err(e) = r {
            assert_eq!(*e, libc::EEXIST, "losers must get EEXIST, got {}", errno_name(*e));
        }
    }
    assert_eq!(read_string(&p), format!("winner {}\n", winners[0]));
}

// ----- unlink -----

#[test]
fn unlink_removes_the_state() {
    let n = node();
    let p = n.path("doomed");
    put(&p, b"bye\n");
    fs::remove_file(&p).expect("unlink");
    assert_errno(fs::metadata(&p), &[libc::ENOENT], "stat after unlink");
    assert_errno(File::open(&p), &[libc::ENOENT], "open after unlink");
    assert!(!list_dir(&n.mount()).contains(&"doomed".to_string()), "readdir must not list it");
    assert_eq!(n.state_file("doomed"), None, "states/doomed must be gone after unlink returned");
}

#[test]
fn unlink_of_missing_name_is_enoent() {
    let n = node();
    assert_errno(fs::remove_file(n.path("never-existed")), &[libc::ENOENT], "unlink of a missing name");
}

// ----- directories -----

#[test]
fn nested_directories_hold_states() {
    let n = node();
    fs::create_dir_all(n.path("a/b/c")).expect("mkdir -p a/b/c");
    put(&n.path("a/b/c/leaf"), b"deep\n");
    put(&n.path("a/top"), b"shallow\n");
    assert_eq!(read(&n.path("a/b/c/leaf")), b"deep\n");
    assert_eq!(list_dir(&n.path("a")), vec!["b", "top"], "listing of a/");
    assert_eq!(list_dir(&n.path("a/b")), vec!["c"], "listing of a/b/");
    assert!(fs::metadata(n.path("a/b")).unwrap().is_dir(), "a/b must be a directory");
    assert_eq!(n.state_file("a/b/c/leaf").as_deref(), Some(&b"deep\n"[..]), "states/a/b/c/leaf");
    assert!(n.state_path("a/b/c").is_dir(), "states/a/b/c must be a directory");
}

#[test]
fn mkdir_is_committed() {
    let n = node();
    let before = n.head_height();
    fs::create_dir(n.path("ns")).expect("mkdir");
    assert!(n.head_height() > before, "mkdir must be a transaction (DESIGN §1.1)");
    assert!(n.state_path("ns").is_dir(), "states/ns must exist after mkdir returned");
    assert_errno(fs::create_dir(n.path("ns")), &[libc::EEXIST], "mkdir of an existing directory");
}

#[test]
fn create_in_missing_directory_is_enoent() {
    let n = node();
    assert_errno(
        open_raw(&n.path("no-such-dir/f"), libc::O_WRONLY | libc::O_CREAT, 0o644),
        &[libc::ENOENT],
        "create under a missing parent",
    );
}

#[test]
fn rmdir_of_empty_directory_removes_it() {
    let n = node();
    fs::create_dir(n.path("gone")).expect("mkdir");
    fs::remove_dir(n.path("gone")).expect("rmdir of an empty directory");
    assert_errno(fs::metadata(n.path("gone")), &[libc::ENOENT], "stat after rmdir");
    assert!(!n.state_path("gone").exists(), "states/gone must be removed");
}

#[test]
fn rmdir_of_non_empty_directory_is_enotempty() {
    let n = node();
    fs::create_dir(n.path("full")).expect("mkdir");
    put(&n.path("full/item"), b"keep me\n");
    assert_errno(fs::remove_dir(n.path("full")), &[libc::ENOTEMPTY], "rmdir of a non-empty directory");
    // Preconditions are checked at apply, so the failed rmdir may be recorded in a block (with a failed
    // outcome); what must not happen is any change to the states.
    assert_eq!(read(&n.path("full/item")), b"keep me\n", "contents survive the failed rmdir");
    assert!(n.state_path("full").is_dir(), "states/full still exists");
    assert_eq!(n.state_file("full/item").as_deref(), Some(&b"keep me\n"[..]), "states/full/item unchanged");
}

// ----- rename -----

#[test]
fn rename_moves_a_file() {
    let n = node();
    put(&n.path("old-name"), b"moving\n");
    fs::rename(n.path("old-name"), n.path("new-name")).expect("rename");
    assert_errno(fs::metadata(n.path("old-name")), &[libc::ENOENT], "old name after rename");
    assert_eq!(read(&n.path("new-name")), b"moving\n");
    assert_eq!(n.state_file("old-name"), None, "states/old-name gone");
    assert_eq!(n.state_file("new-name").as_deref(), Some(&b"moving\n"[..]), "states/new-name");
}

#[test]
fn rename_replaces_an_existing_target() {
    let n = node();
    put(&n.path("src"), b"from src\n");
    put(&n.path("dst"), b"from dst\n");
    fs::rename(n.path("src"), n.path("dst")).expect("rename onto an existing file");
    assert_eq!(read(&n.path("dst")), b"from src\n");
    assert_errno(fs::metadata(n.path("src")), &[libc::ENOENT], "source after rename");
}

#[test]
fn rename_into_another_directory() {
    let n = node();
    fs::create_dir(n.path("inbox")).unwrap();
    put(&n.path("letter"), b"dear reader\n");
    fs::rename(n.path("letter"), n.path("inbox/letter")).expect("rename into a directory");
    assert_eq!(read(&n.path("inbox/letter")), b"dear reader\n");
    assert_eq!(n.state_file("inbox/letter").as_deref(), Some(&b"dear reader\n"[..]));
    assert_eq!(n.state_file("letter"), None);
}

#[test]
fn rename_of_directory_moves_the_whole_subtree() {
    let n = node();
    fs::create_dir_all(n.path("proj/sub/deeper")).unwrap();
    put(&n.path("proj/one"), b"1\n");
    put(&n.path("proj/sub/two"), b"2\n");
    put(&n.path("proj/sub/deeper/three"), b"3\n");
    fs::rename(n.path("proj"), n.path("moved")).expect("rename of a directory");
    assert_errno(fs::metadata(n.path("proj")), &[libc::ENOENT], "old directory name");
    assert_eq!(read(&n.path("moved/one")), b"1\n");
    assert_eq!(read(&n.path("moved/sub/two")), b"2\n");
    assert_eq!(read(&n.path("moved/sub/deeper/three")), b"3\n");
    assert_eq!(n.state_file("moved/sub/deeper/three").as_deref(), Some(&b"3\n"[..]), "states/ moved too");
    assert!(!n.state_path("proj").exists(), "states/proj must be gone");
    // The moved states are live under their new IDs.
    put(&n.path("moved/sub/two"), b"2b\n");
    assert_eq!(read(&n.path("moved/sub/two")), b"2b\n");
}

#[test]
fn rename_noreplace_onto_existing_name_is_eexist() {
    let n = node();
    put(&n.path("a"), b"A\n");
    put(&n.path("b"), b"B\n");
    assert_errno(
        renameat2(&n.path("a"), &n.path("b"), libc::RENAME_NOREPLACE),
        &[libc::EEXIST],
        "renameat2(RENAME_NOREPLACE) onto an existing name",
    );
    assert_eq!(read(&n.path("a")), b"A\n", "source unchanged");
    assert_eq!(read(&n.path("b")), b"B\n", "target unchanged");
}

#[test]
fn rename_noreplace_onto_missing_name_renames() {
    let n = node();
    put(&n.path("a"), b"A\n");
    renameat2(&n.path("a"), &n.path("c"), libc::RENAME_NOREPLACE).expect("RENAME_NOREPLACE to a free name");
    assert_eq!(read(&n.path("c")), b"A\n");
    assert_errno(fs::metadata(n.path("a")), &[libc::ENOENT], "source after rename");
}

#[test]
fn rename_exchange_swaps_contents() {
    let n = node();
    put(&n.path("left"), b"LEFT\n");
    put(&n.path("right"), b"RIGHT\n");
    renameat2(&n.path("left"), &n.path("right"), libc::RENAME_EXCHANGE).expect("RENAME_EXCHANGE");
    assert_eq!(read(&n.path("left")), b"RIGHT\n", "left after exchange");
    assert_eq!(read(&n.path("right")), b"LEFT\n", "right after exchange");
    assert_eq!(n.state_file("left").as_deref(), Some(&b"RIGHT\n"[..]), "states/left");
    assert_eq!(n.state_file("right").as_deref(), Some(&b"LEFT\n"[..]), "states/right");
}

// ----- truncate, chmod, chown, utimens -----

#[test]
fn truncate_path_shrinks() {
    let n = node();
    let p = n.path("cut");
    put(&p, b"hello world\n");
    check(unsafe { libc::truncate(cpath(&p).as_ptr(), 5) }).expect("truncate(path, 5)");
    assert_eq!(read(&p), b"hello", "content after truncate");
    assert_eq!(fs::metadata(&p).unwrap().len(), 5, "size after truncate");
    assert_eq!(n.state_file("cut").as_deref(), Some(&b"hello"[..]), "states/ after truncate returned");
}

#[test]
fn truncate_path_extends_with_zeros() {
    let n = node();
    let p = n.path("grow");
    put(&p, b"ab");
    check(unsafe { libc::truncate(cpath(&p).as_ptr(), 5) }).expect("truncate(path, 5)");
    assert_eq!(read(&p), b"ab\0\0\0");
}

#[test]
fn ftruncate_on_a_handle_commits_at_sync() {
    let n = node();
    let p = n.path("ftrunc");
    put(&p, b"0123456789");
    let f = OpenOptions::new().write(true).open(&p).expect("open for writing");
    f.set_len(3).expect("ftruncate");
    f.sync_all().expect("sync_all after ftruncate");
    assert_eq!(n.state_file("ftrunc").as_deref(), Some(&b"012"[..]), "states/ after sync_all");
    drop(f);
    assert_eq!(read(&p), b"012");
}

#[test]
fn chmod_is_reflected_by_stat() {
    let n = node();
    let p = n.path("modes");
    put(&p, b"x");
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).expect("chmod 600");
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o600, "mode after chmod 600");
    fs::set_permissions(&p, fs::Permissions::from_mode(0o751)).expect("chmod 751");
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o751, "mode after chmod 751");
}

#[test]
fn chown_by_root_changes_owner_and_group() {
    let n = node();
    let p = n.path("owned");
    put(&p, b"x");
    assert_eq!((fs::metadata(&p).unwrap().uid(), fs::metadata(&p).unwrap().gid()), (0, 0), "root's file");
    check(unsafe { libc::chown(cpath(&p).as_ptr(), 4242, 4343) }).expect("chown by root");
    let meta = fs::metadata(&p).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (4242, 4343), "owner and group after chown");
    check(unsafe { libc::chown(cpath(&p).as_ptr(), u32::MAX, 7) }).expect("chgrp only (uid -1)");
    let meta = fs::metadata(&p).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (4242, 7));
    assert_eq!(read(&p), b"x", "content unchanged");
}

#[test]
fn touch_of_existing_file_succeeds() {
    let n = node();
    let p = n.path("touched");
    put(&p, b"keep\n");
    // utimensat(path, NULL): what `touch` does on an existing file.
    check(unsafe { libc::utimensat(libc::AT_FDCWD, cpath(&p).as_ptr(), std::ptr::null(), 0) })
        .expect("utimensat(NULL) on an existing file must succeed");
    // And with explicit times (`touch -d`, `cp -p`).
    let times = [
        libc::timespec { tv_sec: 1_600_000_000, tv_nsec: 0 },
        libc::timespec { tv_sec: 1_600_000_000, tv_nsec: 0 },
    ];
    check(unsafe { libc::utimensat(libc::AT_FDCWD, cpath(&p).as_ptr(), times.as_ptr(), 0) })
        .expect("utimensat(explicit times) must succeed");
    assert_eq!(read(&p), b"keep\n", "touch must not change the content");
    let meta = fs::metadata(&p).unwrap();
    assert_eq!((meta.atime(), meta.mtime()), (1_600_000_000, 1_600_000_000), "stat shows the times set");
}

#[test]
fn lchown_and_nofollow_utimensat_change_the_link_not_its_target() {
    let n = node();
    let (target, link) = (n.path("target"), n.path("link"));
    put(&target, b"t");
    std::os::unix::fs::symlink("target", &link).expect("symlink(2)");
    check(unsafe { libc::lchown(cpath(&link).as_ptr(), 7, 8) }).expect("lchown");
    let times =
        [libc::timespec { tv_sec: 100, tv_nsec: 1 }, libc::timespec { tv_sec: -100, tv_nsec: 500_000_000 }];
    let rc = unsafe {
        libc::utimensat(libc::AT_FDCWD, cpath(&link).as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW)
    };
    check(rc).expect("utimensat(AT_SYMLINK_NOFOLLOW)");
    let l = fs::symlink_metadata(&link).unwrap();
    assert_eq!((l.uid(), l.gid()), (7, 8), "the link's owner");
    assert_eq!((l.atime(), l.atime_nsec(), l.mtime(), l.mtime_nsec()), (100, 1, -100, 500_000_000));
    let t = fs::metadata(&link).unwrap();
    assert_eq!((t.uid(), t.gid()), (0, 0), "the target is untouched");
    assert_ne!(t.mtime(), -100);
    // chown through the link follows it.
    check(unsafe { libc::chown(cpath(&link).as_ptr(), 9, 9) }).expect("chown through the link");
    assert_eq!(fs::metadata(&target).unwrap().uid(), 9);
    assert_eq!(fs::symlink_metadata(&link).unwrap().uid(), 7);
}

#[test]
fn futimens_before_close_keeps_the_times_over_the_commit() {
    // What `cp -p` does: write, set times on the descriptor, then close.
    let n = node();
    let p = n.path("copied");
    let fd = open_raw(&p, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, 0o644).expect("open");
    write_all_raw(fd, b"content").expect("write");
    let times = [
        libc::timespec { tv_sec: 1_500_000_000, tv_nsec: 250 },
        libc::timespec { tv_sec: 1_500_000_001, tv_nsec: 750 },
    ];
    check(unsafe { libc::futimens(fd, times.as_ptr()) }).expect("futimens");
    close_raw(fd).expect("close commits nothing new");
    let meta = fs::metadata(&p).unwrap();
    assert_eq!(read(&p), b"content");
    assert_eq!((meta.atime(), meta.atime_nsec()), (1_500_000_000, 250));
    assert_eq!((meta.mtime(), meta.mtime_nsec()), (1_500_000_001, 750), "mtime survives the close");
    assert!(meta.ctime() > 1_500_000_001, "ctime is the block's time");
}

#[test]
fn chown_and_utimensat_of_a_missing_name_are_enoent() {
    let n = node();
    let p = n.path("missing");
    assert_errno(check(unsafe { libc::chown(cpath(&p).as_ptr(), 1, 1) }), &[libc::ENOENT], "chown");
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, cpath(&p).as_ptr(), std::ptr::null(), 0) };
    assert_errno(check(rc), &[libc::ENOENT], "utimensat");
    let mut buf = [0 as libc::c_char; 8];
    let rc = unsafe { libc::readlink(cpath(&p).as_ptr(), buf.as_mut_ptr(), buf.len()) };
    assert_errno(check(rc as i32), &[libc::ENOENT], "readlink of a missing name");
    put(&p, b"x");
    let rc = unsafe { libc::readlink(cpath(&p).as_ptr(), buf.as_mut_ptr(), buf.len()) };
    assert_errno(check(rc as i32), &[libc::EINVAL], "readlink of a file");
    assert_errno(
        check(unsafe { libc::lchown(cpath(&n.path(".lightchain/status")).as_ptr(), 1, 1) }),
        &[libc::EACCES, libc::EPERM],
        "chown in .lightchain/",
    );
}

// ----- unsupported operations -----

#[test]
fn hard_link_is_refused() {
    let n = node();
    put(&n.path("orig"), b"x");
    assert_errno(fs::hard_link(n.path("orig"), n.path("link")), UNSUPPORTED, "link(2)");
    assert_errno(fs::metadata(n.path("link")), &[libc::ENOENT], "no link may be created");
}

#[test]
fn symlink_makes_a_link_state() {
    let n = node();
    put(&n.path("orig"), b"x");
    std::os::unix::fs::symlink("orig", n.path("sym")).expect("symlink(2)");
    let meta = fs::symlink_metadata(n.path("sym")).unwrap();
    assert!(meta.file_type().is_symlink(), "lstat shows a symlink");
    assert_eq!((meta.len(), meta.mode() & 0o7777), (4, 0o777), "size = target length, mode 0777");
    assert_eq!(fs::read_link(n.path("sym")).unwrap(), Path::new("orig"));
    assert_eq!(read(&n.path("sym")), b"x", "open follows the link");
    assert_errno(std::os::unix::fs::symlink("other", n.path("sym")), &[libc::EEXIST], "symlink over a name");
}

#[test]
fn mknod_fifo_is_refused() {
    let n = node();
    let p = n.path("fifo");
    let rc = check(unsafe { libc::mknod(cpath(&p).as_ptr(), libc::S_IFIFO | 0o644, 0) });
    assert_errno(rc, UNSUPPORTED, "mknod(S_IFIFO)");
    assert_errno(fs::symlink_metadata(&p), &[libc::ENOENT], "no node may be created");
}

#[test]
fn xattr_write_is_refused() {
    let n = node();
    let p = n.path("attrs");
    put(&p, b"x");
    let name = std::ffi::CString::new("user.lightchain-test").unwrap();
    let rc = check(unsafe {
        libc::setxattr(cpath(&p).as_ptr(), name.as_ptr(), b"v".as_ptr() as *const libc::c_void, 1, 0)
    });
    assert_errno(rc, &[libc::EOPNOTSUPP, libc::EPERM], "setxattr");
}

#[test]
fn shared_writable_mmap_is_refused() {
    let n = node();
    let p = n.path("mapped");
    put(&p, b"hello mmap\n");
    let fd = open_raw(&p, libc::O_RDWR, 0).expect("open O_RDWR");
    let addr = unsafe {
        libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0)
    };
    let result = if addr == libc::MAP_FAILED {
        Err(std::io::Error::last_os_error())
    } else {
        unsafe { libc::munmap(addr, 4096) };
        Ok(())
    };
    unsafe { libc::close(fd) };
    assert_errno(result, &[libc::ENODEV, libc::EOPNOTSUPP, libc::EPERM], "mmap(MAP_SHARED, PROT_WRITE)");
}

// ----- limits -----

#[test]
fn name_component_over_255_bytes_is_enametoolong() {
    let n = node();
    let long = "n".repeat(256);
    assert_errno(
        open_raw(&n.path(&long), libc::O_WRONLY | libc::O_CREAT, 0o644),
        &[libc::ENAMETOOLONG],
        "create with a 256-byte name",
    );
    assert_errno(fs::create_dir(n.path(&long)), &[libc::ENAMETOOLONG], "mkdir with a 256-byte name");
}

#[test]
fn name_component_of_255_bytes_works() {
    let n = node();
    let name = "m".repeat(255);
    put(&n.path(&name), b"longest allowed name\n");
    assert_eq!(read(&n.path(&name)), b"longest allowed name\n");
    assert_eq!(n.state_file(&name).as_deref(), Some(&b"longest allowed name\n"[..]), "states/<255 bytes>");
}

#[test]
fn write_over_default_max_state_size_is_efbig_and_keeps_old_content() {
    let n = node();
    let p = n.path("oversized-state");
    put(&p, b"old content\n");
    let before = n.head_height();
    let fd = open_raw(&p, libc::O_WRONLY | libc::O_TRUNC, 0).expect("open O_WRONLY|O_TRUNC");
    let written = write_all_raw(fd, &vec![b'z'; 2 * DEFAULT_MAX_STATE_SIZE]);
    let closed = close_raw(fd);
    assert_errno(written, &[libc::EFBIG], "writing 2 MiB with the default 1 MiB limit");
    assert_errno(closed, &[libc::EFBIG], "close of a handle spoiled by EFBIG");
    assert_eq!(read(&p), b"old content\n", "the committed content must be unchanged");
    assert_eq!(n.state_file("oversized-state").as_deref(), Some(&b"old content\n"[..]), "states/ unchanged");
    assert_eq!(n.head_height(), before, "nothing may be committed");
    assert!(
        n.log().lines().any(|l| l.contains("oversized-state")),
        "every error must be logged with the state ID (DESIGN §1.2)\n{}",
        n.log_tail(30)
    );
}

#[test]
fn max_state_size_boundary_is_exact() {
    let n = Node::start(Opts::default().max_state_size(1000));
    let p = n.path("edge");
    put(&p, &[b'a'; 1000]);
    assert_eq!(fs::metadata(&p).unwrap().len(), 1000, "exactly max-state-size bytes is allowed");
    match write_with_flags(&p, libc::O_WRONLY | libc::O_TRUNC, &[b'b'; 1001]) {
        Err(Step::Write(e)) => {
            assert_eq!(e.raw_os_error(), Some(libc::EFBIG), "write of max+1 bytes: expected EFBIG, got {e}")
        }
        other => panic!("write of max+1 bytes must fail at write with EFBIG, got {other:?}"),
    }
    assert_eq!(read(&p), vec![b'a'; 1000], "content unchanged after EFBIG");
}

#[test]
fn handle_spoiled_by_efbig_fails_every_later_call() {
    let n = Node::start(Opts::default().max_state_size(100));
    let p = n.path("spoiled");
    put(&p, b"good\n");
    let before = n.head_height();
    let fd = open_raw(&p, libc::O_WRONLY | libc::O_TRUNC, 0).expect("open");
    assert_errno(write_all_raw(fd, &[b'x'; 101]), &[libc::EFBIG], "first oversized write");
    assert_errno(write_all_raw(fd, b"y"), &[libc::EFBIG], "a later small write on the spoiled handle");
    assert_errno(fsync_raw(fd), &[libc::EFBIG], "fsync on the spoiled handle");
    assert_errno(close_raw(fd), &[libc::EFBIG], "close on the spoiled handle");
    assert_eq!(read(&p), b"good\n", "nothing committed");
    assert_eq!(n.head_height(), before, "no block added");
}

// ----- the control directory -----

#[test]
fn control_status_is_json_with_the_documented_fields() {
    let n = node();
    let s = n.status_json();
    assert_eq!(s["ready"], serde_json::Value::Bool(true), "ready: {s}");
    assert!(s["node_id"].is_u64(), "node_id must be a number: {s}");
    assert!(s["name"].is_string(), "name must be a string: {s}");
    let role = s["role"].as_str().unwrap_or_else(|| panic!("role must be a string: {s}"));
    assert!(role.to_lowercase().contains("leader"), "a single node must be the leader, role = {role:?}");
    assert!(!s["leader"].is_null(), "a ready node knows its leader: {s}");
    assert!(s["term"].as_u64().unwrap_or(0) >= 1, "term must be >= 1: {s}");
    assert!(s["head_height"].is_u64(), "head_height: {s}");
    assert!(s["applied_height"].is_u64(), "applied_height: {s}");
    let hash = s["head_hash"].as_str().unwrap_or_else(|| panic!("head_hash must be a string: {s}"));
    assert!(
        hash.len() == 64 && hash.chars().all(|c| c.is_ascii_hexdigit()),
        "head_hash must be 64 hex: {hash}"
    );
    let listen = s["listen"].as_str().unwrap();
    let port: u16 = listen
        .strip_prefix("127.0.0.1:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("listen must be 127.0.0.1:<port>, got {listen}"));
    assert_ne!(port, 0, "listen must report the bound port, not 0");
    let members = s["members"].as_array().unwrap_or_else(|| panic!("members must be an array: {s}"));
    assert_eq!(members.len(), 1, "a single-node cluster has one member: {s}");
    assert_eq!(members[0]["id"], s["node_id"], "the member is this node: {s}");
    assert_eq!(members[0]["addr"].as_str(), Some(listen), "member addr is the bound address: {s}");
}

#[test]
fn control_status_tracks_the_chain_head() {
    let n = node();
    let h0 = n.head_height();
    put(&n.path("tick"), b"1\n");
    let s = n.status_json();
    let h1 = s["head_height"].as_u64().unwrap();
    assert!(h1 > h0, "head_height must grow after a commit ({h0} -> {h1})");
    let blocks = n.chain_blocks();
    let last = blocks.last().expect("chain/ must not be empty");
    assert_eq!(last["height"].as_u64(), Some(h1), "status head_height = last block in chain/");
    assert_eq!(last["hash"], s["head_hash"], "status head_hash = hash of the last block in chain/");
}

#[test]
fn creating_in_control_dir_is_refused() {
    let n = node();
    assert_errno(
        open_raw(&n.path(".lightchain/new"), libc::O_WRONLY | libc::O_CREAT, 0o644),
        READ_ONLY,
        "create in .lightchain/",
    );
    assert_errno(fs::create_dir(n.path(".lightchain/sub")), READ_ONLY, "mkdir in .lightchain/");
    assert_errno(fs::metadata(n.path(".lightchain/new")), &[libc::ENOENT], "nothing created in .lightchain/");
    // states/.lightchain/ is the mirror's scratch space (a name no state can have); nothing of the
    // refused calls may appear there or anywhere in states/.
    n.wait_written_behind();
    assert!(!n.state_path(".lightchain/new").exists(), "no state named .lightchain/new in states/");
    assert!(!n.state_path(".lightchain/sub").exists(), "no state named .lightchain/sub in states/");
}

#[test]
fn writing_control_status_is_refused() {
    let n = node();
    assert_errno(
        open_raw(&n.path(".lightchain/status"), libc::O_WRONLY, 0),
        READ_ONLY,
        "open .lightchain/status for writing",
    );
    assert_errno(
        check(unsafe { libc::truncate(cpath(&n.path(".lightchain/status")).as_ptr(), 0) }),
        READ_ONLY,
        "truncate .lightchain/status",
    );
    assert_errno(fs::remove_file(n.path(".lightchain/status")), READ_ONLY, "unlink .lightchain/status");
    n.status_json(); // still readable and valid
}

#[test]
fn renaming_into_control_dir_is_refused() {
    let n = node();
    put(&n.path("sneaky"), b"x");
    assert_errno(
        fs::rename(n.path("sneaky"), n.path(".lightchain/sneaky")),
        READ_ONLY,
        "rename into .lightchain/",
    );
    assert_eq!(read(&n.path("sneaky")), b"x", "source unchanged");
}

#[test]
fn control_dir_name_cannot_be_reused_at_root() {
    let n = node();
    assert_errno(
        fs::create_dir(n.path(".lightchain")),
        &[libc::EEXIST, libc::EACCES, libc::EROFS],
        "mkdir .lightchain",
    );
    assert!(fs::metadata(n.path(".lightchain")).unwrap().is_dir(), ".lightchain/ is a directory");
}

// ----- metadata -----

#[test]
fn stat_reports_size_and_mtime_after_commit() {
    let n = node();
    let p = n.path("sized");
    put(&p, &[b'q'; 1234]);
    let m = fs::metadata(&p).expect("stat");
    assert!(m.is_file(), "a state is a regular file");
    assert_eq!(m.len(), 1234, "size after commit");
    let age = secs_from_now(m.modified().unwrap());
    assert!(age < 5.0, "mtime must be within 5 s of now, is {age:.1} s off");
    put(&p, b"tiny");
    assert_eq!(fs::metadata(&p).unwrap().len(), 4, "size after a second, shorter commit (no stale attrs)");
    assert!(fs::metadata(n.mount()).unwrap().is_dir());
}

#[test]
fn mtime_is_the_timestamp_of_the_last_block() {
    let n = node();
    let p = n.path("stamped");
    put(&p, b"stamp-9c1e\n");
    let block = n
        .chain_blocks()
        .into_iter()
        .rev()
        .find(|b| json_contains_str(b, "stamp-9c1e"))
        .expect("a block with the content");
    let ts = block["timestamp_ms"].as_u64().expect("block timestamp_ms");
    let mtime_ms =
        fs::metadata(&p).unwrap().modified().unwrap().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    assert!(
        mtime_ms.abs_diff(ts) <= 1,
        "mtime ({mtime_ms} ms) must equal the timestamp of the block that last changed it ({ts} ms)"
    );
}

#[test]
fn readdir_lists_created_entries() {
    let n = node();
    put(&n.path("alpha"), b"a");
    put(&n.path("beta"), b"b");
    fs::create_dir(n.path("gamma")).unwrap();
    let names: Vec<String> = list_dir(&n.mount()).into_iter().filter(|x| x != ".lightchain").collect();
    assert_eq!(names, vec!["alpha", "beta", "gamma"], "root listing");
}

#[test]
fn readdir_of_a_large_directory_is_complete() {
    let n = node();
    fs::create_dir(n.path("many")).unwrap();
    let mut want: Vec<String> = (0..300).map(|i| format!("entry-with-a-longish-name-{i:04}")).collect();
    for name in &want {
        let fd = open_raw(&n.path(&format!("many/{name}")), libc::O_WRONLY | libc::O_CREAT, 0o644)
            .expect("create");
        close_raw(fd).expect("close");
    }
    want.sort();
    assert_eq!(list_dir(&n.path("many")), want, "readdir over several pages must list every entry once");
}

#[test]
fn seek_and_partial_reads_work() {
    let n = node();
    let p = n.path("seekable");
    put(&p, b"0123456789abcdef");
    let mut f = File::open(&p).unwrap();
    f.seek(SeekFrom::Start(10)).unwrap();
    let mut buf = [0u8; 4];
    f.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"abcd");
}

// ----- read consistency mode -----

#[test]
fn local_read_consistency_sees_own_writes() {
    let n = Node::start(Opts::default().read_consistency("local"));
    let p = n.path("cached");
    put(&p, b"first\n");
    assert_eq!(read(&p), b"first\n");
    put(&p, b"second, longer\n");
    assert_eq!(
        read(&p),
        b"second, longer\n",
        "local mode must not serve a stale page cache after our own write"
    );
    assert_eq!(fs::metadata(&p).unwrap().len(), 15, "size not stale in local mode");
    fs::remove_file(&p).unwrap();
    assert_errno(fs::metadata(&p), &[libc::ENOENT], "stat after unlink in local mode");
}
