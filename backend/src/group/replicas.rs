//! Membership without a single point of failure (issue 24): with `Options::membership_replicas`
//! (on with fault tolerance; `CHORUS_MEMBERSHIP_REPLICAS=0` turns it off), every rank serves a
//! replica of the group's membership records, and recovery rounds and view
//! records go through a [`ReplicatedStore`] over the job's store plus every rank's replica, so the
//! group agrees on views while a majority of those answer — after the death of the process that
//! hosts the job's store too. Joins (announcements, hand-offs, peer records) still go through the
//! job's store: a replacement needs it to find the group.
//!
//! Slot 0 is the job's store, slot `1 + r` rank `r`'s replica. A rank that replaced an earlier
//! process brings an empty replica: it votes only on recovery rounds after those applied when it
//! took the slot (its predecessor voted on no later one; `bootstrap::replicated` says why).
use crate::error::{ChorusError, Result};
use chorus_bootstrap::replicated::{KeyFilter, Refill, RemoteReplica};
use chorus_bootstrap::{ReplicatedStore, Store, StoreServer};
use std::net::SocketAddr;
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

/// The recovery rounds after `applied`: what a refilled slot votes on.
pub fn rounds_after(applied: u64) -> KeyFilter {
    Box::new(move |key: &str| key.split("/recovery/").nth(1).and_then(|rest| rest.split('/').next()).and_then(|r| r.parse::<u64>().ok()).is_some_and(|r| r > applied))
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

/// The membership store of rank `me`: the job's `store` and the replica of each rank in
/// `records` (one per rank, in rank order; this rank's own is `own`). A replica that refilled its
/// slot (this rank's own when `me_joined`) votes on the keys `fresh` accepts.
#[allow(clippy::too_many_arguments)]
pub fn membership_store(store: &Arc<dyn Store>, own: &StoreServer, uid: &str, me: usize, me_joined: bool, records: &[ReplicaInfo], timeout: Duration, fresh: &dyn Fn() -> KeyFilter) -> Result<ReplicatedStore> {
    let per_request = timeout.min(REPLICA_TIMEOUT);
    let mut acceptors: Vec<(String, Arc<dyn Store>, Option<Refill>)> = vec![(store.host(), store.clone(), None)];
    for info in records {
        let (replica, joined) = if info.rank == me { (own.local_store(), me_joined) } else { (remote(info, per_request)?, info.joined) };
        acceptors.push((format!("rank {}'s replica", info.rank), replica, joined.then(|| Refill { votes_on: fresh(), guarded: view_keys(uid) })));
    }
    let replicated = ReplicatedStore::new(acceptors, timeout)?;
    replicated.warm_up();
    Ok(replicated)
}

/// The membership records of group `uid` that span recovery rounds (`membership::view`): a
/// refilled slot is caught up on them before it votes on them.
pub fn view_keys(uid: &str) -> Vec<String> {
    vec![format!("chorus/{uid}/view"), format!("chorus/{uid}/view_requests")]
}

/// Puts replacement `info`'s replica in its rank's slot of group `uid`'s membership store: it
/// votes on the rounds after `applied`, and on the view records once caught up on them.
pub fn refill(replicated: &ReplicatedStore, uid: &str, info: &ReplicaInfo, applied: u64, timeout: Duration) -> Result<()> {
    replicated.replace(1 + info.rank, format!("rank {}'s replica (replacement)", info.rank), remote(info, timeout.min(REPLICA_TIMEOUT))?, Refill { votes_on: rounds_after(applied), guarded: view_keys(uid) });
    catch_up(replicated, uid, info.rank);
    Ok(())
}

/// Catches rank `rank`'s refilled slot up on the view records; without it (its process gone, or
/// no majority now) the slot just keeps out of them.
pub fn catch_up(replicated: &ReplicatedStore, uid: &str, rank: usize) {
    if let Err(e) = replicated.catch_up(1 + rank, &view_keys(uid)) {
        tracing::warn!(rank, error = %e, "could not catch rank {rank}'s replica up on the view records; it votes on later recovery rounds only");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_refilled_slot_votes_on_later_recovery_rounds_only() {
        let f = rounds_after(3);
        assert!(f("chorus/g/recovery/4/decision"));
        assert!(f("chorus/g/sub/1/recovery/12/post/2"));
        assert!(!f("chorus/g/recovery/3/decision"));
        assert!(!f("chorus/g/view"));
        assert!(!f("chorus/g/view_requests"));
        assert!(!f("chorus/g/recovery/x/decision"));
    }
}
