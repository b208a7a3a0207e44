//! Deterministic input patterns and expected results.
//!
//! Data-movement collectives use a byte pattern that depends on (source rank, block, byte index),
//! so a block delivered to the wrong place or from the wrong rank is counted as wrong.
//! Reductions use small integers (exact in every reducible dtype, bf16 included) that depend on
//! (rank, element index mod P) with P = 16 * nranks; the expected result is computed once per
//! period, so verification is a streaming compare.
use chorus_backend::{DType, ReduceOp};
use half::{bf16, f16};

/// Byte `k` of the block `blk` that rank `src` contributes.
#[inline]
pub fn byte(src: usize, blk: usize, k: usize) -> u8 {
    ((k % 251) as u32).wrapping_add(13 * src as u32).wrapping_add(29 * blk as u32).wrapping_add(1) as u8
}

/// Fills `buf` with the byte pattern of (src, blk).
pub fn fill_bytes(buf: &mut [u8], src: usize, blk: usize) {
    let period: Vec<u8> = (0..251).map(|k| byte(src, blk, k)).collect();
    for c in buf.chunks_mut(251) {
        c.copy_from_slice(&period[..c.len()]);
    }
}

/// Number of elements of `buf` (of `esz`-byte elements) that differ from the pattern (src, blk).
pub fn count_wrong_bytes(buf: &[u8], src: usize, blk: usize, esz: usize) -> u64 {
    // Compare 251*esz bytes at a time: a whole number of elements and of pattern periods.
    let period: Vec<u8> = (0..251 * esz).map(|k| byte(src, blk, k)).collect();
    let mut wrong = 0u64;
    for c in buf.chunks(period.len()) {
        let p = &period[..c.len()];
        if c != p {
            wrong += c.chunks(esz).zip(p.chunks(esz)).filter(|(a, b)| a != b).count() as u64;
        }
    }
    wrong
}

/// Value rank `r` contributes at element `j` (`j < period(n)`) of a reduction with `op`.
fn value(op: ReduceOp, n: usize, r: usize, j: usize) -> i64 {
    let (n, r, j) = (n as i64, r as i64, j as i64);
    match op {
        ReduceOp::Sum => (j + 3 * r) % 8,
        // At most one rank contributes a 2 per element: products stay exact and tiny.
        ReduceOp::Prod => {
            if j % 2 == 0 && (j / 2 + r) % n == 0 {
                2
            } else {
                1
            }
        }
        ReduceOp::Min | ReduceOp::Max => (j * 5 + r * 3) % 16,
        // The sum over ranks is a multiple of n, so the average is exact (also for integers).
        ReduceOp::Avg => j % 8 + if r == 0 { n * ((j / 8) % 2) } else { 0 },
        ReduceOp::BAnd => 0x7f & !(1 << ((j + r) % 7)),
        ReduceOp::BOr => 1 << ((j + r) % 7),
        ReduceOp::BXor => (j * 7 + r * 11) & 0x7f,
    }
}

pub fn period(n: usize) -> usize {
    16 * n.max(1)
}

fn encode(dtype: DType, x: i64, out: &mut Vec<u8>) {
    match dtype {
        DType::F32 => out.extend_from_slice(&(x as f32).to_le_bytes()),
        DType::F64 => out.extend_from_slice(&(x as f64).to_le_bytes()),
        DType::F16 => out.extend_from_slice(&f16::from_f64(x as f64).to_le_bytes()),
        DType::BF16 => out.extend_from_slice(&bf16::from_f64(x as f64).to_le_bytes()),
        DType::I8 | DType::U8 => out.push(x as u8),
        DType::I16 | DType::U16 => out.extend_from_slice(&(x as i16).to_le_bytes()),
        DType::I32 | DType::U32 => out.extend_from_slice(&(x as i32).to_le_bytes()),
        DType::I64 | DType::U64 => out.extend_from_slice(&x.to_le_bytes()),
        DType::Bool => out.push((x != 0) as u8),
        // Not reducible: never asked for (check_supported fails first).
        DType::F8E4M3 | DType::F8E5M2 => out.push(0),
    }
}

