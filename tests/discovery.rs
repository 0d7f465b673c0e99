//! Cold start by discovery over real processes (DESIGN §1.8, issue 9 item 4): nodes started with
//! `--bootstrap-expect 3 --discover-dns NAME:PORT` on new data directories form exactly one cluster in
//! any start order, even while the name does not yet resolve to every node; a node whose data was
//! wiped while the others run joins the running cluster instead of founding a second one; a node
//! restarted with its data just starts; one killed while discovering keeps its id; a member known by
//! a name is reached at the name's new address after it moved.
//!
//! Each node listens on its own loopback address (`127.X.Y.1`, `.2`, `.3`: all of `127/8` is
//! loopback on Linux) with one shared port, as pods of a headless Service do. The name is resolved
//! through the binary's `LIGHTCHAIN_TEST_HOSTS` hook (a hosts-format file, read again on every
//! resolution), so a test controls what the name resolves to, and when, without touching
//! `/etc/hosts`.

mod common;

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const NAME: &str = "lightchain-peers.test";
const POLL: Duration = Duration::from_secs(30);

/// Three nodes to be discovered under [`NAME`]: their addresses share a port, each on its own
/// loopback IP, and the hosts file the hook reads.
struct Pods {
    nodes: Vec<Node>,
    ips: Vec<String>,
    port: u16,
    hosts: PathBuf,
    token: PathBuf,
    _dir: tempfile::TempDir,
}

impl Pods {
    fn new(n: usize) -> Pods {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        let token = dir.path().join("cluster-token");
        fs::write(&hosts, "").unwrap();
        fs::write(&token, format!("{:016x}{:016x}{:016x}{:016x}\n", rand_u64(), 1, rand_u64(), 2)).unwrap();
        let (ips, port) = free_loopback_ips_and_port(n);
        let mut pods = Pods { nodes: Vec::new(), ips, port, hosts, token, _dir: dir };
        for i in 0..n {
            let mut node = Node::prepare(pods.opts());
            node.set_listen(&pods.addr(i));
            pods.nodes.push(node);
        }
        pods
    }

    fn addr(&self, i: usize) -> String {
        format!("{}:{}", self.ips[i], self.port)
    }

    /// The flags and environment of a node of this set.
    fn opts(&self) -> Opts {
        let extra = [
            "--bootstrap-expect".to_string(),
            "3".into(),
            "--discover-dns".into(),
            format!("{NAME}:{}", self.port),
            "--cluster-token-file".into(),
            self.token.display().to_string(),
        ];
        Opts {
            commit_timeout: Some("3s".into()),
            extra: extra.to_vec(),
            env: vec![("LIGHTCHAIN_TEST_HOSTS".into(), self.hosts.display().to_string())],
            ..Opts::default()
        }
    }

    /// Makes the name resolve to the nodes `published` (as DNS publishes pods one by one).
    fn publish(&self, published: &[usize]) {
        let lines: String = published.iter().map(|i| format!("{} {NAME}\n", self.ips[*i])).collect();
        let tmp = self.hosts.with_extension("new");
        fs::write(&tmp, lines).unwrap();
        fs::rename(&tmp, &self.hosts).unwrap();
    }

    fn status(&self, i: usize) -> Value {
        self.nodes[i].status_json()
    }

