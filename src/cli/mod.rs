//! The command line: flags (each with an environment twin), logging, and the five commands.
//!
//! - `mount`: runs a node and serves its filesystem until SIGINT/SIGTERM ([`mount`]).
//! - `status`: asks a running node for its view over gRPC ([`status`]).
//! - `member`: lists, removes or promotes members over gRPC ([`member`]).
//! - `log`: prints the chain, or one state's history, from the data directory ([`history`]).
//! - `verify`: rebuilds every block from its transactions and checks `states/` ([`verify`]).
//!
//! `log` and `verify` read the data directory directly and work whether or not a node runs.
//!
//! See `docs/architecture/cli.md`.

mod guard;
mod history;
mod member;
mod mount;
mod status;
pub(crate) mod verify;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::node::ReadConsistency;

/// A FUSE filesystem that is a small replicated blockchain.
#[derive(Debug, Parser)]
#[command(name = "lightchain", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the filesystem at MOUNTPOINT until SIGINT/SIGTERM.
    Mount(Box<MountArgs>),
    /// Show a running node's view of the cluster; exit 0 only when it is healthy.
    Status {
        /// The node's gRPC address.
        #[arg(long, env = "LIGHTCHAIN_ADDR", default_value = "127.0.0.1:7070")]
        addr: String,
        /// Print the status document as JSON.
        #[arg(long)]
        json: bool,
        /// The node's data directory, where the cluster token is read from.
        #[arg(long, env = "LIGHTCHAIN_DATA")]
        data: Option<PathBuf>,
        /// The cluster token file (instead of the data directory's token).
        #[arg(long, env = "LIGHTCHAIN_CLUSTER_TOKEN_FILE")]
        cluster_token_file: Option<PathBuf>,
        /// Mutual TLS towards a node that requires it (the same files as the node's).
        #[command(flatten)]
        tls: PeerTlsArgs,
    },
    /// List, remove or promote cluster members (through any member; changes go to the leader).
    Member {
        /// What to do.
        #[command(subcommand)]
        action: MemberAction,
        /// A member's gRPC address.
        #[arg(long, env = "LIGHTCHAIN_ADDR", default_value = "127.0.0.1:7070", global = true)]
        addr: String,
        /// Print JSON.
        #[arg(long, global = true)]
        json: bool,
        /// The node's data directory, where the cluster token is read from.
        #[arg(long, env = "LIGHTCHAIN_DATA", global = true)]
        data: Option<PathBuf>,
        /// The cluster token file (instead of the data directory's token).
        #[arg(long, env = "LIGHTCHAIN_CLUSTER_TOKEN_FILE", global = true)]
        cluster_token_file: Option<PathBuf>,
        /// Mutual TLS towards a node that requires it (the same files as the node's).
        #[command(flatten)]
        tls: PeerTlsArgs,
    },
    /// Show the cluster-wide limits recorded in the chain, or change them (a transaction).
    Limits {
        /// The new largest content of one state (e.g. 4MiB; at most 32MiB).
        #[arg(long, value_parser = parse_state_size)]
        max_state_size: Option<u64>,
        /// A member's gRPC address.
        #[arg(long, env = "LIGHTCHAIN_ADDR", default_value = "127.0.0.1:7070")]
        addr: String,
        /// The node's data directory, where the cluster token is read from.
        #[arg(long, env = "LIGHTCHAIN_DATA")]
        data: Option<PathBuf>,
        /// The cluster token file (instead of the data directory's token).
        #[arg(long, env = "LIGHTCHAIN_CLUSTER_TOKEN_FILE")]
        cluster_token_file: Option<PathBuf>,
        /// Mutual TLS towards a node that requires it (the same files as the node's).
        #[command(flatten)]
        tls: PeerTlsArgs,
    },
    /// Replace the cluster token on every member without downtime, or show where a rotation stands.
    Token {
        /// What to do.
        #[command(subcommand)]
        action: TokenAction,
        /// A member's gRPC address (it coordinates a rotation).
        #[arg(long, env = "LIGHTCHAIN_ADDR", default_value = "127.0.0.1:7070", global = true)]
        addr: String,
        /// The node's data directory, where the cluster token is read from.
        #[arg(long, env = "LIGHTCHAIN_DATA", global = true)]
        data: Option<PathBuf>,
        /// The cluster token file (instead of the data directory's token).
        #[arg(long, env = "LIGHTCHAIN_CLUSTER_TOKEN_FILE", global = true)]
        cluster_token_file: Option<PathBuf>,
        /// Mutual TLS towards a node that requires it (the same files as the node's).
        #[command(flatten)]
        tls: PeerTlsArgs,
    },
    /// Print the history of the chain, or of one state.
    Log {
        /// Only transactions that touch this state (a path relative to the mount).
        state: Option<String>,
        /// The data directory.
        #[arg(long, env = "LIGHTCHAIN_DATA")]
        data: Option<PathBuf>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Check every block's hash, link and content, and states/ against the chain.
    Verify {
        /// The data directory.
        #[arg(long, env = "LIGHTCHAIN_DATA")]
        data: Option<PathBuf>,
    },
}

