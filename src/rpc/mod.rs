//! gRPC services, generated from `proto/lightchain.proto` and served by tonic.
//!
//! - [`admin`]: read-only status for operators (`lightchain status --addr`).
//! - [`peer`]: the metadata every peer RPC carries, and the shared connections to peers.
//! - [`resolve`]: names to addresses, again at every connection (and the resolver test hook).
//! - [`tls`]: optional mutual TLS (`--peer-tls-*`) for the server and every outgoing channel.
//! - The `Raft` and `Cluster` services are implemented by the layers that own what they
//!   serve (`consensus::raft_service`, `node::cluster_service`); this layer serves them.
//!
//! [`serve`] takes an already bound listener and a shutdown future (so tests and the CLI can
//! bind port 0 and learn the address first); it stops accepting when the future completes.
//! With a [`tls::PeerTls`] it accepts TLS connections only, each with a client certificate
//! signed by the cluster's CA (tonic's own acceptor, over the same listener).
//! Services translate between protobuf and handler traits that the node implements (so this
//! layer does not depend on `node`); they hold no state of their own.
//!
//! See `docs/architecture/rpc.md`.

pub mod admin;
pub mod peer;
pub mod resolve;
pub mod tls;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use admin::AdminHandler;

/// Generated protobuf and gRPC types.
pub mod pb {
    tonic::include_proto!("lightchain.v1");
}

/// Serves the admin service (to holders of `token`) and the peer services in `peers` on
/// `listener` until `shutdown` completes; over mutual TLS only when `tls` is given.
pub async fn serve(
    listener: TcpListener,
    admin: Arc<dyn AdminHandler>,
    token: crate::store::identity::Tokens,
    peers: tonic::service::Routes,
    tls: Option<tls::PeerTls>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let routes =
        peers.add_service(pb::admin_server::AdminServer::new(admin::AdminService::new(admin, token)));
    // The builder's `tcp_nodelay` applies only to listeners tonic binds itself: the incoming
    // stream sets TCP_NODELAY on every accepted socket (small Raft messages must not wait).
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls.server_config())?;
    }
    server
        .add_routes(routes)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), shutdown)
        .await
}
