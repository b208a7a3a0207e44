//! Kernel tests against a straightforward scalar reference (decode each element, compute, encode).

use super::*;
use half::{bf16, f16};

#[path = "../tests/random/mod.rs"]
mod random;
use random::{gen, Rng};

/// Copies `data` into a fresh Vec at byte offset `off` (1..7) so the slice is misaligned.
struct Misaligned {
    store: Vec<u8>,
    off: usize,
    len: usize,
}
impl Misaligned {
    fn new(data: &[u8], off: usize) -> Self {
        let mut store = vec![0xa5u8; data.len() + 16];
        store[off..off + data.len()].copy_from_slice(data);
        Misaligned { store, off, len: data.len() }
    }
    fn get(&self) -> &[u8] {
        &self.store[self.off..self.off + self.len]
    }
    fn get_mut(&mut self) -> &mut [u8] {
        &mut self.store[self.off..self.off + self.len]
    }
    /// The guard bytes around the slice are untouched.
    fn check_guards(&self) {
        assert!(self.store[..self.off].iter().all(|&b| b == 0xa5), "write before the slice");
        assert!(self.store[self.off + self.len..].iter().all(|&b| b == 0xa5), "write after the slice");
    }
}

// --- scalar reference ------------------------------------------------------------------------------

fn ref_fmin(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a == 0.0 && b == 0.0 {
        if a.is_sign_negative() || b.is_sign_negative() {
            -0.0
        } else {
            0.0
        }
    } else if a < b {
        a
    } else {
        b
    }
}

fn ref_fmax(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a == 0.0 && b == 0.0 {
        if a.is_sign_positive() || b.is_sign_positive() {
            0.0
        } else {
            -0.0
        }
    } else if a > b {
        a
    } else {
        b
    }
}

/// Reference over already-decoded operands; floats as f64 but computed in the given precision by
/// `round` after every step (f32 for f32/f16/bf16, identity for f64).
fn ref_float(op: ReduceOp, vals: &[f64], round: impl Fn(f64) -> f64) -> f64 {
    let mut acc = vals[0];
    for &v in &vals[1..] {
        acc = match op {
            ReduceOp::Sum | ReduceOp::Avg => round(acc + v),
            ReduceOp::Prod => round(acc * v),
            ReduceOp::Min => ref_fmin(acc, v),
            ReduceOp::Max => ref_fmax(acc, v),
            _ => unreachable!(),
        };
    }
    acc
}

macro_rules! ref_int {
    ($t:ty, $op:expr, $elems:expr) => {{
        let vals: Vec<$t> = $elems.iter().map(|b: &&[u8]| <$t>::from_ne_bytes((*b).try_into().unwrap())).collect();
        let mut acc = vals[0];
        for &v in &vals[1..] {
            acc = match $op {
                ReduceOp::Sum | ReduceOp::Avg => acc.wrapping_add(v),
                ReduceOp::Prod => acc.wrapping_mul(v),
                ReduceOp::Min => acc.min(v),
                ReduceOp::Max => acc.max(v),
                ReduceOp::BAnd => acc & v,
                ReduceOp::BOr => acc | v,
                ReduceOp::BXor => acc ^ v,
            };
        }
        acc.to_ne_bytes().to_vec()
    }};
}

/// op over one element taken from each buffer (`elems[0]` first), encoded.
fn ref_element(dtype: DType, op: ReduceOp, elems: &[&[u8]]) -> Vec<u8> {
    let f32r = |x: f64| x as f32 as f64;
    match dtype {
        DType::F32 => {
            let v: Vec<f64> = elems.iter().map(|b| f32::from_ne_bytes((*b).try_into().unwrap()) as f64).collect();
            (ref_float(op, &v, f32r) as f32).to_ne_bytes().to_vec()
        }
        DType::F64 => {
            let v: Vec<f64> = elems.iter().map(|b| f64::from_ne_bytes((*b).try_into().unwrap())).collect();
            ref_float(op, &v, |x| x).to_ne_bytes().to_vec()
        }
        // Accumulate in f32 across all operands and round to 16 bits once.
        DType::F16 => {
            let v: Vec<f64> =
                elems.iter().map(|b| f16::from_bits(u16::from_ne_bytes((*b).try_into().unwrap())).to_f64()).collect();
            f16::from_f32(ref_float(op, &v, f32r) as f32).to_bits().to_ne_bytes().to_vec()
        }
        DType::BF16 => {
            let v: Vec<f64> =
                elems.iter().map(|b| bf16::from_bits(u16::from_ne_bytes((*b).try_into().unwrap())).to_f64()).collect();
            bf16::from_f32(ref_float(op, &v, f32r) as f32).to_bits().to_ne_bytes().to_vec()
        }
        DType::I8 => ref_int!(i8, op, elems),
        DType::U8 => ref_int!(u8, op, elems),
        DType::I16 => ref_int!(i16, op, elems),
        DType::I32 => ref_int!(i32, op, elems),
        DType::I64 => ref_int!(i64, op, elems),
        DType::Bool => {
            let v: Vec<bool> = elems.iter().map(|b| b[0] != 0).collect();
            let r = v[1..].iter().fold(v[0], |a, &b| match op {
                ReduceOp::Sum | ReduceOp::Max | ReduceOp::BOr => a | b,
                ReduceOp::Prod | ReduceOp::Min | ReduceOp::BAnd => a & b,
                ReduceOp::BXor => a ^ b,
                ReduceOp::Avg => unreachable!(),
            });
            vec![r as u8]
        }
        _ => unreachable!("not reducible"),
    }
}

