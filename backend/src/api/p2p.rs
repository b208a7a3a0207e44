//! Tagged point-to-point calls. Messages between a pair with the same tag match in order; any
//! number may be in flight in both directions.
use super::buffer::{as_bytes, as_bytes_mut, Element};
use super::ProcessGroup;
use crate::engine::p2p::{OpBuffer, P2pOp};
use crate::engine::work::{self, Work};
use crate::error::{ChorusError, Result};

/// One entry of a batch (like torch's `P2POp`).
pub enum P2pRequest<B> {
    Send { buf: B, to: usize, tag: u64 },
    Recv { buf: B, from: usize, tag: u64 },
}

fn finisher<B: OpBuffer>(done: work::Completer<B>, name: &'static str) -> crate::engine::p2p::Finish {
    Box::new(move |buf: Box<dyn OpBuffer>, result: Result<()>| {
        let typed = buf.into_any().downcast::<B>().map(|b| *b).map_err(|_| ChorusError::Incomplete(format!("{name}: buffer type changed in flight")));
        done.complete(result.and(typed));
    })
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
        if peer >= self.size() || peer == self.rank() {
            return Err(ChorusError::InvalidRank { rank: peer, size: self.size() });
        }
        Ok(())
    }

    /// Sends `buf` to `to`; completes once the data left `buf`.
    pub fn send_async<B: OpBuffer>(&self, buf: B, to: usize, tag: u64) -> Work<B> {
        if let Err(e) = self.check_peer(to) {
            return Work::ready("send", Err(e));
        }
        let (w, done) = work::pair("send");
        match self.submit_p2p(P2pOp::Send { to, tag, buf: Box::new(buf), finish: finisher(done, "send") }) {
            Ok(()) => w,
            Err(e) => Work::ready("send", Err(e)),
        }
    }

    /// Receives a message of exactly `buf`'s size from `from` with `tag`.
    pub fn recv_async<B: OpBuffer>(&self, buf: B, from: usize, tag: u64) -> Work<B> {
        if let Err(e) = self.check_peer(from) {
            return Work::ready("recv", Err(e));
        }
        let (w, done) = work::pair("recv");
        match self.submit_p2p(P2pOp::Recv { from, tag, buf: Box::new(buf), finish: finisher(done, "recv") }) {
            Ok(()) => w,
            Err(e) => Work::ready("recv", Err(e)),
        }
    }

    pub fn send<T: Element>(&self, buf: &[T], to: usize, tag: u64) -> Result<()> {
        self.send_raw(as_bytes(buf), to, tag)
    }

    pub fn send_raw(&self, buf: &[u8], to: usize, tag: u64) -> Result<()> {
        self.send_async(buf.to_vec(), to, tag).wait().map(|_| ())
    }

    pub fn recv<T: Element>(&self, buf: &mut [T], from: usize, tag: u64) -> Result<()> {
        self.recv_raw(as_bytes_mut(buf), from, tag)
    }

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
