//! CUDA reduce kernels: CUDA C++ compiled at run time with NVRTC, loaded once per device and process,
//! and **every kernel loaded eagerly** before [`DeviceKernels::for_device`] returns (docs/design.md invariant 4:
//! under CUDA lazy loading, the first reduce kernel launched behind a resident spinning kernel could not
//! load, and stalled unrelated copies on other streams; see `shared/seeds/003_*`).
//!
//! Preloading: after `cuModuleLoadData`, each kernel is fetched with `cuModuleGetFunction` and then
//! `cuFuncGetAttribute(MAX_THREADS_PER_BLOCK)` and `(NUM_REGS)` are called on it, which forces the driver
//! to load the function even in `CUDA_MODULE_LOADING=LAZY` mode. [`DeviceKernels::preloaded`] reports
//! what each call returned, so tests can check that every kernel was touched.
//!
//! libcuda and libnvrtc are opened at run time (cudarc `dynamic-loading`): this compiles and runs on
//! machines without CUDA, where [`DeviceKernels::for_device`] returns [`KernelError::CudaUnavailable`]
//! with the reason (cudarc panics when a library is missing; that never reaches the caller).

pub mod coll;
mod coll_source;
mod compile;
mod control;
mod cubin;
mod ffi;
mod host_copy;
pub mod ipc;
mod parts;
mod shipped;
mod source;
pub mod vmm;
mod workspace;

pub use cudarc;
pub use coll::{CommOptions, DeviceComm, RawStream};
pub use compile::{build_module_for_arch, build_program_for_arch, nvrtc_compiles, BuiltModulePart, KernelCache, ModuleBuild, Origin};
pub use shipped::{packed_images, shipped_archs, shipped_nvrtc_version};
pub use control::{HostControl, CONTROL_BYTES};
pub use host_copy::{copy_device_to_host, copy_host_to_device};
pub use ipc::{DeviceAllocation, DeviceRegistration, DeviceRegistry, IpcExport, IpcImporter};
pub use source::{kernel_name, MAX_SRCS};
pub use vmm::{allocate_shareable, is_vmm_pointer, ShareKind, VmmAllocation, VmmImport};

use crate::{check_supported, DType, KernelError, ReduceOp, Result};
use cudarc::driver::{
    sys::CUfunction_attribute_enum as FuncAttr, CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream,
    DevicePtr, DevicePtrMut, DriverError,
};
use cudarc::nvrtc::Ptx;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Threads per block of the reduce kernels (the kernels declare `__launch_bounds__(512)`).
const BLOCK_THREADS: u32 = 256;
/// Blocks per SM at most; the kernels are grid-stride loops.
const BLOCKS_PER_SM: u32 = 16;

/// One kernel of the module and what its preload (`cuFuncGetAttribute`) returned.
#[derive(Clone, Debug)]
pub struct PreloadedKernel {
    /// The kernel's entry-point name.
    pub name: String,
    /// `CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK`: the largest block it can launch with.
    pub max_threads_per_block: i32,
    /// `CU_FUNC_ATTRIBUTE_NUM_REGS`: registers per thread.
    pub num_regs: i32,
}

/// The reduce kernels of one device, compiled, loaded and preloaded.
pub struct DeviceKernels {
    ordinal: usize,
    ctx: Arc<CudaContext>,
    name: String,
    arch: &'static str,
    sm_count: u32,
    build: ModuleBuild,
    _modules: Vec<Arc<CudaModule>>,
    /// Indexed by `dtype as usize * 8 + op as usize`; index into `funcs` and `coll_funcs`.
    table: Vec<Option<usize>>,
    funcs: Vec<CudaFunction>,
    /// The collective kernel of each entry of `funcs` (same dtype and op).
    coll_funcs: Vec<CudaFunction>,
    /// The data-movement collective kernel.
    copy_func: CudaFunction,
    preloaded: Vec<PreloadedKernel>,
}

impl std::fmt::Debug for DeviceKernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceKernels")
            .field("ordinal", &self.ordinal)
            .field("device", &self.name)
            .field("arch", &self.arch)
            .field("kernels", &self.funcs.len())
            .finish()
    }
}

