//! Who may talk to a node (DESIGN §1.7, issue 8 item 4), over real processes and real gRPC: a stranger on
//! the peer port — no token, a wrong token, the right token with a node id that is not a member, or a member
//! speaking for another node — is refused on **every** RPC of `proto/lightchain.proto` and changes nothing.
//!
//! The stranger sends well-formed messages that would do harm if admitted: a vote and append-entries with a
//! far higher term (they would depose the leader), a snapshot, a forwarded `put`. Afterwards every member has
//! the same head as before, none has taken the forged term, and the forged state exists nowhere.

mod common;

use std::time::Duration;

use common::cluster::*;
use common::*;
use lightchain::chain::{Content, RequestId, StateId, Transaction, TxOp};
use lightchain::consensus::typ::{CommittedLeaderId, LogId, Vote};
use lightchain::rpc::pb::admin_client::AdminClient;
use lightchain::rpc::pb::cluster_client::ClusterClient;
use lightchain::rpc::pb::raft_client::RaftClient;
use lightchain::rpc::pb::{
    ForwardRequest, HelloRequest, JoinRequest, LimitsRequest, MemberOp, MemberRequest, RaftMessage,
    ReadIndexRequest, SnapshotChunk, StatusRequest, TokenOp, TokenRequest,
};
use tonic::metadata::MetadataMap;
use tonic::{Code, Request};

/// What the stranger presents.
#[derive(Clone, Debug)]
struct Credentials {
    /// `lc-token`, if any.
    token: Option<String>,
    /// `lc-from`.
    from: u64,
    /// `lc-incarnation`.
    incarnation: u64,
    /// `lc-cluster`.
    cluster: String,
    /// `lc-to`, the node the message is for (a member's messages always name it).
    to: Option<u64>,
}

impl Credentials {
    fn attach(&self, md: &mut MetadataMap) {
        if let Some(t) = &self.token {
            md.insert("lc-token", t.parse().unwrap());
        }
        md.insert("lc-from", self.from.to_string().parse().unwrap());
        md.insert("lc-incarnation", self.incarnation.to_string().parse().unwrap());
        if !self.cluster.is_empty() {
            md.insert("lc-cluster", self.cluster.parse().unwrap());
        }
        if let Some(to) = self.to {
            md.insert("lc-to", to.to_string().parse().unwrap());
        }
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut r = Request::new(message);
        self.attach(r.metadata_mut());
        r.set_timeout(Duration::from_secs(5));
        r
    }
}

