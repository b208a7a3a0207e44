//! `tcp`: ranks on different hosts exchange framed chunks over one socket per pair. Capability:
//! always (the fallback). Setup: every rank listens (bound before it published the address);
//! for each TCP pair the higher rank connects to the lower one and introduces itself.
mod link;

pub use link::TcpLink;

use super::{PeerInfo, RingGeometry};
use crate::engine::signals::SignalBlock;
use crate::error::{ChorusError, Result};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

pub const NAME: &str = "tcp";
const HELLO_MAGIC: u32 = u32::from_le_bytes(*b"CHHI");

pub fn can_connect(_me: &PeerInfo, _peer: &PeerInfo) -> bool {
    true
}

/// Ring geometry for socket pairs (`CHORUS_TCP_CHUNK`, bytes; every rank must use the same).
pub fn geometry() -> RingGeometry {
    let slot_bytes = std::env::var("CHORUS_TCP_CHUNK")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map(|v| v.max(64).div_ceil(64) * 64)
        .unwrap_or(512 * 1024);
    RingGeometry { slots: 4, slot_bytes }
}

fn hello(group_key: u64, rank: usize) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&HELLO_MAGIC.to_le_bytes());
    b[4..8].copy_from_slice(&(rank as u32).to_le_bytes());
    b[8..16].copy_from_slice(&group_key.to_le_bytes());
    b
}

fn tune(s: &TcpStream) {
    let _ = s.set_nodelay(true);
}

/// Connects to `peer` (we are the higher rank) and introduces ourselves.
pub fn connect(me: usize, peer: &PeerInfo, group_key: u64, deadline: Instant) -> Result<TcpStream> {
    let fail = |why: String| ChorusError::Connect { transport: NAME, peer: peer.rank, why };
    let addr: std::net::SocketAddr =
        peer.tcp_addr.parse().map_err(|e| fail(format!("bad published address {}: {e}", peer.tcp_addr)))?;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match TcpStream::connect_timeout(&addr, left.max(Duration::from_millis(1)).min(Duration::from_secs(5))) {
            Ok(mut s) => {
                tune(&s);
                s.write_all(&hello(group_key, me)).map_err(|e| fail(format!("hello to {addr}: {e}")))?;
                return Ok(s);
            }
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(peer = peer.rank, %addr, error = %e, "connect failed, retrying");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(fail(format!("connecting to {addr} (check firewalls and CHORUS_SOCKET_IFADDR): {e}"))),
        }
    }
}

/// Accepts `count` introductions on `listener`; returns (rank, stream) pairs.
pub fn accept(listener: &TcpListener, count: usize, group_key: u64, deadline: Instant) -> Result<Vec<(usize, TcpStream)>> {
    let fail = |why: String| ChorusError::Connect { transport: NAME, peer: usize::MAX, why };
    listener.set_nonblocking(true).map_err(|e| fail(format!("listener: {e}")))?;
    let mut out = Vec::new();
    while out.len() < count {
        match listener.accept() {
            Ok((mut s, from)) => {
                s.set_nonblocking(false).map_err(|e| fail(e.to_string()))?;
                tune(&s);
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let mut b = [0u8; 16];
                if let Err(e) = s.read_exact(&mut b) {
                    tracing::warn!(%from, error = %e, "dropping a connection that sent no introduction");
                    continue;
                }
                let _ = s.set_read_timeout(None);
                let magic = u32::from_le_bytes(b[0..4].try_into().expect("4"));
                let key = u64::from_le_bytes(b[8..16].try_into().expect("8"));
                if magic != HELLO_MAGIC || key != group_key {
                    tracing::warn!(%from, "dropping a connection from another job or group");
                    continue;
                }
                out.push((u32::from_le_bytes(b[4..8].try_into().expect("4")) as usize, s));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(fail(format!(
                        "timed out waiting for {} of {count} peers to connect (check that every rank started and can reach this host)",
                        count - out.len()
                    )));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(fail(format!("accept: {e}"))),
        }
    }
    Ok(out)
}

/// Wraps an introduced socket into a link whose reader thread fills our inbound rings.
pub fn link(me: usize, peer: usize, stream: TcpStream, signals: SignalBlock) -> Result<TcpLink> {
    TcpLink::start(me, peer, stream, geometry(), signals)
}
