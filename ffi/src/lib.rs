//! The C ABI of chorus (`include/chorus.h`): opaque group and work handles, integer status codes
//! with a per-thread message (`chorus_last_error`), store callbacks for rendezvous, and one entry
//! point per collective, asynchronous (a work handle out) or blocking (`work == NULL`: it runs on
//! the calling thread and reports through `chorus_last_op_*`). Every entry point runs inside
//! `catch_unwind`, so no panic crosses into C. The header is rendered from the tables in
//! [`header`] and checked for drift by `cargo test -p chorus-ffi`.
//!
//! Memory contract: every data pointer must stay valid (and not be written by the caller) until
//! the returned work handle reports completion (the blocking form: until the call returns); torch
//! keeps tensors alive in its `Work` object.
#![allow(non_camel_case_types)]

pub mod buffer;
pub mod error;
pub mod header;
mod last_op;
mod staged;
pub mod store;
pub mod work;

use buffer::{byte_len, input_for, Input, RawBuf};
use chorus_backend::OpInfo;
use chorus_backend::{DType, Issued, Mode, OpBuffer, Options, ProcessGroup, ReduceOp};
use chorus_bootstrap::{Store, StoreClient, StoreServer};
use error::{guard, guard_value, last_error_ptr, FfiError, FfiResult};
use std::ffi::{c_char, c_void, CStr};
use std::sync::Arc;
use std::time::Duration;
pub use store::{chorus_buf, chorus_store_callbacks, CallbackStore};
pub use work::chorus_work;

/// Bumped whenever a declaration of `chorus.h` changes incompatibly.
pub const CHORUS_ABI_VERSION: u32 = 2;
/// `device` argument for host memory; values >= 0 name a CUDA device ordinal.
pub const CHORUS_DEVICE_CPU: i32 = -1;

/// An opaque group handle.
pub struct chorus_group {
    pg: ProcessGroup,
    /// A store server this rank hosts (`chorus_group_create_tcp` with `host_store`).
    _server: Option<Arc<StoreServer>>,
}

// ------------------------------------------------------------------ argument helpers

fn group<'a>(g: *const chorus_group) -> FfiResult<&'a chorus_group> {
    // SAFETY: a non-null group pointer was returned by a chorus_group_create* call and, by the
    // ABI contract, not yet passed to chorus_group_destroy.
    unsafe { g.as_ref() }.ok_or_else(|| FfiError::invalid("the group handle is NULL"))
}

fn check_out<T>(out: *mut *mut T, what: &str) -> FfiResult<()> {
    if out.is_null() {
        return Err(FfiError::invalid(format!("the `{what}` out-pointer is NULL")));
    }
    Ok(())
}

fn put_out<T>(out: *mut *mut T, v: T) {
    // SAFETY: `out` was checked non-null by `check_out` and points to writable storage for one
    // pointer (ABI contract).
    unsafe { *out = Box::into_raw(Box::new(v)) };
}

fn dtype(d: i32) -> FfiResult<DType> {
    u8::try_from(d)
        .ok()
        .and_then(DType::from_u8)
        .ok_or_else(|| FfiError::invalid(format!("unknown dtype code {d} (see chorus_dtype_t in chorus.h)")))
}

fn reduce_op(op: i32) -> FfiResult<ReduceOp> {
    u8::try_from(op)
        .ok()
        .and_then(ReduceOp::from_u8)
        .ok_or_else(|| FfiError::invalid(format!("unknown reduce op code {op} (see chorus_reduce_op_t in chorus.h)")))
}

/// Whether a call on `device` takes the GPU kernels: device memory, and the group was not told to run
/// GPU tensors on the host path (`CHORUS_CUDA_PATH=host`). An invalid group handle answers yes; the
/// kernel path reports it.
fn gpu_kernels(group_: *mut chorus_group, device: i32) -> bool {
    device >= 0 && group(group_).map_or(true, |g| g.pg.options().device_path == chorus_backend::DevicePath::Kernels)
}

/// A GPU collective: `device >= 0` names the CUDA device every pointer lives on and `stream` is a
/// `CUstream` of it (NULL: the legacy default stream). `enqueue` puts the operation on that stream
/// through the group's device communicator; the returned work is already complete (the operation is
/// stream-ordered, as NCCL's are: later work on `stream` sees its result).
fn device_collective(
    group_: *mut chorus_group,
    work: *mut *mut chorus_work,
    op: &'static str,
    dtype_: i32,
    device: i32,
    stream: *mut c_void,
    enqueue: impl FnOnce(&Call, &chorus_backend::DeviceGroup, chorus_kernels::cuda::RawStream) -> FfiResult<()>,
) -> i32 {
    with_work(group_, work, op, |g, mode| {
        let call = Call { g, op, dt: dtype(dtype_)?, stage: None, mode };
        // Setup errors (no CUDA, a peer's workspace) say which call needed the communicator.
        let dg = g.pg.device_group(device as usize).map_err(|e| FfiError::from(e).in_op(op))?;
        enqueue(&call, &dg, chorus_kernels::cuda::RawStream(stream as usize))?;
        // Enqueued is done (stream-ordered), in both forms; it reports what a work handle would.
        Ok(Issued::Ran(Ok(()), OpInfo::default()))
    })
}

/// Device buffers of one GPU call may only coincide exactly (`sendbuf == recvbuf + at`, in place) or
/// not overlap at all.
fn device_overlap_ok(op: &str, send: u64, send_len: usize, recv: u64, recv_len: usize, in_place_at: u64) -> FfiResult<()> {
    let disjoint = send + send_len as u64 <= recv || recv + recv_len as u64 <= send;
    if disjoint || send_len == 0 || recv_len == 0 || recv.checked_add(in_place_at) == Some(send) {
        return Ok(());
    }
    Err(FfiError::invalid(format!(
        "{op}: on CUDA the send buffer must either not overlap the receive buffer or be exactly this rank's block of it"
    )))
}

fn rank_arg(v: i32, what: &str) -> FfiResult<usize> {
    usize::try_from(v).map_err(|_| FfiError::invalid(format!("{what} {v} is negative")))
}

fn opt_str<'a>(s: *const c_char, what: &str) -> FfiResult<Option<&'a str>> {
    if s.is_null() {
        return Ok(None);
    }
    // SAFETY: a non-null string argument is a NUL-terminated C string valid for the call (ABI).
    let c = unsafe { CStr::from_ptr(s) };
    c.to_str().map(Some).map_err(|_| FfiError::invalid(format!("{what} is not valid UTF-8")))
}

