//! TCP store server: one event-loop thread (a current-thread `tokio` runtime) over a shared
//! [`MemStore`]; the API stays synchronous for its callers.
//!
//! Why an event loop: a thread per connection let abandoned waits and idle clients exhaust the
//! server's threads and descriptors (issue 17). Here a connection is a task: an idle or waiting
//! client costs a socket and a few hundred bytes, a wait whose client disconnects is dropped at once,
//! and every limit below is enforced in one place ([`ServerLimits`]).
//!
//! A misbehaving connection (garbage, oversized, stalled or truncated frames, too many bytes in
//! flight) gets an error response where possible and is closed; it never affects other clients.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::auth::{self, JobSecret, Role};
use crate::protocol::{self, Request, Response, NONCE_LEN};
use crate::store::{MemStore, Store};
use crate::{BootstrapError, Result};

/// Bytes read from a socket at a time; a frame's buffer grows as its bytes arrive, so a header that
/// announces a large body costs nothing until the body comes.
const READ_CHUNK: usize = 64 * 1024;
/// How long a refused connection is drained before it is closed.
const DRAIN_AFTER_REFUSAL: Duration = Duration::from_secs(1);

/// What one server accepts before it refuses or closes a connection.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Open connections at most; one more is answered with an error and closed.
    pub max_connections: usize,
    /// Largest frame body one connection may send (at most [`protocol::MAX_BODY`]).
    pub max_frame_bytes: usize,
    /// Bytes of partly received frames across all connections; a frame that would exceed it is
    /// refused, so stalled large frames cannot hold unbounded memory.
    pub max_in_flight_bytes: usize,
    /// A connection with no request in progress and no wait pending is closed after this long.
    /// (The client reconnects transparently.)
    pub idle_timeout: Duration,
    /// A frame (or a response) must be sent completely within this long of its first byte.
    pub frame_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_frame_bytes: protocol::MAX_BODY,
            max_in_flight_bytes: 256 * 1024 * 1024,
            idle_timeout: Duration::from_secs(600),
            frame_timeout: Duration::from_secs(30),
        }
    }
}

/// Counters of a running server; they only grow, except `open_connections` and `in_flight_bytes`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections open now.
    pub open_connections: usize,
    /// Bytes of partly received frames now (see [`ServerLimits::max_in_flight_bytes`]).
    pub in_flight_bytes: usize,
    /// Connections accepted.
    pub accepted: u64,
    /// Connections refused at [`ServerLimits::max_connections`].
    pub refused_connection_limit: u64,
    /// Connections closed after [`ServerLimits::idle_timeout`].
    pub closed_idle: u64,
    /// Connections closed for a bad frame or a protocol violation (failed proofs included).
    pub closed_bad_frame: u64,
    /// Waits dropped because their client went away.
    pub abandoned_waits: u64,
    /// Connections refused for a missing or wrong proof of the job secret.
    pub refused_auth: u64,
}

#[derive(Debug, Default)]
struct Counters {
    open: AtomicUsize,
    in_flight: AtomicUsize,
    accepted: AtomicU64,
    refused: AtomicU64,
    closed_idle: AtomicU64,
    closed_bad_frame: AtomicU64,
    abandoned_waits: AtomicU64,
    refused_auth: AtomicU64,
}

struct Shared {
    store: MemStore,
    limits: ServerLimits,
    local: SocketAddr,
    counters: Counters,
    /// With a secret, every connection proves it before anything else is served.
    secret: Option<JobSecret>,
}

/// The TCP store server: a [`MemStore`] served by one event-loop thread. Dropping it shuts it
/// down.
pub struct StoreServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Arc<Notify>,
    loop_thread: Mutex<Option<JoinHandle<()>>>,
}

impl StoreServer {
    /// [`StoreServer::bind_with`] with the default [`ServerLimits`] and the job secret of the
    /// environment (`CHORUS_SECRET` / `CHORUS_SECRET_FILE`, see [`crate::auth`]).
    pub fn bind(addr: SocketAddr) -> Result<StoreServer> {
        Self::bind_with(addr, ServerLimits::default(), auth::secret_from_env()?)
    }

