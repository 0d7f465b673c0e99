//! Robustness harness (issue 8 item 7; DESIGN §1.3, §1.6; etcd's robustness tests are the model).
//!
//! A real 3-member cluster on loopback, many client threads reading and writing whole files of a few states
//! through all three mounts, appending unique lines to one `O_APPEND` log and reading it whole, racing
//! `O_CREAT|O_EXCL` creates of fresh "lock" states, while the test thread
//! injects faults from a seeded schedule: `kill -9` and restart, `SIGSTOP`/`SIGCONT`, and network partitions
//! (`tests/common/faults.rs`) — leader or follower isolated both ways, the leader's requests cut one way,
//! the followers' requests to the leader cut one way, and every member cut from every other (no quorum).
//! Every operation is recorded with its invocation and return time ([`Instant`]s of this process). Members
//! snapshot often, so one that was down catches up by snapshot. Faults come one at a time; those that depose
//! the leader last long enough for a failover (5–6 s at worst on openraft 0.9, DESIGN §5).
//!
//! Afterwards everything is healed and the test asserts:
//! - the history is linearizable (`tests/common/linearizability.rs`; failed writes are indeterminate),
//!   including one final read of every state through every mount;
//! - every member reports the same head hash, holds the same chain and the same `states/`;
//! - in the chain, per state: every acknowledged write applied exactly once, no write applied twice, nothing
//!   that no client wrote, writes in an order that agrees with real time, the last one being what every
//!   mount and every `states/` shows; at most one winning exclusive create per lock;
//! - the log holds every acknowledged line exactly once, in real-time order, and every read of it was a
//!   prefix of the final content, never stale and never shrinking;
//! - `lightchain verify` passes on every member (stopped first, cleanly by SIGTERM);
//! - no node panicked (the harness's `Node::drop` checks the logs) and no iptables rule was left behind.
//!
//! `cargo test` runs a short schedule (`LIGHTCHAIN_ROBUSTNESS_SECS`, default [`DEFAULT_SECS`] seconds of
//! faults); set it higher for a soak, and `LIGHTCHAIN_ROBUSTNESS_SEED` to replay a schedule (the seed is
//! printed; the interleaving of the clients is not reproducible, the sequence of faults is). A failure keeps
//! every member's data directory and log, plus the full history and the fault timeline, in a directory it
//! names; a member that stops answering its mount fails the test with its thread stacks instead of hanging.
//!
//! Also here: focused single-node reproductions of bugs the harness found, and a unit test of the log checks.

mod common;
#[path = "common/linearizability.rs"]
mod linearizability;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use common::cluster::*;
use common::faults::{self, Partitions};
use common::*;
use linearizability::{ExclOutcome, Op, Operation, WriteOutcome};

/// Seconds of fault schedule when `LIGHTCHAIN_ROBUSTNESS_SECS` is not set: 300, as issue 19 asks (bugs
/// show at 300 s that 75 s does not reach); the test takes about 5½ minutes.
const DEFAULT_SECS: u64 = 300;

/// `--snapshot-every` of the members when `LIGHTCHAIN_ROBUSTNESS_SNAPSHOT_EVERY` is not set (a run makes
/// several thousand blocks).
const DEFAULT_SNAPSHOT_EVERY: u64 = 1000;

/// The register states the clients overwrite and read.
const REGISTERS: [&str; 3] = ["reg/a", "reg/b", "reg/c"];

/// An append-only state: clients add unique lines with `O_APPEND` and read it whole.
const APPEND_LOG: &str = "log/appends";

/// Client threads per member.
const CLIENTS_PER_MEMBER: usize = 3;

/// How long the cluster may take to agree on a leader again after a fault is healed. An isolated leader's
/// failover can take 5–6 s on openraft 0.9 (DESIGN §5), TCP retransmissions after a partition back off for
/// a few seconds more, and the machine is shared.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// `FUSE_SUPER_MAGIC`: `statfs` of a live FUSE mount.
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

// ----- clients -----

/// Counters of one client (summed for the summary).
#[derive(Default, Debug, Clone)]
struct Counts {
    /// Reads that returned (recorded in the history).
    reads: u64,
    /// Reads that failed (not recorded: they observed nothing).
    reads_failed: u64,
    /// Overwrites whose `close` returned 0.
    writes_acked: u64,
    /// Overwrites that failed after the content was handed over (indeterminate).
    writes_unknown: u64,
    /// Overwrites and appends whose `open` failed (nothing was proposed).
    writes_not_sent: u64,
    /// Exclusive creates that won.
    excl_won: u64,
    /// Exclusive creates that got `EEXIST`.
    excl_exists: u64,
    /// Exclusive creates that failed otherwise (indeterminate).
    excl_unknown: u64,
    /// Appends whose `close` returned 0.
    appends_acked: u64,
    /// Appends that failed after the line was handed over (indeterminate).
    appends_unknown: u64,
    /// Errors by errno (any operation).
    errors: BTreeMap<i32, u64>,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.reads += o.reads;
        self.reads_failed += o.reads_failed;
        self.writes_acked += o.writes_acked;
        self.writes_unknown += o.writes_unknown;
        self.writes_not_sent += o.writes_not_sent;
        self.excl_won += o.excl_won;
        self.excl_exists += o.excl_exists;
        self.excl_unknown += o.excl_unknown;
        self.appends_acked += o.appends_acked;
        self.appends_unknown += o.appends_unknown;
        for (e, n) in &o.errors {
            *self.errors.entry(*e).or_default() += n;
        }
    }
}

/// What one client did.
#[derive(Default)]
struct ClientLog {
    /// The client's operations, in its own order.
    ops: Vec<Operation<String>>,
    /// Its counters.
    counts: Counts,
    /// Errors the contract does not allow here (anything but `EIO` and a dead mount), with their context.
    anomalies: Vec<String>,
    /// Reads that failed with `ESTALE` (key, invoke, complete, context): allowed only while an atomic save
    /// replaced that state twice around the open (SEMANTICS: the kernel retries an `ESTALE` open once),
    /// which the checker decides from the whole history.
    stale_reads: Vec<(String, Duration, Duration, String)>,
}

/// The errnos a call may fail with under these faults: no quorum or a commit timeout (`EIO`), and the mount
/// of a killed member (`ECONNABORTED` for the call in flight, then `ENOTCONN`).
fn allowed_errno(e: i32) -> bool {
    matches!(e, libc::EIO | libc::ENOTCONN | libc::ECONNABORTED)
}

fn dead_mount(e: i32) -> bool {
    matches!(e, libc::ENOTCONN | libc::ECONNABORTED)
}

/// A directory fd on the live FUSE mount of one member. Every call goes through it (`openat`), so a call
/// never lands in the bare mountpoint directory while a restarted member replaces its dead mount.
struct MountRoot {
    /// The mountpoint.
    mnt: PathBuf,
    /// An `O_DIRECTORY` fd on the live mount, once opened.
    fd: Option<i32>,
}

impl MountRoot {
    fn new(mnt: PathBuf) -> MountRoot {
        MountRoot { mnt, fd: None }
    }

    /// The fd, opening it if needed; `None` while the mount is dead or not (yet) FUSE.
    fn get(&mut self) -> Option<i32> {
        if self.fd.is_none() {
            let fd = open_raw(&self.mnt, libc::O_RDONLY | libc::O_DIRECTORY, 0).ok()?;
            let mut st: libc::statfs = unsafe { std::mem::zeroed() };
            let rc = unsafe { libc::fstatfs(fd, &mut st) };
            if rc != 0 || st.f_type as i64 != FUSE_SUPER_MAGIC {
                unsafe { libc::close(fd) };
                return None;
            }
            self.fd = Some(fd);
        }
        self.fd
    }

    /// Forgets a dead mount's fd.
    fn reset(&mut self) {
        if let Some(fd) = self.fd.take() {
            unsafe { libc::close(fd) };
        }
    }
}

