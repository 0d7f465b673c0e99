//! What this node knows of the other members' progress, refreshed in the background.
//!
//! Once a second, each member is asked how far its chain goes (short deadline); the
//! latest answers feed the `members` of this node's status document, so `.lightchain/status`
//! and `lightchain status` show every member's applied height and lag.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::rpc::pb::cluster_client::ClusterClient;
use crate::rpc::pb::HelloRequest;
use crate::rpc::peer::{self, Channels, PeerGuard};

/// The last answer of one member.
#[derive(Clone, Debug)]
pub struct MemberView {
    /// Its chain height.
    pub head_height: Option<u64>,
    /// Whether it said it was ready.
    pub ready: bool,
    /// When it answered.
    pub at: Instant,
}

/// Member views by node id.
pub type Views = Arc<Mutex<HashMap<u64, MemberView>>>;

/// Asks one member how far it is (`Cluster.Hello`, which also tells it this node's
/// incarnation, so every member remembers every other one).
async fn ask(channels: &Channels, guard: &dyn PeerGuard, addr: &str) -> Option<MemberView> {
    let channel = channels.get(addr).ok()?;
    let request = peer::request(HelloRequest {}, guard, Duration::from_millis(800));
    let response = ClusterClient::new(channel).hello(request).await.ok()?;
    peer::admit_response(&response, guard).ok()?;
    let reply = response.into_inner();
    Some(MemberView { head_height: reply.head_height, ready: reply.ready, at: Instant::now() })
}

/// Refreshes `views` for the members `members()` returns until `stop` fires.
pub async fn poll(
    channels: Channels,
    guard: std::sync::Arc<dyn PeerGuard>,
    views: Views,
    members: impl Fn() -> Vec<(u64, String)> + Send + 'static,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        for (id, addr) in members() {
            if let Some(view) = ask(&channels, guard.as_ref(), &addr).await {
                views.lock().unwrap().insert(id, view);
            }
        }
    }
}
