//! The tcp data path. A frame is an 88-byte header — magic `CHT2` (u32), kind (u8), stream or
//! control id (u8), 2 pad bytes, sequence or value (u64), the writer's consumed counts for both
//! streams (2 x u64: its credits to us, see `credits`), [`SlotMeta`] (56 bytes) — followed by
//! `meta.len` payload bytes for data frames. The header and the payload go out in one vectored
//! write from where the payload lies (the caller's buffer or an inbound slot; only a reduction's
//! result is produced into a staging buffer first). A reader thread per socket reads each header,
//! then the payload straight into its slot of our inbound ring, and raises our signal counters,
//! so the engine waits on sockets exactly as it waits on shared memory.
use super::credits::{Credits, Received};
use crate::transport::signals::{Control, SignalBlock, Stream, STREAMS};
use crate::error::{ChorusError, Result};
use crate::sys::shm::Segment;
use crate::transport::{InboundRing, Link, Payload, RingGeometry, SlotMeta};
use std::io::{IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

const MAGIC: u32 = u32::from_le_bytes(*b"CHT2");
const PREFIX: usize = 16 + 8 * STREAMS;
const HEADER: usize = PREFIX + crate::transport::ring::META_BYTES;
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

/// The sending half: the socket, the credits we owe the peer, and where a reduction's result is
/// produced before it is written.
struct Writer {
    sock: TcpStream,
    credits: Credits,
    staging: Vec<u8>,
    /// Frames written, and how many of them were ACK frames (for `describe`).
    frames: u64,
    acks: u64,
}

pub struct TcpLink {
    peer: usize,
    geo: RingGeometry,
    writer: Mutex<Writer>,
    shared: Arc<Shared>,
    reader: Option<JoinHandle<()>>,
    socket: TcpStream,
}

/// One frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    kind: u8,
    /// The stream of a data frame, or the control counter of a control frame.
    id: u8,
    /// Chunk sequence number (data), counter value (control) or abort code.
    value: u64,
    /// The writer's consumed counts per stream.
    credits: [u64; STREAMS],
    meta: SlotMeta,
}

impl Header {
    fn encode(&self) -> [u8; HEADER] {
        let mut out = [0u8; HEADER];
        out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        out[4] = self.kind;
        out[5] = self.id;
        out[8..16].copy_from_slice(&self.value.to_le_bytes());
        for (s, c) in self.credits.iter().enumerate() {
            out[16 + 8 * s..24 + 8 * s].copy_from_slice(&c.to_le_bytes());
        }
        self.meta.encode(&mut out[PREFIX..HEADER]);
        out
    }

    fn decode(b: &[u8; HEADER]) -> std::result::Result<Header, String> {
        let word = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8"));
        let magic = u32::from_le_bytes(b[0..4].try_into().expect("4"));
        if magic != MAGIC {
            return Err("frame with a bad magic (stream corrupted, or the peer runs another chorus version)".into());
        }
        Ok(Header { kind: b[4], id: b[5], value: word(8), credits: std::array::from_fn(|s| word(16 + 8 * s)), meta: SlotMeta::decode(&b[PREFIX..HEADER]) })
    }
}

/// `write_all` over several buffers (one `writev` per try).
fn write_all_vectored(sock: &mut TcpStream, mut bufs: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match sock.write_vectored(bufs) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
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
        let writer = Writer { sock: write_half, credits: Credits::new(geo.slots), staging: Vec::new(), frames: 0, acks: 0 };
        Ok(TcpLink { peer, geo, writer: Mutex::new(writer), shared, reader: Some(reader), socket })
    }

    fn lock_writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes one frame (header, then `payload` for data frames); it carries every credit we owe.
    fn send_frame(&self, kind: u8, id: u8, value: u64, meta: &SlotMeta, payload: Payload<'_>) -> Result<()> {
        self.write_frame(&mut self.lock_writer(), kind, id, value, meta, payload)
    }

    fn write_frame(&self, w: &mut Writer, kind: u8, id: u8, value: u64, meta: &SlotMeta, payload: Payload<'_>) -> Result<()> {
        w.frames += 1;
        w.acks += u64::from(kind == KIND_ACK);
        let Writer { sock, credits, staging, .. } = w;
        let hdr = Header { kind, id, value, credits: credits.carry(), meta: *meta }.encode();
        let written = match payload {
            Payload::Bytes(b) => write_all_vectored(sock, &mut [IoSlice::new(&hdr), IoSlice::new(b)]),
            Payload::Fill(fill) => {
                staging.resize(meta.len as usize, 0);
                fill(staging);
                write_all_vectored(sock, &mut [IoSlice::new(&hdr), IoSlice::new(staging)])
            }
        };
        written.map_err(|source| {
            self.shared.fail(2, format!("write failed: {source}"));
            ChorusError::Io { peer: self.peer, error: source }
        })
    }

    fn send_header(&self, kind: u8, id: u8, value: u64) -> Result<()> {
        self.send_frame(kind, id, value, &SlotMeta::default(), Payload::Bytes(&[]))
    }

    /// Writes an ACK frame if `due` says one is due (under the same lock, so no frame slips in
    /// between).
    fn ack_if(&self, due: impl FnOnce(&mut Credits) -> bool) -> Result<()> {
        let mut w = self.lock_writer();
        if due(&mut w.credits) {
            self.write_frame(&mut w, KIND_ACK, 0, 0, &SlotMeta::default(), Payload::Bytes(&[]))?;
        }
        Ok(())
    }
}

