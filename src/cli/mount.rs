//! `lightchain mount`: start a node, serve gRPC and the filesystem, stop cleanly on a signal.
//!
//! Start-up order: refuse a mountpoint that is the root of another (non-FUSE) mount, open the
//! data directory and start consensus, bind and serve gRPC, wait for a leader, replace a dead
//! FUSE mount left by a crash, mount, log `ready`. Shutdown order
//! (SIGINT/SIGTERM, or the mount going away): fail every pending commit (`EIO` to the apps
//! waiting in `close`), stop gRPC and consensus, unmount, exit 0.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use fuser::{MountOption, SessionACL};
use tokio::signal::unix::{signal, SignalKind};

use super::{data_dir, MountArgs};
use crate::fs::fuse::FuseAdapter;
use crate::fs::{Fs, FsConfig};
use crate::node::{Config, Node};
use crate::store::DataDir;

/// How long to wait for a leader at start-up before giving up.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the node on one async thread (tokio's current-thread runtime).
///
/// A write is a chain of hand-offs (FUSE thread, batcher, Raft core, replication, gRPC, log
/// flusher, state machine, FUSE reply), each a wake-up. With tokio's multi-thread scheduler a
/// task woken on one worker also wakes a parked sibling to look for work; on a small virtual
/// machine every such wake-up is an inter-processor interrupt that costs tens of µs. On this
/// project's 2-vCPU reference machine one async thread measured better in every pair of runs:
/// a loopback gRPC round trip between idle processes 0.23 ms instead of 0.37 ms (p50), context
/// switches per 3-node write on the leader 28 instead of 40, and 32 writers on the leader
/// 13–26 % more writes a second (docs/architecture/write-path.md). The parallel work stays
/// parallel: the kernel's requests are served by the fuser threads, fsyncs and the backing
/// directory by their own threads, and long synchronous steps (a snapshot's blocks) run on
/// tokio's blocking pool, so they never hold up heartbeats.
pub(super) fn run(args: MountArgs) -> ExitCode {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().thread_name("lightchain").build();
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: MountArgs) -> Result<(), String> {
    // Before anything is created or started: a volume root is refused at once.
    refuse_volume_root(&args.mountpoint)?;
    let peer_tls = args.tls.load().map_err(|e| e.to_string())?;
    if peer_tls.is_some() {
        tracing::info!(
            "peer traffic uses mutual TLS: only certificates the --peer-tls-ca signed may connect"
        );
    }
    let data_path = data_dir(args.data.clone());
    let data =
        DataDir::create(&data_path).map_err(|e| format!("data directory {}: {e}", data_path.display()))?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let listen = listener.local_addr().map_err(|e| e.to_string())?;
    if listen.ip().is_unspecified() && args.advertise.is_none() {
        return Err(format!(
            "--listen {listen} is a wildcard address that peers cannot reach: give --advertise HOST:PORT"
        ));
    }
    if !listen.ip().is_loopback() && peer_tls.is_none() {
        tracing::warn!(
            listen = %listen,
            "listening off loopback without --peer-tls-*: the cluster token and all peer traffic travel in clear text"
        );
    }
    let bootstrap_expect = args.bootstrap_expect.map(|n| n as usize);
    if let Some(expect) = bootstrap_expect {
        if expect > args.voters {
            return Err(format!(
                "--bootstrap-expect {expect} founds {expect} voters, more than --voters {}: raise --voters",
                args.voters
            ));
        }
        if expect > 1 && args.discover_dns.is_none() && args.peers.is_empty() {
            return Err(format!(
                "--bootstrap-expect {expect} needs contacts to discover the others: give --discover-dns NAME:PORT or --peer HOST:PORT"
            ));
        }
    }
    let config = Config {
        name: args.name.clone().unwrap_or_else(host_name),
        listen,
        advertise: args.advertise.clone().unwrap_or_else(|| listen.to_string()),
        commit_timeout: args.commit_timeout,
        read_consistency: args.read_consistency,
        peers: args.peers.clone(),
        snapshot_every: args.snapshot_every,
        token_file: args.cluster_token_file.clone(),
        peer_tls,
        join: args.join.clone(),
        voters: args.voters,
        replace_after: (!args.replace_after.is_zero()).then_some(args.replace_after),
        bootstrap_expect,
        discover_dns: args.discover_dns.clone(),
    };
    let node =
        Node::start(&data, config, listener).await.map_err(|e| format!("cannot start the node: {e}"))?;

    if !node.wait_leader(READY_TIMEOUT).await {
        node.shutdown().await;
        return Err(format!("no leader within {READY_TIMEOUT:?}"));
    }

    let mountpoint = prepare_mountpoint(&args.mountpoint)?;
    let fs = Arc::new(Fs::new(
        node.clone(),
        // SAFETY: getuid/getgid have no preconditions.
        FsConfig {
            max_state_size: args.max_state_size,
            uid: unsafe { libc::getuid() },
            gid: unsafe { libc::getgid() },
        },
    ));
    let mut options = fuser::Config::default();
    options.mount_options = vec![
        MountOption::FSName("lightchain".into()),
        MountOption::Subtype("lightchain".into()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
    ];
    options.acl = if args.allow_other { SessionACL::All } else { SessionACL::Owner };
    // Threads that read requests from the kernel. None waits for consensus (the adapter moves a
    // waiting call into a task), but each serves one request at a time: with 32 writers on a
    // single node 8 threads gave 8,274/s against 6,997/s with 4 (medians of 3 alternated runs of
    // examples/bench.rs; no difference on 3 nodes). An idle one costs a blocked read.
    options.n_threads = Some(8);
    let adapter = FuseAdapter::new(fs.clone(), tokio::runtime::Handle::current());
    let session = fuser::Session::new(adapter, &mountpoint, &options)
        .map_err(|e| format!("cannot mount {}: {e}", mountpoint.display()))?;
    let session = session.spawn().map_err(|e| format!("cannot start serving the mount: {e}"))?;
    // Linearizable mode lets the kernel cache no names and no pages, and a directory's
    // attributes only for a tick (fs::Ttls), so there is nothing to invalidate; notifying
    // anyway would only risk blocking on a directory lock held by a request the process can
    // no longer answer when it dies.
    if args.read_consistency == crate::node::ReadConsistency::Local {
        crate::fs::fuse::spawn_invalidator(fs, session.notifier())
            .map_err(|e| format!("cannot start the cache invalidation thread: {e}"))?;
    }
    let status = node.status();
    tracing::info!(
        mountpoint = %mountpoint.display(),
        data = %data_path.display(),
        listen = %listen,
        node_id = status.node_id,
        head = ?status.head_height,
        "lightchain ready"
    );

    wait_for_stop(&session).await;
    tracing::info!("stopping: failing pending commits, then unmounting");
    node.shutdown().await;
    if !session.guard.is_finished() {
        if let Err(e) = session.umount_and_join() {
            tracing::warn!(error = %e, "unmount failed; detaching the mount lazily");
            lazy_unmount(&mountpoint);
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Waits for SIGINT or SIGTERM, or for the mount to go away (someone ran `umount`).
async fn wait_for_stop(session: &fuser::BackgroundSession) {
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = tick.tick() => {
                if session.guard.is_finished() {
                    tracing::warn!("the mount went away");
                    return;
                }
            }
        }
    }
}

/// Creates the mountpoint if missing and replaces a dead FUSE mount left by a crash.
/// Any other mount exactly at the mountpoint — a live one, or one that is not FUSE — is
/// left alone, with an error. (A mountpoint *inside* another mount, as in a shared volume
/// in Kubernetes, is the normal case and is fine.)
fn prepare_mountpoint(path: &Path) -> Result<std::path::PathBuf, String> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => {
            let absolute =
                std::fs::canonicalize(path).map_err(|e| format!("mountpoint {}: {e}", path.display()))?;
            refuse_volume_root(&absolute)?;
            if let Some(fstype) = mount_type(&absolute) {
                // A live mount: another lightchain (fuse) or something that is not ours.
                // Mounting on top would hide it; leave it alone.
                return Err(format!(
                    "mountpoint {} already has a live {fstype} mount; not mounting on top of it \
                     (stop whatever serves it, or choose another mountpoint)",
                    absolute.display()
                ));
            }
        }
        Ok(_) => return Err(format!("mountpoint {} is not a directory", path.display())),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            let absolute = std::path::absolute(path).map_err(|e| e.to_string())?;
            match mount_type(&absolute) {
                Some(fstype) if fstype.starts_with("fuse") => {
                    tracing::warn!(mountpoint = %absolute.display(), "replacing a dead FUSE mount left by a crashed node");
                    lazy_unmount(&absolute);
                }
                other => {
                    return Err(format!(
                        "mountpoint {} is not connected and is not a FUSE mount ({other:?}); not touching it",
                        absolute.display()
                    ))
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(path)
                .map_err(|e| format!("cannot create mountpoint {}: {e}", path.display()))?;
        }
        Err(e) => return Err(format!("mountpoint {}: {e}", path.display())),
    }
    std::fs::canonicalize(path).map_err(|e| format!("mountpoint {}: {e}", path.display()))
}

/// Refuses a mountpoint that is the root of a mount other than FUSE: in a container that is
/// a shared volume (an `emptyDir` bind-mounted in), and mounting on it would hide the volume
/// from the other containers and break mount propagation, so the user is told to use a
/// subdirectory. A FUSE mount there (dead or live) is [`prepare_mountpoint`]'s business; a
/// missing or unreadable path is left for it to report too.
fn refuse_volume_root(path: &Path) -> Result<(), String> {
    let absolute = match std::fs::canonicalize(path) {
        Ok(p) => p,
        Err(_) => match std::path::absolute(path) {
            Ok(p) => p,
            Err(_) => return Ok(()),
        },
    };
    match mount_type(&absolute) {
        Some(fstype) if !fstype.starts_with("fuse") => Err(format!(
            "mountpoint {} is the root of a {fstype} mount (a shared volume?); lightchain does not \
             mount on top of it: mount on a subdirectory of the volume instead, e.g. {}",
            absolute.display(),
            absolute.join("lightchain").display()
        )),
        Some(_) | None => Ok(()),
    }
}

/// The filesystem type mounted exactly at `path`, from `/proc/self/mountinfo`.
fn mount_type(path: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let wanted = path.to_str()?;
    info.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let mount_point = fields.get(4)?.replace("\\040", " ");
        let separator = fields.iter().position(|f| *f == "-")?;
        (mount_point == wanted).then(|| fields.get(separator + 1).map(|s| s.to_string()))?
    })
}

fn lazy_unmount(path: &Path) {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: c_path is a valid NUL-terminated string that outlives the call.
    if unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) } != 0 {
        tracing::warn!(mountpoint = %path.display(), error = %std::io::Error::last_os_error(), "lazy unmount failed");
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_or_else(|_| "lightchain".into(), |s| s.trim().to_owned())
}
