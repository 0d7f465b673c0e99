//! Robustness harness (issue 8 item 7): stub while the checker lands.

#[path = "common/linearizability.rs"]
mod linearizability;
