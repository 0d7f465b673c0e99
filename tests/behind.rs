//! `chain/` written behind the acknowledgement (DESIGN §1.4), attacked: every node holds its
//! chain writes back (a debug-build test hook), snapshots are taken every few entries, and a
//! member is killed while blocks it applied are not yet on disk. A snapshot must never cover
//! a block the chain lacks, and a restart must re-apply what was lost from the consensus log:
//! afterwards every member has the same head, the full chain, and `verify` passes.
//!
//! The hook is an environment variable given to every member (`ClusterOpts::member_env`).

mod common;

use common::cluster::{assert_full_chain, Cluster, ClusterOpts};
use common::*;

#[test]
fn a_member_killed_while_its_chain_lags_comes_back_with_the_same_head() {
    let delay = |i| (i, "LIGHTCHAIN_TEST_CHAIN_DELAY_MS".to_string(), "400".to_string());
    let opts = ClusterOpts { member_env: (0..3).map(delay).collect(), ..ClusterOpts::default() };
    let mut c = Cluster::start(3, opts.snapshot_every(10));
    std::fs::create_dir(c.path(0, "d")).expect("mkdir");
    let live = c.all();
    let leader = c.wait_leader(&live);
    let victim = (leader + 1) % 3;
    let mut written = Vec::new();
    for i in 0..60 {
        let w = if i % 2 == 0 { leader } else { (leader + 2) % 3 };
        let rel = format!("d/f{i:02}");
        let content = format!("value {i}\n");
        put(&c.path(w, &rel), content.as_bytes());
        written.push((rel, content));
        if i == 30 {
            // Kill it while blocks it applied (and serves) are held back from chain/.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            loop {
                let st = c.status(victim);
                if st["chain_height"].as_u64() < st["head_height"].as_u64() {
                    eprintln!(
                        "victim {victim} killed at head {} with chain {}",
                        st["head_height"], st["chain_height"]
                    );
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "the chain never lagged: {st}");
                put(&c.path(leader, "d/nudge"), b"x");
            }
            c.kill9(victim);
        }
        if i == 45 {
            c.restart(victim);
        }
    }
    let (height, hash) = c.wait_converged(&live);
    c.wait_states_identical(&live);
    for i in live.iter().copied() {
        let blocks = c.log_blocks(i);
        assert_eq!(assert_full_chain(&blocks, &format!("member {i}")), (height, hash.clone()));
    }
    for (rel, content) in &written {
        for i in live.iter().copied() {
            assert_eq!(&read_string(&c.path(i, rel)), content, "member {i} serves {rel}");
        }
    }
    for i in live.iter().copied() {
        c.nodes[i].stop();
    }
    c.assert_verify(&live);
}
