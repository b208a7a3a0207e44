//! GPU tests of the NVRTC reduce kernels (`chorus_kernels::cuda`).
//!
//! The GPU tests are `#[ignore]`d (a plain run reports them as not run). Run with `--ignored` on a
//! machine without a CUDA device, each prints `not run: no CUDA device (<reason>)` and returns, unless
//! `CHORUS_REQUIRE_GPU=1` (scripts/gpu-tests), which makes that a failure.
#![cfg(feature = "cuda")]

use chorus_kernels::cuda::cudarc::driver::{CudaSlice, CudaStream};
use chorus_kernels::cuda::{open_device, DeviceKernels, ResidentSpinner, SpinExit};
use chorus_kernels::{check_supported, reduce_into, DType, KernelError, ReduceOp};
use half::{bf16, f16};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The cached kernels of device 0, or None (after printing why) when there is no usable CUDA.
fn gpu(test: &str) -> Option<Arc<DeviceKernels>> {
    match DeviceKernels::for_device(0) {
        Ok(k) => {
            println!("{test}: running on device 0 = {} ({})", k.device_name(), k.arch());
            Some(k)
        }
        Err(KernelError::CudaUnavailable(reason)) => {
            gpu_test::not_run(test, &reason);
            None
        }
        Err(e) => panic!("{test}: CUDA present but the kernels failed to build: {e}"),
    }
}

// Only its not-run report is used here.
#[allow(dead_code)]
mod gpu_test;
mod random;
use random::{gen, Rng};

fn is_nan(dtype: DType, b: &[u8]) -> bool {
    match dtype {
        DType::F32 => f32::from_ne_bytes(b.try_into().unwrap()).is_nan(),
        DType::F64 => f64::from_ne_bytes(b.try_into().unwrap()).is_nan(),
        DType::F16 => f16::from_bits(u16::from_ne_bytes(b.try_into().unwrap())).is_nan(),
        DType::BF16 => bf16::from_bits(u16::from_ne_bytes(b.try_into().unwrap())).is_nan(),
        _ => false,
    }
}

/// Element-for-element comparison: bit-exact, except that any NaN equals any NaN (NaN payloads of
/// an operation on two NaNs differ between x86 and the GPU; both propagate NaN).
fn mismatches(dtype: DType, got: &[u8], want: &[u8]) -> (usize, Option<usize>) {
    let s = dtype.size();
    let mut n = 0;
    let mut first = None;
    for (i, (g, w)) in got.chunks_exact(s).zip(want.chunks_exact(s)).enumerate() {
        if g != w && !(is_nan(dtype, g) && is_nan(dtype, w)) {
            n += 1;
            first.get_or_insert(i);
        }
    }
    (n, first)
}

/// A device buffer of `bytes` at byte offset `off` inside a slightly larger allocation.
struct DevBuf {
    mem: CudaSlice<u8>,
    off: usize,
    bytes: usize,
}
impl DevBuf {
    fn upload(stream: &Arc<CudaStream>, data: &[u8], off: usize) -> DevBuf {
        let mut padded = vec![0xa5u8; data.len() + 32];
        padded[off..off + data.len()].copy_from_slice(data);
        DevBuf { mem: stream.clone_htod(&padded).unwrap(), off, bytes: data.len() }
    }
    fn zeros(stream: &Arc<CudaStream>, bytes: usize, off: usize) -> DevBuf {
        DevBuf { mem: stream.alloc_zeros::<u8>(bytes + 32).unwrap(), off, bytes }
    }
    fn download(&self, stream: &Arc<CudaStream>) -> Vec<u8> {
        stream.clone_dtoh(&self.mem.slice(self.off..self.off + self.bytes)).unwrap()
    }
}

/// Runs `dtype` x every supported op x nsrc for one element count and layout; returns cases checked.
fn check_size(k: &DeviceKernels, stream: &Arc<CudaStream>, dtype: DType, count: usize, offsets: (usize, usize), seed: u64) -> usize {
    let mut rng = Rng::new(seed);
    let srcs_host: Vec<Vec<u8>> = (0..7).map(|_| gen(dtype, count, &mut rng)).collect();
    let (dst_off, src_off) = offsets;
    let srcs_dev: Vec<DevBuf> = srcs_host.iter().map(|h| DevBuf::upload(stream, h, src_off)).collect();
    let mut cases = 0;
    for &op in ReduceOp::all() {
        if check_supported(dtype, op).is_err() {
            continue;
        }
        for nsrc in [1usize, 2, 7] {
            let mut want = vec![0u8; count * dtype.size()];
            let srefs: Vec<&[u8]> = srcs_host[..nsrc].iter().map(|v| v.as_slice()).collect();
            reduce_into(dtype, op, &mut want, &srefs).unwrap();

            let mut dst = DevBuf::zeros(stream, count * dtype.size(), dst_off);
            let views: Vec<_> = srcs_dev[..nsrc].iter().map(|b| b.mem.slice(b.off..b.off + b.bytes)).collect();
            let vrefs: Vec<_> = views.iter().collect();
            {
                let (o, b) = (dst.off, dst.bytes);
                let mut dview = dst.mem.slice_mut(o..o + b);
                k.reduce(stream, dtype, op, &mut dview, &vrefs, count).unwrap();
            }
            let got = dst.download(stream);
            let (bad, first) = mismatches(dtype, &got, &want);
            assert!(
                bad == 0,
                "{dtype} {op} count={count} nsrc={nsrc} offsets={offsets:?}: {bad} mismatches, first at element {}: \
                 gpu {:?} cpu {:?}",
                first.unwrap(),
                &got[first.unwrap() * dtype.size()..][..dtype.size()],
                &want[first.unwrap() * dtype.size()..][..dtype.size()],
            );
            cases += 1;
        }
    }
    cases
}

