//! The libibverbs ABI as this crate uses it: enum values and `#[repr(C)]` structures copied field by
//! field, in order, from rdma-core's `libibverbs/verbs.h` (rdma-core v55), each structure we allocate
//! or read with a compile-time size (and key offset) check against what a C compiler reports for that
//! header (x86_64 and aarch64 Linux, LP64).
#![allow(non_camel_case_types)]

use std::ffi::{c_int, c_void};
use std::mem::size_of;

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
    pub(super) _compat_query_device: Fp,
    pub(super) _compat_query_port: Fp,
    pub(super) _compat_alloc_pd: Fp,
    pub(super) _compat_dealloc_pd: Fp,
    pub(super) _compat_reg_mr: Fp,
    pub(super) _compat_rereg_mr: Fp,
    pub(super) _compat_dereg_mr: Fp,
    alloc_mw: Fp,
    bind_mw: Fp,
    dealloc_mw: Fp,
    pub(super) _compat_create_cq: Fp,
    pub poll_cq: Option<unsafe extern "C" fn(*mut ibv_cq, c_int, *mut ibv_wc) -> c_int>,
    pub req_notify_cq: Option<unsafe extern "C" fn(*mut ibv_cq, c_int) -> c_int>,
    pub(super) _compat_cq_event: Fp,
    pub(super) _compat_resize_cq: Fp,
    pub(super) _compat_destroy_cq: Fp,
    pub(super) _compat_create_srq: Fp,
    pub(super) _compat_modify_srq: Fp,
    pub(super) _compat_query_srq: Fp,
    pub(super) _compat_destroy_srq: Fp,
    post_srq_recv: Fp,
    pub(super) _compat_create_qp: Fp,
    pub(super) _compat_query_qp: Fp,
    pub(super) _compat_modify_qp: Fp,
    pub(super) _compat_destroy_qp: Fp,
    pub post_send: Option<unsafe extern "C" fn(*mut ibv_qp, *mut ibv_send_wr, *mut *mut ibv_send_wr) -> c_int>,
    pub post_recv: Option<unsafe extern "C" fn(*mut ibv_qp, *mut ibv_recv_wr, *mut *mut ibv_recv_wr) -> c_int>,
    pub(super) _compat_create_ah: Fp,
    pub(super) _compat_destroy_ah: Fp,
    pub(super) _compat_attach_mcast: Fp,
    pub(super) _compat_detach_mcast: Fp,
    pub(super) _compat_async_event: Fp,
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
    pub(super) _atomic_tail: [u32; 5],
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
    pub(super) _bind_mw_or_tso: [u64; 6],
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
