//! Test-only fault hooks: one makes this one node build a different block, so tests can prove
//! that a divergence is loud (DESIGN §1.5); another slows this node's state machine, so tests
//! can watch a node that is still catching up.
//!
//! **Compiled only in debug builds** (`#[cfg(debug_assertions)]` on the module and on its call
//! sites in the state machine): a release build contains neither this code nor the
//! environment lookup, so no setting can make a production node diverge on purpose.
//!
//! With `LIGHTCHAIN_TEST_DIVERGE_AT=HEIGHT` in its environment, the node alters the first
//! application entry it applies at or above that height before building its block: one byte
//! is added to the first `put`/`append` content (else the timestamp moves by 1 ms). The block
//! — and, through `prev_hash`, every later one — hashes differently from the other members',
//! while the consensus log stays the same everywhere. It fires at most once per process.
//!
//! With `LIGHTCHAIN_TEST_APPLY_DELAY_MS=MS`, every log entry waits that long before this node
//! applies it (the log itself is replicated as fast as ever): a joiner then takes visibly long
//! to catch up with a long chain.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use crate::chain::{Batch, Content, Height, TxOp};

/// The environment variable naming the height.
pub const DIVERGE_AT: &str = "LIGHTCHAIN_TEST_DIVERGE_AT";
/// The environment variable naming the delay per applied entry, in milliseconds.
pub const APPLY_DELAY_MS: &str = "LIGHTCHAIN_TEST_APPLY_DELAY_MS";

/// Waits `LIGHTCHAIN_TEST_APPLY_DELAY_MS` for each of `entries` (not at all without it) and
/// hands them back.
pub async fn delay_apply<T>(entries: impl IntoIterator<Item = T>) -> Vec<T> {
    static DELAY: OnceLock<Option<Duration>> = OnceLock::new();
    let delay = *DELAY.get_or_init(|| {
        let ms: u64 = std::env::var(APPLY_DELAY_MS).ok()?.trim().parse().ok()?;
        tracing::warn!(ms, "test hook {APPLY_DELAY_MS}: every log entry is applied that much later");
        Some(Duration::from_millis(ms))
    });
    let entries: Vec<T> = entries.into_iter().collect();
    if let Some(delay) = delay {
        tokio::time::sleep(delay * entries.len() as u32).await;
    }
    entries
}

/// Returns `batch` altered if this is the block the hook targets, else unchanged.
pub fn diverge(height: Height, mut batch: Batch) -> Batch {
    static AT: OnceLock<Option<Height>> = OnceLock::new();
    static FIRED: AtomicBool = AtomicBool::new(false);
    let at = *AT.get_or_init(|| std::env::var(DIVERGE_AT).ok().and_then(|v| v.trim().parse().ok()));
    if at.is_none_or(|at| height < at) || FIRED.swap(true, Ordering::SeqCst) {
        return batch;
    }
    let altered = batch.txs.iter_mut().find_map(|tx| match &mut tx.op {
        TxOp::Put { content, .. } | TxOp::Append { content, .. } => Some(content),
        _ => None,
    });
    match altered {
        Some(content) => {
            let mut bytes = content.as_bytes().to_vec();
            bytes.push(b'!');
            *content = Content::from(bytes);
        }
        None => batch.timestamp_ms += 1,
    }
    tracing::warn!(height, "test fault hook {DIVERGE_AT}: building a different block on purpose");
    batch
}
