//! The rdma data path. A put fills our staging copy of the peer's slot (header + payload,
//! contiguous) and posts one RDMA WRITE WITH IMM into the peer's inbound ring slot; the
//! immediate names the stream and sequence number. A poller thread per link turns receive
//! completions into our signal counters (`data_seq`, `ack_seq`, abort) and re-posts a receive WR
//! for every one consumed, so the engine waits on RDMA exactly as it waits on shared memory.
//! All protocol decisions are [`proto::Endpoint`]'s; this file only does the verbs calls.
use super::ffi::{self, ibv_wc};
use super::proto::{self, Completion, Endpoint, Event, Output, Post, Refused, Resume};
use super::wire::{self, EndpointInfo, PortCap};
use super::{Device, NAME};
use crate::transport::signals::{Control, SignalBlock, Stream, CONTROLS, STREAMS};
use crate::error::{ChorusError, Result};
use crate::sys::shm::Segment;
use crate::transport::{InboundRing, Link, Payload, RingGeometry, SlotMeta};
use chorus_bootstrap::Store;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const OPEN: u64 = 0;
const FAILED: u64 = 2;

fn stream_of(i: usize) -> Stream {
    if i == 0 {
        Stream::Collective
    } else {
        Stream::P2p
    }
}

/// One queue pair with its completion queues and protocol state. Field order is drop order:
/// the QP is destroyed before its CQs.
pub(crate) struct Conn {
    qp: ffi::Qp,
    send_cq: ffi::Cq,
    recv_cq: ffi::Cq,
    ep: Endpoint,
    remote: EndpointInfo,
    next_recv_id: u64,
}

impl Conn {
    /// See [`Endpoint::rebase`].
    pub(crate) fn rebase(&mut self, r: Resume) -> std::result::Result<(), String> {
        self.ep.rebase(r)
    }
}

/// A QP created and in INIT with its receives posted, waiting for the peer's endpoint info.
pub struct PendingConn {
    conn: Conn,
    psn: u32,
    pub local: EndpointInfo,
}

struct Shared {
    me: usize,
    peer: usize,
    geo: RingGeometry,
    cfg: proto::Config,
    signals: SignalBlock,
    conn: Mutex<Option<Conn>>,
    state: AtomicU64,
    why: Mutex<String>,
    stop: AtomicBool,
    qp_created: AtomicU64,
    rings: Vec<InboundRing>,
    staging_rings: Vec<InboundRing>,
    staging: Arc<Segment>,
    // Registrations after `conn` (QPs go first), the device context last.
    inbound_mr: ffi::Mr,
    staging_mr: ffi::Mr,
    _signals_mr: Arc<ffi::Mr>,
    inbound: Arc<Segment>,
    dev: Arc<Device>,
}

/// Resources of one link that outlive QP recreation (rings and their registrations).
pub struct LinkMemory {
    inbound: Arc<Segment>,
    staging: Arc<Segment>,
    inbound_mr: ffi::Mr,
    staging_mr: ffi::Mr,
    signals_mr: Arc<ffi::Mr>,
}

pub struct RdmaLink {
    shared: Arc<Shared>,
    poller: Option<JoinHandle<()>>,
}

fn psn() -> u32 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(7);
    (t ^ std::process::id().rotate_left(12)) & 0xff_ffff
}

impl LinkMemory {
    pub fn inbound(&self) -> &Segment {
        &self.inbound
    }

    pub fn inbound_mr(&self) -> &ffi::Mr {
        &self.inbound_mr
    }

