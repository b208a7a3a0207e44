//! What travels between two rdma endpoints outside the data itself: the 32-bit immediate of every
//! RDMA WRITE WITH IMM, and the handshake records exchanged through the store.
//!
//! ## Immediate layout (host order; posted and polled in network byte order)
//!
//! | kind (bits 31–30) | bits 29–0 |
//! |---|---|
//! | 0 data    | bit 29 stream (0 collective, 1 point-to-point), bits 28–0 chunk sequence number mod 2^29 |
//! | 1 credit  | bit 29 stream, bits 28–0 chunks consumed mod 2^29 |
//! | 2 abort   | bit 29 zero, bits 28–0 reason code |
//! | 3 control | bits 29–28 control id (0 done, 1 heartbeat, 2 recovery; 3 rejected), bits 27–0 value mod 2^28 |
//!
//! The receiver widens a truncated value back to 64 bits against the counter it already holds:
//! sequence numbers to the nearest candidate ([`widen`]; at most `slots` chunks are in flight,
//! far below 2^28), credits and control values forward ([`widen_forward`]; they only grow, by far
//! less than 2^27 between two deliveries).
//!
//! ## Handshake records (through the store, bincode 2 `standard()` of serde structs)
//!
//! Every record is `magic "CHRD" (4 bytes) | version u16 LE | kind u16 LE | bincode body`:
//! kind 1 = [`CapRecord`] (key `chorus/{uid}/rdma/cap/{rank}`), kind 2 = [`EndpointInfo`] (key
//! `chorus/{uid}/rdma/ep/{epoch}/{from}-{to}`), kind 3 = ready marker (empty body).
use serde::{Deserialize, Serialize};

pub const KIND_DATA: u32 = 0;
pub const KIND_ACK: u32 = 1;
pub const KIND_ABORT: u32 = 2;
pub const VALUE_BITS: u32 = 29;
pub const VALUE_MASK: u32 = (1 << VALUE_BITS) - 1;

/// A decoded immediate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Imm {
    /// Chunk `seq` (low 29 bits) of `stream` is in its slot.
    Data { stream: u8, seq_low: u32 },
    /// The sender consumed our chunks `0..acked` (low 29 bits) of `stream`.
    Ack { stream: u8, acked_low: u32 },
    /// The sender aborts the group with `code`.
    Abort { code: u32 },
    /// The sender raised control counter `id` it keeps in our block to a value whose low 28 bits
    /// are `value_low`.
    Control { id: u8, value_low: u32 },
}

pub const CONTROL_BITS: u32 = 28;
pub const CONTROL_MASK: u32 = (1 << CONTROL_BITS) - 1;
pub const KIND_CONTROL: u32 = 3;

impl Imm {
    /// Host-order encoding (see the module docs).
    pub fn encode(self) -> u32 {
        match self {
            Imm::Data { stream, seq_low } => (KIND_DATA << 30) | ((stream as u32 & 1) << 29) | (seq_low & VALUE_MASK),
            Imm::Ack { stream, acked_low } => (KIND_ACK << 30) | ((stream as u32 & 1) << 29) | (acked_low & VALUE_MASK),
            Imm::Abort { code } => (KIND_ABORT << 30) | (code & VALUE_MASK),
            Imm::Control { id, value_low } => (KIND_CONTROL << 30) | ((id as u32 & 3) << 28) | (value_low & CONTROL_MASK),
        }
    }

    pub fn decode(v: u32) -> Result<Imm, WireError> {
        let stream = ((v >> 29) & 1) as u8;
        let value = v & VALUE_MASK;
        match v >> 30 {
            KIND_DATA => Ok(Imm::Data { stream, seq_low: value }),
            KIND_ACK => Ok(Imm::Ack { stream, acked_low: value }),
            KIND_ABORT if stream == 0 => Ok(Imm::Abort { code: value }),
            KIND_CONTROL if (v >> 28) & 3 < 3 => Ok(Imm::Control { id: ((v >> 28) & 3) as u8, value_low: v & CONTROL_MASK }),
            k => Err(WireError::BadImmediate { kind: k, raw: v }),
        }
    }

    pub fn data(stream: u8, seq: u64) -> Imm {
        Imm::Data { stream, seq_low: (seq as u32) & VALUE_MASK }
    }

    pub fn ack(stream: u8, acked: u64) -> Imm {
        Imm::Ack { stream, acked_low: (acked as u32) & VALUE_MASK }
    }

    pub fn control(id: u8, value: u64) -> Imm {
        Imm::Control { id, value_low: (value as u32) & CONTROL_MASK }
    }
}

/// The smallest value `>= at_least` whose low `bits` bits are `low` (for counters that only
/// grow).
pub fn widen_forward(at_least: u64, low: u32, bits: u32) -> u64 {
    let span = 1u64 << bits;
    let low = low as u64 & (span - 1);
    let cand = (at_least & !(span - 1)) | low;
    if cand >= at_least {
        cand
    } else {
        cand + span
    }
}

/// The 64-bit value whose low 29 bits are `low` and that is nearest to `near` (ties go up).
pub fn widen(near: u64, low: u32) -> u64 {
    let span = 1u64 << VALUE_BITS;
    let low = (low & VALUE_MASK) as u64;
    let base = near & !(span - 1);
    let cand = base | low;
    // Pick among cand - span, cand, cand + span the one closest to `near`.
    let mut best = cand;
    let dist = |x: u64| x.abs_diff(near);
    if cand >= span && dist(cand - span) < dist(best) {
        best = cand - span;
    }
    if dist(cand + span) < dist(best) {
        best = cand + span;
    }
    best
}

