//! What every peer RPC carries, who is let in, and the connections peers share.
//!
//! Each request and each answer between members carries the **cluster token** (`lc-token`,
//! the shared secret of DESIGN §1.7) and the sender's cluster id, node id and incarnation as
//! metadata ([`PeerMeta`]). An incoming request passes, in this order and *before* anything
//! reaches openraft or the forwarding path ([`admit_request`]):
//!
//! 1. **the token**, compared in constant time: missing or wrong → `UNAUTHENTICATED` (two
//!    tokens are accepted while `lightchain token rotate` runs, see `store::identity::Tokens`);
//! 2. **the target and the sender**: a member's message names the node it is for (`lc-to`,
//!    required) and its sender (valid `lc-from`/`lc-incarnation`), which must be a member of
//!    the cluster — or, while this node knows no membership yet (bootstrap), one of its
//!    configured peers ([`PeerGuard::authorize`]) — and, with mutual TLS, present a certificate
//!    naming the host of the address it is a member at ([`check_certificate`]): otherwise →
//!    `PERMISSION_DENIED`;
//! 3. **its life**: a message from another cluster, or from a member that comes back with a new
//!    incarnation (its data directory was wiped, so its vote record is gone), is refused with
//!    `FAILED_PRECONDITION` — such a node must never vote under its old identity.
//!
//! The services then check that the ids inside the payload are the sender's own (a vote's
//! candidate, the leader of append-entries and of a snapshot), and that a node asking for votes
//! or leading is a voter ([`check_voter`]). A node that does not know whom it asks (a joiner's
//! `Join`, a `Hello` from discovery or start-up checks) passes step 1 only
//! ([`authenticate_token_holder`]). Every refusal is a [`Refusal`], logged with the peer. An answer is accepted only if it
//! carries the token too, so a node never acts on a stranger's reply. The admin service asks
//! for the token alone ([`check_token`]): the operator's CLI is not a member.
//!
//! [`Channels`] holds one lazily connecting HTTP/2 channel per peer address; every RPC to that
//! peer reuses it (tonic multiplexes), so nothing dials inside openraft's core. Each (re)connect
//! resolves the address's host again ([`super::resolve::Connector`]), and HTTP/2 keepalives end
//! a connection to an address that went away within 10 s, so a member known by name that comes
//! back at a new address is reached there. With
//! `--peer-tls-*` every channel is `https` with this node's certificate ([`super::tls`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::tls::{self, PeerTls};
use crate::store::identity::{ClusterToken, Tokens};

/// Largest gRPC message either side accepts (a batch of entries of up to 1 MiB states).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// Largest total of block bytes one snapshot stream may bring (the chain a lagging member
/// lacks); a longer stream is cut off and nothing of it is installed.
pub const MAX_SNAPSHOT_BYTES: u64 = 16 << 30;

const TOKEN: &str = "lc-token";
const CLUSTER: &str = "lc-cluster";
const FROM: &str = "lc-from";
const INCARNATION: &str = "lc-incarnation";
/// The node id a consensus message is meant for. A node that took over another's address (it
/// lost its data and came back under a new id) must neither take nor answer messages meant for
/// the old id: the leader would read its empty log as the old member's log going backwards.
const TO: &str = "lc-to";

/// Who sent a peer message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerMeta {
    /// The sender's cluster id; empty before its genesis block.
    pub cluster_id: String,
    /// The sender's node id.
    pub node_id: u64,
    /// The sender's data directory incarnation.
    pub incarnation: u64,
}

impl PeerMeta {
    fn attach(&self, md: &mut MetadataMap) {
        if let Ok(v) = self.cluster_id.parse() {
            md.insert(CLUSTER, v);
        }
        md.insert(FROM, self.node_id.to_string().parse().expect("digits are valid metadata"));
        md.insert(INCARNATION, self.incarnation.to_string().parse().expect("digits are valid metadata"));
    }

    fn read(md: &MetadataMap) -> Result<PeerMeta, String> {
        let get = |key: &str| md.get(key).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let number = |key: &str| {
            get(key)
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| format!("peer message without valid '{key}' metadata"))
        };
        Ok(PeerMeta {
            cluster_id: get(CLUSTER).unwrap_or_default(),
            node_id: number(FROM)?,
            incarnation: number(INCARNATION)?,
        })
    }
}