impl Drop for MountRoot {
    fn drop(&mut self) {
        self.reset();
    }
}

fn openat(dir: i32, name: &str, flags: i32) -> io::Result<i32> {
    let c = std::ffi::CString::new(name).unwrap();
    check(unsafe { libc::openat(dir, c.as_ptr(), flags | libc::O_CLOEXEC, 0o644 as libc::c_uint) })
}

fn renameat(dir: i32, from: &str, to: &str) -> io::Result<()> {
    let (f, t) = (std::ffi::CString::new(from).unwrap(), std::ffi::CString::new(to).unwrap());
    check(unsafe { libc::renameat(dir, f.as_ptr(), dir, t.as_ptr()) }).map(drop)
}

/// The note that marks a register write made by an atomic save (a temp file renamed over it).
const ATOMIC_SAVE: &str = "atomic save";

fn read_fd(fd: i32) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
}

fn err_no(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

/// The lock state of epoch `n` (a fresh name every second: many clients race to create it).
fn lock_name(n: u64) -> String {
    format!("lock/{n:04}")
}

/// Everything a client thread needs.
struct ClientCtx {
    /// The client's number (unique across members).
    id: usize,
    /// The member whose mount it uses.
    member: usize,
    /// The registers this client overwrites.
    writes: Vec<&'static str>,
    /// The registers this client reads.
    reads: Vec<&'static str>,
    /// That member's mountpoint.
    mnt: PathBuf,
    /// Time zero of the history.
    origin: Instant,
    /// Set when the client must stop.
    stop: Arc<AtomicBool>,
    /// Seed of its choices.
    seed: u64,
}

fn run_client(ctx: ClientCtx) -> ClientLog {
    let mut rng = StdRng::seed_from_u64(ctx.seed);
    let mut root = MountRoot::new(ctx.mnt.clone());
    let mut log = ClientLog::default();
    let note = format!("member {}", ctx.member);
    let mut seq = 0u64;
    let now = |o: Instant| o.elapsed();
    while !ctx.stop.load(Ordering::SeqCst) {
        let Some(dir) = root.get() else {
            thread::sleep(Duration::from_millis(20));
            continue;
        };
        let epoch = ctx.origin.elapsed().as_secs();
        let roll = rng.gen_range(0..100);
        let failed = |log: &mut ClientLog, what: &str, key: &str, e: &io::Error| -> bool {
            let errno = err_no(e);
            *log.counts.errors.entry(errno).or_default() += 1;
            if !allowed_errno(errno) {
                log.anomalies.push(format!(
                    "client {} ({note}) at {:.3} s: {what} {key}: {}",
                    ctx.id,
                    ctx.origin.elapsed().as_secs_f64(),
                    errno_name(errno)
                ));
            }
            dead_mount(errno)
        };
        if roll < 12 {
            // Save a register atomically: write a temp file of its own, then rename it over the
            // register. The rename is the register's write; an overwrite racing it on any mount
            // either lands on the state its handle is bound to, or fails (issue 19).
            let Some(&key) = ctx.writes.choose(&mut rng) else { continue };
            seq += 1;
            let value = format!("c{:02}-{seq:06}\n", ctx.id);
            let tmp = format!("{key}.tmp-c{:02}-{seq:06}", ctx.id);
            let saved = openat(dir, &tmp, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL).and_then(|fd| {
                if let Err(e) = write_all_raw(fd, value.as_bytes()) {
                    unsafe { libc::close(fd) };
                    return Err(e);
                }
                close_raw(fd)
            });
            if let Err(e) = saved {
                // The register was not touched: its write was never sent.
                log.counts.writes_not_sent += 1;
                if failed(&mut log, "write a temp file", &tmp, &e) {
                    root.reset();
                }
                continue;
            }
            let invoke = now(ctx.origin);
            let result = renameat(dir, &tmp, key);
            let complete = now(ctx.origin);
            let (outcome, op_note) = match &result {
                Ok(()) => {
                    log.counts.writes_acked += 1;
                    (WriteOutcome::Acked, format!("{note}, {ATOMIC_SAVE}"))
                }
                Err(e) => {
                    log.counts.writes_unknown += 1;
                    let msg = format!("{note}, {ATOMIC_SAVE}, rename: {}", errno_name(err_no(e)));
                    if failed(&mut log, "rename", key, e) {
                        root.reset();
                    }
                    (WriteOutcome::Unknown, msg)
                }
            };
            log.ops.push(Operation {
                key: key.to_string(),
                op: Op::Write { value, outcome },
                invoke,
                complete,
                client: ctx.id,
                note: op_note,
            });
        } else if roll < 45 {
            // Overwrite a register with a value no one else writes.
            let Some(&key) = ctx.writes.choose(&mut rng) else { continue };
            seq += 1;
            let value = format!("c{:02}-{seq:06}\n", ctx.id);
            let invoke = now(ctx.origin);
            let fd = match openat(dir, key, libc::O_WRONLY | libc::O_TRUNC) {
                Ok(fd) => fd,
                Err(e) => {
                    // Nothing was proposed: an O_TRUNC open commits nothing by itself (DESIGN §1.2).
                    log.counts.writes_not_sent += 1;
                    if failed(&mut log, "open for writing", key, &e) {
                        root.reset();
                    }
                    continue;
                }
            };
            let result = write_all_raw(fd, value.as_bytes()).map_err(|e| {
                unsafe { libc::close(fd) };
                ("write", e)
            });
            let result = result.and_then(|()| close_raw(fd).map_err(|e| ("close", e)));
            let complete = now(ctx.origin);
            let (outcome, op_note) = match &result {
                Ok(()) => {
                    log.counts.writes_acked += 1;
                    (WriteOutcome::Acked, note.clone())
                }
                Err((step, e)) => {
                    log.counts.writes_unknown += 1;
                    let msg = format!("{note}, {step}: {}", errno_name(err_no(e)));
                    if failed(&mut log, step, key, e) {
                        root.reset();
                    }
                    (WriteOutcome::Unknown, msg)
                }
            };
            log.ops.push(Operation {
                key: key.to_string(),
                op: Op::Write { value, outcome },
                invoke,
                complete,
                client: ctx.id,
                note: op_note,
            });
        } else if roll < 90 {
            // Read a register, or a recent lock.
            let key = if roll < 82 {
                let Some(&key) = ctx.reads.choose(&mut rng) else { continue };
                key.to_string()
            } else if roll < 86 {
                lock_name(epoch.saturating_sub(rng.gen_range(0..2)))
            } else {
                APPEND_LOG.to_string()
            };
            let invoke = now(ctx.origin);
            let saw = match openat(dir, &key, libc::O_RDONLY) {
                Ok(fd) => {
                    let r = read_fd(fd);
                    unsafe { libc::close(fd) };
                    r.map(Some)
                }
                Err(e) if err_no(&e) == libc::ENOENT => Ok(None),
                Err(e) => Err(e),
            };
            let complete = now(ctx.origin);
            match saw {
                Ok(saw) => {
                    log.counts.reads += 1;
                    log.ops.push(Operation {
                        key,
                        op: Op::Read { saw: saw.map(|b| String::from_utf8_lossy(&b).into_owned()) },
                        invoke,
                        complete,
                        client: ctx.id,
                        note: note.clone(),
                    });
                }
                Err(e) if err_no(&e) == libc::ESTALE => {
                    log.counts.reads_failed += 1;
                    *log.counts.errors.entry(libc::ESTALE).or_default() += 1;
                    let context = format!(
                        "client {} ({note}) at {:.3} s: read {key}: {}",
                        ctx.id,
                        ctx.origin.elapsed().as_secs_f64(),
                        errno_name(libc::ESTALE)
                    );
                    log.stale_reads.push((key, invoke, complete, context));
                }
                Err(e) => {
                    log.counts.reads_failed += 1;
                    if failed(&mut log, "read", &key, &e) {
                        root.reset();
                    }
                }
            }
        } else if roll < 95 {
            // Append a line no one else appends.
            seq += 1;
            let line = format!("a{:02}-{seq:06}\n", ctx.id);
            let invoke = now(ctx.origin);
            let fd = match openat(dir, APPEND_LOG, libc::O_WRONLY | libc::O_APPEND) {
                Ok(fd) => fd,
                Err(e) => {
                    log.counts.writes_not_sent += 1;
                    if failed(&mut log, "open for appending", APPEND_LOG, &e) {
                        root.reset();
                    }
                    continue;
                }
            };
            let result = write_all_raw(fd, line.as_bytes()).map_err(|e| {
                unsafe { libc::close(fd) };
                ("write", e)
            });
            let result = result.and_then(|()| close_raw(fd).map_err(|e| ("close", e)));
            let complete = now(ctx.origin);
            let (outcome, op_note) = match &result {
                Ok(()) => {
                    log.counts.appends_acked += 1;
                    (WriteOutcome::Acked, note.clone())
                }
                Err((step, e)) => {
                    log.counts.appends_unknown += 1;
                    let msg = format!("{note}, {step}: {}", errno_name(err_no(e)));
                    if failed(&mut log, step, APPEND_LOG, e) {
                        root.reset();
                    }
                    (WriteOutcome::Unknown, msg)
                }
            };
            log.ops.push(Operation {
                key: APPEND_LOG.to_string(),
                op: Op::Write { value: line, outcome },
                invoke,
                complete,
                client: ctx.id,
                note: op_note,
            });
        } else {
            // Race the other clients to create this second's lock; the winner writes its name into it.
            let key = lock_name(epoch);
            let invoke = now(ctx.origin);
            let opened = openat(dir, &key, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL);
            let complete = now(ctx.origin);
            let (outcome, op_note) = match &opened {
                Ok(_) => {
                    log.counts.excl_won += 1;
                    (ExclOutcome::Won, note.clone())
                }
                Err(e) if err_no(e) == libc::EEXIST => {
                    log.counts.excl_exists += 1;
                    (ExclOutcome::Exists, note.clone())
                }
                Err(e) => {
                    log.counts.excl_unknown += 1;
                    let msg = format!("{note}, open: {}", errno_name(err_no(e)));
                    if failed(&mut log, "exclusive create", &key, e) {
                        root.reset();
                    }
                    (ExclOutcome::Unknown, msg)
                }
            };
            log.ops.push(Operation {
                key: key.clone(),
                op: Op::CreateExcl { value: String::new(), outcome },
                invoke,
                complete,
                client: ctx.id,
                note: op_note,
            });
            if let Ok(fd) = opened {
                seq += 1;
                let value = format!("owner c{:02}-{seq:06}\n", ctx.id);
                let invoke = now(ctx.origin);
                let result = write_all_raw(fd, value.as_bytes()).map_err(|e| {
                    unsafe { libc::close(fd) };
                    ("write", e)
                });
                let result = result.and_then(|()| close_raw(fd).map_err(|e| ("close", e)));
                let complete = now(ctx.origin);
                let (outcome, op_note) = match &result {
                    Ok(()) => {
                        log.counts.writes_acked += 1;
                        (WriteOutcome::Acked, note.clone())
                    }
                    Err((step, e)) => {
                        log.counts.writes_unknown += 1;
                        let msg = format!("{note}, {step}: {}", errno_name(err_no(e)));
                        if failed(&mut log, step, &key, e) {
                            root.reset();
                        }
                        (WriteOutcome::Unknown, msg)
                    }
                };
                log.ops.push(Operation {
                    key,
                    op: Op::Write { value, outcome },
                    invoke,
                    complete,
                    client: ctx.id,
                    note: op_note,
                });
            }
        }
    }
    log
}

/// Which registers each member's clients write and read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// Every client writes and reads every register (the default: the contract allows no exception).
    Mixed,
    /// Register `k` is written only through member `k` and read only through the other two, so no read
    /// races an `O_TRUNC` open of the same file on the same mount. For hunting other bugs while the
    /// same-mount empty read (`a_reader_never_sees_an_empty_file_...`) is open; every guarantee checked
    /// still holds in full, across nodes.
    Split,
}

