//! Interprets a plan's steps over a [`Comm`].
use super::comm::{Comm, OpCtx};
use crate::algo::{Buf, Plan, Range, Step};
use crate::error::Result;
use crate::transport::Payload;
use chorus_kernels::{self as kernels, DType, ReduceOp};

/// The operation's memory: separate input and output, or one buffer for both.
pub enum Bufs<'a> {
    Separate { input: &'a [u8], output: &'a mut [u8] },
    InPlace(&'a mut [u8]),
}

impl<'a> Bufs<'a> {
    fn read(&self, r: Range) -> &[u8] {
        match (self, r.buf) {
            (Bufs::Separate { input, .. }, Buf::Input) => &input[r.off..r.end()],
            (Bufs::Separate { output, .. }, Buf::Output) => &output[r.off..r.end()],
            (Bufs::InPlace(b), _) => &b[r.off..r.end()],
        }
    }

    fn write(&mut self, r: Range) -> &mut [u8] {
        match (self, r.buf) {
            (Bufs::Separate { output, .. }, Buf::Output) => &mut output[r.off..r.end()],
            (Bufs::InPlace(b), _) => &mut b[r.off..r.end()],
            (Bufs::Separate { .. }, Buf::Input) => panic!("plan writes into the input buffer"),
        }
    }

    /// Whether two ranges name the same memory.
    fn same(&self, a: Range, b: Range) -> bool {
        a.off == b.off && (a.buf == b.buf || matches!(self, Bufs::InPlace(_)))
    }

    /// Separate borrows of a source and a destination range that do not overlap in memory.
    fn split(&mut self, src: Range, dst: Range) -> Option<(&[u8], &mut [u8])> {
        match self {
            Bufs::Separate { input, output } => match (src.buf, dst.buf) {
                (Buf::Input, Buf::Output) => Some((&input[src.off..src.end()], &mut output[dst.off..dst.end()])),
                _ => None,
            },
            Bufs::InPlace(_) => None,
        }
    }
}

/// The reduction an operation applies (AVG reduces as SUM; the caller divides once at the end).
#[derive(Clone, Copy, Debug)]
pub struct Reduction {
    pub dtype: DType,
    pub op: ReduceOp,
}

fn reduction(r: Option<Reduction>) -> Reduction {
    r.expect("plan reduces but the operation has no reduction")
}

