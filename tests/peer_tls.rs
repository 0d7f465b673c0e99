//! Mutual TLS for peer traffic (DESIGN §1.7, issue 8 item 4), over real processes: certificates are made with
//! the `openssl` binary at test time (a cluster CA, one certificate per member naming `127.0.0.1`, and a
//! second, unrelated CA with a certificate of its own).
//!
//! A 3-member cluster started with `--peer-tls-*` (through the environment twins) forms, replicates a write,
//! and answers `lightchain status` given the same flags. A client whose certificate another CA signed, a
//! client with no certificate and a plaintext client are all refused, even holding the right cluster token;
//! the right certificate without the token is refused too (the token stays required). Nothing of it changes
//! the cluster: every member keeps the same head. A member killed and restarted catches up over TLS.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::cluster::*;
use common::*;
use lightchain::rpc::pb::admin_client::AdminClient;
use lightchain::rpc::pb::StatusRequest;
use lightchain::rpc::tls::PeerTls;
use lightchain::store::identity::ClusterToken;

/// Certificates made with `openssl` in a temp dir (removed on drop).
struct Pki {
    /// Holds every file.
    dir: tempfile::TempDir,
}

impl Pki {
    /// A cluster CA with `members` node certificates (`node{i}.pem`/`.key`) and a second CA (`other-ca`)
    /// with one certificate (`stranger.pem`/`.key`) that also names 127.0.0.1.
    fn make(members: usize) -> Pki {
        let dir = tempfile::tempdir().expect("pki temp dir");
        let pki = Pki { dir };
        pki.ca("ca");
        pki.ca("other-ca");
        for i in 0..members {
            pki.leaf(&format!("node{i}"), "ca");
        }
        pki.leaf("stranger", "other-ca");
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn openssl(&self, args: &[&str]) {
        let mut cmd = Command::new("openssl");
        cmd.args(args).current_dir(self.dir.path());
        let (status, out, err) = run_command(cmd, Duration::from_secs(60));
        assert!(status.success(), "openssl {args:?} failed: {out}{err}");
    }

    /// A self-signed CA: `NAME.pem`, `NAME.key`.
    fn ca(&self, name: &str) {
        let (cert, key) = (format!("{name}.pem"), format!("{name}.key"));
        let subject = format!("/CN=lightchain test {name}");
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &cert,
            "-days",
            "2",
            "-subj",
            &subject,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
    }

    /// A certificate for client and server use naming 127.0.0.1 (IP SAN), signed by `ca`.
    fn leaf(&self, name: &str, ca: &str) {
        self.leaf_naming(name, ca, "IP:127.0.0.1,DNS:localhost");
    }

    /// A certificate for client and server use with the subject alternative names `san`, signed by `ca`.
    fn leaf_naming(&self, name: &str, ca: &str, san: &str) {
        let (cert, key, csr, ext) =
            (format!("{name}.pem"), format!("{name}.key"), format!("{name}.csr"), format!("{name}.ext"));
        std::fs::write(
            self.path(&ext),
            format!(
                "subjectAltName={san}\nbasicConstraints=CA:FALSE\n\
                 keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n"
            ),
        )
        .unwrap();
        let subject = format!("/CN={name}");
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &subject,
        ]);
        let (ca_cert, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_cert,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &cert,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
    }

    /// `--peer-tls-*` for the certificate `name` with root `ca`.
    fn flags(&self, name: &str, ca: &str) -> Vec<String> {
        vec![
            "--peer-tls-cert".into(),
            self.path(&format!("{name}.pem")).display().to_string(),
            "--peer-tls-key".into(),
            self.path(&format!("{name}.key")).display().to_string(),
            "--peer-tls-ca".into(),
            self.path(&format!("{ca}.pem")).display().to_string(),
        ]
    }

    fn tls(&self, name: &str, ca: &str) -> PeerTls {
        PeerTls::load(
            &self.path(&format!("{name}.pem")),
            &self.path(&format!("{name}.key")),
            &self.path(&format!("{ca}.pem")),
        )
        .unwrap_or_else(|e| panic!("load {name} with {ca}: {e}"))
    }
}

