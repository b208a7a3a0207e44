//! GPU tests of VMM allocations (`cuMemCreate` + `cuMemMap`, as PyTorch's expandable segments), their
//! export as POSIX file descriptors / fabric handles and their import in another process
//! (`chorus_kernels::cuda::vmm`, `chorus_kernels::fdpass`).
//!
//! `gpu_vmm_cross_process_posix_fd` allocates, fills and exports a VMM allocation, serves its file
//! descriptor on an abstract Unix socket and re-executes this test binary as a peer process
//! (`gpu_vmm_peer`, selected by `CHORUS_VMM_PEER`) that receives the descriptor both ways (`receive_fd`,
//! i.e. pidfd_getfd with the SCM_RIGHTS fallback, then SCM_RIGHTS explicitly), maps it, checks the
//! bytes and writes a reply the parent reads back.
//!
//! Without a CUDA device every GPU test prints `not run: no CUDA device (<reason>)` and returns
//! (a failure under `CHORUS_REQUIRE_GPU=1`, as scripts/gpu-tests runs them).
#![cfg(all(feature = "cuda", target_os = "linux"))]

mod gpu_test;
use gpu_test::{gpu, run_peer};
use chorus_kernels::cuda::cudarc::driver::result;
use chorus_kernels::cuda::vmm::granularity;
use chorus_kernels::cuda::{allocate_shareable, is_vmm_pointer, open_device, DeviceAllocation, ShareKind, VmmAllocation, VmmImport};
use chorus_kernels::fdpass::{fetch_fd, receive_fd, FdPath, FdServer};
use chorus_kernels::KernelError;
use std::os::fd::AsRawFd;
use std::time::Duration;

const PEER_ENV: &str = "CHORUS_VMM_PEER";
const SIZE: usize = 5 << 20;
const REPLY_OFF: usize = 4 << 20;

fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|j| ((j * 7 + seed * 31 + (j >> 9) * 13) % 251) as u8).collect()
}

#[test]
#[ignore = "needs a CUDA device: on the GPU machine run with --ignored"]
fn gpu_vmm_allocate_export_import_in_process() {
    let test = "gpu_vmm_allocate_export_import_in_process";
    let Some(ctx) = gpu(test) else { return };
    for kind in [ShareKind::PosixFd, ShareKind::Fabric] {
        println!("  {kind}: device supports = {}, granularity = {:?}", kind.device_supports(&ctx), granularity(&ctx, kind).ok());
    }
    let (a, kind) = allocate_shareable(&ctx, SIZE).unwrap();
    println!("  allocate_shareable -> {a:?} ({kind})");
    assert_eq!(a.kind(), kind);
    let g = granularity(&ctx, kind).unwrap();
    assert!(a.size() >= SIZE && a.size() % g == 0, "size {} granularity {g}", a.size());
    let data = pattern(a.size(), 1);
    a.write(0, &data).unwrap();
    let mut back = vec![0u8; a.size()];
    a.read(0, &mut back).unwrap();
    assert!(back == data, "VMM memory reads back what was written");
    assert!(a.read(a.size() - 1, &mut [0u8; 2]).is_err(), "reads are bounds-checked");

    // VMM memory vs cudaMalloc memory.
    assert!(is_vmm_pointer(a.ptr()));
    assert!(is_vmm_pointer(a.ptr() + a.size() as u64 - 1), "an interior pointer is VMM memory too");
    let plain = DeviceAllocation::new(&ctx, 1 << 20).unwrap();
    assert!(!is_vmm_pointer(plain.ptr()), "cuMemAlloc memory is not VMM memory");
    assert!(!is_vmm_pointer(0x10));

    // Export, and import in this same process (a second mapping of the same physical memory).
    let import = match kind {
        ShareKind::PosixFd => {
            assert!(a.export_fabric().is_err(), "a POSIX-fd allocation has no fabric handle");
            VmmImport::from_posix_fd(&ctx, a.export_posix_fd().unwrap(), a.size()).unwrap()
        }
        ShareKind::Fabric => VmmImport::from_fabric(&ctx, &a.export_fabric().unwrap(), a.size()).unwrap(),
    };
    println!("  imported in-process: {import:?}");
    assert_ne!(import.ptr(), a.ptr());
    assert!(is_vmm_pointer(import.ptr()));
    let mut via = vec![0u8; a.size()];
    import.read(0, &mut via).unwrap();
    assert!(via == data, "the second mapping sees the same bytes");
    import.write(7, b"through the import").unwrap();
    let mut b = [0u8; 18];
    a.read(7, &mut b).unwrap();
    assert_eq!(&b, b"through the import");
    // The import keeps the physical memory alive after the allocation is dropped.
    drop(a);
    let mut b = [0u8; 18];
    import.read(7, &mut b).unwrap();
    assert_eq!(&b, b"through the import");
    drop(import);

    // Explicit fabric: works with an IMEX channel, else a clear error.
    match VmmAllocation::new(&ctx, 1, ShareKind::Fabric) {
        Ok(f) => println!("  fabric allocation works here: {f:?}, handle export {}", f.export_fabric().is_ok()),
        Err(e) => println!("  fabric allocation refused here: {e}"),
    }
    assert!(matches!(VmmAllocation::new(&ctx, 0, ShareKind::PosixFd), Err(KernelError::InvalidArgument { .. })));
    println!("{test}: OK ({kind})");
}

