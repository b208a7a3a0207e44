//! Memory registration for rdma, following the registry's allocation-base rule (DESIGN
//! invariant 2): a pointer is resolved to its whole allocation through [`Registry`], the
//! allocation is registered with the NIC once (refcounted per base), the offset of the pointer
//! travels beside the keys, and releasing resolves the base the same way.
//!
//! Host memory registers with `ibv_reg_mr`. Device memory registers as a dma-buf: the
//! allocation is exported with `cuMemGetHandleForAddressRange(DMA_BUF_FD)` and registered with
//! `ibv_reg_dmabuf_mr(fd, offset 0, len, iova = base)` ([`VerbsRegistrar`]); a build without the
//! `cuda` feature refuses device memory with an error that says so.
use super::ffi;
use crate::memory::{Location, Registration, Registry};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Makes NIC registrations of whole allocations (a fake one in tests).
pub trait Registrar {
    type Mr: Send + Sync;
    fn register(&self, whole: &Registration) -> Result<Self::Mr, String>;
}

/// A registered allocation plus where the caller's pointer sits in it.
#[derive(Clone)]
pub struct MrRef<M> {
    pub mr: Arc<M>,
    pub base: usize,
    pub len: usize,
    pub offset: usize,
}

/// Per allocation base: (length, registration, references).
type Entries<M> = BTreeMap<usize, (usize, Arc<M>, u64)>;

pub struct MrCache<R: Registrar> {
    registrar: R,
    by_base: Mutex<Entries<R::Mr>>,
}

impl<R: Registrar> MrCache<R> {
    pub fn new(registrar: R) -> MrCache<R> {
        MrCache { registrar, by_base: Mutex::new(BTreeMap::new()) }
    }

    /// Registers (once) the allocation that contains `ptr`, as the registry knows it.
    pub fn acquire(&self, registry: &Registry, ptr: usize) -> Result<MrRef<R::Mr>, String> {
        let reg = registry.lookup(ptr).ok_or_else(|| format!("pointer {ptr:#x} is not inside a registered allocation"))?;
        let mut g = self.by_base.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = g.get_mut(&reg.base) {
            e.2 += 1;
            return Ok(MrRef { mr: e.1.clone(), base: reg.base, len: e.0, offset: reg.offset });
        }
        let whole = Registration { base: reg.base, len: reg.len, offset: 0, location: reg.location };
        let mr = Arc::new(self.registrar.register(&whole)?);
        g.insert(reg.base, (reg.len, mr.clone(), 1));
        Ok(MrRef { mr, base: reg.base, len: reg.len, offset: reg.offset })
    }

    /// Drops one reference to the allocation containing `ptr`; returns whether the NIC
    /// registration was released.
    pub fn release(&self, ptr: usize) -> bool {
        let mut g = self.by_base.lock().unwrap_or_else(|p| p.into_inner());
        let Some((&base, &(len, _, _))) = g.range(..=ptr).next_back() else { return false };
        if ptr >= base + len.max(1) {
            return false;
        }
        let e = g.get_mut(&base).expect("present");
        if e.2 > 1 {
            e.2 -= 1;
            false
        } else {
            g.remove(&base);
            true
        }
    }

    /// Allocations currently registered with the NIC.
    pub fn registered(&self) -> usize {
        self.by_base.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// The real registrar: `ibv_reg_mr` for host memory, dma-buf for device memory.
pub struct VerbsRegistrar {
    pub ctx: Arc<ffi::Context>,
}

pub const REMOTE_ACCESS: i32 = ffi::IBV_ACCESS_LOCAL_WRITE | ffi::IBV_ACCESS_REMOTE_WRITE | ffi::IBV_ACCESS_REMOTE_READ;

impl Registrar for VerbsRegistrar {
    type Mr = ffi::Mr;
    fn register(&self, whole: &Registration) -> Result<ffi::Mr, String> {
        match whole.location {
            Location::Host => self.ctx.reg_host(whole.base, whole.len, REMOTE_ACCESS),
            Location::Device(_) => register_device_allocation(&self.ctx, whole.base as u64, whole.len),
        }
    }
}

/// Registers a whole device allocation through dma-buf. Checks that `base` is the allocation
/// base (`cuMemGetAddressRange`), exports it, registers it and closes the exported fd.
#[cfg(feature = "cuda")]
pub fn register_device_allocation(ctx: &ffi::Context, base: u64, len: usize) -> Result<ffi::Mr, String> {
    let (alloc_base, alloc_len) = ffi::cuda_allocation_of(base)?;
    if alloc_base != base {
        return Err(format!("device pointer {base:#x} is inside the allocation at {alloc_base:#x}: register the allocation base"));
    }
    let len = len.min(alloc_len);
    let fd = ffi::cuda_dmabuf_fd(base, len)?;
    let r = register_dmabuf(ctx, fd, 0, len, base);
    ffi::close_fd(fd);
    r
}

/// Without the `cuda` feature GPU memory cannot be exported: registering it fails, saying why (host
/// memory registers as ever).
#[cfg(not(feature = "cuda"))]
pub fn register_device_allocation(_ctx: &ffi::Context, base: u64, len: usize) -> Result<ffi::Mr, String> {
    Err(format!(
        "cannot register GPU memory at {base:#x} ({len} bytes) for RDMA: chorus was built without its `cuda` feature \
         (on by default), which exports GPU memory as a dma-buf"
    ))
}

/// The dma-buf registration itself, given an exported fd and the region's offset inside it.
pub fn register_dmabuf(ctx: &ffi::Context, fd: i32, offset: u64, len: usize, iova: u64) -> Result<ffi::Mr, String> {
    ctx.reg_dmabuf(fd, offset, len, iova, REMOTE_ACCESS)
}
