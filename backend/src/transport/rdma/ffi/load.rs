//! libibverbs, opened at run time (`dlopen`/`dlsym`; `CHORUS_IBVERBS_LIB` overrides the name), so a
//! binary runs (and falls back to shm/tcp) where rdma-core is not installed.
use super::abi::*;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::mem::size_of;
use std::sync::OnceLock;

// ---------------------------------------------------------------------------------------------
// The run-time loaded library
// ---------------------------------------------------------------------------------------------

/// Entry points of libibverbs, resolved with `dlsym`.
pub struct Verbs {
    pub(super) get_device_list: unsafe extern "C" fn(*mut c_int) -> *mut *mut ibv_device,
    pub(super) free_device_list: unsafe extern "C" fn(*mut *mut ibv_device),
    pub(super) get_device_name: unsafe extern "C" fn(*mut ibv_device) -> *const c_char,
    pub(super) open_device: unsafe extern "C" fn(*mut ibv_device) -> *mut ibv_context,
    pub(super) close_device: unsafe extern "C" fn(*mut ibv_context) -> c_int,
    pub(super) query_port: unsafe extern "C" fn(*mut ibv_context, u8, *mut ibv_port_attr) -> c_int,
    pub(super) query_gid: unsafe extern "C" fn(*mut ibv_context, u8, c_int, *mut ibv_gid) -> c_int,
    pub(super) alloc_pd: unsafe extern "C" fn(*mut ibv_context) -> *mut ibv_pd,
    pub(super) dealloc_pd: unsafe extern "C" fn(*mut ibv_pd) -> c_int,
    pub(super) reg_mr: unsafe extern "C" fn(*mut ibv_pd, *mut c_void, usize, c_int) -> *mut ibv_mr,
    /// rdma-core >= 34 (IBVERBS_1.12); absent on older installations.
    pub(super) reg_dmabuf_mr: Option<unsafe extern "C" fn(*mut ibv_pd, u64, usize, u64, c_int, c_int) -> *mut ibv_mr>,
    pub(super) dereg_mr: unsafe extern "C" fn(*mut ibv_mr) -> c_int,
    pub(super) create_cq: unsafe extern "C" fn(*mut ibv_context, c_int, *mut c_void, *mut ibv_comp_channel, c_int) -> *mut ibv_cq,
    pub(super) destroy_cq: unsafe extern "C" fn(*mut ibv_cq) -> c_int,
    pub(super) create_qp: unsafe extern "C" fn(*mut ibv_pd, *mut ibv_qp_init_attr) -> *mut ibv_qp,
    pub(super) modify_qp: unsafe extern "C" fn(*mut ibv_qp, *mut ibv_qp_attr, c_int) -> c_int,
    pub(super) destroy_qp: unsafe extern "C" fn(*mut ibv_qp) -> c_int,
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

pub(super) fn errno_string() -> String {
    std::io::Error::last_os_error().to_string()
}
