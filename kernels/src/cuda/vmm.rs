//! CUDA virtual-memory-management (VMM) allocations, their export and their import in a peer process.
//!
//! Memory made with `cuMemCreate` and mapped with `cuMemMap` (what PyTorch's expandable segments use,
//! `PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`) cannot be shared with `cuIpcGetMemHandle`. It is
//! shared by exporting the physical allocation handle instead, one of two ways:
//!
//! - [`ShareKind::PosixFd`]: a file descriptor, which only processes on the same host can receive (by
//!   `pidfd_getfd` or `SCM_RIGHTS`, see [`crate::fdpass`]);
//! - [`ShareKind::Fabric`]: a 64-byte fabric handle, plain bytes that can travel through any store, also
//!   across hosts of one NVLink domain. Creating fabric-shareable memory needs an IMEX channel
//!   (`/dev/nvidia-caps-imex-channels/channelN`); without one `cuMemCreate` fails with
//!   `CUDA_ERROR_NOT_PERMITTED`.
//!
//! [`allocate_shareable`] prefers fabric handles where the device supports them and falls back to POSIX
//! file descriptors. [`VmmImport`] maps a peer's exported allocation into this process;
//! [`is_vmm_pointer`] tells VMM memory from `cudaMalloc` memory (which the IPC path of [`super::ipc`]
//! handles).
//!
//! All driver calls live in `ffi.rs`; nothing here is `unsafe`. Without libcuda nothing here touches the
//! driver: the functions that open a device return [`KernelError::CudaUnavailable`] and
//! [`is_vmm_pointer`] returns false.

use super::{copy_stream, cuda_err, ffi, no_panic, open_device};
use crate::{KernelError, Result};
use cudarc::driver::sys::{self, CUdevice_attribute};
use cudarc::driver::{CudaContext, DriverError};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, OnceLock};

/// How a VMM allocation is shared with peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShareKind {
    /// A 64-byte fabric handle (`CU_MEM_HANDLE_TYPE_FABRIC`); needs an IMEX channel.
    Fabric,
    /// A POSIX file descriptor (`CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR`); same host only.
    PosixFd,
}

impl ShareKind {
    /// `"fabric"` or `"posix_fd"`.
    pub fn name(self) -> &'static str {
        match self {
            ShareKind::Fabric => "fabric",
            ShareKind::PosixFd => "posix_fd",
        }
    }

    /// Parses [`ShareKind::name`].
    pub fn from_name(s: &str) -> Option<ShareKind> {
        match s {
            "fabric" => Some(ShareKind::Fabric),
            "posix_fd" => Some(ShareKind::PosixFd),
            _ => None,
        }
    }

    fn handle_type(self) -> sys::CUmemAllocationHandleType {
        match self {
            ShareKind::Fabric => sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_FABRIC,
            ShareKind::PosixFd => sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
        }
    }

    fn support_attribute(self) -> CUdevice_attribute {
        match self {
            ShareKind::Fabric => CUdevice_attribute::CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_FABRIC_SUPPORTED,
            ShareKind::PosixFd => CUdevice_attribute::CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED,
        }
    }

    /// Whether `ctx`'s device reports support for this handle type (its `HANDLE_TYPE_*_SUPPORTED`
    /// attribute is 1; a driver that does not know the attribute counts as no support).
    pub fn device_supports(self, ctx: &CudaContext) -> bool {
        ctx.attribute(self.support_attribute()).is_ok_and(|v| v == 1)
    }
}

