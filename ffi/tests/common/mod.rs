//! What the C ABI tests share: a store-callbacks table over an in-process [`MemStore`] (no
//! compare_set; tests that need one fill it in) and the last-error message as a `String`.
use chorus_bootstrap::{MemStore, Store};
use chorus_ffi::*;
use std::ffi::{c_char, c_void, CStr};
use std::sync::Arc;
use std::time::Duration;

pub fn store_of<'a>(ctx: *mut c_void) -> &'a MemStore {
    // SAFETY: ctx is the Arc<MemStore> pointer the test passes and keeps alive for the test.
    unsafe { &*(ctx as *const MemStore) }
}
pub fn key<'a>(k: *const c_char) -> &'a str {
    // SAFETY: chorus passes NUL-terminated UTF-8 keys.
    unsafe { CStr::from_ptr(k) }.to_str().unwrap()
}
pub unsafe extern "C" fn set(ctx: *mut c_void, k: *const c_char, v: *const u8, len: usize, _e: *mut chorus_buf) -> i32 {
    // SAFETY: chorus passes `len` readable bytes.
    let v = unsafe { std::slice::from_raw_parts(v, len) };
    store_of(ctx).set(key(k), v).map_or(-1, |_| 0)
}
pub unsafe extern "C" fn get(ctx: *mut c_void, k: *const c_char, out: *mut chorus_buf, _e: *mut chorus_buf) -> i32 {
    match store_of(ctx).get(key(k)).unwrap() {
        // SAFETY: `out` is the buffer chorus handed to this callback.
        Some(v) => unsafe { chorus_buf_write(out, v.as_ptr(), v.len()) },
        None => 1,
    }
}
pub unsafe extern "C" fn wait(ctx: *mut c_void, ks: *const *const c_char, n: usize, ms: i64, err: *mut chorus_buf) -> i32 {
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
pub unsafe extern "C" fn add(ctx: *mut c_void, k: *const c_char, d: i64, out: *mut i64, _e: *mut chorus_buf) -> i32 {
    // SAFETY: `out` points to an i64 chorus owns.
    unsafe { *out = store_of(ctx).add(key(k), d).unwrap() };
    0
}

pub fn callbacks(store: &Arc<MemStore>) -> chorus_store_callbacks {
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

pub fn last_error() -> String {
    // SAFETY: chorus_last_error returns a valid C string for this thread.
    unsafe { CStr::from_ptr(chorus_last_error()) }.to_string_lossy().into_owned()
}
