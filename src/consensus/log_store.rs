//! openraft's log storage over [`RaftLog`](crate::store::raft_log::RaftLog).
//!
//! `append` writes the entries at once and hands the fsync to a flusher thread, which fsyncs
//! once for every append that queued up meanwhile and only then reports them flushed: an entry
//! counts (is acknowledged to the leader, or committed on a single node) only after fsync.
//! The vote is saved durably before `save_vote` returns.
//!
//! Entries are stored in the binary encoding of [`codec`](super::codec) (records of earlier
//! versions, JSON, are still read). What replication reads at once is bounded in bytes
//! ([`MAX_APPEND_BYTES`](super::MAX_APPEND_BYTES)), so one AppendEntries carries a few 1 MiB
//! states, not `max_payload_entries` of them.

// openraft's trait methods fix the (large) error type; boxing it here would only convert back.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::fs::File;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogId, RaftLogReader};

use super::typ::{Entry, LogId, StorageError, Vote};
use super::{storage_error, TypeConfig};
use crate::store::raft_log::RaftLog;

const VOTE: &str = "vote.json";
const COMMITTED: &str = "committed.json";
const PURGED: &str = "purged.json";

struct Inner {
    log: RaftLog,
    last_purged: Option<LogId>,
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
    flusher: mpsc::Sender<(File, LogFlushed<TypeConfig>)>,
}

fn io_err(subject: ErrorSubject<u64>, verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    storage_error(subject, verb, e)
}

impl LogStore {
    /// Opens the log in `dir` and starts its flusher thread.
    pub fn open(dir: &Path) -> crate::store::Result<LogStore> {
        let mut log = RaftLog::open(dir)?;
        let last_purged: Option<LogId> = log.load_meta(PURGED)?.and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(p) = &last_purged {
            log.purge_upto(p.index)?;
        }
        let (tx, rx) = mpsc::channel::<(File, LogFlushed<TypeConfig>)>();
        std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || flush_loop(rx))
            .expect("spawn flusher thread");
        let inner =
            Arc::new(Mutex::new(Inner { log, last_purged, committed: None, committed_unsaved: false }));
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("lc-committed".into())
            .spawn(move || save_committed_behind(weak))
            .map_err(|e| crate::store::Error::Io { op: "start thread", path: dir.to_owned(), source: e })?;
        Ok(LogStore { inner, flusher: tx })
    }

    fn decode(bytes: &[u8]) -> Result<Entry, StorageError> {
        super::codec::decode_record(bytes).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))
    }

    /// Reads entries `[start, end)` until they hold [`MAX_APPEND_BYTES`](super::MAX_APPEND_BYTES)
    /// (always at least one).
    fn read_limited(&self, start: u64, end: u64) -> Result<Vec<Entry>, StorageError> {
        let inner = self.inner.lock().unwrap();
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for index in start..end {
            let Some(len) = inner.log.payload_len(index) else { break };
            if !out.is_empty() && bytes + len as usize > super::MAX_APPEND_BYTES {
                break;
            }
            let read = inner.log.read(index).map_err(|e| {
                io_err(ErrorSubject::Log(LogId::new(Default::default(), index)), ErrorVerb::Read, e)
            })?;
            let Some(record) = read else { break };
            bytes += record.len();
            out.push(Self::decode(&record)?);
        }
        Ok(out)
    }
}

/// Fsyncs once for every batch of appends waiting, then reports them flushed, in order.
fn flush_loop(rx: mpsc::Receiver<(File, LogFlushed<TypeConfig>)>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        // Segments roll rarely; when they do, the old one was fsynced at the roll, so
        // syncing the newest handle covers every write in the batch.
        let result = batch.last().unwrap().0.sync_data();
        tracing::debug!(appends = batch.len(), "log fsynced");
        for (_, callback) in batch {
            let result = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            };
            callback.log_io_completed(result);
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, StorageError> {
        self.read_limited(start, end)
    }

    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
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
            match inner.log.read(index).map_err(|e| {
                io_err(ErrorSubject::Log(LogId::new(Default::default(), index)), ErrorVerb::Read, e)
            })? {
                Some(bytes) => out.push(Self::decode(&bytes)?),
                None => break,
            }
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let inner = self.inner.lock().unwrap();
        let last = match inner.log.bounds() {
            Some((_, hi)) => {
                let bytes = inner
                    .log
                    .read(hi)
                    .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?
                    .expect("bounds are held");
                Some(*Self::decode(&bytes)?.get_log_id())
            }
            None => inner.last_purged,
        };
        Ok(LogState { last_purged_log_id: inner.last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let inner = self.inner.lock().unwrap();
        let bytes = serde_json::to_vec(vote).expect("vote serializes");
        inner.log.save_meta(VOTE, &bytes).map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let inner = self.inner.lock().unwrap();
        let bytes = inner.log.load_meta(VOTE).map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Read, e))?;
        bytes
            .map(|b| serde_json::from_slice(&b).map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Read, e)))
            .transpose()
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Recorded here; the file follows within COMMITTED_SAVE_EVERY (save_committed_behind).
        let mut inner = self.inner.lock().unwrap();
        inner.committed = committed;
        inner.committed_unsaved = true;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let inner = self.inner.lock().unwrap();
        if inner.committed.is_some() {
            return Ok(inner.committed);
        }
        let bytes =
            inner.log.load_meta(COMMITTED).map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e))?;
        Ok(bytes.and_then(|b| serde_json::from_slice(&b).ok()).flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let handle = {
            let mut inner = self.inner.lock().unwrap();
            for entry in entries {
                let log_id = *entry.get_log_id();
                let bytes = super::codec::encode_record(&entry);
                inner
                    .log
                    .append(log_id.index, &bytes)
                    .map_err(|e| io_err(ErrorSubject::Log(log_id), ErrorVerb::Write, e))?;
            }
            inner.log.sync_handle().map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))?
        };
        tracing::debug!("log appended");
        self.flusher.send((handle, callback)).expect("flusher thread lives as long as the store");
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut inner = self.inner.lock().unwrap();
        inner
            .log
            .truncate_from(log_id.index)
            .map_err(|e| io_err(ErrorSubject::Log(log_id), ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut inner = self.inner.lock().unwrap();
        let bytes = serde_json::to_vec(&log_id).expect("log id serializes");
        inner
            .log
            .save_meta(PURGED, &bytes)
            .map_err(|e| io_err(ErrorSubject::Log(log_id), ErrorVerb::Delete, e))?;
        inner
            .log
            .purge_upto(log_id.index)
            .map_err(|e| io_err(ErrorSubject::Log(log_id), ErrorVerb::Delete, e))?;
        inner.last_purged = Some(log_id);
        Ok(())
    }
}
