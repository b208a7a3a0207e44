//! Membership without a single point of failure (issue 24): with `Options::membership_replicas`
//! (on with fault tolerance; `CHORUS_MEMBERSHIP_REPLICAS=0` turns it off), every rank serves a
//! replica of the group's membership records, and recovery rounds and view
//! records go through a [`ReplicatedStore`] over the job's store plus every rank's replica, so the
//! group agrees on views while a majority of those answer — after the death of the process that
//! hosts the job's store too. Joins (announcements, hand-offs, peer records) go through it as
//! well, so a replacement can join without the job's store: it finds the group through any
//! member's replica (`Options::join_via`), whose own keys hold a directory of the group (its uid
//! and every rank's replica record), kept by that member.
//!
//! The job's store votes only while it still holds the key every rank set at creation:
//! one that restarted empty at the same address, or a fresh store handed to a replacement, would
//! otherwise vote as if it remembered its promises.
//!
//! Slot 0 is the job's store, slot `1 + i` the replica of the `i`-th rank present at the group's
//! creation ([`acceptor_slot`]; rank `r`'s, `1 + r`, when every rank was). A rank that replaced an earlier
//! process brings an empty replica: it votes only on recovery rounds after those applied when it
//! took the slot (its predecessor voted on no later one; `bootstrap::replicated` says why).
use crate::error::{ChorusError, Result};
use chorus_bootstrap::replicated::{KeyFilter, Refill, RemoteReplica, Sentinel};
use chorus_bootstrap::{ReplicatedStore, Store, StoreServer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long one acceptor request may take before the proposer counts that replica as silent
/// (a majority answering sooner does not wait for it).
const REPLICA_TIMEOUT: Duration = Duration::from_secs(2);

/// Starts this rank's replica server on the address its links listen on (port chosen by the
/// system), before the rank publishes its record.
pub fn serve(tcp_addr: &str) -> Result<StoreServer> {
    let ip = tcp_addr.parse::<SocketAddr>().map(|a| a.ip()).unwrap_or(std::net::Ipv4Addr::LOCALHOST.into());
    Ok(StoreServer::bind(SocketAddr::new(ip, 0))?)
}

/// What a slot refilled by a replacement's empty replica votes on: the keys its predecessor
/// cannot have voted on, namely the recovery rounds after `applied` and the records of the joins
/// after request `joined` (`membership::join::join_seq`); and the long-lived records
/// ([`long_lived_keys`]) once it holds them (a catch-up).
pub fn fresh_keys(applied: u64, joined: u64) -> KeyFilter {
    Box::new(move |key: &str| round_of(key).is_some_and(|r| r > applied) || crate::membership::join::join_seq(key).is_some_and(|s| s > joined))
}

/// The recovery rounds after `applied`.
pub fn rounds_after(applied: u64) -> KeyFilter {
    Box::new(move |key: &str| round_of(key).is_some_and(|r| r > applied))
}

fn round_of(key: &str) -> Option<u64> {
    key.split("/recovery/").nth(1).and_then(|rest| rest.split('/').next()).and_then(|r| r.parse::<u64>().ok())
}

/// Where a rank's replica is, as published in the job's store under `chorus/<uid>/replica/<rank>`
/// (text: `off`, `<addr>`, or `joined <addr>` for a replacement's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaInfo {
    pub rank: usize,
    /// `None`: this rank runs without replicas (every rank of a group must agree).
    pub addr: Option<String>,
    /// Whether the process that serves it replaced an earlier one (its replica started empty).
    pub joined: bool,
}

impl ReplicaInfo {
    pub fn encode(&self) -> Vec<u8> {
        match (&self.addr, self.joined) {
            (None, _) => b"off".to_vec(),
            (Some(a), false) => a.clone().into_bytes(),
            (Some(a), true) => format!("joined {a}").into_bytes(),
        }
    }

    pub fn decode(rank: usize, b: &[u8]) -> ReplicaInfo {
        let s = String::from_utf8_lossy(b);
        match s.as_ref() {
            "off" => ReplicaInfo { rank, addr: None, joined: false },
            _ => match s.strip_prefix("joined ") {
                Some(a) => ReplicaInfo { rank, addr: Some(a.to_string()), joined: true },
                None => ReplicaInfo { rank, addr: Some(s.to_string()), joined: false },
            },
        }
    }

