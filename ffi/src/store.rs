//! A chorus [`Store`] implemented by C callbacks (the Python package implements them on top of
//! torch's `c10d.Store`, so rendezvous goes through the store torch hands the backend).
use chorus_bootstrap::{BootstrapError, Store};
use std::ffi::{c_char, c_void, CString};
use std::time::Duration;

/// A growable byte buffer chorus owns; callbacks fill it with `chorus_buf_write`.
#[allow(non_camel_case_types)]
#[derive(Default)]
pub struct chorus_buf {
    pub data: Vec<u8>,
}

pub type SetFn = unsafe extern "C" fn(ctx: *mut c_void, key: *const c_char, value: *const u8, len: usize, err: *mut chorus_buf) -> i32;
pub type GetFn = unsafe extern "C" fn(ctx: *mut c_void, key: *const c_char, value: *mut chorus_buf, err: *mut chorus_buf) -> i32;
pub type WaitFn = unsafe extern "C" fn(ctx: *mut c_void, keys: *const *const c_char, nkeys: usize, timeout_ms: i64, err: *mut chorus_buf) -> i32;
pub type AddFn = unsafe extern "C" fn(ctx: *mut c_void, key: *const c_char, delta: i64, result: *mut i64, err: *mut chorus_buf) -> i32;
pub type CompareSetFn = unsafe extern "C" fn(
    ctx: *mut c_void,
    key: *const c_char,
    expected: *const u8,
    expected_len: usize,
    desired: *const u8,
    desired_len: usize,
    result: *mut chorus_buf,
    err: *mut chorus_buf,
) -> i32;
pub type DeleteFn = unsafe extern "C" fn(ctx: *mut c_void, key: *const c_char, err: *mut chorus_buf) -> i32;
pub type ReleaseFn = unsafe extern "C" fn(ctx: *mut c_void);

/// The C struct `chorus_store_callbacks_t` (layout fixed by `#[repr(C)]`).
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy)]
pub struct chorus_store_callbacks {
    pub ctx: *mut c_void,
    pub set: Option<SetFn>,
    pub get: Option<GetFn>,
    pub wait: Option<WaitFn>,
    pub add: Option<AddFn>,
    pub compare_set: Option<CompareSetFn>,
    pub delete_key: Option<DeleteFn>,
    pub release: Option<ReleaseFn>,
}

/// The callbacks as a [`Store`].
pub struct CallbackStore {
    cb: chorus_store_callbacks,
}

// SAFETY: the ABI contract of `chorus_group_create` requires the callbacks to be callable from any
// thread, concurrently, with `ctx`, until `release` is called; the struct itself is plain data.
unsafe impl Send for CallbackStore {}
// SAFETY: see `Send`: concurrent calls from several threads are part of the callback contract.
unsafe impl Sync for CallbackStore {}

const WHERE: &str = "the caller's store (C callbacks)";
/// Who hosts it, as far as chorus can tell: under torch it is torch's c10d store.
const HOST: &str = "the caller's store (under torch, its c10d store: with env:// or mp.spawn a TCPStore in rank 0's process at MASTER_ADDR:MASTER_PORT, under torchrun its agent's)";

fn remote(op: &'static str, message: String) -> BootstrapError {
    BootstrapError::Remote { op, addr: WHERE.into(), message }
}

fn ckey(op: &'static str, key: &str) -> Result<CString, BootstrapError> {
    CString::new(key).map_err(|_| remote(op, format!("key {key:?} contains a NUL byte")))
}

fn failure(op: &'static str, rc: i32, err: &chorus_buf) -> BootstrapError {
    let msg = String::from_utf8_lossy(&err.data).into_owned();
    let msg = if msg.is_empty() { format!("callback returned {rc} without a message") } else { msg };
    // A callback failure is the store's answer or its transport's (torch raises
    // DistNetworkError for a dead TCPStore): after rendezvous it reads as the store being lost.
    BootstrapError::Callback { op, store: WHERE.into(), message: msg }
}

impl CallbackStore {
    pub fn new(cb: chorus_store_callbacks) -> CallbackStore {
        CallbackStore { cb }
    }

    fn missing(op: &'static str) -> BootstrapError {
        remote(op, format!("the `{op}` callback is NULL"))
    }
}

impl Drop for CallbackStore {
    fn drop(&mut self) {
        if let Some(release) = self.cb.release {
            // SAFETY: the callback contract: `release` is called once, with the caller's `ctx`,
            // when chorus no longer uses the store.
            unsafe { release(self.cb.ctx) };
        }
    }
}

impl Store for CallbackStore {
    fn host(&self) -> String {
        HOST.into()
    }

