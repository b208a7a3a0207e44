//! The planning without a GPU: every launch fits the staging it uses, the launches of an operation
//! cover its buffers exactly once, and every rank plans the same sequence of kernel launches.

use super::*;
use crate::cuda::coll::options::Layout;
use std::time::Duration;

/// The defaults of `CommOptions::from_env` with no variable set (spelled out: the tests must not
/// depend on the environment).
fn default_opts(world: usize) -> CommOptions {
    CommOptions {
        slot_bytes: ((512usize << 20) / (2 * world)).clamp(64 << 10, 256 << 20) & !4095,
        p2p_slot: 4 << 20,
        blocks: 128,
        small_blocks: 16,
        threads: 1024,
        oneshot_max: match world {
            1 | 2 => 256 << 10,
            3 | 4 => 128 << 10,
            _ => 64 << 10,
        },
        ll_max: 64 << 10,
        pipeline_min: 96 << 20,
        timeout: Duration::from_secs(60),
        max_pipeline_steps: 64,
    }
}

/// Small slots, so that small messages already take many sub-operations.
fn tiny_opts(_world: usize) -> CommOptions {
    CommOptions {
        slot_bytes: 64 << 10,
        p2p_slot: 1008,
        oneshot_max: 8 << 10,
        ll_max: 1 << 10,
        pipeline_min: 256 << 10,
        max_pipeline_steps: 4,
        ..default_opts(1)
    }
}

const OPTIONS: [fn(usize) -> CommOptions; 2] = [default_opts, tiny_opts];
const DTYPES: [DType; 5] = [DType::F32, DType::BF16, DType::F64, DType::U8, DType::Bool];

fn planner(rank: usize, world: usize, opts: &CommOptions) -> Planner<'_> {
    Planner { rank, world, opts, small_slot: Layout::new(world, opts).small_slot }
}

/// Asserts that the non-empty `(start, len)` ranges cover `[0, total)` exactly once.
fn assert_tiles(ranges: impl IntoIterator<Item = (usize, usize)>, total: usize, what: &str) {
    let mut r: Vec<(usize, usize)> = ranges.into_iter().filter(|&(_, len)| len > 0).collect();
    r.sort();
    let mut end = 0;
    for (start, len) in r {
        assert_eq!(start, end, "{what}: a gap or an overlap at {start} (covered up to {end})");
        end = start + len;
    }
    assert_eq!(end, total, "{what}: covers up to {end} of {total}");
}

/// Element counts worth trying for `opts`: empty, tiny, odd, and both sides of every threshold.
fn counts(opts: &CommOptions, e: usize) -> Vec<usize> {
    let mut c = vec![0, 1, 2, 3, 7, 4095, 4097];
    for bytes in [opts.ll_max, opts.oneshot_max, opts.slot_bytes / 2, opts.slot_bytes, 3 * opts.slot_bytes + 48, opts.pipeline_min] {
        c.extend([bytes / e - 1, bytes / e, bytes / e + 1]);
    }
    c
}

