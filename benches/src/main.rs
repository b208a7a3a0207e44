//! `chorus-bench`: nccl-tests style benchmark of chorus collectives. See `chorus-bench --help`.
mod args;
mod coll;
mod launch;
mod pattern;
mod report;

use args::Args;
use chorus_backend::{ChorusError, DType, Options, ProcessGroup, ReduceOp};
use clap::Parser;
use report::Row;
use std::io::Write;
use std::time::Instant;

fn main() {
    // CHORUS_LOG: this program has no subscriber of its own.
    chorus_backend::logging::install_stderr_logger();
    let args = Args::parse();
    // Bad parameters are one clear error here, not one per spawned rank.
    if let Err(e) = parse_params(&args) {
        eprintln!("chorus-bench: {e}");
        std::process::exit(2);
    }
    let is_child = std::env::var(launch::CHILD_ENV).is_ok_and(|v| !v.is_empty());
    if !is_child {
        if let Some(n) = args.nprocs {
            std::process::exit(launch::run(n));
        }
        if !launch::in_job_env() {
            std::process::exit(launch::run(2));
        }
    }
    std::process::exit(match worker(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("chorus-bench: {e}");
            1
        }
    });
}

fn parse_params(args: &Args) -> Result<(DType, ReduceOp, Vec<&'static str>), String> {
    let dtype = DType::from_name(&args.dtype).ok_or_else(|| format!("unknown datatype {:?}", args.dtype))?;
    let op = ReduceOp::from_name(&args.redop).ok_or_else(|| format!("unknown reduction {:?}; expected sum, prod, min, max, avg, band, bor or bxor", args.redop))?;
    let colls = args.collectives()?;
    if args.collective != "all" {
        for c in colls.iter().filter(|c| matches!(**c, "all_reduce" | "reduce" | "reduce_scatter")) {
            chorus_kernels::check_supported(dtype, op).map_err(|e| format!("{c}: {e}"))?;
        }
    }
    if args.min_bytes > args.max_bytes {
        return Err(format!("-b {} is larger than -e {}", args.min_bytes, args.max_bytes));
    }
    Ok((dtype, op, colls))
}

/// Maximum over ranks of `x`.
fn max_over_ranks(pg: &ProcessGroup, x: f64) -> Result<f64, ChorusError> {
    let mut v = [x];
    pg.all_reduce(&mut v, ReduceOp::Max)?;
    Ok(v[0])
}

fn sum_over_ranks(pg: &ProcessGroup, x: u64) -> Result<u64, ChorusError> {
    let mut v = [x as i64];
    pg.all_reduce(&mut v, ReduceOp::Sum)?;
    Ok(v[0] as u64)
}

/// Mean seconds per iteration of `iters` runs of `run`, started together on every rank.
fn timed(pg: &ProcessGroup, iters: usize, mut run: impl FnMut() -> Result<(), ChorusError>) -> Result<f64, ChorusError> {
    pg.barrier()?;
    let t0 = Instant::now();
    for _ in 0..iters {
        run()?;
    }
    Ok(t0.elapsed().as_secs_f64() / iters as f64)
}

