//! Test support: builds `softverbs.c` (a software libibverbs, see its header comment) and gives
//! the environment that makes chorus load it instead of `libibverbs.so.1`. Used by the backend's
//! `rdma_softverbs` tests and the root multi-process suites (through `#[path]`).
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The C source, from the backend package (its own tests) or the workspace root (root tests).
fn source() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    [root.join("tests/softverbs/softverbs.c"), root.join("backend/tests/softverbs/softverbs.c")]
        .into_iter()
        .find(|p| p.exists())
        .expect("softverbs.c next to this module")
}

/// Where the library is built: next to this test binary's target directory, once per process
/// (built under a temporary name and renamed, so concurrent test binaries never load a partial
/// file).
/// `SOFTVERBS_LIB` names a prebuilt library instead (a machine without a compiler or the verbs
/// header, such as the GPU machine).
pub fn library() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        if let Some(prebuilt) = std::env::var_os("SOFTVERBS_LIB") {
            return PathBuf::from(prebuilt);
        }
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("softverbs");
        std::fs::create_dir_all(&dir).expect("softverbs build directory");
        let out = dir.join("libsoftverbs.so");
        let tmp = dir.join(format!("libsoftverbs.so.{}", std::process::id()));
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let o = Command::new(&cc)
            .args(["-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-o"])
            .arg(&tmp)
            .arg(source())
            .arg("-lpthread")
            .output()
            .unwrap_or_else(|e| panic!("running {cc} to build softverbs: {e}"));
        let err = String::from_utf8_lossy(&o.stderr);
        if !o.status.success() {
            let hint = if err.contains("infiniband/verbs.h") {
                "\nsoftverbs is compiled against rdma-core's <infiniband/verbs.h>: install libibverbs-dev (scripts/test-all does)"
            } else {
                ""
            };
            panic!("building softverbs failed:\n{err}{hint}");
        }
        std::fs::rename(&tmp, &out).expect("installing libsoftverbs.so");
        out
    })
}

/// The fabric directory of this test process (QP and MR tables of every process that uses it),
/// fresh per test process; directories of test processes that are gone are removed first.
pub fn fabric() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Ok(rd) = std::fs::read_dir("/dev/shm") {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("chorus-softverbs-").and_then(|p| p.parse::<u32>().ok()) {
                    if !Path::new(&format!("/proc/{pid}")).exists() {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
        }
        let dir = PathBuf::from(format!("/dev/shm/chorus-softverbs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("softverbs fabric directory");
        dir
    })
}

/// Environment for a process that should use softverbs as its RDMA device.
pub fn env() -> Vec<(String, String)> {
    vec![
        ("CHORUS_IBVERBS_LIB".into(), library().display().to_string()),
        ("SOFTVERBS_DIR".into(), fabric().display().to_string()),
        ("CHORUS_IB_HCA".into(), "=softverbs0".into()),
    ]
}

/// Sets [`env`] in this process (before the first RDMA probe, which happens once per process).
pub fn use_in_this_process() {
    for (k, v) in env() {
        std::env::set_var(k, v);
    }
}
