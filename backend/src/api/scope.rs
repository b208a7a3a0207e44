//! Collectives on borrowed memory: [`ProcessGroup::scope`] lends sub-slices of the caller's
//! buffers to queued operations (say every bucket of one flat gradient buffer, reduced
//! concurrently) and returns only once every operation it issued completed, as
//! `std::thread::scope` does for threads. A named exception to the crate's `deny(unsafe_code)`:
//! the loans are made here, where the wait that makes them sound is.
#![allow(unsafe_code)]
use super::buffer::{as_bytes_mut, Element};
use super::{Mode, ProcessGroup};
use crate::engine::p2p::OpBuffer;
use crate::engine::work::{OpInfo, Work};
use crate::error::{ChorusError, Result};
use crate::sys::lend::Lent;
use chorus_kernels::{DType, ReduceOp};
use std::any::Any;
use std::marker::PhantomData;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::Mutex;
use std::time::Duration;

/// A loan of the caller's elements to one operation.
struct Loan {
    lent: Lent,
    /// The elements' dtype (`None` for bytes), checked against the operation's as for owned buffers.
    dtype: Option<DType>,
}

impl Loan {
    fn of<T: Element>(buf: &mut [T]) -> Loan {
        // SAFETY: only `OpScope` makes loans, of borrows that outlive the scope ('env); the scope
        // waits for every operation holding one (`OpScope::settle`, on return and on unwind)
        // before the borrow can end, and the borrow is exclusive meanwhile (`&mut`).
        let lent = unsafe { Lent::new(as_bytes_mut(buf)) };
        Loan { lent, dtype: (T::DTYPE != DType::U8).then_some(T::DTYPE) }
    }
}

impl OpBuffer for Loan {
    fn bytes(&self) -> &[u8] {
        self.lent.bytes()
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        self.lent.bytes_mut()
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }
    fn element_type(&self) -> Option<DType> {
        self.dtype
    }
}

/// An operation of a scope that has not been waited for.
trait Pending: Send {
    /// Waits until the operation completed (it has its own deadline, the group's timeout) and
    /// returns its report: only then is the loan back.
    fn settle(self: Box<Self>) -> Result<OpInfo>;
}

impl<R: Send> Pending for Work<R> {
    fn settle(self: Box<Self>) -> Result<OpInfo> {
        // Every operation ends by its own deadline; the loop only guards the loan's soundness
        // should one not (the memory must not be returned while the engine may still use it).
        while !self.wait_for(Duration::from_secs(3600)) {
            tracing::warn!(op = self.name(), "a scoped operation is still running after an hour: the scope keeps waiting for it");
        }
        self.outcome().map(|(_, info)| info).map_err(|e| e.error)
    }
}

/// The operations issued inside [`ProcessGroup::scope`]: each borrows its buffers for `'env` (they
/// outlive the scope) and runs queued, concurrently with the caller and in issue order with the
/// group's other operations.
///
/// The borrow checker keeps lent memory out of reach until the scope has ended: neither memory
/// that lives shorter than the scope nor memory that the caller touches again inside it can be lent.
///
/// ```compile_fail
/// # fn f(pg: &chorus_backend::ProcessGroup) {
/// pg.scope(|s| {
///     let mut local = vec![1.0f32; 4]; // dropped before the scope waits
///     let _ = s.all_reduce(&mut local, chorus_backend::ReduceOp::Sum);
/// });
/// # }
/// ```
///
/// ```compile_fail
/// # fn f(pg: &chorus_backend::ProcessGroup) {
/// let mut grads = vec![1.0f32; 4];
/// pg.scope(|s| {
///     let _ = s.all_reduce(&mut grads, chorus_backend::ReduceOp::Sum);
///     grads[0] = 0.0; // still lent to the running operation
/// });
/// # }
/// ```
pub struct OpScope<'scope, 'env: 'scope> {
    group: ProcessGroup,
    pending: Mutex<Vec<Option<Box<dyn Pending>>>>,
    // Invariant in both lifetimes, as `std::thread::Scope`: a borrow can neither shrink below the
    // scope nor be swapped for a shorter one.
    scope: PhantomData<&'scope mut &'scope ()>,
    env: PhantomData<&'env mut &'env ()>,
}

/// One operation of an [`OpScope`]. Waiting is optional: the scope waits for whatever was not.
#[must_use = "wait for the operation, or let the scope wait for it and report its error"]
pub struct ScopedWork<'scope> {
    pending: &'scope Mutex<Vec<Option<Box<dyn Pending>>>>,
    index: usize,
}

impl ScopedWork<'_> {
    /// Waits for the operation; its report (who failed, the epoch), or its error. Its buffers hold
    /// the result once this returns `Ok`.
    pub fn wait(self) -> Result<OpInfo> {
        let op = self.pending.lock().unwrap_or_else(|p| p.into_inner())[self.index].take();
        match op {
            Some(op) => op.settle(),
            None => Err(ChorusError::InvalidArgument("scoped operation waited for twice".into())),
        }
    }
}