/// Each RPC of the protocol, with the code it answered (`Ok` as `Code::Ok`) and the refusal's message.
/// With `raft_only`, only the `Raft` service (for a member's own credentials, which may forward).
async fn call_every_rpc(
    addr: &str,
    who: &Credentials,
    claimed_leader: u64,
    raft_only: bool,
) -> Vec<(&'static str, Code, String)> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let code = |r: Result<(), tonic::Status>| {
        r.err().map_or((Code::Ok, String::new()), |s| (s.code(), s.message().to_owned()))
    };
    let vote = Vote::new(FORGED_TERM, claimed_leader);
    let mut out = Vec::new();

    let mut raft = RaftClient::new(channel.clone());
    let append = openraft::raft::AppendEntriesRequest::<lightchain::consensus::TypeConfig> {
        vote,
        prev_log_id: None,
        entries: vec![],
        leader_commit: Some(LogId::new(
            CommittedLeaderId { term: FORGED_TERM, node_id: claimed_leader },
            1_000_000,
        )),
    };
    let payload = serde_json::to_vec(&append).unwrap();
    out.push((
        "Raft.AppendEntries",
        code(
            raft.append_entries(who.request(RaftMessage { payload: payload.clone(), ..Default::default() }))
                .await
                .map(drop),
        ),
    ));
    // On the stream a stranger is refused when it opens, a member speaking for another node at its
    // first message.
    let messages = tokio_stream::iter(vec![RaftMessage { payload, ..Default::default() }]);
    let streamed = match raft.append_stream(who.request(messages)).await {
        Err(refused) => Err(refused),
        Ok(answers) => match answers.into_inner().message().await {
            Err(refused) => Err(refused),
            Ok(answer) => {
                panic!("AppendStream answered {answer:?} to {} claiming {claimed_leader}", who.from)
            }
        },
    };
    out.push(("Raft.AppendStream", code(streamed)));
    let vote_req = openraft::raft::VoteRequest::<lightchain::consensus::TypeConfig>::new(vote, None);
    let payload = serde_json::to_vec(&vote_req).unwrap();
    out.push((
        "Raft.Vote",
        code(raft.vote(who.request(RaftMessage { payload, ..Default::default() })).await.map(drop)),
    ));
    let header = serde_json::json!({ "vote": vote, "manifest": { "meta": {
        "last_log_id": null,
        "last_membership": { "log_id": null, "membership": { "configs": [], "nodes": {} } },
        "snapshot_id": "forged"
    }, "head": null } });
    let chunk = SnapshotChunk { header: serde_json::to_vec(&header).unwrap(), blocks: vec![], last: true };
    let stream = tokio_stream::iter(vec![chunk]);
    out.push(("Raft.InstallSnapshot", code(raft.install_snapshot(who.request(stream)).await.map(drop))));
    if raft_only {
        return out.into_iter().map(|(n, (c, m))| (n, c, m)).collect();
    }

    let mut cluster = ClusterClient::new(channel.clone());
    let tx = Transaction {
        request: RequestId { node: who.from, incarnation: 1, seq: 1 },
        acked_below: 1,
        op: TxOp::Put {
            id: StateId::parse("forged").unwrap(),
            content: Content::from(&b"by a stranger"[..]),
            uid: 0,
            gid: 0,
            ino: None,
        },
    };
    let txs = serde_json::to_vec(&vec![tx]).unwrap();
    out.push((
        "Cluster.Forward",
        code(cluster.forward(who.request(ForwardRequest { txs, ..Default::default() })).await.map(drop)),
    ));
    out.push((
        "Cluster.ReadIndex",
        code(cluster.read_index(who.request(ReadIndexRequest {})).await.map(drop)),
    ));
    out.push(("Cluster.Hello", code(cluster.hello(who.request(HelloRequest::default())).await.map(drop))));
    // A join under the sender's id, which is not the one derived from the address and incarnation: had it
    // been admitted, the stranger would be a learner.
    let join = JoinRequest { addr: "127.0.0.1:1".into(), node_id: who.from, incarnation: who.incarnation };
    out.push(("Cluster.Join", code(cluster.join(who.request(join)).await.map(drop))));

    let mut admin = AdminClient::new(channel);
    out.push(("Admin.Status", code(admin.status(who.request(StatusRequest {})).await.map(drop))));
    let list = MemberRequest { op: MemberOp::List as i32, id: 0 };
    out.push(("Admin.Member", code(admin.member(who.request(list)).await.map(drop))));
    // A read of the limits (0 changes nothing), so an admitted call leaves the chain as it was.
    let read_limits = LimitsRequest { max_state_size: 0 };
    out.push(("Admin.Limits", code(admin.limits(who.request(read_limits)).await.map(drop))));
    // Where a token rotation stands (changes nothing).
    let token_status = TokenRequest { op: TokenOp::Status as i32, token: String::new() };
    out.push(("Admin.Token", code(admin.token(who.request(token_status)).await.map(drop))));
    out.into_iter().map(|(n, (c, m))| (n, c, m)).collect()
}

/// Every RPC name in `proto/lightchain.proto`, so a new RPC cannot be left out of this test unnoticed.
fn rpcs_in_proto() -> Vec<String> {
    let proto =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/proto/lightchain.proto")).unwrap();
    let mut service = String::new();
    let mut names = Vec::new();
    for line in proto.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("service ") {
            service = rest.split_whitespace().next().unwrap().to_string();
        } else if let Some(rest) = line.strip_prefix("rpc ") {
            names.push(format!("{service}.{}", rest.split('(').next().unwrap().trim()));
        }
    }
    names
}

