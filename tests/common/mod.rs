//! Test harness: drives the real `lightchain` binary through a real FUSE mount.
//!
//! Every test gets its own [`Node`]: a fresh `TempDir` holding `data/` (the backing directory), `mnt/` (the
//! mountpoint) and `node.log` (the child's stderr, appended across restarts). The child listens on
//! `127.0.0.1:0` and reports the bound address in `.lightchain/status`, so tests run in parallel without a
//! global lock or fixed ports.
//!
//! Nothing may be left behind, even when a test panics or the filesystem hangs:
//! - `Drop` kills the child if it is alive, reaps it, and lazily unmounts (`MNT_DETACH`) every mount at
//!   the mountpoint — the FUSE mount and the read-only guard the node leaves beneath it — before the
//!   `TempDir` is removed (so `remove_dir_all` never walks into a mount);
//! - a watchdog thread SIGKILLs the child after [`WATCHDOG`]: the kernel then aborts the FUSE connection and
//!   every syscall blocked on the mount returns `ENOTCONN`, so a hung filesystem fails the test instead of
//!   hanging `cargo test`;
//! - when the test is panicking, `Drop` prints the tail of the node's log.
//!
//! Commits are observed explicitly (DESIGN §1.2): helpers check the result of `close(2)` on raw fds, never a
//! dropped `File`.

#![allow(dead_code)]

pub mod cluster;
pub mod faults;
pub mod prereq;

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_lightchain");

/// How long a node may take to become ready (election included).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// After this long the watchdog kills the node, unblocking any syscall stuck on the mount.
pub const WATCHDOG: Duration = Duration::from_secs(240);

/// Default for external commands (shell scripts, `log`, `verify`).
pub const CMD_TIMEOUT: Duration = Duration::from_secs(60);

/// Default `--max-state-size` of the binary (1 MiB).
pub const DEFAULT_MAX_STATE_SIZE: usize = 1 << 20;

/// Flags for `lightchain mount` beyond the ones every test passes (`--data`, `--listen`).
#[derive(Clone, Debug, Default)]
pub struct Opts {
    /// `--max-state-size BYTES`.
    pub max_state_size: Option<u64>,
    /// `--commit-timeout DURATION`, e.g. `"10s"`.
    pub commit_timeout: Option<String>,
    /// `--read-consistency linearizable|local`.
    pub read_consistency: Option<String>,
    /// Anything else, appended verbatim.
    pub extra: Vec<String>,
    /// A supplementary group the child runs with (its uid and gid stay root's), so that `iptables -m owner
    /// --gid-owner G --suppl-groups` can match the packets it sends (DESIGN §5, `tests/common/faults.rs`).
    pub supplementary_group: Option<u32>,
    /// How long the watchdog lets one start of the child run (default [`WATCHDOG`]); longer for soak runs.
    pub watchdog: Option<Duration>,
    /// Environment variables for the child (set after the test's own `LIGHTCHAIN_*` are removed).
    pub env: Vec<(String, String)>,
    /// Run the child without `CAP_DAC_OVERRIDE` and `CAP_DAC_READ_SEARCH` (dropped from its bounding
    /// set): file permissions then apply to it as to a user that is not root, while it can still mount.
    pub without_permission_override: bool,
}

impl Opts {
    pub fn max_state_size(mut self, bytes: u64) -> Self {
        self.max_state_size = Some(bytes);
        self
    }
    pub fn read_consistency(mut self, mode: &str) -> Self {
        self.read_consistency = Some(mode.to_string());
        self
    }
    pub fn commit_timeout(mut self, d: &str) -> Self {
        self.commit_timeout = Some(d.to_string());
        self
    }
}

/// One `lightchain mount` child with its own directories.
pub struct Node {
    /// Owns `root`; removed after `Drop::drop` has killed the child and unmounted.
    _tmp: tempfile::TempDir,
    /// Canonical path of the temp dir (so it matches `/proc/mounts`).
    root: PathBuf,
    opts: Opts,
    child: Option<Child>,
    /// Pid of the unreaped child, shared with the watchdog (cleared before reaping: no pid-reuse kills).
    pid: Arc<Mutex<Option<i32>>>,
    /// Set when the watchdog fired.
    watchdog_fired: Arc<AtomicBool>,
    /// Dropping this stops the current watchdog thread.
    watchdog_stop: Option<mpsc::Sender<()>>,
    /// The address the node actually bound (from `.lightchain/status`), reused on restart.
    listen: Option<String>,
    /// How many times the binary was spawned.
    starts: u32,
}

