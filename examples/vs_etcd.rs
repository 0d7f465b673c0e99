//! Runs the same loads against lightchain's mounts and against a local etcd, in one run, and prints
//! both with their ratios.
//!
//! ```sh
//! examples/bench-vs-etcd.sh          # installs etcd when missing, builds, runs this
//! ```
//!
//! or by hand, after `cargo build --release` and with `etcd` on the `PATH`:
//! `cargo run --release --example vs_etcd`. Run by hand only, never as a test.
//!
//! The loads, 100-byte values unless said: one writer (p50/p99); 32 writers for 5 s (throughput and
//! p99), spread over the three members and on the leader alone; 1 MiB values from one writer; and
//! linearizable reads on the leader and on a follower; first for a single lightchain node beside a
//! 1-member etcd, then for a 3-node lightchain cluster beside a 3-member etcd. Everything is on
//! loopback, on ports this program picks, in temporary directories on the same disk; every process
//! it started is stopped (and every mount unmounted) on the way out, also on a panic.
//!
//! How each side is driven. lightchain: one write is `open(O_WRONLY|O_CREAT|O_TRUNC)` + `write` +
//! `close` on a mount, one read `open` + `read` + `close` (the default, linearizable read mode), each
//! from its own OS thread. etcd: one write is a unary `KV/Put`, one read a unary `KV/Range` with
//! `serializable = false` (linearizable), sent over gRPC by this program with the same tonic and prost
//! that lightchain uses, one HTTP/2 connection per member shared by the writers on it (what
//! `clientv3` does), from tasks on a 2-worker tokio runtime. The etcd messages below are the few
//! fields of etcd's `rpc.proto` that this needs; prost skips the fields it does not declare. No
//! `etcdctl` in a loop: a process spawn per request would dominate the figure.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::free_port;

/// How long each throughput load runs.
const RUN_FOR: Duration = Duration::from_secs(5);
/// Concurrent writers of the throughput loads.
const WRITERS: usize = 32;
/// Samples of the one-writer 100-byte load.
const ONE_WRITER_SAMPLES: usize = 1000;
/// Samples of the one-writer 1 MiB load.
const LARGE_SAMPLES: usize = 50;
/// Samples of each read load.
const READ_SAMPLES: usize = 2000;

/// Writes that failed, lightchain's or etcd's (counted, printed, and the processes' logs kept).
static FAILED_WRITES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn kill_term(child: &mut Child) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}

// ---------------------------------------------------------------------------------------------
// Samples.

/// Latencies of one load, and how long the load ran.
struct Figures {
    /// One latency per operation.
    samples: Vec<Duration>,
    /// Wall time of the whole load.
    wall: Duration,
}