/// (head height, head hash) of every member.
fn heads(c: &Cluster) -> Vec<(u64, String)> {
    c.all().into_iter().map(|i| c.head(i)).collect()
}

/// The forged messages carry this term: had one been admitted, a member's term would have jumped to it.
const FORGED_TERM: u64 = 1_000_000;

#[test]
fn strangers_are_refused_on_every_rpc_and_change_nothing() {
    let c = Cluster::start(3, ClusterOpts::default());
    let leader = c.wait_leader(&c.all());
    let follower = (0..3).find(|i| *i != leader).unwrap();
    let other = (0..3).find(|i| *i != leader && *i != follower).unwrap();
    // Let the cluster settle (a committed write means the leader's first entries are applied).
    put(&c.path(leader, "settled"), b"yes\n");
    c.wait_converged(&c.all());
    let before = heads(&c);
    let token = std::fs::read_to_string(&c.token_file).unwrap().trim().to_string();
    let identity: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.node(follower).data().join("identity.json")).unwrap())
            .unwrap();
    let cluster_id = identity["cluster_id"].as_str().unwrap().to_string();
    let member = |i: usize| Credentials {
        token: Some(token.clone()),
        from: c.ids[i],
        incarnation: serde_json::from_slice::<serde_json::Value>(
            &std::fs::read(c.node(i).data().join("identity.json")).unwrap(),
        )
        .unwrap()["incarnation"]
            .as_u64()
            .unwrap(),
        cluster: cluster_id.clone(),
        to: None,
    };
    let unknown_id = 4_242_424_242;
    let stranger = |token: Option<String>| Credentials {
        token,
        from: unknown_id,
        incarnation: 7,
        cluster: String::new(),
        to: None,
    };
    let cases: Vec<(&str, Credentials, u64, Vec<Code>)> = vec![
        ("no token", stranger(None), unknown_id, vec![Code::Unauthenticated]),
        ("a wrong token", stranger(Some("0".repeat(64))), unknown_id, vec![Code::Unauthenticated]),
        (
            "a token with one character changed",
            stranger(Some(format!("x{}", &token[1..]))),
            unknown_id,
            vec![Code::Unauthenticated],
        ),
        (
            "the right token and an unknown node id",
            stranger(Some(token.clone())),
            unknown_id,
            vec![Code::PermissionDenied],
        ),
        // The right token and an empty cluster id (what used to be admitted as "a node still starting").
        (
            "the right token, an empty cluster id and an unused node id",
            Credentials { cluster: String::new(), ..stranger(Some(token.clone())) },
            unknown_id,
            vec![Code::PermissionDenied],
        ),
    ];
    let expected_rpcs = rpcs_in_proto();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for target in [leader, follower] {
        let addr = c.addrs[target].clone();
        for (what, who, claimed, codes) in &cases {
            // Addressed to the member asked, so each is refused for who it is, not for a missing `lc-to`.
            let who = &Credentials { to: Some(c.ids[target]), ..who.clone() };
            let answers = rt.block_on(call_every_rpc(&addr, who, *claimed, false));
            let names: Vec<String> = answers.iter().map(|(n, _, _)| n.to_string()).collect();
            assert_eq!(names, expected_rpcs, "the test must call every RPC of the protocol");
            for (rpc, code, message) in answers {
                // The operator's status, member list and limits need the token only (the CLI is not a member);
                // so does a `Hello` from a node without a cluster (one discovering its cluster, or
                // replacing a member that lost its data): it reads no more than the status, and
                // leaves no trace.
                let operator = rpc == "Admin.Status"
                    || rpc == "Admin.Member"
                    || rpc == "Admin.Limits"
                    || rpc == "Admin.Token"
                    || (rpc == "Cluster.Hello" && who.cluster.is_empty());
                let allowed: &[Code] =
                    if operator && who.token.as_deref() == Some(&token) { &[Code::Ok] } else { codes };
                assert!(
                    allowed.contains(&code),
                    "member {target}, {what}: {rpc} answered {code:?} ({message}), expected {allowed:?}"
                );
                assert!(
                    !message.contains("lc-to"),
                    "member {target}, {what}: {rpc} refused for lc-to: {message}"
                );
            }
        }
        // A member's own credentials, speaking for another member: a vote for, or entries and a snapshot
        // from, a leader that is not the sender.
        let impostor = Credentials { to: Some(c.ids[target]), ..member(other) };
        let named = c.ids[if target == leader { follower } else { leader }];
        let answers = rt.block_on(call_every_rpc(&addr, &impostor, named, true));
        assert_eq!(answers.len(), 4);
        for (rpc, code, message) in answers {
            assert_eq!(
                code,
                Code::PermissionDenied,
                "member {target}: {rpc} naming another node answered {code:?}"
            );
            assert!(
                message.contains("naming node"),
                "member {target}: {rpc} refused for another reason: {message}"
            );
        }
    }
    // Nothing changed: same heads everywhere, no term near the forged one (an election the loaded machine
    // holds on its own is fine), and no forged state anywhere.
    assert_eq!(heads(&c), before, "a refused stranger changed the chain");
    for i in c.all() {
        let term = c.status(i)["term"].as_u64().unwrap();
        assert!(term < FORGED_TERM, "member {i} adopted the forged term ({term})");
        assert!(!c.path(i, "forged").exists(), "member {i} has the forged state");
        let members = c.status(i)["members"].as_array().unwrap().len();
        assert_eq!(members, 3, "member {i}: a refused join changed the membership");
        let (run, out, err) = c.node(i).status_cli(&[]);
        assert!(run.success(), "member {i}: `lightchain status` with the data directory's token: {out}{err}");
    }
    // Without the token the CLI is refused too.
    let (run, _, err) =
        c.cli(&["status", "--addr", &c.addrs[leader], "--cluster-token-file", "/nonexistent/cluster-token"]);
    assert!(!run.success(), "status without a token succeeded");
    assert!(err.contains("token"), "status without a token should say why: {err}");
}

