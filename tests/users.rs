//! DESIGN §1.2 "Ownership": applications running as different users share one mount
//! (`--allow-other`) exactly as they would share ext4.
//!
//! Every test runs shell tools as other users — uid 1000 and uid 65534 (`nobody`) — in child
//! processes that drop root before `exec` (`CommandExt::uid`/`gid`, or `setpriv` when the
//! process needs supplementary groups). Expected refusals are checked by the message the tool
//! prints for the errno (`Permission denied` = `EACCES`, `Operation not permitted` = `EPERM`)
//! and by the state being unchanged. Where the kernel is the one to refuse (`DefaultPermissions`),
//! the node's log shows that the request never reached lightchain.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus};

use common::*;

/// A user as tests run it: ids and supplementary groups.
#[derive(Clone, Copy)]
struct User {
    uid: u32,
    gid: u32,
    groups: &'static [u32],
}

const ALICE: User = User { uid: 1000, gid: 1000, groups: &[] };
/// Alice with a second group she may give her files to.
const ALICE_IN_STAFF: User = User { uid: 1000, gid: 1000, groups: &[1000, 2000] };
const NOBODY: User = User { uid: 65534, gid: 65534, groups: &[] };

/// A node other users can reach: started with `--allow-other`, its temp dir made traversable.
fn shared_node() -> Node {
    let n = Node::prepare(Opts { extra: vec!["--allow-other".into()], ..Opts::default() });
    let top = n.mount().parent().unwrap().to_path_buf();
    std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o755)).expect("chmod the temp dir");
    let mut n = n;
    n.spawn();
    n.wait_ready();
    // A world-writable directory to work in, and a /tmp-like sticky one.
    assert_ok(&n.sh("mkdir -m 0777 pub && mkdir -m 1777 tmp"), "root makes pub/ and tmp/");
    n
}

/// Runs `bash -c script` in the mount as `user`.
fn as_user(n: &Node, user: User, script: &str) -> (ExitStatus, String, String) {
    let mut cmd = if user.groups.is_empty() {
        let mut cmd = Command::new("bash");
        cmd.uid(user.uid).gid(user.gid);
        cmd
    } else {
        let groups: Vec<String> = user.groups.iter().map(u32::to_string).collect();
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid", &user.uid.to_string(), "--regid", &user.gid.to_string()]).args([
            "--groups",
            &groups.join(","),
            "bash",
        ]);
        cmd
    };
    cmd.arg("-c").arg(script).current_dir(n.mount()).env("HOME", "/").env("MNT", n.mount());
    run_command(cmd, CMD_TIMEOUT)
}

#[track_caller]
fn ok_as(n: &Node, user: User, script: &str) -> String {
    let run = as_user(n, user, script);
    assert_ok(&run, &format!("uid {} runs `{script}`", user.uid));
    run.1
}

/// Asserts `script` fails as `user` with `message` (the errno's text) on stderr.
#[track_caller]
fn refused_as(n: &Node, user: User, script: &str, message: &str) {
    let (status, out, err) = as_user(n, user, script);
    assert!(
        !status.success() && err.contains(message),
        "uid {} runs `{script}`: expected a failure with `{message}`, got {status:?}\nstdout: {out}\nstderr: {err}",
        user.uid
    );
}

#[track_caller]
fn root_ok(n: &Node, script: &str) -> String {
    let run = n.sh(script);
    assert_ok(&run, &format!("root runs `{script}`"));
    run.1
}

/// `stat -c '%u %g %a'` of `rel` in the mount.
fn owner_and_mode(n: &Node, rel: &str) -> String {
    root_ok(n, &format!("stat -c '%u %g %a' {rel}")).trim().to_owned()
}

