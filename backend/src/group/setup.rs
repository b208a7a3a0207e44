//! Entering a group: rendezvous through the store, a check of the settings every rank must
//! share, and one walk over the transport table — for a new group ([`create`]) and for a
//! replacement of a failed rank ([`join`]).
use super::replicas::{self, ReplicaInfo};
use super::rendezvous::{Watch, WatchedStore};
use super::{start, Counters, GroupInner, Resume};
use crate::error::{ChorusError, Result};
use crate::membership::join;
use crate::membership::ViewStore;
use crate::memory::{Location, Registry};
use crate::options::{default_host_id, Options};
use crate::sys::shm::Segment;
use crate::transport::shm::{self, LocalSegments};
use crate::transport::signals::STREAMS;
use crate::transport::{Link, Pairing, PeerInfo, RingGeometry, Setup, Table};
use chorus_bootstrap::{listen, Store};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(super) fn key(uid: &str, rest: &str) -> String {
    format!("chorus/{uid}/{rest}")
}

/// The start of the names of group `uid`'s shared-memory segments: the uid made safe for a file
/// name (letters, digits, `.` and `_`; no `-`, which ends it) and shortened, so a test or an
/// operator can find a group's segments, and a later start can find a dead rank's (see
/// [`remove_stale_segments`]). Names continue with the owner's pid, a time stamp and the rank.
pub(crate) fn segment_prefix(uid: &str) -> String {
    let safe: String = uid.chars().take(80).map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '_' { c } else { '_' }).collect();
    format!("chorus-{safe}-")
}

/// Removes the names of group `uid`'s segments whose owner process is gone (issue 25): a rank
/// killed at rendezvous before its peers mapped its segments leaves them behind when no survivor
/// saw it die (it was alone, or they were killed too). Names of live processes are left alone,
/// whoever they belong to.
fn remove_stale_segments(uid: &str) {
    let prefix = segment_prefix(uid);
    for name in Segment::names_starting_with(&prefix) {
        let owner = name[prefix.len()..].split('-').next().and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = owner {
            if pid != crate::sys::proc::pid() && !crate::sys::proc::alive(pid) {
                tracing::debug!(name, pid, "removing a shared-memory segment its dead owner left behind");
                Segment::unlink(&name);
            }
        }
    }
}

fn unique_token() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{}-{:x}", crate::sys::proc::pid(), nanos & 0xffff_ffff_ffff)
}


/// What a rank prepares before it tells anyone about itself.
pub(super) struct Prepared {
    pub listener: TcpListener,
    pub local: LocalSegments,
    pub me: PeerInfo,
    pub registry: Registry,
    /// This rank's replica of the membership records (`Options::membership_replicas`).
    pub replica: Option<chorus_bootstrap::StoreServer>,
}

/// Binds the listener and creates the segments of group `uid` (both before publishing:
/// docs/design.md invariant 5), after removing what dead ranks of an earlier attempt left.
fn prepare(uid: &str, rank: usize, size: usize, opts: &Options) -> Result<Prepared> {
    remove_stale_segments(uid);
    let host_id = opts.host_id.clone().unwrap_or_else(default_host_id);
    let ip = listen::advertise_ip(opts.route_hint.as_deref().unwrap_or("127.0.0.1"));
    // Links beyond loopback without a job secret: a warning, or an error in strict mode (issue 17).
    if chorus_bootstrap::auth::secret_from_env()?.is_none() {
        chorus_bootstrap::auth::check_unauthenticated_listen(ip, "rank links")?;
    }
    let (listener, addr) = listen::bind_listener(ip)?;
    let token = unique_token();
    let prefix = segment_prefix(uid);
    let sig_name = format!("{prefix}{token}-r{rank}-sig");
    let data_name = format!("{prefix}{token}-r{rank}-data");
    let settings = opts.agreed();
    let local = shm::create_local(&sig_name, &data_name, size, rank, RingGeometry { slots: 4, slot_bytes: settings.shm_chunk })?;
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
        settings,
    };
    let replica = if opts.membership_replicas && opts.fault_tolerance { Some(replicas::serve(&me.tcp_addr)?) } else { None };
    Ok(Prepared { listener, local, me, registry, replica })
}

