//! Multi-node harness: a static cluster of real `lightchain mount` processes on loopback (DESIGN §1.3, issue 3).
//!
//! Each member is a [`Node`] (own `TempDir` with `data/`, `mnt/` and `node.log`, watchdog, `Drop` that kills
//! and lazily unmounts). Unlike a single node, a member cannot listen on port 0: its node id derives from
//! its address and every member is started with the full `--peer` list, so the ports must be known before
//! any member starts. [`Cluster::start`] therefore reserves free ports (bind `127.0.0.1:0`, read the port,
//! drop the listener) and, if a member then fails to bind because something else took its port in the
//! meantime, throws the whole attempt away and starts again with new ports.
//!
//! Waiting is always a poll under a deadline ([`POLL_TIMEOUT`]), never a fixed sleep: the tests run in
//! parallel with the other test files on small machines, where an election or a catch-up may take a while.
//!
//! Members must be (re)started from the test's own thread: the harness asks the kernel to kill a child when
//! the thread that spawned it exits (`PR_SET_PDEATHSIG`).

use std::collections::HashSet;
use std::fs;
use std::net::TcpListener;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{rand_u64, run_command, with_timeout, Node, Opts, BIN, CMD_TIMEOUT, READY_TIMEOUT};

/// Deadline of every poll for a cluster-wide condition (leader known, heads equal, `states/` equal).
pub const POLL_TIMEOUT: Duration = Duration::from_secs(30);

/// How many times [`Cluster::start`] retries with new ports when a member cannot bind its address.
const START_ATTEMPTS: u32 = 5;

/// Flags every member of a test cluster gets.
#[derive(Clone, Debug)]
pub struct ClusterOpts {
    /// `--commit-timeout`; short, so tests that lose the quorum stay fast.
    pub commit_timeout: String,
    /// `--snapshot-every N`, if set.
    pub snapshot_every: Option<u64>,
    /// `--read-consistency`, if set.
    pub read_consistency: Option<String>,
    /// If set, member `i` runs with supplementary group `base + i` (for partitions, `tests/common/faults.rs`).
    pub supplementary_group_base: Option<u32>,
    /// Overrides the per-start watchdog of every member (soak runs last longer than the default).
    pub watchdog: Option<Duration>,
    /// Environment variables for single members: (member index, name, value).
    pub member_env: Vec<(usize, String, String)>,
    /// The members' addresses, when the test must know them before the start (certificates naming
    /// each member's own loopback address); free `127.0.0.1` ports otherwise.
    pub addrs: Option<Vec<String>>,
}

impl Default for ClusterOpts {
    fn default() -> Self {
        ClusterOpts {
            commit_timeout: "3s".to_string(),
            snapshot_every: None,
            read_consistency: None,
            supplementary_group_base: None,
            watchdog: None,
            member_env: Vec::new(),
            addrs: None,
        }
    }
}

impl ClusterOpts {
    pub fn snapshot_every(mut self, n: u64) -> Self {
        self.snapshot_every = Some(n);
        self
    }

    /// The commit timeout as a `Duration` (accepts `Ns` and `Nms`).
    pub fn commit_timeout_duration(&self) -> Duration {
        let t = self.commit_timeout.trim();
        if let Some(ms) = t.strip_suffix("ms") {
            Duration::from_millis(ms.parse().expect("commit timeout in ms"))
        } else if let Some(s) = t.strip_suffix('s') {
            Duration::from_secs(s.parse().expect("commit timeout in s"))
        } else {
            panic!("unsupported commit timeout {t:?}")
        }
    }
}

/// A running static cluster. Index `i` is member `i` everywhere (`nodes`, `addrs`, `ids`).
pub struct Cluster {
    /// The members.
    pub nodes: Vec<Node>,
    /// Each member's `--listen` address (kept across restarts).
    pub addrs: Vec<String>,
    /// Each member's node id, as its status reported at start.
    pub ids: Vec<u64>,
    /// The flags the cluster was started with.
    pub opts: ClusterOpts,
    /// The cluster token file every member is given (`--cluster-token-file`).
    pub token_file: std::path::PathBuf,
    /// Holds `token_file`; removed with the cluster.
    _token_dir: tempfile::TempDir,
}

