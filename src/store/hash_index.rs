//! Which block hash this node holds at a given height, for comparing chains between members
//! (divergence is loud, DESIGN §1.5).
//!
//! [`HashIndex`] keeps the heights and hashes of the last [`RECENT`] blocks appended to
//! `chain/` in memory; an older height is looked up in `chain/` itself ([`hash_at`]), which
//! reads one segment and parses only the line of that height. It is fed by
//! [`ChainFile`](super::chain_file::ChainFile) as blocks are appended, so it never claims a
//! block the chain does not hold. It owns no file and writes nothing.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::chain_segments::segments;
use super::{Error, IoContext, Result};
use crate::chain::{BlockHash, Height};

/// How many recent blocks are indexed in memory (about 40 bytes each).
pub const RECENT: usize = 4096;

/// Heights and hashes of the chain's recent blocks, and a way to the older ones.
#[derive(Debug)]
pub struct HashIndex {
    /// The `chain/` directory, for heights older than the recent ones.
    dir: PathBuf,
    /// The last [`RECENT`] blocks, in height order without gaps.
    recent: Mutex<VecDeque<(Height, BlockHash)>>,
}

impl HashIndex {
    /// An empty index over the chain in `dir`.
    pub fn new(dir: &Path) -> HashIndex {
        HashIndex { dir: dir.to_owned(), recent: Mutex::new(VecDeque::with_capacity(RECENT)) }
    }

    /// Records the block appended at `height`. Heights come in order; a height at or below
    /// the last one recorded (the chain was replaced from there) drops what followed it.
    pub fn record(&self, height: Height, hash: BlockHash) {
        let mut recent = self.recent.lock().unwrap();
        while recent.back().is_some_and(|(h, _)| *h >= height) {
            recent.pop_back();
        }
        if recent.back().is_some_and(|(h, _)| *h + 1 != height) {
            recent.clear(); // a gap: only what follows it is known to be contiguous
        }
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back((height, hash));
    }

    /// The hash of the block at `height`, if the chain holds it: from memory for recent
    /// blocks, else read from `chain/` (a blocking read of one segment).
    pub fn get(&self, height: Height) -> Result<Option<BlockHash>> {
        {
            let recent = self.recent.lock().unwrap();
            match (recent.front(), recent.back()) {
                (_, Some((last, _))) if height > *last => return Ok(None),
                (Some((first, _)), _) if height >= *first => {
                    return Ok(Some(recent[(height - first) as usize].1));
                }
                (None, None) => return Ok(None),
                _ => {}
            }
        }
        hash_at(&self.dir, height)
    }
}

/// The hash of the block at `height` in the chain in `dir`, read from its segment. Lines of
/// other heights are skipped by their `{"height":N,` prefix without being parsed.
pub fn hash_at(dir: &Path, height: Height) -> Result<Option<BlockHash>> {
    #[derive(serde::Deserialize)]
    struct Line {
        height: Height,
        hash: BlockHash,
    }
    let Some((_, path)) = segments(dir)?.into_iter().rev().find(|(first, _)| *first <= height) else {
        return Ok(None);
    };
    let mut reader = BufReader::new(File::open(&path).ctx("open", &path)?);
    let wanted = format!("{{\"height\":{height},");
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).ctx("read", &path)? == 0 {
            return Ok(None);
        }
        if !line.starts_with(wanted.as_bytes()) || line.last() != Some(&b'\n') {
            continue;
        }
        let parsed: Line = serde_json::from_slice(&line)
            .map_err(|e| Error::Corrupt { path: path.clone(), detail: format!("block {height}: {e}") })?;
        return Ok((parsed.height == height).then_some(parsed.hash));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::{Block, Digest};
    use crate::store::chain_file::ChainFile;

    #[test]
    fn recent_heights_from_memory_older_ones_from_the_chain() {
        let tmp = tempfile::tempdir().unwrap();
        let mut chain = ChainFile::open(tmp.path(), |_| Ok(())).unwrap();
        let mut blocks: Vec<Block> = Vec::new();
        let total = RECENT as u64 + 10;
        for i in 0..total {
            let prev = blocks.last().map(|b| (b.height, b.hash));
            let block = Block::seal(prev, 1, i + 1, i, 1, Digest::ZERO, vec![]);
            chain.append(&block).unwrap();
            blocks.push(block);
        }
        chain.sync().unwrap();
        let index = chain.hashes();
        assert_eq!(index.get(total - 1).unwrap(), Some(blocks[total as usize - 1].hash));
        assert_eq!(index.get(total).unwrap(), None, "a height the chain does not hold");
        // Height 3 fell out of the in-memory window: it is read from chain/.
        assert!(index.recent.lock().unwrap().front().unwrap().0 > 3);
        assert_eq!(index.get(3).unwrap(), Some(blocks[3].hash));
        assert_eq!(hash_at(tmp.path(), total + 5).unwrap(), None);
        // Reopening rebuilds the window from the replay.
        drop(chain);
        let chain = ChainFile::open(tmp.path(), |_| Ok(())).unwrap();
        assert_eq!(chain.hashes().get(total - 2).unwrap(), Some(blocks[total as usize - 2].hash));
    }

    #[test]
    fn a_replaced_suffix_is_forgotten() {
        let index = HashIndex::new(Path::new("/nonexistent"));
        index.record(0, Digest([0; 32]));
        index.record(1, Digest([1; 32]));
        index.record(2, Digest([2; 32]));
        index.record(1, Digest([9; 32]));
        assert_eq!(index.get(1).unwrap(), Some(Digest([9; 32])));
        assert_eq!(index.get(2).unwrap(), None);
    }
}
