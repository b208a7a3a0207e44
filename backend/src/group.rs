//! Group setup: rendezvous through the store, transport selection per pair, engine start; and
//! the two ways a rank enters a group that already runs: survivors link to a replacement
//! (`serve_joins`), and a replacement links to the survivors (`join`).
use crate::engine::comm::Comm;
use crate::engine::p2p::{P2pEngine, P2pOp};
use crate::engine::signals::{Control, SignalBlock, Stream, WaitPolicy, ABORT_DESTROYED};
use crate::engine::worker::Worker;
use crate::error::{ChorusError, Result};
use crate::membership::join::{self, Handoff, JoinRequest};
use crate::membership::liveness::Liveness;
use crate::membership::recovery::{self, Decision, Post, Round};
use crate::membership::{View, ViewStore};
use crate::memory::{Location, Registry};
use crate::options::{default_host_id, Options};
use crate::sys::shm::Segment;
use crate::transport::shm::LocalSegments;
use crate::transport::rdma::{self, RdmaLink};
use crate::transport::{self, shm, tcp, Link, PeerInfo};
use chorus_bootstrap::{listen, Store};
use crossbeam::channel::Sender;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The collective stream's state, owned by whoever runs the current collective.
pub struct CollState {
    pub comm: Comm,
}

/// Counters a test or a user can read to see what the group did.
#[derive(Debug)]
pub struct Counters {
    /// Connections (sockets or shared-memory mappings) this rank made for the group.
    pub connections: AtomicU64,
    /// The same, per peer: a rejoin raises only the rejoiner's entry.
    pub connections_to: Vec<AtomicU64>,
}

impl Counters {
    fn new(n: usize) -> Counters {
        Counters { connections: AtomicU64::new(0), connections_to: (0..n).map(|_| AtomicU64::new(0)).collect() }
    }

    fn connected(&self, peer: usize) {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.connections_to[peer].fetch_add(1, Ordering::Relaxed);
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress { committed: 0, current: None, can_rerun: true, proceed: None }
    }
}

/// A rank's position in the collective sequence, as reported to recovery. Guarded by one lock:
/// the heartbeat thread answers recovery for a rank between collectives under it, and a
/// collective starts (sets `current`) under it, so an answer never describes a rank that has
/// already moved on.
#[derive(Clone, Debug)]
pub struct Progress {
    /// The last collective this rank returned (a result or an error every survivor got alike).
    pub committed: u64,
    /// The collective this rank is inside, and whether its part is complete.
    pub current: Option<(u64, bool)>,
    /// Whether the current collective can be re-run from this rank's inputs (meaningful while
    /// `current` is set; reset when an attempt starts).
    pub can_rerun: bool,
    /// `(round, boundary)`: admission round `round` is pending, and another member is already
    /// inside the collective after `boundary`, so this rank runs it under the old view too.
    pub proceed: Option<(u64, u64)>,
}

/// A GPU communicator of the group: the device it runs on, the view epoch it was built in and that
/// view's members, which it spans (communicator rank i is group rank `members[i]`).
pub struct DeviceSlot {
    pub ordinal: usize,
    pub epoch: u64,
    pub members: Arc<[usize]>,
    pub comm: Arc<chorus_kernels::cuda::DeviceComm>,
}

