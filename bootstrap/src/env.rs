//! Rendezvous settings from the environment (torchrun names, with SLURM fallbacks) and connecting to
//! the job's store.
//!
//! Every reader has a `*_from_vars` twin that takes a lookup function instead of reading the process
//! environment, so tests never have to mutate global state.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use crate::{BootstrapError, Result, Store, StoreClient, StoreServer};

/// Where and who this process is in the job.
#[derive(Debug, Clone)]
pub struct Rendezvous {
    /// Host of the job's store (`MASTER_ADDR`): a name or an IP address.
    pub master_addr: String,
    /// Port of the job's store (`MASTER_PORT`); rank 0 binds [`store_port`].
    pub master_port: u16,
    /// This process's rank (`RANK` / `SLURM_PROCID`), below `world_size`.
    pub rank: usize,
    /// Number of ranks in the job (`WORLD_SIZE` / `SLURM_NTASKS`).
    pub world_size: usize,
    /// This process's rank on its node (`LOCAL_RANK` / `SLURM_LOCALID`).
    pub local_rank: usize,
    /// Number of ranks on this node (`LOCAL_WORLD_SIZE` / `SLURM_NTASKS_PER_NODE`).
    pub local_world_size: usize,
    /// "host:port" of a store hosted by the launcher (`CHORUS_STORE_ADDR`), if any.
    pub store_addr: Option<String>,
}

/// Explicit settings that take precedence over the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Replaces `MASTER_ADDR`.
    pub master_addr: Option<String>,
    /// Replaces `MASTER_PORT`.
    pub master_port: Option<u16>,
    /// Replaces `RANK` / `SLURM_PROCID`.
    pub rank: Option<usize>,
    /// Replaces `WORLD_SIZE` / `SLURM_NTASKS`.
    pub world_size: Option<usize>,
    /// Replaces `LOCAL_RANK` / `SLURM_LOCALID`.
    pub local_rank: Option<usize>,
    /// Replaces `LOCAL_WORLD_SIZE` / `SLURM_NTASKS_PER_NODE`.
    pub local_world_size: Option<usize>,
}

/// A variable lookup: `std::env::var` in production, a map in tests.
pub type Vars<'a> = &'a dyn Fn(&str) -> Option<String>;

fn process_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Reads the rendezvous from the process environment. See [`from_vars`].
pub fn from_env() -> Result<Rendezvous> {
    from_vars(&process_var)
}

/// Explicit arguments override the environment; anything still missing is an error.
pub fn resolve(overrides: &Overrides) -> Result<Rendezvous> {
    resolve_from_vars(overrides, &process_var)
}

/// Reads `MASTER_ADDR`, `MASTER_PORT`, `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`
/// (torchrun's names); when torchrun's are absent, `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`,
/// `SLURM_NTASKS_PER_NODE`; and `CHORUS_STORE_ADDR` ("host:port"), set by a launcher that hosts the
/// store itself (then `MASTER_ADDR`/`MASTER_PORT` default to its host and port).
///
/// `LOCAL_RANK`/`LOCAL_WORLD_SIZE` default to `RANK`/`WORLD_SIZE` (a single-node job) with a warning,
/// since every launcher we support sets them.
pub fn from_vars(vars: Vars<'_>) -> Result<Rendezvous> {
    resolve_from_vars(&Overrides::default(), vars)
}

