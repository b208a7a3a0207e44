//! The rdma FFI layer: the only file of the rdma transport with `unsafe` (a named exception to the
//! backend's `#![deny(unsafe_code)]`).
//!
//! `libibverbs.so.1` (and, for GPU memory, `libcuda.so.1`) are opened at run time with
//! `dlopen`/`dlsym`; nothing links against them, so a binary built with this module runs (and
//! falls back to shm/tcp) on machines without rdma-core.
//!
//! The verbs structures below are copied field by field, in order, from rdma-core's
//! `libibverbs/verbs.h` (rdma-core v55, the copy vendored by the `ibverbs-sys 0.3.2+55.0` crate;
//! these structs are ABI-stable across rdma-core releases). Every struct we allocate or read has a
//! compile-time size check against the value printed by a C program compiled against that header
//! (`sizeof`/`offsetof`, x86_64 and aarch64 Linux, LP64).
//!
//! `ibv_post_send`, `ibv_post_recv` and `ibv_poll_cq` are `static inline` in verbs.h: they call
//! through the provider's function table `qp->context->ops`, and so do we.
#![allow(unsafe_code)]
#![allow(non_camel_case_types, dead_code)]

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::mem::size_of;
use std::ptr;
use std::sync::OnceLock;

// ---------------------------------------------------------------------------------------------
// Constants (enum values from verbs.h)
// ---------------------------------------------------------------------------------------------

pub const IBV_QPT_RC: u32 = 2;
pub const IBV_QPS_RESET: u32 = 0;
pub const IBV_QPS_INIT: u32 = 1;
pub const IBV_QPS_RTR: u32 = 2;
pub const IBV_QPS_RTS: u32 = 3;
pub const IBV_QPS_ERR: u32 = 6;

pub const IBV_QP_STATE: c_int = 1 << 0;
pub const IBV_QP_ACCESS_FLAGS: c_int = 1 << 3;
pub const IBV_QP_PKEY_INDEX: c_int = 1 << 4;
pub const IBV_QP_PORT: c_int = 1 << 5;
pub const IBV_QP_AV: c_int = 1 << 7;
pub const IBV_QP_PATH_MTU: c_int = 1 << 8;
pub const IBV_QP_TIMEOUT: c_int = 1 << 9;
pub const IBV_QP_RETRY_CNT: c_int = 1 << 10;
pub const IBV_QP_RNR_RETRY: c_int = 1 << 11;
pub const IBV_QP_RQ_PSN: c_int = 1 << 12;
pub const IBV_QP_MAX_QP_RD_ATOMIC: c_int = 1 << 13;
pub const IBV_QP_MIN_RNR_TIMER: c_int = 1 << 15;
pub const IBV_QP_SQ_PSN: c_int = 1 << 16;
pub const IBV_QP_MAX_DEST_RD_ATOMIC: c_int = 1 << 17;
pub const IBV_QP_DEST_QPN: c_int = 1 << 20;

pub const IBV_ACCESS_LOCAL_WRITE: c_int = 1;
pub const IBV_ACCESS_REMOTE_WRITE: c_int = 2;
pub const IBV_ACCESS_REMOTE_READ: c_int = 4;

/// `IBV_WR_RDMA_WRITE_WITH_IMM` (verbs.h: RDMA_WRITE = 0, RDMA_WRITE_WITH_IMM = 1, SEND = 2,
/// SEND_WITH_IMM = 3).
pub const IBV_WR_RDMA_WRITE_WITH_IMM: u32 = 1;
pub const IBV_SEND_SIGNALED: u32 = 1 << 1;

pub const IBV_WC_SUCCESS: u32 = 0;
pub const IBV_WC_RDMA_WRITE: u32 = 1;
/// `IBV_WC_RECV_RDMA_WITH_IMM = 1 << 7 | 1`.
pub const IBV_WC_RECV_RDMA_WITH_IMM: u32 = 129;
pub const IBV_WC_WITH_IMM: u32 = 1 << 1;

