//! Building the kernel module at run time, for a GPU whose architecture the library does not ship
//! (`shipped.rs`; `build.rs` compiles the shipped ones ahead of time): NVRTC compiles each part of the CUDA source straight to the device's
//! machine code (an `sm_XY` cubin, so `cuModuleLoadData` has nothing left to JIT), the parts side by side
//! on the machine's cores, and every cubin is kept in an on-disk cache keyed by what shapes it (source,
//! options, target, NVRTC version).
//!
//! Why: the whole module as one PTX image left 109 kernels to the driver's JIT at load, 98 s on a fresh
//! H200 machine before the first collective; the driver's own cache only helps the second run.
//!
//! Cache: `CHORUS_KERNEL_CACHE` names the directory (`off` or `0` turns it off); by default
//! `$XDG_CACHE_HOME/chorus/kernels`, else `~/.cache/chorus/kernels`. An entry is
//! `CHCUBIN1 | len u64 LE | fnv1a64(cubin) u64 LE | cubin`, written to a temporary file and renamed into
//! place, so concurrent ranks never see half an entry; one that fails its check is compiled again and
//! replaced. The cache only saves time: when it cannot be read or written, the kernels are compiled.
//! Processes that start together compile an entry once: the first holds a lock on `<entry>.lock` while
//! it compiles, the others wait for it and read the entry. Lock files stay (empty): removing one while
//! another process waits on it would let a third compile beside the holder.

use super::ffi;
use crate::{KernelError, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Changes whenever the entry layout or what goes into the key changes.
const ENTRY_MAGIC: &[u8; 8] = b"CHCUBIN1";
const HEADER_BYTES: usize = 24;

/// Where compiled kernels are kept between processes.
#[derive(Clone, Debug)]
pub struct KernelCache {
    dir: Option<PathBuf>,
}

impl KernelCache {
    /// The cache `CHORUS_KERNEL_CACHE` selects (see the module docs).
    pub fn from_env() -> KernelCache {
        match std::env::var_os("CHORUS_KERNEL_CACHE") {
            Some(v) if v.is_empty() || v == "0" || v == "off" => KernelCache::disabled(),
            Some(v) => KernelCache::at(v),
            None => KernelCache { dir: default_dir() },
        }
    }

    /// A cache in `dir` (created on the first write).
    pub fn at(dir: impl Into<PathBuf>) -> KernelCache {
        KernelCache { dir: Some(dir.into()) }
    }

    /// No cache: every build compiles.
    pub fn disabled() -> KernelCache {
        KernelCache { dir: None }
    }

    /// The directory, if the cache is on.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    fn entry_path(&self, name: &str, arch: &str, key: u64) -> Option<PathBuf> {
        let stem = name.trim_end_matches(".cu");
        self.dir.as_ref().map(|d| d.join(format!("{stem}-{arch}-{key:016x}.cubin")))
    }
}

fn default_dir() -> Option<PathBuf> {
    let xdg = std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from).filter(|p| p.is_absolute());
    let base = xdg.or_else(|| std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("chorus").join("kernels"))
}

/// Where a part's cubin came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Compiled by NVRTC in this process.
    Compiled,
    /// Read from the kernel cache.
    Cached,
    /// Compiled ahead of time and embedded in the library (`build.rs`): no NVRTC call.
    Shipped,
}

/// NVRTC compiles this process has run (every part, every architecture). A device whose architecture is
/// shipped adds none.
pub fn nvrtc_compiles() -> usize {
    NVRTC_COMPILES.load(Ordering::Relaxed)
}

static NVRTC_COMPILES: AtomicUsize = AtomicUsize::new(0);

/// Longest a build waits for another process compiling the same entry (then it compiles too).
const ENTRY_LOCK_WAIT: Duration = Duration::from_secs(120);

/// One part of the module, built.
#[derive(Debug)]
pub struct BuiltPart {
    pub cubin: Vec<u8>,
    pub origin: Origin,
}

/// One NVRTC program to build: its name (diagnostics, cache file name) and its full source.
pub struct PartSource<'a> {
    pub name: String,
    pub source: &'a str,
}

use super::parts::{fnv1a64, options, program_key as cache_key};

/// The cubin stored in `bytes`, if the entry is whole and its checksum matches.
fn decode_entry(bytes: &[u8]) -> Option<&[u8]> {
    let (header, cubin) = (bytes.get(..HEADER_BYTES)?, bytes.get(HEADER_BYTES..)?);
    let len = u64::from_le_bytes(header[8..16].try_into().ok()?);
    let sum = u64::from_le_bytes(header[16..24].try_into().ok()?);
    (&header[..8] == ENTRY_MAGIC && len == cubin.len() as u64 && sum == fnv1a64(&[cubin])).then_some(cubin)
}

