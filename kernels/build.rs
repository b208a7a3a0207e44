//! Compiles the CUDA kernel module ahead of time: NVRTC (found on the build machine, e.g. from the
//! `nvidia-cuda-nvrtc` wheel; no GPU and no CUDA toolkit needed) builds every part of the module to
//! machine code for each shipped architecture, and the cubins are embedded in the library
//! (`$OUT_DIR/shipped_kernels.rs`, included by `src/cuda/shipped.rs`). At run time the device's
//! architecture picks its cubins with no compile; an architecture not shipped falls back to run-time
//! NVRTC. Where the build machine has no NVRTC the build still succeeds and says so once (a cargo
//! warning): the library then compiles at run time only. Without the `cuda` feature it writes an empty
//! table and does nothing else (no NVRTC lookup; its NVRTC loader and codec are not even compiled).
//!
//! Settings (environment of the build):
//! - `CHORUS_NVRTC`: libnvrtc.so.13, or the directory holding it (else: `LD_LIBRARY_PATH`, `CUDA_HOME`,
//!   `CUDA_PATH`, /usr/local/cuda, the active virtualenv's and python3's `nvidia/cu13/lib`, the
//!   workspace's `.venv`).
//! - `CHORUS_KERNEL_ARCHS`: the architectures to ship, e.g. `90,100` (default [`SHIPPED`] where NVRTC
//!   supports them); `none` ships nothing.
//!
//! Compiled cubins are kept under `target/chorus-kernel-cubins/`, keyed like the run-time kernel
//! cache (source, options, NVRTC version), so rebuilding the crate (another profile, an edit elsewhere)
//! does not compile them again.

#[cfg(feature = "cuda")]
#[path = "src/cuda/parts.rs"]
#[allow(dead_code)]
mod parts;
#[cfg(feature = "cuda")]
#[path = "src/cuda/cubin.rs"]
#[allow(dead_code)]
mod cubin;

use std::path::{Path, PathBuf};
#[cfg(feature = "cuda")]
use std::sync::atomic::{AtomicUsize, Ordering};
#[cfg(feature = "cuda")]
use std::sync::Mutex;

/// Data-centre and workstation GPUs: Turing, Ampere (A100, A10/RTX 30), Ada (L40, RTX 40), Hopper,
/// Blackwell (B200/GB200, B300/GB300) and Blackwell workstation (RTX PRO / RTX 50). Devices of the same
/// major version and a higher minor (sm_87 Orin, sm_121 GB10) run the closest lower cubin. Embedded
/// parts (sm_87, sm_88, sm_110) are not shipped.
#[cfg(feature = "cuda")]
const SHIPPED: &[u32] = &[75, 80, 86, 89, 90, 100, 103, 120];

fn main() {
    for f in ["build.rs", "src/cuda/parts.rs", "src/cuda/cubin.rs", "cuda/reduce.cu", "cuda/coll.cu", "cuda/copy.cu"] {
        println!("cargo:rerun-if-changed={f}");
    }
    for v in ["CHORUS_NVRTC", "CHORUS_KERNEL_ARCHS", "CUDA_HOME", "CUDA_PATH", "VIRTUAL_ENV"] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let table = out_dir.join("shipped_kernels.rs");
    // Without `cuda` nothing is shipped: no NVRTC is looked for or opened, and the build script is
    // compiled without its NVRTC loader and codec (the optional build dependencies stay out).
    #[cfg(not(feature = "cuda"))]
    write_table(&table, None, &[]);
    #[cfg(feature = "cuda")]
    ship(&out_dir, &table);
}