pub const IBV_PORT_ACTIVE: u32 = 4;
pub const IBV_LINK_LAYER_UNSPECIFIED: u8 = 0;
pub const IBV_LINK_LAYER_INFINIBAND: u8 = 1;
pub const IBV_LINK_LAYER_ETHERNET: u8 = 2;

// ---------------------------------------------------------------------------------------------
// Structures (verbs.h, rdma-core v55)
// ---------------------------------------------------------------------------------------------

pub type ibv_device = c_void;
pub type ibv_pd = c_void;
pub type ibv_comp_channel = c_void;
pub type ibv_srq = c_void;

type Fp = Option<unsafe extern "C" fn()>;

/// `struct ibv_context_ops` — 256 bytes; poll_cq at 88, req_notify_cq at 96, post_send at 200,
/// post_recv at 208.
#[repr(C)]
pub struct ibv_context_ops {
    _compat_query_device: Fp,
    _compat_query_port: Fp,
    _compat_alloc_pd: Fp,
    _compat_dealloc_pd: Fp,
    _compat_reg_mr: Fp,
    _compat_rereg_mr: Fp,
    _compat_dereg_mr: Fp,
    alloc_mw: Fp,
    bind_mw: Fp,
    dealloc_mw: Fp,
    _compat_create_cq: Fp,
    pub poll_cq: Option<unsafe extern "C" fn(*mut ibv_cq, c_int, *mut ibv_wc) -> c_int>,
    pub req_notify_cq: Option<unsafe extern "C" fn(*mut ibv_cq, c_int) -> c_int>,
    _compat_cq_event: Fp,
    _compat_resize_cq: Fp,
    _compat_destroy_cq: Fp,
    _compat_create_srq: Fp,
    _compat_modify_srq: Fp,
    _compat_query_srq: Fp,
    _compat_destroy_srq: Fp,
    post_srq_recv: Fp,
    _compat_create_qp: Fp,
    _compat_query_qp: Fp,
    _compat_modify_qp: Fp,
    _compat_destroy_qp: Fp,
    pub post_send: Option<unsafe extern "C" fn(*mut ibv_qp, *mut ibv_send_wr, *mut *mut ibv_send_wr) -> c_int>,
    pub post_recv: Option<unsafe extern "C" fn(*mut ibv_qp, *mut ibv_recv_wr, *mut *mut ibv_recv_wr) -> c_int>,
    _compat_create_ah: Fp,
    _compat_destroy_ah: Fp,
    _compat_attach_mcast: Fp,
    _compat_detach_mcast: Fp,
    _compat_async_event: Fp,
}
const _: () = assert!(size_of::<ibv_context_ops>() == 256);
const _: () = assert!(std::mem::offset_of!(ibv_context_ops, poll_cq) == 88);
const _: () = assert!(std::mem::offset_of!(ibv_context_ops, post_send) == 200);
const _: () = assert!(std::mem::offset_of!(ibv_context_ops, post_recv) == 208);

/// `struct ibv_context` — 328 bytes; ops at 8, cmd_fd at 264, mutex at 280, abi_compat at 320.
#[repr(C)]
pub struct ibv_context {
    pub device: *mut ibv_device,
    pub ops: ibv_context_ops,
    pub cmd_fd: c_int,
    pub async_fd: c_int,
    pub num_comp_vectors: c_int,
    pub mutex: libc::pthread_mutex_t,
    pub abi_compat: *mut c_void,
}
const _: () = assert!(size_of::<ibv_context>() == 328);
const _: () = assert!(std::mem::offset_of!(ibv_context, mutex) == 280);