#[test]
fn all_reduce_launches_cover_every_element_once_within_their_staging() {
    for opts_of in OPTIONS {
        for world in 1..=MAX_RANKS {
            let opts = opts_of(world);
            let small_slot = Layout::new(world, &opts).small_slot;
            for dtype in DTYPES {
                let e = dtype.size();
                for count in counts(&opts, e) {
                    let what = format!("world {world} {dtype:?} count {count} opts {opts:?}");
                    let plan = planner(0, world, &opts).all_reduce(dtype, ReduceOp::Sum, count);
                    assert_tiles(plan.iter().map(|l| (l.src_off.unwrap() / e, l.count)), count, &what);
                    for l in &plan {
                        assert_eq!(l.src_off, l.dst_off, "{what}");
                        assert_eq!(l.src_off.unwrap() % 16, 0, "{what}: sub-operations start 16-byte aligned");
                        assert_eq!(l.kind, plan[0].kind, "{what}: one algorithm per operation");
                    }
                    let bytes = count * e;
                    match plan[0].kind {
                        AR_LL => {
                            assert!(world > 1 && plan.len() == 1 && plan[0].lane == Lane::LowLatency, "{what}");
                            assert!(bytes <= opts.ll_max, "{what}");
                        }
                        AR_ONESHOT => {
                            let l = plan[0];
                            assert_eq!(plan.len(), 1, "{what}");
                            assert!(l.chunk >= 1 && l.chunk * e <= opts.slot_bytes, "{what}: chunk {}", l.chunk);
                            if l.lane == Lane::Small {
                                assert!(bytes <= small_slot, "{what}");
                            }
                            if bytes > opts.oneshot_max && world > 1 {
                                // Only the pipelined one-shot of 2 ranks runs above oneshot_max.
                                assert!(world == 2 && bytes >= opts.pipeline_min && l.lane == Lane::Bulk, "{what}");
                                assert!(count.div_ceil(l.chunk) >= 2, "{what}: pipelined in one step");
                            }
                        }
                        AR_TWOSHOT => {
                            assert!(world > 1 && bytes > opts.oneshot_max, "{what}");
                            for l in &plan {
                                assert_eq!(l.lane, Lane::Bulk, "{what}");
                                // Each rank reduces its share of the launch in half a slot.
                                assert!(l.count.div_ceil(world) * e <= opts.slot_bytes / 2, "{what}: {l:?}");
                            }
                        }
                        other => panic!("{what}: kind {other}"),
                    }
                }
            }
        }
    }
}

#[test]
fn all_reduce_algorithm_switches_at_the_thresholds() {
    let kinds = |world: usize, opts: &CommOptions, count: usize| -> Vec<(u32, Lane)> {
        planner(0, world, opts).all_reduce(DType::F32, ReduceOp::Sum, count).iter().map(|l| (l.kind, l.lane)).collect()
    };
    // 4 ranks: LL up to 64 KiB, one-shot on the small lane up to 128 KiB, then two-shot.
    let o = default_opts(4);
    assert_eq!(kinds(4, &o, 1), vec![(AR_LL, Lane::LowLatency)]);
    assert_eq!(kinds(4, &o, 16384), vec![(AR_LL, Lane::LowLatency)]);
    assert_eq!(kinds(4, &o, 16385), vec![(AR_ONESHOT, Lane::Small)]);
    assert_eq!(kinds(4, &o, 32768), vec![(AR_ONESHOT, Lane::Small)]);
    assert_eq!(kinds(4, &o, 32769), vec![(AR_TWOSHOT, Lane::Bulk)]);
    // LL turned off.
    assert_eq!(kinds(4, &CommOptions { ll_max: 0, ..o.clone() }, 1), vec![(AR_ONESHOT, Lane::Small)]);
    // 2 ranks: two-shot below 96 MiB, the pipelined one-shot from there.
    let o = default_opts(2);
    let below = kinds(2, &o, (96 << 20) / 4 - 1);
    assert!(!below.is_empty() && below.iter().all(|&k| k == (AR_TWOSHOT, Lane::Bulk)), "{below:?}");
    assert_eq!(kinds(2, &o, (96 << 20) / 4), vec![(AR_ONESHOT, Lane::Bulk)]);
    // 1 rank: always one launch of the one-shot (a copy), whatever the size.
    let o = default_opts(1);
    for count in [1, 16384, 1 << 26] {
        assert_eq!(kinds(1, &o, count).len(), 1);
        assert_eq!(kinds(1, &o, count)[0].0, AR_ONESHOT);
    }
}

