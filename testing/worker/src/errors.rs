//! The `errors-local` and `errors-mismatch` scenarios.
use super::*;

pub(crate) fn expect_err<T>(what: &str, r: Result<T, ChorusError>, ok: impl Fn(&ChorusError) -> bool) -> R {
    match r {
        Ok(_) => Err(format!("{what}: succeeded, expected an error")),
        Err(e) if ok(&e) => Ok(()),
        Err(e) => Err(format!("{what}: wrong error: {e:?}")),
    }
}

pub(crate) fn invalid_rank(e: &ChorusError) -> bool {
    matches!(e, ChorusError::InvalidRank { .. })
}
pub(crate) fn invalid_arg(e: &ChorusError) -> bool {
    matches!(e, ChorusError::InvalidArgument(_))
}
pub(crate) fn unsupported(e: &ChorusError) -> bool {
    matches!(e, ChorusError::Unsupported(_) | ChorusError::UnsupportedOp { .. })
}

/// Calls that must fail on the calling rank alone, before any communication.
pub(crate) fn local_bad_calls(pg: &ProcessGroup) -> R {
    let (n, me) = (pg.size(), pg.rank());
    let mut b = vec![0u8; 16];
    let mut o = vec![0u8; 16 * n];
    expect_err("reduce root n", pg.reduce_raw(&mut b, n, DType::F32, ReduceOp::Sum), invalid_rank)?;
    expect_err("broadcast root n", pg.broadcast_raw(&mut b, n + 3), invalid_rank)?;
    expect_err("gather root n", pg.gather_raw(&b, &mut o, n), invalid_rank)?;
    expect_err("scatter root n", pg.scatter_raw(&o, &mut b, usize::MAX), invalid_rank)?;
    expect_err("reduce_async root n", pg.reduce_async_raw(vec![0u8; 4], n, DType::F32, ReduceOp::Sum).wait(), invalid_rank)?;
    expect_err("broadcast_async root n", pg.broadcast_async(vec![0u8; 4], n).wait(), invalid_rank)?;
    expect_err("send to n", pg.send_raw(&b, n, 0), invalid_rank)?;
    expect_err("send to self", pg.send_raw(&b, me, 0), invalid_arg)?;
    expect_err("recv from n", pg.recv_raw(&mut b, n + 1, 0), invalid_rank)?;
    expect_err("recv from self", pg.recv_async(vec![0u8; 4], me, 0).wait(), invalid_arg)?;
    expect_err("new_group rank n", pg.new_group(&[0, n]), invalid_rank)?;
    expect_err("new_group duplicate", pg.new_group(&[0, 0]), invalid_arg)?;
    // Unsupported op/dtype pairs.
    for (dt, op) in [(DType::F32, ReduceOp::BAnd), (DType::F64, ReduceOp::BXor), (DType::BF16, ReduceOp::BOr), (DType::U32, ReduceOp::Sum), (DType::U16, ReduceOp::Max), (DType::U64, ReduceOp::Min), (DType::F8E4M3, ReduceOp::Sum), (DType::Bool, ReduceOp::Avg)] {
        expect_err(&format!("all_reduce {dt:?} {op}"), pg.all_reduce_raw(&mut b, dt, op), unsupported)?;
        expect_err(&format!("reduce {dt:?} {op}"), pg.reduce_raw(&mut b, 0, dt, op), unsupported)?;
        expect_err(&format!("reduce_scatter {dt:?} {op}"), pg.reduce_scatter_raw(&o, &mut b, dt, op), unsupported)?;
        expect_err(&format!("all_reduce_async {dt:?} {op}"), pg.all_reduce_async_raw(vec![0u8; 8], dt, op).wait(), unsupported)?;
    }
    // Wrong lengths and list lengths.
    expect_err("all_reduce 3 bytes of f32", pg.all_reduce_raw(&mut b[..3], DType::F32, ReduceOp::Sum), invalid_arg)?;
    expect_err("all_gather output too small", pg.all_gather_raw(&b, &mut o[..16 * n - 1]), invalid_arg)?;
    expect_err("reduce_scatter input too big", pg.reduce_scatter_raw(&vec![0u8; 16 * n + 4], &mut b, DType::F32, ReduceOp::Sum), invalid_arg)?;
    expect_err("all_to_all unequal", pg.all_to_all_raw(&o, &mut vec![0u8; 16 * n + n]), invalid_arg)?;
    expect_err("all_to_all_v count lists", pg.all_to_all_v_raw(&o, &vec![1; n + 1], &mut o.clone(), &vec![1; n], DType::U8), invalid_arg)?;
    expect_err("all_to_all_v counts beyond buffer", pg.all_to_all_v_raw(&b, &vec![17; n], &mut o.clone(), &vec![1; n], DType::U8), invalid_arg)?;
    let x = [1.0f32; 4];
    let mut outs: Vec<Vec<f32>> = (0..n + 1).map(|_| vec![0.0; 4]).collect();
    let mut refs: Vec<&mut [f32]> = outs.iter_mut().map(|v| v.as_mut_slice()).collect();
    expect_err("all_gather_list n+1 outputs", pg.all_gather_list(&x, &mut refs), invalid_arg)?;
    let mut refs: Vec<&mut [f32]> = outs.iter_mut().take(n).map(|v| &mut v[..3]).collect();
    expect_err("all_gather_list short outputs", pg.all_gather_list(&x, &mut refs), invalid_arg)?;
    let ins: Vec<&[f32]> = (0..n.saturating_sub(1)).map(|_| &x[..]).collect();
    let mut out = [0.0f32; 4];
    expect_err("reduce_scatter_list n-1 inputs", pg.reduce_scatter_list(&ins, &mut out, ReduceOp::Sum), invalid_arg)?;
    let ins: Vec<&[f32]> = (0..n).map(|r| if r == 0 { &x[..2] } else { &x[..] }).collect();
    expect_err("reduce_scatter_list uneven inputs", pg.reduce_scatter_list(&ins, &mut out, ReduceOp::Sum), invalid_arg)?;
    expect_err("all_gather_async wrong output", pg.all_gather_async(vec![0u8; 4], vec![0u8; 4 * n + 1]).wait(), invalid_arg)?;

    Ok(())
}

