//! The view records: the decided views, and the requests to change the next one.
//!
//! Keys under `chorus/<group uid>/`: `view` holds the newest decided [`View`] (bincode; absent
//! means epoch 0: every rank active, or the ranks present at creation when the group started
//! with empty slots). Only a recovery round's decision makes a view, and
//! every rank that applies a decision publishes its view here; a publish never replaces a view of
//! a later epoch, so a rank that lost the decision's compare-and-set never leaves its own view
//! behind. `view_requests` is the append-only list of requested changes (a replacement asking
//! to be active again, an API call activating or deactivating ranks), appended by
//! compare-and-set; a decision folds in the requests after those its round's view already holds
//! and records how many it holds ([`View::requests`]), so every rank derives the same view.
use crate::error::{ChorusError, Result};
use chorus_bootstrap::Store;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    /// Monotonic: every decided view has the epoch of the view it follows plus one.
    pub epoch: u64,
    pub active: Vec<bool>,
    /// How many entries of the request list this view has folded in.
    pub requests: u64,
}

impl View {
    pub fn full(n: usize) -> View {
        View { epoch: 0, active: vec![true; n], requests: 0 }
    }

    /// Epoch 0 of a group of `n` slots where only `present` are members (the others are empty
    /// slots, to be filled by joins).
    pub fn starting(n: usize, present: &[usize]) -> View {
        let mut active = vec![false; n];
        for &r in present.iter().filter(|&&r| r < n) {
            active[r] = true;
        }
        View { epoch: 0, active, requests: 0 }
    }

    /// Active ranks, ascending.
    pub fn members(&self) -> Vec<usize> {
        self.active.iter().enumerate().filter(|(_, a)| **a).map(|(r, _)| r).collect()
    }

    pub fn is_active(&self, r: usize) -> bool {
        self.active.get(r).copied().unwrap_or(false)
    }

    /// The view after this one: `requests` folded in (those it does not hold yet), then
    /// `removed` taken out. A joiner's activation ([`Request::linked`]) is folded in only if it
    /// linked to every member active at that point of the fold; otherwise it is turned down
    /// (counted as folded, changing nothing), and the joiner, which sees that, joins again.
    pub fn next(&self, requests: &[Request], removed: &[usize]) -> View {
        let mut active = self.active.clone();
        for r in requests.iter().skip(self.requests as usize) {
            let linked_to_all = match &r.linked {
                Some(linked) => active.iter().enumerate().all(|(p, &a)| !a || p == r.rank || linked.contains(&p)),
                None => true,
            };
            if let (Some(a), true) = (active.get_mut(r.rank), linked_to_all || !r.active) {
                *a = r.active;
            }
        }
        for &r in removed {
            if let Some(a) = active.get_mut(r) {
                *a = false;
            }
        }
        View { epoch: self.epoch + 1, active, requests: (requests.len() as u64).max(self.requests) }
    }

    fn encode(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, bincode::config::standard()).expect("a view always encodes")
    }

    fn decode(b: &[u8]) -> Result<View> {
        bincode::serde::decode_from_slice(b, bincode::config::standard())
            .map(|(v, _)| v)
            .map_err(|e| ChorusError::InvalidArgument(format!("the stored membership view is unreadable ({e}); is every rank running the same chorus version?")))
    }
}

/// A requested change of one rank's membership.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub rank: usize,
    pub active: bool,
    /// A joining process's activation: the ranks it linked to (the members whose hand-off it got).
    /// `None` for API changes, which concern ranks the members are linked to already.
    pub linked: Option<Vec<usize>>,
}

/// Reads and writes one group's view records in the store.
#[derive(Clone)]
pub struct ViewStore {
    store: Arc<dyn Store>,
    key: String,
    requests_key: String,
    /// Epoch 0, the view before any decision.
    initial: View,
}

