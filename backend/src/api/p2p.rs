//! Tagged point-to-point calls. Messages between a pair with the same tag match in order; any
//! number may be in flight in both directions.
use super::buffer::{as_bytes, as_bytes_mut, Element};
use super::ProcessGroup;
use super::issue::{Issued, Mode};
use crate::engine::p2p::{OpBuffer, P2pOp};
use crate::engine::work::{self, OpInfo, Work};
use crate::error::{ChorusError, Result};

/// One entry of a batch (like torch's `P2POp`).
pub enum P2pRequest<B> {
    /// Send `buf` to rank `to` with `tag` (as [`ProcessGroup::send_async`]).
    Send {
        /// The data to send.
        buf: B,
        /// The destination rank.
        to: usize,
        /// The tag the receive must name.
        tag: u64,
    },
    /// Receive into `buf` from rank `from` with `tag` (as [`ProcessGroup::recv_async`]).
    Recv {
        /// The buffer to fill: the message must have exactly its size.
        buf: B,
        /// The source rank.
        from: usize,
        /// The tag the send named.
        tag: u64,
    },
}

fn finisher<B: OpBuffer>(done: work::Completer<B>, name: &'static str) -> crate::engine::p2p::Finish {
    Box::new(move |buf: Box<dyn OpBuffer>, result: Result<()>| {
        let Ok(typed) = buf.into_any().downcast::<B>() else {
            return done.complete(Err(ChorusError::Incomplete(format!("{name}: buffer type changed in flight"))));
        };
        match result {
            Ok(()) => done.complete(Ok(*typed)),
            // A failed message reports who failed and gives its buffer back.
            Err(e) => {
                done.set_info(OpInfo::of_error(&e));
                done.fail_returning(e, *typed)
            }
        }
    })
}

/// A started point-to-point operation as `mode` asks: the handle, or its outcome once complete
/// (each message has its own deadline, the group's timeout, so the wait ends).
fn finish_p2p<B>(mode: Mode, started: Result<Work<B>>) -> Issued<B> {
    match (mode, started) {
        (_, Err(e)) => Issued::Refused(e),
        (Mode::Queued, Ok(w)) => Issued::Queued(w),
        (Mode::Inline, Ok(w)) => match w.wait() {
            Ok(b) => Issued::Ran(Ok(b), OpInfo::default()),
            Err(e) => {
                let info = OpInfo::of_error(&e);
                Issued::Ran(Err(e), info)
            }
        },
    }
}

impl ProcessGroup {
    fn submit_p2p(&self, op: P2pOp) -> Result<()> {
        self.inner.check_live()?;
        let guard = self.inner.p2p_tx.lock().unwrap_or_else(|p| p.into_inner());
        let tx = guard.as_ref().ok_or(ChorusError::Destroyed)?;
        tx.send(op).map_err(|_| ChorusError::Destroyed)?;
        // Wake the progress thread if it sleeps on our doorbell.
        self.inner.signals.ring();
        Ok(())
    }

    fn check_peer(&self, peer: usize) -> Result<()> {
        if peer >= self.size() {
            return Err(ChorusError::InvalidRank { rank: peer, size: self.size() });
        }
        if peer == self.rank() {
            return Err(ChorusError::InvalidArgument(format!(
                "rank {peer} cannot send to or receive from itself: point-to-point needs another rank (copy the buffer instead)"
            )));
        }
        Ok(())
    }

    /// `send_async` or, with `Mode::Inline`, a send that returns once the data left `buf`.
    /// Point-to-point messages are progressed by the group's point-to-point thread either way
    /// (a pair's sends and receives must move at once); they are not ordered with collectives.
    pub fn send_issue<B: OpBuffer>(&self, mode: Mode, buf: B, to: usize, tag: u64) -> Issued<B> {
        finish_p2p(mode, self.start_p2p("send", to, |finish| P2pOp::Send { to, tag, buf: Box::new(buf), finish }))
    }

    /// `recv_async` or, with `Mode::Inline`, a receive that returns once the message arrived.
    pub fn recv_issue<B: OpBuffer>(&self, mode: Mode, buf: B, from: usize, tag: u64) -> Issued<B> {
        finish_p2p(mode, self.start_p2p("recv", from, |finish| P2pOp::Recv { from, tag, buf: Box::new(buf), finish }))
    }

    /// Hands the operation `make` builds (around its completion callback) to the progress thread.
    fn start_p2p<B: OpBuffer>(&self, name: &'static str, peer: usize, make: impl FnOnce(crate::engine::p2p::Finish) -> P2pOp) -> Result<Work<B>> {
        self.check_peer(peer)?;
        let (w, done) = work::pair(name);
        self.submit_p2p(make(finisher(done, name)))?;
        Ok(w)
    }

    /// Sends `buf` to `to`; completes once the data left `buf`.
    pub fn send_async<B: OpBuffer>(&self, buf: B, to: usize, tag: u64) -> Work<B> {
        self.send_issue(Mode::Queued, buf, to, tag).into_work("send")
    }

    /// Receives a message of exactly `buf`'s size from `from` with `tag`.
    pub fn recv_async<B: OpBuffer>(&self, buf: B, from: usize, tag: u64) -> Work<B> {
        self.recv_issue(Mode::Queued, buf, from, tag).into_work("recv")
    }

    /// Sends `buf` to rank `to` with `tag`; returns once the data left `buf`.
    pub fn send<T: Element>(&self, buf: &[T], to: usize, tag: u64) -> Result<()> {
        self.send_raw(as_bytes(buf), to, tag)
    }

    /// [`ProcessGroup::send`] on bytes.
    pub fn send_raw(&self, buf: &[u8], to: usize, tag: u64) -> Result<()> {
        self.send_async(buf.to_vec(), to, tag).wait().map(|_| ())
    }

    /// Receives a message of exactly `buf`'s size from rank `from` with `tag` into `buf`;
    /// returns once it arrived.
    pub fn recv<T: Element>(&self, buf: &mut [T], from: usize, tag: u64) -> Result<()> {
        self.recv_raw(as_bytes_mut(buf), from, tag)
    }

    /// [`ProcessGroup::recv`] on bytes.
    pub fn recv_raw(&self, buf: &mut [u8], from: usize, tag: u64) -> Result<()> {
        let got = self.recv_async(vec![0u8; buf.len()], from, tag).wait()?;
        buf.copy_from_slice(&got);
        Ok(())
    }

    /// Starts every send and receive of `ops` at once (like torch's `batch_isend_irecv`).
    pub fn batch_send_recv<B: OpBuffer>(&self, ops: Vec<P2pRequest<B>>) -> Vec<Work<B>> {
        ops.into_iter()
            .map(|op| match op {
                P2pRequest::Send { buf, to, tag } => self.send_async(buf, to, tag),
                P2pRequest::Recv { buf, from, tag } => self.recv_async(buf, from, tag),
            })
            .collect()
    }
}
