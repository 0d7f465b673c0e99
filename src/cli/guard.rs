//! The mountpoint guard: a read-only mount beneath the FUSE mount, so that no write lands under
//! MOUNTPOINT while no node serves it (issue 19 §4).
//!
//! Without it, MOUNTPOINT is a plain directory of the backing disk whenever lightchain does not
//! serve it: between a crash and the restart's replacement of the dead mount, during start-up,
//! after a clean stop. A write there returns 0 and lands in that directory, hidden once the next
//! FUSE mount covers it: an acknowledged write that is not in the chain. In Kubernetes the
//! directory is the shared `emptyDir`, and the app's writes go there at every sidecar restart.
//!
//! The guard is an empty tmpfs mounted read-only (`ro,nosuid,nodev,noexec`, one inode, 4 KiB) at
//! MOUNTPOINT, recognised as lightchain's by its source name [`SOURCE`] in
//! `/proc/self/mountinfo`. The FUSE mount goes on top of it. Mounts outlive processes, so it
//! stays when the node dies: while the dead FUSE mount is there, calls fail with `ENOTCONN`;
//! once it is detached, every write, `mkdir` or `O_CREAT` open under MOUNTPOINT fails with
//! `EROFS`. It also travels through mount propagation like the FUSE mount: a Kubernetes app
//! container (HostToContainer) sees `ENOTCONN` or `EROFS` in the window, never the bare
//! `emptyDir`. Measured, and the alternatives weighed, in docs/architecture/cli.md
//! ("The mountpoint guard").
//!
//! The node mounts the guard at start-up, just after taking the data directory's lock (a second
//! process on the same data directory guards nothing), and never removes it: after a clean stop
//! it stays, so writes keep failing until the next start (or `umount MOUNTPOINT` releases it),
//! unless `--release-guard-on-stop` asks for a clean host. A dead FUSE mount on top of the guard
//! is detached as the very last step before the new FUSE mount ([`Phase::Mount`]); only one
//! found on a bare directory (a node from before the guard) is replaced at start, with the guard
//! mounted at once in its place.
//!
//! Never: unmount anything at MOUNTPOINT but a dead FUSE mount (and the guard itself, on request);
//! mount on top of a live mount, or on the root of a foreign mount (a shared volume).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The guard's source name, as `/proc/self/mountinfo` shows it: how a node recognises its own
/// guard at MOUNTPOINT (with the type `tmpfs` and a read-only mount).
pub const SOURCE: &str = "lightchain-guard";

/// The guard's tmpfs options: nothing can be created in it anyway (it is mounted read-only).
const OPTIONS: &str = "mode=0755,size=4k,nr_inodes=1";

/// What [`prepare`] may do to MOUNTPOINT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Before anything is created or started: refuse a foreign or live mount, change nothing.
    Check,
    /// After the data directory is locked: create MOUNTPOINT, mount the guard if there is none.
    /// A dead FUSE mount on top of the guard stays (it answers `ENOTCONN`) until [`Phase::Mount`].
    Start,
    /// Just before the FUSE mount: also detach a dead FUSE mount on top of the guard.
    Mount,
}

/// One mount stacked exactly at MOUNTPOINT, from `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    /// The mount's id (field 1).
    id: u64,
    /// The id of the mount it sits on (field 2).
    parent: u64,
    /// The filesystem type (`fuse`, `fuse.lightchain`, `tmpfs`, `ext4`, …).
    fstype: String,
    /// The mount source (`lightchain-guard` for the guard).
    source: String,
    /// Whether the mount (not only its filesystem) is read-only.
    read_only: bool,
}

impl Layer {
    /// A guard mounted by a lightchain node.
    pub fn is_guard(&self) -> bool {
        self.fstype == "tmpfs" && self.source == SOURCE && self.read_only
    }

    /// A FUSE mount (live or dead; lightchain's or another program's).
    pub fn is_fuse(&self) -> bool {
        self.fstype == "fuse" || self.fstype.starts_with("fuse.")
    }
}