/// Compiles (or takes from the cubin cache) the kernels for every architecture to ship and writes
/// the table; an empty table where the build machine has no NVRTC or `CHORUS_KERNEL_ARCHS=none`.
#[cfg(feature = "cuda")]
fn ship(out_dir: &Path, table: &Path) {
    let archs_setting = std::env::var("CHORUS_KERNEL_ARCHS").ok();
    if archs_setting.as_deref().map(str::trim) == Some("none") {
        write_table(table, None, &[]);
        return;
    }
    let Some(lib) = find_nvrtc() else {
        println!(
            "cargo:warning=chorus-kernels: no NVRTC (libnvrtc.so.13) on this build machine, so no GPU kernels are \
             shipped; they will be compiled at run time on first use (~10 s). To ship them: `pip install \
             nvidia-cuda-nvrtc==13.*` or set CHORUS_NVRTC to libnvrtc.so.13, then rebuild."
        );
        write_table(table, None, &[]);
        return;
    };
    let nvrtc = match nvrtc::Nvrtc::open(&lib) {
        Ok(n) => n,
        Err(e) => {
            println!(
                "cargo:warning=chorus-kernels: cannot use {} ({e}); no GPU kernels shipped, they will be compiled \
                 at run time",
                lib.display()
            );
            write_table(table, None, &[]);
            return;
        }
    };
    let version = nvrtc.version();
    let supported = nvrtc.supported_archs();
    let archs: Vec<u32> = match &archs_setting {
        Some(list) => list
            .split(',')
            .map(|a| a.trim().trim_start_matches("sm_").parse::<u32>().unwrap_or_else(|_| panic!("CHORUS_KERNEL_ARCHS: bad entry {a:?}")))
            .inspect(|a| assert!(supported.contains(a), "CHORUS_KERNEL_ARCHS: NVRTC {version:?} cannot build sm_{a} (it supports {supported:?})"))
            .collect(),
        None => SHIPPED.iter().copied().filter(|a| supported.contains(a)).collect(),
    };
    let cache = cubin_cache_dir(out_dir);
    let parts = parts::module_parts();
    let jobs: Vec<(u32, usize)> = archs.iter().flat_map(|&a| (0..parts.len()).map(move |p| (a, p))).collect();
    let results: Vec<Mutex<Option<PathBuf>>> = jobs.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(jobs.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(arch, p)) = jobs.get(i) else { break };
                let path = build_part(&nvrtc, version, &cache, &parts[p].source, &parts::part_name(p), arch);
                *results[i].lock().unwrap() = Some(path);
            });
        }
    });
    let files: Vec<PathBuf> = results.into_iter().map(|m| m.into_inner().unwrap().expect("every job ran")).collect();
    let per_arch: Vec<(u32, Vec<PathBuf>)> =
        archs.iter().enumerate().map(|(i, &a)| (a, files[i * parts.len()..(i + 1) * parts.len()].to_vec())).collect();
    write_table(table, Some(version), &per_arch);
}

/// One part for one architecture, deflated (zlib): from the build cache when it holds a good one, else
/// compiled and stored. Every cubin is checked as an image for `arch` before it is shipped.
#[cfg(feature = "cuda")]
fn build_part(nvrtc: &nvrtc::Nvrtc, version: (i32, i32), cache: &Path, source: &str, name: &str, arch: u32) -> PathBuf {
    let target = format!("sm_{arch}");
    let key = parts::program_key(source, &target, version);
    let path = cache.join(format!("{}-{target}-{key:016x}.cubin.z", name.trim_end_matches(".cu")));
    if let Ok(packed) = std::fs::read(&path) {
        if cubin::unpack(&packed, arch).is_ok() {
            return path;
        }
    }
    let image = nvrtc.compile(source, name, &parts::options(&target)).unwrap_or_else(|e| panic!("NVRTC failed on {name} for {target}: {e}"));
    if let Err(e) = cubin::check_image(&image, arch) {
        panic!("NVRTC's output for {name}, {target} is not a usable image: {e}");
    }
    let packed = miniz_oxide::deflate::compress_to_vec_zlib(&image, 9);
    assert_eq!(cubin::unpack(&packed, arch).as_deref(), Ok(&image[..]), "the packed {name} for {target} unpacks to itself");
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, &packed).and_then(|_| std::fs::rename(&tmp, &path)).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

/// `target/chorus-kernel-cubins` (OUT_DIR is `target/<profile>/build/<pkg>/out`), else OUT_DIR itself.
#[cfg(feature = "cuda")]
fn cubin_cache_dir(out_dir: &Path) -> PathBuf {
    let target = out_dir.ancestors().nth(4).filter(|_| out_dir.ancestors().nth(2).is_some_and(|b| b.ends_with("build")));
    let dir = target.map_or_else(|| out_dir.join("cubins"), |t| t.join("chorus-kernel-cubins"));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}