fn options(name: *const c_char, timeout_ms: i64) -> FfiResult<Options> {
    let mut o = Options::default();
    if timeout_ms > 0 {
        o = o.with_timeout(Duration::from_millis(timeout_ms as u64));
    }
    if let Some(n) = opt_str(name, "name")? {
        if !n.is_empty() {
            o = o.with_name(n);
        }
    }
    Ok(o)
}

fn counts<'a>(p: *const u64, n: usize, what: &str) -> FfiResult<&'a [u64]> {
    if p.is_null() {
        return Err(FfiError::invalid(format!("{what} is NULL but must hold {n} counts")));
    }
    // SAFETY: non-null, and by the ABI contract points to one count per rank of the group.
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

fn emit<R: Send + 'static>(out: *mut *mut chorus_work, w: chorus_backend::Work<R>) -> FfiResult<()> {
    let w = chorus_work::start(w)?;
    put_out(out, w);
    Ok(())
}

// ------------------------------------------------------------------ library

/// ABI version of this library (compare with `CHORUS_ABI_VERSION` in the header).
#[no_mangle]
pub extern "C" fn chorus_abi_version() -> u32 {
    CHORUS_ABI_VERSION
}

/// The calling thread's last error message ("" if none); valid until the next failing call on
/// this thread.
#[no_mangle]
pub extern "C" fn chorus_last_error() -> *const c_char {
    last_error_ptr()
}

/// Replaces the contents of a chorus-owned buffer (store callbacks return values through it).
///
/// # Safety
/// `buf` is a buffer chorus passed to a store callback (during that callback); `data` points to
/// `len` readable bytes (or is NULL with `len == 0`).
#[no_mangle]
pub unsafe extern "C" fn chorus_buf_write(buf: *mut chorus_buf, data: *const u8, len: usize) -> i32 {
    guard(|| {
        // SAFETY: per this function's contract `buf` is a live chorus_buf handed to a callback.
        let b = unsafe { buf.as_mut() }.ok_or_else(|| FfiError::invalid("chorus_buf_write: buf is NULL"))?;
        let src = RawBuf::new(data, len, "chorus_buf_write: data")?;
        b.data.clear();
        b.data.extend_from_slice(src.bytes());
        Ok(())
    })
}

// ------------------------------------------------------------------ groups

/// `ProcessGroup::new` or `ProcessGroup::join`.
type Rendezvous = fn(Arc<dyn Store>, usize, usize, Options) -> chorus_backend::Result<ProcessGroup>;

/// `chorus_group_create` and `chorus_group_join` (`func` names the entry point in messages).
#[allow(clippy::too_many_arguments)]
fn callback_group(
    func: &str,
    store: *const chorus_store_callbacks,
    rank: i32,
    size: i32,
    name: *const c_char,
    timeout_ms: i64,
    out: *mut *mut chorus_group,
    rendezvous: Rendezvous,
) -> i32 {
    guard(|| {
        // SAFETY: per the entry point's contract `store` is NULL or a valid struct.
        let cb = *unsafe { store.as_ref() }.ok_or_else(|| FfiError::invalid(format!("{func}: the store callbacks are NULL")))?;
        let st = Arc::new(CallbackStore::new(cb));
        check_out(out, "out")?;
        let (rank, size) = (rank_arg(rank, "rank")?, rank_arg(size, "size")?);
        let pg = rendezvous(st, rank, size, options(name, timeout_ms)?)?;
        put_out(out, chorus_group { pg, _server: None });
        Ok(())
    })
}

/// `chorus_group_create_tcp` and `chorus_group_join_tcp`; with `host_store` this rank first
/// starts the store server on `addr`.
#[allow(clippy::too_many_arguments)]
fn tcp_group(
    func: &str,
    addr: *const c_char,
    host_store: bool,
    rank: i32,
    size: i32,
    name: *const c_char,
    timeout_ms: i64,
    out: *mut *mut chorus_group,
    rendezvous: Rendezvous,
) -> i32 {
    guard(|| {
        check_out(out, "out")?;
        let addr = opt_str(addr, "addr")?.ok_or_else(|| FfiError::invalid(format!("{func}: addr is NULL")))?;
        let opts = options(name, timeout_ms)?;
        let server = if host_store {
            let sa = addr.parse().map_err(|e| FfiError::invalid(format!("store address {addr:?} is not an ip:port ({e})")))?;
            Some(Arc::new(StoreServer::bind(sa).map_err(chorus_backend::ChorusError::from)?))
        } else {
            None
        };
        let client = StoreClient::connect(addr, opts.timeout).map_err(chorus_backend::ChorusError::from)?;
        let (rank, size) = (rank_arg(rank, "rank")?, rank_arg(size, "size")?);
        let pg = rendezvous(Arc::new(client), rank, size, opts)?;
        put_out(out, chorus_group { pg, _server: server });
        Ok(())
    })
}

/// Creates a top-level group over a store implemented by callbacks.
///
/// # Safety
/// `store` points to a valid callbacks struct (copied); the callbacks and their `ctx` stay
/// callable from any thread until `release` is called (also on failure). `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn chorus_group_create(
    store: *const chorus_store_callbacks,
    rank: i32,
    size: i32,
    name: *const c_char,
    timeout_ms: i64,
    out: *mut *mut chorus_group,
) -> i32 {
    callback_group("chorus_group_create", store, rank, size, name, timeout_ms, out, ProcessGroup::new)
}

/// Creates a top-level group over a chorus TCP store at `addr` ("host:port"). With
/// `host_store != 0` this rank first starts the store server on `addr` (an "ip:port").
///
/// # Safety
/// `addr` is a NUL-terminated string; `name` is NULL or one; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn chorus_group_create_tcp(
    addr: *const c_char,
    host_store: i32,
    rank: i32,
    size: i32,
    name: *const c_char,
    timeout_ms: i64,
    out: *mut *mut chorus_group,
) -> i32 {
    tcp_group("chorus_group_create_tcp", addr, host_store != 0, rank, size, name, timeout_ms, out, ProcessGroup::new)
}

