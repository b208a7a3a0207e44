//! One benchmark case per (collective, size): buffers, one iteration, refill and verification.
use crate::pattern::{self, count_wrong_bytes, count_wrong_tiled, fill_bytes, tile};
use chorus_backend::{ChorusError, DType, ProcessGroup, ReduceOp};

/// What a row reports besides its timing.
pub struct Shape {
    /// Total bytes of the row (nccl-tests "size").
    pub size: u64,
    /// Element count printed in the "count" column (per-rank block for block collectives).
    pub count: u64,
    pub busbw_factor: f64,
    pub reduces: bool,
    pub rooted: bool,
}

/// The busbw factor and shape of `coll` for a requested size, or `None` if the row is empty.
pub fn shape(coll: &str, bytes: u64, esz: usize, n: usize) -> Option<Shape> {
    let nf = n as f64;
    let esz = esz as u64;
    let (elems_total, count, factor, reduces, rooted) = match coll {
        "all_reduce" => {
            let c = bytes / esz;
            (c, c, 2.0 * (nf - 1.0) / nf, true, false)
        }
        "broadcast" | "reduce" => {
            let c = bytes / esz;
            (c, c, 1.0, coll == "reduce", true)
        }
        "sendrecv" => {
            let c = bytes / esz;
            (c, c, 1.0, false, false)
        }
        "all_gather" | "reduce_scatter" | "all_to_all" | "gather" | "scatter" => {
            let block = bytes / esz / n as u64;
            (block * n as u64, block, (nf - 1.0) / nf, coll == "reduce_scatter", matches!(coll, "gather" | "scatter"))
        }
        "barrier" => return Some(Shape { size: 0, count: 0, busbw_factor: 0.0, reduces: false, rooted: false }),
        _ => return None,
    };
    if count == 0 {
        return None;
    }
    Some(Shape { size: elems_total * esz, count, busbw_factor: factor, reduces, rooted })
}

pub struct Case<'a> {
    pg: &'a ProcessGroup,
    coll: &'static str,
    dtype: DType,
    op: ReduceOp,
    root: usize,
    n: usize,
    me: usize,
    esz: usize,
    /// Per-rank block bytes for block collectives, buffer bytes otherwise.
    block: usize,
    a: AlignedBuf,
    b: AlignedBuf,
    /// Reductions: this rank's input period and the expected result period.
    in_period: Vec<u8>,
    exp_period: Vec<u8>,
}