impl std::fmt::Display for ShareKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether a driver error means "this handle type is not allowed / not available here" (what a
/// fabric allocation without an IMEX channel returns), as opposed to a real failure.
pub(crate) fn is_not_permitted(e: &DriverError) -> bool {
    e.0 == sys::CUresult::CUDA_ERROR_NOT_PERMITTED || e.0 == sys::CUresult::CUDA_ERROR_NOT_SUPPORTED
}

/// `size` rounded up to a multiple of `granularity` (None on overflow or a zero granularity).
pub(crate) fn round_up(size: usize, granularity: usize) -> Option<usize> {
    if granularity == 0 {
        return None;
    }
    size.checked_next_multiple_of(granularity)
}

/// A VMM allocation has at least one byte and at most `isize::MAX` (so rounding up cannot overflow).
fn check_size(size: usize) -> Result<()> {
    if size == 0 || size > isize::MAX as usize {
        return Err(KernelError::InvalidArgument { reason: "a VMM allocation needs 1 to isize::MAX bytes" });
    }
    Ok(())
}

fn bind(ctx: &CudaContext) -> Result<()> {
    ctx.bind_to_thread().map_err(|e| cuda_err("binding the context", e))
}

fn vmm_err(what: &str, (step, e): ffi::VmmError) -> KernelError {
    KernelError::Cuda { what: format!("{what} ({step})"), reason: e.to_string() }
}

/// Checks that `ctx`'s device supports VMM at all; `consequence` ends the error message.
fn check_vmm(ctx: &CudaContext, consequence: &str) -> Result<()> {
    let vmm = ctx.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED).unwrap_or(0);
    if vmm != 1 {
        return Err(KernelError::CudaUnavailable(format!(
            "device {} does not support CUDA virtual memory management (cuMemCreate/cuMemMap){consequence}",
            ctx.ordinal()
        )));
    }
    Ok(())
}

/// Checks that `ctx`'s device supports VMM and `kind`, with a clear error if not.
fn check_device(ctx: &CudaContext, kind: ShareKind) -> Result<()> {
    check_vmm(ctx, "")?;
    if !kind.device_supports(ctx) {
        return Err(KernelError::CudaUnavailable(format!(
            "device {} does not support {} handles for VMM allocations (CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_{}_SUPPORTED \
             is not 1)",
            ctx.ordinal(),
            kind.name(),
            match kind {
                ShareKind::Fabric => "FABRIC",
                ShareKind::PosixFd => "POSIX_FILE_DESCRIPTOR",
            }
        )));
    }
    Ok(())
}

/// The recommended allocation granularity of `kind`-shareable memory on `ctx`'s device (sizes of
/// [`VmmAllocation`]s are rounded up to it).
pub fn granularity(ctx: &Arc<CudaContext>, kind: ShareKind) -> Result<usize> {
    bind(ctx)?;
    let prop = ffi::vmm_prop(ctx.cu_device(), kind.handle_type());
    ffi::vmm_granularity(&prop).map_err(|e| cuda_err("querying the VMM allocation granularity (cuMemGetAllocationGranularity)", e))
}

/// An owned VMM allocation of one device: physical memory (`cuMemCreate`, exportable as its
/// [`ShareKind`]) mapped read-write at an address range of its own. `Drop` unmaps it, releases the
/// physical memory (peers that imported it keep their reference) and frees the range.
pub struct VmmAllocation {
    ctx: Arc<CudaContext>,
    map: ffi::VmmMapping,
    kind: ShareKind,
}

impl std::fmt::Debug for VmmAllocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VmmAllocation({:#x}, {} bytes, {}, device {})", self.ptr(), self.size(), self.kind, self.ctx.ordinal())
    }
}

impl VmmAllocation {
    /// Allocates at least `size` bytes on `ctx`'s device, shareable as `kind`: the size is rounded up
    /// to the recommended granularity ([`VmmAllocation::size`] is the rounded size, what a peer passes
    /// to [`VmmImport`]).
    pub fn new(ctx: &Arc<CudaContext>, size: usize, kind: ShareKind) -> Result<VmmAllocation> {
        check_size(size)?;
        check_device(ctx, kind)?;
        Self::create(ctx, size, kind).map_err(|e| {
            vmm_err(&format!("allocating {size} bytes of {kind}-shareable VMM memory on device {}", ctx.ordinal()), e)
        })
    }

