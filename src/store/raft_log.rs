//! `raft/`: the consensus log and metadata, the source of durability.
//!
//! The log is a sequence of segment files (`log-<first index>.seg`), each a run of records
//! `[index u64][len u32][crc32 u32][payload]` (big-endian). Payloads are opaque bytes here —
//! consensus encodes its entries. Appends are written at once and made durable by an fsync
//! that the caller runs (often one fsync for many appends); nothing counts as appended until
//! that fsync returned. A crash or a power cut can leave a torn, half-written or zero-filled
//! tail on the last segment: [`RaftLog::open`] cuts it off at the first record that is not
//! whole, and since that was never acknowledged nothing is lost. A record is whole when its
//! payload is not empty (so a zero-filled header is not a record: the CRC-32 of nothing is 0),
//! its CRC matches and its index is above every index before it. A bad record anywhere else is
//! corruption and stops the start-up.
//!
//! Every change goes through [`super::disk`]; names are made durable (a directory fsync) before
//! anything that depends on them: a new segment before its first record, a removed one before
//! the log is cut or extended after it, so an old segment can never come back after a power
//! cut and override newer entries.
//!
//! Small metadata files (vote, committed index, purge point, snapshot manifest) are replaced
//! whole with [`write_durable`](super::write_durable).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::disk::{self, Open};
use super::{write_durable, Error, IoContext, Result};

/// A segment is closed once it grows past this many bytes (fewer in unit tests, so they roll
/// and purge segments).
#[cfg(not(test))]
const SEGMENT_BYTES: u64 = 64 << 20;
#[cfg(test)]
const SEGMENT_BYTES: u64 = 64 << 10;
const HEADER: usize = 16;

#[derive(Clone, Copy, Debug)]
struct Location {
    segment: u64,
    offset: u64,
    len: u32,
}

struct Segment {
    path: PathBuf,
    file: File,
    len: u64,
}

/// The consensus log on disk, indexed in memory (index → file position).
pub struct RaftLog {
    dir: PathBuf,
    segments: BTreeMap<u64, Segment>,
    index: BTreeMap<u64, Location>,
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("log-{first:020}.seg"))
}

impl RaftLog {
    /// Opens (or creates) the log in `dir`, cutting a torn tail.
    pub fn open(dir: &Path) -> Result<RaftLog> {
        std::fs::create_dir_all(dir).ctx("create directory", dir)?;
        let mut firsts = Vec::new();
        for entry in std::fs::read_dir(dir).ctx("list", dir)? {
            let name = entry.ctx("list", dir)?.file_name();
            let name = name.to_string_lossy();
            if let Some(n) = name.strip_prefix("log-").and_then(|s| s.strip_suffix(".seg")) {
                if let Ok(first) = n.parse::<u64>() {
                    firsts.push(first);
                }
            }
        }
        firsts.sort();
        let mut log = RaftLog { dir: dir.to_owned(), segments: BTreeMap::new(), index: BTreeMap::new() };
        let last = firsts.last().copied();
        for first in firsts {
            log.load_segment(first, Some(first) == last)?;
        }
        Ok(log)
    }

