//! The CUDA source (reduce + collective kernels) compiles with NVRTC to Hopper machine code, and the
//! kernel cache returns what was compiled, checked without a GPU: only libnvrtc is needed.
//! `scripts/test-all` installs it (the `nvidia-cuda-nvrtc` wheel) and runs this with `--ignored`;
//! elsewhere it reports as ignored, never as passed.
#![cfg(feature = "cuda")]

use chorus_kernels::cuda::{build_module_for_arch, build_program_for_arch, kernel_name, KernelCache, Origin};
use chorus_kernels::{DType, KernelError, ReduceOp};
use std::path::PathBuf;

fn temp_cache(tag: &str) -> (PathBuf, KernelCache) {
    let dir = std::env::temp_dir().join(format!("chorus-kcache-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    (dir.clone(), KernelCache::at(dir))
}

/// The cache's entries (`.cubin`; the `.lock` files beside them stay, empty, for the next builds).
fn entries_in(dir: &PathBuf) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x != "lock")).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Whether an ELF cubin names `symbol` in a string table.
fn defines(cubin: &[u8], symbol: &str) -> bool {
    let needle = format!("\0{symbol}\0");
    cubin.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
#[ignore = "needs libnvrtc (CUDA 13) on LD_LIBRARY_PATH; scripts/test-all installs it and runs this"]
fn the_kernel_module_builds_for_hopper_with_every_kernel_and_is_cached() {
    let (dir, cache) = temp_cache("module");
    let parts = build_module_for_arch("sm_90", &cache).unwrap_or_else(|e| panic!("{e}"));
    assert!(parts.iter().all(|p| p.origin == Origin::Compiled));
    assert!(parts.iter().all(|p| &p.cubin[..4] == b"\x7fELF"), "cubins are ELF images");
    let has = |name: &str| parts.iter().any(|p| p.entries.iter().any(|e| e == name) && defines(&p.cubin, name));
    let mut n = 0;
    for &d in DType::all() {
        for &op in ReduceOp::all() {
            if let Some(k) = kernel_name(d, op) {
                let coll = k.replacen("chorus_reduce_", "chorus_coll_", 1);
                assert!(has(&k), "{k} missing");
                assert!(has(&coll), "{coll} missing");
                n += 1;
            }
        }
    }
    assert!(n > 0 && has("chorus_coll_copy"));
    let files = entries_in(&dir);
    assert_eq!(files.len(), parts.len(), "one cache entry per part: {files:?}");

    // A second build reads every part back, byte for byte.
    let again = build_module_for_arch("sm_90", &cache).unwrap();
    assert!(again.iter().all(|p| p.origin == Origin::Cached));
    assert!(again.iter().zip(&parts).all(|(a, b)| a.cubin == b.cubin));

    // A damaged entry (a crash mid-write elsewhere, a full disk) is compiled again and replaced.
    let victim = &files[files.len() / 2];
    let len = std::fs::metadata(victim).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(victim).unwrap().set_len(len / 2).unwrap();
    let healed = build_module_for_arch("sm_90", &cache).unwrap();
    assert_eq!(healed.iter().filter(|p| p.origin == Origin::Compiled).count(), 1);
    assert!(healed.iter().zip(&parts).all(|(a, b)| a.cubin == b.cubin));
    assert_eq!(std::fs::metadata(victim).unwrap().len(), len, "the damaged entry was rewritten");
    assert_eq!(entries_in(&dir), files, "no temporary files left behind");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "needs libnvrtc (CUDA 13) on LD_LIBRARY_PATH; scripts/test-all installs it and runs this"]
fn a_compile_error_reports_the_nvrtc_log_and_caches_nothing() {
    let (dir, cache) = temp_cache("error");
    let src = "extern \"C\" __global__ void broken(int* p) { *p = undeclared_name; }\n";
    match build_program_for_arch("broken.cu", src, "sm_90", &cache) {
        Err(KernelError::CudaCompile { log }) => {
            assert!(log.contains("undeclared_name"), "{log}");
            assert!(log.contains("broken.cu"), "{log}");
        }
        other => panic!("expected a compile error, got {other:?}"),
    }
    assert!(entries_in(&dir).is_empty());
    let ok = "extern \"C\" __global__ void fine(int* p) { *p = 1; }\n";
    let (cubin, origin) = build_program_for_arch("fine.cu", ok, "sm_90", &cache).unwrap();
    assert_eq!(origin, Origin::Compiled);
    assert!(defines(&cubin, "fine"));
    let (again, origin) = build_program_for_arch("fine.cu", ok, "sm_90", &cache).unwrap();
    assert_eq!((origin, again), (Origin::Cached, cubin.clone()));
    // Another target is another entry; a disabled cache always compiles.
    assert_eq!(build_program_for_arch("fine.cu", ok, "sm_100", &cache).unwrap().1, Origin::Compiled);
    assert_eq!(build_program_for_arch("fine.cu", ok, "sm_90", &KernelCache::disabled()).unwrap().1, Origin::Compiled);
    assert_eq!(entries_in(&dir).len(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "needs libnvrtc (CUDA 13) on LD_LIBRARY_PATH; scripts/test-all installs it and runs this"]
fn ranks_starting_together_compile_an_entry_once() {
    // Four "ranks" (threads with their own lock file handles, as processes would have) build the same
    // program through one empty cache at the same moment: one compiles, the others wait and read it.
    let (dir, cache) = temp_cache("lock");
    let src = "extern \"C\" __global__ void lonely(int* p) { *p = 7; }\n";
    let barrier = std::sync::Barrier::new(4);
    let origins: Vec<Origin> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    build_program_for_arch("lonely.cu", src, "sm_90", &cache).unwrap_or_else(|e| panic!("{e}")).1
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(origins.iter().filter(|o| **o == Origin::Compiled).count(), 1, "{origins:?}");
    assert_eq!(origins.iter().filter(|o| **o == Origin::Cached).count(), 3, "{origins:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
