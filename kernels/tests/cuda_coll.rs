//! GPU collectives (`chorus_kernels::cuda::DeviceComm`) across processes: every rank is a child process
//! of this test binary (re-executed with `CHORUS_COLL_CHILD=scenario,rank,world,dir`), on device
//! `rank % device_count` (several ranks share a GPU when there are fewer GPUs than ranks; CUDA IPC works
//! between processes on one device too). Ranks exchange workspace handles through files in `dir`.
//!
//! What the `matrix` scenario checks, element for element against the CPU kernels:
//! - the first collective completes while a resident spinning kernel occupies another stream;
//! - all_reduce over every (dtype, op) pair at sizes 1, 7 and 65537 elements, plus 0 and a size larger
//!   than a staging chunk (so it is split) for f32/bf16/i64; reduce, reduce_scatter (also with blocks
//!   at given offsets), zero, broadcast,
//!   all_gather, all_to_all (even and uneven), send_recv around a ring and plain send/recv at odd, chunked and zero sizes;
//! - every tensor is carved out of one allocation at a non-zero offset (64 B .. 4 MB, different per rank);
//! - 60 in-place all_reduces issued back to back over three streams;
//! - one-shot and two-shot all_reduce plus all_gather captured in one CUDA graph, replayed with new inputs.
//!
//! The `timeout` scenario: rank 1 skips a collective; rank 0's kernel gives up after its deadline with
//! `CollectiveTimeout` instead of hanging, and the host sees it in the control block before any
//! synchronization.
//!
//! The `abort` scenario: rank 1 skips a collective and rank 0's host aborts the communicator 300 ms
//! later (as the process group does when it finds a peer dead): the waiting kernel gives up at once with
//! `CollectiveAborted`, long before its 60 s deadline, and the communicator refuses further work. The
//! control block is host memory: the device registry refuses it.
//!
//! Without a CUDA device the tests are ignored by default and, when run, print `not run` and return
//! (a failure under `CHORUS_REQUIRE_GPU=1`, as scripts/gpu-tests runs them).
#![cfg(feature = "cuda")]

// Only its not-run report is used here.
#[allow(dead_code)]
mod gpu_test;
use chorus_kernels::cuda::cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use chorus_kernels::cuda::cudarc::driver::{CudaContext, CudaStream};
use chorus_kernels::cuda::{open_device, CommOptions, DeviceAllocation, DeviceComm, DeviceKernels, DeviceRegistry, RawStream, ResidentSpinner, SpinExit};
use chorus_kernels::{finalize_avg, reduce_into, DType, KernelError, ReduceOp};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "CHORUS_COLL_CHILD";

// ------------------------------------------------------------------------------------------------
// parent side

fn device_count() -> Result<usize, String> {
    match open_device(0) {
        Ok(_) => Ok(CudaContext::device_count().map_err(|e| e.to_string())? as usize),
        Err(KernelError::CudaUnavailable(r)) => Err(r),
        Err(e) => panic!("CUDA present but device 0 could not be opened: {e}"),
    }
}