    fn load_segment(&mut self, first: u64, is_last: bool) -> Result<()> {
        let path = segment_path(&self.dir, first);
        let mut file = disk::open(&path, Open::Existing, false, 0)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).ctx("read", &path)?;
        let mut offset = 0usize;
        while offset < bytes.len() {
            let after = self.index.keys().next_back().copied();
            match decode_record(&bytes[offset..], after) {
                Some((index, payload_len)) => {
                    self.index
                        .insert(index, Location { segment: first, offset: offset as u64, len: payload_len });
                    offset += HEADER + payload_len as usize;
                }
                None if is_last => {
                    tracing::warn!(file = %path.display(), offset, "cutting a torn log tail left by a crash or a power cut (it was never acknowledged)");
                    disk::set_len(&file, &path, offset as u64)?;
                    disk::sync(&file, &path)?;
                    break;
                }
                None => {
                    return Err(Error::Corrupt { path, detail: format!("bad log record at byte {offset}") });
                }
            }
        }
        self.segments.insert(first, Segment { path, file, len: offset as u64 });
        Ok(())
    }

    /// The lowest and highest index held.
    pub fn bounds(&self) -> Option<(u64, u64)> {
        Some((*self.index.keys().next()?, *self.index.keys().next_back()?))
    }

    /// Writes a record for `index` (which must follow the last one). Not durable until the
    /// file returned by [`sync_handle`](Self::sync_handle) is fsynced.
    pub fn append(&mut self, index: u64, payload: &[u8]) -> Result<()> {
        let needs_segment = match self.segments.values().next_back() {
            None => true,
            Some(seg) => seg.len >= SEGMENT_BYTES,
        };
        if needs_segment {
            if let Some(seg) = self.segments.values().next_back() {
                disk::sync(&seg.file, &seg.path)?;
            }
            let path = segment_path(&self.dir, index);
            let file = disk::open(&path, Open::Truncate, false, 0o644)?;
            disk::sync_dir(&self.dir)?;
            self.segments.insert(index, Segment { path, file, len: 0 });
        }
        let (&first, seg) = self.segments.iter_mut().next_back().expect("a segment exists");
        let mut header = [0u8; HEADER];
        header[..8].copy_from_slice(&index.to_be_bytes());
        header[8..12].copy_from_slice(&(payload.len() as u32).to_be_bytes());
        header[12..].copy_from_slice(&crc32fast::hash(payload).to_be_bytes());
        disk::write_at(&seg.file, &seg.path, seg.len, &[&header, payload])?;
        self.index.insert(index, Location { segment: first, offset: seg.len, len: payload.len() as u32 });
        seg.len += (HEADER + payload.len()) as u64;
        Ok(())
    }

    /// A handle on the segment that takes appends, to fsync (possibly from another thread).
    pub fn sync_handle(&self) -> Result<SyncHandle> {
        let seg = self.segments.values().next_back().expect("sync after an append");
        Ok(SyncHandle {
            file: seg.file.try_clone().ctx("dup", &seg.path)?,
            path: seg.path.clone(),
            len: seg.len,
        })
    }

    /// Makes everything appended so far durable (the newest segment; older ones were synced
    /// when the next one began).
    pub fn sync(&self) -> Result<()> {
        match self.segments.values().next_back() {
            Some(seg) => disk::sync(&seg.file, &seg.path),
            None => Ok(()),
        }
    }

    /// The length of the payload at `index`, without reading it.
    pub fn payload_len(&self, index: u64) -> Option<u32> {
        self.index.get(&index).map(|loc| loc.len)
    }

    /// The payload at `index`.
    pub fn read(&self, index: u64) -> Result<Option<Vec<u8>>> {
        let Some(loc) = self.index.get(&index) else {
            return Ok(None);
        };
        let seg = &self.segments[&loc.segment];
        let mut buf = vec![0u8; loc.len as usize];
        seg.file.read_exact_at(&mut buf, loc.offset + HEADER as u64).ctx("read", &seg.path)?;
        Ok(Some(buf))
    }

    /// Removes `index` and everything after it (a conflicting suffix).
    pub fn truncate_from(&mut self, index: u64) -> Result<()> {
        let Some(loc) = self.index.get(&index).copied() else {
            return Ok(());
        };
        self.index.split_off(&index);
        let later: Vec<u64> = self.segments.range(loc.segment + 1..).map(|(k, _)| *k).collect();
        for first in &later {
            let seg = self.segments.remove(first).unwrap();
            disk::remove(&seg.path)?;
        }
        // The removals are durable before the log is cut: otherwise a power cut could bring an
        // old segment back behind entries appended after this.
        if !later.is_empty() {
            disk::sync_dir(&self.dir)?;
        }
        let seg = self.segments.get_mut(&loc.segment).unwrap();
        disk::set_len(&seg.file, &seg.path, loc.offset)?;
        disk::sync(&seg.file, &seg.path)?;
        seg.len = loc.offset;
        Ok(())
    }

    /// Forgets everything up to and including `index`; whole segments are deleted.
    pub fn purge_upto(&mut self, index: u64) -> Result<()> {
        self.index = self.index.split_off(&(index + 1));
        let firsts: Vec<u64> = self.segments.keys().copied().collect();
        let mut removed = false;
        for pair in firsts.windows(2) {
            // A segment is droppable when the next one starts at or below index + 1.
            if pair[1] <= index + 1 {
                let seg = self.segments.remove(&pair[0]).unwrap();
                disk::remove(&seg.path)?;
                removed = true;
            }
        }
        // Not needed for safety (a purged segment that came back is below the purge point the
        // caller keeps), but it keeps the directory what it looks like.
        if removed {
            disk::sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Reads a metadata file (`vote.json`, …), `None` if absent.
    pub fn load_meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let path = self.dir.join(name);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).ctx("read", &path),
        }
    }

    /// Replaces a metadata file durably.
    pub fn save_meta(&self, name: &str, bytes: &[u8]) -> Result<()> {
        write_durable(&self.dir.join(name), bytes)
    }

    /// Replaces a metadata file without fsync (for hints that may be lost, like `committed`).
    pub fn save_meta_lazy(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.dir.join(name);
        let tmp = path.with_extension("tmp");
        let file = disk::open(&tmp, Open::Truncate, false, 0o644)?;
        disk::write_at(&file, &tmp, 0, &[bytes])?;
        disk::rename(&tmp, &path)
    }
}

/// The segment taking appends, to fsync from another thread than the one appending.
pub struct SyncHandle {
    file: File,
    path: PathBuf,
    /// The bytes written to it when the handle was taken.
    pub len: u64,
}

impl SyncHandle {
    /// Makes everything written to the segment so far durable.
    pub fn sync(&self) -> Result<()> {
        disk::sync(&self.file, &self.path)
    }

