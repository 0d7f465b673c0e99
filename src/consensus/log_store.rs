//! openraft's log storage over [`RaftLog`](crate::store::raft_log::RaftLog).
//!
//! `append` writes the entries at once and hands the fsync to a flusher thread, which fsyncs
//! once for every append that queued up meanwhile and only then reports them flushed: an entry
//! counts (is acknowledged to the leader, or committed on a single node) only after fsync.
//! The vote is saved durably before `save_vote` returns, after everything appended before it.
//!
//! Entries are stored in the binary encoding of [`codec`](super::codec) (records of earlier
//! versions, JSON, are still read). The newest are also kept decoded in memory
//! ([`recent`](super::recent)), so replicating and applying an entry just appended reads no
//! file. What replication reads at once is bounded in bytes
//! ([`MAX_APPEND_BYTES`](super::MAX_APPEND_BYTES)), so one AppendEntries carries a few 1 MiB
//! states, not `max_payload_entries` of them.

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};

use super::recent::{Recent, RECENT_BYTES};
use super::typ::{Entry, LogId, Vote};
use super::{storage_error, TypeConfig};
use crate::store::raft_log::{RaftLog, SyncHandle};

const VOTE: &str = "vote.json";
const COMMITTED: &str = "committed.json";
const PURGED: &str = "purged.json";

struct Inner {
    log: RaftLog,
    /// The newest entries, decoded, for the reads that follow an append (replication, apply).
    recent: Recent<Entry>,
    last_purged: Option<LogId>,
    /// The vote as last saved (durably), so readers need no file read.
    vote: Option<Vote>,
    /// The committed log id openraft last reported, and whether `raft/committed.json` lags it.
    committed: Option<LogId>,
    committed_unsaved: bool,
}

/// `raft/committed.json` is a hint (a restarted node may apply up to it before it hears from a
/// leader; nothing depends on it being current), so a thread writes it at most this often,
/// off the commit path. Writing it on every commit cost 0.4–0.6 ms of file creation inside the
/// Raft core, before apply (docs/architecture/write-path.md).
const COMMITTED_SAVE_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// Writes `raft/committed.json` behind openraft, until the log store is gone.
fn save_committed_behind(inner: std::sync::Weak<Mutex<Inner>>) {
    while let Some(inner) = inner.upgrade() {
        {
            let mut inner = inner.lock().unwrap();
            if inner.committed_unsaved {
                let bytes = serde_json::to_vec(&inner.committed).expect("log id serializes");
                match inner.log.save_meta_lazy(COMMITTED, &bytes) {
                    Ok(()) => inner.committed_unsaved = false,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot save raft/committed.json (a hint); retrying")
                    }
                }
            }
        }
        drop(inner);
        std::thread::sleep(COMMITTED_SAVE_EVERY);
    }
}

/// The consensus log store. Clones share the same log (one is openraft's reader).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
    flusher: mpsc::Sender<Flush>,
}

/// An append handed to the flusher: the segment it went to and whom to tell once it is durable.
struct Flush {
    segment: SyncHandle,
    callback: IOFlushed<TypeConfig>,
}

impl LogStore {
    /// Opens the log in `dir` and starts its flusher thread.
    pub fn open(dir: &Path) -> crate::store::Result<LogStore> {
        let mut log = RaftLog::open(dir)?;
        let last_purged: Option<LogId> = log.load_meta(PURGED)?.and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(p) = &last_purged {
            log.purge_upto(p.index)?;
        }
        let vote =
            match log.load_meta(VOTE)? {
                Some(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| {
                    crate::store::Error::Corrupt { path: dir.join(VOTE), detail: e.to_string() }
                })?),
                None => None,
            };
        let (tx, rx) = mpsc::channel::<Flush>();
        std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || flush_loop(rx))
            .expect("spawn flusher thread");
        let inner = Arc::new(Mutex::new(Inner {
            log,
            recent: Recent::new(RECENT_BYTES),
            last_purged,
            vote,
            committed: None,
            committed_unsaved: false,
        }));
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("lc-committed".into())
            .spawn(move || save_committed_behind(weak))
            .map_err(|e| crate::store::Error::Io { op: "start thread", path: dir.to_owned(), source: e })?;
        Ok(LogStore { inner, flusher: tx })
    }

    /// Reads entries `[start, end)` until they hold [`MAX_APPEND_BYTES`](super::MAX_APPEND_BYTES)
    /// (always at least one).
    fn read_limited(&self, start: u64, end: u64) -> Result<Vec<Entry>, std::io::Error> {
        let inner = self.inner.lock().unwrap();
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for index in start..end {
            let Some(len) = inner.log.payload_len(index) else { break };
            if !out.is_empty() && bytes + len as usize > super::MAX_APPEND_BYTES {
                break;
            }
            let Some(entry) = inner.entry(index)? else { break };
            bytes += len as usize;
            out.push(entry);
        }
        Ok(out)
    }
}

