//! CUDA C++ source of the GPU collectives (appended to the reduce source in every part of the module,
//! `super::source::module_parts`, so one build and one preload pass cover everything).
//!
//! Every rank owns one *workspace* allocation, mapped into every peer over CUDA IPC. Data moves by
//! **push**: a rank stores its contribution straight into the peer's staging slot (NVLink writes), then
//! signals. Layout of a workspace (byte offsets; `super::coll::options::Layout` mirrors it):
//!
//! | offset | what |
//! |---|---|
//! | 0 | bulk lane barrier flags `[block][rank]` u64, written by peer `rank` |
//! | 8192 | send flags `[block][rank]` u64, written by sender `rank` |
//! | 16384 | receive acks `[block][rank]` u64, written by receiver `rank` |
//! | 24576 | bulk lane, per block 32 u64: `[0]` barrier count, `[1]` staging step count, `[2+p]` sends to p, `[10+p]` receives from p |
//! | 57344 | error word: 0 while healthy, else `kind << 32 | block` of the first wait that gave up (kind 1: deadline, 2: host abort); mirrored into the host control block |
//! | 61440 | small lane barrier flags |
//! | 63488 | small lane counters |
//! | 73728 | bulk staging: 2 parities x world slots x `slot_bytes` |
//! | `p2p_off` | world sources x 2 parities x `p2p_slot` |
//! | `small_staging_off` | small lane staging: 2 parities x world slots x `oneshot_max` |
//! | `ll_off` | low-latency all_reduce lines: 2 parities x world slots x `2 * ll_max` |
//!
//! Two *lanes* with their own flags, counters and staging: single-step operations that fit the small
//! slots (latency-bound) run with a few thread blocks on the small lane, everything else with many
//! blocks on the bulk lane. The argument below holds per lane.
//!
//! All flags are monotonic counters, never reset: barrier `k` of block `b` stores `k`; waiting means
//! "at least `k`". The counters live on the device (STATE), so a CUDA graph that replays a collective
//! advances them exactly as an eager launch would.
//!
//! Why one barrier per phase is enough (per block, since every rank launches the same grid over the same
//! partition): staging is used in *steps* (one per collective, or one per pipeline chunk of a large
//! one-shot all_reduce or broadcast), counted per block on the device; step `k` writes only parity
//! region `k & 1` of the peers' staging. Before a block writes region `k & 1` in step `k`, it passed a
//! barrier of step `k - 1`; a peer's block signals that barrier only after finishing step `k - 2`, the
//! last reader of that region.
//!
//! The low-latency (LL) all_reduce for the smallest messages has no barrier at all: it writes 16-byte
//! *lines* of 8 payload bytes framed by the operation's flag twice, `{lo, flag, hi, flag}`, with one
//! 16-byte store, into its own region; the reader polls each line until both flags equal the
//! operation's. The flag is the op's sequence number (a per-block device counter, small-lane state
//! word 2) mapped into 1..2^32-1: never 0 (fresh memory) and never the value of the previous use of
//! the region. Completion still never travels inside user data: the frame lives in the library's
//! staging, and only the payload reaches the output. Region reuse is safe without a barrier: op `k + 2`
//! (same parity) is written only after this rank's op `k + 1` completed, which needed a line from
//! every peer's op `k + 1`, whose kernel started after that peer's op `k` (the last reader) finished.
pub(crate) use super::parts::COPY_KERNEL;
