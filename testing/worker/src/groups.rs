//! The `subgroups` and `async` scenarios.
use super::*;

pub(crate) fn sum_i64(ranks: impl Iterator<Item = usize>, f: impl Fn(usize) -> i64) -> i64 {
    ranks.map(f).sum()
}

/// all_reduce (SUM of a per-job-rank value) on `g`, checked.
pub(crate) fn check_group_sum(g: &ProcessGroup, members: &[usize], it: usize, len: usize) -> R {
    let me = g.parent_rank(g.rank()).ok_or("no parent rank")?;
    let val = |r: usize| (r as i64 + 1) * 1000 + it as i64;
    let mut v = vec![val(me); len];
    g.all_reduce(&mut v, ReduceOp::Sum).ctx(format!("group {} all_reduce", g.uid()))?;
    let want = sum_i64(members.iter().copied(), val);
    ensure!(v.iter().all(|&x| x == want), "group {} (members {members:?}) iteration {it}: got {}, expected {want}", g.uid(), v[0]);
    Ok(())
}

pub(crate) fn subgroups() -> R {
    let pg = world("default")?;
    let (n, me) = (pg.size(), pg.rank());
    ensure!(n >= 3, "subgroups needs at least 3 ranks");
    check_transports(&pg, &|r| r)?;

    // new_group: members get Some with ranks in sorted order, others None.
    let members = vec![n - 1, 0];
    let sorted = vec![0, n - 1];
    let g = pg.new_group(&members).ctx("new_group")?;
    ensure!(g.is_some() == sorted.contains(&me), "new_group({members:?}): membership of rank {me} wrong");
    if let Some(g) = &g {
        ensure!(g.size() == 2 && g.rank() == sorted.iter().position(|&r| r == me).unwrap(), "new_group: rank/size {}/{}", g.rank(), g.size());
        ensure!(g.parent_rank(0) == Some(0) && g.parent_rank(1) == Some(n - 1), "new_group: parent ranks wrong");
        check_transports(g, &|r| sorted[r])?;
        check_group_sum(g, &sorted, 0, 4097)?;
        let mut b = vec![me as u32; 5];
        g.broadcast(&mut b, 1).ctx("subgroup broadcast")?;
        ensure!(b == vec![(n - 1) as u32; 5], "subgroup broadcast from its rank 1 gave {b:?}");
    }
    // The parent still works between subgroup operations.
    check_group_sum(&pg, &(0..n).collect::<Vec<_>>(), 1, 7)?;
    // A singleton group (every rank calls new_group with the same list).
    if let Some(s) = pg.new_group(&[n - 1]).ctx("singleton new_group")? {
        ensure!(me == n - 1 && s.size() == 1 && s.rank() == 0, "singleton group: rank {me} got rank {} of {}", s.rank(), s.size());
        check_group_sum(&s, &[n - 1], 2, 3)?;
    } else {
        ensure!(me != n - 1, "singleton group: its member got None");
    }

    // split: colors by parity, key reverses the order; the last rank opts out.
    let color = if me == n - 1 { None } else { Some((me % 2) as u32) };
    let sp = pg.split(color, -(me as i64)).ctx("split")?;
    ensure!(sp.is_some() == color.is_some(), "split: membership wrong");
    if let Some(sg) = &sp {
        let mut mem: Vec<usize> = (0..n - 1).filter(|r| r % 2 == me % 2).collect();
        mem.reverse(); // key = -rank
        ensure!(sg.size() == mem.len() && sg.parent_rank(sg.rank()) == Some(me), "split: size {} rank {}", sg.size(), sg.rank());
        ensure!(sg.rank() == mem.iter().position(|&r| r == me).unwrap(), "split: rank order ignores the key");
        for (i, &r) in mem.iter().enumerate() {
            ensure!(sg.parent_rank(i) == Some(r), "split: parent_rank({i}) = {:?}, expected {r}", sg.parent_rank(i));
        }
        check_transports(sg, &|r| mem[r])?;
        check_group_sum(sg, &mem, 3, 70_000)?;
    }

    // Two overlapping subgroups {0..n-2} and {1..n-1}, used at once from two threads.
    let a: Vec<usize> = (0..n - 1).collect();
    let b: Vec<usize> = (1..n).collect();
    let ga = pg.new_group(&a).ctx("new_group a")?;
    let gb = pg.new_group(&b).ctx("new_group b")?;
    let iters = 40;
    std::thread::scope(|s| -> R {
        let mut hs = Vec::new();
        for (g, mem) in [(ga.clone(), a.clone()), (gb.clone(), b.clone())] {
            let Some(g) = g else { continue };
            hs.push(s.spawn(move || -> R {
                for it in 0..iters {
                    // Mostly small, sometimes multi-chunk.
                    let len = if it % 10 == 9 { 300_000 } else { 1 + it * 13 };
                    check_group_sum(&g, &mem, it, len)?;
                    if it % 7 == 0 {
                        let x = [me as u16 + 1];
                        let mut all = vec![0u16; g.size()];
                        g.all_gather(&x, &mut all).ctx("overlapping all_gather")?;
                        ensure!(all == mem.iter().map(|&r| r as u16 + 1).collect::<Vec<_>>(), "overlapping all_gather gave {all:?}");
                    }
                }
                Ok(())
            }));
        }
        for h in hs {
            h.join().map_err(|_| "a subgroup thread panicked".to_string())??;
        }
        Ok(())
    })?;
    // And the world group afterwards.
    pg.barrier().ctx("final barrier")?;
    check_group_sum(&pg, &(0..n).collect::<Vec<_>>(), 99, 4097)?;
    Ok(())
}