impl Layout {
    fn from_env() -> Layout {
        match std::env::var("LIGHTCHAIN_ROBUSTNESS_LAYOUT").as_deref() {
            Err(_) | Ok("mixed") => Layout::Mixed,
            Ok("split") => Layout::Split,
            Ok(other) => panic!("LIGHTCHAIN_ROBUSTNESS_LAYOUT={other:?}: expected mixed or split"),
        }
    }

    /// (written, read) registers of member `m`'s clients.
    fn registers(self, m: usize) -> (Vec<&'static str>, Vec<&'static str>) {
        match self {
            Layout::Mixed => (REGISTERS.to_vec(), REGISTERS.to_vec()),
            Layout::Split => {
                let mine =
                    REGISTERS.iter().enumerate().filter(|(k, _)| k % 3 == m).map(|(_, r)| *r).collect();
                let others =
                    REGISTERS.iter().enumerate().filter(|(k, _)| k % 3 != m).map(|(_, r)| *r).collect();
                (mine, others)
            }
        }
    }
}

// ----- faults -----

/// Which member a fault hits, chosen when it is injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Leader,
    Follower,
}

/// One kind of fault of the schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// `kill -9`, then restart on the same data directory and mountpoint.
    Kill(Target),
    /// `SIGSTOP`, then `SIGCONT`.
    Pause(Target),
    /// Cut from both other members, both ways.
    Isolate(Target),
    /// The leader's requests to the followers are dropped; theirs to it pass.
    CutFromLeader,
    /// The followers' requests to the leader are dropped (forwards, read indexes, votes); its pass.
    CutToLeader,
    /// Every member cut from every other: no quorum anywhere.
    SplitAll,
}

const ALL_FAULTS: [Fault; 9] = [
    Fault::Kill(Target::Leader),
    Fault::Kill(Target::Follower),
    Fault::Pause(Target::Leader),
    Fault::Pause(Target::Follower),
    Fault::Isolate(Target::Leader),
    Fault::Isolate(Target::Follower),
    Fault::CutFromLeader,
    Fault::CutToLeader,
    Fault::SplitAll,
];

/// One line of the fault timeline.
struct Event {
    /// When, since the history's origin.
    at: Duration,
    /// What happened.
    what: String,
}

/// The fault timeline, shared with failure reports.
#[derive(Default)]
struct Timeline(Vec<Event>);

impl Timeline {
    fn note(&mut self, origin: Instant, what: String) {
        let at = origin.elapsed();
        eprintln!("robustness {:>8.3} s: {what}", at.as_secs_f64());
        self.0.push(Event { at, what });
    }
    fn text(&self) -> String {
        self.0.iter().map(|e| format!("{:>8.3} s  {}\n", e.at.as_secs_f64(), e.what)).collect()
    }
}

/// Member `i`'s status, or `None` if it cannot be read within 5 s (a paused or wedged member).
fn try_status(c: &Cluster, i: usize) -> Option<Value> {
    let p = c.path(i, ".lightchain/status");
    let bytes = with_timeout(Duration::from_secs(5), move || fs::read(&p)).and_then(Result::ok)?;
    serde_json::from_slice(&bytes).ok()
}

