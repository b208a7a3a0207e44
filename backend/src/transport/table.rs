//! The transport table, in NCCL's manner: every transport answers the same four questions
//! ([`Transport`]: can it connect a pair, what it publishes first, how it connects the pairs it
//! won, how it relinks a replacement), and group creation, a replacement's join and a survivor's
//! relink walk one ordered table. The first transport that can connect a pair wins.
use super::shm::LocalSegments;
use super::{rdma, shm, tcp, Link, PeerInfo, RingGeometry};
use crate::error::{ChorusError, Result};
use crate::options::{Agreed, RdmaOptions};
use chorus_bootstrap::Store;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Instant;

/// What a transport needs to set up this rank's pairs of one group.
pub struct Setup<'a> {
    pub store: &'a dyn Store,
    pub uid: &'a str,
    pub me: &'a PeerInfo,
    /// Ranks in the group.
    pub ranks: usize,
    pub local: &'a LocalSegments,
    /// This rank's listener (bound before its address was published); `None` after setup, when
    /// only survivors' relinks remain (they connect out).
    pub listener: Option<&'a TcpListener>,
    pub deadline: Instant,
    /// Called now and then while a transport waits for a peer: an error (a peer known to have
    /// died) ends the wait with it. Group creation watches its peers this way.
    pub watch: &'a (dyn Fn() -> Result<()> + Sync),
}

/// A [`Setup::watch`] that finds nothing.
pub fn watch_nothing() -> Result<()> {
    Ok(())
}

/// Why the pairs are being connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pairing {
    /// Group creation: every rank connects to every other at once.
    Create,
    /// A replacement rank connects to the survivors of join request `seq` (survivors relink).
    Join { seq: u64 },
}

/// One transport's answers.
pub trait Transport: Send + Sync {
    fn name(&self) -> &'static str;
    /// Slot geometry of this transport's rings (the same on every rank: the settings agree).
    fn geometry(&self) -> RingGeometry;
    /// Publishes what peers need to decide on pairs with this rank (RDMA: its port), before any
    /// of them asks `can_connect` about it: at group creation, and by a replacement before it
    /// announces itself.
    fn prepare(&self, s: &Setup) -> Result<()>;
    /// Whether this transport carries the pair (this rank, `peer`); both ends reach the same answer.
    fn can_connect(&self, s: &Setup, peer: &PeerInfo) -> Result<bool>;
    /// Connects this rank to all of `peers` (the pairs this transport won) at once, so no pair
    /// waits on another, up to where traffic can start ([`Connected::start`]).
    fn connect(&self, s: &Setup, peers: &[&PeerInfo], pairing: Pairing) -> Result<Box<dyn Connected>>;
    /// Survivor side of join request `seq`: a link to the replacement `joiner` that continues this
    /// rank's pair counters. `counters()` settles both streams towards the joiner and says where
    /// they are, `(sent, consumed)` per stream; only a transport that carries them into the new
    /// connection asks.
    fn relink(&self, s: &Setup, joiner: &PeerInfo, seq: u64, counters: &mut dyn FnMut() -> Result<Vec<(u64, u64)>>) -> Result<Arc<dyn Link>>;
}

/// Pairs connected but not carrying traffic yet.
pub trait Connected {
    /// Starts the links. `counters(peer)` is where the pair's streams continue, `(sent,
    /// consumed)` per stream of the peer (a survivor's handoff; zeros at group creation).
    fn start(self: Box<Self>, s: &Setup, counters: &dyn Fn(usize) -> Vec<(u64, u64)>) -> Result<Vec<Arc<dyn Link>>>;
}

/// Links that are ready as they are.
pub(super) struct Ready(pub Vec<Arc<dyn Link>>);

impl Connected for Ready {
    fn start(self: Box<Self>, _s: &Setup, _counters: &dyn Fn(usize) -> Vec<(u64, u64)>) -> Result<Vec<Arc<dyn Link>>> {
        Ok(self.0)
    }
}