/// `struct ibv_port_attr` — 56 bytes; lid at 34, link_layer at 46, active_speed_ex at 52.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ibv_port_attr {
    pub state: u32,
    pub max_mtu: u32,
    pub active_mtu: u32,
    pub gid_tbl_len: c_int,
    pub port_cap_flags: u32,
    pub max_msg_sz: u32,
    pub bad_pkey_cntr: u32,
    pub qkey_viol_cntr: u32,
    pub pkey_tbl_len: u16,
    pub lid: u16,
    pub sm_lid: u16,
    pub lmc: u8,
    pub max_vl_num: u8,
    pub sm_sl: u8,
    pub subnet_timeout: u8,
    pub init_type_reply: u8,
    pub active_width: u8,
    pub active_speed: u8,
    pub phys_state: u8,
    pub link_layer: u8,
    pub flags: u8,
    pub port_cap_flags2: u16,
    pub active_speed_ex: u32,
}
const _: () = assert!(size_of::<ibv_port_attr>() == 56);
const _: () = assert!(std::mem::offset_of!(ibv_port_attr, lid) == 34);
const _: () = assert!(std::mem::offset_of!(ibv_port_attr, link_layer) == 46);

/// `union ibv_gid` — 16 bytes, 8-aligned (it holds two `__be64`).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ibv_gid {
    pub raw: [u8; 16],
}
const _: () = assert!(size_of::<ibv_gid>() == 16);

/// `struct ibv_global_route` — 24 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ibv_global_route {
    pub dgid: ibv_gid,
    pub flow_label: u32,
    pub sgid_index: u8,
    pub hop_limit: u8,
    pub traffic_class: u8,
}
const _: () = assert!(size_of::<ibv_global_route>() == 24);

/// `struct ibv_ah_attr` — 32 bytes; dlid at 24.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ibv_ah_attr {
    pub grh: ibv_global_route,
    pub dlid: u16,
    pub sl: u8,
    pub src_path_bits: u8,
    pub static_rate: u8,
    pub is_global: u8,
    pub port_num: u8,
}
const _: () = assert!(size_of::<ibv_ah_attr>() == 32);
const _: () = assert!(std::mem::offset_of!(ibv_ah_attr, dlid) == 24);

/// `struct ibv_qp_cap` — 20 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ibv_qp_cap {
    pub max_send_wr: u32,
    pub max_recv_wr: u32,
    pub max_send_sge: u32,
    pub max_recv_sge: u32,
    pub max_inline_data: u32,
}

/// `struct ibv_qp_init_attr` — 64 bytes; cap at 32, qp_type at 52, sq_sig_all at 56.
#[repr(C)]
pub struct ibv_qp_init_attr {
    pub qp_context: *mut c_void,
    pub send_cq: *mut ibv_cq,
    pub recv_cq: *mut ibv_cq,
    pub srq: *mut ibv_srq,
    pub cap: ibv_qp_cap,
    pub qp_type: u32,
    pub sq_sig_all: c_int,
}
const _: () = assert!(size_of::<ibv_qp_init_attr>() == 64);
const _: () = assert!(std::mem::offset_of!(ibv_qp_init_attr, qp_type) == 52);

/// `struct ibv_qp_attr` — 144 bytes; dest_qp_num at 28, cap at 36, ah_attr at 56, alt_ah_attr at
/// 88, pkey_index at 120, max_rd_atomic at 126, rate_limit at 136.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ibv_qp_attr {
    pub qp_state: u32,
    pub cur_qp_state: u32,
    pub path_mtu: u32,
    pub path_mig_state: u32,
    pub qkey: u32,
    pub rq_psn: u32,
    pub sq_psn: u32,
    pub dest_qp_num: u32,
    pub qp_access_flags: u32,
    pub cap: ibv_qp_cap,
    pub ah_attr: ibv_ah_attr,
    pub alt_ah_attr: ibv_ah_attr,
    pub pkey_index: u16,
    pub alt_pkey_index: u16,
    pub en_sqd_async_notify: u8,
    pub sq_draining: u8,
    pub max_rd_atomic: u8,
    pub max_dest_rd_atomic: u8,
    pub min_rnr_timer: u8,
    pub port_num: u8,
    pub timeout: u8,
    pub retry_cnt: u8,
    pub rnr_retry: u8,
    pub alt_port_num: u8,
    pub alt_timeout: u8,
    pub rate_limit: u32,
}
const _: () = assert!(size_of::<ibv_qp_attr>() == 144);
const _: () = assert!(std::mem::offset_of!(ibv_qp_attr, ah_attr) == 56);
const _: () = assert!(std::mem::offset_of!(ibv_qp_attr, pkey_index) == 120);
const _: () = assert!(std::mem::offset_of!(ibv_qp_attr, max_rd_atomic) == 126);
const _: () = assert!(std::mem::offset_of!(ibv_qp_attr, rate_limit) == 136);