impl Node {
    /// Creates the directories, spawns `lightchain mount` and waits until it is ready.
    pub fn start(opts: Opts) -> Node {
        let mut node = Node::prepare(opts);
        node.spawn();
        node.wait_ready();
        node
    }

    /// Creates the directories but spawns nothing (for tests that arrange the mountpoint first).
    pub fn prepare(opts: Opts) -> Node {
        static SWEEP: std::sync::Once = std::sync::Once::new();
        SWEEP.call_once(sweep_leftovers);
        let tmp = tempfile::Builder::new().prefix(TEMP_PREFIX).tempdir().expect("create temp dir");
        let root = tmp.path().canonicalize().expect("canonicalize temp dir");
        // Who owns this directory: a later test process sweeps it if this one was killed.
        fs::write(root.join(OWNER_FILE), std::process::id().to_string()).expect("write owner pid");
        fs::create_dir(root.join("data")).expect("create data/");
        fs::create_dir(root.join("mnt")).expect("create mnt/");
        Node {
            _tmp: tmp,
            root,
            opts,
            child: None,
            pid: Arc::new(Mutex::new(None)),
            watchdog_fired: Arc::new(AtomicBool::new(false)),
            watchdog_stop: None,
            listen: None,
            starts: 0,
        }
    }

    /// The mountpoint.
    pub fn mount(&self) -> PathBuf {
        self.root.join("mnt")
    }