pub(crate) fn errors_local() -> R {
    let pg = world("default")?;
    check_transports(&pg, &|r| r)?;
    let (n, me) = (pg.size(), pg.rank());
    let mut b = vec![0u8; 16];
    // Only the last rank issues the bad calls: they must fail without communicating, so the
    // all_reduce below still matches up across ranks.
    if me == n - 1 {
        local_bad_calls(&pg)?;
    }
    // None of that communicated: the group still works, and every rank is in step.
    let mut v = vec![me as i64 + 1; 1000];
    pg.all_reduce(&mut v, ReduceOp::Sum).ctx("all_reduce after local errors")?;
    ensure!(v.iter().all(|&x| x == (n * (n + 1) / 2) as i64), "all_reduce after local errors gave {}", v[0]);

    // Use after destroy: every call on every handle fails with Destroyed.
    let g2 = world("destroy-me")?;
    let clone = g2.clone();
    g2.barrier().ctx("barrier before destroy")?;
    g2.destroy();
    let destroyed = |e: &ChorusError| matches!(e, ChorusError::Destroyed);
    expect_err("all_reduce after destroy", g2.all_reduce_raw(&mut b, DType::F32, ReduceOp::Sum), destroyed)?;
    expect_err("clone all_reduce after destroy", clone.all_reduce(&mut [1i32], ReduceOp::Sum), destroyed)?;
    expect_err("barrier after destroy", clone.barrier(), destroyed)?;
    expect_err("broadcast after destroy", g2.broadcast_raw(&mut b, 0), destroyed)?;
    expect_err("all_gather_async after destroy", g2.all_gather_async(vec![0u8; 4], vec![0u8; 4 * n]).wait(), destroyed)?;
    expect_err("all_reduce_async after destroy", g2.all_reduce_async_raw(vec![0u8; 4], DType::F32, ReduceOp::Sum).wait(), destroyed)?;
    if n > 1 {
        expect_err("send after destroy", g2.send_raw(&b, (me + 1) % n, 0), destroyed)?;
        expect_err("recv after destroy", g2.recv_async(vec![0u8; 4], (me + 1) % n, 0).wait(), destroyed)?;
    }
    expect_err("new_group after destroy", g2.new_group(&[0]), destroyed)?;
    expect_err("split after destroy", g2.split(Some(0), 0), destroyed)?;
    g2.destroy(); // idempotent
    // The other group is unaffected.
    pg.barrier().ctx("barrier on the surviving group")?;
    Ok(())
}

