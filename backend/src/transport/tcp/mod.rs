//! `tcp`: ranks on different hosts exchange framed chunks over one socket per pair. Capability:
//! always (the fallback). Setup: every rank listens (bound before it published the address);
//! for each TCP pair the higher rank connects to the lower one and introduces itself. With a job
//! secret (`CHORUS_SECRET` / `CHORUS_SECRET_FILE`) the introduction is a mutual HMAC
//! challenge-response bound to the group and the claimed rank (`chorus_bootstrap::auth`); a
//! connection that cannot prove the secret is dropped before its rank is believed.
mod credits;
mod link;

pub use link::TcpLink;

use super::signals::SignalBlock;
use super::table::{Connected, Pairing, Ready, Setup, Transport};
#[cfg(test)]
use super::table::watch_nothing;
use super::{Link, PeerInfo, RingGeometry};
use crate::error::{ChorusError, Result};
use chorus_bootstrap::auth::{self, JobSecret, Role, MAC_LEN};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const NAME: &str = "tcp";
const HELLO_MAGIC: u32 = u32::from_le_bytes(*b"CHHI");
/// The introduction of a rank that will prove the job secret.
const HELLO_AUTH_MAGIC: u32 = u32::from_le_bytes(*b"CHHA");
const NONCE_LEN: usize = 32;
/// Introductions read at once; connections beyond are dropped until some finish.
const MAX_PENDING_INTRODUCTIONS: usize = 64;
/// How long an accepted connection may take to introduce itself.
const INTRODUCTION_TIMEOUT: Duration = Duration::from_secs(10);

/// The job secret of the environment, read when links are made.
fn job_secret() -> Result<Option<JobSecret>> {
    Ok(auth::secret_from_env()?)
}

/// What both proofs of an introduction are bound to: the group and the rank claimed.
fn proof_context(group_key: u64, rank: usize) -> [u8; 12] {
    let mut c = [0u8; 12];
    c[0..8].copy_from_slice(&group_key.to_le_bytes());
    c[8..12].copy_from_slice(&(rank as u32).to_le_bytes());
    c
}

pub fn can_connect(_me: &PeerInfo, _peer: &PeerInfo) -> bool {
    true
}

/// The key a connection introduces itself with, so a stray connection from another job or group
/// is dropped (FNV-1a of the group's uid).
pub fn group_key(uid: &str) -> u64 {
    uid.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

fn hello(group_key: u64, rank: usize) -> [u8; 16] {
    hello_with(HELLO_MAGIC, group_key, rank)
}

fn hello_with(magic: u32, group_key: u64, rank: usize) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&magic.to_le_bytes());
    b[4..8].copy_from_slice(&(rank as u32).to_le_bytes());
    b[8..16].copy_from_slice(&group_key.to_le_bytes());
    b
}

fn tune(s: &TcpStream) {
    let _ = s.set_nodelay(true);
}

/// The connector's half of an authenticated introduction: send our nonce, check the acceptor's
/// proof, send ours.
fn introduce_with_secret(s: &mut TcpStream, secret: &JobSecret, group_key: u64, me: usize, deadline: Instant) -> std::result::Result<(), String> {
    let client_nonce = auth::nonce(NONCE_LEN).map_err(|e| e.to_string())?;
    let mut intro = hello_with(HELLO_AUTH_MAGIC, group_key, me).to_vec();
    intro.extend_from_slice(&client_nonce);
    s.write_all(&intro).map_err(|e| format!("sending the introduction: {e}"))?;
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
    let mut answer = [0u8; NONCE_LEN + MAC_LEN];
    s.read_exact(&mut answer).map_err(|e| {
        format!("the peer closed or did not answer our introduction ({e}): does every rank have the same CHORUS_SECRET / CHORUS_SECRET_FILE?")
    })?;
    let (server_nonce, acceptor_proof) = answer.split_at(NONCE_LEN);
    let ctx = proof_context(group_key, me);
    if !secret.verify(Role::LinkAcceptor, &ctx, &client_nonce, server_nonce, acceptor_proof) {
        return Err("the peer's proof of the job secret does not match ours (another job's listener, or different CHORUS_SECRET values)".into());
    }
    s.write_all(&secret.prove(Role::LinkConnector, &ctx, server_nonce, &client_nonce))
        .map_err(|e| format!("sending our proof: {e}"))?;
    s.set_read_timeout(None).map_err(|e| e.to_string())
}

