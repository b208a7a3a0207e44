//! The `matrix` scenario: every collective x dtype x reduce op x size, plus send/recv.
use super::*;

pub(crate) struct M {
    pg: ProcessGroup,
    n: usize,
    me: usize,
    k: u64,
    ops_run: usize,
}

impl M {
    pub(crate) fn seed(&mut self) -> u64 {
        self.k += 1;
        self.ops_run += 1;
        mix(self.k ^ 0xC0FFEE)
    }

    pub(crate) fn roots(&self) -> Vec<usize> {
        if self.n == 1 { vec![0] } else { vec![0, self.n - 1] }
    }

    // ---- reductions
    pub(crate) fn all_reduce(&mut self, dt: DType, op: ReduceOp, c: usize) -> R {
        let case = RedCase::new(dt, op, self.seed(), self.n);
        let mut buf = case.input(self.me, 0, c);
        self.pg.all_reduce_raw(&mut buf, dt, op).ctx(format!("all_reduce {dt:?} {op} x{c}"))?;
        case.check(&buf, 0, "all_reduce")
    }

    pub(crate) fn reduce(&mut self, dt: DType, op: ReduceOp, c: usize, root: usize) -> R {
        let case = RedCase::new(dt, op, self.seed(), self.n);
        let mut buf = case.input(self.me, 0, c);
        let orig = buf.clone();
        self.pg.reduce_raw(&mut buf, root, dt, op).ctx(format!("reduce root {root} {dt:?} {op} x{c}"))?;
        if self.me == root {
            case.check(&buf, 0, &format!("reduce to root {root}"))
        } else {
            ensure!(buf == orig, "reduce root {root} {dt:?} {op} x{c}: a non-root's buffer changed");
            Ok(())
        }
    }

    pub(crate) fn reduce_scatter(&mut self, dt: DType, op: ReduceOp, b: usize, list: bool) -> R {
        let case = RedCase::new(dt, op, self.seed(), self.n);
        let (e, n, me) = (dt.size(), self.n, self.me);
        let input = case.input(me, 0, n * b);
        let what = format!("reduce_scatter{} {dt:?} {op} block {b}", if list { "_list" } else { "" });
        let out = if list {
            match typed!(dt, |z| rs_list(&self.pg, z, &input, b * e, op)) {
                Some(r) => r.ctx(&what)?,
                None => return Ok(()),
            }
        } else {
            let mut out = vec![0xA5u8; b * e];
            self.pg.reduce_scatter_raw(&input, &mut out, dt, op).ctx(&what)?;
            out
        };
        ensure!(input == case.input(me, 0, n * b), "{what}: the input changed");
        case.check(&out, me * b, &what)
    }

    // ---- data movement
    pub(crate) fn broadcast(&mut self, dt: DType, c: usize, root: usize) -> R {
        let s = self.seed();
        let len = c * dt.size();
        let mut buf = if self.me == root { pat(s, root, 0, len) } else { pat(s ^ 1, self.me, 0, len) };
        self.pg.broadcast_raw(&mut buf, root).ctx(format!("broadcast root {root} {dt:?} x{c}"))?;
        ensure!(buf == pat(s, root, 0, len), "broadcast root {root} {dt:?} x{c}: wrong data");
        Ok(())
    }

    pub(crate) fn all_gather(&mut self, dt: DType, b: usize, list: bool) -> R {
        let s = self.seed();
        let (len, n) = (b * dt.size(), self.n);
        let input = pat(s, self.me, 0, len);
        let what = format!("all_gather{} {dt:?} block {b}", if list { "_list" } else { "" });
        let out = if list {
            match typed!(dt, |z| ag_list(&self.pg, z, &input)) {
                Some(r) => r.ctx(&what)?,
                None => return Ok(()),
            }
        } else {
            let mut out = vec![0xA5u8; n * len];
            self.pg.all_gather_raw(&input, &mut out).ctx(&what)?;
            out
        };
        for r in 0..n {
            ensure!(out[r * len..(r + 1) * len] == pat(s, r, 0, len)[..], "{what}: block {r} is wrong");
        }
        Ok(())
    }

    pub(crate) fn all_to_all(&mut self, dt: DType, b: usize) -> R {
        let s = self.seed();
        let (len, n, me) = (b * dt.size(), self.n, self.me);
        let input = pat(s, me, 0, n * len);
        let mut out = vec![0xA5u8; n * len];
        self.pg.all_to_all_raw(&input, &mut out).ctx(format!("all_to_all {dt:?} block {b}"))?;
        for p in 0..n {
            ensure!(out[p * len..(p + 1) * len] == pat(s, p, me * len, len)[..], "all_to_all {dt:?} block {b}: block from rank {p} is wrong");
        }
        Ok(())
    }