fn reference(dtype: DType, op: ReduceOp, bufs: &[&[u8]]) -> Vec<u8> {
    let s = dtype.size();
    let n = bufs[0].len() / s;
    let mut out = Vec::with_capacity(bufs[0].len());
    for i in 0..n {
        let elems: Vec<&[u8]> = bufs.iter().map(|b| &b[i * s..(i + 1) * s]).collect();
        out.extend_from_slice(&ref_element(dtype, op, &elems));
    }
    out
}

fn is_nan(dtype: DType, e: &[u8]) -> bool {
    match dtype {
        DType::F32 => f32::from_ne_bytes(e.try_into().unwrap()).is_nan(),
        DType::F64 => f64::from_ne_bytes(e.try_into().unwrap()).is_nan(),
        DType::F16 => f16::from_bits(u16::from_ne_bytes(e.try_into().unwrap())).is_nan(),
        DType::BF16 => bf16::from_bits(u16::from_ne_bytes(e.try_into().unwrap())).is_nan(),
        _ => false,
    }
}

/// Bitwise equality, except that any NaN matches any NaN.
fn assert_same(dtype: DType, op: ReduceOp, got: &[u8], want: &[u8], ctx: &str) {
    assert_eq!(got.len(), want.len());
    let s = dtype.size();
    for (i, (g, w)) in got.chunks_exact(s).zip(want.chunks_exact(s)).enumerate() {
        if is_nan(dtype, w) && is_nan(dtype, g) {
            continue;
        }
        assert_eq!(g, w, "{dtype:?} {op:?} element {i} differs ({ctx})");
    }
}

const LENS: [usize; 5] = [0, 1, 7, 4097, 2 * BLOCK + 3];
const COUNTS: [usize; 4] = [1, 2, 3, 7];

#[test]
fn every_supported_pair_matches_reference() {
    let mut rng = Rng::new(42);
    let mut checked = 0;
    for &dtype in DType::reducible() {
        for &op in ReduceOp::all() {
            if check_supported(dtype, op).is_err() {
                continue;
            }
            for &n in &LENS {
                for &k in &COUNTS {
                    let acc0 = gen(dtype, n, &mut rng);
                    let others: Vec<Vec<u8>> = (0..k).map(|_| gen(dtype, n, &mut rng)).collect();
                    let mut all: Vec<&[u8]> = vec![&acc0];
                    all.extend(others.iter().map(|o| o.as_slice()));
                    let want = reference(dtype, op, &all);
                    let ctx = format!("n={n} k={k}");

                    // reduce_accumulate on misaligned slices (every buffer at a different offset).
                    let mut acc = Misaligned::new(&acc0, 1 + (n % 7));
                    let mis: Vec<Misaligned> =
                        others.iter().enumerate().map(|(i, o)| Misaligned::new(o, 1 + (i + 2) % 7)).collect();
                    let refs: Vec<&[u8]> = mis.iter().map(|m| m.get()).collect();
                    reduce_accumulate(dtype, op, acc.get_mut(), &refs).unwrap();
                    assert_same(dtype, op, acc.get(), &want, &format!("accumulate {ctx}"));
                    acc.check_guards();

                    // reduce_into with the accumulator as the first source.
                    let srcs_mis: Vec<Misaligned> =
                        all.iter().enumerate().map(|(i, b)| Misaligned::new(b, 1 + (i + 3) % 7)).collect();
                    let srcs: Vec<&[u8]> = srcs_mis.iter().map(|m| m.get()).collect();
                    let mut dst = Misaligned::new(&gen(dtype, n, &mut rng), 1 + (n + 4) % 7);
                    reduce_into(dtype, op, dst.get_mut(), &srcs).unwrap();
                    assert_same(dtype, op, dst.get(), &want, &format!("into {ctx}"));
                    dst.check_guards();
                    for (m, b) in srcs_mis.iter().zip(&all) {
                        assert_eq!(m.get(), *b, "source modified");
                    }
                    checked += 1;
                }
            }
        }
    }
    // 4 float dtypes x 5 ops + 5 int dtypes x 8 ops + bool x 7 ops, each over LENS x COUNTS.
    assert_eq!(checked, (4 * 5 + 5 * 8 + 7) * LENS.len() * COUNTS.len());
}

