//! `chain/`: the blocks, as JSON lines in segment files named by their first height.
//!
//! Appends go to the newest segment and become durable at [`ChainFile::sync`], which the
//! [`ChainWriter`] thread calls once for whatever blocks queued up while it was busy (the
//! commit path never waits for it; a snapshot does, before it lets the consensus log be
//! purged). A crash or a power cut can leave a torn last line, or bytes the disk never wrote
//! (zeros, possibly followed by later lines it did write) in the last segment; none of that
//! was synced, its entries are still in the consensus log, and [`ChainFile::open`] cuts it off
//! (logged) so the entries are applied again. JSON never holds a NUL byte, so a line with one
//! is unwritten space, not a damaged block. A bad line anywhere else is corruption and stops
//! the start-up. Every change goes through [`super::disk`].

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::sync::{mpsc, Mutex};

use tokio::sync::watch;

use super::chain_segments::{segment_name, segments};
use super::disk::{self, Open};
use super::hash_index::HashIndex;
use super::pace::Pace;
use super::{Error, IoContext, Result};
use crate::chain::{Block, Height};

/// Blocks per segment file (fewer in unit tests, so they roll segments).
#[cfg(not(test))]
const BLOCKS_PER_SEGMENT: u64 = 10_000;
#[cfg(test)]
const BLOCKS_PER_SEGMENT: u64 = 64;

/// The head of the chain: the last block's position.
pub use crate::chain::Tip as Head;

/// The append side of `chain/`.
pub struct ChainFile {
    dir: PathBuf,
    segment: Option<(Height, File)>,
    pending: Vec<u8>,
    head: Option<Head>,
    /// Heights and hashes of the blocks appended (shared with whoever compares chains).
    hashes: Arc<HashIndex>,
}

/// One line of a segment, decoded.
pub struct ReadBlock {
    /// The block.
    pub block: Block,
    /// The segment it is in.
    pub path: PathBuf,
}

/// Reads every block in order, calling `f` on each. A line that does not parse is an error
/// unless it is the torn last line of the last segment, or a line of it holding a NUL byte
/// (space the disk never wrote): then `Ok(Some(offset))` tells where the good part of that
/// file ends.
pub fn read_all(dir: &Path, f: impl FnMut(ReadBlock) -> Result<()>) -> Result<Option<(PathBuf, u64)>> {
    read_from(dir, 0, f)
}

/// [`read_all`], starting at height `from` (segments wholly below it are not read).
pub fn read_from(
    dir: &Path,
    from: Height,
    mut f: impl FnMut(ReadBlock) -> Result<()>,
) -> Result<Option<(PathBuf, u64)>> {
    let mut segs = segments(dir)?;
    // Keep the segment holding `from` and everything after it.
    let skip = segs.iter().rposition(|(first, _)| *first <= from).unwrap_or(0);
    segs.drain(..skip);
    let last = segs.len().saturating_sub(1);
    for (i, (_, path)) in segs.iter().enumerate() {
        let file = File::open(path).ctx("open", path)?;
        let mut reader = BufReader::new(file);
        let mut offset = 0u64;
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line).ctx("read", path)?;
            if n == 0 {
                break;
            }
            let complete = line.last() == Some(&b'\n');
            match serde_json::from_slice::<Block>(&line) {
                Ok(block) if complete && block.height < from => {}
                Ok(block) if complete => f(ReadBlock { block, path: path.clone() })?,
                result => {
                    let at_tail =
                        i == last && (line.contains(&0) || reader.fill_buf().ctx("read", path)?.is_empty());
                    if at_tail {
                        return Ok(Some((path.clone(), offset)));
                    }
                    let detail = match result {
                        Err(e) => format!("unreadable block at byte {offset}: {e}"),
                        Ok(_) => format!("unterminated block at byte {offset}"),
                    };
                    return Err(Error::Corrupt { path: path.clone(), detail });
                }
            }
            offset += n as u64;
        }
    }
    Ok(None)
}

