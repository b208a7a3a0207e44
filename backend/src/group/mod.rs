//! A group's state and engine start ([`setup`] has how a rank enters a group: `create` and a
//! replacement's `join`); survivors link to a replacement between collectives (`serve_joins`).
pub(crate) mod replicas;
mod rendezvous;
mod setup;

pub use setup::{create, join};

use crate::engine::comm::Comm;
use crate::engine::p2p::{P2pEngine, P2pOp};
use crate::engine::worker::Worker;
use crate::error::{ChorusError, Result};
use crate::membership::join::{self, Handoff, JoinRequest};
use crate::membership::liveness::Liveness;
use crate::membership::member::{Membership, Peers, Resumed, SystemClock};
use crate::membership::{self, View, ViewStore};
use crate::memory::Registry;
use crate::options::{ForcedAlgo, Options};
use crate::transport::shm::LocalSegments;
use crate::transport::signals::{Control, SignalBlock, Stream, WaitPolicy, ABORT_DESTROYED};
use crate::transport::{Link, PeerInfo, Setup, Table};
use chorus_bootstrap::Store;
use crossbeam::channel::Sender;
use setup::{key, Prepared};
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

/// A GPU communicator of the group: the device it runs on, the view epoch it was built in and that
/// view's members, which it spans (communicator rank i is group rank `members[i]`).
#[cfg(feature = "cuda")]
pub struct DeviceSlot {
    pub ordinal: usize,
    pub epoch: u64,
    pub members: Arc<[usize]>,
    pub comm: Arc<chorus_kernels::cuda::DeviceComm>,
}

