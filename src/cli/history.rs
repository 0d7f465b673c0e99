//! `lightchain log`: the chain's history, or one state's, from the data directory.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use serde_json::json;

use crate::chain::{Block, BlockTx, Outcome, StateId, TimeSpec, TxOp};
use crate::store::chain_file::read_all;

pub(super) fn run(data: &Path, state: Option<&str>, json: bool) -> ExitCode {
    let filter = match state.map(|s| StateId::parse(s.trim_matches('/'))).transpose() {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!("lightchain log: '{}' is not a state id: {e}", state.unwrap_or_default());
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if !json {
        let _ = match &filter {
            None => writeln!(
                out,
                "{:<8} {:<24} {:<20} {:>4}  {:<16} SUMMARY",
                "HEIGHT", "TIME (UTC)", "PROPOSER", "TXS", "HASH"
            ),
            Some(_) => {
                writeln!(out, "{:<8} {:<24} {:<10} {:<10} DETAIL", "HEIGHT", "TIME (UTC)", "OP", "OUTCOME")
            }
        };
    }
    let result = read_all(&data.join("chain"), |read| {
        let block = &read.block;
        let line = match &filter {
            None if json => serde_json::to_string(block).expect("blocks serialize"),
            None => block_line(block),
            Some(id) => {
                for tx in block.txs.iter().filter(|tx| touches(tx, id)) {
                    let line = if json { tx_json(block, tx) } else { tx_line(block, tx) };
                    let _ = writeln!(out, "{line}");
                }
                return Ok(());
            }
        };
        let _ = writeln!(out, "{line}");
        Ok(())
    });
    let _ = out.flush();
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lightchain log: {e}");
            ExitCode::FAILURE
        }
    }
}

fn touches(tx: &BlockTx, id: &StateId) -> bool {
    tx.op.state_ids().iter().any(|s| id.is_within(s) || s.is_within(id))
}

fn block_line(block: &Block) -> String {
    let kinds: Vec<String> =
        block.txs.iter().map(|tx| format!("{} {}", tx.op.kind(), names(&tx.op))).collect();
    let mut summary = kinds.join(", ");
    if summary.len() > 60 {
        summary.truncate(57);
        summary.push_str("...");
    }
    format!(
        "{:<8} {:<24} {:<20} {:>4}  {:<16} {}",
        block.height,
        format_time(block.timestamp_ms),
        block.proposer,
        block.txs.len(),
        &block.hash.to_hex()[..16],
        summary
    )
}

fn names(op: &TxOp) -> String {
    op.state_ids().iter().map(|s| s.to_string()).collect::<Vec<_>>().join(" -> ")
}

fn outcome(o: Outcome) -> String {
    match o {
        Outcome::Ok => "ok".into(),
        Outcome::Duplicate => "duplicate".into(),
        Outcome::Expired => "expired (outcome unknown)".into(),
        Outcome::Rejected(r) => format!("rejected: {r}"),
    }
}

fn tx_line(block: &Block, tx: &BlockTx) -> String {
    let detail = match &tx.op {
        TxOp::Put { content, uid, gid, .. } | TxOp::Append { content, uid, gid, .. } => {
            format!("{} bytes {:?} (new: owner {uid}:{gid})", content.len(), content)
        }
        TxOp::Rename { from, to, mode } => format!("{from} -> {to} ({mode:?})"),
        TxOp::Create { mode, exclusive, uid, gid, .. } => {
            format!("mode {mode:o}{} owner {uid}:{gid}", if *exclusive { " exclusive" } else { "" })
        }
        TxOp::Mkdir { mode, uid, gid, .. } => format!("mode {mode:o} owner {uid}:{gid}"),
        TxOp::Chmod { mode, .. } => format!("mode {mode:o}"),
        TxOp::Truncate { size, .. } => format!("size {size}"),
        TxOp::Symlink { target, uid, gid, .. } => format!("-> {target:?} owner {uid}:{gid}"),
        TxOp::Chown { uid, gid, mode, .. } => {
            let show = |v: &Option<u32>| v.map_or("-".to_owned(), |v| v.to_string());
            let mode = mode.map_or(String::new(), |m| format!(" mode {m:o}"));
            format!("owner {}:{}{mode}", show(uid), show(gid))
        }
        TxOp::Times { atime, mtime, .. } => {
            let show = |t: &Option<TimeSpec>| match t {
                None => "-".to_owned(),
                Some(TimeSpec::Now) => "now".to_owned(),
                Some(TimeSpec::At(ns)) => format_ns(*ns),
            };
            format!("atime {} mtime {}", show(atime), show(mtime))
        }
        TxOp::Limits { max_state_size, initial } => {
            format!("max state size {max_state_size}{}", if *initial { " (initial)" } else { "" })
        }
        TxOp::Delete { .. } | TxOp::Rmdir { .. } | TxOp::Membership { .. } => names(&tx.op),
    };
    format!(
        "{:<8} {:<24} {:<10} {:<10} {}",
        block.height,
        format_time(block.timestamp_ms),
        tx.op.kind(),
        outcome(tx.outcome),
        detail
    )
}

fn tx_json(block: &Block, tx: &BlockTx) -> String {
    json!({
        "height": block.height,
        "hash": block.hash,
        "timestamp_ms": block.timestamp_ms,
        "request": tx.request,
        "op": tx.op,
        "outcome": tx.outcome,
    })
    .to_string()
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for milliseconds since the Unix epoch.
pub(super) fn format_time(ms: u64) -> String {
    civil(i64::try_from(ms / 1000).unwrap_or(i64::MAX), ms % 1000)
}

/// [`format_time`] for nanoseconds since the epoch, also before 1970.
fn format_ns(ns: i64) -> String {
    civil(ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000) as u64 / 1_000_000)
}

fn civil(secs: i64, ms: u64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_utc_times() {
        assert_eq!(super::format_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::format_time(1_795_564_800_123), "2026-11-25T00:00:00.123Z");
        assert_eq!(super::format_time(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(super::format_ns(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(super::format_ns(1_577_836_800_000_000_000), "2020-01-01T00:00:00.000Z");
    }
}