/// Polls until every member is ready and all name the same leader; returns its index, or the last
/// statuses seen.
fn wait_recovered(c: &Cluster, timeout: Duration) -> Result<usize, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let statuses: Vec<Option<Value>> = c.all().iter().map(|&i| try_status(c, i)).collect();
        let leaders: Vec<Option<u64>> = statuses
            .iter()
            .map(|s| {
                s.as_ref().filter(|s| s["ready"] == Value::Bool(true)).and_then(|s| s["leader"].as_u64())
            })
            .collect();
        if let Some(Some(l)) = leaders.first() {
            if leaders.iter().all(|x| *x == Some(*l)) {
                if let Some(idx) = c.ids.iter().position(|x| x == l) {
                    return Ok(idx);
                }
            }
        }
        if Instant::now() > deadline {
            return Err(statuses
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    format!("member {i}: {}", s.as_ref().map_or("(unreadable)".into(), |v| v.to_string()))
                })
                .collect::<Vec<_>>()
                .join("\n"));
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Whether the members other than `old` agree on a leader other than `old` (the partition took effect).
fn others_elected(c: &Cluster, old: usize) -> Option<usize> {
    let others: Vec<usize> = c.all().into_iter().filter(|i| *i != old).collect();
    let leaders: Vec<Option<u64>> =
        others.iter().map(|&i| try_status(c, i).and_then(|s| s["leader"].as_u64())).collect();
    match leaders.first() {
        Some(Some(l)) if leaders.iter().all(|x| *x == Some(*l)) && c.ids[old] != *l => {
            c.ids.iter().position(|x| x == l)
        }
        _ => None,
    }
}

/// Sleeps `hold`, noting whether (and how soon) the other members elected a new leader meanwhile.
fn hold_watching(c: &Cluster, hold: Duration, old: Option<usize>) -> Option<(usize, Duration)> {
    let start = Instant::now();
    let until = start + hold;
    let mut elected = None;
    while Instant::now() < until {
        if let (Some(o), None) = (old, elected) {
            elected = others_elected(c, o).map(|m| (m, start.elapsed()));
        }
        thread::sleep(Duration::from_millis(200).min(until.saturating_duration_since(Instant::now())));
    }
    elected
}

/// Every thread's user-space stack of `pid` via `gdb -batch`, if gdb is installed (else a note).
fn gdb_stacks(pid: i32) -> String {
    let mut cmd = std::process::Command::new("gdb");
    cmd.args([
        "-p",
        &pid.to_string(),
        "-batch",
        "-ex",
        "set pagination off",
        "-ex",
        "thread apply all bt 30",
    ]);
    cmd.stdin(std::process::Stdio::null());
    match cmd.output() {
        Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
        Err(e) => format!("(no gdb: {e}; install gdb for user-space stacks)"),
    }
}

// ----- checks of the append-only log -----

/// Checks the appends and whole reads of [`APPEND_LOG`] against its final content (the same on every
/// member): every line was appended by a client, none twice (exactly-once), every acknowledged one is there,
/// in an order that agrees with real time; every read is a prefix of the final content that holds every
/// append acknowledged before the read began, nothing invoked after it returned, and no less than a read
/// that returned before it began.
fn check_appends(ops: &[Operation<String>], final_content: Option<&str>) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(fin) = final_content else {
        return vec![format!("{APPEND_LOG}: no final content")];
    };
    let lines: Vec<&str> = fin.split_inclusive('\n').collect();
    let appends: HashMap<&str, &Operation<String>> = ops
        .iter()
        .filter_map(|o| match &o.op {
            Op::Write { value, .. } => Some((value.as_str(), o)),
            _ => None,
        })
        .collect();
    let mut position: HashMap<&str, usize> = HashMap::new();
    for (p, l) in lines.iter().enumerate() {
        if position.contains_key(l) {
            problems.push(format!("{APPEND_LOG}: the line {l:?} was appended twice (exactly-once broken)"));
        } else {
            position.insert(l, p);
        }
        if !appends.contains_key(l) {
            problems.push(format!("{APPEND_LOG}: the line {l:?} was appended by no client"));
        }
    }
    let acked = |o: &Operation<String>| matches!(o.op, Op::Write { outcome: WriteOutcome::Acked, .. });
    for (l, o) in &appends {
        if acked(o) && !position.contains_key(l) {
            problems.push(format!(
                "{APPEND_LOG}: the acknowledged append {l:?} (client {}, {:.3}–{:.3} s) is missing",
                o.client,
                o.invoke.as_secs_f64(),
                o.complete.as_secs_f64()
            ));
        }
    }
    // Real-time order of appends (by first occurrence: a duplicate is reported above).
    let mut latest: Option<(Duration, &str)> = None;
    for (p, l) in lines.iter().enumerate() {
        let Some(o) = appends.get(l) else { continue };
        if position.get(l) != Some(&p) {
            continue;
        }
        if let Some((inv, earlier)) = latest {
            if acked(o) && inv > o.complete {
                problems.push(format!(
                    "{APPEND_LOG}: {earlier:?} (invoked at {:.3} s) precedes {l:?}, acknowledged at {:.3} s",
                    inv.as_secs_f64(),
                    o.complete.as_secs_f64()
                ));
            }
        }
        if latest.is_none_or(|(inv, _)| o.invoke > inv) {
            latest = Some((o.invoke, l));
        }
    }
    // Reads: prefixes, fresh enough, never from the future, never shrinking.
    let mut reads: Vec<(&Operation<String>, usize)> = Vec::new();
    for o in ops {
        let Op::Read { saw } = &o.op else { continue };
        let saw = saw.as_deref().unwrap_or("");
        if !fin.starts_with(saw) || !(saw.is_empty() || saw.ends_with('\n')) {
            problems.push(format!(
                "{APPEND_LOG}: a read (client {}, {:.3}–{:.3} s) of {} bytes is not a prefix of the final content",
                o.client,
                o.invoke.as_secs_f64(),
                o.complete.as_secs_f64(),
                saw.len()
            ));
            continue;
        }
        reads.push((o, saw.split_inclusive('\n').count()));
    }
    for &(r, n) in &reads {
        let required = appends
            .iter()
            .filter(|(_, a)| acked(a) && a.complete < r.invoke)
            .filter_map(|(l, _)| position.get(l).map(|p| p + 1))
            .max()
            .unwrap_or(0);
        if n < required {
            problems.push(format!(
                "{APPEND_LOG}: a read (client {}, {:.3}–{:.3} s) saw {n} lines, but {required} were acknowledged \
                 before it began (stale read)",
                r.client,
                r.invoke.as_secs_f64(),
                r.complete.as_secs_f64()
            ));
        }
        if let Some(l) = lines[..n].iter().find(|l| appends.get(*l).is_some_and(|a| a.invoke > r.complete)) {
            problems.push(format!(
                "{APPEND_LOG}: a read (client {}, returned at {:.3} s) saw {l:?}, appended only later",
                r.client,
                r.complete.as_secs_f64()
            ));
        }
    }
    let mut by_complete: Vec<&(&Operation<String>, usize)> = reads.iter().collect();
    by_complete.sort_by_key(|(r, _)| r.complete);
    let mut by_invoke: Vec<&(&Operation<String>, usize)> = reads.iter().collect();
    by_invoke.sort_by_key(|(r, _)| r.invoke);
    let (mut i, mut most): (usize, Option<(usize, &Operation<String>)>) = (0, None);
    for &&(r, n) in &by_invoke {
        while i < by_complete.len() && by_complete[i].0.complete < r.invoke {
            let (earlier, m) = *by_complete[i];
            if most.is_none_or(|(k, _)| m > k) {
                most = Some((m, earlier));
            }
            i += 1;
        }
        if let Some((m, earlier)) = most {
            if n < m {
                problems.push(format!(
                    "{APPEND_LOG}: a read (client {}, invoked at {:.3} s) saw {n} lines after a read (client {}, \
                     returned at {:.3} s) had seen {m}",
                    r.client,
                    r.invoke.as_secs_f64(),
                    earlier.client,
                    earlier.complete.as_secs_f64()
                ));
            }
        }
    }
    problems.truncate(40);
    problems
}

// ----- checks on the chain -----

