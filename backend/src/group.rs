//! Group setup: rendezvous through the store, transport selection per pair, engine start.
use crate::engine::comm::Comm;
use crate::engine::p2p::{P2pEngine, P2pOp};
use crate::engine::signals::{Control, SignalBlock, Stream, WaitPolicy, ABORT_DESTROYED};
use crate::membership::liveness::Liveness;
use crate::membership::recovery::{Post, Round};
use crate::membership::{View, ViewStore};
use crate::engine::worker::Worker;
use crate::error::{ChorusError, Result};
use crate::memory::{Location, Registry};
use crate::options::{default_host_id, Options};
use crate::sys::shm::Segment;
use crate::transport::{self, shm, tcp, Link, PeerInfo};
use chorus_bootstrap::{listen, Store};
use crossbeam::channel::Sender;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The collective stream's state, owned by whoever runs the current collective.
pub struct CollState {
    pub comm: Comm,
}

/// Counters a test or a user can read to see what the group did.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections (sockets or shared-memory mappings) this rank made for the group.
    pub connections: AtomicU64,
    /// Collectives this rank issued.
    pub collectives: AtomicU64,
}

pub struct GroupInner {
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
    pub links: Vec<Option<Arc<dyn Link>>>,
    pub transports: Vec<&'static str>,
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
}

/// A rank's position in the collective sequence, as reported to recovery.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    pub committed: u64,
    pub current: Option<(u64, bool)>,
    /// Highest recovery round this rank posted for.
    pub posted: u64,
}

fn key(uid: &str, rest: &str) -> String {
    format!("chorus/{uid}/{rest}")
}

fn unique_token() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{}-{:x}", crate::sys::proc::pid(), nanos & 0xffff_ffff_ffff)
}

fn group_key(uid: &str) -> u64 {
    crate::engine::comm::describe(&uid.bytes().map(u64::from).collect::<Vec<_>>())
}