impl ViewStore {
    pub fn new(store: Arc<dyn Store>, uid: &str, n: usize) -> ViewStore {
        Self::starting_from(store, uid, View::full(n))
    }

    /// The records of a group whose epoch 0 is `initial` (some slots empty).
    pub fn starting_from(store: Arc<dyn Store>, uid: &str, initial: View) -> ViewStore {
        ViewStore { store, key: format!("chorus/{uid}/view"), requests_key: format!("chorus/{uid}/view_requests"), initial }
    }

    /// The newest decided view (published by the ranks that applied it).
    pub fn read(&self) -> Result<View> {
        match self.store.get(&self.key)? {
            Some(b) => View::decode(&b),
            None => Ok(self.initial.clone()),
        }
    }

    /// Publishes a decided view unless a view of the same or a later epoch is there already.
    pub fn publish(&self, view: &View) -> Result<()> {
        loop {
            let raw = self.store.get(&self.key)?;
            let current = match &raw {
                Some(b) => View::decode(b)?,
                None => self.initial.clone(),
            };
            if raw.is_some() && current.epoch >= view.epoch || raw.is_none() && view.epoch == 0 {
                return Ok(());
            }
            if self.store.compare_set(&self.key, raw.as_deref(), &view.encode())?.0 {
                tracing::info!(epoch = view.epoch, members = ?view.members(), "membership view changed");
                return Ok(());
            }
        }
    }

    /// Every request so far, in the order they were made.
    pub fn requests(&self) -> Result<Vec<Request>> {
        match self.store.get(&self.requests_key)? {
            Some(b) => bincode::serde::decode_from_slice(&b, bincode::config::standard())
                .map(|(v, _)| v)
                .map_err(|e| ChorusError::InvalidArgument(format!("the stored membership requests are unreadable ({e}); is every rank running the same chorus version?"))),
            None => Ok(Vec::new()),
        }
    }

    /// Appends requests (compare-and-set: concurrent requests all land, in some order). Returns
    /// the length of the list with them: a view holds the last of them once its
    /// [`View::requests`] reaches it.
    fn request(&self, new: &[Request]) -> Result<u64> {
        self.check(&new.iter().map(|r| r.rank).collect::<Vec<_>>())?;
        loop {
            let raw = self.store.get(&self.requests_key)?;
            let mut list = self.requests()?;
            list.extend_from_slice(new);
            let bytes = bincode::serde::encode_to_vec(&list, bincode::config::standard()).expect("requests always encode");
            if self.store.compare_set(&self.requests_key, raw.as_deref(), &bytes)?.0 {
                return Ok(list.len() as u64);
            }
        }
    }

    /// Asks for `ranks` to leave the view (taken up by the next recovery round's decision).
    pub fn deactivate(&self, ranks: &[usize]) -> Result<()> {
        self.request(&ranks.iter().map(|&rank| Request { rank, active: false, linked: None }).collect::<Vec<_>>()).map(drop)
    }

    /// Asks for `ranks` to join the view (taken up by the next recovery round's decision).
    pub fn activate(&self, ranks: &[usize]) -> Result<()> {
        self.request(&ranks.iter().map(|&rank| Request { rank, active: true, linked: None }).collect::<Vec<_>>()).map(drop)
    }

    /// A joining process asks for `rank` to be active, having linked to `linked`; returns the
    /// request's place (see [`View::next`]: it is turned down if a member it has no link to is
    /// active by then).
    pub fn ask_to_join(&self, rank: usize, linked: Vec<usize>) -> Result<u64> {
        self.request(&[Request { rank, active: true, linked: Some(linked) }])
    }

