//! GPU collectives over CUDA IPC: one [`DeviceComm`] per (group, device) holds this rank's workspace
//! (flags, counters, staging), every peer's workspace mapped through CUDA IPC, and launches the
//! collective kernels of [`super::coll_source`] on the caller's stream.
//!
//! Setup is the transport: a capability check (the device opens, the kernels compile and preload), one
//! allocation registered at its base and exported, and one exchange of handles through the caller's
//! `exchange` function (a store all-gather). The kernels never know how the peer memory got mapped.
//!
//! Ordering: every operation is enqueued on the stream it is given, with no host synchronization. The
//! operations of one communicator form one sequence on every rank (as in NCCL): when a caller switches
//! streams, the new stream first waits for the communicator's last operation (an event), so ops issued
//! on several streams still run one after another. (Hence the contract of every op: the stream of the
//! communicator's previous op is still alive when the next op is enqueued.) While a stream is capturing a CUDA graph no event is
//! used; the graph replays in the capturing stream's order.
//!
//! Large operations are split on the host into sub-operations that fit the staging slots; the split
//! depends only on sizes every rank knows, so every rank launches the same sequence. That planning is
//! pure and lives in `plan`; `options` holds the workspace layout and the options every rank agrees
//! on, `ops` the collectives (check, plan, enqueue), and this file the communicator: setup, the
//! translation of planned launches into kernel arguments, and the stream ordering of launches.
//!
//! This module is part of the FFI layer: its operations take raw device addresses and raw streams
//! (what torch and C callers hold), so they are `unsafe fn`s with documented contracts, and the driver
//! calls they make go through `ffi`.
#![allow(unsafe_code)]

mod ops;
mod options;
mod plan;

pub use options::{CommOptions, MAX_BLOCKS, MAX_RANKS, MAX_SMALL_BLOCKS};

use super::control::HostControl;
use super::workspace::{MemMode, PeerMaps, Workspace};
use super::{cuda_err, ffi, DeviceKernels};
use crate::{KernelError, Result};
use cudarc::driver::sys;
use options::{Layout, BULK_BAR, BULK_STATE, SMALL_BAR, SMALL_STATE, STAGING_OFF};
use plan::{Lane, Launch, Planner};
use std::sync::{Arc, Mutex};

/// A CUDA stream handle as an integer (`CUstream`/`cudaStream_t`; 0 is the legacy default stream), as
/// torch's `torch.cuda.Stream.cuda_stream` and cudarc's `CudaStream::cu_stream()` give it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawStream(pub usize);

impl RawStream {
    pub(crate) fn cu(self) -> sys::CUstream {
        self.0 as sys::CUstream
    }
}

/// Which stream the communicator's last operation went to (for cross-stream ordering).
struct Order {
    event: ffi::Event,
    last_stream: Option<RawStream>,
    /// Set at the first switch of streams; from then on every op records `event` (a communicator
    /// used on one stream only never pays for it).
    multi_stream: bool,
}

/// A GPU communicator: this rank's workspace and every peer's, mapped; collectives on raw device
/// pointers enqueued on a caller's stream.
pub struct DeviceComm {
    kernels: Arc<DeviceKernels>,
    rank: usize,
    world: usize,
    opts: CommOptions,
    layout: Layout,
    ws: Workspace,
    /// Host-side control (abort word, error mirror); dropped after the device is synchronized.
    control: HostControl,
    /// Every peer's workspace, mapped here.
    _peers: PeerMaps,
    peer_ws: [u64; MAX_RANKS],
    order: Mutex<Order>,
    launches: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for DeviceComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceComm")
            .field("device", &self.kernels.ordinal())
            .field("rank", &self.rank)
            .field("world", &self.world)
            .field("options", &self.opts)
            .finish()
    }
}