impl Shared {
    fn fail(&self, code: u64, why: String) {
        if self.state.compare_exchange(OPEN, code, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            *self.why.lock().unwrap_or_else(|p| p.into_inner()) = why;
        }
        self.signals.ring();
    }

    /// Takes in one frame whose header was read; reads a data frame's payload into its slot.
    /// The reason the stream cannot go on, if it cannot.
    fn receive(&self, sock: &mut TcpStream, h: &Header, received: &mut Received) -> std::result::Result<(), (u64, String)> {
        for (stream, news) in [Stream::Collective, Stream::P2p].into_iter().zip(received.news(h.credits)) {
            if let Some(v) = news {
                self.signals.publish(self.signals.ack_seq(self.peer, stream), v);
            }
        }
        let stream = || match h.id {
            0 => Ok(Stream::Collective),
            1 => Ok(Stream::P2p),
            _ => Err((2, format!("frame with unknown stream {}", h.id))),
        };
        match h.kind {
            KIND_DATA => {
                let stream = stream()?;
                let ring = &self.rings[stream as usize];
                if h.meta.len as usize > ring.geometry().slot_bytes {
                    return Err((2, format!("chunk of {} bytes exceeds the slot size", h.meta.len)));
                }
                sock.read_exact(ring.payload_mut(h.value, h.meta.len as usize)).map_err(|e| (2, format!("connection lost inside a chunk: {e}")))?;
                ring.write_meta(h.value, &h.meta);
                self.signals.publish(self.signals.data_seq(self.peer, stream), h.value + 1);
            }
            KIND_CONTROL => match Control::from_u8(h.id) {
                Some(c) => self.signals.publish(self.signals.control(self.peer, c), h.value),
                None => return Err((2, format!("control frame of unknown kind {}", h.id))),
            },
            // The credits it carries were taken in above.
            KIND_ACK => {}
            KIND_ABORT => self.signals.raise_abort(self.peer, h.value),
            k => return Err((2, format!("frame of unknown kind {k}"))),
        }
        Ok(())
    }
}