    /// The data directory.
    pub fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    /// `path` under the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mount().join(rel)
    }

    /// `DATA/states/<rel>`, once `states/` caught up with what the node applied (it is written
    /// behind the acknowledgement).
    pub fn state_path(&self, rel: &str) -> PathBuf {
        self.wait_written_behind();
        self.data().join("states").join(rel)
    }

    /// Content of `DATA/states/<rel>`, or `None` if it does not exist.
    pub fn state_file(&self, rel: &str) -> Option<Vec<u8>> {
        match fs::read(self.state_path(rel)) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => panic!("read {}: {e}", self.state_path(rel).display()),
        }
    }

    /// The child's stderr so far (all starts).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.root.join("node.log")
    }

    /// Fixes the address the node listens on (before `spawn`): a cluster member's node id derives from its
    /// address, so it must keep it across restarts, and its peers must know it before it starts.
    pub fn set_listen(&mut self, addr: &str) {
        self.listen = Some(addr.to_string());
    }

    /// The address the node bound, as reported by its status.
    pub fn listen_addr(&self) -> String {
        self.listen.clone().expect("node has not reported its listen address yet")
    }

    /// The pid of the running child, if any (for stack dumps of a wedged node).
    pub fn pid(&self) -> Option<i32> {
        *self.pid.lock().unwrap()
    }

    /// Whether the child is still running (does not reap it).
    /// `chain/` and `states/` are written behind the acknowledgement (DESIGN §1.4): while the
    /// node runs, waits until its status says both hold everything applied (no-op when stopped).
    pub fn wait_written_behind(&self) {
        if !self.is_running() || self.listen.is_none() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let st = self.status_json();
            let head = st["head_height"].as_u64();
            let caught_up = head.is_none()
                || (st["chain_height"].as_u64() >= head && st["mirror"]["height"].as_u64() >= head);
            if caught_up {
                return;
            }
            assert!(Instant::now() < deadline, "chain/ and states/ did not catch up in 20 s: {st}");
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn is_running(&self) -> bool {
        match *self.pid.lock().unwrap() {
            Some(pid) => !exited_nowait(pid),
            None => false,
        }
    }

    /// Spawns `lightchain mount` with the node's options (does not wait for readiness).
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "spawn: the previous child was not reaped");
        self.starts += 1;
        let mut log =
            OpenOptions::new().create(true).append(true).open(self.log_path()).expect("open node.log");
        use std::io::Write;
        writeln!(log, "===== test harness: start #{} =====", self.starts).unwrap();

        let listen = self.listen.clone().unwrap_or_else(|| "127.0.0.1:0".to_string());
        let mut cmd = Command::new(BIN);
        cmd.arg("mount").arg(self.mount()).arg("--data").arg(self.data()).arg("--listen").arg(&listen);
        if let Some(size) = self.opts.max_state_size {
            cmd.arg("--max-state-size").arg(size.to_string());
        }
        if let Some(t) = &self.opts.commit_timeout {
            cmd.arg("--commit-timeout").arg(t);
        }
        if let Some(mode) = &self.opts.read_consistency {
            cmd.arg("--read-consistency").arg(mode);
        }
        cmd.args(&self.opts.extra);
        clean_env(&mut cmd);
        cmd.envs(self.opts.env.iter().map(|(k, v)| (k, v)));
        // If the test process dies without running `Drop` (e.g. killed by a timeout), take the node with it.
        // (The signal fires when the spawning thread exits; nodes live and die within one test thread.)
        let group = self.opts.supplementary_group;
        let no_override = self.opts.without_permission_override;
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if no_override {
                    // CAP_DAC_OVERRIDE (1) and CAP_DAC_READ_SEARCH (2): gone for good at exec.
                    for cap in [1, 2] {
                        if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
                            return Err(io::Error::last_os_error());
                        }
                    }
                }
                // Same effect as `setpriv --groups G`: replaces the supplementary groups.
                if let Some(g) = group {
                    let groups = [g as libc::gid_t];
                    if libc::setgroups(1, groups.as_ptr()) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        cmd.env("RUST_BACKTRACE", "1")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {BIN}: {e}"));
        *self.pid.lock().unwrap() = Some(child.id() as i32);
        self.child = Some(child);
        self.start_watchdog();
    }

    fn start_watchdog(&mut self) {
        let (tx, rx) = mpsc::channel::<()>();
        self.watchdog_stop = Some(tx);
        let pid = Arc::clone(&self.pid);
        let fired = Arc::clone(&self.watchdog_fired);
        let mount = self.mount();
        let limit = self.opts.watchdog.unwrap_or(WATCHDOG);
        thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                let Some(p) = *pid.lock().unwrap() else { return };
                fired.store(true, Ordering::SeqCst);
                eprintln!("test harness watchdog: node pid {p} still running after {limit:?}, killing it");
                unsafe { libc::kill(p, libc::SIGKILL) };
                // If it cannot die (a thread stuck on its own mount), abort the FUSE connection too.
                if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(KILL_GRACE) {
                    if pid.lock().unwrap().is_some() {
                        eprintln!(
                            "test harness watchdog: pid {p} survived SIGKILL; aborting its FUSE connection"
                        );
                        force_unmount(&mount);
                    }
                }
            }
        });
    }

    /// Polls `.lightchain/status` until it parses with `"ready": true`, asserting the child stays alive.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let status_path = self.path(".lightchain/status");
        let mut last = String::from("(no attempt yet)");
        loop {
            if !self.is_running() {
                let status = self.reap();
                panic!(
                    "lightchain exited with {status:?} before becoming ready (last status read: {last})\n{}",
                    self.log_tail(200)
                );
            }
            let p = status_path.clone();
            match with_timeout(Duration::from_secs(10), move || fs::read(&p)) {
                None => last = "read of .lightchain/status hung for 10 s".into(),
                Some(Err(e)) => last = format!("read error: {e}"),
                Some(Ok(bytes)) => match serde_json::from_slice::<Value>(&bytes) {
                    Err(e) => last = format!("unparseable JSON ({e}): {}", String::from_utf8_lossy(&bytes)),
                    Ok(v) if v["ready"] == Value::Bool(true) => {
                        let listen = v["listen"]
                            .as_str()
                            .unwrap_or_else(|| panic!("status has no string `listen`: {v}"));
                        self.listen = Some(listen.to_string());
                        return;
                    }
                    Ok(v) => last = format!("not ready yet: {v}"),
                },
            }
            if Instant::now() > deadline {
                panic!(
                    "lightchain not ready after {READY_TIMEOUT:?}; last status read: {last}\n{}",
                    self.log_tail(200)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Reads and parses `.lightchain/status` (fails the test if it hangs for 10 s).
    pub fn status_json(&self) -> Value {
        let p = self.path(".lightchain/status");
        let bytes = with_timeout(Duration::from_secs(10), move || fs::read(&p))
            .expect("read of .lightchain/status hung for 10 s")
            .expect("read .lightchain/status");
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("status is not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
    }

    /// `head_height` from the status.
    pub fn head_height(&self) -> u64 {
        let s = self.status_json();
        s["head_height"].as_u64().unwrap_or_else(|| panic!("status has no numeric head_height: {s}"))
    }

    /// Sends `sig` to the child.
    pub fn signal(&self, sig: i32) {
        let pid = self.pid.lock().unwrap().expect("signal: node is not running");
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}): {}", io::Error::last_os_error());
    }

    /// `kill -9` the child and reap it. The mount is left dead (as after a crash).
    ///
    /// A process whose thread is stuck in the kernel on its own mount (e.g. a FUSE notification waiting for
    /// a directory lock that a request to this very process holds) cannot finish dying, and the mount stays
    /// hung. The harness then aborts the FUSE connection (`umount -f`), reaps the node and fails the test
    /// with the stuck threads' kernel stacks, instead of hanging.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        if self.wait_exit(KILL_GRACE).is_some() {
            return;
        }
        let pid = self.pid.lock().unwrap().expect("pid of the unreaped child");
        let stuck = thread_report(pid);
        force_unmount(&self.mount());
        let status = self.wait_exit(Duration::from_secs(20));
        panic!(
            "node pid {pid} did not exit within {KILL_GRACE:?} of SIGKILL (after aborting its FUSE connection \
             with umount -f: {status:?}); its threads:\n{stuck}\n{}",
            self.log_tail(40)
        );
    }

    /// SIGTERM the child and wait (up to 30 s) for its exit status.
    pub fn sigterm(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("node did not exit within 30 s of SIGTERM\n{}", self.log_tail(100)))
    }

    /// SIGINT the child and wait (up to 30 s) for its exit status.
    pub fn sigint(&mut self) -> ExitStatus {
        self.signal(libc::SIGINT);
        self.wait_exit(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("node did not exit within 30 s of SIGINT\n{}", self.log_tail(100)))
    }

    /// Stops the node with SIGTERM and asserts a clean exit.
    pub fn stop(&mut self) {
        let status = self.sigterm();
        assert!(status.success(), "node exited with {status:?} after SIGTERM\n{}", self.log_tail(100));
    }

    /// Waits for the child to exit (up to `timeout`) and reaps it.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_running() {
                return Some(self.reap());
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Reaps an exited (or about-to-exit) child: clears the shared pid first so the watchdog never signals a
    /// reused pid.
    fn reap(&mut self) -> ExitStatus {
        *self.pid.lock().unwrap() = None;
        self.watchdog_stop = None;
        let mut child = self.child.take().expect("reap: no child");
        child.wait().expect("wait for lightchain")
    }

    /// Sets an environment variable for the next starts of the child.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.opts.env.retain(|(k, _)| k != key);
        self.opts.env.push((key.to_string(), value.to_string()));
    }

    /// Changes `--max-state-size` for the next start.
    pub fn set_max_state_size(&mut self, bytes: u64) {
        self.opts.max_state_size = Some(bytes);
    }

    /// Starts the node again on the same data directory and mountpoint, without unmounting anything first:
    /// after a `kill9` the binary must replace the dead FUSE mount itself (DESIGN §1.1).
    pub fn restart(&mut self) {
        assert!(!self.is_running(), "restart: the node is still running; stop or kill it first");
        if self.child.is_some() {
            self.reap();
        }
        self.spawn();
        self.wait_ready();
    }

    /// Runs the binary with exactly `args` (e.g. `["verify", "--data", ...]`).
    pub fn run_cli(&self, args: &[&str]) -> (ExitStatus, String, String) {
        let mut cmd = Command::new(BIN);
        cmd.args(args);
        clean_env(&mut cmd);
        run_command(cmd, CMD_TIMEOUT)
    }

    /// `lightchain verify --data DATA`.
    pub fn verify(&self) -> (ExitStatus, String, String) {
        let data = self.data();
        self.run_cli(&["verify", "--data", data.to_str().unwrap()])
    }

    /// `lightchain log ARGS... --data DATA`.
    pub fn log_cli(&self, args: &[&str]) -> (ExitStatus, String, String) {
        let data = self.data();
        let mut all: Vec<&str> = vec!["log"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--data", data.to_str().unwrap()]);
        self.run_cli(&all)
    }

    /// `lightchain status ARGS... --addr LISTEN --data DATA` (the CLI reads the cluster token there).
    pub fn status_cli(&self, args: &[&str]) -> (ExitStatus, String, String) {
        let addr = self.listen_addr();
        let data = self.data();
        let mut all: Vec<&str> = vec!["status"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--addr", &addr, "--data", data.to_str().unwrap()]);
        self.run_cli(&all)
    }

    /// Runs `bash -c script` in the mount with `$DATA` and `$MNT` set.
    pub fn sh(&self, script: &str) -> (ExitStatus, String, String) {
        let mut cmd = Command::new("bash");
        cmd.arg("-c").arg(script).current_dir(self.mount()).env("DATA", self.data()).env("MNT", self.mount());
        run_command(cmd, CMD_TIMEOUT)
    }

    /// The chain segment files `DATA/chain/*.jsonl`, sorted by name (= by first height).
    pub fn chain_files(&self) -> Vec<PathBuf> {
        let dir = self.data().join("chain");
        let mut files: Vec<PathBuf> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().map(|x| x == "jsonl").unwrap_or(false))
            .collect();
        files.sort();
        files
    }

    /// All of `DATA/chain/` as text.
    pub fn chain_text(&self) -> String {
        self.wait_written_behind();
        self.chain_files()
            .iter()
            .map(|p| fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display())))
            .collect::<Vec<_>>()
            .join("")
    }

    /// Every block in `DATA/chain/`, parsed, in file order.
    pub fn chain_blocks(&self) -> Vec<Value> {
        self.chain_text()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("chain line is not JSON ({e}): {l}")))
            .collect()
    }

    /// The last `n` lines of the node's log, framed for a panic message.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let start = lines.len().saturating_sub(n);
        format!(
            "----- lightchain log ({}, last {} of {} lines) -----\n{}\n----- end of log -----",
            self.log_path().display(),
            lines.len() - start,
            lines.len(),
            lines[start..].join("\n")
        )
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = *self.pid.lock().unwrap();
            if let Some(pid) = pid {
                unsafe { libc::kill(pid, libc::SIGKILL) };
                // Never block forever on a node that cannot die: abort its FUSE connection if it must.
                let wait = |d: Duration| {
                    let deadline = Instant::now() + d;
                    while !exited_nowait(pid) {
                        if Instant::now() > deadline {
                            return false;
                        }
                        thread::sleep(Duration::from_millis(20));
                    }
                    true
                };
                if !wait(KILL_GRACE) {
                    eprintln!(
                        "test harness: node pid {pid} survived SIGKILL; aborting its FUSE connection\n{}",
                        thread_report(pid)
                    );
                    force_unmount(&self.mount());
                }
                if wait(Duration::from_secs(20)) {
                    *self.pid.lock().unwrap() = None;
                    let _ = child.wait();
                } else {
                    eprintln!("test harness: node pid {pid} still alive; leaving it unreaped");
                }
            } else {
                let _ = child.wait();
            }
        }
        self.watchdog_stop = None;
        // Detach whatever is mounted there: the FUSE mount, dead or live, and the guard beneath.
        detach_all(&self.mount());
        // A panic inside the node is a bug even when the test's own assertions passed.
        if !thread::panicking() && self.log().contains("panicked at") {
            panic!("the lightchain node panicked during this test\n{}", self.log_tail(80));
        }
        if thread::panicking() || self.watchdog_fired.load(Ordering::SeqCst) {
            if self.watchdog_fired.load(Ordering::SeqCst) {
                eprintln!(
                    "NOTE: the harness watchdog killed the node after {:?}",
                    self.opts.watchdog.unwrap_or(WATCHDOG)
                );
            }
            eprintln!("{}", self.log_tail(150));
        }
    }
}

