//! DESIGN §1.2 through the tools people actually use: bash redirections and coreutils, run with `bash -c`
//! inside the mount (`$DATA` is the data directory, `$MNT` the mountpoint).
//!
//! Shell builtins ignore errors of the last `close`, so every script re-reads what it wrote, and content is
//! also checked in `DATA/states/` from Rust.

mod common;

use std::fs;

use common::*;

fn node() -> Node {
    Node::start(Opts::default())
}

/// Runs `script` in the mount and asserts it exited 0; returns stdout.
#[track_caller]
fn ok(n: &Node, script: &str) -> String {
    let run = n.sh(script);
    assert_ok(&run, &format!("script `{script}`"));
    run.1
}

#[test]
fn readme_tour() {
    let n = node();
    assert_eq!(ok(&n, "echo hello > greeting && cat greeting"), "hello\n", "echo > then cat");
    assert_eq!(
        ok(&n, "mkdir -p app && echo 1 > app/v && mv app/v app/w && ls app"),
        "w\n",
        "mkdir -p, echo, mv, ls"
    );
    // states/ is written behind the acknowledgement (and made durable before it is reported).
    n.wait_written_behind();
    assert_eq!(
        ok(&n, "cat \"$DATA/states/greeting\""),
        "hello\n",
        "the state as a plain file in DATA/states"
    );
    assert_eq!(n.state_file("app/w").as_deref(), Some(&b"1\n"[..]), "states/app/w");
    assert_eq!(n.state_file("app/v"), None, "states/app/v is gone after mv");
}

#[test]
fn echo_redirect_overwrites() {
    let n = node();
    assert_eq!(ok(&n, "echo first version > f && echo second > f && cat f"), "second\n");
    assert_eq!(n.state_file("f").as_deref(), Some(&b"second\n"[..]));
}

#[test]
fn append_redirect_appends() {
    let n = node();
    assert_eq!(ok(&n, "echo a > f && echo b >> f && echo c >> f && cat f"), "a\nb\nc\n");
    assert_eq!(n.state_file("f").as_deref(), Some(&b"a\nb\nc\n"[..]));
}

#[test]
fn many_appends_in_a_loop_keep_every_line() {
    let n = node();
    let out = ok(&n, "for i in $(seq 1 25); do echo line-$i >> journal; done; cat journal");
    let want: String = (1..=25).map(|i| format!("line-{i}\n")).collect();
    assert_eq!(out, want, "25 appended lines in order");
}

#[test]
fn printf_and_cat_multiline() {
    let n = node();
    assert_eq!(ok(&n, "printf 'x\\ny\\n\\tz' > multi && cat multi"), "x\ny\n\tz");
}

#[test]
fn cp_into_and_within_the_mount() {
    let n = node();
    let outside = tempfile::tempdir().unwrap();
    let src = outside.path().join("source.bin");
    let content: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(&src, &content).unwrap();
    ok(&n, &format!("cp '{}' copied.bin && cmp '{}' copied.bin", src.display(), src.display()));
    ok(&n, "cp copied.bin again.bin && cmp copied.bin again.bin");
    assert_eq!(n.state_file("copied.bin"), Some(content.clone()), "states/copied.bin");
    assert_eq!(n.state_file("again.bin"), Some(content), "states/again.bin");
}

#[test]
fn cp_preserve_within_the_mount() {
    let n = node();
    ok(&n, "echo keep > orig && chmod 640 orig && cp -p orig dup && cmp orig dup");
    assert_eq!(ok(&n, "stat -c %a dup"), "640\n", "cp -p keeps the mode");
}

#[test]
fn cp_over_the_size_limit_fails_with_file_too_large() {
    let n = node();
    let outside = tempfile::tempdir().unwrap();
    let src = outside.path().join("huge");
    fs::write(&src, vec![b'h'; 2 * DEFAULT_MAX_STATE_SIZE]).unwrap();
    let run = n.sh(&format!("cp '{}' huge", src.display()));
    assert!(!run.0.success(), "cp of 2 MiB must fail; stdout {} stderr {}", run.1, run.2);
    assert!(run.2.contains("File too large"), "cp must report EFBIG, stderr: {}", run.2);
    let size = fs::metadata(n.path("huge")).map(|m| m.len()).unwrap_or(0);
    assert_eq!(size, 0, "no partial content may be committed");
}

#[test]
fn head_over_the_size_limit_fails_with_file_too_large() {
    let n = node();
    let run = n.sh("head -c 2097152 /dev/zero > big");
    assert!(!run.0.success(), "writing 2 MiB must fail; stderr {}", run.2);
    assert!(run.2.contains("File too large"), "head must report EFBIG, stderr: {}", run.2);
    assert_eq!(ok(&n, "stat -c %s big"), "0\n", "only the empty creation is committed");
}

