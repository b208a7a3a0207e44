//! Agreement after a failure.
//!
//! When a rank sees a failure (a dead or silent peer) during collective `k`, it starts recovery
//! round `R`: it raises its `Recovery` counter to `R` at every live peer (so everyone joins),
//! posts its state under `chorus/<uid>/recovery/<R>/post/<rank>`, and waits until every member of
//! the current view posted or is known dead. The first rank to get there writes the decision with
//! compare-and-set under `…/recovery/<R>/decision`; everyone applies that one record.
//!
//! The decision rule ([`decide`]) keeps every survivor's results identical:
//! * a collective is *committed* by a rank only after every member reported `Done` for it, so if
//!   anyone committed `k`, every member had all of `k`'s data: `k` stays committed everywhere;
//! * otherwise `k` is committed if every survivor finished its part (`Done`), else every survivor
//!   runs it again from its saved input under the new view (which excludes the dead ranks).
use super::view::{View, ViewStore};
use crate::error::{ChorusError, Result};
use chorus_bootstrap::Store;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one rank reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Post {
    /// Highest collective this rank returned to its caller.
    pub committed: u64,
    /// The collective it is inside, and whether its part is complete (all its data is here).
    pub current: Option<(u64, bool)>,
    /// Ranks it saw die.
    pub dead: Vec<usize>,
    /// The view epoch it ran under.
    pub epoch: u64,
    /// Whether it could run its current collective again (its inputs are intact or saved).
    pub can_rerun: bool,
}

/// The agreed outcome of a recovery round.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Collectives up to this one are committed on every survivor.
    pub commit_through: u64,
    /// The view later (and re-run) collectives use.
    pub view: View,
    /// Ranks removed by this round.
    pub removed: Vec<usize>,
    /// Whether every survivor can re-run the next collective (if it is not committed).
    pub rerun_possible: bool,
}

/// The decision for `posts` (rank, post) of the survivors; `dead` are the members without a
/// post. Pure, so every rule is unit-tested.
pub fn decide(posts: &[(usize, Post)]) -> u64 {
    let committed = posts.iter().map(|(_, p)| p.committed).max().unwrap_or(0);
    // The next collective after the highest committed one: committed only if every survivor is
    // inside it with all its data.
    let next = committed + 1;
    let all_done = !posts.is_empty() && posts.iter().all(|(_, p)| p.current == Some((next, true)));
    if all_done {
        next
    } else {
        committed
    }
}

fn key(uid: &str, round: u64, rest: &str) -> String {
    format!("chorus/{uid}/recovery/{round}/{rest}")
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(v, bincode::config::standard()).expect("encodes")
}

fn decode<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<T> {
    bincode::serde::decode_from_slice(b, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| ChorusError::InvalidArgument(format!("unreadable recovery record ({e})")))
}

pub struct Round<'a> {
    pub store: &'a Arc<dyn Store>,
    pub views: &'a ViewStore,
    pub uid: &'a str,
    pub me: usize,
    pub round: u64,
    pub view: &'a View,
}

impl Round<'_> {
    pub fn post(&self, post: &Post) -> Result<()> {
        self.store.set(&key(self.uid, self.round, &format!("post/{}", self.me)), &encode(post))?;
        Ok(())
    }

    /// The decision, if one was written.
    pub fn decision(&self) -> Result<Option<Decision>> {
        match self.store.get(&key(self.uid, self.round, "decision"))? {
            Some(b) => decode(&b).map(Some),
            None => Ok(None),
        }
    }

    /// Waits for the round's decision, writing it once every member posted or is dead
    /// (`is_dead(rank)`); gives up at `deadline`.
    pub fn agree(&self, deadline: Instant, mut is_dead: impl FnMut(usize) -> bool) -> Result<Decision> {
        loop {
            if let Some(d) = self.decision()? {
                return Ok(d);
            }
            let mut posts = Vec::new();
            let mut missing = Vec::new();
            let mut dead = Vec::new();
            for r in self.view.members() {
                match self.store.get(&key(self.uid, self.round, &format!("post/{r}")))? {
                    Some(b) => {
                        let p: Post = decode(&b)?;
                        dead.extend(p.dead.iter().copied());
                        posts.push((r, p));
                    }
                    None if is_dead(r) => dead.push(r),
                    None => missing.push(r),
                }
            }
            dead.sort_unstable();
            dead.dedup();
            // Posts from ranks another survivor saw die do not count (they may be stale).
            posts.retain(|(r, _)| !dead.contains(r));
            if missing.is_empty() {
                let commit_through = decide(&posts);
                let epoch_before = self.view.epoch;
                let next = self.views.transition_bumping(epoch_before, |a| dead.iter().for_each(|&r| a[r] = false))?;
                let rerun_possible = posts.iter().all(|(_, p)| p.can_rerun);
                let d = Decision { commit_through, view: next, removed: dead.clone(), rerun_possible };
                let (_, stored) = self.store.compare_set(&key(self.uid, self.round, "decision"), None, &encode(&d))?;
                return decode(&stored);
            }
            if Instant::now() >= deadline {
                return Err(ChorusError::Timeout {
                    op: "recovery",
                    what: "a failure report",
                    peer: missing[0],
                    waited_ms: 0,
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(committed: u64, current: Option<(u64, bool)>) -> Post {
        Post { committed, current, dead: vec![], epoch: 0, can_rerun: true }
    }

    #[test]
    fn a_commit_anywhere_stays_committed() {
        // Rank 0 committed 5; rank 1 finished 5's data but not the commit barrier.
        assert_eq!(decide(&[(0, post(5, None)), (1, post(4, Some((5, true))))]), 5);
    }

    #[test]
    fn all_survivors_done_commits_the_current_collective() {
        assert_eq!(decide(&[(0, post(4, Some((5, true)))), (2, post(4, Some((5, true))))]), 5);
    }

    #[test]
    fn one_survivor_missing_data_redoes_it() {
        assert_eq!(decide(&[(0, post(4, Some((5, true)))), (2, post(4, Some((5, false))))]), 4);
        // A survivor that has not started it yet also forces a re-run (for the others).
        assert_eq!(decide(&[(0, post(4, Some((5, true)))), (2, post(4, None))]), 4);
    }
}