/// How long a SIGKILLed node may take to exit before the harness aborts its FUSE connection.
pub const KILL_GRACE: Duration = Duration::from_secs(5);

/// `umount -f`: for FUSE this aborts the connection (every request waiting on it fails with `ENOTCONN`),
/// which frees a server thread blocked in the kernel on its own mount. The mount itself may stay until
/// `Drop` detaches it.
/// Prefix of every test's temporary directory.
const TEMP_PREFIX: &str = "lightchain-test-";
/// The pid of the test process that made a temporary directory.
const OWNER_FILE: &str = "owner.pid";

/// A test process killed with SIGKILL (a timeout, a pipe closed under `cargo test`) runs no
/// `Drop`: its nodes die by their watchdogs, but their dead FUSE mounts and temporary
/// directories stay. Once per test process, lazily unmount and remove the directories whose
/// owner is no longer alive (never another live process's: parallel test binaries are fine).
fn sweep_leftovers() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if !entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            continue;
        }
        let owner = fs::read_to_string(path.join(OWNER_FILE)).ok().and_then(|p| p.trim().parse::<i32>().ok());
        let Some(owner) = owner else { continue };
        if Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        detach_all(&path.join("mnt"));
        let _ = fs::remove_dir_all(&path);
    }
}

/// Detaches every mount stacked at `path` (`MNT_DETACH`, top first): a FUSE mount, dead or
/// live, and the read-only guard a node leaves beneath it (DESIGN §1.1). Returns how many.
pub fn detach_all(path: &Path) -> usize {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else { return 0 };
    let mut detached = 0;
    while detached < 8 && unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        detached += 1;
    }
    detached
}