#[test]
fn mv_renames_and_moves_into_directories() {
    let n = node();
    ok(&n, "echo moving > a && mv a b && mkdir d && mv b d/");
    assert_eq!(ok(&n, "cat d/b"), "moving\n");
    let run = n.sh("test -e a || test -e b");
    assert!(!run.0.success(), "old names must be gone");
    assert_eq!(n.state_file("d/b").as_deref(), Some(&b"moving\n"[..]));
}

#[test]
fn mv_directory_moves_subtree() {
    let n = node();
    ok(&n, "mkdir -p src/x/y && echo 1 > src/one && echo 2 > src/x/y/two && mv src dst");
    assert_eq!(ok(&n, "find dst -type f | sort"), "dst/one\ndst/x/y/two\n", "moved tree");
    assert_eq!(ok(&n, "cat dst/x/y/two"), "2\n");
    assert!(!n.state_path("src").exists(), "states/src must be gone");
    assert_eq!(n.state_file("dst/x/y/two").as_deref(), Some(&b"2\n"[..]));
}

#[test]
fn mv_no_clobber_keeps_target() {
    let n = node();
    ok(&n, "echo a > a && echo b > b");
    let _ = n.sh("mv -n a b");
    assert_eq!(ok(&n, "cat a b"), "a\nb\n", "mv -n must leave both files alone");
}

#[test]
fn rm_removes_files_and_trees() {
    let n = node();
    ok(&n, "echo x > lone && mkdir -p tree/sub && echo y > tree/sub/leaf && echo z > tree/top");
    ok(&n, "rm lone && rm -r tree");
    assert_eq!(ok(&n, "ls -A | grep -v '^.lightchain$' | wc -l"), "0\n", "everything removed");
    assert_eq!(n.state_file("lone"), None);
    assert!(!n.state_path("tree").exists(), "states/tree removed");
}

#[test]
fn mkdir_p_and_rmdir() {
    let n = node();
    ok(&n, "mkdir -p a/b/c && test -d a/b/c");
    assert!(n.state_path("a/b/c").is_dir(), "states/a/b/c");
    ok(&n, "rmdir a/b/c && rmdir a/b && rmdir a && test ! -e a");
    assert!(!n.state_path("a").exists(), "states/a removed");
}

#[test]
fn rmdir_of_non_empty_directory_fails() {
    let n = node();
    ok(&n, "mkdir d && echo x > d/f");
    let run = n.sh("rmdir d");
    assert!(!run.0.success(), "rmdir of a non-empty directory must fail");
    assert!(run.2.contains("Directory not empty"), "ENOTEMPTY expected, stderr: {}", run.2);
    assert_eq!(ok(&n, "cat d/f"), "x\n");
}

#[test]
fn touch_creates_and_touches_again() {
    let n = node();
    ok(&n, "touch t && touch t && test -f t && test ! -s t");
    ok(&n, "echo data > u && touch u");
    assert_eq!(ok(&n, "cat u"), "data\n", "touch keeps content");
    assert_eq!(n.state_file("t").as_deref(), Some(&b""[..]), "states/t is an empty file");
}

#[test]
fn noclobber_second_redirect_fails_and_keeps_content() {
    let n = node();
    let run = n.sh("set -o noclobber; echo a > lock || exit 10; if echo b > lock; then exit 11; fi; exit 0");
    assert_ok(&run, "noclobber script (exit 10: first create failed, 11: second overwrite succeeded)");
    assert!(run.2.contains("cannot overwrite"), "bash must complain, stderr: {}", run.2);
    assert_eq!(ok(&n, "cat lock"), "a\n", "lock still holds a");
}

#[test]
fn noclobber_race_has_one_winner() {
    let n = node();
    // 8 shells race to create the same lock file with O_EXCL.
    let script = "for i in 1 2 3 4 5 6 7 8; do \
                    ( set -o noclobber; echo $i > lock 2>/dev/null && echo won-$i ) & \
                  done; wait";
    let out = ok(&n, script);
    let winners: Vec<&str> = out.lines().filter(|l| l.starts_with("won-")).collect();
    assert_eq!(winners.len(), 1, "exactly one shell may win the lock, got {winners:?}");
    let id = winners[0].trim_start_matches("won-");
    assert_eq!(ok(&n, "cat lock"), format!("{id}\n"), "the lock holds the winner's id");
}

#[test]
fn ls_l_and_stat_show_committed_size() {
    let n = node();
    ok(&n, "printf 12345 > five");
    assert_eq!(ok(&n, "stat -c %s five"), "5\n");
    assert_eq!(ok(&n, "ls -l five | awk '{print $5}'"), "5\n", "ls -l size column");
    let age: i64 = ok(&n, "echo $(( $(date +%s) - $(stat -c %Y five) ))").trim().parse().unwrap();
    assert!(age.abs() <= 5, "mtime must be within 5 s of now, is {age} s off");
}