    /// Lets the kernel drop the synced pages ([`super::drop_cached`]).
    pub fn drop_cached(&self) {
        super::drop_cached(&self.file, self.len);
    }
}

/// Decodes the record at the start of `bytes`, whose index must be above `after`: its index
/// and payload length, or `None` if it is torn, damaged, zero-filled or out of order.
fn decode_record(bytes: &[u8], after: Option<u64>) -> Option<(u64, u32)> {
    if bytes.len() < HEADER {
        return None;
    }
    let index = u64::from_be_bytes(bytes[0..8].try_into().unwrap());
    let len = u32::from_be_bytes(bytes[8..12].try_into().unwrap());
    let crc = u32::from_be_bytes(bytes[12..16].try_into().unwrap());
    if len == 0 || after.is_some_and(|a| index <= a) {
        return None;
    }
    let payload = bytes.get(HEADER..HEADER + len as usize)?;
    (crc32fast::hash(payload) == crc).then_some((index, len))
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;

    use super::*;

    #[test]
    fn append_read_truncate_purge_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = RaftLog::open(tmp.path()).unwrap();
        for i in 1..=10u64 {
            log.append(i, format!("entry {i}").as_bytes()).unwrap();
        }
        log.sync_handle().unwrap().sync().unwrap();
        assert_eq!(log.bounds(), Some((1, 10)));
        assert_eq!(log.read(4).unwrap().unwrap(), b"entry 4");
        log.truncate_from(8).unwrap();
        assert_eq!(log.bounds(), Some((1, 7)));
        log.append(8, b"new 8").unwrap();
        log.purge_upto(3).unwrap();
        assert_eq!(log.bounds(), Some((4, 8)));
        drop(log);
        let log = RaftLog::open(tmp.path()).unwrap();
        // Purging keeps the segment file, so reopening still finds purged records; callers
        // filter by their persisted purge point.
        assert_eq!(log.read(8).unwrap().unwrap(), b"new 8");
        assert_eq!(log.read(9).unwrap(), None);
    }

    #[test]
    fn a_torn_last_record_is_cut() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = RaftLog::open(tmp.path()).unwrap();
        log.append(1, b"one").unwrap();
        log.append(2, b"two").unwrap();
        let seg = segment_path(tmp.path(), 1);
        let len = std::fs::metadata(&seg).unwrap().len();
        drop(log);
        OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 1).unwrap();
        let log = RaftLog::open(tmp.path()).unwrap();
        assert_eq!(log.bounds(), Some((1, 1)));
    }

    #[test]
    fn a_zero_filled_tail_is_not_a_record_and_is_cut() {
        // A power cut on a disk without a journal can leave the unsynced end of a file as
        // zeros: 16 zero bytes would be a record of index 0 with an empty payload (CRC-32 of
        // nothing is 0) and shadow the real entry 0.
        let tmp = tempfile::tempdir().unwrap();
        let mut log = RaftLog::open(tmp.path()).unwrap();
        log.append(0, b"zero").unwrap();
        log.append(1, b"one").unwrap();
        drop(log);
        let seg = segment_path(tmp.path(), 0);
        let len = std::fs::metadata(&seg).unwrap().len();
        OpenOptions::new().write(true).open(&seg).unwrap().set_len(len + 4096).unwrap();
        let log = RaftLog::open(tmp.path()).unwrap();
        assert_eq!(log.bounds(), Some((0, 1)));
        assert_eq!(log.read(0).unwrap().unwrap(), b"zero");
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), len, "the zeros are cut");
    }

    #[test]
    fn a_record_that_does_not_follow_is_a_torn_tail_in_the_last_segment_and_corruption_before() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = RaftLog::open(tmp.path()).unwrap();
        log.append(1, b"one").unwrap();
        log.append(2, b"two").unwrap();
        drop(log);
        // A well-formed record whose index is not above the one before it (what stale bytes
        // of an older version of the file could hold).
        let seg = segment_path(tmp.path(), 1);
        let mut stale = Vec::new();
        stale.extend_from_slice(&2u64.to_be_bytes());
        stale.extend_from_slice(&3u32.to_be_bytes());
        stale.extend_from_slice(&crc32fast::hash(b"old").to_be_bytes());
        stale.extend_from_slice(b"old");
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes.extend_from_slice(&stale);
        std::fs::write(&seg, &bytes).unwrap();
        let log = RaftLog::open(tmp.path()).unwrap();
        assert_eq!(log.bounds(), Some((1, 2)));
        assert_eq!(log.read(2).unwrap().unwrap(), b"two");
        drop(log);
        // The same in a segment that is not the last: the log cannot be trusted.
        std::fs::write(&seg, &bytes).unwrap();
        std::fs::write(segment_path(tmp.path(), 3), []).unwrap();
        assert!(matches!(RaftLog::open(tmp.path()), Err(Error::Corrupt { .. })));
    }
}