pub struct GroupInner {
    /// GPU communicators of this group, one per CUDA device ordinal (created on first use, rebuilt
    /// after the view changed).
    #[cfg(feature = "cuda")]
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
    /// The transports, in the order they are tried (they keep what relinking needs).
    transports: Table,
    /// Chunk size every plan of this group is built with (fits every link's slots).
    pub chunk: usize,
    /// The algorithm `Options::algo` forces, if any (read once, at creation).
    pub forced_algo: Option<ForcedAlgo>,
    /// The host identity of every rank this rank knows (`None`: never linked), by group rank;
    /// a replacement's is learnt when it is linked. Algorithms are chosen from the hosts of the
    /// active members (`host_indices`), alike on every rank.
    host_ids: Mutex<Vec<Option<String>>>,
    /// Monotonic: collectives submitted so far (the next op's sequence number is this + 1).
    pub op_seq: AtomicU64,
    pub subgroups: AtomicU64,
    /// Monotonic lifecycle: 0 live, 1 destroyed.
    pub lifecycle: AtomicU64,
    pub counters: Counters,
    pub registry: Registry,
    /// This rank's membership: view, progress, recovery rounds, join counters.
    pub membership: Membership,
    /// Handles on the membership's view records, view and rounds-applied counter, for the API.
    pub views: ViewStore,
    pub view: Arc<Mutex<View>>,
    pub rounds_applied: Arc<AtomicU64>,
    pub liveness: Arc<Liveness>,
    /// The heartbeat and attendant threads (`membership::threads`).
    membership_threads: Mutex<membership::threads::MembershipThreads>,
    pub last_info: Mutex<crate::engine::work::OpInfo>,
    /// Monotonic: join requests refused because their rank was active and alive.
    pub joins_refused: AtomicU64,
    /// This rank's replica of the membership records, and the store over every rank's
    /// (`Options::membership_replicas`; `replicas`).
    replica: Option<chorus_bootstrap::StoreServer>,
    membership_store: Option<Arc<chorus_bootstrap::ReplicatedStore>>,
    /// Where joins are exchanged (requests, hand-offs, peer records): the membership store when
    /// there is one, so that a replacement can join after the job's store is gone; else the
    /// job's store.
    pub join_store: Arc<dyn Store>,
    /// 1 once this rank's records for replacements are in the membership store (0 before).
    published_for_joiners: AtomicU64,
    /// The GPU path across hosts (`api::hybrid`): the view epoch and host layout it was built for,
    /// and this rank's rail (the subgroup of the same place on every host), if it has one.
    #[allow(clippy::type_complexity)]
    pub rails: Mutex<Option<(u64, Vec<Vec<usize>>, Option<Arc<GroupInner>>)>>,
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
    membership_store: Option<Arc<chorus_bootstrap::ReplicatedStore>>,
    uid: String,
    rank: usize,
    size: usize,
    parent_ranks: Vec<usize>,
    opts: Options,
    prep: Prepared,
    transports: Table,
    links: Vec<Option<Arc<dyn Link>>>,
    counters: Counters,
    host_ids: Vec<Option<String>>,
    chunk: usize,
    resume: Option<Resume>,
) -> Result<Arc<GroupInner>> {
    // From here on, losing the store is the loss of its host, and errors say so.
    let store: Arc<dyn Store> = Arc::new(chorus_bootstrap::AfterRendezvous::new(store));
    // Chunks from socket peers land through this process's reader threads: those need a core
    // too, so count them as extra local contenders.
    let socket_links = links.iter().flatten().filter(|l| !l.shares_memory()).count();
    let local_ranks = host_ids.iter().filter(|h| h.as_deref() == Some(prep.me.host_id.as_str())).count();
    let policy = WaitPolicy::for_host(local_ranks + if socket_links > 0 { local_ranks } else { 0 }, opts.spin, opts.yield_for);
    tracing::debug!(transports = ?transport_names(&links), chunk, "group links ready");

    let liveness = Arc::new(Liveness::new(size, opts.heartbeat_interval, opts.heartbeat_timeout));
    // A new group starts with every rank present at creation (a view change another rank already
    // stored is adopted by all through its round, at the same collective); a replacement or a
    // rank filling an empty slot takes the survivors' view.
    let resumed = resume.as_ref().map(|r| Resumed { view: r.view.clone(), committed: r.committed, rounds: r.rounds });
    // Recovery rounds and views go through the replicas when there are some (`replicas`).
    let records: Arc<dyn Store> = match &membership_store {
        Some(m) => m.clone(),
        None => store.clone(),
    };
    let initial = View::starting(size, &opts.present_at_creation(size));
    let membership = Membership::new(rank, size, &uid, records.clone(), opts.policy, opts.timeout, Arc::new(SystemClock), resumed)
        .with_timeout_knob(opts.timeout_knob)
        .with_initial_view(initial, resume.is_none());
    let rounds_applied = membership.rounds_handle();
    let signals = prep.local.signals.clone();
    let mut coll = Comm::new(rank, size, Stream::Collective, links.clone(), signals.clone(), policy.clone(), opts.timeout, opts.timeout_knob, liveness.clone(), rounds_applied.clone());
    let mut p2p = Comm::new(rank, size, Stream::P2p, links.clone(), signals.clone(), policy, opts.timeout, opts.timeout_knob, liveness.clone(), rounds_applied.clone());
    if let Some(r) = &resume {
        // Continue every pair's sequence numbers where the survivors are (counters never restart).
        for (s, coll_h, p2p_h) in &r.handoffs {
            join::adopt(&signals, &mut coll, *s, coll_h);
            join::adopt(&signals, &mut p2p, *s, p2p_h);
        }
    }
    let (p2p_tx, p2p_rx) = crossbeam::channel::unbounded();
    let mut engine = P2pEngine::new(p2p);
    if opts.fault_tolerance {
        // A point-to-point failure on a dead peer completes once the view dropped it, which the
        // attendant threads agree on without waiting for a collective (`settle_between`).
        let view = membership.view_handle();
        engine = engine.with_departed(Box::new(move |peer| !view.lock().unwrap_or_else(|p| p.into_inner()).is_active(peer)));
    }
    let p2p_thread = std::thread::Builder::new()
        .name(format!("chorus-p2p-{uid}-{rank}"))
        .spawn(move || engine.run(p2p_rx))
        .map_err(|e| ChorusError::InvalidArgument(format!("spawning the point-to-point thread: {e}")))?;
    let committed = membership.committed();
    let inner = Arc::new(GroupInner {
        #[cfg(feature = "cuda")]
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
        transports,
        chunk,
        forced_algo: opts.algo.as_deref().and_then(ForcedAlgo::parse),
        host_ids: Mutex::new(host_ids),
        opts,
        op_seq: AtomicU64::new(committed),
        subgroups: AtomicU64::new(resume.as_ref().map_or(0, |r| r.handoffs.iter().map(|(_, h, _)| h.subgroups).max().unwrap_or(0))),
        lifecycle: AtomicU64::new(0),
        counters,
        registry: prep.registry,
        views: membership.views().clone(),
        view: membership.view_handle(),
        rounds_applied,
        membership,
        liveness,
        membership_threads: Mutex::new(Default::default()),
        last_info: Mutex::new(Default::default()),
        joins_refused: AtomicU64::new(0),
        replica: prep.replica,
        membership_store,
        join_store: records,
        // A replacement published its records while joining.
        published_for_joiners: AtomicU64::new(resume.is_some() as u64),
        rails: Mutex::new(None),
    });
    // Joins announced before this rank existed are not for it.
    if let Some(n) = join::announced(&inner.join_store, &inner.uid)? {
        inner.membership.skip_joins(n);
    }
    let threads = membership::threads::spawn(Arc::downgrade(&inner), &format!("{}-{rank}", inner.uid), inner.liveness.interval, inner.opts.fault_tolerance)?;
    *inner.membership_threads.lock().unwrap_or_else(|p| p.into_inner()) = threads;
    Ok(inner)
}

