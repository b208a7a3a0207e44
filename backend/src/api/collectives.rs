//! Collectives: validation, plan selection, execution, AVG finalisation. Each operation has one
//! implementation (`*_impl`) used by its blocking typed form, its blocking byte form (`*_raw`)
//! and its owned-buffer form (`*_issue`: queued or run on the calling thread; `*_async` is its
//! queued form).
use super::buffer::{as_bytes, as_bytes_mut, check_element_types, Element};
use super::issue::{Issued, Mode};
use super::select::{self, AllReduceAlgo, BlocksAlgo, Coll, RootedAlgo, Topo};
use super::ProcessGroup;
use crate::algo::{self, Buf};
use crate::engine::comm::{Comm, OpCtx};
use crate::engine::desc::{kind, OpDesc};
use crate::engine::exec::{self, Bufs, Reduction};
use crate::engine::p2p::OpBuffer;
use crate::engine::work::{OpInfo, Work};
use crate::error::{ChorusError, Result};
use chorus_kernels::{self as kernels, DType, ReduceOp};

fn elems(bytes: usize, dtype: DType, what: &str) -> Result<u64> {
    if !bytes.is_multiple_of(dtype.size()) {
        return Err(ChorusError::InvalidArgument(format!("{what}: {bytes} bytes is not a whole number of {} elements", dtype.name())));
    }
    Ok((bytes / dtype.size()) as u64)
}

/// `elems` for the collectives whose dtype is optional (`None`: bytes).
fn whole(bytes: usize, dtype: Option<DType>, what: &str) -> Result<()> {
    dtype.map_or(Ok(()), |d| elems(bytes, d, what).map(drop))
}

fn reduction(kind: u8, dtype: DType, op: ReduceOp, root: Option<usize>, bytes: usize) -> OpDesc {
    OpDesc::new(kind, Some(dtype), Some(op), root, bytes as u64)
}

fn movement(kind: u8, dtype: Option<DType>, root: Option<usize>, bytes: usize) -> OpDesc {
    OpDesc::new(kind, dtype, None, root, bytes as u64)
}

fn check_root(root: usize, n: usize) -> Result<()> {
    if root >= n {
        return Err(ChorusError::InvalidRank { rank: root, size: n });
    }
    Ok(())
}

fn finalize(op: ReduceOp, dtype: DType, buf: &mut [u8], n: usize) -> Result<()> {
    if op == ReduceOp::Avg {
        kernels::finalize_avg(dtype, buf, n)?;
    }
    Ok(())
}

/// Saves the caller's input before the first attempt of an in-place reduction and restores it
/// before a re-run (a recovery can ask survivors to run a collective again). Inputs of at least
/// `Options::ft_save_limit` bytes (`CHORUS_FT_SAVE_LIMIT`, default 1 MiB) are not saved: the copy
/// would cost as much as the collective itself on a memory-bound host. Such a collective is
/// committed when every survivor already holds its result; if it would have to be re-run, every
/// survivor gets the same `NotRecoverable` error instead.
fn guard_input(t: &Topo, comm: &mut Comm, attempt: u32, buf: &mut [u8]) {
    if !t.ft || t.m() < 2 {
        return;
    }
    if buf.len() >= t.save_limit {
        comm.inputs_intact = false;
        return;
    }
    // The group keeps one backup buffer and reuses it (no per-call allocation or page faults).
    let backup = &mut comm.backup;
    if attempt == 0 {
        backup.clear();
        backup.extend_from_slice(buf);
    } else {
        buf.copy_from_slice(backup);
    }
}

fn dense_root(t: &Topo, ctx: &OpCtx, root: usize) -> Result<usize> {
    t.dense(root).ok_or(ChorusError::RootInactive { op: ctx.name, root })
}

fn all_reduce_impl(t: &Topo, comm: &mut Comm, ctx: &OpCtx, attempt: u32, buf: &mut [u8], dtype: DType, op: ReduceOp) -> Result<()> {
    guard_input(t, comm, attempt, buf);
    let (n, me, bytes, elem, chunk) = (t.m(), t.me(), buf.len(), dtype.size(), t.chunk);
    let plan = match select::all_reduce(t, bytes) {
        AllReduceAlgo::Direct => algo::all_reduce_direct(n, me, bytes, elem, chunk),
        AllReduceAlgo::RsAg => algo::all_reduce_rs_ag(n, me, bytes, elem, chunk),
        AllReduceAlgo::Ring => algo::all_reduce_ring(n, me, bytes, elem, chunk),
        AllReduceAlgo::HierLeaders(cross) => algo::all_reduce_hier_leaders(&t.layout(), me, bytes, elem, chunk, cross),
        AllReduceAlgo::HierSegments(cross) => algo::all_reduce_hier(&t.layout(), me, bytes, elem, chunk, cross),
    };
    exec::run(comm, ctx, &t.place(plan), &mut Bufs::InPlace(buf), Some(Reduction { dtype, op }), None)?;
    finalize(op, dtype, buf, n)
}

