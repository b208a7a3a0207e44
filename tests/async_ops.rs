//! Several asynchronous operations in flight at once (8 all_reduce_async of different dtypes,
//! ops and sizes, plus every other `*_async` collective), interleaved with blocking ones;
//! `Work::is_completed`, `error`, `wait_for` and `wait`; an op that fails validation is complete
//! at once with its error.
mod common;
use common::{run_hosts, Hosts};

#[test]
fn async_three_ranks_shm() {
    run_hosts(3, Hosts::Shm, "async", &[], &[]);
}

#[test]
fn async_three_ranks_tcp() {
    run_hosts(3, Hosts::Tcp, "async", &[], &[]);
}

#[test]
fn async_four_ranks_mixed() {
    run_hosts(4, Hosts::Mixed, "async", &[], &[]);
}

#[test]
fn async_one_rank() {
    run_hosts(1, Hosts::Shm, "async", &[], &[]);
}
