//! GPU tests of device-memory registration at the allocation base and CUDA IPC export/import
//! (`chorus_kernels::cuda::ipc`; docs/design.md invariant 2, `shared/seeds/004_*`).
//!
//! `gpu_ipc_sub_allocations_cross_process` carves six tensors (64 B .. 4 MiB) out of ONE 8 MiB
//! `cuMemAlloc` at non-zero offsets, registers and exports them, and re-executes this test binary as a
//! peer process (`gpu_ipc_peer`, selected by the `CHORUS_IPC_PEER_HANDLE` environment variable) that opens
//! the handle once and checks every tensor byte for byte at `mapped_base + offset`. The peer also shows
//! that reading at the mapped base without the offset (what registering the interior pointer as if it
//! were the base did in the seed bug) returns other bytes.
//!
//! Without a CUDA device every GPU test prints `not run: no CUDA device (<reason>)` and returns
//! (a failure under `CHORUS_REQUIRE_GPU=1`, as scripts/gpu-tests runs them). Run with
//! `--nocapture` to see it.
#![cfg(feature = "cuda")]

mod gpu_test;
use gpu_test::{gpu, run_peer};
use chorus_kernels::cuda::ipc::{handle_from_hex, to_hex};
use chorus_kernels::cuda::{open_device, DeviceAllocation, DeviceRegistry, IpcExport, IpcImporter};
use std::time::Duration;

const PEER_HANDLE_ENV: &str = "CHORUS_IPC_PEER_HANDLE";
const PEER_BASE_SIZE_ENV: &str = "CHORUS_IPC_PEER_BASE_SIZE";
const PEER_TENSORS_ENV: &str = "CHORUS_IPC_PEER_TENSORS";

const ALLOC: usize = 8 << 20;
/// (offset from the allocation base, length): distinct, non-zero, non-overlapping.
const TENSORS: [(usize, usize); 6] = [
    (0x1040, 64),
    (0x2040, 1 << 10),
    (0x1_0200, 16 << 10),
    (0x4_1000, 128 << 10),
    (0x10_0080, 512 << 10),
    (0x20_1000, 4 << 20),
];
/// Every byte outside the tensors.
const BACKGROUND: u8 = 0xEE;

/// The distinct byte pattern of tensor `i`.
fn pattern(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| ((i * 37 + 11 + j * 7 + (j >> 8) * 13) % 251) as u8).collect()
}

fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// Runs everywhere: the export's wire form round-trips.
#[test]
fn ipc_export_wire_round_trip() {
    let mut handle = [0u8; 64];
    for (i, b) in handle.iter_mut().enumerate() {
        *b = (i * 5 + 3) as u8;
    }
    let e = IpcExport { handle, base_size: ALLOC, offset: 0x1040 };
    assert_eq!(IpcExport::from_wire(&e.to_wire()).unwrap(), e);
    assert_eq!(handle_from_hex(&to_hex(&handle)).unwrap(), handle);
    assert!(handle_from_hex("abc").is_err());
    assert!(IpcExport::from_wire("zz:1:2").is_err());
}

#[test]
#[ignore = "needs a CUDA device: on the GPU machine run with --ignored"]
fn gpu_registry_rejects_bad_pointers() {
    let Some(ctx) = gpu("gpu_registry_rejects_bad_pointers") else { return };
    let reg = DeviceRegistry::new(ctx.clone());
    let alloc = DeviceAllocation::new(&ctx, 1 << 20).unwrap();
    // Not device memory.
    let e = reg.register(0x10, 16).unwrap_err();
    println!("  host-ish pointer: {e}");
    // Runs past the allocation.
    assert!(reg.register(alloc.ptr() + 1000, 1 << 20).is_err());
    assert_eq!(reg.allocations(), 0);
    // Unregistering something never registered.
    assert!(reg.unregister(alloc.ptr()).is_err());
    let r = reg.register(alloc.ptr() + 4096, 4096).unwrap();
    assert_eq!((r.base, r.offset), (alloc.ptr(), 4096));
    assert!(reg.unregister(alloc.ptr() + 8000).unwrap(), "unregister by an interior pointer resolves the base");
    assert_eq!(reg.allocations(), 0);
    println!("gpu_registry_rejects_bad_pointers: OK");
}

