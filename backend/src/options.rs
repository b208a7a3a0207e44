//! Group options: every setting a group reads is here, taken from the environment once (by
//! [`Options::default`], before the group is created); library code reads no `CHORUS_*`
//! variable on its own. The settings every rank must share ([`Agreed`]) travel in each rank's
//! peer record and are compared at rendezvous.
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Options for creating a process group. Defaults come from the environment:
/// `CHORUS_TIMEOUT_MS` (per-operation deadline, default 300 s), `CHORUS_HOST_ID` (host identity
/// override), `CHORUS_SOCKET_IFADDR` (the address peers reach this rank at), `CHORUS_FT`,
/// `CHORUS_FT_SAVE_LIMIT`, `CHORUS_FAILURE_POLICY`, `CHORUS_CUDA_PATH`, `CHORUS_SHM_CHUNK`,
/// `CHORUS_TCP_CHUNK`, `CHORUS_RDMA_CHUNK`, `CHORUS_ALGO`, `CHORUS_HEARTBEAT_MS`,
/// `CHORUS_HEARTBEAT_TIMEOUT_MS`, `CHORUS_SPIN_US`, `CHORUS_YIELD_US`, `CHORUS_MEMBERSHIP_REPLICAS`, and the `CHORUS_IB_*`
/// settings of [`RdmaOptions`] (see each field). Variables that are not per group are listed,
/// with the reason, in docs/design.md ("Configuration").
#[derive(Clone, Debug)]
pub struct Options {
    /// Every wait inside an operation gives up after this long (`CHORUS_TIMEOUT_MS`, default
    /// 300 s; see [`Options::with_caller_timeout`] for a caller's own timeout, as torch's).
    pub timeout: Duration,
    /// What set [`Options::timeout`]: timeout errors name it, so the user raises the right knob.
    pub timeout_knob: TimeoutKnob,
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
    /// Slot size of the shared-memory rings, bytes (`CHORUS_SHM_CHUNK`, default 256 KiB, rounded
    /// up to 64). Every rank must use the same: it sets the segments' layout.
    pub shm_chunk: usize,
    /// Slot size of the socket rings, bytes (`CHORUS_TCP_CHUNK`, default 512 KiB); every rank
    /// must use the same.
    pub tcp_chunk: usize,
    /// Slot size of the RDMA rings, bytes (`CHORUS_RDMA_CHUNK`, default 512 KiB, at most 64 MiB);
    /// every rank must use the same.
    pub rdma_chunk: usize,
    /// Forces an algorithm where it applies (`CHORUS_ALGO=direct|rs_ag|ring|chain|rs_gather|hier`;
    /// benchmarks and tests). Every rank must use the same: ranks run one plan together.
    pub algo: Option<String>,
    /// Every rank beats to its peers this often (`CHORUS_HEARTBEAT_MS`, default 100).
    pub heartbeat_interval: Duration,
    /// A peer whose beats stopped for this long is suspected dead (`CHORUS_HEARTBEAT_TIMEOUT_MS`,
    /// default 2000).
    pub heartbeat_timeout: Duration,
    /// How long a waiter spins before it yields (`CHORUS_SPIN_US`; `None`: 50 us, or 2 us when a
    /// host has more ranks than cores).
    pub spin: Option<Duration>,
    /// How long it then yields before it sleeps (`CHORUS_YIELD_US`; `None`: 2 ms, or 0.5 ms with
    /// more ranks than cores).
    pub yield_for: Option<Duration>,
    /// Membership without a single point of failure (on with fault tolerance;
    /// `CHORUS_MEMBERSHIP_REPLICAS=0` turns it off): every rank serves a replica of the
    /// membership records, and recovery rounds agree through a majority of the replicas and the
    /// job's store, so the group goes on after the store's host dies (`group::replicas`). Every
    /// rank must use the same.
    pub membership_replicas: bool,
    /// For a replacement ([`crate::ProcessGroup::join`]): replica addresses of members
    /// (`ProcessGroup::replica_address` on each; `CHORUS_JOIN_VIA`, comma-separated) to find the
    /// group through instead of the job's store, for when the process that hosted the store is
    /// gone. Empty: through the store given to `join`.
    pub join_via: Vec<String>,
    /// A directory that the ranks and their launcher share (`CHORUS_REPLICA_DIR`; `chorus-run`
    /// sets one): each rank writes its replica address to `<dir>/<group name>/<rank>` once its
    /// group is up, and a replacement with no [`Options::join_via`] finds the group through the
    /// addresses there (the others' ranks), so a launcher can restart a rank after the store died
    /// without knowing anything of replicas.
    pub replica_dir: Option<std::path::PathBuf>,
    /// The ranks present when the group is created (`CHORUS_INITIAL_MEMBERS`, e.g. `0-3` or
    /// `0,1,5`); `None`: every rank. The others are empty slots: inactive from the start, skipped
    /// by collectives like failed ranks, and filled later by a process that joins them
    /// ([`crate::ProcessGroup::join`]), which the members admit between two collectives. Every
    /// rank must use the same; subgroups start with every rank.
    pub initial_members: Option<Vec<usize>>,
    /// RDMA device selection and queue-pair attributes (`CHORUS_IB_*`).
    pub rdma: RdmaOptions,
}

