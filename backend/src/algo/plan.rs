//! The step language every algorithm compiles to.
//!
//! A [`Plan`] is what one rank does for one collective: a list of [`Step`]s over abstract peers
//! (group-local ranks) and byte ranges of the operation's two buffers. Plans never name a
//! transport; the engine runs them over whatever link connects each pair. Every `Send` on rank
//! `a` towards `b` is matched, in order, by exactly one receiving step on `b` naming `a`
//! (`Recv`, `RecvReduce`, `RecvCopySend`, `RecvReduceSend`), with the same length: the engine
//! moves data as one chunk per step through bounded per-pair slot rings, so a step's length is at
//! most the chunk size the plan was built with.

/// Which of the operation's buffers a range points into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Buf {
    /// The caller's input (for in-place operations it is the same memory as `Output`).
    Input,
    /// The caller's output.
    Output,
}

/// A byte range of one buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub buf: Buf,
    pub off: usize,
    pub len: usize,
}

impl Range {
    pub fn new(buf: Buf, off: usize, len: usize) -> Self {
        Range { buf, off, len }
    }
    pub fn input(off: usize, len: usize) -> Self {
        Range::new(Buf::Input, off, len)
    }
    pub fn output(off: usize, len: usize) -> Self {
        Range::new(Buf::Output, off, len)
    }
    pub fn end(&self) -> usize {
        self.off + self.len
    }
}

/// One thing a rank does. Peers are group-local ranks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Send `src` (one chunk) to `to`.
    Send { to: usize, src: Range },
    /// Receive one chunk from `from` into `dst`.
    Recv { from: usize, dst: Range },
    /// Receive one chunk from each of `from` (all of length `dst.len`) and write
    /// `dst = op(local, chunk_0, chunk_1, ...)`, accumulating all inputs at once
    /// (f16/bf16 in f32). `local` may be the same range as `dst`.
    RecvReduce { from: Vec<usize>, local: Range, dst: Range },
    /// Receive one chunk from `from`, store it in `dst` and forward the same bytes to each of `to`
    /// (pipelined chain broadcast, ring all-gather).
    RecvCopySend { from: usize, to: Vec<usize>, dst: Range },
    /// Receive one chunk from `from`, reduce it with `local` and send the result to `to`; when
    /// `dst` is set the result is also stored there (ring reduce-scatter).
    RecvReduceSend { from: usize, to: usize, local: Range, dst: Option<Range> },
    /// Local copy (e.g. a rank's own block in all-gather when input and output differ).
    Copy { src: Range, dst: Range },
}

/// What one rank does for one collective.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
}

impl Plan {
    pub fn push(&mut self, step: Step) {
        self.steps.push(step);
    }
}
