//! `shm`: ranks on one host exchange chunks through POSIX shared memory. Capability: equal host
//! identities. Setup: each rank creates its signal block and inbound-data segment before it
//! publishes their names; peers map them.
mod link;

pub use link::ShmLink;

use super::signals::{self, SignalBlock, STREAMS};
use super::table::{Connected, Pairing, Ready, Setup, Transport};
use super::{Link, PeerInfo, RingGeometry};
use crate::error::{ChorusError, Result};
use crate::sys::shm::Segment;
use std::sync::Arc;

pub const NAME: &str = "shm";

/// Same host identity: the pair can map each other's segments.
pub fn can_connect(me: &PeerInfo, peer: &PeerInfo) -> bool {
    me.host_id == peer.host_id
}

/// Offset of the ring that holds `from`'s chunks on `stream` inside the owner's data segment.
pub fn ring_offset(from: usize, stream: usize, geo: RingGeometry) -> usize {
    (from * STREAMS + stream) * geo.ring_bytes()
}

/// This rank's own segments.
pub struct LocalSegments {
    pub signals: SignalBlock,
    pub data: Arc<Segment>,
}

/// Creates this rank's signal block and inbound-data segment (named, so peers can map them);
/// `geo` is the shared-memory ring geometry (`Options::shm_chunk`, alike on every rank).
pub fn create_local(sig_name: &str, data_name: &str, ranks: usize, me: usize, geo: RingGeometry) -> Result<LocalSegments> {
    let sig = Segment::create(sig_name, signals::segment_len(ranks))
        .map_err(|e| ChorusError::Shm(format!("creating {sig_name}: {e}")))?;
    let data = Segment::create(data_name, ranks * STREAMS * geo.ring_bytes())
        .map_err(|e| ChorusError::Shm(format!("creating {data_name}: {e}")))?;
    Ok(LocalSegments { signals: SignalBlock::init(Arc::new(sig), ranks, me), data: Arc::new(data) })
}

/// Maps `peer`'s segments and builds the link.
pub fn connect(me: usize, ranks: usize, local: &LocalSegments, peer: &PeerInfo, geo: RingGeometry) -> Result<ShmLink> {
    let fail = |why: String| ChorusError::Connect { transport: NAME, peer: peer.rank, why };
    // By name during rendezvous; through the owner's open descriptor once the name is gone
    // (a replacement rank connecting to survivors).
    let open = |name: &str, fd: i32, len: usize| {
        Segment::open(name, len).or_else(|e| {
            Segment::open_from_process(peer.pid, fd, len).map_err(|e2| fail(format!("mapping {name}: {e}; through /proc/{}/fd/{fd}: {e2}", peer.pid)))
        })
    };
    let sig = open(&peer.shm_signals, peer.shm_signals_fd, signals::segment_len(ranks))?;
    let peer_signals = SignalBlock::attach(Arc::new(sig), ranks)
        .ok_or_else(|| fail("its signal block has a different magic, version or group size".into()))?;
    let data = open(&peer.shm_data, peer.shm_data_fd, ranks * STREAMS * geo.ring_bytes())?;
    Ok(ShmLink::new(me, peer.rank, peer.pid, geo, peer_signals, Arc::new(data), local.data.clone()))
}

/// The shared-memory entry of the transport table.
pub struct Shm {
    geo: RingGeometry,
}

impl Shm {
    pub fn new(geo: RingGeometry) -> Shm {
        Shm { geo }
    }
}

impl Transport for Shm {
    fn name(&self) -> &'static str {
        NAME
    }

    fn geometry(&self) -> RingGeometry {
        self.geo
    }

    /// The segment names and descriptors are already in the peer record.
    fn prepare(&self, _s: &Setup) -> Result<()> {
        Ok(())
    }

    fn can_connect(&self, s: &Setup, peer: &PeerInfo) -> Result<bool> {
        Ok(can_connect(s.me, peer))
    }

    /// Maps every peer's segments now (a replacement maps the survivors' through their open
    /// descriptors); nothing waits on the peer.
    fn connect(&self, s: &Setup, peers: &[&PeerInfo], _pairing: Pairing) -> Result<Box<dyn Connected>> {
        let links = peers.iter().map(|p| Ok(Arc::new(connect(s.me.rank, s.ranks, s.local, p, self.geo)?) as Arc<dyn Link>)).collect::<Result<_>>()?;
        Ok(Box::new(Ready(links)))
    }

    fn relink(&self, s: &Setup, joiner: &PeerInfo, _seq: u64, _counters: &mut dyn FnMut() -> Result<Vec<(u64, u64)>>) -> Result<Arc<dyn Link>> {
        Ok(Arc::new(connect(s.me.rank, s.ranks, s.local, joiner, self.geo)?))
    }
}