/// What a rank may report for a mismatch case: the argument its error must name (the detecting
/// rank's `Mismatch` and the others' `PeerReportedMismatch` both name it).
fn names_argument(e: &ChorusError, whats: &[&str]) -> bool {
    match e {
        ChorusError::Mismatch { what, .. } | ChorusError::PeerReportedMismatch { what, .. } => whats.contains(what),
        _ => false,
    }
}

type MismatchCase = (&'static str, &'static [&'static str], fn(&ProcessGroup, bool) -> Result<chorus_backend::OpInfo, ChorusError>);

/// Each sub-case runs on a fresh group in which rank 0 disagrees with the others; every rank
/// must get an error that names the argument (not a hang, a timeout or a success), and a correct
/// all_reduce on the same group right after must work on every rank (the mismatched collective
/// counts as returned everywhere).
pub(crate) fn errors_mismatch(only: &[String]) -> R {
    let n = env_usize("WORLD_SIZE");
    ensure!(n >= 2, "errors-mismatch needs 2 or more ranks");
    let cases: [MismatchCase; 14] = [
        ("count", &["the count"], |g, odd| g.all_reduce_raw(&mut vec![0u8; if odd { 40 } else { 48 }], DType::F32, ReduceOp::Sum)),
        ("count-big", &["the count"], |g, odd| g.all_reduce_raw(&mut vec![0u8; if odd { 3 << 20 } else { (3 << 20) + 4 }], DType::F32, ReduceOp::Sum)),
        ("dtype", &["the dtype"], |g, odd| g.all_reduce_raw(&mut [0u8; 64], if odd { DType::F32 } else { DType::I32 }, ReduceOp::Sum)),
        ("op", &["the reduction op"], |g, odd| g.all_reduce_raw(&mut [0u8; 64], DType::I32, if odd { ReduceOp::Sum } else { ReduceOp::Max })),
        ("root", &["the root"], |g, odd| g.broadcast_raw(&mut [0u8; 64], if odd { 0 } else { 1 })),
        // Issue 25: both ranks only wait for each other (each thinks it is the root).
        ("reduce-root", &["the root"], |g, odd| g.reduce_raw(&mut [0u8; 64], if odd { 0 } else { 1 }, DType::F32, ReduceOp::Sum)),
        ("gather-root", &["the root"], |g, odd| g.gather_raw(&[0u8; 16], &mut vec![0u8; 16 * g.size()], if odd { 0 } else { 1 })),
        ("collective", &["the collective"], |g, odd| if odd { g.all_reduce_raw(&mut [0u8; 64], DType::F32, ReduceOp::Sum) } else { g.broadcast_raw(&mut [0u8; 64], 0) }),
        // Both wait: rank 0 as reduce's root, the others as gather's root 1.
        ("collective-waiting", &["the collective"], |g, odd| {
            if odd {
                g.reduce_raw(&mut [0u8; 16], 0, DType::F32, ReduceOp::Sum)
            } else {
                g.gather_raw(&[0u8; 16], &mut vec![0u8; 16 * g.size()], 1)
            }
        }),
        // Issue 25: an f32 broadcast into i32 used to succeed with the f32 bits.
        ("broadcast-dtype", &["the dtype"], |g, odd| if odd { g.broadcast(&mut [7.0f32; 16], 0) } else { g.broadcast(&mut [0i32; 16], 0) }),
        ("all_gather-dtype", &["the dtype"], |g, odd| {
            if odd {
                g.all_gather(&[1.0f32; 4], &mut vec![0.0f32; 4 * g.size()])
            } else {
                g.all_gather(&[1i32; 4], &mut vec![0i32; 4 * g.size()])
            }
        }),
        ("all_gather-count", &["the count"], |g, odd| {
            let l = if odd { 8 } else { 12 };
            g.all_gather_raw(&vec![0u8; l], &mut vec![0u8; l * g.size()])
        }),
        ("all_to_all_v-counts", &["the count", "the message size"], |g, odd| {
            // Rank 0 sends 3 elements to rank 1; rank 1 expects 4 from rank 0.
            let (n, me) = (g.size(), g.rank());
            let mut send = vec![1usize; n];
            let mut recv = vec![1usize; n];
            if odd {
                send[1] = 3;
            } else if me == 1 {
                recv[0] = 4;
            }
            g.all_to_all_v_raw(&[0u8; 64], &send, &mut [0u8; 64], &recv, DType::U8)
        }),
        // Issue 25: rank 0's block to itself and from itself differ (this used to panic the
        // engine thread); rank 0 gets InvalidArgument, its peers an error naming the collective.
        ("all_to_all_v-self", &["the collective"], |g, odd| {
            let n = g.size();
            let send = vec![2usize; n];
            let mut recv = vec![2usize; n];
            if odd {
                recv[0] = 1;
            }
            g.all_to_all_v_raw(&vec![0u8; 2 * n], &send, &mut vec![0u8; 2 * n], &recv, DType::U8)
        }),
    ];
    // Options: --barrier-first (a barrier on the fresh group before the mismatched op),
    // --repeat K; then case names. Default: every case.
    let mut barrier_first = false;
    let mut repeat = 1;
    let mut names: Vec<&str> = Vec::new();
    let mut it = only.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--barrier-first" => barrier_first = true,
            "--repeat" => repeat = it.next().and_then(|v| v.parse().ok()).ok_or("--repeat needs a number")?,
            c => names.push(c),
        }
    }
    for c in &names {
        ensure!(cases.iter().any(|k| k.0 == *c), "no mismatch case named {c}");
    }
    let selected = |c: &str| names.is_empty() || names.contains(&c);
    let mut keep = Vec::new();
    let runs: Vec<(usize, &MismatchCase)> = (0..repeat).flat_map(|k| cases.iter().filter(|c| selected(c.0)).map(move |c| (k, c))).collect();
    for (k, (name, whats, f)) in runs {
        // A fresh group: creating it brings the ranks in step, and its first operation is the
        // mismatched one.
        let g = world(&format!("mismatch-{name}-{k}"))?;
        check_transports(&g, &|r| r)?;
        if barrier_first {
            g.barrier().ctx(format!("{name}: barrier"))?;
        }
        let me = g.rank();
        let t0 = Instant::now();
        let r = f(&g, me == 0);
        eprintln!("rank {me}: mismatch {name}: {} after {} ms", r.as_ref().err().map_or("Ok".to_string(), |e| e.to_string()), t0.elapsed().as_millis());
        match r {
            Ok(_) => return Err(format!("mismatch {name}: succeeded on rank {me}, expected an error")),
            Err(ChorusError::InvalidArgument(m)) if *name == "all_to_all_v-self" && me == 0 => {
                ensure!(m.contains("rank 0 sends 2 bytes to itself but receives 1"), "mismatch {name}: rank 0's error does not say what is wrong: {m}");
            }
            Err(e) if names_argument(&e, whats) => {
                if let ChorusError::Mismatch { rank, peer, .. } = &e {
                    ensure!(*rank == me && *peer != me && e.to_string().contains(&format!("rank {peer} has")), "mismatch {name}: rank {me}'s error does not name both ranks: {e}");
                }
            }
            Err(e) => return Err(format!("mismatch {name}: rank {me} got {e:?}; expected an error naming {whats:?}")),
        }
        // The group is usable: every rank counts the failed collective as returned.
        let mut v = vec![me as i64 + 1; 1000];
        g.all_reduce(&mut v, ReduceOp::Sum).ctx(format!("{name}: all_reduce after the mismatch"))?;
        ensure!(v.iter().all(|&x| x == (n * (n + 1) / 2) as i64), "{name}: all_reduce after the mismatch gave {}", v[0]);
        // Not destroyed here: destroying aborts peers that may still be finishing the all_reduce.
        keep.push(g);
    }
    // Every rank is done with every group before any of them goes away.
    world("mismatch-done")?.barrier().ctx("final barrier")?;
    Ok(())
}