fn input_value(dtype: DType, op: ReduceOp, n: usize, r: usize, j: usize) -> i64 {
    let v = value(op, n, r, j);
    if dtype == DType::Bool {
        v & 1
    } else {
        v
    }
}

/// One period of rank `r`'s reduction input, encoded in `dtype`.
pub fn reduce_input_period(dtype: DType, op: ReduceOp, n: usize, r: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(period(n) * dtype.size());
    for j in 0..period(n) {
        encode(dtype, input_value(dtype, op, n, r, j), &mut out);
    }
    out
}

/// One period of the reduced result over ranks `0..n`, encoded in `dtype`.
pub fn reduce_expected_period(dtype: DType, op: ReduceOp, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(period(n) * dtype.size());
    for j in 0..period(n) {
        let vals = (0..n).map(|r| input_value(dtype, op, n, r, j));
        let x = match op {
            ReduceOp::Sum => vals.sum::<i64>(),
            ReduceOp::Avg => vals.sum::<i64>() / n as i64,
            ReduceOp::Prod => vals.product::<i64>(),
            ReduceOp::Min => vals.min().unwrap_or(0),
            ReduceOp::Max => vals.max().unwrap_or(0),
            ReduceOp::BAnd => vals.fold(-1, |a, b| a & b),
            ReduceOp::BOr => vals.fold(0, |a, b| a | b),
            ReduceOp::BXor => vals.fold(0, |a, b| a ^ b),
        };
        encode(dtype, x, &mut out);
    }
    out
}

/// Fills `buf` (a whole number of elements, starting at element `first`) by tiling `period`.
pub fn tile(buf: &mut [u8], period: &[u8], esz: usize, first: usize) {
    let p_elems = period.len() / esz;
    let start = (first % p_elems) * esz;
    let mut pos = 0;
    let mut off = start;
    while pos < buf.len() {
        let take = (period.len() - off).min(buf.len() - pos);
        buf[pos..pos + take].copy_from_slice(&period[off..off + take]);
        pos += take;
        off = 0;
    }
}

/// Elements of `buf` (starting at element `first` of the pattern) that differ from the tiled
/// `period`.
pub fn count_wrong_tiled(buf: &[u8], period: &[u8], esz: usize, first: usize) -> u64 {
    let p_elems = period.len() / esz;
    let mut off = (first % p_elems) * esz;
    let mut pos = 0;
    let mut wrong = 0u64;
    while pos < buf.len() {
        let take = (period.len() - off).min(buf.len() - pos);
        let (a, b) = (&buf[pos..pos + take], &period[off..off + take]);
        if a != b {
            wrong += a.chunks(esz).zip(b.chunks(esz)).filter(|(x, y)| x != y).count() as u64;
        }
        pos += take;
        off = 0;
    }
    wrong
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_values_are_exact() {
        // Sum over 4 ranks in bf16 stays an exact small integer.
        let e = reduce_expected_period(DType::F32, ReduceOp::Avg, 4);
        for (j, c) in e.chunks(4).enumerate() {
            let v = f32::from_le_bytes(c.try_into().unwrap());
            assert_eq!(v, (j % 8 + (j / 8) % 2) as f32);
        }
        let p = reduce_expected_period(DType::I32, ReduceOp::Prod, 3);
        assert!(p.chunks(4).all(|c| matches!(i32::from_le_bytes(c.try_into().unwrap()), 1 | 2)));
    }

    #[test]
    fn tiling_roundtrip() {
        let per = reduce_input_period(DType::F16, ReduceOp::Sum, 2, 1);
        let mut buf = vec![0u8; 2 * 1001];
        tile(&mut buf, &per, 2, 5);
        assert_eq!(count_wrong_tiled(&buf, &per, 2, 5), 0);
        buf[10] ^= 1;
        assert_eq!(count_wrong_tiled(&buf, &per, 2, 5), 1);
        let mut b = vec![0u8; 1000];
        fill_bytes(&mut b, 3, 2);
        assert_eq!(count_wrong_bytes(&b, 3, 2, 4), 0);
        assert_eq!(count_wrong_bytes(&b, 3, 1, 4), 250);
    }
}
