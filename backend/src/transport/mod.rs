//! Transports: each answers "can I connect these two peers?" and then offers one-sided
//! put-with-signal into the peer's inbound slot ring, plus credit return. Every transport folder
//! has the same files: `mod.rs` (capability check and setup, the [`Transport`] it offers) and
//! `link.rs` (the data path). Group setup walks one ordered [`Table`] of transports (shm, rdma,
//! tcp): the first that can connect a pair wins. The engine never names a transport; it only sees
//! [`Link`]. The signal block every transport raises counters in lives here too (`signals`), below
//! the engine.
pub mod rdma;
pub mod ring;
pub mod shm;
pub mod signals;
mod table;
pub mod tcp;

use crate::error::Result;
use crate::options::Agreed;
pub use ring::{InboundRing, RingGeometry, SlotMeta};
use serde::{Deserialize, Serialize};
use signals::{Control, Stream};
pub use table::{watch_nothing, Connecting, Pairing, Setup, Table, Transport};

/// What a rank publishes about itself at rendezvous.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerInfo {
    pub rank: usize,
    /// Host identity (hostname, boot id and network namespace, or `CHORUS_HOST_ID`): equal ids
    /// can share memory.
    pub host_id: String,
    pub pid: u32,
    /// Address of this rank's listener, bound before it was published (docs/design.md invariant 5).
    pub tcp_addr: String,
    /// Names of this rank's shared-memory segments (signals, inbound data).
    pub shm_signals: String,
    pub shm_data: String,
    /// Descriptors this rank keeps open for those segments: a replacement rank maps them through
    /// `/proc/<pid>/fd/<fd>` once the names are gone.
    pub shm_signals_fd: i32,
    pub shm_data_fd: i32,
    /// The settings every rank must share (compared at rendezvous).
    pub settings: Agreed,
}

impl PeerInfo {
    pub fn encode(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, bincode::config::standard()).expect("a peer record always encodes")
    }

    pub fn decode(v: &[u8]) -> Result<PeerInfo> {
        bincode::serde::decode_from_slice::<PeerInfo, _>(v, bincode::config::standard()).map(|(p, _)| p).map_err(|e| {
            crate::error::ChorusError::InvalidArgument(format!("a peer published undecodable info ({e}); are all ranks running the same chorus version?"))
        })
    }
}

/// The payload of one put.
pub enum Payload<'a> {
    /// Bytes that already lie in memory (the caller's buffer, or a slot of an inbound ring): a
    /// transport that streams (a socket) sends them from where they lie, without a staging copy.
    Bytes(&'a [u8]),
    /// A producer of exactly `meta.len` bytes whose result is kept nowhere else (a reduction
    /// straight into the outgoing chunk): it writes into the slot, or into a socket's staging buffer.
    Fill(&'a mut dyn FnMut(&mut [u8])),
}

impl Payload<'_> {
    /// Writes the payload into `out` (exactly its length).
    pub fn write_to(self, out: &mut [u8]) {
        match self {
            Payload::Bytes(b) => out.copy_from_slice(b),
            Payload::Fill(fill) => fill(out),
        }
    }
}

/// One direction-agnostic connection to a peer.
pub trait Link: Send + Sync {
    /// The peer's group-local rank.
    fn peer(&self) -> usize;
    /// Transport name, for logs and counters only.
    fn transport(&self) -> &'static str;
    /// Whether the pair shares memory (cheap small messages, no socket hops): algorithm
    /// selection uses this cost class, never the transport's name.
    fn shares_memory(&self) -> bool;
    /// Slot count and size of the peer's inbound ring for our chunks (and of ours for theirs).
    fn geometry(&self) -> RingGeometry;
    /// Writes one chunk into the peer's inbound ring slot `seq % slots` of `stream`: `payload`
    /// is exactly `meta.len` bytes, then the peer's `data_seq` becomes `seq + 1`. The caller has
    /// already checked the credit (the slot is free).
    fn put(&self, stream: Stream, seq: u64, meta: &SlotMeta, payload: Payload<'_>) -> Result<()>;
    /// Returns credits: we consumed the peer's chunks `0..acked` on `stream`. A transport may hold
    /// the credit back to send it with others (or with a later frame) until [`Link::flush_acks`].
    fn ack(&self, stream: Stream, acked: u64) -> Result<()>;
    /// Sends every credit [`Link::ack`] held back. The engine calls it before a wait that could
    /// block and when an operation ends, so a held credit never keeps a peer waiting for long.
    fn flush_acks(&self) -> Result<()> {
        Ok(())
    }
    /// Our inbound ring for this peer's chunks on `stream`.
    fn inbound(&self, stream: Stream) -> &InboundRing;
    /// Error if the peer is known to be gone (process exited, connection closed).
    fn check_alive(&self) -> Result<()>;
    /// Raises the control counter `c` we keep in the peer's signal block to `value`.
    fn control(&self, c: Control, value: u64) -> Result<()>;
    /// Tells the peer this group is aborted (best effort).
    fn send_abort(&self, reporter: usize, code: u64);
    /// Connections made for this link (for counters).
    fn connections(&self) -> u64 {
        1
    }
    /// The link's own state in words, logged when a wait on this peer times out.
    fn describe(&self) -> String {
        self.transport().to_string()
    }
}
