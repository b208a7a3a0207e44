//! Rejoin: the records a replacement rank and the survivors exchange through the store.
//!
//! Keys under `chorus/<uid>/`:
//! * `joins` — count of join requests (monotonic); `join_req/<seq>` — the replacing rank;
//! * `join/<seq>/peer` — the replacement's `PeerInfo`;
//! * `join/<seq>/<stream>/<survivor>` — a survivor's [`Handoff`] for one stream, written after it
//!   linked to the replacement.
//!
//! Every record of a join but the counter is named by the request's number, so a membership
//! replica that refilled a slot can vote on the records of later joins (none of which its
//! predecessor saw) without voting on earlier ones ([`join_seq`]).
//!
//! Pair counters never restart: the replacement continues each pair's sequence numbers where the
//! survivor's are, and chunks the dead predecessor never consumed are forfeited (the survivor's
//! credits restart full). Only links that involve the replacement change.
use super::View;
use crate::error::{ChorusError, Result};
use crate::transport::signals::{SignalBlock, Stream};
use crate::transport::PeerInfo;
use chorus_bootstrap::Store;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinRequest {
    pub rank: usize,
    /// The request's number in `joins` (>= 1, unique per group): names the pairs' handshake.
    pub seq: u64,
}

/// Where a survivor's counters for the pair (survivor, joiner) are on one stream, plus the
/// survivor's membership state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    /// Chunks the survivor has sent to this rank (the joiner's next expected chunk).
    pub sent: u64,
    /// Chunks the survivor has consumed from this rank (the joiner's next chunk to send).
    pub recvd: u64,
    pub epoch: u64,
    pub active: Vec<bool>,
    /// Membership requests the survivor's view holds ([`View::requests`]).
    pub requests: u64,
    pub committed: u64,
    pub rounds: u64,
    /// Subgroups the survivor has made from this group (`new_group`, `split`): the joiner counts
    /// on from there, so the next subgroup has the same name on every rank.
    pub subgroups: u64,
}

impl Handoff {
    pub fn view(&self, n: usize) -> View {
        if self.active.len() == n {
            View { epoch: self.epoch, active: self.active.clone(), requests: self.requests }
        } else {
            View::full(n)
        }
    }
}

fn key(uid: &str, rest: &str) -> String {
    format!("chorus/{uid}/{rest}")
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(v, bincode::config::standard()).expect("encodes")
}

fn dec<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<T> {
    bincode::serde::decode_from_slice(b, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| ChorusError::InvalidArgument(format!("unreadable join record ({e})")))
}

/// The replacement's first step: a request number.
pub fn take_number(store: &Arc<dyn Store>, uid: &str) -> Result<u64> {
    Ok(store.add(&key(uid, "joins"), 1)? as u64)
}

/// The replacement announces itself under request number `seq` ([`take_number`]): its info,
/// then the request.
pub fn announce(store: &Arc<dyn Store>, uid: &str, rank: usize, seq: u64, me: &PeerInfo) -> Result<JoinRequest> {
    store.set(&key(uid, &format!("join/{seq}/peer")), &enc(me))?;
    store.set(&key(uid, &format!("join_req/{seq}")), rank.to_string().as_bytes())?;
    tracing::info!(rank, seq, "asked to join");
    Ok(JoinRequest { rank, seq })
}

/// The request number a key of a join's records belongs to (`join/<seq>/...`, `join_req/<seq>`,
/// and the transports' pairing records of that join, `ep/<seq>/...`, `ready/<seq>/...`).
pub fn join_seq(key: &str) -> Option<u64> {
    ["/join/", "/join_req/", "/ep/", "/ready/"].iter().find_map(|p| key.split(p).nth(1)).and_then(|rest| rest.split('/').next()).and_then(|n| n.parse().ok())
}

/// Join requests announced so far.
pub fn announced(store: &Arc<dyn Store>, uid: &str) -> Result<Option<u64>> {
    Ok(store.get(&key(uid, "joins"))?.and_then(|b| String::from_utf8_lossy(&b).trim().parse().ok()))
}

