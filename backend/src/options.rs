//! Group options.
use std::time::Duration;

/// Options for creating a process group. Defaults come from the environment:
/// `CHORUS_TIMEOUT_MS` (per-operation deadline, default 300 s), `CHORUS_HOST_ID` (host identity
/// override), `CHORUS_SOCKET_IFADDR` (the address peers reach this rank at), `CHORUS_FT`,
/// `CHORUS_FT_SAVE_LIMIT`, `CHORUS_FAILURE_POLICY`, `CHORUS_CUDA_PATH` (see each field).
#[derive(Clone, Debug)]
pub struct Options {
    /// Every wait inside an operation gives up after this long.
    pub timeout: Duration,
    /// Ranks with equal host ids use shared memory with each other; `None` derives it from the
    /// hostname, boot id and network namespace.
    pub host_id: Option<String>,
    /// An address of the job (e.g. MASTER_ADDR) used to pick the local interface peers reach.
    pub route_hint: Option<String>,
    /// Name that keeps independent top-level groups on one store apart.
    pub name: String,
    /// What a collective does when a participant fails (`CHORUS_FAILURE_POLICY=shrink|abort`).
    pub policy: FailurePolicy,
    /// Fault tolerance (`CHORUS_FT=0` turns it off): a commit barrier ends every collective and
    /// in-place inputs are saved for re-runs. Off, a failure is an error and the group is unusable.
    pub fault_tolerance: bool,
    /// In-place reductions (all_reduce, and reduce on its root) whose buffer has at least this
    /// many bytes do not save their input (`CHORUS_FT_SAVE_LIMIT`, default 1 MiB = 1048576; `0`
    /// saves nothing, `usize::MAX` everything). A saved input costs a copy of the buffer per
    /// collective and a buffer of that size kept by the group; it lets a collective during which
    /// a rank died be re-run over the survivors. Without it, such a collective still completes
    /// when every survivor already holds its result; otherwise it fails with the same
    /// `NotRecoverable` error on every survivor (which then goes on, in step, with the next one).
    pub ft_save_limit: usize,
    /// How collectives on GPU memory run (`CHORUS_CUDA_PATH=kernels|host`).
    pub device_path: DevicePath,
}

/// How a collective on GPU memory runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DevicePath {
    /// NVLink/CUDA IPC kernels on the caller's stream (the default): fast, but a peer that dies
    /// mid-collective makes the kernels time out (`CHORUS_CUDA_TIMEOUT_MS`) and the device
    /// communicator unusable, as with NCCL.
    Kernels,
    /// Copy to the host, run the host collective, copy back: slower, but with the whole
    /// fault-tolerance contract (survivors finish, learn who failed, a replacement rejoins).
    Host,
}

/// Default of [`Options::ft_save_limit`]: 1 MiB.
pub const DEFAULT_FT_SAVE_LIMIT: usize = 1 << 20;

/// A byte count: decimal, optionally with a binary suffix (`K`, `M`, `G`, as `KiB` …), or `inf`
/// (no limit: save every input).
pub fn parse_bytes(v: &str) -> Option<usize> {
    let v = v.trim();
    if v.eq_ignore_ascii_case("inf") {
        return Some(usize::MAX);
    }
    let lower = v.to_ascii_lowercase();
    let digits = lower.trim_end_matches("ib").trim_end_matches('b');
    let (num, shift) = match digits.chars().last()? {
        'k' => (&digits[..digits.len() - 1], 10),
        'm' => (&digits[..digits.len() - 1], 20),
        'g' => (&digits[..digits.len() - 1], 30),
        _ => (digits, 0),
    };
    num.trim().parse::<usize>().ok()?.checked_mul(1usize << shift)
}

/// What survivors do with a collective during which a participant failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Complete it over the survivors (the default): every survivor returns the same result over
    /// the same contributors and learns who failed.
    Shrink,
    /// Fail it with an error on every survivor; later collectives run over the survivors.
    Abort,
}

impl Default for Options {
    fn default() -> Self {
        let timeout = std::env::var("CHORUS_TIMEOUT_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_millis)
            .unwrap_or(Duration::from_secs(300));
        Options {
            timeout,
            host_id: std::env::var("CHORUS_HOST_ID").ok(),
            route_hint: std::env::var("MASTER_ADDR").ok(),
            name: "default".into(),
            fault_tolerance: std::env::var("CHORUS_FT").map(|v| v != "0").unwrap_or(true),
            ft_save_limit: std::env::var("CHORUS_FT_SAVE_LIMIT").ok().and_then(|v| parse_bytes(&v)).unwrap_or(DEFAULT_FT_SAVE_LIMIT),
            device_path: match std::env::var("CHORUS_CUDA_PATH").as_deref() {
                Ok("host") => DevicePath::Host,
                _ => DevicePath::Kernels,
            },
            policy: match std::env::var("CHORUS_FAILURE_POLICY").as_deref() {
                Ok("abort") => FailurePolicy::Abort,
                _ => FailurePolicy::Shrink,
            },
        }
    }
}

impl Options {
    pub fn with_timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
    pub fn with_host_id(mut self, id: impl Into<String>) -> Self {
        self.host_id = Some(id.into());
        self
    }
    pub fn with_fault_tolerance(mut self, on: bool) -> Self {
        self.fault_tolerance = on;
        self
    }
    /// See [`Options::ft_save_limit`].
    pub fn with_ft_save_limit(mut self, bytes: usize) -> Self {
        self.ft_save_limit = bytes;
        self
    }
    pub fn with_device_path(mut self, p: DevicePath) -> Self {
        self.device_path = p;
        self
    }

    pub fn with_policy(mut self, p: FailurePolicy) -> Self {
        self.policy = p;
        self
    }
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
}

/// This host's identity: hostname, boot id and network namespace (ranks in different network
/// namespaces are treated as different hosts).
pub fn default_host_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    format!("{}|{}|{}", host.trim(), boot.trim(), crate::sys::proc::netns_id())
}

/// Installs a stderr logger filtered by `CHORUS_LOG` (e.g. `debug`, `chorus_backend=trace`) the
/// first time a group is created, unless the application installed its own subscriber.
pub fn init_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(filter) = std::env::var("CHORUS_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .try_init();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts() {
        assert_eq!(parse_bytes("1048576"), Some(1 << 20));
        assert_eq!(parse_bytes("0"), Some(0));
        assert_eq!(parse_bytes("256K"), Some(256 << 10));
        assert_eq!(parse_bytes("16MiB"), Some(16 << 20));
        assert_eq!(parse_bytes("2g"), Some(2 << 30));
        assert_eq!(parse_bytes("inf"), Some(usize::MAX));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes(""), None);
    }
}