/// Why one attempt to start the cluster failed.
enum StartError {
    /// A member could not bind its reserved port: retry with new ports.
    AddrInUse(String),
    /// Anything else: a real failure.
    Other(String),
}

/// `n` distinct free loopback addresses (all reserved at once so they differ, then released).
pub fn free_addrs(n: usize) -> Vec<String> {
    let listeners: Vec<TcpListener> =
        (0..n).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")).collect();
    listeners.iter().map(|l| l.local_addr().unwrap().to_string()).collect()
}

impl Cluster {
    /// Starts `size` members with the same `--peer` list and waits until every one is ready.
    pub fn start(size: usize, opts: ClusterOpts) -> Cluster {
        Cluster::start_with_late(size, opts, None)
    }

    /// Like [`Cluster::start`], but member `late` (if any) is spawned only once the others have formed the
    /// cluster and are ready, so it joins an existing cluster instead of taking part in its first election.
    pub fn start_with_late(size: usize, opts: ClusterOpts, late: Option<usize>) -> Cluster {
        let mut last = String::new();
        // One shared secret for every member (DESIGN §1.7), as an operator would hand it out.
        let token_dir = tempfile::tempdir().expect("token temp dir");
        let token_file = token_dir.path().join("cluster-token");
        let token: String = (0..4).map(|_| format!("{:016x}", rand_u64())).collect();
        fs::write(&token_file, format!("{token}\n")).expect("write the cluster token file");
        for attempt in 1..=START_ATTEMPTS {
            let addrs = opts.addrs.clone().unwrap_or_else(|| free_addrs(size));
            let peers = addrs.join(",");
            let mut nodes: Vec<Node> = addrs
                .iter()
                .enumerate()
                .map(|(i, addr)| {
                    let mut extra = vec![
                        "--peer".to_string(),
                        peers.clone(),
                        "--cluster-token-file".to_string(),
                        token_file.display().to_string(),
                    ];
                    if let Some(n) = opts.snapshot_every {
                        extra.push("--snapshot-every".into());
                        extra.push(n.to_string());
                    }
                    let node_opts = Opts {
                        commit_timeout: Some(opts.commit_timeout.clone()),
                        read_consistency: opts.read_consistency.clone(),
                        extra,
                        supplementary_group: opts.supplementary_group_base.map(|base| base + i as u32),
                        watchdog: opts.watchdog,
                        env: opts
                            .member_env
                            .iter()
                            .filter(|(m, _, _)| *m == i)
                            .map(|(_, k, v)| (k.clone(), v.clone()))
                            .collect(),
                        ..Opts::default()
                    };
                    let mut node = Node::prepare(node_opts);
                    node.set_listen(addr);
                    node
                })
                .collect();
            let early: Vec<usize> = (0..size).filter(|i| Some(*i) != late).collect();
            for &i in &early {
                nodes[i].spawn();
            }
            let mut started = wait_all_ready(&mut nodes, &early);
            if let (Ok(ids), Some(l)) = (&started, late) {
                let mut ids = ids.clone();
                nodes[l].spawn();
                started = wait_all_ready(&mut nodes, &[l]).map(|late_id| {
                    ids.insert(l, late_id[0]);
                    ids
                });
            }
            match started {
                Ok(ids) => return Cluster { nodes, addrs, ids, opts, token_file, _token_dir: token_dir },
                Err(StartError::AddrInUse(msg)) => {
                    eprintln!(
                        "cluster start attempt {attempt}: a port was taken ({msg}); retrying with new ports"
                    );
                    last = msg;
                    kill_all(&mut nodes);
                }
                Err(StartError::Other(msg)) => {
                    kill_all(&mut nodes);
                    panic!("cluster did not start: {msg}");
                }
            }
        }
        panic!("cluster did not start after {START_ATTEMPTS} attempts; last: {last}");
    }

    /// All member indices.
    pub fn all(&self) -> Vec<usize> {
        (0..self.nodes.len()).collect()
    }