/// The acceptor's half: the introduction's nonce follows the hello; answer with ours and our
/// proof, then check the connector's.
fn check_introduction(s: &mut TcpStream, secret: &JobSecret, group_key: u64, rank: usize) -> std::result::Result<(), String> {
    let mut client_nonce = [0u8; NONCE_LEN];
    s.read_exact(&mut client_nonce).map_err(|e| format!("no nonce: {e}"))?;
    let server_nonce = auth::nonce(NONCE_LEN).map_err(|e| e.to_string())?;
    let ctx = proof_context(group_key, rank);
    let mut answer = server_nonce.clone();
    answer.extend_from_slice(&secret.prove(Role::LinkAcceptor, &ctx, &client_nonce, &server_nonce));
    s.write_all(&answer).map_err(|e| format!("answering: {e}"))?;
    let mut proof = [0u8; MAC_LEN];
    s.read_exact(&mut proof).map_err(|e| format!("no proof: {e}"))?;
    if secret.verify(Role::LinkConnector, &ctx, &server_nonce, &client_nonce, &proof) {
        Ok(())
    } else {
        Err("its proof does not match the job secret".into())
    }
}

/// Connects to `peer` (we are the higher rank) and introduces ourselves; `watch` fails the retries
/// early (see [`Setup::watch`]).
pub fn connect(me: usize, peer: &PeerInfo, group_key: u64, secret: Option<&JobSecret>, deadline: Instant, watch: &dyn Fn() -> Result<()>) -> Result<TcpStream> {
    let fail = |why: String| ChorusError::Connect { transport: NAME, peer: peer.rank, why };
    let addr: std::net::SocketAddr =
        peer.tcp_addr.parse().map_err(|e| fail(format!("bad published address {}: {e}", peer.tcp_addr)))?;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match TcpStream::connect_timeout(&addr, left.max(Duration::from_millis(1)).min(Duration::from_secs(5))) {
            Ok(mut s) => {
                tune(&s);
                match secret {
                    None => s.write_all(&hello(group_key, me)).map_err(|e| fail(format!("hello to {addr}: {e}")))?,
                    Some(secret) => introduce_with_secret(&mut s, secret, group_key, me, deadline)
                        .map_err(|why| fail(format!("introducing ourselves to {addr}: {why}")))?,
                }
                return Ok(s);
            }
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(peer = peer.rank, %addr, error = %e, "connect failed, retrying");
                watch()?;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(fail(format!("connecting to {addr} (check firewalls and CHORUS_SOCKET_IFADDR): {e}"))),
        }
    }
}

/// Reads (and with a secret, checks) one accepted connection's introduction: the rank it claims,
/// or why it was dropped.
fn read_introduction(s: &mut TcpStream, group_key: u64, secret: Option<&JobSecret>) -> std::result::Result<usize, String> {
    let mut b = [0u8; 16];
    s.read_exact(&mut b).map_err(|e| format!("no introduction: {e}"))?;
    let magic = u32::from_le_bytes(b[0..4].try_into().expect("4"));
    let key = u64::from_le_bytes(b[8..16].try_into().expect("8"));
    if (magic != HELLO_MAGIC && magic != HELLO_AUTH_MAGIC) || key != group_key {
        return Err("a connection from another job or group".into());
    }
    let rank = u32::from_le_bytes(b[4..8].try_into().expect("4")) as usize;
    match (secret, magic == HELLO_AUTH_MAGIC) {
        (None, false) => Ok(rank),
        (Some(_), false) => Err(format!("claiming rank {rank} without proving the job secret (does every rank have CHORUS_SECRET?)")),
        (None, true) => Err(format!("claiming rank {rank} and offering a job secret: this rank has none (set the same CHORUS_SECRET on every rank)")),
        (Some(secret), true) => check_introduction(s, secret, group_key, rank)
            .map(|()| rank)
            .map_err(|why| format!("claiming rank {rank}, failed to prove the job secret: {why}")),
    }
}

