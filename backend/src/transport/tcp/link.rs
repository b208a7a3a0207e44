//! The tcp data path. Frames are a 72-byte header — magic `CHTP` (u32), kind (u8), stream or
//! control id (u8), 2 pad bytes, sequence or value (u64), [`SlotMeta`] (56 bytes) — followed by `meta.len` payload bytes
//! for data frames. A reader thread per socket writes payloads into our inbound ring and raises
//! our signal counters, so the engine waits on sockets exactly as it waits on shared memory.
use crate::transport::signals::{Control, SignalBlock, Stream, STREAMS};
use crate::error::{ChorusError, Result};
use crate::sys::shm::Segment;
use crate::transport::{InboundRing, Link, RingGeometry, SlotMeta};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

const MAGIC: u32 = u32::from_le_bytes(*b"CHTP");
const HEADER: usize = 16 + crate::transport::ring::META_BYTES;
const KIND_DATA: u8 = 1;
const KIND_ACK: u8 = 2;
const KIND_ABORT: u8 = 3;
const KIND_CONTROL: u8 = 4;

/// Link state, a monotonic code: 0 open, 1 closed by the peer, 2 broken.
const OPEN: u64 = 0;

struct Shared {
    peer: usize,
    rings: Vec<InboundRing>,
    signals: SignalBlock,
    state: AtomicU64,
    why: Mutex<String>,
}

pub struct TcpLink {
    peer: usize,
    geo: RingGeometry,
    writer: Mutex<(TcpStream, Vec<u8>)>,
    shared: Arc<Shared>,
    reader: Option<JoinHandle<()>>,
    socket: TcpStream,
}

fn header(kind: u8, stream: Stream, seq: u64, meta: &SlotMeta, out: &mut [u8]) {
    out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    out[4] = kind;
    out[5] = stream as u8;
    out[6] = 0;
    out[7] = 0;
    out[8..16].copy_from_slice(&seq.to_le_bytes());
    meta.encode(&mut out[16..HEADER]);
}

impl TcpLink {
    pub fn start(_me: usize, peer: usize, socket: TcpStream, geo: RingGeometry, signals: SignalBlock) -> Result<TcpLink> {
        let io = |error| ChorusError::Io { peer, error };
        let seg = Arc::new(Segment::anonymous(STREAMS * geo.ring_bytes()).map_err(io)?);
        let rings = (0..STREAMS).map(|s| InboundRing::new(seg.clone(), s * geo.ring_bytes(), geo)).collect();
        let shared = Arc::new(Shared { peer, rings, signals, state: AtomicU64::new(OPEN), why: Mutex::new(String::new()) });
        let read_half = socket.try_clone().map_err(io)?;
        let write_half = socket.try_clone().map_err(io)?;
        let sh = shared.clone();
        let reader = std::thread::Builder::new()
            .name(format!("chorus-tcp-rx-{peer}"))
            .spawn(move || reader_loop(read_half, sh))
            .map_err(io)?;
        Ok(TcpLink { peer, geo, writer: Mutex::new((write_half, Vec::new())), shared, reader: Some(reader), socket })
    }

    fn send_frame(&self, kind: u8, stream: Stream, seq: u64, meta: &SlotMeta, fill: &mut dyn FnMut(&mut [u8])) -> Result<()> {
        let mut guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let (sock, buf) = &mut *guard;
        let len = if kind == KIND_DATA { meta.len as usize } else { 0 };
        buf.resize(HEADER + len, 0);
        header(kind, stream, seq, meta, &mut buf[..HEADER]);
        fill(&mut buf[HEADER..]);
        sock.write_all(buf).map_err(|source| {
            self.shared.fail(2, format!("write failed: {source}"));
            ChorusError::Io { peer: self.peer, error: source }
        })
    }
}

impl Shared {
    fn fail(&self, code: u64, why: String) {
        if self.state.compare_exchange(OPEN, code, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            *self.why.lock().unwrap_or_else(|p| p.into_inner()) = why;
        }
        self.signals.ring();
    }
}

