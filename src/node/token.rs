//! `lightchain token rotate`: the cluster token replaced on every member without downtime.
//!
//! The node the operator asks coordinates. It takes the members from its membership (voters and
//! learners) and asks each, in turn, through the admin service (`Admin.Token`, presenting the
//! token it sends itself):
//!
//! 1. **stage**: accept the new token too (still sending the old one). If any member cannot be
//!    reached, every member is asked to forget the new token and nothing has changed;
//! 2. **switch**: send the new token, accept the old one too. Once every member has switched,
//!    no member sends the old token any more;
//! 3. **retire**: accept the new token only. The old token — a removed member's, or a leaked
//!    copy — is refused everywhere from then on (`UNAUTHENTICATED`).
//!
//! Every member accepts both tokens from the first step until the last, so peer traffic and
//! writes go on throughout. Each step is durable on the member before it answers
//! (`store::identity::Tokens`), and every step is idempotent: a rotation cut short after the
//! first step (a member lost mid-way) is finished by running it again with the same new token.
//! This module changes only the tokens; it never touches consensus or the chain.

use std::time::Duration;

use super::Node;
use crate::rpc::pb::admin_client::AdminClient;
use crate::rpc::pb::{TokenOp, TokenRequest};
use crate::store::identity::{ClusterToken, RotateError};

/// How long one member may take to answer one step.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a rotation did not complete.
#[derive(Debug, thiserror::Error)]
pub enum RotateFailure {
    /// A member did not take the first step: the others forgot the new token again.
    #[error(
        "member {id} at {addr} did not stage the new token ({reason}); the rotation was aborted and \
         nothing changed: every member must be reachable to rotate the token"
    )]
    Aborted {
        /// The member.
        id: u64,
        /// Its address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// A member did not take a later step: every member accepts both tokens meanwhile.
    #[error(
        "member {id} at {addr} did not {step} ({reason}); every member accepts both tokens meanwhile: \
         run `lightchain token rotate` again with the same --new-token-file to finish"
    )]
    Incomplete {
        /// The member.
        id: u64,
        /// Its address.
        addr: String,
        /// The step (`switch to the new token`, `retire the old token`).
        step: &'static str,
        /// Why.
        reason: String,
    },
}

impl Node {
    /// One rotation step on this node only.
    pub fn token_step(&self, op: TokenOp, token: &ClusterToken) -> Result<(), RotateError> {
        let tokens = crate::rpc::peer::PeerGuard::tokens(self.guard.as_ref());
        match op {
            TokenOp::Status | TokenOp::Rotate => Ok(()),
            TokenOp::Stage => tokens.stage(token),
            TokenOp::Switch => tokens.switch(token),
            TokenOp::Retire => tokens.retire(token),
            TokenOp::Abort => tokens.abort(token),
        }
    }

    /// Asks member `id` at `addr` (this node, or another through `Admin.Token`) to take `op`.
    async fn token_step_on(
        &self,
        id: u64,
        addr: &str,
        op: TokenOp,
        token: &ClusterToken,
    ) -> Result<(), String> {
        if id == self.id() {
            return self.token_step(op, token).map_err(|e| e.to_string());
        }
        let channel = self.channels.get(addr)?;
        let mut request =
            tonic::Request::new(TokenRequest { op: op as i32, token: token.expose().to_owned() });
        let sent = crate::rpc::peer::PeerGuard::tokens(self.guard.as_ref()).current();
        crate::rpc::peer::attach_token(request.metadata_mut(), &sent);
        request.set_timeout(STEP_TIMEOUT);
        AdminClient::new(channel).token(request).await.map(drop).map_err(|s| s.message().to_owned())
    }

    /// Rotates the cluster token to `new` on every member (see the module docs); the members.
    pub async fn rotate_token(&self, new: &ClusterToken) -> Result<Vec<u64>, RotateFailure> {
        let members: Vec<(u64, String)> = {
            use openraft::async_runtime::WatchReceiver as _;
            let metrics = self.raft.metrics();
            let m = metrics.borrow_watched();
            m.membership_config.membership().nodes().map(|(id, n)| (*id, n.addr.clone())).collect()
        };
        tracing::info!(members = ?members.iter().map(|(id, _)| id).collect::<Vec<_>>(), "rotating the cluster token");
        for (i, (id, addr)) in members.iter().enumerate() {
            if let Err(reason) = self.token_step_on(*id, addr, TokenOp::Stage, new).await {
                tracing::warn!(peer = id, %addr, %reason, "a member did not stage the new token: aborting the rotation");
                for (other, other_addr) in &members[..i] {
                    if let Err(e) = self.token_step_on(*other, other_addr, TokenOp::Abort, new).await {
                        tracing::warn!(peer = other, error = %e, "could not abort the token rotation on a member");
                    }
                }
                return Err(RotateFailure::Aborted { id: *id, addr: addr.clone(), reason });
            }
        }
        for (op, step) in
            [(TokenOp::Switch, "switch to the new token"), (TokenOp::Retire, "retire the old token")]
        {
            for (id, addr) in &members {
                if let Err(reason) = self.token_step_on(*id, addr, op, new).await {
                    tracing::warn!(peer = id, %addr, %reason, step, "a member did not take a token rotation step");
                    return Err(RotateFailure::Incomplete { id: *id, addr: addr.clone(), step, reason });
                }
            }
        }
        tracing::info!("the cluster token was rotated on every member; the old token is refused");
        Ok(members.into_iter().map(|(id, _)| id).collect())
    }
}