// ------------------------------------------------------------------------------------------ async

pub(crate) fn async_ops() -> R {
    let pg = world("default")?;
    check_transports(&pg, &|r| r)?;
    let (n, me) = (pg.size(), pg.rank());
    let specs: [(DType, ReduceOp, usize); 8] = [
        (DType::F32, ReduceOp::Sum, 1),
        (DType::I64, ReduceOp::Max, 4097),
        (DType::BF16, ReduceOp::Sum, 7),
        (DType::Bool, ReduceOp::BOr, 100),
        (DType::I8, ReduceOp::Min, 300_000),
        (DType::F64, ReduceOp::Avg, 0),
        (DType::U8, ReduceOp::BXor, 1 << 20),
        (DType::F16, ReduceOp::Prod, 33),
    ];
    for round in 0..3u64 {
        let mut pending: Vec<(RedCase, Work<Vec<u8>>)> = Vec::new();
        for (k, &(dt, op, c)) in specs.iter().enumerate() {
            let case = RedCase::new(dt, op, mix(round * 100 + k as u64), n);
            let w = pg.all_reduce_async_raw(case.input(me, 0, c), dt, op);
            pending.push((case, w));
            if k == 3 {
                // A blocking op in the middle of the queue runs after the queued ones.
                let mut b = pat(round, 0, 0, 1000);
                if me != 0 {
                    b.fill(0);
                }
                pg.broadcast_raw(&mut b, 0).ctx("blocking broadcast between async ops")?;
                ensure!(b == pat(round, 0, 0, 1000), "blocking broadcast between async ops: wrong data");
            }
        }
        let len = 4097 + round as usize;
        let ag = pg.all_gather_async(pat(round, me, 0, len), vec![0u8; n * len]);
        let rs_case = RedCase::new(DType::I32, ReduceOp::Sum, mix(round + 7), n);
        let rs = pg.reduce_scatter_async_raw(rs_case.input(me, 0, n * 9), vec![0u8; 9 * 4], DType::I32, ReduceOp::Sum);
        let red_case = RedCase::new(DType::F32, ReduceOp::Max, mix(round + 8), n);
        let root = n - 1;
        let red = pg.reduce_async_raw(red_case.input(me, 0, 77), root, DType::F32, ReduceOp::Max);
        let bc = pg.broadcast_async(if me == 0 { pat(round, 9, 0, 333) } else { vec![0u8; 333] }, 0);
        let ga = pg.gather_async(pat(round, me, 0, 10), vec![0u8; if me == root { 10 * n } else { 0 }], root);
        let sc = pg.scatter_async(if me == 0 { pat(round, 0, 0, 10 * n) } else { Vec::new() }, vec![0u8; 10], 0);
        let a2a = pg.all_to_all_async(pat(round, me, 0, 12 * n), vec![0u8; 12 * n]);
        let a2av = pg.all_to_all_v_async_raw(pat(round, me, 0, 2 * n), vec![2; n], vec![0u8; 2 * n], vec![2; n], DType::U8);
        let bar = pg.barrier_async();
        // A blocking all_reduce right after, without waiting: it must see the queue drained.
        let mut x = [me as i32];
        pg.all_reduce(&mut x, ReduceOp::Sum).ctx("blocking all_reduce after async ops")?;
        ensure!(x[0] == (0..n as i32).sum::<i32>(), "blocking all_reduce after async ops gave {}", x[0]);

        // Everything queued before the blocking op has completed now.
        for (case, w) in pending {
            ensure!(w.wait_for(timeout()), "all_reduce_async did not complete");
            ensure!(w.is_completed() && w.error().is_none(), "all_reduce_async {:?} failed: {:?}", case.dt, w.error());
            let buf = w.wait().ctx("all_reduce_async")?;
            case.check(&buf, 0, "all_reduce_async")?;
        }
        ensure!(ag.wait_for(timeout()) && ag.is_completed() && ag.error().is_none(), "all_gather_async: {:?}", ag.error());
        let (_, out) = ag.wait().ctx("all_gather_async")?;
        for r in 0..n {
            ensure!(out[r * len..(r + 1) * len] == pat(round, r, 0, len)[..], "all_gather_async: block {r} wrong");
        }
        let (_, out) = rs.wait().ctx("reduce_scatter_async")?;
        rs_case.check(&out, me * 9, "reduce_scatter_async")?;
        let buf = red.wait().ctx("reduce_async")?;
        if me == root {
            red_case.check(&buf, 0, "reduce_async")?;
        }
        ensure!(bc.wait().ctx("broadcast_async")? == pat(round, 9, 0, 333), "broadcast_async: wrong data");
        let (_, out) = ga.wait().ctx("gather_async")?;
        if me == root {
            for r in 0..n {
                ensure!(out[r * 10..(r + 1) * 10] == pat(round, r, 0, 10)[..], "gather_async: block {r} wrong");
            }
        }
        ensure!(sc.wait().ctx("scatter_async")?.1 == pat(round, 0, me * 10, 10), "scatter_async: wrong data");
        let (_, out) = a2a.wait().ctx("all_to_all_async")?;
        for p in 0..n {
            ensure!(out[p * 12..(p + 1) * 12] == pat(round, p, me * 12, 12)[..], "all_to_all_async: block from {p} wrong");
        }
        let (_, out) = a2av.wait().ctx("all_to_all_v_async")?;
        for p in 0..n {
            ensure!(out[p * 2..(p + 1) * 2] == pat(round, p, me * 2, 2)[..], "all_to_all_v_async: block from {p} wrong");
        }
        bar.wait().ctx("barrier_async")?;
    }
    // A failed async op is complete at once and reports its error.
    let w = pg.all_reduce_async_raw(vec![0u8; 8], DType::U32, ReduceOp::Sum);
    ensure!(w.is_completed() && w.wait_for(Duration::ZERO), "unsupported all_reduce_async is not complete at once");
    ensure!(w.error().is_some(), "unsupported all_reduce_async has no error");
    ensure!(matches!(w.wait(), Err(ChorusError::Unsupported(_) | ChorusError::UnsupportedOp { .. })), "unsupported all_reduce_async: wrong error");
    pg.barrier().ctx("final barrier")?;
    Ok(())
}
