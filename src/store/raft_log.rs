//! `raft/`: the consensus log and metadata, the source of durability.
//!
//! The log is a sequence of segment files (`log-<first index>.seg`), each a run of records
//! `[index u64][len u32][crc32 u32][payload]` (big-endian). Payloads are opaque bytes here —
//! consensus encodes its entries. Appends are written at once and made durable by an fsync
//! that the caller runs (often one fsync for many appends); nothing counts as appended until
//! that fsync returned. A crash can leave a torn or half-written last record: [`RaftLog::open`]
//! cuts it off, and since it was never acknowledged nothing is lost. A bad record anywhere
//! else is corruption and stops the start-up.
//!
//! Small metadata files (vote, committed index, purge point, snapshot manifest) are replaced
//! whole with [`write_durable`](super::write_durable).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{sync_dir, write_durable, Error, IoContext, Result};

/// A segment is closed once it grows past this many bytes.
const SEGMENT_BYTES: u64 = 64 << 20;
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
        let mut file = OpenOptions::new().read(true).write(true).open(&path).ctx("open", &path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).ctx("read", &path)?;
        let mut offset = 0usize;
        while offset < bytes.len() {
            match decode_record(&bytes[offset..]) {
                Some((index, payload_len)) => {
                    self.index
                        .insert(index, Location { segment: first, offset: offset as u64, len: payload_len });
                    offset += HEADER + payload_len as usize;
                }
                None if is_last => {
                    tracing::warn!(file = %path.display(), offset, "cutting a torn log record left by a crash (it was never acknowledged)");
                    file.set_len(offset as u64).ctx("truncate", &path)?;
                    file.sync_all().ctx("fsync", &path)?;
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
                seg.file.sync_data().ctx("fsync", &seg.path)?;
            }
            let path = segment_path(&self.dir, index);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .ctx("create", &path)?;
            sync_dir(&self.dir)?;
            self.segments.insert(index, Segment { path, file, len: 0 });
        }
        let (&first, seg) = self.segments.iter_mut().next_back().expect("a segment exists");
        let mut header = [0u8; HEADER];
        header[..8].copy_from_slice(&index.to_be_bytes());
        header[8..12].copy_from_slice(&(payload.len() as u32).to_be_bytes());
        header[12..].copy_from_slice(&crc32fast::hash(payload).to_be_bytes());
        write_all_at(&seg.file, &header, payload, seg.len).ctx("write", &seg.path)?;
        self.index.insert(index, Location { segment: first, offset: seg.len, len: payload.len() as u32 });
        seg.len += (HEADER + payload.len()) as u64;
        Ok(())
    }

    /// A handle on the segment that takes appends, to fsync (possibly from another thread),
    /// and the bytes written to it so far.
    pub fn sync_handle(&self) -> Result<(File, u64)> {
        let seg = self.segments.values().next_back().expect("sync after an append");
        Ok((seg.file.try_clone().ctx("dup", &seg.path)?, seg.len))
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
        for first in later {
            let seg = self.segments.remove(&first).unwrap();
            std::fs::remove_file(&seg.path).ctx("remove", &seg.path)?;
        }
        let seg = self.segments.get_mut(&loc.segment).unwrap();
        seg.file.set_len(loc.offset).ctx("truncate", &seg.path)?;
        seg.file.sync_all().ctx("fsync", &seg.path)?;
        seg.len = loc.offset;
        Ok(())
    }

    /// Forgets everything up to and including `index`; whole segments are deleted.
    pub fn purge_upto(&mut self, index: u64) -> Result<()> {
        self.index = self.index.split_off(&(index + 1));
        let firsts: Vec<u64> = self.segments.keys().copied().collect();
        for pair in firsts.windows(2) {
            // A segment is droppable when the next one starts at or below index + 1.
            if pair[1] <= index + 1 {
                let seg = self.segments.remove(&pair[0]).unwrap();
                std::fs::remove_file(&seg.path).ctx("remove", &seg.path)?;
            }
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
        File::create(&tmp).and_then(|mut f| f.write_all(bytes)).ctx("write", &tmp)?;
        std::fs::rename(&tmp, &path).ctx("rename", &path)
    }
}

/// Decodes a record header and checks its payload; `None` if torn or damaged.
/// Writes `header` then `payload` at `offset` in one system call (`pwritev`), without copying
/// the payload into a record first; a short write is finished piece by piece.
fn write_all_at(file: &File, header: &[u8], payload: &[u8], offset: u64) -> std::io::Result<()> {
    let written = loop {
        match rustix::io::pwritev(
            file,
            &[std::io::IoSlice::new(header), std::io::IoSlice::new(payload)],
            offset,
        ) {
            Ok(n) => break n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let (head, rest) = (header.len().min(written), written.saturating_sub(header.len()));
    file.write_all_at(&header[head..], offset + head as u64)?;
    file.write_all_at(&payload[rest..], offset + (header.len() + rest) as u64)
}

fn decode_record(bytes: &[u8]) -> Option<(u64, u32)> {
    if bytes.len() < HEADER {
        return None;
    }
    let index = u64::from_be_bytes(bytes[0..8].try_into().unwrap());
    let len = u32::from_be_bytes(bytes[8..12].try_into().unwrap());
    let crc = u32::from_be_bytes(bytes[12..16].try_into().unwrap());
    let payload = bytes.get(HEADER..HEADER + len as usize)?;
    (crc32fast::hash(payload) == crc).then_some((index, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_read_truncate_purge_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = RaftLog::open(tmp.path()).unwrap();
        for i in 1..=10u64 {
            log.append(i, format!("entry {i}").as_bytes()).unwrap();
        }
        log.sync_handle().unwrap().0.sync_data().unwrap();
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
}