/// Creates the default group from torchrun/SLURM/chorus-run environment variables.
///
/// # Safety
/// `name` is NULL or a NUL-terminated string; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn chorus_group_create_env(name: *const c_char, timeout_ms: i64, out: *mut *mut chorus_group) -> i32 {
    guard(|| {
        check_out(out, "out")?;
        let pg = ProcessGroup::from_env(options(name, timeout_ms)?)?;
        put_out(out, chorus_group { pg, _server: None });
        Ok(())
    })
}

/// Starts a replacement for `rank` of a running top-level group over a store implemented by
/// callbacks (the same store, `size` and `name` the group was created with). Blocks until the
/// survivors removed the old process and admitted this one with a new view (they do so between
/// collectives, so they must keep issuing them).
///
/// # Safety
/// As for `chorus_group_create`.
#[no_mangle]
pub unsafe extern "C" fn chorus_group_join(
    store: *const chorus_store_callbacks,
    rank: i32,
    size: i32,
    name: *const c_char,
    timeout_ms: i64,
    out: *mut *mut chorus_group,
) -> i32 {
    callback_group("chorus_group_join", store, rank, size, name, timeout_ms, out, ProcessGroup::join)
}

/// Like `chorus_group_join` over a chorus TCP store at `addr` ("host:port"), which must outlive
/// the process that was replaced (host it outside the workers).
///
/// # Safety
/// `addr` is a NUL-terminated string; `name` is NULL or one; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn chorus_group_join_tcp(addr: *const c_char, rank: i32, size: i32, name: *const c_char, timeout_ms: i64, out: *mut *mut chorus_group) -> i32 {
    tcp_group("chorus_group_join_tcp", addr, false, rank, size, name, timeout_ms, out, ProcessGroup::join)
}

/// A subgroup of `ranks` (ranks of `group`). Every rank of `group` calls it in the same order;
/// non-members get `*out = NULL`.
///
/// # Safety
/// `group` is a live handle; `ranks` points to `nranks` ints; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn chorus_group_new_subgroup(group_: *mut chorus_group, ranks: *const i32, nranks: usize, out: *mut *mut chorus_group) -> i32 {
    guard(|| {
        let g = group(group_)?;
        check_out(out, "out")?;
        let rs = rank_list("chorus_group_new_subgroup", ranks, nranks)?;
        match g.pg.new_group(&rs)? {
            Some(pg) => put_out(out, chorus_group { pg, _server: g._server.clone() }),
            // SAFETY: `out` checked non-null above.
            None => unsafe { *out = std::ptr::null_mut() },
        }
        Ok(())
    })
}

/// This rank's index in the group (-1 for a NULL handle).
///
/// # Safety
/// `group` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn chorus_group_rank(group_: *const chorus_group) -> i32 {
    guard_value(-1, || Ok(group(group_)?.pg.rank() as i32))
}

/// The number of ranks in the group (-1 for a NULL handle).
///
/// # Safety
/// `group` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn chorus_group_size(group_: *const chorus_group) -> i32 {
    guard_value(-1, || Ok(group(group_)?.pg.size() as i32))
}

// ------------------------------------------------------------------ fault tolerance

/// Writes `v` into the caller's array `out` of `cap` entries and its length into `*n`; an error
/// (with `*n` set, so the caller can retry with a larger array) if `cap` is too small.
fn put_ranks(what: &str, v: &[usize], out: *mut i32, cap: usize, n: *mut usize) -> FfiResult<()> {
    if n.is_null() {
        return Err(FfiError::invalid(format!("{what}: the `n` out-pointer is NULL")));
    }
    if out.is_null() && cap != 0 {
        return Err(FfiError::invalid(format!("{what}: out is NULL but cap is {cap}")));
    }
    // SAFETY: `n` is non-null and writable (ABI contract).
    unsafe { *n = v.len() };
    let k = v.len().min(cap);
    if k > 0 {
        // SAFETY: `out` is non-null and holds `cap >= k` writable int32_t (ABI contract).
        let dst = unsafe { std::slice::from_raw_parts_mut(out, k) };
        for (d, &r) in dst.iter_mut().zip(v) {
            *d = i32::try_from(r).unwrap_or(i32::MAX);
        }
    }
    if v.len() > cap {
        return Err(FfiError::invalid(format!("{what}: the array holds {cap} entries but {} are needed (*n says how many)", v.len())));
    }
    Ok(())
}

fn put_u64(what: &str, out: *mut u64, v: u64) -> FfiResult<()> {
    if out.is_null() {
        return Err(FfiError::invalid(format!("{what}: the out-pointer is NULL")));
    }
    // SAFETY: non-null and writable (ABI contract).
    unsafe { *out = v };
    Ok(())
}

fn rank_list(what: &str, ranks: *const i32, nranks: usize) -> FfiResult<Vec<usize>> {
    if ranks.is_null() && nranks != 0 {
        return Err(FfiError::invalid(format!("{what}: ranks is NULL")));
    }
    let rs: &[i32] = if nranks == 0 {
        &[]
    } else {
        // SAFETY: non-null and `nranks` long by the caller's contract.
        unsafe { std::slice::from_raw_parts(ranks, nranks) }
    };
    rs.iter().map(|&r| rank_arg(r, "rank")).collect()
}

/// `chorus_group_deactivate_ranks` and `chorus_group_activate_ranks`: checks the ranks against the
/// group's size, then applies `change`.
fn change_ranks(
    func: &str,
    group_: *mut chorus_group,
    ranks: *const i32,
    nranks: usize,
    change: fn(&ProcessGroup, &[usize]) -> chorus_backend::Result<()>,
) -> i32 {
    guard(|| {
        let g = group(group_)?;
        let rs = rank_list(func, ranks, nranks)?;
        if let Some(&bad) = rs.iter().find(|&&r| r >= g.pg.size()) {
            return Err(chorus_backend::ChorusError::InvalidRank { rank: bad, size: g.pg.size() }.into());
        }
        Ok(change(&g.pg, &rs)?)
    })
}

/// The active ranks of the group's current membership view (ascending) into `out` (`cap`
/// entries); `*n` is their number.
///
/// # Safety
/// `group` is a live handle; `out` holds `cap` int32_t (may be NULL with cap 0); `n` is writable.
#[no_mangle]
pub unsafe extern "C" fn chorus_group_active_ranks(group_: *const chorus_group, out: *mut i32, cap: usize, n: *mut usize) -> i32 {
    guard(|| put_ranks("chorus_group_active_ranks", &group(group_)?.pg.active_ranks(), out, cap, n))
}