/// Per state, the contents it was given by `put` transactions with outcome ok and by renames of a
/// state that held a put's content over it, in chain order; and per lock, how many exclusive creates won.
fn chain_writes(blocks: &[Value]) -> (HashMap<String, Vec<String>>, HashMap<String, usize>) {
    let mut puts: HashMap<String, Vec<String>> = HashMap::new();
    let mut excl: HashMap<String, usize> = HashMap::new();
    // What each state holds, as far as puts and renames tell.
    let mut holds: HashMap<String, String> = HashMap::new();
    for b in blocks {
        for tx in b["txs"].as_array().into_iter().flatten() {
            if tx["outcome"] != Value::String("ok".into()) {
                continue;
            }
            if let Some(p) = tx["op"].get("put") {
                let id = p["id"].as_str().unwrap_or_default().to_string();
                let content = match &p["content"] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                holds.insert(id.clone(), content.clone());
                puts.entry(id).or_default().push(content);
            }
            if let Some(r) = tx["op"].get("rename") {
                let (from, to) =
                    (r["from"].as_str().unwrap_or_default(), r["to"].as_str().unwrap_or_default());
                match holds.remove(from) {
                    Some(content) => {
                        holds.insert(to.to_string(), content.clone());
                        puts.entry(to.to_string()).or_default().push(content);
                    }
                    None => {
                        holds.remove(to);
                    }
                }
            }
            if let Some(cr) = tx["op"].get("create") {
                if cr["exclusive"].as_bool() == Some(true) {
                    *excl.entry(cr["id"].as_str().unwrap_or_default().to_string()).or_default() += 1;
                }
            }
        }
    }
    (puts, excl)
}

/// Where the chain holds a `put` of `content` to `key`: "height H: request {…} outcome".
fn txs_holding(blocks: &[Value], key: &str, content: &str) -> Vec<String> {
    let mut found = Vec::new();
    for b in blocks {
        for tx in b["txs"].as_array().into_iter().flatten() {
            let put = &tx["op"]["put"];
            if put["id"] == Value::String(key.into()) && put["content"] == Value::String(content.into()) {
                found.push(format!("height {}: request {} {}", b["height"], tx["request"], tx["outcome"]));
            }
        }
    }
    found
}

/// The chain-side checks (see the module header); returns the problems found.
fn check_chain(
    history: &[Operation<String>],
    blocks: &[Value],
    finals: &HashMap<String, Option<String>>,
) -> Vec<String> {
    let (puts, excl) = chain_writes(blocks);
    let mut problems = Vec::new();
    let mut writes: HashMap<&str, HashMap<&str, &Operation<String>>> = HashMap::new();
    for o in history {
        if let Op::Write { value, .. } = &o.op {
            writes.entry(o.key.as_str()).or_default().insert(value.as_str(), o);
        }
    }
    for (key, by_value) in &writes {
        let chain: &[String] = puts.get(*key).map(Vec::as_slice).unwrap_or(&[]);
        let mut position: HashMap<&str, usize> = HashMap::new();
        for (p, v) in chain.iter().enumerate() {
            // (Empty versions may legitimately be committed more than once; see the test.)
            if !position.contains_key(v.as_str()) {
                position.insert(v.as_str(), p);
            } else if !v.is_empty() {
                problems.push(format!(
                    "{key}: the write {v:?} was applied twice (exactly-once broken): {}",
                    txs_holding(blocks, key, v).join("; ")
                ));
            }
            if !by_value.contains_key(v.as_str()) {
                problems.push(format!("{key}: the chain holds {v:?}, which no client wrote"));
            }
        }
        for (v, o) in by_value {
            // An overwrite whose state an atomic save replaced after it was opened went nowhere, as
            // it would on ext4 (DESIGN §1.3): allowed when such a save ran while it did.
            let replaced_while_open = !o.note.contains(ATOMIC_SAVE)
                && by_value.values().any(|save| {
                    save.note.contains(ATOMIC_SAVE) && save.invoke < o.complete && save.complete > o.invoke
                });
            if matches!(o.op, Op::Write { outcome: WriteOutcome::Acked, .. })
                && !position.contains_key(v)
                && !replaced_while_open
            {
                problems.push(format!(
                    "{key}: the acknowledged write {v:?} (client {}, {:.3}–{:.3} s, {}) is not in the chain",
                    o.client,
                    o.invoke.as_secs_f64(),
                    o.complete.as_secs_f64(),
                    o.note
                ));
            }
        }
        // Real-time order: every write the chain applies before an acknowledged write must have been invoked
        // before that write returned. (By first application: a duplicate is reported above.)
        let mut latest_invoke: Option<(Duration, &str)> = None;
        for (p, v) in chain.iter().enumerate() {
            let Some(o) = by_value.get(v.as_str()) else { continue };
            if position.get(v.as_str()) != Some(&p) {
                continue;
            }
            if matches!(o.op, Op::Write { outcome: WriteOutcome::Acked, .. }) {
                if let Some((inv, earlier)) = latest_invoke {
                    if inv > o.complete {
                        problems.push(format!(
                            "{key}: the chain applies {earlier:?} (invoked at {:.3} s) before {v:?}, which was \
                             acknowledged earlier, at {:.3} s",
                            inv.as_secs_f64(),
                            o.complete.as_secs_f64()
                        ));
                    }
                }
            }
            if latest_invoke.is_none_or(|(inv, _)| o.invoke > inv) {
                latest_invoke = Some((o.invoke, v.as_str()));
            }
        }
        if let Some(fin) = finals.get(*key) {
            let last = chain.last();
            if fin.as_ref() != last && !(fin.as_deref() == Some("") && last.is_none()) {
                problems.push(format!(
                    "{key}: the mounts finally show {fin:?} but the chain's last write is {last:?}"
                ));
            }
        }
    }
    for (lock, n) in excl {
        if n > 1 {
            problems.push(format!("{lock}: {n} exclusive creates succeeded in the chain"));
        }
    }
    problems
}

/// The checker's verdicts: one line per register, the locks in one line.
fn summarize(report: &linearizability::Report) -> String {
    let (locks, regs): (Vec<_>, Vec<_>) = report.keys.iter().partition(|k| k.key.starts_with("lock/"));
    let mut out: Vec<String> = regs
        .iter()
        .map(|k| {
            format!(
                "    {}: {} ops ({} unobserved indeterminate writes dropped), {} configurations explored: {}",
                k.key,
                k.operations,
                k.dropped_unobserved,
                k.explored,
                if k.verdict == linearizability::Verdict::Linearizable {
                    "linearizable"
                } else {
                    "NOT LINEARIZABLE"
                }
            )
        })
        .collect();
    let bad = locks.iter().filter(|k| k.verdict != linearizability::Verdict::Linearizable).count();
    out.push(format!(
        "    {} lock states, {} ops: {}",
        locks.len(),
        locks.iter().map(|k| k.operations).sum::<usize>(),
        if bad == 0 { "all linearizable".to_string() } else { format!("{bad} NOT LINEARIZABLE") }
    ));
    out.join("\n")
}

// ----- the test -----

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

/// Stops the clients when dropped (also while the test panics, so no thread keeps hammering the mounts).
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn write_history(path: &Path, history: &[Operation<String>]) {
    let mut sorted: Vec<&Operation<String>> = history.iter().collect();
    sorted.sort_by_key(|o| o.invoke);
    let mut text = String::new();
    for o in sorted {
        let _ = writeln!(
            text,
            "{:>10.3} {:>10.3} client {:>3} {:<10} {:?} ({})",
            o.invoke.as_secs_f64() * 1000.0,
            o.complete.as_secs_f64() * 1000.0,
            o.client,
            o.key,
            o.op,
            o.note
        );
    }
    let _ = fs::write(path, text);
}

