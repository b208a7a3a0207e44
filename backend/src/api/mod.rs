//! The public Rust API: [`ProcessGroup`], its collectives and point-to-point calls.
pub mod buffer;
mod collectives;
// GPU collectives (the `cuda` feature).
#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "cuda")]
mod device_group;
mod ft;
#[cfg(feature = "cuda")]
pub mod hybrid;
mod issue;
mod p2p;
mod scope;
#[cfg(feature = "cuda")]
pub mod staged;
pub mod p2p_types { pub use super::p2p::P2pRequest; }
#[cfg(feature = "cuda")]
pub use device_group::DeviceGroup;
#[cfg(feature = "cuda")]
pub use staged::{DeviceOps, DeviceRoute, DeviceStage, HostReason};
pub use issue::{Issued, Mode};
pub use scope::{OpScope, ScopedWork};
pub mod select;

use crate::engine::comm::OpCtx;
use crate::engine::desc::OpDesc;
use crate::engine::work::{OpInfo, Work};
use crate::error::{ChorusError, Result};
use crate::group::{self, GroupInner};
use crate::membership::marks::ResumePoint;
use crate::memory::Location;
use crate::options::Options;
use chorus_bootstrap::{env, Store, StoreServer};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A group of ranks that run collectives together. Cheap to clone (a handle).
#[derive(Clone)]
pub struct ProcessGroup {
    inner: Arc<GroupInner>,
    /// Keeps a store this rank hosts alive for the group's life.
    _server: Option<Arc<StoreServer>>,
}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessGroup").field("uid", &self.inner.uid).field("rank", &self.inner.rank).field("size", &self.inner.size).finish()
    }
}

/// How long a replacement that can find the group through members' replicas tries the job's
/// store first.
const JOB_STORE_PROBE: Duration = Duration::from_millis(200);

impl ProcessGroup {
    /// Creates a top-level group: every one of `size` ranks calls this with its `rank` and a
    /// client of the same store.
    pub fn new(store: Arc<dyn Store>, rank: usize, size: usize, opts: Options) -> Result<ProcessGroup> {
        // Generations keep repeated top-level groups with the same name apart on one store.
        let gen = store.add(&group::replicas::generation_key(&opts.name, rank), 1)?;
        let uid = format!("{}.{gen}", opts.name);
        // The empty slots' processes join this generation: the first member present names it for them.
        let present = opts.present_at_creation(size);
        if present.first() == Some(&rank) {
            for slot in (0..size).filter(|r| present.binary_search(r).is_err()) {
                store.set(&group::replicas::generation_key(&opts.name, slot), gen.to_string().as_bytes())?;
            }
        }
        let inner = group::create(store, uid, rank, size, (0..size).collect(), opts)?;
        let pg = ProcessGroup { inner, _server: None };
        pg.leave_replica_address();
        Ok(pg)
    }

    /// [`ProcessGroup::new`] for async programs: creation (which waits for every rank) runs on a
    /// thread of its own and the returned future completes with the group, so the executor keeps
    /// running other tasks meanwhile.
    pub fn new_async(store: Arc<dyn Store>, rank: usize, size: usize, opts: Options) -> Creation {
        Creation::spawn(move || ProcessGroup::new(store, rank, size, opts))
    }

    /// [`ProcessGroup::from_env`] for async programs, as [`ProcessGroup::new_async`].
    pub fn from_env_async(opts: Options) -> Creation {
        Creation::spawn(move || ProcessGroup::from_env(opts))
    }

    /// [`ProcessGroup::join`] for async programs, as [`ProcessGroup::new_async`].
    pub fn join_async(store: Arc<dyn Store>, rank: usize, size: usize, opts: Options) -> Creation {
        Creation::spawn(move || ProcessGroup::join(store, rank, size, opts))
    }

    /// Writes this rank's replica address to [`Options::replica_dir`], where a launcher's
    /// replacement finds it; a failure only costs a later replacement that way of joining.
    fn leave_replica_address(&self) {
        let (Some(dir), Some(addr)) = (&self.inner.opts.replica_dir, self.replica_address()) else { return };
        if let Err(e) = group::replicas::leave_address(dir, &self.inner.opts.name, self.rank(), &addr) {
            tracing::warn!(dir = %dir.display(), error = %e, "could not leave this rank's replica address in CHORUS_REPLICA_DIR: a replacement cannot find the group there");
        }
    }

