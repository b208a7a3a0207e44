//! `rdma`: ranks on different hosts move chunks with RDMA WRITE WITH IMM over one RC queue pair
//! per peer. Capability: libibverbs loads at run time, a port passes the group's HCA filter
//! (`RdmaOptions::hca`, `CHORUS_IB_HCA`) and is active, and the peer published a port of the same link layer. Setup: every rank publishes its
//! capability, then for each RDMA pair an endpoint record (QPN, PSN, LID/GID, ring address and
//! rkey); both sides connect and wait for each other's "ready". Without libibverbs or a device
//! the transport logs one line per process and group setup falls back to shm/tcp.
//!
//! Files: `ffi.rs` (the only `unsafe`: verbs layouts, dlopen, safe wrappers), `wire.rs`
//! (immediate layout, handshake records), `proto.rs` (the protocol as a pure state machine),
//! `select.rs` (device/port/GID selection), `mr.rs` (registration per allocation base), `link.rs`
//! (the data path), `rejoin.rs` (recreating only a replacement's queue pairs). docs/rdma.md has
//! the whole story.
pub mod ffi;
mod link;
pub mod mr;
mod rejoin;
pub mod proto;
pub mod select;
pub mod wire;

pub use link::RdmaLink;
pub use rejoin::{begin_join, relink, JoinEpoch, Joining};
pub use proto::{qp_created_total, Resume};
pub use wire::{CapRecord, EndpointInfo, PortCap};

use super::signals::{SignalBlock, STREAMS};
use super::table::{Connected, Pairing, Ready, Setup, Transport};
use super::{Link, PeerInfo, RingGeometry};
use crate::error::{ChorusError, Result};
use crate::options::RdmaOptions;
use chorus_bootstrap::Store;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

pub const NAME: &str = "rdma";

/// Why RDMA is not used in this process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotAvailable {
    /// The group's options turn RDMA off (`CHORUS_IB_DISABLE`).
    Disabled,
    /// libibverbs could not be loaded (or lacks a symbol we need).
    NoLibrary(String),
    /// The library loaded, but no device/port is usable (none present, none active, or all
    /// filtered out by `CHORUS_IB_HCA`).
    NoDevice(String),
    /// A `CHORUS_IB_*` setting is malformed.
    BadConfig(String),
}

impl std::fmt::Display for NotAvailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotAvailable::Disabled => write!(f, "rdma: disabled by CHORUS_IB_DISABLE; using shm/tcp"),
            NotAvailable::NoLibrary(why) => write!(f, "rdma: {} not found; using shm/tcp ({why})", ffi::library_name()),
            NotAvailable::NoDevice(why) => write!(f, "rdma: no RDMA device ({why}); using shm/tcp"),
            NotAvailable::BadConfig(why) => write!(f, "rdma: {why}; using shm/tcp"),
        }
    }
}

/// An open device, the port chosen by `settings`, and the settings its queue pairs use.
pub struct Device {
    pub ctx: Arc<ffi::Context>,
    pub port: PortCap,
    pub settings: RdmaOptions,
}

fn gid_type(device: &str, port: u8, index: u32) -> Option<String> {
    std::fs::read_to_string(format!("/sys/class/infiniband/{device}/ports/{port}/gid_attrs/types/{index}")).ok()
}

