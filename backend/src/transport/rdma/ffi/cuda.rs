//! GPU memory for RDMA: the allocation behind a device pointer and its dma-buf export, through the
//! CUDA driver as the kernels crate loads it (cudarc's run-time loader of libcuda), so the process
//! loads the driver once, one way.
use chorus_kernels::cuda::cudarc::driver::sys;
use std::sync::OnceLock;

/// The driver entry points this module calls.
const ENTRY_POINTS: [&str; 2] = ["cuMemGetAddressRange_v2", "cuMemGetHandleForAddressRange"];

/// Whether libcuda is there with both entry points (cudarc's loader panics on a missing library or
/// symbol, so it is asked only after this said yes).
fn driver() -> Result<(), String> {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    CHECKED
        .get_or_init(|| {
            // SAFETY: is_culib_present only dlopens and closes the candidate library names (no
            // symbol is called).
            if !unsafe { sys::is_culib_present() } {
                return Err("libcuda.so.1 not found (no NVIDIA driver)".into());
            }
            // SAFETY: the library is present (above), so culib() loads it instead of panicking;
            // looking a symbol up calls nothing.
            let lib = unsafe { sys::culib() };
            for name in ENTRY_POINTS {
                // SAFETY: as above: a symbol lookup only; the pointer type is never called here.
                if unsafe { lib.get::<unsafe extern "C" fn()>(name.as_bytes()) }.is_err() {
                    return Err(format!("libcuda has no {name} (driver >= 515 needed)"));
                }
            }
            Ok(())
        })
        .clone()
}

/// The allocation containing device pointer `ptr`: (base, len) from `cuMemGetAddressRange`
/// (docs/design.md invariant 2: register the allocation, not the pointer). Needs a current CUDA context.
pub fn cuda_allocation_of(ptr: u64) -> Result<(u64, usize), String> {
    driver()?;
    let (mut base, mut len) = (0u64, 0usize);
    // SAFETY: the driver writes two scalars through valid out-pointers; any `ptr` value is allowed
    // (unknown ones return an error).
    let rc = unsafe { sys::cuMemGetAddressRange_v2(&mut base, &mut len, ptr) };
    if rc != sys::CUresult::CUDA_SUCCESS {
        return Err(format!("cuMemGetAddressRange({ptr:#x}) failed with {rc:?}"));
    }
    Ok((base, len))
}

/// Exports `[base, base+len)` of device memory as a dma-buf fd (the caller closes it after
/// registering). `base`/`len` must be page aligned: pass the allocation base and size.
pub fn cuda_dmabuf_fd(base: u64, len: usize) -> Result<i32, String> {
    driver()?;
    let mut fd: std::ffi::c_int = -1;
    // SAFETY: `fd` is a valid out-pointer for the int handle a DMA_BUF_FD export writes; the
    // driver validates the range.
    let rc = unsafe {
        sys::cuMemGetHandleForAddressRange(
            &mut fd as *mut std::ffi::c_int as *mut std::ffi::c_void,
            base,
            len,
            sys::CUmemRangeHandleType::CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD,
            0,
        )
    };
    if rc != sys::CUresult::CUDA_SUCCESS {
        return Err(format!("cuMemGetHandleForAddressRange({base:#x}, {len}) failed with {rc:?}"));
    }
    Ok(fd)
}
