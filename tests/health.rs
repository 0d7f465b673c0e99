//! The gRPC health service (`grpc.health.v1.Health`) on the peer port: `SERVING` once a node is
//! ready, `NOT_SERVING` while it is not (here: a member that lost its quorum), no token needed,
//! and `NOT_FOUND` for any service but the overall one.

mod common;

use std::time::{Duration, Instant};

use common::cluster::*;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// The status `addr` reports for `service` (no token, no metadata), or the gRPC code it refused with.
fn check(rt: &tokio::runtime::Runtime, addr: &str, service: &str) -> Result<ServingStatus, tonic::Code> {
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|_| tonic::Code::Unavailable)?;
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest { service: service.to_string() })
            .await
            .map_err(|s| s.code())?;
        Ok(reply.into_inner().status())
    })
}

fn wait_for(rt: &tokio::runtime::Runtime, addr: &str, want: ServingStatus, why: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    while Instant::now() < deadline {
        last = Some(check(rt, addr, ""));
        if last == Some(Ok(want)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{addr}: health never said {want:?} ({why}); last answer {last:?}");
}

#[test]
fn health_says_serving_when_ready_and_not_serving_without_a_quorum() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let leader = c.wait_leader(&c.all());
    c.wait_converged(&c.all());
    for i in c.all() {
        wait_for(&rt, &c.addrs[i], ServingStatus::Serving, "a ready member of a healthy cluster");
        assert_eq!(
            check(&rt, &c.addrs[i], "lightchain.Cluster"),
            Err(tonic::Code::NotFound),
            "member {i}: only the overall status is reported"
        );
    }
    // Two members gone: the survivor cannot commit, so it is not ready.
    let survivor = (0..3).find(|i| *i != leader).unwrap();
    for i in c.all() {
        if i != survivor {
            c.kill9(i);
        }
    }
    wait_for(&rt, &c.addrs[survivor], ServingStatus::NotServing, "a member without a quorum");
    // They come back: ready again.
    for i in c.all() {
        if i != survivor {
            c.restart(i);
        }
    }
    for i in c.all() {
        wait_for(&rt, &c.addrs[i], ServingStatus::Serving, "the cluster healed");
    }
}