/// Fails on the first peer whose shared settings differ from ours; every rank compares every
/// record, so every rank of the group fails alike, naming the setting, both values and ranks.
fn check_settings(me: &PeerInfo, peers: &[PeerInfo]) -> Result<()> {
    for p in peers.iter().filter(|p| p.rank != me.rank) {
        if let Some((setting, ours, theirs)) = me.settings.first_difference(&p.settings) {
            return Err(ChorusError::InvalidArgument(format!(
                "ranks disagree on {setting}: rank {} has {ours}, rank {} has {theirs} (every rank of a group must use the same {setting})",
                me.rank, p.rank
            )));
        }
    }
    Ok(())
}

/// Puts each new link at its peer's place, counting the connection.
fn place(links: &mut [Option<Arc<dyn Link>>], counters: &Counters, new: Vec<Arc<dyn Link>>) -> Result<()> {
    for l in new {
        let p = l.peer();
        match links.get_mut(p) {
            Some(slot @ None) => *slot = Some(l),
            _ => return Err(ChorusError::Connect { transport: l.transport(), peer: p, why: "a second link, or a rank outside the group".into() }),
        }
        counters.connected(p);
    }
    Ok(())
}

/// Creates the group `uid` of `size` ranks (this one is `rank`). Every member calls this.
pub fn create(store: Arc<dyn Store>, uid: String, rank: usize, size: usize, parent_ranks: Vec<usize>, opts: Options) -> Result<Arc<GroupInner>> {
    if size == 0 || rank >= size {
        return Err(ChorusError::InvalidRank { rank, size });
    }
    let _span = tracing::info_span!("group_create", uid = %uid, rank, size).entered();
    // Ranks present at creation; the others are empty slots that joins fill later.
    let present = opts.present_at_creation(size);
    if present.binary_search(&rank).is_err() {
        return Err(ChorusError::InvalidArgument(format!(
            "rank {rank} is an empty slot of this group (CHORUS_INITIAL_MEMBERS / Options::initial_members names {present:?}): fill it by joining the running group (ProcessGroup::join, or CHORUS_JOIN=1)"
        )));
    }
    let deadline = Instant::now() + opts.timeout;
    let prep = prepare(&uid, rank, size, &opts)?;
    let me = prep.me.clone();
    let unlink = UnlinkGuard::new(&me);
    // Every wait below also watches the peers (`rendezvous`): a dead one fails it at once.
    let watch = Watch::new(&*store, &uid, &me, size, opts.timeout);
    let my_replica = ReplicaInfo { rank, addr: prep.replica.as_ref().map(|r| r.local_addr().to_string()), joined: false };
    store.set(&ReplicaInfo::key(&uid, rank), &my_replica.encode())?;
    store.set(&key(&uid, &format!("peer/{rank}")), &me.encode())?;
    let n = present.len();
    let keys: Vec<String> = present.iter().map(|r| key(&uid, &format!("peer/{r}"))).chain(present.iter().map(|&r| ReplicaInfo::key(&uid, r))).collect();
    let records = watch.wait(&keys, deadline, &mut |i, v| {
        if i < n {
            watch.learn(&PeerInfo::decode(v)?);
        }
        Ok(())
    })?;
    let peers: Vec<PeerInfo> = records[..n].iter().map(|v| PeerInfo::decode(v)).collect::<Result<_>>()?;
    let replica_records: Vec<ReplicaInfo> = records[n..].iter().zip(&present).map(|(v, &r)| ReplicaInfo::decode(r, v)).collect();
    check_settings(&me, &peers)?;
    replicas::check_agreement(&my_replica, &replica_records)?;
    let membership_store = match &prep.replica {
        Some(own) => {
            store.set(&replicas::sentinel_key(&uid), b"1")?;
            Some(Arc::new(replicas::membership_store(&store, own, &uid, rank, false, &replica_records, opts.timeout, &|_| replicas::rounds_after(0))?))
        }
        None => None,
    };
    let table = Table::new(&me.settings, &opts.rdma);
    if let Some(own) = &prep.replica {
        // A replacement may find the group through this replica (its records for replacements
        // go into the membership store from the attendant thread: `publish_for_joiners`).
        replicas::publish_directory(own, &uid, &opts.name, size, &replica_records)?;
    }

    let counters = Counters::new(size);
    let mut links: Vec<Option<Arc<dyn Link>>> = (0..size).map(|_| None).collect();
    let linked = || -> Result<Vec<Arc<dyn Link>>> {
        let watched = WatchedStore { watch: &watch };
        let check = || watch.check();
        let s = Setup { store: &watched, uid: &uid, me: &me, ranks: size, local: &prep.local, listener: Some(&prep.listener), deadline, watch: &check };
        table.prepare(&s)?;
        table.connect(&s, &peers, Pairing::Create)?.start(&s, &|_| vec![(0, 0); STREAMS])
    };
    // A transport that failed on a peer that died (its segments or its socket gone, or the failure
    // seen through the store) reports that, not the dead peer's name as the cause.
    let new = linked().map_err(|e| watch.check_now().err().unwrap_or(e))?;
    place(&mut links, &counters, new)?;

    // Everyone mapped everyone: the names can go (nothing leaks in /dev/shm after a crash).
    store.set(&key(&uid, &format!("mapped/{rank}")), b"1")?;
    let keys: Vec<String> = present.iter().map(|r| key(&uid, &format!("mapped/{r}"))).collect();
    watch.wait(&keys, deadline, &mut |_, _| Ok(()))?;

    let host_ids = hosts_by_rank(&peers, size);
    let chunk = group_chunk(&table, &peers, n < size);
    unlink.disarm();
    start(store, membership_store, uid, rank, size, parent_ranks, opts, prep, table, links, counters, host_ids, chunk, None)
}

