//! Network partitions between the members of a test cluster on loopback (DESIGN §5 "Partitions on loopback").
//!
//! What it owns: the `iptables` rules it adds, and nothing else — every rule is remembered and deleted
//! exactly (by its full specification) when the partition is healed or the [`Partitions`] value is dropped,
//! even while the test panics. Rules of other processes or tests are never listed, flushed or touched.
//!
//! How a partition works: member `i` runs with a supplementary group of its own (`ClusterOpts::
//! supplementary_group_base`, like `setpriv --groups G`; uid and gid stay root's, so the mount is unchanged).
//! `iptables -I OUTPUT -o lo -p tcp -m owner --gid-owner G --suppl-groups --dport PORT -j DROP` then drops
//! every packet member `i` sends to member `j`'s listening port, established connections included. Because
//! the rule matches the destination port, it cuts only the connections that `i` opens towards `j` — the
//! requests `i` sends (votes, AppendEntries, forwarded writes, read-index requests); replies that `i` sends on
//! connections `j` opened travel to `j`'s ephemeral port and pass. So `cut(i, j)` alone is a one-way partition
//! at the request level, and `cut(i, j)` plus `cut(j, i)` a symmetric one.
//!
//! Killing and pausing a member (`kill -9`, `SIGSTOP`/`SIGCONT`) need no help beyond `Node::signal`, so they
//! live in the harness itself (`tests/robustness.rs`).

use std::process::Command;
use std::time::Duration;

use super::{run_command, CMD_TIMEOUT};

/// One rule this harness added: member `from`'s packets to member `to`'s port are dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    /// The sending member.
    from: usize,
    /// The receiving member.
    to: usize,
    /// The sender's supplementary group.
    gid: u32,
    /// The receiver's listening port.
    port: u16,
}

impl Rule {
    /// The rule's specification after `-I OUTPUT` / `-D OUTPUT`.
    fn spec(&self) -> Vec<String> {
        [
            "-o",
            "lo",
            "-p",
            "tcp",
            "-m",
            "owner",
            "--gid-owner",
            &self.gid.to_string(),
            "--suppl-groups",
            "--dport",
            &self.port.to_string(),
            "-j",
            "DROP",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
}

/// Runs `iptables ARGS`; `Err` with its output when it fails.
fn iptables(args: &[String]) -> Result<(), String> {
    let mut cmd = Command::new("iptables");
    cmd.args(args);
    // `-w`: wait for the xtables lock instead of failing when another iptables runs at the same time.
    cmd.arg("-w").arg("5");
    let (status, out, err) = run_command(cmd, CMD_TIMEOUT);
    if status.success() {
        Ok(())
    } else {
        Err(format!("iptables {} exited with {:?}: {out}{err}", args.join(" "), status.code()))
    }
}

/// A supplementary-group base for this test process: distinct per process, so two harnesses running at
/// once (other test binaries, other worktrees) never match each other's nodes.
pub fn group_base() -> u32 {
    40_000 + (std::process::id() % 50_000) * 4
}

/// The partitions currently imposed on one cluster, and the means to impose more.
pub struct Partitions {
    /// Member `i`'s supplementary group.
    groups: Vec<u32>,
    /// Member `i`'s listening port.
    ports: Vec<u16>,
    /// The rules added and not yet deleted, in the order they were added.
    active: Vec<Rule>,
    /// How many rules were ever added (for the run's summary).
    pub added_total: usize,
}

impl Partitions {
    /// For members with these supplementary groups and listening addresses (`HOST:PORT`). Fails the test
    /// with a clear message when `iptables` is missing or cannot filter here.
    pub fn new(groups: Vec<u32>, addrs: &[String]) -> Partitions {
        assert_eq!(groups.len(), addrs.len());
        let ports = addrs
            .iter()
            .map(|a| {
                a.rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| panic!("no port in {a:?}"))
            })
            .collect();
        super::prereq::ensure(super::prereq::Need::Iptables);
        if let Err(e) = iptables(&["-S".to_string(), "OUTPUT".to_string()]) {
            panic!("the partition tests need iptables (as root, with the owner match): {e}");
        }
        Partitions { groups, ports, active: Vec::new(), added_total: 0 }
    }

    /// Drops member `from`'s requests to member `to` (a one-way partition). Idempotent.
    pub fn cut(&mut self, from: usize, to: usize) {
        assert_ne!(from, to, "a member cannot be cut from itself");
        let rule = Rule { from, to, gid: self.groups[from], port: self.ports[to] };
        if self.active.contains(&rule) {
            return;
        }
        let mut args = vec!["-I".to_string(), "OUTPUT".to_string()];
        args.extend(rule.spec());
        iptables(&args).unwrap_or_else(|e| panic!("could not add a partition rule: {e}"));
        self.active.push(rule);
        self.added_total += 1;
    }

    /// Cuts member `i` from every other member, both ways.
    pub fn isolate(&mut self, i: usize) {
        for j in (0..self.ports.len()).filter(|j| *j != i) {
            self.cut(i, j);
            self.cut(j, i);
        }
    }

    /// Whether any rule is in place.
    pub fn any(&self) -> bool {
        !self.active.is_empty()
    }

    /// The cuts in place, as `from->to` pairs (for logs).
    pub fn describe(&self) -> String {
        self.active.iter().map(|r| format!("{}->{}", r.from, r.to)).collect::<Vec<_>>().join(" ")
    }

    /// Deletes every rule this value added (newest first). Returns the errors of rules that could not be
    /// deleted (they stay remembered, and `Drop` tries again).
    pub fn heal(&mut self) -> Result<(), String> {
        let mut errors = Vec::new();
        let mut kept = Vec::new();
        while let Some(rule) = self.active.pop() {
            let mut args = vec!["-D".to_string(), "OUTPUT".to_string()];
            args.extend(rule.spec());
            if let Err(e) = iptables(&args) {
                errors.push(e);
                kept.push(rule);
            }
        }
        self.active = kept;
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("\n"))
        }
    }
}

impl Drop for Partitions {
    fn drop(&mut self) {
        for attempt in 0..3 {
            match self.heal() {
                Ok(()) => return,
                Err(e) => {
                    eprintln!("partitions: attempt {attempt} to delete our iptables rules failed: {e}");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        eprintln!("partitions: rules left behind (delete them by hand): {}", self.describe());
    }
}

/// Lines of `iptables -S OUTPUT` that match one of `groups` (rules left behind). Empty when clean.
pub fn leftover_rules(groups: &[u32]) -> Vec<String> {
    let mut cmd = Command::new("iptables");
    cmd.args(["-w", "5", "-S", "OUTPUT"]);
    let (_, out, _) = run_command(cmd, CMD_TIMEOUT);
    out.lines()
        .filter(|l| groups.iter().any(|g| l.contains(&format!("--gid-owner {g} "))))
        .map(str::to_string)
        .collect()
}