#[test]
#[ignore = "needs a CUDA device: on the GPU machine run with --ignored"]
fn gpu_preloads_every_kernel() {
    let t = Instant::now();
    let Some(k) = gpu("gpu_preloads_every_kernel") else { return };
    let built = t.elapsed();
    let stream = k.context().new_stream().unwrap();
    // 4 floats x {sum, prod, min, max} + 5 ints x 7 ops + bool {or, and, xor}, each as a reduce and a
    // collective kernel, plus the data-movement collective kernel.
    assert_eq!(k.kernel_count(), 54 * 2 + 1);
    assert_eq!(k.preloaded().len(), k.kernel_count(), "every kernel must be preloaded");
    for p in k.preloaded() {
        assert!(p.max_threads_per_block >= 256 && p.num_regs > 0, "{p:?}");
    }
    let lazy = k.module_loading_is_lazy(&stream).unwrap();
    let regs: Vec<i32> = k.preloaded().iter().map(|p| p.num_regs).collect();
    let b = k.module_build();
    println!(
        "gpu_preloads_every_kernel: {} kernels preloaded with cuFuncGetAttribute (regs {}..{}); module loading \
         mode: {}; first for_device took {:.1} ms ({} parts for {}, {} shipped, {} from the kernel cache {:?}; module build \
         {:.1} ms)",
        k.kernel_count(),
        regs.iter().min().unwrap(),
        regs.iter().max().unwrap(),
        if lazy { "LAZY" } else { "EAGER" },
        built.as_secs_f64() * 1e3,
        b.parts,
        k.arch(),
        b.shipped,
        b.cached,
        b.cache_dir,
        b.elapsed.as_secs_f64() * 1e3
    );
    assert!(k.arch().starts_with("sm_"), "machine code, nothing left to the driver's JIT");
    // A second build in the same process takes every part from the same place again: the library
    // (a shipped architecture) or the kernel cache the first build filled (when there is one).
    let again = DeviceKernels::build(0).unwrap();
    let a = again.module_build();
    if b.shipped == b.parts {
        assert_eq!(a.shipped, a.parts, "{a:?}");
    } else if b.cache_dir.as_ref().is_some_and(|d| d.is_dir()) {
        assert_eq!(a.cached, a.parts, "{a:?}");
    }
    println!("gpu_preloads_every_kernel: second build {:.1} ms", again.module_build().elapsed.as_secs_f64() * 1e3);
    // Cached: the same Arc.
    assert!(Arc::ptr_eq(&k, &DeviceKernels::for_device(0).unwrap()));
}

