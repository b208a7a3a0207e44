//! TCP store server: one thread per connection over a shared [`MemStore`].
//!
//! A misbehaving connection (garbage, oversized or truncated frames) gets an error response where
//! possible and is closed; it never affects other clients.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::protocol::{self, FrameError, Request, Response};
use crate::store::{MemStore, Store};
use crate::{BootstrapError, Result};

/// How often the accept loop checks for shutdown. The listener is non-blocking so shutdown never
/// depends on being able to connect to ourselves.
const ACCEPT_POLL: Duration = Duration::from_millis(5);

type Conns = Mutex<HashMap<u64, TcpStream>>;

pub struct StoreServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Clones of live connections, so shutdown can unblock their reader threads.
    conns: Arc<Conns>,
    accept_thread: Mutex<Option<JoinHandle<()>>>,
}

impl StoreServer {
    /// Binds (port 0 = any free port), reads back the bound address, and starts serving on background
    /// threads. Returns only after the bind succeeded, so the address can be published safely.
    pub fn bind(addr: SocketAddr) -> Result<StoreServer> {
        let bind_err = |source| BootstrapError::ServerBind { addr, source };
        let listener = TcpListener::bind(addr).map_err(bind_err)?;
        let local = listener.local_addr().map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Conns> = Arc::default();
        let store = Arc::new(MemStore::new());
        let thread = {
            let (stop, conns) = (stop.clone(), conns.clone());
            std::thread::Builder::new()
                .name(format!("chorus-store-accept-{}", local.port()))
                .spawn(move || accept_loop(listener, store, stop, conns))
                .map_err(bind_err)?
        };
        tracing::debug!(%local, "store server listening");
        Ok(StoreServer {
            addr: local,
            stop,
            conns,
            accept_thread: Mutex::new(Some(thread)),
        })
    }

    /// The address actually bound (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, closes every connection and joins the accept thread. Idempotent; never panics.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let handle = self
            .accept_thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
        // The accept loop has exited, so no new connections can be registered after this drain.
        let conns = std::mem::take(&mut *self.conns.lock().unwrap_or_else(|e| e.into_inner()));
        for stream in conns.values() {
            let _ = stream.shutdown(Shutdown::Both);
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

fn accept_loop(
    listener: TcpListener,
    store: Arc<MemStore>,
    stop: Arc<AtomicBool>,
    conns: Arc<Conns>,
) {
    let next_id = AtomicU64::new(0);
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, peer)) => {
                // Accepted sockets may inherit non-blocking mode on some platforms.
                if stream.set_nonblocking(false).is_err() {
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                if let Ok(clone) = stream.try_clone() {
                    conns
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(id, clone);
                }
                let (store, conns) = (store.clone(), conns.clone());
                let spawned = std::thread::Builder::new()
                    .name(format!("chorus-store-conn-{id}"))
                    .spawn(move || {
                        serve_connection(stream, peer, &store);
                        conns.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                    });
                if let Err(e) = spawned {
                    tracing::warn!(%peer, error = %e, "store server could not spawn a connection thread");
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(ACCEPT_POLL),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                // E.g. EMFILE: back off instead of spinning, keep serving existing clients.
                tracing::warn!(error = %e, "store server accept failed");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn serve_connection(mut stream: TcpStream, peer: SocketAddr, store: &MemStore) {
    loop {
        let req = match protocol::read_msg::<Request>(&mut stream) {
            Ok(req) => req,
            Err(FrameError::Closed) => return,
            Err(FrameError::Io(e)) => {
                tracing::debug!(%peer, error = %e, "store connection read failed");
                return;
            }
            Err(e) => {
                // Framing is lost: report what was wrong (if the peer still listens), then close.
                tracing::warn!(%peer, error = %e, "closing store connection after a malformed frame");
                let _ = protocol::write_msg(
                    &mut stream,
                    &Response::Error(format!("malformed request: {e}")),
                );
                let _ = stream.shutdown(Shutdown::Both);
                return;
            }
        };
        let resp = handle(store, req);
        if let Err(e) = protocol::write_msg(&mut stream, &resp) {
            tracing::debug!(%peer, error = %e, "store connection write failed");
            return;
        }
    }
}

fn handle(store: &MemStore, req: Request) -> Response {
    let result = match req {
        Request::Set { key, value } => store.set(&key, &value).map(|()| Response::Ok),
        Request::Get { key } => store.get(&key).map(Response::Value),
        Request::Wait { keys, timeout_ms } => {
            let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
            return match store.wait_for(&refs, Duration::from_millis(timeout_ms)) {
                Ok(values) => Response::Values(values),
                Err(missing) => Response::WaitTimeout { missing },
            };
        }
        Request::Add { key, delta } => store.add(&key, delta).map(Response::Int),
        Request::CompareSet { key, expected, new } => store
            .compare_set(&key, expected.as_deref(), &new)
            .map(|(swapped, value)| Response::Swapped { swapped, value }),
        Request::Delete { key } => store.delete(&key).map(Response::Bool),
        Request::ListPrefix { prefix } => store.list_prefix(&prefix).map(Response::Keys),
    };
    result.unwrap_or_else(|e| Response::Error(e.to_string()))
}
