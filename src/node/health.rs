//! The standard gRPC health service (`grpc.health.v1.Health`) on the peer port, for probes and
//! load balancers.
//!
//! The overall status (service name `""`) is `SERVING` while this node is ready
//! ([`Node::is_ready`]: it serves, knows a leader and a quorum, has not diverged, was not
//! removed, and has caught up with the cluster) and `NOT_SERVING` otherwise — from the first
//! moment the port listens until the node is ready, and again whenever it stops being so. It is
//! re-read every [`EVERY`]. The service needs no cluster token: it tells nothing but that one
//! bit, and a Kubernetes `grpc` probe cannot send a token.
//!
//! Must not: change anything, or answer for any service but the overall one.

use std::sync::Weak;
use std::time::Duration;

use tokio::sync::watch;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};
use tonic_health::ServingStatus;

use super::Node;

/// How often the status follows the node's readiness.
pub const EVERY: Duration = Duration::from_millis(500);

/// A reporter saying `NOT_SERVING`, and the service that answers from it.
pub async fn service() -> (HealthReporter, HealthServer<HealthService>) {
    let reporter = HealthReporter::new();
    reporter.set_service_status("", ServingStatus::NotServing).await;
    let service = HealthServer::new(HealthService::from_health_reporter(reporter.clone()));
    (reporter, service)
}

/// Keeps `reporter` following the node's readiness until the node is gone or `stop` is set.
pub async fn follow(node: Weak<Node>, reporter: HealthReporter, mut stop: watch::Receiver<bool>) {
    let mut last = None;
    while let Some(ready) = node.upgrade().map(|n| n.is_ready()) {
        if last != Some(ready) {
            let status = if ready { ServingStatus::Serving } else { ServingStatus::NotServing };
            reporter.set_service_status("", status).await;
            last = Some(ready);
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    reporter.set_service_status("", ServingStatus::NotServing).await;
}