/// `struct ibv_sge` — 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ibv_sge {
    pub addr: u64,
    pub length: u32,
    pub lkey: u32,
}
const _: () = assert!(size_of::<ibv_sge>() == 16);

/// The `wr` union of `struct ibv_send_wr` (largest member `atomic`: 32 bytes). We only use `rdma`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ibv_send_wr_wr {
    pub remote_addr: u64,
    pub rkey: u32,
    _atomic_tail: [u32; 5],
}

/// `struct ibv_send_wr` — 128 bytes; opcode at 28, send_flags at 32, imm_data at 36, wr at 40,
/// qp_type at 72, bind_mw/tso union at 80 (48 bytes).
#[repr(C)]
pub struct ibv_send_wr {
    pub wr_id: u64,
    pub next: *mut ibv_send_wr,
    pub sg_list: *mut ibv_sge,
    pub num_sge: c_int,
    pub opcode: u32,
    pub send_flags: u32,
    /// Network byte order.
    pub imm_data: u32,
    pub wr: ibv_send_wr_wr,
    pub qp_type_xrc_remote_srqn: u32,
    _bind_mw_or_tso: [u64; 6],
}
const _: () = assert!(size_of::<ibv_send_wr>() == 128);
const _: () = assert!(std::mem::offset_of!(ibv_send_wr, imm_data) == 36);
const _: () = assert!(std::mem::offset_of!(ibv_send_wr, wr) == 40);
const _: () = assert!(std::mem::offset_of!(ibv_send_wr, qp_type_xrc_remote_srqn) == 72);
const _: () = assert!(std::mem::offset_of!(ibv_send_wr, _bind_mw_or_tso) == 80);

/// `struct ibv_recv_wr` — 32 bytes.
#[repr(C)]
pub struct ibv_recv_wr {
    pub wr_id: u64,
    pub next: *mut ibv_recv_wr,
    pub sg_list: *mut ibv_sge,
    pub num_sge: c_int,
}
const _: () = assert!(size_of::<ibv_recv_wr>() == 32);

/// `struct ibv_wc` — 48 bytes; status at 8, opcode at 12, byte_len at 20, imm_data at 24,
/// qp_num at 28, wc_flags at 36, sl at 44.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ibv_wc {
    pub wr_id: u64,
    pub status: u32,
    pub opcode: u32,
    pub vendor_err: u32,
    pub byte_len: u32,
    /// Network byte order.
    pub imm_data: u32,
    pub qp_num: u32,
    pub src_qp: u32,
    pub wc_flags: u32,
    pub pkey_index: u16,
    pub slid: u16,
    pub sl: u8,
    pub dlid_path_bits: u8,
}
const _: () = assert!(size_of::<ibv_wc>() == 48);
const _: () = assert!(std::mem::offset_of!(ibv_wc, imm_data) == 24);
const _: () = assert!(std::mem::offset_of!(ibv_wc, wc_flags) == 36);
const _: () = assert!(std::mem::offset_of!(ibv_wc, sl) == 44);

/// `struct ibv_mr` — 48 bytes; lkey at 36, rkey at 40.
#[repr(C)]
pub struct ibv_mr {
    pub context: *mut ibv_context,
    pub pd: *mut ibv_pd,
    pub addr: *mut c_void,
    pub length: usize,
    pub handle: u32,
    pub lkey: u32,
    pub rkey: u32,
}
const _: () = assert!(size_of::<ibv_mr>() == 48);
const _: () = assert!(std::mem::offset_of!(ibv_mr, rkey) == 40);