#[test]
fn sed_in_place_edits() {
    let n = node();
    ok(&n, "echo 'hello world' > conf && sed -i 's/world/chain/' conf");
    assert_eq!(ok(&n, "cat conf"), "hello chain\n");
    assert_eq!(n.state_file("conf").as_deref(), Some(&b"hello chain\n"[..]));
}

#[test]
fn tee_and_dd_with_fsync() {
    let n = node();
    assert_eq!(ok(&n, "echo piped | tee t"), "piped\n");
    assert_eq!(ok(&n, "cat t"), "piped\n");
    ok(&n, "dd if=/dev/zero of=z bs=1k count=10 conv=fsync status=none");
    assert_eq!(ok(&n, "stat -c %s z"), "10240\n");
    assert_eq!(n.state_file("z").map(|c| c.len()), Some(10240));
}

#[test]
fn find_lists_nested_tree() {
    let n = node();
    ok(&n, "mkdir -p x/y && touch x/1 x/y/2 && echo top > 3");
    assert_eq!(ok(&n, "find . -path ./.lightchain -prune -o -type f -print | sort"), "./3\n./x/1\n./x/y/2\n");
}

#[test]
fn writing_into_control_dir_fails() {
    let n = node();
    let run = n.sh("echo x > .lightchain/x");
    assert!(!run.0.success(), "redirect into .lightchain/ must fail");
    assert!(
        run.2.contains("Permission denied") || run.2.contains("Read-only file system"),
        "EACCES/EROFS expected, stderr: {}",
        run.2
    );
    let run = n.sh("echo x > .lightchain/status");
    assert!(!run.0.success(), "overwriting .lightchain/status must fail");
}

#[test]
fn status_is_readable_with_jq() {
    let n = node();
    assert_eq!(ok(&n, "jq -r .ready .lightchain/status"), "true\n");
    assert_eq!(ok(&n, "jq -r '.members | length' .lightchain/status"), "1\n");
}

// ----- symlinks and times (DESIGN §1.2) -----

/// Runs `script` in the mount and asserts it failed with `message` (the errno's text).
#[track_caller]
fn fails(n: &Node, script: &str, message: &str) {
    let (status, out, err) = n.sh(script);
    assert!(
        !status.success() && err.contains(message),
        "`{script}`: expected a failure with `{message}`, got {status:?}\nstdout: {out}\nstderr: {err}"
    );
}

#[test]
fn symlinks_through_shell_tools() {
    let mut n = node();
    ok(&n, "mkdir d && echo hello > d/target && ln -s target d/link && ln -s nowhere d/dangling");
    assert_eq!(
        ok(&n, "readlink d/link && cat d/link"),
        "target\nhello\n",
        "ln -s, readlink, cat through a link"
    );
    assert_eq!(ok(&n, "stat -c '%F %s %a' d/link"), "symbolic link 6 777\n");
    assert_eq!(ok(&n, "ls -l d/link | sed 's/.* d\\/link/d\\/link/'"), "d/link -> target\n");
    assert_eq!(ok(&n, "find d -type l | sort"), "d/dangling\nd/link\n", "listed as links");
    ok(&n, "echo more >> d/link");
    assert_eq!(ok(&n, "cat d/target"), "hello\nmore\n", "a write goes through the link to its target");
    fails(&n, "cat d/dangling", "No such file or directory");
    assert_eq!(ok(&n, "readlink d/dangling"), "nowhere\n");
    ok(&n, "mv d/link d/moved");
    assert_eq!(
        ok(&n, "readlink d/moved && ls d"),
        "target\ndangling\nmoved\ntarget\n",
        "mv renames the link"
    );
    ok(&n, "cp -a d e");
    assert_eq!(
        ok(&n, "readlink e/moved && cat e/moved"),
        "target\nhello\nmore\n",
        "cp -a copies links as links"
    );
    assert_eq!(ok(&n, "stat -c %F e/dangling"), "symbolic link\n");
    ok(&n, "rm d/moved");
    assert_eq!(ok(&n, "ls d && cat d/target"), "dangling\ntarget\nhello\nmore\n", "rm removes the link only");
    ok(&n, "ln -s d dirlink");
    assert_eq!(
        ok(&n, "ls dirlink/ && cat dirlink/target"),
        "dangling\ntarget\nhello\nmore\n",
        "a link to a directory"
    );
    fails(&n, "rmdir dirlink", "Not a directory");
    // The longest target Linux allows, and one byte more.
    let longest = "x/".repeat(2047) + "y";
    ok(&n, &format!("ln -s {longest} longest && test \"$(readlink longest)\" = {longest}"));
    fails(&n, &format!("ln -s {longest}y toolong"), "File name too long");
    // Unsupported: hard links and special files (EPERM, documented).
    fails(&n, "ln d/target d/hard", "Operation not permitted");
    fails(&n, "mkfifo d/fifo", "Operation not permitted");
    fails(&n, "mknod d/null c 1 3", "Operation not permitted");
    // The mirror holds real symlinks; the chain records the new op.
    assert_eq!(std::fs::read_link(n.state_path("e/moved")).unwrap().to_str(), Some("target"));
    let (_, log, _) = n.log_cli(&["e/moved"]);
    assert!(
        log.contains("symlink") && log.contains("\"target\""),
        "lightchain log shows the symlink:\n{log}"
    );
    assert_ok(&n.verify(), "verify with symlinks");
    // All of it after a restart.
    n.stop();
    n.restart();
    assert_eq!(
        ok(&n, "readlink e/moved && cat e/moved && readlink d/dangling"),
        "target\nhello\nmore\nnowhere\n"
    );
    assert_eq!(
        ok(&n, "find . -path ./.lightchain -prune -o -type l -print | sort"),
        "./d/dangling\n./dirlink\n./e/dangling\n./e/moved\n./longest\n"
    );
    assert_ok(&n.verify(), "verify after the restart");
}