/// The epoch of the group's current membership view (raised by every change).
///
/// # Safety
/// `group` is a live handle; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn chorus_group_epoch(group_: *const chorus_group, out: *mut u64) -> i32 {
    guard(|| put_u64("chorus_group_epoch", out, group(group_)?.pg.current_epoch()))
}

/// Collectives this rank has issued in the group (a replacement starts at the survivors' count).
///
/// # Safety
/// `group` is a live handle; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn chorus_group_ops_completed(group_: *const chorus_group, out: *mut u64) -> i32 {
    guard(|| put_u64("chorus_group_ops_completed", out, group(group_)?.pg.ops_completed()))
}

/// Whether the group's GPU communicator on CUDA device `device` still works, as NCCL's
/// `ncclCommGetAsyncError`: `CHORUS_OK` (also when the device has none), or the error of its
/// failure, with the message in `chorus_last_error`: `CHORUS_ERR_TIMEOUT` when a kernel waited past
/// its deadline, `CHORUS_ERR_PEER_FAILED` when the group aborted it because a peer died. GPU
/// collectives are stream-ordered and return before they run: call this after synchronizing to learn
/// whether they completed. Reads host memory only (no CUDA call).
///
/// # Safety
/// `group` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn chorus_group_device_status(group_: *const chorus_group, device: i32) -> i32 {
    guard(|| {
        let device = usize::try_from(device).map_err(|_| FfiError::invalid(format!("device {device} is negative")))?;
        group(group_)?.pg.device_status(device)?;
        Ok(())
    })
}

/// Removes `ranks` from the view; every rank adopts the change at its next collective.
///
/// # Safety
/// `group` is a live handle; `ranks` points to `nranks` int32_t.
#[no_mangle]
pub unsafe extern "C" fn chorus_group_deactivate_ranks(group_: *mut chorus_group, ranks: *const i32, nranks: usize) -> i32 {
    change_ranks("chorus_group_deactivate_ranks", group_, ranks, nranks, ProcessGroup::deactivate_ranks)
}

/// Puts `ranks` (alive and linked) back into the view, adopted at the next collective.
///
/// # Safety
/// As for `chorus_group_deactivate_ranks`.
#[no_mangle]
pub unsafe extern "C" fn chorus_group_activate_ranks(group_: *mut chorus_group, ranks: *const i32, nranks: usize) -> i32 {
    change_ranks("chorus_group_activate_ranks", group_, ranks, nranks, ProcessGroup::activate_ranks)
}

/// Destroys the group and frees the handle. Peers inside an operation with this rank get an
/// error; pending work handles stay valid (and report an error if their operation could not run).
///
/// # Safety
/// `group` is NULL or a live handle, not used again after this call.
#[no_mangle]
pub unsafe extern "C" fn chorus_group_destroy(group_: *mut chorus_group) -> i32 {
    guard(|| {
        if group_.is_null() {
            return Ok(());
        }
        // SAFETY: a live handle from Box::into_raw (chorus_group_create*), ownership returns here.
        let g = unsafe { Box::from_raw(group_) };
        g.pg.destroy();
        Ok(())
    })
}

// ------------------------------------------------------------------ collectives

/// The body every operation entry point shares, inside the panic guard: the group handle is
/// checked and `start` issues the operation. `work == NULL` asks for the blocking form: the
/// operation runs to completion on this thread (`Mode::Inline`), its status is returned and its
/// report kept for `chorus_last_op_*`; otherwise its work handle goes out through `work`.
fn with_work<R: Send + 'static>(
    group_: *mut chorus_group,
    work: *mut *mut chorus_work,
    op: &'static str,
    start: impl FnOnce(&chorus_group, Mode) -> FfiResult<Issued<R>>,
) -> i32 {
    let blocking = work.is_null();
    if blocking {
        last_op::clear();
    }
    guard(|| {
        let g = group(group_)?;
        let mode = if blocking { Mode::Inline } else { Mode::Queued };
        match start(g, mode)? {
            Issued::Refused(e) => Err(e.into()),
            Issued::Ran(r, info) if blocking => {
                last_op::set(info);
                r.map(drop).map_err(FfiError::from)
            }
            Issued::Ran(r, info) => emit(work, chorus_backend::Work::ready_with(op, r, info)),
            Issued::Queued(w) => emit(work, w),
        }
    })
}

/// A collective's checked arguments, and the buffer wrapping every collective does the same way
/// (messages name the operation, `op`).
struct Call<'a> {
    g: &'a chorus_group,
    op: &'static str,
    dt: DType,
    /// Host copies of GPU buffers (the host path on device memory); `None` for host memory.
    stage: Option<&'a staged::DeviceStage>,
    /// Queued (a work handle) or blocking (`work == NULL`).
    mode: Mode,
}

impl Call<'_> {
    /// `count` elements of the call's dtype in bytes.
    fn bytes(&self, count: u64) -> FfiResult<usize> {
        byte_len(count, self.dt, self.op)
    }

    /// `bytes` once per rank of the group.
    fn per_rank(&self, bytes: usize) -> FfiResult<usize> {
        bytes.checked_mul(self.g.pg.size()).ok_or_else(|| FfiError::invalid(format!("{}: size overflow", self.op)))
    }

    /// The single (in-place or receive) buffer `buf` of `count` elements, written by the operation.
    fn buf(&self, buf: *const c_void, count: u64) -> FfiResult<RawBuf> {
        self.wrap(buf, self.bytes(count)?, true, "buf")
    }

    /// The single buffer `buf` of `count` elements of a send, which only reads it.
    fn send_only(&self, buf: *const c_void, count: u64) -> FfiResult<RawBuf> {
        self.wrap(buf, self.bytes(count)?, false, "buf")
    }

    /// The output buffer `recvbuf` of `len` bytes.
    fn recv(&self, recvbuf: *mut c_void, len: usize) -> FfiResult<RawBuf> {
        self.wrap(recvbuf, len, true, "recvbuf")
    }

    /// The input buffer `sendbuf` of `len` bytes (a private copy where it overlaps `out`).
    fn send(&self, sendbuf: *const c_void, len: usize, out: &RawBuf) -> FfiResult<Input> {
        Ok(input_for(self.wrap(sendbuf, len, false, "sendbuf")?, out))
    }

    /// `len` bytes at `ptr`, or at its host copy on the host path for GPU memory (`written`: copied
    /// back once the operation succeeded).
    fn wrap(&self, ptr: *const c_void, len: usize, written: bool, what: &'static str) -> FfiResult<RawBuf> {
        let what = Arg { op: self.op, what };
        let p = match self.stage {
            Some(stage) => stage.host_copy(ptr, len, written, &what)?,
            None => ptr as *const u8,
        };
        RawBuf::new(p, len, what)
    }
}