    /// [`VmmAllocation::new`] on device `ordinal`'s primary context (`CudaUnavailable` without one).
    pub fn for_device(ordinal: usize, size: usize, kind: ShareKind) -> Result<VmmAllocation> {
        Self::new(&open_device(ordinal)?, size, kind)
    }

    /// The allocation steps, with the raw driver error (so callers can tell `NOT_PERMITTED`). `size`
    /// passed [`check_size`].
    fn create(ctx: &Arc<CudaContext>, size: usize, kind: ShareKind) -> std::result::Result<VmmAllocation, ffi::VmmError> {
        ctx.bind_to_thread().map_err(|e| ("binding the context", e))?;
        let prop = ffi::vmm_prop(ctx.cu_device(), kind.handle_type());
        let gran = ffi::vmm_granularity(&prop).map_err(|e| ("cuMemGetAllocationGranularity", e))?;
        let rounded = round_up(size, gran).ok_or(("rounding the size up to the granularity", DriverError(sys::CUresult::CUDA_ERROR_INVALID_VALUE)))?;
        let map = ffi::VmmMapping::create(rounded, &prop, ctx.cu_device())?;
        Ok(VmmAllocation { ctx: ctx.clone(), map, kind })
    }

    /// The mapped device address of the allocation.
    pub fn ptr(&self) -> u64 {
        self.map.ptr()
    }

    /// The allocation size in bytes (the requested size rounded up to the granularity).
    pub fn size(&self) -> usize {
        self.map.size()
    }

    /// How this allocation is shared.
    pub fn kind(&self) -> ShareKind {
        self.kind
    }

    /// The context the allocation is mapped in.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// Exports the allocation as a new POSIX file descriptor (`cuMemExportToShareableHandle`); send it
    /// to a peer on this host ([`crate::fdpass`]), which maps it with [`VmmImport::from_posix_fd`].
    /// Only for [`ShareKind::PosixFd`] allocations.
    pub fn export_posix_fd(&self) -> Result<OwnedFd> {
        if self.kind != ShareKind::PosixFd {
            return Err(KernelError::InvalidArgument { reason: "export_posix_fd: this VMM allocation was made fabric-shareable" });
        }
        bind(&self.ctx)?;
        self.map.export_posix_fd().map_err(|e| cuda_err("exporting a VMM allocation as a file descriptor (cuMemExportToShareableHandle)", e))
    }

    /// Exports the allocation as a 64-byte fabric handle (`cuMemExportToShareableHandle`); a peer maps
    /// it with [`VmmImport::from_fabric`]. Only for [`ShareKind::Fabric`] allocations.
    pub fn export_fabric(&self) -> Result<[u8; 64]> {
        if self.kind != ShareKind::Fabric {
            return Err(KernelError::InvalidArgument { reason: "export_fabric: this VMM allocation was made POSIX-fd-shareable" });
        }
        bind(&self.ctx)?;
        self.map.export_fabric().map_err(|e| cuda_err("exporting a VMM allocation as a fabric handle (cuMemExportToShareableHandle)", e))
    }

    /// Copies `data` to `ptr + offset` and waits until it has landed (as `DeviceAllocation::write`).
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<()> {
        write_mapping(&self.ctx, &self.map, offset, data)
    }

    /// Copies `out.len()` bytes at `ptr + offset` to `out` (synchronous).
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        read_mapping(&self.ctx, &self.map, offset, out)
    }
}

impl Drop for VmmAllocation {
    fn drop(&mut self) {
        // The mapping itself is undone by `ffi::VmmMapping`'s Drop, right after this, with the context
        // bound (errors ignored: Drop never panics).
        let _ = self.ctx.bind_to_thread();
    }
}