impl Inner {
    /// The entry at `index`: from the recent tail, else read from the file; `None` past the log.
    fn entry(&self, index: u64) -> Result<Option<Entry>, std::io::Error> {
        if let Some(entry) = self.recent.get(index) {
            return Ok(Some(entry.clone()));
        }
        let read =
            self.log.read(index).map_err(|e| storage_error(format_args!("read log entry {index}"), e))?;
        read.map(|bytes| {
            super::codec::decode_record(&bytes).map_err(|e| storage_error("decode a log record", e))
        })
        .transpose()
    }
}

/// Fsyncs once for every batch of appends waiting, then reports them flushed, in order.
fn flush_loop(rx: mpsc::Receiver<Flush>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        // Segments roll rarely; when they do, the old one was fsynced at the roll, so
        // syncing the newest handle covers every write in the batch.
        let last = batch.pop().unwrap();
        let result = last.segment.sync();
        tracing::debug!(appends = batch.len() + 1, "log fsynced");
        for callback in batch.into_iter().map(|f| f.callback).chain([last.callback]) {
            let result = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            callback.io_completed(result);
        }
        if result.is_ok() {
            // What was appended is read back from memory (`recent`), or rarely: the kernel may
            // drop it from its cache (store::drop_cached), once the appends are reported.
            last.segment.drop_cached();
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, std::io::Error> {
        self.read_limited(start, end)
    }

    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, std::io::Error> {
        let inner = self.inner.lock().unwrap();
        let Some((lo, hi)) = inner.log.bounds() else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for index in lo..=hi {
            if !range.contains(&index) {
                if out.is_empty() {
                    continue;
                }
                break;
            }
            match inner.entry(index)? {
                Some(entry) => out.push(entry),
                None => break,
            }
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, std::io::Error> {
        Ok(self.inner.lock().unwrap().vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, std::io::Error> {
        let inner = self.inner.lock().unwrap();
        let last = match inner.log.bounds() {
            Some((_, hi)) => Some(inner.entry(hi)?.expect("bounds are held").log_id()),
            None => inner.last_purged,
        };
        Ok(LogState { last_purged_log_id: inner.last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), std::io::Error> {
        let mut inner = self.inner.lock().unwrap();
        let bytes = serde_json::to_vec(vote).expect("vote serializes");
        // What was appended before the vote becomes durable before it: a durable vote then
        // implies a durable log up to it. Otherwise a power cut could keep a new cluster's
        // vote and lose its first entry, and the node could neither initialize (openraft sees
        // a vote) nor be replicated to (nobody else has the cluster). Votes are rare; the
        // extra fsync usually finds nothing to write.
        inner.log.sync().map_err(|e| storage_error("sync the log before a vote", e))?;
        inner.log.save_meta(VOTE, &bytes).map_err(|e| storage_error(format_args!("save vote {vote}"), e))?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), std::io::Error> {
        // Recorded here; the file follows within COMMITTED_SAVE_EVERY (save_committed_behind).
        let mut inner = self.inner.lock().unwrap();
        inner.committed = committed;
        inner.committed_unsaved = true;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, std::io::Error> {
        let inner = self.inner.lock().unwrap();
        if inner.committed.is_some() {
            return Ok(inner.committed);
        }
        let bytes =
            inner.log.load_meta(COMMITTED).map_err(|e| storage_error("read raft/committed.json", e))?;
        let Some(committed) = bytes.and_then(|b| serde_json::from_slice::<Option<LogId>>(&b).ok()).flatten()
        else {
            return Ok(None);
        };
        // The file is written behind openraft, which may count as committed entries this node
        // had not yet made durable: after a power cut it can name an entry the log lost (or one
        // another entry replaced). Trust it only if the log holds exactly that entry; otherwise
        // start from what the state machine applied, which only ever holds committed entries.
        match inner.entry(committed.index)? {
            Some(entry) if entry.log_id() == committed => Ok(Some(committed)),
            held => {
                tracing::warn!(
                    %committed,
                    held = ?held.map(|e| e.log_id()),
                    "raft/committed.json names an entry the log does not hold (lost in a power cut?); \
                     starting from the applied state"
                );
                Ok(None)
            }
        }
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), std::io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let segment = {
            let mut inner = self.inner.lock().unwrap();
            for entry in entries {
                let log_id = entry.log_id();
                let bytes = super::codec::encode_record(&entry);
                inner
                    .log
                    .append(log_id.index, &bytes)
                    .map_err(|e| storage_error(format_args!("append log entry {log_id}"), e))?;
                inner.recent.push(log_id.index, entry, bytes.len());
            }
            inner.log.sync_handle().map_err(|e| storage_error("open the log segment for fsync", e))?
        };
        tracing::debug!("log appended");
        self.flusher.send(Flush { segment, callback }).expect("flusher thread lives as long as the store");
        Ok(())
    }

    async fn truncate_after(&mut self, last: Option<LogId>) -> Result<(), std::io::Error> {
        let mut inner = self.inner.lock().unwrap();
        let Some(from) = truncation_start(last, inner.log.bounds()) else {
            return Ok(());
        };
        inner.recent.truncate_from(from);
        inner
            .log
            .truncate_from(from)
            .map_err(|e| storage_error(format_args!("truncate the log from {from}"), e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), std::io::Error> {
        let mut inner = self.inner.lock().unwrap();
        let bytes = serde_json::to_vec(&log_id).expect("log id serializes");
        inner
            .log
            .save_meta(PURGED, &bytes)
            .map_err(|e| storage_error(format_args!("record the purge up to {log_id}"), e))?;
        inner.recent.purge_upto(log_id.index);
        inner
            .log
            .purge_upto(log_id.index)
            .map_err(|e| storage_error(format_args!("purge the log up to {log_id}"), e))?;
        inner.last_purged = Some(log_id);
        Ok(())
    }
}

/// The first index `truncate_after(last)` removes, given the log's `(first, last)` indexes:
/// the one after `last`, or the whole log when `last` is `None`; `None` when nothing follows.
fn truncation_start(last: Option<LogId>, bounds: Option<(u64, u64)>) -> Option<u64> {
    let (lo, hi) = bounds?;
    let from = last.map_or(lo, |l| (l.index + 1).max(lo));
    (from <= hi).then_some(from)
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;
    use openraft::storage::{IOFlushed, RaftLogStorage};
    use openraft::type_config::TypeConfigExt;
    use openraft::{EntryPayload, RaftLogReader};

    use super::*;
    use crate::consensus::typ::{CommittedLeaderId, Membership};

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn log_id(term: u64, node_id: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId { term, node_id }, index)
    }

    // Written by lightchain on openraft 0.9.25 (`codec::encode_record` of an `Entry`, and the
    // JSON of `raft/vote.json`, `raft/committed.json`, `raft/snapshot.json`).
    const NORMAL_09: &str = "0282a66c6f675f696482a96c65616465725f696482a47465726d03a76e6f64655f696401a5696e64657807a77061796c6f616481a64e6f726d616c82ac74696d657374616d705f6d732aa37478739183a77265717565737483a46e6f646501ab696e6361726e6174696f6e02a373657103ab61636b65645f62656c6f7703a26f7081a370757485a26964a3612f62a7636f6e74656e74c403686900a3756964cd03e8a3676964cd03e8a3696e6f09";
    const BLANK_09: &str = "0282a66c6f675f696482a96c65616465725f696482a47465726d04a76e6f64655f696402a5696e64657808a77061796c6f6164a5426c616e6b";
    const MEMBERSHIP_09: &str = "0282a66c6f675f696482a96c65616465725f696482a47465726d05a76e6f64655f696403a5696e64657809a77061796c6f616481aa4d656d6265727368697082a7636f6e666967739292010293010203a56e6f646573830181a461646472ab3132372e302e302e313a310281a461646472ab3132372e302e302e313a320381a461646472ab3132372e302e302e313a33";
    const VOTE_09: &str = r#"{"leader_id":{"term":6,"node_id":2},"committed":false}"#;
    const COMMITTED_VOTE_09: &str = r#"{"leader_id":{"term":6,"node_id":2},"committed":true}"#;
    const LOG_ID_09: &str = r#"{"leader_id":{"term":3,"node_id":1},"index":7}"#;
    const MANIFEST_09: &str = r#"{"meta":{"last_log_id":{"leader_id":{"term":3,"node_id":1},"index":7},"last_membership":{"log_id":{"leader_id":{"term":3,"node_id":1},"index":7},"membership":{"configs":[[1,2],[1,2,3]],"nodes":{"1":{"addr":"127.0.0.1:1"},"2":{"addr":"127.0.0.1:2"},"3":{"addr":"127.0.0.1:3"}}}},"snapshot_id":"7-3"},"head":null}"#;

    #[test]
    fn on_disk_shape_is_the_one_0_9_wrote() {
        // Log records: decoded, and written again byte for byte.
        for (hex, want_id) in
            [(NORMAL_09, log_id(3, 1, 7)), (BLANK_09, log_id(4, 2, 8)), (MEMBERSHIP_09, log_id(5, 3, 9))]
        {
            let record = unhex(hex);
            let entry: Entry = super::super::codec::decode_record(&record).unwrap();
            assert_eq!(entry.log_id, want_id);
            assert_eq!(super::super::codec::encode_record(&entry), record, "{entry:?} is written as 0.9 did");
        }
        let normal: Entry = super::super::codec::decode_record(&unhex(NORMAL_09)).unwrap();
        let EntryPayload::Normal(batch) = normal.payload else { panic!("a normal entry") };
        assert_eq!((batch.timestamp_ms, batch.txs.len()), (42, 1));
        let member: Entry = super::super::codec::decode_record(&unhex(MEMBERSHIP_09)).unwrap();
        let EntryPayload::Membership(m) = member.payload else { panic!("a membership entry") };
        let want: Membership = Membership::new(
            vec![[1, 2].into(), [1, 2, 3].into()],
            (1..=3)
                .map(|i| (i, openraft::BasicNode { addr: format!("127.0.0.1:{i}") }))
                .collect::<std::collections::BTreeMap<_, _>>(),
        )
        .unwrap();
        assert_eq!(m, want);
        let blank: Entry = super::super::codec::decode_record(&unhex(BLANK_09)).unwrap();
        assert!(matches!(blank.payload, EntryPayload::Blank));

        // Vote and log ids (JSON files): the same both ways.
        for json in [VOTE_09, COMMITTED_VOTE_09] {
            let vote: Vote = serde_json::from_str(json).unwrap();
            assert_eq!(serde_json::to_string(&vote).unwrap(), json);
        }
        let vote: Vote = serde_json::from_str(COMMITTED_VOTE_09).unwrap();
        assert!(vote.committed && vote.leader_id == CommittedLeaderId { term: 6, node_id: 2 });
        let id: Option<LogId> = serde_json::from_str(LOG_ID_09).unwrap();
        assert_eq!(id, Some(log_id(3, 1, 7)));
        assert_eq!(serde_json::to_string(&id).unwrap(), LOG_ID_09);

        // The snapshot manifest: 0.9's snapshot id is read and dropped.
        let manifest: crate::consensus::state_machine::Manifest = serde_json::from_str(MANIFEST_09).unwrap();
        assert_eq!(manifest.meta.last_log_id, Some(log_id(3, 1, 7)));
        assert_eq!(manifest.meta.last_membership.membership(), &want);
        let again: crate::consensus::state_machine::Manifest =
            serde_json::from_str(&serde_json::to_string(&manifest).unwrap()).unwrap();
        assert_eq!(again.meta, manifest.meta);
    }

    #[test]
    fn truncation_starts_after_the_kept_entry() {
        assert_eq!(truncation_start(Some(log_id(1, 1, 4)), Some((1, 9))), Some(5));
        assert_eq!(truncation_start(Some(log_id(1, 1, 9)), Some((1, 9))), None, "nothing follows");
        assert_eq!(truncation_start(None, Some((3, 9))), Some(3), "everything goes");
        assert_eq!(truncation_start(None, None), None);
    }

    fn blank(index: u64) -> Entry {
        Entry { log_id: log_id(1, 1, index), payload: EntryPayload::Blank }
    }

    async fn append_flushed(store: &mut LogStore, entries: Vec<Entry>) {
        let (tx, rx) = TypeConfig::oneshot();
        store.append(entries, IOFlushed::signal(tx)).await.unwrap();
        rx.await.expect("the flusher reports every append").unwrap();
    }

    #[tokio::test]
    async fn a_committed_hint_naming_an_entry_the_log_lost_is_not_trusted_at_start() {
        // committed.json is written behind openraft, which may count entries this node had not
        // made durable yet; after a power cut the hint can name an entry the log no longer holds
        // (openraft would then fail every start re-applying it), or one another leader's entry
        // replaced.
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        append_flushed(&mut store, (1..=3).map(blank).collect()).await;
        drop(store);
        let hint =
            |id: LogId| std::fs::write(dir.path().join(COMMITTED), serde_json::to_vec(&Some(id)).unwrap());
        for (committed, trusted) in [
            (log_id(1, 1, 3), true),
            (log_id(1, 1, 2), true),
            (log_id(1, 1, 9), false),
            (log_id(2, 1, 3), false),
        ] {
            hint(committed).unwrap();
            let mut store = LogStore::open(dir.path()).unwrap();
            let read = store.read_committed().await.unwrap();
            assert_eq!(read, trusted.then_some(committed), "committed.json naming {committed}");
        }
    }

    #[tokio::test]
    async fn appends_are_readable_at_once_reported_after_fsync_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        // Readable as soon as `append` returns (the leader replicates from here), whether or
        // not the flusher got to it yet.
        let (tx, rx) = TypeConfig::oneshot();
        store.append((1..=3).map(blank).collect::<Vec<_>>(), IOFlushed::signal(tx)).await.unwrap();
        let read = store.try_get_log_entries(1..=3).await.unwrap();
        assert_eq!(read.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), vec![1, 2, 3]);
        rx.await.unwrap().unwrap();
        // Many appends queued at once are all reported.
        let waits: Vec<_> = (4..=9)
            .map(|i| {
                let (tx, rx) = TypeConfig::oneshot();
                store.append(vec![blank(i)], IOFlushed::signal(tx)).now_or_never().unwrap().unwrap();
                rx
            })
            .collect();
        for rx in waits {
            rx.await.unwrap().unwrap();
        }
        let vote = Vote::new_committed(1, 1);
        store.save_vote(&vote).await.unwrap();
        store.truncate_after(Some(log_id(1, 1, 7))).await.unwrap();
        store.purge(log_id(1, 1, 2)).await.unwrap();
        drop(store);

        let mut store = LogStore::open(dir.path()).unwrap();
        assert_eq!(store.read_vote().await.unwrap(), Some(vote));
        let state = store.get_log_state().await.unwrap();
        assert_eq!(
            (state.last_purged_log_id, state.last_log_id),
            (Some(log_id(1, 1, 2)), Some(log_id(1, 1, 7)))
        );
        let read = store.try_get_log_entries(0..100).await.unwrap();
        assert_eq!(read.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), vec![3, 4, 5, 6, 7]);
        append_flushed(&mut store, vec![blank(8)]).await;
        assert_eq!(store.get_log_state().await.unwrap().last_log_id, Some(log_id(1, 1, 8)));
    }

    #[tokio::test]
    async fn the_newest_entries_are_read_from_memory_and_follow_truncations_and_purges() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        append_flushed(&mut store, (1..=3).map(blank).collect()).await;
        // Spoil every record on disk behind the store's back: what is held in memory still
        // reads, and the last entry's id too.
        for file in std::fs::read_dir(dir.path()).unwrap() {
            let path = file.unwrap().path();
            if path.extension().is_some_and(|e| e == "seg") {
                let len = std::fs::metadata(&path).unwrap().len();
                std::fs::write(&path, vec![0u8; len as usize]).unwrap();
            }
        }
        let read = store.try_get_log_entries(1..=3).await.unwrap();
        assert_eq!(read.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), vec![1, 2, 3]);
        let read = store.limited_get_log_entries(2, 4).await.unwrap();
        assert_eq!(read.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(store.get_log_state().await.unwrap().last_log_id, Some(log_id(1, 1, 3)));
        // A truncated entry is gone from memory too; a purge keeps what follows it.
        store.truncate_after(Some(log_id(1, 1, 2))).await.unwrap();
        assert_eq!(store.try_get_log_entries(3..=3).await.unwrap().len(), 0);
        store.purge(log_id(1, 1, 1)).await.unwrap();
        assert_eq!(
            store
                .try_get_log_entries(0..10)
                .await
                .unwrap()
                .iter()
                .map(|e| e.log_id.index)
                .collect::<Vec<_>>(),
            vec![2]
        );
    }
}
