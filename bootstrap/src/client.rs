//! TCP store client.
//!
//! The client keeps a small pool of connections: a request takes an idle connection (or opens a new
//! one), so a long `wait` on one thread never blocks `set`/`add` from another thread sharing the same
//! client. A connection that saw any I/O or protocol error is dropped, never reused, because a late
//! response could otherwise be read as the answer to the next request. Every connection starts with
//! the store handshake, and every wait on the network has the client's deadline.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::auth::{self, JobSecret, Role};
use crate::protocol::{self, FrameError, Request, Response, NONCE_LEN};
use crate::store::{Store, MAX_WAIT};
use crate::{BootstrapError, Result};

/// Pause between connection attempts in [`StoreClient::connect`].
const RETRY_INTERVAL: Duration = Duration::from_millis(50);
/// Extra time a `wait` response may take beyond the wait's own timeout (network + scheduling).
const WAIT_SLACK: Duration = Duration::from_secs(5);

/// Client of a [`StoreServer`](crate::StoreServer): a [`Store`] over TCP, with a small pool of
/// connections (see the module docs).
pub struct StoreClient {
    addr: String,
    /// Who hosts the store, for errors that say it is gone (e.g. "rank 0's process").
    hosted_by: Option<String>,
    op_timeout: Duration,
    secret: Option<JobSecret>,
    idle: Mutex<Vec<TcpStream>>,
}

/// Why one connection attempt (TCP connect + handshake) failed.
enum ConnectFailure {
    Resolve(BootstrapError),
    Io(std::io::Error),
    /// Connected, but what answered did not complete a chorus store handshake.
    Handshake(String),
    /// The store answered the handshake with a refusal (e.g. its connection limit).
    Refused(String),
    /// The secrets do not match (or only one side has one): retrying cannot help.
    Auth(String),
}