    pub fn key(uid: &str, rank: usize) -> String {
        format!("chorus/{uid}/replica/{rank}")
    }
}

/// Fails unless every rank runs with replicas or every rank without (on every rank alike: each
/// compares every record).
pub fn check_agreement(me: &ReplicaInfo, all: &[ReplicaInfo]) -> Result<()> {
    match all.iter().find(|r| r.addr.is_some() != me.addr.is_some()) {
        Some(r) => {
            let says = |x: &ReplicaInfo| if x.addr.is_some() { "1" } else { "0" };
            Err(ChorusError::InvalidArgument(format!(
                "ranks disagree on CHORUS_MEMBERSHIP_REPLICAS: rank {} has {}, rank {} has {} (every rank of a group must use the same)",
                me.rank,
                says(me),
                r.rank,
                says(r)
            )))
        }
        None => Ok(()),
    }
}

fn remote(info: &ReplicaInfo, timeout: Duration) -> Result<Arc<dyn Store>> {
    let secret = chorus_bootstrap::auth::secret_from_env()?;
    Ok(Arc::new(RemoteReplica::new(info.addr.clone().unwrap_or_default(), timeout, secret)))
}

/// The acceptor slot of rank `rank`'s replica in a group whose ranks present at creation were
/// `present` (ascending): `1 +` its place among them, or `None` for a rank that filled an empty
/// slot later. Such a rank serves a replica (joins can go through it) but does not vote: a
/// CASPaxos register's acceptor set is fixed, and growing it safely would take a
/// reconfiguration protocol; the acceptors are the job's store and the ranks of the creation
/// (and the replacements of those).
pub fn acceptor_slot(present: &[usize], rank: usize) -> Option<usize> {
    present.binary_search(&rank).ok().map(|i| 1 + i)
}

/// The membership store of rank `me`: the job's `store` and the replica of each rank in
/// `records` (one per rank present at creation, in rank order; this rank's own is `own`). A replica that refilled its
/// slot (this rank's own when `me_joined`) votes on the keys `fresh(its rank)` accepts, and on
/// the long-lived records it holds.
#[allow(clippy::too_many_arguments)]
pub fn membership_store(store: &Arc<dyn Store>, own: &StoreServer, uid: &str, me: usize, me_joined: bool, records: &[ReplicaInfo], timeout: Duration, fresh: &dyn Fn(usize) -> KeyFilter) -> Result<ReplicatedStore> {
    let per_request = timeout.min(REPLICA_TIMEOUT);
    let job_store: Arc<dyn Store> = Arc::new(Sentinel::new(store.clone(), sentinel_key(uid)));
    let mut acceptors: Vec<(String, Arc<dyn Store>, Option<Refill>)> = vec![(store.host(), job_store, None)];
    for info in records {
        let (replica, joined) = if info.rank == me { (own.local_store(), me_joined) } else { (remote(info, per_request)?, info.joined) };
        acceptors.push((format!("rank {}'s replica", info.rank), replica, joined.then(|| Refill { votes_on: fresh(info.rank), guarded: long_lived_keys(uid, records.len()) })));
    }
    let replicated = ReplicatedStore::new(acceptors, timeout)?;
    replicated.warm_up();
    Ok(replicated)
}

/// The key every rank of group `uid` sets in the job's store when it creates the group (never a
/// replacement): while the store holds it, the store remembers its votes.
pub fn sentinel_key(uid: &str) -> String {
    format!("chorus/{uid}/acceptor")
}

/// The directory key naming the current group called `name` for `rank` (the layout of the job's
/// store, where `ProcessGroup::new` counts generations: `chorus/<name>/generation/<rank>`).
pub fn generation_key(name: &str, rank: usize) -> String {
    format!("chorus/{name}/generation/{rank}")
}

/// Writes the directory of group `uid` into this rank's replica (its own keys, not registers):
/// what a replacement that joins through it reads first. Top-level groups (`<name>.<gen>`) also
/// get the generation keys that name them, for each of the `size` slots.
pub fn publish_directory(own: &StoreServer, uid: &str, name: &str, size: usize, records: &[ReplicaInfo]) -> Result<()> {
    let local = own.local_store();
    for r in records {
        local.set(&ReplicaInfo::key(uid, r.rank), &r.encode())?;
    }
    if let Some(gen) = uid.strip_prefix(name).and_then(|rest| rest.strip_prefix('.')).filter(|g| g.parse::<u64>().is_ok()) {
        // Every slot's, empty ones included: a process that fills one joins this group.
        for r in 0..size {
            local.set(&generation_key(name, r), gen.as_bytes())?;
        }
    }
    Ok(())
}

