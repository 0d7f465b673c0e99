//! `lightchain mount`: start a node, serve gRPC and the filesystem, stop cleanly on a signal.
//!
//! Start-up order: refuse a mountpoint that holds a live or a foreign (non-FUSE, non-guard)
//! mount, touching nothing; open (and lock) the data directory; guard the mountpoint with a
//! read-only mount if it has none ([`guard`]: from here on no write lands under it); bind and
//! serve gRPC, start consensus, wait for a leader; detach a dead FUSE mount left by a crash
//! (the last step before mounting, so the window in which the guard alone answers is a few
//! milliseconds); mount; log `ready`. Shutdown order (SIGINT/SIGTERM, or the mount going away):
//! fail every pending commit (`EIO` to the apps waiting in `close`), stop gRPC and consensus,
//! unmount, and leave the guard (writes keep failing with `EROFS`) unless
//! `--release-guard-on-stop`; exit 0. When consensus stops on a fatal error (a failed write to
//! `raft/` or `chain/`: a full or dead disk) the node stops the same way and exits 1, so that a
//! supervisor restarts it instead of leaving a process that answers `EIO` forever.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use fuser::{MountOption, SessionACL};
use tokio::signal::unix::{signal, SignalKind};

use super::guard::{self, Phase};
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
    // Before anything is created or started: a volume root or a live mount is refused at once.
    guard::prepare(&args.mountpoint, Phase::Check)?;
    let peer_tls = args.tls.load().map_err(|e| e.to_string())?;
    if peer_tls.is_some() {
        tracing::info!(
            "peer traffic uses mutual TLS: only certificates the --peer-tls-ca signed may connect"
        );
    }
    let data_path = data_dir(args.data.clone());
    let data =
        DataDir::create(&data_path).map_err(|e| format!("data directory {}: {e}", data_path.display()))?;
    // A second process on this data directory must leave the mountpoint alone: try its lock
    // first (`Node::start` takes it for good a moment later). Then guard the mountpoint: from
    // here on it refuses every write until the FUSE mount serves it, and after this process ends.
    drop(data.lock().map_err(|e| format!("cannot start the node: {e}"))?);
    let mountpoint = guard::prepare(&args.mountpoint, Phase::Start)?;
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

    // The cluster's limits live in the chain; a new cluster records them now (in the
    // background: a node that is still catching up must not hold up its mount).
    let limits = {
        let (node, wanted) = (node.clone(), args.max_state_size);
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(200);
            loop {
                match node.adopt_limits(wanted).await {
                    Ok(_) => break,
                    Err(crate::node::Error::ShuttingDown) => break,
                    Err(e) => tracing::warn!(error = %e, "cannot check the cluster's limits yet; retrying"),
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        })
    };
    // Usually recorded within milliseconds; a node that cannot check them in a commit timeout
    // (catching up) mounts anyway, and the caps apply until its replica holds them.
    let mut limits = limits;
    if tokio::time::timeout(args.commit_timeout, &mut limits).await.is_err() {
        tracing::warn!("the cluster's limits are not known here yet: the caps apply until they are");
    }
    let fs = Arc::new(Fs::new(
        node.clone(),
        // SAFETY: getuid/getgid have no preconditions.
        FsConfig { uid: unsafe { libc::getuid() }, gid: unsafe { libc::getgid() } },
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
    // The last step before the mount: a dead FUSE mount left by a crash (answering ENOTCONN
    // until now) is detached, the guard beneath answers EROFS for the moment until the new mount.
    guard::prepare(&mountpoint, Phase::Mount)?;
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

    let stopped_by = wait_for_stop(&session, &node).await;
    tracing::info!("stopping: failing pending commits, then unmounting");
    limits.abort();
    node.shutdown().await;
    if !session.guard.is_finished() {
        if let Err(e) = session.umount_and_join() {
            tracing::warn!(error = %e, "unmount failed; detaching the mount lazily");
            guard::lazy_unmount(&mountpoint);
        }
    }
    if args.release_guard_on_stop {
        guard::release(&mountpoint);
    } else {
        tracing::info!(
            mountpoint = %mountpoint.display(),
            "the mountpoint stays guarded (writes fail with EROFS) until the next start; `umount` releases it"
        );
    }
    tracing::info!("stopped");
    match stopped_by {
        Stop::Asked => Ok(()),
        Stop::Consensus(e) => Err(format!(
            "consensus stopped ({e}): exited so that a supervisor restarts this node; a restart once the \
             cause is gone (a full or failed disk under the data directory) recovers from what is durable"
        )),
    }
}

/// Why the node stops.
enum Stop {
    /// A signal, or the mount went away.
    Asked,
    /// Consensus stopped on a fatal error (a failed write to `raft/` or `chain/`): serving on
    /// would answer `EIO` to every call for as long as the process lives, and a supervisor
    /// would never restart it.
    Consensus(String),
}

/// Waits for SIGINT or SIGTERM, for the mount to go away (someone ran `umount`), or for
/// consensus to stop.
async fn wait_for_stop(session: &fuser::BackgroundSession, node: &Node) -> Stop {
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot install signal handlers");
        return Stop::Asked;
    };
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = term.recv() => return Stop::Asked,
            _ = int.recv() => return Stop::Asked,
            _ = tick.tick() => {
                if session.guard.is_finished() {
                    tracing::warn!("the mount went away");
                    return Stop::Asked;
                }
                if let Some(crate::node::NotReady::Stopped(e)) = node.not_ready() {
                    tracing::error!(error = %e, "consensus stopped on a fatal error: stopping the node");
                    return Stop::Consensus(e);
                }
            }
        }
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_or_else(|_| "lightchain".into(), |s| s.trim().to_owned())
}
