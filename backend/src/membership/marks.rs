//! Where the application is in its own loop: a rank marks the start of a part of its loop (a
//! training step, say) with a number, and the collectives it issues from then on belong to that
//! mark. Recovery reports carry the recent marks, and the decision that admits a replacement
//! carries them to it, so the replacement learns where the survivors are ([`position`]) instead of
//! working it out from collective counts.
use serde::{Deserialize, Serialize};

/// `value` was marked when `set_at` collectives had been issued: it covers collectives
/// `set_at + 1` onwards, until the next mark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub set_at: u64,
    pub value: u64,
}

/// Where a replacement joins the survivors' loop: their last collective before its first was the
/// `done`-th one issued since they marked `marker` (`done` equal to the part's collective count:
/// the replacement starts the next part).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ResumePoint {
    /// The value the survivors last marked before that collective ([`crate::ProcessGroup::mark`]).
    pub marker: u64,
    /// How many of the collectives since that mark the survivors had completed (at least 1).
    pub done: u64,
}

/// A rank's recent marks, oldest first: those that still name a collective after the last one
/// this rank committed.
#[derive(Clone, Debug, Default)]
pub struct Marks {
    recent: Vec<Mark>,
}

impl Marks {
    /// Marks `value` with `issued` collectives issued and `committed` returned.
    pub fn set(&mut self, value: u64, issued: u64, committed: u64) {
        match self.recent.last_mut() {
            // A second mark before any collective replaces the first.
            Some(last) if last.set_at == issued => last.value = value,
            _ => self.recent.push(Mark { set_at: issued, value }),
        }
        // A mark is needed while the next one covers none of collectives `committed` onwards.
        let superseded = self.recent.iter().skip(1).take_while(|m| m.set_at < committed).count();
        self.recent.drain(..superseded);
    }

    /// The marks a recovery report carries.
    pub fn recent(&self) -> Vec<Mark> {
        self.recent.clone()
    }
}

/// Where collective `op` stands among `marks`: the mark it belongs to and its place after it
/// (1 = the first collective issued after the mark); `None` before any mark.
pub fn position(marks: &[Mark], op: u64) -> Option<ResumePoint> {
    marks.iter().rev().find(|m| m.set_at < op).map(|m| ResumePoint { marker: m.value, done: op - m.set_at })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_collective_belongs_to_the_last_mark_before_it_was_issued() {
        let mut m = Marks::default();
        // Steps of 3 collectives: step 7 marked with 0 issued, step 8 with 3, step 9 with 6.
        for (step, issued) in [(7, 0), (8, 3), (9, 6)] {
            m.set(step, issued, 0);
        }
        let r = m.recent();
        assert_eq!(position(&r, 0), None);
        assert_eq!(position(&r, 1), Some(ResumePoint { marker: 7, done: 1 }));
        assert_eq!(position(&r, 3), Some(ResumePoint { marker: 7, done: 3 }));
        assert_eq!(position(&r, 4), Some(ResumePoint { marker: 8, done: 1 }));
        assert_eq!(position(&r, 8), Some(ResumePoint { marker: 9, done: 2 }));
    }

    #[test]
    fn marks_no_later_collective_needs_are_dropped() {
        let mut m = Marks::default();
        for step in 0..100u64 {
            m.set(step, step * 2, step * 2);
        }
        // Collective 198 (the last committed) belongs to step 98, 199 onwards to step 99.
        assert_eq!(m.recent(), vec![Mark { set_at: 196, value: 98 }, Mark { set_at: 198, value: 99 }]);
        assert_eq!(position(&m.recent(), 198), Some(ResumePoint { marker: 98, done: 2 }));
        // Marks ahead of the committed collectives (queued work) are all kept.
        m.set(100, 210, 198);
        assert_eq!(m.recent().len(), 3);
    }

    #[test]
    fn a_mark_again_before_any_collective_replaces_the_first() {
        let mut m = Marks::default();
        m.set(1, 4, 4);
        m.set(2, 4, 4);
        assert_eq!(m.recent(), vec![Mark { set_at: 4, value: 2 }]);
        assert_eq!(position(&m.recent(), 5), Some(ResumePoint { marker: 2, done: 1 }));
    }
}
