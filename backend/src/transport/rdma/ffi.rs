//! The rdma FFI layer: the only file of the rdma transport with `unsafe` (a named exception to the
//! backend's `#![deny(unsafe_code)]`).
//!
//! `libibverbs.so.1` is opened at run time (`load`); nothing links against it, so a binary built
//! with this module runs (and falls back to shm/tcp) on machines without rdma-core. The verbs
//! structures are in `abi` (copied from rdma-core v55's `verbs.h`, the copy vendored by the
//! `ibverbs-sys 0.3.2+55.0` crate; ABI-stable across rdma-core releases, with size checks). GPU
//! memory is exported as a dma-buf through the CUDA driver as the kernels crate loads it (`cuda`;
//! only with the crate's `cuda` feature).
//! Below: the safe wrappers (context, memory regions, completion queues, queue pairs).
//!
//! `ibv_post_send`, `ibv_post_recv` and `ibv_poll_cq` are `static inline` in verbs.h: they call
//! through the provider's function table `qp->context->ops`, and so do we.
#![allow(unsafe_code)]
#![allow(non_camel_case_types, dead_code)]

mod abi;
#[cfg(feature = "cuda")]
mod cuda;
mod load;

pub use abi::*;
#[cfg(feature = "cuda")]
pub use cuda::{cuda_allocation_of, cuda_dmabuf_fd};
pub use load::{library_name, verbs, LoadError, Verbs};
use load::errno_string;
use std::ffi::{c_int, c_void, CStr};
use std::ptr;

// ---------------------------------------------------------------------------------------------
// Safe wrappers
// ---------------------------------------------------------------------------------------------

/// One port of one device, as found by [`devices`].
#[derive(Clone, Debug)]
pub struct PortDesc {
    pub device: String,
    pub port: u8,
    pub attr: ibv_port_attr,
    /// (index, gid) for every non-zero GID of the port's table.
    pub gids: Vec<(u32, [u8; 16])>,
}

/// Closes a file descriptor we own (a dma-buf fd after registration).
pub fn close_fd(fd: i32) {
    // SAFETY: the caller owns `fd` and never uses it again.
    unsafe { libc::close(fd) };
}

/// Names of every RDMA device.
pub fn device_names() -> Result<Vec<String>, String> {
    let v = verbs().map_err(|e| format!("{e:?}"))?;
    let mut n: c_int = 0;
    // SAFETY: `n` is a valid out-pointer; the returned list is NULL-terminated and freed below.
    let list = unsafe { (v.get_device_list)(&mut n) };
    if list.is_null() {
        return Err(format!("ibv_get_device_list failed: {}", errno_string()));
    }
    let mut out = Vec::new();
    for i in 0..n.max(0) as usize {
        // SAFETY: i < n entries of a list returned by ibv_get_device_list; names are valid C
        // strings owned by the device, copied before the list is freed.
        unsafe {
            let dev = *list.add(i);
            let name = (v.get_device_name)(dev);
            if !name.is_null() {
                out.push(CStr::from_ptr(name).to_string_lossy().into_owned());
            }
        }
    }
    // SAFETY: `list` came from ibv_get_device_list and is freed once.
    unsafe { (v.free_device_list)(list) };
    Ok(out)
}

/// An open device context with one protection domain.
pub struct Context {
    v: &'static Verbs,
    ctx: *mut ibv_context,
    pd: *mut ibv_pd,
    pub name: String,
}

// SAFETY: libibverbs objects may be used from any thread (verbs are thread-safe by contract,
// rdma-core "Thread safety" in ibv_*(3)); the pointers are owned by this struct until Drop.
unsafe impl Send for Context {}
// SAFETY: see Send; shared use only calls thread-safe verbs.
unsafe impl Sync for Context {}

impl Context {
    /// Opens device `name` and allocates a protection domain.
    pub fn open(name: &str) -> Result<Context, String> {
        let v = verbs().map_err(|e| format!("{e:?}"))?;
        let mut n: c_int = 0;
        // SAFETY: valid out-pointer; list freed below.
        let list = unsafe { (v.get_device_list)(&mut n) };
        if list.is_null() {
            return Err(format!("ibv_get_device_list failed: {}", errno_string()));
        }
        let mut ctx = ptr::null_mut();
        for i in 0..n.max(0) as usize {
            // SAFETY: i < n entries of the list; the name is a valid C string.
            let (dev, dname) = unsafe {
                let dev = *list.add(i);
                let p = (v.get_device_name)(dev);
                (dev, if p.is_null() { String::new() } else { CStr::from_ptr(p).to_string_lossy().into_owned() })
            };
            if dname == name {
                // SAFETY: `dev` is a live entry of the device list (the list is freed after this).
                ctx = unsafe { (v.open_device)(dev) };
                break;
            }
        }
        // SAFETY: freed once; an opened context stays valid after the list is freed.
        unsafe { (v.free_device_list)(list) };
        if ctx.is_null() {
            return Err(format!("cannot open RDMA device {name}: {}", errno_string()));
        }
        // SAFETY: ctx is a freshly opened context.
        let pd = unsafe { (v.alloc_pd)(ctx) };
        if pd.is_null() {
            let e = errno_string();
            // SAFETY: ctx was opened above and is closed once.
            unsafe { (v.close_device)(ctx) };
            return Err(format!("ibv_alloc_pd on {name} failed: {e}"));
        }
        Ok(Context { v, ctx, pd, name: name.to_string() })
    }