fn encode_entry(cubin: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + cubin.len());
    out.extend_from_slice(ENTRY_MAGIC);
    out.extend_from_slice(&(cubin.len() as u64).to_le_bytes());
    out.extend_from_slice(&fnv1a64(&[cubin]).to_le_bytes());
    out.extend_from_slice(cubin);
    out
}

fn write_entry(path: &Path, cubin: &[u8]) -> std::io::Result<()> {
    static TMP_SEQ: AtomicUsize = AtomicUsize::new(0);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let seq = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp.{}.{seq}", std::process::id()));
    std::fs::write(&tmp, encode_entry(cubin))?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Builds one part for `arch` (`sm_XY`): from the cache when it holds a good entry, else with NVRTC
/// (and then stored). libnvrtc must be present; the caller guards against cudarc's panics.
/// Ranks that start together on one node compile an entry at most once: the first takes an exclusive
/// lock on `<entry>.lock` and compiles; the others wait for the lock (up to [`ENTRY_LOCK_WAIT`]) and
/// then read what it stored.
pub(crate) fn build_part(part: &PartSource<'_>, arch: &str, cache: &KernelCache) -> Result<BuiltPart> {
    let key = ffi::nvrtc_version().map(|v| cache_key(part.source, arch, v));
    let path = key.and_then(|k| cache.entry_path(&part.name, arch, k));
    if let Some(built) = path.as_deref().and_then(read_entry) {
        return Ok(built);
    }
    let _lock = path.as_deref().and_then(lock_entry);
    if let Some(built) = path.as_deref().and_then(read_entry) {
        return Ok(built);
    }
    NVRTC_COMPILES.fetch_add(1, Ordering::Relaxed);
    let cubin = ffi::nvrtc_compile_cubin(part.source, &part.name, &options(arch)).map_err(|f| match f.log {
        Some(log) => KernelError::CudaCompile { log: format!("{} (options {:?}): {}\n{log}", part.name, options(arch), f.status) },
        None => KernelError::Cuda { what: format!("compiling {} with NVRTC ({})", part.name, f.step), reason: f.status },
    })?;
    if let Some(p) = &path {
        if let Err(e) = write_entry(p, &cubin) {
            tracing::warn!(path = %p.display(), "cannot write the kernel cache ({e}); the next process compiles again");
        }
    }
    Ok(BuiltPart { cubin, origin: Origin::Compiled })
}

/// The cached build at `path`, if the cache holds a good one.
fn read_entry(path: &Path) -> Option<BuiltPart> {
    match std::fs::read(path) {
        Ok(bytes) => match decode_entry(&bytes) {
            Some(cubin) => return Some(BuiltPart { cubin: cubin.to_vec(), origin: Origin::Cached }),
            None => tracing::warn!(path = %path.display(), "kernel cache entry is damaged; compiling again"),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), "cannot read the kernel cache ({e}); compiling"),
    }
    None
}

/// An exclusive lock on `<entry>.lock` (released when the file is dropped), or None when the lock file
/// cannot be made or another process held it past [`ENTRY_LOCK_WAIT`]: then this process compiles
/// too, which costs time but is still correct (entries are written whole and renamed into place).
fn lock_entry(entry: &Path) -> Option<std::fs::File> {
    let lock_path = entry.with_extension("lock");
    std::fs::create_dir_all(lock_path.parent()?).ok()?;
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).ok()?;
    let deadline = std::time::Instant::now() + ENTRY_LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Some(file),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                tracing::warn!(path = %lock_path.display(), "another process compiles this kernel entry for too long; compiling here too");
                return None;
            }
            Err(std::fs::TryLockError::Error(e)) => {
                tracing::warn!(path = %lock_path.display(), "cannot lock the kernel cache entry ({e}); compiling without the lock");
                return None;
            }
        }
    }
}

/// Builds every part, up to one per core side by side; results in the order of `parts`, or the first
/// part's error (by position) if any failed.
pub(crate) fn build_parts(parts: &[PartSource<'_>], arch: &str, cache: &KernelCache) -> Result<Vec<BuiltPart>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, parts.len().max(1));
    let next = AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<Result<BuiltPart>>>> = parts.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(part) = parts.get(i) else { break };
                let built = super::no_panic("running NVRTC", || build_part(part, arch, cache));
                *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(built);
            });
        }
    });
    slots
        .into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .unwrap_or_else(|| Err(KernelError::CudaUnavailable("a kernel build thread did not finish".into())))
        })
        .collect()
}