/// Creates the group `uid` of `size` ranks (this one is `rank`). Every member calls this.
pub fn create(store: Arc<dyn Store>, uid: String, rank: usize, size: usize, parent_ranks: Vec<usize>, opts: Options) -> Result<Arc<GroupInner>> {
    if size == 0 || rank >= size {
        return Err(ChorusError::InvalidRank { rank, size });
    }
    crate::options::init_logging();
    let _span = tracing::info_span!("group_create", uid = %uid, rank, size).entered();
    let deadline = Instant::now() + opts.timeout;
    let host_id = opts.host_id.clone().unwrap_or_else(default_host_id);

    // Bind before publishing (DESIGN invariant 5); create segments before publishing their names.
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
        shm_signals: sig_name.clone(),
        shm_data: data_name.clone(),
    };
    let encoded = bincode::serde::encode_to_vec(&me, bincode::config::standard())
        .map_err(|e| ChorusError::InvalidArgument(format!("encoding peer info: {e}")))?;
    store.set(&key(&uid, &format!("peer/{rank}")), &encoded)?;
    let keys: Vec<String> = (0..size).map(|r| key(&uid, &format!("peer/{r}"))).collect();
    let key_refs: Vec<&str> = keys.iter().map(|s| s.as_str()).collect();
    let left = deadline.saturating_duration_since(Instant::now());
    let values = store.wait(&key_refs, left)?;
    let peers: Vec<PeerInfo> = values
        .iter()
        .map(|v| {
            bincode::serde::decode_from_slice::<PeerInfo, _>(v, bincode::config::standard())
                .map(|(p, _)| p)
                .map_err(|e| ChorusError::InvalidArgument(format!("a peer published undecodable info ({e}); are all ranks running the same chorus version?")))
        })
        .collect::<Result<_>>()?;

    // Links: shared memory where the host matches, sockets otherwise. Higher ranks connect.
    let gkey = group_key(&uid);
    let counters = Counters::default();
    let mut links: Vec<Option<Arc<dyn Link>>> = (0..size).map(|_| None).collect();
    let mut transports = vec![""; size];
    let mut tcp_higher = 0;
    // RDMA where both ends have a usable device (every rank publishes its capability, so a rank
    // without one never makes the others wait); shared memory still wins on one host.
    let mut rdma_links = transport::rdma::setup(&*store, &uid, &me, &peers, &local.signals, |p| shm::can_connect(&me, p), deadline)?;
    for p in &peers {
        if p.rank == rank {
            continue;
        }
        if shm::can_connect(&me, p) {
            links[p.rank] = Some(Arc::new(shm::connect(rank, size, &local, p)?));
            transports[p.rank] = shm::NAME;
            counters.connections.fetch_add(1, Ordering::Relaxed);
        } else if let Some(l) = rdma_links.remove(&p.rank) {
            links[p.rank] = Some(Arc::new(l));
            transports[p.rank] = transport::rdma::NAME;
            counters.connections.fetch_add(1, Ordering::Relaxed);
        } else if tcp::can_connect(&me, p) {
            if p.rank < rank {
                let s = tcp::connect(rank, p, gkey, deadline)?;
                links[p.rank] = Some(Arc::new(tcp::link(rank, p.rank, s, local.signals.clone())?));
                transports[p.rank] = tcp::NAME;
                counters.connections.fetch_add(1, Ordering::Relaxed);
            } else {
                tcp_higher += 1;
            }
        }
    }
    for (r, s) in tcp::accept(&listener, tcp_higher, gkey, deadline)? {
        if r >= size || r <= rank || links[r].is_some() {
            return Err(ChorusError::Connect { transport: tcp::NAME, peer: r, why: "unexpected introduction".into() });
        }
        links[r] = Some(Arc::new(tcp::link(rank, r, s, local.signals.clone())?));
        transports[r] = tcp::NAME;
        counters.connections.fetch_add(1, Ordering::Relaxed);
    }
    drop(listener);

    // Everyone mapped everyone: the names can go (nothing leaks in /dev/shm after a crash).
    store.set(&key(&uid, &format!("mapped/{rank}")), b"1")?;
    let keys: Vec<String> = (0..size).map(|r| key(&uid, &format!("mapped/{r}"))).collect();
    let key_refs: Vec<&str> = keys.iter().map(|s| s.as_str()).collect();
    store.wait(&key_refs, deadline.saturating_duration_since(Instant::now()))?;
    Segment::unlink(&sig_name);
    Segment::unlink(&data_name);

    let local_ranks = peers.iter().filter(|p| p.host_id == me.host_id).count();
    // Chunks from socket peers land through this process's reader threads: those need a core
    // too, so count them as extra local contenders.
    let socket_links = links.iter().flatten().filter(|l| !l.shares_memory()).count();
    let policy = WaitPolicy::for_host(local_ranks + if socket_links > 0 { local_ranks } else { 0 });
    let chunk = links.iter().flatten().map(|l| l.geometry().slot_bytes).min().unwrap_or(shm::geometry().slot_bytes);
    let all_shared_memory = links.iter().flatten().all(|l| l.shares_memory());
    tracing::debug!(?transports, chunk, "group links ready");

    let liveness = Arc::new(Liveness::new(size));
    let rounds_applied = Arc::new(AtomicU64::new(0));
    let coll = Comm::new(rank, size, Stream::Collective, links.clone(), local.signals.clone(), policy.clone(), opts.timeout, liveness.clone(), rounds_applied.clone());
    let p2p = Comm::new(rank, size, Stream::P2p, links.clone(), local.signals.clone(), policy, opts.timeout, liveness.clone(), rounds_applied.clone());
    let (p2p_tx, p2p_rx) = crossbeam::channel::unbounded();
    let p2p_thread = std::thread::Builder::new()
        .name(format!("chorus-p2p-{uid}-{rank}"))
        .spawn(move || P2pEngine::new(p2p).run(p2p_rx))
        .map_err(|e| ChorusError::InvalidArgument(format!("spawning the point-to-point thread: {e}")))?;

    let views = ViewStore::new(store.clone(), &uid, size);
    let view = views.read()?;
    let inner = Arc::new(GroupInner {
        worker: Worker::start(format!("chorus-coll-{uid}-{rank}")),
        uid,
        rank,
        size,
        parent_ranks,
        store,
        coll: Arc::new(Mutex::new(CollState { comm: coll })),
        p2p_tx: Mutex::new(Some(p2p_tx)),
        p2p_thread: Mutex::new(Some(p2p_thread)),
        signals: local.signals.clone(),
        links,
        transports,
        chunk,
        all_shared_memory,
        opts,
        op_seq: AtomicU64::new(0),
        subgroups: AtomicU64::new(0),
        lifecycle: AtomicU64::new(0),
        counters,
        registry,
        views,
        view: Mutex::new(view),
        liveness,
        rounds_applied,
        progress: Mutex::new(Progress::default()),
        heartbeat: Mutex::new(None),
        last_info: Mutex::new(Default::default()),
        pending_failed: Mutex::new(Vec::new()),
    });
    let weak = Arc::downgrade(&inner);
    let interval = inner.liveness.interval;
    let hb = std::thread::Builder::new()
        .name(format!("chorus-hb-{}-{rank}", inner.uid))
        .spawn(move || heartbeat_loop(weak, interval))
        .map_err(|e| ChorusError::InvalidArgument(format!("spawning the heartbeat thread: {e}")))?;
    *inner.heartbeat.lock().unwrap_or_else(|p| p.into_inner()) = Some(hb);
    Ok(inner)
}

