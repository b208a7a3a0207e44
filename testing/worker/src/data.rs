//! Test data: per-rank patterns and the values every reduction must produce.
use super::*;

pub(crate) fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

pub(crate) fn h(seed: u64, rank: usize, i: usize) -> u64 {
    mix(seed ^ ((rank as u64) << 52) ^ i as u64)
}

/// Data-movement payloads repeat with this (prime) number of bytes: chunk sizes are powers of
/// two, so a chunk landing at a wrong offset never matches.
pub(crate) const PAT_PERIOD: usize = 65_521;

/// Bytes `off..off+len` of `rank`'s data pattern for case `seed`.
pub(crate) fn pat(seed: u64, rank: usize, off: usize, len: usize) -> Vec<u8> {
    let gen_len = (off + len).min(PAT_PERIOD);
    let mut table = Vec::with_capacity(gen_len + 8);
    let mut w = 0;
    while table.len() < gen_len {
        table.extend_from_slice(&h(seed, rank, w).to_le_bytes());
        w += 1;
    }
    table.truncate(gen_len);
    let mut v = Vec::with_capacity(len);
    let mut at = off % PAT_PERIOD;
    while v.len() < len {
        let take = (gen_len - at).min(len - v.len());
        v.extend_from_slice(&table[at..at + take]);
        at = 0;
    }
    v
}

/// Reduction inputs repeat with this (prime) period, so expected values are computed once per case.
pub(crate) const PERIOD: usize = 4099;

/// Wrapping truncation of an integer into `dt`'s range, read back as i64.
pub(crate) fn norm(dt: DType, v: i64) -> i64 {
    match dt {
        DType::I8 => v as i8 as i64,
        DType::U8 => v as u8 as i64,
        DType::I16 => v as i16 as i64,
        DType::U16 => v as u16 as i64,
        DType::I32 => v as i32 as i64,
        DType::U32 => v as u32 as i64,
        DType::Bool => (v != 0) as i64,
        _ => v,
    }
}

/// Encodes the integer `v` (exact for floats: test values are small) into one element.
pub(crate) fn put(dt: DType, v: i64, out: &mut [u8]) {
    match dt {
        DType::F32 => out.copy_from_slice(&(v as f32).to_ne_bytes()),
        DType::F64 => out.copy_from_slice(&(v as f64).to_ne_bytes()),
        DType::F16 => out.copy_from_slice(&f16::from_f64(v as f64).to_bits().to_ne_bytes()),
        DType::BF16 => out.copy_from_slice(&bf16::from_f64(v as f64).to_bits().to_ne_bytes()),
        DType::Bool => out[0] = (v != 0) as u8,
        _ => out.copy_from_slice(&v.to_ne_bytes()[..dt.size()]), // little-endian truncation
    }
}

pub(crate) fn decode_float(dt: DType, b: &[u8]) -> Option<f64> {
    Some(match dt {
        DType::F32 => f32::from_ne_bytes(b.try_into().ok()?) as f64,
        DType::F64 => f64::from_ne_bytes(b.try_into().ok()?),
        DType::F16 => f16::from_bits(u16::from_ne_bytes(b.try_into().ok()?)).to_f64(),
        DType::BF16 => bf16::from_bits(u16::from_ne_bytes(b.try_into().ok()?)).to_f64(),
        _ => return None,
    })
}

/// Input value of `rank` at element `i`, chosen so every reduction is exact: floats are small
/// integers (|sum| <= 16 * 8 = 128, products of {1, 2, -1} over <= 8 ranks), integers use their
/// full range (sums and products wrap, like the library's), bools are 0/1 biased so that
/// or/and results are not constant.
pub(crate) fn gen(dt: DType, op: ReduceOp, seed: u64, rank: usize, i: usize) -> i64 {
    let x = h(seed, rank, i);
    if dt == DType::Bool {
        return match op {
            ReduceOp::BXor => (x & 1) as i64,
            ReduceOp::Sum | ReduceOp::Max | ReduceOp::BOr => x.is_multiple_of(3) as i64,
            _ => !x.is_multiple_of(3) as i64,
        };
    }
    if dt.is_float() {
        return if op == ReduceOp::Prod { [1, 2, -1][(x % 3) as usize] } else { (x % 33) as i64 - 16 };
    }
    norm(dt, x as i64)
}

/// The expected reduction of `vals` (one per rank) as one encoded element.
pub(crate) fn expect(dt: DType, op: ReduceOp, vals: &[i64], out: &mut [u8]) {
    let n = vals.len();
    let r = match op {
        ReduceOp::Sum | ReduceOp::Avg => vals.iter().fold(0i64, |a, &b| a.wrapping_add(b)),
        ReduceOp::Prod => vals.iter().fold(1i64, |a, &b| a.wrapping_mul(b)),
        ReduceOp::Min => *vals.iter().min().unwrap(),
        ReduceOp::Max => *vals.iter().max().unwrap(),
        ReduceOp::BAnd => vals.iter().fold(-1i64, |a, &b| a & b),
        ReduceOp::BOr => vals.iter().fold(0i64, |a, &b| a | b),
        ReduceOp::BXor => vals.iter().fold(0i64, |a, &b| a ^ b),
    };
    if op != ReduceOp::Avg {
        return put(dt, r, out);
    }
    // Float AVG = sum / n in the dtype's precision (f16/bf16 divide in f32, rounded once);
    // integer AVG = wrapping sum / n, truncated.
    match dt {
        DType::F32 => out.copy_from_slice(&(r as f32 / n as f32).to_ne_bytes()),
        DType::F64 => out.copy_from_slice(&(r as f64 / n as f64).to_ne_bytes()),
        DType::F16 => out.copy_from_slice(&f16::from_f32(r as f32 / n as f32).to_bits().to_ne_bytes()),
        DType::BF16 => out.copy_from_slice(&bf16::from_f32(r as f32 / n as f32).to_bits().to_ne_bytes()),
        _ => put(dt, norm(dt, r) / n as i64, out),
    }
}