/// How the module of a [`super::DeviceKernels`] was built.
#[derive(Clone, Debug)]
pub struct ModuleBuild {
    /// NVRTC programs (cubins) the module is made of.
    pub parts: usize,
    /// How many of them came from the kernel cache rather than NVRTC.
    pub cached: usize,
    /// How many were shipped in the library (compiled ahead of time): all of them on a shipped
    /// architecture, which then makes no NVRTC call.
    pub shipped: usize,
    /// Compile (or cache read) plus load and preload of every kernel.
    pub elapsed: Duration,
    /// The cache directory used, if any.
    pub cache_dir: Option<std::path::PathBuf>,
}

/// One part of the kernel module, built for an architecture without a device (see
/// [`build_module_for_arch`]).
#[derive(Debug)]
pub struct BuiltModulePart {
    /// Kernels (entry points) the part defines.
    pub entries: Vec<String>,
    /// The machine code.
    pub cubin: Vec<u8>,
    /// Whether the cubin was compiled now, read from the cache or shipped.
    pub origin: Origin,
}

/// Builds every part of the kernel module (reduce and collective kernels) for `arch` (`sm_XY`) with
/// NVRTC, through `cache`: what a GPU run loads, checked on a machine with libnvrtc but no GPU.
pub fn build_module_for_arch(arch: &str, cache: &KernelCache) -> Result<Vec<BuiltModulePart>> {
    nvrtc_present()?;
    let parts = super::source::module_parts();
    let built = build_sources(&parts, arch, cache)?;
    Ok(parts.into_iter().zip(built).map(|(p, b)| BuiltModulePart { entries: p.entries, cubin: b.cubin, origin: b.origin }).collect())
}

/// Builds one NVRTC program `source` for `arch` through `cache` (what every part of the module goes
/// through). For tests of the build and the cache.
#[doc(hidden)]
pub fn build_program_for_arch(name: &str, source: &str, arch: &str, cache: &KernelCache) -> Result<(Vec<u8>, Origin)> {
    nvrtc_present()?;
    let part = PartSource { name: name.to_string(), source };
    super::no_panic("running NVRTC", || build_part(&part, arch, cache)).map(|b| (b.cubin, b.origin))
}

fn nvrtc_present() -> Result<()> {
    super::probe_nvrtc()
}

pub(crate) fn build_sources(parts: &[super::source::ModulePart], arch: &str, cache: &KernelCache) -> Result<Vec<BuiltPart>> {
    nvrtc_present()?;
    let sources: Vec<PartSource<'_>> = parts
        .iter()
        .enumerate()
        .map(|(i, p)| PartSource { name: super::parts::part_name(i), source: &p.source })
        .collect();
    build_parts(&sources, arch, cache)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_damage_is_detected() {
        let cubin: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let e = encode_entry(&cubin);
        assert_eq!(decode_entry(&e), Some(&cubin[..]));
        assert_eq!(decode_entry(&e[..e.len() - 1]), None, "truncated");
        assert_eq!(decode_entry(&e[..10]), None, "header only");
        let mut flipped = e.clone();
        flipped[HEADER_BYTES + 500] ^= 1;
        assert_eq!(decode_entry(&flipped), None, "payload bit flip");
        let mut magic = e;
        magic[0] = b'X';
        assert_eq!(decode_entry(&magic), None, "other format");
    }

    #[test]
    fn the_key_covers_source_target_and_nvrtc_version() {
        let k = cache_key("a", "sm_90", (13, 0));
        assert_ne!(k, cache_key("b", "sm_90", (13, 0)));
        assert_ne!(k, cache_key("a", "sm_100", (13, 0)));
        assert_ne!(k, cache_key("a", "sm_90", (13, 2)));
        assert_eq!(k, cache_key("a", "sm_90", (13, 0)));
        assert_ne!(fnv1a64(&[b"ab", b"c"]), fnv1a64(&[b"a", b"bc"]));
    }

    #[test]
    fn entries_are_written_whole_and_replaced() {
        let dir = std::env::temp_dir().join(format!("chorus-kcache-unit-{}", std::process::id()));
        let cache = KernelCache::at(&dir);
        let p = cache.entry_path("part_3.cu", "sm_90", 0xabc).unwrap();
        assert!(p.starts_with(&dir) && p.file_name().unwrap().to_str().unwrap().starts_with("part_3-sm_90-"));
        write_entry(&p, b"first").unwrap();
        write_entry(&p, b"second").unwrap();
        assert_eq!(decode_entry(&std::fs::read(&p).unwrap()), Some(&b"second"[..]));
        let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().filter(|e| e.as_ref().unwrap().path() != p).collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
        assert!(KernelCache::disabled().entry_path("x", "sm_90", 1).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
