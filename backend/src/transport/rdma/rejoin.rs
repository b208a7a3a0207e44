//! Rejoin over RDMA: a survivor recreates only its queue pair to the replacement (or makes a
//! new link if the pair used another transport before); the replacement connects its queue
//! pairs before it learns the survivors' counters, then rebases them. docs/rdma.md, "Rejoin".
use super::{connect_error, device, link, new_conn, pair_uses_rdma, register_signals, Device, RdmaLink, Resume};
use crate::error::Result;
use crate::options::RdmaOptions;
use crate::transport::signals::SignalBlock;
use crate::transport::{PeerInfo, RingGeometry};
use chorus_bootstrap::Store;
use std::sync::Arc;
use std::time::Instant;

/// The handshake epoch of the pairs a join creates: the join's sequence number (>= 1; group
/// setup uses 0), so records of successive joins never collide.
pub type JoinEpoch = u64;

/// Survivor side of a rejoin, for a pair that uses RDMA: recreates only the queue pair of the
/// existing link (rings, registrations and every other link stay), or makes a new link if the
/// pair used another transport before. `resume` is where this side's counters are.
#[allow(clippy::too_many_arguments)]
pub fn relink(
    store: &dyn Store,
    uid: &str,
    me: usize,
    joiner: usize,
    existing: Option<&Arc<RdmaLink>>,
    signals: &SignalBlock,
    geo: RingGeometry,
    epoch: JoinEpoch,
    resume: Resume,
    deadline: Instant,
    settings: &RdmaOptions,
) -> Result<Arc<RdmaLink>> {
    if let Some(l) = existing {
        tracing::debug!(joiner, epoch, "rdma rejoin: recreating the queue pair of the existing link");
        l.reconnect(store, uid, epoch, resume, deadline)?;
        return Ok(l.clone());
    }
    let dev = device(settings).map_err(|e| connect_error(joiner, e.to_string()))?;
    let signals_mr = register_signals(&dev, signals, me)?;
    let (mem, pc) = new_conn(&dev, me, joiner, epoch, geo, resume, signals, &signals_mr)?;
    let conn = link::exchange(store, uid, &dev, pc, deadline).map_err(|e| connect_error(joiner, e))?;
    Ok(Arc::new(RdmaLink::start(me, joiner, dev, geo, signals.clone(), mem, conn)?))
}

/// A replacement rank's connected queue pair to one survivor, not yet carrying traffic: the
/// replacement connects before it learns where the survivor's counters are.
pub struct Joining {
    pub peer: usize,
    dev: Arc<Device>,
    mem: link::LinkMemory,
    conn: link::Conn,
}

/// Replacement side of a rejoin: for every survivor in `survivors` whose pair uses RDMA,
/// creates and publishes a QP under `epoch`, then connects each as its survivor serves the
/// join (in whatever order they do). Call [`Joining::start`] with the survivor's counters afterwards.
#[allow(clippy::too_many_arguments)]
pub fn begin_join(store: &dyn Store, uid: &str, me: &PeerInfo, survivors: &[PeerInfo], signals: &SignalBlock, geo: RingGeometry, epoch: JoinEpoch, deadline: Instant, settings: &RdmaOptions) -> Result<Vec<Joining>> {
    let mut rdma_peers = Vec::new();
    for p in survivors {
        if pair_uses_rdma(store, uid, me, p, settings, deadline)? {
            rdma_peers.push(p.rank);
        }
    }
    let Ok(dev) = device(settings) else { return Ok(Vec::new()) };
    if rdma_peers.is_empty() {
        return Ok(Vec::new());
    }
    tracing::debug!(epoch, survivors = ?rdma_peers, "rdma rejoin: waiting for each survivor to recreate its queue pair to us");
    let signals_mr = register_signals(&dev, signals, me.rank)?;
    let (mut mems, mut pending) = (Vec::new(), Vec::new());
    for peer in rdma_peers {
        let (mem, pc) = new_conn(&dev, me.rank, peer, epoch, geo, Resume::default(), signals, &signals_mr)?;
        mems.push((peer, mem));
        pending.push(pc);
    }
    let conns = link::exchange_all(store, uid, &dev, pending, deadline).map_err(|(peer, e)| connect_error(peer, e))?;
    Ok(mems.into_iter().zip(conns).map(|((peer, mem), conn)| Joining { peer, dev: dev.clone(), mem, conn }).collect())
}

impl Joining {
    /// Starts carrying traffic from the survivor's per-stream `(sent, consumed)` counts (the
    /// survivor's handoff): our first chunk is the survivor's next unconsumed one, and we expect
    /// the survivor's next chunk.
    pub fn start(mut self, me: usize, signals: &SignalBlock, geo: RingGeometry, survivor_counts: &[(u64, u64)]) -> Result<RdmaLink> {
        let ours: Vec<(u64, u64)> = survivor_counts.iter().map(|&(sent, consumed)| (consumed, sent)).collect();
        self.conn.rebase(Resume::continuing(&ours)).map_err(|e| connect_error(self.peer, e))?;
        RdmaLink::start(me, self.peer, self.dev, geo, signals.clone(), self.mem, self.conn)
    }
}
