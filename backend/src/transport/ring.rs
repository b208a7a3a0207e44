//! The inbound slot ring: where a peer's chunks land.
//!
//! Layout of one ring (`slots` slots, each a 64-byte header followed by `slot_bytes` of payload):
//! the header is a framed [`SlotMeta`], separate from the payload bytes, so completion and
//! bookkeeping never travel inside data (docs/design.md invariant 1). Whether a slot is full is decided by
//! the sequence counters in the signal block, not by anything in the ring.
use super::Payload;
use crate::sys::shm::Segment;
use std::sync::Arc;

pub const HEADER: usize = 64;
const _: () = assert!(META_BYTES <= HEADER);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingGeometry {
    pub slots: usize,
    pub slot_bytes: usize,
}

impl RingGeometry {
    pub fn ring_bytes(&self) -> usize {
        self.slots * (HEADER + self.slot_bytes)
    }
}

/// Bytes of an encoded [`SlotMeta`].
pub const META_BYTES: usize = 56;

/// Chunk header. `op_seq` and `desc` let the receiver check that both sides run the same
/// operation with the same arguments; `total`/`offset` place the chunk in its message; `tag`
/// matches point-to-point messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotMeta {
    pub op_seq: u64,
    pub desc: u64,
    pub total: u64,
    pub offset: u64,
    pub tag: u64,
    pub len: u64,
    /// The sender's attempt of the operation: the recovery rounds it had applied when the attempt
    /// began (strictly greater for every re-run; 0 for point-to-point). Chunks of a lower attempt
    /// are left over from an attempt that a recovery cancelled. (Not the membership epoch: a rank
    /// can start under an epoch it read from the store before the round that decided it, then
    /// re-run under the same epoch after that round.)
    pub attempt: u64,
}

impl SlotMeta {
    pub fn encode(&self, out: &mut [u8]) {
        let words = [self.op_seq, self.desc, self.total, self.offset, self.tag, self.len, self.attempt];
        for (i, w) in words.iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
    }

    pub fn decode(b: &[u8]) -> SlotMeta {
        let w = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        SlotMeta { op_seq: w(0), desc: w(1), total: w(2), offset: w(3), tag: w(4), len: w(5), attempt: w(6) }
    }
}

/// A ring inside a segment (shared memory for same-host peers, anonymous memory filled by a
/// reader thread for socket peers).
pub struct InboundRing {
    seg: Arc<Segment>,
    base: usize,
    geo: RingGeometry,
}

impl InboundRing {
    pub fn new(seg: Arc<Segment>, base: usize, geo: RingGeometry) -> InboundRing {
        assert!(base + geo.ring_bytes() <= seg.len(), "ring outside its segment");
        InboundRing { seg, base, geo }
    }

    pub fn geometry(&self) -> RingGeometry {
        self.geo
    }

    fn slot_off(&self, seq: u64) -> usize {
        self.base + (seq % self.geo.slots as u64) as usize * (HEADER + self.geo.slot_bytes)
    }

    /// Header of the chunk with sequence number `seq` (the caller observed `data_seq > seq`).
    pub fn meta(&self, seq: u64) -> SlotMeta {
        SlotMeta::decode(self.seg.bytes(self.slot_off(seq), HEADER))
    }

    /// Payload of chunk `seq` (the caller observed `data_seq > seq` and has not acked it yet).
    pub fn payload(&self, seq: u64, len: usize) -> &[u8] {
        assert!(len <= self.geo.slot_bytes, "chunk of {len} bytes exceeds slot of {}", self.geo.slot_bytes);
        self.seg.bytes(self.slot_off(seq) + HEADER, len)
    }

    /// Writer side: fill header and payload of chunk `seq` (the writer holds the credit).
    pub fn write(&self, seq: u64, meta: &SlotMeta, payload: Payload<'_>) {
        let len = meta.len as usize;
        assert!(len <= self.geo.slot_bytes, "chunk of {len} bytes exceeds slot of {}", self.geo.slot_bytes);
        let off = self.slot_off(seq);
        payload.write_to(self.seg.bytes_mut(off + HEADER, len));
        meta.encode(self.seg.bytes_mut(off, HEADER));
    }

    /// Writable payload of chunk `seq`, for a reader thread copying from a socket.
    pub fn payload_mut(&self, seq: u64, len: usize) -> &mut [u8] {
        assert!(len <= self.geo.slot_bytes, "chunk of {len} bytes exceeds slot of {}", self.geo.slot_bytes);
        self.seg.bytes_mut(self.slot_off(seq) + HEADER, len)
    }

    pub fn write_meta(&self, seq: u64, meta: &SlotMeta) {
        meta.encode(self.seg.bytes_mut(self.slot_off(seq), HEADER));
    }
}