impl DeviceComm {
    /// Builds the communicator of `rank` of `world` on device `ordinal`: compiles and preloads the
    /// kernels (once per process and device), allocates and zeroes the workspace, exports it, and calls
    /// `exchange` once with this rank's description; `exchange` must return every rank's description in
    /// rank order (an all-gather through a store). All ranks must call this together.
    pub fn new(
        ordinal: usize,
        rank: usize,
        world: usize,
        opts: CommOptions,
        exchange: &mut dyn FnMut(String) -> Result<Vec<String>>,
    ) -> Result<DeviceComm> {
        if world == 0 || world > MAX_RANKS || rank >= world {
            return Err(KernelError::CommSetup(format!(
                "rank {rank} of {world}: a device communicator spans 1 to {MAX_RANKS} ranks"
            )));
        }
        if opts.blocks == 0 || opts.blocks > MAX_BLOCKS || opts.small_blocks == 0 || opts.small_blocks > MAX_SMALL_BLOCKS || !opts.slot_bytes.is_multiple_of(4096) || !opts.p2p_slot.is_multiple_of(16) {
            return Err(KernelError::CommSetup(format!("invalid options {opts:?}")));
        }
        let kernels = DeviceKernels::for_device(ordinal)?;
        let ctx = kernels.context().clone();
        let layout = Layout::new(world, &opts);
        // Zeroed before any peer can see it (the exchange below is the barrier: nobody signals before
        // everyone published).
        let ws = Workspace::new(&ctx, layout.total, MemMode::from_env(), world - 1, opts.timeout)?;
        let control = HostControl::new(&ctx)?;
        let mine = format!("{}|{}", ws.describe(), opts.wire());
        let all = exchange(mine)?;
        if all.len() != world {
            return Err(KernelError::CommSetup(format!("the exchange returned {} entries for {world} ranks", all.len())));
        }
        let mut peers = PeerMaps::new(&ctx, opts.timeout);
        let mut peer_ws = [0u64; MAX_RANKS];
        for (q, entry) in all.iter().enumerate() {
            let (desc, cfg) = entry
                .split_once('|')
                .ok_or_else(|| KernelError::CommSetup(format!("rank {q} published a malformed entry {entry:?}")))?;
            if cfg != opts.wire() {
                return Err(KernelError::CommSetup(format!(
                    "rank {q} uses {cfg:?} but rank {rank} uses {:?}; set the same CHORUS_CUDA_* variables on every rank",
                    opts.wire()
                )));
            }
            peer_ws[q] = if q == rank { ws.ptr() } else { peers.open(desc, layout.total)? };
        }
        tracing::debug!(kind = ws.kind(), bytes = ws.size(), "device workspace shared");
        ctx.bind_to_thread().map_err(|e| cuda_err("binding the context", e))?;
        let event = ffi::event_create().map_err(|e| cuda_err("creating the ordering event", e))?;
        Ok(DeviceComm {
            kernels,
            rank,
            world,
            opts,
            layout,
            ws,
            control,
            _peers: peers,
            peer_ws,
            order: Mutex::new(Order { event, last_stream: None, multi_stream: false }),
            launches: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// This process's rank in the communicator.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of ranks in the communicator.
    pub fn world(&self) -> usize {
        self.world
    }

    /// The device ordinal.
    pub fn device(&self) -> usize {
        self.kernels.ordinal()
    }

    /// The options the communicator was set up with.
    pub fn options(&self) -> &CommOptions {
        &self.opts
    }

    /// The device kernels this communicator launches (compiled and preloaded at setup).
    pub fn kernels(&self) -> &Arc<DeviceKernels> {
        &self.kernels
    }

    /// How the workspace is shared: "fabric", "posix-fd" (VMM memory) or "ipc" (cuMemAlloc + CUDA IPC).
    pub fn memory_kind(&self) -> &'static str {
        self.ws.kind()
    }

    /// Kernel launches so far (sub-operations included).
    pub fn launches(&self) -> u64 {
        self.launches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Arguments of a bulk-lane launch.
    fn base_args(&self, kind: u32) -> ffi::CollArgs {
        ffi::CollArgs {
            ws: self.peer_ws,
            slot_bytes: self.opts.slot_bytes as u64,
            p2p_slot: self.opts.p2p_slot as u64,
            staging_off: STAGING_OFF as u64,
            bar_off: BULK_BAR,
            state_off: BULK_STATE,
            ctl: self.control.device_ptr(),
            p2p_off: self.layout.p2p_off as u64,
            timeout_ns: self.opts.timeout.as_nanos().min(u64::MAX as u128) as u64,
            kind,
            rank: self.rank as u32,
            world: self.world as u32,
            ..Default::default()
        }
    }

    /// Arguments of a small-lane launch (a single step whose per-peer data fits `small_slot`).
    fn small_args(&self, kind: u32) -> ffi::CollArgs {
        ffi::CollArgs {
            slot_bytes: self.layout.small_slot as u64,
            staging_off: self.layout.small_off as u64,
            bar_off: SMALL_BAR,
            state_off: SMALL_STATE,
            ..self.base_args(kind)
        }
    }

    /// The planning of this rank (pure; see `plan`).
    fn planner(&self) -> Planner<'_> {
        Planner { rank: self.rank, world: self.world, opts: &self.opts, small_slot: self.layout.small_slot }
    }

    /// The kernel arguments of the planned launches `plan` over the buffers at `src` and `dst`.
    fn launch_args(&self, plan: &[Launch], src: u64, dst: u64) -> Vec<ffi::CollArgs> {
        let wide = |v: [usize; MAX_RANKS]| v.map(|x| x as u64);
        plan.iter()
            .map(|l| {
                let lane = match l.lane {
                    Lane::Bulk => self.base_args(l.kind),
                    Lane::Small => self.small_args(l.kind),
                    Lane::LowLatency => ffi::CollArgs {
                        slot_bytes: self.layout.ll_slot as u64,
                        staging_off: self.layout.ll_off as u64,
                        ..self.small_args(l.kind)
                    },
                };
                ffi::CollArgs {
                    src: l.src_off.map_or(0, |o| src + o as u64),
                    dst: l.dst_off.map_or(0, |o| dst + o as u64),
                    count: l.count as u64,
                    chunk: l.chunk as u64,
                    dst_stride: l.dst_stride as u64,
                    root: l.root as u32,
                    avg_n: l.avg_n,
                    send_off: wide(l.send_off),
                    send_len: wide(l.send_len),
                    recv_off: wide(l.recv_off),
                    recv_len: wide(l.recv_len),
                    ..lane
                }
            })
            .collect()
    }

    /// Enqueues `subs` launches of `func` on `stream`, ordered after this communicator's last operation.
    ///
    /// # Safety
    /// Every `CollArgs` must describe device memory valid until the kernels complete (see the public ops).
    unsafe fn enqueue(&self, stream: RawStream, func: &cudarc::driver::CudaFunction, subs: &[ffi::CollArgs]) -> Result<()> {
        if subs.is_empty() {
            return Ok(());
        }
        // A failed or aborted communicator takes no more work (its peers' counters are out of step).
        self.check()?;
        let mut order = self.order.lock().unwrap_or_else(|p| p.into_inner());
        self.kernels.context().bind_to_thread().map_err(|e| cuda_err("binding the context", e))?;
        // SAFETY: `stream` is the caller's live stream (contract of the public ops).
        let capturing = unsafe { ffi::stream_is_capturing(stream.cu()) }.map_err(|e| cuda_err("cuStreamIsCapturing", e))?;
        if !capturing {
            match order.last_stream {
                Some(last) if last != stream => {
                    if !order.multi_stream {
                        // First switch: until now every op went to `last`, so nothing was recorded.
                        // SAFETY: `last` carried this communicator's previous op and, per the ops'
                        // contract, is still alive; the event is ours.
                        unsafe { ffi::event_record(&order.event, last.cu()) }.map_err(|e| cuda_err("cuEventRecord", e))?;
                        order.multi_stream = true;
                    }
                    // SAFETY: the event is ours and alive; the stream is the caller's live stream.
                    unsafe { ffi::stream_wait_event(stream.cu(), &order.event) }.map_err(|e| cuda_err("cuStreamWaitEvent", e))?;
                }
                _ => {}
            }
        }
        for a in subs {
            let grid = if a.state_off == SMALL_STATE { self.opts.small_blocks } else { self.opts.blocks };
            // SAFETY: forwarded to the caller; `func` is a collective kernel of this module.
            unsafe { ffi::launch_coll(func, stream.cu(), grid, self.opts.threads, a) }
                .map_err(|e| cuda_err("launching a collective kernel", e))?;
        }
        self.launches.fetch_add(subs.len() as u64, std::sync::atomic::Ordering::Relaxed);
        if !capturing {
            if order.multi_stream {
                // SAFETY: as above.
                unsafe { ffi::event_record(&order.event, stream.cu()) }.map_err(|e| cuda_err("cuEventRecord", e))?;
            }
            order.last_stream = Some(stream);
        }
        Ok(())
    }

    /// ([`KernelError::CollectiveTimeout`], [`KernelError::CollectiveAborted`]).
    ///
    /// # Safety
    /// `stream` is a live stream of the device's primary context (or 0).
    pub unsafe fn synchronize(&self, stream: RawStream) -> Result<()> {
        self.kernels.context().bind_to_thread().map_err(|e| cuda_err("binding the context", e))?;
        // SAFETY: forwarded to the caller.
        unsafe { ffi::stream_synchronize(stream.cu()) }.map_err(|e| cuda_err("cuStreamSynchronize", e))?;
        self.check()
    }

    /// `Err` once a kernel of this communicator gave up or the communicator was aborted (as NCCL's
    /// `ncclCommGetAsyncError`). Reads the host control block only: no CUDA call, no wait, so it can be
    /// polled while kernels run; kernels still queued may fail later.
    pub fn check(&self) -> Result<()> {
        self.control.status(self.opts.timeout.as_millis() as u64)
    }

    /// Aborts the communicator (as `ncclCommAbort`, without freeing it): every kernel of it that is
    /// waiting for a peer, or will, gives up within microseconds and records
    /// [`KernelError::CollectiveAborted`]; no further operation is accepted. `reason` is a non-zero
    /// code for the error message (the process group passes 1 + the rank it found dead); aborting
    /// again keeps the highest reason. Safe to call from any thread while kernels run.
    pub fn abort(&self, reason: u64) {
        tracing::debug!(rank = self.rank, reason, "aborting the device communicator");
        self.control.abort(reason);
    }

    /// The abort reason, once aborted.
    pub fn aborted(&self) -> Option<u64> {
        self.control.abort_reason()
    }

    /// `(address, length)` of the host control block: host memory, registered by the process group as
    /// `Location::Host` (never as device memory: docs/design.md invariant 3).
    pub fn control_region(&self) -> (usize, usize) {
        self.control.host_range()
    }
}

impl Drop for DeviceComm {
    fn drop(&mut self) {
        // Nothing may still run on the workspace when it is freed: wait for the device (bounded by the
        // kernels' own deadline); the event, the mappings and the allocation are released after this.
        let _ = self.kernels.context().bind_to_thread();
        let _ = self.kernels.context().synchronize();
    }
}