#[allow(clippy::too_many_arguments)]
fn reduce_impl(t: &Topo, comm: &mut Comm, ctx: &OpCtx, attempt: u32, buf: &mut [u8], root: usize, dtype: DType, op: ReduceOp) -> Result<()> {
    let (n, me, bytes, elem, chunk) = (t.m(), t.me(), buf.len(), dtype.size(), t.chunk);
    let root = dense_root(t, ctx, root)?;
    let plan = match select::rooted(t, Coll::Reduce, bytes) {
        RootedAlgo::Direct => algo::reduce_direct(n, me, root, bytes, elem, chunk),
        RootedAlgo::Pipelined => algo::reduce_rs_gather(n, me, root, bytes, elem, chunk),
        RootedAlgo::Hier(cross) => algo::reduce_hier(&t.layout(), me, root, bytes, elem, chunk, cross),
    };
    let plan = t.place(plan);
    let red = Some(Reduction { dtype, op });
    if me == root {
        guard_input(t, comm, attempt, buf);
        exec::run(comm, ctx, &plan, &mut Bufs::InPlace(buf), red, None)?;
        finalize(op, dtype, buf, n)
    } else {
        // Non-roots keep their input intact; partial results go to (reused) scratch.
        let mut scratch = std::mem::take(&mut comm.big_scratch);
        scratch.resize(bytes, 0);
        let r = exec::run(comm, ctx, &plan, &mut Bufs::Separate { input: buf, output: &mut scratch }, red, None);
        comm.big_scratch = scratch;
        r?;
        comm.drain(ctx)
    }
}

fn broadcast_impl(t: &Topo, comm: &mut Comm, ctx: &OpCtx, buf: &mut [u8], root: usize) -> Result<()> {
    let root = dense_root(t, ctx, root)?;
    let (n, me, bytes, chunk) = (t.m(), t.me(), buf.len(), t.chunk);
    let plan = match select::rooted(t, Coll::Broadcast, bytes) {
        RootedAlgo::Direct => algo::broadcast_direct(n, me, root, bytes, chunk),
        RootedAlgo::Pipelined => algo::broadcast_chain(n, me, root, bytes, chunk),
        RootedAlgo::Hier(cross) => algo::broadcast_hier(&t.layout(), me, root, bytes, chunk, cross),
    };
    exec::run(comm, ctx, &t.place(plan), &mut Bufs::InPlace(buf), None, None)?;
    comm.drain(ctx)
}

fn all_gather_impl(t: &Topo, comm: &mut Comm, ctx: &OpCtx, input: &[u8], output: &mut [u8]) -> Result<()> {
    let (n, me, block, chunk) = (t.m(), t.me(), input.len(), t.chunk);
    let plan = match select::blocks(t, Coll::AllGather, block) {
        BlocksAlgo::Direct => algo::all_gather_direct(n, me, block, chunk),
        BlocksAlgo::Ring => algo::all_gather_ring(n, me, block, chunk),
        BlocksAlgo::Hier => algo::all_gather_hier(&t.layout(), me, block, chunk),
    };
    if !t.full() {
        // Blocks of inactive ranks carry no data: zeros, on every rank alike.
        for r in (0..t.size).filter(|r| t.dense(*r).is_none()) {
            output[r * block..(r + 1) * block].fill(0);
        }
    }
    exec::run(comm, ctx, &t.place_blocks(plan, Buf::Output, block), &mut Bufs::Separate { input, output }, None, None)
}

#[allow(clippy::too_many_arguments)]
fn reduce_scatter_impl(t: &Topo, comm: &mut Comm, ctx: &OpCtx, input: &[u8], output: &mut [u8], dtype: DType, op: ReduceOp) -> Result<()> {
    let (n, me, block, elem, chunk) = (t.m(), t.me(), output.len(), dtype.size(), t.chunk);
    let plan = match select::blocks(t, Coll::ReduceScatter, block) {
        BlocksAlgo::Direct => algo::reduce_scatter_direct(n, me, block, elem, chunk),
        BlocksAlgo::Ring => algo::reduce_scatter_ring(n, me, block, elem, chunk),
        BlocksAlgo::Hier => algo::reduce_scatter_hier(&t.layout(), me, block, elem, chunk),
    };
    exec::run(comm, ctx, &t.place_blocks(plan, Buf::Input, block), &mut Bufs::Separate { input, output }, Some(Reduction { dtype, op }), None)?;
    finalize(op, dtype, output, t.m())
}

#[allow(clippy::too_many_arguments)]
fn all_to_all_impl(t: &Topo, comm: &mut Comm, ctx: &OpCtx, input: &[u8], output: &mut [u8], send: &[(usize, usize)], recv: &[(usize, usize)], check_totals: bool) -> Result<()> {
    if send[t.rank].1 != recv[t.rank].1 {
        // Checked here rather than before the collective is numbered, so that the peers, which
        // may wait for this rank's blocks, learn it from a probe instead of waiting for their
        // deadline, and every rank stays in step.
        let why = format!(
            "{}: rank {} sends {} bytes to itself but receives {} from itself; its own send and receive counts must be equal",
            ctx.name, t.rank, send[t.rank].1, recv[t.rank].1
        );
        let rejected = OpCtx { desc: OpDesc { kind: kind::REJECTED, ..ctx.desc }, ..ctx.clone() };
        for &p in t.members.iter().filter(|&&p| p != t.rank) {
            if let Err(e) = comm.probe(&rejected, p) {
                tracing::debug!(peer = p, error = %e, "telling a peer about rejected arguments failed");
            }
        }
        return Err(ChorusError::InvalidArgument(why));
    }
    // Splits keep their absolute offsets: only the members' blocks move.
    let send: Vec<(usize, usize)> = t.members.iter().map(|&r| send[r]).collect();
    let recv: Vec<(usize, usize)> = t.members.iter().map(|&r| recv[r]).collect();
    let plan = t.place(algo::all_to_all(t.m(), t.me(), &send, &recv, t.chunk));
    let mut st = vec![0u64; t.size];
    let mut rt = vec![0u64; t.size];
    for (i, &r) in t.members.iter().enumerate() {
        st[r] = send[i].1 as u64;
        rt[r] = recv[i].1 as u64;
    }
    let totals = check_totals.then_some((&st[..], &rt[..]));
    exec::run(comm, ctx, &plan, &mut Bufs::Separate { input, output }, None, totals)
}

