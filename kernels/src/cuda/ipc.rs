//! Device-memory registration at the allocation base, and CUDA IPC export/import (DESIGN layer 1
//! "memory", invariant 2; `shared/seeds/004_*`).
//!
//! Caching allocators sub-allocate tensors inside larger `cudaMalloc` segments, and an IPC handle always
//! opens at the segment base. So: [`DeviceRegistry::register`] resolves the allocation base and size
//! with `cuMemGetAddressRange`, keeps one refcounted registration per base and returns the caller's
//! offset inside it; [`DeviceRegistry::export`] takes the handle of the BASE and ships the offset beside
//! it ([`IpcExport`]), never folded into it; [`IpcImporter`] opens each handle once per process
//! (`CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS`) and closes every mapping on drop. The peer addresses a tensor
//! as `mapped_base + offset`.
//!
//! A process cannot open its own handle; a second process on the same GPU (or a peer GPU) can.

use super::{copy_stream, cuda_err, ffi, open_device};
use crate::{KernelError, Result};
use cudarc::driver::CudaContext;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// One registered device allocation, as seen by one caller pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceRegistration {
    /// Allocation base (what `cuMemGetAddressRange` returned; what the IPC handle opens at).
    pub base: u64,
    /// Size of the whole allocation in bytes.
    pub size: usize,
    /// `ptr - base` of the pointer that was registered.
    pub offset: usize,
    /// Length the caller registered at `base + offset`.
    pub len: usize,
    /// Ordinal of the device the allocation lives on.
    pub device: i32,
}

impl DeviceRegistration {
    /// The caller's pointer (`base + offset`).
    pub fn ptr(&self) -> u64 {
        self.base + self.offset as u64
    }
}

/// What travels to a peer: the handle of the allocation BASE, the allocation size, and the offset of
/// the registered pointer inside it (beside the handle, never folded into it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpcExport {
    /// The CUDA IPC memory handle (`cuIpcGetMemHandle`) of the allocation base.
    pub handle: [u8; 64],
    /// Size of the whole allocation in bytes.
    pub base_size: usize,
    /// Offset of the registered pointer from the base.
    pub offset: usize,
}

impl IpcExport {
    /// The handle as 128 lowercase hex digits (for a store or a command line).
    pub fn handle_hex(&self) -> String {
        to_hex(&self.handle)
    }

    /// `handle_hex:base_size:offset` (sizes in decimal).
    pub fn to_wire(&self) -> String {
        format!("{}:{}:{}", self.handle_hex(), self.base_size, self.offset)
    }

    /// Parses [`IpcExport::to_wire`].
    pub fn from_wire(s: &str) -> Result<IpcExport> {
        let bad = || KernelError::InvalidArgument { reason: "an IPC export is `<128 hex digits>:<base_size>:<offset>`" };
        let mut it = s.trim().split(':');
        let (h, n, o) = (it.next().ok_or_else(bad)?, it.next().ok_or_else(bad)?, it.next().ok_or_else(bad)?);
        if it.next().is_some() {
            return Err(bad());
        }
        Ok(IpcExport {
            handle: handle_from_hex(h)?,
            base_size: n.parse().map_err(|_| bad())?,
            offset: o.parse().map_err(|_| bad())?,
        })
    }
}

/// 64 bytes -> 128 hex digits.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 128 hex digits -> a 64-byte IPC handle.
pub fn handle_from_hex(s: &str) -> Result<[u8; 64]> {
    let bad = KernelError::InvalidArgument { reason: "an IPC handle is 128 hex digits" };
    let s = s.trim().as_bytes();
    if s.len() != 128 {
        return Err(bad);
    }
    let mut out = [0u8; 64];
    for (i, o) in out.iter_mut().enumerate() {
        let pair = std::str::from_utf8(&s[2 * i..2 * i + 2]).map_err(|_| KernelError::InvalidArgument {
            reason: "an IPC handle is 128 hex digits",
        })?;
        *o = u8::from_str_radix(pair, 16)
            .map_err(|_| KernelError::InvalidArgument { reason: "an IPC handle is 128 hex digits" })?;
    }
    Ok(out)
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    size: usize,
    device: i32,
    refs: u64,
}

