//! One error enum for the crate; one variant per failing operation, each message says what to check.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Result alias used throughout the crate.
pub type Result<T, E = BootstrapError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("failed to bind the store server on {addr}: {source} (is the port already in use? pick another MASTER_PORT / --master-port, or use port 0)")]
    ServerBind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("could not connect to the store at {addr} within {timeout:?}: expected a chorus store to accept the connection and answer its handshake (last error: {last_error}); check that the store server is running and reachable, that MASTER_ADDR/MASTER_PORT (or CHORUS_STORE_ADDR) point to it, and that CHORUS_TIMEOUT_MS leaves it time to start")]
    Connect {
        addr: String,
        timeout: Duration,
        last_error: String,
    },

    #[error("store request `{op}` to {addr} failed: {source} (did the store server exit or the network drop? the store host is MASTER_ADDR / CHORUS_STORE_ADDR)")]
    Io {
        op: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },

    #[error("no answer from the store at {addr} to `{op}` within {timeout:?}: expected a chorus store response; is the store overloaded or stopped, or is CHORUS_TIMEOUT_MS too short?")]
    RequestTimeout {
        op: &'static str,
        addr: String,
        timeout: Duration,
    },

    #[error("authentication with the store at {addr} failed: {detail}")]
    Auth { addr: String, detail: String },

    #[error("refusing to listen for {what} on {ip} without a job secret (CHORUS_REQUIRE_SECRET is set): set CHORUS_SECRET or CHORUS_SECRET_FILE on every rank, or listen on loopback only")]
    SecretRequired { what: &'static str, ip: IpAddr },

    #[error("could not read the operating system's random source for {purpose}: {detail}")]
    Random {
        purpose: &'static str,
        detail: String,
    },

    #[error("store protocol error on `{op}` with {addr}: {detail} (are client and server the same chorus version, and is {addr} really a chorus store?)")]
    Protocol {
        op: &'static str,
        addr: String,
        detail: String,
    },

    #[error("store server at {addr} rejected `{op}`: {message}")]
    Remote {
        op: &'static str,
        addr: String,
        message: String,
    },

    #[error("{store} failed `{op}`: {message}")]
    Callback {
        op: &'static str,
        store: String,
        message: String,
    },

    #[error("{host} stopped answering (`{op}`: {cause}) after the group was created. It holds the group's membership, so failures can no longer be recovered nor ranks join: the process or machine hosting it died, or the network to it dropped. Host the store where no rank's death takes it down: launch with chorus-run or torchrun (the store lives in the launcher or its agent), set CHORUS_STORE_ADDR to a store started on its own, or under torch pass init_process_group a TCPStore hosted outside the ranks")]
    Lost {
        op: &'static str,
        host: String,
        #[source]
        cause: Box<BootstrapError>,
    },

    #[error("{host} no longer holds {sentinel:?}, which the group wrote there when it was created: it restarted empty (or the group's records were deleted), so it cannot vote on the membership any more and is left out of it")]
    AcceptorForgot { host: String, sentinel: String },

    #[error("`{op}` on {key:?} reached {answered} of the group's {total} membership replicas and needs {needed} (not answering: {silent}); a majority of them must be reachable: did most ranks (or the store's host and ranks with it) die at once?")]
    NoQuorum {
        op: &'static str,
        key: String,
        answered: usize,
        needed: usize,
        total: usize,
        silent: String,
    },

    #[error("timed out after {timeout:?} waiting for store keys {missing:?}; check that every rank started, uses the same MASTER_ADDR/MASTER_PORT and WORLD_SIZE, and reached the same point")]
    WaitTimeout {
        missing: Vec<String>,
        timeout: Duration,
    },

    #[error("store key {key:?} holds {value:?}, which is not a decimal i64 counter (was it set with `set` instead of `add`?)")]
    NotACounter { key: String, value: String },

    #[error("counter {key:?} would overflow i64 (current {current}, delta {delta})")]
    CounterOverflow {
        key: String,
        current: i64,
        delta: i64,
    },

    #[error("missing rendezvous settings: {missing:?}; launch with torchrun / chorus-run / srun, or set them in the environment (or pass them explicitly)")]
    MissingEnv { missing: Vec<String> },

    #[error("invalid value {value:?} for {var}: {reason}")]
    InvalidEnv {
        var: String,
        value: String,
        reason: String,
    },

    #[error("failed to bind a listener on {addr}: {source} (is {ip} an address of this host? set CHORUS_SOCKET_IFADDR to one that is)", ip = addr.ip())]
    ListenBind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("no free port on {ip} in CHORUS_PORT_RANGE {lo}-{hi}: every port is in use; widen the range or stop whatever holds those ports")]
    PortRangeExhausted { ip: IpAddr, lo: u16, hi: u16 },

    #[error("could not resolve host {host:?}: {detail} (check MASTER_ADDR / CHORUS_STORE_ADDR)")]
    Resolve { host: String, detail: String },
}
