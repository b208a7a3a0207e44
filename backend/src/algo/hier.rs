//! Host-aware (two-level) schedules: shared memory within a host, the network across hosts, so
//! that each byte crosses the network about once per host instead of once per rank.
//!
//! A [`HostLayout`] says which host each dense rank is on. Hosts are numbered by their lowest
//! rank and list their ranks ascending. Hosts may hold different numbers of ranks (a failed rank
//! leaves its host one short): every builder handles that. Where the work is split into
//! `widest()` segments (columns), segment `j` of a host with `L` ranks belongs to its local rank
//! `j % L`, so a rank of a small host may own several segments.
//!
//! Builders concatenate phases (within a host, across hosts, within a host); every rank runs the
//! phases, and the segments inside a phase, in the same order, and each phase is a complete
//! exchange among its participants. The simulator checks every layout up to 16 hosts × 8 ranks,
//! even and uneven, for deadlock freedom with one slot per pair (two under atomic forwarding
//! where a phase is a ring of three or more hosts, as for the flat rings).
use super::all_reduce::{all_reduce_direct, all_reduce_ring};
use super::plan::{Plan, Range, Step};
use super::remap::{map_ranges, to_members};
use super::rooted::{broadcast_direct, reduce_direct};
use super::split::{check_common, check_reduce, check_root, chunk_of, num_chunks, push_copy, split_chunks, split_even};

/// How the ranks of different hosts exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cross {
    /// Everyone to everyone (all-reduce) or a star around the root (rooted): one network hop.
    Direct,
    /// A ring (all-reduce) or a pipelined chain (rooted): each host sends each byte about once.
    Ring,
}

/// Which host each dense rank is on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostLayout {
    host: Vec<usize>,
    hosts: Vec<Vec<usize>>,
}

impl HostLayout {
    /// From one label per dense rank (equal labels: same host; labels are small integers).
    pub fn new(labels: &[usize]) -> HostLayout {
        let mut index: Vec<Option<usize>> = vec![None; labels.iter().max().map_or(0, |m| m + 1)];
        let mut hosts: Vec<Vec<usize>> = Vec::new();
        let host = labels
            .iter()
            .enumerate()
            .map(|(r, &label)| {
                let h = *index[label].get_or_insert_with(|| {
                    hosts.push(Vec::new());
                    hosts.len() - 1
                });
                hosts[h].push(r);
                h
            })
            .collect();
        HostLayout { host, hosts }
    }

    /// `hosts` hosts of `per_host` consecutive ranks each.
    #[cfg(test)]
    pub fn even(hosts: usize, per_host: usize) -> HostLayout {
        HostLayout::new(&(0..hosts * per_host).map(|r| r / per_host).collect::<Vec<_>>())
    }

    pub fn ranks(&self) -> usize {
        self.host.len()
    }

    pub fn hosts(&self) -> usize {
        self.hosts.len()
    }

    /// The host of rank `r`.
    pub fn host(&self, r: usize) -> usize {
        self.host[r]
    }

    /// The ranks of host `h`, ascending.
    pub fn local(&self, h: usize) -> &[usize] {
        &self.hosts[h]
    }

    /// The most ranks any host has.
    pub fn widest(&self) -> usize {
        self.hosts.iter().map(Vec::len).max().unwrap_or(0)
    }

    /// Whether every host has the same number of ranks.
    #[cfg(test)]
    pub fn is_even(&self) -> bool {
        self.hosts.iter().all(|l| l.len() == self.hosts[0].len())
    }

    /// The rank of host `h` that owns segment `j`.
    fn owner(&self, h: usize, j: usize) -> usize {
        let local = &self.hosts[h];
        local[j % local.len()]
    }

    /// The owners of segment `j`, one per host, ascending (so `RecvReduce` lists stay in rank order).
    fn column(&self, j: usize) -> Vec<usize> {
        let mut c: Vec<usize> = (0..self.hosts()).map(|h| self.owner(h, j)).collect();
        c.sort_unstable();
        c
    }
}

fn position(members: &[usize], r: usize) -> usize {
    members.iter().position(|&x| x == r).expect("the rank takes part in this phase")
}

