//! `chorus-store [--addr 127.0.0.1:29500]`: a standalone store server that outlives the workers.
//!
//! It listens on loopback unless told otherwise: the store is the job's control plane, so reaching
//! it from other hosts is a choice to make (`--addr 0.0.0.0:29500`, see SECURITY.md), best made
//! with a job secret in `CHORUS_SECRET` or `CHORUS_SECRET_FILE` (then every client must prove it).

use std::io::Write;
use std::net::SocketAddr;

use std::time::Duration;

use chorus_bootstrap::server::ServerLimits;
use chorus_bootstrap::StoreServer;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "chorus-store",
    version,
    about = "Standalone chorus rendezvous store"
)]
struct Args {
    /// Address to listen on (port 0 picks a free port; the real one is printed). Loopback by
    /// default; give an address of this host (or 0.0.0.0) to serve other hosts.
    #[arg(long, default_value = "127.0.0.1:29500")]
    addr: SocketAddr,
    /// Open connections at most; more are refused with an error.
    #[arg(long, default_value_t = ServerLimits::default().max_connections)]
    max_connections: usize,
    /// Largest request one connection may send, in bytes.
    #[arg(long, default_value_t = ServerLimits::default().max_frame_bytes)]
    max_frame_bytes: usize,
    /// Bytes of partly received requests across all connections.
    #[arg(long, default_value_t = ServerLimits::default().max_in_flight_bytes)]
    max_in_flight_bytes: usize,
    /// Milliseconds an idle connection stays open.
    #[arg(long, default_value_t = ServerLimits::default().idle_timeout.as_millis() as u64)]
    idle_timeout_ms: u64,
    /// Milliseconds a request (or response) may take from its first byte to its last.
    #[arg(long, default_value_t = ServerLimits::default().frame_timeout.as_millis() as u64)]
    frame_timeout_ms: u64,
}

fn main() {
    tracing_subscriber::fmt()
        // CHORUS_LOG, as every chorus program reads it; RUST_LOG where that is not set.
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("CHORUS_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::from_default_env()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let limits = ServerLimits {
        max_connections: args.max_connections,
        max_frame_bytes: args.max_frame_bytes,
        max_in_flight_bytes: args.max_in_flight_bytes,
        idle_timeout: Duration::from_millis(args.idle_timeout_ms),
        frame_timeout: Duration::from_millis(args.frame_timeout_ms),
    };
    // The job secret comes from CHORUS_SECRET / CHORUS_SECRET_FILE, as for the ranks.
    let secret = match chorus_bootstrap::auth::secret_from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("chorus-store: {e}");
            std::process::exit(1);
        }
    };
    let server = match StoreServer::bind_with(args.addr, limits, secret) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("chorus-store: {e}");
            std::process::exit(1);
        }
    };
    println!("chorus-store listening on {}", server.local_addr());
    let _ = std::io::stdout().flush();
    loop {
        std::thread::park();
    }
}