/// Copies `data` into `map` at `offset` on a private stream and waits until it has landed (as
/// `DeviceAllocation::write`).
fn write_mapping(ctx: &Arc<CudaContext>, map: &ffi::VmmMapping, offset: usize, data: &[u8]) -> Result<()> {
    let s = copy_stream(ctx, map.size(), offset, data.len(), "copy past the end of the VMM mapping")?;
    ffi::vmm_write(map, &s, offset, data).map_err(|e| cuda_err("cuMemcpyHtoDAsync", e))
}

/// Copies out of `map` at `offset` on a private stream (synchronous).
fn read_mapping(ctx: &Arc<CudaContext>, map: &ffi::VmmMapping, offset: usize, out: &mut [u8]) -> Result<()> {
    let s = copy_stream(ctx, map.size(), offset, out.len(), "copy past the end of the VMM mapping")?;
    ffi::vmm_read(map, &s, offset, out).map_err(|e| cuda_err("cuMemcpyDtoHAsync", e))
}

/// Allocates `size` bytes of shareable VMM memory on `ctx`'s device and says how it is shared.
///
/// Fabric handles first, where the device supports them (`HANDLE_TYPE_FABRIC_SUPPORTED` is 1): the
/// allocation is made and exported once as a check. If that fails with `CUDA_ERROR_NOT_PERMITTED` or
/// `CUDA_ERROR_NOT_SUPPORTED` (no IMEX channel), one `info` line says so; any other fabric failure
/// gets a `warn` line; either way it falls back to a POSIX-file-descriptor-shareable allocation. The
/// error, if that fails too, names both attempts.
pub fn allocate_shareable(ctx: &Arc<CudaContext>, size: usize) -> Result<(VmmAllocation, ShareKind)> {
    check_size(size)?;
    check_vmm(ctx, ", so no shareable VMM memory (fabric or POSIX file descriptor) can be allocated there")?;
    let fabric_note = if ShareKind::Fabric.device_supports(ctx) {
        let attempt = VmmAllocation::create(ctx, size, ShareKind::Fabric).and_then(|a| match a.map.export_fabric() {
            Ok(_) => Ok(a),
            Err(e) => Err(("cuMemExportToShareableHandle", e)),
        });
        match attempt {
            Ok(a) => return Ok((a, ShareKind::Fabric)),
            Err((step, e)) if is_not_permitted(&e) => {
                tracing::info!(
                    device = ctx.ordinal(),
                    "fabric handles are not permitted on device {} ({step} returned {:?}: no IMEX channel); \
                     sharing VMM memory as POSIX file descriptors (same host only)",
                    ctx.ordinal(),
                    e.0,
                );
                format!("not permitted ({step}: {e}; no IMEX channel)")
            }
            Err((step, e)) => {
                tracing::warn!(
                    device = ctx.ordinal(),
                    "fabric-shareable VMM allocation failed on device {} ({step}: {e}); trying POSIX file descriptors",
                    ctx.ordinal(),
                );
                format!("failed ({step}: {e})")
            }
        }
    } else {
        "not supported by the device (HANDLE_TYPE_FABRIC_SUPPORTED is not 1)".to_string()
    };
    let both_failed = |posix: String, reason: String| KernelError::Cuda {
        what: format!(
            "allocating {size} bytes of shareable VMM memory on device {}: neither handle type works (fabric \
             handle: {fabric_note}; POSIX file descriptor: {posix})",
            ctx.ordinal()
        ),
        reason,
    };
    if !ShareKind::PosixFd.device_supports(ctx) {
        return Err(both_failed(
            "not supported by the device".into(),
            "CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED is not 1".into(),
        ));
    }
    match VmmAllocation::create(ctx, size, ShareKind::PosixFd) {
        Ok(a) => Ok((a, ShareKind::PosixFd)),
        Err((step, e)) => Err(both_failed(format!("{step} failed"), e.to_string())),
    }
}