/// Parses a rank list: comma-separated ranks and inclusive ranges (`0-3,6`), ascending and
/// without duplicates once parsed; `None` if anything is not a rank or a range.
pub fn parse_ranks(v: &str) -> Option<Vec<usize>> {
    let mut out = Vec::new();
    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (a.trim().parse::<usize>().ok()?, b.trim().parse::<usize>().ok()?);
                if a > b {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().ok()?),
        }
    }
    out.sort_unstable();
    out.dedup();
    Some(out)
}

/// What set a group's timeout ([`Options::timeout`]); a timeout error names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutKnob {
    /// Nothing did: the default of 300 s.
    Default,
    /// `CHORUS_TIMEOUT_MS`.
    Env,
    /// [`Options::with_timeout`] (a Rust caller).
    Options,
    /// The caller's own timeout at group creation: the `timeout_ms` argument of
    /// `chorus_group_create*`/`chorus_group_join*`, which the torch backend sets from the
    /// `timeout=` of `init_process_group`/`new_group` (or `chorus.Options(timeout=)`).
    Caller,
}

impl std::fmt::Display for TimeoutKnob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TimeoutKnob::Default => "set CHORUS_TIMEOUT_MS (the default, 300000 ms, applied)",
            TimeoutKnob::Env => "raise CHORUS_TIMEOUT_MS, which set it",
            TimeoutKnob::Options => "raise Options::timeout (Options::with_timeout), which set it",
            TimeoutKnob::Caller => {
                "raise the timeout the group was created with, which set it: under torch the timeout= of \
                 init_process_group/new_group (or chorus.Options(timeout=)), in C the timeout_ms of \
                 chorus_group_create/chorus_group_join"
            }
        })
    }
}

/// RDMA settings (`CHORUS_IB_*`, as NCCL's `NCCL_IB_*`). None must agree between ranks: device,
/// port and GID are per host; a rank without RDMA (`CHORUS_IB_DISABLE`, or no device) publishes
/// no port and its pairs fall back to TCP on both ends; the queue-pair attributes (timeout,
/// retries, service level, traffic class) are set by each side on its own queue pair.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RdmaOptions {
    /// Do not use RDMA (`CHORUS_IB_DISABLE`, any value but empty or `0`).
    pub disable: bool,
    /// Which devices and ports to use (`CHORUS_IB_HCA`, as `NCCL_IB_HCA`: `mlx5_0:1`,
    /// `^mlx5_2`, `=mlx5_1`; unset: every device). Checked when the device is opened.
    pub hca: Option<String>,
    /// Forces the GID index (`CHORUS_IB_GID_INDEX`; unset: chosen per link layer). A value that
    /// is not a number is reported when the device is opened.
    pub gid_index: Option<String>,
    /// Local ACK timeout exponent of the queue pairs, 4.096 us * 2^n (`CHORUS_IB_TIMEOUT`,
    /// default 14).
    pub timeout: u8,
    /// Retries after a transport error (`CHORUS_IB_RETRY_CNT`, default 7).
    pub retry_cnt: u8,
    /// Service level (`CHORUS_IB_SL`, default 0).
    pub service_level: u8,
    /// Traffic class (`CHORUS_IB_TC`, default 0).
    pub traffic_class: u8,
}

