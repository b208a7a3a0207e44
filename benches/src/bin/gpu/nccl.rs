//! NCCL for side-by-side numbers: `libnccl.so.2` (the soname torch and the system ship; cudarc does not
//! look for it) opened at run time with `dlopen`, the handful of entry points the benchmark calls looked
//! up with `dlsym`. The only `unsafe` code of the GPU benchmark.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void, CStr, CString};

/// `ncclUniqueId`: 128 opaque bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UniqueId(pub [u8; 128]);

type Comm = *mut c_void;
type Stream = *mut c_void;

/// ncclDataType_t values.
pub const NCCL_FLOAT32: c_int = 7;
pub const NCCL_BFLOAT16: c_int = 9;
/// ncclRedOp_t sum.
pub const NCCL_SUM: c_int = 0;

struct Api {
    get_unique_id: unsafe extern "C" fn(*mut UniqueId) -> c_int,
    comm_init_rank: unsafe extern "C" fn(*mut Comm, c_int, UniqueId, c_int) -> c_int,
    comm_destroy: unsafe extern "C" fn(Comm) -> c_int,
    get_error_string: unsafe extern "C" fn(c_int) -> *const c_char,
    all_reduce: unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, Comm, Stream) -> c_int,
    broadcast: unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, Comm, Stream) -> c_int,
    all_gather: unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, Comm, Stream) -> c_int,
    reduce_scatter: unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, Comm, Stream) -> c_int,
    send: unsafe extern "C" fn(*const c_void, usize, c_int, c_int, Comm, Stream) -> c_int,
    recv: unsafe extern "C" fn(*mut c_void, usize, c_int, c_int, Comm, Stream) -> c_int,
    group_start: unsafe extern "C" fn() -> c_int,
    group_end: unsafe extern "C" fn() -> c_int,
}

/// An opened NCCL library.
pub struct Nccl {
    api: Api,
}

/// One NCCL communicator (destroyed on drop).
pub struct NcclComm<'a> {
    nccl: &'a Nccl,
    comm: Comm,
    world: usize,
}

fn sym<T: Copy>(lib: *mut c_void, name: &str) -> Result<T, String> {
    let c = CString::new(name).unwrap();
    // SAFETY: `lib` is a live dlopen handle; dlsym only looks the name up.
    let p = unsafe { libc::dlsym(lib, c.as_ptr()) };
    if p.is_null() {
        return Err(format!("{name} not found in libnccl"));
    }
    assert_eq!(std::mem::size_of::<T>(), std::mem::size_of::<*mut c_void>());
    // SAFETY: T is an `extern "C" fn` pointer type whose signature matches NCCL's declaration of `name`
    // (nccl.h, NCCL 2.x); function and data pointers have the same size here (asserted).
    Ok(unsafe { std::mem::transmute_copy::<*mut c_void, T>(&p) })
}

impl Nccl {
    /// Opens `path` (default `libnccl.so.2`, or `CHORUS_NCCL_LIB`).
    pub fn open() -> Result<Nccl, String> {
        let path = std::env::var("CHORUS_NCCL_LIB").unwrap_or_else(|_| "libnccl.so.2".into());
        let c = CString::new(path.clone()).unwrap();
        // SAFETY: dlopen of a shared library by name; NCCL's initializers have no preconditions.
        let lib = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if lib.is_null() {
            return Err(format!("dlopen({path}) failed; set CHORUS_NCCL_LIB to libnccl.so.2's path"));
        }
        Ok(Nccl {
            api: Api {
                get_unique_id: sym(lib, "ncclGetUniqueId")?,
                comm_init_rank: sym(lib, "ncclCommInitRank")?,
                comm_destroy: sym(lib, "ncclCommDestroy")?,
                get_error_string: sym(lib, "ncclGetErrorString")?,
                all_reduce: sym(lib, "ncclAllReduce")?,
                broadcast: sym(lib, "ncclBroadcast")?,
                all_gather: sym(lib, "ncclAllGather")?,
                reduce_scatter: sym(lib, "ncclReduceScatter")?,
                send: sym(lib, "ncclSend")?,
                recv: sym(lib, "ncclRecv")?,
                group_start: sym(lib, "ncclGroupStart")?,
                group_end: sym(lib, "ncclGroupEnd")?,
            },
        })
    }