    /// Member `i`.
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// `rel` under member `i`'s mount.
    pub fn path(&self, i: usize, rel: &str) -> std::path::PathBuf {
        self.nodes[i].path(rel)
    }

    /// The member index of node id `id`.
    pub fn index_of(&self, id: u64) -> usize {
        self.ids
            .iter()
            .position(|x| *x == id)
            .unwrap_or_else(|| panic!("node id {id} is not one of {:?}", self.ids))
    }

    /// Member `i`'s `.lightchain/status`.
    pub fn status(&self, i: usize) -> Value {
        self.nodes[i].status_json()
    }

    /// Polls until every member in `live` names the same leader and that leader is in `live`.
    pub fn wait_leader(&self, live: &[usize]) -> usize {
        let deadline = Instant::now() + POLL_TIMEOUT;
        loop {
            let statuses: Vec<Value> = live.iter().map(|&i| self.status(i)).collect();
            let leaders: Vec<Option<u64>> = statuses.iter().map(|s| s["leader"].as_u64()).collect();
            if let Some(Some(l)) = leaders.first() {
                if leaders.iter().all(|x| *x == Some(*l)) {
                    if let Some(idx) = self.ids.iter().position(|x| x == l) {
                        if live.contains(&idx) {
                            return idx;
                        }
                    }
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "members {live:?} did not agree on a live leader within {POLL_TIMEOUT:?}; statuses:\n{}",
                    statuses.iter().map(|s| s.to_string()).collect::<Vec<_>>().join("\n")
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// (head_height, head_hash) from member `i`'s status.
    pub fn head(&self, i: usize) -> (u64, String) {
        let s = self.status(i);
        (
            s["head_height"].as_u64().unwrap_or_else(|| panic!("status has no head_height: {s}")),
            s["head_hash"].as_str().unwrap_or_else(|| panic!("status has no head_hash: {s}")).to_string(),
        )
    }

    /// Polls until every member in `live` reports the same head height and hash; returns it.
    pub fn wait_converged(&self, live: &[usize]) -> (u64, String) {
        let deadline = Instant::now() + POLL_TIMEOUT;
        loop {
            let heads: Vec<(u64, String)> = live.iter().map(|&i| self.head(i)).collect();
            if heads.iter().all(|h| *h == heads[0]) {
                return heads[0].clone();
            }
            if Instant::now() > deadline {
                let kept = self.keep_for_debugging();
                panic!(
                    "members {live:?} did not converge within {POLL_TIMEOUT:?} (data kept in {}); heads: {heads:?}",
                    kept.display()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls until `diff -r` finds no difference between the `states/` of the members in `live`.
    pub fn wait_states_identical(&self, live: &[usize]) {
        let deadline = Instant::now() + POLL_TIMEOUT;
        loop {
            let mut differences = String::new();
            for &i in &live[1..] {
                let a = self.nodes[live[0]].data().join("states");
                let b = self.nodes[i].data().join("states");
                let mut cmd = Command::new("diff");
                // states/.lightchain/ is the mirror's scratch space, not a state.
                cmd.arg("-r").arg("-x").arg(".lightchain").arg(&a).arg(&b);
                let (status, out, err) = run_command(cmd, CMD_TIMEOUT);
                if !status.success() {
                    differences.push_str(&format!(
                        "diff -r {} {} ({:?}):\n{out}{err}\n",
                        a.display(),
                        b.display(),
                        status.code()
                    ));
                }
            }
            if differences.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                let kept = self.keep_for_debugging();
                panic!(
                    "states/ still differ after {POLL_TIMEOUT:?} (data kept in {}):\n{differences}",
                    kept.display()
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Asserts `lightchain verify` passes on each member in `which`.
    #[track_caller]
    pub fn assert_verify(&self, which: &[usize]) {
        for &i in which {
            let run = self.nodes[i].verify();
            if !run.0.success() {
                let kept = self.keep_for_debugging();
                panic!(
                    "lightchain verify on member {i} exited with {:?} (data kept in {})\nstdout: {}\nstderr: {}",
                    run.0.code(),
                    kept.display(),
                    run.1,
                    run.2
                );
            }
        }
    }

    /// Copies every member's data directory and log into a new directory that outlives the test (for a
    /// failure that needs a post-mortem) and returns it.
    pub fn keep_for_debugging(&self) -> std::path::PathBuf {
        let kept = tempfile::Builder::new()
            .prefix("lightchain-cluster-failure-")
            .tempdir()
            .expect("create a directory for the post-mortem")
            .keep();
        for (i, node) in self.nodes.iter().enumerate() {
            let to = kept.join(format!("member{i}"));
            let _ = fs::create_dir_all(&to);
            let mut cmd = Command::new("cp");
            cmd.arg("-a").arg(node.data()).arg(to.join("data"));
            let _ = run_command(cmd, CMD_TIMEOUT);
            let _ = fs::write(to.join("node.log"), node.log());
        }
        kept
    }

    /// Member `i`'s chain as printed by `lightchain log --json --data DIR`.
    pub fn log_blocks(&self, i: usize) -> Vec<Value> {
        // chain/ is written behind what the member applied.
        self.nodes[i].wait_written_behind();
        let run = self.nodes[i].log_cli(&["--json"]);
        assert!(
            run.0.success(),
            "lightchain log --json on member {i} exited with {:?}\nstderr: {}",
            run.0.code(),
            run.2
        );
        run.1
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("log --json line is not JSON ({e}): {l}"))
            })
            .collect()
    }

    /// SIGKILLs member `i` and reaps it; its mount is left dead.
    pub fn kill9(&mut self, i: usize) {
        self.nodes[i].kill9();
    }

    /// Restarts member `i` on its old address, data directory and mountpoint; waits until it is ready.
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].restart();
    }

    /// Options for a node that joins this cluster through members `via` (`--join`, the cluster's
    /// token, the cluster's commit timeout) with `extra` flags.
    pub fn join_opts(&self, via: &[usize], extra: &[&str]) -> Opts {
        let mut flags = Vec::new();
        for &v in via {
            flags.push("--join".to_string());
            flags.push(self.addrs[v].clone());
        }
        flags.push("--cluster-token-file".into());
        flags.push(self.token_file.display().to_string());
        flags.extend(extra.iter().map(|s| s.to_string()));
        Opts { commit_timeout: Some(self.opts.commit_timeout.clone()), extra: flags, ..Opts::default() }
    }

    /// Starts a new node (new data directory, a free address) that joins through members `via`, waits
    /// until it is ready and adds it as the next member index.
    pub fn add_joiner(&mut self, via: &[usize], extra: &[&str]) -> usize {
        let mut node = Node::prepare(self.join_opts(via, extra));
        let addr = free_addrs(1).remove(0);
        node.set_listen(&addr);
        node.spawn();
        node.wait_ready();
        let id = node.status_json()["node_id"].as_u64().expect("a joiner's status has a node_id");
        self.nodes.push(node);
        self.addrs.push(addr);
        self.ids.push(id);
        self.nodes.len() - 1
    }

    /// Member `i` loses its data: it is killed, its directories are removed, and a node with a new data
    /// directory starts at its address with `--join` through `via`. Waits until it is ready; `ids[i]` is the
    /// new node's id.
    pub fn replace_wiped(&mut self, i: usize, via: &[usize]) {
        self.nodes[i].kill9();
        let mut node = Node::prepare(self.join_opts(via, &[]));
        node.set_listen(&self.addrs[i]);
        // Dropping the old node removes its data directory and mountpoint.
        self.nodes[i] = node;
        self.nodes[i].spawn();
        let ready = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.nodes[i].wait_ready()));
        if let Err(panic) = ready {
            for (j, n) in self.nodes.iter().enumerate() {
                let log = n.log();
                if let Some(at) = log.find("panicked at") {
                    eprintln!(
                        "member {j} panicked: {}",
                        &log[at.saturating_sub(300)..(at + 1500).min(log.len())]
                    );
                }
            }
            std::panic::resume_unwind(panic);
        }
        self.ids[i] = self.nodes[i].status_json()["node_id"].as_u64().expect("status has a node_id");
    }

    /// Polls member `i`'s status until its membership has `voters` voters and `learners` learners; returns
    /// the members (`[{id, addr, role, ...}]`).
    pub fn wait_membership(&self, i: usize, voters: usize, learners: usize) -> Vec<Value> {
        let deadline = Instant::now() + POLL_TIMEOUT;
        loop {
            let status = self.status(i);
            let members = status["members"].as_array().cloned().unwrap_or_default();
            let count = |role: &str| members.iter().filter(|m| m["role"] == role).count();
            if count("voter") == voters && count("learner") == learners {
                return members;
            }
            if Instant::now() > deadline {
                panic!(
                    "member {i} did not see {voters} voters and {learners} learners within {POLL_TIMEOUT:?}: {status}\n{}",
                    self.nodes[i].log_tail(40)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs the binary with `args` (no `LIGHTCHAIN_*` from the environment).
    pub fn cli(&self, args: &[&str]) -> (std::process::ExitStatus, String, String) {
        let mut cmd = Command::new(BIN);
        cmd.args(args);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("LIGHTCHAIN_") {
                cmd.env_remove(k);
            }
        }
        // The nodes answer holders of the cluster's token only.
        cmd.env("LIGHTCHAIN_CLUSTER_TOKEN_FILE", &self.token_file);
        run_command(cmd, CMD_TIMEOUT)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Stop every member before any `Node::drop` runs (one of them may panic over a node's log).
        for node in &self.nodes {
            if node.is_running() {
                node.signal(libc::SIGKILL);
            }
        }
    }
}

/// SIGKILLs and reaps every running member of a failed start (their `Drop` unmounts).
fn kill_all(nodes: &mut [Node]) {
    for node in nodes.iter_mut() {
        if node.is_running() {
            node.signal(libc::SIGKILL);
            let _ = node.wait_exit(Duration::from_secs(20));
        }
    }
}

/// Polls the `.lightchain/status` of members `which` until all say `"ready": true`; returns their node ids
/// (in the order of `which`).
fn wait_all_ready(all: &mut [Node], which: &[usize]) -> Result<Vec<u64>, StartError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut ids: Vec<Option<u64>> = vec![None; which.len()];
    let mut last: Vec<String> = vec!["(no attempt yet)".into(); which.len()];
    loop {
        for (i, &member) in which.iter().enumerate() {
            let node = &mut all[member];
            if ids[i].is_some() {
                continue;
            }
            if !node.is_running() {
                let status = node.wait_exit(Duration::from_secs(5));
                let log = node.log();
                let msg = format!(
                    "member {member} exited with {status:?} before becoming ready\n{}",
                    node.log_tail(60)
                );
                let lower = log.to_lowercase();
                return Err(if lower.contains("address already in use") || lower.contains("addrinuse") {
                    StartError::AddrInUse(msg)
                } else {
                    StartError::Other(msg)
                });
            }
            let p = node.path(".lightchain/status");
            match with_timeout(Duration::from_secs(10), move || fs::read(&p)) {
                None => last[i] = "read of .lightchain/status hung for 10 s".into(),
                Some(Err(e)) => last[i] = format!("read error: {e}"),
                Some(Ok(bytes)) => match serde_json::from_slice::<Value>(&bytes) {
                    Err(e) => last[i] = format!("unparseable JSON ({e})"),
                    Ok(v) if v["ready"] == Value::Bool(true) => {
                        ids[i] = Some(
                            v["node_id"]
                                .as_u64()
                                .unwrap_or_else(|| panic!("status has no numeric node_id: {v}")),
                        );
                    }
                    Ok(v) => last[i] = format!("not ready yet: {v}"),
                },
            }
        }
        if ids.iter().all(Option::is_some) {
            let ids: Vec<u64> = ids.into_iter().map(Option::unwrap).collect();
            let distinct: HashSet<u64> = ids.iter().copied().collect();
            if distinct.len() != ids.len() {
                return Err(StartError::Other(format!("members report duplicate node ids: {ids:?}")));
            }
            return Ok(ids);
        }
        if Instant::now() > deadline {
            let mut msg = format!("not every member was ready after {READY_TIMEOUT:?}:\n");
            for (i, &member) in which.iter().enumerate() {
                if ids[i].is_none() {
                    msg.push_str(&format!("member {member}: {}\n{}\n", last[i], all[member].log_tail(40)));
                }
            }
            return Err(StartError::Other(msg));
        }
        thread::sleep(Duration::from_millis(100));
    }
}

// ----- reading the chain -----

/// What a chain holds, for "every acknowledged write is in the chain" checks. Only transactions whose
/// outcome is `"ok"` are counted.
#[derive(Default, Debug)]
pub struct ChainIndex {
    /// `put` transactions as (state id, content).
    pub puts: HashSet<(String, String)>,
    /// `append` transactions as (state id, content).
    pub appends: HashSet<(String, String)>,
    /// `rename` transactions as (from, to).
    pub renames: HashSet<(String, String)>,
    /// `delete` transactions by state id (a multiset flattened: presence only).
    pub deletes: HashSet<String>,
    /// `create` transactions as (state id, exclusive), one entry per transaction.
    pub creates: Vec<(String, bool)>,
    /// `mkdir` transactions by state id.
    pub mkdirs: HashSet<String>,
    /// Every transaction content seen in any `put`/`append`, whatever its outcome.
    pub all_contents: HashSet<String>,
    /// Every state id named by any transaction, whatever its outcome.
    pub all_ids: HashSet<String>,
}

impl ChainIndex {
    pub fn from_blocks(blocks: &[Value]) -> ChainIndex {
        let mut ix = ChainIndex::default();
        for b in blocks {
            let txs = b["txs"].as_array().unwrap_or_else(|| panic!("block without txs array: {b}"));
            for tx in txs {
                let ok = tx["outcome"] == Value::String("ok".into());
                let op = tx["op"].as_object().unwrap_or_else(|| panic!("tx without op object: {tx}"));
                for (kind, body) in op {
                    let s = |k: &str| body[k].as_str().map(str::to_string);
                    for key in ["id", "from", "to"] {
                        if let Some(v) = s(key) {
                            ix.all_ids.insert(v);
                        }
                    }
                    if let Some(c) = s("content") {
                        ix.all_contents.insert(c);
                    }
                    if !ok {
                        continue;
                    }
                    match kind.as_str() {
                        "put" => {
                            if let (Some(id), Some(c)) = (s("id"), s("content")) {
                                ix.puts.insert((id, c));
                            }
                        }
                        "append" => {
                            if let (Some(id), Some(c)) = (s("id"), s("content")) {
                                ix.appends.insert((id, c));
                            }
                        }
                        "rename" => {
                            ix.renames.insert((s("from").unwrap(), s("to").unwrap()));
                        }
                        "delete" => {
                            ix.deletes.insert(s("id").unwrap());
                        }
                        "create" => {
                            ix.creates.push((s("id").unwrap(), body["exclusive"].as_bool().unwrap_or(false)));
                        }
                        "mkdir" => {
                            ix.mkdirs.insert(s("id").unwrap());
                        }
                        _ => {}
                    }
                }
            }
        }
        ix
    }
}

/// Asserts `blocks` is a complete chain: heights 0, 1, 2, … with no gap, each `prev_hash` the previous
/// block's `hash`; returns the head (height, hash).
#[track_caller]
pub fn assert_full_chain(blocks: &[Value], who: &str) -> (u64, String) {
    assert!(!blocks.is_empty(), "{who}: the chain is empty");
    let mut prev_hash: Option<String> = None;
    for (i, b) in blocks.iter().enumerate() {
        let height = b["height"].as_u64().unwrap_or_else(|| panic!("{who}: block without height: {b}"));
        assert_eq!(
            height, i as u64,
            "{who}: block {i} of the chain has height {height} (a gap or a duplicate)"
        );
        if let Some(p) = &prev_hash {
            assert_eq!(
                b["prev_hash"].as_str(),
                Some(p.as_str()),
                "{who}: block {height} does not link to block {}",
                height - 1
            );
        }
        prev_hash =
            Some(b["hash"].as_str().unwrap_or_else(|| panic!("{who}: block without hash: {b}")).to_string());
    }
    ((blocks.len() - 1) as u64, prev_hash.unwrap())
}
