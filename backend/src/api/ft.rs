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
//! Timeout path (issue 25): a wait that reaches its deadline starts a recovery round too (a
//! *timeout round*: the report names the ranks waited for), so the collective ends alike on every
//! rank: committed where every rank's part was complete, otherwise the same `AgreedTimeout`
//! error everywhere (a rank that is late or never issues it gets it when it does), counted as
//! returned so the next collective lines up. Nobody is removed for being slow.
//!
//! Before every attempt a rank settles the rounds asked for while it was between collectives
//! ([`begin_attempt`]): it applies failure decisions (which may already say how the collective it
//! is about to start ends) and takes part in admission rounds, which change the view only
//! between two collectives.
use super::select::Topo;
use crate::engine::comm::{Comm, OpCtx};
use crate::engine::work::OpInfo;
use crate::error::{ChorusError, Result};
use crate::group::GroupInner;
use crate::membership::member::{Ending, Start};
use crate::transport::signals::Control;
use std::time::Instant;

type Attempt<'a> = dyn FnMut(&mut Comm, &OpCtx, &Topo, u32) -> Result<()> + 'a;

fn topo(g: &GroupInner, members: Vec<usize>) -> Topo {
    let hosts = g.host_indices(&members);
    Topo { size: g.size, members, rank: g.rank, chunk: g.chunk, hosts, ft: g.opts.fault_tolerance, save_limit: g.opts.ft_save_limit, forced: g.forced_algo }
}

/// Runs `attempt` until it is committed on every survivor, or fails with a non-recoverable error.
pub fn drive(g: &GroupInner, comm: &mut Comm, ctx: OpCtx, attempt: &mut Attempt<'_>) -> Result<OpInfo> {
    let ended = drive_attempts(g, comm, ctx, attempt);
    // Credits held back for batching go out before the caller moves on: a peer that drains this
    // collective waits for them.
    comm.flush_credits();
    ended
}

fn drive_attempts(g: &GroupInner, comm: &mut Comm, mut ctx: OpCtx, attempt: &mut Attempt<'_>) -> Result<OpInfo> {
    let ft = g.opts.fault_tolerance;
    let m = &g.membership;
    let mut tries = 0u32;
    loop {
        // Replacement ranks waiting for us get their links first; rounds asked for while this
        // rank was between collectives are settled next.
        if ft && !m.joins_to_serve().is_empty() {
            g.serve_joins(comm)?;
        }
        if ft {
            if let Some(ended) = begin_attempt(g, comm, &ctx)? {
                return ended;
            }
        } else {
            m.set_progress(Some((ctx.op_seq, false)), None);
        }
        let view = m.view();
        if !view.is_active(g.rank) {
            m.set_progress(None, None);
            return Err(ChorusError::Excluded { epoch: view.epoch });
        }
        ctx.epoch = view.epoch;
        ctx.attempt = m.rounds_applied();
        tracing::debug!(op = ctx.name, seq = ctx.op_seq, epoch = view.epoch, attempt = ctx.attempt, members = ?view.members(), tries, "attempt");
        let t = topo(g, view.members());
        comm.inputs_intact = true;
        comm.members = t.members.clone();
        let result = attempt(comm, &ctx, &t, tries);
        m.set_can_rerun(comm.inputs_intact);
        tries += 1;
        let info = |failed: Vec<usize>| OpInfo { epoch: ctx.epoch, failed, contributors: t.members.clone() };
        match result {
            Ok(()) if !ft => {
                m.set_progress(None, Some(ctx.op_seq));
                return Ok(info(m.take_failed()));
            }
            Ok(()) => {
                m.set_progress(Some((ctx.op_seq, true)), None);
                // A recovery request seen now must be answered before promising anything.
                if comm.recovery_requested().is_none() {
                    match commit_barrier(comm, &ctx, &t) {
                        Ok(()) => {
                            m.set_progress(None, Some(ctx.op_seq));
                            return Ok(info(m.take_failed()));
                        }
                        Err(e) if e.is_failure() => tracing::info!(op = ctx.name, seq = ctx.op_seq, error = %e, "failure during the commit barrier"),
                        Err(ChorusError::Timeout { peer, .. }) => timed_out(g, &ctx, peer),
                        Err(e) => {
                            m.set_progress(None, Some(ctx.op_seq));
                            return Err(e);
                        }
                    }
                }
            }
            Err(e) if ft && e.is_failure() => {
                tracing::info!(op = ctx.name, seq = ctx.op_seq, error = %e, "failure during the collective");
            }
            Err(ChorusError::Timeout { peer, .. }) if ft => timed_out(g, &ctx, peer),
            Err(e) => {
                // Returned: later collectives line up behind it (recovery reports count it).
                m.set_progress(None, Some(ctx.op_seq));
                return Err(e);
            }
        }
        // Slow path: agree with the survivors (who must not wait for our credits meanwhile).
        comm.flush_credits();
        let recovered = {
            let _span = tracing::info_span!("recovery", op = ctx.name, seq = ctx.op_seq).entered();
            m.recover(g)
        };
        if let Err(e) = recovered {
            m.set_progress(None, Some(ctx.op_seq));
            return Err(e);
        }
        match m.ending(ctx.name, ctx.op_seq) {
            Ending::Committed => {
                // Committed by agreement: every survivor holds the full result over this attempt's
                // members. The removal is reported by the next collective, on every survivor alike.
                m.set_progress(None, None);
                return Ok(info(Vec::new()));
            }
            Ending::Fails(e) => return Err(e),
            Ending::Run => {}
        }
        tracing::info!(op = ctx.name, seq = ctx.op_seq, "re-running the collective over the survivors");
        ctx.deadline = Instant::now() + g.opts.timeout;
    }
}