/// Environment twins of `--peer-tls-*` for member `i`.
fn member_env(pki: &Pki, i: usize) -> Vec<(usize, String, String)> {
    let p = |f: String| pki.path(&f).display().to_string();
    vec![
        (i, "LIGHTCHAIN_PEER_TLS_CERT".into(), p(format!("node{i}.pem"))),
        (i, "LIGHTCHAIN_PEER_TLS_KEY".into(), p(format!("node{i}.key"))),
        (i, "LIGHTCHAIN_PEER_TLS_CA".into(), p("ca.pem".into())),
    ]
}

fn heads(c: &Cluster) -> Vec<(u64, String)> {
    c.all().into_iter().map(|i| c.head(i)).collect()
}

/// Admin.Status over a channel made by hand: `Ok` with the document, or the error (transport or status).
async fn ask_status(
    endpoint: tonic::transport::Endpoint,
    token: Option<&ClusterToken>,
) -> Result<String, String> {
    let endpoint = endpoint.connect_timeout(Duration::from_secs(5)).timeout(Duration::from_secs(5));
    let channel = endpoint.connect().await.map_err(|e| format!("connect: {e:?}"))?;
    let mut request = tonic::Request::new(StatusRequest {});
    if let Some(token) = token {
        lightchain::rpc::peer::attach_token(request.metadata_mut(), token);
    }
    let reply = AdminClient::new(channel)
        .status(request)
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
    Ok(reply.into_inner().json)
}