#[test]
fn times_through_touch_cp_and_stat() {
    let mut n = node();
    ok(&n, "echo a > f && touch -d '2020-01-01 00:00:00 UTC' f");
    assert_eq!(ok(&n, "stat -c '%X %Y' f"), "1577836800 1577836800\n", "touch -d sets atime and mtime");
    ok(&n, "cp -p f g");
    assert_eq!(ok(&n, "stat -c '%X %Y' g && cat g"), "1577836800 1577836800\na\n", "cp -p keeps the times");
    // Nanoseconds, one time at a time, and before 1970.
    ok(&n, "touch -m -d @1000000000.123456789 f && touch -a -d @5 f");
    assert_eq!(
        ok(&n, "TZ=UTC stat -c '%x|%y' f"),
        "1970-01-01 00:00:05.000000000 +0000|2001-09-09 01:46:40.123456789 +0000\n"
    );
    ok(&n, "touch -d '1969-12-31 23:59:58.25 UTC' f");
    assert_eq!(
        ok(&n, "TZ=UTC stat -c '%y' f"),
        "1969-12-31 23:59:58.250000000 +0000\n",
        "a time before the epoch"
    );
    // ctime is the time of the last change: chmod moves it, not mtime.
    let ctime: i64 = ok(&n, "stat -c %Z f").trim().parse().unwrap();
    assert!(ctime > 1_577_836_800, "ctime {ctime} is the block's time, not the time set");
    ok(&n, "chmod 600 f");
    assert_eq!(ok(&n, "TZ=UTC stat -c '%y' f"), "1969-12-31 23:59:58.250000000 +0000\n");
    // touch without a time: atime = mtime = ctime = the block's time.
    ok(&n, "touch g");
    let times = ok(&n, "stat -c '%X %Y %Z' g");
    let t: Vec<i64> = times.split_whitespace().map(|x| x.parse().unwrap()).collect();
    assert!(t[0] == t[1] && t[1] == t[2] && t[0] > 1_577_836_800, "touch: {times}");
    let ts = n.chain_blocks().last().unwrap()["timestamp_ms"].as_i64().unwrap();
    assert_eq!(
        ok(&n, "stat -c '%.3Y' g").trim(),
        format!("{}.{:03}", ts / 1000, ts % 1000),
        "the block's timestamp"
    );
    // A write sets mtime and ctime, not atime.
    ok(&n, "touch -d @7 g && echo b > g");
    let t: Vec<i64> = ok(&n, "stat -c '%X %Y %Z' g").split_whitespace().map(|x| x.parse().unwrap()).collect();
    assert!(t[0] == 7 && t[1] > 7 && t[1] == t[2], "after a write: {t:?}");
    let (_, log, _) = n.log_cli(&["f"]);
    assert!(
        log.contains("times") && log.contains("1969-12-31T23:59:58.250Z"),
        "lightchain log shows times:\n{log}"
    );
    // All of it after a restart.
    let before = ok(&n, "TZ=UTC stat -c '%n %x %y %z' f g");
    n.stop();
    n.restart();
    assert_eq!(ok(&n, "TZ=UTC stat -c '%n %x %y %z' f g"), before, "times after the restart");
    assert_ok(&n.verify(), "verify with times");
}
