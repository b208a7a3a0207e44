//! Group lifecycle through the C ABI: creation (store callbacks, TCP store, environment), joining,
//! subgroups, the membership view (active ranks, epoch, device status), destruction.
use super::*;

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
pub(crate) fn put_ranks(what: &str, v: &[usize], out: *mut i32, cap: usize, n: *mut usize) -> FfiResult<()> {
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

pub(crate) fn put_u64(what: &str, out: *mut u64, v: u64) -> FfiResult<()> {
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

/// Where this rank's membership replica listens (`host:port`, no NUL; `*n` 0 without replicas),
/// for a replacement's `CHORUS_JOIN_VIA`. Written into `out` (`cap` bytes) with `*n` set to the
/// full length; CHORUS_ERR_INVALID_ARGUMENT (with `*n` set) when `cap` is too small.
///
/// # Safety
/// `group` is a live handle; `out` holds `cap` writable bytes (may be NULL with cap 0); `n` is
/// writable.
#[no_mangle]
pub unsafe extern "C" fn chorus_group_replica_address(group_: *const chorus_group, out: *mut c_char, cap: usize, n: *mut usize) -> i32 {
    guard(|| {
        let what = "chorus_group_replica_address";
        let addr = group(group_)?.pg.replica_address().unwrap_or_default();
        if n.is_null() {
            return Err(FfiError::invalid(format!("{what}: the `n` out-pointer is NULL")));
        }
        if out.is_null() && cap != 0 {
            return Err(FfiError::invalid(format!("{what}: out is NULL but cap is {cap}")));
        }
        // SAFETY: `n` is non-null and writable (ABI contract).
        unsafe { *n = addr.len() };
        if addr.len() > cap {
            return Err(FfiError::invalid(format!("{what}: the buffer holds {cap} bytes but {} are needed (*n says how many)", addr.len())));
        }
        if !addr.is_empty() {
            // SAFETY: `out` is non-null and holds `cap >= addr.len()` writable bytes (ABI contract).
            unsafe { std::ptr::copy_nonoverlapping(addr.as_ptr().cast::<c_char>(), out, addr.len()) };
        }
        Ok(())
    })
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

/// Marks where the application is in its loop: the collectives this rank issues from now on
/// belong to `value` (a training step, say); a replacement learns the survivors' place from
/// `chorus_group_resume_point`.
///
/// # Safety
/// `group` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn chorus_group_mark(group_: *const chorus_group, value: u64) -> i32 {
    guard(|| {
        group(group_)?.pg.mark(value);
        Ok(())
    })
}

/// For a replacement: the survivors' last collective before this rank's first was the `*done`-th
/// they issued after marking `*marker`. `*done` is 0 (and `*marker` 0) for a rank that did not
/// join, or when the survivors marked nothing.
///
/// # Safety
/// `group` is a live handle; `marker` and `done` are writable.
#[no_mangle]
pub unsafe extern "C" fn chorus_group_resume_point(group_: *const chorus_group, marker: *mut u64, done: *mut u64) -> i32 {
    guard(|| {
        let at = group(group_)?.pg.resume_point();
        put_u64("chorus_group_resume_point", marker, at.map_or(0, |p| p.marker))?;
        put_u64("chorus_group_resume_point", done, at.map_or(0, |p| p.done))
    })
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

