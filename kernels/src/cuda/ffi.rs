//! The only `unsafe` code of `chorus-kernels`: the few CUDA calls that cudarc's safe API does not cover
//! (raw kernel launches with a by-value argument struct, raw-pointer copies that must bypass cudarc's
//! per-buffer event tracking, library presence probes, the module loading mode query).
#![allow(unsafe_code)]

use cudarc::driver::{result, sys, CudaFunction, CudaStream, DevicePtr, DevicePtrMut, DriverError};

/// Kernel parameter of every reduce kernel; layout matches `struct ReduceArgs` in the CUDA source.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ReduceArgs {
    pub src: [u64; super::MAX_SRCS],
    pub dst: u64,
    pub count: u64,
    pub nsrc: u32,
    pub pad: u32,
}

/// Whether cudarc can dlopen libnvrtc (it tries the same names as when it loads it).
pub(crate) fn nvrtc_library_present() -> bool {
    // SAFETY: this only dlopens/dlcloses the candidate libraries (running their initializers, which for
    // the NVIDIA libraries have no preconditions); no symbol is called.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Whether cudarc can dlopen libcuda (the driver alone, without NVRTC).
pub(crate) fn driver_library_present() -> bool {
    // SAFETY: as in `nvrtc_library_present`: dlopen/dlclose of the candidate names only, no symbol called.
    unsafe { sys::is_culib_present() }
}

/// Launches `func` (a reduce kernel of this crate's module) on `stream`.
///
/// # Safety
/// Every pointer in `args` (the first `nsrc` sources and `dst`) must be device memory of `stream`'s
/// context valid for `count` elements of the kernel's dtype, stay valid until the kernel completes,
/// and `dst` must not be written concurrently by anything else. `func` must take one `ReduceArgs`.
pub(crate) unsafe fn launch_reduce(
    func: &CudaFunction,
    stream: &CudaStream,
    grid: u32,
    block: u32,
    args: &ReduceArgs,
) -> Result<(), DriverError> {
    stream.context().bind_to_thread()?;
    let mut a = *args;
    let mut params = [&mut a as *mut ReduceArgs as *mut std::ffi::c_void];
    // SAFETY: the kernel takes exactly one parameter of type ReduceArgs (same layout, repr(C)); the
    // driver copies the parameter buffer at launch, so the local `a` may go away afterwards; pointer
    // validity is the caller's contract.
    unsafe {
        result::launch_kernel(func.cu_function(), (grid, 1, 1), (block, 1, 1), 0, stream.cu_stream(), &mut params)
    }
}

/// Raw launch of a reduce kernel over buffers whose pointers come from cudarc's `DevicePtr` guards.
pub(crate) fn launch_reduce_slices<D: DevicePtrMut<u8>, S: DevicePtr<u8>>(
    func: &CudaFunction,
    stream: &CudaStream,
    grid: u32,
    block: u32,
    dst: &mut D,
    srcs: &[&S],
    count: usize,
) -> Result<(), DriverError> {
    let mut args = ReduceArgs { count: count as u64, nsrc: srcs.len() as u32, ..Default::default() };
    // The guards make later work on these buffers (through cudarc) wait for this launch, and this
    // launch wait for earlier writes to them; they are dropped after the launch is enqueued.
    let mut guards = Vec::with_capacity(srcs.len());
    for (slot, s) in args.src.iter_mut().zip(srcs) {
        let (p, g) = s.device_ptr(stream);
        *slot = p;
        guards.push(g);
    }
    let (d, _dg) = dst.device_ptr_mut(stream);
    args.dst = d;
    // SAFETY: `plan` checked the stream's context, 1..=8 sources and the kernel; `reduce` checked that
    // every buffer holds at least `count` elements; the pointers come from live cudarc buffers borrowed
    // for this call (and cudarc frees them stream-ordered, after this kernel); `dst` is borrowed
    // mutably, so it is not one of the shared-borrowed sources.
    unsafe { launch_reduce(func, stream, grid, block, &args) }
}

impl super::DeviceKernels {
    /// [`DeviceKernels::reduce`](super::DeviceKernels::reduce) on raw device addresses (registered or
    /// IPC-mapped memory that is not a cudarc buffer).
    ///
    /// # Safety
    /// `dst` and every `srcs[i]` must be device addresses usable from this device's context, valid for
    /// `count * dtype.size()` bytes until the kernel has completed on `stream`; `dst` may equal a source
    /// (elementwise in place is fine) but must not partially overlap one.
    pub unsafe fn reduce_raw(
        &self,
        stream: &CudaStream,
        dtype: crate::DType,
        op: crate::ReduceOp,
        dst: u64,
        srcs: &[u64],
        count: usize,
    ) -> crate::Result<()> {
        let Some((f, grid, block)) = self.plan(stream, dtype, op, srcs.len(), count)? else {
            return Ok(());
        };
        let mut args = ReduceArgs { count: count as u64, nsrc: srcs.len() as u32, dst, ..Default::default() };
        args.src[..srcs.len()].copy_from_slice(srcs);
        // SAFETY: forwarded to the caller (see above); `plan` checked the rest.
        unsafe { launch_reduce(f, stream, grid, block, &args) }
            .map_err(|e| crate::KernelError::Cuda { what: "launching a reduce kernel".into(), reason: e.to_string() })
    }
}

impl super::ResidentSpinner {
    /// Launches `chorus_spin(flag, timeout_ns)` (one thread) on `stream`.
    pub(super) fn launch_raw(&self, stream: &CudaStream, timeout_ns: u64) -> Result<(), DriverError> {
        stream.context().bind_to_thread()?;
        let (mut f, mut t) = (self.flag_ptr, timeout_ns);
        let mut params = [&mut f as *mut u64 as *mut std::ffi::c_void, &mut t as *mut u64 as *mut std::ffi::c_void];
        // SAFETY: chorus_spin takes (unsigned int*, unsigned long long), both 8 bytes, copied at launch;
        // `flag_ptr` is `self.flag` (4 u32), which `Drop` keeps alive until the spinner has exited.
        unsafe {
            result::launch_kernel(self.func.cu_function(), (1, 1, 1), (1, 1, 1), 0, stream.cu_stream(), &mut params)
        }
    }

    /// Writes 1 to flag[0] with a stream-ordered copy on `stream`, bypassing cudarc's event tracking
    /// (which would make the copy wait for the running spinner, i.e. never release it).
    pub(super) fn release_raw(&self, stream: &CudaStream) -> Result<(), DriverError> {
        stream.context().bind_to_thread()?;
        let one = [1u32];
        // SAFETY: `flag_ptr` is `self.flag`, 4 u32 of device memory alive as long as `self`; `one` is
        // pageable host memory, staged by the driver before cuMemcpyHtoDAsync returns.
        unsafe { result::memcpy_htod_async(self.flag_ptr, &one, stream.cu_stream())? };
        Ok(())
    }

    /// Reads flag[0..3] with a copy on `stream` and waits for it.
    pub(super) fn read_raw(&self, stream: &CudaStream, out: &mut [u32; 3]) -> Result<(), DriverError> {
        stream.context().bind_to_thread()?;
        // SAFETY: `flag_ptr` holds 4 u32; `out` stays borrowed until the stream is synchronized below.
        unsafe { result::memcpy_dtoh_async(&mut out[..], self.flag_ptr, stream.cu_stream())? };
        stream.synchronize()
    }
}

/// The module loading mode of the current context's process (`CUDA_MODULE_LOADING`).
pub(crate) fn module_loading_lazy(stream: &CudaStream) -> Result<bool, DriverError> {
    stream.context().bind_to_thread()?;
    let mut mode = std::mem::MaybeUninit::<sys::CUmoduleLoadingMode>::uninit();
    // SAFETY: writes one enum value through a valid pointer; read only after CUDA_SUCCESS.
    unsafe {
        sys::cuModuleGetLoadingMode(mode.as_mut_ptr()).result()?;
        Ok(mode.assume_init() == sys::CUmoduleLoadingMode::CU_MODULE_LAZY_LOADING)
    }
}

// ---------------------------------------------------------------------------------------------------
// Device-memory registration and CUDA IPC (used by `super::ipc`). Each function binds nothing itself:
// callers bind the context they mean first (`CudaContext::bind_to_thread`).

/// `cuMemGetAddressRange(ptr)`: the base and size of the allocation containing `ptr` in the current
/// context (an error, e.g. `CUDA_ERROR_NOT_FOUND`, for a pointer that is no device allocation).
pub(crate) fn mem_get_address_range(ptr: u64) -> Result<(u64, usize), DriverError> {
    let (mut base, mut size): (sys::CUdeviceptr, usize) = (0, 0);
    // SAFETY: the driver only writes two scalars through valid pointers; `ptr` is a value it looks up in
    // its own allocation tables (any value is allowed; unknown ones return an error).
    unsafe { sys::cuMemGetAddressRange_v2(&mut base, &mut size, ptr).result()? };
    Ok((base, size))
}

/// `cuPointerGetAttribute(attr, ptr)` read into a `T`.
///
/// # Safety
/// `T` must be the type the driver writes for `attr` (an `int` for DEVICE_ORDINAL, an `unsigned int`
/// for MEMORY_TYPE). Any `ptr` value is allowed (unknown ones return an error).
unsafe fn pointer_attribute<T: Default>(attr: sys::CUpointer_attribute, ptr: u64) -> Result<T, DriverError> {
    let mut v = T::default();
    // SAFETY: the driver writes one `T` (the caller's contract) through a valid pointer.
    unsafe { sys::cuPointerGetAttribute(&mut v as *mut T as *mut std::ffi::c_void, attr, ptr).result()? };
    Ok(v)
}

/// `cuPointerGetAttribute(DEVICE_ORDINAL, ptr)`: the ordinal of the device `ptr` lives on.
pub(crate) fn pointer_device_ordinal(ptr: u64) -> Result<i32, DriverError> {
    // SAFETY: DEVICE_ORDINAL writes an int.
    unsafe { pointer_attribute::<std::ffi::c_int>(sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, ptr) }
}

/// `cuPointerGetAttribute(MEMORY_TYPE, ptr)`: whether `ptr` is host memory the driver knows
/// (page-locked or registered; `CU_MEMORYTYPE_HOST`), as opposed to device memory. Unknown pointers
/// (plain pageable host memory) are an error.
pub(crate) fn pointer_is_host(ptr: u64) -> Result<bool, DriverError> {
    // SAFETY: MEMORY_TYPE writes an unsigned int.
    let kind = unsafe { pointer_attribute::<std::ffi::c_uint>(sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_MEMORY_TYPE, ptr) }?;
    Ok(kind == sys::CUmemorytype::CU_MEMORYTYPE_HOST as std::ffi::c_uint)
}

/// One zeroed, page-aligned host allocation, page-locked and mapped into the device address space of
/// every context (`cuMemHostRegister(PORTABLE | DEVICEMAP)`): kernels load and store it over PCIe/C2C,
/// the host reads and writes it with plain atomics and no CUDA call. Unregistered and freed on drop.
pub(crate) struct HostMapping {
    host: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
    device: u64,
}

// SAFETY: the mapping owns its allocation; the only access from shared references goes through
// `HostMapping::word`, which hands out atomics.
unsafe impl Send for HostMapping {}
// SAFETY: as above (all shared access is atomic).
unsafe impl Sync for HostMapping {}

impl HostMapping {
    /// Allocates and registers `len` bytes (a multiple of 4096) in the current context.
    pub(crate) fn new(len: usize) -> Result<HostMapping, (&'static str, DriverError)> {
        let layout = std::alloc::Layout::from_size_align(len.max(4096), 4096).expect("a page-aligned layout of a sane size");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(host) = std::ptr::NonNull::new(raw) else { std::alloc::handle_alloc_error(layout) };
        let flags = sys::CU_MEMHOSTREGISTER_PORTABLE | sys::CU_MEMHOSTREGISTER_DEVICEMAP;
        // SAFETY: `[raw, raw + layout.size())` is a live allocation this mapping owns; it stays
        // allocated until after `cuMemHostUnregister` in `Drop`.
        if let Err(e) = unsafe { sys::cuMemHostRegister_v2(raw.cast(), layout.size(), flags) }.result() {
            // SAFETY: allocated above with `layout`, never registered, not used again.
            unsafe { std::alloc::dealloc(raw, layout) };
            return Err(("cuMemHostRegister", e));
        }
        let mut device: sys::CUdeviceptr = 0;
        // SAFETY: `raw` was registered with DEVICEMAP just above; the driver writes one scalar.
        if let Err(e) = unsafe { sys::cuMemHostGetDevicePointer_v2(&mut device, raw.cast(), 0) }.result() {
            // SAFETY: registered above, not used by any kernel yet; freed after unregistering.
            unsafe {
                let _ = sys::cuMemHostUnregister(raw.cast());
                std::alloc::dealloc(raw, layout);
            }
            return Err(("cuMemHostGetDevicePointer", e));
        }
        Ok(HostMapping { host, layout, device })
    }

    /// The host address and length (what a host-memory registry records).
    pub(crate) fn host_range(&self) -> (usize, usize) {
        (self.host.as_ptr() as usize, self.layout.size())
    }

    /// The address kernels use.
    pub(crate) fn device_ptr(&self) -> u64 {
        self.device
    }

    /// The 8-byte word at byte `offset` (a multiple of 8 inside the mapping).
    pub(crate) fn word(&self, offset: usize) -> &std::sync::atomic::AtomicU64 {
        assert!(offset.is_multiple_of(8) && offset + 8 <= self.layout.size(), "control word {offset} outside the mapping");
        // SAFETY: in bounds and 8-aligned (checked; the base is page-aligned); the allocation lives as
        // long as `self`; the device side only touches it with whole-word loads and stores, so every
        // host access being atomic keeps it race-free on the host side.
        unsafe { &*(self.host.as_ptr().add(offset) as *const std::sync::atomic::AtomicU64) }
    }
}

impl Drop for HostMapping {
    fn drop(&mut self) {
        // SAFETY: registered in `new`; owners drop this only after the kernels that use it finished
        // (`DeviceComm` synchronizes first). Errors are ignored: Drop never panics.
        unsafe {
            let _ = sys::cuMemHostUnregister(self.host.as_ptr().cast());
            std::alloc::dealloc(self.host.as_ptr(), self.layout);
        }
    }
}

/// `cuIpcGetMemHandle(base)`: the 64-byte IPC handle of the allocation at `base`.
pub(crate) fn ipc_get_mem_handle(base: u64) -> Result<[u8; 64], DriverError> {
    let mut h = std::mem::MaybeUninit::<sys::CUipcMemHandle>::uninit();
    // SAFETY: the driver fills the 64-byte handle (read only after CUDA_SUCCESS); `base` is looked up.
    let h = unsafe {
        sys::cuIpcGetMemHandle(h.as_mut_ptr(), base).result()?;
        h.assume_init()
    };
    let mut out = [0u8; 64];
    for (o, c) in out.iter_mut().zip(h.reserved.iter()) {
        *o = *c as u8;
    }
    Ok(out)
}

/// `cuIpcOpenMemHandle(handle, LAZY_ENABLE_PEER_ACCESS)`: maps another process's allocation into the
/// current context and returns the mapped base (close it with [`ipc_close_mem_handle`]).
pub(crate) fn ipc_open_mem_handle(handle: &[u8; 64]) -> Result<u64, DriverError> {
    let mut h = sys::CUipcMemHandle { reserved: [0; 64] };
    for (c, b) in h.reserved.iter_mut().zip(handle.iter()) {
        *c = *b as std::ffi::c_char;
    }
    let mut p: sys::CUdeviceptr = 0;
    // SAFETY: the handle is passed by value; the driver writes one pointer (read only after success).
    // A handle that is garbage, or this process's own, yields an error, not UB.
    unsafe {
        sys::cuIpcOpenMemHandle_v2(&mut p, h, sys::CUipcMem_flags::CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS as std::ffi::c_uint)
            .result()?
    };
    Ok(p)
}

/// `cuIpcCloseMemHandle(mapped)`.
///
/// # Safety
/// `mapped` must come from [`ipc_open_mem_handle`], be closed once, and not be used afterwards (no work
/// still in flight on it).
pub(crate) unsafe fn ipc_close_mem_handle(mapped: u64) -> Result<(), DriverError> {
    // SAFETY: forwarded to the caller.
    unsafe { sys::cuIpcCloseMemHandle(mapped).result() }
}

/// `cuMemAlloc(size)` in the current context (a plain allocation, IPC-exportable, unlike pool memory).
pub(crate) fn mem_alloc(size: usize) -> Result<u64, DriverError> {
    // SAFETY: allocates; the pointer is owned by the caller (`ipc::DeviceAllocation` frees it once).
    unsafe { result::malloc_sync(size) }
}

/// `cuMemFree(ptr)`.
///
/// # Safety
/// `ptr` comes from [`mem_alloc`], is freed once and not used afterwards.
pub(crate) unsafe fn mem_free(ptr: u64) -> Result<(), DriverError> {
    // SAFETY: forwarded to the caller.
    unsafe { result::free_sync(ptr) }
}

/// Synchronous `cuMemcpyDtoH(dst, src)`.
///
/// # Safety
/// `[src, src + dst.len())` must be device memory valid in the current context.
pub(crate) unsafe fn copy_dtoh(dst: &mut [u8], src: u64) -> Result<(), DriverError> {
    // SAFETY: `dst` is a valid, exclusively borrowed host slice; the device range is the caller's contract.
    unsafe { result::memcpy_dtoh_sync(dst, src) }
}

/// `cuMemcpyDtoHAsync(dst, src)` on `stream`, then `cuStreamSynchronize(stream)`.
///
/// # Safety
/// `[src, src + dst.len())` must be device memory valid in the current context; `stream` is a live
/// stream of it (or null).
pub(crate) unsafe fn copy_dtoh_on_stream(dst: &mut [u8], src: u64, stream: sys::CUstream) -> Result<(), DriverError> {
    // SAFETY: `dst` is a valid exclusive host slice that outlives the copy (synchronized below); the
    // device range and the stream are the caller's contract.
    unsafe {
        result::memcpy_dtoh_async(dst, src, stream)?;
        result::stream::synchronize(stream)
    }
}

/// `cuMemcpyHtoDAsync(dst, src)` on `stream`, then `cuStreamSynchronize(stream)`.
///
/// # Safety
/// `[dst, dst + src.len())` must be device memory valid in the current context; `stream` is a live
/// stream of it (or null).
pub(crate) unsafe fn copy_htod_on_stream(dst: u64, src: &[u8], stream: sys::CUstream) -> Result<(), DriverError> {
    // SAFETY: `src` outlives the copy (synchronized below); device range and stream: the caller's contract.
    unsafe {
        result::memcpy_htod_async(dst, src, stream)?;
        result::stream::synchronize(stream)
    }
}

/// Zeroes the whole workspace `ws` on `stream` (a live stream of its context) and waits for it.
pub(crate) fn workspace_zero(ws: &super::workspace::Workspace, stream: &CudaStream) -> Result<(), DriverError> {
    // SAFETY: exactly the live allocation `ws` owns, which no peer sees before this returns (it is
    // published afterwards); complete once the stream synchronization returns.
    unsafe {
        result::memset_d8_async(ws.ptr(), 0, ws.size(), stream.cu_stream())?;
        result::stream::synchronize(stream.cu_stream())
    }
}

/// Enqueues a zero fill of `bytes` at `ptr` on `stream`.
///
/// # Safety
/// `ptr` is device memory of the current context valid for `bytes` until the fill runs on `stream`, a
/// live stream of that context (or 0), and nothing else writes it meanwhile.
pub(crate) unsafe fn memset_zero_async(ptr: u64, bytes: usize, stream: sys::CUstream) -> Result<(), DriverError> {
    // SAFETY: the caller's contract.
    unsafe { result::memset_d8_async(ptr, 0, bytes, stream) }
}

/// Reads `out.len()` bytes at device address `src` of the current context. Callers (`ipc::IpcImporter`)
/// bounds-check `src` against the mapping first; host memory safety depends only on `out`.
pub(crate) fn copy_dtoh_checked(out: &mut [u8], src: u64) -> Result<(), DriverError> {
    // SAFETY: `out` is a valid exclusive host slice; an out-of-range device address makes the driver
    // return an error rather than touching host memory, and callers check the range beforehand.
    unsafe { copy_dtoh(out, src) }
}

/// Closes an IPC mapping, ignoring errors (used from `Drop`).
pub(crate) fn ipc_close_mapping(mapped: u64) {
    // SAFETY: only `IpcImporter::drop` calls this, once per mapping it opened, after removing the
    // mapping from its cache (nothing can reach it afterwards).
    let _ = unsafe { ipc_close_mem_handle(mapped) };
}

/// Writes `data` at `a.ptr() + offset` (range checked by the caller against `a.size()`) on `stream`
/// (a live stream of `a`'s context) and waits for it.
pub(crate) fn alloc_write(a: &super::ipc::DeviceAllocation, stream: &CudaStream, offset: usize, data: &[u8]) -> Result<(), DriverError> {
    assert!(offset + data.len() <= a.size());
    // SAFETY: the range lies inside the live allocation `a` (asserted above); the stream is live.
    unsafe { copy_htod_on_stream(a.ptr() + offset as u64, data, stream.cu_stream()) }
}

/// Reads `out.len()` bytes at `a.ptr() + offset` on `stream` and waits for them.
pub(crate) fn alloc_read(a: &super::ipc::DeviceAllocation, stream: &CudaStream, offset: usize, out: &mut [u8]) -> Result<(), DriverError> {
    assert!(offset + out.len() <= a.size());
    // SAFETY: the range lies inside the live allocation `a` (asserted above); the stream is live.
    unsafe { copy_dtoh_on_stream(out, a.ptr() + offset as u64, stream.cu_stream()) }
}

/// Sets every byte of `a` to `value` on `stream` and waits for it.
pub(crate) fn alloc_fill(a: &super::ipc::DeviceAllocation, stream: &CudaStream, value: u8) -> Result<(), DriverError> {
    // SAFETY: exactly the live allocation `a`; the stream is live; the memset has completed when the
    // stream synchronization returns.
    unsafe {
        result::memset_d8_async(a.ptr(), value, a.size(), stream.cu_stream())?;
        result::stream::synchronize(stream.cu_stream())
    }
}

/// Frees a `DeviceAllocation`'s pointer, ignoring errors (used from its `Drop`).
pub(crate) fn alloc_free(ptr: u64) {
    // SAFETY: only `DeviceAllocation::drop` calls this, once, with the pointer `mem_alloc` returned.
    let _ = unsafe { mem_free(ptr) };
}

// ---------------------------------------------------------------------------------------------------
// GPU collectives (used by `super::coll`).

/// Kernel parameter of every collective kernel; layout matches `struct CollArgs` in `coll_source.rs`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CollArgs {
    pub ws: [u64; 8],
    pub src: u64,
    pub dst: u64,
    pub count: u64,
    pub dst_stride: u64,
    pub slot_bytes: u64,
    pub p2p_slot: u64,
    pub staging_off: u64,
    pub p2p_off: u64,
    pub timeout_ns: u64,
    pub chunk: u64,
    pub bar_off: u64,
    pub state_off: u64,
    pub ctl: u64,
    pub send_off: [u64; 8],
    pub send_len: [u64; 8],
    pub recv_off: [u64; 8],
    pub recv_len: [u64; 8],
    pub kind: u32,
    pub rank: u32,
    pub world: u32,
    pub root: u32,
    pub avg_n: u32,
    pub pad: u32,
}