#[test]
fn single_source_and_no_others() {
    let mut rng = Rng::new(7);
    for &dtype in DType::reducible() {
        for &op in ReduceOp::all() {
            if check_supported(dtype, op).is_err() {
                continue;
            }
            let data = gen(dtype, 1029, &mut rng);
            // reduce_into with one source is a copy (bool: normalized; floats: NaN may be quieted).
            let src = Misaligned::new(&data, 3);
            let mut dst = Misaligned::new(&vec![0u8; data.len()], 5);
            reduce_into(dtype, op, dst.get_mut(), &[src.get()]).unwrap();
            let want = reference(dtype, op, &[&data]);
            assert_same(dtype, op, dst.get(), &want, "into, one source");
            // accumulate with no others leaves acc as is (bool: normalized).
            let mut acc = Misaligned::new(&data, 6);
            reduce_accumulate(dtype, op, acc.get_mut(), &[]).unwrap();
            assert_same(dtype, op, acc.get(), &want, "accumulate, no others");
        }
    }
}

#[test]
fn bool_output_is_normalized() {
    let a = [0u8, 2, 0, 255, 7, 0];
    let b = [0u8, 0, 9, 128, 1, 0];
    let mut acc = a;
    reduce_accumulate(DType::Bool, ReduceOp::Sum, &mut acc, &[&b]).unwrap();
    assert_eq!(acc, [0, 1, 1, 1, 1, 0]);
    let mut acc = a;
    reduce_accumulate(DType::Bool, ReduceOp::Prod, &mut acc, &[&b]).unwrap();
    assert_eq!(acc, [0, 0, 0, 1, 1, 0]);
    let mut acc = a;
    reduce_accumulate(DType::Bool, ReduceOp::BXor, &mut acc, &[&b]).unwrap();
    assert_eq!(acc, [0, 1, 1, 0, 0, 0]);
    let mut dst = [9u8; 6];
    reduce_into(DType::Bool, ReduceOp::Max, &mut dst, &[&a]).unwrap();
    assert_eq!(dst, [0, 1, 0, 1, 1, 0]);
}

#[test]
fn float_min_max_propagate_nan_and_order_zeros() {
    let a = [1.0f32, f32::NAN, 2.0, -0.0, 0.0, f32::NEG_INFINITY];
    let b = [f32::NAN, 3.0, 1.0, 0.0, -0.0, 5.0];
    let enc = |v: &[f32]| v.iter().flat_map(|x| x.to_ne_bytes()).collect::<Vec<u8>>();
    let dec = |v: &[u8]| v.chunks_exact(4).map(|c| f32::from_ne_bytes(c.try_into().unwrap())).collect::<Vec<_>>();
    let mut mn = enc(&a);
    reduce_accumulate(DType::F32, ReduceOp::Min, &mut mn, &[&enc(&b)]).unwrap();
    let mn = dec(&mn);
    assert!(mn[0].is_nan() && mn[1].is_nan());
    assert_eq!(mn[2], 1.0);
    assert!(mn[3] == 0.0 && mn[3].is_sign_negative() && mn[4].is_sign_negative());
    assert_eq!(mn[5], f32::NEG_INFINITY);
    let mut mx = enc(&a);
    reduce_accumulate(DType::F32, ReduceOp::Max, &mut mx, &[&enc(&b)]).unwrap();
    let mx = dec(&mx);
    assert!(mx[0].is_nan() && mx[1].is_nan());
    assert_eq!(mx[2], 2.0);
    assert!(mx[3] == 0.0 && mx[3].is_sign_positive() && mx[4].is_sign_positive());
    assert_eq!(mx[5], 5.0);
}