#[test]
fn a_cluster_with_mutual_tls_forms_replicates_and_refuses_the_wrong_clients() {
    let pki = Pki::make(3);
    let opts = ClusterOpts {
        member_env: (0..3).flat_map(|i| member_env(&pki, i)).collect(),
        ..ClusterOpts::default()
    };
    let c = Cluster::start(3, opts);
    let leader = c.wait_leader(&c.all());
    let follower = (leader + 1) % 3;

    // A write through a follower's mount is forwarded to the leader and replicated, all over TLS.
    put(&c.path(follower, "over-tls.txt"), b"carried by mutual TLS\n");
    let head = c.wait_converged(&c.all());
    for i in c.all() {
        assert_eq!(read(&c.path(i, "over-tls.txt")), b"carried by mutual TLS\n", "member {i}");
    }
    assert!(c.node(leader).log().contains("mutual TLS"), "the node should log that peers use mutual TLS");

    // `lightchain status` with the same flags (the CLI presents a member's certificate).
    for i in c.all() {
        let mut args = vec!["status".to_string(), "--addr".into(), c.addrs[i].clone()];
        args.extend(pki.flags("node0", "ca"));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (run, out, err) = c.cli(&args);
        assert!(run.success(), "status over TLS on member {i}: {out}{err}");
        assert!(out.contains("ready      true"), "member {i}: {out}");
    }
    // Without the flags the CLI cannot talk to a TLS node.
    let (run, out, err) = c.cli(&["status", "--addr", &c.addrs[leader]]);
    assert_eq!(run.code(), Some(2), "plaintext status against a TLS node: {out}{err}");
    // The other commands speak TLS too, and a follower forwards a membership change to the leader
    // over TLS: promoting a voter is refused *by the leader* ("a voter already", exit 1), where a
    // forward that could not reach it would be exit 2.
    let with_tls = |args: &[&str]| {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend(pki.flags("node0", "ca"));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        c.cli(&all)
    };
    let (run, out, err) = with_tls(&["member", "list", "--addr", &c.addrs[follower]]);
    assert!(run.success() && out.contains("(leader)"), "member list over TLS: {out}{err}");
    let (run, out, err) = with_tls(&["limits", "--addr", &c.addrs[follower]]);
    assert!(run.success() && out.contains("max_state_size"), "limits over TLS: {out}{err}");
    let (run, out, err) = with_tls(&["token", "status", "--addr", &c.addrs[follower]]);
    assert!(run.success(), "token status over TLS: {out}{err}");
    let voter = c.ids[leader].to_string();
    let (run, out, err) = with_tls(&["member", "promote", &voter, "--addr", &c.addrs[follower]]);
    assert_eq!(run.code(), Some(1), "promote of a voter through a follower over TLS: {out}{err}");
    assert!(err.contains("a voter already"), "the leader's refusal, forwarded over TLS: {out}{err}");
    let (run, out, err) = c.cli(&["member", "list", "--addr", &c.addrs[follower]]);
    assert_eq!(run.code(), Some(2), "plaintext member list against a TLS node: {out}{err}");

    let token = ClusterToken::read_file(&c.token_file).unwrap();
    let addr = &c.addrs[leader];
    let rt = tokio::runtime::Runtime::new().unwrap();
    let https = || tonic::transport::Endpoint::from_shared(format!("https://{addr}")).unwrap();
    let ca = tonic::transport::Certificate::from_pem(std::fs::read(pki.path("ca.pem")).unwrap());

    // The control: the right certificate and the token are let in (so the refusals below can fail).
    let right = lightchain::rpc::tls::endpoint(addr, Some(&pki.tls("node1", "ca"))).unwrap();
    let json = rt.block_on(ask_status(right.clone(), Some(&token))).expect("the right certificate and token");
    assert!(json.contains("\"ready\":true") || json.contains("\"ready\": true"), "{json}");
    // The token stays required on top of TLS.
    let e = rt.block_on(ask_status(right, None)).expect_err("TLS without the token must be refused");
    eprintln!("refused as expected: {e}");
    assert!(e.starts_with("Unauthenticated"), "TLS without the token: {e}");

    // A certificate another CA signed (trusting the right CA, so only the client side is wrong).
    let wrong_ca = lightchain::rpc::tls::endpoint(addr, Some(&pki.tls("stranger", "ca"))).unwrap();
    let e = rt
        .block_on(ask_status(wrong_ca, Some(&token)))
        .expect_err("a certificate from another CA was let in");
    eprintln!("refused as expected: {e}");
    assert!(!e.starts_with("Unauthenticated"), "refused by the token check, not by TLS: {e}");
    // The other CA's own view: the node's certificate is not trusted either (no handshake).
    let other_root = lightchain::rpc::tls::endpoint(addr, Some(&pki.tls("stranger", "other-ca"))).unwrap();
    let e = rt.block_on(ask_status(other_root, Some(&token))).expect_err("a client of another CA connected");
    eprintln!("refused as expected: {e}");
    assert!(e.starts_with("connect"), "the handshake should fail: {e}");
    // TLS with no client certificate.
    let anonymous = https().tls_config(tonic::transport::ClientTlsConfig::new().ca_certificate(ca)).unwrap();
    let e = rt
        .block_on(ask_status(anonymous, Some(&token)))
        .expect_err("a client without a certificate was let in");
    eprintln!("refused as expected: {e}");
    assert!(!e.starts_with("Unauthenticated"), "refused by the token check, not by TLS: {e}");
    // Plaintext.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap();
    let e = rt.block_on(ask_status(plain, Some(&token))).expect_err("plaintext to a TLS node was answered");
    eprintln!("refused as expected: {e}");
    assert!(!e.starts_with("Unauthenticated"), "refused by the token check, not by TLS: {e}");

    // Nothing changed: same head everywhere, the one after the write.
    assert!(heads(&c).iter().all(|h| *h == head), "heads moved: {:?} (expected {head:?})", heads(&c));
    let log = c.node(leader).log();
    assert!(!log.contains("panicked"), "{log}");

    // A member killed and restarted reconnects over TLS and catches up with what it missed.
    let mut c = c;
    c.kill9(follower);
    put(&c.path(leader, "while-away.txt"), b"written while a member was down\n");
    c.restart(follower);
    c.wait_converged(&c.all());
    assert_eq!(read(&c.path(follower, "while-away.txt")), b"written while a member was down\n");
}

