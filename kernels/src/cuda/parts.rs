//! The kernel module's NVRTC programs ("parts"): which kernels exist and which part defines each.
//!
//! Standalone on purpose (std only, no crate items): the build script includes this file too
//! (`build.rs`, `#[path]`), so the cubins it ships and the sources the run-time fallback compiles are
//! made by the same code from the same `.cu` files.

/// Common part of the module: element codecs, ops and the vectorized reduce body.
pub(crate) const REDUCE_SRC: &str = include_str!("../../cuda/reduce.cu");
/// The collectives (see `coll_source.rs` for the workspace layout and the ordering argument).
pub(crate) const COLL_SRC: &str = include_str!("../../cuda/coll.cu");
/// The data-movement kernel and point-to-point (no dtype, no op), after [`COLL_SRC`] in the last part.
pub(crate) const COPY_SRC: &str = include_str!("../../cuda/copy.cu");
/// The data-movement kernel (broadcast, all_gather, all_to_all, send, recv).
pub(crate) const COPY_KERNEL: &str = "chorus_coll_copy";

/// Every distinct reduce kernel: (entry point, element codec, op functor), in a stable order (dtypes
/// in discriminant order, then ops). `source::kernel_name` names the kernel of a (dtype, op) pair;
/// a unit test checks that this table holds exactly those names, with the right codec and op.
pub(crate) const KERNELS: &[(&str, &str, &str)] = &[
    ("chorus_reduce_float_sum", "Plain<float>", "OpSum"),
    ("chorus_reduce_float_prod", "Plain<float>", "OpProd"),
    ("chorus_reduce_float_min", "Plain<float>", "OpMin"),
    ("chorus_reduce_float_max", "Plain<float>", "OpMax"),
    ("chorus_reduce_double_sum", "Plain<double>", "OpSum"),
    ("chorus_reduce_double_prod", "Plain<double>", "OpProd"),
    ("chorus_reduce_double_min", "Plain<double>", "OpMin"),
    ("chorus_reduce_double_max", "Plain<double>", "OpMax"),
    ("chorus_reduce_half_sum", "Half", "OpSum"),
    ("chorus_reduce_half_prod", "Half", "OpProd"),
    ("chorus_reduce_half_min", "Half", "OpMin"),
    ("chorus_reduce_half_max", "Half", "OpMax"),
    ("chorus_reduce_bfloat16_sum", "BFloat", "OpSum"),
    ("chorus_reduce_bfloat16_prod", "BFloat", "OpProd"),
    ("chorus_reduce_bfloat16_min", "BFloat", "OpMin"),
    ("chorus_reduce_bfloat16_max", "BFloat", "OpMax"),
    ("chorus_reduce_int8_sum", "Plain<i8>", "OpSum"),
    ("chorus_reduce_int8_prod", "Plain<i8>", "OpProd"),
    ("chorus_reduce_int8_min", "Plain<i8>", "OpMin"),
    ("chorus_reduce_int8_max", "Plain<i8>", "OpMax"),
    ("chorus_reduce_int8_band", "Plain<i8>", "OpAnd"),
    ("chorus_reduce_int8_bor", "Plain<i8>", "OpOr"),
    ("chorus_reduce_int8_bxor", "Plain<i8>", "OpXor"),
    ("chorus_reduce_uint8_sum", "Plain<u8>", "OpSum"),
    ("chorus_reduce_uint8_prod", "Plain<u8>", "OpProd"),
    ("chorus_reduce_uint8_min", "Plain<u8>", "OpMin"),
    ("chorus_reduce_uint8_max", "Plain<u8>", "OpMax"),
    ("chorus_reduce_uint8_band", "Plain<u8>", "OpAnd"),
    ("chorus_reduce_uint8_bor", "Plain<u8>", "OpOr"),
    ("chorus_reduce_uint8_bxor", "Plain<u8>", "OpXor"),
    ("chorus_reduce_int16_sum", "Plain<i16>", "OpSum"),
    ("chorus_reduce_int16_prod", "Plain<i16>", "OpProd"),
    ("chorus_reduce_int16_min", "Plain<i16>", "OpMin"),
    ("chorus_reduce_int16_max", "Plain<i16>", "OpMax"),
    ("chorus_reduce_int16_band", "Plain<i16>", "OpAnd"),
    ("chorus_reduce_int16_bor", "Plain<i16>", "OpOr"),
    ("chorus_reduce_int16_bxor", "Plain<i16>", "OpXor"),
    ("chorus_reduce_int32_sum", "Plain<i32>", "OpSum"),
    ("chorus_reduce_int32_prod", "Plain<i32>", "OpProd"),
    ("chorus_reduce_int32_min", "Plain<i32>", "OpMin"),
    ("chorus_reduce_int32_max", "Plain<i32>", "OpMax"),
    ("chorus_reduce_int32_band", "Plain<i32>", "OpAnd"),
    ("chorus_reduce_int32_bor", "Plain<i32>", "OpOr"),
    ("chorus_reduce_int32_bxor", "Plain<i32>", "OpXor"),
    ("chorus_reduce_int64_sum", "Plain<i64>", "OpSum"),
    ("chorus_reduce_int64_prod", "Plain<i64>", "OpProd"),
    ("chorus_reduce_int64_min", "Plain<i64>", "OpMin"),
    ("chorus_reduce_int64_max", "Plain<i64>", "OpMax"),
    ("chorus_reduce_int64_band", "Plain<i64>", "OpAnd"),
    ("chorus_reduce_int64_bor", "Plain<i64>", "OpOr"),
    ("chorus_reduce_int64_bxor", "Plain<i64>", "OpXor"),
    ("chorus_reduce_bool_bor", "Bool", "OpOr"),
    ("chorus_reduce_bool_band", "Bool", "OpAnd"),
    ("chorus_reduce_bool_bxor", "Bool", "OpXor"),
];