    /// Attributes of `port` plus its non-zero GIDs.
    pub fn port(&self, port: u8) -> Result<PortDesc, String> {
        let mut attr = ibv_port_attr::default();
        // SAFETY: `attr` is a full-size, writable ibv_port_attr (the exported symbol may write
        // fewer bytes: the legacy _compat struct is a prefix of it).
        let rc = unsafe { (self.v.query_port)(self.ctx, port, &mut attr) };
        if rc != 0 {
            return Err(format!("ibv_query_port({}, {port}) failed: {}", self.name, std::io::Error::from_raw_os_error(rc)));
        }
        let mut gids = Vec::new();
        for i in 0..attr.gid_tbl_len.clamp(0, 256) {
            let mut g = ibv_gid::default();
            // SAFETY: `g` is a valid out-pointer of the right size; i < gid_tbl_len.
            let rc = unsafe { (self.v.query_gid)(self.ctx, port, i, &mut g) };
            if rc == 0 && g.raw != [0u8; 16] {
                gids.push((i as u32, g.raw));
            }
        }
        Ok(PortDesc { device: self.name.clone(), port, attr, gids })
    }

    /// Registers host memory `[addr, addr+len)`.
    ///
    /// The caller keeps the memory mapped for the life of the returned [`Mr`].
    pub fn reg_host(&self, addr: usize, len: usize, access: c_int) -> Result<Mr, String> {
        // SAFETY: pd is live; the kernel pins the pages and validates the range itself (a bad range
        // is an EFAULT error, not UB in this process).
        let mr = unsafe { (self.v.reg_mr)(self.pd, addr as *mut c_void, len, access) };
        if mr.is_null() {
            return Err(format!("ibv_reg_mr({addr:#x}, {len}) failed: {}", errno_string()));
        }
        Ok(Mr { v: self.v, mr })
    }

    /// Registers GPU memory exported as a dma-buf: `fd` from `cuMemGetHandleForAddressRange`,
    /// `offset` of the region inside the dma-buf, `iova` the virtual address peers will use.
    pub fn reg_dmabuf(&self, fd: i32, offset: u64, len: usize, iova: u64, access: c_int) -> Result<Mr, String> {
        let f = self.v.reg_dmabuf_mr.ok_or("this libibverbs has no ibv_reg_dmabuf_mr (rdma-core >= 34 needed)")?;
        // SAFETY: pd is live; the kernel validates the fd/offset/len triple.
        let mr = unsafe { f(self.pd, offset, len, iova, fd, access) };
        if mr.is_null() {
            return Err(format!("ibv_reg_dmabuf_mr(fd {fd}, offset {offset}, {len}) failed: {}", errno_string()));
        }
        Ok(Mr { v: self.v, mr })
    }

    pub fn create_cq(&self, depth: u32) -> Result<Cq, String> {
        // SAFETY: ctx is live; no completion channel (we poll).
        let cq = unsafe { (self.v.create_cq)(self.ctx, depth as c_int, ptr::null_mut(), ptr::null_mut(), 0) };
        if cq.is_null() {
            return Err(format!("ibv_create_cq({depth}) failed: {}", errno_string()));
        }
        Ok(Cq { v: self.v, cq })
    }

