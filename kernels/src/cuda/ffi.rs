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

/// Whether cudarc can dlopen libcuda and libnvrtc (it tries the same names as when it loads them).
pub(crate) fn libraries_present() -> (bool, bool) {
    // SAFETY: these only dlopen/dlclose the candidate libraries (running their initializers, which for
    // the NVIDIA libraries have no preconditions); no symbol is called.
    unsafe { (sys::is_culib_present(), cudarc::nvrtc::sys::is_culib_present()) }
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
