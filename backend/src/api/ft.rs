//! Running one collective with fault tolerance.
//!
//! Failure-free path: run the plan, mark this rank's part done, raise our `Done` counter to the
//! collective's sequence number at every member and wait for theirs (the commit barrier), then
//! return. A rank returns a collective only after every member finished its part, which is what
//! lets recovery decide consistently (see `membership::recovery`).
//!
//! Failure path: a failure seen anywhere (a peer died, went silent, or asked for recovery) makes
//! this rank join the recovery round; the agreed decision either commits the collective (every
//! survivor already holds the full result), re-runs it under the new view from the saved input,
//! or fails it alike on every survivor.
//!
//! Before every attempt a rank settles the rounds asked for while it was between collectives
//! ([`begin_attempt`]): it applies failure decisions (which may already say how the collective it
//! is about to start ends) and takes part in admission rounds, which change the view only
//! between two collectives.
use super::select::Topo;
use crate::engine::comm::{Comm, OpCtx};
use crate::transport::signals::Control;
use crate::engine::work::OpInfo;
use crate::error::{ChorusError, Result};
use crate::group::GroupInner;
use crate::membership::recovery::{Decision, Round};
use crate::options::FailurePolicy;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

type Attempt<'a> = dyn FnMut(&mut Comm, &OpCtx, &Topo, u32) -> Result<()> + 'a;

fn topo(g: &GroupInner, members: Vec<usize>) -> Topo {
    Topo { size: g.size, members, rank: g.rank, chunk: g.chunk, shared_memory: g.all_shared_memory, ft: g.opts.fault_tolerance, save_limit: g.opts.ft_save_limit, forced: g.forced_algo }
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
        // Replacement ranks waiting for us get their links first; rounds asked for while this
        // rank was between collectives are settled next.
        if ft && g.joins_announced.load(Ordering::SeqCst) > g.joins_served.load(Ordering::SeqCst) {
            g.serve_joins(comm)?;
        }
        if ft {
            if let Some(ended) = begin_attempt(g, comm, &ctx)? {
                return ended;
            }
        } else {
            set_progress(g, Some((ctx.op_seq, false)), None);
        }
        let view = g.view.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if !view.is_active(g.rank) {
            set_progress(g, None, None);
            return Err(ChorusError::Excluded { epoch: view.epoch });
        }
        ctx.epoch = view.epoch;
        ctx.attempt = g.rounds_applied.load(Ordering::SeqCst);
        tracing::debug!(op = ctx.name, seq = ctx.op_seq, epoch = view.epoch, attempt = ctx.attempt, members = ?view.members(), tries, "attempt");
        let t = topo(g, view.members());
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
                        Err(e) => {
                            set_progress(g, None, Some(ctx.op_seq));
                            return Err(e);
                        }
                    }
                }
            }
            Err(e) if ft && e.is_failure() => {
                tracing::info!(op = ctx.name, seq = ctx.op_seq, error = %e, "failure during the collective");
            }
            Err(e) => {
                // Returned: later collectives line up behind it (recovery reports count it).
                set_progress(g, None, Some(ctx.op_seq));
                return Err(e);
            }
        }
        // Slow path: agree with the survivors.
        if let Err(e) = recover(g, &ctx) {
            set_progress(g, None, Some(ctx.op_seq));
            return Err(e);
        }
        match verdict(g, &ctx) {
            Ending::Committed => {
                // Committed by agreement: every survivor holds the full result over this attempt's
                // members. The removal is reported by the next collective, on every survivor alike.
                set_progress(g, None, None);
                return Ok(info(&Vec::new()));
            }
            Ending::Fails(e) => return Err(e),
            Ending::Run => {}
        }
        tracing::info!(op = ctx.name, seq = ctx.op_seq, "re-running the collective over the survivors");
        ctx.deadline = Instant::now() + g.opts.timeout;
    }
}

/// How the collective `ctx` ends after the last decision this rank applied.
enum Ending {
    /// Committed by the decision (this rank holds its result).
    Committed,
    /// It fails with the same error on every survivor (counted as returned).
    Fails(ChorusError),
    /// It runs (again) under the decision's view.
    Run,
}