/// A wait of `ctx` reached its deadline waiting for `peer`: the recovery round that follows (the
/// caller's slow path) reports it, so every rank ends the collective the same way.
fn timed_out(g: &GroupInner, ctx: &OpCtx, peer: usize) {
    tracing::warn!(op = ctx.name, seq = ctx.op_seq, peer, "deadline passed: agreeing on the outcome with the other ranks");
    g.membership.set_timed_out(peer);
}

/// Before an attempt of `ctx`: settles the recovery rounds asked for, then marks the attempt
/// started (`Membership::start_attempt`). `Some` when a decision already ended the collective.
fn begin_attempt(g: &GroupInner, comm: &Comm, ctx: &OpCtx) -> Result<Option<Result<OpInfo>>> {
    let m = &g.membership;
    loop {
        let (round, failure) = match m.start_attempt(g, ctx.name, ctx.op_seq) {
            Start::Started => return Ok(None),
            Start::Ended(e) => return Ok(Some(Err(e))),
            Start::Settle(round, failure) => (round, failure),
        };
        tracing::debug!(round, failure, op = ctx.name, seq = ctx.op_seq, "settling a recovery round before the attempt");
        let applied = if failure {
            let _span = tracing::info_span!("recovery", round, op = ctx.name, seq = ctx.op_seq).entered();
            m.recover(g).map(|_| true)?
        } else {
            // Admission at the boundary before `ctx` (this rank returned every collective before
            // it and started nothing since).
            let _span = tracing::info_span!("admission", round, op = ctx.name, seq = ctx.op_seq).entered();
            m.admission(g, round, &|p, boundary| comm.peer_started_after(p, boundary), &|d| g.signals.wait_doorbell(d))?
        };
        if applied {
            match m.ending(ctx.name, ctx.op_seq) {
                Ending::Run => {}
                Ending::Fails(e) => return Ok(Some(Err(e))),
                // Not reachable for a collective this rank has not started; the decision stands.
                Ending::Committed => {
                    let view = m.view();
                    return Ok(Some(Ok(OpInfo { epoch: view.epoch, failed: Vec::new(), contributors: view.members() })));
                }
            }
        }
    }
}

/// A replacement rank asks the survivors to admit it (`Membership::admit`), then lines its
/// collective counter up with theirs.
pub fn admit(g: &GroupInner) -> Result<()> {
    let next = g.membership.admit(g)?;
    g.op_seq.store(next, std::sync::atomic::Ordering::SeqCst);
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
