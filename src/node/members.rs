//! What this node knows of the other members' progress, refreshed in the background.
//!
//! Once a second, each member's admin service is asked for its status (short deadline); the
//! latest answers feed the `members` of this node's status document, so `.lightchain/status`
//! and `lightchain status` show every member's applied height and lag.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::rpc::pb::admin_client::AdminClient;
use crate::rpc::pb::StatusRequest;
use crate::rpc::peer::Channels;

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

/// Asks one member for its status.
async fn ask(channels: &Channels, addr: &str) -> Option<MemberView> {
    let channel = channels.get(addr).ok()?;
    let mut request = tonic::Request::new(StatusRequest {});
    request.set_timeout(Duration::from_millis(800));
    let reply = AdminClient::new(channel).status(request).await.ok()?;
    let json: serde_json::Value = serde_json::from_str(&reply.into_inner().json).ok()?;
    Some(MemberView {
        head_height: json["head_height"].as_u64(),
        ready: json["ready"].as_bool().unwrap_or(false),
        at: Instant::now(),
    })
}

/// Refreshes `views` for the members `members()` returns until `stop` fires.
pub async fn poll(
    channels: Channels,
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
            if let Some(view) = ask(&channels, &addr).await {
                views.lock().unwrap().insert(id, view);
            }
        }
    }
}