#[test]
#[ignore = "needs a CUDA device: on the GPU machine run with --ignored"]
fn gpu_reduce_matches_cpu_every_dtype_op_size() {
    let Some(k) = gpu("gpu_reduce_matches_cpu_every_dtype_op_size") else { return };
    let stream = k.context().new_stream().unwrap();
    let t = Instant::now();
    let mut cases = 0;
    for (di, &dtype) in DType::reducible().iter().enumerate() {
        for (si, &count) in [0usize, 1, 7, 4097, 1 << 20].iter().enumerate() {
            cases += check_size(&k, &stream, dtype, count, (0, 0), (di * 10 + si) as u64);
        }
        // Same misalignment everywhere (scalar head, vector body) and mixed (scalar only).
        let e = dtype.size();
        cases += check_size(&k, &stream, dtype, 4097, (e, e), 1000 + di as u64);
        cases += check_size(&k, &stream, dtype, 4097, (0, e), 2000 + di as u64);
    }
    println!(
        "gpu_reduce_matches_cpu_every_dtype_op_size: {cases} (dtype, op, size, nsrc, layout) cases identical to \
         the CPU kernels in {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

#[test]
#[ignore = "needs a CUDA device: on the GPU machine run with --ignored"]
fn gpu_rejects_bad_arguments() {
    let Some(k) = gpu("gpu_rejects_bad_arguments") else { return };
    let stream = k.context().new_stream().unwrap();
    let a = stream.alloc_zeros::<u8>(64).unwrap();
    let mut d = stream.alloc_zeros::<u8>(64).unwrap();
    let none: [&CudaSlice<u8>; 0] = [];
    assert!(matches!(k.reduce(&stream, DType::F32, ReduceOp::Sum, &mut d, &none, 16), Err(KernelError::InvalidArgument { .. })));
    let nine = [&a; 9];
    assert!(matches!(k.reduce(&stream, DType::F32, ReduceOp::Sum, &mut d, &nine, 16), Err(KernelError::InvalidArgument { .. })));
    assert!(matches!(k.reduce(&stream, DType::F32, ReduceOp::Sum, &mut d, &[&a], 17), Err(KernelError::LengthMismatch { .. })));
    assert!(matches!(k.reduce(&stream, DType::F32, ReduceOp::BAnd, &mut d, &[&a], 16), Err(KernelError::Unsupported { .. })));
    assert!(matches!(k.reduce(&stream, DType::U32, ReduceOp::Sum, &mut d, &[&a], 16), Err(KernelError::Unsupported { .. })));
    println!("gpu_rejects_bad_arguments: ok");
}

/// docs/design.md invariant 4: a resident kernel is spinning on one stream when the first reduce of freshly
/// built (preloaded) kernels is launched on another stream; the reduce must complete while the spinner
/// still runs.
fn first_reduce_behind_spinner(test: &str) -> Option<(bool, Duration, SpinExit)> {
    let ctx = match open_device(0) {
        Ok(c) => c,
        Err(KernelError::CudaUnavailable(r)) => {
            gpu_test::not_run(test, &r);
            return None;
        }
        Err(e) => panic!("{e}"),
    };
    let fresh = DeviceKernels::build(0).unwrap();
    // Every stream, buffer and module exists before the spinner starts (creating a stream can
    // synchronize the context).
    let spin_stream = ctx.new_stream().unwrap();
    let red_stream = ctx.new_stream().unwrap();
    let rel_stream = ctx.new_stream().unwrap();
    let mut spinner = ResidentSpinner::new(&ctx).unwrap();
    let n = 1 << 20;
    let a: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let b: Vec<f32> = (0..n).map(|i| 0.5 * i as f32).collect();
    let ab: Vec<u8> = a.iter().flat_map(|x| x.to_ne_bytes()).collect();
    let bb: Vec<u8> = b.iter().flat_map(|x| x.to_ne_bytes()).collect();
    let da = red_stream.clone_htod(&ab).unwrap();
    let db = red_stream.clone_htod(&bb).unwrap();
    let mut dd = red_stream.alloc_zeros::<u8>(n * 4).unwrap();
    red_stream.synchronize().unwrap();
    ctx.synchronize().unwrap();

    spinner.start(&spin_stream, Duration::from_secs(4)).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    fresh.reduce(&red_stream, DType::F32, ReduceOp::Sum, &mut dd, &[&da, &db], n).unwrap();
    let ev = red_stream.record_event(None).unwrap();
    let deadline = Duration::from_secs(5);
    while !ev.is_complete() && t.elapsed() < deadline {
        std::thread::sleep(Duration::from_micros(200));
    }
    let done = ev.is_complete();
    let took = t.elapsed();
    // Release the spinner from a third stream, then wait for it.
    spinner.release(&rel_stream).unwrap();
    rel_stream.synchronize().unwrap();
    let exit = spinner.wait_exit().unwrap();
    red_stream.synchronize().unwrap();
    let got = red_stream.clone_dtoh(&dd).unwrap();
    for i in [0usize, 1, 12345, n - 1] {
        let v = f32::from_ne_bytes(got[i * 4..i * 4 + 4].try_into().unwrap());
        assert_eq!(v, a[i] + b[i], "{test}: element {i}");
    }
    Some((done, took, exit))
}

#[test]
#[ignore = "needs a CUDA device: on the GPU machine run with --ignored"]
fn gpu_first_reduce_completes_behind_resident_spinner() {
    let test = "gpu_first_reduce_completes_behind_resident_spinner";
    let Some((done, took, exit)) = first_reduce_behind_spinner(test) else { return };
    println!("{test}: first reduce completed={done} after {:.3} ms; spinner exit: {exit:?}", took.as_secs_f64() * 1e3);
    assert!(done, "the first reduce did not complete within 5 s while a resident kernel was spinning");
    assert_eq!(exit, SpinExit::Released, "the spinner must still have been resident when the reduce completed");
}
