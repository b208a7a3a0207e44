//! On a GPU whose architecture the library ships (`build.rs` compiled it ahead of time), the first
//! kernel build makes no NVRTC call: every part comes from the library, libnvrtc is never even loaded,
//! and every kernel is still preloaded. Its own test binary, so that no other test's compile (the
//! spinner, the NVRTC tests) runs in this process first. `scripts/gpu-tests` runs it with `--ignored`
//! and `CHORUS_REQUIRE_GPU=1`.
#![cfg(feature = "cuda")]

use chorus_kernels::cuda::{nvrtc_compiles, shipped_archs, DeviceKernels};
use chorus_kernels::KernelError;
use std::time::Instant;

fn libnvrtc_mapped() -> bool {
    std::fs::read_to_string("/proc/self/maps").map(|m| m.contains("libnvrtc")).unwrap_or(false)
}

#[test]
#[ignore = "needs a CUDA GPU; scripts/gpu-tests runs it"]
fn a_shipped_architecture_loads_its_kernels_without_nvrtc() {
    assert_eq!(nvrtc_compiles(), 0, "nothing compiled before the test");
    let t0 = Instant::now();
    let kernels = match DeviceKernels::build(0) {
        Ok(k) => k,
        Err(KernelError::CudaUnavailable(reason)) if std::env::var_os("CHORUS_REQUIRE_GPU").is_none() => {
            println!("not run: no CUDA device ({reason})");
            return;
        }
        Err(e) => panic!("kernels for device 0: {e}"),
    };
    let elapsed = t0.elapsed();
    let build = kernels.module_build();
    let arch = kernels.arch();
    println!(
        "device 0 = {} ({arch}): {} parts, {} shipped, {} cached; load + preload of {} kernels in {:.1} ms; shipped archs {:?}",
        kernels.device_name(),
        build.parts,
        build.shipped,
        build.cached,
        kernels.preloaded().len(),
        elapsed.as_secs_f64() * 1e3,
        shipped_archs()
    );
    let sm: u32 = arch.trim_start_matches("sm_").parse().expect("sm_XY");
    let covered = shipped_archs().iter().any(|&a| a / 10 == sm / 10 && a <= sm);
    assert!(covered, "{arch} is not shipped in this build ({:?}): build with NVRTC present", shipped_archs());
    assert_eq!(build.shipped, build.parts, "every part from the library");
    assert_eq!(build.cached, 0);
    assert_eq!(nvrtc_compiles(), 0, "no NVRTC compile on a shipped architecture");
    assert!(!libnvrtc_mapped(), "libnvrtc was loaded although nothing needed compiling");
    assert!(!kernels.preloaded().is_empty());
    for p in kernels.preloaded() {
        assert!(p.max_threads_per_block > 0 && p.num_regs > 0, "{} preloaded: {p:?}", p.name);
    }
}