fn gather_impl(t: &Topo, comm: &mut Comm, ctx: &OpCtx, input: &[u8], output: &mut [u8], root: usize) -> Result<()> {
    let root = dense_root(t, ctx, root)?;
    let block = input.len();
    if !t.full() && t.me() == root {
        // As in all_gather: blocks of inactive ranks are zeros.
        for r in (0..t.size).filter(|r| t.dense(*r).is_none()) {
            output[r * block..(r + 1) * block].fill(0);
        }
    }
    let plan = t.place_blocks(algo::gather(t.m(), t.me(), root, block, t.chunk), Buf::Output, block);
    exec::run(comm, ctx, &plan, &mut Bufs::Separate { input, output }, None, None)?;
    comm.drain(ctx)
}

fn scatter_impl(t: &Topo, comm: &mut Comm, ctx: &OpCtx, input: &[u8], output: &mut [u8], root: usize) -> Result<()> {
    let root = dense_root(t, ctx, root)?;
    let block = output.len();
    let plan = t.place_blocks(algo::scatter(t.m(), t.me(), root, block, t.chunk), Buf::Input, block);
    exec::run(comm, ctx, &plan, &mut Bufs::Separate { input, output }, None, None)?;
    comm.drain(ctx)
}

fn even_splits(n: usize, block: usize) -> Vec<(usize, usize)> {
    (0..n).map(|p| (p * block, block)).collect()
}

/// Byte `(offset, len)` of each rank's block for per-rank element counts, laid out consecutively;
/// an error when a length or the running offset does not fit in `usize`.
fn counts_to_splits(counts: &[usize], elem: usize, what: &str) -> Result<Vec<(usize, usize)>> {
    let mut off = 0usize;
    counts
        .iter()
        .map(|&c| {
            let len = c.checked_mul(elem);
            let end = len.and_then(|l| off.checked_add(l));
            match (len, end) {
                (Some(len), Some(end)) => {
                    let split = (off, len);
                    off = end;
                    Ok(split)
                }
                _ => Err(ChorusError::InvalidArgument(format!("all_to_all_v: the {what} counts overflow the address space ({counts:?} elements of {elem} bytes)"))),
            }
        })
        .collect()
}

impl ProcessGroup {
    // ---------------------------------------------------------------- all_reduce
    /// Reduces `buf` across all ranks; every rank gets the result.
    pub fn all_reduce<T: Element>(&self, buf: &mut [T], op: ReduceOp) -> Result<OpInfo> {
        self.all_reduce_raw(as_bytes_mut(buf), T::DTYPE, op)
    }

    /// [`ProcessGroup::all_reduce`] on bytes read as `dtype` elements; returns the operation's report.
    pub fn all_reduce_raw(&self, buf: &mut [u8], dtype: DType, op: ReduceOp) -> Result<OpInfo> {
        kernels::check_supported(dtype, op)?;
        elems(buf.len(), dtype, "all_reduce")?;
        self.run_blocking("all_reduce", reduction(kind::ALL_REDUCE, dtype, op, None, buf.len()), |c, x, t, a| all_reduce_impl(t, c, x, a, buf, dtype, op))
    }

    /// [`ProcessGroup::all_reduce`] on an owned buffer, queued: the [`Work`] gives it back.
    pub fn all_reduce_async<T: Element>(&self, buf: Vec<T>, op: ReduceOp) -> Work<Vec<T>> {
        self.all_reduce_async_raw(buf, T::DTYPE, op)
    }

    /// `all_reduce_async` over any owned buffer read as `dtype` elements.
    pub fn all_reduce_async_raw<B: OpBuffer>(&self, buf: B, dtype: DType, op: ReduceOp) -> Work<B> {
        self.all_reduce_issue(Mode::Queued, buf, dtype, op).into_work("all_reduce")
    }

    /// `all_reduce_async`, queued or run on the calling thread as `mode` says.
    pub fn all_reduce_issue<B: OpBuffer>(&self, mode: Mode, buf: B, dtype: DType, op: ReduceOp) -> Issued<B> {
        if let Err(e) = check_element_types("all_reduce", Some(dtype), &[buf.element_type()]) {
            return Issued::Returned(e, buf);
        }
        if let Err(e) = kernels::check_supported(dtype, op).map_err(ChorusError::from).and_then(|_| elems(buf.bytes().len(), dtype, "all_reduce")) {
            return Issued::Returned(e, buf);
        }
        let desc = reduction(kind::ALL_REDUCE, dtype, op, None, buf.bytes().len());
        self.issue_bufs(mode, "all_reduce", desc, buf, move |c, x, t, a, b| all_reduce_impl(t, c, x, a, b.bytes_mut(), dtype, op))
    }

    // ---------------------------------------------------------------- reduce
    /// Reduces `buf` across all ranks into `root`'s `buf` (other ranks' buffers are unchanged).
    pub fn reduce<T: Element>(&self, buf: &mut [T], root: usize, op: ReduceOp) -> Result<OpInfo> {
        self.reduce_raw(as_bytes_mut(buf), root, T::DTYPE, op)
    }