/// Rank `rank`'s replica record: a replacement's is in the membership store, a rank's from the
/// group's creation in `directory` (the job's store, or a member's replica).
pub fn record(membership: &dyn Store, directory: &dyn Store, uid: &str, rank: usize) -> Result<ReplicaInfo> {
    let k = ReplicaInfo::key(uid, rank);
    let v = match membership.get(&k)? {
        Some(v) => v,
        None => directory.get(&k)?.ok_or_else(|| {
            ChorusError::InvalidArgument(format!("join: group {uid} has no replica record of rank {rank}: was it created, and with the same CHORUS_MEMBERSHIP_REPLICAS as this process?"))
        })?,
    };
    Ok(ReplicaInfo::decode(rank, &v))
}

/// The directory of a running group, reached through the first of `addrs` (members' replica
/// addresses) that answers.
pub fn directory_via(addrs: &[String], timeout: Duration) -> Result<Arc<dyn Store>> {
    let mut errors = Vec::new();
    for a in addrs {
        let r = remote(&ReplicaInfo { rank: 0, addr: Some(a.clone()), joined: false }, timeout.min(REPLICA_TIMEOUT))?;
        match r.get("chorus/directory-probe") {
            Ok(_) => return Ok(r),
            Err(e) => errors.push(format!("{a}: {e}")),
        }
    }
    Err(ChorusError::InvalidArgument(format!(
        "join: no member's replica answered at the addresses of CHORUS_JOIN_VIA or CHORUS_REPLICA_DIR ({}); give the replica address of a live member (`replica_address()` on any rank)",
        if errors.is_empty() { "no address given".to_string() } else { errors.join("; ") }
    )))
}

/// Where rank `rank` of group `name` leaves its replica address in a replica directory
/// (`Options::replica_dir`): `<dir>/<name>/<rank>`, the name's bytes other than ASCII letters,
/// digits, `.`, `_` and `-` written `%XX` (a name may hold `/`).
fn address_file(dir: &Path, name: &str, rank: usize) -> PathBuf {
    let safe: String = name.bytes().map(|b| if b.is_ascii_alphanumeric() || b"._-".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect();
    dir.join(if safe.is_empty() || safe.starts_with('.') { format!("%{safe}") } else { safe }).join(rank.to_string())
}

/// Writes this rank's replica address where a launcher's replacement looks for it; whole or not
/// at all (a reader never sees half an address).
pub fn leave_address(dir: &Path, name: &str, rank: usize, addr: &str) -> std::io::Result<()> {
    let file = address_file(dir, name, rank);
    let folder = file.parent().unwrap_or(dir);
    std::fs::create_dir_all(folder)?;
    let tmp = folder.join(format!(".{rank}.{}", std::process::id()));
    std::fs::write(&tmp, addr)?;
    std::fs::rename(&tmp, &file)
}

/// The replica addresses the ranks of group `name` other than `rank` left in `dir` (none where
/// nothing is there). Some may be of processes that died since; a join tries them in turn.
pub fn addresses_left(dir: &Path, name: &str, rank: usize) -> Vec<String> {
    let folder = address_file(dir, name, rank);
    let Some(folder) = folder.parent() else { return Vec::new() };
    let Ok(entries) = std::fs::read_dir(folder) else { return Vec::new() };
    let mut found: Vec<(usize, String)> = entries
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<usize>().ok()?, e.path())))
        .filter(|(r, _)| *r != rank)
        .filter_map(|(r, p)| Some((r, std::fs::read_to_string(p).ok()?.trim().to_string())))
        .filter(|(_, a)| !a.is_empty())
        .collect();
    found.sort();
    found.into_iter().map(|(_, a)| a).collect()
}

/// The membership records of group `uid` (of `size` ranks) that outlive recovery rounds and
/// joins: the view (`membership::view`), the join counter, and each rank's peer, replica and
/// capability records. A refilled slot is caught up on them before it votes on them.
pub fn long_lived_keys(uid: &str, size: usize) -> Vec<String> {
    let mut keys = vec![format!("chorus/{uid}/view"), format!("chorus/{uid}/view_requests"), format!("chorus/{uid}/joins")];
    for r in 0..size {
        keys.extend([format!("chorus/{uid}/peer/{r}"), ReplicaInfo::key(uid, r), format!("chorus/{uid}/rdma/cap/{r}")]);
    }
    keys
}