impl<'scope, 'env> OpScope<'scope, 'env> {
    fn add(&'scope self, op: Box<dyn Pending>) -> ScopedWork<'scope> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.push(Some(op));
        ScopedWork { pending: &self.pending, index: pending.len() - 1 }
    }

    /// [`ProcessGroup::all_reduce`] on borrowed elements, queued.
    pub fn all_reduce<T: Element>(&'scope self, buf: &'env mut [T], op: ReduceOp) -> ScopedWork<'scope> {
        self.add(Box::new(self.group.all_reduce_issue(Mode::Queued, Loan::of(buf), T::DTYPE, op).into_work("all_reduce")))
    }

    /// [`ProcessGroup::reduce`] on borrowed elements, queued.
    pub fn reduce<T: Element>(&'scope self, buf: &'env mut [T], root: usize, op: ReduceOp) -> ScopedWork<'scope> {
        self.add(Box::new(self.group.reduce_issue(Mode::Queued, Loan::of(buf), root, T::DTYPE, op).into_work("reduce")))
    }

    /// [`ProcessGroup::broadcast`] on borrowed elements, queued.
    pub fn broadcast<T: Element>(&'scope self, buf: &'env mut [T], root: usize) -> ScopedWork<'scope> {
        self.add(Box::new(self.group.broadcast_issue(Mode::Queued, Loan::of(buf), Some(T::DTYPE), root).into_work("broadcast")))
    }

    /// [`ProcessGroup::all_gather`] on borrowed elements, queued. The input is borrowed
    /// exclusively as well (it is only read): the engine holds it until the operation completes.
    pub fn all_gather<T: Element>(&'scope self, input: &'env mut [T], output: &'env mut [T]) -> ScopedWork<'scope> {
        let (i, o) = (Loan::of(input), Loan::of(output));
        self.add(Box::new(self.group.all_gather_issue(Mode::Queued, i, o, Some(T::DTYPE)).into_work("all_gather")))
    }

    /// [`ProcessGroup::reduce_scatter`] on borrowed elements, queued. The input is borrowed
    /// exclusively as well (it is only read).
    pub fn reduce_scatter<T: Element>(&'scope self, input: &'env mut [T], output: &'env mut [T], op: ReduceOp) -> ScopedWork<'scope> {
        let (i, o) = (Loan::of(input), Loan::of(output));
        self.add(Box::new(self.group.reduce_scatter_issue(Mode::Queued, i, o, T::DTYPE, op).into_work("reduce_scatter")))
    }

    /// Waits for every operation not yet waited for; the first error among them.
    fn settle(&self) -> Result<()> {
        let ops: Vec<_> = self.pending.lock().unwrap_or_else(|p| p.into_inner()).iter_mut().filter_map(Option::take).collect();
        let mut first = Ok(());
        for op in ops {
            if let (Err(e), Ok(())) = (op.settle(), &first) {
                first = Err(e);
            }
        }
        first
    }
}

impl ProcessGroup {
    /// Runs `f` with a scope whose collectives borrow the caller's memory, e.g. the buckets of one
    /// flat gradient buffer reduced concurrently with the code that fills the next:
    ///
    /// ```no_run
    /// # use chorus_backend::{ProcessGroup, ReduceOp};
    /// # fn f(pg: &ProcessGroup) -> chorus_backend::Result<()> {
    /// let mut grads = vec![1.0f32; 1 << 20];
    /// pg.scope(|s| {
    ///     for bucket in grads.chunks_mut(1 << 18) {
    ///         let _ = s.all_reduce(bucket, ReduceOp::Sum); // the scope waits for it
    ///     }
    /// })?;
    /// assert_eq!(grads[0], pg.size() as f32);
    /// # Ok(()) }
    /// ```
    ///
    /// The operations run queued, in issue order with the group's other operations. `scope`
    /// returns once every one of them completed (also when `f` panics: it waits, then goes on
    /// unwinding), so the borrows outlive every use. It returns `f`'s value, or the first error of
    /// an operation that `f` did not wait for itself ([`ScopedWork::wait`] reports its own).
    pub fn scope<'env, R>(&self, f: impl for<'scope> FnOnce(&'scope OpScope<'scope, 'env>) -> R) -> Result<R> {
        let scope = OpScope { group: self.clone(), pending: Mutex::new(Vec::new()), scope: PhantomData, env: PhantomData };
        let value = catch_unwind(AssertUnwindSafe(|| f(&scope)));
        let unwaited = scope.settle();
        match value {
            Ok(v) => unwaited.map(|()| v),
            Err(panic) => resume_unwind(panic),
        }
    }
}
