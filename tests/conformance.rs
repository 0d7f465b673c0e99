//! A conformance table: each supported call (open, create, mkdir, rmdir, unlink, rename,
//! truncate, ftruncate, chmod, chown, utimensat, symlink, readlink, and the refused link and
//! mknod), its success and every errno it documents (DESIGN §1.2, `docs/SEMANTICS.md`), through
//! raw syscalls on a real mount — with ENAMETOOLONG at both
//! limits (a 256-byte component, a 4,096-byte path). After every failing call the node must
//! still serve and the tree must be what it was; at the end a restart replays everything and
//! `verify` passes.

mod common;

use std::ffi::CString;
use std::path::Path;

use common::*;

/// A call on the mount; returns the syscall's result (-1 with errno set on failure).
type Call = Box<dyn Fn(&Path) -> libc::c_int>;

struct Case {
    /// What is being tried.
    what: &'static str,
    /// The call, relative to the mount.
    call: Call,
    /// Allowed errnos; empty means it must succeed.
    errnos: &'static [i32],
}

fn c(p: &Path, rel: &str) -> CString {
    let full = if rel.is_empty() { p.to_path_buf() } else { p.join(rel) };
    cpath(&full)
}

fn open_close(p: &Path, rel: &str, flags: i32) -> libc::c_int {
    let fd = unsafe { libc::open(c(p, rel).as_ptr(), flags, 0o644) };
    if fd < 0 {
        return fd;
    }
    unsafe { libc::close(fd) }
}

