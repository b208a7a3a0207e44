//! Reduce-scatter: `Input` holds `n` blocks of `block_bytes`, rank `j` ends with the reduction of
//! block `j` in `Output` (`block_bytes`).

use super::all_reduce::ring_reduce_scatter_chunk;
use super::plan::{Plan, Range, Step};
use super::split::{ascending_peers, check_reduce, chunk_of, num_chunks, push_copy, send_order};

/// Direct reduce-scatter: per chunk round every rank sends chunk `c` of block `p` to each peer `p` and
/// reduces chunk `c` of its own block from all peers into `Output`.
pub fn reduce_scatter_direct(
    n: usize,
    me: usize,
    block_bytes: usize,
    elem: usize,
    chunk: usize,
) -> Plan {
    check_reduce(n, me, block_bytes, elem, chunk);
    let mut plan = Plan::default();
    if n == 1 {
        push_copy(
            &mut plan,
            Range::input(0, block_bytes),
            Range::output(0, block_bytes),
            chunk,
        );
        return plan;
    }
    let peers = send_order(n, me);
    let from = ascending_peers(n, me);
    let block = |j: usize| (j * block_bytes, block_bytes);
    for c in 0..num_chunks(block_bytes, chunk) {
        for &p in &peers {
            let (off, len) = chunk_of(block(p), chunk, c);
            plan.push(Step::Send {
                to: p,
                src: Range::input(off, len),
            });
        }
        let (off, len) = chunk_of(block(me), chunk, c);
        plan.push(Step::RecvReduce {
            from: from.clone(),
            local: Range::input(off, len),
            dst: Range::output(off - me * block_bytes, len),
        });
    }
    plan
}

/// Ring reduce-scatter, chunk-major like [`super::all_reduce_ring`]'s reduce-scatter half.
pub fn reduce_scatter_ring(
    n: usize,
    me: usize,
    block_bytes: usize,
    elem: usize,
    chunk: usize,
) -> Plan {
    check_reduce(n, me, block_bytes, elem, chunk);
    let mut plan = Plan::default();
    if n == 1 {
        push_copy(
            &mut plan,
            Range::input(0, block_bytes),
            Range::output(0, block_bytes),
            chunk,
        );
        return plan;
    }
    let segs: Vec<(usize, usize)> = (0..n).map(|j| (j * block_bytes, block_bytes)).collect();
    let base = me * block_bytes;
    for c in 0..num_chunks(block_bytes, chunk) {
        ring_reduce_scatter_chunk(&mut plan, n, me, c, &segs, chunk, |off, len| {
            Range::output(off - base, len)
        });
    }
    plan
}
