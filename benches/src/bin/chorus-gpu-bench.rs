//! `chorus-gpu-bench`: chorus GPU collectives and NCCL side by side, nccl-tests columns, one process per
//! GPU (the binary launches them around a store with `chorus_bootstrap::launch`, as `chorus-run` does;
//! each rank makes a chorus process group and takes its device communicator from it). Times are CUDA-event times of `iters` back-to-back operations on one
//! stream, averaged, as nccl-tests reports them; busbw uses nccl-tests' factors. Every size is also
//! checked: chorus's output must equal NCCL's byte for byte (sums of 2 ranks, and all data movement).
//!
//! `chorus-gpu-bench [--gpus N] [--ops all_reduce,broadcast,...] [--min-bytes 8] [--max-bytes 1G]
//! [--dtype f32|bf16] [--csv out.csv] [--no-nccl]`. NCCL comes from `libnccl.so.2` (or
//! `CHORUS_NCCL_LIB`); set `NCCL_NVLS_ENABLE=0` where NVLink multicast must stay off.
#[path = "gpu/nccl.rs"]
mod nccl;

use chorus_backend::{Options, ProcessGroup};
use chorus_bootstrap::launch::{self, LaunchOptions};
use chorus_kernels::cuda::cudarc::driver::sys::CUevent_flags;
use chorus_kernels::cuda::cudarc::driver::{CudaContext, CudaStream};
use chorus_kernels::cuda::{DeviceAllocation, DeviceComm, RawStream};
use chorus_kernels::{DType, ReduceOp};
use clap::Parser;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

const OPS: [&str; 5] = ["all_reduce", "broadcast", "all_gather", "reduce_scatter", "all_to_all"];

#[derive(Parser, Debug, Clone)]
#[command(about = "chorus GPU collectives against NCCL, nccl-tests columns")]
struct Args {
    /// Ranks (one per GPU); default: every visible GPU.
    #[arg(long)]
    gpus: Option<usize>,
    /// Comma-separated operations.
    #[arg(long, default_value = "all_reduce,broadcast,all_gather,reduce_scatter,all_to_all")]
    ops: String,
    #[arg(long, default_value = "8", value_parser = parse_size)]
    min_bytes: usize,
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    max_bytes: usize,
    /// Size multiplier between rows.
    #[arg(long, default_value_t = 2)]
    step_factor: usize,
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Write every row to this CSV file (rank 0).
    #[arg(long)]
    csv: Option<PathBuf>,
    /// chorus only.
    #[arg(long)]
    no_nccl: bool,
}

fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1usize << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<usize>().map(|n| n * mult).map_err(|e| format!("bad size {s}: {e}"))
}

fn main() {
    // CHORUS_LOG: this program has no subscriber of its own.
    chorus_backend::logging::install_stderr_logger();
    let args = Args::parse();
    if let Some(o) = args.ops.split(',').find(|o| !OPS.contains(o)) {
        eprintln!("chorus-gpu-bench: unknown op {o} (known: {})", OPS.join(", "));
        std::process::exit(2);
    }
    if std::env::var("RANK").is_ok_and(|r| !r.is_empty()) {
        if let Err(e) = child(&args) {
            eprintln!("chorus-gpu-bench: {e}");
            std::process::exit(1);
        }
        return;
    }
    let ndev = match chorus_kernels::cuda::open_device(0) {
        Ok(_) => CudaContext::device_count().unwrap_or(0) as usize,
        Err(e) => {
            eprintln!("chorus-gpu-bench: {e}");
            std::process::exit(2);
        }
    };
    let exe = std::env::current_exe().expect("own executable").display().to_string();
    let opts = LaunchOptions::new(args.gpus.unwrap_or(ndev), exe, std::env::args().skip(1).collect());
    std::process::exit(launch::run(&opts));
}

struct Lib<'a> {
    comm: &'a DeviceComm,
    nccl: Option<&'a nccl::NcclComm<'a>>,
}

/// What one op moves: nccl-tests' size (bytes) -> element count per call and the busbw factor.
fn shape(op: &str, size: usize, esz: usize, world: usize) -> (usize, f64) {
    let n = world as f64;
    match op {
        "all_reduce" => (size / esz, 2.0 * (n - 1.0) / n),
        "broadcast" => (size / esz, 1.0),
        _ => (size / world / esz, (n - 1.0) / n),
    }
}

