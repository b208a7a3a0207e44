//! Issue 17 end to end: a job with a secret (store and rank links authenticated), and a join for
//! a live rank refused.

mod common;

use common::{Hosts, Launch};
use std::time::Duration;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Rank 0 hosts the store with the job secret; every store connection and every TCP link of the
/// 3 ranks (one host each) proves it, and the collectives run as without one.
#[test]
fn a_job_with_a_secret_runs_over_authenticated_store_and_links() {
    let port = free_port().to_string();
    let env = |r: usize| {
        let mut v = Hosts::Tcp.env(3, r);
        v.push(("MASTER_ADDR".into(), "127.0.0.1".into()));
        v.push(("MASTER_PORT".into(), port.clone()));
        v.push(("CHORUS_SECRET".into(), "a-test-secret".into()));
        v
    };
    let mut l = Launch::new(3, "matrix", &["--dtypes", "f32", "--sizes", "7,4097"], &env);
    l.host_store = false;
    common::run(&l);
}

/// A process without the secret is refused by the job's store at once, with an error that says so.
#[test]
fn a_client_without_the_secret_is_refused_by_a_job_store() {
    let server = chorus::bootstrap::StoreServer::bind_with(
        "127.0.0.1:0".parse().unwrap(),
        chorus::bootstrap::server::ServerLimits::default(),
        chorus::bootstrap::JobSecret::new("job"),
    )
    .unwrap();
    let err = chorus::bootstrap::StoreClient::connect_with(&server.local_addr().to_string(), Duration::from_secs(120), None).unwrap_err();
    assert!(matches!(err, chorus::bootstrap::BootstrapError::Auth { .. }), "{err}");
    assert!(err.to_string().contains("CHORUS_SECRET"), "{err}");
}