    fn set(&self, key: &str, value: &[u8]) -> chorus_bootstrap::Result<()> {
        let f = self.cb.set.ok_or_else(|| Self::missing("set"))?;
        let k = ckey("set", key)?;
        let mut err = chorus_buf::default();
        // SAFETY: `f` is the caller's `set` callback (contract: callable from any thread with
        // `ctx`); `k` is a valid NUL-terminated string and `value` a valid slice for the call's
        // duration; `err` is a live chorus_buf the callback may write through chorus_buf_write.
        let rc = unsafe { f(self.cb.ctx, k.as_ptr(), value.as_ptr(), value.len(), &mut err) };
        if rc != 0 {
            return Err(failure("set", rc, &err));
        }
        Ok(())
    }

    fn get(&self, key: &str) -> chorus_bootstrap::Result<Option<Vec<u8>>> {
        let f = self.cb.get.ok_or_else(|| Self::missing("get"))?;
        let k = ckey("get", key)?;
        let (mut out, mut err) = (chorus_buf::default(), chorus_buf::default());
        // SAFETY: as in `set`; `out` is a live chorus_buf for the value.
        let rc = unsafe { f(self.cb.ctx, k.as_ptr(), &mut out, &mut err) };
        match rc {
            0 => Ok(Some(out.data)),
            1 => Ok(None),
            _ => Err(failure("get", rc, &err)),
        }
    }

    fn wait(&self, keys: &[&str], timeout: Duration) -> chorus_bootstrap::Result<Vec<Vec<u8>>> {
        let f = self.cb.wait.ok_or_else(|| Self::missing("wait"))?;
        let ks: Vec<CString> = keys.iter().map(|k| ckey("wait", k)).collect::<Result<_, _>>()?;
        let ptrs: Vec<*const c_char> = ks.iter().map(|k| k.as_ptr()).collect();
        let mut err = chorus_buf::default();
        let ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        // SAFETY: as in `set`; `ptrs` holds `ptrs.len()` valid C strings that outlive the call.
        let rc = unsafe { f(self.cb.ctx, ptrs.as_ptr(), ptrs.len(), ms, &mut err) };
        match rc {
            0 => {}
            1 => return Err(BootstrapError::WaitTimeout { missing: keys.iter().map(|k| k.to_string()).collect(), timeout }),
            _ => return Err(failure("wait", rc, &err)),
        }
        keys.iter()
            .map(|k| self.get(k)?.ok_or_else(|| remote("wait", format!("key {k:?} vanished right after the wait for it succeeded"))))
            .collect()
    }

    fn add(&self, key: &str, delta: i64) -> chorus_bootstrap::Result<i64> {
        let f = self.cb.add.ok_or_else(|| Self::missing("add"))?;
        let k = ckey("add", key)?;
        let mut err = chorus_buf::default();
        let mut result = 0i64;
        // SAFETY: as in `set`; `result` is a live i64 the callback writes.
        let rc = unsafe { f(self.cb.ctx, k.as_ptr(), delta, &mut result, &mut err) };
        if rc != 0 {
            return Err(failure("add", rc, &err));
        }
        Ok(result)
    }

    /// The callback has c10d semantics: it stores `desired` if the current value equals `expected`
    /// (an absent key counts as equal to an empty `expected`) and returns the value after the
    /// operation (for an absent key and a non-empty `expected`, c10d returns `expected`).
    fn compare_set(&self, key: &str, expected: Option<&[u8]>, new: &[u8]) -> chorus_bootstrap::Result<(bool, Vec<u8>)> {
        let f = self.cb.compare_set.ok_or_else(|| Self::missing("compare_set"))?;
        let k = ckey("compare_set", key)?;
        let exp = expected.unwrap_or(&[]);
        let (mut out, mut err) = (chorus_buf::default(), chorus_buf::default());
        // SAFETY: as in `set`; `exp` and `new` are valid slices for the call.
        let rc = unsafe { f(self.cb.ctx, k.as_ptr(), exp.as_ptr(), exp.len(), new.as_ptr(), new.len(), &mut out, &mut err) };
        if rc != 0 {
            return Err(failure("compare_set", rc, &err));
        }
        let after = out.data;
        if after == new {
            Ok((true, after))
        } else if expected.is_some_and(|e| !e.is_empty() && after == e) {
            // c10d answers `expected` when the key is absent: the swap failed on an absent key.
            Ok((false, Vec::new()))
        } else {
            Ok((false, after))
        }
    }

    fn delete(&self, key: &str) -> chorus_bootstrap::Result<bool> {
        let f = self.cb.delete_key.ok_or_else(|| Self::missing("delete_key"))?;
        let k = ckey("delete_key", key)?;
        let mut err = chorus_buf::default();
        // SAFETY: as in `set`.
        let rc = unsafe { f(self.cb.ctx, k.as_ptr(), &mut err) };
        match rc {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(failure("delete_key", rc, &err)),
        }
    }

    fn list_prefix(&self, prefix: &str) -> chorus_bootstrap::Result<Vec<String>> {
        Err(remote("list_prefix", format!("listing keys (prefix {prefix:?}) is not possible through store callbacks (torch's c10d.Store has no list operation)")))
    }
}
