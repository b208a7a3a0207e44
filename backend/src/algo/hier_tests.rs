//! The host-aware builders run for all ranks at once in the simulator, for every layout of up to
//! 16 hosts × 8 ranks, ranks dealt round-robin to hosts, and uneven hosts, against the expected
//! results; and the bytes they send across hosts, against the flat schedules.
use super::hier::{Cross, HostLayout};
use super::sim::{Forwarding, RankMem, SimStats};
use super::tests::{garbage, pattern, run, run_broadcast, sum};
use super::*;

const CHUNK: usize = 64;
const ELEM: usize = 8;
const PER_CHUNK: usize = CHUNK / ELEM;
const CROSS: [Cross; 2] = [Cross::Direct, Cross::Ring];

/// `sizes[h]` consecutive ranks on host `h`.
fn of_sizes(sizes: &[usize]) -> HostLayout {
    let labels: Vec<usize> = sizes.iter().enumerate().flat_map(|(h, &s)| std::iter::repeat_n(h, s)).collect();
    HostLayout::new(&labels)
}

/// Every even layout up to 16 × 8, then the harder ones.
fn layouts() -> Vec<HostLayout> {
    let mut v: Vec<HostLayout> = (1..=16).flat_map(|h| (1..=8).map(move |l| HostLayout::even(h, l))).collect();
    // Ranks dealt round-robin: a host's ranks are not consecutive.
    for (h, l) in [(2, 2), (3, 2), (2, 3), (4, 3), (5, 4)] {
        v.push(HostLayout::new(&(0..h * l).map(|r| r % h).collect::<Vec<_>>()));
    }
    // Uneven: what failed ranks leave behind.
    for sizes in [&[2, 1][..], &[1, 2], &[3, 1, 2], &[8, 7], &[1, 8, 3, 5], &[2, 2, 1, 2], &[4, 1, 1, 1], &[7, 8, 8, 8, 8, 8, 8, 8]] {
        v.push(of_sizes(sizes));
    }
    v.push(of_sizes(&(0..16).map(|h| 1 + (h * 5) % 8).collect::<Vec<_>>()));
    // Uneven and interleaved: 2 × 3 round-robin with rank 3 gone.
    v.push(HostLayout::new(&[0, 1, 0, 0, 1]));
    v
}

fn name(l: &HostLayout) -> String {
    let sizes: Vec<usize> = (0..l.hosts()).map(|h| l.local(h).len()).collect();
    format!("hosts {sizes:?} ({:?})", (0..l.ranks()).map(|r| l.host(r)).collect::<Vec<_>>())
}

/// Cyclic plans (rings of three or more) need two slots under atomic forwarding, as flat rings do.
fn modes(cyclic: bool) -> [(Forwarding, usize); 2] {
    [(Forwarding::Lenient, 1), (Forwarding::Atomic, if cyclic { 2 } else { 1 })]
}

fn roots(n: usize) -> Vec<usize> {
    let mut r = vec![0, n / 2, n - 1];
    r.dedup();
    r
}

/// Element counts: empty, one element (most segments empty), and an odd count of several
/// chunks per segment.
fn counts(l: &HostLayout) -> [usize; 3] {
    [0, 1, 2 * l.widest() * PER_CHUNK + 3]
}