fn run_ranks(test: &str, scenario: &str, world: usize, env: &[(&str, &str)]) {
    let ndev = match device_count() {
        Ok(n) => n,
        Err(reason) => {
            gpu_test::not_run(test, &reason);
            return;
        }
    };
    let dir = std::env::temp_dir().join(format!("chorus-coll-{}-{}-{}", scenario, world, std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut kids = Vec::new();
    for rank in 0..world {
        let mut c = Command::new(&exe);
        c.args(["--exact", "child_process_entry", "--ignored", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, format!("{scenario},{rank},{world},{}", dir.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            c.env(k, v);
        }
        kids.push(c.spawn().unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut failed = Vec::new();
    for (rank, mut k) in kids.into_iter().enumerate() {
        loop {
            if let Some(st) = k.try_wait().unwrap() {
                let out = k.wait_with_output().unwrap();
                let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
                for l in text.lines().filter(|l| l.starts_with("rank")) {
                    println!("{test}: {l}");
                }
                if !st.success() {
                    failed.push(format!("rank {rank} exited {st}:\n{text}"));
                }
                break;
            }
            if Instant::now() > deadline {
                let _ = k.kill();
                failed.push(format!("rank {rank} did not finish within 300 s"));
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failed.is_empty(), "{test} on {world} ranks over {ndev} device(s):\n{}", failed.join("\n"));
    println!("{test}: {world} ranks over {ndev} device(s): passed");
}

/// Small staging so that large cases split into sub-operations and pipeline steps; 2-rank all_reduces
/// from 4 MB run pipelined one-shot (bf16 at 1.5 M elements stays two-shot).
/// Every matrix run checks the workspace memory kind: VMM (fabric or POSIX fd) unless this says otherwise.
const EXPECT_MEM: &str = "CHORUS_TEST_EXPECT_MEM";
const SMALL: &[(&str, &str)] =
    &[("CHORUS_CUDA_STAGING_MB", "8"), ("CHORUS_CUDA_P2P_SLOT_KB", "64"), ("CHORUS_CUDA_PIPELINE_MIN", "4000000")];

#[test]
#[ignore = "needs a CUDA GPU; run with --ignored on the GPU machine"]
fn gpu_collectives_2_ranks() {
    run_ranks("gpu_collectives_2_ranks", "matrix", 2, SMALL);
}

/// The same over plain cuMemAlloc workspaces shared by CUDA IPC handles (the default shares VMM memory).
#[test]
#[ignore = "needs a CUDA GPU; run with --ignored on the GPU machine"]
fn gpu_collectives_2_ranks_ipc_workspace() {
    let env: Vec<(&str, &str)> = SMALL.iter().copied().chain([("CHORUS_CUDA_MEM", "legacy"), (EXPECT_MEM, "ipc")]).collect();
    run_ranks("gpu_collectives_2_ranks_ipc_workspace", "matrix", 2, &env);
}

#[test]
#[ignore = "needs a CUDA GPU; run with --ignored on the GPU machine"]
fn gpu_collectives_3_ranks() {
    run_ranks("gpu_collectives_3_ranks", "matrix", 3, SMALL);
}

#[test]
#[ignore = "needs a CUDA GPU; run with --ignored on the GPU machine"]
fn gpu_collectives_4_ranks() {
    run_ranks("gpu_collectives_4_ranks", "matrix", 4, SMALL);
}

#[test]
#[ignore = "needs a CUDA GPU; run with --ignored on the GPU machine"]
fn gpu_collectives_8_ranks() {
    run_ranks("gpu_collectives_8_ranks", "matrix", 8, SMALL);
}

#[test]
#[ignore = "needs a CUDA GPU; run with --ignored on the GPU machine"]
fn gpu_collective_aborted_by_the_host_stops_waiting() {
    run_ranks("gpu_collective_aborted_by_the_host_stops_waiting", "abort", 2, &[("CHORUS_CUDA_TIMEOUT_MS", "60000")]);
}

#[test]
#[ignore = "needs a CUDA GPU; run with --ignored on the GPU machine"]
fn gpu_collective_times_out_instead_of_hanging() {
    run_ranks("gpu_collective_times_out_instead_of_hanging", "timeout", 2, &[("CHORUS_CUDA_TIMEOUT_MS", "1500")]);
}

/// Not a test of its own: the body of a rank process, selected by `CHORUS_COLL_CHILD`. Without that
/// variable (a plain `--ignored` run) it has nothing to do.
#[test]
#[ignore = "child process entry of the GPU collective tests"]
fn child_process_entry() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let parts: Vec<&str> = spec.splitn(4, ',').collect();
    let (scenario, rank, world, dir) = (parts[0], parts[1].parse().unwrap(), parts[2].parse().unwrap(), PathBuf::from(parts[3]));
    let r = match scenario {
        "matrix" => matrix(rank, world, &dir),
        "timeout" => abandoned(rank, world, &dir, false),
        "abort" => abandoned(rank, world, &dir, true),
        other => Err(format!("unknown scenario {other}")),
    };
    if let Err(e) = r {
        eprintln!("rank {rank}: FAILED: {e}");
        std::process::exit(1);
    }
}

// ------------------------------------------------------------------------------------------------
// child side

/// File all-gather: writes `dir/tag.rank`, waits for every rank's file.
fn exchange(dir: &Path, tag: &str, rank: usize, world: usize, mine: String) -> chorus_kernels::Result<Vec<String>> {
    let tmp = dir.join(format!("{tag}.{rank}.tmp"));
    std::fs::write(&tmp, &mine).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{tag}.{rank}"))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut out = Vec::new();
    for q in 0..world {
        let p = dir.join(format!("{tag}.{q}"));
        loop {
            if let Ok(s) = std::fs::read_to_string(&p) {
                out.push(s);
                break;
            }
            if Instant::now() > deadline {
                return Err(KernelError::CommSetup(format!("rank {q} never published {tag}")));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    Ok(out)
}

struct Rank {
    rank: usize,
    world: usize,
    comm: DeviceComm,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    arena: DeviceAllocation,
    case: usize,
}

const ARENA: usize = 64 << 20;
const FILL: u8 = 0xEE;

/// Deterministic contents of rank `q`'s buffer for case `case`: values whose sums stay well inside every
/// type (floats: multiples of 1/8 in [-8, 8), so f32/f64 sums are exact; ints wrap the same everywhere).
fn gen(dtype: DType, n: usize, q: usize, case: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * dtype.size());
    for i in 0..n {
        let h = (i as u64).wrapping_mul(2654435761).wrapping_add((q as u64 + 1) * 40503 + case as u64 * 97) % 128;
        let v = h as f64 / 8.0 - 8.0;
        match dtype {
            DType::F32 => out.extend_from_slice(&(v as f32).to_le_bytes()),
            DType::F64 => out.extend_from_slice(&v.to_le_bytes()),
            DType::F16 => out.extend_from_slice(&half::f16::from_f64(v).to_le_bytes()),
            DType::BF16 => out.extend_from_slice(&half::bf16::from_f64(v).to_le_bytes()),
            DType::Bool => out.push((h & 1) as u8),
            _ => {
                let bytes = (h as i64 - 40).to_le_bytes();
                out.extend_from_slice(&bytes[..dtype.size()]);
            }
        }
    }
    out
}

fn expect_reduce(dtype: DType, op: ReduceOp, inputs: &[Vec<u8>], world: usize) -> Vec<u8> {
    let mut out = vec![0u8; inputs[0].len()];
    let refs: Vec<&[u8]> = inputs.iter().map(|v| v.as_slice()).collect();
    reduce_into(dtype, op, &mut out, &refs).unwrap();
    if op == ReduceOp::Avg {
        finalize_avg(dtype, &mut out, world).unwrap();
    }
    out
}

impl Rank {
    fn raw(&self) -> RawStream {
        RawStream(self.stream.cu_stream() as usize)
    }

    /// Two non-overlapping places in the arena at non-zero offsets that differ by case and rank.
    fn places(&mut self, src_len: usize, dst_len: usize) -> (usize, usize) {
        const OFFS: [usize; 5] = [64, 4096 + 192, 1 << 20, (4 << 20) + 64, 320];
        self.case += 1;
        let a = OFFS[self.case % OFFS.len()] + 64 * self.rank;
        let b = (a + src_len + 4096 + 64 * ((self.case + self.rank) % 7) + 63) & !63;
        assert!(b + dst_len <= ARENA, "case too large for the arena");
        (a, b)
    }

    fn prepare(&mut self, src: &[u8], dst_len: usize) -> (usize, usize) {
        let (a, b) = self.places(src.len(), dst_len);
        self.arena.write(a, src).unwrap();
        self.arena.write(b, &vec![FILL; dst_len]).unwrap();
        (a, b)
    }

    fn finish(&self, b: usize, len: usize) -> Result<Vec<u8>, String> {
        // SAFETY: the stream is ours and alive.
        unsafe { self.comm.synchronize(self.raw()) }.map_err(|e| e.to_string())?;
        let mut out = vec![0u8; len];
        self.arena.read(b, &mut out).unwrap();
        Ok(out)
    }

    fn ptr(&self, off: usize) -> u64 {
        self.arena.ptr() + off as u64
    }
}

fn check(what: &str, got: &[u8], want: &[u8]) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{what}: length {} vs {}", got.len(), want.len()));
    }
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        return Err(format!("{what}: first difference at byte {i} of {} (got {:#x}, want {:#x})", got.len(), got[i], want[i]));
    }
    Ok(())
}

/// broadcast of `bytes`, out of place and in place, from a root that varies with the case.
fn broadcast_cases(r: &mut Rank, inputs: &[Vec<u8>], bytes: usize) -> Result<(), String> {
    let case = r.case;
    for in_place in [false, true] {
        let root = (bytes + case + in_place as usize) % r.world;
        let (a, b) = r.prepare(&inputs[r.rank], bytes);
        let dst = if in_place { a } else { b };
        // SAFETY: ranges inside the arena.
        unsafe { r.comm.broadcast(r.raw(), r.ptr(a), r.ptr(dst), bytes, root) }.map_err(|e| e.to_string())?;
        let got = r.finish(dst, bytes)?;
        check(&format!("broadcast bytes={bytes} root={root} in_place={in_place}"), &got, &inputs[root])?;
    }
    Ok(())
}

fn all_reduce_case(r: &mut Rank, dtype: DType, op: ReduceOp, n: usize, in_place: bool) -> Result<(), String> {
    let case = r.case;
    let inputs: Vec<Vec<u8>> = (0..r.world).map(|q| gen(dtype, n, q, case)).collect();
    let want = expect_reduce(dtype, op, &inputs, r.world);
    let bytes = n * dtype.size();
    let (a, b) = r.prepare(&inputs[r.rank], bytes);
    let dst = if in_place { a } else { b };
    // SAFETY: both ranges lie inside the arena (checked by `places`).
    unsafe { r.comm.all_reduce(r.raw(), dtype, op, r.ptr(a), r.ptr(dst), n) }.map_err(|e| e.to_string())?;
    let got = r.finish(dst, bytes)?;
    check(&format!("all_reduce {dtype} {op:?} n={n} in_place={in_place}"), &got, &want)
}

fn matrix(rank: usize, world: usize, dir: &Path) -> Result<(), String> {
    let ndev = CudaContext::device_count().map_err(|e| e.to_string())? as usize;
    let dev = rank % ndev;
    let t0 = Instant::now();
    let kernels = DeviceKernels::for_device(dev).map_err(|e| e.to_string())?;
    let ctx = kernels.context().clone();
    // docs/design.md invariant 4: a resident kernel occupies another stream before the first collective.
    let mut spinner = ResidentSpinner::new(&ctx).map_err(|e| e.to_string())?;
    let spin_stream = ctx.new_stream().map_err(|e| e.to_string())?;
    spinner.start(&spin_stream, Duration::from_secs(60)).map_err(|e| e.to_string())?;
    let comm = DeviceComm::new(dev, rank, world, CommOptions::from_env(world), &mut |s| exchange(dir, "setup", rank, world, s))
        .map_err(|e| e.to_string())?;
    println!(
        "rank {rank}: device {dev} ({}), setup {:.0} ms, workspace {}, {:?}",
        kernels.device_name(),
        t0.elapsed().as_secs_f64() * 1e3,
        comm.memory_kind(),
        comm.options()
    );
    let expect = std::env::var(EXPECT_MEM).unwrap_or_else(|_| "vmm".into());
    let kind = comm.memory_kind();
    if !(kind == expect || expect == "vmm" && matches!(kind, "fabric" | "posix-fd")) {
        return Err(format!("the workspace is {kind} memory, expected {expect}"));
    }
    let stream = ctx.new_stream().map_err(|e| e.to_string())?;
    let arena = DeviceAllocation::new(&ctx, ARENA).map_err(|e| e.to_string())?;
    let mut r = Rank { rank, world, comm, ctx: ctx.clone(), stream, arena, case: 0 };

    all_reduce_case(&mut r, DType::F32, ReduceOp::Sum, 1000, false).map_err(|e| format!("first collective: {e}"))?;
    let release = ctx.new_stream().map_err(|e| e.to_string())?;
    spinner.release(&release).map_err(|e| e.to_string())?;
    let exit = spinner.wait_exit().map_err(|e| e.to_string())?;
    if exit != SpinExit::Released {
        return Err(format!("the spinner should still have been resident when the first collective finished: {exit:?}"));
    }
    println!("rank {rank}: first collective completed beside a resident spinning kernel");

    // all_reduce: every (dtype, op) pair.
    let mut cases = 0;
    for &dtype in DType::reducible() {
        for &op in ReduceOp::all() {
            if chorus_kernels::check_supported(dtype, op).is_err() {
                continue;
            }
            // 1, 7, 1023 and 16383 elements take the LL path (up to 64 KiB) for every dtype, 65537 not for u8.
            let mut sizes = vec![1usize, 7, 1023, 16383, 65537];
            if matches!(dtype, DType::F32 | DType::BF16 | DType::I64) {
                sizes.extend([0, 1_500_001]);
            }
            for n in sizes {
                all_reduce_case(&mut r, dtype, op, n, n % 2 == 0)?;
                cases += 1;
            }
        }
    }
    println!("rank {rank}: all_reduce {cases} cases ok (launches so far {})", r.comm.launches());

    // reduce, reduce_scatter.
    for (dtype, op) in [(DType::F32, ReduceOp::Sum), (DType::BF16, ReduceOp::Avg), (DType::I32, ReduceOp::Max), (DType::U8, ReduceOp::BXor)] {
        for n in [0usize, 1, 7, 65537, 700_001] {
            let root = (n + r.case) % world;
            let case = r.case;
            let inputs: Vec<Vec<u8>> = (0..world).map(|q| gen(dtype, n, q, case)).collect();
            let want = expect_reduce(dtype, op, &inputs, world);
            let bytes = n * dtype.size();
            let (a, b) = r.prepare(&inputs[rank], bytes);
            // SAFETY: ranges inside the arena.
            unsafe { r.comm.reduce(r.raw(), dtype, op, r.ptr(a), r.ptr(b), n, root) }.map_err(|e| e.to_string())?;
            let got = r.finish(b, bytes)?;
            let want = if rank == root { want } else { vec![FILL; bytes] };
            check(&format!("reduce {dtype} {op:?} n={n} root={root}"), &got, &want)?;

            let case = r.case;
            let inputs: Vec<Vec<u8>> = (0..world).map(|q| gen(dtype, n * world, q, case)).collect();
            let mine: Vec<Vec<u8>> = inputs.iter().map(|v| v[rank * bytes..(rank + 1) * bytes].to_vec()).collect();
            let want = expect_reduce(dtype, op, &mine, world);
            let (a, b) = r.prepare(&inputs[rank], bytes);
            // SAFETY: ranges inside the arena.
            unsafe { r.comm.reduce_scatter(r.raw(), dtype, op, r.ptr(a), r.ptr(b), n) }.map_err(|e| e.to_string())?;
            let got = r.finish(b, bytes)?;
            check(&format!("reduce_scatter {dtype} {op:?} n={n}"), &got, &want)?;

            // Blocks anywhere in the input (reversed, with gaps: a group whose view lost ranks).
            let esz = dtype.size();
            let stride = bytes + 3 * esz;
            let blocks: Vec<usize> = (0..world).map(|p| (world - 1 - p) * stride + esz).collect();
            let case = r.case;
            let inputs: Vec<Vec<u8>> = (0..world).map(|q| gen(dtype, (world * stride + esz) / esz, q, case)).collect();
            let mine: Vec<Vec<u8>> = inputs.iter().map(|v| v[blocks[rank]..blocks[rank] + bytes].to_vec()).collect();
            let want = expect_reduce(dtype, op, &mine, world);
            let (a, b) = r.prepare(&inputs[rank], bytes);
            // SAFETY: ranges inside the arena.
            unsafe { r.comm.reduce_scatter_blocks(r.raw(), dtype, op, r.ptr(a), &blocks, r.ptr(b), n) }.map_err(|e| e.to_string())?;
            let got = r.finish(b, bytes)?;
            check(&format!("reduce_scatter_blocks {dtype} {op:?} n={n}"), &got, &want)?;
        }
    }
    // zero: only the given range changes.
    for (len, from, to) in [(1usize, 0usize, 1usize), (4099, 3, 4094), (1 << 20, 0, 1 << 20)] {
        let (_, b) = r.prepare(&[], len);
        // SAFETY: inside the arena.
        unsafe { r.comm.zero(r.raw(), r.ptr(b + from), to - from) }.map_err(|e| e.to_string())?;
        let got = r.finish(b, len)?;
        let want: Vec<u8> = (0..len).map(|i| if (from..to).contains(&i) { 0 } else { FILL }).collect();
        check(&format!("zero {from}..{to} of {len}"), &got, &want)?;
    }
    println!("rank {rank}: reduce, reduce_scatter (also at given block offsets) and zero ok");

    // Data movement, byte sizes.
    for bytes in [0usize, 1, 13, 4096, 65539, 600_007, 3_000_001] {
        let case = r.case;
        let inputs: Vec<Vec<u8>> = (0..world).map(|q| gen(DType::U8, bytes, q, case)).collect();
        broadcast_cases(&mut r, &inputs, bytes)?;
        // all_gather.
        let (a, b) = r.prepare(&inputs[rank], bytes * world);
        // SAFETY: ranges inside the arena.
        unsafe { r.comm.all_gather(r.raw(), r.ptr(a), r.ptr(b), bytes) }.map_err(|e| e.to_string())?;
        let got = r.finish(b, bytes * world)?;
        check(&format!("all_gather bytes={bytes}"), &got, &inputs.concat())?;
        // all_to_all (even): block p of rank q's input goes to rank p as block q.
        let case = r.case;
        let full: Vec<Vec<u8>> = (0..world).map(|q| gen(DType::U8, bytes * world, q, case)).collect();
        let want: Vec<u8> = (0..world).flat_map(|q| full[q][rank * bytes..(rank + 1) * bytes].to_vec()).collect();
        let (a, b) = r.prepare(&full[rank], bytes * world);
        // SAFETY: ranges inside the arena.
        unsafe { r.comm.all_to_all(r.raw(), r.ptr(a), r.ptr(b), bytes) }.map_err(|e| e.to_string())?;
        let got = r.finish(b, bytes * world)?;
        check(&format!("all_to_all bytes={bytes}"), &got, &want)?;
        // all_to_allv: rank p sends len(p, q) bytes to q.
        let len = |p: usize, q: usize| if bytes == 0 { 0 } else { (bytes / (1 + (p * 3 + q) % 4)) + p * 5 + q };
        let max_pair = (0..world).flat_map(|p| (0..world).map(move |q| (p, q))).map(|(p, q)| len(p, q)).max().unwrap_or(0);
        let send_len: Vec<usize> = (0..world).map(|q| len(rank, q)).collect();
        let recv_len: Vec<usize> = (0..world).map(|p| len(p, rank)).collect();
        let offs = |l: &[usize]| l.iter().scan(0, |s, &x| { let o = *s; *s += x + 3; Some(o) }).collect::<Vec<_>>();
        let (send_off, recv_off) = (offs(&send_len), offs(&recv_len));
        let case = r.case;
        let src_total = send_off[world - 1] + send_len[world - 1];
        let dst_total = recv_off[world - 1] + recv_len[world - 1];
        let srcs: Vec<Vec<u8>> = (0..world)
            .map(|p| {
                let l: Vec<usize> = (0..world).map(|q| len(p, q)).collect();
                let o = offs(&l);
                gen(DType::U8, o[world - 1] + l[world - 1], p, case)
            })
            .collect();
        let mut want = vec![FILL; dst_total];
        for p in 0..world {
            let l: Vec<usize> = (0..world).map(|q| len(p, q)).collect();
            let o = offs(&l);
            want[recv_off[p]..recv_off[p] + recv_len[p]].copy_from_slice(&srcs[p][o[rank]..o[rank] + l[rank]]);
        }
        let (a, b) = r.prepare(&srcs[rank][..src_total], dst_total);
        // SAFETY: every range lies inside the arena; receive ranges are disjoint (3-byte gaps).
        unsafe { r.comm.all_to_allv(r.raw(), r.ptr(a), r.ptr(b), &send_off, &send_len, &recv_off, &recv_len, max_pair) }
            .map_err(|e| e.to_string())?;
        let got = r.finish(b, dst_total)?;
        check(&format!("all_to_allv bytes={bytes}"), &got, &want)?;
        // send/recv around the ring (both directions at once for 2 ranks).
        if world > 1 {
            let (to, from) = ((rank + 1) % world, (rank + world - 1) % world);
            let (a, b) = r.prepare(&inputs[rank], bytes);
            // SAFETY: ranges inside the arena.
            unsafe { r.comm.send_recv(r.raw(), r.ptr(a), bytes, to, r.ptr(b), bytes, from) }.map_err(|e| e.to_string())?;
            let got = r.finish(b, bytes)?;
            check(&format!("send_recv bytes={bytes}"), &got, &inputs[from])?;
            // Plain send / recv, one direction at a time (rank 0 sends to 1 first).
            if rank < 2 {
                let (a, b) = r.prepare(&inputs[rank], bytes);
                let peer = 1 - rank;
                for turn in 0..2 {
                    // SAFETY: ranges inside the arena.
                    let res = unsafe {
                        if turn == rank { r.comm.send(r.raw(), r.ptr(a), bytes, peer) } else { r.comm.recv(r.raw(), r.ptr(b), bytes, peer) }
                    };
                    res.map_err(|e| e.to_string())?;
                }
                let got = r.finish(b, bytes)?;
                check(&format!("send then recv bytes={bytes}"), &got, &inputs[peer])?;
            } else {
                r.case += 1;
            }
        }
    }
    // Above 8 MiB, more than 2 ranks broadcast by scatter + all-gather.
    for bytes in [(8 << 20) + 13, 9_000_016] {
        let case = r.case;
        let inputs: Vec<Vec<u8>> = (0..world).map(|q| gen(DType::U8, bytes, q, case)).collect();
        broadcast_cases(&mut r, &inputs, bytes)?;
    }
    println!("rank {rank}: broadcast, all_gather, all_to_all(v), send/recv ok");

    multi_stream(&mut r)?;
    graph(&mut r)?;
    Ok(())
}

/// 60 in-place all_reduces, round robin over three streams, no host synchronization in between.
fn multi_stream(r: &mut Rank) -> Result<(), String> {
    let streams: Vec<Arc<CudaStream>> = (0..3).map(|_| r.ctx.new_stream().unwrap()).collect();
    let n = 20_000usize;
    let bytes = n * 4;
    let mut placed = Vec::new();
    for i in 0..60 {
        let inputs: Vec<Vec<u8>> = (0..r.world).map(|q| gen(DType::F32, n, q, 1000 + i)).collect();
        let off = (1 << 20) + i * (bytes + 256) + 64 * r.rank;
        r.arena.write(off, &inputs[r.rank]).unwrap();
        placed.push((off, expect_reduce(DType::F32, ReduceOp::Sum, &inputs, r.world)));
    }
    for (i, (off, _)) in placed.iter().enumerate() {
        let s = RawStream(streams[i % 3].cu_stream() as usize);
        // SAFETY: inside the arena; the stream is alive.
        unsafe { r.comm.all_reduce(s, DType::F32, ReduceOp::Sum, r.ptr(*off), r.ptr(*off), n) }.map_err(|e| e.to_string())?;
    }
    for s in &streams {
        // SAFETY: live stream.
        unsafe { r.comm.synchronize(RawStream(s.cu_stream() as usize)) }.map_err(|e| e.to_string())?;
    }
    for (i, (off, want)) in placed.iter().enumerate() {
        let mut got = vec![0u8; bytes];
        r.arena.read(*off, &mut got).unwrap();
        check(&format!("multi-stream all_reduce #{i}"), &got, want)?;
    }
    println!("rank {}: 60 back-to-back all_reduces over 3 streams ok", r.rank);
    Ok(())
}

/// One-shot and two-shot all_reduce and an all_gather captured in one graph, replayed with new inputs.
fn graph(r: &mut Rank) -> Result<(), String> {
    let s = r.ctx.new_stream().map_err(|e| e.to_string())?;
    let raw = RawStream(s.cu_stream() as usize);
    let (small, large, ag) = (1024usize, 300_000usize, 5000usize);
    let base = 16 << 20;
    let at = |i: usize| base + i * (2 << 20) + 64 * r.rank;
    s.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).map_err(|e| e.to_string())?;
    // SAFETY: every range lies inside the arena, which outlives the graph.
    unsafe {
        r.comm.all_reduce(raw, DType::F32, ReduceOp::Sum, r.ptr(at(0)), r.ptr(at(1)), small).map_err(|e| e.to_string())?;
        r.comm.all_reduce(raw, DType::BF16, ReduceOp::Sum, r.ptr(at(2)), r.ptr(at(3)), large).map_err(|e| e.to_string())?;
        r.comm.all_gather(raw, r.ptr(at(4)), r.ptr(at(5)), ag).map_err(|e| e.to_string())?;
    }
    let g = s.end_capture(CUgraphInstantiate_flags(0)).map_err(|e| e.to_string())?.ok_or("empty graph")?;
    for replay in 0..4 {
        let case = 5000 + replay;
        let a: Vec<Vec<u8>> = (0..r.world).map(|q| gen(DType::F32, small, q, case)).collect();
        let b: Vec<Vec<u8>> = (0..r.world).map(|q| gen(DType::BF16, large, q, case)).collect();
        let c: Vec<Vec<u8>> = (0..r.world).map(|q| gen(DType::U8, ag, q, case)).collect();
        r.arena.write(at(0), &a[r.rank]).unwrap();
        r.arena.write(at(2), &b[r.rank]).unwrap();
        r.arena.write(at(4), &c[r.rank]).unwrap();
        g.launch().map_err(|e| e.to_string())?;
        // SAFETY: live stream.
        unsafe { r.comm.synchronize(raw) }.map_err(|e| e.to_string())?;
        let mut got = vec![0u8; small * 4];
        r.arena.read(at(1), &mut got).unwrap();
        check(&format!("graph replay {replay}: one-shot all_reduce"), &got, &expect_reduce(DType::F32, ReduceOp::Sum, &a, r.world))?;
        let mut got = vec![0u8; large * 2];
        r.arena.read(at(3), &mut got).unwrap();
        check(&format!("graph replay {replay}: two-shot all_reduce"), &got, &expect_reduce(DType::BF16, ReduceOp::Sum, &b, r.world))?;
        let mut got = vec![0u8; ag * r.world];
        r.arena.read(at(5), &mut got).unwrap();
        check(&format!("graph replay {replay}: all_gather"), &got, &c.concat())?;
    }
    println!("rank {}: CUDA graph (one-shot + two-shot all_reduce + all_gather) replayed 4 times ok", r.rank);
    Ok(())
}

/// Rank 1 skips a collective that rank 0 issues. With `abort`, rank 0's host aborts the communicator
/// after 300 ms; without, the kernel runs into its deadline. Either way the host sees the failure in the
/// control block without synchronizing, the synchronization reports it, and the next op is refused.
fn abandoned(rank: usize, world: usize, dir: &Path, abort: bool) -> Result<(), String> {
    let ndev = CudaContext::device_count().map_err(|e| e.to_string())? as usize;
    let dev = rank % ndev;
    let comm = DeviceComm::new(dev, rank, world, CommOptions::from_env(world), &mut |s| exchange(dir, "setup", rank, world, s))
        .map_err(|e| e.to_string())?;
    let ctx = comm.kernels().context().clone();
    if rank != 0 {
        // Skips the collective; waits until rank 0 has seen the failure.
        let deadline = Instant::now() + Duration::from_secs(90);
        while !dir.join("done.0").exists() {
            if Instant::now() > deadline {
                return Err("rank 0 never finished".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        return Ok(());
    }
    comm.check().map_err(|e| format!("a fresh communicator reports {e}"))?;
    let (ctl, ctl_len) = comm.control_region();
    match DeviceRegistry::new(ctx.clone()).register(ctl as u64, ctl_len) {
        Err(KernelError::InvalidArgument { reason }) if reason.contains("host memory") => {}
        other => return Err(format!("the device registry took the host control block: {other:?}")),
    }
    let buf = DeviceAllocation::new(&ctx, 4096).map_err(|e| e.to_string())?;
    let stream = ctx.new_stream().map_err(|e| e.to_string())?;
    let raw = RawStream(stream.cu_stream() as usize);
    let t = Instant::now();
    // SAFETY: inside `buf`, which outlives the synchronize below.
    unsafe { comm.all_reduce(raw, DType::F32, ReduceOp::Sum, buf.ptr(), buf.ptr(), 1024) }.map_err(|e| e.to_string())?;
    let seen = std::thread::scope(|s| {
        if abort {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(300));
                comm.abort(2);
            });
        }
        // The failure shows in the control block while the stream is still unsynchronized.
        let deadline = Instant::now() + Duration::from_secs(75);
        loop {
            if let Err(e) = comm.check() {
                return Ok(e);
            }
            if Instant::now() > deadline {
                return Err("the control block never reported the failure".to_string());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    })?;
    // SAFETY: live stream.
    let r = unsafe { comm.synchronize(raw) };
    let waited = t.elapsed();
    // SAFETY: as above; refused before anything is enqueued.
    let after = unsafe { comm.all_reduce(raw, DType::F32, ReduceOp::Sum, buf.ptr(), buf.ptr(), 1024) };
    exchange(dir, "done", rank, 1, String::new()).map_err(|e| e.to_string())?;
    let ok = |e: &KernelError| match e {
        KernelError::CollectiveAborted { reason: 2, block: Some(_) } => abort,
        KernelError::CollectiveTimeout { .. } => !abort,
        _ => false,
    };
    if !ok(&seen) {
        return Err(format!("the control block reported {seen:?}"));
    }
    match (&r, &after) {
        (Err(e), Err(a)) if ok(e) && ok(a) => {}
        _ => return Err(format!("synchronize gave {r:?}, the next op {after:?}")),
    }
    // The abort must beat the 60 s deadline by far (a loose bound: this checks that the abort word is
    // read, not how fast).
    if abort && waited > Duration::from_secs(20) {
        return Err(format!("the aborted kernel kept waiting for {waited:?}"));
    }
    println!("rank 0: the collective gave up after {:.2} s as expected: {}", waited.as_secs_f64(), r.unwrap_err());
    Ok(())
}
