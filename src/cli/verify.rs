//! `lightchain verify`: an offline integrity check of a data directory.
//!
//! Every block is decoded, its hash recomputed, its link to the previous block checked, and
//! its transactions re-applied to a fresh tree: the outcomes and state root must be exactly
//! those recorded. Then `states/` is compared with the rebuilt tree. A running node writes
//! `states/` just after the chain, so a mismatch is re-checked a few times before it counts.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use crate::chain::{replay, Tip, Tree};
use crate::store::chain_file::read_all;
use crate::store::identity::Identity;
use crate::store::states::{Mismatch, StatesDir};
use crate::store::DataDir;

/// What a verification found.
enum Finding {
    Intact { blocks: u64, head: Option<Tip>, states: usize, torn_tail: bool },
    BadChain(String),
    BadStates(Vec<Mismatch>),
}

pub(super) fn run(data: &Path) -> ExitCode {
    let dir = match DataDir::open_existing(data) {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("lightchain verify: {e}");
            return ExitCode::from(2);
        }
    };
    let mut finding = check(&dir);
    for _ in 0..5 {
        if !matches!(finding, Finding::BadStates(_)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        finding = check(&dir);
    }
    match finding {
        Finding::Intact { blocks, head, states, torn_tail } => {
            if torn_tail {
                println!("note: the last block is incomplete (a crash, or a write in progress); a node cuts it at start-up");
            }
            match head {
                Some(h) => {
                    println!("chain intact: {blocks} blocks, head height {} hash {}", h.height, h.hash)
                }
                None => println!("chain intact: empty"),
            }
            println!("states/ matches the chain: {states} states");
            ExitCode::SUCCESS
        }
        Finding::BadChain(message) => {
            println!("chain broken: {message}");
            ExitCode::FAILURE
        }
        Finding::BadStates(mismatches) => {
            println!("states/ differs from the chain in {} places:", mismatches.len());
            for m in mismatches.iter().take(20) {
                match m {
                    Mismatch::Stale(id) => println!("  {id}: missing or different"),
                    Mismatch::Extra { dir, name } => {
                        let name = String::from_utf8_lossy(name);
                        match dir.is_root() {
                            true => println!("  {name}: not in the chain"),
                            false => println!("  {dir}/{name}: not in the chain"),
                        }
                    }
                }
            }
            ExitCode::FAILURE
        }
    }
}

/// What `verify` finds wrong with the data directory at `data`, or `None` when it passes.
#[cfg(test)]
pub(crate) fn problems(data: &Path) -> Option<String> {
    let dir = match DataDir::open_existing(data) {
        Ok(dir) => dir,
        Err(e) => return Some(e.to_string()),
    };
    match check(&dir) {
        Finding::Intact { .. } => None,
        Finding::BadChain(message) => Some(format!("chain broken: {message}")),
        Finding::BadStates(mismatches) => Some(format!("states/ differs from the chain: {mismatches:?}")),
    }
}

fn check(dir: &DataDir) -> Finding {
    let mut tree = Tree::new();
    let mut prev: Option<Tip> = None;
    let mut blocks = 0u64;
    let mut genesis = None;
    let result = read_all(&dir.chain(), |read| {
        let block = &read.block;
        let expected = prev.map_or(0, |p| p.height + 1);
        if let Err(e) = replay(&mut tree, prev, block) {
            let height = if block.height == expected { block.height } else { expected };
            return Err(crate::store::Error::Corrupt {
                path: read.path.clone(),
                detail: format!("block {height}: {e}"),
            });
        }
        if block.height == 0 {
            genesis = Some(crate::consensus::state_machine::cluster_id_of(block));
        }
        prev = Some(Tip::of(block));
        blocks += 1;
        Ok(())
    });
    let torn_tail = match result {
        Ok(torn) => torn.is_some(),
        Err(crate::store::Error::Corrupt { path, detail }) if detail.starts_with("block ") => {
            return Finding::BadChain(format!("{detail} (in {})", path.display()))
        }
        Err(e) => {
            // An unreadable line: name the block that should have been there.
            let next = prev.map_or(0, |p| p.height + 1);
            return Finding::BadChain(format!("block {next}: {e}"));
        }
    };
    if let (Ok(Some(identity)), Some(genesis)) = (Identity::load(dir), &genesis) {
        if identity.cluster_id.as_ref().is_some_and(|c| c != genesis) {
            return Finding::BadChain(format!(
                "block 0: genesis names cluster {genesis} but identity.json says {:?}",
                identity.cluster_id
            ));
        }
    }
    match StatesDir::new(dir).compare_tree(&tree) {
        Ok(m) if m.is_empty() => Finding::Intact { blocks, head: prev, states: tree.len() - 1, torn_tail },
        Ok(m) => Finding::BadStates(m),
        Err(e) => Finding::BadChain(format!("cannot read states/: {e}")),
    }
}