    /// Binds (port 0 = any free port), reads back the bound address, and starts serving on a
    /// background thread. Returns only after the bind succeeded, so the address can be published
    /// safely. Without a secret, listening beyond loopback warns (or fails under
    /// `CHORUS_REQUIRE_SECRET=1`).
    pub fn bind_with(
        addr: SocketAddr,
        limits: ServerLimits,
        secret: Option<JobSecret>,
    ) -> Result<StoreServer> {
        if secret.is_none() {
            auth::check_unauthenticated_listen(addr.ip(), "the store")?;
        }
        let bind_err = |source| BootstrapError::ServerBind { addr, source };
        let std_listener = StdListener::bind(addr).map_err(bind_err)?;
        let local = std_listener.local_addr().map_err(bind_err)?;
        std_listener.set_nonblocking(true).map_err(bind_err)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(bind_err)?;
        let listener = {
            let _context = runtime.enter();
            TcpListener::from_std(std_listener).map_err(bind_err)?
        };
        let shared = Arc::new(Shared {
            store: MemStore::new(),
            limits,
            local,
            counters: Counters::default(),
            secret,
        });
        let stop = Arc::new(Notify::new());
        let thread = {
            let (shared, stop) = (shared.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("chorus-store-{}", local.port()))
                .spawn(move || {
                    runtime.block_on(accept_loop(listener, shared, stop));
                    // Dropping the runtime drops every connection task and closes its socket.
                    drop(runtime);
                })
                .map_err(bind_err)?
        };
        tracing::debug!(%local, "store server listening");
        Ok(StoreServer {
            addr: local,
            shared,
            stop,
            loop_thread: Mutex::new(Some(thread)),
        })
    }

    /// The address actually bound (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A snapshot of the server's counters.
    pub fn stats(&self) -> ServerStats {
        let c = &self.shared.counters;
        ServerStats {
            open_connections: c.open.load(Ordering::Relaxed),
            in_flight_bytes: c.in_flight.load(Ordering::Relaxed),
            accepted: c.accepted.load(Ordering::Relaxed),
            refused_connection_limit: c.refused.load(Ordering::Relaxed),
            closed_idle: c.closed_idle.load(Ordering::Relaxed),
            closed_bad_frame: c.closed_bad_frame.load(Ordering::Relaxed),
            abandoned_waits: c.abandoned_waits.load(Ordering::Relaxed),
            refused_auth: c.refused_auth.load(Ordering::Relaxed),
        }
    }

    /// The server's own data as a [`Store`], for its own process (no socket in between).
    pub fn local_store(&self) -> Arc<dyn Store> {
        Arc::new(LocalView(self.shared.clone()))
    }

