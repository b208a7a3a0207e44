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
//! depends only on sizes every rank knows, so every rank launches the same sequence.
//!
//! This module is part of the FFI layer: its operations take raw device addresses and raw streams
//! (what torch and C callers hold), so they are `unsafe fn`s with documented contracts, and the driver
//! calls they make go through `ffi`.
#![allow(unsafe_code)]

use super::control::HostControl;
use super::workspace::{MemMode, PeerMaps, Workspace};
use super::{cuda_err, ffi, DeviceKernels};
use crate::{DType, KernelError, ReduceOp, Result};
use cudarc::driver::sys;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Most ranks a device communicator spans (kernel arrays are sized for it).
pub const MAX_RANKS: usize = 8;
/// Most thread blocks a collective kernel is launched with (flag arrays are sized for it).
pub const MAX_BLOCKS: u32 = 128;
/// Where staging starts in a workspace (after flags, counters and the error word; see the source).
const STAGING_OFF: usize = 73728;
/// The device error word (kernels only; the host reads its mirror in the control block).
#[cfg(test)]
const ERROR_OFF: u64 = 57344;
/// Barrier flags and counters of the two lanes (bulk, small); see the layout in `coll_source`.
const BULK_BAR: u64 = 0;
const BULK_STATE: u64 = 24576;
const SMALL_BAR: u64 = 61440;
const SMALL_STATE: u64 = 63488;
/// Most thread blocks of the small lane.
pub const MAX_SMALL_BLOCKS: u32 = 32;

const AR_ONESHOT: u32 = 1;
const AR_TWOSHOT: u32 = 2;
const AR_LL: u32 = 5;
const REDUCE: u32 = 3;
const REDUCE_SCATTER: u32 = 4;
const BROADCAST: u32 = 10;
const ALL_GATHER: u32 = 11;
const ALL_TO_ALL: u32 = 12;
const SEND: u32 = 13;
const RECV: u32 = 14;

/// A CUDA stream handle as an integer (`CUstream`/`cudaStream_t`; 0 is the legacy default stream), as
/// torch's `torch.cuda.Stream.cuda_stream` and cudarc's `CudaStream::cu_stream()` give it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawStream(pub usize);

impl RawStream {
    pub(crate) fn cu(self) -> sys::CUstream {
        self.0 as sys::CUstream
    }
}

/// Sizes and tuning of a device communicator. Every rank must use the same values (checked at setup).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommOptions {
    /// Bytes of one peer slot in one parity of the staging area (`2 * world` slots in all).
    pub slot_bytes: usize,
    /// Bytes of one point-to-point slot (`2 * world` per workspace).
    pub p2p_slot: usize,
    /// Thread blocks per collective kernel on the bulk lane (at most [`MAX_BLOCKS`]).
    pub blocks: u32,
    /// Thread blocks per kernel on the small lane (at most [`MAX_SMALL_BLOCKS`]).
    pub small_blocks: u32,
    /// Threads per block.
    pub threads: u32,
    /// all_reduce up to this many bytes runs one-shot (every rank reduces everything), larger two-shot.
    pub oneshot_max: usize,
    /// all_reduce up to this many bytes runs as the low-latency one-shot (flagged 16-byte lines, no
    /// barrier; twice the NVLink traffic); 0 turns it off.
    pub ll_max: usize,
    /// With 2 ranks, all_reduce from this many bytes runs as a pipelined one-shot (the same NVLink
    /// traffic as two-shot, without two-shot's final copy).
    pub pipeline_min: usize,
    /// How long a kernel waits for a peer before it gives up ([`KernelError::CollectiveTimeout`]).
    pub timeout: Duration,
    /// Most steps of a pipelined operation (one step per 8 MiB up to this many).
    pub max_pipeline_steps: usize,
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