/// Launches a collective kernel on the raw stream `stream`.
///
/// # Safety
/// `stream` must be a live stream of the current context (or null for the legacy default stream);
/// every address in `args` (`ws[..world]`, `src`, `dst` with the ranges the kind implies) must be device
/// memory usable from this context until the kernel completes; `func` takes one `CollArgs`.
pub(crate) unsafe fn launch_coll(func: &CudaFunction, stream: sys::CUstream, grid: u32, block: u32, args: &CollArgs) -> Result<(), DriverError> {
    let mut a = *args;
    let mut params = [&mut a as *mut CollArgs as *mut std::ffi::c_void];
    // SAFETY: one parameter of type CollArgs (repr(C), same layout as the CUDA struct), copied by the
    // driver at launch; the pointers' validity is the caller's contract.
    unsafe { result::launch_kernel(func.cu_function(), (grid, 1, 1), (block, 1, 1), 0, stream, &mut params) }
}

/// An owned `CU_EVENT_DISABLE_TIMING` event, destroyed on drop.
pub(crate) struct Event(sys::CUevent);

// SAFETY: a CUevent is a driver object handle; the driver API accepts it from any thread, and `Event`
// only hands it to driver calls.
unsafe impl Send for Event {}

/// A new event in the current context.
pub(crate) fn event_create() -> Result<Event, DriverError> {
    result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING).map(Event)
}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: the event was created by `event_create` and is destroyed once, here.
        let _ = unsafe { result::event::destroy(self.0) };
    }
}

