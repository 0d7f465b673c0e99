//! `lightchain member list|remove ID|promote ID`: the cluster's membership over gRPC (the admin
//! service), in the etcdctl style; `lightchain limits`, the cluster-wide limits; and `lightchain
//! token`, the token's rotation. The token is found as for `status` (`--cluster-token-file`,
//! else the data directory's), and `--peer-tls-*` give mutual TLS towards a node that requires
//! it. A change asked of a follower is forwarded to the leader.
//!
//! Exit codes: 0 done; 1 the change was refused (no such member, a voter already, the last
//! voter); 2 the node could not be asked or had no leader.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use super::{MemberAction, PeerTlsArgs};
use crate::node::membership::MemberList;
use crate::rpc::pb::MemberOp;
use crate::rpc::tls::PeerTls;
use crate::store::identity::ClusterToken;

/// The token and the TLS files for command `what`, or the exit code after saying what is wrong.
fn credentials(
    what: &str,
    data: &Path,
    token_file: Option<&Path>,
    tls: &PeerTlsArgs,
) -> Result<(Option<ClusterToken>, Option<PeerTls>), ExitCode> {
    let token = super::status::find_token(data, token_file).map_err(|message| {
        eprintln!("lightchain {what}: {message}");
        ExitCode::from(2)
    })?;
    let tls = tls.load().map_err(|e| {
        eprintln!("lightchain {what}: {e}");
        ExitCode::from(2)
    })?;
    Ok((token, tls))
}

pub(super) fn run(
    action: MemberAction,
    addr: &str,
    json: bool,
    data: &Path,
    token_file: Option<&Path>,
    tls: &PeerTlsArgs,
) -> ExitCode {
    let (token, tls) = match credentials("member", data, token_file, tls) {
        Ok(found) => found,
        Err(code) => return code,
    };
    let (op, id) = match action {
        MemberAction::List => (MemberOp::List, 0),
        MemberAction::Remove { id } => (MemberOp::Remove, id),
        MemberAction::Promote { id } => (MemberOp::Promote, id),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let call =
        crate::rpc::admin::member_call(addr, Duration::from_secs(30), token.as_ref(), tls.as_ref(), op, id);
    let text = match runtime.block_on(call) {
        Ok(text) => text,
        Err(message) => {
            eprintln!("lightchain member: {message}");
            let refused =
                ["is not a member", "a voter already", "last voter"].iter().any(|s| message.contains(s));
            return if refused { ExitCode::FAILURE } else { ExitCode::from(2) };
        }
    };
    let list: MemberList = match serde_json::from_str(&text) {
        Ok(list) => list,
        Err(e) => {
            eprintln!("lightchain member: unreadable answer ({e}): {text}");
            return ExitCode::from(2);
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&list).expect("members serialize"));
    } else {
        println!("{:<20} {:<22} {:<8}", "ID", "ADDRESS", "ROLE");
        for m in &list.members {
            let leader = if Some(m.id) == list.leader { " (leader)" } else { "" };
            println!("{:<20} {:<22} {:<8}{leader}", m.id, m.addr, m.role);
        }
    }
    ExitCode::SUCCESS
}

/// `lightchain limits [--max-state-size SIZE]`: prints the cluster's limits as JSON, after
/// changing them if asked. Exit codes: 0 done; 1 the change was refused; 2 the node could not be
/// asked.
pub(super) fn limits(
    max_state_size: Option<u64>,
    addr: &str,
    data: &Path,
    token_file: Option<&Path>,
    tls: &PeerTlsArgs,
) -> ExitCode {
    let (token, tls) = match credentials("limits", data, token_file, tls) {
        Ok(found) => found,
        Err(code) => return code,
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let call = crate::rpc::admin::limits_call(
        addr,
        Duration::from_secs(30),
        token.as_ref(),
        tls.as_ref(),
        max_state_size.unwrap_or(0),
    );
    match runtime.block_on(call) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("lightchain limits: {message}");
            let refused = message.contains("max state size");
            ExitCode::from(if refused { 1 } else { 2 })
        }
    }
}

/// `lightchain token rotate|status`: prints the JSON answer. Exit codes: 0 done; 1 refused or
/// incomplete (the message says what to do); 2 the node could not be asked.
pub(super) fn token(
    action: super::TokenAction,
    addr: &str,
    data: &Path,
    token_file: Option<&Path>,
    tls: &PeerTlsArgs,
) -> ExitCode {
    let (token, tls) = match credentials("token", data, token_file, tls) {
        Ok(found) => found,
        Err(code) => return code,
    };
    let (op, new) = match action {
        super::TokenAction::Status => (crate::rpc::pb::TokenOp::Status, String::new()),
        super::TokenAction::Rotate { new_token_file } => {
            match crate::store::identity::ClusterToken::read_file(&new_token_file) {
                Ok(new) if token.as_ref() == Some(&new) => {
                    eprintln!("lightchain token rotate: the new token is the current one");
                    return ExitCode::from(1);
                }
                Ok(new) => (crate::rpc::pb::TokenOp::Rotate, new.expose().to_owned()),
                Err(e) => {
                    eprintln!("lightchain token rotate: {e}");
                    return ExitCode::from(2);
                }
            }
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let call =
        crate::rpc::admin::token_call(addr, Duration::from_secs(120), token.as_ref(), tls.as_ref(), op, &new);
    match runtime.block_on(call) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("lightchain token: {message}");
            let reached = !message.starts_with("cannot reach") && !message.starts_with("bad address");
            ExitCode::from(if reached { 1 } else { 2 })
        }
    }
}