/// An argument's name in messages ("all_gather: sendbuf"), formatted only when one is written.
struct Arg {
    op: &'static str,
    what: &'static str,
}

impl std::fmt::Display for Arg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.op, self.what)
    }
}

/// [`with_work`] for a collective over data on the host path: checks the device and the dtype code
/// before `start` wraps the buffers; GPU memory (`device >= 0`) is staged through host copies
/// ([`staged::DeviceStage`]) and the call returns once the results are back on the GPU.
fn collective<R: Send + 'static>(
    group_: *mut chorus_group,
    work: *mut *mut chorus_work,
    op: &'static str,
    dtype_: i32,
    device: i32,
    stream: *mut c_void,
    start: impl FnOnce(&Call) -> FfiResult<Issued<R>>,
) -> i32 {
    with_work(group_, work, op, |g, mode| {
        let dt = dtype(dtype_)?;
        if device == CHORUS_DEVICE_CPU {
            return start(&Call { g, op, dt, stage: None, mode });
        }
        if device < 0 {
            return Err(FfiError::invalid(format!("{op}: invalid device {device} (use CHORUS_DEVICE_CPU = -1 for host memory, or a CUDA device ordinal)")));
        }
        // GPU memory on the host path: host copies in, the host collective, results back.
        let stage = staged::DeviceStage::new(device as usize, stream);
        let issued = start(&Call { g, op, dt, stage: Some(&stage), mode })?;
        // The host collective's own waits have deadlines; recovery from a failure may take a few.
        stage.finish(op, issued, g.pg.options().timeout.saturating_mul(3))
    })
}

/// In-place all-reduce of `count` elements at `buf`. Like every collective: with `work` non-NULL
/// it returns at once with a work handle in `*work`; with `work == NULL` it runs to completion on
/// the calling thread (after the group's queued operations) and returns the operation's status.
///
/// # Safety
/// `group` is a live handle; `buf` holds `count` elements of `dtype` and stays valid until the
/// work completes (or the blocking call returns); `work` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn chorus_all_reduce(
    group_: *mut chorus_group,
    buf: *mut c_void,
    count: u64,
    dtype_: i32,
    op: i32,
    device: i32,
    stream: *mut c_void,
    work: *mut *mut chorus_work,
) -> i32 {
    if gpu_kernels(group_, device) {
        return device_collective(group_, work, "all_reduce", dtype_, device, stream, |c, dg, s| {
            let (op, n) = (reduce_op(op)?, c.bytes(count)? / c.dt.size());
            // SAFETY: the caller's contract: `buf` is device memory of `device` holding `count`
            // elements, valid until the operation completes on `stream`.
            unsafe { dg.all_reduce(s, c.dt, op, buf as u64, buf as u64, n) }.map_err(FfiError::from)
        });
    }
    collective(group_, work, "all_reduce", dtype_, device, stream, |c| {
        let op = reduce_op(op)?;
        Ok(c.g.pg.all_reduce_issue(c.mode, c.buf(buf, count)?, c.dt, op))
    })
}

/// In-place broadcast of `count` elements from `root`.
///
/// # Safety
/// As for `chorus_all_reduce`.
#[no_mangle]
pub unsafe extern "C" fn chorus_broadcast(
    group_: *mut chorus_group,
    buf: *mut c_void,
    count: u64,
    dtype_: i32,
    root: i32,
    device: i32,
    stream: *mut c_void,
    work: *mut *mut chorus_work,
) -> i32 {
    if gpu_kernels(group_, device) {
        return device_collective(group_, work, "broadcast", dtype_, device, stream, |c, dg, s| {
            let (bytes, root) = (c.bytes(count)?, rank_arg(root, "root")?);
            // SAFETY: as in chorus_all_reduce.
            unsafe { dg.broadcast(s, buf as u64, buf as u64, bytes, root) }.map_err(FfiError::from)
        });
    }
    collective(group_, work, "broadcast", dtype_, device, stream, |c| {
        let b = c.buf(buf, count)?;
        Ok(c.g.pg.broadcast_issue(c.mode, b, rank_arg(root, "root")?))
    })
}

/// In-place reduce to `root` (other ranks' `buf` is left unchanged).
///
/// # Safety
/// As for `chorus_all_reduce`.
#[no_mangle]
pub unsafe extern "C" fn chorus_reduce(
    group_: *mut chorus_group,
    buf: *mut c_void,
    count: u64,
    dtype_: i32,
    op: i32,
    root: i32,
    device: i32,
    stream: *mut c_void,
    work: *mut *mut chorus_work,
) -> i32 {
    if gpu_kernels(group_, device) {
        return device_collective(group_, work, "reduce", dtype_, device, stream, |c, dg, s| {
            let (op, n, root) = (reduce_op(op)?, c.bytes(count)? / c.dt.size(), rank_arg(root, "root")?);
            // SAFETY: as in chorus_all_reduce (in place: the root reads and writes each element once).
            unsafe { dg.reduce(s, c.dt, op, buf as u64, buf as u64, n, root) }.map_err(FfiError::from)
        });
    }
    collective(group_, work, "reduce", dtype_, device, stream, |c| {
        let op = reduce_op(op)?;
        let b = c.buf(buf, count)?;
        Ok(c.g.pg.reduce_issue(c.mode, b, rank_arg(root, "root")?, c.dt, op))
    })
}