/// `$OUT_DIR/shipped_kernels.rs`: the NVRTC version that built the cubins (None: nothing shipped) and,
/// per architecture, one embedded cubin per part of the module, deflated (zlib; `cubin::unpack`).
fn write_table(path: &Path, version: Option<(i32, i32)>, per_arch: &[(u32, Vec<PathBuf>)]) {
    let mut s = String::from("// Generated by kernels/build.rs.\n");
    s += &format!("pub(crate) const BUILT_WITH_NVRTC: Option<(i32, i32)> = {version:?};\n");
    s += "pub(crate) static SHIPPED: &[(u32, &[&[u8]])] = &[\n";
    for (arch, files) in per_arch {
        s += &format!("    ({arch}, &[\n");
        for f in files {
            s += &format!("        include_bytes!({:?}),\n", f.display().to_string());
        }
        s += "    ]),\n";
    }
    s += "];\n";
    std::fs::write(path, s).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// The first libnvrtc.so.13 in the places the module docs list.
#[cfg(feature = "cuda")]
fn find_nvrtc() -> Option<PathBuf> {
    const LIB: &str = "libnvrtc.so.13";
    if let Some(v) = std::env::var_os("CHORUS_NVRTC").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(v);
        let p = if p.is_dir() { p.join(LIB) } else { p };
        if !p.is_file() {
            println!("cargo:warning=chorus-kernels: CHORUS_NVRTC={} is not libnvrtc.so.13 or a directory holding it", p.display());
        }
        return p.is_file().then_some(p);
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(ld) = std::env::var_os("LD_LIBRARY_PATH") {
        dirs.extend(std::env::split_paths(&ld));
    }
    for v in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(h) = std::env::var_os(v) {
            dirs.push(PathBuf::from(h).join("lib64"));
        }
    }
    dirs.push("/usr/local/cuda/lib64".into());
    let mut site_packages: Vec<PathBuf> = Vec::new();
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV") {
        site_packages.extend(python_site_dirs(&PathBuf::from(venv)));
    }
    if let Some(py) = python_site_packages() {
        site_packages.extend(py);
    }
    if let Some(ws) = Path::new(env!("CARGO_MANIFEST_DIR")).parent() {
        site_packages.extend(python_site_dirs(&ws.join(".venv")));
    }
    dirs.extend(site_packages.iter().map(|s| s.join("nvidia/cu13/lib")));
    dirs.into_iter().map(|d| d.join(LIB)).find(|p| p.is_file())
}

/// `<venv>/lib/python3*/site-packages`.
#[cfg(feature = "cuda")]
fn python_site_dirs(venv: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(venv.join("lib")) else { return Vec::new() };
    rd.filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path().join("site-packages"))
        .collect()
}

/// The site-packages of `python3` on PATH (where `pip install nvidia-cuda-nvrtc` put it), if any.
#[cfg(feature = "cuda")]
fn python_site_packages() -> Option<Vec<PathBuf>> {
    let out = std::process::Command::new("python3")
        .args(["-c", "import site, sys; print('\\n'.join(site.getsitepackages() + [site.getusersitepackages()]))"])
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).lines().map(PathBuf::from).collect())
}

/// NVRTC opened at build time (libloading): only the calls a compile to cubin needs.
#[cfg(feature = "cuda")]
mod nvrtc {
    use std::ffi::{c_char, c_int, c_void, CStr, CString};
    use std::path::Path;

    type Program = *mut c_void;
    type Status = c_int;

    pub struct Nvrtc {
        _lib: libloading::Library,
        version: unsafe extern "C" fn(*mut c_int, *mut c_int) -> Status,
        num_archs: unsafe extern "C" fn(*mut c_int) -> Status,
        archs: unsafe extern "C" fn(*mut c_int) -> Status,
        create: unsafe extern "C" fn(*mut Program, *const c_char, *const c_char, c_int, *const *const c_char, *const *const c_char) -> Status,
        compile: unsafe extern "C" fn(Program, c_int, *const *const c_char) -> Status,
        log_size: unsafe extern "C" fn(Program, *mut usize) -> Status,
        log: unsafe extern "C" fn(Program, *mut c_char) -> Status,
        cubin_size: unsafe extern "C" fn(Program, *mut usize) -> Status,
        cubin: unsafe extern "C" fn(Program, *mut c_char) -> Status,
        destroy: unsafe extern "C" fn(*mut Program) -> Status,
    }