/// The other ranks of `local` in fan-out order: those after `me`, then those before.
fn others(local: &[usize], me: usize) -> Vec<usize> {
    let at = position(local, me);
    local[at + 1..].iter().chain(&local[..at]).copied().collect()
}

/// Appends `sub`, built for dense ranks `0..members.len()`, run among `members` with its ranges moved by `fix`.
fn embed(plan: &mut Plan, sub: Plan, members: &[usize], fix: impl Fn(Range) -> Range) {
    plan.steps.extend(map_ranges(to_members(sub, members), fix).steps);
}

/// A whole-buffer all-reduce among `members` over `Output` (the host sums are already there).
fn cross_all_reduce(plan: &mut Plan, members: &[usize], me: usize, (base, len): (usize, usize), elem: usize, chunk: usize, cross: Cross) {
    let (m, at) = (members.len(), position(members, me));
    let sub = match cross {
        Cross::Direct => all_reduce_direct(m, at, len, elem, chunk),
        Cross::Ring => all_reduce_ring(m, at, len, elem, chunk),
    };
    embed(plan, sub, members, |r| Range::output(base + r.off, r.len));
}

/// Large all-reduce: the message is split into `widest()` segments; each host reduces segment `j`
/// on its owner (direct, through shared memory), the owners of segment `j` on all hosts all-reduce
/// it across hosts (`cross`; `widest()` of these run side by side, one per local rank), and each
/// owner sends its segments to the rest of its host. Each host sends about `2 (H-1)/H × bytes`
/// across hosts with `Cross::Ring`, against `2 (n-1)/n × bytes` per rank for a flat ring.
pub fn all_reduce_hier(l: &HostLayout, me: usize, bytes: usize, elem: usize, chunk: usize, cross: Cross) -> Plan {
    check_reduce(l.ranks(), me, bytes, elem, chunk);
    let h = l.host(me);
    let peers = others(l.local(h), me);
    let mut from = peers.clone();
    from.sort_unstable();
    let segs = split_even(bytes, l.widest(), elem);
    let rounds = segs.iter().map(|s| num_chunks(s.1, chunk)).max().unwrap_or(1);
    // Chunk `c` of every segment that has one, with the segment's owner on this host.
    let chunks = |c: usize| segs.iter().enumerate().filter(move |(_, s)| c < num_chunks(s.1, chunk)).map(move |(j, &s)| (l.owner(h, j), chunk_of(s, chunk, c)));
    let mut plan = Plan::default();
    for c in 0..rounds {
        for (owner, (off, len)) in chunks(c) {
            let (input, output) = (Range::input(off, len), Range::output(off, len));
            plan.push(if owner != me {
                Step::Send { to: owner, src: input }
            } else if from.is_empty() {
                Step::Copy { src: input, dst: output }
            } else {
                Step::RecvReduce { from: from.clone(), local: input, dst: output }
            });
        }
    }
    if l.hosts() > 1 {
        for (j, &seg) in segs.iter().enumerate() {
            if l.owner(h, j) == me {
                cross_all_reduce(&mut plan, &l.column(j), me, seg, elem, chunk, cross);
            }
        }
    }
    if peers.is_empty() {
        return plan;
    }
    for c in 0..rounds {
        for (owner, (off, len)) in chunks(c) {
            let r = Range::output(off, len);
            if owner == me {
                plan.steps.extend(peers.iter().map(|&p| Step::Send { to: p, src: r }));
            } else {
                plan.push(Step::Recv { from: owner, dst: r });
            }
        }
    }
    plan
}