/// Makes MOUNTPOINT ready for `phase` and returns its absolute, canonical path (as
/// `/proc/self/mountinfo` spells it). Errors are messages for the user; nothing is touched
/// when one is returned, except a dead FUSE mount already detached.
pub fn prepare(path: &Path, phase: Phase) -> Result<PathBuf, String> {
    let shown = path.display();
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(format!("mountpoint {shown} is not a directory")),
        Err(e) if is_dead(&e) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if phase == Phase::Check {
                return std::path::absolute(path).map_err(|e| format!("mountpoint {shown}: {e}"));
            }
            std::fs::create_dir_all(path).map_err(|e| format!("cannot create mountpoint {shown}: {e}"))?;
        }
        Err(e) => return Err(format!("mountpoint {shown}: {e}")),
    }
    let absolute = canonical(path).map_err(|e| format!("mountpoint {shown}: {e}"))?;
    let shown = absolute.display();
    // Each round either finishes or removes one dead FUSE mount; a few are plenty.
    for _ in 0..8 {
        let layers = layers(&absolute);
        let Some(top) = layers.last() else {
            // A plain directory: guard it (from now on a write there fails with EROFS).
            if phase != Phase::Check {
                mount_guard(&absolute)
                    .map_err(|e| format!("cannot mount the read-only guard on {shown}: {e}"))?;
                tracing::info!(mountpoint = %shown, "mountpoint guarded: writes fail with EROFS until the node serves it");
            }
            return Ok(absolute);
        };
        if top.is_guard() {
            return Ok(absolute);
        }
        if !top.is_fuse() {
            return Err(format!(
                "mountpoint {shown} is the root of a {} mount (a shared volume?); lightchain does not \
                 mount on top of it: mount on a subdirectory of the volume instead, e.g. {}",
                top.fstype,
                absolute.join("lightchain").display()
            ));
        }
        match ask_the_server(&absolute) {
            Err(e) if is_dead(&e) => {}
            // A live mount: another lightchain, or another FUSE program. Mounting on top would hide it.
            _ => {
                return Err(format!(
                    "mountpoint {shown} already has a live {} mount; not mounting on top of it \
                     (stop whatever serves it, or choose another mountpoint)",
                    top.fstype
                ))
            }
        }
        let on_guard = layers.len() >= 2 && layers[layers.len() - 2].is_guard();
        if phase == Phase::Check || (on_guard && phase == Phase::Start) {
            // It answers ENOTCONN: as loud as the guard. Replaced as the last step before mounting.
            return Ok(absolute);
        }
        tracing::warn!(mountpoint = %shown, guarded = on_guard, "replacing a dead FUSE mount left by a crashed node");
        lazy_unmount(&absolute);
    }
    Err(format!("mountpoint {shown}: dead FUSE mounts keep appearing; not mounting"))
}

/// Removes the guard at `path` (the FUSE mount must be gone): `--release-guard-on-stop`.
pub fn release(path: &Path) {
    if !layers(path).last().is_some_and(Layer::is_guard) {
        return;
    }
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else { return };
    // SAFETY: c_path is a valid NUL-terminated string that outlives the call.
    if unsafe { libc::umount2(c_path.as_ptr(), 0) } != 0 {
        // Busy (a process has its working directory there): detach it instead.
        lazy_unmount(path);
    }
    tracing::info!(mountpoint = %path.display(), "released the mountpoint guard (--release-guard-on-stop)");
}

/// Detaches the mount on top of `path` (`umount2(MNT_DETACH)`): it disappears from the tree at
/// once and is freed when its last user lets go.
pub fn lazy_unmount(path: &Path) {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: c_path is a valid NUL-terminated string that outlives the call.
    if unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) } != 0 {
        tracing::warn!(mountpoint = %path.display(), error = %io::Error::last_os_error(), "lazy unmount failed");
    }
}

/// Mounts the guard: an empty read-only tmpfs named [`SOURCE`].
fn mount_guard(path: &Path) -> io::Result<()> {
    let c = |s: &[u8]| CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let (source, target, fstype, options) =
        (c(SOURCE.as_bytes())?, c(path.as_os_str().as_bytes())?, c(b"tmpfs")?, c(OPTIONS.as_bytes())?);
    let flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(source.as_ptr(), target.as_ptr(), fstype.as_ptr(), flags, options.as_ptr().cast())
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `statfs(2)` of `path`: on a FUSE mount a request its server must answer. (A `stat` may be
/// answered from the kernel's attribute cache: right after a crash it succeeds on a dead mount.)
fn ask_the_server(path: &Path) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: statfs is plain old data, filled in by the kernel.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is a valid NUL-terminated string and buf a valid statfs to fill.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut buf) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A mount whose server is gone: `ENOTCONN` (the process died) or `ECONNABORTED` (the
/// connection was aborted through `/sys/fs/fuse/connections`).
fn is_dead(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTCONN) | Some(libc::ECONNABORTED))
}