impl CommOptions {
    /// Defaults for `world` ranks, overridden by `CHORUS_CUDA_STAGING_MB` (whole staging area, default
    /// 512), `CHORUS_CUDA_P2P_SLOT_KB` (default 4096), `CHORUS_CUDA_BLOCKS` (default 128), `CHORUS_CUDA_SMALL_BLOCKS` (default 16),
    /// `CHORUS_CUDA_THREADS` (default 1024), `CHORUS_CUDA_ONESHOT_MAX` (bytes, default 256 KiB for 2 ranks,
    /// 128 KiB for 3-4, 64 KiB beyond), `CHORUS_CUDA_LL_MAX` (bytes, default 64 KiB),
    /// `CHORUS_CUDA_PIPELINE_MIN` (bytes, default 96 MiB), `CHORUS_CUDA_PIPELINE_STEPS` (default 64) and
    /// `CHORUS_CUDA_TIMEOUT_MS` (default 60000).
    pub fn from_env(world: usize) -> CommOptions {
        let world = world.max(1);
        let staging = env_usize("CHORUS_CUDA_STAGING_MB").unwrap_or(512).max(1) << 20;
        let slot = (staging / (2 * world)).clamp(64 << 10, 256 << 20) & !4095;
        let default_oneshot = match world {
            1 | 2 => 256 << 10,
            3 | 4 => 128 << 10,
            _ => 64 << 10,
        };
        CommOptions {
            slot_bytes: slot,
            p2p_slot: (env_usize("CHORUS_CUDA_P2P_SLOT_KB").unwrap_or(4096).max(4) << 10) & !15,
            blocks: env_usize("CHORUS_CUDA_BLOCKS").unwrap_or(128).clamp(1, MAX_BLOCKS as usize) as u32,
            small_blocks: env_usize("CHORUS_CUDA_SMALL_BLOCKS").unwrap_or(16).clamp(1, MAX_SMALL_BLOCKS as usize) as u32,
            threads: (env_usize("CHORUS_CUDA_THREADS").unwrap_or(1024).clamp(64, 1024) as u32) & !31,
            oneshot_max: env_usize("CHORUS_CUDA_ONESHOT_MAX").unwrap_or(default_oneshot).min(slot),
            ll_max: env_usize("CHORUS_CUDA_LL_MAX").unwrap_or(64 << 10).min(slot / 2),
            pipeline_min: env_usize("CHORUS_CUDA_PIPELINE_MIN").unwrap_or(96 << 20),
            timeout: Duration::from_millis(env_usize("CHORUS_CUDA_TIMEOUT_MS").unwrap_or(60_000).max(1) as u64),
            max_pipeline_steps: env_usize("CHORUS_CUDA_PIPELINE_STEPS").unwrap_or(64).clamp(2, 1024),
        }
    }

    fn wire(&self) -> String {
        format!(
            "slot={} p2p={} blocks={} small_blocks={} threads={} oneshot={} ll={} pipeline={} steps={} timeout_ms={}",
            self.slot_bytes,
            self.p2p_slot,
            self.blocks,
            self.small_blocks,
            self.threads,
            self.oneshot_max,
            self.ll_max,
            self.pipeline_min,
            self.max_pipeline_steps,
            self.timeout.as_millis()
        )
    }
}

/// Byte offsets inside a workspace.
#[derive(Clone, Copy, Debug)]
struct Layout {
    p2p_off: usize,
    small_off: usize,
    /// Slot of the small lane (`oneshot_max` rounded up to 4 KiB).
    small_slot: usize,
    ll_off: usize,
    /// Slot of the LL all_reduce: 16-byte lines of 8 payload bytes for `ll_max` bytes, 4 KiB multiple.
    ll_slot: usize,
    total: usize,
}

impl Layout {
    fn new(world: usize, o: &CommOptions) -> Layout {
        let p2p_off = STAGING_OFF + 2 * world * o.slot_bytes;
        let small_off = p2p_off + 2 * world * o.p2p_slot;
        let small_slot = o.oneshot_max.max(1).next_multiple_of(4096);
        let ll_off = small_off + 2 * world * small_slot;
        let ll_slot = (2 * o.ll_max).next_multiple_of(4096);
        Layout { p2p_off, small_off, small_slot, ll_off, ll_slot, total: ll_off + 2 * world * ll_slot }
    }
}

/// Broadcasts of at least this many bytes over more than 2 ranks run as scatter + all-gather.
const BCAST_SCATTER_MIN: usize = 8 << 20;

/// `bytes` cut into `world` shards of a 16-byte multiple (the last ones short or empty): (offsets,
/// lengths, the longest).
fn byte_shards(bytes: usize, world: usize) -> (Vec<usize>, Vec<usize>, usize) {
    let shard = bytes.div_ceil(world).next_multiple_of(16);
    let offs: Vec<usize> = (0..world).map(|p| (p * shard).min(bytes)).collect();
    let lens: Vec<usize> = (0..world).map(|p| ((p + 1) * shard).min(bytes) - offs[p]).collect();
    (offs, lens, shard)
}

/// See [`DeviceComm::pipeline_chunk`]: `bytes` in 2 to `max_steps` steps of at most `slot` bytes each.
fn pipeline_chunk(bytes: usize, slot: usize, max_steps: usize) -> usize {
    let steps = (bytes >> 23).clamp(2, max_steps.max(2));
    bytes.div_ceil(steps).next_multiple_of(4096).min(slot)
}

