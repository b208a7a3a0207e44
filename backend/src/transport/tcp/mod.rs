//! `tcp`: ranks on different hosts exchange framed chunks over one socket per pair. Capability:
//! always (the fallback). Setup: every rank listens (bound before it published the address);
//! for each TCP pair the higher rank connects to the lower one and introduces itself.
mod link;

pub use link::TcpLink;

use super::signals::SignalBlock;
use super::table::{Connected, Pairing, Ready, Setup, Transport};
use super::{Link, PeerInfo, RingGeometry};
use crate::error::{ChorusError, Result};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const NAME: &str = "tcp";
const HELLO_MAGIC: u32 = u32::from_le_bytes(*b"CHHI");

pub fn can_connect(_me: &PeerInfo, _peer: &PeerInfo) -> bool {
    true
}

/// The key a connection introduces itself with, so a stray connection from another job or group
/// is dropped (FNV-1a of the group's uid).
pub fn group_key(uid: &str) -> u64 {
    uid.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
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

/// Accepts one introduction from each rank of `expected` on `listener`; returns (rank, stream)
/// pairs. A rank read off a socket is only trusted once it is one of `expected` and not seen yet.
pub fn accept(listener: &TcpListener, expected: &[usize], group_key: u64, deadline: Instant) -> Result<Vec<(usize, TcpStream)>> {
    let count = expected.len();
    let fail = |why: String| ChorusError::Connect { transport: NAME, peer: usize::MAX, why };
    listener.set_nonblocking(true).map_err(|e| fail(format!("listener: {e}")))?;
    let mut out: Vec<(usize, TcpStream)> = Vec::new();
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
                let rank = u32::from_le_bytes(b[4..8].try_into().expect("4")) as usize;
                if !expected.contains(&rank) || out.iter().any(|(r, _)| *r == rank) {
                    return Err(ChorusError::Connect {
                        transport: NAME,
                        peer: rank,
                        why: format!("a connection from {from} introduced itself as rank {rank}, which is not one of the ranks expected to connect here ({expected:?}) or connected twice"),
                    });
                }
                out.push((rank, s));
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
pub fn link(me: usize, peer: usize, stream: TcpStream, geo: RingGeometry, signals: SignalBlock) -> Result<TcpLink> {
    TcpLink::start(me, peer, stream, geo, signals)
}

/// The socket entry of the transport table (the fallback: it connects any pair).
pub struct Tcp {
    geo: RingGeometry,
}

impl Tcp {
    pub fn new(geo: RingGeometry) -> Tcp {
        Tcp { geo }
    }

    fn accept_links(&self, s: &Setup, expected: &[usize]) -> Result<Vec<Arc<dyn Link>>> {
        if expected.is_empty() {
            return Ok(Vec::new());
        }
        let listener = s.listener.ok_or_else(|| ChorusError::Connect { transport: NAME, peer: expected[0], why: "no listener to accept on".into() })?;
        accept(listener, expected, group_key(s.uid), s.deadline)?
            .into_iter()
            .map(|(r, sock)| Ok(Arc::new(link(s.me.rank, r, sock, self.geo, s.local.signals.clone())?) as Arc<dyn Link>))
            .collect()
    }
}

/// A replacement's socket pairs: the survivors connect to it when they serve the join.
struct Accepting {
    expected: Vec<usize>,
    tcp: Tcp,
}

impl Connected for Accepting {
    fn start(self: Box<Self>, s: &Setup, _counters: &dyn Fn(usize) -> Vec<(u64, u64)>) -> Result<Vec<Arc<dyn Link>>> {
        self.tcp.accept_links(s, &self.expected)
    }
}

impl Transport for Tcp {
    fn name(&self) -> &'static str {
        NAME
    }

    fn geometry(&self) -> RingGeometry {
        self.geo
    }

    /// The listener was bound and its address published in the peer record.
    fn prepare(&self, _s: &Setup) -> Result<()> {
        Ok(())
    }

    fn can_connect(&self, s: &Setup, peer: &PeerInfo) -> Result<bool> {
        Ok(can_connect(s.me, peer))
    }

    /// At group creation the higher rank of each pair connects and the lower accepts; a
    /// replacement accepts every survivor once they serve its join.
    fn connect(&self, s: &Setup, peers: &[&PeerInfo], pairing: Pairing) -> Result<Box<dyn Connected>> {
        let me = s.me.rank;
        if let Pairing::Join { .. } = pairing {
            return Ok(Box::new(Accepting { expected: peers.iter().map(|p| p.rank).collect(), tcp: Tcp::new(self.geo) }));
        }
        let mut links: Vec<Arc<dyn Link>> = Vec::new();
        for p in peers.iter().filter(|p| p.rank < me) {
            let sock = connect(me, p, group_key(s.uid), s.deadline)?;
            links.push(Arc::new(link(me, p.rank, sock, self.geo, s.local.signals.clone())?));
        }
        let higher: Vec<usize> = peers.iter().map(|p| p.rank).filter(|&r| r > me).collect();
        links.extend(self.accept_links(s, &higher)?);
        Ok(Box::new(Ready(links)))
    }

    fn relink(&self, s: &Setup, joiner: &PeerInfo, _seq: u64, _counters: &mut dyn FnMut() -> Result<Vec<(u64, u64)>>) -> Result<Arc<dyn Link>> {
        let sock = connect(s.me.rank, joiner, group_key(s.uid), s.deadline)?;
        Ok(Arc::new(link(s.me.rank, joiner.rank, sock, self.geo, s.local.signals.clone())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rank read off a socket indexes the link table only once it is one of the expected peers
    /// (issue 21: `join` indexed `links` with it unchecked).
    #[test]
    fn an_unexpected_rank_on_the_socket_is_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let key = group_key("g");
        for (claimed, expected) in [(99usize, vec![1usize]), (u32::MAX as usize, vec![1, 2]), (2, vec![1])] {
            let client = std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(&hello(key, claimed)).unwrap();
                s
            });
            let err = accept(&listener, &expected, key, Instant::now() + Duration::from_secs(10)).expect_err("an unexpected rank");
            assert!(err.to_string().contains(&format!("rank {claimed}")), "{err}");
            drop(client.join().unwrap());
        }
        // The same rank twice is refused too; the expected ones are accepted.
        let clients: Vec<_> = [1usize, 1].into_iter().map(|r| std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(&hello(key, r)).unwrap();
            s
        })).collect();
        let err = accept(&listener, &[1, 2], key, Instant::now() + Duration::from_secs(10)).expect_err("rank 1 twice");
        assert!(err.to_string().contains("connected twice"), "{err}");
        clients.into_iter().for_each(|c| drop(c.join().unwrap()));
        let client = std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(&hello(key, 1)).unwrap();
            s
        });
        let got = accept(&listener, &[1], key, Instant::now() + Duration::from_secs(10)).unwrap();
        assert_eq!(got.iter().map(|(r, _)| *r).collect::<Vec<_>>(), vec![1]);
        drop(client.join().unwrap());
    }
}