fn cache() -> &'static Mutex<HashMap<usize, Arc<DeviceKernels>>> {
    static CACHE: OnceLock<Mutex<HashMap<usize, Arc<DeviceKernels>>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Checks that `len` bytes at `offset` fit in an allocation of `size` bytes (`past_end` says which kind,
/// for the error) and returns a private stream of `ctx` for one copy. Not the legacy default stream and
/// no context synchronization: either would wait for unrelated kernels, such as a resident spinning
/// kernel of the application (docs/design.md invariant 4).
fn copy_stream(ctx: &Arc<CudaContext>, size: usize, offset: usize, len: usize, past_end: &'static str) -> Result<Arc<CudaStream>> {
    if offset.checked_add(len).is_none_or(|end| end > size) {
        return Err(KernelError::InvalidArgument { reason: past_end });
    }
    ctx.bind_to_thread().map_err(|e| cuda_err("binding the context", e))?;
    ctx.new_stream().map_err(|e| cuda_err("creating a copy stream", e))
}

fn cuda_err(what: &str, e: DriverError) -> KernelError {
    KernelError::Cuda { what: what.to_string(), reason: e.to_string() }
}

/// Directories where libcuda / libnvrtc usually live (plus `LD_LIBRARY_PATH`).
fn library_dirs() -> Vec<String> {
    let mut dirs: Vec<String> = std::env::var("LD_LIBRARY_PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    for d in [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
        "/usr/local/cuda/lib64",
        "/usr/local/cuda/targets/x86_64-linux/lib",
        "/usr/local/cuda/targets/sbsa-linux/lib",
        "/usr/local/cuda/compat",
        "/usr/local/nvidia/lib64",
        "/usr/lib/wsl/lib",
    ] {
        dirs.push(d.to_string());
    }
    // Versioned toolkits: /usr/local/cuda-13.0/lib64 ...
    if let Ok(rd) = std::fs::read_dir("/usr/local") {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if n.starts_with("cuda-") {
                dirs.push(format!("/usr/local/{n}/lib64"));
                dirs.push(format!("/usr/local/{n}/targets/x86_64-linux/lib"));
            }
        }
    }
    dirs
}

/// Looks for one of `names` in the usual directories and in the dynamic linker cache.
fn find_library(names: &[&str]) -> Option<String> {
    for d in library_dirs() {
        for n in names {
            let p = Path::new(&d).join(n);
            if p.exists() {
                return Some(p.display().to_string());
            }
        }
    }
    let cache = std::fs::read("/etc/ld.so.cache").unwrap_or_default();
    for n in names {
        if cache.windows(n.len()).any(|w| w == n.as_bytes()) {
            return Some(format!("{n} (ld.so.cache)"));
        }
    }
    None
}

/// Checks, without touching cudarc's loaders (which panic), that libcuda can be found and opened. NVRTC
/// is checked only where kernels must be compiled at run time ([`compile`]): a GPU whose architecture
/// the library ships never needs it.
pub fn probe_libraries() -> Result<()> {
    if find_library(&["libcuda.so.1", "libcuda.so"]).is_none() {
        return Err(KernelError::CudaUnavailable(
            "libcuda.so.1 not found (no NVIDIA driver on this machine; searched LD_LIBRARY_PATH, the usual \
             library directories and ld.so.cache)"
                .into(),
        ));
    }
    if !ffi::driver_library_present() {
        return Err(KernelError::CudaUnavailable(
            "libcuda was found on disk but could not be opened (dlopen failed; check LD_LIBRARY_PATH and that \
             the library matches this architecture)"
                .into(),
        ));
    }
    Ok(())
}

/// Checks, as [`probe_libraries`] does for the driver, that libnvrtc can be found and opened.
pub(crate) fn probe_nvrtc() -> Result<()> {
    if find_library(&["libnvrtc.so.13", "libnvrtc.so"]).is_none() {
        return Err(KernelError::CudaUnavailable(
            "libnvrtc.so.13 not found, and this library ships no kernels for this GPU (install the CUDA 13 NVRTC \
             runtime, e.g. `pip install nvidia-cuda-nvrtc==13.*`, or add its directory to LD_LIBRARY_PATH)"
                .into(),
        ));
    }
    if !ffi::nvrtc_library_present() {
        return Err(KernelError::CudaUnavailable(
            "libnvrtc was found on disk but could not be opened (dlopen failed; check LD_LIBRARY_PATH)".into(),
        ));
    }
    Ok(())
}