#[test]
fn a_user_owns_what_it_creates_and_others_cannot_rewrite_it() {
    let n = shared_node();
    let out = ok_as(&n, ALICE, "echo one > pub/mine && echo two > pub/mine && cat pub/mine");
    assert_eq!(out, "two\n", "uid 1000 rewrites the file it just created");
    assert_eq!(owner_and_mode(&n, "pub/mine"), "1000 1000 644");
    ok_as(&n, ALICE, "mkdir pub/dir && ln -s mine pub/link");
    assert_eq!(owner_and_mode(&n, "pub/dir"), "1000 1000 755");
    assert_eq!(root_ok(&n, "stat -c '%u %g' pub/link").trim(), "1000 1000", "the link is hers too");

    refused_as(&n, NOBODY, "echo evil > pub/mine", "Permission denied");
    refused_as(&n, NOBODY, "echo evil >> pub/mine", "Permission denied");
    refused_as(&n, NOBODY, "touch pub/dir/intruder", "Permission denied");
    assert_eq!(ok_as(&n, NOBODY, "cat pub/mine"), "two\n", "0644: others still read it");
    assert_eq!(n.state_file("pub/mine").as_deref(), Some(&b"two\n"[..]));
    // Root's 0644 files are read-only to everyone else.
    root_ok(&n, "echo root > pub/roots");
    refused_as(&n, ALICE, "echo mine-now > pub/roots", "Permission denied");
    assert_eq!(ok_as(&n, ALICE, "cat pub/roots"), "root\n");
    // Nobody's own file is nobody's.
    ok_as(&n, NOBODY, "echo n > pub/nobodys");
    assert_eq!(owner_and_mode(&n, "pub/nobodys"), "65534 65534 644");
    // Root gives a file away; the new owner may now rewrite it.
    root_ok(&n, "chown 65534:65534 pub/mine");
    assert_eq!(owner_and_mode(&n, "pub/mine"), "65534 65534 644");
    assert_eq!(ok_as(&n, NOBODY, "echo three > pub/mine && cat pub/mine"), "three\n");
    refused_as(&n, ALICE, "echo four > pub/mine", "Permission denied");
    let (status, out, err) = n.verify();
    assert!(status.success(), "verify after the ownership changes\nstdout: {out}\nstderr: {err}");
}

#[test]
fn the_owner_changes_the_group_to_its_own_groups_only_and_never_the_owner() {
    let n = shared_node();
    ok_as(&n, ALICE_IN_STAFF, "echo x > pub/f");
    ok_as(&n, ALICE_IN_STAFF, "chgrp 2000 pub/f");
    assert_eq!(owner_and_mode(&n, "pub/f"), "1000 2000 644", "chgrp to one of her groups");
    refused_as(&n, ALICE_IN_STAFF, "chgrp 3000 pub/f", "Operation not permitted");
    refused_as(&n, ALICE_IN_STAFF, "chown 65534 pub/f", "Operation not permitted");
    refused_as(&n, ALICE_IN_STAFF, "chown 0 pub/f", "Operation not permitted");
    refused_as(&n, NOBODY, "chgrp 65534 pub/f", "Operation not permitted");
    assert_eq!(owner_and_mode(&n, "pub/f"), "1000 2000 644", "nothing changed");
    // DefaultPermissions: the kernel refused those itself; lightchain never saw them.
    assert!(!n.log().contains("chown"), "a refused chown reached lightchain:\n{}", n.log_tail(40));
    // Root changes both.
    root_ok(&n, "chown 0:0 pub/f");
    assert_eq!(owner_and_mode(&n, "pub/f"), "0 0 644");
}

#[test]
fn a_sticky_directory_keeps_users_from_removing_each_others_files() {
    let n = shared_node();
    assert_eq!(owner_and_mode(&n, "tmp"), "0 0 1777");
    ok_as(&n, ALICE, "echo a > tmp/alices && chmod 666 tmp/alices");
    ok_as(&n, NOBODY, "echo n > tmp/nobodys");
    refused_as(&n, NOBODY, "rm -f tmp/alices", "Operation not permitted");
    refused_as(&n, NOBODY, "mv tmp/alices tmp/stolen", "Operation not permitted");
    refused_as(&n, NOBODY, "mv tmp/nobodys tmp/alices", "Operation not permitted");
    // Writable is not removable: nobody may rewrite the 0666 file, not delete it.
    ok_as(&n, NOBODY, "echo scribble > tmp/alices");
    assert_eq!(ok_as(&n, ALICE, "cat tmp/alices"), "scribble\n");
    // Everyone removes their own; root removes anything.
    ok_as(&n, NOBODY, "rm tmp/nobodys");
    ok_as(&n, ALICE, "echo again > tmp/second");
    ok_as(&n, ALICE, "rm tmp/alices");
    root_ok(&n, "rm tmp/second");
    assert_eq!(root_ok(&n, "ls -A tmp"), "");
    // Without the sticky bit, the same removal succeeds (as on ext4).
    root_ok(&n, "chmod 0777 tmp");
    ok_as(&n, ALICE, "echo a > tmp/alices");
    ok_as(&n, NOBODY, "rm -f tmp/alices");
    assert_eq!(root_ok(&n, "ls -A tmp"), "");
}

