//! Running one collective with fault tolerance.
//!
//! Failure-free path: run the plan, mark this rank's part done, raise our `Done` counter to the
//! collective's sequence number at every member and wait for theirs (the commit barrier), then
//! return. A rank returns a collective only after every member finished its part, which is what
//! lets recovery decide consistently (see `membership::recovery`).
//!
//! Failure path: a failure seen anywhere (a peer died, went silent, or asked for recovery) makes
//! this rank join the recovery round; the agreed decision either commits the collective (every
//! survivor already holds the full result) or re-runs it under the new view from the saved input.
use super::select::Topo;
use crate::engine::comm::{Comm, OpCtx};
use crate::engine::signals::Control;
use crate::engine::work::OpInfo;
use crate::error::{ChorusError, Result};
use crate::group::GroupInner;
use crate::membership::recovery::Round;
use crate::options::FailurePolicy;
use std::sync::atomic::Ordering;
use std::time::Instant;

type Attempt<'a> = dyn FnMut(&mut Comm, &OpCtx, &Topo, u32) -> Result<()> + 'a;

fn topo(g: &GroupInner, members: Vec<usize>) -> Topo {
    Topo { size: g.size, members, rank: g.rank, chunk: g.chunk, shared_memory: g.all_shared_memory, ft: g.opts.fault_tolerance, save_limit: g.opts.ft_save_limit }
}

fn set_progress(g: &GroupInner, current: Option<(u64, bool)>, committed: Option<u64>) {
    let mut p = g.progress.lock().unwrap_or_else(|p| p.into_inner());
    p.current = current;
    if let Some(c) = committed {
        p.committed = p.committed.max(c);
    }
}

/// Runs `attempt` until it is committed on every survivor, or fails with a non-recoverable error.
pub fn drive(g: &GroupInner, comm: &mut Comm, mut ctx: OpCtx, attempt: &mut Attempt<'_>) -> Result<OpInfo> {
    let ft = g.opts.fault_tolerance;
    let mut tries = 0u32;
    loop {
        // Replacement ranks waiting for us get their links first; a recovery that started while
        // this rank was between collectives is settled next.
        if ft && g.joins_announced.load(Ordering::SeqCst) > g.joins_served.load(Ordering::SeqCst) {
            g.serve_joins(comm)?;
        }
        if ft && g.pending_round().is_some() {
            set_progress(g, None, None);
            recover(g, &ctx)?;
        }
        let view = g.view.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if !view.is_active(g.rank) {
            return Err(ChorusError::Excluded { epoch: view.epoch });
        }
        ctx.epoch = view.epoch;
        ctx.attempt = g.rounds_applied.load(Ordering::SeqCst);
        tracing::debug!(op = ctx.name, seq = ctx.op_seq, epoch = view.epoch, attempt = ctx.attempt, members = ?view.members(), tries, "attempt");
        let t = topo(g, view.members());
        set_progress(g, Some((ctx.op_seq, false)), None);
        comm.inputs_intact = true;
        comm.members = t.members.clone();
        let result = attempt(comm, &ctx, &t, tries);
        g.progress.lock().unwrap_or_else(|p| p.into_inner()).can_rerun = comm.inputs_intact;
        tries += 1;
        let info = |failed: &Vec<usize>| OpInfo { epoch: ctx.epoch, failed: failed.clone(), contributors: t.members.clone() };
        match result {
            Ok(()) if !ft => {
                set_progress(g, None, Some(ctx.op_seq));
                return Ok(info(&take_failed(g)));
            }
            Ok(()) => {
                set_progress(g, Some((ctx.op_seq, true)), None);
                // A recovery request seen now must be answered before promising anything.
                if comm.recovery_requested().is_none() {
                    match commit_barrier(comm, &ctx, &t) {
                        Ok(()) => {
                            set_progress(g, None, Some(ctx.op_seq));
                            return Ok(info(&take_failed(g)));
                        }
                        Err(e) if e.is_failure() => tracing::info!(op = ctx.name, seq = ctx.op_seq, error = %e, "failure during the commit barrier"),
                        Err(e) => return Err(e),
                    }
                }
            }
            Err(e) if ft && e.is_failure() => {
                tracing::info!(op = ctx.name, seq = ctx.op_seq, error = %e, "failure during the collective");
            }
            Err(e) => {
                set_progress(g, None, None);
                return Err(e);
            }
        }
        // Slow path: agree with the survivors.
        recover(g, &ctx)?;
        let committed = g.progress.lock().unwrap_or_else(|p| p.into_inner()).committed;
        if committed >= ctx.op_seq {
            // Committed by agreement: every survivor holds the full result over this attempt's
            // members. The removal is reported by the next collective, on every survivor alike.
            set_progress(g, None, None);
            return Ok(info(&Vec::new()));
        }
        let rerun_possible = g.last_decision_rerun.load(Ordering::SeqCst) != 0;
        if !rerun_possible && g.opts.policy == FailurePolicy::Shrink {
            set_progress(g, None, Some(ctx.op_seq));
            let failed = take_failed(g);
            let epoch = g.view.lock().unwrap_or_else(|p| p.into_inner()).epoch;
            return Err(ChorusError::NotRecoverable { op: ctx.name, failed, epoch });
        }
        if g.opts.policy == FailurePolicy::Abort {
            let failed = take_failed(g);
            // Every survivor gets the same decision, hence the same error; the collective counts as
            // finished so later ones line up.
            set_progress(g, None, Some(ctx.op_seq));
            let epoch = g.view.lock().unwrap_or_else(|p| p.into_inner()).epoch;
            return Err(ChorusError::FailedByPolicy { op: ctx.name, failed, epoch });
        }
        tracing::info!(op = ctx.name, seq = ctx.op_seq, "re-running the collective over the survivors");
        ctx.deadline = Instant::now() + g.opts.timeout;
    }
}