    fn check(&self, what: &str, rc: c_int) -> Result<(), String> {
        if rc == 0 {
            return Ok(());
        }
        // SAFETY: NCCL returns a static NUL-terminated string for any code.
        let msg = unsafe { CStr::from_ptr((self.api.get_error_string)(rc)) }.to_string_lossy().to_string();
        Err(format!("{what} failed: {msg} ({rc})"))
    }

    pub fn unique_id(&self) -> Result<UniqueId, String> {
        let mut id = UniqueId([0; 128]);
        // SAFETY: writes 128 bytes into `id`.
        self.check("ncclGetUniqueId", unsafe { (self.api.get_unique_id)(&mut id) })?;
        Ok(id)
    }

    /// `ncclCommInitRank` on the current device (the caller binds its context first).
    pub fn comm(&self, world: usize, id: UniqueId, rank: usize) -> Result<NcclComm<'_>, String> {
        let mut comm: Comm = std::ptr::null_mut();
        // SAFETY: writes one handle; `id` is passed by value.
        self.check("ncclCommInitRank", unsafe { (self.api.comm_init_rank)(&mut comm, world as c_int, id, rank as c_int) })?;
        Ok(NcclComm { nccl: self, comm, world })
    }
}

/// The operations the benchmark times. Every pointer is device memory of the communicator's device,
/// valid for the sizes the call implies, and `stream` a live stream of that device: the caller (the
/// benchmark, which allocates all buffers at the largest size) guarantees it.
impl NcclComm<'_> {
    fn s(stream: usize) -> Stream {
        stream as Stream
    }

    pub fn all_reduce(&self, src: u64, dst: u64, count: usize, dtype: c_int, stream: usize) -> Result<(), String> {
        // SAFETY: see the impl comment.
        let rc = unsafe { (self.nccl.api.all_reduce)(src as _, dst as _, count, dtype, NCCL_SUM, self.comm, Self::s(stream)) };
        self.nccl.check("ncclAllReduce", rc)
    }

    pub fn broadcast(&self, src: u64, dst: u64, count: usize, dtype: c_int, root: usize, stream: usize) -> Result<(), String> {
        // SAFETY: see the impl comment.
        let rc = unsafe { (self.nccl.api.broadcast)(src as _, dst as _, count, dtype, root as c_int, self.comm, Self::s(stream)) };
        self.nccl.check("ncclBroadcast", rc)
    }

    pub fn all_gather(&self, src: u64, dst: u64, count: usize, dtype: c_int, stream: usize) -> Result<(), String> {
        // SAFETY: see the impl comment.
        let rc = unsafe { (self.nccl.api.all_gather)(src as _, dst as _, count, dtype, self.comm, Self::s(stream)) };
        self.nccl.check("ncclAllGather", rc)
    }

    pub fn reduce_scatter(&self, src: u64, dst: u64, count: usize, dtype: c_int, stream: usize) -> Result<(), String> {
        // SAFETY: see the impl comment.
        let rc = unsafe { (self.nccl.api.reduce_scatter)(src as _, dst as _, count, dtype, NCCL_SUM, self.comm, Self::s(stream)) };
        self.nccl.check("ncclReduceScatter", rc)
    }

    /// all_to_all as nccl-tests does it: one grouped send and receive per peer.
    pub fn all_to_all(&self, src: u64, dst: u64, count: usize, dtype: c_int, esz: usize, stream: usize) -> Result<(), String> {
        let bytes = (count * esz) as u64;
        // SAFETY: see the impl comment; group calls bracket the sends and receives.
        unsafe {
            self.nccl.check("ncclGroupStart", (self.nccl.api.group_start)())?;
            for p in 0..self.world {
                let off = p as u64 * bytes;
                self.nccl.check("ncclSend", (self.nccl.api.send)((src + off) as _, count, dtype, p as c_int, self.comm, Self::s(stream)))?;
                self.nccl.check("ncclRecv", (self.nccl.api.recv)((dst + off) as _, count, dtype, p as c_int, self.comm, Self::s(stream)))?;
            }
            self.nccl.check("ncclGroupEnd", (self.nccl.api.group_end)())
        }
    }
}

impl Drop for NcclComm<'_> {
    fn drop(&mut self) {
        // SAFETY: the handle came from ncclCommInitRank and is destroyed once.
        let _ = unsafe { (self.nccl.api.comm_destroy)(self.comm) };
    }
}