impl ConnectFailure {
    fn describe(&self) -> String {
        match self {
            ConnectFailure::Resolve(e) => e.to_string(),
            ConnectFailure::Io(e) => e.to_string(),
            ConnectFailure::Handshake(d) => d.clone(),
            ConnectFailure::Refused(m) => format!("the store refused the connection: {m}"),
            ConnectFailure::Auth(m) => m.clone(),
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

fn read_answer(stream: &mut TcpStream, timeout: Duration) -> std::result::Result<Response, ConnectFailure> {
    match protocol::read_msg::<Response>(stream) {
        Ok(resp) => Ok(resp),
        Err(FrameError::Io(e)) if is_timeout(&e) => Err(ConnectFailure::Handshake(format!(
            "connected, but no handshake answer within {timeout:?} (is a chorus store listening there, or something else?)"
        ))),
        Err(FrameError::Io(e)) => Err(ConnectFailure::Io(e)),
        Err(e) => Err(ConnectFailure::Handshake(format!(
            "connected, but the handshake answer was not a chorus store's: {e}"
        ))),
    }
}

/// The connection's opening exchange ([`Request::Hello`], and with a secret the mutual proof),
/// within `timeout`.
fn handshake(
    stream: &mut TcpStream,
    timeout: Duration,
    secret: Option<&JobSecret>,
) -> std::result::Result<(), ConnectFailure> {
    let timeout = timeout.max(Duration::from_millis(1));
    stream
        .set_write_timeout(Some(timeout))
        .and_then(|()| stream.set_read_timeout(Some(timeout)))
        .map_err(ConnectFailure::Io)?;
    let client_nonce = auth::nonce(NONCE_LEN).map_err(ConnectFailure::Resolve)?;
    protocol::write_msg(
        stream,
        &Request::Hello {
            client_nonce: client_nonce.clone(),
        },
    )
    .map_err(ConnectFailure::Io)?;
    let (server_nonce, secret) = match (read_answer(stream, timeout)?, secret) {
        (Response::Challenge { auth_required: false, .. }, None) => return Ok(()),
        (Response::Challenge { auth_required: false, .. }, Some(_)) => {
            return Err(ConnectFailure::Auth(
                "this process has a job secret, but the store does not ask for it: it is not this job's store, or it was started without the job's CHORUS_SECRET / CHORUS_SECRET_FILE".into(),
            ))
        }
        (Response::Challenge { auth_required: true, .. }, None) => {
            return Err(ConnectFailure::Auth(
                "the store requires the job secret and this process has none: set CHORUS_SECRET or CHORUS_SECRET_FILE to the job's secret (chorus-run sets it for the ranks it starts)".into(),
            ))
        }
        (Response::Challenge { auth_required: true, server_nonce }, Some(secret)) => (server_nonce, secret),
        (Response::Error(message), _) => return Err(ConnectFailure::Refused(message)),
        (other, _) => {
            return Err(ConnectFailure::Handshake(format!(
                "expected the store's handshake answer, got {other:?}"
            )))
        }
    };
    let client_mac = secret
        .prove(Role::StoreClient, b"", &server_nonce, &client_nonce)
        .to_vec();
    protocol::write_msg(stream, &Request::Prove { client_mac }).map_err(ConnectFailure::Io)?;
    match read_answer(stream, timeout) {
        Ok(Response::Welcome { server_mac })
            if secret.verify(Role::StoreServer, b"", &client_nonce, &server_nonce, &server_mac) =>
        {
            Ok(())
        }
        Ok(Response::Welcome { .. }) => Err(ConnectFailure::Auth(
            "the store's proof of the job secret does not match ours: it is another job's store, or the secrets differ".into(),
        )),
        Ok(Response::Error(message)) => Err(ConnectFailure::Auth(message)),
        // The server closes a connection whose proof failed; its error may be lost to the close.
        Err(ConnectFailure::Io(e)) => Err(ConnectFailure::Auth(format!(
            "the store closed the connection after our proof of the secret ({e}): do both sides have the same CHORUS_SECRET?"
        ))),
        Ok(other) => Err(ConnectFailure::Handshake(format!(
            "expected the store's proof of the secret, got {other:?}"
        ))),
        Err(e) => Err(e),
    }
}

impl StoreClient {
    /// Connects to `addr` ("host:port"), retrying every 50 ms until `timeout`, so ranks may start
    /// before the store does. `timeout` is also the deadline of each later request's round trip
    /// (see [`StoreClient::with_op_timeout`]); a group passes its own timeout. The job secret, if
    /// any, is the environment's (`CHORUS_SECRET` / `CHORUS_SECRET_FILE`).
    pub fn connect(addr: &str, timeout: Duration) -> Result<StoreClient> {
        Self::connect_with(addr, timeout, auth::secret_from_env()?)
    }

    /// [`StoreClient::connect`] with an explicit job secret (`None`: the store must not ask for
    /// one). A mismatch of secrets fails at once with [`BootstrapError::Auth`], without retrying.
    pub fn connect_with(
        addr: &str,
        timeout: Duration,
        secret: Option<JobSecret>,
    ) -> Result<StoreClient> {
        let stream = connect_with_retry(addr, timeout, secret.as_ref())?;
        Ok(StoreClient {
            addr: addr.to_string(),
            hosted_by: None,
            op_timeout: timeout.clamp(Duration::from_millis(1), MAX_WAIT),
            secret,
            idle: Mutex::new(vec![stream]),
        })
    }

    /// Changes the deadline for non-`wait` requests (and for opening more connections).
    pub fn with_op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout.clamp(Duration::from_millis(1), MAX_WAIT);
        self
    }

    /// Names the process that hosts the store (errors after rendezvous say it).
    pub fn hosted_by(mut self, who: impl Into<String>) -> Self {
        self.hosted_by = Some(who.into());
        self
    }

    /// The address this client talks to, as given to [`StoreClient::connect`].
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// An idle pooled connection (`true`: reused) or a new one. A new one gets one attempt (within
    /// the request deadline): a store that went away fails the request at once.
    fn take_conn(&self, op: &'static str) -> Result<(TcpStream, bool)> {
        if let Some(s) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok((s, true));
        }
        let addr = || self.addr.clone();
        connect_once(&self.addr, self.op_timeout, self.secret.as_ref())
            .map(|s| (s, false))
            .map_err(|e| match e {
                ConnectFailure::Resolve(err) => err,
                ConnectFailure::Io(source) => BootstrapError::Io { op, addr: addr(), source },
                ConnectFailure::Handshake(detail) => BootstrapError::Protocol { op, addr: addr(), detail },
                ConnectFailure::Refused(message) => BootstrapError::Remote { op, addr: addr(), message },
                ConnectFailure::Auth(detail) => BootstrapError::Auth { addr: addr(), detail },
            })
    }

    /// Sends one request and reads its response within `read_timeout`.
    fn request(&self, op: &'static str, req: &Request, read_timeout: Duration) -> Result<Response> {
        let mut attempt = 0;
        let resp = loop {
            attempt += 1;
            let (mut stream, reused) = self.take_conn(op)?;
            match self.round_trip(op, &mut stream, req, read_timeout) {
                Ok(resp) => {
                    // Only a connection that completed a clean round trip goes back to the pool.
                    self.idle
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(stream);
                    break resp;
                }
                // The server closes idle connections; one it closed before reading our request did
                // not run it, so the request is sent again once, on a fresh connection.
                Err(RoundTrip::Stale(_)) if reused && attempt == 1 => continue,
                Err(RoundTrip::Stale(source) | RoundTrip::Io(source)) => {
                    return Err(BootstrapError::Io {
                        op,
                        addr: self.addr.clone(),
                        source,
                    })
                }
                Err(RoundTrip::Failed(e)) => return Err(e),
            }
        };
        match resp {
            Response::Error(message) => Err(BootstrapError::Remote {
                op,
                addr: self.addr.clone(),
                message,
            }),
            other => Ok(other),
        }
    }

    fn round_trip(
        &self,
        op: &'static str,
        stream: &mut TcpStream,
        req: &Request,
        read_timeout: Duration,
    ) -> std::result::Result<Response, RoundTrip> {
        let read_timeout = read_timeout.max(Duration::from_millis(1));
        stream
            .set_write_timeout(Some(self.op_timeout))
            .and_then(|()| stream.set_read_timeout(Some(read_timeout)))
            .map_err(RoundTrip::Io)?;
        if let Err(e) = protocol::write_msg(stream, req) {
            return Err(if is_timeout(&e) {
                RoundTrip::Failed(BootstrapError::RequestTimeout {
                    op,
                    addr: self.addr.clone(),
                    timeout: self.op_timeout,
                })
            } else {
                RoundTrip::Stale(e)
            });
        }
        protocol::read_msg::<Response>(stream).map_err(|e| match e {
            FrameError::Io(e) if is_timeout(&e) => RoundTrip::Failed(BootstrapError::RequestTimeout {
                op,
                addr: self.addr.clone(),
                timeout: read_timeout,
            }),
            FrameError::Io(e) if e.kind() == ErrorKind::ConnectionReset => RoundTrip::Stale(e),
            FrameError::Io(e) => RoundTrip::Io(e),
            FrameError::Closed => RoundTrip::Stale(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                "the store server closed the connection",
            )),
            other => RoundTrip::Failed(BootstrapError::Protocol {
                op,
                addr: self.addr.clone(),
                detail: other.to_string(),
            }),
        })
    }