#[test]
fn a_static_cluster_member_without_a_token_and_a_public_listen_without_one_are_refused() {
    // --peer without --cluster-token-file on a new directory: refused before anything listens.
    let mut n = Node::prepare(Opts { extra: vec!["--peer".into(), "127.0.0.1:1".into()], ..Opts::default() });
    n.spawn();
    let status = n.wait_exit(Duration::from_secs(30)).expect("a member without a token must exit");
    assert!(!status.success());
    assert!(
        n.log().contains("--cluster-token-file"),
        "the refusal should name the flag:\n{}",
        n.log_tail(20)
    );
    // A non-loopback listen without a token: refused.
    let extra = vec!["--advertise".to_string(), "192.0.2.1:7070".to_string()];
    let mut n = Node::prepare(Opts { extra, ..Opts::default() });
    n.set_listen("0.0.0.0:0");
    n.spawn();
    let status = n.wait_exit(Duration::from_secs(30)).expect("a public listen without a token must exit");
    assert!(!status.success());
    assert!(n.log().contains("without a cluster token"), "{}", n.log_tail(20));
}

#[test]
fn a_second_process_on_one_data_directory_is_refused_and_a_lone_node_makes_its_own_token() {
    let n = Node::start(Opts::default());
    let token = n.data().join("cluster-token");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&token).expect("a lone node makes a token").permissions().mode() & 0o777,
        0o600
    );
    let other_mount = tempfile::tempdir().unwrap();
    let data = n.data();
    let run = n.run_cli(&[
        "mount",
        other_mount.path().to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(!run.0.success(), "a second process on the same data directory started");
    assert!(run.2.contains("in use by another lightchain process"), "{}", run.2);
    // The first one still serves.
    put(&n.path("still-here"), b"yes\n");
    assert_eq!(read_string(&n.path("still-here")), "yes\n");
}

/// A member's credentials as the test reads them from its data directory (`lc-to` unset).
fn credentials(c: &Cluster, i: usize) -> Credentials {
    let identity: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.node(i).data().join("identity.json")).unwrap()).unwrap();
    Credentials {
        token: Some(std::fs::read_to_string(&c.token_file).unwrap().trim().to_string()),
        from: c.ids[i],
        incarnation: identity["incarnation"].as_u64().unwrap(),
        cluster: identity["cluster_id"].as_str().unwrap().to_string(),
        to: None,
    }
}