/// The decision's word on collective `ctx`: the same on every survivor, whether it was inside the
/// collective when the round started or had not begun it.
fn verdict(g: &GroupInner, ctx: &OpCtx) -> Ending {
    let committed = g.progress.lock().unwrap_or_else(|p| p.into_inner()).committed;
    if committed >= ctx.op_seq {
        return Ending::Committed;
    }
    let interrupted = g.last_decision.lock().unwrap_or_else(|p| p.into_inner()).as_ref().is_some_and(|d| d.interrupted && d.commit_through + 1 == ctx.op_seq);
    let rerun_possible = g.last_decision.lock().unwrap_or_else(|p| p.into_inner()).as_ref().is_none_or(|d| d.rerun_possible);
    if !interrupted || (rerun_possible && g.opts.policy == FailurePolicy::Shrink) {
        return Ending::Run;
    }
    // Every survivor gets the same decision, hence the same error; the collective counts as
    // returned so later ones line up.
    set_progress(g, None, Some(ctx.op_seq));
    let failed = take_failed(g);
    let epoch = g.view.lock().unwrap_or_else(|p| p.into_inner()).epoch;
    if g.opts.policy == FailurePolicy::Abort {
        Ending::Fails(ChorusError::FailedByPolicy { op: ctx.name, failed, epoch })
    } else {
        Ending::Fails(ChorusError::NotRecoverable { op: ctx.name, failed, epoch })
    }
}

/// Before an attempt of `ctx`: settles the recovery rounds asked for, then marks the attempt
/// started — under the progress lock, with no round pending, so the attendant thread never
/// answers for this rank as if it were between collectives once it started. `Some` when a
/// decision already ended the collective.
fn begin_attempt(g: &GroupInner, comm: &Comm, ctx: &OpCtx) -> Result<Option<Result<OpInfo>>> {
    loop {
        let pending = {
            let mut p = g.progress.lock().unwrap_or_else(|p| p.into_inner());
            let pending = match g.pending_round() {
                // Admission pending, but a member already runs the next collective: run it too.
                Some((round, false)) if p.proceed == Some((round, p.committed)) => None,
                other => other,
            };
            if pending.is_none() {
                p.current = Some((ctx.op_seq, false));
                p.can_rerun = true;
            } else {
                p.current = None;
            }
            pending
        };
        let Some((round, failure)) = pending else { return Ok(None) };
        tracing::debug!(round, failure, op = ctx.name, seq = ctx.op_seq, "settling a recovery round before the attempt");
        let applied = if failure { recover(g, ctx).map(|_| true)? } else { admission(g, comm, ctx, round)? };
        if applied {
            match verdict(g, ctx) {
                Ending::Run => {}
                Ending::Fails(e) => return Ok(Some(Err(e))),
                // Not reachable for a collective this rank has not started; the decision stands.
                Ending::Committed => {
                    let view = g.view.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    return Ok(Some(Ok(OpInfo { epoch: view.epoch, failed: Vec::new(), contributors: view.members() })));
                }
            }
        }
    }
}