pub struct GroupInner {
    /// GPU communicators of this group, one per CUDA device ordinal (created on first use, rebuilt
    /// after the view changed).
    pub device_comms: Mutex<Vec<DeviceSlot>>,
    pub uid: String,
    pub rank: usize,
    pub size: usize,
    /// Group rank -> rank in the group this one was made from (identity for top-level groups).
    pub parent_ranks: Vec<usize>,
    pub store: Arc<dyn Store>,
    pub opts: Options,
    pub coll: Arc<Mutex<CollState>>,
    pub worker: Worker,
    pub p2p_tx: Mutex<Option<Sender<P2pOp>>>,
    pub p2p_thread: Mutex<Option<JoinHandle<()>>>,
    pub signals: SignalBlock,
    pub local: LocalSegments,
    me: PeerInfo,
    links: Mutex<Vec<Option<Arc<dyn Link>>>>,
    /// The links of `links` that are RDMA, by peer: a rejoin recreates only their queue pair.
    rdma_links: Mutex<Vec<Option<Arc<RdmaLink>>>>,
    /// Chunk size every plan of this group is built with (fits every link's slots).
    pub chunk: usize,
    pub all_shared_memory: bool,
    /// Monotonic: collectives submitted so far (the next op's sequence number is this + 1).
    pub op_seq: AtomicU64,
    pub subgroups: AtomicU64,
    /// Monotonic lifecycle: 0 live, 1 destroyed.
    pub lifecycle: AtomicU64,
    pub counters: Counters,
    pub registry: Registry,
    pub views: ViewStore,
    /// The view collectives run under (changes only by agreed recovery decisions or API calls).
    pub view: Mutex<View>,
    pub liveness: Arc<Liveness>,
    /// Recovery rounds applied (monotonic).
    pub rounds_applied: Arc<AtomicU64>,
    /// What recovery posts report: highest committed collective and the one in progress.
    pub progress: Mutex<Progress>,
    pub heartbeat: Mutex<Option<JoinHandle<()>>>,
    pub last_info: Mutex<crate::engine::work::OpInfo>,
    /// Ranks removed by recovery and not yet reported by a collective.
    pub pending_failed: Mutex<Vec<usize>>,
    /// Join requests announced in the store (seen by the heartbeat thread) and served (linked
    /// by the collective path); both monotonic.
    pub joins_announced: AtomicU64,
    pub joins_served: AtomicU64,
    /// The last recovery decision applied (what it says about the collective it interrupted).
    pub last_decision: Mutex<Option<Decision>>,
}

fn key(uid: &str, rest: &str) -> String {
    format!("chorus/{uid}/{rest}")
}

fn unique_token() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{}-{:x}", crate::sys::proc::pid(), nanos & 0xffff_ffff_ffff)
}

pub fn group_key(uid: &str) -> u64 {
    crate::engine::comm::describe(&uid.bytes().map(u64::from).collect::<Vec<_>>())
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    bincode::serde::encode_to_vec(v, bincode::config::standard()).map_err(|e| ChorusError::InvalidArgument(format!("encoding: {e}")))
}

pub fn decode_peer(v: &[u8]) -> Result<PeerInfo> {
    bincode::serde::decode_from_slice::<PeerInfo, _>(v, bincode::config::standard())
        .map(|(p, _)| p)
        .map_err(|e| ChorusError::InvalidArgument(format!("a peer published undecodable info ({e}); are all ranks running the same chorus version?")))
}

/// A rank's links by peer, and which of them are RDMA (a rejoin reconnects those in place).
struct Links {
    all: Vec<Option<Arc<dyn Link>>>,
    rdma: Vec<Option<Arc<RdmaLink>>>,
}

/// What a rank prepares before it tells anyone about itself.
struct Prepared {
    listener: TcpListener,
    local: LocalSegments,
    me: PeerInfo,
    registry: Registry,
}

/// Binds the listener and creates the segments (both before publishing: DESIGN invariant 5).
fn prepare(rank: usize, size: usize, opts: &Options) -> Result<Prepared> {
    let host_id = opts.host_id.clone().unwrap_or_else(default_host_id);
    let ip = listen::advertise_ip(opts.route_hint.as_deref().unwrap_or("127.0.0.1"));
    let (listener, addr) = listen::bind_listener(ip)?;
    let token = unique_token();
    let sig_name = format!("chorus-{token}-r{rank}-sig");
    let data_name = format!("chorus-{token}-r{rank}-data");
    let local = shm::create_local(&sig_name, &data_name, size, rank)?;
    let registry = Registry::default();
    registry.register(local.signals.segment().base(), local.signals.segment().len(), Location::Host);
    registry.register(local.data.base(), local.data.len(), Location::Host);
    let me = PeerInfo {
        rank,
        host_id,
        pid: crate::sys::proc::pid(),
        tcp_addr: addr.to_string(),
        shm_signals: sig_name,
        shm_data: data_name,
        shm_signals_fd: local.signals.segment().fd().unwrap_or(-1),
        shm_data_fd: local.data.fd().unwrap_or(-1),
    };
    Ok(Prepared { listener, local, me, registry })
}

fn wait_all(store: &Arc<dyn Store>, keys: &[String], deadline: Instant) -> Result<Vec<Vec<u8>>> {
    let refs: Vec<&str> = keys.iter().map(|s| s.as_str()).collect();
    Ok(store.wait(&refs, deadline.saturating_duration_since(Instant::now()))?)
}

