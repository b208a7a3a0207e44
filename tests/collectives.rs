//! Every collective x dtype x reduce op x size, on 1, 2, 3, 4 and 8 ranks over shared memory,
//! TCP and a mix of both (the `matrix` scenario of `chorus-test-worker`; each worker checks every
//! result against values computed from the same generator on every rank).
//!
//! Two kinds of runs keep the suite inside its time budget on a 2-core machine in debug:
//! - "chunked": small ring chunks (`CHORUS_SHM_CHUNK=4096`, `CHORUS_TCP_CHUNK=8192`) with every
//!   dtype and reduce op at 0, 1, 7, 4097 elements and 128 KiB, so the larger sizes run
//!   multi-chunk pipelines (16-32 chunks) for every dtype and op;
//! - "big": the default chunk geometry (256 KiB shm, 512 KiB TCP) at 0, 7, 4097 elements and
//!   3 MiB, which also selects the large-message algorithms (ring, reduce-scatter + all-gather,
//!   pipelined broadcast chain, reduce-scatter + gather).
//!
//! `CHORUS_TEST_FULL=1` runs every dtype and reduce op at 3 MiB too (minutes in debug).
mod common;
use common::{run_hosts, Hosts};

const CHUNKED_SIZES: &str = "0,1,7,4097,128K";
const SMALL_CHUNKS: &[(&str, &str)] = &[("CHORUS_SHM_CHUNK", "4096"), ("CHORUS_TCP_CHUNK", "8192"), ("CHORUS_RDMA_CHUNK", "8192")];
/// Mixed groups with an odd rank count use equal shm and TCP chunks: with different ones the
/// ranks disagree on the chunk size (known bug, see tests/known_bugs.rs).
const SMALL_EQUAL_CHUNKS: &[(&str, &str)] = &[("CHORUS_SHM_CHUNK", "8192"), ("CHORUS_TCP_CHUNK", "8192")];
const EQUAL_CHUNKS: &[(&str, &str)] = &[("CHORUS_SHM_CHUNK", "262144"), ("CHORUS_TCP_CHUNK", "262144")];

fn full() -> bool {
    std::env::var("CHORUS_TEST_FULL").is_ok_and(|v| v != "0")
}

/// Every dtype, every op, small chunks.
fn chunked(n: usize, hosts: Hosts, dtypes: &str, sizes: &str) {
    let chunks = if matches!(hosts, Hosts::Mixed) { SMALL_EQUAL_CHUNKS } else { SMALL_CHUNKS };
    run_hosts(n, hosts, "matrix", &["--dtypes", dtypes, "--sizes", sizes], chunks);
}

/// Default chunk geometry with a 3 MiB size (SUM only at 3 MiB unless CHORUS_TEST_FULL).
fn big(n: usize, hosts: Hosts, dtypes: &str) {
    let chunks = if matches!(hosts, Hosts::Mixed) && n % 2 == 1 { EQUAL_CHUNKS } else { &[] };
    if full() {
        run_hosts(n, hosts, "matrix", &["--dtypes", "all", "--sizes", "0,1,7,4097,3M", "--big-ops", "all"], chunks);
    } else {
        run_hosts(n, hosts, "matrix", &["--dtypes", dtypes, "--sizes", "0,7,4097,3M", "--big-ops", "sum"], chunks);
    }
}

#[test]
fn one_rank_every_op_dtype_size() {
    // No links: exercises validation, the self copies and AVG finalisation at every size.
    run_hosts(1, Hosts::Shm, "matrix", &["--dtypes", "all", "--sizes", "0,1,7,4097,3M", "--big-ops", "sum,avg"], &[]);
}

#[test]
fn two_ranks_shm_chunked() {
    chunked(2, Hosts::Shm, "all", CHUNKED_SIZES);
}

#[test]
fn two_ranks_tcp_chunked() {
    chunked(2, Hosts::Tcp, "all", CHUNKED_SIZES);
}