fn open_device(settings: &RdmaOptions) -> std::result::Result<Device, NotAvailable> {
    if settings.disable {
        return Err(NotAvailable::Disabled);
    }
    let filter = match &settings.hca {
        Some(spec) => select::HcaFilter::parse(spec).map_err(NotAvailable::BadConfig)?,
        None => select::HcaFilter::default(),
    };
    let forced = select::forced_gid_index(settings.gid_index.as_deref()).map_err(NotAvailable::BadConfig)?;
    ffi::verbs().map_err(|e| NotAvailable::NoLibrary(match e {
        ffi::LoadError::NotFound(s) => s,
        ffi::LoadError::MissingSymbol(s) => format!("it has no symbol {s}"),
    }))?;
    let mut names = ffi::device_names().map_err(NotAvailable::NoDevice)?;
    if names.is_empty() {
        return Err(NotAvailable::NoDevice("ibv_get_device_list found none".into()));
    }
    names.sort();
    let mut seen = Vec::new();
    for name in &names {
        let ctx = match ffi::Context::open(name) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                seen.push(format!("{name}: {e}"));
                continue;
            }
        };
        for port in 1..=16u8 {
            let Ok(desc) = ctx.port(port) else { break };
            if !filter.accepts(name, port) {
                seen.push(format!("{name}:{port} excluded by CHORUS_IB_HCA"));
                continue;
            }
            if desc.attr.state != ffi::IBV_PORT_ACTIVE {
                seen.push(format!("{name}:{port} not active (state {})", desc.attr.state));
                continue;
            }
            let ll = if desc.attr.link_layer == ffi::IBV_LINK_LAYER_UNSPECIFIED { ffi::IBV_LINK_LAYER_INFINIBAND } else { desc.attr.link_layer };
            let Some(gid_index) = select::choose_gid(ll, &desc.gids, &|i| gid_type(name, port, i), forced) else {
                seen.push(format!("{name}:{port} has no usable GID"));
                continue;
            };
            let gid = desc.gids.iter().find(|(i, _)| *i == gid_index).map(|(_, g)| *g).unwrap_or([0; 16]);
            if ll == ffi::IBV_LINK_LAYER_ETHERNET && gid == [0; 16] {
                seen.push(format!("{name}:{port} GID index {gid_index} is empty"));
                continue;
            }
            let port = PortCap { device: name.clone(), port, link_layer: ll, lid: desc.attr.lid, gid, gid_index, active_mtu: desc.attr.active_mtu };
            return Ok(Device { ctx, port, settings: settings.clone() });
        }
    }
    Err(NotAvailable::NoDevice(if seen.is_empty() { format!("devices {names:?} have no ports") } else { seen.join("; ") }))
}

/// The device `settings` choose, opened once per process for each distinct settings (groups
/// with the same settings share it; the queue-pair attributes travel with it).
pub(super) fn device(settings: &RdmaOptions) -> std::result::Result<Arc<Device>, NotAvailable> {
    type Opened = HashMap<RdmaOptions, std::result::Result<Arc<Device>, NotAvailable>>;
    static DEVICES: OnceLock<Mutex<Opened>> = OnceLock::new();
    let mut opened = DEVICES.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(r) = opened.get(settings) {
        return r.clone();
    }
    let r = {
        let r = open_device(settings).map(Arc::new);
        // The one line per process (per distinct settings) that says what it does about RDMA.
        match &r {
            Ok(d) => tracing::info!(
                "rdma: using {}:{} ({}, gid index {}, lid {})",
                d.port.device,
                d.port.port,
                if d.port.link_layer == ffi::IBV_LINK_LAYER_ETHERNET { "RoCE" } else { "InfiniBand" },
                d.port.gid_index,
                d.port.lid
            ),
            Err(e) => tracing::info!("{e}"),
        }
        r
    };
    opened.insert(settings.clone(), r.clone());
    r
}

/// Whether this process can use RDMA under `settings`, and on which port. Probes (and logs)
/// once per process for each distinct settings.
pub fn probe(settings: &RdmaOptions) -> std::result::Result<PortCap, NotAvailable> {
    device(settings).map(|d| d.port.clone())
}

/// This rank can offer RDMA towards `peer`: it has a usable port and the peer is on another
/// host (same-host pairs use shared memory). The pair is used only if the peer also published
/// a compatible port ([`wire::pair_ok`]), which [`setup`] checks.
pub fn can_connect(me: &PeerInfo, peer: &PeerInfo, settings: &RdmaOptions) -> bool {
    me.host_id != peer.host_id && probe(settings).is_ok()
}

fn key(uid: &str, rest: &str) -> String {
    format!("chorus/{uid}/rdma/{rest}")
}