/// Runs `f`, turning a cudarc panic (missing library or symbol) into `CudaUnavailable`.
fn no_panic<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(KernelError::CudaUnavailable(format!("{what}: {msg}")))
        }
    }
}

/// Opens `ordinal` (primary context), with a clear `CudaUnavailable` when there is no usable device.
pub fn open_device(ordinal: usize) -> Result<Arc<CudaContext>> {
    probe_libraries()?;
    no_panic("opening the CUDA driver", || {
        let n = CudaContext::device_count()
            .map_err(|e| KernelError::CudaUnavailable(format!("cuInit/cuDeviceGetCount failed: {e}")))?;
        if n <= 0 {
            return Err(KernelError::CudaUnavailable("the driver reports no CUDA device".into()));
        }
        if ordinal >= n as usize {
            return Err(KernelError::CudaUnavailable(format!("device {ordinal} requested, {n} present")));
        }
        CudaContext::new(ordinal).map_err(|e| cuda_err("creating the primary context", e))
    })
}

/// NVRTC target for the device: `sm_XY`, machine code, so loading the module JIT-compiles nothing.
fn arch_for(ctx: &CudaContext) -> Result<&'static str> {
    let (maj, min) = ctx.compute_capability().map_err(|e| cuda_err("querying the compute capability", e))?;
    static ARCHES: OnceLock<Mutex<HashMap<(i32, i32), &'static str>>> = OnceLock::new();
    let mut m = ARCHES.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    Ok(*m.entry((maj, min)).or_insert_with(|| Box::leak(format!("sm_{maj}{min}").into_boxed_str())))
}

/// The module's parts for the device of `ctx`: the images shipped in the library when its architecture
/// has them (no NVRTC call), else compiled at run time through the kernel cache.
fn build_module(ctx: &CudaContext, arch: &str, parts: &[source::ModulePart], cache: &KernelCache) -> Result<Vec<compile::BuiltPart>> {
    let (major, minor) = ctx.compute_capability().map_err(|e| cuda_err("querying the compute capability", e))?;
    if let Some(sm) = shipped::pick(major, minor) {
        let images = shipped::cubins(sm)?;
        if images.len() == parts.len() {
            return Ok(images.into_iter().map(|cubin| compile::BuiltPart { cubin, origin: Origin::Shipped }).collect());
        }
        tracing::warn!(arch, shipped = images.len(), parts = parts.len(), "the shipped kernels do not match the module; compiling");
    }
    tracing::info!(arch, shipped = ?shipped::shipped_archs(), "no shipped kernels for this GPU; compiling them with NVRTC (cached afterwards)");
    compile::build_sources(parts, arch, cache)
}

/// How many parts came from the kernel cache and how many from the library.
fn origin_counts(built: &[compile::BuiltPart]) -> (usize, usize) {
    let count = |o| built.iter().filter(|b| b.origin == o).count();
    (count(Origin::Cached), count(Origin::Shipped))
}

fn load_all(ctx: &Arc<CudaContext>, built: Vec<compile::BuiltPart>) -> Result<Vec<Arc<CudaModule>>> {
    built.into_iter().map(|b| load_cubin(ctx, b.cubin)).collect()
}

/// Loads a cubin into `ctx` (the module only; functions are preloaded by callers).
fn load_cubin(ctx: &Arc<CudaContext>, cubin: Vec<u8>) -> Result<Arc<CudaModule>> {
    ctx.load_module(Ptx::from_binary(cubin)).map_err(|e| cuda_err("loading a compiled module (cuModuleLoadData)", e))
}

/// Fetches `name` from `module` and forces it to load now (`cuFuncGetAttribute`).
fn load_and_preload(module: &Arc<CudaModule>, name: &str) -> Result<(CudaFunction, PreloadedKernel)> {
    let f = module
        .load_function(name)
        .map_err(|e| KernelError::Cuda { what: format!("cuModuleGetFunction({name})"), reason: e.to_string() })?;
    let attr = |a| {
        f.get_attribute(a)
            .map_err(|e| KernelError::Cuda { what: format!("preloading {name} (cuFuncGetAttribute)"), reason: e.to_string() })
    };
    let max_threads_per_block = attr(FuncAttr::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK)?;
    let num_regs = attr(FuncAttr::CU_FUNC_ATTRIBUTE_NUM_REGS)?;
    Ok((f, PreloadedKernel { name: name.to_string(), max_threads_per_block, num_regs }))
}