    pub(crate) fn all_to_all_v(&mut self, dt: DType, b: usize) -> R {
        let s = self.seed();
        let (e, n, me) = (dt.size(), self.n, self.me);
        // Uneven counts with zeros: cnt(from, to).
        let cnt = |from: usize, to: usize| if (from * 3 + to * 5 + b).is_multiple_of(4) { 0 } else { b + (from + 2 * to) % 3 };
        let send: Vec<usize> = (0..n).map(|p| cnt(me, p)).collect();
        let recv: Vec<usize> = (0..n).map(|p| cnt(p, me)).collect();
        let total_in: usize = send.iter().sum();
        let total_out: usize = recv.iter().sum();
        // Buffers larger than the counts need (allowed); the slack must stay untouched.
        let input = pat(s, me, 0, (total_in + 5) * e);
        let mut out = vec![0xEEu8; (total_out + 3) * e];
        self.pg
            .all_to_all_v_raw(&input, &send, &mut out, &recv, dt)
            .ctx(format!("all_to_all_v {dt:?} send {send:?} recv {recv:?}"))?;
        let mut at = 0;
        for p in 0..n {
            let off: usize = (0..me).map(|q| cnt(p, q)).sum();
            let len = recv[p] * e;
            ensure!(out[at..at + len] == pat(s, p, off * e, len)[..], "all_to_all_v {dt:?} recv {recv:?}: segment from rank {p} is wrong");
            at += len;
        }
        ensure!(out[at..].iter().all(|&x| x == 0xEE), "all_to_all_v {dt:?}: wrote past the received counts");
        Ok(())
    }

    pub(crate) fn gather(&mut self, dt: DType, b: usize, root: usize) -> R {
        let s = self.seed();
        let (len, n, me) = (b * dt.size(), self.n, self.me);
        let input = pat(s, me, 0, len);
        let mut out = if me == root { vec![0xA5u8; n * len] } else { Vec::new() };
        self.pg.gather_raw(&input, &mut out, root).ctx(format!("gather root {root} {dt:?} block {b}"))?;
        if me == root {
            for r in 0..n {
                ensure!(out[r * len..(r + 1) * len] == pat(s, r, 0, len)[..], "gather root {root} {dt:?} block {b}: block {r} is wrong");
            }
        }
        Ok(())
    }

    pub(crate) fn scatter(&mut self, dt: DType, b: usize, root: usize) -> R {
        let s = self.seed();
        let (len, n, me) = (b * dt.size(), self.n, self.me);
        let input = if me == root { pat(s, root, 0, n * len) } else { Vec::new() };
        let mut out = vec![0xA5u8; len];
        self.pg.scatter_raw(&input, &mut out, root).ctx(format!("scatter root {root} {dt:?} block {b}"))?;
        ensure!(out == pat(s, root, me * len, len), "scatter root {root} {dt:?} block {b}: wrong data");
        Ok(())
    }

    /// Every rank sends to and receives from every other rank at once: per peer two messages
    /// with tag A (matched in order) and one with tag B, receives posted in a different order
    /// than the sends, everything posted before anything is waited for.
    pub(crate) fn send_recv(&mut self, dt: DType, c: usize) -> R {
        let s = self.seed();
        let (e, n, me) = (dt.size(), self.n, self.me);
        let (ta, tb) = (100 + s % 50, 200 + s % 50);
        // (tag, k, element count) of the messages every rank sends to every peer.
        let msgs = [(ta, 0u64, c), (tb, 0, c / 2 + 1), (ta, 1, c % 5 + 1)];
        let payload = |from: usize, to: usize, tag: u64, k: u64, cnt: usize| pat(s ^ (tag << 8) ^ k, from * 64 + to, 0, cnt * e);
        let mut sends = Vec::new();
        let mut recvs = Vec::new();
        for p in (0..n).filter(|&p| p != me) {
            recvs.push((p, msgs[1], self.pg.recv_async(vec![0u8; msgs[1].2 * e], p, tb)));
            for &(tag, k, cnt) in &msgs {
                sends.push((p, payload(me, p, tag, k, cnt), self.pg.send_async(payload(me, p, tag, k, cnt), p, tag)));
            }
            recvs.push((p, msgs[0], self.pg.recv_async(vec![0u8; msgs[0].2 * e], p, ta)));
            recvs.push((p, msgs[2], self.pg.recv_async(vec![0u8; msgs[2].2 * e], p, ta)));
        }
        for (p, (tag, k, cnt), w) in recvs {
            let got = w.wait().ctx(format!("recv {dt:?} x{cnt} from {p} tag {tag}"))?;
            ensure!(got == payload(p, me, tag, k, cnt), "recv {dt:?} x{cnt} from {p} tag {tag} (message {k}): wrong data");
        }
        for (p, orig, w) in sends {
            let back = w.wait().ctx(format!("send {dt:?} to {p}"))?;
            ensure!(back == orig, "send {dt:?} to {p}: the returned buffer differs from the one sent");
        }
        Ok(())
    }