/// Group setup for RDMA: publishes this rank's capability, and for every peer that is not `me`,
/// not taken by an earlier transport (`taken(peer)`, e.g. shm) and has a compatible port,
/// creates, exchanges and connects one RC queue pair with rings of geometry `geo`. Returns those
/// links by peer rank; every other pair falls through to TCP. Without RDMA here it publishes
/// "none" (so peers do not wait) and returns an empty map.
#[allow(clippy::too_many_arguments)]
pub fn setup(
    store: &dyn Store,
    uid: &str,
    me: &PeerInfo,
    peers: &[PeerInfo],
    signals: &SignalBlock,
    geo: RingGeometry,
    taken: impl Fn(&PeerInfo) -> bool,
    deadline: Instant,
    settings: &RdmaOptions,
) -> Result<HashMap<usize, RdmaLink>> {
    let (cap, dev) = publish_cap(store, uid, me.rank, settings)?;
    let mut out = HashMap::new();
    let Some(dev) = dev else { return Ok(out) };

    let candidates: Vec<&PeerInfo> = peers.iter().filter(|p| p.rank != me.rank && !taken(p)).collect();
    let keys: Vec<String> = candidates.iter().map(|p| key(uid, &format!("cap/{}", p.rank))).collect();
    let refs: Vec<&str> = keys.iter().map(|s| s.as_str()).collect();
    let values = store.wait(&refs, deadline.saturating_duration_since(Instant::now()))?;
    let signals_mr = register_signals(&dev, signals, me.rank)?;

    // Create every QP, then publish and connect them all (no pair waits on another).
    let (mut mems, mut pending) = (Vec::new(), Vec::new());
    for (p, v) in candidates.iter().zip(values) {
        let theirs = CapRecord::decode(&v).map_err(|e| connect_error(p.rank, e.to_string()))?;
        if !wire::pair_ok(&cap, &theirs) {
            continue;
        }
        let (mem, pc) = new_conn(&dev, me.rank, p.rank, 0, geo, Resume::default(), signals, &signals_mr)?;
        mems.push((p.rank, mem));
        pending.push(pc);
    }
    let conns = link::exchange_all(store, uid, &dev, pending, deadline).map_err(|(peer, e)| connect_error(peer, e))?;
    for ((peer, mem), conn) in mems.into_iter().zip(conns) {
        out.insert(peer, RdmaLink::start(me.rank, peer, dev.clone(), geo, signals.clone(), mem, conn)?);
    }
    Ok(out)
}

pub(super) fn connect_error(peer: usize, why: String) -> ChorusError {
    ChorusError::Connect { transport: NAME, peer, why }
}

/// Publishes this rank's capability record (its port, or none) and returns it with the device.
/// A replacement rank publishes again before it announces itself, so survivors decide on its
/// pairs from its own port, not its predecessor's.
pub fn publish_cap(store: &dyn Store, uid: &str, rank: usize, settings: &RdmaOptions) -> Result<(CapRecord, Option<Arc<Device>>)> {
    let dev = device(settings).ok();
    let cap = CapRecord { rank: rank as u32, port: dev.as_ref().map(|d| d.port.clone()) };
    store.set(&key(uid, &format!("cap/{rank}")), &cap.encode())?;
    Ok((cap, dev))
}

/// The signal block, registered for remote reads (diagnostics; completions travel in
/// immediates).
pub(super) fn register_signals(dev: &Device, signals: &SignalBlock, me: usize) -> Result<Arc<ffi::Mr>> {
    let seg = signals.segment();
    Ok(Arc::new(dev.ctx.reg_host(seg.base(), seg.len(), ffi::IBV_ACCESS_LOCAL_WRITE | ffi::IBV_ACCESS_REMOTE_READ).map_err(|e| connect_error(me, e))?))
}

/// A link's rings (registered, geometry `geo`) and a QP towards `peer` in INIT with its receives
/// posted, continuing from `resume`, whose record goes under handshake `epoch`.
#[allow(clippy::too_many_arguments)]
pub(super) fn new_conn(dev: &Device, me: usize, peer: usize, epoch: u64, geo: RingGeometry, resume: Resume, signals: &SignalBlock, signals_mr: &Arc<ffi::Mr>) -> Result<(link::LinkMemory, link::PendingConn)> {
    let cfg = proto::Config::for_geometry(geo.slots, geo.slot_bytes, STREAMS);
    let mem = link::LinkMemory::new(dev, geo, signals_mr.clone()).map_err(|e| connect_error(peer, e))?;
    let pc = link::prepare_conn(dev, me, peer, epoch, cfg, resume, (mem.inbound(), mem.inbound_mr(), signals_mr, signals.segment().base() as u64)).map_err(|e| connect_error(peer, e))?;
    Ok((mem, pc))
}

/// Whether the pair (`me`, `peer`) uses RDMA: different hosts, a port here, and a compatible
/// port in the peer's published capability record. Both ends reach the same answer.
pub fn pair_uses_rdma(store: &dyn Store, uid: &str, me: &PeerInfo, peer: &PeerInfo, settings: &RdmaOptions, deadline: Instant) -> Result<bool> {
    if me.host_id == peer.host_id {
        return Ok(false);
    }
    let Ok(port) = probe(settings) else { return Ok(false) };
    let k = key(uid, &format!("cap/{}", peer.rank));
    let v = store.wait(&[k.as_str()], deadline.saturating_duration_since(Instant::now()))?;
    let theirs = CapRecord::decode(&v[0]).map_err(|e| connect_error(peer.rank, e.to_string()))?;
    Ok(wire::pair_ok(&CapRecord { rank: me.rank as u32, port: Some(port) }, &theirs))
}