#[test]
fn under_kills_pauses_and_partitions_the_history_is_linearizable_and_the_members_agree() {
    let secs = env_u64("LIGHTCHAIN_ROBUSTNESS_SECS").unwrap_or(DEFAULT_SECS);
    let layout = Layout::from_env();
    let snapshot_every = env_u64("LIGHTCHAIN_ROBUSTNESS_SNAPSHOT_EVERY").unwrap_or(DEFAULT_SNAPSHOT_EVERY);
    let seed = env_u64("LIGHTCHAIN_ROBUSTNESS_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
            % 1_000_000
    });
    eprintln!(
        "robustness: {secs} s of faults, seed {seed}, layout {layout:?}, snapshot every {snapshot_every} entries \
         (LIGHTCHAIN_ROBUSTNESS_SECS, _SEED, _LAYOUT, _SNAPSHOT_EVERY)"
    );
    let mut rng = StdRng::seed_from_u64(seed);

    let base = faults::group_base();
    // Frequent snapshots, so that a member that was down or cut off for a few seconds catches up by
    // snapshot (the log it lacks is purged), under faults too.
    let opts = ClusterOpts {
        snapshot_every: Some(snapshot_every),
        supplementary_group_base: Some(base),
        watchdog: Some(Duration::from_secs(secs + 300)),
        ..ClusterOpts::default()
    };
    let mut c = Cluster::start(3, opts);
    let groups: Vec<u32> = (0..3).map(|i| base + i as u32).collect();
    let mut net = Partitions::new(groups.clone(), &c.addrs);
    let origin = Instant::now();
    let mut timeline = Timeline::default();
    timeline.note(origin, format!("cluster up: members {:?}, groups {groups:?}", c.addrs));

    // Every register exists before the history starts (a create would make an empty version visible);
    // these setup writes are part of the history.
    fs::create_dir(c.path(0, "reg")).expect("mkdir reg");
    fs::create_dir(c.path(0, "lock")).expect("mkdir lock");
    fs::create_dir(c.path(0, "log")).expect("mkdir log");
    put(&c.path(0, APPEND_LOG), b"");
    let mut history: Vec<Operation<String>> = Vec::new();
    for key in REGISTERS {
        let value = format!("initial {key}\n");
        let invoke = origin.elapsed();
        put(&c.path(0, key), value.as_bytes());
        history.push(Operation {
            key: key.to_string(),
            op: Op::Write { value, outcome: WriteOutcome::Acked },
            invoke,
            complete: origin.elapsed(),
            client: 999,
            note: "setup, member 0".into(),
        });
    }

    let stop = Arc::new(AtomicBool::new(false));
    let stop_guard = StopOnDrop(Arc::clone(&stop));
    let logs: Arc<Mutex<Vec<ClientLog>>> = Arc::default();
    let mut clients = Vec::new();
    for member in 0..3 {
        for k in 0..CLIENTS_PER_MEMBER {
            let (writes, reads) = layout.registers(member);
            let ctx = ClientCtx {
                id: member * CLIENTS_PER_MEMBER + k,
                member,
                writes,
                reads,
                mnt: c.node(member).mount(),
                origin,
                stop: Arc::clone(&stop),
                seed: seed.wrapping_mul(31).wrapping_add((member * 10 + k) as u64),
            };
            let logs = Arc::clone(&logs);
            clients.push(thread::spawn(move || {
                let log = run_client(ctx);
                logs.lock().unwrap().push(log);
            }));
        }
    }

    // The schedule: every kind of fault once per round, in a seeded order, until the time is up.
    let mut injected: BTreeMap<String, u32> = BTreeMap::new();
    let mut liveness: Vec<String> = Vec::new();
    let mut bag: Vec<Fault> = Vec::new();
    thread::sleep(Duration::from_millis(1500));
    while origin.elapsed() < Duration::from_secs(secs) {
        if bag.is_empty() {
            bag = ALL_FAULTS.to_vec();
            bag.shuffle(&mut rng);
        }
        let fault = bag.pop().unwrap();
        let waited = Instant::now();
        let leader = match wait_recovered(&c, RECOVERY_TIMEOUT) {
            Ok(l) => {
                if waited.elapsed() > Duration::from_secs(1) {
                    timeline
                        .note(origin, format!("recovered: leader member {l} after {:.1?}", waited.elapsed()));
                }
                l
            }
            Err(statuses) => {
                liveness.push(format!(
                    "no common leader within {RECOVERY_TIMEOUT:?} before {fault:?}:\n{statuses}"
                ));
                break;
            }
        };
        let others: Vec<usize> = c.all().into_iter().filter(|i| *i != leader).collect();
        let follower = *others.choose(&mut rng).unwrap();
        let pick = |t: Target| if t == Target::Leader { leader } else { follower };
        // Faults that depose the leader last long enough for the others to elect a new one (an isolated
        // leader's failover can take 5–6 s, DESIGN §5), so an old leader's stale view gets its chance.
        let deposes = matches!(
            fault,
            Fault::Pause(Target::Leader) | Fault::Isolate(Target::Leader) | Fault::CutFromLeader
        );
        let hold = Duration::from_millis(if deposes {
            rng.gen_range(5000..8000)
        } else {
            rng.gen_range(2000..5000)
        });
        match fault {
            Fault::Kill(t) => {
                let m = pick(t);
                timeline.note(origin, format!("kill -9 member {m} ({t:?})"));
                c.kill9(m);
                thread::sleep(hold / 2);
                timeline.note(origin, format!("restart member {m}"));
                c.restart(m);
                timeline.note(origin, format!("member {m} ready again"));
            }
            Fault::Pause(t) => {
                let m = pick(t);
                timeline.note(origin, format!("SIGSTOP member {m} ({t:?}) for {hold:?}"));
                c.node(m).signal(libc::SIGSTOP);
                let elected = hold_watching(&c, hold, (t == Target::Leader).then_some(m));
                c.node(m).signal(libc::SIGCONT);
                timeline.note(origin, format!("SIGCONT member {m} (new leader meanwhile: {elected:?})"));
            }
            Fault::Isolate(t) => {
                let m = pick(t);
                net.isolate(m);
                timeline.note(origin, format!("isolate member {m} ({t:?}) for {hold:?}: {}", net.describe()));
                let elected = hold_watching(&c, hold, (t == Target::Leader).then_some(m));
                net.heal().expect("heal");
                timeline.note(origin, format!("healed (new leader meanwhile: {elected:?})"));
            }
            Fault::CutFromLeader | Fault::CutToLeader => {
                for j in c.all().into_iter().filter(|j| *j != leader) {
                    if fault == Fault::CutFromLeader {
                        net.cut(leader, j);
                    } else {
                        net.cut(j, leader);
                    }
                }
                timeline
                    .note(origin, format!("{fault:?} (leader {leader}) for {hold:?}: {}", net.describe()));
                let elected = hold_watching(&c, hold, Some(leader));
                net.heal().expect("heal");
                timeline.note(origin, format!("healed (new leader meanwhile: {elected:?})"));
            }
            Fault::SplitAll => {
                for i in c.all() {
                    net.isolate(i);
                }
                timeline.note(origin, format!("split all three for {hold:?}: {}", net.describe()));
                thread::sleep(hold);
                net.heal().expect("heal");
                timeline.note(origin, "healed".into());
            }
        }
        *injected.entry(format!("{fault:?}")).or_default() += 1;
        thread::sleep(Duration::from_millis(rng.gen_range(500..1500)));
    }

    // Heal, stop the clients, let the cluster settle.
    net.heal().expect("heal at the end");
    drop(stop_guard);
    // A client still inside a syscall long after every fault was healed means a member stopped answering
    // its mount: report it (with the member's thread stacks) instead of hanging until the watchdog.
    let join_wait = c.opts.commit_timeout_duration() * 4 + Duration::from_secs(20);
    let join_deadline = Instant::now() + join_wait;
    while clients.iter().any(|t| !t.is_finished()) && Instant::now() < join_deadline {
        thread::sleep(Duration::from_millis(100));
    }
    if clients.iter().any(|t| !t.is_finished()) {
        let stuck: Vec<usize> = c.all().into_iter().filter(|&i| try_status(&c, i).is_none()).collect();
        let kept = c.keep_for_debugging();
        let _ = fs::write(kept.join("timeline.txt"), timeline.text());
        let mut stacks = String::new();
        for &i in &stuck {
            if let Some(pid) = c.node(i).pid() {
                let dump = gdb_stacks(pid);
                let _ = fs::write(kept.join(format!("member{i}/stacks.txt")), &dump);
                stacks.push_str(&format!("member {i} (pid {pid}) kernel stacks:\n{}\n", thread_report(pid)));
            }
        }
        panic!(
            "robustness: client threads are still blocked in syscalls {:?} after the schedule ended (seed {seed}); \
             members whose status cannot be read: {stuck:?} (data, logs, timeline and gdb stacks kept in {})\n{stacks}\n\
             fault timeline:\n{}",
            join_wait,
            kept.display(),
            timeline.text()
        );
    }
    for t in clients {
        t.join().expect("client thread panicked");
    }
    timeline.note(origin, "clients stopped".into());
    let mut counts = Counts::default();
    let mut anomalies = Vec::new();
    let mut stale_reads = Vec::new();
    for log in logs.lock().unwrap().drain(..) {
        counts.add(&log.counts);
        anomalies.extend(log.anomalies);
        stale_reads.extend(log.stale_reads);
        history.extend(log.ops);
    }
    for (key, invoke, complete, context) in stale_reads {
        let saved_meanwhile = history.iter().any(|save| {
            save.key == key
                && save.note.contains(ATOMIC_SAVE)
                && save.invoke < complete
                && save.complete > invoke
        });
        if !saved_meanwhile {
            anomalies.push(format!("{context} (no atomic save of it ran meanwhile)"));
        }
    }
    if let Err(statuses) = wait_recovered(&c, RECOVERY_TIMEOUT) {
        liveness.push(format!("no common leader within {RECOVERY_TIMEOUT:?} after healing:\n{statuses}"));
    }

    let mut problems: Vec<String> = Vec::new();
    let mut finals: HashMap<String, Option<String>> = HashMap::new();
    if liveness.is_empty() {
        c.wait_converged(&c.all());
        c.wait_states_identical(&c.all());
        // One final read of every state through every mount, part of the history.
        let mut keys: Vec<String> =
            history.iter().map(|o| o.key.clone()).collect::<HashSet<_>>().into_iter().collect();
        keys.sort();
        for i in c.all() {
            for key in &keys {
                let invoke = origin.elapsed();
                let saw = match fs::read(c.path(i, key)) {
                    Ok(b) => Some(String::from_utf8_lossy(&b).into_owned()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                    Err(e) => {
                        problems.push(format!("final read of {key} on member {i}: {e}"));
                        continue;
                    }
                };
                let complete = origin.elapsed();
                match finals.get(key) {
                    Some(prev) if *prev != saw => problems.push(format!(
                        "{key}: members disagree after healing: {prev:?} vs {saw:?} on member {i}"
                    )),
                    _ => {
                        finals.insert(key.clone(), saw.clone());
                    }
                }
                let state = c.node(i).state_file(key).map(|b| String::from_utf8_lossy(&b).into_owned());
                if state != saw {
                    problems.push(format!(
                        "{key} on member {i}: the mount shows {saw:?}, states/ holds {state:?}"
                    ));
                }
                history.push(Operation {
                    key: key.clone(),
                    op: Op::Read { saw },
                    invoke,
                    complete,
                    client: 1000 + i,
                    note: format!("final read, member {i}"),
                });
            }
        }
    }

    // The chain: identical on every member, complete.
    let chains: Vec<Vec<Value>> =
        if liveness.is_empty() { c.all().iter().map(|&i| c.log_blocks(i)).collect() } else { Vec::new() };
    for (i, blocks) in chains.iter().enumerate() {
        assert_full_chain(blocks, &format!("member {i}"));
        let hashes = |b: &[Value]| b.iter().map(|x| x["hash"].clone()).collect::<Vec<_>>();
        if hashes(blocks) != hashes(&chains[0]) {
            problems.push(format!("member {i}'s chain differs from member 0's"));
        }
    }
    // An empty version committed by a `flush` between a client's `O_TRUNC` open and its `write` is allowed
    // (DESIGN §1.2, like a shell redirection): it happens when this process forks (iptables, a restart) and
    // the exec closes its copy of a client's open fd. Only an empty version the chain really holds may be
    // read, so it enters the history as an indeterminate write that may have happened at any time.
    let mut empty_versions = 0;
    if let Some(blocks) = chains.first() {
        let (puts, _) = chain_writes(blocks);
        for key in REGISTERS {
            if puts.get(key).is_some_and(|vs| vs.iter().any(String::is_empty)) {
                empty_versions += 1;
                history.push(Operation {
                    key: key.to_string(),
                    op: Op::Write { value: String::new(), outcome: WriteOutcome::Unknown },
                    invoke: Duration::ZERO,
                    complete: Duration::ZERO,
                    client: 2000,
                    note: "an empty version the chain holds (a flush between O_TRUNC open and write)".into(),
                });
            }
        }
    }

    // The append-only log is not a register: it has its own checks.
    let (appends, registers): (Vec<Operation<String>>, Vec<Operation<String>>) =
        history.iter().cloned().partition(|o| o.key == APPEND_LOG);
    problems.extend(check_appends(&appends, finals.get(APPEND_LOG).cloned().flatten().as_deref()));

    // The history.
    let checked_at = Instant::now();
    let report = linearizability::check(&registers);
    let check_time = checked_at.elapsed();
    if !report.is_linearizable() {
        problems.push(report.failures());
    }

    if let Some(blocks) = chains.first() {
        problems.extend(check_chain(&registers, blocks, &finals));
        timeline.note(
            origin,
            format!("chain: {} blocks, empty versions of registers: {empty_versions}", blocks.len()),
        );
        // Stop every member cleanly, then verify its data directory offline.
        for i in c.all() {
            let status = c.nodes[i].sigterm();
            if !status.success() {
                problems.push(format!("member {i} exited with {status:?} after SIGTERM"));
            }
        }
        for i in c.all() {
            let (status, out, err) = c.node(i).verify();
            if !status.success() {
                problems.push(format!(
                    "lightchain verify on member {i} exited with {:?}:\n{out}{err}",
                    status.code()
                ));
            }
        }
    }
    let rules_added = net.added_total;
    drop(net);
    let left = faults::leftover_rules(&groups);
    if !left.is_empty() {
        problems.push(format!("iptables rules left behind: {left:?}"));
    }
    problems.extend(liveness);
    if !anomalies.is_empty() {
        problems.push(format!(
            "{} calls failed with errors the contract does not allow here:\n  {}",
            anomalies.len(),
            anomalies[..anomalies.len().min(30)].join("\n  ")
        ));
    }

    let errors: Vec<String> = counts.errors.iter().map(|(e, n)| format!("{}: {n}", errno_name(*e))).collect();
    eprintln!(
        "robustness summary (seed {seed}, {:.1} s):\n  operations recorded: {} — reads {} (+{} failed), writes acknowledged {}, \
         indeterminate {}, refused before sending {}; exclusive creates won {}, EEXIST {}, unknown {}; appends \
         acknowledged {}, indeterminate {}\n  errors: {}\n  \
         faults injected: {:?}; iptables rules added: {}\n  linearizability check ({check_time:.1?}):\n{}\n  problems: {}",
        origin.elapsed().as_secs_f64(),
        history.len(),
        counts.reads,
        counts.reads_failed,
        counts.writes_acked,
        counts.writes_unknown,
        counts.writes_not_sent,
        counts.excl_won,
        counts.excl_exists,
        counts.excl_unknown,
        counts.appends_acked,
        counts.appends_unknown,
        if errors.is_empty() { "none".to_string() } else { errors.join(", ") },
        injected,
        rules_added,
        summarize(&report),
        problems.len()
    );
    if !problems.is_empty() {
        let kept = c.keep_for_debugging();
        write_history(&kept.join("history.txt"), &history);
        let _ = fs::write(kept.join("timeline.txt"), timeline.text());
        panic!(
            "robustness: {} problem(s) (seed {seed}; data, logs, history.txt and timeline.txt kept in {}):\n\n{}\n\nfault timeline:\n{}",
            problems.len(),
            kept.display(),
            problems.join("\n\n"),
            timeline.text()
        );
    }
}