    /// Stops accepting, closes every connection and joins the server thread. Idempotent; never
    /// panics.
    pub fn shutdown(&self) {
        // notify_one keeps a permit when the loop is not waiting right now, so the stop is not lost.
        self.stop.notify_one();
        let handle = self
            .loop_thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for StoreServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for StoreServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Counts an open connection for as long as it lives.
struct OpenSlot(Arc<Shared>);

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.counters.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Bytes of a partly received frame, counted against [`ServerLimits::max_in_flight_bytes`].
struct InFlight<'a> {
    shared: &'a Shared,
    bytes: usize,
}

impl<'a> InFlight<'a> {
    fn reserve(shared: &'a Shared, bytes: usize) -> Option<InFlight<'a>> {
        let cap = shared.limits.max_in_flight_bytes;
        shared
            .counters
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| {
                now.checked_add(bytes).filter(|total| *total <= cap)
            })
            .ok()
            .map(|_| InFlight { shared, bytes })
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.shared
            .counters
            .in_flight
            .fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: Arc<Notify>) {
    loop {
        let accepted = tokio::select! {
            _ = stop.notified() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let counters = &shared.counters;
                let admitted = counters
                    .open
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |open| {
                        (open < shared.limits.max_connections).then_some(open + 1)
                    })
                    .is_ok();
                if admitted {
                    counters.accepted.fetch_add(1, Ordering::Relaxed);
                    let slot = OpenSlot(shared.clone());
                    tokio::spawn(serve_connection(stream, peer, slot));
                } else {
                    counters.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, limit = shared.limits.max_connections, "store connection refused: connection limit reached");
                    let message = format!(
                        "the store at {} has reached its limit of {} open connections; retry later, or look for a process that opens connections without closing them",
                        shared.local, shared.limits.max_connections
                    );
                    tokio::spawn(refuse(stream, message, DRAIN_AFTER_REFUSAL.min(shared.limits.frame_timeout)));
                }
            }
            Err(e) => {
                // E.g. EMFILE: back off instead of spinning, keep serving existing clients.
                tracing::warn!(error = %e, "store server accept failed");
                tokio::select! {
                    _ = stop.notified() => return,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        }
    }
}

/// Sends `message` as an error response, then waits (bounded, briefly: a flood of refused
/// connections must not pile up descriptors) for the client to close, so the response is not lost
/// to a reset when the client's own first frame arrives after our close.
async fn refuse(stream: TcpStream, message: String, timeout: Duration) {
    let (mut rd, mut wr) = stream.into_split();
    let _ = tokio::time::timeout(timeout, async {
        write_response(&mut wr, &Response::Error(message)).await?;
        wr.shutdown().await?;
        let mut sink = [0u8; 1024];
        while rd.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    })
    .await;
}

async fn write_response(wr: &mut OwnedWriteHalf, resp: &Response) -> std::io::Result<()> {
    let mut frame = Vec::new();
    protocol::write_msg(&mut frame, resp)?;
    wr.write_all(&frame).await
}

/// Why a connection's next frame did not come.
enum NoFrame {
    /// The client closed the connection (or it failed) between frames.
    Closed,
    Idle,
    /// The client broke the protocol or a limit; the message goes back to it.
    Refused(String),
}

struct Connection {
    shared: Arc<Shared>,
    peer: SocketAddr,
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    /// Received bytes not yet consumed: at most one partly received frame.
    buf: Vec<u8>,
}

impl Connection {
    /// Reads the next frame body within the idle (before its first byte) and frame (after it)
    /// deadlines, refusing frames over the per-connection or total in-flight limits.
    async fn next_frame(&mut self, idle_timeout: Duration) -> std::result::Result<Vec<u8>, NoFrame> {
        let shared = self.shared.clone();
        let limits = &shared.limits;
        let mut frame_deadline = None;
        let mut reservation: Option<InFlight<'_>> = None;
        loop {
            match protocol::split_frame(&self.buf, limits.max_frame_bytes) {
                Ok(Some((body, total))) => {
                    let body = self.buf[body].to_vec();
                    self.buf.drain(..total);
                    return Ok(body);
                }
                Ok(None) => {}
                Err(e) => return Err(NoFrame::Refused(format!("malformed request: {e}"))),
            }
            if reservation.is_none() {
                if let Ok(Some(len)) = protocol::parse_header(&self.buf, limits.max_frame_bytes) {
                    match InFlight::reserve(&shared, len) {
                        Some(r) => reservation = Some(r),
                        None => {
                            return Err(NoFrame::Refused(format!(
                                "store busy: a {len}-byte request would exceed the server's limit of {} bytes of requests in flight; retry later, or look for clients that send large values and stall",
                                limits.max_in_flight_bytes
                            )))
                        }
                    }
                }
            }
            let deadline = match frame_deadline {
                Some(d) => d,
                None if self.buf.is_empty() => Instant::now() + idle_timeout,
                None => *frame_deadline.insert(Instant::now() + limits.frame_timeout),
            };
            self.buf.reserve(READ_CHUNK);
            let read = tokio::time::timeout_at(deadline, self.rd.read_buf(&mut self.buf)).await;
            match read {
                Ok(Ok(0)) if self.buf.is_empty() => return Err(NoFrame::Closed),
                Ok(Ok(0)) => {
                    return Err(NoFrame::Refused(format!(
                        "connection closed in the middle of a frame ({} bytes received)",
                        self.buf.len()
                    )))
                }
                Ok(Ok(_)) => {
                    if frame_deadline.is_none() {
                        frame_deadline = Some(Instant::now() + limits.frame_timeout);
                    }
                }
                Ok(Err(e)) => {
                    tracing::debug!(peer = %self.peer, error = %e, "store connection read failed");
                    return Err(NoFrame::Closed);
                }
                Err(_) if self.buf.is_empty() => return Err(NoFrame::Idle),
                Err(_) => {
                    return Err(NoFrame::Refused(format!(
                        "request not completed within {:?} of its first byte ({} bytes received); the store closes stalled requests",
                        limits.frame_timeout,
                        self.buf.len()
                    )))
                }
            }
        }
    }