/// Device allocations this process exposes, one refcounted registration per allocation base.
pub struct DeviceRegistry {
    ctx: Arc<CudaContext>,
    regs: Mutex<BTreeMap<u64, Entry>>,
}

impl std::fmt::Debug for DeviceRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceRegistry").field("ordinal", &self.ctx.ordinal()).field("allocations", &self.allocations()).finish()
    }
}

impl DeviceRegistry {
    /// A registry resolving pointers in `ctx` (the context the memory was allocated in, usually the
    /// device's primary context).
    pub fn new(ctx: Arc<CudaContext>) -> DeviceRegistry {
        DeviceRegistry { ctx, regs: Mutex::new(BTreeMap::new()) }
    }

    /// A registry for device `ordinal`'s primary context (`CudaUnavailable` without a usable device).
    pub fn for_device(ordinal: usize) -> Result<DeviceRegistry> {
        Ok(Self::new(open_device(ordinal)?))
    }

    /// The context pointers are resolved in.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Entry>> {
        self.regs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The allocation `(base, size)` containing `ptr`, from the driver.
    pub fn resolve(&self, ptr: u64) -> Result<(u64, usize)> {
        self.ctx.bind_to_thread().map_err(|e| cuda_err("binding the context", e))?;
        ffi::mem_get_address_range(ptr).map_err(|e| KernelError::Cuda {
            what: format!(
                "resolving the allocation of device pointer {ptr:#x} (cuMemGetAddressRange; is it device memory \
                 of this context, allocated with cudaMalloc/cuMemAlloc?)"
            ),
            reason: e.to_string(),
        })
    }

    /// Registers `[ptr, ptr + len)`: resolves its allocation, adds one reference to that allocation's
    /// registration (creating it on first use) and returns it with `offset = ptr - base`.
    /// Host memory the driver knows (page-locked, registered, mapped: control blocks) is refused, never
    /// registered as device memory (docs/design.md invariant 3).
    pub fn register(&self, ptr: u64, len: usize) -> Result<DeviceRegistration> {
        self.ctx.bind_to_thread().map_err(|e| cuda_err("binding the context", e))?;
        if ffi::pointer_is_host(ptr).unwrap_or(false) {
            return Err(KernelError::InvalidArgument {
                reason: "this pointer is host memory (page-locked or registered with the driver, e.g. a control block): \
                         register it as host memory, not with the device registry",
            });
        }
        let (base, size) = self.resolve(ptr)?;
        let offset = (ptr - base) as usize;
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(KernelError::InvalidArgument {
                reason: "the registered range runs past the end of its device allocation",
            });
        }
        let device = ffi::pointer_device_ordinal(base).map_err(|e| cuda_err("querying the pointer's device", e))?;
        let mut g = self.lock();
        let e = g.entry(base).or_insert(Entry { size, device, refs: 0 });
        // A freed-and-reallocated base can come back with another size: the driver is the truth.
        e.size = size;
        e.device = device;
        e.refs += 1;
        Ok(DeviceRegistration { base, size, offset, len, device })
    }

    /// Drops one reference to the allocation containing `ptr` (resolved to its base the same way
    /// registration did; if the driver no longer knows it, e.g. already freed, by the registered
    /// ranges). Returns whether the registration is gone; `InvalidArgument` if nothing contains `ptr`.
    pub fn unregister(&self, ptr: u64) -> Result<bool> {
        let resolved = self.resolve(ptr).ok().map(|(b, _)| b);
        let mut g = self.lock();
        let base = match resolved.filter(|b| g.contains_key(b)) {
            Some(b) => b,
            None => match g.range(..=ptr).next_back() {
                Some((&b, e)) if ptr < b + e.size.max(1) as u64 => b,
                _ => {
                    return Err(KernelError::InvalidArgument { reason: "unregister: no registered device allocation contains this pointer" })
                }
            },
        };
        let e = g.get_mut(&base).expect("checked above");
        e.refs -= 1;
        if e.refs == 0 {
            g.remove(&base);
            return Ok(true);
        }
        Ok(false)
    }

    /// The registration of the allocation whose base is `base`: `(size, refcount)`.
    pub fn refcount(&self, base: u64) -> Option<(usize, u64)> {
        self.lock().get(&base).map(|e| (e.size, e.refs))
    }

    /// Number of distinct registered allocations.
    pub fn allocations(&self) -> usize {
        self.lock().len()
    }

    /// The IPC export of `reg`: the handle of its allocation BASE (`cuIpcGetMemHandle(base)`), the
    /// allocation size and the offset of the registered pointer.
    pub fn export(&self, reg: &DeviceRegistration) -> Result<IpcExport> {
        match self.refcount(reg.base) {
            Some((size, _)) if size == reg.size => {}
            _ => return Err(KernelError::InvalidArgument { reason: "export: this registration is not (or no longer) registered" }),
        }
        self.ctx.bind_to_thread().map_err(|e| cuda_err("binding the context", e))?;
        let handle = ffi::ipc_get_mem_handle(reg.base).map_err(|e| cuda_err("exporting the allocation (cuIpcGetMemHandle)", e))?;
        Ok(IpcExport { handle, base_size: reg.size, offset: reg.offset })
    }

    /// `cuIpcGetMemHandle` on an arbitrary pointer, for diagnostics and tests (the registry always
    /// exports the base; see [`DeviceRegistry::export`]).
    #[doc(hidden)]
    pub fn raw_handle_of_pointer_for_test(&self, ptr: u64) -> Result<[u8; 64]> {
        self.ctx.bind_to_thread().map_err(|e| cuda_err("binding the context", e))?;
        ffi::ipc_get_mem_handle(ptr).map_err(|e| cuda_err("cuIpcGetMemHandle", e))
    }
}