/// Admits or refuses peers; implemented by the node.
pub trait PeerGuard: Send + Sync + 'static {
    /// This node's metadata.
    fn local(&self) -> PeerMeta;
    /// The cluster tokens: the one sent, and those accepted (two during a rotation).
    fn tokens(&self) -> &Tokens;
    /// Whether `node` may talk to this node at all: a member, or during bootstrap a
    /// configured peer. `Err` says why not.
    fn authorize(&self, node: u64) -> Result<(), String>;
    /// Checks a peer's cluster and incarnation (and remembers the incarnation); `Err` says why
    /// it is refused.
    fn admit(&self, remote: &PeerMeta) -> Result<(), String>;
    /// Whether `node` may ask for votes or lead (send append-entries or a snapshot): a voter of
    /// the current membership (or, before one is known, whoever [`PeerGuard::authorize`] lets in).
    fn authorize_voter(&self, node: u64) -> Result<(), String> {
        self.authorize(node)
    }
    /// Whether peers must prove who they are with their certificate (mutual TLS is on).
    fn binds_certificates(&self) -> bool {
        false
    }
    /// The address `node` is known at (its membership entry, or before a membership its
    /// configured `--peer` address), whose host its certificate must name; `None` when none
    /// is known yet (a joining node before it learns the membership).
    fn address_of(&self, _node: u64) -> Option<String> {
        None
    }
}

/// Why a peer message was refused, each with the gRPC code it is answered with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No `lc-token` (`UNAUTHENTICATED`).
    #[error(
        "no cluster token: peers and the CLI must present the cluster's token (see --cluster-token-file)"
    )]
    NoToken,
    /// A token that is not the cluster's (`UNAUTHENTICATED`).
    #[error("wrong cluster token")]
    WrongToken,
    /// A member's message that does not name the node it is for (`PERMISSION_DENIED`).
    #[error(
        "peer message without valid 'lc-to' metadata: every message between members names the node it is for"
    )]
    NoTarget,
    /// A message for another node id (`PERMISSION_DENIED`).
    #[error("this message is for node {to}; this is node {me} (a new node at that node's address)")]
    WrongTarget {
        /// The node it names.
        to: u64,
        /// This node.
        me: u64,
    },
    /// Missing or malformed `lc-from`/`lc-incarnation` (`PERMISSION_DENIED`).
    #[error("{0}")]
    BadMetadata(String),
    /// The sender may not talk to this node at all (`PERMISSION_DENIED`).
    #[error("{0}")]
    NotAuthorized(String),
    /// The sender may talk, but not ask for votes or lead: it is no voter (`PERMISSION_DENIED`).
    #[error("{0}")]
    NotAVoter(String),
    /// The sender's cluster or incarnation is refused (`FAILED_PRECONDITION`).
    #[error("{0}")]
    NotAdmitted(String),
    /// With mutual TLS, the sender's certificate does not name the host of its address
    /// (`PERMISSION_DENIED`): a certificate of one member cannot speak for another.
    #[error("node {peer}'s certificate does not prove its identity: {reason}")]
    Certificate {
        /// The sender (`lc-from`).
        peer: u64,
        /// Why (no certificate, no SAN for the host).
        reason: String,
    },
    /// The payload speaks for another node than its sender (`PERMISSION_DENIED`).
    #[error("node {sender} sent a {what} naming node {named:?}")]
    SpeaksForAnother {
        /// The sender (`lc-from`).
        sender: u64,
        /// The node the payload names.
        named: Option<u64>,
        /// What the payload is.
        what: &'static str,
    },
}

impl Refusal {
    /// The gRPC code this refusal is answered with.
    pub fn code(&self) -> tonic::Code {
        match self {
            Refusal::NoToken | Refusal::WrongToken => tonic::Code::Unauthenticated,
            Refusal::NotAdmitted(_) => tonic::Code::FailedPrecondition,
            Refusal::NoTarget
            | Refusal::WrongTarget { .. }
            | Refusal::BadMetadata(_)
            | Refusal::NotAuthorized(_)
            | Refusal::NotAVoter(_)
            | Refusal::Certificate { .. }
            | Refusal::SpeaksForAnother { .. } => tonic::Code::PermissionDenied,
        }
    }
}

impl From<Refusal> for Status {
    fn from(r: Refusal) -> Status {
        Status::new(r.code(), r.to_string())
    }
}

/// Puts `token` into outgoing metadata.
pub fn attach_token(md: &mut MetadataMap, token: &ClusterToken) {
    // A parsed token is visible ASCII, which is always valid metadata.
    md.insert(TOKEN, token.expose().parse().expect("a token is valid metadata"));
}

/// Checks the token of an incoming message: `UNAUTHENTICATED` when missing or wrong.
pub fn check_token(md: &MetadataMap, tokens: &Tokens) -> Result<(), Status> {
    token_refusal(md, tokens).map_err(Status::from)
}