/// Small all-reduce: each host reduces onto its lowest rank (its leader), the leaders all-reduce
/// across hosts (`cross`), and each leader broadcasts the result within its host. One network
/// exchange among `H` ranks instead of `n`.
pub fn all_reduce_hier_leaders(l: &HostLayout, me: usize, bytes: usize, elem: usize, chunk: usize, cross: Cross) -> Plan {
    check_reduce(l.ranks(), me, bytes, elem, chunk);
    let h = l.host(me);
    let local = l.local(h);
    let at = position(local, me);
    let mut plan = Plan::default();
    embed(&mut plan, reduce_direct(local.len(), at, 0, bytes, elem, chunk), local, |r| r);
    if at == 0 && l.hosts() > 1 {
        // Hosts are numbered by their lowest rank, so the leaders are ascending.
        let leaders: Vec<usize> = (0..l.hosts()).map(|g| l.local(g)[0]).collect();
        cross_all_reduce(&mut plan, &leaders, me, (0, bytes), elem, chunk, cross);
    }
    embed(&mut plan, broadcast_direct(local.len(), at, 0, bytes, chunk), local, |r| r);
    plan
}

/// This rank's parent and children in the tree that carries one rank's data (broadcast, reduce,
/// one block of all-gather): on the root's host the root, on every other host its
/// representative (the owner of the root's column, so the roots of different blocks spread
/// over a host's ranks), joined across hosts as a star around the root (`Cross::Direct`) or a
/// chain from the root's host onwards (`Cross::Ring`); each of them joined to the rest of its host.
fn tree(l: &HostLayout, me: usize, root: usize, cross: Cross) -> (Option<usize>, Vec<usize>) {
    let (hosts, root_host) = (l.hosts(), l.host(root));
    let column = position(l.local(root_host), root);
    let rep = |h: usize| if h == root_host { root } else { l.owner(h, column) };
    let h = l.host(me);
    if me != rep(h) {
        return (Some(rep(h)), Vec::new());
    }
    let k = (h + hosts - root_host) % hosts; // place in host order from the root's host
    let nth = |k: usize| rep((root_host + k) % hosts);
    let (parent, mut children) = match cross {
        Cross::Direct if k == 0 => (None, (1..hosts).map(nth).collect()),
        Cross::Direct => (Some(root), Vec::new()),
        Cross::Ring => ((k > 0).then(|| nth(k - 1)), (k + 1 < hosts).then(|| nth(k + 1)).into_iter().collect()),
    };
    children.extend(others(l.local(h), me));
    (parent, children)
}

/// One chunk down a tree: the root sends `src` to its children, the others receive into `dst`
/// and pass it on.
fn tree_chunk(plan: &mut Plan, (parent, children): &(Option<usize>, Vec<usize>), src: Range, dst: Range) {
    match *parent {
        None => plan.steps.extend(children.iter().map(|&c| Step::Send { to: c, src })),
        Some(p) if children.is_empty() => plan.push(Step::Recv { from: p, dst }),
        Some(p) => plan.push(Step::RecvCopySend { from: p, to: children.clone(), dst }),
    }
}

/// Broadcast (in place, `Output`) down the host tree (see [`tree`]), chunk by chunk, pipelined:
/// the network carries each byte once per host.
pub fn broadcast_hier(l: &HostLayout, me: usize, root: usize, bytes: usize, chunk: usize, cross: Cross) -> Plan {
    check_common(l.ranks(), me, chunk);
    check_root(l.ranks(), root);
    let tree = tree(l, me, root, cross);
    let mut plan = Plan::default();
    for (off, len) in split_chunks(0, bytes, chunk) {
        tree_chunk(&mut plan, &tree, Range::output(off, len), Range::output(off, len));
    }
    plan
}

/// Reduce up the host tree (see [`tree`]): each rank with children reduces their chunks with its
/// input into its `Output` (non-roots: full-size scratch) and passes the sum on; ranks without
/// children send their input. Each host sends the message across hosts once.
pub fn reduce_hier(l: &HostLayout, me: usize, root: usize, bytes: usize, elem: usize, chunk: usize, cross: Cross) -> Plan {
    check_reduce(l.ranks(), me, bytes, elem, chunk);
    check_root(l.ranks(), root);
    let (parent, mut children) = tree(l, me, root, cross);
    children.sort_unstable();
    let mut plan = Plan::default();
    if parent.is_none() && children.is_empty() {
        push_copy(&mut plan, Range::input(0, bytes), Range::output(0, bytes), chunk);
        return plan;
    }
    for (off, len) in split_chunks(0, bytes, chunk) {
        let (input, output) = (Range::input(off, len), Range::output(off, len));
        let src = if children.is_empty() {
            input
        } else {
            plan.push(Step::RecvReduce { from: children.clone(), local: input, dst: output });
            output
        };
        if let Some(p) = parent {
            plan.push(Step::Send { to: p, src });
        }
    }
    plan
}