impl Figures {
    fn pct(&self, p: f64) -> Duration {
        let mut s = self.samples.clone();
        s.sort();
        s[((s.len() as f64 - 1.0) * p).round() as usize]
    }
    fn rate(&self) -> f64 {
        self.samples.len() as f64 / self.wall.as_secs_f64()
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One row of the table: what was measured, and lightchain's and etcd's figures for it.
struct Row {
    /// The load.
    what: String,
    /// lightchain's figures.
    lc: Figures,
    /// etcd's figures.
    etcd: Figures,
    /// Whether the row is about throughput (else latency).
    throughput: bool,
}

fn print_rows(title: &str, rows: &[Row]) {
    println!("\n{title}");
    println!(
        "{:<42} {:>12} {:>12} {:>8}  {:>9} {:>9} {:>8}  {:>13}",
        "load", "lightchain", "etcd", "lc/etcd", "lc p99", "etcd p99", "lc/etcd", "p99/p50 lc etcd"
    );
    for r in rows {
        let (a, b, unit) = if r.throughput {
            (r.lc.rate(), r.etcd.rate(), "/s")
        } else {
            (ms(r.lc.pct(0.5)), ms(r.etcd.pct(0.5)), " ms")
        };
        let (pa, pb) = (ms(r.lc.pct(0.99)), ms(r.etcd.pct(0.99)));
        let tail = |f: &Figures| ms(f.pct(0.99)) / ms(f.pct(0.5));
        let fmt = |v: f64| if r.throughput { format!("{v:.0}{unit}") } else { format!("{v:.2}{unit}") };
        println!(
            "{:<42} {:>12} {:>12} {:>7.2}×  {:>6.2} ms {:>6.2} ms {:>7.2}×  {:>6.1}× {:>5.1}×",
            r.what,
            fmt(a),
            fmt(b),
            a / b,
            pa,
            pb,
            pa / pb,
            tail(&r.lc),
            tail(&r.etcd)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// lightchain.

/// A lightchain node of this bench: on drop, says whether it had exited and keeps its log when a
/// write failed, then stops like any [`common::Mounted`].
struct Node(common::Mounted);

impl std::ops::Deref for Node {
    type Target = common::Mounted;
    fn deref(&self) -> &common::Mounted {
        &self.0
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let pid = self.0.pid().unwrap_or(0);
        if let Some(status) = self.0.exited() {
            eprintln!("lightchain at {} had exited: {status}", self.0.mnt.display());
        }
        self.0.stop();
        if FAILED_WRITES.load(Ordering::Relaxed) > 0 || std::thread::panicking() {
            let kept = std::env::temp_dir().join(format!("vs_etcd-{}-{pid}.log", std::process::id()));
            if std::fs::copy(&self.0.log, &kept).is_ok() {
                eprintln!("a lightchain node's log is kept in {}", kept.display());
            }
        }
    }
}

/// `n` lightchain nodes, ready, with the leader first.
fn lightchain(binary: &Path, n: usize, token_dir: &Path) -> Vec<Node> {
    let mut nodes: Vec<Node> = if n == 1 {
        let node = common::Mounted::spawn(binary, "127.0.0.1:0", &[]);
        node.wait_ready(Duration::from_secs(60));
        vec![Node(node)]
    } else {
        common::static_cluster(binary, n, &token_dir.join("cluster-token"), &[])
            .into_iter()
            .map(Node)
            .collect()
    };
    if let Some(i) = nodes.iter().position(|m| m.is_leader()) {
        nodes.swap(0, i);
    }
    nodes
}

/// open(O_WRONLY|O_CREAT|O_TRUNC) + write + close, checking close's result (the commit): a
/// failed call is counted in `FAILED_WRITES` and reported, and the load goes on.
fn write_state(path: &Path, data: &[u8]) {
    if let Err((call, e)) = common::write_state(path, data) {
        if FAILED_WRITES.fetch_add(1, Ordering::Relaxed) < 5 {
            eprintln!("{call} of {} failed: {e}", path.display());
        }
    }
}

/// One thread doing `n` timed calls of `f`.
fn lc_serial(n: usize, mut f: impl FnMut(usize)) -> Figures {
    let begin = Instant::now();
    let samples = (0..n)
        .map(|i| {
            let start = Instant::now();
            f(i);
            start.elapsed()
        })
        .collect();
    Figures { samples, wall: begin.elapsed() }
}

/// `WRITERS` threads writing 100-byte states for `RUN_FOR`, writer `w` on `mounts[w % len]`.
fn lc_writers(mounts: &[&Path]) -> Figures {
    let stop = Arc::new(AtomicBool::new(false));
    let begin = Instant::now();
    let handles: Vec<_> = (0..WRITERS)
        .map(|w| {
            let stop = stop.clone();
            let path = mounts[w % mounts.len()].join(format!("c{w}"));
            std::thread::spawn(move || {
                let mut samples = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let start = Instant::now();
                    write_state(&path, &[b'x'; 100]);
                    samples.push(start.elapsed());
                }
                samples
            })
        })
        .collect();
    std::thread::sleep(RUN_FOR);
    stop.store(true, Ordering::Relaxed);
    let samples = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    Figures { samples, wall: begin.elapsed() }
}

// ---------------------------------------------------------------------------------------------
// etcd.

/// etcd's `ResponseHeader`, the fields read here.
#[derive(Clone, PartialEq, prost::Message)]
struct ResponseHeader {
    /// The member that answered.
    #[prost(uint64, tag = "2")]
    member_id: u64,
}

/// etcd's `PutRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct PutRequest {
    /// The key.
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    /// The value.
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// etcd's `PutResponse` (nothing of it is read).
#[derive(Clone, PartialEq, prost::Message)]
struct PutResponse {}

/// etcd's `RangeRequest`: one key, linearizable unless `serializable`.
#[derive(Clone, PartialEq, prost::Message)]
struct RangeRequest {
    /// The key.
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    /// Whether a member may answer from its own state, without a read index.
    #[prost(bool, tag = "7")]
    serializable: bool,
}

/// etcd's `KeyValue`, the value only.
#[derive(Clone, PartialEq, prost::Message)]
struct KeyValue {
    /// The value.
    #[prost(bytes = "vec", tag = "5")]
    value: Vec<u8>,
}

/// etcd's `RangeResponse`, the pairs only.
#[derive(Clone, PartialEq, prost::Message)]
struct RangeResponse {
    /// The pairs found.
    #[prost(message, repeated, tag = "2")]
    kvs: Vec<KeyValue>,
}

/// etcd's `StatusRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct StatusRequest {}

/// etcd's `StatusResponse`, the fields read here.
#[derive(Clone, PartialEq, prost::Message)]
struct StatusResponse {
    /// Who answered.
    #[prost(message, optional, tag = "1")]
    header: Option<ResponseHeader>,
    /// The member ID of the leader the answering member knows, 0 for none.
    #[prost(uint64, tag = "4")]
    leader: u64,
}

/// A gRPC connection to one etcd member.
#[derive(Clone)]
struct EtcdClient(tonic::client::Grpc<tonic::transport::Channel>);

impl EtcdClient {
    async fn connect(port: u16) -> Result<EtcdClient, tonic::transport::Error> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
            .tcp_nodelay(true)
            .connect()
            .await?;
        Ok(EtcdClient(
            tonic::client::Grpc::new(channel)
                .max_decoding_message_size(8 << 20)
                .max_encoding_message_size(8 << 20),
        ))
    }

    async fn call<Q, A>(&mut self, path: &'static str, req: Q) -> Result<A, tonic::Status>
    where
        Q: prost::Message + Send + Sync + 'static,
        A: prost::Message + Default + Send + Sync + 'static,
    {
        self.0.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let codec = tonic_prost::ProstCodec::<Q, A>::default();
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
        Ok(self.0.unary(tonic::Request::new(req), path, codec).await?.into_inner())
    }

    /// A put; a failed one is counted in `FAILED_WRITES` and reported, and the load goes on.
    async fn put(&mut self, key: &str, value: &[u8]) {
        let req = PutRequest { key: key.as_bytes().to_vec(), value: value.to_vec() };
        let put: Result<PutResponse, _> = self.call("/etcdserverpb.KV/Put", req).await;
        if let Err(e) = put {
            if FAILED_WRITES.fetch_add(1, Ordering::Relaxed) < 5 {
                eprintln!("etcd put of {key} ({} bytes) failed: {e}", value.len());
            }
        }
    }

    async fn get(&mut self, key: &str) -> Vec<u8> {
        let req = RangeRequest { key: key.as_bytes().to_vec(), serializable: false };
        let resp: RangeResponse = self.call("/etcdserverpb.KV/Range", req).await.expect("etcd Range");
        resp.kvs.into_iter().next().map(|kv| kv.value).unwrap_or_default()
    }

    /// (this member's ID, the leader's ID) once it knows a leader.
    async fn status(&mut self) -> Option<(u64, u64)> {
        let resp: StatusResponse =
            self.call("/etcdserverpb.Maintenance/Status", StatusRequest {}).await.ok()?;
        let me = resp.header?.member_id;
        (resp.leader != 0).then_some((me, resp.leader))
    }
}

/// A running etcd member, stopped on drop (its data directory removed with it).
struct Etcd {
    /// The process.
    child: Child,
    /// Holds the data directory and the log.
    _dir: tempfile::TempDir,
    /// The client port on 127.0.0.1.
    port: u16,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            eprintln!("etcd on port {} had exited: {status}", self.port);
        }
        kill_term(&mut self.child);
        if FAILED_WRITES.load(Ordering::Relaxed) > 0 || std::thread::panicking() {
            let kept =
                std::env::temp_dir().join(format!("vs_etcd-{}-etcd-{}.log", std::process::id(), self.port));
            if std::fs::copy(self._dir.path().join("etcd.log"), &kept).is_ok() {
                eprintln!("an etcd member's log is kept in {}", kept.display());
            }
        }
    }
}

/// An `n`-member etcd cluster on loopback, ready, with connected clients, the leader first.
async fn etcd(n: usize) -> (Vec<Etcd>, Vec<EtcdClient>) {
    let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
    let initial: Vec<String> =
        ports.iter().enumerate().map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}")).collect();
    let initial = initial.join(",");
    let mut members: Vec<Etcd> = ports
        .iter()
        .enumerate()
        .map(|(i, &(client, peer))| {
            let dir = tempfile::tempdir().expect("tempdir");
            let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
            let (c, p) = (format!("http://127.0.0.1:{client}"), format!("http://127.0.0.1:{peer}"));
            let child = Command::new("etcd")
                .args(["--name", &format!("m{i}")])
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
                .args(["--listen-peer-urls", &p, "--initial-advertise-peer-urls", &p])
                .args(["--initial-cluster", &initial, "--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", &format!("bench-{}", std::process::id())])
                .args(["--logger", "zap", "--log-level", "warn"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start etcd (is it installed? examples/bench-vs-etcd.sh installs it)");
            Etcd { child, _dir: dir, port: client }
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut clients = Vec::new();
    let mut leader = 0;
    for (i, m) in members.iter().enumerate() {
        loop {
            assert!(Instant::now() < deadline, "etcd did not become ready");
            if let Ok(mut c) = EtcdClient::connect(m.port).await {
                if let Some((me, lead)) = c.status().await {
                    if me == lead {
                        leader = i;
                    }
                    clients.push(c);
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    members.swap(0, leader);
    clients.swap(0, leader);
    (members, clients)
}

/// One task doing `n` timed calls.
async fn etcd_serial<F, Fut>(n: usize, mut f: F) -> Figures
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let begin = Instant::now();
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        f(i).await;
        samples.push(start.elapsed());
    }
    Figures { samples, wall: begin.elapsed() }
}

/// `WRITERS` tasks putting 100-byte values for `RUN_FOR`, writer `w` through `clients[w % len]`.
async fn etcd_writers(clients: &[EtcdClient]) -> Figures {
    let stop = Arc::new(AtomicBool::new(false));
    let begin = Instant::now();
    let handles: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (stop, mut client) = (stop.clone(), clients[w % clients.len()].clone());
            tokio::spawn(async move {
                let mut samples = Vec::new();
                let key = format!("c{w}");
                while !stop.load(Ordering::Relaxed) {
                    let start = Instant::now();
                    client.put(&key, &[b'x'; 100]).await;
                    samples.push(start.elapsed());
                }
                samples
            })
        })
        .collect();
    tokio::time::sleep(RUN_FOR).await;
    stop.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    for h in handles {
        samples.extend(h.await.unwrap());
    }
    Figures { samples, wall: begin.elapsed() }
}

// ---------------------------------------------------------------------------------------------

fn read_all(path: &Path, buf: &mut Vec<u8>) {
    buf.clear();
    std::fs::File::open(path).unwrap().read_to_end(buf).unwrap();
}

/// Every load on an `n`-member lightchain cluster, then on an `n`-member etcd.
fn compare(rt: &tokio::runtime::Runtime, binary: &Path, n: usize) -> Vec<Row> {
    use rand::RngCore;
    let small = [b'a'; 100];
    let mut large = vec![0u8; 1 << 20];
    rand::thread_rng().fill_bytes(&mut large);
    let mut rows: Vec<(String, bool, Option<Figures>, Option<Figures>)> = Vec::new();
    let mut row = |what: &str, throughput: bool, lc: Option<Figures>, etcd: Option<Figures>| match rows
        .iter_mut()
        .find(|r| r.0 == what)
    {
        Some(r) => {
            r.2 = lc.or(r.2.take());
            r.3 = etcd.or(r.3.take());
        }
        None => rows.push((what.to_owned(), throughput, lc, etcd)),
    };
    let on = if n == 1 { "" } else { " on the leader" };

    {
        let token_dir = tempfile::tempdir().unwrap();
        let nodes = lightchain(binary, n, token_dir.path());
        let lead = &nodes[0].mnt;
        for i in 0..50 {
            write_state(&lead.join(format!("w{i}")), &small);
        }
        let f = lc_serial(ONE_WRITER_SAMPLES, |i| write_state(&lead.join(format!("w{}", i % 50)), &small));
        row(&format!("100 B write, 1 writer{on}"), false, Some(f), None);
        if n > 1 {
            let mounts: Vec<&Path> = nodes.iter().map(|m| m.mnt.as_path()).collect();
            row("100 B writes, 32 writers over 3 members", true, Some(lc_writers(&mounts)), None);
        }
        row(&format!("100 B writes, 32 writers{on}"), true, Some(lc_writers(&[lead])), None);
        let f = lc_serial(LARGE_SAMPLES, |i| write_state(&lead.join(format!("big{}", i % 5)), &large));
        row(&format!("1 MiB write, 1 writer{on}"), false, Some(f), None);
        let mut buf = Vec::new();
        let f = lc_serial(READ_SAMPLES, |_| read_all(&lead.join("w1"), &mut buf));
        row(&format!("linearizable 100 B read{on}"), false, Some(f), None);
        if n > 1 {
            let foll = &nodes[1].mnt;
            let f = lc_serial(READ_SAMPLES, |_| read_all(&foll.join("w1"), &mut buf));
            row("linearizable 100 B read on a follower", false, Some(f), None);
        }
    }

    rt.block_on(async {
        let (_members, clients) = etcd(n).await;
        let mut lead = clients[0].clone();
        for i in 0..50 {
            lead.put(&format!("w{i}"), &small).await;
        }
        let f = etcd_serial(ONE_WRITER_SAMPLES, |i| {
            let mut c = lead.clone();
            async move { c.put(&format!("w{}", i % 50), &small).await }
        })
        .await;
        row(&format!("100 B write, 1 writer{on}"), false, None, Some(f));
        if n > 1 {
            row("100 B writes, 32 writers over 3 members", true, None, Some(etcd_writers(&clients).await));
        }
        row(&format!("100 B writes, 32 writers{on}"), true, None, Some(etcd_writers(&clients[..1]).await));
        let f = etcd_serial(LARGE_SAMPLES, |i| {
            let (mut c, large) = (lead.clone(), &large);
            async move { c.put(&format!("big{}", i % 5), large).await }
        })
        .await;
        row(&format!("1 MiB write, 1 writer{on}"), false, None, Some(f));
        let f = etcd_serial(READ_SAMPLES, |_| {
            let mut c = lead.clone();
            async move { assert_eq!(c.get("w1").await.len(), 100) }
        })
        .await;
        row(&format!("linearizable 100 B read{on}"), false, None, Some(f));
        if n > 1 {
            let foll = clients[1].clone();
            let f = etcd_serial(READ_SAMPLES, |_| {
                let mut c = foll.clone();
                async move { assert_eq!(c.get("w1").await.len(), 100) }
            })
            .await;
            row("linearizable 100 B read on a follower", false, None, Some(f));
        }
    });

    rows.into_iter()
        .map(|(what, throughput, lc, etcd)| Row { what, throughput, lc: lc.unwrap(), etcd: etcd.unwrap() })
        .collect()
}

fn etcd_version() -> String {
    Command::new("etcd")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "etcd: not found".to_owned())
}

fn main() {
    let binary = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("lightchain");
    if !binary.exists() {
        eprintln!("{} is missing: run `cargo build --release` first", binary.display());
        std::process::exit(2);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    println!("lightchain beside {} on loopback, 100-byte values unless said", etcd_version());
    println!(
        "first columns: p50 latency, or writes/s for the 32-writer rows; then p99 latency; then the tail,"
    );
    println!("p99 ÷ p50. lc/etcd = lightchain ÷ etcd: below 1 lightchain is faster for latency, above 1 for writes/s");
    let single = compare(&rt, &binary, 1);
    let three = compare(&rt, &binary, 3);
    print_rows("single node beside a 1-member etcd", &single);
    print_rows("3 members beside a 3-member etcd", &three);
    let failed = FAILED_WRITES.load(Ordering::Relaxed);
    if failed > 0 {
        println!("\n{failed} writes failed (see above; the processes' logs were kept)");
    }
}