/// [`allocate_shareable`] on device `ordinal`'s primary context (`CudaUnavailable` without one).
pub fn allocate_shareable_for_device(ordinal: usize, size: usize) -> Result<(VmmAllocation, ShareKind)> {
    allocate_shareable(&open_device(ordinal)?, size)
}

/// A peer's VMM allocation mapped read-write into this process for one device. `Drop` unmaps it,
/// releases this process's reference to the physical memory and frees the range.
pub struct VmmImport {
    ctx: Arc<CudaContext>,
    map: ffi::VmmMapping,
    kind: ShareKind,
}

impl std::fmt::Debug for VmmImport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VmmImport({:#x}, {} bytes, {}, device {})", self.ptr(), self.size(), self.kind, self.ctx.ordinal())
    }
}

impl VmmImport {
    /// Maps the allocation behind `fd` (a peer's [`VmmAllocation::export_posix_fd`], received through
    /// [`crate::fdpass`]) into `ctx`. `size` is the exporter's [`VmmAllocation::size`]. `fd` is closed
    /// once the driver has imported it (the mapping keeps the memory alive).
    pub fn from_posix_fd(ctx: &Arc<CudaContext>, fd: OwnedFd, size: usize) -> Result<VmmImport> {
        Self::import(ctx, ffi::VmmImportSource::PosixFd(fd.as_fd()), size, ShareKind::PosixFd)
    }

    /// Maps the allocation behind a peer's fabric handle ([`VmmAllocation::export_fabric`]) into `ctx`.
    /// `size` is the exporter's [`VmmAllocation::size`].
    pub fn from_fabric(ctx: &Arc<CudaContext>, handle: &[u8; 64], size: usize) -> Result<VmmImport> {
        Self::import(ctx, ffi::VmmImportSource::Fabric(handle), size, ShareKind::Fabric)
    }

    fn import(ctx: &Arc<CudaContext>, source: ffi::VmmImportSource<'_>, size: usize, kind: ShareKind) -> Result<VmmImport> {
        check_size(size)?;
        bind(ctx)?;
        let map = ffi::VmmMapping::import(source, size, ctx.cu_device()).map_err(|e| {
            vmm_err(
                &format!(
                    "importing a peer's {kind}-shareable VMM allocation of {size} bytes on device {} (the size must be \
                     the exporter's VmmAllocation::size)",
                    ctx.ordinal()
                ),
                e,
            )
        })?;
        Ok(VmmImport { ctx: ctx.clone(), map, kind })
    }

    /// The mapped device address (the peer's allocation base).
    pub fn ptr(&self) -> u64 {
        self.map.ptr()
    }

    /// The mapped size in bytes.
    pub fn size(&self) -> usize {
        self.map.size()
    }

    /// How the allocation was shared.
    pub fn kind(&self) -> ShareKind {
        self.kind
    }

    /// Copies `data` to `ptr + offset` and waits until it has landed.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<()> {
        write_mapping(&self.ctx, &self.map, offset, data)
    }

    /// Copies `out.len()` bytes at `ptr + offset` to `out` (synchronous).
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        read_mapping(&self.ctx, &self.map, offset, out)
    }
}

impl Drop for VmmImport {
    fn drop(&mut self) {
        // As `VmmAllocation`'s Drop: the mapping is undone right after this, with the context bound.
        let _ = self.ctx.bind_to_thread();
    }
}

/// Whether libcuda can be opened (checked once per process, without letting cudarc panic). NVRTC is
/// not needed to ask about pointers.
fn driver_present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    *PRESENT.get_or_init(|| super::find_library(&["libcuda.so.1", "libcuda.so"]).is_some() && ffi::driver_library_present())
}

