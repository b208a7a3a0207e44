//! The CUDA C++ source of the reduce kernels (compiled at run time with NVRTC) and the table that names
//! one kernel per supported (dtype, op) pair.
//!
//! Half and bfloat16 conversions are written out as plain integer/float code, ported one to one from the
//! CPU kernels (`f16_bits_to_f32`, `f32_to_f16_bits`, ...), instead of including `cuda_fp16.h` /
//! `cuda_bf16.h`: the source then needs no toolkit headers on the target machine (NVRTC alone is enough)
//! and the GPU rounds exactly like the CPU path (round to nearest even, NaN quieted with its payload kept).

use crate::{DType, ReduceOp};

/// Most sources one kernel launch folds together (`dst = op(src0, ..., src7)`).
pub const MAX_SRCS: usize = 8;

pub(crate) use super::parts::{coll_kernel_name, module_parts, ModulePart};

/// The resident "spinner" used to reproduce the first-collective hang of invariant 4 (a kernel that
/// occupies one SM until released). Its own module, so that loading it says nothing about the reduce
/// module. It can never wedge the GPU: it gives up after `timeout_ns` (globaltimer) or `2 * timeout_ns`
/// SM cycles (clock64, a backstop in case the global timer is unavailable), whichever comes first.
pub(crate) const SPIN_SRC: &str = include_str!("../../cuda/spin.cu");

/// The spinner's entry point.
pub(crate) const SPIN_KERNEL: &str = "chorus_spin";

/// Kernel-level operation: `Avg` runs the `Sum` kernel (the caller divides), bool maps its logical ops
/// onto bitwise ones on 0/1 values.
fn kernel_op(dtype: DType, op: ReduceOp) -> Option<(&'static str, &'static str)> {
    use ReduceOp::*;
    let float = matches!(dtype, DType::F32 | DType::F64 | DType::F16 | DType::BF16);
    Some(match (dtype, op) {
        (DType::Bool, Sum | Max | BOr) => ("bor", "OpOr"),
        (DType::Bool, Prod | Min | BAnd) => ("band", "OpAnd"),
        (DType::Bool, BXor) => ("bxor", "OpXor"),
        (DType::Bool, Avg) => return None,
        (_, Sum | Avg) => ("sum", "OpSum"),
        (_, Prod) => ("prod", "OpProd"),
        (_, Min) => ("min", "OpMin"),
        (_, Max) => ("max", "OpMax"),
        (_, _) if float => return None,
        (_, BAnd) => ("band", "OpAnd"),
        (_, BOr) => ("bor", "OpOr"),
        (_, BXor) => ("bxor", "OpXor"),
    })
}

fn codec(dtype: DType) -> Option<&'static str> {
    Some(match dtype {
        DType::F32 => "Plain<float>",
        DType::F64 => "Plain<double>",
        DType::F16 => "Half",
        DType::BF16 => "BFloat",
        DType::I8 => "Plain<i8>",
        DType::U8 => "Plain<u8>",
        DType::I16 => "Plain<i16>",
        DType::I32 => "Plain<i32>",
        DType::I64 => "Plain<i64>",
        DType::Bool => "Bool",
        _ => return None,
    })
}

/// The kernel that implements `(dtype, op)`, or None when the pair has no reduction.
pub fn kernel_name(dtype: DType, op: ReduceOp) -> Option<String> {
    crate::check_supported(dtype, op).ok()?;
    codec(dtype)?;
    let (opname, _) = kernel_op(dtype, op)?;
    Some(format!("chorus_reduce_{}_{}", dtype.short_name(), opname))
}

/// Every distinct reduce kernel: (entry point name, codec, op functor), in a stable order.
pub(crate) fn kernels() -> Vec<(String, &'static str, &'static str)> {
    super::parts::KERNELS.iter().map(|&(n, c, f)| (n.to_string(), c, f)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_pair_has_a_kernel_in_the_source() {
        let parts = module_parts();
        let src: String = parts.iter().map(|p| p.source.as_str()).collect();
        let mut pairs = 0;
        for &d in DType::all() {
            for &op in ReduceOp::all() {
                let supported = crate::check_supported(d, op).is_ok();
                let name = kernel_name(d, op);
                assert_eq!(supported, name.is_some(), "{d} {op}");
                if let Some(n) = name {
                    assert!(src.contains(&format!("CHORUS_REDUCE({n},")), "{n} missing");
                    pairs += 1;
                }
            }
        }
        // 4 floats x 5 ops + 5 ints x 8 ops + bool x 7 ops.
        assert_eq!(pairs, 4 * 5 + 5 * 8 + 7);
        // Distinct kernels: floats 4 x 4 (avg = sum), ints 5 x 7, bool 3 (or, and, xor).
        assert_eq!(kernels().len(), 16 + 35 + 3);
        // The module's table (parts.rs, shared with the build script) is exactly what the (dtype, op)
        // rules here derive, in the same order, with the same codec and functor.
        let mut derived: Vec<(String, &str, &str)> = Vec::new();
        for &d in DType::reducible() {
            for &op in ReduceOp::all() {
                if let (Some(n), Some(c), Some((_, f))) = (kernel_name(d, op), codec(d), kernel_op(d, op)) {
                    if !derived.iter().any(|(x, _, _)| *x == n) {
                        derived.push((n, c, f));
                    }
                }
            }
        }
        assert_eq!(derived, kernels());
        // Every kernel is in exactly one part, and the part's source defines it.
        let entries: Vec<&String> = parts.iter().flat_map(|p| &p.entries).collect();
        assert_eq!(entries.len(), 2 * kernels().len() + 1);
        for p in &parts {
            assert!(!p.entries.is_empty());
            for e in &p.entries {
                assert_eq!(entries.iter().filter(|x| **x == e).count(), 1, "{e}");
                assert!(p.source.contains(&format!("({e},")) || p.source.contains(&format!(" {e}(")), "{e}");
            }
        }
    }
}