/// Ranks removed since the last collective that reported removals (reported once, by the first
/// collective that completes under the new view).
fn take_failed(g: &GroupInner) -> Vec<usize> {
    let mut f = std::mem::take(&mut *g.pending_failed.lock().unwrap_or_else(|p| p.into_inner()));
    f.sort_unstable();
    f.dedup();
    f
}

/// A replacement rank waits for the survivors' decision that admits it, then lines its
/// collective counter up with theirs.
pub fn admit(g: &GroupInner) -> Result<()> {
    let ctx = OpCtx { name: "join", op_seq: 0, epoch: 0, attempt: 0, desc: 0, deadline: Instant::now() + g.opts.timeout, started: Instant::now() };
    recover(g, &ctx)?;
    let view = g.view.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if !view.is_active(g.rank) {
        return Err(ChorusError::InvalidArgument(format!("join: the survivors did not admit rank {} (view {:?})", g.rank, view.members())));
    }
    let committed = g.progress.lock().unwrap_or_else(|p| p.into_inner()).committed;
    g.op_seq.store(committed, Ordering::SeqCst);
    tracing::info!(epoch = view.epoch, next_collective = committed + 1, "rejoined");
    Ok(())
}

/// Raises `Done` to this collective at every member and waits for every member's.
fn commit_barrier(comm: &mut Comm, ctx: &OpCtx, t: &Topo) -> Result<()> {
    for &p in &t.members {
        if p != t.rank {
            comm.link(p)?.control(Control::Done, ctx.op_seq)?;
        }
    }
    for &p in &t.members {
        if p != t.rank {
            comm.wait_control(ctx, p, Control::Done, ctx.op_seq)?;
        }
    }
    Ok(())
}

/// Joins (or starts) the next recovery round and applies its decision (the removed ranks are
/// queued for the next collective's report).
fn recover(g: &GroupInner, ctx: &OpCtx) -> Result<()> {
    let round = g.rounds_applied.load(Ordering::SeqCst) + 1;
    let _span = tracing::info_span!("recovery", round, op = ctx.name, seq = ctx.op_seq).entered();
    g.post_recovery(round)?;
    let view = g.view.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let r = Round { store: &g.store, views: &g.views, uid: &g.uid, me: g.rank, round, view: &view };
    let deadline = Instant::now() + g.opts.timeout;
    let decision = r.agree(deadline, |p| p != g.rank && g.peer_dead(p))?;
    tracing::info!(commit_through = decision.commit_through, epoch = decision.view.epoch, removed = ?decision.removed, "recovery decided");
    {
        let mut p = g.progress.lock().unwrap_or_else(|p| p.into_inner());
        // Everything up to commit_through is committed; this rank held the data for it (the
        // decision rule guarantees it), so its result stands.
        p.committed = p.committed.max(decision.commit_through);
    }
    *g.view.lock().unwrap_or_else(|p| p.into_inner()) = decision.view.clone();
    g.pending_failed.lock().unwrap_or_else(|p| p.into_inner()).extend(decision.removed.iter().copied());
    g.last_decision_rerun.store(decision.rerun_possible as u64, Ordering::SeqCst);
    g.rounds_applied.fetch_max(round, Ordering::SeqCst);
    Ok(())
}
