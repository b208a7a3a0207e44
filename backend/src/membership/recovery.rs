//! Agreement on membership changes: after a failure, and when a replacement rank (or an API call)
//! changes the view.
//!
//! Rounds are numbered 1, 2, … and every rank applies them in order. A rank asks for round `R` by
//! raising its `Recovery` counter at every member to [`signal`]`(R, kind)`; the counter's low bit
//! says what kind of round it is:
//!
//! * a **failure round** (odd value): a rank saw a peer die (or go silent) during collective `k`.
//!   It interrupts every wait (`Comm::check`), so ranks inside a collective stop and join; each
//!   member posts `{committed, current op and whether its part is complete, dead ranks seen, can it
//!   re-run}` under `chorus/<uid>/recovery/<R>/post/<rank>` and waits until every member posted or
//!   is dead. The first rank to get there writes the decision with compare-and-set under
//!   `…/recovery/<R>/decision`; everyone applies that one record.
//! * an **admission round** (even value): nobody failed; the view grows (a replacement activated
//!   itself) or an API call changed it. It interrupts nothing: it is settled *between*
//!   collectives. A rank between collectives posts the boundary it is at (its last returned
//!   collective `b`) under `…/admit/<rank>` and starts nothing until the round is decided; the
//!   decision is written once every member posted the same boundary, and the new view starts
//!   with collective `b + 1` on every member (a replacement's first collective). A rank that
//!   started `b + 1` before it saw the round (its attendant thread says so under `…/inside/<rank>`,
//!   or its chunk for `b + 1` is already here) cannot post `b`: the others then run `b + 1` under
//!   the old view too and post `b + 1`. A failure during an admission round turns it into a
//!   failure round (the odd value is raised); the failure decision adopts the grown view.
//!
//! The failure decision rule ([`decide`]) keeps every survivor's results identical:
//! * a collective is *committed* by a rank only after every member reported `Done` for it, so if
//!   anyone committed `k`, every member had all of `k`'s data: `k` stays committed everywhere;
//! * otherwise `k` is committed if every survivor finished its part (`Done`); else, if some
//!   survivor is inside `k` (the round *interrupted* it), every survivor runs it again from its
//!   saved input under the new view (which excludes the dead ranks) — also those that had not
//!   started it — or, when a survivor inside it could not keep its input (in-place, too large to
//!   save), it fails with the same error on every survivor, those between collectives included,
//!   when they issue it.
use super::marks::Mark;
use super::view::{View, ViewStore};
use crate::error::{ChorusError, Result};
use chorus_bootstrap::Store;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

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
    /// The ranks it waited for past its deadline in its current collective (it started this
    /// round because of that: a *timeout round*).
    pub timed_out: Vec<usize>,
    /// Its application's recent marks ([`super::marks`]).
    pub marks: Vec<Mark>,
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
    /// Whether some survivor was inside collective `commit_through + 1` (then every survivor
    /// re-runs it, or it fails on every survivor; otherwise it simply runs under the new view).
    pub interrupted: bool,
    /// Whether every survivor inside collective `commit_through + 1` can run it again.
    pub rerun_possible: bool,
    /// The live ranks some survivor inside collective `commit_through + 1` waited for past its
    /// deadline: that collective fails with the same timeout error on every survivor (a re-run
    /// would wait for them again).
    pub timed_out: Vec<usize>,
    /// The application's recent marks, from a survivor that issued the collectives up to
    /// `commit_through + 1`: a replacement admitted by this decision learns from them where in
    /// its loop it joins.
    pub marks: Vec<Mark>,
}

/// What [`decide`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub commit_through: u64,
    pub interrupted: bool,
    pub rerun_possible: bool,
    /// Ranks waited for past a deadline inside the interrupted collective (sorted, deduplicated).
    pub timed_out: Vec<usize>,
}

/// The failure decision for `posts` (rank, post) of the survivors. Pure, so every rule is
/// unit-tested.
pub fn decide(posts: &[(usize, Post)]) -> Verdict {
    let committed = posts.iter().map(|(_, p)| p.committed).max().unwrap_or(0);
    // The next collective after the highest committed one: committed only if every survivor is
    // inside it with all its data.
    let next = committed + 1;
    let all_done = !posts.is_empty() && posts.iter().all(|(_, p)| p.current == Some((next, true)));
    if all_done {
        return Verdict { commit_through: next, interrupted: false, rerun_possible: true, timed_out: Vec::new() };
    }
    // Only ranks inside `next` can have touched its inputs; a rank between collectives (or still
    // finishing the committed one) has not started it, whatever it reported for earlier ones.
    let inside = || posts.iter().filter(|(_, p)| p.current.is_some_and(|(op, _)| op == next));
    // A rank inside `next` that waited past its deadline: `next` fails alike (unless it was
    // complete everywhere, above); what a rank timed out on before `next` was settled already.
    let mut timed_out: Vec<usize> = inside().flat_map(|(_, p)| p.timed_out.iter().copied()).collect();
    timed_out.sort_unstable();
    timed_out.dedup();
    Verdict { commit_through: committed, interrupted: inside().next().is_some(), rerun_possible: inside().all(|(_, p)| p.can_rerun), timed_out }
}