    pub fn new(dev: &Device, geo: RingGeometry, signals_mr: Arc<ffi::Mr>) -> std::result::Result<LinkMemory, String> {
        let bytes = STREAMS * geo.ring_bytes();
        let inbound = Arc::new(Segment::anonymous(bytes).map_err(|e| format!("allocating inbound rings: {e}"))?);
        let staging = Arc::new(Segment::anonymous(bytes).map_err(|e| format!("allocating staging rings: {e}"))?);
        let inbound_mr = dev.ctx.reg_host(inbound.base(), bytes, super::mr::REMOTE_ACCESS)?;
        let staging_mr = dev.ctx.reg_host(staging.base(), bytes, ffi::IBV_ACCESS_LOCAL_WRITE)?;
        Ok(LinkMemory { inbound, staging, inbound_mr, staging_mr, signals_mr })
    }
}

/// Creates a QP towards `peer` (INIT, receives posted) and the endpoint record to publish.
#[allow(clippy::too_many_arguments)]
pub fn prepare_conn(dev: &Device, me: usize, peer: usize, epoch: u64, cfg: proto::Config, resume: Resume, mem: (&Segment, &ffi::Mr, &ffi::Mr, u64)) -> std::result::Result<PendingConn, String> {
    let (inbound, inbound_mr, signals_mr, signals_addr) = mem;
    let send_cq = dev.ctx.create_cq(cfg.send_depth + 4)?;
    let recv_cq = dev.ctx.create_cq(cfg.recv_depth + 4)?;
    let qp = dev.ctx.create_rc_qp(&send_cq, &recv_cq, cfg.send_depth, cfg.recv_depth)?;
    qp.to_init(dev.port.port)?;
    let mut ep = Endpoint::resume(cfg, resume);
    let n = ep.initial_receives();
    qp.post_recvs(1, n)?;
    let psn = psn();
    let local = EndpointInfo {
        from: me as u32,
        to: peer as u32,
        epoch,
        qpn: qp.qp_num(),
        psn,
        lid: dev.port.lid,
        gid: dev.port.gid,
        link_layer: dev.port.link_layer,
        active_mtu: dev.port.active_mtu,
        slots: cfg.slots as u32,
        slot_bytes: cfg.slot_bytes as u32,
        rings_addr: inbound.base() as u64,
        rings_rkey: inbound_mr.rkey(),
        streams: cfg.streams as u32,
        signals_addr,
        signals_rkey: signals_mr.rkey(),
    };
    let remote = local.clone();
    Ok(PendingConn { conn: Conn { qp, send_cq, recv_cq, ep, remote, next_recv_id: n as u64 + 1 }, psn, local })
}

/// Brings a prepared QP to RTS towards `remote` (checks that both sides agree on geometry).
fn finish_conn(dev: &Device, mut p: PendingConn, remote: EndpointInfo) -> std::result::Result<Conn, String> {
    let cfg = p.conn.ep.config();
    if remote.slots as u64 != cfg.slots || remote.slot_bytes as u64 != cfg.slot_bytes || remote.streams as usize != cfg.streams {
        return Err(format!(
            "ring geometry differs: ours {}x{} bytes, peer's {}x{} bytes (every rank must use the same CHORUS_RDMA_CHUNK)",
            cfg.slots, cfg.slot_bytes, remote.slots, remote.slot_bytes
        ));
    }
    if remote.link_layer != dev.port.link_layer {
        return Err("the peer's port has another link layer (InfiniBand vs RoCE)".into());
    }
    let path = ffi::RemotePath {
        port: dev.port.port,
        mtu: dev.port.active_mtu.min(remote.active_mtu).max(1),
        remote_qpn: remote.qpn,
        remote_psn: remote.psn,
        local_psn: p.psn,
        remote_lid: remote.lid,
        remote_gid: remote.gid,
        sgid_index: dev.port.gid_index as u8,
        global: dev.port.link_layer == ffi::IBV_LINK_LAYER_ETHERNET || remote.gid[..8] != dev.port.gid[..8],
        timeout: dev.settings.timeout,
        retry_cnt: dev.settings.retry_cnt,
        service_level: dev.settings.service_level,
        traffic_class: dev.settings.traffic_class,
    };
    p.conn.qp.to_rts(&path)?;
    p.conn.remote = remote;
    Ok(p.conn)
}