impl RdmaOptions {
    /// The `CHORUS_IB_*` variables (read by [`Options::default`]).
    pub fn from_env() -> RdmaOptions {
        let u8_var = |name: &str, default: u8| std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default);
        RdmaOptions {
            disable: std::env::var("CHORUS_IB_DISABLE").is_ok_and(|v| !v.is_empty() && v != "0"),
            hca: std::env::var("CHORUS_IB_HCA").ok().filter(|v| !v.trim().is_empty()),
            gid_index: std::env::var("CHORUS_IB_GID_INDEX").ok().filter(|v| !v.trim().is_empty()),
            timeout: u8_var("CHORUS_IB_TIMEOUT", 14),
            retry_cnt: u8_var("CHORUS_IB_RETRY_CNT", 7),
            service_level: u8_var("CHORUS_IB_SL", 0),
            traffic_class: u8_var("CHORUS_IB_TC", 0),
        }
    }
}

impl Default for RdmaOptions {
    /// Every setting at its default, whatever the environment says.
    fn default() -> Self {
        RdmaOptions { disable: false, hca: None, gid_index: None, timeout: 14, retry_cnt: 7, service_level: 0, traffic_class: 0 }
    }
}

/// The settings every rank of a group must share, as they travel in the peer record: a rank
/// whose settings differ from a peer's fails group creation, on every rank, with an error naming
/// the setting, both values and both ranks.
///
/// Not here, because ranks may differ on them: the timeout and the spin/yield times (each rank's
/// own waits); `ft_save_limit` (each rank reports whether it saved its input, and the recovery
/// decision re-runs a collective only if every survivor inside it did, so all reach the same
/// ending); heartbeat interval and timeout (each rank's timeout governs only its own suspicion,
/// and the membership agreement gives every rank the same view; a rank's interval must stay
/// well below its peers' timeouts); the RDMA settings ([`RdmaOptions`]); the host id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agreed {
    pub shm_chunk: usize,
    pub tcp_chunk: usize,
    pub rdma_chunk: usize,
    pub algo: Option<String>,
    pub fault_tolerance: bool,
    pub policy: String,
    /// Ranks run one plan together: a GPU collective on the kernels on one rank and on the host
    /// path on another would wait for each other in different places until the timeout.
    pub device_path: String,
    /// The ranks present at creation (`None`: all), so every rank starts from the same view.
    pub initial_members: Option<Vec<usize>>,
}