    /// A replacement's [`Options::join_via`]: as given, else the addresses the other ranks left
    /// in [`Options::replica_dir`].
    fn join_addresses(opts: &Options, rank: usize) -> Vec<String> {
        match (&opts.replica_dir, opts.join_via.is_empty()) {
            (Some(dir), true) => group::replicas::addresses_left(dir, &opts.name, rank),
            _ => opts.join_via.clone(),
        }
    }

    /// Creates the default group from torchrun/SLURM/chorus-run environment variables: rank 0
    /// hosts the store unless `CHORUS_STORE_ADDR` names one (as `chorus-run` does).
    pub fn from_env(opts: Options) -> Result<ProcessGroup> {
        let rdv = env::from_env()?;
        let mut opts = opts;
        if opts.route_hint.is_none() {
            opts.route_hint = Some(rdv.master_addr.clone());
        }
        // A replacement process (CHORUS_JOIN=1) rejoins the running group instead.
        if std::env::var("CHORUS_JOIN").is_ok_and(|v| v == "1") {
            opts.join_via = Self::join_addresses(&opts, rdv.rank);
            let addr = rdv.store_addr.clone().unwrap_or_else(|| format!("{}:{}", rdv.master_addr, env::store_port(&rdv)));
            let store: Arc<dyn Store> = match (chorus_bootstrap::StoreClient::connect(&addr, if opts.join_via.is_empty() { opts.timeout } else { JOB_STORE_PROBE }), opts.join_via.is_empty()) {
                (Ok(client), _) => Arc::new(client),
                (Err(e), true) => return Err(e.into()),
                // Finding the group through members' replicas (CHORUS_JOIN_VIA), the job's store
                // is not needed: its host may be the process this one replaces.
                (Err(e), false) => {
                    tracing::info!(store = %addr, error = %e, "the job's store does not answer: joining through the members' replicas");
                    Arc::new(chorus_bootstrap::MemStore::new())
                }
            };
            return ProcessGroup::join(store, rdv.rank, rdv.world_size, opts);
        }
        let (store, server) = env::connect_store(&rdv, opts.timeout)?;
        let mut pg = ProcessGroup::new(store, rdv.rank, rdv.world_size, opts)?;
        pg._server = server.map(Arc::new);
        Ok(pg)
    }

    /// This process's rank in the group (`0..size`).
    pub fn rank(&self) -> usize {
        self.inner.rank
    }

    /// The number of ranks the group was made with; failed ranks keep their numbers (see
    /// [`ProcessGroup::active_ranks`] for the live ones).
    pub fn size(&self) -> usize {
        self.inner.size
    }

    /// The options the group was made with.
    pub fn options(&self) -> &Options {
        &self.inner.opts
    }

    /// The group's unique id (stable across ranks).
    pub fn uid(&self) -> &str {
        &self.inner.uid
    }

    /// Where the memory registry of this group says `ptr` lives (`None`: not registered).
    pub fn registered_location(&self, ptr: usize) -> Option<Location> {
        self.inner.registry.lookup(ptr).map(|r| r.location)
    }