fn key(uid: &str, rest: &str) -> String {
    format!("chorus/{uid}/rdma/{rest}")
}

/// Publishes our endpoint for the pair, waits for the peer's, connects, and waits for the
/// peer's "ready" (so neither side writes before the other's QP can receive).
pub(crate) fn exchange(store: &dyn Store, uid: &str, dev: &Device, pending: PendingConn, deadline: Instant) -> std::result::Result<Conn, String> {
    exchange_all(store, uid, dev, vec![pending], deadline).map(|mut c| c.remove(0)).map_err(|(_, e)| e)
}

/// [`exchange`] for several peers at once: publishes every record first, then connects each peer
/// as soon as its record appears (in any order), then waits for every "ready". No pair waits on
/// another: a rejoining rank must not wait on one survivor while another, which already connected
/// and waits for our "ready", holds up the collective the first one is in.
pub(crate) fn exchange_all(store: &dyn Store, uid: &str, dev: &Device, pending: Vec<PendingConn>, deadline: Instant) -> std::result::Result<Vec<Conn>, (usize, String)> {
    let mut waiting: Vec<Option<PendingConn>> = Vec::new();
    for p in pending {
        let (me, peer, epoch) = (p.local.from, p.local.to, p.local.epoch);
        store.set(&key(uid, &format!("ep/{epoch}/{me}-{peer}")), &p.local.encode()).map_err(|e| (peer as usize, e.to_string()))?;
        waiting.push(Some(p));
    }
    let mut conns: Vec<Option<Conn>> = waiting.iter().map(|_| None).collect();
    // Polling backs off (1 ms doubling to 16 ms) so a large group does not flood the store.
    let mut pause = Duration::from_millis(1);
    while conns.iter().any(|c| c.is_none()) {
        let before = waiting.iter().flatten().count();
        for (slot, conn) in waiting.iter_mut().zip(conns.iter_mut()) {
            let Some(p) = slot.as_ref() else { continue };
            let (me, peer, epoch) = (p.local.from, p.local.to, p.local.epoch);
            let fail = |e: String| (peer as usize, e);
            let Some(v) = store.get(&key(uid, &format!("ep/{epoch}/{peer}-{me}"))).map_err(|e| fail(e.to_string()))? else { continue };
            let remote = EndpointInfo::decode(&v).map_err(|e| fail(e.to_string()))?;
            if remote.from != peer || remote.to != me || remote.epoch != epoch {
                return Err(fail(format!("endpoint record names {}->{} epoch {}, expected {peer}->{me} epoch {epoch}", remote.from, remote.to, remote.epoch)));
            }
            let c = finish_conn(dev, slot.take().expect("pending"), remote).map_err(fail)?;
            store.set(&key(uid, &format!("ready/{epoch}/{me}-{peer}")), &wire::encode_ready()).map_err(|e| fail(e.to_string()))?;
            *conn = Some(c);
        }
        if let Some(p) = waiting.iter().flatten().next() {
            if Instant::now() >= deadline {
                return Err((p.local.to as usize, "timed out waiting for the peer's endpoint record (did it serve the join?)".into()));
            }
            pause = if waiting.iter().flatten().count() < before { Duration::from_millis(1) } else { (pause * 2).min(Duration::from_millis(16)) };
            std::thread::sleep(pause);
        }
    }
    let conns: Vec<Conn> = conns.into_iter().flatten().collect();
    for c in &conns {
        let (me, peer, epoch) = (c.remote.to, c.remote.from, c.remote.epoch);
        let k = key(uid, &format!("ready/{epoch}/{peer}-{me}"));
        let v = store.wait(&[k.as_str()], deadline.saturating_duration_since(Instant::now())).map_err(|e| (peer as usize, e.to_string()))?;
        wire::decode_ready(&v[0]).map_err(|e| (peer as usize, e.to_string()))?;
    }
    Ok(conns)
}