impl membership::threads::Member for GroupInner {
    fn live(&self) -> bool {
        self.lifecycle.load(Ordering::SeqCst) == 0
    }

    fn beat(&self) {
        self.liveness.beat(&self.links());
        #[cfg(feature = "cuda")]
        self.abort_device_comms_of_dead_peers();
    }

    fn attend(&self, answered: &mut Option<(u64, u8, u64)>, poll_joins: bool) {
        match self.membership.answer(self, *answered) {
            Ok(a) => *answered = a,
            Err(e) => tracing::debug!(error = %e, "answering a recovery round failed"),
        }
        if let Err(e) = self.membership.settle_between(self) {
            tracing::debug!(error = %e, "settling a failure round between collectives failed");
        }
        if poll_joins {
            if let Some(n) = self.joins_announced_hint() {
                self.membership.joins_announced(n);
            }
        }
        self.publish_for_joiners();
    }
}

impl Peers for GroupInner {
    fn peer_dead(&self, peer: usize) -> bool {
        GroupInner::peer_dead(self, peer)
    }

    fn raise(&self, members: &[usize], value: u64) {
        let links = self.links();
        for &p in members {
            if let Some(l) = &links[p] {
                let _ = l.control(Control::Recovery, value);
            }
        }
        self.signals.publish(self.signals.control(self.rank, Control::Recovery), value);
    }

    fn highest_request(&self) -> u64 {
        (0..self.size).map(|p| self.signals.control(p, Control::Recovery).load(Ordering::SeqCst)).max().unwrap_or(0)
    }
}

impl GroupInner {
    /// The current link table (a snapshot).
    pub fn links(&self) -> Vec<Option<Arc<dyn Link>>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Aborts every GPU communicator that spans a peer found dead, so its kernels stop waiting for
    /// that peer now instead of at their deadline (reason: 1 + the dead rank). A kernel cannot see a
    /// dead process; this host-side check is how it learns.
    #[cfg(feature = "cuda")]
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

    /// The host of each of `members` (group ranks), numbered by first appearance: equal
    /// identities share a number; a rank whose identity is unknown gets a host of its own.
    pub fn host_indices(&self, members: &[usize]) -> Vec<usize> {
        let ids = self.host_ids.lock().unwrap_or_else(|e| e.into_inner());
        let mut seen: Vec<Option<&str>> = Vec::new();
        members
            .iter()
            .map(|&r| {
                let id = ids[r].as_deref();
                match seen.iter().position(|s| id.is_some() && *s == id) {
                    Some(h) => h,
                    None => {
                        seen.push(id);
                        seen.len() - 1
                    }
                }
            })
            .collect()
    }

    /// Whether `peer` is known to be gone.
    pub fn peer_dead(&self, peer: usize) -> bool {
        match &self.links()[peer] {
            Some(l) => l.check_alive().is_err() || self.liveness.stalled(&self.signals, peer).is_some(),
            None => false,
        }
    }

    /// Asks every member of `members` (and this rank) to take part in recovery round `round`, a
    /// failure round (it interrupts their waits) or an admission round.
    pub fn raise_recovery(&self, round: u64, failure: bool, members: &[usize]) {
        self.membership.raise(self, round, failure, members);
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
        for seq in self.membership.joins_to_serve() {
            let Some(req) = join::request(&self.join_store, &self.uid, seq)? else { break };
            if req.rank != self.rank && req.rank < self.size {
                // Only a rank the view no longer counts, or one known dead, can be replaced: a join
                // record for a live member (written by anyone with store access) would otherwise
                // redirect its links (issue 17).
                if self.membership.view().is_active(req.rank) && !self.peer_dead(req.rank) {
                    self.joins_refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(joiner = req.rank, seq = req.seq, "refused a join for rank {}: it is active and alive in the current view, so it cannot be replaced", req.rank);
                    self.membership.join_served(seq);
                    continue;
                }
                if let Err(e) = self.link_joiner(comm, &req) {
                    tracing::warn!(joiner = req.rank, error = %e, "linking to a replacement rank failed");
                }
            }
            self.membership.join_served(seq);
        }
        Ok(())
    }

