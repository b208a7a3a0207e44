//! The memory a device communicator shares with its peers (its *workspace*), how it is described to
//! them, and how a peer's description is mapped here. Three kinds, tried in this order by
//! `CHORUS_CUDA_MEM=auto` (the default):
//!
//! 1. VMM memory with a fabric handle (64 bytes that travel through the store; needs an IMEX channel,
//!    else `cuMemCreate` says `CUDA_ERROR_NOT_PERMITTED` and the next kind is used);
//! 2. VMM memory shared as a POSIX file descriptor: the description names the exporting process and
//!    the descriptor number; a peer takes it with `pidfd_getfd`, or from the exporter's SCM_RIGHTS
//!    socket where that is not permitted ([`crate::fdpass`]);
//! 3. plain `cuMemAlloc` memory registered at its base and shared with a CUDA IPC handle
//!    ([`super::ipc`]).
//!
//! `CHORUS_CUDA_MEM=vmm` insists on 1 or 2, `legacy` on 3. The kernels never know which kind it is.
use super::ipc::{handle_from_hex, to_hex, DeviceAllocation, DeviceRegistry, IpcExport, IpcImporter};
use super::vmm::{allocate_shareable, ShareKind, VmmAllocation, VmmImport};
use super::{copy_stream, cuda_err, ffi};
use crate::fdpass::{receive_fd, FdServer};
use crate::{KernelError, Result};
use cudarc::driver::CudaContext;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

/// Which memory kinds a communicator may use (`CHORUS_CUDA_MEM`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemMode {
    Auto,
    Vmm,
    Legacy,
}

impl MemMode {
    pub fn from_env() -> MemMode {
        match std::env::var("CHORUS_CUDA_MEM").as_deref() {
            Ok("vmm") => MemMode::Vmm,
            Ok("legacy") => MemMode::Legacy,
            _ => MemMode::Auto,
        }
    }
}

enum Own {
    Legacy { alloc: DeviceAllocation, export: IpcExport, _registry: DeviceRegistry },
    Fabric { alloc: VmmAllocation, handle: [u8; 64] },
    /// The exported descriptor stays open (peers take it by number) and so does the socket that hands
    /// it out where `pidfd_getfd` is refused.
    PosixFd { alloc: VmmAllocation, fd: OwnedFd, server: FdServer },
}

/// This rank's workspace.
pub(crate) struct Workspace {
    own: Own,
}

impl Workspace {
    /// Allocates `size` bytes (at least), zeroed, shareable with `peers` other processes for `timeout`.
    pub fn new(ctx: &Arc<CudaContext>, size: usize, mode: MemMode, peers: usize, timeout: Duration) -> Result<Workspace> {
        let vmm = if mode == MemMode::Legacy { None } else { Some(Self::vmm(ctx, size, peers, timeout)) };
        let own = match vmm {
            Some(Ok(own)) => own,
            Some(Err(e)) if mode == MemMode::Vmm => return Err(e),
            other => {
                if let Some(Err(e)) = other {
                    tracing::info!("VMM workspace unavailable ({e}); using cuMemAlloc + CUDA IPC");
                }
                let alloc = DeviceAllocation::new(ctx, size)?;
                let registry = DeviceRegistry::new(ctx.clone());
                let reg = registry.register(alloc.ptr(), size)?;
                let export = registry.export(&reg)?;
                Own::Legacy { alloc, export, _registry: registry }
            }
        };
        let ws = Workspace { own };
        // Zero before any peer can see it (the caller's exchange comes after).
        let stream = copy_stream(ctx, ws.size(), 0, ws.size(), "zeroing past the end of the workspace")?;
        ffi::workspace_zero(&ws, &stream).map_err(|e| cuda_err("zeroing the workspace (cuMemsetD8Async)", e))?;
        Ok(ws)
    }

    fn vmm(ctx: &Arc<CudaContext>, size: usize, peers: usize, timeout: Duration) -> Result<Own> {
        let (alloc, kind) = allocate_shareable(ctx, size)?;
        Ok(match kind {
            ShareKind::Fabric => {
                let handle = alloc.export_fabric()?;
                Own::Fabric { alloc, handle }
            }
            ShareKind::PosixFd => {
                let fd = alloc.export_posix_fd()?;
                let served = fd.try_clone().map_err(|e| KernelError::CommSetup(format!("duplicating the workspace descriptor: {e}")))?;
                let name = format!("chorus-ws-{}-{:x}", std::process::id(), alloc.ptr());
                let server = FdServer::start(&name, served, peers, timeout)
                    .map_err(|e| KernelError::CommSetup(format!("starting the descriptor server: {e}")))?;
                Own::PosixFd { alloc, fd, server }
            }
        })
    }