fn worker(args: &Args) -> Result<i32, String> {
    let (dtype, op, colls) = parse_params(args)?;
    let pg = ProcessGroup::from_env(Options::default()).map_err(|e| format!("cannot create the process group: {e}"))?;
    let (n, me) = (pg.size(), pg.rank());
    if args.root >= n {
        return Err(format!("--root {} is not a rank of a group of {n}", args.root));
    }
    let lead = me == 0;
    let out = std::io::stdout();
    let say = |s: &str| {
        if lead {
            let mut o = out.lock();
            let _ = writeln!(o, "{s}");
            let _ = o.flush();
        }
    };
    say(&format!(
        "# chorus-bench: nranks {n}, datatype {}, redop {}, root {}, sizes {}..{} x{}, iters {} warmup {} (capped at {} bytes per size), check {}, rounds {}{}",
        dtype.short_name(),
        op.name(),
        args.root,
        args.min_bytes,
        args.max_bytes,
        args.factor,
        args.iters,
        args.warmup,
        args.cap_bytes,
        args.check,
        args.rounds,
        if args.async_form { " (best of each form), async form timed too: *_async then wait, back to back" } else { "" }
    ));
    say(&format!("# transports of rank 0: {:?}", pg.transports()));

    let mut rows: Vec<Row> = Vec::new();
    let mut total_wrong = 0u64;
    let multi = colls.len() > 1;
    for &c in &colls {
        let reduces = matches!(c, "all_reduce" | "reduce" | "reduce_scatter");
        if reduces {
            if let Err(e) = chorus_kernels::check_supported(dtype, op) {
                say(&format!("#\n# Collective: {c}: skipped ({e})"));
                continue;
            }
        }
        if c == "sendrecv" && n < 2 {
            say(&format!("#\n# Collective: {c}: skipped (needs 2 ranks)"));
            continue;
        }
        say(&format!("#\n# Collective: {c}"));
        let extra = |s: &str, more: &str| if args.async_form { format!("{s}{more}") } else { s.to_string() };
        say(&extra(report::HEADER, report::ASYNC_HEADER));
        say(&extra(report::UNITS, report::ASYNC_UNITS));
        let sizes = if c == "barrier" { vec![0] } else { args.sizes() };
        let first_row = rows.len();
        for bytes in sizes {
            let Some(shape) = coll::shape(c, bytes, dtype.size(), n) else { continue };
            let work_bytes = shape.size.max(1);
            let (iters, warm) = if c == "barrier" { (args.iters.max(1), args.warmup) } else { (args.iters_for(work_bytes), args.warmup_for(work_bytes)) };
            let err = |e: ChorusError| format!("rank {me}: {c} of {} bytes failed: {e}", shape.size);
            let mut case = coll::Case::new(&pg, c, dtype, op, args.root, &shape);
            for _ in 0..warm {
                case.run().map_err(err)?;
                if args.async_form {
                    case.run_async().map_err(err)?;
                }
            }
            // Each form's best round (they alternate, so both see the same noise).
            let (mut per_iter, mut per_iter_async) = (f64::INFINITY, f64::INFINITY);
            for _ in 0..args.rounds {
                per_iter = per_iter.min(timed(&pg, iters, || case.run()).map_err(err)?);
                if args.async_form {
                    per_iter_async = per_iter_async.min(timed(&pg, iters, || case.run_async()).map_err(err)?);
                }
            }
            let mut wrong = 0;
            if args.check != 0 {
                case.fill();
                case.run().map_err(err)?;
                wrong = case.verify();
                if args.async_form {
                    case.fill();
                    case.run_async().map_err(err)?;
                    wrong += case.verify();
                }
            }
            drop(case);
            let time = max_over_ranks(&pg, per_iter).map_err(err)?;
            let async_us = if args.async_form { Some(max_over_ranks(&pg, per_iter_async).map_err(err)? * 1e6) } else { None };
            let wrong = sum_over_ranks(&pg, wrong).map_err(err)?;
            total_wrong += wrong;
            let algbw = if shape.size == 0 { 0.0 } else { shape.size as f64 / time / 1e9 };
            let row = Row {
                op: c,
                size: shape.size,
                count: shape.count,
                dtype: if c == "barrier" { "none".into() } else { dtype.short_name().into() },
                redop: if shape.reduces { op.name().into() } else { "none".into() },
                root: if shape.rooted { args.root as i64 } else { -1 },
                time_us: time * 1e6,
                algbw,
                busbw: algbw * shape.busbw_factor,
                wrong,
                iters,
                nranks: n,
                async_us,
            };
            say(&report::line(&row));
            rows.push(row);
        }
        let mine = &rows[first_row..];
        let wrong: u64 = mine.iter().map(|r| r.wrong).sum();
        let avg = if mine.is_empty() { 0.0 } else { mine.iter().map(|r| r.busbw).sum::<f64>() / mine.len() as f64 };
        say(&format!("# Out of bounds values : {wrong} {}", if wrong == 0 { "OK" } else { "FAILED" }));
        say(&format!("# Avg bus bandwidth    : {avg:.4}"));
    }
    if multi {
        let bw: Vec<f64> = rows.iter().filter(|r| r.op != "barrier").map(|r| r.busbw).collect();
        let avg = if bw.is_empty() { 0.0 } else { bw.iter().sum::<f64>() / bw.len() as f64 };
        say("#\n# All collectives:");
        say(&format!("# Out of bounds values : {total_wrong} {}", if total_wrong == 0 { "OK" } else { "FAILED" }));
        say(&format!("# Avg bus bandwidth    : {avg:.4}"));
    }
    if lead {
        if let Some(path) = &args.json {
            std::fs::write(path, report::json(&rows, n, &pg.transports())).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
    }
    pg.barrier().map_err(|e| format!("final barrier: {e}"))?;
    pg.destroy();
    Ok(if total_wrong > 0 { 1 } else { 0 })
}