/// Runs `plan`; `totals` optionally gives, per peer, the message size this rank sends/expects
/// (all-to-all with uneven splits), checked against the sender's header.
pub fn run(comm: &mut Comm, ctx: &OpCtx, plan: &Plan, bufs: &mut Bufs<'_>, red: Option<Reduction>, totals: Option<(&[u64], &[u64])>) -> Result<()> {
    let tasks = super::tasks::tasks_for(plan, comm.n, comm.me, ctx.op_seq, &comm.members);
    tracing::debug!(op = ctx.name, seq = ctx.op_seq, ?tasks, steps = plan.steps.len(), "running plan");
    comm.tasks = tasks;
    let send_total = |to: usize| totals.map(|t| t.0[to]).unwrap_or(0);
    let recv_total = |from: usize| totals.map(|t| t.1[from]);
    for step in &plan.steps {
        match step {
            Step::Send { to, src } => {
                let data = bufs.read(*src);
                comm.send(ctx, *to, send_total(*to), data.len(), Payload::Bytes(data))?;
            }
            Step::Recv { from, dst } => {
                let seq = comm.next_chunk(ctx, *from, dst.len, recv_total(*from))?;
                let link = comm.link(*from)?;
                bufs.write(*dst).copy_from_slice(link.inbound(comm.stream).payload(seq, dst.len));
                comm.release(*from, seq)?;
            }
            Step::RecvReduce { from, local, dst } => {
                let r = reduction(red);
                let mut seqs = Vec::with_capacity(from.len());
                for &f in from {
                    let seq = comm.next_chunk(ctx, f, dst.len, recv_total(f))?;
                    seqs.push(seq);
                }
                let links = from.iter().map(|&f| comm.link(f)).collect::<Result<Vec<_>>>()?;
                let chunks: Vec<&[u8]> = links.iter().zip(&seqs).map(|(l, &s)| l.inbound(comm.stream).payload(s, dst.len)).collect();
                if order_sensitive(r) {
                    // Sum every contribution in rank order so all ranks round identically.
                    let mut mine = std::mem::take(&mut comm.scratch);
                    mine.clear();
                    mine.extend_from_slice(bufs.read(*local));
                    let at = from.iter().filter(|&&f| f < comm.me).count();
                    let mut srcs: Vec<&[u8]> = chunks.clone();
                    srcs.insert(at, &mine);
                    let res = kernels::reduce_into(r.dtype, r.op, bufs.write(*dst), &srcs);
                    drop(srcs);
                    comm.scratch = mine;
                    res?;
                } else {
                    reduce_step(bufs, r, *local, *dst, &chunks)?;
                }
                for (&f, &s) in from.iter().zip(&seqs) {
                    comm.release(f, s)?;
                }
            }
            Step::RecvCopySend { from, to, dst } => {
                let seq = comm.next_chunk(ctx, *from, dst.len, recv_total(*from))?;
                let link = comm.link(*from)?;
                let chunk = link.inbound(comm.stream).payload(seq, dst.len);
                for &t in to {
                    comm.send(ctx, t, send_total(t), chunk.len(), Payload::Bytes(chunk))?;
                }
                bufs.write(*dst).copy_from_slice(chunk);
                comm.release(*from, seq)?;
            }
            Step::RecvReduceSend { from, to, local, dst } => {
                let r = reduction(red);
                let seq = comm.next_chunk(ctx, *from, local.len, recv_total(*from))?;
                let link = comm.link(*from)?;
                let chunk = link.inbound(comm.stream).payload(seq, local.len);
                match dst {
                    Some(d) => {
                        reduce_step(bufs, r, *local, *d, &[chunk])?;
                        let data = bufs.read(*d);
                        comm.send(ctx, *to, send_total(*to), data.len(), Payload::Bytes(data))?;
                    }
                    None => {
                        let mine = bufs.read(*local);
                        let mut failed = None;
                        let mut reduce = |out: &mut [u8]| {
                            if let Err(e) = kernels::reduce_into(r.dtype, r.op, out, &[mine, chunk]) {
                                failed = Some(e);
                            }
                        };
                        comm.send(ctx, *to, send_total(*to), mine.len(), Payload::Fill(&mut reduce))?;
                        if let Some(e) = failed {
                            return Err(e.into());
                        }
                    }
                }
                comm.release(*from, seq)?;
            }
            Step::Copy { src, dst } => copy_step(bufs, *src, *dst),
        }
    }
    Ok(())
}

/// Floating-point sums and products depend on the order of operands.
fn order_sensitive(r: Reduction) -> bool {
    r.dtype.is_float() && matches!(r.op, ReduceOp::Sum | ReduceOp::Prod | ReduceOp::Avg)
}

fn copy_step(bufs: &mut Bufs<'_>, src: Range, dst: Range) {
    if bufs.same(src, dst) {
        return;
    }
    if let Some((s, d)) = bufs.split(src, dst) {
        d.copy_from_slice(s);
        return;
    }
    let tmp = bufs.read(src).to_vec();
    bufs.write(dst).copy_from_slice(&tmp);
}

fn reduce_step(bufs: &mut Bufs<'_>, r: Reduction, local: Range, dst: Range, chunks: &[&[u8]]) -> Result<()> {
    if bufs.same(local, dst) {
        kernels::reduce_accumulate(r.dtype, r.op, bufs.write(dst), chunks)?;
    } else if let Some((l, d)) = bufs.split(local, dst) {
        let mut srcs = Vec::with_capacity(chunks.len() + 1);
        srcs.push(l);
        srcs.extend_from_slice(chunks);
        kernels::reduce_into(r.dtype, r.op, d, &srcs)?;
    } else {
        let tmp = bufs.read(local).to_vec();
        let mut srcs = Vec::with_capacity(chunks.len() + 1);
        srcs.push(&tmp[..]);
        srcs.extend_from_slice(chunks);
        kernels::reduce_into(r.dtype, r.op, bufs.write(dst), &srcs)?;
    }
    Ok(())
}