/// The source name of the read-only guard a node mounts beneath its FUSE mount
/// (`src/cli/guard.rs`).
pub const GUARD_SOURCE: &str = "lightchain-guard";

/// Whether a `/proc/mounts` line is a node's guard: a read-only tmpfs named [`GUARD_SOURCE`].
pub fn is_guard_line(line: &str) -> bool {
    let fields: Vec<&str> = line.split(' ').collect();
    fields.first() == Some(&GUARD_SOURCE)
        && fields.get(2) == Some(&"tmpfs")
        && fields.get(3).is_some_and(|o| o.split(',').any(|o| o == "ro"))
}

/// Whether a `/proc/mounts` line is a FUSE mount.
pub fn is_fuse_line(line: &str) -> bool {
    line.split(' ').nth(2).is_some_and(|t| t == "fuse" || t.starts_with("fuse."))
}

pub fn force_unmount(mnt: &Path) {
    if let Ok(c) = CString::new(mnt.as_os_str().as_bytes()) {
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_FORCE) };
    }
}

/// Each thread of `pid` with its state, wait channel and kernel stack (when readable), for reports of a
/// process that does not die.
pub fn thread_report(pid: i32) -> String {
    let mut out = String::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return format!("(no /proc/{pid}/task)");
    };
    for t in tasks.flatten() {
        let dir = t.path();
        let read = |f: &str| fs::read_to_string(dir.join(f)).unwrap_or_default();
        let state = read("stat").rsplit(") ").next().unwrap_or("").chars().next().unwrap_or('?');
        out.push_str(&format!(
            "  thread {} {:?} state {state} wchan {}\n",
            t.file_name().to_string_lossy(),
            read("comm").trim(),
            read("wchan").trim()
        ));
        for line in read("stack").lines().take(8) {
            out.push_str(&format!("      {line}\n"));
        }
    }
    out
}