/// Asserts that every answer is `PERMISSION_DENIED` with a message containing `reason`.
fn assert_refused(answers: &[(&'static str, Code, String)], reason: &str, what: &str) {
    assert!(!answers.is_empty());
    for (rpc, code, message) in answers {
        assert_eq!(*code, Code::PermissionDenied, "{what}: {rpc} answered {code:?} ({message})");
        assert!(
            message.contains(reason),
            "{what}: {rpc} refused for another reason than {reason:?}: {message}"
        );
    }
}

/// Issue 20 §3: identity is proven, not claimed. A learner that claims leadership (its own id, token,
/// incarnation and cluster, a vote and entries naming itself with a far higher term), a member's message
/// that names no target (`lc-to`), and a member removed with `lightchain member remove` are refused on every
/// consensus RPC, and nobody takes the forged term.
#[test]
fn a_learner_claiming_leadership_a_message_without_lc_to_and_a_removed_member_are_refused() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    let leader = c.wait_leader(&c.all());
    // Three voters already: a joiner stays a learner.
    let learner = c.add_joiner(&[leader], &[]);
    let leader = c.wait_leader(&[0, 1, 2]);
    c.wait_membership(leader, 3, 1);
    put(&c.path(leader, "settled"), b"yes\n");
    c.wait_converged(&c.all());
    let before = heads(&c);
    let voters: Vec<usize> = (0..3).collect();
    let follower = (0..3).find(|i| *i != leader).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for &target in &voters {
        let addr = c.addrs[target].clone();
        // The learner, addressed properly, speaking for itself: it is a member, but no voter.
        let claimant = Credentials { to: Some(c.ids[target]), ..credentials(&c, learner) };
        let answers = rt.block_on(call_every_rpc(&addr, &claimant, c.ids[learner], true));
        assert_refused(&answers, "not a voter", &format!("member {target}, the learner claiming leadership"));
        // A voter speaking for itself but naming no target: refused before anything else.
        let sender = if target == follower { leader } else { follower };
        let untargeted = credentials(&c, sender);
        let answers = rt.block_on(call_every_rpc(&addr, &untargeted, c.ids[sender], false));
        let peer_rpcs: Vec<_> = answers
            .into_iter()
            .filter(|(rpc, _, _)| {
                rpc.starts_with("Raft.") || *rpc == "Cluster.Forward" || *rpc == "Cluster.ReadIndex"
            })
            .collect();
        assert_eq!(peer_rpcs.len(), 6);
        assert_refused(&peer_rpcs, "lc-to", &format!("member {target}, a voter's message without lc-to"));
    }
    assert_eq!(heads(&c), before, "a refused message changed the chain");
    for i in c.all() {
        let term = c.status(i)["term"].as_u64().unwrap();
        assert!(term < FORGED_TERM, "member {i} adopted the forged term ({term})");
        assert!(!c.path(i, "forged").exists(), "member {i} has the forged state");
    }

    // The learner is removed; its credentials now get nothing anywhere.
    let run = c.cli(&["member", "remove", &c.ids[learner].to_string(), "--addr", &c.addrs[leader]]);
    assert!(run.0.success(), "member remove: {run:?}");
    c.wait_membership(leader, 3, 0);
    for &target in &voters {
        c.wait_membership(target, 3, 0);
        let removed = Credentials { to: Some(c.ids[target]), ..credentials(&c, learner) };
        let answers = rt.block_on(call_every_rpc(&c.addrs[target], &removed, c.ids[learner], true));
        assert_refused(&answers, "not a member", &format!("member {target}, the removed member"));
    }
    for i in voters {
        let term = c.status(i)["term"].as_u64().unwrap();
        assert!(term < FORGED_TERM, "member {i} adopted the forged term ({term})");
    }
    let _ = &mut c;
}
