//! How an operation runs: queued behind the group's earlier operations, with a [`Work`] handle
//! (`Mode::Queued`: the `*_async` calls), or to completion on the calling thread (`Mode::Inline`:
//! the blocking calls and the C ABI's blocking form, which then need no handle and no thread hop).
//! Either way the operation runs under the group's collective lock, inside `ft::drive`, in a
//! `collective` tracing span, after every operation queued before it.
use super::select::Topo;
use super::{ft, ProcessGroup};
use crate::engine::comm::{Comm, OpCtx};
use crate::engine::desc::OpDesc;
use crate::engine::queue::{Drain, Job};
use crate::engine::work::{self, OpInfo, Work};
use crate::error::{ChorusError, Result};
use std::sync::{Arc, Weak};

/// Where an operation runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Queued on the group: the group's worker thread runs it, or the thread that waits for it
    /// when it has not started yet. The call returns at once.
    Queued,
    /// On the calling thread, once the group's queued operations finished (the thread runs those
    /// that have not started itself).
    Inline,
}

/// An issued operation.
#[derive(Debug)]
pub enum Issued<R> {
    /// Queued: its handle.
    Queued(Work<R>),
    /// It ran: its result, and what it reported (a failure reports what [`OpInfo::of_error`]
    /// finds in the error).
    Ran(Result<R>, OpInfo),
    /// Refused before it ran (bad arguments, a destroyed group, earlier operations that did not
    /// finish in time).
    Refused(ChorusError),
    /// Refused like that, with its buffers given back.
    Returned(ChorusError, R),
}

impl<R> Issued<R> {
    /// The outcome as a handle (complete unless queued).
    pub fn into_work(self, name: &'static str) -> Work<R> {
        match self {
            Issued::Queued(w) => w,
            Issued::Ran(r, info) => Work::ready_with(name, r, info),
            Issued::Refused(e) => Work::ready(name, Err(e)),
            Issued::Returned(e, buffers) => Work::refused(name, e, buffers),
        }
    }
}

/// The body of a collective: runs one attempt over `Topo` with the operation's state `S`.
pub(super) trait Body<S>: FnMut(&mut Comm, &OpCtx, &Topo, u32, &mut S) -> Result<()> + Send + 'static {}
impl<S, F: FnMut(&mut Comm, &OpCtx, &Topo, u32, &mut S) -> Result<()> + Send + 'static> Body<S> for F {}

impl ProcessGroup {
    /// Runs a collective on the caller's thread, after every queued one.
    pub(super) fn run_blocking(&self, name: &'static str, desc: OpDesc, f: impl FnMut(&mut Comm, &OpCtx, &Topo, u32) -> Result<()>) -> Result<OpInfo> {
        self.ready_to_run()?;
        self.run_here(name, desc, f)
    }

    /// Checks the group is live and finishes every queued operation (on this thread when they
    /// have not started; at once when there are none).
    fn ready_to_run(&self) -> Result<()> {
        self.inner.check_live()?;
        self.inner.worker.quiesce(self.inner.opts.timeout)
    }

    /// Runs a collective here and now; what it reported.
    fn run_here(&self, name: &'static str, desc: OpDesc, mut f: impl FnMut(&mut Comm, &OpCtx, &Topo, u32) -> Result<()>) -> Result<OpInfo> {
        let ctx = self.next_ctx(name, desc);
        let mut guard = self.inner.coll.lock().unwrap_or_else(|p| p.into_inner());
        let _span = tracing::debug_span!("collective", op = name, seq = ctx.op_seq, rank = self.inner.rank).entered();
        let info = ft::drive(&self.inner, &mut guard.comm, ctx, &mut f)?;
        // clone_from reuses the stored report's allocation.
        self.inner.last_info.lock().unwrap_or_else(|p| p.into_inner()).clone_from(&info);
        Ok(info)
    }

    /// Issues a collective over owned state `state` (its buffers), which `finish` turns into the
    /// result.
    pub(super) fn issue<S: Send + 'static, R: Send + 'static>(
        &self,
        mode: Mode,
        name: &'static str,
        desc: OpDesc,
        state: S,
        f: impl Body<S>,
        finish: impl FnOnce(S) -> R + Send + 'static,
    ) -> Issued<R> {
        match mode {
            Mode::Queued => self.enqueue(name, desc, state, f, finish),
            Mode::Inline => self.run_inline(name, desc, state, f, finish),
        }
    }

    /// `issue` for state that is itself the result (the buffers come back).
    pub(super) fn issue_bufs<B: Send + 'static>(&self, mode: Mode, name: &'static str, desc: OpDesc, bufs: B, f: impl Body<B>) -> Issued<B> {
        self.issue(mode, name, desc, bufs, f, |b| b)
    }

    fn run_inline<S, R>(&self, name: &'static str, desc: OpDesc, mut state: S, mut f: impl Body<S>, finish: impl FnOnce(S) -> R) -> Issued<R> {
        if let Err(e) = self.ready_to_run() {
            return Issued::Refused(e);
        }
        match self.run_here(name, desc, |c, x, t, a| f(c, x, t, a, &mut state)) {
            Ok(info) => Issued::Ran(Ok(finish(state)), info),
            Err(e) => {
                let info = OpInfo::of_error(&e);
                Issued::Ran(Err(e), info)
            }
        }
    }

    /// Queues a collective; the state travels with it and comes back from `Work::wait`.
    fn enqueue<S: Send + 'static, R: Send + 'static>(
        &self,
        name: &'static str,
        desc: OpDesc,
        mut state: S,
        mut f: impl Body<S>,
        finish: impl FnOnce(S) -> R + Send + 'static,
    ) -> Issued<R> {
        if let Err(e) = self.inner.check_live() {
            return Issued::Returned(e, finish(state));
        }
        let (work, done) = work::pair(name);
        let weak = Arc::downgrade(&self.inner);
        let rank = self.inner.rank;
        // Numbered under the queue's lock: collective numbers follow the queue's order.
        let submitted = self.inner.worker.submit(|| {
            let ctx = self.next_ctx(name, desc);
            let deadline = ctx.deadline;
            let job: Job = Box::new(move || {
                let Some(inner) = weak.upgrade() else {
                    done.fail_returning(ChorusError::Destroyed, finish(state));
                    return;
                };
                let coll = inner.coll.clone();
                let mut guard = coll.lock().unwrap_or_else(|p| p.into_inner());
                let _span = tracing::debug_span!("collective", op = name, seq = ctx.op_seq, rank).entered();
                match ft::drive(&inner, &mut guard.comm, ctx, &mut |c, x, t, a| f(c, x, t, a, &mut state)) {
                    Ok(info) => {
                        inner.last_info.lock().unwrap_or_else(|p| p.into_inner()).clone_from(&info);
                        done.set_info(info);
                        done.complete(Ok(finish(state)));
                    }
                    Err(e) => {
                        // Errors that end a collective alike on every survivor still say who failed.
                        done.set_info(OpInfo::of_error(&e));
                        done.fail_returning(e, finish(state))
                    }
                }
            });
            (job, deadline)
        });
        match submitted {
            Ok(seq) => {
                let queue: Weak<dyn Drain> = Arc::downgrade(self.inner.worker.queue()) as Weak<crate::engine::queue::OpQueue>;
                Issued::Queued(work.queued_on(queue, seq))
            }
            Err(e) => Issued::Refused(e),
        }
    }
}