/// All-gather: block `d` goes from rank `d` down its host tree (see [`tree`], a star across
/// hosts), so each host receives the `n - L` blocks of the other hosts once (a flat ring brings
/// in `n - 1`, a flat direct exchange `L (n - L)`). Chunk-major over all blocks.
pub fn all_gather_hier(l: &HostLayout, me: usize, block_bytes: usize, chunk: usize) -> Plan {
    check_common(l.ranks(), me, chunk);
    let mut plan = Plan::default();
    push_copy(&mut plan, Range::input(0, block_bytes), Range::output(me * block_bytes, block_bytes), chunk);
    let trees: Vec<_> = (0..l.ranks()).map(|d| tree(l, me, d, Cross::Direct)).collect();
    for (off, len) in split_chunks(0, block_bytes, chunk) {
        for (d, tree) in trees.iter().enumerate() {
            tree_chunk(&mut plan, tree, Range::input(off, len), Range::output(d * block_bytes + off, len));
        }
    }
    plan
}

/// What this rank does with block `d` of a reduce-scatter.
enum Hop {
    /// Rank `d`: reduce its own input with the sums arriving from `from` into `Output`.
    Last { from: Vec<usize> },
    /// Reduce what `from` sent (if anything) with its own input and pass the sum to `to`.
    Pass { from: Option<usize>, to: usize },
}

/// The path of block `d` through this rank: on each other host a chain through its ranks that
/// ends at the owner of `d`'s column, which sends the host's sum to `d`; on `d`'s host a chain
/// through the other ranks that ends at `d`. (A chain, not a star, because a rank has no room
/// to keep a host's partial sum of another rank's block.)
fn hop(l: &HostLayout, me: usize, d: usize) -> Hop {
    let dh = l.host(d);
    let column = position(l.local(dh), d);
    let chain = |h: usize| -> Vec<usize> {
        let end = if h == dh { d } else { l.owner(h, column) };
        let mut c: Vec<usize> = l.local(h).iter().copied().filter(|&r| r != end).collect();
        if h != dh {
            c.push(end);
        }
        c
    };
    if me == d {
        let mut from: Vec<usize> = (0..l.hosts()).filter_map(|h| chain(h).last().copied()).collect();
        from.sort_unstable();
        return Hop::Last { from };
    }
    let c = chain(l.host(me));
    let k = position(&c, me);
    Hop::Pass { from: k.checked_sub(1).map(|i| c[i]), to: c.get(k + 1).copied().unwrap_or(d) }
}

/// Reduce-scatter: the sum of block `d` flows along [`hop`]'s chains to rank `d`; each host sends
/// one sum of each block of the other hosts across hosts, `n - L` blocks. Chunk-major over all
/// blocks.
pub fn reduce_scatter_hier(l: &HostLayout, me: usize, block_bytes: usize, elem: usize, chunk: usize) -> Plan {
    check_reduce(l.ranks(), me, block_bytes, elem, chunk);
    let hops: Vec<Hop> = (0..l.ranks()).map(|d| hop(l, me, d)).collect();
    let mut plan = Plan::default();
    for (off, len) in split_chunks(0, block_bytes, chunk) {
        for (d, hop) in hops.iter().enumerate() {
            let local = Range::input(d * block_bytes + off, len);
            plan.push(match hop {
                Hop::Last { from } if from.is_empty() => Step::Copy { src: local, dst: Range::output(off, len) },
                Hop::Last { from } => Step::RecvReduce { from: from.clone(), local, dst: Range::output(off, len) },
                Hop::Pass { from: None, to } => Step::Send { to: *to, src: local },
                Hop::Pass { from: Some(f), to } => Step::RecvReduceSend { from: *f, to: *to, local, dst: None },
            });
        }
    }
    plan
}
