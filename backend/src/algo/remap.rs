//! Running a plan on a subset of the group (the active ranks of a membership view).
//!
//! A plan is built for `m` dense ranks `0..m`; [`to_members`] renames its peers to the group ranks
//! `members[i]` (ascending, so `RecvReduce` sender lists stay in rank order), and
//! [`spread_blocks`] moves the ranges of a per-rank block layout (all-gather output,
//! reduce-scatter input, gather/scatter buffers) from dense block `i` to group block `members[i]`.
//! The host-aware builders (`hier`) use the same two renamings, with [`map_ranges`], to place
//! plans built for one host or one rank per host into the whole group's plan.
use super::plan::{Buf, Plan, Range, Step};

fn peer(members: &[usize], p: usize) -> usize {
    members[p]
}

/// Renames every peer `i` of `plan` to `members[i]`.
pub fn to_members(plan: Plan, members: &[usize]) -> Plan {
    let steps = plan
        .steps
        .into_iter()
        .map(|s| match s {
            Step::Send { to, src } => Step::Send { to: peer(members, to), src },
            Step::Recv { from, dst } => Step::Recv { from: peer(members, from), dst },
            Step::RecvReduce { from, local, dst } => Step::RecvReduce { from: from.into_iter().map(|f| peer(members, f)).collect(), local, dst },
            Step::RecvCopySend { from, to, dst } => {
                Step::RecvCopySend { from: peer(members, from), to: to.into_iter().map(|t| peer(members, t)).collect(), dst }
            }
            Step::RecvReduceSend { from, to, local, dst } => Step::RecvReduceSend { from: peer(members, from), to: peer(members, to), local, dst },
            Step::Copy { src, dst } => Step::Copy { src, dst },
        })
        .collect();
    Plan { steps }
}

/// Moves ranges of `buf` laid out as dense blocks of `block` bytes to the blocks of `members`.
pub fn spread_blocks(plan: Plan, buf: Buf, block: usize, members: &[usize]) -> Plan {
    if block == 0 {
        return plan;
    }
    map_ranges(plan, |r| {
        if r.buf != buf {
            return r;
        }
        let (i, within) = (r.off / block, r.off % block);
        debug_assert!(within + r.len <= block, "a step straddles two blocks");
        Range { off: members[i] * block + within, ..r }
    })
}

/// Rewrites every range of `plan` with `fix` (peers unchanged): placing a sub-plan built for
/// a smaller buffer into a part of the operation's buffers.
pub fn map_ranges(plan: Plan, fix: impl Fn(Range) -> Range) -> Plan {
    let steps = plan
        .steps
        .into_iter()
        .map(|s| match s {
            Step::Send { to, src } => Step::Send { to, src: fix(src) },
            Step::Recv { from, dst } => Step::Recv { from, dst: fix(dst) },
            Step::RecvReduce { from, local, dst } => Step::RecvReduce { from, local: fix(local), dst: fix(dst) },
            Step::RecvCopySend { from, to, dst } => Step::RecvCopySend { from, to, dst: fix(dst) },
            Step::RecvReduceSend { from, to, local, dst } => Step::RecvReduceSend { from, to, local: fix(local), dst: dst.map(&fix) },
            Step::Copy { src, dst } => Step::Copy { src: fix(src), dst: fix(dst) },
        })
        .collect();
    Plan { steps }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo;

    #[test]
    fn peers_are_renamed_in_order() {
        let plan = algo::all_reduce_direct(3, 1, 64, 4, 4096);
        let p = to_members(plan, &[0, 2, 5]);
        for s in &p.steps {
            match s {
                Step::Send { to, .. } => assert!([0, 5].contains(to)),
                Step::RecvReduce { from, .. } => assert_eq!(from, &vec![0, 5]),
                _ => {}
            }
        }
    }

    #[test]
    fn blocks_move_to_member_slots() {
        let plan = algo::all_gather_direct(2, 0, 16, 4096);
        let p = spread_blocks(to_members(plan, &[1, 3]), Buf::Output, 16, &[1, 3]);
        let offs: Vec<usize> = p
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Recv { dst, .. } => Some(dst.off),
                Step::Copy { dst, .. } => Some(dst.off),
                _ => None,
            })
            .collect();
        assert!(offs.contains(&16) && offs.contains(&48), "{offs:?}");
    }
}