#[test]
#[ignore = "needs a CUDA device: on the GPU machine run with --ignored"]
fn gpu_vmm_drop_releases_memory() {
    let test = "gpu_vmm_drop_releases_memory";
    let Some(ctx) = gpu(test) else { return };
    ctx.bind_to_thread().unwrap();
    let (free0, _) = result::mem_get_info().unwrap();
    for _ in 0..40 {
        let a = VmmAllocation::new(&ctx, 256 << 20, ShareKind::PosixFd).unwrap();
        let i = VmmImport::from_posix_fd(&ctx, a.export_posix_fd().unwrap(), a.size()).unwrap();
        drop(a);
        drop(i);
    }
    ctx.bind_to_thread().unwrap();
    let (free1, _) = result::mem_get_info().unwrap();
    println!("  free before {free0}, after 40 x (256 MiB allocate + import + drop) {free1}");
    assert!(free1 + (64 << 20) >= free0, "VMM memory leaked: {} MiB", (free0 - free1) >> 20);
    println!("{test}: OK");
}

#[test]
#[ignore = "needs a CUDA device: on the GPU machine run with --ignored"]
fn gpu_vmm_cross_process_posix_fd() {
    let test = "gpu_vmm_cross_process_posix_fd";
    let Some(ctx) = gpu(test) else { return };
    let a = VmmAllocation::new(&ctx, SIZE, ShareKind::PosixFd).unwrap();
    a.write(0, &pattern(a.size(), 2)).unwrap();
    let fd = a.export_posix_fd().unwrap();
    let name = format!("chorus-vmm-test-{}", std::process::id());
    // Two clients at most: receive_fd (if pidfd_getfd is refused) and the explicit fetch_fd.
    let server = FdServer::start(&name, fd.try_clone().unwrap(), 2, Duration::from_secs(120)).unwrap();

    let (status, out) = run_peer("gpu_vmm_peer", &[(PEER_ENV, format!("{}:{}:{}:{}", std::process::id(), fd.as_raw_fd(), name, a.size()))], Duration::from_secs(120));
    assert!(status.success(), "peer process failed: {status}");
    assert!(out.contains("OK peer: receive_fd"), "peer did not report its receive_fd import");
    assert!(out.contains("OK peer: fetch_fd"), "peer did not report its SCM_RIGHTS import");
    drop(server);
    let mut reply = vec![0u8; 4096];
    a.read(REPLY_OFF, &mut reply).unwrap();
    assert!(reply == pattern(4096, 3), "the peer's write through its mapping is visible here");
    println!("{test}: OK");
}

/// Peer mode of `gpu_vmm_cross_process_posix_fd`; does nothing when run directly.
#[test]
#[ignore = "needs a CUDA device: on the GPU machine run with --ignored"]
fn gpu_vmm_peer() {
    let Ok(spec) = std::env::var(PEER_ENV) else {
        println!("gpu_vmm_peer: helper mode, runs only in the child process of gpu_vmm_cross_process_posix_fd");
        return;
    };
    let f: Vec<&str> = spec.split(':').collect();
    let (pid, remote_fd, name, size): (u32, i32, &str, usize) = (f[0].parse().unwrap(), f[1].parse().unwrap(), f[2], f[3].parse().unwrap());
    let ctx = open_device(0).expect("peer: the parent had a device, the peer must too");
    let want = pattern(size, 2);

    let (fd, path) = receive_fd(pid, remote_fd, name, Duration::from_secs(30)).unwrap();
    let m = VmmImport::from_posix_fd(&ctx, fd, size).unwrap();
    assert!(is_vmm_pointer(m.ptr()));
    let mut got = vec![0u8; size];
    m.read(0, &mut got).unwrap();
    assert!(got == want, "peer: bytes differ through the {path:?} import");
    println!("OK peer: receive_fd via {path:?} ({}), mapped {m:?}, {size} bytes match", if path == FdPath::PidfdGetfd { "pidfd_getfd" } else { "SCM_RIGHTS fallback" });

    let fd = fetch_fd(name, Duration::from_secs(30)).unwrap();
    let m2 = VmmImport::from_posix_fd(&ctx, fd, size).unwrap();
    let mut got = vec![0u8; size];
    m2.read(0, &mut got).unwrap();
    assert!(got == want, "peer: bytes differ through the SCM_RIGHTS import");
    m2.write(REPLY_OFF, &pattern(4096, 3)).unwrap();
    println!("OK peer: fetch_fd (SCM_RIGHTS) mapped {m2:?}, bytes match, reply written");
}
