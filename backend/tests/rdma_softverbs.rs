//! The rdma transport's verbs path on softverbs (`tests/softverbs/softverbs.c`, a software
//! libibverbs built against rdma-core's header): real QP setup, RDMA WRITE WITH IMM, receive
//! completions, credit returns, reconnects and error completions, in every test run. This is the
//! verbs API as chorus uses it, not a NIC: `rdma_hw` runs the same cases on a device.
mod rdma_cases;
mod softverbs;

fn on_softverbs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(softverbs::use_in_this_process);
    let port = chorus_backend::transport::rdma::probe().expect("softverbs is this process's RDMA device");
    assert_eq!(port.device, "softverbs0");
}

#[test]
fn softverbs_chunks_and_credits_flow_between_two_ranks() {
    on_softverbs();
    rdma_cases::chunks_and_credits_flow_between_two_ranks();
}

#[test]
fn softverbs_reconnect_recreates_only_the_rejoiners_qp() {
    on_softverbs();
    rdma_cases::reconnect_recreates_only_the_rejoiners_qp();
}

#[test]
fn softverbs_writes_to_a_vanished_peer_fail_the_link() {
    on_softverbs();
    rdma_cases::writes_to_a_vanished_peer_fail_the_link();
}
