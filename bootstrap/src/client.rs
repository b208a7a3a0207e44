//! TCP store client.
//!
//! The client keeps a small pool of connections: a request takes an idle connection (or opens a new
//! one), so a long `wait` on one thread never blocks `set`/`add` from another thread sharing the same
//! client. A connection that saw any I/O or protocol error is dropped, never reused, because a late
//! response could otherwise be read as the answer to the next request.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::protocol::{self, FrameError, Request, Response};
use crate::store::{Store, MAX_WAIT};
use crate::{BootstrapError, Result};

/// Pause between connection attempts in [`StoreClient::connect`].
const RETRY_INTERVAL: Duration = Duration::from_millis(50);
/// Default deadline for a non-blocking request's round trip.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(60);
/// Extra time a `wait` response may take beyond the wait's own timeout (network + scheduling).
const WAIT_SLACK: Duration = Duration::from_secs(5);
/// Deadline for opening an additional pooled connection after the first one succeeded.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct StoreClient {
    addr: String,
    op_timeout: Duration,
    idle: Mutex<Vec<TcpStream>>,
}

impl StoreClient {
    /// Connects to `addr` ("host:port"), retrying every 50 ms until `timeout`, so ranks may start
    /// before the store does.
    pub fn connect(addr: &str, timeout: Duration) -> Result<StoreClient> {
        let stream = connect_with_retry(addr, timeout)?;
        Ok(StoreClient {
            addr: addr.to_string(),
            op_timeout: DEFAULT_OP_TIMEOUT,
            idle: Mutex::new(vec![stream]),
        })
    }

    /// Changes the deadline for non-`wait` requests (default 60 s).
    pub fn with_op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// The address this client talks to, as given to [`StoreClient::connect`].
    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn take_conn(&self, op: &'static str) -> Result<TcpStream> {
        if let Some(s) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(s);
        }
        connect_once(&self.addr, RECONNECT_TIMEOUT.min(self.op_timeout)).map_err(|e| match e {
            ConnectFailure::Resolve(err) => err,
            ConnectFailure::Io(source) => BootstrapError::Io {
                op,
                addr: self.addr.clone(),
                source,
            },
        })
    }

    /// Sends one request and reads its response within `read_timeout`.
    fn request(&self, op: &'static str, req: &Request, read_timeout: Duration) -> Result<Response> {
        let mut stream = self.take_conn(op)?;
        let io_err = |source| BootstrapError::Io {
            op,
            addr: self.addr.clone(),
            source,
        };
        stream
            .set_write_timeout(Some(self.op_timeout))
            .map_err(io_err)?;
        stream
            .set_read_timeout(Some(read_timeout.max(Duration::from_millis(1))))
            .map_err(io_err)?;
        protocol::write_msg(&mut stream, req).map_err(io_err)?;
        let resp = protocol::read_msg::<Response>(&mut stream).map_err(|e| match e {
            FrameError::Io(source) => io_err(source),
            FrameError::Closed => io_err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the store server closed the connection",
            )),
            other => BootstrapError::Protocol {
                op,
                addr: self.addr.clone(),
                detail: other.to_string(),
            },
        })?;
        // Only a connection that completed a clean round trip goes back to the pool.
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(stream);
        match resp {
            Response::Error(message) => Err(BootstrapError::Remote {
                op,
                addr: self.addr.clone(),
                message,
            }),
            other => Ok(other),
        }
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

impl std::fmt::Debug for StoreClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreClient")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Store for StoreClient {
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

enum ConnectFailure {
    Resolve(BootstrapError),
    Io(std::io::Error),
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

/// One attempt against every resolved address.
fn connect_once(addr: &str, timeout: Duration) -> std::result::Result<TcpStream, ConnectFailure> {
    let mut last = None;
    for sa in resolve(addr)? {
        match TcpStream::connect_timeout(&sa, timeout.max(Duration::from_millis(1))) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(ConnectFailure::Io(last.unwrap_or_else(|| {
        std::io::Error::other("no address to connect to")
    })))
}

fn connect_with_retry(addr: &str, timeout: Duration) -> Result<TcpStream> {
    let deadline = Instant::now() + timeout.min(MAX_WAIT);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        // Resolution failures are retried too: DNS for a fresh node may lag behind the job start.
        let last_error = match connect_once(addr, remaining.min(Duration::from_secs(2))) {
            Ok(s) => return Ok(s),
            Err(ConnectFailure::Resolve(e)) => e.to_string(),
            Err(ConnectFailure::Io(e)) => e.to_string(),
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
