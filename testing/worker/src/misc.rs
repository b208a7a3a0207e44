//! The `barrier-destroy`, `create-timeout`, `create-dead-peer`, `recreate` and `smoke` scenarios.
use super::*;

/// A barrier that returned on one rank must also complete on the others, even when that rank
/// destroys the group right away: rank 0 destroys immediately after each barrier.
pub(crate) fn barrier_destroy() -> R {
    let me = env_usize("RANK");
    for k in 0..20 {
        let g = world(&format!("barrier-destroy-{k}"))?;
        let r = g.barrier();
        if me == 0 {
            g.destroy();
        }
        r.ctx(format!("barrier {k} (rank 0 destroys the group right after it)"))?;
    }
    world("barrier-destroy-done")?.barrier().ctx("final barrier")?;
    Ok(())
}

/// Run alone as rank 0 of a 2-rank job: group creation must fail (rank 1 never comes), and must
/// not leave this process's shared-memory segments behind in /dev/shm.
pub(crate) fn create_timeout() -> R {
    let addr = std::env::var("CHORUS_STORE_ADDR").map_err(|_| "create-timeout needs CHORUS_STORE_ADDR")?;
    let store: Arc<dyn Store> = Arc::new(StoreClient::connect(&addr, timeout()).map_err(|e| format!("store {addr}: {e}"))?);
    let r = ProcessGroup::new(store, 0, 2, Options::default().with_timeout(Duration::from_millis(500)).with_name("lonely"));
    ensure!(r.is_err(), "creating a 2-rank group alone succeeded");
    // Segment names: chorus-<group uid>-<pid>-<time>-r<rank>-{sig,data}.
    let mine = format!("-{}-", std::process::id());
    let leaked: Vec<String> = std::fs::read_dir("/dev/shm")
        .map_err(|e| format!("/dev/shm: {e}"))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.starts_with("chorus-lonely.") && n.contains(&mine))
        .collect();
    for n in &leaked {
        let _ = std::fs::remove_file(format!("/dev/shm/{n}")); // do not leave them for the next run
    }
    ensure!(leaked.is_empty(), "a failed group creation ({}) left {leaked:?} in /dev/shm", r.err().unwrap());
    Ok(())
}

/// Group NAME is created while the test kills rank DEAD (once its record is in the store): every
/// other rank's creation must fail naming rank DEAD, long before the deadline (the test sets
/// CHORUS_TIMEOUT_MS to a minute). With DEAD `none` every rank creates the group and passes a barrier.
pub(crate) fn create_dead_peer(args: &[String]) -> R {
    let usage = "create-dead-peer NAME DEAD|none";
    let name = args.first().ok_or(usage)?;
    let dead: Option<usize> = match args.get(1).map(String::as_str) {
        Some("none") => None,
        Some(r) => Some(r.parse().map_err(|_| usage)?),
        None => return Err(usage.into()),
    };
    let me = env_usize("RANK");
    let t0 = Instant::now();
    let created = world(name);
    let took = t0.elapsed();
    let Some(dead) = dead else {
        return created?.barrier().map(drop).ctx("barrier after creating the group");
    };
    ensure!(me != dead, "rank {dead} should have been killed during the creation, which returned {:?}", created.map(|_| ()));
    let err = match created {
        Ok(_) => return Err(format!("creating group {name} succeeded although rank {dead} died during it")),
        Err(e) => e,
    };
    ensure!(err.contains(&format!("rank {dead} failed during group creation")), "the error does not name the dead rank {dead}: {err}");
    ensure!(took < Duration::from_secs(10), "creation failed only after {took:?} (deadline {:?}): {err}", timeout());
    println!("rank {me}: creation failed after {} ms: {err}", took.as_millis());
    Ok(())
}

/// Issue 25: the same group (same store, same name) made again right after it was destroyed, ROUNDS
/// times, with an all_reduce in each incarnation. A destroy must not wait for the membership
/// threads' next turn (the test sets a heartbeat interval of several seconds).
pub(crate) fn recreate(args: &[String]) -> R {
    let rounds: usize = args.first().and_then(|a| a.parse().ok()).ok_or("recreate ROUNDS")?;
    let me = env_usize("RANK");
    for k in 0..rounds {
        let g = world("recreated")?;
        let n = g.size();
        let mut v: Vec<f32> = vec![(me + k) as f32; 1000];
        g.all_reduce(&mut v, ReduceOp::Sum).ctx(format!("all_reduce in incarnation {k}"))?;
        let want = (0..n).map(|r| (r + k) as f32).sum::<f32>();
        ensure!(v.iter().all(|&x| x == want), "incarnation {k}: all_reduce gave {}, expected {want}", v[0]);
        let t0 = Instant::now();
        g.destroy();
        let took = t0.elapsed();
        ensure!(took < Duration::from_secs(2), "destroying incarnation {k} took {took:?}: it waited for the membership threads");
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------ smoke

pub(crate) fn smoke() -> R {
    let pg = world("default")?;
    check_transports(&pg, &|r| r)?;
    let (n, me) = (pg.size(), pg.rank());
    for &c in &[0usize, 7, 4097, 1 << 20] {
        let case = RedCase::new(DType::F32, ReduceOp::Sum, c as u64, n);
        let mut buf = case.input(me, 0, c);
        pg.all_reduce_raw(&mut buf, DType::F32, ReduceOp::Sum).ctx("all_reduce")?;
        case.check(&buf, 0, "all_reduce")?;
        let mut b = if me == n - 1 { pat(c as u64, 0, 0, c) } else { vec![0u8; c] };
        pg.broadcast_raw(&mut b, n - 1).ctx("broadcast")?;
        ensure!(b == pat(c as u64, 0, 0, c), "broadcast: wrong data");
        let mut out = vec![0u8; c * n];
        pg.all_gather_raw(&pat(c as u64, me, 0, c), &mut out).ctx("all_gather")?;
        for r in 0..n {
            ensure!(out[r * c..(r + 1) * c] == pat(c as u64, r, 0, c)[..], "all_gather: block {r} wrong");
        }
    }
    if n > 1 {
        let to = (me + 1) % n;
        let w = pg.send_async(pat(5, me, 0, 1000), to, 1);
        let got = pg.recv_async(vec![0u8; 1000], (me + n - 1) % n, 1).wait().ctx("recv")?;
        ensure!(got == pat(5, (me + n - 1) % n, 0, 1000), "recv: wrong data");
        w.wait().ctx("send")?;
    }
    pg.barrier().ctx("barrier")?;
    println!("rank {me}: smoke ok, transports {:?}", pg.transports());
    Ok(())
}
