//! Pure schedule builders: every collective compiles, per rank, to a [`Plan`] of [`Step`]s over
//! group-local peers and byte ranges of the operation's `Input`/`Output` buffers. Nothing here names
//! a transport, allocates device memory or does I/O, so every plan is checked by running the plans
//! of all ranks together in the single-threaded [`sim`]ulator.
//!
//! Conventions shared by every builder:
//!
//! * Sizes and offsets are in bytes. `elem` is the element size (1, 2, 4 or 8); for reductions every
//!   range boundary is a multiple of `elem`.
//! * A message of `L` bytes is split into `max(1, ceil(L / chunk))` chunks ([`num_chunks`]), so a
//!   zero-byte message is still exactly one zero-length chunk and every pair that communicates in an
//!   operation exchanges at least one chunk (the engine relies on this to detect mismatches).
//! * Every step moves at most `chunk` bytes (local `Copy` steps included).
//! * Sends fan out in the order `me+1, me+2, … (mod n)` so that ranks do not all hit the same peer
//!   first; `RecvReduce::from` lists are in ascending rank order so an engine can reduce in the
//!   canonical rank order (`local` belongs at position `me`) and give bitwise-identical float
//!   results on every rank for the direct all-reduce.
//! * `n == 1` plans contain only local `Copy` steps (or nothing for in-place broadcast/barrier).
//!
//! Flow control: the plans are deadlock-free with bounded per-pair slot rings of any depth `K >= 1`
//! when a forwarding step (`RecvCopySend`, `RecvReduceSend`) releases its receive slot before it
//! waits for room towards the next peer. If the engine forwards atomically (holds the receive slot
//! until it can write the next peer's slot), the cyclic ring plans (`*_ring`) need `K >= 2` for
//! n >= 3; everything else (including the pipelined chain) works with `K = 1`. Both models are
//! exercised by the tests.
//!
//! # Panics
//! Builders assert their preconditions (`me < n`, `root < n`, `chunk > 0`, `chunk % elem == 0`,
//! `elem` in {1, 2, 4, 8}, reduction sizes a multiple of `elem`); callers validate user input first.

pub mod all_gather;
pub mod all_reduce;
pub mod exchange;
pub mod hier;
pub mod plan;
pub mod reduce_scatter;
pub mod remap;
pub mod rooted;
/// The plan simulator: the algorithm tests run every plan through it.
#[cfg(any(test, feature = "internals"))]
pub mod sim;
pub mod split;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod hier_tests;

pub use all_gather::{all_gather_direct, all_gather_ring};
pub use all_reduce::{all_reduce_direct, all_reduce_ring, all_reduce_rs_ag};
pub use exchange::{all_to_all, barrier};
pub use hier::{all_gather_hier, all_reduce_hier, all_reduce_hier_leaders, broadcast_hier, reduce_hier, reduce_scatter_hier, Cross, HostLayout};
pub use plan::*;
pub use reduce_scatter::{reduce_scatter_direct, reduce_scatter_ring};
pub use rooted::{
    broadcast_chain, broadcast_direct, gather, reduce_direct, reduce_rs_gather, scatter,
};