#[test]
fn setuid_is_cleared_by_a_chown_and_by_an_unprivileged_write() {
    let n = shared_node();
    ok_as(&n, ALICE_IN_STAFF, "echo '#!/bin/sh' > pub/tool && chmod 4755 pub/tool");
    assert_eq!(owner_and_mode(&n, "pub/tool"), "1000 1000 4755");
    // The owner's chgrp is a non-root chown: setuid goes, in the same transaction.
    let before = n.head_height();
    ok_as(&n, ALICE_IN_STAFF, "chgrp 2000 pub/tool");
    assert_eq!(owner_and_mode(&n, "pub/tool"), "1000 2000 755");
    assert_eq!(n.head_height(), before + 1, "group and mode changed in one block");

    // A write by another user drops setuid (and setgid with group execute).
    // (Only a member of the file's group may set setgid: the kernel drops it for anyone else.)
    ok_as(&n, ALICE, "chmod 6777 pub/tool");
    assert_eq!(owner_and_mode(&n, "pub/tool"), "1000 2000 4777");
    ok_as(&n, ALICE_IN_STAFF, "chmod 6777 pub/tool");
    assert_eq!(owner_and_mode(&n, "pub/tool"), "1000 2000 6777");
    ok_as(&n, NOBODY, "echo 'echo hi' >> pub/tool");
    assert_eq!(owner_and_mode(&n, "pub/tool"), "1000 2000 777");
    assert_eq!(ok_as(&n, ALICE, "cat pub/tool"), "#!/bin/sh\necho hi\n");
    // Root writes with CAP_FSETID: the bit stays, as on ext4.
    ok_as(&n, ALICE, "chmod 4777 pub/tool");
    root_ok(&n, "echo 'echo root' >> pub/tool");
    assert_eq!(owner_and_mode(&n, "pub/tool"), "1000 2000 4777");
    // Even root's chown of a setuid file clears the bit (Linux's chown rule).
    root_ok(&n, "chown 65534 pub/tool");
    assert_eq!(owner_and_mode(&n, "pub/tool"), "65534 2000 777");
}

#[test]
fn owners_survive_a_restart() {
    let mut n = shared_node();
    ok_as(&n, ALICE, "echo a > pub/a && mkdir pub/d && ln -s a pub/l && touch -d 2020-01-01 pub/a");
    ok_as(&n, NOBODY, "echo n > tmp/n");
    let before = root_ok(&n, "stat -c '%n %u %g %a %Y' pub/a pub/d tmp/n && stat -c '%n %u %g %N' pub/l");
    n.stop();
    n.restart();
    let after = root_ok(&n, "stat -c '%n %u %g %a %Y' pub/a pub/d tmp/n && stat -c '%n %u %g %N' pub/l");
    assert_eq!(after, before, "owners, modes, times and links after the restart");
    assert!(after.contains("pub/a 1000 1000 644 1577836800"), "{after}");
    refused_as(&n, NOBODY, "echo x > pub/a", "Permission denied");
    refused_as(&n, ALICE, "rm -f tmp/n", "Operation not permitted");
}

#[test]
fn a_setgid_directory_gives_new_states_its_group() {
    let n = shared_node();
    root_ok(&n, "mkdir -m 2777 pub/team && chgrp 2000 pub/team");
    assert_eq!(owner_and_mode(&n, "pub/team"), "0 2000 2777");
    ok_as(&n, ALICE, "echo x > pub/team/f && mkdir pub/team/sub && ln -s f pub/team/l");
    assert_eq!(owner_and_mode(&n, "pub/team/f"), "1000 2000 644", "a file takes the directory's group");
    assert_eq!(owner_and_mode(&n, "pub/team/sub"), "1000 2000 2755", "a subdirectory is setgid too");
    assert_eq!(root_ok(&n, "stat -c '%u %g' pub/team/l").trim(), "1000 2000");
    ok_as(&n, ALICE, "echo y > pub/plain");
    assert_eq!(owner_and_mode(&n, "pub/plain"), "1000 1000 644", "elsewhere the caller's group");
}
