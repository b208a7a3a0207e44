//! The shm data path: a put is a copy straight into the peer's mapped inbound ring followed by a
//! release-store of the peer's sequence counter.
use super::ring_offset;
use crate::transport::signals::{SignalBlock, Stream, STREAMS};
use crate::error::{ChorusError, Result};
use crate::sys::shm::Segment;
use crate::transport::{InboundRing, Link, Payload, RingGeometry, SlotMeta};
use std::sync::Arc;

pub struct ShmLink {
    me: usize,
    peer: usize,
    peer_pid: u32,
    geo: RingGeometry,
    peer_signals: SignalBlock,
    /// Our rings inside the peer's data segment (where our chunks land).
    outbound: Vec<InboundRing>,
    /// The peer's rings inside our data segment.
    inbound: Vec<InboundRing>,
}

impl ShmLink {
    pub fn new(
        me: usize,
        peer: usize,
        peer_pid: u32,
        geo: RingGeometry,
        peer_signals: SignalBlock,
        peer_data: Arc<Segment>,
        my_data: Arc<Segment>,
    ) -> ShmLink {
        let outbound = (0..STREAMS).map(|s| InboundRing::new(peer_data.clone(), ring_offset(me, s, geo), geo)).collect();
        let inbound = (0..STREAMS).map(|s| InboundRing::new(my_data.clone(), ring_offset(peer, s, geo), geo)).collect();
        ShmLink { me, peer, peer_pid, geo, peer_signals, outbound, inbound }
    }
}

impl Link for ShmLink {
    fn peer(&self) -> usize {
        self.peer
    }

    fn transport(&self) -> &'static str {
        super::NAME
    }

    fn shares_memory(&self) -> bool {
        true
    }

    fn geometry(&self) -> RingGeometry {
        self.geo
    }

    fn put(&self, stream: Stream, seq: u64, meta: &SlotMeta, payload: Payload<'_>) -> Result<()> {
        self.outbound[stream as usize].write(seq, meta, payload);
        self.peer_signals.publish(self.peer_signals.data_seq(self.me, stream), seq + 1);
        Ok(())
    }

    fn ack(&self, stream: Stream, acked: u64) -> Result<()> {
        self.peer_signals.publish(self.peer_signals.ack_seq(self.me, stream), acked);
        Ok(())
    }

    fn control(&self, c: crate::transport::signals::Control, value: u64) -> Result<()> {
        self.peer_signals.publish(self.peer_signals.control(self.me, c), value);
        Ok(())
    }

    fn inbound(&self, stream: Stream) -> &InboundRing {
        &self.inbound[stream as usize]
    }

    fn check_alive(&self) -> Result<()> {
        if crate::sys::proc::alive(self.peer_pid) {
            Ok(())
        } else {
            Err(ChorusError::PeerFailed { op: "", peer: self.peer, why: format!("process {} exited", self.peer_pid) })
        }
    }

    fn send_abort(&self, reporter: usize, code: u64) {
        self.peer_signals.raise_abort(reporter, code);
    }
}