/// The RDMA entry of the transport table. It keeps its links by peer: a replacement's join
/// recreates only the queue pair of the existing link (docs/design.md invariant 8).
pub struct Rdma {
    geo: RingGeometry,
    settings: RdmaOptions,
    links: Arc<Mutex<HashMap<usize, Arc<RdmaLink>>>>,
}

impl Rdma {
    pub fn new(geo: RingGeometry, settings: RdmaOptions) -> Rdma {
        Rdma { geo, settings, links: Arc::new(Mutex::new(HashMap::new())) }
    }

    fn keep(links: &Mutex<HashMap<usize, Arc<RdmaLink>>>, peer: usize, l: Arc<RdmaLink>) {
        links.lock().unwrap_or_else(|e| e.into_inner()).insert(peer, l);
    }
}

/// A replacement's queue pairs to the survivors, connected before it learns their counters.
struct JoiningAll {
    joining: Vec<Joining>,
    geo: RingGeometry,
    links: Arc<Mutex<HashMap<usize, Arc<RdmaLink>>>>,
}

impl Connected for JoiningAll {
    fn start(self: Box<Self>, s: &Setup, counters: &dyn Fn(usize) -> Vec<(u64, u64)>) -> Result<Vec<Arc<dyn Link>>> {
        let mut out: Vec<Arc<dyn Link>> = Vec::new();
        for j in self.joining {
            let peer = j.peer;
            let l = Arc::new(j.start(s.me.rank, &s.local.signals, self.geo, &counters(peer))?);
            Rdma::keep(&self.links, peer, l.clone());
            out.push(l);
        }
        Ok(out)
    }
}

impl Transport for Rdma {
    fn name(&self) -> &'static str {
        NAME
    }

    fn geometry(&self) -> RingGeometry {
        self.geo
    }

    /// Publishes this rank's port (or none, so peers do not wait for it).
    fn prepare(&self, s: &Setup) -> Result<()> {
        publish_cap(s.store, s.uid, s.me.rank, &self.settings).map(|_| ())
    }

    fn can_connect(&self, s: &Setup, peer: &PeerInfo) -> Result<bool> {
        pair_uses_rdma(s.store, s.uid, s.me, peer, &self.settings, s.deadline)
    }

    fn connect(&self, s: &Setup, peers: &[&PeerInfo], pairing: Pairing) -> Result<Box<dyn Connected>> {
        let peers: Vec<PeerInfo> = peers.iter().map(|p| (*p).clone()).collect();
        match pairing {
            Pairing::Create => {
                let links = setup(s.store, s.uid, s.me, &peers, &s.local.signals, self.geo, |_| false, s.deadline, &self.settings)?;
                let mut out: Vec<Arc<dyn Link>> = Vec::new();
                for (peer, l) in links {
                    let l = Arc::new(l);
                    Rdma::keep(&self.links, peer, l.clone());
                    out.push(l);
                }
                Ok(Box::new(Ready(out)))
            }
            Pairing::Join { seq } => {
                let joining = begin_join(s.store, s.uid, s.me, &peers, &s.local.signals, self.geo, seq, s.deadline, &self.settings)?;
                Ok(Box::new(JoiningAll { joining, geo: self.geo, links: self.links.clone() }))
            }
        }
    }

    /// The new queue pair continues both streams' counters, so both are settled first.
    fn relink(&self, s: &Setup, joiner: &PeerInfo, seq: u64, counters: &mut dyn FnMut() -> Result<Vec<(u64, u64)>>) -> Result<Arc<dyn Link>> {
        let resume = Resume::continuing(&counters()?);
        let existing = self.links.lock().unwrap_or_else(|e| e.into_inner()).get(&joiner.rank).cloned();
        let l = relink(s.store, s.uid, s.me.rank, joiner.rank, existing.as_ref(), &s.local.signals, self.geo, seq, resume, s.deadline, &self.settings)?;
        Rdma::keep(&self.links, joiner.rank, l.clone());
        Ok(l)
    }
}