/// Beats to every peer; answers recovery requests for a rank that is between collectives.
fn heartbeat_loop(group: std::sync::Weak<GroupInner>, interval: Duration) {
    loop {
        {
            let Some(g) = group.upgrade() else { return };
            if g.lifecycle.load(Ordering::SeqCst) != 0 {
                return;
            }
            g.liveness.beat(&g.links);
            if let Some(round) = g.pending_round() {
                if let Err(e) = g.post_recovery(round) {
                    tracing::debug!(error = %e, "posting a recovery report failed");
                }
            }
        }
        std::thread::sleep(interval);
    }
}

impl GroupInner {
    /// The highest recovery round a peer asked for that this rank has not applied yet.
    pub fn pending_round(&self) -> Option<u64> {
        let applied = self.rounds_applied.load(Ordering::SeqCst);
        let view = self.view.lock().unwrap_or_else(|p| p.into_inner()).clone();
        // Our own entry is raised by a local view change request.
        view.members()
            .into_iter()
            .map(|p| self.signals.control(p, Control::Recovery).load(Ordering::SeqCst))
            .filter(|&r| r > applied)
            .max()
    }

    /// Whether `peer` is known to be gone.
    pub fn peer_dead(&self, peer: usize) -> bool {
        match &self.links[peer] {
            Some(l) => l.check_alive().is_err() || self.liveness.stalled(&self.signals, peer).is_some(),
            None => false,
        }
    }

    /// Posts this rank's progress for recovery round `round` (once per round and state).
    pub fn post_recovery(&self, round: u64) -> Result<()> {
        let view = self.view.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut progress = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        let dead: Vec<usize> = view.members().into_iter().filter(|&p| p != self.rank && self.peer_dead(p)).collect();
        let post = Post { committed: progress.committed, current: progress.current, dead, epoch: view.epoch };
        let r = Round { store: &self.store, views: &self.views, uid: &self.uid, me: self.rank, round, view: &view };
        r.post(&post)?;
        progress.posted = progress.posted.max(round);
        drop(progress);
        // Make sure every live member joins the round.
        for p in view.members() {
            if let Some(l) = &self.links[p] {
                let _ = l.control(Control::Recovery, round);
            }
        }
        Ok(())
    }

    pub fn check_live(&self) -> Result<()> {
        if self.lifecycle.load(Ordering::SeqCst) != 0 {
            return Err(ChorusError::Destroyed);
        }
        Ok(())
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
        if notify_peers {
            for l in self.links.iter().flatten() {
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

/// For `transport::Link` users that only need the name list.
pub fn transport_names(links: &[Option<Arc<dyn Link>>]) -> Vec<&'static str> {
    links.iter().map(|l| l.as_ref().map_or("self", |l| l.transport())).collect()
}