impl DeviceKernels {
    /// The kernels of device `ordinal`, compiled and preloaded once per process (later calls return the
    /// same `Arc`). Call this during group setup, before the first collective.
    pub fn for_device(ordinal: usize) -> Result<Arc<DeviceKernels>> {
        let mut c = cache().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = c.get(&ordinal) {
            return Ok(k.clone());
        }
        let k = Arc::new(Self::build(ordinal)?);
        c.insert(ordinal, k.clone());
        Ok(k)
    }

    /// A fresh, uncached compile + load + preload (what `for_device` does the first time). For tests
    /// and diagnostics; use [`DeviceKernels::for_device`] otherwise.
    pub fn build(ordinal: usize) -> Result<DeviceKernels> {
        Self::build_with(ordinal, true)
    }

    /// Like [`DeviceKernels::build`], but `preload == false` skips the `cuFuncGetAttribute` calls,
    /// leaving the kernels to CUDA lazy loading. Only for demonstrating the hazard of invariant 4.
    #[doc(hidden)]
    pub fn build_without_preload_for_test(ordinal: usize) -> Result<DeviceKernels> {
        Self::build_with(ordinal, false)
    }

    fn build_with(ordinal: usize, preload: bool) -> Result<DeviceKernels> {
        let ctx = open_device(ordinal)?;
        let name = ctx.name().unwrap_or_else(|_| "unknown".into());
        let arch = arch_for(&ctx)?;
        let sm_count = ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| cuda_err("querying the SM count", e))?
            .max(1) as u32;
        let started = Instant::now();
        let cache = KernelCache::from_env();
        let parts = source::module_parts();
        let built = build_module(&ctx, arch, &parts, &cache)?;
        let (mut cached, mut shipped) = origin_counts(&built);
        let modules = match load_all(&ctx, built) {
            // A driver older than the NVRTC that built the library may refuse its images.
            Err(e) if shipped > 0 => {
                tracing::warn!(arch, "the driver cannot load the shipped kernels ({e}); compiling them with NVRTC");
                let built = compile::build_sources(&parts, arch, &cache)?;
                (cached, shipped) = origin_counts(&built);
                load_all(&ctx, built)?
            }
            loaded => loaded?,
        };
        let home: HashMap<&str, &Arc<CudaModule>> =
            parts.iter().zip(&modules).flat_map(|(p, m)| p.entries.iter().map(move |e| (e.as_str(), m))).collect();
        let list = source::kernels();
        let mut funcs = Vec::with_capacity(list.len());
        let mut coll_funcs = Vec::with_capacity(list.len());
        let mut preloaded = Vec::with_capacity(2 * list.len() + 1);
        let mut load = |kname: &str| -> Result<CudaFunction> {
            let module = home.get(kname).ok_or_else(|| KernelError::Cuda {
                what: format!("finding {kname}"),
                reason: "no part of the kernel module defines it".into(),
            })?;
            if preload {
                let (f, p) = load_and_preload(module, kname)?;
                preloaded.push(p);
                Ok(f)
            } else {
                module.load_function(kname).map_err(|e| KernelError::Cuda {
                    what: format!("cuModuleGetFunction({kname})"),
                    reason: e.to_string(),
                })
            }
        };
        for (kname, _, _) in &list {
            funcs.push(load(kname)?);
            coll_funcs.push(load(&source::coll_kernel_name(kname))?);
        }
        let copy_func = load(coll_source::COPY_KERNEL)?;
        let build =
            ModuleBuild { parts: modules.len(), cached, shipped, elapsed: started.elapsed(), cache_dir: cache.dir().map(Into::into) };
        tracing::info!(
            device = ordinal,
            arch,
            parts = build.parts,
            cached = build.cached,
            shipped = build.shipped,
            ms = build.elapsed.as_millis() as u64,
            "kernel module built and preloaded"
        );
        let mut table = vec![None; DType::all().len() * 8];
        for &d in DType::all() {
            for &op in ReduceOp::all() {
                if let Some(n) = kernel_name(d, op) {
                    table[d as usize * 8 + op as usize] = list.iter().position(|(k, _, _)| *k == n);
                }
            }
        }
        Ok(DeviceKernels {
            ordinal,
            ctx,
            name,
            arch,
            sm_count,
            build,
            _modules: modules,
            table,
            funcs,
            coll_funcs,
            copy_func,
            preloaded,
        })
    }

    /// Device ordinal.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The device's name (`NVIDIA H100 80GB HBM3`, ...).
    pub fn device_name(&self) -> &str {
        &self.name
    }

    /// NVRTC target the module was compiled for (`sm_XY`).
    pub fn arch(&self) -> &'static str {
        self.arch
    }

    /// How the module was built (parts, how many came from the kernel cache, time taken).
    pub fn module_build(&self) -> &ModuleBuild {
        &self.build
    }

    /// The context the kernels are loaded in (the device's primary context).
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// Number of kernels in the module: the reduce kernels, one collective kernel per reduce kernel and
    /// the data-movement collective kernel (all of them are preloaded by `for_device`).
    pub fn kernel_count(&self) -> usize {
        self.funcs.len() + self.coll_funcs.len() + 1
    }

    /// Index of `(dtype, op)`'s kernels in `funcs` and `coll_funcs` (`Unsupported` for a pair without one).
    fn kernel_index(&self, dtype: DType, op: ReduceOp) -> Result<usize> {
        check_supported(dtype, op)?;
        self.table[dtype as usize * 8 + op as usize].ok_or(KernelError::Unsupported { op, dtype: dtype.name() })
    }

    /// The collective kernel for `(dtype, op)`.
    pub(crate) fn coll_func(&self, dtype: DType, op: ReduceOp) -> Result<&CudaFunction> {
        Ok(&self.coll_funcs[self.kernel_index(dtype, op)?])
    }

    /// The data-movement collective kernel.
    pub(crate) fn copy_func(&self) -> &CudaFunction {
        &self.copy_func
    }

    /// What preloading returned for each kernel (empty only for the test-only no-preload build).
    pub fn preloaded(&self) -> &[PreloadedKernel] {
        &self.preloaded
    }

    /// Whether the process runs with CUDA lazy module loading (the mode in which preloading matters).
    pub fn module_loading_is_lazy(&self, stream: &CudaStream) -> Result<bool> {
        ffi::module_loading_lazy(stream).map_err(|e| cuda_err("cuModuleGetLoadingMode", e))
    }

    /// Checks a reduction and returns (kernel, grid, block), or None when there is nothing to do.
    fn plan(&self, stream: &CudaStream, dtype: DType, op: ReduceOp, nsrc: usize, count: usize) -> Result<Option<(&CudaFunction, u32, u32)>> {
        check_supported(dtype, op)?;
        if nsrc == 0 || nsrc > MAX_SRCS {
            return Err(KernelError::InvalidArgument { reason: "a device reduce takes 1 to 8 source buffers" });
        }
        if stream.context().cu_ctx() != self.ctx.cu_ctx() {
            return Err(KernelError::InvalidArgument {
                reason: "the stream belongs to another CUDA context than these kernels",
            });
        }
        let idx = self.kernel_index(dtype, op)?;
        if count == 0 {
            return Ok(None);
        }
        let per_thread = (16 / dtype.size()) as u64;
        let work = (count as u64).div_ceil(per_thread);
        let blocks = work.div_ceil(BLOCK_THREADS as u64).clamp(1, (self.sm_count * BLOCKS_PER_SM) as u64) as u32;
        Ok(Some((&self.funcs[idx], blocks, BLOCK_THREADS)))
    }

    /// `dst[i] = op(srcs[0][i], ..., srcs[k-1][i])` for `i < count`, enqueued on `stream` (asynchronous;
    /// synchronize or record an event to wait). 1 to [`MAX_SRCS`] sources; buffers are bytes and must
    /// hold at least `count * dtype.size()` bytes; any alignment (16-byte vector loads are used when all
    /// buffers share the same offset modulo 16). f16/bf16 accumulate in f32 and round once; `Avg` is a
    /// sum (the caller divides); bool output is 0/1.
    pub fn reduce<D, S>(&self, stream: &CudaStream, dtype: DType, op: ReduceOp, dst: &mut D, srcs: &[&S], count: usize) -> Result<()>
    where
        D: DevicePtrMut<u8>,
        S: DevicePtr<u8>,
    {
        let Some((f, grid, block)) = self.plan(stream, dtype, op, srcs.len(), count)? else {
            return Ok(());
        };
        let need = count.checked_mul(dtype.size()).ok_or(KernelError::InvalidArgument { reason: "count overflows" })?;
        let bad = |actual: usize, index: usize| KernelError::LengthMismatch {
            dtype: dtype.name(),
            elem_size: dtype.size(),
            expected: need,
            actual,
            index,
        };
        if dst.len() < need {
            return Err(bad(dst.len(), 0));
        }
        for (i, s) in srcs.iter().enumerate() {
            if s.len() < need {
                return Err(bad(s.len(), i + 1));
            }
        }
        ffi::launch_reduce_slices(f, stream, grid, block, dst, srcs, count)
            .map_err(|e| cuda_err("launching a reduce kernel", e))
    }
}