#[allow(clippy::too_many_arguments)]
fn launch(lib: &Lib, use_nccl: bool, op: &str, dtype: DType, count: usize, src: u64, dst: u64, stream: &CudaStream) -> Result<(), String> {
    let raw = RawStream(stream.cu_stream() as usize);
    let esz = dtype.size();
    let ndt = if dtype == DType::BF16 { nccl::NCCL_BFLOAT16 } else { nccl::NCCL_FLOAT32 };
    if use_nccl {
        let n = lib.nccl.ok_or("no NCCL")?;
        let s = raw.0;
        return match op {
            "all_reduce" => n.all_reduce(src, dst, count, ndt, s),
            "broadcast" => n.broadcast(src, dst, count, ndt, 0, s),
            "all_gather" => n.all_gather(src, dst, count, ndt, s),
            "reduce_scatter" => n.reduce_scatter(src, dst, count, ndt, s),
            _ => n.all_to_all(src, dst, count, ndt, esz, s),
        };
    }
    let c = lib.comm;
    // SAFETY: src and dst are allocations of `max_bytes` (x world where an op needs it), larger than
    // any range these calls touch; the stream is alive.
    let r = unsafe {
        match op {
            "all_reduce" => c.all_reduce(raw, dtype, ReduceOp::Sum, src, dst, count),
            "broadcast" => c.broadcast(raw, src, dst, count * esz, 0),
            "all_gather" => c.all_gather(raw, src, dst, count * esz),
            "reduce_scatter" => c.reduce_scatter(raw, dtype, ReduceOp::Sum, src, dst, count),
            _ => c.all_to_all(raw, src, dst, count * esz),
        }
    };
    r.map_err(|e| e.to_string())
}