    async fn respond(&mut self, resp: &Response) -> bool {
        let timeout = self.shared.limits.frame_timeout;
        match tokio::time::timeout(timeout, write_response(&mut self.wr, resp)).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::debug!(peer = %self.peer, error = %e, "store connection write failed");
                false
            }
            Err(_) => {
                tracing::debug!(peer = %self.peer, "store client did not read its response in time");
                false
            }
        }
    }

    /// Resolves when the client closes the connection or sends anything: a client has at most one
    /// request outstanding, so either means nobody will read the pending wait's answer.
    async fn client_gone(&mut self) {
        let mut probe = [0u8; 1];
        let _ = self.rd.read(&mut probe).await;
    }

    async fn close_with(&mut self, message: String) {
        self.shared
            .counters
            .closed_bad_frame
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(peer = %self.peer, %message, "closing store connection");
        let _ = self.respond(&Response::Error(message)).await;
        let _ = self.wr.shutdown().await;
        // Closing with unread bytes would reset the connection and could destroy the error
        // response before the client reads it: drain what the client still sends, briefly.
        let drain = async {
            let mut sink = [0u8; 4096];
            while matches!(self.rd.read(&mut sink).await, Ok(n) if n > 0) {}
        };
        let _ = tokio::time::timeout(DRAIN_AFTER_REFUSAL.min(self.shared.limits.frame_timeout), drain).await;
    }
}

/// Where a connection is in its opening exchange.
enum Handshake {
    Fresh,
    /// Challenged: the client's proof is due.
    Challenged {
        client_nonce: Vec<u8>,
        server_nonce: Vec<u8>,
    },
    Ready,
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, slot: OpenSlot) {
    let shared = slot.0.clone();
    let (rd, wr) = stream.into_split();
    let mut conn = Connection {
        shared: shared.clone(),
        peer,
        rd,
        wr,
        buf: Vec::new(),
    };
    let mut state = Handshake::Fresh;
    loop {
        // Until the handshake is done a connection may idle no longer than a frame may stall, so
        // strangers cannot hold connections for the whole idle timeout.
        let idle = match state {
            Handshake::Ready => shared.limits.idle_timeout,
            _ => shared.limits.frame_timeout,
        };
        let body = match conn.next_frame(idle).await {
            Ok(body) => body,
            Err(NoFrame::Closed) => return,
            Err(NoFrame::Idle) => {
                shared.counters.closed_idle.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, "closing idle store connection");
                return;
            }
            Err(NoFrame::Refused(message)) => return conn.close_with(message).await,
        };
        let req = match protocol::decode::<Request>(&body) {
            Ok(req) => req,
            Err(e) => return conn.close_with(format!("malformed request: {e}")).await,
        };
        let resp = match (req, &state) {
            (Request::Hello { client_nonce }, Handshake::Fresh) => {
                if client_nonce.len() != NONCE_LEN {
                    return conn
                        .close_with(format!(
                            "malformed request: a {}-byte handshake nonce (expected {NONCE_LEN})",
                            client_nonce.len()
                        ))
                        .await;
                }
                if shared.secret.is_none() {
                    // No secret: no challenge to sign, the connection is ready.
                    state = Handshake::Ready;
                    Response::Challenge {
                        server_nonce: Vec::new(),
                        auth_required: false,
                    }
                } else {
                    let server_nonce = match auth::nonce(NONCE_LEN) {
                        Ok(n) => n,
                        Err(e) => return conn.close_with(e.to_string()).await,
                    };
                    state = Handshake::Challenged {
                        client_nonce,
                        server_nonce: server_nonce.clone(),
                    };
                    Response::Challenge {
                        server_nonce,
                        auth_required: true,
                    }
                }
            }
            (
                Request::Prove { client_mac },
                Handshake::Challenged {
                    client_nonce,
                    server_nonce,
                },
            ) => {
                let Some(secret) = &shared.secret else {
                    return conn.close_with("internal: challenged without a secret".into()).await;
                };
                if !secret.verify(Role::StoreClient, b"", server_nonce, client_nonce, &client_mac) {
                    shared.counters.refused_auth.fetch_add(1, Ordering::Relaxed);
                    return conn
                        .close_with(
                            "authentication failed: this store requires the job secret, and the client's proof does not match it; give the client the job's CHORUS_SECRET or CHORUS_SECRET_FILE".into(),
                        )
                        .await;
                }
                let server_mac = secret
                    .prove(Role::StoreServer, b"", client_nonce, server_nonce)
                    .to_vec();
                state = Handshake::Ready;
                Response::Welcome { server_mac }
            }
            (Request::Hello { .. } | Request::Prove { .. }, _) => {
                return conn
                    .close_with("malformed request: a repeated or unexpected handshake".into())
                    .await
            }
            (_, Handshake::Fresh | Handshake::Challenged { .. }) => {
                let message = if matches!(state, Handshake::Fresh) {
                    format!(
                        "malformed request: the connection must start with the handshake (is the client chorus version {} of the store protocol?)",
                        protocol::VERSION
                    )
                } else {
                    shared.counters.refused_auth.fetch_add(1, Ordering::Relaxed);
                    "authentication required: this store serves only clients that prove the job secret (CHORUS_SECRET or CHORUS_SECRET_FILE)".to_string()
                };
                return conn.close_with(message).await;
            }
            (Request::Wait { keys, timeout_ms }, Handshake::Ready) => {
                let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
                let wait = shared
                    .store
                    .wait_async(&refs, Duration::from_millis(timeout_ms));
                tokio::select! {
                    result = wait => match result {
                        Ok(values) => Response::Values(values),
                        Err(missing) => Response::WaitTimeout { missing },
                    },
                    () = conn.client_gone() => {
                        shared.counters.abandoned_waits.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%peer, "store client left during a wait; dropping it");
                        return;
                    }
                }
            }
            (other, Handshake::Ready) => handle(&shared.store, other),
        };
        if !conn.respond(&resp).await {
            return;
        }
    }
}

