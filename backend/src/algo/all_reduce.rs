//! All-reduce: direct (one-shot), direct reduce-scatter + all-gather (two-shot), and ring.

use super::plan::{Plan, Range, Step};
use super::split::{
    ascending_peers, check_reduce, chunk_of, num_chunks, push_copy, recv_order, send_order,
    split_chunks, split_even,
};

/// One-shot all-reduce for small messages: per chunk round every rank sends its input chunk to every
/// peer and reduces all `n` inputs locally into `Output`.
pub fn all_reduce_direct(n: usize, me: usize, bytes: usize, elem: usize, chunk: usize) -> Plan {
    check_reduce(n, me, bytes, elem, chunk);
    let mut plan = Plan::default();
    if n == 1 {
        push_copy(
            &mut plan,
            Range::input(0, bytes),
            Range::output(0, bytes),
            chunk,
        );
        return plan;
    }
    let peers = send_order(n, me);
    let from = ascending_peers(n, me);
    for (off, len) in split_chunks(0, bytes, chunk) {
        for &p in &peers {
            plan.push(Step::Send {
                to: p,
                src: Range::input(off, len),
            });
        }
        plan.push(Step::RecvReduce {
            from: from.clone(),
            local: Range::input(off, len),
            dst: Range::output(off, len),
        });
    }
    plan
}

/// Two-shot all-reduce: direct reduce-scatter then direct all-gather, pipelined by chunk rounds.
/// Segment `j` of [`split_even`] is reduced by rank `j`. In round `c` a rank sends chunk `c` of every
/// peer's segment, reduces chunk `c` of its own, sends the result to every peer and receives chunk `c`
/// of every peer's segment. Segments without a chunk `c` skip their messages on every rank.
pub fn all_reduce_rs_ag(n: usize, me: usize, bytes: usize, elem: usize, chunk: usize) -> Plan {
    check_reduce(n, me, bytes, elem, chunk);
    direct_rs_then(n, me, bytes, elem, chunk, None)
}

/// Direct reduce-scatter pipelined by chunk rounds, then either an all-gather (`gather_to` is
/// `None`: every rank ends with the whole result) or a gather of the reduced segments to one root
/// (`Some(root)`: only the root's `Output` holds the result). Shared by the two-shot all-reduce
/// and the large reduce.
pub(crate) fn direct_rs_then(n: usize, me: usize, bytes: usize, elem: usize, chunk: usize, gather_to: Option<usize>) -> Plan {
    let mut plan = Plan::default();
    if n == 1 {
        push_copy(
            &mut plan,
            Range::input(0, bytes),
            Range::output(0, bytes),
            chunk,
        );
        return plan;
    }
    let segs = split_even(bytes, n, elem);
    let nch: Vec<usize> = segs.iter().map(|s| num_chunks(s.1, chunk)).collect();
    let rounds = nch.iter().copied().max().unwrap_or(1);
    let peers = send_order(n, me);
    let sources = recv_order(n, me);
    let from = ascending_peers(n, me);
    for c in 0..rounds {
        for &p in &peers {
            if c < nch[p] {
                let (off, len) = chunk_of(segs[p], chunk, c);
                plan.push(Step::Send {
                    to: p,
                    src: Range::input(off, len),
                });
            }
        }
        if c < nch[me] {
            let (off, len) = chunk_of(segs[me], chunk, c);
            plan.push(Step::RecvReduce {
                from: from.clone(),
                local: Range::input(off, len),
                dst: Range::output(off, len),
            });
            let targets: Vec<usize> = match gather_to {
                None => peers.clone(),
                Some(root) if root != me => vec![root],
                Some(_) => Vec::new(),
            };
            for p in targets {
                plan.push(Step::Send {
                    to: p,
                    src: Range::output(off, len),
                });
            }
        }
        if gather_to.is_none_or(|root| root == me) {
            for &p in &sources {
                if c < nch[p] {
                    let (off, len) = chunk_of(segs[p], chunk, c);
                    plan.push(Step::Recv {
                        from: p,
                        dst: Range::output(off, len),
                    });
                }
            }
        }
    }
    plan
}