/// `lightchain token` actions.
#[derive(Debug, Clone, Subcommand)]
pub enum TokenAction {
    /// Every member accepts the new token, then sends it, then refuses the old one. Make the new
    /// token with `(umask 077; openssl rand -hex 32 > FILE)`; afterwards give FILE to new members
    /// (and update `--cluster-token-file` / the Kubernetes Secret).
    Rotate {
        /// The new token.
        #[arg(long)]
        new_token_file: PathBuf,
    },
    /// Where a rotation stands on the node asked (steady, staged or switched).
    Status,
}

/// `lightchain member` actions.
#[derive(Debug, Clone, Copy, Subcommand)]
pub enum MemberAction {
    /// Every member: id, address, role (voter or learner), and the leader.
    List,
    /// Remove a member (voter or learner). The removed node stops serving writes.
    Remove {
        /// The member's node id.
        id: u64,
    },
    /// Make a learner a voter.
    Promote {
        /// The learner's node id.
        id: u64,
    },
}

/// Flags of `lightchain mount`.
#[derive(Debug, clap::Args)]
pub struct MountArgs {
    /// Where to mount the filesystem (created if missing).
    pub mountpoint: PathBuf,
    /// The data directory [default: $XDG_DATA_HOME/lightchain or ~/.local/share/lightchain].
    #[arg(long, env = "LIGHTCHAIN_DATA")]
    pub data: Option<PathBuf>,
    /// Address of the gRPC server (port 0 picks a free port).
    #[arg(long, env = "LIGHTCHAIN_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: String,
    /// Address peers reach this node at [default: the bound listen address].
    #[arg(long, env = "LIGHTCHAIN_ADVERTISE")]
    pub advertise: Option<String>,
    /// A member of a static cluster (HOST:PORT); give every node the same full list (this
    /// node's own address may be in it). Repeat the flag or separate addresses by commas.
    #[arg(long = "peer", env = "LIGHTCHAIN_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Take a snapshot every this many log entries (the log before it can then be purged).
    #[arg(long, env = "LIGHTCHAIN_SNAPSHOT_EVERY", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(10..))]
    pub snapshot_every: u64,
    /// A human name for logs and status [default: the host name].
    #[arg(long, env = "LIGHTCHAIN_NAME")]
    pub name: Option<String>,
    /// How opens are served: linearizable, or from the local replica.
    #[arg(long, env = "LIGHTCHAIN_READ_CONSISTENCY", value_enum, default_value = "linearizable")]
    pub read_consistency: ReadConsistency,
    /// How long a commit or a linearizable read may wait (e.g. 10s, 500ms).
    #[arg(long, env = "LIGHTCHAIN_COMMIT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub commit_timeout: Duration,
    /// Largest content of one state (e.g. 1048576, 1MiB, 64KiB; at most 32MiB) for a new
    /// cluster, which records it in its chain (default 1MiB). The limit is the cluster's: a
    /// member started with another value logs the difference; `lightchain limits` changes it.
    #[arg(long, env = "LIGHTCHAIN_MAX_STATE_SIZE", value_parser = parse_state_size)]
    pub max_state_size: Option<u64>,
    /// Let other users than the mounting one use the mount.
    #[arg(long, env = "LIGHTCHAIN_ALLOW_OTHER")]
    pub allow_other: bool,
    /// The cluster token, shared by every member (a file holding one line of 16 to 1024 visible
    /// ASCII characters, e.g. from `openssl rand -hex 32`). Copied into the data directory.
    /// Required with --peer and for a non-loopback --listen; a lone node makes its own.
    #[arg(long, env = "LIGHTCHAIN_CLUSTER_TOKEN_FILE")]
    pub cluster_token_file: Option<PathBuf>,
    /// Join a running cluster through any member (HOST:PORT; a follower forwards to the
    /// leader): on a new data directory only (ignored once it holds data). Repeat the flag or
    /// separate addresses by commas. Needs --cluster-token-file.
    #[arg(long = "join", env = "LIGHTCHAIN_JOIN", value_delimiter = ',')]
    pub join: Vec<String>,
    /// How many voters the cluster should have: while it has fewer, the leader promotes
    /// caught-up learners; past that, joiners stay learners (read replicas). Odd, 1 to 7.
    #[arg(long, env = "LIGHTCHAIN_VOTERS", default_value_t = 3, value_parser = parse_voters)]
    pub voters: usize,
    /// A voter unheard of for this long (the grace period) is replaced by a caught-up learner,
    /// which becomes a voter; the lost one stays a learner. `0` never replaces.
    #[arg(long, env = "LIGHTCHAIN_REPLACE_AFTER", default_value = "60s", value_parser = parse_duration)]
    pub replace_after: Duration,
    /// Cold start by discovery (Kubernetes): a new data directory waits until it finds this
    /// many new nodes through --discover-dns (and --peer), then they found one cluster
    /// together, in any start order; if it finds a running cluster instead, it joins it (a
    /// node that lost its data is replaced). Every founder gets the same number; at most
    /// --voters. Ignored once the data directory holds data.
    #[arg(long, env = "LIGHTCHAIN_BOOTSTRAP_EXPECT", conflicts_with = "join", value_parser = clap::value_parser!(u64).range(1..=7))]
    pub bootstrap_expect: Option<u64>,
    /// NAME:PORT whose addresses are the nodes to discover (a headless Service's name),
    /// resolved again every round. Needs --bootstrap-expect.
    #[arg(long, env = "LIGHTCHAIN_DISCOVER_DNS", requires = "bootstrap_expect")]
    pub discover_dns: Option<String>,
    /// On a clean stop, also remove the read-only guard mounted beneath the FUSE mount, leaving
    /// MOUNTPOINT a plain (writable) directory. Without it the guard stays, so no write lands
    /// there while no node serves it; `umount MOUNTPOINT` releases it.
    #[arg(long, env = "LIGHTCHAIN_RELEASE_GUARD_ON_STOP")]
    pub release_guard_on_stop: bool,
    /// Mutual TLS for peer traffic.
    #[command(flatten)]
    pub tls: PeerTlsArgs,
}