/// The ordered transports of one group.
pub struct Table {
    transports: Vec<Box<dyn Transport>>,
}

/// Every transport's pairs, connected; [`Connecting::start`] makes the links.
pub struct Connecting(Vec<Box<dyn Connected>>);

impl Connecting {
    pub fn start(self, s: &Setup, counters: &dyn Fn(usize) -> Vec<(u64, u64)>) -> Result<Vec<Arc<dyn Link>>> {
        let mut links = Vec::new();
        for c in self.0 {
            links.extend(c.start(s, counters)?);
        }
        Ok(links)
    }
}

impl Table {
    /// Shared memory, then RDMA (device and queue pairs as `rdma` says), then sockets, with the
    /// ring geometry of `settings`.
    pub fn new(settings: &Agreed, rdma: &RdmaOptions) -> Table {
        let geo = |slot_bytes| RingGeometry { slots: 4, slot_bytes };
        Table {
            transports: vec![
                Box::new(shm::Shm::new(geo(settings.shm_chunk))),
                Box::new(rdma::Rdma::new(geo(settings.rdma_chunk), rdma.clone())),
                Box::new(tcp::Tcp::new(geo(settings.tcp_chunk))),
            ],
        }
    }

    pub fn prepare(&self, s: &Setup) -> Result<()> {
        self.transports.iter().try_for_each(|t| t.prepare(s))
    }

    /// The first transport that can connect (this rank, `peer`): its place in the table.
    fn choose(&self, s: &Setup, peer: &PeerInfo) -> Result<usize> {
        for (i, t) in self.transports.iter().enumerate() {
            if t.can_connect(s, peer)? {
                return Ok(i);
            }
        }
        Err(ChorusError::Connect { transport: "any", peer: peer.rank, why: "no transport can connect the pair".into() })
    }

    /// Connects this rank to every peer of `peers` but itself, each pair over the first transport
    /// that can connect it.
    pub fn connect(&self, s: &Setup, peers: &[PeerInfo], pairing: Pairing) -> Result<Connecting> {
        let mut won: Vec<Vec<&PeerInfo>> = self.transports.iter().map(|_| Vec::new()).collect();
        for p in peers.iter().filter(|p| p.rank != s.me.rank) {
            won[self.choose(s, p)?].push(p);
        }
        let mut out = Vec::new();
        for (t, peers) in self.transports.iter().zip(won) {
            if !peers.is_empty() {
                tracing::debug!(transport = t.name(), peers = ?peers.iter().map(|p| p.rank).collect::<Vec<_>>(), "connecting");
                out.push(t.connect(s, &peers, pairing)?);
            }
        }
        Ok(Connecting(out))
    }

    /// Survivor side of join request `seq`: a new link to the replacement `joiner`.
    pub fn relink(&self, s: &Setup, joiner: &PeerInfo, seq: u64, counters: &mut dyn FnMut() -> Result<Vec<(u64, u64)>>) -> Result<Arc<dyn Link>> {
        let t = &self.transports[self.choose(s, joiner)?];
        tracing::debug!(transport = t.name(), joiner = joiner.rank, seq, "relinking");
        t.relink(s, joiner, seq, counters)
    }

    /// The chunk size every rank of the group builds plans with. It must be the same on every
    /// rank (chunks are matched one to one), so it is derived from what every rank knows alike —
    /// the host identities of all ranks and the agreed geometry — not from a rank's own links:
    /// one host uses the shared-memory slot; several hosts the smallest slot of any transport.
    pub fn chunk(&self, peers: &[PeerInfo]) -> usize {
        let one_host = peers.iter().all(|p| p.host_id == peers[0].host_id);
        if one_host {
            self.transports[0].geometry().slot_bytes
        } else {
            self.smallest_slot()
        }
    }

    /// The smallest slot of any transport: a chunk that fits every link, whatever carries it.
    pub fn smallest_slot(&self) -> usize {
        self.transports.iter().map(|t| t.geometry().slot_bytes).min().unwrap_or(0)
    }
}