impl ChainFile {
    /// Opens `chain/`, replaying every block through `f`, cutting a torn tail.
    pub fn open(dir: &Path, mut f: impl FnMut(&Block) -> Result<()>) -> Result<ChainFile> {
        let mut head = None;
        let hashes = Arc::new(HashIndex::new(dir));
        let torn = read_all(dir, |read| {
            f(&read.block)?;
            head = Some(Head::of(&read.block));
            hashes.record(read.block.height, read.block.hash);
            Ok(())
        })?;
        if let Some((path, offset)) = torn {
            tracing::warn!(file = %path.display(), offset, "cutting a torn chain tail left by a crash or a power cut; its entries are applied again");
            let file = disk::open(&path, Open::Existing, false, 0)?;
            disk::set_len(&file, &path, offset)?;
            disk::sync(&file, &path)?;
        }
        let segment = match segments(dir)?.pop() {
            Some((first, path)) => Some((first, disk::open(&path, Open::Existing, true, 0)?)),
            None => None,
        };
        Ok(ChainFile { dir: dir.to_owned(), segment, pending: Vec::new(), head, hashes })
    }

    /// The index of the heights and hashes of this chain's blocks (appended ones included).
    pub fn hashes(&self) -> Arc<HashIndex> {
        self.hashes.clone()
    }

    /// The last appended block, synced or not.
    pub fn head(&self) -> Option<Head> {
        self.head
    }

    /// Bytes of queued blocks not yet written (what [`sync`](Self::sync) would write).
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// Queues a block for the next [`sync`](Self::sync). Blocks must come in height order.
    pub fn append(&mut self, block: &Block) -> Result<()> {
        if block.height.is_multiple_of(BLOCKS_PER_SEGMENT) || self.segment.is_none() {
            self.roll(block.height)?;
        }
        serde_json::to_writer(&mut self.pending, block).expect("blocks serialize");
        self.pending.push(b'\n');
        self.head = Some(Head::of(block));
        self.hashes.record(block.height, block.hash);
        Ok(())
    }

    fn roll(&mut self, first: Height) -> Result<()> {
        self.flush_pending()?;
        if let Some((old, file)) = &self.segment {
            disk::sync(file, &self.dir.join(segment_name(*old)))?;
        }
        let path = self.dir.join(segment_name(first));
        let file = disk::open(&path, Open::Create, true, 0o644)?;
        // The name is durable before anything is written to it: a power cut must not keep a
        // later segment and lose this one (a hole in the chain stops the start-up).
        disk::sync_dir(&self.dir)?;
        self.segment = Some((first, file));
        Ok(())
    }

    fn flush_pending(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let (first, file) = self.segment.as_mut().expect("append rolls a segment first");
        let path = self.dir.join(segment_name(*first));
        disk::append(file, &path, &self.pending)?;
        self.pending.clear();
        Ok(())
    }

    /// Writes queued blocks and fsyncs them.
    pub fn sync(&mut self) -> Result<()> {
        self.flush_pending()?;
        if let Some((first, file)) = &self.segment {
            let path = self.dir.join(segment_name(*first));
            disk::sync(file, &path)?;
            super::drop_cached(file, file.metadata().ctx("stat", &path)?.len());
        }
        Ok(())
    }
}

/// At most one `fsync` of `chain/` per this long (and rounds busy at most a share of the time,
/// `store::pace`): under load a round carries many blocks. The chain is derived from the
/// consensus log, so what it holds back is re-applied after a crash; a snapshot waits for it
/// (at most [`super::pace::LONGEST_HOLD`] longer) before the log may be purged.
pub const SYNC_EVERY: std::time::Duration = std::time::Duration::from_millis(10);