#[test]
fn two_ranks_shm_big() {
    big(2, Hosts::Shm, "f32,f16,i8,u16,f8e5m2");
}

#[test]
fn two_ranks_tcp_big() {
    big(2, Hosts::Tcp, "f64,bf16,u8,i32,u64");
}

#[test]
fn two_ranks_rdma_chunked() {
    chunked(2, Hosts::Rdma, "all", CHUNKED_SIZES);
}

#[test]
fn three_ranks_rdma_big() {
    big(3, Hosts::Rdma, "reduced");
}

#[test]
fn four_ranks_rdma_chunked() {
    chunked(4, Hosts::Rdma, "reduced", "0,7,4097,128K");
}

#[test]
fn three_ranks_shm_chunked() {
    chunked(3, Hosts::Shm, "all", CHUNKED_SIZES);
}

#[test]
fn three_ranks_tcp_chunked() {
    chunked(3, Hosts::Tcp, "all", CHUNKED_SIZES);
}

#[test]
fn three_ranks_mixed_chunked() {
    chunked(3, Hosts::Mixed, "all", CHUNKED_SIZES);
}

#[test]
fn three_ranks_shm_big() {
    big(3, Hosts::Shm, "reduced");
}

#[test]
fn three_ranks_tcp_big() {
    big(3, Hosts::Tcp, "reduced");
}

#[test]
fn three_ranks_mixed_big() {
    big(3, Hosts::Mixed, "i16,f16,u32,f8e4m3");
}

#[test]
fn four_ranks_shm_chunked() {
    chunked(4, Hosts::Shm, "reduced", "0,7,4097,128K");
}

#[test]
fn four_ranks_tcp_chunked() {
    chunked(4, Hosts::Tcp, "reduced", "0,7,4097,128K");
}

#[test]
fn four_ranks_mixed_chunked() {
    chunked(4, Hosts::Mixed, "reduced", "0,7,4097,128K");
}

#[test]
fn four_ranks_mixed_big() {
    if full() {
        big(4, Hosts::Mixed, "reduced");
    } else {
        run_hosts(4, Hosts::Mixed, "matrix", &["--dtypes", "f32,bool", "--sizes", "3M", "--big-ops", "sum"], &[]);
    }
}

/// Two-level schedules (`algo::hier`) on 2 hosts x 3 ranks and 3 hosts x 2 (4 x 2 and 2 x 2 are
/// the mixed runs above and below).
#[test]
fn six_ranks_three_per_host_chunked() {
    run_hosts(6, Hosts::PerHost(3), "matrix", &["--dtypes", "reduced", "--sizes", "0,1,7,4097,128K"], SMALL_EQUAL_CHUNKS);
}

#[test]
fn six_ranks_mixed_big() {
    run_hosts(6, Hosts::Mixed, "matrix", &["--dtypes", "f32,i64", "--sizes", "0,7,4097,3M", "--big-ops", "sum"], &[]);
}

/// `CHORUS_ALGO=hier` forces the two-level schedules where they would not be chosen: on one host
/// and with one rank per host.
#[test]
fn forced_two_level_on_one_host_and_one_rank_per_host() {
    let forced: Vec<(&str, &str)> = SMALL_EQUAL_CHUNKS.iter().copied().chain([("CHORUS_ALGO", "hier")]).collect();
    run_hosts(3, Hosts::Shm, "matrix", &["--dtypes", "f32,i32", "--sizes", "0,1,7,4097,128K"], &forced);
    run_hosts(3, Hosts::Tcp, "matrix", &["--dtypes", "f32,i32", "--sizes", "0,1,7,4097,128K"], &forced);
}

#[test]
fn eight_ranks_mixed_chunked() {
    chunked(8, Hosts::Mixed, "reduced", "0,7,4097,64K");
}

#[test]
fn eight_ranks_tcp_small() {
    run_hosts(8, Hosts::Tcp, "matrix", &["--dtypes", "reduced", "--sizes", "0,7,4097"], &[]);
}