impl Shared {
    fn fail(&self, why: String) {
        // The reason is in place before the state says FAILED: a reader that sees FAILED finds it.
        let mut w = self.why.lock().unwrap_or_else(|p| p.into_inner());
        if self.state.load(Ordering::SeqCst) == OPEN {
            tracing::warn!(peer = self.peer, %why, "rdma link failed");
            *w = why;
            self.state.store(FAILED, Ordering::SeqCst);
        }
        drop(w);
        self.signals.ring();
    }

    fn post(&self, c: &Conn, p: &Post) -> std::result::Result<(), String> {
        let local = self.staging.base() as u64 + p.local_offset;
        let remote = c.remote.rings_addr + p.remote_offset;
        c.qp.post_write_imm(p.wr_id, local, p.len, self.staging_mr.lkey(), remote, c.remote.rings_rkey, p.imm)
    }

    /// Carries out what the state machine decided.
    fn apply(&self, c: &mut Conn, out: Output) {
        for p in &out.posts {
            if let Err(e) = self.post(c, p) {
                if let Some(Event::Failed { why }) = c.ep.fail(e) {
                    self.fail(why);
                }
            }
        }
        if out.reposts > 0 {
            if let Err(e) = c.qp.post_recvs(c.next_recv_id, out.reposts) {
                if let Some(Event::Failed { why }) = c.ep.fail(format!("re-posting receives: {e}")) {
                    self.fail(why);
                }
            }
            c.next_recv_id += out.reposts as u64;
        }
        for ev in out.events {
            match ev {
                Event::Delivered { stream, data_seq } => self.signals.publish(self.signals.data_seq(self.peer, stream_of(stream)), data_seq),
                Event::Credit { stream, acked } => self.signals.publish(self.signals.ack_seq(self.peer, stream_of(stream)), acked),
                Event::Abort { code } => self.signals.raise_abort(self.peer, code as u64),
                Event::Control { id, value } => {
                    if let Some(ctl) = Control::from_u8(id as u8) {
                        self.signals.publish(self.signals.control(self.peer, ctl), value);
                    }
                }
                Event::Failed { why } => self.fail(why),
            }
        }
    }

    /// Polls both CQs once; returns how many completions were handled.
    fn poll_once(&self, wcs: &mut [ibv_wc]) -> usize {
        let mut g = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let Some(c) = g.as_mut() else { return 0 };
        let mut handled = 0;
        for recv in [true, false] {
            let polled = if recv { c.recv_cq.poll(wcs) } else { c.send_cq.poll(wcs) };
            let n = match polled {
                Ok(n) => n,
                Err(e) => {
                    if let Some(Event::Failed { why }) = c.ep.fail(e) {
                        self.fail(why);
                    }
                    0
                }
            };
            for wc in &wcs[..n] {
                let comp = Completion { wr_id: wc.wr_id, status: wc.status, opcode: wc.opcode, byte_len: wc.byte_len, imm: u32::from_be(wc.imm_data) };
                let out = if recv { c.ep.on_recv(comp) } else { c.ep.on_send(comp) };
                self.apply(c, out);
            }
            handled += n;
        }
        handled
    }
}

