//! What some suites need from the machine beyond Rust, FUSE and a shell, installed on first use
//! so that the README's `cargo test` works on a fresh machine: `iptables` (the partition faults of
//! `robustness.rs`), podman, runc and a static busybox (the containers of `k8s.rs`), and
//! `kubernetes-validate` (the manifests' schema check).
//!
//! What it owns: checking for those tools and, when one is missing, installing it once with
//! `apt-get` or `pip` (as root), behind an exclusive lock on a file in the system's temporary
//! directory, so parallel tests and test binaries install it once. It prints what it installs
//! and why. It must not skip a test: a tool that cannot be installed here fails the test that
//! needs it, saying what to run.

use std::io::Write;
use std::process::Command;
use std::sync::Mutex;

/// A set of tools a suite needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// `iptables` that can filter `OUTPUT` by owner (Debian's nft backend falls back to legacy).
    Iptables,
    /// `podman`, `runc` and `/bin/busybox` (static).
    Containers,
    /// `kubernetes-validate` (Python).
    KubernetesValidate,
}

/// The needs already met in this process.
static MET: Mutex<Vec<Need>> = Mutex::new(Vec::new());

/// Makes sure `need` is met, installing what is missing; panics with what to run otherwise.
pub fn ensure(need: Need) {
    let mut met = MET.lock().unwrap_or_else(|p| p.into_inner());
    if met.contains(&need) {
        return;
    }
    if !present(need) {
        let _lock = MachineLock::take();
        // Another test binary may have installed it while this one waited.
        if !present(need) {
            install(need);
        }
        assert!(present(need), "{need:?} is still missing after installing it; {}", by_hand(need));
    }
    met.push(need);
}

fn present(need: Need) -> bool {
    match need {
        Need::Iptables => succeeds("iptables", &["-w", "5", "-S", "OUTPUT"]),
        Need::Containers => on_path("podman") && on_path("runc") && succeeds("/bin/busybox", &["--list"]),
        Need::KubernetesValidate => on_path("kubernetes-validate"),
    }
}

fn by_hand(need: Need) -> &'static str {
    match need {
        Need::Iptables => "install it with `apt-get install -y iptables` and run the tests as root",
        Need::Containers => "install them with `apt-get install -y podman runc busybox-static`",
        Need::KubernetesValidate => "install it with `python3 -m pip install kubernetes-validate`",
    }
}

fn install(need: Need) {
    let why = match need {
        Need::Iptables => "iptables for the partition faults of tests/robustness.rs",
        Need::Containers => "podman, runc and busybox-static for the sidecar containers of tests/k8s.rs",
        Need::KubernetesValidate => "kubernetes-validate for the manifest check of tests/k8s.rs",
    };
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(root, "the tests need {why}, which is missing, and only root can install it: {}", by_hand(need));
    // Straight to the terminal: the test harness captures `eprintln!` of passing tests.
    let _ = writeln!(std::io::stderr(), "test set-up: installing {why} (once per machine)");
    match need {
        Need::Iptables => {
            apt_install(&["iptables"], need);
            // Debian's default backend is nft; fall back to the legacy one where nft cannot filter.
            if !present(need) && on_path("iptables-legacy") {
                run("update-alternatives", &["--set", "iptables", "/usr/sbin/iptables-legacy"], need);
            }
        }
        Need::Containers => apt_install(&["podman", "runc", "busybox-static"], need),
        Need::KubernetesValidate => {
            let pip = ["-m", "pip", "install", "--quiet", "kubernetes-validate"];
            // Debian's Python refuses a system-wide pip install unless told it may (PEP 668).
            if !succeeds("python3", &pip) {
                let mut forced = pip.to_vec();
                forced.push("--break-system-packages");
                if !succeeds("python3", &forced) {
                    apt_install(&["python3-pip"], need);
                    run("python3", &forced, need);
                }
            }
        }
    }
}

fn apt_install(packages: &[&str], need: Need) {
    assert!(on_path("apt-get"), "no apt-get on this machine: {}", by_hand(need));
    // Wait for another apt (a fresh machine's unattended upgrades) instead of failing.
    run("apt-get", &["-o", "DPkg::Lock::Timeout=600", "update", "-qq"], need);
    let mut args = vec!["-o", "DPkg::Lock::Timeout=600", "install", "-y", "-qq"];
    args.extend_from_slice(packages);
    let out = Command::new("apt-get")
        .args(&args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .unwrap_or_else(|e| panic!("apt-get: {e}; {}", by_hand(need)));
    assert!(
        out.status.success(),
        "apt-get install {} failed: {}{}; {}",
        packages.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        by_hand(need)
    );
}

fn run(program: &str, args: &[&str], need: Need) {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}{}; {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        by_hand(need)
    );
}

fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program).args(args).output().is_ok_and(|o| o.status.success())
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// An exclusive `flock` on a file in the temporary directory, across processes.
struct MachineLock(std::fs::File);

impl MachineLock {
    fn take() -> MachineLock {
        use std::os::fd::AsRawFd;
        let path = std::env::temp_dir().join("lightchain-test-prerequisites.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        // SAFETY: flock on a descriptor this struct owns.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(rc, 0, "flock {}: {}", path.display(), std::io::Error::last_os_error());
        MachineLock(file)
    }
}
