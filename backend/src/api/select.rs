//! Which algorithm runs for an operation, from the group's shape, the message size and the cost
//! class of its links (shared memory within a host, the network across hosts) — never from a
//! transport's name. `Options::algo` (`CHORUS_ALGO=<name>`, read at group creation) forces a
//! choice where it applies (benchmarks and tests).
use crate::algo::{self, Buf, Cross, HostLayout, Plan};
use crate::options::ForcedAlgo;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllReduceAlgo {
    Direct,
    RsAg,
    Ring,
    /// Reduce onto one rank per host, all-reduce among those across hosts, broadcast within hosts.
    HierLeaders(Cross),
    /// Reduce-scatter within hosts, all-reduce of each segment across hosts, all-gather within.
    HierSegments(Cross),
}

/// Broadcast and reduce: the flat choice, or down (up) the host tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootedAlgo {
    /// Broadcast: direct; reduce: direct.
    Direct,
    /// Broadcast: pipelined chain; reduce: reduce-scatter then gather.
    Pipelined,
    Hier(Cross),
}

/// All-gather and reduce-scatter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlocksAlgo {
    Direct,
    Ring,
    /// One tree per block through one rank per host.
    Hier,
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
    /// The host of each active member, in `members` order (dense: numbered by first
    /// appearance). This is the links' cost class: members on one host are connected by shared
    /// memory (the transport table tries it first, and it connects every pair with equal host
    /// identities), members on different hosts by the network (RDMA or TCP).
    pub hosts: Vec<usize>,
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

    /// Whether every active pair shares memory (all members on one host).
    pub fn shared_memory(&self) -> bool {
        self.hosts.iter().all(|&h| h == 0)
    }

    /// Which host each dense rank is on.
    pub fn layout(&self) -> HostLayout {
        HostLayout::new(&self.hosts)
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

/// The collectives that have a two-level schedule (`algo::hier`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coll {
    AllReduce,
    Broadcast,
    Reduce,
    AllGather,
    ReduceScatter,
}

/// The shapes of two-level schedules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Leaders,
    Segments,
    Tree,
    Blocks,
}

/// Below this, an all-reduce is latency-bound: one leader per host exchanges the whole message
/// (three short phases) rather than splitting it into one segment per local rank.
const HIER_LEADERS_MAX: usize = 64 * 1024;
/// What one rank may send in a direct exchange across hosts (`bytes × (H-1)`) before a ring, with
/// `2 (H-1)` hops but each byte sent about twice, is cheaper.
const HIER_DIRECT_MAX: usize = 256 * 1024;

/// The one table of two-level choices; `None`: run the flat algorithm. Two-level schedules run
/// where there are at least two hosts and one of them has at least two active ranks (otherwise
/// they are the flat algorithm with extra steps), or where `CHORUS_ALGO=hier` forces them. Why
/// each entry:
///
/// | collective     | size (`bytes` per rank)    | schedule                                      |
/// |----------------|----------------------------|-----------------------------------------------|
/// | all_reduce     | ≤ 64 KiB                   | leaders: 3 short phases, one network exchange |
/// | all_reduce     | larger                     | segments: `L` exchanges of `1/L` side by side |
/// | broadcast/reduce | ≤ chunk, or 2 hosts      | tree, star across hosts: one network hop       |
/// | broadcast/reduce | > chunk and ≥ 3 hosts    | tree, chain across hosts: each host sends once |
/// | all_gather/reduce_scatter | any             | a tree per block: `n - L` blocks in per host   |
///
/// Across hosts, an all-reduce exchanges directly while `bytes × (H-1)` stays within 256 KiB
/// or there are only two hosts (a ring of two is the direct exchange in two steps), else by ring.
fn two_level(t: &Topo, coll: Coll, bytes: usize) -> Option<(Shape, Cross)> {
    match t.forced {
        Some(ForcedAlgo::Hier) => {}
        Some(_) => return None,
        None => {
            let l = t.layout();
            if l.hosts() < 2 || l.widest() < 2 {
                return None;
            }
        }
    }
    let hosts = t.hosts.iter().max().map_or(1, |h| h + 1);
    let exchange = |bytes: usize| if hosts <= 2 || bytes * (hosts - 1) <= HIER_DIRECT_MAX { Cross::Direct } else { Cross::Ring };
    let pipelined = if hosts > 2 && bytes > t.chunk { Cross::Ring } else { Cross::Direct };
    Some(match coll {
        Coll::AllReduce if bytes <= HIER_LEADERS_MAX => (Shape::Leaders, exchange(bytes)),
        Coll::AllReduce => (Shape::Segments, exchange(bytes / t.layout().widest())),
        Coll::Broadcast | Coll::Reduce => (Shape::Tree, pipelined),
        Coll::AllGather | Coll::ReduceScatter => (Shape::Blocks, Cross::Direct),
    })
}

/// Two-level where [`two_level`] says so. Flat: direct (one round, every rank reduces
/// everything) below a size that shrinks with the group; above it, reduce-scatter + all-gather
/// through shared memory, or a ring over sockets.
pub fn all_reduce(t: &Topo, bytes: usize) -> AllReduceAlgo {
    match (t.forced, two_level(t, Coll::AllReduce, bytes)) {
        (_, Some((Shape::Leaders, c))) => return AllReduceAlgo::HierLeaders(c),
        (_, Some((_, c))) => return AllReduceAlgo::HierSegments(c),
        (Some(ForcedAlgo::Direct), _) => return AllReduceAlgo::Direct,
        (Some(ForcedAlgo::RsAg), _) => return AllReduceAlgo::RsAg,
        (Some(ForcedAlgo::Ring), _) => return AllReduceAlgo::Ring,
        _ => {}
    }
    let n = t.m();
    let shared_memory = t.shared_memory();
    let small = if shared_memory { (128 * 1024 / n.max(1)).max(16 * 1024) } else { 32 * 1024 };
    if n <= 2 && bytes <= t.chunk || bytes <= small {
        AllReduceAlgo::Direct
    } else if shared_memory {
        AllReduceAlgo::RsAg
    } else {
        AllReduceAlgo::Ring
    }
}