fn check_all_reduce(l: &HostLayout, what: &str, build: impl Fn(usize, usize) -> Plan, cyclic: bool) {
    let n = l.ranks();
    for count in counts(l) {
        let bytes = count * ELEM;
        let plans: Vec<Plan> = (0..n).map(|r| build(r, bytes)).collect();
        let inputs: Vec<Vec<u8>> = (0..n).map(|r| pattern(r, bytes, ELEM, 11)).collect();
        let expected = sum(&inputs.iter().map(Vec::as_slice).collect::<Vec<_>>(), ELEM);
        // Odd counts in place, the others into a separate output.
        let in_place = count % 2 == 1;
        for mode in modes(cyclic) {
            let label = format!("{what} {} count={count} in_place={in_place}", name(l));
            let mut mem: Vec<RankMem> = inputs
                .iter()
                .map(|inp| match in_place {
                    true => RankMem { input: vec![], output: inp.clone(), in_place },
                    false => RankMem { input: inp.clone(), output: garbage(bytes), in_place },
                })
                .collect();
            run(&label, &plans, &mut mem, mode, ELEM, CHUNK, ELEM);
            for (r, m) in mem.iter().enumerate() {
                assert!(m.output == expected, "{label}: wrong output on rank {r}");
                assert!(in_place || m.input == inputs[r], "{label}: input modified on rank {r}");
            }
        }
    }
}

#[test]
fn all_reduce_hier_is_correct_for_every_layout() {
    for l in layouts() {
        for cross in CROSS {
            let cyclic = cross == Cross::Ring && l.hosts() > 2;
            check_all_reduce(&l, &format!("all_reduce_hier {cross:?}"), |me, bytes| all_reduce_hier(&l, me, bytes, ELEM, CHUNK, cross), cyclic);
            check_all_reduce(&l, &format!("all_reduce_hier_leaders {cross:?}"), |me, bytes| all_reduce_hier_leaders(&l, me, bytes, ELEM, CHUNK, cross), cyclic);
        }
    }
}

#[test]
fn broadcast_hier_is_correct_for_every_layout() {
    for l in layouts() {
        let n = l.ranks();
        for cross in CROSS {
            for bytes in [0, 1, 2 * CHUNK + 5] {
                for root in roots(n) {
                    let plans: Vec<Plan> = (0..n).map(|r| broadcast_hier(&l, r, root, bytes, CHUNK, cross)).collect();
                    let data = pattern(root, bytes, 1, 12);
                    for mode in modes(false) {
                        let label = format!("broadcast_hier {cross:?} {} root={root} bytes={bytes}", name(&l));
                        run_broadcast(&label, &plans, root, &data, mode, CHUNK);
                    }
                }
            }
        }
    }
}