/// One sub-operation per `cap` units of `total` (elements or bytes): `f(offset, len)` for each, in
/// order; none for 0.
fn split(total: usize, cap: usize, mut f: impl FnMut(usize, usize) -> ffi::CollArgs) -> Vec<ffi::CollArgs> {
    let mut subs = Vec::new();
    let mut off = 0;
    while off < total {
        let n = cap.min(total - off);
        subs.push(f(off, n));
        off += n;
    }
    subs
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

/// `(src, dst)` byte ranges needed by one operation, for argument checks.
fn elems_bytes(dtype: DType, count: usize) -> Result<usize> {
    count.checked_mul(dtype.size()).ok_or(KernelError::InvalidArgument { reason: "element count overflows" })
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

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world(&self) -> usize {
        self.world
    }

    /// The device ordinal.
    pub fn device(&self) -> usize {
        self.kernels.ordinal()
    }

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

    /// Whether an operation moving at most `per_peer` bytes to each peer in one step runs on the small
    /// lane, and its launch arguments.
    fn lane_args(&self, kind: u32, per_peer: usize) -> ffi::CollArgs {
        if per_peer <= self.layout.small_slot {
            self.small_args(kind)
        } else {
            self.base_args(kind)
        }
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

    /// Bytes per pipeline step for a pipelined operation of `bytes`: one step per 8 MiB, 2 to 64 steps
    /// (the fill and drain cost one step each, so 1 GiB takes 64; the per-step barrier is a few
    /// microseconds against about 45 us of data per step), within a slot.
    fn pipeline_chunk(&self, bytes: usize) -> usize {
        pipeline_chunk(bytes, self.opts.slot_bytes, self.opts.max_pipeline_steps)
    }

    /// The one launch of a data-movement kind whose longest block is `bytes` (none when 0): the kernel
    /// pipelines the chunks itself (pushes of chunk j beside copy-outs of chunk j - 1); `set` fills in
    /// the buffers.
    fn movement(&self, kind: u32, bytes: usize, set: impl FnOnce(&mut ffi::CollArgs)) -> Vec<ffi::CollArgs> {
        if bytes == 0 {
            return Vec::new();
        }
        let mut a = ffi::CollArgs { count: bytes as u64, chunk: self.step_bytes(bytes) as u64, ..self.lane_args(kind, bytes) };
        set(&mut a);
        vec![a]
    }

    /// Bytes per step of a pipelined data-movement operation whose longest block is `bytes`: one step
    /// on the small lane, [`DeviceComm::pipeline_chunk`] on the bulk lane.
    fn step_bytes(&self, bytes: usize) -> usize {
        if bytes <= self.layout.small_slot {
            bytes
        } else {
            self.pipeline_chunk(bytes)
        }
    }

    /// Whether an operation has nothing to do: one rank, in place, and (for reductions) a result equal
    /// to the input — every op but on bool, whose kernels also normalise nonzero bytes to 1. Like
    /// NCCL, which enqueues nothing then either (a CUDA graph capturing it stays empty), the launch is
    /// skipped; a failed or aborted communicator still reports so.
    fn identity_at_world_1(&self, src: u64, dst: u64, dtype: Option<DType>) -> bool {
        self.world == 1 && src == dst && dtype != Some(DType::Bool)
    }

    /// What the kernels divide the reduced value by: the world size for `Avg`, nothing (0) otherwise.
    fn avg_divisor(&self, op: ReduceOp) -> u32 {
        if op == ReduceOp::Avg {
            self.world as u32
        } else {
            0
        }
    }

    /// Elements per sub-operation for a reduce kind whose per-rank share must fit `cap` bytes.
    fn chunk_elems(dtype: DType, cap: usize) -> usize {
        let al = 16 / dtype.size();
        (cap / dtype.size()) / al * al
    }

    /// `dst = op over ranks of src` (`count` elements; `dst == src` for in place).
    ///
    /// # Safety
    /// `src` and `dst` are device memory of this communicator's device, valid for `count` elements of
    /// `dtype` until the operation completes on `stream`; they are equal or do not overlap; `stream` is
    /// a live stream of the device's primary context (or 0), and so is the stream of this
    /// communicator's previous operation (all ops share this last condition).
    pub unsafe fn all_reduce(&self, stream: RawStream, dtype: DType, op: ReduceOp, src: u64, dst: u64, count: usize) -> Result<()> {
        let func = self.kernels.coll_func(dtype, op)?;
        let bytes = elems_bytes(dtype, count)?;
        if self.identity_at_world_1(src, dst, Some(dtype)) {
            return self.check();
        }
        let avg_n = self.avg_divisor(op);
        let e = dtype.size() as u64;
        let pipelined = self.world == 2 && bytes >= self.opts.pipeline_min;
        let subs = if self.world > 1 && bytes <= self.opts.ll_max {
            let ll = ffi::CollArgs {
                slot_bytes: self.layout.ll_slot as u64,
                staging_off: self.layout.ll_off as u64,
                ..self.small_args(AR_LL)
            };
            vec![ffi::CollArgs { src, dst, count: count as u64, avg_n, ..ll }]
        } else if bytes <= self.opts.oneshot_max || self.world == 1 || pipelined {
            // One launch; above one slot (or when pipelining) the kernel steps through chunks itself.
            let chunk = if pipelined { self.pipeline_chunk(bytes) } else { self.opts.slot_bytes };
            let chunk = Self::chunk_elems(dtype, chunk).max(1);
            let lane = if pipelined { self.base_args(AR_ONESHOT) } else { self.lane_args(AR_ONESHOT, bytes) };
            vec![ffi::CollArgs { src, dst, count: count as u64, chunk: chunk as u64, avg_n, ..lane }]
        } else {
            let chunk = Self::chunk_elems(dtype, self.opts.slot_bytes / 2) * self.world;
            split(count, chunk, |off, n| {
                let o = off as u64 * e;
                ffi::CollArgs { src: src + o, dst: dst + o, count: n as u64, avg_n, ..self.base_args(AR_TWOSHOT) }
            })
        };
        // SAFETY: forwarded to the caller.
        unsafe { self.enqueue(stream, func, &subs) }
    }

    /// `dst` (on `root` only) `= op over ranks of src`.
    ///
    /// # Safety
    /// As [`DeviceComm::all_reduce`]; `dst` is only touched on `root`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn reduce(&self, stream: RawStream, dtype: DType, op: ReduceOp, src: u64, dst: u64, count: usize, root: usize) -> Result<()> {
        self.check_rank(root)?;
        let func = self.kernels.coll_func(dtype, op)?;
        elems_bytes(dtype, count)?;
        if self.identity_at_world_1(src, dst, Some(dtype)) {
            return self.check();
        }
        let avg_n = self.avg_divisor(op);
        let e = dtype.size() as u64;
        let chunk = Self::chunk_elems(dtype, self.opts.slot_bytes).max(1);
        let subs = split(count, chunk, |off, n| {
            let o = off as u64 * e;
            ffi::CollArgs { src: src + o, dst: dst + o, count: n as u64, avg_n, root: root as u32, ..self.lane_args(REDUCE, n * dtype.size()) }
        });
        // SAFETY: forwarded to the caller.
        unsafe { self.enqueue(stream, func, &subs) }
    }

    /// `dst = op over ranks of src[rank * count .. (rank + 1) * count]`.
    ///
    /// # Safety
    /// `src` valid for `world * count` elements, `dst` for `count`, not overlapping; otherwise as
    /// [`DeviceComm::all_reduce`].
    pub unsafe fn reduce_scatter(&self, stream: RawStream, dtype: DType, op: ReduceOp, src: u64, dst: u64, count: usize) -> Result<()> {
        let bytes = elems_bytes(dtype, count)?;
        elems_bytes(dtype, count.saturating_mul(self.world))?;
        let blocks: Vec<usize> = (0..self.world).map(|p| p * bytes).collect();
        // SAFETY: forwarded to the caller; the blocks tile `src`.
        unsafe { self.reduce_scatter_blocks(stream, dtype, op, src, &blocks, dst, count) }
    }

    /// `dst = op over ranks of the block at src + block_offsets[rank]` (`count` elements each): the
    /// blocks may sit anywhere in `src` (a group whose view lost ranks keeps its blocks where the
    /// group ranks put them).
    ///
    /// # Safety
    /// Every `[src + block_offsets[p], + count elements)` is valid device memory, none overlapping
    /// `dst` (valid for `count`); otherwise as [`DeviceComm::all_reduce`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn reduce_scatter_blocks(&self, stream: RawStream, dtype: DType, op: ReduceOp, src: u64, block_offsets: &[usize], dst: u64, count: usize) -> Result<()> {
        if block_offsets.len() != self.world {
            return Err(KernelError::InvalidArgument { reason: "reduce_scatter: one block offset per rank" });
        }
        let func = self.kernels.coll_func(dtype, op)?;
        elems_bytes(dtype, count)?;
        let avg_n = self.avg_divisor(op);
        let e = dtype.size() as u64;
        let chunk = Self::chunk_elems(dtype, self.opts.slot_bytes).max(1);
        let mut blocks = [0u64; MAX_RANKS];
        for (b, &o) in blocks.iter_mut().zip(block_offsets) {
            *b = o as u64;
        }
        let subs = split(count, chunk, |off, n| {
            let o = off as u64 * e;
            ffi::CollArgs {
                src: src + o,
                dst: dst + o,
                count: n as u64,
                send_off: blocks,
                avg_n,
                ..self.lane_args(REDUCE_SCATTER, n * dtype.size())
            }
        });
        // SAFETY: forwarded to the caller.
        unsafe { self.enqueue(stream, func, &subs) }
    }

    /// Zeroes `bytes` at `ptr` on `stream` (stream-ordered, capturable in a CUDA graph): the blocks a
    /// group's inactive ranks would have filled.
    ///
    /// # Safety
    /// `ptr` is device memory of this device valid for `bytes` until the memset runs; stream as above.
    pub unsafe fn zero(&self, stream: RawStream, ptr: u64, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.kernels.context().bind_to_thread().map_err(|e| cuda_err("binding the context", e))?;
        // SAFETY: forwarded to the caller.
        unsafe { ffi::memset_zero_async(ptr, bytes, stream.cu()) }.map_err(|e| cuda_err("cuMemsetD8Async", e))
    }

    /// Copies `bytes` from `src` on `root` to `dst` on every rank (`src == dst` for in place; `src` is
    /// only read on `root`).
    ///
    /// # Safety
    /// `src` (on root) and `dst` valid for `bytes`, equal or not overlapping; stream as above.
    pub unsafe fn broadcast(&self, stream: RawStream, src: u64, dst: u64, bytes: usize, root: usize) -> Result<()> {
        self.check_rank(root)?;
        if self.identity_at_world_1(src, dst, None) {
            return self.check();
        }
        if self.world > 2 && bytes >= BCAST_SCATTER_MIN {
            // Scatter + all-gather: the root sends each byte once instead of world - 1 times.
            let (offs, lens, shard) = byte_shards(bytes, self.world);
            let none = vec![0usize; self.world];
            let me = self.rank;
            // 1. Rank p gets shard p from the root (the root keeps its own, in place or copied).
            let (send_len, mut recv_off, mut recv_len) = (if me == root { lens.clone() } else { none.clone() }, none.clone(), none.clone());
            (recv_off[root], recv_len[root]) = (offs[me], lens[me]);
            // SAFETY: forwarded to the caller: the root reads `src` (its shards tile it), every rank
            // writes only its own shard of `dst`.
            unsafe { self.all_to_allv(stream, src, dst, &offs, &send_len, &recv_off, &recv_len, shard)? };
            // 2. All-gather of the shards inside `dst` (each rank's own shard is the source).
            let send_off = vec![offs[me]; self.world];
            let send_len = vec![lens[me]; self.world];
            // SAFETY: forwarded to the caller; the only source range is this rank's shard, whose
            // destination is itself (no copy), and the other destinations tile the rest of `dst`.
            return unsafe { self.all_to_allv(stream, dst, dst, &send_off, &send_len, &offs, &lens, shard) };
        }
        let subs = self.movement(BROADCAST, bytes, |a| (a.src, a.dst, a.root) = (src, dst, root as u32));
        // SAFETY: forwarded to the caller.
        unsafe { self.enqueue(stream, self.kernels.copy_func(), &subs) }
    }

    /// `dst[q * bytes ..][..bytes] = src of rank q` for every rank q.
    ///
    /// # Safety
    /// `src` valid for `bytes`, `dst` for `world * bytes`, not overlapping; stream as above.
    pub unsafe fn all_gather(&self, stream: RawStream, src: u64, dst: u64, bytes: usize) -> Result<()> {
        if self.identity_at_world_1(src, dst, None) {
            return self.check();
        }
        let subs = self.movement(ALL_GATHER, bytes, |a| (a.src, a.dst, a.dst_stride) = (src, dst, bytes as u64));
        // SAFETY: forwarded to the caller.
        unsafe { self.enqueue(stream, self.kernels.copy_func(), &subs) }
    }

    /// Even all-to-all: block p (`bytes` long) of `src` goes to rank p, which stores it as block `rank`
    /// of its `dst`.
    ///
    /// # Safety
    /// `src` and `dst` valid for `world * bytes`, not overlapping; stream as above.
    pub unsafe fn all_to_all(&self, stream: RawStream, src: u64, dst: u64, bytes: usize) -> Result<()> {
        let offs: Vec<usize> = (0..self.world).map(|p| p * bytes).collect();
        let lens = vec![bytes; self.world];
        // SAFETY: forwarded to the caller; the blocks tile both buffers exactly.
        unsafe { self.all_to_allv(stream, src, dst, &offs, &lens, &offs, &lens, bytes) }
    }

    /// Uneven all-to-all (byte offsets and lengths per peer). `max_pair_bytes` must be the same on every
    /// rank and at least every length any rank sends (the split into sub-operations depends on it).
    ///
    /// # Safety
    /// Every `[src + send_off[p], + send_len[p])` and `[dst + recv_off[q], + recv_len[q])` is valid device
    /// memory of this device until the operation completes; destination ranges do not overlap each
    /// other or a source range; `send_len[p]` equals what rank p passes as `recv_len[rank]`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn all_to_allv(
        &self,
        stream: RawStream,
        src: u64,
        dst: u64,
        send_off: &[usize],
        send_len: &[usize],
        recv_off: &[usize],
        recv_len: &[usize],
        max_pair_bytes: usize,
    ) -> Result<()> {
        let w = self.world;
        if [send_off.len(), send_len.len(), recv_off.len(), recv_len.len()].iter().any(|&l| l != w) {
            return Err(KernelError::InvalidArgument { reason: "all_to_allv: offsets and lengths need one entry per rank" });
        }
        if send_len.iter().chain(recv_len).any(|&l| l > max_pair_bytes) {
            return Err(KernelError::InvalidArgument { reason: "all_to_allv: a length exceeds max_pair_bytes" });
        }
        if send_len[self.rank] != recv_len[self.rank] {
            return Err(KernelError::InvalidArgument { reason: "all_to_allv: the block a rank sends itself must match what it receives" });
        }
        // Pipelined over chunks of the longest block (agreed by every rank).
        let subs = self.movement(ALL_TO_ALL, max_pair_bytes, |a| {
            (a.src, a.dst) = (src, dst);
            for p in 0..w {
                (a.send_off[p], a.send_len[p]) = (send_off[p] as u64, send_len[p] as u64);
                (a.recv_off[p], a.recv_len[p]) = (recv_off[p] as u64, recv_len[p] as u64);
            }
        });
        // SAFETY: forwarded to the caller.
        unsafe { self.enqueue(stream, self.kernels.copy_func(), &subs) }
    }

    /// Sends `bytes` at `src` to `peer` (which posts a matching [`DeviceComm::recv`]). Sends of more
    /// than two p2p slots wait for the receiver: exchange in both directions with
    /// [`DeviceComm::send_recv`].
    ///
    /// # Safety
    /// `src` valid for `bytes` until the operation completes on `stream`; stream as above.
    pub unsafe fn send(&self, stream: RawStream, src: u64, bytes: usize, peer: usize) -> Result<()> {
        self.check_peer(peer)?;
        let subs = self.p2p_chunks(SEND, src, bytes, peer);
        // SAFETY: forwarded to the caller.
        unsafe { self.enqueue(stream, self.kernels.copy_func(), &subs) }
    }

    /// Receives `bytes` from `peer` into `dst`.
    ///
    /// # Safety
    /// `dst` valid for `bytes` until the operation completes on `stream`; stream as above.
    pub unsafe fn recv(&self, stream: RawStream, dst: u64, bytes: usize, peer: usize) -> Result<()> {
        self.check_peer(peer)?;
        let subs = self.p2p_chunks(RECV, dst, bytes, peer);
        // SAFETY: forwarded to the caller.
        unsafe { self.enqueue(stream, self.kernels.copy_func(), &subs) }
    }

    /// A grouped send to `to` and receive from `from` (as NCCL's grouped `ncclSend` + `ncclRecv`): the
    /// chunks of both are interleaved, so rings and pairwise exchanges of any size cannot deadlock.
    /// (A lone [`DeviceComm::send`] larger than two p2p slots completes only once the peer's matching
    /// receive runs, which a receive queued behind the peer's own send never does.)
    ///
    /// # Safety
    /// `src` valid for `send_bytes`, `dst` for `recv_bytes`, not overlapping, until the operation
    /// completes on `stream`; stream as above.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn send_recv(&self, stream: RawStream, src: u64, send_bytes: usize, to: usize, dst: u64, recv_bytes: usize, from: usize) -> Result<()> {
        self.check_peer(to)?;
        self.check_peer(from)?;
        let sends = self.p2p_chunks(SEND, src, send_bytes, to);
        let recvs = self.p2p_chunks(RECV, dst, recv_bytes, from);
        let mut subs = Vec::with_capacity(sends.len() + recvs.len());
        for i in 0..sends.len().max(recvs.len()) {
            subs.extend(sends.get(i).copied());
            subs.extend(recvs.get(i).copied());
        }
        // SAFETY: forwarded to the caller.
        unsafe { self.enqueue(stream, self.kernels.copy_func(), &subs) }
    }

    /// One launch per p2p slot of a send (`ptr` is the source) or receive (`ptr` is the destination).
    fn p2p_chunks(&self, kind: u32, ptr: u64, bytes: usize, peer: usize) -> Vec<ffi::CollArgs> {
        split(bytes, self.opts.p2p_slot, |off, n| {
            let o = off as u64;
            let (src, dst) = if kind == SEND { (ptr + o, 0) } else { (0, ptr + o) };
            ffi::CollArgs { src, dst, count: n as u64, root: peer as u32, ..self.base_args(kind) }
        })
    }

    fn check_rank(&self, r: usize) -> Result<()> {
        if r >= self.world {
            return Err(KernelError::InvalidArgument { reason: "root rank out of range" });
        }
        Ok(())
    }

    fn check_peer(&self, p: usize) -> Result<()> {
        if p >= self.world || p == self.rank {
            return Err(KernelError::InvalidArgument { reason: "peer must be another rank of the communicator" });
        }
        Ok(())
    }

    /// Waits for `stream` and then reports whether any collective of this communicator gave up
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `(name, bytes, array length)` of every field of the CUDA `struct CollArgs`, in order.
    fn cuda_fields() -> Vec<(String, usize, usize)> {
        let src = super::super::parts::COLL_SRC;
        let body = &src[src.find("struct CollArgs {").unwrap()..];
        let body = &body[..body.find("};").unwrap()];
        let mut out = Vec::new();
        for line in body.lines().skip(1) {
            let decl = line.split("//").next().unwrap().trim();
            let Some(decl) = decl.strip_suffix(';') else { continue };
            let (ty, names) = decl.split_once(' ').unwrap();
            let size = match ty {
                "u64" => 8,
                "u32" => 4,
                other => panic!("unexpected type {other} in CollArgs"),
            };
            for n in names.split(',') {
                let n = n.trim();
                let (name, len) = match n.split_once('[') {
                    Some((name, rest)) => (name, if rest.starts_with("CH_MAX_RANKS") { MAX_RANKS } else { rest.trim_end_matches(']').parse().unwrap() }),
                    None => (n, 1),
                };
                out.push((name.to_string(), size, len));
            }
        }
        out
    }

    #[test]
    fn coll_args_layout_matches_the_cuda_struct() {
        use std::mem::offset_of;
        let rust: Vec<(&str, usize)> = vec![
            ("ws", offset_of!(ffi::CollArgs, ws)),
            ("src", offset_of!(ffi::CollArgs, src)),
            ("dst", offset_of!(ffi::CollArgs, dst)),
            ("count", offset_of!(ffi::CollArgs, count)),
            ("dst_stride", offset_of!(ffi::CollArgs, dst_stride)),
            ("slot_bytes", offset_of!(ffi::CollArgs, slot_bytes)),
            ("p2p_slot", offset_of!(ffi::CollArgs, p2p_slot)),
            ("staging_off", offset_of!(ffi::CollArgs, staging_off)),
            ("p2p_off", offset_of!(ffi::CollArgs, p2p_off)),
            ("timeout_ns", offset_of!(ffi::CollArgs, timeout_ns)),
            ("chunk", offset_of!(ffi::CollArgs, chunk)),
            ("bar_off", offset_of!(ffi::CollArgs, bar_off)),
            ("state_off", offset_of!(ffi::CollArgs, state_off)),
            ("ctl", offset_of!(ffi::CollArgs, ctl)),
            ("send_off", offset_of!(ffi::CollArgs, send_off)),
            ("send_len", offset_of!(ffi::CollArgs, send_len)),
            ("recv_off", offset_of!(ffi::CollArgs, recv_off)),
            ("recv_len", offset_of!(ffi::CollArgs, recv_len)),
            ("kind", offset_of!(ffi::CollArgs, kind)),
            ("rank", offset_of!(ffi::CollArgs, rank)),
            ("world", offset_of!(ffi::CollArgs, world)),
            ("root", offset_of!(ffi::CollArgs, root)),
            ("avg_n", offset_of!(ffi::CollArgs, avg_n)),
            ("pad", offset_of!(ffi::CollArgs, pad)),
        ];
        let cuda = cuda_fields();
        assert_eq!(cuda.len(), rust.len(), "field count: CUDA {cuda:?}");
        let mut off = 0;
        for ((name, size, len), (rname, roff)) in cuda.iter().zip(&rust) {
            assert_eq!(name, rname, "field order");
            assert_eq!(off, *roff, "offset of {name}");
            off += size * len;
        }
        assert_eq!(off, std::mem::size_of::<ffi::CollArgs>());
    }

    /// The byte offsets of the workspace layout, as the CUDA source `#define`s them.
    fn cuda_define(name: &str) -> u64 {
        let src = super::super::parts::COLL_SRC;
        let line = src.lines().find(|l| l.starts_with(&format!("#define {name} "))).unwrap_or_else(|| panic!("{name} not defined"));
        line.split_whitespace().nth(2).unwrap().trim_end_matches("ull").trim_end_matches('u').parse().unwrap()
    }

    #[test]
    fn workspace_layout_matches_the_cuda_source_and_regions_are_disjoint() {
        assert_eq!(cuda_define("CH_MAX_RANKS"), MAX_RANKS as u64);
        assert_eq!(cuda_define("CH_MAX_BLOCKS"), MAX_BLOCKS as u64);
        assert_eq!(cuda_define("CH_ERROR"), ERROR_OFF);
        assert_eq!(cuda_define("CH_CTL_ABORT"), super::super::control::CTL_ABORT as u64);
        assert_eq!(cuda_define("CH_CTL_ERROR"), super::super::control::CTL_ERROR as u64);
        assert_eq!(cuda_define("CH_FAIL_DEADLINE"), super::super::control::FAIL_DEADLINE);
        assert_eq!(cuda_define("CH_FAIL_ABORTED"), super::super::control::FAIL_ABORTED);
        const { assert!(super::super::control::CTL_ERROR + 8 <= super::super::control::CONTROL_BYTES) };
        for (name, kind) in [
            ("CH_AR_ONESHOT", AR_ONESHOT),
            ("CH_AR_TWOSHOT", AR_TWOSHOT),
            ("CH_AR_LL", AR_LL),
            ("CH_REDUCE", REDUCE),
            ("CH_REDUCE_SCATTER", REDUCE_SCATTER),
            ("CH_BROADCAST", BROADCAST),
            ("CH_ALL_GATHER", ALL_GATHER),
            ("CH_ALL_TO_ALL", ALL_TO_ALL),
            ("CH_SEND", SEND),
            ("CH_RECV", RECV),
        ] {
            assert_eq!(cuda_define(name), kind as u64, "{name}");
        }
        let words = cuda_define("CH_STATE_WORDS");
        let flags = |blocks: u64| blocks * MAX_RANKS as u64 * 8;
        // (start, length) of every fixed region, in address order.
        let regions = [
            (BULK_BAR, flags(MAX_BLOCKS as u64)),
            (cuda_define("CH_FLAG_P2P_DATA"), flags(MAX_BLOCKS as u64)),
            (cuda_define("CH_FLAG_P2P_ACK"), flags(MAX_BLOCKS as u64)),
            (BULK_STATE, MAX_BLOCKS as u64 * words * 8),
            (ERROR_OFF, 8),
            (SMALL_BAR, flags(MAX_SMALL_BLOCKS as u64)),
            (SMALL_STATE, MAX_SMALL_BLOCKS as u64 * words * 8),
        ];
        for w in regions.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "regions overlap: {w:?}");
        }
        let last = regions[regions.len() - 1];
        assert!(last.0 + last.1 <= STAGING_OFF as u64);
        assert_eq!(STAGING_OFF % 4096, 0);
        // Per-peer state words: barrier, steps, sends to 8 peers, receives from 8 peers.
        assert!(2 + 2 * MAX_RANKS as u64 <= words);
        for world in 1..=MAX_RANKS {
            let o = CommOptions::from_env(world);
            let l = Layout::new(world, &o);
            assert!(l.p2p_off >= STAGING_OFF + 2 * world * o.slot_bytes);
            assert!(l.small_off >= l.p2p_off + 2 * world * o.p2p_slot);
            assert!(l.small_slot >= o.oneshot_max && l.small_slot.is_multiple_of(4096));
            assert!(l.ll_off >= l.small_off + 2 * world * l.small_slot);
            assert!(l.ll_slot >= 2 * o.ll_max && l.ll_slot.is_multiple_of(4096));
            assert_eq!(l.total, l.ll_off + 2 * world * l.ll_slot);
            assert!(o.slot_bytes.is_multiple_of(4096) && o.p2p_slot.is_multiple_of(16));
        }
    }

    #[test]
    fn broadcast_shards_tile_the_message() {
        for world in 3..=MAX_RANKS {
            for bytes in [BCAST_SCATTER_MIN, BCAST_SCATTER_MIN + 1, (1 << 20) + 7, 1 << 30] {
                let (offs, lens, shard) = byte_shards(bytes, world);
                assert_eq!(offs[0], 0);
                for p in 1..world {
                    assert_eq!(offs[p], offs[p - 1] + lens[p - 1], "world {world} bytes {bytes}");
                }
                assert_eq!(offs[world - 1] + lens[world - 1], bytes);
                assert!(lens.iter().all(|&l| l <= shard) && shard % 16 == 0);
                assert!(offs.iter().all(|&o| o % 16 == 0));
            }
        }
    }

    #[test]
    fn split_tiles_the_range_in_order() {
        let pieces = |total, cap| -> Vec<(u64, u64)> {
            split(total, cap, |off, n| ffi::CollArgs { src: off as u64, count: n as u64, ..Default::default() })
                .iter()
                .map(|a| (a.src, a.count))
                .collect()
        };
        assert_eq!(pieces(10, 4), vec![(0, 4), (4, 4), (8, 2)]);
        assert_eq!(pieces(8, 4), vec![(0, 4), (4, 4)]);
        assert_eq!(pieces(3, 4), vec![(0, 3)]);
        assert!(pieces(0, 4).is_empty());
    }

    #[test]
    fn pipeline_steps_cover_the_message_within_a_slot() {
        for slot in [2 << 20, 128 << 20] {
            for bytes in [1usize, 4095, 4096, 3 << 20, 8 << 20, (64 << 20) + 7, 1 << 30, (1 << 30) + 12345] {
                let c = pipeline_chunk(bytes, slot, 64);
                assert!(c > 0 && c <= slot && c.is_multiple_of(4096) || c == slot, "bytes {bytes} slot {slot}: chunk {c}");
                let steps = bytes.div_ceil(c);
                assert!(steps >= 1, "bytes {bytes}");
                if slot >= (128 << 20) && bytes >= 16 << 20 {
                    assert!((2..=64).contains(&steps), "bytes {bytes}: {steps} steps");
                }
            }
        }
    }
}