fn poller(sh: Arc<Shared>) {
    let mut wcs = [ibv_wc::default(); 32];
    let mut idle = 0u32;
    while !sh.stop.load(Ordering::Acquire) {
        if sh.poll_once(&mut wcs) > 0 {
            idle = 0;
            continue;
        }
        idle = idle.saturating_add(1);
        if idle < 2000 {
            std::hint::spin_loop();
        } else if idle < 2200 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

impl RdmaLink {
    pub(crate) fn start(me: usize, peer: usize, dev: Arc<Device>, geo: RingGeometry, signals: SignalBlock, mem: LinkMemory, conn: Conn) -> Result<RdmaLink> {
        let cfg = conn.ep.config();
        let rings = (0..STREAMS).map(|s| InboundRing::new(mem.inbound.clone(), s * geo.ring_bytes(), geo)).collect();
        let staging_rings = (0..STREAMS).map(|s| InboundRing::new(mem.staging.clone(), s * geo.ring_bytes(), geo)).collect();
        proto::note_qp_created();
        let shared = Arc::new(Shared {
            me,
            peer,
            geo,
            cfg,
            signals,
            conn: Mutex::new(Some(conn)),
            state: AtomicU64::new(OPEN),
            why: Mutex::new(String::new()),
            stop: AtomicBool::new(false),
            qp_created: AtomicU64::new(1),
            rings,
            staging_rings,
            staging: mem.staging,
            inbound_mr: mem.inbound_mr,
            staging_mr: mem.staging_mr,
            _signals_mr: mem.signals_mr,
            inbound: mem.inbound,
            dev,
        });
        let sh = shared.clone();
        let poller = std::thread::Builder::new()
            .name(format!("chorus-rdma-cq-{peer}"))
            .spawn(move || poller(sh))
            .map_err(|error| ChorusError::Io { peer, error })?;
        Ok(RdmaLink { shared, poller: Some(poller) })
    }

    /// Queue pairs created towards this peer (1 after setup, +1 per [`RdmaLink::reconnect`]).
    pub fn qp_created(&self) -> u64 {
        self.shared.qp_created.load(Ordering::SeqCst)
    }

    /// The port this link uses.
    pub fn port(&self) -> &PortCap {
        &self.shared.dev.port
    }

    /// Recreates only this peer's queue pair (the peer rejoined as a new process): the old QP
    /// and its CQs are destroyed, a new one is created, exchanged through the store under
    /// `epoch` and connected; rings, registrations and every other link stay as they are
    /// (docs/design.md invariant 8). `resume` gives the counters the new QP continues from (agreed by
    /// the membership layer; counters never reset). The rejoiner calls this (or group setup)
    /// with the same epoch.
    pub fn reconnect(&self, store: &dyn Store, uid: &str, epoch: u64, mut resume: Resume, deadline: Instant) -> Result<()> {
        let sh = &self.shared;
        if resume.rx_control.is_empty() {
            // Control counters the peer keeps in our block continue from where they are.
            resume.rx_control = (0..CONTROLS)
                .map(|i| Control::from_u8(i as u8).map_or(0, |c| sh.signals.control(sh.peer, c).load(Ordering::SeqCst)))
                .collect();
        }
        let fail = |why: String| ChorusError::Connect { transport: NAME, peer: sh.peer, why };
        // Destroy the old QP first (flushes its work requests; nothing is polled from it again).
        drop(sh.conn.lock().unwrap_or_else(|p| p.into_inner()).take());
        let pending = prepare_conn(&sh.dev, sh.me, sh.peer, epoch, sh.cfg, resume, (&sh.inbound, &sh.inbound_mr, &sh._signals_mr, sh.signals.segment().base() as u64)).map_err(fail)?;
        let conn = exchange(store, uid, &sh.dev, pending, deadline).map_err(fail)?;
        *sh.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn);
        sh.qp_created.fetch_add(1, Ordering::SeqCst);
        proto::note_qp_created();
        let mut why = sh.why.lock().unwrap_or_else(|p| p.into_inner());
        why.clear();
        sh.state.store(OPEN, Ordering::SeqCst);
        drop(why);
        Ok(())
    }

    fn peer_failed(&self) -> ChorusError {
        let why = self.shared.why.lock().unwrap_or_else(|p| p.into_inner()).clone();
        ChorusError::PeerFailed { op: "", peer: self.shared.peer, why: if why.is_empty() { "rdma queue pair is being recreated".into() } else { why } }
    }
}

impl Link for RdmaLink {
    fn peer(&self) -> usize {
        self.shared.peer
    }

    fn transport(&self) -> &'static str {
        NAME
    }

    fn shares_memory(&self) -> bool {
        false
    }

    fn geometry(&self) -> RingGeometry {
        self.shared.geo
    }

    fn put(&self, stream: Stream, seq: u64, meta: &SlotMeta, payload: Payload<'_>) -> Result<()> {
        let sh = &self.shared;
        self.check_alive()?;
        // The engine holds the credit for slot seq % slots: our staging copy of it is free too
        // (the receiver consumed the previous chunk in it, so the NIC finished reading it).
        sh.staging_rings[stream as usize].write(seq, meta, payload);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut g = sh.conn.lock().unwrap_or_else(|p| p.into_inner());
            let Some(c) = g.as_mut() else { return Err(self.peer_failed()) };
            match c.ep.write(stream as usize, seq, meta.len) {
                Ok(p) => {
                    return sh.post(c, &p).map_err(|e| {
                        if let Some(Event::Failed { why }) = c.ep.fail(e.clone()) {
                            sh.fail(why);
                        }
                        ChorusError::PeerFailed { op: "", peer: sh.peer, why: e }
                    });
                }
                Err(Refused::SendQueueFull) if Instant::now() < deadline => {
                    drop(g);
                    std::thread::sleep(Duration::from_micros(20));
                }
                Err(Refused::Failed(_)) => return Err(self.peer_failed()),
                Err(r) => return Err(ChorusError::Incomplete(format!("rdma write of chunk {seq} to rank {} refused: {r:?}", sh.peer))),
            }
        }
    }

    fn ack(&self, stream: Stream, acked: u64) -> Result<()> {
        let sh = &self.shared;
        let mut g = sh.conn.lock().unwrap_or_else(|p| p.into_inner());
        let Some(c) = g.as_mut() else { return Err(self.peer_failed()) };
        match c.ep.ack(stream as usize, acked) {
            Ok(Some(p)) => sh.post(c, &p).map_err(|why| ChorusError::PeerFailed { op: "", peer: sh.peer, why }),
            Ok(None) => Ok(()),
            Err(_) => Err(self.peer_failed()),
        }
    }

    fn inbound(&self, stream: Stream) -> &InboundRing {
        &self.shared.rings[stream as usize]
    }

    fn check_alive(&self) -> Result<()> {
        match self.shared.state.load(Ordering::SeqCst) {
            OPEN => Ok(()),
            _ => Err(self.peer_failed()),
        }
    }

    fn control(&self, c: Control, value: u64) -> Result<()> {
        let sh = &self.shared;
        let mut g = sh.conn.lock().unwrap_or_else(|p| p.into_inner());
        let Some(conn) = g.as_mut() else { return Err(self.peer_failed()) };
        match conn.ep.control(c as usize, value) {
            Ok(Some(p)) => sh.post(conn, &p).map_err(|why| ChorusError::PeerFailed { op: "", peer: sh.peer, why }),
            Ok(None) => Ok(()),
            Err(_) => Err(self.peer_failed()),
        }
    }

    fn send_abort(&self, _reporter: usize, code: u64) {
        let sh = &self.shared;
        let mut g = sh.conn.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = g.as_mut() {
            if let Some(p) = c.ep.abort(code as u32) {
                let _ = sh.post(c, &p);
            }
        }
    }

    fn connections(&self) -> u64 {
        self.qp_created()
    }

    fn describe(&self) -> String {
        let g = self.shared.conn.lock().unwrap_or_else(|p| p.into_inner());
        match g.as_ref() {
            Some(c) => format!("rdma qp {} -> {}: {}", c.qp.qp_num(), c.remote.qpn, c.ep.describe()),
            None => "rdma: no queue pair (being recreated)".into(),
        }
    }
}

impl Drop for RdmaLink {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(h) = self.poller.take() {
            let _ = h.join();
        }
        // Destroy the QP (and CQs) now; registrations and the context follow with `shared`.
        drop(self.shared.conn.lock().unwrap_or_else(|p| p.into_inner()).take());
    }
}