/// Puts replacement `info`'s replica in its rank's slot of group `uid`'s membership store (of
/// `size` ranks): it votes on the rounds after `applied` and the joins after `joined` (its own
/// request), and on the long-lived records once the replacement caught it up on them.
pub fn refill(replicated: &ReplicatedStore, slot: usize, uid: &str, size: usize, info: &ReplicaInfo, applied: u64, joined: u64, timeout: Duration) -> Result<()> {
    replicated.replace(slot, format!("rank {}'s replica (replacement)", info.rank), remote(info, timeout.min(REPLICA_TIMEOUT))?, Refill { votes_on: fresh_keys(applied, joined), guarded: long_lived_keys(uid, size) });
    Ok(())
}

/// Catches rank `rank`'s refilled acceptor slot `slot` up on the long-lived records; without it
/// (no majority now) the slot just keeps out of those it missed.
pub fn catch_up(replicated: &ReplicatedStore, slot: usize, uid: &str, size: usize, rank: usize) {
    if let Err(e) = replicated.catch_up(slot, &long_lived_keys(uid, size)) {
        tracing::warn!(rank, error = %e, "could not catch rank {rank}'s replica up on the membership records; it votes on later recovery rounds and joins only");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_left_in_a_directory_are_found_by_the_others() {
        let dir = std::env::temp_dir().join(format!("chorus-replica-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (name, other) in [("default", "default2"), ("a/b c", "a%2Fb c"), (".", "%2E"), ("", "x")] {
            leave_address(&dir, name, 0, "10.0.0.1:1").unwrap();
            leave_address(&dir, name, 2, "10.0.0.1:3").unwrap();
            leave_address(&dir, name, 2, "10.0.0.1:4").unwrap();
            assert_eq!(addresses_left(&dir, name, 1), ["10.0.0.1:1", "10.0.0.1:4"], "group {name:?}");
            assert_eq!(addresses_left(&dir, name, 2), ["10.0.0.1:1"], "group {name:?}");
            assert!(addresses_left(&dir, other, 1).is_empty(), "group {other:?} sees {name:?}'s");
        }
        assert!(addresses_left(&dir.join("absent"), "default", 0).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn records_round_trip() {
        for r in [ReplicaInfo { rank: 2, addr: None, joined: false }, ReplicaInfo { rank: 2, addr: Some("10.0.0.1:4000".into()), joined: false }, ReplicaInfo { rank: 2, addr: Some("[::1]:9".into()), joined: true }] {
            assert_eq!(ReplicaInfo::decode(2, &r.encode()), r);
        }
        let on = ReplicaInfo { rank: 0, addr: Some("a:1".into()), joined: false };
        let off = ReplicaInfo { rank: 3, addr: None, joined: false };
        assert!(check_agreement(&on, &[on.clone()]).is_ok());
        let e = check_agreement(&on, &[on.clone(), off]).unwrap_err().to_string();
        assert!(e.contains("CHORUS_MEMBERSHIP_REPLICAS") && e.contains("rank 0 has 1") && e.contains("rank 3 has 0"), "{e}");
    }

    #[test]
    fn a_refilled_slot_votes_on_later_recovery_rounds_and_joins_only() {
        let f = fresh_keys(3, 5);
        assert!(f("chorus/g/recovery/4/decision"));
        assert!(f("chorus/g/sub/1/recovery/12/post/2"));
        assert!(!f("chorus/g/recovery/3/decision"));
        assert!(!f("chorus/g/view"));
        assert!(!f("chorus/g/view_requests"));
        assert!(!f("chorus/g/recovery/x/decision"));
        assert!(f("chorus/g/join/6/peer") && f("chorus/g/join_req/6") && f("chorus/g/join/7/coll/2") && f("chorus/g/ep/6/1-2") && f("chorus/g/ready/9/2-1"));
        assert!(!f("chorus/g/join/5/peer") && !f("chorus/g/join_req/5") && !f("chorus/g/ep/0/1-2") && !f("chorus/g/joins") && !f("chorus/g/peer/6"));
        assert!(!rounds_after(3)("chorus/g/join/6/peer"));
    }
}