    pub fn ptr(&self) -> u64 {
        match &self.own {
            Own::Legacy { alloc, .. } => alloc.ptr(),
            Own::Fabric { alloc, .. } | Own::PosixFd { alloc, .. } => alloc.ptr(),
        }
    }

    pub fn size(&self) -> usize {
        match &self.own {
            Own::Legacy { alloc, .. } => alloc.size(),
            Own::Fabric { alloc, .. } | Own::PosixFd { alloc, .. } => alloc.size(),
        }
    }

    /// "ipc", "fabric" or "posix-fd".
    pub fn kind(&self) -> &'static str {
        match &self.own {
            Own::Legacy { .. } => "ipc",
            Own::Fabric { .. } => "fabric",
            Own::PosixFd { .. } => "posix-fd",
        }
    }

    /// What a peer needs to map this workspace (no `|`: the communicator's entry uses it).
    pub fn describe(&self) -> String {
        match &self.own {
            Own::Legacy { export, .. } => format!("ipc/{}", export.to_wire()),
            Own::Fabric { alloc, handle } => format!("fabric/{}/{}", to_hex(handle), alloc.size()),
            Own::PosixFd { alloc, fd, server } => {
                format!("fd/{}/{}/{}/{}", std::process::id(), fd.as_raw_fd(), alloc.size(), server.name())
            }
        }
    }
}

/// Peer workspaces mapped into this process (unmapped on drop).
pub(crate) struct PeerMaps {
    ctx: Arc<CudaContext>,
    ipc: IpcImporter,
    vmm: Vec<VmmImport>,
    timeout: Duration,
}

impl PeerMaps {
    pub fn new(ctx: &Arc<CudaContext>, timeout: Duration) -> PeerMaps {
        PeerMaps { ctx: ctx.clone(), ipc: IpcImporter::new(ctx.clone()), vmm: Vec::new(), timeout }
    }

    /// Maps the workspace `desc` describes (from [`Workspace::describe`]) and returns its address here;
    /// it must hold at least `min_size` bytes.
    pub fn open(&mut self, desc: &str, min_size: usize) -> Result<u64> {
        let bad = || KernelError::CommSetup(format!("malformed workspace description {desc:?}"));
        let (kind, rest) = desc.split_once('/').ok_or_else(bad)?;
        let fields: Vec<&str> = rest.split('/').collect();
        let small = |size: usize| KernelError::CommSetup(format!("a peer's workspace is {size} bytes, expected at least {min_size}"));
        match (kind, fields.as_slice()) {
            ("ipc", [wire]) => {
                let e = IpcExport::from_wire(wire)?;
                if e.base_size < min_size {
                    return Err(small(e.base_size));
                }
                Ok(self.ipc.open(&e.handle)? + e.offset as u64)
            }
            ("fabric", [hex, size]) => {
                let size: usize = size.parse().map_err(|_| bad())?;
                if size < min_size {
                    return Err(small(size));
                }
                let handle = handle_from_hex(hex)?;
                self.push(VmmImport::from_fabric(&self.ctx, &handle, size)?)
            }
            ("fd", [pid, fd, size, socket]) => {
                let (pid, fd, size): (u32, i32, usize) =
                    (pid.parse().map_err(|_| bad())?, fd.parse().map_err(|_| bad())?, size.parse().map_err(|_| bad())?);
                if size < min_size {
                    return Err(small(size));
                }
                let (fd, path) = receive_fd(pid, fd, socket, self.timeout)
                    .map_err(|e| KernelError::CommSetup(format!("receiving the workspace descriptor of process {pid}: {e}")))?;
                tracing::debug!(?path, pid, "received a peer workspace descriptor");
                self.push(VmmImport::from_posix_fd(&self.ctx, fd, size)?)
            }
            _ => Err(bad()),
        }
    }

    fn push(&mut self, m: VmmImport) -> Result<u64> {
        let p = m.ptr();
        self.vmm.push(m);
        Ok(p)
    }
}
