//! The shared library must load on machines without CUDA, NCCL or RDMA: its ELF dynamic section
//! (DT_NEEDED) may name none of libcuda, libcudart, libnccl, libnvrtc or libibverbs (those are
//! opened at run time, if at all). Parses ELF64 directly, so no `readelf` is needed.
use std::path::PathBuf;

/// The cdylib of this build: `cargo test` builds only the rlib, so build the cdylib here (same
/// profile and target directory; cargo does not hold the build lock while tests run).
fn cdylib() -> PathBuf {
    // target/<profile>/deps/elf_deps-<hash>  ->  target/<profile>/libchorus_ffi.so
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO"));
    cmd.args(["build", "-p", "chorus-ffi", "--lib"]).current_dir(env!("CARGO_MANIFEST_DIR"));
    if dir.file_name().is_some_and(|p| p == "release") {
        cmd.arg("--release");
    }
    if let Some(target) = dir.parent() {
        cmd.env("CARGO_TARGET_DIR", target);
    }
    let st = cmd.status().expect("running cargo build for the cdylib");
    assert!(st.success(), "cargo build -p chorus-ffi failed");
    dir.join("libchorus_ffi.so")
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// DT_NEEDED entries of a little-endian ELF64 file.
fn needed(b: &[u8]) -> Vec<String> {
    assert_eq!(&b[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(b[4], 2, "not ELF64");
    assert_eq!(b[5], 1, "not little-endian");
    let (shoff, shentsize, shnum) = (u64_at(b, 0x28) as usize, u16_at(b, 0x3A) as usize, u16_at(b, 0x3C) as usize);
    let sh = |i: usize| shoff + i * shentsize;
    // Section header: type @4, offset @0x18, size @0x20, link @0x28.
    let dynamic = (0..shnum).find(|&i| u32_at(b, sh(i) + 4) == 6 /* SHT_DYNAMIC */).expect("no .dynamic section");
    let (doff, dsize) = (u64_at(b, sh(dynamic) + 0x18) as usize, u64_at(b, sh(dynamic) + 0x20) as usize);
    let strtab = u32_at(b, sh(dynamic) + 0x28) as usize;
    let stroff = u64_at(b, sh(strtab) + 0x18) as usize;
    let mut out = Vec::new();
    for e in (doff..doff + dsize).step_by(16) {
        let (tag, val) = (u64_at(b, e), u64_at(b, e + 8) as usize);
        if tag == 0 {
            break;
        }
        if tag == 1 {
            // DT_NEEDED: val is an offset into the dynamic string table.
            let s = &b[stroff + val..];
            out.push(String::from_utf8_lossy(&s[..s.iter().position(|&c| c == 0).unwrap()]).into_owned());
        }
    }
    out
}

#[test]
fn shared_library_has_no_hard_gpu_or_rdma_dependency() {
    let path = cdylib();
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {} ({e}); build the cdylib first (cargo build -p chorus-ffi)", path.display()));
    let deps = needed(&bytes);
    assert!(deps.iter().any(|d| d.starts_with("libc.so")), "parser sanity: libc should be needed, got {deps:?}");
    for bad in ["libcuda", "libcudart", "libnccl", "libnvrtc", "libibverbs", "librdmacm", "libmlx5"] {
        assert!(!deps.iter().any(|d| d.starts_with(bad)), "{} needs {bad}: {deps:?}", path.display());
    }
}
