//! The sizes every rank of a device communicator agrees on: the workspace layout (mirrored by the CUDA
//! source, `super::super::coll_source`), the kernels' operation codes, and the tunable [`CommOptions`].
//! Plain numbers, no CUDA: the planning (`super::plan`) and the executor (`super`) both read them.
#![deny(unsafe_code)]

use std::time::Duration;

/// Most ranks a device communicator spans (kernel arrays are sized for it).
pub const MAX_RANKS: usize = 8;
/// Most thread blocks a collective kernel is launched with (flag arrays are sized for it).
pub const MAX_BLOCKS: u32 = 128;
/// Where staging starts in a workspace (after flags, counters and the error word; see the source).
pub(super) const STAGING_OFF: usize = 73728;
/// The device error word (kernels only; the host reads its mirror in the control block).
#[cfg(test)]
const ERROR_OFF: u64 = 57344;
/// Barrier flags and counters of the two lanes (bulk, small); see the layout in `coll_source`.
pub(super) const BULK_BAR: u64 = 0;
pub(super) const BULK_STATE: u64 = 24576;
pub(super) const SMALL_BAR: u64 = 61440;
pub(super) const SMALL_STATE: u64 = 63488;
/// Most thread blocks of the small lane.
pub const MAX_SMALL_BLOCKS: u32 = 32;

pub(super) const AR_ONESHOT: u32 = 1;
pub(super) const AR_TWOSHOT: u32 = 2;
pub(super) const AR_LL: u32 = 5;
pub(super) const REDUCE: u32 = 3;
pub(super) const REDUCE_SCATTER: u32 = 4;
pub(super) const BROADCAST: u32 = 10;
pub(super) const ALL_GATHER: u32 = 11;
pub(super) const ALL_TO_ALL: u32 = 12;
pub(super) const SEND: u32 = 13;
pub(super) const RECV: u32 = 14;

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
    /// How long a kernel waits for a peer before it gives up ([`crate::KernelError::CollectiveTimeout`]).
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

    pub(super) fn wire(&self) -> String {
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
pub(super) struct Layout {
    pub(super) p2p_off: usize,
    pub(super) small_off: usize,
    /// Slot of the small lane (`oneshot_max` rounded up to 4 KiB).
    pub(super) small_slot: usize,
    pub(super) ll_off: usize,
    /// Slot of the LL all_reduce: 16-byte lines of 8 payload bytes for `ll_max` bytes, 4 KiB multiple.
    pub(super) ll_slot: usize,
    pub(super) total: usize,
}

impl Layout {
    pub(super) fn new(world: usize, o: &CommOptions) -> Layout {
        let p2p_off = STAGING_OFF + 2 * world * o.slot_bytes;
        let small_off = p2p_off + 2 * world * o.p2p_slot;
        let small_slot = o.oneshot_max.max(1).next_multiple_of(4096);
        let ll_off = small_off + 2 * world * small_slot;
        let ll_slot = (2 * o.ll_max).next_multiple_of(4096);
        Layout { p2p_off, small_off, small_slot, ll_off, ll_slot, total: ll_off + 2 * world * ll_slot }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::ffi;

    /// `(name, bytes, array length)` of every field of the CUDA `struct CollArgs`, in order.
    fn cuda_fields() -> Vec<(String, usize, usize)> {
        let src = crate::cuda::parts::COLL_SRC;
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
        let src = crate::cuda::parts::COLL_SRC;
        let line = src.lines().find(|l| l.starts_with(&format!("#define {name} "))).unwrap_or_else(|| panic!("{name} not defined"));
        line.split_whitespace().nth(2).unwrap().trim_end_matches("ull").trim_end_matches('u').parse().unwrap()
    }

    #[test]
    fn workspace_layout_matches_the_cuda_source_and_regions_are_disjoint() {
        assert_eq!(cuda_define("CH_MAX_RANKS"), MAX_RANKS as u64);
        assert_eq!(cuda_define("CH_MAX_BLOCKS"), MAX_BLOCKS as u64);
        assert_eq!(cuda_define("CH_ERROR"), ERROR_OFF);
        assert_eq!(cuda_define("CH_CTL_ABORT"), crate::cuda::control::CTL_ABORT as u64);
        assert_eq!(cuda_define("CH_CTL_ERROR"), crate::cuda::control::CTL_ERROR as u64);
        assert_eq!(cuda_define("CH_FAIL_DEADLINE"), crate::cuda::control::FAIL_DEADLINE);
        assert_eq!(cuda_define("CH_FAIL_ABORTED"), crate::cuda::control::FAIL_ABORTED);
        const { assert!(crate::cuda::control::CTL_ERROR + 8 <= crate::cuda::control::CONTROL_BYTES) };
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
}