/// Writes `chain/` behind the acknowledgement: the state machine hands each block over and
/// moves on; one thread appends whatever has queued up and fsyncs it once, then publishes the
/// durable head. A snapshot waits for [`ChainWriter::wait_durable`] before it lets the
/// consensus log be purged, so a block is never only in memory once its entry may be gone.
///
/// A failure to write the chain is fatal for this process (the chain is the node's record of
/// what it applied): the writer stops, [`ChainWriter::failure`] says why, and the state
/// machine stops consensus at its next apply. A restart cuts any torn tail and re-applies the
/// missing entries from the consensus log.
pub struct ChainWriter {
    file: Arc<Mutex<ChainFile>>,
    blocks: Mutex<Option<mpsc::Sender<Arc<Block>>>>,
    durable: watch::Sender<Option<Head>>,
    failure: Arc<Mutex<Option<String>>>,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl ChainWriter {
    /// Starts the writer thread over an opened chain.
    pub fn start(file: ChainFile) -> std::io::Result<ChainWriter> {
        let (blocks, queue) = mpsc::channel::<Arc<Block>>();
        let (durable, _) = watch::channel(file.head());
        let file = Arc::new(Mutex::new(file));
        let failure = Arc::new(Mutex::new(None));
        let worker = {
            let (file, durable, failure) = (file.clone(), durable.clone(), failure.clone());
            let delay = test_sync_delay();
            std::thread::Builder::new().name("lc-chain".into()).spawn(move || {
                let mut pace = Pace::new(SYNC_EVERY);
                while let Ok(first) = queue.recv() {
                    if let Some(delay) = delay {
                        std::thread::sleep(delay);
                    }
                    pace.wait();
                    let mut file = file.lock().unwrap();
                    let written = std::iter::once(first)
                        .chain(std::iter::from_fn(|| queue.try_recv().ok()))
                        .try_for_each(|block| file.append(&block))
                        .and_then(|()| file.sync());
                    pace.done();
                    match written {
                        Ok(()) => {
                            durable.send_replace(file.head());
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "cannot write chain/; consensus stops at the next apply");
                            *failure.lock().unwrap() = Some(e.to_string());
                            return;
                        }
                    }
                }
            })?
        };
        Ok(ChainWriter {
            file,
            blocks: Mutex::new(Some(blocks)),
            durable,
            failure,
            worker: Mutex::new(Some(worker)),
        })
    }

    /// Queues a block (blocks come in height order).
    pub fn append(&self, block: Arc<Block>) {
        if let Some(blocks) = self.blocks.lock().unwrap().as_ref() {
            let _ = blocks.send(block);
        }
    }

    /// Why the writer stopped, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap().clone()
    }

    /// The last durable block.
    pub fn durable(&self) -> Option<Head> {
        *self.durable.borrow()
    }

    /// Waits until the block at `height` (and all before it) is fsynced.
    pub async fn wait_durable(&self, height: Option<Height>) -> Result<()> {
        let Some(height) = height else { return Ok(()) };
        let mut durable = self.durable.subscribe();
        loop {
            if durable.borrow_and_update().is_some_and(|h| h.height >= height) {
                return Ok(());
            }
            if let Some(reason) = self.failure() {
                return Err(Error::Corrupt {
                    path: PathBuf::from("chain/"),
                    detail: format!("the chain writer stopped: {reason}"),
                });
            }
            // The writer publishes after every batch; poll for a failure now and then.
            let _ = tokio::time::timeout(std::time::Duration::from_millis(100), durable.changed()).await;
        }
    }

    /// Runs `f` on the chain file directly, with no block queued or being written. For the
    /// rare writes that are not appends from apply (a snapshot's blocks); callers wait for
    /// [`wait_durable`](Self::wait_durable) first.
    pub fn with_file<T>(&self, f: impl FnOnce(&mut ChainFile) -> Result<T>) -> Result<T> {
        let mut file = self.file.lock().unwrap();
        let result = f(&mut file);
        if result.is_ok() {
            self.durable.send_replace(file.head());
        }
        result
    }

    /// Writes everything queued and stops the thread (a clean shutdown).
    pub fn stop(&self) {
        self.blocks.lock().unwrap().take();
        if let Some(worker) = self.worker.lock().unwrap().take() {
            let _ = worker.join();
        }
    }
}

/// Test hook, compiled into debug builds only (release builds have no such variable):
/// `LIGHTCHAIN_TEST_CHAIN_DELAY_MS` holds every chain write back that long, widening the
/// window in which applied blocks are not yet in `chain/` (for the snapshot/crash tests).
fn test_sync_delay() -> Option<std::time::Duration> {
    #[cfg(debug_assertions)]
    {
        let ms = std::env::var("LIGHTCHAIN_TEST_CHAIN_DELAY_MS").ok()?.parse().ok()?;
        tracing::warn!(ms, "test hook: every chain write is delayed");
        Some(std::time::Duration::from_millis(ms))
    }
    #[cfg(not(debug_assertions))]
    None
}

impl Drop for ChainWriter {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::Digest;