    /// [`ProcessGroup::reduce`] on bytes read as `dtype` elements; returns the operation's report.
    pub fn reduce_raw(&self, buf: &mut [u8], root: usize, dtype: DType, op: ReduceOp) -> Result<OpInfo> {
        kernels::check_supported(dtype, op)?;
        check_root(root, self.size())?;
        elems(buf.len(), dtype, "reduce")?;
        self.run_blocking("reduce", reduction(kind::REDUCE, dtype, op, Some(root), buf.len()), |c, x, t, a| reduce_impl(t, c, x, a, buf, root, dtype, op))
    }

    /// [`ProcessGroup::reduce`] on an owned buffer, queued: the [`Work`] gives it back.
    pub fn reduce_async<T: Element>(&self, buf: Vec<T>, root: usize, op: ReduceOp) -> Work<Vec<T>> {
        self.reduce_async_raw(buf, root, T::DTYPE, op)
    }

    /// `reduce_async` over any owned buffer read as `dtype` elements.
    pub fn reduce_async_raw<B: OpBuffer>(&self, buf: B, root: usize, dtype: DType, op: ReduceOp) -> Work<B> {
        self.reduce_issue(Mode::Queued, buf, root, dtype, op).into_work("reduce")
    }

    /// `reduce_async`, queued or run on the calling thread as `mode` says.
    pub fn reduce_issue<B: OpBuffer>(&self, mode: Mode, buf: B, root: usize, dtype: DType, op: ReduceOp) -> Issued<B> {
        if let Err(e) = check_element_types("reduce", Some(dtype), &[buf.element_type()]) {
            return Issued::Returned(e, buf);
        }
        let checked = kernels::check_supported(dtype, op)
            .map_err(ChorusError::from)
            .and_then(|_| check_root(root, self.size()))
            .and_then(|_| elems(buf.bytes().len(), dtype, "reduce"));
        if let Err(e) = checked {
            return Issued::Returned(e, buf);
        }
        let desc = reduction(kind::REDUCE, dtype, op, Some(root), buf.bytes().len());
        self.issue_bufs(mode, "reduce", desc, buf, move |c, x, t, a, b| reduce_impl(t, c, x, a, b.bytes_mut(), root, dtype, op))
    }

    // ---------------------------------------------------------------- broadcast
    /// Copies `root`'s `buf` into every rank's `buf`.
    /// Ranks must agree on `T` (as on the root and the length).
    pub fn broadcast<T: Element>(&self, buf: &mut [T], root: usize) -> Result<OpInfo> {
        self.broadcast_typed(as_bytes_mut(buf), Some(T::DTYPE), root)
    }

    /// The byte form: it agrees with a peer's call of any dtype of the same length in bytes.
    pub fn broadcast_raw(&self, buf: &mut [u8], root: usize) -> Result<OpInfo> {
        self.broadcast_typed(buf, None, root)
    }

    /// `broadcast_raw` for `dtype` elements (`None`: bytes), which every rank must pass alike.
    pub fn broadcast_typed(&self, buf: &mut [u8], dtype: Option<DType>, root: usize) -> Result<OpInfo> {
        check_root(root, self.size())?;
        whole(buf.len(), dtype, "broadcast")?;
        self.run_blocking("broadcast", movement(kind::BROADCAST, dtype, Some(root), buf.len()), |c, x, t, _| broadcast_impl(t, c, x, buf, root))
    }

    /// [`ProcessGroup::broadcast_raw`] on an owned buffer, queued: the [`Work`] gives it back.
    pub fn broadcast_async<B: OpBuffer>(&self, buf: B, root: usize) -> Work<B> {
        self.broadcast_issue(Mode::Queued, buf, None, root).into_work("broadcast")
    }

    /// `broadcast_async`, queued or run on the calling thread as `mode` says, over `dtype`
    /// elements (`None`: bytes).
    pub fn broadcast_issue<B: OpBuffer>(&self, mode: Mode, buf: B, dtype: Option<DType>, root: usize) -> Issued<B> {
        if let Err(e) = check_element_types("broadcast", dtype, &[buf.element_type()]) {
            return Issued::Returned(e, buf);
        }
        if let Err(e) = check_root(root, self.size()).and_then(|_| whole(buf.bytes().len(), dtype, "broadcast")) {
            return Issued::Returned(e, buf);
        }
        let desc = movement(kind::BROADCAST, dtype, Some(root), buf.bytes().len());
        self.issue_bufs(mode, "broadcast", desc, buf, move |c, x, t, _, b| broadcast_impl(t, c, x, b.bytes_mut(), root))
    }

    // ---------------------------------------------------------------- all_gather
    /// Concatenates every rank's `input` (rank order) into every rank's `output`
    /// (`output.len() == size * input.len()`).
    pub fn all_gather<T: Element>(&self, input: &[T], output: &mut [T]) -> Result<OpInfo> {
        self.all_gather_typed(as_bytes(input), as_bytes_mut(output), Some(T::DTYPE))
    }

    /// The byte form: it agrees with a peer's call of any dtype of the same length in bytes.
    pub fn all_gather_raw(&self, input: &[u8], output: &mut [u8]) -> Result<OpInfo> {
        self.all_gather_typed(input, output, None)
    }

    /// `all_gather_raw` for `dtype` elements (`None`: bytes), which every rank must pass alike.
    pub fn all_gather_typed(&self, input: &[u8], output: &mut [u8], dtype: Option<DType>) -> Result<OpInfo> {
        self.check_gather_sizes("all_gather", input.len(), output.len())?;
        whole(input.len(), dtype, "all_gather")?;
        self.run_blocking("all_gather", movement(kind::ALL_GATHER, dtype, None, input.len()), |c, x, t, _| all_gather_impl(t, c, x, input, output))
    }