/// `--peer-tls-cert`, `--peer-tls-key`, `--peer-tls-ca`: all three or none (DESIGN §1.7).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PeerTlsArgs {
    /// This node's certificate (PEM, chain allowed); it must name the host of --advertise (or
    /// of --listen) as a subject alternative name. With --peer-tls-key and --peer-tls-ca, the
    /// gRPC port accepts mutual TLS only and every peer connection uses it.
    #[arg(long, env = "LIGHTCHAIN_PEER_TLS_CERT", global = true)]
    pub peer_tls_cert: Option<PathBuf>,
    /// The private key of --peer-tls-cert (PEM).
    #[arg(long, env = "LIGHTCHAIN_PEER_TLS_KEY", global = true)]
    pub peer_tls_key: Option<PathBuf>,
    /// The CA that signs every member's certificate (PEM); the only root trusted, both ways.
    #[arg(long, env = "LIGHTCHAIN_PEER_TLS_CA", global = true)]
    pub peer_tls_ca: Option<PathBuf>,
}

impl PeerTlsArgs {
    /// Reads the files: `None` without the flags, an error when only some are given.
    pub fn load(&self) -> Result<Option<crate::rpc::tls::PeerTls>, crate::rpc::tls::TlsError> {
        crate::rpc::tls::PeerTls::from_flags(
            self.peer_tls_cert.as_deref(),
            self.peer_tls_key.as_deref(),
            self.peer_tls_ca.as_deref(),
        )
    }
}