/// Request number `seq` (waits briefly: the counter is raised just before the record is set).
pub fn request(store: &Arc<dyn Store>, uid: &str, seq: u64) -> Result<Option<JoinRequest>> {
    let k = key(uid, &format!("join_req/{seq}"));
    let v = match store.wait(&[&k], Duration::from_secs(5)) {
        Ok(mut v) => v.remove(0),
        Err(_) => return Ok(None),
    };
    // An unreadable record names no rank of the group: the survivors pass it over.
    Ok(Some(JoinRequest { rank: String::from_utf8_lossy(&v).trim().parse().unwrap_or(usize::MAX), seq }))
}

pub fn joiner_info(store: &Arc<dyn Store>, uid: &str, req: &JoinRequest, deadline: Instant) -> Result<PeerInfo> {
    let k = key(uid, &format!("join/{}/peer", req.seq));
    let v = store.wait(&[&k], deadline.saturating_duration_since(Instant::now()))?;
    PeerInfo::decode(&v[0])
}

pub fn handoff_key(uid: &str, req: &JoinRequest, survivor: usize, stream: &str) -> String {
    key(uid, &format!("join/{}/{stream}/{survivor}", req.seq))
}

/// One stream's pair counters as the engine keeps them (its `Comm` implements this), so
/// membership moves them without knowing the engine.
pub trait StreamCounters {
    fn stream(&self) -> Stream;
    /// `(sent, consumed)`: chunks sent to `peer` on this stream, and chunks consumed from it.
    fn pair(&mut self, peer: usize) -> (&mut u64, &mut u64);
}

/// Survivor side, for the stream `comm` drives: gives up on the chunks the predecessor never
/// consumed (our credits restart full) and on the chunks it delivered that we never consumed
/// (left over from a cancelled collective), then returns where the pair's counters are, so the
/// replacement's first chunk follows everything the predecessor ever sent.
pub fn forfeit(signals: &SignalBlock, comm: &mut impl StreamCounters, peer: usize) -> (u64, u64) {
    let stream = comm.stream();
    let (sent, recvd) = comm.pair(peer);
    signals.publish(signals.ack_seq(peer, stream), *sent);
    let delivered = signals.data_seq(peer, stream).load(std::sync::atomic::Ordering::SeqCst);
    *recvd = (*recvd).max(delivered);
    (*sent, *recvd)
}

#[allow(clippy::too_many_arguments)]
pub fn publish_handoff(store: &Arc<dyn Store>, uid: &str, req: &JoinRequest, me: usize, stream: &str, counters: &(u64, u64), view: &View, committed: u64, rounds: u64, subgroups: u64) -> Result<()> {
    let h = Handoff { sent: counters.0, recvd: counters.1, epoch: view.epoch, active: view.active.clone(), requests: view.requests, committed, rounds, subgroups };
    store.set(&handoff_key(uid, req, me, stream), &enc(&h))?;
    Ok(())
}

/// Replacement side: the survivor's records for both streams. Gives up early when `view_moved`
/// says the group's view changed (the survivor may have died, and the joiner starts over).
pub fn await_handoff(store: &Arc<dyn Store>, uid: &str, req: &JoinRequest, survivor: usize, deadline: Instant, view_moved: &dyn Fn() -> bool) -> Result<(Handoff, Handoff)> {
    let k1 = handoff_key(uid, req, survivor, "coll");
    let k2 = handoff_key(uid, req, survivor, "p2p");
    loop {
        let slice = deadline.saturating_duration_since(Instant::now()).min(Duration::from_millis(200));
        match store.wait(&[&k1, &k2], slice) {
            Ok(v) => return Ok((dec(&v[0])?, dec(&v[1])?)),
            Err(e) if Instant::now() >= deadline || view_moved() => {
                let why = if view_moved() { "the group's view changed meanwhile".to_string() } else { e.to_string() };
                return Err(ChorusError::InvalidArgument(format!(
                    "join: rank {survivor} did not link to this process ({why}); members link between collectives, so they must keep running them"
                )));
            }
            Err(_) => {}
        }
    }
}

/// Replacement side: continue the pair's counters from the survivor's record.
pub fn adopt(signals: &SignalBlock, comm: &mut impl StreamCounters, survivor: usize, h: &Handoff) {
    let stream = comm.stream();
    signals.publish(signals.data_seq(survivor, stream), h.sent);
    signals.publish(signals.ack_seq(survivor, stream), h.recvd);
    let (sent, recvd) = comm.pair(survivor);
    *recvd = h.sent;
    *sent = h.recvd;
}