    /// List form: `outputs[r]` receives rank `r`'s input.
    pub fn all_gather_list<T: Element>(&self, input: &[T], outputs: &mut [&mut [T]]) -> Result<OpInfo> {
        if outputs.len() != self.size() || outputs.iter().any(|o| o.len() != input.len()) {
            return Err(ChorusError::InvalidArgument(format!(
                "all_gather: expected {} output buffers of {} elements each, got {} buffers",
                self.size(),
                input.len(),
                outputs.len()
            )));
        }
        let mut flat = vec![0u8; std::mem::size_of_val(input) * self.size()];
        let info = self.all_gather_raw(as_bytes(input), &mut flat)?;
        let block = std::mem::size_of_val(input);
        for (r, o) in outputs.iter_mut().enumerate() {
            as_bytes_mut(o).copy_from_slice(&flat[r * block..(r + 1) * block]);
        }
        Ok(info)
    }

    /// [`ProcessGroup::all_gather_raw`] on owned buffers, queued: the [`Work`] gives them back.
    pub fn all_gather_async<I: OpBuffer, O: OpBuffer>(&self, input: I, output: O) -> Work<(I, O)> {
        self.all_gather_issue(Mode::Queued, input, output, None).into_work("all_gather")
    }

    /// `all_gather_async`, queued or run on the calling thread as `mode` says, over `dtype`
    /// elements (`None`: bytes).
    pub fn all_gather_issue<I: OpBuffer, O: OpBuffer>(&self, mode: Mode, input: I, output: O, dtype: Option<DType>) -> Issued<(I, O)> {
        if let Err(e) = check_element_types("all_gather", dtype, &[input.element_type(), output.element_type()]) {
            return Issued::Returned(e, (input, output));
        }
        let len = input.bytes().len();
        if let Err(e) = self.check_gather_sizes("all_gather", len, output.bytes().len()).and_then(|_| whole(len, dtype, "all_gather")) {
            return Issued::Returned(e, (input, output));
        }
        self.issue_bufs(mode, "all_gather", movement(kind::ALL_GATHER, dtype, None, len), (input, output), move |c, x, t, _, (i, o)| all_gather_impl(t, c, x, i.bytes(), o.bytes_mut()))
    }

    fn check_gather_sizes(&self, op: &str, block: usize, total: usize) -> Result<()> {
        let n = self.size();
        if block.checked_mul(n) != Some(total) {
            return Err(ChorusError::InvalidArgument(format!(
                "{op}: the gathered buffer has {total} bytes but must have {n} ranks x {block} bytes"
            )));
        }
        Ok(())
    }

    // ---------------------------------------------------------------- reduce_scatter
    /// Reduces `input` (`size` blocks) across ranks; rank `r` gets block `r` in `output`.
    pub fn reduce_scatter<T: Element>(&self, input: &[T], output: &mut [T], op: ReduceOp) -> Result<OpInfo> {
        self.reduce_scatter_raw(as_bytes(input), as_bytes_mut(output), T::DTYPE, op)
    }

    /// [`ProcessGroup::reduce_scatter`] on bytes read as `dtype` elements; returns the
    /// operation's report.
    pub fn reduce_scatter_raw(&self, input: &[u8], output: &mut [u8], dtype: DType, op: ReduceOp) -> Result<OpInfo> {
        kernels::check_supported(dtype, op)?;
        self.check_gather_sizes("reduce_scatter", output.len(), input.len())?;
        elems(output.len(), dtype, "reduce_scatter")?;
        self.run_blocking("reduce_scatter", reduction(kind::REDUCE_SCATTER, dtype, op, None, output.len()), |c, x, t, _| {
            reduce_scatter_impl(t, c, x, input, output, dtype, op)
        })
    }

    /// List form: `inputs[r]` is the block reduced into rank `r`'s output.
    pub fn reduce_scatter_list<T: Element>(&self, inputs: &[&[T]], output: &mut [T], op: ReduceOp) -> Result<OpInfo> {
        if inputs.len() != self.size() || inputs.iter().any(|i| i.len() != output.len()) {
            return Err(ChorusError::InvalidArgument(format!(
                "reduce_scatter: expected {} input buffers of {} elements each, got {} buffers",
                self.size(),
                output.len(),
                inputs.len()
            )));
        }
        let flat: Vec<u8> = inputs.iter().flat_map(|i| as_bytes(i).iter().copied()).collect();
        self.reduce_scatter_raw(&flat, as_bytes_mut(output), T::DTYPE, op)
    }

    /// [`ProcessGroup::reduce_scatter`] on owned buffers, queued: the [`Work`] gives them back.
    pub fn reduce_scatter_async<T: Element>(&self, input: Vec<T>, output: Vec<T>, op: ReduceOp) -> Work<(Vec<T>, Vec<T>)> {
        self.reduce_scatter_async_raw(input, output, T::DTYPE, op)
    }

    /// `reduce_scatter_async` over any owned buffers read as `dtype` elements.
    pub fn reduce_scatter_async_raw<I: OpBuffer, O: OpBuffer>(&self, input: I, output: O, dtype: DType, op: ReduceOp) -> Work<(I, O)> {
        self.reduce_scatter_issue(Mode::Queued, input, output, dtype, op).into_work("reduce_scatter")
    }