pub const MAGIC: [u8; 4] = *b"CHRD";
pub const VERSION: u16 = 1;
pub const REC_CAP: u16 = 1;
pub const REC_ENDPOINT: u16 = 2;
pub const REC_READY: u16 = 3;
const PREFIX: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("rdma record truncated: {got} bytes, need at least {need}")]
    Truncated { got: usize, need: usize },
    #[error("not an rdma record (magic {0:02x?}, expected \"CHRD\")")]
    BadMagic([u8; 4]),
    #[error("rdma record version {got}, this build speaks {want} (are all ranks running the same chorus version?)")]
    Version { got: u16, want: u16 },
    #[error("expected an rdma record of kind {want}, got kind {got}")]
    Kind { got: u16, want: u16 },
    #[error("undecodable rdma record: {0}")]
    Decode(String),
    #[error("immediate {raw:#010x} (kind {kind}) uses a reserved encoding")]
    BadImmediate { kind: u32, raw: u32 },
}

/// This rank's RDMA capability (published by every rank, `None` when it has no usable device).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CapRecord {
    pub rank: u32,
    pub port: Option<PortCap>,
}

/// The port a rank will use.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PortCap {
    pub device: String,
    pub port: u8,
    /// 1 InfiniBand, 2 Ethernet (RoCE).
    pub link_layer: u8,
    pub lid: u16,
    pub gid: [u8; 16],
    pub gid_index: u32,
    /// `enum ibv_mtu` (1 = 256 … 5 = 4096).
    pub active_mtu: u32,
}

/// Everything a peer needs to connect its QP to ours and write into our rings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndpointInfo {
    pub from: u32,
    pub to: u32,
    /// Membership epoch this QP belongs to (0 at group creation; a rejoin uses the new view's).
    pub epoch: u64,
    pub qpn: u32,
    pub psn: u32,
    pub lid: u16,
    pub gid: [u8; 16],
    pub link_layer: u8,
    pub active_mtu: u32,
    /// Ring geometry both sides must agree on.
    pub slots: u32,
    pub slot_bytes: u32,
    /// Our inbound rings for the peer's chunks: `streams` rings back to back at `rings_addr`.
    pub rings_addr: u64,
    pub rings_rkey: u32,
    pub streams: u32,
    /// Our signal block (read-only to peers: completions travel in immediates, never as writes
    /// into counters; published for diagnostics and a future GPU-initiated path).
    pub signals_addr: u64,
    pub signals_rkey: u32,
}

fn encode_record<T: Serialize>(kind: u16, body: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    let b = bincode::serde::encode_to_vec(body, bincode::config::standard()).expect("rdma records always encode");
    out.extend_from_slice(&b);
    out
}

fn decode_record<T: for<'de> Deserialize<'de>>(want: u16, b: &[u8]) -> Result<T, WireError> {
    if b.len() < PREFIX {
        return Err(WireError::Truncated { got: b.len(), need: PREFIX });
    }
    let magic: [u8; 4] = b[0..4].try_into().expect("4");
    if magic != MAGIC {
        return Err(WireError::BadMagic(magic));
    }
    let version = u16::from_le_bytes([b[4], b[5]]);
    if version != VERSION {
        return Err(WireError::Version { got: version, want: VERSION });
    }
    let kind = u16::from_le_bytes([b[6], b[7]]);
    if kind != want {
        return Err(WireError::Kind { got: kind, want });
    }
    match bincode::serde::decode_from_slice::<T, _>(&b[PREFIX..], bincode::config::standard()) {
        Ok((v, used)) if used == b.len() - PREFIX => Ok(v),
        Ok((_, used)) => Err(WireError::Decode(format!("{} trailing bytes", b.len() - PREFIX - used))),
        Err(bincode::error::DecodeError::UnexpectedEnd { additional }) => {
            Err(WireError::Truncated { got: b.len(), need: b.len() + additional })
        }
        Err(e) => Err(WireError::Decode(e.to_string())),
    }
}

impl CapRecord {
    pub fn encode(&self) -> Vec<u8> {
        encode_record(REC_CAP, self)
    }
    pub fn decode(b: &[u8]) -> Result<CapRecord, WireError> {
        decode_record(REC_CAP, b)
    }
}

impl EndpointInfo {
    pub fn encode(&self) -> Vec<u8> {
        encode_record(REC_ENDPOINT, self)
    }
    pub fn decode(b: &[u8]) -> Result<EndpointInfo, WireError> {
        decode_record(REC_ENDPOINT, b)
    }
}

pub fn encode_ready() -> Vec<u8> {
    encode_record(REC_READY, &())
}

pub fn decode_ready(b: &[u8]) -> Result<(), WireError> {
    decode_record(REC_READY, b)
}

/// Whether two published capabilities can form an RC connection: both have a port, and the
/// ports share a link layer (an InfiniBand port cannot reach a RoCE port). Symmetric, so both
/// ranks of a pair take the same decision.
pub fn pair_ok(a: &CapRecord, b: &CapRecord) -> bool {
    match (&a.port, &b.port) {
        (Some(x), Some(y)) => x.link_layer == y.link_layer && x.link_layer != 0,
        _ => false,
    }
}