impl Agreed {
    /// Every setting as (the variable that sets it, its value in words).
    fn entries(&self) -> [(&'static str, String); 8] {
        [
            ("CHORUS_SHM_CHUNK", self.shm_chunk.to_string()),
            ("CHORUS_TCP_CHUNK", self.tcp_chunk.to_string()),
            ("CHORUS_RDMA_CHUNK", self.rdma_chunk.to_string()),
            ("CHORUS_ALGO", self.algo.clone().unwrap_or_else(|| "(unset)".into())),
            ("CHORUS_FT", (self.fault_tolerance as u8).to_string()),
            ("CHORUS_FAILURE_POLICY", self.policy.clone()),
            ("CHORUS_CUDA_PATH", self.device_path.clone()),
            ("CHORUS_INITIAL_MEMBERS", self.initial_members.as_ref().map_or_else(|| "(every rank)".into(), |m| format!("{m:?}"))),
        ]
    }

    /// The first setting on which `self` and `theirs` differ: (setting, ours, theirs).
    pub fn first_difference(&self, theirs: &Agreed) -> Option<(&'static str, String, String)> {
        self.entries().into_iter().zip(theirs.entries()).find(|((_, a), (_, b))| a != b).map(|((name, a), (_, b))| (name, a, b))
    }
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

/// An algorithm forced by `Options::algo`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForcedAlgo {
    Direct,
    RsAg,
    Ring,
    Chain,
    RsGather,
    /// The two-level (host-aware) schedules, even on one host or one rank per host.
    Hier,
}

impl ForcedAlgo {
    /// The algorithm `name` names; an unknown name forces nothing (logged).
    pub fn parse(name: &str) -> Option<ForcedAlgo> {
        let forced = match name {
            "direct" => ForcedAlgo::Direct,
            "rs_ag" => ForcedAlgo::RsAg,
            "ring" => ForcedAlgo::Ring,
            "chain" => ForcedAlgo::Chain,
            "rs_gather" => ForcedAlgo::RsGather,
            "hier" => ForcedAlgo::Hier,
            other => {
                tracing::warn!(algo = other, "CHORUS_ALGO names no algorithm (direct, rs_ag, ring, chain, rs_gather, hier): choosing as usual");
                return None;
            }
        };
        Some(forced)
    }
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

fn env_bytes(var: &str) -> Option<usize> {
    std::env::var(var).ok().and_then(|v| v.trim().parse::<usize>().ok())
}

fn env_ms(var: &str) -> Option<Duration> {
    std::env::var(var).ok().and_then(|v| v.trim().parse::<u64>().ok()).map(Duration::from_millis)
}

fn env_us(var: &str) -> Option<Duration> {
    std::env::var(var).ok().and_then(|v| v.trim().parse::<u64>().ok()).map(Duration::from_micros)
}

/// A ring slot size as the transports use it: at least 64 bytes, a multiple of 64.
pub fn slot_bytes(requested: usize) -> usize {
    requested.max(64).div_ceil(64) * 64
}

impl Default for Options {
    fn default() -> Self {
        let env_timeout = std::env::var("CHORUS_TIMEOUT_MS").ok().and_then(|v| v.trim().parse::<u64>().ok()).map(Duration::from_millis);
        Options {
            timeout: env_timeout.unwrap_or(DEFAULT_TIMEOUT),
            timeout_knob: if env_timeout.is_some() { TimeoutKnob::Env } else { TimeoutKnob::Default },
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
            shm_chunk: env_bytes("CHORUS_SHM_CHUNK").unwrap_or(256 * 1024),
            tcp_chunk: env_bytes("CHORUS_TCP_CHUNK").unwrap_or(512 * 1024),
            rdma_chunk: env_bytes("CHORUS_RDMA_CHUNK").unwrap_or(512 * 1024),
            algo: std::env::var("CHORUS_ALGO").ok().filter(|v| !v.is_empty()),
            heartbeat_interval: env_ms("CHORUS_HEARTBEAT_MS").unwrap_or(Duration::from_millis(100)),
            heartbeat_timeout: env_ms("CHORUS_HEARTBEAT_TIMEOUT_MS").unwrap_or(Duration::from_millis(2000)),
            spin: env_us("CHORUS_SPIN_US"),
            yield_for: env_us("CHORUS_YIELD_US"),
            membership_replicas: std::env::var("CHORUS_MEMBERSHIP_REPLICAS").map(|v| v != "0").unwrap_or(true),
            join_via: std::env::var("CHORUS_JOIN_VIA").map(|v| v.split(',').map(str::trim).filter(|a| !a.is_empty()).map(str::to_string).collect()).unwrap_or_default(),
            replica_dir: std::env::var_os("CHORUS_REPLICA_DIR").filter(|d| !d.is_empty()).map(Into::into),
            initial_members: std::env::var("CHORUS_INITIAL_MEMBERS").ok().filter(|v| !v.trim().is_empty()).map(|v| {
                // A list that does not parse would silently start a full group: say so, and let
                // creation fail on the ranks (an empty list names nobody present).
                parse_ranks(&v).unwrap_or_else(|| {
                    tracing::warn!(value = %v, "CHORUS_INITIAL_MEMBERS is not a rank list like 0-3 or 0,1,5");
                    Vec::new()
                })
            }),
            rdma: RdmaOptions::from_env(),
        }
    }
}

/// [`Options::timeout`] when neither `CHORUS_TIMEOUT_MS` nor the caller sets one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

impl Options {
    /// Sets [`Options::initial_members`]: the group starts with only these ranks present.
    pub fn with_initial_members(mut self, ranks: &[usize]) -> Self {
        let mut r = ranks.to_vec();
        r.sort_unstable();
        r.dedup();
        self.initial_members = Some(r);
        self
    }

