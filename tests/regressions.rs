//! Regression tests for library bugs the integration suite found (each was an `#[ignore]`d
//! reproduction until fixed): chunk-size agreement, mismatched broadcast roots, shm cleanup.
mod common;
use common::{run_hosts, Hosts};

/// 3 ranks, ranks 0 and 1 share memory, rank 2 is reached over TCP; a 4 MiB f32 all_reduce with
/// the default ring geometry. backend/src/group.rs derives the group's chunk size from the
/// rank's own links (`min` of their `slot_bytes`): ranks 0 and 1 have an shm link (256 KiB),
/// rank 2 only TCP links (512 KiB), so they build different plans and the first multi-chunk
/// collective fails on every rank with "ranks disagree on the number of bytes in all_reduce:
/// this rank has 0x40000, rank 2 sent 0x80000".
#[test]
fn mixed_group_ranks_agree_on_chunk_size() {
    run_hosts(3, Hosts::Mixed, "smoke", &[], &[]);
}

/// 2 ranks; rank 0 calls broadcast with root 0, rank 1 with root 1. Both act as the root, send,
/// and wait for the other to consume: neither receives, so the argument check (done on receipt)
/// never runs and both ranks fail only with `Timeout` after CHORUS_TIMEOUT_MS (30 s here)
/// instead of a mismatch error.
#[test]
fn mismatched_broadcast_roots_are_detected() {
    run_hosts(2, Hosts::Shm, "errors-mismatch", &["root"], &[]);
}

/// Rank 0 of a 2-rank job alone (rank 1 never starts), 500 ms timeout: `ProcessGroup::new`
/// fails as it should, but backend/src/group.rs `create` returns early (`wait_all(..)?` on the
/// peer records) after `prepare` created `/dev/shm/chorus-<pid>-<t>-r0-{sig,data}` (8 MiB) and
/// never unlinks them; they are only unlinked after every peer mapped them. Every failed or
/// timed-out rendezvous leaks them.
#[test]
fn failed_group_creation_leaves_no_shm_segments() {
    common::run_ranks(1, "create-timeout", &[], |_| Vec::new());
}