#[test]
fn the_tls_flags_go_together_and_bad_files_stop_the_start() {
    let pki = Pki::make(1);
    let cert = pki.path("node0.pem").display().to_string();
    // One flag alone: refused with the names of the missing ones, before anything is mounted.
    let mut n =
        Node::prepare(Opts { extra: vec!["--peer-tls-cert".into(), cert.clone()], ..Opts::default() });
    n.spawn();
    let status = n.wait_exit(Duration::from_secs(30)).expect("an incomplete TLS configuration must exit");
    assert!(!status.success());
    assert!(n.log().contains("--peer-tls-key, --peer-tls-ca missing"), "{}", n.log());
    // A key given as the CA: refused and named.
    let key = pki.path("node0.key").display().to_string();
    let mut n = Node::prepare(Opts {
        extra: vec![
            "--peer-tls-cert".into(),
            cert.clone(),
            "--peer-tls-key".into(),
            key.clone(),
            "--peer-tls-ca".into(),
            key.clone(),
        ],
        ..Opts::default()
    });
    n.spawn();
    let status = n.wait_exit(Duration::from_secs(30)).expect("a bad CA file must exit");
    assert!(!status.success());
    assert!(n.log().contains("CA certificate"), "{}", n.log());
    // The CLI checks the same rule.
    let (run, _, err) = n.run_cli(&["status", "--addr", "127.0.0.1:1", "--peer-tls-key", &key]);
    assert_eq!(run.code(), Some(2));
    assert!(err.contains("--peer-tls-cert, --peer-tls-ca missing"), "{err}");
}

/// A peer message with hand-made metadata: the token, `lc-from`/`lc-incarnation`/`lc-cluster` of the node
/// it claims to come from, and `lc-to`.
fn claimed<T>(
    message: T,
    token: &ClusterToken,
    from: &serde_json::Value,
    from_id: u64,
    to: u64,
) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    lightchain::rpc::peer::attach_token(r.metadata_mut(), token);
    let md = r.metadata_mut();
    md.insert("lc-from", from_id.to_string().parse().unwrap());
    md.insert("lc-incarnation", from["incarnation"].as_u64().unwrap().to_string().parse().unwrap());
    md.insert("lc-cluster", from["cluster_id"].as_str().unwrap().parse().unwrap());
    md.insert("lc-to", to.to_string().parse().unwrap());
    r.set_timeout(Duration::from_secs(5));
    r
}

