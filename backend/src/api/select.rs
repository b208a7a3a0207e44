//! Which algorithm runs for an operation, from the group's shape, the message size and the cost
//! class of its links (shared memory or not) — never from a transport's name.
//! `CHORUS_ALGO=<name>` forces a choice where it applies (benchmarks and tests).

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllReduceAlgo {
    Direct,
    RsAg,
    Ring,
}

#[derive(Clone, Copy, Debug)]
pub struct Topo {
    pub n: usize,
    pub me: usize,
    pub chunk: usize,
    pub shared_memory: bool,
}

fn forced() -> Option<String> {
    std::env::var("CHORUS_ALGO").ok()
}

/// Direct (one round, every rank reduces everything) below a size that shrinks with the group;
/// above it, reduce-scatter + all-gather through shared memory, or a ring over sockets.
pub fn all_reduce(t: &Topo, bytes: usize) -> AllReduceAlgo {
    match forced().as_deref() {
        Some("direct") => return AllReduceAlgo::Direct,
        Some("rs_ag") => return AllReduceAlgo::RsAg,
        Some("ring") => return AllReduceAlgo::Ring,
        _ => {}
    }
    let small = if t.shared_memory { (128 * 1024 / t.n.max(1)).max(16 * 1024) } else { 32 * 1024 };
    if t.n <= 2 && bytes <= t.chunk || bytes <= small {
        AllReduceAlgo::Direct
    } else if t.shared_memory {
        AllReduceAlgo::RsAg
    } else {
        AllReduceAlgo::Ring
    }
}

/// Ring for large blocks over sockets; direct otherwise.
pub fn use_ring(t: &Topo, total_bytes: usize) -> bool {
    match forced().as_deref() {
        Some("ring") => true,
        Some("direct") => false,
        _ => !t.shared_memory && t.n > 2 && total_bytes > 256 * 1024,
    }
}

/// Pipelined chain for broadcasts of more than one chunk to more than one receiver.
pub fn broadcast_chain(t: &Topo, bytes: usize) -> bool {
    match forced().as_deref() {
        Some("chain") => true,
        Some("direct") => false,
        _ => t.n > 2 && bytes > t.chunk,
    }
}

/// Reduce-scatter then gather to the root for large reductions.
pub fn reduce_rs_gather(t: &Topo, bytes: usize) -> bool {
    match forced().as_deref() {
        Some("rs_gather") => true,
        Some("direct") => false,
        _ => t.n > 2 && bytes > 256 * 1024,
    }
}