/// The canonical path of `path`, even when it is a dead mount (which `canonicalize` cannot
/// stat): its parent canonicalised, joined with its name.
fn canonical(path: &Path) -> io::Result<PathBuf> {
    if let Ok(p) = std::fs::canonicalize(path) {
        return Ok(p);
    }
    let absolute = std::path::absolute(path)?;
    match (absolute.parent(), absolute.file_name()) {
        (Some(parent), Some(name)) => Ok(std::fs::canonicalize(parent)?.join(name)),
        _ => Ok(absolute),
    }
}

/// The mounts stacked exactly at `path`, bottom first.
pub fn layers(path: &Path) -> Vec<Layer> {
    match (std::fs::read_to_string("/proc/self/mountinfo"), path.to_str()) {
        (Ok(info), Some(path)) => parse_layers(&info, path),
        _ => Vec::new(),
    }
}

/// [`layers`] over the text of a mountinfo file: the mounts at `path` that sit on one another,
/// from the one on the directory up to the top one.
fn parse_layers(info: &str, path: &str) -> Vec<Layer> {
    let at_path: Vec<Layer> = info
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            if unescape(fields.get(4)?) != path {
                return None;
            }
            let separator = fields.iter().position(|f| *f == "-")?;
            Some(Layer {
                id: fields.first()?.parse().ok()?,
                parent: fields.get(1)?.parse().ok()?,
                fstype: fields.get(separator + 1)?.to_string(),
                source: unescape(fields.get(separator + 2)?),
                read_only: fields.get(5)?.split(',').any(|o| o == "ro"),
            })
        })
        .collect();
    // The top: the last listed mount on which no other mount at `path` sits.
    let Some(top) = at_path.iter().rev().find(|l| !at_path.iter().any(|o| o.parent == l.id)) else {
        return Vec::new();
    };
    let mut stack = vec![top.clone()];
    while let Some(below) = at_path.iter().find(|l| l.id == stack[stack.len() - 1].parent) {
        if stack.len() > at_path.len() {
            break; // a cycle cannot happen in a real mountinfo; never loop on a forged one
        }
        stack.push(below.clone());
    }
    stack.reverse();
    stack
}

/// Decodes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 252:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:40 / /tmp/a\\040b rw,relatime shared:2 - tmpfs tmpfs rw
41 22 0:41 / /tmp/m ro,nosuid,nodev,noexec,relatime shared:3 - tmpfs lightchain-guard ro,size=4k,nr_inodes=1,mode=755
45 41 0:45 / /tmp/m rw,nosuid,nodev,noatime shared:4 - fuse.lightchain lightchain rw,user_id=0,group_id=0
50 22 0:50 / /tmp/fake ro,relatime shared:5 - tmpfs lightchain-guard ro
51 22 0:51 / /tmp/rw-named rw,relatime shared:6 - tmpfs lightchain-guard rw
";

    #[test]
    fn a_guard_with_a_fuse_mount_on_top_is_two_layers_bottom_first() {
        let layers = parse_layers(INFO, "/tmp/m");
        assert_eq!(layers.len(), 2);
        assert!(layers[0].is_guard() && !layers[0].is_fuse());
        assert!(layers[1].is_fuse() && !layers[1].is_guard());
    }

    #[test]
    fn the_stack_follows_parents_not_listing_order() {
        // The same two mounts listed top first.
        let info = "\
45 41 0:45 / /tmp/m rw - fuse lightchain rw
41 22 0:41 / /tmp/m ro - tmpfs lightchain-guard ro
";
        let layers = parse_layers(info, "/tmp/m");
        assert_eq!(layers.iter().map(|l| l.id).collect::<Vec<_>>(), vec![41, 45]);
    }

    #[test]
    fn only_a_read_only_tmpfs_named_lightchain_guard_is_a_guard() {
        assert!(parse_layers(INFO, "/tmp/fake")[0].is_guard());
        assert!(!parse_layers(INFO, "/tmp/rw-named")[0].is_guard(), "a read-write tmpfs is not a guard");
        assert!(!parse_layers(INFO, "/tmp/a b")[0].is_guard());
        assert_eq!(parse_layers(INFO, "/tmp/a b")[0].fstype, "tmpfs", "escaped spaces are decoded");
        assert!(parse_layers(INFO, "/tmp/none").is_empty());
    }

    #[test]
    fn unescape_decodes_octal_and_keeps_the_rest() {
        assert_eq!(unescape("a\\040b\\134c\\011"), "a b\\c\t");
        assert_eq!(unescape("plain\\9"), "plain\\9");
    }
}