    /// The transport used towards each rank ("self" for this rank).
    pub fn transports(&self) -> Vec<&'static str> {
        group::transport_names(&self.inner.links())
    }

    /// Connections this rank made for the group (sockets and shared-memory mappings).
    pub fn connection_count(&self) -> u64 {
        self.inner.counters.connections.load(Ordering::Relaxed)
    }

    /// This group's rank `r` expressed as a rank of the group it was made from.
    pub fn parent_rank(&self, r: usize) -> Option<usize> {
        self.inner.parent_ranks.get(r).copied()
    }

    /// A subgroup of the given ranks (ranks of this group). Every rank of this group must call
    /// it, in the same order as other `new_group` calls; members get `Some`, others `None`.
    pub fn new_group(&self, ranks: &[usize]) -> Result<Option<ProcessGroup>> {
        self.inner.check_live()?;
        let mut sorted = ranks.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != ranks.len() {
            return Err(ChorusError::InvalidArgument(format!("new_group: ranks {ranks:?} contain duplicates")));
        }
        if let Some(&bad) = sorted.iter().find(|&&r| r >= self.size()) {
            return Err(ChorusError::InvalidRank { rank: bad, size: self.size() });
        }
        self.new_group_with(&sorted, self.subgroup_options())
    }

    /// [`ProcessGroup::new_group`] of `sorted` (ascending, checked) ranks with `opts`.
    pub(crate) fn new_group_with(&self, sorted: &[usize], opts: Options) -> Result<Option<ProcessGroup>> {
        let k = self.inner.subgroups.fetch_add(1, Ordering::SeqCst);
        let uid = format!("{}/{k}", self.inner.uid);
        let Some(my_index) = sorted.iter().position(|&r| r == self.rank()) else { return Ok(None) };
        let inner = group::create(self.inner.store.clone(), uid, my_index, sorted.len(), sorted.to_vec(), opts)?;
        Ok(Some(ProcessGroup { inner, _server: self._server.clone() }))
    }

    /// A subgroup's options: this group's, with every one of its ranks present at creation.
    pub(crate) fn subgroup_options(&self) -> Options {
        Options { initial_members: None, ..self.inner.opts.clone() }
    }

    /// Splits this group by `color` (ranks with equal colors form a group, ordered by `key` then
    /// rank); `None` opts out. Every active rank of this group must call it.
    pub fn split(&self, color: Option<u32>, key: i64) -> Result<Option<ProcessGroup>> {
        self.inner.check_live()?;
        let k = self.inner.subgroups.fetch_add(1, Ordering::SeqCst);
        let enc = |c: Option<u32>, key: i64| format!("{}:{key}", c.map_or(-1, |c| c as i64));
        let me_key = self.inner.store_key(&format!("split/{k}/{}", self.rank()));
        self.inner.store.set(&me_key, enc(color, key).as_bytes())?;
        // The active ranks answer (an empty slot or a removed rank has nobody to).
        let active = self.active_ranks();
        let keys: Vec<String> = active.iter().map(|r| self.inner.store_key(&format!("split/{k}/{r}"))).collect();
        let refs: Vec<&str> = keys.iter().map(|s| s.as_str()).collect();
        let vals = self.inner.store.wait(&refs, self.inner.opts.timeout)?;
        let Some(color) = color else { return Ok(None) };
        let mut members: Vec<(i64, usize)> = Vec::new();
        for (&r, v) in active.iter().zip(&vals) {
            let s = String::from_utf8_lossy(v);
            let (c, kk) = s.split_once(':').ok_or_else(|| ChorusError::InvalidArgument("bad split record".into()))?;
            if c.parse::<i64>().ok() == Some(color as i64) {
                members.push((kk.parse().unwrap_or(0), r));
            }
        }
        members.sort_unstable();
        let ranks: Vec<usize> = members.iter().map(|&(_, r)| r).collect();
        let my_index = ranks.iter().position(|&r| r == self.rank()).expect("member of own color");
        let uid = format!("{}/{k}.{color}", self.inner.uid);
        let inner = group::create(self.inner.store.clone(), uid, my_index, ranks.len(), ranks, self.subgroup_options())?;
        Ok(Some(ProcessGroup { inner, _server: self._server.clone() }))
    }

    /// Active ranks of the current membership view.
    pub fn active_ranks(&self) -> Vec<usize> {
        self.inner.view.lock().unwrap_or_else(|p| p.into_inner()).members()
    }

    /// Where this rank's membership replica listens (`None` without replicas): give members'
    /// addresses to a replacement as [`Options::join_via`] (`CHORUS_JOIN_VIA`) so that it can
    /// join after the job's store is gone.
    pub fn replica_address(&self) -> Option<String> {
        self.inner.replica_address()
    }

    /// Epoch of the current membership view (raised by every change).
    pub fn current_epoch(&self) -> u64 {
        self.inner.view.lock().unwrap_or_else(|p| p.into_inner()).epoch
    }

    /// Removes `ranks` from the group's view; every rank adopts the change at this rank's next
    /// collective (through a recovery round, so they all switch at the same collective).
    pub fn deactivate_ranks(&self, ranks: &[usize]) -> Result<()> {
        self.inner.check_live()?;
        self.inner.views.deactivate(ranks)?;
        self.request_view_change()
    }

    /// Puts `ranks` (alive and connected) back into the view, like `deactivate_ranks`.
    pub fn activate_ranks(&self, ranks: &[usize]) -> Result<()> {
        self.inner.check_live()?;
        self.inner.views.activate(ranks)?;
        self.request_view_change()
    }

    /// A recovery round that interrupts the collectives in flight, so every rank adopts the stored
    /// view at this rank's next collective (they re-run it under the new view; one whose in-place
    /// input was too large to save fails alike on every rank, as after a failure). A replacement's
    /// own admission interrupts nothing (`ft::admit`).
    fn request_view_change(&self) -> Result<()> {
        let round = self.inner.rounds_applied.load(Ordering::SeqCst) + 1;
        let members: Vec<usize> = (0..self.size()).collect();
        self.inner.raise_recovery(round, true, &members);
        Ok(())
    }

    /// Collectives this rank has issued in this group (a replacement starts at the survivors'
    /// count).
    pub fn ops_completed(&self) -> u64 {
        self.inner.op_seq.load(Ordering::SeqCst)
    }

    /// Marks where this rank is in its own loop: the collectives it issues from now on belong to
    /// `value` (a training step, say) until the next mark. Marks cost no communication; they
    /// travel with the survivors' recovery reports to a replacement, which reads where it joined
    /// from [`ProcessGroup::resume_point`]. Every rank should mark at the same places of the
    /// loop, on the thread that issues its collectives.
    pub fn mark(&self, value: u64) {
        self.inner.membership.mark(value, self.inner.op_seq.load(Ordering::SeqCst));
    }

    /// For a replacement ([`ProcessGroup::join`]): where it joined the survivors' loop. The
    /// survivors' last collective before this rank's first was the `done`-th they issued after
    /// marking `marker` ([`ProcessGroup::mark`]), so this rank issues that part's remaining
    /// collectives (none when `done` is the part's whole count) and goes on from there. `None`
    /// for a rank that did not join, or when the survivors marked nothing before.
    ///
    /// ```no_run
    /// # use chorus_backend::{ProcessGroup, ReduceOp};
    /// # fn f(pg: &ProcessGroup, steps: u64) -> chorus_backend::Result<()> {
    /// // One collective per step: a replacement starts after the survivors' last step.
    /// let first = pg.resume_point().map_or(0, |p| p.marker + 1);
    /// for step in first..steps {
    ///     pg.mark(step);
    ///     let mut grads = vec![1.0f32; 1024];
    ///     pg.all_reduce(&mut grads, ReduceOp::Sum)?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn resume_point(&self) -> Option<ResumePoint> {
        self.inner.membership.resume_point()
    }

    /// Connections the current link to `peer` has made (RDMA: queue pairs, which a rejoin
    /// recreates inside the same link; shared memory and sockets: 1, a rejoin replaces the link).
    pub fn link_connections(&self, peer: usize) -> u64 {
        self.inner.links().get(peer).and_then(|l| l.as_ref().map(|l| l.connections())).unwrap_or(0)
    }

    /// Connections this rank made to `peer` (a rejoin raises only the rejoiner's count).
    pub fn connections_to(&self, peer: usize) -> u64 {
        self.inner.counters.connections_to.get(peer).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Starts a replacement for `rank` of a running top-level group (same store, size and name),
    /// or fills `rank` when it is an empty slot ([`Options::initial_members`]): it waits until the
    /// rank is inactive (the survivors removed the old process), links to the members (only the
    /// pairs that involve it are created; healthy pairs keep theirs), and returns once the members
    /// admitted it with a new view. If the group admits another rank this process has no link to
    /// meanwhile (another joiner), or a member dies while it links, it joins again from the new
    /// view, within `opts.timeout`.
    ///
    /// With [`Options::join_via`] (members' replica addresses) it finds the group through a
    /// member's replica rather than `store`: for when the process that hosted the store died
    /// (under `mp.spawn`/`env://`, rank 0's). `store` is then only an acceptor of the membership
    /// records if it still holds the group's (a new, empty one is left out).
    pub fn join(store: Arc<dyn Store>, rank: usize, size: usize, mut opts: Options) -> Result<ProcessGroup> {
        opts.join_via = Self::join_addresses(&opts, rank);
        let directory = match opts.join_via.is_empty() {
            true => store.clone(),
            false => group::replicas::directory_via(&opts.join_via, opts.timeout)?,
        };
        let gen_key = group::replicas::generation_key(&opts.name, rank);
        let mut gen = directory.get(&gen_key)?;
        if gen.is_none() && opts.initial_members.is_some() {
            // A process for an empty slot may start before the members created the group.
            gen = directory.wait(&[&gen_key], opts.timeout).ok().and_then(|mut v| v.pop());
        }
        let gen = gen.and_then(|g| String::from_utf8_lossy(&g).trim().parse::<i64>().ok()).ok_or_else(|| {
            ChorusError::InvalidArgument(format!("join: no group named {} ever had a rank {rank} on this store", opts.name))
        })?;
        let uid = format!("{}.{gen}", opts.name);
        let deadline = Instant::now() + opts.timeout;
        let inner = loop {
            let inner = group::join(store.clone(), directory.clone(), uid.clone(), rank, size, opts.clone())?;
            match ft::admit(&inner) {
                Ok(()) => break inner,
                // The group admitted a rank this process has no link to meanwhile (another
                // joiner): join again from the view that holds it.
                Err(ChorusError::JoinOutdated { epoch, .. }) if Instant::now() < deadline => {
                    tracing::info!(epoch, "the group admitted a rank this process has no link to while it joined: joining again");
                    inner.abandon();
                }
                Err(e) => {
                    inner.abandon();
                    return Err(e);
                }
            }
        };
        inner.note_filled_slot();
        let pg = ProcessGroup { inner, _server: None };
        pg.leave_replica_address();
        Ok(pg)
    }

    /// Destroys the group: later calls on any handle fail with `Destroyed`; peers still inside an
    /// operation with this rank get an error instead of waiting for their deadline.
    pub fn destroy(&self) {
        self.inner.destroy(true);
    }

    fn next_ctx(&self, name: &'static str, desc: OpDesc) -> OpCtx {
        let op_seq = self.inner.op_seq.fetch_add(1, Ordering::SeqCst) + 1;
        let now = Instant::now();
        OpCtx { name, op_seq, epoch: 0, attempt: 0, desc, deadline: now + self.inner.opts.timeout, started: now }
    }

    /// What the last collective this group completed reported (failed ranks, epoch). Blocking
    /// collectives return their own report and a `Work` carries its own (`Work::outcome`, `.await`),
    /// which is what to use where several threads issue collectives on one group.
    pub fn last_op_info(&self) -> OpInfo {
        self.inner.last_info.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A group being created on a thread of its own ([`ProcessGroup::new_async`]): a future of the
/// group.
#[must_use = "the group comes out of the Creation: .await it"]
pub struct Creation(Work<ProcessGroup>);

impl Creation {
    fn spawn(create: impl FnOnce() -> Result<ProcessGroup> + Send + 'static) -> Creation {
        let (work, done) = crate::engine::work::pair("group creation");
        let spawned = std::thread::Builder::new().name("chorus-create".into()).spawn(move || done.complete(create()));
        match spawned {
            Ok(_) => Creation(work),
            Err(e) => Creation(Work::ready("group creation", Err(ChorusError::InvalidArgument(format!("spawning the thread that creates the group: {e}"))))),
        }
    }
}

impl std::future::Future for Creation {
    type Output = Result<ProcessGroup>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<ProcessGroup>> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|r| r.map(|(pg, _)| pg).map_err(|e| e.error))
    }
}