/// `cuEventRecord(event, stream)`.
///
/// # Safety
/// `stream` is a live stream of the event's context (or null).
pub(crate) unsafe fn event_record(event: &Event, stream: sys::CUstream) -> Result<(), DriverError> {
    // SAFETY: the event is alive (borrowed); the stream is the caller's contract.
    unsafe { result::event::record(event.0, stream) }
}

/// `cuStreamWaitEvent(stream, event)`.
///
/// # Safety
/// As [`event_record`].
pub(crate) unsafe fn stream_wait_event(stream: sys::CUstream, event: &Event) -> Result<(), DriverError> {
    // SAFETY: as event_record.
    unsafe { result::stream::wait_event(stream, event.0, sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT) }
}

/// Whether `stream` is capturing into a CUDA graph.
///
/// # Safety
/// `stream` is a live stream of the current context (or null).
pub(crate) unsafe fn stream_is_capturing(stream: sys::CUstream) -> Result<bool, DriverError> {
    let mut st = std::mem::MaybeUninit::<sys::CUstreamCaptureStatus>::uninit();
    // SAFETY: writes one enum through a valid pointer, read only after success; stream per the contract.
    unsafe {
        sys::cuStreamIsCapturing(stream, st.as_mut_ptr()).result()?;
        Ok(st.assume_init() != sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE)
    }
}