// ----- a focused reproduction of what the harness found first -----

/// DESIGN §1.3 "no torn or mixed view, ever": a read sees one committed version, whole, even while another
/// process on the same mount rewrites the state with `O_TRUNC` (the kernel then sets the inode's cached size
/// to 0 and a cached read stops at that size; §5). Found by the harness as reads returning `""` on the member
/// where a concurrent overwrite was opened. A single node, one rewriting thread and one reading thread.
#[test]
fn a_reader_never_sees_an_empty_file_while_the_same_mount_rewrites_it_with_o_trunc() {
    let node = Node::start(Opts::default());
    let path = node.path("snap");
    put(&path, b"version 000000\n");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (path, stop) = (path.clone(), Arc::clone(&stop));
        thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                put(&path, format!("version {i:06}\n").as_bytes());
            }
            i
        })
    };
    let mut bad: Vec<String> = Vec::new();
    let mut reads = 0u64;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until && bad.len() < 5 {
        let fd = open_raw(&path, libc::O_RDONLY, 0).expect("open for reading");
        let seen = read_fd(fd).expect("read");
        close_raw(fd).expect("close of a read handle");
        reads += 1;
        if seen.len() != "version 000000\n".len() {
            bad.push(format!("{:?}", String::from_utf8_lossy(&seen)));
        }
    }
    stop.store(true, Ordering::SeqCst);
    let writes = writer.join().expect("writer thread");
    assert!(
        bad.is_empty(),
        "{} of {reads} reads (while {writes} O_TRUNC rewrites ran on the same mount) saw a torn or empty file: {bad:?}",
        bad.len()
    );
}