/// Creates the group `uid` of `size` ranks (this one is `rank`). Every member calls this.
pub fn create(store: Arc<dyn Store>, uid: String, rank: usize, size: usize, parent_ranks: Vec<usize>, opts: Options) -> Result<Arc<GroupInner>> {
    if size == 0 || rank >= size {
        return Err(ChorusError::InvalidRank { rank, size });
    }
    crate::options::init_logging();
    let _span = tracing::info_span!("group_create", uid = %uid, rank, size).entered();
    let deadline = Instant::now() + opts.timeout;
    let prep = prepare(rank, size, &opts)?;
    let me = prep.me.clone();
    let unlink = UnlinkGuard::new(&me);
    store.set(&key(&uid, &format!("peer/{rank}")), &encode(&me)?)?;
    let keys: Vec<String> = (0..size).map(|r| key(&uid, &format!("peer/{r}"))).collect();
    let peers: Vec<PeerInfo> = wait_all(&store, &keys, deadline)?.iter().map(|v| decode_peer(v)).collect::<Result<_>>()?;

    // Links: shared memory where the host matches, RDMA where both ends have a device, sockets
    // otherwise. Higher ranks connect.
    let gkey = group_key(&uid);
    let counters = Counters::new(size);
    let mut links: Vec<Option<Arc<dyn Link>>> = (0..size).map(|_| None).collect();
    let mut tcp_higher = 0;
    let mut rdma_links: Vec<Option<Arc<RdmaLink>>> = (0..size).map(|_| None).collect();
    let mut rdma_setup = rdma::setup(&*store, &uid, &me, &peers, &prep.local.signals, |p| shm::can_connect(&me, p), deadline)?;
    for p in &peers {
        if p.rank == rank {
            continue;
        }
        if shm::can_connect(&me, p) {
            links[p.rank] = Some(Arc::new(shm::connect(rank, size, &prep.local, p)?));
            counters.connected(p.rank);
        } else if let Some(l) = rdma_setup.remove(&p.rank) {
            let l = Arc::new(l);
            links[p.rank] = Some(l.clone());
            rdma_links[p.rank] = Some(l);
            counters.connected(p.rank);
        } else if tcp::can_connect(&me, p) {
            if p.rank < rank {
                let s = tcp::connect(rank, p, gkey, deadline)?;
                links[p.rank] = Some(Arc::new(tcp::link(rank, p.rank, s, prep.local.signals.clone())?));
                counters.connected(p.rank);
            } else {
                tcp_higher += 1;
            }
        }
    }
    for (r, s) in tcp::accept(&prep.listener, tcp_higher, gkey, deadline)? {
        if r >= size || r <= rank || links[r].is_some() {
            return Err(ChorusError::Connect { transport: tcp::NAME, peer: r, why: "unexpected introduction".into() });
        }
        links[r] = Some(Arc::new(tcp::link(rank, r, s, prep.local.signals.clone())?));
        counters.connected(r);
    }

    // Everyone mapped everyone: the names can go (nothing leaks in /dev/shm after a crash).
    store.set(&key(&uid, &format!("mapped/{rank}")), b"1")?;
    let keys: Vec<String> = (0..size).map(|r| key(&uid, &format!("mapped/{r}"))).collect();
    wait_all(&store, &keys, deadline)?;

    let local_ranks = peers.iter().filter(|p| p.host_id == me.host_id).count();
    let chunk = group_chunk(&peers);
    unlink.disarm();
    start(store, uid, rank, size, parent_ranks, opts, prep, Links { all: links, rdma: rdma_links }, counters, local_ranks, chunk, None)
}

/// The chunk size every rank of the group builds plans with. It must be the same on every rank
/// (chunks are matched one to one), so it is derived from what every rank knows alike — the
/// host identities of all ranks — not from a rank's own links: one host uses the shared-memory
/// slot size; several hosts use the smallest slot of any transport a pair might use.
fn group_chunk(peers: &[PeerInfo]) -> usize {
    let one_host = peers.iter().all(|p| p.host_id == peers[0].host_id);
    let shm_slot = shm::geometry().slot_bytes;
    if one_host {
        shm_slot
    } else {
        shm_slot.min(tcp::geometry().slot_bytes).min(transport::rdma::geometry().slot_bytes)
    }
}

/// Removes this rank's segment names if setup fails before every peer mapped them.
struct UnlinkGuard {
    names: Vec<String>,
}