/// Takes part in admission round `round` at the boundary before `ctx` (this rank returned every
/// collective before it and started nothing since). Returns whether a decision was applied
/// (`false`: another member already runs the next collective, so this rank runs it under the old
/// view and posts again at the next boundary).
fn admission(g: &GroupInner, comm: &Comm, ctx: &OpCtx, round: u64) -> Result<bool> {
    let _span = tracing::info_span!("admission", round, op = ctx.name, seq = ctx.op_seq).entered();
    let view = g.view.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let boundary = g.progress.lock().unwrap_or_else(|p| p.into_inner()).committed;
    let r = Round { store: &g.store, views: &g.views, uid: &g.uid, me: g.rank, round, view: &view };
    r.post_boundary(boundary)?;
    let deadline = Instant::now() + g.opts.timeout;
    let others: Vec<usize> = view.members().into_iter().filter(|&p| p != g.rank).collect();
    loop {
        if let Some(d) = r.try_admission()? {
            apply(g, round, d);
            return Ok(true);
        }
        match g.pending_round() {
            Some((q, false)) if q == round => {}
            // A failure during the admission round: it is a failure round now.
            Some((q, true)) if q == round => {
                recover(g, ctx)?;
                return Ok(true);
            }
            _ => return Ok(true),
        }
        if others.iter().any(|&p| g.peer_dead(p)) {
            recover(g, ctx)?;
            return Ok(true);
        }
        if others.iter().any(|&p| comm.peer_started_after(p, boundary)) || r.inside_after(boundary)? {
            tracing::debug!(boundary, "a member already runs the next collective: running it under the old view");
            g.progress.lock().unwrap_or_else(|p| p.into_inner()).proceed = Some((round, boundary));
            return Ok(false);
        }
        if Instant::now() >= deadline {
            return Err(ChorusError::Timeout { op: "recovery", what: "the members' positions for an admission", peer: others.first().copied().unwrap_or(g.rank), waited_ms: g.opts.timeout.as_millis() as u64 });
        }
        g.signals.wait_doorbell(Duration::from_millis(2));
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

/// A replacement rank asks the survivors to admit it (an admission round: they adopt the grown
/// view between two collectives, so no collective is interrupted), waits for the decision that
/// does, then lines its collective counter up with theirs. It helps decide (it reads the
/// members' posts like they do), and turns the round into a failure round if a member dies.
pub fn admit(g: &GroupInner) -> Result<()> {
    let deadline = Instant::now() + g.opts.timeout;
    loop {
        let round = g.rounds_applied.load(Ordering::SeqCst) + 1;
        let view = g.view.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let members = view.members();
        g.raise_recovery(round, false, &members);
        let r = Round { store: &g.store, views: &g.views, uid: &g.uid, me: g.rank, round, view: &view };
        let d = loop {
            if let Some(d) = r.try_admission()? {
                break d;
            }
            if let Some(d) = r.try_failure(|p| g.peer_dead(p))? {
                break d;
            }
            if members.iter().any(|&p| g.peer_dead(p)) {
                g.raise_recovery(round, true, &members);
            }
            if Instant::now() >= deadline {
                return Err(ChorusError::InvalidArgument(format!("join: the survivors did not admit rank {} in time (view {:?}); they admit between collectives, so they must keep running them", g.rank, members)));
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        tracing::info!(round, commit_through = d.commit_through, epoch = d.view.epoch, "admission round decided");
        let fails = d.interrupted && (!d.rerun_possible || g.opts.policy == FailurePolicy::Abort);
        let next = d.commit_through + fails as u64;
        let removed = d.removed.clone();
        apply(g, round, d);
        let view = g.view.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if view.is_active(g.rank) {
            // The survivors' next collective is ours too: one they re-run or that simply comes
            // next (it reports the removals this decision made); one that fails on them is theirs.
            g.progress.lock().unwrap_or_else(|p| p.into_inner()).committed = next;
            *g.pending_failed.lock().unwrap_or_else(|p| p.into_inner()) = if fails { Vec::new() } else { removed };
            g.op_seq.store(next, Ordering::SeqCst);
            tracing::info!(epoch = view.epoch, next_collective = next + 1, "rejoined");
            return Ok(());
        }
    }
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

/// Joins (or starts) the next recovery round as a failure round and applies its decision (the
/// removed ranks are queued for the next collective's report).
fn recover(g: &GroupInner, ctx: &OpCtx) -> Result<()> {
    let round = g.rounds_applied.load(Ordering::SeqCst) + 1;
    let _span = tracing::info_span!("recovery", round, op = ctx.name, seq = ctx.op_seq).entered();
    g.post_recovery(round)?;
    let view = g.view.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let r = Round { store: &g.store, views: &g.views, uid: &g.uid, me: g.rank, round, view: &view };
    let deadline = Instant::now() + g.opts.timeout;
    let decision = r.agree(deadline, |p| p != g.rank && g.peer_dead(p))?;
    apply(g, round, decision);
    Ok(())
}

/// Applies round `round`'s decision.
fn apply(g: &GroupInner, round: u64, decision: Decision) {
    tracing::info!(round, commit_through = decision.commit_through, epoch = decision.view.epoch, removed = ?decision.removed, interrupted = decision.interrupted, rerun_possible = decision.rerun_possible, "recovery decided");
    {
        let mut p = g.progress.lock().unwrap_or_else(|p| p.into_inner());
        // Everything up to commit_through is committed; this rank held the data for it (the
        // decision rule guarantees it), so its result stands.
        p.committed = p.committed.max(decision.commit_through);
        p.proceed = None;
    }
    *g.view.lock().unwrap_or_else(|p| p.into_inner()) = decision.view.clone();
    // Every rank that applies a decision publishes its view (a replacement waits for it to see
    // its predecessor removed); publishing again, or late, changes nothing.
    if let Err(e) = g.views.publish(&decision.view) {
        tracing::warn!(error = %e, epoch = decision.view.epoch, "publishing the decided view failed (the other members publish it too)");
    }
    g.pending_failed.lock().unwrap_or_else(|p| p.into_inner()).extend(decision.removed.iter().copied());
    *g.last_decision.lock().unwrap_or_else(|p| p.into_inner()) = Some(decision);
    g.rounds_applied.fetch_max(round, Ordering::SeqCst);
}