fn reader_loop(mut sock: TcpStream, sh: Arc<Shared>) {
    let mut hdr = [0u8; HEADER];
    loop {
        if let Err(e) = sock.read_exact(&mut hdr) {
            let code = if e.kind() == std::io::ErrorKind::UnexpectedEof { 1 } else { 2 };
            sh.fail(code, format!("connection lost: {e}"));
            return;
        }
        let magic = u32::from_le_bytes(hdr[0..4].try_into().expect("4"));
        if magic != MAGIC {
            sh.fail(2, "frame with a bad magic (stream corrupted)".into());
            return;
        }
        let seq = u64::from_le_bytes(hdr[8..16].try_into().expect("8"));
        if hdr[4] == KIND_CONTROL {
            match Control::from_u8(hdr[5]) {
                Some(c) => sh.signals.publish(sh.signals.control(sh.peer, c), seq),
                None => {
                    sh.fail(2, format!("control frame of unknown kind {}", hdr[5]));
                    return;
                }
            }
            continue;
        }
        let stream = match hdr[5] {
            0 => Stream::Collective,
            1 => Stream::P2p,
            _ => {
                sh.fail(2, format!("frame with unknown stream {}", hdr[5]));
                return;
            }
        };
        let meta = SlotMeta::decode(&hdr[16..HEADER]);
        match hdr[4] {
            KIND_DATA => {
                let ring = &sh.rings[stream as usize];
                if meta.len as usize > ring.geometry().slot_bytes {
                    sh.fail(2, format!("chunk of {} bytes exceeds the slot size", meta.len));
                    return;
                }
                if let Err(e) = sock.read_exact(ring.payload_mut(seq, meta.len as usize)) {
                    sh.fail(2, format!("connection lost inside a chunk: {e}"));
                    return;
                }
                ring.write_meta(seq, &meta);
                sh.signals.publish(sh.signals.data_seq(sh.peer, stream), seq + 1);
            }
            KIND_ACK => sh.signals.publish(sh.signals.ack_seq(sh.peer, stream), seq),
            KIND_ABORT => sh.signals.raise_abort(sh.peer, seq),
            k => {
                sh.fail(2, format!("frame of unknown kind {k}"));
                return;
            }
        }
    }
}

impl Link for TcpLink {
    fn peer(&self) -> usize {
        self.peer
    }

    fn transport(&self) -> &'static str {
        super::NAME
    }

    fn shares_memory(&self) -> bool {
        false
    }

    fn geometry(&self) -> RingGeometry {
        self.geo
    }

    fn put(&self, stream: Stream, seq: u64, meta: &SlotMeta, fill: &mut dyn FnMut(&mut [u8])) -> Result<()> {
        self.send_frame(KIND_DATA, stream, seq, meta, fill)
    }

    fn ack(&self, stream: Stream, acked: u64) -> Result<()> {
        self.send_frame(KIND_ACK, stream, acked, &SlotMeta::default(), &mut |_| {})
    }

    fn control(&self, c: Control, value: u64) -> Result<()> {
        let mut guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let (sock, _) = &mut *guard;
        let mut hdr = [0u8; HEADER];
        header(KIND_CONTROL, Stream::Collective, value, &SlotMeta::default(), &mut hdr);
        hdr[5] = c as u8;
        sock.write_all(&hdr).map_err(|source| {
            self.shared.fail(2, format!("write failed: {source}"));
            ChorusError::Io { peer: self.peer, error: source }
        })
    }

    fn inbound(&self, stream: Stream) -> &InboundRing {
        &self.shared.rings[stream as usize]
    }

    fn check_alive(&self) -> Result<()> {
        match self.shared.state.load(Ordering::SeqCst) {
            OPEN => Ok(()),
            _ => Err(ChorusError::PeerFailed {
                op: "",
                peer: self.peer,
                why: self.shared.why.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            }),
        }
    }

    fn send_abort(&self, _reporter: usize, code: u64) {
        let _ = self.send_frame(KIND_ABORT, Stream::Collective, code, &SlotMeta::default(), &mut |_| {});
    }
}

impl Drop for TcpLink {
    fn drop(&mut self) {
        let _ = self.socket.shutdown(Shutdown::Both);
        if let Some(h) = self.reader.take() {
            let _ = h.join();
        }
    }
}
