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
    /// Writes one chunk into the peer's inbound ring slot `seq % slots` of `stream`: `fill`
    /// produces exactly `meta.len` payload bytes, then the peer's `data_seq` becomes `seq + 1`.
    /// The caller has already checked the credit (the slot is free).
    fn put(&self, stream: Stream, seq: u64, meta: &SlotMeta, fill: &mut dyn FnMut(&mut [u8])) -> Result<()>;
    /// Returns credits: tells the peer we consumed its chunks `0..acked` on `stream`.
    fn ack(&self, stream: Stream, acked: u64) -> Result<()>;
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