/// [`StoreServer::local_store`]: the served data, in process.
struct LocalView(Arc<Shared>);

impl Store for LocalView {
    fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        self.0.store.set(key, value)
    }
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.0.store.get(key)
    }
    fn wait(&self, keys: &[&str], timeout: Duration) -> Result<Vec<Vec<u8>>> {
        self.0.store.wait(keys, timeout)
    }
    fn add(&self, key: &str, delta: i64) -> Result<i64> {
        self.0.store.add(key, delta)
    }
    fn compare_set(&self, key: &str, expected: Option<&[u8]>, new: &[u8]) -> Result<(bool, Vec<u8>)> {
        self.0.store.compare_set(key, expected, new)
    }
    fn delete(&self, key: &str) -> Result<bool> {
        self.0.store.delete(key)
    }
    fn list_prefix(&self, prefix: &str) -> Result<Vec<String>> {
        self.0.store.list_prefix(prefix)
    }
    fn host(&self) -> String {
        format!("this process's replica at {}", self.0.local)
    }
}

fn handle(store: &MemStore, req: Request) -> Response {
    let result = match req {
        Request::Set { key, value } => store.set(&key, &value).map(|()| Response::Ok),
        Request::Get { key } => store.get(&key).map(Response::Value),
        Request::Add { key, delta } => store.add(&key, delta).map(Response::Int),
        Request::CompareSet { key, expected, new } => store
            .compare_set(&key, expected.as_deref(), &new)
            .map(|(swapped, value)| Response::Swapped { swapped, value }),
        Request::Delete { key } => store.delete(&key).map(Response::Bool),
        Request::ListPrefix { prefix } => store.list_prefix(&prefix).map(Response::Keys),
        // Served by the connection loop itself.
        Request::Hello { .. } | Request::Prove { .. } | Request::Wait { .. } => {
            return Response::Error("internal: request routed to the wrong handler".into())
        }
    };
    result.unwrap_or_else(|e| Response::Error(e.to_string()))
}
