//! `lightchain token rotate` (issue 20 §3): the cluster token is replaced on every member while writes go
//! on through two mounts, and afterwards the old token — the one a removed member still holds — is refused
//! everywhere, on the operator's RPCs and the peers' alike, while the new one works. A member restarted with
//! the stale `--cluster-token-file` keeps the rotated token and catches up.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::cluster::*;
use common::*;
use lightchain::rpc::pb::admin_client::AdminClient;
use lightchain::rpc::pb::cluster_client::ClusterClient;
use lightchain::rpc::pb::{HelloRequest, JoinRequest, StatusRequest};
use lightchain::store::identity::ClusterToken;

/// The code `Admin.Status`, `Cluster.Hello` and `Cluster.Join` on `addr` answer to `token`.
fn codes(rt: &tokio::runtime::Runtime, addr: &str, token: &ClusterToken) -> Vec<(&'static str, tonic::Code)> {
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        let stamp = |r: &mut tonic::metadata::MetadataMap| {
            lightchain::rpc::peer::attach_token(r, token);
            r.insert("lc-from", "4242424242".parse().unwrap());
            r.insert("lc-incarnation", "7".parse().unwrap());
        };
        let code = |r: Result<(), tonic::Status>| r.err().map_or(tonic::Code::Ok, |s| s.code());
        let mut status = tonic::Request::new(StatusRequest {});
        stamp(status.metadata_mut());
        let mut hello = tonic::Request::new(HelloRequest::default());
        stamp(hello.metadata_mut());
        let mut join = tonic::Request::new(JoinRequest {
            addr: "127.0.0.1:1".into(),
            node_id: 4242424242,
            incarnation: 7,
        });
        stamp(join.metadata_mut());
        vec![
            ("Admin.Status", code(AdminClient::new(channel.clone()).status(status).await.map(drop))),
            ("Cluster.Hello", code(ClusterClient::new(channel.clone()).hello(hello).await.map(drop))),
            ("Cluster.Join", code(ClusterClient::new(channel).join(join).await.map(drop))),
        ]
    })
}

#[test]
fn token_rotate_under_load_refuses_the_old_token_afterwards() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    let leader = c.wait_leader(&c.all());
    // A member that is removed before the rotation: it keeps the old token in its data directory.
    let removed = c.add_joiner(&[leader], &[]);
    let run = c.cli(&["member", "remove", &c.ids[removed].to_string(), "--addr", &c.addrs[leader]]);
    assert!(run.0.success(), "member remove: {run:?}");
    let leader = c.wait_leader(&[0, 1, 2]);
    c.wait_membership(leader, 3, 0);
    let old = ClusterToken::read_file(&c.token_file).unwrap();
    let stolen = ClusterToken::read_file(&c.node(removed).data().join("cluster-token")).unwrap();
    assert_eq!(stolen, old);
    let rt = tokio::runtime::Runtime::new().unwrap();
    // The control: before the rotation the old token is let in (Join and Hello as a new node would be).
    for (rpc, code) in codes(&rt, &c.addrs[leader], &old) {
        assert!(
            matches!(code, tonic::Code::Ok | tonic::Code::PermissionDenied),
            "before: {rpc} answered {code:?}"
        );
    }

    // Writers on the leader's mount and a follower's (forwarded to the leader) during the rotation.
    let follower = (0..3).find(|i| *i != leader).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = [leader, follower]
        .into_iter()
        .map(|i| {
            let dir = c.path(i, "");
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut written = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    let name = format!("w{i}-{n}");
                    if let Err(step) = write_with_flags(
                        &dir.join(&name),
                        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
                        name.as_bytes(),
                    ) {
                        panic!("a write during the rotation failed: {name}: {step:?}");
                    }
                    written.push(name);
                    n += 1;
                }
                written
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let new_file = c.node(leader).data().parent().unwrap().join("new-token");
    let new = ClusterToken::generate();
    std::fs::write(&new_file, format!("{}\n", new.expose())).unwrap();
    let started = std::time::Instant::now();
    let run = c.cli(&[
        "token",
        "rotate",
        "--new-token-file",
        new_file.to_str().unwrap(),
        "--addr",
        &c.addrs[follower],
        "--cluster-token-file",
        c.token_file.to_str().unwrap(),
    ]);
    let took = started.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let written: Vec<String> = writers.into_iter().flat_map(|w| w.join().expect("a writer failed")).collect();
    assert!(run.0.success(), "token rotate: {run:?}");
    eprintln!("token rotate took {took:?}; {} writes went on meanwhile", written.len());
    assert!(written.len() > 4, "the writers hardly ran: {written:?}");
    let answer: serde_json::Value = serde_json::from_str(run.1.trim()).unwrap();
    assert_eq!(answer["members"].as_array().unwrap().len(), 3, "{answer}");
    c.wait_converged(&[0, 1, 2]);
    for name in &written {
        assert_eq!(read_string(&c.path(leader, name)), *name, "a write made during the rotation is missing");
    }

    // Afterwards: the old token (the removed member's) is refused on every member, the new one works.
    for i in 0..3 {
        for (rpc, code) in codes(&rt, &c.addrs[i], &old) {
            assert_eq!(
                code,
                tonic::Code::Unauthenticated,
                "member {i}: {rpc} with the old token answered {code:?}"
            );
        }
        let answers = codes(&rt, &c.addrs[i], &new);
        assert_eq!(answers[0].1, tonic::Code::Ok, "member {i}: Admin.Status with the new token: {answers:?}");
        assert_eq!(
            ClusterToken::read_file(&c.node(i).data().join("cluster-token")).unwrap(),
            new,
            "member {i}"
        );
        let (run, out, err) = c.node(i).status_cli(&[]);
        assert!(run.success(), "member {i}: status with the data directory's (new) token: {out}{err}");
    }
    let (run, _, err) = c.cli(&[
        "status",
        "--addr",
        &c.addrs[leader],
        "--cluster-token-file",
        c.token_file.to_str().unwrap(),
    ]);
    assert!(!run.success(), "status with the old token succeeded");
    assert!(err.contains("token"), "{err}");

    // A member restarted with the stale --cluster-token-file (the harness passes the old file) keeps the
    // new token and catches up with a write it missed.
    c.kill9(follower);
    put(&c.path(leader, "while-away"), b"after the rotation\n");
    c.restart(follower);
    c.wait_converged(&[0, 1, 2]);
    assert_eq!(read_string(&c.path(follower, "while-away")), "after the rotation\n");
    assert!(
        c.node(follower).log().contains("retired by `lightchain token rotate`"),
        "{}",
        c.node(follower).log_tail(20)
    );
    put(&c.path(follower, "from-restarted"), b"x\n");
    assert_eq!(read_string(&c.path(leader, "from-restarted")), "x\n");
}

