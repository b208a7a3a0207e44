//! Listeners that bind before they publish (docs/design.md invariant 5).
//!
//! An address is only ever returned after the bind succeeded and the bound address was read back
//! from the socket, so two ranks can never publish the same port and a failed bind is never
//! reported as a running server.

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{BootstrapError, Result};

/// Environment variable restricting listener ports, e.g. `CHORUS_PORT_RANGE=40000-40100` (inclusive).
pub const PORT_RANGE_VAR: &str = "CHORUS_PORT_RANGE";
/// Environment variable forcing the IP this process advertises to peers.
pub const IFADDR_VAR: &str = "CHORUS_SOCKET_IFADDR";

/// Binds a listener on `ip`, in `CHORUS_PORT_RANGE` when set, else on an ephemeral port.
pub fn bind_listener(ip: IpAddr) -> Result<(TcpListener, SocketAddr)> {
    let range = match std::env::var(PORT_RANGE_VAR) {
        Ok(v) if !v.trim().is_empty() => Some(parse_port_range(&v)?),
        _ => None,
    };
    bind_listener_in_range(ip, range)
}

/// Parses `"lo-hi"` (inclusive, `0 < lo <= hi`).
pub fn parse_port_range(value: &str) -> Result<(u16, u16)> {
    let invalid = |reason: &str| BootstrapError::InvalidEnv {
        var: PORT_RANGE_VAR.into(),
        value: value.into(),
        reason: reason.into(),
    };
    let (lo, hi) = value
        .trim()
        .split_once('-')
        .ok_or_else(|| invalid("expected lo-hi, e.g. 40000-40100"))?;
    let lo: u16 = lo
        .trim()
        .parse()
        .map_err(|_| invalid("lower bound is not a port number"))?;
    let hi: u16 = hi
        .trim()
        .parse()
        .map_err(|_| invalid("upper bound is not a port number"))?;
    if lo == 0 || lo > hi {
        return Err(invalid("need 0 < lo <= hi"));
    }
    Ok((lo, hi))
}

/// Binds on `ip` at a port in `range` (inclusive), or an ephemeral port when `range` is `None`.
///
/// Ports are tried starting at a per-process pseudo-random offset (so ranks on one host spread out
/// instead of racing for the same port); a port in use is skipped, any other bind error is reported
/// at once. Returns the listener and its read-back address.
pub fn bind_listener_in_range(
    ip: IpAddr,
    range: Option<(u16, u16)>,
) -> Result<(TcpListener, SocketAddr)> {
    let Some((lo, hi)) = range else {
        return bind_one(SocketAddr::new(ip, 0)).map_err(|source| BootstrapError::ListenBind {
            addr: SocketAddr::new(ip, 0),
            source,
        });
    };
    let (lo, hi) = (lo.min(hi).max(1), hi.max(lo));
    let span = u32::from(hi - lo) + 1;
    let start = spread_seed() % span;
    for i in 0..span {
        let port = lo + ((start + i) % span) as u16;
        let addr = SocketAddr::new(ip, port);
        match bind_one(addr) {
            Ok(bound) => return Ok(bound),
            Err(e) if e.kind() == ErrorKind::AddrInUse => {
                tracing::trace!(%addr, "port in use, trying the next one");
            }
            Err(source) => return Err(BootstrapError::ListenBind { addr, source }),
        }
    }
    Err(BootstrapError::PortRangeExhausted { ip, lo, hi })
}

fn bind_one(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    Ok((listener, bound))
}

fn spread_seed() -> u32 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    std::process::id()
        .wrapping_mul(2_654_435_761)
        .wrapping_add(nanos)
}

/// Which local IP to advertise to peers: `CHORUS_SOCKET_IFADDR` (an IP) if set; else the source IP
/// the OS would route from to reach `master_addr` (a connected UDP socket sends nothing); 127.0.0.1
/// when `master_addr` is loopback or nothing better can be found (logged as a warning).
pub fn advertise_ip(master_addr: &str) -> IpAddr {
    if let Ok(v) = std::env::var(IFADDR_VAR) {
        match v.trim().parse::<IpAddr>() {
            Ok(ip) => return ip,
            Err(_) => tracing::warn!(value = %v, "{IFADDR_VAR} is not an IP address; ignoring it"),
        }
    }
    let host = master_addr.trim_start_matches('[').trim_end_matches(']');
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let target = match crate::env::resolve_host(host) {
        Ok(ip) => ip,
        Err(e) => {
            tracing::warn!(error = %e, "cannot resolve MASTER_ADDR; advertising 127.0.0.1");
            return loopback;
        }
    };
    if target.is_loopback() {
        return loopback;
    }
    let unspecified = if target.is_ipv6() {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    };
    let bind = SocketAddr::new(unspecified, 0);
    let routed = UdpSocket::bind(bind)
        .and_then(|s| s.connect(SocketAddr::new(target, 9)).map(|()| s))
        .and_then(|s| s.local_addr());
    match routed {
        Ok(a) if !a.ip().is_unspecified() => a.ip(),
        other => {
            tracing::warn!(?other, %target, "no route to MASTER_ADDR found; advertising 127.0.0.1 (set {IFADDR_VAR})");
            loopback
        }
    }
}
