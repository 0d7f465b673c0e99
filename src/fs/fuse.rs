//! The fuser adapter: one FUSE callback in, one call into [`Fs`], one reply out.
//!
//! No semantics live here. Callbacks whose `Fs` method is `async` (it may wait for a commit
//! or a read index) are polled once in place — a local answer goes straight back — and
//! otherwise moved, reply and all, into a tokio task, so the thread that reads requests from
//! the kernel never waits for consensus and many commits can be in flight at once.

use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;

use super::{Attr, Caller, DirReplier, Fs, FsError, Invalidation, Kind, Opened, SetAttr, Ttls};
use crate::chain::TimeSpec;

/// The `fuser::Filesystem` over [`Fs`].
pub struct FuseAdapter {
    fs: Arc<Fs>,
    rt: Handle,
}

impl FuseAdapter {
    /// An adapter that runs async work on `rt`.
    pub fn new(fs: Arc<Fs>, rt: Handle) -> Self {
        FuseAdapter { fs, rt }
    }

    /// Polls `work` once here; if it is not done, finishes it in a task. Either way `reply`
    /// gets its result exactly once.
    fn run<T, F, R>(&self, work: F, reply: R)
    where
        T: Send + 'static,
        F: Future<Output = Result<T, FsError>> + Send + 'static,
        R: FnOnce(Result<T, FsError>) + Send + 'static,
    {
        let _runtime = self.rt.enter();
        let mut work = Box::pin(work);
        match work.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(result) => reply(result),
            Poll::Pending => {
                self.rt.spawn(async move { reply(work.await) });
            }
        }
    }
}

fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno())
}

fn caller(req: &Request) -> Caller {
    Caller { uid: req.uid(), gid: req.gid(), tid: req.pid() }
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
    }
}

/// A `setattr` time as a `times` transaction's.
fn time_spec(t: TimeOrNow) -> TimeSpec {
    match t {
        TimeOrNow::Now => TimeSpec::Now,
        TimeOrNow::SpecificTime(t) => TimeSpec::At(match t.duration_since(UNIX_EPOCH) {
            Ok(after) => i64::try_from(after.as_nanos()).unwrap_or(i64::MAX),
            // fuser 0.18 builds a time before the epoch from the kernel's (seconds, nanoseconds)
            // as `EPOCH - (|seconds| + nanoseconds)`, though the nanoseconds count forwards
            // (-1.5 s arrives as (-2, 500_000_000)): undo that to get the time that was sent.
            Err(before) => {
                let d = before.duration();
                let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
                secs.saturating_mul(-1_000_000_000).saturating_add(i64::from(d.subsec_nanos()))
            }
        }),
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn open_flags(o: &Opened) -> FopenFlags {
    let mut flags = FopenFlags::empty();
    flags.set(FopenFlags::FOPEN_DIRECT_IO, o.direct_io);
    flags.set(FopenFlags::FOPEN_KEEP_CACHE, o.keep_cache);
    flags.set(FopenFlags::FOPEN_NOFLUSH, o.no_flush);
    flags
}

struct Directory<'a>(&'a mut ReplyDirectory);

impl DirReplier for Directory<'_> {
    fn add(&mut self, ino: u64, offset: u64, kind: Kind, name: &str) -> bool {
        self.0.add(INodeNo(ino), offset, file_type(kind), name)
    }
}

fn name(n: &OsStr) -> Vec<u8> {
    n.as_bytes().to_vec()
}