/// Removes inherited `LIGHTCHAIN_*` variables so only explicit flags configure the child.
fn clean_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("LIGHTCHAIN_") {
            cmd.env_remove(k);
        }
    }
}

/// Whether `pid` (a child of ours) has exited, without reaping it.
fn exited_nowait(pid: i32) -> bool {
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT)
    };
    if rc != 0 {
        // ECHILD: already reaped.
        return true;
    }
    unsafe { info.si_pid() != 0 }
}

/// Runs `f` on a thread; `None` if it did not finish within `timeout` (the thread is left behind; the
/// harness watchdog or `Drop` eventually unblocks it by killing the node).
pub fn with_timeout<T: Send + 'static>(
    timeout: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(timeout).ok()
}

/// Runs `cmd` with piped stdout/stderr, killing it after `timeout`.
pub fn run_command(mut cmd: Command, timeout: Duration) -> (ExitStatus, String, String) {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let desc = format!("{cmd:?}");
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_t = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let status = child.wait().expect("wait");
            let stdout = String::from_utf8_lossy(&out_t.join().unwrap()).into_owned();
            let stderr = String::from_utf8_lossy(&err_t.join().unwrap()).into_owned();
            panic!("{desc} timed out after {timeout:?} ({status:?})\nstdout: {stdout}\nstderr: {stderr}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let stdout = String::from_utf8_lossy(&out_t.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&err_t.join().unwrap()).into_owned();
    (status, stdout, stderr)
}

/// `bash -c script` with cwd `dir`; returns (status, stdout, stderr).
pub fn sh(dir: &Path, script: &str) -> (ExitStatus, String, String) {
    let mut cmd = Command::new("bash");
    cmd.arg("-c").arg(script).current_dir(dir);
    run_command(cmd, CMD_TIMEOUT)
}

/// Asserts a shell/CLI run succeeded, showing its output otherwise.
#[track_caller]
pub fn assert_ok(run: &(ExitStatus, String, String), what: &str) {
    assert!(
        run.0.success(),
        "{what}: exited with {:?} (signal {:?})\nstdout: {}\nstderr: {}",
        run.0.code(),
        run.0.signal(),
        run.1,
        run.2
    );
}

/// Whether `path` is a mountpoint according to `/proc/mounts`.
pub fn is_mounted(path: &Path) -> bool {
    let mounts = fs::read_to_string("/proc/mounts").expect("read /proc/mounts");
    let want = path.to_str().unwrap().replace(' ', "\\040");
    mounts.lines().any(|l| l.split(' ').nth(1) == Some(want.as_str()))
}

/// The `/proc/mounts` line for `path`, if mounted.
pub fn mount_line(path: &Path) -> Option<String> {
    let mounts = fs::read_to_string("/proc/mounts").expect("read /proc/mounts");
    let want = path.to_str().unwrap().replace(' ', "\\040");
    mounts.lines().find(|l| l.split(' ').nth(1) == Some(want.as_str())).map(str::to_string)
}

/// Every `/proc/mounts` line for `path` (more than one if mounts are stacked).
pub fn mount_lines(path: &Path) -> Vec<String> {
    let mounts = fs::read_to_string("/proc/mounts").expect("read /proc/mounts");
    let want = path.to_str().unwrap().replace(' ', "\\040");
    mounts.lines().filter(|l| l.split(' ').nth(1) == Some(want.as_str())).map(str::to_string).collect()
}

// ----- raw syscalls: every result observed -----

pub fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

/// The errno of the last failed libc call.
pub fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// A readable name for common errnos, for assertion messages.
pub fn errno_name(e: i32) -> String {
    let name = match e {
        0 => "success",
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EACCES => "EACCES",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::EOPNOTSUPP => "EOPNOTSUPP/ENOTSUP",
        libc::ENOTCONN => "ENOTCONN",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::ETIMEDOUT => "ETIMEDOUT",
        _ => return format!("errno {e} ({})", io::Error::from_raw_os_error(e)),
    };
    format!("{name} ({e})")
}

/// Asserts `res` failed with one of `allowed` errnos.
#[track_caller]
pub fn assert_errno<T: std::fmt::Debug>(res: io::Result<T>, allowed: &[i32], what: &str) {
    let names: Vec<String> = allowed.iter().map(|e| errno_name(*e)).collect();
    match res {
        Ok(v) => panic!("{what}: expected failure with {names:?}, but it succeeded ({v:?})"),
        Err(e) => {
            let got = e.raw_os_error().unwrap_or(-1);
            assert!(allowed.contains(&got), "{what}: expected {names:?}, got {} ({e})", errno_name(got));
        }
    }
}

/// Converts a libc return code into an `io::Result`.
pub fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `open(2)`.
pub fn open_raw(path: &Path, flags: i32, mode: u32) -> io::Result<i32> {
    let c = cpath(path);
    check(unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) })
}