/// Issue 20 §3: with mutual TLS a member's certificate names its own address only, and a message is
/// admitted only when the certificate names the address of the node its `lc-from` claims. Each member has
/// its own loopback address (`127.X.Y.i`) and a certificate naming it alone. Member `g`'s certificate,
/// presenting member `f`'s id, incarnation and the token, is refused on a vote and append-entries naming
/// `f` (which `f` itself could send), while `f`'s own certificate is let in with the same metadata; and a
/// joiner whose certificate names another address than the one it advertises (a member's) is refused.
#[test]
fn a_certificate_speaks_only_for_the_node_at_the_address_it_names() {
    use lightchain::consensus::typ::{CommittedLeaderId, LogId, Vote};
    use lightchain::rpc::pb::cluster_client::ClusterClient;
    use lightchain::rpc::pb::raft_client::RaftClient;
    use lightchain::rpc::pb::{RaftMessage, ReadIndexRequest};
    const FORGED_TERM: u64 = 1_000_000;

    let (ips, port) = free_loopback_ips_and_port(4);
    let addrs: Vec<String> = ips[..3].iter().map(|ip| format!("{ip}:{port}")).collect();
    let dir = tempfile::tempdir().expect("pki temp dir");
    let pki = Pki { dir };
    pki.ca("ca");
    for (i, ip) in ips.iter().enumerate() {
        pki.leaf_naming(&format!("node{i}"), "ca", &format!("IP:{ip}"));
    }
    let opts = ClusterOpts {
        member_env: (0..3).flat_map(|i| member_env(&pki, i)).collect(),
        addrs: Some(addrs.clone()),
        ..ClusterOpts::default()
    };
    let c = Cluster::start(3, opts);
    let leader = c.wait_leader(&c.all());
    let f = (leader + 1) % 3;
    let g = (leader + 2) % 3;
    put(&c.path(f, "settled"), b"yes\n");
    let before = c.wait_converged(&c.all());
    let token = ClusterToken::read_file(&c.token_file).unwrap();
    let identity = |i: usize| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(c.node(i).data().join("identity.json")).unwrap()).unwrap()
    };
    let f_identity = identity(f);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let channel = |cert: usize| {
        let endpoint =
            lightchain::rpc::tls::endpoint(&c.addrs[leader], Some(&pki.tls(&format!("node{cert}"), "ca")))
                .unwrap()
                .connect_timeout(Duration::from_secs(5));
        rt.block_on(endpoint.connect())
            .unwrap_or_else(|e| panic!("connect with node{cert}'s certificate: {e}"))
    };
    let to = c.ids[leader];
    let read_index = |cert: usize| {
        let request = claimed(ReadIndexRequest {}, &token, &f_identity, c.ids[f], to);
        rt.block_on(ClusterClient::new(channel(cert)).read_index(request)).map(drop)
    };
    // The control: f's own certificate with f's metadata is let in.
    read_index(f).expect("f's certificate speaks for f");
    // g's certificate with f's metadata: refused, for the certificate.
    let refused = read_index(g).expect_err("g's certificate spoke for f");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("certificate"), "{}", refused.message());
    // A vote and append-entries f could send (it is a voter), with g's certificate: refused, nobody moves.
    let vote = Vote::new(FORGED_TERM, c.ids[f]);
    let vote_req = openraft::raft::VoteRequest::<lightchain::consensus::TypeConfig>::new(vote, None);
    let payload = serde_json::to_vec(&vote_req).unwrap();
    let request = claimed(RaftMessage { payload, ..Default::default() }, &token, &f_identity, c.ids[f], to);
    let refused = rt.block_on(RaftClient::new(channel(g)).vote(request)).expect_err("a vote for f by g");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("certificate"), "{}", refused.message());
    let append = openraft::raft::AppendEntriesRequest::<lightchain::consensus::TypeConfig> {
        vote,
        prev_log_id: None,
        entries: vec![],
        leader_commit: Some(LogId::new(
            CommittedLeaderId { term: FORGED_TERM, node_id: c.ids[f] },
            1_000_000,
        )),
    };
    let payload = serde_json::to_vec(&append).unwrap();
    let request = claimed(RaftMessage { payload, ..Default::default() }, &token, &f_identity, c.ids[f], to);
    let refused = rt
        .block_on(RaftClient::new(channel(g)).append_entries(request))
        .expect_err("entries from f sent by g");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("certificate"), "{}", refused.message());

    // A joiner whose certificate names its own address (ips[3]) but that advertises f's.
    let p = |f: &str| pki.path(f).display().to_string();
    let mut joiner = Node::prepare(Opts {
        env: vec![
            ("LIGHTCHAIN_PEER_TLS_CERT".into(), p("node3.pem")),
            ("LIGHTCHAIN_PEER_TLS_KEY".into(), p("node3.key")),
            ("LIGHTCHAIN_PEER_TLS_CA".into(), p("ca.pem")),
        ],
        ..c.join_opts(&[leader], &["--advertise", &c.addrs[f]])
    });
    joiner.set_listen(&format!("{}:0", ips[3]));
    joiner.spawn();
    let status =
        joiner.wait_exit(Duration::from_secs(60)).expect("a joiner with another's address must stop");
    assert!(!status.success());
    assert!(joiner.log().contains("certificate does not prove"), "{}", joiner.log_tail(20));

    for i in c.all() {
        let term = c.status(i)["term"].as_u64().unwrap();
        assert!(term < FORGED_TERM, "member {i} adopted the forged term ({term})");
        assert_eq!(c.status(i)["members"].as_array().unwrap().len(), 3, "member {i}: the membership changed");
    }
    assert_eq!(c.head(leader), before, "a refused message changed the chain");
}