/// Ring all-reduce: ring reduce-scatter (rank `j` ends up with segment `j` of [`split_even`] reduced)
/// then ring all-gather. The loop is chunk-major: for each chunk index `c`, all `n-1` reduce-scatter
/// hops of chunk `c` and then all `n-1` all-gather hops of chunk `c`, so at most one chunk per pair is
/// outstanding per rank and the plan cannot deadlock for lack of slots (see the module docs).
pub fn all_reduce_ring(n: usize, me: usize, bytes: usize, elem: usize, chunk: usize) -> Plan {
    check_reduce(n, me, bytes, elem, chunk);
    let mut plan = Plan::default();
    if n == 1 {
        push_copy(
            &mut plan,
            Range::input(0, bytes),
            Range::output(0, bytes),
            chunk,
        );
        return plan;
    }
    let segs = split_even(bytes, n, elem);
    let rounds = segs
        .iter()
        .map(|s| num_chunks(s.1, chunk))
        .max()
        .unwrap_or(1);
    for c in 0..rounds {
        ring_reduce_scatter_chunk(&mut plan, n, me, c, &segs, chunk, Range::output);
        ring_all_gather_chunk(&mut plan, n, me, c, &segs, chunk, Range::output);
    }
    plan
}

/// Chunk `c` of a ring reduce-scatter over the `Input` regions `segs` (one per rank). Hop `k` on rank
/// `me` handles segment `me-1-k (mod n)`: hop 0 sends it, hops `1..n-2` receive the partial sum from
/// `prev`, add the local input and forward it to `next`, hop `n-1` completes segment `me` and stores it
/// at `final_dst(input_offset, len)`. Segments without a chunk `c` are skipped on every rank.
pub(crate) fn ring_reduce_scatter_chunk(
    plan: &mut Plan,
    n: usize,
    me: usize,
    c: usize,
    segs: &[(usize, usize)],
    chunk: usize,
    final_dst: impl Fn(usize, usize) -> Range,
) {
    let next = (me + 1) % n;
    let prev = (me + n - 1) % n;
    for k in 0..n {
        let s = (me + 2 * n - 1 - k) % n;
        if c >= num_chunks(segs[s].1, chunk) {
            continue;
        }
        let (off, len) = chunk_of(segs[s], chunk, c);
        let local = Range::input(off, len);
        let step = if k == 0 {
            Step::Send {
                to: next,
                src: local,
            }
        } else if k < n - 1 {
            Step::RecvReduceSend {
                from: prev,
                to: next,
                local,
                dst: None,
            }
        } else {
            Step::RecvReduce {
                from: vec![prev],
                local,
                dst: final_dst(off, len),
            }
        };
        plan.push(step);
    }
}

/// Chunk `c` of a ring all-gather into the `Output` regions `segs` (one per rank). Hop 0 sends this
/// rank's own chunk (`own_src(output_offset, len)`), hops `1..n-2` receive segment `me-k` from `prev`,
/// store it and forward it to `next`, hop `n-1` receives segment `me+1`.
pub(crate) fn ring_all_gather_chunk(
    plan: &mut Plan,
    n: usize,
    me: usize,
    c: usize,
    segs: &[(usize, usize)],
    chunk: usize,
    own_src: impl Fn(usize, usize) -> Range,
) {
    let next = (me + 1) % n;
    let prev = (me + n - 1) % n;
    for k in 0..n {
        let s = (me + n - k) % n;
        if c >= num_chunks(segs[s].1, chunk) {
            continue;
        }
        let (off, len) = chunk_of(segs[s], chunk, c);
        let dst = Range::output(off, len);
        let step = if k == 0 {
            Step::Send {
                to: next,
                src: own_src(off, len),
            }
        } else if k < n - 1 {
            Step::RecvCopySend {
                from: prev,
                to: vec![next],
                dst,
            }
        } else {
            Step::Recv { from: prev, dst }
        };
        plan.push(step);
    }
}
