//! Which algorithm runs for an operation, from the group's shape, the message size and the cost
//! class of its links (shared memory or not) — never from a transport's name.
//! `Options::algo` (`CHORUS_ALGO=<name>`, read at group creation) forces a choice where it applies
//! (benchmarks and tests).
use crate::algo::{self, Buf, Plan};
use crate::options::ForcedAlgo;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllReduceAlgo {
    Direct,
    RsAg,
    Ring,
}

/// The ranks an operation runs over (the active members of the current view) and the link
/// properties that pick algorithms. Plans are built for `m = members.len()` dense ranks and then
/// renamed to group ranks.
#[derive(Clone, Debug)]
pub struct Topo {
    /// Group size (all ranks, active or not).
    pub size: usize,
    /// Active members, ascending.
    pub members: Vec<usize>,
    /// This rank's group rank.
    pub rank: usize,
    pub chunk: usize,
    pub shared_memory: bool,
    /// Fault tolerance on: in-place inputs are saved so a collective can be re-run.
    pub ft: bool,
    /// In-place inputs of at least this many bytes are not saved (`Options::ft_save_limit`).
    pub save_limit: usize,
    /// The algorithm the group's options force, if any.
    pub forced: Option<ForcedAlgo>,
}

impl Topo {
    /// Number of participating ranks.
    pub fn m(&self) -> usize {
        self.members.len()
    }

    /// This rank's dense index among the members.
    pub fn me(&self) -> usize {
        self.members.iter().position(|&r| r == self.rank).expect("an active rank runs collectives")
    }

    /// Dense index of group rank `r`, if active.
    pub fn dense(&self, r: usize) -> Option<usize> {
        self.members.iter().position(|&x| x == r)
    }

    pub fn full(&self) -> bool {
        self.members.len() == self.size
    }

    /// Renames a dense plan's peers to group ranks.
    pub fn place(&self, plan: Plan) -> Plan {
        if self.full() {
            plan
        } else {
            algo::remap::to_members(plan, &self.members)
        }
    }

    /// Also moves dense per-rank blocks of `buf` to the members' blocks.
    pub fn place_blocks(&self, plan: Plan, buf: Buf, block: usize) -> Plan {
        if self.full() {
            plan
        } else {
            algo::remap::spread_blocks(algo::remap::to_members(plan, &self.members), buf, block, &self.members)
        }
    }
}

/// Direct (one round, every rank reduces everything) below a size that shrinks with the group;
/// above it, reduce-scatter + all-gather through shared memory, or a ring over sockets.
pub fn all_reduce(t: &Topo, bytes: usize) -> AllReduceAlgo {
    match t.forced {
        Some(ForcedAlgo::Direct) => return AllReduceAlgo::Direct,
        Some(ForcedAlgo::RsAg) => return AllReduceAlgo::RsAg,
        Some(ForcedAlgo::Ring) => return AllReduceAlgo::Ring,
        _ => {}
    }
    let n = t.m();
    let small = if t.shared_memory { (128 * 1024 / n.max(1)).max(16 * 1024) } else { 32 * 1024 };
    if n <= 2 && bytes <= t.chunk || bytes <= small {
        AllReduceAlgo::Direct
    } else if t.shared_memory {
        AllReduceAlgo::RsAg
    } else {
        AllReduceAlgo::Ring
    }
}

/// Ring for large blocks over sockets; direct otherwise.
pub fn use_ring(t: &Topo, total_bytes: usize) -> bool {
    match t.forced {
        Some(ForcedAlgo::Ring) => true,
        Some(ForcedAlgo::Direct) => false,
        _ => !t.shared_memory && t.m() > 2 && total_bytes > 256 * 1024,
    }
}

/// Pipelined chain for broadcasts of more than one chunk to more than one receiver.
pub fn broadcast_chain(t: &Topo, bytes: usize) -> bool {
    match t.forced {
        Some(ForcedAlgo::Chain) => true,
        Some(ForcedAlgo::Direct) => false,
        _ => t.m() > 2 && bytes > t.chunk,
    }
}

/// Reduce-scatter then gather to the root for large reductions.
pub fn reduce_rs_gather(t: &Topo, bytes: usize) -> bool {
    match t.forced {
        Some(ForcedAlgo::RsGather) => true,
        Some(ForcedAlgo::Direct) => false,
        _ => t.m() > 2 && bytes > 256 * 1024,
    }
}