impl fuser::Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // O_TRUNC arrives with open instead of as a separate setattr.
        if let Err(missing) = config.add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC) {
            tracing::warn!(?missing, "kernel lacks FUSE_ATOMIC_O_TRUNC");
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEntry) {
        let (fs, n, caller) = (self.fs.clone(), name(n), caller(req));
        let ttls = fs.ttls();
        self.run(async move { fs.lookup(parent.0, &n, caller).await }, move |r| match r {
            Ok(attr) => entry(reply, ttls, &attr),
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0, fh.map(|f| f.0)) {
            Ok(attr) => reply.attr(&self.fs.ttls().of(&attr).attr, &file_attr(&attr)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let fs = self.fs.clone();
        let ttls = fs.ttls();
        let (atime, mtime) = (atime.map(time_spec), mtime.map(time_spec));
        let set = SetAttr { atime, mtime, mode, uid, gid, size, fh: fh.map(|f| f.0) };
        let caller = caller(req);
        self.run(async move { fs.setattr(ino.0, set, caller).await }, move |r| match r {
            Ok(attr) => reply.attr(&ttls.of(&attr).attr, &file_attr(&attr)),
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(errno(&self.fs.unsupported("mknod")));
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, n: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let (fs, n, caller) = (self.fs.clone(), name(n), caller(req));
        let ttls = fs.ttls();
        self.run(async move { fs.mkdir(parent.0, &n, mode, umask, caller).await }, move |r| match r {
            Ok(attr) => entry(reply, ttls, &attr),
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        let (fs, n) = (self.fs.clone(), name(n));
        self.run(async move { fs.unlink(parent.0, &n).await }, move |r| empty(reply, r));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        let (fs, n) = (self.fs.clone(), name(n));
        self.run(async move { fs.rmdir(parent.0, &n).await }, move |r| empty(reply, r));
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link: &OsStr, target: &Path, reply: ReplyEntry) {
        let (fs, n, caller) = (self.fs.clone(), name(link), caller(req));
        let target = target.as_os_str().as_bytes().to_vec();
        let ttls = fs.ttls();
        self.run(async move { fs.symlink(parent.0, &n, &target, caller).await }, move |r| match r {
            Ok(attr) => entry(reply, ttls, &attr),
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        n: &OsStr,
        new_parent: INodeNo,
        new_name: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (fs, n, new_name) = (self.fs.clone(), name(n), name(new_name));
        self.run(
            async move { fs.rename(parent.0, &n, new_parent.0, &new_name, flags.bits()).await },
            move |r| empty(reply, r),
        );
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _new_parent: INodeNo,
        _new_name: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(errno(&self.fs.unsupported("link")));
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let (fs, caller) = (self.fs.clone(), caller(req));
        self.run(async move { fs.open(ino.0, flags.0, caller).await }, move |r| match r {
            Ok(o) => reply.opened(FileHandle(o.fh), open_flags(&o)),
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.fs.read(fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let drop_privileges = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        match self.fs.write(fh.0, offset, data, drop_privileges) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        tracing::debug!("flush received");
        let fs = self.fs.clone();
        self.run(async move { fs.flush(fh.0).await }, move |r| {
            tracing::debug!("flush answered");
            empty(reply, r)
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.release(fh.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let fs = self.fs.clone();
        self.run(async move { fs.fsync(fh.0).await }, move |r| empty(reply, r));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let fs = self.fs.clone();
        self.run(async move { fs.opendir(ino.0).await }, move |r| match r {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        match self.fs.readdir(fh.0, offset, &mut Directory(&mut reply)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // Directory changes are committed before their calls return: nothing is pending.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let files = self.fs.node().replica().tree.len() as u64;
        reply.statfs(1 << 24, 1 << 23, 1 << 23, files, 1 << 20, 4096, 255, 4096);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(errno(&self.fs.unsupported("setxattr")));
    }

    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        // ENOSYS (chosen in fs/error.rs): asked once per mount, not with every O_TRUNC open.
        reply.error(errno(&self.fs.unsupported("getxattr")));
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        // No extended attributes: an empty list.
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(errno(&self.fs.unsupported("removexattr")));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (fs, n, caller) = (self.fs.clone(), name(n), caller(req));
        let ttls = fs.ttls();
        self.run(
            async move { fs.create(parent.0, &n, mode, umask, flags, caller).await },
            move |r| match r {
                // fuser's `created` gives the entry and its attributes one TTL: the entry's.
                Ok((attr, o)) => reply.created(
                    &ttls.of(&attr).entry,
                    &file_attr(&attr),
                    Generation(0),
                    FileHandle(o.fh),
                    open_flags(&o),
                ),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(errno(&self.fs.unsupported("fallocate")));
    }
}

/// Answers with an entry and its attributes, each with the TTL `ttls` gives it.
fn entry(reply: ReplyEntry, ttls: Ttls, attr: &Attr) {
    let ttl = ttls.of(attr);
    reply.entry_with_ttls(&ttl.attr, &ttl.entry, &file_attr(attr), Generation(0))
}

fn empty(reply: ReplyEmpty, r: Result<(), FsError>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

/// Starts the thread that drops kernel cache entries for changes other nodes made. It is fed
/// by the node's queue of applied changes and holds no filesystem lock, so it never runs
/// inside a FUSE callback (the kernel may hold a directory lock while it waits for one of our
/// replies; notifying from there deadlocks).
pub fn spawn_invalidator(
    fs: Arc<Fs>,
    notifier: fuser::Notifier,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    use tokio::sync::broadcast::error::RecvError;
    let mut changes = fs.node().subscribe_changes();
    let self_id = fs.node().id();
    std::thread::Builder::new().name("lc-invalidate".into()).spawn(move || loop {
        let batch = match changes.blocking_recv() {
            Ok(batch) => batch,
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "kernel cache invalidation fell behind; some remote changes may show late"
                );
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let todo: std::collections::BTreeSet<Invalidation> = batch
            .iter()
            .filter(|(origin, _)| *origin != self_id)
            .flat_map(|(_, change)| fs.invalidations(change))
            .collect();
        for inv in todo {
            // ENOENT means the kernel does not cache it: nothing to drop.
            let _ = match &inv {
                Invalidation::Entry { parent, name } => {
                    notifier.inval_entry(INodeNo(*parent), OsStr::new(name))
                }
                Invalidation::Inode(ino) => notifier.inval_inode(INodeNo(*ino), 0, 0),
            };
        }
    })
}
