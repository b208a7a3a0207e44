//! The C ABI driven the way a C caller would: store callbacks (here over an in-process MemStore),
//! two ranks on two threads, async work handles, in-place all-gather, and the error paths.
use chorus_bootstrap::{MemStore, Store};
use chorus_ffi::error::*;
use chorus_ffi::*;
use std::ffi::{c_char, c_void, CStr, CString};
use std::ptr::null_mut;
use std::sync::Arc;
use std::time::Duration;

fn store_of<'a>(ctx: *mut c_void) -> &'a MemStore {
    // SAFETY: ctx is the Arc<MemStore> pointer the test passes and keeps alive for the test.
    unsafe { &*(ctx as *const MemStore) }
}
fn key<'a>(k: *const c_char) -> &'a str {
    // SAFETY: chorus passes NUL-terminated UTF-8 keys.
    unsafe { CStr::from_ptr(k) }.to_str().unwrap()
}
unsafe extern "C" fn set(ctx: *mut c_void, k: *const c_char, v: *const u8, len: usize, _e: *mut chorus_buf) -> i32 {
    // SAFETY: chorus passes `len` readable bytes.
    let v = unsafe { std::slice::from_raw_parts(v, len) };
    store_of(ctx).set(key(k), v).map_or(-1, |_| 0)
}
unsafe extern "C" fn get(ctx: *mut c_void, k: *const c_char, out: *mut chorus_buf, _e: *mut chorus_buf) -> i32 {
    match store_of(ctx).get(key(k)).unwrap() {
        // SAFETY: `out` is the buffer chorus handed to this callback.
        Some(v) => unsafe { chorus_buf_write(out, v.as_ptr(), v.len()) },
        None => 1,
    }
}
unsafe extern "C" fn wait(ctx: *mut c_void, ks: *const *const c_char, n: usize, ms: i64, err: *mut chorus_buf) -> i32 {
    // SAFETY: chorus passes `n` key pointers.
    let keys: Vec<&str> = unsafe { std::slice::from_raw_parts(ks, n) }.iter().map(|&k| key(k)).collect();
    match store_of(ctx).wait(&keys, Duration::from_millis(ms as u64)) {
        Ok(_) => 0,
        Err(e) => {
            let m = e.to_string();
            // SAFETY: `err` is the buffer chorus handed to this callback.
            unsafe { chorus_buf_write(err, m.as_ptr(), m.len()) };
            1
        }
    }
}
unsafe extern "C" fn add(ctx: *mut c_void, k: *const c_char, d: i64, out: *mut i64, _e: *mut chorus_buf) -> i32 {
    // SAFETY: `out` points to an i64 chorus owns.
    unsafe { *out = store_of(ctx).add(key(k), d).unwrap() };
    0
}

fn callbacks(store: &Arc<MemStore>) -> chorus_store_callbacks {
    chorus_store_callbacks {
        ctx: Arc::as_ptr(store) as *mut c_void,
        set: Some(set),
        get: Some(get),
        wait: Some(wait),
        add: Some(add),
        compare_set: None,
        delete_key: None,
        release: None,
    }
}

fn last_error() -> String {
    // SAFETY: chorus_last_error returns a valid C string for this thread.
    unsafe { CStr::from_ptr(chorus_last_error()) }.to_string_lossy().into_owned()
}

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
        assert_eq!(chorus_all_reduce(g, buf.as_mut_ptr().cast(), 4, F32, 0, 0, null_mut(), &mut w), CHORUS_ERR_UNSUPPORTED);
        assert!(last_error().contains("CUDA"), "{}", last_error());
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