fn token_refusal(md: &MetadataMap, tokens: &Tokens) -> Result<(), Refusal> {
    match md.get(TOKEN).and_then(|v| v.to_str().ok()) {
        Some(offered) if tokens.accepts(offered) => Ok(()),
        Some(_) => Err(Refusal::WrongToken),
        None => Err(Refusal::NoToken),
    }
}

/// Wraps `message` as a request carrying the token and this node's metadata.
fn stamped<T>(message: T, guard: &dyn PeerGuard) -> Request<T> {
    let mut request = Request::new(message);
    attach_token(request.metadata_mut(), &guard.tokens().current());
    guard.local().attach(request.metadata_mut());
    request
}

/// Addresses `request` to the node `target` (`lc-to`): a receiver with another id refuses it.
fn addressed<T>(mut request: Request<T>, target: u64) -> Request<T> {
    request.metadata_mut().insert(TO, target.to_string().parse().expect("digits are valid metadata"));
    request
}

/// Wraps `message` as a request carrying the token, this node's metadata and a deadline.
pub fn request<T>(message: T, guard: &dyn PeerGuard, timeout: Duration) -> Request<T> {
    let mut request = stamped(message, guard);
    request.set_timeout(timeout);
    request
}

/// [`request_to`] without a deadline, for a stream that lives across many messages (each
/// message gets its own deadline from the caller).
pub fn stream_request_to<T>(message: T, guard: &dyn PeerGuard, target: u64) -> Request<T> {
    addressed(stamped(message, guard), target)
}

/// Step 1 of admission only, and the sender's metadata: for a sender that is not a member yet
/// (`Cluster.Join`, whose handler checks the joiner's id; `Cluster.Hello` from a node without a
/// cluster, which reads and records nothing).
pub fn authenticate_token_holder<T>(request: &Request<T>, guard: &dyn PeerGuard) -> Result<PeerMeta, Status> {
    let md = request.metadata();
    token_refusal(md, guard.tokens()).inspect_err(|e| {
        tracing::warn!(reason = %e, "refusing an unauthenticated request from a new node");
    })?;
    let meta = PeerMeta::read(md).map_err(Refusal::BadMetadata)?;
    // A new node usually does not know whom it asks; when it says, it must be this node.
    if let Some(to) = md.get(TO).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()) {
        let me = guard.local().node_id;
        if to != me {
            return Err(Refusal::WrongTarget { to, me }.into());
        }
    }
    Ok(meta)
}

/// Whether `request` names the node it is for (`lc-to`): a member's message does, a new node's
/// `Hello` (discovery, start-up checks) or `Join` may not.
pub fn names_target<T>(request: &Request<T>) -> bool {
    request.metadata().get(TO).is_some()
}

/// [`request`] for the node `target` (`lc-to`): a receiver with another id refuses it.
pub fn request_to<T>(message: T, guard: &dyn PeerGuard, timeout: Duration, target: u64) -> Request<T> {
    addressed(request(message, guard, timeout), target)
}

/// Steps 1 and 2 of admission: the token, the target (`lc-to`, required: a member always knows
/// whom it writes to, and a message for another node id is refused), then the sender's id
/// against the membership.
pub fn authenticate_request<T>(request: &Request<T>, guard: &dyn PeerGuard) -> Result<PeerMeta, Status> {
    let md = request.metadata();
    token_refusal(md, guard.tokens()).inspect_err(|e| {
        tracing::warn!(reason = %e, "refusing an unauthenticated peer message");
    })?;
    let meta = PeerMeta::read(md).map_err(Refusal::BadMetadata)?;
    let me = guard.local().node_id;
    match md.get(TO).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()) {
        Some(to) if to == me => {}
        Some(to) => {
            tracing::debug!(peer = meta.node_id, to, me, "refusing a peer message meant for another node id");
            return Err(Refusal::WrongTarget { to, me }.into());
        }
        None => {
            tracing::warn!(peer = meta.node_id, "refusing a peer message that names no target (no lc-to)");
            return Err(Refusal::NoTarget.into());
        }
    }
    authorize(&meta, guard)?;
    if guard.binds_certificates() {
        if let Some(addr) = guard.address_of(meta.node_id) {
            check_certificate(request, meta.node_id, &addr)?;
        }
    }
    Ok(meta)
}