    /// `reduce_scatter_async`, queued or run on the calling thread as `mode` says.
    pub fn reduce_scatter_issue<I: OpBuffer, O: OpBuffer>(&self, mode: Mode, input: I, output: O, dtype: DType, op: ReduceOp) -> Issued<(I, O)> {
        if let Err(e) = check_element_types("reduce_scatter", Some(dtype), &[input.element_type(), output.element_type()]) {
            return Issued::Returned(e, (input, output));
        }
        let checked = kernels::check_supported(dtype, op)
            .map_err(ChorusError::from)
            .and_then(|_| self.check_gather_sizes("reduce_scatter", output.bytes().len(), input.bytes().len()))
            .and_then(|_| elems(output.bytes().len(), dtype, "reduce_scatter"));
        if let Err(e) = checked {
            return Issued::Returned(e, (input, output));
        }
        let desc = reduction(kind::REDUCE_SCATTER, dtype, op, None, output.bytes().len());
        self.issue_bufs(mode, "reduce_scatter", desc, (input, output), move |c, x, t, _, (i, o)| {
            reduce_scatter_impl(t, c, x, i.bytes(), o.bytes_mut(), dtype, op)
        })
    }

    // ---------------------------------------------------------------- all_to_all
    /// Equal splits: block `p` of `input` goes to rank `p`; block `p` of `output` comes from `p`.
    pub fn all_to_all<T: Element>(&self, input: &[T], output: &mut [T]) -> Result<OpInfo> {
        self.all_to_all_typed(as_bytes(input), as_bytes_mut(output), Some(T::DTYPE))
    }

    /// The byte form: it agrees with a peer's call of any dtype of the same length in bytes.
    pub fn all_to_all_raw(&self, input: &[u8], output: &mut [u8]) -> Result<OpInfo> {
        self.all_to_all_typed(input, output, None)
    }

    /// `all_to_all_raw` for `dtype` elements (`None`: bytes), which every rank must pass alike.
    pub fn all_to_all_typed(&self, input: &[u8], output: &mut [u8], dtype: Option<DType>) -> Result<OpInfo> {
        let block = self.check_all_to_all(input.len(), output.len())?;
        whole(block, dtype, "all_to_all")?;
        let splits = even_splits(self.size(), block);
        self.run_blocking("all_to_all", movement(kind::ALL_TO_ALL, dtype, None, input.len()), |c, x, t, _| all_to_all_impl(t, c, x, input, output, &splits, &splits, false))
    }

    fn check_all_to_all(&self, input: usize, output: usize) -> Result<usize> {
        let n = self.size();
        if input != output || !input.is_multiple_of(n) {
            return Err(ChorusError::InvalidArgument(format!(
                "all_to_all: input ({input} bytes) and output ({output} bytes) must be equal and divisible by the group size {n}"
            )));
        }
        Ok(input / n)
    }

    /// Uneven splits (like torch's `all_to_all_single`): `send_counts[p]` elements of `input`
    /// go to rank `p` (consecutively), `recv_counts[p]` elements from `p` land in `output`.
    pub fn all_to_all_v<T: Element>(&self, input: &[T], send_counts: &[usize], output: &mut [T], recv_counts: &[usize]) -> Result<OpInfo> {
        self.all_to_all_v_raw(as_bytes(input), send_counts, as_bytes_mut(output), recv_counts, T::DTYPE)
    }

    /// [`ProcessGroup::all_to_all_v`] on bytes read as `dtype` elements (counts in elements, not
    /// bytes); returns the operation's report.
    pub fn all_to_all_v_raw(&self, input: &[u8], send_counts: &[usize], output: &mut [u8], recv_counts: &[usize], dtype: DType) -> Result<OpInfo> {
        let (send, recv) = self.all_to_all_v_splits(input.len(), send_counts, output.len(), recv_counts, dtype, false)?;
        self.run_blocking("all_to_all_v", movement(kind::ALL_TO_ALL_V, Some(dtype), None, 0), |c, x, t, _| all_to_all_impl(t, c, x, input, output, &send, &recv, true))
    }

    /// Checks `all_to_all_v`'s counts and turns them into byte splits. Every sum and product is
    /// checked (counts come from callers and from the C ABI), and a rank's block to itself must
    /// have the same length as its block from itself: the plan copies one into the other. Used by
    /// the device path (`cuda`).
    #[cfg(feature = "cuda")]
    #[allow(clippy::type_complexity)]
    pub(super) fn check_all_to_all_v(&self, input: usize, send_counts: &[usize], output: usize, recv_counts: &[usize], dtype: DType) -> Result<(Vec<(usize, usize)>, Vec<(usize, usize)>)> {
        self.all_to_all_v_splits(input, send_counts, output, recv_counts, dtype, true)
    }

    /// `check_all_to_all_v`; with `check_self` false, the block to itself is left to the
    /// collective (`all_to_all_impl`), which tells the peers.
    #[allow(clippy::type_complexity)]
    fn all_to_all_v_splits(&self, input: usize, send_counts: &[usize], output: usize, recv_counts: &[usize], dtype: DType, check_self: bool) -> Result<(Vec<(usize, usize)>, Vec<(usize, usize)>)> {
        let n = self.size();
        let e = dtype.size();
        if send_counts.len() != n || recv_counts.len() != n {
            return Err(ChorusError::InvalidArgument(format!("all_to_all_v: need {n} send and recv counts, got {} and {}", send_counts.len(), recv_counts.len())));
        }
        let me = self.rank();
        if check_self && send_counts[me] != recv_counts[me] {
            return Err(ChorusError::InvalidArgument(format!(
                "all_to_all_v: rank {me} sends {} elements to itself but receives {} from itself; its own send and receive counts must be equal",
                send_counts[me], recv_counts[me]
            )));
        }
        let send = counts_to_splits(send_counts, e, "send")?;
        let recv = counts_to_splits(recv_counts, e, "recv")?;
        let (s, r) = (send.last().map_or(0, |b| b.0 + b.1), recv.last().map_or(0, |b| b.0 + b.1));
        if s > input || r > output {
            return Err(ChorusError::InvalidArgument(format!(
                "all_to_all_v: counts need {s} input and {r} output bytes but the buffers have {input} and {output}"
            )));
        }
        Ok((send, recv))
    }