/// Each rank's host identity, by rank, from the records of `peers` (ranks without one, such as
/// empty slots, have none yet).
fn hosts_by_rank(peers: &[PeerInfo], size: usize) -> Vec<Option<String>> {
    let mut hosts = vec![None; size];
    for p in peers {
        hosts[p.rank] = Some(p.host_id.clone());
    }
    hosts
}

/// The chunk every plan of the group is built with, from what every rank knows alike: the host
/// identities of `peers` (everyone in the group), and whether slots were empty at creation —
/// a rank that fills one later may be on another host, so such a group sizes its chunks for
/// any transport from the start.
fn group_chunk(table: &Table, peers: &[PeerInfo], empty_slots: bool) -> usize {
    match empty_slots {
        true => table.smallest_slot(),
        false => table.chunk(peers),
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

/// A replacement for rank `rank` of the running group `uid`: waits until the survivors removed
/// the old process, links to every active member (they link back when they see the request),
/// takes over the pair counters, and asks to be activated. Returns once it is a member again.
///
/// `directory` is where the group's creation records are: the job's `store`, or (when that is
/// gone) a member's replica (`replicas::directory_via`).
pub fn join(store: Arc<dyn Store>, directory: Arc<dyn Store>, uid: String, rank: usize, size: usize, opts: Options) -> Result<Arc<GroupInner>> {
    if rank >= size {
        return Err(ChorusError::InvalidRank { rank, size });
    }
    let _span = tracing::info_span!("group_join", uid = %uid, rank, size).entered();
    let deadline = Instant::now() + opts.timeout;
    loop {
        match join_once(store.clone(), directory.clone(), &uid, rank, size, &opts, deadline) {
            Ok(g) => return Ok(g),
            // A member died (or the view changed otherwise) while this process linked to the
            // members of the view it read: the survivors remove the dead one with a new view, and
            // the join starts over from that view with a new request (what was set up is dropped).
            Err(JoinAttempt::Stale { epoch, cause }) => {
                tracing::info!(epoch, error = %cause, "a member of the view this join started from is gone; joining again from the next view");
            }
            Err(JoinAttempt::Failed(e)) => return Err(e),
        }
    }
}

/// How one attempt to join ended, when it did not.
enum JoinAttempt {
    /// Linking to the members of view `epoch` failed (`cause`), and the view has changed since:
    /// worth another attempt.
    Stale { epoch: u64, cause: ChorusError },
    Failed(ChorusError),
}

impl From<ChorusError> for JoinAttempt {
    fn from(e: ChorusError) -> Self {
        JoinAttempt::Failed(e)
    }
}

impl From<chorus_bootstrap::BootstrapError> for JoinAttempt {
    fn from(e: chorus_bootstrap::BootstrapError) -> Self {
        JoinAttempt::Failed(e.into())
    }
}

fn join_once(store: Arc<dyn Store>, directory: Arc<dyn Store>, uid: &str, rank: usize, size: usize, opts: &Options, deadline: Instant) -> std::result::Result<Arc<GroupInner>, JoinAttempt> {
    let uid = uid.to_string();
    let opts = opts.clone();
    // The ranks of the group's creation: their replicas are the membership acceptors.
    let present = opts.present_at_creation(size);
    let prep = prepare(&uid, rank, size, &opts)?;
    let unlink = UnlinkGuard::new(&prep.me);
    // With replicas, the view and the recovery rounds live in them: reach them through every
    // rank's published replica (ours empty, voting on nothing until we know the rounds applied).
    let my_replica = ReplicaInfo { rank, addr: prep.replica.as_ref().map(|r| r.local_addr().to_string()), joined: true };
    // The join records a refilled replica may vote on start after this (this join's request
    // number less one, once known).
    let join_floor = Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
    let membership_store = match &prep.replica {
        Some(own) => {
            // The group exists, so every rank's record is there already (in the directory; a
            // replacement's newer one in the membership store, read once that is up).
            let mut records = Vec::with_capacity(present.len());
            for &r in &present {
                let v = directory.get(&ReplicaInfo::key(&uid, r))?.ok_or_else(|| {
                    ChorusError::InvalidArgument(format!(
                        "join: group {uid} has no replica record of rank {r}: was it created, and with the same CHORUS_MEMBERSHIP_REPLICAS as this process?"
                    ))
                })?;
                records.push(ReplicaInfo::decode(r, &v));
            }
            replicas::check_agreement(&my_replica, &records.iter().filter(|r| r.rank != rank).cloned().collect::<Vec<_>>())?;
            // Until the survivors' hand-off says which rounds they applied, replicas that refilled
            // a slot vote only on the long-lived records they were caught up on and on this
            // join's records (known once it has a request number); this rank's own on nothing.
            let floor = join_floor.clone();
            let fresh = move |r: usize| -> chorus_bootstrap::replicated::KeyFilter {
                let floor = floor.clone();
                match r == rank {
                    true => replicas::rounds_after(u64::MAX),
                    false => Box::new(move |k: &str| join::join_seq(k).is_some_and(|s| s > floor.load(std::sync::atomic::Ordering::SeqCst))),
                }
            };
            Some(Arc::new(replicas::membership_store(&store, own, &uid, rank, true, &records, opts.timeout, &fresh)?))
        }
        None if !Arc::ptr_eq(&store, &directory) => {
            return Err(JoinAttempt::Failed(ChorusError::InvalidArgument("join: CHORUS_JOIN_VIA (joining through a member's replica) needs membership replicas, which this process runs without (CHORUS_MEMBERSHIP_REPLICAS=0)".into())));
        }
        None => None,
    };
    // Everything the join exchanges with the survivors goes through the membership store when
    // there is one (it outlives the job's store), else through the job's store.
    let join_store: Arc<dyn Store> = match &membership_store {
        Some(m) => m.clone(),
        None => store.clone(),
    };
    let views = ViewStore::starting_from(join_store.clone(), &uid, crate::membership::View::starting(size, &present));
    let view = loop {
        let v = views.read()?;
        if !v.is_active(rank) {
            break v;
        }
        if Instant::now() >= deadline {
            return Err(ChorusError::InvalidArgument(format!("join: rank {rank} is still an active member (is the old process still running?)")).into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let members = view.members();
    if members.is_empty() {
        return Err(ChorusError::InvalidArgument(format!(
            "join: the group's view (epoch {}) has no active member, so there is nobody to rejoin through; create the group anew",
            view.epoch
        ))
        .into());
    }
    // Linking failed: if the survivors change the view soon (they remove a member that died),
    // the attempt is stale and the join starts over; else the failure stands.
    let stale = |cause: ChorusError| {
        let settle = deadline.min(Instant::now() + opts.heartbeat_timeout * 2 + Duration::from_secs(5));
        while Instant::now() < settle {
            if views.read().is_ok_and(|v| v.epoch != view.epoch) {
                return JoinAttempt::Stale { epoch: view.epoch, cause };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        JoinAttempt::Failed(cause)
    };
    let mut peers = Vec::new();
    for &s in &members {
        let k = key(&uid, &format!("peer/{s}"));
        let info = match join_store.wait(&[&k], deadline.saturating_duration_since(Instant::now())) {
            Ok(v) => PeerInfo::decode(&v[0])?,
            Err(e) => return Err(stale(ChorusError::InvalidArgument(format!("join: no info for rank {s} ({e})")))),
        };
        peers.push(info);
    }
    check_settings(&prep.me, &peers)?;
    let table = Table::new(&prep.me.settings, &opts.rdma);
    let counters = Counters::new(size);
    let mut links: Vec<Option<Arc<dyn Link>>> = (0..size).map(|_| None).collect();
    let (handoffs, req_seq) = {
        let s = Setup { store: &*join_store, uid: &uid, me: &prep.me, ranks: size, local: &prep.local, listener: Some(&prep.listener), deadline, watch: &crate::transport::watch_nothing };
        // Our own capabilities decide our pairs, not the predecessor's: published before we announce.
        table.prepare(&s)?;
        join_store.set(&ReplicaInfo::key(&uid, rank), &my_replica.encode())?;
        if !Arc::ptr_eq(&join_store, &store) {
            // Also in the job's store, the directory of later replacements while it lives.
            if let Err(e) = store.set(&ReplicaInfo::key(&uid, rank), &my_replica.encode()) {
                tracing::debug!(error = %e, "could not update this rank's replica record in the job's store");
            }
        }
        let seq = join::take_number(&join_store, &uid)?;
        join_floor.store(seq - 1, std::sync::atomic::Ordering::SeqCst);
        let req = join::announce(&join_store, &uid, rank, seq, &prep.me)?;
        // Pairs that must connect before the survivors hand off (RDMA queue pairs) do so now.
        let connecting = table.connect(&s, &peers, Pairing::Join { seq: req.seq }).map_err(stale)?;
        // Survivors publish where their counters are, after linking to us; a member that died
        // meanwhile never does, and the survivors' next view says so.
        let view_moved = || views.read().is_ok_and(|v| v.epoch != view.epoch);
        let mut handoffs = Vec::new();
        for &m in &members {
            let (coll, p2p) = join::await_handoff(&join_store, &uid, &req, m, deadline, &view_moved).map_err(stale)?;
            handoffs.push((m, coll, p2p));
        }
        let survivor_counts = |peer: usize| -> Vec<(u64, u64)> {
            handoffs.iter().find(|(m, _, _)| *m == peer).map(|(_, c, p)| vec![(c.sent, c.recvd), (p.sent, p.recvd)]).unwrap_or_else(|| vec![(0, 0); STREAMS])
        };
        place(&mut links, &counters, connecting.start(&s, &survivor_counts).map_err(stale)?)?;
        (handoffs, req.seq)
    };
    unlink.disarm();
    // Survivors' records name the view and progress they are at; take the newest.
    let newest = handoffs
        .iter()
        .max_by_key(|(_, h, _)| (h.epoch, h.committed))
        .map(|(_, h, _)| h.clone())
        .ok_or_else(|| ChorusError::InvalidArgument("join: no survivor handed off its counters".into()))?;
    if let (Some(m), Some(own)) = (&membership_store, &prep.replica) {
        // Our replica, and any other that refilled its slot, votes on the rounds after those the
        // survivors applied (none of their predecessors voted on those).
        let mut records = vec![my_replica.clone()];
        for (i, &r) in present.iter().enumerate() {
            let slot = 1 + i;
            if r == rank {
                let refill = chorus_bootstrap::replicated::Refill { votes_on: replicas::fresh_keys(newest.rounds, req_seq), guarded: replicas::long_lived_keys(&uid, size) };
                m.replace(slot, format!("rank {r}'s replica"), own.local_store(), refill);
                replicas::catch_up(m, slot, &uid, size, r);
                continue;
            }
            let info = replicas::record(&**m, &*directory, &uid, r)?;
            // Another replacement's: it took its slot at an earlier join than ours.
            if info.joined {
                replicas::refill(m, slot, &uid, size, &info, newest.rounds, req_seq - 1, opts.timeout)?;
            }
            records.push(info);
        }
        replicas::publish_directory(own, &uid, &opts.name, size, &records)?;
    }
    let resume_members: Vec<usize> = handoffs.iter().map(|(m, _, _)| *m).collect();
    let resume = Resume { view: newest.view(size), committed: newest.committed, rounds: newest.rounds, handoffs };
    let mut everyone = peers.clone();
    everyone.push(prep.me.clone());
    let host_ids = hosts_by_rank(&everyone, size);
    let chunk = group_chunk(&table, &everyone, present.len() < size);
    let me = prep.me.clone();
    let g = start(store, membership_store, uid, rank, size, (0..size).collect(), opts, prep, table, links, counters, host_ids, chunk, Some(resume))?;
    // Later replacements of other ranks read the members' records: ours is this process now.
    g.join_store.set(&key(&g.uid, &format!("peer/{rank}")), &me.encode())?;
    // Ask to be a member: a view change that every member adopts at the same collective (the
    // admission round `ft::admit` raises and waits for), turned down if the group admitted a
    // rank this process has no link to meanwhile (then it joins again).
    let place = g.views.ask_to_join(rank, resume_members)?;
    g.membership.asked_to_join(place);
    Ok(g)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::View;
    use chorus_bootstrap::MemStore;

    /// Issue 21: a join when the view has no active member returned through an `expect`.
    #[test]
    fn joining_a_group_without_members_is_an_error() {
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let views = ViewStore::new(store.clone(), "nobody-left", 2);
        views.publish(&View::full(2).next(&[], &[0, 1])).unwrap();
        assert_eq!(views.read().unwrap().members(), Vec::<usize>::new());
        let opts = Options::default().with_timeout(Duration::from_secs(5)).with_membership_replicas(false);
        let err = join(store.clone(), store.clone(), "nobody-left".into(), 1, 2, opts.clone()).err().expect("no members to rejoin through");
        assert!(err.to_string().contains("no active member"), "{err}");
        // With replicas, a group without replica records (never created so) says so at once.
        let err = join(store.clone(), store, "nobody-left".into(), 1, 2, opts.with_membership_replicas(true)).err().expect("no replica records");
        assert!(err.to_string().contains("no replica record of rank 0"), "{err}");
    }

    #[test]
    fn a_differing_shared_setting_names_itself_the_values_and_the_ranks() {
        let opts = Options::default().with_shm_chunk(4096);
        let me = prepare("settings", 0, 2, &opts).unwrap().me;
        let mut other = prepare("settings", 1, 2, &opts).unwrap().me;
        for n in [&me.shm_signals, &me.shm_data, &other.shm_signals, &other.shm_data] {
            Segment::unlink(n);
        }
        assert!(check_settings(&me, &[me.clone(), other.clone()]).is_ok());
        other.settings = opts.with_shm_chunk(8192).agreed();
        let err = check_settings(&me, &[me.clone(), other]).unwrap_err().to_string();
        assert!(err.contains("CHORUS_SHM_CHUNK") && err.contains("rank 0 has 4096") && err.contains("rank 1 has 8192"), "{err}");
    }
}