    impl Nvrtc {
        pub fn open(path: &Path) -> Result<Nvrtc, String> {
            // SAFETY: loading libnvrtc runs its initialisers, which have no preconditions; every symbol
            // below is looked up with the signature of NVRTC 13's nvrtc.h.
            unsafe {
                let lib = libloading::Library::new(path).map_err(|e| e.to_string())?;
                macro_rules! sym {
                    ($name:literal) => {
                        *lib.get(concat!($name, "\0").as_bytes()).map_err(|e| format!("{}: {e}", $name))?
                    };
                }
                Ok(Nvrtc {
                    version: sym!("nvrtcVersion"),
                    num_archs: sym!("nvrtcGetNumSupportedArchs"),
                    archs: sym!("nvrtcGetSupportedArchs"),
                    create: sym!("nvrtcCreateProgram"),
                    compile: sym!("nvrtcCompileProgram"),
                    log_size: sym!("nvrtcGetProgramLogSize"),
                    log: sym!("nvrtcGetProgramLog"),
                    cubin_size: sym!("nvrtcGetCUBINSize"),
                    cubin: sym!("nvrtcGetCUBIN"),
                    destroy: sym!("nvrtcDestroyProgram"),
                    _lib: lib,
                })
            }
        }

        pub fn version(&self) -> (i32, i32) {
            let (mut major, mut minor) = (0, 0);
            // SAFETY: two valid out-pointers.
            unsafe { (self.version)(&mut major, &mut minor) };
            (major, minor)
        }

        pub fn supported_archs(&self) -> Vec<u32> {
            let mut n: c_int = 0;
            // SAFETY: a valid out-pointer.
            if unsafe { (self.num_archs)(&mut n) } != 0 || n <= 0 {
                return Vec::new();
            }
            let mut v = vec![0 as c_int; n as usize];
            // SAFETY: `v` holds the `n` entries NVRTC reported.
            if unsafe { (self.archs)(v.as_mut_ptr()) } != 0 {
                return Vec::new();
            }
            v.into_iter().map(|a| a as u32).collect()
        }

        /// `source` compiled with `options` to a cubin, or NVRTC's status and log.
        pub fn compile(&self, source: &str, name: &str, options: &[String]) -> Result<Vec<u8>, String> {
            let src = CString::new(source).map_err(|_| "NUL in the source")?;
            let cname = CString::new(name).map_err(|_| "NUL in the name")?;
            let opts: Vec<CString> = options.iter().map(|o| CString::new(o.as_str()).expect("no NUL in options")).collect();
            let opt_ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
            let mut prog: Program = std::ptr::null_mut();
            // SAFETY: `src` and `cname` are NUL-terminated and outlive the program; no headers.
            let st = unsafe { (self.create)(&mut prog, src.as_ptr(), cname.as_ptr(), 0, std::ptr::null(), std::ptr::null()) };
            if st != 0 {
                return Err(format!("nvrtcCreateProgram: status {st}"));
            }
            let out = (|| {
                // SAFETY: `prog` is live; `opt_ptrs` holds `opts.len()` NUL-terminated strings that outlive the call.
                let st = unsafe { (self.compile)(prog, opt_ptrs.len() as c_int, opt_ptrs.as_ptr()) };
                if st != 0 {
                    return Err(format!("nvrtcCompileProgram: status {st}\n{}", self.program_log(prog)));
                }
                let mut size = 0usize;
                // SAFETY: `prog` is live and compiled; `size` is a valid out-pointer.
                if unsafe { (self.cubin_size)(prog, &mut size) } != 0 || size == 0 {
                    return Err("nvrtcGetCUBINSize: no cubin".to_string());
                }
                let mut bytes = vec![0u8; size];
                // SAFETY: `bytes` holds the `size` bytes NVRTC reported.
                if unsafe { (self.cubin)(prog, bytes.as_mut_ptr().cast()) } != 0 {
                    return Err("nvrtcGetCUBIN failed".to_string());
                }
                Ok(bytes)
            })();
            // SAFETY: `prog` came from nvrtcCreateProgram and is destroyed exactly once.
            unsafe { (self.destroy)(&mut prog) };
            out
        }

        fn program_log(&self, prog: Program) -> String {
            let mut size = 0usize;
            // SAFETY: `prog` is live; `size` is a valid out-pointer.
            if unsafe { (self.log_size)(prog, &mut size) } != 0 || size == 0 {
                return String::new();
            }
            let mut buf = vec![0 as c_char; size];
            // SAFETY: `buf` holds the `size` bytes NVRTC reported, NUL included.
            if unsafe { (self.log)(prog, buf.as_mut_ptr()) } != 0 {
                return String::new();
            }
            // SAFETY: NVRTC NUL-terminates the log within `size` bytes.
            unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
        }
    }
}