/// DESIGN §1.2/§1.6: one `close` commits a dirty handle once. Found by the harness as puts applied twice
/// (consecutive request ids, same content): when the writing process forks and execs while a write fd is open,
/// the exec closes its copy of the (close-on-exec) fd, which sends the kernel's `flush` too; if that flush is
/// still in flight when the app's own `close` flushes, both commit. With `O_APPEND` the line lands twice. Here
/// the second flush comes from closing a `dup` of the fd at the same moment, on a single node.
#[test]
fn two_flushes_of_one_dirty_append_handle_at_once_append_its_bytes_once() {
    let node = Node::start(Opts::default());
    let rounds = 20;
    let mut doubled = Vec::new();
    for round in 0..rounds {
        let path = node.path(&format!("flush{round}"));
        let fd = open_raw(&path, libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND, 0o644).expect("open");
        write_all_raw(fd, b"one line\n").expect("write");
        let dup = check(unsafe { libc::dup(fd) }).expect("dup");
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let other = {
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                barrier.wait();
                close_raw(dup)
            })
        };
        barrier.wait();
        let mine = close_raw(fd);
        let theirs = other.join().expect("closing thread");
        let content = read_string(&path);
        if content != "one line\n" || mine.is_err() || theirs.is_err() {
            doubled.push(format!(
                "round {round}: content {content:?}, close {}, close of the dup {}",
                mine.map_or_else(|e| errno_name(e.raw_os_error().unwrap_or(-1)), |_| "ok".into()),
                theirs.map_or_else(|e| errno_name(e.raw_os_error().unwrap_or(-1)), |_| "ok".into()),
            ));
        }
    }
    assert!(
        doubled.is_empty(),
        "{} of {rounds} append handles closed twice at once (an fd and its dup) did not append their line exactly \
         once with both closes returning 0:\n{}\n{}",
        doubled.len(),
        doubled.join("\n"),
        node.log_tail(30)
    );
}

/// DESIGN §1.3/§1.5: a read never returns a state older than a write acknowledged before it began, also on a
/// leader killed and started again at once. Found by the harness as stale reads on a member restarted 2.5 s
/// after it was killed as leader, before it was ready: openraft 0.10 lets a node that was leader take its
/// leadership back at start-up without an election, and its read index is then the commit index it restarted
/// with, which lags here (`raft/committed.json` and the chain are written behind the acknowledgement). The
/// stale window closes once its first append is answered, so the read here rarely lands in it; what the test
/// holds to is the rule that closes it: a restarted member serves no read before a leader of a later term
/// (one that committed an entry of its own) exists. Each round acknowledges writes on the leader, kills it at
/// once and reads on it as soon as its new mount answers.
#[test]
fn a_leader_killed_and_started_again_at_once_serves_reads_only_under_a_new_term_and_never_stale() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    let rounds = 4;
    let mut problems = Vec::new();
    for round in 0..rounds {
        let leader = c.wait_leader(&c.all());
        let killed_in = c.status(leader)["term"].as_u64().expect("status has the term");
        let path = c.path(leader, "reg");
        let mut last = String::new();
        for i in 0..40 {
            last = format!("round {round} write {i}\n");
            put(&path, last.as_bytes());
        }
        c.kill9(leader);
        c.nodes[leader].spawn();
        let until = Instant::now() + Duration::from_secs(20);
        let seen = loop {
            match fs::read_to_string(&path) {
                Ok(seen) => break seen,
                Err(_) if Instant::now() < until => thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("round {round}: no read succeeded on the restarted member within 20 s: {e}"),
            }
        };
        let read_in = c.status(leader)["term"].as_u64().expect("status has the term");
        if seen != last {
            problems.push(format!(
                "round {round}: read {seen:?} on the restarted member after {last:?} was acknowledged"
            ));
        }
        if read_in <= killed_in {
            problems.push(format!(
                "round {round}: the member killed as leader in term {killed_in} served a read in term {read_in}, \
                 without a new election"
            ));
        }
        c.nodes[leader].wait_ready();
    }
    assert!(problems.is_empty(), "{} problem(s):\n{}", problems.len(), problems.join("\n"));
}

/// The append-log checks of the harness on hand-made histories (no cluster): each kind of violation is
/// reported, and a correct history passes.
#[test]
fn the_append_log_checks_catch_duplicates_losses_and_stale_reads() {
    let op = |client: usize, op: Op<String>, a: u64, b: u64| Operation {
        key: APPEND_LOG.to_string(),
        op,
        invoke: Duration::from_millis(a),
        complete: Duration::from_millis(b),
        client,
        note: String::new(),
    };
    let append =
        |c, l: &str, a, b| op(c, Op::Write { value: l.to_string(), outcome: WriteOutcome::Acked }, a, b);
    let read = |c, s: &str, a, b| op(c, Op::Read { saw: Some(s.to_string()) }, a, b);
    let good = vec![append(0, "x\n", 0, 1), read(1, "", 0, 1), read(1, "x\n", 2, 3), append(0, "y\n", 4, 5)];
    assert_eq!(check_appends(&good, Some("x\ny\n")), Vec::<String>::new());
    let found = |h: &[Operation<String>], fin: &str, needle: &str| {
        let p = check_appends(h, Some(fin));
        assert!(p.iter().any(|x| x.contains(needle)), "expected {needle:?} in {p:?}");
    };
    found(&good, "x\ny\nx\n", "appended twice");
    found(&good, "x\n", "is missing");
    found(&good, "y\nx\n", "precedes");
    found(&good, "x\ny\nz\n", "appended by no client");
    let mut stale = good.clone();
    stale.push(read(2, "x\n", 6, 7));
    found(&stale, "x\ny\n", "stale read");
    let mut shrinking = good.clone();
    shrinking.push(read(2, "", 4, 4));
    found(&shrinking, "x\ny\n", "after a read");
    let mut future = good.clone();
    future.push(read(2, "x\ny\n", 2, 3));
    found(&future, "x\ny\n", "appended only later");
}