/// Parses `--voters`: an odd number from 1 to 7.
fn parse_voters(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n % 2 == 1 && n <= 7 => Ok(n),
        _ => Err(format!("'{s}': --voters is an odd number from 1 to 7")),
    }
}

/// Parses `10s`, `500ms`, `2m` or a plain number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: f64 = number.parse().map_err(|_| format!("'{s}' is not a duration like 10s or 500ms"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        _ => return Err(format!("unknown unit '{unit}' in '{s}' (use ms, s or m)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// Parses `1048576`, `1MiB`, `64KiB`, `1M`, `64K`.
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("'{s}' is not a size like 1MiB"))?;
    let factor = match unit {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        _ => return Err(format!("unknown unit '{unit}' in '{s}' (use KiB, MiB or GiB)")),
    };
    n.checked_mul(factor).ok_or_else(|| format!("'{s}' is too large"))
}

/// A `--max-state-size`: a size from 1 byte up to the cap of a cluster's limit.
fn parse_state_size(s: &str) -> Result<u64, String> {
    let size = parse_size(s)?;
    let cap = crate::chain::MAX_STATE_SIZE_CAP;
    if !(crate::chain::Limits { max_state_size: size }).valid() {
        return Err(format!(
            "{s} is not a state size lightchain allows: from 1 byte up to {} MiB, so that a state and its block always fit in one peer message",
            cap >> 20
        ));
    }
    Ok(size)
}

/// The data directory: the flag (or `$LIGHTCHAIN_DATA`), else `$XDG_DATA_HOME/lightchain`,
/// else `~/.local/share/lightchain`.
pub fn data_dir(flag: Option<PathBuf>) -> PathBuf {
    if let Some(dir) = flag {
        return dir;
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("lightchain");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".local/share/lightchain")
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn,fuser=warn"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Runs the command line; the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match cli.command {
        Command::Mount(args) => mount::run(*args),
        Command::Status { addr, json, data, cluster_token_file, tls } => {
            status::run(&addr, json, &data_dir(data), cluster_token_file.as_deref(), &tls)
        }
        Command::Member { action, addr, json, data, cluster_token_file, tls } => {
            member::run(action, &addr, json, &data_dir(data), cluster_token_file.as_deref(), &tls)
        }
        Command::Limits { max_state_size, addr, data, cluster_token_file, tls } => {
            member::limits(max_state_size, &addr, &data_dir(data), cluster_token_file.as_deref(), &tls)
        }
        Command::Token { action, addr, data, cluster_token_file, tls } => {
            member::token(action, &addr, &data_dir(data), cluster_token_file.as_deref(), &tls)
        }
        Command::Log { state, data, json } => history::run(&data_dir(data), state.as_deref(), json),
        Command::Verify { data } => verify::run(&data_dir(data)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("5h").is_err());
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert!(parse_size("1TB").is_err());
        assert_eq!(parse_voters("5"), Ok(5));
        assert_eq!(parse_voters("1"), Ok(1));
        assert!(parse_voters("4").is_err(), "an even number of voters");
        assert!(parse_voters("9").is_err(), "more than 7 voters");
        assert!(parse_voters("0").is_err());
    }

    #[test]
    fn cli_parses() {
        Cli::command_for_tests().debug_assert();
    }

    impl Cli {
        fn command_for_tests() -> clap::Command {
            <Cli as clap::CommandFactory>::command()
        }
    }
}