/// The marks of a survivor that issued every collective a replacement may follow: one inside the
/// collective after the highest committed one (it may fail, and the replacement then joins after
/// it), else one that committed the highest (a rank between collectives may not have marked
/// past it yet, but every mark before it was made before it was issued).
fn marks_through(posts: &[(usize, Post)]) -> Vec<Mark> {
    let committed = posts.iter().map(|(_, p)| p.committed).max().unwrap_or(0);
    let inside = posts.iter().find(|(_, p)| p.current.is_some_and(|(op, _)| op == committed + 1));
    inside.or_else(|| posts.iter().find(|(_, p)| p.committed == committed)).map(|(_, p)| p.marks.clone()).unwrap_or_default()
}

/// The value of a `Recovery` counter that asks for round `round`: odd for a failure round (it
/// interrupts every wait), even for an admission round (settled between collectives).
pub fn signal(round: u64, failure: bool) -> u64 {
    2 * round + failure as u64
}

/// The round a `Recovery` counter value asks for.
pub fn round_of(value: u64) -> u64 {
    value / 2
}

/// Whether a `Recovery` counter value must interrupt a rank that applied `applied` rounds: a
/// failure in the next round, or any later round (the rank is behind).
pub fn interrupts(value: u64, applied: u64) -> bool {
    value >= signal(applied + 1, true)
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
    /// This rank's failure report.
    pub fn post(&self, post: &Post) -> Result<()> {
        self.store.set(&key(self.uid, self.round, &format!("post/{}", self.me)), &encode(post))?;
        Ok(())
    }

    /// Admission: this rank is between collectives after collective `boundary` and starts no
    /// other until the round is decided (or another member is found inside `boundary + 1`).
    /// Its application's recent marks go with it.
    pub fn post_boundary(&self, boundary: u64, marks: Vec<Mark>) -> Result<()> {
        self.store.set(&key(self.uid, self.round, &format!("admit/{}", self.me)), &encode(&(boundary, marks)))?;
        Ok(())
    }

    /// Admission: this rank is inside collective `op` (so nobody can be admitted before it).
    pub fn post_inside(&self, op: u64) -> Result<()> {
        self.store.set(&key(self.uid, self.round, &format!("inside/{}", self.me)), &encode(&op))?;
        Ok(())
    }

    /// Admission: whether a member said it is inside a collective after `boundary`.
    pub fn inside_after(&self, boundary: u64) -> Result<bool> {
        for r in self.view.members() {
            if r == self.me {
                continue;
            }
            if let Some(b) = self.store.get(&key(self.uid, self.round, &format!("inside/{r}")))? {
                if decode::<u64>(&b)? > boundary {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Admission: the decision, written now if every member posted the same boundary (the new
    /// view starts after it); `None` while some member has not.
    pub fn try_admission(&self) -> Result<Option<Decision>> {
        match self.propose_admission()? {
            Some(d) => self.commit(d).map(Some),
            None => Ok(None),
        }
    }

    /// Admission, store reads only: the decision already written, or the one this rank would
    /// write now; `None` while some member has not posted the same boundary.
    pub fn propose_admission(&self) -> Result<Option<Decision>> {
        if let Some(d) = self.decision()? {
            return Ok(Some(d));
        }
        let mut at: Option<(u64, Vec<Mark>)> = None;
        for r in self.view.members() {
            let Some(b) = self.store.get(&key(self.uid, self.round, &format!("admit/{r}")))? else { return Ok(None) };
            let (b, marks): (u64, Vec<Mark>) = decode(&b)?;
            match &at {
                Some((a, _)) if *a != b => return Ok(None),
                // Every member issued the collectives up to the boundary: the first's marks do.
                Some(_) => {}
                None => at = Some((b, marks)),
            }
        }
        let Some((boundary, marks)) = at else { return Ok(None) };
        let next = self.view.next(&self.views.requests()?, &[]);
        Ok(Some(Decision { commit_through: boundary, view: next, removed: Vec::new(), interrupted: false, rerun_possible: true, timed_out: Vec::new(), marks }))
    }

    /// Proposes `d` as the round's decision: the compare-and-set that makes it the decision is
    /// the round's only commit point (nothing this rank derived is written before it). Returns
    /// the decision that holds, ours or an earlier writer's.
    pub fn commit(&self, d: Decision) -> Result<Decision> {
        let (_, stored) = self.store.compare_set(&key(self.uid, self.round, "decision"), None, &encode(&d))?;
        decode(&stored)
    }

    /// The decision, if one was written.
    pub fn decision(&self) -> Result<Option<Decision>> {
        match self.store.get(&key(self.uid, self.round, "decision"))? {
            Some(b) => decode(&b).map(Some),
            None => Ok(None),
        }
    }

    /// Failure: whether member `r` posted its report.
    pub fn posted(&self, r: usize) -> bool {
        self.store.get(&key(self.uid, self.round, &format!("post/{r}"))).ok().flatten().is_some()
    }

    /// Failure: the decision, written now if every member posted a failure report or is dead;
    /// `None` while a live member has not.
    pub fn try_failure(&self, is_dead: impl FnMut(usize) -> bool) -> Result<Option<Decision>> {
        match self.propose_failure(is_dead)? {
            Some(d) => self.commit(d).map(Some),
            None => Ok(None),
        }
    }

    /// Failure, store reads only: the decision already written, or the one this rank would write
    /// now; `None` while a live member has not posted.
    pub fn propose_failure(&self, mut is_dead: impl FnMut(usize) -> bool) -> Result<Option<Decision>> {
        if let Some(d) = self.decision()? {
            return Ok(Some(d));
        }
        let mut posts = Vec::new();
        let mut dead = Vec::new();
        for r in self.view.members() {
            match self.store.get(&key(self.uid, self.round, &format!("post/{r}")))? {
                Some(b) => {
                    let p: Post = decode(&b)?;
                    dead.extend(p.dead.iter().copied());
                    posts.push((r, p));
                }
                None if is_dead(r) => dead.push(r),
                None => return Ok(None),
            }
        }
        dead.sort_unstable();
        dead.dedup();
        // Posts from ranks another survivor saw die do not count (they may be stale).
        posts.retain(|(r, _)| !dead.contains(r));
        let marks = marks_through(&posts);
        let mut v = decide(&posts);
        // A rank waited for that died is a failure (the collective may be re-run without it); a
        // live one that was only late stays a member.
        v.timed_out.retain(|r| !dead.contains(r));
        let next = self.view.next(&self.views.requests()?, &dead);
        Ok(Some(Decision { commit_through: v.commit_through, view: next, removed: dead, interrupted: v.interrupted, rerun_possible: v.rerun_possible, timed_out: v.timed_out, marks }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(committed: u64, current: Option<(u64, bool)>) -> Post {
        Post { committed, current, dead: vec![], epoch: 0, can_rerun: true, timed_out: vec![], marks: vec![] }
    }

    fn waited(committed: u64, current: Option<(u64, bool)>, timed_out: &[usize]) -> Post {
        Post { timed_out: timed_out.to_vec(), ..post(committed, current) }
    }

    fn unsaved(committed: u64, current: Option<(u64, bool)>) -> Post {
        Post { can_rerun: false, ..post(committed, current) }
    }

    fn verdict(commit_through: u64, interrupted: bool, rerun_possible: bool) -> Verdict {
        Verdict { commit_through, interrupted, rerun_possible, timed_out: vec![] }
    }

    #[test]
    fn a_commit_anywhere_stays_committed() {
        // Rank 0 committed 5; rank 1 finished 5's data but not the commit barrier.
        assert_eq!(decide(&[(0, post(5, None)), (1, post(4, Some((5, true))))]).commit_through, 5);
    }

    #[test]
    fn all_survivors_done_commits_the_current_collective() {
        assert_eq!(decide(&[(0, post(4, Some((5, true)))), (2, post(4, Some((5, true))))]), verdict(5, false, true));
    }

    #[test]
    fn one_survivor_missing_data_redoes_it() {
        assert_eq!(decide(&[(0, post(4, Some((5, true)))), (2, post(4, Some((5, false))))]), verdict(4, true, true));
        // A survivor that has not started it yet also forces a re-run (for the others).
        assert_eq!(decide(&[(0, post(4, Some((5, true)))), (2, post(4, None))]), verdict(4, true, true));
    }

    #[test]
    fn an_unsaved_input_inside_the_interrupted_collective_makes_it_fail() {
        assert_eq!(decide(&[(0, unsaved(4, Some((5, false)))), (2, post(4, None))]), verdict(4, true, false));
    }

    /// Issue 22: a rank between collectives whose last collective was an unsaved in-place
    /// all_reduce must not make the next (small) collective unrecoverable: it has not touched
    /// that one's input.
    #[test]
    fn what_a_rank_between_collectives_did_before_does_not_count() {
        assert_eq!(decide(&[(0, post(4, Some((5, false)))), (1, unsaved(4, None)), (2, post(4, Some((5, false))))]), verdict(4, true, true));
        // Nor does a rank still finishing the committed collective.
        assert_eq!(decide(&[(0, post(5, Some((6, false)))), (1, unsaved(4, Some((5, true))))]), verdict(5, true, true));
    }

    #[test]
    fn nobody_inside_the_next_collective_interrupts_nothing() {
        assert_eq!(decide(&[(0, post(5, None)), (1, unsaved(4, Some((5, true))))]), verdict(5, false, true));
    }

    /// Issue 25: a rank that waited past its deadline fails the collective on every rank, unless
    /// it was complete everywhere (then everyone keeps the result).
    #[test]
    fn a_timeout_fails_the_collective_unless_it_completed_everywhere() {
        let stuck = verdict(4, true, true);
        assert_eq!(decide(&[(0, waited(4, Some((5, false)), &[1])), (1, post(4, None))]), Verdict { timed_out: vec![1], ..stuck.clone() });
        // The waiter and a rank it did not wait for both inside: the waited-for ranks only.
        assert_eq!(decide(&[(0, waited(4, Some((5, true)), &[2])), (1, waited(4, Some((5, false)), &[2])), (2, post(4, None))]), Verdict { timed_out: vec![2], ..stuck });
        // Every part was complete (the late rank finished meanwhile): committed.
        assert_eq!(decide(&[(0, waited(4, Some((5, true)), &[1])), (1, post(4, Some((5, true))))]), verdict(5, false, true));
        // Issue 25's case: the peer already returned the collective: it stays committed.
        assert_eq!(decide(&[(0, waited(4, Some((5, true)), &[1])), (1, post(5, None))]), verdict(5, false, true));
    }

    #[test]
    fn signals_carry_the_round_and_its_kind() {
        assert_eq!(round_of(signal(7, true)), 7);
        assert_eq!(round_of(signal(7, false)), 7);
        // Applied 6 rounds: an admission request for round 7 interrupts nothing, a failure does,
        // and any later round means this rank is behind.
        assert!(!interrupts(signal(7, false), 6));
        assert!(interrupts(signal(7, true), 6));
        assert!(interrupts(signal(8, false), 6));
        assert!(!interrupts(signal(6, true), 6));
    }

    mod store {
        use super::super::*;
        use chorus_bootstrap::MemStore;

        fn round<'a>(store: &'a Arc<dyn Store>, views: &'a ViewStore, view: &'a View, me: usize) -> Round<'a> {
            Round { store, views, uid: "g", me, round: 1, view }
        }

        #[test]
        fn admission_needs_every_member_at_the_same_boundary() {
            let store: Arc<dyn Store> = Arc::new(MemStore::new());
            let views = ViewStore::new(store.clone(), "g", 3);
            views.deactivate(&[2]).unwrap();
            let view = View::full(3).next(&views.requests().unwrap(), &[]);
            assert_eq!(view.members(), vec![0, 1]);
            // The replacement for rank 2 activated itself.
            views.activate(&[2]).unwrap();
            let grown = View { epoch: 2, active: vec![true; 3], requests: 2 };
            let (r0, r1) = (round(&store, &views, &view, 0), round(&store, &views, &view, 1));
            r0.post_boundary(7, vec![]).unwrap();
            assert_eq!(r1.try_admission().unwrap(), None);
            // Rank 1 is inside collective 8: rank 0 must run 8 under the old view.
            r1.post_inside(8).unwrap();
            assert!(r0.inside_after(7).unwrap());
            assert!(!r1.inside_after(8).unwrap());
            r1.post_boundary(8, vec![]).unwrap();
            assert_eq!(r0.try_admission().unwrap(), None);
            r0.post_boundary(8, vec![]).unwrap();
            let d = r0.try_admission().unwrap().expect("decided");
            assert_eq!((d.commit_through, d.interrupted, d.removed.clone(), d.view.clone(), d.timed_out.clone()), (8, false, vec![], grown, vec![]));
            // One record: a failure report now changes nothing.
            r1.post(&super::post(8, None)).unwrap();
            assert_eq!(r1.try_failure(|_| false).unwrap(), Some(d));
        }
    }
}