/// One opened handle.
#[derive(Clone, Copy, Debug)]
struct Mapping {
    base: u64,
    size: usize,
}

/// Opens peers' IPC handles in this process: each handle once (cached), all closed on drop.
pub struct IpcImporter {
    ctx: Arc<CudaContext>,
    maps: Mutex<HashMap<[u8; 64], Mapping>>,
    opens: Mutex<u64>,
}

impl std::fmt::Debug for IpcImporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpcImporter").field("ordinal", &self.ctx.ordinal()).field("opened", &self.opened()).finish()
    }
}

impl IpcImporter {
    /// An importer mapping into `ctx`.
    pub fn new(ctx: Arc<CudaContext>) -> IpcImporter {
        IpcImporter { ctx, maps: Mutex::new(HashMap::new()), opens: Mutex::new(0) }
    }

    /// An importer for device `ordinal`'s primary context.
    pub fn for_device(ordinal: usize) -> Result<IpcImporter> {
        Ok(Self::new(open_device(ordinal)?))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 64], Mapping>> {
        self.maps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The mapped base of `handle` (`cuIpcOpenMemHandle` with `CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS` the
    /// first time, the cached mapping afterwards). A tensor of the exporter is at `base + offset`.
    pub fn open(&self, handle: &[u8; 64]) -> Result<u64> {
        self.open_mapping(handle).map(|m| m.base)
    }

    fn open_mapping(&self, handle: &[u8; 64]) -> Result<Mapping> {
        let mut g = self.lock();
        if let Some(m) = g.get(handle) {
            return Ok(*m);
        }
        self.ctx.bind_to_thread().map_err(|e| cuda_err("binding the context", e))?;
        let base = ffi::ipc_open_mem_handle(handle).map_err(|e| {
            cuda_err("opening a peer's allocation (cuIpcOpenMemHandle; a process cannot open its own handle)", e)
        })?;
        *self.opens.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        // The size of the mapping, if the driver reports it (bounds checks of `read`).
        let size = ffi::mem_get_address_range(base).map(|(_, s)| s).unwrap_or(0);
        let m = Mapping { base, size };
        g.insert(*handle, m);
        Ok(m)
    }

    /// How many `cuIpcOpenMemHandle` calls this importer made (one per distinct handle).
    pub fn opened(&self) -> u64 {
        *self.opens.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Copies `out.len()` bytes at `offset` from the base of `export`'s allocation (the caller passes
    /// `export.offset`, or an offset relative to it plus `export.offset`), bounds-checked against the
    /// exported allocation size.
    pub fn read(&self, export: &IpcExport, offset: usize, out: &mut [u8]) -> Result<()> {
        let m = self.open_mapping(&export.handle)?;
        let limit = if m.size > 0 { m.size.min(export.base_size) } else { export.base_size };
        if offset.checked_add(out.len()).is_none_or(|end| end > limit) {
            return Err(KernelError::InvalidArgument { reason: "read past the end of the imported allocation" });
        }
        self.ctx.bind_to_thread().map_err(|e| cuda_err("binding the context", e))?;
        // Checked above: [base + offset, + len) lies inside the mapped allocation, which stays mapped
        // while `self` (and its cache entry) lives.
        ffi::copy_dtoh_checked(out, m.base + offset as u64).map_err(|e| cuda_err("reading imported memory (cuMemcpyDtoH)", e))
    }
}

impl Drop for IpcImporter {
    fn drop(&mut self) {
        let maps: Vec<Mapping> = self.lock().drain().map(|(_, m)| m).collect();
        if maps.is_empty() {
            return;
        }
        let _ = self.ctx.bind_to_thread();
        for m in maps {
            // Errors are ignored: Drop never panics, and a failed close only leaks a mapping.
            ffi::ipc_close_mapping(m.base);
        }
    }
}

/// An owned plain `cuMemAlloc` allocation (IPC-exportable, unlike stream-ordered pool memory), freed on
/// drop. Bounds-checked byte copies in and out.
pub struct DeviceAllocation {
    ctx: Arc<CudaContext>,
    ptr: u64,
    size: usize,
}

impl std::fmt::Debug for DeviceAllocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceAllocation({:#x}, {} bytes)", self.ptr, self.size)
    }
}

impl DeviceAllocation {
    /// `cuMemAlloc(size)` in `ctx`.
    pub fn new(ctx: &Arc<CudaContext>, size: usize) -> Result<DeviceAllocation> {
        if size == 0 {
            return Err(KernelError::InvalidArgument { reason: "a device allocation needs at least one byte" });
        }
        ctx.bind_to_thread().map_err(|e| cuda_err("binding the context", e))?;
        let ptr = ffi::mem_alloc(size).map_err(|e| cuda_err("allocating device memory (cuMemAlloc)", e))?;
        Ok(DeviceAllocation { ctx: ctx.clone(), ptr, size })
    }

    /// The allocation base.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    /// Size of the allocation in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    fn stream_for(&self, offset: usize, len: usize) -> Result<Arc<cudarc::driver::CudaStream>> {
        copy_stream(&self.ctx, self.size, offset, len, "copy past the end of the device allocation")
    }

    /// Copies `data` to `ptr + offset` and waits until it has landed (on a private stream, then a
    /// synchronization of that stream: kernels on any stream launched afterwards see the bytes).
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<()> {
        let s = self.stream_for(offset, data.len())?;
        ffi::alloc_write(self, &s, offset, data).map_err(|e| cuda_err("cuMemcpyHtoDAsync", e))
    }

    /// Copies `out.len()` bytes at `ptr + offset` to `out` (synchronous, on a private stream).
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        let s = self.stream_for(offset, out.len())?;
        ffi::alloc_read(self, &s, offset, out).map_err(|e| cuda_err("cuMemcpyDtoHAsync", e))
    }

    /// Sets every byte to `value` and waits until it is done (see [`DeviceAllocation::write`]).
    pub fn fill(&self, value: u8) -> Result<()> {
        let s = self.stream_for(0, self.size)?;
        ffi::alloc_fill(self, &s, value).map_err(|e| cuda_err("cuMemsetD8Async", e))
    }
}

impl Drop for DeviceAllocation {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        ffi::alloc_free(self.ptr);
    }
}