/// With mutual TLS: the client certificate of `request` must name the host of `addr`, the
/// address `node` (its `lc-from`) is known at. Refused (`PERMISSION_DENIED`, logged) otherwise.
pub fn check_certificate<T>(request: &Request<T>, node: u64, addr: &str) -> Result<(), Status> {
    let host = super::tls::host_of(addr);
    let verdict = match request.peer_certs() {
        None => Err("no client certificate".to_owned()),
        Some(certs) => match certs.first() {
            None => Err("no client certificate".to_owned()),
            Some(cert) => super::tls::certificate_names(cert.as_ref(), host),
        },
    };
    verdict.map_err(|reason| {
        tracing::warn!(peer = node, %addr, %reason, "refusing a peer message whose certificate is not the sender's");
        Refusal::Certificate { peer: node, reason: format!("{reason}; node {node} is at {addr}") }.into()
    })
}

/// Step 2: the sender must be a member (`PERMISSION_DENIED`, logged, when not).
fn authorize(sender: &PeerMeta, guard: &dyn PeerGuard) -> Result<(), Status> {
    guard.authorize(sender.node_id).map_err(|why| {
        tracing::warn!(peer = sender.node_id, reason = %why, "refusing a peer message");
        Refusal::NotAuthorized(why).into()
    })
}

/// For a vote request, append-entries and a snapshot: the sender must be a voter of this node's
/// current membership (`PERMISSION_DENIED`, logged, when not). A learner or a removed member
/// that claims leadership changes nothing.
pub fn check_voter(sender: &PeerMeta, guard: &dyn PeerGuard, what: &str) -> Result<(), Status> {
    guard.authorize_voter(sender.node_id).map_err(|why| {
        tracing::warn!(peer = sender.node_id, what, reason = %why, "refusing a consensus message from a non-voter");
        Refusal::NotAVoter(why).into()
    })
}

/// Step 3: the sender's cluster and incarnation (`FAILED_PRECONDITION`, logged, when refused).
fn admit(sender: &PeerMeta, guard: &dyn PeerGuard) -> Result<(), Status> {
    guard.admit(sender).map_err(|why| {
        tracing::warn!(peer = sender.node_id, reason = %why, "refusing a peer message");
        Refusal::NotAdmitted(why).into()
    })
}

/// Admits the sender of an incoming request (all three steps, see the module docs).
pub fn admit_request<T>(request: &Request<T>, guard: &dyn PeerGuard) -> Result<PeerMeta, Status> {
    let meta = authenticate_request(request, guard)?;
    admit(&meta, guard)?;
    Ok(meta)
}

/// Steps 2 and 3 again, for each message of a stream admitted when it opened: the sender must
/// still be a member, and of the same incarnation (membership may change while a stream lives).
pub fn readmit(sender: &PeerMeta, guard: &dyn PeerGuard) -> Result<(), Status> {
    authorize(sender, guard)?;
    admit(sender, guard)
}

/// Refuses a payload that names another node than its sender (`PERMISSION_DENIED`): a member
/// may only speak for itself (as a candidate, or as the leader).
pub fn check_sender(sender: &PeerMeta, named: Option<u64>, what: &'static str) -> Result<(), Status> {
    if named == Some(sender.node_id) {
        return Ok(());
    }
    tracing::warn!(
        peer = sender.node_id,
        ?named,
        what,
        "refusing a peer message that speaks for another node"
    );
    Err(Refusal::SpeaksForAnother { sender: sender.node_id, named, what }.into())
}

/// Wraps `message` as an answer carrying the token and this node's metadata.
pub fn response<T>(message: T, guard: &dyn PeerGuard) -> Response<T> {
    let mut response = Response::new(message);
    attach_token(response.metadata_mut(), &guard.tokens().current());
    guard.local().attach(response.metadata_mut());
    response
}

/// Admits the sender of an answer (token, then cluster and incarnation); `Err` says why not.
pub fn admit_response<T>(response: &Response<T>, guard: &dyn PeerGuard) -> Result<(), String> {
    let meta = responder(response, guard)?;
    guard.admit(&meta)
}

/// Who answered, once the answer's token is checked (and nothing else: the caller decides).
pub fn responder<T>(response: &Response<T>, guard: &dyn PeerGuard) -> Result<PeerMeta, String> {
    check_token(response.metadata(), guard.tokens())
        .map_err(|e| format!("answer refused: {}", e.message()))?;
    PeerMeta::read(response.metadata())
}

/// [`admit_response`], and the responder must be `expected` (the node the request was for).
pub fn admit_response_from<T>(
    response: &Response<T>,
    guard: &dyn PeerGuard,
    expected: u64,
) -> Result<(), String> {
    admit_response(response, guard)?;
    let meta = PeerMeta::read(response.metadata())?;
    if meta.node_id != expected {
        return Err(format!(
            "node {} answered for node {expected} (a new node at its address)",
            meta.node_id
        ));
    }
    Ok(())
}