fn reader_loop(mut sock: TcpStream, sh: Arc<Shared>) {
    let mut hdr = [0u8; HEADER];
    let mut received = Received::default();
    loop {
        if let Err(e) = sock.read_exact(&mut hdr) {
            let code = if e.kind() == std::io::ErrorKind::UnexpectedEof { 1 } else { 2 };
            sh.fail(code, format!("connection lost: {e}"));
            return;
        }
        let taken = Header::decode(&hdr).map_err(|why| (2, why)).and_then(|h| sh.receive(&mut sock, &h, &mut received));
        if let Err((code, why)) = taken {
            sh.fail(code, why);
            return;
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

    fn put(&self, stream: Stream, seq: u64, meta: &SlotMeta, payload: Payload<'_>) -> Result<()> {
        self.send_frame(KIND_DATA, stream as u8, seq, meta, payload)
    }

    /// Records the credit; an ACK frame goes out only once half the ring is unreported (the
    /// credit otherwise rides on the next frame we write, or on [`Link::flush_acks`]).
    fn ack(&self, stream: Stream, acked: u64) -> Result<()> {
        self.ack_if(|c| c.consume(stream as usize, acked))
    }

    fn flush_acks(&self) -> Result<()> {
        self.ack_if(|c| c.pending())
    }

    fn control(&self, c: Control, value: u64) -> Result<()> {
        self.send_header(KIND_CONTROL, c as u8, value)
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

    fn describe(&self) -> String {
        let w = self.lock_writer();
        format!("tcp: {} frames written ({} of them ACK frames), credits held {:?}", w.frames, w.acks, w.credits)
    }

    fn send_abort(&self, _reporter: usize, code: u64) {
        let _ = self.send_header(KIND_ABORT, 0, code);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::signals;
    use std::net::TcpListener;
    use std::time::{Duration, Instant};

    fn until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::yield_now();
        }
    }

    fn block(owner: usize) -> SignalBlock {
        SignalBlock::init(Arc::new(Segment::anonymous(signals::segment_len(2)).unwrap()), 2, owner)
    }

    /// Rank 0's link to rank 1 and rank 1's link to rank 0 over loopback, with their signal blocks.
    fn pair(geo: RingGeometry) -> ((TcpLink, SignalBlock), (TcpLink, SignalBlock)) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let near = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (far, _) = listener.accept().unwrap();
        let (s0, s1) = (block(0), block(1));
        let l0 = TcpLink::start(0, 1, near, geo, s0.clone()).unwrap();
        let l1 = TcpLink::start(1, 0, far, geo, s1.clone()).unwrap();
        ((l0, s0), (l1, s1))
    }

    fn frames(l: &TcpLink) -> (u64, u64) {
        let w = l.lock_writer();
        (w.frames, w.acks)
    }

    /// Messages of 0, 1, odd and several chunks' bytes arrive intact in the slots, from the
    /// caller's memory (`Payload::Bytes`) and from a producer (`Payload::Fill`); credits come back
    /// in ACK frames for half a ring, and ride on the frames the receiver writes anyway.
    #[test]
    fn every_size_lands_in_its_slot_and_credits_come_back_in_batches() {
        let geo = RingGeometry { slots: 4, slot_bytes: 4096 };
        let ((tx, tx_signals), (rx, rx_signals)) = pair(geo);
        let inbound = rx_signals.data_seq(0, Stream::Collective);
        let credit = tx_signals.ack_seq(1, Stream::Collective);
        let (mut sent, mut consumed) = (0u64, 0u64);
        for (m, total) in [0usize, 1, 7, 4095, 4096, 4097, 3 * 4096 + 5].into_iter().enumerate() {
            let msg: Vec<u8> = (0..total).map(|i| (i * 31 + m * 7) as u8).collect();
            let chunks: Vec<&[u8]> = if total == 0 { vec![&[][..]] } else { msg.chunks(geo.slot_bytes).collect() };
            let mut arrived = Vec::new();
            for (k, chunk) in chunks.iter().enumerate() {
                // A sender with a full ring waits for credits: the receiver flushes before it waits.
                if sent >= consumed + geo.slots as u64 - 1 {
                    rx.flush_acks().unwrap();
                }
                until("a credit", || credit.load(Ordering::SeqCst) + geo.slots as u64 > sent);
                let meta = SlotMeta { op_seq: m as u64, total: total as u64, offset: (k * geo.slot_bytes) as u64, len: chunk.len() as u64, ..Default::default() };
                let payload = if k % 2 == 0 { Payload::Bytes(chunk) } else { Payload::Fill(&mut |out: &mut [u8]| out.copy_from_slice(chunk)) };
                tx.put(Stream::Collective, sent, &meta, payload).unwrap();
                sent += 1;
                until("the chunk", || inbound.load(Ordering::SeqCst) > consumed);
                let ring = rx.inbound(Stream::Collective);
                assert_eq!(ring.meta(consumed), meta);
                arrived.extend_from_slice(ring.payload(consumed, chunk.len()));
                consumed += 1;
                rx.ack(Stream::Collective, consumed).unwrap();
            }
            assert_eq!(arrived, msg, "message of {total} bytes");
        }
        rx.flush_acks().unwrap();
        until("the last credit", || credit.load(Ordering::SeqCst) == consumed);
        let (written, acks) = frames(&rx);
        assert_eq!(written, acks, "the receiver wrote nothing but ACK frames");
        assert!(acks <= consumed / 2 + 2, "{acks} ACK frames for {consumed} chunks: not batched");

        // Nothing held back: a flush writes nothing; one consumed chunk is not an ACK yet.
        rx.flush_acks().unwrap();
        assert_eq!(frames(&rx), (written, acks));
        tx.put(Stream::P2p, 0, &SlotMeta { len: 3, ..Default::default() }, Payload::Bytes(b"abc")).unwrap();
        until("a p2p chunk", || rx_signals.data_seq(0, Stream::P2p).load(Ordering::SeqCst) == 1);
        rx.ack(Stream::P2p, 1).unwrap();
        assert_eq!(frames(&rx), (written, acks), "one chunk of a 4-slot ring is held back");
        // It rides on the next frame the receiver writes (a control counter here), in order.
        rx.control(Control::Done, 9).unwrap();
        until("the control frame", || tx_signals.control(1, Control::Done).load(Ordering::SeqCst) == 9);
        assert_eq!(tx_signals.ack_seq(1, Stream::P2p).load(Ordering::SeqCst), 1, "the credit came with the control frame");
        assert_eq!(frames(&rx), (written + 1, acks));
        assert!(tx.check_alive().is_ok() && rx.check_alive().is_ok());
    }

    #[test]
    fn a_frame_of_another_version_breaks_the_link_with_a_reason() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut near = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (far, _) = listener.accept().unwrap();
        let link = TcpLink::start(1, 0, far, RingGeometry { slots: 2, slot_bytes: 64 }, block(1)).unwrap();
        let mut old = [0u8; HEADER];
        old[0..4].copy_from_slice(b"CHTP");
        near.write_all(&old).unwrap();
        until("the link to fail", || link.check_alive().is_err());
        assert!(link.check_alive().unwrap_err().to_string().contains("bad magic"));
    }
}