/// Whether `ptr` lies in VMM memory (a range mapped with `cuMemMap`: a [`VmmAllocation`], a
/// [`VmmImport`], a PyTorch expandable segment), as opposed to `cudaMalloc`/`cuMemAlloc` memory or a
/// pointer the driver does not know. Uses `cuMemRetainAllocationHandle` (the retained handle is released
/// again). False without libcuda or before the driver has been initialized in this process.
pub fn is_vmm_pointer(ptr: u64) -> bool {
    if !driver_present() {
        return false;
    }
    no_panic("loading libcuda", || Ok(ffi::vmm_pointer_is_mapped(ptr))).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What every test here needs to know: whether this machine has a CUDA device.
    fn no_device() -> Option<String> {
        match open_device(0) {
            Err(KernelError::CudaUnavailable(r)) => Some(r),
            Err(e) => panic!("CUDA present but device 0 could not be opened: {e}"),
            Ok(_) => None,
        }
    }

    #[test]
    fn share_kind_names_round_trip() {
        for k in [ShareKind::Fabric, ShareKind::PosixFd] {
            assert_eq!(ShareKind::from_name(k.name()), Some(k));
            assert_eq!(k.to_string(), k.name());
        }
        assert_eq!(ShareKind::from_name("ipc"), None);
        assert_eq!(ShareKind::Fabric.handle_type().0, 8);
        assert_eq!(ShareKind::PosixFd.handle_type().0, 1);
    }

    #[test]
    fn sizes_round_up_to_the_granularity() {
        const G: usize = 2 << 20;
        assert_eq!(round_up(1, G), Some(G));
        assert_eq!(round_up(G, G), Some(G));
        assert_eq!(round_up(G + 1, G), Some(2 * G));
        assert_eq!(round_up(0, G), Some(0));
        assert_eq!(round_up(usize::MAX, G), None);
        assert_eq!(round_up(5, 0), None);
    }

    #[test]
    fn not_permitted_and_not_supported_mean_fall_back() {
        // Constructing a DriverError touches no library (only its Display calls the driver).
        assert!(is_not_permitted(&DriverError(sys::CUresult::CUDA_ERROR_NOT_PERMITTED)));
        assert!(is_not_permitted(&DriverError(sys::CUresult::CUDA_ERROR_NOT_SUPPORTED)));
        assert!(!is_not_permitted(&DriverError(sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY)));
        assert!(!is_not_permitted(&DriverError(sys::CUresult::CUDA_ERROR_INVALID_VALUE)));
    }

    #[test]
    fn allocation_properties_ask_for_pinned_device_memory() {
        let p = ffi::vmm_prop(3, ShareKind::PosixFd.handle_type());
        assert_eq!(p.type_, sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED);
        assert_eq!(p.location.type_, sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE);
        assert_eq!(p.location.id, 3);
        assert_eq!(p.requestedHandleTypes, sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR);
        assert!(p.win32HandleMetaData.is_null());
    }

    /// Without libcuda (this CI machine): a clean `CudaUnavailable`, never a cudarc panic, and no
    /// pointer is VMM memory. With a device: the real thing.
    #[test]
    fn without_a_device_everything_reports_cuda_unavailable() {
        let Some(reason) = no_device() else {
            let (a, kind) = allocate_shareable_for_device(0, 1).expect("a shareable VMM allocation on device 0");
            assert!(a.size() >= 1 && is_vmm_pointer(a.ptr()), "{a:?}");
            assert_eq!(a.kind(), kind);
            return;
        };
        println!("no CUDA device: {reason}");
        for r in [
            allocate_shareable_for_device(0, 1 << 20).map(|_| ()),
            VmmAllocation::for_device(0, 1 << 20, ShareKind::PosixFd).map(|_| ()),
            VmmAllocation::for_device(0, 1 << 20, ShareKind::Fabric).map(|_| ()),
        ] {
            match r {
                Err(KernelError::CudaUnavailable(_)) => {}
                other => panic!("expected CudaUnavailable without a device, got {other:?}"),
            }
        }
        assert!(!is_vmm_pointer(0));
        assert!(!is_vmm_pointer(0x7f00_0000_0000));
    }
}