    fn link_joiner(&self, comm: &mut Comm, req: &JoinRequest) -> Result<()> {
        let _span = tracing::info_span!("link_joiner", joiner = req.rank, seq = req.seq).entered();
        let deadline = Instant::now() + self.opts.timeout;
        let info = join::joiner_info(&self.join_store, &self.uid, req, deadline)?;
        let p = req.rank;
        if let Some(m) = &self.membership_store {
            // The replacement's replica takes its slot, voting on the rounds after ours; later
            // replacements that find the group through our replica read its record there.
            let record = self.join_store.wait(&[&replicas::ReplicaInfo::key(&self.uid, p)], deadline.saturating_duration_since(Instant::now()))?;
            let record = replicas::ReplicaInfo::decode(p, &record[0]);
            // A rank filling an empty slot has no acceptor slot to refill.
            if let Some(slot) = replicas::acceptor_slot(&self.opts.present_at_creation(self.size), p) {
                replicas::refill(m, slot, &self.uid, self.size, &record, self.membership.rounds_applied(), req.seq, self.opts.timeout)?;
            }
            if let Some(own) = &self.replica {
                replicas::publish_directory(own, &self.uid, &self.opts.name, self.size, std::slice::from_ref(&record))?;
            }
        }
        // Chunks the dead predecessor never consumed are forfeited: our credits restart full. (It
        // sends nothing more, and the replacement sends nothing before our handoff, so this can
        // come before the new link; a transport that carries the counters into its connection
        // also asks for the point-to-point stream's.)
        let coll = join::forfeit(&self.signals, comm, p);
        // The joiner bound its listener before it announced itself: a connection it refuses for
        // longer than a hiccup means it died or gave up this attempt (it announces a new one),
        // and the members, which link between collectives, must not wait for it.
        let gave_up = Instant::now() + Duration::from_millis(500);
        let joiner_gone = move || match Instant::now() > gave_up {
            true => Err(ChorusError::Connect { transport: "any", peer: p, why: "the joining process does not answer: it died or gave up this attempt".into() }),
            false => Ok(()),
        };
        let setup = Setup { store: &*self.join_store, uid: &self.uid, me: &self.me, ranks: self.size, local: &self.local, listener: None, deadline, watch: &joiner_gone };
        let link = self.transports.relink(&setup, &info, req.seq, &mut || Ok(vec![coll, self.forfeit_p2p(p, deadline)?]))?;
        self.counters.connected(p);
        self.liveness.reset(p);
        self.host_ids.lock().unwrap_or_else(|e| e.into_inner())[p] = Some(info.host_id.clone());
        comm.links[p] = Some(link.clone());
        self.links.lock().unwrap_or_else(|e| e.into_inner())[p] = Some(link.clone());
        let view = self.membership.view();
        join::publish_handoff(&self.join_store, &self.uid, req, self.rank, "coll", &coll, &view, self.membership.committed(), self.membership.rounds_applied(), self.subgroups.load(Ordering::SeqCst))?;
        // The point-to-point stream's counters live with its thread: it relinks and publishes.
        let tx = self.p2p_tx.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(tx) = tx {
            let reply = join::handoff_key(&self.uid, req, self.rank, "p2p");
            let _ = tx.send(P2pOp::Relink { peer: p, link, reply, store: self.join_store.clone() });
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
        self.close(notify_peers, true);
    }

    /// A join attempt that was turned down ([`ChorusError::JoinOutdated`]): stops this process's
    /// side like `destroy`, but does not count as a rank leaving the group (its keys stay).
    pub fn abandon(&self) {
        self.close(false, false);
    }

    fn close(&self, notify_peers: bool, counted: bool) {
        if self.lifecycle.fetch_max(1, Ordering::SeqCst) != 0 {
            return;
        }
        let _ = self.worker.quiesce(Duration::from_secs(5));
        self.worker.stop();
        // The acceptor threads end before destroy returns: one of them calls the job's store,
        // which under torch's Python fallback is a callback into an interpreter that may be
        // finalizing next (a call from a foreign thread then aborts the process). Closing it
        // first also ends at once any membership-store call the attendant thread is inside.
        if let Some(m) = &self.membership_store {
            m.close(chorus_bootstrap::replicated::CLOSE_WAIT);
        }
        // They see the group is no longer live as soon as they wake.
        let mut threads = std::mem::take(&mut *self.membership_threads.lock().unwrap_or_else(|p| p.into_inner()));
        threads.stop();
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
        if counted {
            self.delete_store_keys_when_last();
        }
        if let Some(r) = &self.replica {
            r.shutdown();
        }
    }

    /// The rank whose destroy completes the group's count (every rank's threads are joined by
    /// then) deletes the group's store keys, so a long job that makes many groups does not grow
    /// the store without bound (issue 17). Keys of its subgroups (`<uid>/<k>...`, which may
    /// outlive it) are left to them. A group some rank of which never destroys it (it died)
    /// keeps its keys.
    fn delete_store_keys_when_last(&self) {
        let prefix = format!("chorus/{}/", self.uid);
        let destroyed = match self.store.add(&format!("{prefix}destroyed"), 1) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "could not count this rank's destroy in the store");
                return;
            }
        };
        // Every slot's last process destroys the group once: the slots present at creation and
        // the empty ones a joiner filled since (`filled/<rank>`, set when it was admitted).
        let present = self.opts.present_at_creation(self.size);
        let slots = match present.len() < self.size {
            true => present.len() + self.store.list_prefix(&format!("{prefix}filled/")).map_or(0, |k| k.len()),
            false => self.size,
        };
        if usize::try_from(destroyed).ok() != Some(slots) {
            return;
        }
        // The group's own keys, and the registers the job's store keeps for them as a membership
        // acceptor (`px/<key>`, `chorus_bootstrap::replicated`).
        for prefix in [prefix.clone(), format!("px/{prefix}")] {
            let keys = match self.store.list_prefix(&prefix) {
                Ok(keys) => keys,
                Err(e) => {
                    tracing::debug!(error = %e, "could not list the destroyed group's store keys");
                    return;
                }
            };
            let own = keys.iter().filter(|k| !k[prefix.len()..].starts_with(|c: char| c.is_ascii_digit()));
            for key in own {
                if let Err(e) = self.store.delete(key) {
                    tracing::debug!(key, error = %e, "could not delete a destroyed group's store key");
                    return;
                }
            }
        }
    }

    /// A rank that filled an empty slot counts among those that destroy the group
    /// (`delete_store_keys_when_last`).
    pub fn note_filled_slot(&self) {
        if self.opts.present_at_creation(self.size).binary_search(&self.rank).is_err() {
            if let Err(e) = self.store.set(&key(&self.uid, &format!("filled/{}", self.rank)), b"1") {
                tracing::debug!(error = %e, "could not record the filled slot in the store");
            }
        }
    }

    /// How many joins were announced, as far as a quick look tells (a poll: with replicas, a
    /// read that agrees now or nothing, never a round that could outbid a joiner's write).
    fn joins_announced_hint(&self) -> Option<u64> {
        let k = key(&self.uid, "joins");
        let raw = match &self.membership_store {
            Some(m) => m.peek(&k),
            None => self.store.get(&k),
        };
        raw.ok().flatten().and_then(|b| String::from_utf8_lossy(&b).trim().parse().ok())
    }

    /// Once per group, from the attendant thread (group creation does not wait for it): with
    /// replicas, what a replacement reads about this rank (its peer record, and its transports'
    /// capability records) goes into the membership store, through which joins run. Retried each
    /// turn until it succeeds.
    fn publish_for_joiners(&self) {
        let Some(m) = &self.membership_store else { return };
        if self.published_for_joiners.load(Ordering::SeqCst) != 0 {
            return;
        }
        let deadline = Instant::now() + self.opts.timeout;
        let setup = Setup { store: &**m, uid: &self.uid, me: &self.me, ranks: self.size, local: &self.local, listener: None, deadline, watch: &crate::transport::watch_nothing };
        match m.set(&key(&self.uid, &format!("peer/{}", self.rank)), &self.me.encode()).map_err(ChorusError::from).and_then(|()| self.transports.prepare(&setup)) {
            Ok(()) => {
                self.published_for_joiners.fetch_max(1, Ordering::SeqCst);
            }
            Err(e) => tracing::debug!(error = %e, "could not publish this rank's records for replacements yet"),
        }
    }

    /// Where this rank's membership replica listens.
    pub fn replica_address(&self) -> Option<String> {
        self.replica.as_ref().map(|r| r.local_addr().to_string())
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
