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

mod rejoin_cases;

/// Two successive in-place rejoins over RDMA: rank 0 keeps one link per peer throughout and
/// recreates only the rejoiner's queue pair each time (DESIGN invariant 8).
#[test]
fn softverbs_successive_replacements_recreate_only_their_queue_pairs() {
    on_softverbs();
    let reports = rejoin_cases::successive_replacements("succ-rdma", |r| format!("sv-host-{r}"));
    for (r, (t, _)) in reports.iter().enumerate() {
        assert!(t.iter().enumerate().all(|(q, t)| if q == r { *t == "self" } else { *t == "rdma" }), "rank {r}: {t:?}");
    }
    // Rank 0 never left: its links to 2 and to 1 each carry a second QP. Rank 2 (replaced
    // first) then saw rank 1 replaced: a second QP towards 1, one towards 0. Rank 1, the last
    // replacement, made one QP per peer.
    assert_eq!(reports[0].1, vec![0, 2, 2]);
    assert_eq!(reports[2].1, vec![1, 2, 0]);
    assert_eq!(reports[1].1, vec![1, 0, 1]);
}
