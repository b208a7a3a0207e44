//! Pairwise exchange: all-to-all and barrier.

use super::plan::{Plan, Range, Step};
use super::split::{check_common, chunk_of, num_chunks, push_copy, recv_order, send_order};

/// All-to-all with arbitrary (possibly uneven, possibly empty) blocks: `send[p] = (offset, len)` in
/// `Input` of the block for `p`, `recv[p] = (offset, len)` in `Output` of the block from `p`. The own
/// block is copied; then in steps `s = 1..n-1` the rank sends to `me+s` and receives from `me-s`,
/// interleaving send chunk `i` and receive chunk `i` while either has chunks left.
pub fn all_to_all(
    n: usize,
    me: usize,
    send: &[(usize, usize)],
    recv: &[(usize, usize)],
    chunk: usize,
) -> Plan {
    check_common(n, me, chunk);
    assert_eq!(send.len(), n, "all_to_all needs one send block per rank");
    assert_eq!(recv.len(), n, "all_to_all needs one receive block per rank");
    assert_eq!(
        send[me].1, recv[me].1,
        "all_to_all: own send and receive blocks differ in length"
    );
    let mut plan = Plan::default();
    push_copy(
        &mut plan,
        Range::input(send[me].0, send[me].1),
        Range::output(recv[me].0, recv[me].1),
        chunk,
    );
    for s in 1..n {
        let to = (me + s) % n;
        let from = (me + n - s) % n;
        let (sc, rc) = (
            num_chunks(send[to].1, chunk),
            num_chunks(recv[from].1, chunk),
        );
        for i in 0..sc.max(rc) {
            if i < sc {
                let (off, len) = chunk_of(send[to], chunk, i);
                plan.push(Step::Send {
                    to,
                    src: Range::input(off, len),
                });
            }
            if i < rc {
                let (off, len) = chunk_of(recv[from], chunk, i);
                plan.push(Step::Recv {
                    from,
                    dst: Range::output(off, len),
                });
            }
        }
    }
    plan
}

/// Barrier: a zero-length chunk to every peer, then one from every peer.
pub fn barrier(n: usize, me: usize) -> Plan {
    assert!(n > 0 && me < n, "rank {me} is outside a group of {n}");
    let mut plan = Plan::default();
    for p in send_order(n, me) {
        plan.push(Step::Send {
            to: p,
            src: Range::output(0, 0),
        });
    }
    for p in recv_order(n, me) {
        plan.push(Step::Recv {
            from: p,
            dst: Range::output(0, 0),
        });
    }
    plan
}