    fn chain(n: u64) -> Vec<Block> {
        let mut out: Vec<Block> = Vec::new();
        for i in 0..n {
            let prev = out.last().map(|b| (b.height, b.hash));
            out.push(Block::seal(prev, 1, i, i, 1, Digest::ZERO, vec![]));
        }
        out
    }

    #[test]
    fn appends_survive_reopen_and_torn_tails_are_cut() {
        let tmp = tempfile::tempdir().unwrap();
        let blocks = chain(5);
        let mut file = ChainFile::open(tmp.path(), |_| Ok(())).unwrap();
        for b in &blocks {
            file.append(b).unwrap();
        }
        file.sync().unwrap();
        drop(file);
        let seg = tmp.path().join(segment_name(0));
        let mut raw = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
        std::io::Write::write_all(&mut raw, b"{\"height\":5,\"prev").unwrap();
        let mut seen = Vec::new();
        let file = ChainFile::open(tmp.path(), |b| {
            seen.push(b.clone());
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, blocks);
        assert_eq!(file.head().unwrap().height, 4);
        assert!(std::fs::read(&seg).unwrap().ends_with(b"}\n"));
    }

    #[tokio::test]
    async fn the_writer_reports_durable_only_what_is_on_disk() {
        let tmp = tempfile::tempdir().unwrap();
        let writer = ChainWriter::start(ChainFile::open(tmp.path(), |_| Ok(())).unwrap()).unwrap();
        assert_eq!(writer.durable(), None);
        for b in chain(50) {
            writer.append(Arc::new(b));
        }
        writer.wait_durable(Some(49)).await.unwrap();
        assert_eq!(writer.durable().map(|h| h.height), Some(49));
        let mut seen = 0;
        ChainFile::open(tmp.path(), |_| {
            seen += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, 50, "every block reported durable is in the file");
        writer.stop();
        assert!(writer.failure().is_none());
    }

    #[test]
    fn a_bad_line_in_the_middle_is_corruption() {
        let tmp = tempfile::tempdir().unwrap();
        let mut file = ChainFile::open(tmp.path(), |_| Ok(())).unwrap();
        for b in &chain(3) {
            file.append(b).unwrap();
        }
        file.sync().unwrap();
        let seg = tmp.path().join(segment_name(0));
        let text = std::fs::read_to_string(&seg).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines[1] = "garbage";
        std::fs::write(&seg, lines.join("\n") + "\n").unwrap();
        assert!(matches!(ChainFile::open(tmp.path(), |_| Ok(())), Err(Error::Corrupt { .. })));
    }

    #[test]
    fn space_the_disk_never_wrote_ends_the_last_segment_and_is_corruption_before_it() {
        let tmp = tempfile::tempdir().unwrap();
        let mut file = ChainFile::open(tmp.path(), |_| Ok(())).unwrap();
        let blocks = chain(5);
        for b in &blocks[..3] {
            file.append(b).unwrap();
        }
        file.sync().unwrap();
        drop(file);
        // After a power cut: a page of zeros where block 3 should be, then block 4 (written
        // back, but never synced either).
        let seg = tmp.path().join(segment_name(0));
        let good = std::fs::read(&seg).unwrap();
        let mut damaged = good.clone();
        damaged.extend_from_slice(&[0u8; 100]);
        damaged.extend_from_slice(&serde_json::to_vec(&blocks[4]).unwrap());
        damaged.push(b'\n');
        std::fs::write(&seg, &damaged).unwrap();
        let mut heights = Vec::new();
        let file = ChainFile::open(tmp.path(), |b| {
            heights.push(b.height);
            Ok(())
        })
        .unwrap();
        assert_eq!(heights, vec![0, 1, 2]);
        assert_eq!(file.head().map(|h| h.height), Some(2));
        assert_eq!(std::fs::read(&seg).unwrap(), good, "the unwritten tail is cut");
        drop(file);
        // In a segment that is not the last, the same bytes are corruption.
        std::fs::write(&seg, &damaged).unwrap();
        std::fs::write(tmp.path().join(segment_name(64)), serde_json::to_vec(&blocks[4]).unwrap()).unwrap();
        assert!(matches!(ChainFile::open(tmp.path(), |_| Ok(())), Err(Error::Corrupt { .. })));
    }
}
