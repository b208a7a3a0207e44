//! All-gather: `Input` is one block of `block_bytes`, `Output` holds `n` blocks, block `j` from rank `j`.

use super::all_reduce::ring_all_gather_chunk;
use super::plan::{Plan, Range, Step};
use super::split::{check_common, chunk_of, num_chunks, push_copy, recv_order, send_order};

/// Direct all-gather: copy the own block, then per chunk round send chunk `c` of `Input` to every peer
/// and receive chunk `c` of every peer's block.
pub fn all_gather_direct(n: usize, me: usize, block_bytes: usize, chunk: usize) -> Plan {
    check_common(n, me, chunk);
    let mut plan = Plan::default();
    push_copy(
        &mut plan,
        Range::input(0, block_bytes),
        Range::output(me * block_bytes, block_bytes),
        chunk,
    );
    if n == 1 {
        return plan;
    }
    let peers = send_order(n, me);
    let sources = recv_order(n, me);
    for c in 0..num_chunks(block_bytes, chunk) {
        let (off, len) = chunk_of((0, block_bytes), chunk, c);
        for &p in &peers {
            plan.push(Step::Send {
                to: p,
                src: Range::input(off, len),
            });
        }
        for &p in &sources {
            plan.push(Step::Recv {
                from: p,
                dst: Range::output(p * block_bytes + off, len),
            });
        }
    }
    plan
}

/// Ring all-gather, chunk-major (all `n-1` hops of chunk `c` before chunk `c+1`).
pub fn all_gather_ring(n: usize, me: usize, block_bytes: usize, chunk: usize) -> Plan {
    check_common(n, me, chunk);
    let mut plan = Plan::default();
    push_copy(
        &mut plan,
        Range::input(0, block_bytes),
        Range::output(me * block_bytes, block_bytes),
        chunk,
    );
    if n == 1 {
        return plan;
    }
    let segs: Vec<(usize, usize)> = (0..n).map(|j| (j * block_bytes, block_bytes)).collect();
    let base = me * block_bytes;
    for c in 0..num_chunks(block_bytes, chunk) {
        ring_all_gather_chunk(&mut plan, n, me, c, &segs, chunk, |off, len| {
            Range::input(off - base, len)
        });
    }
    plan
}