#[test]
fn reduce_hier_is_correct_for_every_layout() {
    for l in layouts() {
        let n = l.ranks();
        for cross in CROSS {
            for count in counts(&l) {
                let bytes = count * ELEM;
                let inputs: Vec<Vec<u8>> = (0..n).map(|r| pattern(r, bytes, ELEM, 13)).collect();
                let expected = sum(&inputs.iter().map(Vec::as_slice).collect::<Vec<_>>(), ELEM);
                for root in roots(n) {
                    let plans: Vec<Plan> = (0..n).map(|r| reduce_hier(&l, r, root, bytes, ELEM, CHUNK, cross)).collect();
                    for mode in modes(false) {
                        let label = format!("reduce_hier {cross:?} {} root={root} count={count}", name(&l));
                        // Non-roots get a full-size scratch output (as the engine gives them).
                        let mut mem: Vec<RankMem> = (0..n).map(|r| RankMem { input: inputs[r].clone(), output: garbage(bytes), in_place: r == root && count % 2 == 1 }).collect();
                        mem[root].output = inputs[root].clone();
                        run(&label, &plans, &mut mem, mode, ELEM, CHUNK, ELEM);
                        assert!(mem[root].output == expected, "{label}: wrong output on the root");
                        for (r, m) in mem.iter().enumerate() {
                            assert!(m.in_place || m.input == inputs[r], "{label}: input modified on rank {r}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn all_gather_and_reduce_scatter_hier_are_correct_for_every_layout() {
    for l in layouts() {
        let n = l.ranks();
        for block in [0, 1, 8, 2 * CHUNK + 8] {
            let plans: Vec<Plan> = (0..n).map(|r| all_gather_hier(&l, r, block, CHUNK)).collect();
            let inputs: Vec<Vec<u8>> = (0..n).map(|r| pattern(r, block, 1, 14)).collect();
            for mode in modes(false) {
                let label = format!("all_gather_hier {} block={block}", name(&l));
                let mut mem: Vec<RankMem> = inputs.iter().map(|inp| RankMem { input: inp.clone(), output: garbage(n * block), in_place: false }).collect();
                run(&label, &plans, &mut mem, mode, 1, CHUNK, 1);
                for (r, m) in mem.iter().enumerate() {
                    assert!(m.output == inputs.concat(), "{label}: wrong output on rank {r}");
                }
            }
            if block % ELEM != 0 {
                continue;
            }
            let plans: Vec<Plan> = (0..n).map(|r| reduce_scatter_hier(&l, r, block, ELEM, CHUNK)).collect();
            let inputs: Vec<Vec<u8>> = (0..n).map(|r| pattern(r, n * block, ELEM, 15)).collect();
            for mode in modes(false) {
                let label = format!("reduce_scatter_hier {} block={block}", name(&l));
                let mut mem: Vec<RankMem> = inputs.iter().map(|inp| RankMem { input: inp.clone(), output: garbage(block), in_place: false }).collect();
                run(&label, &plans, &mut mem, mode, ELEM, CHUNK, ELEM);
                for (r, m) in mem.iter().enumerate() {
                    let parts: Vec<&[u8]> = inputs.iter().map(|v| &v[r * block..(r + 1) * block]).collect();
                    assert!(m.output == sum(&parts, ELEM), "{label}: wrong output on rank {r}");
                }
            }
        }
    }
}

// --- Bytes across hosts. ---

/// Bytes each host sends to, and receives from, other hosts.
fn cross_host(l: &HostLayout, stats: &SimStats) -> Vec<(usize, usize)> {
    let n = l.ranks();
    let mut out = vec![(0, 0); l.hosts()];
    for a in 0..n {
        for b in (0..n).filter(|&b| l.host(a) != l.host(b)) {
            out[l.host(a)].0 += stats.bytes[a * n + b];
            out[l.host(b)].1 += stats.bytes[a * n + b];
        }
    }
    out
}

/// Runs every rank's plan once (lenient, 4 slots) on `bytes`-sized buffers; the traffic.
fn traffic(n: usize, bytes: usize, out: usize, elem: usize, plan: impl Fn(usize) -> Plan) -> SimStats {
    let plans: Vec<Plan> = (0..n).map(plan).collect();
    let mut mem: Vec<RankMem> = (0..n).map(|r| RankMem { input: pattern(r, bytes, elem, 16), output: garbage(out), in_place: false }).collect();
    run("traffic", &plans, &mut mem, (Forwarding::Lenient, 4), elem, CHUNK, elem)
}

/// Each host sends about `2 (H-1)/H` times the message across hosts with the ring, whatever `L`
/// (a flat ring sends `2 (n-1)/n` per rank, so up to `L` times more per host), and the leaders'
/// direct exchange sends it `H-1` times per host.
#[test]
fn all_reduce_hier_sends_each_byte_across_hosts_about_once_per_host() {
    for (h, per_host) in [(2, 2), (2, 4), (3, 2), (4, 8), (16, 8)] {
        let l = HostLayout::even(h, per_host);
        let n = l.ranks();
        let bytes = 2 * n * CHUNK;
        let hier = cross_host(&l, &traffic(n, bytes, bytes, ELEM, |r| all_reduce_hier(&l, r, bytes, ELEM, CHUNK, Cross::Ring)));
        let flat = cross_host(&l, &traffic(n, bytes, bytes, ELEM, |r| all_reduce_ring(n, r, bytes, ELEM, CHUNK)));
        let leaders = cross_host(&l, &traffic(n, bytes, bytes, ELEM, |r| all_reduce_hier_leaders(&l, r, bytes, ELEM, CHUNK, Cross::Direct)));
        for g in 0..h {
            // Segments split evenly: exactly 2 (H-1)/H of the message.
            assert_eq!(hier[g].0, 2 * (h - 1) * bytes / h, "{h}x{per_host} host {g}: hier ring");
            assert_eq!(leaders[g].0, (h - 1) * bytes, "{h}x{per_host} host {g}: leaders");
            // Hosts are consecutive in rank order: the flat ring crosses once per host boundary.
            assert_eq!(flat[g].0, 2 * (n - 1) * bytes / n, "{h}x{per_host} host {g}: flat ring");
        }
        // Ranks dealt round-robin: every hop of the flat ring crosses hosts; not so the hierarchical one.
        let dealt = HostLayout::new(&(0..n).map(|r| r % h).collect::<Vec<_>>());
        let hier = cross_host(&dealt, &traffic(n, bytes, bytes, ELEM, |r| all_reduce_hier(&dealt, r, bytes, ELEM, CHUNK, Cross::Ring)));
        let flat = cross_host(&dealt, &traffic(n, bytes, bytes, ELEM, |r| all_reduce_ring(n, r, bytes, ELEM, CHUNK)));
        for g in 0..h {
            assert_eq!(hier[g].0, 2 * (h - 1) * bytes / h, "{h}x{per_host} dealt host {g}: hier ring");
            assert_eq!(flat[g].0, per_host * 2 * (n - 1) * bytes / n, "{h}x{per_host} dealt host {g}: flat ring");
        }
    }
}

/// Rooted collectives move the message across hosts once per host (chain) or the root's host
/// sends it once to every other host (star); all-gather brings in the `n - L` other blocks once.
#[test]
fn rooted_and_gathering_hier_move_each_byte_across_hosts_once_per_host() {
    for l in [HostLayout::even(3, 4), of_sizes(&[1, 8, 3, 5]), HostLayout::new(&[0, 1, 2, 0, 1, 2, 0, 1])] {
        let (n, hosts) = (l.ranks(), l.hosts());
        let bytes = 5 * CHUNK * ELEM + 24;
        let root = n - 1;
        let root_host = l.host(root);
        for cross in CROSS {
            let bcast = cross_host(&l, &traffic(n, 0, bytes, 1, |r| broadcast_hier(&l, r, root, bytes, CHUNK, cross)));
            let red = cross_host(&l, &traffic(n, bytes, bytes, ELEM, |r| reduce_hier(&l, r, root, bytes, ELEM, CHUNK, cross)));
            for g in (0..hosts).filter(|&g| g != root_host) {
                assert_eq!(bcast[g].1, bytes, "{} {cross:?} broadcast into host {g}", name(&l));
                assert_eq!(red[g].0, bytes, "{} {cross:?} reduce out of host {g}", name(&l));
            }
        }
        let block = 3 * CHUNK + 5;
        let gathered = cross_host(&l, &traffic(n, block, n * block, 1, |r| all_gather_hier(&l, r, block, CHUNK)));
        let scattered = cross_host(&l, &traffic(n, n * block * ELEM, block * ELEM, ELEM, |r| reduce_scatter_hier(&l, r, block * ELEM, ELEM, CHUNK)));
        for g in 0..hosts {
            let others = n - l.local(g).len();
            assert_eq!(gathered[g].1, others * block, "{} all_gather into host {g}", name(&l));
            assert_eq!(scattered[g].0, others * block * ELEM, "{} reduce_scatter out of host {g}", name(&l));
        }
    }
}

#[test]
fn layouts_number_hosts_by_their_lowest_rank() {
    let l = HostLayout::new(&[7, 3, 7, 3, 5]);
    assert_eq!((l.hosts(), l.widest(), l.is_even()), (3, 2, false));
    assert_eq!((l.local(0), l.local(1), l.local(2)), (&[0, 2][..], &[1, 3][..], &[4][..]));
    assert!(HostLayout::even(3, 2).is_even());
}