/// A rotation that cannot reach every member is aborted on all of them: nothing changed, the old token
/// still works and the new one is refused; once the member is back, the same command completes.
#[test]
fn token_rotate_with_a_member_down_changes_nothing_then_completes() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    let leader = c.wait_leader(&c.all());
    let down = (0..3).find(|i| *i != leader).unwrap();
    c.kill9(down);
    let old = ClusterToken::read_file(&c.token_file).unwrap();
    let new = ClusterToken::generate();
    let new_file = c.node(leader).data().parent().unwrap().join("new-token");
    std::fs::write(&new_file, format!("{}\n", new.expose())).unwrap();
    let rotate = |c: &Cluster| {
        c.cli(&[
            "token",
            "rotate",
            "--new-token-file",
            new_file.to_str().unwrap(),
            "--addr",
            &c.addrs[leader],
            "--cluster-token-file",
            c.token_file.to_str().unwrap(),
        ])
    };
    let run = rotate(&c);
    assert_eq!(run.0.code(), Some(1), "a rotation with a member down: {run:?}");
    assert!(run.2.contains("aborted") && run.2.contains("nothing changed"), "{}", run.2);
    let rt = tokio::runtime::Runtime::new().unwrap();
    for i in (0..3).filter(|i| *i != down) {
        let with_old = codes(&rt, &c.addrs[i], &old);
        assert_eq!(
            with_old[0].1,
            tonic::Code::Ok,
            "member {i}: the old token after an aborted rotation: {with_old:?}"
        );
        let with_new = codes(&rt, &c.addrs[i], &new);
        assert!(
            with_new.iter().all(|(_, code)| *code == tonic::Code::Unauthenticated),
            "member {i}: the new token after an aborted rotation: {with_new:?}"
        );
        assert_eq!(ClusterToken::read_file(&c.node(i).data().join("cluster-token")).unwrap(), old);
    }
    c.restart(down);
    let run = rotate(&c);
    assert!(run.0.success(), "the rotation once every member is up: {run:?}");
    for i in 0..3 {
        assert_eq!(codes(&rt, &c.addrs[i], &old)[0].1, tonic::Code::Unauthenticated, "member {i}");
        assert_eq!(codes(&rt, &c.addrs[i], &new)[0].1, tonic::Code::Ok, "member {i}");
    }
    put(&c.path(down, "after"), b"1\n");
    assert_eq!(read_string(&c.path(leader, "after")), "1\n");
}