#[test]
fn half_types_round_once() {
    // f16: ulp(1.0) = 2^-10. Adding two half-ulps one at a time with rounding in between would tie to
    // even twice and stay 1.0; accumulating in f32 gives exactly 1 + 2^-10.
    let h = |x: f32| f16::from_f32(x).to_bits().to_ne_bytes();
    let one = h(1.0);
    let half_ulp = h(2f32.powi(-11));
    let mut acc = one;
    reduce_accumulate(DType::F16, ReduceOp::Sum, &mut acc, &[&half_ulp, &half_ulp]).unwrap();
    assert_eq!(f16::from_bits(u16::from_ne_bytes(acc)).to_f32(), 1.0 + 2f32.powi(-10));
    let mut dst = [0u8; 2];
    reduce_into(DType::F16, ReduceOp::Avg, &mut dst, &[&one, &half_ulp, &half_ulp]).unwrap();
    assert_eq!(f16::from_bits(u16::from_ne_bytes(dst)).to_f32(), 1.0 + 2f32.powi(-10));

    // bf16: ulp(1.0) = 2^-7.
    let b = |x: f32| bf16::from_f32(x).to_bits().to_ne_bytes();
    let mut acc = b(1.0);
    let q = b(2f32.powi(-8));
    reduce_accumulate(DType::BF16, ReduceOp::Sum, &mut acc, &[&q, &q]).unwrap();
    assert_eq!(bf16::from_bits(u16::from_ne_bytes(acc)).to_f32(), 1.0 + 2f32.powi(-7));

    // Intermediate overflow of the 16-bit range does not stick: 60000 + 60000 - 60000 = 60000 in f32.
    let mut acc = h(60000.0);
    reduce_accumulate(DType::F16, ReduceOp::Sum, &mut acc, &[&h(60000.0), &h(-60000.0)]).unwrap();
    assert_eq!(f16::from_bits(u16::from_ne_bytes(acc)).to_f32(), 60000.0);
}

#[test]
fn finalize_avg_floats() {
    let mut rng = Rng::new(3);
    for &n in &[1usize, 2, 3, 8, 1000] {
        for &dtype in &[DType::F32, DType::F64, DType::F16, DType::BF16] {
            let data = gen(dtype, 2051, &mut rng);
            let mut buf = Misaligned::new(&data, 1 + n % 7);
            finalize_avg(dtype, buf.get_mut(), n).unwrap();
            let s = dtype.size();
            let want: Vec<u8> = data
                .chunks_exact(s)
                .flat_map(|e| match dtype {
                    DType::F32 => (f32::from_ne_bytes(e.try_into().unwrap()) / n as f32).to_ne_bytes().to_vec(),
                    DType::F64 => (f64::from_ne_bytes(e.try_into().unwrap()) / n as f64).to_ne_bytes().to_vec(),
                    DType::F16 => {
                        let x = f16::from_bits(u16::from_ne_bytes(e.try_into().unwrap())).to_f32();
                        f16::from_f32(x / n as f32).to_bits().to_ne_bytes().to_vec()
                    }
                    _ => {
                        let x = bf16::from_bits(u16::from_ne_bytes(e.try_into().unwrap())).to_f32();
                        bf16::from_f32(x / n as f32).to_bits().to_ne_bytes().to_vec()
                    }
                })
                .collect();
            assert_same(dtype, ReduceOp::Avg, buf.get(), &want, &format!("finalize_avg n={n}"));
            buf.check_guards();
        }
    }
}