    /// An RC queue pair using `send_cq`/`recv_cq` (which must outlive it: [`Qp`] holds no
    /// borrow, the owner drops the QP first).
    pub fn create_rc_qp(&self, send_cq: &Cq, recv_cq: &Cq, send_wr: u32, recv_wr: u32) -> Result<Qp, String> {
        let mut init = ibv_qp_init_attr {
            qp_context: ptr::null_mut(),
            send_cq: send_cq.cq,
            recv_cq: recv_cq.cq,
            srq: ptr::null_mut(),
            cap: ibv_qp_cap { max_send_wr: send_wr, max_recv_wr: recv_wr, max_send_sge: 1, max_recv_sge: 1, max_inline_data: 0 },
            qp_type: IBV_QPT_RC,
            sq_sig_all: 0,
        };
        // SAFETY: pd and both CQs are live; `init` is a valid ibv_qp_init_attr.
        let qp = unsafe { (self.v.create_qp)(self.pd, &mut init) };
        if qp.is_null() {
            return Err(format!("ibv_create_qp(RC, send {send_wr}, recv {recv_wr}) failed: {}", errno_string()));
        }
        Ok(Qp { v: self.v, qp })
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: every Mr/Cq/Qp made from this context is dropped before it (owners keep an
        // Arc<Context> beside them and drop it last); pd and ctx are released once.
        unsafe {
            (self.v.dealloc_pd)(self.pd);
            (self.v.close_device)(self.ctx);
        }
    }
}

/// A memory registration.
pub struct Mr {
    v: &'static Verbs,
    mr: *mut ibv_mr,
}
// SAFETY: an ibv_mr is immutable after registration; deregistration happens once in Drop.
unsafe impl Send for Mr {}
// SAFETY: see Send.
unsafe impl Sync for Mr {}

impl Mr {
    pub fn lkey(&self) -> u32 {
        // SAFETY: `mr` is live until Drop; lkey is never written after registration.
        unsafe { (*self.mr).lkey }
    }
    pub fn rkey(&self) -> u32 {
        // SAFETY: as for lkey.
        unsafe { (*self.mr).rkey }
    }
}

impl Drop for Mr {
    fn drop(&mut self) {
        // SAFETY: registered once, deregistered once.
        unsafe { (self.v.dereg_mr)(self.mr) };
    }
}

/// A completion queue.
pub struct Cq {
    v: &'static Verbs,
    cq: *mut ibv_cq,
}
// SAFETY: polling a CQ is thread-safe in libibverbs (providers lock internally).
unsafe impl Send for Cq {}
// SAFETY: see Send.
unsafe impl Sync for Cq {}

impl Cq {
    /// Polls up to `out.len()` completions; returns how many were written.
    pub fn poll(&self, out: &mut [ibv_wc]) -> Result<usize, String> {
        // SAFETY: `cq` is live; its context pointer and ops table are set by the provider;
        // `out` has room for out.len() entries.
        let n = unsafe {
            let ctx = (*self.cq).context;
            let f = (*ctx).ops.poll_cq.ok_or("provider has no poll_cq")?;
            f(self.cq, out.len().min(c_int::MAX as usize) as c_int, out.as_mut_ptr())
        };
        if n < 0 {
            Err(format!("ibv_poll_cq failed ({n})"))
        } else {
            Ok(n as usize)
        }
    }
}

impl Drop for Cq {
    fn drop(&mut self) {
        // SAFETY: every QP using this CQ was destroyed first (owners order their fields so).
        unsafe { (self.v.destroy_cq)(self.cq) };
    }
}

/// Everything `modify_qp` needs to bring an RC QP to RTR/RTS towards a remote QP.
#[derive(Clone, Copy, Debug)]
pub struct RemotePath {
    pub port: u8,
    pub mtu: u32,
    pub remote_qpn: u32,
    pub remote_psn: u32,
    pub local_psn: u32,
    pub remote_lid: u16,
    pub remote_gid: [u8; 16],
    pub sgid_index: u8,
    /// RoCE, or IB across subnets: address with a GRH.
    pub global: bool,
    pub timeout: u8,
    pub retry_cnt: u8,
    pub service_level: u8,
    pub traffic_class: u8,
}

/// A queue pair.
pub struct Qp {
    v: &'static Verbs,
    qp: *mut ibv_qp,
}
// SAFETY: posting to a QP is thread-safe in libibverbs; we also serialise posts behind a mutex.
unsafe impl Send for Qp {}
// SAFETY: see Send.
unsafe impl Sync for Qp {}

impl Qp {
    pub fn qp_num(&self) -> u32 {
        // SAFETY: `qp` is live; qp_num is set at creation and never changes.
        unsafe { (*self.qp).qp_num }
    }

    fn modify(&self, attr: &mut ibv_qp_attr, mask: c_int, what: &str) -> Result<(), String> {
        // SAFETY: `qp` is live and `attr` a valid ibv_qp_attr for the fields named in `mask`.
        let rc = unsafe { (self.v.modify_qp)(self.qp, attr, mask) };
        if rc != 0 {
            return Err(format!("ibv_modify_qp to {what} failed: {}", std::io::Error::from_raw_os_error(rc)));
        }
        Ok(())
    }

    /// RESET -> INIT (remote write allowed).
    pub fn to_init(&self, port: u8) -> Result<(), String> {
        let mut a = ibv_qp_attr {
            qp_state: IBV_QPS_INIT,
            pkey_index: 0,
            port_num: port,
            qp_access_flags: (IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ) as u32,
            ..Default::default()
        };
        self.modify(&mut a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS, "INIT")
    }