/// One reduction case: per-rank input tables and the expected result table, PERIOD elements each.
pub(crate) struct RedCase {
    pub(crate) dt: DType,
    op: ReduceOp,
    seed: u64,
    expected: Vec<u8>,
}

impl RedCase {
    pub(crate) fn new(dt: DType, op: ReduceOp, seed: u64, n: usize) -> RedCase {
        let e = dt.size();
        let mut expected = vec![0u8; PERIOD * e];
        let mut vals = vec![0i64; n];
        for i in 0..PERIOD {
            for (r, v) in vals.iter_mut().enumerate() {
                *v = gen(dt, op, seed, r, i);
            }
            expect(dt, op, &vals, &mut expected[i * e..(i + 1) * e]);
        }
        RedCase { dt, op, seed, expected }
    }

    pub(crate) fn table(&self, rank: usize) -> Vec<u8> {
        let e = self.dt.size();
        let mut t = vec![0u8; PERIOD * e];
        for i in 0..PERIOD {
            put(self.dt, gen(self.dt, self.op, self.seed, rank, i), &mut t[i * e..(i + 1) * e]);
        }
        t
    }

    /// `rank`'s input elements `off..off+count`.
    pub(crate) fn input(&self, rank: usize, off: usize, count: usize) -> Vec<u8> {
        tile(&self.table(rank), self.dt.size(), off, count)
    }

    /// Checks that `buf` holds the reduced elements starting at element `off`.
    pub(crate) fn check(&self, buf: &[u8], off: usize, what: &str) -> R {
        let e = self.dt.size();
        let want = tile(&self.expected, e, off, buf.len() / e);
        if want == buf {
            return Ok(());
        }
        for i in 0..buf.len() / e {
            let (g, w) = (&buf[i * e..(i + 1) * e], &want[i * e..(i + 1) * e]);
            let float_equal = matches!((decode_float(self.dt, g), decode_float(self.dt, w)), (Some(a), Some(b)) if a == b);
            ensure!(
                g == w || float_equal,
                "{what}: dtype {:?} op {} count {}: element {} (of {}) is {g:?} ({:?}), expected {w:?} ({:?})",
                self.dt,
                self.op,
                buf.len() / e,
                off + i,
                buf.len() / e,
                decode_float(self.dt, g),
                decode_float(self.dt, w)
            );
        }
        Ok(())
    }
}

pub(crate) fn tile(table: &[u8], e: usize, off: usize, count: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(count * e);
    let mut i = off % PERIOD;
    while v.len() < count * e {
        let take = (PERIOD - i).min(count - v.len() / e);
        v.extend_from_slice(&table[i * e..(i + take) * e]);
        i = 0;
    }
    v
}

/// Typed helpers for the list forms (which take `&[T]`): dispatch a dtype to its Rust type.
macro_rules! typed {
    ($dt:expr, |$z:ident| $body:expr) => {
        match $dt {
            DType::F32 => { let $z = 0f32; Some($body) }
            DType::F64 => { let $z = 0f64; Some($body) }
            DType::F16 => { let $z = f16::ZERO; Some($body) }
            DType::BF16 => { let $z = bf16::ZERO; Some($body) }
            DType::I8 => { let $z = 0i8; Some($body) }
            DType::U8 => { let $z = 0u8; Some($body) }
            DType::I16 => { let $z = 0i16; Some($body) }
            DType::U16 => { let $z = 0u16; Some($body) }
            DType::I32 => { let $z = 0i32; Some($body) }
            DType::U32 => { let $z = 0u32; Some($body) }
            DType::I64 => { let $z = 0i64; Some($body) }
            DType::U64 => { let $z = 0u64; Some($body) }
            _ => None,
        }
    };
}
pub(crate) use typed;

pub(crate) fn typed_vec<T: Element>(zero: T, bytes: &[u8]) -> Vec<T> {
    let mut v = vec![zero; bytes.len() / std::mem::size_of::<T>()];
    as_bytes_mut(&mut v).copy_from_slice(bytes);
    v
}

pub(crate) fn rs_list<T: Element>(pg: &ProcessGroup, zero: T, input: &[u8], out_bytes: usize, op: ReduceOp) -> Result<Vec<u8>, ChorusError> {
    let inp = typed_vec(zero, input);
    let b = out_bytes / std::mem::size_of::<T>();
    let slices: Vec<&[T]> = (0..pg.size()).map(|r| &inp[r * b..(r + 1) * b]).collect();
    let mut out = vec![zero; b];
    pg.reduce_scatter_list(&slices, &mut out, op)?;
    Ok(as_bytes(&out).to_vec())
}

pub(crate) fn ag_list<T: Element>(pg: &ProcessGroup, zero: T, input: &[u8]) -> Result<Vec<u8>, ChorusError> {
    let inp = typed_vec(zero, input);
    let mut outs: Vec<Vec<T>> = (0..pg.size()).map(|_| vec![zero; inp.len()]).collect();
    let mut refs: Vec<&mut [T]> = outs.iter_mut().map(|v| v.as_mut_slice()).collect();
    pg.all_gather_list(&inp, &mut refs)?;
    let mut flat = Vec::new();
    for o in &outs {
        flat.extend_from_slice(as_bytes(o));
    }
    Ok(flat)
}
