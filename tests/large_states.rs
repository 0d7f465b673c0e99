//! Large states on a 3-node cluster (issue 8 item 5): 1 MiB states of random and of all-zero bytes written by
//! 32 concurrent writers over the three mounts, with no failure and the same content everywhere.
//!
//! A test binary of its own on purpose: nothing else in this process may spawn a child while the writers
//! hold their files open. A spawned child inherits the open descriptors and closes them (at `exec` even
//! with `O_CLOEXEC`), and every close sends FUSE a `flush`, which commits whatever the handle holds at that
//! moment — half a `write(2)` that the kernel split in two requests (a 1 MiB buffer that does not start
//! on a page boundary spans 257 pages). Such a commit from another process is concurrent with the
//! writer's own close and was seen to apply after it, leaving the state 16 bytes short (the fs layer
//! does not order two commits of one handle; reported, not changed here).

mod common;

use std::fs;
use std::sync::{Arc, Barrier, Mutex};
use std::thread;

use common::cluster::*;
use common::*;

/// 32 writers (threads spread over the three members) each replace their own 1 MiB state twice — random
/// bytes then all-zero bytes, or the other way round — each `open`+`write`+`close` checked. No call may
/// fail (no `EIO`: appends are bounded in bytes, the AppendEntries deadline fits them, entries travel as
/// raw bytes); afterwards every member has the same head and every member serves each writer's last
/// content, and `states/` is identical everywhere.
#[test]
fn one_mib_states_replicate_on_three_nodes_while_32_writers_run() {
    use rand::{RngCore, SeedableRng};
    const WRITERS: usize = 32;
    const MIB: usize = 1 << 20;
    // The production default commit timeout (the harness's 3 s is for tests that lose the quorum).
    let c = Cluster::start(3, ClusterOpts { commit_timeout: "10s".into(), ..ClusterOpts::default() });
    fs::create_dir(c.path(0, "big")).expect("mkdir big");
    let contents = |w: usize| -> [Vec<u8>; 2] {
        let mut random = vec![0u8; MIB];
        rand::rngs::StdRng::seed_from_u64(w as u64).fill_bytes(&mut random);
        let zeros = vec![0u8; MIB];
        if w.is_multiple_of(2) {
            [random, zeros]
        } else {
            [zeros, random]
        }
    };
    let start = Arc::new(Barrier::new(WRITERS));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let handles: Vec<_> = (0..WRITERS)
        .map(|w| {
            let path = c.path(w % 3, &format!("big/w{w}"));
            let (start, failures) = (start.clone(), failures.clone());
            thread::spawn(move || {
                let rounds = contents(w);
                start.wait();
                for (round, content) in rounds.iter().enumerate() {
                    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC;
                    if let Err(step) = write_with_flags(&path, flags, content) {
                        let e = format!("writer {w} round {round}: {step:?} ({})", errno_name(step.errno()));
                        failures.lock().unwrap().push(e);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("writer thread");
    }
    let failures = failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "{} of {} writes failed: {failures:#?}", failures.len(), WRITERS * 2);

    let all = c.all();
    c.wait_converged(&all);
    for w in 0..WRITERS {
        let [first, last] = contents(w);
        for i in &all {
            let rel = format!("big/w{w}");
            let got = fs::read(c.path(*i, &rel))
                .unwrap_or_else(|e| panic!("member {i}: read of {rel} through the mount failed: {e}"));
            if got != last {
                let differs_at = got.iter().zip(&last).position(|(a, b)| a != b);
                let mirror = c.nodes[*i].state_file(&rel).map(|m| (m.len(), m == last));
                let kept = c.keep_for_debugging();
                panic!(
                    "member {i} (head {:?}) serves {} bytes for {rel}, not writer {w}'s last content (first \
                     difference at {differs_at:?}; it is the first round's content: {}; states/ has (len, \
                     is last) {mirror:?}); writer {w} wrote on member {}; data kept in {}",
                    c.head(*i),
                    got.len(),
                    got == first,
                    w % 3,
                    kept.display()
                );
            }
        }
    }
    c.wait_states_identical(&all);
}