/// [`resolve`] with an explicit variable lookup.
pub fn resolve_from_vars(o: &Overrides, vars: Vars<'_>) -> Result<Rendezvous> {
    let get = |names: &[&str]| -> Option<(String, String)> {
        names.iter().find_map(|n| {
            vars(n)
                .filter(|v| !v.trim().is_empty())
                .map(|v| (n.to_string(), v.trim().to_string()))
        })
    };
    let num = |names: &[&str]| -> Result<Option<usize>> {
        get(names)
            .map(|(var, value)| parse_count(&var, &value))
            .transpose()
    };

    let store_addr = get(&["CHORUS_STORE_ADDR"]).map(|(_, v)| v);
    let store_host_port = match &store_addr {
        Some(a) => Some(
            split_host_port(a).ok_or_else(|| BootstrapError::InvalidEnv {
                var: "CHORUS_STORE_ADDR".into(),
                value: a.clone(),
                reason: "expected host:port".into(),
            })?,
        ),
        None => None,
    };

    let master_addr = o
        .master_addr
        .clone()
        .or_else(|| get(&["MASTER_ADDR"]).map(|(_, v)| v))
        .or_else(|| store_host_port.as_ref().map(|(h, _)| h.clone()));
    let master_port = match o.master_port {
        Some(p) => Some(p),
        None => match get(&["MASTER_PORT"]) {
            Some((var, value)) => {
                Some(
                    value
                        .parse::<u16>()
                        .map_err(|e| BootstrapError::InvalidEnv {
                            var,
                            value,
                            reason: format!("not a TCP port: {e}"),
                        })?,
                )
            }
            None => store_host_port.as_ref().map(|(_, p)| *p),
        },
    };
    let rank = o
        .rank
        .map(Ok)
        .or_else(|| num(&["RANK", "SLURM_PROCID"]).transpose())
        .transpose()?;
    let world_size = o
        .world_size
        .map(Ok)
        .or_else(|| num(&["WORLD_SIZE", "SLURM_NTASKS"]).transpose())
        .transpose()?;
    let local_rank = o
        .local_rank
        .map(Ok)
        .or_else(|| num(&["LOCAL_RANK", "SLURM_LOCALID"]).transpose())
        .transpose()?;
    let local_world_size = o
        .local_world_size
        .map(Ok)
        .or_else(|| num(&["LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"]).transpose())
        .transpose()?;

    let mut missing = Vec::new();
    if master_addr.is_none() {
        missing.push("MASTER_ADDR".to_string());
    }
    if master_port.is_none() {
        missing.push("MASTER_PORT".to_string());
    }
    if rank.is_none() {
        missing.push("RANK (or SLURM_PROCID)".to_string());
    }
    if world_size.is_none() {
        missing.push("WORLD_SIZE (or SLURM_NTASKS)".to_string());
    }
    let (Some(master_addr), Some(master_port), Some(rank), Some(world_size)) =
        (master_addr, master_port, rank, world_size)
    else {
        return Err(BootstrapError::MissingEnv { missing });
    };
    let (local_rank, local_world_size) = match (local_rank, local_world_size) {
        (Some(lr), Some(lws)) => (lr, lws),
        (lr, lws) => {
            tracing::warn!("LOCAL_RANK/LOCAL_WORLD_SIZE not set; assuming a single-node job");
            (lr.unwrap_or(rank), lws.unwrap_or(world_size))
        }
    };

    let invalid = |var: &str, value: usize, reason: String| BootstrapError::InvalidEnv {
        var: var.into(),
        value: value.to_string(),
        reason,
    };
    if world_size == 0 {
        return Err(invalid(
            "WORLD_SIZE",
            world_size,
            "must be at least 1".into(),
        ));
    }
    if rank >= world_size {
        return Err(invalid(
            "RANK",
            rank,
            format!("must be below WORLD_SIZE ({world_size})"),
        ));
    }
    if local_world_size == 0 || local_world_size > world_size {
        return Err(invalid(
            "LOCAL_WORLD_SIZE",
            local_world_size,
            format!("must be in 1..={world_size} (WORLD_SIZE)"),
        ));
    }
    if local_rank >= local_world_size {
        return Err(invalid(
            "LOCAL_RANK",
            local_rank,
            format!("must be below LOCAL_WORLD_SIZE ({local_world_size})"),
        ));
    }
    Ok(Rendezvous {
        master_addr,
        master_port,
        rank,
        world_size,
        local_rank,
        local_world_size,
        store_addr,
    })
}