    /// [`ProcessGroup::all_to_all_raw`] on owned buffers, queued: the [`Work`] gives them back.
    pub fn all_to_all_async<I: OpBuffer, O: OpBuffer>(&self, input: I, output: O) -> Work<(I, O)> {
        self.all_to_all_issue(Mode::Queued, input, output, None).into_work("all_to_all")
    }

    /// `all_to_all_async`, queued or run on the calling thread as `mode` says, over `dtype`
    /// elements (`None`: bytes).
    pub fn all_to_all_issue<I: OpBuffer, O: OpBuffer>(&self, mode: Mode, input: I, output: O, dtype: Option<DType>) -> Issued<(I, O)> {
        if let Err(e) = check_element_types("all_to_all", dtype, &[input.element_type(), output.element_type()]) {
            return Issued::Returned(e, (input, output));
        }
        let block = match self.check_all_to_all(input.bytes().len(), output.bytes().len()).and_then(|b| whole(b, dtype, "all_to_all").map(|_| b)) {
            Ok(b) => b,
            Err(e) => return Issued::Returned(e, (input, output)),
        };
        let desc = movement(kind::ALL_TO_ALL, dtype, None, input.bytes().len());
        let splits = even_splits(self.size(), block);
        self.issue_bufs(mode, "all_to_all", desc, (input, output), move |c, x, t, _, (i, o)| {
            all_to_all_impl(t, c, x, i.bytes(), o.bytes_mut(), &splits, &splits, false)
        })
    }

    /// [`ProcessGroup::all_to_all_v`] on owned buffers (counts in elements), queued: the
    /// [`Work`] gives them back.
    pub fn all_to_all_v_async<T: Element>(&self, input: Vec<T>, send_counts: Vec<usize>, output: Vec<T>, recv_counts: Vec<usize>) -> Work<(Vec<T>, Vec<T>)> {
        self.all_to_all_v_async_raw(input, send_counts, output, recv_counts, T::DTYPE)
    }

    /// `all_to_all_v_async` over any owned buffers, counts in `dtype` elements.
    pub fn all_to_all_v_async_raw<I: OpBuffer, O: OpBuffer>(&self, input: I, send_counts: Vec<usize>, output: O, recv_counts: Vec<usize>, dtype: DType) -> Work<(I, O)> {
        self.all_to_all_v_issue(Mode::Queued, input, send_counts, output, recv_counts, dtype).into_work("all_to_all_v")
    }

    /// `all_to_all_v_async`, queued or run on the calling thread as `mode` says.
    pub fn all_to_all_v_issue<I: OpBuffer, O: OpBuffer>(&self, mode: Mode, input: I, send_counts: Vec<usize>, output: O, recv_counts: Vec<usize>, dtype: DType) -> Issued<(I, O)> {
        if let Err(e) = check_element_types("all_to_all_v", Some(dtype), &[input.element_type(), output.element_type()]) {
            return Issued::Returned(e, (input, output));
        }
        let (send, recv) = match self.all_to_all_v_splits(input.bytes().len(), &send_counts, output.bytes().len(), &recv_counts, dtype, false) {
            Ok(s) => s,
            Err(e) => return Issued::Returned(e, (input, output)),
        };
        self.issue_bufs(mode, "all_to_all_v", movement(kind::ALL_TO_ALL_V, Some(dtype), None, 0), (input, output), move |c, x, t, _, (i, o)| {
            all_to_all_impl(t, c, x, i.bytes(), o.bytes_mut(), &send, &recv, true)
        })
    }

    // ---------------------------------------------------------------- gather / scatter
    /// Every rank's `input` lands in `root`'s `output` (rank order); `output` is ignored elsewhere.
    pub fn gather<T: Element>(&self, input: &[T], output: &mut [T], root: usize) -> Result<OpInfo> {
        self.gather_typed(as_bytes(input), as_bytes_mut(output), Some(T::DTYPE), root)
    }

    /// The byte form: it agrees with a peer's call of any dtype of the same length in bytes.
    pub fn gather_raw(&self, input: &[u8], output: &mut [u8], root: usize) -> Result<OpInfo> {
        self.gather_typed(input, output, None, root)
    }

    /// `gather_raw` for `dtype` elements (`None`: bytes), which every rank must pass alike.
    pub fn gather_typed(&self, input: &[u8], output: &mut [u8], dtype: Option<DType>, root: usize) -> Result<OpInfo> {
        check_root(root, self.size())?;
        whole(input.len(), dtype, "gather")?;
        let out_len = if self.rank() == root {
            self.check_gather_sizes("gather", input.len(), output.len())?;
            output.len()
        } else {
            0
        };
        self.run_blocking("gather", movement(kind::GATHER, dtype, Some(root), input.len()), |c, x, t, _| gather_impl(t, c, x, input, &mut output[..out_len], root))
    }

