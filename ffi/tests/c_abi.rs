//! The C ABI driven the way a C caller would: store callbacks (here over an in-process MemStore),
//! two ranks on two threads, async work handles, in-place all-gather, and the error paths.
mod common;

use chorus_bootstrap::MemStore;
use chorus_ffi::error::*;
use chorus_ffi::*;
use common::{callbacks, last_error};
use std::ffi::CString;
use std::ptr::null_mut;
use std::sync::Arc;

const F32: i32 = 0;

fn rank_main(store: Arc<MemStore>, rank: i32, size: i32) {
    let cb = callbacks(&store);
    let name = CString::new("ffi-test").unwrap();
    let mut g: *mut chorus_group = null_mut();
    // SAFETY (whole block): handles come from chorus, buffers outlive their work handles (each
    // work is waited before its buffer goes out of scope).
    unsafe {
        assert_eq!(chorus_group_create(&cb, rank, size, name.as_ptr(), 20_000, &mut g), CHORUS_OK, "{}", last_error());
        assert_eq!((chorus_group_rank(g), chorus_group_size(g)), (rank, size));

        let mut buf: Vec<f32> = (0..1031).map(|i| (i + rank as usize) as f32).collect();
        let mut w: *mut chorus_work = null_mut();
        assert_eq!(chorus_all_reduce(g, buf.as_mut_ptr().cast(), 1031, F32, 0, CHORUS_DEVICE_CPU, null_mut(), &mut w), CHORUS_OK);
        assert_eq!(chorus_work_wait(w, -1), CHORUS_OK, "{}", last_error());
        assert_eq!(chorus_work_is_completed(w), 1);
        assert_eq!(chorus_work_wait(w, 0), CHORUS_OK, "waiting again is allowed");
        chorus_work_free(w);
        assert!(buf.iter().enumerate().all(|(i, &x)| x == (2 * i + 1) as f32));

        // In-place all-gather: the input is this rank's block of the output.
        let mut out = vec![0f32; 7 * size as usize];
        for i in 0..7 {
            out[rank as usize * 7 + i] = (rank * 100 + i as i32) as f32;
        }
        let inp = out.as_ptr().add(rank as usize * 7);
        assert_eq!(chorus_all_gather(g, inp.cast(), out.as_mut_ptr().cast(), 7, F32, CHORUS_DEVICE_CPU, null_mut(), &mut w), CHORUS_OK);
        assert_eq!(chorus_work_wait(w, 10_000), CHORUS_OK, "{}", last_error());
        chorus_work_free(w);
        for r in 0..size as usize {
            for i in 0..7 {
                assert_eq!(out[r * 7 + i], (r * 100 + i) as f32);
            }
        }

        // Error paths: codes plus a message, no panic across the boundary.
        // Device memory where no GPU is usable: a clear error, never a crash. (With a GPU, `buf` would
        // be taken for device memory; the CUDA path is tested by kernels/tests/cuda_coll.rs and
        // python/tests/test_cuda.py there.)
        if let Err(chorus_kernels::KernelError::CudaUnavailable(_)) = chorus_kernels::cuda::open_device(0) {
            assert_eq!(chorus_all_reduce(g, buf.as_mut_ptr().cast(), 4, F32, 0, 0, null_mut(), &mut w), CHORUS_ERR_UNSUPPORTED);
            assert!(last_error().contains("CUDA is not available"), "{}", last_error());
            // Setup errors name the call that needed the GPU communicator.
            assert_eq!(chorus_gather(g, buf.as_ptr().cast(), buf.as_mut_ptr().cast(), 1, F32, 0, 0, null_mut(), &mut w), CHORUS_ERR_UNSUPPORTED);
            assert!(last_error().starts_with("gather: ") && last_error().contains("CUDA is not available"), "{}", last_error());
        }
        assert_eq!(chorus_all_reduce(g, buf.as_mut_ptr().cast(), 4, 99, 0, CHORUS_DEVICE_CPU, null_mut(), &mut w), CHORUS_ERR_INVALID_ARGUMENT);
        assert!(last_error().contains("dtype"), "{}", last_error());
        assert_eq!(chorus_all_reduce(g, buf.as_mut_ptr().cast(), 4, F32, 5, CHORUS_DEVICE_CPU, null_mut(), &mut w), CHORUS_ERR_UNSUPPORTED, "BAND on f32");
        assert_eq!(chorus_all_reduce(g, null_mut(), 4, F32, 0, CHORUS_DEVICE_CPU, null_mut(), &mut w), CHORUS_ERR_INVALID_ARGUMENT);
        assert_eq!(chorus_broadcast(g, buf.as_mut_ptr().cast(), 4, F32, size + 1, CHORUS_DEVICE_CPU, null_mut(), &mut w), CHORUS_ERR_INVALID_ARGUMENT);

        assert_eq!(chorus_barrier(g, &mut w), CHORUS_OK);
        assert_eq!(chorus_work_wait(w, -1), CHORUS_OK);
        chorus_work_free(w);
        assert_eq!(chorus_group_destroy(g), CHORUS_OK);
    }
}

#[test]
fn two_ranks_through_store_callbacks() {
    let store = Arc::new(MemStore::new());
    let hs: Vec<_> = (0..2).map(|r| {
        let s = store.clone();
        std::thread::spawn(move || rank_main(s, r, 2))
    }).collect();
    for h in hs {
        h.join().unwrap();
    }
}

#[test]
fn null_handles_are_errors_not_crashes() {
    let mut w: *mut chorus_work = null_mut();
    // SAFETY: NULL handles are part of the contract (they must be refused).
    unsafe {
        assert_eq!(chorus_barrier(null_mut(), &mut w), CHORUS_ERR_INVALID_ARGUMENT);
        assert!(last_error().contains("NULL"));
        assert_eq!(chorus_group_rank(std::ptr::null()), -1);
        assert_eq!(chorus_work_is_completed(std::ptr::null()), -CHORUS_ERR_INVALID_ARGUMENT);
        assert_eq!(chorus_work_wait(null_mut(), 0), CHORUS_ERR_INVALID_ARGUMENT);
        chorus_work_free(null_mut());
        assert_eq!(chorus_group_destroy(null_mut()), CHORUS_OK);
        assert_eq!(chorus_group_create(std::ptr::null(), 0, 1, std::ptr::null(), 0, null_mut()), CHORUS_ERR_INVALID_ARGUMENT);
    }
}