/// All-gather: `sendcount` elements from every rank land in `recvbuf` (size * sendcount
/// elements, rank order). `sendbuf` may alias a block of `recvbuf` (it is copied first).
///
/// # Safety
/// As for `chorus_all_reduce`, for both buffers.
#[no_mangle]
pub unsafe extern "C" fn chorus_all_gather(
    group_: *mut chorus_group,
    sendbuf: *const c_void,
    recvbuf: *mut c_void,
    sendcount: u64,
    dtype_: i32,
    device: i32,
    stream: *mut c_void,
    work: *mut *mut chorus_work,
) -> i32 {
    if gpu_kernels(group_, device) {
        return device_collective(group_, work, "all_gather", dtype_, device, stream, |c, dg, s| {
            let block = c.bytes(sendcount)?;
            let total = c.per_rank(block)?;
            let at = (c.g.pg.rank() * block) as u64;
            device_overlap_ok(c.op, sendbuf as u64, block, recvbuf as u64, total, at)?;
            // SAFETY: as in chorus_all_reduce, for both buffers (checked: disjoint or exactly in place).
            unsafe { dg.all_gather(s, sendbuf as u64, recvbuf as u64, block) }.map_err(FfiError::from)
        });
    }
    collective(group_, work, "all_gather", dtype_, device, stream, |c| {
        let block = c.bytes(sendcount)?;
        let out = c.recv(recvbuf, c.per_rank(block)?)?;
        let inp = c.send(sendbuf, block, &out)?;
        Ok(c.g.pg.all_gather_issue(c.mode, inp, out))
    })
}

/// Reduce-scatter: `sendbuf` holds size * recvcount elements; rank r gets the reduction of every
/// rank's block r in `recvbuf`. The buffers may overlap (the input is copied first).
///
/// # Safety
/// As for `chorus_all_reduce`, for both buffers.
#[no_mangle]
pub unsafe extern "C" fn chorus_reduce_scatter(
    group_: *mut chorus_group,
    sendbuf: *const c_void,
    recvbuf: *mut c_void,
    recvcount: u64,
    dtype_: i32,
    op: i32,
    device: i32,
    stream: *mut c_void,
    work: *mut *mut chorus_work,
) -> i32 {
    if gpu_kernels(group_, device) {
        return device_collective(group_, work, "reduce_scatter", dtype_, device, stream, |c, dg, s| {
            let op = reduce_op(op)?;
            let block = c.bytes(recvcount)?;
            let total = c.per_rank(block)?;
            // In place: recvbuf is this rank's block of sendbuf.
            let at = (c.g.pg.rank() * block) as u64;
            device_overlap_ok(c.op, recvbuf as u64, block, sendbuf as u64, total, at)?;
            // SAFETY: as in chorus_all_reduce, for both buffers (checked: disjoint or exactly in place).
            unsafe { dg.reduce_scatter(s, c.dt, op, sendbuf as u64, recvbuf as u64, block / c.dt.size()) }.map_err(FfiError::from)
        });
    }
    collective(group_, work, "reduce_scatter", dtype_, device, stream, |c| {
        let op = reduce_op(op)?;
        let block = c.bytes(recvcount)?;
        let total = c.per_rank(block)?;
        let out = c.recv(recvbuf, block)?;
        let inp = c.send(sendbuf, total, &out)?;
        Ok(c.g.pg.reduce_scatter_issue(c.mode, inp, out, c.dt, op))
    })
}

/// All-to-all with equal blocks: block p (`count` elements) of `sendbuf` goes to rank p; block p
/// of `recvbuf` comes from rank p. Both hold size * count elements.
///
/// # Safety
/// As for `chorus_all_reduce`, for both buffers.
#[no_mangle]
pub unsafe extern "C" fn chorus_all_to_all(
    group_: *mut chorus_group,
    sendbuf: *const c_void,
    recvbuf: *mut c_void,
    count: u64,
    dtype_: i32,
    device: i32,
    stream: *mut c_void,
    work: *mut *mut chorus_work,
) -> i32 {
    if gpu_kernels(group_, device) {
        return device_collective(group_, work, "all_to_all", dtype_, device, stream, |c, dg, s| {
            let block = c.bytes(count)?;
            let total = c.per_rank(block)?;
            device_overlap_ok(c.op, sendbuf as u64, total, recvbuf as u64, total, 0)?;
            // SAFETY: as in chorus_all_reduce, for both buffers (checked: disjoint or identical).
            unsafe { dg.all_to_all(s, sendbuf as u64, recvbuf as u64, block) }.map_err(FfiError::from)
        });
    }
    collective(group_, work, "all_to_all", dtype_, device, stream, |c| {
        let total = c.per_rank(c.bytes(count)?)?;
        let out = c.recv(recvbuf, total)?;
        let inp = c.send(sendbuf, total, &out)?;
        Ok(c.g.pg.all_to_all_issue(c.mode, inp, out))
    })
}

/// The per-rank element counts of `chorus_all_to_all_v` and their sums: (send, recv, send total,
/// recv total).
fn v_counts(c: &Call, send_counts: *const u64, recv_counts: *const u64) -> FfiResult<(Vec<usize>, Vec<usize>, usize, usize)> {
    let n = c.g.pg.size();
    let to_usize = |c: &[u64], what: &str| -> FfiResult<Vec<usize>> {
        c.iter().map(|&x| usize::try_from(x).map_err(|_| FfiError::invalid(format!("all_to_all_v: {what} count {x} is too large")))).collect()
    };
    let sc = to_usize(counts(send_counts, n, "all_to_all_v: send_counts")?, "send")?;
    let rc = to_usize(counts(recv_counts, n, "all_to_all_v: recv_counts")?, "recv")?;
    let sum = |c: &[usize]| c.iter().try_fold(0usize, |a, &x| a.checked_add(x)).ok_or_else(|| FfiError::invalid("all_to_all_v: counts overflow"));
    let (ss, rs) = (sum(&sc)?, sum(&rc)?);
    Ok((sc, rc, ss, rs))
}