    /// [`ProcessGroup::gather_raw`] on owned buffers, queued: the [`Work`] gives them back
    /// (`output` is filled on `root` only).
    pub fn gather_async<I: OpBuffer, O: OpBuffer>(&self, input: I, output: O, root: usize) -> Work<(I, O)> {
        self.gather_issue(Mode::Queued, input, output, None, root).into_work("gather")
    }

    /// `gather_async`, queued or run on the calling thread as `mode` says, over `dtype` elements
    /// (`None`: bytes).
    pub fn gather_issue<I: OpBuffer, O: OpBuffer>(&self, mode: Mode, input: I, output: O, dtype: Option<DType>, root: usize) -> Issued<(I, O)> {
        if let Err(e) = check_element_types("gather", dtype, &[input.element_type(), output.element_type()]) {
            return Issued::Returned(e, (input, output));
        }
        let me = self.rank();
        let check = check_root(root, self.size()).and_then(|_| whole(input.bytes().len(), dtype, "gather")).and_then(|_| {
            if me == root {
                self.check_gather_sizes("gather", input.bytes().len(), output.bytes().len())
            } else {
                Ok(())
            }
        });
        if let Err(e) = check {
            return Issued::Returned(e, (input, output));
        }
        let desc = movement(kind::GATHER, dtype, Some(root), input.bytes().len());
        self.issue_bufs(mode, "gather", desc, (input, output), move |c, x, t, _, (i, o)| {
            let out = o.bytes_mut();
            let out = if me == root { out } else { &mut out[..0] };
            gather_impl(t, c, x, i.bytes(), out, root)
        })
    }

    /// `root`'s `input` (`size` blocks) is split so rank `r` gets block `r` in `output`.
    pub fn scatter<T: Element>(&self, input: &[T], output: &mut [T], root: usize) -> Result<OpInfo> {
        self.scatter_typed(as_bytes(input), as_bytes_mut(output), Some(T::DTYPE), root)
    }

    /// The byte form: it agrees with a peer's call of any dtype of the same length in bytes.
    pub fn scatter_raw(&self, input: &[u8], output: &mut [u8], root: usize) -> Result<OpInfo> {
        self.scatter_typed(input, output, None, root)
    }

    /// `scatter_raw` for `dtype` elements (`None`: bytes), which every rank must pass alike.
    pub fn scatter_typed(&self, input: &[u8], output: &mut [u8], dtype: Option<DType>, root: usize) -> Result<OpInfo> {
        check_root(root, self.size())?;
        whole(output.len(), dtype, "scatter")?;
        let in_len = if self.rank() == root {
            self.check_gather_sizes("scatter", output.len(), input.len())?;
            input.len()
        } else {
            0
        };
        self.run_blocking("scatter", movement(kind::SCATTER, dtype, Some(root), output.len()), |c, x, t, _| scatter_impl(t, c, x, &input[..in_len], output, root))
    }

    /// [`ProcessGroup::scatter_raw`] on owned buffers, queued: the [`Work`] gives them back
    /// (`input` is read on `root` only).
    pub fn scatter_async<I: OpBuffer, O: OpBuffer>(&self, input: I, output: O, root: usize) -> Work<(I, O)> {
        self.scatter_issue(Mode::Queued, input, output, None, root).into_work("scatter")
    }

    /// `scatter_async`, queued or run on the calling thread as `mode` says, over `dtype` elements
    /// (`None`: bytes).
    pub fn scatter_issue<I: OpBuffer, O: OpBuffer>(&self, mode: Mode, input: I, output: O, dtype: Option<DType>, root: usize) -> Issued<(I, O)> {
        if let Err(e) = check_element_types("scatter", dtype, &[input.element_type(), output.element_type()]) {
            return Issued::Returned(e, (input, output));
        }
        let me = self.rank();
        let check = check_root(root, self.size()).and_then(|_| whole(output.bytes().len(), dtype, "scatter")).and_then(|_| {
            if me == root {
                self.check_gather_sizes("scatter", output.bytes().len(), input.bytes().len())
            } else {
                Ok(())
            }
        });
        if let Err(e) = check {
            return Issued::Returned(e, (input, output));
        }
        let desc = movement(kind::SCATTER, dtype, Some(root), output.bytes().len());
        self.issue_bufs(mode, "scatter", desc, (input, output), move |c, x, t, _, (i, o)| {
            let inp = if me == root { i.bytes() } else { &i.bytes()[..0] };
            scatter_impl(t, c, x, inp, o.bytes_mut(), root)
        })
    }

    // ---------------------------------------------------------------- barrier
    /// Returns once every rank has entered the barrier.
    pub fn barrier(&self) -> Result<OpInfo> {
        self.run_blocking("barrier", movement(kind::BARRIER, None, None, 0), |c, x, t, _| {
            let plan = t.place(algo::barrier(t.m(), t.me()));
            exec::run(c, x, &plan, &mut Bufs::InPlace(&mut []), None, None)
        })
    }

    /// [`ProcessGroup::barrier`], queued: the [`Work`] completes once every rank entered it.
    pub fn barrier_async(&self) -> Work<()> {
        self.barrier_issue(Mode::Queued).into_work("barrier")
    }

    /// `barrier_async`, queued or run on the calling thread as `mode` says.
    pub fn barrier_issue(&self, mode: Mode) -> Issued<()> {
        self.issue_bufs(mode, "barrier", movement(kind::BARRIER, None, None, 0), (), move |c, x, t, _, _| {
            let plan = t.place(algo::barrier(t.m(), t.me()));
            exec::run(c, x, &plan, &mut Bufs::InPlace(&mut []), None, None)
        })
    }
}