/// One lazily connecting channel per peer address, shared by every RPC to that peer.
#[derive(Clone, Default)]
pub struct Channels {
    /// The channels made so far, by address.
    inner: Arc<Mutex<HashMap<String, Channel>>>,
    /// Mutual TLS for every channel (`--peer-tls-*`); plaintext without it.
    tls: Option<Arc<PeerTls>>,
}

impl Channels {
    /// Channels that use `tls` when given, plaintext otherwise (as [`Channels::default`]).
    pub fn new(tls: Option<PeerTls>) -> Channels {
        Channels { inner: Arc::default(), tls: tls.map(Arc::new) }
    }

    /// The channel to `addr` (HOST:PORT); connects on first use, reconnects after failures.
    pub fn get(&self, addr: &str) -> Result<Channel, String> {
        let mut map = self.inner.lock().unwrap();
        if let Some(channel) = map.get(addr) {
            return Ok(channel.clone());
        }
        let channel = tls::endpoint(addr, self.tls.as_deref())
            .map_err(|e| format!("peer {addr}: {e}"))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect_with_connector_lazy(super::resolve::Connector);
        map.insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips() {
        let meta = PeerMeta { cluster_id: "abc".into(), node_id: 7, incarnation: 42 };
        let mut md = MetadataMap::new();
        meta.attach(&mut md);
        assert_eq!(PeerMeta::read(&md).unwrap(), meta);
        assert!(PeerMeta::read(&MetadataMap::new()).is_err());
        let fresh = PeerMeta { cluster_id: String::new(), node_id: 1, incarnation: 2 };
        let mut md = MetadataMap::new();
        fresh.attach(&mut md);
        assert_eq!(PeerMeta::read(&md).unwrap(), fresh);
    }

    /// A guard for node 2 that lets every sender in.
    struct Open(Tokens);

    impl PeerGuard for Open {
        fn local(&self) -> PeerMeta {
            PeerMeta { cluster_id: "c".into(), node_id: 2, incarnation: 1 }
        }
        fn tokens(&self) -> &Tokens {
            &self.0
        }
        fn authorize(&self, _node: u64) -> Result<(), String> {
            Ok(())
        }
        fn admit(&self, _remote: &PeerMeta) -> Result<(), String> {
            Ok(())
        }
    }

    #[test]
    fn a_message_for_another_node_id_is_refused_and_so_is_its_answer() {
        let guard = Open(Tokens::new(ClusterToken::generate()));
        let to_me = request_to((), &guard, Duration::from_secs(1), 2);
        authenticate_request(&to_me, &guard).unwrap();
        let to_other = request_to((), &guard, Duration::from_secs(1), 7);
        assert_eq!(
            authenticate_request(&to_other, &guard).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        // Without `lc-to` a member's message is refused; a new node's (a token holder's) is not.
        let untargeted = request((), &guard, Duration::from_secs(1));
        let refused = authenticate_request(&untargeted, &guard).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(refused.message().contains("lc-to"), "{}", refused.message());
        authenticate_token_holder(&untargeted, &guard).unwrap();
        assert!(authenticate_token_holder(&to_other, &guard).is_err());
        let answer = response((), &guard);
        admit_response_from(&answer, &guard, 2).unwrap();
        assert!(admit_response_from(&answer, &guard, 7).is_err(), "node 2 answered for node 7");
    }

    #[test]
    fn tokens_and_senders_are_checked_with_the_right_codes() {
        let token = ClusterToken::generate();
        let tokens = Tokens::new(token.clone());
        let mut md = MetadataMap::new();
        assert_eq!(check_token(&md, &tokens).unwrap_err().code(), tonic::Code::Unauthenticated);
        attach_token(&mut md, &ClusterToken::generate());
        assert_eq!(check_token(&md, &tokens).unwrap_err().code(), tonic::Code::Unauthenticated);
        attach_token(&mut md, &token);
        check_token(&md, &tokens).unwrap();
        let sender = PeerMeta { cluster_id: "c".into(), node_id: 3, incarnation: 1 };
        check_sender(&sender, Some(3), "vote").unwrap();
        assert_eq!(check_sender(&sender, Some(4), "vote").unwrap_err().code(), tonic::Code::PermissionDenied);
        assert_eq!(check_sender(&sender, None, "vote").unwrap_err().code(), tonic::Code::PermissionDenied);
    }
}
