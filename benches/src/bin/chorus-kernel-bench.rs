//! `chorus-kernel-bench`: reports on the reduce kernels of one GPU, asserting nothing (measurements
//! and demonstrations, not tests; they were GPU tests without assertions).
//!
//! - `chorus-kernel-bench reduce`: time of one f32 sum reduce of 2 and 8 sources of 256 MiB each,
//!   and the memory traffic it achieves.
//! - `chorus-kernel-bench lazy-loading`: the hazard behind docs/design.md invariant 4. A resident
//!   kernel spins on one stream while the first reduce of kernels built *without* preloading runs
//!   on another: on a driver with lazy module loading the reduce stalls until the spinner exits.
//!   (The test `gpu_first_reduce_completes_behind_resident_spinner` in chorus-kernels checks that the
//!   preloaded kernels do not stall.)
use chorus_kernels::cuda::cudarc::driver::CudaSlice;
use chorus_kernels::cuda::{open_device, DeviceKernels, ResidentSpinner};
use chorus_kernels::{DType, ReduceOp};
use std::time::{Duration, Instant};

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let result = match mode.as_str() {
        "reduce" => reduce_timing(),
        "lazy-loading" => lazy_loading(),
        _ => {
            eprintln!("usage: chorus-kernel-bench reduce|lazy-loading");
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("chorus-kernel-bench {mode}: {e}");
        std::process::exit(1);
    }
}

type Res = Result<(), Box<dyn std::error::Error>>;

fn reduce_timing() -> Res {
    let k = DeviceKernels::for_device(0)?;
    println!("device 0 = {} ({})", k.device_name(), k.arch());
    let stream = k.context().new_stream()?;
    let n = 64 << 20; // 64 Mi elements = 256 MiB per buffer
    for nsrc in [2usize, 8] {
        let srcs: Vec<CudaSlice<u8>> = (0..nsrc).map(|_| stream.alloc_zeros::<u8>(n * 4)).collect::<Result<_, _>>()?;
        let refs: Vec<&CudaSlice<u8>> = srcs.iter().collect();
        let mut d = stream.alloc_zeros::<u8>(n * 4)?;
        k.reduce(&stream, DType::F32, ReduceOp::Sum, &mut d, &refs, n)?;
        stream.synchronize()?;
        let iters = 10;
        let t = Instant::now();
        for _ in 0..iters {
            k.reduce(&stream, DType::F32, ReduceOp::Sum, &mut d, &refs, n)?;
        }
        stream.synchronize()?;
        let s = t.elapsed().as_secs_f64() / iters as f64;
        let moved = ((nsrc + 1) * n * 4) as f64;
        println!("{nsrc} sources x 256 MiB: {:.3} ms/reduce, {:.0} GB/s of memory traffic", s * 1e3, moved / s / 1e9);
    }
    Ok(())
}

fn lazy_loading() -> Res {
    let ctx = open_device(0)?;
    let fresh = DeviceKernels::build_without_preload_for_test(0)?;
    // Every stream, buffer and module exists before the spinner starts (creating a stream can
    // synchronize the context).
    let (spin_stream, red_stream, rel_stream) = (ctx.new_stream()?, ctx.new_stream()?, ctx.new_stream()?);
    let mut spinner = ResidentSpinner::new(&ctx)?;
    let n = 1 << 20;
    let ab: Vec<u8> = (0..n).flat_map(|i| (i as f32).to_ne_bytes()).collect();
    let da = red_stream.clone_htod(&ab)?;
    let db = red_stream.clone_htod(&ab)?;
    let mut dd = red_stream.alloc_zeros::<u8>(n * 4)?;
    red_stream.synchronize()?;
    ctx.synchronize()?;
    spinner.start(&spin_stream, Duration::from_secs(4))?;
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    fresh.reduce(&red_stream, DType::F32, ReduceOp::Sum, &mut dd, &[&da, &db], n)?;
    let ev = red_stream.record_event(None)?;
    while !ev.is_complete() && t.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_micros(200));
    }
    let (done, took) = (ev.is_complete(), t.elapsed());
    spinner.release(&rel_stream)?;
    rel_stream.synchronize()?;
    let exit = spinner.wait_exit()?;
    red_stream.synchronize()?;
    println!(
        "without preloading, the first reduce {} ({:.3} ms); spinner exit: {exit:?}",
        if done { "completed while the spinner ran" } else { "was STILL PENDING after 2 s (lazy-loading stall)" },
        took.as_secs_f64() * 1e3
    );
    Ok(())
}
