//! The view record and its compare-and-set transitions.
//!
//! Key `chorus/<group uid>/view`; value: bincode of [`View`]. Absent means epoch 0 with every rank
//! active. A transition reads the current record, derives the next one (epoch + 1) and
//! compare-and-sets it; a lost race re-reads and re-derives, so concurrent proposals from several
//! ranks converge on one sequence of views.
use crate::error::{ChorusError, Result};
use chorus_bootstrap::Store;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    /// Monotonic: every change of the active set raises it by one.
    pub epoch: u64,
    pub active: Vec<bool>,
}

impl View {
    pub fn full(n: usize) -> View {
        View { epoch: 0, active: vec![true; n] }
    }

    /// Active ranks, ascending.
    pub fn members(&self) -> Vec<usize> {
        self.active.iter().enumerate().filter(|(_, a)| **a).map(|(r, _)| r).collect()
    }

    pub fn is_active(&self, r: usize) -> bool {
        self.active.get(r).copied().unwrap_or(false)
    }

    pub fn is_full(&self) -> bool {
        self.active.iter().all(|a| *a)
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

/// Reads and changes one group's view in the store.
#[derive(Clone)]
pub struct ViewStore {
    store: Arc<dyn Store>,
    key: String,
    n: usize,
}

impl ViewStore {
    pub fn new(store: Arc<dyn Store>, uid: &str, n: usize) -> ViewStore {
        ViewStore { store, key: format!("chorus/{uid}/view"), n }
    }

    pub fn read(&self) -> Result<View> {
        match self.store.get(&self.key)? {
            Some(b) => View::decode(&b),
            None => Ok(View::full(self.n)),
        }
    }

    /// Applies `change` to the current view until a compare-and-set succeeds; a change that
    /// leaves the active set as it is makes no new epoch. Returns the view now in force.
    pub fn transition(&self, change: impl Fn(&mut Vec<bool>)) -> Result<View> {
        self.transition_if(change, |_current| false)
    }

    /// Like [`ViewStore::transition`], but always makes a new epoch (above `after`) — a recovery
    /// round needs one even when nobody is removed, so left-over chunks of cancelled attempts are
    /// recognisable by their older epoch. If the view already moved past `after`, the change is
    /// applied to that newer view only if it still alters it.
    pub fn transition_bumping(&self, after: u64, change: impl Fn(&mut Vec<bool>)) -> Result<View> {
        self.transition_if(change, |current| current.epoch <= after)
    }

    /// The compare-and-set loop: a new epoch is written when `change` alters the active set or
    /// `force(current)` asks for one.
    fn transition_if(&self, change: impl Fn(&mut Vec<bool>), force: impl Fn(&View) -> bool) -> Result<View> {
        loop {
            let raw = self.store.get(&self.key)?;
            let current = match &raw {
                Some(b) => View::decode(b)?,
                None => View::full(self.n),
            };
            let mut active = current.active.clone();
            change(&mut active);
            if active == current.active && !force(&current) {
                return Ok(current);
            }
            let next = View { epoch: current.epoch + 1, active };
            let (swapped, _) = self.store.compare_set(&self.key, raw.as_deref(), &next.encode())?;
            if swapped {
                tracing::info!(epoch = next.epoch, members = ?next.members(), "membership view changed");
                return Ok(next);
            }
        }
    }

    pub fn deactivate(&self, ranks: &[usize]) -> Result<View> {
        self.check(ranks)?;
        self.transition(|a| ranks.iter().for_each(|&r| a[r] = false))
    }

    pub fn activate(&self, ranks: &[usize]) -> Result<View> {
        self.check(ranks)?;
        self.transition(|a| ranks.iter().for_each(|&r| a[r] = true))
    }

    fn check(&self, ranks: &[usize]) -> Result<()> {
        match ranks.iter().find(|&&r| r >= self.n) {
            Some(&r) => Err(ChorusError::InvalidRank { rank: r, size: self.n }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_bootstrap::MemStore;

    #[test]
    fn transitions_are_monotonic_and_converge() {
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let vs = ViewStore::new(store.clone(), "g", 4);
        assert_eq!(vs.read().unwrap(), View::full(4));
        let v = vs.deactivate(&[2]).unwrap();
        assert_eq!((v.epoch, v.members()), (1, vec![0, 1, 3]));
        // The same proposal again (another rank saw the same failure) makes no new epoch.
        assert_eq!(vs.deactivate(&[2]).unwrap().epoch, 1);
        let v = vs.activate(&[2]).unwrap();
        assert_eq!((v.epoch, v.members()), (2, vec![0, 1, 2, 3]));
        assert!(vs.deactivate(&[9]).is_err());
    }

    #[test]
    fn concurrent_proposals_all_land() {
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let hs: Vec<_> = (0..6)
            .map(|r| {
                let vs = ViewStore::new(store.clone(), "g", 8);
                std::thread::spawn(move || vs.deactivate(&[r]).unwrap())
            })
            .collect();
        hs.into_iter().for_each(|h| {
            h.join().unwrap();
        });
        let v = ViewStore::new(store, "g", 8).read().unwrap();
        assert_eq!(v.members(), vec![6, 7]);
        assert_eq!(v.epoch, 6);
    }
}