    /// The ranks present when a group of `size` ranks is created.
    pub fn present_at_creation(&self, size: usize) -> Vec<usize> {
        match &self.initial_members {
            Some(m) => m.iter().copied().filter(|&r| r < size).collect(),
            None => (0..size).collect(),
        }
    }

    /// Sets [`Options::membership_replicas`].
    pub fn with_membership_replicas(mut self, on: bool) -> Self {
        self.membership_replicas = on;
        self
    }
    /// Sets [`Options::join_via`].
    pub fn with_join_via(mut self, addrs: Vec<String>) -> Self {
        self.join_via = addrs;
        self
    }
    /// Sets [`Options::replica_dir`].
    pub fn with_replica_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.replica_dir = Some(dir.into());
        self
    }
    /// Sets [`Options::timeout`] (this overrides `CHORUS_TIMEOUT_MS`).
    pub fn with_timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self.timeout_knob = TimeoutKnob::Options;
        self
    }
    /// A timeout the caller always passes (the C ABI's `timeout_ms`, which torch sets from its
    /// own `timeout=`): it applies unless `CHORUS_TIMEOUT_MS` is set and no longer, so the
    /// variable bounds chorus's waits under torch too. A tie is credited to the variable.
    pub fn with_caller_timeout(mut self, t: Duration) -> Self {
        if !(self.timeout_knob == TimeoutKnob::Env && self.timeout <= t) {
            self.timeout = t;
            self.timeout_knob = TimeoutKnob::Caller;
        }
        self
    }
    /// See [`Options::rdma`].
    pub fn with_rdma(mut self, rdma: RdmaOptions) -> Self {
        self.rdma = rdma;
        self
    }
    /// Sets [`Options::host_id`].
    pub fn with_host_id(mut self, id: impl Into<String>) -> Self {
        self.host_id = Some(id.into());
        self
    }
    /// Sets [`Options::fault_tolerance`] (this overrides `CHORUS_FT`).
    pub fn with_fault_tolerance(mut self, on: bool) -> Self {
        self.fault_tolerance = on;
        self
    }
    /// See [`Options::ft_save_limit`].
    pub fn with_ft_save_limit(mut self, bytes: usize) -> Self {
        self.ft_save_limit = bytes;
        self
    }
    /// Sets [`Options::device_path`] (this overrides `CHORUS_CUDA_PATH`).
    pub fn with_device_path(mut self, p: DevicePath) -> Self {
        self.device_path = p;
        self
    }

    /// Sets [`Options::policy`] (this overrides `CHORUS_FAILURE_POLICY`).
    pub fn with_policy(mut self, p: FailurePolicy) -> Self {
        self.policy = p;
        self
    }
    /// Sets [`Options::name`].
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
    /// See [`Options::shm_chunk`].
    pub fn with_shm_chunk(mut self, bytes: usize) -> Self {
        self.shm_chunk = bytes;
        self
    }
    /// See [`Options::tcp_chunk`].
    pub fn with_tcp_chunk(mut self, bytes: usize) -> Self {
        self.tcp_chunk = bytes;
        self
    }
    /// See [`Options::algo`].
    pub fn with_algo(mut self, algo: Option<String>) -> Self {
        self.algo = algo;
        self
    }

