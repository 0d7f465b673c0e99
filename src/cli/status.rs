//! `lightchain status`: a running node's view of the cluster, over gRPC. The node answers
//! holders of the cluster token only: it is read from `--cluster-token-file`, else from the
//! data directory (`--data`, else the default one). A node that requires mutual TLS is asked
//! with `--peer-tls-cert/--peer-tls-key/--peer-tls-ca` (any certificate the cluster's CA signed).
//!
//! Exit codes: 0 healthy (ready, a leader known, no member `DIVERGED`); 1 not healthy;
//! 2 the node could not be asked; 3 a member's chain (possibly the asked node's own) diverged.

use std::process::ExitCode;
use std::time::Duration;

use std::path::Path;

use crate::node::Status;
use crate::store::identity::ClusterToken;
use crate::store::DataDir;

/// The token to present: from `--cluster-token-file`, else from the data directory. Without
/// either, none is sent (the node will refuse, and the error says why).
pub(super) fn find_token(data: &Path, token_file: Option<&Path>) -> Result<Option<ClusterToken>, String> {
    if let Some(file) = token_file {
        return ClusterToken::read_file(file).map(Some).map_err(|e| e.to_string());
    }
    match ClusterToken::load(&DataDir { root: data.to_owned() }) {
        Ok(token) => {
            if token.is_none() {
                eprintln!(
                    "lightchain status: no cluster token in {} (give --data DIR or --cluster-token-file FILE)",
                    data.display()
                );
            }
            Ok(token)
        }
        Err(e) => Err(e.to_string()),
    }
}

pub(super) fn run(
    addr: &str,
    json: bool,
    data: &Path,
    token_file: Option<&Path>,
    tls: &super::PeerTlsArgs,
) -> ExitCode {
    let token = match find_token(data, token_file) {
        Ok(token) => token,
        Err(message) => {
            eprintln!("lightchain status: {message}");
            return ExitCode::from(2);
        }
    };
    let tls = match tls.load() {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("lightchain status: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let fetched = runtime.block_on(crate::rpc::admin::fetch_status(
        addr,
        Duration::from_secs(5),
        token.as_ref(),
        tls.as_ref(),
    ));
    let json_text = match fetched {
        Ok(text) => text,
        Err(message) => {
            eprintln!("lightchain status: {message}");
            if tls.is_none() {
                eprintln!(
                    "lightchain status: if the node requires mutual TLS, give --peer-tls-cert, --peer-tls-key and --peer-tls-ca"
                );
            }
            return ExitCode::from(2);
        }
    };
    let status: Status = match serde_json::from_str(&json_text) {
        Ok(status) => status,
        Err(_) => {
            // A node that is still starting answers with a short document.
            println!("{json_text}");
            eprintln!("lightchain status: {addr} is starting (not ready)");
            return ExitCode::FAILURE;
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status).expect("status serializes"));
    } else {
        println!("node       {} ({}) at {}", status.node_id, status.name, status.listen);
        println!("cluster    {}", status.cluster_id.as_deref().unwrap_or("-"));
        println!("role       {} (term {})", status.role, status.term);
        println!("leader     {}", status.leader.map_or("none".into(), |l| l.to_string()));
        println!(
            "head       height {} hash {}",
            status.head_height.map_or("-".into(), |h| h.to_string()),
            status.head_hash.as_deref().unwrap_or("-")
        );
        println!(
            "chain/     height {} (written behind)",
            status.chain_height.map_or("-".into(), |h| h.to_string())
        );
        let m = &status.mirror;
        println!(
            "states/    height {}, lag {}, {} errors, {} failing{}",
            m.height.map_or("-".into(), |h| h.to_string()),
            m.lag,
            m.errors,
            m.failing,
            m.last_error.as_ref().map_or(String::new(), |e| format!(" (last: {e})"))
        );
        println!("states     {}", status.states);
        match &status.not_ready {
            Some(why) => println!("ready      false (not ready: {why})"),
            None => println!("ready      {}", status.ready),
        }
        if let Some(d) = &status.diverged {
            println!(
                "DIVERGED   at height {}: this node's hash {}, the cluster's {} (member {}); it serves nothing",
                d.height, d.hash, d.expected, d.member
            );
        }
        if let Some(why) = &status.removed {
            println!("REMOVED    this node is no longer a member ({why}); it serves no writes");
        }
        println!("members");
        println!("  {:<20} {:<22} {:<8} {:>8} {:>6}  STATE", "ID", "ADDRESS", "ROLE", "HEIGHT", "LAG");
        for m in &status.members {
            let leader = if Some(m.id) == status.leader { ", leader" } else { "" };
            let state = if m.diverged {
                "DIVERGED"
            } else if !m.reachable {
                "unreachable"
            } else if m.ready {
                "ready"
            } else {
                "not ready"
            };
            let height = m.head_height.map_or("-".into(), |h| h.to_string());
            let lag = m.lag.map_or("-".into(), |l| l.to_string());
            println!("  {:<20} {:<22} {:<8} {:>8} {:>6}  {state}{leader}", m.id, m.addr, m.role, height, lag);
        }
    }
    if status.diverged.is_some() || status.members.iter().any(|m| m.diverged) {
        eprintln!("lightchain status: a member's chain diverged from the cluster's");
        ExitCode::from(3)
    } else if status.ready && status.leader.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
