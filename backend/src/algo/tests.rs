//! Every builder, run for all ranks at once in the simulator, against the expected result.

use super::sim::{reduce_add, simulate, Forwarding, RankMem, SimConfig, SimStats};
use super::split::{num_chunks, split_chunks, split_even};
use super::*;

const NS: [usize; 6] = [1, 2, 3, 4, 5, 8];
const CHUNKS: [usize; 3] = [64, 128, 4096];
const ELEMS: [usize; 2] = [4, 8];

/// (forwarding model, slots per pair) to run a plan under. Cyclic ring plans deadlock by design
/// with atomic forwarding and a single slot (see `ring_needs_two_slots_with_atomic_forwarding`).
fn modes(cyclic: bool, n: usize) -> Vec<(Forwarding, usize)> {
    let mut v = vec![
        (Forwarding::Lenient, 1),
        (Forwarding::Lenient, 4),
        (Forwarding::Atomic, 2),
        (Forwarding::Atomic, 4),
    ];
    if !cyclic || n <= 2 {
        v.push((Forwarding::Atomic, 1));
    }
    v
}

/// Distinct per-rank data: `bytes / elem` little-endian elements of `elem` bytes (values span the
/// whole width so that wrapping matters), then byte filler for any remainder.
pub(super) fn pattern(rank: usize, bytes: usize, elem: usize, salt: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(bytes);
    for i in 0..bytes / elem {
        let x = (rank as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (i as u64)
                .wrapping_mul(0x0123_4567_89AB_CDEF)
                .wrapping_add(salt.wrapping_mul(0x5555));
        v.extend_from_slice(&x.to_le_bytes()[..elem]);
    }
    while v.len() < bytes {
        v.push((rank * 31 + v.len() * 7) as u8 ^ salt as u8);
    }
    v
}

pub(super) fn garbage(len: usize) -> Vec<u8> {
    vec![0xA5; len]
}

pub(super) fn sum(parts: &[&[u8]], elem: usize) -> Vec<u8> {
    let mut acc = parts[0].to_vec();
    for p in &parts[1..] {
        reduce_add(&mut acc, p, elem);
    }
    acc
}

pub(super) fn run(
    label: &str,
    plans: &[Plan],
    mem: &mut [RankMem],
    (forwarding, slots): (Forwarding, usize),
    elem: usize,
    chunk: usize,
    align: usize,
) -> SimStats {
    let cfg = SimConfig {
        slots,
        forwarding,
        elem,
        chunk,
        align,
    };
    match simulate(plans, mem, cfg) {
        Ok(stats) => stats,
        Err(e) => panic!("{label} [{forwarding:?}, {slots} slots]: {e}"),
    }
}

fn roots(n: usize) -> Vec<usize> {
    if n == 1 {
        vec![0]
    } else {
        vec![0, n - 1]
    }
}

type ReduceBuilder = fn(usize, usize, usize, usize, usize) -> Plan;

fn check_all_reduce(name: &str, build: ReduceBuilder, cyclic: bool) {
    for n in NS {
        for chunk in CHUNKS {
            for elem in ELEMS {
                let per_chunk = chunk / elem;
                for count in [
                    0,
                    1,
                    7,
                    33,
                    n * per_chunk + 1,
                    n * per_chunk + n - 1,
                    n * per_chunk + 3,
                    2 * n * per_chunk + n + 1,
                ] {
                    let bytes = count * elem;
                    let plans: Vec<Plan> =
                        (0..n).map(|r| build(n, r, bytes, elem, chunk)).collect();
                    let inputs: Vec<Vec<u8>> = (0..n).map(|r| pattern(r, bytes, elem, 1)).collect();
                    let parts: Vec<&[u8]> = inputs.iter().map(|v| v.as_slice()).collect();
                    let expected = sum(&parts, elem);
                    for mode in modes(cyclic, n) {
                        for in_place in [false, true] {
                            let label = format!("{name} n={n} chunk={chunk} elem={elem} count={count} in_place={in_place}");
                            let mut mem: Vec<RankMem> = inputs
                                .iter()
                                .map(|inp| {
                                    if in_place {
                                        RankMem {
                                            input: vec![],
                                            output: inp.clone(),
                                            in_place: true,
                                        }
                                    } else {
                                        RankMem {
                                            input: inp.clone(),
                                            output: garbage(bytes),
                                            in_place: false,
                                        }
                                    }
                                })
                                .collect();
                            run(&label, &plans, &mut mem, mode, elem, chunk, elem);
                            for (r, m) in mem.iter().enumerate() {
                                assert!(m.output == expected, "{label}: wrong output on rank {r}");
                                if !in_place {
                                    assert!(
                                        m.input == inputs[r],
                                        "{label}: input modified on rank {r}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn all_reduce_direct_is_correct() {
    check_all_reduce("all_reduce_direct", all_reduce_direct, false);
}

#[test]
fn all_reduce_rs_ag_is_correct() {
    check_all_reduce("all_reduce_rs_ag", all_reduce_rs_ag, false);
}

#[test]
fn all_reduce_ring_is_correct() {
    check_all_reduce("all_reduce_ring", all_reduce_ring, true);
}

fn check_reduce_scatter(name: &str, build: ReduceBuilder, cyclic: bool) {
    for n in NS {
        for chunk in CHUNKS {
            for elem in ELEMS {
                let per_chunk = chunk / elem;
                for count in [0, 1, 7, 33, per_chunk + 3, 3 * per_chunk + 1] {
                    let block = count * elem;
                    let plans: Vec<Plan> =
                        (0..n).map(|r| build(n, r, block, elem, chunk)).collect();
                    let inputs: Vec<Vec<u8>> =
                        (0..n).map(|r| pattern(r, n * block, elem, 2)).collect();
                    for mode in modes(cyclic, n) {
                        let label =
                            format!("{name} n={n} chunk={chunk} elem={elem} block_count={count}");
                        let mut mem: Vec<RankMem> = inputs
                            .iter()
                            .map(|inp| RankMem {
                                input: inp.clone(),
                                output: garbage(block),
                                in_place: false,
                            })
                            .collect();
                        run(&label, &plans, &mut mem, mode, elem, chunk, elem);
                        for (r, m) in mem.iter().enumerate() {
                            let parts: Vec<&[u8]> = inputs
                                .iter()
                                .map(|v| &v[r * block..(r + 1) * block])
                                .collect();
                            assert!(
                                m.output == sum(&parts, elem),
                                "{label}: wrong output on rank {r}"
                            );
                            assert!(m.input == inputs[r], "{label}: input modified on rank {r}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn reduce_scatter_direct_is_correct() {
    check_reduce_scatter("reduce_scatter_direct", reduce_scatter_direct, false);
}

#[test]
fn reduce_scatter_ring_is_correct() {
    check_reduce_scatter("reduce_scatter_ring", reduce_scatter_ring, true);
}

/// Byte sizes for data-movement collectives (no element alignment).
fn byte_sizes(n: usize, chunk: usize) -> Vec<usize> {
    vec![
        0,
        1,
        13,
        64,
        100,
        chunk,
        chunk + 5,
        3 * chunk + 1,
        n * chunk + 5,
    ]
}

fn check_all_gather(name: &str, build: fn(usize, usize, usize, usize) -> Plan, cyclic: bool) {
    for n in NS {
        for chunk in CHUNKS {
            for block in byte_sizes(n, chunk) {
                let plans: Vec<Plan> = (0..n).map(|r| build(n, r, block, chunk)).collect();
                let inputs: Vec<Vec<u8>> = (0..n).map(|r| pattern(r, block, 1, 3)).collect();
                let expected = inputs.concat();
                for mode in modes(cyclic, n) {
                    let label = format!("{name} n={n} chunk={chunk} block={block}");
                    let mut mem: Vec<RankMem> = inputs
                        .iter()
                        .map(|inp| RankMem {
                            input: inp.clone(),
                            output: garbage(n * block),
                            in_place: false,
                        })
                        .collect();
                    run(&label, &plans, &mut mem, mode, 1, chunk, 1);
                    for (r, m) in mem.iter().enumerate() {
                        assert!(m.output == expected, "{label}: wrong output on rank {r}");
                    }
                }
            }
        }
    }
}

#[test]
fn all_gather_direct_is_correct() {
    check_all_gather("all_gather_direct", all_gather_direct, false);
}

#[test]
fn all_gather_ring_is_correct() {
    check_all_gather("all_gather_ring", all_gather_ring, true);
}

fn check_broadcast(name: &str, build: fn(usize, usize, usize, usize, usize) -> Plan) {
    for n in NS {
        for chunk in CHUNKS {
            for bytes in byte_sizes(n, chunk) {
                for root in roots(n) {
                    let plans: Vec<Plan> =
                        (0..n).map(|r| build(n, r, root, bytes, chunk)).collect();
                    let data = pattern(root, bytes, 1, 4);
                    for mode in modes(false, n) {
                        let label = format!("{name} n={n} root={root} chunk={chunk} bytes={bytes}");
                        run_broadcast(&label, &plans, root, &data, mode, chunk);
                    }
                }
            }
        }
    }
}

/// Runs broadcast plans of `data` from `root` and checks every rank's output.
pub(super) fn run_broadcast(label: &str, plans: &[Plan], root: usize, data: &[u8], mode: (Forwarding, usize), chunk: usize) {
    // In place: only `Output` exists; an `Input` range would fail the bounds check.
    let mut mem: Vec<RankMem> = (0..plans.len())
        .map(|r| RankMem {
            input: vec![],
            output: if r == root { data.to_vec() } else { garbage(data.len()) },
            in_place: false,
        })
        .collect();
    run(label, plans, &mut mem, mode, 1, chunk, 1);
    for (r, m) in mem.iter().enumerate() {
        assert!(m.output == data, "{label}: wrong output on rank {r}");
    }
}

#[test]
fn broadcast_direct_is_correct() {
    check_broadcast("broadcast_direct", broadcast_direct);
}

#[test]
fn broadcast_chain_is_correct() {
    check_broadcast("broadcast_chain", broadcast_chain);
}

type RootedReduceBuilder = fn(usize, usize, usize, usize, usize, usize) -> Plan;

/// `scratch_output`: non-roots need a full-size `Output` (scratch); otherwise they get none.
fn check_reduce(name: &str, build: RootedReduceBuilder, scratch_output: bool) {
    for n in NS {
        for chunk in CHUNKS {
            for elem in ELEMS {
                let per_chunk = chunk / elem;
                for count in [
                    0,
                    1,
                    7,
                    33,
                    n * per_chunk + 1,
                    n * per_chunk + n - 1,
                    n * per_chunk + 3,
                    2 * n * per_chunk + n + 1,
                ] {
                    let bytes = count * elem;
                    let inputs: Vec<Vec<u8>> = (0..n).map(|r| pattern(r, bytes, elem, 5)).collect();
                    let parts: Vec<&[u8]> = inputs.iter().map(|v| v.as_slice()).collect();
                    let expected = sum(&parts, elem);
                    for root in roots(n) {
                        let plans: Vec<Plan> = (0..n)
                            .map(|r| build(n, r, root, bytes, elem, chunk))
                            .collect();
                        for mode in modes(false, n) {
                            for in_place in [false, true] {
                                let label = format!(
                                    "{name} n={n} root={root} chunk={chunk} elem={elem} count={count} in_place={in_place}"
                                );
                                let mut mem: Vec<RankMem> = (0..n)
                                    .map(|r| {
                                        if r == root && in_place {
                                            RankMem {
                                                input: vec![],
                                                output: inputs[r].clone(),
                                                in_place: true,
                                            }
                                        } else {
                                            let out_len = if r == root || scratch_output {
                                                bytes
                                            } else {
                                                0
                                            };
                                            RankMem {
                                                input: inputs[r].clone(),
                                                output: garbage(out_len),
                                                in_place: false,
                                            }
                                        }
                                    })
                                    .collect();
                                run(&label, &plans, &mut mem, mode, elem, chunk, elem);
                                assert!(
                                    mem[root].output == expected,
                                    "{label}: wrong output on the root"
                                );
                                for (r, m) in mem.iter().enumerate() {
                                    if !(r == root && in_place) {
                                        assert!(
                                            m.input == inputs[r],
                                            "{label}: input modified on rank {r}"
                                        );
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn reduce_direct_is_correct() {
    check_reduce("reduce_direct", reduce_direct, false);
}

#[test]
fn reduce_rs_gather_is_correct() {
    check_reduce("reduce_rs_gather", reduce_rs_gather, true);
}

#[test]
fn gather_is_correct() {
    for n in NS {
        for chunk in CHUNKS {
            for block in byte_sizes(n, chunk) {
                for root in roots(n) {
                    let plans: Vec<Plan> =
                        (0..n).map(|r| gather(n, r, root, block, chunk)).collect();
                    let inputs: Vec<Vec<u8>> = (0..n).map(|r| pattern(r, block, 1, 6)).collect();
                    for mode in modes(false, n) {
                        let label = format!("gather n={n} root={root} chunk={chunk} block={block}");
                        let mut mem: Vec<RankMem> = (0..n)
                            .map(|r| RankMem {
                                input: inputs[r].clone(),
                                output: garbage(if r == root { n * block } else { 0 }),
                                in_place: false,
                            })
                            .collect();
                        run(&label, &plans, &mut mem, mode, 1, chunk, 1);
                        assert!(
                            mem[root].output == inputs.concat(),
                            "{label}: wrong output on the root"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn scatter_is_correct() {
    for n in NS {
        for chunk in CHUNKS {
            for block in byte_sizes(n, chunk) {
                for root in roots(n) {
                    let plans: Vec<Plan> =
                        (0..n).map(|r| scatter(n, r, root, block, chunk)).collect();
                    let data = pattern(root, n * block, 1, 7);
                    for mode in modes(false, n) {
                        let label =
                            format!("scatter n={n} root={root} chunk={chunk} block={block}");
                        let mut mem: Vec<RankMem> = (0..n)
                            .map(|r| RankMem {
                                input: if r == root { data.clone() } else { vec![] },
                                output: garbage(block),
                                in_place: false,
                            })
                            .collect();
                        run(&label, &plans, &mut mem, mode, 1, chunk, 1);
                        for (r, m) in mem.iter().enumerate() {
                            assert!(
                                m.output == data[r * block..(r + 1) * block],
                                "{label}: wrong output on rank {r}"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Packs blocks of the given lengths one after another with `gap` bytes between them, in the order
/// given by `order`; returns (offset, len) indexed by block and the total size.
fn layout(lens: &[usize], order: &[usize], gap: usize) -> (Vec<(usize, usize)>, usize) {
    let mut out = vec![(0, 0); lens.len()];
    let mut off = gap;
    for &j in order {
        out[j] = (off, lens[j]);
        off += lens[j] + gap;
    }
    (out, off)
}

#[test]
fn all_to_all_is_correct() {
    type LenFn = fn(usize, usize, usize) -> usize; // (from, to, chunk) -> bytes
    let families: [(&str, LenFn); 6] = [
        ("mixed", |p, q, _| ((p * 7 + q * 3) % 5) * 11),
        ("mixed-large", |p, q, c| ((p * 5 + q * 3) % 4) * (c + 3)),
        ("all-zero", |_, _, _| 0),
        ("self-only", |p, q, c| if p == q { c + 1 } else { 0 }),
        ("one-hot", |p, q, c| {
            if q == 0 && p != 0 {
                3 * c + 1
            } else {
                (p + q) % 2
            }
        }),
        ("uniform", |_, _, c| c + 9),
    ];
    for n in NS {
        for chunk in CHUNKS {
            for (fam, len) in families {
                for gap in [0, 5] {
                    let mut sends = Vec::new();
                    let mut recvs = Vec::new();
                    let mut in_sizes = Vec::new();
                    let mut out_sizes = Vec::new();
                    for r in 0..n {
                        let slens: Vec<usize> = (0..n).map(|q| len(r, q, chunk)).collect();
                        let rlens: Vec<usize> = (0..n).map(|p| len(p, r, chunk)).collect();
                        let fwd: Vec<usize> = (0..n).collect();
                        let rev: Vec<usize> = (0..n).rev().collect();
                        let (s, ssize) = layout(&slens, &fwd, gap);
                        let (rv, rsize) = layout(&rlens, &rev, gap);
                        sends.push(s);
                        recvs.push(rv);
                        in_sizes.push(ssize);
                        out_sizes.push(rsize);
                    }
                    let plans: Vec<Plan> = (0..n)
                        .map(|r| all_to_all(n, r, &sends[r], &recvs[r], chunk))
                        .collect();
                    let inputs: Vec<Vec<u8>> =
                        (0..n).map(|r| pattern(r, in_sizes[r], 1, 8)).collect();
                    let expected: Vec<Vec<u8>> = (0..n)
                        .map(|q| {
                            let mut out = garbage(out_sizes[q]);
                            for p in 0..n {
                                let (so, sl) = sends[p][q];
                                let (ro, rl) = recvs[q][p];
                                assert_eq!(sl, rl);
                                out[ro..ro + rl].copy_from_slice(&inputs[p][so..so + sl]);
                            }
                            out
                        })
                        .collect();
                    for mode in modes(false, n) {
                        let label =
                            format!("all_to_all n={n} chunk={chunk} family={fam} gap={gap}");
                        let mut mem: Vec<RankMem> = (0..n)
                            .map(|r| RankMem {
                                input: inputs[r].clone(),
                                output: garbage(out_sizes[r]),
                                in_place: false,
                            })
                            .collect();
                        let stats = run(&label, &plans, &mut mem, mode, 1, chunk, 1);
                        for (r, m) in mem.iter().enumerate() {
                            assert!(m.output == expected[r], "{label}: wrong output on rank {r}");
                        }
                        for p in 0..n {
                            for q in 0..n {
                                if p != q {
                                    let want = num_chunks(len(p, q, chunk), chunk);
                                    assert_eq!(
                                        stats.messages[p * n + q],
                                        want,
                                        "{label}: chunks {p}->{q}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn barrier_exchanges_one_empty_chunk_per_pair() {
    for n in NS {
        let plans: Vec<Plan> = (0..n).map(|r| barrier(n, r)).collect();
        for mode in modes(false, n) {
            let mut mem = vec![RankMem::default(); n];
            let stats = run(&format!("barrier n={n}"), &plans, &mut mem, mode, 1, 64, 1);
            for p in 0..n {
                for q in 0..n {
                    assert_eq!(
                        stats.messages[p * n + q],
                        usize::from(p != q),
                        "barrier n={n} {p}->{q}"
                    );
                }
            }
        }
    }
}

/// Zero-byte operations still exchange exactly one zero-length chunk per message.
#[test]
fn zero_bytes_exchange_one_empty_chunk_per_message() {
    for n in NS {
        let mode = (Forwarding::Lenient, 1);
        let run_zero = |plans: Vec<Plan>, out: usize| {
            for p in &plans {
                for s in &p.steps {
                    let len = match s {
                        Step::Send { src, .. } => src.len,
                        Step::Recv { dst, .. } | Step::RecvCopySend { dst, .. } => dst.len,
                        Step::RecvReduce { dst, .. } => dst.len,
                        Step::RecvReduceSend { local, .. } => local.len,
                        Step::Copy { src, .. } => src.len,
                    };
                    assert_eq!(len, 0, "{s:?}");
                }
            }
            let mut mem = vec![
                RankMem {
                    input: vec![],
                    output: vec![0; out],
                    in_place: false
                };
                n
            ];
            run("zero", &plans, &mut mem, mode, 8, 64, 8).messages
        };
        let pairs = |msgs: &[usize], each: usize| {
            for p in 0..n {
                for q in 0..n {
                    assert_eq!(
                        msgs[p * n + q],
                        if p == q { 0 } else { each },
                        "n={n} {p}->{q}"
                    );
                }
            }
        };
        pairs(
            &run_zero(
                (0..n).map(|r| all_reduce_direct(n, r, 0, 8, 64)).collect(),
                0,
            ),
            1,
        );
        pairs(
            &run_zero(
                (0..n).map(|r| all_reduce_rs_ag(n, r, 0, 8, 64)).collect(),
                0,
            ),
            2,
        );
        pairs(
            &run_zero(
                (0..n)
                    .map(|r| reduce_scatter_direct(n, r, 0, 8, 64))
                    .collect(),
                0,
            ),
            1,
        );
        pairs(
            &run_zero((0..n).map(|r| all_gather_direct(n, r, 0, 64)).collect(), 0),
            1,
        );
        let ring = run_zero((0..n).map(|r| all_reduce_ring(n, r, 0, 8, 64)).collect(), 0);
        for p in 0..n {
            for q in 0..n {
                let want = if n > 1 && q == (p + 1) % n {
                    2 * (n - 1)
                } else {
                    0
                };
                assert_eq!(ring[p * n + q], want, "ring n={n} {p}->{q}");
            }
        }
    }
}

#[test]
fn direct_all_reduce_of_zero_bytes_has_the_documented_shape() {
    let plan = all_reduce_direct(4, 1, 0, 4, 64);
    let z = |buf| Range::new(buf, 0, 0);
    assert_eq!(
        plan.steps,
        vec![
            Step::Send {
                to: 2,
                src: z(Buf::Input)
            },
            Step::Send {
                to: 3,
                src: z(Buf::Input)
            },
            Step::Send {
                to: 0,
                src: z(Buf::Input)
            },
            Step::RecvReduce {
                from: vec![0, 2, 3],
                local: z(Buf::Input),
                dst: z(Buf::Output)
            },
        ]
    );
}

/// `RecvReduce::from` is ascending so an engine can reduce in canonical rank order.
#[test]
fn recv_reduce_sources_are_ascending() {
    for n in NS {
        for r in 0..n {
            let plans = [
                all_reduce_direct(n, r, 1000 * 8, 8, 64),
                all_reduce_rs_ag(n, r, 1000 * 8, 8, 64),
                reduce_scatter_direct(n, r, 100 * 8, 8, 64),
                reduce_direct(n, r, n - 1, 1000 * 8, 8, 64),
                reduce_rs_gather(n, r, 0, 1000 * 8, 8, 64),
            ];
            for p in plans {
                for s in p.steps {
                    if let Step::RecvReduce { from, .. } = s {
                        assert!(from.windows(2).all(|w| w[0] < w[1]), "{from:?}");
                    }
                }
            }
        }
    }
}

#[test]
fn ring_needs_two_slots_with_atomic_forwarding() {
    let (n, bytes, elem, chunk) = (3, 3 * 64, 8, 64);
    let plans: Vec<Plan> = (0..n)
        .map(|r| all_reduce_ring(n, r, bytes, elem, chunk))
        .collect();
    let mut mem: Vec<RankMem> = (0..n)
        .map(|r| RankMem {
            input: pattern(r, bytes, elem, 0),
            output: garbage(bytes),
            in_place: false,
        })
        .collect();
    let cfg = SimConfig {
        slots: 1,
        forwarding: Forwarding::Atomic,
        elem,
        chunk,
        align: elem,
    };
    let err = simulate(&plans, &mut mem, cfg).unwrap_err();
    assert!(err.contains("deadlock"), "{err}");
}

#[test]
fn split_even_is_element_aligned_and_front_loaded() {
    assert_eq!(split_even(0, 3, 4), vec![(0, 0), (0, 0), (0, 0)]);
    assert_eq!(split_even(7 * 8, 3, 8), vec![(0, 24), (24, 16), (40, 16)]);
    assert_eq!(split_even(8, 4, 8), vec![(0, 8), (8, 0), (8, 0), (8, 0)]);
    for n in 1..10 {
        for count in 0..50 {
            let segs = split_even(count * 2, n, 2);
            assert_eq!(segs.iter().map(|s| s.1).sum::<usize>(), count * 2);
            assert!(segs
                .windows(2)
                .all(|w| w[0].0 + w[0].1 == w[1].0 && w[0].1 >= w[1].1 && w[0].1 - w[1].1 <= 2));
            assert!(segs.iter().all(|s| s.0 % 2 == 0 && s.1 % 2 == 0));
        }
    }
    assert_eq!(num_chunks(0, 64), 1);
    assert_eq!(num_chunks(64, 64), 1);
    assert_eq!(num_chunks(65, 64), 2);
    assert_eq!(
        split_chunks(10, 130, 64),
        vec![(10, 64), (74, 64), (138, 2)]
    );
    assert_eq!(split_chunks(10, 0, 64), vec![(10, 0)]);
}

// --- The simulator catches the plan bugs it claims to catch. ---

fn two_ranks() -> Vec<RankMem> {
    vec![
        RankMem {
            input: vec![1; 128],
            output: vec![0; 128],
            in_place: false
        };
        2
    ]
}

fn cfg1() -> SimConfig {
    SimConfig {
        slots: 1,
        forwarding: Forwarding::Lenient,
        elem: 8,
        chunk: 64,
        align: 1,
    }
}

#[test]
fn sim_detects_deadlock() {
    let recv_first = |from| Plan {
        steps: vec![
            Step::Recv {
                from,
                dst: Range::output(0, 8),
            },
            Step::Send {
                to: from,
                src: Range::input(0, 8),
            },
        ],
    };
    let err = simulate(&[recv_first(1), recv_first(0)], &mut two_ranks(), cfg1()).unwrap_err();
    assert!(
        err.contains("deadlock") && err.contains("rank 0 step 0"),
        "{err}"
    );
    // Two sends before the peer receives: fine with 2 slots, deadlock with 1 when both do it.
    let two_sends = |to| Plan {
        steps: vec![
            Step::Send {
                to,
                src: Range::input(0, 8),
            },
            Step::Send {
                to,
                src: Range::input(8, 8),
            },
            Step::Recv {
                from: to,
                dst: Range::output(0, 8),
            },
            Step::Recv {
                from: to,
                dst: Range::output(8, 8),
            },
        ],
    };
    assert!(
        simulate(&[two_sends(1), two_sends(0)], &mut two_ranks(), cfg1())
            .unwrap_err()
            .contains("deadlock")
    );
    assert!(simulate(
        &[two_sends(1), two_sends(0)],
        &mut two_ranks(),
        SimConfig { slots: 2, ..cfg1() }
    )
    .is_ok());
}

#[test]
fn sim_detects_length_mismatch_oversize_steps_and_leftovers() {
    let send = Plan {
        steps: vec![Step::Send {
            to: 1,
            src: Range::input(0, 16),
        }],
    };
    let recv8 = Plan {
        steps: vec![Step::Recv {
            from: 0,
            dst: Range::output(0, 8),
        }],
    };
    let err = simulate(&[send.clone(), recv8], &mut two_ranks(), cfg1()).unwrap_err();
    assert!(err.contains("received a 16-byte chunk"), "{err}");

    let big = Plan {
        steps: vec![Step::Send {
            to: 1,
            src: Range::input(0, 128),
        }],
    };
    assert!(simulate(&[big, Plan::default()], &mut two_ranks(), cfg1())
        .unwrap_err()
        .contains("longer than the chunk"));

    assert!(simulate(&[send, Plan::default()], &mut two_ranks(), cfg1())
        .unwrap_err()
        .contains("unreceived"));

    let unaligned = Plan {
        steps: vec![Step::Copy {
            src: Range::input(1, 8),
            dst: Range::output(0, 8),
        }],
    };
    let cfg = SimConfig { align: 8, ..cfg1() };
    assert!(
        simulate(&[unaligned, Plan::default()], &mut two_ranks(), cfg)
            .unwrap_err()
            .contains("aligned")
    );
}