#[test]
fn finalize_avg_integers_truncate() {
    let mut b: Vec<u8> = [7i32, -7, 6, -1, i32::MIN, i32::MAX].iter().flat_map(|x| x.to_ne_bytes()).collect();
    finalize_avg(DType::I32, &mut b, 2).unwrap();
    let got: Vec<i32> = b.chunks_exact(4).map(|c| i32::from_ne_bytes(c.try_into().unwrap())).collect();
    assert_eq!(got, [3, -3, 3, 0, i32::MIN / 2, i32::MAX / 2]);

    let mut b = [200u8, 3, 255];
    finalize_avg(DType::U8, &mut b, 3).unwrap();
    assert_eq!(b, [66, 1, 85]);
    let mut b = [200u8, 255];
    finalize_avg(DType::U8, &mut b, 300).unwrap();
    assert_eq!(b, [0, 0]);

    let mut b = [(-128i8) as u8, 127, (-5i8) as u8];
    finalize_avg(DType::I8, &mut b, 4).unwrap();
    assert_eq!(b, [(-32i8) as u8, 31, (-1i8) as u8]);

    // Misaligned i64 / i16 against a reference.
    let mut rng = Rng::new(11);
    for &(dtype, n) in &[(DType::I64, 3usize), (DType::I16, 5), (DType::I64, usize::MAX), (DType::I16, 70000)] {
        let data = gen(dtype, 1100, &mut rng);
        let mut buf = Misaligned::new(&data, 3);
        finalize_avg(dtype, buf.get_mut(), n).unwrap();
        let d = i64::try_from(n).unwrap_or(i64::MAX) as i128;
        let want: Vec<u8> = match dtype {
            DType::I64 => data
                .chunks_exact(8)
                .flat_map(|e| ((i64::from_ne_bytes(e.try_into().unwrap()) as i128 / d) as i64).to_ne_bytes())
                .collect(),
            _ => data
                .chunks_exact(2)
                .flat_map(|e| ((i16::from_ne_bytes(e.try_into().unwrap()) as i128 / d) as i16).to_ne_bytes())
                .collect(),
        };
        assert_eq!(buf.get(), &want[..]);
        buf.check_guards();
    }
}

#[test]
fn finalize_avg_errors() {
    let mut b = [0u8; 8];
    assert!(matches!(finalize_avg(DType::F32, &mut b, 0), Err(KernelError::InvalidArgument { .. })));
    assert!(matches!(
        finalize_avg(DType::Bool, &mut b, 2),
        Err(KernelError::Unsupported { op: ReduceOp::Avg, dtype: "bool" })
    ));
    assert!(matches!(finalize_avg(DType::U32, &mut b, 2), Err(KernelError::Unsupported { .. })));
    assert!(matches!(finalize_avg(DType::F32, &mut b[..7], 2), Err(KernelError::LengthMismatch { .. })));
}

#[test]
fn unsupported_pairs() {
    let mut buf = [0u8; 16];
    let other = [0u8; 16];
    let mut n_unsupported = 0;
    for &dtype in DType::all() {
        for &op in ReduceOp::all() {
            let expected_ok = match dtype {
                DType::F32 | DType::F64 | DType::F16 | DType::BF16 => {
                    !matches!(op, ReduceOp::BAnd | ReduceOp::BOr | ReduceOp::BXor)
                }
                DType::I8 | DType::U8 | DType::I16 | DType::I32 | DType::I64 => true,
                DType::Bool => op != ReduceOp::Avg,
                _ => false,
            };
            assert_eq!(check_supported(dtype, op).is_ok(), expected_ok, "{dtype:?} {op:?}");
            assert_eq!(DType::reducible().contains(&dtype), dtype.is_reducible());
            if expected_ok {
                continue;
            }
            n_unsupported += 1;
            for r in [
                reduce_accumulate(dtype, op, &mut buf, &[&other]),
                reduce_into(dtype, op, &mut buf, &[&other, &other]),
                // Unsupported is reported before any length problem.
                reduce_accumulate(dtype, op, &mut buf[..3], &[&other]),
            ] {
                match r {
                    Err(e @ KernelError::Unsupported { .. }) => {
                        let msg = e.to_string();
                        assert!(msg.contains(dtype.name()) && msg.contains(op.name()), "{msg}");
                        if !dtype.is_reducible() {
                            assert!(msg.contains("data-movement-only") && msg.contains("float32"), "{msg}");
                        }
                    }
                    other => panic!("{dtype:?} {op:?}: expected Unsupported, got {other:?}"),
                }
            }
            assert_eq!(buf, [0u8; 16], "unsupported call wrote output");
        }
    }
    // 5 data-movement dtypes x 8 ops + 4 floats x 3 bitwise ops + bool avg.
    assert_eq!(n_unsupported, 5 * 8 + 4 * 3 + 1);
}