    /// INIT -> RTR -> RTS towards `p`.
    pub fn to_rts(&self, p: &RemotePath) -> Result<(), String> {
        let mut a = ibv_qp_attr {
            qp_state: IBV_QPS_RTR,
            path_mtu: p.mtu,
            dest_qp_num: p.remote_qpn,
            rq_psn: p.remote_psn,
            max_dest_rd_atomic: 1,
            min_rnr_timer: 12,
            ..Default::default()
        };
        a.ah_attr.dlid = p.remote_lid;
        a.ah_attr.sl = p.service_level;
        a.ah_attr.port_num = p.port;
        if p.global {
            a.ah_attr.is_global = 1;
            a.ah_attr.grh.dgid = ibv_gid { raw: p.remote_gid };
            a.ah_attr.grh.sgid_index = p.sgid_index;
            a.ah_attr.grh.hop_limit = 255;
            a.ah_attr.grh.traffic_class = p.traffic_class;
        }
        self.modify(
            &mut a,
            IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER,
            "RTR",
        )?;
        let mut a = ibv_qp_attr {
            qp_state: IBV_QPS_RTS,
            timeout: p.timeout,
            retry_cnt: p.retry_cnt,
            rnr_retry: 7, // 7 = retry forever on receiver-not-ready (a slow poller is not a failure)
            sq_psn: p.local_psn,
            max_rd_atomic: 1,
            ..Default::default()
        };
        self.modify(
            &mut a,
            IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC,
            "RTS",
        )
    }

    /// Moves the QP to the error state (flushes outstanding work requests).
    pub fn to_error(&self) -> Result<(), String> {
        let mut a = ibv_qp_attr { qp_state: IBV_QPS_ERR, ..Default::default() };
        self.modify(&mut a, IBV_QP_STATE, "ERR")
    }

    /// Posts one signaled RDMA WRITE WITH IMM of `len` bytes at `local_addr` (registered with
    /// `lkey`) to `remote_addr`/`rkey`; `imm_host` is converted to network byte order here.
    /// `len == 0` posts no scatter/gather entry (a pure immediate: credit return, abort).
    #[allow(clippy::too_many_arguments)]
    pub fn post_write_imm(&self, wr_id: u64, local_addr: u64, len: u32, lkey: u32, remote_addr: u64, rkey: u32, imm_host: u32) -> Result<(), String> {
        let mut sge = ibv_sge { addr: local_addr, length: len, lkey };
        let mut wr = ibv_send_wr {
            wr_id,
            next: ptr::null_mut(),
            sg_list: if len > 0 { &mut sge } else { ptr::null_mut() },
            num_sge: if len > 0 { 1 } else { 0 },
            opcode: IBV_WR_RDMA_WRITE_WITH_IMM,
            send_flags: IBV_SEND_SIGNALED,
            imm_data: imm_host.to_be(),
            wr: ibv_send_wr_wr { remote_addr, rkey, _atomic_tail: [0; 5] },
            qp_type_xrc_remote_srqn: 0,
            _bind_mw_or_tso: [0; 6],
        };
        let mut bad: *mut ibv_send_wr = ptr::null_mut();
        // SAFETY: `qp` is live; `wr` and `sge` are valid for the duration of the call (the
        // provider copies them into the send queue before returning).
        let rc = unsafe {
            let ctx = (*self.qp).context;
            let f = (*ctx).ops.post_send.ok_or("provider has no post_send")?;
            f(self.qp, &mut wr, &mut bad)
        };
        if rc != 0 {
            return Err(format!("ibv_post_send failed: {}", std::io::Error::from_raw_os_error(rc)));
        }
        Ok(())
    }

    /// Posts `count` receive WRs without buffers (WRITE WITH IMM consumes one and delivers only
    /// the immediate; the payload lands at the address the writer named).
    pub fn post_recvs(&self, first_wr_id: u64, count: u32) -> Result<(), String> {
        for i in 0..count as u64 {
            let mut wr = ibv_recv_wr { wr_id: first_wr_id + i, next: ptr::null_mut(), sg_list: ptr::null_mut(), num_sge: 0 };
            let mut bad: *mut ibv_recv_wr = ptr::null_mut();
            // SAFETY: `qp` is live; `wr` is valid for the call (copied by the provider).
            let rc = unsafe {
                let ctx = (*self.qp).context;
                let f = (*ctx).ops.post_recv.ok_or("provider has no post_recv")?;
                f(self.qp, &mut wr, &mut bad)
            };
            if rc != 0 {
                return Err(format!("ibv_post_recv failed: {}", std::io::Error::from_raw_os_error(rc)));
            }
        }
        Ok(())
    }
}

impl Drop for Qp {
    fn drop(&mut self) {
        // SAFETY: created once, destroyed once; its CQs are still alive (owner drop order).
        unsafe { (self.v.destroy_qp)(self.qp) };
    }
}