#[test]
#[ignore = "needs a CUDA device: on the GPU machine run with --ignored"]
fn gpu_ipc_sub_allocations_cross_process() {
    let test = "gpu_ipc_sub_allocations_cross_process";
    let Some(ctx) = gpu(test) else { return };
    let alloc = DeviceAllocation::new(&ctx, ALLOC).unwrap();
    alloc.fill(BACKGROUND).unwrap();
    for (i, &(off, len)) in TENSORS.iter().enumerate() {
        alloc.write(off, &pattern(i, len)).unwrap();
    }

    let registry = DeviceRegistry::new(ctx.clone());
    let mut regs = Vec::new();
    for &(off, len) in &TENSORS {
        let r = registry.register(alloc.ptr() + off as u64, len).unwrap();
        assert_eq!(r.base, alloc.ptr(), "registered at the allocation base");
        assert_eq!(r.offset, off);
        assert_eq!(r.len, len);
        assert!(r.size >= ALLOC, "allocation size {} < {ALLOC}", r.size);
        assert_eq!(r.device, 0);
        regs.push(r);
    }
    assert_eq!(registry.allocations(), 1, "six tensors of one allocation share one registration");
    let (size, refs) = registry.refcount(alloc.ptr()).unwrap();
    assert_eq!(refs, 6);
    println!("  one registration: base {:#x}, size {size}, refcount {refs}", alloc.ptr());

    let exports: Vec<IpcExport> = regs.iter().map(|r| registry.export(r).unwrap()).collect();
    for (e, &(off, _)) in exports.iter().zip(&TENSORS) {
        assert_eq!(e.handle, exports[0].handle, "every tensor exports the handle of the same base");
        assert_eq!((e.base_size, e.offset), (size, off));
    }
    // Informational: what the driver gives for the interior pointer (the handle names the allocation).
    match registry.raw_handle_of_pointer_for_test(regs[0].ptr()) {
        Ok(h) => println!("  cuIpcGetMemHandle(interior pointer) {} the base's handle", if h == exports[0].handle { "equals" } else { "differs from" }),
        Err(e) => println!("  cuIpcGetMemHandle(interior pointer) failed: {e}"),
    }

    // Process B: this binary again, in peer mode.
    let tensors: Vec<String> = TENSORS.iter().enumerate().map(|(i, &(o, l))| format!("{i}:{o:x}:{l:x}")).collect();
    let env = [
        (PEER_HANDLE_ENV, exports[0].handle_hex()),
        (PEER_BASE_SIZE_ENV, format!("{:x}", exports[0].base_size)),
        (PEER_TENSORS_ENV, tensors.join(",")),
    ];
    let (status, out) = run_peer("gpu_ipc_peer", &env, Duration::from_secs(120));
    assert!(status.success(), "peer process failed: {status}");
    for (i, &(off, len)) in TENSORS.iter().enumerate() {
        let ok = format!("OK tensor {i}: {len} B at offset {off:#x}");
        assert!(out.contains(&ok), "peer did not report `{ok}`");
        assert!(out.contains(&format!("BUG-REPRO tensor {i}:")), "peer did not check the offset-less read of tensor {i}");
    }
    assert!(out.contains("peer: 1 cuIpcOpenMemHandle for 6 tensors"), "peer must open the handle exactly once");

    // A's data is untouched; then drop the six references.
    for (i, &(off, len)) in TENSORS.iter().enumerate() {
        let mut b = vec![0u8; len];
        alloc.read(off, &mut b).unwrap();
        assert_eq!(first_diff(&b, &pattern(i, len)), None);
    }
    for (k, r) in regs.iter().enumerate() {
        let gone = registry.unregister(r.ptr()).unwrap();
        assert_eq!(gone, k == regs.len() - 1, "the registration goes with the last reference");
    }
    assert_eq!(registry.allocations(), 0);
    println!("{test}: OK (6/6 tensors correct in the peer process; one registration, refcount 6 -> 0)");
}

/// Peer mode of `gpu_ipc_sub_allocations_cross_process` (process B); does nothing when run directly.
#[test]
#[ignore = "needs a CUDA device: on the GPU machine run with --ignored"]
fn gpu_ipc_peer() {
    let Ok(hex) = std::env::var(PEER_HANDLE_ENV) else {
        println!("gpu_ipc_peer: helper mode, runs only in the child process of gpu_ipc_sub_allocations_cross_process");
        return;
    };
    let handle = handle_from_hex(&hex).unwrap();
    let base_size = usize::from_str_radix(&std::env::var(PEER_BASE_SIZE_ENV).unwrap(), 16).unwrap();
    let ctx = open_device(0).expect("peer: the parent had a device, the peer must too");
    let importer = IpcImporter::new(ctx);
    let mut mapped = None;
    for t in std::env::var(PEER_TENSORS_ENV).unwrap().split(',') {
        let f: Vec<&str> = t.split(':').collect();
        let i: usize = f[0].parse().unwrap();
        let off = usize::from_str_radix(f[1], 16).unwrap();
        let len = usize::from_str_radix(f[2], 16).unwrap();
        let export = IpcExport { handle, base_size, offset: off };
        let base = importer.open(&export.handle).unwrap();
        assert_eq!(*mapped.get_or_insert(base), base, "cached: the same mapping for every tensor");
        let want = pattern(i, len);
        let mut got = vec![0u8; len];
        importer.read(&export, export.offset, &mut got).unwrap();
        if let Some(j) = first_diff(&got, &want) {
            panic!("tensor {i} ({len} B at offset {off:#x}): byte {j} is {:#04x}, expected {:#04x}", got[j], want[j]);
        }
        println!("OK tensor {i}: {len} B at offset {off:#x} matches byte for byte (mapped base {base:#x})");
        // The seed bug: the interior pointer registered as if it were the base, i.e. offset 0 on the wire.
        let mut wrong = vec![0u8; len];
        importer.read(&export, 0, &mut wrong).unwrap();
        assert_ne!(wrong, want, "tensor {i}: reading without the offset must not find the tensor");
        println!(
            "BUG-REPRO tensor {i}: reading at the mapped base without the offset gives other bytes (first byte {:#04x}, \
             expected {:#04x}), as the seed bug did",
            wrong[0], want[0]
        );
    }
    println!("peer: {} cuIpcOpenMemHandle for 6 tensors", importer.opened());
    assert_eq!(importer.opened(), 1);
    drop(importer); // cuIpcCloseMemHandle
    println!("peer: mapping closed");
}