/// The collective kernel of a reduce kernel (same dtype and op): `chorus_reduce_f32_sum` ->
/// `chorus_coll_f32_sum`.
pub(crate) fn coll_kernel_name(reduce_kernel: &str) -> String {
    reduce_kernel.replacen("chorus_reduce_", "chorus_coll_", 1)
}

/// Parts the module is compiled in (one NVRTC program each, built side by side). A constant, not the
/// machine's core count, so a part's source, and with it its cache key, is the same on every machine.
pub(crate) const MODULE_PARTS: usize = 16;

/// One NVRTC program of the module: [`REDUCE_SRC`] and [`COLL_SRC`], plus the kernels of some entries
/// of [`KERNELS`] (`entries` names them).
pub(crate) struct ModulePart {
    pub source: String,
    pub entries: Vec<String>,
}

/// The module in [`MODULE_PARTS`] parts: entry `i` of [`KERNELS`] (its reduce and its collective
/// kernel) goes to part `i % MODULE_PARTS`, which spreads the dtypes (whose collective kernels cost
/// alike to compile, about 0.8 s each) evenly; the data-movement kernel goes to the last part, one of
/// those with fewest entries.
pub(crate) fn module_parts() -> Vec<ModulePart> {
    let mut parts: Vec<ModulePart> =
        (0..MODULE_PARTS).map(|_| ModulePart { source: format!("{REDUCE_SRC}{COLL_SRC}"), entries: Vec::new() }).collect();
    for (i, (name, codec, op)) in KERNELS.iter().enumerate() {
        let part = &mut parts[i % MODULE_PARTS];
        let coll = coll_kernel_name(name);
        part.source.push_str(&format!("CHORUS_REDUCE({name}, {codec}, {op})\nCHORUS_COLL({coll}, {codec}, {op})\n"));
        part.entries.push(name.to_string());
        part.entries.push(coll);
    }
    let last = &mut parts[MODULE_PARTS - 1];
    last.source.push_str(COPY_SRC);
    last.entries.push(COPY_KERNEL.to_string());
    parts
}

/// NVRTC name of part `i` (diagnostics and cache file names).
pub(crate) fn part_name(i: usize) -> String {
    format!("chorus_kernels_{i}.cu")
}

/// NVRTC options of every part besides `-arch`. Bit-exact agreement with the CPU kernels: no
/// flush-to-zero, no contraction into FMA.
pub(crate) const OPTIONS: [&str; 4] = ["--ftz=false", "--prec-div=true", "--prec-sqrt=true", "--fmad=false"];

/// The full NVRTC option list for `arch` (`sm_XY`).
pub(crate) fn options(arch: &str) -> Vec<String> {
    std::iter::once(format!("--gpu-architecture={arch}")).chain(OPTIONS.iter().map(|o| o.to_string())).collect()
}

/// FNV-1a, 64 bits: a stable hash (unlike `std`'s, it may not change between Rust releases), for cache
/// keys and entry checks. Not a defence against a malicious cache directory.
pub(crate) fn fnv1a64(chunks: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for c in chunks {
        for &b in *c {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separator: ("ab", "c") and ("a", "bc") hash differently.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// What a compiled program's machine code depends on: its source, the options (target included) and
/// the NVRTC version. Keys the run-time kernel cache and the build script's cubin cache alike.
pub(crate) fn program_key(source: &str, arch: &str, nvrtc: (i32, i32)) -> u64 {
    let opts = options(arch).join(" ");
    let version = format!("nvrtc {}.{}", nvrtc.0, nvrtc.1);
    fnv1a64(&[b"CHCUBIN1", source.as_bytes(), opts.as_bytes(), version.as_bytes()])
}