impl<'a> Case<'a> {
    pub fn new(pg: &'a ProcessGroup, coll: &'static str, dtype: DType, op: ReduceOp, root: usize, shape: &Shape) -> Case<'a> {
        let (n, me, esz) = (pg.size(), pg.rank(), dtype.size());
        let total = shape.size as usize;
        let block = match coll {
            "all_gather" | "reduce_scatter" | "all_to_all" | "gather" | "scatter" => total / n,
            _ => total,
        };
        let (a_len, b_len) = match coll {
            "all_reduce" | "broadcast" | "reduce" => (total, 0),
            "sendrecv" => (total, total),
            "all_gather" => (block, total),
            "reduce_scatter" => (total, block),
            "all_to_all" => (total, total),
            "gather" => (block, if me == root { total } else { 0 }),
            "scatter" => (if me == root { total } else { 0 }, block),
            _ => (0, 0),
        };
        let (in_period, exp_period) = if shape.reduces {
            (pattern::reduce_input_period(dtype, op, n, me), pattern::reduce_expected_period(dtype, op, n))
        } else {
            (Vec::new(), Vec::new())
        };
        let mut c = Case { pg, coll, dtype, op, root, n, me, esz, block, a: AlignedBuf::new(a_len), b: AlignedBuf::new(b_len), in_period, exp_period };
        c.fill();
        c
    }

    /// (Re)fills the inputs (and poisons the outputs) with this rank's pattern.
    pub fn fill(&mut self) {
        let (me, esz) = (self.me, self.esz);
        match self.coll {
            "all_reduce" | "reduce" | "reduce_scatter" => tile(&mut self.a, &self.in_period, esz, 0),
            "broadcast" => fill_bytes(&mut self.a, me, if me == self.root { 0 } else { 7 }),
            "sendrecv" | "all_gather" | "gather" => fill_bytes(&mut self.a, me, 0),
            "all_to_all" | "scatter" if !self.a.is_empty() => {
                for (p, blk) in self.a.chunks_mut(self.block).enumerate() {
                    fill_bytes(blk, me, p);
                }
            }
            _ => {}
        }
        // Poison outputs so stale data is never mistaken for a result.
        self.b.fill(0xa5);
    }

    /// One iteration of the collective.
    pub fn run(&mut self) -> Result<(), ChorusError> {
        let pg = self.pg;
        let done = match self.coll {
            "all_reduce" => pg.all_reduce_raw(&mut self.a, self.dtype, self.op),
            "reduce" => pg.reduce_raw(&mut self.a, self.root, self.dtype, self.op),
            "broadcast" => pg.broadcast_raw(&mut self.a, self.root),
            "all_gather" => pg.all_gather_raw(&self.a, &mut self.b),
            "reduce_scatter" => pg.reduce_scatter_raw(&self.a, &mut self.b, self.dtype, self.op),
            "all_to_all" => pg.all_to_all_raw(&self.a, &mut self.b),
            "gather" => pg.gather_raw(&self.a, &mut self.b, self.root),
            "scatter" => pg.scatter_raw(&self.a, &mut self.b, self.root),
            "barrier" => pg.barrier(),
            "sendrecv" => {
                let next = (self.me + 1) % self.n;
                let prev = (self.me + self.n - 1) % self.n;
                let s = pg.send_async(std::mem::take(&mut self.a), next, 0);
                let r = pg.recv_async(std::mem::take(&mut self.b), prev, 0);
                let (rs, ss) = (r.wait(), s.wait());
                self.a = ss?;
                self.b = rs?;
                return Ok(());
            }
            other => Err(ChorusError::InvalidArgument(format!("unknown collective {other}"))),
        };
        done.map(drop)
    }

    /// One iteration in the asynchronous form: `*_async` with the case's buffers, then `wait`
    /// at once (the buffers come back from the wait).
    pub fn run_async(&mut self) -> Result<(), ChorusError> {
        use std::mem::take;
        let pg = self.pg;
        let (dt, op, root) = (self.dtype, self.op, self.root);
        match self.coll {
            "all_reduce" => self.a = pg.all_reduce_async_raw(take(&mut self.a), dt, op).wait()?,
            "reduce" => self.a = pg.reduce_async_raw(take(&mut self.a), root, dt, op).wait()?,
            "broadcast" => self.a = pg.broadcast_async(take(&mut self.a), root).wait()?,
            "barrier" => pg.barrier_async().wait()?,
            "sendrecv" => return self.run(),
            c => {
                let (a, b) = (take(&mut self.a), take(&mut self.b));
                let w = match c {
                    "all_gather" => pg.all_gather_async(a, b),
                    "reduce_scatter" => pg.reduce_scatter_async_raw(a, b, dt, op),
                    "all_to_all" => pg.all_to_all_async(a, b),
                    "gather" => pg.gather_async(a, b, root),
                    "scatter" => pg.scatter_async(a, b, root),
                    other => return Err(ChorusError::InvalidArgument(format!("unknown collective {other}"))),
                };
                (self.a, self.b) = w.wait()?;
            }
        }
        Ok(())
    }

    /// Wrong elements on this rank after one iteration on freshly filled buffers.
    pub fn verify(&self) -> u64 {
        let (me, n, esz, root) = (self.me, self.n, self.esz, self.root);
        let blk_elems = self.block / esz;
        match self.coll {
            "all_reduce" => count_wrong_tiled(&self.a, &self.exp_period, esz, 0),
            "reduce" => {
                if me == root {
                    count_wrong_tiled(&self.a, &self.exp_period, esz, 0)
                } else {
                    // Non-roots keep their input.
                    count_wrong_tiled(&self.a, &self.in_period, esz, 0)
                }
            }
            "reduce_scatter" => count_wrong_tiled(&self.b, &self.exp_period, esz, me * blk_elems),
            "broadcast" => count_wrong_bytes(&self.a, root, 0, esz),
            "sendrecv" => count_wrong_bytes(&self.b, (me + n - 1) % n, 0, esz),
            "all_gather" => self.b.chunks(self.block).enumerate().map(|(s, c)| count_wrong_bytes(c, s, 0, esz)).sum(),
            "gather" if me == root => self.b.chunks(self.block).enumerate().map(|(s, c)| count_wrong_bytes(c, s, 0, esz)).sum(),
            "all_to_all" => self.b.chunks(self.block).enumerate().map(|(s, c)| count_wrong_bytes(c, s, me, esz)).sum(),
            "scatter" => count_wrong_bytes(&self.b, root, me, esz),
            _ => 0,
        }
    }
}

/// A byte buffer placed the way torch's CPU allocator places large tensors: 64 bytes past a page
/// boundary (c10 asks for 64-byte alignment; glibc serves large requests from fresh mappings).
/// Where a buffer sits relative to pages changes copy and reduce speed by up to 2x on this
/// machine (a reused malloc arena gives arbitrary 16-byte offsets; an exact page boundary
/// makes the user buffer and the shared-memory slots alias in the cache), so the bench fixes the
/// placement instead of measuring the allocator. `CHORUS_BENCH_SKEW` overrides the 64.
pub struct AlignedBuf {
    raw: Vec<u8>,
    off: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn new(len: usize) -> AlignedBuf {
        let raw = vec![0u8; len + 8192];
        let skew: usize = std::env::var("CHORUS_BENCH_SKEW").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
        let off = raw.as_ptr().align_offset(4096).min(4096) + skew;
        AlignedBuf { raw, off, len }
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.raw[self.off..self.off + self.len]
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.off..self.off + self.len]
    }
}

/// An empty buffer that allocates nothing: what a case holds while its buffers travel with an
/// asynchronous operation.
impl Default for AlignedBuf {
    fn default() -> Self {
        AlignedBuf { raw: Vec::new(), off: 0, len: 0 }
    }
}

impl chorus_backend::OpBuffer for AlignedBuf {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        self
    }
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        self
    }
}