/// Parses a count; SLURM's `SLURM_NTASKS_PER_NODE` may look like `"4(x2)"` or `"4,2"`, whose leading
/// number is this node's share on homogeneous jobs.
fn parse_count(var: &str, value: &str) -> Result<usize> {
    let digits: &str = if var.starts_with("SLURM_") {
        let end = value
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(value.len());
        &value[..end]
    } else {
        value
    };
    digits
        .parse::<usize>()
        .map_err(|e| BootstrapError::InvalidEnv {
            var: var.into(),
            value: value.into(),
            reason: format!("not a non-negative integer: {e}"),
        })
}

/// Splits "host:port" / "[v6]:port".
fn split_host_port(addr: &str) -> Option<(String, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host.to_string(), port.parse().ok()?))
}

/// Port of the chorus store when rank 0 hosts it: `MASTER_PORT`, except under torchrun with
/// `TORCHELASTIC_USE_AGENT_STORE=True`. There torch's elastic agent already runs its own TCPStore on
/// `MASTER_PORT`, so binding it would fail; chorus uses `MASTER_PORT + 1` instead (wrapping within
/// u16). Make sure that port is free too, or launch with `chorus-run` / set `CHORUS_STORE_ADDR`.
pub fn store_port(rdv: &Rendezvous) -> u16 {
    store_port_from_vars(rdv, &process_var)
}

/// [`store_port`] with an explicit variable lookup.
pub fn store_port_from_vars(rdv: &Rendezvous, vars: Vars<'_>) -> u16 {
    let agent_store = vars("TORCHELASTIC_USE_AGENT_STORE")
        .is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "1"));
    if agent_store {
        rdv.master_port.wrapping_add(1).max(1)
    } else {
        rdv.master_port
    }
}

/// Connects to the job's store: `CHORUS_STORE_ADDR` if set; otherwise rank 0 binds a
/// [`StoreServer`] on port [`store_port`] (before anyone can be told about it), and every rank —
/// rank 0 included — connects a [`StoreClient`] to `master_addr:store_port`.
///
/// Rank 0 binds on the loopback address when `master_addr` resolves to loopback, and on all
/// interfaces otherwise (like torch's TCPStore), since `master_addr` may be a name or NAT address
/// that is not literally assigned to a local interface. Keep the returned server alive for the job.
pub fn connect_store(
    rdv: &Rendezvous,
    timeout: Duration,
) -> Result<(Arc<dyn Store>, Option<StoreServer>)> {
    if let Some(addr) = &rdv.store_addr {
        let client = StoreClient::connect(addr, timeout)?.hosted_by("the process started for it (CHORUS_STORE_ADDR: chorus-run or a store server of its own)");
        return Ok((Arc::new(client), None));
    }
    let port = store_port(rdv);
    let host = rdv
        .master_addr
        .trim_start_matches('[')
        .trim_end_matches(']');
    let server = if rdv.rank == 0 {
        let ip = resolve_host(host)?;
        let bind_ip = if ip.is_loopback() {
            ip
        } else if ip.is_ipv6() {
            IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::from(Ipv4Addr::UNSPECIFIED)
        };
        Some(StoreServer::bind(SocketAddr::new(bind_ip, port))?)
    } else {
        None
    };
    let target = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let client = StoreClient::connect(&target, timeout)?.hosted_by("rank 0's process");
    Ok((Arc::new(client), server))
}

/// First address of `host` (IPv4 preferred).
pub(crate) fn resolve_host(host: &str) -> Result<IpAddr> {
    let addrs: Vec<SocketAddr> = (host, 0)
        .to_socket_addrs()
        .map_err(|e| BootstrapError::Resolve {
            host: host.into(),
            detail: e.to_string(),
        })?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .map(|a| a.ip())
        .ok_or_else(|| BootstrapError::Resolve {
            host: host.into(),
            detail: "no addresses".into(),
        })
}