#[test]
fn reduce_covers_every_element_once_and_names_the_root() {
    for opts_of in OPTIONS {
        for world in 1..=MAX_RANKS {
            let opts = opts_of(world);
            let small_slot = Layout::new(world, &opts).small_slot;
            for dtype in DTYPES {
                let e = dtype.size();
                for count in counts(&opts, e) {
                    for root in 0..world {
                        let what = format!("world {world} root {root} {dtype:?} count {count}");
                        let plan = planner(0, world, &opts).reduce(dtype, ReduceOp::Avg, count, root);
                        assert_tiles(plan.iter().map(|l| (l.src_off.unwrap() / e, l.count)), count, &what);
                        for l in &plan {
                            assert_eq!((l.kind, l.root, l.avg_n), (REDUCE, root, world as u32), "{what}");
                            assert_eq!(l.src_off, l.dst_off, "{what}");
                            assert_eq!(l.src_off.unwrap() % 16, 0, "{what}");
                            assert!(l.count * e <= opts.slot_bytes, "{what}: {l:?}");
                            assert_eq!(l.lane == Lane::Small, l.count * e <= small_slot, "{what}: {l:?}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn reduce_scatter_slices_partition_the_source_and_the_output() {
    for opts_of in OPTIONS {
        for world in 1..=MAX_RANKS {
            let opts = opts_of(world);
            for dtype in DTYPES {
                let e = dtype.size();
                for count in counts(&opts, e) {
                    let what = format!("world {world} {dtype:?} count {count}");
                    let bytes = count * e;
                    let plan = planner(0, world, &opts).reduce_scatter(dtype, ReduceOp::Sum, &even_blocks(world, bytes), count);
                    let src = plan.iter().flat_map(|l| (0..world).map(move |p| (l.send_off[p] + l.src_off.unwrap(), l.count * e)));
                    assert_tiles(src, world * bytes, &format!("{what}: source"));
                    assert_tiles(plan.iter().map(|l| (l.dst_off.unwrap(), l.count * e)), bytes, &format!("{what}: output"));
                    for l in &plan {
                        assert_eq!(l.kind, REDUCE_SCATTER);
                        assert!(l.count * e <= opts.slot_bytes, "{what}: {l:?}");
                        assert!(l.send_off[world..].iter().all(|&o| o == 0), "{what}: offsets past the world");
                    }
                }
            }
        }
    }
    // Blocks anywhere (reversed, with gaps): each rank's block is still covered exactly once.
    let opts = tiny_opts(4);
    let count = 3 * opts.slot_bytes / 4 + 5;
    let blocks = [3 * 4 * count + 64, 2 * 4 * count + 32, 4 * count + 16, 0];
    let plan = planner(2, 4, &opts).reduce_scatter(DType::F32, ReduceOp::Sum, &blocks, count);
    assert!(plan.len() > 1);
    for (p, &block) in blocks.iter().enumerate() {
        assert_tiles(plan.iter().map(|l| (l.send_off[p] + l.src_off.unwrap() - block, l.count * 4)), count * 4, &format!("block {p}"));
    }
}

#[test]
fn all_gather_blocks_tile_the_output_in_one_launch() {
    for opts_of in OPTIONS {
        for world in 1..=MAX_RANKS {
            let opts = opts_of(world);
            let small_slot = Layout::new(world, &opts).small_slot;
            for bytes in [0, 1, 17, 4096, small_slot, small_slot + 1, opts.slot_bytes + 1, 3 * opts.slot_bytes + 5] {
                let what = format!("world {world} bytes {bytes}");
                let plan = planner(world - 1, world, &opts).all_gather(bytes);
                assert_eq!(plan.len(), usize::from(bytes > 0), "{what}");
                for l in &plan {
                    assert_eq!((l.kind, l.count, l.src_off, l.dst_off), (ALL_GATHER, bytes, Some(0), Some(0)), "{what}");
                    assert_tiles((0..world).map(|q| (q * l.dst_stride, l.count)), world * bytes, &what);
                    if l.lane == Lane::Small {
                        assert!(bytes <= small_slot && l.chunk == bytes, "{what}: {l:?}");
                    } else {
                        assert!(bytes > small_slot && l.chunk <= opts.slot_bytes, "{what}: {l:?}");
                        assert!(bytes.div_ceil(l.chunk) >= 2, "{what}: a bulk movement is pipelined");
                    }
                }
            }
        }
    }
}

/// What one rank's exchange delivers: `(receiver, destination offset, sender, source offset, len)`
/// for every non-empty pair, after checking that both sides agree on the length.
fn deliveries(exchanges: &[Exchange]) -> Vec<(usize, usize, usize, usize, usize)> {
    let world = exchanges.len();
    let mut out = Vec::new();
    for (p, to) in exchanges.iter().enumerate() {
        for (q, from) in exchanges.iter().enumerate() {
            assert_eq!(from.send_len[p], to.recv_len[q], "rank {q} sends {} to {p}, which expects {}", from.send_len[p], to.recv_len[q]);
            if to.recv_len[q] > 0 {
                out.push((p, to.recv_off[q], q, from.send_off[p], to.recv_len[q]));
            }
        }
        assert_eq!(to.max_pair_bytes, exchanges[0].max_pair_bytes, "ranks disagree on the launch size");
    }
    assert!(out.iter().all(|&(p, _, q, _, _)| p < world && q < world));
    out
}

#[test]
fn broadcast_delivers_every_byte_of_the_root_to_every_rank_once() {
    for world in 1..=MAX_RANKS {
        let opts = default_opts(world);
        for bytes in [0, 1, 4097, BCAST_SCATTER_MIN - 1, BCAST_SCATTER_MIN, BCAST_SCATTER_MIN + 17, 3 * BCAST_SCATTER_MIN + 5] {
            for root in 0..world {
                let what = format!("world {world} root {root} bytes {bytes}");
                let plans: Vec<BroadcastPlan> = (0..world).map(|r| planner(r, world, &opts).broadcast(bytes, root)).collect();
                let mut phases: Vec<Vec<Exchange>> = vec![Vec::new(), Vec::new()];
                for (r, plan) in plans.iter().enumerate() {
                    match plan {
                        BroadcastPlan::Direct(launches) => {
                            assert!(world <= 2 || bytes < BCAST_SCATTER_MIN, "{what}");
                            assert_eq!(launches.len(), usize::from(bytes > 0), "{what}");
                            for l in launches {
                                assert_eq!((l.kind, l.root, l.count), (BROADCAST, root, bytes), "{what}");
                            }
                        }
                        BroadcastPlan::ScatterGather { scatter, gather } => {
                            assert!(world > 2 && bytes >= BCAST_SCATTER_MIN, "{what}");
                            for ex in [scatter, gather] {
                                let launches = planner(r, world, &opts).exchange(&ex.send_off, &ex.send_len, &ex.recv_off, &ex.recv_len, ex.max_pair_bytes);
                                assert_eq!(launches.expect(&what).len(), 1, "{what}");
                            }
                            phases[0].push(scatter.clone());
                            phases[1].push(gather.clone());
                        }
                    }
                }
                if phases[0].is_empty() {
                    continue;
                }
                // Scatter: only the root's source is read; byte i of it lands at byte i.
                let mut held: Vec<Vec<(usize, usize)>> = vec![Vec::new(); world];
                for (p, dst_off, q, src_off, len) in deliveries(&phases[0]) {
                    assert_eq!((q, src_off), (root, dst_off), "{what}: scatter to {p}");
                    held[p].push((dst_off, len));
                }
                // Gather: a rank forwards only what it holds, to the same offset.
                let mut result: Vec<Vec<(usize, usize)>> = vec![Vec::new(); world];
                for (p, dst_off, q, src_off, len) in deliveries(&phases[1]) {
                    assert_eq!(src_off, dst_off, "{what}: gather from {q} to {p}");
                    assert!(held[q].iter().any(|&(s, l)| s <= src_off && src_off + len <= s + l), "{what}: rank {q} forwards bytes it lacks");
                    result[p].push((dst_off, len));
                }
                for (p, ranges) in result.into_iter().enumerate() {
                    assert_tiles(ranges, bytes, &format!("{what}: rank {p}"));
                }
            }
        }
    }
}

#[test]
fn all_to_all_blocks_tile_both_buffers_and_bad_exchanges_are_refused() {
    for world in 1..=MAX_RANKS {
        let opts = tiny_opts(world);
        for bytes in [0, 1, 33, opts.slot_bytes + 3] {
            let exchanges: Vec<Exchange> = (0..world).map(|r| planner(r, world, &opts).even_exchange(bytes)).collect();
            let delivered = deliveries(&exchanges);
            // Block p of rank q's source is block q of rank p's destination.
            for &(p, dst_off, q, src_off, _) in &delivered {
                assert_eq!((src_off, dst_off), (p * bytes, q * bytes));
            }
            for (r, ex) in exchanges.iter().enumerate() {
                assert_tiles(delivered.iter().filter(|d| d.2 == r).map(|d| (d.3, d.4)), world * bytes, "source");
                assert_tiles(delivered.iter().filter(|d| d.0 == r).map(|d| (d.1, d.4)), world * bytes, "destination");
                let plan = planner(r, world, &opts).exchange(&ex.send_off, &ex.send_len, &ex.recv_off, &ex.recv_len, ex.max_pair_bytes).unwrap();
                assert_eq!(plan.len(), usize::from(bytes > 0));
                for l in &plan {
                    assert_eq!((l.kind, l.count), (ALL_TO_ALL, bytes));
                    assert_eq!(&l.send_len[..world], &ex.send_len[..]);
                    assert!(l.recv_off[world..].iter().chain(&l.recv_len[world..]).all(|&v| v == 0));
                }
            }
        }
    }
    let opts = tiny_opts(3);
    let p = planner(1, 3, &opts);
    let (off, len) = ([0, 8, 16], [8, 8, 8]);
    assert!(p.exchange(&off, &len, &off, &len, 8).is_ok());
    assert!(p.exchange(&off[..2], &len, &off, &len, 8).is_err(), "one entry per rank");
    assert!(p.exchange(&off, &len, &off, &len, 7).is_err(), "a length above max_pair_bytes");
    assert!(p.exchange(&off, &len, &off, &[8, 4, 8], 8).is_err(), "the block to itself differs");
}

#[test]
fn p2p_chunks_tile_the_message_and_match_between_sender_and_receiver() {
    for opts in [default_opts(2), tiny_opts(2)] {
        let slot = opts.p2p_slot;
        for bytes in [0, 1, 15, 16, slot - 1, slot, slot + 1, 5 * slot + 3] {
            let sends = planner(0, 2, &opts).p2p(SEND, bytes, 1);
            let recvs = planner(1, 2, &opts).p2p(RECV, bytes, 0);
            assert_tiles(sends.iter().map(|l| (l.src_off.unwrap(), l.count)), bytes, "send");
            assert_tiles(recvs.iter().map(|l| (l.dst_off.unwrap(), l.count)), bytes, "recv");
            assert!(sends.iter().all(|l| l.dst_off.is_none() && l.root == 1 && l.count <= slot && l.lane == Lane::Bulk));
            assert!(recvs.iter().all(|l| l.src_off.is_none() && l.root == 0 && l.count <= slot && l.lane == Lane::Bulk));
            let sizes = |v: &[Launch]| v.iter().map(|l| l.count).collect::<Vec<_>>();
            assert_eq!(sizes(&sends), sizes(&recvs), "bytes {bytes}: every send chunk meets a receive chunk");
        }
    }
}

#[test]
fn send_recv_interleaves_the_chunks_of_both_directions() {
    let opts = tiny_opts(3);
    let slot = opts.p2p_slot;
    for (send_bytes, recv_bytes) in [(0, 0), (0, 2 * slot), (3 * slot + 1, 1), (2 * slot, 2 * slot)] {
        let p = planner(1, 3, &opts);
        let subs = p.send_recv(send_bytes, 2, recv_bytes, 0);
        let (sends, recvs) = (p.p2p(SEND, send_bytes, 2), p.p2p(RECV, recv_bytes, 0));
        assert_eq!(subs.len(), sends.len() + recvs.len());
        let picked = |kind| subs.iter().filter(|l| l.kind == kind).copied().collect::<Vec<_>>();
        assert_eq!(picked(SEND), sends);
        assert_eq!(picked(RECV), recvs);
        // While both have chunks left they alternate, the send first.
        for i in 0..sends.len().min(recvs.len()) {
            assert_eq!((subs[2 * i].kind, subs[2 * i + 1].kind), (SEND, RECV), "{send_bytes} {recv_bytes}");
        }
    }
}

#[test]
fn every_rank_plans_the_same_launches() {
    for world in 1..=MAX_RANKS {
        let opts = tiny_opts(world);
        for count in [0, 5, 3 * opts.slot_bytes + 16, opts.pipeline_min / 4] {
            let plans = |f: &dyn Fn(&Planner) -> Vec<Launch>| (0..world).map(|r| f(&planner(r, world, &opts))).collect::<Vec<_>>();
            let same = |v: Vec<Vec<Launch>>, what: &str| assert!(v.windows(2).all(|w| w[0] == w[1]), "world {world} count {count}: {what}");
            same(plans(&|p| p.all_reduce(DType::BF16, ReduceOp::Avg, count)), "all_reduce");
            same(plans(&|p| p.reduce(DType::F32, ReduceOp::Sum, count, world - 1)), "reduce");
            same(plans(&|p| p.reduce_scatter(DType::F64, ReduceOp::Max, &even_blocks(world, count * 8), count)), "reduce_scatter");
            same(plans(&|p| p.all_gather(count)), "all_gather");
            // Uneven all-to-all: the blocks differ per rank, the launch does not.
            let shapes = plans(&|p| {
                let len: Vec<usize> = (0..world).map(|q| (p.rank + q) * count / (2 * world)).collect();
                let mut l = p.exchange(&vec![0; world], &len, &vec![0; world], &len, count).unwrap();
                l.iter_mut().for_each(|l| (l.send_len, l.recv_len) = ([0; MAX_RANKS], [0; MAX_RANKS]));
                l
            });
            same(shapes, "all_to_allv");
        }
    }
}

#[test]
fn divisor_and_identity() {
    let opts = default_opts(1);
    let one = planner(0, 1, &opts);
    assert!(one.identity_at_world_1(true, Some(DType::F32)) && one.identity_at_world_1(true, None));
    assert!(!one.identity_at_world_1(true, Some(DType::Bool)), "bool kernels normalise their input");
    assert!(!one.identity_at_world_1(false, Some(DType::F32)), "out of place copies");
    let opts = default_opts(3);
    let three = planner(0, 3, &opts);
    assert!(!three.identity_at_world_1(true, None));
    assert_eq!((three.avg_divisor(ReduceOp::Avg), three.avg_divisor(ReduceOp::Sum)), (3, 0));
}

#[test]
fn broadcast_shards_tile_the_message() {
    for world in 3..=MAX_RANKS {
        for bytes in [BCAST_SCATTER_MIN, BCAST_SCATTER_MIN + 1, (1 << 20) + 7, 1 << 30] {
            let (offs, lens, shard) = byte_shards(bytes, world);
            assert_tiles(offs.iter().copied().zip(lens.iter().copied()), bytes, &format!("world {world} bytes {bytes}"));
            assert!(lens.iter().all(|&l| l <= shard) && shard % 16 == 0);
            assert!(offs.iter().all(|&o| o % 16 == 0));
        }
    }
}

#[test]
fn split_tiles_the_range_in_order() {
    let pieces = |total, cap| -> Vec<(usize, usize)> {
        split(total, cap, |off, n| Launch { src_off: Some(off), count: n, ..Default::default() }).iter().map(|l| (l.src_off.unwrap(), l.count)).collect()
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

#[test]
fn reduce_chunks_are_whole_16_byte_lines_within_the_cap() {
    for dtype in DTYPES {
        for cap in [16, 100, 4095, 4096, (32 << 20) + 24] {
            let n = chunk_elems(dtype, cap);
            let bytes = n * dtype.size();
            assert!(bytes <= cap && bytes.is_multiple_of(16) && cap - bytes < 16, "{dtype:?} cap {cap}: {n} elements");
        }
    }
}