/// `cuStreamSynchronize(stream)`.
///
/// # Safety
/// `stream` is a live stream of the current context (or null).
pub(crate) unsafe fn stream_synchronize(stream: sys::CUstream) -> Result<(), DriverError> {
    // SAFETY: forwarded to the caller.
    unsafe { result::stream::synchronize(stream) }
}

// ---------------------------------------------------------------------------------------------------
// Virtual memory management: cuMemCreate-backed memory, shareable as a POSIX file descriptor or a
// fabric handle (used by `super::vmm`). Callers bind the context they mean first.

/// Where a failed VMM step went wrong: the driver call's name and its error.
pub(crate) type VmmError = (&'static str, DriverError);

/// The allocation properties of pinned device memory on `device`, exportable as `handle_type`.
pub(crate) fn vmm_prop(device: sys::CUdevice, handle_type: sys::CUmemAllocationHandleType) -> sys::CUmemAllocationProp {
    sys::CUmemAllocationProp {
        type_: sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED,
        requestedHandleTypes: handle_type,
        location: sys::CUmemLocation { type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE, id: device },
        win32HandleMetaData: std::ptr::null_mut(),
        allocFlags: sys::CUmemAllocationProp_st__bindgen_ty_1 {
            compressionType: 0,
            gpuDirectRDMACapable: 0,
            usage: 0,
            reserved: [0; 4],
        },
    }
}

/// `cuMemGetAllocationGranularity(prop, RECOMMENDED)`.
pub(crate) fn vmm_granularity(prop: &sys::CUmemAllocationProp) -> Result<usize, DriverError> {
    let mut g: usize = 0;
    // SAFETY: `prop` is a valid, fully initialized struct read by the driver; one usize is written
    // through a valid pointer.
    unsafe {
        sys::cuMemGetAllocationGranularity(
            &mut g,
            prop,
            sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_RECOMMENDED,
        )
        .result()?
    };
    Ok(g)
}

/// `cuMemRetainAllocationHandle(ptr)`: whether `ptr` lies in a range mapped with `cuMemMap` (VMM
/// memory, of this process's allocations or imported ones). The retained handle is released again.
pub(crate) fn vmm_pointer_is_mapped(ptr: u64) -> bool {
    let mut h: sys::CUmemGenericAllocationHandle = 0;
    // SAFETY: the driver looks `ptr` up in its mapping tables (never dereferences it; any value is
    // allowed, unknown ones return an error) and writes one handle through a valid pointer.
    let r = unsafe { sys::cuMemRetainAllocationHandle(&mut h, ptr as usize as *mut std::ffi::c_void) };
    if r != sys::CUresult::CUDA_SUCCESS {
        return false;
    }
    // SAFETY: `h` was retained just above (one reference), released once here.
    let _ = unsafe { sys::cuMemRelease(h) };
    true
}

/// What [`VmmMapping::import`] imports.
pub(crate) enum VmmImportSource<'a> {
    /// A POSIX file descriptor exported by a peer (`CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR`). The
    /// driver does not take it over; the caller closes it afterwards.
    PosixFd(std::os::fd::BorrowedFd<'a>),
    /// A fabric handle exported by a peer (`CU_MEM_HANDLE_TYPE_FABRIC`).
    Fabric(&'a [u8; 64]),
}

/// A physical allocation handle mapped read-write for one device at a reserved address range of the
/// same size. Owns all three: `Drop` unmaps, releases the handle and frees the range, ignoring errors.
#[derive(Debug)]
pub(crate) struct VmmMapping {
    handle: sys::CUmemGenericAllocationHandle,
    ptr: u64,
    size: usize,
}

impl VmmMapping {
    /// `cuMemCreate(size, prop)`, then reserve, map and grant `device` read-write access. `size` must be
    /// a non-zero multiple of `prop`'s granularity.
    pub(crate) fn create(size: usize, prop: &sys::CUmemAllocationProp, device: sys::CUdevice) -> Result<VmmMapping, VmmError> {
        let mut handle: sys::CUmemGenericAllocationHandle = 0;
        // SAFETY: `prop` is fully initialized; the driver writes one handle (used only after success).
        unsafe { sys::cuMemCreate(&mut handle, size, prop, 0).result() }.map_err(|e| ("cuMemCreate", e))?;
        Self::map_handle(handle, size, device)
    }

    /// `cuMemImportFromShareableHandle(source)`, then reserve, map and grant `device` read-write access.
    /// `size` must be the exporter's allocation size (`VmmAllocation::size`).
    pub(crate) fn import(source: VmmImportSource<'_>, size: usize, device: sys::CUdevice) -> Result<VmmMapping, VmmError> {
        use std::os::fd::AsRawFd;
        let mut handle: sys::CUmemGenericAllocationHandle = 0;
        let r = match source {
            // SAFETY: for POSIX file descriptors the driver takes the descriptor NUMBER in the pointer
            // argument (never dereferenced); `fd` is open for the duration of the call (borrowed).
            VmmImportSource::PosixFd(fd) => unsafe {
                sys::cuMemImportFromShareableHandle(
                    &mut handle,
                    fd.as_raw_fd() as usize as *mut std::ffi::c_void,
                    sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
                )
            },
            VmmImportSource::Fabric(h) => {
                let mut fabric = sys::CUmemFabricHandle { data: *h };
                // SAFETY: for fabric handles the argument points to a 64-byte CUmemFabricHandle, which
                // `fabric` is (the driver only reads it during the call).
                unsafe {
                    sys::cuMemImportFromShareableHandle(
                        &mut handle,
                        &mut fabric as *mut sys::CUmemFabricHandle as *mut std::ffi::c_void,
                        sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_FABRIC,
                    )
                }
            }
        };
        r.result().map_err(|e| ("cuMemImportFromShareableHandle", e))?;
        Self::map_handle(handle, size, device)
    }

    /// Reserves `size` bytes of address space, maps `handle` there and grants `device` read-write
    /// access. Takes over `handle`: on failure everything done so far is undone and `handle` released.
    fn map_handle(handle: sys::CUmemGenericAllocationHandle, size: usize, device: sys::CUdevice) -> Result<VmmMapping, VmmError> {
        let release = || {
            // SAFETY: `handle` is owned here (see above) and released once, on this failure path only.
            let _ = unsafe { sys::cuMemRelease(handle) };
        };
        let mut ptr: sys::CUdeviceptr = 0;
        // SAFETY: reserves fresh address space (no fixed address, default alignment); one pointer written.
        if let Err(e) = unsafe { sys::cuMemAddressReserve(&mut ptr, size, 0, 0, 0) }.result() {
            release();
            return Err(("cuMemAddressReserve", e));
        }
        let free = || {
            // SAFETY: `[ptr, ptr + size)` was reserved above, nothing is mapped in it any more, freed once.
            let _ = unsafe { sys::cuMemAddressFree(ptr, size) };
        };
        // SAFETY: maps the whole allocation (offset 0, its full size) into the range just reserved.
        if let Err(e) = unsafe { sys::cuMemMap(ptr, size, 0, handle, 0) }.result() {
            free();
            release();
            return Err(("cuMemMap", e));
        }
        let mapping = VmmMapping { handle, ptr, size };
        let desc = sys::CUmemAccessDesc {
            location: sys::CUmemLocation { type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE, id: device },
            flags: sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
        };
        // SAFETY: `[ptr, ptr + size)` is mapped (above); one valid descriptor is read. On failure
        // `mapping`'s Drop unmaps, releases and frees.
        unsafe { sys::cuMemSetAccess(ptr, size, &desc, 1) }.result().map_err(|e| ("cuMemSetAccess", e))?;
        Ok(mapping)
    }

    /// The mapped address.
    pub(crate) fn ptr(&self) -> u64 {
        self.ptr
    }

    /// The mapped (= allocation) size.
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// `cuMemExportToShareableHandle(POSIX_FILE_DESCRIPTOR)`: a new file descriptor owned by the caller.
    pub(crate) fn export_posix_fd(&self) -> Result<std::os::fd::OwnedFd, DriverError> {
        use std::os::fd::FromRawFd;
        let mut fd: std::ffi::c_int = -1;
        // SAFETY: `self.handle` is live (owned by `self`); for POSIX file descriptors the driver writes one
        // int through the pointer.
        unsafe {
            sys::cuMemExportToShareableHandle(
                &mut fd as *mut std::ffi::c_int as *mut std::ffi::c_void,
                self.handle,
                sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
                0,
            )
            .result()?
        };
        // SAFETY: on success the driver created `fd` for the caller, who now owns it (closed once, by
        // the OwnedFd).
        Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
    }

    /// `cuMemExportToShareableHandle(FABRIC)`: the 64-byte fabric handle.
    pub(crate) fn export_fabric(&self) -> Result<[u8; 64], DriverError> {
        let mut h = sys::CUmemFabricHandle { data: [0; 64] };
        // SAFETY: `self.handle` is live; for fabric handles the driver writes one 64-byte
        // CUmemFabricHandle through the pointer.
        unsafe {
            sys::cuMemExportToShareableHandle(
                &mut h as *mut sys::CUmemFabricHandle as *mut std::ffi::c_void,
                self.handle,
                sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_FABRIC,
                0,
            )
            .result()?
        };
        Ok(h.data)
    }
}

impl Drop for VmmMapping {
    fn drop(&mut self) {
        // Errors are ignored (Drop never panics; a failed step only leaks). The owner keeps the context
        // bound and no work may be in flight on the range.
        // SAFETY: the range, the mapping and the handle are owned by `self` and undone once, here, in
        // the documented order (unmap, release the handle, free the address range).
        unsafe {
            let _ = sys::cuMemUnmap(self.ptr, self.size);
            let _ = sys::cuMemRelease(self.handle);
            let _ = sys::cuMemAddressFree(self.ptr, self.size);
        }
    }
}

/// Reads `out.len()` bytes at `m.ptr() + offset` (range checked against the mapping here) on `stream`
/// (a live stream of the mapping's context) and waits for them.
pub(crate) fn vmm_read(m: &VmmMapping, stream: &CudaStream, offset: usize, out: &mut [u8]) -> Result<(), DriverError> {
    assert!(offset.checked_add(out.len()).is_some_and(|end| end <= m.size()));
    // SAFETY: the range lies inside the live mapping `m` (asserted above), mapped read-write; the
    // stream is live.
    unsafe { copy_dtoh_on_stream(out, m.ptr() + offset as u64, stream.cu_stream()) }
}

/// Writes `data` at `m.ptr() + offset` (range checked against the mapping here) on `stream` and waits
/// for it.
pub(crate) fn vmm_write(m: &VmmMapping, stream: &CudaStream, offset: usize, data: &[u8]) -> Result<(), DriverError> {
    assert!(offset.checked_add(data.len()).is_some_and(|end| end <= m.size()));
    // SAFETY: the range lies inside the live mapping `m` (asserted above), mapped read-write; the
    // stream is live.
    unsafe { copy_htod_on_stream(m.ptr() + offset as u64, data, stream.cu_stream()) }
}

/// Why an NVRTC compile to a cubin failed: the step, NVRTC's status, and (for a rejected source) the
/// program log.
#[derive(Debug)]
pub(crate) struct NvrtcFailure {
    pub step: &'static str,
    pub status: String,
    pub log: Option<String>,
}

/// Compiles `src` (named `name` in diagnostics) with `options` and returns the cubin (machine code for
/// the `-arch=sm_XY` among the options). libnvrtc must be present (cudarc panics otherwise: callers
/// probe first and run this under `catch_unwind`).
pub(crate) fn nvrtc_compile_cubin(src: &str, name: &str, options: &[String]) -> Result<Vec<u8>, NvrtcFailure> {
    use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys};
    let fail = |step, status: &dyn std::fmt::Debug| NvrtcFailure { step, status: format!("{status:?}"), log: None };
    let src = std::ffi::CString::new(src).map_err(|_| fail("reading the source", &"NUL byte in the source"))?;
    let cname = std::ffi::CString::new(name).map_err(|_| fail("naming the program", &"NUL byte in the name"))?;
    let prog = nvrtc::create_program(&src, Some(&cname)).map_err(|e| fail("nvrtcCreateProgram", &e))?;
    // The program owns NVRTC state until destroyed; `src` and `cname` outlive it (dropped after `out`).
    let out = (|| {
        // SAFETY: `prog` was just created by `create_program` and is destroyed only below.
        if let Err(e) = unsafe { nvrtc::compile_program(prog, options) } {
            // SAFETY: as above; the log is read before the program is destroyed.
            let log = unsafe { nvrtc::get_program_log(prog) }
                .ok()
                .map(|l| l.iter().take_while(|&&c| c != 0).map(|&c| c as u8 as char).collect::<String>());
            return Err(NvrtcFailure { step: "nvrtcCompileProgram", status: format!("{e:?}"), log });
        }
        let mut size = 0usize;
        // SAFETY: `prog` is a live, compiled program; `size` is a valid out-pointer.
        unsafe { nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size) }.result().map_err(|e| fail("nvrtcGetCUBINSize", &e))?;
        if size == 0 {
            return Err(fail("nvrtcGetCUBINSize", &"no cubin (was -arch a real sm_XY target?)"));
        }
        let mut cubin = vec![0u8; size];
        // SAFETY: `cubin` holds exactly the `size` bytes NVRTC reported for this program's cubin.
        unsafe { nvrtc_sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr().cast()) }.result().map_err(|e| fail("nvrtcGetCUBIN", &e))?;
        Ok(cubin)
    })();
    // SAFETY: `prog` came from `create_program` and is destroyed exactly once, here.
    let _ = unsafe { nvrtc::destroy_program(prog) };
    out
}

/// NVRTC's version (major, minor), part of the kernel cache key. libnvrtc must be present.
pub(crate) fn nvrtc_version() -> Option<(i32, i32)> {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two valid out-pointers; nvrtcVersion has no other preconditions.
    let status = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    status.result().ok().map(|_| (major, minor))
}