    fn op(&self, op: &'static str, req: Request) -> Result<Response> {
        self.request(op, &req, self.op_timeout)
    }

    fn unexpected(&self, op: &'static str, resp: Response) -> BootstrapError {
        BootstrapError::Protocol {
            op,
            addr: self.addr.clone(),
            detail: format!("unexpected response {resp:?}"),
        }
    }
}

/// How a round trip failed.
enum RoundTrip {
    /// The connection was found closed before any answer: the request was not served.
    Stale(std::io::Error),
    Io(std::io::Error),
    Failed(BootstrapError),
}

impl std::fmt::Debug for StoreClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreClient")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Store for StoreClient {
    fn host(&self) -> String {
        match &self.hosted_by {
            Some(who) => format!("the store at {}, hosted in {who},", self.addr),
            None => format!("the store at {}", self.addr),
        }
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        match self.op(
            "set",
            Request::Set {
                key: key.into(),
                value: value.to_vec(),
            },
        )? {
            Response::Ok => Ok(()),
            r => Err(self.unexpected("set", r)),
        }
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match self.op("get", Request::Get { key: key.into() })? {
            Response::Value(v) => Ok(v),
            r => Err(self.unexpected("get", r)),
        }
    }

    fn wait(&self, keys: &[&str], timeout: Duration) -> Result<Vec<Vec<u8>>> {
        let timeout = timeout.min(MAX_WAIT);
        let req = Request::Wait {
            keys: keys.iter().map(|k| k.to_string()).collect(),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
        // The server enforces the wait's deadline; the socket deadline is only a backstop.
        match self.request("wait", &req, timeout + WAIT_SLACK)? {
            Response::Values(v) if v.len() == keys.len() => Ok(v),
            Response::WaitTimeout { missing } => {
                Err(BootstrapError::WaitTimeout { missing, timeout })
            }
            r => Err(self.unexpected("wait", r)),
        }
    }

    fn add(&self, key: &str, delta: i64) -> Result<i64> {
        match self.op(
            "add",
            Request::Add {
                key: key.into(),
                delta,
            },
        )? {
            Response::Int(v) => Ok(v),
            r => Err(self.unexpected("add", r)),
        }
    }

    fn compare_set(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<(bool, Vec<u8>)> {
        let req = Request::CompareSet {
            key: key.into(),
            expected: expected.map(<[u8]>::to_vec),
            new: new.to_vec(),
        };
        match self.op("compare_set", req)? {
            Response::Swapped { swapped, value } => Ok((swapped, value)),
            r => Err(self.unexpected("compare_set", r)),
        }
    }

    fn delete(&self, key: &str) -> Result<bool> {
        match self.op("delete", Request::Delete { key: key.into() })? {
            Response::Bool(b) => Ok(b),
            r => Err(self.unexpected("delete", r)),
        }
    }

    fn list_prefix(&self, prefix: &str) -> Result<Vec<String>> {
        match self.op(
            "list_prefix",
            Request::ListPrefix {
                prefix: prefix.into(),
            },
        )? {
            Response::Keys(k) => Ok(k),
            r => Err(self.unexpected("list_prefix", r)),
        }
    }
}

fn resolve(addr: &str) -> std::result::Result<Vec<SocketAddr>, ConnectFailure> {
    let fail = |detail: String| {
        ConnectFailure::Resolve(BootstrapError::Resolve {
            host: addr.to_string(),
            detail,
        })
    };
    match addr.to_socket_addrs() {
        Ok(it) => {
            let addrs: Vec<SocketAddr> = it.collect();
            if addrs.is_empty() {
                Err(fail("no addresses".into()))
            } else {
                Ok(addrs)
            }
        }
        Err(e) => Err(fail(e.to_string())),
    }
}

/// One attempt against every resolved address: TCP connect, then the handshake, both within
/// `timeout`.
fn connect_once(
    addr: &str,
    timeout: Duration,
    secret: Option<&JobSecret>,
) -> std::result::Result<TcpStream, ConnectFailure> {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    for sa in resolve(addr)? {
        let left = deadline.saturating_duration_since(Instant::now());
        match TcpStream::connect_timeout(&sa, left.max(Duration::from_millis(1))) {
            Ok(mut s) => {
                let _ = s.set_nodelay(true);
                handshake(&mut s, deadline.saturating_duration_since(Instant::now()), secret)?;
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(ConnectFailure::Io(last.unwrap_or_else(|| {
        std::io::Error::other("no address to connect to")
    })))
}

fn connect_with_retry(addr: &str, timeout: Duration, secret: Option<&JobSecret>) -> Result<TcpStream> {
    let deadline = Instant::now() + timeout.min(MAX_WAIT);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        // Resolution failures are retried too: DNS for a fresh node may lag behind the job start.
        // The handshake gets the whole remaining time: a loaded store may answer late.
        let last_error = match connect_once(addr, remaining, secret) {
            Ok(s) => return Ok(s),
            Err(ConnectFailure::Auth(detail)) => {
                return Err(BootstrapError::Auth {
                    addr: addr.to_string(),
                    detail,
                })
            }
            Err(e) => e.describe(),
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(BootstrapError::Connect {
                addr: addr.to_string(),
                timeout,
                last_error,
            });
        }
        std::thread::sleep(RETRY_INTERVAL.min(remaining));
    }
}
