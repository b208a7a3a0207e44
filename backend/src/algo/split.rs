//! Splitting buffers into segments and chunks, plus the small helpers every builder shares.

use super::plan::{Plan, Range, Step};

/// Number of chunks a message of `len` bytes is split into: `max(1, ceil(len / chunk))`.
pub fn num_chunks(len: usize, chunk: usize) -> usize {
    assert!(chunk > 0, "chunk size must be positive");
    if len == 0 {
        1
    } else {
        len.div_ceil(chunk)
    }
}

/// Chunk `i` (`i < num_chunks(len, chunk)`) of the region `[off, off + len)`, as `(offset, len)`.
/// Chunk 0 of an empty region is `(off, 0)`.
pub fn chunk_at(off: usize, len: usize, chunk: usize, i: usize) -> (usize, usize) {
    debug_assert!(i < num_chunks(len, chunk));
    let start = i * chunk;
    (off + start, chunk.min(len - start))
}

/// All chunks of the region `[off, off + len)`; always at least one (a zero-length one for `len == 0`).
pub fn split_chunks(off: usize, len: usize, chunk: usize) -> Vec<(usize, usize)> {
    (0..num_chunks(len, chunk))
        .map(|i| chunk_at(off, len, chunk, i))
        .collect()
}

/// Splits `bytes` (a multiple of `elem`) into `n` element-aligned segments `(offset, len)`; segment
/// sizes differ by at most one element and earlier segments get the extra elements.
pub fn split_even(bytes: usize, n: usize, elem: usize) -> Vec<(usize, usize)> {
    assert!(n > 0, "cannot split into zero segments");
    assert!(
        elem > 0 && bytes.is_multiple_of(elem),
        "{bytes} bytes is not a multiple of the element size {elem}"
    );
    let count = bytes / elem;
    let (base, extra) = (count / n, count % n);
    let mut off = 0;
    (0..n)
        .map(|j| {
            let len = (base + usize::from(j < extra)) * elem;
            let seg = (off, len);
            off += len;
            seg
        })
        .collect()
}

pub(crate) fn check_common(n: usize, me: usize, chunk: usize) {
    assert!(n > 0, "group size must be positive");
    assert!(me < n, "rank {me} is outside a group of {n}");
    assert!(chunk > 0, "chunk size must be positive");
}

pub(crate) fn check_reduce(n: usize, me: usize, bytes: usize, elem: usize, chunk: usize) {
    check_common(n, me, chunk);
    assert!(
        matches!(elem, 1 | 2 | 4 | 8),
        "element size {elem} is not 1, 2, 4 or 8"
    );
    assert!(
        chunk.is_multiple_of(elem),
        "chunk size {chunk} is not a multiple of the element size {elem}"
    );
    assert!(
        bytes.is_multiple_of(elem),
        "{bytes} bytes is not a multiple of the element size {elem}"
    );
}

pub(crate) fn check_root(n: usize, root: usize) {
    assert!(root < n, "root {root} is outside a group of {n}");
}

/// Peers in send fan-out order: `me+1, me+2, …, me+n-1 (mod n)`.
pub(crate) fn send_order(n: usize, me: usize) -> Vec<usize> {
    (1..n).map(|s| (me + s) % n).collect()
}

/// Peers in receive order: `me-1, me-2, … (mod n)` (rank `me-s` sends to `me` as its `s`-th peer).
pub(crate) fn recv_order(n: usize, me: usize) -> Vec<usize> {
    (1..n).map(|s| (me + n - s) % n).collect()
}

/// All peers in ascending rank order (the order of `RecvReduce::from`).
pub(crate) fn ascending_peers(n: usize, me: usize) -> Vec<usize> {
    (0..n).filter(|&p| p != me).collect()
}

/// Chunk `i` of a region given as `(offset, len)`.
pub(crate) fn chunk_of(region: (usize, usize), chunk: usize, i: usize) -> (usize, usize) {
    chunk_at(region.0, region.1, chunk, i)
}

/// Chunked local copy of `src` to `dst` (same length); a zero-length copy is one zero-length step.
pub(crate) fn push_copy(plan: &mut Plan, src: Range, dst: Range, chunk: usize) {
    assert_eq!(src.len, dst.len, "copy between ranges of different lengths");
    for (off, len) in split_chunks(0, src.len, chunk) {
        plan.push(Step::Copy {
            src: Range::new(src.buf, src.off + off, len),
            dst: Range::new(dst.buf, dst.off + off, len),
        });
    }
}