impl UnlinkGuard {
    fn new(me: &PeerInfo) -> UnlinkGuard {
        UnlinkGuard { names: vec![me.shm_signals.clone(), me.shm_data.clone()] }
    }

    /// Every peer mapped the segments: remove the names now.
    fn disarm(mut self) {
        for n in self.names.drain(..) {
            Segment::unlink(&n);
        }
    }
}

impl Drop for UnlinkGuard {
    fn drop(&mut self) {
        for n in &self.names {
            Segment::unlink(n);
        }
    }
}

/// State a joining rank takes over from the survivors.
struct Resume {
    handoffs: Vec<(usize, Handoff, Handoff)>,
    view: View,
    committed: u64,
    rounds: u64,
}

#[allow(clippy::too_many_arguments)]
fn start(
    store: Arc<dyn Store>,
    uid: String,
    rank: usize,
    size: usize,
    parent_ranks: Vec<usize>,
    opts: Options,
    prep: Prepared,
    Links { all: links, rdma: rdma_links }: Links,
    counters: Counters,
    local_ranks: usize,
    chunk: usize,
    resume: Option<Resume>,
) -> Result<Arc<GroupInner>> {
    // Chunks from socket peers land through this process's reader threads: those need a core
    // too, so count them as extra local contenders.
    let socket_links = links.iter().flatten().filter(|l| !l.shares_memory()).count();
    let policy = WaitPolicy::for_host(local_ranks + if socket_links > 0 { local_ranks } else { 0 });
    let all_shared_memory = links.iter().flatten().all(|l| l.shares_memory());
    tracing::debug!(transports = ?transport_names(&links), chunk, "group links ready");

    let liveness = Arc::new(Liveness::new(size));
    let rounds_applied = Arc::new(AtomicU64::new(0));
    let signals = prep.local.signals.clone();
    let mut coll = Comm::new(rank, size, Stream::Collective, links.clone(), signals.clone(), policy.clone(), opts.timeout, liveness.clone(), rounds_applied.clone());
    let mut p2p = Comm::new(rank, size, Stream::P2p, links.clone(), signals.clone(), policy, opts.timeout, liveness.clone(), rounds_applied.clone());
    let views = ViewStore::new(store.clone(), &uid, size);
    // A new group starts with every rank (a view change another rank already stored is adopted
    // by all through its round, at the same collective); a replacement takes the survivors' view.
    let mut view = View::full(size);
    let mut progress = Progress::default();
    if let Some(r) = &resume {
        // Continue every pair's sequence numbers where the survivors are (counters never restart).
        for (s, coll_h, p2p_h) in &r.handoffs {
            join::adopt(&signals, &mut coll, *s, coll_h);
            join::adopt(&signals, &mut p2p, *s, p2p_h);
        }
        view = r.view.clone();
        progress.committed = r.committed;
        rounds_applied.store(r.rounds, Ordering::SeqCst);
    }
    let (p2p_tx, p2p_rx) = crossbeam::channel::unbounded();
    let p2p_thread = std::thread::Builder::new()
        .name(format!("chorus-p2p-{uid}-{rank}"))
        .spawn(move || P2pEngine::new(p2p).run(p2p_rx))
        .map_err(|e| ChorusError::InvalidArgument(format!("spawning the point-to-point thread: {e}")))?;
    let committed = progress.committed;
    let inner = Arc::new(GroupInner {
        device_comms: Mutex::new(Vec::new()),
        worker: Worker::start(format!("chorus-coll-{uid}-{rank}")),
        uid,
        rank,
        size,
        parent_ranks,
        store,
        coll: Arc::new(Mutex::new(CollState { comm: coll })),
        p2p_tx: Mutex::new(Some(p2p_tx)),
        p2p_thread: Mutex::new(Some(p2p_thread)),
        signals,
        local: prep.local,
        me: prep.me,
        links: Mutex::new(links),
        rdma_links: Mutex::new(rdma_links),
        chunk,
        all_shared_memory,
        opts,
        op_seq: AtomicU64::new(committed),
        subgroups: AtomicU64::new(0),
        lifecycle: AtomicU64::new(0),
        counters,
        registry: prep.registry,
        views,
        view: Mutex::new(view),
        liveness,
        rounds_applied,
        progress: Mutex::new(progress),
        heartbeat: Mutex::new(None),
        last_info: Mutex::new(Default::default()),
        pending_failed: Mutex::new(Vec::new()),
        joins_announced: AtomicU64::new(0),
        joins_served: AtomicU64::new(0),
        last_decision: Mutex::new(None),
    });
    // Joins announced before this rank existed are not for it.
    if let Some(n) = join::announced(&inner.store, &inner.uid)? {
        inner.joins_announced.store(n, Ordering::SeqCst);
        inner.joins_served.store(n, Ordering::SeqCst);
    }
    let weak = Arc::downgrade(&inner);
    let interval = inner.liveness.interval;
    let hb = std::thread::Builder::new()
        .name(format!("chorus-hb-{}-{rank}", inner.uid))
        .spawn(move || heartbeat_loop(weak, interval))
        .map_err(|e| ChorusError::InvalidArgument(format!("spawning the heartbeat thread: {e}")))?;
    *inner.heartbeat.lock().unwrap_or_else(|p| p.into_inner()) = Some(hb);
    Ok(inner)
}

