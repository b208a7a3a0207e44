//! RDMA hardware tests: real queue pairs on a real (or Soft-RoCE) device. They run only when
//! `CHORUS_RDMA_TEST_DEVICE` names the device (e.g. `rxe0`, `mlx5_0`); otherwise each prints
//! "not run: CHORUS_RDMA_TEST_DEVICE unset" and returns (they claim nothing then). See
//! docs/rdma.md for setting up Soft-RoCE. The cases are in `rdma_cases` (`rdma_softverbs` runs
//! the same ones on the softverbs test provider in every test run).
mod rdma_cases;

fn device() -> Option<String> {
    match std::env::var("CHORUS_RDMA_TEST_DEVICE") {
        Ok(d) if !d.is_empty() => {
            std::env::set_var("CHORUS_IB_HCA", format!("={d}"));
            Some(d)
        }
        _ => {
            println!("not run: CHORUS_RDMA_TEST_DEVICE unset");
            None
        }
    }
}

#[test]
#[ignore = "needs an RDMA device: set CHORUS_RDMA_TEST_DEVICE and run with --ignored (docs/rdma.md)"]
fn rdma_hw_chunks_and_credits_flow_between_two_ranks() {
    if device().is_some() {
        rdma_cases::chunks_and_credits_flow_between_two_ranks();
    }
}

#[test]
#[ignore = "needs an RDMA device: set CHORUS_RDMA_TEST_DEVICE and run with --ignored (docs/rdma.md)"]
fn rdma_hw_reconnect_recreates_only_the_rejoiners_qp() {
    if device().is_some() {
        rdma_cases::reconnect_recreates_only_the_rejoiners_qp();
    }
}

#[test]
#[ignore = "needs an RDMA device: set CHORUS_RDMA_TEST_DEVICE and run with --ignored (docs/rdma.md)"]
fn rdma_hw_writes_to_a_vanished_peer_fail_the_link() {
    if device().is_some() {
        rdma_cases::writes_to_a_vanished_peer_fail_the_link();
    }
}