    /// The settings every rank must share, as published in this rank's peer record.
    pub fn agreed(&self) -> Agreed {
        Agreed {
            shm_chunk: slot_bytes(self.shm_chunk),
            tcp_chunk: slot_bytes(self.tcp_chunk),
            rdma_chunk: slot_bytes(self.rdma_chunk.clamp(64, 64 << 20)),
            algo: self.algo.clone(),
            fault_tolerance: self.fault_tolerance,
            policy: match self.policy {
                FailurePolicy::Shrink => "shrink".into(),
                FailurePolicy::Abort => "abort".into(),
            },
            device_path: match self.device_path {
                DevicePath::Kernels => "kernels".into(),
                DevicePath::Host => "host".into(),
            },
            initial_members: self.initial_members.clone(),
        }
    }
}

/// This host's identity: hostname, boot id and network namespace (ranks in different network
/// namespaces are treated as different hosts).
pub fn default_host_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    format!("{}|{}|{}", host.trim(), boot.trim(), crate::sys::proc::netns_id())
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

    #[test]
    fn agreed_settings_name_the_first_difference() {
        let a = Options::default().with_shm_chunk(4096).with_algo(None);
        assert_eq!(a.agreed().first_difference(&a.agreed()), None);
        // Rounded like the rings round them: 4000 and 4032 bytes make the same slots.
        assert_eq!(a.clone().with_shm_chunk(4000).agreed().first_difference(&a.clone().with_shm_chunk(4032).agreed()), None);
        let b = a.clone().with_shm_chunk(8192);
        assert_eq!(a.agreed().first_difference(&b.agreed()), Some(("CHORUS_SHM_CHUNK", "4096".into(), "8192".into())));
        let c = a.clone().with_algo(Some("ring".into()));
        assert_eq!(a.agreed().first_difference(&c.agreed()), Some(("CHORUS_ALGO", "(unset)".into(), "ring".into())));
        let d = a.clone().with_device_path(DevicePath::Host);
        assert_eq!(a.clone().with_device_path(DevicePath::Kernels).agreed().first_difference(&d.agreed()), Some(("CHORUS_CUDA_PATH", "kernels".into(), "host".into())));
    }

    #[test]
    fn caller_timeout_is_bounded_by_an_explicit_variable() {
        let env = |ms| Options { timeout: Duration::from_millis(ms), timeout_knob: TimeoutKnob::Env, ..Options::default() };
        let unset = Options { timeout: DEFAULT_TIMEOUT, timeout_knob: TimeoutKnob::Default, ..Options::default() };
        // Torch's 30 minutes, CHORUS_TIMEOUT_MS=2000: the variable wins and is named.
        let o = env(2000).with_caller_timeout(Duration::from_secs(1800));
        assert_eq!((o.timeout, o.timeout_knob), (Duration::from_millis(2000), TimeoutKnob::Env));
        // A shorter caller timeout wins over the variable.
        let o = env(60_000).with_caller_timeout(Duration::from_secs(5));
        assert_eq!((o.timeout, o.timeout_knob), (Duration::from_secs(5), TimeoutKnob::Caller));
        // Without the variable the caller's timeout applies, even above the default.
        let o = unset.clone().with_caller_timeout(Duration::from_secs(1800));
        assert_eq!((o.timeout, o.timeout_knob), (Duration::from_secs(1800), TimeoutKnob::Caller));
        // A Rust caller's explicit timeout overrides the variable.
        let o = env(2000).with_timeout(Duration::from_secs(9));
        assert_eq!((o.timeout, o.timeout_knob), (Duration::from_secs(9), TimeoutKnob::Options));
        assert!(TimeoutKnob::Env.to_string().contains("CHORUS_TIMEOUT_MS"));
        assert!(TimeoutKnob::Caller.to_string().contains("init_process_group"));
    }
}
