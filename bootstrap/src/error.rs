//! One error enum for the crate; one variant per failing operation, each message says what to check.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Result alias used throughout the crate.
pub type Result<T, E = BootstrapError> = std::result::Result<T, E>;

/// The crate's error: one variant per failing operation, each message saying what to check.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// [`StoreServer`](crate::StoreServer) could not bind its address or start serving on it.
    #[error("failed to bind the store server on {addr}: {source} (is the port already in use? pick another MASTER_PORT / --master-port, or use port 0)")]
    ServerBind {
        /// The address asked for.
        addr: SocketAddr,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// [`StoreClient::connect`](crate::StoreClient::connect) found no chorus store answering before its
    /// deadline.
    #[error("could not connect to the store at {addr} within {timeout:?}: expected a chorus store to accept the connection and answer its handshake (last error: {last_error}); check that the store server is running and reachable, that MASTER_ADDR/MASTER_PORT (or CHORUS_STORE_ADDR) point to it, and that CHORUS_TIMEOUT_MS leaves it time to start")]
    Connect {
        /// The store's "host:port".
        addr: String,
        /// How long the client kept trying.
        timeout: Duration,
        /// Why the last attempt failed.
        last_error: String,
    },

    /// A store request failed on its connection (refused, reset, closed).
    #[error("store request `{op}` to {addr} failed: {source} (did the store server exit or the network drop? the store host is MASTER_ADDR / CHORUS_STORE_ADDR)")]
    Io {
        /// The request (`"get"`, `"set"`, ...).
        op: &'static str,
        /// The store's address.
        addr: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A store request got no answer within its deadline.
    #[error("no answer from the store at {addr} to `{op}` within {timeout:?}: expected a chorus store response; is the store overloaded or stopped, or is CHORUS_TIMEOUT_MS too short?")]
    RequestTimeout {
        /// The request (`"get"`, `"set"`, ...).
        op: &'static str,
        /// The store's address (for a replicated store, the key).
        addr: String,
        /// The deadline that passed.
        timeout: Duration,
    },

    /// Client and store do not share the job secret (or only one has one); never retried.
    #[error("authentication with the store at {addr} failed: {detail}")]
    Auth {
        /// The store's address.
        addr: String,
        /// What did not match, and what to set.
        detail: String,
    },

    /// Refused to listen beyond loopback without a job secret, as `CHORUS_REQUIRE_SECRET` asks.
    #[error("refusing to listen for {what} on {ip} without a job secret (CHORUS_REQUIRE_SECRET is set): set CHORUS_SECRET or CHORUS_SECRET_FILE on every rank, or listen on loopback only")]
    SecretRequired {
        /// What would listen ("the store", "rank links").
        what: &'static str,
        /// The address it would listen on.
        ip: IpAddr,
    },

    /// The operating system's random source failed.
    #[error("could not read the operating system's random source for {purpose}: {detail}")]
    Random {
        /// What the bytes were for (a job secret, a nonce, a proposer id).
        purpose: &'static str,
        /// The random source's error.
        detail: String,
    },

    /// What answered broke the store protocol (bad frame, unexpected response, failed handshake), or
    /// a replicated register could not be read or completed.
    #[error("store protocol error on `{op}` with {addr}: {detail} (are client and server the same chorus version, and is {addr} really a chorus store?)")]
    Protocol {
        /// The request (`"get"`, `"set"`, ...).
        op: &'static str,
        /// The store's address (for a replicated store, the key).
        addr: String,
        /// What was wrong.
        detail: String,
    },

    /// The store answered the request with an error (a bad counter, its connection limit, ...).
    #[error("store server at {addr} rejected `{op}`: {message}")]
    Remote {
        /// The request (`"get"`, `"set"`, ...).
        op: &'static str,
        /// The store's address.
        addr: String,
        /// The store's error message.
        message: String,
    },

    /// A store implemented outside this crate (e.g. a caller's store behind C callbacks) failed.
    #[error("{store} failed `{op}`: {message}")]
    Callback {
        /// The operation (`"get"`, `"wait"`, ...).
        op: &'static str,
        /// Which store failed, for the message.
        store: String,
        /// The store's error message.
        message: String,
    },

    /// The group's store stopped answering after the group was created (see
    /// [`AfterRendezvous`](crate::AfterRendezvous)).
    #[error("{host} stopped answering (`{op}`: {cause}) after the group was created. It holds the group's membership, so failures can no longer be recovered nor ranks join: the process or machine hosting it died, or the network to it dropped. Host the store where no rank's death takes it down: launch with chorus-run or torchrun (the store lives in the launcher or its agent), set CHORUS_STORE_ADDR to a store started on its own, or under torch pass init_process_group a TCPStore hosted outside the ranks")]
    Lost {
        /// The operation that failed.
        op: &'static str,
        /// The store and where it lives ([`Store::host`](crate::Store::host)).
        host: String,
        /// The error that showed it gone.
        #[source]
        cause: Box<BootstrapError>,
    },

    /// A membership acceptor no longer holds the group's sentinel key: it restarted empty (see
    /// [`Sentinel`](crate::replicated::Sentinel)).
    #[error("{host} no longer holds {sentinel:?}, which the group wrote there when it was created: it restarted empty (or the group's records were deleted), so it cannot vote on the membership any more and is left out of it")]
    AcceptorForgot {
        /// The acceptor's store ([`Store::host`](crate::Store::host)).
        host: String,
        /// The key the group wrote there when it was created.
        sentinel: String,
    },

    /// A replicated operation reached fewer than a majority of its acceptors.
    #[error("`{op}` on {key:?} reached {answered} of the group's {total} membership replicas and needs {needed} (not answering: {silent}); a majority of them must be reachable: did most ranks (or the store's host and ranks with it) die at once?")]
    NoQuorum {
        /// The operation.
        op: &'static str,
        /// The key operated on.
        key: String,
        /// Acceptors that answered.
        answered: usize,
        /// Answers needed: a majority of `total`.
        needed: usize,
        /// Acceptor slots in all.
        total: usize,
        /// Names of the acceptors that did not answer, comma-separated.
        silent: String,
    },

    /// [`Store::wait`](crate::Store::wait) timed out before every key existed.
    #[error("timed out after {timeout:?} waiting for store keys {missing:?}; check that every rank started, uses the same MASTER_ADDR/MASTER_PORT and WORLD_SIZE, and reached the same point")]
    WaitTimeout {
        /// The keys still absent.
        missing: Vec<String>,
        /// The wait's timeout.
        timeout: Duration,
    },

    /// [`Store::add`](crate::Store::add) on a key whose value is not a decimal i64.
    #[error("store key {key:?} holds {value:?}, which is not a decimal i64 counter (was it set with `set` instead of `add`?)")]
    NotACounter {
        /// The counter's key.
        key: String,
        /// The value found there (lossily decoded as UTF-8).
        value: String,
    },

    /// [`Store::add`](crate::Store::add) would overflow i64.
    #[error("counter {key:?} would overflow i64 (current {current}, delta {delta})")]
    CounterOverflow {
        /// The counter's key.
        key: String,
        /// Its current value.
        current: i64,
        /// The amount to add.
        delta: i64,
    },

    /// Required rendezvous settings are neither in the environment nor given explicitly.
    #[error("missing rendezvous settings: {missing:?}; launch with torchrun / chorus-run / srun, or set them in the environment (or pass them explicitly)")]
    MissingEnv {
        /// The missing variables (with their SLURM fallbacks).
        missing: Vec<String>,
    },

    /// A setting has an unusable value (not a number, a rank out of range, an unreadable secret
    /// file, ...).
    #[error("invalid value {value:?} for {var}: {reason}")]
    InvalidEnv {
        /// The variable.
        var: String,
        /// Its value.
        value: String,
        /// Why it cannot be used.
        reason: String,
    },

    /// A listener ([`crate::listen`]) could not bind its address.
    #[error("failed to bind a listener on {addr}: {source} (is {ip} an address of this host? set CHORUS_SOCKET_IFADDR to one that is)", ip = addr.ip())]
    ListenBind {
        /// The address tried.
        addr: SocketAddr,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// Every port of `CHORUS_PORT_RANGE` is in use on `ip`.
    #[error("no free port on {ip} in CHORUS_PORT_RANGE {lo}-{hi}: every port is in use; widen the range or stop whatever holds those ports")]
    PortRangeExhausted {
        /// The address bound on.
        ip: IpAddr,
        /// First port of the range.
        lo: u16,
        /// Last port of the range (inclusive).
        hi: u16,
    },

    /// A host name could not be resolved to an address.
    #[error("could not resolve host {host:?}: {detail} (check MASTER_ADDR / CHORUS_STORE_ADDR)")]
    Resolve {
        /// The name (or "host:port") looked up.
        host: String,
        /// The resolver's error.
        detail: String,
    },
}
