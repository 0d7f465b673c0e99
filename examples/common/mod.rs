//! What the bench programs share: a `lightchain mount` child ([`Mounted`]) and static clusters
//! of them, the one way they write a state through a mount, and a free loopback port. Each
//! program owns its loads and figures.

// Each example uses a part of this.
#![allow(dead_code)]

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A `lightchain mount` child with its own mountpoint, data directory and log (`RUST_LOG=warn`);
/// stopped (SIGTERM) and unmounted on drop.
pub struct Mounted {
    binary: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    /// Holds `mnt`, `data` and `log`.
    _dir: tempfile::TempDir,
    /// The mountpoint.
    pub mnt: PathBuf,
    /// The data directory.
    pub data: PathBuf,
    /// The node's log (stderr), appended to by every start.
    pub log: PathBuf,
}

impl Mounted {
    /// Starts a node listening on `listen` with `extra` flags (does not wait for readiness).
    pub fn spawn(binary: &Path, listen: &str, extra: &[&str]) -> Mounted {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mnt, data, log) = (dir.path().join("mnt"), dir.path().join("data"), dir.path().join("node.log"));
        let mut args: Vec<String> = vec!["mount".into(), mnt.display().to_string()];
        args.extend(["--data".into(), data.display().to_string(), "--listen".into(), listen.into()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut node = Mounted { binary: binary.to_owned(), args, child: None, _dir: dir, mnt, data, log };
        node.start();
        node
    }

    /// Starts the process (again, after [`stop`](Self::stop)) with the same flags and directories.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "the node is running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("node.log");
        let child = Command::new(&self.binary)
            .args(&self.args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start lightchain");
        self.child = Some(child);
    }

    /// SIGTERM, wait, and a lazy unmount of whatever is left (the guard included).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
        if let Ok(path) = CString::new(self.mnt.as_os_str().as_bytes()) {
            // The FUSE mount if it is left, and the read-only guard the node keeps beneath it.
            // SAFETY: a valid C string; failing (nothing left mounted) ends the loop.
            for _ in 0..4 {
                if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } != 0 {
                    break;
                }
            }
        }
    }

    /// How the process ended, if it has.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `.lightchain/status`, parsed (`Null` while it cannot be read).
    pub fn status(&self) -> Value {
        std::fs::read(self.mnt.join(".lightchain/status"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    }

    /// Whether this node leads.
    pub fn is_leader(&self) -> bool {
        self.status()["role"] == "leader"
    }

    /// Polls until the node says it is ready.
    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.status()["ready"] != Value::Bool(true) {
            assert!(Instant::now() < deadline, "lightchain did not become ready; see {}", self.log.display());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The resident set of the process, in MiB.
    pub fn rss_mib(&self) -> f64 {
        let Some(pid) = self.pid() else { return 0.0 };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        kib / 1024.0
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `n` nodes on loopback with the same `--peer` list and a new cluster token written to
/// `token` (DESIGN §1.7), plus `extra` flags; waits until every one is ready.
pub fn static_cluster(binary: &Path, n: usize, token: &Path, extra: &[&str]) -> Vec<Mounted> {
    let addrs: Vec<String> = (0..n).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let peers = addrs.join(",");
    let secret: String = (0..4).map(|_| format!("{:016x}", rand::random::<u64>())).collect();
    std::fs::write(token, secret).expect("write the cluster token file");
    let token = token.to_str().expect("a UTF-8 token path");
    let nodes: Vec<Mounted> = addrs
        .iter()
        .map(|addr| {
            let mut args = vec!["--peer", peers.as_str(), "--cluster-token-file", token];
            args.extend_from_slice(extra);
            Mounted::spawn(binary, addr, &args)
        })
        .collect();
    for node in &nodes {
        node.wait_ready(Duration::from_secs(60));
    }
    nodes
}

/// `open(O_WRONLY|O_CREAT|O_TRUNC)` + `write` + `close` of `path`, the way an application
/// writes a state: `close` is the commit, so its result is checked. `Err` names the call that
/// failed and its error.
pub fn write_state(path: &Path, data: &[u8]) -> Result<(), (&'static str, std::io::Error)> {
    let c = CString::new(path.as_os_str().as_bytes()).expect("a path without NUL");
    // SAFETY: plain syscalls on a valid C string and buffer; the descriptor is closed on every path.
    unsafe {
        let fd = libc::open(c.as_ptr(), libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, 0o644);
        if fd < 0 {
            return Err(("open", std::io::Error::last_os_error()));
        }
        if libc::write(fd, data.as_ptr().cast(), data.len()) != data.len() as isize {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(("write", e));
        }
        if libc::close(fd) != 0 {
            return Err(("close (the commit)", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// [`write_state`], panicking with the path, the call and the error when it fails.
pub fn must_write_state(path: &Path, data: &[u8]) {
    if let Err((call, e)) = write_state(path, data) {
        panic!("{call} of {} failed: {e}", path.display());
    }
}

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