    /// Waits until every node is ready and all report one cluster id and the same three voters.
    fn wait_one_cluster(&mut self) -> (String, HashSet<u64>) {
        for node in &mut self.nodes {
            node.wait_ready();
        }
        let deadline = Instant::now() + POLL;
        loop {
            let statuses: Vec<Value> = (0..self.nodes.len()).map(|i| self.status(i)).collect();
            let clusters: HashSet<String> =
                statuses.iter().map(|s| s["cluster_id"].as_str().unwrap_or("").to_owned()).collect();
            let voters: Vec<HashSet<u64>> = statuses.iter().map(voters_of).collect();
            let ids: HashSet<u64> = statuses.iter().map(|s| s["node_id"].as_u64().unwrap()).collect();
            if clusters.len() == 1 && !clusters.contains("") && voters.iter().all(|v| *v == ids) {
                return (clusters.into_iter().next().unwrap(), ids);
            }
            assert!(
                Instant::now() < deadline,
                "the nodes did not form one cluster of three voters: {statuses:#?}\n{}",
                self.nodes.iter().map(|n| n.log_tail(20)).collect::<Vec<_>>().join("\n----\n")
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

fn voters_of(status: &Value) -> HashSet<u64> {
    status["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["role"] == "voter")
        .map(|m| m["id"].as_u64().unwrap())
        .collect()
}

fn path(node: &Node, rel: &str) -> PathBuf {
    node.mount().join(rel)
}

fn wait_content(file: &Path, want: &str) {
    let deadline = Instant::now() + POLL;
    while fs::read_to_string(file).ok().as_deref() != Some(want) {
        assert!(Instant::now() < deadline, "{} never held {want:?}", file.display());
        thread::sleep(Duration::from_millis(100));
    }
}

/// Every start order of three nodes forms one cluster. In one order the name resolves only to the
/// nodes started so far (a node cannot find one DNS does not name yet), so discovery must resolve
/// the name again in later rounds.
#[test]
fn a_cold_start_forms_exactly_one_cluster_in_every_start_order() {
    let orders = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];
    for (round, order) in orders.iter().enumerate() {
        let mut pods = Pods::new(3);
        let growing = round == 0;
        pods.publish(if growing { &[] } else { &[0, 1, 2] });
        for (k, &i) in order.iter().enumerate() {
            if growing {
                pods.publish(&order[..=k]);
            }
            pods.nodes[i].spawn();
            thread::sleep(Duration::from_millis(150 * k as u64));
        }
        let (cluster, ids) = pods.wait_one_cluster();
        assert_eq!(ids.len(), 3, "order {order:?}");
        // One chain: a write on the node started last is read on the one started first.
        put(&path(&pods.nodes[order[2]], "hello"), format!("{cluster}\n").as_bytes());
        wait_content(&path(&pods.nodes[order[0]], "hello"), &format!("{cluster}\n"));
        for node in &pods.nodes {
            assert!(node.log().contains("settled on the same first membership"), "{}", node.log_tail(30));
        }
    }
}

/// A node whose data directory is wiped while the others run comes back at its address: it finds
/// the running cluster and joins it under a new id (the old identity is removed), instead of
/// founding a second cluster; the cluster has three voters and one chain again. A node restarted
/// with its data just starts.
#[test]
fn a_wiped_node_joins_the_running_cluster_and_a_restarted_one_just_starts() {
    let mut pods = Pods::new(3);
    pods.publish(&[0, 1, 2]);
    for node in &mut pods.nodes {
        node.spawn();
    }
    let (cluster, ids) = pods.wait_one_cluster();
    put(&path(&pods.nodes[0], "before"), b"kept\n");

    let wiped = 1;
    let old_id = pods.status(wiped)["node_id"].as_u64().unwrap();
    pods.nodes[wiped].kill9();
    pods.nodes[wiped] = Node::prepare(pods.opts());
    let addr = pods.addr(wiped);
    pods.nodes[wiped].set_listen(&addr);
    pods.nodes[wiped].spawn();
    let (cluster_again, new_ids) = pods.wait_one_cluster();
    assert_eq!(cluster_again, cluster, "the wiped node founded or joined another cluster");
    let new_id = pods.status(wiped)["node_id"].as_u64().unwrap();
    assert_ne!(new_id, old_id, "a wiped node must not come back under its old id");
    assert!(!new_ids.contains(&old_id) && new_ids.contains(&new_id), "{new_ids:?} (was {ids:?})");
    assert!(
        pods.nodes[wiped].log().contains("a cluster exists: joining it"),
        "{}",
        pods.nodes[wiped].log_tail(30)
    );
    wait_content(&path(&pods.nodes[wiped], "before"), "kept\n");
    put(&path(&pods.nodes[wiped], "after"), b"new\n");
    wait_content(&path(&pods.nodes[2], "after"), "new\n");

    // A restart with data skips discovery and rejoins as the same member.
    pods.nodes[2].kill9();
    pods.nodes[2].restart();
    let (cluster_after, ids_after) = pods.wait_one_cluster();
    assert_eq!((cluster_after, ids_after), (cluster, new_ids));
    let starts = pods.nodes[2].log();
    let last_start = &starts[starts.rfind("test harness: start #").unwrap()..];
    assert!(!last_start.contains("discovering"), "a node with data discovered again:\n{last_start}");
    for i in 0..3 {
        let (status, out, err) = pods.nodes[i].verify();
        assert!(status.success(), "verify of node {i}: {out}{err}");
    }
}

/// Discovery is refused without what it needs: contacts, or `--voters` room for the founders.
#[test]
fn bootstrap_expect_without_contacts_or_beyond_voters_is_refused() {
    let token = tempfile::NamedTempFile::new().unwrap();
    fs::write(token.path(), format!("{:032x}{:032x}\n", rand_u64(), rand_u64())).unwrap();
    let token = token.path().display().to_string();
    for (flags, says) in [
        (vec!["--bootstrap-expect", "3"], "needs contacts"),
        (vec!["--bootstrap-expect", "5", "--discover-dns", "x:1"], "raise --voters"),
        (vec!["--discover-dns", "x:1"], "--bootstrap-expect"),
    ] {
        let mut extra: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
        extra.extend(["--cluster-token-file".to_string(), token.clone()]);
        let mut node = Node::prepare(Opts { extra, ..Opts::default() });
        node.spawn();
        let status = node.wait_exit(Duration::from_secs(20)).expect("the node exits");
        assert!(!status.success());
        assert!(node.log().contains(says), "{flags:?}: {}", node.log_tail(10));
    }
}

/// A node killed while it discovers keeps its identity: restarted, it discovers again under the same
/// id, and the three still form one cluster.
#[test]
fn a_node_killed_while_discovering_keeps_its_id_and_the_cluster_still_forms() {
    let mut pods = Pods::new(3);
    pods.publish(&[0, 1, 2]);
    pods.nodes[0].spawn();
    let id_file = pods.nodes[0].data().join("identity.json");
    let deadline = Instant::now() + POLL;
    while !pods.nodes[0].log().contains("discovering the cluster") {
        assert!(Instant::now() < deadline, "{}", pods.nodes[0].log_tail(20));
        thread::sleep(Duration::from_millis(50));
    }
    let before = fs::read_to_string(&id_file).expect("the identity is saved before discovery");
    pods.nodes[0].kill9();
    pods.nodes[0].spawn();
    pods.nodes[1].spawn();
    pods.nodes[2].spawn();
    let (_, ids) = pods.wait_one_cluster();
    let id: Value = serde_json::from_str(&before).unwrap();
    assert!(ids.contains(&id["node_id"].as_u64().unwrap()), "the restarted node kept its id: {ids:?}");
    let after: Value = serde_json::from_str(&fs::read_to_string(&id_file).unwrap()).unwrap();
    assert_eq!(after["incarnation"], id["incarnation"], "the same incarnation: {after}");
}

/// Members known by DNS names (as pods are, by their StatefulSet names) are reached at a name's new
/// address: a member restarted with its data at another IP, its name now resolving there, is
/// replicated to again, because every reconnect resolves the name anew.
#[test]
fn a_member_known_by_name_is_reached_at_its_new_address_after_a_restart() {
    let (ips, port) = free_loopback_ips_and_port(4);
    let mut pods = Pods::new(3);
    // The three nodes of `pods` move to this test's addresses, each advertising a name.
    pods.ips = ips[..3].to_vec();
    pods.port = port;
    let name = |i: usize| format!("node{i}.{NAME}");
    let hosts = |at: &[&str]| -> String {
        at.iter().enumerate().map(|(i, ip)| format!("{ip} {NAME}\n{ip} {}\n", name(i))).collect()
    };
    let hosts_file = pods.hosts.clone();
    let write_hosts = |text: String| {
        let tmp = hosts_file.with_extension("new");
        fs::write(&tmp, text).unwrap();
        fs::rename(&tmp, &hosts_file).unwrap();
    };
    write_hosts(hosts(&[&ips[0], &ips[1], &ips[2]]));
    for (i, ip) in ips[..3].iter().enumerate() {
        let mut opts = pods.opts();
        opts.extra.extend(["--advertise".to_string(), format!("{}:{port}", name(i))]);
        let mut node = Node::prepare(opts);
        node.set_listen(&format!("{ip}:{port}"));
        pods.nodes[i] = node;
    }
    for node in &mut pods.nodes {
        node.spawn();
    }
    let (cluster, ids) = pods.wait_one_cluster();
    let status = pods.status(0);
    for m in status["members"].as_array().unwrap() {
        assert!(m["addr"].as_str().unwrap().starts_with("node"), "members are known by name: {status}");
    }
    let leader = (0..3).find(|i| pods.status(*i)["role"] == "leader").expect("a leader");
    let moved = (leader + 1) % 3;

    // The member stops, its name moves to a new address, and it starts there with its data.
    pods.nodes[moved].kill9();
    let mut at: Vec<&str> = ips[..3].iter().map(String::as_str).collect();
    at[moved] = &ips[3];
    write_hosts(hosts(&at));
    pods.nodes[moved].set_listen(&format!("{}:{port}", ips[3]));
    pods.nodes[moved].spawn();
    let (cluster_after, ids_after) = pods.wait_one_cluster();
    assert_eq!((cluster_after, ids_after), (cluster, ids));
    // The leader replicates to it at the new address: a write there shows on the moved member, and
    // the leader sees it reachable.
    put(&path(&pods.nodes[leader], "after-move"), b"here\n");
    wait_content(&path(&pods.nodes[moved], "after-move"), "here\n");
    let moved_id = pods.status(moved)["node_id"].as_u64().unwrap();
    let deadline = Instant::now() + POLL;
    loop {
        let view = pods.status(leader);
        let member = view["members"].as_array().unwrap().iter().find(|m| m["id"] == moved_id).cloned();
        if member.as_ref().is_some_and(|m| m["reachable"] == true) {
            break;
        }
        assert!(Instant::now() < deadline, "the leader never reached the moved member: {view}");
        thread::sleep(Duration::from_millis(100));
    }
}