/// What a [`ResidentSpinner`] reported when it exited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpinExit {
    /// Has not exited (or was never started).
    Running,
    /// Released by the host.
    Released,
    /// Gave up after its timeout.
    TimedOut,
}

/// A one-thread kernel that stays resident on the GPU until released (or until its timeout), in its own
/// module. It reproduces the situation of invariant 4: a persistent kernel already running when the
/// first reduce kernel is launched on another stream. Diagnostic/test use.
pub struct ResidentSpinner {
    _module: Arc<CudaModule>,
    func: CudaFunction,
    flag: CudaSlice<u32>,
    flag_ptr: u64,
    launched_on: Option<Arc<CudaStream>>,
}

impl ResidentSpinner {
    /// Compiles, loads and preloads the spinner on `ctx` and allocates its flags (synchronously).
    pub fn new(ctx: &Arc<CudaContext>) -> Result<ResidentSpinner> {
        probe_nvrtc()?;
        let part = compile::PartSource { name: "chorus_spin.cu".into(), source: source::SPIN_SRC };
        let built = no_panic("running NVRTC", || compile::build_part(&part, arch_for(ctx)?, &KernelCache::from_env()))?;
        let module = load_cubin(ctx, built.cubin)?;
        let (func, _) = load_and_preload(&module, source::SPIN_KERNEL)?;
        let s = ctx.default_stream();
        let flag = s.alloc_zeros::<u32>(4).map_err(|e| cuda_err("allocating the spinner flag", e))?;
        let flag_ptr = {
            let (p, _sync) = flag.device_ptr(&s);
            p
        };
        s.synchronize().map_err(|e| cuda_err("synchronizing", e))?;
        Ok(ResidentSpinner { _module: module, func, flag, flag_ptr, launched_on: None })
    }