/// All-gather and reduce-scatter of `block` bytes per rank: two-level where [`two_level`] says
/// so; flat, a ring for large totals over sockets, direct otherwise.
pub fn blocks(t: &Topo, coll: Coll, block: usize) -> BlocksAlgo {
    if two_level(t, coll, block).is_some() {
        return BlocksAlgo::Hier;
    }
    let ring = match t.forced {
        Some(ForcedAlgo::Ring) => true,
        Some(ForcedAlgo::Direct) => false,
        _ => !t.shared_memory() && t.m() > 2 && block * t.m() > 256 * 1024,
    };
    if ring {
        BlocksAlgo::Ring
    } else {
        BlocksAlgo::Direct
    }
}

/// Broadcast and reduce: two-level where [`two_level`] says so; flat, the pipelined form for
/// large messages to more than two ranks (broadcast: a chain once there is more than one chunk;
/// reduce: reduce-scatter then gather above 256 KiB), direct otherwise.
pub fn rooted(t: &Topo, coll: Coll, bytes: usize) -> RootedAlgo {
    if let Some((_, c)) = two_level(t, coll, bytes) {
        return RootedAlgo::Hier(c);
    }
    let (forcing, large) = match coll {
        Coll::Broadcast => (ForcedAlgo::Chain, bytes > t.chunk),
        _ => (ForcedAlgo::RsGather, bytes > 256 * 1024),
    };
    let pipelined = match t.forced {
        Some(f) if f == forcing => true,
        Some(ForcedAlgo::Direct) => false,
        _ => t.m() > 2 && large,
    };
    if pipelined {
        RootedAlgo::Pipelined
    } else {
        RootedAlgo::Direct
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Active members `0..hosts.len()` of a full group, as rank 0 sees them.
    fn topo(hosts: &[usize], forced: Option<ForcedAlgo>) -> Topo {
        let n = hosts.len();
        Topo { size: n, members: (0..n).collect(), rank: 0, chunk: 256 * 1024, hosts: hosts.to_vec(), ft: false, save_limit: 0, forced }
    }

    #[test]
    fn two_level_needs_two_hosts_and_a_host_with_two_ranks() {
        let (small, large) = (4096, 8 << 20);
        let two_by_two = topo(&[0, 0, 1, 1], None);
        assert_eq!(all_reduce(&two_by_two, small), AllReduceAlgo::HierLeaders(Cross::Direct));
        assert_eq!(all_reduce(&two_by_two, large), AllReduceAlgo::HierSegments(Cross::Direct));
        assert_eq!(rooted(&two_by_two, Coll::Broadcast, large), RootedAlgo::Hier(Cross::Direct));
        assert_eq!(blocks(&two_by_two, Coll::AllGather, small), BlocksAlgo::Hier);
        let four_hosts = topo(&[0, 0, 1, 1, 2, 2, 3, 3], None);
        assert_eq!(all_reduce(&four_hosts, large), AllReduceAlgo::HierSegments(Cross::Ring));
        assert_eq!(rooted(&four_hosts, Coll::Reduce, large), RootedAlgo::Hier(Cross::Ring));
        assert_eq!(rooted(&four_hosts, Coll::Reduce, small), RootedAlgo::Hier(Cross::Direct));
        // Uneven hosts (a rank of host 1 failed) stay two-level.
        assert_eq!(all_reduce(&topo(&[0, 0, 1], None), large), AllReduceAlgo::HierSegments(Cross::Direct));
        // One host, or one rank per host (what is left of 2 x 2 after a failure on each host): flat.
        assert_eq!(all_reduce(&topo(&[0, 0, 0, 0], None), large), AllReduceAlgo::RsAg);
        assert_eq!(all_reduce(&topo(&[0, 1, 2], None), large), AllReduceAlgo::Ring);
        assert_eq!(rooted(&topo(&[0, 1, 2], None), Coll::Broadcast, large), RootedAlgo::Pipelined);
        assert_eq!(blocks(&topo(&[0, 1], None), Coll::ReduceScatter, large), BlocksAlgo::Direct);
    }

    #[test]
    fn forcing_picks_flat_or_two_level_anywhere() {
        let two_by_two = |f| topo(&[0, 0, 1, 1], Some(f));
        assert_eq!(all_reduce(&two_by_two(ForcedAlgo::Ring), 16), AllReduceAlgo::Ring);
        assert_eq!(rooted(&two_by_two(ForcedAlgo::Chain), Coll::Broadcast, 16), RootedAlgo::Pipelined);
        assert_eq!(blocks(&two_by_two(ForcedAlgo::Direct), Coll::AllGather, 1 << 20), BlocksAlgo::Direct);
        let one_host = topo(&[0, 0, 0], Some(ForcedAlgo::Hier));
        assert_eq!(all_reduce(&one_host, 16), AllReduceAlgo::HierLeaders(Cross::Direct));
        assert_eq!(rooted(&one_host, Coll::Reduce, 16), RootedAlgo::Hier(Cross::Direct));
        assert_eq!(ForcedAlgo::parse("hier"), Some(ForcedAlgo::Hier));
    }
}