fn child(args: &Args) -> Result<(), String> {
    let dtype = DType::from_name(&args.dtype).filter(|d| matches!(d, DType::F32 | DType::BF16)).ok_or("--dtype: f32 or bf16")?;
    let esz = dtype.size();
    let pg = ProcessGroup::from_env(Options::default()).map_err(|e| format!("cannot create the process group: {e}"))?;
    let (rank, world) = (pg.rank(), pg.size());
    chorus_kernels::cuda::open_device(0).map_err(|e| e.to_string())?;
    let ndev = CudaContext::device_count().map_err(|e| e.to_string())? as usize;
    let comm = pg.device_comm(rank % ndev).map_err(|e| e.to_string())?;
    let kernels = comm.kernels().clone();
    let ctx: Arc<CudaContext> = kernels.context().clone();
    let lib_nccl = if args.no_nccl { None } else { Some(nccl::Nccl::open()?) };
    ctx.bind_to_thread().map_err(|e| e.to_string())?;
    let ncomm = match &lib_nccl {
        Some(l) => {
            // Rank 0's NCCL id reaches the others through the chorus group (a host broadcast).
            let mut id = if rank == 0 { l.unique_id()?.0 } else { [0u8; 128] };
            pg.broadcast(&mut id, 0).map_err(|e| e.to_string())?;
            Some(l.comm(world, nccl::UniqueId(id), rank)?)
        }
        None => None,
    };
    let lib = Lib { comm: &comm, nccl: ncomm.as_ref() };
    let stream = ctx.new_stream().map_err(|e| e.to_string())?;
    let max = args.max_bytes.max(args.min_bytes).max(16);
    let src = DeviceAllocation::new(&ctx, max).map_err(|e| e.to_string())?;
    let dst = DeviceAllocation::new(&ctx, max).map_err(|e| e.to_string())?;
    let dst2 = DeviceAllocation::new(&ctx, max).map_err(|e| e.to_string())?;
    // Small values (about 0.01), different per rank, so float sums stay well-behaved.
    src.fill(0x3c + rank as u8).map_err(|e| e.to_string())?;
    if rank == 0 {
        println!(
            "# chorus-gpu-bench: {world} ranks, {} x {world}, dtype {dtype}, chorus workspace {} {:?}{}",
            kernels.device_name(),
            comm.memory_kind(),
            comm.options(),
            if lib.nccl.is_some() { ", NCCL from libnccl.so.2" } else { "" }
        );
        println!(
            "# {:>10} {:>11} {:>6} | {:>9} {:>8} {:>8} | {:>9} {:>8} {:>8} | {:>6} {:>6} {:>5} | enq",
            "size(B)", "count", "type", "chorus_us", "algbw", "busbw", "nccl_us", "algbw", "busbw", "bw_x", "time_x", "check"
        );
        println!("#   (enq: host microseconds to enqueue one op, chorus / NCCL)");
    }
    let mut csv = match (&args.csv, rank) {
        (Some(p), 0) => {
            let mut f = std::fs::File::create(p).map_err(|e| e.to_string())?;
            writeln!(f, "op,bytes,count,dtype,world,chorus_us,chorus_algbw,chorus_busbw,nccl_us,nccl_algbw,nccl_busbw,check").unwrap();
            Some(f)
        }
        _ => None,
    };
    let sync = |what: &str| -> Result<(), String> {
        // SAFETY: our live stream.
        unsafe { comm.synchronize(RawStream(stream.cu_stream() as usize)) }.map_err(|e| format!("{what}: {e}"))
    };
    for op in args.ops.split(',') {
        if rank == 0 {
            println!("# {op}");
        }
        let mut size = args.min_bytes;
        while size <= args.max_bytes {
            let (count, factor) = shape(op, size, esz, world);
            if count == 0 {
                size *= args.step_factor;
                continue;
            }
            let (warm, iters) = match size {
                s if s <= 1 << 20 => (20, 200),
                s if s <= 64 << 20 => (5, 50),
                _ => (3, 20),
            };
            let mut times = [f64::NAN; 2];
            let mut enqueue = [f64::NAN; 2];
            for (i, use_nccl) in [false, true].into_iter().enumerate() {
                if use_nccl && lib.nccl.is_none() {
                    continue;
                }
                for _ in 0..warm {
                    launch(&lib, use_nccl, op, dtype, count, src.ptr(), dst.ptr(), &stream)?;
                }
                sync("warmup")?;
                // Line the ranks up before timing: one tiny chorus all_reduce, then wait for it.
                launch(&lib, false, "all_reduce", dtype, 16 / esz, dst2.ptr(), dst2.ptr(), &stream)?;
                sync("barrier")?;
                let t0 = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(|e| e.to_string())?;
                let h0 = Instant::now();
                for _ in 0..iters {
                    launch(&lib, use_nccl, op, dtype, count, src.ptr(), dst.ptr(), &stream)?;
                }
                enqueue[i] = h0.elapsed().as_secs_f64() * 1e6 / iters as f64;
                let t1 = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(|e| e.to_string())?;
                t1.synchronize().map_err(|e| e.to_string())?;
                times[i] = t0.elapsed_ms(&t1).map_err(|e| e.to_string())? as f64 * 1e3 / iters as f64;
            }
            // Correctness: chorus's output equals NCCL's (skipped where float sums of more than two
            // ranks may round differently, and above 64 MB to keep the run short).
            let check = if lib.nccl.is_none() || size > 64 << 20 || (matches!(op, "all_reduce" | "reduce_scatter") && world > 2) {
                "-"
            } else {
                let out_bytes = match op {
                    "all_reduce" | "broadcast" | "reduce_scatter" => count * esz,
                    _ => count * esz * world,
                };
                launch(&lib, false, op, dtype, count, src.ptr(), dst.ptr(), &stream)?;
                launch(&lib, true, op, dtype, count, src.ptr(), dst2.ptr(), &stream)?;
                sync("check")?;
                let (mut a, mut b) = (vec![0u8; out_bytes], vec![0u8; out_bytes]);
                dst.read(0, &mut a).map_err(|e| e.to_string())?;
                dst2.read(0, &mut b).map_err(|e| e.to_string())?;
                if a == b {
                    "ok"
                } else {
                    "DIFF"
                }
            };
            if rank == 0 {
                let gb = |t: f64| size as f64 / t / 1e3;
                let (ct, nt) = (times[0], times[1]);
                println!(
                    "  {:>10} {:>11} {:>6} | {:>9.2} {:>8.2} {:>8.2} | {:>9.2} {:>8.2} {:>8.2} | {:>6.2} {:>6.2} {:>5} | {:.1} / {:.1}",
                    size,
                    count,
                    dtype.name(),
                    ct,
                    gb(ct),
                    gb(ct) * factor,
                    nt,
                    gb(nt),
                    gb(nt) * factor,
                    gb(ct) / gb(nt),
                    ct / nt,
                    check,
                    enqueue[0],
                    enqueue[1]
                );
                if let Some(f) = csv.as_mut() {
                    writeln!(f, "{op},{size},{count},{},{world},{ct:.3},{:.3},{:.3},{nt:.3},{:.3},{:.3},{check}", dtype.name(), gb(ct), gb(ct) * factor, gb(nt), gb(nt) * factor).unwrap();
                }
            }
            if check == "DIFF" {
                return Err(format!("{op} at {size} bytes: chorus and NCCL outputs differ"));
            }
            size *= args.step_factor;
        }
    }
    drop(ncomm);
    Ok(())
}