    /// Launches the spinner on `stream`; it exits by itself after `timeout`.
    pub fn start(&mut self, stream: &Arc<CudaStream>, timeout: Duration) -> Result<()> {
        if self.launched_on.is_some() {
            return Err(KernelError::InvalidArgument { reason: "the spinner was already started" });
        }
        self.launch_raw(stream, timeout.as_nanos().min(u64::MAX as u128) as u64)
            .map_err(|e| cuda_err("launching the spinner", e))?;
        self.launched_on = Some(stream.clone());
        Ok(())
    }

    /// Enqueues the release (a 4-byte host-to-device copy of the flag) on `stream`, which must not be
    /// the spinner's stream.
    pub fn release(&self, stream: &CudaStream) -> Result<()> {
        self.release_raw(stream).map_err(|e| cuda_err("writing the spinner flag", e))
    }

    /// Waits for the spinner's stream and reads how it exited.
    pub fn wait_exit(&self) -> Result<SpinExit> {
        let Some(s) = &self.launched_on else { return Ok(SpinExit::Running) };
        s.synchronize().map_err(|e| cuda_err("waiting for the spinner", e))?;
        let mut v = [0u32; 3];
        self.read_raw(s, &mut v).map_err(|e| cuda_err("reading the spinner flag", e))?;
        Ok(match v[1] {
            1 => SpinExit::Released,
            2 => SpinExit::TimedOut,
            _ => SpinExit::Running,
        })
    }
}

impl Drop for ResidentSpinner {
    fn drop(&mut self) {
        // Never free the flag under a running spinner: release it and wait (bounded by its timeout).
        if let Some(s) = self.launched_on.take() {
            if let Ok(r) = s.context().new_stream() {
                let _ = self.release_raw(&r);
                let _ = r.synchronize();
            }
            let _ = s.synchronize();
        }
        let _ = &self.flag;
    }
}