/// `struct ibv_qp` — 160 bytes; qp_num at 52, mutex at 64, events_completed at 152.
#[repr(C)]
pub struct ibv_qp {
    pub context: *mut ibv_context,
    pub qp_context: *mut c_void,
    pub pd: *mut ibv_pd,
    pub send_cq: *mut ibv_cq,
    pub recv_cq: *mut ibv_cq,
    pub srq: *mut ibv_srq,
    pub handle: u32,
    pub qp_num: u32,
    pub state: u32,
    pub qp_type: u32,
    pub mutex: libc::pthread_mutex_t,
    pub cond: libc::pthread_cond_t,
    pub events_completed: u32,
}
const _: () = assert!(size_of::<ibv_qp>() == 160);
const _: () = assert!(std::mem::offset_of!(ibv_qp, qp_num) == 52);
const _: () = assert!(std::mem::offset_of!(ibv_qp, events_completed) == 152);

/// `struct ibv_cq` — 128 bytes.
#[repr(C)]
pub struct ibv_cq {
    pub context: *mut ibv_context,
    pub channel: *mut ibv_comp_channel,
    pub cq_context: *mut c_void,
    pub handle: u32,
    pub cqe: c_int,
    pub mutex: libc::pthread_mutex_t,
    pub cond: libc::pthread_cond_t,
    pub comp_events_completed: u32,
    pub async_events_completed: u32,
}
const _: () = assert!(size_of::<ibv_cq>() == 128);

// ---------------------------------------------------------------------------------------------
// The run-time loaded library
// ---------------------------------------------------------------------------------------------

/// Entry points of libibverbs, resolved with `dlsym`.
pub struct Verbs {
    get_device_list: unsafe extern "C" fn(*mut c_int) -> *mut *mut ibv_device,
    free_device_list: unsafe extern "C" fn(*mut *mut ibv_device),
    get_device_name: unsafe extern "C" fn(*mut ibv_device) -> *const c_char,
    open_device: unsafe extern "C" fn(*mut ibv_device) -> *mut ibv_context,
    close_device: unsafe extern "C" fn(*mut ibv_context) -> c_int,
    query_port: unsafe extern "C" fn(*mut ibv_context, u8, *mut ibv_port_attr) -> c_int,
    query_gid: unsafe extern "C" fn(*mut ibv_context, u8, c_int, *mut ibv_gid) -> c_int,
    alloc_pd: unsafe extern "C" fn(*mut ibv_context) -> *mut ibv_pd,
    dealloc_pd: unsafe extern "C" fn(*mut ibv_pd) -> c_int,
    reg_mr: unsafe extern "C" fn(*mut ibv_pd, *mut c_void, usize, c_int) -> *mut ibv_mr,
    /// rdma-core >= 34 (IBVERBS_1.12); absent on older installations.
    reg_dmabuf_mr: Option<unsafe extern "C" fn(*mut ibv_pd, u64, usize, u64, c_int, c_int) -> *mut ibv_mr>,
    dereg_mr: unsafe extern "C" fn(*mut ibv_mr) -> c_int,
    create_cq: unsafe extern "C" fn(*mut ibv_context, c_int, *mut c_void, *mut ibv_comp_channel, c_int) -> *mut ibv_cq,
    destroy_cq: unsafe extern "C" fn(*mut ibv_cq) -> c_int,
    create_qp: unsafe extern "C" fn(*mut ibv_pd, *mut ibv_qp_init_attr) -> *mut ibv_qp,
    modify_qp: unsafe extern "C" fn(*mut ibv_qp, *mut ibv_qp_attr, c_int) -> c_int,
    destroy_qp: unsafe extern "C" fn(*mut ibv_qp) -> c_int,
}