/// All-to-all with per-rank counts: `send_counts[p]` consecutive elements of `sendbuf` go to
/// rank p, `recv_counts[p]` elements from rank p land consecutively in `recvbuf`. Both count
/// arrays have one entry per rank and are read during the call only.
///
/// # Safety
/// As for `chorus_all_reduce`; `send_counts` and `recv_counts` point to size entries each.
#[no_mangle]
pub unsafe extern "C" fn chorus_all_to_all_v(
    group_: *mut chorus_group,
    sendbuf: *const c_void,
    send_counts: *const u64,
    recvbuf: *mut c_void,
    recv_counts: *const u64,
    dtype_: i32,
    device: i32,
    stream: *mut c_void,
    work: *mut *mut chorus_work,
) -> i32 {
    if gpu_kernels(group_, device) {
        return device_collective(group_, work, "all_to_all_v", dtype_, device, stream, |c, dg, s| {
            let (sc, rc, ss, rs) = v_counts(c, send_counts, recv_counts)?;
            device_overlap_ok(c.op, sendbuf as u64, c.bytes(ss as u64)?, recvbuf as u64, c.bytes(rs as u64)?, u64::MAX)?;
            let (send, recv, max_pair) = c.g.pg.device_all_to_all_v_splits(&sc, &rc, c.dt)?;
            // SAFETY: as in chorus_all_reduce; the blocks tile both buffers, which do not overlap.
            unsafe { dg.all_to_allv(s, sendbuf as u64, recvbuf as u64, &send, &recv, max_pair) }.map_err(FfiError::from)
        });
    }
    collective(group_, work, "all_to_all_v", dtype_, device, stream, |c| {
        let (sc, rc, ss, rs) = v_counts(c, send_counts, recv_counts)?;
        let out = c.recv(recvbuf, c.bytes(rs as u64)?)?;
        let inp = c.send(sendbuf, c.bytes(ss as u64)?, &out)?;
        Ok(c.g.pg.all_to_all_v_issue(c.mode, inp, sc, out, rc, c.dt))
    })
}

/// Gather: every rank's `count` elements land in `root`'s `recvbuf` (size * count elements, rank
/// order). `recvbuf` is ignored (may be NULL) on other ranks.
///
/// # Safety
/// As for `chorus_all_reduce`, for both buffers.
#[no_mangle]
pub unsafe extern "C" fn chorus_gather(
    group_: *mut chorus_group,
    sendbuf: *const c_void,
    recvbuf: *mut c_void,
    count: u64,
    dtype_: i32,
    root: i32,
    device: i32,
    stream: *mut c_void,
    work: *mut *mut chorus_work,
) -> i32 {
    if gpu_kernels(group_, device) {
        return device_collective(group_, work, "gather", dtype_, device, stream, |c, dg, s| {
            let (root, block) = device_rooted(c, root, count, sendbuf as u64, recvbuf as u64)?;
            // SAFETY: as in chorus_all_reduce, for both buffers (on the root: checked disjoint or
            // exactly in place; elsewhere `recvbuf` is not touched).
            unsafe { dg.gather(s, sendbuf as u64, recvbuf as u64, block, root) }.map_err(FfiError::from)
        });
    }
    collective(group_, work, "gather", dtype_, device, stream, |c| {
        let (root, block) = rooted(c, root, count)?;
        let out = c.recv(recvbuf, if c.g.pg.rank() == root { c.per_rank(block)? } else { 0 })?;
        let inp = c.send(sendbuf, block, &out)?;
        Ok(c.g.pg.gather_issue(c.mode, inp, out, root))
    })
}

/// Scatter: `root`'s `sendbuf` (size * count elements) is split so rank r gets block r in
/// `recvbuf`. `sendbuf` is ignored (may be NULL) on other ranks.
///
/// # Safety
/// As for `chorus_all_reduce`, for both buffers.
#[no_mangle]
pub unsafe extern "C" fn chorus_scatter(
    group_: *mut chorus_group,
    sendbuf: *const c_void,
    recvbuf: *mut c_void,
    count: u64,
    dtype_: i32,
    root: i32,
    device: i32,
    stream: *mut c_void,
    work: *mut *mut chorus_work,
) -> i32 {
    if gpu_kernels(group_, device) {
        return device_collective(group_, work, "scatter", dtype_, device, stream, |c, dg, s| {
            let (root, block) = device_rooted(c, root, count, recvbuf as u64, sendbuf as u64)?;
            // SAFETY: as in chorus_all_reduce, for both buffers (on the root: checked disjoint or
            // exactly in place; elsewhere `sendbuf` is not read).
            unsafe { dg.scatter(s, sendbuf as u64, recvbuf as u64, block, root) }.map_err(FfiError::from)
        });
    }
    collective(group_, work, "scatter", dtype_, device, stream, |c| {
        let (root, block) = rooted(c, root, count)?;
        let total = if c.g.pg.rank() == root { c.per_rank(block)? } else { 0 };
        let out = c.recv(recvbuf, block)?;
        let inp = c.send(sendbuf, total, &out)?;
        Ok(c.g.pg.scatter_issue(c.mode, inp, out, root))
    })
}

/// The root rank and the per-rank block in bytes of a gather or scatter.
fn rooted(c: &Call, root: i32, count: u64) -> FfiResult<(usize, usize)> {
    Ok((rank_arg(root, "root")?, c.bytes(count)?))
}

/// `rooted` for gather and scatter on the kernel path, where the root's one-block buffer (`block_buf`)
/// must lie outside its size-block buffer (`whole_buf`) or be exactly its own block of it.
fn device_rooted(c: &Call, root: i32, count: u64, block_buf: u64, whole_buf: u64) -> FfiResult<(usize, usize)> {
    let (root, block) = rooted(c, root, count)?;
    if c.g.pg.rank() == root {
        device_overlap_ok(c.op, block_buf, block, whole_buf, c.per_rank(block)?, (root * block) as u64)?;
    }
    Ok((root, block))
}

/// Barrier: completes once every rank has entered it (`work == NULL`: returns then).
///
/// # Safety
/// `group` is a live handle; `work` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn chorus_barrier(group_: *mut chorus_group, work: *mut *mut chorus_work) -> i32 {
    with_work(group_, work, "barrier", |g, mode| Ok(g.pg.barrier_issue(mode)))
}

/// Sends `count` elements to `peer` with `tag`; completes once the data left `buf`.
///
/// # Safety
/// As for `chorus_all_reduce`.
#[no_mangle]
pub unsafe extern "C" fn chorus_send(
    group_: *mut chorus_group,
    buf: *const c_void,
    count: u64,
    dtype_: i32,
    peer: i32,
    tag: u64,
    device: i32,
    stream: *mut c_void,
    work: *mut *mut chorus_work,
) -> i32 {
    if gpu_kernels(group_, device) {
        return device_collective(group_, work, "send", dtype_, device, stream, |c, dg, s| {
            let (bytes, peer) = (c.bytes(count)?, rank_arg(peer, "peer")?);
            // SAFETY: as in chorus_all_reduce.
            unsafe { dg.send(s, buf as u64, bytes, peer) }.map_err(FfiError::from)
        });
    }
    collective(group_, work, "send", dtype_, device, stream, |c| {
        let b = c.send_only(buf, count)?;
        Ok(c.g.pg.send_issue(c.mode, b, rank_arg(peer, "peer")?, tag))
    })
}