    pub(crate) fn batch(&mut self, dt: DType, c: usize) -> R {
        let s = self.seed();
        let (e, n, me) = (dt.size(), self.n, self.me);
        let (next, prev) = ((me + 1) % n, (me + n - 1) % n);
        let payload = |from: usize, to: usize, tag: u64| pat(s ^ tag, from * 64 + to, 0, (c + tag as usize) * e);
        let ops = vec![
            P2pRequest::Recv { buf: vec![0u8; (c + 5) * e], from: prev, tag: 5 },
            P2pRequest::Send { buf: payload(me, next, 5), to: next, tag: 5 },
            P2pRequest::Send { buf: payload(me, prev, 6), to: prev, tag: 6 },
            P2pRequest::Recv { buf: vec![0u8; (c + 6) * e], from: next, tag: 6 },
        ];
        let works = self.pg.batch_send_recv(ops);
        let want = [Some(payload(prev, me, 5)), None, None, Some(payload(next, me, 6))];
        for (w, want) in works.into_iter().zip(want) {
            let got = w.wait().ctx(format!("batch_send_recv {dt:?} x{c}"))?;
            if let Some(want) = want {
                ensure!(got == want, "batch_send_recv {dt:?} x{c}: wrong data received");
            }
        }
        Ok(())
    }
}

pub(crate) fn parse_list<T>(s: &str, f: impl Fn(&str) -> Option<T>) -> R<Vec<T>> {
    s.split(',').filter(|x| !x.is_empty()).map(|x| f(x).ok_or_else(|| format!("cannot parse {x:?}"))).collect()
}

/// Sizes: element counts, or `<k>M` / `<k>K` for k MiB / KiB worth of elements of each dtype.
pub(crate) fn count_of(spec: &str, dt: DType) -> usize {
    if let Some(mb) = spec.strip_suffix('M') {
        (mb.parse::<usize>().unwrap() << 20) / dt.size()
    } else if let Some(kb) = spec.strip_suffix('K') {
        (kb.parse::<usize>().unwrap() << 10) / dt.size()
    } else {
        spec.parse().unwrap()
    }
}

pub(crate) fn matrix(args: &[String]) -> R {
    let mut dtypes = DType::all().to_vec();
    let mut sizes = vec!["0".to_string(), "1".into(), "7".into(), "4097".into(), "3M".into()];
    let mut big_ops: Option<Vec<ReduceOp>> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().ok_or_else(|| format!("{a} needs a value"))?;
        match a.as_str() {
            "--dtypes" => {
                dtypes = match v.as_str() {
                    "all" => DType::all().to_vec(),
                    "reduced" => vec![DType::F32, DType::I64, DType::BF16, DType::Bool],
                    l => parse_list(l, DType::from_name)?,
                }
            }
            "--sizes" => sizes = v.split(',').map(String::from).collect(),
            "--big-ops" => big_ops = if v == "all" { None } else { Some(parse_list(v, ReduceOp::from_name)?) },
            _ => return Err(format!("unknown option {a}")),
        }
    }
    let pg = world("default")?;
    check_transports(&pg, &|r| r)?;
    let (n, me) = (pg.size(), pg.rank());
    let mut m = M { pg, n, me, k: 0, ops_run: 0 };
    for &dt in &dtypes {
        let t0 = Instant::now();
        for spec in &sizes {
            let c = count_of(spec, dt);
            let big = spec.ends_with('M') || spec.ends_with('K');
            // Blocked ops (one block per rank) keep the total near the requested size when big.
            let b = if big { c / n } else { c };
            if DType::reducible().contains(&dt) {
                for &op in ReduceOp::all() {
                    if chorus_kernels::check_supported(dt, op).is_err() || (big && big_ops.as_ref().is_some_and(|l| !l.contains(&op))) {
                        continue;
                    }
                    m.all_reduce(dt, op, c)?;
                    for root in m.roots() {
                        m.reduce(dt, op, c, root)?;
                    }
                    m.reduce_scatter(dt, op, b, false)?;
                    m.reduce_scatter(dt, op, b, true)?;
                }
            }
            for root in m.roots() {
                m.broadcast(dt, c, root)?;
                m.gather(dt, b, root)?;
                m.scatter(dt, b, root)?;
            }
            m.all_gather(dt, b, false)?;
            m.all_gather(dt, b, true)?;
            m.all_to_all(dt, b)?;
            m.all_to_all_v(dt, b)?;
            if n > 1 {
                m.send_recv(dt, c)?;
                m.batch(dt, c)?;
            }
            m.pg.barrier().ctx("barrier")?;
        }
        if me == 0 {
            eprintln!("rank 0: {dt:?} done in {} ms", t0.elapsed().as_millis());
        }
    }
    // Every rank ran the same number of cases; a final all_reduce proves they are still in step.
    let mut cnt = [m.ops_run as i64];
    m.pg.all_reduce(&mut cnt, ReduceOp::Max).ctx("final all_reduce")?;
    ensure!(cnt[0] == m.ops_run as i64, "ranks ran different numbers of cases");
    println!("rank {me}: {} cases over {n} ranks, transports {:?}", m.ops_run, m.pg.transports());
    Ok(())
}