/// Why the library could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoadError {
    NotFound(String),
    MissingSymbol(&'static str),
}

fn dlerror_string() -> String {
    // SAFETY: dlerror returns NULL or a pointer to a NUL-terminated thread-local string that stays
    // valid until the next dl* call on this thread; we copy it immediately.
    unsafe {
        let e = libc::dlerror();
        if e.is_null() {
            "unknown dlopen error".into()
        } else {
            CStr::from_ptr(e).to_string_lossy().into_owned()
        }
    }
}

/// `dlopen(name, RTLD_NOW | RTLD_LOCAL)`; the handle is never closed (process lifetime).
fn open_library(name: &str) -> Result<*mut c_void, String> {
    let c = CString::new(name).map_err(|e| e.to_string())?;
    // SAFETY: `c` is a valid NUL-terminated string; dlopen has no other preconditions.
    let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if h.is_null() {
        Err(dlerror_string())
    } else {
        Ok(h)
    }
}

fn symbol(handle: *mut c_void, name: &'static str) -> Option<*mut c_void> {
    let c = CString::new(name).ok()?;
    // SAFETY: `handle` came from a successful dlopen and is never closed; `c` is NUL-terminated.
    let p = unsafe { libc::dlsym(handle, c.as_ptr()) };
    (!p.is_null()).then_some(p)
}

/// Reinterprets a `dlsym` result as the function pointer type `F`.
///
/// # Safety
/// `p` must be a non-null function whose C signature is exactly `F`.
unsafe fn fn_ptr<F: Copy>(p: *mut c_void) -> F {
    assert_eq!(size_of::<F>(), size_of::<*mut c_void>(), "not a plain function pointer type");
    // SAFETY: sizes are equal (checked above) and the caller guarantees the signature; function and
    // data pointers share one representation on every Linux target.
    unsafe { std::mem::transmute_copy::<*mut c_void, F>(&p) }
}

macro_rules! load {
    ($h:expr, $name:literal) => {{
        let p = symbol($h, $name).ok_or(LoadError::MissingSymbol($name))?;
        // SAFETY: the symbol comes from libibverbs and has the C signature declared for this field
        // in `Verbs` (copied from verbs.h).
        unsafe { fn_ptr(p) }
    }};
}

impl Verbs {
    fn load_from(name: &str) -> Result<Verbs, LoadError> {
        let h = open_library(name).map_err(LoadError::NotFound)?;
        let reg_dmabuf_mr = symbol(h, "ibv_reg_dmabuf_mr").map(|p| {
            // SAFETY: as in `load!`: the exported function has exactly this signature in verbs.h.
            unsafe { fn_ptr::<unsafe extern "C" fn(*mut ibv_pd, u64, usize, u64, c_int, c_int) -> *mut ibv_mr>(p) }
        });
        Ok(Verbs {
            get_device_list: load!(h, "ibv_get_device_list"),
            free_device_list: load!(h, "ibv_free_device_list"),
            get_device_name: load!(h, "ibv_get_device_name"),
            open_device: load!(h, "ibv_open_device"),
            close_device: load!(h, "ibv_close_device"),
            query_port: load!(h, "ibv_query_port"),
            query_gid: load!(h, "ibv_query_gid"),
            alloc_pd: load!(h, "ibv_alloc_pd"),
            dealloc_pd: load!(h, "ibv_dealloc_pd"),
            reg_mr: load!(h, "ibv_reg_mr"),
            reg_dmabuf_mr,
            dereg_mr: load!(h, "ibv_dereg_mr"),
            create_cq: load!(h, "ibv_create_cq"),
            destroy_cq: load!(h, "ibv_destroy_cq"),
            create_qp: load!(h, "ibv_create_qp"),
            modify_qp: load!(h, "ibv_modify_qp"),
            destroy_qp: load!(h, "ibv_destroy_qp"),
        })
    }
}