/// Receives exactly `count` elements from `peer` with `tag` into `buf`.
///
/// # Safety
/// As for `chorus_all_reduce`.
#[no_mangle]
pub unsafe extern "C" fn chorus_recv(
    group_: *mut chorus_group,
    buf: *mut c_void,
    count: u64,
    dtype_: i32,
    peer: i32,
    tag: u64,
    device: i32,
    stream: *mut c_void,
    work: *mut *mut chorus_work,
) -> i32 {
    if gpu_kernels(group_, device) {
        return device_collective(group_, work, "recv", dtype_, device, stream, |c, dg, s| {
            let (bytes, peer) = (c.bytes(count)?, rank_arg(peer, "peer")?);
            // SAFETY: as in chorus_all_reduce.
            unsafe { dg.recv(s, buf as u64, bytes, peer) }.map_err(FfiError::from)
        });
    }
    collective(group_, work, "recv", dtype_, device, stream, |c| {
        let b = c.buf(buf, count)?;
        Ok(c.g.pg.recv_issue(c.mode, b, rank_arg(peer, "peer")?, tag))
    })
}

// ------------------------------------------------------------------ work handles

fn work_ref<'a>(w: *const chorus_work) -> FfiResult<&'a chorus_work> {
    // SAFETY: a non-null work pointer was returned by a collective and not yet freed (ABI).
    unsafe { w.as_ref() }.ok_or_else(|| FfiError::invalid("the work handle is NULL"))
}

/// Waits up to `timeout_ms` (negative: no limit) and returns the operation's status (repeatable).
/// CHORUS_ERR_TIMEOUT with the operation still running if the wait ran out.
///
/// # Safety
/// `work` is a live work handle.
#[no_mangle]
pub unsafe extern "C" fn chorus_work_wait(work: *mut chorus_work, timeout_ms: i64) -> i32 {
    guard(|| {
        let w = work_ref(work)?;
        let t = (timeout_ms >= 0).then(|| Duration::from_millis(timeout_ms as u64));
        w.wait(t)
    })
}

/// 1 if the operation finished (successfully or not), 0 if not, -CHORUS_ERR_INVALID_ARGUMENT for
/// a NULL handle.
///
/// # Safety
/// `work` is NULL or a live work handle.
#[no_mangle]
pub unsafe extern "C" fn chorus_work_is_completed(work: *const chorus_work) -> i32 {
    guard_value(-error::CHORUS_ERR_INVALID_ARGUMENT, || Ok(work_ref(work)?.is_completed() as i32))
}

/// Ranks that failed during the completed operation (removed from the group; every survivor
/// reports the same ones at the same collective) into `out` (`cap` entries); `*n` is their number.
/// CHORUS_ERR_INVALID_ARGUMENT if the operation has not completed yet.
///
/// # Safety
/// `work` is a live work handle; `out` holds `cap` int32_t (may be NULL with cap 0); `n` is writable.
#[no_mangle]
pub unsafe extern "C" fn chorus_work_failed_ranks(work: *const chorus_work, out: *mut i32, cap: usize, n: *mut usize) -> i32 {
    guard(|| put_ranks("chorus_work_failed_ranks", &work_ref(work)?.info()?.failed, out, cap, n))
}

/// The ranks whose data the completed operation's result contains (the active ranks it ran over).
///
/// # Safety
/// As for `chorus_work_failed_ranks`.
#[no_mangle]
pub unsafe extern "C" fn chorus_work_contributors(work: *const chorus_work, out: *mut i32, cap: usize, n: *mut usize) -> i32 {
    guard(|| put_ranks("chorus_work_contributors", &work_ref(work)?.info()?.contributors, out, cap, n))
}

/// The membership epoch the completed operation's result was computed under.
///
/// # Safety
/// `work` is a live work handle; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn chorus_work_epoch(work: *const chorus_work, out: *mut u64) -> i32 {
    guard(|| put_u64("chorus_work_epoch", out, work_ref(work)?.info()?.epoch))
}

// ------------------------------------------------------------------ blocking calls' reports

/// Ranks that failed during the calling thread's last blocking collective (`work == NULL`), as
/// `chorus_work_failed_ranks` reports them for a work handle. Every blocking call replaces the
/// report, also a failing one (`CHORUS_ERR_PEER_FAILED` under the abort policy still names the
/// failed ranks); a call refused before it ran (bad arguments) leaves none, and then this returns
/// CHORUS_ERR_INVALID_ARGUMENT.
///
/// # Safety
/// `out` holds `cap` int32_t (may be NULL with cap 0); `n` is writable.
#[no_mangle]
pub unsafe extern "C" fn chorus_last_op_failed_ranks(out: *mut i32, cap: usize, n: *mut usize) -> i32 {
    const WHAT: &str = "chorus_last_op_failed_ranks";
    guard(|| last_op::with(WHAT, |info| put_ranks(WHAT, &info.failed, out, cap, n)))
}

/// The ranks whose data the calling thread's last blocking collective's result contains.
///
/// # Safety
/// As for `chorus_last_op_failed_ranks`.
#[no_mangle]
pub unsafe extern "C" fn chorus_last_op_contributors(out: *mut i32, cap: usize, n: *mut usize) -> i32 {
    const WHAT: &str = "chorus_last_op_contributors";
    guard(|| last_op::with(WHAT, |info| put_ranks(WHAT, &info.contributors, out, cap, n)))
}

/// The membership epoch the calling thread's last blocking collective ran under.
///
/// # Safety
/// `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn chorus_last_op_epoch(out: *mut u64) -> i32 {
    const WHAT: &str = "chorus_last_op_epoch";
    guard(|| last_op::with(WHAT, |info| put_u64(WHAT, out, info.epoch)))
}

/// Frees a work handle. Freeing one whose operation is still running is allowed, but the
/// operation's memory must stay valid until it completes.
///
/// # Safety
/// `work` is NULL or a live work handle, not used again after this call.
#[no_mangle]
pub unsafe extern "C" fn chorus_work_free(work: *mut chorus_work) {
    guard(|| {
        if !work.is_null() {
            // SAFETY: a live handle from Box::into_raw (emit); ownership returns here.
            drop(unsafe { Box::from_raw(work) });
        }
        Ok(())
    });
}