/// Beats to every peer; answers recovery requests for a rank that is between collectives;
/// notices replacement ranks asking to join.
fn heartbeat_loop(group: std::sync::Weak<GroupInner>, interval: Duration) {
    let mut tick: u64 = 0;
    let mut answered = None;
    loop {
        {
            let Some(g) = group.upgrade() else { return };
            if g.lifecycle.load(Ordering::SeqCst) != 0 {
                return;
            }
            g.liveness.beat(&g.links());
            g.abort_device_comms_of_dead_peers();
            if g.opts.fault_tolerance {
                match g.answer_recovery(answered) {
                    Ok(a) => answered = a,
                    Err(e) => tracing::debug!(error = %e, "answering a recovery round failed"),
                }
            }
            if g.opts.fault_tolerance && tick.is_multiple_of(2) {
                if let Ok(Some(n)) = join::announced(&g.store, &g.uid) {
                    g.joins_announced.fetch_max(n, Ordering::SeqCst);
                }
            }
        }
        tick += 1;
        std::thread::sleep(interval);
    }
}

impl GroupInner {
    /// The current link table (a snapshot).
    pub fn links(&self) -> Vec<Option<Arc<dyn Link>>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The next recovery round (the one after those applied), if any rank asked for it (or a
    /// later one), and whether it is a failure round. Every rank's counter counts, not only the
    /// members': a replacement asks to be admitted before it is one.
    pub fn pending_round(&self) -> Option<(u64, bool)> {
        let next = self.rounds_applied.load(Ordering::SeqCst) + 1;
        let v = (0..self.size).map(|p| self.signals.control(p, Control::Recovery).load(Ordering::SeqCst)).max().unwrap_or(0);
        (recovery::round_of(v) >= next).then_some((next, v >= recovery::signal(next, true)))
    }

    /// The heartbeat thread's part in recovery, for a rank that is not in a position to answer
    /// itself: between collectives it posts a failure report or, for an admission round, the
    /// boundary it is at (the collective path then starts nothing until the round is settled:
    /// both happen under the progress lock); inside a collective it says so for an admission
    /// round (the collective's own waits answer failure rounds). `last` is what it posted last
    /// time (so it posts each answer once); returns what it posted now.
    pub fn answer_recovery(&self, last: Option<(u64, u8, u64)>) -> Result<Option<(u64, u8, u64)>> {
        if self.pending_round().is_none() {
            return Ok(last);
        }
        let progress = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        let Some((round, failure)) = self.pending_round() else { return Ok(last) };
        let view = self.view.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if !view.is_active(self.rank) {
            return Ok(last);
        }
        let answer = match (failure, progress.current) {
            (true, None) => (round, 0, progress.committed),
            (false, None) => (round, 1, progress.committed),
            (false, Some((op, _))) => (round, 2, op),
            (true, Some(_)) => return Ok(last),
        };
        if last == Some(answer) {
            return Ok(last);
        }
        let r = Round { store: &self.store, views: &self.views, uid: &self.uid, me: self.rank, round, view: &view };
        match answer.1 {
            0 => self.post_failure(&progress, &view, round)?,
            1 => r.post_boundary(progress.committed)?,
            _ => r.post_inside(answer.2)?,
        }
        tracing::debug!(round, kind = answer.1, at = answer.2, "answered recovery from the heartbeat thread");
        Ok(Some(answer))
    }

    /// Aborts every GPU communicator that spans a peer found dead, so its kernels stop waiting for
    /// that peer now instead of at their deadline (reason: 1 + the dead rank). A kernel cannot see a
    /// dead process; this host-side check is how it learns.
    fn abort_device_comms_of_dead_peers(&self) {
        let comms: Vec<_> = {
            let g = self.device_comms.lock().unwrap_or_else(|p| p.into_inner());
            g.iter().filter(|s| s.comm.aborted().is_none()).map(|s| (s.members.clone(), s.comm.clone())).collect()
        };
        for (members, c) in comms {
            // Only the communicator's own members matter: one built over the survivors of a failure
            // keeps running while the dead rank stays dead.
            if let Some(&dead) = members.iter().find(|&&p| p != self.rank && self.peer_dead(p)) {
                tracing::warn!(dead, device = c.device(), "rank {dead} is dead: aborting the GPU communicator");
                c.abort(dead as u64 + 1);
            }
        }
    }

    /// Whether `peer` is known to be gone.
    pub fn peer_dead(&self, peer: usize) -> bool {
        match &self.links()[peer] {
            Some(l) => l.check_alive().is_err() || self.liveness.stalled(&self.signals, peer).is_some(),
            None => false,
        }
    }

    /// Posts this rank's failure report for recovery round `round` (and asks every member to take
    /// part: the failure kind interrupts their waits).
    pub fn post_recovery(&self, round: u64) -> Result<()> {
        let view = self.view.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let progress = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        self.post_failure(&progress, &view, round)
    }

    fn post_failure(&self, progress: &Progress, view: &View, round: u64) -> Result<()> {
        let dead: Vec<usize> = view.members().into_iter().filter(|&p| p != self.rank && self.peer_dead(p)).collect();
        let post = Post { committed: progress.committed, current: progress.current, dead, epoch: view.epoch, can_rerun: progress.can_rerun };
        let r = Round { store: &self.store, views: &self.views, uid: &self.uid, me: self.rank, round, view };
        r.post(&post)?;
        self.raise_recovery(round, true, &view.members());
        Ok(())
    }

    /// Asks every member of `members` (and this rank) to take part in recovery round `round`, a
    /// failure round (it interrupts their waits) or an admission round.
    pub fn raise_recovery(&self, round: u64, failure: bool, members: &[usize]) {
        let value = recovery::signal(round, failure);
        let links = self.links();
        for &p in members {
            if let Some(l) = &links[p] {
                let _ = l.control(Control::Recovery, value);
            }
        }
        self.signals.publish(self.signals.control(self.rank, Control::Recovery), value);
    }

    pub fn check_live(&self) -> Result<()> {
        if self.lifecycle.load(Ordering::SeqCst) != 0 {
            return Err(ChorusError::Destroyed);
        }
        Ok(())
    }

    /// Links to replacement ranks that asked to join since the last call; called by the
    /// collective path (which owns the collective stream's counters) between collectives.
    pub fn serve_joins(&self, comm: &mut Comm) -> Result<()> {
        let announced = self.joins_announced.load(Ordering::SeqCst);
        let mut served = self.joins_served.load(Ordering::SeqCst);
        while served < announced {
            served += 1;
            let Some(req) = join::request(&self.store, &self.uid, served)? else { break };
            if req.rank != self.rank && req.rank < self.size {
                if let Err(e) = self.link_joiner(comm, &req) {
                    tracing::warn!(joiner = req.rank, error = %e, "linking to a replacement rank failed");
                }
            }
            self.joins_served.store(served, Ordering::SeqCst);
        }
        Ok(())
    }

    fn link_joiner(&self, comm: &mut Comm, req: &JoinRequest) -> Result<()> {
        let _span = tracing::info_span!("link_joiner", joiner = req.rank, generation = req.generation).entered();
        let deadline = Instant::now() + self.opts.timeout;
        let info = join::joiner_info(&self.store, &self.uid, req, deadline)?;
        let p = req.rank;
        // Chunks the dead predecessor never consumed are forfeited: our credits restart full. (It
        // sends nothing more, and the replacement sends nothing before our handoff, so this can
        // come before the new link; an RDMA queue pair needs the counters when it connects.)
        let coll = join::forfeit(&self.signals, comm, p);
        let mut rdma_link = None;
        let link: Arc<dyn Link> = if shm::can_connect(&self.me, &info) {
            Arc::new(shm::connect(self.rank, self.size, &self.local, &info)?)
        } else if rdma::pair_uses_rdma(&*self.store, &self.uid, &self.me, &info, deadline)? {
            // The new queue pair continues both streams' counters, so both are settled first.
            let p2p = self.forfeit_p2p(p, deadline)?;
            let existing = self.rdma_links.lock().unwrap_or_else(|e| e.into_inner())[p].clone();
            let resume = rdma::Resume::continuing(&[coll, p2p]);
            let l = rdma::relink(&*self.store, &self.uid, self.rank, p, existing.as_ref(), &self.signals, req.seq, resume, deadline)?;
            rdma_link = Some(l.clone());
            l
        } else {
            let s = tcp::connect(self.rank, &info, group_key(&self.uid), deadline)?;
            Arc::new(tcp::link(self.rank, p, s, self.signals.clone())?)
        };
        self.rdma_links.lock().unwrap_or_else(|e| e.into_inner())[p] = rdma_link;
        self.counters.connected(p);
        self.liveness.reset(p);
        comm.links[p] = Some(link.clone());
        self.links.lock().unwrap_or_else(|e| e.into_inner())[p] = Some(link.clone());
        let view = self.view.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let committed = self.progress.lock().unwrap_or_else(|e| e.into_inner()).committed;
        join::publish_handoff(&self.store, &self.uid, req, self.rank, "coll", &coll, &view, committed, self.rounds_applied.load(Ordering::SeqCst))?;
        // The point-to-point stream's counters live with its thread: it relinks and publishes.
        let tx = self.p2p_tx.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(tx) = tx {
            let reply = join::handoff_key(&self.uid, req, self.rank, "p2p");
            let _ = tx.send(P2pOp::Relink { peer: p, link, reply, store: self.store.clone() });
            self.signals.ring();
        }
        Ok(())
    }

    /// Asks the point-to-point thread (which owns that stream's counters) to forfeit what the
    /// replaced `peer` left and say where the stream's counters are.
    fn forfeit_p2p(&self, peer: usize, deadline: Instant) -> Result<(u64, u64)> {
        let tx = self.p2p_tx.lock().unwrap_or_else(|e| e.into_inner()).clone().ok_or(ChorusError::Destroyed)?;
        let (reply, answer) = crossbeam::channel::bounded(1);
        tx.send(P2pOp::Forfeit { peer, reply }).map_err(|_| ChorusError::Destroyed)?;
        self.signals.ring();
        answer.recv_timeout(deadline.saturating_duration_since(Instant::now())).map_err(|_| {
            ChorusError::InvalidArgument(format!("join: the point-to-point thread did not report its counters for rank {peer} in time"))
        })
    }

    /// Stops the engine threads and tells peers. Idempotent.
    pub fn destroy(&self, notify_peers: bool) {
        if self.lifecycle.fetch_max(1, Ordering::SeqCst) != 0 {
            return;
        }
        let _ = self.worker.quiesce(Duration::from_secs(5));
        self.worker.stop();
        if let Some(h) = self.heartbeat.lock().unwrap_or_else(|p| p.into_inner()).take() {
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
        self.p2p_tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = self.p2p_thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = h.join();
        }
        // Without fault tolerance a departing rank takes the group down with it, so peers get an
        // error at once instead of waiting for their deadline. With it, the others treat the
        // departure like any failure (and a removed rank leaving concerns nobody).
        if notify_peers && !self.opts.fault_tolerance {
            for l in self.links().iter().flatten() {
                l.send_abort(self.rank, ABORT_DESTROYED);
            }
        }
    }

    pub fn store_key(&self, rest: &str) -> String {
        key(&self.uid, rest)
    }
}

impl Drop for GroupInner {
    fn drop(&mut self) {
        self.destroy(false);
    }
}

/// A replacement for rank `rank` of the running group `uid`: waits until the survivors removed
/// the old process, links to every active member (they link back when they see the request),
/// takes over the pair counters, and asks to be activated. Returns once it is a member again.
pub fn join(store: Arc<dyn Store>, uid: String, rank: usize, size: usize, opts: Options) -> Result<Arc<GroupInner>> {
    if rank >= size {
        return Err(ChorusError::InvalidRank { rank, size });
    }
    crate::options::init_logging();
    let _span = tracing::info_span!("group_join", uid = %uid, rank, size).entered();
    let deadline = Instant::now() + opts.timeout;
    let views = ViewStore::new(store.clone(), &uid, size);
    let view = loop {
        let v = views.read()?;
        if !v.is_active(rank) {
            break v;
        }
        if Instant::now() >= deadline {
            return Err(ChorusError::InvalidArgument(format!("join: rank {rank} is still an active member (is the old process still running?)")));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let prep = prepare(rank, size, &opts)?;
    let unlink = UnlinkGuard::new(&prep.me);
    // Our own port decides our RDMA pairs, not the predecessor's: published before we announce.
    rdma::publish_cap(&*store, &uid, rank)?;
    let req = join::announce(&store, &uid, rank, &prep.me)?;
    let members = view.members();
    let mut peers = Vec::new();
    for &s in &members {
        let info = decode_peer(&store.get(&key(&uid, &format!("peer/{s}")))?.ok_or_else(|| ChorusError::InvalidArgument(format!("join: no info for rank {s}")))?)?;
        peers.push(info);
    }
    // RDMA pairs connect first: a survivor recreates its queue pair to us before it hands off.
    let joining = rdma::begin_join(&*store, &uid, &prep.me, &peers, &prep.local.signals, req.seq, deadline)?;
    // Survivors publish where their counters are, after linking to us.
    let mut handoffs = Vec::new();
    for &s in &members {
        let (coll, p2p) = join::await_handoff(&store, &uid, &req, s, deadline)?;
        handoffs.push((s, coll, p2p));
    }
    let counters = Counters::new(size);
    let mut links: Vec<Option<Arc<dyn Link>>> = (0..size).map(|_| None).collect();
    let mut rdma_links: Vec<Option<Arc<RdmaLink>>> = (0..size).map(|_| None).collect();
    for j in joining {
        let (_, coll, p2p) = handoffs.iter().find(|(s, _, _)| *s == j.peer).expect("a handoff from every member");
        let peer = j.peer;
        let l = Arc::new(j.start(rank, &prep.local.signals, &[(coll.sent, coll.recvd), (p2p.sent, p2p.recvd)])?);
        links[peer] = Some(l.clone());
        rdma_links[peer] = Some(l);
        counters.connected(peer);
    }
    let gkey = group_key(&uid);
    let tcp_peers = peers.iter().filter(|p| !shm::can_connect(&prep.me, p) && links[p.rank].is_none()).count();
    for p in &peers {
        if shm::can_connect(&prep.me, p) {
            links[p.rank] = Some(Arc::new(shm::connect(rank, size, &prep.local, p)?));
            counters.connected(p.rank);
        }
    }
    for (r, s) in tcp::accept(&prep.listener, tcp_peers, gkey, deadline)? {
        links[r] = Some(Arc::new(tcp::link(rank, r, s, prep.local.signals.clone())?));
        counters.connected(r);
    }
    unlink.disarm();
    // Survivors' records name the view and progress they are at; take the newest.
    let newest = handoffs.iter().max_by_key(|(_, h, _)| (h.epoch, h.committed)).map(|(_, h, _)| h.clone()).expect("a group has survivors");
    let resume = Resume { view: newest.view(size), committed: newest.committed, rounds: newest.rounds, handoffs };
    let local_ranks = peers.iter().filter(|p| p.host_id == prep.me.host_id).count() + 1;
    let mut everyone = peers.clone();
    everyone.push(prep.me.clone());
    let chunk = group_chunk(&everyone);
    let me = prep.me.clone();
    let g = start(store, uid, rank, size, (0..size).collect(), opts, prep, Links { all: links, rdma: rdma_links }, counters, local_ranks, chunk, Some(resume))?;
    // Later replacements of other ranks read the members' records: ours is this process now.
    g.store.set(&key(&g.uid, &format!("peer/{rank}")), &encode(&me)?)?;
    // Ask to be a member again: a view change that every survivor adopts at the same collective
    // (the admission round `ft::admit` raises and waits for).
    g.views.activate(&[rank])?;
    Ok(g)
}

/// For `transport::Link` users that only need the name list.
pub fn transport_names(links: &[Option<Arc<dyn Link>>]) -> Vec<&'static str> {
    links.iter().map(|l| l.as_ref().map_or("self", |l| l.transport())).collect()
}