/// Accepts one introduction from each rank of `expected` on `listener`; returns (rank, stream)
/// pairs. A rank read off a socket is only trusted once it is one of `expected` and not seen yet.
/// With a secret, only a connection that proved it gets its rank read at all. Introductions are
/// read on their own short-lived threads (at most [`MAX_PENDING_INTRODUCTIONS`] at once), so a
/// connection that says nothing cannot hold up the others. `watch` fails the wait early (see
/// [`Setup::watch`]).
pub fn accept(listener: &TcpListener, expected: &[usize], group_key: u64, secret: Option<&JobSecret>, deadline: Instant, watch: &dyn Fn() -> Result<()>) -> Result<Vec<(usize, TcpStream)>> {
    let count = expected.len();
    let fail = |why: String| ChorusError::Connect { transport: NAME, peer: usize::MAX, why };
    listener.set_nonblocking(true).map_err(|e| fail(format!("listener: {e}")))?;
    let (introduced_tx, introduced) = crossbeam::channel::unbounded::<(usize, TcpStream, std::net::SocketAddr)>();
    let pending = Arc::new(AtomicUsize::new(0));
    let mut out: Vec<(usize, TcpStream)> = Vec::new();
    while out.len() < count {
        while let Ok((rank, s, from)) = introduced.try_recv() {
            if !expected.contains(&rank) || out.iter().any(|(r, _)| *r == rank) {
                return Err(ChorusError::Connect {
                    transport: NAME,
                    peer: rank,
                    why: format!("a connection from {from} introduced itself as rank {rank}, which is not one of the ranks expected to connect here ({expected:?}) or connected twice"),
                });
            }
            let _ = s.set_read_timeout(None);
            out.push((rank, s));
        }
        if out.len() == count {
            break;
        }
        match listener.accept() {
            Ok((mut s, from)) => {
                if pending.load(Ordering::SeqCst) >= MAX_PENDING_INTRODUCTIONS {
                    tracing::warn!(%from, "dropping a connection: too many introductions pending");
                    continue;
                }
                s.set_nonblocking(false).map_err(|e| fail(e.to_string()))?;
                tune(&s);
                let _ = s.set_read_timeout(Some(INTRODUCTION_TIMEOUT));
                let (tx, secret, pending) = (introduced_tx.clone(), secret.cloned(), pending.clone());
                pending.fetch_add(1, Ordering::SeqCst);
                let spawned = std::thread::Builder::new().name("chorus-tcp-intro".into()).spawn(move || {
                    match read_introduction(&mut s, group_key, secret.as_ref()) {
                        // The receiver is gone once accept returned: the stream is dropped then.
                        Ok(rank) => drop(tx.send((rank, s, from))),
                        Err(why) => tracing::warn!(%from, %why, "dropping a connection"),
                    }
                    pending.fetch_sub(1, Ordering::SeqCst);
                });
                if let Err(e) = spawned {
                    return Err(fail(format!("starting a thread to read an introduction: {e}")));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(fail(format!(
                        "timed out waiting for {} of {count} peers to connect (check that every rank started and can reach this host)",
                        count - out.len()
                    )));
                }
                watch()?;
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
        accept(listener, expected, group_key(s.uid), job_secret()?.as_ref(), s.deadline, s.watch)?
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
        let secret = job_secret()?;
        for p in peers.iter().filter(|p| p.rank < me) {
            let sock = connect(me, p, group_key(s.uid), secret.as_ref(), s.deadline, s.watch)?;
            links.push(Arc::new(link(me, p.rank, sock, self.geo, s.local.signals.clone())?));
        }
        let higher: Vec<usize> = peers.iter().map(|p| p.rank).filter(|&r| r > me).collect();
        links.extend(self.accept_links(s, &higher)?);
        Ok(Box::new(Ready(links)))
    }

    fn relink(&self, s: &Setup, joiner: &PeerInfo, _seq: u64, _counters: &mut dyn FnMut() -> Result<Vec<(u64, u64)>>) -> Result<Arc<dyn Link>> {
        let sock = connect(s.me.rank, joiner, group_key(s.uid), job_secret()?.as_ref(), s.deadline, s.watch)?;
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
            let err = accept(&listener, &expected, key, None, Instant::now() + Duration::from_secs(10), &watch_nothing).expect_err("an unexpected rank");
            assert!(err.to_string().contains(&format!("rank {claimed}")), "{err}");
            drop(client.join().unwrap());
        }
        // The same rank twice is refused too; the expected ones are accepted.
        let clients: Vec<_> = [1usize, 1].into_iter().map(|r| std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(&hello(key, r)).unwrap();
            s
        })).collect();
        let err = accept(&listener, &[1, 2], key, None, Instant::now() + Duration::from_secs(10), &watch_nothing).expect_err("rank 1 twice");
        assert!(err.to_string().contains("connected twice"), "{err}");
        clients.into_iter().for_each(|c| drop(c.join().unwrap()));
        let client = std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(&hello(key, 1)).unwrap();
            s
        });
        let got = accept(&listener, &[1], key, None, Instant::now() + Duration::from_secs(10), &watch_nothing).unwrap();
        assert_eq!(got.iter().map(|(r, _)| *r).collect::<Vec<_>>(), vec![1]);
        drop(client.join().unwrap());
    }

    /// With a job secret, an introduction without a proof or with a wrong one is dropped and the
    /// rank it claims is not believed; the rank that proves the secret is accepted (issue 17).
    #[test]
    fn with_a_secret_only_a_rank_that_proves_it_is_accepted() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let key = group_key("g");
        let secret = JobSecret::new("right").unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let acceptor = {
            let secret = secret.clone();
            std::thread::spawn(move || {
                accept(&listener, &[1], key, Some(&secret), deadline, &watch_nothing).map(|got| got.into_iter().map(|(r, _)| r).collect::<Vec<_>>())
            })
        };
        let mut plain = TcpStream::connect(addr).unwrap();
        plain.write_all(&hello(key, 1)).unwrap();
        let mut wrong = TcpStream::connect(addr).unwrap();
        let err = introduce_with_secret(&mut wrong, &JobSecret::new("wrong").unwrap(), key, 1, deadline).unwrap_err();
        assert!(err.contains("does not match"), "{err}");
        drop(wrong);
        let mut right = TcpStream::connect(addr).unwrap();
        introduce_with_secret(&mut right, &secret, key, 1, deadline).unwrap();
        assert_eq!(acceptor.join().unwrap().unwrap(), vec![1]);
        // The unproven connection was closed by the acceptor, not kept as rank 1.
        plain.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut rest = Vec::new();
        assert_eq!(plain.read_to_end(&mut rest).unwrap_or(0), 0);
    }

    /// A connection that never introduces itself does not hold up the ranks behind it: the
    /// rank's introduction (which waits for the acceptor's proof) has a deadline shorter than the
    /// introduction timeout, so reading introductions one after another would fail it (issue 17).
    #[test]
    fn a_silent_connection_does_not_hold_up_the_others() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let key = group_key("g");
        let secret = JobSecret::new("right").unwrap();
        let deadline = Instant::now() + INTRODUCTION_TIMEOUT / 2;
        let silent = TcpStream::connect(addr).unwrap();
        let acceptor = {
            let secret = secret.clone();
            std::thread::spawn(move || accept(&listener, &[1], key, Some(&secret), deadline, &watch_nothing).map(|got| got.into_iter().map(|(r, _)| r).collect::<Vec<_>>()))
        };
        let mut rank1 = TcpStream::connect(addr).unwrap();
        introduce_with_secret(&mut rank1, &secret, key, 1, deadline).unwrap();
        assert_eq!(acceptor.join().unwrap().unwrap(), vec![1]);
        drop(silent);
    }
}