#[test]
fn length_mismatches() {
    let mut acc = [0u8; 16];
    let short = [0u8; 12];
    let ok = [0u8; 16];
    let r = reduce_accumulate(DType::F32, ReduceOp::Sum, &mut acc, &[&ok, &short]);
    match r {
        Err(KernelError::LengthMismatch { expected: 16, actual: 12, index: 2, elem_size: 4, .. }) => {}
        other => panic!("{other:?}"),
    }
    // Not a multiple of the element size (even when all lengths agree).
    let r = reduce_accumulate(DType::F64, ReduceOp::Sum, &mut acc[..12], &[&short]);
    assert!(matches!(r, Err(KernelError::LengthMismatch { actual: 12, elem_size: 8, index: 0, .. })), "{r:?}");
    let r = reduce_into(DType::I16, ReduceOp::Max, &mut acc[..15], &[&ok[..15]]);
    assert!(matches!(r, Err(KernelError::LengthMismatch { .. })), "{r:?}");
    let r = reduce_into(DType::F32, ReduceOp::Sum, &mut acc, &[&ok, &short]);
    assert!(matches!(r, Err(KernelError::LengthMismatch { index: 2, .. })), "{r:?}");
    let r = reduce_into(DType::F32, ReduceOp::Sum, &mut acc, &[&short]);
    assert!(matches!(r, Err(KernelError::LengthMismatch { index: 1, .. })), "{r:?}");
    let msg = r.unwrap_err().to_string();
    assert!(msg.contains("float32") && msg.contains("16") && msg.contains("12"), "{msg}");
    // No sources at all.
    let r = reduce_into(DType::F32, ReduceOp::Sum, &mut acc, &[]);
    assert!(matches!(r, Err(KernelError::InvalidArgument { .. })), "{r:?}");
    // Nothing was written by the failed calls.
    assert_eq!(acc, [0u8; 16]);
    // Empty buffers are fine.
    reduce_accumulate(DType::F32, ReduceOp::Sum, &mut [], &[&[], &[]]).unwrap();
    reduce_into(DType::I8, ReduceOp::BXor, &mut [], &[&[]]).unwrap();
}

#[test]
fn dtype_and_op_names() {
    for (i, &d) in DType::all().iter().enumerate() {
        assert_eq!(d as u8 as usize, i);
        assert_eq!(DType::from_u8(i as u8), Some(d));
        assert_eq!(DType::from_name(d.name()), Some(d));
        assert_eq!(DType::from_name(d.short_name()), Some(d));
    }
    assert_eq!(DType::all().len(), 15);
    assert_eq!(DType::from_u8(15), None);
    assert_eq!(DType::from_name("float8_e4m3fn"), Some(DType::F8E4M3));
    assert_eq!(DType::from_name("half"), Some(DType::F16));
    assert_eq!(DType::from_name("double"), Some(DType::F64));
    assert_eq!(DType::from_name("float"), Some(DType::F32));
    for (alias, d) in [
        ("f32", DType::F32),
        ("f64", DType::F64),
        ("f16", DType::F16),
        ("bf16", DType::BF16),
        ("i8", DType::I8),
        ("u8", DType::U8),
        ("i16", DType::I16),
        ("i32", DType::I32),
        ("i64", DType::I64),
        ("u16", DType::U16),
        ("u32", DType::U32),
        ("u64", DType::U64),
    ] {
        assert_eq!(DType::from_name(alias), Some(d));
    }
    assert_eq!(DType::from_name("complex64"), None);
    let sizes: Vec<usize> = DType::all().iter().map(|d| d.size()).collect();
    assert_eq!(sizes, [4, 8, 2, 2, 1, 1, 2, 4, 8, 1, 2, 4, 8, 1, 1]);
    assert!(DType::F16.is_float() && DType::F8E5M2.is_float() && !DType::I32.is_float() && !DType::Bool.is_float());
    assert_eq!(
        DType::reducible(),
        &[
            DType::F32,
            DType::F64,
            DType::F16,
            DType::BF16,
            DType::I8,
            DType::U8,
            DType::I16,
            DType::I32,
            DType::I64,
            DType::Bool
        ]
    );

    let names: Vec<&str> = ReduceOp::all().iter().map(|o| o.name()).collect();
    assert_eq!(names, ["sum", "prod", "min", "max", "avg", "band", "bor", "bxor"]);
    for (i, &o) in ReduceOp::all().iter().enumerate() {
        assert_eq!(o as u8 as usize, i);
        assert_eq!(ReduceOp::from_u8(i as u8), Some(o));
        assert_eq!(ReduceOp::from_name(o.name()), Some(o));
    }
    assert_eq!(ReduceOp::from_u8(8), None);
    assert_eq!(ReduceOp::from_name("mean"), None);
}