/// The library name we look for (`CHORUS_IBVERBS_LIB` overrides it, e.g. for a non-standard
/// install path).
pub fn library_name() -> String {
    std::env::var("CHORUS_IBVERBS_LIB").unwrap_or_else(|_| "libibverbs.so.1".to_string())
}

/// libibverbs, loaded once per process.
pub fn verbs() -> Result<&'static Verbs, LoadError> {
    static LIB: OnceLock<Result<Verbs, LoadError>> = OnceLock::new();
    LIB.get_or_init(|| Verbs::load_from(&library_name())).as_ref().map_err(|e| e.clone())
}

fn errno_string() -> String {
    std::io::Error::last_os_error().to_string()
}

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

// ---------------------------------------------------------------------------------------------
// GPU memory: dma-buf export through the CUDA driver (loaded at run time as well)
// ---------------------------------------------------------------------------------------------

/// `CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD`.
const CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD: c_int = 1;

struct Cuda {
    get_address_range: unsafe extern "C" fn(*mut u64, *mut usize, u64) -> c_int,
    get_handle_for_address_range: unsafe extern "C" fn(*mut c_void, u64, usize, c_int, u64) -> c_int,
}

fn cuda() -> Result<&'static Cuda, String> {
    static LIB: OnceLock<Result<Cuda, String>> = OnceLock::new();
    LIB.get_or_init(|| {
        let h = open_library("libcuda.so.1")?;
        let a = symbol(h, "cuMemGetAddressRange_v2").ok_or("libcuda has no cuMemGetAddressRange_v2")?;
        let b = symbol(h, "cuMemGetHandleForAddressRange").ok_or("libcuda has no cuMemGetHandleForAddressRange (driver >= 515 needed)")?;
        // SAFETY: both symbols have these C signatures in cuda.h (CUdeviceptr = u64, size_t,
        // CUmemRangeHandleType = int, unsigned long long flags).
        unsafe {
            Ok(Cuda {
                get_address_range: fn_ptr::<unsafe extern "C" fn(*mut u64, *mut usize, u64) -> c_int>(a),
                get_handle_for_address_range: fn_ptr::<unsafe extern "C" fn(*mut c_void, u64, usize, c_int, u64) -> c_int>(b),
            })
        }
    })
    .as_ref()
    .map_err(|e| e.clone())
}

/// The allocation containing device pointer `ptr`: (base, len) from `cuMemGetAddressRange`
/// (docs/design.md invariant 2: register the allocation, not the pointer). Needs a current CUDA context.
pub fn cuda_allocation_of(ptr: u64) -> Result<(u64, usize), String> {
    let c = cuda()?;
    let (mut base, mut len) = (0u64, 0usize);
    // SAFETY: out-pointers are valid; the driver validates `ptr`.
    let rc = unsafe { (c.get_address_range)(&mut base, &mut len, ptr) };
    if rc != 0 {
        return Err(format!("cuMemGetAddressRange({ptr:#x}) failed with CUresult {rc}"));
    }
    Ok((base, len))
}

/// Exports `[base, base+len)` of device memory as a dma-buf fd (the caller closes it after
/// registering). `base`/`len` must be page aligned: pass the allocation base and size.
pub fn cuda_dmabuf_fd(base: u64, len: usize) -> Result<i32, String> {
    let c = cuda()?;
    let mut fd: c_int = -1;
    // SAFETY: `fd` is a valid out-pointer for an int handle; the driver validates the range.
    let rc = unsafe { (c.get_handle_for_address_range)(&mut fd as *mut c_int as *mut c_void, base, len, CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD, 0) };
    if rc != 0 {
        return Err(format!("cuMemGetHandleForAddressRange({base:#x}, {len}) failed with CUresult {rc}"));
    }
    Ok(fd)
}

/// Closes a file descriptor we own (a dma-buf fd after registration).
pub fn close_fd(fd: i32) {
    // SAFETY: the caller owns `fd` and never uses it again.
    unsafe { libc::close(fd) };
}