/// `write(2)` until all of `buf` is written.
pub fn write_all_raw(fd: i32, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let n = unsafe { libc::write(fd, buf.as_ptr() as *const libc::c_void, buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "write returned 0"));
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// `fsync(2)`.
pub fn fsync_raw(fd: i32) -> io::Result<()> {
    check(unsafe { libc::fsync(fd) }).map(|_| ())
}

/// `close(2)`: its result is the commit result (DESIGN §1.2).
pub fn close_raw(fd: i32) -> io::Result<()> {
    check(unsafe { libc::close(fd) }).map(|_| ())
}

/// Which step of a raw write sequence failed.
#[derive(Debug)]
pub enum Step {
    Open(io::Error),
    Write(io::Error),
    Close(io::Error),
}

impl Step {
    pub fn errno(&self) -> i32 {
        match self {
            Step::Open(e) | Step::Write(e) | Step::Close(e) => e.raw_os_error().unwrap_or(-1),
        }
    }
}

/// open(flags) + write + close, each result checked; on a write failure the fd is still closed.
pub fn write_with_flags(path: &Path, flags: i32, content: &[u8]) -> Result<(), Step> {
    let fd = open_raw(path, flags, 0o644).map_err(Step::Open)?;
    if let Err(e) = write_all_raw(fd, content) {
        unsafe { libc::close(fd) };
        return Err(Step::Write(e));
    }
    close_raw(fd).map_err(Step::Close)
}

/// Replaces (or creates) `path` with `content` and asserts that open, write and close all returned 0.
#[track_caller]
pub fn put(path: &Path, content: &[u8]) {
    if let Err(step) = write_with_flags(path, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, content) {
        panic!("put {}: {step:?} ({})", path.display(), errno_name(step.errno()));
    }
}

/// Appends with `O_APPEND` and asserts success.
#[track_caller]
pub fn append(path: &Path, content: &[u8]) {
    if let Err(step) = write_with_flags(path, libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND, content) {
        panic!("append {}: {step:?} ({})", path.display(), errno_name(step.errno()));
    }
}

/// Reads a file through `File` (open + read + close).
#[track_caller]
pub fn read(path: &Path) -> Vec<u8> {
    let mut f = File::open(path).unwrap_or_else(|e| panic!("open {} for reading: {e}", path.display()));
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    buf
}

/// Reads a file as UTF-8 text.
#[track_caller]
pub fn read_string(path: &Path) -> String {
    String::from_utf8(read(path)).unwrap_or_else(|e| panic!("{} is not UTF-8: {e}", path.display()))
}

/// Sorted names in a directory.
#[track_caller]
pub fn list_dir(path: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(path)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", path.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Seconds between a timestamp and now (absolute).
pub fn secs_from_now(t: SystemTime) -> f64 {
    match SystemTime::now().duration_since(t) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => e.duration().as_secs_f64(),
    }
}

/// Whether `text` mentions `block <height>` as a whole number (so `block 1` does not match `block 12`).
pub fn mentions_block(text: &str, height: u64) -> bool {
    let needle = format!("block {height}");
    text.match_indices(&needle)
        .any(|(i, _)| !text[i + needle.len()..].chars().next().map(|c| c.is_ascii_digit()).unwrap_or(false))
}

/// Whether a JSON value contains the string `s` anywhere (as a string value or inside one).
pub fn json_contains_str(v: &Value, s: &str) -> bool {
    match v {
        Value::String(x) => x.contains(s),
        Value::Array(a) => a.iter().any(|x| json_contains_str(x, s)),
        Value::Object(o) => o.iter().any(|(k, x)| k.contains(s) || json_contains_str(x, s)),
        _ => false,
    }
}

/// A random number from `/dev/urandom`.
pub fn rand_u64() -> u64 {
    let mut bytes = [0u8; 8];
    File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).expect("read /dev/urandom");
    u64::from_ne_bytes(bytes)
}

/// `n` loopback addresses `127.X.Y.1..=n` (all of `127/8` is loopback on Linux) and one port free on
/// all of them: nodes that share a port on their own addresses, as pods behind one Service name do.
pub fn free_loopback_ips_and_port(n: usize) -> (Vec<String>, u16) {
    for _ in 0..20 {
        let r = rand_u64();
        let ips: Vec<String> =
            (1..=n).map(|i| format!("127.{}.{}.{i}", 2 + r % 250, (r >> 8) % 250)).collect();
        let Ok(first) = std::net::TcpListener::bind((ips[0].as_str(), 0)) else { continue };
        let port = first.local_addr().unwrap().port();
        let rest: Vec<_> =
            ips[1..].iter().map(|ip| std::net::TcpListener::bind((ip.as_str(), port))).collect();
        if rest.iter().all(Result::is_ok) {
            return (ips, port);
        }
    }
    panic!("no port free on {n} loopback addresses");
}
