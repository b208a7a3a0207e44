//! Rooted collectives: broadcast, reduce, gather, scatter.

use super::plan::{Plan, Range, Step};
use super::split::{
    ascending_peers, check_common, check_reduce, check_root, push_copy, recv_order, send_order,
    split_chunks,
};

/// Direct broadcast (in place: everything is in `Output`): per chunk round the root sends chunk `c`
/// to every peer; the others receive it.
pub fn broadcast_direct(n: usize, me: usize, root: usize, bytes: usize, chunk: usize) -> Plan {
    check_common(n, me, chunk);
    check_root(n, root);
    let mut plan = Plan::default();
    if n == 1 {
        return plan;
    }
    let peers = send_order(n, me);
    for (off, len) in split_chunks(0, bytes, chunk) {
        if me == root {
            for &p in &peers {
                plan.push(Step::Send {
                    to: p,
                    src: Range::output(off, len),
                });
            }
        } else {
            plan.push(Step::Recv {
                from: root,
                dst: Range::output(off, len),
            });
        }
    }
    plan
}

/// Pipelined chain broadcast (in place, `Output`): `root → root+1 → … → root+n-1 (mod n)`; middle
/// ranks store and forward each chunk with one `RecvCopySend`, the last rank only receives.
pub fn broadcast_chain(n: usize, me: usize, root: usize, bytes: usize, chunk: usize) -> Plan {
    check_common(n, me, chunk);
    check_root(n, root);
    let mut plan = Plan::default();
    if n == 1 {
        return plan;
    }
    let pos = (me + n - root) % n;
    let next = (me + 1) % n;
    let prev = (me + n - 1) % n;
    for (off, len) in split_chunks(0, bytes, chunk) {
        let r = Range::output(off, len);
        plan.push(if pos == 0 {
            Step::Send { to: next, src: r }
        } else if pos < n - 1 {
            Step::RecvCopySend {
                from: prev,
                to: vec![next],
                dst: r,
            }
        } else {
            Step::Recv { from: prev, dst: r }
        });
    }
    plan
}

/// Direct reduce: non-roots send their `Input` chunk by chunk to the root, which reduces all inputs
/// into its `Output`. Non-roots never touch `Output`.
pub fn reduce_direct(
    n: usize,
    me: usize,
    root: usize,
    bytes: usize,
    elem: usize,
    chunk: usize,
) -> Plan {
    check_reduce(n, me, bytes, elem, chunk);
    check_root(n, root);
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
    let from = ascending_peers(n, root);
    for (off, len) in split_chunks(0, bytes, chunk) {
        plan.push(if me == root {
            Step::RecvReduce {
                from: from.clone(),
                local: Range::input(off, len),
                dst: Range::output(off, len),
            }
        } else {
            Step::Send {
                to: root,
                src: Range::input(off, len),
            }
        });
    }
    plan
}

/// Reduce for large messages: direct reduce-scatter over the [`split_even`](super::split::split_even) segments (pipelined by
/// chunk rounds as in [`super::all_reduce_rs_ag`]), then every non-root sends its reduced segment to
/// the root. Non-roots use their `Output` (full `bytes`, may be engine scratch) for their own segment.
pub fn reduce_rs_gather(
    n: usize,
    me: usize,
    root: usize,
    bytes: usize,
    elem: usize,
    chunk: usize,
) -> Plan {
    check_reduce(n, me, bytes, elem, chunk);
    check_root(n, root);
    super::all_reduce::direct_rs_then(n, me, bytes, elem, chunk, Some(root))
}

/// Gather: every rank's `Input` block lands in block `rank` of the root's `Output` (`n` blocks); the
/// root copies its own. Non-roots never touch `Output`.
pub fn gather(n: usize, me: usize, root: usize, block_bytes: usize, chunk: usize) -> Plan {
    check_common(n, me, chunk);
    check_root(n, root);
    let mut plan = Plan::default();
    if me == root {
        push_copy(
            &mut plan,
            Range::input(0, block_bytes),
            Range::output(root * block_bytes, block_bytes),
            chunk,
        );
    }
    if n == 1 {
        return plan;
    }
    let sources = recv_order(n, root);
    for (off, len) in split_chunks(0, block_bytes, chunk) {
        if me == root {
            for &p in &sources {
                plan.push(Step::Recv {
                    from: p,
                    dst: Range::output(p * block_bytes + off, len),
                });
            }
        } else {
            plan.push(Step::Send {
                to: root,
                src: Range::input(off, len),
            });
        }
    }
    plan
}

/// Scatter: block `j` of the root's `Input` (`n` blocks) lands in rank `j`'s `Output`; the root copies
/// its own. Non-roots never touch `Input`.
pub fn scatter(n: usize, me: usize, root: usize, block_bytes: usize, chunk: usize) -> Plan {
    check_common(n, me, chunk);
    check_root(n, root);
    let mut plan = Plan::default();
    if me == root {
        push_copy(
            &mut plan,
            Range::input(root * block_bytes, block_bytes),
            Range::output(0, block_bytes),
            chunk,
        );
    }
    if n == 1 {
        return plan;
    }
    let peers = send_order(n, root);
    for (off, len) in split_chunks(0, block_bytes, chunk) {
        if me == root {
            for &p in &peers {
                plan.push(Step::Send {
                    to: p,
                    src: Range::input(p * block_bytes + off, len),
                });
            }
        } else {
            plan.push(Step::Recv {
                from: root,
                dst: Range::output(off, len),
            });
        }
    }
    plan
}
