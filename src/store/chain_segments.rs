//! The names of `chain/`'s segment files: `<first height, 20 digits>.jsonl`, and listing them.
//!
//! Shared by the chain's reader and writer ([`super::chain_file`]) and its hash index
//! ([`super::hash_index`]), so neither needs the other to find a segment. Must not: open or
//! parse a segment.

use std::path::{Path, PathBuf};

use super::{IoContext, Result};
use crate::chain::Height;

/// The file name of the segment whose first block is at `first`.
pub fn segment_name(first: Height) -> String {
    format!("{first:020}.jsonl")
}

/// The segment files of `dir`, in height order, with their first heights.
pub fn segments(dir: &Path) -> Result<Vec<(Height, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).ctx("list", dir)? {
        let path = entry.ctx("list", dir)?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(stem) = name.strip_suffix(".jsonl") else {
            continue;
        };
        if let Ok(first) = stem.parse::<Height>() {
            out.push((first, path));
        }
    }
    out.sort();
    Ok(out)
}
