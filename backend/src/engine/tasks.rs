//! Per-peer task slots of one operation.
//!
//! Every peer of the group gets a slot for each operation: `Active(TaskId)` when the plan
//! exchanges data with it, `Skipped(reason)` otherwise. There is no default id: a rank left out of
//! an operation (not in the plan, inactive, failed, or this rank itself) is marked explicitly, so
//! nothing later polls a stale id (docs/design.md invariant 6).
use crate::algo::{Plan, Step};

/// Identifies one rank's part of one operation with one peer. Layout: the group's monotonic
/// operation sequence number and the peer's group rank; never reused within a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TaskId {
    pub op_seq: u64,
    pub peer: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// This rank itself.
    Local,
    /// The operation's plan exchanges nothing with the peer (e.g. non-roots of a gather).
    NotInPlan,
    /// The peer is not an active member of the current membership view (failed or removed).
    Inactive,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerTask {
    Active(TaskId),
    Skipped(SkipReason),
}

impl PeerTask {
    pub fn is_active(&self) -> bool {
        matches!(self, PeerTask::Active(_))
    }
}

/// The slots of every peer for `plan`, run by rank `me` of `n` as operation `op_seq`; ranks
/// outside `active` (the view's members, ascending) are `Skipped(Inactive)`.
pub fn tasks_for(plan: &Plan, n: usize, me: usize, op_seq: u64, active: &[usize]) -> Vec<PeerTask> {
    let mut involved = vec![false; n];
    let mut mark = |p: usize| {
        if p < n {
            involved[p] = true;
        }
    };
    for step in &plan.steps {
        match step {
            Step::Send { to, .. } => mark(*to),
            Step::Recv { from, .. } => mark(*from),
            Step::RecvReduce { from, .. } => from.iter().for_each(|&f| mark(f)),
            Step::RecvCopySend { from, to, .. } => {
                mark(*from);
                to.iter().for_each(|&t| mark(t));
            }
            Step::RecvReduceSend { from, to, .. } => {
                mark(*from);
                mark(*to);
            }
            Step::Copy { .. } => {}
        }
    }
    (0..n)
        .map(|p| {
            if p == me {
                PeerTask::Skipped(SkipReason::Local)
            } else if !active.contains(&p) {
                PeerTask::Skipped(SkipReason::Inactive)
            } else if involved[p] {
                PeerTask::Active(TaskId { op_seq, peer: p })
            } else {
                PeerTask::Skipped(SkipReason::NotInPlan)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo;

    #[test]
    fn gather_non_roots_skip_each_other_explicitly() {
        let n = 4;
        let plan = algo::gather(n, 2, 0, 100, 4096);
        let all: Vec<usize> = (0..n).collect();
        let t = tasks_for(&plan, n, 2, 7, &all);
        assert_eq!(t[0], PeerTask::Active(TaskId { op_seq: 7, peer: 0 }));
        assert_eq!(t[1], PeerTask::Skipped(SkipReason::NotInPlan));
        assert_eq!(t[2], PeerTask::Skipped(SkipReason::Local));
        assert_eq!(t[3], PeerTask::Skipped(SkipReason::NotInPlan));
        let root = tasks_for(&algo::gather(n, 0, 0, 100, 4096), n, 0, 7, &all);
        assert!(root[1..].iter().all(|t| t.is_active()));
    }

    #[test]
    fn ids_carry_the_operation_and_peer() {
        let plan = algo::all_reduce_direct(3, 1, 64, 4, 4096);
        let t = tasks_for(&plan, 3, 1, 42, &[0, 1, 2]);
        assert_eq!(t[0], PeerTask::Active(TaskId { op_seq: 42, peer: 0 }));
        assert_eq!(t[2], PeerTask::Active(TaskId { op_seq: 42, peer: 2 }));
    }

    #[test]
    fn inactive_ranks_are_skipped_explicitly() {
        // Rank 1 failed: the plan runs over members [0, 2, 3], renamed to group ranks.
        let members = [0, 2, 3];
        let plan = algo::remap::to_members(algo::all_reduce_direct(3, 0, 64, 4, 4096), &members);
        let t = tasks_for(&plan, 4, 0, 9, &members);
        assert_eq!(t[1], PeerTask::Skipped(SkipReason::Inactive));
        assert!(t[2].is_active() && t[3].is_active());
    }
}
