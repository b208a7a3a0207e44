//! The CUDA source (reduce + collective kernels) compiles with NVRTC, checked without a GPU: only
//! libnvrtc is needed. `scripts/test-all` installs it (the `nvidia-cuda-nvrtc` wheel) and runs this with
//! `--ignored`; elsewhere it reports as ignored, never as passed.
#![cfg(feature = "cuda")]

use chorus_kernels::cuda::{compile_module_for_arch, kernel_name};
use chorus_kernels::{DType, ReduceOp};

#[test]
#[ignore = "needs libnvrtc (CUDA 13) on LD_LIBRARY_PATH; scripts/test-all installs it and runs this"]
fn the_kernel_module_compiles_for_hopper_and_has_every_kernel() {
    let ptx = compile_module_for_arch("compute_90").unwrap_or_else(|e| panic!("{e}"));
    let entries: Vec<&str> = ptx.lines().filter_map(|l| l.trim().strip_prefix(".visible .entry ")).collect();
    let has = |name: &str| entries.iter().any(|e| e.starts_with(&format!("{name}(")));
    let mut n = 0;
    for &d in DType::all() {
        for &op in ReduceOp::all() {
            if let Some(k) = kernel_name(d, op) {
                let coll = k.replacen("chorus_reduce_", "chorus_coll_", 1);
                assert!(has(&k), "{k} missing from the PTX");
                assert!(has(&coll), "{coll} missing from the PTX");
                n += 1;
            }
        }
    }
    assert!(n > 0 && has("chorus_coll_copy"), "entries: {entries:?}");
}