/// `getxattr(2)` of `name` on `rel`, with room for a value.
fn get_xattr(p: &Path, rel: &str, name: &str) -> libc::c_int {
    let name = CString::new(name).unwrap();
    let mut buf = [0u8; 64];
    let n = unsafe { libc::getxattr(c(p, rel).as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    n as libc::c_int
}

fn case(what: &'static str, errnos: &'static [i32], call: impl Fn(&Path) -> libc::c_int + 'static) -> Case {
    Case { what, call: Box::new(call), errnos }
}

/// A name of 256 bytes (one over NAME_MAX).
fn long_name() -> String {
    "n".repeat(256)
}

/// A relative path of 4,096 bytes whose components are all legal (one over PATH_MAX - 1).
fn long_path() -> String {
    let component = "p".repeat(255);
    let mut path = vec![component.as_str(); 16].join("/");
    path.push('x');
    path
}

fn cases() -> Vec<Case> {
    use libc::*;
    vec![
        // open / create
        case("open of a missing state", &[ENOENT], |p| open_close(p, "missing", O_RDONLY)),
        case("open below a file", &[ENOTDIR], |p| open_close(p, "file/x", O_RDONLY)),
        case("open of a directory for writing", &[EISDIR], |p| open_close(p, "dir", O_WRONLY)),
        case("exclusive create of an existing state", &[EEXIST], |p| {
            open_close(p, "file", O_WRONLY | O_CREAT | O_EXCL)
        }),
        case("create in a missing directory", &[ENOENT], |p| open_close(p, "nodir/x", O_WRONLY | O_CREAT)),
        case("create with a 256-byte name", &[ENAMETOOLONG], |p| {
            open_close(p, &long_name(), O_WRONLY | O_CREAT)
        }),
        case("create with a 4,096-byte path", &[ENAMETOOLONG], |p| {
            open_close(p, &long_path(), O_WRONLY | O_CREAT)
        }),
        case("create in .lightchain/", &[EACCES, EROFS], |p| {
            open_close(p, ".lightchain/x", O_WRONLY | O_CREAT)
        }),
        case("create of a new state", &[], |p| open_close(p, "new", O_WRONLY | O_CREAT)),
        case("exclusive create of a new state", &[], |p| {
            open_close(p, "new-excl", O_WRONLY | O_CREAT | O_EXCL)
        }),
        // mkdir
        case("mkdir of an existing name", &[EEXIST], |p| unsafe { mkdir(c(p, "file").as_ptr(), 0o755) }),
        case("mkdir in a missing directory", &[ENOENT], |p| unsafe {
            mkdir(c(p, "nodir/d").as_ptr(), 0o755)
        }),
        case("mkdir below a file", &[ENOTDIR], |p| unsafe { mkdir(c(p, "file/d").as_ptr(), 0o755) }),
        case("mkdir with a 256-byte name", &[ENAMETOOLONG], |p| unsafe {
            mkdir(c(p, &long_name()).as_ptr(), 0o755)
        }),
        case("mkdir with a 4,096-byte path", &[ENAMETOOLONG], |p| unsafe {
            mkdir(c(p, &long_path()).as_ptr(), 0o755)
        }),
        case("mkdir in .lightchain/", &[EACCES, EROFS], |p| unsafe {
            mkdir(c(p, ".lightchain/d").as_ptr(), 0o755)
        }),
        case("mkdir of a new directory", &[], |p| unsafe { mkdir(c(p, "newdir").as_ptr(), 0o750) }),
        // rmdir
        case("rmdir of a non-empty directory", &[ENOTEMPTY, EEXIST], |p| unsafe {
            rmdir(c(p, "dir").as_ptr())
        }),
        case("rmdir of a file", &[ENOTDIR], |p| unsafe { rmdir(c(p, "file").as_ptr()) }),
        case("rmdir of a missing name", &[ENOENT], |p| unsafe { rmdir(c(p, "missing").as_ptr()) }),
        case("rmdir of an empty directory", &[], |p| unsafe { rmdir(c(p, "empty").as_ptr()) }),
        // unlink
        case("unlink of a missing name", &[ENOENT], |p| unsafe { unlink(c(p, "missing").as_ptr()) }),
        case("unlink of a directory", &[EISDIR, EPERM], |p| unsafe { unlink(c(p, "dir").as_ptr()) }),
        case("unlink of a 256-byte name", &[ENAMETOOLONG], |p| unsafe {
            unlink(c(p, &long_name()).as_ptr())
        }),
        case("unlink of a state", &[], |p| unsafe { unlink(c(p, "doomed").as_ptr()) }),
        // rename
        case("rename of a missing name", &[ENOENT], |p| unsafe {
            rename(c(p, "missing").as_ptr(), c(p, "x").as_ptr())
        }),
        case("rename of a file over a directory", &[EISDIR], |p| unsafe {
            rename(c(p, "file").as_ptr(), c(p, "dir").as_ptr())
        }),
        case("rename of a directory over a file", &[ENOTDIR], |p| unsafe {
            rename(c(p, "dir").as_ptr(), c(p, "file").as_ptr())
        }),
        case("rename of a directory over a non-empty one", &[ENOTEMPTY, EEXIST], |p| unsafe {
            rename(c(p, "other").as_ptr(), c(p, "dir").as_ptr())
        }),
        case("rename of a directory into itself", &[EINVAL], |p| unsafe {
            rename(c(p, "dir").as_ptr(), c(p, "dir/inside").as_ptr())
        }),
        case("rename to a 256-byte name", &[ENAMETOOLONG], |p| unsafe {
            rename(c(p, "file").as_ptr(), c(p, &long_name()).as_ptr())
        }),
        case("rename no-replace over an existing name", &[EEXIST], |p| unsafe {
            renameat2(
                AT_FDCWD,
                c(p, "file").as_ptr(),
                AT_FDCWD,
                c(p, "other-file").as_ptr(),
                RENAME_NOREPLACE,
            )
        }),
        case("rename exchange with a missing name", &[ENOENT], |p| unsafe {
            renameat2(AT_FDCWD, c(p, "file").as_ptr(), AT_FDCWD, c(p, "missing").as_ptr(), RENAME_EXCHANGE)
        }),
        case("rename into .lightchain/", &[EACCES, EROFS, EXDEV], |p| unsafe {
            rename(c(p, "file").as_ptr(), c(p, ".lightchain/x").as_ptr())
        }),
        case("rename of a state", &[], |p| unsafe {
            rename(c(p, "movable").as_ptr(), c(p, "moved").as_ptr())
        }),
        // truncate / ftruncate
        case("truncate of a missing state", &[ENOENT], |p| unsafe { truncate(c(p, "missing").as_ptr(), 0) }),
        case("truncate of a directory", &[EISDIR], |p| unsafe { truncate(c(p, "dir").as_ptr(), 0) }),
        case("truncate past --max-state-size", &[EFBIG], |p| unsafe {
            truncate(c(p, "file").as_ptr(), 2 << 20)
        }),
        case("truncate of a state", &[], |p| unsafe { truncate(c(p, "file").as_ptr(), 3) }),
        case("ftruncate past --max-state-size", &[EFBIG], |p| {
            let fd = unsafe { open(c(p, "other-file").as_ptr(), O_WRONLY) };
            let rc = unsafe { ftruncate(fd, 2 << 20) };
            let e = errno();
            unsafe { close(fd) };
            set_errno(e);
            rc
        }),
        case("ftruncate of a read-only handle", &[EINVAL, EBADF], |p| {
            let fd = unsafe { open(c(p, "other-file").as_ptr(), O_RDONLY) };
            let rc = unsafe { ftruncate(fd, 0) };
            let e = errno();
            unsafe { close(fd) };
            set_errno(e);
            rc
        }),
        // chmod
        case("chmod of a missing state", &[ENOENT], |p| unsafe { chmod(c(p, "missing").as_ptr(), 0o600) }),
        case("chmod of .lightchain/status", &[EACCES, EROFS, EPERM], |p| unsafe {
            chmod(c(p, ".lightchain/status").as_ptr(), 0o666)
        }),
        case("chmod of a state", &[], |p| unsafe { chmod(c(p, "other-file").as_ptr(), 0o600) }),
        // chown (root runs the tests: POSIX permission cases are in tests/users.rs)
        case("chown of a missing state", &[ENOENT], |p| unsafe {
            chown(c(p, "missing").as_ptr(), 1000, 1000)
        }),
        case("chown of a state", &[], |p| unsafe { chown(c(p, "other-file").as_ptr(), 1000, 1000) }),
        case("lchown of a symlink", &[], |p| unsafe { lchown(c(p, "link").as_ptr(), 1000, 1000) }),
        // utimensat
        case("utimensat of a missing state", &[ENOENT], |p| unsafe {
            utimensat(AT_FDCWD, c(p, "missing").as_ptr(), std::ptr::null(), 0)
        }),
        case("utimensat with a bad nanosecond count", &[EINVAL], |p| {
            let t = [timespec { tv_sec: 0, tv_nsec: 2_000_000_000 }, timespec { tv_sec: 0, tv_nsec: 0 }];
            unsafe { utimensat(AT_FDCWD, c(p, "file").as_ptr(), t.as_ptr(), 0) }
        }),
        case("utimensat to a time before 1970", &[], |p| {
            let t = [timespec { tv_sec: -86_400, tv_nsec: 5 }, timespec { tv_sec: -86_400, tv_nsec: 5 }];
            unsafe { utimensat(AT_FDCWD, c(p, "file").as_ptr(), t.as_ptr(), 0) }
        }),
        // symlink / readlink
        case("symlink onto an existing name", &[EEXIST], |p| unsafe {
            symlink(c(p, "").as_ptr(), c(p, "file").as_ptr())
        }),
        case("symlink in a missing directory", &[ENOENT], |p| unsafe {
            symlink(c(p, "file").as_ptr(), c(p, "nodir/l").as_ptr())
        }),
        case("symlink with a 256-byte name", &[ENAMETOOLONG], |p| unsafe {
            symlink(c(p, "file").as_ptr(), c(p, &long_name()).as_ptr())
        }),
        case("symlink with a 4,096-byte target", &[ENAMETOOLONG], |p| {
            let target = CString::new("t".repeat(4096)).unwrap();
            unsafe { symlink(target.as_ptr(), c(p, "long-target").as_ptr()) }
        }),
        case("symlink with an empty target", &[ENOENT], |p| {
            let target = CString::new("").unwrap();
            unsafe { symlink(target.as_ptr(), c(p, "empty-target").as_ptr()) }
        }),
        case("symlink of a new name", &[], |p| {
            let target = CString::new("file").unwrap();
            unsafe { symlink(target.as_ptr(), c(p, "new-link").as_ptr()) }
        }),
        case("readlink of a file", &[EINVAL], |p| {
            let mut buf = [0u8; 64];
            unsafe { readlink(c(p, "file").as_ptr(), buf.as_mut_ptr().cast(), buf.len()) as c_int }
        }),
        case("readlink of a link", &[], |p| {
            let mut buf = [0u8; 64];
            unsafe { readlink(c(p, "link").as_ptr(), buf.as_mut_ptr().cast(), buf.len()) as c_int }
        }),
        // unsupported
        case("hard link", &[EPERM], |p| unsafe { link(c(p, "file").as_ptr(), c(p, "hard").as_ptr()) }),
        case("mknod of a fifo", &[EPERM], |p| unsafe { mkfifo(c(p, "fifo").as_ptr(), 0o644) }),
        // extended attributes: none. lightchain answers getxattr with ENOSYS, which the kernel
        // turns into EOPNOTSUPP, the first time and every time after (it stops asking).
        case("getxattr of a user attribute", &[EOPNOTSUPP], |p| get_xattr(p, "file", "user.x")),
        case("getxattr of a user attribute again", &[EOPNOTSUPP], |p| get_xattr(p, "file", "user.x")),
        case("getxattr of security.capability", &[EOPNOTSUPP], |p| {
            get_xattr(p, "other-file", "security.capability")
        }),
        case("getxattr on a directory", &[EOPNOTSUPP], |p| get_xattr(p, "dir", "user.x")),
        case("setxattr", &[EOPNOTSUPP], |p| unsafe {
            let name = CString::new("user.x").unwrap();
            setxattr(c(p, "file").as_ptr(), name.as_ptr(), b"v".as_ptr().cast(), 1, 0)
        }),
        case("removexattr", &[EOPNOTSUPP], |p| unsafe {
            let name = CString::new("user.x").unwrap();
            removexattr(c(p, "file").as_ptr(), name.as_ptr())
        }),
        case("listxattr (an empty list)", &[], |p| {
            let mut buf = [0u8; 64];
            let n = unsafe { listxattr(c(p, "file").as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
            // Success means an empty list here: any name would be an attribute we do not keep.
            if n == 0 {
                0
            } else {
                set_errno(EPROTO);
                -1
            }
        }),
    ]
}

fn set_errno(e: i32) {
    unsafe { *libc::__errno_location() = e };
}

fn setup(n: &Node) {
    put(&n.path("file"), b"file content\n");
    put(&n.path("other-file"), b"other\n");
    put(&n.path("doomed"), b"x\n");
    put(&n.path("movable"), b"m\n");
    std::fs::create_dir(n.path("dir")).unwrap();
    put(&n.path("dir/child"), b"c\n");
    std::fs::create_dir(n.path("other")).unwrap();
    put(&n.path("other/x"), b"x\n");
    std::fs::create_dir(n.path("empty")).unwrap();
    std::os::unix::fs::symlink("file", n.path("link")).unwrap();
}

/// A listing of the whole mount (paths, kinds, sizes, modes), to show nothing else changed.
fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            if path.file_name().is_some_and(|n| n == ".lightchain") {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).unwrap();
            use std::os::unix::fs::MetadataExt;
            out.push(format!(
                "{} {} {:o}",
                path.strip_prefix(root).unwrap().display(),
                meta.len(),
                meta.mode()
            ));
            if meta.is_dir() {
                todo.push(path);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_call_succeeds_or_fails_with_its_documented_errno_and_the_node_goes_on() {
    let mut n = Node::start(Opts::default());
    setup(&n);
    let mnt = n.mount();
    let mut failures = Vec::new();
    for (i, case) in cases().into_iter().enumerate() {
        let before = tree(&mnt);
        set_errno(0);
        let rc = (case.call)(&mnt);
        let e = errno();
        match (case.errnos.is_empty(), rc) {
            (true, rc) if rc >= 0 => {}
            (true, _) => failures.push(format!("{}: expected success, got {}", case.what, errno_name(e))),
            (false, rc) if rc >= 0 => {
                failures.push(format!("{}: expected {:?}, it succeeded", case.what, case.errnos))
            }
            (false, _) if !case.errnos.contains(&e) => failures.push(format!(
                "{}: expected one of {:?}, got {}",
                case.what,
                case.errnos,
                errno_name(e)
            )),
            (false, _) => {
                let after = tree(&mnt);
                if before != after {
                    failures.push(format!("{}: failed as it should but changed the tree", case.what));
                }
            }
        }
        // The node still serves.
        let canary = format!("canary-{i}");
        put(&n.path(&canary), case.what.as_bytes());
        assert_eq!(read(&n.path(&canary)), case.what.as_bytes(), "after {}", case.what);
    }
    assert!(failures.is_empty(), "{} cases failed:\n{}", failures.len(), failures.join("\n"));
    let before = tree(&mnt);
    n.stop();
    assert_ok(&n.verify(), "verify after every case");
    n.restart();
    assert_eq!(tree(&n.mount()), before, "a restart replays the same tree");
}

/// The kernel asks a FUSE filesystem for `security.capability` before every `O_TRUNC` open of an
/// existing file (to know whether to strip capabilities): one round trip per rewrite, unless the
/// filesystem once answers `getxattr` with `ENOSYS`. lightchain does, so a mount sees at most one
/// GETXATTR request however many rewrites it serves, and applications still get `EOPNOTSUPP`.
#[test]
fn the_kernel_asks_for_extended_attributes_at_most_once_per_mount() {
    let opts = Opts { env: vec![("RUST_LOG".into(), "warn,fuser::request=debug".into())], ..Opts::default() };
    let n = Node::start(opts);
    let p = n.path("rewritten");
    put(&p, b"first\n");
    for i in 0..5 {
        put(&p, format!("version {i}\n").as_bytes());
    }
    assert_eq!(read(&p), b"version 4\n");
    let asked = n.log().matches(" GETXATTR ").count();
    let opened = n.log().matches(" OPEN flags").count();
    assert!(opened >= 5, "the log shows the FUSE requests ({opened} OPENs): debug lines are on");
    assert!(asked <= 1, "{asked} GETXATTR requests for 5 rewrites: the kernel kept asking");
    for _ in 0..2 {
        set_errno(0);
        assert_eq!(get_xattr(&n.mount(), "rewritten", "user.x"), -1);
        assert_eq!(errno(), libc::EOPNOTSUPP, "what getfattr sees: {}", errno_name(errno()));
    }
    assert_eq!(n.log().matches(" GETXATTR ").count(), asked, "the kernel answers those itself");
}