    fn check(&self, ranks: &[usize]) -> Result<()> {
        match ranks.iter().find(|&&r| r >= self.initial.active.len()) {
            Some(&r) => Err(ChorusError::InvalidRank { rank: r, size: self.initial.active.len() }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_bootstrap::MemStore;

    #[test]
    fn requests_fold_into_the_next_view_once() {
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let vs = ViewStore::new(store.clone(), "g", 4);
        assert_eq!(vs.read().unwrap(), View::full(4));
        vs.deactivate(&[2]).unwrap();
        assert!(vs.deactivate(&[9]).is_err());
        let v1 = vs.read().unwrap().next(&vs.requests().unwrap(), &[]);
        assert_eq!((v1.epoch, v1.members(), v1.requests), (1, vec![0, 1, 3], 1));
        vs.activate(&[2]).unwrap();
        // A death and a request in one round: the request first, then the removal.
        let v2 = v1.next(&vs.requests().unwrap(), &[1]);
        assert_eq!((v2.epoch, v2.members(), v2.requests), (2, vec![0, 2, 3], 2));
        // Requests already folded in are not applied again.
        let v3 = v2.next(&vs.requests().unwrap(), &[2]);
        assert_eq!((v3.epoch, v3.members()), (3, vec![0, 3]));
    }

    /// Issue 20: two processes join empty slots 4 and 5 of a group of 0-3 at once, each linked
    /// only to the members it found. The first request in the list is folded in; the second
    /// names no link to rank 4, active by then, so it is turned down (and that joiner joins
    /// again, linked to rank 4 too).
    #[test]
    fn a_joiner_is_admitted_only_when_linked_to_every_member() {
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let vs = ViewStore::starting_from(store, "g", View::starting(6, &[0, 1, 2, 3]));
        assert_eq!(vs.read().unwrap().members(), vec![0, 1, 2, 3]);
        assert_eq!(vs.ask_to_join(4, vec![0, 1, 2, 3]).unwrap(), 1);
        assert_eq!(vs.ask_to_join(5, vec![0, 1, 2, 3]).unwrap(), 2);
        let v1 = vs.read().unwrap().next(&vs.requests().unwrap(), &[]);
        assert_eq!((v1.members(), v1.requests), (vec![0, 1, 2, 3, 4], 2));
        // Rank 5 again, linked to 4 as well; rank 1 died meanwhile (a link to it is not needed).
        assert_eq!(vs.ask_to_join(5, vec![0, 2, 3, 4]).unwrap(), 3);
        let v2 = v1.next(&vs.requests().unwrap(), &[1]);
        assert_eq!(v2.members(), vec![0, 2, 3, 4], "rank 1 is still active when rank 5's request is folded in");
        assert_eq!(vs.ask_to_join(5, vec![0, 2, 3, 4]).unwrap(), 4);
        let v3 = v2.next(&vs.requests().unwrap(), &[]);
        assert_eq!(v3.members(), vec![0, 2, 3, 4, 5]);
        // API activations are not gated.
        vs.activate(&[1]).unwrap();
        assert_eq!(v3.next(&vs.requests().unwrap(), &[]).members(), vec![0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn a_publish_never_goes_back() {
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let vs = ViewStore::new(store, "g", 3);
        let v1 = View::full(3).next(&[], &[2]);
        let v2 = v1.next(&[], &[1]);
        vs.publish(&v2).unwrap();
        vs.publish(&v1).unwrap();
        assert_eq!(vs.read().unwrap(), v2);
        // Another view of the same epoch (a lost decision's) does not replace the published one.
        vs.publish(&View { epoch: 2, active: vec![true; 3], requests: 0 }).unwrap();
        assert_eq!(vs.read().unwrap(), v2);
    }

    #[test]
    fn concurrent_requests_all_land() {
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let hs: Vec<_> = (0..6)
            .map(|r| {
                let vs = ViewStore::new(store.clone(), "g", 8);
                std::thread::spawn(move || vs.deactivate(&[r]).unwrap())
            })
            .collect();
        hs.into_iter().for_each(|h| h.join().unwrap());
        let vs = ViewStore::new(store, "g", 8);
        assert_eq!(View::full(8).next(&vs.requests().unwrap(), &[]).members(), vec![6, 7]);
    }
}
